//! The account page (`{issuer}/account`) for a signed-in user: change the
//! password (the old one required), set up or remove a TOTP authenticator
//! (the QR code drawn here), new recovery codes, register and remove
//! passkeys, see and end sessions.
//!
//! Server-rendered forms that work without JavaScript (only the passkey
//! ceremony needs it: WebAuthn is a browser API). Every POST carries a
//! token derived from the session's secret cookie (an attacker's page can
//! neither read nor compute it), compared in constant time. Without a
//! session, the page starts a sign-in that comes back here.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use crate::flow::{LoginSession, Pending};
use crate::mfa;
use crate::oauth::random_id;
use crate::store::digest;
use crate::{Shared, Sso};

/// How long a TOTP or passkey enrolment may take.
const ENROL_TTL: std::time::Duration = std::time::Duration::from_secs(600);

/// Something the page says after an action.
struct Notice<'a> {
    text: &'a str,
    is_error: bool,
}

impl Sso {
    /// A form token of the signed-in pages: a digest of the session's
    /// secret id and the page's purpose (`account`, `console`).
    pub(crate) fn session_form_token(purpose: &str, session_id: &str) -> String {
        digest(&format!("portcullis-{purpose}\0{session_id}"))
    }

    /// The signed-in user and the session's secret id, when the posted
    /// token (if any) is the session's for `purpose`.
    pub(crate) async fn session_for_form(
        &self,
        headers: &HeaderMap,
        purpose: &str,
        csrf: Option<&str>,
    ) -> Option<(LoginSession, String)> {
        let id = self.session_cookie(headers)?;
        let session = self.session(headers).await?;
        if let Some(csrf) = csrf {
            let expected = Self::session_form_token(purpose, &id);
            if !bool::from(expected.as_bytes().ct_eq(csrf.as_bytes())) {
                return None;
            }
        }
        Some((session, id))
    }

    /// The account page, with what an action left to show.
    async fn account_page(
        &self,
        session: &LoginSession,
        session_id: &str,
        notice: Option<Notice<'_>>,
        extra: Value,
    ) -> Response {
        let sub = &session.sub;
        let user = self.users.get(sub).await;
        let totp = self.directory.totp(sub).await.ok().flatten();
        let codes_left = self.directory.recovery_codes_left(sub).await.unwrap_or(0);
        let passkeys: Vec<Value> = self
            .directory
            .passkeys(sub)
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|p| {
                json!({ "id": p.credential_id, "name": p.name, "created": p.created_at,
                "last_used": p.last_used_at })
            })
            .collect();
        let sessions: Vec<Value> = self
            .sessions_of(sub)
            .await
            .into_iter()
            .rev()
            .map(|(sid, created)| json!({ "sid": sid, "created": created, "current": sid == session.sid }))
            .collect();
        let mut context = json!({
            "base": self.base_path,
            "script": format!("{}/assets/passkeys.js", self.base_path),
            "csrf": Self::session_form_token("account", session_id),
            "username": sub,
            "name": user.as_ref().and_then(|u| u.name.clone()),
            "seed_user": self.users.is_seed(sub),
            "totp": totp.is_some(),
            "totp_since": totp.as_ref().map(|t| t.created_at),
            "codes_left": codes_left,
            "passkeys_on": self.passkeys.is_some(),
            "passkeys": passkeys,
            "sessions": sessions,
            "methods": session.methods.as_slice(),
            "notice": notice.as_ref().map(|n| json!({ "text": n.text, "is_error": n.is_error })),
        });
        if let (Value::Object(context), Value::Object(extra)) = (&mut context, extra) {
            context.extend(extra);
        }
        let mut response = self.render("account.html", context);
        if notice.is_some_and(|n| n.is_error) {
            *response.status_mut() = StatusCode::BAD_REQUEST;
        }
        response
    }

    /// Without a session: a sign-in that comes back to the account page
    /// (or the console).
    pub(crate) async fn account_sign_in(&self, console: bool) -> Response {
        let pending = Pending {
            client_id: String::new(),
            redirect_uri: String::new(),
            scope: String::new(),
            state: None,
            nonce: None,
            code_challenge: None,
            csrf: random_id(24),
            acr_values: None,
            account: true,
            console,
        };
        let Some(request_id) = self.store_pending(&pending).await else {
            return self.sign_in_unavailable();
        };
        self.login_form(&request_id, &pending, None, "", None, StatusCode::OK)
    }

    pub(crate) fn expired(&self) -> Response {
        self.message_page(
            StatusCode::FORBIDDEN,
            "Request refused",
            "You are signed out, or the form did not come from your account page. Open the account page and try again.",
        )
    }

    fn enrolment_key(session_id: &str, what: &str) -> String {
        format!("enrol_{what}:{}", digest(session_id))
    }
}

/// `GET {issuer}/account`.
pub async fn page(State(sso): State<Shared>, headers: HeaderMap) -> Response {
    match sso.session_for_form(&headers, "account", None).await {
        Some((session, id)) => sso.account_page(&session, &id, None, json!({})).await,
        None => sso.account_sign_in(false).await,
    }
}

