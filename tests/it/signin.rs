//! Sign-in you can trust: logout that ends sessions on every replica and
//! at the SSO, logout CSRF refused, single-flight refresh across replicas,
//! refresh-token retries that never fork a grant, back-channel logout, and
//! a strict relying party (nonce, ID token, `iss`, no Host-built URIs).

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::sso::{
    allow_consent, app_backend, authorize_url, code_from, hidden, login_gateway_config, pkce,
    redeem, sign_in_at_sso, sso_with_gateway_client_and, write_users, Browser, SsoProcess,
};
use crate::support::{client, eventually, free_port, Gateway, RedisServer};

/// The status of `/app/items` at `gw` for a browser presenting `cookie`
/// (200: signed in; 302: sent to sign in).
pub(crate) async fn with_cookie(gw: &str, cookie: &str) -> u16 {
    Browser::http()
        .get(format!("{gw}/app/items"))
        .header("accept", "text/html")
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Whether the browser's SSO session signs it in without the form.
async fn sso_session_alive(browser: &Browser, gw: &str) -> bool {
    let to_sso = browser.navigate(&format!("{gw}/_auth/login")).await;
    let authorize = to_sso.headers()["location"].to_str().unwrap().to_owned();
    browser.navigate(&authorize).await.status() == 303
}

/// Signs `browser` in through `begin` (landing on `finish`).
async fn sign_in(browser: &Browser, begin: &str, finish: &str, sso: &SsoProcess) {
    let callback = sign_in_at_sso(browser, begin, sso).await;
    let landed = browser.navigate(&callback.replacen(begin, finish, 1)).await;
    assert_eq!(landed.status(), 302);
    assert_eq!(with_cookie(begin, &browser.cookie_header()).await, 200);
}

/// Two gateways (A, B) sharing sessions in `redis`, or one gateway with
/// sessions in memory; the SSO's `gateway` client gets `client_extra`.
pub(crate) struct Setup {
    _dir: tempfile::TempDir,
    pub(crate) sso: SsoProcess,
    pub(crate) gateways: Vec<String>,
    _running: Vec<Gateway>,
    _redis: Option<RedisServer>,
    _backend: crate::support::Backend,
}

impl Setup {
    pub(crate) async fn start(replicas: usize, client_extra: &str) -> Setup {
        Self::start_with(replicas, client_extra, "").await
    }

    /// The same, with more SSO config (`directory: {url: …}`).
    pub(crate) async fn start_with(replicas: usize, client_extra: &str, sso_extra: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        write_users(dir.path());
        let ports: Vec<u16> = (0..replicas).map(|_| free_port()).collect();
        let sso =
            sso_with_gateway_client_and(dir.path(), free_port(), &ports, client_extra, sso_extra)
                .await;
        let backend = app_backend().await;
        let redis = if replicas > 1 {
            Some(RedisServer::start().await)
        } else {
            None
        };
        let shared = redis.as_ref().map_or(String::new(), |r| {
            // A second, not the default 100 ms: these tests are about who
            // refreshes and who signs out, and the suite runs Chromium
            // beside them on two cores (a Redis answer slower than the
            // timeout reads as "no session").
            format!(
                "    store: redis\n||redis: {{ url: '{}', timeout: 1s }}\n",
                r.url()
            )
        });
        let mut running = Vec::new();
        for port in &ports {
            running
                .push(Gateway::start(&login_gateway_config(*port, &sso, &backend, &shared)).await);
        }
        Setup {
            _dir: dir,
            sso,
            gateways: ports
                .iter()
                .map(|p| format!("http://127.0.0.1:{p}"))
                .collect(),
            _running: running,
            _redis: redis,
            _backend: backend,
        }
    }

    pub(crate) fn sso_log(&self) -> String {
        self.sso.log(self._dir.path())
    }

    /// The SSO's log and every gateway's, for a failure message.
    fn logs(&self) -> String {
        let mut text = format!("sso:\n{}", self.sso_log());
        for (i, gateway) in self._running.iter().enumerate() {
            text.push_str(&format!(
                "\ngateway {i}:\n{}{}",
                gateway.stdout(),
                gateway.stderr()
            ));
        }
        text
    }

    /// How many refresh-token grants the SSO has answered.
    fn refreshes(&self) -> usize {
        self.sso_log()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["event"] == "token_issued" && e["grant"] == "refresh_token")
            .count()
    }
}

