//! Checks that serde cannot express: references between sections, unique
//! names, well-formed hosts, paths, methods and headers, readable files.

use std::collections::HashSet;
use std::path::Path;

use crate::error::ConfigErrors;
use crate::model::*;
use crate::yaml::{KeyPath, Node};
use crate::SpanIndex;

pub(crate) struct Checker<'a> {
    spans: &'a SpanIndex,
    /// The tree the config was deserialized from: maps list positions in the
    /// config back to the file's when broken items were dropped.
    tree: &'a Node,
    errors: &'a mut ConfigErrors,
    /// Paths dropped while deserializing: already reported, and checks below
    /// them would only repeat the same mistake in other words.
    removed: &'a [KeyPath],
    source: &'a Path,
    /// For checks in sections that depend on `redis`.
    redis_missing: bool,
}

fn root() -> KeyPath {
    KeyPath::default()
}

impl<'a> Checker<'a> {
    pub(crate) fn new(
        spans: &'a SpanIndex,
        tree: &'a Node,
        errors: &'a mut ConfigErrors,
        removed: &'a [KeyPath],
        source: &'a Path,
    ) -> Self {
        Checker {
            spans,
            tree,
            errors,
            removed,
            source,
            redis_missing: false,
        }
    }

    pub(crate) fn problem(&mut self, path: KeyPath, message: impl Into<String>) {
        let path = self.tree.original_path(&path.0).unwrap_or(path);
        if self
            .removed
            .iter()
            .any(|r| path.starts_with(r) || r.starts_with(&path))
        {
            return;
        }
        let span = self.spans.find(&path);
        self.errors.push(span, path, message);
    }

    pub(crate) fn config(&mut self, config: &FileConfig) {
        let listeners = root().child_key("listeners");
        if config.listeners.is_empty() {
            self.problem(listeners.clone(), "at least one listener is required");
        }
        let mut names = HashSet::new();
        let mut addresses = HashSet::new();
        for (i, listener) in config.listeners.iter().enumerate() {
            let at = listeners.child_index(i);
            if !names.insert(listener.name.as_str()) {
                self.problem(
                    at.child_key("name"),
                    format!("duplicate listener name `{}`", listener.name),
                );
            }
            if !addresses.insert(listener.address) || listener.address == config.admin.address {
                self.problem(
                    at.child_key("address"),
                    format!("address {} is used twice", listener.address),
                );
            }
            self.listener(&at, listener);
        }

        for (name, upstream) in &config.upstreams {
            self.upstream(&root().child_key("upstreams").child_key(name), upstream);
        }

        if let Some(name) = &config.server.real_ip_header {
            self.header_name(root().child_key("server").child_key("real_ip_header"), name);
        }
        self.redis_missing = config.redis.is_none();
        self.identity(&config.identity);
        if let Some(redis) = &config.redis {
            if redis.url.is_some() != redis.cluster.is_empty() {
                self.problem(
                    root().child_key("redis"),
                    "give `url` or `cluster`, one of them",
                );
            }
        }

        let mut route_names = HashSet::new();
        let routes = root().child_key("routes");
        for (i, route) in config.routes.iter().enumerate() {
            let at = routes.child_index(i);
            if !route_names.insert(route.name.as_str()) {
                self.problem(
                    at.child_key("name"),
                    format!("duplicate route name `{}`", route.name),
                );
            }
            self.route(&at, route, config);
        }
        self.portal(config);
    }

