//! The attempt log in the service table. DynamoDB bills each item written as at least one
//! write unit, so the attempts nearly every message has — its first attempt, acknowledged
//! ([`LoggedAttempt::is_quiet`]) — are not written one item each: a delivery batch's quiet
//! attempts are written as one item per owner (an application, or the ORCID client), with
//! the messages they sent. Every other attempt (a failure, a retry, an owner's redelivery)
//! is written on its own with its kept message, as a recovery must find it. The write-unit
//! arithmetic is in docs/architecture.md ("The attempt log's items").
//!
//! Its items (quiet attempt groups and their locators, attempts, kept messages,
//! recoveries), their keys and attributes: `docs/architecture.md`, "Service table".
//!
//! Reading: an endpoint's attempts are its attempt items merged with its entries in its
//! owner's groups, newest first; a message's attempts are its attempt items and its
//! entries in the groups its locators name, and its latest outcome is the latest of them.

use super::{DynamoStore, Item, Keyed, from_item, s, to_item, unavailable};
use crate::attempts::{
    Attempt, EndpointKey, EndpointOwner, FailingMessages, LogEndpoint, LoggedAttempt, OutcomeClass,
    QuietEntry, Recovery, RecoveryId, StatusFilter, StoredMessage,
};
use crate::clock::Timestamp;
use crate::job::{DeliveryJob, MessageId};
use crate::ports::{AttemptLog, BackendError, BackendResult, Page};
use async_trait::async_trait;
use aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder;
use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::ControlFlow;
use std::time::Duration;

/// Items per `BatchWriteItem` call (the service's limit).
const BATCH_WRITE_ITEMS: usize = 25;
/// Tries of a batch write whose items come back unprocessed (throttling).
const BATCH_WRITE_TRIES: u32 = 5;
/// Query pages one read of the log may take (each at most 1 MB): bounds the cost of a
/// listing whose filter admits few attempts. A listing's first pages read each of its
/// owner's group partitions once.
const MAX_QUERY_PAGES: usize = 20 + GROUP_SHARDS as usize + 1;
/// The most distinct failed messages one recovery looks at.
const MAX_FAILED_CANDIDATES: usize = 20_000;

/// Runs `query` page after page, at most `max_pages`, handing each item to `visit` until it
/// answers `Break`; true when the query was read to its end.
async fn each_item(
    query: QueryFluentBuilder,
    max_pages: usize,
    mut visit: impl FnMut(Item) -> BackendResult<ControlFlow<()>>,
) -> BackendResult<bool> {
    let mut start: Option<Item> = None;
    for _ in 0..max_pages {
        let out = query
            .clone()
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(unavailable)?;
        for item in out.items.unwrap_or_default() {
            if visit(item)?.is_break() {
                return Ok(false);
            }
        }
        start = out.last_evaluated_key;
        if start.is_none() {
            return Ok(true);
        }
    }
    Ok(false)
}
/// The most entry bytes in one quiet group: DynamoDB's item limit is 400 KB, keys and
/// attribute names included.
const GROUP_BYTES: usize = 350_000;
/// The attempts of one quiet group lie within this of its newest (a batch's attempts are
/// made together; a longer batch is split), so a listing that continues before a time
/// reads the groups up to this much newer than it, and no older one needlessly.
pub const GROUP_SPAN_MS: i64 = 60_000;
/// Groups read by a listing's first page of them; each later page reads twice as many,
/// up to [`MAX_GROUP_PAGE`].
const FIRST_GROUP_PAGE: i32 = 4;
const MAX_GROUP_PAGE: i32 = 64;
/// Locator queries in flight at once: a message's tag in every group partition.
const LOCATOR_QUERIES: usize = GROUP_SHARDS as usize + 1;
/// Kept messages read per batch when a recovery checks their latest outcomes.
const HOMES_PER_READ: usize = 100;

fn attempts_pk(endpoint: &EndpointKey) -> String {
    format!("ATTEMPTS#{}", endpoint.as_str())
}

fn recoveries_pk(endpoint: &EndpointKey) -> String {
    format!("RECOVERY#{}", endpoint.as_str())
}

fn messages_pk(endpoint: &EndpointKey) -> String {
    format!("MESSAGE#{}", endpoint.as_str())
}

/// Partitions an owner's quiet groups, and their locators, are spread over: one owner's
/// busiest traffic (100 000 deliveries a second, a group of 100 per batch: 1 000 groups of
/// 2-4 write units a second) stays under a third of a partition's 1 000 write units a
/// second in each (docs/architecture.md, "The attempt log's items").
pub const GROUP_SHARDS: u8 = 16;

/// One of an owner's group partitions: a shard, or the single partition earlier
/// versions wrote (`None`), still read until its groups expire.
type GroupPartition = Option<u8>;

