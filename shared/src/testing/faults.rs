//! Fault injection for any adapter: a seeded random source decides, for each store or
//! queue operation, whether it succeeds, fails before taking effect, fails after taking
//! effect (a timeout whose write landed), or never returns (the handler is killed there,
//! as a Lambda timeout or OOM would). Used by the soak and moto fault tests; the same
//! seed replays the same decisions for the same sequence of operations.
//!
//! Those faults pass. [`PermanentFaults`] do not: a queue that refuses one particular job
//! every time, a record whose stored items never decode — bad data, which healing the
//! backends does not cure.

use crate::application::Application;
use crate::callback::CallbackUrl;
use crate::health::EndpointHealth;
use crate::job::DeliveryJob;
use crate::message::Refusal;
use crate::oauth::{AccessToken, OAuthClient};
use crate::poison::PoisonItem;
use crate::ports::{
    ApplicationStore, BackendError, BackendResult, ClientStore, DeliveryQueue, Enqueued,
    FlushCursor, Page, PendingChanges, Person, PersonOutcome, RecordStore, RefusedJob,
    SubscriptionStore, SyncStore, TokenStore,
};
use crate::record::RecordId;
use crate::subscription::{Registered, Subscription, Unregistered};
use crate::sync::{FullSync, SyncOutcomes};
use crate::window::WindowId;
use async_trait::async_trait;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What happens to one operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// It runs normally.
    None,
    /// It fails without taking effect.
    Fail,
    /// It takes effect, then reports failure (a timeout after the write landed).
    FailAfter,
    /// It never returns: whoever awaits it is stuck until killed.
    Hang,
}

/// Counts of injected faults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Operations that ran.
    pub operations: u64,
    /// Failed before taking effect.
    pub failed: u64,
    /// Failed after taking effect.
    pub failed_after: u64,
    /// Never returned.
    pub hung: u64,
    /// Refused or read back corrupt by a [`PermanentFaults`] rule.
    pub permanent: u64,
}

/// Picks the items a permanent fault applies to.
pub type Pick<T> = Option<Box<dyn Fn(&T) -> bool + Send + Sync>>;

/// Items a port refuses every time, healed or not.
#[derive(Default)]
pub struct PermanentFaults {
    /// Jobs the queue refuses for good (as SQS refuses a message it cannot take).
    pub refuse_job: Pick<DeliveryJob>,
    /// Records whose stored items read back corrupt (their subscriptions and person).
    pub corrupt_record: Pick<RecordId>,
}

impl std::fmt::Debug for PermanentFaults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PermanentFaults")
            .field("refuse_job", &self.refuse_job.is_some())
            .field("corrupt_record", &self.corrupt_record.is_some())
            .finish()
    }
}

/// The seeded source of faults, shared by every wrapped adapter.
#[derive(Debug)]
pub struct Faults {
    rng: Mutex<fastrand::Rng>,
    fail: f64,
    fail_after: f64,
    hang: f64,
    healed: AtomicBool,
    operations: AtomicU64,
    failed: AtomicU64,
    failed_after: AtomicU64,
    hung: AtomicU64,
    permanent_rules: PermanentFaults,
    permanent: AtomicU64,
}

impl Faults {
    /// Faults drawn from `seed` with these probabilities per operation.
    pub fn seeded(seed: u64, fail: f64, fail_after: f64, hang: f64) -> Self {
        Self {
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
            fail,
            fail_after,
            hang,
            healed: AtomicBool::new(false),
            operations: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            failed_after: AtomicU64::new(0),
            hung: AtomicU64::new(0),
            permanent_rules: PermanentFaults::default(),
            permanent: AtomicU64::new(0),
        }
    }

    /// The same faults, plus permanent ones.
    pub fn with_permanent(mut self, rules: PermanentFaults) -> Self {
        self.permanent_rules = rules;
        self
    }

    /// True when the queue must refuse this job for good.
    fn refuses(&self, job: &DeliveryJob) -> bool {
        let refused = self
            .permanent_rules
            .refuse_job
            .as_ref()
            .is_some_and(|f| f(job));
        if refused {
            self.permanent.fetch_add(1, Ordering::Relaxed);
        }
        refused
    }

