//! Background work of a pool: DNS re-resolution and active health checks.
//! Tasks hold a weak reference and end when a reload drops the pool.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use portcullis_config as config;

use super::Pool;

/// Starts the resolver and health-check tasks a pool needs.
pub fn spawn_pool_tasks(pool: &Arc<Pool>, runtime: &tokio::runtime::Handle) {
    let needs_dns = pool
        .spec
        .targets
        .iter()
        .any(|t| t.parse::<SocketAddr>().is_err());
    if needs_dns {
        runtime.spawn(resolve_loop(Arc::downgrade(pool)));
    }
    if pool.spec.health_check.is_some() {
        runtime.spawn(check_loop(Arc::downgrade(pool)));
    }
}

async fn resolve_loop(pool: Weak<Pool>) {
    loop {
        let Some(strong) = pool.upgrade() else { return };
        let interval = strong.spec.dns_refresh.0;
        let mut resolved = Vec::new();
        let mut failed = false;
        for target in &strong.spec.targets {
            if let Ok(addr) = target.parse::<SocketAddr>() {
                resolved.push((addr, addr.ip().to_string()));
                continue;
            }
            let host = target.rsplit_once(':').map_or(target.as_str(), |(h, _)| h);
            match tokio::time::timeout(Duration::from_secs(5), tokio::net::lookup_host(target))
                .await
            {
                Ok(Ok(addrs)) => resolved.extend(addrs.map(|a| (a, host.to_owned()))),
                Ok(Err(e)) => {
                    failed = true;
                    log::warn!("upstream `{}`: cannot resolve `{target}`: {e}", strong.name);
                }
                Err(_) => {
                    failed = true;
                    log::warn!("upstream `{}`: resolving `{target}` timed out", strong.name);
                }
            }
        }
        // A failed lookup keeps the last known addresses rather than
        // emptying the pool during a DNS hiccup.
        if !failed || !resolved.is_empty() {
            strong.set_resolved(&resolved);
        }
        drop(strong);
        tokio::time::sleep(interval).await;
    }
}

async fn check_loop(pool: Weak<Pool>) {
    loop {
        let Some(strong) = pool.upgrade() else { return };
        let Some(check) = strong.spec.health_check.clone() else {
            return;
        };
        let targets = strong.targets().clone();
        let checks = targets.iter().map(|target| {
            let spec = &strong.spec;
            let check = &check;
            async move {
                let ok = probe(spec, check, target.addr, &target.host).await;
                (target.clone(), ok)
            }
        });
        for (target, ok) in futures_util::future::join_all(checks).await {
            strong.record_check(&target, ok);
        }
        drop(strong);
        tokio::time::sleep(check.interval.0).await;
    }
}

/// One health probe: GET `path`, healthy on any 2xx or 3xx.
async fn probe(
    spec: &config::Upstream,
    check: &config::HealthCheck,
    addr: SocketAddr,
    host: &str,
) -> bool {
    let mut builder = reqwest::Client::builder()
        .timeout(check.timeout.0)
        .connect_timeout(spec.timeouts.connect.0)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none());
    let url = match &spec.tls {
        Some(tls) => {
            let name = tls.sni.clone().unwrap_or_else(|| host.to_owned());
            builder = builder
                .resolve(&name, addr)
                .danger_accept_invalid_certs(tls.insecure_skip_verify);
            if let Some(ca) = &tls.ca {
                match std::fs::read(ca).map(|pem| reqwest::Certificate::from_pem_bundle(&pem)) {
                    Ok(Ok(certs)) => {
                        for cert in certs {
                            builder = builder.add_root_certificate(cert);
                        }
                    }
                    _ => log::warn!("health check: cannot read CA bundle `{ca}`"),
                }
            }
            format!("https://{name}:{}{}", addr.port(), check.path)
        }
        None => {
            if spec.protocol == config::UpstreamProtocol::Http2 {
                builder = builder.http2_prior_knowledge();
            }
            format!("http://{addr}{}", check.path)
        }
    };
    let Ok(client) = builder.build() else {
        return false;
    };
    let mut request = client.get(url);
    if let Some(host) = &check.host {
        request = request.header(http::header::HOST, host);
    }
    match request.send().await {
        Ok(response) => response.status().is_success() || response.status().is_redirection(),
        Err(_) => false,
    }
}