/// A logout POST: what it is, its extra headers, its form's token.
type LogoutAttempt<'a> = (&'a str, Vec<(&'a str, &'a str)>, Option<&'a str>);

/// Logout CSRF (acceptance 4) and logout on every replica and at the SSO
/// (acceptance 1), for sessions in memory and in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_is_csrf_proof_and_ends_the_session_everywhere() {
    for replicas in [1, 2] {
        let setup = Setup::start(replicas, "").await;
        let gws = &setup.gateways;
        let browser = Browser::default();
        sign_in(&browser, &gws[0], gws.last().unwrap(), &setup.sso).await;
        let cookie = browser.cookie_header();
        let session = cookie
            .split("; ")
            .find(|c| c.starts_with("portcullis_session="))
            .unwrap()
            .to_owned();

        // A GET (a link, an image, a prefetch) only asks.
        let page = browser.navigate(&format!("{}/_auth/logout", gws[0])).await;
        assert_eq!(page.status(), 200);
        assert_eq!(
            page.headers()["content-security-policy"],
            "frame-ancestors 'none'"
        );
        let csrf = hidden(&page.text().await.unwrap(), "csrf");
        // Cross-site posts, with or without the form's token, change nothing.
        let evil = "https://evil.example";
        let cases: Vec<LogoutAttempt> = vec![
            ("no token, no origin", vec![], None),
            ("a wrong token", vec![], Some("x")),
            ("a token for another session", vec![], Some(&csrf[1..])),
            (
                "the token, a foreign Origin",
                vec![("origin", evil)],
                Some(&csrf),
            ),
            (
                "the token, cross-site fetch",
                vec![("sec-fetch-site", "cross-site")],
                Some(&csrf),
            ),
            (
                "the token, same-site fetch",
                vec![("sec-fetch-site", "same-site")],
                Some(&csrf),
            ),
            (
                "the token, Origin null",
                vec![("origin", "null")],
                Some(&csrf),
            ),
            ("no token, a foreign Origin", vec![("origin", evil)], None),
            (
                "no token, cross-site",
                vec![("sec-fetch-site", "cross-site")],
                None,
            ),
            (
                "no token, typed URL",
                vec![("sec-fetch-site", "none")],
                None,
            ),
        ];
        for (what, headers, token) in cases {
            let mut request = Browser::http()
                .post(format!("{}/_auth/logout", gws[0]))
                .header("cookie", &session);
            for (name, value) in headers {
                request = request.header(name, value);
            }
            let form: Vec<(&str, &str)> = token.map(|t| ("csrf", t)).into_iter().collect();
            let response = request.form(&form).send().await.unwrap();
            assert_eq!(response.status(), 403, "{replicas} replica(s): {what}");
            let body: Value = response.json().await.unwrap();
            assert!(body["request_id"].is_string(), "{what}: {body}");
            for gw in gws {
                assert_eq!(
                    with_cookie(gw, &session).await,
                    200,
                    "{what}: still signed in"
                );
            }
        }
        // A script of the gateway's own origin may sign out without the form.
        let same_origin = Browser::http()
            .post(format!("{}/_auth/logout", gws[0]))
            .header("cookie", "portcullis_session=not-a-session")
            .header("sec-fetch-site", "same-origin")
            .send()
            .await
            .unwrap();
        assert_eq!(same_origin.status(), 302);

        // The user's own answer: the session ends in the store, so the old
        // cookie (a copy an attacker kept) is refused on every replica.
        let out = browser
            .post(&format!("{}/_auth/logout", gws[0]), &[("csrf", &csrf)])
            .await;
        assert_eq!(out.status(), 302);
        let end_session = out.headers()["location"].to_str().unwrap().to_owned();
        assert!(
            end_session.starts_with(&setup.sso.url("/end_session?id_token_hint=")),
            "{replicas} replica(s): the SSO's logout is not skipped: {end_session}"
        );
        let started = Instant::now();
        for gw in gws {
            let refused = eventually(Duration::from_secs(1), || async {
                with_cookie(gw, &session).await == 302
            })
            .await;
            assert!(
                refused,
                "{replicas} replica(s): {gw} still serves the session"
            );
        }
        let took = started.elapsed();
        // The SSO session ends too.
        assert!(sso_session_alive(&browser, &gws[0]).await);
        let bye = browser.navigate(&end_session).await;
        assert_eq!(bye.status(), 303);
        assert!(
            !sso_session_alive(&browser, &gws[0]).await,
            "SSO session ended"
        );
        println!("{replicas} replica(s): old cookie refused everywhere after {took:?}");
    }
}

