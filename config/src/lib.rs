//! Portcullis configuration: the YAML file model, its validation, and errors
//! that name file, line, column and key for every problem at once.
//!
//! The stages are: YAML text → [`yaml::Node`] tree with positions →
//! [`FileConfig`] (serde, unknown keys rejected) → [`ValidConfig`] (cross
//! references and values checked). The gateway compiles a `ValidConfig` into
//! its immutable runtime snapshot.

mod error;
pub mod model;
mod secret;
pub mod sso;
pub mod units;
mod validate;
pub use validate::{check_path_template, parse_rate, resolve_path};
pub mod yaml;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use error::{ConfigErrors, LoadError, Problem};
pub use model::*;
pub use secret::Secret;
pub use sso::SsoConfig;
pub use units::{ByteSize, Duration};
use yaml::{KeyPath, PathSegment, Span};

/// A configuration that passed every check. Only [`load`] and
/// [`load_from_str`] make one.
#[derive(Clone, Debug)]
pub struct ValidConfig {
    pub config: FileConfig,
    /// Where it came from, for messages and the config watcher.
    pub source: PathBuf,
    /// Positions of every key, so later stages (certificate loading,
    /// compiling) can still point at the file.
    pub spans: SpanIndex,
}

impl ValidConfig {
    /// Settings that are valid but weaken a security check, each as
    /// `file:line:column: key.path: message` (printed by `portcullis check`
    /// and logged at start and reload).
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = ConfigErrors::new(self.source.display().to_string());
        let mut warn = |path: KeyPath, message: &str| {
            let span = self.spans.find(&path);
            warnings.push(span, path, message);
        };
        for (i, provider) in self.config.identity.providers.iter().enumerate() {
            if provider.insecure_skip_audience {
                warn(
                    KeyPath::default()
                        .child_key("identity")
                        .child_key("providers")
                        .child_index(i)
                        .child_key("insecure_skip_audience"),
                    "tokens minted for any other service of this provider are accepted (RFC 8725 §3.9); list `audiences` instead",
                );
            }
        }
        if warnings.is_empty() {
            return Vec::new();
        }
        warnings.to_string().lines().map(str::to_owned).collect()
    }
}

/// Key path → position in the file.
#[derive(Clone, Debug, Default)]
pub struct SpanIndex {
    values: HashMap<KeyPath, Span>,
    keys: HashMap<KeyPath, Span>,
}

impl SpanIndex {
    /// The position of the value at `path`, or of its nearest ancestor.
    pub fn find(&self, path: &KeyPath) -> Option<Span> {
        let mut path = path.clone();
        loop {
            if let Some(span) = self.values.get(&path) {
                return Some(*span);
            }
            path = path.parent()?;
        }
    }

    /// The position of the key that names `path` (for unknown keys).
    pub fn find_key(&self, path: &KeyPath) -> Option<Span> {
        self.keys.get(path).copied().or_else(|| self.find(path))
    }
}

/// Reads, parses and validates a config file.
pub fn load(path: &Path) -> Result<ValidConfig, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: path.to_owned(),
        source,
    })?;
    load_from_str(&text, path, &|name| std::env::var(name).ok())
}

/// Parses and validates config text; `source` only names it in messages and
/// resolves relative file paths. `env` looks up `${VAR}` references.
pub fn load_from_str(
    text: &str,
    source: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ValidConfig, LoadError> {
    let (config, spans) =
        load_document(text, source, env, |config, checker| checker.config(config))?;
    Ok(ValidConfig {
        config,
        source: source.to_owned(),
        spans,
    })
}

/// The SSO's config file (`portcullis sso -c FILE`), loaded with the same
/// conventions: `${ENV}`, unknown keys refused, every problem at once with
/// file:line:column and the key path.
pub fn load_sso(path: &Path) -> Result<SsoConfig, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: path.to_owned(),
        source,
    })?;
    load_sso_from_str(&text, path, &|name| std::env::var(name).ok())
}

pub fn load_sso_from_str(
    text: &str,
    source: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<SsoConfig, LoadError> {
    let (config, _) = load_document(text, source, env, |config, checker| checker.sso(config))?;
    Ok(config)
}

/// The SSO's users file.
pub fn load_users(path: &Path) -> Result<sso::UsersFile, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: path.to_owned(),
        source,
    })?;
    let env = |name: &str| std::env::var(name).ok();
    let (users, _) = load_document(&text, path, &env, |file, checker| checker.users(file))?;
    Ok(users)
}

/// Users of the users file at `path` whose names the directory also has:
/// one problem at each `users[i].username` (a name in both is a config
/// error, with a location).
pub fn users_also_in_directory(path: &Path, names: &[String]) -> LoadError {
    let located = names_with_spans(
        path,
        |file: &sso::UsersFile, checker| checker.users(file),
        |file| file.users.iter().map(|u| u.username.clone()).collect(),
    );
    located_conflicts(
        path,
        "users",
        "username",
        located,
        names,
        "is also a user in the directory (created at run time): remove it from one",
    )
}

/// Clients of the SSO config at `path` whose ids the directory also has
/// (registered at run time): one problem at each `clients[i].client_id`.
pub fn clients_also_in_directory(path: &Path, ids: &[String]) -> LoadError {
    let located = names_with_spans(
        path,
        |config: &SsoConfig, checker| checker.sso(config),
        |config| config.clients.iter().map(|c| c.client_id.clone()).collect(),
    );
    located_conflicts(
        path,
        "clients",
        "client_id",
        located,
        ids,
        "is also a client in the directory (registered at run time): remove it from one",
    )
}

