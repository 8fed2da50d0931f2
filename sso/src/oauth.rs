//! OAuth 2.0 error answers (RFC 6749 §5.2) and access tokens as JWTs
//! (RFC 9068: `typ: at+jwt`).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use jsonwebtoken::{Algorithm, Header, Validation};
use serde_json::{json, Value};

use portcullis_config::sso::SigningAlgorithm;

use crate::keys::{now_secs, KeyStore};

/// An OAuth error: status, `error` code and a description that never
/// contains a secret.
#[derive(Debug)]
pub struct OAuthError {
    pub status: StatusCode,
    pub code: &'static str,
    pub description: String,
}

impl OAuthError {
    pub fn new(status: StatusCode, code: &'static str, description: impl Into<String>) -> Self {
        OAuthError {
            status,
            code,
            description: description.into(),
        }
    }

    pub fn invalid_client(description: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_client", description)
    }

    pub fn invalid_request(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    pub fn server_error(description: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            description,
        )
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.code, "error_description": self.description });
        let mut response = (self.status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if self.status == StatusCode::UNAUTHORIZED {
            // RFC 6749 §5.2 with the RFC 6750 §3 parameters: the error code
            // in the challenge too, for clients that read only the header.
            let challenge = format!("Basic realm=\"portcullis-sso\", error=\"{}\"", self.code);
            if let Ok(value) = HeaderValue::from_str(&challenge) {
                headers.insert(header::WWW_AUTHENTICATE, value);
            }
        }
        response
    }
}

/// A random, URL-safe identifier (`jti`, codes, refresh tokens).
pub fn random_id(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::fill(&mut buf[..]);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

/// What an access token says.
pub struct AccessClaims<'a> {
    pub issuer: &'a str,
    pub subject: &'a str,
    pub audience: &'a [String],
    pub client_id: &'a str,
    pub scope: &'a str,
    pub roles: &'a [String],
    pub groups: &'a [String],
    pub lifetime: u64,
    /// How the user signed in (`amr`, and `acr` from it); none for a
    /// client acting for itself.
    pub methods: Option<&'a crate::mfa::Methods>,
}

/// A signed access token.
pub struct SignedAccess {
    pub token: String,
    pub jti: String,
    pub algorithm: Algorithm,
}

/// Signs an RFC 9068 access token with the current key.
pub fn sign_access_token(
    keys: &KeyStore,
    claims: &AccessClaims<'_>,
) -> Result<SignedAccess, OAuthError> {
    let now = now_secs();
    let key = keys
        .signing_key(now, keys.access_algorithm())
        .ok_or_else(|| OAuthError::server_error("no signing key"))?;
    let mut header = Header::new(key.algorithm);
    header.typ = Some("at+jwt".into());
    header.kid = Some(key.kid.clone());
    let exp = now + claims.lifetime;
    let audience: Value = match claims.audience {
        [one] => one.as_str().into(),
        many => many.into(),
    };
    let jti = random_id(16);
    let mut body = json!({
        "iss": claims.issuer,
        "sub": claims.subject,
        "aud": audience,
        "exp": exp,
        "iat": now,
        "nbf": now,
        "jti": jti,
        "client_id": claims.client_id,
    });
    if !claims.scope.is_empty() {
        body["scope"] = claims.scope.into();
    }
    if !claims.roles.is_empty() {
        body["roles"] = claims.roles.into();
    }
    if !claims.groups.is_empty() {
        body["groups"] = claims.groups.into();
    }
    if let Some(methods) = claims.methods {
        body["amr"] = methods.as_slice().into();
        body["acr"] = methods.acr().into();
    }
    let token = encode_jws(&key, &header, &body)?;
    Ok(SignedAccess {
        token,
        jti,
        algorithm: key.algorithm,
    })
}

/// Signs an ID token (OIDC Core §2) with `algorithm`.
pub fn sign_id_token(
    keys: &KeyStore,
    algorithm: SigningAlgorithm,
    mut claims: Value,
) -> Result<String, OAuthError> {
    let now = now_secs();
    let key = keys
        .signing_key(now, algorithm)
        .ok_or_else(|| OAuthError::server_error("no signing key"))?;
    let mut header = Header::new(key.algorithm);
    header.kid = Some(key.kid.clone());
    claims["iat"] = now.into();
    encode_jws(&key, &header, &claims)
}

/// Signs a JWT of another type (`typ`: `logout+jwt`) with `algorithm`.
pub fn sign_typed(
    keys: &KeyStore,
    algorithm: SigningAlgorithm,
    typ: &str,
    claims: &Value,
) -> Result<String, OAuthError> {
    let key = keys
        .signing_key(now_secs(), algorithm)
        .ok_or_else(|| OAuthError::server_error("no signing key"))?;
    let mut header = Header::new(key.algorithm);
    header.kid = Some(key.kid.clone());
    header.typ = Some(typ.into());
    encode_jws(&key, &header, claims)
}

/// The hash `at_hash` uses for tokens signed with `algorithm`.
pub fn hash_algorithm(algorithm: SigningAlgorithm) -> Algorithm {
    match algorithm {
        SigningAlgorithm::ES256 => Algorithm::ES256,
        SigningAlgorithm::RS256 => Algorithm::RS256,
        SigningAlgorithm::EdDSA => Algorithm::EdDSA,
    }
}

/// A compact JWS: `b64(header).b64(claims).b64(signature)`.
fn encode_jws(
    key: &crate::keys::SigningKey,
    header: &Header,
    claims: &Value,
) -> Result<String, OAuthError> {
    let b64 = &base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = serde_json::to_vec(header)
        .map_err(|e| OAuthError::server_error(format!("encoding failed: {e}")))?;
    let claims = serde_json::to_vec(claims)
        .map_err(|e| OAuthError::server_error(format!("encoding failed: {e}")))?;
    let mut token = b64.encode(header);
    token.push('.');
    token.push_str(&b64.encode(claims));
    let signature = key
        .sign(token.as_bytes())
        .map_err(|e| OAuthError::server_error(format!("signing failed: {e}")))?;
    token.push('.');
    token.push_str(&b64.encode(signature));
    Ok(token)
}

/// `at_hash`: the left half of the access token's hash, with the hash of
/// the signing algorithm (SHA-256 for ES256, SHA-512 for Ed25519).
pub fn at_hash(token: &str, algorithm: Algorithm) -> String {
    let digest = match algorithm {
        Algorithm::EdDSA => ring::digest::digest(&ring::digest::SHA512, token.as_bytes()),
        _ => ring::digest::digest(&ring::digest::SHA256, token.as_bytes()),
    };
    let bytes = digest.as_ref();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes[..bytes.len() / 2])
}

/// Verifies one of our own tokens: signature by a published key, issuer,
/// and (unless `allow_expired`) lifetime. Returns the header and claims.
pub fn verify_own(
    keys: &KeyStore,
    issuer: &str,
    token: &str,
    allow_expired: bool,
) -> Option<(Header, Value)> {
    let header = jsonwebtoken::decode_header(token).ok()?;
    let key = keys.key(header.kid.as_deref()?)?;
    if header.alg != key.algorithm {
        return None;
    }
    let mut validation = Validation::new(key.algorithm);
    validation.set_issuer(&[issuer]);
    validation.validate_aud = false;
    validation.validate_exp = !allow_expired;
    validation.leeway = 0;
    validation.set_required_spec_claims(&["iss", "sub", "exp"]);
    let data = jsonwebtoken::decode::<Value>(token, &key.decoding, &validation).ok()?;
    Some((header, data.claims))
}
