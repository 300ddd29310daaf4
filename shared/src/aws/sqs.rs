//! The SQS adapter of the delivery queue, its dead-letter queue and the parked queue.
//!
//! Bodies are written by [`crate::message`] (characters SQS refuses are escaped), checked
//! against the size limit before sending, and packed into SendMessageBatch calls by
//! entries and bytes. What SQS still refuses for good is told apart from what may pass
//! in one place, [`refusal_of`], and reported per job; only the latter is an error.

use super::unavailable;
use crate::job::DeliveryJob;
use crate::message::{self, MAX_BATCH_ENTRIES, Refusal};
use crate::ports::{
    BackendError, BackendResult, DeliveryQueue, Enqueued, ParkedMessage, ParkedQueue, RefusedJob,
    on_own_task,
};
use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::operation::send_message_batch::{SendMessageBatchError, SendMessageBatchOutput};
use aws_sdk_sqs::types::{BatchResultErrorEntry, SendMessageBatchRequestEntry};
use futures::{StreamExt, TryStreamExt};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// SQS's limit of entries per SendMessageBatch.
const BATCH: usize = MAX_BATCH_ENTRIES;
/// Batches in flight at once, in all (a process's enqueues share them: a flush of all 8
/// shards sends for each at once). A flush page of 250 records with ten subscribers each is
/// 250 batches: at 8 in flight, the rounds of SQS's round trip bounded a large window's
/// flush (docs/benchmarks.md, figure 8); SQS sets no limit on a standard queue's requests.
pub const SEND_CONCURRENCY: usize = 128;
/// Rounds of re-sending the entries a batch reported failed.
const SEND_ROUNDS: u32 = 5;
/// SQS refuses a visibility timeout that ends more than 12 hours after the receive; the
/// margin covers the time between receive and the change.
pub const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 3600 - 300);

