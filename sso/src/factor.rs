//! The second step of a sign-in: a TOTP code, a recovery code or a passkey
//! after the password, or a passkey alone.
//!
//! A user with a second factor is always asked for it. A sign-in that
//! needs one (`mfa::required`) from a user without any ends on a page
//! that sends them to the account page to set one up. The step is a
//! record in the store (`factor:<digest>`, single use, ten minutes) tied
//! to the authorization request and its CSRF token; failures count in the
//! same throttle as passwords.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Form;
use portcullis_config::sso::{Client, User};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::flow::Pending;
use crate::mfa::{self, Methods};
use crate::oauth::random_id;
use crate::store::digest;
use crate::users::LoginRefused;
use crate::{Shared, Sso};

/// How long the second step may take.
const FACTOR_TTL: std::time::Duration = std::time::Duration::from_secs(600);

/// A sign-in waiting for its second step.
#[derive(Serialize, Deserialize)]
struct FactorStep {
    /// The authorization request (or account sign-in) it belongs to.
    request: String,
    username: String,
    /// The password was checked (else: a passkey alone).
    after_password: bool,
    /// webauthn-rs's ceremony state; none when no passkey can pass.
    passkey_state: Option<Value>,
}

impl Sso {
    /// After a good password: the second step, or the session.
    pub(crate) async fn after_password(
        &self,
        request_id: &str,
        pending: &Pending,
        client: Option<&Client>,
        user: &User,
    ) -> Response {
        let has_totp = match self.directory.totp(&user.username).await {
            Ok(totp) => totp.is_some(),
            Err(e) => return self.directory_down(e),
        };
        let has_passkey = match self.directory.passkeys(&user.username).await {
            Ok(passkeys) => !passkeys.is_empty(),
            Err(e) => return self.directory_down(e),
        };
        if has_totp || has_passkey {
            return self
                .factor_form(request_id, pending, client, &user.username, true, None)
                .await;
        }
        if mfa::required(&self.config, client, user, pending.acr_values.as_deref()) {
            self.audit(json!({ "event": "mfa_missing", "sub": user.username,
                "client_id": client.map(|c| c.client_id.clone()) }));
            return self.message_page(
                StatusCode::FORBIDDEN,
                "A second factor is needed",
                &format!(
                    "This application needs a second factor. Set up an authenticator app or a passkey on your account page ({}/account), then sign in again.",
                    self.config.issuer
                ),
            );
        }
        self.finish_sign_in(
            request_id,
            pending,
            client,
            &user.username,
            Methods::password(),
        )
        .await
    }

    /// The last step of every sign-in: a new password when an admin asked
    /// for one, then the session.
    pub(crate) async fn finish_sign_in(
        &self,
        request_id: &str,
        pending: &Pending,
        client: Option<&Client>,
        username: &str,
        methods: Methods,
    ) -> Response {
        let required = match self.directory.user_record(username).await {
            Ok(record) => record.is_some_and(|r| r.password_change_required),
            Err(e) => return self.directory_down(e),
        };
        if !required {
            return self
                .signed_in(
                    username,
                    methods,
                    Self::after_sign_in(request_id, pending, client),
                )
                .await;
        }
        self.new_password_form(request_id, pending, username, methods, None)
            .await
    }

    async fn new_password_form(
        &self,
        request_id: &str,
        pending: &Pending,
        username: &str,
        methods: Methods,
        error: Option<&str>,
    ) -> Response {
        let step = NewPasswordStep {
            request: request_id.to_owned(),
            username: username.to_owned(),
            methods,
        };
        let id = match self.keep_sign_in_step("new_password", &step).await {
            Ok(id) => id,
            Err(page) => return page,
        };
        let mut response = self.render(
            "new_password.html",
            json!({
                "action": format!("{}/login/password", self.base_path),
                "request": request_id,
                "csrf": pending.csrf,
                "step": id,
                "username": username,
                "min_password": self.config.users.min_password_length,
                "error": error,
            }),
        );
        if error.is_some() {
            *response.status_mut() = StatusCode::BAD_REQUEST;
        }
        self.with_csrf_cookie(response, &pending.csrf)
    }

