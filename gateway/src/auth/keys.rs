//! Signing keys of one provider: fetched from its JWKS (found by OIDC
//! discovery or configured), refreshed in the background, and refetched on
//! an unknown `kid` — at most once per `min_refetch_interval`, one fetch at
//! a time, so a flood of forged kids cannot hammer the IdP. When the IdP is
//! unreachable the last good keys stay in use.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use portcullis_config as config;

/// Largest JWKS or discovery document accepted.
const MAX_DOCUMENT_BYTES: usize = 1 << 20;
/// Bounds on a `Cache-Control: max-age` from the IdP.
const MIN_REFRESH: Duration = Duration::from_secs(60);

/// The key families a token's `alg` may be verified with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl Family {
    pub fn for_alg(alg: Algorithm) -> Option<Family> {
        use Algorithm::*;
        Some(match alg {
            RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => Family::Rsa,
            ES256 => Family::EcP256,
            ES384 => Family::EcP384,
            EdDSA => Family::Ed25519,
            HS256 | HS384 | HS512 => return None,
        })
    }
}

/// One verification key.
pub struct VerifyKey {
    pub key: DecodingKey,
    pub family: Family,
    /// The JWK's own `alg`, when it names one: the token must match it.
    pub alg: Option<Algorithm>,
}