    fn portal(&mut self, config: &FileConfig) {
        let at = root().child_key("portal");
        let portal = &config.portal;
        for (key, path) in [
            ("spec_path", &portal.spec_path),
            ("docs_path", &portal.docs_path),
        ] {
            if !path.starts_with('/') || path.len() < 2 || path.ends_with('/') {
                self.problem(
                    at.child_key(key),
                    "must be a path like `/openapi.json`: starting with `/`, not ending with one",
                );
            }
        }
        if portal.spec_path == portal.docs_path {
            self.problem(at.child_key("docs_path"), "must differ from `spec_path`");
        }
        if !portal.spec_path.ends_with(".json") {
            self.problem(
                at.child_key("spec_path"),
                "must end in `.json` (the `.yaml` twin is derived from it)",
            );
        }
        for (i, server) in portal.servers.iter().enumerate() {
            if !(server.starts_with("https://") || server.starts_with("http://")) {
                self.problem(
                    at.child_key("servers").child_index(i),
                    "must be an absolute http(s) URL",
                );
            }
        }
        if portal.refresh_interval.0.is_zero() {
            self.problem(at.child_key("refresh_interval"), "must be more than zero");
        }
        let routes = root().child_key("routes");
        for (i, route) in config.routes.iter().enumerate() {
            let Some(path) = &route.openapi else { continue };
            let r_at = routes.child_index(i).child_key("openapi");
            if !path.starts_with('/') {
                self.problem(
                    r_at.clone(),
                    "must be a path on the upstream, starting with `/`",
                );
            }
            if route.matcher.path.is_some() || route.rewrite_path.is_some() {
                self.problem(
                    r_at,
                    "only a route matching a `path_prefix` (without `rewrite_path`) can publish its upstream's document",
                );
            }
        }
    }