/// Every group partition of an owner, the earlier single one first.
fn group_partitions() -> impl Iterator<Item = GroupPartition> {
    std::iter::once(None).chain((0..GROUP_SHARDS).map(Some))
}

/// The shard a group is written to: from its sort key, so a locator, which holds the sort
/// key, names the partition too.
fn group_shard(sk: &str) -> u8 {
    Sha256::digest(sk.as_bytes())[0] % GROUP_SHARDS
}

fn group_pk(owner: &EndpointOwner, partition: GroupPartition) -> String {
    match partition {
        None => format!("GROUP#{}", owner.key()),
        Some(shard) => format!("GROUP#{}#{shard}", owner.key()),
    }
}

fn locator_pk(owner: &EndpointOwner, tag: &str, partition: GroupPartition) -> String {
    match partition {
        None => format!("LOCATE#{}#{tag}", owner.key()),
        Some(shard) => format!("LOCATE#{}#{tag}#{shard}", owner.key()),
    }
}

/// Epoch ms as the 13 digits that start attempt and group sort keys.
fn ms_key(ms: i64) -> String {
    format!("{:013}", ms.max(0))
}

/// The time a page position starts with, if it does (positions are sort keys or bounds
/// made by [`Listing`], but a cursor comes from a client and may be anything).
fn position_ms(position: &str) -> Option<i64> {
    position
        .get(..13)
        .filter(|d| d.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|d| d.parse().ok())
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
    last_attempt_ms: Timestamp,
    last_outcome: OutcomeClass,
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
            last_attempt_at: self.last_attempt_ms,
            last_outcome: self.last_outcome,
        })
    }
}

/// A quiet group as stored: its entries as one JSON array in one attribute (DynamoDB
/// counts attribute names in an item's size, so nested attributes would pay every
/// field's name in every entry), deflated in [`PACKED_ENTRIES`]; groups written before
/// that keep the plain text in `entries`.
#[derive(Serialize, Deserialize)]
struct GroupItem {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    entries: Option<String>,
    expires_at: i64,
}

/// The binary attribute holding a group's entries deflated. DynamoDB bills a write by the
/// item's bytes, and a batch's entries repeat their field names, callback URL prefixes,
/// client, window and creation time: deflated they take about a fifth of the text, the
/// attempt log's largest share of a notification's cost.
const PACKED_ENTRIES: &str = "z";

/// The entries' JSON text, deflated.
fn pack(entries: &str) -> BackendResult<Vec<u8>> {
    use std::io::Write;
    let mut encoder =
        flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    encoder
        .write_all(entries.as_bytes())
        .and_then(|()| encoder.finish())
        .map_err(|e| BackendError::Corrupt(format!("deflating an attempt group: {e}")))
}

/// A group's deflated entries as text, refusing more than a group can hold.
fn unpack(packed: &[u8]) -> BackendResult<String> {
    use std::io::Read;
    let mut text = String::new();
    flate2::read::DeflateDecoder::new(packed)
        .take(GROUP_BYTES as u64 + 1)
        .read_to_string(&mut text)
        .map_err(|e| BackendError::Corrupt(format!("attempt group: {e}")))?;
    if text.len() > GROUP_BYTES {
        return Err(BackendError::Corrupt(
            "attempt group: inflates past a group's size".into(),
        ));
    }
    Ok(text)
}

/// A locator as stored: its keys name the group.
#[derive(Serialize, Deserialize)]
struct LocatorItem {
    expires_at: i64,
}

/// A group's sort key: its newest attempt's time, then a hash of its entries (the same
/// group written again is the same item).
fn group_sk(newest_ms: i64, entries: &str) -> String {
    let hash = Sha256::digest(entries.as_bytes());
    format!("{}#{}", ms_key(newest_ms), hex::encode(&hash[..8]))
}

/// The entries of a stored group.
fn group_entries(item: Item) -> BackendResult<Vec<QuietEntry>> {
    let text = match item.get(PACKED_ENTRIES) {
        Some(AttributeValue::B(packed)) => unpack(packed.as_ref())?,
        _ => from_item::<Keyed<GroupItem>>(item)?
            .value
            .entries
            .ok_or_else(|| BackendError::Corrupt("attempt group without entries".into()))?,
    };
    serde_json::from_str(&text).map_err(|e| BackendError::Corrupt(format!("attempt group: {e}")))
}

/// One group to write: its entries (JSON, oldest first) and the tags of their messages.
#[derive(Default)]
struct GroupDraft {
    entries: Vec<String>,
    bytes: usize,
    oldest_ms: i64,
    newest_ms: i64,
    tags: BTreeSet<String>,
}

