//! The file model: what a user writes in `portcullis.yaml`, with every default.
//!
//! Types here are deserialized with `deny_unknown_fields`; each field's doc
//! says its default, and the JSON Schema (`portcullis schema`) is derived from
//! the same types so editors see the same words.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use ipnet::IpNet;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::secret::Secret;
use crate::units::{ByteSize, Duration};

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Addresses the gateway accepts traffic on. At least one.
    pub listeners: Vec<Listener>,
    /// The admin listener (metrics, health, reload). Defaults to 127.0.0.1:9901.
    #[serde(default)]
    pub admin: Admin,
    /// Process-wide settings. Every field has a default.
    #[serde(default)]
    pub server: Server,
    /// Named pools of backend targets.
    #[serde(default)]
    pub upstreams: BTreeMap<String, Upstream>,
    /// Routes, matched by host, path, method and headers (see README for the precedence).
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Token validation and the identity headers sent to backends.
    #[serde(default)]
    pub identity: Identity,
    /// The Redis server for global rate limits. Defaults to none.
    #[serde(default)]
    pub redis: Option<Redis>,
    /// Where rate-limit counters live and what happens when Redis fails.
    #[serde(default)]
    pub rate_limits: RateLimitSettings,
    /// The merged OpenAPI document of the backends and the docs portal.
    /// Defaults to off.
    #[serde(default)]
    pub portal: Portal,
}

/// The docs portal: the backends' OpenAPI documents (routes with `openapi`)
/// merged along the routing table, served on every listener.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Portal {
    /// Serve the merged document and the portal. Defaults to false.
    #[serde(default)]
    pub enabled: bool,
    /// Path of the merged document as JSON; the same path ending in `.yaml`
    /// serves YAML. Defaults to `/openapi.json`.
    #[serde(default = "default_spec_path")]
    pub spec_path: String,
    /// Path of the portal (Swagger UI, embedded). Defaults to `/docs`.
    #[serde(default = "default_docs_path")]
    pub docs_path: String,
    /// `info.title` of the merged document and the portal's title.
    /// Defaults to `API`.
    #[serde(default = "default_portal_title")]
    pub title: String,
    /// The gateway's public URLs, written to `servers`. Defaults to none
    /// (the document's paths are then relative to where it was loaded from).
    #[serde(default)]
    pub servers: Vec<String>,
    /// How often each backend's document is fetched again (with
    /// `If-None-Match`). Defaults to 30s.
    #[serde(default = "default_portal_refresh")]
    pub refresh_interval: Duration,
    /// Longest wait for one backend's document. Defaults to 5s.
    #[serde(default = "default_portal_fetch_timeout")]
    pub fetch_timeout: Duration,
    /// Largest backend document accepted. Defaults to 10MiB.
    #[serde(default = "default_portal_max_size")]
    pub max_document_size: ByteSize,
    /// Hide the operations a caller cannot reach: anonymous callers see the
    /// routes without required authentication, callers with a token the
    /// routes whose roles, scopes and claims they pass. Defaults to true.
    #[serde(default = "default_true")]
    pub hide_unreachable: bool,
}

impl Default for Portal {
    fn default() -> Self {
        Portal {
            enabled: false,
            spec_path: default_spec_path(),
            docs_path: default_docs_path(),
            title: default_portal_title(),
            servers: Vec::new(),
            refresh_interval: default_portal_refresh(),
            fetch_timeout: default_portal_fetch_timeout(),
            max_document_size: default_portal_max_size(),
            hide_unreachable: true,
        }
    }
}

fn default_spec_path() -> String {
    "/openapi.json".into()
}

fn default_docs_path() -> String {
    "/docs".into()
}

fn default_portal_title() -> String {
    "API".into()
}

fn default_portal_refresh() -> Duration {
    Duration::from_secs(30)
}

fn default_portal_fetch_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_portal_max_size() -> ByteSize {
    ByteSize(10 * 1024 * 1024)
}

/// A Redis server.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Redis {
    /// `redis://host:port[/db]`; a password belongs in `${ENV}`. Give this
    /// or `cluster`.
    #[serde(default)]
    pub url: Option<Secret>,
    /// Redis Cluster seed nodes (`redis://host:port`); the topology is
    /// discovered from them. Give this or `url`.
    #[serde(default)]
    pub cluster: Vec<Secret>,
    /// Longest wait for one Redis call. Defaults to 100ms.
    #[serde(default = "default_redis_timeout")]
    pub timeout: Duration,
    /// Prefix of every key. Defaults to `portcullis`.
    #[serde(default = "default_redis_prefix")]
    pub key_prefix: String,
}

fn default_redis_timeout() -> Duration {
    Duration(std::time::Duration::from_millis(100))
}
fn default_redis_prefix() -> String {
    "portcullis".to_owned()
}

/// Rate-limit storage.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSettings {
    /// `memory` (default: this process only) or `redis` (global across replicas).
    #[serde(default)]
    pub store: RateLimitStore,
    /// When Redis cannot answer: `local_fallback` (default: each replica
    /// enforces rate / `replicas` in memory until Redis is back),
    /// `fail_open` (allow), `fail_closed` (503).
    #[serde(default)]
    pub on_redis_error: RedisFailure,
    /// Replicas sharing the global limit, for `local_fallback`. Defaults to 1.
    #[serde(default)]
    pub replicas: Option<u32>,
    /// Send the `RateLimit` header on allowed responses too. Defaults to false.
    #[serde(default)]
    pub headers_on_success: bool,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitStore {
    #[default]
    Memory,
    Redis,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RedisFailure {
    #[default]
    LocalFallback,
    FailOpen,
    FailClosed,
}

/// One rate limit of a route.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteLimit {
    /// Name in the `RateLimit-Policy` header. Defaults to the key.
    #[serde(default)]
    pub name: Option<String>,
    /// What is counted: `client_ip`, `user`, `client_id`, `api_key`,
    /// `route`, `header:NAME`, or a list of them (combined). `user` and
    /// `client_id` fall back to the client IP for anonymous calls.
    #[schemars(with = "serde_json::Value")]
    #[serde(deserialize_with = "one_or_many")]
    pub key: Vec<String>,
    /// `N/s`, `N/m` or `N/h`, e.g. `100/s`, `10000/h`.
    pub rate: String,
    /// Requests allowed at once above the steady rate. Defaults to N.
    #[serde(default)]
    pub burst: Option<u32>,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    match OneOrMany::deserialize(d) {
        Ok(OneOrMany::One(key)) => Ok(vec![key]),
        Ok(OneOrMany::Many(keys)) => Ok(keys),
        Err(_) => Err(serde::de::Error::custom(
            "expected a key (`client_ip`, `user`, ...) or a list of keys",
        )),
    }
}

