//! A local rate-limit decision (target: under 100 ns): key digest and GCRA
//! check for a route with one `user` limit; and the same decision against a
//! real `redis-server` (started here on a free loopback port): one script
//! round trip.

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

// A benchmark outside any runtime while it waits for redis-server.
#[allow(clippy::disallowed_methods)]
fn bench_redis(c: &mut Criterion) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let Ok(mut server) = std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
    else {
        eprintln!("redis-server not installed: skipping the Redis round-trip bench");
        return;
    };
    let yaml = format!(
        "listeners: [ {{ name: p, address: 127.0.0.1:1 }} ]\nredis: {{ url: 'redis://127.0.0.1:{port}' }}\nrate_limits: {{ store: redis, on_redis_error: fail_closed }}\nupstreams:\n  u: {{ targets: [127.0.0.1:2] }}\nroutes:\n  - name: r\n    upstream: u\n    rate_limits: [ {{ key: user, rate: 1000000000/s }} ]\n"
    );
    let valid = portcullis_config::load_from_str(&yaml, Path::new("bench.yaml"), &|_| None)
        .expect("config");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let limiter =
        RateLimiter::compile(&valid.config, &LimiterRegistry::default(), runtime.handle())
            .expect("limits");
    let headers = http::HeaderMap::new();
    let source = KeySource {
        client_ip: None,
        user: Some("user-42"),
        client_id: None,
        api_key: None,
        headers: &headers,
    };
    // Wait for the server, then warm the connection and the script cache.
    let ready = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        matches!(
            runtime.block_on(limiter.check(0, &source)),
            Decision::Allowed { .. }
        )
    });
    if ready {
        c.bench_function("redis_limit_decision", |b| {
            b.iter(|| {
                let decision = runtime.block_on(limiter.check(0, black_box(&source)));
                assert!(matches!(decision, Decision::Allowed { .. }));
            })
        });
    }
    let _ = server.kill();
    let _ = server.wait();
}

criterion_group!(benches, bench, bench_redis);
criterion_main!(benches);