/// Cuts an owner's quiet attempts into groups under [`GROUP_BYTES`] and [`GROUP_SPAN_MS`].
fn drafts(mut logged: Vec<&LoggedAttempt>) -> BackendResult<Vec<GroupDraft>> {
    logged.sort_by_key(|l| l.attempt.at);
    let mut groups: Vec<GroupDraft> = Vec::new();
    for l in logged {
        let json = serde_json::to_string(&QuietEntry::of(l))
            .map_err(|e| BackendError::Corrupt(format!("attempt does not serialize: {e}")))?;
        let at_ms = l.attempt.at.epoch_ms();
        let fits = groups.last().is_some_and(|g| {
            g.bytes + json.len() < GROUP_BYTES && at_ms - g.oldest_ms <= GROUP_SPAN_MS
        });
        if !fits {
            groups.push(GroupDraft {
                oldest_ms: at_ms,
                ..GroupDraft::default()
            });
        }
        let Some(group) = groups.last_mut() else {
            continue;
        };
        group.bytes += json.len() + 1;
        group.newest_ms = at_ms;
        group.tags.insert(l.job.id.tag().to_owned());
        group.entries.push(json);
    }
    Ok(groups)
}

impl DynamoStore {
    /// A page query of partition `pk`, newest first, of the items whose sort key is below
    /// `before` (all of them without), from `start`, where the previous page ended.
    fn newest_first(
        &self,
        pk: String,
        before: Option<String>,
        limit: i32,
        start: Option<Item>,
    ) -> QueryFluentBuilder {
        let query = self
            .client
            .query()
            .table_name(&self.table)
            .expression_attribute_values(":pk", s(pk))
            .scan_index_forward(false)
            .limit(limit)
            .set_exclusive_start_key(start);
        match before {
            Some(before) => query
                .key_condition_expression("pk = :pk AND sk < :before")
                .expression_attribute_values(":before", s(before)),
            None => query.key_condition_expression("pk = :pk"),
        }
    }

    /// When an item about a moment `at_ms` expires.
    fn attempt_expiry(&self, at_ms: i64) -> i64 {
        at_ms.max(0) / 1000 + self.attempt_retention.as_secs() as i64
    }

    /// Writes items with `BatchWriteItem`, 25 per call, sending unprocessed ones again.
    pub(super) async fn batch_put(&self, items: Vec<Item>) -> BackendResult<()> {
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
                        "{} items left unwritten",
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

    /// The attempt item and kept-message item of an attempt that is not quiet.
    fn attempt_items(
        &self,
        logged: &LoggedAttempt,
        items: &mut BTreeMap<(String, String), Item>,
    ) -> BackendResult<()> {
        let a = &logged.attempt;
        let expires_at = self.attempt_expiry(a.at.epoch_ms());
        let (pk, sk) = (attempts_pk(&a.endpoint), a.sort_key());
        let attempt = AttemptItem {
            attempt: a.clone(),
            expires_at,
        };
        items.insert(
            (pk.clone(), sk.clone()),
            to_item(&Keyed {
                pk,
                sk,
                value: attempt,
            })?,
        );
        let message = StoredMessage::of(logged);
        let job = serde_json::to_string(&message.job)
            .map_err(|e| BackendError::Corrupt(format!("job does not serialize: {e}")))?;
        let (pk, sk) = (messages_pk(&a.endpoint), a.message_id.as_str().to_owned());
        let kept = MessageItem {
            endpoint: message.endpoint,
            job,
            last_attempt: message.last_attempt,
            last_attempt_ms: message.last_attempt_at,
            last_outcome: message.last_outcome,
            expires_at,
        };
        items.insert(
            (pk.clone(), sk.clone()),
            to_item(&Keyed {
                pk,
                sk,
                value: kept,
            })?,
        );
        Ok(())
    }

    /// The group items and locators of an owner's quiet attempts.
    fn group_items(
        &self,
        owner: &EndpointOwner,
        logged: Vec<&LoggedAttempt>,
        items: &mut BTreeMap<(String, String), Item>,
    ) -> BackendResult<()> {
        for draft in drafts(logged)? {
            let entries = format!("[{}]", draft.entries.join(","));
            let sk = group_sk(draft.newest_ms, &entries);
            let partition = Some(group_shard(&sk));
            let pk = group_pk(owner, partition);
            let expires_at = self.attempt_expiry(draft.newest_ms);
            for tag in &draft.tags {
                let pk = locator_pk(owner, tag, partition);
                let value = LocatorItem { expires_at };
                let key = (pk.clone(), sk.clone());
                items.insert(
                    key,
                    to_item(&Keyed {
                        pk,
                        sk: sk.clone(),
                        value,
                    })?,
                );
            }
            let value = GroupItem {
                entries: None,
                expires_at,
            };
            let mut item = to_item(&Keyed {
                pk: pk.clone(),
                sk: sk.clone(),
                value,
            })?;
            item.insert(
                PACKED_ENTRIES.to_owned(),
                AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(pack(&entries)?)),
            );
            items.insert((pk, sk), item);
        }
        Ok(())
    }

