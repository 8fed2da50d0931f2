//! The route compiler and matcher: any set of (valid) routes compiles or
//! is refused with an error, and every lookup terminates; an exact route
//! is always found by its own path and host.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use portcullis_gateway::routing::{RequestView, Router};
use std::path::Path;

#[derive(Arbitrary, Debug)]
struct Spec {
    host: Option<u8>,
    wildcard: bool,
    kind: u8,
    segments: Vec<u8>,
    method: Option<bool>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    routes: Vec<Spec>,
    lookups: Vec<(Option<u8>, Vec<u8>, bool)>,
}

const WORDS: [&str; 6] = ["a", "b", "users", "orders", "{id}", "x-y"];

fn path_of(segments: &[u8], templates: bool) -> String {
    let mut path = String::new();
    for s in segments.iter().take(6) {
        let word = WORDS[usize::from(*s) % WORDS.len()];
        if word.starts_with('{') && !templates {
            path.push_str("/p");
        } else if word.starts_with('{') {
            path.push_str(&format!("/{{id{}}}", path.len()));
        } else {
            path.push('/');
            path.push_str(word);
        }
    }
    if path.is_empty() {
        path.push('/');
    }
    path
}

fuzz_target!(|input: Input| {
    let mut yaml = String::from("listeners: [{ name: p, address: '127.0.0.1:1' }]\nupstreams: { u: { targets: ['127.0.0.1:2'] } }\nroutes:\n");
    for (i, spec) in input.routes.iter().take(30).enumerate() {
        let host = match spec.host {
            Some(h) if spec.wildcard => format!("hosts: ['*.h{}.test'], ", h % 4),
            Some(h) => format!("hosts: [h{}.test], ", h % 4),
            None => String::new(),
        };
        let matcher = match spec.kind % 3 {
            0 => format!("path: '{}'", path_of(&spec.segments, true)),
            1 => format!("path_prefix: '{}'", path_of(&spec.segments, false)),
            _ => format!("path: '{}'", path_of(&spec.segments, false)),
        };
        let method = match spec.method {
            Some(true) => ", methods: [GET]",
            Some(false) => ", methods: [POST]",
            None => "",
        };
        yaml.push_str(&format!("  - {{ name: r{i}, match: {{ {host}{matcher}{method} }}, upstream: u }}\n"));
    }
    let Ok(valid) = portcullis_config::load_from_str(&yaml, Path::new("fuzz.yaml"), &|_| None) else {
        return;
    };
    let Ok(router) = Router::compile(&valid.config.routes, &|_| Some(0)) else { return };
    let headers = http::HeaderMap::new();
    for (host, segments, get) in input.lookups.iter().take(20) {
        let host = host.map_or(String::from("other.test"), |h| format!("x.h{}.test", h % 4));
        let path = path_of(segments, false);
        let method = if *get { http::Method::GET } else { http::Method::POST };
        let view = RequestView { host: &host, path: &path, method: &method, headers: &headers };
        if let Some(found) = router.lookup(&view) {
            assert!(found.route_index < router.routes().len());
        }
    }
    // Every exact host-less route without methods is found by its own path.
    for (i, route) in valid.config.routes.iter().enumerate() {
        let m = &route.matcher;
        if let (Some(path), true, true) = (&m.path, m.hosts.is_empty(), m.methods.is_empty()) {
            if path.contains('{') {
                continue;
            }
            let view = RequestView { host: "none.test", path, method: &http::Method::GET, headers: &headers };
            let found = router.lookup(&view).map(|f| f.route_index);
            assert!(found.is_some(), "route {i} `{path}` not found");
        }
    }
});
