//! The verdict on a message: acknowledged (deleted), retried after a delay (hidden for
//! the visibility timeout), dead-lettered after the last attempt, parked while its
//! endpoint is disabled, or sent again after a backend failure.

use super::Delivery;
use super::ledger::TaskReport;
use super::plan::{QueueMessage, Received, Source};
use super::subscribers::Endpoint;
use crate::events::OpsEvent;
use crate::http_client::AttemptOutcome;
use crate::job::{DeliveryJob, Target};
use crate::metrics::DeliveryMetrics;
use crate::ports::{BackendError, MAX_SEND_DELAY, announce};
use crate::retry::RetryPolicy;
use crate::subscription::endpoint_name;
use std::time::Duration;

/// Backend failures one job may meet before it goes to the dead-letter queue: with
/// delays doubling to the 15-minute cap, about a day of continuous outage.
pub const MAX_BACKEND_FAILURES: u32 = 100;

/// What to do with a message after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Acknowledged: the message is deleted.
    Delivered,
    /// Not acknowledged: try again after the delay.
    RetryAfter(Duration),
    /// Not acknowledged and that was the last attempt: to the dead-letter queue.
    Exhausted,
}

/// The retry decision for attempt `attempt` (1-based), given whether it acknowledged.
pub fn decide(
    acknowledged: bool,
    retry: &RetryPolicy,
    attempt: u32,
    outcome: &AttemptOutcome,
) -> Verdict {
    if acknowledged {
        Verdict::Delivered
    } else if retry.is_last(attempt) {
        Verdict::Exhausted
    } else {
        Verdict::RetryAfter(retry.next_delay(attempt, outcome.retry_after))
    }
}

/// The endpoint a job is for, as logs and operational events name it.
fn endpoint_of(job: &DeliveryJob) -> String {
    match &job.target {
        Target::Callback {
            record, callback, ..
        } => endpoint_name(record, callback),
        Target::Application { application, .. } | Target::SyncStep { application, .. } => {
            crate::application::endpoint_name(application)
        }
    }
}

impl Delivery {
    /// Applies the verdict on an attempt; returns the message id when it must stay on the
    /// queue.
    pub(super) async fn apply_verdict(
        &self,
        rx: &Received<'_>,
        verdict: Verdict,
        outcome: &AttemptOutcome,
        endpoint: &Endpoint,
        metrics: &mut DeliveryMetrics,
    ) -> Option<String> {
        let status = outcome.status;
        let error = outcome.error.as_ref().map(tracing::field::display);
        match verdict {
            Verdict::Delivered => {
                // Counted in the batch's metric line; one INFO line per delivery would cost
                // more in CloudWatch Logs than the rest of its logging.
                let latency_ms = outcome.latency.as_millis() as u64;
                tracing::debug!(status, latency_ms, "delivered");
                None
            }
            Verdict::RetryAfter(delay) => {
                let retry_in_ms = delay.as_millis() as u64;
                tracing::warn!(status, error, retry_in_ms, "delivery failed; will retry");
                self.retry_after(rx, delay).await
            }
            Verdict::Exhausted => {
                tracing::error!(
                    status,
                    error,
                    "delivery failed on the last attempt; moving to the dead-letter queue"
                );
                metrics.dlq_moves += 1;
                let last_error = outcome
                    .failure(false)
                    .map(|failure| failure.to_string())
                    .unwrap_or_default();
                self.announce_exhausted(rx.job, endpoint.name().to_owned(), rx.attempt, last_error)
                    .await;
                self.exhausted(rx, rx.job).await
            }
        }
    }

    /// Makes the next attempt come after `delay`: the received message hidden for it, or
    /// a job the flush attempted sent to the queue with it (at most the 15-minute send
    /// delay), carrying the attempt it made. Returns the message id when it must stay (on
    /// the queue; for the flush, to be queued as it is).
    async fn retry_after(&self, rx: &Received<'_>, delay: Duration) -> Option<String> {
        match rx.source {
            Source::Queue => {
                self.hide(rx.message, delay).await;
                Some(rx.message.id.clone())
            }
            Source::Flush => {
                let next = rx.job.after_attempt(rx.attempt);
                match self
                    .ports
                    .queue
                    .enqueue_delayed(&next, delay.min(MAX_SEND_DELAY))
                    .await
                {
                    Ok(()) => None,
                    Err(e) => {
                        tracing::warn!(error = %e, "could not queue the job for its next attempt; the flush queues it as it is");
                        Some(rx.message.id.clone())
                    }
                }
            }
        }
    }

    async fn announce_exhausted(
        &self,
        job: &DeliveryJob,
        endpoint: String,
        attempts: u32,
        last_error: String,
    ) {
        let event = OpsEvent::MessageExhausted {
            message_id: job.id.clone(),
            endpoint,
            attempts,
            last_error,
        };
        announce(self.ports.events.as_ref(), event).await;
    }

