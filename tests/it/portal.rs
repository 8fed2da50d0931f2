//! The docs portal: the gateway fetches its backends' documents, merges
//! them along the routes, hides what the caller cannot reach, keeps the
//! last good document of a backend that went down, and serves Swagger UI
//! that renders in a real headless Chromium.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::support::{
    assert_valid_openapi, client, eventually, get_json, unix_now, with_plain_listener, Backend,
    Gateway,
};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt");

fn spec(title: &str, paths: Value) -> String {
    json!({
        "openapi": "3.0.3",
        "info": { "title": title, "version": "1" },
        "paths": paths,
        "components": { "schemas": { "Item": { "type": "object",
            "properties": { "id": { "type": "string" } } } } },
    })
    .to_string()
}

fn listed(paths: &[(&str, &str)]) -> Value {
    let mut out = serde_json::Map::new();
    for (path, method) in paths {
        let op = json!({ "operationId": format!("{method}{}", path.replace(['/', '{', '}'], "_")),
            "responses": { "200": { "description": "ok", "content": { "application/json":
                { "schema": { "$ref": "#/components/schemas/Item" } } } } } });
        out.entry(path.to_string())
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .unwrap()
            .insert(method.to_string(), op);
    }
    Value::Object(out)
}

fn token(roles: &[&str]) -> String {
    let pem = std::fs::read(format!("{FIXTURES}/rsa-a.pem")).unwrap();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("portal".into());
    let claims = json!({ "iss": "https://idp.example.com", "aud": "api", "sub": "ada",
        "roles": roles, "exp": unix_now() + 600 });
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_rsa_pem(&pem).unwrap()).unwrap()
}

fn portal_config(pets: &Backend, admin: &Backend, broken: &Backend) -> String {
    with_plain_listener(&format!(
        "identity:
  providers:
    - name: idp
      issuer: 'https://idp.example.com'
      audiences: [api]
      public_keys: [{{ file: '{FIXTURES}/rsa-a.pub.pem', kid: portal }}]
portal:
  enabled: true
  title: Platform API
  servers: ['https://api.example.com']
  refresh_interval: 500ms
  fetch_timeout: 1s
upstreams:
  pets: {{ targets: ['{}'] }}
  admin: {{ targets: ['{}'] }}
  broken: {{ targets: ['{}'] }}
routes:
  - {{ name: pets, match: {{ path_prefix: /pets-api }}, strip_prefix: true, upstream: pets, openapi: /openapi.json }}
  - {{ name: admin, match: {{ path_prefix: /admin }}, strip_prefix: true, upstream: admin, openapi: /openapi.json,
       auth: {{ mode: required, roles_any: [admin] }} }}
  - {{ name: broken, match: {{ path_prefix: /broken }}, strip_prefix: true, upstream: broken, openapi: /openapi.json }}
",
        pets.addr, admin.addr, broken.addr
    ))
}

