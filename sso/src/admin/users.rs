//! The admin API's users: list, create, get, change, password, delete.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use portcullis_config::sso::User;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use super::{answer, bad_body, not_found, read_only, unavailable};
use crate::directory::{UserChange, UserRecord};
use crate::oauth::OAuthError;
use crate::users::RegisterRefused;
use crate::{Shared, Sso};

/// A user as the admin API shows it (never the password hash).
#[derive(Serialize, ToSchema)]
pub struct UserView {
    username: String,
    email: Option<String>,
    name: Option<String>,
    roles: Vec<String>,
    groups: Vec<String>,
    disabled: bool,
    /// A new password is due at the next sign-in (directory users).
    password_change_required: bool,
    /// `directory` (created at run time) or `file` (a seed entry, read-only).
    source: &'static str,
    /// Unix seconds (directory users).
    created_at: Option<i64>,
    updated_at: Option<i64>,
}

impl UserView {
    fn of(user: &User, record: Option<&UserRecord>) -> UserView {
        UserView {
            username: user.username.clone(),
            email: user.email.clone(),
            name: user.name.clone(),
            roles: user.roles.clone(),
            groups: user.groups.clone(),
            disabled: user.disabled,
            password_change_required: record.is_some_and(|r| r.password_change_required),
            source: if record.is_some() {
                "directory"
            } else {
                "file"
            },
            created_at: record.map(|r| r.created_at),
            updated_at: record.map(|r| r.updated_at),
        }
    }
}

/// A page of users.
#[derive(Serialize, ToSchema)]
pub struct UserPage {
    users: Vec<UserView>,
    /// Pass as `after` for the next page; absent on the last.
    next: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// Part of the user name or email (case-insensitive).
    search: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub(crate) username: String,
    pub(crate) password: String,
    pub(crate) email: Option<String>,
    pub(crate) name: Option<String>,
    #[serde(default)]
    pub(crate) roles: Vec<String>,
    #[serde(default)]
    pub(crate) groups: Vec<String>,
    #[serde(default)]
    pub(crate) disabled: bool,
}

/// Present and `null` clears a field; absent leaves it.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserPatch {
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    email: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    name: Option<Option<String>>,
    roles: Option<Vec<String>>,
    groups: Option<Vec<String>>,
    disabled: Option<bool>,
    /// The user must choose a new password at the next sign-in.
    password_change_required: Option<bool>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPassword {
    password: String,
    /// A temporary password: the user must choose a new one at the next
    /// sign-in. Defaults to false.
    #[serde(default)]
    temporary: bool,
}

impl Sso {
    async fn hash_password(&self, password: String) -> Result<String, OAuthError> {
        let min = self.config.users.min_password_length;
        if password.chars().count() < min {
            return Err(OAuthError::invalid_request(format!(
                "the password needs at least {min} characters"
            )));
        }
        match tokio::task::spawn_blocking(move || crate::clients::hash_secret(&password)).await {
            Ok(Ok(hash)) => Ok(hash),
            _ => Err(OAuthError::server_error("hashing failed")),
        }
    }

    /// A directory user (`Ok(None)`: none; a file user: 409).
    pub(super) async fn directory_user(&self, username: &str) -> Result<UserRecord, OAuthError> {
        if self.users.is_seed(username) {
            return Err(read_only());
        }
        self.directory
            .user_record(username)
            .await
            .map_err(unavailable)?
            .ok_or_else(not_found)
    }

    /// Creates a directory user (the admin API and the console).
    pub(crate) async fn admin_create_user(
        &self,
        by: &str,
        new: NewUser,
    ) -> Result<UserRecord, OAuthError> {
        let user = User {
            username: new.username.trim().to_owned(),
            password_hash: self.hash_password(new.password).await?,
            email: new.email,
            name: new.name,
            roles: new.roles,
            groups: new.groups,
            disabled: new.disabled,
        };
        match self
            .users
            .register(user.clone())
            .await
            .map_err(unavailable)?
        {
            Ok(()) => {}
            Err(RegisterRefused::Taken) => {
                return Err(OAuthError::new(
                    StatusCode::CONFLICT,
                    "conflict",
                    "that user name is taken",
                ))
            }
            Err(RegisterRefused::Invalid(why)) => return Err(OAuthError::invalid_request(why)),
        }
        self.audit(json!({ "event": "admin_user_created", "by": by, "sub": user.username }));
        self.directory_user(&user.username).await
    }

