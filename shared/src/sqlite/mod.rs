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
use serde::{Serialize, de::DeserializeOwned};

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
