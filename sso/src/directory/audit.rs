//! The audit trail in the directory, for `GET {issuer}/admin/audit`: every
//! audit line the SSO writes to its log is also kept here, so an operator
//! can ask "what happened to alice" without a log pipeline.

use async_trait::async_trait;
use serde_json::Value;
use sqlx::Row;

use super::{DirectoryError, SqlDirectory};

/// One recorded event.
#[derive(Clone, Debug)]
pub struct AuditEvent {
    /// Sorts by time: microseconds since the epoch, zero-padded, then a
    /// random suffix (two replicas may record in the same microsecond).
    pub id: String,
    /// Unix seconds.
    pub at: i64,
    pub event: String,
    /// The user the event is about (`sub`).
    pub subject: Option<String>,
    /// Who did it, when not the subject (an admin: `by`).
    pub actor: Option<String>,
    pub client_id: Option<String>,
    /// The whole event as logged.
    pub details: Value,
}

impl AuditEvent {
    /// An event from the JSON the SSO logs; its well-known fields indexed.
    pub fn from_logged(details: Value) -> AuditEvent {
        let text = |key: &str| details[key].as_str().map(str::to_owned);
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        AuditEvent {
            id: format!("{micros:020}-{}", crate::oauth::random_id(6)),
            at: (micros / 1_000_000) as i64,
            event: text("event").unwrap_or_default(),
            subject: text("sub"),
            actor: text("by"),
            client_id: text("client_id"),
            details,
        }
    }
}

/// Which events, newest first.
#[derive(Debug, Default)]
pub struct AuditQuery<'a> {
    /// Older than this id (the previous page's last).
    pub before: Option<&'a str>,
    pub event: Option<&'a str>,
    pub subject: Option<&'a str>,
    pub limit: u32,
}

#[async_trait]
pub trait AuditTrail: Send + Sync {
    async fn record(&self, events: &[AuditEvent]) -> Result<(), DirectoryError>;
    async fn audit_events(&self, query: AuditQuery<'_>) -> Result<Vec<AuditEvent>, DirectoryError>;
    /// Deletes events older than `before` (Unix seconds); how many.
    async fn prune_audit(&self, before: i64) -> Result<u64, DirectoryError>;
}

#[async_trait]
impl AuditTrail for SqlDirectory {
    async fn record(&self, events: &[AuditEvent]) -> Result<(), DirectoryError> {
        let mut tx = self.pool.begin().await?;
        for event in events {
            sqlx::query(
                "INSERT INTO audit_events (id, at, event, subject, actor, client_id, details) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&event.id)
            .bind(event.at)
            .bind(&event.event)
            .bind(&event.subject)
            .bind(&event.actor)
            .bind(&event.client_id)
            .bind(event.details.to_string())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn prune_audit(&self, before: i64) -> Result<u64, DirectoryError> {
        let done = sqlx::query("DELETE FROM audit_events WHERE at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn audit_events(&self, query: AuditQuery<'_>) -> Result<Vec<AuditEvent>, DirectoryError> {
        // Conditions that do not apply compare a parameter with itself
        // (NULL), which keeps one statement and bound parameters only.
        let rows = sqlx::query(
            "SELECT id, at, event, subject, actor, client_id, details FROM audit_events \
             WHERE ($1 IS NULL OR id < $1) AND ($2 IS NULL OR event = $2) \
             AND ($3 IS NULL OR subject = $3) ORDER BY id DESC LIMIT $4",
        )
        .bind(query.before)
        .bind(query.event)
        .bind(query.subject)
        .bind(i64::from(query.limit.clamp(1, super::MAX_PAGE)))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let details: String = row.try_get("details")?;
                Ok(AuditEvent {
                    id: row.try_get("id")?,
                    at: row.try_get("at")?,
                    event: row.try_get("event")?,
                    subject: row.try_get("subject")?,
                    actor: row.try_get("actor")?,
                    client_id: row.try_get("client_id")?,
                    details: serde_json::from_str(&details)?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn events_page_newest_first_and_filter() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("d.db").display());
        let d = SqlDirectory::open(&url, 1, std::time::Duration::from_secs(5))
            .await
            .unwrap();
        let mut events = Vec::new();
        for i in 0..5 {
            let sub = if i % 2 == 0 { "alice" } else { "bob" };
            events.push(AuditEvent::from_logged(
                json!({ "event": "login", "sub": sub, "n": i }),
            ));
            tokio::time::sleep(std::time::Duration::from_micros(2)).await;
        }
        events.push(AuditEvent::from_logged(
            json!({ "event": "admin_user_deleted", "sub": "bob", "by": "root" }),
        ));
        d.record(&events).await.unwrap();
        let page = d
            .audit_events(AuditQuery {
                limit: 2,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(page.len(), 2);
        assert_eq!(page[0].event, "admin_user_deleted");
        assert_eq!(page[0].actor.as_deref(), Some("root"));
        let next = d
            .audit_events(AuditQuery {
                before: Some(&page[1].id),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(next.len(), 4);
        assert!(next.iter().all(|e| e.id < page[1].id));
        let alice = d
            .audit_events(AuditQuery {
                subject: Some("alice"),
                event: Some("login"),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            alice
                .iter()
                .map(|e| e.details["n"].as_i64().unwrap())
                .collect::<Vec<_>>(),
            vec![4, 2, 0]
        );
        // Retention: everything recorded before `now + 1` goes.
        let now = crate::keys::now_secs() as i64;
        assert_eq!(d.prune_audit(now - 3600).await.unwrap(), 0);
        assert_eq!(d.prune_audit(now + 1).await.unwrap(), 6);
    }
}
