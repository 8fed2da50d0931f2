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
use portcullis_config::sso::{Client, GrantType, SigningAlgorithm};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use crate::clients::ClientAuth;
use crate::flow::CodeGrant;
use crate::keys::now_secs;
use crate::mfa::Methods;
use crate::oauth::{self, random_id, AccessClaims, OAuthError};
use crate::store::digest;
use crate::Sso;

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
    /// The SSO session the grant began in: it ends with it (unless
    /// `offline_access`).
    #[serde(default)]
    sid: Option<String>,
    /// How the user signed in; refreshed tokens say the same.
    #[serde(default)]
    methods: Methods,
}

/// How long a reuse waits for the first use's answer.
const SUCCESSOR_WAIT: Duration = Duration::from_secs(2);

fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The answer to a refresh, kept for a retry within the grace, sealed
/// (AES-256-GCM) with a key derived from the refresh token it answered:
/// the store never holds a usable token, and only the holder of the old
/// refresh token can open it.
mod successor {
    use base64::Engine;
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
    use serde_json::Value;

    fn key(token: &str) -> Option<LessSafeKey> {
        let mut input = b"portcullis-refresh-successor\0".to_vec();
        input.extend_from_slice(token.as_bytes());
        let digest = ring::digest::digest(&ring::digest::SHA256, &input);
        UnboundKey::new(&AES_256_GCM, digest.as_ref())
            .ok()
            .map(LessSafeKey::new)
    }

