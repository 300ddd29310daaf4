//! Replaying parked jobs: jobs for disabled endpoints wait in the parked queue (not the
//! dead-letter queue, which means "something failed") until their owner re-enables the
//! endpoint. A replay sends back to the delivery queue only the jobs whose endpoint is
//! enabled again (or gone: delivery then drops them with a reason); a job whose endpoint is
//! still disabled stays parked and is reported, so replaying never makes a job go round.
//!
//! Replaying a poison item (a change the flush set aside, [`crate::poison`]): its record
//! is marked pending again, and the next flush rebuilds its jobs.

use crate::job::{DeliveryJob, Target};
use crate::message;
use crate::poison::{PoisonId, PoisonItem};
use crate::ports::{
    ApplicationStore, BackendResult, DeliveryQueue, ParkedQueue, PendingChanges, SubscriptionStore,
};
use crate::window::WindowId;
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

/// How long a replay keeps the parked messages it received out of sight while it runs, so
/// it sees each once; it makes the ones it leaves parked visible again when it ends (or
/// they are visible again after this, if the replay stopped half-way).
pub const REPLAY_HOLD: Duration = Duration::from_secs(300);

/// Parked messages received per call.
const TAKE: usize = 10;

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ParkedReplay {
    /// Jobs sent back to the delivery queue.
    pub replayed: u64,
    /// Jobs left parked because their endpoint is still disabled, by endpoint.
    pub still_disabled: BTreeMap<String, u64>,
    /// Messages that are not a delivery job, left parked for an operator to look at.
    pub unreadable: u64,
}

/// What a replay reads and writes.
pub struct ParkedReplayer<'a> {
    /// Callback health.
    pub subscriptions: &'a dyn SubscriptionStore,
    /// Application webhook health.
    pub applications: &'a dyn ApplicationStore,
    /// Where replayed jobs go.
    pub queue: &'a dyn DeliveryQueue,
    /// Where the jobs wait.
    pub parked: &'a dyn ParkedQueue,
}

impl ParkedReplayer<'_> {
    /// Looks at up to `max` parked messages once each: a job whose endpoint is enabled again
    /// goes back to the delivery queue (sent before it is removed, so a crash in between
    /// duplicates, never loses); any other stays parked. Ends when every parked message has
    /// been looked at.
    pub async fn replay(&self, max: usize) -> BackendResult<ParkedReplay> {
        let mut left = Vec::new();
        let result = self.replay_into(max, &mut left).await;
        // Visible again at once, so a replay right after the owner re-enables finds them.
        for handle in left {
            if let Err(e) = self.parked.release_parked(&handle).await {
                tracing::warn!(error = %e, "could not make a parked message visible again; it is after the hold");
            }
        }
        result
    }

    async fn replay_into(&self, max: usize, left: &mut Vec<String>) -> BackendResult<ParkedReplay> {
        let mut report = ParkedReplay::default();
        // Message ids stay the same across receives: one that came back after its hold was
        // already judged in this run.
        let mut seen = HashSet::new();
        while seen.len() < max {
            let batch = self
                .parked
                .take_parked(TAKE.min(max - seen.len()), REPLAY_HOLD)
                .await?;
            let mut fresh = false;
            for message in batch {
                if !seen.insert(message.message_id.clone()) {
                    continue;
                }
                fresh = true;
                let job: DeliveryJob = match message::decode(&message.body) {
                    Ok(job) => job,
                    Err(e) => {
                        tracing::warn!(message_id = %message.message_id, error = %e, "parked message is not a delivery job; left parked");
                        report.unreadable += 1;
                        left.push(message.handle);
                        continue;
                    }
                };
                let disabled = match self.disabled_endpoint(&job).await {
                    Ok(disabled) => disabled,
                    Err(e) => {
                        left.push(message.handle);
                        return Err(e);
                    }
                };
                if let Some(endpoint) = disabled {
                    *report.still_disabled.entry(endpoint).or_default() += 1;
                    left.push(message.handle);
                    continue;
                }
                // It was parked with the same checks, so the delivery queue takes it.
                self.queue
                    .enqueue(std::slice::from_ref(&job))
                    .await?
                    .all()?;
                self.parked.remove_parked(&message.handle).await?;
                report.replayed += 1;
            }
            if !fresh {
                break;
            }
        }
        Ok(report)
    }

    /// The job's endpoint, if it exists and is still disabled.
    async fn disabled_endpoint(&self, job: &DeliveryJob) -> BackendResult<Option<String>> {
        Ok(match &job.target {
            Target::Callback {
                record, callback, ..
            } => self
                .subscriptions
                .get_subscription(record, callback)
                .await?
                .filter(|s| s.health.is_disabled())
                .map(|s| s.endpoint()),
            Target::Application { application, .. } => self
                .applications
                .get_application(application)
                .await?
                .filter(|a| a.health.is_disabled())
                .map(|a| a.endpoint()),
            Target::SyncStep { .. } => None,
        })
    }
}

