//! The token endpoint's grants: authorization code with PKCE, refresh token
//! with rotation and reuse detection, client credentials.
//!
//! Tokens issued from one code belong to a grant ("family"). Reusing a
//! redeemed code, or a rotated refresh token after the grace, revokes the
//! family: its refresh tokens stop working and introspection reports its
//! access tokens inactive.

use std::time::Duration;

use axum::http::StatusCode;
use base64::Engine;
use portcullis_config::sso::{Client, GrantType};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use crate::clients::ClientAuth;
use crate::flow::CodeGrant;
use crate::keys::now_secs;
use crate::oauth::{self, random_id, AccessClaims, OAuthError};
use crate::store::digest;
use crate::{audit, Sso};

#[derive(Deserialize)]
pub struct TokenRequest {
    pub grant_type: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub scope: Option<String>,
    pub code: Option<String>,
    pub redirect_uri: Option<String>,
    pub code_verifier: Option<String>,
    pub refresh_token: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub client_assertion_type: Option<String>,
    pub client_assertion: Option<String>,
}

/// A refresh token's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RefreshRecord {
    family: String,
    client_id: String,
    sub: String,
    scope: String,
    auth_time: u64,
    /// Seconds since the epoch when the family's refresh lifetime ends.
    expires_at: u64,
}

fn invalid_grant(description: &str) -> OAuthError {
    OAuthError::new(StatusCode::BAD_REQUEST, "invalid_grant", description)
}

fn store_error(e: crate::store::StoreError) -> OAuthError {
    log::error!("{e}");
    OAuthError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        "try again",
    )
}

fn require_grant(client: &Client, grant: GrantType, name: &str) -> Result<(), OAuthError> {
    if client.grants().contains(&grant) {
        Ok(())
    } else {
        Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            format!("this client may not use {name}"),
        ))
    }
}

