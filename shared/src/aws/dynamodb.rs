//! DynamoDB adapters: the service table (single table, `pk`/`sk`, TTL on `expires_at`)
//! and the records table (key `id`).
//!
//! Every item of the service table, its keys and attributes, who writes and who reads it:
//! `docs/architecture.md`, "Tables" (the one place the layout is written down; the key
//! functions here follow it).

use super::unavailable;
use crate::application::Application;
use crate::attempts::EndpointKey;
use crate::callback::CallbackUrl;
use crate::health::EndpointHealth;
use crate::oauth::{AccessToken, OAuthClient, sha256_hex};
use crate::poison::PoisonItem;
use crate::ports::{
    ApplicationStore, BackendError, BackendResult, ClientStore, FlushCursor, Page, PendingChanges,
    Person, PersonOutcome, RecordStore, SubscriptionStore, SyncStore, TokenStore,
};
use crate::record::RecordId;
use crate::subscription::{Registered, Subscription, Unregistered};
use crate::sync::{FullSync, SyncOutcomes};
use crate::window::{PENDING_TTL, WindowId};
use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::AttributeValue;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A DynamoDB item.
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

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn to_item<T: Serialize>(value: &T) -> Item {
    serde_dynamo::to_item(value).expect("domain types serialize to DynamoDB items")
}

fn from_item<T: DeserializeOwned>(item: Item) -> BackendResult<T> {
    serde_dynamo::from_item(item).map_err(|e| BackendError::Corrupt(e.to_string()))
}

fn epoch_secs(after: Duration) -> i64 {
    (SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        + after)
        .as_secs() as i64
}

/// An item with its keys next to the domain value's attributes.
#[derive(Serialize, Deserialize)]
struct Keyed<T> {
    pk: String,
    sk: String,
    #[serde(flatten)]
    value: T,
}

mod attempts;

