//! `portcullis sso`, the OpenID Provider, as a real process: discovery,
//! JWKS, the client-credentials grant with per-client lifetimes, client
//! authentication errors, keys kept across restarts, and the gateway
//! accepting its tokens.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};

use crate::support::{
    client, eventually, free_port, get_json, with_plain_listener, Backend, Gateway, BIN,
};

/// The SSO as a child process, killed on drop.
pub(crate) struct SsoProcess {
    child: Child,
    port: u16,
}

impl SsoProcess {
    /// Writes `config` (with `{PORT}` filled in) to `dir/sso.yaml` and waits
    /// for discovery to answer.
    pub(crate) async fn start(dir: &Path, config: &str, port: u16) -> SsoProcess {
        Self::start_with_env(dir, config, port, &[]).await
    }

    /// The same, with environment variables for the process.
    pub(crate) async fn start_with_env(
        dir: &Path,
        config: &str,
        port: u16,
        env: &[(&str, &str)],
    ) -> SsoProcess {
        let path = dir.join(format!("sso-{port}.yaml"));
        std::fs::write(&path, config.replace("{PORT}", &port.to_string())).unwrap();
        let log = std::fs::File::create(dir.join(format!("sso-{port}.log"))).unwrap();
        let child = Command::new(BIN)
            .args(["sso", "-c"])
            .arg(&path)
            .envs(env.iter().copied())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let sso = SsoProcess { child, port };
        let up = crate::support::answers_ok(
            &sso.url("/.well-known/openid-configuration"),
            Duration::from_secs(15),
        )
        .await;
        assert!(
            up,
            "sso did not start: {}",
            std::fs::read_to_string(dir.join(format!("sso-{port}.log"))).unwrap_or_default()
        );
        sso
    }

    pub(crate) fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}/sso", self.port)
    }

    pub(crate) fn log(&self, dir: &Path) -> String {
        std::fs::read_to_string(dir.join(format!("sso-{}.log", self.port))).unwrap_or_default()
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer())
    }
}

