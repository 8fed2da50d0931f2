//! The Portcullis OpenID Provider (`portcullis sso`).
//!
//! - `keys`: signing keys persisted in a directory, rotated on a
//!   publish-ahead schedule;
//! - `clients`: client authentication, argon2id-hashed secrets;
//! - `users`: users and throttled password checks;
//! - `flow`: `/authorize`, login and consent forms, logout;
//! - `register`: self-service registration (closed, open, invite-only);
//! - `factor`: the second sign-in step (TOTP, recovery code, passkey);
//! - `mfa`: TOTP, recovery codes, `amr`/`acr`, who needs a second factor;
//! - `passkeys`: WebAuthn through webauthn-rs;
//! - `account`: the account page (password, authenticators, sessions);
//! - `console`: the admin console (the admin API's operations as pages);
//! - `audit`: audit events to the log and the directory;
//! - `grants`: the token endpoint (code + PKCE, refresh with rotation and
//!   reuse detection, client credentials);
//! - `introspect`: userinfo, introspection, revocation;
//! - `admin`: the admin API (users, their sessions);
//! - `admin_cli`: `portcullis sso admin`, on the directory directly;
//! - `backchannel`: logout tokens to clients when a session ends;
//! - `directory`: users, roles and consents in SQLite or PostgreSQL;
//! - `store`: codes, sessions, refresh tokens in memory or Redis.
//!
//! Every endpoint sits under the issuer's path.

mod account;
mod admin;
mod admin_cli;
mod api_doc;
mod audit;
mod backchannel;
mod clients;
mod console;
mod directory;
mod factor;
mod flow;
mod grants;
mod introspect;
mod keys;
mod mfa;
mod oauth;
mod passkeys;
mod register;
mod store;
mod users;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use portcullis_config::sso::SsoConfig;
use serde_json::json;

pub use admin_cli::{admin, AdminCliError, AdminCommand};
use clients::Clients;
pub use clients::{hash_secret, verify_secret};
pub use keys::{KeyStore, Schedule};
pub use oauth::{sign_access_token, AccessClaims};