    /// The kept-message items of an endpoint with these ids, by id.
    async fn homes(
        &self,
        endpoint: &EndpointKey,
        ids: &[MessageId],
        consistent: bool,
    ) -> BackendResult<HashMap<MessageId, StoredMessage>> {
        let keys: Vec<Item> = ids
            .iter()
            .map(|id| {
                Item::from([
                    ("pk".to_owned(), s(messages_pk(endpoint))),
                    ("sk".to_owned(), s(id.as_str())),
                ])
            })
            .collect();
        let mut kept = HashMap::new();
        for item in self.batch_get(keys, consistent).await? {
            let message = from_item::<Keyed<MessageItem>>(item)?
                .value
                .into_message()?;
            kept.insert(message.job.id.clone(), message);
        }
        Ok(kept)
    }

    /// The sort keys of the groups a locator partition names, newer than `after_ms`.
    async fn located_groups(&self, pk: String, after_ms: i64) -> BackendResult<Vec<String>> {
        let query = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND sk > :after")
            .expression_attribute_values(":pk", s(pk))
            .expression_attribute_values(":after", s(ms_key(after_ms)))
            .projection_expression("sk");
        let mut sks = Vec::new();
        each_item(query, usize::MAX, |item| {
            if let Some(sk) = item.get("sk").and_then(|v| v.as_s().ok()) {
                sks.push(sk.clone());
            }
            Ok(ControlFlow::Continue(()))
        })
        .await?;
        Ok(sks)
    }

    /// The quiet attempts of an endpoint's messages with these ids made after `after_ms`,
    /// with the message each sent, found through the locators of the ids' tags.
    async fn quiet_attempts(
        &self,
        endpoint: &LogEndpoint,
        ids: &[MessageId],
        after_ms: i64,
    ) -> BackendResult<HashMap<MessageId, (DeliveryJob, Vec<Attempt>)>> {
        let wanted: HashSet<&MessageId> = ids.iter().collect();
        let tags: BTreeSet<&str> = ids.iter().map(MessageId::tag).collect();
        // One query per tag and group partition, several at once: a recovery's messages
        // span many windows. Futures collected first: a closure inside the stream would
        // make this future lose `Send` through higher-ranked lifetimes.
        let lookups: Vec<_> = tags
            .into_iter()
            .flat_map(|tag| group_partitions().map(move |partition| (tag, partition)))
            .map(|(tag, partition)| async move {
                let pk = locator_pk(&endpoint.owner, tag, partition);
                let sks = self.located_groups(pk, after_ms).await?;
                Ok::<_, BackendError>((partition, sks))
            })
            .collect();
        let located: Vec<(GroupPartition, Vec<String>)> = futures::stream::iter(lookups)
            .buffer_unordered(LOCATOR_QUERIES)
            .try_collect()
            .await?;
        let groups: BTreeSet<(String, String)> = located
            .into_iter()
            .flat_map(|(partition, sks)| {
                let pk = group_pk(&endpoint.owner, partition);
                sks.into_iter().map(move |sk| (pk.clone(), sk))
            })
            .collect();
        let keys: Vec<Item> = groups
            .into_iter()
            .map(|(pk, sk)| Item::from([("pk".to_owned(), s(pk)), ("sk".to_owned(), s(sk))]))
            .collect();
        let mut found: HashMap<MessageId, (DeliveryJob, Vec<Attempt>)> = HashMap::new();
        for item in self.batch_get(keys, false).await? {
            for entry in group_entries(item)? {
                let attempt = entry.attempt();
                if attempt.endpoint != endpoint.key
                    || attempt.at.epoch_ms() <= after_ms
                    || !wanted.contains(&attempt.message_id)
                {
                    continue;
                }
                found
                    .entry(attempt.message_id.clone())
                    .or_insert_with(|| (entry.job, Vec::new()))
                    .1
                    .push(attempt);
            }
        }
        Ok(found)
    }

    /// A kept message's attempt items: they lie between its job's creation and its
    /// latest attempt item.
    async fn message_items(
        &self,
        endpoint: &EndpointKey,
        message: &StoredMessage,
    ) -> BackendResult<Vec<Attempt>> {
        let from = ms_key(message.created().epoch_ms());
        let to = format!("{}~", ms_key(message.last_attempt_at.epoch_ms()));
        let query = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND sk BETWEEN :from AND :to")
            .filter_expression("message_id = :m")
            .expression_attribute_values(":pk", s(attempts_pk(endpoint)))
            .expression_attribute_values(":from", s(from))
            .expression_attribute_values(":to", s(to))
            .expression_attribute_values(":m", AttributeValue::S(message.job.id.as_str().into()));
        let mut attempts = Vec::new();
        each_item(query, MAX_QUERY_PAGES, |item| {
            attempts.push(from_item::<Keyed<AttemptItem>>(item)?.value.attempt);
            Ok(ControlFlow::Continue(()))
        })
        .await?;
        Ok(attempts)
    }