    /// Keeps a sign-in step's record under `kind:<digest of a new id>` for
    /// [`FACTOR_TTL`]; the id the form carries.
    async fn keep_sign_in_step(
        &self,
        kind: &str,
        step: &impl Serialize,
    ) -> Result<String, Response> {
        let id = random_id(24);
        self.store
            .put(
                &format!("{kind}:{}", digest(&id)),
                &serde_json::to_value(step).unwrap_or_default(),
                FACTOR_TTL,
            )
            .await
            .map_err(|e| self.directory_down(e))?;
        Ok(id)
    }

    /// A sign-in step's record (read, or taken: single use) when it
    /// belongs to authorization request `request`; else the page saying
    /// the sign-in expired.
    async fn sign_in_step<T: serde::de::DeserializeOwned + HasRequest>(
        &self,
        key: &str,
        request: &str,
        take: bool,
    ) -> Result<T, Response> {
        let value = match take {
            true => self.store.take(key).await,
            false => self.store.get(key).await,
        };
        let step: Option<T> = match value {
            Ok(value) => value.and_then(|v| serde_json::from_value(v).ok()),
            Err(e) => return Err(self.directory_down(e)),
        };
        step.filter(|s| s.request() == request).ok_or_else(|| {
            self.message_page(
                StatusCode::BAD_REQUEST,
                "Sign-in expired",
                "This sign-in took too long or was already used. Go back to the application and start again.",
            )
        })
    }

    fn directory_down(&self, e: impl std::fmt::Display) -> Response {
        log::error!("{e}");
        self.sign_in_unavailable()
    }

    /// The second-step page: a code field (after a password) and a passkey
    /// button (when the user has passkeys, or for a passkey-only sign-in).
    pub(crate) async fn factor_form(
        &self,
        request_id: &str,
        pending: &Pending,
        client: Option<&Client>,
        username: &str,
        after_password: bool,
        error: Option<&str>,
    ) -> Response {
        let passkeys = match self.directory.passkeys(username).await {
            Ok(passkeys) => passkeys,
            Err(e) => return self.directory_down(e),
        };
        let has_totp = after_password && matches!(self.directory.totp(username).await, Ok(Some(_)));
        let (options, passkey_state) = match &self.passkeys {
            Some(relying_party) if !passkeys.is_empty() => {
                match relying_party.start_authentication(&passkeys) {
                    Ok((options, state)) => (Some(options), Some(state)),
                    Err(e) => {
                        log::error!("{e}");
                        (None, None)
                    }
                }
            }
            // A passkey-only sign-in of a name without passkeys: the same
            // page, with a challenge nothing can answer.
            Some(_) if !after_password => (Some(decoy_options(&self.config.issuer)), None),
            _ => (None, None),
        };
        let step = FactorStep {
            request: request_id.to_owned(),
            username: username.to_owned(),
            after_password,
            passkey_state,
        };
        let id = match self.keep_sign_in_step("factor", &step).await {
            Ok(id) => id,
            Err(page) => return page,
        };
        let mut response = self.render(
            "factor.html",
            json!({
                "action": format!("{}/login/factor", self.base_path),
                "script": format!("{}/assets/passkeys.js", self.base_path),
                "request": request_id,
                "csrf": pending.csrf,
                "factor": id,
                "client_name": client.map(|c| c.name.clone().unwrap_or_else(|| c.client_id.clone())),
                "totp": has_totp,
                "recovery": after_password,
                "passkey_options": options.map(|o| o.to_string()),
                "error": error,
            }),
        );
        if error.is_some() {
            *response.status_mut() = StatusCode::UNAUTHORIZED;
        }
        self.with_csrf_cookie(response, &pending.csrf)
    }
}

/// Options in the shape of a real challenge for an account with no
/// passkeys, so the page does not tell that apart.
fn decoy_options(issuer: &str) -> Value {
    let rp_id = webauthn_rs::prelude::Url::parse(issuer)
        .ok()
        .and_then(|u| u.domain().map(str::to_owned))
        .unwrap_or_default();
    json!({ "publicKey": {
        "challenge": random_id(32),
        "timeout": 300000,
        "rpId": rp_id,
        "allowCredentials": [],
        "userVerification": "required",
    }})
}

