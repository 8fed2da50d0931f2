//! Browser login: the gateway as an OpenID Connect relying party
//! (authorization code + PKCE, a confidential or public client), and a
//! session cookie standing for the user's access token.
//!
//! A browser's session token is put in `Authorization` before routing, so
//! every route checks it like any bearer token (signature, issuer,
//! audience, expiry, roles — through the same verified-token cache), and
//! the portal shows what the user may call. The cookie never reaches a
//! backend, and neither does the token unless the route forwards it.
//!
//! Sessions and logins in progress are in memory (one replica), or in
//! Redis (`store: redis`) so that every replica knows every session.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use http::{header, HeaderMap};
use portcullis_config as config;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::auth::{Authenticator, RoutePolicy};
use crate::errors::GatewayError;

/// How long a browser may take at the provider's login page.
const PENDING_TTL: Duration = Duration::from_secs(600);
/// Refresh the access token when it has less than this left.
const REFRESH_MARGIN: u64 = 30;
/// The cookie binding a login in progress to the browser that began it.
const STATE_COOKIE: &str = "portcullis_login_state";

/// State kept across config reloads.
pub struct LoginState {
    pending: moka::sync::Cache<String, Arc<Pending>>,
    sessions: moka::sync::Cache<String, Arc<SessionTokens>>,
}