    /// The ids of an endpoint's messages with a failed attempt at or after `since_ms`, in
    /// the order of their first such failure, and whether more were left unread.
    async fn failed_ids(
        &self,
        endpoint: &EndpointKey,
        since_ms: i64,
    ) -> BackendResult<(Vec<MessageId>, bool)> {
        let query = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND sk >= :from")
            .filter_expression("#outcome <> :acked")
            .expression_attribute_names("#outcome", "outcome")
            .expression_attribute_values(":pk", s(attempts_pk(endpoint)))
            .expression_attribute_values(":from", s(ms_key(since_ms)))
            .expression_attribute_values(":acked", s("acked"));
        let mut ids: Vec<MessageId> = Vec::new();
        let mut seen = HashSet::new();
        let read_all = each_item(query, usize::MAX, |item| {
            let attempt = from_item::<Keyed<AttemptItem>>(item)?.value.attempt;
            if seen.insert(attempt.message_id.clone()) {
                if ids.len() == MAX_FAILED_CANDIDATES {
                    return Ok(ControlFlow::Break(()));
                }
                ids.push(attempt.message_id);
            }
            Ok(ControlFlow::Continue(()))
        })
        .await?;
        Ok((ids, !read_all))
    }

    /// Of these kept messages whose latest attempt item failed, those with no later quiet
    /// (acknowledged) attempt: a message sent again from the dead-letter queue starts a
    /// new series, whose acknowledged first attempt is quiet.
    async fn still_failing(
        &self,
        endpoint: &LogEndpoint,
        failing: Vec<StoredMessage>,
    ) -> BackendResult<Vec<StoredMessage>> {
        let Some(oldest) = failing.iter().map(|m| m.last_attempt_at).min() else {
            return Ok(failing);
        };
        let ids: Vec<MessageId> = failing.iter().map(|m| m.job.id.clone()).collect();
        let quiet = self
            .quiet_attempts(endpoint, &ids, oldest.epoch_ms())
            .await?;
        Ok(failing
            .into_iter()
            .filter(|m| {
                quiet
                    .get(&m.job.id)
                    .is_none_or(|(_, attempts)| attempts.iter().all(|a| a.at <= m.last_attempt_at))
            })
            .collect())
    }
}

/// A message as its attempts leave it: its kept item (written with each attempt that is not
/// quiet), unless a quiet attempt came later; `None` when neither is there.
fn latest(
    endpoint: &EndpointKey,
    home: Option<StoredMessage>,
    quiet: Option<(DeliveryJob, &[Attempt])>,
) -> Option<StoredMessage> {
    let newest = quiet.and_then(|(job, attempts)| {
        let newest = attempts.iter().max_by_key(|a| (a.at, a.attempt))?;
        Some((job, newest))
    });
    match (home, newest) {
        (Some(home), Some((_, newest))) if newest.at <= home.last_attempt_at => Some(home),
        (home, Some((job, newest))) => Some(StoredMessage {
            endpoint: home.map_or_else(|| endpoint.clone(), |h| h.endpoint),
            job,
            last_attempt: newest.attempt,
            last_attempt_at: newest.at,
            last_outcome: newest.outcome,
        }),
        (home, None) => home,
    }
}

/// How far one of a listing's sources has been read.
#[derive(Default)]
struct Source {
    /// Where its next page starts.
    start: Option<Item>,
    /// Every attempt of this source at or above this position has been read; `None`
    /// before its first page.
    read_to: Option<String>,
    /// Read to its end.
    done: bool,
}

/// One of an owner's group partitions, as a listing reads it.
struct GroupSource {
    partition: GroupPartition,
    read: Source,
    /// Groups its next query reads.
    page: i32,
}

/// One page of an endpoint's attempts, newest first: its attempt items and its entries in
/// its owner's groups (every group partition), merged. An attempt read is settled (nothing
/// unread comes before it) once every source has been read past it.
struct Listing<'a> {
    store: &'a DynamoStore,
    endpoint: &'a LogEndpoint,
    filter: StatusFilter,
    after: Option<&'a str>,
    read: BTreeMap<String, Attempt>,
    items: Source,
    groups: Vec<GroupSource>,
}

impl<'a> Listing<'a> {
    fn new(
        store: &'a DynamoStore,
        endpoint: &'a LogEndpoint,
        filter: StatusFilter,
        after: Option<&'a str>,
    ) -> Self {
        Self {
            store,
            endpoint,
            filter,
            after,
            read: BTreeMap::new(),
            items: Source::default(),
            groups: group_partitions()
                .map(|partition| GroupSource {
                    partition,
                    // Quiet attempts are acknowledged: a listing of failures has none to read.
                    read: Source {
                        done: filter == StatusFilter::Failed,
                        ..Source::default()
                    },
                    page: FIRST_GROUP_PAGE,
                })
                .collect(),
        }
    }

