use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{client, with_plain_listener, Backend, Gateway};

fn config(echo: &Backend) -> String {
    with_plain_listener(&format!(
        "server:\n  limits: {{ max_body_size: 1KiB, max_header_size: 2KiB, max_header_count: 20, header_timeout: 2s }}\nupstreams:\n  echo: {{ targets: ['{}'] }}\nroutes:\n  - {{ name: all, upstream: echo }}\n",
        echo.addr
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_body_413_and_headers_431() {
    let echo = Backend::start("echo").await;
    let gateway = Gateway::start(&config(&echo)).await;
    let client = client();

    let ok = client
        .post(gateway.url("/"))
        .body(vec![b'a'; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);

    let big = client
        .post(gateway.url("/"))
        .body(vec![b'a'; 2000])
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 413);
    let body: serde_json::Value = big.json().await.unwrap();
    assert_eq!(body["status"], 413);
    assert!(body["request_id"].as_str().is_some_and(|id| !id.is_empty()));

    // Chunked, no Content-Length: counted as it streams.
    let stream = futures_util::stream::iter(
        (0..4).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'b'; 600]))),
    );
    let chunked = client
        .post(gateway.url("/"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(chunked.status(), 413);

    let long_header = client
        .get(gateway.url("/"))
        .header("x-big", "v".repeat(3000))
        .send()
        .await
        .unwrap();
    assert_eq!(long_header.status(), 431);

    let mut many = client.get(gateway.url("/"));
    for i in 0..30 {
        many = many.header(format!("x-h{i}"), "1");
    }
    assert_eq!(many.send().await.unwrap().status(), 431);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_framing_headers_cannot_smuggle() {
    let echo = Backend::start("echo").await;
    let gateway = Gateway::start(&config(&echo)).await;
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", gateway.port))
        .await
        .unwrap();
    // Content-Length 5 would swallow "0\r\n\r" and leave a smuggled request
    // behind; chunked framing (RFC 9112 §6.3) ends the body at "0\r\n\r\n".
    stream
        .write_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response);
    // Refused outright (RFC 9112 §6.1 allows it; the edge should), the
    // connection closed, and neither request reaches the backend.
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("\"request_id\""), "{text}");
    assert!(!text.contains("/smuggled"), "{text}");
    assert_eq!(echo.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_header_client_is_cut_off() {
    let echo = Backend::start("echo").await;
    let gateway = Gateway::start(&config(&echo)).await;
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", gateway.port))
        .await
        .unwrap();
    let started = Instant::now();
    let request = b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut cut_off_after = None;
    // One byte per second; the header timeout is 2 s, so the gateway must
    // close the connection long before the 60 bytes are through.
    for byte in request.iter().take(20) {
        if stream.write_all(&[*byte]).await.is_err() {
            cut_off_after = Some(started.elapsed());
            break;
        }
        let mut buf = [0u8; 64];
        match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                cut_off_after = Some(started.elapsed());
                break;
            }
            Ok(Ok(_)) => {
                cut_off_after = Some(started.elapsed());
                break;
            }
            Err(_) => {}
        }
    }
    let after = cut_off_after.expect("connection was never cut off");
    assert!(after < Duration::from_secs(6), "cut off after {after:?}");
    assert!(
        after >= Duration::from_millis(1500),
        "cut off too early: {after:?}"
    );
    assert_eq!(echo.hits.load(std::sync::atomic::Ordering::SeqCst), 0);

    // A normal client on the same gateway is served.
    let ok = client().get(gateway.url("/")).send().await.unwrap();
    assert_eq!(ok.status(), 200);
}

fn slow_client_config(echo: &Backend, limits: &str) -> String {
    with_plain_listener(&format!(
        "server:\n  access_log: false\n  limits: {{ {limits} }}\nupstreams:\n  echo: {{ targets: ['{}'] }}\nroutes:\n  - {{ name: all, upstream: echo }}\n",
        echo.addr
    ))
}

