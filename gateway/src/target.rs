//! The request target brought to canonical form, once, before any decision
//! (README "Canonical requests"). After [`canonicalise`] the request's URI
//! *is* the canonical target: routing, auth, rate-limit keys, the portal
//! and the upstream request all read it, and the client's own spelling is
//! gone. The rules live in `portcullis_canonical`.

use pingora::http::RequestHeader;
use portcullis_canonical::{canonical_target, Rejection, Rules, Target};

/// What the request asks for once canonical.
#[derive(Debug, PartialEq, Eq)]
pub enum Canonical {
    /// A resource: route it. The request's URI holds the canonical target.
    Resource,
    /// `OPTIONS *`: a question about the server, answered by the gateway.
    Server,
}

/// Replaces the request's target with its canonical form, or says why it
/// has none (answered 400).
pub fn canonicalise(req: &mut RequestHeader, rules: &Rules) -> Result<Canonical, Rejection> {
    let host = req.headers.get(http::header::HOST).map(|h| h.as_bytes());
    let is_options = req.method == http::Method::OPTIONS;
    let raw = req.raw_path();
    let canonical = match canonical_target(raw, is_options, host, rules)? {
        Target::Asterisk => return Ok(Canonical::Server),
        Target::Origin(target) => target,
    };
    // The common case: the client's target was canonical origin-form and
    // the URI already holds it byte for byte.
    let uri_matches = req
        .uri
        .path_and_query()
        .is_some_and(|pq| pq.as_str() == canonical);
    if uri_matches && canonical.as_bytes() == raw {
        return Ok(Canonical::Resource);
    }
    // HTTP/2 carries scheme and authority in the URI: keep them. (pingora
    // keeps an HTTP/1 absolute-form authority off the URI, and it has just
    // been checked against Host.)
    let mut parts = http::uri::Parts::default();
    parts.scheme = req.uri.scheme().cloned();
    parts.authority = req.uri.authority().cloned();
    // The canonical form consists of URI characters only; a failure here
    // would be a bug in the canonicaliser, and is refused rather than passed.
    parts.path_and_query = Some(
        canonical
            .as_ref()
            .parse()
            .map_err(|_| Rejection::BadPercentEncoding)?,
    );
    let uri = http::Uri::from_parts(parts).map_err(|_| Rejection::BadPercentEncoding)?;
    req.set_uri(uri);
    Ok(Canonical::Resource)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(target: &[u8], host: Option<&str>) -> RequestHeader {
        let mut req = RequestHeader::build("GET", target, None).unwrap();
        if let Some(host) = host {
            req.insert_header("host", host).unwrap();
        }
        req
    }

    #[test]
    fn the_uri_and_the_wire_carry_the_canonical_target() {
        let rules = Rules::default();
        for (raw, expected) in [
            (&b"/public/%2e%2e/admin/x?q=1"[..], "/admin/x?q=1"),
            (b"/a", "/a"),
            (b"//admin", "/admin"),
            (b"http://api.test/x/../y?z", "/y?z"),
        ] {
            let mut req = request(raw, Some("api.test"));
            assert_eq!(canonicalise(&mut req, &rules), Ok(Canonical::Resource));
            assert_eq!(req.uri.to_string(), expected);
            assert_eq!(req.raw_path(), expected.as_bytes(), "wire form");
        }
        let mut req = request(b"/public/..%2fadmin", Some("api.test"));
        assert_eq!(canonicalise(&mut req, &rules), Err(Rejection::EscapedSlash));
        let mut req = request(b"admin/x", Some("api.test"));
        assert_eq!(
            canonicalise(&mut req, &rules),
            Err(Rejection::NotOriginForm)
        );
        let mut req = RequestHeader::build("OPTIONS", b"*", None).unwrap();
        assert_eq!(canonicalise(&mut req, &rules), Ok(Canonical::Server));
    }
}
