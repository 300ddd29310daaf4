//! In-memory adapters for every port: the local runner's embedded storage and queue, and
//! the test doubles' real counterpart (they implement the same contracts as the AWS
//! adapters, including SQS visibility semantics).

mod attempts;
mod events;
mod queue;
pub(crate) mod records;

pub use attempts::ATTEMPTS_KEPT;
pub use events::LoggedEvents;
pub use queue::{MemoryQueue, QueueDepth, ReceivedMessage};
pub use records::MemoryRecords;

use crate::application::Application;
use crate::attempts::EndpointKey;
use crate::callback::CallbackUrl;
use crate::clock::Timestamp;
use crate::health::EndpointHealth;
use crate::ids::{ApplicationId, ClientId, SyncKey};
use crate::job::DeliveryJob;
use crate::message::Refusal;
use crate::oauth::{AccessToken, OAuthClient};
use crate::poison::{PoisonId, PoisonItem};
use crate::ports::{
    ApplicationStore, BackendResult, ClientStore, FlushCursor, Lease, LeaseHolder, Page,
    PendingChanges, PersonOutcome, SubscriptionStore, SyncStore, TokenStore,
};
use crate::record::RecordId;
use crate::subscription::{Registered, Subscription, Unregistered};
use crate::sync::{FullSync, SyncOutcomes};
use crate::window::{FlushAssignment, Shard, WindowId};
use async_trait::async_trait;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
    gate: Gate,
}

/// The one point every port operation of an in-memory adapter goes through. With the
/// `testing` feature a test gives it a fault plan ([`crate::testing::faults::Faults`],
/// through `with_faults`): fault injection for every port at once, without a wrapper that
/// forwards the ports method by method.
#[derive(Debug, Clone, Default)]
struct Gate {
    #[cfg(any(test, feature = "testing"))]
    faults: Option<Arc<crate::testing::faults::Faults>>,
}

impl Gate {
    #[cfg(any(test, feature = "testing"))]
    fn with(faults: Arc<crate::testing::faults::Faults>) -> Self {
        Self {
            faults: Some(faults),
        }
    }

    /// Runs the port operation `operation` (the port method's name).
    async fn run<R>(
        &self,
        operation: &'static str,
        run: impl Future<Output = BackendResult<R>>,
    ) -> BackendResult<R> {
        #[cfg(any(test, feature = "testing"))]
        if let Some(faults) = &self.faults {
            return faults.around(operation, run).await;
        }
        let _ = operation;
        run.await
    }

    /// Why the test's plan has the queue refuse this job for good (never without a plan).
    fn refusal(&self, job: &DeliveryJob) -> Option<Refusal> {
        #[cfg(any(test, feature = "testing"))]
        if let Some(faults) = &self.faults {
            return faults.refusal(job);
        }
        let _ = job;
        None
    }

    /// `Corrupt` when the test's plan has this record's stored items read back corrupt.
    fn check_record(&self, record: &RecordId) -> BackendResult<()> {
        #[cfg(any(test, feature = "testing"))]
        if let Some(faults) = &self.faults {
            return faults.check_record(record);
        }
        let _ = record;
        Ok(())
    }
}

#[derive(Debug, Default)]
struct State {
    clients: BTreeMap<ClientId, OAuthClient>,
    tokens: HashMap<String, AccessToken>,
    subscriptions: BTreeMap<(RecordId, String), Subscription>,
    pending: BTreeMap<WindowId, BTreeSet<RecordId>>,
    /// Flush cursors and leases, by the assignment whose flush saved or took each.
    cursors: HashMap<FlushAssignment, FlushCursor>,
    flush_leases: HashMap<FlushAssignment, Lease>,
    applications: BTreeMap<ApplicationId, Application>,
    api_keys: HashMap<String, ApplicationId>,
    syncs: HashMap<SyncKey, SyncEntry>,
    poison: BTreeMap<PoisonId, PoisonItem>,
    /// The attempt log, by endpoint.
    attempts: attempts::MemoryAttemptLog,
    recoveries: HashMap<(EndpointKey, crate::attempts::RecoveryId), crate::attempts::Recovery>,
}

