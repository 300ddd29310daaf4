//! In-memory adapters for every port: the local runner's embedded storage and queue, and
//! the test doubles' real counterpart (they implement the same contracts as the AWS
//! adapters, including SQS visibility semantics).

mod attempts;
mod events;
mod queue;
pub(crate) mod records;

pub use events::LoggedEvents;
pub use queue::{MemoryQueue, QueueDepth, ReceivedMessage};
pub use records::MemoryRecords;

use crate::application::Application;
use crate::attempts::{Attempt, EndpointKey, StoredMessage};
use crate::callback::CallbackUrl;
use crate::clock::Clock;
use crate::health::EndpointHealth;
use crate::job::MessageId;
use crate::oauth::{AccessToken, OAuthClient};
use crate::poison::PoisonItem;
use crate::ports::{
    ApplicationStore, BackendResult, ClientStore, FlushCursor, OpsEvents, Page, PendingChanges,
    PersonOutcome, Ports, SubscriptionStore, SyncStore, TokenStore,
};
use crate::record::RecordId;
use crate::subscription::{Registered, Subscription, Unregistered};
use crate::sync::{FullSync, SyncOutcomes};
use crate::window::WindowId;
use async_trait::async_trait;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::Bound;
use std::sync::Arc;
use std::sync::Mutex;

/// Every port over the in-memory adapters.
pub fn ports(
    store: Arc<MemoryStore>,
    records: Arc<MemoryRecords>,
    queue: Arc<MemoryQueue>,
    events: Arc<dyn OpsEvents>,
    clock: Arc<dyn Clock>,
) -> Ports {
    Ports {
        clients: store.clone(),
        tokens: store.clone(),
        subscriptions: store.clone(),
        applications: store.clone(),
        syncs: store.clone(),
        pending: store.clone(),
        attempts: store,
        records,
        queue,
        events,
        clock,
    }
}

/// The service table in memory: clients, tokens, subscriptions, pending changes and the
/// flush cursor.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    clients: BTreeMap<String, OAuthClient>,
    tokens: HashMap<String, AccessToken>,
    subscriptions: BTreeMap<(RecordId, String), Subscription>,
    pending: BTreeMap<WindowId, BTreeSet<RecordId>>,
    cursor: Option<FlushCursor>,
    /// The flush lease: holder and until when (epoch ms).
    flush_lease: Option<(String, i64)>,
    applications: BTreeMap<String, Application>,
    api_keys: HashMap<String, String>,
    syncs: HashMap<(String, String), SyncEntry>,
    poison: BTreeMap<String, PoisonItem>,
    /// The attempt log, per endpoint by sort key.
    attempts: BTreeMap<EndpointKey, BTreeMap<String, Attempt>>,
    messages: HashMap<(EndpointKey, MessageId), StoredMessage>,
    recoveries: HashMap<(EndpointKey, String), crate::attempts::Recovery>,
}

#[derive(Debug, Default)]
struct SyncEntry {
    sync: Option<FullSync>,
    outcomes: SyncOutcomes,
    /// Persons whose outcome is counted (each once).
    counted: HashSet<RecordId>,
    /// Who claimed the completion's announcement.
    completion_claimant: Option<String>,
    lease_until_ms: i64,
    lease_holder: Option<String>,
}

impl MemoryStore {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("memory store lock")
    }

    /// Every stored token (tests read what is stored).
    #[cfg(any(test, feature = "testing"))]
    pub fn stored_tokens(&self) -> Vec<AccessToken> {
        self.state().tokens.values().cloned().collect()
    }
}

#[async_trait]
impl ClientStore for MemoryStore {
    async fn get_client(&self, client_id: &str) -> BackendResult<Option<OAuthClient>> {
        Ok(self.state().clients.get(client_id).cloned())
    }

    async fn put_client(&self, client: &OAuthClient) -> BackendResult<()> {
        self.state()
            .clients
            .insert(client.client_id.clone(), client.clone());
        Ok(())
    }

    async fn list_clients(&self) -> BackendResult<Vec<OAuthClient>> {
        Ok(self.state().clients.values().cloned().collect())
    }
}

#[async_trait]
impl TokenStore for MemoryStore {
    async fn put_token(&self, token: &AccessToken) -> BackendResult<()> {
        self.state()
            .tokens
            .insert(token.token_hash.clone(), token.clone());
        Ok(())
    }

    async fn get_token(&self, token_hash: &str) -> BackendResult<Option<AccessToken>> {
        Ok(self.state().tokens.get(token_hash).cloned())
    }
}