#[derive(Debug, thiserror::Error)]
pub enum SsoError {
    #[error("signing keys: {0}")]
    Keys(#[from] keys::KeyError),
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("users: {0}")]
    Users(#[from] portcullis_config::LoadError),
    #[error("store: {0}")]
    Store(String),
    #[error("templates: {0}")]
    Templates(#[from] minijinja::Error),
    #[error("{0}")]
    Directory(#[from] directory::DirectoryError),
    #[error("{0}")]
    Bootstrap(String),
    /// A name both in a file (seed entries) and in the directory, with
    /// the file's positions.
    #[error("{0}")]
    Conflict(portcullis_config::LoadError),
}

struct Sso {
    config: SsoConfig,
    keys: KeyStore,
    clients: Clients,
    users: users::Users,
    store: Arc<dyn store::Store>,
    directory: Arc<dyn directory::Directory>,
    audit: audit::AuditLog,
    templates: minijinja::Environment<'static>,
    /// The issuer's path: every endpoint is under it.
    base_path: String,
    /// For back-channel logout: no redirects, no proxy, bounded.
    http: reqwest::Client,
    /// The WebAuthn relying party; none when the issuer has no domain name.
    passkeys: Option<passkeys::Passkeys>,
}

type Shared = Arc<Sso>;

impl Sso {
    /// Records an audit event (the log line and the directory's row).
    pub(crate) fn audit(&self, event: serde_json::Value) {
        self.audit.record(event);
    }
}

/// Runs the OpenID Provider until SIGTERM or SIGINT.
pub fn run(config: SsoConfig, source: &Path) -> Result<(), SsoError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("portcullis-sso")
        .build()?;
    runtime.block_on(serve(config, source))
}

async fn serve(config: SsoConfig, source: &Path) -> Result<(), SsoError> {
    let keys_dir: PathBuf = portcullis_config::resolve_path(source, &config.keys.dir);
    let schedule = Schedule {
        algorithms: signing_algorithms(&config),
        rotate_every: config.keys.rotate_every.0.as_secs(),
        publish_ahead: config.keys.publish_ahead.0.as_secs(),
        retain_for: longest_token_lifetime(&config),
    };
    let keys = KeyStore::open(&keys_dir, schedule)?;
    let address = config.listen;
    let users = match &config.users.file {
        Some(file) => {
            portcullis_config::load_users(&portcullis_config::resolve_path(source, file))?.users
        }
        None => Vec::new(),
    };
    let directory = open_directory(&config, source).await?;
    let users = users::Users::new(users, directory.clone());
    let both = users.seeds_in_directory().await?;
    if let (false, Some(file)) = (both.is_empty(), &config.users.file) {
        let file = portcullis_config::resolve_path(source, file);
        return Err(SsoError::Conflict(
            portcullis_config::users_also_in_directory(&file, &both),
        ));
    }
    let mut clients_in_both = Vec::new();
    for client in &config.clients {
        if directory.client(&client.client_id).await?.is_some() {
            clients_in_both.push(client.client_id.clone());
        }
    }
    if !clients_in_both.is_empty() {
        return Err(SsoError::Conflict(
            portcullis_config::clients_also_in_directory(source, &clients_in_both),
        ));
    }
    let audit = audit::AuditLog::start(directory.clone(), config.directory.audit_retention.0);
    bootstrap_admin(&users, &config, &audit).await?;
    let state = Arc::new(Sso {
        clients: Clients::new(&config.clients),
        users,
        directory,
        audit,
        store: match (&config.store, &config.redis) {
            (portcullis_config::sso::StoreKind::Redis, Some(redis)) => Arc::new(
                store::RedisStore::new(redis.url.expose(), &redis.key_prefix)
                    .map_err(|e| SsoError::Store(e.to_string()))?,
            ),
            _ => Arc::new(store::MemoryStore::default()) as Arc<dyn store::Store>,
        },
        templates: templates()?,
        base_path: issuer_path(&config.issuer),
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| SsoError::Store(format!("HTTP client: {e}")))?,
        passkeys: passkeys::Passkeys::new(&config),
        keys,
        config,
    });
    spawn_rotation(&state);
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| SsoError::Bind { address, source })?;
    log::info!(
        "portcullis sso: issuer {} on {address}",
        state.config.issuer
    );
    let limits = state.config.limits.clone();
    serve_connections(listener, router(state), &limits).await;
    Ok(())
}

/// The directory the config names: PostgreSQL at `directory.url`, or
/// SQLite in `directory.file` (relative to the config file).
pub fn directory_url(config: &SsoConfig, source: &Path) -> String {
    match &config.directory.url {
        Some(url) => url.expose().to_owned(),
        None => {
            let file = portcullis_config::resolve_path(source, &config.directory.file);
            format!("sqlite://{}?mode=rwc", file.display())
        }
    }
}

async fn open_directory(
    config: &SsoConfig,
    source: &Path,
) -> Result<Arc<dyn directory::Directory>, SsoError> {
    let directory = directory::SqlDirectory::open(
        &directory_url(config, source),
        config.directory.max_connections,
        config.directory.timeout.0,
    )
    .await?;
    Ok(Arc::new(directory))
}