/// Who may call: token issuers and how identities reach backends.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// Token issuers. Defaults to none (routes with `auth` then reject).
    #[serde(default)]
    pub providers: Vec<Provider>,
    /// Upstream header → claim path (`sub`, `realm_access.roles`). Defaults
    /// to `X-User-Id: sub`, `X-User-Roles: <the provider's roles_claim>`
    /// when empty.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Header names and prefixes that only the gateway may set. Whatever a
    /// client sends under them is removed on every route (also with auth
    /// off), in any case and with `_` for `-`. Defaults to the names in
    /// `headers` and the prefixes `X-User-` and `X-Auth-`.
    #[serde(default)]
    pub reserved_prefixes: Option<Vec<String>>,
    /// More header names that clients may never send (stripped like the
    /// built-in set: `X-Forwarded-User`, `Remote-User`, `X-Real-IP`,
    /// `X-Original-URL`, … — see the README). Defaults to none.
    #[serde(default)]
    pub reserved_headers: Vec<String>,
    /// How a list claim (roles, groups) is put into one header. Without a
    /// separator (the default): an RFC 8941 List of Strings, `"reader",
    /// "admin"` — unambiguous whatever the items hold. With one (e.g. `,`):
    /// items joined with it, and an item that contains it is left out
    /// (logged), so one role never reaches a backend as two. Defaults to none.
    #[serde(default)]
    pub separator: Option<String>,
    /// Forward the client's `Authorization` header upstream. Defaults to false.
    #[serde(default)]
    pub forward_authorization: bool,
    /// Say in 401 answers which check a token failed (`error_description`).
    /// For development: it tells an attacker what to try next. The reason
    /// is always in the access log. Defaults to false.
    #[serde(default)]
    pub insecure_error_details: bool,
    /// Verified tokens kept in memory. Defaults to 100000.
    #[serde(default = "default_cache_entries")]
    pub cache_entries: u64,
    /// A short-lived JWT the gateway signs for backends, so they can verify
    /// the caller cryptographically; public keys at `/.well-known/jwks.json`
    /// on the proxy listeners. Defaults to off.
    #[serde(default)]
    pub internal_token: Option<InternalToken>,
    /// API keys for external systems, stored as SHA-256 hashes. Defaults to none.
    #[serde(default)]
    pub api_keys: Vec<ApiKey>,
    /// Header an API key comes in (also accepted: `Authorization: ApiKey
    /// <key>`). Defaults to `X-API-Key`.
    #[serde(default = "default_api_key_header")]
    pub api_key_header: String,
    /// `auth.mode` of routes that do not set one: `none` (default),
    /// `optional` or `required`. `required` is the safe choice for an API
    /// gateway; public routes then say `auth: { mode: none }`.
    #[serde(default)]
    pub default_mode: AuthMode,
    /// Browser login (OIDC authorization code + PKCE) with a session
    /// cookie: a browser signs in once, and its session's access token is
    /// checked on every route like a bearer token. Defaults to off.
    #[serde(default)]
    pub login: Option<BrowserLogin>,
}

/// The gateway as an OpenID Connect relying party for browsers.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BrowserLogin {
    /// The provider (of `identity.providers`) users sign in with; its
    /// issuer's discovery document gives the endpoints. Required.
    pub provider: String,
    /// The gateway's client id at the provider. Required.
    pub client_id: String,
    /// Its client secret (`${ENV}`); without one the gateway is a public
    /// client and relies on PKCE alone. Defaults to none.
    #[serde(default)]
    pub client_secret: Option<Secret>,
    /// Scopes asked for. Defaults to `[openid]`.
    #[serde(default = "default_login_scopes")]
    pub scopes: Vec<String>,
    /// The gateway's public URL (`https://api.example.com`): the redirect
    /// URI, the post-logout URI and the back-channel logout URI are under
    /// it, and a logout must come from this origin. Required with `login`
    /// (a request's `Host` never makes a URI sent to the provider).
    #[serde(default)]
    pub public_url: Option<String>,
    /// Where the browser starts a login (`?rd=/path` to come back to).
    /// Defaults to `/_auth/login`.
    #[serde(default = "default_login_path")]
    pub login_path: String,
    /// The redirect URI's path, registered at the provider. Defaults to
    /// `/_auth/callback`.
    #[serde(default = "default_callback_path")]
    pub callback_path: String,
    /// Ends the session (and the provider's). Defaults to `/_auth/logout`.
    #[serde(default = "default_logout_path")]
    pub logout_path: String,
    /// Where the provider posts logout tokens (OpenID Connect Back-Channel
    /// Logout; register `public_url` + this path as the client's
    /// `backchannel_logout_uri`). Defaults to `/_auth/backchannel-logout`.
    #[serde(default = "default_backchannel_logout_path")]
    pub backchannel_logout_path: String,
    /// Refresh the access token this long before it expires (at most half
    /// its lifetime). Defaults to 30s.
    #[serde(default = "default_refresh_before")]
    pub refresh_before: Duration,
    /// Where the provider sends the browser after logout (a path of the
    /// gateway, registered at the provider). Defaults to none.
    #[serde(default)]
    pub post_logout_path: Option<String>,
    /// The session cookie. Defaults to `portcullis_session`.
    #[serde(default = "default_session_cookie")]
    pub cookie: String,
    /// Longest session. Defaults to 8h.
    #[serde(default = "default_session_ttl")]
    pub session_ttl: Duration,
    /// `Secure` cookies; false only for local plain HTTP. Defaults to true.
    #[serde(default = "default_true")]
    pub secure_cookies: bool,
    /// Most sessions kept (in memory). Defaults to 100000.
    #[serde(default = "default_session_entries")]
    pub max_sessions: u64,
    /// Where sessions and logins in progress live: `memory` (one replica)
    /// or `redis` (the top-level `redis`; every replica knows every
    /// session). Defaults to memory.
    #[serde(default)]
    pub store: SessionStore,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SessionStore {
    #[default]
    Memory,
    Redis,
}

