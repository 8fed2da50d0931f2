//! Config reload: load → validate → compile → swap, or keep the old one.
//!
//! Triggers: SIGHUP, `POST /reload` on the admin listener, and a change of
//! the config file's contents (polled, because Kubernetes updates a mounted
//! ConfigMap by swapping a symlink, which inotify watchers often miss).
//! Requests in flight keep the snapshot they started with.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use portcullis_config::{self as config, ValidConfig};

use crate::metrics::metrics;
use crate::snapshot::{CompileError, Registries, SharedSnapshot, Snapshot};

/// How often the config file is checked for changes.
const WATCH_POLL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Load(#[from] config::LoadError),
    #[error("{0}")]
    Compile(#[from] CompileError),
    #[error(
        "listeners changed ({0}); listeners are bound at start, so restart to apply this config"
    )]
    ListenersChanged(String),
}

pub struct Reloader {
    path: PathBuf,
    shared: SharedSnapshot,
    registries: Registries,
    runtime: tokio::runtime::Handle,
    generation: AtomicU64,
    /// One reload at a time: two triggers at once must not interleave.
    lock: Mutex<()>,
    /// What the listeners were bound with at start.
    listeners_at_start: String,
    ready: AtomicBool,
}

/// What of a listener cannot change without a restart.
fn listener_fingerprint(config: &config::FileConfig) -> String {
    config
        .listeners
        .iter()
        .map(|l| {
            let certs: Vec<String> = l
                .tls
                .iter()
                .flat_map(|t| {
                    t.certificates
                        .iter()
                        .map(|c| format!("{}+{}", c.cert, c.key))
                })
                .collect();
            let client_auth = l
                .tls
                .as_ref()
                .and_then(|t| t.client_auth.as_ref())
                .map(|c| format!("{}:{:?}", c.ca, c.mode));
            format!(
                "{}@{} h2c={} tls={certs:?} mtls={client_auth:?}",
                l.name, l.address, l.h2c
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
        + &format!(" admin={}", config.admin.address)
}

impl Reloader {
    pub fn new(
        valid: Arc<ValidConfig>,
        runtime: tokio::runtime::Handle,
    ) -> Result<Reloader, CompileError> {
        let registries = Registries::new(runtime.clone());
        let (snapshot, new_parts) = Snapshot::compile(valid.clone(), &registries, 1)?;
        new_parts.start(&runtime);
        let shared = Arc::new(ArcSwap::from_pointee(snapshot));
        crate::portal::spawn_fetcher(shared.clone(), registries.portal.clone(), &runtime);
        Ok(Reloader {
            path: valid.source.clone(),
            shared,
            registries,
            runtime,
            generation: AtomicU64::new(1),
            lock: Mutex::new(()),
            listeners_at_start: listener_fingerprint(&valid.config),
            ready: AtomicBool::new(false),
        })
    }

    pub fn shared(&self) -> SharedSnapshot {
        self.shared.clone()
    }

    pub fn current(&self) -> Arc<Snapshot> {
        self.shared.load_full()
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Reloads from the config file. On error nothing changes.
    pub fn reload(&self) -> Result<u64, ReloadError> {
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let result = self.reload_locked();
        let outcome = if result.is_ok() { "success" } else { "failure" };
        metrics().reloads.with_label_values(&[outcome]).inc();
        match &result {
            Ok(generation) => log::info!("config reloaded: generation {generation}"),
            Err(e) => {
                log::error!("config reload rejected, the previous config keeps serving:\n{e}")
            }
        }
        result
    }

    fn reload_locked(&self) -> Result<u64, ReloadError> {
        let valid = Arc::new(config::load(&self.path)?);
        let listeners = listener_fingerprint(&valid.config);
        if listeners != self.listeners_at_start {
            return Err(ReloadError::ListenersChanged(
                "address, TLS files, mTLS, h2c or admin address".into(),
            ));
        }
        let generation = self.generation.load(Ordering::SeqCst) + 1;
        let (snapshot, new_parts) = Snapshot::compile(valid, &self.registries, generation)?;
        new_parts.start(&self.runtime);
        self.shared.store(Arc::new(snapshot));
        self.generation.store(generation, Ordering::SeqCst);
        self.registries.portal.wake();
        Ok(generation)
    }
}

/// SIGHUP and config-file watching.
pub fn spawn_watchers(reloader: &Arc<Reloader>) {
    let on_hup = reloader.clone();
    reloader.runtime.spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            log::error!("cannot listen for SIGHUP");
            return;
        };
        while hup.recv().await.is_some() {
            log::info!("SIGHUP: reloading config");
            let reloader = on_hup.clone();
            let _ = tokio::task::spawn_blocking(move || reloader.reload()).await;
        }
    });

    if !reloader.current().config.config.server.watch_config {
        return;
    }
    let watcher = reloader.clone();
    reloader.runtime.spawn(async move {
        let mut last = std::fs::read(&watcher.path).ok();
        loop {
            tokio::time::sleep(WATCH_POLL).await;
            let now = std::fs::read(&watcher.path).ok();
            if now.is_some() && now != last {
                last = now;
                log::info!("config file changed: reloading");
                let reloader = watcher.clone();
                let _ = tokio::task::spawn_blocking(move || reloader.reload()).await;
            }
        }
    });
}
