//! YAML output of a merged document (yaml-rust2's emitter, which quotes
//! strings that would read back as another type).

use serde_json::Value;
use yaml_rust2::{Yaml, YamlEmitter};

fn to_node(value: &Value) -> Yaml {
    match value {
        Value::Null => Yaml::Null,
        Value::Bool(b) => Yaml::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Yaml::Integer(i),
            None => Yaml::Real(n.to_string()),
        },
        Value::String(s) => Yaml::String(s.clone()),
        Value::Array(items) => Yaml::Array(items.iter().map(to_node).collect()),
        Value::Object(map) => {
            let mut hash = yaml_rust2::yaml::Hash::new();
            for (k, v) in map {
                hash.insert(Yaml::String(k.clone()), to_node(v));
            }
            Yaml::Hash(hash)
        }
    }
}

/// The document as YAML text.
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    let mut emitter = YamlEmitter::new(&mut out);
    // Writing into a String cannot fail.
    let _ = emitter.dump(&to_node(value));
    out.push('\n');
    out
}
