//! JWT header and claims handling: a token of any shape is refused or
//! turned into an identity, never a panic. Header and claims come from the
//! fuzzer and are signed with the provider's HMAC secret, so the claim
//! handling behind the signature check is reached too.
#![no_main]

use std::path::Path;
use std::sync::LazyLock;

use base64::Engine;
use libfuzzer_sys::fuzz_target;
use portcullis_gateway::auth::{Authenticator, KeyRegistry, RoutePolicy};

const SECRET: &str = "fuzz-secret-fuzz-secret-fuzz-secret!";

static AUTH: LazyLock<(Authenticator, RoutePolicy)> = LazyLock::new(|| {
    let yaml = format!("listeners: [{{ name: p, address: '127.0.0.1:1' }}]\nidentity:\n  providers:\n    - {{ name: f, issuer: 'https://fuzz.test', audiences: [api], hmac_secret: '{SECRET}', algorithms: [HS256], roles_claim: realm_access.roles, public_keys: [] }}\n  headers: {{ X-User-Id: sub, X-User-Roles: '@roles', X-User-Groups: groups, X-User-Email: email }}\nupstreams: {{ u: {{ targets: ['127.0.0.1:2'] }} }}\nroutes:\n  - {{ name: r, upstream: u, auth: {{ mode: required, roles_any: [a], claims: {{ tenant: t }} }} }}\n");
    let valid = portcullis_config::load_from_str(&yaml, Path::new("fuzz.yaml"), &|_| None).expect("config");
    let (auth, _) = Authenticator::compile(&valid.config.identity, &KeyRegistry::default(), Path::new("fuzz.yaml")).expect("compile");
    let policy = RoutePolicy::compile(&valid.config.routes[0].auth, &valid.config.identity);
    (auth, policy)
});

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fuzz_target!(|input: (bool, &[u8], &[u8])| {
    let (signed, header, claims) = input;
    let (auth, policy) = &*AUTH;
    let token = if signed {
        let signing_input = format!("{}.{}", b64(header), b64(claims));
        let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
        let Ok(signature) = jsonwebtoken::crypto::sign(signing_input.as_bytes(), &key, jsonwebtoken::Algorithm::HS256) else { return };
        format!("{signing_input}.{signature}")
    } else {
        // Raw bytes as the whole token (malformed segments, no signature).
        String::from_utf8_lossy(header).into_owned()
    };
    let Ok(value) = http::HeaderValue::from_str(&format!("Bearer {token}")) else { return };
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::AUTHORIZATION, value);
    let result = futures_executor::block_on(auth.authorize(policy, &headers));
    if let Ok(Some(authorized)) = result {
        for (name, value) in &authorized.identity.headers {
            assert!(!value.as_bytes().iter().any(|b| *b == b'\r' || *b == b'\n' || *b == 0), "{name}");
        }
    }
});
