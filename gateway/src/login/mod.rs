//! Browser login: the gateway as an OpenID Connect relying party
//! (authorization code + PKCE + nonce, a confidential or public client),
//! and a session cookie standing for the user's access token.
//!
//! A browser's session token is put in `Authorization` before routing, so
//! every route checks it like any bearer token (signature, issuer,
//! audience, expiry, roles — through the same verified-token cache), and
//! the portal shows what the user may call. The cookie never reaches a
//! backend, and neither does the token unless the route forwards it.
//!
//! - `sessions`: where sessions live (memory or Redis), the only truth;
//! - `provider`: discovery and the token endpoint;
//! - `logout`: the user's logout (confirmed, CSRF-proof) and the
//!   provider's back-channel logout.
//!
//! The callback is strict: `state` bound to the browser by a cookie, `iss`
//! checked (RFC 9207), the ID token verified with the provider's keys
//! (signature, `iss`, `aud`, `exp`, `nonce`, `azp`), the redirect URI from
//! configuration only.

mod logout;
mod provider;
mod sessions;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use http::{header, HeaderMap};
use portcullis_config as config;
use subtle::ConstantTimeEq;

use crate::auth::{Authenticator, RoutePolicy};
use crate::errors::GatewayError;
use provider::{Endpoints, TokenError, TokenResponse};
use sessions::{Pending, Session, SessionStore, PENDING_TTL};

/// The cookie binding a login in progress to the browser that began it.
const STATE_COOKIE: &str = "portcullis_login_state";
/// How long a request waits for another's refresh of its session.
const REFRESH_WAIT: Duration = Duration::from_secs(5);
/// How often a waiting request looks whether another replica's refresh
/// has landed.
const REFRESH_POLL: Duration = Duration::from_millis(25);
/// Timeout of every request to the provider.
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest `acr_values` a sign-in passes on.
const MAX_ACR_VALUES: usize = 512;

/// State kept across config reloads.
pub struct LoginState {
    memory: Arc<sessions::MemoryStore>,
    /// One refresh per session at a time in this process (the store's
    /// lease makes it one across replicas).
    refreshing: moka::sync::Cache<String, Arc<tokio::sync::Mutex<()>>>,
}

impl Default for LoginState {
    fn default() -> Self {
        LoginState {
            memory: Arc::new(sessions::MemoryStore::new(1_000_000)),
            refreshing: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(Duration::from_secs(60))
                .build(),
        }
    }
}

/// The login part of a snapshot.
pub struct Login {
    settings: config::BrowserLogin,
    issuer: String,
    provider: usize,
    /// Where the provider sends the browser back (from `public_url`).
    redirect_uri: String,
    /// Accepts the login provider's tokens only.
    policy: RoutePolicy,
    http: reqwest::Client,
    endpoints: tokio::sync::OnceCell<Endpoints>,
    state: Arc<LoginState>,
    store: SessionStore,
}

/// A login endpoint.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Page {
    Login,
    Callback,
    Logout,
    BackChannelLogout,
}

/// What a login endpoint answers.
#[derive(Debug)]
pub enum Answer {
    /// 302 to `location`, setting `cookies`.
    Redirect {
        location: String,
        cookies: Vec<String>,
    },
    /// A page (the logout confirmation).
    Html { status: u16, body: String },
    /// An empty answer (the back-channel logout's 200).
    Empty { status: u16 },
}

/// The request a login endpoint answers.
pub struct Request<'r> {
    pub method: &'r http::Method,
    pub uri: &'r http::Uri,
    pub headers: &'r HeaderMap,
    /// A POST's form body (small: read with a limit by the caller).
    pub form: Option<&'r [u8]>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn random(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::fill(&mut buf[..]);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

fn digest(text: &str) -> String {
    let hash = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(hash)
}

fn same(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// `application/x-www-form-urlencoded` (query values).
fn encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

fn param(encoded: Option<&[u8]>, name: &str) -> Option<String> {
    form_urlencoded::parse(encoded?)
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    param(query.map(str::as_bytes), name)
}

pub fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    portcullis_web::cookie::find(headers, name).map(str::to_owned)
}

/// Only a path of this gateway: no scheme, no `//host`, no backslashes
/// (which browsers read as slashes) — no open redirect.
fn safe_return_path(candidate: Option<String>) -> String {
    match candidate {
        Some(path)
            if path.starts_with('/')
                && !path.starts_with("//")
                && !path.contains('\\')
                && !path.chars().any(char::is_control) =>
        {
            path
        }
        _ => "/".to_owned(),
    }
}

