//! Route matching, compiled once per config into hash tables and a radix tree.
//!
//! Precedence, deterministic and documented in the README:
//! 1. host: exact host, then wildcard (`*.example.com`, the longest suffix
//!    first), then routes without hosts. If no route of a more specific host
//!    group matches the path, the next group is tried.
//! 2. path, within a host group: exact path, then template (`/users/{id}`,
//!    matchit's radix tree: static segments before parameters), then the
//!    longest path prefix on segment boundaries.
//! 3. among routes with the same host and path: methods and headers are
//!    checked in file order; the first that matches wins.
//!
//! A lookup is a handful of hash probes (one per host suffix and per path
//! segment) and one radix walk: no regexes, no scans over the route list.

use std::collections::HashMap;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use portcullis_config as config;

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A compiled route.
#[derive(Debug)]
pub struct Route {
    pub name: Box<str>,
    methods: Vec<Method>,
    headers: Vec<(HeaderName, HeaderValue)>,
    /// The normalised `path_prefix` (no trailing slash), when stripping it.
    strip: Option<Box<str>>,
    rewrite: Option<Vec<RewritePart>>,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    pub timeout: Option<Duration>,
    /// Cumulative weights and pool indices; one entry when not split.
    split: Vec<(u32, usize)>,
}

#[derive(Debug, Default)]
pub struct HeaderOps {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

#[derive(Debug)]
enum RewritePart {
    Literal(Box<str>),
    /// The n-th parameter of the path template.
    Param(usize),
}

/// The outcome of a lookup.
pub struct Matched<'r, 'p> {
    pub route: &'r Route,
    pub route_index: usize,
    params: Option<matchit::Params<'r, 'p>>,
}

/// What a request offers the router.
pub struct RequestView<'a> {
    pub host: &'a str,
    pub path: &'a str,
    pub method: &'a Method,
    pub headers: &'a http::HeaderMap,
}

#[derive(Default)]
struct PathTable {
    exact: FastMap<Box<str>, Vec<usize>>,
    templates: matchit::Router<Vec<usize>>,
    has_templates: bool,
    prefixes: FastMap<Box<str>, Vec<usize>>,
}

/// The compiled routing table.
#[derive(Default)]
pub struct Router {
    routes: Vec<Route>,
    exact_hosts: FastMap<Box<str>, PathTable>,
    wildcard_hosts: FastMap<Box<str>, PathTable>,
    any_host: PathTable,
    has_wildcards: bool,
}

/// A route that could not be compiled (the config crate validates first,
/// so these are rare: a template shape matchit rejects).
#[derive(Debug, thiserror::Error)]
#[error("route `{route}`: {message}")]
pub struct RouteError {
    pub route: String,
    pub message: String,
}

