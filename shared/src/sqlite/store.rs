//! The service table's ports on SQLite: clients, tokens, subscriptions, applications,
//! syncs, pending changes with the flush cursor and lease, and poison items.

use super::db::{Database, Durability, backend};
use super::{execute, from_json, to_json, upsert};
use crate::application::Application;
use crate::attempts::EndpointKey;
use crate::callback::CallbackUrl;
use crate::clock::Timestamp;
use crate::health::EndpointHealth;
use crate::ids::{ApplicationId, ClientId, SyncKey};
use crate::oauth::{AccessToken, OAuthClient};
use crate::poison::{PoisonId, PoisonItem};
use crate::ports::{
    ApplicationStore, BackendError, BackendResult, ClientStore, FlushCursor, Lease, LeaseHolder,
    Page, PendingChanges, PersonOutcome, SubscriptionStore, SyncStore, TokenStore,
};
use crate::record::RecordId;
use crate::subscription::{Registered, Subscription, Unregistered};
use crate::sync::{FullSync, SyncOutcomes};
use crate::window::{FlushAssignment, Shard, WindowId};
use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The service table: everything but the records, the queues and the attempt log (which
/// [`super::attempts`] adds to this type).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pub(super) db: Arc<Database>,
    /// How long attempts, kept messages and recoveries are kept.
    pub(super) attempt_retention: std::time::Duration,
}

impl SqliteStore {
    /// The store over an open data directory.
    pub fn new(db: Arc<Database>) -> Self {
        Self {
            db,
            attempt_retention: std::time::Duration::from_secs(
                crate::attempts::DEFAULT_RETENTION_DAYS * 24 * 3600,
            ),
        }
    }

    /// Keeps attempts, their messages and recoveries for `retention` ([`Self::prune`]
    /// deletes older ones).
    pub fn with_attempt_retention(mut self, retention: std::time::Duration) -> Self {
        self.attempt_retention = retention;
        self
    }

    /// The window changes are captured in now, as the last runner left it (1 for a new
    /// directory): the runner's windows go on from here after a restart, so no pending
    /// change is left behind the flush cursor.
    pub async fn current_window(&self) -> BackendResult<WindowId> {
        self.db
            .read(|conn| {
                Ok(WindowId(
                    meta::<u64>(conn, CURRENT_WINDOW)?.unwrap_or(1).max(1),
                ))
            })
            .await
    }

    /// Saves the window changes are captured in from now on (before the runner moves to it).
    pub async fn save_current_window(&self, window: WindowId) -> BackendResult<()> {
        self.db
            .write(Durability::Normal, move |conn| {
                set_meta(conn, CURRENT_WINDOW, &window.0)
            })
            .await
    }

    /// Marks `record` pending in the window changes are captured in now, read and written
    /// in one transaction (an operator tool beside the runner replays a poison item so:
    /// the runner closes the window in a later transaction, and flushes it after that).
    pub async fn mark_in_current_window(&self, record: &RecordId) -> BackendResult<WindowId> {
        let record = record.as_str().to_owned();
        self.db
            .write(Durability::Full, move |conn| {
                let window = meta::<u64>(conn, CURRENT_WINDOW)?.unwrap_or(1).max(1);
                mark(conn, window, &record)?;
                Ok(WindowId(window))
            })
            .await
    }
}

const CURSOR: &str = "flush_cursor";
const FLUSH_LEASE: &str = "flush_lease";
const CURRENT_WINDOW: &str = "current_window";

/// The flush lease as the meta table keeps it.
#[derive(Serialize, Deserialize)]
struct StoredLease {
    holder: String,
    until_ms: i64,
}

impl StoredLease {
    fn of(lease: &Lease) -> Self {
        Self {
            holder: lease.holder.as_str().to_owned(),
            until_ms: lease.until.epoch_ms(),
        }
    }

    fn lease(self) -> BackendResult<Lease> {
        let until = Timestamp::from_epoch_ms(self.until_ms).ok_or_else(|| {
            BackendError::Corrupt(format!("the flush lease's time {}", self.until_ms))
        })?;
        Ok(Lease {
            holder: LeaseHolder::new(self.holder),
            until,
        })
    }
}