/// A body trickled below the minimum rate is cut off at its deadline (base
/// allowance plus time earned by bytes received); a fast large body is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_body_is_cut_off_and_fast_bodies_are_not() {
    let echo = Backend::start("echo").await;
    let gateway = Gateway::start(&slow_client_config(
        &echo,
        "body_timeout: 1s, min_body_rate: 1KiB, max_body_size: 10MiB",
    ))
    .await;
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", gateway.port))
        .await
        .unwrap();
    stream
        .write_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let trickle = async {
        // 10 bytes every 200 ms: 50 B/s, far below 1 KiB/s.
        for _ in 0..100 {
            if stream.write_all(&[b'x'; 10]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            if started.elapsed() > Duration::from_secs(8) {
                break;
            }
        }
    };
    // Meanwhile, another client is served, and a fast 2 MiB body passes.
    let others = async {
        let ok = client().get(gateway.url("/")).send().await.unwrap();
        assert_eq!(ok.status(), 200);
        let big = client()
            .post(gateway.url("/"))
            .body(vec![b'y'; 2 * 1024 * 1024])
            .send()
            .await
            .unwrap();
        assert_eq!(big.status(), 200);
    };
    tokio::join!(trickle, others);
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut response)).await;
    let after = started.elapsed();
    let text = String::from_utf8_lossy(&response);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    eprintln!("slow body: cut off after {after:?}");
    // Cut off at about 1 s + 200 bytes / 1 KiB/s, long before the 100 writes.
    assert!(after < Duration::from_secs(5), "cut off after {after:?}");
}

