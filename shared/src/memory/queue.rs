//! A queue with SQS semantics: messages are hidden for the visibility timeout when
//! received, come back unless deleted, can have their visibility changed through the
//! receipt handle of their latest receive, count their receives, and move to the
//! dead-letter queue when a receive would exceed the maximum receive count. Jobs are
//! written and checked as for SQS ([`crate::message`]): what AWS would refuse, this
//! queue refuses too. Beside it, the parked queue holds jobs for disabled endpoints.

use super::Gate;
use crate::clock::{Clock, SystemClock};
use crate::job::DeliveryJob;
use crate::message::{self, Refusal};
use crate::ports::{
    BackendError, BackendResult, DeliveryQueue, Enqueued, ParkedMessage, ParkedQueue, RefusedJob,
};
use async_trait::async_trait;
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// A message as a receive hands it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    pub message_id: String,
    /// The handle of this receive (for delete and visibility changes).
    pub receipt_handle: String,
    pub body: String,
    /// How many times it has been received, this time included.
    pub receive_count: u32,
    /// When it was sent, epoch milliseconds.
    pub sent_at_ms: u128,
    /// When it was first received, epoch milliseconds.
    pub first_received_at_ms: u128,
}

impl ReceivedMessage {
    /// A received batch as the Lambda SQS event source would hand it to the delivery
    /// function: one event of these messages, from the queue `queue_arn`.
    pub fn batch_event(received: &[Self], queue_arn: &str) -> SqsEvent {
        let mut event = SqsEvent::default();
        event.records = received
            .iter()
            .map(|m| m.to_sqs_message(queue_arn))
            .collect();
        event
    }

    /// The message as the Lambda SQS event source would hand it to the function.
    pub fn to_sqs_message(&self, queue_arn: &str) -> SqsMessage {
        let mut message = SqsMessage::default();
        message.message_id = Some(self.message_id.clone());
        message.receipt_handle = Some(self.receipt_handle.clone());
        message.body = Some(self.body.clone());
        message.attributes = HashMap::from([
            (
                "ApproximateReceiveCount".to_owned(),
                self.receive_count.to_string(),
            ),
            ("SentTimestamp".to_owned(), self.sent_at_ms.to_string()),
            (
                "ApproximateFirstReceiveTimestamp".to_owned(),
                self.first_received_at_ms.to_string(),
            ),
        ]);
        message.event_source = Some("aws:sqs".into());
        message.event_source_arn = Some(queue_arn.to_owned());
        message.aws_region = Some("local".into());
        message
    }
}

/// Message counts, as SQS's approximate attributes report them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueDepth {
    /// Ready to be received.
    pub visible: usize,
    /// Received and hidden.
    pub in_flight: usize,
    /// In the dead-letter queue.
    pub dead: usize,
    /// In the parked queue (jobs for disabled endpoints).
    pub parked: usize,
}

#[derive(Debug, Clone)]
struct Stored {
    message_id: String,
    body: String,
    sent_at_ms: u128,
    first_received_at_ms: Option<u128>,
    receive_count: u32,
    visible_at: Instant,
    receipt: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    messages: BTreeMap<u64, Stored>,
    /// The current receipt handle of each in-flight message.
    receipts: HashMap<String, u64>,
    next_seq: u64,
    dead: Vec<Stored>,
    parked: Vec<Stored>,
}

/// An in-memory SQS queue with its dead-letter queue.
#[derive(Debug)]
pub struct MemoryQueue {
    shared: Arc<Shared>,
    /// Stamps `SentTimestamp` and `ApproximateFirstReceiveTimestamp` (visibility runs on
    /// tokio's clock, which tests pause).
    clock: Arc<dyn Clock>,
    visibility_timeout: Duration,
    max_receive_count: u32,
    gate: Gate,
}

/// The messages, and the signal a long poll waits on.
#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    changed: Notify,
}

impl MemoryQueue {
    /// A queue whose messages hide for `visibility_timeout` when received and move to the
    /// dead-letter queue on the receive after the `max_receive_count`-th.
    pub fn new(visibility_timeout: Duration, max_receive_count: u32) -> Self {
        assert!(max_receive_count > 0, "max receive count must be positive");
        Self {
            shared: Arc::default(),
            clock: Arc::new(SystemClock),
            visibility_timeout,
            max_receive_count,
            gate: Gate::default(),
        }
    }