fn meta<T: serde::de::DeserializeOwned>(conn: &Connection, name: &str) -> BackendResult<Option<T>> {
    let value: Option<String> = conn
        .prepare_cached("SELECT value FROM meta WHERE name = ?1")
        .and_then(|mut s| s.query_row([name], |r| r.get(0)).optional())
        .map_err(backend)?;
    value.map(|v| from_json(name, &v)).transpose()
}

fn set_meta<T: Serialize>(conn: &Connection, name: &str, value: &T) -> BackendResult<()> {
    let value = to_json(value)?;
    upsert(conn, "meta", &["name"], &["value"], params![name, value])
}

fn mark(conn: &Connection, window: u64, record: &str) -> BackendResult<()> {
    execute(
        conn,
        "INSERT OR IGNORE INTO pending (window, record) VALUES (?1, ?2)",
        params![window as i64, record],
    )?;
    Ok(())
}

/// The rows of a one-column query of JSON bodies, decoded.
fn bodies<T: serde::de::DeserializeOwned>(
    conn: &Connection,
    what: &str,
    sql: &str,
    params: impl rusqlite::Params,
) -> BackendResult<Vec<T>> {
    let mut statement = conn.prepare_cached(sql).map_err(backend)?;
    let rows = statement
        .query_map(params, |row| row.get::<_, String>(0))
        .map_err(backend)?;
    let mut values = Vec::new();
    for row in rows {
        values.push(from_json(what, &row.map_err(backend)?)?);
    }
    Ok(values)
}

/// The JSON body of the one row a query finds, decoded.
fn body<T: serde::de::DeserializeOwned>(
    conn: &Connection,
    what: &str,
    sql: &str,
    params: impl rusqlite::Params,
) -> BackendResult<Option<T>> {
    let text: Option<String> = conn
        .prepare_cached(sql)
        .and_then(|mut s| s.query_row(params, |r| r.get(0)).optional())
        .map_err(backend)?;
    text.map(|t| from_json(what, &t)).transpose()
}

#[async_trait]
impl ClientStore for SqliteStore {
    async fn get_client(&self, client_id: &ClientId) -> BackendResult<Option<OAuthClient>> {
        let id = client_id.to_string();
        self.db
            .read(move |conn| {
                body(
                    conn,
                    "client",
                    "SELECT body FROM clients WHERE id = ?1",
                    [id],
                )
            })
            .await
    }

    async fn put_client(&self, client: &OAuthClient) -> BackendResult<()> {
        let (id, body) = (client.client_id.to_string(), to_json(client)?);
        self.db
            .write(Durability::Full, move |conn| {
                upsert(conn, "clients", &["id"], &["body"], params![id, body])
            })
            .await
    }

    async fn list_clients(&self) -> BackendResult<Vec<OAuthClient>> {
        self.db
            .read(|conn| bodies(conn, "client", "SELECT body FROM clients ORDER BY id", []))
            .await
    }
}

#[async_trait]
impl TokenStore for SqliteStore {
    async fn put_token(&self, token: &AccessToken) -> BackendResult<()> {
        let (hash, expires_at, body) = (
            token.token_hash.clone(),
            token.expires_at.epoch_secs(),
            to_json(token)?,
        );
        self.db
            .write(Durability::Full, move |conn| {
                upsert(
                    conn,
                    "tokens",
                    &["hash"],
                    &["expires_at", "body"],
                    params![hash, expires_at, body],
                )
            })
            .await
    }

    async fn get_token(&self, token_hash: &str) -> BackendResult<Option<AccessToken>> {
        let hash = token_hash.to_owned();
        self.db
            .read(move |conn| {
                body(
                    conn,
                    "token",
                    "SELECT body FROM tokens WHERE hash = ?1",
                    [hash],
                )
            })
            .await
    }
}

/// The subscription of (record, callback) as stored, read inside a write.
fn stored_subscription(
    conn: &Connection,
    record: &str,
    callback: &str,
) -> BackendResult<Option<Subscription>> {
    body(
        conn,
        "subscription",
        "SELECT body FROM subscriptions WHERE record = ?1 AND callback = ?2",
        params![record, callback],
    )
}

