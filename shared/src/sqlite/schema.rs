//! The schema, versioned by SQLite's `user_version`: each entry of [`MIGRATIONS`] takes a
//! database from the version before it to its own, in one transaction, when the database
//! is opened. A database newer than this program is refused, never written.
//!
//! Domain values are stored as JSON text in `body` (as the DynamoDB adapter stores them as
//! items), beside the columns that key, order or select them.
//!
//! | table | key | what |
//! |---|---|---|
//! | `clients` | client id | OAuth clients |
//! | `tokens` | SHA-256 of the token | access tokens (`expires_at` epoch seconds) |
//! | `subscriptions` | record, callback URL | ORCID-style subscriptions; `client_id` and `webhook_id` index a client's webhooks |
//! | `applications` | application id | Members-style applications |
//! | `api_keys` | SHA-256 of an API key | the application it opens |
//! | `syncs` | application, sync id | driver state (`body`), outcome counters, completion claim, lease, when it finished |
//! | `sync_counted` | application, sync id, person | a person whose outcome is counted (once) |
//! | `records` | record id | persons (the registry's table) |
//! | `record_changes` | sequence | the change stream: a change not yet captured (deleted once it is) |
//! | `pending` | window, record | pending changes; windows behind the flush cursor are deleted |
//! | `meta` | name | the flush cursor, the flush lease, the current window |
//! | `poison` | poison item id | changes the flush set aside |
//! | `queue` | sequence | the delivery queue: visibility time, receive count, receipt of the latest receive (`<seq>:<uuid>`) |
//! | `dead_letters` | sequence | the dead-letter queue |
//! | `parked` | sequence | jobs for disabled endpoints |
//! | `attempts` | endpoint, sort key | the attempt log, but for quiet attempts |
//! | `messages` | endpoint, message id | kept messages with their latest attempt |
//! | `quiet_groups` | sequence | a delivery batch's quiet attempts with their jobs (JSON array) |
//! | `quiet_attempts` | endpoint, sort key | where a quiet attempt is: its group and its place in it |
//! | `quiet_locators` | message tag, group | the groups holding messages of a window (a message id's tag) |
//! | `recoveries` | endpoint, recovery id | an owner's recoveries |

use super::db::OpenError;
use rusqlite::{Connection, TransactionBehavior};
use std::path::Path;

