//! The browser side: `/authorize`, the login and consent forms, and
//! RP-initiated logout (`/end_session`).
//!
//! A pending authorization request is stored server-side under a random id;
//! the forms carry that id and a CSRF token that must also match a cookie
//! set with the form (double submit), so a form cannot be posted from
//! another site. Errors about the client or its redirect URI are shown as
//! a page and never redirected (no open redirect); other errors go back to
//! the client's registered redirect URI, with `state` and `iss`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Form;
use portcullis_config::sso::{Client, ClientType, GrantType};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use crate::keys::now_secs;
use crate::mfa::Methods;
use crate::oauth::random_id;
use crate::store::digest;
use crate::users::LoginRefused;
use crate::{Shared, Sso};

/// How long a user may take to fill the login form.
const PENDING_TTL: Duration = Duration::from_secs(600);

#[derive(Debug, Default, Deserialize)]
pub struct AuthorizeQuery {
    client_id: Option<String>,
    redirect_uri: Option<String>,
    response_type: Option<String>,
    scope: Option<String>,
    state: Option<String>,
    nonce: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    prompt: Option<String>,
    max_age: Option<u64>,
    acr_values: Option<String>,
}

/// An authorization request waiting for login or consent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pending {
    pub client_id: String,
    pub redirect_uri: String,
    pub scope: String,
    pub state: Option<String>,
    pub nonce: Option<String>,
    pub code_challenge: Option<String>,
    pub csrf: String,
    /// The levels the client asked for (`acr_values`).
    #[serde(default)]
    pub acr_values: Option<String>,
    /// A sign-in to the account page, not for a client.
    #[serde(default)]
    pub account: bool,
    /// With `account`: to the admin console afterwards.
    #[serde(default)]
    pub console: bool,
}

/// What an authorization code stands for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CodeGrant {
    pub client_id: String,
    pub redirect_uri: String,
    pub sub: String,
    pub scope: String,
    pub nonce: Option<String>,
    pub auth_time: u64,
    pub code_challenge: Option<String>,
    /// The SSO session the code was issued in.
    #[serde(default)]
    pub sid: Option<String>,
    /// How the user signed in (`amr`).
    #[serde(default)]
    pub methods: Methods,
}

/// A login session. `sid` is its public name (in ID and logout tokens);
/// the cookie's secret id is never shown to clients.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LoginSession {
    pub(crate) sub: String,
    pub(crate) auth_time: u64,
    #[serde(default)]
    pub(crate) sid: String,
    /// How the user signed in; empty in sessions from before second
    /// factors (a password).
    #[serde(default)]
    pub(crate) methods: Methods,
}

/// Where a completed sign-in goes.
pub(crate) enum AfterSignIn<'a> {
    /// On with an authorization request (consent or code).
    Authorize {
        request_id: &'a str,
        pending: &'a Pending,
        client: &'a Client,
    },
    /// To a page of the SSO's own (`/account`, `/console`).
    Own(&'static str),
    /// A page saying so (after a registration without a client).
    Page,
}

impl Sso {
    pub(crate) fn render(&self, template: &str, context: Value) -> Response {
        let mut context = context;
        context["brand"] = json!({
            "title": self.config.branding.title,
            "logo_url": self.config.branding.logo_url,
        });
        match self
            .templates
            .get_template(template)
            .and_then(|t| t.render(&context))
        {
            Ok(html) => {
                let mut response = Html(html).into_response();
                let headers = response.headers_mut();
                headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                // No framing (clickjacking of the forms), no external
                // anything. No `form-action`: browsers apply it to the
                // redirect that follows a post, and the sign-in forms end
                // in a redirect to the client (Chromium blocked it).
                headers.insert(
                    header::CONTENT_SECURITY_POLICY,
                    HeaderValue::from_static(
                        "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; img-src https: data:; frame-ancestors 'none'",
                    ),
                );
                headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
                headers.insert(
                    header::REFERRER_POLICY,
                    HeaderValue::from_static("no-referrer"),
                );
                response
            }
            Err(e) => {
                log::error!("template {template}: {e}");
                StatusCode::INTERNAL_SERVER_ERROR.into_response()
            }
        }
    }

    pub fn message_page(&self, status: StatusCode, heading: &str, message: &str) -> Response {
        let mut response = self.render(
            "message.html",
            json!({ "heading": heading, "message": message, "is_error": status.is_client_error() || status.is_server_error() }),
        );
        *response.status_mut() = status;
        response
    }

