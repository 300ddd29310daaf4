//! The SQLite adapter set for the contract: one fresh data directory per scenario,
//! removed with the harness.

use super::{Adapters, Harness, QueueSettings};
use crate::memory::ReceivedMessage;
use crate::ports::Person;
use crate::record::RecordId;
use crate::sqlite::{Access, Database, SqliteQueue, SqliteRecords, SqliteStore};
use async_trait::async_trait;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

impl Adapters {
    /// The SQLite adapter set on a fresh data directory under the system's temporary
    /// directory (visibility timeout 3 s, dead-lettered on the third receive).
    pub fn sqlite() -> Self {
        let queue_settings = QueueSettings {
            visibility_timeout: Duration::from_secs(3),
            max_receive_count: 2,
        };
        let dir = TempDir::new();
        let db = Database::open(&dir.0, Access::Runner).expect("a fresh data directory opens");
        let clock: Arc<dyn crate::clock::Clock> = Arc::new(crate::clock::SystemClock);
        let records = Arc::new(SqliteRecords::new(db.clone(), clock.clone()));
        let queue = Arc::new(SqliteQueue::new(
            db.clone(),
            clock.clone(),
            queue_settings.visibility_timeout,
            queue_settings.max_receive_count,
        ));
        Self {
            ports: crate::ports::Ports::over(
                Arc::new(SqliteStore::new(db.clone())),
                records.clone(),
                queue.clone(),
                Arc::new(crate::memory::LoggedEvents::default()),
                clock,
            ),
            parked: queue.clone(),
            harness: Arc::new(SqliteHarness {
                records,
                queue,
                db,
                _dir: dir,
            }),
            queue: queue_settings,
        }
    }
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("webhooks-contract-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The registry's and the event source's side of a data directory.
struct SqliteHarness {
    records: Arc<SqliteRecords>,
    queue: Arc<SqliteQueue>,
    db: Arc<Database>,
    // Dropped after the database is closed.
    _dir: TempDir,
}

impl Drop for SqliteHarness {
    fn drop(&mut self) {
        self.db.close();
    }
}

#[async_trait]
impl Harness for SqliteHarness {
    async fn put_person(&self, id: &RecordId, person: &Person) {
        self.records
            .put_person(id, person.clone())
            .await
            .expect("put person");
    }

    async fn receive(&self, max: usize, wait: Duration) -> Vec<ReceivedMessage> {
        self.queue.receive(max, wait).await.expect("receive")
    }

    async fn dead_letters(&self) -> Vec<String> {
        self.queue.dead_letters().await.expect("dead letters")
    }
}
