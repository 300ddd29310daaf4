//! Full syncs in the service table: the driver's state and lease, the outcome counter
//! shards and the per-person markers that count each person once.

use super::unavailable;
use super::{
    DynamoStore, Item, applied, build_error, from_item, key, number, s, to_item, unmet_conditions,
};
use crate::clock::Timestamp;
use crate::ids::{ApplicationId, SyncKey};
use crate::oauth::sha256_hex;
use crate::ports::{BackendResult, Lease, LeaseHolder, PersonOutcome, SyncStore};
use crate::record::RecordId;
use crate::sync::{FullSync, SyncOutcomes};
use async_trait::async_trait;
use aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder;
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem, Update};
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// The counter shard a transaction adds to, chosen by its first person.
fn counter_shard(person: &RecordId) -> u8 {
    u8::from_str_radix(&sha256_hex(person.as_str())[..2], 16).unwrap_or_default()
        % SYNC_COUNTER_SHARDS
}

fn sync_pk(application: &ApplicationId) -> String {
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

fn sync_counter_key(sync: &SyncKey, shard: u8) -> (String, String) {
    (
        format!("SYNCCOUNT#{}#{}#{shard}", sync.application, sync.sync),
        "COUNT".to_owned(),
    )
}

/// Each marker has its own partition key: a fast sync writes thousands a second.
fn sync_marker_key(sync: &SyncKey, person: &RecordId) -> (String, String) {
    (
        format!("SYNCDONE#{}#{}#{person}", sync.application, sync.sync),
        "DONE".to_owned(),
    )
}

impl DynamoStore {
    /// An `UpdateItem` of the sync's item.
    fn update_sync(&self, sync: &SyncKey) -> UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(sync_pk(&sync.application)))
            .key("sk", s(sync.sync.as_str()))
    }

    /// Counts one transaction's worth of outcomes: a conditional put of each person's
    /// marker and one ADD to a counter shard, all or nothing. Persons already counted
    /// (the transaction is cancelled by their marker's condition) are dropped and the
    /// rest tried again; any other cancellation (a conflict, throttling) is an error.
    async fn count_chunk(
        &self,
        sync: &SyncKey,
        mut chunk: Vec<&PersonOutcome>,
    ) -> BackendResult<SyncOutcomes> {
        let expires_at = self.expires_after(SYNC_MARKER_TTL);
        while !chunk.is_empty() {
            let delivered = chunk.iter().filter(|o| o.delivered).count() as u64;
            let new = SyncOutcomes {
                delivered,
                failed: chunk.len() as u64 - delivered,
            };
            let mut actions = Vec::with_capacity(chunk.len() + 1);
            for outcome in &chunk {
                actions.push(self.marker_put(sync, outcome, expires_at)?);
            }
            let shard = counter_shard(&chunk[0].person);
            actions.push(self.counter_add(sync, shard, new)?);
            let result = self
                .client
                .transact_write_items()
                .set_transact_items(Some(actions))
                .send()
                .await;
            let Err(e) = result else {
                return Ok(new);
            };
            let already_counted: HashSet<usize> = unmet_conditions(&e)
                .into_iter()
                .filter(|i| *i < chunk.len())
                .collect();
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

    /// The put of a person's "counted" marker, if it is not there yet.
    fn marker_put(
        &self,
        sync: &SyncKey,
        outcome: &PersonOutcome,
        expires_at: i64,
    ) -> BackendResult<TransactWriteItem> {
        let (pk, sk) = sync_marker_key(sync, &outcome.person);
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(key(pk, sk)))
            .item("delivered", AttributeValue::Bool(outcome.delivered))
            .item("expires_at", number(expires_at))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .map_err(build_error)?;
        Ok(TransactWriteItem::builder().put(put).build())
    }

    /// The addition of `new` to a counter shard.
    fn counter_add(
        &self,
        sync: &SyncKey,
        shard: u8,
        new: SyncOutcomes,
    ) -> BackendResult<TransactWriteItem> {
        let (pk, sk) = sync_counter_key(sync, shard);
        let add = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(pk, sk)))
            .update_expression("ADD outcome_delivered :d, outcome_failed :f")
            .expression_attribute_values(":d", number(new.delivered))
            .expression_attribute_values(":f", number(new.failed))
            .build()
            .map_err(build_error)?;
        Ok(TransactWriteItem::builder().update(add).build())
    }

    /// The sum of a sync's counter shards (one strongly consistent BatchGetItem).
    async fn sync_counters(&self, sync: &SyncKey) -> BackendResult<SyncOutcomes> {
        let keys: Vec<Item> = (0..SYNC_COUNTER_SHARDS)
            .map(|n| {
                let (pk, sk) = sync_counter_key(sync, n);
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
        let fields = to_item(sync)?;
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
            .key("sk", s(sync.sync_id.as_str()))
            .update_expression(format!("SET {}", sets.join(", ")))
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .send()
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn get_sync(&self, sync: &SyncKey) -> BackendResult<Option<(FullSync, SyncOutcomes)>> {
        let Some(item) = self
            .get_item(&sync_pk(&sync.application), sync.sync.as_str(), true)
            .await?
        else {
            return Ok(None);
        };
        if !item.contains_key("sync_id") {
            return Ok(None);
        }
        // Counters on the sync item itself were written by an earlier version; they still
        // count for syncs started before it.
        let legacy: SyncCounters = from_item(item.clone())?;
        let shards = self.sync_counters(sync).await?;
        let outcomes = SyncOutcomes {
            delivered: legacy.outcome_delivered + shards.delivered,
            failed: legacy.outcome_failed + shards.failed,
        };
        Ok(Some((from_item(item)?, outcomes)))
    }

    async fn count_sync_outcomes(
        &self,
        sync: &SyncKey,
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
            let new = self.count_chunk(sync, chunk.to_vec()).await?;
            total.delivered += new.delivered;
            total.failed += new.failed;
        }
        Ok(total)
    }

    async fn claim_sync_completion(&self, sync: &SyncKey, claimant: &str) -> BackendResult<bool> {
        let result = self
            .update_sync(sync)
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
        sync: &SyncKey,
        lease: &Lease,
        now: Timestamp,
    ) -> BackendResult<bool> {
        let result = self
            .update_sync(sync)
            .update_expression("SET lease_until_ms = :until, lease_holder = :holder")
            .condition_expression(
                "attribute_not_exists(lease_until_ms) OR lease_until_ms <= :now OR lease_holder = :holder",
            )
            .expression_attribute_values(":until", number(lease.until.epoch_ms()))
            .expression_attribute_values(":now", number(now.epoch_ms()))
            .expression_attribute_values(":holder", s(lease.holder.as_str()))
            .send()
            .await;
        applied(result)
    }

    async fn release_sync(&self, sync: &SyncKey, holder: &LeaseHolder) -> BackendResult<()> {
        let result = self
            .update_sync(sync)
            .update_expression("SET lease_until_ms = :zero REMOVE lease_holder")
            .condition_expression("lease_holder = :holder")
            .expression_attribute_values(":zero", AttributeValue::N("0".into()))
            .expression_attribute_values(":holder", s(holder.as_str()))
            .send()
            .await;
        // Expired and taken over by another step: theirs now.
        applied(result).map(|_| ())
    }
}
