//! The ports: every piece of state and I/O the handlers use, as traits. Each has an
//! in-memory adapter ([`crate::memory`]) and an AWS adapter.

use crate::application::Application;
use crate::attempts::{
    Attempt, EndpointKey, FailingMessages, LogEndpoint, LoggedAttempt, Recovery, RecoveryId,
    StatusFilter, StoredMessage,
};
use crate::callback::CallbackUrl;
use crate::clock::{Clock, Timestamp};
use crate::events::OpsEvent;
use crate::health::EndpointHealth;
use crate::ids::{ApplicationId, ClientId, SyncKey};
use crate::job::{DeliveryJob, MessageId};
use crate::message::Refusal;
use crate::oauth::{AccessToken, OAuthClient};
use crate::poison::{PoisonId, PoisonItem};
use crate::record::RecordId;
use crate::subscription::{Registered, Subscription, Unregistered};
use crate::sync::{FullSync, SyncOutcomes};
use crate::window::{FlushAssignment, Shard, WindowId};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// A person record as stored: a JSON object with at least `id`.
pub type Person = serde_json::Map<String, serde_json::Value>;

/// A failure of a backing service. Handlers turn it into a retry (5xx, batch item
/// failure, or an error for the scheduler), never into a lost change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The service could not be reached or refused the call; retrying may succeed.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// A stored item could not be read back.
    #[error("stored item is corrupt: {0}")]
    Corrupt(String),
    /// The service refused this input for good (too large, content it does not accept):
    /// sending it again cannot succeed.
    #[error("refused: {0}")]
    Refused(Refusal),
}

impl BackendError {
    /// True when retrying the same call cannot succeed: the input itself is the problem.
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::Unavailable(_) => false,
            Self::Corrupt(_) | Self::Refused(_) => true,
        }
    }
}

/// Shorthand for port results.
pub type BackendResult<T> = Result<T, BackendError>;

/// Runs `work` on a task of its own and waits for it. Work started this way shares all of
/// the runtime's threads (a Lambda function has a vCPU per 1 769 MB of memory), where
/// futures polled together in one task take turns on one thread; and work on a runtime
/// worker wakes the tasks it needs (an HTTP connection's) on that worker's own queue.
/// The task keeps the caller's span and subscriber, is aborted when the caller stops
/// waiting (its `JoinSet` is dropped with the caller's future), and a panic in it resumes
/// here. An error only when the runtime stopped the task (shutting down).
pub async fn in_own_task<T: Send + 'static>(
    work: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T, String> {
    use tracing::Instrument;
    use tracing::instrument::WithSubscriber;
    let mut task = tokio::task::JoinSet::new();
    task.spawn(
        work.instrument(tracing::Span::current())
            .with_current_subscriber(),
    );
    match task.join_next().await {
        Some(Ok(done)) => Ok(done),
        Some(Err(stopped)) if stopped.is_panic() => std::panic::resume_unwind(stopped.into_panic()),
        Some(Err(stopped)) => Err(format!("the task stopped: {stopped}")),
        None => Err("the task was not started".into()),
    }
}

/// A backend call [`in_own_task`]: the SDK's serialising, signing and parsing of a large
/// flush is CPU-bound, so its calls run on every vCPU. A stopped task is the backend
/// unavailable (the call may not have been made).
pub async fn on_own_task<T: Send + 'static>(
    call: impl std::future::Future<Output = BackendResult<T>> + Send + 'static,
) -> BackendResult<T> {
    in_own_task(call)
        .await
        .unwrap_or_else(|stopped| Err(BackendError::Unavailable(stopped)))
}

/// OAuth clients: written by the admin tool, read by the token endpoint and every bearer check.
#[async_trait]
pub trait ClientStore: Send + Sync {
    /// The client with this id.
    async fn get_client(&self, client_id: &ClientId) -> BackendResult<Option<OAuthClient>>;
    /// Creates or replaces a client.
    async fn put_client(&self, client: &OAuthClient) -> BackendResult<()>;
    /// Every client (admin use).
    async fn list_clients(&self) -> BackendResult<Vec<OAuthClient>>;
}

/// Access tokens, by the hash of their value.
#[async_trait]
pub trait TokenStore: Send + Sync {
    /// Stores a token under its hash (the token itself is never stored).
    async fn put_token(&self, token: &AccessToken) -> BackendResult<()>;
    /// The token whose hash is `token_hash`.
    async fn get_token(&self, token_hash: &str) -> BackendResult<Option<AccessToken>>;
}

