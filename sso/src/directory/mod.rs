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
use portcullis_config::sso::{Client, User};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::Row;

mod audit;
mod factors;

pub use audit::{AuditEvent, AuditQuery, AuditTrail};
pub use factors::{Factors, PasskeyRecord};

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("directory: {0}")]
    Database(#[from] sqlx::Error),
    #[error("directory migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("directory: a stored client does not read: {0}")]
    Client(#[from] serde_json::Error),
}

/// A user as the admin API shows it.
#[derive(Clone, Debug)]
pub struct UserRecord {
    pub user: User,
    /// Unix seconds.
    pub created_at: i64,
    pub updated_at: i64,
    /// The user must choose a new password at the next sign-in.
    pub password_change_required: bool,
}

/// What an admin may change of a user (absent: unchanged).
#[derive(Debug, Default)]
pub struct UserChange {
    pub email: Option<Option<String>>,
    pub name: Option<Option<String>>,
    pub roles: Option<Vec<String>>,
    pub groups: Option<Vec<String>>,
    pub disabled: Option<bool>,
    pub password_hash: Option<String>,
    pub password_change_required: Option<bool>,
}

/// Most users a page of the list holds.
pub const MAX_PAGE: u32 = 500;

/// Roles or groups: both are names given to users.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Label {
    Role,
    Group,
}

impl Label {
    fn table(self) -> (&'static str, &'static str) {
        match self {
            Label::Role => ("user_roles", "role"),
            Label::Group => ("user_groups", "group_name"),
        }
    }
}

/// What the rest of the SSO needs of the directory: users, labels,
/// clients and consents here; second factors and the audit trail in their
/// own modules.
#[async_trait]
pub trait Directory: Factors + AuditTrail + Send + Sync {
    /// A user by name, with roles and groups.
    async fn user(&self, username: &str) -> Result<Option<User>, DirectoryError>;
    /// Creates a user; `false` when the name is taken (atomically: two
    /// replicas cannot both create it).
    async fn create_user(&self, user: &User) -> Result<bool, DirectoryError>;
    /// A user with its times.
    async fn user_record(&self, username: &str) -> Result<Option<UserRecord>, DirectoryError>;
    /// Users by name after `after` (keyset paging), whose name or email
    /// contains `search`; at most `limit` ([`MAX_PAGE`]).
    async fn users(
        &self,
        search: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<UserRecord>, DirectoryError>;
    /// Applies a change; `false` when there is no such user.
    async fn change_user(&self, username: &str, change: UserChange)
        -> Result<bool, DirectoryError>;
    /// `false` when there is no such user.
    async fn delete_user(&self, username: &str) -> Result<bool, DirectoryError>;
    /// Every role (or group) given to a directory user, with how many
    /// users have it, by name.
    async fn labels(&self, label: Label) -> Result<Vec<(String, i64)>, DirectoryError>;
    /// The users with a role (or group), by name after `after`.
    async fn members(
        &self,
        label: Label,
        name: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>, DirectoryError>;
    /// Gives (`true`) or takes a role or group; `false` when there is no
    /// such user.
    async fn assign(
        &self,
        label: Label,
        username: &str,
        name: &str,
        given: bool,
    ) -> Result<bool, DirectoryError>;
    /// A client registered at run time.
    async fn client(&self, client_id: &str) -> Result<Option<Client>, DirectoryError>;
    /// Clients by id after `after`, at most `limit`.
    async fn clients(&self, after: Option<&str>, limit: u32)
        -> Result<Vec<Client>, DirectoryError>;
    /// `false` when the id is taken.
    async fn create_client(&self, client: &Client) -> Result<bool, DirectoryError>;
    /// `false` when there is no such client.
    async fn replace_client(&self, client: &Client) -> Result<bool, DirectoryError>;
    /// `false` when there is no such client.
    async fn delete_client(&self, client_id: &str) -> Result<bool, DirectoryError>;
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
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "directory",
        include_str!("../../migrations/0001_directory.sql"),
    ),
    (
        2,
        "clients",
        include_str!("../../migrations/0002_clients.sql"),
    ),
    (
        3,
        "factors and audit",
        include_str!("../../migrations/0003_factors_audit.sql"),
    ),
    (
        4,
        "password change",
        include_str!("../../migrations/0004_password_change.sql"),
    ),
];

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

