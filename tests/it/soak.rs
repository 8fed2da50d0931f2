//! The soak: mixed traffic for a long time, watching the gateway's memory.
//!
//! Ignored in `cargo test`; `benches/soak.sh` runs it (30 minutes by
//! default, `SOAK_SECONDS` to change) and plots what it writes; CI runs it
//! for a few seconds. Traffic, from 8 workers in turn: bearer tokens from
//! the SSO (client credentials), a browser session signed in at the SSO
//! through the gateway, a rate-limited route (429s expected), a flapping
//! upstream (its 503s, and the gateway's 502/503 while it is ejected, are
//! injected errors), gRPC unary calls over h2c, WebSocket echoes; a config
//! reload every 30 s. Every 5 s: the gateway's RSS, requests, errors and
//! the window's p99 go to `SOAK_OUT/soak.csv`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use http::uri::PathAndQuery;
use tokio_tungstenite::tungstenite::Message;
use tonic_prost::ProstCodec;

use crate::protocols::{grpc_backend, websocket_echo_backend, Note};
use crate::sso::{
    client_credentials, sign_in_at_sso, sso_with_gateway_client, write_users, Browser,
};
use crate::support::{client, free_port, Backend, Gateway};

/// One kind of request in the mix.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Bearer,
    Session,
    Limited,
    Flapping,
    Grpc,
    WebSocket,
}

const MIX: [Kind; 6] = [
    Kind::Bearer,
    Kind::Session,
    Kind::Limited,
    Kind::Flapping,
    Kind::Grpc,
    Kind::WebSocket,
];

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    errors: AtomicU64,
    injected: AtomicU64,
    /// Latencies (µs) of the current sampling window.
    window: Mutex<Vec<u32>>,
    first_errors: Mutex<Vec<String>>,
}