impl Default for LoginState {
    fn default() -> Self {
        LoginState {
            pending: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(PENDING_TTL)
                .build(),
            sessions: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(Duration::from_secs(7 * 24 * 3600))
                .build(),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Pending {
    verifier: String,
    return_to: String,
    redirect_uri: String,
}

#[derive(Serialize, Deserialize)]
struct SessionTokens {
    access_token: Arc<str>,
    refresh_token: Option<String>,
    id_token: Option<String>,
    /// Unix seconds: the access token's expiry, and the session's.
    access_expires_at: u64,
    session_expires_at: u64,
}

#[derive(Clone, Debug, Deserialize)]
struct Endpoints {
    authorization_endpoint: String,
    token_endpoint: String,
    #[serde(default)]
    end_session_endpoint: Option<String>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    id_token: Option<String>,
}

/// The login part of a snapshot.
pub struct Login {
    settings: config::BrowserLogin,
    issuer: String,
    /// Accepts the login provider's tokens only.
    policy: RoutePolicy,
    http: reqwest::Client,
    endpoints: tokio::sync::OnceCell<Endpoints>,
    state: Arc<LoginState>,
    /// With `store: redis`: sessions and logins in progress live there.
    redis: Option<(Arc<crate::ratelimit::RedisStore>, String)>,
}

/// A login endpoint.
#[derive(Debug, PartialEq, Eq)]
pub enum Page {
    Login,
    Callback,
    Logout,
}

/// A redirect (with cookies) for the proxy to write.
#[derive(Debug)]
pub struct Redirect {
    pub location: String,
    pub cookies: Vec<String>,
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

/// `application/x-www-form-urlencoded` (query values).
fn encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

pub fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    portcullis_cookie::find(headers, name).map(str::to_owned)
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
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .ok()?;
        Some(Login {
            policy: RoutePolicy::for_provider(provider),
            settings,
            issuer,
            http,
            endpoints: tokio::sync::OnceCell::new(),
            state: state.clone(),
            redis,
        })
    }

    fn redis_key(prefix: &str, kind: &str, key: &str) -> String {
        format!("{prefix}:{kind}:{key}")
    }

    async fn put_pending(&self, key: String, pending: Pending) -> Result<(), GatewayError> {
        match &self.redis {
            None => {
                self.state.pending.insert(key, Arc::new(pending));
                Ok(())
            }
            Some((store, prefix)) => {
                let value = serde_json::to_string(&pending).map_err(|_| GatewayError::Internal)?;
                let mut cmd = redis::cmd("SET");
                cmd.arg(Self::redis_key(prefix, "login", &key))
                    .arg(value)
                    .arg("EX")
                    .arg(PENDING_TTL.as_secs());
                store.command::<()>(&cmd).await.map_err(|e| {
                    log::warn!("login: redis: {e}");
                    GatewayError::IdentityUnavailable
                })
            }
        }
    }

    /// Single use: of two callbacks with one state, one wins.
    async fn take_pending(&self, key: &str) -> Result<Option<Arc<Pending>>, GatewayError> {
        match &self.redis {
            None => Ok(self.state.pending.remove(key)),
            Some((store, prefix)) => {
                let mut cmd = redis::cmd("GETDEL");
                cmd.arg(Self::redis_key(prefix, "login", key));
                let value: Option<String> = store.command(&cmd).await.map_err(|e| {
                    log::warn!("login: redis: {e}");
                    GatewayError::IdentityUnavailable
                })?;
                Ok(value
                    .and_then(|v| serde_json::from_str(&v).ok())
                    .map(Arc::new))
            }
        }
    }

    async fn put_session(&self, key: String, tokens: SessionTokens) -> Result<(), GatewayError> {
        match &self.redis {
            None => {
                self.state.sessions.insert(key, Arc::new(tokens));
                Ok(())
            }
            Some((store, prefix)) => {
                let ttl = tokens.session_expires_at.saturating_sub(now()).max(1);
                let value = serde_json::to_string(&tokens).map_err(|_| GatewayError::Internal)?;
                let mut cmd = redis::cmd("SET");
                cmd.arg(Self::redis_key(prefix, "session", &key))
                    .arg(value)
                    .arg("EX")
                    .arg(ttl);
                store.command::<()>(&cmd).await.map_err(|e| {
                    log::warn!("login: redis: {e}");
                    GatewayError::IdentityUnavailable
                })
            }
        }
    }

    /// A session; with `take`, also removed (logout).
    async fn get_session(&self, key: &str, take: bool) -> Option<Arc<SessionTokens>> {
        match &self.redis {
            None if take => self.state.sessions.remove(key),
            None => self.state.sessions.get(key),
            Some((store, prefix)) => {
                let mut cmd = redis::cmd(if take { "GETDEL" } else { "GET" });
                cmd.arg(Self::redis_key(prefix, "session", key));
                match store.command::<Option<String>>(&cmd).await {
                    Ok(value) => value
                        .and_then(|v| serde_json::from_str(&v).ok())
                        .map(Arc::new),
                    Err(e) => {
                        log::warn!("login: redis: {e}");
                        None
                    }
                }
            }
        }
    }

    async fn forget_session(&self, key: &str) {
        match &self.redis {
            None => self.state.sessions.invalidate(key),
            Some((store, prefix)) => {
                let mut cmd = redis::cmd("DEL");
                cmd.arg(Self::redis_key(prefix, "session", key));
                if let Err(e) = store.command::<()>(&cmd).await {
                    log::warn!("login: redis: {e}");
                }
            }
        }
    }

    pub fn page(&self, path: &str) -> Option<Page> {
        if path == self.settings.login_path {
            Some(Page::Login)
        } else if path == self.settings.callback_path {
            Some(Page::Callback)
        } else if path == self.settings.logout_path {
            Some(Page::Logout)
        } else {
            None
        }
    }

    /// Where an unauthenticated browser goes to sign in, coming back to
    /// `path_and_query`.
    pub fn login_location(&self, path_and_query: &str) -> String {
        format!("{}?rd={}", self.settings.login_path, encode(path_and_query))
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
            .get_or_try_init(|| async {
                let url = format!("{}/.well-known/openid-configuration", self.issuer);
                let response = self.http.get(&url).send().await.map_err(|e| {
                    log::warn!("login: discovery at {url}: {e}");
                    GatewayError::IdentityUnavailable
                })?;
                let body = response.bytes().await.map_err(|e| {
                    log::warn!("login: discovery at {url}: {e}");
                    GatewayError::IdentityUnavailable
                })?;
                serde_json::from_slice::<Endpoints>(&body).map_err(|e| {
                    log::warn!("login: discovery at {url}: {e}");
                    GatewayError::IdentityUnavailable
                })
            })
            .await
    }

    fn base_url(&self, headers: &HeaderMap, is_tls: bool) -> String {
        if let Some(url) = &self.settings.public_url {
            return url.clone();
        }
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost");
        format!("{}://{host}", if is_tls { "https" } else { "http" })
    }

    /// Answers a login endpoint.
    pub async fn handle(
        &self,
        page: Page,
        uri: &http::Uri,
        headers: &HeaderMap,
        is_tls: bool,
        auth: &Authenticator,
    ) -> Result<Redirect, GatewayError> {
        match page {
            Page::Login => self.begin(uri, headers, is_tls).await,
            Page::Callback => self.finish(uri, headers, auth).await,
            Page::Logout => self.logout(headers, is_tls).await,
        }
    }

    async fn begin(
        &self,
        uri: &http::Uri,
        headers: &HeaderMap,
        is_tls: bool,
    ) -> Result<Redirect, GatewayError> {
        let endpoints = self.endpoints().await?;
        let state = random(24);
        let verifier = random(32);
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
            ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()),
        );
        let redirect_uri = format!(
            "{}{}",
            self.base_url(headers, is_tls),
            self.settings.callback_path
        );
        let location = format!(
            "{}{}response_type=code&client_id={}&redirect_uri={}&scope={}&state={state}&code_challenge={challenge}&code_challenge_method=S256",
            endpoints.authorization_endpoint,
            if endpoints.authorization_endpoint.contains('?') { '&' } else { '?' },
            encode(&self.settings.client_id),
            encode(&redirect_uri),
            encode(&self.settings.scopes.join(" ")),
        );
        self.put_pending(
            digest(&state),
            Pending {
                verifier,
                return_to: safe_return_path(query_param(uri.query(), "rd")),
                redirect_uri,
            },
        )
        .await?;
        Ok(Redirect {
            location,
            cookies: vec![self.cookie(STATE_COOKIE, &state, PENDING_TTL.as_secs())],
        })
    }