    fn identity(&mut self, identity: &Identity) {
        let at = root().child_key("identity");
        if let Some(login) = &identity.login {
            let l_at = at.child_key("login");
            if login.store == SessionStore::Redis && self.redis_missing {
                self.problem(
                    l_at.child_key("store"),
                    "`store: redis` needs the top-level `redis` section",
                );
            }
            if !identity.providers.iter().any(|p| p.name == login.provider) {
                self.problem(
                    l_at.child_key("provider"),
                    format!("unknown provider `{}`", login.provider),
                );
            }
            for (key, path) in [
                ("login_path", &login.login_path),
                ("callback_path", &login.callback_path),
                ("logout_path", &login.logout_path),
                ("backchannel_logout_path", &login.backchannel_logout_path),
            ] {
                if !path.starts_with('/') {
                    self.problem(l_at.child_key(key), "must be a path starting with `/`");
                }
            }
            match &login.public_url {
                Some(url) => {
                    let origin = url
                        .strip_prefix("https://")
                        .or_else(|| url.strip_prefix("http://"));
                    if !origin.is_some_and(|host| !host.is_empty() && !host.contains('/')) {
                        self.problem(
                            l_at.child_key("public_url"),
                            "must be an origin: `https://` or `http://`, a host, an optional port, no path or trailing slash",
                        );
                    }
                }
                None => self.problem(
                    l_at.child_key("public_url"),
                    "required: the redirect URI sent to the provider is built from it, never from a request's Host (`public_url: https://api.example.com`)",
                ),
            }
        }
        let mut names = HashSet::new();
        for (i, provider) in identity.providers.iter().enumerate() {
            let p_at = at.child_key("providers").child_index(i);
            if !names.insert(provider.name.as_str()) {
                self.problem(
                    p_at.child_key("name"),
                    format!("duplicate provider name `{}`", provider.name),
                );
            }
            if provider.issuer.is_empty() {
                self.problem(p_at.child_key("issuer"), "must not be empty");
            }
            if provider.jwks_uri.is_some() && provider.jwks_file.is_some() {
                self.problem(
                    p_at.child_key("jwks_file"),
                    "give `jwks_uri` or `jwks_file`, not both",
                );
            }
            for (j, key) in provider.public_keys.iter().enumerate() {
                self.readable(
                    p_at.child_key("public_keys")
                        .child_index(j)
                        .child_key("file"),
                    &key.file,
                );
            }
            // Keys come from `jwks_uri`, local files, or discovery at the issuer.
            let local = provider.jwks_file.is_some() || !provider.public_keys.is_empty();
            let fetched_from = match (&provider.jwks_uri, local) {
                (Some(uri), _) => Some(("jwks_uri", uri.as_str())),
                (None, false) => Some(("issuer", provider.issuer.as_str())),
                (None, true) => None,
            };
            if let Some((key, uri)) = fetched_from {
                if !(uri.starts_with("https://") || uri.starts_with("http://")) {
                    self.problem(
                        p_at.child_key(key),
                        format!("`{uri}` must be an http(s) URL: keys are fetched from it"),
                    );
                }
            }
            if let Some(file) = &provider.jwks_file {
                self.readable(p_at.child_key("jwks_file"), file);
            }
            if provider.audiences.is_empty() && !provider.insecure_skip_audience {
                self.problem(
                    p_at.child_key("audiences"),
                    "at least one audience is required (or `insecure_skip_audience: true`)",
                );
            }
            for (j, alg) in provider.algorithms.iter().enumerate() {
                const KNOWN: [&str; 12] = [
                    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
                    "EdDSA", "HS256", "HS384", "HS512",
                ];
                if !KNOWN.contains(&alg.as_str()) {
                    self.problem(
                        p_at.child_key("algorithms").child_index(j),
                        format!(
                            "`{alg}` is not an accepted algorithm ({})",
                            KNOWN.join(", ")
                        ),
                    );
                } else if alg.starts_with("HS") && provider.hmac_secret.is_none() {
                    self.problem(
                        p_at.child_key("algorithms").child_index(j),
                        format!("`{alg}` needs `hmac_secret`"),
                    );
                }
            }
            if provider
                .hmac_secret
                .as_ref()
                .is_some_and(|s| s.expose().len() < 32)
            {
                self.problem(
                    p_at.child_key("hmac_secret"),
                    "an HMAC secret must be at least 32 bytes",
                );
            }
            if provider.roles_claim.is_empty() {
                self.problem(p_at.child_key("roles_claim"), "must not be empty");
            }
        }
        self.header_name(at.child_key("api_key_header"), &identity.api_key_header);
        let mut hashes = HashSet::new();
        for (i, key) in identity.api_keys.iter().enumerate() {
            let k_at = at.child_key("api_keys").child_index(i);
            let hex_ok =
                key.sha256.len() == 64 && key.sha256.bytes().all(|b| b.is_ascii_hexdigit());
            if !hex_ok {
                self.problem(
                    k_at.child_key("sha256"),
                    "must be 64 hex digits (the SHA-256 of the key)",
                );
            } else if !hashes.insert(key.sha256.to_ascii_lowercase()) {
                self.problem(k_at.child_key("sha256"), "the same key is listed twice");
            }
            if key.subject.is_empty() {
                self.problem(k_at.child_key("subject"), "must not be empty");
            }
        }
        if let Some(internal) = &identity.internal_token {
            let i_at = at.child_key("internal_token");
            self.header_name(i_at.child_key("header"), &internal.header);
            if !matches!(internal.algorithm.as_str(), "ES256" | "EdDSA") {
                self.problem(i_at.child_key("algorithm"), "must be `ES256` or `EdDSA`");
            }
            if internal.ttl.0.as_secs() < 10 {
                self.problem(i_at.child_key("ttl"), "must be at least 10s");
            }
            if let Some(file) = &internal.key_file {
                self.readable(i_at.child_key("key_file"), file);
            }
        }
        for (name, claim) in &identity.headers {
            let h_at = at.child_key("headers").child_key(name);
            self.header_name(h_at.clone(), name);
            if claim.is_empty() {
                self.problem(h_at, "the claim path must not be empty");
            }
        }
        if let Some(prefixes) = &identity.reserved_prefixes {
            for (i, prefix) in prefixes.iter().enumerate() {
                if prefix.len() < 3 {
                    self.problem(
                        at.child_key("reserved_prefixes").child_index(i),
                        "too short: it would strip ordinary headers",
                    );
                }
            }
        }
    }

