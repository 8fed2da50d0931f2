//! Claims: nested lookup (`realm_access.roles`), roles, and header values
//! that cannot smuggle anything into a header.

use std::fmt::Write;

use http::HeaderValue;
use serde_json::{Map, Value};

/// Follows a dotted path through nested objects. A claim whose own name
/// contains dots (`https://example.com/roles`) is found whole first.
pub fn lookup_claim<'c>(claims: &'c Map<String, Value>, path: &str) -> Option<&'c Value> {
    if let Some(value) = claims.get(path) {
        return Some(value);
    }
    let mut parts = path.split('.');
    let mut value = claims.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

/// Roles from a claim: an array of strings, or a space-separated string
/// (as OAuth's `scope`).
pub fn roles(claims: &Map<String, Value>, path: &str) -> Vec<String> {
    match lookup_claim(claims, path) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        Some(Value::String(text)) => text.split_whitespace().map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

/// A claim as one header value: strings as they are, arrays joined.
pub fn claim_to_header_value(value: &Value, separator: &str) -> Option<HeaderValue> {
    let text = match value {
        Value::String(s) => sanitise(s),
        Value::Array(items) => {
            let parts: Vec<String> = items
                .iter()
                .map(|v| match v {
                    Value::String(s) => sanitise(s),
                    other => sanitise(&other.to_string()),
                })
                .collect();
            parts.join(separator)
        }
        Value::Null => return None,
        other => sanitise(&other.to_string()),
    };
    HeaderValue::from_str(&text).ok()
}

/// Printable ASCII stays; control characters (CR, LF, NUL, DEL...) are
/// dropped; anything else is percent-encoded as UTF-8, so no invisible or
/// look-alike character reaches a backend.
pub fn sanitise(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            ' '..='~' if c != '%' => out.push(c),
            '%' => out.push_str("%25"),
            c if c.is_control() => {}
            c => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    let _ = write!(out, "%{b:02X}");
                }
            }
        }
    }
    out.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_and_dotted_claims() {
        let claims: Map<String, Value> = serde_json::from_value(serde_json::json!({
            "realm_access": { "roles": ["a", "b"] },
            "https://x.com/tenant": "t1",
            "scope": "read write"
        }))
        .unwrap();
        assert_eq!(roles(&claims, "realm_access.roles"), ["a", "b"]);
        assert_eq!(roles(&claims, "scope"), ["read", "write"]);
        assert_eq!(lookup_claim(&claims, "https://x.com/tenant").unwrap(), "t1");
        assert!(lookup_claim(&claims, "realm_access.nope").is_none());
    }

    #[test]
    fn header_values_are_sanitised() {
        assert_eq!(sanitise("bob\r\nX-Admin: 1"), "bobX-Admin: 1");
        assert_eq!(sanitise("zoë\u{200b}"), "zo%C3%AB%E2%80%8B");
        assert_eq!(sanitise("50%"), "50%25");
        let v = claim_to_header_value(&serde_json::json!(["a", 1, "b\n"]), ",").unwrap();
        assert_eq!(v, "a,1,b");
    }
}
