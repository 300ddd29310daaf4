//! The SQS adapter of the delivery queue.

use crate::job::DeliveryJob;
use crate::ports::{BackendError, BackendResult, DeliveryQueue};
use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use futures::{StreamExt, TryStreamExt};
use std::time::Duration;

/// SQS's limit of entries per SendMessageBatch.
const BATCH: usize = 10;
/// Batches in flight at once.
const SEND_CONCURRENCY: usize = 8;
/// Rounds of re-sending the entries a batch reported failed.
const SEND_ROUNDS: u32 = 5;
/// SQS refuses a visibility timeout that ends more than 12 hours after the receive; the
/// margin covers the time between receive and the change.
pub const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 3600 - 300);

/// The delivery queue on SQS, and its dead-letter queue.
#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: Client,
    queue_url: String,
    dead_letter_url: String,
}

impl SqsQueue {
    /// The adapter for the queue at `queue_url` with its DLQ at `dead_letter_url`.
    pub fn new(
        client: Client,
        queue_url: impl Into<String>,
        dead_letter_url: impl Into<String>,
    ) -> Self {
        Self {
            client,
            queue_url: queue_url.into(),
            dead_letter_url: dead_letter_url.into(),
        }
    }

    /// Moves dead-lettered messages back to the delivery queue, at most `max`, with a
    /// receive / send / delete loop (each message is sent before it is deleted: a crash
    /// in between duplicates, never loses). Returns how many moved.
    pub async fn redrive_by_loop(&self, max: usize) -> BackendResult<usize> {
        let mut moved = 0;
        while moved < max {
            let out = self
                .client
                .receive_message()
                .queue_url(&self.dead_letter_url)
                .max_number_of_messages(((max - moved).min(BATCH)) as i32)
                .wait_time_seconds(1)
                .send()
                .await
                .map_err(|e| BackendError::Unavailable(DisplayErrorContext(&e).to_string()))?;
            let messages = out.messages.unwrap_or_default();
            if messages.is_empty() {
                break;
            }
            let bodies: Vec<String> = messages.iter().filter_map(|m| m.body.clone()).collect();
            self.send_batch(&bodies).await?;
            for message in &messages {
                if let Some(receipt) = &message.receipt_handle {
                    self.client
                        .delete_message()
                        .queue_url(&self.dead_letter_url)
                        .receipt_handle(receipt)
                        .send()
                        .await
                        .map_err(|e| {
                            BackendError::Unavailable(DisplayErrorContext(&e).to_string())
                        })?;
                }
            }
            moved += messages.len();
        }
        Ok(moved)
    }