impl Drop for SsoProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn hash(secret: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .args(["sso", "hash-password"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{secret}\n").as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

pub(crate) fn config() -> String {
    format!(
        "issuer: http://127.0.0.1:{{PORT}}/sso
listen: 127.0.0.1:{{PORT}}
keys: {{ dir: keys, algorithm: ES256 }}
users: {{ file: users.yaml }}
session: {{ secure_cookies: false }}
refresh_reuse_grace: 0s
clients:
  - client_id: billing
    type: confidential
    secret_hash: '{}'
    scopes: [orders.read, orders.write]
    audience: [orders-api]
    roles: [service]
    access_token_ttl: 2h
  - client_id: reports
    type: confidential
    secret_hash: '{}'
    audience: [orders-api]
  - client_id: web-ui
    name: Web UI
    type: public
    redirect_uris: ['http://127.0.0.1:1/callback']
    post_logout_redirect_uris: ['http://127.0.0.1:1/logged-out']
  - client_id: web-ui-es
    name: Web UI (ES256)
    type: public
    first_party: true
    id_token_signed_response_alg: ES256
    redirect_uris: ['http://127.0.0.1:1/callback']
",
        hash("billing-secret"),
        hash("reports-secret"),
    )
}

pub(crate) fn write_users(dir: &Path) {
    std::fs::write(
        dir.join("users.yaml"),
        format!(
            "users:
  - username: alice
    password_hash: '{}'
    email: alice@example.com
    name: Alice Example
    roles: [admin, staff]
  - username: bob
    password_hash: '{}'
",
            hash("alice-password"),
            hash("bob-password")
        ),
    )
    .unwrap();
}

pub(crate) async fn client_credentials(
    sso: &SsoProcess,
    form: &[(&str, &str)],
    basic: Option<(&str, &str)>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut request = client().post(sso.url("/token")).form(form);
    if let Some((id, secret)) = basic {
        request = request.basic_auth(id, Some(secret));
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (
        status,
        response.json().await.unwrap_or(Value::Null),
        headers,
    )
}

/// Verifies a token against the SSO's JWKS, as a relying party would.
async fn verify(sso: &SsoProcess, token: &str) -> (jsonwebtoken::Header, Value) {
    verify_for(sso, token, "orders-api").await
}

async fn verify_for(
    sso: &SsoProcess,
    token: &str,
    audience: &str,
) -> (jsonwebtoken::Header, Value) {
    let jwks: Value = get_json(&sso.url("/jwks")).await;
    let header = jsonwebtoken::decode_header(token).unwrap();
    let kid = header.kid.clone().unwrap();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .expect("the token's key is in JWKS");
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk.clone()).unwrap();
    let key = DecodingKey::from_jwk(&jwk).unwrap();
    let mut validation = Validation::new(header.alg);
    validation.set_issuer(&[sso.issuer()]);
    validation.set_audience(&[audience]);
    let data = jsonwebtoken::decode::<Value>(token, &key, &validation).unwrap();
    (header, data.claims)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_tokens_with_per_client_lifetimes() {
    let dir = tempfile::tempdir().unwrap();
    write_users(dir.path());
    let port = free_port();
    let sso = SsoProcess::start(dir.path(), &config(), port).await;

    let discovery: Value = get_json(&sso.url("/.well-known/openid-configuration")).await;
    assert_eq!(discovery["issuer"], sso.issuer());
    assert_eq!(discovery["jwks_uri"], sso.url("/jwks"));
    assert_eq!(discovery["token_endpoint"], sso.url("/token"));
    // OpenID Connect Core §15.1: RS256 for ID tokens; ES256 is the access
    // tokens' algorithm here, and available to clients that choose it.
    assert_eq!(
        discovery["id_token_signing_alg_values_supported"],
        json!(["ES256", "RS256"])
    );
    assert_eq!(discovery["backchannel_logout_supported"], true);
    assert_eq!(discovery["backchannel_logout_session_supported"], true);
    let closed = client().get(sso.url("/register")).send().await.unwrap();
    assert_eq!(closed.status(), 404, "registration is closed by default");

    // client_secret_basic, a configured 2 h lifetime, RFC 9068 claims.
    let (status, body, headers) = client_credentials(
        &sso,
        &[
            ("grant_type", "client_credentials"),
            ("scope", "orders.read"),
        ],
        Some(("billing", "billing-secret")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 7200);
    assert_eq!(body["scope"], "orders.read");
    let billing_token = body["access_token"].as_str().unwrap().to_owned();
    let (header, claims) = verify(&sso, &billing_token).await;
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    assert_eq!(header.alg, Algorithm::ES256);
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        7200
    );
    assert_eq!(claims["client_id"], "billing");
    assert_eq!(claims["sub"], "billing");
    assert_eq!(claims["roles"], json!(["service"]));
    assert!(claims["jti"].as_str().unwrap().len() >= 20);

    // client_secret_post, the confidential default lifetime (1 h).
    let (status, body, _) = client_credentials(
        &sso,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "reports"),
            ("client_secret", "reports-secret"),
        ],
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["expires_in"], 3600);
    let (_, claims) = verify(&sso, body["access_token"].as_str().unwrap()).await;
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        3600
    );

    // Errors, each with the RFC 6749 code.
    let cc = ("grant_type", "client_credentials");
    type Case<'a> = (
        Vec<(&'a str, &'a str)>,
        Option<(&'a str, &'a str)>,
        u16,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (vec![cc], Some(("billing", "wrong")), 401, "invalid_client"),
        (
            vec![cc],
            Some(("nobody", "billing-secret")),
            401,
            "invalid_client",
        ),
        (vec![cc], None, 401, "invalid_client"),
        (
            vec![
                cc,
                ("client_id", "billing"),
                ("client_secret", "billing-secret"),
            ],
            Some(("billing", "billing-secret")),
            401,
            "invalid_client",
        ),
        (
            vec![cc, ("client_id", "web-ui")],
            None,
            400,
            "unauthorized_client",
        ),
        (
            vec![cc, ("scope", "orders.delete")],
            Some(("billing", "billing-secret")),
            400,
            "invalid_scope",
        ),
        (
            vec![("grant_type", "urn:ietf:params:oauth:grant-type:device_code")],
            Some(("billing", "billing-secret")),
            400,
            "unsupported_grant_type",
        ),
        (
            vec![],
            Some(("billing", "billing-secret")),
            400,
            "invalid_request",
        ),
    ];
    // A public client cannot introspect: naming itself proves nothing.
    let introspect = client()
        .post(sso.url("/introspect"))
        .form(&[("client_id", "web-ui"), ("token", billing_token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(introspect.status(), 401);
    for (i, (form, basic, status, error)) in cases.into_iter().enumerate() {
        let (got, body, headers) = client_credentials(&sso, &form, basic).await;
        assert_eq!(
            (got, body["error"].as_str()),
            (status, Some(error)),
            "case {i}: {body}"
        );
        if status == 401 {
            let challenge = headers["www-authenticate"].to_str().unwrap();
            assert!(
                challenge.starts_with("Basic ") && challenge.contains("error=\"invalid_client\""),
                "case {i}: {challenge}"
            );
        }
        assert!(
            !body.to_string().contains("secret\""),
            "case {i}: no secret echoed"
        );
    }

    // The audit log: one JSON line per issuance and refusal, no secrets.
    let log = std::fs::read_to_string(dir.path().join(format!("sso-{port}.log"))).unwrap();
    let events: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["audit"] == true)
        .collect();
    assert!(events
        .iter()
        .any(|e| e["event"] == "token_issued" && e["client_id"] == "billing"));
    assert!(events
        .iter()
        .any(|e| e["event"] == "token_refused" && e["error"] == "invalid_client"));
    for secret in ["billing-secret", "reports-secret", billing_token.as_str()] {
        assert!(
            !log.contains(secret),
            "the log must not contain secrets or tokens"
        );
    }

    // The gateway trusts the SSO: discovery, JWKS, roles from the token.
    let backend = Backend::start("orders").await;
    let gateway = Gateway::start(&with_plain_listener(&format!(
        "identity:
  providers:
    - name: sso
      issuer: '{}'
      audiences: [orders-api]
upstreams:
  orders: {{ targets: ['{}'] }}
routes:
  - {{ name: orders, upstream: orders, auth: {{ mode: required, roles_any: [service] }} }}
",
        sso.issuer(),
        backend.addr
    )))
    .await;
    let call = |token: Option<String>| {
        let mut request = client().get(gateway.url("/orders/7"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let response = call(Some(billing_token.clone())).await.unwrap();
    assert_eq!(response.status(), 200);
    let echo: Value = response.json().await.unwrap();
    assert_eq!(echo["headers"]["x-user-id"], "billing");
    assert_eq!(call(None).await.unwrap().status(), 401);

    // A restart keeps the keys: tokens issued before still verify.
    let kid_before = jsonwebtoken::decode_header(&billing_token).unwrap().kid;
    drop(sso);
    let sso = SsoProcess::start(dir.path(), &config(), port).await;
    let jwks: Value = get_json(&sso.url("/jwks")).await;
    // One key per algorithm: ES256 for access tokens, RS256 for ID tokens.
    let mut algs: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["alg"].as_str().unwrap())
        .collect();
    algs.sort_unstable();
    assert_eq!(algs, ["ES256", "RS256"]);
    let es = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["alg"] == "ES256")
        .unwrap();
    assert_eq!(es["kid"].as_str(), kid_before.as_deref());
    verify(&sso, &billing_token).await;
    assert!(
        !jwks.to_string().contains("\"d\""),
        "no private parts in JWKS"
    );
}

/// panva's openid-client (npm) as the relying party: every step and error
/// case of tests/oidc/rp.mjs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openid_client_drives_login_refresh_introspection_and_logout() {
    let dir = tempfile::tempdir().unwrap();
    write_users(dir.path());
    let port = free_port();
    let sso = SsoProcess::start(dir.path(), &config(), port).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oidc/rp.mjs");
    let issuer = sso.issuer();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .arg(issuer)
            .output()
            .expect("node")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("ok: every step passed"),
        "{stdout}\n{}\nsso log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        std::fs::read_to_string(dir.path().join(format!("sso-{port}.log"))).unwrap_or_default()
    );
    let log = std::fs::read_to_string(dir.path().join(format!("sso-{port}.log"))).unwrap();
    for secret in ["alice-password", "billing-secret"] {
        assert!(!log.contains(secret), "the log must not contain secrets");
    }
    for event in [
        "\"login\"",
        "\"grant_revoked\"",
        "\"logout\"",
        "\"token_revoked\"",
    ] {
        assert!(log.contains(event), "audit event {event} missing");
    }
}

#[test]
fn sso_config_errors_name_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sso.yaml");
    std::fs::write(
        &path,
        "issuer: https://sso.example.com/
keys: { rotate_every: 1d, publish_ahead: 2d }
clients:
  - { client_id: svc, type: confidential, secret_hash: plain-text-secret }
  - { client_id: ui, type: public, grant_types: [client_credentials] }
  - { client_id: svc, type: confidential, secret_hash: '$argon2id$x', colour: red }
",
    )
    .unwrap();
    let output = Command::new(BIN)
        .args(["sso", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in [
        "sso.yaml:1:9: issuer: must be an http(s) URL without a trailing slash",
        "sso.yaml:2:",
        "keys.publish_ahead: must be shorter than `rotate_every`",
        "clients[0].secret_hash: must be an argon2id hash",
        "clients[1].grant_types: a public client cannot use client_credentials",
        "clients[2].colour: unknown key `colour`",
    ] {
        assert!(
            stderr.contains(expected),
            "missing `{expected}` in:\n{stderr}"
        );
    }
}

/// A minimal browser for the login form: cookies by name, no redirects.
pub(crate) struct Browser {
    http: reqwest::Client,
    cookies: std::sync::Mutex<std::collections::BTreeMap<String, String>>,
}

impl Default for Browser {
    fn default() -> Self {
        Browser::with(Browser::http())
    }
}

impl Browser {
    pub(crate) fn http() -> reqwest::Client {
        Self::builder().build().unwrap()
    }

    fn builder() -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
    }

    fn with(http: reqwest::Client) -> Browser {
        Browser {
            http,
            cookies: std::sync::Mutex::default(),
        }
    }

    pub(crate) fn cookie_header(&self) -> String {
        let cookies = self.cookies.lock().unwrap();
        cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn absorb(&self, response: &reqwest::Response) {
        let mut cookies = self.cookies.lock().unwrap();
        for value in response.headers().get_all("set-cookie") {
            let text = value.to_str().unwrap();
            let (pair, attributes) = text.split_once(';').unwrap_or((text, ""));
            let (name, value) = pair.split_once('=').unwrap();
            if value.is_empty() || attributes.contains("Max-Age=0") {
                cookies.remove(name);
            } else {
                cookies.insert(name.to_owned(), value.to_owned());
            }
        }
    }

    /// A navigation: `Accept: text/html`, as a browser sends.
    pub(crate) async fn navigate(&self, url: &str) -> reqwest::Response {
        let response = self
            .http
            .get(url)
            .header("accept", "text/html,application/xhtml+xml")
            .header("cookie", self.cookie_header())
            .send()
            .await
            .unwrap();
        self.absorb(&response);
        response
    }

    pub(crate) async fn get(&self, url: &str) -> reqwest::Response {
        let response = self
            .http
            .get(url)
            .header("cookie", self.cookie_header())
            .send()
            .await
            .unwrap();
        self.absorb(&response);
        response
    }

    pub(crate) async fn post(&self, url: &str, form: &[(&str, &str)]) -> reqwest::Response {
        let response = self
            .http
            .post(url)
            .header("cookie", self.cookie_header())
            .form(form)
            .send()
            .await
            .unwrap();
        self.absorb(&response);
        response
    }
}

pub(crate) fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("{name} in {html}"))
        + marker.len();
    html[start..].split('"').next().unwrap().to_owned()
}

