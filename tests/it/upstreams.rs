use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

use crate::support::{client, with_plain_listener, Backend, Echo, Gateway};
use crate::tls::TestCa;

/// A real HTTPS backend (hyper over tokio-rustls) for `backend.test`.
async fn tls_backend(ca: &TestCa) -> std::net::SocketAddr {
    let leaf = ca.leaf(&["backend.test"], false);
    let certs = vec![CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let sni_ok = req.uri().path().to_owned();
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(format!(
                                "tls backend saw {sni_ok}"
                            ))),
                        ))
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_upstream_verified_with_configured_ca() {
    let ca = TestCa::new("backend CA");
    let addr = tls_backend(&ca).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("backend-ca.pem"), ca.pem()).unwrap();
    let other = TestCa::new("unrelated CA");
    std::fs::write(dir.path().join("other-ca.pem"), other.pem()).unwrap();
    let config = with_plain_listener(&format!(
        "upstreams:\n  good: {{ targets: ['{addr}'], tls: {{ sni: backend.test, ca: '{{DIR}}/backend-ca.pem' }} }}\n  bad: {{ targets: ['{addr}'], tls: {{ sni: backend.test, ca: '{{DIR}}/other-ca.pem' }}, passive_health: {{ max_failures: 0 }} }}\nroutes:\n  - {{ name: good, match: {{ path_prefix: /good }}, upstream: good }}\n  - {{ name: bad, match: {{ path_prefix: /bad }}, upstream: bad }}\n"
    ));
    let gateway = Gateway::start_in(dir, &config).await;
    let response = client().get(gateway.url("/good/x")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "tls backend saw /good/x");
    // A backend certificate the configured CA did not sign is refused.
    let response = client().get(gateway.url("/bad/x")).send().await.unwrap();
    assert_eq!(response.status(), 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_named_targets_are_resolved() {
    let echo = Backend::start("echo").await;
    let config = with_plain_listener(&format!(
        "upstreams:\n  named: {{ targets: ['localhost:{}'], dns_refresh: 1s }}\nroutes:\n  - {{ name: all, upstream: named }}\n",
        echo.addr.port()
    ));
    let gateway = Gateway::start(&config).await;
    // The first requests may race the first resolution: 503 then 200.
    let served = crate::support::eventually(std::time::Duration::from_secs(5), || async {
        client()
            .get(gateway.url("/dns"))
            .send()
            .await
            .map(|r| r.status() == 200)
            .unwrap_or(false)
    })
    .await;
    assert!(served);
    for _ in 0..5 {
        let response = client().get(gateway.url("/dns")).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_to_https_and_trace_context() {
    let echo = Backend::start("echo").await;
    let config = format!(
        "listeners:\n  - {{ name: plain, address: '127.0.0.1:{{PORT}}', redirect_https: {{ port: 8443 }} }}\n  - {{ name: inner, address: '127.0.0.1:{port2}' }}\nadmin: {{ address: '127.0.0.1:{{ADMIN}}' }}\nupstreams:\n  echo: {{ targets: ['{}'] }}\nroutes:\n  - {{ name: all, upstream: echo }}\n",
        echo.addr,
        port2 = crate::support::free_port()
    );
    let gateway = Gateway::start(&config).await;
    let no_redirects = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = no_redirects
        .get(gateway.url("/a/b?c=1"))
        .header("host", "Shop.Example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 308);
    assert_eq!(
        response.headers()["location"],
        "https://shop.example.com:8443/a/b?c=1"
    );

    // The second (plain) listener proxies and keeps the W3C trace context.
    let inner_port = config
        .split("name: inner, address: '127.0.0.1:")
        .nth(1)
        .and_then(|s| s.split('\'').next())
        .unwrap()
        .to_owned();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let echo: Echo = client()
        .get(format!("http://127.0.0.1:{inner_port}/t"))
        .header("traceparent", traceparent)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echo.headers["traceparent"], traceparent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_metrics_config_and_health() {
    let echo = Backend::start("echo").await;
    let config = with_plain_listener(&format!(
        "upstreams:\n  echo: {{ targets: ['{}'] }}\nroutes:\n  - {{ name: things, match: {{ path_prefix: /things }}, upstream: echo }}\n",
        echo.addr
    ));
    let gateway = Gateway::start(&config).await;
    for _ in 0..3 {
        client().get(gateway.url("/things/1")).send().await.unwrap();
    }
    client().get(gateway.url("/nothing")).send().await.unwrap();
    let (status, metrics) = crate::support::admin_get(gateway.admin, "/metrics")
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(
        metrics.contains("portcullis_requests_total{route=\"things\",status=\"2xx\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("portcullis_requests_total{route=\"\",status=\"4xx\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains(
        "portcullis_request_duration_seconds_bucket{route=\"things\",status=\"2xx\",le="
    ));
    assert!(metrics.contains("portcullis_open_connections"));
    assert!(metrics.contains(&format!(
        "portcullis_upstream_target_healthy{{target=\"{}\",upstream=\"echo\"}} 1",
        echo.addr
    )));
    let (status, body) = crate::support::admin_get(gateway.admin, "/healthz")
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (200, "{\"status\":\"ok\"}"));
    let (status, config) = crate::support::admin_get(gateway.admin, "/config")
        .await
        .unwrap();
    assert_eq!(status, 200);
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["config"]["routes"][0]["name"], "things");
    assert_eq!(config["generation"], 1);
}
