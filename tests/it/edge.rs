//! Edge hardening: one canonical request for every decision and for the
//! backend; identity invariants.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::support::{raw_exchange, sha256_hex, with_plain_listener, Backend, Gateway};

const ADMIN_KEY: &str = "pk_test_admin_0123456789";

fn edge_config(backend: &Backend, paths: &str) -> String {
    let route = |name: &str, rest: &str| {
        format!(
            "  - {{ name: {name}, {rest}, upstream: rec, response_headers: {{ set: {{ x-route: {name} }} }} }}\n"
        )
    };
    let mut config = with_plain_listener(&format!(
        "server: {{ access_log: false{paths} }}\nidentity:\n  api_keys:\n    - {{ sha256: '{}', subject: root, roles: [admin] }}\nupstreams:\n  rec: {{ targets: ['{}'] }}\nroutes:\n",
        sha256_hex(ADMIN_KEY),
        backend.addr
    ));
    config.push_str(&route(
        "admin",
        "match: { path_prefix: /admin }, auth: { mode: required, api_keys: true, roles_any: [admin] }",
    ));
    config.push_str(&route("public", "match: { path_prefix: /public }"));
    config.push_str(&route("catch-all", "match: { path_prefix: / }"));
    config
}

/// The route a path belongs to, as the config above says.
fn route_of(path: &str) -> &'static str {
    let path = path.split('?').next().unwrap_or(path);
    let under = |prefix: &str| path == prefix || path.starts_with(&format!("{prefix}/"));
    if under("/admin") {
        "admin"
    } else if under("/public") {
        "public"
    } else {
        "catch-all"
    }
}

/// `(request target, the path the backend must receive)`; `None`: 400.
const PATH_TABLE: &[(&str, Option<&str>)] = &[
    // Dot segments, plain and encoded in every case mix.
    ("/public/../admin/x", Some("/admin/x")),
    ("/public/%2e%2e/admin/x", Some("/admin/x")),
    ("/public/%2E%2E/admin/x", Some("/admin/x")),
    ("/public/.%2e/admin/x", Some("/admin/x")),
    ("/public/%2e./admin/x", Some("/admin/x")),
    ("/public/./../admin", Some("/admin")),
    ("/public/x/../../../admin", Some("/admin")),
    ("/%2e%2e/admin", Some("/admin")),
    ("/public/%2e%2e/%2e%2e/admin", Some("/admin")),
    ("/admin/x/../../admin/y", Some("/admin/y")),
    ("/public/..", Some("/")),
    ("/public/%2E%2e/admin?x=/../", Some("/admin?x=/../")),
    // Encoded slashes and backslashes.
    ("/public/..%2fadmin/x", None),
    ("/public/..%2Fadmin/x", None),
    ("/public/%2e%2e%2fadmin", None),
    ("/public/%2F..%2F..%2Fadmin", None),
    ("/%2fadmin", None),
    ("/admin%2fx", None),
    ("/public/..%5cadmin", None),
    ("/public/..%5Cadmin", None),
    ("/public\\..\\admin", None),
    ("/public/..\\admin", None),
    // Double and more slashes.
    ("//admin/x", Some("/admin/x")),
    ("///admin/x", Some("/admin/x")),
    ("/public//..//admin", Some("/admin")),
    // Single dots.
    ("/./admin/x", Some("/admin/x")),
    ("/admin/./x", Some("/admin/x")),
    // Encoded unreserved characters, mixed case.
    ("/%61dmin/x", Some("/admin/x")),
    ("/%61%64%6D%69%6E", Some("/admin")),
    ("/%41DMIN/x", Some("/ADMIN/x")),
    ("/public/%7euser", Some("/public/~user")),
    // Double encoding stays data (decoded once, by the backend).
    ("/public/%252e%252e/admin", Some("/public/%252e%252e/admin")),
    // Overlong UTF-8 and invalid escapes.
    ("/public/%c0%ae%c0%ae/admin", None),
    ("/public/%e0%80%ae%e0%80%ae/admin", None),
    ("/public/%zz", None),
    ("/public/%2", None),
    // Control characters, encoded.
    ("/public/%00/../../admin", None),
    ("/public/%0d%0aX-Injected:%201", None),
    // `;` parameters (servlet containers strip them before matching).
    ("/admin;x=1/y", None),
    ("/public/..;/admin", None),
    ("/public;/../admin", None),
    // Targets that are not origin-form.
    ("admin/x", None),
    ("*", None),
    ("http://gw.test/public/../admin", Some("/admin")),
    ("http://gw.test/admin/x", Some("/admin/x")),
    ("http://GW.test/admin/x", None),
    ("http://gw.test:80/admin/x", None),
    ("http://evil.test/admin", None),
    ("http://user@gw.test/admin", None),
];

