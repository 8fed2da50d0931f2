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