    /// After the last attempt of `job` (the received one, or the one it would be sent
    /// again as). A message whose receive count holds its whole history is left to the
    /// queue's redrive policy (which moves the original message); one sent again after a
    /// backend failure is below the redrive limit, and a job the flush attempted is on no
    /// queue, so those are moved here.
    async fn exhausted(&self, rx: &Received<'_>, job: &DeliveryJob) -> Option<String> {
        if rx.source == Source::Flush || *job != job.replayable() {
            match self.ports.queue.dead_letter(&job.replayable()).await {
                Ok(()) => return None,
                Err(e) => {
                    tracing::warn!(error = %e, "could not move the job to the dead-letter queue; it will come back");
                }
            }
        }
        self.hide(rx.message, Duration::ZERO).await;
        Some(rx.message.id.clone())
    }

    /// A job for a disabled endpoint. Lose nothing, and keep the DLQ for failures: the
    /// parked queue keeps it until the owner re-enables the endpoint and an operator
    /// replays it (`handlers::replay`).
    pub(super) async fn set_aside(&self, rx: &Received<'_>, endpoint: &Endpoint) -> TaskReport {
        match self.ports.queue.park(&rx.job.replayable()).await {
            Ok(()) => {
                tracing::warn!(endpoint = %endpoint.name(), "endpoint disabled; job parked until it is re-enabled");
                let mut report = TaskReport::settled(None);
                report.metrics.parked += 1;
                report
            }
            Err(e) => TaskReport::settled(self.backend_failure(rx, e).await),
        }
    }

    /// A store or queue failed before the receiver was tried (attempt `rx.attempt` did not
    /// happen). The job is sent again as a new message after the doubling delay for its
    /// backend failures (at most the 15-minute send delay), carrying the attempts it made,
    /// and this message is acknowledged: a backend outage spends no delivery attempt.
    /// After [`MAX_BACKEND_FAILURES`] it goes to the dead-letter queue. Only when the
    /// queue refuses the new message does this one stay, hidden for the doubling delay
    /// of its receive count (then the outage does spend a receive).
    pub(super) async fn backend_failure(
        &self,
        rx: &Received<'_>,
        e: BackendError,
    ) -> Option<String> {
        let job = rx.job;
        let again = job.after_backend_failure(rx.attempt);
        if again.backend_failures > MAX_BACKEND_FAILURES {
            tracing::error!(error = %e, backend_failures = job.backend_failures, "backend failing for too long; moving the job to the dead-letter queue");
            self.announce_exhausted(job, endpoint_of(job), again.attempts_made, e.to_string())
                .await;
            return self.exhausted(rx, &again).await;
        }
        let delay = self
            .settings
            .retry
            .next_delay(again.backend_failures, None)
            .min(MAX_SEND_DELAY);
        let Err(queue_error) = self.ports.queue.enqueue_delayed(&again, delay).await else {
            tracing::warn!(error = %e, backend_failures = again.backend_failures, retry_in_ms = delay.as_millis() as u64, "backend failure; the job will be retried without spending an attempt");
            return None;
        };
        let receives = rx.attempt.saturating_sub(job.attempts_made).max(1);
        let delay = self.settings.retry.next_delay(receives, None);
        tracing::warn!(error = %e, %queue_error, retry_in_ms = delay.as_millis() as u64, "backend failure, and the job could not be sent again; the message will be retried");
        self.hide(rx.message, delay).await;
        Some(rx.message.id.clone())
    }

    /// Makes the message visible again after `delay` (at once for zero: toward the
    /// dead-letter queue when its receives are spent).
    pub(super) async fn hide(&self, message: &QueueMessage, delay: Duration) {
        let Some(receipt) = message.receipt_handle.as_deref() else {
            return;
        };
        if let Err(e) = self.ports.queue.retry_later(receipt, delay).await {
            // The message still comes back after the queue's default visibility timeout.
            tracing::warn!(message_id = %message.id, error = %e, "could not change the message's visibility");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(status: Option<u16>, retry_after: Option<u64>) -> AttemptOutcome {
        AttemptOutcome {
            status,
            retry_after: retry_after.map(Duration::from_secs),
            latency: Duration::ZERO,
            error: status
                .is_none()
                .then(|| crate::http_client::AttemptFailure::Timeout(Duration::from_secs(10))),
            body_prefix: bytes::Bytes::new(),
        }
    }

    #[test]
    fn decisions() {
        let retry = RetryPolicy {
            base: Duration::from_secs(10),
            max_attempts: 3,
            jitter: 0.0,
        };
        assert_eq!(
            decide(true, &retry, 1, &outcome(Some(204), None)),
            Verdict::Delivered
        );
        assert_eq!(
            decide(true, &retry, 3, &outcome(Some(200), None)),
            Verdict::Delivered
        );
        assert_eq!(
            decide(false, &retry, 1, &outcome(Some(500), None)),
            Verdict::RetryAfter(Duration::from_secs(10))
        );
        assert_eq!(
            decide(false, &retry, 2, &outcome(None, None)),
            Verdict::RetryAfter(Duration::from_secs(20))
        );
        assert_eq!(
            decide(false, &retry, 1, &outcome(Some(429), Some(120))),
            Verdict::RetryAfter(Duration::from_secs(120))
        );
        assert_eq!(
            decide(false, &retry, 3, &outcome(Some(500), None)),
            Verdict::Exhausted
        );
    }
}
