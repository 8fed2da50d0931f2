//! Cookie handling: the session cookie is found exactly when a pair with
//! its name is there, and the header sent upstream never carries it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_gateway::login::{cookie_value_in, without_cookie};

fuzz_target!(|input: (&str, &str)| {
    let (value, name) = input;
    if name.is_empty() || name.contains(['=', ';']) || name.trim() != name {
        return;
    }
    let found = cookie_value_in(value.as_bytes(), name);
    let reference = value.split(';').any(|pair| {
        let pair = pair.trim_start();
        pair.len() > name.len() && pair.starts_with(name) && pair.as_bytes()[name.len()] == b'='
    });
    assert_eq!(found, reference);
    let upstream = without_cookie(value, name);
    assert!(!cookie_value_in(upstream.as_bytes(), name), "{upstream:?} still has {name}");
});