/// Keys by `kid`; keys without a kid are tried when a token has none.
#[derive(Default)]
pub struct KeyTable {
    pub by_kid: HashMap<String, Arc<VerifyKey>>,
    pub without_kid: Vec<Arc<VerifyKey>>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("fetching {url}: {message}")]
    Fetch { url: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// The keys of one provider, shared across config reloads.
pub struct ProviderKeys {
    pub name: String,
    source: KeySource,
    table: ArcSwap<KeyTable>,
    /// Time of the last fetch attempt; the lock makes fetches single-flight.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    min_refetch: Duration,
    refresh: Duration,
    fetch_timeout: Duration,
    client: reqwest::Client,
    /// From the discovery document, for opaque-token introspection.
    introspection_endpoint: arc_swap::ArcSwapOption<String>,
    /// PEM keys from the config, merged into every fetched table.
    static_keys: Arc<KeyTable>,
}

enum KeySource {
    Discovery {
        issuer: String,
    },
    Uri(String),
    File(std::path::PathBuf),
    /// Only the configured PEM keys.
    Static,
}

impl ProviderKeys {
    pub fn new(spec: &config::Provider, config_path: &std::path::Path) -> Result<Self, KeyError> {
        let source = match (&spec.jwks_uri, &spec.jwks_file) {
            (Some(uri), _) => KeySource::Uri(uri.clone()),
            (None, Some(file)) => KeySource::File(config::resolve_path(config_path, file)),
            (None, None) if !spec.public_keys.is_empty() => KeySource::Static,
            (None, None) => KeySource::Discovery {
                issuer: spec.issuer.trim_end_matches('/').to_owned(),
            },
        };
        let mut static_keys = KeyTable::default();
        for key_file in &spec.public_keys {
            let path = config::resolve_path(config_path, &key_file.file);
            let pem = std::fs::read(&path)
                .map_err(|e| KeyError::Invalid(format!("{}: {e}", path.display())))?;
            let key = Arc::new(
                pem_key(&pem).map_err(|e| KeyError::Invalid(format!("{}: {e}", path.display())))?,
            );
            match &key_file.kid {
                Some(kid) => {
                    static_keys.by_kid.insert(kid.clone(), key);
                }
                None => static_keys.without_kid.push(key),
            }
        }
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(spec.fetch_timeout.0)
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
            .map_err(|e| KeyError::Invalid(e.to_string()))?;
        let keys = ProviderKeys {
            name: spec.name.clone(),
            source,
            table: ArcSwap::from_pointee(KeyTable::default()),
            last_fetch: tokio::sync::Mutex::new(None),
            min_refetch: spec.min_refetch_interval.0,
            refresh: spec.jwks_refresh.0,
            fetch_timeout: spec.fetch_timeout.0,
            client,
            introspection_endpoint: arc_swap::ArcSwapOption::empty(),
            static_keys: Arc::new(static_keys),
        };
        let mut table = KeyTable::default();
        if let KeySource::File(path) = &keys.source {
            let bytes = std::fs::read(path)
                .map_err(|e| KeyError::Invalid(format!("{}: {e}", path.display())))?;
            table = parse_jwks(&bytes)?;
        }
        keys.table.store(Arc::new(keys.with_static(table)));
        Ok(keys)
    }

    /// A fetched table plus the configured PEM keys (which win on a kid clash).
    fn with_static(&self, mut table: KeyTable) -> KeyTable {
        for (kid, key) in &self.static_keys.by_kid {
            table.by_kid.insert(kid.clone(), key.clone());
        }
        table
            .without_kid
            .extend(self.static_keys.without_kid.iter().cloned());
        table
    }

    /// The introspection endpoint found by discovery, if any yet.
    pub fn discovered_introspection_endpoint(&self) -> Option<Arc<String>> {
        self.introspection_endpoint.load_full()
    }

    /// The HTTP client for this IdP (timeouts set).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    pub fn table(&self) -> arc_swap::Guard<Arc<KeyTable>> {
        self.table.load()
    }

    /// Fetches now, ignoring the refetch interval (start-up and the
    /// background refresh). Returns how long to wait before the next one.
    pub async fn refresh_now(&self) -> Duration {
        let mut last = self.last_fetch.lock().await;
        *last = Some(Instant::now());
        match self.fetch().await {
            Ok((table, max_age)) => {
                self.table.store(Arc::new(self.with_static(table)));
                max_age
                    .map(|age| age.clamp(MIN_REFRESH, self.refresh))
                    .unwrap_or(self.refresh)
            }
            Err(e) => {
                log::warn!("provider `{}`: {e}; keeping the last good keys", self.name);
                // Retry sooner while the IdP is unreachable.
                self.min_refetch.max(Duration::from_secs(1))
            }
        }
    }

    /// On an unknown kid: refetch unless another request just did, or the
    /// last fetch was less than `min_refetch_interval` ago.
    pub async fn refetch_for_unknown_kid(&self, kid: &str) {
        if matches!(self.source, KeySource::File(_) | KeySource::Static) {
            return;
        }
        let Ok(mut last) = tokio::time::timeout(self.fetch_timeout, self.last_fetch.lock()).await
        else {
            return;
        };
        // Someone else's fetch may have brought the key while we waited.
        if self.table.load().by_kid.contains_key(kid) {
            return;
        }
        if last.is_some_and(|at| at.elapsed() < self.min_refetch) {
            return;
        }
        *last = Some(Instant::now());
        match self.fetch().await {
            Ok((table, _)) => self.table.store(Arc::new(self.with_static(table))),
            Err(e) => log::warn!("provider `{}`: {e}; keeping the last good keys", self.name),
        }
    }

    async fn fetch(&self) -> Result<(KeyTable, Option<Duration>), KeyError> {
        let jwks_uri = match &self.source {
            KeySource::Uri(uri) => uri.clone(),
            KeySource::Discovery { issuer } => {
                let url = format!("{issuer}/.well-known/openid-configuration");
                let (body, _) = self.get(&url).await?;
                let doc: serde_json::Value =
                    serde_json::from_slice(&body).map_err(|e| KeyError::Fetch {
                        url: url.clone(),
                        message: format!("not JSON: {e}"),
                    })?;
                if let Some(endpoint) = doc.get("introspection_endpoint").and_then(|v| v.as_str()) {
                    self.introspection_endpoint
                        .store(Some(Arc::new(endpoint.to_owned())));
                }
                doc.get("jwks_uri")
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
                    .ok_or(KeyError::Fetch {
                        url,
                        message: "no `jwks_uri` in the discovery document".into(),
                    })?
            }
            KeySource::File(_) | KeySource::Static => return Ok((KeyTable::default(), None)),
        };
        let (body, max_age) = self.get(&jwks_uri).await?;
        let table = parse_jwks(&body).map_err(|e| KeyError::Fetch {
            url: jwks_uri,
            message: e.to_string(),
        })?;
        Ok((table, max_age))
    }

    async fn get(&self, url: &str) -> Result<(bytes::Bytes, Option<Duration>), KeyError> {
        let fail = |message: String| KeyError::Fetch {
            url: url.to_owned(),
            message,
        };
        let response = self
            .client
            .get(url)
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| fail(e.to_string()))?;
        if !response.status().is_success() {
            return Err(fail(format!("status {}", response.status())));
        }
        let max_age = response
            .headers()
            .get(http::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.split(',')
                    .find_map(|d| d.trim().strip_prefix("max-age="))
                    .and_then(|s| s.parse::<u64>().ok())
            })
            .map(Duration::from_secs);
        if response
            .content_length()
            .is_some_and(|n| n as usize > MAX_DOCUMENT_BYTES)
        {
            return Err(fail("document too large".into()));
        }
        let body = response.bytes().await.map_err(|e| fail(e.to_string()))?;
        if body.len() > MAX_DOCUMENT_BYTES {
            return Err(fail("document too large".into()));
        }
        Ok((body, max_age))
    }

    /// Keeps keys fresh until the provider is dropped.
    pub fn spawn_refresh(self: &Arc<Self>, runtime: &tokio::runtime::Handle) {
        if matches!(self.source, KeySource::File(_) | KeySource::Static) {
            return;
        }
        let weak = Arc::downgrade(self);
        runtime.spawn(async move {
            loop {
                let Some(keys) = weak.upgrade() else { return };
                let wait = keys.refresh_now().await;
                drop(keys);
                tokio::time::sleep(wait).await;
            }
        });
    }
}