fn default_backchannel_logout_path() -> String {
    "/_auth/backchannel-logout".into()
}

/// Half a minute covers clock skew and a slow provider, and is short
/// against the usual 5-minute access tokens.
fn default_refresh_before() -> Duration {
    Duration(std::time::Duration::from_secs(30))
}

fn default_login_scopes() -> Vec<String> {
    vec!["openid".into()]
}

fn default_login_path() -> String {
    "/_auth/login".into()
}

fn default_callback_path() -> String {
    "/_auth/callback".into()
}

fn default_logout_path() -> String {
    "/_auth/logout".into()
}

fn default_session_cookie() -> String {
    "portcullis_session".into()
}

fn default_session_ttl() -> Duration {
    Duration::from_secs(8 * 3600)
}

const fn default_session_entries() -> u64 {
    100_000
}

impl Default for Identity {
    fn default() -> Self {
        Identity {
            providers: Vec::new(),
            headers: BTreeMap::new(),
            reserved_prefixes: None,
            reserved_headers: Vec::new(),
            separator: None,
            forward_authorization: false,
            insecure_error_details: false,
            cache_entries: default_cache_entries(),
            internal_token: None,
            api_keys: Vec::new(),
            api_key_header: default_api_key_header(),
            default_mode: AuthMode::None,
            login: None,
        }
    }
}

fn default_api_key_header() -> String {
    "x-api-key".to_owned()
}

/// An API key of an external system. Only its hash is configured:
/// `printf %s "$KEY" | sha256sum`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// Hex SHA-256 of the key.
    pub sha256: String,
    /// The principal's id (`sub` of the identity headers).
    pub subject: String,
    /// Its client id. Defaults to the subject.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Its roles.
    #[serde(default)]
    pub roles: Vec<String>,
}

/// The gateway's own token for backends.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InternalToken {
    /// Header it is sent in. Defaults to `X-Internal-Token`.
    #[serde(default = "default_internal_header")]
    pub header: String,
    /// Lifetime. Defaults to 60s.
    #[serde(default = "default_internal_ttl")]
    pub ttl: Duration,
    /// `ES256` (default) or `EdDSA`.
    #[serde(default = "default_internal_alg")]
    pub algorithm: String,
    /// PKCS#8 PEM signing key, shared by all replicas (a Kubernetes
    /// Secret). Defaults to a key generated at start, kept across reloads:
    /// fine for one replica.
    #[serde(default)]
    pub key_file: Option<String>,
    /// `iss` of the token. Defaults to `portcullis`.
    #[serde(default = "default_internal_issuer")]
    pub issuer: String,
    /// `aud` of the token. Defaults to none.
    #[serde(default)]
    pub audience: Option<String>,
}

fn default_internal_header() -> String {
    "x-internal-token".to_owned()
}
fn default_internal_ttl() -> Duration {
    Duration::from_secs(60)
}
fn default_internal_alg() -> String {
    "ES256".to_owned()
}
fn default_internal_issuer() -> String {
    "portcullis".to_owned()
}

const fn default_cache_entries() -> u64 {
    100_000
}

/// An OAuth2/OIDC token issuer.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    /// Unique name, used by routes' `auth.providers`.
    pub name: String,
    /// The `iss` tokens must carry. Required.
    pub issuer: String,
    /// Where the signing keys are. Defaults to OIDC discovery:
    /// `<issuer>/.well-known/openid-configuration` → `jwks_uri`.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// A local JWKS file instead of fetching keys.
    #[serde(default)]
    pub jwks_file: Option<String>,
    /// Static PEM public keys (SPKI: RSA, P-256, P-384, Ed25519), used with
    /// or instead of a JWKS. Defaults to none.
    #[serde(default)]
    pub public_keys: Vec<PublicKeyFile>,
    /// Accepted `aud` values; a token must name one. Required unless
    /// `insecure_skip_audience` is set.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Accept tokens for any audience. Defaults to false.
    #[serde(default)]
    pub insecure_skip_audience: bool,
    /// Allowed algorithms. Defaults to RS256, RS384, RS512, PS256, PS384,
    /// PS512, ES256, ES384, EdDSA. `none` is never accepted; HS256 only
    /// with `hmac_secret`.
    #[serde(default)]
    pub algorithms: Vec<String>,
    /// Shared secret for HS256/384/512 (use `${ENV}`). Defaults to none.
    #[serde(default)]
    pub hmac_secret: Option<Secret>,
    /// Clock skew allowed for `exp`, `nbf`, `iat`. Defaults to 30s.
    #[serde(default = "default_leeway")]
    pub leeway: Duration,
    /// Claims that must be present. Defaults to `exp` (always required) only.
    #[serde(default)]
    pub required_claims: Vec<String>,
    /// Require the JWT `typ` header to be `at+jwt` (RFC 9068). Defaults to false.
    #[serde(default)]
    pub require_at_jwt: bool,
    /// Claim path holding roles (array, or space-separated string such as
    /// `scope`). Defaults to `roles`.
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// Background key refresh period. Defaults to 10m.
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh: Duration,
    /// Least time between two fetches caused by unknown `kid`s, so forged
    /// kids cannot hammer the IdP. Defaults to 30s.
    #[serde(default = "default_min_refetch")]
    pub min_refetch_interval: Duration,
    /// Timeout of a key fetch. Defaults to 3s.
    #[serde(default = "default_fetch_timeout")]
    pub fetch_timeout: Duration,
    /// Longer tokens are rejected before parsing. Defaults to 8KiB.
    #[serde(default = "default_max_token_size")]
    pub max_token_size: ByteSize,
    /// Opaque (non-JWT) tokens are checked with RFC 7662 introspection.
    /// Defaults to off: opaque tokens are rejected.
    #[serde(default)]
    pub introspection: Option<Introspection>,
}

