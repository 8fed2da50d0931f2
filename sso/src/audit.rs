//! Audit events: one JSON line on stdout (for the log pipeline) and one
//! row in the directory (for `GET {issuer}/admin/audit`). Rows are written
//! in batches by one task, so recording never waits on the database; when
//! the database falls behind by more than [`BACKLOG`] events, newer rows
//! are dropped (and counted in the log) — the stdout line is still there.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;

use crate::directory::{AuditEvent, Directory};

/// Events waiting for the database at most.
const BACKLOG: usize = 10_000;
/// Rows per transaction at most.
const BATCH: usize = 200;
/// How often events past their retention are deleted (and once at start).
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Where audit events go.
pub struct AuditLog {
    rows: mpsc::Sender<AuditEvent>,
}

impl AuditLog {
    /// Starts the writer and the pruning of events older than
    /// `retention` (needs a tokio runtime).
    pub fn start(directory: Arc<dyn Directory>, retention: Duration) -> AuditLog {
        let (rows, mut pending) = mpsc::channel::<AuditEvent>(BACKLOG);
        let pruned = directory.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(PRUNE_EVERY);
            loop {
                every.tick().await;
                let before = crate::keys::now_secs().saturating_sub(retention.as_secs()) as i64;
                match pruned.prune_audit(before).await {
                    Ok(0) => {}
                    Ok(n) => log::info!("audit: {n} events older than {retention:?} removed"),
                    Err(e) => log::warn!("audit: pruning failed: {e}"),
                }
            }
        });
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            while pending.recv_many(&mut batch, BATCH).await > 0 {
                if let Err(e) = directory.record(&batch).await {
                    log::error!("audit: {} events not stored: {e}", batch.len());
                }
                batch.clear();
            }
        });
        AuditLog { rows }
    }

    /// Records an event (`event`, and `sub`, `by`, `client_id` where they
    /// apply); the time is added here.
    pub fn record(&self, mut event: Value) {
        event["time"] = crate::keys::now_secs().into();
        event["audit"] = true.into();
        println!("{event}");
        if self.rows.try_send(AuditEvent::from_logged(event)).is_err() {
            log::warn!("audit: the directory is behind; an event was not stored");
        }
    }
}
