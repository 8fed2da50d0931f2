//! Portcullis gateway: the edge proxy on pingora.
//!
//! Modules, in the order a request meets them: [`guard`] (slow-client
//! deadline on the raw connection), [`proxy`] (pingora glue), [`target`]
//! (the canonical request target), [`routing`],
//! [`upstream`], [`headers`], [`errors`]; around them [`snapshot`] (the
//! compiled config), [`reload`], [`tls`], [`admin`], [`metrics`] and
//! [`access_log`]. LIFECYCLE.md tells the request and reload flows.

pub mod access_log;
pub mod admin;
pub mod auth;
pub mod errors;
pub mod guard;
pub mod headers;
pub mod login;
pub mod metrics;
pub mod portal;
pub mod proxy;
pub mod ratelimit;
pub mod reload;
pub mod routing;
pub mod snapshot;
pub mod target;
pub mod tls;
pub mod upstream;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pingora::listeners::tls::TlsSettings;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::listening::Service;
use portcullis_config::{self as config, ValidConfig};

use crate::reload::Reloader;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("listener `{listener}`: {source}")]
    Tls {
        listener: String,
        #[source]
        source: tls::TlsError,
    },
    #[error("cannot build the runtime: {0}")]
    Runtime(#[from] std::io::Error),
    #[error("{0}")]
    Compile(#[from] snapshot::CompileError),
    #[error("listener `{listener}`: cannot bind {address}: {source}")]
    Bind {
        listener: String,
        address: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Set once SIGTERM arrives: the drain watcher exits early when idle.
static DRAINING: AtomicBool = AtomicBool::new(false);

struct SignalWatch;

#[async_trait::async_trait]
impl ShutdownSignalWatch for SignalWatch {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            log::error!("cannot install signal handlers; stopping");
            return ShutdownSignal::FastShutdown;
        };
        tokio::select! {
            _ = term.recv() => {
                log::info!("SIGTERM: no longer accepting; finishing requests in flight");
                DRAINING.store(true, Ordering::SeqCst);
                ShutdownSignal::GracefulTerminate
            }
            _ = int.recv() => {
                log::info!("SIGINT: stopping now");
                ShutdownSignal::FastShutdown
            }
        }
    }
}

/// pingora sleeps the whole grace period after SIGTERM even when nothing
/// is in flight; this ends the process as soon as the last request is done.
fn spawn_drain_watcher() {
    std::thread::spawn(|| {
        let gauge = &metrics::metrics().in_flight;
        let mut idle_polls = 0;
        loop {
            std::thread::park_timeout(Duration::from_millis(50));
            if !DRAINING.load(Ordering::SeqCst) {
                continue;
            }
            // Idle for a few polls in a row: a request whose headers were
            // still arriving at SIGTERM has had time to show up.
            if gauge.get() <= 0 {
                idle_polls += 1;
            } else {
                idle_polls = 0;
            }
            if idle_polls >= 6 {
                log::info!("drained; exiting");
                std::process::exit(0);
            }
        }
    });
}

/// Runs the gateway until SIGTERM or SIGINT.
pub fn run(valid: ValidConfig) -> Result<(), StartError> {
    // The metric families are built from static definitions; build them
    // before anything serves, so even a mistake there could only fail start.
    metrics::metrics();
    let valid = Arc::new(valid);
    let config = &valid.config;

    // Control plane: health checks, DNS, file watchers, reloads. Kept off
    // the proxy's worker threads so that slow I/O there never delays requests.
    let control = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("portcullis-control")
        .enable_all()
        .build()?;
    let reloader = Arc::new(Reloader::new(valid.clone(), control.handle().clone())?);

    // pingora's defaults are fixed paths in /tmp: two gateways on one host
    // (tests, sidecars) would collide.
    let runtime_dir = std::env::temp_dir().join(format!("portcullis-{}", std::process::id()));
    let conf = ServerConf {
        threads: config
            .server
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        grace_period_seconds: Some(config.server.grace_period.0.as_secs()),
        graceful_shutdown_timeout_seconds: Some(1),
        work_stealing: false,
        pid_file: runtime_dir.join("pid").display().to_string(),
        upgrade_sock: runtime_dir.join("upgrade.sock").display().to_string(),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    // One connection count for every listener (`limits.max_connections`).
    let connections = Arc::new(guard::ConnectionLimit::default());
    for (index, listener) in config.listeners.iter().enumerate() {
        // Fail with a clear message rather than pingora's panic on bind.
        std::net::TcpListener::bind(listener.address).map_err(|source| StartError::Bind {
            listener: listener.name.clone(),
            address: listener.address,
            source,
        })?;
        let gateway = proxy::Gateway {
            snapshot: reloader.shared(),
            listener: index,
        };
        let limits = &config.server.limits;
        let options = guard::ServiceOptions {
            name: &listener.name,
            h2c: listener.h2c,
            max_requests_per_connection: limits.max_requests_per_connection,
            max_connections: listener.max_connections,
            h2_max_concurrent_streams: limits.h2_max_concurrent_streams,
            h2_max_header_list: u32::try_from(limits.max_header_size.0).unwrap_or(u32::MAX),
        };
        let mut service = guard::proxy_service(
            &server.configuration,
            gateway,
            &options,
            connections.clone(),
        );
        let address = listener.address.to_string();
        match &listener.tls {
            None => service.add_tcp(&address),
            Some(tls_config) => {
                let settings = tls_settings(&valid.source, &listener.name, tls_config, &control)?;
                service.add_tls_with_settings(&address, None, settings);
                service
                    .endpoints()
                    .set_pre_tls_callback(guard::handshake::callback(
                        config.server.limits.tls_handshake_timeout.0,
                    ));
            }
        }
        server.add_service(service);
    }

    let admin = admin::service(reloader.clone(), config.admin.address);
    server.add_service(admin);

    control.spawn(upstream::deadline::deadlines().run());
    reload::spawn_watchers(&reloader);
    admin::spawn_readiness_probe(&reloader, control.handle());
    spawn_drain_watcher();

    log::info!(
        "portcullis gateway starting: {} listener(s), admin on {}",
        config.listeners.len(),
        config.admin.address
    );
    server.run(RunArgs {
        shutdown_signal: Box::new(SignalWatch),
    });
    let _ = std::fs::remove_dir_all(&runtime_dir);
    drop(control);
    Ok(())
}

fn tls_settings(
    source: &Path,
    listener: &str,
    tls_config: &config::ListenerTls,
    control: &tokio::runtime::Runtime,
) -> Result<TlsSettings, StartError> {
    let tls_error = |source| StartError::Tls {
        listener: listener.to_owned(),
        source,
    };
    let files: Vec<tls::CertFiles> = tls_config
        .certificates
        .iter()
        .map(|c| tls::CertFiles {
            cert: config::resolve_path(source, &c.cert),
            key: config::resolve_path(source, &c.key),
        })
        .collect();
    let resolver = tls::SniResolver::new(listener, files).map_err(tls_error)?;
    resolver.spawn_watcher(control.handle());
    // Empty paths: the resolver supplies every certificate.
    let mut settings = TlsSettings::intermediate("", "").map_err(|e| StartError::Tls {
        listener: listener.to_owned(),
        source: tls::TlsError::Invalid {
            path: PathBuf::new(),
            message: e.to_string(),
        },
    })?;
    settings.set_cert_resolver(resolver);
    settings.enable_h2();
    if let Some(client_auth) = &tls_config.client_auth {
        let required = client_auth.mode == config::ClientAuthMode::Required;
        let verifier =
            tls::client_verifier(&config::resolve_path(source, &client_auth.ca), required)
                .map_err(tls_error)?;
        settings.set_client_cert_verifier(verifier);
    }
    Ok(settings)
}

/// The proxy service type every listener runs.
pub type ProxyService = Service<guard::GuardedProxy>;
