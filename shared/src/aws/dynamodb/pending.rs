//! Pending changes by window, the flush's cursor and lease, and the poison items the
//! flush set aside, in the service table.

use super::unavailable;
use super::{DynamoStore, Keyed, applied, epoch_secs, from_item, s, sort_key};
use crate::poison::PoisonItem;
use crate::ports::{BackendResult, FlushCursor, Page, PendingChanges};
use crate::record::RecordId;
use crate::window::{PENDING_TTL, WindowId};
use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use serde::{Deserialize, Serialize};

fn pending_pk(window: WindowId) -> String {
    format!("PENDING#{}", window.0)
}

/// Poison items live in one partition: there are few, and an operator lists them all.
const POISON_PK: &str = "POISON";

/// The body of a pending-change item.
#[derive(Serialize, Deserialize)]
struct Pending {
    record: RecordId,
    /// TTL: DynamoDB deletes the entry (for free) some time after this.
    expires_at: i64,
}

#[async_trait]
impl PendingChanges for DynamoStore {
    async fn mark(&self, window: WindowId, record: &RecordId) -> BackendResult<()> {
        let pending = Pending {
            record: record.clone(),
            expires_at: epoch_secs(PENDING_TTL),
        };
        self.put(pending_pk(window), record.to_string(), &pending)
            .await
    }

    async fn page(
        &self,
        window: WindowId,
        after: Option<&str>,
        limit: usize,
    ) -> BackendResult<Page<RecordId>> {
        // One more than the page: DynamoDB sets LastEvaluatedKey whenever the limit is
        // reached, more items or not, which would end a window with an empty page.
        let (mut items, mut next) = self
            .query(&pending_pk(window), after, Some(limit + 1))
            .await?;
        if items.len() > limit {
            items.truncate(limit);
            next = items.last().and_then(sort_key);
        }
        // The record is read from the sort key, which every item has: a damaged attribute
        // must not stop the flush at this page for every later window. A key that is not a
        // record id was not written by change capture and names no record: skipped, loudly.
        let items = items
            .iter()
            .filter_map(|item| {
                let key = item.get("sk").and_then(|v| v.as_s().ok());
                match key.map(|k| RecordId::parse(k)) {
                    Some(Ok(record)) => Some(record),
                    _ => {
                        tracing::error!(window = window.0, key = ?key, "a pending entry whose key is not a record id; skipped");
                        None
                    }
                }
            })
            .collect();
        Ok(Page { items, next })
    }

    async fn cursor(&self) -> BackendResult<Option<FlushCursor>> {
        self.get("FLUSH", "CURSOR").await
    }

    async fn save_cursor(&self, cursor: &FlushCursor) -> BackendResult<()> {
        self.put("FLUSH".into(), "CURSOR".into(), cursor).await
    }

    async fn lease_flush(&self, holder: &str, now_ms: i64, until_ms: i64) -> BackendResult<bool> {
        // Its own item: saving the cursor replaces the whole CURSOR item.
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s("FLUSH"))
            .key("sk", s("LEASE"))
            .update_expression("SET holder = :holder, lease_until_ms = :until")
            .condition_expression("attribute_not_exists(lease_until_ms) OR lease_until_ms <= :now")
            .expression_attribute_values(":holder", s(holder))
            .expression_attribute_values(":until", AttributeValue::N(until_ms.to_string()))
            .expression_attribute_values(":now", AttributeValue::N(now_ms.to_string()))
            .send()
            .await;
        applied(result)
    }

    async fn release_flush(&self, holder: &str) -> BackendResult<()> {
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s("FLUSH"))
            .key("sk", s("LEASE"))
            .condition_expression("holder = :holder")
            .expression_attribute_values(":holder", s(holder))
            .send()
            .await;
        // Expired and taken over by another flush: theirs now.
        applied(result).map(|_| ())
    }

    async fn set_aside(&self, item: &PoisonItem) -> BackendResult<()> {
        self.put(POISON_PK.into(), item.id(), item).await
    }

    async fn poison_items(&self) -> BackendResult<Vec<PoisonItem>> {
        self.query_all(POISON_PK)
            .await?
            .into_iter()
            .map(|item| from_item::<Keyed<PoisonItem>>(item).map(|k| k.value))
            .collect()
    }

    async fn remove_poison(&self, id: &str) -> BackendResult<bool> {
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(POISON_PK))
            .key("sk", s(id))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
            .send()
            .await
            .map_err(unavailable)?;
        Ok(out.attributes.is_some_and(|a| !a.is_empty()))
    }
}