    /// Starts an SQS message move task from the DLQ back to its source queue (the
    /// console's "Start DLQ redrive"); returns the task handle.
    pub async fn start_redrive_task(&self) -> BackendResult<String> {
        let arn = |url: &str| {
            let client = self.client.clone();
            let url = url.to_owned();
            async move {
                let out = client
                    .get_queue_attributes()
                    .queue_url(url)
                    .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
                    .send()
                    .await
                    .map_err(|e| BackendError::Unavailable(DisplayErrorContext(&e).to_string()))?;
                out.attributes
                    .and_then(|a| {
                        a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn)
                            .cloned()
                    })
                    .ok_or_else(|| BackendError::Unavailable("queue has no ARN".into()))
            }
        };
        let source = arn(&self.dead_letter_url).await?;
        let destination = arn(&self.queue_url).await?;
        let out = self
            .client
            .start_message_move_task()
            .source_arn(source)
            .destination_arn(destination)
            .send()
            .await
            .map_err(|e| BackendError::Unavailable(DisplayErrorContext(&e).to_string()))?;
        Ok(out.task_handle.unwrap_or_default())
    }

    async fn send_one(
        &self,
        queue_url: &str,
        job: &DeliveryJob,
        delay: Duration,
    ) -> BackendResult<()> {
        let delay = delay.min(crate::ports::MAX_SEND_DELAY);
        self.client
            .send_message()
            .queue_url(queue_url)
            .message_body(serde_json::to_string(job).expect("jobs serialize"))
            .delay_seconds(Self::visibility_seconds(delay))
            .send()
            .await
            .map_err(|e| BackendError::Unavailable(DisplayErrorContext(&e).to_string()))?;
        Ok(())
    }

    /// The visibility timeout, in whole seconds, for a retry after `delay`.
    pub fn visibility_seconds(delay: Duration) -> i32 {
        let clamped = delay.min(MAX_VISIBILITY);
        // Round up: retrying early would break the doubling schedule.
        (clamped.as_secs() + u64::from(clamped.subsec_nanos() > 0)) as i32
    }

    async fn send_batch(&self, bodies: &[String]) -> BackendResult<()> {
        let mut pending: Vec<(String, &String)> = bodies
            .iter()
            .enumerate()
            .map(|(i, b)| (i.to_string(), b))
            .collect();
        for round in 0..SEND_ROUNDS {
            if round > 0 {
                tokio::time::sleep(Duration::from_millis(50 << round)).await;
            }
            let entries = pending
                .iter()
                .map(|(id, body)| {
                    SendMessageBatchRequestEntry::builder()
                        .id(id)
                        .message_body(*body)
                        .build()
                        .expect("id and body are set")
                })
                .collect();
            let out = match self
                .client
                .send_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
            {
                Ok(out) => out,
                Err(e) => {
                    tracing::warn!(error = %DisplayErrorContext(&e), round, "SendMessageBatch failed");
                    continue;
                }
            };
            let failed: Vec<&str> = out.failed.iter().map(|f| f.id.as_str()).collect();
            for f in &out.failed {
                tracing::warn!(id = %f.id, code = %f.code, sender_fault = f.sender_fault, "SendMessageBatch entry failed");
            }
            pending.retain(|(id, _)| failed.contains(&id.as_str()));
            if pending.is_empty() {
                return Ok(());
            }
        }
        Err(BackendError::Unavailable(format!(
            "{} of {} messages could not be sent to SQS",
            pending.len(),
            bodies.len()
        )))
    }
}

#[async_trait]
impl DeliveryQueue for SqsQueue {
    async fn enqueue(&self, jobs: &[DeliveryJob]) -> BackendResult<()> {
        let bodies: Vec<String> = jobs
            .iter()
            .map(|job| serde_json::to_string(job).expect("jobs serialize"))
            .collect();
        // Batches go out a few at a time: a large flush is bound by round trips.
        let sends: Vec<_> = bodies
            .chunks(BATCH)
            .map(|chunk| self.send_batch(chunk))
            .collect();
        futures::stream::iter(sends)
            .buffer_unordered(SEND_CONCURRENCY)
            .try_collect::<()>()
            .await
    }

    async fn enqueue_delayed(&self, job: &DeliveryJob, delay: Duration) -> BackendResult<()> {
        self.send_one(&self.queue_url, job, delay).await
    }

    async fn dead_letter(&self, job: &DeliveryJob) -> BackendResult<()> {
        self.send_one(&self.dead_letter_url, job, Duration::ZERO)
            .await
    }

    async fn retry_later(&self, receipt_handle: &str, delay: Duration) -> BackendResult<()> {
        self.client
            .change_message_visibility()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(Self::visibility_seconds(delay))
            .send()
            .await
            .map_err(|e| BackendError::Unavailable(DisplayErrorContext(&e).to_string()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visibility_rounds_up_and_stays_under_twelve_hours() {
        assert_eq!(SqsQueue::visibility_seconds(Duration::ZERO), 0);
        assert_eq!(SqsQueue::visibility_seconds(Duration::from_millis(1)), 1);
        assert_eq!(
            SqsQueue::visibility_seconds(Duration::from_millis(60_400)),
            61
        );
        assert_eq!(
            SqsQueue::visibility_seconds(Duration::from_secs(12 * 3600)),
            12 * 3600 - 300
        );
    }
}