#[async_trait]
impl SubscriptionStore for SqliteStore {
    async fn register(&self, subscription: &Subscription) -> BackendResult<Registered> {
        let subscription = subscription.clone();
        let body = to_json(&subscription)?;
        self.db
            .write(Durability::Full, move |conn| {
                let (record, callback) =
                    (subscription.record.as_str(), subscription.callback.as_str());
                let existing = stored_subscription(conn, record, callback)?;
                let registered = Registered::given(existing.as_ref(), &subscription);
                if registered != Registered::Created {
                    return Ok(registered);
                }
                let webhook =
                    EndpointKey::subscription(&subscription.record, &subscription.callback);
                execute(
                    conn,
                    "INSERT INTO subscriptions (record, callback, client_id, webhook_id, body)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![
                        record,
                        callback,
                        subscription.client_id.as_str(),
                        webhook.as_str(),
                        body
                    ],
                )?;
                Ok(Registered::Created)
            })
            .await
    }

    async fn unregister(
        &self,
        record: &RecordId,
        callback: &CallbackUrl,
        client_id: &ClientId,
    ) -> BackendResult<Unregistered> {
        let (record, callback, client_id) = (
            record.as_str().to_owned(),
            callback.as_str().to_owned(),
            client_id.clone(),
        );
        self.db
            .write(Durability::Full, move |conn| {
                let existing = stored_subscription(conn, &record, &callback)?;
                let unregistered = Unregistered::given(existing.as_ref(), &client_id);
                if unregistered != Unregistered::Deleted {
                    return Ok(unregistered);
                }
                execute(
                    conn,
                    "DELETE FROM subscriptions WHERE record = ?1 AND callback = ?2",
                    params![record, callback],
                )?;
                Ok(Unregistered::Deleted)
            })
            .await
    }

    async fn subscriptions_of(&self, record: &RecordId) -> BackendResult<Vec<Subscription>> {
        let record = record.as_str().to_owned();
        self.db
            .read(move |conn| {
                bodies(
                    conn,
                    "subscription",
                    "SELECT body FROM subscriptions WHERE record = ?1 ORDER BY callback",
                    [record],
                )
            })
            .await
    }

    async fn client_webhooks(&self, client_id: &ClientId) -> BackendResult<Vec<Subscription>> {
        let client_id = client_id.to_string();
        self.db
            .read(move |conn| {
                bodies(
                    conn,
                    "subscription",
                    "SELECT body FROM subscriptions WHERE client_id = ?1 ORDER BY record, callback",
                    [client_id],
                )
            })
            .await
    }

    async fn client_webhook(
        &self,
        client_id: &ClientId,
        webhook: &EndpointKey,
    ) -> BackendResult<Option<Subscription>> {
        let (client_id, webhook) = (client_id.to_string(), webhook.as_str().to_owned());
        self.db
            .read(move |conn| {
                body(
                    conn,
                    "subscription",
                    "SELECT body FROM subscriptions WHERE client_id = ?1 AND webhook_id = ?2",
                    [client_id, webhook],
                )
            })
            .await
    }

    async fn get_subscription(
        &self,
        record: &RecordId,
        callback: &CallbackUrl,
    ) -> BackendResult<Option<Subscription>> {
        let (record, callback) = (record.as_str().to_owned(), callback.as_str().to_owned());
        self.db
            .read(move |conn| stored_subscription(conn, &record, &callback))
            .await
    }

    async fn set_subscription_health(
        &self,
        record: &RecordId,
        callback: &CallbackUrl,
        health: &EndpointHealth,
    ) -> BackendResult<()> {
        let (record, callback, health) = (
            record.as_str().to_owned(),
            callback.as_str().to_owned(),
            health.clone(),
        );
        self.db
            .write(Durability::Normal, move |conn| {
                let Some(mut subscription) = stored_subscription(conn, &record, &callback)? else {
                    return Ok(());
                };
                subscription.health = health;
                let body = to_json(&subscription)?;
                execute(
                    conn,
                    "UPDATE subscriptions SET body = ?3 WHERE record = ?1 AND callback = ?2",
                    params![record, callback, body],
                )?;
                Ok(())
            })
            .await
    }
}

fn stored_application(conn: &Connection, id: &str) -> BackendResult<Option<Application>> {
    body(
        conn,
        "application",
        "SELECT body FROM applications WHERE id = ?1",
        [id],
    )
}

#[async_trait]
impl ApplicationStore for SqliteStore {
    async fn get_application(&self, id: &ApplicationId) -> BackendResult<Option<Application>> {
        let id = id.to_string();
        self.db
            .read(move |conn| stored_application(conn, &id))
            .await
    }