/// The file at `path` read again (an error path only), the names of one
/// of its lists in order, and its positions.
fn names_with_spans<T: serde::de::DeserializeOwned>(
    path: &Path,
    check: impl FnOnce(&T, &mut validate::Checker<'_>),
    names: impl FnOnce(&T) -> Vec<String>,
) -> Option<(Vec<String>, SpanIndex)> {
    let env = |name: &str| std::env::var(name).ok();
    let text = std::fs::read_to_string(path).ok()?;
    let (document, spans) = load_document(&text, path, &env, check).ok()?;
    Some((names(&document), spans))
}

fn located_conflicts(
    path: &Path,
    list: &str,
    field: &str,
    located: Option<(Vec<String>, SpanIndex)>,
    names: &[String],
    message: &str,
) -> LoadError {
    let mut errors = ConfigErrors::new(path.display().to_string());
    let (in_file, spans) = located.unwrap_or_default();
    for name in names {
        let index = in_file.iter().position(|n| n == name);
        let key = match index {
            Some(i) => KeyPath::default()
                .child_key(list)
                .child_index(i)
                .child_key(field),
            None => KeyPath::default().child_key(list),
        };
        let span = spans.find(&key);
        errors.push(span, key, format!("`{name}` {message}"));
    }
    LoadError::Invalid(errors)
}

/// Parse, interpolate, deserialize collecting every problem, then `check`.
fn load_document<T: serde::de::DeserializeOwned>(
    text: &str,
    source: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    check: impl FnOnce(&T, &mut validate::Checker<'_>),
) -> Result<(T, SpanIndex), LoadError> {
    let file = source.display().to_string();
    let mut errors = ConfigErrors::new(file.clone());

    let mut root = yaml::parse(text).map_err(|e| {
        let mut errors = ConfigErrors::new(file.clone());
        errors.push(Some(e.span), KeyPath::default(), e.message);
        LoadError::Invalid(errors)
    })?;

    let mut env_errors = Vec::new();
    root.interpolate_env(env, &mut env_errors);
    let mut spans = SpanIndex::default();
    root.index_spans(&KeyPath::default(), &mut spans.values, &mut spans.keys);
    for (span, message) in env_errors {
        errors.push(Some(span), KeyPath::default(), message);
    }

    let (config, root, removed) = deserialize_collecting::<T>(root, &spans, &mut errors);
    if let Some(config) = &config {
        let mut checker = validate::Checker::new(&spans, &root, &mut errors, &removed, source);
        check(config, &mut checker);
    }
    match config {
        Some(config) if errors.is_empty() => Ok((config, spans)),
        _ => Err(LoadError::Invalid(errors)),
    }
}

const MAX_PROBLEMS: usize = 100;

/// Deserializes the tree; on each error, records it and drops the offending
/// node, then tries again, so that one run reports every independent mistake.
/// Returns the config deserialized without the broken parts (for the
/// cross-reference checks), the tree it came from and the dropped paths.
fn deserialize_collecting<T: serde::de::DeserializeOwned>(
    mut root: yaml::Node,
    spans: &SpanIndex,
    errors: &mut ConfigErrors,
) -> (Option<T>, yaml::Node, Vec<KeyPath>) {
    let mut removed: Vec<KeyPath> = Vec::new();
    for _ in 0..MAX_PROBLEMS {
        let json = root.to_json();
        let error = match serde_path_to_error::deserialize::<_, T>(&json) {
            Ok(config) => return (Some(config), root, removed),
            Err(error) => error,
        };
        let current: Vec<PathSegment> = error
            .path()
            .iter()
            .filter_map(|segment| match segment {
                serde_path_to_error::Segment::Seq { index } => Some(PathSegment::Index(*index)),
                serde_path_to_error::Segment::Map { key } => Some(PathSegment::Key(key.clone())),
                serde_path_to_error::Segment::Enum { .. }
                | serde_path_to_error::Segment::Unknown => None,
            })
            .collect();
        let Some(mut at) = root.original_path(&current) else {
            errors.push(None, KeyPath::default(), error.inner().to_string());
            return (None, root, removed);
        };
        let message = error.inner().to_string();
        let message = strip_serde_position(&message);

        if let Some(field) = quoted_after(message, "unknown field `") {
            // serde reports an unknown key at its parent; point at the key.
            if !matches!(at.0.last(), Some(PathSegment::Key(k)) if k == field) {
                at = at.child_key(field);
            }
            let expected = message.split_once(", expected ").map(|(_, e)| e);
            let text = match expected {
                Some(expected) => format!("unknown key `{field}` (expected {expected})"),
                None => format!("unknown key `{field}`"),
            };
            errors.push(spans.find_key(&at), at.clone(), text);
        } else if let Some(field) = quoted_after(message, "missing field `") {
            let child = at.child_key(field);
            // A required key we dropped ourselves was already reported.
            if !removed.iter().any(|r| child.starts_with(r)) {
                errors.push(
                    spans.find(&at),
                    child,
                    format!("missing required key `{field}`"),
                );
            }
        } else {
            errors.push(spans.find(&at), at.clone(), message.to_owned());
        }

        if at.0.is_empty() || !root.remove(&at) {
            return (None, root, removed);
        }
        removed.push(at);
    }
    (None, root, removed)
}

/// serde_json appends " at line L column C" of the *JSON*; ours is better.
fn strip_serde_position(message: &str) -> &str {
    match message.rfind(" at line ") {
        Some(i) => &message[..i],
        None => message,
    }
}

fn quoted_after<'a>(message: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = message.strip_prefix(prefix)?;
    rest.split('`').next()
}

/// The JSON Schema of the file, for editors (`portcullis schema`).
pub fn json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(FileConfig)).unwrap_or_default()
}

/// The JSON Schema of the SSO's file (`portcullis sso schema`).
pub fn sso_json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(SsoConfig)).unwrap_or_default()
}

#[cfg(test)]
mod tests;
