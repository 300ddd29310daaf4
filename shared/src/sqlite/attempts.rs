//! The attempt log on SQLite: one row per attempt (its endpoint's listing is one index
//! range read backwards), one row per kept message, and recoveries. A delivery batch's
//! attempts are one transaction.

use super::db::{Durability, backend};
use super::store::SqliteStore;
use super::{execute, from_json, to_json, upsert};
use crate::attempts::{
    Attempt, EndpointKey, FailingMessages, LogEndpoint, LoggedAttempt, Recovery, StatusFilter,
    StoredMessage,
};
use crate::clock::Timestamp;
use crate::job::MessageId;
use crate::ports::{AttemptLog, BackendResult, Page};
use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::HashSet;
use std::sync::Arc;

fn stored_message(
    conn: &Connection,
    endpoint: &str,
    message_id: &str,
) -> BackendResult<Option<StoredMessage>> {
    let body: Option<String> = conn
        .prepare_cached("SELECT body FROM messages WHERE endpoint = ?1 AND message_id = ?2")
        .and_then(|mut s| {
            s.query_row(params![endpoint, message_id], |r| r.get(0))
                .optional()
        })
        .map_err(backend)?;
    body.map(|b| from_json("kept message", &b)).transpose()
}

/// The `acked` column's value a status filter selects (`None`: any).
fn acked_filter(filter: StatusFilter) -> Option<bool> {
    match filter {
        StatusFilter::All => None,
        StatusFilter::Failed => Some(false),
        StatusFilter::Acked => Some(true),
    }
}

/// Rows one pruning transaction deletes at most, so the writer is never held for long.
const PRUNE_CHUNK: i64 = 5_000;

/// What a pruning deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Delivery attempts older than the retention.
    pub attempts: usize,
    /// Kept (delivered or failed) messages whose latest attempt is older than the retention.
    pub messages: usize,
    /// Recoveries started before the retention.
    pub recoveries: usize,
    /// Expired access tokens.
    pub tokens: usize,
    /// Per-person "counted" markers of syncs finished before the retention.
    pub sync_markers: usize,
}

impl SqliteStore {
    /// Deletes what the retention no longer keeps, as of `now_ms` (epoch ms): attempts,
    /// kept messages and recoveries older than the attempt retention (the DynamoDB
    /// adapter's TTL), expired tokens, and the per-person "counted" markers of syncs that
    /// finished longer ago than the retention. In chunks, each its own transaction.
    pub async fn prune(&self, now_ms: i64) -> BackendResult<Pruned> {
        let cutoff =
            now_ms.saturating_sub(self.attempt_retention.as_millis().min(i64::MAX as u128) as i64);
        self.note_finished_syncs(now_ms).await?;
        Ok(Pruned {
            attempts: self
                .delete_before("attempts", "rowid", "at_ms", cutoff)
                .await?,
            messages: self
                .delete_before("messages", "rowid", "last_attempt_ms", cutoff)
                .await?,
            recoveries: self
                .delete_before("recoveries", "rowid", "started_at_ms", cutoff)
                .await?,
            tokens: self
                .delete_before("tokens", "hash", "expires_at", now_ms / 1000)
                .await?,
            // A marker keeps a late duplicate of a sync's job (at least once) from counting
            // its person twice; once the sync has finished for the retention, its counters
            // are final history, kept on the sync's row.
            sync_markers: self
                .delete_chunked(
                    "DELETE FROM sync_counted WHERE (application, sync_id, person) IN
                     (SELECT c.application, c.sync_id, c.person
                      FROM syncs s JOIN sync_counted c
                        ON c.application = s.application AND c.sync_id = s.sync_id
                      WHERE s.finished_at_ms < ?1 LIMIT ?2)",
                    cutoff,
                )
                .await?,
        })
    }

    /// Notes `now_ms` as the finishing time of every sync finished since the last
    /// pruning: a fan-out sync whose completion was claimed, or one its driver saved as
    /// completed or cancelled. (Noted here rather than by the writes that finish it, which
    /// know no time; a sync's markers so live the retention and up to one pruning interval
    /// after it finished.)
    async fn note_finished_syncs(&self, now_ms: i64) -> BackendResult<()> {
        self.db
            .write(Durability::Normal, move |conn| {
                execute(
                    conn,
                    "UPDATE syncs SET finished_at_ms = ?1
                     WHERE finished_at_ms IS NULL
                       AND (completion_claimant IS NOT NULL
                            OR json_extract(body, '$.state') IN ('completed', 'cancelled'))",
                    [now_ms],
                )?;
                Ok(())
            })
            .await
    }

