//! Tokens to identity: bearer JWT validation (keys from JWKS), a cache of
//! verified tokens, identity headers for backends, and RBAC per route.
//!
//! A cache hit costs one hash lookup on the whole token (never a hash of
//! it, so two tokens cannot share an entry) and no signature check; entries
//! expire at the token's `exp`.

mod claims;
mod internal;
mod introspection;
mod keys;
mod reserved;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use http::{HeaderName, HeaderValue};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use portcullis_config as config;

pub use claims::{claim_to_header_value, lookup_claim};
pub use internal::{InternalTokens, SigningKey};
pub use keys::{parse_jwks, Family, KeyError, ProviderKeys};
pub use reserved::ReservedHeaders;

/// Why a request is not let through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(&'static str),
    #[error("the caller lacks a required role")]
    Forbidden,
    /// RFC 9470: the user signed in, but not strongly enough (`acr`,
    /// `amr`) for this route.
    #[error("the user must sign in with a stronger method")]
    InsufficientAuthentication,
    #[error("the identity provider cannot be asked")]
    Unavailable,
}

/// A verified caller.
#[derive(Debug)]
pub struct Identity {
    pub provider: usize,
    pub subject: Option<String>,
    pub roles: Vec<String>,
    /// The identity headers for backends, built once per token.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The mapped claims (claim path → value), for the internal token.
    pub claims: Vec<(String, serde_json::Value)>,
    /// Granted scopes (`scope` or `scp`).
    pub scopes: Vec<String>,
    /// `client_id` or `azp`.
    pub client_id: Option<String>,
    /// Every claim, for the routes' claim matchers.
    pub raw_claims: serde_json::Map<String, serde_json::Value>,
    /// `exp`, seconds since the epoch.
    pub expires_at: u64,
}

/// A caller who passed a route's checks.
pub struct Authorized<'h> {
    pub identity: Arc<Identity>,
    /// The token or API key presented (keys the internal-token cache).
    pub credential: &'h str,
}

/// A route's authentication and roles, compiled.
#[derive(Debug, Default)]
pub struct RoutePolicy {
    pub mode: config::AuthMode,
    /// Indices of accepted providers; empty = all.
    providers: Vec<usize>,
    roles_any: Vec<String>,
    roles_all: Vec<String>,
    scopes_any: Vec<String>,
    scopes_all: Vec<String>,
    claims: Vec<(String, String)>,
    client_ids: Vec<String>,
    /// The token's `acr` must be one of these (none: any).
    require_acr: Vec<String>,
    /// The token's `amr` must hold all of these.
    require_amr: Vec<String>,
    /// The RFC 9470 challenge for a token that fails `require_acr` or
    /// `require_amr`, built once.
    pub step_up_challenge: Option<HeaderValue>,
    /// API keys are accepted too.
    pub api_keys: bool,
    /// Browsers without credentials are sent to the login page.
    pub login_redirect: bool,
}

impl RoutePolicy {
    /// Any valid token of one provider (the browser-login check).
    pub fn for_provider(provider: usize) -> RoutePolicy {
        RoutePolicy {
            mode: config::AuthMode::Required,
            providers: vec![provider],
            roles_any: Vec::new(),
            roles_all: Vec::new(),
            scopes_any: Vec::new(),
            scopes_all: Vec::new(),
            claims: Vec::new(),
            client_ids: Vec::new(),
            require_acr: Vec::new(),
            require_amr: Vec::new(),
            step_up_challenge: None,
            api_keys: false,
            login_redirect: false,
        }
    }

    pub fn compile(auth: &config::RouteAuth, identity: &config::Identity) -> RoutePolicy {
        let providers = &identity.providers;
        RoutePolicy {
            mode: auth.mode.unwrap_or(identity.default_mode),
            providers: auth
                .providers
                .iter()
                .filter_map(|name| providers.iter().position(|p| &p.name == name))
                .collect(),
            roles_any: auth.roles_any.clone(),
            roles_all: auth.roles_all.clone(),
            scopes_any: auth.scopes_any.clone(),
            scopes_all: auth.scopes_all.clone(),
            claims: auth
                .claims
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            client_ids: auth.client_ids.clone(),
            require_acr: auth.require_acr.clone(),
            require_amr: auth.require_amr.clone(),
            step_up_challenge: (!auth.require_acr.is_empty() || !auth.require_amr.is_empty())
                .then(|| step_up_challenge(&auth.require_acr)),
            api_keys: auth.api_keys,
            login_redirect: auth.login_redirect,
        }
    }

