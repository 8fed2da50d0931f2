//! The gateway's error answers: one status and one JSON body per kind, with
//! the request id, so a client (and the on-call engineer) can find the log line.

use bytes::Bytes;
use pingora::http::ResponseHeader;

/// Everything the gateway itself answers with an error status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    #[error("no route matches this request")]
    NoRoute,
    #[error("authentication required")]
    Unauthorized,
    /// Deliberately says no more: why a token failed is in the access log.
    #[error("invalid token")]
    InvalidToken,
    #[error("forbidden")]
    Forbidden,
    #[error("a stronger sign-in is required")]
    InsufficientUserAuthentication,
    #[error("the identity provider is unavailable")]
    IdentityUnavailable,
    #[error("too many requests")]
    TooManyRequests,
    #[error("too many requests in flight for this route")]
    Saturated,
    #[error("fault injected")]
    InjectedFault(u16),
    #[error("rate limiting is unavailable")]
    LimiterUnavailable,
    #[error("no healthy upstream target")]
    NoHealthyTarget,
    #[error("upstream connection failed")]
    UpstreamConnect,
    #[error("upstream timed out")]
    UpstreamTimeout,
    #[error("upstream failed")]
    UpstreamFailed,
    #[error("request body too large")]
    BodyTooLarge,
    #[error("request headers too large")]
    HeadersTooLarge,
    #[error("bad request")]
    BadRequest,
    #[error("bad request target: {0}")]
    BadTarget(portcullis_canonical::Rejection),
    #[error("request target too long")]
    UriTooLong,
    #[error("bad request: a header name contains `_`")]
    UnderscoreInHeaderName,
    #[error("transfer coding not implemented")]
    NotImplemented,
    #[error("HTTP version not supported")]
    VersionNotSupported,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("client too slow")]
    ClientTimeout,
    #[error("internal error")]
    Internal,
}

impl GatewayError {
    pub fn status(self) -> u16 {
        match self {
            GatewayError::NoRoute => 404,
            GatewayError::Unauthorized
            | GatewayError::InvalidToken
            | GatewayError::InsufficientUserAuthentication => 401,
            GatewayError::Forbidden => 403,
            GatewayError::IdentityUnavailable | GatewayError::LimiterUnavailable => 503,
            GatewayError::TooManyRequests => 429,
            GatewayError::Saturated => 503,
            GatewayError::InjectedFault(status) => status,
            GatewayError::NoHealthyTarget => 503,
            GatewayError::UpstreamConnect | GatewayError::UpstreamFailed => 502,
            GatewayError::UpstreamTimeout => 504,
            GatewayError::BodyTooLarge => 413,
            GatewayError::HeadersTooLarge => 431,
            GatewayError::BadRequest
            | GatewayError::BadTarget(_)
            | GatewayError::UnderscoreInHeaderName => 400,
            GatewayError::UriTooLong => 414,
            GatewayError::NotImplemented => 501,
            GatewayError::VersionNotSupported => 505,
            GatewayError::MethodNotAllowed => 405,
            GatewayError::ClientTimeout => 408,
            GatewayError::Internal => 500,
        }
    }

    /// The error for a status the gateway produces, for errors that reach
    /// us as a bare pingora status.
    pub fn from_status(status: u16) -> Self {
        match status {
            404 => GatewayError::NoRoute,
            401 => GatewayError::Unauthorized,
            429 => GatewayError::TooManyRequests,
            403 => GatewayError::Forbidden,
            503 => GatewayError::NoHealthyTarget,
            504 => GatewayError::UpstreamTimeout,
            413 => GatewayError::BodyTooLarge,
            431 => GatewayError::HeadersTooLarge,
            408 => GatewayError::ClientTimeout,
            400 => GatewayError::BadRequest,
            414 => GatewayError::UriTooLong,
            405 => GatewayError::MethodNotAllowed,
            502 => GatewayError::UpstreamFailed,
            501 => GatewayError::NotImplemented,
            505 => GatewayError::VersionNotSupported,
            _ => GatewayError::Internal,
        }
    }

    /// The RFC 6750 error code of an authentication or authorisation
    /// failure (the same as in `WWW-Authenticate`).
    pub fn oauth_code(self) -> Option<&'static str> {
        match self {
            GatewayError::InvalidToken => Some("invalid_token"),
            GatewayError::Forbidden => Some("insufficient_scope"),
            GatewayError::InsufficientUserAuthentication => {
                Some("insufficient_user_authentication")
            }
            _ => None,
        }
    }

    /// `{"error":"...","status":N,"request_id":"..."}`, and `"code"` with
    /// the RFC 6750 error code on 401 and 403 for a bad credential.
    pub fn body(self, request_id: &str) -> Bytes {
        let mut body = serde_json::json!({
            "error": self.to_string(),
            "status": self.status(),
            "request_id": request_id,
        });
        if let Some(code) = self.oauth_code() {
            body["code"] = code.into();
        }
        Bytes::from(body.to_string())
    }

    pub fn response(self, request_id: &str) -> pingora::Result<(ResponseHeader, Bytes)> {
        let body = self.body(request_id);
        let mut header = ResponseHeader::build(self.status(), Some(4))?;
        header.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        header.insert_header(http::header::CONTENT_LENGTH, body.len())?;
        header.insert_header(http::header::CACHE_CONTROL, "no-store")?;
        header.insert_header(crate::headers::X_REQUEST_ID, request_id)?;
        Ok((header, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_carries_request_id() {
        let body = GatewayError::NoRoute.body("abc");
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["request_id"], "abc");
        assert_eq!(json["status"], 404);
        assert_eq!(GatewayError::UpstreamTimeout.status(), 504);
    }
}
