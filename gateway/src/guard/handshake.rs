//! A deadline for TLS handshakes.
//!
//! pingora 0.9 gives every handshake a fixed 60 s (`services/listening.rs`)
//! and no hook around it, so a client that opens connections and never
//! finishes a handshake holds each for a minute. pingora does offer a
//! callback just before the handshake (`PreTlsProcess`); there each
//! connection is noted, and a timer shuts the socket down if the
//! connection has not reached the guard's `process_new` (which runs right
//! after a successful handshake) by the deadline. The shutdown makes the
//! pending handshake fail at once.
//!
//! The timer names the socket by its descriptor, which the kernel reuses
//! once a connection is closed; so it acts only if the descriptor still
//! holds the same socket, by the kernel's socket cookie (`SO_COOKIE`,
//! unique for the kernel's lifetime).

use std::collections::HashSet;
use std::os::fd::AsRawFd;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::socket::{shutdown, Shutdown};
use pingora::listeners::PreTlsProcess;
use pingora::protocols::l4::ext::get_socket_cookie;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::Stream;

use crate::metrics::metrics;

/// Socket cookies of connections between the pre-handshake callback and
/// `process_new`.
static PENDING: LazyLock<Mutex<HashSet<u64>>> = LazyLock::new(Mutex::default);

fn pending() -> std::sync::MutexGuard<'static, HashSet<u64>> {
    PENDING.lock().unwrap_or_else(|e| e.into_inner())
}

/// The pre-handshake callback of a TLS listener.
pub struct HandshakeDeadline {
    pub timeout: Duration,
}

#[async_trait]
impl PreTlsProcess for HandshakeDeadline {
    async fn process(&self, stream: &mut L4Stream) -> pingora::Result<()> {
        let fd = stream.as_raw_fd();
        let Ok(cookie) = get_socket_cookie(fd) else {
            return Ok(());
        };
        pending().insert(cookie);
        let timeout = self.timeout;
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            // Still pending, and the descriptor still that socket.
            if pending().remove(&cookie) && get_socket_cookie(fd).ok() == Some(cookie) {
                log::debug!("TLS handshake not finished in {timeout:?}; closing");
                metrics().handshake_timeouts.inc();
                let _ = shutdown(fd, Shutdown::Both);
            }
        });
        Ok(())
    }
}

/// The handshake of this connection finished (called from `process_new`).
pub fn completed(stream: &Stream) {
    if stream.get_ssl_digest().is_none() {
        return;
    }
    if let Some(Ok(cookie)) = stream.get_socket_digest().map(|d| d.socket_cookie()) {
        pending().remove(&cookie);
    }
}

/// The callback for a listener.
pub fn callback(timeout: Duration) -> Arc<dyn PreTlsProcess> {
    Arc::new(HandshakeDeadline { timeout })
}
