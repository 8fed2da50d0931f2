//! The identity directory: users who registered (or were created by an
//! admin), their roles and groups, and consents — everything a person
//! creates or is granted, kept across restarts in SQL.
//!
//! SQLite in a file by default (zero setup, one replica), PostgreSQL for
//! replicas (`directory.url`). One code path through sqlx's `any` driver,
//! with portable SQL; versioned migrations are embedded and applied at
//! start (PostgreSQL takes an advisory lock, so replicas starting together
//! migrate once).
//!
//! Ephemeral state (codes, login sessions, throttle counters, refresh
//! leases) stays in the store (memory or Redis).

use std::borrow::Cow;
use std::time::Duration;

use async_trait::async_trait;
use portcullis_config::sso::User;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::Row;

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("directory: {0}")]
    Database(#[from] sqlx::Error),
    #[error("directory migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// What the rest of the SSO needs of the directory.
#[async_trait]
pub trait Directory: Send + Sync {
    /// A user by name, with roles and groups.
    async fn user(&self, username: &str) -> Result<Option<User>, DirectoryError>;
    /// Creates a user; `false` when the name is taken (atomically: two
    /// replicas cannot both create it).
    async fn create_user(&self, user: &User) -> Result<bool, DirectoryError>;
    /// The scope a user granted a client, if any.
    async fn consent(
        &self,
        subject: &str,
        client_id: &str,
    ) -> Result<Option<String>, DirectoryError>;
    async fn grant_consent(
        &self,
        subject: &str,
        client_id: &str,
        scope: &str,
    ) -> Result<(), DirectoryError>;
}

/// The schema's versions, oldest first.
const MIGRATIONS: &[(i64, &str, &str)] = &[(
    1,
    "directory",
    include_str!("../migrations/0001_directory.sql"),
)];

fn migrator() -> Migrator {
    Migrator {
        migrations: Cow::Owned(
            MIGRATIONS
                .iter()
                .map(|(version, description, sql)| {
                    Migration::new(
                        *version,
                        Cow::Borrowed(*description),
                        MigrationType::Simple,
                        Cow::Borrowed(*sql),
                        false,
                    )
                })
                .collect(),
        ),
        ..Migrator::DEFAULT
    }
}

/// The directory on SQLite or PostgreSQL.
pub struct SqlDirectory {
    pool: sqlx::AnyPool,
}

fn now() -> i64 {
    crate::keys::now_secs() as i64
}

impl SqlDirectory {
    /// Connects (`sqlite://PATH?mode=rwc` or `postgres://…`) and migrates.
    pub async fn open(
        url: &str,
        max_connections: u32,
        timeout: Duration,
    ) -> Result<SqlDirectory, DirectoryError> {
        sqlx::any::install_default_drivers();
        let postgres = url.starts_with("postgres://") || url.starts_with("postgresql://");
        let pool = AnyPoolOptions::new()
            // SQLite serialises writers anyway; one connection avoids
            // `database is locked` between them.
            .max_connections(if postgres { max_connections.max(1) } else { 1 })
            .acquire_timeout(timeout)
            .connect(url)
            .await?;
        if !postgres {
            // Foreign keys (ON DELETE CASCADE) are off by default in SQLite.
            sqlx::query("PRAGMA foreign_keys = ON")
                .execute(&pool)
                .await?;
        }
        migrator().run(&pool).await?;
        Ok(SqlDirectory { pool })
    }

    /// Applies the migrations only (`portcullis sso migrate`).
    pub async fn migrate(url: &str, timeout: Duration) -> Result<(), DirectoryError> {
        Self::open(url, 1, timeout).await.map(drop)
    }

    async fn names(
        &self,
        table: &str,
        column: &str,
        user_id: &str,
    ) -> Result<Vec<String>, DirectoryError> {
        let sql = format!("SELECT {column} FROM {table} WHERE user_id = $1 ORDER BY {column}");
        let rows = sqlx::query(&sql)
            .bind(user_id)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .filter_map(|r| r.try_get::<String, _>(0).ok())
            .collect())
    }

    fn is_unique_violation(e: &sqlx::Error) -> bool {
        matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
    }
}

