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

/// One endpoint's attempt log: its attempts by sort key, and the message of each. Kept
/// together so a batch's attempt finds its endpoint once, by hash (a profile of the
/// delivery benchmark had the ordered map of 20 000 endpoints, and a second map keyed by
/// endpoint and message, as a quarter of the handler's own time).
#[derive(Debug, Default)]
pub(super) struct EndpointLog {
    attempts: BTreeMap<String, Attempt>,
    messages: HashMap<MessageId, StoredMessage>,
}

#[async_trait]
impl AttemptLog for MemoryStore {
    async fn record(&self, attempts: &[LoggedAttempt]) -> BackendResult<()> {
        self.gate
            .run("record", async {
                let mut state = self.state();
                for logged in attempts {
                    let a = &logged.attempt;
                    // The key is copied only for an endpoint's first attempt.
                    let log = match state.attempts.get_mut(&a.endpoint) {
                        Some(log) => log,
                        None => state.attempts.entry(a.endpoint.clone()).or_default(),
                    };
                    log.attempts.insert(a.sort_key(), a.clone());
                    match log.messages.get_mut(&a.message_id) {
                        // A message attempted again usually carries the job already kept:
                        // only its latest attempt changes (copying the job in again, and
                        // dropping the copy it replaced, was most of this call for a
                        // Members-style job in figure 2's profile).
                        Some(stored) if stored.job == logged.job => stored.note_latest(a),
                        _ => {
                            log.messages
                                .insert(a.message_id.clone(), StoredMessage::of(logged));
                        }
                    }
                }
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
                let Some(log) = state.attempts.get(&endpoint.key) else {
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
                let state = self.state();
                let Some(log) = state.attempts.get(&endpoint.key) else {
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
                let state = self.state();
                let Some(log) = state.attempts.get(&endpoint.key) else {
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
                let state = self.state();
                let Some(log) = state.attempts.get(&endpoint.key) else {
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
