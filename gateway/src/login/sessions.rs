//! Where browser sessions live: in memory (one replica) or in Redis (every
//! replica). The record in the store is the only truth about a session:
//! no replica caches it, so a logout or a back-channel logout on one
//! replica ends the session on every replica at the next request.
//!
//! Besides the records, the store keeps:
//! - an index from the provider's session (`sid`) and user (`sub`) to the
//!   gateway sessions they began, for back-channel logout;
//! - a short refresh lease per session, so one replica at a time refreshes
//!   its tokens (see `Login::session_token`);
//! - the `jti` of every logout token seen, against replays.
//!
//! Every Redis operation touches one key, so it works on a cluster too.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ratelimit::RedisStore;

/// How long logins in progress are kept: a browser may take this long at
/// the provider's login page.
pub const PENDING_TTL: Duration = Duration::from_secs(600);

/// The store failed (Redis down or slow): the caller fails closed.
#[derive(Debug, thiserror::Error)]
#[error("session store: {0}")]
pub struct StoreError(String);

/// A login in progress, keyed by the digest of its `state`.
#[derive(Serialize, Deserialize)]
pub struct Pending {
    pub verifier: String,
    pub nonce: String,
    pub return_to: String,
    pub redirect_uri: String,
}

/// A session: the tokens it stands for, and who it is at the provider.
#[derive(Clone, Serialize, Deserialize)]
pub struct Session {
    pub access_token: Arc<str>,
    pub refresh_token: Option<String>,
    pub id_token: Option<String>,
    /// Unix seconds: the access token's expiry, and the session's.
    pub access_expires_at: u64,
    /// Seconds the access token was issued for (how early to refresh).
    #[serde(default)]
    pub access_lifetime: u64,
    pub session_expires_at: u64,
    /// The ID token's `sub` and `sid`: what a back-channel logout names.
    #[serde(default)]
    pub sub: Option<String>,
    #[serde(default)]
    pub sid: Option<String>,
}

/// Who a back-channel logout ends: one provider session, or every session
/// of a user.
pub enum Holder<'a> {
    ProviderSession(&'a str),
    User(&'a str),
}

impl Holder<'_> {
    fn index_key(&self) -> String {
        match self {
            Holder::ProviderSession(sid) => format!("sid:{}", super::digest(sid)),
            Holder::User(sub) => format!("sub:{}", super::digest(sub)),
        }
    }
}

/// Releases a refresh lease (Redis) when dropped is not possible in async
/// code; the caller releases it with [`SessionStore::release`]. The lease
/// also expires by itself, so a replica that dies while refreshing blocks
/// the session for at most [`LEASE`].
pub struct Lease {
    key: String,
    token: String,
}

/// Longest a refresh may hold its session's lease: longer than the token
/// request's timeout, so a lease never expires under a live refresh.
pub const LEASE: Duration = Duration::from_secs(10);

pub enum SessionStore {
    Memory(Arc<MemoryStore>),
    Redis {
        redis: Arc<RedisStore>,
        prefix: String,
    },
}

/// One replica's sessions.
pub struct MemoryStore {
    pending: moka::sync::Cache<String, Arc<Pending>>,
    sessions: moka::sync::Cache<String, Session>,
    index: moka::sync::Cache<String, Arc<Mutex<Vec<String>>>>,
    seen: moka::sync::Cache<String, ()>,
}

impl MemoryStore {
    pub fn new(max_sessions: u64) -> MemoryStore {
        let week = Duration::from_secs(7 * 24 * 3600);
        MemoryStore {
            pending: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(PENDING_TTL)
                .build(),
            sessions: moka::sync::Cache::builder()
                .max_capacity(max_sessions)
                .time_to_live(week)
                .build(),
            index: moka::sync::Cache::builder()
                .max_capacity(max_sessions)
                .time_to_live(week)
                .build(),
            seen: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(LOGOUT_TOKEN_MEMORY)
                .build(),
        }
    }
}

/// How long a logout token's `jti` is remembered (longer than any logout
/// token is accepted after its `iat`).
pub const LOGOUT_TOKEN_MEMORY: Duration = Duration::from_secs(15 * 60);

/// Compare-and-delete: releases a lease only if it is still ours.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

fn redis_error(e: impl std::fmt::Display) -> StoreError {
    log::warn!("login: redis: {e}");
    StoreError(e.to_string())
}

impl SessionStore {
    fn key(prefix: &str, kind: &str, key: &str) -> String {
        format!("{prefix}:{kind}:{key}")
    }

