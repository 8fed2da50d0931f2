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