/// How long before expiry an access token is refreshed: `refresh_before`,
/// but never more than half its lifetime (a short-lived token would
/// otherwise be refreshed on every request).
fn refresh_margin(setting: Duration, lifetime: u64) -> u64 {
    setting.as_secs().min(lifetime / 2)
}

impl Login {
    pub fn compile(
        identity: &config::Identity,
        state: &Arc<LoginState>,
        redis: Option<(Arc<crate::ratelimit::RedisStore>, String)>,
    ) -> Option<Login> {
        let settings = identity.login.clone()?;
        let provider = identity
            .providers
            .iter()
            .position(|p| p.name == settings.provider)?;
        let issuer = identity.providers[provider]
            .issuer
            .trim_end_matches('/')
            .to_owned();
        // `portcullis check` refuses a login without `public_url`: the
        // request's Host never makes the redirect URI.
        let redirect_uri = format!(
            "{}{}",
            settings.public_url.as_ref()?,
            settings.callback_path
        );
        let store = match redis {
            Some((redis, prefix)) => SessionStore::Redis { redis, prefix },
            None => SessionStore::Memory(state.memory.clone()),
        };
        Some(Login {
            policy: RoutePolicy::for_provider(provider),
            provider,
            redirect_uri,
            settings,
            issuer,
            http: provider::http_client(PROVIDER_TIMEOUT)?,
            endpoints: tokio::sync::OnceCell::new(),
            state: state.clone(),
            store,
        })
    }

    pub fn page(&self, path: &str) -> Option<Page> {
        let s = &self.settings;
        if path == s.login_path {
            Some(Page::Login)
        } else if path == s.callback_path {
            Some(Page::Callback)
        } else if path == s.logout_path {
            Some(Page::Logout)
        } else if path == s.backchannel_logout_path {
            Some(Page::BackChannelLogout)
        } else {
            None
        }
    }

    /// Where a browser goes to sign in, coming back to `path_and_query`;
    /// with `acr_values` (a route's `require_acr`), the provider is asked
    /// for that level (RFC 9470 step-up).
    pub fn login_location(&self, path_and_query: &str, acr_values: &[String]) -> String {
        let mut location = format!("{}?rd={}", self.settings.login_path, encode(path_and_query));
        if !acr_values.is_empty() {
            location.push_str("&acr_values=");
            location.push_str(&encode(&acr_values.join(" ")));
        }
        location
    }

    fn cookie(&self, name: &str, value: &str, max_age: u64) -> String {
        let secure = if self.settings.secure_cookies {
            "; Secure"
        } else {
            ""
        };
        format!("{name}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}")
    }

    async fn endpoints(&self) -> Result<&Endpoints, GatewayError> {
        self.endpoints
            .get_or_try_init(|| provider::discover(&self.http, &self.issuer))
            .await
    }

    fn public_url(&self) -> &str {
        self.settings.public_url.as_deref().unwrap_or_default()
    }

    /// Answers a login endpoint.
    pub async fn handle(
        &self,
        page: Page,
        request: &Request<'_>,
        auth: &Authenticator,
    ) -> Result<Answer, GatewayError> {
        let post = request.method == http::Method::POST;
        match page {
            Page::Login => self.begin(request.uri).await,
            Page::Callback => self.finish(request.uri, request.headers, auth).await,
            Page::Logout if post => self.logout(request).await,
            Page::Logout => self.confirm_logout(request.headers).await,
            Page::BackChannelLogout if post => self.back_channel_logout(request, auth).await,
            Page::BackChannelLogout => Err(GatewayError::MethodNotAllowed),
        }
    }

