//! The `flush` Lambda (EventBridge schedule): pending records of closed windows become
//! delivery jobs, one per (record, subscription), on the delivery queue.
//!
//! A change that can never be queued as it is — a job the queue refuses for good, a
//! record whose stored items do not decode — is set aside as a poison item
//! ([`crate::poison`]) with an operational event, and the flush moves on: one bad record
//! must not hold back every later window. A failure that may pass (a backend
//! unavailable) fails the run instead, and the next run repeats the page.

use crate::application::{Application, endpoint_name};
use crate::clock::Timestamp;
use crate::handlers::Delivery;
use crate::ids::ApplicationId;
use crate::job::DeliveryJob;
use crate::members::{consents, scoped_person};
use crate::metrics::FlushMetrics;
use crate::poison::PoisonItem;
use crate::ports::{
    BackendError, FlushCursor, Lease, LeaseHolder, Person, Ports, ShardPosition, announce,
    on_own_task,
};
use crate::record::RecordId;
use crate::subscription::Subscription;
use crate::window::{AssignmentError, FlushAssignment, FlushWindows, WindowId};
use futures::StreamExt;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The lease of a run without a deadline (the local runner): Lambda's longest timeout.
const LEASE_WITHOUT_DEADLINE: Duration = Duration::from_secs(900);

/// What a page's first attempts need after their requests (the attempt log's write, the
/// queue's sends), before the run's deadline.
const AFTER_FIRST_ATTEMPTS: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy)]
pub struct FlushSettings {
    /// Pending records read per page (and per cursor save).
    pub page_size: usize,
    /// On the first run (no cursor), how many windows back to start.
    pub first_run_lookback: u64,
    /// The oldest window still worth reading, counted back from the newest closed one
    /// (older pending entries have expired).
    pub max_lag: u64,
    /// Concurrent subscription look-ups of a flush invocation, shared by the shards it
    /// flushes at once: the default, 128, is 16 for each of all 8 shards (`FlushWorkers`
    /// 1) and 128 for a flush of one (`FlushWorkers` 8).
    pub lookup_concurrency: usize,
    /// How long the flush lease outlives the run's deadline. The deadline a Lambda run
    /// gets is [`crate::aws::DEADLINE_MARGIN`] (15 s) before Lambda's own, so the default
    /// (60 s) lasts until well after Lambda would have stopped the run.
    pub lease_margin: Duration,
    /// The window length (the flush interval), to express the lag in seconds.
    pub window_length: Duration,
    /// Print a CloudWatch Embedded Metric Format line per run (on Lambda).
    pub metrics: bool,
    /// A page of a shard whose jobs number at most this has their first attempt made by
    /// the flush itself ([`Flush::delivery`]), and only the jobs that need another go on
    /// the queue; 0 queues every job. A quiet window's few jobs then cost no queue
    /// messages and no delivery invocation (docs/architecture.md, "First attempts by the
    /// flush"); a busy window's pages go on the queue, where deliveries scale out.
    pub first_attempts_up_to: usize,
}