    async fn put_application(&self, application: &Application) -> BackendResult<()> {
        let (id, key_hash, body) = (
            application.id.to_string(),
            application.api_key_hash.clone(),
            to_json(application)?,
        );
        self.db
            .write(Durability::Full, move |conn| {
                upsert(
                    conn,
                    "api_keys",
                    &["hash"],
                    &["application_id"],
                    params![key_hash, id],
                )?;
                upsert(conn, "applications", &["id"], &["body"], params![id, body])
            })
            .await
    }

    async fn application_for_key(
        &self,
        api_key_hash: &str,
    ) -> BackendResult<Option<ApplicationId>> {
        let hash = api_key_hash.to_owned();
        let id: Option<String> = self
            .db
            .read(move |conn| {
                conn.prepare_cached("SELECT application_id FROM api_keys WHERE hash = ?1")
                    .and_then(|mut s| s.query_row([hash], |r| r.get(0)).optional())
                    .map_err(backend)
            })
            .await?;
        id.map(|id| {
            ApplicationId::parse(&id)
                .map_err(|e| BackendError::Corrupt(format!("API key index {id:?}: {e}")))
        })
        .transpose()
    }

    async fn list_applications(&self) -> BackendResult<Vec<Application>> {
        self.db
            .read(|conn| {
                bodies(
                    conn,
                    "application",
                    "SELECT body FROM applications ORDER BY id",
                    [],
                )
            })
            .await
    }

    async fn set_application_health(
        &self,
        id: &ApplicationId,
        health: &EndpointHealth,
    ) -> BackendResult<()> {
        let (id, health) = (id.to_string(), health.clone());
        self.db
            .write(Durability::Normal, move |conn| {
                let Some(mut application) = stored_application(conn, &id)? else {
                    return Ok(());
                };
                application.health = health;
                let body = to_json(&application)?;
                execute(
                    conn,
                    "UPDATE applications SET body = ?2 WHERE id = ?1",
                    params![id, body],
                )?;
                Ok(())
            })
            .await
    }
}

/// The key columns of a sync's row.
fn columns(sync: &SyncKey) -> (String, String) {
    (sync.application.to_string(), sync.sync.to_string())
}

/// Creates the sync's row (without driver state) unless it exists.
fn ensure_sync(conn: &Connection, application: &str, sync_id: &str) -> BackendResult<()> {
    execute(
        conn,
        "INSERT OR IGNORE INTO syncs (application, sync_id) VALUES (?1, ?2)",
        params![application, sync_id],
    )?;
    Ok(())
}

#[async_trait]
impl SyncStore for SqliteStore {
    async fn save_sync(&self, sync: &FullSync) -> BackendResult<()> {
        let (application, sync_id, body) = (
            sync.application_id.to_string(),
            sync.sync_id.to_string(),
            to_json(sync)?,
        );
        // Full: the first save answers the API's 202 with the sync's id.
        self.db
            .write(Durability::Full, move |conn| {
                upsert(
                    conn,
                    "syncs",
                    &["application", "sync_id"],
                    &["body"],
                    params![application, sync_id, body],
                )
            })
            .await
    }

    async fn get_sync(&self, sync: &SyncKey) -> BackendResult<Option<(FullSync, SyncOutcomes)>> {
        let (application, sync_id) = columns(sync);
        self.db
            .read(move |conn| {
                let row: Option<(String, i64, i64)> = conn
                    .prepare_cached(
                        "SELECT body, delivered, failed FROM syncs
                         WHERE application = ?1 AND sync_id = ?2 AND body IS NOT NULL",
                    )
                    .and_then(|mut s| {
                        s.query_row(params![application, sync_id], |r| {
                            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                        })
                        .optional()
                    })
                    .map_err(backend)?;
                row.map(|(body, delivered, failed)| {
                    Ok((
                        from_json("sync", &body)?,
                        SyncOutcomes {
                            delivered: delivered.max(0) as u64,
                            failed: failed.max(0) as u64,
                        },
                    ))
                })
                .transpose()
            })
            .await
    }

