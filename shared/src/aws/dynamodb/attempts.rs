//! The attempt log in the service table: one item per attempt in its endpoint's partition
//! (time-ordered sort key, so a listing is one Query read backwards), and one item per
//! kept message. A delivery batch writes all of them with `BatchWriteItem`.

use super::{DynamoStore, Item, Keyed, from_item, s, to_item, unavailable};
use crate::attempts::{Attempt, EndpointKey, LoggedAttempt, Recovery, StatusFilter, StoredMessage};
use crate::job::{DeliveryJob, MessageId};
use crate::ports::{AttemptLog, BackendError, BackendResult, Page};
use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// Items per `BatchWriteItem` call (the service's limit).
const BATCH_WRITE_ITEMS: usize = 25;
/// Tries of a batch write whose items come back unprocessed (throttling).
const BATCH_WRITE_TRIES: u32 = 5;
/// Query pages one read of the log may take (each at most 1 MB): bounds the cost of a
/// listing whose filter admits few attempts.
const MAX_QUERY_PAGES: usize = 20;
/// The most distinct failed messages one recovery looks at.
const MAX_FAILED_CANDIDATES: usize = 20_000;

fn attempts_pk(endpoint: &EndpointKey) -> String {
    format!("ATTEMPTS#{}", endpoint.as_str())
}

fn messages_pk(endpoint: &EndpointKey) -> String {
    format!("MESSAGE#{}", endpoint.as_str())
}

/// An attempt as stored.
#[derive(Serialize, Deserialize)]
struct AttemptItem {
    #[serde(flatten)]
    attempt: Attempt,
    expires_at: i64,
}

/// A recovery as stored.
#[derive(Serialize, Deserialize)]
struct RecoveryItem {
    #[serde(flatten)]
    recovery: Recovery,
    expires_at: i64,
}

/// A kept message as stored: the job as JSON text (a person is arbitrary JSON, kept
/// exactly as it was sent).
#[derive(Serialize, Deserialize)]
struct MessageItem {
    endpoint: EndpointKey,
    job: String,
    last_attempt: u32,
    last_attempt_ms: i64,
    last_outcome: crate::attempts::OutcomeClass,
    expires_at: i64,
}

impl MessageItem {
    fn into_message(self) -> BackendResult<StoredMessage> {
        let job: DeliveryJob = serde_json::from_str(&self.job)
            .map_err(|e| BackendError::Corrupt(format!("kept message: {e}")))?;
        Ok(StoredMessage {
            endpoint: self.endpoint,
            job,
            last_attempt: self.last_attempt,
            last_attempt_ms: self.last_attempt_ms,
            last_outcome: self.last_outcome,
        })
    }
}

impl DynamoStore {
    /// When an item about a moment `at_ms` expires.
    fn attempt_expiry(&self, at_ms: i64) -> i64 {
        at_ms.max(0) / 1000 + self.attempt_retention.as_secs() as i64
    }

    /// Writes items with `BatchWriteItem`, 25 per call, sending unprocessed ones again.
    async fn batch_put(&self, items: Vec<Item>) -> BackendResult<()> {
        for chunk in items.chunks(BATCH_WRITE_ITEMS) {
            let mut requests: Vec<WriteRequest> = chunk
                .iter()
                .map(|item| {
                    PutRequest::builder()
                        .set_item(Some(item.clone()))
                        .build()
                        .map(|put| WriteRequest::builder().put_request(put).build())
                        .map_err(super::build_error)
                })
                .collect::<BackendResult<_>>()?;
            let mut tries = 0;
            while !requests.is_empty() {
                tries += 1;
                if tries > BATCH_WRITE_TRIES {
                    return Err(BackendError::Unavailable(format!(
                        "{} attempt log items left unwritten",
                        requests.len()
                    )));
                }
                if tries > 1 {
                    tokio::time::sleep(Duration::from_millis(25 << tries)).await;
                }
                let out = self
                    .client
                    .batch_write_item()
                    .request_items(&self.table, requests)
                    .send()
                    .await
                    .map_err(unavailable)?;
                requests = out
                    .unprocessed_items
                    .and_then(|mut u| u.remove(&self.table))
                    .unwrap_or_default();
            }
        }
        Ok(())
    }
}

