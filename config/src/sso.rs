//! The SSO's config file (`portcullis sso -c sso.yaml`): the OpenID
//! Provider's issuer, signing keys, users, clients and token lifetimes.

use std::net::SocketAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::units::Duration;
use crate::validate::Checker;
use crate::yaml::KeyPath;

/// The whole SSO file.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SsoConfig {
    /// The issuer URL (`iss`), as clients and the gateway reach it; its
    /// path prefixes every endpoint. Required.
    pub issuer: String,
    /// Address to listen on. Defaults to 127.0.0.1:9000.
    #[schemars(with = "String")]
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Signing keys. Defaults: ES256 in `./keys`, rotated every 30 days.
    #[serde(default)]
    pub keys: Keys,
    /// Lifetimes by client type, used where a client sets none.
    #[serde(default)]
    pub defaults: Defaults,
    /// Clients (relying parties, services, external systems).
    #[serde(default)]
    pub clients: Vec<Client>,
    /// Where users come from.
    #[serde(default)]
    pub users: Users,
    /// Login sessions (the SSO's own cookie).
    #[serde(default)]
    pub session: Session,
    /// Failed-login throttling.
    #[serde(default)]
    pub login: Login,
    /// Title and logo of the login, consent and registration pages.
    #[serde(default)]
    pub branding: Branding,
    /// Where codes, sessions, refresh tokens and consents live:
    /// `memory` (default; one process) or `redis` (several replicas).
    #[serde(default)]
    pub store: StoreKind,
    /// The Redis server when `store: redis`.
    #[serde(default)]
    pub redis: Option<SsoRedis>,
    /// A rotated refresh token used again within this time (a client that
    /// lost the answer, two tabs refreshing at once) gets the very answer
    /// its first use got — the same access and refresh token, never a
    /// second chain; later, reuse revokes the whole grant. `0s`: no grace,
    /// every reuse revokes. Defaults to 10s.
    #[serde(default = "default_refresh_grace")]
    pub refresh_reuse_grace: Duration,
    /// Lifetime of an authorization code (at most 60s). Defaults to 60s.
    #[serde(default = "default_code_ttl")]
    pub code_ttl: Duration,
    /// Bounds on what a client may take.
    #[serde(default)]
    pub limits: SsoLimits,
    /// Proxies (the gateway, the load balancer) whose `client_ip_header` is
    /// believed, so login throttling counts the client's address, not the
    /// proxy's. Defaults to none.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Where `trusted_proxies` write the client's address:
    /// `x-forwarded-for` or `forwarded` (RFC 7239). Defaults to
    /// x-forwarded-for.
    #[serde(default)]
    pub client_ip_header: crate::model::ClientIpHeader,
    /// The admin API (`{issuer}/admin/…`).
    #[serde(default)]
    pub admin: AdminApi,
    /// Where users, roles and consents live.
    #[serde(default)]
    pub directory: DirectoryConfig,
    /// Second factors (TOTP, passkeys) and who must use one.
    #[serde(default)]
    pub mfa: Mfa,
}

/// Multi-factor authentication. A user with a second factor is always
/// asked for it; `required_roles`, a client's `require_mfa` and an
/// authorization request's `acr_values` decide who must have one.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Mfa {
    /// Users with one of these roles must sign in with a second factor (to
    /// any client). Defaults to none.
    #[serde(default)]
    pub required_roles: Vec<String>,
}

/// The identity directory's database.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DirectoryConfig {
    /// `postgres://user:password@host/db` (put it in `${ENV}`) for several
    /// replicas. Defaults to none: SQLite in `file`.
    #[serde(default)]
    pub url: Option<crate::Secret>,
    /// The SQLite file, relative to the config file, created when absent.
    /// Defaults to `directory.db`.
    #[serde(default = "default_directory_file")]
    pub file: String,
    /// Most connections to PostgreSQL. Defaults to 10.
    #[serde(default = "default_directory_connections")]
    pub max_connections: u32,
    /// Longest wait for a connection. Defaults to 5s.
    #[serde(default = "default_directory_timeout")]
    pub timeout: Duration,
    /// How long audit events are kept in the directory (the log keeps its
    /// own copy). Defaults to 90d.
    #[serde(default = "default_audit_retention")]
    pub audit_retention: Duration,
}

impl Default for DirectoryConfig {
    fn default() -> Self {
        DirectoryConfig {
            url: None,
            file: default_directory_file(),
            max_connections: default_directory_connections(),
            timeout: default_directory_timeout(),
            audit_retention: default_audit_retention(),
        }
    }
}

