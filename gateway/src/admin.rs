//! The admin listener: `/metrics`, `/healthz`, `/readyz`, `GET /config`,
//! `POST /reload`. Bound to loopback by default: it can change the gateway.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::services::listening::Service;

use crate::metrics::metrics;
use crate::reload::Reloader;

pub struct Admin {
    reloader: Arc<Reloader>,
}

pub fn service(reloader: Arc<Reloader>, address: SocketAddr) -> Service<Admin> {
    let mut service = Service::new("admin".to_owned(), Admin { reloader });
    service.add_tcp(&address.to_string());
    // The admin API is light; one thread keeps it off the proxy's cores.
    service.threads = Some(1);
    service
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Vec<u8>> {
    let bytes = body.to_string().into_bytes();
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CONTENT_LENGTH, bytes.len())
        .body(bytes)
        .unwrap_or_default()
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_owned();
        match (method, path.as_str()) {
            (Method::GET, "/healthz") => json(StatusCode::OK, serde_json::json!({"status": "ok"})),
            (Method::GET, "/readyz") => {
                if self.reloader.is_ready() {
                    json(StatusCode::OK, serde_json::json!({"status": "ready"}))
                } else {
                    json(
                        StatusCode::SERVICE_UNAVAILABLE,
                        serde_json::json!({"status": "starting"}),
                    )
                }
            }
            (Method::GET, "/metrics") => {
                let snapshot = self.reloader.current();
                let gauge = &metrics().target_healthy;
                let breakers = &metrics().breaker_state;
                gauge.reset();
                breakers.reset();
                for pool in &snapshot.pools {
                    for target in pool.targets().iter() {
                        let labels = [&*pool.name, &*target.label];
                        let healthy = pool.is_available(target);
                        gauge.with_label_values(&labels).set(i64::from(healthy));
                        breakers
                            .with_label_values(&labels)
                            .set(pool.breaker(target) as i64);
                    }
                }
                let body = metrics().render();
                Response::builder()
                    .status(StatusCode::OK)
                    .header(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")
                    .header(http::header::CONTENT_LENGTH, body.len())
                    .body(body)
                    .unwrap_or_default()
            }
            (Method::GET, "/config") => {
                let snapshot = self.reloader.current();
                let config = serde_json::to_value(&snapshot.config.config).unwrap_or_default();
                json(
                    StatusCode::OK,
                    serde_json::json!({
                        "generation": snapshot.generation,
                        "source": snapshot.config.source.display().to_string(),
                        "config": config,
                    }),
                )
            }
            (Method::POST, "/reload") => {
                let reloader = self.reloader.clone();
                match tokio::task::spawn_blocking(move || reloader.reload()).await {
                    Ok(Ok(generation)) => json(
                        StatusCode::OK,
                        serde_json::json!({"status": "reloaded", "generation": generation}),
                    ),
                    Ok(Err(e)) => json(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        serde_json::json!({"status": "rejected", "error": e.to_string()}),
                    ),
                    Err(_) => json(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        serde_json::json!({"status": "failed"}),
                    ),
                }
            }
            _ => json(
                StatusCode::NOT_FOUND,
                serde_json::json!({"error": "not found"}),
            ),
        }
    }
}

/// Marks the gateway ready once every proxy listener accepts connections.
pub fn spawn_readiness_probe(reloader: &Arc<Reloader>, runtime: &tokio::runtime::Handle) {
    let reloader = reloader.clone();
    runtime.spawn(async move {
        let addresses: Vec<SocketAddr> = reloader
            .current()
            .config
            .config
            .listeners
            .iter()
            .map(|l| probe_address(l.address))
            .collect();
        loop {
            let mut all = true;
            for address in &addresses {
                let connect = tokio::net::TcpStream::connect(address);
                if !matches!(
                    tokio::time::timeout(Duration::from_millis(500), connect).await,
                    Ok(Ok(_))
                ) {
                    all = false;
                }
            }
            if all {
                reloader.set_ready();
                log::info!("all listeners bound: ready");
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

/// A wildcard bind is probed on loopback.
fn probe_address(address: SocketAddr) -> SocketAddr {
    let mut probe = address;
    if address.ip().is_unspecified() {
        probe.set_ip(match address {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    probe
}
