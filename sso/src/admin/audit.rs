//! `GET {issuer}/admin/audit`: the audit trail, newest first.

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use super::{answer, unavailable};
use crate::directory::AuditQuery;
use crate::Shared;

/// Which events.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditFilter {
    /// Events older than this id (the previous page's `next`).
    before: Option<String>,
    /// Only this event (`login`, `login_failed`, `admin_user_deleted`, …).
    event: Option<String>,
    /// Only events about this user.
    sub: Option<String>,
    /// Events per page (1 to 500). Defaults to 100.
    limit: Option<u32>,
}

/// One audit event.
#[derive(Serialize, ToSchema)]
pub struct AuditView {
    id: String,
    /// Unix seconds.
    time: i64,
    event: String,
    sub: Option<String>,
    /// The admin who did it, when not the user.
    by: Option<String>,
    client_id: Option<String>,
    /// The event as logged.
    #[schema(value_type = Object)]
    details: serde_json::Value,
}

/// A page of events.
#[derive(Serialize, ToSchema)]
pub struct AuditPage {
    events: Vec<AuditView>,
    /// `before` of the next (older) page; absent on the last.
    next: Option<String>,
}

/// The audit trail: sign-ins and their failures, tokens, consents, every
/// admin call; newest first.
#[utoipa::path(get, path = "/admin/audit", tag = "admin", params(AuditFilter),
    responses((status = 200, description = "A page of events", body = AuditPage),
        (status = 401, description = "No active token", body = crate::api_doc::OAuthErrorBody),
        (status = 403, description = "Not an admin", body = crate::api_doc::OAuthErrorBody)),
    security(("bearer" = [])))]
pub async fn list_audit(
    State(sso): State<Shared>,
    headers: HeaderMap,
    Query(filter): Query<AuditFilter>,
) -> Response {
    answer(
        async {
            let admin = sso.admin(&headers).await?;
            let limit = filter
                .limit
                .unwrap_or(100)
                .clamp(1, crate::directory::MAX_PAGE);
            let events = sso
                .directory
                .audit_events(AuditQuery {
                    before: filter.before.as_deref(),
                    event: filter.event.as_deref(),
                    subject: filter.sub.as_deref(),
                    limit,
                })
                .await
                .map_err(unavailable)?;
            let next = (events.len() == limit as usize)
                .then(|| events.last().map(|e| e.id.clone()))
                .flatten();
            sso.audit(json!({ "event": "admin_audit_read", "by": admin.subject }));
            let events = events
                .into_iter()
                .map(|e| AuditView {
                    id: e.id,
                    time: e.at,
                    event: e.event,
                    sub: e.subject,
                    by: e.actor,
                    client_id: e.client_id,
                    details: e.details,
                })
                .collect();
            Ok(Json(AuditPage { events, next }).into_response())
        }
        .await,
    )
}
