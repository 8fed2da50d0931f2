//! The admin API's clients registered at run time: list, create (with a
//! generated secret), get, change, rotate the secret, delete.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::{answer, bad_body, unavailable};
use crate::oauth::OAuthError;
use crate::{Shared, Sso};

/// A client as the admin API shows it: its definition (the config file's
/// shape) without the secret's hash, and where it comes from.
fn client_view(client: &portcullis_config::sso::Client, source: &str) -> serde_json::Value {
    let mut view = serde_json::to_value(client).unwrap_or_default();
    if let Some(map) = view.as_object_mut() {
        map.remove("secret_hash");
        map.insert("source".into(), source.into());
    }
    view
}

/// Fields an update may not touch: the id names the client, the secret is
/// rotated by its own call, the type decides how it authenticates.
const FIXED_CLIENT_FIELDS: [&str; 3] = ["client_id", "secret_hash", "type"];

impl Sso {
    /// A client definition the SSO can serve, or why not (400).
    fn check_client(&self, client: &portcullis_config::sso::Client) -> Result<(), OAuthError> {
        check_client(client, self.keys.algorithms()).map_err(OAuthError::invalid_request)
    }

    /// A client registered at run time (a config client: 409).
    async fn runtime_client(
        &self,
        client_id: &str,
    ) -> Result<portcullis_config::sso::Client, OAuthError> {
        if self.clients.get(client_id).is_some() {
            return Err(OAuthError::new(
                StatusCode::CONFLICT,
                "read_only",
                "the client is defined in the config file; change it there",
            ));
        }
        self.directory
            .client(client_id)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| OAuthError::new(StatusCode::NOT_FOUND, "not_found", "no such client"))
    }

    /// A new secret, and its hash to store.
    async fn new_client_secret(&self) -> Result<(String, String), OAuthError> {
        new_client_secret()
            .await
            .ok_or_else(|| OAuthError::server_error("hashing failed"))
    }
}

/// A client definition the SSO can serve (signing with one of
/// `algorithms`, those it keeps keys for), or why not.
pub(crate) fn check_client(
    client: &portcullis_config::sso::Client,
    algorithms: &[portcullis_config::sso::SigningAlgorithm],
) -> Result<(), String> {
    let id_ok = (3..=64).contains(&client.client_id.len())
        && client
            .client_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !id_ok {
        return Err("client ids are 3 to 64 letters, digits, dots, dashes or underscores".into());
    }
    if let Some(problem) = portcullis_config::sso::client_problems(client).first() {
        return Err(format!("{}: {}", problem.field, problem.message));
    }
    if !algorithms.contains(&crate::grants::id_token_algorithm(client)) {
        return Err("id_token_signed_response_alg: this SSO has no key for that algorithm".into());
    }
    Ok(())
}

/// A new client secret and its argon2id hash (to store).
pub(crate) async fn new_client_secret() -> Option<(String, String)> {
    let secret = crate::oauth::random_id(32);
    let copy = secret.clone();
    let hash = tokio::task::spawn_blocking(move || crate::clients::hash_secret(&copy))
        .await
        .ok()?
        .ok()?;
    Some((secret, hash))
}

/// Registers a client (the config file's fields, as JSON). A confidential
/// client's secret is generated and shown in this answer only.
#[utoipa::path(post, path = "/admin/clients", tag = "admin", request_body = Object,
    responses((status = 201, description = "Created: the client and, once, its secret", body = Object),
        (status = 400, description = "An invalid definition", body = crate::api_doc::OAuthErrorBody),
        (status = 409, description = "The id is taken", body = crate::api_doc::OAuthErrorBody)),
    security(("bearer" = [])))]
pub async fn create_client(
    State(sso): State<Shared>,
    headers: HeaderMap,
    body: Result<Json<portcullis_config::sso::Client>, axum::extract::rejection::JsonRejection>,
) -> Response {
    answer(
        async {
            let admin = sso.admin(&headers).await?;
            let Json(client) = body.map_err(bad_body)?;
            let (client, secret) = sso.admin_create_client(&admin.subject, client).await?;
            let mut view = client_view(&client, "directory");
            if let Some(secret) = secret {
                view["client_secret"] = secret.into();
            }
            Ok((StatusCode::CREATED, Json(view)).into_response())
        }
        .await,
    )
}

