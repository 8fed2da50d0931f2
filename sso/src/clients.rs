//! Client authentication (RFC 6749 §2.3): `client_secret_basic` and
//! `client_secret_post`, secrets stored as argon2id hashes and checked off
//! the async executor.

use std::collections::HashMap;
use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::Engine;
use http::HeaderMap;
use portcullis_config::sso::{Client, ClientType};

use crate::oauth::OAuthError;

pub struct Clients {
    by_id: HashMap<String, Arc<Client>>,
    /// Secrets verified recently, by SHA-256 of client id, secret and stored
    /// hash: a service asking for tokens all day pays argon2 once per
    /// `VERIFIED_TTL`, not per request (argon2id costs 10.4 ms by design,
    /// `cargo bench --bench sso`; with the cache, benches/sso-load.sh issued
    /// 47,900 tokens/s at 28 µs CPU each). A changed hash misses the cache.
    verified: std::sync::Mutex<HashMap<String, std::time::Instant>>,
    /// Verified against when the client id is unknown, so an unknown id
    /// costs the same time as a wrong secret.
    decoy_hash: String,
}

/// What a request to the token, introspection or revocation endpoint
/// carries to authenticate its client.
#[derive(Debug, Default, Clone, Copy)]
pub struct ClientAuth<'a> {
    pub client_id: Option<&'a str>,
    pub client_secret: Option<&'a str>,
    pub assertion_type: Option<&'a str>,
    pub assertion: Option<&'a str>,
}

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Longest lifetime of a client assertion we accept.
const MAX_ASSERTION_LIFETIME: u64 = 600;

/// Credentials as the request presented them.
pub struct Presented {
    pub client_id: String,
    pub secret: Option<String>,
}

impl crate::Sso {
    /// A client: of the config file, else registered at run time (in the
    /// directory; a directory failure reads as unknown, logged).
    pub async fn client(&self, client_id: &str) -> Option<Arc<Client>> {
        if let Some(client) = self.clients.get(client_id) {
            return Some(client);
        }
        match self.directory.client(client_id).await {
            Ok(client) => client.map(Arc::new),
            Err(e) => {
                log::error!("{e}");
                None
            }
        }
    }

    /// Authenticates the client of a back-channel request: a signed JWT
    /// (`private_key_jwt`, RFC 7523 §2.2), a secret (Basic or form), or
    /// only its id for a public client.
    pub async fn authenticate_client(
        &self,
        headers: &HeaderMap,
        auth: ClientAuth<'_>,
    ) -> Result<Arc<Client>, OAuthError> {
        let Some(assertion) = auth.assertion else {
            let presented = presented(headers, auth.client_id, auth.client_secret)?;
            let client = self.client(&presented.client_id).await;
            return self.clients.verify(client, presented).await;
        };
        let failed = || OAuthError::invalid_client("client authentication failed");
        if auth.assertion_type != Some(JWT_BEARER) {
            return Err(OAuthError::invalid_client(
                "unsupported client_assertion_type",
            ));
        }
        if auth.client_secret.is_some() || headers.contains_key(http::header::AUTHORIZATION) {
            return Err(OAuthError::invalid_client(
                "use one client authentication method",
            ));
        }
        // Which client: `sub` of the (not yet verified) assertion.
        let unverified = assertion
            .split('.')
            .nth(1)
            .and_then(|p| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(p)
                    .ok()
            })
            .and_then(|p| serde_json::from_slice::<serde_json::Value>(&p).ok())
            .ok_or_else(failed)?;
        let client_id = unverified["sub"].as_str().ok_or_else(failed)?;
        if auth.client_id.is_some_and(|id| id != client_id) {
            return Err(OAuthError::invalid_client("client ids differ"));
        }
        let client = self.client(client_id).await.ok_or_else(failed)?;
        let header = jsonwebtoken::decode_header(assertion).map_err(|_| failed())?;
        let key = client
            .jwks
            .iter()
            .filter_map(|jwk| serde_json::from_value::<jsonwebtoken::jwk::Jwk>(jwk.clone()).ok())
            .find(|jwk| header.kid.is_none() || jwk.common.key_id == header.kid)
            .ok_or_else(failed)?;
        // Asymmetric algorithms only: a public key must never serve as an
        // HMAC secret.
        use jsonwebtoken::Algorithm::*;
        if !matches!(
            header.alg,
            RS256 | RS384 | RS512 | PS256 | PS384 | PS512 | ES256 | ES384 | EdDSA
        ) {
            return Err(failed());
        }
        let decoding = jsonwebtoken::DecodingKey::from_jwk(&key).map_err(|_| failed())?;
        let mut validation = jsonwebtoken::Validation::new(header.alg);
        validation.set_issuer(&[client_id]);
        validation.sub = Some(client_id.to_owned());
        let audiences = [
            self.config.issuer.clone(),
            self.endpoint("/token"),
            self.endpoint("/introspect"),
            self.endpoint("/revoke"),
        ];
        validation.set_audience(&audiences);
        validation.set_required_spec_claims(&["iss", "sub", "aud", "exp"]);
        validation.leeway = 30;
        let claims = jsonwebtoken::decode::<serde_json::Value>(assertion, &decoding, &validation)
            .map_err(|_| failed())?
            .claims;
        let now = crate::keys::now_secs();
        let exp = claims["exp"].as_u64().unwrap_or(0);
        if exp > now + MAX_ASSERTION_LIFETIME {
            return Err(OAuthError::invalid_client("the assertion lives too long"));
        }
        // Single use: a captured assertion cannot be replayed.
        let jti = claims["jti"]
            .as_str()
            .ok_or_else(|| OAuthError::invalid_client("the assertion needs a jti"))?;
        let fresh = self
            .store
            .put_new(
                &format!(
                    "assertion:{}:{}",
                    client.client_id,
                    crate::store::digest(jti)
                ),
                &serde_json::json!(true),
                std::time::Duration::from_secs(exp.saturating_sub(now) + 60),
            )
            .await
            .map_err(|_| OAuthError::server_error("store unavailable"))?;
        if !fresh {
            return Err(OAuthError::invalid_client("the assertion was used before"));
        }
        Ok(client)
    }
}

