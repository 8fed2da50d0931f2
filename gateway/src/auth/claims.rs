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

/// A claim as one header value: strings as they are, arrays as a list.
pub fn claim_to_header_value(value: &Value, separator: Option<&str>) -> Option<HeaderValue> {
    match value {
        Value::String(s) => HeaderValue::from_str(&sanitise(s)).ok(),
        Value::Array(items) => list_header_value(
            items.iter().map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            }),
            separator,
        ),
        Value::Null => None,
        other => HeaderValue::from_str(&sanitise(&other.to_string())).ok(),
    }
}

/// A list as one header value that a backend can only read one way.
/// Without a separator: an RFC 8941 List of Strings (`"a", "b,c"`). With
/// one: items joined with it, leaving out any item that contains it — a
/// role named `reader,admin` must never read as `reader` and `admin`.
pub fn list_header_value(
    items: impl Iterator<Item = String>,
    separator: Option<&str>,
) -> Option<HeaderValue> {
    let mut out = String::new();
    for (i, item) in items.enumerate() {
        let item = sanitise(&item);
        match separator {
            None => {
                if i > 0 {
                    out.push_str(", ");
                }
                // sf-string: printable ASCII (sanitise guarantees it) with
                // `"` and `\` escaped (RFC 8941 §3.3.3).
                out.push('"');
                for c in item.chars() {
                    if c == '"' || c == '\\' {
                        out.push('\\');
                    }
                    out.push(c);
                }
                out.push('"');
            }
            Some(separator) => {
                if item.is_empty() || item.contains(separator) {
                    log::debug!(
                        "list item left out of an identity header: it contains the separator"
                    );
                    continue;
                }
                if !out.is_empty() {
                    out.push_str(separator);
                }
                out.push_str(&item);
            }
        }
    }
    HeaderValue::from_str(&out).ok()
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
        let v = claim_to_header_value(&serde_json::json!(["a", 1, "b\n"]), Some(",")).unwrap();
        assert_eq!(v, "a,1,b");
    }

    #[test]
    fn lists_cannot_be_read_two_ways() {
        let roles = serde_json::json!(["reader,admin", "ops", "say \"hi\" \\o/"]);
        let structured = claim_to_header_value(&roles, None).unwrap();
        assert_eq!(structured, r#""reader,admin", "ops", "say \"hi\" \\o/""#);
        // The separator form leaves the ambiguous item out.
        let joined = claim_to_header_value(&roles, Some(",")).unwrap();
        assert_eq!(joined, r#"ops,say "hi" \o/"#);
        assert_eq!(
            claim_to_header_value(&serde_json::json!([]), None).unwrap(),
            ""
        );
    }
}