/// Fifty requests of one session with an expired access token, over two
/// replicas: one refresh at the SSO, every request served, the session
/// lives on (acceptance 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_refresh_once_across_replicas() {
    let setup = Setup::start(2, "    access_token_ttl: 3s\n").await;
    let gws = setup.gateways.clone();
    let browser = Browser::default();
    sign_in(&browser, &gws[0], &gws[1], &setup.sso).await;
    let cookie = browser.cookie_header();
    for round in 1..=2 {
        // The access token (3 s) expires; every request then needs the
        // refreshed one.
        tokio::time::sleep(Duration::from_millis(3300)).await;
        let requests = (0..50).map(|i| {
            let gw = gws[i % 2].clone();
            let cookie = cookie.clone();
            tokio::spawn(async move {
                let response = client()
                    .get(format!("{gw}/app/items"))
                    .header("cookie", cookie)
                    .send()
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                (status, body["headers"]["x-user-id"].clone())
            })
        });
        let answers = futures_util::future::join_all(requests).await;
        for (i, answer) in answers.into_iter().enumerate() {
            let (status, user) = answer.unwrap();
            assert_eq!(
                (status, user.as_str()),
                (200, Some("alice")),
                "round {round}, request {i}\n{}",
                setup.logs()
            );
        }
        assert_eq!(
            setup.refreshes(),
            round,
            "one refresh per expiry:\n{}",
            setup.sso_log()
        );
    }
    assert_eq!(
        with_cookie(&gws[0], &cookie).await,
        200,
        "the session lives on"
    );
}

/// Alice's tokens for the public `web-ui` client (login, consent, code).
async fn web_ui_tokens(sso: &SsoProcess) -> Value {
    web_ui_tokens_for(sso, "alice", "alice-password", "openid profile").await
}

/// A user's tokens for `web-ui` with `scope`.
pub(crate) async fn web_ui_tokens_for(
    sso: &SsoProcess,
    username: &str,
    password: &str,
    scope: &str,
) -> Value {
    let base = sso.issuer();
    let browser = Browser::default();
    let (verifier, challenge) = pkce();
    let url = authorize_url(&base, &challenge).replace(
        "scope=openid%20profile",
        &format!("scope={}", scope.replace(' ', "%20")),
    );
    let form = browser.get(&url).await;
    let html = form.text().await.unwrap();
    let consent = browser
        .post(
            &format!("{base}/login"),
            &[
                ("request", &hidden(&html, "request")),
                ("csrf", &hidden(&html, "csrf")),
                ("username", username),
                ("password", password),
            ],
        )
        .await;
    // Consent is asked once, then remembered.
    let code = if consent.status() == 303 {
        code_from(&consent)
    } else {
        let html = consent.text().await.unwrap();
        code_from(&allow_consent(&browser, &base, &html).await)
    };
    let (status, tokens) = redeem(&base, &code, &verifier).await;
    assert_eq!(status, 200, "{tokens}");
    tokens
}

pub(crate) async fn refresh(sso: &SsoProcess, refresh_token: &str) -> (u16, Value) {
    let response = client()
        .post(sso.url("/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", "web-ui"),
            ("refresh_token", refresh_token),
        ])
        .send()
        .await
        .unwrap();
    (
        response.status().as_u16(),
        response.json().await.unwrap_or(Value::Null),
    )
}

async fn active(sso: &SsoProcess, token: &str) -> bool {
    let answer: Value = client()
        .post(sso.url("/introspect"))
        .basic_auth("billing", Some("billing-secret"))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["active"] == true
}

