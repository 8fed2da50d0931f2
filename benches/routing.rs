//! Route lookup with 1,000 routes (target: under 200 ns per lookup).
//!
//! The table mixes what real gateways carry: exact hosts, wildcard hosts,
//! any-host routes; exact paths, templates and prefixes; method and header
//! conditions. Lookups cover the best and the worst paths through it.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, Method};
use portcullis_gateway::routing::{RequestView, Router};

fn thousand_routes() -> String {
    let mut yaml = String::from(
        "listeners: [ { name: plain, address: 127.0.0.1:8080 } ]\nupstreams:\n  u: { targets: [127.0.0.1:9000] }\nroutes:\n",
    );
    for i in 0..1000 {
        let line = match i % 5 {
            0 => format!("  - {{ name: r{i}, match: {{ hosts: [svc{i}.example.com], path_prefix: /api/v{i} }}, upstream: u }}\n"),
            1 => format!("  - {{ name: r{i}, match: {{ path: '/tenants/{{tenant}}/items{i}/{{id}}' }}, upstream: u }}\n"),
            2 => format!("  - {{ name: r{i}, match: {{ path_prefix: /service{i}/v1, methods: [GET, POST] }}, upstream: u }}\n"),
            3 => format!("  - {{ name: r{i}, match: {{ hosts: ['*.zone{i}.example.com'], path: /status }}, upstream: u }}\n"),
            _ => format!("  - {{ name: r{i}, match: {{ path: /exact/{i}, headers: {{ x-version: '2' }} }}, upstream: u }}\n"),
        };
        yaml.push_str(&line);
    }
    yaml.push_str("  - { name: fallback, upstream: u }\n");
    yaml
}

fn bench_lookup(c: &mut Criterion) {
    let valid =
        portcullis_config::load_from_str(&thousand_routes(), Path::new("bench.yaml"), &|_| None)
            .expect("bench config is valid");
    let router = Router::compile(&valid.config.routes, &|_| Some(0)).expect("routes compile");
    assert_eq!(router.routes().len(), 1001);

    let mut v2 = HeaderMap::new();
    v2.insert("x-version", "2".parse().expect("header"));
    let empty = HeaderMap::new();
    let get = Method::GET;
    let cases: [(&str, &str, &str, &HeaderMap, &str); 6] = [
        (
            "exact host + prefix",
            "svc500.example.com",
            "/api/v500/orders/17",
            &empty,
            "r500",
        ),
        (
            "template",
            "any.test",
            "/tenants/acme/items501/42",
            &empty,
            "r501",
        ),
        (
            "deep prefix",
            "any.test",
            "/service502/v1/a/b/c/d/e",
            &empty,
            "r502",
        ),
        (
            "wildcard host",
            "eu.zone503.example.com",
            "/status",
            &empty,
            "r503",
        ),
        ("exact + header", "any.test", "/exact/504", &v2, "r504"),
        (
            "fallback miss",
            "unknown.example.org",
            "/no/such/path/here/at/all",
            &empty,
            "fallback",
        ),
    ];
    let mut group = c.benchmark_group("route_lookup_1000");
    for (label, host, path, headers, expected) in cases {
        let view = RequestView {
            host,
            path,
            method: &get,
            headers,
        };
        let found = router.lookup(&view).map(|m| m.route.name.to_string());
        assert_eq!(found.as_deref(), Some(expected), "{label}");
        group.bench_function(label, |b| {
            b.iter(|| {
                let view = RequestView {
                    host: black_box(host),
                    path: black_box(path),
                    method: &get,
                    headers,
                };
                black_box(router.lookup(&view).map(|m| m.route_index))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_lookup);
criterion_main!(benches);
