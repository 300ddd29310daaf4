//! The `delivery` Lambda (SQS): POST each job to its subscriber; on a negative
//! acknowledgement hide the message for the retry delay (visibility timeout) and report
//! it as a batch item failure; after the last attempt let SQS move it to the DLQ.
//! Full-sync steps travel on the same queue and are run here too. A store or queue failure
//! is not a delivery attempt: the job is sent again carrying its attempt count (see
//! `backend_failure`).
//!
//! By concern: `plan` reads the batch and what each job asks for, `subscribers` looks
//! up (and caches) whom it goes to, `attempt` makes one request, `verdict` decides
//! what becomes of the message, `health` keeps each endpoint's health over the batch,
//! `sync` runs sync steps and counts fan-out outcomes, and `ledger` adds up what
//! the concurrent tasks report.

mod attempt;
mod health;
mod ledger;
mod plan;
mod subscribers;
mod sync;
mod verdict;

pub use subscribers::SUBSCRIBER_CACHE_TTL;
pub use verdict::{MAX_BACKEND_FAILURES, Verdict, decide};

use crate::health::HealthPolicy;
use crate::http_client::CallbackClient;
use crate::ports::{LogWrites, Ports, in_own_task};
use crate::retry::RetryPolicy;
use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use futures::StreamExt;
use ledger::{BatchLedger, LoggedReport, TaskReport};
use plan::{QueueMessage, Received, Source, Work};
use std::sync::Arc;
use std::time::Duration;
use subscribers::Subscribers;
use tokio::time::Instant;
use tracing::Instrument;

/// Settings of the delivery handler.
#[derive(Debug, Clone, Copy)]
pub struct DeliverySettings {
    /// The retry schedule (its `max_attempts` equals the queue's maxReceiveCount).
    pub retry: RetryPolicy,
    /// Concurrent requests within one batch.
    pub concurrency: usize,
    /// When failing endpoints are disabled.
    pub health: HealthPolicy,
    /// Print CloudWatch Embedded Metric Format lines (on Lambda).
    pub metrics: bool,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            // The SQS batch size: a whole batch in flight at once (see docs/benchmarks.md).
            concurrency: 100,
            health: HealthPolicy::default(),
            metrics: false,
        }
    }
}

/// Cloned once per batch (every field is shared or `Copy`), so that the batch's task owns
/// what it uses and runs on a runtime worker.
#[derive(Clone)]
pub struct Delivery {
    pub ports: Ports,
    /// The shared HTTP client.
    pub http: CallbackClient,
    pub settings: DeliverySettings,
    subscribers: Arc<Subscribers>,
    metric_lines: MetricLines,
}

/// Where the metric lines go: stdout on Lambda (CloudWatch Logs turns Embedded Metric
/// Format lines into metrics); the cost benchmark counts their bytes.
pub type MetricLines = Arc<dyn Fn(&str) + Send + Sync>;

impl Delivery {
    pub fn new(ports: Ports, http: CallbackClient, settings: DeliverySettings) -> Self {
        Self {
            ports,
            http,
            settings,
            subscribers: Arc::default(),
            metric_lines: Arc::new(|line| println!("{line}")),
        }
    }

    /// Sends the metric lines (when [`DeliverySettings::metrics`] is on) to `lines`
    /// instead of stdout.
    pub fn with_metric_lines(mut self, lines: MetricLines) -> Self {
        self.metric_lines = lines;
        self
    }

    /// Delivers a batch concurrently; failed messages are listed in the response (an
    /// `Err` would make Lambda retry the whole batch). Sync steps stop before `deadline`.
    pub async fn handle(&self, event: SqsEvent, deadline: Instant) -> SqsBatchResponse {
        let kept = self
            .run_batch(plan::unread(event), deadline, Source::Queue)
            .await;
        let mut response = SqsBatchResponse::default();
        response.batch_item_failures = kept
            .into_iter()
            .map(|message_id| {
                let mut failure = BatchItemFailure::default();
                failure.item_identifier = message_id;
                failure
            })
            .collect();
        response
    }

    /// Makes the first attempt of jobs the flush has just made, as one batch, before any
    /// of them is on the queue (docs/architecture.md, "First attempts by the flush"). What
    /// becomes of each is what becomes of a message on its first receive: an acknowledged
    /// job is done; a failed one is sent to the delivery queue for its next attempt after
    /// the retry delay, carrying the attempt it made (or, after the last attempt, to the
    /// dead-letter queue); a job for a disabled endpoint is parked. Returns the ids of the
    /// jobs it could not settle so (the queue refused the message): the flush queues
    /// those as they are.
    pub async fn first_attempts(
        &self,
        jobs: Vec<crate::job::DeliveryJob>,
        deadline: Instant,
    ) -> Vec<String> {
        let messages = jobs
            .into_iter()
            .map(|job| {
                // No receipt handle: nothing to hide or delete on a queue.
                (plan::QueueMessage::unqueued(&job), plan::Body::Job(job))
            })
            .collect();
        self.run_batch(messages, deadline, Source::Flush).await
    }