    /// Deletes the rows of `table` whose `column` is before `bound`, in chunks, each row
    /// by `key` (its rowid, or the primary key of a table without one).
    async fn delete_before(
        &self,
        table: &str,
        key: &str,
        column: &str,
        bound: i64,
    ) -> BackendResult<usize> {
        self.delete_chunked(
            format!(
                "DELETE FROM {table} WHERE {key} IN
                 (SELECT {key} FROM {table} WHERE {column} < ?1 LIMIT ?2)"
            ),
            bound,
        )
        .await
    }

    /// Runs a chunked delete (`?1` the bound, `?2` the chunk) until a chunk comes back short.
    async fn delete_chunked(&self, sql: impl Into<String>, bound: i64) -> BackendResult<usize> {
        let sql: Arc<str> = sql.into().into();
        let mut deleted = 0;
        loop {
            let sql = sql.clone();
            let n = self
                .db
                .write(Durability::Normal, move |conn| {
                    execute(conn, &sql, params![bound, PRUNE_CHUNK])
                })
                .await?;
            deleted += n;
            if (n as i64) < PRUNE_CHUNK {
                return Ok(deleted);
            }
        }
    }
}

#[async_trait]
impl AttemptLog for SqliteStore {
    async fn record(&self, attempts: &[LoggedAttempt]) -> BackendResult<()> {
        let mut rows = Vec::with_capacity(attempts.len());
        for logged in attempts {
            let a = &logged.attempt;
            let message = StoredMessage::of(logged);
            rows.push((
                a.endpoint.as_str().to_owned(),
                a.sort_key(),
                a.message_id.as_str().to_owned(),
                a.at.epoch_ms(),
                a.outcome.is_acked(),
                to_json(a)?,
                to_json(&message)?,
            ));
        }
        // Normal: a log entry lost to a power loss costs no delivery.
        self.db
            .write(Durability::Normal, move |conn| {
                let mut attempt = conn
                    .prepare_cached(
                        "INSERT INTO attempts (endpoint, sort_key, message_id, at_ms, acked, body)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                         ON CONFLICT (endpoint, sort_key) DO UPDATE SET
                             acked = excluded.acked, body = excluded.body",
                    )
                    .map_err(backend)?;
                let mut message = conn
                    .prepare_cached(
                        "INSERT INTO messages (endpoint, message_id, last_attempt_ms, acked, body)
                         VALUES (?1, ?2, ?3, ?4, ?5)
                         ON CONFLICT (endpoint, message_id) DO UPDATE SET
                             last_attempt_ms = excluded.last_attempt_ms,
                             acked = excluded.acked, body = excluded.body",
                    )
                    .map_err(backend)?;
                for (endpoint, sort_key, message_id, at_ms, acked, attempt_body, message_body) in
                    &rows
                {
                    attempt
                        .execute(params![
                            endpoint,
                            sort_key,
                            message_id,
                            at_ms,
                            acked,
                            attempt_body
                        ])
                        .map_err(backend)?;
                    message
                        .execute(params![endpoint, message_id, at_ms, acked, message_body])
                        .map_err(backend)?;
                }
                Ok(())
            })
            .await
    }

    async fn attempts(
        &self,
        endpoint: &LogEndpoint,
        filter: StatusFilter,
        after: Option<&str>,
        limit: usize,
    ) -> BackendResult<Page<Attempt>> {
        let (endpoint, after) = (endpoint.key.as_str().to_owned(), after.map(str::to_owned));
        self.db
            .read(move |conn| {
                // Sort keys start with 13 digits: "~" sorts after every one of them.
                let before = after.unwrap_or_else(|| "~".to_owned());
                let mut statement = conn
                    .prepare_cached(
                        "SELECT body FROM attempts
                         WHERE endpoint = ?1 AND sort_key < ?2 AND (?3 IS NULL OR acked = ?3)
                         ORDER BY sort_key DESC LIMIT ?4",
                    )
                    .map_err(backend)?;
                let rows = statement
                    .query_map(
                        params![endpoint, before, acked_filter(filter), limit as i64 + 1],
                        |r| r.get::<_, String>(0),
                    )
                    .map_err(backend)?;
                let mut items: Vec<Attempt> = Vec::new();
                for row in rows {
                    items.push(from_json("attempt", &row.map_err(backend)?)?);
                }
                Ok(Page::from_overfetch(items, limit, Attempt::sort_key))
            })
            .await
    }