/// The first admin from the environment (a container's first start,
/// without editing YAML): `PORTCULLIS_SSO_BOOTSTRAP_ADMIN` names the user,
/// `PORTCULLIS_SSO_BOOTSTRAP_PASSWORD_HASH` (argon2id, preferred) or
/// `PORTCULLIS_SSO_BOOTSTRAP_PASSWORD` gives the password. Created with the
/// admin role when absent; an existing user is left as it is, so every
/// restart and every replica may carry the variables.
async fn bootstrap_admin(
    users: &users::Users,
    config: &SsoConfig,
    audit: &audit::AuditLog,
) -> Result<(), SsoError> {
    let Ok(username) = std::env::var("PORTCULLIS_SSO_BOOTSTRAP_ADMIN") else {
        return Ok(());
    };
    if users.get(&username).await.is_some() {
        return Ok(());
    }
    let password_hash = match (
        std::env::var("PORTCULLIS_SSO_BOOTSTRAP_PASSWORD_HASH"),
        std::env::var("PORTCULLIS_SSO_BOOTSTRAP_PASSWORD"),
    ) {
        (Ok(hash), _) if hash.starts_with("$argon2id$") => hash,
        (Err(_), Ok(password)) if password.chars().count() >= config.users.min_password_length => {
            hash_secret(&password).map_err(SsoError::Store)?
        }
        _ => {
            return Err(SsoError::Bootstrap(format!(
                "PORTCULLIS_SSO_BOOTSTRAP_ADMIN needs PORTCULLIS_SSO_BOOTSTRAP_PASSWORD_HASH (argon2id) or PORTCULLIS_SSO_BOOTSTRAP_PASSWORD (at least {} characters)",
                config.users.min_password_length
            )))
        }
    };
    let admin = portcullis_config::sso::User {
        username: username.clone(),
        password_hash,
        email: None,
        name: None,
        roles: vec![config.admin.role.clone()],
        groups: Vec::new(),
        disabled: false,
    };
    match users.register(admin).await {
        Ok(Ok(())) => {
            audit.record(json!({ "event": "admin_bootstrapped", "sub": username }));
            Ok(())
        }
        // Another replica created it a moment ago.
        Ok(Err(users::RegisterRefused::Taken)) => Ok(()),
        Ok(Err(users::RegisterRefused::Invalid(why))) => Err(SsoError::Bootstrap(format!(
            "PORTCULLIS_SSO_BOOTSTRAP_ADMIN: {why}"
        ))),
        Err(e) => Err(SsoError::Store(e.to_string())),
    }
}

/// Applies the directory's migrations and returns (`portcullis sso migrate`).
pub fn migrate(config: &SsoConfig, source: &Path) -> Result<(), SsoError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(directory::SqlDirectory::migrate(
        &directory_url(config, source),
        config.directory.timeout.0,
    ))?;
    Ok(())
}

/// On SIGTERM, how long open requests may take to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// hyper directly rather than `axum::serve`, for what axum does not offer:
/// a deadline on the request head, a connection limit, and a drain on
/// SIGTERM bounded in time.
async fn serve_connections(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: &portcullis_config::sso::SsoLimits,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use tower::ServiceExt;

    // Beyond the limit, connections wait in the kernel's backlog.
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout.0)
        .max_buf_size(64 * 1024);
    let mut shutdown = std::pin::pin!(shutdown_signal());
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    log::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let app = app.clone();
        let service = hyper::service::service_fn(
            move |mut request: hyper::Request<hyper::body::Incoming>| {
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                app.clone().oneshot(request)
            },
        );
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
            drop(permit);
        });
    }
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        log::warn!("portcullis sso: requests still open after {DRAIN_TIMEOUT:?}; exiting");
    }
}

/// The access tokens' algorithm first, then RS256 (OpenID Connect's
/// default for ID tokens), then whatever a client chose.
pub(crate) fn signing_algorithms(
    config: &SsoConfig,
) -> Vec<portcullis_config::sso::SigningAlgorithm> {
    let mut algorithms = vec![config.keys.algorithm];
    let chosen = config.clients.iter().map(grants::id_token_algorithm);
    for algorithm in std::iter::once(portcullis_config::sso::SigningAlgorithm::RS256).chain(chosen)
    {
        if !algorithms.contains(&algorithm) {
            algorithms.push(algorithm);
        }
    }
    algorithms
}

/// Signed tokens live at most this long: how long a retired key stays in JWKS.
fn longest_token_lifetime(config: &SsoConfig) -> u64 {
    let defaults = &config.defaults;
    let mut longest = [&defaults.public, &defaults.confidential]
        .iter()
        .map(|l| l.access_token_ttl.0.max(l.id_token_ttl.0))
        .max()
        .unwrap_or_default();
    for client in &config.clients {
        let l = client.lifetimes(defaults);
        longest = longest.max(l.access_token_ttl.0).max(l.id_token_ttl.0);
    }
    longest.as_secs()
}

fn spawn_rotation(state: &Shared) {
    let state = state.clone();
    let every = Duration::from_secs((state.keys_schedule_check()).clamp(1, 60));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let state = state.clone();
            let result =
                tokio::task::spawn_blocking(move || state.keys.rotate(keys::now_secs())).await;
            if let Ok(Err(e)) = result {
                log::error!("key rotation failed (the current keys stay): {e}");
            }
        }
    });
}

impl Sso {
    /// Rotation is checked often enough that a key is published well
    /// within its `publish_ahead`.
    fn keys_schedule_check(&self) -> u64 {
        self.config.keys.publish_ahead.0.as_secs() / 4
    }

