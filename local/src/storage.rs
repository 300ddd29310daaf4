//! Where the runner keeps its state: in memory (the default: gone when it stops), or in a
//! data directory's SQLite database (`--data-dir`: survives a restart or a `kill -9`).
//! Both give the same ports to the handlers; this adds what the runner itself does
//! beyond them — the event source's side of the queue, the records table's writes with
//! their stream, the current window, the operator's views.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use webhooks::aws_lambda_events::event::dynamodb::EventRecord;
use webhooks::aws_lambda_events::event::sqs::SqsBatchResponse;
use webhooks::clock::Clock;
use webhooks::memory::{MemoryQueue, MemoryRecords, MemoryStore, QueueDepth, ReceivedMessage};
use webhooks::ports::{BackendResult, OpsEvents, ParkedQueue, Person, Ports};
use webhooks::record::RecordId;
use webhooks::sqlite::{
    Access, Database, OpenError, Pruned, SqliteQueue, SqliteRecords, SqliteStore,
};
use webhooks::window::WindowId;

/// The runner's storage.
pub enum Storage {
    /// Everything in memory.
    Memory {
        /// The service table.
        store: Arc<MemoryStore>,
        /// The records table.
        records: Arc<MemoryRecords>,
        /// The queues.
        queue: Arc<MemoryQueue>,
    },
    /// Everything in a data directory.
    Durable {
        /// The open directory (its lock held while this lives).
        db: Arc<Database>,
        /// The service table.
        store: Arc<SqliteStore>,
        /// The records table and its change stream.
        records: Arc<SqliteRecords>,
        /// The queues.
        queue: Arc<SqliteQueue>,
    },
}

impl Storage {
    pub fn memory(
        clock: Arc<dyn Clock>,
        visibility_timeout: Duration,
        max_receive_count: u32,
    ) -> Self {
        Self::Memory {
            store: Arc::new(MemoryStore::default()),
            records: Arc::new(MemoryRecords::default().with_clock(clock.clone())),
            queue: Arc::new(
                MemoryQueue::new(visibility_timeout, max_receive_count).with_clock(clock),
            ),
        }
    }

    /// In the data directory `dir` (created when missing), locked against a second runner.
    pub fn open(
        dir: &Path,
        clock: Arc<dyn Clock>,
        visibility_timeout: Duration,
        max_receive_count: u32,
        attempt_retention: Duration,
    ) -> Result<Self, OpenError> {
        let db = Database::open(dir, Access::Runner)?;
        Ok(Self::Durable {
            store: Arc::new(SqliteStore::new(db.clone()).with_attempt_retention(attempt_retention)),
            records: Arc::new(SqliteRecords::new(db.clone(), clock.clone())),
            queue: Arc::new(SqliteQueue::new(
                db.clone(),
                clock,
                visibility_timeout,
                max_receive_count,
            )),
            db,
        })
    }

    /// The ports the handlers use.
    pub fn ports(&self, events: Arc<dyn OpsEvents>, clock: Arc<dyn Clock>) -> Ports {
        match self {
            Self::Memory {
                store,
                records,
                queue,
            } => Ports::over(store.clone(), records.clone(), queue.clone(), events, clock),
            Self::Durable {
                store,
                records,
                queue,
                ..
            } => Ports::over(store.clone(), records.clone(), queue.clone(), events, clock),
        }
    }

    /// The data directory, when durable.
    pub fn data_dir(&self) -> Option<&Path> {
        match self {
            Self::Memory { .. } => None,
            Self::Durable { db, .. } => Some(db.dir()),
        }
    }

    /// Receives up to `max` delivery messages, waiting up to `wait` for one.
    pub async fn receive(&self, max: usize, wait: Duration) -> BackendResult<Vec<ReceivedMessage>> {
        match self {
            Self::Memory { queue, .. } => Ok(queue.receive(max, wait).await),
            Self::Durable { queue, .. } => queue.receive(max, wait).await,
        }
    }