    /// The levels this route accepts (`require_acr`).
    pub fn required_acr(&self) -> &[String] {
        &self.require_acr
    }

    /// RFC 9470: whether the user signed in strongly enough for the route
    /// (`acr` one of `require_acr`, `amr` holding all of `require_amr`).
    pub fn authenticated_enough(&self, identity: &Identity) -> bool {
        let acr_ok = self.require_acr.is_empty()
            || matches!(identity.raw_claims.get("acr"),
                Some(serde_json::Value::String(acr)) if self.require_acr.contains(acr));
        let amr_ok = self.require_amr.iter().all(|want| {
            matches!(identity.raw_claims.get("amr"),
                Some(serde_json::Value::Array(methods))
                    if methods.iter().any(|m| m.as_str() == Some(want.as_str())))
        });
        acr_ok && amr_ok
    }

    /// RBAC: roles (all of `roles_all`, one of `roles_any`), scopes the
    /// same way, claim matchers, allowed client ids.
    pub fn allows(&self, identity: &Identity) -> bool {
        let any_all = |have: &[String], any: &[String], all: &[String]| {
            let has = |want: &String| have.iter().any(|h| h == want);
            all.iter().all(has) && (any.is_empty() || any.iter().any(has))
        };
        any_all(&identity.roles, &self.roles_any, &self.roles_all)
            && any_all(&identity.scopes, &self.scopes_any, &self.scopes_all)
            && (self.client_ids.is_empty()
                || identity
                    .client_id
                    .as_ref()
                    .is_some_and(|c| self.client_ids.contains(c)))
            && self.claims.iter().all(|(path, want)| {
                match lookup_claim(&identity.raw_claims, path) {
                    Some(serde_json::Value::String(s)) => s == want,
                    Some(serde_json::Value::Array(items)) => {
                        items.iter().any(|i| i.as_str() == Some(want.as_str()))
                    }
                    Some(serde_json::Value::Number(n)) => want.parse::<f64>().ok() == n.as_f64(),
                    Some(serde_json::Value::Bool(b)) => want.parse::<bool>().ok() == Some(*b),
                    _ => false,
                }
            })
    }

    fn accepts_provider(&self, provider: usize) -> bool {
        self.providers.is_empty() || self.providers.contains(&provider)
    }
}

/// `WWW-Authenticate` for RFC 9470 step-up: the error, and the levels that
/// would do as `acr_values` (those that can be quoted: values with spaces,
/// `"`, `\` or controls are left out rather than break the header).
fn step_up_challenge(acr_values: &[String]) -> HeaderValue {
    let quotable: Vec<&str> = acr_values
        .iter()
        .map(String::as_str)
        .filter(|v| {
            !v.is_empty()
                && v.bytes()
                    .all(|b| (0x21..0x7f).contains(&b) && b != b'"' && b != b'\\')
        })
        .collect();
    let mut text = String::from(
        "Bearer realm=\"portcullis\", error=\"insufficient_user_authentication\", error_description=\"A different authentication level is required\"",
    );
    if !quotable.is_empty() {
        text.push_str(&format!(", acr_values=\"{}\"", quotable.join(" ")));
    }
    HeaderValue::from_str(&text).unwrap_or_else(|_| {
        HeaderValue::from_static(
            "Bearer realm=\"portcullis\", error=\"insufficient_user_authentication\"",
        )
    })
}