/// ORCID-style subscriptions: one per (record, callback URL), owned by the client that made it.
#[async_trait]
pub trait SubscriptionStore: Send + Sync {
    /// Adds a subscription unless the (record, callback) pair exists.
    async fn register(&self, subscription: &Subscription) -> BackendResult<Registered>;
    /// Removes the pair if `client_id` owns it.
    async fn unregister(
        &self,
        record: &RecordId,
        callback: &CallbackUrl,
        client_id: &ClientId,
    ) -> BackendResult<Unregistered>;
    /// Every subscription of a record.
    async fn subscriptions_of(&self, record: &RecordId) -> BackendResult<Vec<Subscription>>;
    /// Every subscription `client_id` owns.
    async fn client_webhooks(&self, client_id: &ClientId) -> BackendResult<Vec<Subscription>>;
    /// The subscription `client_id` owns whose webhook id is `webhook` (see
    /// [`EndpointKey::subscription`]); `None` when there is none, or another client owns it.
    async fn client_webhook(
        &self,
        client_id: &ClientId,
        webhook: &EndpointKey,
    ) -> BackendResult<Option<Subscription>>;
    /// The subscription of `record` at exactly this callback text, if any.
    async fn get_subscription(
        &self,
        record: &RecordId,
        callback: &CallbackUrl,
    ) -> BackendResult<Option<Subscription>>;
    /// Replaces a subscription's health (nothing when it no longer exists).
    async fn set_subscription_health(
        &self,
        record: &RecordId,
        callback: &CallbackUrl,
        health: &EndpointHealth,
    ) -> BackendResult<()>;
}

/// The records table (read side).
#[async_trait]
pub trait RecordStore: Send + Sync {
    /// The person with this id.
    async fn get_person(&self, id: &RecordId) -> BackendResult<Option<Person>>;
    /// Persons with a consent entry for `application` (a list of scopes under
    /// `consents.<application>`), page by page ([`Page`]) in the table's order (key order
    /// in memory, a scan's order on DynamoDB). `limit` bounds the records *examined*, so a
    /// page can be empty with `next` set, and the last page can be empty: a scan with a
    /// filter cannot tell that the record it stopped at was the table's last.
    async fn scan_consented(
        &self,
        application: &ApplicationId,
        after: Option<&str>,
        limit: usize,
    ) -> BackendResult<Page<(RecordId, Person)>>;
}

/// Members-style applications: their webhook settings, keys and endpoint health.
#[async_trait]
pub trait ApplicationStore: Send + Sync {
    /// The application with this id.
    async fn get_application(&self, id: &ApplicationId) -> BackendResult<Option<Application>>;
    /// Creates or replaces an application (and the index from its API key hash).
    async fn put_application(&self, application: &Application) -> BackendResult<()>;
    /// The id of the application whose API key hashes to `api_key_hash`.
    async fn application_for_key(&self, api_key_hash: &str)
    -> BackendResult<Option<ApplicationId>>;
    /// Every application (admin use).
    async fn list_applications(&self) -> BackendResult<Vec<Application>>;
    /// Replaces an application's webhook health only (nothing when it no longer exists).
    async fn set_application_health(
        &self,
        id: &ApplicationId,
        health: &EndpointHealth,
    ) -> BackendResult<()>;
}

/// Full syncs: their progress, the outcomes counted once per person, and the lease that lets one
/// step run at a time.
#[async_trait]
pub trait SyncStore: Send + Sync {
    /// Saves the driver's state of a sync (never the outcome counters).
    async fn save_sync(&self, sync: &FullSync) -> BackendResult<()>;
    /// A sync and the outcomes counted for it.
    async fn get_sync(&self, sync: &SyncKey) -> BackendResult<Option<(FullSync, SyncOutcomes)>>;
    /// Counts the final outcomes of fan-out jobs of a sync, each person at most once
    /// however often its job is delivered (the queue delivers at least once, and a job
    /// whose count failed comes back); returns what was newly counted. On an error some
    /// of them may be counted already: counting them again counts none twice. Writes are
    /// spread over counter shards so no single item takes every delivery's write.
    async fn count_sync_outcomes(
        &self,
        sync: &SyncKey,
        outcomes: &[PersonOutcome],
    ) -> BackendResult<SyncOutcomes>;
    /// Claims the announcement of the sync's completion for `claimant`: true for the first
    /// claimant (and for it again, so a claim that landed but reported an error can be
    /// retried), false for every other, so the "Sync Completed" event goes out once
    /// however many deliveries see the last count.
    async fn claim_sync_completion(&self, sync: &SyncKey, claimant: &str) -> BackendResult<bool>;
    /// Takes `lease` on the sync if it is free at `now` or already the lease holder's (one
    /// step at a time; a step retried after its lease was taken but the answer lost
    /// carries on); false when another step holds it.
    async fn lease_sync(
        &self,
        sync: &SyncKey,
        lease: &Lease,
        now: Timestamp,
    ) -> BackendResult<bool>;
    /// Frees the sync's lease if `holder` still holds it.
    async fn release_sync(&self, sync: &SyncKey, holder: &LeaseHolder) -> BackendResult<()>;
}