/// The delivery queue on SQS, its dead-letter queue, and the parked queue of jobs for
/// disabled endpoints.
#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: Client,
    queue_url: String,
    dead_letter_url: String,
    parked_url: Option<String>,
    /// [`SEND_CONCURRENCY`] permits, one per batch in flight.
    sending: Arc<Semaphore>,
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
            parked_url: None,
            sending: Arc::new(Semaphore::new(SEND_CONCURRENCY)),
        }
    }

    /// The same, with the parked queue at `parked_url` (where jobs for disabled endpoints
    /// wait; without it, parking fails and the message is retried).
    pub fn with_parked_queue(mut self, parked_url: impl Into<String>) -> Self {
        self.parked_url = Some(parked_url.into());
        self
    }

    fn parked_url(&self) -> BackendResult<&str> {
        self.parked_url.as_deref().ok_or_else(|| {
            BackendError::Unavailable("no parked queue is configured for disabled endpoints".into())
        })
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
                .map_err(unavailable)?;
            let messages = out.messages.unwrap_or_default();
            if messages.is_empty() {
                break;
            }
            let entries: Vec<(usize, &str)> = messages
                .iter()
                .enumerate()
                .filter_map(|(i, m)| m.body.as_deref().map(|b| (i, b)))
                .collect();
            let refused = self.send_batch(&entries).await?;
            for (i, message) in messages.iter().enumerate() {
                if refused.iter().any(|r| r.index == i) {
                    // Left in the DLQ, where it is: it came from SQS, so this is unexpected.
                    tracing::error!(message_id = ?message.message_id, "the delivery queue refused a dead-lettered message; left in the DLQ");
                    continue;
                }
                if let Some(receipt) = &message.receipt_handle {
                    self.client
                        .delete_message()
                        .queue_url(&self.dead_letter_url)
                        .receipt_handle(receipt)
                        .send()
                        .await
                        .map_err(unavailable)?;
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
                    .map_err(unavailable)?;
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
            .map_err(unavailable)?;
        Ok(out.task_handle.unwrap_or_default())
    }

    async fn send_one(
        &self,
        queue_url: &str,
        job: &DeliveryJob,
        delay: Duration,
    ) -> BackendResult<()> {
        let delay = delay.min(crate::ports::MAX_SEND_DELAY);
        let body = message::encode(job);
        message::check(&body).map_err(BackendError::Refused)?;
        self.client
            .send_message()
            .queue_url(queue_url)
            .message_body(body)
            .delay_seconds(Self::visibility_seconds(delay))
            .send()
            .await
            .map_err(|e| match refusal_of(e.code(), e.message()) {
                Some(refusal) => BackendError::Refused(refusal),
                None => unavailable(e),
            })?;
        Ok(())
    }

    /// The visibility timeout, in whole seconds, for a retry after `delay`.
    pub fn visibility_seconds(delay: Duration) -> i32 {
        let clamped = delay.min(MAX_VISIBILITY);
        // Round up: retrying early would break the doubling schedule.
        (clamped.as_secs() + u64::from(clamped.subsec_nanos() > 0)) as i32
    }

    /// Sends one SendMessageBatch of `(position, body)` entries (within SQS's limits),
    /// re-sending the entries that failed for a reason that may pass. Returns the entries
    /// SQS refused for good; an error when some could not be sent after every round.
    async fn send_batch(&self, entries: &[(usize, &str)]) -> BackendResult<Vec<RefusedJob>> {
        let mut pending: Vec<(usize, &str)> = entries.to_vec();
        let mut refused = Vec::new();
        for round in 0..SEND_ROUNDS {
            if round > 0 {
                tokio::time::sleep(Duration::from_millis(50 << round)).await;
            }
            let out = match self.send_message_batch(&pending).await {
                Ok(out) => out,
                Err(e) => {
                    let Some(refusal) = refusal_of(e.code(), e.message()) else {
                        tracing::warn!(error = %DisplayErrorContext(&e), round, "SendMessageBatch failed");
                        continue;
                    };
                    refused.extend(self.find_refused(pending, refusal).await?);
                    return Ok(refused);
                }
            };
            pending = failed_entries(&pending, &out.failed, &mut refused);
            if pending.is_empty() {
                return Ok(refused);
            }
        }
        Err(BackendError::Unavailable(format!(
            "{} of {} messages could not be sent to SQS",
            pending.len(),
            entries.len()
        )))
    }

    /// One SendMessageBatch call, each entry's id its position.
    async fn send_message_batch(
        &self,
        entries: &[(usize, &str)],
    ) -> Result<SendMessageBatchOutput, SdkError<SendMessageBatchError>> {
        let request = entries
            .iter()
            .map(|(index, body)| {
                SendMessageBatchRequestEntry::builder()
                    .id(index.to_string())
                    .message_body(*body)
                    .build()
                    .expect("id and body are set")
            })
            .collect();
        self.client
            .send_message_batch()
            .queue_url(&self.queue_url)
            .set_entries(Some(request))
            .send()
            .await
    }

    /// The entries of a SendMessageBatch call SQS refused as a whole for `refusal`: one
    /// entry spoils the whole call, so each is sent alone to find which.
    async fn find_refused(
        &self,
        entries: Vec<(usize, &str)>,
        refusal: Refusal,
    ) -> BackendResult<Vec<RefusedJob>> {
        if let [(index, _)] = entries[..] {
            return Ok(vec![RefusedJob { index, refusal }]);
        }
        tracing::warn!(%refusal, entries = entries.len(), "SendMessageBatch refused; sending its entries one by one");
        let mut refused = Vec::new();
        for entry in entries {
            refused.extend(Box::pin(self.send_batch(&[entry])).await?);
        }
        Ok(refused)
    }
}

/// The entries of `sent` a SendMessageBatch reported `failed` that may pass when sent
/// again; those SQS refused for good go to `refused`.
fn failed_entries<'a>(
    sent: &[(usize, &'a str)],
    failed: &[BatchResultErrorEntry],
    refused: &mut Vec<RefusedJob>,
) -> Vec<(usize, &'a str)> {
    let mut again = Vec::new();
    for failed in failed {
        let Some(&entry) = sent.iter().find(|(i, _)| i.to_string() == failed.id) else {
            continue;
        };
        match refusal_of(Some(&failed.code), failed.message.as_deref()) {
            Some(refusal) => {
                tracing::warn!(id = %failed.id, code = %failed.code, "SendMessageBatch entry refused");
                refused.push(RefusedJob {
                    index: entry.0,
                    refusal,
                });
            }
            None => {
                tracing::warn!(id = %failed.id, code = %failed.code, sender_fault = failed.sender_fault, "SendMessageBatch entry failed");
                again.push(entry);
            }
        }
    }
    again
}

/// The refusal an SQS error code means: the message itself is what SQS will never take,
/// so sending it again is pointless. Every other error (throttling, a service error,
/// access or KMS trouble: a configuration fixed by an operator) may pass and is retried.
/// The one place SQS error codes are read; the JSON protocol's codes arrive with or without
/// the query protocol's `AWS.SimpleQueueService.` prefix.
pub fn refusal_of(code: Option<&str>, message: Option<&str>) -> Option<Refusal> {
    let code = code?;
    let bare = code.strip_prefix("AWS.SimpleQueueService.").unwrap_or(code);
    match bare {
        "InvalidMessageContents"
        | "MessageTooLong"
        | "BatchRequestTooLong"
        | "InvalidParameterValue" => Some(Refusal::Rejected {
            reason: format!("{bare}: {}", message.unwrap_or("")),
        }),
        _ => None,
    }
}

#[async_trait]
impl DeliveryQueue for SqsQueue {
    async fn enqueue(&self, jobs: &[DeliveryJob]) -> BackendResult<Enqueued> {
        let mut enqueued = Enqueued::default();
        let mut bodies: Vec<(usize, String)> = Vec::with_capacity(jobs.len());
        for (index, job) in jobs.iter().enumerate() {
            let body = message::encode(job);
            match message::check(&body) {
                Ok(()) => bodies.push((index, body)),
                Err(refusal) => enqueued.refused.push(RefusedJob { index, refusal }),
            }
        }
        let sizes: Vec<usize> = bodies.iter().map(|(_, b)| b.len()).collect();
        let mut unsent = bodies.into_iter();
        // Batches go out many at a time (at most SEND_CONCURRENCY in the process): a large
        // flush is bound by round trips, and by the SDK's CPU, so each is sent on a task of
        // its own (`on_own_task`).
        let sends: Vec<_> = message::batches(&sizes)
            .into_iter()
            .map(|range| {
                let batch: Vec<(usize, String)> = unsent.by_ref().take(range.len()).collect();
                let queue = self.clone();
                on_own_task(async move {
                    let _sending = queue.sending.acquire().await.map_err(|_| {
                        BackendError::Unavailable("the queue's sends were closed".into())
                    })?;
                    let entries: Vec<(usize, &str)> =
                        batch.iter().map(|(i, b)| (*i, b.as_str())).collect();
                    queue.send_batch(&entries).await
                })
            })
            .collect();
        let refused: Vec<Vec<RefusedJob>> = futures::stream::iter(sends)
            .buffer_unordered(SEND_CONCURRENCY)
            .try_collect()
            .await?;
        enqueued.refused.extend(refused.into_iter().flatten());
        enqueued.refused.sort_by_key(|r| r.index);
        Ok(enqueued)
    }

    async fn enqueue_delayed(&self, job: &DeliveryJob, delay: Duration) -> BackendResult<()> {
        self.send_one(&self.queue_url, job, delay).await
    }

    async fn dead_letter(&self, job: &DeliveryJob) -> BackendResult<()> {
        self.send_one(&self.dead_letter_url, job, Duration::ZERO)
            .await
    }

    async fn park(&self, job: &DeliveryJob) -> BackendResult<()> {
        self.send_one(self.parked_url()?, job, Duration::ZERO).await
    }

    async fn retry_later(&self, receipt_handle: &str, delay: Duration) -> BackendResult<()> {
        self.client
            .change_message_visibility()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(Self::visibility_seconds(delay))
            .send()
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

#[async_trait]
impl ParkedQueue for SqsQueue {
    async fn take_parked(&self, max: usize, hold: Duration) -> BackendResult<Vec<ParkedMessage>> {
        let out = self
            .client
            .receive_message()
            .queue_url(self.parked_url()?)
            .max_number_of_messages(max.clamp(1, BATCH) as i32)
            .visibility_timeout(Self::visibility_seconds(hold))
            // A long poll asks every SQS server, so an empty answer means an empty queue.
            .wait_time_seconds(1)
            .send()
            .await
            .map_err(unavailable)?;
        Ok(out
            .messages
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| {
                Some(ParkedMessage {
                    message_id: m.message_id?,
                    handle: m.receipt_handle?,
                    body: m.body.unwrap_or_default(),
                })
            })
            .collect())
    }

    async fn remove_parked(&self, handle: &str) -> BackendResult<()> {
        self.client
            .delete_message()
            .queue_url(self.parked_url()?)
            .receipt_handle(handle)
            .send()
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn release_parked(&self, handle: &str) -> BackendResult<()> {
        self.client
            .change_message_visibility()
            .queue_url(self.parked_url()?)
            .receipt_handle(handle)
            .visibility_timeout(0)
            .send()
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_content_errors_are_refusals() {
        for code in [
            "InvalidMessageContents",
            "AWS.SimpleQueueService.BatchRequestTooLong",
            "MessageTooLong",
            "InvalidParameterValue",
        ] {
            assert!(refusal_of(Some(code), Some("m")).is_some(), "{code}");
        }
        for code in [
            "RequestThrottled",
            "ThrottlingException",
            "InternalError",
            "ServiceUnavailable",
            "AccessDenied",
            "KMS.ThrottlingException",
            "AWS.SimpleQueueService.NonExistentQueue",
        ] {
            assert_eq!(refusal_of(Some(code), None), None, "{code}");
        }
        assert_eq!(refusal_of(None, Some("timeout")), None);
    }

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
