//! DynamoDB adapters: the service table (single table, `pk`/`sk`, TTL on `expires_at`)
//! and the records table (key `id`).
//!
//! Every item of the service table, its keys and attributes, who writes and who reads it:
//! `docs/architecture.md`, "Tables" (the one place the layout is written down; the key
//! functions here follow it).

use super::unavailable;
use crate::clock::Clock;
use crate::health::EndpointHealth;
use crate::ports::{BackendError, BackendResult};
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::AttributeValue;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

pub type Item = HashMap<String, AttributeValue>;

/// Whether a conditional write took effect: `Ok(false)` when its condition did not hold
/// (DynamoDB's `ConditionalCheckFailedException`), an error for every other failure.
fn applied<T, E, R>(result: Result<T, SdkError<E, R>>) -> BackendResult<bool>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match result {
        Ok(_) => Ok(true),
        Err(e) if e.code() == Some("ConditionalCheckFailedException") => Ok(false),
        Err(e) => Err(unavailable(e)),
    }
}

/// The actions of a cancelled transaction whose condition did not hold (cancellation
/// reason `ConditionalCheckFailed`, the transaction's form of what [`applied`] reads), by
/// position; empty when it failed for any other reason (a conflict, throttling).
fn unmet_conditions<R>(e: &SdkError<TransactWriteItemsError, R>) -> HashSet<usize> {
    match e.as_service_error() {
        Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) => cancelled
            .cancellation_reasons()
            .iter()
            .enumerate()
            .filter(|(_, reason)| reason.code() == Some("ConditionalCheckFailed"))
            .map(|(i, _)| i)
            .collect(),
        _ => HashSet::new(),
    }
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn to_item<T: Serialize>(value: &T) -> BackendResult<Item> {
    serde_dynamo::to_item(value)
        .map_err(|e| BackendError::Corrupt(format!("a value does not serialize: {e}")))
}

fn from_item<T: DeserializeOwned>(item: Item) -> BackendResult<T> {
    serde_dynamo::from_item(item).map_err(|e| BackendError::Corrupt(e.to_string()))
}

/// An item with its keys next to the domain value's attributes.
#[derive(Serialize, Deserialize)]
struct Keyed<T> {
    pk: String,
    sk: String,
    #[serde(flatten)]
    value: T,
}

mod applications;
mod attempts;
pub use attempts::GROUP_SHARDS;
mod clients;
mod pending;
mod records;
mod subscriptions;
mod syncs;

pub use pending::{PENDING_SHARDS, pending_shard};
pub use records::DynamoRecords;

/// The service table.
#[derive(Debug, Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
    attempt_retention: Duration,
    /// Stamps the items' TTLs.
    clock: Arc<dyn Clock>,
}

/// Keys per `BatchGetItem` call (the service's limit).
const BATCH_GET_ITEMS: usize = 100;
/// Calls per chunk of a batch read whose keys come back unprocessed (throttling).
const BATCH_GET_TRIES: u32 = 5;

impl DynamoStore {
    /// The items under `keys` (those that exist), by `BatchGetItem` in chunks of the
    /// service's limit, reading unprocessed keys again a bounded number of times.
    async fn batch_get(&self, keys: Vec<Item>, consistent: bool) -> BackendResult<Vec<Item>> {
        let mut items = Vec::new();
        for chunk in keys.chunks(BATCH_GET_ITEMS) {
            let mut left = chunk.to_vec();
            for _ in 0..BATCH_GET_TRIES {
                if left.is_empty() {
                    break;
                }
                let request = aws_sdk_dynamodb::types::KeysAndAttributes::builder()
                    .set_keys(Some(std::mem::take(&mut left)))
                    .consistent_read(consistent)
                    .build()
                    .map_err(build_error)?;
                let out = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, request)
                    .send()
                    .await
                    .map_err(unavailable)?;
                items.extend(
                    out.responses
                        .and_then(|mut r| r.remove(&self.table))
                        .unwrap_or_default(),
                );
                left = out
                    .unprocessed_keys
                    .and_then(|mut u| u.remove(&self.table))
                    .map(|u| u.keys)
                    .unwrap_or_default();
            }
            if !left.is_empty() {
                return Err(BackendError::Unavailable(format!(
                    "a batch read left {} keys unread",
                    left.len()
                )));
            }
        }
        Ok(items)
    }
}