/// Who holds a lease: a flush run, or a sync step (named by its job's message id, the same
/// when the step is retried).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LeaseHolder(String);

impl LeaseHolder {
    /// The holder named `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self(name.into())
    }

    /// The name, as stores keep it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A lease to take or as held: whose, and until when (then it has expired and another may
/// take it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Who holds it.
    pub holder: LeaseHolder,
    /// When it expires.
    pub until: Timestamp,
}

impl Lease {
    /// True when it still holds at `now`.
    pub fn holds_at(&self, now: Timestamp) -> bool {
        self.until > now
    }

    /// The flush's rule: a lease may be taken at `now` only when nobody holds `held` then,
    /// not even the same holder (one flush run takes it once).
    pub fn free(held: Option<&Lease>, now: Timestamp) -> bool {
        !held.is_some_and(|held| held.holds_at(now))
    }

    /// A sync step's rule: this lease may replace `held` at `now` when that has expired or
    /// is this holder's own (a retried step takes its lease again).
    pub fn may_replace(&self, held: Option<&Lease>, now: Timestamp) -> bool {
        held.is_none_or(|held| !held.holds_at(now) || held.holder == self.holder)
    }
}

/// The final outcome of one person's job in a fan-out sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonOutcome {
    /// Whose delivery ended.
    pub person: RecordId,
    /// Acknowledged (else it went to the dead-letter queue after its last attempt).
    pub delivered: bool,
}

/// One page of a listing; `next` continues it.
///
/// Every paged listing of the ports keeps this contract (every adapter set is checked
/// against it by the `testing::contract` suite):
/// - read from `after = None`, then with each page's `next` until it is `None`, a listing
///   yields each of its items once, in its order;
/// - a page holds at most `limit` items (`limit` is at least 1);
/// - `next` is `None` once nothing follows, and set only when something may: a full page
///   that ends the listing has no `next`, so there is no trailing empty page. A listing
///   that bounds the work of one call says so; its pages can then be short, even empty,
///   with `next` set;
/// - `next` is a position to pass back as `after`, nothing to parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// This page's items, in key order.
    pub items: Vec<T>,
    /// Where the next page starts, if there is one.
    pub next: Option<String>,
}

impl<T> Page<T> {
    /// The listing's last page: nothing follows.
    pub fn last(items: Vec<T>) -> Self {
        Self { items, next: None }
    }

    /// A page from up to `limit + 1` items read in listing order (one more than a page
    /// holds, to know whether anything follows): when the extra one is there it is dropped
    /// and the page continues after its last item's position, `position_of` it; else this
    /// is the last page, with no trailing empty one after it.
    pub fn from_overfetch(
        mut items: Vec<T>,
        limit: usize,
        position_of: impl Fn(&T) -> String,
    ) -> Self {
        if items.len() <= limit {
            return Self::last(items);
        }
        items.truncate(limit);
        let next = items.last().map(position_of);
        Self { items, next }
    }

    /// This page with only the items `keep` admits, continuing where it did: a listing
    /// that bounds the items it examines (as a DynamoDB Scan's `Limit` does) filters after
    /// paging, so its pages can be short, even empty, with `next` set.
    pub fn retain(mut self, keep: impl FnMut(&T) -> bool) -> Self {
        self.items.retain(keep);
        self
    }
}

/// How far the flush got: every window before `window` is done, and inside `window` each
/// shard as far as `shards` says (a shard not listed from its start; a shard listed with a
/// later window of its own has every window before that one done).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlushCursor {
    /// The first window not yet completely flushed.
    pub window: WindowId,
    /// A page position inside the whole window, as versions before the flush's shard
    /// workers saved it; a window resumed from one starts its shards again (its first
    /// pages are notified again: at least once).
    pub after: Option<String>,
    /// The shards of `window` flushed in part or whole, and the shards ahead of it, each
    /// once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<ShardPosition>,
    /// When it was saved (cursors saved before the shards could be split over several
    /// flushes have none): of the cursors that cover a shard, the one saved last says
    /// where the shard stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saved_at: Option<Timestamp>,
}

impl FlushCursor {
    /// The start of `window`: nothing of it flushed.
    pub fn start_of(window: WindowId) -> Self {
        Self {
            window,
            after: None,
            shards: Vec::new(),
            saved_at: None,
        }
    }

