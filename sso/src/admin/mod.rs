//! The admin API (`{issuer}/admin/…`), for operators and their scripts.
//!
//! Callers present an access token issued by this SSO (a user's, or an
//! admin client's from client credentials) whose roles include the admin
//! role (`admin.role`); it must be active (not expired, not revoked).
//! Every call is audited with who made it.
//!
//! Users of the users file are seed entries (infrastructure as code): shown,
//! never changed here (409). Disabling, deleting or setting the password of
//! a user ends every session they have, with back-channel logout, and their
//! refresh tokens stop working.
//!
//! - `users`: the directory's users; - `labels`: their roles and groups;
//!   - `clients`: clients registered at run time; - `audit`: the audit trail. Here: who may call, the answers' shape, ending sessions.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::oauth::OAuthError;
use crate::{no_store, Shared, Sso};

mod audit;
mod clients;
mod labels;
mod users;

pub use audit::*;
pub use clients::*;
pub(crate) use clients::{check_client, new_client_secret};
pub use labels::*;
pub use users::*;

/// Where a page of a list starts and how long it is (keyset paging).
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// The last key (name or id) of the previous page.
    after: Option<String>,
    /// Items per page (1 to 500). Defaults to 100.
    limit: Option<u32>,
}

impl PageQuery {
    pub(super) fn after(&self) -> Option<&str> {
        self.after.as_deref()
    }

    pub(super) fn limit(&self) -> u32 {
        self.limit
            .unwrap_or(100)
            .clamp(1, crate::directory::MAX_PAGE)
    }

    /// The `after` of the next page: the last item's key when the page is
    /// full (there may be more), else none.
    pub(super) fn next<T>(&self, items: &[T], key: impl Fn(&T) -> &str) -> Option<String> {
        (items.len() == self.limit() as usize)
            .then(|| items.last().map(|item| key(item).to_owned()))
            .flatten()
    }
}

pub(crate) fn not_found() -> OAuthError {
    OAuthError::new(StatusCode::NOT_FOUND, "not_found", "no such user")
}

pub(super) fn read_only() -> OAuthError {
    OAuthError::new(
        StatusCode::CONFLICT,
        "read_only",
        "the user is defined in the users file; change it there",
    )
}

pub(crate) fn unavailable(e: impl std::fmt::Display) -> OAuthError {
    log::error!("{e}");
    OAuthError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        "the directory is unavailable",
    )
}

/// A JSON body the handler could not read: 400 with the reason.
pub(super) fn bad_body(e: axum::extract::rejection::JsonRejection) -> OAuthError {
    OAuthError::invalid_request(e.body_text())
}

/// Who is calling: the subject of an active admin token.
pub(super) struct Admin {
    pub(super) subject: String,
}

impl Sso {
    pub(super) async fn admin(&self, headers: &HeaderMap) -> Result<Admin, OAuthError> {
        let unauthorized = || {
            OAuthError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "an active access token of this SSO is required",
            )
        };
        let token = crate::introspect::bearer(headers).ok_or_else(unauthorized)?;
        let claims = self
            .active_access_token(token)
            .await
            .ok_or_else(unauthorized)?;
        let has_role = claims["roles"]
            .as_array()
            .is_some_and(|roles| roles.iter().any(|r| r == self.config.admin.role.as_str()));
        let subject = claims["sub"].as_str().unwrap_or_default().to_owned();
        if !has_role {
            self.audit(json!({ "event": "admin_refused", "by": subject }));
            return Err(OAuthError::new(
                StatusCode::FORBIDDEN,
                "insufficient_scope",
                "the admin role is required",
            ));
        }
        Ok(Admin { subject })
    }
}

pub(super) fn answer(result: Result<Response, OAuthError>) -> Response {
    match result {
        Ok(response) => no_store(response),
        Err(e) => e.into_response(),
    }
}

/// Ends every SSO session of a user: the sessions' refresh tokens stop
/// working and every client with a back-channel logout URI is told, so
/// the user is signed out of the gateway too.
#[utoipa::path(delete, path = "/admin/users/{username}/sessions", tag = "admin",
    params(("username" = String, Path, description = "The user's name (`sub`)")),
    responses(
        (status = 200, description = "How many sessions ended", body = Object),
        (status = 401, description = "No active token", body = crate::api_doc::OAuthErrorBody),
        (status = 403, description = "Not an admin", body = crate::api_doc::OAuthErrorBody)),
    security(("bearer" = [])))]
pub async fn end_user_sessions(
    State(sso): State<Shared>,
    headers: HeaderMap,
    Path(username): Path<String>,
) -> Response {
    let admin = match sso.admin(&headers).await {
        Ok(admin) => admin,
        Err(e) => return e.into_response(),
    };
    let ended = sso.admin_end_sessions(&admin.subject, &username).await;
    no_store(Json(json!({ "ended": ended })).into_response())
}

/// A user's live SSO sessions, newest last: `sid` (as in ID and logout
/// tokens) and when each began (Unix seconds).
#[utoipa::path(get, path = "/admin/users/{username}/sessions", tag = "admin",
    params(("username" = String, Path, description = "The user's name (`sub`)")),
    responses(
        (status = 200, description = "`{sessions: [{sid, created}]}`", body = Object),
        (status = 401, description = "No active token", body = crate::api_doc::OAuthErrorBody),
        (status = 403, description = "Not an admin", body = crate::api_doc::OAuthErrorBody)),
    security(("bearer" = [])))]
pub async fn list_user_sessions(
    State(sso): State<Shared>,
    headers: HeaderMap,
    Path(username): Path<String>,
) -> Response {
    answer(
        async {
            let admin = sso.admin(&headers).await?;
            let sessions: Vec<_> = sso
                .sessions_of(&username)
                .await
                .into_iter()
                .map(|(sid, created)| json!({ "sid": sid, "created": created }))
                .collect();
            sso.audit(
                json!({ "event": "admin_sessions_listed", "by": admin.subject, "sub": username }),
            );
            Ok(Json(json!({ "sessions": sessions })).into_response())
        }
        .await,
    )
}

/// Ends one session of a user (by `sid`), with back-channel logout.
#[utoipa::path(delete, path = "/admin/users/{username}/sessions/{sid}", tag = "admin",
    params(("username" = String, Path, description = "The user's name (`sub`)"),
        ("sid" = String, Path, description = "The session (`sid`)")),
    responses(
        (status = 204, description = "Ended"),
        (status = 404, description = "No such live session", body = crate::api_doc::OAuthErrorBody),
        (status = 401, description = "No active token", body = crate::api_doc::OAuthErrorBody),
        (status = 403, description = "Not an admin", body = crate::api_doc::OAuthErrorBody)),
    security(("bearer" = [])))]
pub async fn end_user_session(
    State(sso): State<Shared>,
    headers: HeaderMap,
    Path((username, sid)): Path<(String, String)>,
) -> Response {
    answer(
        async {
            let admin = sso.admin(&headers).await?;
            if !sso.end_one_session(&username, &sid).await {
                return Err(OAuthError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "no such live session",
                ));
            }
            sso.audit(
                json!({ "event": "admin_session_ended", "by": admin.subject, "sub": username,
                "sid": sid }),
            );
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        .await,
    )
}

impl Sso {
    /// Ends every session of `username` (with back-channel logout); how
    /// many were live.
    pub(crate) async fn admin_end_sessions(self: &Arc<Self>, by: &str, username: &str) -> usize {
        let ended = Arc::clone(self).end_all_sessions_of(username).await;
        self.audit(
            json!({ "event": "admin_sessions_ended", "by": by, "sub": username,
            "ended": ended }),
        );
        ended
    }
}
