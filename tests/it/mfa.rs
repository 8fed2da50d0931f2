//! Second factors end to end (issue 13, acceptance 4 and 5): headless
//! Chromium enrols TOTP and a passkey on the account page and signs in
//! with them (tests/oidc/mfa.mjs), and the gateway's route that requires
//! the MFA level answers RFC 9470's `insufficient_user_authentication` to
//! a password-only token and 200 to the MFA ones.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::sso::{hash, write_users, SsoProcess};
use crate::support::{client, free_port, Backend, Gateway};

const ACR_MFA: &str = "urn:portcullis:acr:mfa";

fn screenshots() -> PathBuf {
    let dir = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/target/test-artifacts/mfa"
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An SSO on `localhost` (WebAuthn needs a domain name, and Chromium
/// treats `http://localhost` as a secure context).
fn sso_config(gateway_port: u16) -> String {
    format!(
        "issuer: http://localhost:{{PORT}}/sso
listen: 127.0.0.1:{{PORT}}
keys: {{ dir: keys, algorithm: ES256 }}
users: {{ file: users.yaml }}
session: {{ secure_cookies: false }}
clients:
  - client_id: web-ui
    name: Web UI
    type: public
    first_party: true
    audience: [orders-api]
    redirect_uris: ['http://localhost:1/callback']
  - client_id: scripts
    type: confidential
    secret_hash: '{}'
    grant_types: [password]
    audience: [orders-api]
  - client_id: strict
    type: public
    first_party: true
    require_mfa: true
    redirect_uris: ['http://localhost:1/callback']
  - client_id: gateway
    type: confidential
    secret_hash: '{}'
    grant_types: [authorization_code, refresh_token]
    first_party: true
    audience: [orders-api]
    redirect_uris: ['http://127.0.0.1:{gateway_port}/_auth/callback']
",
        hash("scripts-secret"),
        hash("gateway-secret"),
    )
}

async fn password_grant(sso: &SsoProcess, username: &str, password: &str) -> (u16, Value) {
    let response = client()
        .post(sso.url("/token"))
        .basic_auth("scripts", Some("scripts-secret"))
        .form(&[
            ("grant_type", "password"),
            ("username", username),
            ("password", password),
            ("scope", "openid"),
        ])
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn totp_and_passkeys_in_chromium_and_a_route_that_needs_mfa() {
    let dir = tempfile::tempdir().unwrap();
    write_users(dir.path());
    let port = free_port();
    let gateway_port = free_port();
    let sso = SsoProcess::start(dir.path(), &sso_config(gateway_port), port).await;
    let issuer = format!("http://localhost:{port}/sso");

    // A password-only token, before alice has a second factor.
    let (status, body) = password_grant(&sso, "bob", "bob-password").await;
    assert_eq!(status, 200, "{body}");
    let password_token = body["access_token"].as_str().unwrap().to_owned();

    // A client that requires MFA refuses a user without a factor (with
    // the way to set one up), and no code is issued.
    let browser = crate::sso::Browser::default();
    let (_, challenge) = crate::sso::pkce();
    let form = browser
        .navigate(&format!(
            "{issuer}/authorize?response_type=code&client_id=strict&redirect_uri=http%3A%2F%2Flocalhost%3A1%2Fcallback&scope=openid&code_challenge={challenge}&code_challenge_method=S256"
        ))
        .await
        .text()
        .await
        .unwrap();
    let refused = browser
        .post(
            &format!("{issuer}/login"),
            &[
                ("request", &crate::sso::hidden(&form, "request")),
                ("csrf", &crate::sso::hidden(&form, "csrf")),
                ("username", "bob"),
                ("password", "bob-password"),
            ],
        )
        .await;
    assert_eq!(refused.status(), 403);
    let page = refused.text().await.unwrap();
    assert!(
        page.contains("second factor") && page.contains("account page"),
        "{page}"
    );

    let shots = screenshots();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oidc/mfa.mjs");
    let args = [
        script.to_owned(),
        issuer.clone(),
        "web-ui".into(),
        "http://localhost:1/callback".into(),
        "alice".into(),
        "alice-password".into(),
        shots.display().to_string(),
    ];
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node").args(&args).output().expect("node")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success() && stdout.contains("ok: every step passed"),
        "{stdout}\n{}\nsso log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        sso.log(dir.path())
    );
    let token = |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("token {name} ")))
            .unwrap_or_else(|| panic!("token {name} in {stdout}"))
            .to_owned()
    };
    for name in ["account-totp-enrolment", "account-page", "mfa-step"] {
        let size = std::fs::metadata(shots.join(format!("{name}.png")))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(size > 10_000, "{name}.png is {size} bytes");
    }

    // Alice has a second factor now: the password grant cannot skip it.
    let (status, body) = password_grant(&sso, "alice", "alice-password").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_grant");

    // The audit trail has the sign-ins with their methods.
    let log = sso.log(dir.path());
    for event in [
        "\"totp_enrolled\"",
        "\"passkey_registered\"",
        "\"recovery_code_used\"",
        "\"factor_failed\"",
        "[\"pwd\",\"otp\",\"mfa\"]",
        "[\"hwk\",\"user\",\"mfa\"]",
    ] {
        assert!(log.contains(event), "{event} in the audit log:\n{log}");
    }

    // The gateway: /plain needs a token, /mfa the MFA level.
    let backend = Backend::start("orders").await;
    let _gateway = Gateway::start(&format!(
        "listeners: [ {{ name: plain, address: '127.0.0.1:{gateway_port}' }} ]
admin: {{ address: '127.0.0.1:{{ADMIN}}' }}
identity:
  providers:
    - {{ name: sso, issuer: '{issuer}', audiences: [orders-api] }}
  login: {{ provider: sso, client_id: gateway, client_secret: gateway-secret,
           scopes: [openid], public_url: 'http://127.0.0.1:{gateway_port}', secure_cookies: false }}
upstreams:
  orders: {{ targets: ['{backend}'] }}
routes:
  - {{ name: mfa, match: {{ path_prefix: /mfa }}, upstream: orders,
       auth: {{ mode: required, require_acr: ['{ACR_MFA}'] }} }}
  - {{ name: otp, match: {{ path_prefix: /otp }}, upstream: orders,
       auth: {{ mode: required, require_amr: [otp] }} }}
  - {{ name: plain, match: {{ path_prefix: /plain }}, upstream: orders,
       auth: {{ mode: required, login_redirect: true }} }}
  - {{ name: app, match: {{ path_prefix: /app }}, upstream: orders,
       auth: {{ mode: required, require_acr: ['{ACR_MFA}'], login_redirect: true }} }}
",
        backend = backend.addr
    ))
    .await;
    let call = |path: &str, token: &str| {
        let url = format!("http://127.0.0.1:{gateway_port}{path}");
        let token = token.to_owned();
        async move {
            let response = client().get(url).bearer_auth(token).send().await.unwrap();
            let status = response.status().as_u16();
            let challenge = response
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            (status, challenge, body)
        }
    };
    let (status, _, _) = call("/plain", &password_token).await;
    assert_eq!(
        status, 200,
        "a password token passes where no level is asked"
    );
    let (status, challenge, body) = call("/mfa", &password_token).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        challenge.contains("error=\"insufficient_user_authentication\"")
            && challenge.contains(&format!("acr_values=\"{ACR_MFA}\"")),
        "{challenge}"
    );
    assert_eq!(body["code"], "insufficient_user_authentication", "{body}");
    assert!(body["request_id"].is_string(), "{body}");
    for name in ["totp", "passkey-second", "passkey"] {
        let (status, _, body) = call("/mfa", &token(name)).await;
        assert_eq!(status, 200, "{name}: {body}");
    }
    // `require_amr: [otp]`: TOTP passes, a passkey does not.
    assert_eq!(call("/otp", &token("totp")).await.0, 200);
    let (status, challenge, _) = call("/otp", &token("passkey")).await;
    assert_eq!(status, 401);
    assert!(
        challenge.contains("insufficient_user_authentication"),
        "{challenge}"
    );
    assert!(!challenge.contains("acr_values"), "{challenge}");

    // Browser sessions: a route that needs MFA sends a browser signed in
    // with a password alone back to the provider with `acr_values` (RFC
    // 9470 step-up), which then wants the second factor; an API call with
    // that session gets the 401.
    let recovery = stdout
        .lines()
        .find_map(|l| l.strip_prefix("recovery "))
        .expect("a recovery code from the script")
        .to_owned();
    let gw = format!("http://127.0.0.1:{gateway_port}");

    let bob = crate::sso::Browser::default();
    let form = follow_to_login(&bob, &format!("{gw}/plain/x")).await;
    let back = sso_login(&bob, &issuer, &form, "bob", "bob-password").await;
    assert_eq!(back.status(), 303);
    let landed = follow(&bob, back.headers()["location"].to_str().unwrap()).await;
    assert_eq!(landed.status(), 200, "bob's password session on /plain");
    let step_up = bob.navigate(&format!("{gw}/app/x")).await;
    assert_eq!(step_up.status(), 302);
    let location = step_up.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        location.starts_with("/_auth/login?rd=%2Fapp%2Fx&acr_values=urn%3Aportcullis%3Aacr%3Amfa"),
        "{location}"
    );
    let to_sso = bob.navigate(&format!("{gw}{location}")).await;
    let authorize = to_sso.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        authorize.contains("acr_values=urn%3Aportcullis%3Aacr%3Amfa"),
        "{authorize}"
    );
    let form = bob.navigate(&authorize).await.text().await.unwrap();
    assert!(
        form.contains("name=\"password\""),
        "the SSO session is not enough: {form}"
    );
    let refused = sso_login(&bob, &issuer, &form, "bob", "bob-password").await;
    assert_eq!(refused.status(), 403, "bob has no second factor");
    let api = client()
        .get(format!("{gw}/app/x"))
        .header("cookie", bob.cookie_header())
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 401);
    let body: Value = api.json().await.unwrap();
    assert_eq!(body["code"], "insufficient_user_authentication", "{body}");

    let alice = crate::sso::Browser::default();
    let form = follow_to_login(&alice, &format!("{gw}/app/x")).await;
    let factor = sso_login(&alice, &issuer, &form, "alice", "alice-password").await;
    assert_eq!(factor.status(), 200);
    let factor = factor.text().await.unwrap();
    let back = alice
        .post(
            &format!("{issuer}/login/factor"),
            &[
                ("request", &crate::sso::hidden(&factor, "request")),
                ("csrf", &crate::sso::hidden(&factor, "csrf")),
                ("factor", &crate::sso::hidden(&factor, "factor")),
                ("recovery_code", &recovery),
            ],
        )
        .await;
    assert_eq!(back.status(), 303);
    let landed = follow(&alice, back.headers()["location"].to_str().unwrap()).await;
    assert_eq!(landed.status(), 200, "alice's MFA session on /app");
}

