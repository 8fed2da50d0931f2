//! The pingora `ProxyHttp` glue: calls routing, upstream selection, header
//! rewriting and error rendering in order. It holds no logic of its own.
//!
//! Request flow (see LIFECYCLE.md):
//! `request_filter`: request id, limits, HTTPS redirect, route lookup →
//! `upstream_peer`: pool by weight, target by balancer →
//! `upstream_request_filter`: path rewrite, header ops, forwarding headers →
//! `response_filter`: header ops, HSTS, request id →
//! `logging`: access log, metrics, passive health.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::header;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::{HttpPeer, Peer, ALPN};
use pingora::{Error, ErrorSource, ErrorType};
use portcullis_config::{self as config, AuthMode};

use crate::access_log::{self, AccessLine};
use crate::auth::{AuthError, Identity};
use crate::errors::GatewayError;
use crate::headers::{self, X_REQUEST_ID};
use crate::metrics::metrics;
use crate::ratelimit::{self, Decision};
use crate::routing::RequestView;
use crate::snapshot::{SharedSnapshot, Snapshot};
use crate::upstream::deadline::{deadlines, Watch};
use crate::upstream::{HashKey, InFlight, SelectError};

/// The proxy of one listener; all listeners share the snapshot.
pub struct Gateway {
    pub snapshot: SharedSnapshot,
    pub listener: usize,
}

/// Per-request state.
pub struct RequestCtx {
    snapshot: Arc<Snapshot>,
    request_id: http::HeaderValue,
    started: Instant,
    route: Option<usize>,
    pool: Option<usize>,
    upstream_path: Option<String>,
    target: Option<InFlight>,
    failed_target: Option<SocketAddr>,
    attempts: u32,
    upstream_started: Option<Instant>,
    body_bytes: u64,
    error: Option<GatewayError>,
    is_tls: bool,
    /// The verified caller, on routes with `auth`.
    identity: Option<Arc<Identity>>,
    /// The gateway's own token for the backend, when configured.
    internal_token: Option<http::HeaderValue>,
    /// `RateLimit` for the response, when configured.
    ratelimit: Option<http::HeaderValue>,
    /// The route's bulkhead slot, released when the request ends.
    _bulkhead: Option<tokio::sync::OwnedSemaphorePermit>,
    /// The fault injected, for the access log.
    fault: Option<&'static str>,
    /// `Authorization` was set by us from the browser's session.
    session_auth: bool,
    /// Why the gateway refused the request, for the access log only.
    reason: Option<&'static str>,
    /// Deadlines on the upstream exchange: the response head, and the
    /// whole exchange on routes with a `timeout`.
    head_deadline: Option<Watch>,
    exchange_deadline: Option<Watch>,
    /// Interim (1xx) responses from the upstream so far.
    interim_responses: u8,
}

impl RequestCtx {
    /// Disarms the upstream deadlines; true if one had already fired.
    fn disarm_deadlines(&mut self) -> bool {
        let mut fired = false;
        for watch in [self.head_deadline.take(), self.exchange_deadline.take()]
            .into_iter()
            .flatten()
        {
            fired |= !deadlines().disarm(watch);
        }
        fired
    }
}

fn status_error(error: GatewayError) -> Box<Error> {
    Error::new(ErrorType::HTTPStatus(error.status()))
}

impl Gateway {
    async fn reject(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        error: GatewayError,
    ) -> Result<bool> {
        self.reject_with(session, ctx, error, None).await
    }

    /// 401 and 403 with the RFC 6750 `WWW-Authenticate` challenge.
    async fn reject_auth(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        error: AuthError,
    ) -> Result<bool> {
        // The challenge names the RFC 6750 error code only: telling a
        // caller which check its token failed helps nobody but an attacker.
        // The reason goes to the access log.
        let details = ctx.snapshot.auth.insecure_error_details;
        let (status, challenge) = match error {
            AuthError::Missing => (GatewayError::Unauthorized, CHALLENGE.clone()),
            AuthError::Invalid(reason) => {
                ctx.reason = Some(reason);
                let challenge = if details {
                    http::HeaderValue::from_str(&format!(
                        "Bearer realm=\"portcullis\", error=\"invalid_token\", error_description=\"{reason}\""
                    ))
                    .unwrap_or_else(|_| CHALLENGE_INVALID.clone())
                } else {
                    CHALLENGE_INVALID.clone()
                };
                (GatewayError::InvalidToken, challenge)
            }
            AuthError::Forbidden => {
                ctx.reason = Some("lacks a required role, scope or claim");
                (GatewayError::Forbidden, CHALLENGE_FORBIDDEN.clone())
            }
            AuthError::InsufficientAuthentication => {
                ctx.reason = Some("signed in without the route's acr or amr");
                let challenge = ctx
                    .route
                    .and_then(|route| ctx.snapshot.route_auth.get(route))
                    .and_then(|policy| policy.step_up_challenge.clone())
                    .unwrap_or_else(|| CHALLENGE.clone());
                (GatewayError::InsufficientUserAuthentication, challenge)
            }
            AuthError::Unavailable => {
                return self
                    .reject(session, ctx, GatewayError::IdentityUnavailable)
                    .await
            }
        };
        // The reason, never the token.
        log::info!(
            "request {}: {} ({error})",
            headers::request_id_str(&ctx.request_id),
            status.status()
        );
        self.reject_with(session, ctx, status, Some(challenge))
            .await
    }

