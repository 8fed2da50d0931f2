//! Against a real third-party OpenID Provider: panva/oidc-provider from npm
//! (tests/oidc), issuing RS256 and ES256 JWT access tokens by the client
//! credentials grant. Keys come by OIDC discovery.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::sso::Browser;
use crate::support::{
    client, eventually, free_port, with_plain_listener, Backend, Echo, Gateway, RedisServer,
};

const CLIENT_ID: &str = "orders-service";
const CLIENT_SECRET: &str = "a-test-secret-that-is-only-used-on-loopback";

struct OpenIdProvider {
    child: Child,
    issuer: String,
}

impl OpenIdProvider {
    async fn start() -> OpenIdProvider {
        Self::start_with(&[]).await
    }

    /// With the `portcullis-gateway` client for a gateway at `gateway`,
    /// whose access tokens live `token_ttl` seconds.
    async fn start_for_gateway(gateway: &str, token_ttl: u64) -> OpenIdProvider {
        Self::start_with(&[gateway.to_owned(), token_ttl.to_string()]).await
    }

    async fn start_with(args: &[String]) -> OpenIdProvider {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oidc");
        assert!(
            std::path::Path::new(dir)
                .join("node_modules/oidc-provider")
                .exists(),
            "run `npm ci --prefix tests/oidc` first (tests/run.sh does)"
        );
        let port = free_port();
        let child = Command::new("node")
            .arg("provider.mjs")
            .arg(port.to_string())
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("node");
        let issuer = format!("http://127.0.0.1:{port}");
        let discovery = format!("{issuer}/.well-known/openid-configuration");
        let up = eventually(Duration::from_secs(20), || async {
            client()
                .get(&discovery)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await;
        assert!(up, "oidc-provider did not start");
        OpenIdProvider { child, issuer }
    }

    async fn token(&self, resource: &str, scope: &str) -> String {
        let response: serde_json::Value = client()
            .post(format!("{}/token", self.issuer))
            .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
            .form(&[
                ("grant_type", "client_credentials"),
                ("resource", resource),
                ("scope", scope),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        response["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no token: {response}"))
            .to_owned()
    }
}

impl Drop for OpenIdProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn header_alg(token: &str) -> String {
    use base64::Engine;
    let header = token.split('.').next().unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    json["alg"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_provider_tokens_pass_with_identity_headers() {
    let op = OpenIdProvider::start().await;
    let echo = Backend::start("orders").await;
    let config = with_plain_listener(&format!(
        "identity:\n  providers:\n    - {{ name: op, issuer: '{}', audiences: [api], roles_claim: scope, require_at_jwt: true }}\n  headers:\n    X-User-Id: sub\n    X-Client-Id: client_id\n    X-User-Scopes: scope\nupstreams:\n  orders: {{ targets: ['{}'] }}\nroutes:\n  - {{ name: read, match: {{ path_prefix: /orders, methods: [GET] }}, upstream: orders, auth: {{ mode: required, roles_any: ['orders:read'] }} }}\n  - {{ name: write, match: {{ path_prefix: /orders }}, upstream: orders, auth: {{ mode: required, roles_all: ['orders:write'] }} }}\n",
        op.issuer, echo.addr
    ));
    let gateway = Gateway::start(&config).await;

    let rs = op.token("urn:api:rs", "orders:read").await;
    assert_eq!(header_alg(&rs), "RS256");
    let es = op.token("urn:api:es", "orders:read orders:write").await;
    assert_eq!(header_alg(&es), "ES256");

    let response = client()
        .get(gateway.url("/orders/42"))
        .bearer_auth(&rs)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen: Echo = response.json().await.unwrap();
    assert_eq!(seen.headers["x-user-id"], CLIENT_ID);
    assert_eq!(seen.headers["x-client-id"], CLIENT_ID);
    assert_eq!(seen.headers["x-user-scopes"], "orders:read");

    let forbidden = client()
        .post(gateway.url("/orders"))
        .bearer_auth(&rs)
        .send()
        .await
        .unwrap();
    assert_eq!(forbidden.status(), 403);

    let allowed = client()
        .post(gateway.url("/orders"))
        .bearer_auth(&es)
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 200);
    let seen: Echo = allowed.json().await.unwrap();
    assert_eq!(seen.headers["x-user-scopes"], "orders:read orders:write");

    let anonymous = client().get(gateway.url("/orders/1")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_provider_opaque_tokens_by_introspection_and_revocation() {
    let op = OpenIdProvider::start().await;
    let echo = Backend::start("orders").await;
    let config = with_plain_listener(&format!(
        "identity:\n  providers:\n    - name: op\n      issuer: '{}'\n      audiences: [api]\n      roles_claim: scope\n      introspection: {{ client_id: {CLIENT_ID}, client_secret: {CLIENT_SECRET}, max_ttl: 1s }}\n  headers:\n    X-Client-Id: client_id\n    X-User-Scopes: scope\nupstreams:\n  orders: {{ targets: ['{}'] }}\nroutes:\n  - {{ name: read, match: {{ path_prefix: /orders }}, upstream: orders, auth: {{ mode: required, roles_any: ['orders:read'] }} }}\n",
        op.issuer, echo.addr
    ));
    let gateway = Gateway::start(&config).await;
    let opaque = op.token("urn:api:opaque", "orders:read").await;
    assert_eq!(
        opaque.matches('.').count(),
        0,
        "expected an opaque token: {opaque}"
    );
    let response = client()
        .get(gateway.url("/orders/1"))
        .bearer_auth(&opaque)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen: Echo = response.json().await.unwrap();
    // A client-credentials token's introspection names the client, not a user.
    assert_eq!(seen.headers["x-client-id"], CLIENT_ID);
    assert_eq!(seen.headers["x-user-scopes"], "orders:read");

    // Revoked at the IdP: still served from the cache, then rejected once
    // the cached answer (max_ttl 1 s) has expired.
    let revoke = client()
        .post(format!("{}/token/revocation", op.issuer))
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[("token", opaque.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(revoke.status(), 200);
    let rejected = eventually(Duration::from_secs(5), || async {
        client()
            .get(gateway.url("/orders/1"))
            .bearer_auth(&opaque)
            .send()
            .await
            .unwrap()
            .status()
            == 401
    })
    .await;
    assert!(rejected, "revoked token still accepted");
}

/// The gateway signing browsers in at oidc-provider (code + PKCE, nonce,
/// RFC 9207 `iss`, RS256 ID tokens, rotating refresh tokens): fifty
/// concurrent requests of one session with an expired access token, over
/// two replicas, make exactly one refresh at the provider, counted there;
/// then the provider's back-channel logout ends the session on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oidc_provider_sessions_refresh_once_and_end_by_back_channel() {
    let redis = RedisServer::start().await;
    let echo = Backend::start("app").await;
    let (port_a, port_b) = (free_port(), free_port());
    let public = format!("http://127.0.0.1:{port_a}");
    let op = OpenIdProvider::start_for_gateway(&public, 3).await;
    let config = |port: u16| {
        format!(
            "listeners: [ {{ name: plain, address: '127.0.0.1:{port}' }} ]
admin: {{ address: '127.0.0.1:{{ADMIN}}' }}
redis: {{ url: '{redis}' }}
identity:
  providers:
    - {{ name: op, issuer: '{issuer}', audiences: [api] }}
  login:
    provider: op
    client_id: portcullis-gateway
    client_secret: a-gateway-secret-that-is-only-used-on-loopback
    scopes: [openid]
    public_url: '{public}'
    store: redis
    secure_cookies: false
upstreams:
  app: {{ targets: ['{app}'] }}
routes:
  - {{ name: app, match: {{ path_prefix: /app }}, upstream: app, strip_prefix: true,
       auth: {{ mode: required, login_redirect: true }} }}
",
            redis = redis.url(),
            issuer = op.issuer,
            app = echo.addr
        )
    };
    let _a = Gateway::start(&config(port_a)).await;
    let _b = Gateway::start(&config(port_b)).await;
    let gws = [public.clone(), format!("http://127.0.0.1:{port_b}")];

    // Sign in: the gateway, the provider's automatic interactions, back.
    let browser = Browser::default();
    let mut location = format!("{public}/_auth/login?rd=/app/items");
    for _ in 0..12 {
        if location.starts_with(&format!("{public}/_auth/callback")) {
            break;
        }
        let next = if location.starts_with('/') {
            let base = if location.starts_with("/_auth") {
                &public
            } else {
                &op.issuer
            };
            format!("{base}{location}")
        } else {
            location.clone()
        };
        let response = browser.navigate(&next).await;
        assert!(
            response.status().is_redirection(),
            "{next}: {}",
            response.status()
        );
        location = response.headers()["location"].to_str().unwrap().to_owned();
    }
    assert!(
        location.contains("&iss="),
        "oidc-provider sends iss: {location}"
    );
    let landed = browser.navigate(&location).await;
    assert_eq!(landed.status(), 302, "{:?}", landed.text().await);
    let cookie = browser.cookie_header();
    let status = |gw: String, cookie: String| async move {
        client()
            .get(format!("{gw}/app/items"))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(status(gws[1].clone(), cookie.clone()).await, 200);

    let refreshes = || async {
        let counts: serde_json::Value = client()
            .get(format!("{}/_test/refreshes", op.issuer))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        counts["refreshes"].as_u64().unwrap()
    };
    assert_eq!(refreshes().await, 0);
    for round in 1..=2 {
        tokio::time::sleep(Duration::from_millis(3300)).await;
        let requests = (0..50).map(|i| tokio::spawn(status(gws[i % 2].clone(), cookie.clone())));
        for (i, answer) in futures_util::future::join_all(requests)
            .await
            .into_iter()
            .enumerate()
        {
            assert_eq!(answer.unwrap(), 200, "round {round}, request {i}");
        }
        assert_eq!(refreshes().await, round, "one refresh per expiry");
    }

    // Signing out at the provider: its back-channel logout token ends the
    // gateway session on both replicas.
    let page = browser
        .navigate(&format!("{}/session/end", op.issuer))
        .await;
    let html = page.text().await.unwrap();
    let xsrf = crate::sso::hidden(&html, "xsrf");
    let confirm = browser
        .post(
            &format!("{}/session/end/confirm", op.issuer),
            &[("xsrf", xsrf.as_str()), ("logout", "yes")],
        )
        .await;
    assert!(confirm.status().is_redirection() || confirm.status() == 200);
    // (Within a second: the access token is still valid, so only the
    // logout token, not a failed refresh, can end the session.)
    for gw in &gws {
        let ended = eventually(Duration::from_secs(1), || async {
            status(gw.clone(), cookie.clone()).await == 401
        })
        .await;
        assert!(
            ended,
            "{gw} still serves a session the provider ended:\n{}{}",
            _a.stderr(),
            _b.stderr()
        );
    }
    // (Logged just after the sessions ended: perhaps a moment after the
    // check above saw it.)
    let accepted = eventually(Duration::from_secs(2), || async {
        format!("{}{}", _a.stderr(), _a.stdout()).contains("back-channel logout ended 1 session(s)")
    })
    .await;
    assert!(
        accepted,
        "the provider's logout token was accepted:\n{}",
        _a.stderr()
    );
    assert_eq!(refreshes().await, 2, "no refresh after the logout");
}