    fn listener(&mut self, at: &KeyPath, listener: &Listener) {
        if listener.tls.is_some() && listener.redirect_https.is_some() {
            self.problem(
                at.child_key("redirect_https"),
                "a TLS listener cannot redirect to HTTPS; put `redirect_https` on a plain listener",
            );
        }
        if listener.tls.is_some() && listener.h2c {
            self.problem(
                at.child_key("h2c"),
                "`h2c` is for plain listeners; TLS listeners offer h2 through ALPN",
            );
        }
        let Some(tls) = &listener.tls else { return };
        let tls_at = at.child_key("tls");
        if tls.certificates.is_empty() {
            self.problem(
                tls_at.child_key("certificates"),
                "at least one certificate is required",
            );
        }
        for (i, files) in tls.certificates.iter().enumerate() {
            let cert_at = tls_at.child_key("certificates").child_index(i);
            self.readable(cert_at.child_key("cert"), &files.cert);
            self.readable(cert_at.child_key("key"), &files.key);
        }
        if let Some(client_auth) = &tls.client_auth {
            self.readable(
                tls_at.child_key("client_auth").child_key("ca"),
                &client_auth.ca,
            );
        }
    }

    pub(crate) fn readable(&mut self, at: KeyPath, file: &str) {
        let path = resolve_path(self.source, file);
        if let Err(e) = std::fs::metadata(&path) {
            self.problem(at, format!("cannot read `{}`: {e}", path.display()));
        }
    }

    fn upstream(&mut self, at: &KeyPath, upstream: &Upstream) {
        if upstream.targets.is_empty() {
            self.problem(at.child_key("targets"), "at least one target is required");
        }
        for (i, target) in upstream.targets.iter().enumerate() {
            if let Err(message) = check_target(target) {
                self.problem(at.child_key("targets").child_index(i), message);
            }
        }
        if upstream.hash_on.header.is_some() && upstream.hash_on.cookie.is_some() {
            self.problem(
                at.child_key("hash_on"),
                "give `header` or `cookie`, not both",
            );
        }
        if let Some(header) = &upstream.hash_on.header {
            self.header_name(at.child_key("hash_on").child_key("header"), header);
        }
        if let Some(check) = &upstream.health_check {
            let check_at = at.child_key("health_check");
            if !check.path.starts_with('/') {
                self.problem(check_at.child_key("path"), "must start with `/`");
            }
            if check.healthy_threshold == 0 {
                self.problem(
                    check_at.child_key("healthy_threshold"),
                    "must be at least 1",
                );
            }
            if check.unhealthy_threshold == 0 {
                self.problem(
                    check_at.child_key("unhealthy_threshold"),
                    "must be at least 1",
                );
            }
            if check.interval.0.is_zero() {
                self.problem(check_at.child_key("interval"), "must be greater than zero");
            }
        }
        if let Some(tls) = &upstream.tls {
            if let Some(ca) = &tls.ca {
                self.readable(at.child_key("tls").child_key("ca"), ca);
            }
        }
        if upstream
            .passive_health
            .failure_ratio
            .is_some_and(|r| !(r > 0.0 && r <= 1.0))
        {
            self.problem(
                at.child_key("passive_health").child_key("failure_ratio"),
                "must be above 0 and at most 1",
            );
        }
        if upstream.retries.budget_percent > 100 {
            self.problem(
                at.child_key("retries").child_key("budget_percent"),
                "must be between 0 and 100",
            );
        }
    }