impl State {
    /// A page of `shard`'s records pending in `window` after `after`, in key order.
    fn shard_page(
        &self,
        window: WindowId,
        shard: Shard,
        after: Option<&str>,
        limit: usize,
    ) -> Page<RecordId> {
        let Some(records) = self.pending.get(&window) else {
            return Page::last(Vec::new());
        };
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let items: Vec<RecordId> = records
            .range::<str, _>((start, Bound::Unbounded))
            .filter(|record| Shard::of(record) == shard)
            .take(limit + 1)
            .cloned()
            .collect();
        Page::from_overfetch(items, limit, RecordId::to_string)
    }
}

#[derive(Debug, Default)]
struct SyncEntry {
    sync: Option<FullSync>,
    outcomes: SyncOutcomes,
    /// Persons whose outcome is counted (each once).
    counted: HashSet<RecordId>,
    /// Who claimed the completion's announcement.
    completion_claimant: Option<String>,
    lease: Option<Lease>,
}

impl MemoryStore {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("memory store lock")
    }

    /// This store's data through a fault plan: every port operation of the handle returned
    /// goes through `faults`; this handle stays as it is (a test sets up and checks
    /// through it).
    #[cfg(any(test, feature = "testing"))]
    pub fn with_faults(&self, faults: Arc<crate::testing::faults::Faults>) -> Self {
        Self {
            state: self.state.clone(),
            gate: Gate::with(faults),
        }
    }

    /// Every stored token (tests read what is stored).
    #[cfg(any(test, feature = "testing"))]
    pub fn stored_tokens(&self) -> Vec<AccessToken> {
        self.state().tokens.values().cloned().collect()
    }
}

#[async_trait]
impl ClientStore for MemoryStore {
    async fn get_client(&self, client_id: &ClientId) -> BackendResult<Option<OAuthClient>> {
        self.gate
            .run("get_client", async {
                Ok(self.state().clients.get(client_id).cloned())
            })
            .await
    }

    async fn put_client(&self, client: &OAuthClient) -> BackendResult<()> {
        self.gate
            .run("put_client", async {
                self.state()
                    .clients
                    .insert(client.client_id.clone(), client.clone());
                Ok(())
            })
            .await
    }

    async fn list_clients(&self) -> BackendResult<Vec<OAuthClient>> {
        self.gate
            .run("list_clients", async {
                Ok(self.state().clients.values().cloned().collect())
            })
            .await
    }
}

#[async_trait]
impl TokenStore for MemoryStore {
    async fn put_token(&self, token: &AccessToken) -> BackendResult<()> {
        self.gate
            .run("put_token", async {
                self.state()
                    .tokens
                    .insert(token.token_hash.clone(), token.clone());
                Ok(())
            })
            .await
    }

    async fn get_token(&self, token_hash: &str) -> BackendResult<Option<AccessToken>> {
        self.gate
            .run("get_token", async {
                Ok(self.state().tokens.get(token_hash).cloned())
            })
            .await
    }
}

#[async_trait]
impl SubscriptionStore for MemoryStore {
    async fn register(&self, subscription: &Subscription) -> BackendResult<Registered> {
        self.gate
            .run("register", async {
                let key = (
                    subscription.record.clone(),
                    subscription.callback.as_str().to_owned(),
                );
                let mut state = self.state();
                let registered = Registered::given(state.subscriptions.get(&key), subscription);
                if registered == Registered::Created {
                    state.subscriptions.insert(key, subscription.clone());
                }
                Ok(registered)
            })
            .await
    }

    async fn unregister(
        &self,
        record: &RecordId,
        callback: &CallbackUrl,
        client_id: &ClientId,
    ) -> BackendResult<Unregistered> {
        self.gate
            .run("unregister", async {
                let key = (record.clone(), callback.as_str().to_owned());
                let mut state = self.state();
                let unregistered = Unregistered::given(state.subscriptions.get(&key), client_id);
                if unregistered == Unregistered::Deleted {
                    state.subscriptions.remove(&key);
                }
                Ok(unregistered)
            })
            .await
    }

    async fn get_subscription(
        &self,
        record: &RecordId,
        callback: &CallbackUrl,
    ) -> BackendResult<Option<Subscription>> {
        self.gate
            .run("get_subscription", async {
                let key = (record.clone(), callback.as_str().to_owned());
                Ok(self.state().subscriptions.get(&key).cloned())
            })
            .await
    }

