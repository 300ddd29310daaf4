//! What each message's task reports, and the batch's sum of them: its metrics, and what
//! is left to do once all its attempts are made (one attempt-log write unless the log is
//! written as each attempt ends (`crate::ports::LogWrites`), one counter write
//! per sync and at most one health write per endpoint, instead of one of each per
//! message). The tasks return their reports and the batch adds them up as they end, so
//! the concurrent deliveries share no lock.

use super::Delivery;
use super::health::{HealthNote, HealthTallies};
use super::sync::SyncOutcome;
use crate::attempts::{Attempt, LoggedAttempt};
use crate::health::HealthPolicy;
use crate::job::DeliveryJob;
use crate::metrics::DeliveryMetrics;

/// What one message's processing did and left for the batch.
#[derive(Default)]
pub(super) struct TaskReport {
    /// The message's id when it must stay on the queue.
    pub(super) keep: Option<String>,
    pub(super) metrics: DeliveryMetrics,
    /// The attempt made, if any; its job is added by [`TaskReport::logged`] once the
    /// message's task is done with it (moved, not copied: a Members-style job carries
    /// the person).
    pub(super) attempt: Option<Attempt>,
    pub(super) health: Option<HealthNote>,
    pub(super) sync_outcome: Option<SyncOutcome>,
}

/// A task's report with its attempt paired with the job it sent, as the log keeps it.
pub(super) struct LoggedReport {
    report: TaskReport,
    logged: Option<LoggedAttempt>,
}

impl TaskReport {
    /// A message settled without an attempt (`keep`: its id when it stays on the queue).
    pub(super) fn settled(keep: Option<String>) -> Self {
        Self {
            keep,
            ..Self::default()
        }
    }

    /// The report with its attempt (if any) paired with `job`, the job it sent, as it can
    /// be sent again.
    pub(super) fn logged(mut self, job: DeliveryJob) -> LoggedReport {
        let logged = self.attempt.take().map(|attempt| LoggedAttempt {
            attempt,
            job: job.into_replayable(),
        });
        LoggedReport {
            report: self,
            logged,
        }
    }
}

impl From<TaskReport> for LoggedReport {
    /// A report with no job to pair (the message's job could not be read).
    fn from(report: TaskReport) -> Self {
        Self {
            report,
            logged: None,
        }
    }
}

/// The batch's tasks' reports added up.
#[derive(Default)]
pub(super) struct BatchLedger {
    /// The ids of the messages that stay on the queue.
    pub(super) keep: Vec<String>,
    pub(super) metrics: DeliveryMetrics,
    pub(super) attempts: Vec<LoggedAttempt>,
    pub(super) health: HealthTallies,
    pub(super) sync_outcomes: Vec<SyncOutcome>,
}

impl BatchLedger {
    /// An empty ledger with room for a batch of `messages` (its attempts and endpoints
    /// are added one report at a time: grown from empty, the attempts were copied about
    /// twice each).
    pub(super) fn for_batch(messages: usize) -> Self {
        Self {
            attempts: Vec::with_capacity(messages),
            health: HealthTallies::with_capacity(messages),
            ..Self::default()
        }
    }

    /// Adds a task's report (in the order the tasks end: the order the endpoints' health
    /// sees their attempts).
    pub(super) fn add(&mut self, report: LoggedReport, policy: &HealthPolicy) {
        let LoggedReport { report, logged } = report;
        let TaskReport {
            keep,
            metrics,
            attempt: _,
            health,
            sync_outcome,
        } = report;
        self.keep.extend(keep);
        self.metrics.merge(metrics);
        self.attempts.extend(logged);
        if let Some(note) = health {
            self.health.add(note, policy);
        }
        self.sync_outcomes.extend(sync_outcome);
    }
}

impl Delivery {
    /// Prints the batch's metric line (when [`super::DeliverySettings::metrics`] is on;
    /// logged at debug level otherwise), unless the batch attempted nothing.
    pub(super) fn emit_metrics(&self, metrics: &DeliveryMetrics) {
        if metrics.deliveries + metrics.dlq_moves + metrics.parked == 0 {
            return;
        }
        // Built only when it goes somewhere: it is a JSON document of a dozen metrics.
        let to_lines = self.settings.metrics;
        if !to_lines && !tracing::enabled!(tracing::Level::DEBUG) {
            return;
        }
        let now_ms = self.ports.clock.now().epoch_ms();
        let line = metrics.emf("delivery", now_ms).to_string();
        if to_lines {
            (self.metric_lines)(&line);
        } else {
            tracing::debug!(emf = %line, "delivery metrics");
        }
    }
}