    /// `Corrupt` when this record's stored items must read back corrupt.
    fn check_record(&self, record: &RecordId) -> BackendResult<()> {
        if self
            .permanent_rules
            .corrupt_record
            .as_ref()
            .is_some_and(|f| f(record))
        {
            self.permanent.fetch_add(1, Ordering::Relaxed);
            return Err(BackendError::Corrupt(format!(
                "injected: an item of record {record} does not decode"
            )));
        }
        Ok(())
    }

    /// No more faults from now on.
    pub fn heal(&self) {
        self.healed.store(true, Ordering::SeqCst);
    }

    /// What the next operation gets.
    pub fn roll(&self) -> Fault {
        self.operations.fetch_add(1, Ordering::Relaxed);
        if self.healed.load(Ordering::SeqCst) {
            return Fault::None;
        }
        let x = self.rng.lock().expect("fault rng").f64();
        let fault = if x < self.fail {
            Fault::Fail
        } else if x < self.fail + self.fail_after {
            Fault::FailAfter
        } else if x < self.fail + self.fail_after + self.hang {
            Fault::Hang
        } else {
            Fault::None
        };
        match fault {
            Fault::Fail => self.failed.fetch_add(1, Ordering::Relaxed),
            Fault::FailAfter => self.failed_after.fetch_add(1, Ordering::Relaxed),
            Fault::Hang => self.hung.fetch_add(1, Ordering::Relaxed),
            Fault::None => 0,
        };
        fault
    }

    /// How many of each fault were injected.
    pub fn counts(&self) -> FaultCounts {
        FaultCounts {
            operations: self.operations.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            failed_after: self.failed_after.load(Ordering::Relaxed),
            hung: self.hung.load(Ordering::Relaxed),
            permanent: self.permanent.load(Ordering::Relaxed),
        }
    }

    async fn around<R>(&self, op: impl Future<Output = BackendResult<R>>) -> BackendResult<R> {
        match self.roll() {
            Fault::None => op.await,
            Fault::Fail => Err(BackendError::Unavailable("injected failure".into())),
            Fault::FailAfter => {
                op.await?;
                Err(BackendError::Unavailable(
                    "injected timeout after the operation took effect".into(),
                ))
            }
            Fault::Hang => {
                // Long enough to be killed by any invocation deadline; bounded all the same.
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Err(BackendError::Unavailable("injected hang".into()))
            }
        }
    }
}

/// An adapter whose every operation goes through [`Faults`].
pub struct Faulty<T> {
    inner: Arc<T>,
    faults: Arc<Faults>,
}

impl<T> Faulty<T> {
    /// Wraps `inner` (still usable directly, without faults).
    pub fn new(inner: Arc<T>, faults: Arc<Faults>) -> Self {
        Self { inner, faults }
    }
}

#[async_trait]
impl<T: ClientStore> ClientStore for Faulty<T> {
    async fn get_client(&self, client_id: &str) -> BackendResult<Option<OAuthClient>> {
        self.faults.around(self.inner.get_client(client_id)).await
    }
    async fn put_client(&self, client: &OAuthClient) -> BackendResult<()> {
        self.faults.around(self.inner.put_client(client)).await
    }
    async fn list_clients(&self) -> BackendResult<Vec<OAuthClient>> {
        self.faults.around(self.inner.list_clients()).await
    }
}

#[async_trait]
impl<T: TokenStore> TokenStore for Faulty<T> {
    async fn put_token(&self, token: &AccessToken) -> BackendResult<()> {
        self.faults.around(self.inner.put_token(token)).await
    }
    async fn get_token(&self, token_hash: &str) -> BackendResult<Option<AccessToken>> {
        self.faults.around(self.inner.get_token(token_hash)).await
    }
}

