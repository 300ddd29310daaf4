//! The `delivery` Lambda (SQS): POST each job to its subscriber; on a negative
//! acknowledgement hide the message for the retry delay (visibility timeout) and report
//! it as a batch item failure; after the last attempt let SQS move it to the DLQ.

use crate::ack::AckPolicy;
use crate::http_client::{AttemptOutcome, CallbackClient};
use crate::job::{DeliveryJob, Target};
use crate::ports::DeliveryQueue;
use crate::retry::RetryPolicy;
use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use bytes::Bytes;
use futures::StreamExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Settings of the delivery handler.
#[derive(Debug, Clone, Copy)]
pub struct DeliverySettings {
    /// The retry schedule (its `max_attempts` equals the queue's maxReceiveCount).
    pub retry: RetryPolicy,
    /// Concurrent requests within one batch.
    pub concurrency: usize,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            concurrency: 32,
        }
    }
}

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

/// The retry decision for attempt `attempt` (1-based) with `outcome`.
pub fn decide(
    ack: AckPolicy,
    retry: &RetryPolicy,
    attempt: u32,
    outcome: &AttemptOutcome,
) -> Verdict {
    if outcome.status.is_some_and(|s| ack.acknowledges(s)) {
        Verdict::Delivered
    } else if retry.is_last(attempt) {
        Verdict::Exhausted
    } else {
        Verdict::RetryAfter(retry.next_delay(attempt, outcome.retry_after))
    }
}

/// The delivery handler.
pub struct Delivery {
    /// The queue the messages came from (for visibility changes).
    pub queue: Arc<dyn DeliveryQueue>,
    /// The shared HTTP client.
    pub http: CallbackClient,
    /// Settings.
    pub settings: DeliverySettings,
}

impl Delivery {
    /// Delivers a batch concurrently; failed messages are listed in the response (an
    /// `Err` would make Lambda retry the whole batch).
    pub async fn handle(&self, event: SqsEvent) -> SqsBatchResponse {
        let failures: Vec<BatchItemFailure> = futures::stream::iter(event.records)
            .map(|message| self.process(message))
            .buffer_unordered(self.settings.concurrency.max(1))
            .filter_map(|failed| async move { failed })
            .map(|message_id| {
                let mut failure = BatchItemFailure::default();
                failure.item_identifier = message_id;
                failure
            })
            .collect()
            .await;
        let mut response = SqsBatchResponse::default();
        response.batch_item_failures = failures;
        response
    }

    /// Delivers one message; returns its message id when it must stay on the queue.
    async fn process(&self, message: SqsMessage) -> Option<String> {
        let message_id = message.message_id.clone().unwrap_or_default();
        let attempt: u32 = message
            .attributes
            .get("ApproximateReceiveCount")
            .and_then(|n| n.parse().ok())
            .unwrap_or(1);
        let job: DeliveryJob = match serde_json::from_str(message.body.as_deref().unwrap_or("")) {
            Ok(job) => job,
            Err(e) => {
                // Keep it: retrying cannot fix it, but the DLQ keeps it for an operator.
                tracing::error!(%message_id, attempt, error = %e, "unreadable delivery job; sending it toward the dead-letter queue");
                self.hide(&message, Duration::ZERO, &message_id).await;
                return Some(message_id);
            }
        };
        let (url, ack) = match &job.target {
            Target::Callback { callback, .. } => (callback.url(), AckPolicy::AnySuccess),
        };
        let headers = [
            ("webhook-id", job.id.as_str().to_owned()),
            ("webhook-timestamp", unix_now().to_string()),
        ];
        let outcome = self.http.post(&url, &headers, Bytes::new()).await;
        let verdict = decide(ack, &self.settings.retry, attempt, &outcome);
        let span =
            tracing::info_span!("delivery", delivery_id = %job.id.as_str(), %message_id, attempt);
        let _enter = span.enter();
        match verdict {
            Verdict::Delivered => {
                tracing::info!(
                    status = outcome.status,
                    latency_ms = outcome.latency.as_millis() as u64,
                    "delivered"
                );
                None
            }
            Verdict::RetryAfter(delay) => {
                tracing::warn!(
                    status = outcome.status,
                    error = outcome.error.as_deref(),
                    retry_in_ms = delay.as_millis() as u64,
                    "delivery failed; will retry"
                );
                self.hide(&message, delay, &message_id).await;
                Some(message_id)
            }
            Verdict::Exhausted => {
                tracing::error!(
                    status = outcome.status,
                    error = outcome.error.as_deref(),
                    "delivery failed on the last attempt; moving to the dead-letter queue"
                );
                self.hide(&message, Duration::ZERO, &message_id).await;
                Some(message_id)
            }
        }
    }

    async fn hide(&self, message: &SqsMessage, delay: Duration, message_id: &str) {
        let Some(receipt) = message.receipt_handle.as_deref() else {
            return;
        };
        if let Err(e) = self.queue.retry_later(receipt, delay).await {
            // The message still comes back after the queue's default visibility timeout.
            tracing::warn!(%message_id, error = %e, "could not change the message's visibility");
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(status: Option<u16>, retry_after: Option<u64>) -> AttemptOutcome {
        AttemptOutcome {
            status,
            retry_after: retry_after.map(Duration::from_secs),
            latency: Duration::ZERO,
            error: status.is_none().then(|| "timeout".into()),
        }
    }

    #[test]
    fn decisions() {
        let retry = RetryPolicy {
            base: Duration::from_secs(10),
            max_attempts: 3,
            jitter: 0.0,
        };
        let orcid = AckPolicy::AnySuccess;
        assert_eq!(
            decide(orcid, &retry, 1, &outcome(Some(204), None)),
            Verdict::Delivered
        );
        assert_eq!(
            decide(orcid, &retry, 3, &outcome(Some(200), None)),
            Verdict::Delivered
        );
        assert_eq!(
            decide(orcid, &retry, 1, &outcome(Some(500), None)),
            Verdict::RetryAfter(Duration::from_secs(10))
        );
        assert_eq!(
            decide(orcid, &retry, 2, &outcome(None, None)),
            Verdict::RetryAfter(Duration::from_secs(20))
        );
        assert_eq!(
            decide(orcid, &retry, 1, &outcome(Some(429), Some(120))),
            Verdict::RetryAfter(Duration::from_secs(120))
        );
        assert_eq!(
            decide(orcid, &retry, 1, &outcome(Some(302), None)),
            Verdict::RetryAfter(Duration::from_secs(10))
        );
        assert_eq!(
            decide(orcid, &retry, 3, &outcome(Some(500), None)),
            Verdict::Exhausted
        );
    }
}