/// The service table.
#[derive(Debug, Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
    attempt_retention: Duration,
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
    /// The adapter for `table`.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
            attempt_retention: Duration::from_secs(
                crate::attempts::DEFAULT_RETENTION_DAYS * 24 * 3600,
            ),
        }
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
            .set_item(Some(to_item(&Keyed { pk, sk, value })))
            .send()
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Replaces the `health` attribute of an existing item (an update, so it never
    /// overwrites a concurrent change to the rest of the item).
    async fn set_health(&self, pk: &str, sk: &str, health: &EndpointHealth) -> BackendResult<()> {
        let value = serde_dynamo::to_attribute_value::<_, AttributeValue>(health)
            .expect("health serializes");
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

const CLIENTS_PK: &str = "CLIENTS";

fn token_pk(token_hash: &str) -> String {
    format!("TOKEN#{token_hash}")
}

fn subscriptions_pk(record: &RecordId) -> String {
    format!("SUB#{record}")
}

fn subscription_key(record: &RecordId, callback: &CallbackUrl) -> (String, String) {
    (
        subscriptions_pk(record),
        format!("CALLBACK#{}", sha256_hex(callback.as_str())),
    )
}

fn pending_pk(window: WindowId) -> String {
    format!("PENDING#{}", window.0)
}

#[async_trait]
impl ClientStore for DynamoStore {
    async fn get_client(&self, client_id: &str) -> BackendResult<Option<OAuthClient>> {
        self.get(CLIENTS_PK, client_id).await
    }

    async fn put_client(&self, client: &OAuthClient) -> BackendResult<()> {
        self.put(CLIENTS_PK.into(), client.client_id.clone(), client)
            .await
    }

    async fn list_clients(&self) -> BackendResult<Vec<OAuthClient>> {
        self.query_all(CLIENTS_PK)
            .await?
            .into_iter()
            .map(|item| from_item::<Keyed<OAuthClient>>(item).map(|k| k.value))
            .collect()
    }
}

#[async_trait]
impl TokenStore for DynamoStore {
    async fn put_token(&self, token: &AccessToken) -> BackendResult<()> {
        // The token's own `expires_at` attribute is the table's TTL attribute.
        self.put(token_pk(&token.token_hash), "TOKEN".into(), token)
            .await
    }

    async fn get_token(&self, token_hash: &str) -> BackendResult<Option<AccessToken>> {
        self.get(&token_pk(token_hash), "TOKEN").await
    }
}

#[async_trait]
impl SubscriptionStore for DynamoStore {
    async fn get_subscription(
        &self,
        record: &RecordId,
        callback: &CallbackUrl,
    ) -> BackendResult<Option<Subscription>> {
        let (pk, sk) = subscription_key(record, callback);
        // Delivery reads it for its health: a moment stale is fine, at half the cost.
        self.get_value(&pk, &sk, false).await
    }

    async fn set_subscription_health(
        &self,
        record: &RecordId,
        callback: &CallbackUrl,
        health: &EndpointHealth,
    ) -> BackendResult<()> {
        let (pk, sk) = subscription_key(record, callback);
        self.set_health(&pk, &sk, health).await
    }

    async fn register(&self, subscription: &Subscription) -> BackendResult<Registered> {
        let (pk, sk) = subscription_key(&subscription.record, &subscription.callback);
        let item = to_item(&Keyed {
            pk: pk.clone(),
            sk: sk.clone(),
            value: subscription,
        });
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        if applied(result)? {
            self.put_client_webhook(subscription).await?;
            return Ok(Registered::Created);
        }
        let existing: Option<Subscription> = self.get(&pk, &sk).await?;
        Ok(match existing {
            Some(s) if s.client_id == subscription.client_id => {
                // Written again: a register whose index write failed is repeated
                // by its client, and one made before the index existed gains it.
                self.put_client_webhook(subscription).await?;
                Registered::AlreadyExists
            }
            Some(_) => Registered::OwnedByOther,
            // Removed between the two calls: the caller may simply retry.
            None => {
                return Err(BackendError::Unavailable(
                    "subscription changed concurrently".into(),
                ));
            }
        })
    }

    async fn unregister(
        &self,
        record: &RecordId,
        callback: &CallbackUrl,
        client_id: &str,
    ) -> BackendResult<Unregistered> {
        let (pk, sk) = subscription_key(record, callback);
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(&pk))
            .key("sk", s(&sk))
            .condition_expression("client_id = :client")
            .expression_attribute_values(":client", s(client_id))
            .send()
            .await;
        if !applied(result)? {
            return Ok(match self.get_item(&pk, &sk, true).await? {
                Some(_) => Unregistered::OwnedByOther,
                None => Unregistered::NotFound,
            });
        }
        self.client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(client_webhooks_pk(client_id)))
            .key(
                "sk",
                s(EndpointKey::subscription(record, callback).as_str()),
            )
            .send()
            .await
            .map_err(unavailable)?;
        Ok(Unregistered::Deleted)
    }

    async fn subscriptions_of(&self, record: &RecordId) -> BackendResult<Vec<Subscription>> {
        self.query_all(&subscriptions_pk(record))
            .await?
            .into_iter()
            .map(|item| from_item::<Keyed<Subscription>>(item).map(|k| k.value))
            .collect()
    }

    async fn client_webhooks(&self, client_id: &str) -> BackendResult<Vec<Subscription>> {
        let mut owned = Vec::new();
        for item in self.query_all(&client_webhooks_pk(client_id)).await? {
            let entry = from_item::<Keyed<ClientWebhook>>(item)?.value;
            if let Some(subscription) = self.owned_subscription(client_id, &entry).await? {
                owned.push(subscription);
            }
        }
        Ok(owned)
    }

    async fn client_webhook(
        &self,
        client_id: &str,
        webhook: &EndpointKey,
    ) -> BackendResult<Option<Subscription>> {
        let Some(entry) = self
            .get_value::<ClientWebhook>(&client_webhooks_pk(client_id), webhook.as_str(), false)
            .await?
        else {
            return Ok(None);
        };
        self.owned_subscription(client_id, &entry).await
    }
}

