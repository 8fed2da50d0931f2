//! TLS for listeners: certificates chosen by SNI, reloaded from disk.
//!
//! pingora's rustls listener takes a `ResolvesServerCert`; ours reads an
//! atomically swapped table (exact names, wildcard suffixes, a default), so
//! a handshake never waits on a lock and a certificate rotated on disk (a
//! Kubernetes Secret update) is served to new handshakes within a poll
//! interval. Open connections keep the certificate they negotiated. Files
//! are parsed here, never by pingora, which panics on bad files.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;

/// How often certificate files are checked for changes.
pub const RELOAD_POLL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read `{}`: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{}`: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

fn invalid(path: &Path, message: impl fmt::Display) -> TlsError {
    TlsError::Invalid {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

/// A certificate chain and key file pair, as configured.
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A loaded certificate with the DNS names it is valid for.
struct LoadedCert {
    key: Arc<CertifiedKey>,
    names: Vec<String>,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn load_cert(files: &CertFiles) -> Result<LoadedCert, TlsError> {
    let cert_pem = read(&files.cert)?;
    let key_pem = read(&files.key)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(&files.cert, e))?;
    let leaf = chain
        .first()
        .ok_or_else(|| invalid(&files.cert, "no certificate in file"))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| invalid(&files.key, e))?;
    let signing_key =
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| invalid(&files.key, e))?;
    let names = dns_names(leaf).map_err(|e| invalid(&files.cert, e))?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(|e| {
        invalid(
            &files.key,
            format!("key does not match the certificate: {e}"),
        )
    })?;
    Ok(LoadedCert {
        key: Arc::new(certified),
        names,
    })
}

/// The certificate's DNS SANs, or its CN when it has none.
fn dns_names(leaf: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(leaf).map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        for cn in cert.subject().iter_common_name() {
            if let Ok(cn) = cn.as_str() {
                names.push(cn.to_ascii_lowercase());
            }
        }
    }
    Ok(names)
}

/// What the resolver serves; replaced whole on reload.
#[derive(Default)]
struct CertTable {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl CertTable {
    fn build(certs: &[LoadedCert]) -> CertTable {
        let mut table = CertTable {
            default: certs.first().map(|c| c.key.clone()),
            ..CertTable::default()
        };
        // The first certificate naming a host wins, as in the file.
        for cert in certs {
            for name in &cert.names {
                match name.strip_prefix("*.") {
                    Some(suffix) => table.wildcard.entry(suffix.to_owned()),
                    None => table.exact.entry(name.clone()),
                }
                .or_insert_with(|| cert.key.clone());
            }
        }
        table
    }

    fn resolve(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = server_name {
            if let Some(key) = self.exact.get(name) {
                return Some(key.clone());
            }
            // `*.example.com` covers exactly one label, as RFC 6125 says.
            if let Some((_, parent)) = name.split_once('.') {
                if let Some(key) = self.wildcard.get(parent) {
                    return Some(key.clone());
                }
            }
        }
        self.default.clone()
    }
}

/// The SNI certificate resolver of one listener.
pub struct SniResolver {
    files: Vec<CertFiles>,
    table: ArcSwap<CertTable>,
    /// Contents last loaded, to notice changes.
    fingerprints: std::sync::Mutex<Vec<u64>>,
    listener: String,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SniResolver")
            .field("listener", &self.listener)
            .field("files", &self.files)
            .finish()
    }
}

impl SniResolver {
    /// Loads every certificate; any error fails start-up.
    pub fn new(listener: &str, files: Vec<CertFiles>) -> Result<Arc<SniResolver>, TlsError> {
        let certs = files.iter().map(load_cert).collect::<Result<Vec<_>, _>>()?;
        let fingerprints = files.iter().map(fingerprint).collect();
        Ok(Arc::new(SniResolver {
            table: ArcSwap::from_pointee(CertTable::build(&certs)),
            files,
            fingerprints: std::sync::Mutex::new(fingerprints),
            listener: listener.to_owned(),
        }))
    }

    /// Reloads if any file changed. A file that fails to load is logged and
    /// the previous table stays: a half-written Secret must not take TLS down.
    pub fn reload_if_changed(&self) {
        let current: Vec<u64> = self.files.iter().map(fingerprint).collect();
        let mut last = self.fingerprints.lock().unwrap_or_else(|e| e.into_inner());
        if *last == current {
            return;
        }
        match self
            .files
            .iter()
            .map(load_cert)
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(certs) => {
                self.table.store(Arc::new(CertTable::build(&certs)));
                *last = current;
                log::info!("listener `{}`: certificates reloaded", self.listener);
            }
            Err(e) => {
                // Remember the broken contents so the error is logged once
                // per change, not every poll.
                *last = current;
                log::error!(
                    "listener `{}`: certificate reload failed, keeping the previous certificates: {e}",
                    self.listener
                );
            }
        }
    }

    /// Polls the files until the resolver is dropped.
    pub fn spawn_watcher(self: &Arc<Self>, runtime: &tokio::runtime::Handle) {
        let weak = Arc::downgrade(self);
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(RELOAD_POLL).await;
                let Some(resolver) = weak.upgrade() else {
                    return;
                };
                resolver.reload_if_changed();
            }
        });
    }
}

fn fingerprint(files: &CertFiles) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = foldhash::quality::FixedState::with_seed(0).build_hasher();
    for path in [&files.cert, &files.key] {
        match std::fs::read(path) {
            Ok(bytes) => hasher.write(&bytes),
            Err(_) => hasher.write_u8(0),
        }
    }
    hasher.finish()
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.table.load().resolve(hello.server_name())
    }
}

/// A client-certificate verifier for mTLS.
pub fn client_verifier(
    ca: &Path,
    required: bool,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let pem = read(ca)?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| invalid(ca, e))?;
        roots.add(cert).map_err(|e| invalid(ca, e))?;
    }
    if roots.is_empty() {
        return Err(invalid(ca, "no CA certificate in file"));
    }
    let builder = WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    );
    let builder = if required {
        builder
    } else {
        builder.allow_unauthenticated()
    };
    builder.build().map_err(|e| invalid(ca, e))
}