struct CompiledProvider {
    issuer: String,
    keys: Arc<ProviderKeys>,
    algorithms: Vec<Algorithm>,
    /// One validation per algorithm: jsonwebtoken checks the alg against it.
    validations: HashMap<Algorithm, Validation>,
    hmac: Option<DecodingKey>,
    max_token_size: usize,
    require_at_jwt: bool,
    required_claims: Vec<String>,
    roles_claim: String,
    audiences: Vec<String>,
    leeway: u64,
    introspection: Option<introspection::Introspector>,
}

/// Which claims become which upstream headers.
struct HeaderMapping {
    name: HeaderName,
    claim: String,
}

/// The provider index of identities from API keys.
pub const API_KEY_PROVIDER: usize = usize::MAX;

fn decode_hex_32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The pseudo-claim that stands for the provider's roles.
pub const ROLES_CLAIM: &str = "@roles";

/// The per-config authenticator.
pub struct Authenticator {
    providers: Vec<CompiledProvider>,
    mapping: Vec<HeaderMapping>,
    reserved: ReservedHeaders,
    /// How lists are put into one header (see `claims::list_header_value`).
    separator: Option<String>,
    pub forward_authorization: bool,
    /// Say in the 401 challenge why a token failed (development only).
    pub insecure_error_details: bool,
    /// The gateway's own token for backends, when configured.
    pub internal: Option<InternalTokens>,
    /// API keys by the SHA-256 of the key.
    api_keys: HashMap<[u8; 32], Arc<Identity>, foldhash::fast::RandomState>,
    /// The header API keys come in.
    pub api_key_header: HeaderName,
    cache: moka::sync::Cache<Arc<str>, Arc<Identity>, foldhash::fast::RandomState>,
    largest_token: usize,
}

struct ExpireAtExp;

impl moka::Expiry<Arc<str>, Arc<Identity>> for ExpireAtExp {
    fn expire_after_create(
        &self,
        _key: &Arc<str>,
        value: &Arc<Identity>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(Duration::from_secs(
            value.expires_at.saturating_sub(now_secs()),
        ))
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

const DEFAULT_ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Provider key sets and the internal signing key, kept across reloads.
#[derive(Default)]
pub struct KeyRegistry {
    entries: Mutex<Vec<(String, String, Arc<ProviderKeys>)>>,
    /// (key file, algorithm) → signing key: a generated key must not change
    /// on reload, or backends would see an unknown kid.
    signing: Mutex<Option<(String, Arc<SigningKey>)>>,
}

impl KeyRegistry {
    fn signing_key(
        &self,
        spec: &config::InternalToken,
        source: &std::path::Path,
    ) -> Result<Arc<SigningKey>, KeyError> {
        let fingerprint = format!("{:?}/{}", spec.key_file, spec.algorithm);
        let mut slot = self.signing.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((f, key)) = slot.as_ref() {
            if *f == fingerprint {
                return Ok(key.clone());
            }
        }
        let alg = if spec.algorithm == "EdDSA" {
            Algorithm::EdDSA
        } else {
            Algorithm::ES256
        };
        let key = Arc::new(match &spec.key_file {
            Some(file) => SigningKey::from_pem_file(&config::resolve_path(source, file), alg)?,
            None => SigningKey::generate(alg)?,
        });
        *slot = Some((fingerprint, key.clone()));
        Ok(key)
    }

    /// The key set for a provider; a new one (to be refreshed by the
    /// caller) when the definition changed.
    pub fn get_or_create(
        &self,
        spec: &config::Provider,
        source: &std::path::Path,
    ) -> Result<(Arc<ProviderKeys>, bool), KeyError> {
        let fingerprint = format!(
            "{:?}{:?}{:?}{}{:?}{:?}{:?}",
            spec.jwks_uri,
            spec.jwks_file,
            spec.public_keys,
            spec.issuer,
            spec.min_refetch_interval,
            spec.jwks_refresh,
            spec.fetch_timeout
        );
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, _, keys)) = entries
            .iter()
            .find(|(n, f, _)| *n == spec.name && *f == fingerprint)
        {
            return Ok((keys.clone(), false));
        }
        let keys = Arc::new(ProviderKeys::new(spec, source)?);
        entries.retain(|(n, _, _)| *n != spec.name);
        entries.push((spec.name.clone(), fingerprint, keys.clone()));
        Ok((keys, true))
    }
}