impl Sso {
    /// Registers a client in the directory; a confidential client without
    /// keys gets a generated secret, returned here only.
    pub(crate) async fn admin_create_client(
        &self,
        by: &str,
        mut client: portcullis_config::sso::Client,
    ) -> Result<(portcullis_config::sso::Client, Option<String>), OAuthError> {
        if client.secret_hash.is_some() {
            return Err(OAuthError::invalid_request(
                "secret_hash: the SSO generates the secret",
            ));
        }
        let secret = match client.client_type {
            portcullis_config::sso::ClientType::Confidential if client.jwks.is_empty() => {
                let (secret, hash) = self.new_client_secret().await?;
                client.secret_hash = Some(hash);
                Some(secret)
            }
            _ => None,
        };
        self.check_client(&client)?;
        let taken = OAuthError::new(StatusCode::CONFLICT, "conflict", "that client id is taken");
        if self.clients.get(&client.client_id).is_some() {
            return Err(taken);
        }
        if !self
            .directory
            .create_client(&client)
            .await
            .map_err(unavailable)?
        {
            return Err(taken);
        }
        self.audit(json!({ "event": "admin_client_created", "by": by,
            "client_id": client.client_id }));
        Ok((client, secret))
    }

    /// A new secret for a run-time confidential client; the old one stops
    /// working at once.
    pub(crate) async fn admin_rotate_client_secret(
        &self,
        by: &str,
        client_id: &str,
    ) -> Result<String, OAuthError> {
        let mut client = self.runtime_client(client_id).await?;
        if client.secret_hash.is_none() {
            return Err(OAuthError::invalid_request("the client has no secret"));
        }
        let (secret, hash) = self.new_client_secret().await?;
        client.secret_hash = Some(hash);
        self.directory
            .replace_client(&client)
            .await
            .map_err(unavailable)?;
        self.audit(json!({ "event": "admin_client_secret_rotated", "by": by,
            "client_id": client_id }));
        Ok(secret)
    }

    /// Deletes a run-time client and the consents given to it.
    pub(crate) async fn admin_delete_client(
        &self,
        by: &str,
        client_id: &str,
    ) -> Result<(), OAuthError> {
        self.runtime_client(client_id).await?;
        self.directory
            .delete_client(client_id)
            .await
            .map_err(unavailable)?;
        self.audit(json!({ "event": "admin_client_deleted", "by": by, "client_id": client_id }));
        Ok(())
    }
}

/// Clients registered at run time, by id, a page at a time.
#[utoipa::path(get, path = "/admin/clients", tag = "admin", params(super::PageQuery),
    responses((status = 200, description = "A page of clients", body = Object)),
    security(("bearer" = [])))]
pub async fn list_clients(
    State(sso): State<Shared>,
    headers: HeaderMap,
    Query(page): Query<super::PageQuery>,
) -> Response {
    answer(
        async {
            sso.admin(&headers).await?;
            let clients = sso
                .directory
                .clients(page.after(), page.limit())
                .await
                .map_err(unavailable)?;
            let next = page.next(&clients, |c| &c.client_id);
            let views: Vec<_> = clients
                .iter()
                .map(|c| client_view(c, "directory"))
                .collect();
            Ok(Json(json!({ "clients": views, "next": next })).into_response())
        }
        .await,
    )
}

/// A client (registered at run time or of the config file).
#[utoipa::path(get, path = "/admin/clients/{client_id}", tag = "admin",
    params(("client_id" = String, Path, description = "The client's id")),
    responses((status = 200, description = "The client", body = Object),
        (status = 404, description = "No such client", body = crate::api_doc::OAuthErrorBody)),
    security(("bearer" = [])))]
pub async fn get_client(
    State(sso): State<Shared>,
    headers: HeaderMap,
    Path(client_id): Path<String>,
) -> Response {
    answer(
        async {
            sso.admin(&headers).await?;
            if let Some(client) = sso.clients.get(&client_id) {
                return Ok(Json(client_view(&client, "file")).into_response());
            }
            let client = sso.runtime_client(&client_id).await?;
            Ok(Json(client_view(&client, "directory")).into_response())
        }
        .await,
    )
}

