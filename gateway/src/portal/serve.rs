//! The portal's answers: the merged document (filtered by what the caller
//! may reach), the service status, and the portal page with Swagger UI's
//! files from the binary.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::{HeaderMap, Method};
use portcullis_config::AuthMode;

use super::Site;
use crate::snapshot::Snapshot;

/// What a request to the portal asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Page<'p> {
    SpecJson,
    SpecYaml,
    /// `docs_path` without the slash: redirected to the page.
    DocsRedirect,
    /// `docs_path/` and everything under it: the part after the slash.
    Docs(&'p str),
}

/// Whether `path` is one of the portal's; checked before routing.
pub fn page<'p>(site: &Site, path: &'p str) -> Option<Page<'p>> {
    if path == site.settings.spec_path {
        return Some(Page::SpecJson);
    }
    if path == site.yaml_path {
        return Some(Page::SpecYaml);
    }
    let rest = path.strip_prefix(site.settings.docs_path.as_str())?;
    if rest.is_empty() {
        return Some(Page::DocsRedirect);
    }
    rest.strip_prefix('/').map(Page::Docs)
}

/// A complete answer for the proxy to write.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(http::HeaderName, Cow<'static, str>)>,
    pub body: Bytes,
}

impl Answer {
    fn ok(content_type: &'static str, cache: &'static str, body: Bytes) -> Answer {
        Answer {
            status: 200,
            headers: vec![
                (http::header::CONTENT_TYPE, content_type.into()),
                (http::header::CACHE_CONTROL, cache.into()),
                (http::header::X_CONTENT_TYPE_OPTIONS, "nosniff".into()),
            ],
            body,
        }
    }
}

/// `None`: not found under the portal's path (the caller answers 404).
pub async fn serve(
    page: Page<'_>,
    method: &Method,
    headers: &HeaderMap,
    snapshot: &Snapshot,
    site: &Site,
) -> Result<Answer, crate::errors::GatewayError> {
    if method != Method::GET && method != Method::HEAD {
        return Err(crate::errors::GatewayError::MethodNotAllowed);
    }
    let published = site.portal.published();
    match page {
        Page::SpecJson | Page::SpecYaml => {
            let visible = visibility(published.services(), headers, snapshot, site).await;
            let rendering = published.render(visible);
            if headers
                .get(http::header::IF_NONE_MATCH)
                .is_some_and(|v| v.as_bytes() == rendering.etag.as_bytes())
            {
                return Ok(Answer {
                    status: 304,
                    headers: spec_headers(&rendering.etag),
                    body: Bytes::new(),
                });
            }
            let (content_type, body) = match page {
                Page::SpecYaml => ("application/yaml", rendering.yaml.clone()),
                _ => ("application/json", rendering.json.clone()),
            };
            let mut headers = spec_headers(&rendering.etag);
            headers.push((http::header::CONTENT_TYPE, content_type.into()));
            Ok(Answer {
                status: 200,
                headers,
                body,
            })
        }
        Page::DocsRedirect => Ok(Answer {
            status: 301,
            headers: vec![(
                http::header::LOCATION,
                format!("{}/", site.settings.docs_path).into(),
            )],
            body: Bytes::new(),
        }),
        Page::Docs("") | Page::Docs("index.html") => Ok(Answer::ok(
            "text/html; charset=utf-8",
            "no-cache",
            Bytes::from(index_html(site)),
        )),
        Page::Docs("status.json") => Ok(Answer::ok(
            "application/json",
            "no-cache",
            published.status(),
        )),
        Page::Docs("portal.js") => Ok(Answer::ok(
            "text/javascript; charset=utf-8",
            "no-cache",
            Bytes::from_static(PORTAL_JS.as_bytes()),
        )),
        Page::Docs(asset) => swagger_asset(asset).ok_or(crate::errors::GatewayError::NoRoute),
    }
}

/// Which services the caller may see: all, or (with `hide_unreachable`)
/// those whose route would let this request's credential through.
async fn visibility(
    services: &[String],
    headers: &HeaderMap,
    snapshot: &Snapshot,
    site: &Site,
) -> Vec<bool> {
    let mut visible = Vec::with_capacity(services.len());
    for name in services {
        let shown = !site.settings.hide_unreachable || {
            let route = site
                .services
                .iter()
                .find(|s| &s.name == name)
                .map(|s| s.route_index);
            match route.and_then(|i| snapshot.route_auth.get(i)) {
                Some(policy) if policy.mode == AuthMode::Required => {
                    snapshot.auth.authorize(policy, headers).await.is_ok()
                }
                Some(_) => true,
                None => false,
            }
        };
        visible.push(shown);
    }
    visible
}

fn spec_headers(etag: &str) -> Vec<(http::HeaderName, Cow<'static, str>)> {
    vec![
        (http::header::ETAG, etag.to_owned().into()),
        // Depends on who asks: never shared between callers.
        (http::header::CACHE_CONTROL, "private, no-cache".into()),
        (http::header::VARY, "Authorization".into()),
        (http::header::ACCESS_CONTROL_ALLOW_ORIGIN, "*".into()),
    ]
}

/// Swagger UI's own files (not its `index.html` or initializer: the page
/// and `portal.js` are ours).
fn swagger_asset(asset: &str) -> Option<Answer> {
    if asset.ends_with(".html") || asset == "swagger-initializer.js" {
        return None;
    }
    static CONFIG: OnceLock<Arc<utoipa_swagger_ui::Config<'static>>> = OnceLock::new();
    let config = CONFIG
        .get_or_init(|| Arc::new(utoipa_swagger_ui::Config::new(["/openapi.json"])))
        .clone();
    let file = utoipa_swagger_ui::serve(asset, config).ok()??;
    let content_type = match file.content_type.as_str() {
        "text/css" => "text/css; charset=utf-8",
        "application/javascript" | "text/javascript" => "text/javascript; charset=utf-8",
        "image/png" => "image/png",
        "application/json" => "application/json",
        _ => "application/octet-stream",
    };
    Some(Answer::ok(
        content_type,
        "public, max-age=86400",
        Bytes::from(file.bytes.into_owned()),
    ))
}

const PORTAL_JS: &str = include_str!("portal.js");

/// The page: Swagger UI on the merged document, and a banner naming the
/// services whose document is stale or missing.
fn index_html(site: &Site) -> String {
    let title = escape_html(&site.settings.title);
    let spec = escape_html(&site.settings.spec_path);
    format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="stylesheet" href="swagger-ui.css">
<style>
  body {{ margin: 0; font-family: sans-serif; }}
  #portcullis-status:empty {{ display: none; }}
  #portcullis-status {{ background: #fff4e5; border-bottom: 1px solid #e0a040; padding: 0.75em 1.5em; }}
  #portcullis-status li.excluded, #portcullis-status li.missing {{ color: #a01010; }}
</style>
</head>
<body data-spec="{spec}" data-status="status.json">
<div id="portcullis-status" role="status" aria-live="polite"></div>
<main id="swagger-ui"></main>
<script src="swagger-ui-bundle.js"></script>
<script src="portal.js"></script>
</body>
</html>
"#
    )
}

fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            escape_html(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn swagger_ui_files_are_in_the_binary() {
        let bundle = swagger_asset("swagger-ui-bundle.js").expect("bundle");
        assert!(bundle.body.len() > 100_000);
        assert!(swagger_asset("swagger-ui.css").is_some());
        assert!(swagger_asset("index.html").is_none());
        assert!(swagger_asset("../Cargo.toml").is_none());
    }
}