    pub(crate) fn client_ip(
        &self,
        peer: std::net::IpAddr,
        headers: &HeaderMap,
    ) -> std::net::IpAddr {
        portcullis_web::client_ip::client_ip(
            peer,
            headers,
            &self.config.trusted_proxies,
            self.config.client_ip_header,
        )
    }

    fn endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.config.issuer)
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    log::info!("portcullis sso: shutting down");
}

/// The page templates, compiled into the binary; `.html` autoescapes.
fn templates() -> Result<minijinja::Environment<'static>, minijinja::Error> {
    let mut env = minijinja::Environment::new();
    // Unix seconds as people read them (`Wed, 02 Dec 2026 18:51:26 GMT`).
    env.add_filter("datetime", |seconds: u64| {
        httpdate::fmt_http_date(std::time::UNIX_EPOCH + Duration::from_secs(seconds))
    });
    env.add_template("base.html", include_str!("../templates/base.html"))?;
    env.add_template("login.html", include_str!("../templates/login.html"))?;
    env.add_template("consent.html", include_str!("../templates/consent.html"))?;
    env.add_template("message.html", include_str!("../templates/message.html"))?;
    env.add_template("register.html", include_str!("../templates/register.html"))?;
    env.add_template("logout.html", include_str!("../templates/logout.html"))?;
    env.add_template("factor.html", include_str!("../templates/factor.html"))?;
    env.add_template(
        "new_password.html",
        include_str!("../templates/new_password.html"),
    )?;
    env.add_template("account.html", include_str!("../templates/account.html"))?;
    env.add_template("console.html", include_str!("../templates/console.html"))?;
    Ok(env)
}

/// The passkey ceremony's script for the sign-in and account pages (served
/// from here: the pages load nothing from anywhere else).
async fn passkeys_script() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/javascript; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        include_str!("../templates/passkeys.js"),
    )
        .into_response()
}

fn router(state: Shared) -> Router {
    // Endpoints live under the issuer's path (`https://id.example.com/sso`).
    let base = state.base_path.clone();
    Router::new()
        .route(
            &format!("{base}/.well-known/openid-configuration"),
            get(discovery),
        )
        .route(&format!("{base}/jwks"), get(jwks))
        .route(&format!("{base}/openapi.json"), get(openapi))
        .route(&format!("{base}/token"), post(token))
        .route(&format!("{base}/authorize"), get(flow::authorize))
        .route(&format!("{base}/login"), post(flow::login))
        .route(&format!("{base}/login/factor"), post(factor::submit))
        .route(
            &format!("{base}/login/password"),
            post(factor::new_password),
        )
        .route(&format!("{base}/account"), get(account::page))
        .route(&format!("{base}/console"), get(console::home))
        .route(&format!("{base}/console/{{view}}"), get(console::page))
        .route(
            &format!("{base}/console/users/{{username}}"),
            get(console::user),
        )
        .route(&format!("{base}/console/do/{{action}}"), post(console::act))
        .route(&format!("{base}/account/{{action}}"), post(account::act))
        .route(&format!("{base}/assets/passkeys.js"), get(passkeys_script))
        .route(&format!("{base}/consent"), post(flow::consent))
        .route(
            &format!("{base}/register"),
            get(register::page).post(register::submit),
        )
        .route(
            &format!("{base}/end_session"),
            get(flow::end_session).post(flow::end_session_post),
        )
        .route(&format!("{base}/userinfo"), get(userinfo).post(userinfo))
        .route(&format!("{base}/introspect"), post(introspect))
        .route(&format!("{base}/revoke"), post(revoke))
        .route(
            &format!("{base}/admin/users"),
            get(admin::list_users).post(admin::create_user),
        )
        .route(
            &format!("{base}/admin/users/{{username}}"),
            get(admin::get_user)
                .patch(admin::update_user)
                .delete(admin::delete_user),
        )
        .route(
            &format!("{base}/admin/users/{{username}}/password"),
            axum::routing::put(admin::set_password),
        )
        .route(
            &format!("{base}/admin/users/{{username}}/sessions"),
            get(admin::list_user_sessions).delete(admin::end_user_sessions),
        )
        .route(
            &format!("{base}/admin/users/{{username}}/sessions/{{sid}}"),
            axum::routing::delete(admin::end_user_session),
        )
        .route(&format!("{base}/admin/audit"), get(admin::list_audit))
        .route(&format!("{base}/admin/roles"), get(admin::list_roles))
        .route(&format!("{base}/admin/groups"), get(admin::list_groups))
        .route(
            &format!("{base}/admin/roles/{{role}}/users"),
            get(admin::role_members),
        )
        .route(
            &format!("{base}/admin/groups/{{group}}/users"),
            get(admin::group_members),
        )
        .route(
            &format!("{base}/admin/users/{{username}}/roles/{{role}}"),
            axum::routing::put(admin::give_role).delete(admin::take_role),
        )
        .route(
            &format!("{base}/admin/users/{{username}}/groups/{{group}}"),
            axum::routing::put(admin::give_group).delete(admin::take_group),
        )
        .route(
            &format!("{base}/admin/clients"),
            get(admin::list_clients).post(admin::create_client),
        )
        .route(
            &format!("{base}/admin/clients/{{client_id}}"),
            get(admin::get_client)
                .patch(admin::update_client)
                .delete(admin::delete_client),
        )
        .route(
            &format!("{base}/admin/clients/{{client_id}}/secret"),
            post(admin::rotate_client_secret),
        )
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            state.config.limits.request_timeout.0,
        ))
        .with_state(state)
}