    /// This queue with its messages' times stamped by `clock`.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    fn epoch_ms(&self) -> u128 {
        u128::try_from(self.clock.now().epoch_ms()).unwrap_or_default()
    }

    /// This queue through a fault plan: every port operation of the handle returned goes
    /// through `faults`; this handle stays as it is (the event source and the test use it).
    #[cfg(any(test, feature = "testing"))]
    pub fn with_faults(&self, faults: Arc<crate::testing::faults::Faults>) -> Self {
        Self {
            shared: self.shared.clone(),
            clock: self.clock.clone(),
            visibility_timeout: self.visibility_timeout,
            max_receive_count: self.max_receive_count,
            gate: Gate::with(faults),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().expect("queue lock")
    }

    /// Sends a message; returns its id.
    pub fn send(&self, body: String) -> String {
        self.send_delayed(body, Duration::ZERO)
    }

    /// Sends a message that becomes visible after `delay`; returns its id.
    pub fn send_delayed(&self, body: String, delay: Duration) -> String {
        let message_id = uuid::Uuid::new_v4().to_string();
        {
            let mut state = self.state();
            let seq = state.next_seq;
            state.next_seq += 1;
            state.messages.insert(
                seq,
                Stored {
                    message_id: message_id.clone(),
                    body,
                    sent_at_ms: self.epoch_ms(),
                    first_received_at_ms: None,
                    receive_count: 0,
                    visible_at: Instant::now() + delay,
                    receipt: None,
                },
            );
        }
        self.shared.changed.notify_waiters();
        message_id
    }

    /// Receives up to `max` visible messages, waiting up to `wait` for one (long poll).
    pub async fn receive(&self, max: usize, wait: Duration) -> Vec<ReceivedMessage> {
        let deadline = Instant::now() + wait;
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (batch, next_visible) = self.try_receive(max);
            let now = Instant::now();
            if !batch.is_empty() || now >= deadline {
                return batch;
            }
            let wake = next_visible.map_or(deadline, |t| t.min(deadline));
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    fn try_receive(&self, max: usize) -> (Vec<ReceivedMessage>, Option<Instant>) {
        let now = Instant::now();
        let mut state = self.state();
        let mut batch = Vec::new();
        let mut dead = Vec::new();
        let mut stale_receipts: Vec<String> = Vec::new();
        let mut fresh_receipts: Vec<(String, u64)> = Vec::new();
        let mut next_visible: Option<Instant> = None;
        for (seq, m) in state.messages.iter_mut() {
            if m.visible_at > now {
                next_visible = Some(next_visible.map_or(m.visible_at, |t| t.min(m.visible_at)));
                continue;
            }
            if batch.len() >= max {
                break;
            }
            if m.receive_count >= self.max_receive_count {
                dead.push(*seq);
                continue;
            }
            m.receive_count += 1;
            let receipt = uuid::Uuid::new_v4().to_string();
            if let Some(old) = m.receipt.replace(receipt.clone()) {
                stale_receipts.push(old);
            }
            fresh_receipts.push((receipt.clone(), *seq));
            m.visible_at = now + self.visibility_timeout;
            let first = *m
                .first_received_at_ms
                .get_or_insert_with(|| self.epoch_ms());
            batch.push(ReceivedMessage {
                message_id: m.message_id.clone(),
                receipt_handle: receipt,
                body: m.body.clone(),
                receive_count: m.receive_count,
                sent_at_ms: m.sent_at_ms,
                first_received_at_ms: first,
            });
        }
        for old in stale_receipts {
            state.receipts.remove(&old);
        }
        state.receipts.extend(fresh_receipts);
        for seq in dead {
            if let Some(m) = state.messages.remove(&seq) {
                if let Some(receipt) = &m.receipt {
                    state.receipts.remove(receipt);
                }
                tracing::warn!(message_id = %m.message_id, receives = m.receive_count, "moved to the dead-letter queue");
                state.dead.push(m);
            }
        }
        (batch, next_visible)
    }

    fn find_by_receipt<'a>(state: &'a mut State, receipt: &str) -> Option<(u64, &'a mut Stored)> {
        let seq = *state.receipts.get(receipt)?;
        state.messages.get_mut(&seq).map(|m| (seq, m))
    }

    /// Deletes a received message. False when the receipt is unknown.
    pub fn delete(&self, receipt_handle: &str) -> bool {
        let mut state = self.state();
        match Self::find_by_receipt(&mut state, receipt_handle) {
            Some((seq, _)) => {
                state.receipts.remove(receipt_handle);
                state.messages.remove(&seq).is_some()
            }
            None => false,
        }
    }

    /// Settles a delivered batch as Lambda's SQS event source does: deletes every
    /// received message that `response` does not report failed (those come back after
    /// their visibility timeout, or the one the handler set).
    pub fn settle(&self, received: &[ReceivedMessage], response: &SqsBatchResponse) {
        for message in received {
            let failed = response
                .batch_item_failures
                .iter()
                .any(|f| f.item_identifier == message.message_id);
            if !failed {
                self.delete(&message.receipt_handle);
            }
        }
    }

    /// Makes a received message visible again after `timeout` from now.
    pub fn change_visibility(&self, receipt_handle: &str, timeout: Duration) -> BackendResult<()> {
        {
            let mut state = self.state();
            let (_, m) = Self::find_by_receipt(&mut state, receipt_handle).ok_or_else(|| {
                BackendError::Unavailable(
                    "receipt handle is not valid (message deleted or received again)".into(),
                )
            })?;
            m.visible_at = Instant::now() + timeout;
        }
        self.shared.changed.notify_waiters();
        Ok(())
    }

    /// Current message counts.
    pub fn depth(&self) -> QueueDepth {
        let now = Instant::now();
        let state = self.state();
        let visible = state
            .messages
            .values()
            .filter(|m| m.visible_at <= now)
            .count();
        QueueDepth {
            visible,
            in_flight: state.messages.len() - visible,
            dead: state.dead.len(),
            parked: state.parked.len(),
        }
    }

    /// Moves every dead-lettered message back to the queue as a new message (receive
    /// count zero), as an SQS redrive does; returns how many moved.
    pub fn redrive_dead_letters(&self) -> usize {
        let moved: Vec<Stored> = std::mem::take(&mut self.state().dead);
        for m in &moved {
            self.send(m.body.clone());
        }
        moved.len()
    }

    /// Bodies of the messages in the dead-letter queue.
    pub fn dead_letters(&self) -> Vec<String> {
        self.state().dead.iter().map(|m| m.body.clone()).collect()
    }

    /// Bodies of the messages in the parked queue.
    pub fn parked(&self) -> Vec<String> {
        self.state().parked.iter().map(|m| m.body.clone()).collect()
    }

    /// What SQS would refuse of `job` (written as `body`), this queue refuses too; and
    /// what a test's fault plan has it refuse.
    fn check(&self, job: &DeliveryJob, body: &str) -> Result<(), Refusal> {
        match self.gate.refusal(job) {
            Some(refusal) => Err(refusal),
            None => message::check(body),
        }
    }

    fn stored(&self, body: String) -> Stored {
        Stored {
            message_id: uuid::Uuid::new_v4().to_string(),
            body,
            sent_at_ms: self.epoch_ms(),
            first_received_at_ms: None,
            receive_count: 0,
            visible_at: Instant::now(),
            receipt: None,
        }
    }
}

