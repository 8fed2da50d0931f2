//! Swagger 2.0 → OpenAPI 3.0: body and formData parameters become request
//! bodies, produces/consumes become content types, definitions and
//! securityDefinitions become components, host/basePath become servers,
//! and every `$ref` follows.

use serde_json::{json, Map, Value};

const METHODS: [&str; 7] = ["get", "put", "post", "delete", "options", "head", "patch"];
/// Parameter keywords that move into `schema` in OpenAPI 3.
const SCHEMA_KEYWORDS: [&str; 16] = [
    "type",
    "format",
    "items",
    "collectionFormat",
    "default",
    "maximum",
    "exclusiveMaximum",
    "minimum",
    "exclusiveMinimum",
    "maxLength",
    "minLength",
    "pattern",
    "maxItems",
    "minItems",
    "uniqueItems",
    "enum",
];

/// Converts a Swagger 2.0 document.
pub fn convert(doc: &Value) -> Value {
    let global_consumes = media_types(doc.get("consumes"));
    let global_produces = media_types(doc.get("produces"));
    let body_params: Vec<String> = doc
        .get("parameters")
        .and_then(Value::as_object)
        .map(|params| {
            params
                .iter()
                .filter(|(_, p)| p.get("in").and_then(Value::as_str) == Some("body"))
                .map(|(name, _)| name.clone())
                .collect()
        })
        .unwrap_or_default();
    let refs = |v: &Value| rewrite_refs(v, &body_params);

    let mut out = Map::new();
    out.insert("openapi".into(), "3.0.3".into());
    out.insert(
        "info".into(),
        doc.get("info")
            .cloned()
            .unwrap_or_else(|| json!({"title": "", "version": ""})),
    );
    let base_path = doc.get("basePath").and_then(Value::as_str).unwrap_or("");
    let servers: Vec<Value> = match doc.get("host").and_then(Value::as_str) {
        Some(host) => {
            let schemes: Vec<&str> = doc
                .get("schemes")
                .and_then(Value::as_array)
                .map(|s| s.iter().filter_map(Value::as_str).collect())
                .unwrap_or_else(|| vec!["https"]);
            schemes
                .iter()
                .map(|scheme| json!({ "url": format!("{scheme}://{host}{base_path}") }))
                .collect()
        }
        None if !base_path.is_empty() => vec![json!({ "url": base_path })],
        None => Vec::new(),
    };
    if !servers.is_empty() {
        out.insert("servers".into(), servers.into());
    }
    for key in ["tags", "security", "externalDocs"] {
        if let Some(value) = doc.get(key) {
            out.insert(key.into(), value.clone());
        }
    }

    let mut paths = Map::new();
    for (path, item) in doc
        .get("paths")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let Some(item) = item.as_object() else {
            continue;
        };
        let mut new_item = Map::new();
        let path_params = item
            .get("parameters")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for (key, value) in item {
            if METHODS.contains(&key.as_str()) {
                new_item.insert(
                    key.clone(),
                    operation(
                        value,
                        &path_params,
                        &global_consumes,
                        &global_produces,
                        &body_params,
                    ),
                );
            } else if key != "parameters" {
                new_item.insert(key.clone(), refs(value));
            }
        }
        // Path-level parameters other than body/formData stay on the path.
        let kept: Vec<Value> = path_params
            .iter()
            .filter(|p| !matches!(param_location(p, doc), "body" | "formData"))
            .map(|p| parameter(p, &body_params))
            .collect();
        if !kept.is_empty() {
            new_item.insert("parameters".into(), kept.into());
        }
        paths.insert(path.clone(), Value::Object(new_item));
    }
    out.insert("paths".into(), Value::Object(paths));

    let mut components = Map::new();
    if let Some(definitions) = doc.get("definitions") {
        components.insert("schemas".into(), schema(&refs(definitions)));
    }
    if let Some(params) = doc.get("parameters").and_then(Value::as_object) {
        let mut parameters = Map::new();
        let mut bodies = Map::new();
        for (name, p) in params {
            if body_params.contains(name) {
                bodies.insert(
                    name.clone(),
                    request_body(std::slice::from_ref(p), &global_consumes, &body_params),
                );
            } else {
                parameters.insert(name.clone(), parameter(p, &body_params));
            }
        }
        if !parameters.is_empty() {
            components.insert("parameters".into(), parameters.into());
        }
        if !bodies.is_empty() {
            components.insert("requestBodies".into(), bodies.into());
        }
    }
    if let Some(responses) = doc.get("responses").and_then(Value::as_object) {
        let converted: Map<String, Value> = responses
            .iter()
            .map(|(name, r)| (name.clone(), response(r, &global_produces, &body_params)))
            .collect();
        components.insert("responses".into(), converted.into());
    }
    if let Some(schemes) = doc.get("securityDefinitions").and_then(Value::as_object) {
        let converted: Map<String, Value> = schemes
            .iter()
            .map(|(name, s)| (name.clone(), security_scheme(s)))
            .collect();
        components.insert("securitySchemes".into(), converted.into());
    }
    if !components.is_empty() {
        out.insert("components".into(), components.into());
    }
    Value::Object(out)
}