/// Changes a client's fields (a JSON merge patch of the definition: redirect
/// URIs, name, scopes, …; not its id, type or secret).
#[utoipa::path(patch, path = "/admin/clients/{client_id}", tag = "admin", request_body = Object,
    params(("client_id" = String, Path, description = "The client's id")),
    responses((status = 200, description = "The client as changed", body = Object),
        (status = 400, description = "An invalid change", body = crate::api_doc::OAuthErrorBody),
        (status = 404, description = "No such client", body = crate::api_doc::OAuthErrorBody),
        (status = 409, description = "A client of the config file", body = crate::api_doc::OAuthErrorBody)),
    security(("bearer" = [])))]
pub async fn update_client(
    State(sso): State<Shared>,
    headers: HeaderMap,
    Path(client_id): Path<String>,
    body: Result<
        Json<serde_json::Map<String, serde_json::Value>>,
        axum::extract::rejection::JsonRejection,
    >,
) -> Response {
    answer(
        async {
            let admin = sso.admin(&headers).await?;
            let Json(patch) = body.map_err(bad_body)?;
            if let Some(field) = FIXED_CLIENT_FIELDS.iter().find(|f| patch.contains_key(**f)) {
                return Err(OAuthError::invalid_request(format!(
                    "{field} cannot be changed here"
                )));
            }
            let client = sso.runtime_client(&client_id).await?;
            let mut definition = serde_json::to_value(&client).unwrap_or_default();
            if let Some(map) = definition.as_object_mut() {
                for (key, value) in patch {
                    if value.is_null() {
                        map.remove(&key);
                    } else {
                        map.insert(key, value);
                    }
                }
            }
            let changed: portcullis_config::sso::Client = serde_json::from_value(definition)
                .map_err(|e| OAuthError::invalid_request(e.to_string()))?;
            sso.check_client(&changed)?;
            if !sso
                .directory
                .replace_client(&changed)
                .await
                .map_err(unavailable)?
            {
                return Err(OAuthError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "no such client",
                ));
            }
            sso.audit(
                json!({ "event": "admin_client_changed", "by": admin.subject,
                "client_id": client_id }),
            );
            Ok(Json(client_view(&changed, "directory")).into_response())
        }
        .await,
    )
}

/// A new secret for a confidential client, shown in this answer only; the
/// old one stops working at once.
#[utoipa::path(post, path = "/admin/clients/{client_id}/secret", tag = "admin",
    params(("client_id" = String, Path, description = "The client's id")),
    responses((status = 200, description = "The new secret", body = Object),
        (status = 400, description = "Not a client with a secret", body = crate::api_doc::OAuthErrorBody),
        (status = 404, description = "No such client", body = crate::api_doc::OAuthErrorBody)),
    security(("bearer" = [])))]
pub async fn rotate_client_secret(
    State(sso): State<Shared>,
    headers: HeaderMap,
    Path(client_id): Path<String>,
) -> Response {
    answer(
        async {
            let admin = sso.admin(&headers).await?;
            let secret = sso
                .admin_rotate_client_secret(&admin.subject, &client_id)
                .await?;
            Ok(Json(json!({ "client_id": client_id, "client_secret": secret })).into_response())
        }
        .await,
    )
}

/// Deletes a client registered at run time (and the consents given to it).
#[utoipa::path(delete, path = "/admin/clients/{client_id}", tag = "admin",
    params(("client_id" = String, Path, description = "The client's id")),
    responses((status = 204, description = "Deleted"),
        (status = 404, description = "No such client", body = crate::api_doc::OAuthErrorBody),
        (status = 409, description = "A client of the config file", body = crate::api_doc::OAuthErrorBody)),
    security(("bearer" = [])))]
pub async fn delete_client(
    State(sso): State<Shared>,
    headers: HeaderMap,
    Path(client_id): Path<String>,
) -> Response {
    answer(
        async {
            let admin = sso.admin(&headers).await?;
            sso.admin_delete_client(&admin.subject, &client_id).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        .await,
    )
}
