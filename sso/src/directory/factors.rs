//! Second factors in the directory: a TOTP authenticator, recovery codes
//! and passkeys per user name. Every "use once" rule is one conditional
//! `UPDATE`, so two replicas (or two tabs) cannot both spend a code.

use async_trait::async_trait;
use sqlx::Row;

use super::{now, DirectoryError, SqlDirectory};

/// A user's TOTP authenticator.
#[derive(Clone, Debug)]
pub struct TotpRecord {
    /// The shared secret, base32 (RFC 4648, no padding).
    pub secret: String,
    /// When it was set up, Unix seconds.
    pub created_at: i64,
}

/// A registered passkey.
#[derive(Clone, Debug)]
pub struct PasskeyRecord {
    /// The credential id, base64url.
    pub credential_id: String,
    pub username: String,
    /// What the user called it.
    pub name: String,
    /// webauthn-rs's `Passkey`, as JSON.
    pub passkey: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
}

/// What the SSO needs of the directory for second factors.
#[async_trait]
pub trait Factors: Send + Sync {
    async fn totp(&self, username: &str) -> Result<Option<TotpRecord>, DirectoryError>;
    /// Sets (replaces) the user's authenticator; `step` is the time step
    /// of the code that confirmed it (spent: it cannot sign in).
    async fn set_totp(&self, username: &str, secret: &str, step: i64)
        -> Result<(), DirectoryError>;
    /// `false` when there was none.
    async fn remove_totp(&self, username: &str) -> Result<bool, DirectoryError>;
    /// Spends time step `step`: `true` only when it is newer than every
    /// step accepted before (a code is good once, and never an older one).
    async fn spend_totp_step(&self, username: &str, step: i64) -> Result<bool, DirectoryError>;
    /// Replaces the user's recovery codes (their digests).
    async fn set_recovery_codes(
        &self,
        username: &str,
        digests: &[String],
    ) -> Result<(), DirectoryError>;
    /// Spends a recovery code (its digest): `true` once.
    async fn spend_recovery_code(
        &self,
        username: &str,
        digest: &str,
    ) -> Result<bool, DirectoryError>;
    /// Unused recovery codes left.
    async fn recovery_codes_left(&self, username: &str) -> Result<i64, DirectoryError>;
    async fn passkeys(&self, username: &str) -> Result<Vec<PasskeyRecord>, DirectoryError>;
    /// `false` when the credential id is registered already.
    async fn add_passkey(&self, record: &PasskeyRecord) -> Result<bool, DirectoryError>;
    /// Stores the credential's new state (counter, backup flags) after a use.
    async fn passkey_used(&self, credential_id: &str, passkey: &str) -> Result<(), DirectoryError>;
    /// `false` when the user has no such passkey.
    async fn remove_passkey(
        &self,
        username: &str,
        credential_id: &str,
    ) -> Result<bool, DirectoryError>;
}

fn passkey_from(row: &sqlx::any::AnyRow) -> Result<PasskeyRecord, sqlx::Error> {
    Ok(PasskeyRecord {
        credential_id: row.try_get("credential_id")?,
        username: row.try_get("username")?,
        name: row.try_get("name")?,
        passkey: row.try_get("passkey")?,
        created_at: row.try_get("created_at")?,
        last_used_at: row.try_get("last_used_at")?,
    })
}

const PASSKEY_COLUMNS: &str = "credential_id, username, name, passkey, created_at, last_used_at";

