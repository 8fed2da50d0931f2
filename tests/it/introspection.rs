//! Opaque tokens checked by RFC 7662 introspection against a local IdP
//! stub that counts calls, answers slowly or not at all.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::support::{client, with_plain_listener, Backend, Echo, Gateway};

#[derive(Clone, Default)]
struct Stub {
    calls: Arc<AtomicUsize>,
    active: Arc<AtomicBool>,
    delay_ms: Arc<AtomicU64>,
}

async fn start_stub(stub: Stub) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/introspect", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let stub = stub.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let stub = stub.clone();
                        async move {
                            stub.calls.fetch_add(1, Ordering::SeqCst);
                            let authorized = req
                                .headers()
                                .get("authorization")
                                .is_some_and(|v| v.to_str().unwrap().starts_with("Basic "));
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let form = String::from_utf8_lossy(&body).to_string();
                            tokio::time::sleep(Duration::from_millis(
                                stub.delay_ms.load(Ordering::SeqCst),
                            ))
                            .await;
                            let answer = if authorized
                                && form.contains("token=opaque-")
                                && stub.active.load(Ordering::SeqCst)
                            {
                                serde_json::json!({
                                    "active": true, "sub": "svc-7", "scope": "orders:read",
                                    "aud": "api", "exp": crate::support::unix_now() + 3600,
                                })
                            } else {
                                serde_json::json!({ "active": false })
                            };
                            Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(
                                answer.to_string(),
                            ))))
                        }
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    url
}

/// The status of GET `path` with a bearer token.
async fn status(gateway: &Gateway, path: &str, token: &str) -> u16 {
    client()
        .get(gateway.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn config(echo: &Backend, endpoint: &str, on_error: &str) -> String {
    with_plain_listener(&format!(
        "identity:\n  providers:\n    - name: idp\n      issuer: 'https://idp.example.com'\n      jwks_uri: 'http://127.0.0.1:9/jwks'\n      audiences: [api]\n      roles_claim: scope\n      fetch_timeout: 1s\n      introspection: {{ endpoint: '{endpoint}', client_id: gateway, client_secret: 'not-a-real-secret', max_ttl: 1s, negative_ttl: 1s, on_error: {on_error} }}\nupstreams:\n  echo: {{ targets: ['{}'] }}\nroutes:\n  - {{ name: r, upstream: echo, auth: {{ mode: required, roles_any: ['orders:read'] }} }}\n",
        echo.addr
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspected_once_then_cached_until_revoked_entry_expires() {
    let stub = Stub::default();
    stub.active.store(true, Ordering::SeqCst);
    let endpoint = start_stub(stub.clone()).await;
    let echo = Backend::start("echo").await;
    let gateway = Gateway::start(&config(&echo, &endpoint, "unavailable")).await;

    let response = client()
        .get(gateway.url("/a"))
        .bearer_auth("opaque-abc")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen: Echo = response.json().await.unwrap();
    assert_eq!(seen.headers["x-user-id"], "svc-7");
    for _ in 0..20 {
        assert_eq!(status(&gateway, "/a", "opaque-abc").await, 200);
    }
    assert_eq!(
        stub.calls.load(Ordering::SeqCst),
        1,
        "cached answers were not used"
    );

    // Revoked: accepted from the cache until its entry (max_ttl 1 s) expires.
    stub.active.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(status(&gateway, "/a", "opaque-abc").await, 401);
    assert_eq!(stub.calls.load(Ordering::SeqCst), 2);
    // The negative answer is cached too.
    assert_eq!(status(&gateway, "/a", "opaque-abc").await, 401);
    assert_eq!(stub.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_share_one_call() {
    let stub = Stub::default();
    stub.active.store(true, Ordering::SeqCst);
    stub.delay_ms.store(300, Ordering::SeqCst);
    let endpoint = start_stub(stub.clone()).await;
    let echo = Backend::start("echo").await;
    let gateway = Gateway::start(&config(&echo, &endpoint, "unavailable")).await;
    let requests = (0..30).map(|_| {
        let url = gateway.url("/c");
        async move {
            client()
                .get(url)
                .bearer_auth("opaque-shared")
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    for status in futures_util::future::join_all(requests).await {
        assert_eq!(status, 200);
    }
    assert_eq!(stub.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idp_down_or_hanging_is_503_or_401_never_a_hang() {
    let hanging = Stub::default();
    hanging.delay_ms.store(30_000, Ordering::SeqCst);
    let endpoint = start_stub(hanging.clone()).await;
    let echo = Backend::start("echo").await;
    for (on_error, expected) in [("unavailable", 503), ("reject", 401)] {
        let gateway = Gateway::start(&config(&echo, &endpoint, on_error)).await;
        let started = Instant::now();
        let response = client()
            .get(gateway.url("/h"))
            .bearer_auth("opaque-x")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), expected, "{on_error}");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "took {:?}",
            started.elapsed()
        );
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["status"], expected);
    }
    // Nothing listening at all.
    let gateway = Gateway::start(&config(
        &echo,
        "http://127.0.0.1:9/introspect",
        "unavailable",
    ))
    .await;
    let response = client()
        .get(gateway.url("/h"))
        .bearer_auth("opaque-y")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
}