fn media_types(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_array)
        .map(|v| {
            v.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .filter(|v: &Vec<String>| !v.is_empty())
        .unwrap_or_else(|| vec!["application/json".to_owned()])
}

/// `in` of a parameter, following a `#/parameters/` reference.
fn param_location<'a>(param: &'a Value, doc: &'a Value) -> &'a str {
    if let Some(name) = param
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/parameters/"))
    {
        return doc
            .pointer(&format!("/parameters/{name}/in"))
            .and_then(Value::as_str)
            .unwrap_or("");
    }
    param.get("in").and_then(Value::as_str).unwrap_or("")
}

fn operation(
    op: &Value,
    path_params: &[Value],
    consumes: &[String],
    produces: &[String],
    body_params: &[String],
) -> Value {
    let Some(op) = op.as_object() else {
        return op.clone();
    };
    let consumes = op
        .get("consumes")
        .map(|c| media_types(Some(c)))
        .unwrap_or_else(|| consumes.to_vec());
    let produces = op
        .get("produces")
        .map(|p| media_types(Some(p)))
        .unwrap_or_else(|| produces.to_vec());
    let mut out = Map::new();
    let all_params: Vec<Value> = path_params
        .iter()
        .chain(
            op.get("parameters")
                .and_then(Value::as_array)
                .into_iter()
                .flatten(),
        )
        .cloned()
        .collect();
    let is_body_ref = |p: &Value| {
        p.get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix("#/parameters/"))
            .is_some_and(|name| body_params.iter().any(|b| b == name))
    };
    let is_body = |p: &Value| {
        matches!(
            p.get("in").and_then(Value::as_str),
            Some("body" | "formData")
        ) || is_body_ref(p)
    };
    // Body and form parameters (also path-level ones) become the request
    // body; the operation's other parameters stay, path-level ones stay on
    // the path item.
    let body: Vec<Value> = all_params.into_iter().filter(|p| is_body(p)).collect();
    let rest: Vec<Value> = op
        .get("parameters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|p| !is_body(p))
        .cloned()
        .collect();
    for (key, value) in op {
        match key.as_str() {
            "consumes" | "produces" | "parameters" | "schemes" => {}
            "responses" => {
                let responses: Map<String, Value> = value
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(code, r)| (code.clone(), response(r, &produces, body_params)))
                    .collect();
                out.insert(key.clone(), responses.into());
            }
            _ => {
                out.insert(key.clone(), rewrite_refs(value, body_params));
            }
        }
    }
    let params: Vec<Value> = rest.iter().map(|p| parameter(p, body_params)).collect();
    if !params.is_empty() {
        out.insert("parameters".into(), params.into());
    }
    if !body.is_empty() {
        out.insert(
            "requestBody".into(),
            request_body(&body, &consumes, body_params),
        );
    }
    Value::Object(out)
}

