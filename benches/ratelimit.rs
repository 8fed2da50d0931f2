//! A local rate-limit decision (target: under 100 ns): key digest and GCRA
//! check for a route with one `user` limit.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use futures_util::FutureExt;
use portcullis_gateway::ratelimit::{Decision, KeySource, LimiterRegistry, RateLimiter};

fn bench(c: &mut Criterion) {
    let yaml = "listeners: [ { name: p, address: 127.0.0.1:1 } ]\nupstreams:\n  u: { targets: [127.0.0.1:2] }\nroutes:\n  - name: r\n    upstream: u\n    rate_limits: [ { key: user, rate: 1000000000/s } ]\n";
    let valid =
        portcullis_config::load_from_str(yaml, Path::new("bench.yaml"), &|_| None).expect("config");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let limiter =
        RateLimiter::compile(&valid.config, &LimiterRegistry::default(), runtime.handle())
            .expect("limits");
    let headers = http::HeaderMap::new();
    let source = KeySource {
        client_ip: Some("198.51.100.7".parse().expect("ip")),
        user: Some("user-42"),
        client_id: None,
        api_key: None,
        headers: &headers,
    };
    c.bench_function("local_limit_decision", |b| {
        b.iter(|| {
            let decision = limiter
                .check(0, black_box(&source))
                .now_or_never()
                .expect("local never waits");
            assert!(matches!(decision, Decision::Allowed { .. }));
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