    async fn set_subscription_health(
        &self,
        record: &RecordId,
        callback: &CallbackUrl,
        health: &EndpointHealth,
    ) -> BackendResult<()> {
        self.gate
            .run("set_subscription_health", async {
                let key = (record.clone(), callback.as_str().to_owned());
                if let Some(subscription) = self.state().subscriptions.get_mut(&key) {
                    subscription.health = health.clone();
                }
                Ok(())
            })
            .await
    }

    async fn subscriptions_of(&self, record: &RecordId) -> BackendResult<Vec<Subscription>> {
        self.gate.check_record(record)?;
        self.gate
            .run("subscriptions_of", async {
                Ok(self
                    .state()
                    .subscriptions
                    .range((record.clone(), String::new())..)
                    .take_while(|((r, _), _)| r == record)
                    .map(|(_, s)| s.clone())
                    .collect())
            })
            .await
    }

    async fn client_webhooks(&self, client_id: &ClientId) -> BackendResult<Vec<Subscription>> {
        self.gate
            .run("client_webhooks", async {
                Ok(self
                    .state()
                    .subscriptions
                    .values()
                    .filter(|s| s.is_owned_by(client_id))
                    .cloned()
                    .collect())
            })
            .await
    }

    async fn client_webhook(
        &self,
        client_id: &ClientId,
        webhook: &EndpointKey,
    ) -> BackendResult<Option<Subscription>> {
        self.gate
            .run("client_webhook", async {
                Ok(self
                    .state()
                    .subscriptions
                    .values()
                    .find(|s| {
                        s.is_owned_by(client_id)
                            && EndpointKey::subscription(&s.record, &s.callback) == *webhook
                    })
                    .cloned())
            })
            .await
    }
}

#[async_trait]
impl PendingChanges for MemoryStore {
    async fn mark_all(&self, window: WindowId, records: &[RecordId]) -> BackendResult<()> {
        self.gate
            .run("mark", async {
                self.state()
                    .pending
                    .entry(window)
                    .or_default()
                    .extend(records.iter().cloned());
                Ok(())
            })
            .await
    }

    async fn shard_page(
        &self,
        window: WindowId,
        shard: Shard,
        after: Option<&str>,
        limit: usize,
    ) -> BackendResult<Page<RecordId>> {
        self.gate
            .run("shard_page", async {
                Ok(self.state().shard_page(window, shard, after, limit))
            })
            .await
    }

    async fn cursors(&self) -> BackendResult<Vec<(FlushAssignment, FlushCursor)>> {
        self.gate
            .run("cursors", async {
                let state = self.state();
                Ok(state
                    .cursors
                    .iter()
                    .map(|(assignment, cursor)| (assignment.clone(), cursor.clone()))
                    .collect())
            })
            .await
    }

    async fn save_cursor(
        &self,
        assignment: &FlushAssignment,
        cursor: &FlushCursor,
    ) -> BackendResult<()> {
        self.gate
            .run("save_cursor", async {
                let mut state = self.state();
                state.cursors.insert(assignment.clone(), cursor.clone());
                // Entries of flushed windows expire (the DynamoDB adapter uses TTL); dropping them
                // here keeps a long-running local runner's memory flat. A part of the shards
                // leaves them: another part may not have read them yet.
                if assignment.is_all() {
                    state.pending.retain(|w, _| *w >= cursor.window);
                }
                Ok(())
            })
            .await
    }

    async fn lease_flush(
        &self,
        assignment: &FlushAssignment,
        lease: &Lease,
        now: Timestamp,
    ) -> BackendResult<bool> {
        self.gate
            .run("lease_flush", async {
                let mut state = self.state();
                if !Lease::free(state.flush_leases.get(assignment), now) {
                    return Ok(false);
                }
                state.flush_leases.insert(assignment.clone(), lease.clone());
                Ok(true)
            })
            .await
    }

    async fn release_flush(
        &self,
        assignment: &FlushAssignment,
        holder: &LeaseHolder,
    ) -> BackendResult<()> {
        self.gate
            .run("release_flush", async {
                let mut state = self.state();
                if state
                    .flush_leases
                    .get(assignment)
                    .is_some_and(|l| l.holder == *holder)
                {
                    state.flush_leases.remove(assignment);
                }
                Ok(())
            })
            .await
    }

    async fn set_aside(&self, item: &PoisonItem) -> BackendResult<()> {
        self.gate
            .run("set_aside", async {
                self.state().poison.insert(item.id(), item.clone());
                Ok(())
            })
            .await
    }

