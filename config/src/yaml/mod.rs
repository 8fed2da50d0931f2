//! A YAML document as a tree that remembers where every node came from.
//!
//! serde's YAML deserializers report at most the first error, and lose the
//! source position once a value is typed. Portcullis must name file, line,
//! column and key for *every* mistake, so the loader first builds this tree
//! (with `yaml-rust2`'s event parser), then deserializes from it while keeping
//! a map from key paths back to positions.

use std::collections::HashMap;
use std::fmt;

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A position in the source file, 1-based line and column.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    pub line: usize,
    pub column: usize,
}

impl Span {
    fn from_marker(mark: Marker) -> Self {
        Span {
            line: mark.line(),
            column: mark.col() + 1,
        }
    }
}

/// A YAML node with its position.
#[derive(Clone, Debug)]
pub struct Node {
    pub span: Span,
    pub kind: NodeKind,
}

#[derive(Clone, Debug)]
pub enum NodeKind {
    Null,
    /// A scalar with its style: a quoted scalar is always a string.
    Scalar(String, bool),
    /// Elements keep their index in the file, so errors found after a
    /// sibling was dropped still name the right element.
    Seq(Vec<(usize, Node)>),
    /// Entries keep their key's position: an unknown key is reported there.
    Map(Vec<MapEntry>),
}

#[derive(Clone, Debug)]
pub struct MapEntry {
    pub key: String,
    pub key_span: Span,
    pub value: Node,
}

/// One step of a key path: `routes[2].match.path_prefix`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PathSegment {
    Key(String),
    Index(usize),
}

/// A key path, displayed the way users write it: `routes[2].match.hosts`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct KeyPath(pub Vec<PathSegment>);

impl KeyPath {
    pub fn child_key(&self, key: &str) -> KeyPath {
        let mut segments = self.0.clone();
        segments.push(PathSegment::Key(key.to_owned()));
        KeyPath(segments)
    }

    pub fn child_index(&self, index: usize) -> KeyPath {
        let mut segments = self.0.clone();
        segments.push(PathSegment::Index(index));
        KeyPath(segments)
    }

    pub fn parent(&self) -> Option<KeyPath> {
        let mut segments = self.0.clone();
        segments.pop()?;
        Some(KeyPath(segments))
    }

