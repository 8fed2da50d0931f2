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

/// Credentials as the request presented them.
pub struct Presented {
    pub client_id: String,
    pub secret: Option<String>,
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

    pub fn get(&self, client_id: &str) -> Option<Arc<Client>> {
        self.by_id.get(client_id).cloned()
    }

    /// Authenticates a token-endpoint request. Public clients present only
    /// their id; confidential ones must present the right secret, by one
    /// method only.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        form_id: Option<&str>,
        form_secret: Option<&str>,
    ) -> Result<Arc<Client>, OAuthError> {
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
        let client = self.get(&presented.client_id);
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

fn form_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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
