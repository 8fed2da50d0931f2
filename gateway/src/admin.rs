//! The admin listener: `/metrics`, `/healthz`, `/readyz`, `GET /config`,
//! `POST /reload`, and its own OpenAPI document at `/openapi.json` (utoipa),
//! which a route can merge into the portal like any backend's. Bound to
//! loopback by default: it can change the gateway.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::services::listening::Service;
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

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

/// The admin API's document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Portcullis gateway admin API",
        description = "Health, metrics, the running configuration and reloads of one gateway process."
    ),
    paths(healthz, readyz, prometheus_metrics, running_config, reload),
    components(schemas(Status, Reloaded, Rejected, RunningConfig)),
    tags((name = "admin", description = "The gateway's admin listener"))
)]
pub struct AdminApi;

/// `{"status": ...}`
#[derive(Serialize, ToSchema)]
struct Status {
    /// `ok`, `ready` or `starting`.
    status: String,
}

/// A reload that took effect.
#[derive(Serialize, ToSchema)]
struct Reloaded {
    /// `reloaded`
    status: String,
    /// The new config generation (1 at start).
    generation: u64,
}

/// A reload that was refused: the previous config keeps serving.
#[derive(Serialize, ToSchema)]
struct Rejected {
    /// `rejected`
    status: String,
    /// Every problem, each as `file:line:column: key.path: message`.
    error: String,
}

/// The configuration in effect.
#[derive(Serialize, ToSchema)]
struct RunningConfig {
    generation: u64,
    /// The config file.
    source: String,
    /// The parsed config with every default filled in.
    #[schema(value_type = Object)]
    config: serde_json::Value,
}

fn json(status: StatusCode, body: &impl Serialize) -> Response<Vec<u8>> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CONTENT_LENGTH, bytes.len())
        .body(bytes)
        .unwrap_or_default()
}

fn status(code: StatusCode, status: &str) -> Response<Vec<u8>> {
    json(
        code,
        &Status {
            status: status.into(),
        },
    )
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "admin",
    responses((status = 200, description = "Alive", body = Status)))]
fn healthz() -> Response<Vec<u8>> {
    status(StatusCode::OK, "ok")
}

/// Readiness: every listener accepts connections.
#[utoipa::path(get, path = "/readyz", tag = "admin",
    responses(
        (status = 200, description = "Ready", body = Status),
        (status = 503, description = "Still starting", body = Status)))]
fn readyz(reloader: &Reloader) -> Response<Vec<u8>> {
    if reloader.is_ready() {
        status(StatusCode::OK, "ready")
    } else {
        status(StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}

/// Prometheus metrics: requests, latencies, upstream health, breakers,
/// rate limits, reloads.
#[utoipa::path(get, path = "/metrics", tag = "admin",
    responses((status = 200, description = "Prometheus text format", body = String,
        content_type = "text/plain; version=0.0.4")))]
fn prometheus_metrics(reloader: &Reloader) -> Response<Vec<u8>> {
    let snapshot = reloader.current();
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

/// The configuration in effect, with defaults filled in.
#[utoipa::path(get, path = "/config", tag = "admin",
    responses((status = 200, description = "The running config", body = RunningConfig)))]
fn running_config(reloader: &Reloader) -> Response<Vec<u8>> {
    let snapshot = reloader.current();
    json(
        StatusCode::OK,
        &RunningConfig {
            generation: snapshot.generation,
            source: snapshot.config.source.display().to_string(),
            config: serde_json::to_value(&snapshot.config.config).unwrap_or_default(),
        },
    )
}

/// Reloads the config file; on any problem the previous config keeps serving.
#[utoipa::path(post, path = "/reload", tag = "admin",
    responses(
        (status = 200, description = "Reloaded", body = Reloaded),
        (status = 422, description = "Rejected; the previous config keeps serving", body = Rejected),
        (status = 500, description = "The reload task failed", body = Status)))]
async fn reload(reloader: Arc<Reloader>) -> Response<Vec<u8>> {
    match tokio::task::spawn_blocking(move || reloader.reload()).await {
        Ok(Ok(generation)) => json(
            StatusCode::OK,
            &Reloaded {
                status: "reloaded".into(),
                generation,
            },
        ),
        Ok(Err(e)) => json(
            StatusCode::UNPROCESSABLE_ENTITY,
            &Rejected {
                status: "rejected".into(),
                error: e.to_string(),
            },
        ),
        Err(_) => status(StatusCode::INTERNAL_SERVER_ERROR, "failed"),
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_owned();
        match (method, path.as_str()) {
            (Method::GET, "/healthz") => healthz(),
            (Method::GET, "/readyz") => readyz(&self.reloader),
            (Method::GET, "/metrics") => prometheus_metrics(&self.reloader),
            (Method::GET, "/config") => running_config(&self.reloader),
            (Method::POST, "/reload") => reload(self.reloader.clone()).await,
            (Method::GET, "/openapi.json") => json(StatusCode::OK, &AdminApi::openapi()),
            _ => json(
                StatusCode::NOT_FOUND,
                &serde_json::json!({"error": "not found"}),
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