impl Authenticator {
    /// Compiles the `identity` section. New key sets are returned so the
    /// caller can start their refresh.
    pub fn compile(
        identity: &config::Identity,
        registry: &KeyRegistry,
        source: &std::path::Path,
    ) -> Result<(Authenticator, Vec<Arc<ProviderKeys>>), KeyError> {
        let mut providers = Vec::new();
        let mut new_keys = Vec::new();
        for spec in &identity.providers {
            let (keys, created) = registry.get_or_create(spec, source)?;
            if created {
                new_keys.push(keys.clone());
            }
            let mut algorithms: Vec<Algorithm> = spec
                .algorithms
                .iter()
                .filter_map(|a| a.parse::<Algorithm>().ok())
                .collect();
            if algorithms.is_empty() {
                algorithms = DEFAULT_ALGORITHMS.to_vec();
                if spec.hmac_secret.is_some() {
                    algorithms.push(Algorithm::HS256);
                }
            }
            let validations = algorithms
                .iter()
                .map(|alg| {
                    let mut v = Validation::new(*alg);
                    v.leeway = spec.leeway.0.as_secs();
                    v.validate_nbf = true;
                    v.set_issuer(&[spec.issuer.as_str()]);
                    if spec.insecure_skip_audience {
                        v.validate_aud = false;
                        v.set_required_spec_claims(&["exp"]);
                    } else {
                        // A token without `aud` is not a token for us
                        // (RFC 8725 §3.9); jsonwebtoken only checks `aud`
                        // when present unless it is required.
                        v.set_audience(&spec.audiences);
                        v.set_required_spec_claims(&["exp", "aud"]);
                    }
                    (*alg, v)
                })
                .collect();
            providers.push(CompiledProvider {
                issuer: spec.issuer.clone(),
                keys,
                algorithms,
                validations,
                hmac: spec
                    .hmac_secret
                    .as_ref()
                    .map(|s| DecodingKey::from_secret(s.expose().as_bytes())),
                max_token_size: usize::try_from(spec.max_token_size.0).unwrap_or(usize::MAX),
                require_at_jwt: spec.require_at_jwt,
                required_claims: spec.required_claims.clone(),
                roles_claim: spec.roles_claim.clone(),
                audiences: if spec.insecure_skip_audience {
                    Vec::new()
                } else {
                    spec.audiences.clone()
                },
                leeway: spec.leeway.0.as_secs(),
                introspection: spec
                    .introspection
                    .as_ref()
                    .map(introspection::Introspector::new),
            });
        }
        let mapping: Vec<HeaderMapping> = if identity.headers.is_empty() {
            vec![
                HeaderMapping {
                    name: HeaderName::from_static("x-user-id"),
                    claim: "sub".into(),
                },
                HeaderMapping {
                    name: HeaderName::from_static("x-user-roles"),
                    claim: ROLES_CLAIM.into(),
                },
            ]
        } else {
            identity
                .headers
                .iter()
                .filter_map(|(name, claim)| {
                    Some(HeaderMapping {
                        name: HeaderName::from_bytes(name.as_bytes()).ok()?,
                        claim: claim.clone(),
                    })
                })
                .collect()
        };
        let default_prefixes = ["x-user-".to_owned(), "x-auth-".to_owned()];
        let prefixes = identity
            .reserved_prefixes
            .as_deref()
            .unwrap_or(&default_prefixes);
        let internal = identity
            .internal_token
            .as_ref()
            .map(|spec| InternalTokens::new(spec, registry.signing_key(spec, source)?))
            .transpose()?;
        let reserved = ReservedHeaders::new(
            mapping
                .iter()
                .map(|m| m.name.as_str())
                .chain(internal.as_ref().map(|i| i.header.as_str()))
                .chain(identity.reserved_headers.iter().map(String::as_str)),
            prefixes.iter().map(String::as_str),
        );
        let largest_token = providers
            .iter()
            .map(|p| p.max_token_size)
            .max()
            .unwrap_or(0);
        let mut authenticator = Authenticator {
            providers,
            mapping,
            reserved,
            separator: identity.separator.clone(),
            forward_authorization: identity.forward_authorization,
            insecure_error_details: identity.insecure_error_details,
            internal,
            // Keys are whole tokens (~1 KB): SipHash over them cost
            // ~200 ns a lookup, foldhash a tenth of it (benches/auth.rs).
            cache: moka::sync::Cache::builder()
                .max_capacity(identity.cache_entries)
                .expire_after(ExpireAtExp)
                .build_with_hasher(foldhash::fast::RandomState::default()),
            largest_token,
            api_keys: HashMap::default(),
            api_key_header: HeaderName::from_bytes(identity.api_key_header.as_bytes())
                .unwrap_or(HeaderName::from_static("x-api-key")),
        };
        authenticator.api_keys = identity
            .api_keys
            .iter()
            .filter_map(|key| {
                let digest = decode_hex_32(&key.sha256)?;
                let mut claims = serde_json::Map::new();
                claims.insert("sub".into(), key.subject.clone().into());
                let client_id = key.client_id.clone().unwrap_or_else(|| key.subject.clone());
                claims.insert("client_id".into(), client_id.into());
                let identity = authenticator.identity_with_roles(
                    API_KEY_PROVIDER,
                    &claims,
                    key.roles.clone(),
                    u64::MAX,
                );
                Some((digest, Arc::new(identity)))
            })
            .collect();
        Ok((authenticator, new_keys))
    }