    /// True when nothing unread can sort after `key`.
    fn settled(&self, key: &str) -> bool {
        let items = self.items.done || self.items.read_to.as_deref().is_some_and(|r| key >= r);
        let groups = self
            .groups
            .iter()
            .all(|g| g.read.done || g.read.read_to.as_deref().is_some_and(|r| key > r));
        items && groups
    }

    /// True when every source is read to its end.
    fn all_done(&self) -> bool {
        self.items.done && self.groups.iter().all(|g| g.read.done)
    }

    /// Up to `limit` attempts; one more is read, when there is one, to know whether a
    /// next page follows ([`Page`]: a full last page has no `next`).
    async fn page(mut self, limit: usize) -> BackendResult<Page<Attempt>> {
        let mut items = Vec::new();
        for _ in 0..MAX_QUERY_PAGES {
            while items.len() <= limit {
                match self.read.last_key_value() {
                    Some((key, _)) if self.settled(key) => {}
                    _ => break,
                }
                items.extend(self.read.pop_last().map(|(_, a)| a));
            }
            // Every source read to its end: everything read was settled, and listed.
            if items.len() > limit || self.all_done() {
                return Ok(Page::from_overfetch(items, limit, Attempt::sort_key));
            }
            self.read_more(limit + 1 - items.len()).await?;
        }
        Ok(Page {
            next: Some(self.boundary()),
            items,
        })
    }

    /// Where the next page starts when this one stopped at its read budget: every
    /// attempt not listed sorts before it.
    fn boundary(&self) -> String {
        let items = (!self.items.done)
            .then(|| self.items.read_to.clone())
            .flatten();
        let groups = self
            .groups
            .iter()
            .filter(|g| !g.read.done)
            .filter_map(|g| g.read.read_to.clone())
            .max();
        let bound = items.max(groups).unwrap_or_default();
        match self.after {
            Some(after) if after < bound.as_str() => after.to_owned(),
            _ => bound,
        }
    }

    /// Reads a page of the source that holds back the most: the attempt items first, then
    /// every group partition not read yet (at once), then the one read least far (newest
    /// first: the one standing at the greatest position).
    async fn read_more(&mut self, want: usize) -> BackendResult<()> {
        if !self.items.done && self.items.read_to.is_none() {
            return self.read_items(want).await;
        }
        let unread: Vec<usize> = (0..self.groups.len())
            .filter(|&k| !self.groups[k].read.done && self.groups[k].read.read_to.is_none())
            .collect();
        if !unread.is_empty() {
            return self.read_groups(&unread).await;
        }
        let least_read = (0..self.groups.len())
            .filter(|&k| !self.groups[k].read.done)
            .max_by(|&a, &b| {
                self.groups[a]
                    .read
                    .read_to
                    .cmp(&self.groups[b].read.read_to)
            });
        match least_read {
            Some(k) if self.items.done || self.items.read_to < self.groups[k].read.read_to => {
                self.read_groups(&[k]).await
            }
            _ => self.read_items(want).await,
        }
    }

    async fn read_items(&mut self, want: usize) -> BackendResult<()> {
        let mut query = self.store.newest_first(
            attempts_pk(&self.endpoint.key),
            self.after.map(str::to_owned),
            want.clamp(1, 1000) as i32,
            self.items.start.take(),
        );
        query = match self.filter {
            StatusFilter::All => query,
            StatusFilter::Acked | StatusFilter::Failed => query
                .filter_expression(if self.filter == StatusFilter::Acked {
                    "#outcome = :acked"
                } else {
                    "#outcome <> :acked"
                })
                .expression_attribute_names("#outcome", "outcome")
                .expression_attribute_values(":acked", s("acked")),
        };
        let out = query.send().await.map_err(unavailable)?;
        for item in out.items.unwrap_or_default() {
            let attempt = from_item::<Keyed<AttemptItem>>(item)?.value.attempt;
            self.read.insert(attempt.sort_key(), attempt);
        }
        self.items.read_to = out
            .last_evaluated_key
            .as_ref()
            .and_then(|key| key.get("sk").and_then(|v| v.as_s().ok()).cloned());
        self.items.done = out.last_evaluated_key.is_none();
        self.items.start = out.last_evaluated_key;
        Ok(())
    }

    /// Reads the next page of each of these group partitions, all at once (a listing's
    /// first reads of them: one round trip instead of one per partition).
    async fn read_groups(&mut self, partitions: &[usize]) -> BackendResult<()> {
        let queries: Vec<QueryFluentBuilder> =
            partitions.iter().map(|&k| self.group_query(k)).collect();
        let pages = futures::future::try_join_all(
            queries
                .into_iter()
                .map(|query| async move { query.send().await.map_err(unavailable) }),
        )
        .await?;
        for (&k, out) in partitions.iter().zip(pages) {
            self.take_groups(k, out)?;
        }
        Ok(())
    }

