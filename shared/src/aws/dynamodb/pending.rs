//! Pending changes in the service table, sharded: change capture writes a stream batch's
//! records as one item per (window, shard) it touches, `PENDING#<window>#<shard>` /
//! `<hash of its records>`, holding their ids. A record always lands in the same shard (a
//! stable hash of its id), so no partition key takes a whole window's writes, and a batch
//! costs one write unit per shard it touches instead of one per record. Marking is
//! idempotent: the same records in the same shard make the same item.
//!
//! The flush's cursor and lease, and the poison items the flush set aside, are here too.
//!
//! The flush pages through the shards in turn (then the unsharded `PENDING#<window>`
//! partition that earlier versions wrote, one item per record). A record changed in
//! several stream batches of a window is in several items of its shard; a page holds each
//! record once, and the flush de-duplicates across the pages of a window.

use super::unavailable;
use super::{DynamoStore, Item, Keyed, applied, from_item, number, s, to_item};
use crate::clock::Timestamp;
use crate::poison::{PoisonId, PoisonItem};
use crate::ports::{
    BackendError, BackendResult, FlushCursor, Lease, LeaseHolder, Page, PendingChanges,
};
use crate::record::RecordId;
use crate::window::{FlushAssignment, PENDING_TTL, Shard, WindowId};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashSet};

pub use crate::window::PENDING_SHARDS;

/// Record ids per item at most (a stream batch holds up to 10 000 records; ids are up to
/// 128 bytes): well under DynamoDB's 400 KB.
const IDS_PER_ITEM: usize = 1_000;
/// The partition of the flush's cursors and leases, and their sort keys (one of each per
/// flush assignment, [`FlushAssignment::name`]).
const FLUSH_PK: &str = "FLUSH";
const CURSOR_SK: &str = "CURSOR";
const LEASE_SK: &str = "LEASE";

/// Items read per `Query` of a shard: enough for a page, without reading the whole shard.
const ITEMS_PER_QUERY: i32 = 100;

/// The shard of a record ([`Shard::of`]): the same for every write of it.
pub fn pending_shard(record: &RecordId) -> u16 {
    Shard::of(record).0
}

/// The partition of shard `shard` of a window; shard [`PENDING_SHARDS`] is the unsharded
/// partition of earlier versions.
fn shard_pk(window: WindowId, shard: u16) -> String {
    if shard == PENDING_SHARDS {
        format!("PENDING#{}", window.0)
    } else {
        format!("PENDING#{}#{shard}", window.0)
    }
}

/// A shard item as stored.
#[derive(Serialize, Deserialize)]
struct PendingBatch {
    records: Vec<String>,
    /// TTL: DynamoDB deletes the entry (for free) some time after this.
    expires_at: i64,
}

/// Where a page starts: a shard, and inside it an item and how many of its ids were
/// already paged. Written as `<shard>/<item sk>/<offset>`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Position {
    shard: u16,
    item: Option<(String, usize)>,
}

impl Position {
    /// The start of a shard's partition.
    fn start(shard: u16) -> Self {
        Self { shard, item: None }
    }

    /// A position this adapter wrote; None for anything else (a record id, as an earlier
    /// version saved).
    fn parse(text: &str) -> Option<Self> {
        let (shard, rest) = text.split_once('/')?;
        let (sk, offset) = rest.rsplit_once('/')?;
        Some(Self {
            shard: shard.parse().ok().filter(|s| *s <= PENDING_SHARDS)?,
            item: Some((sk.to_owned(), offset.parse().ok()?)),
        })
    }

    fn text(shard: u16, sk: &str, offset: usize) -> String {
        format!("{shard}/{sk}/{offset}")
    }
}

/// The record ids of a pending item: its `records`, or in the unsharded partition of
/// earlier versions its sort key. An id that does not parse was not written by change
/// capture and names no record: skipped, loudly, so one damaged item does not stop the
/// flush.
fn ids_of(item: &Item, window: WindowId, unsharded: bool) -> Vec<RecordId> {
    let texts: Vec<&str> = if unsharded {
        item.get("sk")
            .and_then(|v| v.as_s().ok())
            .map(String::as_str)
            .into_iter()
            .collect()
    } else {
        let list = item.get("records").and_then(|v| v.as_l().ok());
        if list.is_none() {
            tracing::error!(
                window = window.0,
                "a pending item without its records; skipped"
            );
        }
        list.into_iter()
            .flatten()
            .filter_map(|v| v.as_s().ok().map(String::as_str))
            .collect()
    };
    texts
        .into_iter()
        .filter_map(|text| match RecordId::parse(text) {
            Ok(record) => Some(record),
            Err(_) => {
                tracing::error!(window = window.0, key = ?text, "a pending entry that is not a record id; skipped");
                None
            }
        })
        .collect()
}