    pub(crate) fn cookie(&self, name: &str, value: &str, max_age: u64) -> HeaderValue {
        let secure = if self.config.session.secure_cookies {
            "; Secure"
        } else {
            ""
        };
        let path = if self.base_path.is_empty() {
            "/"
        } else {
            &self.base_path
        };
        HeaderValue::from_str(&format!(
            "{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}"
        ))
        .unwrap_or_else(|_| HeaderValue::from_static("invalid=1; Max-Age=0"))
    }

    fn csrf_cookie_name(&self) -> String {
        format!("{}_csrf", self.config.session.cookie)
    }

    pub(crate) async fn session(&self, headers: &HeaderMap) -> Option<LoginSession> {
        let id = self.session_cookie(headers)?;
        let value = self
            .store
            .get(&format!("session:{}", digest(&id)))
            .await
            .ok()??;
        serde_json::from_value(value).ok()
    }

    /// The session cookie's value (the session's secret id).
    pub(crate) fn session_cookie(&self, headers: &HeaderMap) -> Option<String> {
        cookie_value(headers, &self.config.session.cookie)
    }

    /// Back to the client with an error (only for a verified redirect URI).
    fn redirect_error(&self, pending: &Pending, error: &str, description: &str) -> Response {
        let mut params = vec![
            ("error", error.to_owned()),
            ("error_description", description.to_owned()),
        ];
        if let Some(state) = &pending.state {
            params.push(("state", state.clone()));
        }
        params.push(("iss", self.config.issuer.clone()));
        Redirect::to(&with_query(&pending.redirect_uri, &params)).into_response()
    }

    /// Issues a code for a logged-in user and sends the browser back.
    async fn complete(&self, pending: &Pending, session: &LoginSession) -> Response {
        let code = random_id(32);
        let grant = CodeGrant {
            client_id: pending.client_id.clone(),
            redirect_uri: pending.redirect_uri.clone(),
            sub: session.sub.clone(),
            scope: pending.scope.clone(),
            nonce: pending.nonce.clone(),
            auth_time: session.auth_time,
            code_challenge: pending.code_challenge.clone(),
            sid: (!session.sid.is_empty()).then(|| session.sid.clone()),
            methods: session.methods.clone(),
        };
        let stored = self
            .store
            .put(
                &format!("code:{}", digest(&code)),
                &serde_json::to_value(&grant).unwrap_or_default(),
                self.config.code_ttl.0,
            )
            .await;
        if stored.is_err() {
            return self.redirect_error(pending, "temporarily_unavailable", "try again");
        }
        if !session.sid.is_empty() {
            self.remember_client(&session.sid, &pending.client_id).await;
        }
        self.audit(
            json!({ "event": "code_issued", "client_id": pending.client_id, "sub": session.sub }),
        );
        let mut params = vec![("code", code)];
        if let Some(state) = &pending.state {
            params.push(("state", state.clone()));
        }
        params.push(("iss", self.config.issuer.clone()));
        Redirect::to(&with_query(&pending.redirect_uri, &params)).into_response()
    }

    async fn consented(&self, sub: &str, client: &Client, scope: &str) -> bool {
        if client.first_party {
            return true;
        }
        let granted = match self.directory.consent(sub, &client.client_id).await {
            Ok(Some(granted)) => granted,
            Ok(None) => return false,
            Err(e) => {
                log::error!("{e}");
                return false;
            }
        };
        let granted: Vec<&str> = granted.split(' ').collect();
        scope
            .split(' ')
            .all(|s| s.is_empty() || granted.contains(&s))
    }

    pub(crate) fn login_form(
        &self,
        request_id: &str,
        pending: &Pending,
        client: Option<&Client>,
        username: &str,
        error: Option<&str>,
        status: StatusCode,
    ) -> Response {
        let mut response = self.render(
            "login.html",
            json!({
                "action": format!("{}/login", self.base_path),
                "request": request_id,
                "csrf": pending.csrf,
                "client_name": client.map(display_name),
                "username": username,
                "passkeys": self.passkeys.is_some(),
                "error": error,
                "register": (self.config.users.registration != portcullis_config::sso::Registration::Closed)
                    .then(|| format!("{}/register?request={request_id}", self.base_path)),
            }),
        );
        *response.status_mut() = status;
        self.with_csrf_cookie(response, &pending.csrf)
    }