    pub fn seal(token: &str, answer: &Value) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rand::fill(&mut nonce[..]);
        let mut data = answer.to_string().into_bytes();
        let sealed = key(token).and_then(|k| {
            k.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut data)
                .ok()
        });
        if sealed.is_none() {
            return String::new();
        }
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out)
    }

    pub fn open(token: &str, sealed: &str) -> Option<Value> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(sealed)
            .ok()?;
        let (nonce, data) = bytes.split_at_checked(NONCE_LEN)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut data = data.to_vec();
        let plain = key(token)?
            .open_in_place(nonce, Aad::empty(), &mut data)
            .ok()?;
        serde_json::from_slice(plain).ok()
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn only_the_old_token_opens_its_answer() {
            let answer = serde_json::json!({ "access_token": "a", "refresh_token": "r" });
            let sealed = super::seal("old-token", &answer);
            assert_eq!(super::open("old-token", &sealed), Some(answer));
            assert_eq!(super::open("another-token", &sealed), None);
            assert_eq!(super::open("old-token", "AAAA"), None);
        }
    }
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
                methods: None,
            },
        )?;
        self.audit(
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
            sid: grant.sid.clone(),
            methods: grant.methods.clone(),
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
                self.audit(json!({ "event": "login_failed", "grant": "password",
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
        // The password grant knows no second step: an account with a second
        // factor (or one this client or its roles require) never passes
        // on a password alone.
        let has_factor = matches!(self.directory.totp(&user.username).await, Ok(Some(_)))
            || !matches!(self.directory.passkeys(&user.username).await, Ok(p) if p.is_empty());
        if has_factor || crate::mfa::required(&self.config, Some(client), &user, None) {
            self.audit(json!({ "event": "login_refused", "grant": "password",
                "client_id": client.client_id, "sub": user.username, "reason": "second factor" }));
            return Err(invalid_grant(
                "this account signs in with a second factor: use the authorization code flow",
            ));
        }
        let lifetimes = client.lifetimes(&self.config.defaults);
        let record = RefreshRecord {
            family: random_id(16),
            client_id: client.client_id.clone(),
            sub: user.username.clone(),
            scope: requested.to_owned(),
            auth_time: now_secs(),
            expires_at: now_secs() + lifetimes.refresh_token_ttl.0.as_secs(),
            sid: None,
            methods: Methods::password(),
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
        // A user disabled or deleted since: no more tokens.
        if self
            .users
            .get(&record.sub)
            .await
            .is_none_or(|user| user.disabled)
        {
            return Err(invalid_grant("the user is disabled or no longer exists"));
        }
        let offline = record.scope.split(' ').any(|s| s == "offline_access");
        if let Some(sid) = record.sid.as_deref().filter(|_| !offline) {
            if self.session_ended(sid).await {
                return Err(invalid_grant("the session this grant began in has ended"));
            }
        }
        // Rotation: the first use marks the token rotated (atomically) and
        // leaves its answer, sealed with the token itself; a reuse within
        // the grace gets that same answer (an idempotent retry: no second
        // chain); later, or with no grace, reuse revokes the grant.
        let now_ms = now_millis();
        let ttl = Duration::from_secs(record.expires_at.saturating_sub(now_secs()).max(1));
        let marker = format!("rotated:{key}");
        let first = self
            .store
            .put_new(&marker, &json!({ "at_ms": now_ms }), ttl)
            .await
            .map_err(store_error)?;
        if !first {
            return self.reuse(token, &marker, &record).await;
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
        let answer = self
            .issue_for_user(client, &record, None, "refresh_token")
            .await?;
        let sealed = successor::seal(token, &answer);
        self.store
            .put(
                &marker,
                &json!({ "at_ms": now_ms, "successor": sealed }),
                ttl,
            )
            .await
            .map_err(store_error)?;
        Ok(answer)
    }

    /// A rotated refresh token came back.
    async fn reuse(
        &self,
        token: &str,
        marker: &str,
        record: &RefreshRecord,
    ) -> Result<Value, OAuthError> {
        let grace_ms = self.config.refresh_reuse_grace.0.as_millis() as u64;
        // The first use may still be issuing: its answer lands shortly.
        let deadline = tokio::time::Instant::now() + SUCCESSOR_WAIT;
        loop {
            let rotation = self.store.get(marker).await.map_err(store_error)?;
            let at_ms = rotation
                .as_ref()
                .and_then(|r| r["at_ms"].as_u64())
                .unwrap_or(0);
            if grace_ms == 0 || now_millis().saturating_sub(at_ms) > grace_ms {
                self.revoke_family(&record.family, "refresh_reuse").await?;
                return Err(invalid_grant(
                    "the refresh token was already used; the grant is revoked",
                ));
            }
            if let Some(sealed) = rotation.as_ref().and_then(|r| r["successor"].as_str()) {
                let answer = successor::open(token, sealed)
                    .ok_or_else(|| invalid_grant("the refresh token was already used"))?;
                self.audit(json!({ "event": "refresh_retried", "family": record.family,
                    "client_id": record.client_id, "sub": record.sub }));
                return Ok(answer);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(invalid_grant("the refresh token was already used"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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
        let user = self.users.get(&record.sub).await;
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
                methods: Some(&record.methods),
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
            let id_algorithm = id_token_algorithm(client);
            let now = now_secs();
            let mut claims = json!({
                "iss": self.config.issuer,
                "sub": record.sub,
                "aud": client.client_id,
                "azp": client.client_id,
                "exp": now + lifetimes.id_token_ttl.0.as_secs(),
                "auth_time": record.auth_time,
                "at_hash": oauth::at_hash(&access.token, oauth::hash_algorithm(id_algorithm)),
            });
            if let Some(nonce) = nonce {
                claims["nonce"] = nonce.into();
            }
            if let Some(sid) = &record.sid {
                claims["sid"] = sid.clone().into();
            }
            claims["amr"] = record.methods.as_slice().into();
            claims["acr"] = record.methods.acr().into();
            if let Some(user) = &user {
                add_profile_claims(&mut claims, user, &scopes);
            }
            body["id_token"] = oauth::sign_id_token(&self.keys, id_algorithm, claims)?.into();
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
        self.audit(
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

    /// How long any refresh token may live: how long a revocation must be
    /// remembered.
    pub fn longest_refresh_lifetime(&self) -> Duration {
        self.config
            .clients
            .iter()
            .map(|c| c.lifetimes(&self.config.defaults).refresh_token_ttl.0)
            .max()
            .unwrap_or(Duration::from_secs(30 * 24 * 3600))
    }

    pub async fn revoke_family(&self, family: &str, reason: &str) -> Result<(), OAuthError> {
        let longest = self.longest_refresh_lifetime();
        self.store
            .put(
                &format!("revoked_family:{family}"),
                &json!({ "reason": reason, "at": now_secs() }),
                longest,
            )
            .await
            .map_err(store_error)?;
        self.audit(json!({ "event": "grant_revoked", "reason": reason, "family": family }));
        Ok(())
    }
}

/// A client's ID token algorithm: its choice, or RS256 (OpenID Connect
/// Core §15.1: every relying party can verify it).
pub fn id_token_algorithm(client: &Client) -> SigningAlgorithm {
    client
        .id_token_signed_response_alg
        .unwrap_or(SigningAlgorithm::RS256)
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