fn issuer_path(issuer: &str) -> String {
    let after_scheme = issuer.split_once("://").map_or(issuer, |(_, rest)| rest);
    match after_scheme.find('/') {
        Some(i) => after_scheme[i..].trim_end_matches('/').to_owned(),
        None => String::new(),
    }
}

fn no_store(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// OpenID Provider metadata (OIDC Discovery 1.0).
#[utoipa::path(get, path = "/.well-known/openid-configuration", tag = "oidc",
    responses((status = 200, description = "Provider metadata", body = Object)))]
async fn discovery(State(sso): State<Shared>) -> Response {
    // The legacy password grant is announced only when a client has it.
    let mut grant_types = vec!["authorization_code", "refresh_token", "client_credentials"];
    if sso.config.clients.iter().any(|c| {
        c.grants()
            .contains(&portcullis_config::sso::GrantType::Password)
    }) {
        grant_types.push("password");
    }
    // Every algorithm a key is kept for can sign a client's ID tokens.
    let algorithms: Vec<&str> = sso
        .keys
        .algorithms()
        .iter()
        .map(|a| match a {
            portcullis_config::sso::SigningAlgorithm::ES256 => "ES256",
            portcullis_config::sso::SigningAlgorithm::RS256 => "RS256",
            portcullis_config::sso::SigningAlgorithm::EdDSA => "EdDSA",
        })
        .collect();
    Json(json!({
        "issuer": sso.config.issuer,
        "authorization_endpoint": sso.endpoint("/authorize"),
        "token_endpoint": sso.endpoint("/token"),
        "userinfo_endpoint": sso.endpoint("/userinfo"),
        "jwks_uri": sso.endpoint("/jwks"),
        "introspection_endpoint": sso.endpoint("/introspect"),
        "revocation_endpoint": sso.endpoint("/revoke"),
        "end_session_endpoint": sso.endpoint("/end_session"),
        "scopes_supported": ["openid", "profile", "email", "roles", "offline_access"],
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": grant_types,
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS256", "PS256", "ES256", "EdDSA"],
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt"],
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt"],
        "id_token_signing_alg_values_supported": algorithms,
        "subject_types_supported": ["public"],
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "at_hash",
            "sid", "amr", "acr", "preferred_username", "name", "email", "email_verified", "roles", "groups"],
        "acr_values_supported": [mfa::ACR_PASSWORD, mfa::ACR_MFA],
        "authorization_response_iss_parameter_supported": true,
        "backchannel_logout_supported": true,
        "backchannel_logout_session_supported": true,
    }))
    .into_response()
}

async fn openapi(State(sso): State<Shared>) -> Response {
    Json(api_doc::document(&sso.config.issuer)).into_response()
}