#[async_trait]
impl<T: SubscriptionStore> SubscriptionStore for Faulty<T> {
    async fn get_subscription(
        &self,
        record: &RecordId,
        callback: &CallbackUrl,
    ) -> BackendResult<Option<Subscription>> {
        self.faults
            .around(self.inner.get_subscription(record, callback))
            .await
    }
    async fn set_subscription_health(
        &self,
        record: &RecordId,
        callback: &CallbackUrl,
        health: &EndpointHealth,
    ) -> BackendResult<()> {
        self.faults
            .around(self.inner.set_subscription_health(record, callback, health))
            .await
    }
    async fn register(&self, subscription: &Subscription) -> BackendResult<Registered> {
        self.faults.around(self.inner.register(subscription)).await
    }
    async fn unregister(
        &self,
        record: &RecordId,
        callback: &CallbackUrl,
        client_id: &str,
    ) -> BackendResult<Unregistered> {
        self.faults
            .around(self.inner.unregister(record, callback, client_id))
            .await
    }
    async fn subscriptions_of(&self, record: &RecordId) -> BackendResult<Vec<Subscription>> {
        self.faults.check_record(record)?;
        self.faults
            .around(self.inner.subscriptions_of(record))
            .await
    }
    async fn client_webhooks(&self, client_id: &str) -> BackendResult<Vec<Subscription>> {
        self.faults
            .around(self.inner.client_webhooks(client_id))
            .await
    }
    async fn client_webhook(
        &self,
        client_id: &str,
        webhook: &crate::attempts::EndpointKey,
    ) -> BackendResult<Option<Subscription>> {
        self.faults
            .around(self.inner.client_webhook(client_id, webhook))
            .await
    }
}

#[async_trait]
impl<T: RecordStore> RecordStore for Faulty<T> {
    async fn get_person(&self, id: &RecordId) -> BackendResult<Option<Person>> {
        self.faults.check_record(id)?;
        self.faults.around(self.inner.get_person(id)).await
    }
    async fn scan_consented(
        &self,
        application: &str,
        after: Option<&str>,
        limit: usize,
    ) -> BackendResult<Page<(RecordId, Person)>> {
        self.faults
            .around(self.inner.scan_consented(application, after, limit))
            .await
    }
}

#[async_trait]
impl<T: ApplicationStore> ApplicationStore for Faulty<T> {
    async fn set_application_health(&self, id: &str, health: &EndpointHealth) -> BackendResult<()> {
        self.faults
            .around(self.inner.set_application_health(id, health))
            .await
    }
    async fn get_application(&self, id: &str) -> BackendResult<Option<Application>> {
        self.faults.around(self.inner.get_application(id)).await
    }
    async fn put_application(&self, application: &Application) -> BackendResult<()> {
        self.faults
            .around(self.inner.put_application(application))
            .await
    }
    async fn application_for_key(&self, api_key_hash: &str) -> BackendResult<Option<String>> {
        self.faults
            .around(self.inner.application_for_key(api_key_hash))
            .await
    }
    async fn list_applications(&self) -> BackendResult<Vec<Application>> {
        self.faults.around(self.inner.list_applications()).await
    }
}