    async fn begin(&self, uri: &http::Uri) -> Result<Answer, GatewayError> {
        let endpoints = self.endpoints().await?;
        let state = random(24);
        let nonce = random(24);
        let verifier = random(32);
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
            ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()),
        );
        let mut location = format!(
            "{}{}response_type=code&client_id={}&redirect_uri={}&scope={}&state={state}&nonce={nonce}&code_challenge={challenge}&code_challenge_method=S256",
            endpoints.authorization_endpoint,
            if endpoints.authorization_endpoint.contains('?') { '&' } else { '?' },
            encode(&self.settings.client_id),
            encode(&self.redirect_uri),
            encode(&self.settings.scopes.join(" ")),
        );
        // Step-up (RFC 9470): the levels a route asked for, passed on. Anyone
        // can ask for more; only the provider decides what a token says.
        if let Some(acr_values) = query_param(uri.query(), "acr_values")
            .filter(|v| v.len() <= MAX_ACR_VALUES && v.bytes().all(|b| (0x20..0x7f).contains(&b)))
        {
            location.push_str("&acr_values=");
            location.push_str(&encode(&acr_values));
        }
        self.store
            .put_pending(
                &digest(&state),
                Pending {
                    verifier,
                    nonce,
                    return_to: safe_return_path(query_param(uri.query(), "rd")),
                    redirect_uri: self.redirect_uri.clone(),
                },
            )
            .await
            .map_err(|_| GatewayError::IdentityUnavailable)?;
        Ok(Answer::Redirect {
            location,
            cookies: vec![self.cookie(STATE_COOKIE, &state, PENDING_TTL.as_secs())],
        })
    }

    async fn finish(
        &self,
        uri: &http::Uri,
        headers: &HeaderMap,
        auth: &Authenticator,
    ) -> Result<Answer, GatewayError> {
        let query = uri.query();
        let state = query_param(query, "state").unwrap_or_default();
        let cookie = cookie_value(headers, STATE_COOKIE).unwrap_or_default();
        // The callback must come to the browser that began the login.
        if state.is_empty() || !same(&state, &cookie) {
            return Err(GatewayError::Forbidden);
        }
        let pending = self
            .store
            .take_pending(&digest(&state))
            .await
            .map_err(|_| GatewayError::IdentityUnavailable)?
            .ok_or(GatewayError::Forbidden)?;
        let endpoints = self.endpoints().await?;
        // RFC 9207 (mix-up defence): whoever answers names itself, and must
        // be our provider; a provider that promises `iss` must send it.
        match query_param(query, "iss") {
            Some(iss) if iss.trim_end_matches('/') != self.issuer => {
                log::info!("login: the callback's iss names another issuer");
                return Err(GatewayError::Unauthorized);
            }
            None if endpoints.authorization_response_iss_parameter_supported => {
                log::info!("login: the callback lacks iss");
                return Err(GatewayError::Unauthorized);
            }
            _ => {}
        }
        if let Some(error) = query_param(query, "error") {
            log::info!("login: the provider answered `{error}`");
            return Err(GatewayError::Unauthorized);
        }
        let code = query_param(query, "code").ok_or(GatewayError::BadRequest)?;
        let form = self.client_form([
            ("grant_type", "authorization_code".to_owned()),
            ("code", code),
            ("redirect_uri", pending.redirect_uri.clone()),
            ("code_verifier", pending.verifier.clone()),
        ]);
        let tokens = provider::token_request(&self.http, &endpoints.token_endpoint, &form).await?;
        let id = self
            .check_id_token(tokens.id_token.as_deref(), Some(&pending.nonce), None, auth)
            .await?;
        // The access token is what every route will check: check it now.
        let access = auth
            .authenticate(&tokens.access_token, &self.policy)
            .await
            .map_err(|e| {
                log::info!("login: the provider's access token was refused: {e}");
                GatewayError::Unauthorized
            })?;
        let session_id = random(32);
        let ttl = self.settings.session_ttl.0.as_secs();
        let now = now();
        let (sub, sid) = match id {
            Some(id) => (id.sub, id.sid),
            None => (access.subject.clone(), None),
        };
        let lifetime = tokens.expires_in.unwrap_or(300);
        let session = Session {
            access_expires_at: now + lifetime,
            access_lifetime: lifetime,
            access_token: tokens.access_token.into(),
            refresh_token: tokens.refresh_token,
            id_token: tokens.id_token,
            session_expires_at: now + ttl,
            sub,
            sid,
        };
        self.store
            .create(&digest(&session_id), &session, now)
            .await
            .map_err(|_| GatewayError::IdentityUnavailable)?;
        Ok(Answer::Redirect {
            location: pending.return_to.clone(),
            cookies: vec![
                self.cookie(&self.settings.cookie, &session_id, ttl),
                self.cookie(STATE_COOKIE, "", 0),
            ],
        })
    }

    /// The client's credentials added to a token request's form.
    fn client_form<const N: usize>(
        &self,
        fields: [(&'static str, String); N],
    ) -> Vec<(&'static str, String)> {
        let mut form: Vec<(&str, String)> = fields.into();
        form.push(("client_id", self.settings.client_id.clone()));
        if let Some(secret) = &self.settings.client_secret {
            form.push(("client_secret", secret.expose().to_owned()));
        }
        form
    }

    /// OpenID Connect Core §3.1.3.7 and §12.2: an ID token from the token
    /// endpoint, verified with the provider's keys. At login it must be
    /// there (with `openid`) and carry our nonce; on refresh it may be
    /// absent, and must name the session's user.
    async fn check_id_token(
        &self,
        token: Option<&str>,
        nonce: Option<&str>,
        user: Option<&str>,
        auth: &Authenticator,
    ) -> Result<Option<IdToken>, GatewayError> {
        let refused = |why: &str| {
            log::info!("login: ID token refused: {why}");
            GatewayError::Unauthorized
        };
        let Some(token) = token else {
            let wanted = nonce.is_some() && self.settings.scopes.iter().any(|s| s == "openid");
            return if wanted {
                Err(refused("the token response has none"))
            } else {
                Ok(None)
            };
        };
        let claims = auth
            .verify_issued_to(self.provider, token, &self.settings.client_id, true)
            .await
            .map_err(|e| refused(&e.to_string()))?;
        let text = |name: &str| claims.get(name).and_then(|v| v.as_str());
        if let Some(nonce) = nonce {
            if !text("nonce").is_some_and(|n| same(n, nonce)) {
                return Err(refused("wrong nonce"));
            }
        }
        let several_audiences = claims
            .get("aud")
            .and_then(|a| a.as_array())
            .is_some_and(|a| a.len() > 1);
        match text("azp") {
            Some(azp) if azp != self.settings.client_id => {
                return Err(refused("azp names another client"))
            }
            None if several_audiences => return Err(refused("several audiences and no azp")),
            _ => {}
        }
        let sub = text("sub").ok_or_else(|| refused("no sub"))?.to_owned();
        if user.is_some_and(|u| u != sub) {
            return Err(refused("a refreshed ID token names another user"));
        }
        Ok(Some(IdToken {
            sub: Some(sub),
            sid: text("sid").map(str::to_owned),
        }))
    }

    /// The access token of the browser's session, refreshed when it is
    /// about to expire. `None`: no cookie, or no (live) session.
    ///
    /// Refresh is single-flight: one request per session refreshes (a
    /// per-session lock in this process, the store's lease across
    /// replicas); the others use the current token while it is valid, or
    /// wait up to [`REFRESH_WAIT`] for the new one. Providers that rotate
    /// refresh tokens revoke a grant whose old refresh token comes back, so
    /// two concurrent refreshes would sign the user out.
    pub async fn session_token(
        &self,
        headers: &HeaderMap,
        auth: &Authenticator,
    ) -> Option<Arc<str>> {
        let key = digest(&cookie_value(headers, &self.settings.cookie)?);
        let session = self.live_session(&key).await?;
        let now = now();
        let margin = refresh_margin(self.settings.refresh_before.0, session.access_lifetime);
        if session.access_expires_at > now + margin || session.refresh_token.is_none() {
            return (session.access_expires_at > now).then(|| session.access_token.clone());
        }
        let lock = self.state.refreshing.get_with(key.clone(), Arc::default);
        let _turn = match lock.try_lock() {
            Ok(turn) => turn,
            // Another request of this session is refreshing: its token is
            // still good, or wait for the new one.
            Err(_) if session.access_expires_at > now => return Some(session.access_token),
            Err(_) => tokio::time::timeout(REFRESH_WAIT, lock.lock()).await.ok()?,
        };
        // Perhaps refreshed while we waited for the lock.
        let session = self.live_session(&key).await?;
        let now = self::now();
        if session.access_expires_at > now + margin {
            return Some(session.access_token);
        }
        match self.store.lease(&key).await.ok()? {
            Some(lease) => {
                let token = self.refresh(&key, session, auth).await;
                self.store.release(lease).await;
                token
            }
            // Another replica is refreshing.
            None if session.access_expires_at > now => Some(session.access_token),
            None => self.await_refresh(&key, session.access_expires_at).await,
        }
    }

    async fn live_session(&self, key: &str) -> Option<Session> {
        let session = self.store.get(key).await.ok()??;
        if now() >= session.session_expires_at {
            let _ = self.store.remove(key).await;
            return None;
        }
        Some(session)
    }

    /// Waits for another replica's refresh to land in the store.
    async fn await_refresh(&self, key: &str, old_expiry: u64) -> Option<Arc<str>> {
        let deadline = tokio::time::Instant::now() + REFRESH_WAIT;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(REFRESH_POLL).await;
            let session = self.store.get(key).await.ok()??;
            if session.access_expires_at != old_expiry {
                return (session.access_expires_at > now()).then_some(session.access_token);
            }
        }
        None
    }

    async fn refresh(&self, key: &str, session: Session, auth: &Authenticator) -> Option<Arc<str>> {
        let still_valid =
            |s: &Session| (s.access_expires_at > now()).then(|| s.access_token.clone());
        let endpoints = self.endpoints().await.ok()?;
        let refresh_token = session.refresh_token.clone()?;
        let form = self.client_form([
            ("grant_type", "refresh_token".to_owned()),
            ("refresh_token", refresh_token),
        ]);
        let fresh: TokenResponse =
            match provider::token_request(&self.http, &endpoints.token_endpoint, &form).await {
                Ok(fresh) => fresh,
                // The grant is over (revoked, expired, reused): so is the
                // session. The next request signs in again.
                Err(TokenError::InvalidGrant | TokenError::Refused(_)) => {
                    let _ = self.store.remove(key).await;
                    return None;
                }
                // The provider is down: keep the session, try again later.
                Err(TokenError::Unavailable) => return still_valid(&session),
            };
        if self
            .check_id_token(
                fresh.id_token.as_deref(),
                None,
                session.sub.as_deref(),
                auth,
            )
            .await
            .is_err()
        {
            let _ = self.store.remove(key).await;
            return None;
        }
        let now = now();
        let lifetime = fresh.expires_in.unwrap_or(300);
        let access_token: Arc<str> = fresh.access_token.into();
        let renewed = Session {
            access_expires_at: now + lifetime,
            access_lifetime: lifetime,
            access_token: access_token.clone(),
            refresh_token: fresh.refresh_token.or(session.refresh_token),
            id_token: fresh.id_token.or(session.id_token),
            ..session
        };
        // A logout while we refreshed stays a logout.
        match self.store.replace(key, &renewed).await {
            Ok(true) => Some(access_token),
            Ok(false) | Err(_) => None,
        }
    }

    pub fn cookie_name(&self) -> &str {
        &self.settings.cookie
    }
}

