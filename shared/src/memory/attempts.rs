//! The attempt log in memory (no expiry: the local runner's log lives as long as it runs).

use super::MemoryStore;
use crate::attempts::{
    Attempt, EndpointKey, FailingMessages, LogEndpoint, LoggedAttempt, Recovery, RecoveryId,
    StatusFilter, StoredMessage,
};
use crate::clock::Timestamp;
use crate::job::MessageId;
use crate::ports::{AttemptLog, BackendResult, LogWrites, Page};
use async_trait::async_trait;
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

/// Attempts written but not yet indexed, past which a write indexes them: what a read
/// then has left to index is bounded (about ten milliseconds of work).
const MAX_UNINDEXED: usize = 4096;

/// The attempt log in memory: attempts as they were written, and the index by endpoint
/// that reads use, brought up to date by the first read after a write (or by a write
/// past [`MAX_UNINDEXED`]). A write is a move onto a list: indexing each attempt as it
/// was written (looking up its endpoint and message among every one seen) was a fifth
/// of the delivery handler's time in figure 2's profile, and the log is written on
/// every delivery but read only when someone looks.
#[derive(Debug, Default)]
pub(super) struct MemoryAttemptLog {
    unindexed: Vec<LoggedAttempt>,
    by_endpoint: HashMap<EndpointKey, EndpointLog>,
}

impl MemoryAttemptLog {
    fn write(&mut self, attempts: Vec<LoggedAttempt>) {
        self.unindexed.extend(attempts);
        if self.unindexed.len() > MAX_UNINDEXED {
            self.index();
        }
    }

    /// The log by endpoint, with every attempt written so far.
    fn indexed(&mut self) -> &HashMap<EndpointKey, EndpointLog> {
        self.index();
        &self.by_endpoint
    }

    /// Drains the list into the index (the list keeps its room for the next writes).
    fn index(&mut self) {
        for logged in self.unindexed.drain(..) {
            let LoggedAttempt { attempt, job } = logged;
            // The key is copied only for an endpoint's first attempt.
            let log = match self.by_endpoint.get_mut(&attempt.endpoint) {
                Some(log) => log,
                None => self
                    .by_endpoint
                    .entry(attempt.endpoint.clone())
                    .or_default(),
            };
            match log.messages.get_mut(&attempt.message_id) {
                // A message attempted again usually carries the job already kept: only its
                // latest attempt changes.
                Some(stored) if stored.job == job => stored.note_latest(&attempt),
                _ => {
                    let stored = StoredMessage::of_job(&attempt, job);
                    log.messages.insert(attempt.message_id.clone(), stored);
                }
            }
            log.attempts.insert(attempt.sort_key(), attempt);
        }
    }
}

/// One endpoint's attempt log: its attempts by sort key, and the message of each. Kept
/// together so an attempt finds its endpoint once, by hash (a profile of the delivery
/// benchmark had the ordered map of 20 000 endpoints, and a second map keyed by endpoint
/// and message, as a quarter of the handler's own time).
#[derive(Debug, Default)]
struct EndpointLog {
    attempts: BTreeMap<String, Attempt>,
    messages: HashMap<MessageId, StoredMessage>,
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
                let mut state = self.state();
                let Some(log) = state.attempts.indexed().get(&endpoint.key) else {
                    return Ok(Page::last(Vec::new()));
                };
                let upper = after.map_or(Bound::Unbounded, |a| Bound::Excluded(a.to_owned()));
                let items: Vec<Attempt> = log
                    .attempts
                    .range::<String, _>((Bound::Unbounded, upper))
                    .rev()
                    .filter(|(_, a)| filter.admits(a))
                    .take(limit + 1)
                    .map(|(_, a)| a.clone())
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
                let mut state = self.state();
                let Some(log) = state.attempts.indexed().get(&endpoint.key) else {
                    return Ok(FailingMessages::from_overfetch(Vec::new(), limit));
                };
                let mut seen = std::collections::HashSet::new();
                let from = format!("{:013}", since.epoch_ms().max(0));
                let items = log
                    .attempts
                    .range(from..)
                    .map(|(_, a)| a)
                    .filter(|a| !a.outcome.is_acked() && seen.insert(a.message_id.clone()))
                    .filter_map(|a| {
                        log.messages
                            .get(&a.message_id)
                            .filter(|m| !m.last_outcome.is_acked())
                            .cloned()
                    })
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
                let mut state = self.state();
                let Some(log) = state.attempts.indexed().get(&endpoint.key) else {
                    return Ok(Vec::new());
                };
                Ok(ids
                    .iter()
                    .filter_map(|id| log.messages.get(id).cloned())
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
                let mut state = self.state();
                let Some(log) = state.attempts.indexed().get(&endpoint.key) else {
                    return Ok(None);
                };
                let Some(message) = log.messages.get(message_id).cloned() else {
                    return Ok(None);
                };
                let attempts = log
                    .attempts
                    .values()
                    .filter(|a| a.message_id == *message_id)
                    .cloned()
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
    async fn writes_are_indexed_by_the_next_read_or_past_the_bound() {
        let store = MemoryStore::default();
        let endpoint = LogEndpoint::application(&"app-log".parse().unwrap());
        let n = MAX_UNINDEXED + 10;
        // Written in batches of 100, as the delivery handler writes them.
        let all: Vec<LoggedAttempt> = (0..n).map(first_attempt).collect();
        for batch in all.chunks(100) {
            store.record(batch.to_vec()).await.unwrap();
            // A write never leaves more than the bound unindexed.
            assert!(store.state().attempts.unindexed.len() <= MAX_UNINDEXED);
        }
        assert!(
            !store.state().attempts.by_endpoint.is_empty(),
            "the write past the bound indexed what was written"
        );
        // A read sees every attempt written, the newest first, and indexes the rest.
        let page = store
            .attempts(&endpoint, StatusFilter::All, None, n + 1)
            .await
            .unwrap();
        assert_eq!(page.items.len(), n);
        assert_eq!(page.items[0], all[n - 1].attempt);
        assert_eq!(page.items[n - 1], all[0].attempt);
        assert!(store.state().attempts.unindexed.is_empty());
        let kept = store
            .messages(&endpoint, &[all[7].job.id.clone()])
            .await
            .unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].job, all[7].job);
    }
}
