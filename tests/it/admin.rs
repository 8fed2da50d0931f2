//! The SSO's admin API: every endpoint refused without a token (401) and
//! without the admin role (403), and doing its job with it; paging and
//! search; seed users read-only; disabling a user ends their gateway
//! sessions by back-channel logout and refuses their next refresh.

use std::time::Duration;

use serde_json::{json, Value};

use crate::signin::{refresh, web_ui_tokens_for, with_cookie, Setup};
use crate::sso::{hash, sign_in_as, Browser, SsoProcess};
use crate::support::{client, eventually};

/// An admin client (`ops`) after the gateway client in the SSO's list.
fn ops_client() -> String {
    format!(
        "  - {{ client_id: ops, type: confidential, secret_hash: '{}', roles: [sso-admin] }}\n",
        hash("ops-secret")
    )
}

/// A client-credentials access token.
pub(crate) async fn token(sso: &SsoProcess, id: &str, secret: &str) -> String {
    let answer: Value = client()
        .post(sso.url("/token"))
        .basic_auth(id, Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["access_token"].as_str().unwrap().to_owned()
}

async fn call(
    sso: &SsoProcess,
    method: &str,
    path: &str,
    body: Option<&Value>,
    bearer: Option<&str>,
) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = client().request(method, sso.url(path));
    if let Some(bearer) = bearer {
        request = request.bearer_auth(bearer);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_endpoint_needs_the_admin_role_and_does_its_job() {
    every_admin_endpoint_on("").await;
}

/// The same table on a real PostgreSQL (the directory's other database).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_endpoint_on_postgresql() {
    let postgres = crate::support::PostgresServer::start().await;
    every_admin_endpoint_on(&format!("directory: {{ url: '{}' }}\n", postgres.url())).await;
}

async fn every_admin_endpoint_on(sso_extra: &str) {
    let setup = Setup::start_with(1, &ops_client(), sso_extra).await;
    let sso = &setup.sso;
    let admin = token(sso, "ops", "ops-secret").await;
    let service = token(sso, "billing", "billing-secret").await;
    let dora = json!({ "username": "dora", "password": "dora-password-1",
        "email": "Dora@Example.com", "roles": ["staff"] });
    // (method, path, body, status with the admin role, what the answer says)
    type Case = (&'static str, &'static str, Option<Value>, u16, &'static str);
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/admin/users",
            Some(dora.clone()),
            201,
            "\"source\":\"directory\"",
        ),
        ("POST", "/admin/users", Some(dora.clone()), 409, "taken"),
        (
            "POST",
            "/admin/users",
            Some(json!({"username": "eve", "password": "short"})),
            400,
            "at least 12",
        ),
        (
            "POST",
            "/admin/users",
            Some(json!({"username": "x", "password": "long-enough-pw"})),
            400,
            "3 to 64",
        ),
        (
            "POST",
            "/admin/users",
            Some(json!({"username": "alice", "password": "long-enough-pw"})),
            409,
            "taken",
        ),
        (
            "POST",
            "/admin/users",
            Some(json!({"username": "fay", "password": "long-enough-pw", "admin": true})),
            400,
            "unknown field",
        ),
        ("GET", "/admin/users", None, 200, "\"username\":\"dora\""),
        (
            "GET",
            "/admin/users?search=EXAMPLE.COM",
            None,
            200,
            "\"username\":\"dora\"",
        ),
        ("GET", "/admin/users?search=zzz", None, 200, "\"users\":[]"),
        (
            "GET",
            "/admin/users/dora",
            None,
            200,
            "\"email\":\"Dora@Example.com\"",
        ),
        (
            "GET",
            "/admin/users/alice",
            None,
            200,
            "\"source\":\"file\"",
        ),
        ("GET", "/admin/users/nobody", None, 404, "not_found"),
        (
            "PATCH",
            "/admin/users/dora",
            Some(json!({"name": "Dora", "roles": ["b", "a"], "email": null})),
            200,
            "\"roles\":[\"a\",\"b\"]",
        ),
        (
            "PATCH",
            "/admin/users/alice",
            Some(json!({"name": "Al"})),
            409,
            "read_only",
        ),
        (
            "PATCH",
            "/admin/users/nobody",
            Some(json!({"name": "N"})),
            404,
            "not_found",
        ),
        (
            "PUT",
            "/admin/users/dora/password",
            Some(json!({"password": "another-password-2"})),
            204,
            "",
        ),
        (
            "PUT",
            "/admin/users/dora/password",
            Some(json!({"password": "short"})),
            400,
            "at least 12",
        ),
        (
            "DELETE",
            "/admin/users/dora/sessions",
            None,
            200,
            "\"ended\":0",
        ),
        ("PUT", "/admin/users/dora/roles/auditor", None, 204, ""),
        (
            "PUT",
            "/admin/users/alice/roles/auditor",
            None,
            409,
            "read_only",
        ),
        (
            "PUT",
            "/admin/users/nobody/roles/auditor",
            None,
            404,
            "not_found",
        ),
        (
            "GET",
            "/admin/roles",
            None,
            200,
            "{\"name\":\"auditor\",\"users\":1}",
        ),
        (
            "GET",
            "/admin/roles/auditor/users",
            None,
            200,
            "\"users\":[\"dora\"]",
        ),
        ("DELETE", "/admin/users/dora/roles/auditor", None, 204, ""),
        (
            "GET",
            "/admin/roles/auditor/users",
            None,
            200,
            "\"users\":[]",
        ),
        ("PUT", "/admin/users/dora/groups/ops", None, 204, ""),
        (
            "GET",
            "/admin/groups",
            None,
            200,
            "{\"name\":\"ops\",\"users\":1}",
        ),
        (
            "GET",
            "/admin/groups/ops/users",
            None,
            200,
            "\"users\":[\"dora\"]",
        ),
        ("DELETE", "/admin/users/dora/groups/ops", None, 204, ""),
        ("DELETE", "/admin/users/alice", None, 409, "read_only"),
        ("DELETE", "/admin/users/dora", None, 204, ""),
        ("GET", "/admin/users/dora", None, 404, "not_found"),
        ("DELETE", "/admin/users/dora", None, 404, "not_found"),
        ("GET", "/admin/audit?limit=1", None, 200, "\"events\":[{"),
    ];
    for (i, (method, path, body, want, says)) in cases.iter().enumerate() {
        let (status, answer) = call(sso, method, path, body.as_ref(), None).await;
        assert_eq!(status, 401, "case {i} {method} {path}: no token: {answer}");
        let (status, answer) = call(sso, method, path, body.as_ref(), Some(&service)).await;
        assert_eq!(
            status, 403,
            "case {i} {method} {path}: not an admin: {answer}"
        );
        let (status, answer) = call(sso, method, path, body.as_ref(), Some(&admin)).await;
        assert_eq!(status, *want, "case {i} {method} {path}: {answer}");
        assert!(
            answer.to_string().contains(says),
            "case {i} {method} {path}: {answer}"
        );
        assert!(
            !answer.to_string().contains("argon2"),
            "case {i}: no hash shown"
        );
    }
    // Paging: keyset by name, `next` until the last page.
    for name in ["page1", "page2", "page3", "page4", "page5"] {
        let body = json!({ "username": name, "password": "paging-password" });
        assert_eq!(
            call(sso, "POST", "/admin/users", Some(&body), Some(&admin))
                .await
                .0,
            201
        );
    }
    let mut seen = Vec::new();
    let mut after = String::new();
    for _ in 0..5 {
        let (status, page) = call(
            sso,
            "GET",
            &format!("/admin/users?limit=2&after={after}"),
            None,
            Some(&admin),
        )
        .await;
        assert_eq!(status, 200);
        for user in page["users"].as_array().unwrap() {
            seen.push(user["username"].as_str().unwrap().to_owned());
        }
        match page["next"].as_str() {
            Some(next) => after = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen, ["page1", "page2", "page3", "page4", "page5"]);
    // The audit trail through the API: dora's story, newest first, with
    // who did it; written a moment after each call (in batches).
    let story = |page: &Value| -> Vec<String> {
        page["events"]
            .as_array()
            .map(|events| {
                events
                    .iter()
                    .map(|e| e["event"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let page = loop {
        let page = call(sso, "GET", "/admin/audit?sub=dora", None, Some(&admin))
            .await
            .1;
        let done = story(&page).first().map(String::as_str) == Some("admin_user_deleted");
        if done || std::time::Instant::now() > deadline {
            break page;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        story(&page).first().map(String::as_str),
        Some("admin_user_deleted"),
        "{page}"
    );
    let events = story(&page);
    assert!(
        events.contains(&"admin_user_created".to_owned()),
        "{events:?}"
    );
    assert!(
        events.contains(&"admin_password_set".to_owned()),
        "{events:?}"
    );
    assert!(page["events"][0]["by"] == "ops", "{page}");
    let (_, one) = call(
        sso,
        "GET",
        "/admin/audit?sub=dora&limit=1",
        None,
        Some(&admin),
    )
    .await;
    let next = one["next"].as_str().expect("a next page").to_owned();
    let (_, older) = call(
        sso,
        "GET",
        &format!("/admin/audit?sub=dora&limit=1&before={next}"),
        None,
        Some(&admin),
    )
    .await;
    assert_eq!(story(&older), events[1..2], "{older}");
    let (_, only) = call(
        sso,
        "GET",
        "/admin/audit?event=admin_password_set",
        None,
        Some(&admin),
    )
    .await;
    assert!(
        story(&only).iter().all(|e| e == "admin_password_set"),
        "{only}"
    );
    let log = setup.sso_log();
    for event in [
        "admin_user_created",
        "admin_user_changed",
        "admin_password_set",
        "admin_user_deleted",
        "admin_refused",
    ] {
        assert!(log.contains(event), "audit {event}");
    }
    assert!(!log.contains("dora-password-1"), "no password in the log");
}

/// Disabling a user signs them out of the gateway on both replicas
/// (back-channel logout) and refuses their next refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_a_user_ends_their_sessions_and_refreshes() {
    let setup = Setup::start(2, &ops_client()).await;
    let (sso, gws) = (&setup.sso, setup.gateways.clone());
    let admin = token(sso, "ops", "ops-secret").await;
    let dora = json!({ "username": "dora", "password": "dora-password-1", "roles": ["admin"] });
    assert_eq!(
        call(sso, "POST", "/admin/users", Some(&dora), Some(&admin))
            .await
            .0,
        201
    );
    let browser = Browser::default();
    let callback = sign_in_as(&browser, &gws[0], sso, "dora", "dora-password-1").await;
    assert_eq!(browser.navigate(&callback).await.status(), 302);
    let cookie = browser.cookie_header();
    for gw in &gws {
        assert_eq!(with_cookie(gw, &cookie).await, 200, "{gw}");
    }
    // An offline grant of hers (it outlives her sessions by design): only
    // her being disabled can stop it.
    let offline = web_ui_tokens_for(sso, "dora", "dora-password-1", "openid offline_access").await;
    let refresh_token = offline["refresh_token"].as_str().unwrap().to_owned();
    // Her sessions, listed and one ended by `sid`: the gateway's stays.
    let (status, listed) = call(sso, "GET", "/admin/users/dora/sessions", None, Some(&admin)).await;
    assert_eq!(status, 200, "{listed}");
    let sessions = listed["sessions"].as_array().unwrap().clone();
    assert_eq!(sessions.len(), 2, "{listed}");
    let newest = format!(
        "/admin/users/dora/sessions/{}",
        sessions[1]["sid"].as_str().unwrap()
    );
    assert_eq!(
        call(sso, "DELETE", &newest, None, Some(&admin)).await.0,
        204
    );
    assert_eq!(
        call(sso, "DELETE", &newest, None, Some(&admin)).await.0,
        404
    );
    let (_, listed) = call(sso, "GET", "/admin/users/dora/sessions", None, Some(&admin)).await;
    assert_eq!(listed["sessions"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(
        with_cookie(&gws[0], &cookie).await,
        200,
        "the gateway's session lives"
    );
    let service = token(sso, "billing", "billing-secret").await;
    assert_eq!(
        call(
            sso,
            "GET",
            "/admin/users/dora/sessions",
            None,
            Some(&service)
        )
        .await
        .0,
        403
    );
    let (status, _) = call(
        sso,
        "PATCH",
        "/admin/users/dora",
        Some(&json!({ "disabled": true })),
        Some(&admin),
    )
    .await;
    assert_eq!(status, 200);
    for gw in &gws {
        let ended = eventually(Duration::from_secs(1), || async {
            with_cookie(gw, &cookie).await == 302
        })
        .await;
        assert!(ended, "{gw} still serves a disabled user's session");
    }
    let (status, answer) = refresh(sso, &refresh_token).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("invalid_grant")),
        "{answer}"
    );
    // Enabled again, the offline grant works again (it was not revoked,
    // only refused while she was disabled).
    let enable = json!({ "disabled": false });
    assert_eq!(
        call(
            sso,
            "PATCH",
            "/admin/users/dora",
            Some(&enable),
            Some(&admin)
        )
        .await
        .0,
        200
    );
    assert_eq!(refresh(sso, &refresh_token).await.0, 200);
}

/// Clients registered at run time: every endpoint refused without the
/// admin role; a confidential client created through the API (its secret
/// shown once) completes code + PKCE and a refresh with openid-client;
/// a rotated secret replaces the old at once; a deleted client is unknown
/// (issue 13, acceptance 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_registered_through_the_api_sign_users_in() {
    let dir = tempfile::tempdir().unwrap();
    crate::sso::write_users(dir.path());
    let port = crate::support::free_port();
    let config = crate::sso::config() + &ops_client();
    let sso = SsoProcess::start(dir.path(), &config, port).await;
    let admin = token(&sso, "ops", "ops-secret").await;
    let service = token(&sso, "billing", "billing-secret").await;
    let callback = "http://127.0.0.1:1/app-callback";
    let app = json!({ "client_id": "new-app", "type": "confidential", "name": "New app",
        "redirect_uris": [callback], "grant_types": ["authorization_code", "refresh_token"] });
    let endpoints: [(&str, &str, Option<Value>); 6] = [
        ("POST", "/admin/clients", Some(app.clone())),
        ("GET", "/admin/clients", None),
        ("GET", "/admin/clients/new-app", None),
        (
            "PATCH",
            "/admin/clients/new-app",
            Some(json!({ "name": "x" })),
        ),
        ("POST", "/admin/clients/new-app/secret", None),
        ("DELETE", "/admin/clients/new-app", None),
    ];
    for (method, path, body) in &endpoints {
        assert_eq!(
            call(&sso, method, path, body.as_ref(), None).await.0,
            401,
            "{method} {path}"
        );
        let (status, _) = call(&sso, method, path, body.as_ref(), Some(&service)).await;
        assert_eq!(status, 403, "{method} {path}");
    }

    let (status, created) = call(&sso, "POST", "/admin/clients", Some(&app), Some(&admin)).await;
    assert_eq!(status, 201, "{created}");
    let secret = created["client_secret"].as_str().unwrap().to_owned();
    assert!(created.get("secret_hash").is_none());
    for (body, want, says) in [
        (app.clone(), 409, "taken"),
        (
            json!({ "client_id": "billing", "type": "public", "redirect_uris": [callback] }),
            409,
            "taken",
        ),
        (
            json!({ "client_id": "x", "type": "public", "redirect_uris": [callback] }),
            400,
            "3 to 64",
        ),
        (
            json!({ "client_id": "bad-uri", "type": "public", "redirect_uris": ["relative"] }),
            400,
            "redirect_uris",
        ),
        (
            json!({ "client_id": "sneaky", "type": "confidential", "secret_hash": "$argon2id$x" }),
            400,
            "generates the secret",
        ),
        (
            json!({ "client_id": "pub-cc", "type": "public", "grant_types": ["client_credentials"] }),
            400,
            "client_credentials",
        ),
        (
            json!({ "client_id": "eddsa", "type": "public", "redirect_uris": [callback], "id_token_signed_response_alg": "EdDSA" }),
            400,
            "no key",
        ),
    ] {
        let (status, answer) =
            call(&sso, "POST", "/admin/clients", Some(&body), Some(&admin)).await;
        assert_eq!(status, want, "{body}: {answer}");
        assert!(answer.to_string().contains(says), "{body}: {answer}");
    }

    let rp = |secret: String| {
        let issuer = sso.issuer();
        async move {
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oidc/rp-client.mjs");
            tokio::task::spawn_blocking(move || {
                std::process::Command::new("node")
                    .args([script, &issuer, "new-app", &secret, callback])
                    .output()
                    .unwrap()
            })
            .await
            .unwrap()
        }
    };
    let output = rp(secret.clone()).await;
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    // Changes: redirect URIs yes; id, type or secret no.
    let patch = json!({ "redirect_uris": [callback, "http://127.0.0.1:1/other"] });
    let (status, changed) = call(
        &sso,
        "PATCH",
        "/admin/clients/new-app",
        Some(&patch),
        Some(&admin),
    )
    .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["redirect_uris"][1], "http://127.0.0.1:1/other");
    for fixed in [
        json!({ "client_id": "y" }),
        json!({ "type": "public" }),
        json!({ "secret_hash": "h" }),
    ] {
        let (status, _) = call(
            &sso,
            "PATCH",
            "/admin/clients/new-app",
            Some(&fixed),
            Some(&admin),
        )
        .await;
        assert_eq!(status, 400, "{fixed}");
    }
    let (status, _) = call(
        &sso,
        "PATCH",
        "/admin/clients/billing",
        Some(&patch),
        Some(&admin),
    )
    .await;
    assert_eq!(status, 409, "config clients are read-only");

    // A rotated secret: the old one fails at once, the new one works.
    let (status, rotated) = call(
        &sso,
        "POST",
        "/admin/clients/new-app/secret",
        None,
        Some(&admin),
    )
    .await;
    assert_eq!(status, 200);
    let new_secret = rotated["client_secret"].as_str().unwrap().to_owned();
    let introspect = |secret: String| {
        let url = sso.url("/introspect");
        async move {
            client()
                .post(url)
                .basic_auth("new-app", Some(secret))
                .form(&[("token", "x")])
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(introspect(secret).await, 401);
    assert_eq!(introspect(new_secret).await, 200);

    let (status, listed) = call(&sso, "GET", "/admin/clients", None, Some(&admin)).await;
    assert_eq!(
        (status, listed["clients"][0]["client_id"].as_str()),
        (200, Some("new-app"))
    );
    let (status, _) = call(&sso, "DELETE", "/admin/clients/new-app", None, Some(&admin)).await;
    assert_eq!(status, 204);
    assert_eq!(
        call(&sso, "GET", "/admin/clients/new-app", None, Some(&admin))
            .await
            .0,
        404
    );
    let unknown = client()
        .get(sso.url(&format!(
            "/authorize?response_type=code&client_id=new-app&redirect_uri={callback}&scope=openid"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 400, "a deleted client is unknown");
}

/// The admin console (issue 13): server-rendered forms, no JavaScript, the
/// admin API's operations with the session's form token; a user without
/// the admin role is refused; screenshots drawn by headless Chromium.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_manages_users_and_clients() {
    let dir = tempfile::tempdir().unwrap();
    crate::sso::write_users(dir.path());
    let port = crate::support::free_port();
    let config = crate::sso::config() + "admin: { role: admin }\n";
    let sso = SsoProcess::start(dir.path(), &config, port).await;
    let console = sso.url("/console");

    // Without a session: the sign-in form, which comes back here.
    let sign_in = |user: &'static str, password: &'static str| {
        let console = console.clone();
        let login = sso.url("/login");
        async move {
            let browser = Browser::default();
            let form = browser.navigate(&console).await.text().await.unwrap();
            let back = browser
                .post(
                    &login,
                    &[
                        ("request", &crate::sso::hidden(&form, "request")),
                        ("csrf", &crate::sso::hidden(&form, "csrf")),
                        ("username", user),
                        ("password", password),
                    ],
                )
                .await;
            assert_eq!(back.status(), 303);
            assert!(back.headers()["location"]
                .to_str()
                .unwrap()
                .ends_with("/sso/console"));
            browser
        }
    };
    let bob = sign_in("bob", "bob-password").await;
    let refused = bob.navigate(&console).await;
    assert_eq!(refused.status(), 403, "bob is no admin");
    let alice = sign_in("alice", "alice-password").await;
    let page = alice.navigate(&console).await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("No users in the directory"), "{html}");
    let csrf = crate::sso::hidden(&html, "csrf");
    let act = |action: &str, fields: Vec<(&'static str, String)>| {
        let url = sso.url(&format!("/console/do/{action}"));
        let alice = &alice;
        async move {
            let form: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let response = alice.post(&url, &form).await;
            let status = response.status().as_u16();
            (status, response.text().await.unwrap())
        }
    };
    let dora = |extra: Vec<(&'static str, String)>| {
        let mut fields = vec![("csrf", csrf.clone()), ("username", "dora".to_owned())];
        fields.extend(extra);
        fields
    };

    // Forms without the session's token, or with bob's, do nothing.
    let (status, _) = act(
        "user-create",
        vec![
            ("username", "dora".into()),
            ("password", "dora-password-1".into()),
        ],
    )
    .await;
    assert_eq!(status, 403);
    let bob_page = bob
        .navigate(&sso.url("/account"))
        .await
        .text()
        .await
        .unwrap();
    let bobs_token = crate::sso::hidden(&bob_page, "csrf");
    let (status, _) = act(
        "user-create",
        vec![
            ("csrf", bobs_token),
            ("username", "dora".into()),
            ("password", "dora-password-1".into()),
        ],
    )
    .await;
    assert_eq!(status, 403, "another session's (and page's) token");

    let (status, html) = act(
        "user-create",
        dora(vec![
            ("password", "dora-password-1".into()),
            ("email", "dora@example.com".into()),
        ]),
    )
    .await;
    assert_eq!(status, 200, "{html}");
    assert!(
        html.contains("The user is created") && html.contains("dora@example.com"),
        "{html}"
    );
    let (status, html) = act(
        "user-create",
        dora(vec![("password", "dora-password-1".into())]),
    )
    .await;
    assert_eq!(status, 400);
    assert!(html.contains("taken"), "{html}");
    let (status, html) = act(
        "user-create",
        vec![
            ("csrf", csrf.clone()),
            ("username", "eve".into()),
            ("password", "short".into()),
        ],
    )
    .await;
    assert_eq!(status, 400);
    assert!(html.contains("at least 12"), "{html}");
    let (status, html) = act("role-give", dora(vec![("label", "staff".into())])).await;
    assert_eq!(status, 200);
    assert!(html.contains("<span class=\"tag\">staff</span>"), "{html}");
    let (_, html) = act(
        "user-update",
        dora(vec![
            ("email", "dora@example.org".into()),
            ("disabled", "on".into()),
        ]),
    )
    .await;
    assert!(
        html.contains("Disabled.") && html.contains("dora@example.org"),
        "{html}"
    );
    let (status, html) = act(
        "user-password",
        dora(vec![("password", "another-password-2".into())]),
    )
    .await;
    assert_eq!(status, 200);
    assert!(html.contains("password is set"), "{html}");
    let (status, html) = act(
        "user-update",
        vec![
            ("csrf", csrf.clone()),
            ("username", "alice".into()),
            ("email", "x@example.com".into()),
        ],
    )
    .await;
    assert_eq!(status, 400, "seed users are read-only");
    assert!(html.contains("users file"), "{html}");

    // A client: its secret shown once, and it works.
    let (status, html) = act(
        "client-create",
        vec![
            ("csrf", csrf.clone()),
            ("client_id", "console-app".into()),
            ("name", "Console app".into()),
            ("client_type", "confidential".into()),
            ("redirect_uris", "http://127.0.0.1:1/cb\n".into()),
        ],
    )
    .await;
    assert_eq!(status, 200, "{html}");
    let secret = html
        .split("shown only now: ")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .expect("the secret on the page")
        .trim()
        .to_owned();
    assert_eq!(
        token(&sso, "console-app", &secret).await.split('.').count(),
        3
    );
    let (_, html) = act(
        "client-rotate",
        vec![("csrf", csrf.clone()), ("client_id", "console-app".into())],
    )
    .await;
    assert!(html.contains("the old one no longer works"), "{html}");
    let (status, _, _) = crate::sso::client_credentials(
        &sso,
        &[("grant_type", "client_credentials")],
        Some(("console-app", &secret)),
    )
    .await;
    assert_eq!(status, 401, "the old secret");
    let (status, html) = act(
        "client-delete",
        vec![("csrf", csrf.clone()), ("client_id", "billing".into())],
    )
    .await;
    assert_eq!(status, 400, "config clients are read-only: {html}");

    // Screenshots of the console's pages, drawn by Chromium with alice's
    // session, and the audit trail naming her.
    let cookie = alice
        .cookie_header()
        .split("; ")
        .find_map(|c| c.strip_prefix("portcullis_sso=").map(str::to_owned))
        .expect("alice's session cookie");
    let shots = std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/target/test-artifacts/console"
    ));
    std::fs::create_dir_all(&shots).unwrap();
    for (page, expect) in [
        ("/console/users", "dora"),
        ("/console/users/dora", "Disabled."),
        ("/console/clients", "console-app"),
        ("/console/roles", "staff"),
        ("/console/audit", "admin_user_created"),
    ] {
        let url = sso.url(page);
        let out = shots.join(format!(
            "{}.png",
            page.trim_start_matches('/').replace('/', "-")
        ));
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oidc/screenshot.mjs");
        let (cookie, out_arg) = (cookie.clone(), out.display().to_string());
        let output = tokio::task::spawn_blocking(move || {
            std::process::Command::new("node")
                .args([script, &url, "portcullis_sso", &cookie, &out_arg])
                .output()
                .expect("node")
        })
        .await
        .unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && text.contains(expect),
            "{page}: {text}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            std::fs::metadata(&out).unwrap().len() > 10_000,
            "{}",
            out.display()
        );
    }
    let (_, html) = act("user-delete", dora(vec![])).await;
    assert!(html.contains("dora is deleted"), "{html}");
    // Rows are written a moment after each action: poll with a deadline.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let audit = loop {
        let audit = alice
            .navigate(&sso.url("/console/audit?sub=dora"))
            .await
            .text()
            .await
            .unwrap();
        if audit.contains("admin_user_deleted") || std::time::Instant::now() > deadline {
            break audit;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for event in [
        "admin_user_created",
        "admin_label_given",
        "admin_password_set",
        "admin_user_deleted",
    ] {
        assert!(audit.contains(event), "{event}: {audit}");
    }
}

/// A temporary password (admin API `temporary: true`): the next sign-in
/// asks for a new one (not the same, not too short) before the code is
/// issued; the one after goes straight through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temporary_password_is_replaced_at_the_next_sign_in() {
    use crate::sso::{authorize_url, code_from, hidden, pkce, redeem};
    let setup = Setup::start(1, &ops_client()).await;
    let sso = &setup.sso;
    let admin = token(sso, "ops", "ops-secret").await;
    let gus = json!({ "username": "gus", "password": "first-password-1" });
    assert_eq!(
        call(sso, "POST", "/admin/users", Some(&gus), Some(&admin))
            .await
            .0,
        201
    );
    let temporary = json!({ "password": "temporary-pass-2", "temporary": true });
    let (status, _) = call(
        sso,
        "PUT",
        "/admin/users/gus/password",
        Some(&temporary),
        Some(&admin),
    )
    .await;
    assert_eq!(status, 204);
    let (_, view) = call(sso, "GET", "/admin/users/gus", None, Some(&admin)).await;
    assert_eq!(view["password_change_required"], true, "{view}");

    let base = sso.issuer();
    let sign_in = |password: &'static str| {
        let base = base.clone();
        async move {
            let browser = Browser::default();
            let (verifier, challenge) = pkce();
            let html = browser
                .get(&authorize_url(&base, &challenge))
                .await
                .text()
                .await
                .unwrap();
            let answer = browser
                .post(
                    &format!("{base}/login"),
                    &[
                        ("request", &hidden(&html, "request")),
                        ("csrf", &hidden(&html, "csrf")),
                        ("username", "gus"),
                        ("password", password),
                    ],
                )
                .await;
            (browser, answer, verifier)
        }
    };
    let (browser, answer, verifier) = sign_in("temporary-pass-2").await;
    assert_eq!(answer.status(), 200);
    let mut html = answer.text().await.unwrap();
    assert!(html.contains("Choose a new password"), "{html}");
    for (password, status, says) in [
        ("short", 400, "too short"),
        ("temporary-pass-2", 400, "other than the one you were given"),
        ("gus-own-password-3", 303, ""),
    ] {
        let answer = browser
            .post(
                &format!("{base}/login/password"),
                &[
                    ("request", &hidden(&html, "request")),
                    ("csrf", &hidden(&html, "csrf")),
                    ("step", &hidden(&html, "step")),
                    ("new_password", password),
                ],
            )
            .await;
        // The last one goes on: consent (asked once), then the code.
        let answer = if status == 303 && answer.status() == 200 {
            let consent = answer.text().await.unwrap();
            crate::sso::allow_consent(&browser, &base, &consent).await
        } else {
            answer
        };
        assert_eq!(answer.status(), status, "{password}");
        if status == 303 {
            let (status, tokens) = redeem(&base, &code_from(&answer), &verifier).await;
            assert_eq!(status, 200, "{tokens}");
            break;
        }
        html = answer.text().await.unwrap();
        assert!(html.contains(says), "{password}: {html}");
    }
    let (_, view) = call(sso, "GET", "/admin/users/gus", None, Some(&admin)).await;
    assert_eq!(view["password_change_required"], false, "{view}");
    let (_, answer, _) = sign_in("gus-own-password-3").await;
    assert_eq!(answer.status(), 303, "the new password signs in directly");
    let (_, answer, _) = sign_in("temporary-pass-2").await;
    assert_eq!(answer.status(), 401, "the temporary one no longer does");
}