    async fn reject_with(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        error: GatewayError,
        challenge: Option<http::HeaderValue>,
    ) -> Result<bool> {
        match challenge {
            Some(challenge) => {
                let extra = [(http::header::WWW_AUTHENTICATE, challenge)];
                self.reject_headers(session, ctx, error, &extra).await
            }
            None => self.reject_headers(session, ctx, error, &[]).await,
        }
    }

    async fn reject_headers(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        error: GatewayError,
        extra: &[(http::HeaderName, http::HeaderValue)],
    ) -> Result<bool> {
        ctx.error = Some(error);
        let (mut header, body) = error.response(headers::request_id_str(&ctx.request_id))?;
        for (name, value) in extra {
            header.insert_header(name.clone(), value.clone())?;
        }
        // A body the client is still sending is not read: close afterwards.
        session.set_keepalive(None);
        session
            .write_response_header(Box::new(header), false)
            .await?;
        session.write_response_body(Some(body), true).await?;
        Ok(true)
    }

    async fn serve_login(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        snapshot: &Snapshot,
        login: &crate::login::Login,
        page: crate::login::Page,
    ) -> Result<bool> {
        let form = if session.req_header().method == http::Method::POST {
            match read_small_body(session, LOGIN_FORM_LIMIT).await {
                Ok(form) => Some(form),
                Err(e) => return self.reject(session, ctx, e).await,
            }
        } else {
            None
        };
        let req = session.req_header();
        let request = crate::login::Request {
            method: &req.method,
            uri: &req.uri,
            headers: &req.headers,
            form: form.as_deref(),
        };
        match login.handle(page, &request, &snapshot.auth).await {
            Ok(crate::login::Answer::Redirect { location, cookies }) => {
                self.write_redirect(session, ctx, &location, &cookies).await
            }
            Ok(crate::login::Answer::Html { status, body }) => {
                self.write_page(session, ctx, status, Some(body)).await
            }
            Ok(crate::login::Answer::Empty { status }) => {
                self.write_page(session, ctx, status, None).await
            }
            Err(e) => self.reject(session, ctx, e).await,
        }
    }

    /// A page of the gateway's own (HTML, or nothing), never cached and
    /// never framed (clickjacking).
    async fn write_page(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        status: u16,
        html: Option<String>,
    ) -> Result<bool> {
        let body = html.map(bytes::Bytes::from).unwrap_or_default();
        let mut header = ResponseHeader::build(status, Some(5))?;
        if !body.is_empty() {
            header.insert_header(header::CONTENT_TYPE, "text/html; charset=utf-8")?;
        }
        header.insert_header(header::CACHE_CONTROL, "no-store")?;
        header.insert_header("content-security-policy", "frame-ancestors 'none'")?;
        header.insert_header(header::CONTENT_LENGTH, body.len())?;
        header.insert_header(X_REQUEST_ID, ctx.request_id.clone())?;
        session
            .write_response_header(Box::new(header), body.is_empty())
            .await?;
        if !body.is_empty() {
            session.write_response_body(Some(body), true).await?;
        }
        Ok(true)
    }

    async fn write_redirect(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        location: &str,
        cookies: &[String],
    ) -> Result<bool> {
        let mut header = ResponseHeader::build(302, Some(4 + cookies.len()))?;
        header.insert_header(header::LOCATION, location)?;
        for cookie in cookies {
            header.append_header(header::SET_COOKIE, cookie.as_str())?;
        }
        header.insert_header(header::CACHE_CONTROL, "no-store")?;
        header.insert_header(header::CONTENT_LENGTH, 0)?;
        header.insert_header(X_REQUEST_ID, ctx.request_id.clone())?;
        session
            .write_response_header(Box::new(header), true)
            .await?;
        Ok(true)
    }

    async fn serve_portal(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        snapshot: &Snapshot,
        site: &crate::portal::Site,
    ) -> Result<bool> {
        let req = session.req_header();
        let answer = match crate::portal::page(site, req.uri.path()) {
            Some(page) => {
                crate::portal::serve(page, &req.method, &req.headers, snapshot, site).await
            }
            None => Err(GatewayError::NoRoute),
        };
        let answer = match answer {
            Ok(answer) => answer,
            Err(e) => return self.reject(session, ctx, e).await,
        };
        let head_only = req.method == http::Method::HEAD;
        let mut header = ResponseHeader::build(answer.status, Some(answer.headers.len() + 2))?;
        for (name, value) in answer.headers {
            header.insert_header(name, &*value)?;
        }
        header.insert_header(header::CONTENT_LENGTH, answer.body.len())?;
        header.insert_header(X_REQUEST_ID, ctx.request_id.clone())?;
        session
            .write_response_header(Box::new(header), head_only || answer.body.is_empty())
            .await?;
        if !head_only && !answer.body.is_empty() {
            session.write_response_body(Some(answer.body), true).await?;
        }
        Ok(true)
    }

    /// Why pingora failed, as one of our errors.
    fn classify(e: &Error) -> Option<GatewayError> {
        use ErrorType::*;
        Some(match e.etype() {
            HTTPStatus(code) => GatewayError::from_status(*code),
            ConnectTimedout | ConnectRefused | ConnectNoRoute | ConnectError
            | TLSHandshakeFailure | TLSHandshakeTimedout | SocketError | BindError => {
                GatewayError::UpstreamConnect
            }
            ReadTimedout | WriteTimedout if e.esource() == &ErrorSource::Upstream => {
                GatewayError::UpstreamTimeout
            }
            ReadTimedout if e.esource() == &ErrorSource::Downstream => GatewayError::ClientTimeout,
            InvalidHTTPHeader | H1Error | H2Error | InvalidH2
                if e.esource() == &ErrorSource::Downstream =>
            {
                GatewayError::BadRequest
            }
            _ => match e.esource() {
                ErrorSource::Upstream => GatewayError::UpstreamFailed,
                // The client went away: nobody to answer.
                ErrorSource::Downstream => return None,
                ErrorSource::Internal | ErrorSource::Unset => GatewayError::Internal,
            },
        })
    }
}

