//! `/userinfo`, `/introspect` (RFC 7662) and `/revoke` (RFC 7009).

use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::grants::add_profile_claims;
use crate::keys::now_secs;
use crate::oauth::{verify_own, OAuthError};
use crate::store::digest;
use crate::Sso;

#[derive(Deserialize)]
pub struct TokenForm {
    pub token: Option<String>,
    pub token_type_hint: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub client_assertion_type: Option<String>,
    pub client_assertion: Option<String>,
}

/// The bearer token of a request (RFC 6750 §2.1).
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

impl Sso {
    /// The claims of an access token that is ours, unexpired and not revoked.
    pub(crate) async fn active_access_token(&self, token: &str) -> Option<Value> {
        let (header, claims) = verify_own(&self.keys, &self.config.issuer, token, false)?;
        if header.typ.as_deref() != Some("at+jwt") {
            return None;
        }
        let jti = claims["jti"].as_str()?;
        if self
            .store
            .get(&format!("revoked_jti:{jti}"))
            .await
            .ok()?
            .is_some()
        {
            return None;
        }
        if let Some(link) = self.store.get(&format!("at:{jti}")).await.ok()? {
            if let Some(family) = link["family"].as_str() {
                if self.family_revoked(family).await.ok()? {
                    return None;
                }
            }
        }
        Some(claims)
    }

    /// The calling client (authenticated) and the token it asks about.
    async fn authenticated_token<'f>(
        &self,
        headers: &HeaderMap,
        form: &'f TokenForm,
    ) -> Result<(std::sync::Arc<portcullis_config::sso::Client>, &'f str), OAuthError> {
        let client = self
            .authenticate_client(
                headers,
                crate::clients::ClientAuth {
                    client_id: form.client_id.as_deref(),
                    client_secret: form.client_secret.as_deref(),
                    assertion_type: form.client_assertion_type.as_deref(),
                    assertion: form.client_assertion.as_deref(),
                },
            )
            .await?;
        let token = form
            .token
            .as_deref()
            .ok_or_else(|| OAuthError::invalid_request("token is required"))?;
        Ok((client, token))
    }

    pub async fn userinfo(&self, headers: &HeaderMap) -> Result<Value, OAuthError> {
        let token = bearer(headers).ok_or_else(|| {
            OAuthError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "bearer token required",
            )
        })?;
        let claims = self
            .active_access_token(token.trim())
            .await
            .ok_or_else(|| {
                OAuthError::new(
                    StatusCode::UNAUTHORIZED,
                    "invalid_token",
                    "the token is not active",
                )
            })?;
        let sub = claims["sub"].as_str().unwrap_or_default();
        let scopes: Vec<&str> = claims["scope"].as_str().unwrap_or("").split(' ').collect();
        if !scopes.contains(&"openid") {
            return Err(OAuthError::new(
                StatusCode::FORBIDDEN,
                "insufficient_scope",
                "userinfo needs the openid scope",
            ));
        }
        let mut info = json!({ "sub": sub });
        if let Some(user) = self.users.get(sub).await {
            add_profile_claims(&mut info, &user, &scopes);
        }
        Ok(info)
    }

    pub async fn introspect(
        &self,
        headers: &HeaderMap,
        form: TokenForm,
    ) -> Result<Value, OAuthError> {
        let (client, token) = self.authenticated_token(headers, &form).await?;
        // RFC 7662 §2.1: introspection is for authenticated clients; a public
        // client proves nothing by naming itself.
        if client.client_type == portcullis_config::sso::ClientType::Public {
            return Err(OAuthError::invalid_client(
                "introspection needs client authentication",
            ));
        }
        if form.token_type_hint.as_deref() != Some("refresh_token") {
            if let Some(claims) = self.active_access_token(token).await {
                let mut out = json!({ "active": true, "token_type": "access_token" });
                for key in [
                    "iss",
                    "sub",
                    "aud",
                    "exp",
                    "iat",
                    "nbf",
                    "jti",
                    "client_id",
                    "scope",
                    "roles",
                    "groups",
                ] {
                    if let Some(value) = claims.get(key) {
                        out[key] = value.clone();
                    }
                }
                return Ok(out);
            }
        }
        if let Some(record) = self.active_refresh(token).await {
            // A refresh token is only shown to the client it belongs to.
            if record["client_id"] == client.client_id.as_str() {
                return Ok(json!({
                    "active": true,
                    "token_type": "refresh_token",
                    "client_id": record["client_id"],
                    "sub": record["sub"],
                    "scope": record["scope"],
                    "exp": record["expires_at"],
                    "iss": self.config.issuer,
                }));
            }
        }
        Ok(json!({ "active": false }))
    }

    async fn active_refresh(&self, token: &str) -> Option<Value> {
        let key = digest(token);
        let record = self.store.get(&format!("refresh:{key}")).await.ok()??;
        if self.family_revoked(record["family"].as_str()?).await.ok()? {
            return None;
        }
        if let Some(rotated) = self.store.get(&format!("rotated:{key}")).await.ok()? {
            let at = rotated["at"].as_u64().unwrap_or(0);
            if now_secs().saturating_sub(at) > self.config.refresh_reuse_grace.0.as_secs() {
                return None;
            }
        }
        Some(record)
    }

    /// RFC 7009: 200 whether or not the token was known.
    pub async fn revoke(&self, headers: &HeaderMap, form: TokenForm) -> Result<(), OAuthError> {
        let (client, token) = self.authenticated_token(headers, &form).await?;
        if let Some(record) = self.active_refresh(token).await {
            if record["client_id"] == client.client_id.as_str() {
                if let Some(family) = record["family"].as_str() {
                    self.revoke_family(family, "revoked_by_client").await?;
                }
            }
            return Ok(());
        }
        if let Some(claims) = self.active_access_token(token).await {
            if claims["client_id"] == client.client_id.as_str() {
                let jti = claims["jti"].as_str().unwrap_or_default();
                let left = claims["exp"]
                    .as_u64()
                    .unwrap_or(0)
                    .saturating_sub(now_secs());
                let _ = self
                    .store
                    .put(
                        &format!("revoked_jti:{jti}"),
                        &json!(true),
                        Duration::from_secs(left.max(1)),
                    )
                    .await;
                self.audit(
                    json!({ "event": "token_revoked", "client_id": client.client_id, "jti": jti }),
                );
            }
        }
        Ok(())
    }
}