    /// The principal of an API key (its SHA-256 is looked up; the key
    /// itself is never stored).
    pub fn authenticate_api_key(&self, key: &str) -> Result<Arc<Identity>, AuthError> {
        let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
        let mut hash = [0u8; 32];
        hash.copy_from_slice(digest.as_ref());
        self.api_keys
            .get(&hash)
            .cloned()
            .ok_or(AuthError::Invalid("unknown API key"))
    }

    /// The API key a request carries: the configured header, or
    /// `Authorization: ApiKey <key>`.
    pub fn api_key<'r>(&self, headers: &'r http::HeaderMap) -> Option<&'r str> {
        if let Some(value) = headers.get(&self.api_key_header) {
            return value.to_str().ok().map(str::trim).filter(|k| !k.is_empty());
        }
        let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, key) = value.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("apikey")
            .then(|| key.trim())
            .filter(|k| !k.is_empty())
    }

    /// Whether a header name is one only the gateway may set: matched
    /// case-insensitively and with `_` read as `-`, because some servers
    /// (CGI, nginx with underscores_in_headers) treat them as the same.
    pub fn is_reserved(&self, name: &str) -> bool {
        self.reserved.contains(name)
    }

    /// The credential check of a route with `auth`: an API key (where the
    /// route takes them) or a bearer token, then the route's roles.
    /// `Ok(None)`: no credential on an `optional` route.
    pub async fn authorize<'h>(
        &self,
        policy: &RoutePolicy,
        headers: &'h http::HeaderMap,
    ) -> Result<Option<Authorized<'h>>, AuthError> {
        let (identity, credential) = match policy.api_keys.then(|| self.api_key(headers)).flatten()
        {
            Some(key) => (self.authenticate_api_key(key)?, key),
            None => match headers.get(http::header::AUTHORIZATION).and_then(bearer) {
                Some(token) => (self.authenticate(token, policy).await?, token),
                None if policy.mode == config::AuthMode::Required => {
                    return Err(AuthError::Missing)
                }
                None => return Ok(None),
            },
        };
        // A stronger sign-in may bring other roles: asked for first.
        if !policy.authenticated_enough(&identity) {
            return Err(AuthError::InsufficientAuthentication);
        }
        if !policy.allows(&identity) {
            return Err(AuthError::Forbidden);
        }
        Ok(Some(Authorized {
            identity,
            credential,
        }))
    }

    /// Verifies a bearer token for a route: from the cache, or by signature
    /// and claims (fetching keys for an unknown `kid` within limits).
    pub async fn authenticate(
        &self,
        token: &str,
        policy: &RoutePolicy,
    ) -> Result<Arc<Identity>, AuthError> {
        if let Some(identity) = self.cache.get(token) {
            if identity.expires_at >= now_secs() && policy.accepts_provider(identity.provider) {
                return Ok(identity);
            }
            if !policy.accepts_provider(identity.provider) {
                return Err(AuthError::Invalid("issuer not accepted on this route"));
            }
        }
        let identity = self.verify(token, policy).await?;
        self.cache.insert(Arc::from(token), identity.clone());
        Ok(identity)
    }

    /// Verifies without the cache (what a cache miss costs); for benchmarks.
    pub async fn verify_uncached(
        &self,
        token: &str,
        policy: &RoutePolicy,
    ) -> Result<Arc<Identity>, AuthError> {
        self.verify(token, policy).await
    }

    async fn verify(&self, token: &str, policy: &RoutePolicy) -> Result<Arc<Identity>, AuthError> {
        if token.len() > self.largest_token {
            return Err(AuthError::Invalid("token too large"));
        }
        let Some(jws) = Jws::parse(token)? else {
            return self.introspect(token, policy).await;
        };
        let (header, alg, payload) = (&jws.header, jws.alg, &jws.payload);
        let kid = jws.kid();
        let issuer = payload
            .get("iss")
            .and_then(|i| i.as_str())
            .ok_or(AuthError::Invalid("no issuer"))?;
        let (index, provider) = self
            .providers
            .iter()
            .enumerate()
            .find(|(i, p)| p.issuer == issuer && policy.accepts_provider(*i))
            .ok_or(AuthError::Invalid("unknown issuer"))?;
        if token.len() > provider.max_token_size {
            return Err(AuthError::Invalid("token too large"));
        }
        if !provider.algorithms.contains(&alg) {
            return Err(AuthError::Invalid("algorithm not allowed"));
        }
        let validation = provider
            .validations
            .get(&alg)
            .ok_or(AuthError::Invalid("algorithm not allowed"))?;
        let claims = match Family::for_alg(alg) {
            None => {
                let key = provider
                    .hmac
                    .as_ref()
                    .ok_or(AuthError::Invalid("algorithm not allowed"))?;
                decode(token, key, validation)?
            }
            Some(family) => {
                let key = self.find_key(provider, kid, family, alg).await?;
                decode(token, &key.key, validation)?
            }
        };
        if provider.require_at_jwt {
            let typ = header.get("typ").and_then(|t| t.as_str()).unwrap_or("");
            if !typ.eq_ignore_ascii_case("at+jwt")
                && !typ.eq_ignore_ascii_case("application/at+jwt")
            {
                return Err(AuthError::Invalid("typ is not at+jwt"));
            }
        }
        for claim in &provider.required_claims {
            if lookup_claim(&claims, claim).is_none() {
                return Err(AuthError::Invalid("a required claim is missing"));
            }
        }
        let expires_at = claims
            .get("exp")
            .and_then(|e| e.as_u64())
            .ok_or(AuthError::Invalid("no exp"))?;
        Ok(Arc::new(self.identity(index, &claims, expires_at)))
    }

    /// A JWS a provider issued to `audience` that is not an access token:
    /// an ID token (`expiring`: `exp` required) or a logout token. The
    /// provider's keys, algorithms, size limit and leeway, as for bearer
    /// tokens; `iss` and `aud` must match exactly.
    pub async fn verify_issued_to(
        &self,
        provider: usize,
        token: &str,
        audience: &str,
        expiring: bool,
    ) -> Result<serde_json::Map<String, serde_json::Value>, AuthError> {
        let p = self
            .providers
            .get(provider)
            .ok_or(AuthError::Invalid("unknown issuer"))?;
        if token.len() > p.max_token_size {
            return Err(AuthError::Invalid("token too large"));
        }
        let jws = Jws::parse(token)?.ok_or(AuthError::Invalid("not a JWS compact token"))?;
        if !p.algorithms.contains(&jws.alg) {
            return Err(AuthError::Invalid("algorithm not allowed"));
        }
        let mut validation = Validation::new(jws.alg);
        validation.leeway = p.leeway;
        validation.validate_nbf = true;
        validation.validate_exp = expiring;
        validation.set_issuer(&[p.issuer.as_str()]);
        validation.set_audience(&[audience]);
        if expiring {
            validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        } else {
            validation.set_required_spec_claims(&["aud", "iss"]);
        }
        let key = match Family::for_alg(jws.alg) {
            None => p
                .hmac
                .clone()
                .ok_or(AuthError::Invalid("algorithm not allowed"))?,
            Some(family) => self
                .find_key(p, jws.kid(), family, jws.alg)
                .await?
                .key
                .clone(),
        };
        decode(token, &key, &validation)
    }

    /// The identity, with its headers, from verified claims.
    fn identity(
        &self,
        provider: usize,
        claims: &serde_json::Map<String, serde_json::Value>,
        expires_at: u64,
    ) -> Identity {
        let roles_claim = self
            .providers
            .get(provider)
            .map_or("roles", |p| p.roles_claim.as_str());
        self.identity_with_roles(
            provider,
            claims,
            claims::roles(claims, roles_claim),
            expires_at,
        )
    }

    fn identity_with_roles(
        &self,
        provider: usize,
        claims: &serde_json::Map<String, serde_json::Value>,
        roles: Vec<String>,
        expires_at: u64,
    ) -> Identity {
        let subject = claims
            .get("sub")
            .and_then(|s| s.as_str())
            .map(str::to_owned);
        let headers = self
            .mapping
            .iter()
            .filter_map(|m| {
                let value = if m.claim == ROLES_CLAIM {
                    claims::list_header_value(roles.iter().cloned(), self.separator.as_deref())
                } else {
                    claim_to_header_value(
                        lookup_claim(claims, &m.claim)?,
                        self.separator.as_deref(),
                    )
                }?;
                Some((m.name.clone(), value))
            })
            .collect();
        let mapped = self
            .mapping
            .iter()
            .filter(|m| m.claim != ROLES_CLAIM && m.claim != "sub")
            .filter_map(|m| Some((m.claim.clone(), lookup_claim(claims, &m.claim)?.clone())))
            .collect();
        let mut scopes = claims::roles(claims, "scope");
        if scopes.is_empty() {
            scopes = claims::roles(claims, "scp");
        }
        let client_id = ["client_id", "azp"]
            .iter()
            .find_map(|c| claims.get(*c).and_then(|v| v.as_str()))
            .map(str::to_owned);
        Identity {
            provider,
            subject,
            roles,
            headers,
            claims: mapped,
            scopes,
            client_id,
            raw_claims: claims.clone(),
            expires_at,
        }
    }

    /// An opaque token: asked of the first accepted provider that does
    /// introspection.
    async fn introspect(
        &self,
        token: &str,
        policy: &RoutePolicy,
    ) -> Result<Arc<Identity>, AuthError> {
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(AuthError::Invalid("malformed token"));
        }
        let Some((index, provider, introspector)) = self
            .providers
            .iter()
            .enumerate()
            .filter(|(i, _)| policy.accepts_provider(*i))
            .find_map(|(i, p)| p.introspection.as_ref().map(|x| (i, p, x)))
        else {
            return Err(AuthError::Invalid("not a JWS compact token"));
        };
        if token.len() > provider.max_token_size {
            return Err(AuthError::Invalid("token too large"));
        }
        let build = |claims: &serde_json::Map<String, serde_json::Value>, until: u64| {
            self.identity(index, claims, until)
        };
        introspector
            .introspect(
                token,
                &provider.keys,
                &provider.issuer,
                &provider.audiences,
                &build,
            )
            .await
    }

    async fn find_key(
        &self,
        provider: &CompiledProvider,
        kid: Option<&str>,
        family: Family,
        alg: Algorithm,
    ) -> Result<Arc<keys::VerifyKey>, AuthError> {
        let usable =
            |key: &Arc<keys::VerifyKey>| key.family == family && key.alg.is_none_or(|a| a == alg);
        match kid {
            Some(kid) => {
                if let Some(key) = provider.keys.table().by_kid.get(kid) {
                    return usable(key)
                        .then(|| key.clone())
                        .ok_or(AuthError::Invalid("key does not match the algorithm"));
                }
                provider.keys.refetch_for_unknown_kid(kid).await;
                let table = provider.keys.table();
                let key = table
                    .by_kid
                    .get(kid)
                    .ok_or(AuthError::Invalid("unknown key"))?;
                usable(key)
                    .then(|| key.clone())
                    .ok_or(AuthError::Invalid("key does not match the algorithm"))
            }
            None => {
                let table = provider.keys.table();
                let candidates: Vec<_> = table.without_kid.iter().filter(|k| usable(k)).collect();
                match candidates.as_slice() {
                    [only] => Ok((*only).clone()),
                    // Several keys and no kid: refuse rather than try each.
                    _ => Err(AuthError::Invalid("no kid and no single matching key")),
                }
            }
        }
    }

    /// Providers' key sets, for the readiness of `/config` and tests.
    pub fn provider_count(&self) -> usize {
        self.providers.len()
    }
}