    /// Where a flush of `assignment` starts, given every saved cursor: each of its shards
    /// as far as the cursors covering it say it got, or at the start of `first` (where a
    /// first run starts) when none covers it. The cursor's window is the earliest of
    /// theirs; a shard further on is listed with its own window.
    ///
    /// A cursor is saved only after what it says was enqueued, so every saved position of
    /// a shard is flushed up to, and the furthest is where the shard stands, whichever
    /// flush (the whole or a part) saved it. Within one window, page positions are told
    /// apart by when they were saved: the one saved last (a cursor from before the shards
    /// could be split has no time and comes first); at the same time, the window's start
    /// (sent again rather than skipped).
    pub fn resume(
        assignment: &FlushAssignment,
        saved: &[(FlushAssignment, FlushCursor)],
        first: WindowId,
    ) -> Self {
        let standings: Vec<(Shard, WindowId, Option<String>)> = assignment
            .shards()
            .map(|shard| {
                let furthest = saved
                    .iter()
                    .filter(|(covers, _)| covers.shards().any(|s| s == shard))
                    .map(|(_, cursor)| (cursor.standing(shard), cursor.saved_at))
                    .max_by_key(|((window, after), saved_at)| {
                        (*window, *saved_at, after.is_none())
                    });
                match furthest {
                    Some(((window, after), _)) => (shard, window, after),
                    None => (shard, first, None),
                }
            })
            .collect();
        let window = standings.iter().map(|(_, w, _)| *w).min().unwrap_or(first);
        let mut cursor = Self::start_of(window);
        for (shard, at, after) in standings {
            if at > window || after.is_some() {
                cursor.set_shard(ShardPosition {
                    shard,
                    window: (at > window).then_some(at),
                    after,
                    done: false,
                });
            }
        }
        cursor
    }

    /// Where `shard` stands: the window its flush is in and the page position in it (a
    /// shard done with the cursor's window stands at the start of the next).
    fn standing(&self, shard: Shard) -> (WindowId, Option<String>) {
        match self.shards.iter().find(|p| p.shard == shard) {
            Some(ShardPosition {
                window: Some(ahead),
                ..
            }) if *ahead > self.window => (*ahead, None),
            Some(p) if p.done => (WindowId(self.window.0 + 1), None),
            Some(p) => (self.window, p.after.clone()),
            None => (self.window, None),
        }
    }

    /// Where the flush of `shard` stands in the cursor's window (a shard ahead of it is
    /// done with it).
    pub fn shard(&self, shard: Shard) -> ShardPosition {
        let at_start = ShardPosition {
            shard,
            window: None,
            after: None,
            done: false,
        };
        match self.shards.iter().find(|p| p.shard == shard) {
            Some(p) if p.window.is_some_and(|w| w > self.window) => ShardPosition {
                done: true,
                ..at_start
            },
            Some(p) => ShardPosition {
                window: None,
                ..p.clone()
            },
            None => at_start,
        }
    }

    /// The cursor at the start of the next window, keeping the shards that are ahead of
    /// that one.
    pub fn next_window(&self) -> Self {
        self.skip_to(WindowId(self.window.0 + 1))
    }

    /// The cursor at the start of `window` (a later one), keeping the shards that are
    /// ahead of it, and the position in it of those that stand in it.
    pub fn skip_to(&self, window: WindowId) -> Self {
        let mut next = Self::start_of(window);
        for p in &self.shards {
            match p.window {
                Some(ahead) if ahead > window => next.set_shard(p.clone()),
                Some(ahead) if ahead == window && p.after.is_some() => {
                    next.set_shard(ShardPosition {
                        window: None,
                        done: false,
                        ..p.clone()
                    })
                }
                _ => {}
            }
        }
        next
    }

    /// Records where the flush of a shard stands.
    pub fn set_shard(&mut self, position: ShardPosition) {
        self.shards.retain(|p| p.shard != position.shard);
        self.shards.push(position);
        self.shards.sort_by_key(|p| p.shard);
    }
}

/// How far the flush of one shard of the cursor's window got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardPosition {
    /// The shard.
    pub shard: Shard,
    /// The shard's own window, when it is ahead of the cursor's: every window before it
    /// is flushed for this shard (after its shards were flushed by other assignments).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowId>,
    /// Every record up to and including this page position is flushed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// Every record of the shard is flushed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub done: bool,
}