fn user_from(row: &AnyRow) -> Result<(String, User), sqlx::Error> {
    Ok((
        row.try_get("id")?,
        User {
            username: row.try_get("username")?,
            password_hash: row.try_get("password_hash")?,
            email: row.try_get("email")?,
            name: row.try_get("name")?,
            roles: Vec::new(),
            groups: Vec::new(),
            disabled: row.try_get::<i64, _>("disabled")? != 0,
        },
    ))
}

#[async_trait]
impl Directory for SqlDirectory {
    async fn user(&self, username: &str) -> Result<Option<User>, DirectoryError> {
        let row = sqlx::query(
            "SELECT id, username, password_hash, email, name, disabled FROM users WHERE username = $1",
        )
        .bind(username)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let (id, mut user) = user_from(&row)?;
        user.roles = self.names("user_roles", "role", &id).await?;
        user.groups = self.names("user_groups", "group_name", &id).await?;
        Ok(Some(user))
    }

    async fn create_user(&self, user: &User) -> Result<bool, DirectoryError> {
        let id = crate::oauth::random_id(16);
        let now = now();
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO users (id, username, email, name, password_hash, disabled, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
        )
        .bind(&id)
        .bind(&user.username)
        .bind(&user.email)
        .bind(&user.name)
        .bind(&user.password_hash)
        .bind(i64::from(user.disabled))
        .bind(now)
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if Self::is_unique_violation(&e) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        for role in &user.roles {
            sqlx::query("INSERT INTO user_roles (user_id, role) VALUES ($1, $2)")
                .bind(&id)
                .bind(role)
                .execute(&mut *tx)
                .await?;
        }
        for group in &user.groups {
            sqlx::query("INSERT INTO user_groups (user_id, group_name) VALUES ($1, $2)")
                .bind(&id)
                .bind(group)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn consent(
        &self,
        subject: &str,
        client_id: &str,
    ) -> Result<Option<String>, DirectoryError> {
        let row = sqlx::query("SELECT scope FROM consents WHERE subject = $1 AND client_id = $2")
            .bind(subject)
            .bind(client_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.and_then(|r| r.try_get::<String, _>(0).ok()))
    }

    async fn grant_consent(
        &self,
        subject: &str,
        client_id: &str,
        scope: &str,
    ) -> Result<(), DirectoryError> {
        // An upsert both databases speak.
        sqlx::query(
            "INSERT INTO consents (subject, client_id, scope, granted_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (subject, client_id) DO UPDATE SET scope = excluded.scope, granted_at = excluded.granted_at",
        )
        .bind(subject)
        .bind(client_id)
        .bind(scope)
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> User {
        User {
            username: "alice".into(),
            password_hash: "$argon2id$x".into(),
            email: Some("alice@example.com".into()),
            name: None,
            roles: vec!["staff".into(), "admin".into()],
            groups: vec!["ops".into()],
            disabled: false,
        }
    }

    #[tokio::test]
    async fn users_and_consents_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("d.db").display());
        let directory = SqlDirectory::open(&url, 4, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(directory.create_user(&alice()).await.unwrap());
        assert!(!directory.create_user(&alice()).await.unwrap(), "taken");
        directory
            .grant_consent("alice", "web", "openid")
            .await
            .unwrap();
        directory
            .grant_consent("alice", "web", "openid profile")
            .await
            .unwrap();
        drop(directory);

        let again = SqlDirectory::open(&url, 4, Duration::from_secs(5))
            .await
            .unwrap();
        let user = again.user("alice").await.unwrap().unwrap();
        assert_eq!(user.email.as_deref(), Some("alice@example.com"));
        assert_eq!(user.roles, ["admin", "staff"]);
        assert_eq!(user.groups, ["ops"]);
        assert!(again.user("bob").await.unwrap().is_none());
        assert_eq!(
            again.consent("alice", "web").await.unwrap().as_deref(),
            Some("openid profile")
        );
        assert_eq!(again.consent("alice", "other").await.unwrap(), None);
    }
}
