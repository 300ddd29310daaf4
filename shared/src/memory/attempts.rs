//! The attempt log in memory: the latest [`ATTEMPTS_KEPT`] attempts, oldest dropped first
//! (the local runner's log; the durable mode's and DynamoDB's keep attempts for a time).

use super::MemoryStore;
use crate::attempts::{
    Attempt, EndpointKey, FailingMessages, LogEndpoint, LoggedAttempt, Recovery, RecoveryId,
    StatusFilter, StoredMessage,
};
use crate::clock::Timestamp;
use crate::job::MessageId;
use crate::ports::{AttemptLog, BackendResult, LogWrites, Page};
use async_trait::async_trait;
use std::collections::{HashMap, HashSet, VecDeque};

/// How many attempts the in-memory log keeps: the latest, each with the job it sent (at a
/// kilobyte of person data a job, about 50 MB). Days of a developer's testing, or the last
/// seconds of a load run; for more, the durable mode (`--data-dir`) keeps attempts for its
/// retention.
pub const ATTEMPTS_KEPT: usize = 50_000;

/// The attempt log in memory: the attempts in the order they were written, the oldest
/// dropped past its capacity. A write is a move onto the list, and reads (an owner's
/// listing, a message, a recovery) go through it; indexing every attempt by endpoint and
/// message as it was written was the delivery handler's largest own cost in figure 2's
/// profile (docs/benchmarks.md, tenth pass), and the log is written on every delivery but
/// read only when someone looks.
#[derive(Debug)]
pub(super) struct MemoryAttemptLog {
    written: VecDeque<LoggedAttempt>,
    capacity: usize,
}

impl Default for MemoryAttemptLog {
    fn default() -> Self {
        Self::with_capacity(ATTEMPTS_KEPT)
    }
}

impl MemoryAttemptLog {
    fn with_capacity(capacity: usize) -> Self {
        Self {
            written: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Keeps `attempts`, dropping the oldest past the capacity.
    fn write(&mut self, attempts: Vec<LoggedAttempt>) {
        self.written.extend(attempts);
        let over = self.written.len().saturating_sub(self.capacity);
        self.written.drain(..over);
    }

    /// An endpoint's attempts, in the order they were written.
    fn of(&self, endpoint: &EndpointKey) -> impl Iterator<Item = &LoggedAttempt> {
        self.written
            .iter()
            .filter(move |logged| logged.attempt.endpoint == *endpoint)
    }

    /// An endpoint's attempts by their position in its log (sort key), oldest first. An
    /// attempt recorded again (a batch written twice) is there once, as last written.
    fn in_order(&self, endpoint: &EndpointKey) -> Vec<(String, &LoggedAttempt)> {
        let mut attempts: Vec<(String, &LoggedAttempt)> = self
            .of(endpoint)
            .map(|logged| (logged.attempt.sort_key(), logged))
            .collect();
        // Stable: the same attempt's copies stay in the order they were written.
        attempts.sort_by(|a, b| a.0.cmp(&b.0));
        attempts.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                std::mem::swap(later, kept);
            }
            same
        });
        attempts
    }

    /// Each of an endpoint's messages as its latest attempt written leaves it (a message
    /// has one attempt in flight at a time, so the latest written is the latest made).
    fn messages(&self, endpoint: &EndpointKey) -> HashMap<&MessageId, &LoggedAttempt> {
        self.of(endpoint)
            .map(|logged| (&logged.attempt.message_id, logged))
            .collect()
    }
}

#[async_trait]
impl AttemptLog for MemoryStore {
    async fn record(&self, attempts: Vec<LoggedAttempt>) -> BackendResult<()> {
        self.gate
            .run("record", async {
                self.state().attempts.write(attempts);
                Ok(())
            })
            .await
    }

    /// Each attempt as it ends: the write is this process's own work, done while the
    /// batch's other requests are in flight rather than after the last of them.
    fn writes(&self) -> LogWrites {
        LogWrites::PerAttempt
    }