    /// Deletes what a delivery batch did not report failed.
    pub async fn settle(
        &self,
        received: &[ReceivedMessage],
        response: &SqsBatchResponse,
    ) -> BackendResult<()> {
        match self {
            Self::Memory { queue, .. } => {
                queue.settle(received, response);
                Ok(())
            }
            Self::Durable { queue, .. } => queue.settle(received, response).await,
        }
    }

    /// Queue, dead-letter and parked counts.
    pub async fn depth(&self) -> BackendResult<QueueDepth> {
        match self {
            Self::Memory { queue, .. } => Ok(queue.depth()),
            Self::Durable { queue, .. } => queue.depth().await,
        }
    }

    /// Moves every dead letter back to the delivery queue; returns how many.
    pub async fn redrive_dead_letters(&self) -> BackendResult<usize> {
        match self {
            Self::Memory { queue, .. } => Ok(queue.redrive_dead_letters()),
            Self::Durable { queue, .. } => queue.redrive_dead_letters().await,
        }
    }

    /// Bodies of the dead letters.
    pub async fn dead_letters(&self) -> BackendResult<Vec<String>> {
        match self {
            Self::Memory { queue, .. } => Ok(queue.dead_letters()),
            Self::Durable { queue, .. } => queue.dead_letters().await,
        }
    }

    /// Bodies of the parked jobs.
    pub async fn parked(&self) -> BackendResult<Vec<String>> {
        match self {
            Self::Memory { queue, .. } => Ok(queue.parked()),
            Self::Durable { queue, .. } => queue.parked().await,
        }
    }

    /// The parked queue, as a replay takes from it.
    pub fn parked_queue(&self) -> &dyn ParkedQueue {
        match self {
            Self::Memory { queue, .. } => queue.as_ref(),
            Self::Durable { queue, .. } => queue.as_ref(),
        }
    }

    /// Writes a person; returns the stream record of the change.
    pub async fn put_person(&self, id: &RecordId, person: Person) -> BackendResult<EventRecord> {
        match self {
            Self::Memory { records, .. } => Ok(records.put_person(id, person)),
            Self::Durable { records, .. } => records.put_person(id, person).await,
        }
    }

    /// Deletes a person; returns the stream record of the change, if it existed.
    pub async fn delete_person(&self, id: &RecordId) -> BackendResult<Option<EventRecord>> {
        match self {
            Self::Memory { records, .. } => Ok(records.delete_person(id)),
            Self::Durable { records, .. } => records.delete_person(id).await,
        }
    }

    /// The changes change capture has not taken yet (left by a crash or a failed capture).
    pub async fn uncaptured(&self) -> BackendResult<Vec<EventRecord>> {
        match self {
            // Captured in the same call that made them: nothing is ever left.
            Self::Memory { .. } => Ok(Vec::new()),
            Self::Durable { records, .. } => records.uncaptured().await,
        }
    }

    /// Drops changes change capture has taken from the stream.
    pub async fn captured(&self, changes: &[EventRecord]) -> BackendResult<()> {
        match self {
            Self::Memory { .. } => Ok(()),
            Self::Durable { records, .. } => records.captured(changes).await,
        }
    }

    /// The window changes were captured in when the last runner stopped (1 when new).
    pub async fn current_window(&self) -> BackendResult<WindowId> {
        match self {
            Self::Memory { .. } => Ok(WindowId(1)),
            Self::Durable { store, .. } => store.current_window().await,
        }
    }

    /// Saves the window changes are captured in from now on.
    pub async fn save_current_window(&self, window: WindowId) -> BackendResult<()> {
        match self {
            Self::Memory { .. } => Ok(()),
            Self::Durable { store, .. } => store.save_current_window(window).await,
        }
    }

    /// Deletes what the retention no longer keeps (durable mode; in memory, nothing is
    /// kept beyond the process anyway).
    pub async fn prune(&self, now_ms: i64) -> BackendResult<Option<Pruned>> {
        match self {
            Self::Memory { .. } => Ok(None),
            Self::Durable { store, .. } => store.prune(now_ms).await.map(Some),
        }
    }

    /// Waits until every write sent is committed and closes the database.
    pub fn close(&self) {
        if let Self::Durable { db, .. } = self {
            db.close();
        }
    }
}