    fn route(&mut self, at: &KeyPath, route: &Route, config: &FileConfig) {
        match (&route.upstream, route.split.is_empty()) {
            (Some(_), false) => self.problem(
                at.child_key("split"),
                "give `upstream` or `split`, not both",
            ),
            (None, true) => self.problem(
                at.clone(),
                "a route needs `upstream` (or a weighted `split`)",
            ),
            _ => {}
        }
        if let Some(name) = &route.upstream {
            if !config.upstreams.contains_key(name) {
                self.problem(at.child_key("upstream"), unknown_upstream(name, config));
            }
        }
        for (i, weighted) in route.split.iter().enumerate() {
            if !config.upstreams.contains_key(&weighted.upstream) {
                self.problem(
                    at.child_key("split").child_index(i).child_key("upstream"),
                    unknown_upstream(&weighted.upstream, config),
                );
            }
        }
        if !route.split.is_empty() && route.split.iter().all(|w| w.weight == 0) {
            self.problem(at.child_key("split"), "the weights must not all be zero");
        }

        let auth_at = at.child_key("auth");
        for (i, provider) in route.auth.providers.iter().enumerate() {
            if !config
                .identity
                .providers
                .iter()
                .any(|p| &p.name == provider)
            {
                self.problem(
                    auth_at.child_key("providers").child_index(i),
                    format!("unknown provider `{provider}`"),
                );
            }
        }
        let mode = route.auth.mode.unwrap_or(config.identity.default_mode);
        let auth = &route.auth;
        let has_policy = !auth.roles_any.is_empty()
            || !auth.roles_all.is_empty()
            || !auth.scopes_any.is_empty()
            || !auth.scopes_all.is_empty()
            || !auth.claims.is_empty()
            || !auth.client_ids.is_empty();
        if mode == AuthMode::None && has_policy {
            self.problem(
                auth_at.child_key("mode"),
                "roles, scopes, claims and client ids need `mode: required` (or optional)",
            );
        }
        if route.auth.api_keys && config.identity.api_keys.is_empty() {
            self.problem(
                auth_at.child_key("api_keys"),
                "no `identity.api_keys` are configured",
            );
        }
        let can_use_api_keys = route.auth.api_keys && !config.identity.api_keys.is_empty();
        if mode != AuthMode::None && config.identity.providers.is_empty() && !can_use_api_keys {
            self.problem(
                auth_at.child_key("mode"),
                "needs at least one `identity.providers` entry",
            );
        }

        for (i, limit) in route.rate_limits.iter().enumerate() {
            let l_at = at.child_key("rate_limits").child_index(i);
            if let Err(message) = parse_rate(&limit.rate) {
                self.problem(l_at.child_key("rate"), message);
            }
            if limit.key.is_empty() {
                self.problem(l_at.child_key("key"), "at least one key is required");
            }
            for key in &limit.key {
                let ok = match key.strip_prefix("header:") {
                    Some(name) => http::HeaderName::from_bytes(name.as_bytes()).is_ok(),
                    None => matches!(
                        key.as_str(),
                        "client_ip" | "user" | "client_id" | "api_key" | "route"
                    ),
                };
                if !ok {
                    self.problem(
                        l_at.child_key("key"),
                        format!("`{key}` is not a key: client_ip, user, client_id, api_key, route, header:NAME"),
                    );
                }
            }
            if limit.burst == Some(0) {
                self.problem(l_at.child_key("burst"), "must be at least 1");
            }
        }
        if !route.rate_limits.is_empty()
            && config.rate_limits.store == RateLimitStore::Redis
            && config.redis.is_none()
        {
            self.problem(
                root().child_key("redis"),
                "`rate_limits.store: redis` needs a `redis` section",
            );
        }

        if route.max_concurrent == Some(0) {
            self.problem(at.child_key("max_concurrent"), "must be at least 1");
        }
        if route.queue.is_some() && route.max_concurrent.is_none() {
            self.problem(at.child_key("queue"), "needs `max_concurrent`");
        }
        if let Some(fault) = &route.fault {
            let f_at = at.child_key("fault");
            let percents = [
                ("delay", fault.delay.as_ref().map(|d| d.percent)),
                ("abort", fault.abort.as_ref().map(|a| a.percent)),
            ];
            for (key, percent) in percents {
                if percent.is_some_and(|p| !(0.0..=100.0).contains(&p)) {
                    self.problem(
                        f_at.child_key(key).child_key("percent"),
                        "must be between 0 and 100",
                    );
                }
            }
            if let Some(abort) = &fault.abort {
                if !(400..=599).contains(&abort.status) {
                    self.problem(
                        f_at.child_key("abort").child_key("status"),
                        "must be a 4xx or 5xx status",
                    );
                }
            }
        }

        let matcher_at = at.child_key("match");
        let m = &route.matcher;
        for (i, host) in m.hosts.iter().enumerate() {
            if let Err(message) = check_host(host) {
                self.problem(matcher_at.child_key("hosts").child_index(i), message);
            }
        }
        if m.path.is_some() && m.path_prefix.is_some() {
            self.problem(
                matcher_at.child_key("path_prefix"),
                "give `path` or `path_prefix`, not both",
            );
        }
        let mut params = Vec::new();
        let rules = config.server.paths.rules();
        if let Some(path) = &m.path {
            match check_path_template(path) {
                Ok(names) => {
                    params = names;
                    if let Err(message) = check_canonical(path, &rules) {
                        self.problem(matcher_at.child_key("path"), message);
                    }
                }
                Err(message) => self.problem(matcher_at.child_key("path"), message),
            }
        }
        if let Some(prefix) = &m.path_prefix {
            if !prefix.starts_with('/') || prefix.contains(['{', '}', '*']) {
                self.problem(
                    matcher_at.child_key("path_prefix"),
                    "must start with `/` and contain no `{`, `}` or `*`",
                );
            } else if let Err(message) = check_canonical(prefix, &rules) {
                self.problem(matcher_at.child_key("path_prefix"), message);
            }
        }
        for (i, method) in m.methods.iter().enumerate() {
            let valid =
                !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase() || b == b'-');
            if !valid {
                self.problem(
                    matcher_at.child_key("methods").child_index(i),
                    format!("`{method}` is not a method; write it in capitals, e.g. `GET`"),
                );
            }
        }
        for (name, value) in &m.headers {
            self.header_name(matcher_at.child_key("headers").child_key(name), name);
            self.header_value(matcher_at.child_key("headers").child_key(name), value);
        }
        if route.strip_prefix && m.path_prefix.is_none() {
            self.problem(at.child_key("strip_prefix"), "needs `match.path_prefix`");
        }
        if route.strip_prefix && route.rewrite_path.is_some() {
            self.problem(
                at.child_key("rewrite_path"),
                "give `strip_prefix` or `rewrite_path`, not both",
            );
        }
        if let Some(rewrite) = &route.rewrite_path {
            match check_path_template(rewrite) {
                Ok(used) => {
                    for name in used.iter().filter(|n| !params.contains(n)) {
                        self.problem(
                            at.child_key("rewrite_path"),
                            format!("`{{{name}}}` is not a parameter of `match.path`"),
                        );
                    }
                }
                Err(message) => self.problem(at.child_key("rewrite_path"), message),
            }
        }
        for (key, ops) in [
            ("request_headers", &route.request_headers),
            ("response_headers", &route.response_headers),
        ] {
            let ops_at = at.child_key(key);
            for (name, value) in &ops.set {
                self.header_name(ops_at.child_key("set").child_key(name), name);
                self.header_value(ops_at.child_key("set").child_key(name), value);
            }
            for (i, name) in ops.remove.iter().enumerate() {
                self.header_name(ops_at.child_key("remove").child_index(i), name);
            }
        }
    }

    fn header_name(&mut self, at: KeyPath, name: &str) {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            self.problem(at, format!("`{name}` is not a valid header name"));
        }
    }

    fn header_value(&mut self, at: KeyPath, value: &str) {
        if http::HeaderValue::from_str(value).is_err() {
            self.problem(at, "not a valid header value (control characters?)");
        }
    }
}

