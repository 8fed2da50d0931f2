use std::path::Path;

use super::*;

fn authenticator(identity_yaml: &str) -> Authenticator {
    let text =
        format!("listeners: [ {{ name: p, address: 127.0.0.1:1 }} ]\nidentity:\n{identity_yaml}");
    let valid = portcullis_config::load_from_str(&text, Path::new("t.yaml"), &|_| None).unwrap();
    let registry = KeyRegistry::default();
    Authenticator::compile(&valid.config.identity, &registry, Path::new("t.yaml"))
        .unwrap()
        .0
}

#[test]
fn reserved_names_match_any_case_and_underscores() {
    let auth = authenticator("  headers: { X-Tenant: tid, X-User-Id: sub }\n");
    for name in [
        "x-user-id",
        "X_User_Id",
        "x-user-anything",
        "X-AUTH-X",
        "x_auth_y",
        "x-tenant",
        "X_TENANT",
    ] {
        assert!(auth.is_reserved(name), "{name}");
    }
    for name in [
        "x-user",
        "x-tenants",
        "authorization",
        "x-users-id",
        "user-id",
    ] {
        assert!(!auth.is_reserved(name), "{name}");
    }
}

#[test]
fn custom_reserved_prefixes_replace_the_defaults() {
    let auth = authenticator("  reserved_prefixes: [ X-Identity- ]\n");
    assert!(auth.is_reserved("x_identity_sub"));
    assert!(
        auth.is_reserved("x-user-id"),
        "the default mapping's own names stay reserved"
    );
    assert!(!auth.is_reserved("x-auth-z"));
}

#[test]
fn bearer_extraction() {
    let value = |s: &'static str| HeaderValue::from_static(s);
    assert_eq!(bearer(&value("Bearer abc.def.ghi")), Some("abc.def.ghi"));
    assert_eq!(bearer(&value("bearer   tok ")), Some("tok"));
    assert_eq!(bearer(&value("Basic dXNlcjpwYXNz")), None);
    assert_eq!(bearer(&value("Bearer")), None);
    assert_eq!(bearer(&value("Bearer ")), None);
}

#[test]
fn rbac_any_and_all() {
    let identity = |roles: &[&str]| Identity {
        provider: 0,
        subject: None,
        roles: roles.iter().map(|r| r.to_string()).collect(),
        headers: Vec::new(),
        claims: Vec::new(),
        scopes: Vec::new(),
        client_id: None,
        raw_claims: serde_json::Map::new(),
        expires_at: 0,
    };
    let policy = |any: &[&str], all: &[&str]| RoutePolicy {
        mode: config::AuthMode::Required,
        providers: Vec::new(),
        roles_any: any.iter().map(|r| r.to_string()).collect(),
        roles_all: all.iter().map(|r| r.to_string()).collect(),
        scopes_any: Vec::new(),
        scopes_all: Vec::new(),
        claims: Vec::new(),
        client_ids: Vec::new(),
        require_acr: Vec::new(),
        require_amr: Vec::new(),
        step_up_challenge: None,
        api_keys: false,
        login_redirect: false,
    };
    assert!(policy(&[], &[]).allows(&identity(&[])));
    assert!(policy(&["a", "b"], &[]).allows(&identity(&["b"])));
    assert!(!policy(&["a", "b"], &[]).allows(&identity(&["c"])));
    assert!(policy(&[], &["a", "b"]).allows(&identity(&["b", "a", "c"])));
    assert!(!policy(&[], &["a", "b"]).allows(&identity(&["a"])));
    assert!(!policy(&["x"], &["a"]).allows(&identity(&["a"])));
}

#[test]
fn step_up_needs_the_acr_and_every_amr() {
    let identity = |claims: serde_json::Value| Identity {
        provider: 0,
        subject: None,
        roles: Vec::new(),
        headers: Vec::new(),
        claims: Vec::new(),
        scopes: Vec::new(),
        client_id: None,
        raw_claims: claims.as_object().cloned().unwrap_or_default(),
        expires_at: 0,
    };
    let policy = |acr: &[&str], amr: &[&str]| {
        let auth = config::RouteAuth {
            require_acr: acr.iter().map(|s| s.to_string()).collect(),
            require_amr: amr.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        RoutePolicy::compile(&auth, &config::Identity::default())
    };
    let mfa = "urn:portcullis:acr:mfa";
    let password =
        identity(serde_json::json!({ "acr": "urn:portcullis:acr:password", "amr": ["pwd"] }));
    let totp = identity(serde_json::json!({ "acr": mfa, "amr": ["pwd", "otp", "mfa"] }));
    let odd = identity(serde_json::json!({ "acr": [mfa], "amr": "mfa" }));
    assert!(policy(&[], &[]).authenticated_enough(&password));
    assert!(policy(&[], &[]).step_up_challenge.is_none());
    assert!(!policy(&[mfa], &[]).authenticated_enough(&password));
    assert!(policy(&[mfa], &[]).authenticated_enough(&totp));
    assert!(
        !policy(&[mfa], &[]).authenticated_enough(&odd),
        "acr must be a string"
    );
    assert!(
        !policy(&[], &["mfa"]).authenticated_enough(&odd),
        "amr must be an array"
    );
    assert!(policy(&[], &["otp", "mfa"]).authenticated_enough(&totp));
    assert!(!policy(&[], &["otp", "hwk"]).authenticated_enough(&totp));
    let challenge = policy(&[mfa, "bad value", "q\"uote"], &[])
        .step_up_challenge
        .unwrap();
    assert_eq!(
        challenge.to_str().unwrap(),
        "Bearer realm=\"portcullis\", error=\"insufficient_user_authentication\", error_description=\"A different authentication level is required\", acr_values=\"urn:portcullis:acr:mfa\""
    );
}

#[test]
fn jwks_parsing_skips_what_cannot_verify() {
    let jwks = serde_json::json!({ "keys": [
        { "kty": "oct", "kid": "hmac", "k": "c2VjcmV0" },
        { "kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB" },
        { "kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo" },
    ]});
    let table = parse_jwks(jwks.to_string().as_bytes()).unwrap();
    assert_eq!(table.by_kid.len(), 1);
    assert_eq!(table.by_kid["ed"].family, Family::Ed25519);
    assert!(parse_jwks(b"{\"nope\": 1}").is_err());
}
