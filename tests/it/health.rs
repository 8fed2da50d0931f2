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