async fn send(port: u16, target: &str, key: Option<&str>) -> crate::support::RawResponse {
    let auth = key.map_or(String::new(), |k| format!("X-Api-Key: {k}\r\n"));
    let request =
        format!("GET {target} HTTP/1.1\r\nHost: gw.test\r\n{auth}Connection: close\r\n\r\n");
    let mut responses = raw_exchange(port, request.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(responses.len(), 1, "{target}: {responses:?}");
    responses.remove(0)
}

fn received_path(response: &crate::support::RawResponse) -> String {
    let json = response.json().expect("echo body");
    json["path"].as_str().unwrap_or_default().to_owned()
}

/// Acceptance 1 of the edge-hardening issue: for every spelling, the route
/// and RBAC decision are made on the path the backend receives, or the
/// request is refused with 400; nothing reaches `/admin` without its key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_path_spelling_is_decided_on_what_the_backend_receives() {
    let backend = Backend::start("rec").await;
    let gateway = Gateway::start(&edge_config(&backend, "")).await;
    assert!(PATH_TABLE.len() >= 30);
    let mut failures = Vec::new();
    for (target, expected) in PATH_TABLE {
        // Anonymous.
        let hits = backend.hits.load(Ordering::SeqCst);
        let anonymous = send(gateway.port, target, None).await;
        let reached = backend.hits.load(Ordering::SeqCst) > hits;
        match expected {
            None => {
                let request_id = anonymous.json().map(|j| j["request_id"].clone());
                // pingora refuses an absolute-form authority that differs
                // from Host before the gateway sees the request (a bare 400).
                let json_expected = !target.starts_with("http");
                if anonymous.status != 400
                    || reached
                    || (json_expected && !request_id.is_some_and(|id| id.is_string()))
                {
                    failures.push(format!("{target}: want 400 with a JSON body, got {} (backend reached: {reached}) {:?}", anonymous.status, String::from_utf8_lossy(&anonymous.body)));
                }
            }
            Some(path) if route_of(path) == "admin" => {
                if anonymous.status != 401 || reached {
                    failures.push(format!(
                        "{target}: anonymous got {} (backend reached: {reached})",
                        anonymous.status
                    ));
                }
            }
            Some(path) => {
                let seen = if anonymous.status == 200 {
                    received_path(&anonymous)
                } else {
                    String::new()
                };
                let route = anonymous.header("x-route").unwrap_or_default();
                if anonymous.status != 200 || seen != *path || route != route_of(&seen) {
                    failures.push(format!("{target}: anonymous got {} route {route:?}, backend saw {seen:?}, want {path:?}", anonymous.status));
                }
            }
        }
        // With the admin key: whatever is served, the route is the one of
        // the path the backend saw.
        let keyed = send(gateway.port, target, Some(ADMIN_KEY)).await;
        match expected {
            None if keyed.status != 400 => {
                failures.push(format!("{target}: with key got {}", keyed.status))
            }
            None => {}
            Some(path) => {
                let seen = if keyed.status == 200 {
                    received_path(&keyed)
                } else {
                    String::new()
                };
                let route = keyed.header("x-route").unwrap_or_default();
                if keyed.status != 200 || seen != *path || route != route_of(&seen) {
                    failures.push(format!("{target}: with key got {} route {route:?}, backend saw {seen:?}, want {path:?}", keyed.status));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The configurable rules: encoded slashes kept escaped (data, never a
/// separator), slashes not merged, `;` kept — and still no disagreement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relaxed_path_rules_still_decide_on_what_the_backend_receives() {
    let backend = Backend::start("rec").await;
    let paths =
        ", paths: { merge_slashes: false, escaped_slashes: keep_escaped, path_parameters: keep }";
    let gateway = Gateway::start(&edge_config(&backend, paths)).await;
    let cases: &[(&str, Option<&str>)] = &[
        ("/public/..%2fadmin/x", Some("/public/..%2Fadmin/x")),
        ("/public/..%5cadmin", Some("/public/..%5Cadmin")),
        ("/public\\..\\admin", Some("/public%5C..%5Cadmin")),
        ("//admin/x", Some("//admin/x")),
        ("/public/..//admin", Some("//admin")),
        ("/public/x;v=1", Some("/public/x;v=1")),
        ("/public/..;/admin", None),
        ("/public/%2e%2e;x/admin", None),
    ];
    let mut failures = Vec::new();
    for (target, expected) in cases {
        let response = send(gateway.port, target, None).await;
        match expected {
            None if response.status == 400 => {}
            None => failures.push(format!("{target}: got {}", response.status)),
            Some(path) => {
                let seen = if response.status == 200 {
                    received_path(&response)
                } else {
                    String::new()
                };
                let route = response.header("x-route").unwrap_or_default();
                if seen != *path || route != route_of(&seen) {
                    failures.push(format!(
                        "{target}: got {} route {route:?}, backend saw {seen:?}, want {path:?}",
                        response.status
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A route written in a form no canonical request can have is a config
/// error that says what to write instead.
#[test]
fn non_canonical_route_paths_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.yaml");
    std::fs::write(
        &file,
        "listeners: [{ name: p, address: '127.0.0.1:0' }]\nupstreams: { u: { targets: ['127.0.0.1:1'] } }\nroutes:\n  - { name: a, match: { path_prefix: /api/../admin }, upstream: u }\n  - { name: b, match: { path: '/users/%7b/{id}' }, upstream: u }\n  - { name: c, match: { path_prefix: '/a%2Fb' }, upstream: u }\n",
    )
    .unwrap();
    let (code, stderr) = crate::support::run_check(&file);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("routes[0].match.path_prefix") && stderr.contains("write `/admin`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("routes[1].match.path") && stderr.contains("write `/users/%7B/{id}`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("routes[2].match.path_prefix") && stderr.contains("encoded slash"),
        "{stderr}"
    );
}

/// What a malformed request must get.
#[derive(Clone, Copy, Debug)]
enum Outcome {
    /// This status with the JSON error body, then the connection closed.
    Status(u16),
    /// A body that breaks its framing after a valid head: a 400 with the
    /// JSON error or a closed connection, never a later request served.
    BodyRefused,
}

fn strict_cases() -> Vec<(&'static str, String, Outcome)> {
    use Outcome::*;
    let host = "Host: gw.test\r\n";
    let post = |headers: &str, body: &str| format!("POST / HTTP/1.1\r\n{host}{headers}\r\n{body}");
    let get = |headers: &str| format!("GET / HTTP/1.1\r\n{host}{headers}\r\n");
    let line = |request_line: &str| format!("{request_line}\r\n{host}\r\n");
    let chunked = |body: &str| post("Transfer-Encoding: chunked\r\n", body);
    vec![
        // Framing: Content-Length and Transfer-Encoding.
        (
            "CL and TE",
            post(
                "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                "0\r\n\r\n",
            ),
            Status(400),
        ),
        (
            "TE and CL",
            post(
                "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
                "0\r\n\r\n",
            ),
            Status(400),
        ),
        (
            "CL twice, same",
            post("Content-Length: 1\r\nContent-Length: 1\r\n", "a"),
            Status(400),
        ),
        (
            "CL twice, different",
            post("Content-Length: 1\r\nContent-Length: 2\r\n", "ab"),
            Status(400),
        ),
        (
            "CL list",
            post("Content-Length: 1, 1\r\n", "a"),
            Status(400),
        ),
        (
            "CL with sign",
            post("Content-Length: +1\r\n", "a"),
            Status(400),
        ),
        (
            "CL negative",
            post("Content-Length: -1\r\n", ""),
            Status(400),
        ),
        ("CL hex", post("Content-Length: 0x1\r\n", "a"), Status(400)),
        (
            "CL overflow",
            post("Content-Length: 99999999999999999999999\r\n", ""),
            Status(400),
        ),
        ("CL empty", post("Content-Length: \r\n", ""), Status(400)),
        (
            "TE gzip",
            post("Transfer-Encoding: gzip\r\n", ""),
            Status(501),
        ),
        (
            "TE gzip, chunked",
            post("Transfer-Encoding: gzip, chunked\r\n", "0\r\n\r\n"),
            Status(400),
        ),
        (
            "TE chunked, chunked",
            post("Transfer-Encoding: chunked, chunked\r\n", "0\r\n\r\n"),
            Status(400),
        ),
        (
            "TE twice",
            post(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                "0\r\n\r\n",
            ),
            Status(400),
        ),
        (
            "TE xchunked",
            post("Transfer-Encoding: xchunked\r\n", "0\r\n\r\n"),
            Status(400),
        ),
        (
            "TE chunked;",
            post("Transfer-Encoding: chunked;\r\n", "0\r\n\r\n"),
            Status(400),
        ),
        (
            "TE with VT",
            post("Transfer-Encoding:\x0bchunked\r\n", "0\r\n\r\n"),
            Status(400),
        ),
        (
            "TE space before colon",
            post("Transfer-Encoding : chunked\r\n", "0\r\n\r\n"),
            Status(400),
        ),
        (
            "TE underscore",
            post("Transfer_Encoding: chunked\r\n", "0\r\n\r\n"),
            Status(400),
        ),
        (
            "TE in HTTP/1.0",
            format!("POST / HTTP/1.0\r\n{host}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            Status(400),
        ),
        // Line syntax.
        (
            "bare LF line ends",
            "GET / HTTP/1.1\nHost: gw.test\n\n".to_owned(),
            Status(400),
        ),
        (
            "bare LF after request line",
            format!("GET / HTTP/1.1\n{host}\r\n"),
            Status(400),
        ),
        ("bare CR", get("X-A: a\rb\r\n"), Status(400)),
        ("obsolete folding", get("X-A: a\r\n b\r\n"), Status(400)),
        ("NUL in value", get("X-A: a\x00b\r\n"), Status(400)),
        ("DEL in value", get("X-A: a\x7fb\r\n"), Status(400)),
        ("control in name", get("X\x01A: a\r\n"), Status(400)),
        ("space in name", get("X A: a\r\n"), Status(400)),
        ("empty name", get(": a\r\n"), Status(400)),
        ("no colon", get("X-A a\r\n"), Status(400)),
        // Host.
        ("no Host", "GET / HTTP/1.1\r\n\r\n".to_owned(), Status(400)),
        ("two Hosts", get("Host: other.test\r\n"), Status(400)),
        (
            "Host with userinfo",
            "GET / HTTP/1.1\r\nHost: a@gw.test\r\n\r\n".to_owned(),
            Status(400),
        ),
        (
            "Host with space",
            "GET / HTTP/1.1\r\nHost: gw test\r\n\r\n".to_owned(),
            Status(400),
        ),
        // Request line.
        ("HTTP/1.2", line("GET / HTTP/1.2"), Status(505)),
        ("HTTP/2.0", line("GET / HTTP/2.0"), Status(505)),
        ("HTTP/1", line("GET / HTTP/1"), Status(400)),
        ("lower-case version", line("GET / http/1.1"), Status(400)),
        ("no version", line("GET /"), Status(400)),
        ("space in target", line("GET /a b HTTP/1.1"), Status(400)),
        ("two spaces", line("GET  / HTTP/1.1"), Status(400)),
        ("tab separator", line("GET\t/ HTTP/1.1"), Status(400)),
        (
            "raw non-ASCII target",
            line("GET /caf\u{e9} HTTP/1.1"),
            Status(400),
        ),
        ("fragment in target", line("GET /a#b HTTP/1.1"), Status(400)),
        ("bad method", line("G@T / HTTP/1.1"), Status(400)),
        (
            "CONNECT",
            "CONNECT gw.test:443 HTTP/1.1\r\nHost: gw.test:443\r\n\r\n".to_owned(),
            Status(405),
        ),
        ("garbage", "GARBAGE\r\n\r\n".to_owned(), Status(400)),
        // Sizes.
        (
            "target too long",
            line(&format!("GET /{} HTTP/1.1", "a".repeat(9000))),
            Status(414),
        ),
        (
            "header too large",
            get(&format!("X-Big: {}\r\n", "a".repeat(40 * 1024))),
            Status(431),
        ),
        (
            "too many headers",
            get(&(0..150)
                .map(|i| format!("X-H{i}: 1\r\n"))
                .collect::<String>()),
            Status(431),
        ),
        // Chunked bodies.
        (
            "chunk extension with bare LF",
            chunked("5;ext\nhello\r\n0\r\n\r\n"),
            BodyRefused,
        ),
        (
            "chunk size garbage",
            chunked("zz\r\nhello\r\n0\r\n\r\n"),
            BodyRefused,
        ),
        (
            "chunk size overflow",
            chunked("fffffffffffffffff\r\n"),
            BodyRefused,
        ),
        (
            "chunk size with space",
            chunked(" 5\r\nhello\r\n0\r\n\r\n"),
            BodyRefused,
        ),
        (
            "negative chunk size",
            chunked("-5\r\nhello\r\n0\r\n\r\n"),
            BodyRefused,
        ),
        (
            "chunk without CRLF",
            chunked("5\r\nhelloX\r\n0\r\n\r\n"),
            BodyRefused,
        ),
        (
            "chunk extension unterminated",
            chunked("5;a=\"x\r\nhello\r\n0\r\n\r\n"),
            BodyRefused,
        ),
        (
            "chunk extension without name",
            chunked("5;=x\r\nhello\r\n0\r\n\r\n"),
            BodyRefused,
        ),
        (
            "trailer folding",
            chunked("0\r\nX-T: a\r\n b\r\n\r\n"),
            BodyRefused,
        ),
        (
            "trailer without colon",
            chunked("0\r\nX-T a\r\n\r\n"),
            BodyRefused,
        ),
    ]
}

/// Acceptance 3 of the edge-hardening issue: malformed HTTP/1.1 requests
/// get their status with the JSON error (or a closed connection), and no
/// backend ever sees a second request smuggled behind one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_refused_and_nothing_is_smuggled() {
    let backend = Backend::start("rec").await;
    let gateway = Gateway::start(&edge_config(&backend, "")).await;
    let cases = strict_cases();
    assert!(cases.len() >= 40, "{}", cases.len());
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: gw.test\r\n\r\n";
    let mut failures = Vec::new();
    for (i, (name, request, outcome)) in cases.iter().enumerate() {
        // Each case's own path, so that a backend request arriving late is
        // still counted against its case.
        let marker = format!("/case-{i}");
        let request = request.replacen(" / HTTP", &format!(" {marker} HTTP"), 1);
        let bytes = [request.as_bytes(), smuggled.as_bytes()].concat();
        let responses = raw_exchange(gateway.port, &bytes, Duration::from_secs(5)).await;
        let seen: Vec<String> = backend
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.ends_with(&marker))
            .cloned()
            .collect();
        if seen.len() > 1 {
            failures.push(format!("{name}: the backend saw {seen:?}"));
        }
        let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
        let json_with_id =
            |r: &crate::support::RawResponse| r.json().is_some_and(|j| j["request_id"].is_string());
        match outcome {
            Outcome::Status(status) => {
                let ok = responses.len() == 1
                    && responses[0].status == *status
                    && json_with_id(&responses[0])
                    && seen.is_empty();
                if !ok {
                    failures.push(format!(
                        "{name}: want one {status} with a JSON body, got {statuses:?} {:?}",
                        responses
                            .first()
                            .map(|r| String::from_utf8_lossy(&r.body).into_owned())
                    ));
                }
            }
            Outcome::BodyRefused => {
                let ok = responses.is_empty()
                    || (responses.len() == 1
                        && responses[0].status == 400
                        && json_with_id(&responses[0]));
                if !ok {
                    failures.push(format!(
                        "{name}: want a 400 or a closed connection, got {statuses:?}"
                    ));
                }
            }
        }
    }
    // Late arrivals included: nothing smuggled, one request per case at most.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = backend.seen.lock().unwrap().clone();
    for (i, (name, ..)) in cases.iter().enumerate() {
        let marker = format!("/case-{i}");
        if seen.iter().filter(|s| s.ends_with(&marker)).count() > 1 {
            failures.push(format!("{name}: served twice"));
        }
    }
    if seen.iter().any(|s| s.contains("smuggled")) {
        failures.push(format!("a smuggled request reached the backend: {seen:?}"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Pipelined requests are served in order, each checked on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_served_in_order() {
    let backend = Backend::start("rec").await;
    let gateway = Gateway::start(&edge_config(&backend, "")).await;
    let mut bytes = String::new();
    for i in 0..100 {
        let close = if i == 99 { "Connection: close\r\n" } else { "" };
        // Every fourth carries a body: the guard must find the next head
        // after it, in the same read.
        if i % 4 == 1 {
            bytes.push_str(&format!("POST /public/p/{i} HTTP/1.1\r\nHost: gw.test\r\n{close}Content-Length: 5\r\n\r\nhello"));
        } else if i % 4 == 3 {
            bytes.push_str(&format!("POST /public/p/{i} HTTP/1.1\r\nHost: gw.test\r\n{close}Transfer-Encoding: chunked\r\n\r\n3;x=1\r\nabc\r\n0\r\n\r\n"));
        } else {
            bytes.push_str(&format!(
                "GET /public/p/{i} HTTP/1.1\r\nHost: gw.test\r\n{close}\r\n"
            ));
        }
    }
    let responses = raw_exchange(gateway.port, bytes.as_bytes(), Duration::from_secs(20)).await;
    assert_eq!(responses.len(), 100, "{:?}", responses.last());
    for (i, response) in responses.iter().enumerate() {
        assert_eq!(response.status, 200, "{i}");
        assert_eq!(received_path(response), format!("/public/p/{i}"));
        let body_len = response.json().unwrap()["body_len"].as_u64().unwrap();
        let want = match i % 4 {
            1 => 5,
            3 => 3,
            _ => 0,
        };
        assert_eq!(body_len, want, "{i}");
    }
}