    async fn count_sync_outcomes(
        &self,
        sync: &SyncKey,
        outcomes: &[PersonOutcome],
    ) -> BackendResult<SyncOutcomes> {
        let ((application, sync_id), outcomes) = (columns(sync), outcomes.to_vec());
        self.db
            .write(Durability::Normal, move |conn| {
                ensure_sync(conn, &application, &sync_id)?;
                let mut new = SyncOutcomes::default();
                let mut counted = conn
                    .prepare_cached(
                        "INSERT OR IGNORE INTO sync_counted (application, sync_id, person)
                         VALUES (?1, ?2, ?3)",
                    )
                    .map_err(backend)?;
                for outcome in &outcomes {
                    let inserted = counted
                        .execute(params![application, sync_id, outcome.person.as_str()])
                        .map_err(backend)?;
                    if inserted == 1 {
                        if outcome.delivered {
                            new.delivered += 1;
                        } else {
                            new.failed += 1;
                        }
                    }
                }
                execute(
                    conn,
                    "UPDATE syncs SET delivered = delivered + ?3, failed = failed + ?4
                     WHERE application = ?1 AND sync_id = ?2",
                    params![
                        application,
                        sync_id,
                        new.delivered as i64,
                        new.failed as i64
                    ],
                )?;
                Ok(new)
            })
            .await
    }

    async fn claim_sync_completion(&self, sync: &SyncKey, claimant: &str) -> BackendResult<bool> {
        let ((application, sync_id), claimant) = (columns(sync), claimant.to_owned());
        self.db
            .write(Durability::Normal, move |conn| {
                execute(
                    conn,
                    "UPDATE syncs SET completion_claimant = ?3
                     WHERE application = ?1 AND sync_id = ?2 AND body IS NOT NULL
                       AND (completion_claimant IS NULL OR completion_claimant = ?3)",
                    params![application, sync_id, claimant],
                )
                .map(|changed| changed == 1)
            })
            .await
    }

    async fn lease_sync(
        &self,
        sync: &SyncKey,
        lease: &Lease,
        now: Timestamp,
    ) -> BackendResult<bool> {
        let (application, sync_id) = columns(sync);
        let holder = lease.holder.as_str().to_owned();
        let (now_ms, until_ms) = (now.epoch_ms(), lease.until.epoch_ms());
        self.db
            .write(Durability::Normal, move |conn| {
                ensure_sync(conn, &application, &sync_id)?;
                execute(
                    conn,
                    "UPDATE syncs SET lease_holder = ?3, lease_until_ms = ?5
                     WHERE application = ?1 AND sync_id = ?2
                       AND (lease_until_ms <= ?4 OR lease_holder IS ?3)",
                    params![application, sync_id, holder, now_ms, until_ms],
                )
                .map(|changed| changed == 1)
            })
            .await
    }

    async fn release_sync(&self, sync: &SyncKey, holder: &LeaseHolder) -> BackendResult<()> {
        let ((application, sync_id), holder) = (columns(sync), holder.as_str().to_owned());
        self.db
            .write(Durability::Normal, move |conn| {
                execute(
                    conn,
                    "UPDATE syncs SET lease_holder = NULL, lease_until_ms = 0
                     WHERE application = ?1 AND sync_id = ?2 AND lease_holder = ?3",
                    params![application, sync_id, holder],
                )?;
                Ok(())
            })
            .await
    }
}

/// A page of `shard`'s records pending in `window` after `after`, in key order. The shard is
/// a hash of the id, not a column: the page steps through the window's records and passes
/// over those of other shards; stepping stops at the row after the page's last.
fn shard_page(
    conn: &Connection,
    window: WindowId,
    shard: Shard,
    after: Option<String>,
    limit: usize,
) -> BackendResult<Page<RecordId>> {
    let mut statement = conn
        .prepare_cached(
            "SELECT record FROM pending WHERE window = ?1 AND record > ?2 ORDER BY record",
        )
        .map_err(backend)?;
    let rows = statement
        .query_map(params![window.0 as i64, after.unwrap_or_default()], |r| {
            r.get::<_, String>(0)
        })
        .map_err(backend)?;
    let mut items = Vec::new();
    for row in rows {
        let id = row.map_err(backend)?;
        let record = RecordId::parse(&id)
            .map_err(|e| BackendError::Corrupt(format!("pending record id {id:?}: {e}")))?;
        if Shard::of(&record) == shard {
            items.push(record);
            if items.len() > limit {
                break;
            }
        }
    }
    Ok(Page::from_overfetch(items, limit, RecordId::to_string))
}

#[async_trait]
impl PendingChanges for SqliteStore {
    async fn mark_all(&self, window: WindowId, records: &[RecordId]) -> BackendResult<()> {
        let records: Vec<String> = records.iter().map(|r| r.as_str().to_owned()).collect();
        // Normal: the change being captured stays in the stream until after this commit,
        // and a power loss that takes this mark takes that later deletion with it.
        self.db
            .write(Durability::Normal, move |conn| {
                records
                    .iter()
                    .try_for_each(|record| mark(conn, window.0, record))
            })
            .await
    }