fn decode(
    token: &str,
    key: &DecodingKey,
    validation: &Validation,
) -> Result<serde_json::Map<String, serde_json::Value>, AuthError> {
    use jsonwebtoken::errors::ErrorKind;
    jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, key, validation)
        .map(|data| data.claims)
        .map_err(|e| {
            AuthError::Invalid(match e.kind() {
                ErrorKind::ExpiredSignature => "expired",
                ErrorKind::ImmatureSignature => "not valid yet",
                ErrorKind::InvalidIssuer => "wrong issuer",
                ErrorKind::InvalidAudience => "wrong audience",
                ErrorKind::InvalidSignature => "bad signature",
                ErrorKind::MissingRequiredClaim(_) => "a required claim is missing",
                ErrorKind::InvalidAlgorithm => "algorithm does not match the key",
                _ => "rejected",
            })
        })
}

/// Most bytes of a decoded header or payload we look at.
const MAX_SEGMENT: usize = 64 * 1024;

/// A compact JWS, header and payload decoded, signature not yet checked.
struct Jws {
    header: serde_json::Map<String, serde_json::Value>,
    alg: Algorithm,
    payload: serde_json::Map<String, serde_json::Value>,
}

impl Jws {
    /// `None`: not three dot-separated parts (perhaps an opaque token).
    fn parse(token: &str) -> Result<Option<Jws>, AuthError> {
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(_signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Ok(None);
        };
        let header = decode_json(header_b64).ok_or(AuthError::Invalid("malformed header"))?;
        // A critical extension we do not implement must fail (RFC 7515 §4.1.11).
        if header.contains_key("crit") {
            return Err(AuthError::Invalid("unsupported critical header"));
        }
        let alg = header
            .get("alg")
            .and_then(|a| a.as_str())
            .and_then(|a| a.parse::<Algorithm>().ok())
            .ok_or(AuthError::Invalid("unsupported algorithm"))?;
        match header.get("kid") {
            None => {}
            Some(serde_json::Value::String(kid)) if kid.len() <= 256 => {}
            Some(_) => return Err(AuthError::Invalid("malformed kid")),
        }
        let payload = decode_json(payload_b64).ok_or(AuthError::Invalid("malformed payload"))?;
        Ok(Some(Jws {
            header,
            alg,
            payload,
        }))
    }

    fn kid(&self) -> Option<&str> {
        self.header.get("kid").and_then(|k| k.as_str())
    }
}

fn decode_json(segment: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    if segment.len() > MAX_SEGMENT {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment)
        .ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        serde_json::Value::Object(map) => Some(map),
        _ => None,
    }
}

/// The bearer token of an `Authorization` header (RFC 6750 §2.1).
pub fn bearer(value: &HeaderValue) -> Option<&str> {
    let text = value.to_str().ok()?;
    let (scheme, token) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests;
