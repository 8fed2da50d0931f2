//! OpenAPI merge inputs: any text is parsed or refused with an error; a
//! merge of what parses ends in a document or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_openapi_merge::{merge, parse, Input, Options};

fuzz_target!(|input: (&str, &str, bool)| {
    let (first, second, strip) = input;
    let Ok(a) = parse("a", first) else { return };
    let mut inputs = vec![Input { name: "a".into(), prefix: "/a".into(), strip_prefix: strip, document: a }];
    if let Ok(b) = parse("b", second) {
        inputs.push(Input { name: "b".into(), prefix: "/b".into(), strip_prefix: !strip, document: b });
    }
    if let Ok(merged) = merge(inputs, &Options::default()) {
        let _ = portcullis_openapi_merge::dangling_refs(&merged);
    }
});
