//! `$ref`s into other files (`common.yaml#/components/schemas/Error`,
//! `./models/pet.json`) brought into the document's own `components`, so the
//! merge sees one self-contained document per service.
//!
//! Each referenced part is imported once, under the kind and name its
//! pointer gives (`#/components/<kind>/<name>`, Swagger 2's
//! `#/definitions/<name>` as a schema, else a schema named after the last
//! pointer segment or the file); a name already taken by something else gets
//! a numeric suffix. Refs inside imported parts are followed the same way,
//! relative to the file they came from.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::{escape_pointer, MergeError};

/// Reads a document by its location (a file path or an http(s) URL).
pub type Loader<'a> = dyn FnMut(&str) -> Result<String, String> + 'a;

/// Most documents one bundle may load: a bound against ref cycles across
/// generated file names and runaway inputs.
const MAX_DOCUMENTS: usize = 256;

/// An imported part waiting for its own refs to be rewritten: the document
/// it came from, where it goes, and the part.
struct Pending {
    from: String,
    kind: String,
    name: String,
    value: Value,
}

/// Resolves every external `$ref` of `doc`, which was read from `location`.
///
/// A ref that cannot be resolved (a file that is missing or unreadable, a
/// pointer to nothing) is left as it is and named in the returned warnings:
/// published specs often point at example files that are not published
/// with them, and one missing example must not make the service's document
/// unusable.
pub fn bundle_external_refs(
    input: &str,
    doc: &mut Value,
    location: &str,
    load: &mut Loader<'_>,
) -> Result<Vec<String>, MergeError> {
    let mut external = Vec::new();
    collect_external(doc, location, &mut external);
    if external.is_empty() {
        return Ok(Vec::new());
    }
    let mut bundler = Bundler {
        input,
        load,
        documents: BTreeMap::new(),
        imported: BTreeMap::new(),
        failed: BTreeMap::new(),
        warnings: Vec::new(),
    };
    let mut components = doc
        .get_mut("components")
        .map(Value::take)
        .filter(Value::is_object)
        .unwrap_or_else(|| Value::Object(Default::default()));
    let mut pending: Vec<Pending> = Vec::new();
    rewrite_refs(doc, location, false, &mut |absolute| {
        bundler.import(absolute, &mut components, &mut pending)
    })?;
    while let Some(mut part) = pending.pop() {
        // Inside another document, `#/...` means that document.
        rewrite_refs(&mut part.value, &part.from, true, &mut |absolute| {
            bundler.import(absolute, &mut components, &mut pending)
        })?;
        if let Some(slot) = components
            .get_mut(&part.kind)
            .and_then(|k| k.get_mut(&part.name))
        {
            *slot = part.value;
        }
    }
    if let Some(root) = doc.as_object_mut() {
        root.insert("components".into(), components);
    }
    Ok(bundler.warnings)
}

struct Bundler<'l, 'a> {
    input: &'a str,
    load: &'l mut Loader<'a>,
    documents: BTreeMap<String, Value>,
    /// `file#pointer` → (kind, name) in the bundled document.
    imported: BTreeMap<String, (String, String)>,
    /// Documents that could not be read or parsed, and why.
    failed: BTreeMap<String, String>,
    warnings: Vec<String>,
}

impl Bundler<'_, '_> {
    /// The local ref for an absolute external ref, importing it when new.
    fn import(
        &mut self,
        absolute: &str,
        components: &mut Value,
        pending: &mut Vec<Pending>,
    ) -> Result<Option<String>, MergeError> {
        if let Some((kind, name)) = self.imported.get(absolute) {
            return Ok(Some(format!(
                "#/components/{kind}/{}",
                escape_pointer(name)
            )));
        }
        let (file, pointer) = absolute.split_once('#').unwrap_or((absolute, ""));
        let invalid = |message: String| MergeError::Invalid {
            input: self.input.to_owned(),
            pointer: format!("$ref {absolute}"),
            message,
        };
        if !self.documents.contains_key(file) && !self.failed.contains_key(file) {
            if self.documents.len() >= MAX_DOCUMENTS {
                return Err(invalid(format!(
                    "more than {MAX_DOCUMENTS} referenced documents"
                )));
            }
            let loaded = (self.load)(file)
                .map_err(|e| format!("cannot read: {e}"))
                .and_then(|text| crate::parse(file, &text).map_err(|e| e.to_string()));
            match loaded {
                Ok(parsed) => {
                    self.documents.insert(file.to_owned(), parsed);
                }
                Err(e) => {
                    self.failed.insert(file.to_owned(), e);
                }
            }
        }
        let found = match (self.documents.get(file), self.failed.get(file)) {
            (Some(document), _) => document
                .pointer(pointer)
                .cloned()
                .ok_or_else(|| "nothing at this pointer".to_owned()),
            (None, Some(why)) => Err(why.clone()),
            (None, None) => Err("not loaded".to_owned()),
        };
        let value = match found {
            Ok(value) => value,
            Err(why) => {
                self.warnings.push(format!(
                    "{}: $ref {absolute}: {why}; left unresolved",
                    self.input
                ));
                return Ok(None);
            }
        };

        let segments: Vec<String> = pointer
            .split('/')
            .skip(1)
            .map(|s| s.replace("~1", "/").replace("~0", "~"))
            .collect();
        let (kind, wanted) = match segments.as_slice() {
            [c, kind, name] if c == "components" => (kind.clone(), name.clone()),
            [d, name] if d == "definitions" => ("schemas".to_owned(), name.clone()),
            [.., last] => ("schemas".to_owned(), last.clone()),
            [] => ("schemas".to_owned(), file_stem(file)),
        };
        let entries = components
            .as_object_mut()
            .map(|c| {
                c.entry(kind.clone())
                    .or_insert_with(|| Value::Object(Default::default()))
            })
            .and_then(Value::as_object_mut)
            .ok_or_else(|| invalid(format!("`components.{kind}` is not an object")))?;
        let base = sanitize(&wanted);
        let mut name = base.clone();
        let mut n = 2;
        while entries.contains_key(&name) {
            name = format!("{base}_{n}");
            n += 1;
        }
        // Taken now, filled when its own refs are rewritten; recorded first
        // so that a cycle back to it finds its local name.
        entries.insert(name.clone(), Value::Null);
        self.imported
            .insert(absolute.to_owned(), (kind.clone(), name.clone()));
        pending.push(Pending {
            from: file.to_owned(),
            kind: kind.clone(),
            name: name.clone(),
            value,
        });
        Ok(Some(format!(
            "#/components/{kind}/{}",
            escape_pointer(&name)
        )))
    }
}