#[derive(Deserialize)]
pub struct AccountForm {
    /// Absent: refused like a wrong one (403), not a 422.
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    current_password: String,
    #[serde(default)]
    new_password: String,
    #[serde(default)]
    code: String,
    /// A passkey's credential id, or a session's `sid`.
    #[serde(default)]
    id: String,
    #[serde(default)]
    name: String,
    /// The browser's answer to `navigator.credentials.create`, as JSON.
    #[serde(default)]
    credential: String,
}

/// `POST {issuer}/account/{action}`: one handler, the action in the path.
pub async fn act(
    State(sso): State<Shared>,
    axum::extract::Path(action): axum::extract::Path<String>,
    headers: HeaderMap,
    Form(form): Form<AccountForm>,
) -> Response {
    let Some((session, session_id)) = sso
        .session_for_form(&headers, "account", Some(&form.csrf))
        .await
    else {
        return sso.expired();
    };
    let sub = session.sub.clone();
    let outcome: Result<(&str, Value), &str> = match action.as_str() {
        "password" => sso.change_password(&sub, &form).await,
        "totp" => return sso.start_totp(&session, &session_id).await,
        "totp-confirm" => sso.confirm_totp(&sub, &session_id, &form).await,
        "totp-remove" => sso.remove_totp(&sub).await,
        "recovery-codes" => sso.new_recovery_codes(&sub).await,
        "passkey-options" => return sso.passkey_options(&sub, &session_id, &form).await,
        "passkey" => sso.add_passkey(&sub, &session_id, &form).await,
        "passkey-remove" => sso.remove_passkey(&sub, &form).await,
        "session-end" => {
            let ended = Arc::clone(&sso).end_one_session(&sub, &form.id).await;
            sso.audit(json!({ "event": "session_ended_by_user", "sub": sub, "ended": ended }));
            if form.id == session.sid {
                return Redirect::to(&format!("{}/account", sso.base_path)).into_response();
            }
            Ok(("The session has ended.", json!({})))
        }
        _ => return sso.message_page(StatusCode::NOT_FOUND, "Not found", ""),
    };
    match outcome {
        Ok((text, extra)) => {
            sso.account_page(
                &session,
                &session_id,
                Some(Notice {
                    text,
                    is_error: false,
                }),
                extra,
            )
            .await
        }
        Err(text) => {
            sso.account_page(
                &session,
                &session_id,
                Some(Notice {
                    text,
                    is_error: true,
                }),
                json!({}),
            )
            .await
        }
    }
}

