use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::{admin_get, client, eventually, with_plain_listener, Backend, Gateway};

fn config(echo: &Backend, tag: &str) -> String {
    with_plain_listener(&format!(
        "server: {{ access_log: false, grace_period: 20s }}\nupstreams:\n  echo: {{ targets: ['{}'] }}\nroutes:\n  - name: all\n    upstream: echo\n    response_headers: {{ set: {{ x-config: {tag} }} }}\n",
        echo.addr
    ))
}

/// Runs `workers` request loops until `stop`, at most `max_each` requests
/// each; returns (ok, failed, tags seen).
fn load(
    url: String,
    workers: usize,
    max_each: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(usize, Vec<String>, std::collections::BTreeSet<String>)> {
    tokio::spawn(async move {
        let client = client();
        let tasks = (0..workers).map(|_| {
            let client = client.clone();
            let url = url.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut ok = 0;
                let mut failed = Vec::new();
                let mut tags = std::collections::BTreeSet::new();
                for _ in 0..max_each {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    match client.get(&url).send().await {
                        Ok(r) if r.status() == 200 => {
                            if let Some(tag) = r.headers().get("x-config") {
                                tags.insert(tag.to_str().unwrap().to_owned());
                            }
                            ok += 1;
                        }
                        Ok(r) => failed.push(format!("status {}", r.status())),
                        Err(e) => failed.push(format!("error {e}")),
                    }
                }
                (ok, failed, tags)
            })
        });
        let mut total = (0, Vec::new(), std::collections::BTreeSet::new());
        for result in futures_util::future::join_all(tasks).await {
            let (ok, failed, tags) = result.unwrap();
            total.0 += ok;
            total.1.extend(failed);
            total.2.extend(tags);
        }
        total
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_fails_no_request() {
    let echo = Backend::start("echo").await;
    let gateway = Gateway::start(&config(&echo, "one")).await;
    let stop = Arc::new(AtomicBool::new(false));
    let running = load(gateway.url("/load"), 8, 5_000, stop.clone());

    let admin = reqwest::Client::builder().no_proxy().build().unwrap();
    let reload_url = format!("http://127.0.0.1:{}/reload", gateway.admin);
    for (i, tag) in ["two", "three", "four", "five"].iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(150)).await;
        gateway.write_config(&config(&echo, tag));
        let response = admin.post(&reload_url).send().await.unwrap();
        assert_eq!(response.status(), 200, "reload {i}");
    }
    // An invalid config is rejected with its errors; the old one serves on.
    tokio::time::sleep(Duration::from_millis(150)).await;
    gateway.write_config(&config(&echo, "broken").replace("upstream: echo", "upstream: nowhere"));
    let response = admin.post(&reload_url).send().await.unwrap();
    assert_eq!(response.status(), 422);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("unknown upstream `nowhere`"),
        "{body}"
    );
    // SIGHUP reloads too.
    gateway.write_config(&config(&echo, "six"));
    gateway.signal("HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let (ok, failed, tags) = running.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} failed of {}: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 100, "only {ok} requests ran");
    assert!(tags.contains("one") && tags.contains("five"), "{tags:?}");
    assert!(!tags.contains("broken"));
    let response = client().get(gateway.url("/after")).send().await.unwrap();
    assert_eq!(response.headers()["x-config"], "six");
    let (_, config) = admin_get(gateway.admin, "/config").await.unwrap();
    assert!(config.contains("\"generation\":"), "{config}");
    eprintln!("reload under load: {ok} requests, 0 failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_change_reloads_and_bad_file_keeps_old() {
    let echo = Backend::start("echo").await;
    let gateway = Gateway::start(&config(&echo, "one")).await;
    gateway.write_config("listeners: [ {");
    assert!(
        eventually(Duration::from_secs(5), || async {
            gateway.stderr().contains("config reload rejected")
        })
        .await
    );
    let response = client().get(gateway.url("/")).send().await.unwrap();
    assert_eq!(response.headers()["x-config"], "one");
    gateway.write_config(&config(&echo, "two"));
    let changed = eventually(Duration::from_secs(5), || async {
        let response = client().get(gateway.url("/")).send().await.unwrap();
        response.headers()["x-config"] == "two"
    })
    .await;
    assert!(changed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_accepted_requests_and_exits_0() {
    let echo = Backend::start("echo").await;
    let mut gateway = Gateway::start(&config(&echo, "one")).await;
    const IN_FLIGHT: usize = 20;
    let client = client();
    let done = Arc::new(AtomicUsize::new(0));
    let requests: Vec<_> = (0..IN_FLIGHT)
        .map(|i| {
            let client = client.clone();
            let url = gateway.url(&format!("/slow/{i}?sleep_ms=800"));
            let done = done.clone();
            tokio::spawn(async move {
                let result = client.get(url).send().await;
                done.fetch_add(1, Ordering::SeqCst);
                match result {
                    Ok(r) => Ok(r.status().as_u16()),
                    Err(e) => Err(e.to_string()),
                }
            })
        })
        .collect();
    // All requests have reached the backend: they were accepted.
    assert!(
        eventually(Duration::from_secs(5), || async {
            echo.hits.load(Ordering::SeqCst) >= IN_FLIGHT
        })
        .await
    );
    let stop = Arc::new(AtomicBool::new(false));
    let background = load(gateway.url("/load"), 2, 200, stop.clone());
    tokio::time::sleep(Duration::from_millis(50)).await;
    let signalled = Instant::now();
    gateway.signal("TERM");
    let mut statuses = Vec::new();
    for request in requests {
        statuses.push(request.await.unwrap());
    }
    assert!(
        statuses.iter().all(|s| *s == Ok(200)),
        "in-flight requests failed: {statuses:?}"
    );
    let code = gateway.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(code, Some(0));
    let took = signalled.elapsed();
    // Idle after the last request: it exits well before the 20 s grace period.
    assert!(took < Duration::from_secs(10), "exit took {took:?}");
    stop.store(true, Ordering::SeqCst);
    let (_, failed, _) = background.await.unwrap();
    // Requests after SIGTERM may be refused (not accepted); none may get a
    // gateway error status.
    assert!(
        failed.iter().all(|f| !f.starts_with("status")),
        "{failed:?}"
    );
    eprintln!("SIGTERM: {IN_FLIGHT} in-flight requests completed, exit 0 after {took:?}");
}