impl DynamoStore {
    /// Marks `records` changed in `window`: one item per shard they touch (more for a
    /// shard with over [`IDS_PER_ITEM`] of them), written with `BatchWriteItem`.
    async fn mark_pending(&self, window: WindowId, records: &[RecordId]) -> BackendResult<()> {
        let mut shards: BTreeMap<u16, BTreeSet<&str>> = BTreeMap::new();
        for record in records {
            shards
                .entry(pending_shard(record))
                .or_default()
                .insert(record.as_str());
        }
        let expires_at = self.expires_after(PENDING_TTL);
        let mut items = Vec::new();
        for (shard, ids) in shards {
            let ids: Vec<&str> = ids.into_iter().collect();
            for chunk in ids.chunks(IDS_PER_ITEM) {
                let hash = Sha256::digest(chunk.join("\n").as_bytes());
                items.push(to_item(&Keyed {
                    pk: shard_pk(window, shard),
                    sk: hex::encode(&hash[..8]),
                    value: PendingBatch {
                        records: chunk.iter().map(|id| (*id).to_owned()).collect(),
                        expires_at,
                    },
                })?);
            }
        }
        self.batch_put(items).await
    }

    /// Adds a shard's records from `position` to `page`; the position to continue from
    /// when the page filled up before the shard's end.
    async fn read_shard(
        &self,
        window: WindowId,
        position: &Position,
        page: &mut PageBuilder,
    ) -> BackendResult<Option<String>> {
        let pk = shard_pk(window, position.shard);
        let mut start: Option<Item> = None;
        loop {
            let mut query = self
                .client
                .query()
                .table_name(&self.table)
                .expression_attribute_values(":pk", s(&pk))
                .limit(ITEMS_PER_QUERY)
                .consistent_read(false)
                .set_exclusive_start_key(start.take());
            query = match &position.item {
                Some((sk, _)) => query
                    .key_condition_expression("pk = :pk AND sk >= :sk")
                    .expression_attribute_values(":sk", s(sk)),
                None => query.key_condition_expression("pk = :pk"),
            };
            let out = query.send().await.map_err(unavailable)?;
            for item in out.items.unwrap_or_default() {
                let Some(sk) = item.get("sk").and_then(|v| v.as_s().ok()).cloned() else {
                    continue;
                };
                let skip = match &position.item {
                    Some((from, offset)) if *from == sk => *offset,
                    _ => 0,
                };
                let ids = ids_of(&item, window, position.shard == PENDING_SHARDS);
                if let Some(taken) = page.take(&ids, skip) {
                    return Ok(Some(Position::text(position.shard, &sk, taken)));
                }
            }
            start = out.last_evaluated_key;
            if start.is_none() {
                return Ok(None);
            }
        }
    }
}

/// A page being filled: each record once.
struct PageBuilder {
    records: Vec<RecordId>,
    seen: HashSet<RecordId>,
    limit: usize,
}

impl PageBuilder {
    fn new(limit: usize) -> Self {
        Self {
            records: Vec::new(),
            seen: HashSet::new(),
            limit: limit.max(1),
        }
    }

    /// Adds an item's ids from `skip` on; when the page fills up before the item's end,
    /// how many of its ids are then paged.
    fn take(&mut self, ids: &[RecordId], skip: usize) -> Option<usize> {
        for (i, id) in ids.iter().enumerate().skip(skip) {
            if self.records.len() == self.limit {
                return Some(i);
            }
            if self.seen.insert(id.clone()) {
                self.records.push(id.clone());
            }
        }
        None
    }
}

/// Poison items live in one partition: there are few, and an operator lists them all.
const POISON_PK: &str = "POISON";

#[async_trait]
impl PendingChanges for DynamoStore {
    async fn mark_all(&self, window: WindowId, records: &[RecordId]) -> BackendResult<()> {
        self.mark_pending(window, records).await
    }

