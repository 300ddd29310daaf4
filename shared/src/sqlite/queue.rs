//! The delivery queue, its dead-letter queue and the parked queue on SQLite, with SQS
//! semantics as [`crate::memory::MemoryQueue`] has them: a receive hides a message for the
//! visibility timeout and counts it, a message comes back unless deleted, its visibility
//! is changed through the receipt of its latest receive, and the receive after the
//! maximum count moves it to the dead-letter queue. Times are wall-clock epoch
//! milliseconds, so a message in flight when the process was killed comes back after its
//! visibility timeout in the next process.

use super::db::{Database, Durability, backend};
use crate::clock::Clock;
use crate::job::DeliveryJob;
use crate::memory::{QueueDepth, ReceivedMessage};
use crate::message;
use crate::ports::{
    BackendError, BackendResult, DeliveryQueue, Enqueued, ParkedMessage, ParkedQueue, RefusedJob,
};
use async_trait::async_trait;
use aws_lambda_events::event::sqs::SqsBatchResponse;
use rusqlite::{Connection, params};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// The longest a long poll sleeps without looking again: changes made by another process
/// (`webhooks-admin dlq replay`) wake no one here.
const POLL_AGAIN: Duration = Duration::from_secs(1);

/// The queues of a data directory.
pub struct SqliteQueue {
    db: Arc<Database>,
    clock: Arc<dyn Clock>,
    changed: Arc<Notify>,
    visibility_timeout: Duration,
    max_receive_count: u32,
}

impl std::fmt::Debug for SqliteQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteQueue")
            .field("db", &self.db)
            .field("visibility_timeout", &self.visibility_timeout)
            .field("max_receive_count", &self.max_receive_count)
            .finish()
    }
}

