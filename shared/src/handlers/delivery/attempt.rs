//! One attempt: the request sent, and what it leaves for the batch (its log entry, its
//! metrics, its effect on the endpoint's health, a sync outcome) before its verdict is
//! applied.

use super::Delivery;
use super::health::HealthNote;
use super::ledger::TaskReport;
use super::plan::{Received, Send};
use super::sync::SyncOutcome;
use super::verdict::decide;
use crate::attempts::{Attempt, LoggedAttempt};
use crate::metrics::DeliveryMetrics;

impl Delivery {
    /// Sends the request once and applies the verdict on its answer.
    pub(super) async fn attempt(&self, rx: &Received<'_>, send: Send) -> TaskReport {
        let Send {
            outbound,
            sync,
            endpoint,
        } = send;
        let at = self.ports.clock.now();
        let (outcome, acknowledged) = outbound.send(&self.http).await;
        let made = Attempt::new(
            rx.job,
            endpoint.key().clone(),
            rx.attempt,
            at,
            &outcome,
            acknowledged,
        );
        let mut metrics = DeliveryMetrics::default();
        metrics.record(&outcome, acknowledged);
        let ended = self.ports.clock.now();
        let health = HealthNote::of(&endpoint, ended, &outcome, acknowledged);
        let verdict = decide(acknowledged, &self.settings.retry, rx.attempt, &outcome);
        let keep = self
            .apply_verdict(rx, verdict, &outcome, &endpoint, &mut metrics)
            .await;
        TaskReport {
            keep,
            metrics,
            attempt: Some(made),
            health: Some(health),
            sync_outcome: SyncOutcome::of(rx, sync, verdict),
        }
    }

    /// Records attempts in one call: the batch's, or (a log written per attempt, see
    /// [`crate::ports::LogWrites`]) the one just ended. The log is for the endpoint's owner:
    /// when it cannot be written the deliveries stand, and the failure is logged.
    pub(super) async fn log_attempts(&self, attempts: Vec<LoggedAttempt>) {
        if attempts.is_empty() {
            return;
        }
        let count = attempts.len();
        if let Err(e) = self.ports.attempts.record(attempts).await {
            tracing::error!(error = %e, attempts = count, "could not record delivery attempts");
        }
    }
}