    fn consent_form(&self, request_id: &str, pending: &Pending, client: &Client) -> Response {
        let response = self.render(
            "consent.html",
            json!({
                "action": format!("{}/consent", self.base_path),
                "request": request_id,
                "csrf": pending.csrf,
                "client_name": display_name(client),
                "scopes": pending.scope.split(' ').filter(|s| !s.is_empty()).collect::<Vec<_>>(),
            }),
        );
        self.with_csrf_cookie(response, &pending.csrf)
    }

    /// A form page with its CSRF token also set as a cookie (double submit).
    pub(crate) fn with_csrf_cookie(&self, mut response: Response, csrf: &str) -> Response {
        response.headers_mut().append(
            header::SET_COOKIE,
            self.cookie(&self.csrf_cookie_name(), csrf, PENDING_TTL.as_secs()),
        );
        response
    }

    /// Whether a form's CSRF token equals the cookie set with the form.
    pub(crate) fn csrf_cookie_matches(&self, headers: &HeaderMap, form_csrf: &str) -> bool {
        let cookie = cookie_value(headers, &self.csrf_cookie_name()).unwrap_or_default();
        !form_csrf.is_empty() && bool::from(cookie.as_bytes().ct_eq(form_csrf.as_bytes()))
    }

    pub(crate) async fn load_pending(&self, id: &str) -> Option<Pending> {
        let value = self
            .store
            .get(&format!("pending:{}", digest(id)))
            .await
            .ok()??;
        serde_json::from_value(value).ok()
    }

    /// After a login or a registration: a new session (new id: no
    /// fixation), then the authorization continues (consent or code), or
    /// a plain page when there is none.
    pub(crate) async fn signed_in(
        &self,
        sub: &str,
        methods: Methods,
        next: AfterSignIn<'_>,
    ) -> Response {
        let session_id = random_id(32);
        let session = LoginSession {
            sub: sub.to_owned(),
            auth_time: now_secs(),
            sid: random_id(16),
            methods,
        };
        let ttl = self.config.session.ttl.0;
        let stored = self
            .store
            .put(
                &format!("session:{}", digest(&session_id)),
                &serde_json::to_value(&session).unwrap_or_default(),
                ttl,
            )
            .await;
        if stored.is_err() {
            return self.sign_in_unavailable();
        }
        self.remember_user_session(&session.sub, &session.sid, &digest(&session_id))
            .await;
        let mut response = match next {
            AfterSignIn::Authorize {
                request_id,
                pending,
                client,
            } => {
                if self.consented(&session.sub, client, &pending.scope).await {
                    let _ = self
                        .store
                        .delete(&format!("pending:{}", digest(request_id)))
                        .await;
                    self.complete(pending, &session).await
                } else {
                    self.consent_form(request_id, pending, client)
                }
            }
            AfterSignIn::Own(path) => {
                Redirect::to(&format!("{}{path}", self.base_path)).into_response()
            }
            AfterSignIn::Page => {
                self.message_page(StatusCode::OK, "Signed in", "Your account is ready.")
            }
        };
        response.headers_mut().append(
            header::SET_COOKIE,
            self.cookie(&self.config.session.cookie, &session_id, ttl.as_secs()),
        );
        response
    }

    /// The pending request a form names, if it exists and the form passes
    /// the CSRF check; else the page to answer.
    pub(crate) async fn posted_pending(
        &self,
        headers: &HeaderMap,
        request: &str,
        csrf: &str,
    ) -> Result<Pending, Response> {
        let Some(pending) = self.load_pending(request).await else {
            return Err(self.message_page(
                StatusCode::BAD_REQUEST,
                "Sign-in expired",
                "This sign-in took too long or was already used. Go back to the application and start again.",
            ));
        };
        if !self.csrf_ok(headers, &pending, csrf) {
            return Err(self.message_page(
                StatusCode::FORBIDDEN,
                "Request refused",
                "The form was not sent from this sign-in page. Go back to the application and start again.",
            ));
        }
        Ok(pending)
    }

    /// Keeps an authorization request (or an account sign-in) for its
    /// forms; the id the forms carry, or `None` when the store failed.
    pub(crate) async fn store_pending(&self, pending: &Pending) -> Option<String> {
        let request_id = random_id(24);
        self.store
            .put(
                &format!("pending:{}", digest(&request_id)),
                &serde_json::to_value(pending).unwrap_or_default(),
                PENDING_TTL,
            )
            .await
            .ok()?;
        Some(request_id)
    }