fn parameter(p: &Value, body_params: &[String]) -> Value {
    let Some(map) = p.as_object() else {
        return p.clone();
    };
    if map.contains_key("$ref") {
        return rewrite_refs(p, body_params);
    }
    let mut out = Map::new();
    let mut schema_part = Map::new();
    for (key, value) in map {
        if SCHEMA_KEYWORDS.contains(&key.as_str()) {
            if key != "collectionFormat" {
                schema_part.insert(key.clone(), value.clone());
            }
        } else if key != "allowEmptyValue" || map.get("in").and_then(Value::as_str) == Some("query")
        {
            out.insert(key.clone(), value.clone());
        }
    }
    if map.get("collectionFormat").and_then(Value::as_str) == Some("multi") {
        out.insert("explode".into(), true.into());
    } else if map.get("type").and_then(Value::as_str) == Some("array") {
        out.insert("explode".into(), false.into());
    }
    out.insert("schema".into(), schema(&Value::Object(schema_part)));
    Value::Object(out)
}

fn request_body(params: &[Value], consumes: &[String], body_params: &[String]) -> Value {
    // A reference to a body parameter is a reference to a request body.
    if let [single] = params {
        if let Some(reference) = single.get("$ref").and_then(Value::as_str) {
            return json!({ "$ref": rewrite_ref(reference, body_params) });
        }
    }
    if let Some(body) = params
        .iter()
        .find(|p| p.get("in").and_then(Value::as_str) == Some("body"))
    {
        let schema = schema(&rewrite_refs(
            body.get("schema").unwrap_or(&json!({})),
            body_params,
        ));
        let content: Map<String, Value> = consumes
            .iter()
            .map(|media| (media.clone(), json!({ "schema": schema })))
            .collect();
        let mut out = json!({ "content": content, "required": body.get("required").cloned().unwrap_or(false.into()) });
        if let Some(description) = body.get("description") {
            out["description"] = description.clone();
        }
        return out;
    }
    // formData: one object schema; multipart when a file is uploaded.
    let mut properties = Map::new();
    let mut required = Vec::new();
    let mut has_file = false;
    for p in params {
        let Some(name) = p.get("name").and_then(Value::as_str) else {
            continue;
        };
        let converted = parameter(p, body_params);
        let mut property = converted.get("schema").cloned().unwrap_or(json!({}));
        if p.get("type").and_then(Value::as_str) == Some("file") {
            has_file = true;
            property = json!({ "type": "string", "format": "binary" });
        }
        if let Some(description) = p.get("description") {
            property["description"] = description.clone();
        }
        properties.insert(name.to_owned(), property);
        if p.get("required") == Some(&Value::Bool(true)) {
            required.push(Value::from(name));
        }
    }
    let media = if has_file || consumes.iter().any(|c| c == "multipart/form-data") {
        "multipart/form-data"
    } else {
        "application/x-www-form-urlencoded"
    };
    let mut object = json!({ "type": "object", "properties": properties });
    if !required.is_empty() {
        object["required"] = required.into();
    }
    json!({ "content": { media: { "schema": object } } })
}

