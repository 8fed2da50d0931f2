//! Where codes, sessions, refresh tokens, consents and login counters live:
//! in memory (one process) or Redis (several replicas). Keys of secrets
//! (codes, refresh tokens, session ids) are their SHA-256, so neither a
//! memory dump nor a Redis `KEYS *` yields a usable credential.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
#[error("store unavailable: {0}")]
pub struct StoreError(pub String);

#[async_trait]
pub trait Store: Send + Sync {
    async fn put(&self, key: &str, value: &Value, ttl: Duration) -> Result<(), StoreError>;
    /// Stores only when the key is absent; true when this call stored it.
    async fn put_new(&self, key: &str, value: &Value, ttl: Duration) -> Result<bool, StoreError>;
    async fn get(&self, key: &str) -> Result<Option<Value>, StoreError>;
    /// Reads and deletes in one step: of two concurrent callers, one wins.
    async fn take(&self, key: &str) -> Result<Option<Value>, StoreError>;
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// Adds one; the key expires `ttl` after it was created.
    async fn incr(&self, key: &str, ttl: Duration) -> Result<u64, StoreError>;
}

/// SHA-256 hex of a secret, for use as (part of) a key.
pub fn digest(secret: &str) -> String {
    let hash = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    hash.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// One process: a map with expiry, swept as it is used.
#[derive(Default)]
pub struct MemoryStore {
    entries: Mutex<HashMap<String, (Value, Instant)>>,
    writes: std::sync::atomic::AtomicU64,
}

/// A sweep of expired entries every this many writes.
const SWEEP_EVERY: u64 = 1024;

impl MemoryStore {
    fn with<R>(&self, f: impl FnOnce(&mut HashMap<String, (Value, Instant)>) -> R) -> R {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut entries)
    }

    fn written(&self) {
        let n = self
            .writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n % SWEEP_EVERY == SWEEP_EVERY - 1 {
            let now = Instant::now();
            self.with(|entries| entries.retain(|_, (_, until)| *until > now));
        }
    }
}

fn live(entry: Option<&(Value, Instant)>) -> Option<&Value> {
    entry
        .filter(|(_, until)| *until > Instant::now())
        .map(|(v, _)| v)
}

#[async_trait]
impl Store for MemoryStore {
    async fn put(&self, key: &str, value: &Value, ttl: Duration) -> Result<(), StoreError> {
        self.with(|e| e.insert(key.to_owned(), (value.clone(), Instant::now() + ttl)));
        self.written();
        Ok(())
    }

    async fn put_new(&self, key: &str, value: &Value, ttl: Duration) -> Result<bool, StoreError> {
        let stored = self.with(|e| {
            if live(e.get(key)).is_some() {
                return false;
            }
            e.insert(key.to_owned(), (value.clone(), Instant::now() + ttl));
            true
        });
        self.written();
        Ok(stored)
    }

    async fn get(&self, key: &str) -> Result<Option<Value>, StoreError> {
        Ok(self.with(|e| live(e.get(key)).cloned()))
    }

    async fn take(&self, key: &str) -> Result<Option<Value>, StoreError> {
        Ok(self.with(|e| {
            e.remove(key)
                .filter(|(_, until)| *until > Instant::now())
                .map(|(v, _)| v)
        }))
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.with(|e| e.remove(key));
        Ok(())
    }

    async fn incr(&self, key: &str, ttl: Duration) -> Result<u64, StoreError> {
        let n = self.with(|e| {
            let now = Instant::now();
            let entry = e
                .entry(key.to_owned())
                .or_insert_with(|| (Value::from(0u64), now + ttl));
            if entry.1 <= now {
                *entry = (Value::from(0u64), now + ttl);
            }
            let n = entry.0.as_u64().unwrap_or(0) + 1;
            entry.0 = Value::from(n);
            n
        });
        self.written();
        Ok(n)
    }
}

