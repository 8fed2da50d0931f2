//! Header names only the gateway may set. Whatever a client sends under
//! one of them is removed on every route and every attempt, before the
//! gateway sets its own: backends and frameworks take these headers as
//! facts established by the proxy in front of them.
//!
//! Names match case-insensitively and with `_` read as `-`, because CGI,
//! PHP, Django and nginx (`underscores_in_headers`) read `X_User` as
//! `X-User`.

use std::collections::HashSet;

type FastSet = HashSet<Box<str>, foldhash::fast::RandomState>;

/// Always reserved, whatever the config says. Grouped by who trusts them.
const ALWAYS: &[&str] = &[
    // oauth2-proxy, nginx `auth_request`, Traefik ForwardAuth.
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-groups",
    "x-forwarded-preferred-username",
    "x-forwarded-access-token",
    "x-forwarded-uri",
    "x-forwarded-method",
    "x-forwarded-prefix",
    "x-forwarded-port",
    "x-forwarded-server",
    "x-forwarded-ssl",
    "x-forwarded-client-cert",
    "x-access-token",
    "x-id-token",
    "x-userinfo",
    // Apache `REMOTE_USER`, Grafana and other auth-proxy modes.
    "remote-user",
    "remote-groups",
    "remote-email",
    "remote-name",
    "x-webauth-user",
    "x-authenticated-user",
    "x-authenticated-userid",
    "x-auth-token",
    // Client addresses: the gateway sets `X-Real-IP` and the
    // `X-Forwarded-*`/`Forwarded` chain itself; the rest are dropped.
    "x-real-ip",
    "true-client-ip",
    "x-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-cluster-client-ip",
    "x-originating-ip",
    "x-remote-ip",
    "x-remote-addr",
    "client-ip",
    // Routing and method overrides (IIS/Symfony, Rails/Express/Laravel
    // method-override middleware): a backend would act on another path or
    // method than the one the gateway decided on.
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    "x-original-method",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    // Front-end TLS flags (IIS, Rails) and client certificates.
    "front-end-https",
    "x-url-scheme",
    "x-client-cert",
    "ssl-client-cert",
];

/// Always reserved prefixes: identity headers of other gateways and
/// platforms (Pomerium, AWS ALB, Azure App Service, Google IAP, the
/// Kubernetes authenticating proxy, Kong, Envoy) and client-certificate
/// headers.
const ALWAYS_PREFIXES: &[&str] = &[
    "x-pomerium-",
    "x-amzn-oidc-",
    "x-ms-client-principal",
    "x-goog-authenticated-user-",
    "x-goog-iap-",
    "x-remote-",
    "x-consumer-",
    "x-credential-",
    "x-envoy-",
    "x-ssl-client-",
    "x-auth-request-",
];

/// Under the `X-Forwarded-` prefix, the names the gateway's forwarding
/// logic owns (replaced, or appended to for trusted proxies); every other
/// `X-Forwarded-*` is reserved.
const FORWARDING: &[&str] = &["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"];

/// The compiled set for one config.
#[derive(Debug)]
pub struct ReservedHeaders {
    names: FastSet,
    prefixes: Vec<Box<str>>,
    /// The first bytes of every name and prefix: most headers a request
    /// carries (`host`, `accept`, `user-agent`) are passed over on one load.
    first_bytes: [bool; 256],
}

impl ReservedHeaders {
    /// `names`: the config's mapped identity headers, the internal-token
    /// header and `identity.reserved_headers`; `prefixes`: the config's
    /// `reserved_prefixes` (which default to `X-User-` and `X-Auth-`).
    pub fn new<'a>(
        names: impl IntoIterator<Item = &'a str>,
        prefixes: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        let names: FastSet = ALWAYS
            .iter()
            .copied()
            .chain(names)
            .map(|n| normalise(n).into_boxed_str())
            .collect();
        let prefixes = ALWAYS_PREFIXES
            .iter()
            .copied()
            .chain(prefixes)
            .map(|p| normalise(p).into_boxed_str())
            .collect::<Vec<_>>();
        let mut first_bytes = [false; 256];
        for text in names.iter().chain(prefixes.iter()) {
            if let Some(b) = text.bytes().next() {
                first_bytes[usize::from(b)] = true;
                first_bytes[usize::from(b.to_ascii_uppercase())] = true;
            }
        }
        ReservedHeaders {
            names,
            prefixes,
            first_bytes,
        }
    }

    /// Whether a client-sent header of this name must be removed.
    pub fn contains(&self, name: &str) -> bool {
        match name.bytes().next() {
            Some(b) if self.first_bytes[usize::from(b)] => {}
            _ => return false,
        }
        // Header names from `http` are lower case already; only `_` needs
        // rewriting, and most names have none.
        let owned;
        let name = if name.bytes().any(|b| b == b'_' || b.is_ascii_uppercase()) {
            owned = normalise(name);
            owned.as_str()
        } else {
            name
        };
        if self.names.contains(name) {
            return true;
        }
        if name.starts_with("x-forwarded-") {
            return !FORWARDING.contains(&name);
        }
        self.prefixes.iter().any(|p| name.starts_with(&**p))
    }
}

fn normalise(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'_' => '-',
            b => b.to_ascii_lowercase() as char,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_a_reserved_name_is_reserved() {
        let reserved =
            ReservedHeaders::new(["X-User-Id", "x-internal-token"], ["x-user-", "x-auth-"]);
        for name in [
            "x-user-id",
            "X-USER-ID",
            "x_user_id",
            "x-user-tenant",
            "x-internal-token",
            "x_internal-token",
            "remote-user",
            "remote_user",
            "x-forwarded-user",
            "x_forwarded_email",
            "x-forwarded-groups",
            "x-forwarded-preferred-username",
            "x-auth-request-user",
            "x-auth-request-email",
            "remote-groups",
            "x-remote-user",
            "x-remote-group",
            "x-client-ip",
            "cf-connecting-ip",
            "true-client-ip",
            "x-real-ip",
            "x-original-url",
            "x-rewrite-url",
            "x-original-method",
            "x-http-method-override",
            "x-id-token",
            "x-access-token",
            "x-pomerium-jwt-assertion",
            "x-amzn-oidc-data",
            "x-forwarded-port",
            "x-forwarded-anything",
        ] {
            assert!(reserved.contains(name), "{name}");
        }
        for name in [
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "x-request-id",
            "content-type",
            "x-userx",
            "user-agent",
        ] {
            assert!(!reserved.contains(name), "{name}");
        }
    }
}