#[async_trait]
impl ParkedQueue for MemoryQueue {
    async fn take_parked(&self, max: usize, hold: Duration) -> BackendResult<Vec<ParkedMessage>> {
        self.gate
            .run("take_parked", async {
                let now = Instant::now();
                let mut state = self.state();
                let mut taken = Vec::new();
                for m in state.parked.iter_mut().filter(|m| m.visible_at <= now) {
                    if taken.len() >= max {
                        break;
                    }
                    let handle = uuid::Uuid::new_v4().to_string();
                    m.receipt = Some(handle.clone());
                    m.receive_count += 1;
                    m.visible_at = now + hold;
                    taken.push(ParkedMessage {
                        message_id: m.message_id.clone(),
                        handle,
                        body: m.body.clone(),
                    });
                }
                Ok(taken)
            })
            .await
    }

    async fn remove_parked(&self, handle: &str) -> BackendResult<()> {
        self.gate
            .run("remove_parked", async {
                let mut state = self.state();
                let before = state.parked.len();
                state
                    .parked
                    .retain(|m| m.receipt.as_deref() != Some(handle));
                if state.parked.len() == before {
                    return Err(BackendError::Unavailable(
                        "receipt handle is not valid (message removed or received again)".into(),
                    ));
                }
                Ok(())
            })
            .await
    }

