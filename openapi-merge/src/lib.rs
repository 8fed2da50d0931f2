//! Merge backend OpenAPI 3.x documents into one, along the gateway's routes:
//! paths become the public paths, identical components are shared,
//! different ones under the same name are renamed after their service with
//! every `$ref` rewritten, operation ids made unique, tags grouped per
//! service. The output is deterministic: the same inputs give the same bytes.
//!
//! Swagger 2.0 inputs are converted to OpenAPI 3.0 first (`swagger2`).

mod bundle;
mod swagger2;
mod yaml_in;
mod yaml_out;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};

pub use bundle::{bundle_external_refs, Loader};
pub use swagger2::convert as convert_swagger2;
pub use yaml_out::to_yaml;

/// One backend document and how the gateway exposes it.
#[derive(Clone, Debug)]
pub struct Input {
    /// Service name: used for renamed components and `x-portcullis-service`.
    pub name: String,
    /// The public path prefix of the service's route.
    pub prefix: String,
    /// Whether the gateway strips `prefix` before forwarding (then the
    /// document's paths are relative to it).
    pub strip_prefix: bool,
    pub document: Value,
}

/// Output settings.
#[derive(Clone, Debug)]
pub struct Options {
    /// `servers` of the merged document: the gateway's public URLs.
    pub servers: Vec<String>,
    /// `3.1` (default) or `3.0`.
    pub openapi: String,
    pub title: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            servers: Vec::new(),
            openapi: "3.1.0".into(),
            title: "Portcullis API".into(),
        }
    }
}

/// What went wrong, naming the input and a JSON pointer.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("{input}: cannot parse: {message}")]
    Parse { input: String, message: String },
    #[error("{input}: {pointer}: {message}")]
    Invalid {
        input: String,
        pointer: String,
        message: String,
    },
    #[error("{pointer}: `{method}` is defined by both `{first}` and `{second}`")]
    PathConflict {
        pointer: String,
        method: String,
        first: String,
        second: String,
    },
}

/// Parses JSON or YAML text.
pub fn parse(input: &str, text: &str) -> Result<Value, MergeError> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') {
        return serde_json::from_str(text).map_err(|e| MergeError::Parse {
            input: input.into(),
            message: e.to_string(),
        });
    }
    yaml_in::parse(text).map_err(|(line, message)| MergeError::Parse {
        input: input.into(),
        message: format!("line {line}: {message}"),
    })
}

