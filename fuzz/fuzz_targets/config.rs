//! The config loader on any text: errors, never panics; a config it
//! accepts compiles into a router.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|text: &str| {
    let Ok(valid) = portcullis_config::load_from_str(text, Path::new("fuzz.yaml"), &|_| None) else {
        return;
    };
    let _ = valid.warnings();
    let pools: Vec<&String> = valid.config.upstreams.keys().collect();
    let router = portcullis_gateway::routing::Router::compile(&valid.config.routes, &|name| {
        pools.iter().position(|p| p.as_str() == name)
    });
    let _ = router;
});
