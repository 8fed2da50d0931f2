//! Upstream pools: targets, their health, and the choice of one per request.
//!
//! A pool outlives config reloads when its definition is unchanged (see
//! [`PoolRegistry`]), so health state, in-flight counts and the round-robin
//! position carry over. Selection reads atomics only: no locks per request.

pub mod deadline;
mod health;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use portcullis_config as config;

pub use health::spawn_pool_tasks;

/// One backend address of a pool.
#[derive(Debug)]
pub struct Target {
    pub addr: SocketAddr,
    /// The name it was configured with (DNS name or IP), for SNI and logs.
    pub host: Box<str>,
    /// `addr` as text, for logs and metrics without formatting per request.
    pub label: Box<str>,
    /// Set by the active health check; true until a check says otherwise.
    active_healthy: AtomicBool,
    active_successes: AtomicU32,
    active_failures: AtomicU32,
    /// Passive ejection: consecutive failures, and until when it is out
    /// (milliseconds since the pool's epoch; 0 = not ejected).
    passive_failures: AtomicU32,
    ejected_until_ms: AtomicU64,
    /// Requests let through while the breaker is half-open.
    probes: AtomicU32,
    /// The failure-ratio window: its start and counts.
    window_start_ms: AtomicU64,
    window_requests: AtomicU32,
    window_failures: AtomicU32,
    in_flight: AtomicUsize,
}

/// A target's circuit breaker, for `/metrics` (0, 1, 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

impl Target {
    fn new(addr: SocketAddr, host: &str) -> Arc<Target> {
        Arc::new(Target {
            addr,
            host: host.into(),
            label: addr.to_string().into(),
            active_healthy: AtomicBool::new(true),
            active_successes: AtomicU32::new(0),
            active_failures: AtomicU32::new(0),
            passive_failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            probes: AtomicU32::new(0),
            window_start_ms: AtomicU64::new(0),
            window_requests: AtomicU32::new(0),
            window_failures: AtomicU32::new(0),
            in_flight: AtomicUsize::new(0),
        })
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn is_active_healthy(&self) -> bool {
        self.active_healthy.load(Ordering::Relaxed)
    }
}

/// Counts a request in flight on a target for as long as it lives.
#[derive(Debug)]
pub struct InFlight(Arc<Target>, Arc<AtomicUsize>);

impl InFlight {
    pub fn target(&self) -> &Arc<Target> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.1.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why no target was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectError {
    /// No target is healthy (or every breaker is open).
    NoHealthyTarget,
    /// The pool's `max_concurrent` is reached.
    Saturated,
}

/// A named pool of targets with its balancing, health and retry settings.
#[derive(Debug)]
pub struct Pool {
    pub name: Box<str>,
    pub spec: config::Upstream,
    targets: ArcSwap<Vec<Arc<Target>>>,
    next: AtomicUsize,
    epoch: Instant,
    /// Retry budget: requests and retries in the current window.
    window_requests: AtomicU64,
    window_retries: AtomicU64,
    window_started_ms: AtomicU64,
    /// SNI for TLS targets: configured, or the first target's host name.
    pub tls_sni: Option<Box<str>>,
    /// Extra CAs for TLS targets, parsed once.
    pub ca: Option<Arc<pingora::protocols::tls::CaType>>,
    /// Requests in flight to the whole pool, for its bulkhead.
    in_flight: Arc<AtomicUsize>,
    /// Keeps pingora's connection pool from handing one pool's connection
    /// to another: its reuse key covers address, SNI and verification
    /// flags but not the CA, so a connection verified against pool A's CA
    /// must never serve pool B.
    pub connection_group: u64,
}

/// How a request keys consistent hashing.
pub enum HashKey<'a> {
    None,
    Bytes(&'a [u8]),
    Ip(std::net::IpAddr),
}

/// Retry budget window: the share is computed over this much recent time.
const RETRY_WINDOW_MS: u64 = 10_000;
/// Retries always allowed per window, so a quiet pool can still retry.
const RETRY_MIN_PER_WINDOW: u64 = 10;

impl Pool {
    /// A pool with the targets that are IP addresses; DNS names are filled
    /// in by the resolver task, so start-up never blocks on DNS.
    pub fn new(name: &str, spec: &config::Upstream) -> Arc<Pool> {
        let targets = spec
            .targets
            .iter()
            .filter_map(|t| {
                t.parse::<SocketAddr>()
                    .ok()
                    .map(|a| Target::new(a, &a.ip().to_string()))
            })
            .collect();
        let tls_sni = spec.tls.as_ref().map(|tls| {
            tls.sni
                .clone()
                .or_else(|| {
                    spec.targets
                        .first()
                        .and_then(|t| t.rsplit_once(':').map(|(h, _)| h.to_owned()))
                })
                .unwrap_or_default()
                .into()
        });
        Arc::new(Pool {
            name: name.into(),
            spec: spec.clone(),
            targets: ArcSwap::from_pointee(targets),
            next: AtomicUsize::new(0),
            epoch: Instant::now(),
            window_requests: AtomicU64::new(0),
            window_retries: AtomicU64::new(0),
            window_started_ms: AtomicU64::new(0),
            tls_sni,
            in_flight: Arc::new(AtomicUsize::new(0)),
            connection_group: {
                use std::hash::{BuildHasher, Hasher};
                let mut hasher = foldhash::quality::FixedState::with_seed(1).build_hasher();
                hasher.write(name.as_bytes());
                hasher.write(format!("{spec:?}").as_bytes());
                hasher.finish()
            },
            ca: spec
                .tls
                .as_ref()
                .and_then(|tls| tls.ca.as_deref())
                .and_then(|path| load_ca(name, path)),
        })
    }