#[async_trait]
impl SubscriptionStore for MemoryStore {
    async fn register(&self, subscription: &Subscription) -> BackendResult<Registered> {
        let key = (
            subscription.record.clone(),
            subscription.callback.as_str().to_owned(),
        );
        let mut state = self.state();
        Ok(match state.subscriptions.get(&key) {
            Some(existing) if existing.client_id == subscription.client_id => {
                Registered::AlreadyExists
            }
            Some(_) => Registered::OwnedByOther,
            None => {
                state.subscriptions.insert(key, subscription.clone());
                Registered::Created
            }
        })
    }

    async fn unregister(
        &self,
        record: &RecordId,
        callback: &CallbackUrl,
        client_id: &str,
    ) -> BackendResult<Unregistered> {
        let key = (record.clone(), callback.as_str().to_owned());
        let mut state = self.state();
        Ok(match state.subscriptions.get(&key) {
            None => Unregistered::NotFound,
            Some(existing) if existing.client_id != client_id => Unregistered::OwnedByOther,
            Some(_) => {
                state.subscriptions.remove(&key);
                Unregistered::Deleted
            }
        })
    }

    async fn get_subscription(
        &self,
        record: &RecordId,
        callback: &CallbackUrl,
    ) -> BackendResult<Option<Subscription>> {
        let key = (record.clone(), callback.as_str().to_owned());
        Ok(self.state().subscriptions.get(&key).cloned())
    }

    async fn set_subscription_health(
        &self,
        record: &RecordId,
        callback: &CallbackUrl,
        health: &EndpointHealth,
    ) -> BackendResult<()> {
        let key = (record.clone(), callback.as_str().to_owned());
        if let Some(subscription) = self.state().subscriptions.get_mut(&key) {
            subscription.health = health.clone();
        }
        Ok(())
    }

    async fn subscriptions_of(&self, record: &RecordId) -> BackendResult<Vec<Subscription>> {
        Ok(self
            .state()
            .subscriptions
            .range((record.clone(), String::new())..)
            .take_while(|((r, _), _)| r == record)
            .map(|(_, s)| s.clone())
            .collect())
    }

    async fn client_webhooks(&self, client_id: &str) -> BackendResult<Vec<Subscription>> {
        Ok(self
            .state()
            .subscriptions
            .values()
            .filter(|s| s.client_id == client_id)
            .cloned()
            .collect())
    }

    async fn client_webhook(
        &self,
        client_id: &str,
        webhook: &EndpointKey,
    ) -> BackendResult<Option<Subscription>> {
        Ok(self
            .state()
            .subscriptions
            .values()
            .find(|s| {
                s.client_id == client_id
                    && EndpointKey::subscription(&s.record, &s.callback) == *webhook
            })
            .cloned())
    }
}

#[async_trait]
impl PendingChanges for MemoryStore {
    async fn mark(&self, window: WindowId, record: &RecordId) -> BackendResult<()> {
        self.state()
            .pending
            .entry(window)
            .or_default()
            .insert(record.clone());
        Ok(())
    }

    async fn page(
        &self,
        window: WindowId,
        after: Option<&str>,
        limit: usize,
    ) -> BackendResult<Page<RecordId>> {
        let state = self.state();
        let Some(records) = state.pending.get(&window) else {
            return Ok(Page {
                items: vec![],
                next: None,
            });
        };
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut items: Vec<RecordId> = records
            .range::<str, _>((start, Bound::Unbounded))
            .take(limit + 1)
            .cloned()
            .collect();
        let next = if items.len() > limit {
            items.truncate(limit);
            items.last().map(|r| r.as_str().to_owned())
        } else {
            None
        };
        Ok(Page { items, next })
    }

    async fn cursor(&self) -> BackendResult<Option<FlushCursor>> {
        Ok(self.state().cursor.clone())
    }

    async fn save_cursor(&self, cursor: &FlushCursor) -> BackendResult<()> {
        let mut state = self.state();
        state.cursor = Some(cursor.clone());
        // Entries of flushed windows expire (the DynamoDB adapter uses TTL); dropping them
        // here keeps a long-running local runner's memory flat.
        state.pending.retain(|w, _| *w >= cursor.window);
        Ok(())
    }

    async fn lease_flush(&self, holder: &str, now_ms: i64, until_ms: i64) -> BackendResult<bool> {
        let mut state = self.state();
        if state
            .flush_lease
            .as_ref()
            .is_some_and(|(_, until)| *until > now_ms)
        {
            return Ok(false);
        }
        state.flush_lease = Some((holder.to_owned(), until_ms));
        Ok(true)
    }