impl Default for FlushSettings {
    fn default() -> Self {
        Self {
            // A page's look-ups and sends go out in two rounds at a flush of one shard.
            page_size: 250,
            first_run_lookback: 12,
            max_lag: 7 * 24 * 12,
            // Each look-up reads its own record's partition; at 16 a shard, a large window's
            // flush waited on their rounds (docs/benchmarks.md, figure 8).
            lookup_concurrency: 128,
            lease_margin: Duration::from_secs(60),
            window_length: Duration::from_secs(300),
            metrics: false,
            // One `SendMessageBatch`: below it, the queue's messages are sent, received and
            // deleted in batches smaller than SQS's 10.
            first_attempts_up_to: 10,
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
    /// Delivery jobs made (queued, or attempted by the flush itself).
    pub jobs: u64,
    /// Of those, the jobs whose first attempt the flush made itself.
    pub first_attempts: u64,
    /// Changes set aside as poison items (see [`crate::poison`]).
    pub set_aside: u64,
    /// True when it stopped at the deadline and the next run continues.
    pub partial: bool,
    /// True when another flush held the lease, so this one did nothing.
    pub lease_held: bool,
    /// Closed windows not completely flushed when the run ended (0: it caught up).
    pub behind_windows: u64,
}

impl FlushReport {
    /// Adds what pages of records did (records read, jobs enqueued, changes set aside).
    fn add_pages(&mut self, pages: &FlushReport) {
        self.records += pages.records;
        self.jobs += pages.jobs;
        self.first_attempts += pages.first_attempts;
        self.set_aside += pages.set_aside;
    }
}

/// What starts a flush run: the schedule's EventBridge event, or the constant input of a
/// schedule that splits the shards over several flushes (`{"shards": [0, 1]}`, the
/// template's `FlushWorkers`). Every other field is ignored.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct FlushEvent {
    /// The EventBridge event's id, for the log.
    #[serde(default)]
    pub id: Option<String>,
    /// The shards this run flushes; every shard when absent.
    #[serde(default)]
    pub shards: Option<Vec<u64>>,
}

impl FlushEvent {
    /// The shards it assigns.
    pub fn assignment(&self) -> Result<FlushAssignment, AssignmentError> {
        match &self.shards {
            None => Ok(FlushAssignment::all()),
            Some(shards) => FlushAssignment::of(shards.iter().copied()),
        }
    }
}

/// Why a flush run failed.
#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    /// The event's shards are not an assignment: none, or one that does not exist
    /// (nothing was read or written).
    #[error("the flush event's shards: {0}")]
    Assignment(#[from] AssignmentError),
    /// A backend failed in a way that may pass; the next run repeats the page.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

pub struct Flush {
    pub ports: Ports,
    /// Which windows are closed.
    pub windows: Arc<dyn FlushWindows>,
    pub settings: FlushSettings,
    /// The delivery handler the flush makes the first attempts of small pages with
    /// ([`FlushSettings::first_attempts_up_to`]); `None` queues every job.
    pub delivery: Option<Delivery>,
}

impl Flush {
    /// Handles the scheduled event: flushes whatever windows have closed, in the shards
    /// the event assigns (every shard when it names none: the default schedule's plain
    /// EventBridge event). An assignment that names no shard or one that does not exist
    /// fails the run with [`FlushError::Assignment`] before anything is read.
    pub async fn handle(
        &self,
        event: FlushEvent,
        deadline: Option<Instant>,
    ) -> Result<FlushReport, FlushError> {
        let assignment = event.assignment()?;
        tracing::debug!(event_id = event.id.as_deref(), shards = ?assignment.key(), "scheduled flush");
        Ok(self.run_assignment(&assignment, deadline).await?)
    }

    /// Flushes every shard ([`Self::run_assignment`] of [`FlushAssignment::all`]).
    pub async fn run(&self, deadline: Option<Instant>) -> Result<FlushReport, BackendError> {
        self.run_assignment(&FlushAssignment::all(), deadline).await
    }

    /// Takes the lease of the flush of `assignment`'s shards (one at a time, without
    /// reserved Lambda concurrency), flushes them, and gives the lease back. A run that
    /// finds the lease held returns at once with [`FlushReport::lease_held`]; a run that
    /// crashes leaves its lease to expire [`FlushSettings::lease_margin`] after its
    /// deadline, and the next run after that proceeds.
    pub async fn run_assignment(
        &self,
        assignment: &FlushAssignment,
        deadline: Option<Instant>,
    ) -> Result<FlushReport, BackendError> {
        let now = self.ports.clock.now();
        let hold = deadline.map_or(LEASE_WITHOUT_DEADLINE, |d| {
            d.saturating_duration_since(Instant::now())
        }) + self.settings.lease_margin;
        let lease = Lease {
            holder: LeaseHolder::new(uuid::Uuid::new_v4().simple().to_string()),
            until: now.plus(hold),
        };
        if !self
            .ports
            .pending
            .lease_flush(assignment, &lease, now)
            .await?
        {
            tracing::info!(shards = ?assignment.key(), "another flush of these shards holds the lease; this one ends");
            return Ok(FlushReport {
                lease_held: true,
                ..FlushReport::default()
            });
        }
        let result = self.flush_windows(assignment, deadline).await;
        if let Err(e) = self
            .ports
            .pending
            .release_flush(assignment, &lease.holder)
            .await
        {
            tracing::warn!(error = %e, "could not release the flush lease; it expires by itself");
        }
        if let Ok(report) = &result {
            self.publish_metrics(report);
        }
        result
    }

    /// The metrics of a run, with `FlushLagSeconds`: how long (in whole windows) the
    /// oldest closed window it left unflushed has been waiting, so an alarm can tell a
    /// stalled flush from one that caught up.
    pub fn metrics_of(&self, report: &FlushReport) -> FlushMetrics {
        FlushMetrics {
            windows: report.windows,
            records: report.records,
            jobs: report.jobs,
            first_attempts: report.first_attempts,
            set_aside: report.set_aside,
            lag_seconds: report
                .behind_windows
                .saturating_mul(self.settings.window_length.as_secs()),
        }
    }

    /// Prints the run's EMF line.
    fn publish_metrics(&self, report: &FlushReport) {
        let metrics = self.metrics_of(report);
        let now_ms = self.ports.clock.now().epoch_ms();
        let line = metrics.emf(now_ms).to_string();
        if self.settings.metrics {
            println!("{line}");
        } else {
            tracing::debug!(emf = %line, "flush metrics");
        }
    }

    /// Flushes every closed window after the cursor, one worker per shard of a window at a
    /// time, saving progress after each page so a crash or timeout repeats at most one page
    /// per shard (duplicates, never losses). Stops early, with progress saved, when
    /// `deadline` comes near.
    async fn flush_windows(
        &self,
        assignment: &FlushAssignment,
        deadline: Option<Instant>,
    ) -> Result<FlushReport, BackendError> {
        let mut report = FlushReport::default();
        let Some(through) = self.windows.closed_through() else {
            return Ok(report);
        };
        let mut cursor = self.start_cursor(assignment, through).await?;
        let members = self.members_exist().await?;
        while cursor.window <= through {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                report.partial = true;
                break;
            }
            if !self
                .flush_window(assignment, &mut cursor, members, deadline, &mut report)
                .await?
            {
                report.partial = true;
                break;
            }
            report.windows += 1;
            cursor = cursor.next_window();
            self.save_cursor(assignment, &cursor).await?;
        }
        // The cursor's window and every closed one after it are still to be flushed.
        report.behind_windows = (through.0 + 1).saturating_sub(cursor.window.0);
        tracing::info!(?report, next_window = cursor.window.0, "flush done");
        Ok(report)
    }

    /// Flushes the cursor's window: one worker per shard not done yet, all at once, each
    /// from where the cursor says it stopped, then the first attempts of the shards' last
    /// pages that wait for them, as one batch. True when every shard is done (the caller
    /// moves the cursor on); otherwise the shards' progress is saved in the cursor. A
    /// worker that fails leaves the others to finish their shards, and the run fails after.
    async fn flush_window(
        &self,
        assignment: &FlushAssignment,
        cursor: &mut FlushCursor,
        members: bool,
        deadline: Option<Instant>,
        report: &mut FlushReport,
    ) -> Result<bool, BackendError> {
        let window = cursor.window;
        let shared = tokio::sync::Mutex::new(WindowProgress {
            cursor: cursor.clone(),
            report: FlushReport::default(),
            last_pages: Vec::new(),
        });
        let workers: Vec<_> = assignment
            .shards()
            .map(|shard| cursor.shard(shard))
            .filter(|position| !position.done)
            .map(|position| {
                self.shard_worker(assignment, window, position, members, deadline, &shared)
            })
            .collect();
        let results = futures::future::join_all(workers).await;
        let WindowProgress {
            cursor: mut progressed,
            report: done_by_workers,
            last_pages,
        } = shared.into_inner();
        report.add_pages(&done_by_workers);
        let handed = self
            .hand_over_last_pages(last_pages, &mut progressed, deadline, report)
            .await;
        let moved = progressed != *cursor;
        *cursor = progressed;
        let complete = assignment.shards().all(|shard| cursor.shard(shard).done);
        let failure = results.into_iter().find_map(Result::err).or(handed.err());
        // A shard that finished is saved done once the window stays incomplete (a window
        // done moves the cursor on instead: one write per window when each shard is one
        // page).
        let saved = if moved && (failure.is_some() || !complete) {
            self.save_cursor(assignment, cursor).await
        } else {
            Ok(())
        };
        match (failure, saved) {
            (Some(e), Err(unsaved)) => {
                tracing::warn!(error = %unsaved, "the shards' progress was not saved; their last pages come again");
                Err(e)
            }
            (Some(e), Ok(())) | (None, Err(e)) => Err(e),
            (None, Ok(())) => Ok(complete),
        }
    }

    /// One shard's worker: flushes its pages from `position` until the shard ends or the
    /// deadline comes, recording its progress in the shared cursor, which it saves after
    /// every page that the shard continues from. Each record is notified once per run of
    /// the worker (the de-duplication set holds one shard's records).
    async fn shard_worker(
        &self,
        assignment: &FlushAssignment,
        window: WindowId,
        mut position: ShardPosition,
        members: bool,
        deadline: Option<Instant>,
        shared: &tokio::sync::Mutex<WindowProgress>,
    ) -> Result<(), BackendError> {
        let mut flushed = FlushedRecords::default();
        // The invocation's look-ups are shared by the shards it flushes at once.
        let lookups = (self.settings.lookup_concurrency / assignment.shards().count()).max(1);
        loop {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(());
            }
            let (after, page_report) = self
                .flush_page(window, &position, members, lookups, deadline, &mut flushed)
                .await?;
            let mut progress = shared.lock().await;
            progress.report.add_pages(&page_report);
            let next = match after {
                AfterPage::Handed(next) => next,
                AfterPage::Waiting(plan) => {
                    // Done only once the window's batch has handed these jobs over.
                    progress.last_pages.push((position, plan));
                    return Ok(());
                }
            };
            match next {
                Some(after) => {
                    position.after = Some(after);
                    progress.cursor.set_shard(position.clone());
                    // Held while saving: saves land in order, the latest state last.
                    self.save_cursor(assignment, &progress.cursor).await?;
                }
                None => {
                    position.after = None;
                    position.done = true;
                    progress.cursor.set_shard(position);
                    return Ok(());
                }
            }
        }
    }

