//! RFC 7662 introspection of opaque tokens, with answers cached: an active
//! token until its `exp` (at most `max_ttl`), an inactive one for
//! `negative_ttl`. Concurrent misses for the same token share one call;
//! failures (IdP down, slow, 5xx) are not cached.

use std::sync::Arc;
use std::time::Duration;

use portcullis_config as config;
use serde_json::{Map, Value};

use super::keys::ProviderKeys;
use super::{now_secs, AuthError, Identity};

#[derive(Clone)]
enum Answer {
    Active(Arc<Identity>),
    Inactive,
}

struct AnswerExpiry {
    negative: Duration,
}

impl moka::Expiry<Arc<str>, Answer> for AnswerExpiry {
    fn expire_after_create(
        &self,
        _key: &Arc<str>,
        value: &Answer,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(match value {
            Answer::Active(identity) => {
                Duration::from_secs(identity.expires_at.saturating_sub(now_secs()))
            }
            Answer::Inactive => self.negative,
        })
    }
}

/// Most introspection answers kept.
const MAX_ANSWERS: u64 = 100_000;

pub struct Introspector {
    endpoint: Option<String>,
    client_id: String,
    client_secret: config::Secret,
    max_ttl: Duration,
    on_error: config::IntrospectionFailure,
    answers: moka::future::Cache<Arc<str>, Answer, foldhash::fast::RandomState>,
}

impl Introspector {
    pub fn new(spec: &config::Introspection) -> Introspector {
        Introspector {
            endpoint: spec.endpoint.clone(),
            client_id: spec.client_id.clone(),
            client_secret: spec.client_secret.clone(),
            max_ttl: spec.max_ttl.0,
            on_error: spec.on_error,
            answers: moka::future::Cache::builder()
                .max_capacity(MAX_ANSWERS)
                .expire_after(AnswerExpiry {
                    negative: spec.negative_ttl.0,
                })
                .build_with_hasher(foldhash::fast::RandomState::default()),
        }
    }

    /// The identity behind an opaque token. `identity` builds it from the
    /// introspection answer and the expiry to use.
    pub async fn introspect(
        &self,
        token: &str,
        keys: &ProviderKeys,
        issuer: &str,
        audiences: &[String],
        identity: &(dyn Fn(&Map<String, Value>, u64) -> Identity + Sync),
    ) -> Result<Arc<Identity>, AuthError> {
        let answer = self
            .answers
            .try_get_with(Arc::from(token), async {
                let claims = self.ask(token, keys).await?;
                Ok::<_, String>(self.judge(&claims, issuer, audiences, identity))
            })
            .await;
        match answer {
            Ok(Answer::Active(identity)) => Ok(identity),
            Ok(Answer::Inactive) => Err(AuthError::Invalid("inactive token")),
            Err(e) => {
                log::warn!("provider `{}`: introspection failed: {e}", keys.name);
                match self.on_error {
                    config::IntrospectionFailure::Unavailable => Err(AuthError::Unavailable),
                    config::IntrospectionFailure::Reject => {
                        Err(AuthError::Invalid("introspection failed"))
                    }
                }
            }
        }
    }

    fn judge(
        &self,
        claims: &Map<String, Value>,
        issuer: &str,
        audiences: &[String],
        identity: &(dyn Fn(&Map<String, Value>, u64) -> Identity + Sync),
    ) -> Answer {
        if claims.get("active") != Some(&Value::Bool(true)) {
            return Answer::Inactive;
        }
        let now = now_secs();
        let exp = claims.get("exp").and_then(Value::as_u64);
        if exp.is_some_and(|exp| exp <= now) {
            return Answer::Inactive;
        }
        if let Some(iss) = claims.get("iss").and_then(Value::as_str) {
            if iss != issuer {
                return Answer::Inactive;
            }
        }
        if !audiences.is_empty() {
            let matches = match claims.get("aud") {
                Some(Value::String(aud)) => audiences.contains(aud),
                Some(Value::Array(auds)) => auds
                    .iter()
                    .filter_map(Value::as_str)
                    .any(|a| audiences.iter().any(|x| x == a)),
                // RFC 7662 makes `aud` optional, but "active" only says the
                // token is valid somewhere: without an audience it cannot be
                // shown to be meant for us (RFC 8725 §3.9).
                None => false,
                Some(_) => false,
            };
            if !matches {
                return Answer::Inactive;
            }
        }
        let cap = now + self.max_ttl.as_secs();
        let until = exp.map_or(cap, |exp| exp.min(cap));
        Answer::Active(Arc::new(identity(claims, until)))
    }

    async fn ask(&self, token: &str, keys: &ProviderKeys) -> Result<Map<String, Value>, String> {
        let endpoint = match &self.endpoint {
            Some(endpoint) => endpoint.clone(),
            None => keys
                .discovered_introspection_endpoint()
                .map(|e| e.as_ref().clone())
                .ok_or("no introspection endpoint known yet (discovery has not succeeded)")?,
        };
        let response = keys
            .client()
            .post(&endpoint)
            .basic_auth(&self.client_id, Some(self.client_secret.expose()))
            .form(&[("token", token), ("token_type_hint", "access_token")])
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("status {}", response.status()));
        }
        let body = response.bytes().await.map_err(|e| e.to_string())?;
        match serde_json::from_slice(&body) {
            Ok(Value::Object(map)) => Ok(map),
            _ => Err("the answer is not a JSON object".into()),
        }
    }
}