impl Router {
    /// Compiles routes; `pool_index` maps an upstream name to its index in
    /// the snapshot's pool list.
    pub fn compile(
        routes: &[config::Route],
        pool_index: &dyn Fn(&str) -> Option<usize>,
    ) -> Result<Router, RouteError> {
        let mut router = Router::default();
        let mut template_shapes: Vec<(HostKey, String, usize)> = Vec::new();
        for (index, spec) in routes.iter().enumerate() {
            let err = |message: String| RouteError {
                route: spec.name.clone(),
                message,
            };
            let m = &spec.matcher;
            let (template_names, path_kind) = match (&m.path, &m.path_prefix) {
                (Some(path), _) if path.contains('{') => {
                    let names = config::check_path_template(path).map_err(err)?;
                    (names, PathKind::Template(shape_of(path)))
                }
                (Some(path), _) => (Vec::new(), PathKind::Exact(path.clone())),
                (None, Some(prefix)) => (Vec::new(), PathKind::Prefix(normalise_prefix(prefix))),
                (None, None) => (Vec::new(), PathKind::Prefix("/".into())),
            };
            let route = Route {
                name: spec.name.as_str().into(),
                methods: m
                    .methods
                    .iter()
                    .map(|x| Method::from_bytes(x.as_bytes()))
                    .collect::<Result<_, _>>()
                    .map_err(|e| err(e.to_string()))?,
                headers: m
                    .headers
                    .iter()
                    .map(|(k, v)| header_pair(k, v))
                    .collect::<Result<_, _>>()
                    .map_err(err)?,
                strip: match (&path_kind, spec.strip_prefix) {
                    (PathKind::Prefix(p), true) => Some(p.as_str().into()),
                    _ => None,
                },
                rewrite: spec
                    .rewrite_path
                    .as_deref()
                    .map(|r| compile_rewrite(r, &template_names))
                    .transpose()
                    .map_err(err)?,
                request_headers: compile_header_ops(&spec.request_headers).map_err(err)?,
                response_headers: compile_header_ops(&spec.response_headers).map_err(err)?,
                timeout: spec.timeout.map(|t| t.0),
                split: compile_split(spec, pool_index).map_err(err)?,
            };
            router.routes.push(route);

            let hosts: Vec<HostKey> = if m.hosts.is_empty() {
                vec![None]
            } else {
                m.hosts
                    .iter()
                    .map(|h| match h.strip_prefix("*.") {
                        Some(suffix) => Some((true, suffix.into())),
                        None => Some((false, h.as_str().into())),
                    })
                    .collect()
            };
            for host in hosts {
                let table = router.table_mut(&host);
                match &path_kind {
                    PathKind::Exact(p) => table
                        .exact
                        .entry(p.as_str().into())
                        .or_default()
                        .push(index),
                    PathKind::Prefix(p) => table
                        .prefixes
                        .entry(p.as_str().into())
                        .or_default()
                        .push(index),
                    PathKind::Template(shape) => {
                        template_shapes.push((host.clone(), shape.clone(), index));
                    }
                }
            }
        }
        // Templates of the same shape share one radix entry; matchit rejects
        // the same shape twice.
        let mut grouped: Vec<(HostKey, String, Vec<usize>)> = Vec::new();
        for (host, shape, index) in template_shapes {
            match grouped
                .iter_mut()
                .find(|(h, s, _)| *h == host && *s == shape)
            {
                Some((_, _, indices)) => indices.push(index),
                None => grouped.push((host, shape, vec![index])),
            }
        }
        for (host, shape, indices) in grouped {
            let route = indices
                .first()
                .map(|i| router.routes[*i].name.to_string())
                .unwrap_or_default();
            let table = router.table_mut(&host);
            table
                .templates
                .insert(shape, indices)
                .map_err(|e| RouteError {
                    route,
                    message: format!("path template conflicts with another route: {e}"),
                })?;
            table.has_templates = true;
        }
        router.has_wildcards = !router.wildcard_hosts.is_empty();
        Ok(router)
    }

    fn table_mut(&mut self, host: &HostKey) -> &mut PathTable {
        match host {
            None => &mut self.any_host,
            Some((false, h)) => self.exact_hosts.entry(h.clone()).or_default(),
            Some((true, h)) => self.wildcard_hosts.entry(h.clone()).or_default(),
        }
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Finds the route for a request. `host` must be lower case without port.
    pub fn lookup<'r, 'p>(&'r self, req: &RequestView<'p>) -> Option<Matched<'r, 'p>> {
        if let Some(table) = self.exact_hosts.get(req.host) {
            if let Some(m) = self.lookup_in(table, req) {
                return Some(m);
            }
        }
        if self.has_wildcards {
            let mut rest = req.host;
            while let Some(dot) = rest.find('.') {
                rest = &rest[dot + 1..];
                if let Some(table) = self.wildcard_hosts.get(rest) {
                    if let Some(m) = self.lookup_in(table, req) {
                        return Some(m);
                    }
                }
            }
        }
        self.lookup_in(&self.any_host, req)
    }

    fn lookup_in<'r, 'p>(
        &'r self,
        table: &'r PathTable,
        req: &RequestView<'p>,
    ) -> Option<Matched<'r, 'p>> {
        if let Some(candidates) = table.exact.get(req.path) {
            if let Some(index) = self.first_matching(candidates, req) {
                return Some(self.matched(index, None));
            }
        }
        if table.has_templates {
            if let Ok(found) = table.templates.at(req.path) {
                if let Some(index) = self.first_matching(found.value, req) {
                    return Some(self.matched(index, Some(found.params)));
                }
            }
        }
        if table.prefixes.is_empty() {
            return None;
        }
        let mut candidate = req.path;
        if candidate.len() > 1 {
            candidate = candidate.trim_end_matches('/');
        }
        loop {
            let key = if candidate.is_empty() { "/" } else { candidate };
            if let Some(candidates) = table.prefixes.get(key) {
                if let Some(index) = self.first_matching(candidates, req) {
                    return Some(self.matched(index, None));
                }
            }
            if key == "/" {
                return None;
            }
            candidate = match candidate.rfind('/') {
                Some(slash) => &candidate[..slash],
                None => "",
            };
        }
    }

    fn matched<'r, 'p>(
        &'r self,
        index: usize,
        params: Option<matchit::Params<'r, 'p>>,
    ) -> Matched<'r, 'p> {
        Matched {
            route: &self.routes[index],
            route_index: index,
            params,
        }
    }

    fn first_matching(&self, candidates: &[usize], req: &RequestView<'_>) -> Option<usize> {
        candidates.iter().copied().find(|&i| {
            let route = &self.routes[i];
            (route.methods.is_empty() || route.methods.contains(req.method))
                && route
                    .headers
                    .iter()
                    .all(|(name, value)| req.headers.get(name) == Some(value))
        })
    }
}

impl Route {
    /// Picks the pool for this request: the only one, or by weight.
    pub fn pick_pool(&self) -> usize {
        match self.split.as_slice() {
            [(_, pool)] => *pool,
            split => {
                let total = split.last().map_or(1, |(w, _)| *w).max(1);
                let ticket = rand::random_range(0..total);
                split
                    .iter()
                    .find(|(cumulative, _)| ticket < *cumulative)
                    .or(split.last())
                    .map_or(0, |(_, pool)| *pool)
            }
        }
    }

