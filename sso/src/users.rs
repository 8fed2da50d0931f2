//! Users and password checks, with failed-login throttling per account and
//! per client IP. Unknown accounts are checked against a decoy hash and
//! counted like known ones: neither the answer nor its timing tells whether
//! an account exists.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use portcullis_config::sso::{Login, User};
use serde_json::json;

use crate::clients::{hash_secret, verify_secret};
use crate::keys::now_secs;
use crate::store::{Store, StoreError};

/// Users of the file (read-only) and users who registered themselves (in
/// the store: memory, or Redis for several replicas).
pub struct Users {
    by_name: HashMap<String, Arc<User>>,
    decoy_hash: String,
}

/// Registered users never expire; Redis needs some TTL, so a century.
const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Why a registration was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum RegisterRefused {
    Taken,
    Invalid(&'static str),
}

/// Why a login did not succeed; the page shows the same words for both.
#[derive(Debug, PartialEq, Eq)]
pub enum LoginRefused {
    /// Wrong user name or password (or a disabled account).
    Invalid,
    /// Too many failures: wait this many seconds.
    Locked(u64),
}

impl Users {
    pub fn new(users: Vec<User>) -> Users {
        Users {
            by_name: users
                .into_iter()
                .map(|u| (u.username.clone(), Arc::new(u)))
                .collect(),
            decoy_hash: hash_secret("decoy-password").unwrap_or_default(),
        }
    }

    /// A user of the file, else a registered one.
    pub async fn get(&self, store: &dyn Store, username: &str) -> Option<Arc<User>> {
        if let Some(user) = self.by_name.get(username) {
            return Some(user.clone());
        }
        let value = store.get(&user_key(username)).await.ok()??;
        serde_json::from_value(value).ok().map(Arc::new)
    }

    /// Creates an account; the name is taken atomically (`put_new`), so two
    /// replicas cannot both create it.
    pub async fn register(
        &self,
        store: &dyn Store,
        user: User,
    ) -> Result<Result<(), RegisterRefused>, StoreError> {
        let name_ok = (3..=64).contains(&user.username.len())
            && user
                .username
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
        if !name_ok {
            return Ok(Err(RegisterRefused::Invalid(
                "User names are 3 to 64 letters, digits, dots, dashes, underscores or @.",
            )));
        }
        if self.by_name.contains_key(&user.username) {
            return Ok(Err(RegisterRefused::Taken));
        }
        let value = serde_json::to_value(&user).map_err(|e| StoreError(e.to_string()))?;
        if store
            .put_new(&user_key(&user.username), &value, FOREVER)
            .await?
        {
            Ok(Ok(()))
        } else {
            Ok(Err(RegisterRefused::Taken))
        }
    }

    /// Checks a password under the throttle.
    pub async fn login(
        &self,
        store: &dyn Store,
        policy: &Login,
        username: &str,
        password: &str,
        ip: Option<IpAddr>,
    ) -> Result<Result<Arc<User>, LoginRefused>, StoreError> {
        let account_key = format!("lock:acct:{}", crate::store::digest(username));
        let ip_key = ip.map(|ip| format!("lock:ip:{ip}"));
        let now = now_secs();
        for key in std::iter::once(&account_key).chain(ip_key.as_ref()) {
            if let Some(lock) = store.get(key).await? {
                let until = lock["until"].as_u64().unwrap_or(0);
                if until > now {
                    // Still checked: a locked account answers as slowly as any.
                    let _ = verify_secret(password.to_owned(), self.decoy_hash.clone()).await;
                    return Ok(Err(LoginRefused::Locked(until - now)));
                }
            }
        }
        let user = self.get(store, username).await;
        let hash = user
            .as_ref()
            .map_or_else(|| self.decoy_hash.clone(), |u| u.password_hash.clone());
        let matches = verify_secret(password.to_owned(), hash).await;
        match user {
            Some(user) if matches && !user.disabled => {
                store
                    .delete(&format!("fail:acct:{}", crate::store::digest(username)))
                    .await?;
                Ok(Ok(user))
            }
            _ => {
                let window = Duration::from_secs(3600);
                let account_failures = store
                    .incr(
                        &format!("fail:acct:{}", crate::store::digest(username)),
                        window,
                    )
                    .await?;
                let mut locked = self
                    .lock_if(
                        store,
                        policy,
                        &account_key,
                        account_failures,
                        policy.max_failures,
                    )
                    .await?;
                if let (Some(ip), Some(ip_key)) = (ip, &ip_key) {
                    let ip_failures = store.incr(&format!("fail:ip:{ip}"), window).await?;
                    let ip_locked = self
                        .lock_if(store, policy, ip_key, ip_failures, policy.max_failures * 4)
                        .await?;
                    locked = locked.max(ip_locked);
                }
                Ok(Err(if locked > 0 {
                    LoginRefused::Locked(locked)
                } else {
                    LoginRefused::Invalid
                }))
            }
        }
    }

    /// Locks once `failures` reaches `max`; each further failure doubles
    /// the lockout, up to an hour. Returns the lockout in seconds (0: none).
    async fn lock_if(
        &self,
        store: &dyn Store,
        policy: &Login,
        key: &str,
        failures: u64,
        max: u32,
    ) -> Result<u64, StoreError> {
        let max = u64::from(max.max(1));
        if failures < max {
            return Ok(0);
        }
        let doublings = (failures - max).min(16) as u32;
        let seconds = policy
            .lockout
            .0
            .as_secs()
            .max(1)
            .saturating_mul(1 << doublings)
            .min(3600);
        store
            .put(
                key,
                &json!({ "until": now_secs() + seconds }),
                Duration::from_secs(seconds),
            )
            .await?;
        Ok(seconds)
    }
}

fn user_key(username: &str) -> String {
    format!("user:{username}")
}