    /// The client a pending request is for: none for an account sign-in;
    /// a page when it is gone (deleted since).
    pub(crate) async fn pending_client(
        &self,
        pending: &Pending,
    ) -> Result<Option<Arc<Client>>, Response> {
        if pending.account {
            return Ok(None);
        }
        match self.client(&pending.client_id).await {
            Some(client) => Ok(Some(client)),
            None => Err(self.message_page(StatusCode::BAD_REQUEST, "Unknown application", "")),
        }
    }

    /// The page when the store or the directory cannot be reached.
    pub(crate) fn sign_in_unavailable(&self) -> Response {
        self.message_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Try again later",
            "Sign-in is unavailable right now.",
        )
    }

    /// The form's CSRF token must match the pending request's and the cookie.
    fn csrf_ok(&self, headers: &HeaderMap, pending: &Pending, form_csrf: &str) -> bool {
        let pending_matches: bool = pending.csrf.as_bytes().ct_eq(form_csrf.as_bytes()).into();
        pending_matches & self.csrf_cookie_matches(headers, form_csrf)
    }
}

/// Authorization endpoint (code flow with PKCE S256). Shows the login and
/// consent pages; redirects to the client's registered redirect URI.
#[utoipa::path(get, path = "/authorize", tag = "oidc",
    params(
        ("response_type" = String, Query, description = "`code`"),
        ("client_id" = String, Query),
        ("redirect_uri" = String, Query, description = "Exactly as registered"),
        ("scope" = Option<String>, Query),
        ("state" = Option<String>, Query),
        ("nonce" = Option<String>, Query),
        ("code_challenge" = Option<String>, Query, description = "Required for public clients"),
        ("code_challenge_method" = Option<String>, Query, description = "`S256`"),
        ("prompt" = Option<String>, Query, description = "`login`, `none`"),
        ("max_age" = Option<u64>, Query),
    ),
    responses(
        (status = 200, description = "The login or consent page", content_type = "text/html"),
        (status = 303, description = "Back to the client with `code`, `state` and `iss`, or an error"),
        (status = 400, description = "Unknown client or unregistered redirect URI: an error page, never a redirect", content_type = "text/html")))]