/// A quarter: long enough to answer "what happened last month".
fn default_audit_retention() -> Duration {
    Duration::from_secs(90 * 24 * 3600)
}

fn default_directory_file() -> String {
    "directory.db".into()
}

/// Enough for a replica's concurrent logins; PostgreSQL's default limit
/// (100) then allows about ten replicas.
const fn default_directory_connections() -> u32 {
    10
}

fn default_directory_timeout() -> Duration {
    Duration::from_secs(5)
}

/// Who may call the admin API.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminApi {
    /// The role (in an access token issued by this SSO: a user's roles or
    /// an admin client's) that the admin API requires. Defaults to
    /// `sso-admin`.
    #[serde(default = "default_admin_role")]
    pub role: String,
}

impl Default for AdminApi {
    fn default() -> Self {
        AdminApi {
            role: default_admin_role(),
        }
    }
}

fn default_admin_role() -> String {
    "sso-admin".into()
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SsoLimits {
    /// Longest time to send a request head (slow clients). Defaults to 10s.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout: Duration,
    /// Longest time for a whole request, body included; then 408.
    /// Defaults to 15s.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: Duration,
    /// Most connections served at once. Defaults to 10000.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

impl Default for SsoLimits {
    fn default() -> Self {
        SsoLimits {
            header_read_timeout: default_header_read_timeout(),
            request_timeout: default_request_timeout(),
            max_connections: default_max_connections(),
        }
    }
}

fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(15)
}

const fn default_max_connections() -> usize {
    10_000
}

fn default_refresh_grace() -> Duration {
    Duration::from_secs(10)
}

fn default_code_ttl() -> Duration {
    Duration::from_secs(60)
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    #[default]
    Memory,
    Redis,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SsoRedis {
    /// `redis://host:port[/db]`; a password belongs in `${ENV}`.
    pub url: crate::Secret,
    /// Prefix of every key. Defaults to `portcullis:sso:`.
    #[serde(default = "default_redis_prefix")]
    pub key_prefix: String,
}

fn default_redis_prefix() -> String {
    "portcullis:sso:".into()
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Registration {
    /// No self-service registration.
    #[default]
    Closed,
    Open,
    /// Registration needs an invitation code.
    InviteOnly,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Users {
    /// A YAML file of users (`users: [{username, password_hash, email,
    /// name, roles, groups}]`), read-only. Relative to the config file.
    /// Defaults to none.
    #[serde(default)]
    pub file: Option<String>,
    /// Self-service registration (`closed`, `open`, `invite_only`).
    /// Registered users live in the directory. Defaults to closed.
    #[serde(default)]
    pub registration: Registration,
    /// Invitation codes for `invite_only`, each usable once (put them in
    /// `${ENV}`). Defaults to none.
    #[serde(default)]
    pub invites: Vec<crate::Secret>,
    /// Roles given to users who register. Defaults to none.
    #[serde(default)]
    pub registered_roles: Vec<String>,
    /// Shortest password accepted at registration. Defaults to 12.
    #[serde(default = "default_min_password")]
    pub min_password_length: usize,
}

const fn default_min_password() -> usize {
    12
}

impl Default for Users {
    fn default() -> Self {
        Users {
            file: None,
            registration: Registration::Closed,
            invites: Vec::new(),
            registered_roles: Vec::new(),
            min_password_length: default_min_password(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Session {
    /// Cookie name. Defaults to `portcullis_sso`.
    #[serde(default = "default_cookie")]
    pub cookie: String,
    /// How long a login lasts. Defaults to 8h.
    #[serde(default = "default_session_ttl")]
    pub ttl: Duration,
    /// `Secure` cookies; set false only for local plain-HTTP setups.
    /// Defaults to true.
    #[serde(default = "default_true")]
    pub secure_cookies: bool,
}

impl Default for Session {
    fn default() -> Self {
        Session {
            cookie: default_cookie(),
            ttl: default_session_ttl(),
            secure_cookies: true,
        }
    }
}

fn default_cookie() -> String {
    "portcullis_sso".into()
}

fn default_session_ttl() -> Duration {
    Duration::from_secs(8 * 3600)
}

const fn default_true() -> bool {
    true
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    /// Failed attempts allowed per account (and per client IP, times 4)
    /// before a lockout. Defaults to 5.
    #[serde(default = "default_max_failures")]
    pub max_failures: u32,
    /// The first lockout; each failure after a lockout ended (within the
    /// hour the failures are counted over) doubles it, up to 1h. Defaults
    /// to 30s.
    #[serde(default = "default_lockout")]
    pub lockout: Duration,
}

impl Default for Login {
    fn default() -> Self {
        Login {
            max_failures: default_max_failures(),
            lockout: default_lockout(),
        }
    }
}

const fn default_max_failures() -> u32 {
    5
}

fn default_lockout() -> Duration {
    Duration::from_secs(30)
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Branding {
    /// Defaults to `Sign in`.
    #[serde(default = "default_brand_title")]
    pub title: String,
    /// Shown above the form. Defaults to none.
    #[serde(default)]
    pub logo_url: Option<String>,
}

impl Default for Branding {
    fn default() -> Self {
        Branding {
            title: default_brand_title(),
            logo_url: None,
        }
    }
}

fn default_brand_title() -> String {
    "Sign in".into()
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9000))
}

/// Signing keys and their rotation.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Keys {
    /// Directory of the key files (a Kubernetes Secret volume, or a
    /// writable directory: keys are generated there on first start).
    /// Relative to the config file. Defaults to `keys`.
    #[serde(default = "default_keys_dir")]
    pub dir: String,
    /// The access tokens' algorithm: `ES256` (default), `RS256` or
    /// `EdDSA`. ID tokens are signed as each client asks
    /// (`id_token_signed_response_alg`, RS256 when it does not, as OpenID
    /// Connect requires); a key is kept for every algorithm in use.
    #[serde(default)]
    pub algorithm: SigningAlgorithm,
    /// A new key signs after this long. Defaults to 30d.
    #[serde(default = "default_rotate_every")]
    pub rotate_every: Duration,
    /// The next key is published in JWKS this long before it signs, so
    /// every relying party's cache has it first. Defaults to 1d.
    #[serde(default = "default_publish_ahead")]
    pub publish_ahead: Duration,
}

impl Default for Keys {
    fn default() -> Self {
        Keys {
            dir: default_keys_dir(),
            algorithm: SigningAlgorithm::default(),
            rotate_every: default_rotate_every(),
            publish_ahead: default_publish_ahead(),
        }
    }
}

fn default_keys_dir() -> String {
    "keys".into()
}

fn default_rotate_every() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}

fn default_publish_ahead() -> Duration {
    Duration::from_secs(24 * 3600)
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum SigningAlgorithm {
    #[default]
    ES256,
    /// For relying parties that know nothing else (2048-bit keys).
    RS256,
    EdDSA,
}

/// Token lifetimes of one client type.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Lifetimes {
    pub access_token_ttl: Duration,
    pub id_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
}

/// Lifetimes by client type: UIs short, services and external systems longer.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    /// Public clients (browser and mobile UIs). Defaults: access 5m, ID 5m,
    /// refresh 8h.
    #[serde(default = "default_ui_lifetimes")]
    pub public: Lifetimes,
    /// Confidential clients (services, external systems). Defaults: access
    /// 1h, ID 1h, refresh 30d.
    #[serde(default = "default_service_lifetimes")]
    pub confidential: Lifetimes,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            public: default_ui_lifetimes(),
            confidential: default_service_lifetimes(),
        }
    }
}

fn default_ui_lifetimes() -> Lifetimes {
    Lifetimes {
        access_token_ttl: Duration::from_secs(300),
        id_token_ttl: Duration::from_secs(300),
        refresh_token_ttl: Duration::from_secs(8 * 3600),
    }
}

fn default_service_lifetimes() -> Lifetimes {
    Lifetimes {
        access_token_ttl: Duration::from_secs(3600),
        id_token_ttl: Duration::from_secs(3600),
        refresh_token_ttl: Duration::from_secs(30 * 24 * 3600),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClientType {
    /// No secret (a UI): PKCE required.
    Public,
    /// Authenticates with a secret or a signed JWT.
    Confidential,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GrantType {
    AuthorizationCode,
    RefreshToken,
    ClientCredentials,
    /// Legacy (OAuth 2.0 §4.3, dropped by OAuth 2.1): the client handles the
    /// user's password. Only for a client that is explicitly given it, for
    /// migrating old integrations; never a default.
    Password,
}

/// A client of the SSO.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Client {
    /// Unique. Required.
    pub client_id: String,
    /// Shown on the consent page. Defaults to the client id.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(rename = "type")]
    pub client_type: ClientType,
    /// The secret's argon2id hash (`portcullis sso hash-password`), for
    /// confidential clients. Never the secret itself.
    #[serde(default)]
    pub secret_hash: Option<String>,
    /// Public keys (JWKs) of a confidential client that authenticates with
    /// `private_key_jwt` (RFC 7523) instead of (or besides) a secret.
    #[serde(default)]
    pub jwks: Vec<serde_json::Value>,
    /// Grants the client may use. Defaults: public clients
    /// `[authorization_code, refresh_token]`, confidential ones
    /// `[client_credentials]`.
    #[serde(default)]
    pub grant_types: Vec<GrantType>,
    /// Exact redirect URIs (no patterns).
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    /// Scopes the client may ask for. Defaults to `openid profile email`
    /// (and `offline_access` where refresh tokens are allowed).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// `aud` of its access tokens. Defaults to the client id.
    #[serde(default)]
    pub audience: Vec<String>,
    /// Roles put in tokens issued by client credentials. Defaults to none.
    #[serde(default)]
    pub roles: Vec<String>,
    /// A first-party client skips the consent page. Defaults to false.
    #[serde(default)]
    pub first_party: bool,
    /// Require PKCE (S256) of a confidential client too (public clients
    /// always). Defaults to true.
    #[serde(default = "default_true")]
    pub require_pkce: bool,
    /// Where `/end_session` may send the browser afterwards (exact match).
    #[serde(default)]
    pub post_logout_redirect_uris: Vec<String>,
    /// How the client's ID tokens are signed (`RS256`, `ES256`, `EdDSA`;
    /// OpenID Connect Dynamic Client Registration's name). Defaults to
    /// RS256, the algorithm every relying party supports.
    #[serde(default)]
    pub id_token_signed_response_alg: Option<SigningAlgorithm>,
    /// Where the SSO posts a logout token when a session this client
    /// signed in through ends (OpenID Connect Back-Channel Logout 1.0).
    /// Defaults to none.
    #[serde(default)]
    pub backchannel_logout_uri: Option<String>,
    /// The logout token names the SSO session (`sid`), which the client
    /// needs to end just that session. Defaults to true.
    #[serde(default = "default_true")]
    pub backchannel_logout_session_required: bool,
    /// Users signing in to this client need a second factor (TOTP or a
    /// passkey); tokens then carry `acr` `urn:portcullis:acr:mfa`.
    /// Defaults to false.
    #[serde(default)]
    pub require_mfa: bool,
    /// Overrides the type's default lifetimes.
    #[serde(default)]
    pub access_token_ttl: Option<Duration>,
    #[serde(default)]
    pub id_token_ttl: Option<Duration>,
    #[serde(default)]
    pub refresh_token_ttl: Option<Duration>,
}

impl Client {
    pub fn grants(&self) -> Vec<GrantType> {
        if !self.grant_types.is_empty() {
            return self.grant_types.clone();
        }
        match self.client_type {
            ClientType::Public => vec![GrantType::AuthorizationCode, GrantType::RefreshToken],
            ClientType::Confidential => vec![GrantType::ClientCredentials],
        }
    }

    /// The client's lifetimes: its own, else its type's defaults.
    pub fn lifetimes(&self, defaults: &Defaults) -> Lifetimes {
        let base = match self.client_type {
            ClientType::Public => &defaults.public,
            ClientType::Confidential => &defaults.confidential,
        };
        Lifetimes {
            access_token_ttl: self.access_token_ttl.unwrap_or(base.access_token_ttl),
            id_token_ttl: self.id_token_ttl.unwrap_or(base.id_token_ttl),
            refresh_token_ttl: self.refresh_token_ttl.unwrap_or(base.refresh_token_ttl),
        }
    }
}

impl Checker<'_> {
    pub(crate) fn sso(&mut self, config: &SsoConfig) {
        let root = KeyPath::default();
        let issuer = &config.issuer;
        if !(issuer.starts_with("https://") || issuer.starts_with("http://"))
            || issuer.ends_with('/')
            || issuer.contains(['?', '#'])
        {
            self.problem(
                root.child_key("issuer"),
                "must be an http(s) URL without a trailing slash, query or fragment",
            );
        }
        if config.code_ttl.0 > std::time::Duration::from_secs(60) || config.code_ttl.0.is_zero() {
            self.problem(root.child_key("code_ttl"), "must be between 1s and 60s");
        }
        if config.store == StoreKind::Redis && config.redis.is_none() {
            self.problem(root.child_key("redis"), "`store: redis` needs `redis.url`");
        }
        if let Some(url) = &config.directory.url {
            let url = url.expose();
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                self.problem(
                    root.child_key("directory").child_key("url"),
                    "must be a `postgres://` URL (without one, the directory is SQLite in `directory.file`)",
                );
            }
        }
        if config.users.registration == Registration::InviteOnly && config.users.invites.is_empty()
        {
            self.problem(
                root.child_key("users").child_key("invites"),
                "`invite_only` registration needs at least one invitation code",
            );
        }
        if let Some(file) = &config.users.file {
            self.readable(root.child_key("users").child_key("file"), file);
        }
        let keys = root.child_key("keys");
        if config.keys.publish_ahead.0 >= config.keys.rotate_every.0 {
            self.problem(
                keys.child_key("publish_ahead"),
                "must be shorter than `rotate_every`",
            );
        }
        let mut ids = std::collections::HashSet::new();
        for (i, client) in config.clients.iter().enumerate() {
            let at = root.child_key("clients").child_index(i);
            if client.client_id.is_empty() || !ids.insert(client.client_id.as_str()) {
                self.problem(
                    at.child_key("client_id"),
                    format!("empty or duplicate client id `{}`", client.client_id),
                );
            }
            for problem in client_problems(client) {
                let mut key = at.child_key(problem.field);
                if let Some(index) = problem.index {
                    key = key.child_index(index);
                }
                self.problem(key, problem.message);
            }
        }
    }
}

/// A problem with one client's definition: the field (and list index) and
/// what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientProblem {
    pub field: &'static str,
    pub index: Option<usize>,
    pub message: &'static str,
}

/// What is wrong with a client's definition, from the config file or the
/// admin API alike.
pub fn client_problems(client: &Client) -> Vec<ClientProblem> {
    let mut problems = Vec::new();
    let mut problem = |field: &'static str, index: Option<usize>, message: &'static str| {
        problems.push(ClientProblem {
            field,
            index,
            message,
        })
    };
    match (client.client_type, &client.secret_hash) {
        (ClientType::Public, Some(_)) => {
            problem("secret_hash", None, "a public client has no secret")
        }
        (ClientType::Confidential, None) if client.jwks.is_empty() => problem(
            "secret_hash",
            None,
            "a confidential client needs `secret_hash` (portcullis sso hash-password) or `jwks`",
        ),
        (ClientType::Confidential, Some(hash)) if !hash.starts_with("$argon2id$") => problem(
            "secret_hash",
            None,
            "must be an argon2id hash (`$argon2id$...`), never the secret itself",
        ),
        _ => {}
    }
    for (j, jwk) in client.jwks.iter().enumerate() {
        if jwk.get("kty").and_then(|k| k.as_str()).is_none() || jwk.get("d").is_some() {
            problem(
                "jwks",
                Some(j),
                "must be a public JWK (with `kty`, without private parts)",
            );
        }
    }
    let grants = client.grants();
    if client.client_type == ClientType::Public && grants.contains(&GrantType::ClientCredentials) {
        problem(
            "grant_types",
            None,
            "a public client cannot use client_credentials",
        );
    }
    if grants.contains(&GrantType::AuthorizationCode) && client.redirect_uris.is_empty() {
        problem(
            "redirect_uris",
            None,
            "authorization_code needs at least one redirect URI",
        );
    }
    for (j, uri) in client.redirect_uris.iter().enumerate() {
        if uri.contains('#') || !uri.contains("://") {
            problem(
                "redirect_uris",
                Some(j),
                "must be an absolute URI without a fragment",
            );
        }
    }
    for (j, uri) in client.post_logout_redirect_uris.iter().enumerate() {
        if uri.contains('#') || !uri.contains("://") {
            problem(
                "post_logout_redirect_uris",
                Some(j),
                "must be an absolute URI without a fragment",
            );
        }
    }
    if let Some(uri) = &client.backchannel_logout_uri {
        // Back-Channel Logout 1.0 §2.2: absolute http(s), no fragment.
        if uri.contains('#') || !(uri.starts_with("https://") || uri.starts_with("http://")) {
            problem(
                "backchannel_logout_uri",
                None,
                "must be an absolute http(s) URI without a fragment",
            );
        }
    }
    problems
}

/// The users file (`users.file`).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UsersFile {
    pub users: Vec<User>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// Unique login name (`sub` of the user's tokens).
    pub username: String,
    /// argon2id hash (`portcullis sso hash-password`).
    pub password_hash: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    /// A disabled user cannot log in. Defaults to false.
    #[serde(default)]
    pub disabled: bool,
}

impl Checker<'_> {
    pub(crate) fn users(&mut self, file: &UsersFile) {
        let mut names = std::collections::HashSet::new();
        for (i, user) in file.users.iter().enumerate() {
            let at = KeyPath::default().child_key("users").child_index(i);
            if user.username.is_empty() || !names.insert(user.username.as_str()) {
                self.problem(
                    at.child_key("username"),
                    format!("empty or duplicate username `{}`", user.username),
                );
            }
            if !user.password_hash.starts_with("$argon2id$") {
                self.problem(
                    at.child_key("password_hash"),
                    "must be an argon2id hash (`portcullis sso hash-password`)",
                );
            }
        }
    }
}
