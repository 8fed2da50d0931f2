//! The Portcullis OpenID Provider (`portcullis sso`).
//!
//! Built so far: discovery, JWKS with scheduled key rotation (`keys`),
//! client authentication with argon2id-hashed secrets (`clients`), and the
//! token endpoint's client-credentials grant issuing RFC 9068 access
//! tokens with per-client lifetimes (`oauth`). Every endpoint sits under
//! the issuer's path.

mod clients;
mod keys;
mod oauth;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use portcullis_config::sso::{GrantType, SsoConfig};
use serde::Deserialize;
use serde_json::json;

pub use clients::hash_secret;
use clients::Clients;
use keys::{KeyStore, Schedule};
use oauth::{AccessClaims, OAuthError};

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
}

struct Sso {
    config: SsoConfig,
    keys: KeyStore,
    clients: Clients,
}

type Shared = Arc<Sso>;

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
        algorithm: config.keys.algorithm,
        rotate_every: config.keys.rotate_every.0.as_secs(),
        publish_ahead: config.keys.publish_ahead.0.as_secs(),
        retain_for: longest_token_lifetime(&config),
    };
    let keys = KeyStore::open(&keys_dir, schedule)?;
    let address = config.listen;
    let state = Arc::new(Sso {
        clients: Clients::new(&config.clients),
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
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    Ok(())
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

fn router(state: Shared) -> Router {
    // Endpoints live under the issuer's path (`https://id.example.com/sso`).
    let base = issuer_path(&state.config.issuer);
    Router::new()
        .route(
            &format!("{base}/.well-known/openid-configuration"),
            get(discovery),
        )
        .route(&format!("{base}/jwks"), get(jwks))
        .route(&format!("{base}/token"), post(token))
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

async fn discovery(State(sso): State<Shared>) -> Response {
    let algorithm = match sso.config.keys.algorithm {
        portcullis_config::sso::SigningAlgorithm::ES256 => "ES256",
        portcullis_config::sso::SigningAlgorithm::EdDSA => "EdDSA",
    };
    Json(json!({
        "issuer": sso.config.issuer,
        "jwks_uri": sso.endpoint("/jwks"),
        "token_endpoint": sso.endpoint("/token"),
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "id_token_signing_alg_values_supported": [algorithm],
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
    }))
    .into_response()
}

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

#[derive(Deserialize)]
struct TokenRequest {
    grant_type: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    scope: Option<String>,
}

async fn token(
    State(sso): State<Shared>,
    headers: HeaderMap,
    Form(request): Form<TokenRequest>,
) -> Response {
    match issue(&sso, &headers, request).await {
        Ok(response) => no_store(response),
        Err(e) => {
            audit(json!({ "event": "token_refused", "error": e.code }));
            e.into_response()
        }
    }
}

async fn issue(
    sso: &Sso,
    headers: &HeaderMap,
    request: TokenRequest,
) -> Result<Response, OAuthError> {
    let client = sso
        .clients
        .authenticate(
            headers,
            request.client_id.as_deref(),
            request.client_secret.as_deref(),
        )
        .await?;
    match request.grant_type.as_deref() {
        Some("client_credentials") => {
            if !client.grants().contains(&GrantType::ClientCredentials) {
                return Err(OAuthError::new(
                    StatusCode::BAD_REQUEST,
                    "unauthorized_client",
                    "this client may not use client_credentials",
                ));
            }
            let requested: Vec<&str> = request
                .scope
                .as_deref()
                .unwrap_or("")
                .split(' ')
                .filter(|s| !s.is_empty())
                .collect();
            if let Some(unknown) = requested
                .iter()
                .find(|s| !client.scopes.iter().any(|allowed| allowed == *s))
            {
                return Err(OAuthError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_scope",
                    format!("scope `{unknown}` is not allowed for this client"),
                ));
            }
            // No scope asked: every scope the client is allowed.
            let scope = if requested.is_empty() {
                client.scopes.join(" ")
            } else {
                requested.join(" ")
            };
            let audience = if client.audience.is_empty() {
                std::slice::from_ref(&client.client_id)
            } else {
                client.audience.as_slice()
            };
            let lifetime = client
                .lifetimes(&sso.config.defaults)
                .access_token_ttl
                .0
                .as_secs();
            let (access_token, _exp) = oauth::sign_access_token(
                &sso.keys,
                &AccessClaims {
                    issuer: &sso.config.issuer,
                    subject: &client.client_id,
                    audience,
                    client_id: &client.client_id,
                    scope: &scope,
                    roles: &client.roles,
                    lifetime,
                },
            )?;
            audit(
                json!({ "event": "token_issued", "grant": "client_credentials",
                "client_id": client.client_id, "scope": scope, "expires_in": lifetime }),
            );
            let mut body = json!({
                "access_token": access_token,
                "token_type": "Bearer",
                "expires_in": lifetime,
            });
            if !scope.is_empty() {
                body["scope"] = scope.into();
            }
            Ok(Json(body).into_response())
        }
        Some(other) => Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            format!("grant type `{other}` is not supported"),
        )),
        None => Err(OAuthError::invalid_request("grant_type is required")),
    }
}

/// One JSON line on stdout per security event; never a secret or a token.
fn audit(mut event: serde_json::Value) {
    event["time"] = keys::now_secs().into();
    event["audit"] = true.into();
    println!("{event}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_live_under_the_issuer_path() {
        assert_eq!(issuer_path("https://id.example.com"), "");
        assert_eq!(issuer_path("https://id.example.com/sso"), "/sso");
        assert_eq!(issuer_path("http://127.0.0.1:9000/a/b"), "/a/b");
    }
}