    /// The query of the next page of the `k`th group partition.
    fn group_query(&mut self, k: usize) -> QueryFluentBuilder {
        // A group holds attempts up to its span older than its newest.
        let upper = self
            .after
            .and_then(position_ms)
            .map(|ms| ms_key(ms.saturating_add(GROUP_SPAN_MS + 1)));
        let source = &mut self.groups[k];
        let query = self.store.newest_first(
            group_pk(&self.endpoint.owner, source.partition),
            upper,
            source.page,
            source.read.start.take(),
        );
        source.page = (source.page * 2).min(MAX_GROUP_PAGE);
        query
    }

    /// Admits the entries of a page of the `k`th group partition's groups.
    fn take_groups(
        &mut self,
        k: usize,
        out: aws_sdk_dynamodb::operation::query::QueryOutput,
    ) -> BackendResult<()> {
        let mut read_to = None;
        for item in out.items.unwrap_or_default() {
            let newest = item
                .get("sk")
                .and_then(|v| v.as_s().ok())
                .and_then(|sk| position_ms(sk));
            for entry in group_entries(item)? {
                self.admit(entry.attempt());
            }
            // Groups come newest first: those unread hold nothing after this one's newest.
            if let Some(newest) = newest {
                read_to = Some(format!("{}~", ms_key(newest)));
            }
        }
        let source = &mut self.groups[k];
        if read_to.is_some() {
            source.read.read_to = read_to;
        }
        source.read.done = out.last_evaluated_key.is_none();
        source.read.start = out.last_evaluated_key;
        Ok(())
    }

    fn admit(&mut self, attempt: Attempt) {
        let key = attempt.sort_key();
        if attempt.endpoint == self.endpoint.key
            && self.filter.admits(&attempt)
            && self.after.is_none_or(|after| key.as_str() < after)
        {
            self.read.insert(key, attempt);
        }
    }
}

#[async_trait]
impl AttemptLog for DynamoStore {
    async fn record(&self, attempts: Vec<LoggedAttempt>) -> BackendResult<()> {
        // One item per key: a batch may hold the same job twice (the queue delivers at
        // least once), and BatchWriteItem refuses duplicate keys.
        let mut items: BTreeMap<(String, String), Item> = BTreeMap::new();
        let mut quiet: BTreeMap<EndpointOwner, Vec<&LoggedAttempt>> = BTreeMap::new();
        for logged in &attempts {
            if logged.is_quiet() {
                quiet
                    .entry(EndpointOwner::of_job(&logged.job))
                    .or_default()
                    .push(logged);
            } else {
                self.attempt_items(logged, &mut items)?;
            }
        }
        for (owner, logged) in quiet {
            self.group_items(&owner, logged, &mut items)?;
        }
        self.batch_put(items.into_values().collect()).await
    }

    async fn attempts(
        &self,
        endpoint: &LogEndpoint,
        filter: StatusFilter,
        after: Option<&str>,
        limit: usize,
    ) -> BackendResult<Page<Attempt>> {
        Listing::new(self, endpoint, filter, after)
            .page(limit)
            .await
    }

    async fn failed_since(
        &self,
        endpoint: &LogEndpoint,
        since: Timestamp,
        limit: usize,
    ) -> BackendResult<FailingMessages> {
        // The failed attempts since then (the time range of the endpoint's attempt items,
        // read forwards), each message once; then each message's latest outcome.
        let (ids, cut) = self.failed_ids(&endpoint.key, since.epoch_ms()).await?;
        let mut items = Vec::new();
        for chunk in ids.chunks(HOMES_PER_READ) {
            if items.len() > limit {
                break;
            }
            let mut homes = self.homes(&endpoint.key, chunk, true).await?;
            let failing: Vec<StoredMessage> = chunk
                .iter()
                .filter_map(|id| homes.remove(id))
                .filter(|m| !m.last_outcome.is_acked())
                .collect();
            items.extend(self.still_failing(endpoint, failing).await?);
        }
        items.truncate(limit + 1);
        let mut failing = FailingMessages::from_overfetch(items, limit);
        // The candidates were cut at their bound: more may follow.
        failing.more |= cut;
        Ok(failing)
    }

    async fn messages(
        &self,
        endpoint: &LogEndpoint,
        ids: &[MessageId],
    ) -> BackendResult<Vec<StoredMessage>> {
        let mut homes = self.homes(&endpoint.key, ids, false).await?;
        let mut quiet = self.quiet_attempts(endpoint, ids, i64::MIN).await?;
        let mut kept = Vec::new();
        for id in ids {
            let quiet = quiet.remove(id);
            let quiet = quiet.as_ref().map(|(job, a)| (job.clone(), a.as_slice()));
            kept.extend(latest(&endpoint.key, homes.remove(id), quiet));
        }
        Ok(kept)
    }

