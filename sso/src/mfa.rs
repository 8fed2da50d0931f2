//! Second factors: TOTP codes (RFC 6238: SHA-1, 6 digits, 30 s steps, one
//! step of clock skew either way — what every authenticator app does),
//! single-use recovery codes, and how a sign-in is described in tokens:
//! `amr` (RFC 8176 method names) and `acr` (one of two levels).
//!
//! A code is good once: the step it matched is spent in the directory with
//! a conditional update, so a code seen over a shoulder (or replayed by a
//! second replica) is refused.

use portcullis_config::sso::{Client, SsoConfig, User};
use serde::{Deserialize, Serialize};
use totp_rs::{Algorithm, Totp};

use crate::directory::{Directory, DirectoryError};
use crate::store::digest;

/// Password (RFC 8176 `pwd`).
pub const AMR_PASSWORD: &str = "pwd";
/// A one-time code: TOTP or a recovery code (`otp`).
pub const AMR_OTP: &str = "otp";
/// A passkey: proof of a key held by an authenticator (`hwk`) that
/// verified the user (`user`).
pub const AMR_PASSKEY: &str = "hwk";
pub const AMR_USER_VERIFIED: &str = "user";
/// More than one factor (`mfa`).
pub const AMR_MFA: &str = "mfa";

/// The level of a sign-in with one factor (a password).
pub const ACR_PASSWORD: &str = "urn:portcullis:acr:password";
/// The level of a sign-in with two factors (password and TOTP, or a
/// passkey that verified the user).
pub const ACR_MFA: &str = "urn:portcullis:acr:mfa";

/// How many recovery codes a user gets.
const RECOVERY_CODES: usize = 10;

/// How a user signed in, in RFC 8176 terms.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Methods(Vec<String>);

impl Methods {
    pub fn password() -> Methods {
        Methods(vec![AMR_PASSWORD.into()])
    }

    /// A password and a one-time code.
    pub fn password_and_code() -> Methods {
        Methods(vec![AMR_PASSWORD.into(), AMR_OTP.into(), AMR_MFA.into()])
    }

    /// `after_password`: a passkey as the second factor; else a passkey
    /// alone (which verified the user: two factors in one device).
    pub fn passkey(after_password: bool) -> Methods {
        let mut methods = Vec::new();
        if after_password {
            methods.push(AMR_PASSWORD.to_owned());
        }
        methods.extend([AMR_PASSKEY, AMR_USER_VERIFIED, AMR_MFA].map(String::from));
        Methods(methods)
    }

    pub fn is_multi_factor(&self) -> bool {
        self.0.iter().any(|m| m == AMR_MFA)
    }