    /// Changes a directory user; disabling ends their sessions.
    pub(crate) async fn admin_change_user(
        self: &Arc<Self>,
        by: &str,
        username: &str,
        change: UserChange,
    ) -> Result<UserRecord, OAuthError> {
        let disables = change.disabled == Some(true);
        let record = self.changed(username, change, disables).await?;
        self.audit(
            json!({ "event": "admin_user_changed", "by": by, "sub": username,
            "disabled": record.user.disabled }),
        );
        Ok(record)
    }

    /// Sets a directory user's password (`temporary`: to be changed at the
    /// next sign-in); their sessions end.
    pub(crate) async fn admin_set_password(
        self: &Arc<Self>,
        by: &str,
        username: &str,
        password: String,
        temporary: bool,
    ) -> Result<(), OAuthError> {
        self.directory_user(username).await?;
        let change = UserChange {
            password_hash: Some(self.hash_password(password).await?),
            password_change_required: Some(temporary),
            ..UserChange::default()
        };
        self.changed(username, change, true).await?;
        self.audit(
            json!({ "event": "admin_password_set", "by": by, "sub": username,
            "temporary": temporary }),
        );
        Ok(())
    }

    /// Deletes a directory user (and their roles, groups, consents and
    /// second factors); their sessions end.
    pub(crate) async fn admin_delete_user(
        self: &Arc<Self>,
        by: &str,
        username: &str,
    ) -> Result<(), OAuthError> {
        self.directory_user(username).await?;
        if !self
            .directory
            .delete_user(username)
            .await
            .map_err(unavailable)?
        {
            return Err(not_found());
        }
        Arc::clone(self).end_all_sessions_of(username).await;
        self.audit(json!({ "event": "admin_user_deleted", "by": by, "sub": username }));
        Ok(())
    }

    async fn changed(
        self: &Arc<Self>,
        username: &str,
        change: UserChange,
        ends_sessions: bool,
    ) -> Result<UserRecord, OAuthError> {
        self.directory_user(username).await?;
        if !self
            .directory
            .change_user(username, change)
            .await
            .map_err(unavailable)?
        {
            return Err(not_found());
        }
        if ends_sessions {
            Arc::clone(self).end_all_sessions_of(username).await;
        }
        self.directory_user(username).await
    }
}

/// Users created at run time, by name, a page at a time.
#[utoipa::path(get, path = "/admin/users", tag = "admin", params(SearchQuery, super::PageQuery),
    responses((status = 200, description = "A page of users", body = UserPage),
        (status = 401, description = "No active token", body = crate::api_doc::OAuthErrorBody),
        (status = 403, description = "Not an admin", body = crate::api_doc::OAuthErrorBody)),
    security(("bearer" = [])))]
pub async fn list_users(
    State(sso): State<Shared>,
    headers: HeaderMap,
    Query(search): Query<SearchQuery>,
    Query(page): Query<super::PageQuery>,
) -> Response {
    answer(
        async {
            let admin = sso.admin(&headers).await?;
            let records = sso
                .directory
                .users(search.search.as_deref(), page.after(), page.limit())
                .await
                .map_err(unavailable)?;
            let next = page.next(&records, |r| &r.user.username);
            sso.audit(json!({ "event": "admin_users_listed", "by": admin.subject }));
            let users = records
                .iter()
                .map(|r| UserView::of(&r.user, Some(r)))
                .collect();
            Ok(Json(UserPage { users, next }).into_response())
        }
        .await,
    )
}

/// Creates a user (the password is hashed with argon2id; never shown).
#[utoipa::path(post, path = "/admin/users", tag = "admin", request_body = NewUser,
    responses((status = 201, description = "Created", body = UserView),
        (status = 400, description = "Invalid name, password or body", body = crate::api_doc::OAuthErrorBody),
        (status = 409, description = "The name is taken", body = crate::api_doc::OAuthErrorBody)),
    security(("bearer" = [])))]