    /// Where this run starts: the saved cursor (or, on the first run, a lookback from the
    /// newest closed window), moved past windows whose pending entries have expired.
    async fn start_cursor(
        &self,
        assignment: &FlushAssignment,
        through: WindowId,
    ) -> Result<FlushCursor, BackendError> {
        let oldest = WindowId(through.0.saturating_sub(self.settings.max_lag));
        let first = WindowId(through.0.saturating_sub(self.settings.first_run_lookback));
        let saved = self.ports.pending.cursors().await?;
        let cursor = FlushCursor::resume(assignment, &saved, first);
        if cursor.window >= oldest {
            return Ok(cursor);
        }
        tracing::warn!(
            from = cursor.window.0,
            to = oldest.0,
            "flush fell behind past the pending-entry lifetime; skipping expired windows"
        );
        Ok(cursor.skip_to(oldest))
    }

    /// Saves the cursor of `assignment`'s flush, stamped with the time it is saved (the
    /// newest cursor covering a shard says where it stands, [`FlushCursor::resume`]).
    async fn save_cursor(
        &self,
        assignment: &FlushAssignment,
        cursor: &FlushCursor,
    ) -> Result<(), BackendError> {
        let stamped = FlushCursor {
            saved_at: Some(self.ports.clock.now()),
            ..cursor.clone()
        };
        self.ports.pending.save_cursor(assignment, &stamped).await
    }

