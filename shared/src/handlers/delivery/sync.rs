//! Full syncs in a delivery batch: a sync step job runs here, and the outcomes of a
//! sync's fan-out jobs are counted once per batch (and the sync's completion announced).

use super::Delivery;
use super::plan::Received;
use super::verdict::Verdict;
use crate::handlers::sync_driver::{StepOutcome, SyncDriver, announce_if_complete};
use crate::ids::SyncKey;
use crate::job::{DeliveryJob, Target};
use crate::ports::{BackendError, BackendResult, LeaseHolder, PersonOutcome};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

/// How often a batch tries to count its sync outcomes (before giving the messages back),
/// and, once counted, to check and announce the sync's completion.
const COUNT_ATTEMPTS: u32 = 8;
/// The first wait between those tries (then 4 times longer each, up to
/// [`COUNT_RETRY_MAX_DELAY`]).
const COUNT_RETRY_DELAY: Duration = Duration::from_millis(50);
/// The longest wait between two tries.
const COUNT_RETRY_MAX_DELAY: Duration = Duration::from_secs(1);

/// Runs `call` until it succeeds, at most [`COUNT_ATTEMPTS`] times, with doubling-by-four
/// waits between tries, and never waiting past `deadline`.
async fn retry_until<T, F, Fut>(deadline: Instant, mut call: F) -> BackendResult<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = BackendResult<T>>,
{
    let mut delay = COUNT_RETRY_DELAY;
    let mut attempt = 1;
    loop {
        match call().await {
            Err(e) if attempt < COUNT_ATTEMPTS && Instant::now() + delay < deadline => {
                tracing::debug!(error = %e, attempt, "sync bookkeeping failed; trying again");
                tokio::time::sleep(delay).await;
                delay = (delay * 4).min(COUNT_RETRY_MAX_DELAY);
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// A fan-out sync job's final outcome, to be counted.
pub(super) struct SyncOutcome {
    sync: SyncKey,
    outcome: PersonOutcome,
    message_id: String,
    receipt_handle: Option<String>,
}

impl SyncOutcome {
    /// The outcome to count for a job of `sync`, once its verdict is final: delivered,
    /// or on its way to the dead-letter queue.
    pub(super) fn of(rx: &Received<'_>, sync: Option<SyncKey>, verdict: Verdict) -> Option<Self> {
        let sync = sync?;
        let Target::Application { record, .. } = &rx.job.target else {
            return None;
        };
        let delivered = match verdict {
            Verdict::Delivered => true,
            Verdict::Exhausted => false,
            Verdict::RetryAfter(_) => return None,
        };
        Some(Self {
            sync,
            outcome: PersonOutcome {
                person: record.clone(),
                delivered,
            },
            message_id: rx.message.id.clone(),
            receipt_handle: rx.message.receipt_handle.clone(),
        })
    }
}

impl Delivery {
    /// Counts the batch's fan-out sync outcomes, one call per sync (each person once,
    /// however often its job came back), and announces a sync it completes. A throttled
    /// or failed count is tried again a few times; if it still fails, the acknowledged
    /// messages are given back to be delivered and counted again (a duplicate for the
    /// receiver, never a lost count); returns their ids.
    pub(super) async fn count_sync_outcomes(
        &self,
        outcomes: Vec<SyncOutcome>,
        deadline: Instant,
    ) -> Vec<String> {
        let mut per_sync: BTreeMap<SyncKey, Vec<SyncOutcome>> = BTreeMap::new();
        for outcome in outcomes {
            per_sync
                .entry(outcome.sync.clone())
                .or_default()
                .push(outcome);
        }
        let mut give_back = Vec::new();
        for (sync, outcomes) in per_sync {
            let persons: Vec<PersonOutcome> = outcomes.iter().map(|o| o.outcome.clone()).collect();
            let counted = retry_until(deadline, || {
                self.ports.syncs.count_sync_outcomes(&sync, &persons)
            })
            .await;
            match counted {
                Ok(_) => self.announce_if_complete(&sync, deadline).await,
                Err(e) => give_back.extend(self.give_back_uncounted(outcomes, &sync, &e).await),
            }
        }
        give_back
    }

    /// Once a sync's outcomes are counted, the messages are done whatever happens next.
    /// The completion is claimed with one claimant on every try, so a claim that landed
    /// but reported an error is still this batch's to announce; giving the messages back
    /// here would leave such a claim with nobody to announce it.
    async fn announce_if_complete(&self, sync: &SyncKey, deadline: Instant) {
        let claimant = uuid::Uuid::new_v4().simple().to_string();
        let announced = retry_until(deadline, || {
            announce_if_complete(
                self.ports.syncs.as_ref(),
                self.ports.events.as_ref(),
                sync,
                &claimant,
            )
        })
        .await;
        if let Err(e) = announced {
            tracing::error!(%sync, error = %e, "could not check or announce the sync's completion; the step or a later batch checks again");
        }
    }

    /// Gives the delivered messages of a sync whose outcomes could not be counted back to
    /// the queue (delivered and counted again later); returns their ids.
    async fn give_back_uncounted(
        &self,
        outcomes: Vec<SyncOutcome>,
        sync: &SyncKey,
        e: &BackendError,
    ) -> Vec<String> {
        let mut give_back = Vec::new();
        for outcome in outcomes {
            if !outcome.outcome.delivered {
                // Already on its way to the dead-letter queue: its count is missing
                // until it is replayed and delivered.
                tracing::error!(message_id = %outcome.message_id, %sync, error = %e, "could not count a dead-lettered sync job");
                continue;
            }
            tracing::warn!(message_id = %outcome.message_id, %sync, error = %e, "could not count the sync outcome; the message will be delivered and counted again");
            if let Some(receipt) = outcome.receipt_handle.as_deref()
                && let Err(e) = self
                    .ports
                    .queue
                    .retry_later(receipt, self.settings.retry.base)
                    .await
            {
                tracing::warn!(message_id = %outcome.message_id, error = %e, "could not change the message's visibility");
            }
            give_back.push(outcome.message_id);
        }
        give_back
    }

    /// Runs one step of a full sync; a further step is sent as a new message after the
    /// delay it asks for.
    pub(super) async fn sync_step(
        &self,
        rx: &Received<'_>,
        sync: &SyncKey,
        deadline: Instant,
    ) -> Option<String> {
        let driver = SyncDriver {
            ports: &self.ports,
            http: &self.http,
            retry: self.settings.retry,
        };
        // The lease's holder is the step job's id: the same when SQS delivers the message
        // again and when a backend failure sends the job again as a new message.
        let holder = LeaseHolder::new(rx.job.id.as_str());
        let stepped = driver.step(sync, &holder, deadline).await;
        let sent = match stepped {
            Ok(StepOutcome::Done) => return None,
            Ok(StepOutcome::Again(delay)) => {
                let next = DeliveryJob::sync_step(sync, self.ports.clock.now());
                self.ports.queue.enqueue_delayed(&next, delay).await
            }
            Err(e) => Err(e),
        };
        match sent {
            Ok(()) => None,
            Err(e) => self.backend_failure(rx, e).await,
        }
    }
}
