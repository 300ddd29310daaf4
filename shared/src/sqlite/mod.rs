//! SQLite adapters for every port: the durable single-machine mode
//! (`webhooks-local --data-dir DIR`). One database file in the data directory holds what the
//! DynamoDB tables and the SQS queues hold on AWS, with the same contracts as the memory
//! and AWS adapters (SQS visibility, receive counts and dead-lettering included), so the
//! same handlers run over it and a restart, or a `kill -9`, loses nothing.
//!
//! [`db`] owns the file (lock, schema, the writer thread and the readers); [`schema`] the
//! tables and their migrations; then one module per group of ports.

mod attempts;
pub mod db;
mod queue;
mod records;
pub mod schema;
mod store;

pub use attempts::Pruned;
pub use db::{Access, DATABASE_FILE, Database, Durability, LOCK_FILE, OpenError};
pub use queue::SqliteQueue;
pub use records::SqliteRecords;
pub use store::SqliteStore;

use crate::ports::{BackendError, BackendResult};
use rusqlite::{Connection, Params};
use serde::{Serialize, de::DeserializeOwned};

/// Runs one statement (prepared once per connection and cached); how many rows it changed.
fn execute(conn: &Connection, sql: &str, params: impl Params) -> BackendResult<usize> {
    conn.prepare_cached(sql)
        .and_then(|mut statement| statement.execute(params))
        .map_err(db::backend)
}

/// Writes the row of `table` with this key: inserts it, or sets the columns `set` of the
/// row already there. `params` are the `key` columns' values, then the `set` columns'.
fn upsert(
    conn: &Connection,
    table: &str,
    key: &[&str],
    set: &[&str],
    params: impl Params,
) -> BackendResult<()> {
    let columns = [key, set].concat().join(", ");
    let values: Vec<String> = (1..=key.len() + set.len())
        .map(|i| format!("?{i}"))
        .collect();
    let updates: Vec<String> = set.iter().map(|c| format!("{c} = excluded.{c}")).collect();
    let sql = format!(
        "INSERT INTO {table} ({columns}) VALUES ({}) ON CONFLICT ({}) DO UPDATE SET {}",
        values.join(", "),
        key.join(", "),
        updates.join(", ")
    );
    execute(conn, &sql, params).map(|_| ())
}

/// A domain value as stored.
fn to_json<T: Serialize>(value: &T) -> BackendResult<String> {
    serde_json::to_string(value)
        .map_err(|e| BackendError::Corrupt(format!("a value does not serialize: {e}")))
}

/// A stored value read back; `what` names it in the error.
fn from_json<T: DeserializeOwned>(what: &str, text: &str) -> BackendResult<T> {
    serde_json::from_str(text).map_err(|e| BackendError::Corrupt(format!("stored {what}: {e}")))
}

#[cfg(test)]
mod tests;
