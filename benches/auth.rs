//! The per-request auth step on a cache hit (target: under 500 ns), and
//! what a cache miss costs per algorithm (signature and claims checked).
//!
//! The hit path is what every request with a known token runs: take the
//! bearer token, look it up in the verified-token cache, check the route's
//! roles, strip reserved headers the client sent, set the identity headers.

use std::hint::black_box;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use criterion::{criterion_group, criterion_main, Criterion};
use futures_util::FutureExt;
use http::{HeaderMap, HeaderValue};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis_gateway::auth::{self, Authenticator, KeyRegistry, RoutePolicy};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt");

fn setup() -> (Authenticator, RoutePolicy, tempfile::TempDir) {
    // The fixture file holds public JWKs by kid; a JWKS is their list.
    let all: serde_json::Value = serde_json::from_slice(
        &std::fs::read(format!("{FIXTURES}/public-jwks.json")).expect("fixture"),
    )
    .expect("json");
    let keys: Vec<_> = ["rsa-a", "ec-p256", "ed25519"]
        .iter()
        .map(|k| all[*k].clone())
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, serde_json::json!({ "keys": keys }).to_string()).expect("write");
    let yaml = format!(
        "listeners: [ {{ name: p, address: 127.0.0.1:1 }} ]\nidentity:\n  providers:\n    - {{ name: sso, issuer: 'https://sso.example.com', jwks_file: '{}', audiences: [api], roles_claim: realm_access.roles }}\n  headers: {{ X-User-Id: sub, X-User-Email: email, X-User-Roles: realm_access.roles }}\nupstreams:\n  u: {{ targets: [127.0.0.1:2] }}\nroutes:\n  - {{ name: r, upstream: u, auth: {{ mode: required, roles_any: [orders-reader] }} }}\n",
        jwks.display()
    );
    let valid = portcullis_config::load_from_str(&yaml, Path::new("bench.yaml"), &|_| None)
        .expect("config");
    let (authenticator, _) = Authenticator::compile(
        &valid.config.identity,
        &KeyRegistry::default(),
        Path::new("bench.yaml"),
    )
    .expect("compile");
    let policy = RoutePolicy::compile(&valid.config.routes[0].auth, &valid.config.identity);
    (authenticator, policy, dir)
}

fn token(kid: &str, alg: Algorithm, n: u64) -> String {
    let pem = std::fs::read(format!("{FIXTURES}/{kid}.pem")).expect("fixture");
    let key = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
        _ => EncodingKey::from_rsa_pem(&pem),
    }
    .expect("key");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let claims = serde_json::json!({
        "iss": "https://sso.example.com", "aud": "api", "sub": format!("user-{n}"),
        "email": format!("user-{n}@example.com"), "exp": now + 3600, "iat": now,
        "realm_access": { "roles": ["orders-reader", "dev"] },
    });
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, &claims, &key).expect("sign")
}

fn bench_auth(c: &mut Criterion) {
    let (authenticator, policy, _dir) = setup();
    let bearer = HeaderValue::from_str(&format!("Bearer {}", token("rsa-a", Algorithm::RS256, 0)))
        .expect("header");
    // A request as it arrives: some ordinary headers and one spoof attempt.
    let mut request = HeaderMap::new();
    for (name, value) in [
        ("host", "api.example.com"),
        ("user-agent", "bench/1.0"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip"),
        ("x-request-id", "0123456789abcdef"),
        ("x_user_id", "spoofed"),
    ] {
        request.insert(name, HeaderValue::from_static(value));
    }
    request.insert("authorization", bearer.clone());
    // Warm the cache.
    let first = auth::bearer(&bearer).expect("bearer");
    authenticator
        .authenticate(first, &policy)
        .now_or_never()
        .expect("ready")
        .expect("valid");

    c.bench_function("auth_step_cache_hit", |b| {
        // The header map copy is pingora's (it builds the upstream request
        // anyway), so it is made outside the measured part.
        b.iter_batched_ref(
            || request.clone(),
            |upstream| {
                let value = upstream
                    .get(http::header::AUTHORIZATION)
                    .expect("authorization");
                let token = auth::bearer(value).expect("bearer");
                let identity = authenticator
                    .authenticate(black_box(token), &policy)
                    .now_or_never()
                    .expect("a cache hit never waits")
                    .expect("valid");
                assert!(policy.allows(&identity));
                let spoofed: Vec<http::HeaderName> = upstream
                    .keys()
                    .filter(|n| authenticator.is_reserved(n.as_str()))
                    .cloned()
                    .collect();
                for name in &spoofed {
                    upstream.remove(name);
                }
                for (name, value) in &identity.headers {
                    upstream.insert(name.clone(), value.clone());
                }
            },
            criterion::BatchSize::SmallInput,
        )
    });

    let mut group = c.benchmark_group("verify_cache_miss");
    for (kid, alg, label) in [
        ("rsa-a", Algorithm::RS256, "RS256"),
        ("ec-p256", Algorithm::ES256, "ES256"),
        ("ed25519", Algorithm::EdDSA, "EdDSA"),
    ] {
        let token = token(kid, alg, 1);
        group.bench_function(label, |b| {
            b.iter(|| {
                authenticator
                    .verify_uncached(black_box(&token), &policy)
                    .now_or_never()
                    .expect("keys are local")
                    .expect("valid")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_auth);
criterion_main!(benches);