    async fn release_flush(&self, holder: &str) -> BackendResult<()> {
        let mut state = self.state();
        if state.flush_lease.as_ref().is_some_and(|(h, _)| h == holder) {
            state.flush_lease = None;
        }
        Ok(())
    }
    async fn set_aside(&self, item: &PoisonItem) -> BackendResult<()> {
        self.state().poison.insert(item.id(), item.clone());
        Ok(())
    }

    async fn poison_items(&self) -> BackendResult<Vec<PoisonItem>> {
        Ok(self.state().poison.values().cloned().collect())
    }

    async fn remove_poison(&self, id: &str) -> BackendResult<bool> {
        Ok(self.state().poison.remove(id).is_some())
    }
}

#[async_trait]
impl ApplicationStore for MemoryStore {
    async fn get_application(&self, id: &str) -> BackendResult<Option<Application>> {
        Ok(self.state().applications.get(id).cloned())
    }

    async fn put_application(&self, application: &Application) -> BackendResult<()> {
        let mut state = self.state();
        state
            .api_keys
            .insert(application.api_key_hash.clone(), application.id.clone());
        state
            .applications
            .insert(application.id.clone(), application.clone());
        Ok(())
    }

    async fn application_for_key(&self, api_key_hash: &str) -> BackendResult<Option<String>> {
        Ok(self.state().api_keys.get(api_key_hash).cloned())
    }

    async fn list_applications(&self) -> BackendResult<Vec<Application>> {
        Ok(self.state().applications.values().cloned().collect())
    }

    async fn set_application_health(&self, id: &str, health: &EndpointHealth) -> BackendResult<()> {
        if let Some(app) = self.state().applications.get_mut(id) {
            app.health = health.clone();
        }
        Ok(())
    }
}

#[async_trait]
impl SyncStore for MemoryStore {
    async fn save_sync(&self, sync: &FullSync) -> BackendResult<()> {
        let key = (sync.application_id.clone(), sync.sync_id.clone());
        self.state().syncs.entry(key).or_default().sync = Some(sync.clone());
        Ok(())
    }

    async fn get_sync(
        &self,
        application: &str,
        sync_id: &str,
    ) -> BackendResult<Option<(FullSync, SyncOutcomes)>> {
        let state = self.state();
        let entry = state
            .syncs
            .get(&(application.to_owned(), sync_id.to_owned()));
        Ok(entry.and_then(|e| e.sync.clone().map(|s| (s, e.outcomes))))
    }

    async fn count_sync_outcomes(
        &self,
        application: &str,
        sync_id: &str,
        outcomes: &[PersonOutcome],
    ) -> BackendResult<SyncOutcomes> {
        let mut state = self.state();
        let entry = state
            .syncs
            .entry((application.to_owned(), sync_id.to_owned()))
            .or_default();
        let mut new = SyncOutcomes::default();
        for outcome in outcomes {
            if entry.counted.insert(outcome.person.clone()) {
                if outcome.delivered {
                    new.delivered += 1;
                } else {
                    new.failed += 1;
                }
            }
        }
        entry.outcomes.delivered += new.delivered;
        entry.outcomes.failed += new.failed;
        Ok(new)
    }

    async fn claim_sync_completion(
        &self,
        application: &str,
        sync_id: &str,
        claimant: &str,
    ) -> BackendResult<bool> {
        let mut state = self.state();
        let Some(entry) = state
            .syncs
            .get_mut(&(application.to_owned(), sync_id.to_owned()))
        else {
            return Ok(false);
        };
        if entry.sync.is_none() {
            return Ok(false);
        }
        let holder = entry
            .completion_claimant
            .get_or_insert_with(|| claimant.to_owned());
        Ok(holder == claimant)
    }

    async fn lease_sync(
        &self,
        application: &str,
        sync_id: &str,
        holder: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> BackendResult<bool> {
        let mut state = self.state();
        let entry = state
            .syncs
            .entry((application.to_owned(), sync_id.to_owned()))
            .or_default();
        if entry.lease_until_ms > now_ms && entry.lease_holder.as_deref() != Some(holder) {
            return Ok(false);
        }
        entry.lease_until_ms = until_ms;
        entry.lease_holder = Some(holder.to_owned());
        Ok(true)
    }

    async fn release_sync(
        &self,
        application: &str,
        sync_id: &str,
        holder: &str,
    ) -> BackendResult<()> {
        let mut state = self.state();
        if let Some(entry) = state
            .syncs
            .get_mut(&(application.to_owned(), sync_id.to_owned()))
            && entry.lease_holder.as_deref() == Some(holder)
        {
            entry.lease_until_ms = 0;
            entry.lease_holder = None;
        }
        Ok(())
    }
}