/// A replayed previous refresh token: within the grace, the very answer
/// its first use got (one chain); with no grace, refused and the grant
/// revoked (acceptance 3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_refresh_token_never_forks_the_grant() {
    for grace in ["5s", "0s"] {
        let dir = tempfile::tempdir().unwrap();
        write_users(dir.path());
        let config = crate::sso::config().replace(
            "refresh_reuse_grace: 0s",
            &format!("refresh_reuse_grace: {grace}"),
        );
        let sso = SsoProcess::start(dir.path(), &config, free_port()).await;
        let first = web_ui_tokens(&sso).await;
        let r0 = first["refresh_token"].as_str().unwrap();
        let (status, second) = refresh(&sso, r0).await;
        assert_eq!(status, 200, "{second}");
        let (a1, r1) = (
            second["access_token"].as_str().unwrap(),
            second["refresh_token"].as_str().unwrap(),
        );
        assert_ne!(r1, r0, "rotated");
        let (status, replay) = refresh(&sso, r0).await;
        if grace == "5s" {
            assert_eq!(status, 200, "{replay}");
            // The same pair: a retry, not a second chain.
            assert_eq!(replay["access_token"], a1);
            assert_eq!(replay["refresh_token"], r1);
            assert!(active(&sso, a1).await);
            // The one chain goes on.
            let (status, third) = refresh(&sso, r1).await;
            assert_eq!(status, 200, "{third}");
            assert!(active(&sso, third["access_token"].as_str().unwrap()).await);
            // R1 is now rotated too: its replay (within the grace) gets the
            // third answer again, never a fourth pair.
            let (status, again) = refresh(&sso, r1).await;
            assert_eq!(status, 200);
            assert_eq!(again["refresh_token"], third["refresh_token"]);
        } else {
            assert_eq!(
                (status, replay["error"].as_str()),
                (400, Some("invalid_grant"))
            );
            // No grace: a reuse is theft; the whole grant goes.
            assert!(!active(&sso, a1).await, "the grant is revoked");
            assert_eq!(refresh(&sso, r1).await.0, 400);
        }
    }
}

/// The SSO's RS256 signing key, read from its key directory (what a
/// logout token for the gateway is signed with), and its kid.
fn sso_rsa_key(dir: &std::path::Path) -> (jsonwebtoken::EncodingKey, String) {
    for entry in std::fs::read_dir(dir.join("keys")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let meta: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        if meta["algorithm"] == "RS256" {
            let pem = std::fs::read(path.with_extension("pem")).unwrap();
            let kid = path.file_stem().unwrap().to_str().unwrap().to_owned();
            return (jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap(), kid);
        }
    }
    panic!("no RS256 key in {}", dir.display());
}

