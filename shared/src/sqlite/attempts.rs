//! The attempt log on SQLite. Nearly every attempt is quiet ([`LoggedAttempt::is_quiet`]:
//! the first of its series, acknowledged, not an owner's redelivery): a delivery batch's
//! quiet attempts are one row of `quiet_groups` (appended: their attempts and jobs as one
//! JSON array), and each is found by its endpoint through one small `quiet_attempts` row
//! (endpoint, sort key: its group and place), and by its message through the group's
//! `quiet_locators` (one per window tag of its messages). Every other attempt — a failure,
//! a retry, an owner's redelivery, and any attempt of a message that already has a kept
//! row — is one row of `attempts` with its message's kept row in `messages`, as a recovery
//! finds them. So a kept row, where there is one, is always its message's latest state,
//! and a message without one has only quiet attempts, the last recorded its latest.
//!
//! Why: an attempt row and a kept-message row cost three index entries at random places
//! (by endpoint twice, by message), each a whole page written to the WAL and again to the
//! database at the checkpoint; a quiet attempt now costs one (docs/benchmarks.md, figure 7).
//!
//! Reading: an endpoint's listing merges its `attempts` rows and its `quiet_attempts` rows,
//! both in sort-key order; a message's attempts are its `attempts` rows and its entries in
//! the groups of its tag. A delivery batch's attempts are one transaction.

use super::db::{Durability, backend};
use super::store::SqliteStore;
use super::{execute, from_json, to_json, upsert};
use crate::attempts::{
    Attempt, EndpointKey, FailingMessages, LogEndpoint, LoggedAttempt, QuietEntry, Recovery,
    RecoveryId, StatusFilter, StoredMessage,
};
use crate::clock::Timestamp;
use crate::job::MessageId;
use crate::ports::{AttemptLog, BackendError, BackendResult, Page};
use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

/// An attempt ready to write: its columns, and what is stored of it.
struct LogRow {
    endpoint: String,
    sort_key: String,
    message_id: String,
    tag: String,
    at_ms: i64,
    acked: bool,
    written: Written,
}

/// What a row stores, as it was serialized before the write (off the writer thread).
enum Written {
    /// A quiet attempt: its group entry, and the attempt itself in case its message turns
    /// out to have a kept row (then it is written as any other attempt).
    Quiet(String, Box<LoggedAttempt>),
    /// Any other attempt: its row's body and its kept message's.
    Apart { attempt: String, message: String },
}

impl LogRow {
    fn of(logged: &LoggedAttempt) -> BackendResult<Self> {
        let a = &logged.attempt;
        let written = if logged.is_quiet() {
            Written::Quiet(to_json(&QuietEntry::of(logged))?, Box::new(logged.clone()))
        } else {
            Written::Apart {
                attempt: to_json(a)?,
                message: to_json(&StoredMessage::of(logged))?,
            }
        };
        Ok(Self {
            endpoint: a.endpoint.as_str().to_owned(),
            sort_key: a.sort_key(),
            message_id: a.message_id.as_str().to_owned(),
            tag: a.message_id.tag().to_owned(),
            at_ms: a.at.epoch_ms(),
            acked: a.outcome.is_acked(),
            written,
        })
    }
}

/// True when the message has a kept row.
fn has_home(conn: &Connection, endpoint: &str, message_id: &str) -> BackendResult<bool> {
    conn.prepare_cached("SELECT 1 FROM messages WHERE endpoint = ?1 AND message_id = ?2")
        .and_then(|mut s| {
            s.query_row(params![endpoint, message_id], |_| Ok(()))
                .optional()
        })
        .map(|found| found.is_some())
        .map_err(backend)
}

