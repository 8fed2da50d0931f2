use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::support::{client, eventually, with_plain_listener, Backend, Gateway};

fn config(targets: &[&Backend], extra: &str) -> String {
    let list: Vec<String> = targets.iter().map(|b| format!("'{}'", b.addr)).collect();
    with_plain_listener(&format!(
        "server: {{ access_log: false }}\nupstreams:\n  pool:\n    targets: [{}]\n{extra}routes:\n  - {{ name: all, upstream: pool }}\n",
        list.join(", ")
    ))
}

/// `config` with more fields on its one route.
fn with_route_fields(targets: &[&Backend], fields: &str) -> String {
    config(targets, "").replace(
        "  - { name: all, upstream: pool }",
        &format!("  - {{ name: all, upstream: pool, {fields} }}"),
    )
}

async fn backends_hit(gateway: &Gateway, n: usize) -> Vec<String> {
    let client = client();
    let mut seen = Vec::new();
    for i in 0..n {
        let response = client
            .get(gateway.url(&format!("/x/{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        seen.push(response.headers()["x-backend"].to_str().unwrap().to_owned());
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_health_check_removes_target_until_it_recovers() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let gateway = Gateway::start(&config(
        &[&a, &b],
        "    health_check: { path: /healthz, interval: 100ms, timeout: 500ms, healthy_threshold: 2, unhealthy_threshold: 2 }\n",
    ))
    .await;
    let seen = backends_hit(&gateway, 10).await;
    assert!(seen.contains(&"a".to_owned()) && seen.contains(&"b".to_owned()));

    b.healthy.store(false, Ordering::SeqCst);
    let removed = eventually(Duration::from_secs(5), || async {
        backends_hit(&gateway, 6).await.iter().all(|n| n == "a")
    })
    .await;
    assert!(removed, "unhealthy target still receives traffic");
    let before = b.hits.load(Ordering::SeqCst);
    backends_hit(&gateway, 20).await;
    assert_eq!(
        b.hits.load(Ordering::SeqCst),
        before,
        "unhealthy target was sent requests"
    );
    let (_, metrics) = crate::support::admin_get(gateway.admin, "/metrics")
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!(
            "portcullis_upstream_target_healthy{{target=\"{}\",upstream=\"pool\"}} 0",
            b.addr
        )),
        "{metrics}"
    );

    b.healthy.store(true, Ordering::SeqCst);
    let back = eventually(Duration::from_secs(5), || async {
        backends_hit(&gateway, 6).await.contains(&"b".to_owned())
    })
    .await;
    assert!(back, "recovered target does not receive traffic again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_target_gives_json_error_never_a_hang() {
    let a = Backend::start("a").await;
    let gateway = Gateway::start(&config(&[&a], "")).await;
    assert_eq!(backends_hit(&gateway, 2).await, ["a", "a"]);
    a.kill();
    let client = client();
    for _ in 0..8 {
        let started = Instant::now();
        let response = match client.get(gateway.url("/after-kill")).send().await {
            Ok(response) => response,
            Err(e) => panic!("{e:?}\n{}", gateway.stderr()),
        };
        let elapsed = started.elapsed();
        let status = response.status().as_u16();
        assert!(status == 502 || status == 503, "status {status}");
        assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
        // The gateway closes after a failed attempt, and says so.
        assert_eq!(response.headers()["connection"], "close");
        let id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["request_id"], id);
        assert_eq!(body["status"], status);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_are_retried_on_another_target_and_ejected() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let gateway = Gateway::start(&config(
        &[&a, &b],
        "    passive_health: { max_failures: 1, ejection_time: 60s }\n",
    ))
    .await;
    b.kill();
    // Every GET succeeds: a failed connect to b is retried on a.
    let seen = backends_hit(&gateway, 10).await;
    assert!(seen.iter().all(|n| n == "a"));
    let (_, metrics) = crate::support::admin_get(gateway.admin, "/metrics")
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!(
            "portcullis_upstream_target_healthy{{target=\"{}\",upstream=\"pool\"}} 0",
            b.addr
        )),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_gives_504() {
    let a = Backend::start("a").await;
    let gateway = Gateway::start(&config(&[&a], "    timeouts: { read: 300ms }\n")).await;
    let response = client()
        .get(gateway.url("/slow?sleep_ms=2000"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 504);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], 504);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_requests_answered_503_are_retried_elsewhere() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    a.fail_status.store(503, Ordering::SeqCst);
    let gateway = Gateway::start(&config(
        &[&a, &b],
        "    passive_health: { max_failures: 0 }\n",
    ))
    .await;
    let seen = backends_hit(&gateway, 10).await;
    assert!(seen.iter().all(|n| n == "b"), "{seen:?}");
    assert!(
        a.hits.load(Ordering::SeqCst) >= 1,
        "the failing target was never tried"
    );

    // A POST is not idempotent: the 503 reaches the client as it was.
    let client = client();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(
            client
                .post(gateway.url("/p"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert!(statuses.contains(&503), "{statuses:?}");
    assert!(statuses.contains(&200), "{statuses:?}");

    // Every target failing: the last answer is passed through, not a hang.
    b.fail_status.store(502, Ordering::SeqCst);
    let response = client.get(gateway.url("/all-bad")).send().await.unwrap();
    assert!(matches!(response.status().as_u16(), 502 | 503));
}

fn breaker_state(metrics: &str, target: std::net::SocketAddr) -> Option<u8> {
    let prefix =
        format!("portcullis_upstream_breaker_state{{target=\"{target}\",upstream=\"pool\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_half_opens_and_closes() {
    let a = Backend::start("a").await;
    let gateway = Gateway::start(&config(
        &[&a],
        "    passive_health: { max_failures: 3, ejection_time: 1s, half_open_probes: 1 }\n    retries: { attempts: 0 }\n",
    ))
    .await;
    let state = || async {
        let (_, metrics) = crate::support::admin_get(gateway.admin, "/metrics")
            .await
            .unwrap();
        breaker_state(&metrics, a.addr)
    };
    assert_eq!(state().await, Some(0), "closed at start");
    a.fail_status.store(503, Ordering::SeqCst);
    let client = client();
    for _ in 0..3 {
        assert_eq!(
            client.get(gateway.url("/b")).send().await.unwrap().status(),
            503
        );
    }
    assert_eq!(state().await, Some(1), "open after 3 failures");
    // Open: answered at once, the target is not called.
    let hits = a.hits.load(Ordering::SeqCst);
    let started = Instant::now();
    let response = client.get(gateway.url("/b")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(a.hits.load(Ordering::SeqCst), hits);
    // Half-open after the ejection time; a failing probe opens it again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(state().await, Some(2), "half-open");
    assert_eq!(
        client.get(gateway.url("/b")).send().await.unwrap().status(),
        503
    );
    assert_eq!(a.hits.load(Ordering::SeqCst), hits + 1, "one probe");
    assert_eq!(state().await, Some(1), "open again after a failed probe");
    // The target recovers: the next probe closes the breaker.
    a.fail_status.store(0, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        client.get(gateway.url("/b")).send().await.unwrap().status(),
        200
    );
    assert_eq!(state().await, Some(0), "closed after a good probe");
    assert_eq!(
        client.get(gateway.url("/b")).send().await.unwrap().status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulkhead_rejects_over_the_limit_at_once() {
    let a = Backend::start("a").await;
    let text = with_route_fields(&[&a], "max_concurrent: 2");
    let gateway = Gateway::start(&text).await;
    let client = client();
    let slow: Vec<_> = (0..2)
        .map(|i| {
            let request = client
                .get(gateway.url(&format!("/slow/{i}?sleep_ms=800")))
                .send();
            tokio::spawn(request)
        })
        .collect();
    assert!(
        crate::support::eventually(Duration::from_secs(3), || async {
            a.hits.load(Ordering::SeqCst) >= 2
        })
        .await
    );
    let started = Instant::now();
    let third = client.get(gateway.url("/third")).send().await.unwrap();
    assert_eq!(third.status(), 503);
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "not at once: {:?}",
        started.elapsed()
    );
    for request in slow {
        assert_eq!(request.await.unwrap().unwrap().status(), 200);
    }
    // Slots are released: the route serves again.
    assert_eq!(
        client
            .get(gateway.url("/after"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_injection_within_five_percent() {
    let a = Backend::start("a").await;
    let text = with_route_fields(
        &[&a],
        "fault: { abort: { percent: 20, status: 418 }, delay: { percent: 30, duration: 40ms } }",
    );
    let gateway = Gateway::start(&text).await;
    let client = client();
    const TOTAL: usize = 2000;
    let mut aborted = 0;
    // Requests that took the delay's time or more: every delayed one, and
    // on a loaded machine perhaps others (so only a lower bound below).
    let mut slow = 0;
    for batch in 0..(TOTAL / 50) {
        let requests = (0..50).map(|i| {
            let client = client.clone();
            let url = gateway.url(&format!("/f/{batch}/{i}"));
            async move {
                let started = Instant::now();
                let status = client.get(url).send().await.unwrap().status().as_u16();
                (status, started.elapsed())
            }
        });
        for (status, elapsed) in futures_util::future::join_all(requests).await {
            match status {
                418 => aborted += 1,
                200 if elapsed >= Duration::from_millis(40) => slow += 1,
                200 => {}
                other => panic!("status {other}"),
            }
        }
    }
    let (_, metrics) = crate::support::admin_get(gateway.admin, "/metrics")
        .await
        .unwrap();
    assert!(metrics.contains(&format!(
        "portcullis_faults_injected_total{{kind=\"abort\",route=\"all\"}} {aborted}"
    )));
    // How many were delayed, as the gateway counted them; each of them
    // must have taken the delay's time.
    let delayed: usize = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("portcullis_faults_injected_total{kind=\"delay\",route=\"all\"} ")
        })
        .and_then(|n| n.trim().parse().ok())
        .expect("the delay counter");
    assert!(slow >= delayed, "{delayed} delayed, only {slow} took 40 ms");
    let abort_share = aborted as f64 / TOTAL as f64;
    // Delays apply to the requests not aborted.
    let delay_share = delayed as f64 / (TOTAL - aborted) as f64;
    eprintln!("fault injection: {abort_share:.3} aborted, {delay_share:.3} delayed");
    // ±5 percentage points, as for the weighted split.
    assert!((abort_share - 0.20).abs() <= 0.05, "aborted {abort_share}");
    assert!((delay_share - 0.30).abs() <= 0.05, "delayed {delay_share}");
}