    async fn poison_items(&self) -> BackendResult<Vec<PoisonItem>> {
        self.gate
            .run("poison_items", async {
                Ok(self.state().poison.values().cloned().collect())
            })
            .await
    }

    async fn remove_poison(&self, id: &PoisonId) -> BackendResult<bool> {
        self.gate
            .run("remove_poison", async {
                Ok(self.state().poison.remove(id).is_some())
            })
            .await
    }
}

#[async_trait]
impl ApplicationStore for MemoryStore {
    async fn get_application(&self, id: &ApplicationId) -> BackendResult<Option<Application>> {
        self.gate
            .run("get_application", async {
                Ok(self.state().applications.get(id).cloned())
            })
            .await
    }

    async fn put_application(&self, application: &Application) -> BackendResult<()> {
        self.gate
            .run("put_application", async {
                let mut state = self.state();
                state
                    .api_keys
                    .insert(application.api_key_hash.clone(), application.id.clone());
                state
                    .applications
                    .insert(application.id.clone(), application.clone());
                Ok(())
            })
            .await
    }

    async fn application_for_key(
        &self,
        api_key_hash: &str,
    ) -> BackendResult<Option<ApplicationId>> {
        self.gate
            .run("application_for_key", async {
                Ok(self.state().api_keys.get(api_key_hash).cloned())
            })
            .await
    }

    async fn list_applications(&self) -> BackendResult<Vec<Application>> {
        self.gate
            .run("list_applications", async {
                Ok(self.state().applications.values().cloned().collect())
            })
            .await
    }

    async fn set_application_health(
        &self,
        id: &ApplicationId,
        health: &EndpointHealth,
    ) -> BackendResult<()> {
        self.gate
            .run("set_application_health", async {
                if let Some(app) = self.state().applications.get_mut(id) {
                    app.health = health.clone();
                }
                Ok(())
            })
            .await
    }
}

#[async_trait]
impl SyncStore for MemoryStore {
    async fn save_sync(&self, sync: &FullSync) -> BackendResult<()> {
        self.gate
            .run("save_sync", async {
                self.state().syncs.entry(sync.key()).or_default().sync = Some(sync.clone());
                Ok(())
            })
            .await
    }

    async fn get_sync(&self, sync: &SyncKey) -> BackendResult<Option<(FullSync, SyncOutcomes)>> {
        self.gate
            .run("get_sync", async {
                let state = self.state();
                let entry = state.syncs.get(sync);
                Ok(entry.and_then(|e| e.sync.clone().map(|s| (s, e.outcomes))))
            })
            .await
    }

    async fn count_sync_outcomes(
        &self,
        sync: &SyncKey,
        outcomes: &[PersonOutcome],
    ) -> BackendResult<SyncOutcomes> {
        self.gate
            .run("count_sync_outcomes", async {
                let mut state = self.state();
                let entry = state.syncs.entry(sync.clone()).or_default();
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
            })
            .await
    }

    async fn claim_sync_completion(&self, sync: &SyncKey, claimant: &str) -> BackendResult<bool> {
        self.gate
            .run("claim_sync_completion", async {
                let mut state = self.state();
                let Some(entry) = state.syncs.get_mut(sync) else {
                    return Ok(false);
                };
                if entry.sync.is_none() {
                    return Ok(false);
                }
                let holder = entry
                    .completion_claimant
                    .get_or_insert_with(|| claimant.to_owned());
                Ok(holder == claimant)
            })
            .await
    }

    async fn lease_sync(
        &self,
        sync: &SyncKey,
        lease: &Lease,
        now: Timestamp,
    ) -> BackendResult<bool> {
        self.gate
            .run("lease_sync", async {
                let mut state = self.state();
                let entry = state.syncs.entry(sync.clone()).or_default();
                if !lease.may_replace(entry.lease.as_ref(), now) {
                    return Ok(false);
                }
                entry.lease = Some(lease.clone());
                Ok(true)
            })
            .await
    }

    async fn release_sync(&self, sync: &SyncKey, holder: &LeaseHolder) -> BackendResult<()> {
        self.gate
            .run("release_sync", async {
                let mut state = self.state();
                if let Some(entry) = state.syncs.get_mut(sync)
                    && entry.lease.as_ref().is_some_and(|l| l.holder == *holder)
                {
                    entry.lease = None;
                }
                Ok(())
            })
            .await
    }
}