/// Pending changes: the records changed in each window, plus the flush cursor.
#[async_trait]
pub trait PendingChanges: Send + Sync {
    /// Marks records changed in a window, a stream batch's in one call (idempotent: a
    /// record is pending once per window however often it is marked).
    async fn mark_all(&self, window: WindowId, records: &[RecordId]) -> BackendResult<()>;
    /// Marks one record changed in a window.
    async fn mark(&self, window: WindowId, record: &RecordId) -> BackendResult<()> {
        self.mark_all(window, std::slice::from_ref(record)).await
    }
    /// The records pending in one shard of a window ([`crate::window::Shard::of`]), in the
    /// store's order, after the page position `after`: a [`Page`] that is short only at
    /// the shard's end (no trailing empty page), each record once in a page. The memory and
    /// SQLite stores page in key order, each record once in the window; DynamoDB keeps each
    /// batch's records as written (one item per batch and shard), so a record marked by
    /// several batches can come again on a later page: the flush de-duplicates within a
    /// window. DynamoDB's shard 0 also holds the unsharded entries of earlier versions.
    async fn shard_page(
        &self,
        window: WindowId,
        shard: Shard,
        after: Option<&str>,
        limit: usize,
    ) -> BackendResult<Page<RecordId>>;
    /// Every saved flush cursor, each with the assignment whose flush saved it (each
    /// assignment has its own, [`FlushAssignment::key`]); read consistently.
    async fn cursors(&self) -> BackendResult<Vec<(FlushAssignment, FlushCursor)>>;
    /// Saves the cursor of the flush of `assignment`'s shards. When the assignment covers
    /// every shard, entries of windows before the cursor's may then be dropped (the memory
    /// and SQLite adapters drop them; DynamoDB's expire through TTL); the cursor's window
    /// and later ones are kept whole, and so is everything another assignment may still
    /// read.
    async fn save_cursor(
        &self,
        assignment: &FlushAssignment,
        cursor: &FlushCursor,
    ) -> BackendResult<()>;
    /// Takes the lease of the flush of `assignment`'s shards as `lease` if nobody holds it
    /// at `now` (a lease held until `now` or earlier has expired); false when it is held,
    /// even by the same holder (one flush run takes it once). One flush of an assignment
    /// runs at a time without reserved Lambda concurrency.
    async fn lease_flush(
        &self,
        assignment: &FlushAssignment,
        lease: &Lease,
        now: Timestamp,
    ) -> BackendResult<bool>;
    /// Gives the assignment's lease back if `holder` still holds it (a lease already taken
    /// over by another flush after it expired is left alone).
    async fn release_flush(
        &self,
        assignment: &FlushAssignment,
        holder: &LeaseHolder,
    ) -> BackendResult<()>;
    /// Keeps a change the flush had to set aside (a poison item) until an operator replays
    /// or drops it; writing the same item again changes nothing.
    async fn set_aside(&self, item: &PoisonItem) -> BackendResult<()>;
    /// Every poison item, oldest window first.
    async fn poison_items(&self) -> BackendResult<Vec<PoisonItem>>;
    /// Removes a poison item; false when there was none with this id.
    async fn remove_poison(&self, id: &PoisonId) -> BackendResult<bool>;
}

/// The delivery queue as the flush and delivery handlers use it. It has SQS's semantics
/// (receiving is the event source's, outside the ports): a received message is hidden for
/// the visibility timeout, then received again with its receive count one higher, unless
/// deleted; the receive after the maximum receive count moves it to the dead-letter queue.
#[async_trait]
pub trait DeliveryQueue: Send + Sync {
    /// Enqueues jobs: every one of them except those the result lists as refused for
    /// good (too large, or content the queue does not accept), or an error when the
    /// queue failed for a reason that may pass (a partial enqueue is then retried whole,
    /// which at worst duplicates).
    async fn enqueue(&self, jobs: &[DeliveryJob]) -> BackendResult<Enqueued>;
    /// Enqueues one job that becomes visible after `delay` (at most 15 minutes).
    async fn enqueue_delayed(&self, job: &DeliveryJob, delay: Duration) -> BackendResult<()>;
    /// Hides a received message for `delay` so it is retried then (visibility timeout).
    async fn retry_later(&self, receipt_handle: &str, delay: Duration) -> BackendResult<()>;
    /// Puts a job straight into the dead-letter queue (a paced sync's person that failed
    /// its last attempt), where an operator can inspect and replay it.
    async fn dead_letter(&self, job: &DeliveryJob) -> BackendResult<()>;
    /// Puts a job for a disabled endpoint aside in the parked queue (not the dead-letter
    /// queue, which means "something failed"), where it waits until its owner re-enables
    /// the endpoint and an operator replays it ([`crate::handlers::ParkedReplayer`]).
    async fn park(&self, job: &DeliveryJob) -> BackendResult<()>;
}

/// A message of the parked queue, as a replay receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedMessage {
    /// The message id (the same on every receive).
    pub message_id: String,
    /// The handle of this receive, to remove it.
    pub handle: String,
    /// The body: a serialized [`DeliveryJob`].
    pub body: String,
}

