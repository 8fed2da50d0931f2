//! The per-request cost of the edge checks: the strict HTTP/1 head check,
//! the canonical target, the reserved-header scan, and arming plus
//! disarming an upstream deadline.

use std::hint::black_box;
use std::os::fd::AsRawFd;

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis_canonical::{canonical_target, Rules};
use portcullis_gateway::auth::ReservedHeaders;
use portcullis_gateway::guard::framing::{check_head, scan_head, HeadLimits, Scan};
use portcullis_gateway::upstream::deadline::deadlines;

const HEAD: &[u8] = b"GET /api/orders/42?expand=items HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36\r\nAccept: application/json\r\nAccept-Encoding: gzip, deflate, br\r\nAuthorization: Bearer eyJhbGciOiJSUzI1NiIsImtpZCI6InJzYS1hIn0.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl\r\nX-Request-Id: 5f0c2b6e-8c1d-4b7a-9c2e-1d2f3a4b5c6d\r\n\r\n";

fn edge(c: &mut Criterion) {
    let limits = HeadLimits {
        max_target: 8192,
        max_head: 48 * 1024,
        max_fields: 100,
    };
    c.bench_function("guard: scan and check a request head", |b| {
        b.iter(|| {
            let Scan::Complete { start, end } = scan_head(black_box(HEAD), &limits) else {
                panic!("incomplete")
            };
            black_box(check_head(&HEAD[start..end], &limits).is_ok())
        })
    });
    let rules = Rules::default();
    c.bench_function("canonical target, already canonical", |b| {
        b.iter(|| {
            black_box(
                canonical_target(
                    black_box(b"/api/orders/42?expand=items"),
                    false,
                    None,
                    &rules,
                )
                .is_ok(),
            )
        })
    });
    c.bench_function("canonical target, with dot segments and escapes", |b| {
        b.iter(|| {
            black_box(
                canonical_target(
                    black_box(b"/api/./orders/%34%32/../42?expand=items"),
                    false,
                    None,
                    &rules,
                )
                .is_ok(),
            )
        })
    });
    let reserved = ReservedHeaders::new(["x-user-id", "x-user-roles"], ["x-user-", "x-auth-"]);
    let names = [
        "host",
        "user-agent",
        "accept",
        "accept-encoding",
        "authorization",
        "x-request-id",
    ];
    c.bench_function("reserved-header scan of 6 headers", |b| {
        b.iter(|| {
            black_box(
                names
                    .iter()
                    .filter(|n| reserved.contains(black_box(n)))
                    .count(),
            )
        })
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let stream =
        std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (local, peer) = (
        stream.local_addr().expect("local"),
        stream.peer_addr().expect("peer"),
    );
    let _guard = runtime.enter();
    c.bench_function("upstream deadline: arm and disarm", |b| {
        b.iter(|| {
            let at = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
            let watch = deadlines().arm(stream.as_raw_fd(), local, peer, at);
            deadlines().disarm(watch);
        })
    });
}

criterion_group!(benches, edge);
criterion_main!(benches);
