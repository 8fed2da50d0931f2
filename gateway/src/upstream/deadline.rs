//! Deadlines on an upstream exchange that trickled bytes cannot reset.
//!
//! pingora bounds each read from an upstream, not the whole response: a
//! backend that sends one byte just inside every read timeout keeps a
//! request (and the client, and a bulkhead slot) forever. pingora has no
//! hook while it waits for a response head, so the deadline is kept
//! outside it: when the upstream connection is up (`connected_to_upstream`
//! hands over its descriptor) the request arms a deadline here; one reaper
//! task shuts the socket down when a deadline passes, which makes pingora's
//! pending read fail at once (→ 504, the connection discarded). A request
//! disarms its deadline when the head (or the whole response) arrived.
//!
//! Per request this costs one insertion and one removal in a shared ordered
//! map; the reaper sleeps until the earliest deadline.
//!
//! The socket is named by its descriptor, which the kernel reuses once a
//! connection is closed, so the reaper acts only if the descriptor still
//! joins the same two addresses.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};

use nix::sys::socket::{getpeername, getsockname, shutdown, Shutdown, SockaddrStorage};
use tokio::sync::Notify;
use tokio::time::Instant;

type Key = (Instant, u64);

struct Armed {
    fd: RawFd,
    local: SocketAddr,
    peer: SocketAddr,
}

/// Every armed deadline of the process.
#[derive(Default)]
pub struct Deadlines {
    armed: Mutex<BTreeMap<Key, Armed>>,
    earliest_changed: Notify,
    next_id: AtomicU64,
}

/// One armed deadline, held by the request. A deadline the reaper has
/// acted on is no longer in the map: [`Deadlines::disarm`] says so.
#[derive(Debug)]
pub struct Watch {
    key: Key,
}

static DEADLINES: LazyLock<Deadlines> = LazyLock::new(Deadlines::default);

/// The process's deadlines.
pub fn deadlines() -> &'static Deadlines {
    &DEADLINES
}

fn socket_addr(storage: SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = storage.as_sockaddr_in() {
        return Some(SocketAddr::from((v4.ip(), v4.port())));
    }
    storage
        .as_sockaddr_in6()
        .map(|v6| SocketAddr::from((v6.ip(), v6.port())))
}

/// The two ends of a connected socket, as the kernel sees them now.
fn ends(fd: RawFd) -> Option<(SocketAddr, SocketAddr)> {
    let local = socket_addr(getsockname::<SockaddrStorage>(fd).ok()?)?;
    let peer = socket_addr(getpeername::<SockaddrStorage>(fd).ok()?)?;
    Some((local, peer))
}

impl Deadlines {
    /// Arms a deadline for the connection on `fd` between `local` and
    /// `peer`.
    pub fn arm(&self, fd: RawFd, local: SocketAddr, peer: SocketAddr, at: Instant) -> Watch {
        let key = (at, self.next_id.fetch_add(1, Ordering::Relaxed));
        let mut armed = self.armed.lock().unwrap_or_else(|e| e.into_inner());
        let earliest = armed.keys().next().is_none_or(|first| key < *first);
        armed.insert(key, Armed { fd, local, peer });
        drop(armed);
        if earliest {
            self.earliest_changed.notify_one();
        }
        Watch { key }
    }

    /// The exchange got what the deadline was waiting for. Returns false
    /// when the deadline had already passed and the connection was cut.
    pub fn disarm(&self, watch: Watch) -> bool {
        let mut armed = self.armed.lock().unwrap_or_else(|e| e.into_inner());
        armed.remove(&watch.key).is_some()
    }

    /// Shuts down every connection whose deadline has passed; returns the
    /// next deadline.
    fn reap(&self, now: Instant) -> Option<Instant> {
        let mut armed = self.armed.lock().unwrap_or_else(|e| e.into_inner());
        let later = armed.split_off(&(now, u64::MAX));
        let due = std::mem::replace(&mut *armed, later);
        let next = armed.keys().next().map(|k| k.0);
        drop(armed);
        for entry in due.into_values() {
            if ends(entry.fd) == Some((entry.local, entry.peer)) {
                log::debug!("upstream {} past its deadline; closing", entry.peer);
                let _ = shutdown(entry.fd, Shutdown::Both);
            }
        }
        next
    }

    /// The reaper: runs for the life of the process.
    pub async fn run(&'static self) {
        loop {
            let next = self.reap(Instant::now());
            match next {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = self.earliest_changed.notified() => {}
                    }
                }
                None => self.earliest_changed.notified().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[tokio::test]
    async fn a_passed_deadline_shuts_the_connection_and_a_disarmed_one_does_not() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let b = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let deadlines = Box::leak(Box::default()) as &'static Deadlines;
        let now = Instant::now();
        let ends_of = |s: &std::net::TcpStream| (s.local_addr().unwrap(), s.peer_addr().unwrap());
        let (la, pa) = ends_of(&a);
        let (lb, pb) = ends_of(&b);
        let wa = deadlines.arm(a.as_raw_fd(), la, pa, now);
        let wb = deadlines.arm(b.as_raw_fd(), lb, pb, now);
        assert!(deadlines.disarm(wb), "disarmed in time");
        // A stale entry (other addresses) is never acted on.
        let _stale = deadlines.arm(b.as_raw_fd(), la, pb, now);
        assert_eq!(
            deadlines.reap(now + std::time::Duration::from_millis(1)),
            None
        );
        assert!(!deadlines.disarm(wa), "the reaper had it");
        let mut buf = [0u8; 1];
        use std::io::Read;
        assert_eq!((&a).read(&mut buf).unwrap(), 0, "shut down");
        b.set_nonblocking(true).unwrap();
        assert!((&b).read(&mut buf).is_err(), "still open (would block)");
    }
}
