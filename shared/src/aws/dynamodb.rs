//! DynamoDB adapters: the service table (single table, `pk`/`sk`, TTL on `expires_at`)
//! and the records table (key `id`).
//!
//! | item | pk | sk | notes |
//! |---|---|---|---|
//! | OAuth client | `CLIENTS` | client id | one partition: listing is one Query |
//! | access token | `TOKEN#<sha256 of token>` | `TOKEN` | `expires_at` TTL |
//! | subscription | `SUB#<record>` | `CALLBACK#<sha256 of url>` | the URL itself is an attribute (sort keys max 1 KiB) |
//! | pending change | `PENDING#<window>` | record id | one write per change, `expires_at` TTL, never deleted by the flush |
//! | flush cursor | `FLUSH` | `CURSOR` | window + page position |

use crate::callback::CallbackUrl;
use crate::oauth::{AccessToken, OAuthClient, sha256_hex};
use crate::ports::{
    BackendError, BackendResult, ClientStore, FlushCursor, Page, PendingChanges, Person,
    RecordStore, SubscriptionStore, TokenStore,
};
use crate::record::RecordId;
use crate::subscription::{Registered, Subscription, Unregistered};
use crate::window::WindowId;
use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::types::AttributeValue;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A DynamoDB item.
pub type Item = HashMap<String, AttributeValue>;

/// How long pending entries live after their last write (then TTL deletes them for free).
pub const PENDING_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

fn unavailable<E: std::error::Error + 'static, R: std::fmt::Debug>(
    e: SdkError<E, R>,
) -> BackendError {
    BackendError::Unavailable(DisplayErrorContext(&e).to_string())
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

/// The service table.
#[derive(Debug, Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
}

impl DynamoStore {
    /// The adapter for `table`.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    /// The raw item at (pk, sk) — tests read what is stored.
    pub async fn raw_item(&self, pk: &str, sk: &str) -> BackendResult<Option<Item>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .consistent_read(true)
            .send()
            .await
            .map_err(unavailable)?;
        Ok(out.item)
    }

    async fn get<T: DeserializeOwned>(&self, pk: &str, sk: &str) -> BackendResult<Option<T>> {
        match self.raw_item(pk, sk).await? {
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

    /// One page of a partition, in sort-key order, after sort key `after`.
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
            .consistent_read(true)
            .send()
            .await
            .map_err(unavailable)?;
        let next = out
            .last_evaluated_key
            .and_then(|key| key.get("sk").and_then(|v| v.as_s().ok()).cloned());
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

const CLIENTS_PK: &str = "CLIENTS";

fn token_pk(token_hash: &str) -> String {
    format!("TOKEN#{token_hash}")
}

fn subscription_key(record: &RecordId, callback: &CallbackUrl) -> (String, String) {
    (
        format!("SUB#{record}"),
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
        match result {
            Ok(_) => Ok(Registered::Created),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                let existing: Option<Subscription> = self.get(&pk, &sk).await?;
                Ok(match existing {
                    Some(s) if s.client_id == subscription.client_id => Registered::AlreadyExists,
                    Some(_) => Registered::OwnedByOther,
                    // Removed between the two calls: the caller may simply retry.
                    None => {
                        return Err(BackendError::Unavailable(
                            "subscription changed concurrently".into(),
                        ));
                    }
                })
            }
            Err(e) => Err(unavailable(e)),
        }
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
        match result {
            Ok(_) => Ok(Unregistered::Deleted),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(match self.raw_item(&pk, &sk).await? {
                    Some(_) => Unregistered::OwnedByOther,
                    None => Unregistered::NotFound,
                })
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn subscriptions_of(&self, record: &RecordId) -> BackendResult<Vec<Subscription>> {
        self.query_all(&format!("SUB#{record}"))
            .await?
            .into_iter()
            .map(|item| from_item::<Keyed<Subscription>>(item).map(|k| k.value))
            .collect()
    }
}

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
        let (items, next) = self.query(&pending_pk(window), after, Some(limit)).await?;
        let items = items
            .into_iter()
            .map(|item| from_item::<Keyed<Pending>>(item).map(|k| k.value.record))
            .collect::<BackendResult<Vec<_>>>()?;
        Ok(Page { items, next })
    }

    async fn cursor(&self) -> BackendResult<Option<FlushCursor>> {
        self.get("FLUSH", "CURSOR").await
    }

    async fn save_cursor(&self, cursor: &FlushCursor) -> BackendResult<()> {
        self.put("FLUSH".into(), "CURSOR".into(), cursor).await
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
}
