//! Fetches each service's document from a healthy target of its pool, with
//! `If-None-Match`, every `refresh_interval` and at once after a reload.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::future::join_all;
use http::header;
use portcullis_config as config;
use portcullis_openapi_merge as merge;
use serde_json::Value;

use super::{Portal, Service, Site, Source};
use crate::snapshot::{SharedSnapshot, Snapshot};

/// What one fetch found.
enum Fetched {
    NotModified,
    Document {
        document: Value,
        etag: Option<String>,
    },
}

#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("upstream `{0}` has no target")]
    NoTarget(String),
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    #[error("{0}")]
    Http(String),
    #[error("answered {0}")]
    Status(u16),
    #[error("larger than {0} bytes")]
    TooLarge(u64),
    #[error("{0}")]
    Parse(String),
}

/// Runs the fetch loop on the control runtime for as long as the process.
pub fn spawn_fetcher(
    shared: SharedSnapshot,
    portal: Arc<Portal>,
    runtime: &tokio::runtime::Handle,
) {
    runtime.spawn(async move {
        loop {
            let snapshot = shared.load_full();
            let interval = match &snapshot.portal {
                Some(site) => {
                    let complete = refresh(site, &snapshot).await;
                    // A service without any document yet (it may start after
                    // the gateway) is tried again soon, not a whole interval later.
                    if complete {
                        site.settings.refresh_interval.0
                    } else {
                        site.settings.refresh_interval.0.min(MISSING_RETRY)
                    }
                }
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = portal.wake.notified() => {}
            }
        }
    });
}

/// How soon a service with no document yet is asked again.
const MISSING_RETRY: Duration = Duration::from_secs(2);

/// Fetches every service once, then republishes the merge. True when every
/// service has a document (fresh or last good).
async fn refresh(site: &Site, snapshot: &Snapshot) -> bool {
    let portal = &site.portal;
    let requests = site.services.iter().map(|service| {
        let etag = {
            let sources = portal.sources.lock().unwrap_or_else(|e| e.into_inner());
            sources
                .get(&service.name)
                .filter(|s| s.service.as_ref() == Some(service))
                .and_then(|s| s.etag.clone())
        };
        async move { (service, fetch(site, snapshot, service, etag).await) }
    });
    let results = join_all(requests).await;
    {
        let mut sources = portal.sources.lock().unwrap_or_else(|e| e.into_inner());
        for (service, result) in results {
            let source = sources.entry(service.name.clone()).or_default();
            if source.service.as_ref() != Some(service) {
                *source = Source {
                    service: Some(service.clone()),
                    ..Source::default()
                };
            }
            match result {
                Ok(Fetched::NotModified) => {
                    source.fetch_error = None;
                    source.last_success = Some(SystemTime::now());
                }
                Ok(Fetched::Document { document, etag }) => {
                    source.document = Some(Arc::new(document));
                    source.etag = etag;
                    source.fetch_error = None;
                    source.last_success = Some(SystemTime::now());
                }
                Err(e) => {
                    log::warn!(
                        "portal: the document of `{}` ({}{}) could not be fetched: {e}",
                        service.name,
                        service.upstream,
                        service.path
                    );
                    source.fetch_error = Some(e.to_string());
                }
            }
        }
    }
    portal.publish(site);
    let sources = portal.sources.lock().unwrap_or_else(|e| e.into_inner());
    site.services.iter().all(|service| {
        sources
            .get(&service.name)
            .is_some_and(|s| s.document.is_some())
    })
}

async fn fetch(
    site: &Site,
    snapshot: &Snapshot,
    service: &Service,
    etag: Option<String>,
) -> Result<Fetched, FetchError> {
    let no_target = || FetchError::NoTarget(service.upstream.clone());
    let pool = snapshot
        .pools
        .iter()
        .find(|p| *p.name == *service.upstream)
        .ok_or_else(no_target)?;
    let target = {
        let targets = pool.targets();
        targets
            .iter()
            .find(|t| pool.is_available(t))
            .or_else(|| targets.first())
            .cloned()
            .ok_or_else(no_target)?
    };
    let settings = &site.settings;
    let builder = reqwest::Client::builder()
        .no_proxy()
        .timeout(settings.fetch_timeout.0)
        .connect_timeout(pool.spec.timeouts.connect.0)
        .redirect(reqwest::redirect::Policy::none());
    let (client, url) = match &pool.spec.tls {
        None => (builder, format!("http://{}{}", target.addr, service.path)),
        Some(tls) => {
            // Verified against the name the proxy verifies, resolved to
            // the target chosen here.
            let name = pool.tls_sni.as_deref().unwrap_or(&target.host).to_owned();
            let mut builder = builder
                .resolve(&name, target.addr)
                .danger_accept_invalid_certs(tls.insecure_skip_verify);
            if let Some(ca) = &tls.ca {
                let path = config::resolve_path(&snapshot.config.source, ca);
                let pem = tokio::fs::read(&path)
                    .await
                    .map_err(|e| FetchError::Client(format!("{}: {e}", path.display())))?;
                for cert in reqwest::Certificate::from_pem_bundle(&pem)
                    .map_err(|e| FetchError::Client(e.to_string()))?
                {
                    builder = builder.add_root_certificate(cert);
                }
            }
            let url = format!("https://{name}:{}{}", target.addr.port(), service.path);
            (builder, url)
        }
    };
    let client = client
        .build()
        .map_err(|e| FetchError::Client(e.to_string()))?;
    let mut request = client
        .get(&url)
        .header(header::ACCEPT, "application/json, application/yaml;q=0.9");
    if let Some(etag) = &etag {
        request = request.header(header::IF_NONE_MATCH, etag);
    }
    let mut response = request
        .send()
        .await
        .map_err(|e| FetchError::Http(describe(e)))?;
    match response.status().as_u16() {
        304 if etag.is_some() => return Ok(Fetched::NotModified),
        200 => {}
        other => return Err(FetchError::Status(other)),
    }
    let etag = response_etag(&response);
    let limit = settings.max_document_size.0;
    if response.content_length().is_some_and(|n| n > limit) {
        return Err(FetchError::TooLarge(limit));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| FetchError::Http(describe(e)))?
    {
        if (body.len() + chunk.len()) as u64 > limit {
            return Err(FetchError::TooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    let text = String::from_utf8(body).map_err(|_| FetchError::Parse("not UTF-8".into()))?;
    let document =
        merge::parse(&service.name, &text).map_err(|e| FetchError::Parse(e.to_string()))?;
    Ok(Fetched::Document { document, etag })
}

/// The error and its causes, without the URL: the status is public and
/// must not show internal addresses.
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

fn response_etag(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get(header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}