/// A client's webhook index entry: which subscription a webhook id names.
#[derive(Serialize, Deserialize)]
struct ClientWebhook {
    record: RecordId,
    callback: CallbackUrl,
}

fn client_webhooks_pk(client_id: &str) -> String {
    format!("CLIENTHOOKS#{client_id}")
}

impl DynamoStore {
    /// Adds every subscription to its client's webhook index (a `Scan` of the table, for
    /// subscriptions registered before the index existed); returns how many. Writing an
    /// entry again changes nothing.
    pub async fn index_client_webhooks(&self) -> BackendResult<usize> {
        let mut indexed = 0;
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .client
                .scan()
                .table_name(&self.table)
                .filter_expression("begins_with(pk, :sub)")
                .expression_attribute_values(":sub", s("SUB#"))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(unavailable)?;
            for item in out.items.unwrap_or_default() {
                let subscription = from_item::<Keyed<Subscription>>(item)?.value;
                self.put_client_webhook(&subscription).await?;
                indexed += 1;
            }
            start = out.last_evaluated_key;
            if start.is_none() {
                return Ok(indexed);
            }
        }
    }

    /// Adds a subscription to its client's webhook index.
    async fn put_client_webhook(&self, subscription: &Subscription) -> BackendResult<()> {
        self.put(
            client_webhooks_pk(&subscription.client_id),
            EndpointKey::subscription(&subscription.record, &subscription.callback)
                .as_str()
                .to_owned(),
            &ClientWebhook {
                record: subscription.record.clone(),
                callback: subscription.callback.clone(),
            },
        )
        .await
    }

    /// The subscription an index entry names, if it still exists and `client_id` owns it
    /// (an entry can outlive its subscription when an unregister failed half-way).
    async fn owned_subscription(
        &self,
        client_id: &str,
        entry: &ClientWebhook,
    ) -> BackendResult<Option<Subscription>> {
        let (pk, sk) = subscription_key(&entry.record, &entry.callback);
        Ok(self
            .get_value::<Subscription>(&pk, &sk, false)
            .await?
            .filter(|s| s.client_id == client_id))
    }
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

const APPS_PK: &str = "APPS";

fn api_key_pk(hash: &str) -> String {
    format!("APIKEY#{hash}")
}

#[derive(Serialize, Deserialize)]
struct ApiKeyIndex {
    application_id: String,
}

#[async_trait]
impl ApplicationStore for DynamoStore {
    async fn set_application_health(&self, id: &str, health: &EndpointHealth) -> BackendResult<()> {
        self.set_health(APPS_PK, id, health).await
    }

    async fn get_application(&self, id: &str) -> BackendResult<Option<Application>> {
        self.get(APPS_PK, id).await
    }

    async fn put_application(&self, application: &Application) -> BackendResult<()> {
        // The index first: an application is never reachable by a key without its item.
        let index = ApiKeyIndex {
            application_id: application.id.clone(),
        };
        self.put(
            api_key_pk(&application.api_key_hash),
            "APIKEY".into(),
            &index,
        )
        .await?;
        self.put(APPS_PK.into(), application.id.clone(), application)
            .await
    }

    async fn application_for_key(&self, api_key_hash: &str) -> BackendResult<Option<String>> {
        let index: Option<ApiKeyIndex> = self.get(&api_key_pk(api_key_hash), "APIKEY").await?;
        Ok(index.map(|i| i.application_id))
    }

    async fn list_applications(&self) -> BackendResult<Vec<Application>> {
        self.query_all(APPS_PK)
            .await?
            .into_iter()
            .map(|item| from_item::<Keyed<Application>>(item).map(|k| k.value))
            .collect()
    }
}

fn sync_pk(application: &str) -> String {
    format!("SYNC#{application}")
}