/// Version 1: every port.
const V1: &str = "
CREATE TABLE clients (
    id TEXT PRIMARY KEY,
    body TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE tokens (
    hash TEXT PRIMARY KEY,
    expires_at INTEGER NOT NULL,
    body TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE subscriptions (
    record TEXT NOT NULL,
    callback TEXT NOT NULL,
    client_id TEXT NOT NULL,
    webhook_id TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (record, callback)
);
CREATE INDEX subscriptions_by_client ON subscriptions (client_id, webhook_id);
CREATE TABLE applications (
    id TEXT PRIMARY KEY,
    body TEXT NOT NULL
);
CREATE TABLE api_keys (
    hash TEXT PRIMARY KEY,
    application_id TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE syncs (
    application TEXT NOT NULL,
    sync_id TEXT NOT NULL,
    body TEXT,
    delivered INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    completion_claimant TEXT,
    lease_holder TEXT,
    lease_until_ms INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (application, sync_id)
);
CREATE TABLE sync_counted (
    application TEXT NOT NULL,
    sync_id TEXT NOT NULL,
    person TEXT NOT NULL,
    PRIMARY KEY (application, sync_id, person)
) WITHOUT ROWID;
CREATE TABLE records (
    id TEXT PRIMARY KEY,
    body TEXT NOT NULL
);
CREATE TABLE record_changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    record TEXT NOT NULL,
    event TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);
CREATE TABLE pending (
    window INTEGER NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (window, record)
) WITHOUT ROWID;
CREATE TABLE meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE poison (
    id TEXT PRIMARY KEY,
    body TEXT NOT NULL
);
CREATE TABLE queue (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL,
    body TEXT NOT NULL,
    sent_at_ms INTEGER NOT NULL,
    first_received_at_ms INTEGER,
    receive_count INTEGER NOT NULL DEFAULT 0,
    visible_at_ms INTEGER NOT NULL,
    receipt TEXT
);
CREATE INDEX queue_by_visibility ON queue (visible_at_ms, seq);
CREATE UNIQUE INDEX queue_by_receipt ON queue (receipt);
CREATE TABLE dead_letters (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL,
    body TEXT NOT NULL,
    sent_at_ms INTEGER NOT NULL,
    receive_count INTEGER NOT NULL,
    dead_at_ms INTEGER NOT NULL
);
CREATE TABLE parked (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL,
    body TEXT NOT NULL,
    sent_at_ms INTEGER NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    visible_at_ms INTEGER NOT NULL,
    receipt TEXT
);
CREATE UNIQUE INDEX parked_by_receipt ON parked (receipt);
CREATE TABLE attempts (
    endpoint TEXT NOT NULL,
    sort_key TEXT NOT NULL,
    message_id TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    acked INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE UNIQUE INDEX attempts_by_endpoint ON attempts (endpoint, sort_key);
CREATE INDEX attempts_by_message ON attempts (endpoint, message_id);
CREATE TABLE messages (
    endpoint TEXT NOT NULL,
    message_id TEXT NOT NULL,
    last_attempt_ms INTEGER NOT NULL,
    acked INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE UNIQUE INDEX messages_by_endpoint ON messages (endpoint, message_id);
CREATE TABLE recoveries (
    endpoint TEXT NOT NULL,
    id TEXT NOT NULL,
    started_at_ms INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (endpoint, id)
);
";

/// Version 2: retention. Attempts, kept messages and recoveries are deleted once older
/// than the attempt retention, expired tokens once expired ([`super::SqliteStore::prune`]);
/// these indexes find them without reading the tables.
const V2: &str = "
CREATE INDEX attempts_by_time ON attempts (at_ms);
CREATE INDEX messages_by_time ON messages (last_attempt_ms);
CREATE INDEX recoveries_by_time ON recoveries (started_at_ms);
CREATE INDEX tokens_by_expiry ON tokens (expires_at);
";

/// Version 3: a receipt handle names its row (`<seq>:<uuid>`), so the delivery queue
/// needs no index of receipts (written at a random place on every receive and deletion:
/// each such write is a whole page in the WAL). A message in flight
/// during the upgrade keeps its old receipt, which no longer deletes it: it is delivered
/// again after its visibility timeout (at least once).
const V3: &str = "
DROP INDEX queue_by_receipt;
";

/// Version 4: when a sync finished (its completion claimed, or its driver saved it
/// completed or cancelled), noted by the first pruning after it: its per-person "counted"
/// markers are deleted once that is older than the retention ([`super::SqliteStore::prune`]).
const V4: &str = "
ALTER TABLE syncs ADD COLUMN finished_at_ms INTEGER;
";

/// Version 5: a delivery batch's quiet attempts (first of their series, acknowledged, not
/// an owner's redelivery, of a message with no kept row) are one row of `quiet_groups`
/// (their attempts and jobs as one JSON array, appended), found by endpoint through
/// `quiet_attempts` and by message through `quiet_locators` (one row per window tag and
/// group), instead of an attempt row and a kept-message row each with their indexes: a
/// delivery's index writes at random places go from three to one.
const V5: &str = "
CREATE TABLE quiet_groups (
    id INTEGER PRIMARY KEY,
    newest_ms INTEGER NOT NULL,
    entries TEXT NOT NULL
);
CREATE INDEX quiet_groups_by_time ON quiet_groups (newest_ms);
CREATE TABLE quiet_attempts (
    endpoint TEXT NOT NULL,
    sort_key TEXT NOT NULL,
    group_id INTEGER NOT NULL,
    entry INTEGER NOT NULL,
    PRIMARY KEY (endpoint, sort_key)
) WITHOUT ROWID;
CREATE INDEX quiet_attempts_by_group ON quiet_attempts (group_id);
CREATE TABLE quiet_locators (
    tag TEXT NOT NULL,
    group_id INTEGER NOT NULL,
    PRIMARY KEY (tag, group_id)
) WITHOUT ROWID;
CREATE INDEX quiet_locators_by_group ON quiet_locators (group_id);
";

/// Every migration, in order: entry `n` takes version `n` to `n + 1`. Never edit one that
/// has been released: add the next.
pub(crate) const MIGRATIONS: &[&str] = &[V1, V2, V3, V4, V5];

/// The schema version this program writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

fn user_version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.pragma_query_value(None, "user_version", |row| row.get(0))
}

/// Brings the database to [`SCHEMA_VERSION`], one migration per transaction (a crash in
/// between leaves a consistent older version, migrated further on the next open).
pub(crate) fn migrate(conn: &mut Connection, file: &Path) -> Result<(), OpenError> {
    migrate_to(conn, file, SCHEMA_VERSION)
}

/// Brings the database to `target` (tests build older versions with it).
pub(crate) fn migrate_to(conn: &mut Connection, file: &Path, target: u32) -> Result<(), OpenError> {
    let sqlite = |source| OpenError::Sqlite {
        file: file.to_owned(),
        source,
    };
    loop {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sqlite)?;
        // Read inside the write transaction: another process may have migrated meanwhile.
        let version = user_version(&tx).map_err(sqlite)?;
        if version > SCHEMA_VERSION {
            return Err(OpenError::NewerSchema {
                file: file.to_owned(),
                found: version,
                known: SCHEMA_VERSION,
            });
        }
        if version >= target {
            return Ok(());
        }
        tx.execute_batch(MIGRATIONS[version as usize])
            .map_err(sqlite)?;
        tx.pragma_update(None, "user_version", version + 1)
            .map_err(sqlite)?;
        tx.commit().map_err(sqlite)?;
        tracing::info!(file = %file.display(), version = version + 1, "database schema migrated");
    }
}

/// Frees the flush leases (the whole flush's and any part's) and every sync lease: called by the runner that just took the
/// directory's lock, so whoever held them was killed (they would otherwise block the
/// flush and the syncs until they expired, up to a quarter of an hour).
pub(crate) fn free_leases(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "DELETE FROM meta WHERE name = 'flush_lease' OR name LIKE 'flush_lease#%';
         UPDATE syncs SET lease_holder = NULL, lease_until_ms = 0 WHERE lease_holder IS NOT NULL;",
    )
}
