//! Passkeys (WebAuthn) through webauthn-rs: registration from the account
//! page, and sign-in — as the second factor after a password, or alone
//! (the user names the account; the passkey verifies the user, which is
//! two factors in one device).
//!
//! The relying party is the issuer's origin, its id the issuer's host:
//! WebAuthn needs a domain name, so an issuer on a bare IP address has no
//! passkeys (logged at start). The ceremony state between the options and
//! the browser's answer is kept server-side in the store, never sent to
//! the browser.

use portcullis_config::sso::SsoConfig;
use serde_json::Value;
use webauthn_rs::prelude::{
    Passkey, PasskeyAuthentication, PasskeyRegistration, PublicKeyCredential,
    RegisterPublicKeyCredential, Url, Uuid, Webauthn, WebauthnBuilder,
};

use crate::directory::PasskeyRecord;

#[derive(Debug, thiserror::Error)]
pub enum PasskeyError {
    #[error("passkey: {0}")]
    Webauthn(#[from] webauthn_rs::prelude::WebauthnError),
    #[error("passkey: the browser's answer does not read: {0}")]
    Answer(#[from] serde_json::Error),
    #[error("passkey: not one of the user's")]
    Unknown,
}

/// The relying party.
pub struct Passkeys {
    webauthn: Webauthn,
}

impl Passkeys {
    /// `None` when the issuer's host is not a domain name.
    pub fn new(config: &SsoConfig) -> Option<Passkeys> {
        let issuer = Url::parse(&config.issuer).ok()?;
        let Some(host) = issuer.domain().map(str::to_owned) else {
            log::warn!(
                "passkeys are off: the issuer's host ({}) is not a domain name, which WebAuthn needs",
                issuer.host_str().unwrap_or_default()
            );
            return None;
        };
        let origin = Url::parse(&issuer.origin().ascii_serialization()).ok()?;
        let webauthn = WebauthnBuilder::new(&host, &origin)
            .ok()?
            .rp_name(&config.branding.title)
            .build()
            .map_err(|e| log::error!("passkeys are off: {e}"))
            .ok()?;
        Some(Passkeys { webauthn })
    }

    /// The user handle the authenticator stores: derived from the name, so
    /// users of the users file have one too, and it is stable.
    fn user_handle(username: &str) -> Uuid {
        let digest = ring::digest::digest(
            &ring::digest::SHA256,
            format!("portcullis-user-handle\0{username}").as_bytes(),
        );
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest.as_ref()[..16]);
        Uuid::from_bytes(bytes)
    }

    fn stored(records: &[PasskeyRecord]) -> Vec<Passkey> {
        records
            .iter()
            .filter_map(|r| serde_json::from_str(&r.passkey).ok())
            .collect()
    }

    /// The options for `navigator.credentials.create` and the state to keep.
    pub fn start_registration(
        &self,
        username: &str,
        display_name: &str,
        existing: &[PasskeyRecord],
    ) -> Result<(Value, Value), PasskeyError> {
        let exclude = Self::stored(existing)
            .iter()
            .map(|p| p.cred_id().clone())
            .collect();
        let (options, state) = self.webauthn.start_passkey_registration(
            Self::user_handle(username),
            username,
            display_name,
            Some(exclude),
        )?;
        Ok((serde_json::to_value(options)?, serde_json::to_value(state)?))
    }

    /// The new credential: its id (base64url) and the passkey to store.
    pub fn finish_registration(
        &self,
        answer: &str,
        state: Value,
    ) -> Result<(String, String), PasskeyError> {
        let answer: RegisterPublicKeyCredential = serde_json::from_str(answer)?;
        let state: PasskeyRegistration = serde_json::from_value(state)?;
        let passkey = self.webauthn.finish_passkey_registration(&answer, &state)?;
        Ok((
            credential_id(passkey.cred_id().as_ref()),
            serde_json::to_string(&passkey)?,
        ))
    }

    /// The options for `navigator.credentials.get` over the user's
    /// passkeys, and the state to keep.
    pub fn start_authentication(
        &self,
        records: &[PasskeyRecord],
    ) -> Result<(Value, Value), PasskeyError> {
        let passkeys = Self::stored(records);
        let (options, state) = self.webauthn.start_passkey_authentication(&passkeys)?;
        Ok((serde_json::to_value(options)?, serde_json::to_value(state)?))
    }

    /// Checks the browser's assertion: the credential id used and its new
    /// state to store (the signature counter, backup flags).
    pub fn finish_authentication(
        &self,
        answer: &str,
        state: Value,
        records: &[PasskeyRecord],
    ) -> Result<(String, String), PasskeyError> {
        let answer: PublicKeyCredential = serde_json::from_str(answer)?;
        let state: PasskeyAuthentication = serde_json::from_value(state)?;
        let result = self
            .webauthn
            .finish_passkey_authentication(&answer, &state)?;
        let used = credential_id(result.cred_id().as_ref());
        let record = records
            .iter()
            .find(|r| r.credential_id == used)
            .ok_or(PasskeyError::Unknown)?;
        let mut passkey: Passkey = serde_json::from_str(&record.passkey)?;
        passkey.update_credential(&result);
        Ok((used, serde_json::to_string(&passkey)?))
    }
}

/// A credential id as stored and shown: base64url without padding.
fn credential_id(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