    async fn release_parked(&self, handle: &str) -> BackendResult<()> {
        self.gate
            .run("release_parked", async {
                let mut state = self.state();
                let m = state
                    .parked
                    .iter_mut()
                    .find(|m| m.receipt.as_deref() == Some(handle))
                    .ok_or_else(|| {
                        BackendError::Unavailable(
                            "receipt handle is not valid (message removed or received again)"
                                .into(),
                        )
                    })?;
                m.visible_at = Instant::now();
                Ok(())
            })
            .await
    }
}

#[async_trait]
impl DeliveryQueue for MemoryQueue {
    async fn enqueue(&self, jobs: &[DeliveryJob]) -> BackendResult<Enqueued> {
        self.gate
            .run("enqueue", async {
                let mut enqueued = Enqueued::default();
                for (index, job) in jobs.iter().enumerate() {
                    let body = message::encode(job);
                    match self.check(job, &body) {
                        Ok(()) => {
                            self.send(body);
                        }
                        Err(refusal) => enqueued.refused.push(RefusedJob { index, refusal }),
                    }
                }
                Ok(enqueued)
            })
            .await
    }

    async fn enqueue_delayed(&self, job: &DeliveryJob, delay: Duration) -> BackendResult<()> {
        self.gate
            .run("enqueue_delayed", async {
                let body = message::encode(job);
                self.check(job, &body).map_err(BackendError::Refused)?;
                self.send_delayed(body, delay.min(crate::ports::MAX_SEND_DELAY));
                Ok(())
            })
            .await
    }

    async fn retry_later(&self, receipt_handle: &str, delay: Duration) -> BackendResult<()> {
        self.gate
            .run("retry_later", async {
                self.change_visibility(receipt_handle, delay)
            })
            .await
    }

    async fn dead_letter(&self, job: &DeliveryJob) -> BackendResult<()> {
        self.gate
            .run("dead_letter", async {
                let body = message::encode(job);
                self.check(job, &body).map_err(BackendError::Refused)?;
                self.state().dead.push(self.stored(body));
                Ok(())
            })
            .await
    }

