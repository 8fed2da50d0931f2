//! The admin API's roles and groups: which exist (given to directory
//! users), who has one, and giving or taking one from a user.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::{answer, not_found, unavailable};
use crate::directory::Label;
use crate::oauth::OAuthError;
use crate::{Shared, Sso};

fn plural(label: Label) -> &'static str {
    match label {
        Label::Role => "roles",
        Label::Group => "groups",
    }
}

async fn list(sso: Shared, headers: HeaderMap, label: Label) -> Response {
    answer(
        async {
            sso.admin(&headers).await?;
            let labels = sso.directory.labels(label).await.map_err(unavailable)?;
            let items: Vec<_> = labels
                .into_iter()
                .map(|(name, users)| json!({ "name": name, "users": users }))
                .collect();
            Ok(Json(json!({ plural(label): items })).into_response())
        }
        .await,
    )
}

async fn members(
    sso: Shared,
    headers: HeaderMap,
    label: Label,
    name: String,
    query: super::PageQuery,
) -> Response {
    answer(
        async {
            sso.admin(&headers).await?;
            let users = sso
                .directory
                .members(label, &name, query.after(), query.limit())
                .await
                .map_err(unavailable)?;
            let next = query.next(&users, String::as_str);
            Ok(Json(json!({ "users": users, "next": next })).into_response())
        }
        .await,
    )
}

async fn assign(
    sso: Shared,
    headers: HeaderMap,
    label: Label,
    username: String,
    name: String,
    given: bool,
) -> Response {
    answer(
        async {
            let admin = sso.admin(&headers).await?;
            sso.admin_assign(&admin.subject, label, &username, &name, given)
                .await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        .await,
    )
}

impl Sso {
    /// Gives (`true`) or takes a role or group of a directory user; taking
    /// one away ends the sessions whose tokens carry it.
    pub(crate) async fn admin_assign(
        self: &Arc<Self>,
        by: &str,
        label: Label,
        username: &str,
        name: &str,
        given: bool,
    ) -> Result<(), OAuthError> {
        self.directory_user(username).await?;
        if !self
            .directory
            .assign(label, username, name, given)
            .await
            .map_err(unavailable)?
        {
            return Err(not_found());
        }
        if !given {
            Arc::clone(self).end_all_sessions_of(username).await;
        }
        self.audit(
            json!({ "event": if given { "admin_label_given" } else { "admin_label_taken" },
            "by": by, "sub": username, plural(label): name }),
        );
        Ok(())
    }
}

/// Every role given to a directory user, with how many have it.
#[utoipa::path(get, path = "/admin/roles", tag = "admin",
    responses((status = 200, description = "`{roles: [{name, users}]}`", body = Object)),
    security(("bearer" = [])))]
pub async fn list_roles(State(sso): State<Shared>, headers: HeaderMap) -> Response {
    list(sso, headers, Label::Role).await
}

/// Every group of a directory user, with how many are in it.
#[utoipa::path(get, path = "/admin/groups", tag = "admin",
    responses((status = 200, description = "`{groups: [{name, users}]}`", body = Object)),
    security(("bearer" = [])))]
pub async fn list_groups(State(sso): State<Shared>, headers: HeaderMap) -> Response {
    list(sso, headers, Label::Group).await
}

/// The users with a role, a page at a time.
#[utoipa::path(get, path = "/admin/roles/{role}/users", tag = "admin", params(
        ("role" = String, Path, description = "The role"), super::PageQuery),
    responses((status = 200, description = "`{users, next}`", body = Object)),
    security(("bearer" = [])))]
pub async fn role_members(
    State(sso): State<Shared>,
    headers: HeaderMap,
    Path(role): Path<String>,
    Query(query): Query<super::PageQuery>,
) -> Response {
    members(sso, headers, Label::Role, role, query).await
}

/// The users in a group, a page at a time.
#[utoipa::path(get, path = "/admin/groups/{group}/users", tag = "admin", params(
        ("group" = String, Path, description = "The group"), super::PageQuery),
    responses((status = 200, description = "`{users, next}`", body = Object)),
    security(("bearer" = [])))]
pub async fn group_members(
    State(sso): State<Shared>,
    headers: HeaderMap,
    Path(group): Path<String>,
    Query(query): Query<super::PageQuery>,
) -> Response {
    members(sso, headers, Label::Group, group, query).await
}

/// Gives a user a role (idempotent).
#[utoipa::path(put, path = "/admin/users/{username}/roles/{role}", tag = "admin", params(
        ("username" = String, Path, description = "The user's name"),
        ("role" = String, Path, description = "The role")),
    responses((status = 204, description = "Given"),
        (status = 404, description = "No such user", body = crate::api_doc::OAuthErrorBody),
        (status = 409, description = "A user of the users file", body = crate::api_doc::OAuthErrorBody)),
    security(("bearer" = [])))]
pub async fn give_role(
    State(sso): State<Shared>,
    headers: HeaderMap,
    Path((username, role)): Path<(String, String)>,
) -> Response {
    assign(sso, headers, Label::Role, username, role, true).await
}

/// Takes a role from a user; their sessions end (their tokens carry it).
#[utoipa::path(delete, path = "/admin/users/{username}/roles/{role}", tag = "admin", params(
        ("username" = String, Path, description = "The user's name"),
        ("role" = String, Path, description = "The role")),
    responses((status = 204, description = "Taken"),
        (status = 404, description = "No such user", body = crate::api_doc::OAuthErrorBody)),
    security(("bearer" = [])))]
pub async fn take_role(
    State(sso): State<Shared>,
    headers: HeaderMap,
    Path((username, role)): Path<(String, String)>,
) -> Response {
    assign(sso, headers, Label::Role, username, role, false).await
}

/// Puts a user in a group (idempotent).
#[utoipa::path(put, path = "/admin/users/{username}/groups/{group}", tag = "admin", params(
        ("username" = String, Path, description = "The user's name"),
        ("group" = String, Path, description = "The group")),
    responses((status = 204, description = "Given"),
        (status = 404, description = "No such user", body = crate::api_doc::OAuthErrorBody)),
    security(("bearer" = [])))]
pub async fn give_group(
    State(sso): State<Shared>,
    headers: HeaderMap,
    Path((username, group)): Path<(String, String)>,
) -> Response {
    assign(sso, headers, Label::Group, username, group, true).await
}

/// Takes a user out of a group; their sessions end.
#[utoipa::path(delete, path = "/admin/users/{username}/groups/{group}", tag = "admin", params(
        ("username" = String, Path, description = "The user's name"),
        ("group" = String, Path, description = "The group")),
    responses((status = 204, description = "Taken"),
        (status = 404, description = "No such user", body = crate::api_doc::OAuthErrorBody)),
    security(("bearer" = [])))]
pub async fn take_group(
    State(sso): State<Shared>,
    headers: HeaderMap,
    Path((username, group)): Path<(String, String)>,
) -> Response {
    assign(sso, headers, Label::Group, username, group, false).await
}