/// The parked queue as a replay uses it.
#[async_trait]
pub trait ParkedQueue: Send + Sync {
    /// Receives up to `max` parked messages and hides them for `hold`: a message not
    /// removed in that time is parked again as it was.
    async fn take_parked(&self, max: usize, hold: Duration) -> BackendResult<Vec<ParkedMessage>>;
    /// Removes a received parked message (after its job went back to the delivery queue).
    async fn remove_parked(&self, handle: &str) -> BackendResult<()>;
    /// Makes a received parked message visible again at once (it stays parked).
    async fn release_parked(&self, handle: &str) -> BackendResult<()>;
}

/// What an enqueue did: every job was enqueued except the refused ones. Must be looked at:
/// a refused job is not on the queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use = "refused jobs are not on the queue: set them aside or fail"]
pub struct Enqueued {
    /// The jobs the queue refused for good, by their position in the enqueued slice.
    pub refused: Vec<RefusedJob>,
}

impl Enqueued {
    /// Every job enqueued, or the first refusal as an error (for callers whose jobs are
    /// small and fixed-format, where a refusal is a bug to surface, not data to set aside).
    pub fn all(self) -> BackendResult<()> {
        match self.refused.into_iter().next() {
            None => Ok(()),
            Some(refused) => Err(BackendError::Refused(refused.refusal)),
        }
    }
}

/// One job a queue refused for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedJob {
    /// Its position in the enqueued slice.
    pub index: usize,
    /// Why the queue refused it; sending it again cannot help.
    pub refusal: Refusal,
}

/// Where operational events go.
#[async_trait]
pub trait OpsEvents: Send + Sync {
    /// Publishes events; failures are the caller's to log (an event is never worth
    /// failing a delivery for).
    async fn publish(&self, events: &[OpsEvent]) -> BackendResult<()>;
}

/// Publishes one event; a failure is logged, never passed on (an operational event is
/// never worth failing a request or a delivery for).
pub async fn announce(events: &dyn OpsEvents, event: OpsEvent) {
    if let Err(e) = events.publish(&[event]).await {
        tracing::warn!(error = %e, "operational event not published");
    }
}

/// When the delivery handler hands a batch's attempts to the attempt log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogWrites {
    /// All of them in one call once the batch's requests have ended: a store where each
    /// call costs a round trip or a commit (DynamoDB's `BatchWriteItem`, which also keeps
    /// the batch's quiet attempts to one owner in one item; one SQLite transaction).
    PerBatch,
    /// Each as its request ends, while the batch's other requests are still in flight: a
    /// store in this process whose call costs nothing but the write itself, which the
    /// batch's end then no longer waits for (figure 2 in docs/benchmarks.md).
    PerAttempt,
}

/// The delivery attempt log and the messages kept for redelivery (entries may expire after
/// the retention period, as DynamoDB's TTL deletes them; the memory adapter keeps them).
#[async_trait]
pub trait AttemptLog: Send + Sync {
    /// Records attempts (as [`AttemptLog::writes`] says: a delivery batch's in one call,
    /// or each as it ends) and, for each, its message and how its latest attempt ended.
    /// Takes them: a store in this process keeps them as they are, without a copy.
    async fn record(&self, attempts: Vec<LoggedAttempt>) -> BackendResult<()>;
    /// When the delivery handler calls [`AttemptLog::record`].
    fn writes(&self) -> LogWrites {
        LogWrites::PerBatch
    }
    /// An endpoint's attempts admitted by `filter`, newest first, continuing after the
    /// page position `after` (a previous page's `next`). A [`Page`] with no trailing empty
    /// page; the DynamoDB adapter bounds the reads of one call (a filter that admits few
    /// attempts), so its page can be short with `next` set.
    async fn attempts(
        &self,
        endpoint: &LogEndpoint,
        filter: StatusFilter,
        after: Option<&str>,
        limit: usize,
    ) -> BackendResult<Page<Attempt>>;
    /// A kept message of an endpoint and its attempts, oldest first.
    async fn message(
        &self,
        endpoint: &LogEndpoint,
        message_id: &MessageId,
    ) -> BackendResult<Option<(StoredMessage, Vec<Attempt>)>>;
    /// The kept messages of an endpoint with a failed attempt at or after `since` whose
    /// latest attempt failed too, each once, oldest failure first; at most `limit` of
    /// them, and whether more follow (a recovery takes the first `limit` and says it is
    /// incomplete).
    async fn failed_since(
        &self,
        endpoint: &LogEndpoint,
        since: Timestamp,
        limit: usize,
    ) -> BackendResult<FailingMessages>;
    /// The kept messages of an endpoint with these ids (those still kept), any order.
    async fn messages(
        &self,
        endpoint: &LogEndpoint,
        ids: &[MessageId],
    ) -> BackendResult<Vec<StoredMessage>>;
    /// Keeps a recovery (as long as attempts).
    async fn save_recovery(&self, recovery: &Recovery) -> BackendResult<()>;
    /// A recovery of an endpoint.
    async fn recovery(
        &self,
        endpoint: &EndpointKey,
        id: &RecoveryId,
    ) -> BackendResult<Option<Recovery>>;
}

