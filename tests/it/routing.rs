use std::collections::HashMap;

use crate::support::{client, with_plain_listener, Backend, Echo, Gateway};

fn routing_config(echo: &Backend) -> String {
    let route = |name: &str, body: &str| {
        format!(
            "  - name: {name}\n{body}    upstream: echo\n    response_headers: {{ set: {{ x-route: {name} }} }}\n"
        )
    };
    let mut config = with_plain_listener(&format!(
        "server: {{ access_log: false }}\nupstreams:\n  echo: {{ targets: ['{}'] }}\nroutes:\n",
        echo.addr
    ));
    for (name, body) in [
        ("host-exact-path", "    match: { hosts: [api.example.com], path: /status }\n"),
        ("host-prefix", "    match: { hosts: [api.example.com], path_prefix: /orders }\n"),
        ("host-template", "    match: { hosts: [api.example.com], path: '/orders/{id}' }\n"),
        ("host-longer-prefix", "    match: { hosts: [api.example.com], path_prefix: /orders/archive }\n"),
        ("wildcard", "    match: { hosts: ['*.example.com'] }\n"),
        ("wildcard-deeper", "    match: { hosts: ['*.eu.example.com'] }\n"),
        ("post-orders", "    match: { path_prefix: /orders, methods: [POST] }\n"),
        ("orders", "    match: { path_prefix: /orders }\n"),
        ("beta-canary", "    match: { path_prefix: /beta, headers: { x-canary: '1' } }\n"),
        ("beta", "    match: { path_prefix: /beta }\n"),
        ("root-exact", "    match: { path: / }\n"),
        ("user-template", "    match: { path: '/users/{id}' }\n"),
        ("user-me", "    match: { path: /users/me }\n"),
        ("user-order", "    match: { path: '/users/{id}/orders/{order}' }\n"),
        ("dup-first", "    match: { path: /dup }\n"),
        ("dup-second", "    match: { path: /dup }\n"),
        ("strip", "    match: { path_prefix: /svc }\n    strip_prefix: true\n"),
        ("rewrite", "    match: { path: '/v1/users/{id}/posts/{post}' }\n    rewrite_path: '/internal/{post}/by/{id}'\n"),
        ("catch-all", "    match: { path_prefix: / }\n"),
    ] {
        config.push_str(&route(name, body));
    }
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn precedence_table() {
    let echo = Backend::start("echo").await;
    let gateway = Gateway::start(&routing_config(&echo)).await;
    let client = client();
    // (host, method, path, headers, expected route)
    type Case<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        ("api.example.com", "GET", "/status", &[], "host-exact-path"),
        (
            "API.Example.COM:8080",
            "GET",
            "/status",
            &[],
            "host-exact-path",
        ),
        ("api.example.com", "GET", "/orders", &[], "host-prefix"),
        ("api.example.com", "GET", "/orders/7", &[], "host-template"),
        (
            "api.example.com",
            "GET",
            "/orders/archive",
            &[],
            "host-template",
        ),
        (
            "api.example.com",
            "GET",
            "/orders/archive/2020",
            &[],
            "host-longer-prefix",
        ),
        ("api.example.com", "GET", "/ordersx", &[], "wildcard"),
        ("shop.example.com", "GET", "/orders", &[], "wildcard"),
        ("a.eu.example.com", "GET", "/", &[], "wildcard-deeper"),
        ("eu.example.com", "GET", "/", &[], "wildcard"),
        ("example.com", "GET", "/orders", &[], "orders"),
        ("other.test", "POST", "/orders", &[], "post-orders"),
        ("other.test", "DELETE", "/orders", &[], "orders"),
        ("other.test", "GET", "/orders/1", &[], "orders"),
        (
            "other.test",
            "GET",
            "/beta/x",
            &[("x-canary", "1")],
            "beta-canary",
        ),
        ("other.test", "GET", "/beta/x", &[("x-canary", "0")], "beta"),
        ("other.test", "GET", "/", &[], "root-exact"),
        ("other.test", "GET", "/anything/else", &[], "catch-all"),
        ("other.test", "GET", "/users/me", &[], "user-me"),
        ("other.test", "GET", "/users/42", &[], "user-template"),
        ("other.test", "GET", "/users/42/orders/9", &[], "user-order"),
        ("other.test", "GET", "/users/42/extra", &[], "catch-all"),
        ("other.test", "GET", "/dup", &[], "dup-first"),
    ];
    assert!(cases.len() >= 20);
    let mut failures = Vec::new();
    for (host, method, path, headers, expected) in cases {
        let mut request = client
            .request(method.parse().unwrap(), gateway.url(path))
            .header("host", *host);
        for (name, value) in *headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("request");
        let route = response
            .headers()
            .get("x-route")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        if route != *expected {
            failures.push(format!(
                "{method} {host}{path} {headers:?}: got {route:?}, want {expected:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strip_prefix_and_rewrite() {
    let echo = Backend::start("echo").await;
    let gateway = Gateway::start(&routing_config(&echo)).await;
    let client = client();
    let cases = [
        ("/svc/items?q=1", "/items?q=1"),
        ("/svc", "/"),
        ("/svc/", "/"),
        ("/v1/users/7/posts/99?x=y", "/internal/99/by/7?x=y"),
        ("/anything/else", "/anything/else"),
    ];
    for (path, upstream_path) in cases {
        let echo: Echo = client
            .get(gateway.url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(echo.path, upstream_path, "for {path}");
        assert_eq!(echo.backend, "echo");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_is_json_404_with_request_id() {
    let echo = Backend::start("echo").await;
    let config = with_plain_listener(&format!(
        "upstreams:\n  echo: {{ targets: ['{}'] }}\nroutes:\n  - {{ name: only, match: {{ path: /only }}, upstream: echo }}\n",
        echo.addr
    ));
    let gateway = Gateway::start(&config).await;
    let response = client().get(gateway.url("/missing")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["request_id"], id);
    assert_eq!(body["status"], 404);
    assert_eq!(id.len(), 32);

    // An inbound request id is kept and reaches the backend.
    let response = client()
        .get(gateway.url("/only"))
        .header("x-request-id", "trace-abc-1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "trace-abc-1");
    let echo: Echo = response.json().await.unwrap();
    assert_eq!(echo.headers["x-request-id"], "trace-abc-1");
    assert_eq!(echo.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(echo.headers["x-forwarded-proto"], "http");
    assert!(echo.headers["forwarded"].starts_with("for=127.0.0.1;proto=http"));

    // The access log has the request, without the query string.
    let _ = client()
        .get(gateway.url("/only?token=secret"))
        .send()
        .await
        .unwrap();
    let found = crate::support::eventually(std::time::Duration::from_secs(5), || async {
        gateway.stdout().contains("\"request_id\":\"trace-abc-1\"")
    })
    .await;
    assert!(found, "access log: {}", gateway.stdout());
    assert!(!gateway.stdout().contains("secret"));
}

/// What the echo backend saw of a `GET /` with these headers (repeated
/// names are separate lines).
async fn echo_with(gateway: &Gateway, headers: &[(&str, &str)]) -> Echo {
    let mut request = client().get(gateway.url("/"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_forwarding_headers_are_replaced() {
    let echo = Backend::start("echo").await;
    let config = with_plain_listener(&format!(
        "upstreams:\n  echo: {{ targets: ['{}'] }}\nroutes:\n  - {{ name: all, upstream: echo }}\n",
        echo.addr
    ));
    let gateway = Gateway::start(&config).await;
    let echo = echo_with(
        &gateway,
        &[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=6.6.6.6"),
        ],
    )
    .await;
    assert_eq!(echo.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(echo.headers["x-forwarded-proto"], "http");
    assert!(!echo.headers["forwarded"].contains("6.6.6.6"));

    // From a trusted proxy, the chain is kept and extended.
    let trusted = config.replace(
        "admin:",
        "server: { trusted_proxies: [127.0.0.0/8] }\nadmin:",
    );
    let gateway = Gateway::start(&trusted).await;
    let echo = echo_with(
        &gateway,
        &[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
        ],
    )
    .await;
    assert_eq!(echo.headers["x-forwarded-for"], "6.6.6.6, 127.0.0.1");
    assert_eq!(echo.headers["x-forwarded-proto"], "https");

    // A list split over lines is one list: every line is kept, in order.
    let echo = echo_with(
        &gateway,
        &[
            ("x-forwarded-for", "6.6.6.6, 10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2"),
            ("forwarded", "for=6.6.6.6"),
            ("forwarded", "for=10.0.0.2"),
        ],
    )
    .await;
    assert_eq!(
        echo.headers["x-forwarded-for"],
        "6.6.6.6, 10.0.0.1, 10.0.0.2, 127.0.0.1"
    );
    assert!(
        echo.headers["forwarded"].starts_with("for=6.6.6.6, for=10.0.0.2, for=127.0.0.1;"),
        "{}",
        echo.headers["forwarded"]
    );

    // `client_ip_header: forwarded`: the client is read from `Forwarded`
    // (right-most untrusted hop), never from `X-Forwarded-For`.
    let by_forwarded = config.replace(
        "admin:",
        "server: { trusted_proxies: [127.0.0.0/8], client_ip_header: forwarded, real_ip_header: X-Real-IP }\nadmin:",
    );
    let gateway = Gateway::start(&by_forwarded).await;
    let echo: Echo = client()
        .get(gateway.url("/"))
        .header("x-forwarded-for", "6.6.6.6")
        .header(
            "forwarded",
            "for=7.7.7.7, for=\"198.51.100.7:4711\";proto=https",
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echo.headers["x-real-ip"], "198.51.100.7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_within_five_percent() {
    let stable = Backend::start("stable").await;
    let canary = Backend::start("canary").await;
    let config = with_plain_listener(&format!(
        "server: {{ access_log: false }}\nupstreams:\n  stable: {{ targets: ['{}'] }}\n  canary: {{ targets: ['{}'] }}\nroutes:\n  - name: split\n    split: [ {{ upstream: stable, weight: 80 }}, {{ upstream: canary, weight: 20 }} ]\n",
        stable.addr, canary.addr
    ));
    let gateway = Gateway::start(&config).await;
    let client = client();
    const TOTAL: usize = 2000;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for batch in 0..(TOTAL / 50) {
        let requests = (0..50).map(|i| {
            let client = client.clone();
            let url = gateway.url(&format!("/r/{batch}/{i}"));
            async move {
                let response = client.get(url).send().await.expect("request");
                response.headers()["x-backend"].to_str().unwrap().to_owned()
            }
        });
        for backend in futures_util::future::join_all(requests).await {
            *counts.entry(backend).or_default() += 1;
        }
    }
    let canary_share = counts["canary"] as f64 / TOTAL as f64;
    assert!(
        (canary_share - 0.20).abs() <= 0.05,
        "canary share {canary_share:.3}, counts {counts:?}"
    );
    assert_eq!(counts.values().sum::<usize>(), TOTAL);
}
