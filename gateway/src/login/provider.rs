//! The login provider as the gateway sees it: its discovery document and
//! its token endpoint.

use std::time::Duration;

use serde::Deserialize;

use crate::errors::GatewayError;

/// What discovery tells the relying party.
#[derive(Clone, Debug, Deserialize)]
pub struct Endpoints {
    /// Must equal the configured issuer (OpenID Connect Discovery §4.3).
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    #[serde(default)]
    pub end_session_endpoint: Option<String>,
    /// RFC 9207: the provider names itself in every authorization
    /// response, and the callback must then carry `iss`.
    #[serde(default)]
    pub authorization_response_iss_parameter_supported: bool,
}

/// A token endpoint answer.
#[derive(Deserialize)]
pub struct TokenResponse {
    pub access_token: String,
    #[serde(default)]
    pub expires_in: Option<u64>,
    #[serde(default)]
    pub refresh_token: Option<String>,
    #[serde(default)]
    pub id_token: Option<String>,
}

/// Why a token request failed.
#[derive(Debug)]
pub enum TokenError {
    /// `invalid_grant`: the code or refresh token is dead (revoked,
    /// expired, used): a refreshing session is over.
    InvalidGrant,
    /// Any other refusal (client not allowed, bad request).
    Refused(u16),
    /// The provider could not be asked or answered nonsense: try later.
    Unavailable,
}

impl From<TokenError> for GatewayError {
    fn from(e: TokenError) -> GatewayError {
        match e {
            TokenError::InvalidGrant | TokenError::Refused(_) => GatewayError::Unauthorized,
            TokenError::Unavailable => GatewayError::IdentityUnavailable,
        }
    }
}

/// Most bytes of a discovery document or token response read.
const MAX_ANSWER: usize = 256 * 1024;

pub fn http_client(timeout: Duration) -> Option<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .ok()
}

async fn body(response: reqwest::Response) -> Option<bytes::Bytes> {
    if response
        .content_length()
        .is_some_and(|n| n > MAX_ANSWER as u64)
    {
        return None;
    }
    let bytes = response.bytes().await.ok()?;
    (bytes.len() <= MAX_ANSWER).then_some(bytes)
}

pub async fn discover(http: &reqwest::Client, issuer: &str) -> Result<Endpoints, GatewayError> {
    let url = format!("{issuer}/.well-known/openid-configuration");
    let unavailable = |why: &dyn std::fmt::Display| {
        log::warn!("login: discovery at {url}: {why}");
        GatewayError::IdentityUnavailable
    };
    let response = http.get(&url).send().await.map_err(|e| unavailable(&e))?;
    if !response.status().is_success() {
        return Err(unavailable(&response.status()));
    }
    let bytes = body(response)
        .await
        .ok_or_else(|| unavailable(&"unreadable or too large"))?;
    let endpoints: Endpoints = serde_json::from_slice(&bytes).map_err(|e| unavailable(&e))?;
    if endpoints.issuer.trim_end_matches('/') != issuer {
        return Err(unavailable(&format!(
            "the document names issuer `{}`",
            endpoints.issuer
        )));
    }
    Ok(endpoints)
}

pub async fn token_request(
    http: &reqwest::Client,
    endpoint: &str,
    form: &[(&str, String)],
) -> Result<TokenResponse, TokenError> {
    let response = http.post(endpoint).form(form).send().await.map_err(|e| {
        log::warn!("login: token endpoint: {}", e.without_url());
        TokenError::Unavailable
    })?;
    let status = response.status();
    let bytes = body(response).await.ok_or(TokenError::Unavailable)?;
    if status.is_success() {
        return serde_json::from_slice(&bytes).map_err(|_| TokenError::Unavailable);
    }
    #[derive(Deserialize)]
    struct OAuthError {
        error: String,
    }
    let error = serde_json::from_slice::<OAuthError>(&bytes).ok();
    log::info!(
        "login: the token endpoint answered {status} {}",
        error.as_ref().map_or("", |e| e.error.as_str())
    );
    match (status.as_u16(), error) {
        (400, Some(e)) if e.error == "invalid_grant" => Err(TokenError::InvalidGrant),
        (code, _) if status.is_server_error() || code == 429 => Err(TokenError::Unavailable),
        (code, _) => Err(TokenError::Refused(code)),
    }
}