fn unknown_upstream(name: &str, config: &FileConfig) -> String {
    let known: Vec<&str> = config.upstreams.keys().map(String::as_str).collect();
    if known.is_empty() {
        format!("unknown upstream `{name}`: no upstreams are defined")
    } else {
        format!("unknown upstream `{name}` (defined: {})", known.join(", "))
    }
}

/// `host:port`, where host is an IP, a bracketed IPv6 address or a DNS name.
pub fn check_target(target: &str) -> Result<(), String> {
    if target.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    let (host, port) = target
        .rsplit_once(':')
        .ok_or_else(|| format!("`{target}` needs a port: `host:port`"))?;
    port.parse::<u16>()
        .map_err(|_| format!("`{port}` is not a port number"))?;
    check_dns_name(host).map_err(|m| format!("`{target}`: {m}"))
}

fn check_dns_name(host: &str) -> Result<(), String> {
    let valid = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if valid {
        Ok(())
    } else {
        Err(format!("`{host}` is not a valid host name"))
    }
}

/// An exact host name or `*.domain`.
fn check_host(host: &str) -> Result<(), String> {
    let name = host.strip_prefix("*.").unwrap_or(host);
    if name.contains('*') {
        return Err(format!(
            "`{host}`: a wildcard is only allowed as the first label, e.g. `*.example.com`"
        ));
    }
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!("`{host}`: write host names in lower case"));
    }
    check_dns_name(name)
}