    async fn shard_page(
        &self,
        window: WindowId,
        shard: Shard,
        after: Option<&str>,
        limit: usize,
    ) -> BackendResult<Page<RecordId>> {
        // Shard 0's worker reads the unsharded partition of earlier versions after its own.
        let last = if shard.0 == 0 {
            PENDING_SHARDS
        } else {
            shard.0
        };
        // A position that is not one of this shard's starts the shard again: a page's worth
        // of duplicates, nothing skipped.
        let mut position = after
            .and_then(Position::parse)
            .filter(|p| p.shard == shard.0 || p.shard == last)
            .unwrap_or(Position::start(shard.0));
        let mut page = PageBuilder::new(limit);
        loop {
            if let Some(next) = self.read_shard(window, &position, &mut page).await? {
                return Ok(Page {
                    items: page.records,
                    next: Some(next),
                });
            }
            if position.shard == last {
                return Ok(Page::last(page.records));
            }
            position = Position::start(last);
        }
    }

    async fn cursors(&self) -> BackendResult<Vec<(FlushAssignment, FlushCursor)>> {
        // The FLUSH partition holds a cursor and a lease per assignment: a few small items.
        let mut cursors = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND begins_with(sk, :cursor)")
                .expression_attribute_values(":pk", s(FLUSH_PK))
                .expression_attribute_values(":cursor", s(CURSOR_SK))
                .set_exclusive_start_key(start)
                .consistent_read(true)
                .send()
                .await
                .map_err(unavailable)?;
            for item in out.items.unwrap_or_default() {
                let keyed: Keyed<FlushCursor> = from_item(item)?;
                match FlushAssignment::from_name(CURSOR_SK, &keyed.sk) {
                    Some(Ok(assignment)) => cursors.push((assignment, keyed.value)),
                    Some(Err(e)) => {
                        return Err(BackendError::Corrupt(format!(
                            "flush cursor {}: {e}",
                            keyed.sk
                        )));
                    }
                    None => {}
                }
            }
            match out.last_evaluated_key {
                Some(key) => start = Some(key),
                None => return Ok(cursors),
            }
        }
    }

    async fn save_cursor(
        &self,
        assignment: &FlushAssignment,
        cursor: &FlushCursor,
    ) -> BackendResult<()> {
        self.put(FLUSH_PK.into(), assignment.name(CURSOR_SK), cursor)
            .await
    }

    async fn lease_flush(
        &self,
        assignment: &FlushAssignment,
        lease: &Lease,
        now: Timestamp,
    ) -> BackendResult<bool> {
        // Its own item: saving the cursor replaces the whole cursor item.
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(FLUSH_PK))
            .key("sk", s(assignment.name(LEASE_SK)))
            .update_expression("SET holder = :holder, lease_until_ms = :until")
            .condition_expression("attribute_not_exists(lease_until_ms) OR lease_until_ms <= :now")
            .expression_attribute_values(":holder", s(lease.holder.as_str()))
            .expression_attribute_values(":until", number(lease.until.epoch_ms()))
            .expression_attribute_values(":now", number(now.epoch_ms()))
            .send()
            .await;
        applied(result)
    }

    async fn release_flush(
        &self,
        assignment: &FlushAssignment,
        holder: &LeaseHolder,
    ) -> BackendResult<()> {
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(FLUSH_PK))
            .key("sk", s(assignment.name(LEASE_SK)))
            .condition_expression("holder = :holder")
            .expression_attribute_values(":holder", s(holder.as_str()))
            .send()
            .await;
        // Expired and taken over by another flush: theirs now.
        applied(result).map(|_| ())
    }

    async fn set_aside(&self, item: &PoisonItem) -> BackendResult<()> {
        self.put(POISON_PK.into(), item.id().to_string(), item)
            .await
    }

    async fn poison_items(&self) -> BackendResult<Vec<PoisonItem>> {
        self.query_all(POISON_PK)
            .await?
            .into_iter()
            .map(|item| from_item::<Keyed<PoisonItem>>(item).map(|k| k.value))
            .collect()
    }

    async fn remove_poison(&self, id: &PoisonId) -> BackendResult<bool> {
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(POISON_PK))
            .key("sk", s(id.as_str()))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
            .send()
            .await
            .map_err(unavailable)?;
        Ok(out.attributes.is_some_and(|a| !a.is_empty()))
    }
}