/// A PEM public key file.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PublicKeyFile {
    /// Path of the PEM file.
    pub file: String,
    /// The `kid` tokens name it by. Defaults to none: tokens without `kid`.
    #[serde(default)]
    pub kid: Option<String>,
}

/// RFC 7662 token introspection for opaque tokens.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Introspection {
    /// Defaults to the discovery document's `introspection_endpoint`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The gateway's client id at the IdP (HTTP Basic authentication).
    pub client_id: String,
    /// Its secret; write `${ENV_VAR}`.
    pub client_secret: Secret,
    /// Longest time an active answer is reused (never past the token's
    /// `exp`). Defaults to 5m.
    #[serde(default = "default_introspection_ttl")]
    pub max_ttl: Duration,
    /// How long an inactive answer is reused. Defaults to 10s.
    #[serde(default = "default_negative_ttl")]
    pub negative_ttl: Duration,
    /// When the IdP cannot be asked (down, slow, error): `unavailable`
    /// answers 503, `reject` answers 401. Defaults to `unavailable`.
    #[serde(default)]
    pub on_error: IntrospectionFailure,
}

fn default_introspection_ttl() -> Duration {
    Duration::from_secs(300)
}
fn default_negative_ttl() -> Duration {
    Duration::from_secs(10)
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum IntrospectionFailure {
    #[default]
    Unavailable,
    Reject,
}

fn default_leeway() -> Duration {
    Duration::from_secs(30)
}
fn default_roles_claim() -> String {
    "roles".to_owned()
}
fn default_jwks_refresh() -> Duration {
    Duration::from_secs(600)
}
fn default_min_refetch() -> Duration {
    Duration::from_secs(30)
}
fn default_fetch_timeout() -> Duration {
    Duration::from_secs(3)
}
fn default_max_token_size() -> ByteSize {
    ByteSize(8 * 1024)
}

/// Authentication and authorization of one route.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteAuth {
    /// `none`, `optional` (identity headers when a valid token comes; no
    /// token passes), or `required` (401 without a valid token). Defaults
    /// to `identity.default_mode`.
    #[serde(default)]
    pub mode: Option<AuthMode>,
    /// Providers accepted. Defaults to all.
    #[serde(default)]
    pub providers: Vec<String>,
    /// Also accept the API keys of `identity.api_keys`. Defaults to false.
    #[serde(default)]
    pub api_keys: bool,
    /// The caller needs at least one of these roles (403 otherwise).
    #[serde(default)]
    pub roles_any: Vec<String>,
    /// The caller needs all of these roles (403 otherwise).
    #[serde(default)]
    pub roles_all: Vec<String>,
    /// The token must grant one of these scopes (`scope`/`scp` claim).
    #[serde(default)]
    pub scopes_any: Vec<String>,
    /// The token must grant all of these scopes.
    #[serde(default)]
    pub scopes_all: Vec<String>,
    /// Claim path → required value: equal for a string claim, contained
    /// for an array claim (`tenant: acme`, `groups: ops`).
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
    /// Allowed client ids (`client_id` or `azp` claim). Defaults to any.
    #[serde(default)]
    pub client_ids: Vec<String>,
    /// The token's `acr` (how strongly the user signed in) must be one of
    /// these, e.g. `urn:portcullis:acr:mfa`; otherwise 401 with RFC 9470's
    /// `insufficient_user_authentication` and these as `acr_values`, so
    /// the client can ask the provider for a stronger sign-in. Defaults
    /// to any.
    #[serde(default)]
    pub require_acr: Vec<String>,
    /// The token's `amr` must contain all of these (RFC 8176 names: `mfa`,
    /// `otp`, `hwk`, …); otherwise 401 `insufficient_user_authentication`.
    /// Defaults to none.
    #[serde(default)]
    pub require_amr: Vec<String>,
    /// A browser (`GET`, `Accept: text/html`) without credentials is sent
    /// to `identity.login` instead of a 401. Defaults to false.
    #[serde(default)]
    pub login_redirect: bool,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    #[default]
    None,
    Optional,
    Required,
}

