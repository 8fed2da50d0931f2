//! Self-service registration (`users.registration`: closed, open,
//! invite-only). The form is CSRF-protected like the login form; the new
//! account is stored in the directory (SQLite or PostgreSQL), signed in, and the
//! authorization that led here (if any) continues.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Form;
use portcullis_config::sso::{Registration, User};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::clients::hash_secret;
use crate::oauth::random_id;
use crate::store::digest;
use crate::users::RegisterRefused;
use crate::{Shared, Sso};

/// Registration attempts allowed per client address per hour.
const ATTEMPTS_PER_HOUR: u64 = 20;

#[derive(Debug, Default, Deserialize)]
pub struct RegisterQuery {
    request: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RegisterForm {
    #[serde(default)]
    request: String,
    csrf: String,
    username: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    email: String,
    password: String,
    confirm: String,
    #[serde(default)]
    invite: String,
}

impl Sso {
    fn register_form(
        &self,
        status: StatusCode,
        request: &str,
        csrf: &str,
        form: Option<&RegisterForm>,
        error: Option<&str>,
    ) -> Response {
        let mut response = self.render(
            "register.html",
            json!({
                "action": format!("{}/register", self.base_path),
                "request": request,
                "csrf": csrf,
                "username": form.map(|f| f.username.as_str()),
                "name": form.map(|f| f.name.as_str()),
                "email": form.map(|f| f.email.as_str()),
                "min_password": self.config.users.min_password_length,
                "invite_only": self.config.users.registration == Registration::InviteOnly,
                "error": error,
            }),
        );
        *response.status_mut() = status;
        self.with_csrf_cookie(response, csrf)
    }

    fn registration_closed(&self) -> Option<Response> {
        (self.config.users.registration == Registration::Closed).then(|| {
            self.message_page(
                StatusCode::NOT_FOUND,
                "Registration is closed",
                "Ask an administrator for an account.",
            )
        })
    }

    /// An invitation code is valid and not used before (single use across
    /// replicas: `put_new`).
    async fn take_invite(&self, code: &str) -> bool {
        let known = self
            .config
            .users
            .invites
            .iter()
            .fold(false, |found, invite| {
                found | bool::from(invite.expose().as_bytes().ct_eq(code.as_bytes()))
            });
        if !known || code.is_empty() {
            return false;
        }
        self.store
            .put_new(
                &format!("invite_used:{}", digest(code)),
                &json!(true),
                Duration::from_secs(100 * 365 * 24 * 3600),
            )
            .await
            .unwrap_or(false)
    }
}

pub async fn page(State(sso): State<Shared>, Query(query): Query<RegisterQuery>) -> Response {
    if let Some(closed) = sso.registration_closed() {
        return closed;
    }
    let request = query.request.unwrap_or_default();
    sso.register_form(StatusCode::OK, &request, &random_id(24), None, None)
}

pub async fn submit(
    State(sso): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<RegisterForm>,
) -> Response {
    if let Some(closed) = sso.registration_closed() {
        return closed;
    }
    if !sso.csrf_cookie_matches(&headers, &form.csrf) {
        return sso.message_page(
            StatusCode::FORBIDDEN,
            "Request refused",
            "The form was not sent from this page.",
        );
    }
    let ip = sso.client_ip(peer.ip(), &headers);
    let refuse = |status: StatusCode, message: &str| {
        sso.register_form(
            status,
            &form.request,
            &form.csrf,
            Some(&form),
            Some(message),
        )
    };
    let attempts = sso
        .store
        .incr(&format!("register:ip:{ip}"), Duration::from_secs(3600))
        .await
        .unwrap_or(u64::MAX);
    if attempts > ATTEMPTS_PER_HOUR {
        return refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many registrations from your address. Try again later.",
        );
    }
    let min = sso.config.users.min_password_length;
    if form.password.chars().count() < min {
        return refuse(
            StatusCode::BAD_REQUEST,
            &format!("The password needs at least {min} characters."),
        );
    }
    if form.password != form.confirm {
        return refuse(StatusCode::BAD_REQUEST, "The passwords differ.");
    }
    if sso.config.users.registration == Registration::InviteOnly
        && !sso.take_invite(form.invite.trim()).await
    {
        return refuse(
            StatusCode::FORBIDDEN,
            "The invitation code is not valid or was used already.",
        );
    }
    let password = form.password.clone();
    let hash = match tokio::task::spawn_blocking(move || hash_secret(&password)).await {
        Ok(Ok(hash)) => hash,
        _ => return sso.message_page(StatusCode::INTERNAL_SERVER_ERROR, "Try again later", ""),
    };
    let user = User {
        username: form.username.trim().to_owned(),
        password_hash: hash,
        email: Some(form.email.trim().to_owned()).filter(|e| !e.is_empty()),
        name: Some(form.name.trim().to_owned()).filter(|n| !n.is_empty()),
        roles: sso.config.users.registered_roles.clone(),
        groups: Vec::new(),
        disabled: false,
    };
    match sso.users.register(user.clone()).await {
        Ok(Ok(())) => {}
        Ok(Err(RegisterRefused::Taken)) => {
            return refuse(StatusCode::CONFLICT, "That user name is taken.")
        }
        Ok(Err(RegisterRefused::Invalid(message))) => {
            return refuse(StatusCode::BAD_REQUEST, message)
        }
        Err(e) => {
            log::error!("registration: {e}");
            return sso.message_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Try again later",
                "Registration is unavailable right now.",
            );
        }
    }
    sso.audit(json!({ "event": "registered", "sub": user.username, "ip": ip.to_string() }));
    let pending = match form.request.as_str() {
        "" => None,
        id => sso.load_pending(id).await,
    };
    let client = match &pending {
        Some(p) => sso.client(&p.client_id).await,
        None => None,
    };
    match (&pending, &client) {
        // A client that needs a second factor gets the page that says how
        // to set one up, not a code.
        (Some(pending), Some(client)) => {
            sso.after_password(&form.request, pending, Some(client), &user)
                .await
        }
        _ => {
            sso.signed_in(
                &user.username,
                crate::mfa::Methods::password(),
                crate::flow::AfterSignIn::Page,
            )
            .await
        }
    }
}
