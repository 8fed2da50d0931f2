//! Ending sessions.
//!
//! The user's logout changes state only on a POST that proves it comes
//! from the gateway's own page: the form's CSRF token (derived from the
//! session cookie, which another site cannot read), or, for scripts of
//! the gateway's own origin, `Sec-Fetch-Site: same-origin` / a matching
//! `Origin`. Any sign of another site refuses it. A GET only shows the
//! confirmation form, so a link or an image elsewhere cannot sign anyone
//! out.
//!
//! The provider's back-channel logout (OpenID Connect Back-Channel Logout
//! 1.0) is a signed logout token posted by the provider: verified like an
//! ID token, then every session of its `sid` (or `sub`) ends, on every
//! replica (the store is shared).

use http::HeaderMap;

use super::sessions::{Holder, LOGOUT_TOKEN_MEMORY};
use super::{cookie_value, digest, encode, now, param, same, Answer, Login, Request};
use crate::auth::Authenticator;
use crate::errors::GatewayError;

/// The event a logout token must carry.
const BACKCHANNEL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// How the request says where it comes from.
#[derive(Debug, PartialEq, Eq)]
enum Provenance {
    SameOrigin,
    CrossSite,
    Unknown,
}

fn origin_of(headers: &HeaderMap, public_url: &str) -> Provenance {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let by_fetch = header("sec-fetch-site").map(|site| match site {
        "same-origin" => Provenance::SameOrigin,
        // `none`: typed into the address bar, a bookmark.
        "none" => Provenance::Unknown,
        _ => Provenance::CrossSite,
    });
    let by_origin = header("origin").map(|origin| {
        if origin.eq_ignore_ascii_case(public_url) {
            Provenance::SameOrigin
        } else {
            Provenance::CrossSite
        }
    });
    match (by_fetch, by_origin) {
        (Some(Provenance::CrossSite), _) | (_, Some(Provenance::CrossSite)) => {
            Provenance::CrossSite
        }
        (Some(Provenance::SameOrigin), _) | (_, Some(Provenance::SameOrigin)) => {
            Provenance::SameOrigin
        }
        _ => Provenance::Unknown,
    }
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('"', "&quot;")
}

impl Login {
    /// The logout form's token: a digest of the session cookie, so only
    /// a page that can read the cookie's session can send it.
    fn logout_csrf(session_id: &str) -> String {
        digest(&format!("portcullis-logout\0{session_id}"))
    }