#[derive(Deserialize)]
pub struct FactorForm {
    request: String,
    csrf: String,
    factor: String,
    #[serde(default)]
    code: String,
    #[serde(default)]
    recovery_code: String,
    /// The browser's assertion (`PublicKeyCredential.toJSON()`), as JSON.
    #[serde(default)]
    passkey: String,
}

/// `POST {issuer}/login/factor`: checks the second step.
pub async fn submit(
    State(sso): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<FactorForm>,
) -> Response {
    let pending = match sso
        .posted_pending(&headers, &form.request, &form.csrf)
        .await
    {
        Ok(pending) => pending,
        Err(page) => return page,
    };
    let key = format!("factor:{}", digest(&form.factor));
    let step: FactorStep = match sso.sign_in_step(&key, &form.request, false).await {
        Ok(step) => step,
        Err(page) => return page,
    };
    let client = match sso.pending_client(&pending).await {
        Ok(client) => client,
        Err(page) => return page,
    };
    let client = client.as_deref();
    let ip = sso.client_ip(peer.ip(), &headers);
    let refuse = |refused: LoginRefused| {
        let sso = sso.clone();
        let pending = pending.clone();
        let form_request = form.request.clone();
        let username = step.username.clone();
        let after_password = step.after_password;
        async move {
            let message = match refused {
                LoginRefused::Invalid => "That did not work. Try again.".to_owned(),
                LoginRefused::Locked(seconds) => {
                    format!("Too many failed attempts. Wait {seconds} seconds and try again.")
                }
            };
            let client = sso.pending_client(&pending).await.ok().flatten();
            sso.factor_form(
                &form_request,
                &pending,
                client.as_deref(),
                &username,
                after_password,
                Some(&message),
            )
            .await
        }
    };
    match sso
        .users
        .locked(sso.store.as_ref(), &step.username, Some(ip))
        .await
    {
        Ok(Some(seconds)) => return refuse(LoginRefused::Locked(seconds)).await,
        Ok(None) => {}
        Err(e) => return sso.directory_down(e),
    }
    let checked = sso.check_factor(&step, &form).await;
    let methods = match checked {
        Ok(Some(methods)) => methods,
        Ok(None) => {
            sso.audit(
                json!({ "event": "factor_failed", "username_digest": digest(&step.username),
                "ip": ip.to_string(), "client_id": client.map(|c| c.client_id.clone()) }),
            );
            let refused = sso
                .users
                .failed(
                    sso.store.as_ref(),
                    &sso.config.login,
                    &step.username,
                    Some(ip),
                )
                .await
                .unwrap_or(LoginRefused::Invalid);
            return refuse(refused).await;
        }
        Err(e) => return sso.directory_down(e),
    };
    // Single use: of two tabs posting the same step, one goes on.
    if !matches!(sso.store.take(&key).await, Ok(Some(_))) {
        return sso.message_page(
            StatusCode::BAD_REQUEST,
            "Sign-in expired",
            "This sign-in was already used. Go back to the application and start again.",
        );
    }
    let Some(user) = sso.users.get(&step.username).await.filter(|u| !u.disabled) else {
        return sso.message_page(
            StatusCode::FORBIDDEN,
            "Sign-in refused",
            "This account is disabled.",
        );
    };
    let _ = sso
        .users
        .succeeded(sso.store.as_ref(), &user.username)
        .await;
    sso.audit(json!({ "event": "login", "sub": user.username,
        "client_id": client.map(|c| c.client_id.clone()), "ip": ip.to_string(),
        "amr": methods.as_slice() }));
    sso.finish_sign_in(&form.request, &pending, client, &user.username, methods)
        .await
}

/// A step record names the authorization request it belongs to.
trait HasRequest {
    fn request(&self) -> &str;
}

impl HasRequest for FactorStep {
    fn request(&self) -> &str {
        &self.request
    }
}

impl HasRequest for NewPasswordStep {
    fn request(&self) -> &str {
        &self.request
    }
}