const BACKCHANNEL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// Back-channel logout: signing out at the SSO ends the gateway sessions
/// of that SSO session on both replicas; forged, replayed or misdirected
/// logout tokens are refused (acceptance 5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_channel_logout_ends_gateway_sessions_on_every_replica() {
    let setup = Setup::start(2, "").await;
    let gws = setup.gateways.clone();
    let browser = Browser::default();
    sign_in(&browser, &gws[0], &gws[1], &setup.sso).await;
    let cookie = browser.cookie_header();

    // Signing out at the SSO (its own confirmation form).
    let question = browser.get(&setup.sso.url("/end_session")).await;
    let page = question.text().await.unwrap();
    assert!(page.contains("Sign out?"), "{page}");
    let answer = browser
        .post(
            &setup.sso.url("/end_session"),
            &[("csrf", &hidden(&page, "csrf"))],
        )
        .await;
    assert!(answer.text().await.unwrap().contains("You are signed out."));
    let started = Instant::now();
    for gw in &gws {
        let ended = eventually(Duration::from_secs(1), || async {
            with_cookie(gw, &cookie).await == 302
        })
        .await;
        assert!(ended, "{gw} still serves the session:\n{}", setup.sso_log());
    }
    println!(
        "back-channel logout: both replicas refused the session after {:?}",
        started.elapsed()
    );
    // The SSO logs the delivery once the gateway's answer is in, which may
    // be a moment after the gateway already ended the session.
    let logged = eventually(Duration::from_secs(2), || async {
        setup.sso_log().contains("\"delivered\":true")
    })
    .await;
    assert!(logged, "{}", setup.sso_log());

    // A new session, and logout tokens an attacker (or a confused
    // provider) might post.
    let browser = Browser::default();
    sign_in(&browser, &gws[0], &gws[1], &setup.sso).await;
    let cookie = browser.cookie_header();
    let (key, kid) = sso_rsa_key(setup._dir.path());
    let now = crate::support::unix_now();
    let claims = |jti: &str| {
        serde_json::json!({ "iss": setup.sso.issuer(), "aud": "gateway", "iat": now,
            "exp": now + 120, "jti": jti, "sub": "alice",
            "events": { BACKCHANNEL_EVENT: {} } })
    };
    let sign = |claims: &Value, typ: &str| {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some(kid.clone());
        header.typ = Some(typ.to_owned());
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    };
    let post = |token: String| {
        let gw = gws[0].clone();
        async move {
            client()
                .post(format!("{gw}/_auth/backchannel-logout"))
                .form(&[("logout_token", token)])
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let b64 = |v: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let with = |jti: &str, change: &dyn Fn(&mut Value)| {
        let mut c = claims(jti);
        change(&mut c);
        c
    };
    let good = sign(&claims("good"), "logout+jwt");
    let tampered = {
        let parts: Vec<&str> = good.split('.').collect();
        let other = b64(&with("good", &|c| c["sub"] = "bob".into()));
        format!("{}.{other}.{}", parts[0], parts[2])
    };
    let refused: Vec<(&str, String)> = vec![
        (
            "unsigned",
            format!(
                "{}.{}.",
                b64(&serde_json::json!({"alg": "none", "typ": "logout+jwt"})),
                b64(&claims("unsigned"))
            ),
        ),
        ("tampered", tampered),
        (
            "wrong audience",
            sign(
                &with("aud", &|c| c["aud"] = "another-client".into()),
                "logout+jwt",
            ),
        ),
        (
            "wrong issuer",
            sign(
                &with("iss", &|c| c["iss"] = "https://evil.example".into()),
                "logout+jwt",
            ),
        ),
        (
            "a nonce",
            sign(&with("nonce", &|c| c["nonce"] = "n".into()), "logout+jwt"),
        ),
        (
            "no event",
            sign(
                &with("event", &|c| c["events"] = serde_json::json!({})),
                "logout+jwt",
            ),
        ),
        (
            "no jti",
            sign(
                &with("x", &|c| {
                    c.as_object_mut()
                        .unwrap()
                        .remove("jti")
                        .map(drop)
                        .unwrap_or(())
                }),
                "logout+jwt",
            ),
        ),
        (
            "no sid, no sub",
            sign(
                &with("nosub", &|c| {
                    c.as_object_mut()
                        .unwrap()
                        .remove("sub")
                        .map(drop)
                        .unwrap_or(())
                }),
                "logout+jwt",
            ),
        ),
        (
            "an hour old",
            sign(
                &with("old", &|c| c["iat"] = (now - 3600).into()),
                "logout+jwt",
            ),
        ),
        (
            "from the future",
            sign(
                &with("future", &|c| c["iat"] = (now + 3600).into()),
                "logout+jwt",
            ),
        ),
        (
            "expired",
            sign(
                &with("expired", &|c| c["exp"] = (now - 300).into()),
                "logout+jwt",
            ),
        ),
        ("an access token type", sign(&claims("at"), "at+jwt")),
        ("garbage", "not-a-token".to_owned()),
    ];
    for (what, token) in refused {
        assert_eq!(post(token).await, 400, "{what}");
        assert_eq!(
            with_cookie(&gws[1], &cookie).await,
            200,
            "{what}: session intact"
        );
    }
    let get = client()
        .get(format!("{}/_auth/backchannel-logout", gws[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 405);

    // A valid token naming the user ends their sessions everywhere; the
    // same token again is a replay.
    assert_eq!(post(good.clone()).await, 200);
    for gw in &gws {
        assert_eq!(with_cookie(gw, &cookie).await, 302, "{gw}");
    }
    assert_eq!(post(good).await, 400, "replayed");
}

/// A provider that signs in `alice` at once and answers the token request
/// with an ID token spoiled as `mode` says: what a compromised or mixed-up
/// provider, or an attacker in between, would send.
struct HostileProvider {
    issuer: String,
    mode: std::sync::Arc<std::sync::Mutex<&'static str>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HostileProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct ProviderState {
    issuer: String,
    key: jsonwebtoken::EncodingKey,
    jwk: Value,
    mode: std::sync::Arc<std::sync::Mutex<&'static str>>,
    /// code → nonce of its authorization request.
    nonces: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

impl ProviderState {
    fn sign(&self, claims: &Value, alg_none: bool) -> String {
        use base64::Engine;
        let b64 =
            |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        if alg_none {
            return format!(
                "{}.{}.",
                b64(&serde_json::json!({"alg": "none"})),
                b64(claims)
            );
        }
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some("hostile-1".into());
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }

    fn answer(
        &self,
        method: &http::Method,
        path: &str,
        query: &str,
        body: &[u8],
    ) -> (u16, Vec<(String, String)>, String) {
        let param = |text: &[u8], name: &str| {
            form_urlencoded::parse(text)
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        let json = |v: Value| {
            (
                200,
                vec![("content-type".into(), "application/json".into())],
                v.to_string(),
            )
        };
        match (method.as_str(), path) {
            ("GET", "/.well-known/openid-configuration") => json(serde_json::json!({
                "issuer": self.issuer,
                "authorization_endpoint": format!("{}/authorize", self.issuer),
                "token_endpoint": format!("{}/token", self.issuer),
                "jwks_uri": format!("{}/jwks", self.issuer),
                "authorization_response_iss_parameter_supported": true,
            })),
            ("GET", "/jwks") => json(serde_json::json!({ "keys": [self.jwk] })),
            ("GET", "/authorize") => {
                let q = query.as_bytes();
                let code = format!("code-{}", rand_id());
                self.nonces
                    .lock()
                    .unwrap()
                    .insert(code.clone(), param(q, "nonce"));
                let location = format!(
                    "{}?code={code}&state={}&iss={}",
                    param(q, "redirect_uri"),
                    param(q, "state"),
                    form_urlencoded::byte_serialize(self.issuer.as_bytes()).collect::<String>()
                );
                (302, vec![("location".into(), location)], String::new())
            }
            ("POST", "/token") => {
                let nonce = self
                    .nonces
                    .lock()
                    .unwrap()
                    .remove(&param(body, "code"))
                    .unwrap_or_default();
                let mode = *self.mode.lock().unwrap();
                let now = crate::support::unix_now();
                let access = self.sign(
                    &serde_json::json!({ "iss": self.issuer, "sub": "alice", "aud": "api",
                        "exp": now + 300, "iat": now, "roles": ["admin"] }),
                    false,
                );
                let mut id = serde_json::json!({ "iss": self.issuer, "sub": "alice",
                    "aud": "gateway", "exp": now + 300, "iat": now, "nonce": nonce });
                match mode {
                    "wrong nonce" => id["nonce"] = "another-nonce".into(),
                    "no nonce" => drop(id.as_object_mut().unwrap().remove("nonce")),
                    "wrong audience" => id["aud"] = "another-client".into(),
                    "wrong issuer" => id["iss"] = "https://evil.example".into(),
                    "expired" => id["exp"] = (now - 600).into(),
                    "azp of another client" => id["azp"] = "another-client".into(),
                    "several audiences, no azp" => {
                        id["aud"] = serde_json::json!(["gateway", "other"])
                    }
                    _ => {}
                }
                let mut id_token = self.sign(&id, mode == "alg none");
                if mode == "tampered" {
                    // Another user's claims under alice's signature.
                    let parts: Vec<String> = id_token.split('.').map(str::to_owned).collect();
                    id["sub"] = "mallory".into();
                    let forged = self.sign(&id, false);
                    let payload = forged.split('.').nth(1).unwrap();
                    id_token = format!("{}.{payload}.{}", parts[0], parts[2]);
                }
                let mut body = serde_json::json!({ "access_token": access, "token_type": "Bearer",
                    "expires_in": 300 });
                if mode != "no ID token" {
                    body["id_token"] = id_token.into();
                }
                json(body)
            }
            _ => (404, Vec::new(), String::new()),
        }
    }
}

fn rand_id() -> String {
    let mut bytes = [0u8; 12];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).unwrap();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl HostileProvider {
    async fn start() -> HostileProvider {
        use http_body_util::BodyExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let point = pair.public_key_raw();
        let b64 = |b: &[u8]| {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
        };
        let jwk = serde_json::json!({ "kty": "EC", "crv": "P-256", "x": b64(&point[1..33]),
            "y": b64(&point[33..65]), "kid": "hostile-1", "alg": "ES256", "use": "sig" });
        let mode = std::sync::Arc::new(std::sync::Mutex::new("good"));
        let state = std::sync::Arc::new(ProviderState {
            issuer: issuer.clone(),
            key: jsonwebtoken::EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap(),
            jwk,
            mode: mode.clone(),
            nonces: std::sync::Mutex::default(),
        });
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: http::Request<hyper::body::Incoming>| {
                            let state = state.clone();
                            async move {
                                let (parts, body) = request.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                let (status, headers, text) = state.answer(
                                    &parts.method,
                                    parts.uri.path(),
                                    parts.uri.query().unwrap_or(""),
                                    &body,
                                );
                                let mut response = http::Response::builder().status(status);
                                for (name, value) in headers {
                                    response = response.header(name, value);
                                }
                                Ok::<_, std::convert::Infallible>(
                                    response
                                        .body(http_body_util::Full::new(bytes::Bytes::from(text)))
                                        .unwrap(),
                                )
                            }
                        },
                    );
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
                });
            }
        });
        HostileProvider { issuer, mode, task }
    }
}