type Outcome = Result<(&'static str, Value), &'static str>;

impl Sso {
    async fn change_password(&self, sub: &str, form: &AccountForm) -> Outcome {
        if self.users.is_seed(sub) {
            return Err(
                "Your account is defined by the administrator; ask them to change the password.",
            );
        }
        if form.new_password.chars().count() < self.config.users.min_password_length {
            return Err("The new password is too short.");
        }
        let Some(user) = self.users.get(sub).await else {
            return Err("Your account is gone.");
        };
        // The old password, under the same throttle as a sign-in.
        let checked = self
            .users
            .login(
                self.store.as_ref(),
                &self.config.login,
                sub,
                &form.current_password,
                None,
            )
            .await;
        if !matches!(checked, Ok(Ok(_))) {
            self.audit(json!({ "event": "password_change_refused", "sub": sub }));
            return Err("The current password is not right.");
        }
        let Ok(hash) = crate::clients::hash_secret(&form.new_password) else {
            return Err("The password could not be changed; try again.");
        };
        let change = crate::directory::UserChange {
            password_hash: Some(hash),
            password_change_required: Some(false),
            ..Default::default()
        };
        match self.directory.change_user(&user.username, change).await {
            Ok(true) => {
                self.audit(json!({ "event": "password_changed", "sub": sub }));
                Ok(("Your password has been changed.", json!({})))
            }
            _ => Err("The password could not be changed; try again."),
        }
    }

    async fn start_totp(&self, session: &LoginSession, session_id: &str) -> Response {
        let secret = mfa::new_totp_secret();
        let issuer = &self.config.branding.title;
        let Some(uri) = mfa::totp_uri(&secret, issuer, &session.sub) else {
            return self.message_page(StatusCode::INTERNAL_SERVER_ERROR, "Try again", "");
        };
        let Some(qr) = mfa::qr_svg(&uri) else {
            return self.message_page(StatusCode::INTERNAL_SERVER_ERROR, "Try again", "");
        };
        let base32 = mfa::base32(&secret);
        let stored = self
            .store
            .put(
                &Self::enrolment_key(session_id, "totp"),
                &json!({ "secret": base32 }),
                ENROL_TTL,
            )
            .await;
        if stored.is_err() {
            return self.expired();
        }
        self.account_page(
            session,
            session_id,
            None,
            json!({ "enrol": { "qr": qr, "secret": base32, "uri": uri } }),
        )
        .await
    }

    async fn confirm_totp(&self, sub: &str, session_id: &str, form: &AccountForm) -> Outcome {
        let key = Self::enrolment_key(session_id, "totp");
        let Ok(Some(enrolment)) = self.store.get(&key).await else {
            return Err("The setup took too long; start again.");
        };
        let secret = enrolment["secret"].as_str().unwrap_or_default();
        let Some(step) = mfa::totp_step(secret, &form.code, crate::keys::now_secs()) else {
            return Err("That code is not right; check the app's clock and try again.");
        };
        if self.directory.set_totp(sub, secret, step).await.is_err() {
            return Err("The authenticator could not be saved; try again.");
        }
        let _ = self.store.delete(&key).await;
        self.audit(json!({ "event": "totp_enrolled", "sub": sub }));
        let codes = self.issue_recovery_codes(sub).await?;
        Ok(("Your authenticator app is set up. Keep these recovery codes somewhere safe: each works once, and they are shown only now.",
            json!({ "codes": codes })))
    }

    async fn issue_recovery_codes(&self, sub: &str) -> Result<Vec<String>, &'static str> {
        let (codes, digests) = mfa::new_recovery_codes();
        self.directory
            .set_recovery_codes(sub, &digests)
            .await
            .map_err(|_| "The recovery codes could not be saved; try again.")?;
        self.audit(json!({ "event": "recovery_codes_issued", "sub": sub }));
        Ok(codes)
    }

    async fn remove_totp(&self, sub: &str) -> Outcome {
        match self.directory.remove_totp(sub).await {
            Ok(_) => {
                let _ = self.directory.set_recovery_codes(sub, &[]).await;
                self.audit(json!({ "event": "totp_removed", "sub": sub }));
                Ok(("The authenticator app is removed.", json!({})))
            }
            Err(_) => Err("It could not be removed; try again."),
        }
    }

    async fn new_recovery_codes(&self, sub: &str) -> Outcome {
        let codes = self.issue_recovery_codes(sub).await?;
        Ok(("New recovery codes: the old ones no longer work. Each works once; they are shown only now.",
            json!({ "codes": codes })))
    }

    /// The options for `navigator.credentials.create` (JSON, for the
    /// page's script); the ceremony state stays here.
    async fn passkey_options(&self, sub: &str, session_id: &str, _form: &AccountForm) -> Response {
        let Some(relying_party) = &self.passkeys else {
            return StatusCode::NOT_FOUND.into_response();
        };
        let existing = self.directory.passkeys(sub).await.unwrap_or_default();
        let display = self
            .users
            .get(sub)
            .await
            .and_then(|u| u.name.clone())
            .unwrap_or_else(|| sub.to_owned());
        match relying_party.start_registration(sub, &display, &existing) {
            Ok((options, state)) => {
                let stored = self
                    .store
                    .put(
                        &Self::enrolment_key(session_id, "passkey"),
                        &state,
                        ENROL_TTL,
                    )
                    .await;
                if stored.is_err() {
                    return StatusCode::SERVICE_UNAVAILABLE.into_response();
                }
                crate::no_store(axum::Json(options).into_response())
            }
            Err(e) => {
                log::error!("{e}");
                StatusCode::INTERNAL_SERVER_ERROR.into_response()
            }
        }
    }

    async fn add_passkey(&self, sub: &str, session_id: &str, form: &AccountForm) -> Outcome {
        let Some(relying_party) = &self.passkeys else {
            return Err("Passkeys are not available here.");
        };
        let Ok(Some(state)) = self
            .store
            .take(&Self::enrolment_key(session_id, "passkey"))
            .await
        else {
            return Err("The passkey setup took too long; start again.");
        };
        let (credential_id, passkey) =
            match relying_party.finish_registration(&form.credential, state) {
                Ok(done) => done,
                Err(e) => {
                    log::info!("{e}");
                    return Err("The passkey was not accepted; try again.");
                }
            };
        let name: String = form.name.trim().chars().take(64).collect();
        let record = crate::directory::PasskeyRecord {
            credential_id,
            username: sub.to_owned(),
            name: if name.is_empty() {
                "Passkey".into()
            } else {
                name
            },
            passkey,
            created_at: 0,
            last_used_at: None,
        };
        match self.directory.add_passkey(&record).await {
            Ok(true) => {
                self.audit(json!({ "event": "passkey_registered", "sub": sub }));
                Ok(("Your passkey is registered.", json!({})))
            }
            Ok(false) => Err("That passkey is registered already."),
            Err(_) => Err("The passkey could not be saved; try again."),
        }
    }

    async fn remove_passkey(&self, sub: &str, form: &AccountForm) -> Outcome {
        match self.directory.remove_passkey(sub, &form.id).await {
            Ok(true) => {
                self.audit(json!({ "event": "passkey_removed", "sub": sub }));
                Ok(("The passkey is removed.", json!({})))
            }
            Ok(false) => Err("There is no such passkey."),
            Err(_) => Err("It could not be removed; try again."),
        }
    }
}