fn millis(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

/// A receipt handle names its message's row and the receive (`<seq>:<uuid>`), so a
/// deletion or a visibility change finds the row by its key and checks the receive: no
/// index of receipts to keep up on every receive and deletion.
fn receipt(seq: i64) -> String {
    format!("{seq}:{}", new_id())
}

/// The row a receipt handle names (`None`: not one of ours, so no message has it).
fn receipt_row(receipt: &str) -> Option<i64> {
    receipt.split_once(':')?.0.parse().ok()
}

fn receipt_error() -> BackendError {
    BackendError::Unavailable(
        "receipt handle is not valid (message deleted or received again)".into(),
    )
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A visible message, as a receive finds it.
struct Due {
    seq: i64,
    message_id: String,
    body: String,
    sent_at_ms: i64,
    first_received_at_ms: Option<i64>,
    receive_count: u32,
}

/// Up to `limit` messages visible at `now`, the longest visible first.
fn due_messages(conn: &Connection, now: i64, limit: i64) -> BackendResult<Vec<Due>> {
    let mut due = conn
        .prepare_cached(
            "SELECT seq, message_id, body, sent_at_ms, first_received_at_ms, receive_count
             FROM queue WHERE visible_at_ms <= ?1 ORDER BY visible_at_ms, seq LIMIT ?2",
        )
        .map_err(backend)?;
    due.query_map(params![now, limit], |r| {
        Ok(Due {
            seq: r.get(0)?,
            message_id: r.get(1)?,
            body: r.get(2)?,
            sent_at_ms: r.get(3)?,
            first_received_at_ms: r.get(4)?,
            receive_count: r.get(5)?,
        })
    })
    .map_err(backend)?
    .collect::<Result<Vec<_>, _>>()
    .map_err(backend)
}

/// Moves message `seq` to the dead-letter queue (its receives are spent).
fn dead_letter(conn: &Connection, seq: i64, now: i64) -> BackendResult<()> {
    conn.prepare_cached(
        "INSERT INTO dead_letters (message_id, body, sent_at_ms, receive_count, dead_at_ms)
         SELECT message_id, body, sent_at_ms, receive_count, ?2 FROM queue WHERE seq = ?1",
    )
    .and_then(|mut s| s.execute(params![seq, now]))
    .and_then(|_| conn.prepare_cached("DELETE FROM queue WHERE seq = ?1"))
    .and_then(|mut s| s.execute([seq]))
    .map_err(backend)?;
    Ok(())
}

/// Receives `due`: a new receipt, hidden until `hidden_until`.
fn hand_out(
    conn: &Connection,
    due: Due,
    now: i64,
    hidden_until: i64,
) -> BackendResult<ReceivedMessage> {
    let receipt = receipt(due.seq);
    let first = due.first_received_at_ms.unwrap_or(now);
    conn.prepare_cached(
        "UPDATE queue SET receive_count = receive_count + 1, receipt = ?2,
             visible_at_ms = ?3, first_received_at_ms = ?4
         WHERE seq = ?1",
    )
    .and_then(|mut s| s.execute(params![due.seq, receipt, hidden_until, first]))
    .map_err(backend)?;
    Ok(ReceivedMessage {
        message_id: due.message_id,
        receipt_handle: receipt,
        body: due.body,
        receive_count: due.receive_count + 1,
        sent_at_ms: due.sent_at_ms.max(0) as u128,
        first_received_at_ms: first.max(0) as u128,
    })
}

/// Inserts a message into the delivery queue.
fn send(conn: &Connection, body: &str, now: i64, delay: Duration) -> BackendResult<()> {
    conn.prepare_cached(
        "INSERT INTO queue (message_id, body, sent_at_ms, visible_at_ms) VALUES (?1, ?2, ?3, ?4)",
    )
    .and_then(|mut s| s.execute(params![new_id(), body, now, now + millis(delay)]))
    .map_err(backend)?;
    Ok(())
}

impl SqliteQueue {
    /// The queues of an open data directory: received messages hide for
    /// `visibility_timeout`; the receive after the `max_receive_count`-th dead-letters.
    pub fn new(
        db: Arc<Database>,
        clock: Arc<dyn Clock>,
        visibility_timeout: Duration,
        max_receive_count: u32,
    ) -> Self {
        Self {
            db,
            clock,
            changed: Arc::new(Notify::new()),
            visibility_timeout,
            max_receive_count: max_receive_count.max(1),
        }
    }

    fn now(&self) -> i64 {
        self.clock.now().epoch_ms()
    }

    /// Sends a message that becomes visible after `delay`.
    async fn send_delayed(
        &self,
        body: String,
        delay: Duration,
        durability: Durability,
    ) -> BackendResult<()> {
        let now = self.now();
        self.db
            .write(durability, move |conn| send(conn, &body, now, delay))
            .await?;
        self.changed.notify_waiters();
        Ok(())
    }

    /// Receives up to `max` visible messages, waiting up to `wait` for one (long poll).
    pub async fn receive(&self, max: usize, wait: Duration) -> BackendResult<Vec<ReceivedMessage>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (batch, next_visible_ms) = self.try_receive(max).await?;
            let now = tokio::time::Instant::now();
            if !batch.is_empty() || now >= deadline {
                return Ok(batch);
            }
            let mut wake = deadline.min(now + POLL_AGAIN);
            if let Some(at) = next_visible_ms {
                let until = Duration::from_millis(at.saturating_sub(self.now()).max(0) as u64);
                wake = wake.min(now + until);
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// One receive: the batch, and when the next hidden message becomes visible.
    async fn try_receive(&self, max: usize) -> BackendResult<(Vec<ReceivedMessage>, Option<i64>)> {
        let now = self.now();
        let (hide, max_receives) = (millis(self.visibility_timeout), self.max_receive_count);
        self.db
            .write(Durability::Normal, move |conn| {
                let mut batch = Vec::new();
                // Dead-lettered ones do not fill the batch: look at a few more.
                let look_at = (max as i64).saturating_mul(2).max(16);
                for due in due_messages(conn, now, look_at)? {
                    if batch.len() >= max {
                        break;
                    }
                    if due.receive_count >= max_receives {
                        dead_letter(conn, due.seq, now)?;
                        let (message_id, receives) = (&due.message_id, due.receive_count);
                        tracing::warn!(%message_id, receives, "moved to the dead-letter queue");
                        continue;
                    }
                    batch.push(hand_out(conn, due, now, now + hide)?);
                }
                let next_visible: Option<i64> = conn
                    .prepare_cached("SELECT MIN(visible_at_ms) FROM queue WHERE visible_at_ms > ?1")
                    .and_then(|mut s| s.query_row([now], |r| r.get(0)))
                    .map_err(backend)?;
                Ok((batch, next_visible))
            })
            .await
    }

    /// Deletes a received message. False when the receipt is unknown.
    pub async fn delete(&self, receipt_handle: &str) -> BackendResult<bool> {
        let receipt = receipt_handle.to_owned();
        let Some(seq) = receipt_row(&receipt) else {
            return Ok(false);
        };
        self.db
            .write(Durability::Normal, move |conn| {
                conn.prepare_cached("DELETE FROM queue WHERE seq = ?1 AND receipt = ?2")
                    .and_then(|mut s| s.execute(params![seq, receipt]))
                    .map(|n| n == 1)
                    .map_err(backend)
            })
            .await
    }

    /// Settles a delivered batch as Lambda's SQS event source does: deletes, in one
    /// transaction, every received message `response` does not report failed.
    pub async fn settle(
        &self,
        received: &[ReceivedMessage],
        response: &SqsBatchResponse,
    ) -> BackendResult<()> {
        let done: Vec<String> = received
            .iter()
            .filter(|m| {
                !response
                    .batch_item_failures
                    .iter()
                    .any(|f| f.item_identifier == m.message_id)
            })
            .map(|m| m.receipt_handle.clone())
            .collect();
        if done.is_empty() {
            return Ok(());
        }
        // Normal: a deletion lost to a power loss sends the message again (at least once).
        self.db
            .write(Durability::Normal, move |conn| {
                let mut delete = conn
                    .prepare_cached("DELETE FROM queue WHERE seq = ?1 AND receipt = ?2")
                    .map_err(backend)?;
                for receipt in done {
                    let Some(seq) = receipt_row(&receipt) else {
                        continue;
                    };
                    delete.execute(params![seq, receipt]).map_err(backend)?;
                }
                Ok(())
            })
            .await
    }

    /// Makes a received message visible again `timeout` from now.
    pub async fn change_visibility(
        &self,
        receipt_handle: &str,
        timeout: Duration,
    ) -> BackendResult<()> {
        let (receipt, at) = (receipt_handle.to_owned(), self.now() + millis(timeout));
        let seq = receipt_row(&receipt).ok_or_else(receipt_error)?;
        let changed = self
            .db
            .write(Durability::Normal, move |conn| {
                conn.prepare_cached(
                    "UPDATE queue SET visible_at_ms = ?3 WHERE seq = ?1 AND receipt = ?2",
                )
                .and_then(|mut s| s.execute(params![seq, receipt, at]))
                .map_err(backend)
            })
            .await?;
        if changed == 0 {
            return Err(receipt_error());
        }
        self.changed.notify_waiters();
        Ok(())
    }

    /// Current message counts.
    pub async fn depth(&self) -> BackendResult<QueueDepth> {
        let now = self.now();
        self.db
            .read(move |conn| {
                let count = |sql: &str, with_now: bool| -> BackendResult<usize> {
                    let mut s = conn.prepare_cached(sql).map_err(backend)?;
                    let n: i64 = if with_now {
                        s.query_row([now], |r| r.get(0))
                    } else {
                        s.query_row([], |r| r.get(0))
                    }
                    .map_err(backend)?;
                    Ok(n.max(0) as usize)
                };
                Ok(QueueDepth {
                    visible: count("SELECT COUNT(*) FROM queue WHERE visible_at_ms <= ?1", true)?,
                    in_flight: count("SELECT COUNT(*) FROM queue WHERE visible_at_ms > ?1", true)?,
                    dead: count("SELECT COUNT(*) FROM dead_letters", false)?,
                    parked: count("SELECT COUNT(*) FROM parked", false)?,
                })
            })
            .await
    }

    /// Moves every dead-lettered message back to the queue as a new message (receive
    /// count zero), in one transaction, as an SQS redrive does; returns how many moved.
    pub async fn redrive_dead_letters(&self) -> BackendResult<usize> {
        let now = self.now();
        let moved = self
            .db
            .write(Durability::Full, move |conn| {
                let bodies = conn
                    .prepare_cached("SELECT body FROM dead_letters ORDER BY seq")
                    .and_then(|mut s| {
                        s.query_map([], |r| r.get::<_, String>(0))?
                            .collect::<Result<Vec<_>, _>>()
                    })
                    .map_err(backend)?;
                for body in &bodies {
                    send(conn, body, now, Duration::ZERO)?;
                }
                conn.execute("DELETE FROM dead_letters", [])
                    .map_err(backend)?;
                Ok(bodies.len())
            })
            .await?;
        self.changed.notify_waiters();
        Ok(moved)
    }

    /// Bodies of the messages in the dead-letter queue, oldest first.
    pub async fn dead_letters(&self) -> BackendResult<Vec<String>> {
        self.bodies("SELECT body FROM dead_letters ORDER BY seq")
            .await
    }

    /// Bodies of the messages in the parked queue, oldest first.
    pub async fn parked(&self) -> BackendResult<Vec<String>> {
        self.bodies("SELECT body FROM parked ORDER BY seq").await
    }

    async fn bodies(&self, sql: &'static str) -> BackendResult<Vec<String>> {
        self.db
            .read(move |conn| {
                let mut statement = conn.prepare_cached(sql).map_err(backend)?;
                let rows = statement
                    .query_map([], |r| r.get::<_, String>(0))
                    .map_err(backend)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(backend)
            })
            .await
    }

    async fn insert_aside(&self, table: &'static str, job: &DeliveryJob) -> BackendResult<()> {
        let body = message::encode(job);
        message::check(&body).map_err(BackendError::Refused)?;
        let now = self.now();
        let sql = match table {
            "dead_letters" => {
                "INSERT INTO dead_letters (message_id, body, sent_at_ms, receive_count, dead_at_ms)
                 VALUES (?1, ?2, ?3, 0, ?3)"
            }
            _ => {
                "INSERT INTO parked (message_id, body, sent_at_ms, visible_at_ms)
                 VALUES (?1, ?2, ?3, ?3)"
            }
        };
        self.db
            .write(Durability::Normal, move |conn| {
                conn.prepare_cached(sql)
                    .and_then(|mut s| s.execute(params![new_id(), body, now]))
                    .map_err(backend)?;
                Ok(())
            })
            .await
    }
}

#[async_trait]
impl DeliveryQueue for SqliteQueue {
    async fn enqueue(&self, jobs: &[DeliveryJob]) -> BackendResult<Enqueued> {
        let mut enqueued = Enqueued::default();
        let mut bodies = Vec::with_capacity(jobs.len());
        for (index, job) in jobs.iter().enumerate() {
            let body = message::encode(job);
            match message::check(&body) {
                Ok(()) => bodies.push(body),
                Err(refusal) => enqueued.refused.push(RefusedJob { index, refusal }),
            }
        }
        if bodies.is_empty() {
            return Ok(enqueued);
        }
        let now = self.now();
        // Full: the API answers right after an enqueue (a sync started, an operator's
        // replay). The flush, which would do with Normal (its cursor save comes after),
        // pays one fsync per page, shared with every write committed beside it.
        self.db
            .write(Durability::Full, move |conn| {
                for body in &bodies {
                    send(conn, body, now, Duration::ZERO)?;
                }
                Ok(())
            })
            .await?;
        self.changed.notify_waiters();
        Ok(enqueued)
    }

    async fn enqueue_delayed(&self, job: &DeliveryJob, delay: Duration) -> BackendResult<()> {
        let body = message::encode(job);
        message::check(&body).map_err(BackendError::Refused)?;
        // Full: an owner's recovery sends its messages so before the API answers (a sync
        // step's successor, which would do with Normal, is one write per step).
        self.send_delayed(
            body,
            delay.min(crate::ports::MAX_SEND_DELAY),
            Durability::Full,
        )
        .await
    }

    async fn retry_later(&self, receipt_handle: &str, delay: Duration) -> BackendResult<()> {
        self.change_visibility(receipt_handle, delay).await
    }

    async fn dead_letter(&self, job: &DeliveryJob) -> BackendResult<()> {
        self.insert_aside("dead_letters", job).await
    }

    async fn park(&self, job: &DeliveryJob) -> BackendResult<()> {
        self.insert_aside("parked", job).await
    }
}

#[async_trait]
impl ParkedQueue for SqliteQueue {
    async fn take_parked(&self, max: usize, hold: Duration) -> BackendResult<Vec<ParkedMessage>> {
        let (now, hold) = (self.now(), millis(hold));
        self.db
            .write(Durability::Normal, move |conn| {
                let rows = conn
                    .prepare_cached(
                        "SELECT seq, message_id, body FROM parked WHERE visible_at_ms <= ?1
                         ORDER BY seq LIMIT ?2",
                    )
                    .and_then(|mut s| {
                        s.query_map(params![now, max.min(i64::MAX as usize) as i64], |r| {
                            Ok((
                                r.get::<_, i64>(0)?,
                                r.get::<_, String>(1)?,
                                r.get::<_, String>(2)?,
                            ))
                        })?
                        .collect::<Result<Vec<_>, _>>()
                    })
                    .map_err(backend)?;
                let mut taken = Vec::with_capacity(rows.len());
                for (seq, message_id, body) in rows {
                    let handle = new_id();
                    conn.prepare_cached(
                        "UPDATE parked SET receipt = ?2, receive_count = receive_count + 1,
                             visible_at_ms = ?3 WHERE seq = ?1",
                    )
                    .and_then(|mut s| s.execute(params![seq, handle, now + hold]))
                    .map_err(backend)?;
                    taken.push(ParkedMessage {
                        message_id,
                        handle,
                        body,
                    });
                }
                Ok(taken)
            })
            .await
    }

    async fn remove_parked(&self, handle: &str) -> BackendResult<()> {
        let handle = handle.to_owned();
        let removed = self
            .db
            .write(Durability::Normal, move |conn| {
                conn.prepare_cached("DELETE FROM parked WHERE receipt = ?1")
                    .and_then(|mut s| s.execute([handle]))
                    .map_err(backend)
            })
            .await?;
        if removed == 0 {
            return Err(receipt_error());
        }
        Ok(())
    }

    async fn release_parked(&self, handle: &str) -> BackendResult<()> {
        let (handle, now) = (handle.to_owned(), self.now());
        let released = self
            .db
            .write(Durability::Normal, move |conn| {
                conn.prepare_cached("UPDATE parked SET visible_at_ms = ?2 WHERE receipt = ?1")
                    .and_then(|mut s| s.execute(params![handle, now]))
                    .map_err(backend)
            })
            .await?;
        if released == 0 {
            return Err(receipt_error());
        }
        Ok(())
    }
}