    /// Runs a batch on one task of its own ([`in_own_task`]): its messages read, their
    /// subscribers fetched, the messages run and the batch finished; returns the ids of the
    /// messages that stay on the queue (all of them, should the task be stopped with the
    /// runtime). On a runtime worker, the requests it makes wake the client's
    /// connection tasks on that worker's own queue; polled on the thread that awaits
    /// `handle` (the Lambda runtime's, outside the workers), each request woke a parked
    /// worker instead (figure 2's profile in docs/benchmarks.md: 4.1 µs a message in
    /// parking and waking against the bare loop's 1.9). The jobs are read on that worker
    /// too, so the memory they hold is freed by the thread that allocated it (twelfth
    /// pass).
    async fn run_batch(
        &self,
        unread: Vec<plan::Unread>,
        deadline: Instant,
        source: Source,
    ) -> Vec<String> {
        // Kept should the task be stopped and report nothing.
        let ids = unread
            .iter()
            .map(|(message, _)| message.id.clone())
            .collect();
        let delivery = self.clone();
        let batch = in_own_task(async move {
            let messages = plan::read(unread);
            delivery
                .prefetch_subscribers(messages.iter().filter_map(|(_, job)| job.as_ref().ok()))
                .await;
            let ledger = delivery.run_messages(messages, deadline, source).await;
            delivery.finish_batch(ledger, deadline).await
        });
        batch.await.unwrap_or_else(|error| {
            tracing::error!(
                %error,
                "the batch's task stopped before it ended; its messages stay on the queue"
            );
            ids
        })
    }

    /// Runs the batch's messages, at most [`DeliverySettings::concurrency`] at once, and
    /// adds up their reports as they end.
    async fn run_messages(
        &self,
        messages: Vec<plan::Parsed>,
        deadline: Instant,
        source: Source,
    ) -> BatchLedger {
        let ledger = BatchLedger::for_batch(messages.len());
        let per_attempt = self.ports.attempts.writes() == LogWrites::PerAttempt;
        futures::stream::iter(messages)
            .map(|(message, job)| self.process(message, job, source, deadline))
            .buffer_unordered(self.settings.concurrency.max(1))
            .fold(ledger, |mut ledger, report| async move {
                ledger.add(report, &self.settings.health);
                if per_attempt {
                    // Written while the batch's other requests are in flight.
                    self.log_attempts(std::mem::take(&mut ledger.attempts))
                        .await;
                }
                ledger
            })
            .await
    }

    /// Does what the batch's attempts left to do; returns the ids of the messages that
    /// stay on the queue.
    async fn finish_batch(&self, ledger: BatchLedger, deadline: Instant) -> Vec<String> {
        let BatchLedger {
            mut keep,
            metrics,
            attempts,
            health,
            sync_outcomes,
        } = ledger;
        self.save_health(health).await;
        self.log_attempts(attempts).await;
        keep.extend(self.count_sync_outcomes(sync_outcomes, deadline).await);
        self.emit_metrics(&metrics);
        keep
    }

    /// Delivers one message.
    async fn process(
        &self,
        message: QueueMessage,
        job: Result<crate::job::DeliveryJob, serde_json::Error>,
        source: Source,
        deadline: Instant,
    ) -> LoggedReport {
        let job = match job {
            Ok(job) => job,
            Err(e) => {
                // Keep it: retrying cannot fix it, but the DLQ keeps it for an operator.
                tracing::error!(message_id = %message.id, receives = message.receives, error = %e, "unreadable delivery job; sending it toward the dead-letter queue");
                self.hide(&message, Duration::ZERO).await;
                return TaskReport::settled(Some(message.id)).into();
            }
        };
        let rx = Received {
            message: &message,
            source,
            job: &job,
            attempt: job.attempts_made.saturating_add(message.receives),
        };
        let span = tracing::info_span!("delivery", delivery_id = %job.id.as_str(), message_id = %rx.message.id, attempt = rx.attempt);
        let report = self.process_job(&rx, deadline).instrument(span).await;
        report.logged(job)
    }

    /// Delivers one job (inside its span, so every log line names the delivery).
    async fn process_job(&self, rx: &Received<'_>, deadline: Instant) -> TaskReport {
        let work = match self.work(rx.job).await {
            Ok(work) => work,
            Err(e) => return TaskReport::settled(self.backend_failure(rx, e).await),
        };
        match work {
            Work::Drop(why) => {
                tracing::warn!(why, "job dropped");
                TaskReport::settled(None)
            }
            Work::SyncStep(sync) => TaskReport::settled(self.sync_step(rx, &sync, deadline).await),
            Work::Unusable {
                application,
                reason,
            } => {
                let endpoint = self.disable_application(application, reason).await;
                self.set_aside(rx, &endpoint).await
            }
            Work::Send(send) if send.endpoint.health().is_disabled() => {
                self.set_aside(rx, &send.endpoint).await
            }
            Work::Send(send) => self.attempt(rx, send).await,
        }
    }
}
