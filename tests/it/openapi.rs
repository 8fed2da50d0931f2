//! `portcullis openapi merge` on the real published specs in
//! ../shared/openapi-samples, checked by a third-party validator.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::support::{assert_valid_openapi, BIN};

fn samples() -> PathBuf {
    let dir = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/openapi-samples"
    ));
    assert!(
        dir.exists(),
        "the shared OpenAPI samples are missing at {}",
        dir.display()
    );
    dir
}

const SWAGGER2: (&str, &str, &str) = ("legacy", "/legacy", "petstore-expanded.swagger2.0.json");

const OAS3: [(&str, &str, &str); 5] = [
    ("pets", "/pets", "petstore.oas3.0.yaml"),
    ("sec", "/sec", "security-schemes.oas3.0.json"),
    ("azure", "/azure", "azure-openai-2024-10-21.oas3.0.json"),
    ("figma", "/figma", "figma.oas3.1.yaml"),
    ("openai", "/openai", "openai.oas3.1.yaml"),
];

fn merge(inputs: &[(&str, &str, &str)], extra: &[&str]) -> Vec<u8> {
    let dir = samples();
    let specs: Vec<String> = inputs
        .iter()
        .map(|(name, prefix, file)| format!("{name}={prefix}={}", dir.join(file).display()))
        .collect();
    let output = Command::new(BIN)
        .args(["openapi", "merge", "--server", "https://api.example.com"])
        .args(extra)
        .args(&specs)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in METHODS {
            if let Some(op) = item.get(method) {
                out.push((path.clone(), method.to_owned(), op.clone()));
            }
        }
    }
    out
}

