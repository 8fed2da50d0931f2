//! Rate limits per route: GCRA in memory (governor) or in Redis (one Lua
//! script call per decision, the same algorithm), with a configured answer
//! when Redis fails. Limiter state outlives config reloads.

mod redis_store;

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::Quota;
use http::{HeaderName, HeaderValue};
use portcullis_config as config;

use crate::metrics::metrics;

pub use redis_store::{RedisError, RedisStore};

type Local = governor::RateLimiter<
    u64,
    DefaultKeyedStateStore<u64>,
    DefaultClock,
    StateInformationMiddleware,
>;

/// What is counted.
#[derive(Debug, Clone)]
enum KeyPart {
    ClientIp,
    User,
    ClientId,
    ApiKey,
    Route,
    Header(HeaderName),
}

/// One compiled limit of a route.
pub struct Limit {
    name: Box<str>,
    keys: Vec<KeyPart>,
    route: Box<str>,
    count: u32,
    period: Duration,
    burst: u32,
    local: Arc<Local>,
    /// The share of this replica while Redis is away.
    fallback: Arc<Local>,
    policy: HeaderValue,
    redis_key: Box<str>,
    allowed: prometheus::IntCounter,
    limited: prometheus::IntCounter,
}

/// What a request offers for keys.
pub struct KeySource<'a> {
    pub client_ip: Option<IpAddr>,
    pub user: Option<&'a str>,
    pub client_id: Option<&'a str>,
    pub api_key: Option<&'a [u8]>,
    pub headers: &'a http::HeaderMap,
}

/// The outcome of all of a route's limits.
pub enum Decision {
    Allowed {
        /// `RateLimit` of the tightest limit, when configured to send it.
        header: Option<HeaderValue>,
    },
    Limited {
        retry_after_secs: u64,
        policy: HeaderValue,
        ratelimit: HeaderValue,
    },
    /// Redis failed and the mode is `fail_closed`.
    Unavailable,
}

/// The per-config rate limiter.
pub struct RateLimiter {
    routes: Vec<Vec<Limit>>,
    redis: Option<Arc<RedisStore>>,
    on_error: config::RedisFailure,
    headers_on_success: bool,
}

/// Limiter state by limit identity, kept across reloads.
#[derive(Default)]
pub struct LimiterRegistry {
    locals: Mutex<HashMap<String, Arc<Local>>>,
    redis: Mutex<Option<(String, Arc<RedisStore>)>>,
}

impl LimiterRegistry {
    fn local(&self, id: String, count: u32, period: Duration, burst: u32) -> Arc<Local> {
        let mut locals = self.locals.lock().unwrap_or_else(|e| e.into_inner());
        locals
            .entry(id)
            .or_insert_with(|| {
                let interval = period / count.max(1);
                let quota = Quota::with_period(interval.max(Duration::from_nanos(1)))
                    .map(|q| {
                        q.allow_burst(NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN))
                    })
                    .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN));
                Arc::new(
                    governor::RateLimiter::dashmap(quota)
                        .with_middleware::<StateInformationMiddleware>(),
                )
            })
            .clone()
    }

    /// The shared Redis connection for `spec` (also used for browser
    /// sessions).
    pub fn redis(
        &self,
        spec: &config::Redis,
        control: &tokio::runtime::Handle,
    ) -> Result<Arc<RedisStore>, RedisError> {
        let nodes: Vec<&str> = spec
            .url
            .iter()
            .chain(spec.cluster.iter())
            .map(|s| s.expose())
            .collect();
        let fingerprint = format!("{nodes:?}|{:?}|{}", spec.timeout, spec.key_prefix);
        let mut slot = self.redis.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((f, store)) = slot.as_ref() {
            if *f == fingerprint {
                return Ok(store.clone());
            }
        }
        let store = Arc::new(RedisStore::new(spec, control.clone())?);
        *slot = Some((fingerprint, store.clone()));
        Ok(store)
    }

    /// Drops idle keys so memory does not grow with every client seen.
    pub fn spawn_cleanup(self: &Arc<Self>, runtime: &tokio::runtime::Handle) {
        let weak = Arc::downgrade(self);
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                let Some(registry) = weak.upgrade() else {
                    return;
                };
                let locals: Vec<Arc<Local>> = registry
                    .locals
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .values()
                    .cloned()
                    .collect();
                for local in locals {
                    local.retain_recent();
                    local.shrink_to_fit();
                }
            }
        });
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("route `{route}`: {message}")]
    Invalid { route: String, message: String },
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
}