/// Counter shards of a sync's outcomes. Each delivery batch adds its outcomes to one of
/// them in one transaction; a transaction writes an item at most about 500 times a second
/// (2 write units of the 1 000 per item), so 8 shards take 4 000 batches a second.
const SYNC_COUNTER_SHARDS: u8 = 8;

/// Person markers per transaction (TransactWriteItems takes 100 actions; one is the counter).
const MARKERS_PER_TRANSACTION: usize = 99;

/// How long a person's "counted" marker is kept: longer than a job can stay on the queue
/// and its dead-letter queue (14 days each). TTL deletes it for free.
const SYNC_MARKER_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

fn sync_counter_key(application: &str, sync_id: &str, shard: u8) -> (String, String) {
    (
        format!("SYNCCOUNT#{application}#{sync_id}#{shard}"),
        "COUNT".to_owned(),
    )
}

/// Each marker has its own partition key: a fast sync writes thousands a second.
fn sync_marker_key(application: &str, sync_id: &str, person: &RecordId) -> (String, String) {
    (
        format!("SYNCDONE#{application}#{sync_id}#{person}"),
        "DONE".to_owned(),
    )
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

impl DynamoStore {
    /// Counts one transaction's worth of outcomes: a conditional put of each person's
    /// marker and one ADD to a counter shard, all or nothing. Persons already counted
    /// (the transaction is cancelled by their marker's condition) are dropped and the
    /// rest tried again; any other cancellation (a conflict, throttling) is an error.
    async fn count_chunk(
        &self,
        application: &str,
        sync_id: &str,
        mut chunk: Vec<&PersonOutcome>,
    ) -> BackendResult<SyncOutcomes> {
        let expires_at = epoch_secs(SYNC_MARKER_TTL);
        while let Some(first) = chunk.first() {
            let delivered = chunk.iter().filter(|o| o.delivered).count() as u64;
            let new = SyncOutcomes {
                delivered,
                failed: chunk.len() as u64 - delivered,
            };
            let shard = u8::from_str_radix(&sha256_hex(first.person.as_str())[..2], 16)
                .unwrap_or_default()
                % SYNC_COUNTER_SHARDS;
            let mut actions = Vec::with_capacity(chunk.len() + 1);
            for outcome in &chunk {
                let (pk, sk) = sync_marker_key(application, sync_id, &outcome.person);
                let put = aws_sdk_dynamodb::types::Put::builder()
                    .table_name(&self.table)
                    .set_item(Some(key(pk, sk)))
                    .item("delivered", AttributeValue::Bool(outcome.delivered))
                    .item("expires_at", number(expires_at))
                    .condition_expression("attribute_not_exists(pk)")
                    .build()
                    .map_err(build_error)?;
                actions.push(
                    aws_sdk_dynamodb::types::TransactWriteItem::builder()
                        .put(put)
                        .build(),
                );
            }
            let (pk, sk) = sync_counter_key(application, sync_id, shard);
            let add = aws_sdk_dynamodb::types::Update::builder()
                .table_name(&self.table)
                .set_key(Some(key(pk, sk)))
                .update_expression("ADD outcome_delivered :d, outcome_failed :f")
                .expression_attribute_values(":d", number(new.delivered))
                .expression_attribute_values(":f", number(new.failed))
                .build()
                .map_err(build_error)?;
            actions.push(
                aws_sdk_dynamodb::types::TransactWriteItem::builder()
                    .update(add)
                    .build(),
            );
            let result = self
                .client
                .transact_write_items()
                .set_transact_items(Some(actions))
                .send()
                .await;
            let e = match result {
                Ok(_) => return Ok(new),
                Err(e) => e,
            };
            let already_counted: HashSet<usize> = match e.as_service_error() {
                Some(
                    aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(
                        cancelled,
                    ),
                ) => cancelled
                    .cancellation_reasons()
                    .iter()
                    .enumerate()
                    .filter(|(i, r)| *i < chunk.len() && r.code() == Some("ConditionalCheckFailed"))
                    .map(|(i, _)| i)
                    .collect(),
                _ => HashSet::new(),
            };
            if already_counted.is_empty() {
                return Err(unavailable(e));
            }
            chunk = chunk
                .into_iter()
                .enumerate()
                .filter(|(i, _)| !already_counted.contains(i))
                .map(|(_, o)| o)
                .collect();
        }
        Ok(SyncOutcomes::default())
    }

    /// The sum of a sync's counter shards (one strongly consistent BatchGetItem).
    async fn sync_counters(&self, application: &str, sync_id: &str) -> BackendResult<SyncOutcomes> {
        let keys: Vec<Item> = (0..SYNC_COUNTER_SHARDS)
            .map(|n| {
                let (pk, sk) = sync_counter_key(application, sync_id, n);
                key(pk, sk)
            })
            .collect();
        let mut total = SyncOutcomes::default();
        for item in self.batch_get(keys, true).await? {
            let shard: SyncCounters = from_item(item)?;
            total.delivered += shard.outcome_delivered;
            total.failed += shard.outcome_failed;
        }
        Ok(total)
    }
}

/// The outcome counters of a counter shard (or, written by an earlier version, of the sync
/// item itself).
#[derive(Deserialize)]
struct SyncCounters {
    #[serde(default)]
    outcome_delivered: u64,
    #[serde(default)]
    outcome_failed: u64,
}

impl From<SyncCounters> for SyncOutcomes {
    fn from(c: SyncCounters) -> Self {
        Self {
            delivered: c.outcome_delivered,
            failed: c.outcome_failed,
        }
    }
}

#[async_trait]
impl SyncStore for DynamoStore {
    async fn save_sync(&self, sync: &FullSync) -> BackendResult<()> {
        // SET every driver field; the outcome counters and the lease are left alone.
        let fields = to_item(sync);
        let mut names = HashMap::new();
        let mut values = HashMap::new();
        let mut sets = Vec::new();
        for (i, (name, value)) in fields.into_iter().enumerate() {
            names.insert(format!("#f{i}"), name);
            values.insert(format!(":v{i}"), value);
            sets.push(format!("#f{i} = :v{i}"));
        }
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(sync_pk(&sync.application_id)))
            .key("sk", s(&sync.sync_id))
            .update_expression(format!("SET {}", sets.join(", ")))
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .send()
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn get_sync(
        &self,
        application: &str,
        sync_id: &str,
    ) -> BackendResult<Option<(FullSync, SyncOutcomes)>> {
        let Some(item) = self.get_item(&sync_pk(application), sync_id, true).await? else {
            return Ok(None);
        };
        if !item.contains_key("sync_id") {
            return Ok(None);
        }
        // Counters on the sync item itself were written by an earlier version; they still
        // count for syncs started before it.
        let legacy: SyncCounters = from_item(item.clone())?;
        let shards = self.sync_counters(application, sync_id).await?;
        let outcomes = SyncOutcomes {
            delivered: legacy.outcome_delivered + shards.delivered,
            failed: legacy.outcome_failed + shards.failed,
        };
        Ok(Some((from_item(item)?, outcomes)))
    }

    async fn count_sync_outcomes(
        &self,
        application: &str,
        sync_id: &str,
        outcomes: &[PersonOutcome],
    ) -> BackendResult<SyncOutcomes> {
        // A transaction may not touch one item twice: each person once per call.
        let mut seen = HashSet::new();
        let outcomes: Vec<&PersonOutcome> = outcomes
            .iter()
            .filter(|o| seen.insert(o.person.clone()))
            .collect();
        let mut total = SyncOutcomes::default();
        for chunk in outcomes.chunks(MARKERS_PER_TRANSACTION) {
            let new = self
                .count_chunk(application, sync_id, chunk.to_vec())
                .await?;
            total.delivered += new.delivered;
            total.failed += new.failed;
        }
        Ok(total)
    }

    async fn claim_sync_completion(
        &self,
        application: &str,
        sync_id: &str,
        claimant: &str,
    ) -> BackendResult<bool> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(sync_pk(application)))
            .key("sk", s(sync_id))
            .update_expression("SET completion_claimant = :me")
            .condition_expression(
                "attribute_exists(sync_id) AND (attribute_not_exists(completion_claimant) OR completion_claimant = :me)",
            )
            .expression_attribute_values(":me", s(claimant))
            .send()
            .await;
        applied(result)
    }

    async fn lease_sync(
        &self,
        application: &str,
        sync_id: &str,
        holder: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> BackendResult<bool> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(sync_pk(application)))
            .key("sk", s(sync_id))
            .update_expression("SET lease_until_ms = :until, lease_holder = :holder")
            .condition_expression(
                "attribute_not_exists(lease_until_ms) OR lease_until_ms <= :now OR lease_holder = :holder",
            )
            .expression_attribute_values(":until", AttributeValue::N(until_ms.to_string()))
            .expression_attribute_values(":now", AttributeValue::N(now_ms.to_string()))
            .expression_attribute_values(":holder", s(holder))
            .send()
            .await;
        applied(result)
    }

    async fn release_sync(
        &self,
        application: &str,
        sync_id: &str,
        holder: &str,
    ) -> BackendResult<()> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(sync_pk(application)))
            .key("sk", s(sync_id))
            .update_expression("SET lease_until_ms = :zero REMOVE lease_holder")
            .condition_expression("lease_holder = :holder")
            .expression_attribute_values(":zero", AttributeValue::N("0".into()))
            .expression_attribute_values(":holder", s(holder))
            .send()
            .await;
        // Expired and taken over by another step: theirs now.
        applied(result).map(|_| ())
    }
}

