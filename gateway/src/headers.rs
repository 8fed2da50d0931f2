//! Header names the gateway sets, request ids, and forwarding headers.

use std::net::IpAddr;

use http::HeaderValue;
use ipnet::IpNet;

pub const X_REQUEST_ID: &str = "x-request-id";
pub const X_FORWARDED_FOR: &str = "x-forwarded-for";
pub const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
pub const X_FORWARDED_HOST: &str = "x-forwarded-host";
pub const FORWARDED: &str = "forwarded";
pub const STRICT_TRANSPORT_SECURITY: &str = "strict-transport-security";

/// The longest inbound request id we keep; longer ones are replaced.
const MAX_REQUEST_ID_LEN: usize = 128;

/// A client's `X-Request-Id` if it is short and printable, else a new one.
/// A `HeaderValue` so that setting it on the upstream request and on the
/// response only bumps a reference count.
pub fn request_id(inbound: Option<&HeaderValue>) -> HeaderValue {
    if let Some(value) = inbound {
        let bytes = value.as_bytes();
        let sane = !bytes.is_empty()
            && bytes.len() <= MAX_REQUEST_ID_LEN
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
        if sane {
            return value.clone();
        }
    }
    new_request_id()
}

/// 128 random bits as 32 hex digits.
pub fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let value: u128 = rand::random();
    let mut text = [0u8; 32];
    for (i, digit) in text.iter_mut().enumerate() {
        *digit = HEX[((value >> (124 - 4 * i)) & 0xf) as usize];
    }
    // Hex digits are always a valid header value.
    HeaderValue::from_bytes(&text).unwrap_or(HeaderValue::from_static("0"))
}

/// The request id as text, for logs and error bodies.
pub fn request_id_str(id: &HeaderValue) -> &str {
    id.to_str().unwrap_or("")
}

/// Whether `X-Forwarded-*` from this peer may be kept.
pub fn is_trusted(peer: Option<IpAddr>, trusted: &[IpNet]) -> bool {
    match peer {
        Some(ip) => trusted.iter().any(|net| net.contains(&ip)),
        None => false,
    }
}

/// The `host` part of a Host header or authority: lower case, no port.
/// Returns the input unchanged (borrowed) when it already is.
pub fn normalise_host(raw: &str) -> std::borrow::Cow<'_, str> {
    let without_port = if raw.starts_with('[') {
        // [v6]:port
        raw.split_once(']')
            .map_or(raw, |(h, _)| &raw[..h.len() + 1])
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                raw
            }
        })
    };
    let without_dot = without_port.strip_suffix('.').unwrap_or(without_port);
    if without_dot.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(without_dot.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(without_dot)
    }
}

/// A trusted proxy's list (`X-Forwarded-For`, `Forwarded`) with this hop
/// appended: every line of it, in order, joined into one (a list may be
/// split over lines; keeping only the first would drop the proxies that
/// appended to the others).
pub fn append_hop<'a>(lines: http::header::GetAll<'a, http::HeaderValue>, hop: &[u8]) -> Vec<u8> {
    let mut joined = Vec::with_capacity(64);
    for line in lines {
        joined.extend_from_slice(line.as_bytes());
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(hop);
    joined
}

/// One `Forwarded` element (RFC 7239) for this hop.
pub fn forwarded_element(client: IpAddr, proto: &str, host: Option<&str>) -> String {
    let for_part = match client {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("\"[{v6}]\""),
    };
    match host {
        Some(host) if host.bytes().all(|b| b.is_ascii_graphic() && b != b'"') => {
            format!("for={for_part};proto={proto};host=\"{host}\"")
        }
        _ => format!("for={for_part};proto={proto}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_of_a_forwarded_list_is_kept() {
        let mut map = http::HeaderMap::new();
        map.append(X_FORWARDED_FOR, "1.1.1.1, 10.0.0.1".parse().unwrap());
        map.append(X_FORWARDED_FOR, "10.0.0.2".parse().unwrap());
        assert_eq!(
            append_hop(map.get_all(X_FORWARDED_FOR), b"10.0.0.3"),
            b"1.1.1.1, 10.0.0.1, 10.0.0.2, 10.0.0.3"
        );
        assert_eq!(
            append_hop(map.get_all(FORWARDED), b"for=10.0.0.3"),
            b"for=10.0.0.3"
        );
    }

    #[test]
    fn request_ids() {
        let kept = HeaderValue::from_static("abc-123");
        assert_eq!(request_id(Some(&kept)), "abc-123");
        let evil = HeaderValue::from_static("a b<script>");
        let replaced = request_id(Some(&evil));
        assert_eq!(replaced.len(), 32);
        assert!(request_id_str(&replaced)
            .bytes()
            .all(|b| b.is_ascii_hexdigit()));
        assert_ne!(new_request_id(), new_request_id());
    }

    #[test]
    fn hosts() {
        assert_eq!(normalise_host("API.Example.com:8443"), "api.example.com");
        assert_eq!(normalise_host("example.com."), "example.com");
        assert_eq!(normalise_host("[::1]:80"), "[::1]");
        assert!(matches!(
            normalise_host("a.b"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn trust() {
        let nets: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        assert!(is_trusted(Some("10.1.2.3".parse().unwrap()), &nets));
        assert!(!is_trusted(Some("11.1.2.3".parse().unwrap()), &nets));
        assert_eq!(
            forwarded_element("::1".parse().unwrap(), "https", Some("a.com")),
            "for=\"[::1]\";proto=https;host=\"a.com\""
        );
    }
}