    /// Whether Members-style fan-out needs each person's consents: with no application at
    /// all, the person reads are skipped (one query per run instead of one read per
    /// record).
    async fn members_exist(&self) -> Result<bool, BackendError> {
        match self.ports.applications.list_applications().await {
            Ok(applications) => Ok(!applications.is_empty()),
            // Some application item does not decode: read the persons all the same (each
            // application is read, and set aside if corrupt, per person below).
            Err(BackendError::Corrupt(e)) => {
                tracing::error!(error = %e, "an application item is corrupt");
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }

    /// Flushes one page of a shard of `window` from `position`, `lookups` records' targets
    /// read at once; returns where the shard's next page starts (`None`: the shard is
    /// done) and what the page did. The last page of a shard whose jobs the flush attempts
    /// itself is returned unsent instead: the window's last pages are attempted as one
    /// batch ([`Self::hand_over_last_pages`]).
    async fn flush_page(
        &self,
        window: WindowId,
        position: &ShardPosition,
        members: bool,
        lookups: usize,
        deadline: Option<Instant>,
        flushed: &mut FlushedRecords,
    ) -> Result<(AfterPage, FlushReport), BackendError> {
        let mut report = FlushReport::default();
        let page = self
            .ports
            .pending
            .shard_page(
                window,
                position.shard,
                position.after.as_deref(),
                self.settings.page_size,
            )
            .await?;
        let records = flushed.fresh(page.items);
        let plan = self.plan(window, &records, members, lookups).await?;
        report.records += records.len() as u64;
        let attempt = self.attempts_first(&plan);
        if attempt && page.next.is_none() {
            return Ok((AfterPage::Waiting(plan), report));
        }
        self.hand_over(plan, attempt, deadline, &mut report).await?;
        Ok((AfterPage::Handed(page.next), report))
    }

    /// Hands the last pages of the window's shards that waited for it over as one batch
    /// (one attempt-log group per owner, one metric line, the requests all at once), then
    /// marks their shards done in `cursor`. When it fails the shards stay where they were,
    /// and the next run repeats those pages (attempts included: at least once).
    async fn hand_over_last_pages(
        &self,
        last_pages: Vec<(ShardPosition, PagePlan)>,
        cursor: &mut FlushCursor,
        deadline: Option<Instant>,
        report: &mut FlushReport,
    ) -> Result<(), BackendError> {
        let (positions, plans): (Vec<_>, Vec<_>) = last_pages.into_iter().unzip();
        let Some(plan) = PagePlan::merged(plans) else {
            return Ok(());
        };
        let mut handed = FlushReport::default();
        self.hand_over(plan, true, deadline, &mut handed).await?;
        report.add_pages(&handed);
        for mut position in positions {
            position.after = None;
            position.done = true;
            cursor.set_shard(position);
        }
        Ok(())
    }

    /// Sends `plan`'s jobs on: their first attempts made here when `attempt` says so and
    /// the run has time for them ([`Self::first_attempts_by`]), then what is left enqueued,
    /// and every change that cannot be queued as it is set aside.
    async fn hand_over(
        &self,
        mut plan: PagePlan,
        attempt: bool,
        deadline: Option<Instant>,
        report: &mut FlushReport,
    ) -> Result<(), BackendError> {
        let made = plan.jobs.len();
        if let Some(delivery) = self.first_attempts_by(attempt, deadline) {
            let until = deadline.unwrap_or_else(|| Instant::now() + LEASE_WITHOUT_DEADLINE);
            delivery.remember_subscriptions(std::mem::take(&mut plan.subscriptions));
            let left = delivery.first_attempts(plan.jobs.clone(), until).await;
            report.first_attempts += (made - left.len()) as u64;
            plan.keep_jobs(&left);
        }
        let window = plan.window;
        // Most shards of a quiet window are empty: no call for them.
        let enqueued = if plan.jobs.is_empty() {
            crate::ports::Enqueued::default()
        } else {
            self.ports.queue.enqueue(&plan.jobs).await?
        };
        report.jobs += (made - enqueued.refused.len()) as u64;
        for refused in enqueued.refused {
            plan.set_aside.push(PoisonItem::refused(
                &plan.records[refused.index],
                &plan.jobs[refused.index],
                window,
                refused.refusal,
                plan.created_at,
            ));
        }
        // Before the cursor moves past them: a crash here repeats the page, and the
        // same poison item is written again under the same id.
        for item in &plan.set_aside {
            self.ports.pending.set_aside(item).await?;
            tracing::error!(poison = %item.id(), record = %item.record, endpoint = item.endpoint.as_deref().unwrap_or("all"), reason = %item.reason(), "change set aside");
            announce(self.ports.events.as_ref(), item.event()).await;
        }
        report.set_aside += plan.set_aside.len() as u64;
        Ok(())
    }

    /// Whether the flush makes the first attempts of `plan`'s jobs itself: it can (it has
    /// a delivery handler) and the page is small ([`FlushSettings::first_attempts_up_to`]).
    fn attempts_first(&self, plan: &PagePlan) -> bool {
        let jobs = plan.jobs.len();
        self.delivery.is_some() && jobs > 0 && jobs <= self.settings.first_attempts_up_to
    }

    /// The delivery handler to make first attempts with, when `attempt` and the run has
    /// time for the attempts' whole timeout before its deadline (a page attempted in part
    /// would be repeated).
    fn first_attempts_by(&self, attempt: bool, deadline: Option<Instant>) -> Option<&Delivery> {
        let delivery = self.delivery.as_ref().filter(|_| attempt)?;
        let in_time = deadline.is_none_or(|d| {
            d.saturating_duration_since(Instant::now())
                > delivery.http.timeout() + AFTER_FIRST_ATTEMPTS
        });
        in_time.then_some(delivery)
    }

    /// One job per (record, subscription) and per (person, consented application with a
    /// webhook); a record or application whose stored item does not decode is set aside
    /// instead. Applications are read once per flush run.
    async fn plan(
        &self,
        window: WindowId,
        records: &[RecordId],
        members: bool,
        lookups: usize,
    ) -> Result<PagePlan, BackendError> {
        // Futures collected first: a closure inside the stream would make this future
        // lose `Send` through higher-ranked lifetimes.
        let reads: Vec<_> = records
            .iter()
            .map(|record| self.targets_of(record, members))
            .collect();
        let per_record: Vec<_> = futures::stream::iter(reads)
            .buffered(lookups)
            .collect()
            .await;
        let mut applications = HashMap::new();
        let mut plan = PagePlan::new(window, self.ports.clock.now());
        for (record, targets) in records.iter().zip(per_record) {
            let (subscriptions, person) = match targets {
                Ok(targets) => targets,
                Err(BackendError::Corrupt(detail)) => {
                    plan.set_aside_corrupt(record, None, detail);
                    continue;
                }
                Err(e) => return Err(e),
            };
            for subscription in subscriptions
                .into_iter()
                .filter(|s| !s.health.is_disabled())
            {
                let job = DeliveryJob::for_subscription(&subscription, window, plan.created_at);
                plan.push(record, job);
                plan.subscriptions.push(subscription);
            }
            if let Some(person) = person {
                self.plan_consents(&mut plan, record, &person, &mut applications)
                    .await?;
            }
        }
        Ok(plan)
    }

    /// A job for each application the person consents to that has a webhook and is
    /// enabled; an application whose item does not decode sets the change aside for it.
    async fn plan_consents(
        &self,
        plan: &mut PagePlan,
        record: &RecordId,
        person: &Person,
        applications: &mut ApplicationsRead,
    ) -> Result<(), BackendError> {
        for (app_id, scopes) in consents(person) {
            match self.application_once(applications, &app_id).await? {
                Ok(app) => {
                    if app
                        .as_ref()
                        .is_some_and(|a| a.webhook.url.is_some() && !a.health.is_disabled())
                    {
                        let scoped = scoped_person(record, person, &scopes);
                        let created_at = plan.created_at;
                        let job = DeliveryJob::for_application(
                            &app_id,
                            record,
                            scoped,
                            plan.window,
                            created_at,
                        );
                        plan.push(record, job);
                    }
                }
                Err(detail) => {
                    plan.set_aside_corrupt(record, Some(endpoint_name(&app_id)), detail.clone())
                }
            }
        }
        Ok(())
    }

    /// The application `id`, read once per run (a corrupt item as its error's text).
    async fn application_once<'a>(
        &self,
        applications: &'a mut ApplicationsRead,
        id: &ApplicationId,
    ) -> Result<&'a Result<Option<Application>, String>, BackendError> {
        if !applications.contains_key(id) {
            let app = match self.ports.applications.get_application(id).await {
                Ok(app) => Ok(app),
                Err(BackendError::Corrupt(detail)) => Err(detail),
                Err(e) => return Err(e),
            };
            applications.insert(id.clone(), app);
        }
        Ok(&applications[id])
    }

