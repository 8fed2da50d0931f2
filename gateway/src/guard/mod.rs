//! The connection guard: a layer between pingora's listener and its
//! HTTP/1 handling that every byte from a client passes through first.
//!
//! It owns what pingora leaves open at the edge:
//! - **strict framing** ([`framing`]): each request head is checked against
//!   RFC 9112 before pingora sees a byte of it, and each body is followed
//!   (`Content-Length` or chunked, extensions and trailers included) so that
//!   the next head is found where the RFC says — never where a lenient
//!   parser would. A refused head is replaced by a fixed stand-in request
//!   that `proxy.rs` answers with the JSON error (so the answer stays in
//!   order behind earlier pipelined responses); later bytes are never read.
//! - **one message at a time**: pingora is never handed bytes past the end
//!   of the current request, so it cannot act on a request the guard has
//!   not checked;
//! - **time**: a deadline for each request head (from the connection's
//!   start, or from the first byte of a later request) and for each body
//!   (a base allowance plus time earned at a minimum rate, as Apache's
//!   mod_reqtimeout does), so trickling clients are cut off;
//! - **connection counts** for `/metrics` and the process-wide limit.
//!
//! HTTP/2 (ALPN `h2`, or the h2c preface) passes untouched: its framing is
//! binary and pingora's h2 stack handles it.

pub mod framing;
pub mod handshake;
#[cfg(test)]
mod tests;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Buf, BytesMut};
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
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::metrics::metrics;
use crate::proxy::Gateway;
use crate::snapshot::SharedSnapshot;
use framing::{ChunkedBody, Framing, HeadLimits, Progress, Refusal, Scan};

/// The request the guard hands pingora in place of a refused head.
/// `proxy.rs` answers it with the refusal; a client sending the same bytes
/// gets no such answer, because the guard only marks the stand-in.
pub const STAND_IN_TARGET: &str = "/.portcullis/refused";
const STAND_IN: &[u8] =
    b"GET /.portcullis/refused HTTP/1.1\r\nHost: portcullis.invalid\r\nConnection: close\r\n\r\n";

/// What the guard enforces on each connection (from `server.limits`).
#[derive(Clone, Copy, Debug)]
pub struct GuardSettings {
    pub head: HeadLimits,
    pub header_timeout: Duration,
    /// Time any request body gets, before `min_body_rate` must be met.
    pub body_timeout: Duration,
    /// Bytes per second that earn a body more time (0: no minimum rate).
    pub min_body_rate: u64,
}

/// The proxy app with the guard in front.
pub struct GuardedProxy {
    inner: Arc<HttpProxy<Gateway>>,
    snapshot: SharedSnapshot,
    h2c: bool,
    /// Every listener's connections, and this listener's with its own
    /// limit (`listeners[].max_connections`).
    connections: Arc<ConnectionLimit>,
    listener_connections: Arc<ConnectionLimit>,
    listener_max: Option<usize>,
}

/// How a listener's proxy service is set up (fixed until a restart).
#[derive(Clone, Copy, Debug)]
pub struct ServiceOptions<'a> {
    pub name: &'a str,
    pub h2c: bool,
    pub max_requests_per_connection: u32,
    pub max_connections: Option<usize>,
    pub h2_max_concurrent_streams: u32,
    /// Largest decoded HTTP/2 header list (`limits.max_header_size`).
    pub h2_max_header_list: u32,
}

/// The process-wide connection limit, shared by every listener.
#[derive(Debug, Default)]
pub struct ConnectionLimit {
    open: AtomicUsize,
}

