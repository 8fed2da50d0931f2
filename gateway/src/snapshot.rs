//! The compiled configuration: built once per config, immutable, swapped
//! atomically on reload. A request loads it once and keeps it to the end.

use std::sync::Arc;

use arc_swap::ArcSwap;
use http::HeaderValue;
use ipnet::IpNet;
use portcullis_config::{self as config, ValidConfig};

use crate::auth::{Authenticator, KeyError, KeyRegistry, ProviderKeys, RoutePolicy};
use crate::metrics::{metrics, RouteMetrics};
use crate::ratelimit::{LimitError, LimiterRegistry, RateLimiter};
use crate::routing::{RouteError, Router};
use crate::upstream::{Pool, PoolRegistry};

/// Per-listener behaviour that may change on reload.
#[derive(Debug, Default)]
pub struct ListenerPolicy {
    pub name: Box<str>,
    pub tls: bool,
    pub hsts: Option<HeaderValue>,
    pub redirect_https_port: Option<u16>,
}

/// Request limits, in the units the request path compares.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body_size: u64,
    pub max_header_size: usize,
    pub max_header_count: usize,
    pub max_uri_size: usize,
    pub body_read_timeout: std::time::Duration,
    pub keepalive_seconds: u64,
    pub max_connections: usize,
    pub max_response_header_size: usize,
    pub max_response_header_count: usize,
    pub max_interim_responses: u8,
}

pub struct Snapshot {
    pub generation: u64,
    pub router: Router,
    pub pools: Vec<Arc<Pool>>,
    pub listeners: Vec<ListenerPolicy>,
    pub limits: Limits,
    /// What the connection guard enforces on new connections.
    pub guard: crate::guard::GuardSettings,
    /// How request targets are canonicalised.
    pub paths: portcullis_canonical::Rules,
    /// The header that carries the client's address, when configured.
    pub real_ip_header: Option<http::HeaderName>,
    /// What to do with header names that contain `_`.
    pub underscores: config::Underscores,
    pub trusted_proxies: Vec<IpNet>,
    /// The header `trusted_proxies` write the client's address in.
    pub client_ip_source: portcullis_web::client_ip::Source,
    pub access_log: bool,
    /// Token validation, identity headers and the reserved header names.
    pub auth: Authenticator,
    /// Authentication and roles per route (same index as the router's routes).
    pub route_auth: Vec<RoutePolicy>,
    /// Rate limits per route.
    pub rate_limiter: RateLimiter,
    /// Bulkheads per route (same index as the router's routes).
    pub bulkheads: Vec<Option<Bulkhead>>,
    /// Metric series per route (same index as the router's routes).
    pub route_metrics: Vec<RouteMetrics>,
    /// Series for requests answered before a route was found.
    pub unrouted_metrics: RouteMetrics,
    /// The merged OpenAPI document and docs portal, when enabled.
    pub portal: Option<crate::portal::Site>,
    /// Browser login and sessions, when configured.
    pub login: Option<crate::login::Login>,
    /// The config as loaded, for `GET /config`.
    pub config: Arc<ValidConfig>,
}

pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;

/// A route's concurrency limit.
pub struct Bulkhead {
    pub slots: Arc<tokio::sync::Semaphore>,
    /// Most waiting requests and the longest wait, when waiting is allowed.
    pub queue: Option<(usize, std::time::Duration)>,
    pub waiting: Arc<std::sync::atomic::AtomicUsize>,
}

/// State that outlives config reloads, and the runtime its tasks run on.
pub struct Registries {
    pub pools: PoolRegistry,
    pub keys: KeyRegistry,
    pub limiters: Arc<LimiterRegistry>,
    pub control: tokio::runtime::Handle,
    /// Fetched backend documents and the published merge.
    pub portal: Arc<crate::portal::Portal>,
    /// Browser sessions and logins in progress.
    pub login: Arc<crate::login::LoginState>,
    /// Bulkhead semaphores by route and size: requests in flight across a
    /// reload still count.
    bulkheads:
        std::sync::Mutex<std::collections::HashMap<(String, u32), Arc<tokio::sync::Semaphore>>>,
}

impl Registries {
    pub fn new(control: tokio::runtime::Handle) -> Registries {
        let limiters = Arc::new(LimiterRegistry::default());
        limiters.spawn_cleanup(&control);
        Registries {
            pools: PoolRegistry::default(),
            keys: KeyRegistry::default(),
            limiters,
            control,
            portal: Arc::default(),
            login: Arc::default(),
            bulkheads: std::sync::Mutex::default(),
        }
    }

    fn bulkhead(&self, route: &str, max: u32) -> Arc<tokio::sync::Semaphore> {
        let mut map = self.bulkheads.lock().unwrap_or_else(|e| e.into_inner());
        map.entry((route.to_owned(), max))
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(max as usize)))
            .clone()
    }
}

/// What a compile created that needs background tasks.
pub struct NewParts {
    pub pools: Vec<Arc<Pool>>,
    pub keys: Vec<Arc<ProviderKeys>>,
}

