//! The `flush` Lambda (EventBridge schedule): pending records of closed windows become
//! delivery jobs, one per (record, subscription), on the delivery queue.

use crate::application::Application;
use crate::clock::rfc3339_millis;
use crate::job::DeliveryJob;
use crate::members::{consents, scoped_person};
use crate::ports::{BackendError, FlushCursor, Person, Ports};
use crate::record::RecordId;
use crate::subscription::Subscription;
use crate::window::{FlushWindows, WindowId};
use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The lease of a run without a deadline (the local runner): Lambda's longest timeout.
const LEASE_WITHOUT_DEADLINE: Duration = Duration::from_secs(900);

/// Settings of the flush.
#[derive(Debug, Clone, Copy)]
pub struct FlushSettings {
    /// Pending records read per page (and per cursor save).
    pub page_size: usize,
    /// On the first run (no cursor), how many windows back to start.
    pub first_run_lookback: u64,
    /// The oldest window still worth reading, counted back from the newest closed one
    /// (older pending entries have expired).
    pub max_lag: u64,
    /// Concurrent subscription look-ups.
    pub lookup_concurrency: usize,
    /// How long the flush lease outlives the run's deadline. The deadline a Lambda run
    /// gets is [`crate::aws::DEADLINE_MARGIN`] (15 s) before Lambda's own, so the default
    /// (60 s) lasts until well after Lambda would have stopped the run.
    pub lease_margin: Duration,
}

impl Default for FlushSettings {
    fn default() -> Self {
        Self {
            page_size: 100,
            first_run_lookback: 12,
            max_lag: 7 * 24 * 12,
            lookup_concurrency: 16,
            lease_margin: Duration::from_secs(60),
        }
    }
}

/// What one flush did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct FlushReport {
    /// Windows completely flushed.
    pub windows: u64,
    /// Pending records read.
    pub records: u64,
    /// Delivery jobs enqueued.
    pub jobs: u64,
    /// True when it stopped at the deadline and the next run continues.
    pub partial: bool,
    /// True when another flush held the lease, so this one did nothing.
    pub lease_held: bool,
}

/// The flush handler.
pub struct Flush {
    /// The ports.
    pub ports: Ports,
    /// Which windows are closed.
    pub windows: Arc<dyn FlushWindows>,
    /// Settings.
    pub settings: FlushSettings,
}

impl Flush {
    /// Handles the scheduled event (its content does not matter: every run flushes
    /// whatever windows have closed).
    pub async fn handle(
        &self,
        event: EventBridgeEvent,
        deadline: Option<Instant>,
    ) -> Result<FlushReport, BackendError> {
        tracing::debug!(event_id = event.id.as_deref(), time = ?event.time, "scheduled flush");
        self.run(deadline).await
    }

    /// Takes the flush lease (one flush at a time, without reserved Lambda concurrency),
    /// flushes, and gives the lease back. A run that finds the lease held returns at once
    /// with [`FlushReport::lease_held`]; a run that crashes leaves its lease to expire
    /// [`FlushSettings::lease_margin`] after its deadline, and the next run after that
    /// proceeds.
    pub async fn run(&self, deadline: Option<Instant>) -> Result<FlushReport, BackendError> {
        let holder = uuid::Uuid::new_v4().simple().to_string();
        let now_ms = (self.ports.clock.now().unix_timestamp_nanos() / 1_000_000) as i64;
        let hold = deadline.map_or(LEASE_WITHOUT_DEADLINE, |d| {
            d.saturating_duration_since(Instant::now())
        }) + self.settings.lease_margin;
        let until_ms = now_ms.saturating_add(hold.as_millis() as i64);
        if !self
            .ports
            .pending
            .lease_flush(&holder, now_ms, until_ms)
            .await?
        {
            tracing::info!("another flush holds the lease; this one ends");
            return Ok(FlushReport {
                lease_held: true,
                ..FlushReport::default()
            });
        }
        let result = self.flush_windows(deadline).await;
        if let Err(e) = self.ports.pending.release_flush(&holder).await {
            tracing::warn!(error = %e, "could not release the flush lease; it expires by itself");
        }
        result
    }

