//! Differential: on every path both accept, the canonical path and the
//! `url` crate's (WHATWG) normalisation name the same resource — equal once
//! every escape is decoded. Paths with `\`, `?` or `#` are left out: WHATWG
//! reads `\` as `/` for http URLs (we refuse it), and `?`/`#` end a path.
//! So are paths with a segment shaped like a Windows drive letter (`C:`,
//! `M|`): the `url` crate never pops those on `..`, even for http URLs,
//! where WHATWG's "shorten a path" does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use percent_encoding::percent_decode;
use portcullis_canonical::{canonical_path, EscapedSlashes, PathParameters, Rules};

fuzz_target!(|raw: &[u8]| {
    if raw.first() != Some(&b'/') || raw.iter().any(|b| matches!(b, b'\\' | b'?' | b'#')) {
        return;
    }
    // Encoded backslashes are data for us and for `url` alike; encoded
    // slashes too (neither splits segments on them).
    let rules = Rules {
        merge_slashes: false,
        escaped_slashes: EscapedSlashes::KeepEscaped,
        path_parameters: PathParameters::Keep,
    };
    let drive_letter = |segment: &[u8]| {
        segment.len() == 2 && segment[0].is_ascii_alphabetic() && matches!(segment[1], b':' | b'|')
    };
    if raw.split(|b| *b == b'/').any(drive_letter) {
        return;
    }
    let Ok(ours) = canonical_path(raw, &rules) else { return };
    let Ok(text) = std::str::from_utf8(raw) else { return };
    let Ok(theirs) = url::Url::parse(&format!("http://fuzz.test{text}")) else { return };
    let decode = |s: &str| percent_decode(s.as_bytes()).collect::<Vec<u8>>();
    assert_eq!(
        decode(&ours),
        decode(theirs.path()),
        "ours {ours:?}, url {:?}",
        theirs.path()
    );
});