/// Follows redirects (gateway → SSO) to the SSO's login form.
async fn follow_to_login(browser: &crate::sso::Browser, url: &str) -> String {
    let mut url = url.to_owned();
    for _ in 0..5 {
        let response = browser.navigate(&url).await;
        if response.status() != 302 && response.status() != 303 {
            return response.text().await.unwrap();
        }
        let location = response.headers()["location"].to_str().unwrap().to_owned();
        url = absolute(&url, &location);
    }
    panic!("too many redirects from {url}");
}

/// Follows redirects to the end (the gateway's callback, then the page).
async fn follow(browser: &crate::sso::Browser, url: &str) -> reqwest::Response {
    let mut url = url.to_owned();
    for _ in 0..5 {
        let response = browser.navigate(&url).await;
        if response.status() != 302 && response.status() != 303 {
            return response;
        }
        let location = response.headers()["location"].to_str().unwrap().to_owned();
        url = absolute(&url, &location);
    }
    panic!("too many redirects from {url}");
}

fn absolute(base: &str, location: &str) -> String {
    if location.starts_with("http") {
        return location.to_owned();
    }
    let origin: String = base.splitn(4, '/').take(3).collect::<Vec<_>>().join("/");
    format!("{origin}{location}")
}

async fn sso_login(
    browser: &crate::sso::Browser,
    issuer: &str,
    form: &str,
    username: &str,
    password: &str,
) -> reqwest::Response {
    browser
        .post(
            &format!("{issuer}/login"),
            &[
                ("request", &crate::sso::hidden(form, "request")),
                ("csrf", &crate::sso::hidden(form, "csrf")),
                ("username", username),
                ("password", password),
            ],
        )
        .await
}