impl DynamoStore {
    pub fn new(client: Client, table: impl Into<String>, clock: Arc<dyn Clock>) -> Self {
        Self {
            client,
            table: table.into(),
            attempt_retention: Duration::from_secs(
                crate::attempts::DEFAULT_RETENTION_DAYS * 24 * 3600,
            ),
            clock,
        }
    }

    /// The TTL (epoch seconds) of an item that expires `after` from now.
    fn expires_after(&self, after: Duration) -> i64 {
        self.clock.now().plus(after).epoch_secs()
    }

    /// Keeps delivery attempts and their messages for `retention` (then TTL deletes them).
    pub fn with_attempt_retention(mut self, retention: Duration) -> Self {
        self.attempt_retention = retention;
        self
    }

    /// The raw item at (pk, sk), strongly consistent — tests read what is stored.
    #[cfg(any(test, feature = "testing"))]
    pub async fn raw_item(&self, pk: &str, sk: &str) -> BackendResult<Option<Item>> {
        self.get_item(pk, sk, true).await
    }

    /// An item; an eventually consistent read costs half a strongly consistent one.
    async fn get_item(&self, pk: &str, sk: &str, consistent: bool) -> BackendResult<Option<Item>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .consistent_read(consistent)
            .send()
            .await
            .map_err(unavailable)?;
        Ok(out.item)
    }

    /// A domain value, read strongly consistently (tokens are used right after issue).
    async fn get<T: DeserializeOwned>(&self, pk: &str, sk: &str) -> BackendResult<Option<T>> {
        self.get_value(pk, sk, true).await
    }

    async fn get_value<T: DeserializeOwned>(
        &self,
        pk: &str,
        sk: &str,
        consistent: bool,
    ) -> BackendResult<Option<T>> {
        match self.get_item(pk, sk, consistent).await? {
            Some(item) => Ok(Some(from_item::<Keyed<T>>(item)?.value)),
            None => Ok(None),
        }
    }

    async fn put<T: Serialize>(&self, pk: String, sk: String, value: &T) -> BackendResult<()> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(to_item(&Keyed { pk, sk, value })?))
            .send()
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Replaces the `health` attribute of an existing item (an update, so it never
    /// overwrites a concurrent change to the rest of the item).
    async fn set_health(&self, pk: &str, sk: &str, health: &EndpointHealth) -> BackendResult<()> {
        let value = serde_dynamo::to_attribute_value::<_, AttributeValue>(health)
            .map_err(|e| BackendError::Corrupt(format!("a health does not serialize: {e}")))?;
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .update_expression("SET health = :h")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":h", value)
            .send()
            .await;
        applied(result).map(|_| ())
    }

    /// One page of a partition, in sort-key order, after sort key `after`. Eventually
    /// consistent (half the cost): partitions read this way — a window closed a grace
    /// period ago, a record's subscriptions, the client and application lists — are not
    /// read right after being written.
    async fn query(
        &self,
        pk: &str,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> BackendResult<(Vec<Item>, Option<String>)> {
        let start =
            after.map(|sk| HashMap::from([("pk".to_owned(), s(pk)), ("sk".to_owned(), s(sk))]));
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(pk))
            .set_exclusive_start_key(start)
            .set_limit(limit.map(|l| l as i32))
            .consistent_read(false)
            .send()
            .await
            .map_err(unavailable)?;
        let next = out.last_evaluated_key.as_ref().and_then(sort_key);
        Ok((out.items.unwrap_or_default(), next))
    }

    /// Every item of a partition.
    async fn query_all(&self, pk: &str) -> BackendResult<Vec<Item>> {
        let mut items = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let (page, next) = self.query(pk, after.as_deref(), None).await?;
            items.extend(page);
            match next {
                Some(n) => after = Some(n),
                None => return Ok(items),
            }
        }
    }
}

/// An item's sort key.
fn sort_key(item: &Item) -> Option<String> {
    item.get("sk").and_then(|v| v.as_s().ok()).cloned()
}

fn key(pk: String, sk: String) -> Item {
    HashMap::from([("pk".to_owned(), s(pk)), ("sk".to_owned(), s(sk))])
}

fn build_error(e: aws_sdk_dynamodb::error::BuildError) -> BackendError {
    BackendError::Unavailable(format!("request not built: {e}"))
}

fn number(n: impl ToString) -> AttributeValue {
    AttributeValue::N(n.to_string())
}