    pub fn targets(&self) -> arc_swap::Guard<Arc<Vec<Arc<Target>>>> {
        self.targets.load()
    }

    /// Replaces the resolved addresses, keeping the state of targets that stay.
    pub fn set_resolved(&self, resolved: &[(SocketAddr, String)]) {
        let current = self.targets.load();
        let mut next: Vec<Arc<Target>> = Vec::with_capacity(resolved.len());
        for (addr, host) in resolved {
            if next.iter().any(|t| t.addr == *addr) {
                continue;
            }
            match current.iter().find(|t| t.addr == *addr) {
                Some(existing) => next.push(existing.clone()),
                None => next.push(Target::new(*addr, host)),
            }
        }
        let changed = next.len() != current.len()
            || next
                .iter()
                .zip(current.iter())
                .any(|(a, b)| a.addr != b.addr);
        if changed {
            log::info!(
                "upstream `{}`: targets now {:?}",
                self.name,
                next.iter().map(|t| t.addr).collect::<Vec<_>>()
            );
            self.targets.store(Arc::new(next));
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether a target takes traffic now (healthy and not ejected).
    pub fn is_available(&self, target: &Target) -> bool {
        self.available(target, self.now_ms())
    }

    /// The target's breaker: closed, open (ejected), or half-open (the
    /// ejection time is over; a few probes decide).
    pub fn breaker(&self, target: &Target) -> BreakerState {
        self.breaker_at(target, self.now_ms())
    }

    fn breaker_at(&self, target: &Target, now_ms: u64) -> BreakerState {
        match target.ejected_until_ms.load(Ordering::Relaxed) {
            0 => BreakerState::Closed,
            until if until > now_ms => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }

    fn available(&self, target: &Target, now_ms: u64) -> bool {
        target.is_active_healthy()
            && match self.breaker_at(target, now_ms) {
                BreakerState::Closed => true,
                BreakerState::Open => false,
                BreakerState::HalfOpen => {
                    target.probes.load(Ordering::Relaxed)
                        < self.spec.passive_health.half_open_probes
                }
            }
    }

    /// Chooses a target, avoiding `avoid` (the one that just failed) when
    /// another is available. `None` when no target is healthy.
    pub fn select(
        &self,
        key: HashKey<'_>,
        avoid: Option<SocketAddr>,
    ) -> Result<InFlight, SelectError> {
        if let Some(max) = self.spec.max_concurrent {
            if self.in_flight.load(Ordering::Relaxed) >= max as usize {
                return Err(SelectError::Saturated);
            }
        }
        self.select_target(key, avoid)
            .ok_or(SelectError::NoHealthyTarget)
    }

    fn select_target(&self, key: HashKey<'_>, avoid: Option<SocketAddr>) -> Option<InFlight> {
        let targets = self.targets.load();
        let now = self.now_ms();
        let usable = |t: &&Arc<Target>| self.available(t, now) && Some(t.addr) != avoid;
        let any_usable = |t: &&Arc<Target>| self.available(t, now);
        let chosen = match self.spec.load_balancing {
            config::LoadBalancing::RoundRobin => self
                .round_robin(&targets, &usable)
                .or_else(|| self.round_robin(&targets, &any_usable)),
            config::LoadBalancing::LeastRequests => least_requests(&targets, &usable, &self.next)
                .or_else(|| least_requests(&targets, &any_usable, &self.next)),
            config::LoadBalancing::ConsistentHash => match key {
                HashKey::Bytes(bytes) => rendezvous(&targets, bytes, &usable)
                    .or_else(|| rendezvous(&targets, bytes, &any_usable)),
                HashKey::Ip(ip) => {
                    let octets = match ip {
                        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                        std::net::IpAddr::V6(v6) => v6.octets(),
                    };
                    rendezvous(&targets, &octets, &usable)
                        .or_else(|| rendezvous(&targets, &octets, &any_usable))
                }
                HashKey::None => self
                    .round_robin(&targets, &usable)
                    .or_else(|| self.round_robin(&targets, &any_usable)),
            },
        }?;
        if self.breaker_at(chosen, now) == BreakerState::HalfOpen {
            chosen.probes.fetch_add(1, Ordering::Relaxed);
        }
        chosen.in_flight.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(InFlight(chosen.clone(), self.in_flight.clone()))
    }

    fn round_robin<'t>(
        &self,
        targets: &'t [Arc<Target>],
        usable: &dyn Fn(&&Arc<Target>) -> bool,
    ) -> Option<&'t Arc<Target>> {
        let n = targets.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &targets[(start + i) % n])
            .find(|t| usable(t))
    }

