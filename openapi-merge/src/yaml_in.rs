//! YAML straight to JSON values. The config loader keeps a tree with
//! positions for its error messages; an OpenAPI document does not need
//! them, and skipping that tree halved the merge time of the 3 MB OpenAI
//! spec (benches/openapi-merge.sh: memory growth was a quarter of the run).

use std::collections::HashMap;

use serde_json::{Map, Value};
use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::TScalarStyle;

/// Parses one YAML document into JSON; an error carries the line.
pub fn parse(text: &str) -> Result<Value, (usize, String)> {
    let mut parser = Parser::new_from_str(text);
    let mut anchors: HashMap<usize, Value> = HashMap::new();
    loop {
        let (event, _) = next(&mut parser)?;
        match event {
            Event::StreamStart | Event::DocumentStart | Event::Nothing => continue,
            Event::StreamEnd | Event::DocumentEnd => return Ok(Value::Object(Map::new())),
            event => return node(&mut parser, event, &mut anchors),
        }
    }
}

fn next(parser: &mut Parser<std::str::Chars<'_>>) -> Result<(Event, usize), (usize, String)> {
    parser
        .next_token()
        .map(|(event, mark)| (event, mark.line()))
        .map_err(|e| (e.marker().line(), e.info().to_owned()))
}

fn node(
    parser: &mut Parser<std::str::Chars<'_>>,
    event: Event,
    anchors: &mut HashMap<usize, Value>,
) -> Result<Value, (usize, String)> {
    let (value, anchor) = match event {
        Event::Alias(id) => (
            anchors
                .get(&id)
                .cloned()
                .ok_or((0, "alias to an unknown anchor".to_owned()))?,
            0,
        ),
        Event::Scalar(text, style, anchor, _) => {
            let value = if matches!(style, TScalarStyle::Plain) {
                portcullis_config::yaml::plain_scalar_value(&text)
            } else {
                Value::String(text)
            };
            (value, anchor)
        }
        Event::SequenceStart(anchor, _) => {
            let mut items = Vec::new();
            loop {
                let (event, _) = next(parser)?;
                if matches!(event, Event::SequenceEnd) {
                    break;
                }
                items.push(node(parser, event, anchors)?);
            }
            (Value::Array(items), anchor)
        }
        Event::MappingStart(anchor, _) => {
            let mut map = Map::new();
            loop {
                let (event, line) = next(parser)?;
                if matches!(event, Event::MappingEnd) {
                    break;
                }
                let key = match node(parser, event, anchors)? {
                    Value::String(key) => key,
                    Value::Null => String::new(),
                    other @ (Value::Number(_) | Value::Bool(_)) => other.to_string(),
                    _ => return Err((line, "map keys must be scalars".to_owned())),
                };
                let (event, _) = next(parser)?;
                let value = node(parser, event, anchors)?;
                map.insert(key, value);
            }
            (Value::Object(map), anchor)
        }
        other => return Err((0, format!("unexpected YAML event {other:?}"))),
    };
    if anchor != 0 {
        anchors.insert(anchor, value.clone());
    }
    Ok(value)
}
