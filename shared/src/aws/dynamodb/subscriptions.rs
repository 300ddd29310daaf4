//! ORCID-style subscriptions and each client's webhook index in the service table.

use super::unavailable;
use super::{DynamoStore, Item, Keyed, applied, from_item, s, to_item};
use crate::attempts::EndpointKey;
use crate::callback::CallbackUrl;
use crate::health::EndpointHealth;
use crate::ids::ClientId;
use crate::oauth::sha256_hex;
use crate::ports::{BackendError, BackendResult, SubscriptionStore};
use crate::record::RecordId;
use crate::subscription::{Registered, Subscription, Unregistered};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

fn subscriptions_pk(record: &RecordId) -> String {
    format!("SUB#{record}")
}

fn subscription_key(record: &RecordId, callback: &CallbackUrl) -> (String, String) {
    (
        subscriptions_pk(record),
        format!("CALLBACK#{}", sha256_hex(callback.as_str())),
    )
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
        })?;
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
        match Registered::given(existing.as_ref(), subscription) {
            // Removed between the two calls: the caller may simply retry.
            Registered::Created => Err(BackendError::Unavailable(
                "subscription changed concurrently".into(),
            )),
            Registered::AlreadyExists => {
                // Written again: a register whose index write failed is repeated
                // by its client, and one made before the index existed gains it.
                self.put_client_webhook(subscription).await?;
                Ok(Registered::AlreadyExists)
            }
            Registered::OwnedByOther => Ok(Registered::OwnedByOther),
        }
    }

    async fn unregister(
        &self,
        record: &RecordId,
        callback: &CallbackUrl,
        client_id: &ClientId,
    ) -> BackendResult<Unregistered> {
        let (pk, sk) = subscription_key(record, callback);
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(&pk))
            .key("sk", s(&sk))
            .condition_expression("client_id = :client")
            .expression_attribute_values(":client", s(client_id.as_str()))
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

    async fn client_webhooks(&self, client_id: &ClientId) -> BackendResult<Vec<Subscription>> {
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
        client_id: &ClientId,
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

fn client_webhooks_pk(client_id: &ClientId) -> String {
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
        client_id: &ClientId,
        entry: &ClientWebhook,
    ) -> BackendResult<Option<Subscription>> {
        let (pk, sk) = subscription_key(&entry.record, &entry.callback);
        Ok(self
            .get_value::<Subscription>(&pk, &sk, false)
            .await?
            .filter(|s| s.is_owned_by(client_id)))
    }
}
