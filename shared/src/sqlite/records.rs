//! The records table on SQLite, with its change stream: a write of a person and the
//! stream entry of the change are one transaction, and the entry stays until change
//! capture has taken it, so a change is never lost between the two (what a DynamoDB
//! stream guarantees on AWS). A runner started again feeds the entries left to change
//! capture first ([`SqliteRecords::uncaptured`]).

use super::db::{Database, Durability, backend};
use super::{execute, from_json, to_json, upsert};
use crate::clock::{Clock, Timestamp};
use crate::members::consenting;
use crate::memory::records::stream_record;
use crate::ports::{BackendError, BackendResult, Page, Person, RecordStore};
use crate::record::RecordId;
use async_trait::async_trait;
use aws_lambda_events::event::dynamodb::EventRecord;
use rusqlite::{Connection, OptionalExtension, params};
use std::sync::Arc;

/// Persons keyed by id, and the changes not yet captured.
#[derive(Debug, Clone)]
pub struct SqliteRecords {
    db: Arc<Database>,
    /// Stamps the stream's changes.
    clock: Arc<dyn Clock>,
}

/// Appends a change of `id` made `at` to the stream; returns its stream record.
fn append_change(
    conn: &Connection,
    name: &str,
    id: &RecordId,
    at: Timestamp,
) -> BackendResult<EventRecord> {
    execute(
        conn,
        "INSERT INTO record_changes (record, event, at_ms) VALUES (?1, ?2, ?3)",
        params![id.as_str(), name, at.epoch_ms()],
    )?;
    let sequence = conn.last_insert_rowid();
    Ok(stream_record(name, id, sequence as u64, at))
}

fn exists(conn: &Connection, id: &str) -> BackendResult<bool> {
    conn.prepare_cached("SELECT 1 FROM records WHERE id = ?1")
        .and_then(|mut s| s.query_row([id], |_| Ok(())).optional())
        .map(|found| found.is_some())
        .map_err(backend)
}

impl SqliteRecords {
    /// The records table of an open data directory.
    pub fn new(db: Arc<Database>, clock: Arc<dyn Clock>) -> Self {
        Self { db, clock }
    }

    /// Creates or replaces a person (its `id` field set to `id`) and returns the INSERT or
    /// MODIFY stream record; durable when it returns (the registry's write).
    pub async fn put_person(
        &self,
        id: &RecordId,
        mut person: Person,
    ) -> BackendResult<EventRecord> {
        person.insert("id".into(), id.as_str().into());
        let (id, body, at) = (id.clone(), to_json(&person)?, self.clock.now());
        self.db
            .write(Durability::Full, move |conn| {
                let name = if exists(conn, id.as_str())? {
                    "MODIFY"
                } else {
                    "INSERT"
                };
                upsert(
                    conn,
                    "records",
                    &["id"],
                    &["body"],
                    params![id.as_str(), body],
                )?;
                append_change(conn, name, &id, at)
            })
            .await
    }

    /// Deletes a person and returns the REMOVE stream record, if it existed.
    pub async fn delete_person(&self, id: &RecordId) -> BackendResult<Option<EventRecord>> {
        let (id, at) = (id.clone(), self.clock.now());
        self.db
            .write(Durability::Full, move |conn| {
                let removed = execute(conn, "DELETE FROM records WHERE id = ?1", [id.as_str()])?;
                if removed == 0 {
                    return Ok(None);
                }
                append_change(conn, "REMOVE", &id, at).map(Some)
            })
            .await
    }

    /// The changes change capture has not taken yet, oldest first.
    pub async fn uncaptured(&self) -> BackendResult<Vec<EventRecord>> {
        self.db
            .read(|conn| {
                let mut statement = conn
                    .prepare_cached(
                        "SELECT seq, record, event, at_ms FROM record_changes ORDER BY seq",
                    )
                    .map_err(backend)?;
                let rows = statement
                    .query_map([], |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, i64>(3)?,
                        ))
                    })
                    .map_err(backend)?;
                let mut changes = Vec::new();
                for row in rows {
                    let (sequence, record, event, at_ms) = row.map_err(backend)?;
                    let id = RecordId::parse(&record).map_err(|e| {
                        BackendError::Corrupt(format!("changed record id {record:?}: {e}"))
                    })?;
                    let at = Timestamp::from_epoch_ms(at_ms).ok_or_else(|| {
                        BackendError::Corrupt(format!("change time {at_ms} of {record:?}"))
                    })?;
                    changes.push(stream_record(&event, &id, sequence as u64, at));
                }
                Ok(changes)
            })
            .await
    }

    /// Drops changes change capture has taken (by their stream sequence numbers).
    pub async fn captured(&self, records: &[EventRecord]) -> BackendResult<()> {
        let sequences: Vec<i64> = records
            .iter()
            .filter_map(|r| r.change.sequence_number.as_deref()?.parse().ok())
            .collect();
        // Normal: a power loss that takes this deletion only makes the change captured again.
        self.db
            .write(Durability::Normal, move |conn| {
                let mut delete = conn
                    .prepare_cached("DELETE FROM record_changes WHERE seq = ?1")
                    .map_err(backend)?;
                for sequence in sequences {
                    delete.execute([sequence]).map_err(backend)?;
                }
                Ok(())
            })
            .await
    }
}

#[async_trait]
impl RecordStore for SqliteRecords {
    async fn get_person(&self, id: &RecordId) -> BackendResult<Option<Person>> {
        let id = id.as_str().to_owned();
        self.db
            .read(move |conn| {
                let body: Option<String> = conn
                    .prepare_cached("SELECT body FROM records WHERE id = ?1")
                    .and_then(|mut s| s.query_row([id], |r| r.get(0)).optional())
                    .map_err(backend)?;
                body.map(|b| from_json("person", &b)).transpose()
            })
            .await
    }

    async fn scan_consented(
        &self,
        application: &crate::ids::ApplicationId,
        after: Option<&str>,
        limit: usize,
    ) -> BackendResult<Page<(RecordId, Person)>> {
        let (application, after) = (application.clone(), after.map(str::to_owned));
        self.db
            .read(move |conn| {
                let mut statement = conn
                    .prepare_cached(
                        "SELECT id, body FROM records WHERE id > ?1 ORDER BY id LIMIT ?2",
                    )
                    .map_err(backend)?;
                let rows = statement
                    .query_map(params![after.unwrap_or_default(), limit as i64 + 1], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                    })
                    .map_err(backend)?;
                let mut examined = Vec::new();
                for row in rows {
                    examined.push(row.map_err(backend)?);
                }
                // `limit` bounds the records examined, as a DynamoDB Scan's Limit does.
                let scanned = Page::from_overfetch(examined, limit, |(id, _)| id.clone());
                let mut items = Vec::new();
                for (id, body) in scanned.items {
                    let person: Person = from_json("person", &body)?;
                    let id = RecordId::parse(&id)
                        .map_err(|e| BackendError::Corrupt(format!("record id {id:?}: {e}")))?;
                    items.push((id, person));
                }
                let next = scanned.next;
                Ok(consenting(Page { items, next }, &application))
            })
            .await
    }
}