    /// Records the outcome of a request: the circuit breaker's input.
    pub fn report(&self, target: &Target, success: bool) {
        let max = self.spec.passive_health.max_failures;
        let half_open = self.breaker(target) == BreakerState::HalfOpen;
        let ratio_tripped = self.count_for_ratio(target, success);
        if success {
            target.passive_failures.store(0, Ordering::Relaxed);
            if half_open {
                target.ejected_until_ms.store(0, Ordering::Relaxed);
                target.probes.store(0, Ordering::Relaxed);
                log::info!(
                    "upstream `{}`: target {} recovered, breaker closed",
                    self.name,
                    target.label
                );
            }
            return;
        }
        if max == 0 && !ratio_tripped {
            return;
        }
        let failures = target.passive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if (max > 0 && failures >= max) || half_open || ratio_tripped {
            target.probes.store(0, Ordering::Relaxed);
            let until = self.now_ms() + self.spec.passive_health.ejection_time.0.as_millis() as u64;
            target.ejected_until_ms.store(until, Ordering::Relaxed);
            target.passive_failures.store(0, Ordering::Relaxed);
            log::warn!(
                "upstream `{}`: target {} ejected for {} after {failures} consecutive failures",
                self.name,
                target.label,
                self.spec.passive_health.ejection_time
            );
        }
    }

    /// Counts an outcome in the target's failure-ratio window; true when
    /// the ratio trips the breaker.
    fn count_for_ratio(&self, target: &Target, success: bool) -> bool {
        let health = &self.spec.passive_health;
        let Some(ratio) = health.failure_ratio else {
            return false;
        };
        let now = self.now_ms();
        let start = target.window_start_ms.load(Ordering::Relaxed);
        if now.saturating_sub(start) > health.window.0.as_millis() as u64
            && target
                .window_start_ms
                .compare_exchange(start, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            target.window_requests.store(0, Ordering::Relaxed);
            target.window_failures.store(0, Ordering::Relaxed);
        }
        let requests = target.window_requests.fetch_add(1, Ordering::Relaxed) + 1;
        let failures = if success {
            target.window_failures.load(Ordering::Relaxed)
        } else {
            target.window_failures.fetch_add(1, Ordering::Relaxed) + 1
        };
        let tripped = !success
            && requests >= health.min_requests
            && f64::from(failures) >= ratio * f64::from(requests);
        if tripped {
            target.window_requests.store(0, Ordering::Relaxed);
            target.window_failures.store(0, Ordering::Relaxed);
        }
        tripped
    }

