use super::*;

fn load_str(text: &str) -> Result<ValidConfig, LoadError> {
    load_from_str(text, Path::new("test.yaml"), &|_| None)
}

fn errors(text: &str) -> String {
    match load_str(text) {
        Ok(_) => panic!("config was accepted"),
        Err(e) => e.to_string(),
    }
}

const MINIMAL: &str = "\
listeners:
  - { name: plain, address: 127.0.0.1:8080 }
upstreams:
  orders: { targets: [127.0.0.1:9000] }
routes:
  - name: orders
    match: { path_prefix: /orders }
    upstream: orders
";

#[test]
fn minimal_config_loads_with_defaults() {
    let valid = load_str(MINIMAL).unwrap();
    let config = &valid.config;
    assert_eq!(config.admin.address.to_string(), "127.0.0.1:9901");
    assert_eq!(config.server.grace_period.0.as_secs(), 30);
    assert_eq!(
        config.upstreams["orders"].load_balancing,
        LoadBalancing::RoundRobin
    );
    assert_eq!(
        config.routes[0].matcher.path_prefix.as_deref(),
        Some("/orders")
    );
}

#[test]
fn three_mistakes_are_reported_together_with_positions() {
    let text = "\
listeners:
  - { name: plain, address: 127.0.0.1:8080 }
upstreams:
  orders:
    targets: [127.0.0.1:9000]
    health_check: { path: /healthz, interval: fivesec }
routes:
  - name: orders
    match: { path_prefix: /orders }
    upstream: orderz
    strip_prefx: true
";
    let out = errors(text);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].starts_with(
            "test.yaml:6:47: upstreams.orders.health_check.interval: invalid duration `fivesec`"
        ),
        "{out}"
    );
    assert!(
        lines[1].starts_with("test.yaml:10:15: routes[0].upstream: unknown upstream `orderz`"),
        "{out}"
    );
    assert!(
        lines[2].starts_with("test.yaml:11:5: routes[0].strip_prefx: unknown key `strip_prefx`"),
        "{out}"
    );
}

#[test]
fn errors_in_later_list_items_keep_their_index() {
    let text = "\
listeners:
  - { name: a, address: nonsense }
  - { name: b, address: 127.0.0.1:1, tls: { certificates: [] } }
  - { name: c, address: 127.0.0.1:2, colour: blue }
";
    let out = errors(text);
    assert!(
        out.contains("test.yaml:2:25: listeners[0].address: invalid socket address"),
        "{out}"
    );
    assert!(
        out.contains("listeners[1].tls.certificates: at least one certificate"),
        "{out}"
    );
    assert!(
        out.contains("test.yaml:4:38: listeners[2].colour: unknown key `colour`"),
        "{out}"
    );
}

#[test]
fn missing_required_keys_and_bad_enums() {
    let text = "\
listeners:
  - { address: 127.0.0.1:8080 }
upstreams:
  a: { targets: [127.0.0.1:1], load_balancing: random }
";
    let out = errors(text);
    assert!(
        out.contains("listeners[0].name: missing required key `name`"),
        "{out}"
    );
    assert!(
        out.contains("upstreams.a.load_balancing: unknown variant `random`"),
        "{out}"
    );
}

#[test]
fn route_checks() {
    let text = "\
listeners:
  - { name: plain, address: 127.0.0.1:8080 }
upstreams:
  a: { targets: [127.0.0.1:1, 'no-port', 'bad host:80'] }
routes:
  - { name: r, match: { hosts: ['*.x.*'], path: '/u/{id}/x{y}' }, upstream: a }
  - { name: r, match: { path: /a, path_prefix: /b, methods: [get] }, upstream: a }
  - { name: s, match: { path: '/u/{id}' }, rewrite_path: '/v/{uid}', upstream: a }
  - { name: t, split: [ { upstream: a, weight: 0 } ] }
  - { name: u, strip_prefix: true, upstream: a, request_headers: { set: { 'bad header': x } } }
";
    let out = errors(text);
    for expected in [
        "upstreams.a.targets[1]: `no-port` needs a port",
        "upstreams.a.targets[2]: `bad host:80`",
        "routes[0].match.hosts[0]: `*.x.*`: a wildcard",
        "routes[0].match.path: `x{y}`",
        "routes[1].name: duplicate route name `r`",
        "routes[1].match.path_prefix: give `path` or `path_prefix`",
        "routes[1].match.methods[0]: `get` is not a method",
        "routes[2].rewrite_path: `{uid}` is not a parameter",
        "routes[3].split: the weights must not all be zero",
        "routes[4].strip_prefix: needs `match.path_prefix`",
        "routes[4].request_headers.set.bad header: `bad header` is not a valid header name",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in\n{out}");
    }
}