    /// The subscriptions of a record and the person (for its consents).
    /// A record's subscriptions and, while applications exist, its person; read on a task
    /// of its own ([`on_own_task`]), so a flush with several vCPUs decodes on all of them.
    async fn targets_of(
        &self,
        record: &RecordId,
        members: bool,
    ) -> Result<(Vec<Subscription>, Option<Person>), BackendError> {
        let (subscriptions, records) =
            (self.ports.subscriptions.clone(), self.ports.records.clone());
        let record = record.clone();
        on_own_task(async move {
            let subscriptions = subscriptions.subscriptions_of(&record).await?;
            // The person is read only for its consents: not at all while no application
            // exists.
            let person = if members {
                records.get_person(&record).await?
            } else {
                None
            };
            Ok((subscriptions, person))
        })
        .await
    }
}

/// The records of a shard its worker has flushed in this run. A store that keeps each
/// stream batch's records as written (DynamoDB) can page a record again when several
/// batches of the window marked it; it is notified once. A worker that resumes a shard
/// from a saved position does not know the records of the pages before it: a record of
/// those may be notified again (at least once, as after any crash). One shard's records,
/// not the window's: the set is bounded by the shard's size.
#[derive(Default)]
struct FlushedRecords(HashSet<RecordId>);

impl FlushedRecords {
    /// The records of a page not flushed yet by this worker.
    fn fresh(&mut self, page: Vec<RecordId>) -> Vec<RecordId> {
        page.into_iter()
            .filter(|record| self.0.insert(record.clone()))
            .collect()
    }
}

/// What a window's shard workers share: the cursor with their progress, what they did, and
/// the last pages whose first attempts wait for the window's batch (their shards not
/// marked done yet).
struct WindowProgress {
    cursor: FlushCursor,
    report: FlushReport,
    last_pages: Vec<(ShardPosition, PagePlan)>,
}

/// What becomes of a shard after one of its pages.
enum AfterPage {
    /// The page's jobs are handed over; the shard goes on from this position (`None`: it
    /// ends).
    Handed(Option<String>),
    /// The shard's last page, unsent: its first attempts wait for the window's batch.
    Waiting(PagePlan),
}

/// The applications a flush run has read, by id (a corrupt item as its error's text).
type ApplicationsRead = HashMap<ApplicationId, Result<Option<Application>, String>>;

/// What one page of pending records turns into.
struct PagePlan {
    /// The window of the page.
    window: WindowId,
    /// The jobs to enqueue.
    jobs: Vec<DeliveryJob>,
    /// The record of each job, by position.
    records: Vec<RecordId>,
    /// The subscriptions the ORCID-style jobs were made from, just read: the delivery
    /// making their first attempts takes them instead of reading each again.
    subscriptions: Vec<Subscription>,
    /// Changes that cannot be queued as they are.
    set_aside: Vec<PoisonItem>,
    /// When the jobs were made.
    created_at: Timestamp,
}

impl PagePlan {
    fn new(window: WindowId, created_at: Timestamp) -> Self {
        Self {
            window,
            jobs: Vec::new(),
            records: Vec::new(),
            subscriptions: Vec::new(),
            set_aside: Vec::new(),
            created_at,
        }
    }

    /// Sets the record's change aside (for `endpoint`, or for all of them) because a stored
    /// item does not decode.
    fn set_aside_corrupt(&mut self, record: &RecordId, endpoint: Option<String>, detail: String) {
        let item = PoisonItem::corrupt(record, self.window, endpoint, detail, self.created_at);
        self.set_aside.push(item);
    }

    fn push(&mut self, record: &RecordId, job: DeliveryJob) {
        self.records.push(record.clone());
        self.jobs.push(job);
    }

    /// The plans of one window's pages as one (`None`: no plan).
    fn merged(plans: Vec<PagePlan>) -> Option<Self> {
        let mut plans = plans.into_iter();
        let mut merged = plans.next()?;
        for plan in plans {
            merged.jobs.extend(plan.jobs);
            merged.records.extend(plan.records);
            merged.subscriptions.extend(plan.subscriptions);
            merged.set_aside.extend(plan.set_aside);
        }
        Some(merged)
    }