/// The gateway as a strict relying party (acceptance 6): every spoiled ID
/// token, a wrong or missing `iss` in the callback, and a forged Host are
/// refused; no session cookie is ever set for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relying_party_refuses_what_a_hostile_provider_sends() {
    let provider = HostileProvider::start().await;
    let backend = app_backend().await;
    let port = free_port();
    let gw = format!("http://127.0.0.1:{port}");
    let _gateway = Gateway::start(&format!(
        "listeners: [ {{ name: plain, address: '127.0.0.1:{port}' }} ]
admin: {{ address: '127.0.0.1:{{ADMIN}}' }}
identity:
  providers:
    - {{ name: op, issuer: '{issuer}', audiences: [api] }}
  login: {{ provider: op, client_id: gateway, client_secret: s, scopes: [openid],
           public_url: '{gw}', secure_cookies: false }}
upstreams:
  app: {{ targets: ['{backend}'] }}
routes:
  - {{ name: app, match: {{ path_prefix: /app }}, upstream: app, strip_prefix: true,
       auth: {{ mode: required, roles_any: [admin], login_redirect: true }} }}
",
        issuer = provider.issuer,
        backend = backend.addr
    ))
    .await;

    // One login: the gateway's redirect to the provider, the provider's
    // answer, and the callback URL (`edit` may change it).
    let attempt = |edit: fn(String) -> String| {
        let gw = gw.clone();
        async move {
            let browser = Browser::default();
            let to_op = browser
                .navigate(&format!("{gw}/_auth/login?rd=/app/items"))
                .await;
            let authorize = to_op.headers()["location"].to_str().unwrap().to_owned();
            let back = browser.get(&authorize).await;
            let callback = edit(back.headers()["location"].to_str().unwrap().to_owned());
            let landed = browser.navigate(&callback).await;
            let status = landed.status().as_u16();
            let body = landed.text().await.unwrap_or_default();
            (status, browser.cookie_header(), authorize, body)
        }
    };
    let keep = |url: String| url;
    let (status, cookies, authorize, _) = attempt(keep).await;
    assert_eq!(status, 302, "a good login");
    assert!(cookies.contains("portcullis_session="));
    assert!(
        authorize.contains("&nonce="),
        "a nonce is sent: {authorize}"
    );

    for mode in [
        "wrong nonce",
        "no nonce",
        "tampered",
        "alg none",
        "wrong audience",
        "wrong issuer",
        "expired",
        "azp of another client",
        "several audiences, no azp",
        "no ID token",
    ] {
        *provider.mode.lock().unwrap() = mode;
        let (status, cookies, _, body) = attempt(keep).await;
        assert_eq!(status, 401, "{mode}: {body}");
        assert!(
            !cookies.contains("portcullis_session="),
            "{mode}: no session"
        );
        let body: Value = serde_json::from_str(&body).unwrap();
        assert!(body["request_id"].is_string());
    }
    *provider.mode.lock().unwrap() = "good";

    // RFC 9207: the callback's iss must name our provider, and must be
    // there when the provider promises it.
    let wrong_iss = |url: String| {
        let (head, _) = url.split_once("&iss=").unwrap();
        format!("{head}&iss=https%3A%2F%2Fevil.example")
    };
    let no_iss = |url: String| url.split_once("&iss=").unwrap().0.to_owned();
    for (what, edit) in [
        ("wrong iss", wrong_iss as fn(String) -> String),
        ("no iss", no_iss),
    ] {
        let (status, cookies, _, _) = attempt(edit).await;
        assert_eq!(status, 401, "{what}");
        assert!(!cookies.contains("portcullis_session="), "{what}");
    }

    // A forged Host never reaches the provider as a redirect URI.
    let to_op = Browser::http()
        .get(format!("{gw}/_auth/login"))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    let authorize = to_op.headers()["location"].to_str().unwrap();
    let expected = form_urlencoded::byte_serialize(format!("{gw}/_auth/callback").as_bytes())
        .collect::<String>();
    assert!(
        authorize.contains(&format!("redirect_uri={expected}&")),
        "{authorize}"
    );
    assert!(!authorize.contains("evil.example"), "{authorize}");
}

