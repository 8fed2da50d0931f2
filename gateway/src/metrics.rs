//! Prometheus metrics. Per-route series are created when a config is
//! compiled, so the request path only bumps counters it already holds.

use std::sync::OnceLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    requests: IntCounterVec,
    durations: HistogramVec,
    pub in_flight: IntGauge,
    pub open_connections: IntGauge,
    /// Connections closed at once because `limits.max_connections` were open.
    pub refused_connections: IntCounter,
    /// TLS connections closed for not finishing the handshake in time.
    pub handshake_timeouts: IntCounter,
    /// Requests the connection guard refused, by status.
    pub refused_requests: IntCounterVec,
    pub reloads: IntCounterVec,
    pub target_healthy: IntGaugeVec,
    pub breaker_state: IntGaugeVec,
    pub faults: IntCounterVec,
    pub ratelimit_decisions: IntCounterVec,
    pub redis_errors: IntCounter,
    pub redis_fallbacks: IntCounter,
    pub redis_latency: Histogram,
}

/// Status classes by index: 1xx..5xx, and 0 for "no response".
const CLASSES: [&str; 6] = ["none", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// The series of one route, one per status class.
pub struct RouteMetrics {
    series: Vec<(IntCounter, Histogram)>,
}

impl RouteMetrics {
    pub fn observe(&self, status: u16, seconds: f64) {
        let class = match status {
            100..=599 => usize::from(status / 100),
            _ => 0,
        };
        if let Some((count, duration)) = self.series.get(class) {
            count.inc();
            duration.observe(seconds);
        }
    }
}

/// The process's metrics. The `expect`s in `Metrics::new` can only fire on a
/// malformed static definition: `run` builds them before serving and the
/// unit test below builds them in CI.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "portcullis_requests_total",
                "Requests by route and status class",
            ),
            &["route", "status"],
        )
        .expect("static metric definition");
        let durations = HistogramVec::new(
            HistogramOpts::new(
                "portcullis_request_duration_seconds",
                "Request duration by route and status class",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ]),
            &["route", "status"],
        )
        .expect("static metric definition");
        let in_flight = IntGauge::new("portcullis_requests_in_flight", "Requests being served")
            .expect("static metric definition");
        let open_connections = IntGauge::new(
            "portcullis_open_connections",
            "Downstream connections open on the proxy listeners",
        )
        .expect("static metric definition");
        let refused_connections = IntCounter::new(
            "portcullis_connections_refused_total",
            "Connections closed on accept because the connection limit was reached",
        )
        .expect("static metric definition");
        let handshake_timeouts = IntCounter::new(
            "portcullis_tls_handshake_timeouts_total",
            "TLS connections closed for not finishing the handshake in time",
        )
        .expect("static metric definition");
        let refused_requests = IntCounterVec::new(
            Opts::new(
                "portcullis_requests_refused_total",
                "Requests refused for their framing, size or pace before routing, by status",
            ),
            &["status"],
        )
        .expect("static metric definition");
        let reloads = IntCounterVec::new(
            Opts::new(
                "portcullis_config_reloads_total",
                "Config reloads by result",
            ),
            &["result"],
        )
        .expect("static metric definition");
        let target_healthy = IntGaugeVec::new(
            Opts::new(
                "portcullis_upstream_target_healthy",
                "1 when the target passes its health checks and is not ejected",
            ),
            &["upstream", "target"],
        )
        .expect("static metric definition");
        let breaker_state = IntGaugeVec::new(
            Opts::new(
                "portcullis_upstream_breaker_state",
                "Circuit breaker per target: 0 closed, 1 open, 2 half-open",
            ),
            &["upstream", "target"],
        )
        .expect("static metric definition");
        let faults = IntCounterVec::new(
            Opts::new(
                "portcullis_faults_injected_total",
                "Injected faults by route and kind",
            ),
            &["route", "kind"],
        )
        .expect("static metric definition");
        let ratelimit_decisions = IntCounterVec::new(
            Opts::new(
                "portcullis_ratelimit_decisions_total",
                "Rate-limit decisions by route, limit and decision",
            ),
            &["route", "limit", "decision"],
        )
        .expect("static metric definition");
        let redis_errors = IntCounter::new(
            "portcullis_redis_errors_total",
            "Failed Redis calls (timeouts, connection errors)",
        )
        .expect("static metric definition");
        let redis_fallbacks = IntCounter::new(
            "portcullis_ratelimit_redis_fallbacks_total",
            "Rate-limit decisions made without Redis (fallback, fail-open, fail-closed)",
        )
        .expect("static metric definition");
        let redis_latency = Histogram::with_opts(
            HistogramOpts::new("portcullis_redis_seconds", "Redis rate-limit call duration")
                .buckets(vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                ]),
        )
        .expect("static metric definition");
        for collector in [
            Box::new(ratelimit_decisions.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(redis_errors.clone()),
            Box::new(redis_fallbacks.clone()),
            Box::new(redis_latency.clone()),
            Box::new(breaker_state.clone()),
            Box::new(faults.clone()),
            Box::new(requests.clone()),
            Box::new(durations.clone()),
            Box::new(in_flight.clone()),
            Box::new(open_connections.clone()),
            Box::new(refused_connections.clone()),
            Box::new(handshake_timeouts.clone()),
            Box::new(refused_requests.clone()),
            Box::new(reloads.clone()),
            Box::new(target_healthy.clone()),
        ] {
            registry.register(collector).expect("unique metric names");
        }
        Metrics {
            registry,
            requests,
            durations,
            in_flight,
            open_connections,
            refused_connections,
            handshake_timeouts,
            refused_requests,
            reloads,
            target_healthy,
            breaker_state,
            faults,
            ratelimit_decisions,
            redis_errors,
            redis_fallbacks,
            redis_latency,
        }
    }

    pub fn route(&self, route: &str) -> RouteMetrics {
        RouteMetrics {
            series: CLASSES
                .iter()
                .map(|class| {
                    (
                        self.requests.with_label_values(&[route, class]),
                        self.durations.with_label_values(&[route, class]),
                    )
                })
                .collect(),
        }
    }

    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_defined_and_rendered() {
        let m = metrics();
        m.route("r").observe(204, 0.01);
        m.in_flight.inc();
        m.in_flight.dec();
        let text = String::from_utf8(m.render()).unwrap();
        assert!(
            text.contains("portcullis_requests_total{route=\"r\",status=\"2xx\"} 1"),
            "{text}"
        );
        assert!(text.contains("portcullis_requests_in_flight 0"));
    }
}
