//! `portcullis demo`: the gateway and the SSO together, as a newcomer runs
//! them — tokens from the SSO through the gateway, a protected route, the
//! gateway's admin API for admins only, self-registered users without
//! roles, the portal with both APIs.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::sso::{hidden, register, Browser};
use crate::support::{answers_ok, client, eventually, free_port, get_json, ChildGuard, BIN};

/// A browser navigating to `path` through the demo's sign-in (with the
/// demo user's `password` when the SSO asks); the final status.
async fn browser_reaches(browser: &Browser, base: &str, path: &str, password: Option<&str>) -> u16 {
    let first = browser.navigate(&format!("{base}{path}")).await;
    assert_eq!(first.status(), 302, "{path}: sent to sign in");
    let login = first.headers()["location"].to_str().unwrap().to_owned();
    let to_sso = browser.navigate(&format!("{base}{login}")).await;
    let authorize = to_sso.headers()["location"].to_str().unwrap().to_owned();
    let mut answer = browser.navigate(&authorize).await;
    if answer.status() == 200 {
        let form = answer.text().await.unwrap();
        answer = browser
            .post(
                &format!("{base}/sso/login"),
                &[
                    ("request", &hidden(&form, "request")),
                    ("csrf", &hidden(&form, "csrf")),
                    ("username", "demo"),
                    ("password", password.expect("a password for the form")),
                ],
            )
            .await;
    }
    assert_eq!(answer.status(), 303, "back to the gateway");
    let callback = answer.headers()["location"].to_str().unwrap().to_owned();
    let landed = browser.navigate(&callback).await;
    assert_eq!(landed.status(), 302);
    browser
        .navigate(&format!("{base}{path}"))
        .await
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_gateway_and_sso_together() {
    let dir = tempfile::tempdir().unwrap();
    let (port, admin, sso) = (free_port(), free_port(), free_port());
    let stdout_path = dir.path().join("demo.out");
    let child = Command::new(BIN)
        .args(["demo", "--port", &port.to_string()])
        .args([
            "--admin-port",
            &admin.to_string(),
            "--sso-port",
            &sso.to_string(),
        ])
        .arg("--dir")
        .arg(dir.path().join("run"))
        .stdout(Stdio::from(std::fs::File::create(&stdout_path).unwrap()))
        .stderr(Stdio::from(
            std::fs::File::create(dir.path().join("demo.err")).unwrap(),
        ))
        .spawn()
        .unwrap();
    let mut child = ChildGuard(Some(child));
    let base = format!("http://127.0.0.1:{port}");
    let up = answers_ok(&format!("{base}/healthz"), Duration::from_secs(20)).await;
    assert!(
        up,
        "{}",
        std::fs::read_to_string(dir.path().join("demo.err")).unwrap_or_default()
    );
    let printed = std::fs::read_to_string(&stdout_path).unwrap();
    let secret = printed
        .lines()
        .find_map(|l| l.trim().strip_prefix("service client   demo-service / "))
        .expect("the service client's secret is printed")
        .trim()
        .to_owned();

    // A token from the SSO, through the gateway; the protected route.
    let token: Value = client()
        .post(format!("{base}/sso/token"))
        .basic_auth("demo-service", Some(&secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let access = token["access_token"].as_str().expect("a token");
    let anonymous = client()
        .get(format!("{base}/api/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let authorized = client()
        .get(format!("{base}/api/healthz"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(authorized.status(), 200);

    // The gateway's own API needs a signed-in admin: anonymous callers
    // get 401, the service client (role `demo`) 403.
    for (token, want) in [(None, 401), (Some(access), 403)] {
        let mut request = client().get(format!("{base}/gateway/config"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        assert_eq!(request.send().await.unwrap().status(), want);
    }
    let reload = client()
        .post(format!("{base}/gateway/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(reload.status(), 401);

    // Self-registration opens no protected API: a new user signs in and
    // gets 403 on /api.
    let newcomer = Browser::default();
    let created = register(
        &newcomer,
        &format!("{base}/sso"),
        "",
        &[
            ("username", "newcomer"),
            ("password", "newcomer-password-1"),
            ("confirm", "newcomer-password-1"),
        ],
    )
    .await;
    assert_eq!(created.status(), 200);
    let status = browser_reaches(&newcomer, &base, "/api/healthz", None).await;
    assert_eq!(status, 403, "a self-registered user has no role");

    // The demo user (roles demo and admin) reaches both.
    let password = printed
        .lines()
        .find_map(|l| l.trim().strip_prefix("user             demo / "))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the demo user's password is printed")
        .to_owned();
    let demo = Browser::default();
    let status = browser_reaches(&demo, &base, "/gateway/config", Some(&password)).await;
    assert_eq!(status, 200, "the demo user is an admin");
    assert_eq!(
        demo.navigate(&format!("{base}/api/healthz")).await.status(),
        200
    );

    // The printed account and console links work for the demo user (an
    // admin); passkeys are on (the issuer is on `localhost`).
    for (page, says) in [("account", "Passkeys"), ("console", "New user")] {
        let link = printed
            .lines()
            .find_map(|l| {
                l.split_whitespace()
                    .find(|w| w.ends_with(&format!("/sso/{page}")))
            })
            .unwrap_or_else(|| panic!("the {page} link is printed:\n{printed}"))
            .replace("localhost", "127.0.0.1");
        let answer = demo.navigate(&link).await;
        assert_eq!(answer.status(), 200, "{link}");
        let html = answer.text().await.unwrap();
        assert!(html.contains(says), "{link}: {html}");
    }
    assert_eq!(
        newcomer
            .navigate(&format!("{base}/sso/console"))
            .await
            .status(),
        403,
        "a self-registered user is no admin"
    );

    // The portal shows the SSO's API to everyone, the gateway's admin API
    // only to an admin.
    let sso_listed = eventually(Duration::from_secs(10), || async {
        let doc = get_json(&format!("{base}/openapi.json")).await;
        doc.pointer("/paths/~1sso~1token/post").is_some()
    })
    .await;
    assert!(
        sso_listed,
        "{}",
        get_json(&format!("{base}/docs/status.json")).await
    );
    let anonymous = get_json(&format!("{base}/openapi.json")).await;
    assert!(anonymous.pointer("/paths/~1gateway~1reload/post").is_none());
    let admin_sees = eventually(Duration::from_secs(10), || async {
        let doc: Value = demo
            .get(&format!("{base}/openapi.json"))
            .await
            .json()
            .await
            .unwrap();
        doc.pointer("/paths/~1gateway~1reload/post").is_some()
    })
    .await;
    assert!(admin_sees, "the admin sees the gateway's API in the portal");

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let exited = tokio::task::spawn_blocking(move || child.wait_exit(Duration::from_secs(15)))
        .await
        .unwrap();
    assert!(exited.is_some_and(|s| s.success()), "{exited:?}");
}