/// 500 connections that never send a request are closed at the header
/// deadline, and one that went idle after a request at the keep-alive
/// timeout, while other clients keep being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_at_their_deadlines() {
    let echo = Backend::start("echo").await;
    let gateway = Gateway::start(&slow_client_config(
        &echo,
        "header_timeout: 1s, keepalive_timeout: 1s",
    ))
    .await;
    let started = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..500 {
        idle.push(
            tokio::net::TcpStream::connect(("127.0.0.1", gateway.port))
                .await
                .unwrap(),
        );
    }
    let mut kept = tokio::net::TcpStream::connect(("127.0.0.1", gateway.port))
        .await
        .unwrap();
    kept.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 4096];
    let n = kept.read(&mut first).await.unwrap();
    assert!(first[..n].starts_with(b"HTTP/1.1 200"));
    // Served while the idle ones wait.
    for _ in 0..20 {
        assert_eq!(
            client()
                .get(gateway.url("/"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let opened = started.elapsed();
    let mut open_after = Vec::new();
    for mut stream in idle.into_iter().chain(std::iter::once(kept)) {
        let mut buf = [0u8; 256];
        let result = tokio::time::timeout(Duration::from_secs(6), stream.read(&mut buf)).await;
        if !matches!(result, Ok(Ok(0)) | Ok(Err(_))) {
            open_after.push(format!("{result:?}"));
        }
    }
    let all_closed = started.elapsed();
    eprintln!("idle connections: 501 opened in {opened:?}, all closed by {all_closed:?}");
    assert!(
        open_after.is_empty(),
        "{} still open: {:?}",
        open_after.len(),
        open_after.first()
    );
    // Each was closed within its 1 s bound (plus the time to open them all).
    assert!(
        all_closed < opened + Duration::from_secs(3),
        "closed after {all_closed:?} (opened in {opened:?})"
    );
}

/// One request on a kept-alive connection: was it answered 200?
async fn exchange(stream: &mut tokio::net::TcpStream) -> std::io::Result<bool> {
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await?;
    let mut buf = [0u8; 4096];
    let n = stream.read(&mut buf).await?;
    Ok(buf[..n].starts_with(b"HTTP/1.1 200"))
}

/// Beyond `max_connections`, new connections are closed at once; those
/// being served are not stalled, and capacity returns when they close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_refuses_new_connections_only() {
    let echo = Backend::start("echo").await;
    let gateway = Gateway::start(&slow_client_config(
        &echo,
        "max_connections: 20, header_timeout: 10s",
    ))
    .await;
    let connect = || tokio::net::TcpStream::connect(("127.0.0.1", gateway.port));
    // One served keep-alive connection, then 19 idle ones fill the limit.
    let mut served = connect().await.unwrap();
    assert!(exchange(&mut served).await.unwrap());
    let mut idle = Vec::new();
    for _ in 0..19 {
        idle.push(connect().await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The 21st is closed at once.
    let mut extra = connect().await.unwrap();
    let mut buf = [0u8; 64];
    let refused = tokio::time::timeout(Duration::from_secs(2), extra.read(&mut buf)).await;
    assert!(matches!(refused, Ok(Ok(0)) | Ok(Err(_))), "{refused:?}");
    // The served connection carries on.
    assert!(exchange(&mut served).await.unwrap());
    let metrics = crate::support::admin_get(gateway.admin, "/metrics")
        .await
        .unwrap()
        .1;
    assert!(
        metrics.contains("portcullis_connections_refused_total 1"),
        "{metrics}"
    );
    // Capacity returns once idle connections go away.
    drop(idle);
    let recovered = crate::support::eventually(Duration::from_secs(5), || async {
        let Ok(mut stream) = connect().await else {
            return false;
        };
        exchange(&mut stream).await.unwrap_or(false)
    })
    .await;
    assert!(recovered);
}

/// HTTP/2 rapid reset (CVE-2023-44487): a client opening streams and
/// cancelling them at once is cut off before its flood reaches the
/// backend, and other clients are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_rapid_reset_is_cut_off() {
    let echo = Backend::start("echo").await;
    let gateway = Gateway::start(&format!(
        "listeners:\n  - {{ name: plain, address: '127.0.0.1:{{PORT}}', h2c: true }}\nadmin: {{ address: '127.0.0.1:{{ADMIN}}' }}\nserver: {{ access_log: false }}\nupstreams:\n  echo: {{ targets: ['{}'] }}\nroutes:\n  - {{ name: all, upstream: echo }}\n",
        echo.addr
    ))
    .await;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", gateway.port))
        .await
        .unwrap();
    let (client_h2, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    const FLOOD: usize = 5000;
    let mut sent = 0;
    let mut sender = client_h2;
    let started = Instant::now();
    while sent < FLOOD && started.elapsed() < Duration::from_secs(10) {
        let Ok(ready) = tokio::time::timeout(Duration::from_secs(2), sender.ready()).await else {
            break;
        };
        let Ok(mut ready) = ready else { break };
        let request = http::Request::get(format!("http://a/flood/{sent}"))
            .body(())
            .unwrap();
        match ready.send_request(request, true) {
            Ok((_response, mut stream)) => {
                stream.send_reset(h2::Reason::CANCEL);
                sent += 1;
            }
            Err(_) => break,
        }
        sender = ready;
    }
    let ended = tokio::time::timeout(Duration::from_secs(5), connection).await;
    let hits = echo.hits.load(std::sync::atomic::Ordering::SeqCst);
    eprintln!("rapid reset: {sent} streams opened and reset before the server closed the connection; {hits} reached the backend");
    assert!(
        ended.is_ok(),
        "the server kept the flooding connection open ({sent} resets sent)"
    );
    assert!(sent < FLOOD, "all {FLOOD} resets were accepted");
    assert!(
        hits < 200,
        "{hits} of {sent} cancelled requests reached the backend"
    );
    assert_eq!(
        client()
            .get(gateway.url("/"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

/// A listener's own connection limit, beside the process-wide one, and
/// the HTTP/2 stream limit the gateway advertises.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_connection_limit_and_h2_stream_limit() {
    let echo = Backend::start("echo").await;
    let gateway = Gateway::start(&format!(
        "listeners:\n  - {{ name: plain, address: '127.0.0.1:{{PORT}}', h2c: true, max_connections: 5 }}\nadmin: {{ address: '127.0.0.1:{{ADMIN}}' }}\nserver: {{ access_log: false, limits: {{ h2_max_concurrent_streams: 7, header_timeout: 10s }} }}\nupstreams:\n  echo: {{ targets: ['{}'] }}\nroutes:\n  - {{ name: all, upstream: echo }}\n",
        echo.addr
    ))
    .await;
    // HTTP/2: the server's SETTINGS carry the stream limit.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", gateway.port))
        .await
        .unwrap();
    let (h2_client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut ready = h2_client.ready().await.unwrap();
    let (response, _) = ready
        .send_request(http::Request::get("http://a/").body(()).unwrap(), true)
        .unwrap();
    assert_eq!(response.await.unwrap().status(), 200);
    assert_eq!(ready.current_max_send_streams(), 7);
    // Four more connections fill the listener's five; the sixth is closed.
    let mut open = Vec::new();
    for _ in 0..4 {
        open.push(
            tokio::net::TcpStream::connect(("127.0.0.1", gateway.port))
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut sixth = tokio::net::TcpStream::connect(("127.0.0.1", gateway.port))
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let refused = tokio::time::timeout(Duration::from_secs(2), sixth.read(&mut buf)).await;
    assert!(matches!(refused, Ok(Ok(0)) | Ok(Err(_))), "{refused:?}");
    drop(open);
    let recovered = crate::support::eventually(Duration::from_secs(5), || async {
        let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", gateway.port)).await
        else {
            return false;
        };
        exchange(&mut stream).await.unwrap_or(false)
    })
    .await;
    assert!(recovered);
}