#[async_trait]
impl AttemptLog for DynamoStore {
    async fn record(&self, attempts: &[LoggedAttempt]) -> BackendResult<()> {
        // One item per key: a batch may hold the same job twice (the queue delivers at
        // least once), and BatchWriteItem refuses duplicate keys.
        let mut items: BTreeMap<(String, String), Item> = BTreeMap::new();
        for logged in attempts {
            let a = &logged.attempt;
            let expires_at = self.attempt_expiry(a.at_ms);
            let (pk, sk) = (attempts_pk(&a.endpoint), a.sort_key());
            items.insert(
                (pk.clone(), sk.clone()),
                to_item(&Keyed {
                    pk,
                    sk,
                    value: AttemptItem {
                        attempt: a.clone(),
                        expires_at,
                    },
                }),
            );
            let message = StoredMessage::of(logged);
            let job = serde_json::to_string(&message.job)
                .map_err(|e| BackendError::Corrupt(format!("job does not serialize: {e}")))?;
            let (pk, sk) = (messages_pk(&a.endpoint), a.message_id.as_str().to_owned());
            items.insert(
                (pk.clone(), sk.clone()),
                to_item(&Keyed {
                    pk,
                    sk,
                    value: MessageItem {
                        endpoint: message.endpoint,
                        job,
                        last_attempt: message.last_attempt,
                        last_attempt_ms: message.last_attempt_ms,
                        last_outcome: message.last_outcome,
                        expires_at,
                    },
                }),
            );
        }
        self.batch_put(items.into_values().collect()).await
    }

    async fn attempts(
        &self,
        endpoint: &EndpointKey,
        filter: StatusFilter,
        after: Option<&str>,
        limit: usize,
    ) -> BackendResult<Page<Attempt>> {
        // One more than the page, to know whether another follows (DynamoDB sets
        // LastEvaluatedKey whenever a query's limit is reached, more items or not).
        let mut items: Vec<Attempt> = Vec::new();
        let mut before = after.map(str::to_owned);
        for _ in 0..MAX_QUERY_PAGES {
            let want = (limit + 1).saturating_sub(items.len());
            if want == 0 {
                break;
            }
            let mut query = self
                .client
                .query()
                .table_name(&self.table)
                .expression_attribute_values(":pk", s(attempts_pk(endpoint)))
                .scan_index_forward(false)
                .limit(want.min(1000) as i32);
            query = match &before {
                Some(b) => query
                    .key_condition_expression("pk = :pk AND sk < :before")
                    .expression_attribute_values(":before", s(b.clone())),
                None => query.key_condition_expression("pk = :pk"),
            };
            query = match filter {
                StatusFilter::All => query,
                StatusFilter::Acked | StatusFilter::Failed => query
                    .filter_expression(if filter == StatusFilter::Acked {
                        "#outcome = :acked"
                    } else {
                        "#outcome <> :acked"
                    })
                    .expression_attribute_names("#outcome", "outcome")
                    .expression_attribute_values(":acked", s("acked")),
            };
            let out = query.send().await.map_err(unavailable)?;
            for item in out.items.unwrap_or_default() {
                items.push(from_item::<Keyed<AttemptItem>>(item)?.value.attempt);
            }
            before = out.last_evaluated_key.as_ref().and_then(super::sort_key);
            if before.is_none() {
                break;
            }
        }
        if items.len() > limit {
            items.truncate(limit);
            before = items.last().map(Attempt::sort_key);
        }
        Ok(Page {
            items,
            next: before,
        })
    }