#[test]
fn env_interpolation_and_missing_variable() {
    let text = "\
listeners:
  - { name: plain, address: '${ADDR}' }
upstreams:
  a: { targets: ['${TARGET}'] }
";
    let valid = load_from_str(text, Path::new("t.yaml"), &|name| {
        (name == "ADDR").then(|| "127.0.0.1:8080".to_owned())
    });
    let out = valid.unwrap_err().to_string();
    assert!(
        out.contains("t.yaml:4:18: environment variable `TARGET` is not set"),
        "{out}"
    );
}

#[test]
fn syntax_errors_have_positions() {
    let out = errors("listeners:\n  - { name: a\n");
    assert!(out.starts_with("test.yaml:3:"), "{out}");
}

#[test]
fn schema_describes_the_file() {
    let schema = json_schema();
    assert!(schema["properties"]["routes"].is_object());
    assert_eq!(schema["additionalProperties"], serde_json::json!(false));
}

#[test]
fn rate_limit_and_redis_checks() {
    let text = "\
listeners:
  - { name: plain, address: 127.0.0.1:8080 }
redis: { url: 'redis://127.0.0.1:1', cluster: ['redis://127.0.0.1:2'] }
rate_limits: { store: redis }
upstreams:
  a: { targets: [127.0.0.1:1] }
routes:
  - name: r
    upstream: a
    rate_limits:
      - { key: [user, 'header:x-tenant'], rate: 10/s }
      - { key: nobody, rate: 10/fortnight, burst: 0 }
    fault: { abort: { percent: 150, status: 200 } }
";
    let out = errors(text);
    for expected in [
        "redis: give `url` or `cluster`",
        "routes[0].rate_limits[1].rate: `10/fortnight` is not a rate",
        "routes[0].rate_limits[1].key: `nobody` is not a key",
        "routes[0].rate_limits[1].burst: must be at least 1",
        "routes[0].fault.abort.percent: must be between 0 and 100",
        "routes[0].fault.abort.status: must be a 4xx or 5xx status",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in\n{out}");
    }
    assert_eq!(
        parse_rate("10000/h").unwrap(),
        (10000, std::time::Duration::from_secs(3600))
    );
}

#[test]
fn portal_paths_and_route_documents_are_checked() {
    let text = "\
listeners:
  - { name: plain, address: 127.0.0.1:8080 }
portal: { enabled: true, spec_path: /api, docs_path: /docs/, servers: [api.example.com] }
upstreams:
  orders: { targets: [127.0.0.1:9000] }
routes:
  - { name: by-prefix, match: { path_prefix: /orders }, upstream: orders, openapi: /openapi.json }
  - { name: exact, match: { path: /status }, upstream: orders, openapi: openapi.json }
";
    let message = errors(text);
    assert!(message.contains("test.yaml:3:"), "{message}");
    assert!(
        message.contains("portal.spec_path: must end in `.json`"),
        "{message}"
    );
    assert!(
        message.contains("portal.docs_path: must be a path"),
        "{message}"
    );
    assert!(
        message.contains("portal.servers[0]: must be an absolute"),
        "{message}"
    );
    assert!(
        message.contains("routes[1].openapi: must be a path on the upstream"),
        "{message}"
    );
    assert!(
        message.contains("routes[1].openapi: only a route matching a `path_prefix`"),
        "{message}"
    );
    assert!(!message.contains("routes[0]"), "{message}");
}
