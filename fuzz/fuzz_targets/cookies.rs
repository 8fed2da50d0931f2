//! Cookie handling: the gateway's session lookup and its check before
//! forwarding read cookies the same way, and the header sent upstream
//! never carries the session cookie. (Found by this target: the lookup once
//! trimmed Unicode whitespace and the check only ASCII, so a session cookie
//! behind a vertical tab signed the request in and was still forwarded.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_gateway::login::{cookie_value, cookie_value_in, without_cookie};

fuzz_target!(|input: (&[u8], &str)| {
    let (value, name) = input;
    if name.is_empty() || name.contains(['=', ';']) {
        return;
    }
    let Ok(header) = http::HeaderValue::from_bytes(value) else { return };
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::COOKIE, header);
    let found = cookie_value_in(value, name);
    if cookie_value(&headers, name).is_some() {
        assert!(found, "the session lookup sees {name} and the forwarding check does not");
    }
    let upstream = without_cookie(value, name);
    assert!(!cookie_value_in(&upstream, name), "{upstream:?} still has {name}");
    if let Ok(header) = http::HeaderValue::from_bytes(&upstream) {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::COOKIE, header);
        assert!(cookie_value(&headers, name).is_none());
    }
});