    /// Counts a first attempt for the retry budget.
    pub fn count_request(&self) {
        self.roll_window();
        self.window_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether one more retry fits the budget; counts it if so.
    pub fn try_retry(&self) -> bool {
        self.roll_window();
        let requests = self.window_requests.load(Ordering::Relaxed);
        let retries = self.window_retries.load(Ordering::Relaxed);
        let allowed = (requests * u64::from(self.spec.retries.budget_percent) / 100)
            .max(RETRY_MIN_PER_WINDOW);
        if retries >= allowed {
            return false;
        }
        self.window_retries.fetch_add(1, Ordering::Relaxed);
        true
    }

    fn roll_window(&self) {
        let now = self.now_ms();
        let started = self.window_started_ms.load(Ordering::Relaxed);
        if now.saturating_sub(started) > RETRY_WINDOW_MS
            && self
                .window_started_ms
                .compare_exchange(started, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.window_requests.store(0, Ordering::Relaxed);
            self.window_retries.store(0, Ordering::Relaxed);
        }
    }

    /// Active health results, from the checker task.
    fn record_check(&self, target: &Target, ok: bool) {
        let Some(check) = &self.spec.health_check else {
            return;
        };
        if ok {
            target.active_failures.store(0, Ordering::Relaxed);
            let successes = target.active_successes.fetch_add(1, Ordering::Relaxed) + 1;
            if !target.is_active_healthy() && successes >= check.healthy_threshold {
                target.active_healthy.store(true, Ordering::Relaxed);
                log::info!(
                    "upstream `{}`: target {} is healthy",
                    self.name,
                    target.label
                );
            }
        } else {
            target.active_successes.store(0, Ordering::Relaxed);
            let failures = target.active_failures.fetch_add(1, Ordering::Relaxed) + 1;
            if target.is_active_healthy() && failures >= check.unhealthy_threshold {
                target.active_healthy.store(false, Ordering::Relaxed);
                log::warn!(
                    "upstream `{}`: target {} is unhealthy",
                    self.name,
                    target.label
                );
            }
        }
    }
}

fn load_ca(pool: &str, path: &str) -> Option<Arc<pingora::protocols::tls::CaType>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let parsed: Result<Vec<CertificateDer<'static>>, _> = std::fs::read(path)
        .map_err(|e| e.to_string())
        .and_then(|pem| {
            CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())
        });
    match parsed {
        Ok(certs) if !certs.is_empty() => {
            let wrapped: Vec<_> = certs
                .into_iter()
                .map(|der| {
                    pingora::utils::tls::WrappedX509::new(der.to_vec(), |raw| {
                        pingora::utils::tls::parse_x509(raw)
                    })
                })
                .collect();
            Some(Arc::from(wrapped.into_boxed_slice()))
        }
        Ok(_) => {
            log::error!("upstream `{pool}`: no certificate in CA bundle `{path}`");
            None
        }
        Err(e) => {
            log::error!("upstream `{pool}`: cannot read CA bundle `{path}`: {e}");
            None
        }
    }
}

fn least_requests<'t>(
    targets: &'t [Arc<Target>],
    usable: &dyn Fn(&&Arc<Target>) -> bool,
    next: &AtomicUsize,
) -> Option<&'t Arc<Target>> {
    let n = targets.len();
    if n == 0 {
        return None;
    }
    // Start at a rotating position so ties are spread, not always the first.
    let start = next.fetch_add(1, Ordering::Relaxed);
    (0..n)
        .map(|i| &targets[(start + i) % n])
        .filter(|t| usable(t))
        .min_by_key(|t| t.in_flight())
}

/// Rendezvous (highest random weight) hashing: a key stays on its target
/// while that target is available, and only keys of a removed target move.
fn rendezvous<'t>(
    targets: &'t [Arc<Target>],
    key: &[u8],
    usable: &dyn Fn(&&Arc<Target>) -> bool,
) -> Option<&'t Arc<Target>> {
    use std::hash::{BuildHasher, Hasher};
    // Fixed seeds: every replica must map a key to the same target.
    let state = foldhash::quality::FixedState::with_seed(0x0070_6375_6c6c_6973);
    targets.iter().filter(|t| usable(t)).max_by_key(|t| {
        let mut hasher = state.build_hasher();
        hasher.write(key);
        hasher.write(t.label.as_bytes());
        hasher.finish()
    })
}

/// Pools by name with a fingerprint of their definition: a reload reuses a
/// pool whose definition did not change, keeping its health state.
#[derive(Default)]
pub struct PoolRegistry {
    pools: Mutex<Vec<(String, String, Arc<Pool>)>>,
}

impl PoolRegistry {
    /// The pool for this name and definition: the existing one if unchanged,
    /// else a new one. The second value is true for a new pool (its
    /// background tasks must be started).
    pub fn get_or_create(&self, name: &str, spec: &config::Upstream) -> (Arc<Pool>, bool) {
        let fingerprint = format!("{spec:?}");
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, _, pool)) = pools
            .iter()
            .find(|(n, f, _)| n == name && *f == fingerprint)
        {
            return (pool.clone(), false);
        }
        let pool = Pool::new(name, spec);
        pools.retain(|(n, _, _)| n != name);
        pools.push((name.to_owned(), fingerprint, pool.clone()));
        (pool, true)
    }

    /// Forgets pools that the active config no longer names.
    pub fn retain(&self, names: &[&str]) {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.retain(|(n, _, _)| names.contains(&n.as_str()));
    }
}

#[cfg(test)]
mod tests;