impl Counters {
    fn record(&self, started: Instant, outcome: Result<bool, String>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let micros = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
        self.window.lock().unwrap().push(micros);
        match outcome {
            Ok(false) => {}
            Ok(true) => {
                self.injected.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                let mut first = self.first_errors.lock().unwrap();
                if first.len() < 20 {
                    first.push(error);
                }
            }
        }
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn p99_ms(window: &mut [u32]) -> f64 {
    if window.is_empty() {
        return 0.0;
    }
    window.sort_unstable();
    let index = (window.len() * 99 / 100).min(window.len() - 1);
    f64::from(window[index]) / 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "long: run by benches/soak.sh (and briefly by tests/run.sh)"]
async fn soak() {
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1800);
    let out_dir = std::path::PathBuf::from(
        std::env::var("SOAK_OUT").unwrap_or_else(|_| "target/soak".to_owned()),
    );
    std::fs::create_dir_all(&out_dir).unwrap();
    let duration = Duration::from_secs(seconds);

    // The SSO, and a gateway that signs browsers in there.
    let dir = tempfile::tempdir().unwrap();
    write_users(dir.path());
    let (sso_port, gw_port) = (free_port(), free_port());
    let sso = sso_with_gateway_client(dir.path(), sso_port, &[gw_port]).await;
    let app = Backend::start("app").await;
    let flapping = Backend::start("flapping").await;
    let ws = websocket_echo_backend().await;
    let grpc = grpc_backend().await;
    let config = format!(
        "listeners: [ {{ name: plain, address: '127.0.0.1:{gw_port}', h2c: true }} ]
admin: {{ address: '127.0.0.1:{{ADMIN}}' }}
server: {{ access_log: false }}
identity:
  providers:
    - {{ name: sso, issuer: '{issuer}', audiences: [api, orders-api] }}
  login:
    provider: sso
    client_id: gateway
    client_secret: gateway-secret
    scopes: [openid, profile]
    public_url: 'http://127.0.0.1:{gw_port}'
    secure_cookies: false
upstreams:
  app: {{ targets: ['{app}'] }}
  flapping: {{ targets: ['{flapping}'], passive_health: {{ max_failures: 3, ejection_time: 2s }} }}
  ws: {{ targets: ['{ws}'] }}
  grpc: {{ targets: ['{grpc}'], protocol: http2 }}
routes:
  - {{ name: api, match: {{ path_prefix: /api }}, upstream: app, strip_prefix: true, auth: {{ mode: required }} }}
  - {{ name: session, match: {{ path_prefix: /app }}, upstream: app, strip_prefix: true, auth: {{ mode: required, roles_any: [admin], login_redirect: true }} }}
  - {{ name: limited, match: {{ path_prefix: /limited }}, upstream: app, rate_limits: [ {{ key: client_ip, rate: 200/s, burst: 50 }} ] }}
  - {{ name: flapping, match: {{ path_prefix: /flapping }}, upstream: flapping }}
  - {{ name: ws, match: {{ path_prefix: /ws }}, upstream: ws }}
  - {{ name: grpc, match: {{ path_prefix: /echo.Echo }}, upstream: grpc }}
",
        issuer = sso.issuer(),
        app = app.addr,
        flapping = flapping.addr,
    );
    let gateway = Gateway::start(&config).await;
    let base = format!("http://127.0.0.1:{gw_port}");

    // A bearer token (client credentials) and a browser session.
    let (status, token, _) = client_credentials(
        &sso,
        &[("grant_type", "client_credentials")],
        Some(("billing", "billing-secret")),
    )
    .await;
    assert_eq!(status, 200, "{token}");
    let bearer = format!("Bearer {}", token["access_token"].as_str().unwrap());
    let browser = Browser::default();
    let callback = sign_in_at_sso(&browser, &base, &sso).await;
    assert_eq!(browser.navigate(&callback).await.status(), 302);
    let cookie = browser.cookie_header();
    let grpc_channel = tonic::transport::Channel::from_shared(base.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();

    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..8usize {
        let (counters, stop, base, bearer, cookie) = (
            counters.clone(),
            stop.clone(),
            base.clone(),
            bearer.clone(),
            cookie.clone(),
        );
        let mut grpc = tonic::client::Grpc::new(grpc_channel.clone());
        tasks.push(tokio::spawn(async move {
            let http = client();
            let mut turn = worker;
            // Bounded in count as well as in time.
            while !stop.load(Ordering::Relaxed) && turn < 100_000_000 {
                let kind = MIX[turn % MIX.len()];
                turn += 1;
                let t0 = Instant::now();
                let outcome: Result<bool, String> = match kind {
                    Kind::Bearer | Kind::Session | Kind::Limited | Kind::Flapping => {
                        let (path, header) = match kind {
                            Kind::Bearer => {
                                ("/api/items", Some(("authorization", bearer.as_str())))
                            }
                            Kind::Session => ("/app/items", Some(("cookie", cookie.as_str()))),
                            Kind::Limited => ("/limited/items", None),
                            _ => ("/flapping/items", None),
                        };
                        let mut request = http.get(format!("{base}{path}"));
                        if let Some((name, value)) = header {
                            request = request.header(name, value);
                        }
                        match request.send().await {
                            Ok(response) => {
                                let status = response.status().as_u16();
                                let _ = response.bytes().await;
                                match (kind, status) {
                                    (_, 200) => Ok(false),
                                    (Kind::Limited, 429) => Ok(false),
                                    (Kind::Flapping, 502 | 503) => Ok(true),
                                    _ => Err(format!("{kind:?}: {status}")),
                                }
                            }
                            Err(e) => Err(format!("{kind:?}: {e}")),
                        }
                    }
                    Kind::Grpc => {
                        let reply = async {
                            grpc.ready().await.map_err(|e| e.to_string())?;
                            grpc.unary(
                                tonic::Request::new(Note {
                                    text: "soak".into(),
                                }),
                                PathAndQuery::from_static("/echo.Echo/Say"),
                                ProstCodec::<Note, Note>::default(),
                            )
                            .await
                            .map_err(|e| e.to_string())
                        }
                        .await;
                        match reply {
                            Ok(reply) if reply.get_ref().text == "said: soak" => Ok(false),
                            Ok(reply) => Err(format!("grpc: {:?}", reply.get_ref().text)),
                            Err(e) => Err(format!("grpc: {e}")),
                        }
                    }
                    Kind::WebSocket => {
                        let echo = async {
                            let url = format!("{}/ws/soak", base.replace("http://", "ws://"));
                            let (mut socket, _) = tokio_tungstenite::connect_async(url)
                                .await
                                .map_err(|e| e.to_string())?;
                            for i in 0..3 {
                                let text = format!("soak {i}");
                                socket
                                    .send(Message::text(text.clone()))
                                    .await
                                    .map_err(|e| e.to_string())?;
                                match socket.next().await {
                                    Some(Ok(message)) if message == Message::text(text) => {}
                                    other => return Err(format!("{other:?}")),
                                }
                            }
                            let _ = socket.close(None).await;
                            Ok(false)
                        }
                        .await;
                        echo.map_err(|e| format!("websocket: {e}"))
                    }
                };
                counters.record(t0, outcome);
            }
        }));
    }

    // The flapping upstream: 503 for 5 s of every 20.
    let flap_stop = stop.clone();
    let fail_status = flapping.fail_status.clone();
    let flapper = tokio::spawn(async move {
        let mut up = true;
        while !flap_stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_secs(if up { 15 } else { 5 })).await;
            up = !up;
            fail_status.store(if up { 0 } else { 503 }, Ordering::SeqCst);
        }
    });