pub async fn create_user(
    State(sso): State<Shared>,
    headers: HeaderMap,
    body: Result<Json<NewUser>, axum::extract::rejection::JsonRejection>,
) -> Response {
    answer(
        async {
            let admin = sso.admin(&headers).await?;
            let Json(new) = body.map_err(bad_body)?;
            let record = sso.admin_create_user(&admin.subject, new).await?;
            Ok((
                StatusCode::CREATED,
                Json(UserView::of(&record.user, Some(&record))),
            )
                .into_response())
        }
        .await,
    )
}

/// A user (of the directory or of the users file).
#[utoipa::path(get, path = "/admin/users/{username}", tag = "admin",
    params(("username" = String, Path, description = "The user's name")),
    responses((status = 200, description = "The user", body = UserView),
        (status = 404, description = "No such user", body = crate::api_doc::OAuthErrorBody)),
    security(("bearer" = [])))]
pub async fn get_user(
    State(sso): State<Shared>,
    headers: HeaderMap,
    Path(username): Path<String>,
) -> Response {
    answer(
        async {
            sso.admin(&headers).await?;
            if sso.users.is_seed(&username) {
                let user = sso.users.get(&username).await.ok_or_else(not_found)?;
                return Ok(Json(UserView::of(&user, None)).into_response());
            }
            let record = sso.directory_user(&username).await?;
            Ok(Json(UserView::of(&record.user, Some(&record))).into_response())
        }
        .await,
    )
}

/// Changes a user's email, name, roles, groups or `disabled`; disabling
/// ends their sessions.
#[utoipa::path(patch, path = "/admin/users/{username}", tag = "admin", request_body = UserPatch,
    params(("username" = String, Path, description = "The user's name")),
    responses((status = 200, description = "The user as changed", body = UserView),
        (status = 404, description = "No such user", body = crate::api_doc::OAuthErrorBody),
        (status = 409, description = "A user of the users file", body = crate::api_doc::OAuthErrorBody)),
    security(("bearer" = [])))]
pub async fn update_user(
    State(sso): State<Shared>,
    headers: HeaderMap,
    Path(username): Path<String>,
    body: Result<Json<UserPatch>, axum::extract::rejection::JsonRejection>,
) -> Response {
    answer(
        async {
            let admin = sso.admin(&headers).await?;
            let Json(patch) = body.map_err(bad_body)?;
            let change = UserChange {
                email: patch.email,
                name: patch.name,
                roles: patch.roles,
                groups: patch.groups,
                disabled: patch.disabled,
                password_hash: None,
                password_change_required: patch.password_change_required,
            };
            let record = sso
                .admin_change_user(&admin.subject, &username, change)
                .await?;
            Ok(Json(UserView::of(&record.user, Some(&record))).into_response())
        }
        .await,
    )
}

/// Sets a user's password; their sessions end.
#[utoipa::path(put, path = "/admin/users/{username}/password", tag = "admin", request_body = NewPassword,
    params(("username" = String, Path, description = "The user's name")),
    responses((status = 204, description = "Set; the user's sessions ended"),
        (status = 400, description = "Too short", body = crate::api_doc::OAuthErrorBody),
        (status = 404, description = "No such user", body = crate::api_doc::OAuthErrorBody)),
    security(("bearer" = [])))]
pub async fn set_password(
    State(sso): State<Shared>,
    headers: HeaderMap,
    Path(username): Path<String>,
    body: Result<Json<NewPassword>, axum::extract::rejection::JsonRejection>,
) -> Response {
    answer(
        async {
            let admin = sso.admin(&headers).await?;
            let Json(new) = body.map_err(bad_body)?;
            sso.admin_set_password(&admin.subject, &username, new.password, new.temporary)
                .await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        .await,
    )
}

/// Deletes a user, their roles, groups and consents; their sessions end.
#[utoipa::path(delete, path = "/admin/users/{username}", tag = "admin",
    params(("username" = String, Path, description = "The user's name")),
    responses((status = 204, description = "Deleted"),
        (status = 404, description = "No such user", body = crate::api_doc::OAuthErrorBody),
        (status = 409, description = "A user of the users file", body = crate::api_doc::OAuthErrorBody)),
    security(("bearer" = [])))]
pub async fn delete_user(
    State(sso): State<Shared>,
    headers: HeaderMap,
    Path(username): Path<String>,
) -> Response {
    answer(
        async {
            let admin = sso.admin(&headers).await?;
            sso.admin_delete_user(&admin.subject, &username).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        .await,
    )
}