/// An admin ends a user's SSO sessions through the admin API: every
/// gateway session they began ends on both replicas by back-channel
/// logout, and the SSO asks for the password again (acceptance 5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_ending_a_users_sessions_signs_them_out_of_the_gateway() {
    // (An admin client after the gateway client in the SSO's client list.)
    let ops = format!(
        "  - {{ client_id: ops, type: confidential, secret_hash: '{}', roles: [sso-admin] }}\n",
        crate::sso::hash("ops-secret")
    );
    let setup = Setup::start(2, &ops).await;
    let gws = setup.gateways.clone();
    let (laptop, phone) = (Browser::default(), Browser::default());
    sign_in(&laptop, &gws[0], &gws[1], &setup.sso).await;
    sign_in(&phone, &gws[1], &gws[0], &setup.sso).await;
    let token =
        |id: &'static str, secret: &'static str| crate::admin::token(&setup.sso, id, secret);
    let end = |bearer: Option<String>| {
        let url = setup.sso.url("/admin/users/alice/sessions");
        async move {
            let mut request = client().delete(url);
            if let Some(bearer) = bearer {
                request = request.bearer_auth(bearer);
            }
            let response = request.send().await.unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    // Not an admin: refused, nothing ends.
    assert_eq!(end(None).await.0, 401);
    assert_eq!(end(Some("not-a-token".into())).await.0, 401);
    let (status, body) = end(Some(token("billing", "billing-secret").await)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("insufficient_scope"))
    );
    for browser in [&laptop, &phone] {
        assert_eq!(with_cookie(&gws[0], &browser.cookie_header()).await, 200);
    }

    let (status, body) = end(Some(token("ops", "ops-secret").await)).await;
    assert_eq!((status, &body), (200, &serde_json::json!({ "ended": 2 })));
    for browser in [&laptop, &phone] {
        for gw in &gws {
            let ended = eventually(Duration::from_secs(1), || async {
                with_cookie(gw, &browser.cookie_header()).await == 302
            })
            .await;
            assert!(ended, "{gw} still serves a session the admin ended");
        }
        assert!(
            !sso_session_alive(browser, &gws[0]).await,
            "the SSO session ended"
        );
    }
    assert!(setup.sso_log().contains("\"admin_sessions_ended\""));
}
