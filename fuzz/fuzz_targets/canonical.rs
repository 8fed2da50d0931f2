//! The canonical request target: never panics; what it accepts is a
//! fixed point, ASCII, a valid URI path, and free of dot segments (and of
//! empty segments when slashes are merged).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_canonical::{
    canonical_path, canonical_target, EscapedSlashes, PathParameters, Rules, Target,
};

fuzz_target!(|input: (u8, bool, &[u8])| {
    let (flags, is_options, raw) = input;
    let rules = Rules {
        merge_slashes: flags & 1 == 0,
        escaped_slashes: if flags & 2 == 0 { EscapedSlashes::Reject } else { EscapedSlashes::KeepEscaped },
        path_parameters: if flags & 4 == 0 { PathParameters::Reject } else { PathParameters::Keep },
    };
    if let Ok(path) = canonical_path(raw, &rules) {
        assert!(path.is_ascii());
        assert!(path.starts_with('/'));
        let again = canonical_path(path.as_bytes(), &rules).expect("a canonical path is accepted");
        assert_eq!(again, path, "not a fixed point");
        let segments: Vec<&str> = path[1..].split('/').collect();
        for (i, segment) in segments.iter().enumerate() {
            assert!(*segment != "." && *segment != "..", "dot segment in {path}");
            if rules.merge_slashes && i + 1 < segments.len() {
                assert!(!segment.is_empty(), "empty segment in {path}");
            }
        }
        path.parse::<http::uri::PathAndQuery>().expect("a valid URI path");
    }
    if let Ok(Target::Origin(target)) = canonical_target(raw, is_options, Some(b"fuzz.test"), &rules) {
        target.parse::<http::uri::PathAndQuery>().expect("a valid URI target");
    }
});