    async fn attempts(
        &self,
        endpoint: &LogEndpoint,
        filter: StatusFilter,
        after: Option<&str>,
        limit: usize,
    ) -> BackendResult<Page<Attempt>> {
        self.gate
            .run("attempts", async {
                let state = self.state();
                let items: Vec<Attempt> = state
                    .attempts
                    .in_order(&endpoint.key)
                    .into_iter()
                    .rev()
                    .filter(|(key, _)| after.is_none_or(|after| key.as_str() < after))
                    .filter(|(_, logged)| filter.admits(&logged.attempt))
                    .take(limit + 1)
                    .map(|(_, logged)| logged.attempt.clone())
                    .collect();
                Ok(Page::from_overfetch(items, limit, Attempt::sort_key))
            })
            .await
    }

    async fn failed_since(
        &self,
        endpoint: &LogEndpoint,
        since: Timestamp,
        limit: usize,
    ) -> BackendResult<FailingMessages> {
        self.gate
            .run("failed_since", async {
                let state = self.state();
                let latest = state.attempts.messages(&endpoint.key);
                let mut seen = HashSet::new();
                let from = format!("{:013}", since.epoch_ms().max(0));
                let items = state
                    .attempts
                    .in_order(&endpoint.key)
                    .into_iter()
                    .filter(|(key, _)| *key >= from)
                    .map(|(_, logged)| &logged.attempt)
                    .filter(|a| !a.outcome.is_acked() && seen.insert(&a.message_id))
                    .filter_map(|a| latest.get(&a.message_id))
                    .filter(|latest| !latest.attempt.outcome.is_acked())
                    .map(|latest| StoredMessage::of(latest))
                    .take(limit + 1)
                    .collect();
                Ok(FailingMessages::from_overfetch(items, limit))
            })
            .await
    }

    async fn messages(
        &self,
        endpoint: &LogEndpoint,
        ids: &[MessageId],
    ) -> BackendResult<Vec<StoredMessage>> {
        self.gate
            .run("messages", async {
                let state = self.state();
                let latest = state.attempts.messages(&endpoint.key);
                Ok(ids
                    .iter()
                    .filter_map(|id| latest.get(id).map(|logged| StoredMessage::of(logged)))
                    .collect())
            })
            .await
    }

    async fn save_recovery(&self, recovery: &Recovery) -> BackendResult<()> {
        self.gate
            .run("save_recovery", async {
                self.state().recoveries.insert(
                    (recovery.endpoint.clone(), recovery.id.clone()),
                    recovery.clone(),
                );
                Ok(())
            })
            .await
    }

    async fn recovery(
        &self,
        endpoint: &EndpointKey,
        id: &RecoveryId,
    ) -> BackendResult<Option<Recovery>> {
        self.gate
            .run("recovery", async {
                Ok(self
                    .state()
                    .recoveries
                    .get(&(endpoint.clone(), id.clone()))
                    .cloned())
            })
            .await
    }