/// One listening socket.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// A name for logs and metrics. Required, unique.
    pub name: String,
    /// `IP:port` to bind, e.g. `0.0.0.0:8443`.
    #[schemars(with = "String")]
    pub address: SocketAddr,
    /// Terminate TLS on this listener. Defaults to plain HTTP.
    #[serde(default)]
    pub tls: Option<ListenerTls>,
    /// Answer every request on this (plain) listener with a 308 redirect to
    /// `https://` on the given port. Defaults to off.
    #[serde(default)]
    pub redirect_https: Option<RedirectHttps>,
    /// Send `Strict-Transport-Security` on responses. Defaults to off.
    #[serde(default)]
    pub hsts: Option<Hsts>,
    /// Accept HTTP/2 without TLS (h2c, prior knowledge) on a plain listener,
    /// for gRPC clients inside the cluster. Defaults to false.
    #[serde(default)]
    pub h2c: bool,
    /// Most open client connections on this listener (beside
    /// `server.limits.max_connections` for all); a new one beyond it is
    /// closed at once. Defaults to no limit of its own.
    #[serde(default)]
    pub max_connections: Option<usize>,
}

/// TLS on a listener: rustls, TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// Certificates, chosen by SNI against each certificate's DNS names
    /// (exact before wildcard). The first one is the default for clients
    /// that send no or an unknown SNI name. At least one.
    pub certificates: Vec<CertificateFiles>,
    /// Require or request client certificates (mTLS). Defaults to off.
    #[serde(default)]
    pub client_auth: Option<ClientAuth>,
}

/// A PEM certificate chain and its private key. Both files are watched and
/// reloaded when they change.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CertificateFiles {
    /// Path of the PEM certificate chain, leaf first.
    pub cert: String,
    /// Path of the PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
}

/// Client certificate authentication.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientAuth {
    /// PEM bundle of the CAs that sign client certificates.
    pub ca: String,
    /// `required` rejects a handshake without a valid certificate; `optional`
    /// accepts it but still verifies one that is sent. Defaults to `required`.
    #[serde(default)]
    pub mode: ClientAuthMode,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMode {
    #[default]
    Required,
    Optional,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedirectHttps {
    /// The HTTPS port to redirect to. Defaults to 443 (and then no port in the URL).
    #[serde(default = "default_https_port")]
    pub port: u16,
}

const fn default_https_port() -> u16 {
    443
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Hsts {
    /// `max-age`. Defaults to 365 days, the value HSTS preload lists ask for.
    #[serde(default = "default_hsts_max_age")]
    pub max_age: Duration,
    /// Add `includeSubDomains`. Defaults to false.
    #[serde(default)]
    pub include_subdomains: bool,
    /// Add `preload`. Defaults to false.
    #[serde(default)]
    pub preload: bool,
}

fn default_hsts_max_age() -> Duration {
    Duration::from_secs(365 * 24 * 3600)
}

/// The admin listener.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Address of `/metrics`, `/healthz`, `/readyz`, `/config` and `/reload`.
    /// Defaults to 127.0.0.1:9901: loopback only, because `/reload` changes
    /// the running gateway.
    #[schemars(with = "String")]
    #[serde(default = "default_admin_address")]
    pub address: SocketAddr,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            address: default_admin_address(),
        }
    }
}

fn default_admin_address() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9901))
}

/// Process-wide settings.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// Worker threads for the proxy. Defaults to the number of CPUs.
    #[serde(default)]
    pub threads: Option<usize>,
    /// On SIGTERM, how long in-flight requests may take to finish before
    /// the process exits. Defaults to 30s (Kubernetes' default
    /// `terminationGracePeriodSeconds` is 30s too).
    #[serde(default = "default_grace_period")]
    pub grace_period: Duration,
    /// Clients whose `X-Forwarded-*` and `Forwarded` headers are trusted
    /// (e.g. the cloud load balancer). Defaults to none: inbound values are
    /// replaced.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub trusted_proxies: Vec<IpNet>,
    /// Where `trusted_proxies` write the client's address:
    /// `x-forwarded-for` or `forwarded` (RFC 7239). Only that header is read
    /// for it: a proxy that maintains one usually passes the other through
    /// from the client. Defaults to x-forwarded-for.
    #[serde(default)]
    pub client_ip_header: ClientIpHeader,
    /// Watch the config file and reload when it changes. Defaults to true.
    #[serde(default = "default_true")]
    pub watch_config: bool,
    /// Request limits.
    #[serde(default)]
    pub limits: Limits,
    /// How request paths are brought to one canonical form before routing,
    /// policy and the backend see them.
    #[serde(default)]
    pub paths: Paths,
    /// Also send the client's address (the right-most address not in
    /// `trusted_proxies`) in this header, e.g. `X-Real-IP` for backends
    /// written for nginx. Whatever a client sends under the name is always
    /// removed. Defaults to none (`X-Forwarded-For` and `Forwarded` carry it).
    #[serde(default)]
    pub real_ip_header: Option<String>,
    /// Request header names with `_`: `reject` (400), `drop` (removed) or
    /// `allow`. Many servers read `X_User` as `X-User`, so such names can
    /// slip past checks made on the other spelling. Defaults to reject.
    #[serde(default)]
    pub headers_with_underscores: Underscores,
    /// Write one JSON access-log line per request to stdout. Defaults to true.
    #[serde(default = "default_true")]
    pub access_log: bool,
}

/// Path canonicalisation (README "Canonical requests"). Every decision and
/// the backend see the same canonical path: `.` and `..` resolved,
/// unreserved escapes decoded, escapes in upper case.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Paths {
    /// Merge runs of `/` into one (`//admin` → `/admin`). Defaults to true.
    #[serde(default = "default_true")]
    pub merge_slashes: bool,
    /// `%2F`, `%5C` and `\` in a path: `reject` (400) or `keep_escaped`
    /// (kept as `%2F` / `%5C`: part of a segment, never a separator).
    /// Defaults to reject.
    #[serde(default)]
    pub escaped_slashes: EscapedSlashes,
    /// `;` in a path: `reject` (400) or `keep` (as data; `..;` and `.;`
    /// segments are refused even then). Defaults to reject, since servlet
    /// containers strip `;params` before matching.
    #[serde(default)]
    pub path_parameters: PathParameters,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::Reject,
            path_parameters: PathParameters::Reject,
        }
    }
}