#[async_trait]
impl<T: SyncStore> SyncStore for Faulty<T> {
    async fn save_sync(&self, sync: &FullSync) -> BackendResult<()> {
        self.faults.around(self.inner.save_sync(sync)).await
    }
    async fn get_sync(
        &self,
        application: &str,
        sync_id: &str,
    ) -> BackendResult<Option<(FullSync, SyncOutcomes)>> {
        self.faults
            .around(self.inner.get_sync(application, sync_id))
            .await
    }
    async fn count_sync_outcomes(
        &self,
        application: &str,
        sync_id: &str,
        outcomes: &[PersonOutcome],
    ) -> BackendResult<SyncOutcomes> {
        self.faults
            .around(
                self.inner
                    .count_sync_outcomes(application, sync_id, outcomes),
            )
            .await
    }
    async fn claim_sync_completion(
        &self,
        application: &str,
        sync_id: &str,
        claimant: &str,
    ) -> BackendResult<bool> {
        self.faults
            .around(
                self.inner
                    .claim_sync_completion(application, sync_id, claimant),
            )
            .await
    }
    async fn lease_sync(
        &self,
        application: &str,
        sync_id: &str,
        holder: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> BackendResult<bool> {
        self.faults
            .around(
                self.inner
                    .lease_sync(application, sync_id, holder, now_ms, until_ms),
            )
            .await
    }
    async fn release_sync(
        &self,
        application: &str,
        sync_id: &str,
        holder: &str,
    ) -> BackendResult<()> {
        self.faults
            .around(self.inner.release_sync(application, sync_id, holder))
            .await
    }
}

#[async_trait]
impl<T: PendingChanges> PendingChanges for Faulty<T> {
    async fn mark(&self, window: WindowId, record: &RecordId) -> BackendResult<()> {
        self.faults.around(self.inner.mark(window, record)).await
    }
    async fn page(
        &self,
        window: WindowId,
        after: Option<&str>,
        limit: usize,
    ) -> BackendResult<Page<RecordId>> {
        self.faults
            .around(self.inner.page(window, after, limit))
            .await
    }
    async fn cursor(&self) -> BackendResult<Option<FlushCursor>> {
        self.faults.around(self.inner.cursor()).await
    }
    async fn save_cursor(&self, cursor: &FlushCursor) -> BackendResult<()> {
        self.faults.around(self.inner.save_cursor(cursor)).await
    }
    async fn lease_flush(&self, holder: &str, now_ms: i64, until_ms: i64) -> BackendResult<bool> {
        self.faults
            .around(self.inner.lease_flush(holder, now_ms, until_ms))
            .await
    }
    async fn release_flush(&self, holder: &str) -> BackendResult<()> {
        self.faults.around(self.inner.release_flush(holder)).await
    }
    async fn set_aside(&self, item: &PoisonItem) -> BackendResult<()> {
        self.faults.around(self.inner.set_aside(item)).await
    }
    async fn poison_items(&self) -> BackendResult<Vec<PoisonItem>> {
        self.faults.around(self.inner.poison_items()).await
    }
    async fn remove_poison(&self, id: &str) -> BackendResult<bool> {
        self.faults.around(self.inner.remove_poison(id)).await
    }
}

#[async_trait]
impl<T: DeliveryQueue> DeliveryQueue for Faulty<T> {
    async fn enqueue(&self, jobs: &[DeliveryJob]) -> BackendResult<Enqueued> {
        let (refused, kept): (Vec<usize>, Vec<usize>) =
            (0..jobs.len()).partition(|&i| self.faults.refuses(&jobs[i]));
        if refused.is_empty() {
            return self.faults.around(self.inner.enqueue(jobs)).await;
        }
        let sent: Vec<DeliveryJob> = kept.iter().map(|&i| jobs[i].clone()).collect();
        let mut enqueued = self.faults.around(self.inner.enqueue(&sent)).await?;
        for job in &mut enqueued.refused {
            job.index = kept[job.index];
        }
        enqueued
            .refused
            .extend(refused.into_iter().map(|index| RefusedJob {
                index,
                refusal: injected_refusal(),
            }));
        enqueued.refused.sort_by_key(|r| r.index);
        Ok(enqueued)
    }
    async fn enqueue_delayed(&self, job: &DeliveryJob, delay: Duration) -> BackendResult<()> {
        if self.faults.refuses(job) {
            return Err(BackendError::Refused(injected_refusal()));
        }
        self.faults
            .around(self.inner.enqueue_delayed(job, delay))
            .await
    }
    async fn retry_later(&self, receipt_handle: &str, delay: Duration) -> BackendResult<()> {
        self.faults
            .around(self.inner.retry_later(receipt_handle, delay))
            .await
    }
    async fn dead_letter(&self, job: &DeliveryJob) -> BackendResult<()> {
        if self.faults.refuses(job) {
            return Err(BackendError::Refused(injected_refusal()));
        }
        self.faults.around(self.inner.dead_letter(job)).await
    }
    async fn park(&self, job: &DeliveryJob) -> BackendResult<()> {
        self.faults.around(self.inner.park(job)).await
    }
}

fn injected_refusal() -> Refusal {
    Refusal::Rejected {
        reason: "InvalidMessageContents: injected permanent refusal".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_faults() {
        let draw = |seed| {
            let faults = Faults::seeded(seed, 0.2, 0.1, 0.05);
            (0..200).map(|_| faults.roll()).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        let faults = Faults::seeded(1, 0.2, 0.1, 0.05);
        for _ in 0..1000 {
            faults.roll();
        }
        let c = faults.counts();
        assert_eq!(c.operations, 1000);
        assert!(c.failed > 100 && c.failed < 300, "{c:?}");
        assert!(c.hung > 20 && c.hung < 90, "{c:?}");
        faults.heal();
        assert!((0..100).all(|_| faults.roll() == Fault::None));
    }
}