    pub fn starts_with(&self, prefix: &KeyPath) -> bool {
        self.0.starts_with(&prefix.0)
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(root)");
        }
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                PathSegment::Key(key) if i == 0 => write!(f, "{key}")?,
                PathSegment::Key(key) => write!(f, ".{key}")?,
                PathSegment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// A YAML syntax error with its position.
#[derive(Debug)]
pub struct SyntaxError {
    pub span: Span,
    pub message: String,
}

/// Parses one YAML document. An empty document is an empty map.
pub fn parse(source: &str) -> Result<Node, SyntaxError> {
    let mut parser = Parser::new_from_str(source);
    let mut builder = TreeBuilder {
        anchors: HashMap::new(),
    };
    loop {
        let (event, mark) = next(&mut parser)?;
        match event {
            Event::StreamStart | Event::DocumentStart | Event::Nothing => continue,
            Event::StreamEnd | Event::DocumentEnd => {
                return Ok(Node {
                    span: Span::from_marker(mark),
                    kind: NodeKind::Map(Vec::new()),
                })
            }
            event => {
                let root = builder.node(&mut parser, event, mark)?;
                return Ok(root);
            }
        }
    }
}

fn next(parser: &mut Parser<std::str::Chars<'_>>) -> Result<(Event, Marker), SyntaxError> {
    parser.next_token().map_err(|e| SyntaxError {
        span: Span::from_marker(*e.marker()),
        message: e.info().to_owned(),
    })
}

struct TreeBuilder {
    anchors: HashMap<usize, Node>,
}

impl TreeBuilder {
    fn node(
        &mut self,
        parser: &mut Parser<std::str::Chars<'_>>,
        event: Event,
        mark: Marker,
    ) -> Result<Node, SyntaxError> {
        let span = Span::from_marker(mark);
        let (node, anchor) = match event {
            Event::Alias(id) => {
                let node = self.anchors.get(&id).cloned().ok_or(SyntaxError {
                    span,
                    message: "alias to an unknown anchor".into(),
                })?;
                (node, 0)
            }
            Event::Scalar(value, style, anchor, _tag) => {
                let quoted = !matches!(style, TScalarStyle::Plain);
                let kind =
                    if !quoted && matches!(value.as_str(), "" | "~" | "null" | "Null" | "NULL") {
                        NodeKind::Null
                    } else {
                        NodeKind::Scalar(value, quoted)
                    };
                (Node { span, kind }, anchor)
            }
            Event::SequenceStart(anchor, _tag) => {
                let mut items = Vec::new();
                loop {
                    let (event, mark) = next(parser)?;
                    if matches!(event, Event::SequenceEnd) {
                        break;
                    }
                    let index = items.len();
                    items.push((index, self.node(parser, event, mark)?));
                }
                (
                    Node {
                        span,
                        kind: NodeKind::Seq(items),
                    },
                    anchor,
                )
            }
            Event::MappingStart(anchor, _tag) => {
                let mut entries: Vec<MapEntry> = Vec::new();
                loop {
                    let (event, mark) = next(parser)?;
                    if matches!(event, Event::MappingEnd) {
                        break;
                    }
                    let key_span = Span::from_marker(mark);
                    let key = match self.node(parser, event, mark)?.kind {
                        NodeKind::Scalar(key, _) => key,
                        NodeKind::Null => String::new(),
                        _ => {
                            return Err(SyntaxError {
                                span: key_span,
                                message: "map keys must be plain strings".into(),
                            })
                        }
                    };
                    if entries.iter().any(|entry| entry.key == key) {
                        return Err(SyntaxError {
                            span: key_span,
                            message: format!("duplicate key `{key}`"),
                        });
                    }
                    let (event, mark) = next(parser)?;
                    let value = self.node(parser, event, mark)?;
                    entries.push(MapEntry {
                        key,
                        key_span,
                        value,
                    });
                }
                (
                    Node {
                        span,
                        kind: NodeKind::Map(entries),
                    },
                    anchor,
                )
            }
            other => {
                return Err(SyntaxError {
                    span,
                    message: format!("unexpected YAML event {other:?}"),
                })
            }
        };
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        Ok(node)
    }
}

impl Node {
    /// Converts to JSON for serde, typing plain scalars by the YAML 1.2 core
    /// schema (`true`, `42`, `1.5`); quoted scalars stay strings.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        match &self.kind {
            NodeKind::Null => Value::Null,
            NodeKind::Scalar(text, true) => Value::String(text.clone()),
            NodeKind::Scalar(text, false) => plain_scalar(text),
            NodeKind::Seq(items) => Value::Array(items.iter().map(|(_, n)| n.to_json()).collect()),
            NodeKind::Map(entries) => Value::Object(
                entries
                    .iter()
                    .map(|e| (e.key.clone(), e.value.to_json()))
                    .collect(),
            ),
        }
    }

    /// Records the position of every value below this node, and of every
    /// map key in `keys`.
    pub fn index_spans(
        &self,
        path: &KeyPath,
        values: &mut HashMap<KeyPath, Span>,
        keys: &mut HashMap<KeyPath, Span>,
    ) {
        values.insert(path.clone(), self.span);
        match &self.kind {
            NodeKind::Seq(items) => {
                for (index, item) in items {
                    item.index_spans(&path.child_index(*index), values, keys);
                }
            }
            NodeKind::Map(entries) => {
                for entry in entries {
                    let child = path.child_key(&entry.key);
                    keys.insert(child.clone(), entry.key_span);
                    entry.value.index_spans(&child, values, keys);
                }
            }
            NodeKind::Null | NodeKind::Scalar(..) => {}
        }
    }

    /// Follows a path of *current* positions (as serde reports them) and
    /// returns the same path in original file indices.
    pub fn original_path(&self, current: &[PathSegment]) -> Option<KeyPath> {
        let mut node = self;
        let mut out = Vec::with_capacity(current.len());
        for segment in current {
            match (segment, &node.kind) {
                (PathSegment::Index(i), NodeKind::Seq(items)) => {
                    let (orig, item) = items.get(*i)?;
                    out.push(PathSegment::Index(*orig));
                    node = item;
                }
                (PathSegment::Key(key), NodeKind::Map(entries)) => {
                    let entry = entries.iter().find(|e| &e.key == key)?;
                    out.push(PathSegment::Key(key.clone()));
                    node = &entry.value;
                }
                _ => return None,
            }
        }
        Some(KeyPath(out))
    }

    /// Removes the node at an original path; false when it is not there.
    pub fn remove(&mut self, path: &KeyPath) -> bool {
        let Some((last, parents)) = path.0.split_last() else {
            return false;
        };
        let mut node = self;
        for segment in parents {
            let next = match (segment, &mut node.kind) {
                (PathSegment::Index(i), NodeKind::Seq(items)) => {
                    items.iter_mut().find(|(orig, _)| orig == i).map(|(_, n)| n)
                }
                (PathSegment::Key(key), NodeKind::Map(entries)) => entries
                    .iter_mut()
                    .find(|e| &e.key == key)
                    .map(|e| &mut e.value),
                _ => None,
            };
            match next {
                Some(next) => node = next,
                None => return false,
            }
        }
        match (last, &mut node.kind) {
            (PathSegment::Index(i), NodeKind::Seq(items)) => {
                let before = items.len();
                items.retain(|(orig, _)| orig != i);
                before != items.len()
            }
            (PathSegment::Key(key), NodeKind::Map(entries)) => {
                let before = entries.len();
                entries.retain(|e| &e.key != key);
                before != entries.len()
            }
            _ => false,
        }
    }

    /// Replaces `${NAME}` and `${NAME:-default}` in every string scalar with
    /// the environment's value, so secrets stay out of the file. A reference
    /// to an unset variable without a default is an error at its position.
    pub fn interpolate_env(
        &mut self,
        lookup: &dyn Fn(&str) -> Option<String>,
        errors: &mut Vec<(Span, String)>,
    ) {
        match &mut self.kind {
            NodeKind::Scalar(text, _) => {
                if text.contains("${") {
                    match interpolate(text, lookup) {
                        Ok(value) => *text = value,
                        Err(message) => errors.push((self.span, message)),
                    }
                }
            }
            NodeKind::Seq(items) => {
                for (_, item) in items {
                    item.interpolate_env(lookup, errors);
                }
            }
            NodeKind::Map(entries) => {
                for entry in entries {
                    entry.value.interpolate_env(lookup, errors);
                }
            }
            NodeKind::Null => {}
        }
    }
}

fn interpolate(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "unterminated `${` in value".to_owned())?;
        let reference = &after[..end];
        let (name, default) = match reference.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (reference, None),
        };
        let valid_name =
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name {
            return Err(format!(
                "`${{{reference}}}` is not a valid variable reference"
            ));
        }
        match (lookup(name), default) {
            (Some(value), _) => out.push_str(&value),
            (None, Some(default)) => out.push_str(default),
            (None, None) => {
                return Err(format!(
                    "environment variable `{name}` is not set (use `${{{name}:-default}}` for a default)"
                ))
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A plain (unquoted) scalar typed by the YAML 1.2 core schema.
pub fn plain_scalar_value(text: &str) -> serde_json::Value {
    if matches!(text, "" | "~" | "null" | "Null" | "NULL") {
        return serde_json::Value::Null;
    }
    plain_scalar(text)
}

fn plain_scalar(text: &str) -> serde_json::Value {
    use serde_json::Value;
    match text {
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Ok(int) = text.parse::<i64>() {
        return Value::from(int);
    }
    let looks_numeric = text
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'));
    if looks_numeric {
        if let Some(float) = text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
        {
            return Value::Number(float);
        }
    }
    Value::String(text.to_owned())
}

#[cfg(test)]
mod tests;