/// Most bytes of a login form (the logout confirmation, a logout token).
const LOGIN_FORM_LIMIT: usize = 16 * 1024;

/// A small request body, whole: 413 beyond `limit`. The guard bounds the
/// wait (`limits.body_timeout`, `limits.min_body_rate`).
async fn read_small_body(
    session: &mut Session,
    limit: usize,
) -> std::result::Result<Vec<u8>, GatewayError> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit {
                    return Err(GatewayError::BodyTooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(_) => return Err(GatewayError::BadRequest),
        }
    }
}

fn client_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

fn request_host(req: &RequestHeader) -> &str {
    req.uri
        .host()
        .or_else(|| req.headers.get(header::HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or("")
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            snapshot: self.snapshot.load_full(),
            request_id: http::HeaderValue::from_static(""),
            started: Instant::now(),
            route: None,
            pool: None,
            upstream_path: None,
            target: None,
            failed_target: None,
            attempts: 0,
            upstream_started: None,
            body_bytes: 0,
            error: None,
            is_tls: false,
            identity: None,
            internal_token: None,
            ratelimit: None,
            _bulkhead: None,
            fault: None,
            session_auth: false,
            reason: None,
            head_deadline: None,
            exchange_deadline: None,
            interim_responses: 0,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        metrics().in_flight.inc();
        let snapshot = ctx.snapshot.clone();
        // The connection guard stands in for a request it refused (its
        // framing broke RFC 9112): answer that, and nothing else.
        if session.req_header().raw_path() == crate::guard::STAND_IN_TARGET.as_bytes() {
            if let Some(refusal) = crate::guard::refusal_of(session.stream()) {
                ctx.request_id = headers::new_request_id();
                ctx.reason = Some(refusal.reason);
                metrics()
                    .refused_requests
                    .with_label_values(&[&refusal.status.to_string()])
                    .inc();
                return self
                    .reject(session, ctx, GatewayError::from_status(refusal.status))
                    .await;
            }
        }
        // Requests pipelined behind this one are served after it, in order
        // (RFC 9112 §9.3.2); the guard hands them over one at a time.
        session.set_pipelining_enabled(true);
        let req = session.req_header();
        ctx.request_id = headers::request_id(req.headers.get(X_REQUEST_ID));
        ctx.is_tls = snapshot.listeners.get(self.listener).is_some_and(|l| l.tls);

        // Limits first: nothing else should look at an oversized request.
        let limits = snapshot.limits;
        session.set_read_timeout(Some(limits.body_read_timeout));
        // Our idle timeout for connections that stay open; one the client
        // asked to close (or HTTP/1.0 without keep-alive) stays closing.
        if session.get_keepalive().is_some() {
            session.set_keepalive(Some(limits.keepalive_seconds));
        }
        let req = session.req_header();
        let header_bytes: usize = req
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum();
        if req.headers.len() > limits.max_header_count || header_bytes > limits.max_header_size {
            return self
                .reject(session, ctx, GatewayError::HeadersTooLarge)
                .await;
        }
        // A request with both Content-Length and Transfer-Encoding never
        // reaches here with both: pingora 0.9 drops Content-Length and
        // closes the connection afterwards (RFC 9112 §6.1, §6.3).
        if let Some(length) = req.headers.get(header::CONTENT_LENGTH) {
            match length.to_str().ok().and_then(|v| v.parse::<u64>().ok()) {
                Some(n) if n > limits.max_body_size => {
                    return self.reject(session, ctx, GatewayError::BodyTooLarge).await
                }
                Some(_) => {}
                None => return self.reject(session, ctx, GatewayError::BadRequest).await,
            }
        }

        if snapshot.underscores != config::Underscores::Allow
            && session
                .req_header()
                .headers
                .keys()
                .any(|name| name.as_str().contains('_'))
        {
            if snapshot.underscores == config::Underscores::Reject {
                return self
                    .reject(session, ctx, GatewayError::UnderscoreInHeaderName)
                    .await;
            }
            let req = session.req_header_mut();
            let dropped: Vec<http::HeaderName> = req
                .headers
                .keys()
                .filter(|name| name.as_str().contains('_'))
                .cloned()
                .collect();
            for name in &dropped {
                req.remove_header(name);
            }
        }

        // One canonical target before anything looks at the path: from
        // here on the request's URI is that target, for every stage and
        // for the backend (README "Canonical requests").
        if session.req_header().raw_path().len() > limits.max_uri_size {
            return self.reject(session, ctx, GatewayError::UriTooLong).await;
        }
        match crate::target::canonicalise(session.req_header_mut(), &snapshot.paths) {
            Ok(crate::target::Canonical::Resource) => {}
            Ok(crate::target::Canonical::Server) => return answer_options_star(session, ctx).await,
            Err(reason) => {
                log::info!(
                    "request {}: 400 ({reason})",
                    headers::request_id_str(&ctx.request_id)
                );
                return self
                    .reject(session, ctx, GatewayError::BadTarget(reason))
                    .await;
            }
        }

        if let Some(port) = snapshot
            .listeners
            .get(self.listener)
            .and_then(|l| l.redirect_https_port)
        {
            return redirect_to_https(session, ctx, port).await;
        }

        if let Some(internal) = &snapshot.auth.internal {
            if session.req_header().uri.path() == INTERNAL_JWKS_PATH {
                return serve_internal_jwks(session, ctx, internal.jwks()).await;
            }
        }

        if let Some(login) = &snapshot.login {
            let req = session.req_header();
            if let Some(page) = login.page(req.uri.path()) {
                return self.serve_login(session, ctx, &snapshot, login, page).await;
            }
            // A browser's session stands for its access token: checked on
            // every route exactly like a bearer token.
            if !req.headers.contains_key(header::AUTHORIZATION) {
                if let Some(token) = login.session_token(&req.headers, &snapshot.auth).await {
                    if let Ok(value) = http::HeaderValue::from_str(&format!("Bearer {token}")) {
                        session
                            .req_header_mut()
                            .insert_header(header::AUTHORIZATION, value)?;
                        ctx.session_auth = true;
                    }
                }
            }
        }

        if let Some(site) = &snapshot.portal {
            if crate::portal::page(site, session.req_header().uri.path()).is_some() {
                return self.serve_portal(session, ctx, &snapshot, site).await;
            }
        }

        let req = session.req_header();
        let host = headers::normalise_host(request_host(req));
        let view = RequestView {
            host: &host,
            path: req.uri.path(),
            method: &req.method,
            headers: &req.headers,
        };
        let Some(matched) = snapshot.router.lookup(&view) else {
            return self.reject(session, ctx, GatewayError::NoRoute).await;
        };
        let route = matched.route;
        let route_index = matched.route_index;
        ctx.route = Some(route_index);
        ctx.upstream_path = route.upstream_path(&matched, req.uri.path());
        let pool = route.pick_pool();
        drop(host);

        if let Some(policy) = snapshot.route_auth.get(route_index) {
            if policy.mode != AuthMode::None {
                match snapshot.auth.authorize(policy, &req.headers).await {
                    Ok(Some(authorized)) => {
                        if let Some(internal) = &snapshot.auth.internal {
                            ctx.internal_token =
                                internal.token_for(authorized.credential, &authorized.identity);
                        }
                        ctx.identity = Some(authorized.identity);
                    }
                    Ok(None) => {}
                    // A browser without credentials signs in; one signed in
                    // too weakly signs in again at the level the route asks
                    // for (RFC 9470 step-up); both come back here.
                    Err(error @ (AuthError::Missing | AuthError::InsufficientAuthentication))
                        if policy.login_redirect
                            && crate::login::is_browser_navigation(&req.method, &req.headers) =>
                    {
                        let Some(login) = &snapshot.login else {
                            return self.reject_auth(session, ctx, error).await;
                        };
                        let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
                        let acr_values = match error {
                            AuthError::InsufficientAuthentication => policy.required_acr(),
                            _ => &[],
                        };
                        let location = login.login_location(target, acr_values);
                        return self.write_redirect(session, ctx, &location, &[]).await;
                    }
                    Err(e) => return self.reject_auth(session, ctx, e).await,
                }
            }
        }

        if snapshot.rate_limiter.has_limits(route_index) {
            let identity = ctx.identity.as_deref();
            let source = ratelimit::KeySource {
                client_ip: client_ip(session).map(|peer| {
                    portcullis_web::client_ip::client_ip(
                        peer,
                        &req.headers,
                        &snapshot.trusted_proxies,
                        snapshot.client_ip_source,
                    )
                }),
                user: identity.and_then(|i| i.subject.as_deref()),
                client_id: identity.and_then(|i| i.client_id.as_deref()),
                api_key: snapshot.auth.api_key(&req.headers).map(str::as_bytes),
                headers: &req.headers,
            };
            match snapshot.rate_limiter.check(route_index, &source).await {
                Decision::Allowed { header } => ctx.ratelimit = header,
                Decision::Limited {
                    retry_after_secs,
                    policy,
                    ratelimit,
                } => {
                    let extra = [
                        (
                            http::header::RETRY_AFTER,
                            http::HeaderValue::from(retry_after_secs),
                        ),
                        (http::HeaderName::from_static("ratelimit-policy"), policy),
                        (http::HeaderName::from_static("ratelimit"), ratelimit),
                    ];
                    return self
                        .reject_headers(session, ctx, GatewayError::TooManyRequests, &extra)
                        .await;
                }
                Decision::Unavailable => {
                    return self
                        .reject(session, ctx, GatewayError::LimiterUnavailable)
                        .await
                }
            }
        }

        if let Some(fault) = snapshot
            .config
            .config
            .routes
            .get(route_index)
            .and_then(|r| r.fault.as_ref())
        {
            if let Some(abort) = &fault.abort {
                if rand::random::<f64>() * 100.0 < abort.percent {
                    ctx.fault = Some("abort");
                    metrics()
                        .faults
                        .with_label_values(&[&*route.name, "abort"])
                        .inc();
                    return self
                        .reject(session, ctx, GatewayError::InjectedFault(abort.status))
                        .await;
                }
            }
            if let Some(delay) = &fault.delay {
                if rand::random::<f64>() * 100.0 < delay.percent {
                    ctx.fault = Some("delay");
                    metrics()
                        .faults
                        .with_label_values(&[&*route.name, "delay"])
                        .inc();
                    tokio::time::sleep(delay.duration.0).await;
                }
            }
        }

        if let Some(Some(bulkhead)) = snapshot.bulkheads.get(route_index) {
            match bulkhead.slots.clone().try_acquire_owned() {
                Ok(permit) => ctx._bulkhead = Some(permit),
                Err(_) => {
                    let permit = match bulkhead.queue {
                        Some((size, wait))
                            if bulkhead
                                .waiting
                                .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                                < size =>
                        {
                            let acquired =
                                tokio::time::timeout(wait, bulkhead.slots.clone().acquire_owned())
                                    .await;
                            bulkhead
                                .waiting
                                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                            acquired.ok().and_then(Result::ok)
                        }
                        Some(_) => {
                            bulkhead
                                .waiting
                                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                            None
                        }
                        None => None,
                    };
                    match permit {
                        Some(permit) => ctx._bulkhead = Some(permit),
                        None => return self.reject(session, ctx, GatewayError::Saturated).await,
                    }
                }
            }
        }

        ctx.pool = Some(pool);
        if let Some(pool) = snapshot.pools.get(pool) {
            pool.count_request();
        }
        Ok(false)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(chunk) = body {
            ctx.body_bytes += chunk.len() as u64;
            if ctx.body_bytes > ctx.snapshot.limits.max_body_size {
                ctx.error = Some(GatewayError::BodyTooLarge);
                return Err(status_error(GatewayError::BodyTooLarge));
            }
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let snapshot = ctx.snapshot.clone();
        let Some(pool) = ctx.pool.and_then(|i| snapshot.pools.get(i)) else {
            ctx.error = Some(GatewayError::Internal);
            return Err(status_error(GatewayError::Internal));
        };
        let key = match (&pool.spec.load_balancing, &pool.spec.hash_on) {
            (config::LoadBalancing::ConsistentHash, hash_on) => hash_key(session, hash_on),
            _ => HashKey::None,
        };
        // Release the previous attempt's in-flight count before choosing.
        ctx.target = None;
        let target = match pool.select(key, ctx.failed_target) {
            Ok(target) => target,
            Err(reason) => {
                let error = match reason {
                    SelectError::NoHealthyTarget => GatewayError::NoHealthyTarget,
                    SelectError::Saturated => GatewayError::Saturated,
                };
                ctx.error = Some(error);
                return Err(status_error(error));
            }
        };
        ctx.attempts += 1;
        let addr = target.target().addr;
        let sni = pool.tls_sni.as_deref().unwrap_or("").to_owned();
        let mut peer = HttpPeer::new(addr, pool.spec.tls.is_some(), sni);
        peer.group_key = pool.connection_group;
        let timeouts = &pool.spec.timeouts;
        let route_timeout = ctx
            .route
            .and_then(|i| snapshot.router.routes().get(i))
            .and_then(|r| r.timeout);
        peer.options.connection_timeout = Some(timeouts.connect.0);
        peer.options.read_timeout =
            Some(route_timeout.map_or(timeouts.read.0, |route| route.min(timeouts.read.0)));
        peer.options.write_timeout = Some(timeouts.write.0);
        peer.options.idle_timeout = Some(timeouts.idle.0);
        if pool.spec.protocol == config::UpstreamProtocol::Http2 {
            peer.options.set_http_version(2, 2);
            // pingora defaults to one stream per h2 connection.
            peer.options.max_h2_streams = 100;
            peer.options.alpn = ALPN::H2;
        }
        if let Some(tls) = &pool.spec.tls {
            peer.options.verify_cert = !tls.insecure_skip_verify;
            peer.options.verify_hostname = !tls.insecure_skip_verify;
            if let Some(ca) = &pool.ca {
                peer.options.ca = Some(ca.clone());
            }
        }
        ctx.target = Some(target);
        ctx.upstream_started = Some(Instant::now());
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let snapshot = ctx.snapshot.clone();
        if let Some(pool) = ctx.pool.and_then(|i| snapshot.pools.get(i)) {
            if let Some(target) = &ctx.target {
                pool.report(target.target(), false);
            }
            ctx.failed_target = peer.address().as_inet().copied();
            let idempotent = session.req_header().method.is_idempotent();
            let retry =
                idempotent && ctx.attempts <= pool.spec.retries.attempts && pool.try_retry();
            e.set_retry(retry);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Identity headers: only the gateway sets them. Strip whatever the
        // client sent under a reserved name on every route and attempt,
        // then set our own.
        let auth = &ctx.snapshot.auth;
        let spoofed: Vec<http::HeaderName> = upstream
            .headers
            .keys()
            .filter(|name| auth.is_reserved(name.as_str()))
            .cloned()
            .collect();
        for name in &spoofed {
            log::debug!("removed client-sent identity header `{name}`");
            upstream.remove_header(name);
        }
        if let Some(identity) = &ctx.identity {
            for (name, value) in &identity.headers {
                upstream.insert_header(name.clone(), value.clone())?;
            }
        }
        if let (Some(internal), Some(token)) = (&auth.internal, &ctx.internal_token) {
            upstream.insert_header(internal.header.clone(), token.clone())?;
        }
        let route_has_auth = ctx
            .route
            .and_then(|i| ctx.snapshot.route_auth.get(i))
            .is_some_and(|p| p.mode != AuthMode::None);
        if route_has_auth && !auth.forward_authorization {
            upstream.remove_header(&header::AUTHORIZATION);
            upstream.remove_header(&auth.api_key_header);
        }
        if ctx.session_auth && !(route_has_auth && auth.forward_authorization) {
            upstream.remove_header(&header::AUTHORIZATION);
        }
        // The session cookie is the gateway's; backends never see it. Only a
        // request that carries it pays for the rewrite.
        if let Some(login) = &ctx.snapshot.login {
            let name = login.cookie_name();
            let carries = upstream
                .headers
                .get_all(header::COOKIE)
                .iter()
                .any(|v| crate::login::cookie_value_in(v.as_bytes(), name));
            if carries {
                let mut joined: Vec<u8> = Vec::new();
                for value in upstream.headers.get_all(header::COOKIE) {
                    let rest = crate::login::without_cookie(value.as_bytes(), name);
                    if rest.is_empty() {
                        continue;
                    }
                    if !joined.is_empty() {
                        joined.extend_from_slice(b"; ");
                    }
                    joined.extend_from_slice(&rest);
                }
                upstream.remove_header(&header::COOKIE);
                if let (false, Ok(value)) =
                    (joined.is_empty(), http::HeaderValue::from_bytes(&joined))
                {
                    upstream.insert_header(header::COOKIE, value)?;
                }
            }
        }
        if let Some(path) = &ctx.upstream_path {
            let uri = match upstream.uri.query() {
                Some(query) => format!("{path}?{query}"),
                None => path.clone(),
            };
            if let Ok(uri) = uri.parse::<http::Uri>() {
                upstream.set_uri(uri);
            }
        }
        if let Some(route) = ctx.route.and_then(|i| ctx.snapshot.router.routes().get(i)) {
            for name in &route.request_headers.remove {
                upstream.remove_header(name);
            }
            for (name, value) in &route.request_headers.set {
                upstream.insert_header(name.clone(), value.clone())?;
            }
        }
        upstream.insert_header(X_REQUEST_ID, ctx.request_id.clone())?;

        let client = client_ip(session);
        let trusted = headers::is_trusted(client, &ctx.snapshot.trusted_proxies);
        let host = request_host(session.req_header());
        // With `real_ip_header`, the client's address as the rate limiter
        // sees it (the right-most untrusted hop) goes out under that name;
        // whatever the client sent under it was stripped above.
        let real_ip_header = ctx.snapshot.real_ip_header.as_ref();
        let real = real_ip_header.and(client).map(|peer| {
            portcullis_web::client_ip::client_ip(
                peer,
                &session.req_header().headers,
                &ctx.snapshot.trusted_proxies,
                ctx.snapshot.client_ip_source,
            )
        });
        if let Some(ip) = client {
            let mut ip_buf = IpText::default();
            let ip_text = ip_buf.format(ip);
            // Formatted once: the peer's address is X-Forwarded-For's last
            // hop and, from an untrusted peer, X-Real-IP as well.
            let peer_value = http::HeaderValue::from_str(ip_text).ok();
            let xff = match upstream.headers.contains_key(headers::X_FORWARDED_FOR) {
                true if trusted => http::HeaderValue::from_bytes(&headers::append_hop(
                    upstream.headers.get_all(headers::X_FORWARDED_FOR),
                    ip_text.as_bytes(),
                ))
                .ok(),
                _ => peer_value.clone(),
            };
            if let Some(xff) = xff {
                upstream.insert_header(headers::X_FORWARDED_FOR, xff)?;
            }
            if let (Some(name), true, Some(value)) = (real_ip_header, real == Some(ip), peer_value)
            {
                upstream.insert_header(name.clone(), value)?;
            }
            let proto = if ctx.is_tls { "https" } else { "http" };
            let element = headers::forwarded_element(ip, proto, Some(host));
            let forwarded = match upstream.headers.contains_key(headers::FORWARDED) {
                true if trusted => http::HeaderValue::from_bytes(&headers::append_hop(
                    upstream.headers.get_all(headers::FORWARDED),
                    element.as_bytes(),
                ))
                .ok(),
                _ => http::HeaderValue::from_str(&element).ok(),
            };
            if let Some(forwarded) = forwarded {
                upstream.insert_header(headers::FORWARDED, forwarded)?;
            }
        }
        if let (Some(name), Some(real)) = (real_ip_header, real.filter(|r| Some(*r) != client)) {
            let mut ip_buf = IpText::default();
            if let Ok(value) = http::HeaderValue::from_str(ip_buf.format(real)) {
                upstream.insert_header(name.clone(), value)?;
            }
        }
        if !(trusted && upstream.headers.contains_key(headers::X_FORWARDED_PROTO)) {
            let proto = if ctx.is_tls { &HTTPS } else { &HTTP };
            upstream.insert_header(headers::X_FORWARDED_PROTO, proto.clone())?;
        }
        let keep_host = trusted && upstream.headers.contains_key(headers::X_FORWARDED_HOST);
        if !keep_host && !host.is_empty() {
            if let Ok(value) = http::HeaderValue::from_str(host) {
                upstream.insert_header(headers::X_FORWARDED_HOST, value)?;
            }
        }
        Ok(())
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        fd: std::os::unix::io::RawFd,
        digest: Option<&pingora::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // A retry arms its own deadlines.
        ctx.disarm_deadlines();
        let ends = digest
            .and_then(|d| d.socket_digest.as_ref())
            .and_then(|s| Some((*s.local_addr()?.as_inet()?, *s.peer_addr()?.as_inet()?)));
        let (Some((local, peer)), Some(pool)) =
            (ends, ctx.pool.and_then(|i| ctx.snapshot.pools.get(i)))
        else {
            return Ok(());
        };
        // `upstream_peer` took the time just before connecting: no clock read.
        let now = ctx
            .upstream_started
            .map_or_else(tokio::time::Instant::now, tokio::time::Instant::from_std);
        let head = now + pool.spec.timeouts.response_headers.0;
        ctx.head_deadline = Some(deadlines().arm(fd, local, peer, head));
        let route_timeout = ctx
            .route
            .and_then(|i| ctx.snapshot.router.routes().get(i))
            .and_then(|r| r.timeout);
        if let Some(timeout) = route_timeout {
            ctx.exchange_deadline = Some(deadlines().arm(fd, local, peer, now + timeout));
        }
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if end_of_stream {
            ctx.disarm_deadlines();
        }
        Ok(None)
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let limits = ctx.snapshot.limits;
        if response.status.is_informational() && response.status.as_u16() != 101 {
            // RFC 9110 §15.2: a few interim responses, never to an HTTP/1.0
            // client, and `100 Continue` only to a client that asked for it
            // (pingora lets 100 through exactly then); `103` passes.
            ctx.interim_responses = ctx.interim_responses.saturating_add(1);
            if ctx.interim_responses > limits.max_interim_responses {
                ctx.reason = Some("too many interim responses from the upstream");
                ctx.error = Some(GatewayError::UpstreamFailed);
                return Err(status_error(GatewayError::UpstreamFailed));
            }
            let http10 = session.req_header().version == http::Version::HTTP_10;
            let unasked_continue = response.status.as_u16() == 100;
            session.set_ignore_info_resp(http10 || unasked_continue);
            return Ok(());
        }
        if let Some(watch) = ctx.head_deadline.take() {
            deadlines().disarm(watch);
        }
        // An upstream's head is bounded like a client's (pingora allows 1 MB).
        let head_bytes: usize = response
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum();
        if response.headers.len() > limits.max_response_header_count
            || head_bytes > limits.max_response_header_size
        {
            ctx.reason = Some("upstream response head too large");
            ctx.error = Some(GatewayError::UpstreamFailed);
            return Err(status_error(GatewayError::UpstreamFailed));
        }
        let status = response.status.as_u16();
        let failed = matches!(status, 502..=504);
        let snapshot = ctx.snapshot.clone();
        let (Some(pool), Some(target)) = (
            ctx.pool.and_then(|i| snapshot.pools.get(i)),
            ctx.target.as_ref(),
        ) else {
            return Ok(());
        };
        pool.report(target.target(), !failed);
        // 502 and 503 mean the target could not take the request: an
        // idempotent request goes to another target, within the budget.
        // Nothing has been sent to the client yet, so this is invisible to it.
        let retry = matches!(status, 502 | 503)
            && session.req_header().method.is_idempotent()
            && ctx.attempts <= pool.spec.retries.attempts
            && pool.try_retry();
        if retry {
            ctx.failed_target = Some(target.target().addr);
            let mut e =
                Error::explain(ErrorType::HTTPStatus(status), "upstream answered; retrying");
            e.set_retry(true);
            return Err(e.into_up());
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // The guard passes the bytes after an upgrade request untouched; if
        // the backend declined the upgrade, they would be read as requests
        // nobody checked. Close instead.
        if session.is_upgrade_req() && response.status.as_u16() != 101 {
            session.set_keepalive(None);
        }
        if let Some(route) = ctx.route.and_then(|i| ctx.snapshot.router.routes().get(i)) {
            for name in &route.response_headers.remove {
                response.remove_header(name);
            }
            for (name, value) in &route.response_headers.set {
                response.insert_header(name.clone(), value.clone())?;
            }
        }
        if let Some(hsts) = ctx
            .snapshot
            .listeners
            .get(self.listener)
            .and_then(|l| l.hsts.as_ref())
        {
            response.insert_header(headers::STRICT_TRANSPORT_SECURITY, hsts.clone())?;
        }
        if let Some(ratelimit) = &ctx.ratelimit {
            response.insert_header("ratelimit", ratelimit.clone())?;
        }
        response.insert_header(X_REQUEST_ID, ctx.request_id.clone())?;
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        if ctx.request_id.is_empty() {
            ctx.request_id = headers::new_request_id();
        }
        // A body the guard cut off (broken chunked framing, too slow).
        if ctx.error.is_none() {
            if let Some(refusal) = crate::guard::refusal_of(session.stream()) {
                ctx.reason = Some(refusal.reason);
                ctx.error = Some(GatewayError::from_status(refusal.status));
            }
        }
        // A deadline cut the upstream off: that is a timeout, whatever the
        // read error it caused says.
        if ctx.disarm_deadlines() && ctx.error.is_none() {
            ctx.reason = Some("upstream response past its deadline");
            ctx.error = Some(GatewayError::UpstreamTimeout);
        }
        let error = ctx.error.or_else(|| Gateway::classify(e));
        ctx.error = error;
        let Some(error) = error else {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        if let (Some(pool), Some(target)) = (
            ctx.pool.and_then(|i| ctx.snapshot.pools.get(i)),
            ctx.target.as_ref(),
        ) {
            if e.esource() == &ErrorSource::Upstream {
                pool.report(target.target(), false);
            }
        }
        // The response may already be under way (an upstream failing mid-body):
        // then there is nothing valid left to send.
        if let (None, Ok((header, body))) = (
            session.response_written(),
            error.response(headers::request_id_str(&ctx.request_id)),
        ) {
            // pingora closes the connection after a failed proxy attempt:
            // say so, or a client may send its next request into the close.
            session.set_keepalive(None);
            let _ = session.write_response_header(Box::new(header), false).await;
            let _ = session.write_response_body(Some(body), true).await;
        }
        FailToProxy {
            error_code: error.status(),
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        metrics().in_flight.dec();
        ctx.disarm_deadlines();
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let elapsed = ctx.started.elapsed();
        let snapshot = &ctx.snapshot;
        if let Some(route) = ctx.route.and_then(|i| snapshot.route_metrics.get(i)) {
            route.observe(status, elapsed.as_secs_f64());
        } else {
            snapshot
                .unrouted_metrics
                .observe(status, elapsed.as_secs_f64());
        }
        if !snapshot.access_log {
            return;
        }
        let req = session.req_header();
        let route = ctx.route.and_then(|i| snapshot.router.routes().get(i));
        let pool = ctx.pool.and_then(|i| snapshot.pools.get(i));
        let line = AccessLine {
            time: access_log::now(),
            request_id: headers::request_id_str(&ctx.request_id),
            listener: snapshot
                .listeners
                .get(self.listener)
                .map_or("", |l| &*l.name),
            client: client_ip(session).map(|ip| ip.to_string()),
            method: req.method.as_str(),
            host: request_host(req),
            path: req.uri.path(),
            protocol: if session.is_http2() {
                "HTTP/2"
            } else {
                "HTTP/1.1"
            },
            route: route.map(|r| &*r.name),
            upstream: pool.map(|p| &*p.name),
            target: ctx.target.as_ref().map(|t| &*t.target().label),
            status,
            duration_ms: millis(elapsed),
            upstream_ms: ctx.upstream_started.map(|s| millis(s.elapsed())),
            bytes_received: session.body_bytes_read(),
            bytes_sent: session.body_bytes_sent(),
            attempts: ctx.attempts,
            error: e.map(|e| e.etype().as_str().to_owned()),
            fault: ctx.fault,
            reason: ctx.reason,
        };
        access_log::write(&line);
    }
}

/// Where backends find the internal token's public keys.
const INTERNAL_JWKS_PATH: &str = "/.well-known/jwks.json";

async fn serve_internal_jwks(
    session: &mut Session,
    ctx: &mut RequestCtx,
    jwks: Bytes,
) -> Result<bool> {
    let mut header = ResponseHeader::build(200, Some(4))?;
    header.insert_header(header::CONTENT_TYPE, "application/json")?;
    header.insert_header(header::CONTENT_LENGTH, jwks.len())?;
    header.insert_header(header::CACHE_CONTROL, "public, max-age=300")?;
    header.insert_header(X_REQUEST_ID, ctx.request_id.clone())?;
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session.write_response_body(Some(jwks), true).await?;
    Ok(true)
}

/// `OPTIONS *` asks about the server, not a resource (RFC 9110 §9.3.7).
async fn answer_options_star(session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
    let mut header = ResponseHeader::build(200, Some(3))?;
    header.insert_header(
        header::ALLOW,
        "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS",
    )?;
    write_bodyless(session, ctx, header).await
}

/// Writes a response without a body (length 0, the request id added).
async fn write_bodyless(
    session: &mut Session,
    ctx: &mut RequestCtx,
    mut header: ResponseHeader,
) -> Result<bool> {
    header.insert_header(header::CONTENT_LENGTH, "0")?;
    header.insert_header(X_REQUEST_ID, ctx.request_id.clone())?;
    session
        .write_response_header(Box::new(header), true)
        .await?;
    Ok(true)
}

static CHALLENGE: http::HeaderValue = http::HeaderValue::from_static("Bearer realm=\"portcullis\"");
static CHALLENGE_INVALID: http::HeaderValue =
    http::HeaderValue::from_static("Bearer realm=\"portcullis\", error=\"invalid_token\"");
static CHALLENGE_FORBIDDEN: http::HeaderValue =
    http::HeaderValue::from_static("Bearer realm=\"portcullis\", error=\"insufficient_scope\"");
static HTTP: http::HeaderValue = http::HeaderValue::from_static("http");
static HTTPS: http::HeaderValue = http::HeaderValue::from_static("https");

/// Formats an IP address on the stack (no allocation per request); 48
/// bytes hold the longest IPv6 text (45).
struct IpText {
    buf: [u8; 48],
    len: usize,
}

impl Default for IpText {
    fn default() -> Self {
        IpText {
            buf: [0; 48],
            len: 0,
        }
    }
}

impl IpText {
    fn format(&mut self, ip: IpAddr) -> &str {
        use std::io::Write;
        let mut cursor = std::io::Cursor::new(&mut self.buf[..]);
        let _ = write!(cursor, "{ip}");
        self.len = cursor.position() as usize;
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn hash_key<'s>(session: &'s Session, hash_on: &config::HashOn) -> HashKey<'s> {
    let req = session.req_header();
    if let Some(name) = &hash_on.header {
        return req
            .headers
            .get(name.as_str())
            .map_or(HashKey::None, |v| HashKey::Bytes(v.as_bytes()));
    }
    if let Some(cookie_name) = &hash_on.cookie {
        // The same reading of `Cookie` as everywhere (portcullis_web::cookie).
        return req
            .headers
            .get_all(header::COOKIE)
            .iter()
            .flat_map(|value| portcullis_web::cookie::pairs(value.as_bytes()))
            .find(|(name, _)| *name == cookie_name.as_bytes())
            .map_or(HashKey::None, |(_, value)| HashKey::Bytes(value));
    }
    client_ip(session).map_or(HashKey::None, HashKey::Ip)
}

async fn redirect_to_https(session: &mut Session, ctx: &mut RequestCtx, port: u16) -> Result<bool> {
    let req = session.req_header();
    let host = headers::normalise_host(request_host(req));
    let path_and_query = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let location = if port == 443 {
        format!("https://{host}{path_and_query}")
    } else {
        format!("https://{host}:{port}{path_and_query}")
    };
    let mut header = ResponseHeader::build(308, Some(3))?;
    header.insert_header(header::LOCATION, location)?;
    write_bodyless(session, ctx, header).await
}
