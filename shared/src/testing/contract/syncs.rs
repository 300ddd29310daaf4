//! Full syncs: outcomes counted once per person, the completion claimed once, one step at
//! a time under a lease.

use super::{Adapters, record};
use crate::ids::SyncKey;
use crate::ports::LeaseHolder;
use crate::ports::PersonOutcome;
use crate::sync::{FullSync, SyncOutcomes};
use crate::testing::{at_ms, lease};

scenarios![
    sync_outcomes_are_counted_once_per_person,
    sync_state_is_saved_beside_its_counters,
    sync_completion_is_claimed_once,
    sync_lease_one_step_at_a_time,
];

fn outcome(i: usize, delivered: bool) -> PersonOutcome {
    PersonOutcome {
        person: record(&format!("p-{i}")),
        delivered,
    }
}

/// A sync of app-1 paced at `request_interval_ms`, started at `started_at` (RFC 3339).
fn app1_sync(request_interval_ms: u64, started_at: &str) -> FullSync {
    FullSync::new(
        &"app-1".parse().unwrap(),
        request_interval_ms,
        crate::testing::at(started_at),
    )
}

fn counts(outcomes: SyncOutcomes) -> (u64, u64) {
    (outcomes.delivered, outcomes.failed)
}

async fn sync_outcomes_are_counted_once_per_person(a: Adapters) {
    let syncs = &a.ports.syncs;
    let sync = app1_sync(0, "2026-11-26T10:00:00.000Z");
    syncs.save_sync(&sync).await.unwrap();
    let id = &sync.key();
    let new = syncs
        .count_sync_outcomes(id, &[outcome(0, true), outcome(1, false)])
        .await
        .unwrap();
    assert_eq!(counts(new), (1, 1));
    // More than one transaction's worth, holding both again and one person twice.
    let mut batch: Vec<PersonOutcome> = (0..150).map(|i| outcome(i, i != 7)).collect();
    batch.push(outcome(9, true));
    let new = syncs.count_sync_outcomes(id, &batch).await.unwrap();
    assert_eq!(
        counts(new),
        (147, 1),
        "p-0 and p-1 were counted already, p-9 once"
    );
    let again = syncs.count_sync_outcomes(id, &batch).await.unwrap();
    assert_eq!(counts(again), (0, 0), "delivered again: counted none twice");
    let (_, outcomes) = syncs.get_sync(id).await.unwrap().unwrap();
    assert_eq!(counts(outcomes), (148, 2), "the total of every count");
    // Another sync of the same application counts the same persons afresh.
    let other = app1_sync(0, "2026-11-26T11:00:00.000Z");
    syncs.save_sync(&other).await.unwrap();
    let new = syncs
        .count_sync_outcomes(&other.key(), &[outcome(0, true)])
        .await
        .unwrap();
    assert_eq!(counts(new), (1, 0));
}

async fn sync_state_is_saved_beside_its_counters(a: Adapters) {
    let syncs = &a.ports.syncs;
    let mut sync = app1_sync(250, "2026-11-26T10:00:00.000Z");
    // The sync as read back with its counts, if any, under `application`.
    let read = |application: &'static str| {
        let key = SyncKey {
            application: application.parse().unwrap(),
            sync: sync.sync_id.clone(),
        };
        let syncs = syncs.clone();
        async move {
            let found = syncs.get_sync(&key).await.unwrap();
            found.map(|(sync, outcomes)| (sync, counts(outcomes)))
        }
    };
    assert_eq!(read("app-1").await, None, "never saved");
    syncs.save_sync(&sync).await.unwrap();
    assert_eq!(read("app-1").await, Some((sync.clone(), (0, 0))));
    syncs
        .count_sync_outcomes(&sync.key(), &[outcome(0, true)])
        .await
        .unwrap();
    sync.scanned = 4;
    sync.cursor = Some("p-4".into());
    sync.next_attempt_at = Some(at_ms(1_700_000_000_000));
    syncs.save_sync(&sync).await.unwrap();
    assert_eq!(
        read("app-1").await,
        Some((sync.clone(), (1, 0))),
        "saving the driver's state kept the counters"
    );
    sync.cursor = None;
    sync.next_attempt_at = None;
    syncs.save_sync(&sync).await.unwrap();
    assert_eq!(
        read("app-1").await,
        Some((sync.clone(), (1, 0))),
        "a field saved as none reads back as none"
    );
    assert_eq!(
        read("app-2").await,
        None,
        "a sync belongs to its application"
    );
}

async fn sync_completion_is_claimed_once(a: Adapters) {
    let syncs = &a.ports.syncs;
    let sync = app1_sync(0, "2026-11-26T10:00:00.000Z");
    let claim = |claimant: &'static str| {
        let (syncs, key) = (syncs.clone(), sync.key());
        async move { syncs.claim_sync_completion(&key, claimant).await.unwrap() }
    };
    assert!(
        !claim("batch-a").await,
        "no completion of a sync that was never saved"
    );
    syncs.save_sync(&sync).await.unwrap();
    assert!(claim("batch-a").await, "the first claimant");
    assert!(
        claim("batch-a").await,
        "a retried claim by the same claimant"
    );
    assert!(!claim("batch-b").await, "announced once");
    syncs.save_sync(&sync).await.unwrap();
    assert!(
        !claim("batch-b").await,
        "saving the driver's state keeps the claim"
    );
}

async fn sync_lease_one_step_at_a_time(a: Adapters) {
    let syncs = &a.ports.syncs;
    let sync = app1_sync(0, "2026-11-26T10:00:00.000Z");
    syncs.save_sync(&sync).await.unwrap();
    let id = &sync.key();
    let lease = |holder: &'static str, now: i64, until: i64| {
        let syncs = syncs.clone();
        let id = id.clone();
        async move {
            syncs
                .lease_sync(&id, &lease(holder, until), at_ms(now))
                .await
                .unwrap()
        }
    };
    assert!(lease("a", 1_000, 5_000).await, "free: taken");
    assert!(!lease("b", 2_000, 6_000).await, "held by a: refused");
    assert!(lease("a", 2_000, 6_000).await, "renewed by its holder");
    assert!(!lease("b", 5_999, 9_000).await, "renewed until 6 000");
    syncs
        .release_sync(id, &LeaseHolder::new("b"))
        .await
        .unwrap();
    assert!(!lease("b", 3_000, 7_000).await, "only the holder frees it");
    syncs
        .release_sync(id, &LeaseHolder::new("a"))
        .await
        .unwrap();
    assert!(lease("b", 3_000, 7_000).await, "freed by its holder");
    assert!(lease("c", 7_000, 9_000).await, "expired: taken over");
    syncs
        .release_sync(id, &LeaseHolder::new("b"))
        .await
        .unwrap();
    assert!(
        !lease("a", 8_000, 9_500).await,
        "the late release of an expired holder leaves the new one's lease"
    );
    let (saved, _) = syncs.get_sync(id).await.unwrap().unwrap();
    assert_eq!(saved, sync, "the lease is not part of the driver's state");
    syncs.save_sync(&sync).await.unwrap();
    assert!(
        !lease("a", 8_500, 9_500).await,
        "saving the driver's state keeps the lease"
    );
}