    async fn park(&self, job: &DeliveryJob) -> BackendResult<()> {
        self.gate
            .run("park", async {
                let body = message::encode(job);
                message::check(&body).map_err(BackendError::Refused)?;
                self.state().parked.push(self.stored(body));
                Ok(())
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn send_and_first_receive_times_come_from_the_queues_clock() {
        let clock = Arc::new(crate::testing::ManualClock::new(
            crate::clock::Timestamp::from_epoch_ms(1_700_000_000_000).unwrap(),
        ));
        let q = MemoryQueue::new(Duration::from_secs(30), 2).with_clock(clock.clone());
        q.send("a".into());
        clock.advance(Duration::from_millis(250));
        let received = q.receive(10, Duration::ZERO).await;
        let times: Vec<_> = received
            .iter()
            .map(|m| (m.sent_at_ms, m.first_received_at_ms))
            .collect();
        assert_eq!(times, [(1_700_000_000_000, 1_700_000_000_250)]);
    }

    #[tokio::test(start_paused = true)]
    async fn visibility_receive_count_and_dead_letters() {
        let q = MemoryQueue::new(Duration::from_secs(30), 2);
        q.send("a".into());
        let first = q.receive(10, Duration::ZERO).await;
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].receive_count, 1);
        assert!(
            q.receive(10, Duration::ZERO).await.is_empty(),
            "hidden while in flight"
        );
        assert_eq!(
            q.depth(),
            QueueDepth {
                visible: 0,
                in_flight: 1,
                dead: 0,
                parked: 0
            }
        );

        q.change_visibility(&first[0].receipt_handle, Duration::from_secs(5))
            .unwrap();
        let t0 = Instant::now();
        let second = q.receive(10, Duration::from_secs(20)).await;
        assert_eq!(
            t0.elapsed(),
            Duration::from_secs(5),
            "long poll wakes when it reappears"
        );
        assert_eq!(second[0].receive_count, 2);
        assert!(
            q.change_visibility(&first[0].receipt_handle, Duration::ZERO)
                .is_err(),
            "stale receipt"
        );

        q.change_visibility(&second[0].receipt_handle, Duration::ZERO)
            .unwrap();
        assert!(
            q.receive(10, Duration::ZERO).await.is_empty(),
            "third receive redrives"
        );
        assert_eq!(
            q.depth(),
            QueueDepth {
                visible: 0,
                in_flight: 0,
                dead: 1,
                parked: 0
            }
        );
        assert_eq!(q.dead_letters(), vec!["a".to_owned()]);
    }

    /// The memory queue's own side of parking (its counts, its stale handles); what every
    /// parked queue does is the adapter contract's.
    #[tokio::test(start_paused = true)]
    async fn parked_messages_are_counted_and_a_stale_handle_is_refused() {
        let q = MemoryQueue::new(Duration::from_secs(30), 5);
        let job = DeliveryJob::sync_step(
            &crate::ids::SyncKey {
                application: "app-1".parse().unwrap(),
                sync: crate::ids::SyncId::generate(),
            },
            crate::testing::at("2026-11-26T00:00:00.000Z"),
        );
        q.park(&job).await.unwrap();
        q.park(&job).await.unwrap();
        assert_eq!((q.depth().parked, q.depth().dead), (2, 0));
        let first = q.take_parked(1, Duration::from_secs(60)).await.unwrap();
        tokio::time::advance(Duration::from_secs(61)).await;
        let again = q.take_parked(10, Duration::from_secs(60)).await.unwrap();
        assert_eq!(again.len(), 2, "back after the hold");
        assert!(
            q.remove_parked(&first[0].handle).await.is_err(),
            "a stale handle"
        );
        assert!(q.release_parked(&first[0].handle).await.is_err());
        q.remove_parked(&again[0].handle).await.unwrap();
        assert_eq!(q.depth().parked, 1);
        assert_eq!(
            serde_json::from_str::<DeliveryJob>(&q.parked()[0]).unwrap(),
            job
        );
    }

    #[tokio::test(start_paused = true)]
    async fn delete_removes_and_timeout_returns() {
        let q = MemoryQueue::new(Duration::from_secs(30), 5);
        q.send("a".into());
        q.send("b".into());
        let got = q.receive(10, Duration::ZERO).await;
        assert_eq!(got.len(), 2);
        assert!(q.delete(&got[0].receipt_handle));
        assert!(!q.delete(&got[0].receipt_handle));
        tokio::time::advance(Duration::from_secs(31)).await;
        let again = q.receive(10, Duration::ZERO).await;
        assert_eq!(
            again.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(),
            ["b"]
        );
        assert_eq!(again[0].receive_count, 2);
        let sqs = again[0].to_sqs_message("arn:q");
        assert_eq!(sqs.attributes["ApproximateReceiveCount"], "2");
    }

    fn person_job(name: &str) -> DeliveryJob {
        let person = serde_json::json!({"personID": "p1", "firstName": name});
        DeliveryJob::for_application(
            &"app-1".parse().unwrap(),
            &crate::record::RecordId::parse("p1").unwrap(),
            person.as_object().unwrap().clone(),
            crate::window::WindowId(1),
            crate::testing::at("2026-11-26T00:00:00.000Z"),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn applies_sqs_limits_to_characters_and_size() {
        let q = MemoryQueue::new(Duration::from_secs(30), 5);
        let odd = person_job("a\u{FFFF}b");
        let huge = person_job(&"x".repeat(message::MAX_MESSAGE_BYTES));
        let fine = person_job("Ann");
        let enqueued = q
            .enqueue(&[odd.clone(), huge.clone(), fine.clone()])
            .await
            .unwrap();
        assert_eq!(enqueued.refused.len(), 1, "{enqueued:?}");
        assert_eq!(enqueued.refused[0].index, 1);
        assert!(matches!(
            enqueued.refused[0].refusal,
            message::Refusal::TooLarge { .. }
        ));
        let got = q.receive(10, Duration::ZERO).await;
        assert_eq!(got.len(), 2);
        for m in &got {
            assert_eq!(message::check(&m.body), Ok(()), "{}", m.body);
        }
        let decoded: Vec<DeliveryJob> = got
            .iter()
            .map(|m| message::decode(&m.body).unwrap())
            .collect();
        assert_eq!(decoded, vec![odd, fine]);
        assert!(matches!(
            q.dead_letter(&huge).await,
            Err(BackendError::Refused(message::Refusal::TooLarge { .. }))
        ));
    }
}