async fn document(gateway: &Gateway, bearer: Option<&str>) -> Value {
    let mut request = client().get(gateway.url("/openapi.json"));
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

async fn status_of(gateway: &Gateway, service: &str) -> Value {
    let status: Value = get_json(&gateway.url("/docs/status.json")).await;
    status["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == service)
        .cloned()
        .unwrap_or(Value::Null)
}

fn has(doc: &Value, path: &str, method: &str) -> bool {
    doc["paths"].get(path).and_then(|p| p.get(method)).is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_document_follows_backends_and_hides_what_the_caller_cannot_reach() {
    let pets = Backend::start("pets").await;
    let admin = Backend::start("admin").await;
    let broken = Backend::start("broken").await;
    *pets.openapi.lock().unwrap() =
        Some(spec("pets", listed(&[("/pets", "get"), ("/pets", "post")])));
    *admin.openapi.lock().unwrap() = Some(spec(
        "admin",
        listed(&[("/users", "get"), ("/users/{id}", "delete")]),
    ));
    // Not an OpenAPI document: left out and flagged, the others unharmed.
    *broken.openapi.lock().unwrap() = Some(json!({ "openapi": "2.5", "paths": {} }).to_string());
    let gateway = Gateway::start(&portal_config(&pets, &admin, &broken)).await;

    let merged = eventually(Duration::from_secs(10), || async {
        has(
            &document(&gateway, Some(&token(&["admin"]))).await,
            "/admin/users",
            "get",
        )
    })
    .await;
    assert!(merged, "the admin's document never appeared");

    // Anonymous: the public service only, and nothing only admin uses.
    let anonymous = document(&gateway, None).await;
    assert!(has(&anonymous, "/pets-api/pets", "get"));
    assert!(has(&anonymous, "/pets-api/pets", "post"));
    assert!(anonymous["paths"].get("/admin/users").is_none());
    assert!(anonymous["paths"].get("/admin/users/{id}").is_none());
    assert_eq!(anonymous["servers"][0]["url"], "https://api.example.com");
    assert_eq!(anonymous["info"]["title"], "Platform API");
    assert_eq!(
        anonymous["paths"]["/pets-api/pets"]["get"]["x-portcullis-service"],
        "pets"
    );
    // A token without the role, and an invalid token: the same view
    // (the document never answers 401).
    assert_eq!(
        document(&gateway, Some(&token(&["viewer"]))).await,
        anonymous
    );
    assert_eq!(document(&gateway, Some("not-a-token")).await, anonymous);
    // With the role: both services.
    let full = document(&gateway, Some(&token(&["admin"]))).await;
    assert!(has(&full, "/pets-api/pets", "get"));
    assert!(has(&full, "/admin/users/{id}", "delete"));
    let groups: Vec<&str> = full["x-tagGroups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert_eq!(groups, ["pets", "admin"]);
    assert!(portcullis_openapi_merge::dangling_refs(&full).is_empty());
    assert_eq!(status_of(&gateway, "broken").await["state"], "excluded");
    assert_eq!(status_of(&gateway, "pets").await["state"], "ok");

    // YAML twin, ETag and 304.
    let yaml = client()
        .get(gateway.url("/openapi.yaml"))
        .send()
        .await
        .unwrap();
    assert_eq!(yaml.headers()["content-type"], "application/yaml");
    let yaml = yaml.text().await.unwrap();
    assert_eq!(
        portcullis_openapi_merge::parse("served.yaml", &yaml).unwrap(),
        anonymous
    );
    let first = client()
        .get(gateway.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    let etag = first.headers()["etag"].clone();
    let again = client()
        .get(gateway.url("/openapi.json"))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);

    // The gateway re-fetches with If-None-Match: unchanged documents are 304s.
    let revalidated = eventually(Duration::from_secs(5), || async {
        pets.openapi_not_modified.load(Ordering::SeqCst) >= 2
    })
    .await;
    assert!(
        revalidated,
        "fetches {}, not modified {}",
        pets.openapi_fetches.load(Ordering::SeqCst),
        pets.openapi_not_modified.load(Ordering::SeqCst)
    );

    // A backend's document changes: the merged document follows.
    *pets.openapi.lock().unwrap() = Some(spec(
        "pets",
        listed(&[("/pets", "get"), ("/pets", "post"), ("/pets/{id}", "get")]),
    ));
    let updated = eventually(Duration::from_secs(5), || async {
        has(
            &document(&gateway, None).await,
            "/pets-api/pets/{id}",
            "get",
        )
    })
    .await;
    assert!(updated, "the changed document was not picked up");

    // The backend goes down: its last good document stays, flagged stale.
    pets.kill();
    let stale = eventually(Duration::from_secs(8), || async {
        status_of(&gateway, "pets").await["state"] == "stale"
    })
    .await;
    assert!(stale, "{}", status_of(&gateway, "pets").await);
    let error = status_of(&gateway, "pets").await["error"].clone();
    assert!(error.is_string());
    assert!(
        !error.as_str().unwrap().contains("127.0.0.1"),
        "the public status must not show internal addresses: {error}"
    );
    let after = document(&gateway, None).await;
    assert!(has(&after, "/pets-api/pets/{id}", "get"));
    assert!(has(&after, "/pets-api/pets", "post"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portal_pages_and_methods() {
    let pets = Backend::start("pets").await;
    let admin = Backend::start("admin").await;
    let broken = Backend::start("broken").await;
    let gateway = Gateway::start(&portal_config(&pets, &admin, &broken)).await;
    let http = client();

    let redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(gateway.url("/docs"))
        .send()
        .await
        .unwrap();
    assert_eq!(redirect.status(), 301);
    assert_eq!(redirect.headers()["location"], "/docs/");

    let page = http.get(gateway.url("/docs/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = page.text().await.unwrap();
    assert!(html.contains("<title>Platform API</title>"));
    assert!(!html.contains("://"), "no external assets: {html}");

    let bundle = http
        .get(gateway.url("/docs/swagger-ui-bundle.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(bundle.status(), 200);
    assert!(bundle.bytes().await.unwrap().len() > 100_000);

    let missing = http
        .get(gateway.url("/docs/nothing-here.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.unwrap();
    assert!(body["request_id"].is_string());

    let post = http
        .post(gateway.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);

    // The routes themselves still proxy.
    let proxied = http
        .get(gateway.url("/pets-api/pets"))
        .send()
        .await
        .unwrap();
    assert_eq!(proxied.status(), 200);
    assert_eq!(proxied.headers()["x-backend"], "pets");
}

fn artifacts() -> PathBuf {
    let dir = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/target/test-artifacts"
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Headless Chromium with the flags this closed network needs.
fn chromium(profile: &std::path::Path, args: &[String]) -> std::process::Output {
    Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--virtual-time-budget=15000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("chromium (tests/run.sh installs Debian's chromium)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docs_portal_renders_in_headless_chromium() {
    let pets = Backend::start("pets").await;
    let admin = Backend::start("admin").await;
    let broken = Backend::start("broken").await;
    *pets.openapi.lock().unwrap() = Some(spec(
        "pets",
        listed(&[("/pets", "get"), ("/pets/{id}", "get")]),
    ));
    *admin.openapi.lock().unwrap() = Some(spec("admin", listed(&[("/users", "get")])));
    *broken.openapi.lock().unwrap() = Some(spec("broken", listed(&[("/widgets", "put")])));
    let config = portal_config(&pets, &admin, &broken).replace(
        "auth: { mode: required, roles_any: [admin] }",
        "auth: { mode: optional }",
    );
    let gateway = Gateway::start(&config).await;
    let ready = eventually(Duration::from_secs(10), || async {
        let doc = document(&gateway, None).await;
        has(&doc, "/admin/users", "get") && has(&doc, "/broken/widgets", "put")
    })
    .await;
    assert!(ready);
    // One service goes down: the portal still renders, with a banner.
    broken.kill();
    let stale = eventually(Duration::from_secs(8), || async {
        status_of(&gateway, "broken").await["state"] == "stale"
    })
    .await;
    assert!(stale);

    let profile = tempfile::tempdir().unwrap();
    let url = gateway.url("/docs/");
    let dom = chromium(profile.path(), &["--dump-dom".into(), url.clone()]);
    let dom_text = String::from_utf8_lossy(&dom.stdout);
    for path in [
        "/pets-api/pets",
        "/pets-api/pets/{id}",
        "/admin/users",
        "/broken/widgets",
    ] {
        assert!(
            dom_text.contains(&format!("data-path=\"{path}\"")),
            "{path} not rendered; stderr: {}\nDOM: {dom_text}",
            String::from_utf8_lossy(&dom.stderr)
        );
    }
    assert!(
        dom_text.contains("opblock-get"),
        "operations rendered as blocks"
    );
    assert!(
        dom_text.contains("broken — stale"),
        "the banner flags the stale service"
    );

    let shot = artifacts().join("docs-portal.png");
    let _ = std::fs::remove_file(&shot);
    let screenshot = chromium(
        profile.path(),
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1280,1400".into(),
            url,
        ],
    );
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 10_000,
        "screenshot {} ({size} bytes); stderr: {}",
        shot.display(),
        String::from_utf8_lossy(&screenshot.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_document_merges_and_passes_a_validator() {
    // The gateway's own admin API (utoipa) as a backend, as in the quick start.
    let gateway = Gateway::start(&with_plain_listener(
        "portal: { enabled: true, refresh_interval: 500ms }
upstreams:
  admin: { targets: ['127.0.0.1:{ADMIN}'] }
routes:
  - { name: gateway-admin, match: { path_prefix: /gateway }, strip_prefix: true, upstream: admin, openapi: /openapi.json }
",
    ))
    .await;
    let merged = eventually(Duration::from_secs(10), || async {
        has(&document(&gateway, None).await, "/gateway/reload", "post")
    })
    .await;
    assert!(merged);
    let doc = document(&gateway, None).await;
    for path in [
        "/gateway/healthz",
        "/gateway/readyz",
        "/gateway/metrics",
        "/gateway/config",
    ] {
        assert!(has(&doc, path, "get"), "{path}");
    }
    assert_valid_openapi(&serde_json::to_vec(&doc).unwrap(), "served document");
}