    async fn message(
        &self,
        endpoint: &LogEndpoint,
        message_id: &MessageId,
    ) -> BackendResult<Option<(StoredMessage, Vec<Attempt>)>> {
        let (endpoint, message_id) = (
            endpoint.key.as_str().to_owned(),
            message_id.as_str().to_owned(),
        );
        self.db
            .read(move |conn| {
                let Some(message) = stored_message(conn, &endpoint, &message_id)? else {
                    return Ok(None);
                };
                let mut statement = conn
                    .prepare_cached(
                        "SELECT body FROM attempts WHERE endpoint = ?1 AND message_id = ?2
                         ORDER BY sort_key",
                    )
                    .map_err(backend)?;
                let rows = statement
                    .query_map(params![endpoint, message_id], |r| r.get::<_, String>(0))
                    .map_err(backend)?;
                let mut attempts = Vec::new();
                for row in rows {
                    attempts.push(from_json("attempt", &row.map_err(backend)?)?);
                }
                Ok(Some((message, attempts)))
            })
            .await
    }

    async fn failed_since(
        &self,
        endpoint: &LogEndpoint,
        since: Timestamp,
        limit: usize,
    ) -> BackendResult<FailingMessages> {
        let endpoint = endpoint.key.as_str().to_owned();
        let since_ms = since.epoch_ms();
        self.db
            .read(move |conn| {
                let from = format!("{:013}", since_ms.max(0));
                let mut statement = conn
                    .prepare_cached(
                        "SELECT a.message_id, m.body FROM attempts a
                         JOIN messages m ON m.endpoint = a.endpoint AND m.message_id = a.message_id
                         WHERE a.endpoint = ?1 AND a.sort_key >= ?2 AND a.acked = 0 AND m.acked = 0
                         ORDER BY a.sort_key",
                    )
                    .map_err(backend)?;
                let mut rows = statement.query(params![endpoint, from]).map_err(backend)?;
                let mut seen = HashSet::new();
                let mut items = Vec::new();
                while items.len() <= limit
                    && let Some(row) = rows.next().map_err(backend)?
                {
                    let message_id: String = row.get(0).map_err(backend)?;
                    if seen.insert(message_id) {
                        let body: String = row.get(1).map_err(backend)?;
                        items.push(from_json("kept message", &body)?);
                    }
                }
                Ok(FailingMessages::from_overfetch(items, limit))
            })
            .await
    }

    async fn messages(
        &self,
        endpoint: &LogEndpoint,
        ids: &[MessageId],
    ) -> BackendResult<Vec<StoredMessage>> {
        let endpoint = endpoint.key.as_str().to_owned();
        let ids: Vec<String> = ids.iter().map(|id| id.as_str().to_owned()).collect();
        self.db
            .read(move |conn| {
                let mut found = Vec::new();
                for id in &ids {
                    if let Some(message) = stored_message(conn, &endpoint, id)? {
                        found.push(message);
                    }
                }
                Ok(found)
            })
            .await
    }

    async fn save_recovery(&self, recovery: &Recovery) -> BackendResult<()> {
        let (endpoint, id, started, body) = (
            recovery.endpoint.as_str().to_owned(),
            recovery.id.clone(),
            recovery.started_at.epoch_ms(),
            to_json(recovery)?,
        );
        self.db
            .write(Durability::Full, move |conn| {
                upsert(
                    conn,
                    "recoveries",
                    &["endpoint", "id"],
                    &["started_at_ms", "body"],
                    params![endpoint, id, started, body],
                )
            })
            .await
    }

    async fn recovery(&self, endpoint: &EndpointKey, id: &str) -> BackendResult<Option<Recovery>> {
        let (endpoint, id) = (endpoint.as_str().to_owned(), id.to_owned());
        self.db
            .read(move |conn| {
                let body: Option<String> = conn
                    .prepare_cached("SELECT body FROM recoveries WHERE endpoint = ?1 AND id = ?2")
                    .and_then(|mut s| s.query_row(params![endpoint, id], |r| r.get(0)).optional())
                    .map_err(backend)?;
                body.map(|b| from_json("recovery", &b)).transpose()
            })
            .await
    }
}
