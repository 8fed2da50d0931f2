//! What the SSO's work costs: the password (or client secret) check that
//! every login pays — argon2id with the crate's defaults, deliberately slow
//! — and signing one access token per algorithm. Tokens per second over
//! HTTP are measured by benches/sso-load.sh.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis_config::sso::SigningAlgorithm;
use portcullis_sso::{
    hash_secret, sign_access_token, verify_secret, AccessClaims, KeyStore, Schedule,
};

fn password_check(c: &mut Criterion) {
    let hash = hash_secret("correct horse battery staple").expect("hash");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("login");
    group.sample_size(20);
    group.bench_function("argon2id password check", |b| {
        b.iter(|| {
            runtime.block_on(verify_secret(
                black_box("correct horse battery staple".into()),
                hash.clone(),
            ))
        })
    });
    group.finish();
}

fn signing(c: &mut Criterion) {
    let audience = vec!["orders-api".to_owned()];
    let roles = vec!["service".to_owned()];
    for (name, algorithm) in [
        ("ES256", SigningAlgorithm::ES256),
        ("EdDSA", SigningAlgorithm::EdDSA),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = KeyStore::open(
            dir.path(),
            Schedule {
                algorithms: vec![algorithm],
                rotate_every: 86_400,
                publish_ahead: 3_600,
                retain_for: 3_600,
            },
        )
        .expect("keys");
        c.bench_function(&format!("sign access token {name}"), |b| {
            b.iter(|| {
                sign_access_token(
                    &keys,
                    &AccessClaims {
                        issuer: "https://sso.example.com",
                        subject: "billing",
                        audience: &audience,
                        client_id: "billing",
                        scope: "orders.read",
                        roles: &roles,
                        groups: &[],
                        lifetime: 3600,
                        methods: None,
                    },
                )
                .map(|s| s.token.len())
                .unwrap_or(0)
            })
        });
    }
}

criterion_group!(benches, password_check, signing);
criterion_main!(benches);
