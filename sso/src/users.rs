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
use crate::directory::{Directory, DirectoryError};
use crate::keys::now_secs;
use crate::store::{Store, StoreError};

/// Users of the file (read-only seed entries) and users who registered or
/// were created at run time (in the directory).
pub struct Users {
    by_name: HashMap<String, Arc<User>>,
    directory: Arc<dyn Directory>,
    decoy_hash: String,
}

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
    pub fn new(users: Vec<User>, directory: Arc<dyn Directory>) -> Users {
        Users {
            by_name: users
                .into_iter()
                .map(|u| (u.username.clone(), Arc::new(u)))
                .collect(),
            directory,
            decoy_hash: hash_secret("decoy-password").unwrap_or_default(),
        }
    }

    /// Whether `username` is a user of the users file (read-only).
    pub fn is_seed(&self, username: &str) -> bool {
        self.by_name.contains_key(username)
    }

    /// The seed users' names that the directory also has: each is a
    /// configuration error (one name, two accounts).
    pub async fn seeds_in_directory(&self) -> Result<Vec<String>, DirectoryError> {
        let mut both = Vec::new();
        for name in self.by_name.keys() {
            if self.directory.user(name).await?.is_some() {
                both.push(name.clone());
            }
        }
        both.sort();
        Ok(both)
    }

    /// A user of the file, else one of the directory. A directory failure
    /// reads as "no such user" here (logged): sign-in fails closed.
    pub async fn get(&self, username: &str) -> Option<Arc<User>> {
        if let Some(user) = self.by_name.get(username) {
            return Some(user.clone());
        }
        match self.directory.user(username).await {
            Ok(user) => user.map(Arc::new),
            Err(e) => {
                log::error!("{e}");
                None
            }
        }
    }

    /// Creates an account in the directory; the name is taken atomically
    /// (a unique key), so two replicas cannot both create it.
    pub async fn register(&self, user: User) -> Result<Result<(), RegisterRefused>, StoreError> {
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
        match self.directory.create_user(&user).await {
            Ok(true) => Ok(Ok(())),
            Ok(false) => Ok(Err(RegisterRefused::Taken)),
            Err(e) => Err(StoreError(e.to_string())),
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
        if let Some(seconds) = self.locked(store, username, ip).await? {
            // Still checked: a locked account answers as slowly as any.
            let _ = verify_secret(password.to_owned(), self.decoy_hash.clone()).await;
            return Ok(Err(LoginRefused::Locked(seconds)));
        }
        let user = self.get(username).await;
        let hash = user
            .as_ref()
            .map_or_else(|| self.decoy_hash.clone(), |u| u.password_hash.clone());
        let matches = verify_secret(password.to_owned(), hash).await;
        match user {
            Some(user) if matches && !user.disabled => {
                self.succeeded(store, username).await?;
                Ok(Ok(user))
            }
            _ => Ok(Err(self.failed(store, policy, username, ip).await?)),
        }
    }

    fn lock_keys(username: &str, ip: Option<IpAddr>) -> (String, Option<String>) {
        (
            format!("lock:acct:{}", crate::store::digest(username)),
            ip.map(|ip| format!("lock:ip:{ip}")),
        )
    }

    /// Seconds the account (or the client's address) is still locked for.
    pub async fn locked(
        &self,
        store: &dyn Store,
        username: &str,
        ip: Option<IpAddr>,
    ) -> Result<Option<u64>, StoreError> {
        let (account_key, ip_key) = Self::lock_keys(username, ip);
        let now = now_secs();
        for key in std::iter::once(&account_key).chain(ip_key.as_ref()) {
            if let Some(lock) = store.get(key).await? {
                let until = lock["until"].as_u64().unwrap_or(0);
                if until > now {
                    return Ok(Some(until - now));
                }
            }
        }
        Ok(None)
    }

    /// A sign-in step succeeded: the account's failures are forgotten.
    pub async fn succeeded(&self, store: &dyn Store, username: &str) -> Result<(), StoreError> {
        store
            .delete(&format!("fail:acct:{}", crate::store::digest(username)))
            .await
    }

    /// A sign-in step failed (a password, a code, a passkey): counted per
    /// account and per address; locks once there are too many.
    pub async fn failed(
        &self,
        store: &dyn Store,
        policy: &Login,
        username: &str,
        ip: Option<IpAddr>,
    ) -> Result<LoginRefused, StoreError> {
        let (account_key, ip_key) = Self::lock_keys(username, ip);
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
        Ok(if locked > 0 {
            LoginRefused::Locked(locked)
        } else {
            LoginRefused::Invalid
        })
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