/// Writes an attempt on its own: its row, and its message's kept row.
fn write_apart(conn: &Connection, row: &LogRow, attempt: &str, message: &str) -> BackendResult<()> {
    upsert(
        conn,
        "attempts",
        &["endpoint", "sort_key"],
        &["message_id", "at_ms", "acked", "body"],
        params![
            row.endpoint,
            row.sort_key,
            row.message_id,
            row.at_ms,
            row.acked,
            attempt
        ],
    )?;
    upsert(
        conn,
        "messages",
        &["endpoint", "message_id"],
        &["last_attempt_ms", "acked", "body"],
        params![row.endpoint, row.message_id, row.at_ms, row.acked, message],
    )?;
    // The same attempt recorded before as quiet (the queue delivers at least once): one
    // place only.
    execute(
        conn,
        "DELETE FROM quiet_attempts WHERE endpoint = ?1 AND sort_key = ?2",
        params![row.endpoint, row.sort_key],
    )?;
    Ok(())
}

/// Writes a batch's quiet attempts as one group, in the order they were recorded.
fn write_group(conn: &Connection, quiet: &[(&LogRow, &str)]) -> BackendResult<()> {
    let Some(newest_ms) = quiet.iter().map(|(row, _)| row.at_ms).max() else {
        return Ok(());
    };
    let entries: Vec<&str> = quiet.iter().map(|(_, entry)| *entry).collect();
    execute(
        conn,
        "INSERT INTO quiet_groups (newest_ms, entries) VALUES (?1, ?2)",
        params![newest_ms, format!("[{}]", entries.join(","))],
    )?;
    let group = conn.last_insert_rowid();
    for (entry, (row, _)) in quiet.iter().enumerate() {
        upsert(
            conn,
            "quiet_attempts",
            &["endpoint", "sort_key"],
            &["group_id", "entry"],
            params![row.endpoint, row.sort_key, group, entry as i64],
        )?;
    }
    let tags: BTreeSet<&str> = quiet.iter().map(|(row, _)| row.tag.as_str()).collect();
    for tag in tags {
        execute(
            conn,
            "INSERT OR IGNORE INTO quiet_locators (tag, group_id) VALUES (?1, ?2)",
            params![tag, group],
        )?;
    }
    Ok(())
}

/// The entries of stored groups, each read and parsed once per read.
#[derive(Default)]
struct Groups(HashMap<i64, Vec<QuietEntry>>);

impl Groups {
    fn parse(text: &str) -> BackendResult<Vec<QuietEntry>> {
        from_json("quiet attempt group", text)
    }

    /// Entry `entry` of group `group`.
    fn entry(&mut self, conn: &Connection, group: i64, entry: i64) -> BackendResult<&QuietEntry> {
        if let Entry::Vacant(vacant) = self.0.entry(group) {
            let text: Option<String> = conn
                .prepare_cached("SELECT entries FROM quiet_groups WHERE id = ?1")
                .and_then(|mut s| s.query_row([group], |r| r.get(0)).optional())
                .map_err(backend)?;
            let Some(text) = text else {
                return Err(BackendError::Corrupt(format!(
                    "quiet attempt group {group} is missing"
                )));
            };
            vacant.insert(Self::parse(&text)?);
        }
        self.0
            .get(&group)
            .and_then(|entries| usize::try_from(entry).ok().and_then(|i| entries.get(i)))
            .ok_or_else(|| {
                BackendError::Corrupt(format!("quiet attempt group {group} has no entry {entry}"))
            })
    }
}