/// Every port, as the handlers share them.
#[derive(Clone)]
pub struct Ports {
    /// Read by the token endpoint and every bearer check.
    pub clients: Arc<dyn ClientStore>,
    /// Access tokens, looked up by their hash.
    pub tokens: Arc<dyn TokenStore>,
    /// Registered by the API, read by the flush for each changed record.
    pub subscriptions: Arc<dyn SubscriptionStore>,
    /// Read by the flush (who consented) and delivery (where, with which keys).
    pub applications: Arc<dyn ApplicationStore>,
    /// Progress of the full syncs, saved after every page or person.
    pub syncs: Arc<dyn SyncStore>,
    /// Pending changes and the flush cursor.
    pub pending: Arc<dyn PendingChanges>,
    /// The registry's records table, read only: persons and their consents.
    pub records: Arc<dyn RecordStore>,
    /// The delivery queue (SQS semantics), with its dead-letter and parked queues.
    pub queue: Arc<dyn DeliveryQueue>,
    /// What operators are told (EventBridge in production, the log locally).
    pub events: Arc<dyn OpsEvents>,
    /// Every delivery attempt, for the endpoint's owner to read.
    pub attempts: Arc<dyn AttemptLog>,
    /// Every handler's now: the system clock in production, a manual one in tests.
    pub clock: Arc<dyn Clock>,
}