/// Requests are matched in canonical form (see `portcullis_canonical`), so
/// a route written otherwise could never match, or not what it seems to.
/// `{param}` segments stand for any canonical segment.
fn check_canonical(path: &str, rules: &portcullis_canonical::Rules) -> Result<(), String> {
    let literal: String = path
        .split('/')
        .map(|segment| {
            if segment.starts_with('{') {
                "p"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/");
    match portcullis_canonical::canonical_path(literal.as_bytes(), rules) {
        Ok(canonical) if canonical == literal => Ok(()),
        Ok(canonical) => {
            // Put the parameters back for the suggestion.
            let suggestion: String = if canonical.split('/').count() == path.split('/').count() {
                canonical
                    .split('/')
                    .zip(path.split('/'))
                    .map(|(c, p)| if p.starts_with('{') { p } else { c })
                    .collect::<Vec<_>>()
                    .join("/")
            } else {
                canonical.into_owned()
            };
            Err(format!(
                "`{path}` is not in canonical form (requests are matched after normalisation, see `server.paths`): write `{suggestion}`"
            ))
        }
        Err(reason) => Err(format!(
            "`{path}` can never match: {reason} (see `server.paths`)"
        )),
    }
}

/// A path that may hold `{name}` parameters as whole segments; returns the
/// parameter names.
pub fn check_path_template(path: &str) -> Result<Vec<String>, String> {
    if !path.starts_with('/') {
        return Err(format!("`{path}` must start with `/`"));
    }
    let mut names = Vec::new();
    for segment in path.split('/').skip(1) {
        if let Some(inner) = segment.strip_prefix('{') {
            let name = inner
                .strip_suffix('}')
                .ok_or_else(|| format!("`{segment}`: a parameter must fill a whole segment"))?;
            let valid =
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid || names.iter().any(|n| n == name) {
                return Err(format!(
                    "`{{{name}}}` is not a valid or unique parameter name"
                ));
            }
            names.push(name.to_owned());
        } else if segment.contains(['{', '}', '*']) {
            return Err(format!(
                "`{segment}`: `{{`, `}}` and `*` are only allowed as a whole `{{param}}` segment"
            ));
        }
    }
    Ok(names)
}

/// `N/s`, `N/m`, `N/h` → (requests, period).
pub fn parse_rate(rate: &str) -> Result<(u32, std::time::Duration), String> {
    let err = || format!("`{rate}` is not a rate: write `100/s`, `600/m` or `10000/h`");
    let (count, unit) = rate.split_once('/').ok_or_else(err)?;
    let count: u32 = count.trim().parse().map_err(|_| err())?;
    let period = match unit.trim() {
        "s" | "second" => 1,
        "m" | "minute" => 60,
        "h" | "hour" => 3600,
        _ => return Err(err()),
    };
    if count == 0 {
        return Err(err());
    }
    Ok((count, std::time::Duration::from_secs(period)))
}

/// A file named in the config, relative to the config file's folder.
pub fn resolve_path(source: &Path, file: &str) -> std::path::PathBuf {
    let path = Path::new(file);
    if path.is_absolute() {
        return path.to_owned();
    }
    source
        .parent()
        .map(|dir| dir.join(path))
        .unwrap_or_else(|| path.to_owned())
}