    async fn failed_since(
        &self,
        endpoint: &EndpointKey,
        since_ms: i64,
        limit: usize,
    ) -> BackendResult<Page<StoredMessage>> {
        // The failed attempts since then (the time range of the endpoint's log, read
        // forwards), each message once; then each message's latest outcome.
        let mut ids: Vec<MessageId> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut start: Option<Item> = None;
        let mut more = false;
        'pages: loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND sk >= :from")
                .filter_expression("#outcome <> :acked")
                .expression_attribute_names("#outcome", "outcome")
                .expression_attribute_values(":pk", s(attempts_pk(endpoint)))
                .expression_attribute_values(":from", s(format!("{:013}", since_ms.max(0))))
                .expression_attribute_values(":acked", s("acked"))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(unavailable)?;
            for item in out.items.unwrap_or_default() {
                let attempt = from_item::<Keyed<AttemptItem>>(item)?.value.attempt;
                if seen.insert(attempt.message_id.clone()) {
                    if ids.len() == MAX_FAILED_CANDIDATES {
                        more = true;
                        break 'pages;
                    }
                    ids.push(attempt.message_id);
                }
            }
            start = out.last_evaluated_key;
            if start.is_none() {
                break;
            }
        }
        let mut items = Vec::new();
        for id in ids {
            let Some(item) = self
                .get_item(&messages_pk(endpoint), id.as_str(), true)
                .await?
            else {
                continue;
            };
            let message = from_item::<Keyed<MessageItem>>(item)?
                .value
                .into_message()?;
            if message.last_outcome.is_acked() {
                continue;
            }
            if items.len() == limit {
                more = true;
                break;
            }
            items.push(message);
        }
        Ok(Page {
            next: more.then(|| "more".to_owned()),
            items,
        })
    }

    async fn messages(
        &self,
        endpoint: &EndpointKey,
        ids: &[MessageId],
    ) -> BackendResult<Vec<StoredMessage>> {
        let keys: Vec<Item> = ids
            .iter()
            .map(|id| {
                Item::from([
                    ("pk".to_owned(), s(messages_pk(endpoint))),
                    ("sk".to_owned(), s(id.as_str())),
                ])
            })
            .collect();
        let mut kept = Vec::new();
        for item in self.batch_get(keys, false).await? {
            kept.push(
                from_item::<Keyed<MessageItem>>(item)?
                    .value
                    .into_message()?,
            );
        }
        Ok(kept)
    }

    async fn save_recovery(&self, recovery: &Recovery) -> BackendResult<()> {
        self.put(
            format!("RECOVERY#{}", recovery.endpoint.as_str()),
            recovery.id.clone(),
            &RecoveryItem {
                recovery: recovery.clone(),
                expires_at: self.attempt_expiry(recovery.started_at_ms),
            },
        )
        .await
    }

    async fn recovery(&self, endpoint: &EndpointKey, id: &str) -> BackendResult<Option<Recovery>> {
        Ok(self
            .get_value::<RecoveryItem>(&format!("RECOVERY#{}", endpoint.as_str()), id, true)
            .await?
            .map(|r| r.recovery))
    }

    async fn message(
        &self,
        endpoint: &EndpointKey,
        message_id: &MessageId,
    ) -> BackendResult<Option<(StoredMessage, Vec<Attempt>)>> {
        let Some(item) = self
            .get_item(&messages_pk(endpoint), message_id.as_str(), false)
            .await?
        else {
            return Ok(None);
        };
        let message = from_item::<Keyed<MessageItem>>(item)?
            .value
            .into_message()?;
        // Its attempts lie between the job's creation and its latest attempt.
        let from = format!("{:013}", message.created_ms().max(0));
        let to = format!("{:013}~", message.last_attempt_ms.max(0));
        let mut attempts = Vec::new();
        let mut start: Option<Item> = None;
        for _ in 0..MAX_QUERY_PAGES {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND sk BETWEEN :from AND :to")
                .filter_expression("message_id = :m")
                .expression_attribute_values(":pk", s(attempts_pk(endpoint)))
                .expression_attribute_values(":from", s(from.clone()))
                .expression_attribute_values(":to", s(to.clone()))
                .expression_attribute_values(":m", AttributeValue::S(message_id.as_str().into()))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(unavailable)?;
            for item in out.items.unwrap_or_default() {
                attempts.push(from_item::<Keyed<AttemptItem>>(item)?.value.attempt);
            }
            start = out.last_evaluated_key;
            if start.is_none() {
                break;
            }
        }
        Ok(Some((message, attempts)))
    }
}