const CALLBACK: &str = "http://127.0.0.1:1/callback";

pub(crate) fn pkce() -> (String, String) {
    use base64::Engine;
    let verifier = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand_bytes());
    let digest = ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes());
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref());
    (verifier, challenge)
}

fn rand_bytes() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).unwrap();
    bytes
}

pub(crate) fn authorize_url(base: &str, challenge: &str) -> String {
    format!(
        "{base}/authorize?response_type=code&client_id=web-ui&scope=openid%20profile&state=st&redirect_uri={}&code_challenge={challenge}&code_challenge_method=S256",
        CALLBACK.replace(':', "%3A").replace('/', "%2F")
    )
}

pub(crate) fn code_from(response: &reqwest::Response) -> String {
    assert_eq!(response.status(), 303);
    let location = response.headers()["location"].to_str().unwrap();
    assert!(location.starts_with(CALLBACK), "{location}");
    location
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("code="))
        .unwrap()
        .to_owned()
}

/// The login form's answer to one attempt.
pub(crate) async fn try_login(
    browser: &Browser,
    base: &str,
    username: &str,
    password: &str,
) -> reqwest::Response {
    let (_, challenge) = pkce();
    let form = browser.get(&authorize_url(base, &challenge)).await;
    assert_eq!(form.status(), 200);
    let html = form.text().await.unwrap();
    browser
        .post(
            &format!("{base}/login"),
            &[
                ("request", &hidden(&html, "request")),
                ("csrf", &hidden(&html, "csrf")),
                ("username", username),
                ("password", password),
            ],
        )
        .await
}