    // Sampling, and a reload every 30 s.
    let pid = gateway.pid();
    let mut csv = String::from("elapsed_s,rss_mib,requests,errors,injected,p99_ms\n");
    let mut samples: Vec<(u64, u64)> = Vec::new();
    let sample_every = Duration::from_secs(5)
        .min(duration / 4)
        .max(Duration::from_secs(1));
    let mut next_reload = Duration::from_secs(30);
    let mut reloads = 0;
    while started.elapsed() < duration {
        tokio::time::sleep(sample_every).await;
        let elapsed = started.elapsed();
        if elapsed >= next_reload {
            next_reload += Duration::from_secs(30);
            let reloaded = client()
                .post(format!("http://127.0.0.1:{}/reload", gateway.admin))
                .send()
                .await
                .map(|r| r.status().as_u16());
            assert_eq!(reloaded.ok(), Some(200), "reload failed");
            reloads += 1;
        }
        let rss = rss_kib(pid);
        let p99 = p99_ms(&mut std::mem::take(&mut *counters.window.lock().unwrap()));
        let line = format!(
            "{},{:.1},{},{},{},{:.2}",
            elapsed.as_secs(),
            rss as f64 / 1024.0,
            counters.requests.load(Ordering::Relaxed),
            counters.errors.load(Ordering::Relaxed),
            counters.injected.load(Ordering::Relaxed),
            p99
        );
        eprintln!("soak {line}");
        csv.push_str(&line);
        csv.push('\n');
        samples.push((elapsed.as_secs(), rss));
        std::fs::write(out_dir.join("soak.csv"), &csv).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    let _ = flapper.await;

    // The summary.
    let warm_up = (seconds / 10).max(60).min(seconds / 2);
    let at_start = samples.first().map_or(0, |s| s.1);
    let after_warm_up = samples
        .iter()
        .find(|s| s.0 >= warm_up)
        .or(samples.last())
        .map_or(0, |s| s.1);
    let at_end = samples.last().map_or(0, |s| s.1);
    let growth = if after_warm_up > 0 {
        (at_end as f64 - after_warm_up as f64) * 100.0 / after_warm_up as f64
    } else {
        0.0
    };
    let requests = counters.requests.load(Ordering::Relaxed);
    let errors = counters.errors.load(Ordering::Relaxed);
    let summary = format!(
        "| duration | requests | req/s | errors | injected | reloads | RSS start | RSS after warm-up ({warm_up} s) | RSS end | growth after warm-up |\n|---|---|---|---|---|---|---|---|---|---|\n| {seconds} s | {requests} | {:.0} | {errors} | {} | {reloads} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {growth:+.1} % |\n",
        requests as f64 / seconds as f64,
        counters.injected.load(Ordering::Relaxed),
        at_start as f64 / 1024.0,
        after_warm_up as f64 / 1024.0,
        at_end as f64 / 1024.0,
    );
    std::fs::write(out_dir.join("summary.md"), &summary).unwrap();
    eprintln!("{summary}");
    let first_errors = counters.first_errors.lock().unwrap().clone();
    assert_eq!(errors, 0, "errors that were not injected: {first_errors:?}");
    assert!(requests > 0);
    if seconds >= 600 {
        assert!(growth < 10.0, "RSS grew {growth:.1} % after warm-up");
    }
}