impl RateLimiter {
    pub fn compile(
        config: &config::FileConfig,
        registry: &LimiterRegistry,
        control: &tokio::runtime::Handle,
    ) -> Result<RateLimiter, LimitError> {
        let settings = &config.rate_limits;
        let redis = match (settings.store, &config.redis) {
            (config::RateLimitStore::Redis, Some(spec)) => Some(registry.redis(spec, control)?),
            _ => None,
        };
        let replicas = settings.replicas.unwrap_or(1).max(1);
        let mut routes = Vec::with_capacity(config.routes.len());
        for route in &config.routes {
            let mut limits = Vec::new();
            for (index, spec) in route.rate_limits.iter().enumerate() {
                let invalid = |message: String| LimitError::Invalid {
                    route: route.name.clone(),
                    message,
                };
                let (count, period) = config::parse_rate(&spec.rate).map_err(invalid)?;
                let burst = spec.burst.unwrap_or(count).max(1);
                let keys = spec
                    .key
                    .iter()
                    .map(|k| match k.as_str() {
                        "client_ip" => Ok(KeyPart::ClientIp),
                        "user" => Ok(KeyPart::User),
                        "client_id" => Ok(KeyPart::ClientId),
                        "api_key" => Ok(KeyPart::ApiKey),
                        "route" => Ok(KeyPart::Route),
                        other => other
                            .strip_prefix("header:")
                            .and_then(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                            .map(KeyPart::Header)
                            .ok_or_else(|| invalid(format!("unknown key `{other}`"))),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let name = spec.name.clone().unwrap_or_else(|| spec.key.join("+"));
                let id = format!("{}#{index}:{}:{}", route.name, spec.rate, burst);
                let local = registry.local(id.clone(), count, period, burst);
                let fallback = registry.local(
                    format!("{id}/{replicas}"),
                    (count / replicas).max(1),
                    period,
                    (burst / replicas).max(1),
                );
                let policy = HeaderValue::from_str(&format!(
                    "\"{}\";q={count};w={}",
                    sanitise_name(&name),
                    period.as_secs()
                ))
                .map_err(|e| invalid(e.to_string()))?;
                let prefix = config
                    .redis
                    .as_ref()
                    .map_or("portcullis", |r| r.key_prefix.as_str());
                limits.push(Limit {
                    name: sanitise_name(&name).into(),
                    keys,
                    route: route.name.as_str().into(),
                    count,
                    period,
                    burst,
                    local,
                    fallback,
                    policy,
                    // One key per decision, hash-tagged: Redis Cluster routes
                    // it to one slot, and the same scheme as the memory store.
                    redis_key: format!("{prefix}:rl:{}:{index}:{}", route.name, spec.rate).into(),
                    allowed: metrics().ratelimit_decisions.with_label_values(&[
                        route.name.as_str(),
                        &sanitise_name(&name),
                        "allowed",
                    ]),
                    limited: metrics().ratelimit_decisions.with_label_values(&[
                        route.name.as_str(),
                        &sanitise_name(&name),
                        "limited",
                    ]),
                });
            }
            routes.push(limits);
        }
        Ok(RateLimiter {
            routes,
            redis,
            on_error: settings.on_redis_error,
            headers_on_success: settings.headers_on_success,
        })
    }

    pub fn has_limits(&self, route: usize) -> bool {
        self.routes.get(route).is_some_and(|l| !l.is_empty())
    }

    /// Checks every limit of a route; the first that refuses decides.
    pub async fn check(&self, route: usize, source: &KeySource<'_>) -> Decision {
        let Some(limits) = self.routes.get(route) else {
            return Decision::Allowed { header: None };
        };
        let mut tightest: Option<(u64, HeaderValue)> = None;
        for limit in limits {
            let key = limit.key(source);
            let outcome = match &self.redis {
                Some(redis) => match redis
                    .decide(&limit.redis_key, key, limit.interval_us(), limit.burst)
                    .await
                {
                    Ok(outcome) => outcome,
                    Err(e) => {
                        log::debug!("rate limit `{}`: redis: {e}", limit.name);
                        metrics().redis_fallbacks.inc();
                        match self.on_error {
                            config::RedisFailure::FailOpen => continue,
                            config::RedisFailure::FailClosed => return Decision::Unavailable,
                            config::RedisFailure::LocalFallback => {
                                local_decision(&limit.fallback, key)
                            }
                        }
                    }
                },
                None => local_decision(&limit.local, key),
            };
            if !outcome.allowed {
                limit.limited.inc();
                let retry = outcome.retry_after.as_secs_f64().ceil().max(1.0) as u64;
                return Decision::Limited {
                    retry_after_secs: retry,
                    policy: limit.policy.clone(),
                    ratelimit: limit.ratelimit_header(0, retry),
                };
            }
            limit.allowed.inc();
            if self.headers_on_success
                && tightest
                    .as_ref()
                    .is_none_or(|(r, _)| outcome.remaining < *r)
            {
                let reset = outcome.reset.as_secs_f64().ceil() as u64;
                tightest = Some((
                    outcome.remaining,
                    limit.ratelimit_header(outcome.remaining, reset),
                ));
            }
        }
        Decision::Allowed {
            header: tightest.map(|(_, h)| h),
        }
    }
}

/// One limit's answer.
pub struct Outcome {
    pub allowed: bool,
    pub retry_after: Duration,
    pub remaining: u64,
    pub reset: Duration,
}

fn local_decision(local: &Local, key: u64) -> Outcome {
    match local.check_key(&key) {
        Ok(snapshot) => {
            let quota = snapshot.quota();
            let remaining = u64::from(snapshot.remaining_burst_capacity());
            let used = u64::from(quota.burst_size().get()).saturating_sub(remaining);
            Outcome {
                allowed: true,
                retry_after: Duration::ZERO,
                remaining,
                reset: quota.replenish_interval() * used as u32,
            }
        }
        Err(not_until) => Outcome {
            allowed: false,
            retry_after: not_until.wait_time_from(DefaultClock::default().now()),
            remaining: 0,
            reset: Duration::ZERO,
        },
    }
}

impl Limit {
    fn interval_us(&self) -> u64 {
        (self.period.as_micros() as u64 / u64::from(self.count.max(1))).max(1)
    }

    /// A digest of the key material; the same for every replica.
    fn key(&self, source: &KeySource<'_>) -> u64 {
        let mut hasher =
            foldhash::quality::FixedState::with_seed(0x7274_6c69_6d69_7473).build_hasher();
        for part in &self.keys {
            match part {
                KeyPart::ClientIp => hash_ip(&mut hasher, source.client_ip),
                // Anonymous callers are counted by address.
                KeyPart::User => match source.user {
                    Some(user) => hasher.write(user.as_bytes()),
                    None => hash_ip(&mut hasher, source.client_ip),
                },
                KeyPart::ClientId => match source.client_id {
                    Some(client) => hasher.write(client.as_bytes()),
                    None => hash_ip(&mut hasher, source.client_ip),
                },
                KeyPart::ApiKey => hasher.write(source.api_key.unwrap_or(b"")),
                KeyPart::Route => hasher.write(self.route.as_bytes()),
                KeyPart::Header(name) => hasher.write(
                    source
                        .headers
                        .get(name)
                        .map_or(b"" as &[u8], |v| v.as_bytes()),
                ),
            }
            hasher.write_u8(0xff);
        }
        hasher.finish()
    }

    /// `RateLimit: "name";r=REMAINING;t=RESET` (draft-ietf-httpapi-ratelimit-headers).
    fn ratelimit_header(&self, remaining: u64, reset_secs: u64) -> HeaderValue {
        HeaderValue::from_str(&format!("\"{}\";r={remaining};t={reset_secs}", self.name))
            .unwrap_or_else(|_| HeaderValue::from_static("\"limit\";r=0;t=1"))
    }
}

fn hash_ip(hasher: &mut impl Hasher, ip: Option<IpAddr>) {
    match ip {
        Some(IpAddr::V4(v4)) => hasher.write(&v4.octets()),
        Some(IpAddr::V6(v6)) => hasher.write(&v6.octets()),
        None => hasher.write_u8(0),
    }
}

/// Policy names are quoted strings in a structured header: keep them tame.
fn sanitise_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '+' | ':' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