/// The quiet entries of messages `ids` to `endpoint`, each message's in the order they
/// were recorded (the last is its latest): read from the groups of the messages' tags,
/// only those whose text names one of them, and only entries still placed there (an
/// attempt recorded twice is placed in its latest group).
fn quiet_entries(
    conn: &Connection,
    endpoint: &str,
    ids: &[MessageId],
) -> BackendResult<HashMap<MessageId, Vec<QuietEntry>>> {
    let mut by_tag: BTreeMap<&str, Vec<&MessageId>> = BTreeMap::new();
    for id in ids {
        by_tag.entry(id.tag()).or_default().push(id);
    }
    let mut found: HashMap<MessageId, Vec<QuietEntry>> = HashMap::new();
    let mut groups = conn
        .prepare_cached(
            "SELECT g.id, g.entries FROM quiet_locators l JOIN quiet_groups g ON g.id = l.group_id
             WHERE l.tag = ?1 ORDER BY g.id",
        )
        .map_err(backend)?;
    let mut placed = conn
        .prepare_cached(
            "SELECT group_id, entry FROM quiet_attempts WHERE endpoint = ?1 AND sort_key = ?2",
        )
        .map_err(backend)?;
    for (tag, wanted) in by_tag {
        let mut rows = groups.query([tag]).map_err(backend)?;
        while let Some(row) = rows.next().map_err(backend)? {
            let group: i64 = row.get(0).map_err(backend)?;
            let text: String = row.get(1).map_err(backend)?;
            if !wanted.iter().any(|id| text.contains(id.as_str())) {
                continue;
            }
            for (entry, quiet) in Groups::parse(&text)?.into_iter().enumerate() {
                if !wanted.contains(&&quiet.job.id)
                    || EndpointKey::of_job(&quiet.job).as_str() != endpoint
                {
                    continue;
                }
                let place: Option<(i64, i64)> = placed
                    .query_row(params![endpoint, quiet.attempt().sort_key()], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .optional()
                    .map_err(backend)?;
                if place == Some((group, entry as i64)) {
                    found.entry(quiet.job.id.clone()).or_default().push(quiet);
                }
            }
        }
    }
    Ok(found)
}

/// A message as its attempts leave it: its kept row when it has one (written with every
/// attempt once it exists), else its latest quiet attempt.
fn latest(home: Option<StoredMessage>, quiet: Option<&Vec<QuietEntry>>) -> Option<StoredMessage> {
    home.or_else(|| quiet.and_then(|q| q.last()).map(QuietEntry::message))
}

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
    /// Delivery attempts older than the retention (a quiet one with its batch's group, once
    /// the group's newest attempt is).
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
        let quiet = self.prune_quiet_groups(cutoff).await?;
        Ok(Pruned {
            attempts: quiet
                + self
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

    /// Deletes the quiet groups whose newest attempt is older than `cutoff_ms` (a batch's
    /// attempts are made within seconds of each other), with what finds their attempts;
    /// returns how many quiet attempts went.
    async fn prune_quiet_groups(&self, cutoff_ms: i64) -> BackendResult<usize> {
        const OLD_GROUPS: &str =
            "SELECT id FROM quiet_groups WHERE newest_ms < ?1 ORDER BY newest_ms, id LIMIT ?2";
        let chunk = (PRUNE_CHUNK / 100).max(1);
        let mut attempts = 0;
        loop {
            let (groups, placed) = self
                .db
                .write(Durability::Normal, move |conn| {
                    let placed = execute(
                        conn,
                        &format!("DELETE FROM quiet_attempts WHERE group_id IN ({OLD_GROUPS})"),
                        params![cutoff_ms, chunk],
                    )?;
                    execute(
                        conn,
                        &format!("DELETE FROM quiet_locators WHERE group_id IN ({OLD_GROUPS})"),
                        params![cutoff_ms, chunk],
                    )?;
                    let groups = execute(
                        conn,
                        &format!("DELETE FROM quiet_groups WHERE id IN ({OLD_GROUPS})"),
                        params![cutoff_ms, chunk],
                    )?;
                    Ok((groups, placed))
                })
                .await?;
            attempts += placed;
            if (groups as i64) < chunk {
                return Ok(attempts);
            }
        }
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
    async fn record(&self, attempts: Vec<LoggedAttempt>) -> BackendResult<()> {
        let rows = attempts
            .iter()
            .map(LogRow::of)
            .collect::<BackendResult<Vec<_>>>()?;
        // Normal: a log entry lost to a power loss costs no delivery.
        self.db
            .write(Durability::Normal, move |conn| {
                let mut quiet: Vec<(&LogRow, &str)> = Vec::new();
                for row in &rows {
                    match &row.written {
                        Written::Quiet(entry, _)
                            if !has_home(conn, &row.endpoint, &row.message_id)? =>
                        {
                            quiet.push((row, entry));
                        }
                        Written::Quiet(_, logged) => {
                            let attempt = to_json(&logged.attempt)?;
                            let message = to_json(&StoredMessage::of(logged))?;
                            write_apart(conn, row, &attempt, &message)?;
                        }
                        Written::Apart { attempt, message } => {
                            write_apart(conn, row, attempt, message)?;
                        }
                    }
                }
                write_group(conn, &quiet)
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
                // Its attempts apart and its quiet ones, merged in sort-key order (quiet
                // ones are acknowledged).
                let mut statement = conn
                    .prepare_cached(
                        "SELECT sort_key, body, NULL, NULL FROM attempts
                         WHERE endpoint = ?1 AND sort_key < ?2 AND (?3 IS NULL OR acked = ?3)
                         UNION ALL
                         SELECT sort_key, NULL, group_id, entry FROM quiet_attempts
                         WHERE endpoint = ?1 AND sort_key < ?2 AND (?3 IS NULL OR ?3 = 1)
                         ORDER BY 1 DESC LIMIT ?4",
                    )
                    .map_err(backend)?;
                let mut rows = statement
                    .query(params![
                        endpoint,
                        before,
                        acked_filter(filter),
                        limit as i64 + 1
                    ])
                    .map_err(backend)?;
                let mut groups = Groups::default();
                let mut items: Vec<Attempt> = Vec::new();
                while let Some(row) = rows.next().map_err(backend)? {
                    let body: Option<String> = row.get(1).map_err(backend)?;
                    let place: (Option<i64>, Option<i64>) =
                        (row.get(2).map_err(backend)?, row.get(3).map_err(backend)?);
                    items.push(match (body, place) {
                        (Some(body), _) => from_json("attempt", &body)?,
                        (None, (Some(group), Some(entry))) => {
                            groups.entry(conn, group, entry)?.attempt()
                        }
                        _ => return Err(BackendError::Corrupt("an attempt without a body".into())),
                    });
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
        let (endpoint, message_id) = (endpoint.key.as_str().to_owned(), message_id.clone());
        self.db
            .read(move |conn| {
                let home = stored_message(conn, &endpoint, message_id.as_str())?;
                let mut quiet = quiet_entries(conn, &endpoint, std::slice::from_ref(&message_id))?
                    .remove(&message_id)
                    .unwrap_or_default();
                let Some(message) = latest(home, Some(&quiet)) else {
                    return Ok(None);
                };
                let mut statement = conn
                    .prepare_cached(
                        "SELECT body FROM attempts WHERE endpoint = ?1 AND message_id = ?2",
                    )
                    .map_err(backend)?;
                let rows = statement
                    .query_map(params![endpoint, message_id.as_str()], |r| {
                        r.get::<_, String>(0)
                    })
                    .map_err(backend)?;
                let mut attempts: BTreeMap<String, Attempt> = BTreeMap::new();
                for row in rows {
                    let attempt: Attempt = from_json("attempt", &row.map_err(backend)?)?;
                    attempts.insert(attempt.sort_key(), attempt);
                }
                for entry in quiet.drain(..) {
                    let attempt = entry.attempt();
                    attempts.insert(attempt.sort_key(), attempt);
                }
                Ok(Some((message, attempts.into_values().collect())))
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
        let ids = ids.to_vec();
        self.db
            .read(move |conn| {
                let quiet = quiet_entries(conn, &endpoint, &ids)?;
                let mut found = Vec::new();
                for id in &ids {
                    let home = stored_message(conn, &endpoint, id.as_str())?;
                    found.extend(latest(home, quiet.get(id)));
                }
                Ok(found)
            })
            .await
    }

    async fn save_recovery(&self, recovery: &Recovery) -> BackendResult<()> {
        let (endpoint, id, started, body) = (
            recovery.endpoint.as_str().to_owned(),
            recovery.id.to_string(),
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

    async fn recovery(
        &self,
        endpoint: &EndpointKey,
        id: &RecoveryId,
    ) -> BackendResult<Option<Recovery>> {
        let (endpoint, id) = (endpoint.as_str().to_owned(), id.to_string());
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
