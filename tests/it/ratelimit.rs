//! Rate limits: accuracy in memory and across three gateways sharing a real
//! Redis, Redis failure modes, and the 429 headers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::{client, with_plain_listener, Backend, Gateway, RedisServer};

/// The API key the load uses; its subject is the rate-limited user.
const KEY: &str = "rl-test-key";

fn key_hash() -> String {
    crate::support::sha256_hex(KEY)
}

fn config(
    echo: &Backend,
    redis: Option<&RedisServer>,
    settings: &str,
    rate: &str,
    burst: u32,
) -> String {
    let redis_section = redis
        .map(|r| format!("redis: {{ url: '{}', timeout: 100ms }}\n", r.url()))
        .unwrap_or_default();
    with_plain_listener(&format!(
        "server: {{ access_log: false }}\n{redis_section}rate_limits: {settings}\nidentity:\n  api_keys:\n    - {{ sha256: '{}', subject: user-1, roles: [] }}\nupstreams:\n  echo: {{ targets: ['{}'] }}\nroutes:\n  - name: limited\n    upstream: echo\n    auth: {{ mode: required, api_keys: true }}\n    rate_limits:\n      - {{ key: user, rate: {rate}, burst: {burst} }}\n",
        key_hash(),
        echo.addr
    ))
}

struct LoadResult {
    ok: usize,
    limited: usize,
    other: Vec<u16>,
    slowest: Duration,
    elapsed: Duration,
}

/// `workers` loops over the gateways for `duration`, at most `max` requests.
async fn load(urls: &[String], workers: usize, duration: Duration, max: usize) -> LoadResult {
    let client = client();
    let ok = Arc::new(AtomicUsize::new(0));
    let limited = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let tasks = (0..workers).map(|w| {
        let (client, ok, limited, sent) =
            (client.clone(), ok.clone(), limited.clone(), sent.clone());
        let urls = urls.to_vec();
        tokio::spawn(async move {
            let mut other = Vec::new();
            let mut slowest = Duration::ZERO;
            let mut i = w;
            while Instant::now() < deadline && sent.fetch_add(1, Ordering::SeqCst) < max {
                let url = &urls[i % urls.len()];
                i += 1;
                let t = Instant::now();
                let status = match client.get(url).header("x-api-key", KEY).send().await {
                    Ok(r) => r.status().as_u16(),
                    Err(_) => 0,
                };
                slowest = slowest.max(t.elapsed());
                match status {
                    200 => ok.fetch_add(1, Ordering::SeqCst),
                    429 => limited.fetch_add(1, Ordering::SeqCst),
                    s => {
                        other.push(s);
                        0
                    }
                };
            }
            (other, slowest)
        })
    });
    let mut result = LoadResult {
        ok: 0,
        limited: 0,
        other: Vec::new(),
        slowest: Duration::ZERO,
        elapsed: Duration::ZERO,
    };
    for task in futures_util::future::join_all(tasks).await {
        let (other, slowest) = task.unwrap();
        result.other.extend(other);
        result.slowest = result.slowest.max(slowest);
    }
    result.elapsed = started.elapsed();
    result.ok = ok.load(Ordering::SeqCst);
    result.limited = limited.load(Ordering::SeqCst);
    result
}