/// Replays a poison item: marks its record pending again in `window`, which must be the
/// window a change captured now belongs to ([`crate::window::FlushWindows::current`]), then
/// removes the item. Returns the item, or `None` when there is none with this id.
///
/// The current window, as change capture uses it, because the flush reads a window only
/// once it is closed and past its grace period: a mark there is never missed by a flush
/// running at the same time (a mark behind the cursor, or in a window a running flush is
/// reading, could be). The next flush after the window closes rebuilds the record's jobs
/// from the data as it is then. Marking first: a crash in between leaves the item to be
/// replayed again (a duplicate notification, never a lost one).
pub async fn replay_poison(
    pending: &dyn PendingChanges,
    id: &PoisonId,
    window: WindowId,
) -> BackendResult<Option<PoisonItem>> {
    let Some(item) = pending
        .poison_items()
        .await?
        .into_iter()
        .find(|i| i.id() == *id)
    else {
        return Ok(None);
    };
    pending.mark(window, &item.record).await?;
    pending.remove_poison(id).await?;
    Ok(Some(item))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::application::Application;
    use crate::callback::{CallbackUrl, UrlPolicy};
    use crate::memory::{MemoryQueue, MemoryStore};
    use crate::record::RecordId;
    use crate::subscription::Subscription;
    use crate::window::WindowId;

    const AT: &str = "2026-11-26T00:00:00.000Z";

    fn subscription(path: &str, disabled: bool) -> Subscription {
        let mut s = Subscription {
            record: RecordId::parse("0000-0002-1825-0097").unwrap(),
            callback: CallbackUrl::parse(
                &format!("https://example.org/{path}"),
                UrlPolicy::default(),
            )
            .unwrap(),
            client_id: "APP-1".parse().unwrap(),
            created_at: crate::clock::Timestamp::UNIX_EPOCH,
            health: Default::default(),
        };
        if disabled {
            s.health.disable(
                crate::testing::at_ms(1_000),
                "the receiver answered 410 Gone".into(),
            );
        }
        s
    }

    #[tokio::test]
    async fn only_jobs_of_enabled_endpoints_go_back_and_a_second_replay_finds_the_rest() {
        let store = MemoryStore::default();
        let queue = MemoryQueue::new(Duration::from_secs(30), 5);
        let enabled = subscription("ok", false);
        let disabled = subscription("gone", true);
        for s in [&enabled, &disabled] {
            store.register(s).await.unwrap();
        }
        let mut app = Application::new(
            &"app-1".parse().unwrap(),
            "key",
            crate::clock::Timestamp::UNIX_EPOCH,
        );
        app.health.disable(
            crate::testing::at_ms(1_000),
            "the webhook URL does not parse".into(),
        );
        store.put_application(&app).await.unwrap();
        let record = enabled.record.clone();
        let jobs = [
            DeliveryJob::for_subscription(&enabled, WindowId(1), crate::testing::at(AT)),
            DeliveryJob::for_subscription(&disabled, WindowId(1), crate::testing::at(AT)),
            DeliveryJob::for_application(
                &"app-1".parse().unwrap(),
                &record,
                serde_json::Map::new(),
                WindowId(1),
                crate::testing::at(AT),
            ),
            DeliveryJob::sync_step(
                &crate::ids::SyncKey {
                    application: "app-1".parse().unwrap(),
                    sync: crate::ids::SyncId::generate(),
                },
                crate::testing::at(AT),
            ),
        ];
        for job in &jobs {
            queue.park(job).await.unwrap();
        }
        let replayer = ParkedReplayer {
            subscriptions: &store,
            applications: &store,
            queue: &queue,
            parked: &queue,
        };
        let report = replayer.replay(100).await.unwrap();
        assert_eq!(report.replayed, 2, "{report:?}");
        assert_eq!(
            report.still_disabled,
            BTreeMap::from([(disabled.endpoint(), 1), (app.endpoint(), 1)])
        );
        assert_eq!(queue.depth().visible, 2);
        assert_eq!(queue.depth().parked, 2);

        // Nothing goes round: the same replay again moves nothing and sees both again
        // (left visible, not hidden for the hold).
        let again = replayer.replay(100).await.unwrap();
        assert_eq!((again.replayed, again.still_disabled.len()), (0, 2));

        // The application is enabled again: its job goes back; the callback's stays.
        app.health.enable();
        store.put_application(&app).await.unwrap();
        let report = replayer.replay(100).await.unwrap();
        assert_eq!(report.replayed, 1);
        assert_eq!(queue.depth().parked, 1);
        let parked: DeliveryJob = message::decode(&queue.parked()[0]).unwrap();
        assert_eq!(parked, jobs[1]);
    }

    #[tokio::test]
    async fn a_replay_looks_at_no_more_than_max_messages() {
        let store = MemoryStore::default();
        let queue = MemoryQueue::new(Duration::from_secs(30), 5);
        for _ in 0..5 {
            queue
                .park(&DeliveryJob::sync_step(
                    &crate::ids::SyncKey {
                        application: "app-1".parse().unwrap(),
                        sync: crate::ids::SyncId::generate(),
                    },
                    crate::testing::at(AT),
                ))
                .await
                .unwrap();
        }
        let replayer = ParkedReplayer {
            subscriptions: &store,
            applications: &store,
            queue: &queue,
            parked: &queue,
        };
        assert_eq!(replayer.replay(3).await.unwrap().replayed, 3);
        assert_eq!(queue.depth().parked, 2);
    }
}