    /// `names` for several users at once: user id → names, sorted.
    async fn names_of_many(
        &self,
        table: &str,
        column: &str,
        user_ids: &[String],
    ) -> Result<std::collections::HashMap<String, Vec<String>>, DirectoryError> {
        let mut by_user: std::collections::HashMap<String, Vec<String>> =
            std::collections::HashMap::new();
        if user_ids.is_empty() {
            return Ok(by_user);
        }
        let placeholders: Vec<String> = (1..=user_ids.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT user_id, {column} FROM {table} WHERE user_id IN ({}) ORDER BY {column}",
            placeholders.join(", ")
        );
        let mut query = sqlx::query(&sql);
        for id in user_ids {
            query = query.bind(id);
        }
        for row in query.fetch_all(&self.pool).await? {
            by_user
                .entry(row.try_get(0)?)
                .or_default()
                .push(row.try_get(1)?);
        }
        Ok(by_user)
    }

    /// Deletes a user or a client (`delete`, one key) and, in the same
    /// transaction, the rows of other tables that name it (table, column
    /// holding the key); `false` when nothing was deleted.
    async fn delete_with_dependents(
        &self,
        delete: &str,
        dependents: &[(&str, &str)],
        key: &str,
    ) -> Result<bool, DirectoryError> {
        let mut tx = self.pool.begin().await?;
        let deleted = sqlx::query(delete)
            .bind(key)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        for (table, column) in dependents {
            sqlx::query(&format!("DELETE FROM {table} WHERE {column} = $1"))
                .bind(key)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(deleted > 0)
    }

    fn is_unique_violation(e: &sqlx::Error) -> bool {
        matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
    }
}

/// `LIKE` text that matches `search` literally anywhere.
fn like_pattern(search: &str) -> String {
    let escaped = search
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

/// A user's id, inside a transaction that goes on to change the user.
async fn user_id(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    username: &str,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query("SELECT id FROM users WHERE username = $1")
        .bind(username)
        .fetch_optional(&mut **tx)
        .await?
        .map(|r| r.try_get(0))
        .transpose()
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

    async fn user_record(&self, username: &str) -> Result<Option<UserRecord>, DirectoryError> {
        let row = sqlx::query(
            "SELECT created_at, updated_at, password_change_required FROM users WHERE username = $1",
        )
            .bind(username)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let Some(user) = self.user(username).await? else {
            return Ok(None);
        };
        Ok(Some(UserRecord {
            user,
            created_at: row.try_get(0)?,
            updated_at: row.try_get(1)?,
            password_change_required: row.try_get::<i64, _>(2)? != 0,
        }))
    }

    async fn users(
        &self,
        search: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<UserRecord>, DirectoryError> {
        // Case-insensitive in both databases (SQLite's LIKE is, PostgreSQL's
        // is not).
        let pattern = like_pattern(&search.unwrap_or("").to_lowercase());
        let rows = sqlx::query(
            "SELECT id, username, password_hash, email, name, disabled, created_at, updated_at, \
             password_change_required \
             FROM users WHERE username > $1 \
             AND (LOWER(username) LIKE $2 ESCAPE '\\' OR LOWER(COALESCE(email, '')) LIKE $2 ESCAPE '\\') \
             ORDER BY username LIMIT $3",
        )
        .bind(after.unwrap_or(""))
        .bind(&pattern)
        .bind(i64::from(limit.clamp(1, MAX_PAGE)))
        .fetch_all(&self.pool)
        .await?;
        let mut records = Vec::with_capacity(rows.len());
        let mut ids = Vec::with_capacity(rows.len());
        for row in &rows {
            let (id, user) = user_from(row)?;
            ids.push(id);
            records.push(UserRecord {
                user,
                created_at: row.try_get("created_at")?,
                updated_at: row.try_get("updated_at")?,
                password_change_required: row.try_get::<i64, _>("password_change_required")? != 0,
            });
        }
        // Roles and groups of the whole page: two queries, not two per user.
        let mut roles = self.names_of_many("user_roles", "role", &ids).await?;
        let mut groups = self
            .names_of_many("user_groups", "group_name", &ids)
            .await?;
        for (record, id) in records.iter_mut().zip(&ids) {
            record.user.roles = roles.remove(id).unwrap_or_default();
            record.user.groups = groups.remove(id).unwrap_or_default();
        }
        Ok(records)
    }

    async fn change_user(
        &self,
        username: &str,
        change: UserChange,
    ) -> Result<bool, DirectoryError> {
        let mut tx = self.pool.begin().await?;
        let Some(id) = user_id(&mut tx, username).await? else {
            return Ok(false);
        };
        let set =
            |column: &str| format!("UPDATE users SET {column} = $1, updated_at = $2 WHERE id = $3");
        let now = now();
        let texts = [
            ("email", change.email),
            ("name", change.name),
            ("password_hash", change.password_hash.map(Some)),
        ];
        for (column, value) in texts {
            let Some(value) = value else { continue };
            sqlx::query(&set(column))
                .bind(value)
                .bind(now)
                .bind(&id)
                .execute(&mut *tx)
                .await?;
        }
        let flags = [
            ("disabled", change.disabled),
            ("password_change_required", change.password_change_required),
        ];
        for (column, value) in flags {
            let Some(value) = value else { continue };
            sqlx::query(&set(column))
                .bind(i64::from(value))
                .bind(now)
                .bind(&id)
                .execute(&mut *tx)
                .await?;
        }
        for (table, column, values) in [
            ("user_roles", "role", change.roles),
            ("user_groups", "group_name", change.groups),
        ] {
            let Some(values) = values else { continue };
            sqlx::query(&format!("DELETE FROM {table} WHERE user_id = $1"))
                .bind(&id)
                .execute(&mut *tx)
                .await?;
            let mut unique = values;
            unique.sort();
            unique.dedup();
            for value in unique {
                sqlx::query(&format!(
                    "INSERT INTO {table} (user_id, {column}) VALUES ($1, $2)"
                ))
                .bind(&id)
                .bind(value)
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query("UPDATE users SET updated_at = $1 WHERE id = $2")
                .bind(now)
                .bind(&id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn delete_user(&self, username: &str) -> Result<bool, DirectoryError> {
        self.delete_with_dependents(
            "DELETE FROM users WHERE username = $1",
            &[
                ("consents", "subject"),
                ("totp_credentials", "username"),
                ("recovery_codes", "username"),
                ("passkeys", "username"),
            ],
            username,
        )
        .await
    }

    async fn labels(&self, label: Label) -> Result<Vec<(String, i64)>, DirectoryError> {
        let (table, column) = label.table();
        let sql =
            format!("SELECT {column}, COUNT(*) FROM {table} GROUP BY {column} ORDER BY {column}");
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect()
    }

    async fn members(
        &self,
        label: Label,
        name: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>, DirectoryError> {
        let (table, column) = label.table();
        let sql = format!(
            "SELECT u.username FROM users u JOIN {table} l ON l.user_id = u.id \
             WHERE l.{column} = $1 AND u.username > $2 ORDER BY u.username LIMIT $3"
        );
        let rows = sqlx::query(&sql)
            .bind(name)
            .bind(after.unwrap_or(""))
            .bind(i64::from(limit.clamp(1, MAX_PAGE)))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|row| Ok(row.try_get(0)?)).collect()
    }

    async fn assign(
        &self,
        label: Label,
        username: &str,
        name: &str,
        given: bool,
    ) -> Result<bool, DirectoryError> {
        let (table, column) = label.table();
        let mut tx = self.pool.begin().await?;
        let Some(id) = user_id(&mut tx, username).await? else {
            return Ok(false);
        };
        let sql = if given {
            format!(
                "INSERT INTO {table} (user_id, {column}) VALUES ($1, $2) \
                 ON CONFLICT (user_id, {column}) DO NOTHING"
            )
        } else {
            format!("DELETE FROM {table} WHERE user_id = $1 AND {column} = $2")
        };
        sqlx::query(&sql)
            .bind(&id)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE users SET updated_at = $1 WHERE id = $2")
            .bind(now())
            .bind(&id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn client(&self, client_id: &str) -> Result<Option<Client>, DirectoryError> {
        let row = sqlx::query("SELECT definition FROM clients WHERE client_id = $1")
            .bind(client_id)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(row) => Ok(Some(serde_json::from_str(&row.try_get::<String, _>(0)?)?)),
            None => Ok(None),
        }
    }

    async fn clients(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Client>, DirectoryError> {
        let rows = sqlx::query(
            "SELECT definition FROM clients WHERE client_id > $1 ORDER BY client_id LIMIT $2",
        )
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit.clamp(1, MAX_PAGE)))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok(serde_json::from_str(&row.try_get::<String, _>(0)?)?))
            .collect()
    }

    async fn create_client(&self, client: &Client) -> Result<bool, DirectoryError> {
        let inserted = sqlx::query(
            "INSERT INTO clients (client_id, definition, created_at, updated_at) VALUES ($1, $2, $3, $3)",
        )
        .bind(&client.client_id)
        .bind(serde_json::to_string(client)?)
        .bind(now())
        .execute(&self.pool)
        .await;
        match inserted {
            Ok(_) => Ok(true),
            Err(e) if Self::is_unique_violation(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn replace_client(&self, client: &Client) -> Result<bool, DirectoryError> {
        let done =
            sqlx::query("UPDATE clients SET definition = $1, updated_at = $2 WHERE client_id = $3")
                .bind(serde_json::to_string(client)?)
                .bind(now())
                .bind(&client.client_id)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn delete_client(&self, client_id: &str) -> Result<bool, DirectoryError> {
        self.delete_with_dependents(
            "DELETE FROM clients WHERE client_id = $1",
            &[("consents", "client_id")],
            client_id,
        )
        .await
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

    #[tokio::test]
    async fn users_change_list_by_pages_and_go() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("d.db").display());
        let directory = SqlDirectory::open(&url, 4, Duration::from_secs(5))
            .await
            .unwrap();
        for name in ["carol", "alice", "bob_1", "bob%2"] {
            let mut user = alice();
            user.username = name.into();
            user.email = Some(format!("{name}@example.com"));
            assert!(directory.create_user(&user).await.unwrap());
        }
        let names = |records: Vec<UserRecord>| -> Vec<String> {
            records.into_iter().map(|r| r.user.username).collect()
        };
        assert_eq!(
            names(directory.users(None, None, 2).await.unwrap()),
            ["alice", "bob%2"]
        );
        assert_eq!(
            names(directory.users(None, Some("bob%2"), 2).await.unwrap()),
            ["bob_1", "carol"]
        );
        // `%` and `_` are literal in a search.
        assert_eq!(
            names(directory.users(Some("%"), None, 10).await.unwrap()),
            ["bob%2"]
        );
        // (An unescaped `_` would match `bob%2` too.)
        assert_eq!(
            names(directory.users(Some("b_"), None, 10).await.unwrap()),
            ["bob_1"]
        );
        assert_eq!(
            names(directory.users(Some("b_1"), None, 10).await.unwrap()),
            ["bob_1"]
        );

        let changed = directory
            .change_user(
                "carol",
                UserChange {
                    name: Some(Some("Carol".into())),
                    roles: Some(vec!["b".into(), "a".into(), "a".into()]),
                    disabled: Some(true),
                    ..UserChange::default()
                },
            )
            .await
            .unwrap();
        assert!(changed);
        let carol = directory.user("carol").await.unwrap().unwrap();
        assert_eq!(
            (carol.name.as_deref(), carol.disabled),
            (Some("Carol"), true)
        );
        assert_eq!(carol.roles, ["a", "b"]);
        assert_eq!(carol.groups, ["ops"], "unchanged");
        assert!(!directory
            .change_user("nobody", UserChange::default())
            .await
            .unwrap());
        directory
            .grant_consent("carol", "web", "openid")
            .await
            .unwrap();
        assert!(directory.delete_user("carol").await.unwrap());
        assert!(!directory.delete_user("carol").await.unwrap());
        assert!(directory.user("carol").await.unwrap().is_none());
        assert_eq!(directory.consent("carol", "web").await.unwrap(), None);
        // Roles given and taken one at a time, and who has them.
        assert!(directory
            .assign(Label::Role, "alice", "auditor", true)
            .await
            .unwrap());
        assert!(
            directory
                .assign(Label::Role, "alice", "auditor", true)
                .await
                .unwrap(),
            "idempotent"
        );
        assert!(!directory
            .assign(Label::Role, "nobody", "auditor", true)
            .await
            .unwrap());
        let roles = directory.labels(Label::Role).await.unwrap();
        assert!(roles.contains(&("auditor".to_owned(), 1)), "{roles:?}");
        assert!(roles.contains(&("admin".to_owned(), 3)), "{roles:?}");
        assert_eq!(
            directory
                .members(Label::Role, "admin", None, 2)
                .await
                .unwrap(),
            ["alice", "bob%2"]
        );
        assert!(directory
            .assign(Label::Role, "alice", "auditor", false)
            .await
            .unwrap());
        assert!(directory
            .members(Label::Role, "auditor", None, 10)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            directory.labels(Label::Group).await.unwrap(),
            [("ops".to_owned(), 3)]
        );
        // The name is free again, with nothing of the old account.
        let mut fresh = alice();
        fresh.username = "carol".into();
        fresh.roles.clear();
        assert!(directory.create_user(&fresh).await.unwrap());
        assert!(directory
            .user("carol")
            .await
            .unwrap()
            .unwrap()
            .roles
            .is_empty());
        assert_eq!(
            names(directory.users(Some("CAROL"), None, 10).await.unwrap()),
            ["carol"]
        );
    }
}