pub(crate) async fn redeem(base: &str, code: &str, verifier: &str) -> (u16, Value) {
    let response = client()
        .post(format!("{base}/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("client_id", "web-ui"),
            ("code", code),
            ("code_verifier", verifier),
            ("redirect_uri", CALLBACK),
        ])
        .send()
        .await
        .unwrap();
    (
        response.status().as_u16(),
        response.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_redis_sessions_codes_and_refresh_tokens() {
    let redis = crate::support::RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    write_users(dir.path());
    let (port_a, port_b) = (free_port(), free_port());
    // One issuer (the load balancer's address), two listeners.
    let config = config().replace("listen: 127.0.0.1:{PORT}\n", "").replace(
        "issuer: http://127.0.0.1:{PORT}/sso",
        &format!("issuer: http://127.0.0.1:{port_a}/sso"),
    ) + &format!(
        "store: redis\nredis: {{ url: '{}' }}\nlisten: 127.0.0.1:{{PORT}}\n",
        redis.url()
    );
    let a = SsoProcess::start(dir.path(), &config, port_a).await;
    let _b = SsoProcess::start(dir.path(), &config, port_b).await;
    let (base_a, base_b) = (a.issuer(), format!("http://127.0.0.1:{port_b}/sso"));

    // Log in on A; redeem the code and refresh on B.
    let browser = Browser::default();
    let (verifier, challenge) = pkce();
    let form = browser.get(&authorize_url(&base_a, &challenge)).await;
    let html = form.text().await.unwrap();
    let login = browser
        .post(
            &format!("{base_a}/login"),
            &[
                ("request", &hidden(&html, "request")),
                ("csrf", &hidden(&html, "csrf")),
                ("username", "alice"),
                ("password", "alice-password"),
            ],
        )
        .await;
    // web-ui is not first-party: consent first.
    let consent_html = login.text().await.unwrap();
    let consented = allow_consent(&browser, &base_a, &consent_html).await;
    let code = code_from(&consented);
    let (status, tokens) = redeem(&base_b, &code, &verifier).await;
    assert_eq!(status, 200, "{tokens}");
    let refreshed: Value = client()
        .post(format!("{base_b}/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", "web-ui"),
            ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(refreshed["access_token"].is_string(), "{refreshed}");
    let userinfo = client()
        .get(format!("{base_a}/userinfo"))
        .bearer_auth(refreshed["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(userinfo.status(), 200);
    assert_eq!(userinfo.json::<Value>().await.unwrap()["sub"], "alice");

    // The session from A is single sign-on on B too; and a code redeemed by
    // two replicas at once is redeemed once.
    let mut wins = 0;
    for _ in 0..10 {
        let (verifier, challenge) = pkce();
        let code = code_from(&browser.get(&authorize_url(&base_b, &challenge)).await);
        let (first, second) = tokio::join!(
            redeem(&base_a, &code, &verifier),
            redeem(&base_b, &code, &verifier)
        );
        let mut statuses = [first.0, second.0];
        statuses.sort();
        assert_eq!(statuses, [200, 400], "{first:?} {second:?}");
        let loser = if first.0 == 400 { &first.1 } else { &second.1 };
        assert_eq!(loser["error"], "invalid_grant");
        wins += 1;
    }
    assert_eq!(wins, 10);
    assert!(a.log(dir.path()).contains("\"code_issued\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brute_force_locks_without_telling_whether_the_account_exists() {
    let dir = tempfile::tempdir().unwrap();
    write_users(dir.path());
    let port = free_port();
    // A lockout longer than the test, so a slow machine cannot see one expire.
    let config = config() + "login: { max_failures: 5, lockout: 300s }\n";
    let sso = SsoProcess::start(dir.path(), &config, port).await;
    let base = sso.issuer();

    let mut answers: Vec<Vec<(u16, String)>> = Vec::new();
    for username in ["alice", "mallory"] {
        let browser = Browser::default();
        let mut seen = Vec::new();
        for attempt in 0..20 {
            let response = try_login(&browser, &base, username, &format!("guess-{attempt}")).await;
            let status = response.status().as_u16();
            let retry_after = response.headers().get("retry-after").is_some();
            let html = response.text().await.unwrap();
            let message = html
                .split("role=\"alert\">")
                .nth(1)
                .and_then(|m| m.split('<').next())
                .unwrap_or("")
                .to_owned();
            assert_eq!(retry_after, status == 429, "attempt {attempt}");
            // The countdown differs by when the attempt ran, not by account.
            let message: String = message.chars().filter(|c| !c.is_ascii_digit()).collect();
            seen.push((status, message));
        }
        answers.push(seen);
    }
    // The same answers for an existing and an unknown account.
    assert_eq!(answers[0], answers[1]);
    let statuses: Vec<u16> = answers[0].iter().map(|(s, _)| *s).collect();
    assert_eq!(&statuses[..4], [401; 4]);
    assert!(statuses[4..].iter().all(|s| *s == 429), "{statuses:?}");
    assert_eq!(answers[0][0].1, "Wrong user name or password.");
    assert_eq!(
        answers[0][19].1,
        "Too many failed attempts. Wait  seconds and try again."
    );
    // Locked: even the right password is refused for now.
    let right = try_login(&Browser::default(), &base, "alice", "alice-password").await;
    assert_eq!(right.status(), 429);
    // Other accounts are not locked by alice's lock: bob signs in.
    let bob = try_login(&Browser::default(), &base, "bob", "bob-password").await;
    assert_eq!(bob.status(), 200, "bob reaches the consent page");
    // Spraying accounts from one address: 4 × 5 failures lock the address
    // (alice's and mallory's 5 each, then two more accounts).
    for username in ["carol", "dave"] {
        for attempt in 0..5 {
            let status = try_login(&Browser::default(), &base, username, "x")
                .await
                .status();
            let expected = if attempt == 4 { 429 } else { 401 };
            assert_eq!(status, expected, "{username} attempt {attempt}");
        }
    }
    let bob = try_login(&Browser::default(), &base, "bob", "bob-password").await;
    assert_eq!(bob.status(), 429, "the address is locked");
    let log = sso.log(dir.path());
    assert!(log.contains("\"login_failed\""));
    assert!(!log.contains("guess-"), "no passwords in the log");
}

/// The Rust `openidconnect` crate as the relying party: the same happy path
/// as the npm client's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openidconnect_crate_happy_path() {
    use openidconnect::core::{
        CoreAuthenticationFlow, CoreClient, CoreJwsSigningAlgorithm, CoreRevocableToken,
    };
    use openidconnect::{
        AccessTokenHash, AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl,
        LogoutRequest, Nonce, OAuth2TokenResponse, PkceCodeChallenge, PostLogoutRedirectUrl,
        ProviderMetadataWithLogout, RedirectUrl, Scope, TokenIntrospectionResponse, TokenResponse,
    };

    // Behind the gateway on TLS, as in production: the crate refuses plain
    // HTTP for revocation (RFC 7009 §2), rightly.
    let ca = crate::tls::TestCa::new("sso-test-ca");
    let leaf = ca.leaf(&["sso.test"], false);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("sso.crt"), &leaf.cert_pem).unwrap();
    std::fs::write(dir.path().join("sso.key"), &leaf.key_pem).unwrap();
    write_users(dir.path());
    let port = free_port();
    let gateway = Gateway::start(&format!(
        "listeners:
  - name: tls
    address: 127.0.0.1:{{PORT}}
    tls: {{ certificates: [{{ cert: '{0}/sso.crt', key: '{0}/sso.key' }}] }}
admin: {{ address: 127.0.0.1:{{ADMIN}} }}
portal: {{ enabled: true, refresh_interval: 500ms }}
upstreams:
  sso: {{ targets: ['127.0.0.1:{port}'] }}
routes:
  - {{ name: sso, match: {{ path_prefix: /sso }}, upstream: sso, openapi: /sso/openapi.json }}
",
        dir.path().display()
    ))
    .await;
    let issuer = format!("https://sso.test:{}/sso", gateway.port);
    let config = config().replace(
        "issuer: http://127.0.0.1:{PORT}/sso",
        &format!("issuer: {issuer}"),
    ) + &format!(
        "  - client_id: portal
    type: confidential
    first_party: true
    secret_hash: '{}'
    grant_types: [authorization_code, refresh_token, client_credentials]
    redirect_uris: ['{CALLBACK}']
    post_logout_redirect_uris: ['http://127.0.0.1:1/logged-out']
",
        hash("portal-secret")
    );
    // Readiness is checked on the SSO's own port (same /sso path).
    let _sso = SsoProcess::start(dir.path(), &config, port).await;
    let http = Browser::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
        .resolve("sso.test", ([127, 0, 0, 1], gateway.port).into())
        .build()
        .unwrap();
    let url_of = |path: &str| format!("{issuer}{path}");

    let metadata =
        ProviderMetadataWithLogout::discover_async(IssuerUrl::new(issuer.clone()).unwrap(), &http)
            .await
            .expect("discovery");
    let end_session = metadata
        .additional_metadata()
        .end_session_endpoint
        .clone()
        .expect("end_session_endpoint");
    let oidc = CoreClient::from_provider_metadata(
        metadata,
        ClientId::new("portal".into()),
        Some(ClientSecret::new("portal-secret".into())),
    )
    .set_redirect_uri(RedirectUrl::new(CALLBACK.into()).unwrap())
    .set_introspection_url(openidconnect::IntrospectionUrl::new(url_of("/introspect")).unwrap())
    .set_revocation_url(openidconnect::RevocationUrl::new(url_of("/revoke")).unwrap());

    // Code + PKCE through the login form.
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, state, nonce) = oidc
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .add_scope(Scope::new("profile".into()))
        .add_scope(Scope::new("email".into()))
        .set_pkce_challenge(challenge)
        .url();
    let browser = Browser::with(http.clone());
    let form = browser.get(url.as_str()).await;
    let html = form.text().await.unwrap();
    let callback = browser
        .post(
            &url_of("/login"),
            &[
                ("request", &hidden(&html, "request")),
                ("csrf", &hidden(&html, "csrf")),
                ("username", "alice"),
                ("password", "alice-password"),
            ],
        )
        .await;
    let location =
        openidconnect::url::Url::parse(callback.headers()["location"].to_str().unwrap()).unwrap();
    let query: std::collections::HashMap<_, _> = location.query_pairs().into_owned().collect();
    assert_eq!(query["state"], *state.secret());
    let tokens = oidc
        .exchange_code(AuthorizationCode::new(query["code"].clone()))
        .unwrap()
        .set_pkce_verifier(verifier)
        .request_async(&http)
        .await
        .expect("code exchange");

    // The ID token: signature (RS256, the default for a client that does
    // not choose, via JWKS), iss, aud, nonce, at_hash.
    let verifier = oidc
        .id_token_verifier()
        .set_allowed_algs(vec![CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256]);
    let id_token = tokens.id_token().expect("id token");
    let claims = id_token.claims(&verifier, &nonce).expect("valid ID token");
    assert_eq!(claims.subject().as_str(), "alice");
    assert!(claims.auth_time().is_some());
    let expected_hash = AccessTokenHash::from_token(
        tokens.access_token(),
        id_token.signing_alg().unwrap(),
        id_token.signing_key(&verifier).unwrap(),
    )
    .unwrap();
    assert_eq!(claims.access_token_hash(), Some(&expected_hash));

    // Userinfo.
    let info: openidconnect::core::CoreUserInfoClaims = oidc
        .user_info(
            tokens.access_token().clone(),
            Some(claims.subject().clone()),
        )
        .unwrap()
        .request_async(&http)
        .await
        .expect("userinfo");
    assert_eq!(info.email().map(|e| e.as_str()), Some("alice@example.com"));

    // Refresh with rotation.
    let refresh = tokens.refresh_token().expect("refresh token");
    let refreshed = oidc
        .exchange_refresh_token(refresh)
        .unwrap()
        .request_async(&http)
        .await
        .expect("refresh");
    assert_ne!(
        refreshed.refresh_token().unwrap().secret(),
        refresh.secret(),
        "rotated"
    );

    // Client credentials, introspection, revocation.
    let service = oidc
        .exchange_client_credentials()
        .unwrap()
        .request_async(&http)
        .await
        .expect("client credentials");
    let active = oidc
        .introspect(service.access_token())
        .request_async(&http)
        .await
        .unwrap();
    assert!(active.active());
    oidc.revoke_token(CoreRevocableToken::from(service.access_token().clone()))
        .unwrap()
        .request_async(&http)
        .await
        .expect("revocation");
    let inactive = oidc
        .introspect(service.access_token())
        .request_async(&http)
        .await
        .unwrap();
    assert!(!inactive.active());

    // RP-initiated logout.
    let logout = LogoutRequest::from(end_session)
        .set_id_token_hint(id_token)
        .set_post_logout_redirect_uri(
            PostLogoutRedirectUrl::new("http://127.0.0.1:1/logged-out".into()).unwrap(),
        )
        .set_state(CsrfToken::new("bye".into()))
        .http_get_url();
    let response = browser.get(logout.as_str()).await;
    assert_eq!(response.status(), 303);
    assert_eq!(
        response.headers()["location"],
        "http://127.0.0.1:1/logged-out?state=bye"
    );

    // The SSO's own API document (utoipa) is valid, and the gateway's
    // portal merges it under the route like any backend's.
    let own = http.get(url_of("/openapi.json")).send().await.unwrap();
    let own = own.bytes().await.unwrap();
    crate::support::assert_valid_openapi(&own, "the SSO's document");
    let portal = format!("https://sso.test:{}/openapi.json", gateway.port);
    let merged = eventually(Duration::from_secs(10), || async {
        let doc: Value = http
            .get(&portal)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        doc.pointer("/paths/~1sso~1token/post").is_some()
    })
    .await;
    assert!(merged, "the portal shows the SSO's endpoints under /sso");
}

/// Rotation seen by a relying party that caches JWKS for the `max-age` the
/// SSO announces: every token's key is already in its cache, and tokens of
/// a retired key keep validating until they expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_never_outruns_a_caching_relying_party() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = format!(
        "issuer: http://127.0.0.1:{{PORT}}/sso
listen: 127.0.0.1:{{PORT}}
keys: {{ dir: keys, rotate_every: 6s, publish_ahead: 3s }}
defaults:
  public: {{ access_token_ttl: 4s, id_token_ttl: 4s, refresh_token_ttl: 60s }}
  confidential: {{ access_token_ttl: 4s, id_token_ttl: 4s, refresh_token_ttl: 60s }}
clients:
  - {{ client_id: svc, type: confidential, secret_hash: '{}', audience: [orders-api] }}
",
        hash("svc-secret")
    );
    let sso = SsoProcess::start(dir.path(), &config, port).await;

    // The relying party's cache: the key set and when it may be reused until.
    let fetch_jwks = || async {
        let response = client().get(sso.url("/jwks")).send().await.unwrap();
        let max_age: u64 = response.headers()["cache-control"]
            .to_str()
            .unwrap()
            .split("max-age=")
            .nth(1)
            .and_then(|v| v.parse().ok())
            .expect("max-age");
        let jwks: Value = response.json().await.unwrap();
        (
            jwks,
            std::time::Instant::now() + Duration::from_secs(max_age),
        )
    };
    // The access tokens' keys (ES256; RS256 keys for ID tokens rotate
    // beside them on the same schedule).
    let kids = |jwks: &Value| -> Vec<String> {
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| k["alg"] == "ES256")
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect()
    };
    let (mut cached, mut fresh_until) = fetch_jwks().await;
    let mut issued: Vec<(String, String, u64)> = Vec::new();
    let mut signing_kids: Vec<String> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(16);
    let mut checks = 0;
    while std::time::Instant::now() < deadline {
        if std::time::Instant::now() >= fresh_until {
            (cached, fresh_until) = fetch_jwks().await;
        }
        let (status, body, _) = client_credentials(
            &sso,
            &[("grant_type", "client_credentials")],
            Some(("svc", "svc-secret")),
        )
        .await;
        assert_eq!(status, 200);
        let token = body["access_token"].as_str().unwrap().to_owned();
        let kid = jsonwebtoken::decode_header(&token).unwrap().kid.unwrap();
        assert!(
            kids(&cached).contains(&kid),
            "a token signed by {kid}, not in the relying party's cache {:?}",
            kids(&cached)
        );
        if signing_kids.last() != Some(&kid) {
            signing_kids.push(kid.clone());
        }
        let exp = verify(&sso, &token).await.1["exp"].as_u64().unwrap();
        issued.push((token, kid, exp));
        // Every unexpired token still validates against the current set.
        let now = crate::support::unix_now();
        let (current, _) = fetch_jwks().await;
        for (old, old_kid, exp) in &issued {
            if *exp > now + 1 {
                assert!(
                    kids(&current).contains(old_kid),
                    "{old_kid} retired too early"
                );
                verify(&sso, old).await;
            }
        }
        checks += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        signing_kids.len() >= 3,
        "at least two rotations in 16 s: {signing_kids:?}"
    );
    // Retired keys leave once their tokens expired: the set stays small.
    let (current, _) = fetch_jwks().await;
    assert!(kids(&current).len() <= 3, "{:?}", kids(&current));
    assert!(!kids(&current).contains(&signing_kids[0]));
    assert!(checks > 30);
}

pub(crate) async fn register(
    browser: &Browser,
    base: &str,
    request: &str,
    fields: &[(&str, &str)],
) -> reqwest::Response {
    let page = browser
        .get(&format!("{base}/register?request={request}"))
        .await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    let csrf = hidden(&html, "csrf");
    let mut form: Vec<(&str, &str)> = vec![("request", request), ("csrf", &csrf)];
    form.extend_from_slice(fields);
    browser.post(&format!("{base}/register"), &form).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_open_invite_only_and_the_legacy_password_grant() {
    let dir = tempfile::tempdir().unwrap();
    write_users(dir.path());
    let port = free_port();
    let open_config = config().replace(
        "users: { file: users.yaml }",
        "users: { file: users.yaml, registration: open, registered_roles: [member] }",
    ) + &format!(
        "  - client_id: legacy
    type: confidential
    secret_hash: '{}'
    grant_types: [password]
",
        hash("legacy-secret")
    );
    let sso = SsoProcess::start(dir.path(), &open_config, port).await;
    let base = sso.issuer();
    let carol = [
        ("username", "carol"),
        ("name", "Carol"),
        ("email", "carol@example.com"),
        ("password", "carol-password-1"),
        ("confirm", "carol-password-1"),
    ];

    // Standalone registration signs the new user in.
    let browser = Browser::default();
    let created = register(&browser, &base, "", &carol).await;
    assert_eq!(created.status(), 200);
    assert!(browser.cookie_header().contains("portcullis_sso="));
    // The same name again, a short password, mismatched passwords.
    let again = register(&Browser::default(), &base, "", &carol).await;
    assert_eq!(again.status(), 409);
    assert!(again
        .text()
        .await
        .unwrap()
        .contains("That user name is taken."));
    let mut short = carol;
    short[0] = ("username", "dan");
    short[3] = ("password", "short");
    short[4] = ("confirm", "short");
    assert_eq!(
        register(&Browser::default(), &base, "", &short)
            .await
            .status(),
        400
    );
    let taken_from_file = [("username", "alice"), carol[3], carol[4]];
    assert_eq!(
        register(&Browser::default(), &base, "", &taken_from_file)
            .await
            .status(),
        409
    );
    // Without the CSRF cookie the form is refused.
    let forged = Browser::http()
        .post(format!("{base}/register"))
        .form(&[
            ("csrf", "x"),
            ("username", "eve"),
            ("password", "p"),
            ("confirm", "p"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);

    // Registration from an authorization request continues it.
    let browser = Browser::default();
    let (verifier, challenge) = pkce();
    let login_page = browser
        .get(&authorize_url(&base, &challenge))
        .await
        .text()
        .await
        .unwrap();
    assert!(login_page.contains("Create an account"));
    let request = hidden(&login_page, "request");
    let mut erin = carol;
    erin[0] = ("username", "erin");
    let consent = register(&browser, &base, &request, &erin).await;
    let html = consent.text().await.unwrap();
    let code = code_from(&allow_consent(&browser, &base, &html).await);
    let (status, tokens) = redeem(&base, &code, &verifier).await;
    assert_eq!(status, 200, "{tokens}");
    let (_, claims) = verify_for(&sso, tokens["access_token"].as_str().unwrap(), "web-ui").await;
    assert_eq!(claims["sub"], "erin");
    assert_eq!(claims["roles"], json!(["member"]));

    // The legacy password grant, for the one client allowed it.
    let grant = |client_id: &'static str, secret: &'static str, password: &'static str| {
        client()
            .post(format!("{base}/token"))
            .basic_auth(client_id, Some(secret))
            .form(&[
                ("grant_type", "password"),
                ("username", "carol"),
                ("password", password),
                ("scope", "openid profile"),
            ])
            .send()
    };
    let ok = grant("legacy", "legacy-secret", "carol-password-1")
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let body: Value = ok.json().await.unwrap();
    assert!(body["id_token"].is_string());
    let wrong = grant("legacy", "legacy-secret", "nope").await.unwrap();
    assert_eq!(wrong.status(), 400);
    assert_eq!(
        wrong.json::<Value>().await.unwrap()["error"],
        "invalid_grant"
    );
    let not_allowed = grant("billing", "billing-secret", "carol-password-1")
        .await
        .unwrap();
    assert_eq!(
        not_allowed.json::<Value>().await.unwrap()["error"],
        "unauthorized_client"
    );
    let discovery = get_json(&sso.url("/.well-known/openid-configuration")).await;
    assert!(discovery["grant_types_supported"]
        .as_array()
        .unwrap()
        .contains(&json!("password")));
    drop(sso);

    // Invite-only: a code works once.
    let port = free_port();
    let invite_config = config().replace(
        "users: { file: users.yaml }",
        "users: { file: users.yaml, registration: invite_only, invites: [INVITE-7f3a] }",
    );
    let sso = SsoProcess::start(dir.path(), &invite_config, port).await;
    let base = sso.issuer();
    let mut frank = carol;
    frank[0] = ("username", "frank");
    assert_eq!(
        register(&Browser::default(), &base, "", &frank)
            .await
            .status(),
        403
    );
    let with_invite: Vec<(&str, &str)> = frank
        .iter()
        .copied()
        .chain([("invite", "INVITE-7f3a")])
        .collect();
    assert_eq!(
        register(&Browser::default(), &base, "", &with_invite)
            .await
            .status(),
        200
    );
    let mut gina: Vec<(&str, &str)> = with_invite.clone();
    gina[0] = ("username", "gina");
    assert_eq!(
        register(&Browser::default(), &base, "", &gina)
            .await
            .status(),
        403
    );
}

/// `private_key_jwt` (RFC 7523): a client proves itself with a JWT signed
/// by its own key; replays, foreign keys, wrong audiences and HMAC tricks
/// are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_key_jwt_client_authentication() {
    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt");
    let jwks: Value =
        serde_json::from_slice(&std::fs::read(format!("{FIXTURES}/public-jwks.json")).unwrap())
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_users(dir.path());
    let port = free_port();
    let config = config()
        + &format!(
            "  - client_id: signer
    type: confidential
    jwks: [{}, {}]
",
            jwks["rsa-a"], jwks["ec-p256"]
        );
    let sso = SsoProcess::start(dir.path(), &config, port).await;
    let token_endpoint = sso.url("/token");
    let pem = |name: &str| std::fs::read(format!("{FIXTURES}/{name}.pem")).unwrap();
    let assertion = |alg: jsonwebtoken::Algorithm, key: &str, kid: &str, claims: Value| {
        let mut header = jsonwebtoken::Header::new(alg);
        header.kid = Some(kid.into());
        let key = match alg {
            Algorithm::ES256 => jsonwebtoken::EncodingKey::from_ec_pem(&pem(key)).unwrap(),
            _ => jsonwebtoken::EncodingKey::from_rsa_pem(&pem(key)).unwrap(),
        };
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    };
    let now = crate::support::unix_now();
    let claims = |jti: &str| {
        json!({ "iss": "signer", "sub": "signer", "aud": token_endpoint, "jti": jti,
            "iat": now, "exp": now + 60 })
    };
    let post = |assertion: String| {
        client()
            .post(sso.url("/token"))
            .form(&[
                ("grant_type", "client_credentials"),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_assertion", &assertion),
            ])
            .send()
    };
    let good = assertion(Algorithm::RS256, "rsa-a", "rsa-a", claims("one"));
    let ok = post(good.clone()).await.unwrap();
    assert_eq!(ok.status(), 200);
    let es = assertion(Algorithm::ES256, "ec-p256", "ec-p256", claims("two"));
    assert_eq!(post(es).await.unwrap().status(), 200);

    let mut wrong_aud = claims("three");
    wrong_aud["aud"] = "https://elsewhere.example".into();
    let mut expired = claims("four");
    expired["exp"] = (now - 120).into();
    let mut too_long = claims("five");
    too_long["exp"] = (now + 3600).into();
    let mut no_jti = claims("x");
    no_jti.as_object_mut().unwrap().remove("jti");
    let hmac = {
        // The client's public key (its modulus text) as an HMAC secret.
        let secret = jwks["rsa-a"]["n"].as_str().unwrap().as_bytes().to_vec();
        let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
        header.kid = Some("rsa-a".into());
        jsonwebtoken::encode(
            &header,
            &claims("six"),
            &jsonwebtoken::EncodingKey::from_secret(&secret),
        )
        .unwrap()
    };
    let cases = [
        ("replayed", good),
        (
            "foreign key",
            assertion(Algorithm::RS256, "rsa-b", "rsa-a", claims("seven")),
        ),
        (
            "wrong audience",
            assertion(Algorithm::RS256, "rsa-a", "rsa-a", wrong_aud),
        ),
        (
            "expired",
            assertion(Algorithm::RS256, "rsa-a", "rsa-a", expired),
        ),
        (
            "lives too long",
            assertion(Algorithm::RS256, "rsa-a", "rsa-a", too_long),
        ),
        (
            "no jti",
            assertion(Algorithm::RS256, "rsa-a", "rsa-a", no_jti),
        ),
        ("HS256 with the public key", hmac),
        ("garbage", "a.b.c".to_owned()),
    ];
    for (name, assertion) in cases {
        let response = post(assertion).await.unwrap();
        assert_eq!(response.status(), 401, "{name}");
        assert_eq!(
            response.json::<Value>().await.unwrap()["error"],
            "invalid_client",
            "{name}"
        );
    }
}

/// A client that sends its request head a byte at a time is cut off by the
/// header deadline; SIGTERM ends the process cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_sigterm_exits() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    write_users(dir.path());
    let port = free_port();
    let config = config() + "limits: { header_read_timeout: 1s }\n";
    let mut sso = SsoProcess::start(dir.path(), &config, port).await;

    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let head = b"GET /sso/jwks HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";
    let mut closed = false;
    for byte in head.iter().cycle().take(40) {
        if stream.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(_)) => {
                // hyper answers 408 before closing.
                closed = true;
                break;
            }
            Err(_) => {}
        }
    }
    let elapsed = started.elapsed();
    assert!(closed, "still open after {elapsed:?}");
    assert!(
        elapsed < Duration::from_secs(4),
        "cut off after {elapsed:?}"
    );
    // Other clients are unaffected.
    assert_eq!(
        client()
            .get(sso.url("/jwks"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let pid = sso.child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = tokio::task::spawn_blocking(move || sso.child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

/// The user allows the consent page `html`.
pub(crate) async fn allow_consent(browser: &Browser, base: &str, html: &str) -> reqwest::Response {
    browser
        .post(
            &format!("{base}/consent"),
            &[
                ("request", &hidden(html, "request")),
                ("csrf", &hidden(html, "csrf")),
                ("decision", "allow"),
            ],
        )
        .await
}

/// Whether the browser's session answers an authorization at once.
pub(crate) async fn signed_in(browser: &Browser, base: &str) -> bool {
    let (_, challenge) = pkce();
    browser.get(&authorize_url(base, &challenge)).await.status() == 303
}

/// Logout without an ID token hint asks first (no logout CSRF); the form's
/// answer signs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_without_a_hint_asks_first() {
    let dir = tempfile::tempdir().unwrap();
    write_users(dir.path());
    let port = free_port();
    let sso = SsoProcess::start(dir.path(), &config(), port).await;
    let base = sso.issuer();
    let browser = Browser::default();
    let consent = try_login(&browser, &base, "alice", "alice-password").await;
    let html = consent.text().await.unwrap();
    code_from(&allow_consent(&browser, &base, &html).await);
    assert!(signed_in(&browser, &base).await);

    // A page elsewhere linking to end_session gets a question, not a logout.
    let question = browser.get(&format!("{base}/end_session")).await;
    assert_eq!(question.status(), 200);
    let page = question.text().await.unwrap();
    assert!(page.contains("Sign out?"));
    assert!(signed_in(&browser, &base).await, "still signed in");
    // A forged answer (no matching cookie) changes nothing.
    let forged = Browser::http()
        .post(format!("{base}/end_session"))
        .header(
            "cookie",
            browser
                .cookie_header()
                .replace("portcullis_sso_csrf=", "x="),
        )
        .form(&[("csrf", hidden(&page, "csrf").as_str())])
        .send()
        .await
        .unwrap();
    assert!(forged.text().await.unwrap().contains("Sign out?"));
    assert!(signed_in(&browser, &base).await, "still signed in");
    // The user's own answer signs out.
    let answer = browser
        .post(
            &format!("{base}/end_session"),
            &[("csrf", &hidden(&page, "csrf"))],
        )
        .await;
    assert_eq!(answer.status(), 200);
    assert!(answer.text().await.unwrap().contains("You are signed out."));
    assert!(!signed_in(&browser, &base).await, "signed out");
}

/// The SSO with a confidential, first-party client `gateway` whose redirect
/// URIs are the gateways on `gateway_ports`.
pub(crate) async fn sso_with_gateway_client(
    dir: &Path,
    sso_port: u16,
    gateway_ports: &[u16],
) -> SsoProcess {
    sso_with_gateway_client_and(dir, sso_port, gateway_ports, "", "").await
}

/// The same, with more keys for the `gateway` client (`client_extra`, each
/// line indented four spaces) and for the SSO (`sso_extra`, top level).
/// The client's back-channel logout URI is the first gateway's.
pub(crate) async fn sso_with_gateway_client_and(
    dir: &Path,
    sso_port: u16,
    gateway_ports: &[u16],
    client_extra: &str,
    sso_extra: &str,
) -> SsoProcess {
    let redirects: Vec<String> = gateway_ports
        .iter()
        .map(|p| format!("'http://127.0.0.1:{p}/_auth/callback'"))
        .collect();
    let logouts: Vec<String> = gateway_ports
        .iter()
        .map(|p| format!("'http://127.0.0.1:{p}/bye'"))
        .collect();
    let config = config()
        + &format!(
            "  - client_id: gateway
    type: confidential
    first_party: true
    secret_hash: '{}'
    grant_types: [authorization_code, refresh_token]
    redirect_uris: [{}]
    post_logout_redirect_uris: [{}]
    audience: [api]
    backchannel_logout_uri: 'http://127.0.0.1:{}/_auth/backchannel-logout'
{client_extra}",
            hash("gateway-secret"),
            redirects.join(", "),
            logouts.join(", "),
            gateway_ports[0],
        );
    let config = format!("{sso_extra}{config}");
    SsoProcess::start(dir, &config, sso_port).await
}

/// A backend publishing one operation, `GET /items`.
pub(crate) async fn app_backend() -> Backend {
    let backend = Backend::start("app").await;
    *backend.openapi.lock().unwrap() = Some(
        json!({"openapi": "3.0.3", "info": {"title": "app", "version": "1"},
            "paths": {"/items": {"get": {"responses": {"200": {"description": "ok"}}}}}})
        .to_string(),
    );
    backend
}

/// A gateway on `port` signing browsers in at `sso`; `/app` needs role
/// `admin` and sends browsers to sign in. `login_extra` adds keys to
/// `identity.login`; `rest` adds top-level sections.
pub(crate) fn login_gateway_config(
    port: u16,
    sso: &SsoProcess,
    backend: &Backend,
    rest: &str,
) -> String {
    let (login_extra, rest) = rest.split_once("||").unwrap_or(("", rest));
    format!(
        "listeners: [ {{ name: plain, address: '127.0.0.1:{port}' }} ]
admin: {{ address: '127.0.0.1:{{ADMIN}}' }}
identity:
  providers:
    - {{ name: sso, issuer: '{issuer}', audiences: [api] }}
  login:
    provider: sso
    client_id: gateway
    client_secret: gateway-secret
    scopes: [openid, profile]
    public_url: 'http://127.0.0.1:{port}'
    post_logout_path: /bye
    secure_cookies: false
{login_extra}portal: {{ enabled: true, refresh_interval: 500ms }}
upstreams:
  app: {{ targets: ['{backend}'] }}
routes:
  - {{ name: app, match: {{ path_prefix: /app }}, upstream: app, strip_prefix: true, openapi: /openapi.json,
       auth: {{ mode: required, roles_any: [admin], login_redirect: true }} }}
  - {{ name: bye, match: {{ path: /bye }}, upstream: app, auth: {{ mode: none }} }}
{rest}",
        issuer = sso.issuer(),
        backend = backend.addr
    )
}

/// Alice submits the SSO's login form `form`.
pub(crate) async fn alice_signs_in(
    browser: &Browser,
    sso: &SsoProcess,
    form: &str,
) -> reqwest::Response {
    browser
        .post(
            &sso.url("/login"),
            &[
                ("request", &hidden(form, "request")),
                ("csrf", &hidden(form, "csrf")),
                ("username", "alice"),
                ("password", "alice-password"),
            ],
        )
        .await
}

/// Signs `browser` in through gateway `gw` (login page, SSO form) and
/// returns the gateway's callback URL, not yet visited.
pub(crate) async fn sign_in_at_sso(browser: &Browser, gw: &str, sso: &SsoProcess) -> String {
    sign_in_as(browser, gw, sso, "alice", "alice-password").await
}

/// The same for any user.
pub(crate) async fn sign_in_as(
    browser: &Browser,
    gw: &str,
    sso: &SsoProcess,
    username: &str,
    password: &str,
) -> String {
    let first = browser.navigate(&format!("{gw}/app/items")).await;
    assert_eq!(first.status(), 302);
    let to_login = first.headers()["location"].to_str().unwrap().to_owned();
    let to_sso = browser.navigate(&format!("{gw}{to_login}")).await;
    let authorize = to_sso.headers()["location"].to_str().unwrap().to_owned();
    let form = browser.navigate(&authorize).await.text().await.unwrap();
    let back = browser
        .post(
            &sso.url("/login"),
            &[
                ("request", &hidden(&form, "request")),
                ("csrf", &hidden(&form, "csrf")),
                ("username", username),
                ("password", password),
            ],
        )
        .await;
    assert_eq!(back.status(), 303);
    back.headers()["location"].to_str().unwrap().to_owned()
}

/// The user's logout at gateway `gw`: the confirmation page, then its form.
pub(crate) async fn sign_out_at_gateway(browser: &Browser, gw: &str) -> reqwest::Response {
    let page = browser.navigate(&format!("{gw}/_auth/logout")).await;
    assert_eq!(page.status(), 200, "a confirmation page");
    let html = page.text().await.unwrap();
    browser
        .post(
            &format!("{gw}/_auth/logout"),
            &[("csrf", &hidden(&html, "csrf"))],
        )
        .await
}

/// Sessions in Redis: a login begun on one gateway finishes on another,
/// and the session works on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_sessions_in_redis_work_on_every_replica() {
    let redis = crate::support::RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    write_users(dir.path());
    let (sso_port, port_a, port_b) = (free_port(), free_port(), free_port());
    let sso = sso_with_gateway_client(dir.path(), sso_port, &[port_a, port_b]).await;
    let backend = app_backend().await;
    let shared = format!("    store: redis\n||redis: {{ url: '{}' }}\n", redis.url());
    let _a = Gateway::start(&login_gateway_config(port_a, &sso, &backend, &shared)).await;
    let _b = Gateway::start(&login_gateway_config(port_b, &sso, &backend, &shared)).await;
    let (a, b) = (
        format!("http://127.0.0.1:{port_a}"),
        format!("http://127.0.0.1:{port_b}"),
    );

    let browser = Browser::default();
    // Begun on A; the provider's answer arrives at B (a load balancer's choice).
    let callback = sign_in_at_sso(&browser, &a, &sso).await;
    let on_b = callback.replacen(&a, &b, 1);
    let landed = browser.navigate(&on_b).await;
    assert_eq!(landed.status(), 302, "B finishes a login A began");
    for gw in [&a, &b] {
        let page = browser.navigate(&format!("{gw}/app/items")).await;
        assert_eq!(page.status(), 200, "{gw}");
        let echo: Value = page.json().await.unwrap();
        assert_eq!(echo["headers"]["x-user-id"], "alice");
    }
    // Logout on B ends the session for A too (signin.rs replays the old
    // cookie on both).
    let out = sign_out_at_gateway(&browser, &b).await;
    assert_eq!(out.status(), 302);
    let again = browser.navigate(&format!("{a}/app/items")).await;
    assert_eq!(again.status(), 302, "signed out on every replica");
    // The same callback cannot be replayed.
    assert_eq!(browser.navigate(&on_b).await.status(), 403);
}

/// The gateway signs browsers in at the SSO (code + PKCE, confidential
/// client): the session cookie then works like a bearer token on routes and
/// in the portal, never reaches the backend, and logout ends both sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_browser_login_with_the_sso() {
    let dir = tempfile::tempdir().unwrap();
    write_users(dir.path());
    let (sso_port, gw_port) = (free_port(), free_port());
    let gw = format!("http://127.0.0.1:{gw_port}");
    let sso = sso_with_gateway_client(dir.path(), sso_port, &[gw_port]).await;
    let backend = app_backend().await;
    let _gateway = Gateway::start(&login_gateway_config(gw_port, &sso, &backend, "")).await;

    let browser = Browser::default();
    // A browser without a session is sent to sign in; an API client gets 401.
    let first = browser.navigate(&format!("{gw}/app/items")).await;
    assert_eq!(first.status(), 302);
    let to_login = first.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(to_login, "/_auth/login?rd=%2Fapp%2Fitems");
    let api = client()
        .get(format!("{gw}/app/items"))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 401);
    // The gateway sends it to the SSO with PKCE; the user signs in there.
    let to_sso = browser.navigate(&format!("{gw}{to_login}")).await;
    assert_eq!(to_sso.status(), 302);
    let authorize = to_sso.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        authorize.starts_with(&sso.url("/authorize?")),
        "{authorize}"
    );
    assert!(authorize.contains("code_challenge_method=S256"));
    let form = browser.navigate(&authorize).await.text().await.unwrap();
    let back = alice_signs_in(&browser, &sso, &form).await;
    assert_eq!(back.status(), 303);
    let callback = back.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        callback.starts_with(&format!("{gw}/_auth/callback?code=")),
        "{callback}"
    );
    // A callback without the browser's state cookie is refused.
    let forged = client().get(&callback).send().await.unwrap();
    assert_eq!(forged.status(), 403);
    let landed = browser.navigate(&callback).await;
    assert_eq!(landed.status(), 302);
    assert_eq!(landed.headers()["location"], "/app/items");
    assert!(browser.cookie_header().contains("portcullis_session="));

    // The session works like a bearer token; the backend sees identity
    // headers, never the session cookie or a token.
    let page = browser.navigate(&format!("{gw}/app/items")).await;
    assert_eq!(page.status(), 200);
    let echo: Value = page.json().await.unwrap();
    assert_eq!(echo["headers"]["x-user-id"], "alice");
    assert!(echo["headers"].get("authorization").is_none());
    let cookie = echo["headers"]["cookie"].as_str().unwrap_or("");
    assert!(!cookie.contains("portcullis_session"), "{cookie}");
    // Reserved headers never reach the backend on a session route either;
    // `_` spellings are refused outright (the default policy).
    let session_cookie = browser.cookie_header();
    // (X-Custom-Trusted is reserved only where the config says so.)
    let spellings: Vec<String> = crate::auth::reserved_spellings()
        .into_iter()
        .filter(|name| !name.to_ascii_lowercase().contains("custom"))
        .collect();
    let (underscored, dashed): (Vec<&String>, Vec<&String>) =
        spellings.iter().partition(|name| name.contains('_'));
    for (batch, want) in dashed
        .chunks(50)
        .map(|b| (b, 200))
        .chain(underscored.chunks(50).map(|b| (b, 400)))
    {
        let mut request = client()
            .get(format!("{gw}/app/items"))
            .header("cookie", &session_cookie);
        for (i, name) in batch.iter().enumerate() {
            request = request.header(name.as_str(), format!("spoofed-{i}"));
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), want);
        if want == 200 {
            let seen: Value = response.json().await.unwrap();
            assert_eq!(seen["headers"]["x-user-id"], "alice");
            crate::auth::assert_nothing_spoofed(&seen, "session route");
        }
    }
    // The portal shows the user what the session may call.
    let with_session: Value = browser
        .get(&format!("{gw}/openapi.json"))
        .await
        .json()
        .await
        .unwrap();
    let anonymous = get_json(&format!("{gw}/openapi.json")).await;
    let listed = |doc: &Value| doc.pointer("/paths/~1app~1items/get").is_some();
    let shown = eventually(Duration::from_secs(10), || async {
        let doc: Value = browser
            .get(&format!("{gw}/openapi.json"))
            .await
            .json()
            .await
            .unwrap();
        listed(&doc)
    })
    .await;
    assert!(
        shown || listed(&with_session),
        "the session sees the admin route"
    );
    assert!(!listed(&anonymous), "anonymous callers do not");

    // Logout ends the gateway's session and the SSO's.
    let out = sign_out_at_gateway(&browser, &gw).await;
    assert_eq!(out.status(), 302);
    let end_session = out.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        end_session.starts_with(&sso.url("/end_session?id_token_hint=")),
        "{end_session}"
    );
    let bye = browser.navigate(&end_session).await;
    assert_eq!(bye.status(), 303);
    assert_eq!(bye.headers()["location"], format!("{gw}/bye").as_str());
    let again = browser.navigate(&format!("{gw}/app/items")).await;
    assert_eq!(again.status(), 302, "signed out of the gateway");
    let relogin = browser
        .navigate(&authorize_url(&sso.issuer(), &pkce().1))
        .await;
    assert_eq!(relogin.status(), 200, "signed out of the SSO too");
    // Open redirects are not possible through rd.
    let evil = browser
        .navigate(&format!(
            "{gw}/_auth/login?rd=https%3A%2F%2Fevil.example%2F"
        ))
        .await;
    assert_eq!(evil.status(), 302);
}