    async fn finish(
        &self,
        uri: &http::Uri,
        headers: &HeaderMap,
        auth: &Authenticator,
    ) -> Result<Redirect, GatewayError> {
        if let Some(error) = query_param(uri.query(), "error") {
            log::info!("login: the provider answered `{error}`");
            return Err(GatewayError::Unauthorized);
        }
        let state = query_param(uri.query(), "state").unwrap_or_default();
        let cookie = cookie_value(headers, STATE_COOKIE).unwrap_or_default();
        // The callback must come to the browser that began the login.
        if state.is_empty() || !bool::from(state.as_bytes().ct_eq(cookie.as_bytes())) {
            return Err(GatewayError::Forbidden);
        }
        let pending = self
            .take_pending(&digest(&state))
            .await?
            .ok_or(GatewayError::Forbidden)?;
        let code = query_param(uri.query(), "code").ok_or(GatewayError::BadRequest)?;
        let endpoints = self.endpoints().await?;
        let mut form = vec![
            ("grant_type", "authorization_code".to_owned()),
            ("code", code),
            ("redirect_uri", pending.redirect_uri.clone()),
            ("code_verifier", pending.verifier.clone()),
            ("client_id", self.settings.client_id.clone()),
        ];
        if let Some(secret) = &self.settings.client_secret {
            form.push(("client_secret", secret.expose().to_owned()));
        }
        let tokens = self.token_request(&endpoints.token_endpoint, &form).await?;
        // The access token is what every route will check: check it now.
        auth.authenticate(&tokens.access_token, &self.policy)
            .await
            .map_err(|e| {
                log::info!("login: the provider's access token was refused: {e}");
                GatewayError::Unauthorized
            })?;
        let session_id = random(32);
        let ttl = self.settings.session_ttl.0.as_secs();
        let now = now();
        self.put_session(
            digest(&session_id),
            SessionTokens {
                access_expires_at: now + tokens.expires_in.unwrap_or(300),
                access_token: tokens.access_token.into(),
                refresh_token: tokens.refresh_token,
                id_token: tokens.id_token,
                session_expires_at: now + ttl,
            },
        )
        .await?;
        Ok(Redirect {
            location: pending.return_to.clone(),
            cookies: vec![
                self.cookie(&self.settings.cookie, &session_id, ttl),
                self.cookie(STATE_COOKIE, "", 0),
            ],
        })
    }