/// What the gateway keeps of a verified ID token.
struct IdToken {
    sub: Option<String>,
    sid: Option<String>,
}

/// Whether a request looks like a browser navigation (a redirect to a
/// login page helps it; an API client wants the 401).
pub fn is_browser_navigation(method: &http::Method, headers: &HeaderMap) -> bool {
    method == http::Method::GET
        && headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|accept| accept.contains("text/html"))
}

/// Whether one `Cookie` header value has a cookie called `name` (no
/// allocation: checked for every proxied request). The same reading as
/// [`cookie_value`], so a cookie that signs a request in is always found
/// here (`portcullis_web::cookie`).
pub fn cookie_value_in(value: &[u8], name: &str) -> bool {
    portcullis_web::cookie::contains(value, name)
}

/// The `Cookie` header without the session cookie (for the upstream).
pub fn without_cookie(value: &[u8], name: &str) -> Vec<u8> {
    portcullis_web::cookie::without(value, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_paths_stay_on_the_gateway() {
        assert_eq!(safe_return_path(Some("/app/x?y=1".into())), "/app/x?y=1");
        for evil in [
            "https://evil.example/",
            "//evil.example/",
            "/\\evil.example",
            "",
            "app",
        ] {
            assert_eq!(safe_return_path(Some(evil.into())), "/", "{evil}");
        }
        assert_eq!(safe_return_path(None), "/");
    }

    #[test]
    fn short_tokens_are_refreshed_at_half_life() {
        let setting = Duration::from_secs(30);
        assert_eq!(refresh_margin(setting, 300), 30);
        assert_eq!(refresh_margin(setting, 40), 20);
        assert_eq!(refresh_margin(setting, 1), 0);
    }

    #[test]
    fn session_cookie_is_found_without_allocating() {
        assert!(cookie_value_in(
            b"a=1; portcullis_session=s",
            "portcullis_session"
        ));
        assert!(cookie_value_in(
            b"portcullis_session=s",
            "portcullis_session"
        ));
        assert!(!cookie_value_in(
            b"portcullis_session_x=s; b=2",
            "portcullis_session"
        ));
        assert!(!cookie_value_in(
            b"a=portcullis_session=",
            "portcullis_session"
        ));
    }

    #[test]
    fn session_cookie_is_removed_for_upstreams() {
        assert_eq!(
            without_cookie(b"a=1; portcullis_session=s3cr3t; b=2", "portcullis_session"),
            b"a=1; b=2"
        );
        assert!(without_cookie(b"portcullis_session=x", "portcullis_session").is_empty());
    }

    #[test]
    fn query_parameters_decode() {
        assert_eq!(
            query_param(Some("rd=%2Fapp%2Fx%3Fy%3D1&z=2"), "rd").as_deref(),
            Some("/app/x?y=1")
        );
        assert_eq!(encode("/a b"), "%2Fa+b");
    }
}