/// Component sections whose entries can be shared or renamed.
const COMPONENT_KINDS: [&str; 10] = [
    "schemas",
    "responses",
    "parameters",
    "examples",
    "requestBodies",
    "headers",
    "securitySchemes",
    "links",
    "callbacks",
    "pathItems",
];

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Merges the inputs in order. Takes them by value: their trees move into
/// the result instead of being copied (a third of a large merge's time).
pub fn merge(inputs: Vec<Input>, options: &Options) -> Result<Value, MergeError> {
    let mut components: BTreeMap<&str, Map<String, Value>> = BTreeMap::new();
    let mut paths: Map<String, Value> = Map::new();
    let mut path_owner: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut operation_ids: BTreeSet<String> = BTreeSet::new();
    let mut tags: BTreeMap<String, Value> = BTreeMap::new();
    let mut tag_groups: Vec<Value> = Vec::new();

    for mut input in inputs {
        let invalid = |pointer: &str, message: &str| MergeError::Invalid {
            input: input.name.clone(),
            pointer: pointer.into(),
            message: message.into(),
        };
        let mut doc = match input.document.get("swagger") {
            Some(Value::String(v)) if v == "2.0" => swagger2::convert(&input.document),
            Some(_) => return Err(invalid("/swagger", "only Swagger 2.0 is supported")),
            None => std::mem::take(&mut input.document),
        };
        let doc = &mut doc;
        let version = doc.get("openapi").and_then(Value::as_str).unwrap_or("");
        if !version.starts_with("3.") {
            return Err(invalid("/openapi", "not an OpenAPI 3.x document"));
        }

        // Components: decide renames until stable (a shared schema that
        // refers to a renamed one is itself different).
        let own = doc.get("components").and_then(Value::as_object);
        let mut renames: BTreeMap<(String, String), String> = BTreeMap::new();
        loop {
            let mut changed = false;
            for kind in COMPONENT_KINDS {
                let Some(entries) = own.and_then(|c| c.get(kind)).and_then(Value::as_object) else {
                    continue;
                };
                for (name, definition) in entries {
                    let key = (kind.to_owned(), name.clone());
                    if renames.contains_key(&key) {
                        continue;
                    }
                    let rewritten = rewrite_refs(definition, &renames);
                    match components.get(kind).and_then(|m| m.get(name)) {
                        Some(existing) if *existing != rewritten => {
                            let mut candidate = format!("{}_{name}", service_id(&input.name));
                            let mut n = 2;
                            while components
                                .get(kind)
                                .is_some_and(|m| m.contains_key(&candidate))
                            {
                                candidate = format!("{}_{name}_{n}", service_id(&input.name));
                                n += 1;
                            }
                            renames.insert(key, candidate);
                            changed = true;
                        }
                        _ => {}
                    }
                }
            }
            if !changed {
                break;
            }
        }
        let mut own_components = doc
            .get_mut("components")
            .map(Value::take)
            .unwrap_or(Value::Null);
        for kind in COMPONENT_KINDS {
            let Some(entries) = own_components.get_mut(kind).and_then(Value::as_object_mut) else {
                continue;
            };
            let merged = components.entry(kind).or_default();
            for (name, mut definition) in std::mem::take(entries) {
                let target = renames
                    .get(&(kind.to_owned(), name.clone()))
                    .cloned()
                    .unwrap_or(name);
                if let serde_json::map::Entry::Vacant(slot) = merged.entry(target) {
                    rewrite_refs_in_place(&mut definition, &renames);
                    slot.insert(definition);
                }
            }
        }

        // Paths under their public prefix.
        let base = server_base_path(doc);
        let security = doc.get("security").cloned();
        let mut service_tags: BTreeSet<String> = BTreeSet::new();
        let doc_paths = match doc.get_mut("paths").map(Value::take) {
            Some(Value::Object(paths)) => paths,
            _ => Map::new(),
        };
        for (path, mut item) in doc_paths {
            let public = public_path(&input, &base, &path);
            rewrite_refs_in_place(&mut item, &renames);
            let pointer = format!("/paths/{}", escape_pointer(&public));
            if let Some(item) = item.as_object_mut() {
                for method in METHODS {
                    let Some(operation) = item.get_mut(method).and_then(Value::as_object_mut)
                    else {
                        continue;
                    };
                    let key = (public.clone(), method.to_owned());
                    if let Some(first) = path_owner.get(&key) {
                        return Err(MergeError::PathConflict {
                            pointer,
                            method: method.into(),
                            first: first.clone(),
                            second: input.name.clone(),
                        });
                    }
                    path_owner.insert(key, input.name.clone());
                    operation.insert("x-portcullis-service".into(), input.name.clone().into());
                    if let Some(id) = operation.get("operationId").and_then(Value::as_str) {
                        let mut unique = id.to_owned();
                        if operation_ids.contains(&unique) {
                            unique = format!("{}_{id}", service_id(&input.name));
                            let mut n = 2;
                            while operation_ids.contains(&unique) {
                                unique = format!("{}_{id}_{n}", service_id(&input.name));
                                n += 1;
                            }
                            operation.insert("operationId".into(), unique.clone().into());
                        }
                        operation_ids.insert(unique);
                    }
                    if !operation.contains_key("tags") {
                        operation.insert("tags".into(), json!([input.name]));
                    }
                    for tag in operation["tags"].as_array().into_iter().flatten() {
                        if let Some(tag) = tag.as_str() {
                            service_tags.insert(tag.to_owned());
                        }
                    }
                    // The merged document has no top-level security: each
                    // operation carries its service's default.
                    if let (Some(security), false) = (&security, operation.contains_key("security"))
                    {
                        operation.insert("security".into(), security.clone());
                    }
                }
            }
            match paths.get_mut(&public).and_then(Value::as_object_mut) {
                Some(existing) => {
                    if let Value::Object(item) = item {
                        for (k, v) in item {
                            existing.entry(k).or_insert(v);
                        }
                    }
                }
                None => {
                    paths.insert(public, item);
                }
            }
        }
        for tag in doc
            .get("tags")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(name) = tag.get("name").and_then(Value::as_str) {
                tags.entry(name.to_owned()).or_insert_with(|| tag.clone());
                service_tags.insert(name.to_owned());
            }
        }
        for tag in &service_tags {
            tags.entry(tag.clone())
                .or_insert_with(|| json!({ "name": tag }));
        }
        tag_groups.push(json!({ "name": input.name, "tags": service_tags }));
    }

    let mut out = Map::new();
    out.insert("openapi".into(), options.openapi.clone().into());
    out.insert(
        "info".into(),
        json!({ "title": options.title, "version": "1.0.0" }),
    );
    if !options.servers.is_empty() {
        let servers: Vec<Value> = options
            .servers
            .iter()
            .map(|url| json!({ "url": url }))
            .collect();
        out.insert("servers".into(), servers.into());
    }
    out.insert("paths".into(), Value::Object(paths));
    let components: Map<String, Value> = components
        .into_iter()
        .filter(|(_, entries)| !entries.is_empty())
        .map(|(kind, entries)| (kind.to_owned(), Value::Object(entries)))
        .collect();
    if !components.is_empty() {
        out.insert("components".into(), Value::Object(components));
    }
    out.insert("tags".into(), tags.into_values().collect::<Vec<_>>().into());
    out.insert("x-tagGroups".into(), tag_groups.into());
    Ok(Value::Object(out))
}

