//! The `change-capture` Lambda: DynamoDB stream records of the records table become
//! pending entries: a batch's records in one call, each once.

use crate::ports::PendingChanges;
use crate::record::RecordId;
use crate::window::FlushWindows;
use aws_lambda_events::event::dynamodb::{Event, EventRecord};
use aws_lambda_events::event::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use std::collections::HashSet;
use std::sync::Arc;

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
    /// Marks the batch's changed records pending in one call, each once. When that fails
    /// it reports the batch's first stream record with a record id, so the stream retries
    /// the batch from there (marking is idempotent).
    pub async fn handle(&self, event: Event) -> DynamoDbEventResponse {
        let window = self.windows.current();
        let mut records: Vec<RecordId> = Vec::new();
        let mut seen = HashSet::new();
        let mut first: Option<Option<String>> = None;
        for record in &event.records {
            match changed_record(record) {
                Some(id) => {
                    first.get_or_insert_with(|| record.change.sequence_number.clone());
                    if seen.insert(id.clone()) {
                        records.push(id);
                    }
                }
                None => tracing::error!(
                    event_id = %record.event_id,
                    event_name = %record.event_name,
                    "stream record without a valid `id` key; nothing to notify, skipped"
                ),
            }
        }
        let mut response = DynamoDbEventResponse::default();
        let marked = match first {
            None => Ok(()),
            Some(_) => self.pending.mark_all(window, &records).await,
        };
        match (marked, first) {
            (Ok(()), _) | (Err(_), None) => tracing::info!(
                records = event.records.len(),
                window = window.0,
                "changes captured"
            ),
            (Err(e), Some(first)) => {
                tracing::warn!(records = records.len(), error = %e, "marking pending failed");
                let mut failure = DynamoDbBatchItemFailure::default();
                failure.item_identifier = first;
                response.batch_item_failures.push(failure);
            }
        }
        response
    }
}