#[test]
fn real_specs_merge_with_every_operation_once_and_refs_resolving() {
    let first = merge(&OAS3, &[]);
    let second = merge(&OAS3, &[]);
    assert!(first == second, "two runs differ");
    let merged: Value = serde_json::from_slice(&first).unwrap();
    assert_eq!(merged["openapi"], "3.1.0");
    assert_eq!(merged["servers"][0]["url"], "https://api.example.com");

    let merged_ops = operations(&merged);
    let mut by_service: BTreeMap<String, usize> = BTreeMap::new();
    for (_, _, op) in &merged_ops {
        *by_service
            .entry(op["x-portcullis-service"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let dir = samples();
    for (name, prefix, file) in OAS3 {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        let input = portcullis_openapi_merge::parse(file, &text).unwrap();
        let base = input
            .pointer("/servers/0/url")
            .and_then(Value::as_str)
            .map(|url| match url.split_once("://") {
                Some((_, rest)) => rest
                    .find('/')
                    .map_or("", |i| &rest[i..])
                    .trim_end_matches('/')
                    .to_owned(),
                None => url.trim_end_matches('/').to_owned(),
            })
            .unwrap_or_default();
        let input_ops = operations(&input);
        assert_eq!(
            by_service.get(name).copied().unwrap_or(0),
            input_ops.len(),
            "{name}"
        );
        for (path, method, _) in input_ops {
            let public = format!("{prefix}{base}{path}");
            let op = &merged["paths"][&public][&method];
            assert_eq!(op["x-portcullis-service"], name, "{method} {public}");
        }
    }
    let ids: Vec<&str> = merged_ops
        .iter()
        .filter_map(|(_, _, op)| op["operationId"].as_str())
        .collect();
    let unique: std::collections::BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(ids.len(), unique.len(), "operationIds are not unique");
    let dangling = portcullis_openapi_merge::dangling_refs(&merged);
    assert!(
        dangling.is_empty(),
        "dangling refs: {:?}",
        &dangling[..dangling.len().min(5)]
    );

    // The YAML output is the same document.
    let yaml = merge(&OAS3[..2], &["--format", "yaml"]);
    let json = merge(&OAS3[..2], &[]);
    let from_yaml =
        portcullis_openapi_merge::parse("out.yaml", std::str::from_utf8(&yaml).unwrap()).unwrap();
    assert_eq!(from_yaml, serde_json::from_slice::<Value>(&json).unwrap());
}

#[test]
fn merged_output_passes_openapi_spec_validator() {
    // The inputs that are valid themselves (azure's and openai's published
    // specs fail the same validator on their own: a required property that
    // is not defined; duplicate `required` entries).
    let valid = [OAS3[0], OAS3[1], OAS3[3]];
    for version in ["3.1", "3.0"] {
        let inputs: &[(&str, &str, &str)] = if version == "3.0" {
            &valid[..2]
        } else {
            &valid
        };
        let merged = merge(inputs, &["--openapi", version]);
        assert_valid_openapi(&merged, version);
    }
}

#[test]
fn swagger_2_sample_converted_with_every_operation() {
    let merged: Value = serde_json::from_slice(&merge(&[SWAGGER2, OAS3[0]], &[])).unwrap();
    let text = std::fs::read_to_string(samples().join(SWAGGER2.2)).unwrap();
    let input = portcullis_openapi_merge::parse("swagger", &text).unwrap();
    let base = input["basePath"].as_str().unwrap_or("");
    let mut count = 0;
    for (path, item) in input["paths"].as_object().unwrap() {
        for method in METHODS {
            if item.get(method).is_some() {
                count += 1;
                let public = format!("{}{base}{path}", SWAGGER2.1);
                assert_eq!(
                    merged["paths"][&public][method]["x-portcullis-service"], "legacy",
                    "{method} {public}"
                );
            }
        }
    }
    assert!(count >= 4);
    assert!(portcullis_openapi_merge::dangling_refs(&merged).is_empty());
}

#[test]
fn bad_input_names_the_input_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    for (file, text, expected) in [
        ("broken.yaml", "openapi: [\n", "broken: cannot parse: line"),
        (
            "old.json",
            "{\"swagger\": \"1.2\", \"paths\": {}}",
            "broken: /swagger:",
        ),
    ] {
        let path = dir.path().join(file);
        std::fs::write(&path, text).unwrap();
        let output = Command::new(BIN)
            .args(["openapi", "merge"])
            .arg(format!("broken=/b={}", path.display()))
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_from_urls_and_refs_into_other_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("models")).unwrap();
    std::fs::write(
        dir.path().join("common.yaml"),
        "components:\n  schemas:\n    Error:\n      type: object\n      properties:\n        message: { type: string }\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("models/order.json"),
        r##"{"type": "object", "properties": {"id": {"type": "string"}, "error": {"$ref": "../common.yaml#/components/schemas/Error"}}}"##,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("orders.yaml"),
        "openapi: 3.0.3\ninfo: { title: orders, version: '1' }\npaths:\n  /orders:\n    get:\n      responses:\n        '200':\n          description: ok\n          content:\n            application/json:\n              schema: { $ref: 'models/order.json' }\n        default:\n          description: error\n          content:\n            application/json:\n              schema: { $ref: './common.yaml#/components/schemas/Error' }\n",
    )
    .unwrap();
    let users = crate::support::Backend::start("users").await;
    *users.openapi.lock().unwrap() = Some(
        serde_json::json!({"openapi": "3.1.0", "info": {"title": "users", "version": "1"},
            "paths": {"/users": {"get": {"responses": {"200": {"description": "ok"}}}}}})
        .to_string(),
    );
    let orders_spec = format!(
        "orders=/orders-api={}",
        dir.path().join("orders.yaml").display()
    );
    let users_spec = format!("users=/users-api=http://{}/openapi.json", users.addr);
    let output = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["openapi", "merge", &orders_spec, &users_spec])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let merged: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(merged.pointer("/paths/~1users-api~1users/get").is_some());
    assert_eq!(
        merged.pointer(
            "/paths/~1orders-api~1orders/get/responses/200/content/application~1json/schema/$ref"
        ),
        Some(&Value::from("#/components/schemas/order"))
    );
    assert_eq!(
        merged["components"]["schemas"]["order"]["properties"]["error"]["$ref"],
        "#/components/schemas/Error"
    );
    assert!(portcullis_openapi_merge::dangling_refs(&merged).is_empty());
    assert_valid_openapi(&output.stdout, "bundled");

    // A ref to a file that is not there: merged, the ref left as is, and a
    // warning naming the input and the ref.
    std::fs::remove_file(dir.path().join("common.yaml")).unwrap();
    let output = Command::new(BIN)
        .args(["openapi", "merge"])
        .arg(format!(
            "orders=/o={}",
            dir.path().join("orders.yaml").display()
        ))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("warning: orders: $ref") && stderr.contains("common.yaml"),
        "{stderr}"
    );
}