/// `Name` → `Name`, usable in component names (`^[a-zA-Z0-9._-]+$`).
fn service_id(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The path part of the document's first server URL (`/api/v3`).
fn server_base_path(doc: &Value) -> String {
    let url = doc
        .pointer("/servers/0/url")
        .and_then(Value::as_str)
        .unwrap_or("");
    let path = match url.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("", |i| &rest[i..]),
        None => url,
    };
    path.trim_end_matches('/').to_owned()
}

fn public_path(input: &Input, base: &str, path: &str) -> String {
    let prefix = input.prefix.trim_end_matches('/');
    if input.strip_prefix {
        format!("{prefix}{base}{path}")
    } else {
        format!("{base}{path}")
    }
}

fn escape_pointer(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// Rewrites references in place; nothing to do without renames.
fn rewrite_refs_in_place(value: &mut Value, renames: &BTreeMap<(String, String), String>) {
    if renames.is_empty() {
        return;
    }
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                match v {
                    Value::String(reference) if k == "$ref" => {
                        *reference = rewrite_ref(reference, renames)
                    }
                    other => rewrite_refs_in_place(other, renames),
                }
            }
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|v| rewrite_refs_in_place(v, renames)),
        _ => {}
    }
}

/// Rewrites `#/components/<kind>/<name>` references per the renames.
fn rewrite_refs(value: &Value, renames: &BTreeMap<(String, String), String>) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    if k == "$ref" {
                        if let Some(reference) = v.as_str() {
                            return (k.clone(), Value::String(rewrite_ref(reference, renames)));
                        }
                    }
                    (k.clone(), rewrite_refs(v, renames))
                })
                .collect(),
        ),
        Value::Array(items) => {
            Value::Array(items.iter().map(|v| rewrite_refs(v, renames)).collect())
        }
        other => other.clone(),
    }
}

fn rewrite_ref(reference: &str, renames: &BTreeMap<(String, String), String>) -> String {
    let Some(rest) = reference.strip_prefix("#/components/") else {
        return reference.to_owned();
    };
    let Some((kind, name)) = rest.split_once('/') else {
        return reference.to_owned();
    };
    match renames.get(&(kind.to_owned(), name.to_owned())) {
        Some(renamed) => format!("#/components/{kind}/{renamed}"),
        None => reference.to_owned(),
    }
}

