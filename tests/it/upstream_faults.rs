//! Misbehaving upstreams: every one ends in the documented 502/504 (or a
//! closed connection once the response has started) within its deadline,
//! and no raw upstream bytes reach the client.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{raw_exchange, with_plain_listener, RawResponse};

/// What a scripted upstream does once it has read a request head.
#[derive(Clone, Copy, Debug)]
enum Script {
    Hang,
    Reset,
    Close,
    HalfBody,
    DripHead,
    SlowHeaders,
    GarbageStatus,
    GarbageBytes,
    HugeHeaders,
    DuplicateLength,
    InvalidLength,
    LengthAndChunked,
    InterimFlood,
    Continue,
    EarlyHints,
    EarlyClose,
    DripBody,
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

async fn serve(mut stream: TcpStream, script: Script) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    match script {
        Script::Hang => tokio::time::sleep(Duration::from_secs(30)).await,
        Script::Reset => {
            // Linger 0 turns the close into a reset; with a zero linger the
            // drop does not block, which is what the deprecation is about.
            #[allow(deprecated)]
            let _ = stream.set_linger(Some(Duration::ZERO));
        }
        Script::Close => {}
        Script::HalfBody => {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nRAW-UPSTREAM-half")
                .await;
        }
        Script::DripHead => {
            drip(
                &mut stream,
                b"HTTP/1.1 200 OK\r\nX-Drip: ",
                Duration::from_millis(400),
            )
            .await
        }
        Script::SlowHeaders => {
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\n").await;
            for i in 0..10 {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                if stream
                    .write_all(format!("X-Slow-{i}: 1\r\n").as_bytes())
                    .await
                    .is_err()
                {
                    return;
                }
            }
            let _ = stream.write_all(b"Content-Length: 2\r\n\r\nok").await;
        }
        Script::GarbageStatus => {
            let _ = stream
                .write_all(b"HTTX/1.1 200 OK\r\nContent-Length: 12\r\n\r\nRAW-UPSTREAM")
                .await;
        }
        Script::GarbageBytes => {
            let _ = stream
                .write_all(b"\x00\x01\x02 RAW-UPSTREAM bytes\r\n\r\n")
                .await;
        }
        Script::HugeHeaders => {
            let mut response = b"HTTP/1.1 200 OK\r\n".to_vec();
            for i in 0..2000 {
                response
                    .extend_from_slice(format!("X-Big-{i}: {}\r\n", "b".repeat(100)).as_bytes());
            }
            response.extend_from_slice(b"Content-Length: 12\r\n\r\nRAW-UPSTREAM");
            let _ = stream.write_all(&response).await;
        }
        Script::DuplicateLength => {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nContent-Length: 13\r\n\r\nRAW-UPSTREAM!")
                .await;
        }
        Script::InvalidLength => {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\nRAW-UPSTREAM")
                .await;
        }
        Script::LengthAndChunked => {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\nRAW-UPSTREAM")
                .await;
        }
        Script::InterimFlood => {
            let flood = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(1000);
            let _ = stream.write_all(&flood).await;
            let _ = stream.write_all(OK).await;
        }
        Script::Continue => {
            let _ = stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await;
            let _ = stream.write_all(OK).await;
        }
        Script::EarlyHints => {
            let _ = stream
                .write_all(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
                .await;
            let _ = stream.write_all(OK).await;
        }
        Script::EarlyClose => {
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n").await;
        }
        Script::DripBody => {
            drip(
                &mut stream,
                b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
                Duration::from_millis(300),
            )
            .await
        }
    }
    // Hold the connection a moment so that only the script decides.
    if !matches!(
        script,
        Script::Reset | Script::Close | Script::HalfBody | Script::EarlyClose
    ) {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Writes `prefix`, then one byte every `every`.
async fn drip(stream: &mut TcpStream, prefix: &[u8], every: Duration) {
    let _ = stream.write_all(prefix).await;
    for _ in 0..100 {
        tokio::time::sleep(every).await;
        if stream.write_all(b"a").await.is_err() {
            return;
        }
    }
}

async fn scripted(script: Script) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(serve(stream, script));
        }
    });
    addr
}