/// The published signing keys: the current, the next (published ahead)
/// and retired ones whose tokens have not expired. Cache for `max-age`.
#[utoipa::path(get, path = "/jwks", tag = "oidc",
    responses((status = 200, description = "JWK Set", body = Object)))]
async fn jwks(State(sso): State<Shared>) -> Response {
    // Relying parties may cache for this long; rotation publishes the next
    // key `publish_ahead` earlier, so a cached set always has it in time.
    let max_age = (sso.config.keys.publish_ahead.0.as_secs() / 2).min(3600);
    let mut response = Json(sso.keys.jwks().as_ref().clone()).into_response();
    if let Ok(value) = HeaderValue::from_str(&format!("public, max-age={max_age}")) {
        response.headers_mut().insert(header::CACHE_CONTROL, value);
    }
    response
}

/// Token endpoint.
#[utoipa::path(post, path = "/token", tag = "oidc",
    request_body(content = crate::api_doc::TokenRequestForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Tokens", body = crate::api_doc::TokenResponse),
        (status = 400, description = "invalid_grant, invalid_request, invalid_scope, unauthorized_client, unsupported_grant_type", body = crate::api_doc::OAuthErrorBody),
        (status = 401, description = "invalid_client", body = crate::api_doc::OAuthErrorBody)),
    security(("basic" = []), ()))]
async fn token(
    State(sso): State<Shared>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(request): Form<grants::TokenRequest>,
) -> Response {
    let ip = sso.client_ip(peer.ip(), &headers);
    match sso.token(&headers, ip, request).await {
        Ok(body) => no_store(Json(body).into_response()),
        Err(e) => {
            sso.audit(json!({ "event": "token_refused", "error": e.code }));
            e.into_response()
        }
    }
}

/// The user's claims for an access token with the `openid` scope.
#[utoipa::path(get, path = "/userinfo", tag = "oidc",
    responses(
        (status = 200, description = "Claims", body = Object),
        (status = 401, description = "Not an active token", body = crate::api_doc::OAuthErrorBody)),
    security(("bearer" = [])))]
async fn userinfo(State(sso): State<Shared>, headers: HeaderMap) -> Response {
    match sso.userinfo(&headers).await {
        Ok(body) => no_store(Json(body).into_response()),
        Err(e) => {
            let mut response = e.into_response();
            // RFC 6750 §3 for bearer errors.
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
            response
        }
    }
}

/// Token introspection (RFC 7662), for authenticated clients.
#[utoipa::path(post, path = "/introspect", tag = "oidc",
    request_body(content = crate::api_doc::TokenForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "`active` and the token's claims", body = crate::api_doc::IntrospectionResponse),
        (status = 401, description = "invalid_client", body = crate::api_doc::OAuthErrorBody)),
    security(("basic" = []), ()))]
async fn introspect(
    State(sso): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<introspect::TokenForm>,
) -> Response {
    match sso.introspect(&headers, form).await {
        Ok(body) => no_store(Json(body).into_response()),
        Err(e) => e.into_response(),
    }
}

/// Token revocation (RFC 7009): a refresh token revokes its whole grant.
#[utoipa::path(post, path = "/revoke", tag = "oidc",
    request_body(content = crate::api_doc::TokenForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Revoked (or unknown)"),
        (status = 401, description = "invalid_client", body = crate::api_doc::OAuthErrorBody)),
    security(("basic" = []), ()))]
async fn revoke(
    State(sso): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<introspect::TokenForm>,
) -> Response {
    match sso.revoke(&headers, form).await {
        Ok(()) => no_store(StatusCode::OK.into_response()),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_escape_html() {
        let env = templates().unwrap();
        let html = env
            .get_template("login.html")
            .unwrap()
            .render(serde_json::json!({
                "brand": {"title": "T"},
                "username": "<script>alert(1)</script>",
                "error": "a & b",
            }))
            .unwrap();
        assert!(html.contains("&lt;script&gt;"), "{html}");
        assert!(!html.contains("<script>"));
        assert!(html.contains("a &amp; b"));
    }

    #[test]
    fn endpoints_live_under_the_issuer_path() {
        assert_eq!(issuer_path("https://id.example.com"), "");
        assert_eq!(issuer_path("https://id.example.com/sso"), "/sso");
        assert_eq!(issuer_path("http://127.0.0.1:9000/a/b"), "/a/b");
    }
}