impl Sso {
    pub async fn token(
        &self,
        headers: &axum::http::HeaderMap,
        peer: std::net::IpAddr,
        request: TokenRequest,
    ) -> Result<Value, OAuthError> {
        let client = self
            .authenticate_client(
                headers,
                ClientAuth {
                    client_id: request.client_id.as_deref(),
                    client_secret: request.client_secret.as_deref(),
                    assertion_type: request.client_assertion_type.as_deref(),
                    assertion: request.client_assertion.as_deref(),
                },
            )
            .await?;
        match request.grant_type.as_deref() {
            Some("client_credentials") => self.client_credentials(&client, request).await,
            Some("authorization_code") => self.authorization_code(&client, request).await,
            Some("refresh_token") => self.refresh(&client, request).await,
            Some("password") => self.password(&client, peer, request).await,
            Some(other) => Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                format!("grant type `{other}` is not supported"),
            )),
            None => Err(OAuthError::invalid_request("grant_type is required")),
        }
    }

    async fn client_credentials(
        &self,
        client: &Client,
        request: TokenRequest,
    ) -> Result<Value, OAuthError> {
        require_grant(client, GrantType::ClientCredentials, "client_credentials")?;
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
        let lifetime = client.lifetimes(&self.config.defaults).access_token_ttl.0;
        let access = oauth::sign_access_token(
            &self.keys,
            &AccessClaims {
                issuer: &self.config.issuer,
                subject: &client.client_id,
                audience: audience(client),
                client_id: &client.client_id,
                scope: &scope,
                roles: &client.roles,
                groups: &[],
                lifetime: lifetime.as_secs(),
            },
        )?;
        audit(
            json!({ "event": "token_issued", "grant": "client_credentials",
            "client_id": client.client_id, "scope": scope, "jti": access.jti,
            "expires_in": lifetime.as_secs() }),
        );
        let mut body = json!({
            "access_token": access.token,
            "token_type": "Bearer",
            "expires_in": lifetime.as_secs(),
        });
        if !scope.is_empty() {
            body["scope"] = scope.into();
        }
        Ok(body)
    }

    async fn authorization_code(
        &self,
        client: &Client,
        request: TokenRequest,
    ) -> Result<Value, OAuthError> {
        require_grant(client, GrantType::AuthorizationCode, "authorization_code")?;
        let code = request
            .code
            .as_deref()
            .ok_or_else(|| OAuthError::invalid_request("code is required"))?;
        let key = digest(code);
        let taken = self
            .store
            .take(&format!("code:{key}"))
            .await
            .map_err(store_error)?;
        let Some(grant) = taken.and_then(|v| serde_json::from_value::<CodeGrant>(v).ok()) else {
            // Redeemed before: whoever holds it now is not the client that
            // redeemed it first. Revoke what that redemption issued.
            if let Ok(Some(used)) = self.store.get(&format!("code_used:{key}")).await {
                if let Some(family) = used["family"].as_str() {
                    self.revoke_family(family, "code_reuse").await?;
                }
            }
            return Err(invalid_grant("the code is invalid, expired or used"));
        };
        if grant.client_id != client.client_id {
            return Err(invalid_grant("the code was issued to another client"));
        }
        if request.redirect_uri.as_deref() != Some(grant.redirect_uri.as_str()) {
            return Err(invalid_grant(
                "redirect_uri differs from the authorization request's",
            ));
        }
        match (&grant.code_challenge, request.code_verifier.as_deref()) {
            (Some(challenge), Some(verifier)) => {
                if !(43..=128).contains(&verifier.len()) {
                    return Err(invalid_grant("code_verifier must be 43 to 128 characters"));
                }
                let hash = ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes());
                let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(hash);
                if !bool::from(computed.as_bytes().ct_eq(challenge.as_bytes())) {
                    return Err(invalid_grant("PKCE verification failed"));
                }
            }
            (Some(_), None) => return Err(invalid_grant("code_verifier is required")),
            (None, Some(_)) => return Err(invalid_grant("no code_challenge was sent")),
            (None, None) => {}
        }
        let family = random_id(16);
        let lifetimes = client.lifetimes(&self.config.defaults);
        self.store
            .put(
                &format!("code_used:{key}"),
                &json!({ "family": family }),
                lifetimes
                    .refresh_token_ttl
                    .0
                    .max(lifetimes.access_token_ttl.0),
            )
            .await
            .map_err(store_error)?;
        let record = RefreshRecord {
            family,
            client_id: client.client_id.clone(),
            sub: grant.sub.clone(),
            scope: grant.scope.clone(),
            auth_time: grant.auth_time,
            expires_at: now_secs() + lifetimes.refresh_token_ttl.0.as_secs(),
        };
        self.issue_for_user(
            client,
            &record,
            grant.nonce.as_deref(),
            "authorization_code",
        )
        .await
    }

    /// The legacy resource-owner password grant: the same throttled check
    /// as the login form.
    async fn password(
        &self,
        client: &Client,
        peer: std::net::IpAddr,
        request: TokenRequest,
    ) -> Result<Value, OAuthError> {
        require_grant(client, GrantType::Password, "the password grant")?;
        let (Some(username), Some(password)) = (&request.username, &request.password) else {
            return Err(OAuthError::invalid_request(
                "username and password are required",
            ));
        };
        let requested = request.scope.as_deref().unwrap_or("openid");
        let allowed = crate::flow::allowed_scopes(client);
        if let Some(bad) = requested
            .split(' ')
            .find(|s| !s.is_empty() && !allowed.iter().any(|a| a == s))
        {
            return Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                format!("scope `{bad}` is not allowed"),
            ));
        }
        let outcome = self
            .users
            .login(
                self.store.as_ref(),
                &self.config.login,
                username.trim(),
                password,
                Some(peer),
            )
            .await
            .map_err(store_error)?;
        let user = match outcome {
            Ok(user) => user,
            Err(refused) => {
                audit(json!({ "event": "login_failed", "grant": "password",
                    "client_id": client.client_id, "username_digest": digest(username.trim()),
                    "ip": peer.to_string() }));
                return Err(match refused {
                    crate::users::LoginRefused::Locked(_) => OAuthError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "invalid_grant",
                        "too many failed attempts; try again later",
                    ),
                    crate::users::LoginRefused::Invalid => {
                        invalid_grant("wrong user name or password")
                    }
                });
            }
        };
        let lifetimes = client.lifetimes(&self.config.defaults);
        let record = RefreshRecord {
            family: random_id(16),
            client_id: client.client_id.clone(),
            sub: user.username.clone(),
            scope: requested.to_owned(),
            auth_time: now_secs(),
            expires_at: now_secs() + lifetimes.refresh_token_ttl.0.as_secs(),
        };
        self.issue_for_user(client, &record, None, "password").await
    }

    async fn refresh(&self, client: &Client, request: TokenRequest) -> Result<Value, OAuthError> {
        require_grant(client, GrantType::RefreshToken, "refresh_token")?;
        let token = request
            .refresh_token
            .as_deref()
            .ok_or_else(|| OAuthError::invalid_request("refresh_token is required"))?;
        let key = digest(token);
        let record: RefreshRecord = self
            .store
            .get(&format!("refresh:{key}"))
            .await
            .map_err(store_error)?
            .and_then(|v| serde_json::from_value(v).ok())
            .ok_or_else(|| invalid_grant("the refresh token is invalid or expired"))?;
        if record.client_id != client.client_id {
            return Err(invalid_grant(
                "the refresh token was issued to another client",
            ));
        }
        if self.family_revoked(&record.family).await? {
            return Err(invalid_grant("the grant was revoked"));
        }
        // Rotation: the first use marks the token rotated (atomically);
        // a later use within the grace is a concurrent refresh, after it
        // a replay.
        let now = now_secs();
        let ttl = Duration::from_secs(record.expires_at.saturating_sub(now).max(1));
        let first = self
            .store
            .put_new(&format!("rotated:{key}"), &json!({ "at": now }), ttl)
            .await
            .map_err(store_error)?;
        if !first {
            let rotated_at = self
                .store
                .get(&format!("rotated:{key}"))
                .await
                .map_err(store_error)?
                .and_then(|v| v["at"].as_u64())
                .unwrap_or(0);
            if now.saturating_sub(rotated_at) > self.config.refresh_reuse_grace.0.as_secs() {
                self.revoke_family(&record.family, "refresh_reuse").await?;
                return Err(invalid_grant(
                    "the refresh token was already used; the grant is revoked",
                ));
            }
        }
        let mut record = record;
        if let Some(scope) = request.scope.as_deref() {
            let granted: Vec<&str> = record.scope.split(' ').collect();
            if let Some(extra) = scope
                .split(' ')
                .find(|s| !s.is_empty() && !granted.contains(s))
            {
                return Err(OAuthError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_scope",
                    format!("scope `{extra}` was not granted"),
                ));
            }
            record.scope = scope.to_owned();
        }
        self.issue_for_user(client, &record, None, "refresh_token")
            .await
    }

    /// Access token, ID token (with `openid`) and a refresh token (when the
    /// client may refresh) for a user's grant.
    async fn issue_for_user(
        &self,
        client: &Client,
        record: &RefreshRecord,
        nonce: Option<&str>,
        grant: &str,
    ) -> Result<Value, OAuthError> {
        let user = self.users.get(self.store.as_ref(), &record.sub).await;
        let (roles, groups) = user
            .as_ref()
            .map(|u| (u.roles.clone(), u.groups.clone()))
            .unwrap_or_default();
        let lifetimes = client.lifetimes(&self.config.defaults);
        let access = oauth::sign_access_token(
            &self.keys,
            &AccessClaims {
                issuer: &self.config.issuer,
                subject: &record.sub,
                audience: audience(client),
                client_id: &client.client_id,
                scope: &record.scope,
                roles: &roles,
                groups: &groups,
                lifetime: lifetimes.access_token_ttl.0.as_secs(),
            },
        )?;
        self.store
            .put(
                &format!("at:{}", access.jti),
                &json!({ "family": record.family }),
                lifetimes.access_token_ttl.0,
            )
            .await
            .map_err(store_error)?;
        let mut body = json!({
            "access_token": access.token,
            "token_type": "Bearer",
            "expires_in": lifetimes.access_token_ttl.0.as_secs(),
            "scope": record.scope,
        });
        let scopes: Vec<&str> = record.scope.split(' ').collect();
        if scopes.contains(&"openid") {
            let now = now_secs();
            let mut claims = json!({
                "iss": self.config.issuer,
                "sub": record.sub,
                "aud": client.client_id,
                "azp": client.client_id,
                "exp": now + lifetimes.id_token_ttl.0.as_secs(),
                "auth_time": record.auth_time,
                "at_hash": oauth::at_hash(&access.token, access.algorithm),
            });
            if let Some(nonce) = nonce {
                claims["nonce"] = nonce.into();
            }
            if let Some(user) = &user {
                add_profile_claims(&mut claims, user, &scopes);
            }
            body["id_token"] = oauth::sign_id_token(&self.keys, claims)?.into();
        }
        if client.grants().contains(&GrantType::RefreshToken) {
            let refresh = random_id(32);
            let ttl = Duration::from_secs(record.expires_at.saturating_sub(now_secs()).max(1));
            self.store
                .put(
                    &format!("refresh:{}", digest(&refresh)),
                    &serde_json::to_value(record).unwrap_or_default(),
                    ttl,
                )
                .await
                .map_err(store_error)?;
            body["refresh_token"] = refresh.into();
        }
        audit(
            json!({ "event": "token_issued", "grant": grant, "client_id": client.client_id,
            "sub": record.sub, "scope": record.scope, "jti": access.jti }),
        );
        Ok(body)
    }

    pub async fn family_revoked(&self, family: &str) -> Result<bool, OAuthError> {
        Ok(self
            .store
            .get(&format!("revoked_family:{family}"))
            .await
            .map_err(store_error)?
            .is_some())
    }

    pub async fn revoke_family(&self, family: &str, reason: &str) -> Result<(), OAuthError> {
        let longest = self
            .config
            .clients
            .iter()
            .map(|c| c.lifetimes(&self.config.defaults).refresh_token_ttl.0)
            .max()
            .unwrap_or(Duration::from_secs(30 * 24 * 3600));
        self.store
            .put(
                &format!("revoked_family:{family}"),
                &json!({ "reason": reason, "at": now_secs() }),
                longest,
            )
            .await
            .map_err(store_error)?;
        audit(json!({ "event": "grant_revoked", "reason": reason, "family": family }));
        Ok(())
    }
}

pub fn audience(client: &Client) -> &[String] {
    if client.audience.is_empty() {
        std::slice::from_ref(&client.client_id)
    } else {
        client.audience.as_slice()
    }
}

/// Profile and email claims, by scope (OIDC Core §5.4), and roles.
pub fn add_profile_claims(
    claims: &mut Value,
    user: &portcullis_config::sso::User,
    scopes: &[&str],
) {
    if scopes.contains(&"profile") {
        claims["preferred_username"] = user.username.clone().into();
        if let Some(name) = &user.name {
            claims["name"] = name.clone().into();
        }
    }
    if scopes.contains(&"email") {
        if let Some(email) = &user.email {
            claims["email"] = email.clone().into();
            claims["email_verified"] = false.into();
        }
    }
    if scopes.contains(&"roles") || scopes.contains(&"profile") {
        claims["roles"] = user.roles.clone().into();
        claims["groups"] = user.groups.clone().into();
    }
}