/// A sign-in waiting for the new password an admin asked for.
#[derive(Serialize, Deserialize)]
struct NewPasswordStep {
    request: String,
    username: String,
    methods: Methods,
}

#[derive(Deserialize)]
pub struct NewPasswordForm {
    request: String,
    csrf: String,
    step: String,
    #[serde(default)]
    new_password: String,
}

/// `POST {issuer}/login/password`: the new password, then the session.
pub async fn new_password(
    State(sso): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<NewPasswordForm>,
) -> Response {
    let pending = match sso
        .posted_pending(&headers, &form.request, &form.csrf)
        .await
    {
        Ok(pending) => pending,
        Err(page) => return page,
    };
    let key = format!("new_password:{}", digest(&form.step));
    let step: NewPasswordStep = match sso.sign_in_step(&key, &form.request, true).await {
        Ok(step) => step,
        Err(page) => return page,
    };
    let again = |error: &'static str| {
        let sso = sso.clone();
        let pending = pending.clone();
        let request = form.request.clone();
        let username = step.username.clone();
        let methods = step.methods.clone();
        async move {
            sso.new_password_form(&request, &pending, &username, methods, Some(error))
                .await
        }
    };
    if form.new_password.chars().count() < sso.config.users.min_password_length {
        return again("The new password is too short.").await;
    }
    let Some(user) = sso.users.get(&step.username).await.filter(|u| !u.disabled) else {
        return sso.message_page(
            StatusCode::FORBIDDEN,
            "Sign-in refused",
            "This account is disabled.",
        );
    };
    // The temporary password again is no new password.
    if crate::clients::verify_secret(form.new_password.clone(), user.password_hash.clone()).await {
        return again("Choose a password other than the one you were given.").await;
    }
    let Ok(hash) = crate::clients::hash_secret(&form.new_password) else {
        return sso.directory_down("password hashing failed");
    };
    let change = crate::directory::UserChange {
        password_hash: Some(hash),
        password_change_required: Some(false),
        ..Default::default()
    };
    if let Err(e) = sso.directory.change_user(&user.username, change).await {
        return sso.directory_down(e);
    }
    sso.audit(json!({ "event": "password_changed", "sub": user.username, "required": true }));
    let client = match sso.pending_client(&pending).await {
        Ok(client) => client,
        Err(page) => return page,
    };
    sso.signed_in(
        &user.username,
        step.methods,
        Sso::after_sign_in(&form.request, &pending, client.as_deref()),
    )
    .await
}

impl Sso {
    /// The methods a good second step proves; `None` when it failed.
    async fn check_factor(
        &self,
        step: &FactorStep,
        form: &FactorForm,
    ) -> Result<Option<Methods>, crate::directory::DirectoryError> {
        let username = step.username.as_str();
        if !form.passkey.is_empty() {
            let (Some(relying_party), Some(state)) = (&self.passkeys, &step.passkey_state) else {
                return Ok(None);
            };
            let records = self.directory.passkeys(username).await?;
            return match relying_party.finish_authentication(&form.passkey, state.clone(), &records)
            {
                Ok((credential_id, passkey)) => {
                    self.directory
                        .passkey_used(&credential_id, &passkey)
                        .await?;
                    Ok(Some(Methods::passkey(step.after_password)))
                }
                Err(e) => {
                    log::info!("{e}");
                    Ok(None)
                }
            };
        }
        // Codes are a second factor only: never instead of the password.
        if !step.after_password {
            return Ok(None);
        }
        if !form.code.trim().is_empty() {
            return Ok(
                mfa::verify_totp(self.directory.as_ref(), username, &form.code)
                    .await?
                    .then(Methods::password_and_code),
            );
        }
        if !form.recovery_code.trim().is_empty() {
            let used =
                mfa::use_recovery_code(self.directory.as_ref(), username, &form.recovery_code)
                    .await?;
            if used {
                self.audit(json!({ "event": "recovery_code_used", "sub": username }));
            }
            return Ok(used.then(Methods::password_and_code));
        }
        Ok(None)
    }
}