fn response(r: &Value, produces: &[String], body_params: &[String]) -> Value {
    let Some(map) = r.as_object() else {
        return r.clone();
    };
    if map.contains_key("$ref") {
        return rewrite_refs(r, body_params);
    }
    let mut out = Map::new();
    out.insert(
        "description".into(),
        map.get("description").cloned().unwrap_or_else(|| "".into()),
    );
    if let Some(schema_value) = map.get("schema") {
        let converted = schema(&rewrite_refs(schema_value, body_params));
        let content: Map<String, Value> = produces
            .iter()
            .map(|media| {
                let mut entry = json!({ "schema": converted });
                if let Some(example) = map.get("examples").and_then(|e| e.get(media)) {
                    entry["example"] = example.clone();
                }
                (media.clone(), entry)
            })
            .collect();
        out.insert("content".into(), content.into());
    }
    if let Some(headers) = map.get("headers").and_then(Value::as_object) {
        let converted: Map<String, Value> = headers
            .iter()
            .map(|(name, h)| {
                let mut header = Map::new();
                if let Some(description) = h.get("description") {
                    header.insert("description".into(), description.clone());
                }
                let schema_part: Map<String, Value> = h
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(k, _)| {
                        SCHEMA_KEYWORDS.contains(&k.as_str()) && *k != "collectionFormat"
                    })
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                header.insert("schema".into(), Value::Object(schema_part));
                (name.clone(), Value::Object(header))
            })
            .collect();
        out.insert("headers".into(), converted.into());
    }
    Value::Object(out)
}

fn security_scheme(s: &Value) -> Value {
    match s.get("type").and_then(Value::as_str) {
        Some("basic") => json!({ "type": "http", "scheme": "basic" }),
        Some("oauth2") => {
            let scopes = s.get("scopes").cloned().unwrap_or(json!({}));
            let auth = s.get("authorizationUrl").cloned().unwrap_or("".into());
            let token = s.get("tokenUrl").cloned().unwrap_or("".into());
            let flows = match s.get("flow").and_then(Value::as_str) {
                Some("implicit") => {
                    json!({ "implicit": { "authorizationUrl": auth, "scopes": scopes } })
                }
                Some("password") => json!({ "password": { "tokenUrl": token, "scopes": scopes } }),
                Some("application") => {
                    json!({ "clientCredentials": { "tokenUrl": token, "scopes": scopes } })
                }
                _ => {
                    json!({ "authorizationCode": { "authorizationUrl": auth, "tokenUrl": token, "scopes": scopes } })
                }
            };
            let mut out = json!({ "type": "oauth2", "flows": flows });
            if let Some(description) = s.get("description") {
                out["description"] = description.clone();
            }
            out
        }
        _ => s.clone(),
    }
}

/// Schema keywords Swagger 2 spelled differently.
fn schema(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut out = Map::new();
            for (key, v) in map {
                match key.as_str() {
                    "x-nullable" => {
                        out.insert("nullable".into(), v.clone());
                    }
                    "type" if v.as_str() == Some("file") => {
                        out.insert("type".into(), "string".into());
                        out.insert("format".into(), "binary".into());
                    }
                    "discriminator" if v.is_string() => {
                        out.insert("discriminator".into(), json!({ "propertyName": v }));
                    }
                    _ => {
                        out.insert(key.clone(), schema(v));
                    }
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(schema).collect()),
        other => other.clone(),
    }
}

fn rewrite_refs(value: &Value, body_params: &[String]) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => {
                        (k.clone(), Value::String(rewrite_ref(r, body_params)))
                    }
                    _ => (k.clone(), rewrite_refs(v, body_params)),
                })
                .collect(),
        ),
        Value::Array(items) => {
            Value::Array(items.iter().map(|v| rewrite_refs(v, body_params)).collect())
        }
        other => other.clone(),
    }
}

fn rewrite_ref(reference: &str, body_params: &[String]) -> String {
    if let Some(name) = reference.strip_prefix("#/definitions/") {
        return format!("#/components/schemas/{name}");
    }
    if let Some(name) = reference.strip_prefix("#/parameters/") {
        return if body_params.iter().any(|b| b == name) {
            format!("#/components/requestBodies/{name}")
        } else {
            format!("#/components/parameters/{name}")
        };
    }
    if let Some(name) = reference.strip_prefix("#/responses/") {
        return format!("#/components/responses/{name}");
    }
    reference.to_owned()
}