/// Builds a listener's proxy service.
pub fn proxy_service(
    conf: &Arc<ServerConf>,
    gateway: Gateway,
    options: &ServiceOptions<'_>,
    connections: Arc<ConnectionLimit>,
) -> Service<GuardedProxy> {
    let snapshot = gateway.snapshot.clone();
    let mut proxy = HttpProxy::new(gateway, conf.clone());
    let mut server = HttpServerOptions::default();
    server.h2c = options.h2c;
    server.keepalive_request_limit = Some(options.max_requests_per_connection);
    proxy.server_options = Some(server);
    // pingora's bounded defaults (which also cap resets of streams it has
    // not yet accepted: the rapid-reset defence), with our limits.
    let mut h2 = pingora::protocols::http::v2::server::default_h2_options();
    h2.max_concurrent_streams(options.h2_max_concurrent_streams)
        .max_header_list_size(options.h2_max_header_list);
    proxy.h2_options = Some(h2);
    proxy.handle_init_modules();
    Service::new(
        format!("proxy {}", options.name),
        GuardedProxy {
            inner: Arc::new(proxy),
            snapshot,
            h2c: options.h2c,
            connections,
            listener_connections: Arc::default(),
            listener_max: options.max_connections,
        },
    )
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[async_trait]
impl ServerApp for GuardedProxy {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        handshake::completed(&stream);
        let snapshot = self.snapshot.load();
        let slots = self
            .connections
            .try_open(snapshot.limits.max_connections)
            .zip(
                self.listener_connections
                    .try_open(self.listener_max.unwrap_or(usize::MAX)),
            );
        let Some(_slots) = slots else {
            // Overload: refuse the new connection, never stall served ones.
            metrics().refused_connections.inc();
            return None;
        };
        // Every served connection, HTTP/2 included, for `/metrics`.
        let _counted = ConnectionCount::new();
        let settings = snapshot.guard;
        drop(snapshot);
        // HTTP/2 multiplexes many requests on one connection with binary
        // framing; its own settings govern it.
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return self.inner.process_new(stream, shutdown).await;
        }
        if self.h2c {
            let mut preface = [0u8; H2_PREFACE.len()];
            let peeked = stream.try_peek(&mut preface).await.ok()?;
            if peeked && preface == H2_PREFACE {
                return self.inner.process_new(stream, shutdown).await;
            }
        }
        let guarded = Box::new(GuardedStream::new(stream, settings));
        self.inner.process_new(guarded, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

impl ConnectionLimit {
    /// A slot for a new connection, or `None` when `max` are open.
    fn try_open(self: &Arc<Self>, max: usize) -> Option<ConnectionSlot> {
        let before = self.open.fetch_add(1, Ordering::AcqRel);
        let slot = ConnectionSlot(self.clone());
        (before < max).then_some(slot)
    }
}

/// One open connection: counted while it lives.
struct ConnectionSlot(Arc<ConnectionLimit>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Where the reader is in the client's byte stream.
#[derive(Debug)]
enum Phase {
    /// Reading a request head into `buf`. `started`: the timer is aimed at
    /// this head's deadline (from the connection's start for the first
    /// head; for later ones, from when part of the head waits for the rest).
    Head {
        started: bool,
    },
    /// Handing a checked head to pingora: `remaining` bytes of `buf`, then
    /// `next`.
    HeadOut {
        remaining: usize,
        next: Framing,
        upgrade: bool,
    },
    /// A body of known length: bytes still to come.
    Length(u64),
    Chunked(Box<ChunkedBody>),
    /// After an upgrade request: another protocol, passed as it is
    /// (`proxy.rs` closes the connection when the upgrade is declined).
    Opaque,
    /// A head was refused: the stand-in is handed out, then end of stream.
    Refused {
        sent: usize,
    },
    /// A body broke its framing or its deadline: reads fail.
    Failed,
}

/// The client stream as pingora reads it.
pub struct GuardedStream {
    inner: Stream,
    /// Bytes read from the client and not yet handed to pingora.
    buf: BytesMut,
    phase: Phase,
    settings: GuardSettings,
    /// One timer per connection, re-aimed at each deadline.
    timer: Pin<Box<Sleep>>,
    /// When the current body began, and how many bytes it has brought.
    body_started: Instant,
    body_bytes: u64,
    refusal: Option<Refusal>,
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

/// Most bytes read from the client ahead of pingora at a time.
const READ_AHEAD: usize = 16 * 1024;

impl GuardedStream {
    fn new(inner: Stream, settings: GuardSettings) -> Self {
        GuardedStream {
            inner,
            buf: BytesMut::new(),
            phase: Phase::Head { started: true },
            timer: Box::pin(tokio::time::sleep(settings.header_timeout)),
            settings,
            body_started: Instant::now(),
            body_bytes: 0,
            refusal: None,
        }
    }

    /// Why the guard refused this connection's request, if it did: read by
    /// `proxy.rs` when the stand-in request arrives, and when a body fails.
    pub fn refusal(&self) -> Option<Refusal> {
        self.refusal
    }

    fn refuse(&mut self, refusal: Refusal) {
        log::debug!("refused a request: {}", refusal.reason);
        self.refusal = Some(refusal);
        self.buf.clear();
        self.phase = Phase::Refused { sent: 0 };
    }

    fn fail(&mut self, refusal: Refusal) -> std::io::Error {
        self.refusal = Some(refusal);
        self.buf.clear();
        self.phase = Phase::Failed;
        let kind = if refusal.status == 408 {
            std::io::ErrorKind::TimedOut
        } else {
            std::io::ErrorKind::InvalidData
        };
        std::io::Error::new(kind, refusal.reason)
    }

    /// Reads more client bytes into `buf`.
    fn fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_AHEAD / 4 {
            self.buf.reserve(READ_AHEAD);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.inner), cx, &mut self.buf)
    }

    /// Arms the timer for `deadline` and reports whether it has passed.
    fn deadline_passed(&mut self, deadline: Instant, cx: &mut Context<'_>) -> bool {
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        self.timer.as_mut().poll(cx).is_ready()
    }

    /// The body's deadline: the base allowance, plus a second for every
    /// `min_body_rate` bytes received.
    fn body_deadline(&self) -> Instant {
        let earned = match self.settings.min_body_rate {
            0 => Duration::from_secs(365 * 24 * 3600),
            rate => Duration::from_secs_f64(self.body_bytes as f64 / rate as f64),
        };
        self.body_started + self.settings.body_timeout + earned
    }

    fn start_body(&mut self, framing: Framing, upgrade: bool) {
        if matches!(framing, Framing::Chunked | Framing::Length(1..)) {
            self.body_started = Instant::now();
            self.body_bytes = 0;
        }
        self.phase = match (framing, upgrade) {
            (_, true) => Phase::Opaque,
            (Framing::None, false) | (Framing::Length(0), false) => Phase::Head { started: false },
            (Framing::Length(n), false) => Phase::Length(n),
            (Framing::Chunked, false) => Phase::Chunked(Box::default()),
        };
    }

    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            let Phase::Head { started } = self.phase else {
                return self.poll_next(cx, out);
            };
            match framing::scan_head(&self.buf, &self.settings.head) {
                Scan::Complete { start, end } => {
                    match framing::check_head(&self.buf[start..end], &self.settings.head) {
                        Ok(head) => {
                            self.buf.advance(start);
                            self.phase = Phase::HeadOut {
                                remaining: end - start,
                                next: head.framing,
                                upgrade: head.upgrade,
                            };
                        }
                        Err(refusal) => self.refuse(refusal),
                    }
                    return self.poll_next(cx, out);
                }
                Scan::Refused(refusal) => {
                    self.refuse(refusal);
                    return self.poll_next(cx, out);
                }
                Scan::Incomplete => {}
            }
            // Part of a later request's head is here and the rest is not:
            // its deadline starts now. (A head that arrives whole, the
            // common case, never touches the timer.)
            let mut started = started;
            if !started && !self.buf.is_empty() {
                started = true;
                self.phase = Phase::Head { started };
                let deadline = Instant::now() + self.settings.header_timeout;
                self.timer.as_mut().reset(deadline);
            }
            if started {
                let deadline = self.timer.deadline();
                if self.deadline_passed(deadline, cx) {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "request head not received in time",
                    )));
                }
            }
            if self.buf.is_empty() {
                // The common case, without a copy: the whole head arrives in
                // one read, straight into pingora's buffer, and is checked
                // there. Anything else takes the bytes back into `buf`.
                let before = out.filled().len();
                match Pin::new(&mut self.inner).poll_read(cx, out) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => {}
                }
                let new = &out.filled()[before..];
                if new.is_empty() {
                    // End of stream: pingora sees it as the client leaving.
                    return Poll::Ready(Ok(()));
                }
                if let Scan::Complete { start: 0, end } =
                    framing::scan_head(new, &self.settings.head)
                {
                    if let Ok(head) = framing::check_head(&new[..end], &self.settings.head) {
                        if end < new.len() {
                            // A body or the next request: handed out later.
                            self.buf.extend_from_slice(&new[end..]);
                            out.set_filled(before + end);
                        }
                        self.start_body(head.framing, head.upgrade);
                        return Poll::Ready(Ok(()));
                    }
                }
                self.buf.extend_from_slice(new);
                out.set_filled(before);
                continue;
            }
            match self.fill(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                // End of stream: pingora sees it as the client leaving.
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(_)) => {}
            }
        }
    }

    /// Hands out what the phase allows.
    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match &mut self.phase {
            Phase::Head { .. } => self.poll_head(cx, out),
            Phase::HeadOut {
                remaining,
                next,
                upgrade,
            } => {
                let n = (*remaining).min(out.remaining()).min(self.buf.len());
                out.put_slice(&self.buf[..n]);
                self.buf.advance(n);
                *remaining -= n;
                if *remaining == 0 {
                    let (next, upgrade) = (*next, *upgrade);
                    self.start_body(next, upgrade);
                }
                Poll::Ready(Ok(()))
            }
            Phase::Refused { sent } => {
                let n = (STAND_IN.len() - *sent).min(out.remaining());
                out.put_slice(&STAND_IN[*sent..*sent + n]);
                *sent += n;
                Poll::Ready(Ok(()))
            }
            Phase::Failed => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "request refused",
            ))),
            Phase::Opaque => {
                if self.buf.is_empty() {
                    return Pin::new(&mut self.inner).poll_read(cx, out);
                }
                let n = self.buf.len().min(out.remaining());
                out.put_slice(&self.buf[..n]);
                self.buf.advance(n);
                Poll::Ready(Ok(()))
            }
            Phase::Length(_) | Phase::Chunked(_) => self.poll_body(cx, out),
        }
    }

    fn poll_body(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.buf.is_empty() {
            let deadline = self.body_deadline();
            match self.fill(cx) {
                Poll::Pending => {
                    if self.deadline_passed(deadline, cx) {
                        let refusal = Refusal {
                            status: 408,
                            reason: "request body too slow",
                        };
                        return Poll::Ready(Err(self.fail(refusal)));
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                // The client left mid-body: pingora sees the end of stream.
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(_)) => {}
            }
        }
        let available = self.buf.len().min(out.remaining());
        let (taken, next) = match &mut self.phase {
            Phase::Length(remaining) => {
                let n = (*remaining).min(available as u64) as usize;
                *remaining -= n as u64;
                (
                    n,
                    (*remaining == 0).then_some(Phase::Head { started: false }),
                )
            }
            Phase::Chunked(body) => match body.feed(&self.buf[..available]) {
                Progress::NeedMore => (available, None),
                Progress::Done { consumed } => (consumed, Some(Phase::Head { started: false })),
                Progress::Refused(refusal) => return Poll::Ready(Err(self.fail(refusal))),
            },
            _ => (0, None),
        };
        out.put_slice(&self.buf[..taken]);
        self.buf.advance(taken);
        self.body_bytes += taken as u64;
        if let Some(next) = next {
            self.phase = next;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        this.poll_next(cx, buf)
    }
}

impl AsyncWrite for GuardedStream {
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

impl fmt::Debug for GuardedStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardedStream")
            .field("inner", &self.inner)
            .field("phase", &self.phase)
            .finish()
    }
}

#[async_trait]
impl Shutdown for GuardedStream {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for GuardedStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for GuardedStream {
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

impl GetTimingDigest for GuardedStream {
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

impl GetProxyDigest for GuardedStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for GuardedStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for GuardedStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        // Bytes already taken from the socket come first.
        if self.buf.is_empty() {
            return self.inner.try_peek(buf).await;
        }
        let n = self.buf.len().min(buf.len());
        buf[..n].copy_from_slice(&self.buf[..n]);
        Ok(n == buf.len())
    }
}

/// The guard's refusal for this request, if the request is its stand-in
/// (or a body the guard cut off).
pub fn refusal_of(stream: Option<&Stream>) -> Option<Refusal> {
    stream?.as_any().downcast_ref::<GuardedStream>()?.refusal()
}