    /// GET: a page asking to confirm (nothing changes).
    pub(super) async fn confirm_logout(&self, headers: &HeaderMap) -> Result<Answer, GatewayError> {
        let Some(session_id) = cookie_value(headers, &self.settings.cookie) else {
            return Ok(self.signed_out());
        };
        let body = format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>Sign out</title>\
             <meta name=\"viewport\" content=\"width=device-width\"></head><body>\
             <main><h1>Sign out?</h1><form method=\"post\" action=\"{}\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button type=\"submit\">Sign out</button></form></main></body></html>",
            html_escape(&self.settings.logout_path),
            Self::logout_csrf(&session_id)
        );
        Ok(Answer::Html { status: 200, body })
    }

    /// Where a browser without a session goes.
    fn signed_out(&self) -> Answer {
        Answer::Redirect {
            location: self
                .settings
                .post_logout_path
                .clone()
                .unwrap_or_else(|| "/".into()),
            cookies: vec![self.cookie(&self.settings.cookie, "", 0)],
        }
    }

    /// POST: ends the session (in the store, so on every replica) and
    /// sends the browser to the provider's logout.
    pub(super) async fn logout(&self, request: &Request<'_>) -> Result<Answer, GatewayError> {
        let Some(session_id) = cookie_value(request.headers, &self.settings.cookie) else {
            return Ok(self.signed_out());
        };
        let origin = origin_of(request.headers, self.public_url());
        let allowed = match param(request.form, "csrf") {
            Some(token) => {
                origin != Provenance::CrossSite && same(&token, &Self::logout_csrf(&session_id))
            }
            None => origin == Provenance::SameOrigin,
        };
        if !allowed {
            log::info!("login: a logout without proof of origin was refused");
            return Err(GatewayError::Forbidden);
        }
        let ended = self
            .store
            .remove(&digest(&session_id))
            .await
            .map_err(|_| GatewayError::IdentityUnavailable)?;
        let end_session = match self.endpoints().await {
            Ok(e) => e.end_session_endpoint.clone(),
            Err(_) => None,
        };
        let Some((endpoint, id_token)) =
            end_session.zip(ended.and_then(|session| session.id_token))
        else {
            return Ok(self.signed_out());
        };
        let mut location = format!(
            "{endpoint}{}id_token_hint={}&client_id={}",
            if endpoint.contains('?') { '&' } else { '?' },
            encode(&id_token),
            encode(&self.settings.client_id),
        );
        if let Some(path) = &self.settings.post_logout_path {
            location.push_str("&post_logout_redirect_uri=");
            location.push_str(&encode(&format!("{}{path}", self.public_url())));
        }
        Ok(Answer::Redirect {
            location,
            cookies: vec![self.cookie(&self.settings.cookie, "", 0)],
        })
    }

    /// OpenID Connect Back-Channel Logout 1.0 §2.6: validates the logout
    /// token and ends the sessions it names.
    pub(super) async fn back_channel_logout(
        &self,
        request: &Request<'_>,
        auth: &Authenticator,
    ) -> Result<Answer, GatewayError> {
        let refused = |why: &str| {
            log::info!("login: logout token refused: {why}");
            GatewayError::BadRequest
        };
        let token = param(request.form, "logout_token").ok_or_else(|| refused("none sent"))?;
        let header = jsonwebtoken::decode_header(&token).map_err(|_| refused("malformed"))?;
        // Explicit typing (§2.4): an access token or an ID token is never
        // a logout token, whatever it contains.
        if let Some(typ) = header.typ.as_deref() {
            let typ = typ.to_ascii_lowercase();
            if typ != "logout+jwt" && typ != "application/logout+jwt" && typ != "jwt" {
                return Err(refused("wrong typ"));
            }
        }
        let claims = auth
            .verify_issued_to(self.provider, &token, &self.settings.client_id, false)
            .await
            .map_err(|e| refused(&e.to_string()))?;
        let now = now();
        let number = |name: &str| claims.get(name).and_then(|v| v.as_u64());
        let text = |name: &str| claims.get(name).and_then(|v| v.as_str());
        let iat = number("iat").ok_or_else(|| refused("no iat"))?;
        // Not from the future, not older than the replay memory.
        let leeway = 60;
        if iat > now + leeway || iat + LOGOUT_TOKEN_MEMORY.as_secs() < now + leeway {
            return Err(refused("iat out of range"));
        }
        if number("exp").is_some_and(|exp| exp + leeway < now) {
            return Err(refused("expired"));
        }
        if claims.contains_key("nonce") {
            return Err(refused("a nonce (an ID token?)"));
        }
        let event = claims
            .get("events")
            .and_then(|e| e.as_object())
            .and_then(|e| e.get(BACKCHANNEL_EVENT));
        if !event.is_some_and(|e| e.is_object()) {
            return Err(refused("no back-channel logout event"));
        }
        let jti = text("jti").ok_or_else(|| refused("no jti"))?;
        let holder = match (text("sid"), text("sub")) {
            (Some(sid), _) => Holder::ProviderSession(sid),
            (None, Some(sub)) => Holder::User(sub),
            (None, None) => return Err(refused("neither sid nor sub")),
        };
        if !self
            .store
            .first_sight(&self.issuer, jti)
            .await
            .map_err(|_| GatewayError::IdentityUnavailable)?
        {
            return Err(refused("replayed"));
        }
        let ended = self
            .store
            .remove_all(&holder)
            .await
            .map_err(|_| GatewayError::IdentityUnavailable)?;
        log::info!("login: back-channel logout ended {ended} session(s)");
        Ok(Answer::Empty { status: 200 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn where_a_request_comes_from() {
        let site = "https://gw.example";
        for (pairs, want) in [
            (
                vec![("sec-fetch-site", "same-origin")],
                Provenance::SameOrigin,
            ),
            (
                vec![("origin", "https://gw.example")],
                Provenance::SameOrigin,
            ),
            (
                vec![("sec-fetch-site", "cross-site")],
                Provenance::CrossSite,
            ),
            (vec![("sec-fetch-site", "same-site")], Provenance::CrossSite),
            (
                vec![("origin", "https://evil.example")],
                Provenance::CrossSite,
            ),
            (vec![("origin", "null")], Provenance::CrossSite),
            (
                vec![
                    ("sec-fetch-site", "same-origin"),
                    ("origin", "https://evil.example"),
                ],
                Provenance::CrossSite,
            ),
            (vec![("sec-fetch-site", "none")], Provenance::Unknown),
            (vec![], Provenance::Unknown),
        ] {
            assert_eq!(origin_of(&headers(&pairs), site), want, "{pairs:?}");
        }
    }
}