    async fn shard_page(
        &self,
        window: WindowId,
        shard: Shard,
        after: Option<&str>,
        limit: usize,
    ) -> BackendResult<Page<RecordId>> {
        let after = after.map(str::to_owned);
        self.db
            .read(move |conn| shard_page(conn, window, shard, after, limit))
            .await
    }

    async fn cursors(&self) -> BackendResult<Vec<(FlushAssignment, FlushCursor)>> {
        self.db
            .read(|conn| {
                let rows: Vec<(String, String)> = conn
                    .prepare_cached(
                        "SELECT name, value FROM meta WHERE name = ?1 OR name LIKE ?1 || '#%'",
                    )
                    .and_then(|mut s| {
                        s.query_map([CURSOR], |r| Ok((r.get(0)?, r.get(1)?)))?
                            .collect()
                    })
                    .map_err(backend)?;
                rows.into_iter()
                    .filter_map(|(name, value)| {
                        let assignment = FlushAssignment::from_name(CURSOR, &name)?;
                        Some(
                            assignment
                                .map_err(|e| BackendError::Corrupt(format!("stored {name}: {e}")))
                                .and_then(|a| Ok((a, from_json::<FlushCursor>(&name, &value)?))),
                        )
                    })
                    .collect()
            })
            .await
    }

    async fn save_cursor(
        &self,
        assignment: &FlushAssignment,
        cursor: &FlushCursor,
    ) -> BackendResult<()> {
        let (name, all, cursor) = (assignment.name(CURSOR), assignment.is_all(), cursor.clone());
        self.db
            .write(Durability::Normal, move |conn| {
                set_meta(conn, &name, &cursor)?;
                // Entries of flushed windows are done with (DynamoDB lets TTL delete them);
                // a part of the shards leaves them to the parts that may not have read them.
                if all {
                    execute(
                        conn,
                        "DELETE FROM pending WHERE window < ?1",
                        [cursor.window.0 as i64],
                    )?;
                }
                Ok(())
            })
            .await
    }

    async fn lease_flush(
        &self,
        assignment: &FlushAssignment,
        lease: &Lease,
        now: Timestamp,
    ) -> BackendResult<bool> {
        let (name, stored) = (assignment.name(FLUSH_LEASE), StoredLease::of(lease));
        self.db
            .write(Durability::Normal, move |conn| {
                let held = meta::<StoredLease>(conn, &name)?
                    .map(StoredLease::lease)
                    .transpose()?;
                if !Lease::free(held.as_ref(), now) {
                    return Ok(false);
                }
                set_meta(conn, &name, &stored)?;
                Ok(true)
            })
            .await
    }

    async fn release_flush(
        &self,
        assignment: &FlushAssignment,
        holder: &LeaseHolder,
    ) -> BackendResult<()> {
        let (name, holder) = (assignment.name(FLUSH_LEASE), holder.as_str().to_owned());
        self.db
            .write(Durability::Normal, move |conn| {
                let held = meta::<StoredLease>(conn, &name)?;
                if held.is_some_and(|lease| lease.holder == holder) {
                    execute(conn, "DELETE FROM meta WHERE name = ?1", [name.as_str()])?;
                }
                Ok(())
            })
            .await
    }

    async fn set_aside(&self, item: &PoisonItem) -> BackendResult<()> {
        let (id, body) = (item.id().to_string(), to_json(item)?);
        self.db
            .write(Durability::Normal, move |conn| {
                upsert(conn, "poison", &["id"], &["body"], params![id, body])
            })
            .await
    }

    async fn poison_items(&self) -> BackendResult<Vec<PoisonItem>> {
        self.db
            .read(|conn| {
                bodies(
                    conn,
                    "poison item",
                    "SELECT body FROM poison ORDER BY id",
                    [],
                )
            })
            .await
    }

    async fn remove_poison(&self, id: &PoisonId) -> BackendResult<bool> {
        let id = id.to_string();
        self.db
            .write(Durability::Full, move |conn| {
                execute(conn, "DELETE FROM poison WHERE id = ?1", [id]).map(|removed| removed == 1)
            })
            .await
    }
}