impl Paths {
    /// The rules of the canonicalisation crate.
    pub fn rules(&self) -> portcullis_canonical::Rules {
        let Paths {
            merge_slashes,
            escaped_slashes,
            path_parameters,
        } = self;
        portcullis_canonical::Rules {
            merge_slashes: *merge_slashes,
            escaped_slashes: match escaped_slashes {
                EscapedSlashes::Reject => portcullis_canonical::EscapedSlashes::Reject,
                EscapedSlashes::KeepEscaped => portcullis_canonical::EscapedSlashes::KeepEscaped,
            },
            path_parameters: match path_parameters {
                PathParameters::Reject => portcullis_canonical::PathParameters::Reject,
                PathParameters::Keep => portcullis_canonical::PathParameters::Keep,
            },
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlashes {
    #[default]
    Reject,
    KeepEscaped,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Underscores {
    #[default]
    Reject,
    Drop,
    Allow,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PathParameters {
    #[default]
    Reject,
    Keep,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            threads: None,
            grace_period: default_grace_period(),
            trusted_proxies: Vec::new(),
            client_ip_header: ClientIpHeader::default(),
            watch_config: true,
            limits: Limits::default(),
            paths: Paths::default(),
            headers_with_underscores: Underscores::default(),
            real_ip_header: None,
            access_log: true,
        }
    }
}

fn default_grace_period() -> Duration {
    Duration::from_secs(30)
}

const fn default_true() -> bool {
    true
}

/// Limits on what a client may send.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest request body; more is answered 413. Defaults to 10MiB.
    #[serde(default = "default_max_body")]
    pub max_body_size: ByteSize,
    /// Largest total size of request headers (names and values); more is
    /// answered 431. Defaults to 32KiB (nginx's large_client_header_buffers
    /// allows 4×8KiB).
    #[serde(default = "default_max_header_size")]
    pub max_header_size: ByteSize,
    /// Most request headers; more is answered 431. Defaults to 100.
    #[serde(default = "default_max_header_count")]
    pub max_header_count: usize,
    /// Longest request target (path and query); more is answered 414.
    /// Defaults to 8KiB (nginx's request-line buffer).
    #[serde(default = "default_max_uri_size")]
    pub max_uri_size: ByteSize,
    /// Time allowed to receive the whole request line and headers, counted
    /// from the connection's start (or the next request's first byte on a
    /// keep-alive connection), so a client trickling bytes is cut off.
    /// Defaults to 10s.
    #[serde(default = "default_header_timeout")]
    pub header_timeout: Duration,
    /// Time allowed between two reads of a request body. Defaults to 30s.
    #[serde(default = "default_body_read_timeout")]
    pub body_read_timeout: Duration,
    /// Idle time allowed between two requests on a keep-alive connection.
    /// Defaults to 60s.
    #[serde(default = "default_keepalive_timeout")]
    pub keepalive_timeout: Duration,
    /// Time any request body gets before `min_body_rate` must be met: a
    /// body must arrive within `body_timeout` plus one second for every
    /// `min_body_rate` bytes (Apache mod_reqtimeout's rule), or the request
    /// is cut off (408). Defaults to 20s.
    #[serde(default = "default_body_timeout")]
    pub body_timeout: Duration,
    /// Bytes per second that earn a request body more time (`0`: no
    /// minimum). Defaults to 500 (Apache's `MinRate`).
    #[serde(default = "default_min_body_rate")]
    pub min_body_rate: ByteSize,
    /// Time a client has to finish the TLS handshake. Defaults to 10s.
    #[serde(default = "default_tls_handshake_timeout")]
    pub tls_handshake_timeout: Duration,
    /// Most open client connections, all listeners together; a new one
    /// beyond it is closed at once (connections being served are never
    /// stalled). Defaults to 10000.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Most concurrent HTTP/2 streams per connection (advertised in
    /// SETTINGS). Defaults to 100 (Envoy's and pingora's default).
    #[serde(default = "default_h2_max_concurrent_streams")]
    pub h2_max_concurrent_streams: u32,
    /// Most requests on one HTTP/1 connection before it is closed.
    /// Defaults to 1000 (nginx's `keepalive_requests`).
    #[serde(default = "default_max_requests_per_connection")]
    pub max_requests_per_connection: u32,
    /// Largest response head from an upstream (status line and fields);
    /// more is answered 502. Defaults to 64KiB.
    #[serde(default = "default_max_response_header_size")]
    pub max_response_header_size: ByteSize,
    /// Most response header fields from an upstream; more is 502.
    /// Defaults to 100.
    #[serde(default = "default_max_header_count")]
    pub max_response_header_count: usize,
    /// Most interim (1xx) responses an upstream may send before its final
    /// one; more is 502. Defaults to 5.
    #[serde(default = "default_max_interim_responses")]
    pub max_interim_responses: u8,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_size: default_max_body(),
            max_header_size: default_max_header_size(),
            max_header_count: default_max_header_count(),
            max_uri_size: default_max_uri_size(),
            header_timeout: default_header_timeout(),
            body_read_timeout: default_body_read_timeout(),
            keepalive_timeout: default_keepalive_timeout(),
            body_timeout: default_body_timeout(),
            min_body_rate: default_min_body_rate(),
            tls_handshake_timeout: default_tls_handshake_timeout(),
            max_connections: default_max_connections(),
            h2_max_concurrent_streams: default_h2_max_concurrent_streams(),
            max_requests_per_connection: default_max_requests_per_connection(),
            max_response_header_size: default_max_response_header_size(),
            max_response_header_count: default_max_header_count(),
            max_interim_responses: default_max_interim_responses(),
        }
    }
}