pub async fn authorize(
    State(sso): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<AuthorizeQuery>,
) -> Response {
    // The client and its redirect URI first: until both are known good,
    // nothing is redirected anywhere.
    let client = match query.client_id.as_deref() {
        Some(id) => sso.client(id).await,
        None => None,
    };
    let Some(client) = client else {
        return sso.message_page(
            StatusCode::BAD_REQUEST,
            "Unknown application",
            "The application that sent you here is not registered.",
        );
    };
    let Some(redirect_uri) = query
        .redirect_uri
        .as_deref()
        .filter(|uri| client.redirect_uris.iter().any(|r| r == uri))
    else {
        return sso.message_page(
            StatusCode::BAD_REQUEST,
            "Invalid redirect",
            "The application asked to send you to an address it has not registered.",
        );
    };
    let mut pending = Pending {
        client_id: client.client_id.clone(),
        redirect_uri: redirect_uri.to_owned(),
        scope: String::new(),
        state: query.state.clone(),
        nonce: query.nonce.clone(),
        code_challenge: None,
        csrf: random_id(24),
        acr_values: query.acr_values.clone(),
        account: false,
        console: false,
    };
    if !client.grants().contains(&GrantType::AuthorizationCode) {
        return sso.redirect_error(
            &pending,
            "unauthorized_client",
            "this client may not use the authorization code flow",
        );
    }
    if query.response_type.as_deref() != Some("code") {
        return sso.redirect_error(
            &pending,
            "unsupported_response_type",
            "only `code` is supported",
        );
    }
    let allowed = allowed_scopes(&client);
    let requested: Vec<&str> = query
        .scope
        .as_deref()
        .unwrap_or("openid")
        .split(' ')
        .filter(|s| !s.is_empty())
        .collect();
    if let Some(bad) = requested.iter().find(|s| !allowed.iter().any(|a| a == *s)) {
        return sso.redirect_error(
            &pending,
            "invalid_scope",
            &format!("scope `{bad}` is not allowed"),
        );
    }
    pending.scope = requested.join(" ");
    match (
        query.code_challenge.as_deref(),
        query.code_challenge_method.as_deref(),
    ) {
        (Some(challenge), Some("S256")) if challenge.len() == 43 => {
            pending.code_challenge = Some(challenge.to_owned());
        }
        (Some(_), _) => {
            return sso.redirect_error(
                &pending,
                "invalid_request",
                "PKCE: S256 with a 43-character challenge is required",
            )
        }
        (None, _) if client.client_type == ClientType::Public || client.require_pkce => {
            return sso.redirect_error(
                &pending,
                "invalid_request",
                "PKCE (S256) is required for this client",
            )
        }
        (None, _) => {}
    }

    let prompt = query.prompt.as_deref().unwrap_or("");
    let session = sso.session(&headers).await.filter(|s| {
        !prompt.split(' ').any(|p| p == "login")
            && query
                .max_age
                .is_none_or(|max| now_secs().saturating_sub(s.auth_time) <= max)
    });
    // A session without the second factor this sign-in needs is not
    // enough: the user signs in again, with it (step-up).
    let session = match session {
        Some(s) if !s.methods.is_multi_factor() => {
            let needs = match sso.users.get(&s.sub).await {
                Some(user) => crate::mfa::required(
                    &sso.config,
                    Some(&client),
                    &user,
                    pending.acr_values.as_deref(),
                ),
                None => true,
            };
            (!needs).then_some(s)
        }
        other => other,
    };
    if session.is_none() && prompt.split(' ').any(|p| p == "none") {
        return sso.redirect_error(&pending, "login_required", "no session");
    }
    if let Some(session) = &session {
        if sso.consented(&session.sub, &client, &pending.scope).await {
            return sso.complete(&pending, session).await;
        }
        if prompt.split(' ').any(|p| p == "none") {
            return sso.redirect_error(&pending, "consent_required", "consent needed");
        }
    }
    let Some(request_id) = sso.store_pending(&pending).await else {
        return sso.redirect_error(&pending, "temporarily_unavailable", "try again");
    };
    match session {
        Some(_) => sso.consent_form(&request_id, &pending, &client),
        None => sso.login_form(
            &request_id,
            &pending,
            Some(&client),
            "",
            None,
            StatusCode::OK,
        ),
    }
}

/// Every scope a client may ask for.
pub fn allowed_scopes(client: &Client) -> Vec<String> {
    if !client.scopes.is_empty() {
        let mut scopes = client.scopes.clone();
        if !scopes.iter().any(|s| s == "openid") {
            scopes.push("openid".into());
        }
        return scopes;
    }
    let mut scopes: Vec<String> = ["openid", "profile", "email", "roles"]
        .map(String::from)
        .to_vec();
    if client.grants().contains(&GrantType::RefreshToken) {
        scopes.push("offline_access".into());
    }
    scopes
}

#[derive(Deserialize)]
pub struct LoginForm {
    request: String,
    csrf: String,
    username: String,
    #[serde(default)]
    password: String,
    /// `passkey`: sign in with a passkey instead of the password.
    #[serde(default)]
    method: String,
}

pub async fn login(
    State(sso): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let pending = match sso
        .posted_pending(&headers, &form.request, &form.csrf)
        .await
    {
        Ok(pending) => pending,
        Err(page) => return page,
    };
    let client = match sso.pending_client(&pending).await {
        Ok(client) => client,
        Err(page) => return page,
    };
    let client = client.as_deref();
    let ip = sso.client_ip(peer.ip(), &headers);
    let username = form.username.trim();
    if form.method == "passkey" && sso.passkeys.is_some() {
        // Whether the account exists or has passkeys is not told: the
        // same page comes either way, and only a real passkey passes.
        return sso
            .factor_form(&form.request, &pending, client, username, false, None)
            .await;
    }
    let outcome = sso
        .users
        .login(
            sso.store.as_ref(),
            &sso.config.login,
            username,
            &form.password,
            Some(ip),
        )
        .await;
    let user = match outcome {
        Ok(Ok(user)) => user,
        Ok(Err(refused)) => {
            sso.audit(
                json!({ "event": "login_failed", "client_id": client.map(|c| c.client_id.clone()),
                "username_digest": digest(username), "ip": ip.to_string(),
                "locked": matches!(refused, LoginRefused::Locked(_)) }),
            );
            return sso.login_refused(&form.request, &pending, client, username, refused);
        }
        Err(e) => {
            log::error!("login: {e}");
            return sso.sign_in_unavailable();
        }
    };
    sso.audit(
        json!({ "event": "login", "sub": user.username, "client_id": client.map(|c| c.client_id.clone()),
        "ip": ip.to_string(), "amr": ["pwd"] }),
    );
    sso.after_password(&form.request, &pending, client, &user)
        .await
}

