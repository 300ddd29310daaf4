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
use tokio::time::Instant;

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
}

impl Default for FlushSettings {
    fn default() -> Self {
        Self {
            page_size: 100,
            first_run_lookback: 12,
            max_lag: 7 * 24 * 12,
            lookup_concurrency: 16,
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

    /// Flushes every closed window after the cursor, saving progress after each page so a
    /// crash or timeout repeats at most one page (duplicates, never losses). Stops
    /// early, with progress saved, when `deadline` comes near.
    pub async fn run(&self, deadline: Option<Instant>) -> Result<FlushReport, BackendError> {
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