fn file_stem(location: &str) -> String {
    let last = location.rsplit('/').next().unwrap_or(location);
    last.split('.').next().unwrap_or(last).to_owned()
}

/// Component names must match `^[a-zA-Z0-9._-]+$`.
fn sanitize(name: &str) -> String {
    let out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() {
        "Imported".into()
    } else {
        out
    }
}

/// Every external ref below `value`, made absolute against `base`.
fn collect_external(value: &Value, base: &str, out: &mut Vec<String>) {
    crate::collect_refs(value, &mut |r| {
        if !r.starts_with('#') {
            out.push(absolute_ref(base, r));
        }
    });
}

/// Rewrites the refs below `value` (read from `base`) through `import`:
/// external ones, and local ones too when `base` is not the main document.
fn rewrite_refs(
    value: &mut Value,
    base: &str,
    local_is_external: bool,
    import: &mut dyn FnMut(&str) -> Result<Option<String>, MergeError>,
) -> Result<(), MergeError> {
    match value {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                match (key.as_str(), child) {
                    ("$ref", Value::String(reference)) => {
                        if local_is_external || !reference.starts_with('#') {
                            if let Some(local) = import(&absolute_ref(base, reference))? {
                                *reference = local;
                            }
                        }
                    }
                    (_, child) => rewrite_refs(child, base, local_is_external, import)?,
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                rewrite_refs(item, base, local_is_external, import)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// `other.yaml#/x` read from `dir/main.yaml` → `dir/other.yaml#/x`.
pub(crate) fn absolute_ref(base: &str, reference: &str) -> String {
    let (file, pointer) = reference.split_once('#').unwrap_or((reference, ""));
    let file = if file.is_empty() {
        base.to_owned()
    } else {
        join(base, file)
    };
    if pointer.is_empty() {
        file
    } else {
        format!("{file}#{pointer}")
    }
}

/// Resolves a relative location against the location of the document it
/// appears in (file path or URL), normalising `.` and `..`.
fn join(base: &str, relative: &str) -> String {
    if relative.contains("://") || relative.starts_with('/') && !base.contains("://") {
        return relative.to_owned();
    }
    let (origin, base_path) = match base.find("://") {
        Some(i) => {
            let after = &base[i + 3..];
            let slash = after.find('/').map_or(base.len(), |j| i + 3 + j);
            (&base[..slash], &base[slash..])
        }
        None => ("", base),
    };
    if relative.starts_with('/') {
        return format!("{origin}{relative}");
    }
    let dir = match base_path.rfind('/') {
        Some(i) => &base_path[..=i],
        None => "",
    };
    let mut parts: Vec<&str> = Vec::new();
    let absolute = dir.starts_with('/');
    for part in dir.split('/').chain(relative.split('/')) {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !absolute {
                    parts.push("..");
                }
            }
            part => parts.push(part),
        }
    }
    let joined = parts.join("/");
    if absolute {
        format!("{origin}/{joined}")
    } else {
        joined
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_join_like_a_browser() {
        assert_eq!(join("specs/main.yaml", "common.yaml"), "specs/common.yaml");
        assert_eq!(join("specs/main.yaml", "../shared/c.yaml"), "shared/c.yaml");
        assert_eq!(
            join("/srv/specs/main.yaml", "./m/pet.json"),
            "/srv/specs/m/pet.json"
        );
        assert_eq!(
            join("http://h:1/api/v1/doc.json", "../common.json"),
            "http://h:1/api/common.json"
        );
        assert_eq!(
            join("http://h:1/api/doc.json", "/x.json"),
            "http://h:1/x.json"
        );
        assert_eq!(
            join("main.yaml", "https://e.com/a.json"),
            "https://e.com/a.json"
        );
        assert_eq!(absolute_ref("d/main.yaml", "#/x"), "d/main.yaml#/x");
    }
}
