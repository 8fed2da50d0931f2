//! The internal token: a short-lived JWT the gateway signs (ES256 or
//! EdDSA) with the caller's identity, so a backend can verify who calls
//! instead of trusting the network. Public keys are served as a JWKS.
//! Minted tokens are reused per caller token until shortly before expiry.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use http::{HeaderName, HeaderValue};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis_config as config;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivatePkcs8KeyDer;

use super::{now_secs, Identity, KeyError};

/// A signing key and its public JWK.
pub struct SigningKey {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: serde_json::Value,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl SigningKey {
    /// A fresh key (single replica, or tests).
    pub fn generate(alg: Algorithm) -> Result<SigningKey, KeyError> {
        let rng = SystemRandom::new();
        let pkcs8 = match alg {
            Algorithm::EdDSA => Ed25519KeyPair::generate_pkcs8(&rng),
            _ => EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng),
        }
        .map_err(|_| KeyError::Invalid("cannot generate a signing key".into()))?;
        SigningKey::from_pkcs8(pkcs8.as_ref(), alg)
    }

    /// A PKCS#8 PEM key from a file (shared by all replicas).
    pub fn from_pem_file(path: &std::path::Path, alg: Algorithm) -> Result<SigningKey, KeyError> {
        let invalid = |e: String| KeyError::Invalid(format!("{}: {e}", path.display()));
        let pem = std::fs::read(path).map_err(|e| invalid(e.to_string()))?;
        let der = PrivatePkcs8KeyDer::from_pem_slice(&pem).map_err(|e| invalid(e.to_string()))?;
        SigningKey::from_pkcs8(der.secret_pkcs8_der(), alg).map_err(|e| invalid(e.to_string()))
    }

    fn from_pkcs8(der: &[u8], alg: Algorithm) -> Result<SigningKey, KeyError> {
        let rejected = |e: ring::error::KeyRejected| KeyError::Invalid(format!("signing key: {e}"));
        let (public, mut jwk, encoding) = match alg {
            Algorithm::EdDSA => {
                let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(rejected)?;
                let public = pair.public_key().as_ref().to_vec();
                let jwk = serde_json::json!({ "kty": "OKP", "crv": "Ed25519", "x": b64(&public) });
                (public, jwk, EncodingKey::from_ed_der(der))
            }
            _ => {
                let pair = EcdsaKeyPair::from_pkcs8(
                    &ECDSA_P256_SHA256_FIXED_SIGNING,
                    der,
                    &SystemRandom::new(),
                )
                .map_err(rejected)?;
                let public = pair.public_key().as_ref().to_vec();
                // Uncompressed point: 0x04 || X || Y.
                let jwk = serde_json::json!({
                    "kty": "EC", "crv": "P-256",
                    "x": b64(&public[1..33]), "y": b64(&public[33..65]),
                });
                (public, jwk, EncodingKey::from_ec_der(der))
            }
        };
        let digest = ring::digest::digest(&ring::digest::SHA256, &public);
        let kid = b64(&digest.as_ref()[..12]);
        jwk["kid"] = kid.clone().into();
        jwk["use"] = "sig".into();
        jwk["alg"] = if alg == Algorithm::EdDSA {
            "EdDSA"
        } else {
            "ES256"
        }
        .into();
        Ok(SigningKey {
            kid,
            alg,
            encoding,
            jwk,
        })
    }
}

/// The configured internal token.
pub struct InternalTokens {
    pub header: HeaderName,
    ttl: Duration,
    issuer: String,
    audience: Option<String>,
    key: Arc<SigningKey>,
    jwks: bytes::Bytes,
    minted: moka::sync::Cache<Arc<str>, HeaderValue, foldhash::fast::RandomState>,
}

impl InternalTokens {
    pub fn new(spec: &config::InternalToken, key: Arc<SigningKey>) -> Result<Self, KeyError> {
        let header = HeaderName::from_bytes(spec.header.as_bytes())
            .map_err(|e| KeyError::Invalid(e.to_string()))?;
        let jwks = serde_json::json!({ "keys": [key.jwk] }).to_string().into();
        // Reuse a minted token until a sixth of its life is left, so a
        // backend never gets one about to expire.
        let reuse_for = spec.ttl.0 - spec.ttl.0 / 6;
        Ok(InternalTokens {
            header,
            ttl: spec.ttl.0,
            issuer: spec.issuer.clone(),
            audience: spec.audience.clone(),
            key,
            jwks,
            minted: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(reuse_for)
                .build_with_hasher(foldhash::fast::RandomState::default()),
        })
    }

    /// The JWKS document with the public key.
    pub fn jwks(&self) -> bytes::Bytes {
        self.jwks.clone()
    }

    /// The token for this caller: reused, or minted now.
    pub fn token_for(&self, caller_token: &str, identity: &Identity) -> Option<HeaderValue> {
        if let Some(value) = self.minted.get(caller_token) {
            return Some(value);
        }
        let now = now_secs();
        // Never outlive the caller's own token.
        let exp = (now + self.ttl.as_secs()).min(identity.expires_at.max(now + 1));
        let mut claims = serde_json::Map::new();
        for (path, value) in &identity.claims {
            claims.insert(path.clone(), value.clone());
        }
        claims.insert("iss".into(), self.issuer.clone().into());
        if let Some(sub) = &identity.subject {
            claims.insert("sub".into(), sub.clone().into());
        }
        if let Some(aud) = &self.audience {
            claims.insert("aud".into(), aud.clone().into());
        }
        claims.insert("roles".into(), identity.roles.clone().into());
        claims.insert("iat".into(), now.into());
        claims.insert("exp".into(), exp.into());
        let mut header = Header::new(self.key.alg);
        header.kid = Some(self.key.kid.clone());
        header.typ = Some("JWT".into());
        let token = jsonwebtoken::encode(&header, &claims, &self.key.encoding).ok()?;
        let value = HeaderValue::from_str(&token).ok()?;
        self.minted.insert(Arc::from(caller_token), value.clone());
        Some(value)
    }
}