impl Sso {
    /// The login form again, saying why: the same words for a wrong name
    /// and a wrong password; a lockout says how long (and `Retry-After`).
    pub(crate) fn login_refused(
        &self,
        request_id: &str,
        pending: &Pending,
        client: Option<&Client>,
        username: &str,
        refused: LoginRefused,
    ) -> Response {
        let (status, message) = match refused {
            LoginRefused::Invalid => (
                StatusCode::UNAUTHORIZED,
                "Wrong user name or password.".to_owned(),
            ),
            LoginRefused::Locked(seconds) => (
                StatusCode::TOO_MANY_REQUESTS,
                format!("Too many failed attempts. Wait {seconds} seconds and try again."),
            ),
        };
        let mut response = self.login_form(
            request_id,
            pending,
            client,
            username,
            Some(&message),
            status,
        );
        if let LoginRefused::Locked(seconds) = refused {
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }

    /// Where a completed sign-in for `pending` goes.
    pub(crate) fn after_sign_in<'a>(
        request_id: &'a str,
        pending: &'a Pending,
        client: Option<&'a Client>,
    ) -> AfterSignIn<'a> {
        match client {
            Some(client) => AfterSignIn::Authorize {
                request_id,
                pending,
                client,
            },
            None if pending.console => AfterSignIn::Own("/console"),
            None => AfterSignIn::Own("/account"),
        }
    }
}

#[derive(Deserialize)]
pub struct ConsentForm {
    request: String,
    csrf: String,
    decision: String,
}

pub async fn consent(
    State(sso): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<ConsentForm>,
) -> Response {
    let pending = match sso
        .posted_pending(&headers, &form.request, &form.csrf)
        .await
    {
        Ok(pending) => pending,
        Err(page) => return page,
    };
    let Some(session) = sso.session(&headers).await else {
        return sso.message_page(
            StatusCode::UNAUTHORIZED,
            "Signed out",
            "Go back to the application and sign in again.",
        );
    };
    let _ = sso
        .store
        .delete(&format!("pending:{}", digest(&form.request)))
        .await;
    if form.decision != "allow" {
        sso.audit(
            json!({ "event": "consent_denied", "sub": session.sub, "client_id": pending.client_id }),
        );
        return sso.redirect_error(&pending, "access_denied", "the user denied the request");
    }
    if let Err(e) = sso
        .directory
        .grant_consent(&session.sub, &pending.client_id, &pending.scope)
        .await
    {
        // The code is still issued; the user is asked again next time.
        log::error!("{e}");
    }
    sso.audit(
        json!({ "event": "consent_granted", "sub": session.sub, "client_id": pending.client_id, "scope": pending.scope }),
    );
    sso.complete(&pending, &session).await
}

#[derive(Debug, Default, Deserialize)]
pub struct EndSessionQuery {
    id_token_hint: Option<String>,
    post_logout_redirect_uri: Option<String>,
    client_id: Option<String>,
    state: Option<String>,
    /// Set by the confirmation form.
    csrf: Option<String>,
}

/// RP-initiated logout 1.0: ends the session; redirects only to a URI the
/// client registered.
#[utoipa::path(get, path = "/end_session", tag = "oidc",
    params(
        ("id_token_hint" = Option<String>, Query),
        ("post_logout_redirect_uri" = Option<String>, Query, description = "Must be registered for the client"),
        ("client_id" = Option<String>, Query),
        ("state" = Option<String>, Query),
    ),
    responses(
        (status = 303, description = "To the registered post-logout URI"),
        (status = 200, description = "Signed-out page", content_type = "text/html"),
        (status = 400, description = "Unregistered post-logout URI: an error page, never a redirect", content_type = "text/html")))]
pub async fn end_session(
    State(sso): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<EndSessionQuery>,
) -> Response {
    end_session_with(sso, headers, query).await
}

pub async fn end_session_post(
    State(sso): State<Shared>,
    headers: HeaderMap,
    Form(query): Form<EndSessionQuery>,
) -> Response {
    end_session_with(sso, headers, query).await
}