    async fn save_recovery(&self, recovery: &Recovery) -> BackendResult<()> {
        self.put(
            recoveries_pk(&recovery.endpoint),
            recovery.id.to_string(),
            &RecoveryItem {
                recovery: recovery.clone(),
                expires_at: self.attempt_expiry(recovery.started_at.epoch_ms()),
            },
        )
        .await
    }

    async fn recovery(
        &self,
        endpoint: &EndpointKey,
        id: &RecoveryId,
    ) -> BackendResult<Option<Recovery>> {
        Ok(self
            .get_value::<RecoveryItem>(&recoveries_pk(endpoint), id.as_str(), true)
            .await?
            .map(|r| r.recovery))
    }

    async fn message(
        &self,
        endpoint: &LogEndpoint,
        message_id: &MessageId,
    ) -> BackendResult<Option<(StoredMessage, Vec<Attempt>)>> {
        let home = match self
            .get_item(&messages_pk(&endpoint.key), message_id.as_str(), false)
            .await?
        {
            Some(item) => Some(
                from_item::<Keyed<MessageItem>>(item)?
                    .value
                    .into_message()?,
            ),
            None => None,
        };
        let mut attempts: BTreeMap<String, Attempt> = BTreeMap::new();
        if let Some(home) = &home {
            for a in self.message_items(&endpoint.key, home).await? {
                attempts.insert(a.sort_key(), a);
            }
        }
        let quiet = self
            .quiet_attempts(endpoint, std::slice::from_ref(message_id), i64::MIN)
            .await?
            .remove(message_id);
        let message = latest(
            &endpoint.key,
            home,
            quiet.as_ref().map(|(job, a)| (job.clone(), a.as_slice())),
        );
        attempts.extend(
            quiet
                .into_iter()
                .flat_map(|(_, a)| a)
                .map(|a| (a.sort_key(), a)),
        );
        Ok(message.map(|m| (m, attempts.into_values().collect())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Item {
        Item::from([
            ("pk".to_owned(), s("LOG#owner")),
            ("sk".to_owned(), s("0001")),
            ("expires_at".to_owned(), AttributeValue::N("1".into())),
        ])
    }

    #[test]
    fn a_group_reads_back_deflated_or_as_earlier_versions_wrote_it() {
        let entries = r#"[{"t":1,"l":5,"j":{"v":1}}]"#;
        let mut packed = keys();
        packed.insert(
            PACKED_ENTRIES.to_owned(),
            AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(
                pack(entries).unwrap(),
            )),
        );
        let mut plain = keys();
        plain.insert("entries".to_owned(), s(entries));
        for (case, item) in [("deflated", packed), ("plain text", plain)] {
            // Both fail at the job (a bare {"v":1}), after the entries' text was found.
            let error = group_entries(item).err().map(|e| e.to_string());
            assert!(
                error
                    .as_deref()
                    .is_some_and(|e| e.contains("attempt group: missing field")),
                "{case}: {error:?}"
            );
        }
        assert!(
            matches!(group_entries(keys()), Err(BackendError::Corrupt(e)) if e.contains("without entries"))
        );
    }

    #[test]
    fn an_owners_groups_spread_over_its_partitions_and_their_locators_follow() {
        let owner = EndpointOwner::Client("C1".parse().unwrap());
        let mut used = BTreeSet::new();
        for n in 0..400 {
            let sk = group_sk(1_764_000_000_000 + n, &format!("[{n}]"));
            let shard = group_shard(&sk);
            assert_eq!(group_shard(&sk), shard, "the same for a sort key");
            let partition = Some(shard);
            assert!(shard < GROUP_SHARDS);
            assert_eq!(
                group_pk(&owner, partition),
                format!("GROUP#client_C1#{shard}")
            );
            assert_eq!(
                locator_pk(&owner, "0000abcd", partition),
                format!("LOCATE#client_C1#0000abcd#{shard}")
            );
            used.insert(shard);
        }
        assert_eq!(
            used.len(),
            usize::from(GROUP_SHARDS),
            "every shard takes groups"
        );
        assert_eq!(
            group_pk(&owner, None),
            "GROUP#client_C1",
            "earlier versions'"
        );
        assert_eq!(group_partitions().count(), usize::from(GROUP_SHARDS) + 1);
    }

    #[test]
    fn a_group_that_inflates_past_a_group_is_corrupt_not_read_whole() {
        let huge = "x".repeat(GROUP_BYTES + 10);
        assert!(unpack(&pack(&huge).unwrap()).is_err());
        assert_eq!(unpack(&pack("[]").unwrap()).unwrap(), "[]");
        assert!(unpack(b"not deflate").is_err());
    }
}
