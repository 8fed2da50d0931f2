//! OpenID Connect Back-Channel Logout 1.0, the provider's side: when an
//! SSO session ends, every client that signed in through it and registered
//! a `backchannel_logout_uri` gets a signed logout token naming the
//! session (`sid`) and the user (`sub`), and refresh tokens issued in the
//! session stop working (except `offline_access` grants, which outlive the
//! session by design).
//!
//! The clients of a session are remembered when a code is issued
//! (`session_clients:<sid>`); sending happens in the background, in
//! parallel, each with a timeout, so a slow client never delays the
//! user's logout.

use std::time::Duration;

use serde_json::{json, Value};

use crate::keys::now_secs;
use crate::oauth::{random_id, sign_typed};
use crate::store::digest;
use crate::Sso;

/// The event a logout token carries (§2.4).
const EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// A logout token is good for this long (it is sent at once).
const TOKEN_TTL: u64 = 120;
/// How long a client may take to answer.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// Most clients remembered per session.
const MAX_CLIENTS: usize = 64;

/// Most sessions remembered per user (the newest).
const MAX_USER_SESSIONS: usize = 100;

impl Sso {
    fn user_sessions_key(sub: &str) -> String {
        format!("user_sessions:{}", digest(sub))
    }

    /// Remembers a new session of `sub` (its `sid` and the digest its
    /// record is stored under), so an admin can end them all.
    pub(crate) async fn remember_user_session(&self, sub: &str, sid: &str, record: &str) {
        let key = Self::user_sessions_key(sub);
        let mut sessions = match self.store.get(&key).await {
            Ok(Some(Value::Array(items))) => items,
            _ => Vec::new(),
        };
        sessions.push(json!({ "sid": sid, "record": record, "created": now_secs() }));
        let excess = sessions.len().saturating_sub(MAX_USER_SESSIONS);
        sessions.drain(..excess);
        let _ = self
            .store
            .put(&key, &Value::Array(sessions), self.config.session.ttl.0)
            .await;
    }

    /// Ends every session of `sub`; how many were live.
    pub(crate) async fn end_all_sessions_of(self: std::sync::Arc<Self>, sub: &str) -> usize {
        let sessions = match self.store.take(&Self::user_sessions_key(sub)).await {
            Ok(Some(Value::Array(items))) => items,
            _ => return 0,
        };
        let mut ended = 0;
        for session in &sessions {
            let (Some(sid), Some(record)) = (session["sid"].as_str(), session["record"].as_str())
            else {
                continue;
            };
            if let Ok(Some(_)) = self.store.take(&format!("session:{record}")).await {
                ended += 1;
            }
            self.end_session_everywhere(sid, sub).await;
        }
        ended
    }

    /// The live sessions of `sub`: (`sid`, when it began), newest last.
    pub(crate) async fn sessions_of(&self, sub: &str) -> Vec<(String, u64)> {
        let sessions = match self.store.get(&Self::user_sessions_key(sub)).await {
            Ok(Some(Value::Array(items))) => items,
            _ => return Vec::new(),
        };
        let mut live = Vec::new();
        for session in &sessions {
            let (Some(sid), Some(record)) = (session["sid"].as_str(), session["record"].as_str())
            else {
                continue;
            };
            if let Ok(Some(_)) = self.store.get(&format!("session:{record}")).await {
                live.push((sid.to_owned(), session["created"].as_u64().unwrap_or(0)));
            }
        }
        live
    }

    /// Ends one session of `sub` (by its `sid`); whether it was live.
    pub(crate) async fn end_one_session(self: &std::sync::Arc<Self>, sub: &str, sid: &str) -> bool {
        let sessions = match self.store.get(&Self::user_sessions_key(sub)).await {
            Ok(Some(Value::Array(items))) => items,
            _ => return false,
        };
        let Some(record) = sessions
            .iter()
            .find(|s| s["sid"].as_str() == Some(sid))
            .and_then(|s| s["record"].as_str())
        else {
            return false;
        };
        let ended = matches!(
            self.store.take(&format!("session:{record}")).await,
            Ok(Some(_))
        );
        self.end_session_everywhere(sid, sub).await;
        ended
    }

    fn session_clients_key(sid: &str) -> String {
        format!("session_clients:{}", digest(sid))
    }

    /// Remembers that `client_id` signed in through session `sid`.
    pub(crate) async fn remember_client(&self, sid: &str, client_id: &str) {
        let key = Self::session_clients_key(sid);
        let mut clients: Vec<String> = match self.store.get(&key).await {
            Ok(Some(Value::Array(items))) => items
                .into_iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        if clients.iter().any(|c| c == client_id) || clients.len() >= MAX_CLIENTS {
            return;
        }
        clients.push(client_id.to_owned());
        let _ = self
            .store
            .put(&key, &json!(clients), self.config.session.ttl.0)
            .await;
    }

    /// Whether refresh tokens of session `sid` are dead (it ended).
    pub(crate) async fn session_ended(&self, sid: &str) -> bool {
        matches!(
            self.store
                .get(&format!("ended_session:{}", digest(sid)))
                .await,
            Ok(Some(_))
        )
    }

    /// The session `sid` of user `sub` has ended: its refresh tokens stop
    /// working, its clients are told.
    pub(crate) async fn end_session_everywhere(self: &std::sync::Arc<Self>, sid: &str, sub: &str) {
        let longest = self.longest_refresh_lifetime();
        let _ = self
            .store
            .put(
                &format!("ended_session:{}", digest(sid)),
                &json!({ "at": now_secs() }),
                longest,
            )
            .await;
        let clients = match self.store.take(&Self::session_clients_key(sid)).await {
            Ok(Some(Value::Array(items))) => items,
            _ => return,
        };
        let mut targets: Vec<(String, String, String)> = Vec::new();
        for id in clients.iter().filter_map(|id| id.as_str()) {
            let Some(client) = self.client(id).await else {
                continue;
            };
            let Some(uri) = client.backchannel_logout_uri.clone() else {
                continue;
            };
            if let Some(token) = self.logout_token(&client, sid, sub) {
                targets.push((client.client_id.clone(), uri, token));
            }
        }
        if targets.is_empty() {
            return;
        }
        for (client_id, uri, token) in targets {
            let http = self.http.clone();
            let sso = std::sync::Arc::clone(self);
            tokio::spawn(async move {
                let sent = http
                    .post(&uri)
                    .timeout(SEND_TIMEOUT)
                    .form(&[("logout_token", token.as_str())])
                    .send()
                    .await;
                let status = sent.map_or(0, |r| r.status().as_u16());
                sso.audit(
                    json!({ "event": "backchannel_logout", "client_id": client_id,
                    "status": status, "delivered": status == 200 }),
                );
            });
        }
    }

    /// A logout token for one client (§2.4), signed as its ID tokens are.
    fn logout_token(
        &self,
        client: &portcullis_config::sso::Client,
        sid: &str,
        sub: &str,
    ) -> Option<String> {
        let now = now_secs();
        let mut claims = json!({
            "iss": self.config.issuer,
            "aud": client.client_id,
            "iat": now,
            "exp": now + TOKEN_TTL,
            "jti": random_id(16),
            "sub": sub,
            "events": { EVENT: {} },
        });
        if client.backchannel_logout_session_required || !sid.is_empty() {
            claims["sid"] = sid.into();
        }
        let algorithm = crate::grants::id_token_algorithm(client);
        sign_typed(&self.keys, algorithm, "logout+jwt", &claims)
            .map_err(|e| log::error!("logout token: {}", e.description))
            .ok()
    }
}