    /// The path to send upstream, when the route changes it.
    pub fn upstream_path(&self, matched: &Matched<'_, '_>, path: &str) -> Option<String> {
        if let Some(prefix) = &self.strip {
            let rest = path.strip_prefix(&**prefix).unwrap_or(path);
            return Some(if rest.is_empty() {
                "/".to_owned()
            } else if rest.starts_with('/') {
                rest.to_owned()
            } else {
                // `/` prefix: nothing was stripped.
                path.to_owned()
            });
        }
        let parts = self.rewrite.as_ref()?;
        let mut out = String::with_capacity(path.len());
        for part in parts {
            match part {
                RewritePart::Literal(text) => out.push_str(text),
                RewritePart::Param(n) => {
                    if let Some((_, value)) = matched.params.as_ref().and_then(|p| p.iter().nth(*n))
                    {
                        out.push_str(value);
                    }
                }
            }
        }
        Some(out)
    }
}

/// `None` for routes without hosts; `(wildcard, name)` otherwise.
type HostKey = Option<(bool, Box<str>)>;

enum PathKind {
    Exact(String),
    Prefix(String),
    Template(String),
}

/// `/users/{id}/orders/{order}` → `/users/{p0}/orders/{p1}`: routes with the
/// same shape but other parameter names share a radix entry.
fn shape_of(template: &str) -> String {
    let mut n = 0;
    template
        .split('/')
        .map(|segment| {
            if segment.starts_with('{') {
                n += 1;
                format!("{{p{}}}", n - 1)
            } else {
                segment.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn normalise_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".to_owned()
    } else {
        trimmed.to_owned()
    }
}

fn header_pair(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), String> {
    Ok((
        HeaderName::from_bytes(name.as_bytes()).map_err(|e| format!("header `{name}`: {e}"))?,
        HeaderValue::from_str(value).map_err(|e| format!("header `{name}`: {e}"))?,
    ))
}

fn compile_header_ops(ops: &config::HeaderOps) -> Result<HeaderOps, String> {
    Ok(HeaderOps {
        set: ops
            .set
            .iter()
            .map(|(k, v)| header_pair(k, v))
            .collect::<Result<_, _>>()?,
        remove: ops
            .remove
            .iter()
            .map(|name| HeaderName::from_bytes(name.as_bytes()).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?,
    })
}

fn compile_rewrite(rewrite: &str, params: &[String]) -> Result<Vec<RewritePart>, String> {
    let mut parts = Vec::new();
    let mut literal = String::new();
    for (i, segment) in rewrite.split('/').enumerate() {
        if i > 0 {
            literal.push('/');
        }
        match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(name) => {
                let n = params
                    .iter()
                    .position(|p| p == name)
                    .ok_or_else(|| format!("`{{{name}}}` is not a parameter of the path"))?;
                parts.push(RewritePart::Literal(std::mem::take(&mut literal).into()));
                parts.push(RewritePart::Param(n));
            }
            None => literal.push_str(segment),
        }
    }
    parts.push(RewritePart::Literal(literal.into()));
    parts.retain(|p| !matches!(p, RewritePart::Literal(l) if l.is_empty()));
    Ok(parts)
}

fn compile_split(
    spec: &config::Route,
    pool_index: &dyn Fn(&str) -> Option<usize>,
) -> Result<Vec<(u32, usize)>, String> {
    let find = |name: &str| pool_index(name).ok_or_else(|| format!("unknown upstream `{name}`"));
    if let Some(name) = &spec.upstream {
        return Ok(vec![(1, find(name)?)]);
    }
    let mut cumulative = 0u32;
    let mut split = Vec::new();
    for weighted in &spec.split {
        if weighted.weight == 0 {
            continue;
        }
        cumulative = cumulative.saturating_add(weighted.weight);
        split.push((cumulative, find(&weighted.upstream)?));
    }
    if split.is_empty() {
        return Err("no upstream with a weight above zero".into());
    }
    Ok(split)
}

#[cfg(test)]
mod tests;