    /// Flushes every closed window after the cursor, saving progress after each page so a
    /// crash or timeout repeats at most one page (duplicates, never losses). Stops
    /// early, with progress saved, when `deadline` comes near.
    async fn flush_windows(&self, deadline: Option<Instant>) -> Result<FlushReport, BackendError> {
        let mut report = FlushReport::default();
        let Some(through) = self.windows.closed_through() else {
            return Ok(report);
        };
        let oldest = WindowId(through.0.saturating_sub(self.settings.max_lag));
        let mut cursor = self.ports.pending.cursor().await?.unwrap_or(FlushCursor {
            window: WindowId(through.0.saturating_sub(self.settings.first_run_lookback)),
            after: None,
        });
        if cursor.window < oldest {
            tracing::warn!(
                from = cursor.window.0,
                to = oldest.0,
                "flush fell behind past the pending-entry lifetime; skipping expired windows"
            );
            cursor = FlushCursor {
                window: oldest,
                after: None,
            };
        }
        // Members-style fan-out needs each person's consents; with no application at all,
        // the person reads are skipped (one query per run instead of one read per record).
        let members = !self
            .ports
            .applications
            .list_applications()
            .await?
            .is_empty();
        while cursor.window <= through {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                report.partial = true;
                break;
            }
            let page = self
                .ports
                .pending
                .page(
                    cursor.window,
                    cursor.after.as_deref(),
                    self.settings.page_size,
                )
                .await?;
            let jobs = self.jobs_for(cursor.window, &page.items, members).await?;
            self.ports.queue.enqueue(&jobs).await?;
            report.records += page.items.len() as u64;
            report.jobs += jobs.len() as u64;
            cursor = match page.next {
                Some(after) => FlushCursor {
                    window: cursor.window,
                    after: Some(after),
                },
                None => {
                    report.windows += 1;
                    FlushCursor {
                        window: WindowId(cursor.window.0 + 1),
                        after: None,
                    }
                }
            };
            self.ports.pending.save_cursor(&cursor).await?;
        }
        tracing::info!(?report, next_window = cursor.window.0, "flush done");
        Ok(report)
    }

    /// One job per (record, subscription) and per (person, consented application with a
    /// webhook). Applications are read once per flush run.
    async fn jobs_for(
        &self,
        window: WindowId,
        records: &[RecordId],
        members: bool,
    ) -> Result<Vec<DeliveryJob>, BackendError> {
        let created_at = rfc3339_millis(self.ports.clock.now());
        // Futures collected first: a closure inside the stream would make this future
        // lose `Send` through higher-ranked lifetimes.
        let lookups: Vec<_> = records
            .iter()
            .map(|record| self.targets_of(record, members))
            .collect();
        let per_record: Vec<_> = futures::stream::iter(lookups)
            .buffered(self.settings.lookup_concurrency)
            .collect()
            .await;
        let mut applications: HashMap<String, Option<Application>> = HashMap::new();
        let mut jobs = Vec::new();
        for (record, targets) in records.iter().zip(per_record) {
            let (subscriptions, person) = targets?;
            for subscription in subscriptions
                .into_iter()
                .filter(|s| !s.health.is_disabled())
            {
                jobs.push(DeliveryJob::for_subscription(
                    &subscription,
                    window,
                    created_at.clone(),
                ));
            }
            let Some(person) = person else { continue };
            for (app_id, scopes) in consents(&person) {
                if !applications.contains_key(&app_id) {
                    let app = self.ports.applications.get_application(&app_id).await?;
                    applications.insert(app_id.clone(), app);
                }
                if applications[&app_id]
                    .as_ref()
                    .is_some_and(|a| a.webhook.url.is_some() && !a.health.is_disabled())
                {
                    let scoped = scoped_person(record, &person, &scopes);
                    jobs.push(DeliveryJob::for_application(
                        &app_id,
                        record,
                        scoped,
                        window,
                        created_at.clone(),
                    ));
                }
            }
        }
        Ok(jobs)
    }

    /// The subscriptions of a record and the person (for its consents).
    async fn targets_of(
        &self,
        record: &RecordId,
        members: bool,
    ) -> Result<(Vec<Subscription>, Option<Person>), BackendError> {
        let subscriptions = self.ports.subscriptions.subscriptions_of(record).await?;
        // The person is read only for its consents: not at all while no application exists.
        let person = if members {
            self.ports.records.get_person(record).await?
        } else {
            None
        };
        Ok((subscriptions, person))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callback::{CallbackUrl, UrlPolicy};
    use crate::clock::ManualClock;
    use crate::events::LoggedEvents;
    use crate::memory::{MemoryQueue, MemoryRecords, MemoryStore};
    use crate::ports::DeliveryQueue;
    use crate::window::ManualWindows;
    use async_trait::async_trait;
    use tokio::sync::Semaphore;

    /// A queue whose enqueue waits until the test lets it through: the flush holding it
    /// is observably in the middle of its run.
    struct GatedQueue {
        inner: Arc<MemoryQueue>,
        entered: Semaphore,
        gate: Semaphore,
    }

    #[async_trait]
    impl DeliveryQueue for GatedQueue {
        async fn enqueue(&self, jobs: &[DeliveryJob]) -> crate::ports::BackendResult<()> {
            self.entered.add_permits(1);
            self.gate
                .acquire()
                .await
                .map_err(|e| BackendError::Unavailable(e.to_string()))?
                .forget();
            self.inner.enqueue(jobs).await
        }
        async fn enqueue_delayed(
            &self,
            job: &DeliveryJob,
            delay: Duration,
        ) -> crate::ports::BackendResult<()> {
            self.inner.enqueue_delayed(job, delay).await
        }
        async fn retry_later(
            &self,
            receipt_handle: &str,
            delay: Duration,
        ) -> crate::ports::BackendResult<()> {
            self.inner.retry_later(receipt_handle, delay).await
        }
        async fn dead_letter(&self, job: &DeliveryJob) -> crate::ports::BackendResult<()> {
            self.inner.dead_letter(job).await
        }
    }

    struct Setup {
        flush: Arc<Flush>,
        queue: Arc<GatedQueue>,
        memory_queue: Arc<MemoryQueue>,
        clock: Arc<ManualClock>,
    }

    /// Three records changed in a closed window, each with one subscription.
    async fn setup() -> Setup {
        let clock = Arc::new(ManualClock::new(time::OffsetDateTime::now_utc()));
        let store = Arc::new(MemoryStore::default());
        let memory_queue = Arc::new(MemoryQueue::new(Duration::from_secs(60), 5));
        let queue = Arc::new(GatedQueue {
            inner: memory_queue.clone(),
            entered: Semaphore::new(0),
            gate: Semaphore::new(0),
        });
        let mut ports = crate::memory::ports(
            store.clone(),
            Arc::new(MemoryRecords::default()),
            memory_queue.clone(),
            Arc::new(LoggedEvents::default()),
            clock.clone(),
        );
        ports.queue = queue.clone();
        let windows = Arc::new(ManualWindows::default());
        for r in ["r1", "r2", "r3"] {
            let record = RecordId::parse(r).unwrap();
            ports
                .subscriptions
                .register(&Subscription {
                    record: record.clone(),
                    callback: CallbackUrl::parse(
                        &format!("https://example.org/{r}"),
                        UrlPolicy::default(),
                    )
                    .unwrap(),
                    client_id: "c".into(),
                    created_at: 0,
                    health: Default::default(),
                })
                .await
                .unwrap();
            ports
                .pending
                .mark(windows.current(), &record)
                .await
                .unwrap();
        }
        windows.close_current();
        Setup {
            flush: Arc::new(Flush {
                ports,
                windows,
                settings: FlushSettings::default(),
            }),
            queue,
            memory_queue,
            clock,
        }
    }

    #[tokio::test]
    async fn a_second_concurrent_flush_finds_the_lease_held_and_does_nothing() {
        let s = setup().await;
        let first = tokio::spawn({
            let flush = s.flush.clone();
            async move { flush.run(None).await }
        });
        // The first run is inside its enqueue, lease held.
        s.queue.entered.acquire().await.unwrap().forget();
        let second = tokio::time::timeout(Duration::from_secs(5), s.flush.run(None))
            .await
            .expect("the second flush returns at once")
            .unwrap();
        assert_eq!(
            (second.jobs, second.records, second.lease_held),
            (0, 0, true),
            "{second:?}"
        );
        s.queue.gate.add_permits(100);
        let first = first.await.unwrap().unwrap();
        assert_eq!((first.jobs, first.lease_held), (3, false), "{first:?}");
        assert_eq!(s.memory_queue.depth().visible, 3, "each job enqueued once");
        // Released at the end: the next run takes the lease (and finds nothing new).
        let third = s.flush.run(None).await.unwrap();
        assert!(!third.lease_held, "{third:?}");
    }

    #[tokio::test]
    async fn a_crashed_flush_leaves_a_lease_that_expires() {
        let s = setup().await;
        let deadline = Instant::now() + Duration::from_secs(30);
        // Killed in the middle (a Lambda timeout or crash): the lease is not released.
        let killed =
            tokio::time::timeout(Duration::from_millis(50), s.flush.run(Some(deadline))).await;
        assert!(killed.is_err(), "the run was cut off");
        s.queue.gate.add_permits(100);
        let blocked = s.flush.run(None).await.unwrap();
        assert!(blocked.lease_held && blocked.jobs == 0, "{blocked:?}");
        // Held until the dead run's deadline plus the margin, then taken over.
        s.clock.advance(
            Duration::from_secs(30)
                + FlushSettings::default().lease_margin
                + Duration::from_secs(1),
        );
        let next = s.flush.run(None).await.unwrap();
        assert_eq!((next.jobs, next.lease_held), (3, false), "{next:?}");
    }
}