    /// The `acr` claim.
    pub fn acr(&self) -> &'static str {
        if self.is_multi_factor() {
            ACR_MFA
        } else {
            ACR_PASSWORD
        }
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

/// Whether signing `user` in to `client` needs a second factor: the
/// client requires one, one of the user's roles does, or the request
/// asked for the MFA level (`acr_values`, OIDC Core §3.1.2.1; RFC 9470
/// step-up sends it).
pub fn required(
    config: &SsoConfig,
    client: Option<&Client>,
    user: &User,
    acr_values: Option<&str>,
) -> bool {
    client.is_some_and(|c| c.require_mfa)
        || user
            .roles
            .iter()
            .any(|role| config.mfa.required_roles.contains(role))
        || acr_values.is_some_and(|values| values.split(' ').any(|v| v == ACR_MFA))
}

/// A new TOTP secret: 160 random bits (RFC 4226 §4's recommendation).
pub fn new_totp_secret() -> Vec<u8> {
    let mut secret = vec![0u8; 20];
    rand::fill(&mut secret[..]);
    secret
}

/// The secret as authenticator apps want it typed: base32, no padding.
pub fn base32(secret: &[u8]) -> String {
    totp_rs::Secret::from(secret.to_vec()).to_base32()
}

fn totp(secret: &[u8], issuer: &str, account: &str) -> Option<Totp> {
    // `:` separates issuer and account in the label (Key Uri Format).
    let clean = |s: &str| s.replace(':', " ");
    totp_rs::Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_secret(secret.to_vec())
        .with_issuer(Some(clean(issuer)))
        .with_account_name(clean(account))
        .build()
        .map_err(|e| log::error!("totp: {e}"))
        .ok()
}

/// The `otpauth://` URI an authenticator app scans.
pub fn totp_uri(secret: &[u8], issuer: &str, account: &str) -> Option<String> {
    totp(secret, issuer, account)?.to_url().ok()
}

/// The time step `code` is valid for now (±1 step), if any. The caller
/// spends the step before accepting the code.
pub fn totp_step(secret_base32: &str, code: &str, now: u64) -> Option<i64> {
    let secret = totp_rs::Secret::try_from_base32(secret_base32).ok()?;
    let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let totp = totp_rs::Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_secret(secret)
        .build()
        .ok()?;
    totp.check(&code, now)
        .and_then(|step| i64::try_from(step).ok())
}

/// Checks a TOTP code of `username` and spends its step: `Ok(false)` for a
/// wrong code, a code already used, or no authenticator.
pub async fn verify_totp(
    directory: &dyn Directory,
    username: &str,
    code: &str,
) -> Result<bool, DirectoryError> {
    let Some(record) = directory.totp(username).await? else {
        return Ok(false);
    };
    let Some(step) = totp_step(&record.secret, code, crate::keys::now_secs()) else {
        return Ok(false);
    };
    directory.spend_totp_step(username, step).await
}

/// A QR code of `text` as inline SVG (rendered here: no external service
/// sees the secret).
pub fn qr_svg(text: &str) -> Option<String> {
    let code = qrcode::QrCode::new(text.as_bytes()).ok()?;
    let svg = code
        .render::<qrcode::render::svg::Color>()
        .min_dimensions(200, 200)
        .quiet_zone(true)
        .build();
    // Inline in HTML: the element only, without the XML declaration.
    let start = svg.find("<svg")?;
    Some(svg[start..].to_owned())
}

/// Recovery codes are typed in groups of four; case and separators are
/// ignored.
fn normalise_recovery_code(code: &str) -> String {
    code.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// New recovery codes (shown once) and their digests (stored): 16 base32
/// characters (80 bits) each.
pub fn new_recovery_codes() -> (Vec<String>, Vec<String>) {
    let codes: Vec<String> = (0..RECOVERY_CODES)
        .map(|_| {
            let mut bytes = [0u8; 10];
            rand::fill(&mut bytes[..]);
            let text = base32(&bytes);
            text.as_bytes()
                .chunks(4)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect::<Vec<_>>()
                .join("-")
        })
        .collect();
    let digests = codes
        .iter()
        .map(|c| digest(&normalise_recovery_code(c)))
        .collect();
    (codes, digests)
}

/// Spends a recovery code of `username`: `Ok(true)` once.
pub async fn use_recovery_code(
    directory: &dyn Directory,
    username: &str,
    code: &str,
) -> Result<bool, DirectoryError> {
    let normalised = normalise_recovery_code(code);
    if normalised.len() != 16 {
        return Ok(false);
    }
    directory
        .spend_recovery_code(username, &digest(&normalised))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6238_vectors_and_the_window() {
        // RFC 6238 Appendix B, SHA-1, the last six digits.
        let secret = base32(b"12345678901234567890");
        assert_eq!(totp_step(&secret, "287082", 59), Some(1));
        assert_eq!(totp_step(&secret, "081804", 1111111109), Some(37037036));
        assert_eq!(totp_step(&secret, "050471", 1111111111), Some(37037037));
        // One step of skew either way, not two.
        assert_eq!(
            totp_step(&secret, "050471", 1111111111 + 30),
            Some(37037037)
        );
        assert_eq!(totp_step(&secret, "050471", 1111111111 + 60), None);
        for bad in ["", "28708", "2870822", "abcdef", "28 70 82x"] {
            assert_eq!(totp_step(&secret, bad, 59), None, "{bad}");
        }
        assert_eq!(
            totp_step(&secret, " 287 082 ", 59),
            Some(1),
            "spaces are typed"
        );
        assert_eq!(totp_step("not base32!", "287082", 59), None);
    }

    #[test]
    fn the_uri_and_the_qr_code() {
        let uri = totp_uri(b"12345678901234567890", "Portcullis: demo", "alice").unwrap();
        assert!(uri.starts_with("otpauth://totp/"), "{uri}");
        assert!(
            uri.contains("secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"),
            "{uri}"
        );
        let svg = qr_svg(&uri).unwrap();
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"), "{svg}");
    }

    #[test]
    fn recovery_codes_are_random_and_read_leniently() {
        let (codes, digests) = new_recovery_codes();
        assert_eq!(codes.len(), 10);
        assert_eq!(codes[0].len(), 19, "{}", codes[0]);
        let unique: std::collections::HashSet<_> = codes.iter().collect();
        assert_eq!(unique.len(), 10);
        let typed = codes[3].to_lowercase().replace('-', " ");
        assert_eq!(digest(&normalise_recovery_code(&typed)), digests[3]);
    }

    #[test]
    fn methods_and_levels() {
        assert_eq!(Methods::password().acr(), ACR_PASSWORD);
        assert_eq!(Methods::password_and_code().acr(), ACR_MFA);
        assert_eq!(Methods::passkey(false).as_slice(), ["hwk", "user", "mfa"]);
        assert_eq!(Methods::passkey(true).acr(), ACR_MFA);
    }
}