fn assert_within_5_percent(result: &LoadResult, rate: f64, burst: f64, label: &str) {
    let expected = rate * result.elapsed.as_secs_f64() + burst;
    let ratio = result.ok as f64 / expected;
    eprintln!(
        "{label}: {} accepted, {} limited in {:?}; expected {expected:.0} ({:+.1}%)",
        result.ok,
        result.limited,
        result.elapsed,
        (ratio - 1.0) * 100.0
    );
    assert!(
        result.other.is_empty(),
        "{label}: unexpected statuses {:?}",
        &result.other[..result.other.len().min(5)]
    );
    assert!(result.limited > 0, "{label}: the load never hit the limit");
    assert!(
        (0.95..=1.05).contains(&ratio),
        "{label}: accepted {} of expected {expected:.0}",
        result.ok
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_limits_within_5_percent() {
    let echo = Backend::start("echo").await;
    let gateway = Gateway::start(&config(&echo, None, "{ store: memory }", "50/s", 10)).await;
    let result = load(&[gateway.url("/m")], 8, Duration::from_secs(10), 200_000).await;
    assert_within_5_percent(&result, 50.0, 10.0, "memory, 1 gateway");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_limits_three_gateways_within_5_percent() {
    let redis = RedisServer::start().await;
    let echo = Backend::start("echo").await;
    let text = config(&echo, Some(&redis), "{ store: redis }", "50/s", 10);
    let gateways = [
        Gateway::start(&text).await,
        Gateway::start(&text).await,
        Gateway::start(&text).await,
    ];
    let urls: Vec<String> = gateways.iter().map(|g| g.url("/r")).collect();
    let result = load(&urls, 9, Duration::from_secs(10), 200_000).await;
    assert_within_5_percent(&result, 50.0, 10.0, "redis, 3 gateways");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_failure_modes_and_recovery() {
    let echo = Backend::start("echo").await;
    for mode in ["fail_open", "fail_closed", "local_fallback"] {
        let mut redis = RedisServer::start().await;
        let port = redis.port;
        let text = config(
            &echo,
            Some(&redis),
            &format!("{{ store: redis, on_redis_error: {mode}, replicas: 3 }}"),
            "30/s",
            3,
        );
        let gateway = Gateway::start(&text).await;
        let urls = [gateway.url("/f")];
        // Working Redis: limited to about 30/s.
        let before = load(&urls, 4, Duration::from_secs(1), 100_000).await;
        assert!(before.limited > 0, "{mode}: not limiting with Redis up");

        redis.kill();
        let during = load(&urls, 4, Duration::from_secs(2), 100_000).await;
        // No request waits much beyond the 100 ms Redis timeout.
        assert!(
            during.slowest < Duration::from_secs(1),
            "{mode}: a request took {:?}",
            during.slowest
        );
        match mode {
            "fail_open" => {
                assert_eq!(during.limited, 0, "fail_open limited");
                assert!(during.ok > 200, "fail_open: only {} allowed", during.ok);
            }
            "fail_closed" => {
                assert_eq!(during.ok, 0);
                assert!(
                    during.other.iter().all(|s| *s == 503),
                    "{:?}",
                    &during.other[..5]
                );
            }
            _ => {
                // Each replica enforces 30/3 = 10/s (burst 1) on its own.
                let expected = 10.0 * during.elapsed.as_secs_f64() + 1.0;
                assert!(
                    (during.ok as f64) <= expected * 1.1 + 1.0
                        && (during.ok as f64) >= expected * 0.8,
                    "local_fallback allowed {} in {:?}",
                    during.ok,
                    during.elapsed
                );
            }
        }

        // Redis back on the same port: global limiting again, without a
        // gateway restart (within a few backoff periods).
        let _redis = RedisServer::start_on(port).await;
        let mut recovered = None;
        for attempt in 0..6 {
            let window = load(&urls, 4, Duration::from_secs(1), 100_000).await;
            let expected = 30.0 * window.elapsed.as_secs_f64() + 3.0;
            if window.other.is_empty()
                && window.limited > 0
                && (window.ok as f64) <= expected * 1.15
            {
                recovered = Some(attempt);
                break;
            }
        }
        assert!(
            recovered.is_some(),
            "{mode}: not limiting globally again after Redis came back"
        );
        eprintln!("{mode}: global limiting again in window {:?}", recovered);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_carry_retry_after_and_ratelimit_headers() {
    let echo = Backend::start("echo").await;
    let gateway = Gateway::start(&config(
        &echo,
        None,
        "{ store: memory, headers_on_success: true }",
        "2/m",
        2,
    ))
    .await;
    let client = client();
    let get = || {
        client
            .get(gateway.url("/h"))
            .header("x-api-key", KEY)
            .send()
    };
    let first = get().await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["ratelimit"], "\"user\";r=1;t=30");
    assert_eq!(get().await.unwrap().status(), 200);
    let limited = get().await.unwrap();
    assert_eq!(limited.status(), 429);
    let h = limited.headers();
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry), "retry-after {retry}");
    assert_eq!(h["ratelimit-policy"], "\"user\";q=2;w=60");
    assert_eq!(
        h["ratelimit"].to_str().unwrap(),
        format!("\"user\";r=0;t={retry}")
    );
    let body: serde_json::Value = limited.json().await.unwrap();
    assert_eq!(body["status"], 429);
    assert!(body["request_id"].is_string());
    let (_, metrics) = crate::support::admin_get(gateway.admin, "/metrics")
        .await
        .unwrap();
    assert!(metrics.contains("portcullis_ratelimit_decisions_total{decision=\"allowed\",limit=\"user\",route=\"limited\"} 2"), "{metrics}");
    assert!(metrics.contains("portcullis_ratelimit_decisions_total{decision=\"limited\",limit=\"user\",route=\"limited\"} 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_store_limits_two_gateways() {
    let cluster = crate::support::RedisCluster::start().await;
    let echo = Backend::start("echo").await;
    let nodes: Vec<String> = cluster.urls().iter().map(|u| format!("'{u}'")).collect();
    let text = config(&echo, None, "{ store: redis }", "20/s", 5).replace(
        "rate_limits: {",
        &format!(
            "redis: {{ cluster: [{}], timeout: 200ms }}\nrate_limits: {{",
            nodes.join(", ")
        ),
    );
    let gateways = [Gateway::start(&text).await, Gateway::start(&text).await];
    let urls: Vec<String> = gateways.iter().map(|g| g.url("/c")).collect();
    let result = load(&urls, 4, Duration::from_secs(4), 100_000).await;
    assert_within_5_percent(&result, 20.0, 5.0, "redis cluster, 2 gateways");
    // The counter lives in the cluster, under a hash-tagged key.
    let mut keys = String::new();
    for port in cluster.ports() {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &port.to_string(), "--scan"])
            .output()
            .unwrap();
        keys.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    assert!(
        keys.contains("{portcullis:rl:limited:0:20/s:"),
        "keys: {keys}"
    );
}
