//! One reading of the `Cookie` request header (RFC 6265 §4.2.1, §5.4),
//! for every part of Portcullis that looks at cookies.
//!
//! Why one: a session cookie is found by one piece of code (to sign the
//! request in) and removed by another (so the backend never sees it). If
//! the two disagree about where a pair starts — one trimming Unicode
//! whitespace, the other only spaces — a cookie can authenticate a request
//! and still be passed on. The fuzzer found exactly that; now both read
//! pairs here.
//!
//! Pairs are separated by `;`; optional whitespace (SP, HTAB) around a pair
//! is not part of it; a pair without `=` is skipped; the first pair with a
//! name wins (as browsers order the more specific cookie first).

use http::HeaderMap;

/// The `name=value` pairs of one `Cookie` header value.
pub fn pairs(value: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    value.split(|b| *b == b';').filter_map(|pair| {
        let pair = trim_ows(pair);
        let eq = pair.iter().position(|b| *b == b'=')?;
        Some((&pair[..eq], &pair[eq + 1..]))
    })
}

fn trim_ows(mut bytes: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = bytes {
        bytes = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = bytes {
        bytes = rest;
    }
    bytes
}

/// Whether one `Cookie` header value has a cookie called `name` (no
/// allocation: the gateway asks this for every proxied request).
pub fn contains(value: &[u8], name: &str) -> bool {
    pairs(value).any(|(n, _)| n == name.as_bytes())
}

/// The value of the cookie `name` in any of the request's `Cookie`
/// headers, when it is text and not empty.
pub fn find<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| pairs(v.as_bytes()))
        .find(|(n, _)| *n == name.as_bytes())
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
        .filter(|v| !v.is_empty())
}

/// One `Cookie` header value without the cookie `name` (every pair of
/// that name), the other pairs as they were, joined with `; `.
pub fn without(value: &[u8], name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    for pair in value.split(|b| *b == b';') {
        let trimmed = trim_ows(pair);
        let named = trimmed
            .iter()
            .position(|b| *b == b'=')
            .is_some_and(|eq| &trimmed[..eq] == name.as_bytes());
        if named || trimmed.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.extend_from_slice(b"; ");
        }
        out.extend_from_slice(trimmed);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_reading() {
        let value = b" a=1;b=2 ;\tsid=xyz ; flag; c==3; sid=second";
        let all: Vec<_> = pairs(value).collect();
        assert_eq!(
            all,
            [
                (&b"a"[..], &b"1"[..]),
                (b"b", b"2"),
                (b"sid", b"xyz"),
                (b"c", b"=3"),
                (b"sid", b"second"),
            ]
        );
        assert!(contains(value, "sid") && contains(value, "c") && !contains(value, "flag"));
        assert_eq!(without(value, "sid"), b"a=1; b=2; flag; c==3");
        // Other whitespace is part of the name: not `sid`, and kept.
        let odd = b"\x0bsid=x; sid2=y";
        assert!(!contains(odd, "sid"));
        assert_eq!(without(odd, "sid"), b"\x0bsid=x; sid2=y");
        let mut headers = HeaderMap::new();
        headers.append("cookie", "a=1".parse().unwrap());
        headers.append("cookie", "sid=; sid=z".parse().unwrap());
        assert_eq!(find(&headers, "sid"), None, "the first, empty, wins");
        assert_eq!(find(&headers, "a"), Some("1"));
    }

    /// Whatever `find` and `contains` see is what `without` removes.
    #[test]
    fn found_means_removed() {
        for value in [
            &b"sid=1"[..],
            b" sid=1 ",
            b"x=1;sid=2",
            b"sid=;x",
            b"\tsid=a\t;sid=b",
        ] {
            let stripped = without(value, "sid");
            assert!(contains(value, "sid"));
            assert!(
                !contains(&stripped, "sid"),
                "{:?}",
                String::from_utf8_lossy(&stripped)
            );
        }
    }
}