    async fn message(
        &self,
        endpoint: &LogEndpoint,
        message_id: &MessageId,
    ) -> BackendResult<Option<(StoredMessage, Vec<Attempt>)>> {
        self.gate
            .run("message", async {
                let state = self.state();
                let Some(latest) = state
                    .attempts
                    .of(&endpoint.key)
                    .filter(|logged| logged.attempt.message_id == *message_id)
                    .last()
                else {
                    return Ok(None);
                };
                let message = StoredMessage::of(latest);
                let attempts = state
                    .attempts
                    .in_order(&endpoint.key)
                    .into_iter()
                    .filter(|(_, logged)| logged.attempt.message_id == *message_id)
                    .map(|(_, logged)| logged.attempt.clone())
                    .collect();
                Ok(Some((message, attempts)))
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attempts::OutcomeClass;
    use crate::job::DeliveryJob;
    use crate::record::RecordId;
    use crate::window::WindowId;

    /// The first attempt of a Members-style job for record `i`, acknowledged.
    fn first_attempt(i: usize) -> LoggedAttempt {
        let application = "app-log".parse().unwrap();
        let record = RecordId::parse(&format!("p-{i:07}")).unwrap();
        let mut person = serde_json::Map::new();
        person.insert("id".into(), record.as_str().into());
        let created = crate::testing::at_ms(1_795_687_200_000);
        let job = DeliveryJob::for_application(&application, &record, person, WindowId(9), created);
        LoggedAttempt {
            attempt: Attempt {
                message_id: job.id.clone(),
                endpoint: EndpointKey::application(&application),
                attempt: 1,
                at: crate::testing::at_ms(1_795_687_200_000 + i as i64),
                outcome: OutcomeClass::Acked,
                status: Some(204),
                latency_ms: 3,
                response: String::new(),
            },
            job: job.replayable(),
        }
    }

    #[tokio::test]
    async fn the_latest_attempts_are_kept_and_read_newest_first() {
        let store = MemoryStore::default();
        store.state().attempts = MemoryAttemptLog::with_capacity(5);
        let endpoint = LogEndpoint::application(&"app-log".parse().unwrap());
        let all: Vec<LoggedAttempt> = (0..8).map(first_attempt).collect();
        // Written out of time order, as concurrent requests end.
        for batch in [&all[3..8], &all[0..3]] {
            store.record(batch.to_vec()).await.unwrap();
        }
        // The last five written are kept (3, 4 and 5, written first, are dropped), listed
        // newest first by when they were made.
        let page = store
            .attempts(&endpoint, StatusFilter::All, None, 10)
            .await
            .unwrap();
        let listed: Vec<&Attempt> = page.items.iter().collect();
        let expected: Vec<&Attempt> = [7, 6, 2, 1, 0].iter().map(|&i| &all[i].attempt).collect();
        assert_eq!(listed, expected);
        // Paged: two, then from after the second.
        let first = store
            .attempts(&endpoint, StatusFilter::All, None, 2)
            .await
            .unwrap();
        assert_eq!(
            first.items,
            [all[7].attempt.clone(), all[6].attempt.clone()]
        );
        let rest = store
            .attempts(&endpoint, StatusFilter::All, first.next.as_deref(), 10)
            .await
            .unwrap();
        assert_eq!(rest.items.len(), 3);
        assert_eq!(rest.next, None);
        // A dropped message is gone; a kept one is read with its job.
        let kept = store
            .messages(&endpoint, &[all[3].job.id.clone(), all[0].job.id.clone()])
            .await
            .unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].job, all[0].job);
        assert!(
            store
                .message(&endpoint, &all[3].job.id)
                .await
                .unwrap()
                .is_none()
        );
        let (message, attempts) = store
            .message(&endpoint, &all[6].job.id)
            .await
            .unwrap()
            .expect("kept");
        assert_eq!(message.job, all[6].job);
        assert_eq!(attempts, [all[6].attempt.clone()]);
    }

    #[tokio::test]
    async fn an_attempt_recorded_again_is_listed_once_as_last_written() {
        let store = MemoryStore::default();
        let endpoint = LogEndpoint::application(&"app-log".parse().unwrap());
        let batch: Vec<LoggedAttempt> = (0..3).map(first_attempt).collect();
        store.record(batch.clone()).await.unwrap();
        let mut again = batch.clone();
        again[1].attempt.response = "written again".into();
        store.record(again.clone()).await.unwrap();
        let page = store
            .attempts(&endpoint, StatusFilter::All, None, 10)
            .await
            .unwrap();
        let expected: Vec<Attempt> = again.iter().rev().map(|l| l.attempt.clone()).collect();
        assert_eq!(page.items, expected);
        let (_, attempts) = store
            .message(&endpoint, &batch[1].job.id)
            .await
            .unwrap()
            .expect("kept");
        assert_eq!(attempts, [again[1].attempt.clone()]);
    }
}