async fn end_session_with(sso: Arc<Sso>, headers: HeaderMap, query: EndSessionQuery) -> Response {
    let hint = query.id_token_hint.as_deref().and_then(|t| {
        crate::oauth::verify_own(&sso.keys, &sso.config.issuer, t, true).map(|(_, claims)| claims)
    });
    if query.id_token_hint.is_some() && hint.is_none() {
        return sso.message_page(
            StatusCode::BAD_REQUEST,
            "Sign-out refused",
            "The sign-out request is not valid.",
        );
    }
    let hinted_client = hint
        .as_ref()
        .and_then(|c| c["aud"].as_str().map(str::to_owned));
    let client_id = query.client_id.clone().or(hinted_client);
    let client = match client_id.as_deref() {
        Some(id) => sso.client(id).await,
        None => None,
    };
    let redirect = match (&query.post_logout_redirect_uri, &client) {
        (Some(uri), Some(client)) if client.post_logout_redirect_uris.iter().any(|r| r == uri) => {
            Some(uri.clone())
        }
        (Some(_), _) => {
            return sso.message_page(
                StatusCode::BAD_REQUEST,
                "Sign-out refused",
                "The application asked to send you to an address it has not registered.",
            )
        }
        (None, _) => None,
    };
    let session = sso.session(&headers).await;
    // A hint for another user than the signed-in one proves nothing about
    // this session (RP-Initiated Logout §2): ask, as without a hint.
    let hint = hint.filter(|claims| {
        session
            .as_ref()
            .is_none_or(|s| claims["sub"].as_str() == Some(s.sub.as_str()))
    });
    // Without a valid ID token hint anyone's page could sign the user out
    // (logout CSRF): ask first, with a form only this origin can submit.
    let confirmed = query
        .csrf
        .as_deref()
        .is_some_and(|csrf| sso.csrf_cookie_matches(&headers, csrf));
    if hint.is_none() && session.is_some() && !confirmed {
        let csrf = random_id(24);
        let response = sso.render(
            "logout.html",
            json!({
                "action": format!("{}/end_session", sso.base_path),
                "csrf": csrf,
                "client_id": client.as_ref().map(|c| c.client_id.clone()),
                "client_name": client.as_deref().map(display_name),
                "post_logout_redirect_uri": redirect,
                "state": query.state,
            }),
        );
        return sso.with_csrf_cookie(response, &csrf);
    }
    if let Some(id) = cookie_value(&headers, &sso.config.session.cookie) {
        let _ = sso.store.delete(&format!("session:{}", digest(&id))).await;
    }
    if let Some(session) = session.as_ref().filter(|s| !s.sid.is_empty()) {
        sso.end_session_everywhere(&session.sid, &session.sub).await;
    }
    sso.audit(
        json!({ "event": "logout", "sub": session.as_ref().map(|s| s.sub.clone()),
        "client_id": client.as_ref().map(|c| c.client_id.clone()) }),
    );
    let mut response = match redirect {
        Some(uri) => {
            let mut params = Vec::new();
            if let Some(state) = &query.state {
                params.push(("state", state.clone()));
            }
            Redirect::to(&with_query(&uri, &params)).into_response()
        }
        None => sso.message_page(StatusCode::OK, "Signed out", "You are signed out."),
    };
    response.headers_mut().append(
        header::SET_COOKIE,
        sso.cookie(&sso.config.session.cookie, "", 0),
    );
    response
}

/// How a client is named on the pages.
fn display_name(client: &Client) -> String {
    client
        .name
        .clone()
        .unwrap_or_else(|| client.client_id.clone())
}

/// A cookie's value from the request.
fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    portcullis_web::cookie::find(headers, name).map(str::to_owned)
}

/// `uri` with `params` appended to its query.
fn with_query(uri: &str, params: &[(&str, String)]) -> String {
    if params.is_empty() {
        return uri.to_owned();
    }
    let encoded: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect();
    let separator = if uri.contains('?') { '&' } else { '?' };
    format!("{uri}{separator}{}", encoded.join("&"))
}

fn encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_building_and_cookies() {
        assert_eq!(
            with_query("https://a/cb?x=1", &[("state", "a b&c".into())]),
            "https://a/cb?x=1&state=a+b%26c"
        );
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("a=1; sid=xyz; b="));
        assert_eq!(cookie_value(&headers, "sid").as_deref(), Some("xyz"));
        assert_eq!(cookie_value(&headers, "b"), None);
    }
}
