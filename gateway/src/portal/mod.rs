//! The docs portal: each route with `openapi` names its upstream's document;
//! a control-plane task fetches them (`fetch`), merges them along the
//! routing table with `portcullis-openapi-merge`, and publishes the result.
//! The request path (`serve`) only picks a rendering: which services the
//! caller may see is decided per request from the routes' auth policies,
//! and each distinct visibility is rendered once and cached.
//!
//! A document that cannot be fetched or parsed keeps its last good version
//! and is flagged (`status.json`, the portal's banner); one that breaks the
//! merge (invalid, or a path another service already defines) is left out
//! and flagged, never breaking the others.

mod fetch;
mod serve;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::Bytes;
use portcullis_config as config;
use portcullis_openapi_merge as merge;
use serde_json::{json, Value};

pub use fetch::spawn_fetcher;
pub use serve::{page, serve, Page};

/// One route's document source, compiled into the snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Service {
    /// The route's name: the service name in the merged document.
    pub name: String,
    pub route_index: usize,
    /// The route's `path_prefix`, without a trailing slash (`/` for none).
    pub prefix: String,
    pub strip_prefix: bool,
    /// The pool the document is fetched from (the route's heaviest).
    pub upstream: String,
    /// Path of the document on the upstream.
    pub path: String,
}

/// The portal part of a snapshot.
#[derive(Debug)]
pub struct Site {
    pub settings: config::Portal,
    /// `spec_path` with `.json` replaced by `.yaml`.
    pub yaml_path: String,
    pub services: Vec<Service>,
    pub portal: Arc<Portal>,
}

impl Site {
    pub fn compile(config: &config::FileConfig, portal: &Arc<Portal>) -> Option<Site> {
        let settings = &config.portal;
        if !settings.enabled {
            return None;
        }
        let services = config
            .routes
            .iter()
            .enumerate()
            .filter_map(|(route_index, route)| {
                let path = route.openapi.clone()?;
                let upstream = match &route.upstream {
                    Some(name) => name.clone(),
                    None => route
                        .split
                        .iter()
                        .max_by_key(|w| w.weight)
                        .map(|w| w.upstream.clone())?,
                };
                let prefix = route
                    .matcher
                    .path_prefix
                    .as_deref()
                    .map(|p| p.trim_end_matches('/'))
                    .filter(|p| !p.is_empty())
                    .unwrap_or("/")
                    .to_owned();
                Some(Service {
                    name: route.name.clone(),
                    route_index,
                    prefix,
                    strip_prefix: route.strip_prefix,
                    upstream,
                    path,
                })
            })
            .collect();
        let yaml_path = match settings.spec_path.strip_suffix(".json") {
            Some(stem) => format!("{stem}.yaml"),
            None => format!("{}.yaml", settings.spec_path),
        };
        Some(Site {
            settings: settings.clone(),
            yaml_path,
            services,
            portal: portal.clone(),
        })
    }
}

/// What is known of one service's document.
#[derive(Debug, Default)]
struct Source {
    /// The service as last fetched: a changed route starts afresh.
    service: Option<Service>,
    etag: Option<String>,
    /// The last good document.
    document: Option<Arc<Value>>,
    last_success: Option<SystemTime>,
    /// Why the last fetch failed (the document, if any, is stale).
    fetch_error: Option<String>,
    /// Why the document was left out of the merge.
    merge_error: Option<String>,
}

/// State that outlives reloads: fetched documents and the published merge.
#[derive(Debug, Default)]
pub struct Portal {
    sources: Mutex<HashMap<String, Source>>,
    published: ArcSwap<Published>,
    /// Wakes the fetcher at once (a reload).
    wake: tokio::sync::Notify,
}

/// A merged document and its renderings per visibility.
#[derive(Debug, Default)]
pub struct Published {
    document: Value,
    /// Service names in merge order; visibility masks index this.
    services: Vec<String>,
    status: Bytes,
    renderings: Mutex<HashMap<Vec<bool>, Arc<Rendering>>>,
}

/// One visibility's document, serialized once.
#[derive(Debug)]
pub struct Rendering {
    pub json: Bytes,
    pub yaml: Bytes,
    pub etag: String,
}

/// Renderings kept per published document: one per distinct set of visible
/// services; a bound so that many role combinations cannot grow it forever.
const MAX_RENDERINGS: usize = 64;

fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Portal {
    /// Asks the fetcher to refresh now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub fn published(&self) -> Arc<Published> {
        self.published.load_full()
    }

    /// Merges the last good documents of `services` and publishes the result.
    fn publish(&self, site: &Site) {
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        sources.retain(|name, _| site.services.iter().any(|s| &s.name == name));
        let options = merge::Options {
            servers: site.settings.servers.clone(),
            title: site.settings.title.clone(),
            ..merge::Options::default()
        };
        let input = |service: &Service, document: &Value| merge::Input {
            name: service.name.clone(),
            prefix: service.prefix.clone(),
            strip_prefix: service.strip_prefix,
            document: document.clone(),
        };
        // Each document alone first: an invalid one is left out by itself.
        let mut included: Vec<(&Service, Arc<Value>)> = Vec::new();
        for service in &site.services {
            let Some(source) = sources.get_mut(&service.name) else {
                continue;
            };
            source.merge_error = None;
            let Some(document) = source.document.clone() else {
                continue;
            };
            match merge::merge(vec![input(service, &document)], &options) {
                Ok(_) => included.push((service, document)),
                Err(e) => source.merge_error = Some(e.to_string()),
            }
        }
        // Then together; a service whose paths collide with an earlier
        // one's is left out, the earlier (in route order) keeps them.
        let document = loop {
            let inputs = included.iter().map(|(s, d)| input(s, d)).collect();
            match merge::merge(inputs, &options) {
                Ok(document) => break document,
                Err(merge::MergeError::PathConflict {
                    pointer,
                    method,
                    first,
                    second,
                }) if included.iter().any(|(s, _)| s.name == second) => {
                    if let Some(source) = sources.get_mut(&second) {
                        source.merge_error = Some(format!(
                            "left out: {pointer}: `{method}` is already defined by `{first}`"
                        ));
                    }
                    included.retain(|(s, _)| s.name != second);
                }
                Err(e) => {
                    log::error!("portal: merging the backends' documents failed: {e}");
                    for (service, _) in &included {
                        if let Some(source) = sources.get_mut(&service.name) {
                            source.merge_error = Some(e.to_string());
                        }
                    }
                    included.clear();
                }
            }
        };
        let status: Vec<Value> = site
            .services
            .iter()
            .map(|service| {
                let source = sources.get(&service.name);
                let state = match source {
                    Some(s) if s.merge_error.is_some() => "excluded",
                    Some(s) if s.document.is_some() && s.fetch_error.is_some() => "stale",
                    Some(s) if s.document.is_some() => "ok",
                    _ => "missing",
                };
                json!({
                    "service": service.name,
                    "prefix": service.prefix,
                    "state": state,
                    "last_success": source.and_then(|s| s.last_success).map(unix_secs),
                    "error": source.and_then(|s| s.merge_error.clone().or_else(|| s.fetch_error.clone())),
                })
            })
            .collect();
        let status = json!({ "services": status });
        self.published.store(Arc::new(Published {
            document,
            services: included.iter().map(|(s, _)| s.name.clone()).collect(),
            status: Bytes::from(status.to_string()),
            renderings: Mutex::default(),
        }));
    }
}

impl Published {
    pub fn status(&self) -> Bytes {
        self.status.clone()
    }

    pub fn services(&self) -> &[String] {
        &self.services
    }

    /// The document with the services `visible` marks (same order as
    /// `services()`), rendered once per distinct mask.
    pub fn render(&self, visible: Vec<bool>) -> Arc<Rendering> {
        let mut renderings = self.renderings.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rendering) = renderings.get(&visible) {
            return rendering.clone();
        }
        let mut document = self.document.clone();
        if visible.iter().any(|v| !v) {
            let keep = |service: &str| {
                self.services
                    .iter()
                    .position(|s| s == service)
                    .and_then(|i| visible.get(i).copied())
                    .unwrap_or(false)
            };
            merge::retain_services(&mut document, &keep);
        }
        let json = Bytes::from(serde_json::to_vec_pretty(&document).unwrap_or_default());
        let yaml = Bytes::from(merge::to_yaml(&document));
        let etag = {
            use std::hash::{BuildHasher, Hasher};
            let mut hasher = foldhash::quality::FixedState::with_seed(7).build_hasher();
            hasher.write(&json);
            format!("\"{:016x}\"", hasher.finish())
        };
        let rendering = Arc::new(Rendering { json, yaml, etag });
        if renderings.len() >= MAX_RENDERINGS {
            renderings.clear();
        }
        renderings.insert(visible, rendering.clone());
        rendering
    }
}