impl Ports {
    /// Every port over one store that holds the whole service table (the memory and the
    /// SQLite adapters: one value serves as clients, tokens, subscriptions, applications,
    /// syncs, pending changes and the attempt log), with its records, queue, events and
    /// clock.
    pub fn over<S, R, Q>(
        store: Arc<S>,
        records: Arc<R>,
        queue: Arc<Q>,
        events: Arc<dyn OpsEvents>,
        clock: Arc<dyn Clock>,
    ) -> Self
    where
        S: ClientStore
            + TokenStore
            + SubscriptionStore
            + ApplicationStore
            + SyncStore
            + PendingChanges
            + AttemptLog
            + 'static,
        R: RecordStore + 'static,
        Q: DeliveryQueue + 'static,
    {
        Self {
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
}

/// The longest delay a queue message can be given when sent (SQS `DelaySeconds`).
pub const MAX_SEND_DELAY: Duration = Duration::from_secs(900);

#[cfg(test)]
mod tests {
    use super::*;

    fn position(shard: u16, window: Option<u64>, after: Option<&str>, done: bool) -> ShardPosition {
        ShardPosition {
            shard: Shard(shard),
            window: window.map(WindowId),
            after: after.map(str::to_owned),
            done,
        }
    }

    fn saved(window: u64, shards: Vec<ShardPosition>, at_ms: Option<i64>) -> FlushCursor {
        FlushCursor {
            shards,
            saved_at: at_ms.and_then(Timestamp::from_epoch_ms),
            ..FlushCursor::start_of(WindowId(window))
        }
    }

    #[test]
    fn a_flush_resumes_each_shard_where_the_newest_cursor_covering_it_says() {
        let all = FlushAssignment::all();
        let low = FlushAssignment::of(0..4).unwrap();
        let first = WindowId(3);
        // No cursor at all: where a first run starts.
        assert_eq!(
            FlushCursor::resume(&low, &[], first),
            FlushCursor::start_of(first)
        );
        // The whole flush's cursor, saved before the split (no save time): a part starts
        // there with its own shards' positions only.
        let whole = saved(
            10,
            vec![
                position(1, None, Some("p"), false),
                position(2, None, None, true),
                position(6, None, Some("q"), false),
            ],
            None,
        );
        let resumed = FlushCursor::resume(&low, &[(all.clone(), whole.clone())], first);
        assert_eq!(
            resumed,
            saved(
                10,
                vec![
                    position(1, None, Some("p"), false),
                    position(2, Some(11), None, false),
                ],
                None
            ),
            "shard 2 was done with window 10: it stands at 11"
        );
        assert!(
            resumed.shard(Shard(2)).done,
            "done with the cursor's window"
        );
        assert!(!resumed.shard(Shard(0)).done);
        // After the split, the part's own cursor is newer than the whole's: it wins for
        // the part's shards, and the other shards keep the whole flush's.
        let part = saved(14, vec![position(3, None, Some("r"), false)], Some(5_000));
        let both = [(all.clone(), whole.clone()), (low.clone(), part.clone())];
        let unstamped = |c: &FlushCursor| FlushCursor {
            saved_at: None,
            ..c.clone()
        };
        assert_eq!(FlushCursor::resume(&low, &both, first), unstamped(&part));
        assert_eq!(
            FlushCursor::resume(&all, &both, first),
            saved(
                10,
                vec![
                    position(0, Some(14), None, false),
                    position(1, Some(14), None, false),
                    position(2, Some(14), None, false),
                    position(3, Some(14), Some("r"), false),
                    position(6, None, Some("q"), false),
                ],
                None
            ),
            "joined again: each shard from the newest cursor covering it, none behind it"
        );
        // The whole flush saved again later: it is the newest for every shard.
        let whole_again = saved(20, vec![], Some(9_000));
        let three = [
            (all.clone(), whole_again.clone()),
            (low.clone(), part),
            (
                FlushAssignment::of([7]).unwrap(),
                saved(8, vec![], Some(1_000)),
            ),
        ];
        assert_eq!(
            FlushCursor::resume(&all, &three, first),
            unstamped(&whole_again)
        );
    }

    #[test]
    fn the_next_window_keeps_the_shards_ahead_of_it() {
        let cursor = saved(
            10,
            vec![
                position(0, None, Some("p"), false),
                position(1, Some(11), None, false),
                position(2, Some(12), None, false),
                position(3, Some(11), Some("r"), false),
            ],
            Some(1),
        );
        assert_eq!(
            cursor.next_window(),
            saved(
                11,
                vec![
                    position(2, Some(12), None, false),
                    position(3, None, Some("r"), false)
                ],
                None
            ),
            "shard 3 continues in window 11 after its position there"
        );
        assert_eq!(
            cursor.skip_to(WindowId(13)),
            FlushCursor::start_of(WindowId(13))
        );
    }

    #[test]
    fn a_lease_holds_until_its_time_and_not_at_it() {
        let until = Timestamp::from_epoch_ms(5_000).unwrap();
        let lease = Lease {
            holder: LeaseHolder::new("a"),
            until,
        };
        for (case, now_ms, holds) in [
            ("before", 4_999, true),
            (
                "at its time (expired, as the stores' conditions read it)",
                5_000,
                false,
            ),
            ("after", 5_001, false),
        ] {
            let now = Timestamp::from_epoch_ms(now_ms).unwrap();
            assert_eq!(lease.holds_at(now), holds, "{case}");
        }
    }

    #[test]
    fn a_flush_waits_for_any_holder_a_sync_step_only_for_another() {
        let at = |ms| Timestamp::from_epoch_ms(ms).unwrap();
        let lease = |holder: &str, until_ms| Lease {
            holder: LeaseHolder::new(holder),
            until: at(until_ms),
        };
        let mine = lease("a", 9_000);
        for (case, held, now_ms, free, may_replace) in [
            ("none held", None, 1_000, true, true),
            ("mine, held", Some(lease("a", 5_000)), 4_999, false, true),
            (
                "another's, held",
                Some(lease("b", 5_000)),
                4_999,
                false,
                false,
            ),
            (
                "another's, expired",
                Some(lease("b", 5_000)),
                5_000,
                true,
                true,
            ),
        ] {
            assert_eq!(Lease::free(held.as_ref(), at(now_ms)), free, "{case}");
            assert_eq!(
                mine.may_replace(held.as_ref(), at(now_ms)),
                may_replace,
                "{case}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_on_its_own_task_runs_apart_from_its_caller_and_returns_its_result() {
        // The caller is a task too, as a Lambda handler's invocation is.
        let (caller, ran_on, answer) = tokio::spawn(async {
            let (ran_on, answer) = on_own_task(async { Ok((tokio::task::id(), 42)) })
                .await
                .expect("the call's result");
            (tokio::task::id(), ran_on, answer)
        })
        .await
        .expect("the caller's task");
        assert_ne!(ran_on, caller, "the call ran on the caller's task");
        assert_eq!(answer, 42);
        let failed = on_own_task(async { Err::<(), _>(BackendError::Corrupt("x".into())) }).await;
        assert_eq!(failed, Err(BackendError::Corrupt("x".into())));
    }

    #[tokio::test]
    #[should_panic(expected = "a bug in the call")]
    async fn a_panic_on_its_own_task_reaches_the_caller() {
        let _ = on_own_task(async { panic!("a bug in the call") as BackendResult<()> }).await;
    }
}