/// Keeps only the operations of the services `keep` accepts (by their
/// `x-portcullis-service`), then drops what only the removed ones used:
/// empty path items, their tags and tag groups, and components no remaining
/// `$ref` reaches (security schemes stay: operations name them, not refer
/// to them). The gateway uses it to show each caller only what it can call.
pub fn retain_services(doc: &mut Value, keep: &dyn Fn(&str) -> bool) {
    let Some(root) = doc.as_object_mut() else {
        return;
    };
    let mut used_tags: BTreeSet<String> = BTreeSet::new();
    let mut kept_services: BTreeSet<String> = BTreeSet::new();
    if let Some(Value::Object(paths)) = root.get_mut("paths") {
        paths.retain(|_, item| {
            let Some(item) = item.as_object_mut() else {
                return false;
            };
            for method in METHODS {
                let service = item
                    .get(method)
                    .and_then(|op| op.get("x-portcullis-service"))
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                match service {
                    Some(service) if !keep(&service) => {
                        item.remove(method);
                    }
                    Some(service) => {
                        kept_services.insert(service);
                    }
                    None => {}
                }
                let tags = item.get(method).and_then(|op| op.get("tags"));
                for tag in tags.and_then(Value::as_array).into_iter().flatten() {
                    if let Some(tag) = tag.as_str() {
                        used_tags.insert(tag.to_owned());
                    }
                }
            }
            METHODS.iter().any(|m| item.contains_key(*m))
        });
    }
    if let Some(Value::Array(tags)) = root.get_mut("tags") {
        tags.retain(|tag| {
            tag.get("name")
                .and_then(Value::as_str)
                .is_some_and(|name| used_tags.contains(name))
        });
    }
    if let Some(Value::Array(groups)) = root.get_mut("x-tagGroups") {
        groups.retain(|group| {
            group
                .get("name")
                .and_then(Value::as_str)
                .is_some_and(|name| kept_services.contains(name))
        });
    }
    prune_components(root);
}

/// Removes components that nothing outside `components` reaches, directly
/// or through other components.
fn prune_components(root: &mut Map<String, Value>) {
    let mut reachable: BTreeSet<String> = BTreeSet::new();
    let mut pending: Vec<String> = Vec::new();
    for (key, value) in root.iter() {
        if key != "components" {
            collect_refs(value, &mut |r| pending.push(r.to_owned()));
        }
    }
    let Some(Value::Object(components)) = root.get_mut("components") else {
        return;
    };
    while let Some(reference) = pending.pop() {
        if !reachable.insert(reference.clone()) {
            continue;
        }
        let target = reference
            .strip_prefix("#/components/")
            .and_then(|rest| rest.split_once('/'))
            .and_then(|(kind, name)| {
                let name = name.replace("~1", "/").replace("~0", "~");
                components.get(kind).and_then(|c| c.get(&name))
            });
        if let Some(target) = target {
            collect_refs(target, &mut |r| pending.push(r.to_owned()));
        }
    }
    for (kind, entries) in components.iter_mut() {
        if kind == "securitySchemes" {
            continue;
        }
        if let Some(entries) = entries.as_object_mut() {
            entries.retain(|name, _| {
                let escaped = name.replace('~', "~0").replace('/', "~1");
                reachable.contains(&format!("#/components/{kind}/{escaped}"))
            });
        }
    }
    components.retain(|_, entries| entries.as_object().is_none_or(|e| !e.is_empty()));
    if components.is_empty() {
        root.remove("components");
    }
}

/// Every `$ref` of a document that does not resolve inside it.
pub fn dangling_refs(doc: &Value) -> Vec<String> {
    let mut out = Vec::new();
    collect_refs(doc, &mut |reference| {
        if let Some(pointer) = reference.strip_prefix('#') {
            if doc.pointer(pointer).is_none() {
                out.push(reference.to_owned());
            }
        }
    });
    out
}

fn collect_refs(value: &Value, found: &mut dyn FnMut(&str)) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(reference)) => found(reference),
                    _ => collect_refs(v, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, found)),
        _ => {}
    }
}

#[cfg(test)]
mod tests;