/// What the client must see.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// This error status with the JSON body, within this many seconds.
    Error(u16, u64),
    /// The upstream's status, then the connection closed before the body
    /// it announced was complete, within this many seconds.
    CutAfterHead(u64),
    /// These statuses in order (interim ones included), the last 200 "ok".
    Statuses(&'static [u16]),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_upstreams_end_in_documented_errors() {
    use Expect::*;
    use Script::*;
    // (name, script, request version and extra headers, expectation)
    let cases: &[(&str, Script, &str, Expect)] = &[
        ("hang", Hang, "HTTP/1.1", Error(504, 4)),
        ("reset", Reset, "HTTP/1.1", Error(502, 2)),
        ("close", Close, "HTTP/1.1", Error(502, 2)),
        ("half body", HalfBody, "HTTP/1.1", CutAfterHead(3)),
        ("drip head", DripHead, "HTTP/1.1", Error(504, 5)),
        ("slow headers", SlowHeaders, "HTTP/1.1", Error(504, 5)),
        ("garbage status", GarbageStatus, "HTTP/1.1", Error(502, 2)),
        ("garbage bytes", GarbageBytes, "HTTP/1.1", Error(502, 2)),
        ("huge headers", HugeHeaders, "HTTP/1.1", Error(502, 2)),
        (
            "duplicate Content-Length",
            DuplicateLength,
            "HTTP/1.1",
            Error(502, 2),
        ),
        (
            "invalid Content-Length",
            InvalidLength,
            "HTTP/1.1",
            Error(502, 2),
        ),
        // RFC 9112 §6.3: chunked wins, Content-Length is dropped, and the
        // bytes after the chunked end are never relayed.
        (
            "Content-Length and chunked",
            LengthAndChunked,
            "HTTP/1.1",
            Statuses(&[200]),
        ),
        ("1xx flood", InterimFlood, "HTTP/1.1", Error(502, 2)),
        ("100 to HTTP/1.0", Continue, "HTTP/1.0", Statuses(&[200])),
        ("100 not asked for", Continue, "HTTP/1.1", Statuses(&[200])),
        ("100 asked for", Continue, "expect", Statuses(&[100, 200])),
        ("103 passed", EarlyHints, "HTTP/1.1", Statuses(&[103, 200])),
        ("early close", EarlyClose, "HTTP/1.1", Error(502, 2)),
        (
            "drip body past the route deadline",
            DripBody,
            "HTTP/1.1",
            CutAfterHead(5),
        ),
    ];
    assert!(cases.len() >= 12);
    let mut config = String::from("server: { access_log: false }\nupstreams:\n");
    let mut routes = String::from("routes:\n");
    for (i, (_, script, _, _)) in cases.iter().enumerate() {
        let addr = scripted(*script).await;
        config.push_str(&format!(
            "  u{i}: {{ targets: ['{addr}'], retries: {{ attempts: 0 }}, passive_health: {{ max_failures: 0 }}, timeouts: {{ read: 2s, response_headers: 3s }} }}\n"
        ));
        let timeout = if matches!(script, DripBody) {
            ", timeout: 2500ms"
        } else {
            ""
        };
        routes.push_str(&format!(
            "  - {{ name: r{i}, match: {{ path_prefix: /c{i} }}, upstream: u{i}{timeout} }}\n"
        ));
    }
    config.push_str(&routes);
    let gateway = crate::support::Gateway::start(&with_plain_listener(&config)).await;

    let mut failures = Vec::new();
    for (i, (name, _, version, expect)) in cases.iter().enumerate() {
        let request = match *version {
            "HTTP/1.0" => format!("GET /c{i} HTTP/1.0\r\n\r\n"),
            "expect" => format!("POST /c{i} HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi"),
            _ => format!("GET /c{i} HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n"),
        };
        let started = Instant::now();
        let responses =
            raw_exchange(gateway.port, request.as_bytes(), Duration::from_secs(10)).await;
        let took = started.elapsed();
        let raw_leak = responses.iter().any(|r: &RawResponse| {
            r.head.contains("RAW-UPSTREAM")
                || String::from_utf8_lossy(&r.body).contains("RAW-UPSTREAM") && r.status >= 500
        });
        let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
        let ok = match expect {
            Error(status, within) => {
                responses.len() == 1
                    && responses[0].status == *status
                    && responses[0]
                        .json()
                        .is_some_and(|j| j["request_id"].is_string())
                    && took < Duration::from_secs(*within)
            }
            CutAfterHead(within) => {
                responses.len() == 1
                    && responses[0].status == 200
                    && responses[0]
                        .header("content-length")
                        .and_then(|l| l.parse::<usize>().ok())
                        .is_some_and(|declared| responses[0].body.len() < declared)
                    && took < Duration::from_secs(*within)
            }
            Statuses(want) => {
                statuses == *want
                    && responses.last().is_some_and(|r| r.body == b"ok")
                    && took < Duration::from_secs(2)
            }
        };
        eprintln!("{name}: {statuses:?} in {took:?}");
        if !ok || raw_leak {
            failures.push(format!("{name}: want {expect:?}, got {statuses:?} in {took:?} (raw upstream bytes: {raw_leak}) {:?}", responses.first().map(|r| (&r.head, String::from_utf8_lossy(&r.body).into_owned()))));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