impl Clients {
    pub fn new(clients: &[Client]) -> Clients {
        Clients {
            by_id: clients
                .iter()
                .map(|c| (c.client_id.clone(), Arc::new(c.clone())))
                .collect(),
            decoy_hash: hash_secret("decoy").unwrap_or_default(),
            verified: std::sync::Mutex::default(),
        }
    }

    /// A client of the config file.
    pub fn get(&self, client_id: &str) -> Option<Arc<Client>> {
        self.by_id.get(client_id).cloned()
    }

    /// Checks the presented credentials against `client` (looked up by
    /// the presented id). Public clients present only their id;
    /// confidential ones must present the right secret.
    pub async fn verify(
        &self,
        client: Option<Arc<Client>>,
        presented: Presented,
    ) -> Result<Arc<Client>, OAuthError> {
        match (client, presented.secret) {
            (Some(client), None) if client.client_type == ClientType::Public => Ok(client),
            (Some(client), Some(secret)) if client.client_type == ClientType::Confidential => {
                let hash = client.secret_hash.clone().unwrap_or_default();
                let key = crate::store::digest(&format!("{}\n{secret}\n{hash}", client.client_id));
                if self.recently_verified(&key) {
                    return Ok(client);
                }
                if verify_secret(secret, hash).await {
                    self.remember(key);
                    Ok(client)
                } else {
                    Err(OAuthError::invalid_client("client authentication failed"))
                }
            }
            (None, Some(secret)) => {
                let _ = verify_secret(secret, self.decoy_hash.clone()).await;
                Err(OAuthError::invalid_client("client authentication failed"))
            }
            _ => Err(OAuthError::invalid_client("client authentication failed")),
        }
    }
}

/// How long a verified client secret is trusted without argon2 again.
const VERIFIED_TTL: std::time::Duration = std::time::Duration::from_secs(300);
/// Most remembered verifications (one per client and secret in use).
const VERIFIED_MAX: usize = 10_000;

impl Clients {
    fn recently_verified(&self, key: &str) -> bool {
        let verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        verified
            .get(key)
            .is_some_and(|at| at.elapsed() < VERIFIED_TTL)
    }

    fn remember(&self, key: String) {
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if verified.len() >= VERIFIED_MAX {
            verified.retain(|_, at| at.elapsed() < VERIFIED_TTL);
            if verified.len() >= VERIFIED_MAX {
                verified.clear();
            }
        }
        verified.insert(key, std::time::Instant::now());
    }
}

/// The credentials a token-endpoint request presents, by one method only
/// (Basic, or the form).
fn presented(
    headers: &HeaderMap,
    form_id: Option<&str>,
    form_secret: Option<&str>,
) -> Result<Presented, OAuthError> {
    let basic = basic_credentials(headers)?;
    let presented = match (basic, form_secret) {
        (Some(_), Some(_)) => {
            return Err(OAuthError::invalid_client(
                "use one client authentication method",
            ))
        }
        (Some(basic), None) => basic,
        (None, secret) => Presented {
            client_id: form_id
                .ok_or_else(|| OAuthError::invalid_client("client authentication required"))?
                .to_owned(),
            secret: secret.map(str::to_owned),
        },
    };
    if let (Some(form_id), false) = (form_id, presented.secret.is_none()) {
        if form_id != presented.client_id {
            return Err(OAuthError::invalid_client("client ids differ"));
        }
    }
    Ok(presented)
}

fn basic_credentials(headers: &HeaderMap) -> Result<Option<Presented>, OAuthError> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let bad = || OAuthError::invalid_client("malformed Basic credentials");
    let text = value.to_str().map_err(|_| bad())?;
    let Some(encoded) = text
        .strip_prefix("Basic ")
        .or_else(|| text.strip_prefix("basic "))
    else {
        return Ok(None);
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| bad())?;
    let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(bad)?;
    // RFC 6749 §2.3.1: both are form-urlencoded before Basic encoding.
    Ok(Some(Presented {
        client_id: form_decode(id),
        secret: Some(form_decode(secret)),
    }))
}

/// One `application/x-www-form-urlencoded` value.
fn form_decode(text: &str) -> String {
    form_urlencoded::parse(format!("v={text}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// An argon2id PHC string for a secret or password.
pub fn hash_secret(secret: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Verifies on the blocking pool: argon2 takes tens of milliseconds by design.
pub async fn verify_secret(secret: String, hash: String) -> bool {
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(secret.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding() {
        assert_eq!(form_decode("a%3Ab+c%25"), "a:b c%");
        assert_eq!(form_decode("100%"), "100%");
        assert_eq!(form_decode("%zz"), "%zz");
    }

    #[tokio::test]
    async fn hashes_verify() {
        let hash = hash_secret("s3cret").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_secret("s3cret".into(), hash.clone()).await);
        assert!(!verify_secret("wrong".into(), hash).await);
        assert!(!verify_secret("x".into(), "not a hash".into()).await);
    }
}
