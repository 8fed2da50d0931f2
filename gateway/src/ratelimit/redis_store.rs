//! The Redis store: one `EVALSHA` of a GCRA script per decision (the same
//! algorithm as the memory store), on a multiplexed connection that
//! reconnects by itself. Every call has a timeout; after a failure Redis is
//! skipped for a moment, so a dead Redis costs no timeout per request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use portcullis_config as config;
use redis::aio::ConnectionManager;

use super::Outcome;

/// GCRA with the server's clock (one clock for every replica). Times in
/// microseconds. Returns {allowed, retry_after, remaining, reset}.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - interval * burst
if now < allow_at then
  return {0, allow_at - now, 0, tat - now}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
local remaining = math.floor((now + interval * (burst - 1) - new_tat) / interval)
return {1, 0, remaining, new_tat - now}
"#;

/// How long Redis is skipped after a failure.
const BACKOFF: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("{0}")]
    Client(#[from] redis::RedisError),
    #[error("timed out")]
    Timeout,
    #[error("skipped after a recent failure")]
    Backoff,
    #[error("connection task failed")]
    Task,
}

/// A single server (reconnecting manager) or a cluster (topology-aware).
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

enum Client {
    Single(redis::Client),
    Cluster(redis::cluster::ClusterClient),
}

pub struct RedisStore {
    client: Client,
    connection: tokio::sync::Mutex<Option<Connection>>,
    script: redis::Script,
    timeout: Duration,
    epoch: Instant,
    down_until_ms: AtomicU64,
    control: tokio::runtime::Handle,
}

impl RedisStore {
    pub fn new(spec: &config::Redis, control: tokio::runtime::Handle) -> Result<Self, RedisError> {
        let client = match &spec.url {
            Some(url) => Client::Single(redis::Client::open(url.expose())?),
            None => Client::Cluster(
                redis::cluster::ClusterClientBuilder::new(
                    spec.cluster.iter().map(|n| n.expose().to_owned()),
                )
                .connection_timeout(spec.timeout.0)
                .response_timeout(spec.timeout.0)
                .retries(1)
                .build()?,
            ),
        };
        Ok(RedisStore {
            client,
            connection: tokio::sync::Mutex::new(None),
            script: redis::Script::new(GCRA),
            timeout: spec.timeout.0,
            epoch: Instant::now(),
            down_until_ms: AtomicU64::new(0),
            control,
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    async fn connection(&self) -> Result<Connection, RedisError> {
        let mut slot = tokio::time::timeout(self.timeout, self.connection.lock())
            .await
            .map_err(|_| RedisError::Timeout)?;
        if let Some(connection) = slot.as_ref() {
            return Ok(connection.clone());
        }
        // The connection's driver task lives on the control runtime, which
        // outlives every proxy worker.
        let connect = match &self.client {
            Client::Single(client) => {
                let client = client.clone();
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(self.timeout)
                    .set_response_timeout(self.timeout)
                    .set_number_of_retries(1);
                self.control.spawn(async move {
                    ConnectionManager::new_with_config(client, config)
                        .await
                        .map(Connection::Single)
                })
            }
            Client::Cluster(client) => {
                let client = client.clone();
                self.control.spawn(async move {
                    client.get_async_connection().await.map(Connection::Cluster)
                })
            }
        };
        let connection = tokio::time::timeout(self.timeout * 2, connect)
            .await
            .map_err(|_| RedisError::Timeout)?
            .map_err(|_| RedisError::Task)??;
        *slot = Some(connection.clone());
        Ok(connection)
    }

    /// One command (GET, SET, DEL…) with the store's timeout; keys get the
    /// caller's own prefix. Cluster-safe for single-key commands.
    pub async fn command<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
    ) -> Result<T, RedisError> {
        tokio::time::timeout(self.timeout, async {
            let connection = self.connection().await?;
            let reply: T = match connection {
                Connection::Single(mut c) => cmd.query_async(&mut c).await?,
                Connection::Cluster(mut c) => cmd.query_async(&mut c).await?,
            };
            Ok::<_, RedisError>(reply)
        })
        .await
        .map_err(|_| RedisError::Timeout)
        .and_then(|r| r)
    }

    /// One decision for `base` + the key digest.
    pub async fn decide(
        &self,
        base: &str,
        key: u64,
        interval_us: u64,
        burst: u32,
    ) -> Result<Outcome, RedisError> {
        if self.down_until_ms.load(Ordering::Relaxed) > self.now_ms() {
            return Err(RedisError::Backoff);
        }
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, async {
            let connection = self.connection().await?;
            let key = format!("{{{base}:{key:016x}}}");
            let mut invocation = self.script.key(key);
            invocation.arg(interval_us).arg(burst);
            let reply: Vec<i64> = match connection {
                Connection::Single(mut c) => invocation.invoke_async(&mut c).await?,
                Connection::Cluster(mut c) => invocation.invoke_async(&mut c).await?,
            };
            Ok::<_, RedisError>(reply)
        })
        .await
        .map_err(|_| RedisError::Timeout)
        .and_then(|r| r);
        crate::metrics::metrics()
            .redis_latency
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(reply) if reply.len() == 4 => {
                let us = |v: i64| Duration::from_micros(v.max(0) as u64);
                Ok(Outcome {
                    allowed: reply[0] == 1,
                    retry_after: us(reply[1]),
                    remaining: reply[2].max(0) as u64,
                    reset: us(reply[3]),
                })
            }
            Ok(reply) => {
                log::warn!("redis rate-limit script answered {reply:?}");
                Err(RedisError::Task)
            }
            Err(e) => {
                crate::metrics::metrics().redis_errors.inc();
                self.down_until_ms.store(
                    self.now_ms() + BACKOFF.as_millis() as u64,
                    Ordering::Relaxed,
                );
                log::warn!("redis rate-limit store failing ({e}); using the configured fallback for {BACKOFF:?}");
                Err(e)
            }
        }
    }
}
