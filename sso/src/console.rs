//! The admin console (`{issuer}/console`): server-rendered pages for users,
//! roles and groups, clients, sessions and the audit trail, for a signed-in
//! user with the admin role (`admin.role`). The same operations as the
//! admin API (`admin::*`: one implementation, one audit line each), as
//! forms that work without JavaScript; every POST carries a token derived
//! from the session's secret cookie. Without a session, a sign-in that
//! comes back here.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Form;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::admin::NewUser;
use crate::directory::{AuditQuery, Label, UserChange};
use crate::oauth::OAuthError;
use crate::{Shared, Sso};

/// Rows a console list shows at most.
const ROWS: u32 = 100;

/// The signed-in admin: name and the form token.
struct ConsoleAdmin {
    name: String,
    csrf: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct ConsoleQuery {
    search: Option<String>,
    after: Option<String>,
    sub: Option<String>,
    event: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ConsoleForm {
    /// Absent: refused like a wrong one (403), not a 422.
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    name: String,
    /// A checkbox: present when ticked.
    #[serde(default)]
    disabled: Option<String>,
    /// A checkbox: the password is to be changed at the next sign-in.
    #[serde(default)]
    temporary: Option<String>,
    /// A role or group name.
    #[serde(default)]
    label: String,
    #[serde(default)]
    client_id: String,
    #[serde(default)]
    client_type: String,
    /// One per line.
    #[serde(default)]
    redirect_uris: String,
}

/// What an action leaves for the page to say.
struct Said {
    text: String,
    is_error: bool,
}

impl Sso {
    /// The admin behind a console request, or the page to answer: a
    /// sign-in without a session, 403 without the admin role, a refusal
    /// when a posted form's token is not the session's.
    async fn console_admin(
        &self,
        headers: &HeaderMap,
        csrf: Option<&str>,
    ) -> Result<ConsoleAdmin, Response> {
        let Some((session, session_id)) = self.session_for_form(headers, "console", csrf).await
        else {
            return Err(match csrf {
                Some(_) => self.expired(),
                None => self.account_sign_in(true).await,
            });
        };
        let admin = self
            .users
            .get(&session.sub)
            .await
            .filter(|u| !u.disabled && u.roles.contains(&self.config.admin.role));
        if admin.is_none() {
            self.audit(json!({ "event": "admin_refused", "by": session.sub, "via": "console" }));
            return Err(self.message_page(
                StatusCode::FORBIDDEN,
                "Not an administrator",
                "The console needs the administrator role.",
            ));
        }
        Ok(ConsoleAdmin {
            name: session.sub,
            csrf: Self::session_form_token("console", &session_id),
        })
    }

    fn console_render(
        &self,
        admin: &ConsoleAdmin,
        view: &str,
        said: Option<Said>,
        data: Value,
    ) -> Response {
        let mut context = json!({
            "wide": true,
            "base": self.base_path,
            "csrf": admin.csrf,
            "admin": admin.name,
            "view": view,
            "said": said.as_ref().map(|s| json!({ "text": s.text, "is_error": s.is_error })),
        });
        if let (Value::Object(context), Value::Object(data)) = (&mut context, data) {
            context.extend(data);
        }
        let mut response = self.render("console.html", context);
        if said.is_some_and(|s| s.is_error) {
            *response.status_mut() = StatusCode::BAD_REQUEST;
        }
        response
    }

    async fn users_view(&self, query: &ConsoleQuery) -> Result<Value, OAuthError> {
        let records = self
            .directory
            .users(query.search.as_deref(), query.after.as_deref(), ROWS)
            .await
            .map_err(crate::admin::unavailable)?;
        let next = (records.len() == ROWS as usize)
            .then(|| records.last().map(|r| r.user.username.clone()))
            .flatten();
        let users: Vec<Value> = records
            .iter()
            .map(|r| {
                json!({ "username": r.user.username, "email": r.user.email,
                "name": r.user.name, "roles": r.user.roles, "disabled": r.user.disabled })
            })
            .collect();
        Ok(json!({ "users": users, "next": next, "search": query.search }))
    }

    async fn user_view(&self, username: &str) -> Result<Value, OAuthError> {
        let seed = self.users.is_seed(username);
        let user = self
            .users
            .get(username)
            .await
            .ok_or_else(crate::admin::not_found)?;
        let sessions: Vec<Value> = self
            .sessions_of(username)
            .await
            .into_iter()
            .map(|(sid, created)| json!({ "sid": sid, "created": created }))
            .collect();
        let totp = self.directory.totp(username).await.ok().flatten().is_some();
        let password_change_required = self
            .directory
            .user_record(username)
            .await
            .ok()
            .flatten()
            .is_some_and(|r| r.password_change_required);
        let passkeys = self
            .directory
            .passkeys(username)
            .await
            .unwrap_or_default()
            .len();
        Ok(json!({ "user": {
            "username": user.username, "email": user.email, "name": user.name,
            "roles": user.roles, "groups": user.groups, "disabled": user.disabled,
            "seed": seed, "totp": totp, "password_change_required": password_change_required, "passkeys": passkeys, "sessions": sessions,
        }}))
    }

    async fn labels_view(&self) -> Result<Value, OAuthError> {
        let mut views = Vec::new();
        for (label, title) in [(Label::Role, "Roles"), (Label::Group, "Groups")] {
            let mut rows = Vec::new();
            for (name, count) in self
                .directory
                .labels(label)
                .await
                .map_err(crate::admin::unavailable)?
            {
                let members = self
                    .directory
                    .members(label, &name, None, ROWS)
                    .await
                    .map_err(crate::admin::unavailable)?;
                rows.push(json!({ "name": name, "count": count, "members": members }));
            }
            views.push(json!({ "title": title, "rows": rows }));
        }
        Ok(json!({ "labels": views, "admin_role": self.config.admin.role }))
    }

    async fn clients_view(&self) -> Result<Value, OAuthError> {
        let runtime = self
            .directory
            .clients(None, crate::directory::MAX_PAGE)
            .await
            .map_err(crate::admin::unavailable)?;
        let row = |c: &portcullis_config::sso::Client, source: &str| {
            json!({ "client_id": c.client_id, "name": c.name, "type": c.client_type,
                "redirect_uris": c.redirect_uris, "has_secret": c.secret_hash.is_some(),
                "source": source })
        };
        let mut clients: Vec<Value> = self.config.clients.iter().map(|c| row(c, "file")).collect();
        clients.extend(runtime.iter().map(|c| row(c, "directory")));
        Ok(json!({ "clients": clients }))
    }

    async fn audit_view(&self, query: &ConsoleQuery) -> Result<Value, OAuthError> {
        let events = self
            .directory
            .audit_events(AuditQuery {
                before: query.after.as_deref(),
                event: query.event.as_deref().filter(|e| !e.is_empty()),
                subject: query.sub.as_deref().filter(|s| !s.is_empty()),
                limit: ROWS,
            })
            .await
            .map_err(crate::admin::unavailable)?;
        let next = (events.len() == ROWS as usize)
            .then(|| events.last().map(|e| e.id.clone()))
            .flatten();
        let rows: Vec<Value> = events
            .iter()
            .map(|e| {
                let mut details = e.details.clone();
                if let Some(map) = details.as_object_mut() {
                    for known in ["event", "sub", "by", "client_id", "time", "audit"] {
                        map.remove(known);
                    }
                }
                json!({ "time": e.at, "event": e.event, "sub": e.subject, "by": e.actor,
                    "client_id": e.client_id, "details": details.to_string() })
            })
            .collect();
        Ok(json!({ "events": rows, "next": next, "sub": query.sub, "event": query.event }))
    }

    /// A page of the console, with what an action said.
    async fn console_page(
        &self,
        admin: &ConsoleAdmin,
        view: &str,
        query: &ConsoleQuery,
        said: Option<Said>,
    ) -> Response {
        let data = match view {
            "users" => self.users_view(query).await,
            "roles" => self.labels_view().await,
            "clients" => self.clients_view().await,
            "audit" => self.audit_view(query).await,
            _ => return self.message_page(StatusCode::NOT_FOUND, "Not found", ""),
        };
        match data {
            Ok(data) => self.console_render(admin, view, said, data),
            Err(e) => self.console_render(
                admin,
                view,
                Some(Said {
                    text: e.description,
                    is_error: true,
                }),
                json!({}),
            ),
        }
    }
}

/// `GET {issuer}/console`: the users.
pub async fn home(
    State(sso): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<ConsoleQuery>,
) -> Response {
    match sso.console_admin(&headers, None).await {
        Ok(admin) => sso.console_page(&admin, "users", &query, None).await,
        Err(page) => page,
    }
}

/// `GET {issuer}/console/{view}`: `users`, `roles`, `clients`, `audit`.
pub async fn page(
    State(sso): State<Shared>,
    Path(view): Path<String>,
    headers: HeaderMap,
    Query(query): Query<ConsoleQuery>,
) -> Response {
    match sso.console_admin(&headers, None).await {
        Ok(admin) => sso.console_page(&admin, &view, &query, None).await,
        Err(page) => page,
    }
}

/// `GET {issuer}/console/users/{username}`.
pub async fn user(
    State(sso): State<Shared>,
    Path(username): Path<String>,
    headers: HeaderMap,
) -> Response {
    let admin = match sso.console_admin(&headers, None).await {
        Ok(admin) => admin,
        Err(page) => return page,
    };
    match sso.user_view(&username).await {
        Ok(data) => sso.console_render(&admin, "user", None, data),
        Err(e) => sso.message_page(e.status, "Not found", &e.description),
    }
}

fn optional(text: &str) -> Option<String> {
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// `POST {issuer}/console/do/{action}`: one of the admin operations; the
/// page it concerns comes back with what happened.
pub async fn act(
    State(sso): State<Shared>,
    Path(action): Path<String>,
    headers: HeaderMap,
    Form(form): Form<ConsoleForm>,
) -> Response {
    let admin = match sso.console_admin(&headers, Some(&form.csrf)).await {
        Ok(admin) => admin,
        Err(page) => return page,
    };
    let by = admin.name.as_str();
    let username = form.username.trim();
    // (the page to show afterwards, what happened)
    let (view, outcome): (&str, Result<String, OAuthError>) = match action.as_str() {
        "user-create" => {
            let new = NewUser {
                username: username.to_owned(),
                password: form.password.clone(),
                email: optional(&form.email),
                name: optional(&form.name),
                roles: Vec::new(),
                groups: Vec::new(),
                disabled: false,
            };
            let done = sso.admin_create_user(by, new).await;
            ("user", done.map(|_| "The user is created.".to_owned()))
        }
        "user-update" => {
            let change = UserChange {
                email: Some(optional(&form.email)),
                name: Some(optional(&form.name)),
                disabled: Some(form.disabled.is_some()),
                ..UserChange::default()
            };
            let done = sso.admin_change_user(by, username, change).await;
            ("user", done.map(|_| "Saved.".to_owned()))
        }
        "user-password" => {
            let temporary = form.temporary.is_some();
            let done = sso
                .admin_set_password(by, username, form.password.clone(), temporary)
                .await;
            (
                "user",
                done.map(|()| "The password is set; the user's sessions have ended.".to_owned()),
            )
        }
        "user-sessions-end" => {
            let ended = sso.admin_end_sessions(by, username).await;
            ("user", Ok(format!("{ended} session(s) ended.")))
        }
        "user-delete" => {
            let done = sso.admin_delete_user(by, username).await;
            ("users", done.map(|()| format!("{username} is deleted.")))
        }
        "role-give" | "role-take" | "group-give" | "group-take" => {
            let label = if action.starts_with("role") {
                Label::Role
            } else {
                Label::Group
            };
            let given = action.ends_with("give");
            let name = form.label.trim();
            let done = if name.is_empty() {
                Err(OAuthError::invalid_request("a name is needed"))
            } else {
                sso.admin_assign(by, label, username, name, given).await
            };
            ("user", done.map(|()| "Saved.".to_owned()))
        }
        "client-create" => {
            let definition = json!({
                "client_id": form.client_id.trim(),
                "name": optional(&form.name),
                "type": form.client_type,
                "redirect_uris": form.redirect_uris.lines().map(str::trim)
                    .filter(|l| !l.is_empty()).collect::<Vec<_>>(),
            });
            let done = match serde_json::from_value(definition) {
                Ok(client) => sso.admin_create_client(by, client).await,
                Err(e) => Err(OAuthError::invalid_request(e.to_string())),
            };
            (
                "clients",
                done.map(|(client, secret)| match secret {
                    Some(secret) => format!(
                        "{} is registered. Its secret, shown only now: {secret}",
                        client.client_id
                    ),
                    None => format!("{} is registered.", client.client_id),
                }),
            )
        }
        "client-rotate" => {
            let done = sso
                .admin_rotate_client_secret(by, form.client_id.trim())
                .await;
            (
                "clients",
                done.map(|secret| {
                    format!(
                        "New secret for {}, shown only now (the old one no longer works): {secret}",
                        form.client_id.trim()
                    )
                }),
            )
        }
        "client-delete" => {
            let done = sso.admin_delete_client(by, form.client_id.trim()).await;
            (
                "clients",
                done.map(|()| format!("{} is deleted.", form.client_id.trim())),
            )
        }
        _ => return sso.message_page(StatusCode::NOT_FOUND, "Not found", ""),
    };
    let said = match outcome {
        Ok(text) => Said {
            text,
            is_error: false,
        },
        Err(e) => Said {
            text: e.description,
            is_error: true,
        },
    };
    if view == "user" {
        return match sso.user_view(username).await {
            Ok(data) => sso.console_render(&admin, "user", Some(said), data),
            // A user that could not be created: back to the list.
            Err(_) => {
                sso.console_page(&admin, "users", &ConsoleQuery::default(), Some(said))
                    .await
            }
        };
    }
    sso.console_page(&admin, view, &ConsoleQuery::default(), Some(said))
        .await
}
