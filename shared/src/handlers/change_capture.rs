//! The `change-capture` Lambda: DynamoDB stream records of the records table become
//! pending entries, one per (window, record).

use crate::ports::PendingChanges;
use crate::record::RecordId;
use crate::window::FlushWindows;
use aws_lambda_events::event::dynamodb::{Event, EventRecord};
use aws_lambda_events::event::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::Arc;

/// Concurrent pending writes per batch.
const WRITE_CONCURRENCY: usize = 16;

pub struct ChangeCapture {
    /// Where pending entries go.
    pub pending: Arc<dyn PendingChanges>,
    /// Which window a change belongs to.
    pub windows: Arc<dyn FlushWindows>,
}

/// The record id of a stream record (its `id` key), if it has a valid one.
pub fn changed_record(record: &EventRecord) -> Option<RecordId> {
    let keys: serde_json::Map<String, serde_json::Value> =
        serde_dynamo::from_item(record.change.keys.clone()).ok()?;
    RecordId::parse(keys.get("id")?.as_str()?).ok()
}

impl ChangeCapture {
    /// Marks every changed record of the batch pending, once per record. On a failed
    /// write it reports the first stream record of the earliest failed record, so the
    /// stream retries from there (later records are retried too; marking is idempotent).
    pub async fn handle(&self, event: Event) -> DynamoDbEventResponse {
        let window = self.windows.current();
        // record id -> sequence number of its first stream record in this batch
        let mut first_seen: HashMap<RecordId, (usize, Option<String>)> = HashMap::new();
        for (position, record) in event.records.iter().enumerate() {
            match changed_record(record) {
                Some(id) => {
                    first_seen
                        .entry(id)
                        .or_insert((position, record.change.sequence_number.clone()));
                }
                None => tracing::error!(
                    event_id = %record.event_id,
                    event_name = %record.event_name,
                    "stream record without a valid `id` key; nothing to notify, skipped"
                ),
            }
        }
        let failures: Vec<(usize, Option<String>)> = futures::stream::iter(first_seen)
            .map(|(id, first)| async move {
                match self.pending.mark(window, &id).await {
                    Ok(()) => None,
                    Err(e) => {
                        tracing::warn!(record = %id, error = %e, "marking pending failed");
                        Some(first)
                    }
                }
            })
            .buffer_unordered(WRITE_CONCURRENCY)
            .filter_map(|failed| async move { failed })
            .collect()
            .await;
        let mut response = DynamoDbEventResponse::default();
        if let Some((_, sequence)) = failures.into_iter().min_by_key(|(position, _)| *position) {
            let mut failure = DynamoDbBatchItemFailure::default();
            failure.item_identifier = sequence;
            response.batch_item_failures.push(failure);
        } else {
            tracing::info!(
                records = event.records.len(),
                window = window.0,
                "changes captured"
            );
        }
        response
    }
}