    /// A JSON value stored under one key (GET, GETDEL).
    async fn fetch<T: serde::de::DeserializeOwned>(
        redis: &RedisStore,
        cmd: &redis::Cmd,
    ) -> Result<Option<T>, StoreError> {
        let value: Option<String> = Self::run(redis, cmd).await?;
        Ok(value.and_then(|v| serde_json::from_str(&v).ok()))
    }

    async fn run<T: redis::FromRedisValue>(
        redis: &RedisStore,
        cmd: &redis::Cmd,
    ) -> Result<T, StoreError> {
        redis.command(cmd).await.map_err(redis_error)
    }

    pub async fn put_pending(&self, key: &str, pending: Pending) -> Result<(), StoreError> {
        match self {
            SessionStore::Memory(m) => {
                m.pending.insert(key.to_owned(), Arc::new(pending));
                Ok(())
            }
            SessionStore::Redis { redis, prefix } => {
                let value = serde_json::to_string(&pending).map_err(redis_error)?;
                let mut cmd = redis::cmd("SET");
                cmd.arg(Self::key(prefix, "login", key))
                    .arg(value)
                    .arg("EX")
                    .arg(PENDING_TTL.as_secs());
                Self::run(redis, &cmd).await
            }
        }
    }

    /// Single use: of two callbacks with one state, one wins.
    pub async fn take_pending(&self, key: &str) -> Result<Option<Arc<Pending>>, StoreError> {
        match self {
            SessionStore::Memory(m) => Ok(m.pending.remove(key)),
            SessionStore::Redis { redis, prefix } => {
                let mut cmd = redis::cmd("GETDEL");
                cmd.arg(Self::key(prefix, "login", key));
                Ok(Self::fetch(redis, &cmd).await?.map(Arc::new))
            }
        }
    }

    /// A new session, indexed by its provider session and user.
    pub async fn create(&self, key: &str, session: &Session, now: u64) -> Result<(), StoreError> {
        let ttl = session.session_expires_at.saturating_sub(now).max(1);
        let holders = [
            session.sid.as_deref().map(Holder::ProviderSession),
            session.sub.as_deref().map(Holder::User),
        ];
        match self {
            SessionStore::Memory(m) => {
                m.sessions.insert(key.to_owned(), session.clone());
                for holder in holders.iter().flatten() {
                    let list = m.index.get_with(holder.index_key(), Arc::default);
                    let mut list = list.lock().unwrap_or_else(|e| e.into_inner());
                    // Sessions that ended by themselves leave the list here.
                    list.retain(|k| m.sessions.contains_key(k));
                    list.push(key.to_owned());
                }
                Ok(())
            }
            SessionStore::Redis { redis, prefix } => {
                let value = serde_json::to_string(session).map_err(redis_error)?;
                let mut cmd = redis::cmd("SET");
                cmd.arg(Self::key(prefix, "session", key))
                    .arg(value)
                    .arg("EX")
                    .arg(ttl);
                Self::run::<()>(redis, &cmd).await?;
                for holder in holders.iter().flatten() {
                    let index = Self::key(prefix, "by", &holder.index_key());
                    let mut add = redis::cmd("SADD");
                    add.arg(&index).arg(key);
                    Self::run::<()>(redis, &add).await?;
                    // The index lives as long as its newest session.
                    let mut expire = redis::cmd("EXPIRE");
                    expire.arg(&index).arg(ttl).arg("GT");
                    let mut first = redis::cmd("EXPIRE");
                    first.arg(&index).arg(ttl).arg("NX");
                    Self::run::<()>(redis, &first).await?;
                    Self::run::<()>(redis, &expire).await?;
                }
                Ok(())
            }
        }
    }

    /// Replaces a live session's tokens; `false` when the session has
    /// ended meanwhile (a logout during a refresh stays a logout).
    pub async fn replace(&self, key: &str, session: &Session) -> Result<bool, StoreError> {
        match self {
            SessionStore::Memory(m) => {
                use moka::ops::compute::Op;
                let outcome = m.sessions.entry(key.to_owned()).and_compute_with(|old| {
                    if old.is_some() {
                        Op::Put(session.clone())
                    } else {
                        Op::Nop
                    }
                });
                Ok(matches!(
                    outcome,
                    moka::ops::compute::CompResult::ReplacedWith(_)
                ))
            }
            SessionStore::Redis { redis, prefix } => {
                let value = serde_json::to_string(session).map_err(redis_error)?;
                let mut cmd = redis::cmd("SET");
                cmd.arg(Self::key(prefix, "session", key))
                    .arg(value)
                    .arg("XX")
                    .arg("KEEPTTL");
                let done: Option<String> = Self::run(redis, &cmd).await?;
                Ok(done.is_some())
            }
        }
    }