fn default_max_body() -> ByteSize {
    ByteSize(10 * 1024 * 1024)
}
fn default_max_header_size() -> ByteSize {
    ByteSize(32 * 1024)
}
const fn default_max_header_count() -> usize {
    100
}
fn default_max_uri_size() -> ByteSize {
    ByteSize(8 * 1024)
}
fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_body_read_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_keepalive_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_body_timeout() -> Duration {
    Duration::from_secs(20)
}
fn default_min_body_rate() -> ByteSize {
    ByteSize(500)
}
fn default_tls_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}
const fn default_max_connections() -> usize {
    10_000
}
const fn default_h2_max_concurrent_streams() -> u32 {
    100
}
const fn default_max_requests_per_connection() -> u32 {
    1000
}
fn default_max_response_header_size() -> ByteSize {
    ByteSize(64 * 1024)
}
const fn default_max_interim_responses() -> u8 {
    5
}

/// A pool of backend targets.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// `IP:port` or `dns-name:port`. DNS names are re-resolved every
    /// `dns_refresh`, so a Kubernetes headless Service works. At least one.
    pub targets: Vec<String>,
    /// Defaults to `round_robin`.
    #[serde(default)]
    pub load_balancing: LoadBalancing,
    /// What `consistent_hash` hashes on. Defaults to the client IP.
    #[serde(default)]
    pub hash_on: HashOn,
    /// Protocol to the targets: `http1`, or `http2` (prior knowledge over
    /// plain TCP, ALPN over TLS) for gRPC. Defaults to `http1`.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// Connect to targets over TLS. Defaults to plain TCP.
    #[serde(default)]
    pub tls: Option<UpstreamTls>,
    /// Active health check. Defaults to none (targets are healthy unless
    /// passive checks eject them).
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    /// Passive ejection after consecutive failures. Defaults on (5 failures, 30s).
    #[serde(default)]
    pub passive_health: PassiveHealth,
    /// Timeouts. Every field has a default.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Retries of idempotent requests. Defaults to 2 retries, budget 20%.
    #[serde(default)]
    pub retries: Retries,
    /// How often DNS names are re-resolved. Defaults to 10s.
    #[serde(default = "default_dns_refresh")]
    pub dns_refresh: Duration,
    /// Bulkhead: most requests in flight to this pool; beyond it 503 at
    /// once. Defaults to unlimited.
    #[serde(default)]
    pub max_concurrent: Option<u32>,
}