/// Parses a JWKS, keeping the signature keys Portcullis can verify with.
pub fn parse_jwks(bytes: &[u8]) -> Result<KeyTable, KeyError> {
    let set: JwkSet =
        serde_json::from_slice(bytes).map_err(|e| KeyError::Invalid(format!("not a JWKS: {e}")))?;
    let mut table = KeyTable::default();
    for jwk in &set.keys {
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let Some(key) = verify_key(jwk) else {
            continue;
        };
        let key = Arc::new(key);
        match &jwk.common.key_id {
            Some(kid) => {
                table.by_kid.insert(kid.clone(), key);
            }
            None => table.without_kid.push(key),
        }
    }
    Ok(table)
}

fn verify_key(jwk: &Jwk) -> Option<VerifyKey> {
    let family = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Family::Rsa,
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => Family::EcP256,
            EllipticCurve::P384 => Family::EcP384,
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(okp) => match okp.curve {
            EllipticCurve::Ed25519 => Family::Ed25519,
            _ => return None,
        },
        // Symmetric keys never come from a JWKS endpoint: that would let
        // anyone who can read it mint tokens.
        AlgorithmParameters::OctetKey(_) => return None,
    };
    let alg = jwk
        .common
        .key_algorithm
        .and_then(|a| a.to_string().parse::<Algorithm>().ok());
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(VerifyKey { key, family, alg })
}

/// A PEM public key (SPKI) as a verification key; the family from its
/// algorithm OID (and curve).
fn pem_key(pem: &[u8]) -> Result<VerifyKey, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::SubjectPublicKeyInfoDer;
    let spki = SubjectPublicKeyInfoDer::from_pem_slice(pem).map_err(|e| e.to_string())?;
    let der: &[u8] = spki.as_ref();
    let contains = |oid: &[u8]| der.windows(oid.len()).any(|w| w == oid);
    const RSA: &[u8] = &[
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
    ];
    const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    const P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
    const ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
    let (family, key) = if contains(RSA) {
        (Family::Rsa, DecodingKey::from_rsa_pem(pem))
    } else if contains(P256) {
        (Family::EcP256, DecodingKey::from_ec_pem(pem))
    } else if contains(P384) {
        (Family::EcP384, DecodingKey::from_ec_pem(pem))
    } else if contains(ED25519) {
        (Family::Ed25519, DecodingKey::from_ed_pem(pem))
    } else {
        return Err("not an RSA, P-256, P-384 or Ed25519 public key".into());
    };
    Ok(VerifyKey {
        key: key.map_err(|e| e.to_string())?,
        family,
        alg: None,
    })
}