/// Several replicas: every operation is one Redis command (or script), so
/// single use (`take` = GETDEL, `put_new` = SET NX) holds across replicas.
pub struct RedisStore {
    client: redis::Client,
    prefix: String,
    connection: tokio::sync::Mutex<Option<redis::aio::ConnectionManager>>,
    timeout: Duration,
}

/// INCR that sets the expiry when it creates the key.
const INCR_SCRIPT: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n
";

impl RedisStore {
    pub fn new(url: &str, prefix: &str) -> Result<RedisStore, StoreError> {
        Ok(RedisStore {
            client: redis::Client::open(url).map_err(|e| StoreError(e.to_string()))?,
            prefix: prefix.to_owned(),
            connection: tokio::sync::Mutex::new(None),
            timeout: Duration::from_secs(2),
        })
    }

    async fn connection(&self) -> Result<redis::aio::ConnectionManager, StoreError> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = slot.as_ref() {
            return Ok(connection.clone());
        }
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(self.timeout)
            .set_response_timeout(self.timeout)
            .set_number_of_retries(1);
        let connection = tokio::time::timeout(
            self.timeout * 2,
            redis::aio::ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await
        .map_err(|_| StoreError("connecting to Redis timed out".into()))?
        .map_err(|e| StoreError(e.to_string()))?;
        *slot = Some(connection.clone());
        Ok(connection)
    }

    async fn run<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, StoreError> {
        let mut connection = self.connection().await?;
        tokio::time::timeout(self.timeout, cmd.query_async(&mut connection))
            .await
            .map_err(|_| StoreError("Redis timed out".into()))?
            .map_err(|e| StoreError(e.to_string()))
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

fn millis(ttl: Duration) -> u64 {
    (ttl.as_millis() as u64).max(1)
}

fn parse(text: Option<String>) -> Option<Value> {
    text.and_then(|t| serde_json::from_str(&t).ok())
}

#[async_trait]
impl Store for RedisStore {
    async fn put(&self, key: &str, value: &Value, ttl: Duration) -> Result<(), StoreError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(key))
            .arg(value.to_string())
            .arg("PX")
            .arg(millis(ttl));
        self.run::<()>(cmd).await
    }

    async fn put_new(&self, key: &str, value: &Value, ttl: Duration) -> Result<bool, StoreError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(key))
            .arg(value.to_string())
            .arg("NX")
            .arg("PX")
            .arg(millis(ttl));
        Ok(self.run::<Option<String>>(cmd).await?.is_some())
    }

    async fn get(&self, key: &str) -> Result<Option<Value>, StoreError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.key(key));
        Ok(parse(self.run(cmd).await?))
    }

    async fn take(&self, key: &str) -> Result<Option<Value>, StoreError> {
        let mut cmd = redis::cmd("GETDEL");
        cmd.arg(self.key(key));
        Ok(parse(self.run(cmd).await?))
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(self.key(key));
        self.run::<()>(cmd).await
    }

    async fn incr(&self, key: &str, ttl: Duration) -> Result<u64, StoreError> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(INCR_SCRIPT)
            .arg(1)
            .arg(self.key(key))
            .arg(millis(ttl));
        self.run(cmd).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn single_use_and_expiry() {
        let store = MemoryStore::default();
        let ttl = Duration::from_secs(60);
        store.put("code:a", &json!({"x": 1}), ttl).await.unwrap();
        assert_eq!(store.take("code:a").await.unwrap(), Some(json!({"x": 1})));
        assert_eq!(store.take("code:a").await.unwrap(), None);
        assert!(store.put_new("k", &json!(1), ttl).await.unwrap());
        assert!(!store.put_new("k", &json!(2), ttl).await.unwrap());
        assert_eq!(store.get("k").await.unwrap(), Some(json!(1)));
        store
            .put("short", &json!(1), Duration::from_millis(1))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(store.get("short").await.unwrap(), None);
        assert!(store.put_new("short", &json!(2), ttl).await.unwrap());
        assert_eq!(store.incr("n", ttl).await.unwrap(), 1);
        assert_eq!(store.incr("n", ttl).await.unwrap(), 2);
    }
}