fn default_dns_refresh() -> Duration {
    Duration::from_secs(10)
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancing {
    #[default]
    RoundRobin,
    /// The target with the fewest requests in flight (ties broken in turn).
    LeastRequests,
    /// Rendezvous hashing on `hash_on`: a key sticks to its target while
    /// that target stays healthy.
    ConsistentHash,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct HashOn {
    /// Hash this request header's value.
    #[serde(default)]
    pub header: Option<String>,
    /// Hash this cookie's value.
    #[serde(default)]
    pub cookie: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    Http2,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// SNI and verified name. Defaults to the target's host name.
    #[serde(default)]
    pub sni: Option<String>,
    /// Extra CA bundle (PEM) to trust. Defaults to none.
    #[serde(default)]
    pub ca: Option<String>,
    /// Skip certificate verification. Defaults to false. Never in production.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// Path requested with GET. Required.
    pub path: String,
    /// Defaults to 5s.
    #[serde(default = "default_hc_interval")]
    pub interval: Duration,
    /// Defaults to 2s.
    #[serde(default = "default_hc_timeout")]
    pub timeout: Duration,
    /// Consecutive successes to mark a target healthy. Defaults to 2.
    #[serde(default = "default_two")]
    pub healthy_threshold: u32,
    /// Consecutive failures to mark a target unhealthy. Defaults to 2.
    #[serde(default = "default_two")]
    pub unhealthy_threshold: u32,
    /// `Host` header sent. Defaults to the target address.
    #[serde(default)]
    pub host: Option<String>,
}

fn default_hc_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_hc_timeout() -> Duration {
    Duration::from_secs(2)
}
const fn default_two() -> u32 {
    2
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PassiveHealth {
    /// Consecutive connect failures or 5xx answers that eject a target.
    /// 0 turns passive ejection off. Defaults to 5.
    #[serde(default = "default_max_failures")]
    pub max_failures: u32,
    /// How long an ejected target stays out (the breaker is open); then it
    /// is half-open. Defaults to 30s.
    #[serde(default = "default_ejection_time")]
    pub ejection_time: Duration,
    /// Requests let through at once while half-open: a success closes the
    /// breaker, a failure opens it again. Defaults to 1.
    #[serde(default = "default_probes")]
    pub half_open_probes: u32,
    /// Also open when this share of a target's requests failed within
    /// `window` (at least `min_requests` of them), e.g. `0.5`. Defaults to
    /// off: consecutive failures only.
    #[serde(default)]
    pub failure_ratio: Option<f64>,
    /// Requests a window needs before `failure_ratio` counts. Defaults to 20.
    #[serde(default = "default_min_requests")]
    pub min_requests: u32,
    /// The window of `failure_ratio`. Defaults to 10s.
    #[serde(default = "default_ratio_window")]
    pub window: Duration,
}

const fn default_min_requests() -> u32 {
    20
}
fn default_ratio_window() -> Duration {
    Duration::from_secs(10)
}

const fn default_probes() -> u32 {
    1
}

impl Default for PassiveHealth {
    fn default() -> Self {
        PassiveHealth {
            max_failures: default_max_failures(),
            ejection_time: default_ejection_time(),
            half_open_probes: default_probes(),
            failure_ratio: None,
            min_requests: default_min_requests(),
            window: default_ratio_window(),
        }
    }
}

const fn default_max_failures() -> u32 {
    5
}
fn default_ejection_time() -> Duration {
    Duration::from_secs(30)
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// TCP (and TLS) connect. Defaults to 2s.
    #[serde(default = "default_connect_timeout")]
    pub connect: Duration,
    /// Between two reads from the target. Defaults to 60s.
    #[serde(default = "default_read_timeout")]
    pub read: Duration,
    /// Between two writes to the target. Defaults to 60s.
    #[serde(default = "default_read_timeout")]
    pub write: Duration,
    /// An idle pooled connection is closed after this. Defaults to 60s.
    #[serde(default = "default_read_timeout")]
    pub idle: Duration,
    /// From sending the request to the end of the response head, however
    /// the bytes trickle in (`read` bounds each read only); then 504 and the
    /// connection is discarded. Defaults to 60s.
    #[serde(default = "default_read_timeout")]
    pub response_headers: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: default_connect_timeout(),
            read: default_read_timeout(),
            write: default_read_timeout(),
            idle: default_read_timeout(),
            response_headers: default_read_timeout(),
        }
    }
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_read_timeout() -> Duration {
    Duration::from_secs(60)
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Retries {
    /// Retries after the first attempt, for idempotent requests, on connect
    /// failure, 502 and 503. Defaults to 2.
    #[serde(default = "default_two")]
    pub attempts: u32,
    /// Retries may add at most this share of the pool's requests, so
    /// retries cannot multiply load on a failing pool. Defaults to 20 (%).
    #[serde(default = "default_retry_budget")]
    pub budget_percent: u32,
}

impl Default for Retries {
    fn default() -> Self {
        Retries {
            attempts: default_two(),
            budget_percent: default_retry_budget(),
        }
    }
}

const fn default_retry_budget() -> u32 {
    20
}

/// A route: what requests it matches and where they go.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Unique name, used in logs and metrics.
    pub name: String,
    /// What the route matches. Defaults to every request.
    #[serde(default, rename = "match")]
    pub matcher: RouteMatch,
    /// The upstream pool. Give either this or `split`.
    #[serde(default)]
    pub upstream: Option<String>,
    /// A weighted split across pools (canary, migration). Give either this or `upstream`.
    #[serde(default)]
    pub split: Vec<WeightedUpstream>,
    /// Remove the matched `path_prefix` before forwarding. Defaults to false.
    #[serde(default)]
    pub strip_prefix: bool,
    /// Replace the path before forwarding; `{name}` is filled from the path
    /// template's parameters. Defaults to none.
    #[serde(default)]
    pub rewrite_path: Option<String>,
    /// Headers set on or removed from the request to the upstream.
    #[serde(default)]
    pub request_headers: HeaderOps,
    /// Headers set on or removed from the response to the client.
    #[serde(default)]
    pub response_headers: HeaderOps,
    /// Whole-exchange deadline for this route: from sending the request to
    /// the response's last byte, however the bytes trickle in (504 before
    /// the response starts, a closed connection after). Also caps the
    /// upstream's read timeout. Leave it unset on streaming routes
    /// (WebSocket, server-sent events, gRPC streams). Defaults to none.
    #[serde(default)]
    pub timeout: Option<Duration>,
    /// Token check and roles. Defaults to no authentication.
    #[serde(default)]
    pub auth: RouteAuth,
    /// Rate limits; a request must pass all. Defaults to none.
    #[serde(default)]
    pub rate_limits: Vec<RouteLimit>,
    /// Bulkhead: most requests of this route in flight; beyond it 503 at
    /// once (or a short wait, see `queue`). Defaults to unlimited.
    #[serde(default)]
    pub max_concurrent: Option<u32>,
    /// Wait for a bulkhead slot instead of 503 at once. Defaults to off.
    #[serde(default)]
    pub queue: Option<BulkheadQueue>,
    /// Fault injection for resilience tests. Defaults to off.
    #[serde(default)]
    pub fault: Option<Fault>,
    /// Path of the upstream's OpenAPI (or Swagger 2.0) document, e.g.
    /// `/openapi.json`; merged into the portal under this route's
    /// `path_prefix`. Defaults to none.
    #[serde(default)]
    pub openapi: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkheadQueue {
    /// Most requests waiting. Required.
    pub size: u32,
    /// Longest wait, then 503. Defaults to 1s.
    #[serde(default = "default_queue_timeout")]
    pub timeout: Duration,
}

fn default_queue_timeout() -> Duration {
    Duration::from_secs(1)
}

/// Injected faults; marked `fault` in the access log.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Delay this share of requests.
    #[serde(default)]
    pub delay: Option<FaultDelay>,
    /// Answer this share of requests with a status, without calling the upstream.
    #[serde(default)]
    pub abort: Option<FaultAbort>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultDelay {
    /// 0 to 100.
    pub percent: f64,
    pub duration: Duration,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultAbort {
    /// 0 to 100.
    pub percent: f64,
    /// The status to answer. Defaults to 503.
    #[serde(default = "default_abort_status")]
    pub status: u16,
}

const fn default_abort_status() -> u16 {
    503
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// Host names, exact (`api.example.com`) or wildcard (`*.example.com`).
    /// Defaults to any host.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Exact path (`/healthz`) or template (`/users/{id}`). Give at most one
    /// of `path` and `path_prefix`.
    #[serde(default)]
    pub path: Option<String>,
    /// Path prefix on segment boundaries: `/orders` matches `/orders` and
    /// `/orders/7`, not `/ordersx`. Defaults to `/` (everything).
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Methods. Defaults to any.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Headers that must be present with these exact values.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WeightedUpstream {
    pub upstream: String,
    /// Relative weight. Required, greater than zero in sum.
    pub weight: u32,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderOps {
    /// Header name to value; replaces what is there.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Header names to remove.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// The header trusted proxies write the client's address in (one type
/// with the reader of it).
pub use portcullis_web::client_ip::Source as ClientIpHeader;
