//! A thin layer between pingora's listener and its HTTP handling.
//!
//! pingora bounds each *read* of a request header (60 s by default), not the
//! whole header: a client sending one byte per second holds a connection
//! forever (slowloris). pingora hands every request on a connection to
//! `ServerApp::process_new` (again for each keep-alive reuse), so this layer
//! wraps the stream there with a deadline that runs until the end of the
//! request head (`\r\n\r\n`) is seen. After that, reads pass through
//! untouched and pingora's per-read timeouts apply to the body. It also
//! counts open connections for `/metrics`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpServerOptions, ServerApp};
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID,
    UniqueIDType, ALPN,
};
use pingora::protocols::{SocketDigest, TimingDigest};
use pingora::proxy::HttpProxy;
use pingora::server::configuration::ServerConf;
use pingora::server::ShutdownWatch;
use pingora::services::listening::Service;
use portcullis_config as config;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::metrics::metrics;
use crate::proxy::Gateway;

/// The proxy app with the header deadline in front.
pub struct GuardedProxy {
    inner: Arc<HttpProxy<Gateway>>,
    header_timeout: Duration,
}

/// Builds a listener's proxy service.
pub fn proxy_service(
    conf: &Arc<ServerConf>,
    gateway: Gateway,
    name: &str,
    limits: &config::Limits,
    h2c: bool,
) -> Service<GuardedProxy> {
    let mut proxy = HttpProxy::new(gateway, conf.clone());
    let mut options = HttpServerOptions::default();
    options.h2c = h2c;
    proxy.server_options = Some(options);
    proxy.handle_init_modules();
    Service::new(
        format!("proxy {name}"),
        GuardedProxy {
            inner: Arc::new(proxy),
            header_timeout: limits.header_timeout.0,
        },
    )
}

#[async_trait]
impl ServerApp for GuardedProxy {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // HTTP/2 multiplexes many requests on one connection; its own
        // settings govern it, and the head marker means nothing there.
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return self.inner.process_new(stream, shutdown).await;
        }
        let guarded: Box<HeadDeadline> = if stream.as_any().is::<HeadDeadline>() {
            // A keep-alive connection coming back for its next request.
            let mut reused = stream.into_any().downcast::<HeadDeadline>().ok()?;
            reused.rearm(self.header_timeout);
            reused
        } else {
            Box::new(HeadDeadline::new(stream, self.header_timeout))
        };
        self.inner.process_new(guarded, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

/// Where the reader is in the current request.
enum State {
    /// Reading the request head. `armed`: the deadline runs (from the
    /// connection's start, or from the first byte of a later request).
    /// `tail` holds the last bytes seen, to find `\r\n\r\n` across reads.
    Head {
        armed: bool,
        tail: [u8; 3],
        tail_len: usize,
    },
    /// Head complete: reads pass through.
    Passthrough,
}

/// A stream that fails reads with `TimedOut` if the request head takes too long.
pub struct HeadDeadline {
    inner: Stream,
    /// One timer per connection, reset for each request head.
    deadline: Pin<Box<Sleep>>,
    timeout: Duration,
    state: State,
    _connection: ConnectionCount,
}

struct ConnectionCount;

impl ConnectionCount {
    fn new() -> Self {
        metrics().open_connections.inc();
        ConnectionCount
    }
}

impl Drop for ConnectionCount {
    fn drop(&mut self) {
        metrics().open_connections.dec();
    }
}

impl HeadDeadline {
    /// A new connection: the deadline starts now.
    fn new(inner: Stream, timeout: Duration) -> Self {
        HeadDeadline {
            inner,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            timeout,
            state: State::Head {
                armed: true,
                tail: [0; 3],
                tail_len: 0,
            },
            _connection: ConnectionCount::new(),
        }
    }

    /// The next request on a kept-alive connection: the deadline starts
    /// with its first byte (the idle time before it is the keep-alive
    /// timeout's business).
    fn rearm(&mut self, timeout: Duration) {
        self.timeout = timeout;
        self.state = State::Head {
            armed: false,
            tail: [0; 3],
            tail_len: 0,
        };
    }
}

/// Whether `\r\n\r\n` ends within `tail ++ new`.
fn head_complete(tail: &[u8], new: &[u8]) -> bool {
    const END: &[u8] = b"\r\n\r\n";
    // Check the seam between earlier bytes and this read, then the read.
    let seam_len = tail.len() + new.len().min(3);
    let mut seam = [0u8; 6];
    seam[..tail.len()].copy_from_slice(tail);
    seam[tail.len()..seam_len].copy_from_slice(&new[..new.len().min(3)]);
    seam[..seam_len].windows(4).any(|w| w == END) || new.windows(4).any(|w| w == END)
}

impl AsyncRead for HeadDeadline {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if let State::Head { armed: true, .. } = this.state {
            if this.deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "request head not received in time",
                )));
            }
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        let State::Head {
            armed,
            tail,
            tail_len,
        } = &mut this.state
        else {
            return result;
        };
        let new = &buf.filled()[before..];
        if !matches!(result, Poll::Ready(Ok(()))) || new.is_empty() {
            return result;
        }
        if head_complete(&tail[..*tail_len], new) {
            this.state = State::Passthrough;
            return result;
        }
        if !*armed {
            *armed = true;
            this.deadline.as_mut().reset(Instant::now() + this.timeout);
            // Register the timer with this task.
            let _ = this.deadline.as_mut().poll(cx);
        }
        let mut joined = [0u8; 6];
        let keep = new.len().min(3);
        joined[..*tail_len].copy_from_slice(&tail[..*tail_len]);
        joined[*tail_len..*tail_len + keep].copy_from_slice(&new[new.len() - keep..]);
        let total = *tail_len + keep;
        let start = total.saturating_sub(3);
        let kept = total - start;
        tail[..kept].copy_from_slice(&joined[start..total]);
        *tail_len = kept;
        result
    }
}

impl AsyncWrite for HeadDeadline {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl fmt::Debug for HeadDeadline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeadDeadline")
            .field("inner", &self.inner)
            .finish()
    }
}

#[async_trait]
impl Shutdown for HeadDeadline {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for HeadDeadline {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeadDeadline {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeadDeadline {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeadDeadline {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for HeadDeadline {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for HeadDeadline {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::head_complete;

    #[test]
    fn finds_the_end_of_the_head_across_reads() {
        assert!(head_complete(b"", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(head_complete(b"\r\n\r", b"\n"));
        assert!(head_complete(b"\n", b"\r\n\r\nbody"));
        assert!(!head_complete(b"", b"GET / HTTP/1.1\r\nHost: a\r\n"));
        assert!(!head_complete(b"a\r\n", b"b"));
    }
}