/// The records table (persons, key `id`).
#[derive(Debug, Clone)]
pub struct DynamoRecords {
    client: Client,
    table: String,
}

impl DynamoRecords {
    /// The adapter for `table`.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    /// Writes a person (tests and tools; the registry owns this table in production).
    pub async fn put_person(&self, id: &RecordId, person: &Person) -> BackendResult<()> {
        let mut person = person.clone();
        person.insert("id".into(), id.as_str().into());
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(to_item(&person)))
            .send()
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Deletes a person.
    pub async fn delete_person(&self, id: &RecordId) -> BackendResult<()> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .key("id", s(id.as_str()))
            .send()
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

#[async_trait]
impl RecordStore for DynamoRecords {
    async fn get_person(&self, id: &RecordId) -> BackendResult<Option<Person>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("id", s(id.as_str()))
            .send()
            .await
            .map_err(unavailable)?;
        out.item.map(from_item).transpose()
    }

    async fn scan_consented(
        &self,
        application: &str,
        after: Option<&str>,
        limit: usize,
    ) -> BackendResult<Page<(RecordId, Person)>> {
        let start = after.map(|id| HashMap::from([("id".to_owned(), s(id))]));
        let out = self
            .client
            .scan()
            .table_name(&self.table)
            .filter_expression("attribute_exists(consents.#app)")
            .expression_attribute_names("#app", application)
            .set_exclusive_start_key(start)
            .limit(limit as i32)
            .send()
            .await
            .map_err(unavailable)?;
        let next = out
            .last_evaluated_key
            .and_then(|key| key.get("id").and_then(|v| v.as_s().ok()).cloned());
        let mut items = Vec::new();
        for item in out.items.unwrap_or_default() {
            let person: Person = from_item(item)?;
            let id = person
                .get("id")
                .and_then(|v| v.as_str())
                .and_then(|id| RecordId::parse(id).ok())
                .ok_or_else(|| BackendError::Corrupt("a person without a valid id".into()))?;
            items.push((id, person));
        }
        Ok(Page { items, next })
    }
}
