use std::path::Path;

use super::*;

fn router(routes: &str) -> Router {
    let text = format!(
        "listeners: [ {{ name: p, address: 127.0.0.1:1 }} ]\nupstreams:\n  a: {{ targets: [127.0.0.1:2] }}\n  b: {{ targets: [127.0.0.1:3] }}\nroutes:\n{routes}"
    );
    let valid = portcullis_config::load_from_str(&text, Path::new("t.yaml"), &|_| None).unwrap();
    Router::compile(&valid.config.routes, &|name| match name {
        "a" => Some(0),
        "b" => Some(1),
        _ => None,
    })
    .unwrap()
}

fn lookup<'r>(router: &'r Router, host: &str, method: &str, path: &str) -> Option<&'r str> {
    let headers = http::HeaderMap::new();
    let method: Method = method.parse().unwrap();
    let view = RequestView {
        host,
        path,
        method: &method,
        headers: &headers,
    };
    router.lookup(&view).map(|m| &*m.route.name)
}

#[test]
fn prefixes_match_on_segment_boundaries() {
    let r = router("  - { name: orders, match: { path_prefix: /orders/ }, upstream: a }\n");
    assert_eq!(lookup(&r, "h", "GET", "/orders"), Some("orders"));
    assert_eq!(lookup(&r, "h", "GET", "/orders/"), Some("orders"));
    assert_eq!(lookup(&r, "h", "GET", "/orders/1/x"), Some("orders"));
    assert_eq!(lookup(&r, "h", "GET", "/ordersx"), None);
    assert_eq!(lookup(&r, "h", "GET", "/"), None);
}

#[test]
fn same_template_shape_with_other_names_and_methods() {
    let r = router(
        "  - { name: get-user, match: { path: '/users/{id}', methods: [GET] }, upstream: a }\n  - { name: put-user, match: { path: '/users/{uid}', methods: [PUT] }, upstream: a }\n",
    );
    assert_eq!(lookup(&r, "h", "GET", "/users/1"), Some("get-user"));
    assert_eq!(lookup(&r, "h", "PUT", "/users/1"), Some("put-user"));
    assert_eq!(lookup(&r, "h", "DELETE", "/users/1"), None);
}

#[test]
fn rewrite_fills_parameters_by_name() {
    let r = router(
        "  - { name: rw, match: { path: '/a/{x}/b/{y}' }, rewrite_path: '/y/{y}/x/{x}', upstream: a }\n",
    );
    let headers = http::HeaderMap::new();
    let view = RequestView {
        host: "h",
        path: "/a/1/b/2",
        method: &Method::GET,
        headers: &headers,
    };
    let matched = r.lookup(&view).unwrap();
    assert_eq!(
        matched.route.upstream_path(&matched, "/a/1/b/2").as_deref(),
        Some("/y/2/x/1")
    );
}

#[test]
fn split_follows_weights() {
    let r = router(
        "  - { name: s, split: [ { upstream: a, weight: 3 }, { upstream: b, weight: 1 } ] }\n",
    );
    let route = &r.routes()[0];
    let to_b = (0..10_000).filter(|_| route.pick_pool() == 1).count();
    assert!((2000..3000).contains(&to_b), "{to_b}");
}