    pub async fn get(&self, key: &str) -> Result<Option<Session>, StoreError> {
        match self {
            SessionStore::Memory(m) => Ok(m.sessions.get(key)),
            SessionStore::Redis { redis, prefix } => {
                let mut cmd = redis::cmd("GET");
                cmd.arg(Self::key(prefix, "session", key));
                Self::fetch(redis, &cmd).await
            }
        }
    }

    /// Ends a session; returns what it was (its ID token, for the
    /// provider's logout).
    pub async fn remove(&self, key: &str) -> Result<Option<Session>, StoreError> {
        match self {
            SessionStore::Memory(m) => Ok(m.sessions.remove(key)),
            SessionStore::Redis { redis, prefix } => {
                let mut cmd = redis::cmd("GETDEL");
                cmd.arg(Self::key(prefix, "session", key));
                Self::fetch(redis, &cmd).await
            }
        }
    }

    /// Ends every session of a provider session or user; how many.
    pub async fn remove_all(&self, holder: &Holder<'_>) -> Result<usize, StoreError> {
        match self {
            SessionStore::Memory(m) => {
                let Some(list) = m.index.remove(&holder.index_key()) else {
                    return Ok(0);
                };
                let keys = std::mem::take(&mut *list.lock().unwrap_or_else(|e| e.into_inner()));
                Ok(keys
                    .iter()
                    .filter(|k| m.sessions.remove(k.as_str()).is_some())
                    .count())
            }
            SessionStore::Redis { redis, prefix } => {
                let index = Self::key(prefix, "by", &holder.index_key());
                let mut members = redis::cmd("SMEMBERS");
                members.arg(&index);
                let keys: Vec<String> = Self::run(redis, &members).await?;
                let mut ended = 0;
                for key in &keys {
                    let mut del = redis::cmd("DEL");
                    del.arg(Self::key(prefix, "session", key));
                    ended += Self::run::<usize>(redis, &del).await?;
                }
                let mut del = redis::cmd("DEL");
                del.arg(&index);
                Self::run::<()>(redis, &del).await?;
                Ok(ended)
            }
        }
    }

    /// The right to refresh a session's tokens, across replicas; `None`
    /// while another replica holds it. (In memory the caller's per-session
    /// lock is the lease.)
    pub async fn lease(&self, key: &str) -> Result<Option<Lease>, StoreError> {
        match self {
            SessionStore::Memory(_) => Ok(Some(Lease {
                key: String::new(),
                token: String::new(),
            })),
            SessionStore::Redis { redis, prefix } => {
                let lease = Lease {
                    key: Self::key(prefix, "refreshing", key),
                    token: super::random(16),
                };
                let mut cmd = redis::cmd("SET");
                cmd.arg(&lease.key)
                    .arg(&lease.token)
                    .arg("NX")
                    .arg("PX")
                    .arg(LEASE.as_millis() as u64);
                let taken: Option<String> = Self::run(redis, &cmd).await?;
                Ok(taken.map(|_| lease))
            }
        }
    }

    pub async fn release(&self, lease: Lease) {
        if let SessionStore::Redis { redis, .. } = self {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(RELEASE).arg(1).arg(&lease.key).arg(&lease.token);
            let _ = Self::run::<i64>(redis, &cmd).await;
        }
    }

    /// Remembers a logout token's `jti`; `false` when it was seen before.
    pub async fn first_sight(&self, issuer: &str, jti: &str) -> Result<bool, StoreError> {
        let key = format!("jti:{}", super::digest(&format!("{issuer}\0{jti}")));
        match self {
            SessionStore::Memory(m) => {
                let entry = m.seen.entry(key).or_insert(());
                Ok(entry.is_fresh())
            }
            SessionStore::Redis { redis, prefix } => {
                let mut cmd = redis::cmd("SET");
                cmd.arg(Self::key(prefix, "seen", &key))
                    .arg(1)
                    .arg("NX")
                    .arg("EX")
                    .arg(LOGOUT_TOKEN_MEMORY.as_secs());
                let stored: Option<String> = Self::run(redis, &cmd).await?;
                Ok(stored.is_some())
            }
        }
    }
}