    async fn token_request(
        &self,
        endpoint: &str,
        form: &[(&str, String)],
    ) -> Result<TokenResponse, GatewayError> {
        let response = self
            .http
            .post(endpoint)
            .form(form)
            .send()
            .await
            .map_err(|e| {
                log::warn!("login: token endpoint: {}", e.without_url());
                GatewayError::IdentityUnavailable
            })?;
        if !response.status().is_success() {
            log::info!("login: the token endpoint answered {}", response.status());
            return Err(GatewayError::Unauthorized);
        }
        let body = response
            .bytes()
            .await
            .map_err(|_| GatewayError::IdentityUnavailable)?;
        serde_json::from_slice(&body).map_err(|_| GatewayError::IdentityUnavailable)
    }

    async fn logout(&self, headers: &HeaderMap, is_tls: bool) -> Result<Redirect, GatewayError> {
        let session = cookie_value(headers, &self.settings.cookie).map(|id| digest(&id));
        let tokens = session
            .as_ref()
            .and_then(|key| self.state.sessions.remove(key));
        let clear = vec![self.cookie(&self.settings.cookie, "", 0)];
        let end_session = self
            .endpoints()
            .await
            .ok()
            .and_then(|e| e.end_session_endpoint.clone());
        let location = match (end_session, tokens.and_then(|t| t.id_token.clone())) {
            (Some(endpoint), Some(id_token)) => {
                let mut url = format!(
                    "{endpoint}{}id_token_hint={}",
                    if endpoint.contains('?') { '&' } else { '?' },
                    encode(&id_token)
                );
                if let Some(path) = &self.settings.post_logout_path {
                    url.push_str(&format!(
                        "&post_logout_redirect_uri={}",
                        encode(&format!("{}{path}", self.base_url(headers, is_tls)))
                    ));
                }
                url
            }
            _ => self
                .settings
                .post_logout_path
                .clone()
                .unwrap_or_else(|| "/".into()),
        };
        Ok(Redirect {
            location,
            cookies: clear,
        })
    }

    /// The access token of the browser's session, refreshed when it is
    /// about to expire. `None`: no cookie, or no (live) session.
    pub async fn session_token(&self, headers: &HeaderMap) -> Option<Arc<str>> {
        let key = digest(&cookie_value(headers, &self.settings.cookie)?);
        let tokens = self.get_session(&key, false).await?;
        let now = now();
        if now >= tokens.session_expires_at {
            self.forget_session(&key).await;
            return None;
        }
        if tokens.access_expires_at > now + REFRESH_MARGIN {
            return Some(tokens.access_token.clone());
        }
        let Some(refresh) = &tokens.refresh_token else {
            return (tokens.access_expires_at > now).then(|| tokens.access_token.clone());
        };
        let endpoints = self.endpoints().await.ok()?;
        let mut form = vec![
            ("grant_type", "refresh_token".to_owned()),
            ("refresh_token", refresh.clone()),
            ("client_id", self.settings.client_id.clone()),
        ];
        if let Some(secret) = &self.settings.client_secret {
            form.push(("client_secret", secret.expose().to_owned()));
        }
        match self.token_request(&endpoints.token_endpoint, &form).await {
            Ok(fresh) => {
                let access_token: Arc<str> = fresh.access_token.into();
                let renewed = SessionTokens {
                    access_expires_at: now + fresh.expires_in.unwrap_or(300),
                    access_token: access_token.clone(),
                    refresh_token: fresh.refresh_token.or_else(|| tokens.refresh_token.clone()),
                    id_token: fresh.id_token.or_else(|| tokens.id_token.clone()),
                    session_expires_at: tokens.session_expires_at,
                };
                self.put_session(key, renewed).await.ok()?;
                Some(access_token)
            }
            Err(_) => {
                // Refused (revoked, expired): the session is over.
                self.forget_session(&key).await;
                None
            }
        }
    }

    pub fn cookie_name(&self) -> &str {
        &self.settings.cookie
    }
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
/// here (`portcullis_cookie`).
pub fn cookie_value_in(value: &[u8], name: &str) -> bool {
    portcullis_cookie::contains(value, name)
}

/// The `Cookie` header without the session cookie (for the upstream).
pub fn without_cookie(value: &[u8], name: &str) -> Vec<u8> {
    portcullis_cookie::without(value, name)
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