#[async_trait]
impl Factors for SqlDirectory {
    async fn totp(&self, username: &str) -> Result<Option<TotpRecord>, DirectoryError> {
        let row =
            sqlx::query("SELECT secret, created_at FROM totp_credentials WHERE username = $1")
                .bind(username)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row
            .map(|row| -> Result<TotpRecord, sqlx::Error> {
                Ok(TotpRecord {
                    secret: row.try_get(0)?,
                    created_at: row.try_get(1)?,
                })
            })
            .transpose()?)
    }

    async fn set_totp(
        &self,
        username: &str,
        secret: &str,
        step: i64,
    ) -> Result<(), DirectoryError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM totp_credentials WHERE username = $1")
            .bind(username)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO totp_credentials (username, secret, last_step, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(username)
        .bind(secret)
        .bind(step)
        .bind(now())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn remove_totp(&self, username: &str) -> Result<bool, DirectoryError> {
        let done = sqlx::query("DELETE FROM totp_credentials WHERE username = $1")
            .bind(username)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn spend_totp_step(&self, username: &str, step: i64) -> Result<bool, DirectoryError> {
        let done = sqlx::query(
            "UPDATE totp_credentials SET last_step = $1 WHERE username = $2 AND last_step < $1",
        )
        .bind(step)
        .bind(username)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn set_recovery_codes(
        &self,
        username: &str,
        digests: &[String],
    ) -> Result<(), DirectoryError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM recovery_codes WHERE username = $1")
            .bind(username)
            .execute(&mut *tx)
            .await?;
        for digest in digests {
            sqlx::query("INSERT INTO recovery_codes (username, code_hash) VALUES ($1, $2)")
                .bind(username)
                .bind(digest)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn spend_recovery_code(
        &self,
        username: &str,
        digest: &str,
    ) -> Result<bool, DirectoryError> {
        let done = sqlx::query(
            "UPDATE recovery_codes SET used_at = $1 \
             WHERE username = $2 AND code_hash = $3 AND used_at IS NULL",
        )
        .bind(now())
        .bind(username)
        .bind(digest)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn recovery_codes_left(&self, username: &str) -> Result<i64, DirectoryError> {
        let row = sqlx::query(
            "SELECT COUNT(*) FROM recovery_codes WHERE username = $1 AND used_at IS NULL",
        )
        .bind(username)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get(0)?)
    }

    async fn passkeys(&self, username: &str) -> Result<Vec<PasskeyRecord>, DirectoryError> {
        let rows = sqlx::query(&format!(
            "SELECT {PASSKEY_COLUMNS} FROM passkeys WHERE username = $1 ORDER BY created_at, credential_id"
        ))
        .bind(username)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(passkey_from).collect::<Result<_, _>>()?)
    }

    async fn add_passkey(&self, record: &PasskeyRecord) -> Result<bool, DirectoryError> {
        let inserted = sqlx::query(
            "INSERT INTO passkeys (credential_id, username, name, passkey, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&record.credential_id)
        .bind(&record.username)
        .bind(&record.name)
        .bind(&record.passkey)
        .bind(now())
        .execute(&self.pool)
        .await;
        match inserted {
            Ok(_) => Ok(true),
            Err(e) if Self::is_unique_violation(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn passkey_used(&self, credential_id: &str, passkey: &str) -> Result<(), DirectoryError> {
        sqlx::query("UPDATE passkeys SET passkey = $1, last_used_at = $2 WHERE credential_id = $3")
            .bind(passkey)
            .bind(now())
            .bind(credential_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn remove_passkey(
        &self,
        username: &str,
        credential_id: &str,
    ) -> Result<bool, DirectoryError> {
        let done = sqlx::query("DELETE FROM passkeys WHERE username = $1 AND credential_id = $2")
            .bind(username)
            .bind(credential_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn directory() -> (tempfile::TempDir, SqlDirectory) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("d.db").display());
        let directory = SqlDirectory::open(&url, 1, std::time::Duration::from_secs(5))
            .await
            .unwrap();
        (dir, directory)
    }

    #[tokio::test]
    async fn codes_are_spent_once() {
        let (_dir, d) = directory().await;
        assert!(
            !d.spend_totp_step("alice", 10).await.unwrap(),
            "no authenticator"
        );
        d.set_totp("alice", "JBSWY3DPEHPK3PXP", 9).await.unwrap();
        assert!(
            !d.spend_totp_step("alice", 9).await.unwrap(),
            "the enrolment's code"
        );
        assert!(d.spend_totp_step("alice", 10).await.unwrap());
        assert!(!d.spend_totp_step("alice", 10).await.unwrap(), "replay");
        assert!(!d.spend_totp_step("alice", 9).await.unwrap(), "older step");
        assert!(d.spend_totp_step("alice", 11).await.unwrap());
        assert!(!d.spend_totp_step("alice", 11).await.unwrap());
        assert_eq!(
            d.totp("alice").await.unwrap().unwrap().secret,
            "JBSWY3DPEHPK3PXP"
        );

        d.set_recovery_codes("alice", &["a".into(), "b".into()])
            .await
            .unwrap();
        assert_eq!(d.recovery_codes_left("alice").await.unwrap(), 2);
        assert!(d.spend_recovery_code("alice", "a").await.unwrap());
        assert!(!d.spend_recovery_code("alice", "a").await.unwrap());
        assert!(
            !d.spend_recovery_code("bob", "b").await.unwrap(),
            "not bob's"
        );
        assert_eq!(d.recovery_codes_left("alice").await.unwrap(), 1);
        assert!(d.remove_totp("alice").await.unwrap());
        assert!(d.totp("alice").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn passkeys_belong_to_one_user() {
        let (_dir, d) = directory().await;
        let record = PasskeyRecord {
            credential_id: "cred-1".into(),
            username: "alice".into(),
            name: "laptop".into(),
            passkey: "{}".into(),
            created_at: 0,
            last_used_at: None,
        };
        assert!(d.add_passkey(&record).await.unwrap());
        assert!(!d.add_passkey(&record).await.unwrap(), "same credential id");
        assert_eq!(d.passkeys("alice").await.unwrap().len(), 1);
        d.passkey_used("cred-1", "{\"n\":1}").await.unwrap();
        let stored = d.passkeys("alice").await.unwrap().remove(0);
        assert_eq!(stored.passkey, "{\"n\":1}");
        assert!(stored.last_used_at.is_some());
        assert!(!d.remove_passkey("bob", "cred-1").await.unwrap());
        assert!(d.remove_passkey("alice", "cred-1").await.unwrap());
        assert!(d.passkeys("alice").await.unwrap().is_empty());
    }
}