impl NewParts {
    pub fn start(&self, runtime: &tokio::runtime::Handle) {
        for pool in &self.pools {
            crate::upstream::spawn_pool_tasks(pool, runtime);
        }
        for keys in &self.keys {
            keys.spawn_refresh(runtime);
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("identity provider keys: {0}")]
    Keys(#[from] KeyError),
    #[error("rate limits: {0}")]
    Limits(#[from] LimitError),
    #[error("sessions: redis: {0}")]
    Sessions(crate::ratelimit::RedisError),
}

impl Snapshot {
    /// Compiles a validated config. New pools and key sets (or changed
    /// ones) are returned so the caller can start their background tasks.
    pub fn compile(
        valid: Arc<ValidConfig>,
        registries: &Registries,
        generation: u64,
    ) -> Result<(Snapshot, NewParts), CompileError> {
        let registry = &registries.pools;
        let keys = &registries.keys;
        let config = &valid.config;
        let mut pools = Vec::with_capacity(config.upstreams.len());
        let mut new_pools = Vec::new();
        let names: Vec<&str> = config.upstreams.keys().map(String::as_str).collect();
        for (name, spec) in &config.upstreams {
            let (pool, created) = registry.get_or_create(name, spec);
            if created {
                new_pools.push(pool.clone());
            }
            pools.push(pool);
        }
        let router = Router::compile(&config.routes, &|name| {
            names.iter().position(|n| *n == name)
        })?;
        registry.retain(&names);
        let (auth, new_keys) = Authenticator::compile(&config.identity, keys, &valid.source)?;
        let route_auth = config
            .routes
            .iter()
            .map(|r| RoutePolicy::compile(&r.auth, &config.identity))
            .collect();
        let rate_limiter = RateLimiter::compile(config, &registries.limiters, &registries.control)?;
        let bulkheads = config
            .routes
            .iter()
            .map(|route| {
                route.max_concurrent.map(|max| Bulkhead {
                    slots: registries.bulkhead(&route.name, max),
                    queue: route.queue.as_ref().map(|q| (q.size as usize, q.timeout.0)),
                    waiting: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
                })
            })
            .collect();
        let listeners = config.listeners.iter().map(listener_policy).collect();
        let login_redis = match (&config.identity.login, &config.redis) {
            (Some(login), Some(spec)) if login.store == config::SessionStore::Redis => Some((
                registries
                    .limiters
                    .redis(spec, &registries.control)
                    .map_err(CompileError::Sessions)?,
                spec.key_prefix.clone(),
            )),
            _ => None,
        };
        let limits = &config.server.limits;
        Ok((
            Snapshot {
                generation,
                pools,
                listeners,
                limits: Limits {
                    max_body_size: limits.max_body_size.0,
                    max_header_size: usize::try_from(limits.max_header_size.0)
                        .unwrap_or(usize::MAX),
                    max_header_count: limits.max_header_count,
                    max_uri_size: usize::try_from(limits.max_uri_size.0).unwrap_or(usize::MAX),
                    body_read_timeout: limits.body_read_timeout.0,
                    keepalive_seconds: limits.keepalive_timeout.0.as_secs(),
                    max_connections: limits.max_connections,
                    max_response_header_size: usize::try_from(limits.max_response_header_size.0)
                        .unwrap_or(usize::MAX),
                    max_response_header_count: limits.max_response_header_count,
                    max_interim_responses: limits.max_interim_responses,
                },
                guard: crate::guard::GuardSettings {
                    head: crate::guard::framing::HeadLimits {
                        max_target: usize::try_from(limits.max_uri_size.0).unwrap_or(usize::MAX),
                        // The request line and the fields, with their line ends.
                        max_head: usize::try_from(limits.max_uri_size.0 + limits.max_header_size.0)
                            .unwrap_or(usize::MAX)
                            .saturating_add(2 * limits.max_header_count + 64),
                        max_fields: limits.max_header_count,
                    },
                    header_timeout: limits.header_timeout.0,
                    body_timeout: limits.body_timeout.0,
                    min_body_rate: limits.min_body_rate.0,
                },
                paths: config.server.paths.rules(),
                underscores: config.server.headers_with_underscores,
                real_ip_header: config
                    .server
                    .real_ip_header
                    .as_deref()
                    .and_then(|name| http::HeaderName::from_bytes(name.as_bytes()).ok()),
                trusted_proxies: config.server.trusted_proxies.clone(),
                client_ip_source: config.server.client_ip_header,
                auth,
                route_auth,
                rate_limiter,
                bulkheads,
                route_metrics: router
                    .routes()
                    .iter()
                    .map(|r| metrics().route(&r.name))
                    .collect(),
                unrouted_metrics: metrics().route(""),
                access_log: config.server.access_log,
                router,
                portal: crate::portal::Site::compile(config, &registries.portal),
                login: crate::login::Login::compile(
                    &config.identity,
                    &registries.login,
                    login_redis,
                ),
                config: valid.clone(),
            },
            NewParts {
                pools: new_pools,
                keys: new_keys,
            },
        ))
    }
}

fn listener_policy(listener: &config::Listener) -> ListenerPolicy {
    let hsts = listener.hsts.as_ref().and_then(|hsts| {
        let mut value = format!("max-age={}", hsts.max_age.0.as_secs());
        if hsts.include_subdomains {
            value.push_str("; includeSubDomains");
        }
        if hsts.preload {
            value.push_str("; preload");
        }
        HeaderValue::from_str(&value).ok()
    });
    ListenerPolicy {
        name: listener.name.as_str().into(),
        tls: listener.tls.is_some(),
        hsts,
        redirect_https_port: listener.redirect_https.as_ref().map(|r| r.port),
    }
}