    /// Keeps only the jobs `ids` names (and their records), in order.
    fn keep_jobs(&mut self, ids: &[String]) {
        let (records, jobs) = std::mem::take(&mut self.records)
            .into_iter()
            .zip(std::mem::take(&mut self.jobs))
            .filter(|(_, job)| ids.iter().any(|id| id == job.id.as_str()))
            .unzip();
        self.records = records;
        self.jobs = jobs;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callback::{CallbackUrl, UrlPolicy};
    use crate::memory::LoggedEvents;
    use crate::memory::{MemoryQueue, MemoryRecords, MemoryStore};
    use crate::ports::DeliveryQueue;
    use crate::testing::ManualClock;
    use crate::window::{ManualWindows, Shard};
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
        async fn enqueue(
            &self,
            jobs: &[DeliveryJob],
        ) -> crate::ports::BackendResult<crate::ports::Enqueued> {
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
        async fn park(&self, job: &DeliveryJob) -> crate::ports::BackendResult<()> {
            self.inner.park(job).await
        }
    }

    struct Setup {
        flush: Arc<Flush>,
        queue: Arc<GatedQueue>,
        memory_queue: Arc<MemoryQueue>,
        clock: Arc<ManualClock>,
        windows: Arc<ManualWindows>,
    }

    /// Three records changed in a closed window, each with one subscription.
    async fn setup() -> Setup {
        setup_with(&["r1", "r2", "r3"], FlushSettings::default()).await
    }

    /// These records changed in a closed window, each with one subscription.
    async fn setup_with(records: &[&str], settings: FlushSettings) -> Setup {
        let clock = Arc::new(ManualClock::new(time::OffsetDateTime::now_utc()));
        let store = Arc::new(MemoryStore::default());
        let memory_queue = Arc::new(MemoryQueue::new(Duration::from_secs(60), 5));
        let queue = Arc::new(GatedQueue {
            inner: memory_queue.clone(),
            entered: Semaphore::new(0),
            gate: Semaphore::new(0),
        });
        let mut ports = crate::ports::Ports::over(
            store.clone(),
            Arc::new(MemoryRecords::default()),
            memory_queue.clone(),
            Arc::new(LoggedEvents::default()),
            clock.clone(),
        );
        ports.queue = queue.clone();
        let windows = Arc::new(ManualWindows::default());
        for r in records {
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
                    client_id: "c".parse().unwrap(),
                    created_at: crate::clock::Timestamp::UNIX_EPOCH,
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
                delivery: None,
                ports,
                windows: windows.clone(),
                settings,
            }),
            queue,
            memory_queue,
            clock,
            windows,
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
    async fn a_run_stopped_by_its_deadline_reports_its_lag() {
        let s = setup().await;
        // Out of time before the first page: the first run looks back over two closed
        // windows (0 and 1) and flushes neither.
        let stopped = s.flush.run(Some(Instant::now())).await.unwrap();
        assert!(stopped.partial, "{stopped:?}");
        assert_eq!(stopped.behind_windows, 2, "{stopped:?}");
        assert_eq!(s.flush.metrics_of(&stopped).lag_seconds, 600);
        s.queue.gate.add_permits(100);
        let caught_up = s.flush.run(None).await.unwrap();
        assert_eq!((caught_up.jobs, caught_up.behind_windows), (3, 0));
        assert_eq!(s.flush.metrics_of(&caught_up).lag_seconds, 0);
    }

    /// The records of the jobs on the queue, with how often each was queued.
    async fn queued_records(queue: &MemoryQueue) -> HashMap<String, usize> {
        let mut seen = HashMap::new();
        loop {
            let batch = queue.receive(10, Duration::ZERO).await;
            if batch.is_empty() {
                return seen;
            }
            for message in batch {
                let job = crate::message::decode(&message.body).unwrap();
                if let crate::job::Target::Callback { record, .. } = &job.target {
                    *seen.entry(record.to_string()).or_default() += 1;
                }
            }
        }
    }

    #[tokio::test]
    async fn a_killed_shard_worker_is_resumed_from_its_last_page_by_the_next_run() {
        killed_and_resumed(&FlushAssignment::all()).await;
    }

    #[tokio::test]
    async fn a_killed_flush_of_some_shards_is_resumed_by_the_next_run_of_those() {
        killed_and_resumed(&FlushAssignment::of([0, 2, 4, 6]).unwrap()).await;
    }

    /// Forty records in `assignment`'s shards; a flush of them killed mid-way; the next
    /// run resumes each shard after its last saved page.
    async fn killed_and_resumed(assignment: &FlushAssignment) {
        let in_assignment = |n: &String| {
            let shard = Shard::of(&RecordId::parse(n).unwrap());
            assignment.shards().any(|s| s == shard)
        };
        let names: Vec<String> = (0..1_000)
            .map(|n| format!("r{n:03}"))
            .filter(in_assignment)
            .take(40)
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let settings = FlushSettings {
            page_size: 2,
            ..FlushSettings::default()
        };
        let s = setup_with(&names, settings).await;
        let shards: HashSet<Shard> = names
            .iter()
            .map(|n| Shard::of(&RecordId::parse(n).unwrap()))
            .collect();
        assert_eq!(
            shards.len(),
            assignment.shards().count(),
            "the records span the shards: {shards:?}"
        );
        // Twelve pages get through; then every worker is stuck in its enqueue and the run
        // is killed there (a Lambda timeout or crash: nothing after it runs).
        s.queue.gate.add_permits(12);
        let deadline = Instant::now() + Duration::from_secs(30);
        let run = tokio::spawn({
            let flush = s.flush.clone();
            let assignment = assignment.clone();
            async move { flush.run_assignment(&assignment, Some(deadline)).await }
        });
        // Killed once the twelve went through and a worker waits at the thirteenth (an
        // observable point, not a timer).
        for _ in 0..1_000 {
            if s.queue.entered.available_permits() > 12 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            s.queue.entered.available_permits() > 12,
            "a worker is stuck"
        );
        run.abort();
        assert!(
            run.await.is_err_and(|e| e.is_cancelled()),
            "the run was killed"
        );
        let saved = crate::testing::flush_cursor_of(s.flush.ports.pending.as_ref(), assignment)
            .await
            .unwrap();
        assert_eq!(
            saved.window,
            WindowId(1),
            "the window is not done: {saved:?}"
        );
        let resumed: Vec<&ShardPosition> =
            saved.shards.iter().filter(|p| p.after.is_some()).collect();
        assert!(!resumed.is_empty(), "shards saved mid-way: {saved:?}");
        let first = queued_records(&s.memory_queue).await;
        let first_jobs = first.values().sum::<usize>();
        assert!(
            (12..=24).contains(&first_jobs),
            "twelve pages of one or two: {first:?}"
        );

        // After the dead run's lease, the next run resumes each shard where it stopped.
        s.queue.gate.add_permits(1_000);
        s.clock
            .advance(Duration::from_secs(30) + settings.lease_margin + Duration::from_secs(1));
        let next = s.flush.run_assignment(assignment, None).await.unwrap();
        assert_eq!((next.windows, next.lease_held), (1, false), "{next:?}");
        let second = queued_records(&s.memory_queue).await;
        let mut all = first.clone();
        for (record, n) in &second {
            *all.entry(record.clone()).or_default() += n;
        }
        assert_eq!(all.len(), 40, "no record skipped");
        // At least once: a shard's page enqueued and not saved before the kill comes again
        // (a shard that had finished is saved done only with the window), at most one page
        // (two records) per shard; a shard saved mid-way is resumed after its position.
        let mut doubled: HashMap<Shard, usize> = HashMap::new();
        for (record, n) in &all {
            assert!(*n <= 2, "{record} queued {n} times");
            if *n == 2 {
                *doubled
                    .entry(Shard::of(&RecordId::parse(record).unwrap()))
                    .or_default() += 1;
            }
        }
        assert!(doubled.values().all(|n| *n <= 2), "{doubled:?}");
        for position in resumed {
            let after = position.after.as_deref().unwrap();
            for (record, n) in &all {
                let in_shard = Shard::of(&RecordId::parse(record).unwrap()) == position.shard;
                if in_shard && record.as_str() <= after {
                    assert_eq!(*n, 1, "{record} was saved flushed: not sent again");
                }
            }
        }
        let doubled_jobs: usize = doubled.values().sum();
        assert_eq!(
            next.jobs as usize,
            40 - first_jobs + doubled_jobs,
            "{next:?}"
        );
        assert_eq!(
            crate::testing::flush_cursor_of(s.flush.ports.pending.as_ref(), assignment).await,
            Some(FlushCursor::start_of(WindowId(2))),
            "every shard done: the cursor moved on"
        );
    }

    /// The template's `FlushWorkers`: the schedule starts a flush per part of the shards
    /// at once. Each flushes its shards, both together every record once; and when the
    /// parts are joined again (or split otherwise), each shard goes on from the newest
    /// cursor covering it, so nothing is notified again.
    #[tokio::test]
    async fn flushes_of_parts_of_the_shards_notify_each_record_once_and_join_again() {
        let names: Vec<String> = (0..40).map(|n| format!("r{n:02}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let s = setup_with(&names, FlushSettings::default()).await;
        s.queue.gate.add_permits(1_000);
        let low = FlushAssignment::of(0..4).unwrap();
        let high = FlushAssignment::of(4..8).unwrap();
        let (a, b) = tokio::join!(
            s.flush.run_assignment(&low, None),
            s.flush.run_assignment(&high, None)
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!((a.lease_held, b.lease_held), (false, false), "a lease each");
        assert_eq!((a.windows, a.jobs + b.jobs), (b.windows, 40), "{a:?} {b:?}");
        assert!(a.jobs > 0 && b.jobs > 0, "{a:?} {b:?}");
        let first = queued_records(&s.memory_queue).await;
        assert_eq!(first.len(), 40, "every record");
        assert!(first.values().all(|n| *n == 1), "once: {first:?}");
        // The next window, flushed by the whole flush again and then by other parts.
        for (n, split) in [(2, None), (3, Some([0, 1, 2, 3, 4, 5])), (4, None)] {
            for name in &names {
                let record = RecordId::parse(name).unwrap();
                s.flush
                    .ports
                    .pending
                    .mark(s.windows.current(), &record)
                    .await
                    .unwrap();
            }
            s.windows.close_current();
            let report = match split {
                None => s.flush.run(None).await.unwrap(),
                Some(shards) => {
                    let part = FlushAssignment::of(shards).unwrap();
                    let rest = FlushAssignment::of([6, 7]).unwrap();
                    let (a, b) = tokio::join!(
                        s.flush.run_assignment(&part, None),
                        s.flush.run_assignment(&rest, None)
                    );
                    let (a, b) = (a.unwrap(), b.unwrap());
                    FlushReport {
                        jobs: a.jobs + b.jobs,
                        windows: a.windows.min(b.windows),
                        ..a
                    }
                }
            };
            assert_eq!(
                report.jobs, 40,
                "window {n}: only its own records: {report:?}"
            );
            let queued = queued_records(&s.memory_queue).await;
            assert_eq!(queued.len(), 40, "window {n}");
            assert!(queued.values().all(|k| *k == 1), "window {n}: {queued:?}");
        }
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

#[cfg(test)]
mod poison_tests {
    use super::*;
    use crate::application::Application;
    use crate::clock::SystemClock;
    use crate::events::OpsEvent;
    use crate::memory::LoggedEvents;
    use crate::memory::{MemoryQueue, MemoryRecords, MemoryStore};
    use crate::message::{self, MAX_MESSAGE_BYTES};
    use crate::poison::PoisonCause;
    use crate::ports::{ApplicationStore, PendingChanges};
    use crate::testing::faults::{Faults, PermanentFaults};
    use crate::window::ManualWindows;
    use std::time::Duration;

    struct World {
        store: Arc<MemoryStore>,
        records: Arc<MemoryRecords>,
        queue: Arc<MemoryQueue>,
        events: Arc<LoggedEvents>,
        windows: Arc<ManualWindows>,
    }

    impl World {
        async fn new() -> Self {
            let world = Self {
                store: Arc::new(MemoryStore::default()),
                records: Arc::new(MemoryRecords::default()),
                queue: Arc::new(MemoryQueue::new(Duration::from_secs(30), 5)),
                events: Arc::new(LoggedEvents::default()),
                windows: Arc::new(ManualWindows::default()),
            };
            let mut app = Application::new(
                &"app-1".parse().unwrap(),
                "key",
                crate::clock::Timestamp::UNIX_EPOCH,
            );
            app.webhook.url = Some("https://example.org/hook".into());
            world.store.put_application(&app).await.unwrap();
            world
        }

        fn ports(&self) -> Ports {
            Ports::over(
                self.store.clone(),
                self.records.clone(),
                self.queue.clone(),
                self.events.clone(),
                Arc::new(SystemClock),
            )
        }

        fn flush(&self, ports: Ports) -> Flush {
            Flush {
                delivery: None,
                ports,
                windows: self.windows.clone(),
                settings: FlushSettings {
                    page_size: 2,
                    ..FlushSettings::default()
                },
            }
        }

        /// A person consenting to app-1's name scope, changed in the current window.
        async fn change(&self, id: &str, first_name: &str) {
            let record = RecordId::parse(id).unwrap();
            let person = serde_json::json!({
                "firstName": first_name,
                "consents": {"app-1": ["members.read_name"]},
            });
            self.records
                .put_person(&record, person.as_object().unwrap().clone());
            self.store
                .mark(self.windows.current(), &record)
                .await
                .unwrap();
        }

        async fn queued(&self) -> Vec<DeliveryJob> {
            self.queue
                .receive(100, Duration::ZERO)
                .await
                .iter()
                .map(|m| message::decode(&m.body).unwrap())
                .collect()
        }
    }

    fn person_of(job: &DeliveryJob) -> (String, String) {
        match &job.target {
            crate::job::Target::Application { record, person, .. } => (
                record.to_string(),
                person.to_map()["firstName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            ),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_person_with_characters_sqs_refuses_is_queued_escaped() {
        let w = World::new().await;
        w.change("p1", "Zoë\u{FFFF}\u{FFFE}").await;
        w.windows.close_current();
        let report = w.flush(w.ports()).run(None).await.unwrap();
        assert_eq!((report.jobs, report.set_aside), (1, 0), "{report:?}");
        let jobs = w.queued().await;
        assert_eq!(person_of(&jobs[0]).1, "Zoë\u{FFFF}\u{FFFE}");
    }

    #[tokio::test]
    async fn an_oversize_job_is_set_aside_and_later_windows_are_flushed() {
        let w = World::new().await;
        w.change("p1", "Ann").await;
        w.change("p2", &"x".repeat(MAX_MESSAGE_BYTES)).await;
        w.change("p3", "Cy").await;
        w.windows.close_current();
        w.change("p4", "Di").await;
        w.windows.close_current();
        let flush = w.flush(w.ports());
        let report = flush
            .run(None)
            .await
            .expect("a poison page does not fail the run");
        assert_eq!((report.jobs, report.set_aside), (3, 1), "{report:?}");
        assert_eq!(
            flush.metrics_of(&report).emf(0)["ChangesSetAside"],
            1,
            "the alarm's metric"
        );
        assert_eq!(
            crate::testing::whole_flush_cursor(w.store.as_ref())
                .await
                .map(|c| c.window),
            Some(WindowId(3)),
            "both windows flushed"
        );
        let mut people: Vec<String> = w.queued().await.iter().map(|j| person_of(j).0).collect();
        people.sort();
        assert_eq!(people, ["p1", "p3", "p4"]);

        let poison = w.store.poison_items().await.unwrap();
        assert_eq!(poison.len(), 1, "{poison:?}");
        assert_eq!(poison[0].record.as_str(), "p2");
        assert_eq!(poison[0].window, WindowId(1));
        assert_eq!(poison[0].endpoint.as_deref(), Some("application:app-1"));
        assert!(matches!(
            &poison[0].cause,
            PoisonCause::Refused {
                refusal: crate::message::Refusal::TooLarge { .. }
            }
        ));
        assert!(w.events.published().iter().any(|e| matches!(
            e,
            OpsEvent::ChangeSetAside { poison_id, .. } if *poison_id == poison[0].id()
        )));

        // The operator shortens the field and replays: the next flush delivers it.
        w.records.put_person(
            &RecordId::parse("p2").unwrap(),
            serde_json::json!({"firstName": "Bo", "consents": {"app-1": ["members.read_name"]}})
                .as_object()
                .unwrap()
                .clone(),
        );
        let replayed = crate::handlers::replay::replay_poison(
            w.store.as_ref(),
            &poison[0].id(),
            w.windows.current(),
        )
        .await
        .unwrap();
        assert_eq!(replayed.as_ref().map(|p| p.record.as_str()), Some("p2"));
        assert!(w.store.poison_items().await.unwrap().is_empty());
        w.windows.close_current();
        w.windows.close_current();
        flush.run(None).await.unwrap();
        let jobs = w.queued().await;
        assert_eq!(
            jobs.iter().map(person_of).collect::<Vec<_>>(),
            [("p2".to_owned(), "Bo".to_owned())]
        );
        assert_eq!(
            crate::handlers::replay::replay_poison(
                w.store.as_ref(),
                &poison[0].id(),
                w.windows.current()
            )
            .await
            .unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn a_refused_job_and_a_corrupt_record_are_set_aside() {
        let w = World::new().await;
        for id in ["p1", "p2", "p3", "p4"] {
            w.change(id, "Ann").await;
        }
        w.windows.close_current();
        let faults = Faults::seeded(1, 0.0, 0.0, 0.0).with_permanent(PermanentFaults {
            refuse_job: Some(Box::new(|job: &DeliveryJob| person_of(job).0 == "p1")),
            corrupt_record: Some(Box::new(|record: &RecordId| record.as_str() == "p3")),
        });
        let faults = Arc::new(faults);
        let mut ports = w.ports();
        ports.queue = Arc::new(w.queue.with_faults(faults.clone()));
        ports.records = Arc::new(w.records.with_faults(faults.clone()));
        let report = w.flush(ports).run(None).await.unwrap();
        assert_eq!((report.jobs, report.set_aside), (2, 2), "{report:?}");
        let poison = w.store.poison_items().await.unwrap();
        let summary: Vec<(&str, bool, Option<&str>)> = poison
            .iter()
            .map(|p| {
                (
                    p.record.as_str(),
                    matches!(p.cause, PoisonCause::Corrupt { .. }),
                    p.endpoint.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [("p1", false, Some("application:app-1")), ("p3", true, None)]
        );
        assert_eq!(
            crate::testing::whole_flush_cursor(w.store.as_ref())
                .await
                .map(|c| c.window),
            Some(WindowId(2)),
            "the cursor moved past the poison"
        );
    }

    #[tokio::test]
    async fn a_failure_that_may_pass_fails_the_run_and_loses_nothing() {
        let w = World::new().await;
        w.change("p1", "Ann").await;
        w.windows.close_current();
        let faults = Arc::new(Faults::seeded(1, 1.0, 0.0, 0.0));
        let mut ports = w.ports();
        ports.queue = Arc::new(w.queue.with_faults(faults.clone()));
        let flush = w.flush(ports);
        assert!(matches!(
            flush.run(None).await,
            Err(BackendError::Unavailable(_))
        ));
        // The empty window before it and p1's window's other shards are done; p1's shard
        // is not: nothing skipped.
        let saved = crate::testing::whole_flush_cursor(w.store.as_ref())
            .await
            .unwrap();
        let shard = crate::window::Shard::of(&RecordId::parse("p1").unwrap());
        assert_eq!(saved.window, WindowId(1), "{saved:?}");
        assert_eq!(saved.shard(shard).after, None, "{saved:?}");
        assert!(!saved.shard(shard).done, "nothing skipped: {saved:?}");
        assert!(w.store.poison_items().await.unwrap().is_empty());
        faults.heal();
        assert_eq!(flush.run(None).await.unwrap().jobs, 1);
        assert_eq!(w.queued().await.len(), 1);
    }
}
