//! The SQLite adapters on a real database file: what survives a reopen, the queue's SQS
//! semantics with a clock under the test's control, the lock, the writer's groups.

use super::*;
use crate::application::Application;
use crate::attempts::{Attempt, EndpointKey, LoggedAttempt, OutcomeClass, StatusFilter};
use crate::callback::{CallbackUrl, UrlPolicy};
use crate::clock::{Clock, Timestamp};
use crate::job::DeliveryJob;
use crate::memory::QueueDepth;
use crate::message;
use crate::oauth::{AccessToken, OAuthClient};
use crate::ports::LeaseHolder;
use crate::ports::{
    ApplicationStore, AttemptLog, ClientStore, DeliveryQueue, FlushCursor, Page, ParkedQueue,
    PendingChanges, PersonOutcome, RecordStore, SubscriptionStore, SyncStore, TokenStore,
};
use crate::record::RecordId;
use crate::subscription::{Registered, Subscription, Unregistered};
use crate::testing::ManualClock;
use crate::testing::{at_ms, lease, pending_records, records_of_shard};
use crate::window::{FlushAssignment, Shard, WindowId};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use time::macros::datetime;

/// A directory under the system's temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("webhooks-sqlite-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(datetime!(2026-11-26 12:00:00 UTC)))
}

fn queue(db: &Arc<Database>, clock: &Arc<ManualClock>, max_receives: u32) -> SqliteQueue {
    SqliteQueue::new(
        db.clone(),
        clock.clone(),
        Duration::from_secs(30),
        max_receives,
    )
}

/// A queue on a database of its own (removed with the directory returned), on a manual
/// clock.
fn new_queue(max_receives: u32) -> (TempDir, Arc<ManualClock>, SqliteQueue) {
    let dir = TempDir::new();
    let db = Database::open(&dir.0, Access::Runner).unwrap();
    let clock = clock();
    let q = queue(&db, &clock, max_receives);
    (dir, clock, q)
}

fn record(id: &str) -> RecordId {
    RecordId::parse(id).unwrap()
}

fn subscription(record_id: &str, url: &str, client: &str) -> Subscription {
    Subscription {
        record: record(record_id),
        callback: CallbackUrl::parse(url, UrlPolicy::default()).unwrap(),
        client_id: client.parse().unwrap(),
        created_at: crate::clock::Timestamp::UNIX_EPOCH,
        health: Default::default(),
    }
}

/// Job `n`: the same id every time it is built (its id derives from window and record).
fn job(n: u32) -> DeliveryJob {
    let person = serde_json::json!({"personID": format!("p{n}")});
    DeliveryJob::for_application(
        &"app-1".parse().unwrap(),
        &record(&format!("p{n}")),
        person.as_object().unwrap().clone(),
        WindowId(u64::from(n)),
        crate::testing::at("2026-11-26T00:00:00.000Z"),
    )
}

#[tokio::test]
async fn everything_written_is_there_after_a_reopen() {
    let dir = TempDir::new();
    let clock = clock();
    let client = OAuthClient::new(&"APP-1".parse().unwrap(), "secret", clock.now());
    let token = AccessToken {
        token_hash: "h1".into(),
        refresh_token_hash: "r1".into(),
        client_id: "APP-1".parse().unwrap(),
        scope: "/webhook".into(),
        issued_at: at_ms(1_000),
        expires_at: at_ms(2_000),
    };
    let sub = subscription("r1", "https://a.com/1", "APP-1");
    let app = Application::new(
        &"app-1".parse().unwrap(),
        "key-1",
        crate::clock::Timestamp::from_epoch_secs(5).unwrap(),
    );
    {
        let db = Database::open(&dir.0, Access::Runner).unwrap();
        let store = SqliteStore::new(db.clone());
        let records = SqliteRecords::new(db.clone(), Arc::new(crate::clock::SystemClock));
        let queue = queue(&db, &clock, 5);
        store.put_client(&client).await.unwrap();
        store.put_token(&token).await.unwrap();
        assert_eq!(store.register(&sub).await.unwrap(), Registered::Created);
        store.put_application(&app).await.unwrap();
        let person = serde_json::json!({"firstName": "Ann"})
            .as_object()
            .unwrap()
            .clone();
        records.put_person(&record("r1"), person).await.unwrap();
        store.mark(WindowId(3), &record("r1")).await.unwrap();
        store.save_current_window(WindowId(4)).await.unwrap();
        queue.enqueue(&[job(1)]).await.unwrap().all().unwrap();
        db.close();
    }
    let db = Database::open(&dir.0, Access::Runner).unwrap();
    let store = SqliteStore::new(db.clone());
    let records = SqliteRecords::new(db.clone(), Arc::new(crate::clock::SystemClock));
    assert_eq!(
        store.get_client(&"APP-1".parse().unwrap()).await.unwrap(),
        Some(client.clone())
    );
    assert_eq!(store.list_clients().await.unwrap(), vec![client]);
    assert_eq!(store.get_token("h1").await.unwrap(), Some(token));
    assert_eq!(
        store.subscriptions_of(&record("r1")).await.unwrap(),
        vec![sub.clone()]
    );
    assert_eq!(
        store
            .client_webhook(
                &"APP-1".parse().unwrap(),
                &EndpointKey::subscription(&sub.record, &sub.callback)
            )
            .await
            .unwrap(),
        Some(sub)
    );
    assert_eq!(
        store
            .get_application(&"app-1".parse().unwrap())
            .await
            .unwrap(),
        Some(app.clone())
    );
    assert_eq!(
        store.application_for_key(&app.api_key_hash).await.unwrap(),
        Some("app-1".parse().unwrap())
    );
    let person = records.get_person(&record("r1")).await.unwrap().unwrap();
    assert_eq!(person["firstName"], "Ann");
    assert_eq!(person["id"], "r1");
    assert_eq!(
        pending_records(&store, WindowId(3)).await.unwrap(),
        vec![record("r1")]
    );
    assert_eq!(store.current_window().await.unwrap(), WindowId(4));
    let received = queue(&db, &clock, 5)
        .receive(10, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(received.len(), 1);
    assert_eq!(message::decode(&received[0].body).unwrap(), job(1));
}

#[tokio::test]
async fn a_second_runner_is_refused_and_a_tool_is_not() {
    let dir = TempDir::new();
    let first = Database::open(&dir.0, Access::Runner).unwrap();
    let second = Database::open(&dir.0, Access::Runner).unwrap_err();
    match &second {
        OpenError::Locked { holder, .. } => {
            assert_eq!(*holder, format!(" by pid {}", std::process::id()))
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    assert!(
        second
            .to_string()
            .contains("in use by another webhooks-local"),
        "{second}"
    );
    let tool = Database::open(&dir.0, Access::Tool).unwrap();
    SqliteStore::new(tool.clone())
        .put_client(&OAuthClient::new(
            &"APP-T".parse().unwrap(),
            "s",
            crate::clock::Clock::now(&crate::clock::SystemClock),
        ))
        .await
        .unwrap();
    assert!(
        SqliteStore::new(first.clone())
            .get_client(&"APP-T".parse().unwrap())
            .await
            .unwrap()
            .is_some(),
        "the runner reads what the tool wrote"
    );
    drop(first);
    Database::open(&dir.0, Access::Runner).expect("the lock goes with the first runner");
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let dir = TempDir::new();
    drop(Database::open(&dir.0, Access::Runner).unwrap());
    let conn = rusqlite::Connection::open(dir.0.join(DATABASE_FILE)).unwrap();
    conn.pragma_update(None, "user_version", schema::SCHEMA_VERSION + 1)
        .unwrap();
    drop(conn);
    let error = Database::open(&dir.0, Access::Runner).unwrap_err();
    assert!(
        matches!(error, OpenError::NewerSchema { found, known, .. }
            if found == schema::SCHEMA_VERSION + 1 && known == schema::SCHEMA_VERSION),
        "{error:?}"
    );
}

#[tokio::test]
async fn queue_visibility_receive_counts_and_dead_letters() {
    let (_dir, clock, q) = new_queue(2);
    q.enqueue(&[job(1)]).await.unwrap().all().unwrap();
    let first = q.receive(10, Duration::ZERO).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].receive_count, 1);
    assert!(
        q.receive(10, Duration::ZERO).await.unwrap().is_empty(),
        "hidden in flight"
    );
    assert_eq!(
        q.depth().await.unwrap(),
        QueueDepth {
            visible: 0,
            in_flight: 1,
            dead: 0,
            parked: 0
        }
    );
    q.retry_later(&first[0].receipt_handle, Duration::from_secs(5))
        .await
        .unwrap();
    clock.advance(Duration::from_millis(4999));
    assert!(
        q.receive(10, Duration::ZERO).await.unwrap().is_empty(),
        "not yet"
    );
    clock.advance(Duration::from_millis(1));
    let second = q.receive(10, Duration::ZERO).await.unwrap();
    assert_eq!(second[0].receive_count, 2);
    assert_eq!(second[0].message_id, first[0].message_id);
    assert!(
        q.retry_later(&first[0].receipt_handle, Duration::ZERO)
            .await
            .is_err(),
        "a stale receipt"
    );
    q.retry_later(&second[0].receipt_handle, Duration::ZERO)
        .await
        .unwrap();
    assert!(
        q.receive(10, Duration::ZERO).await.unwrap().is_empty(),
        "the third receive dead-letters"
    );
    assert_eq!(q.depth().await.unwrap().dead, 1);
    assert_eq!(
        q.dead_letters().await.unwrap(),
        vec![message::encode(&job(1))]
    );
    assert_eq!(q.redrive_dead_letters().await.unwrap(), 1);
    let again = q.receive(10, Duration::ZERO).await.unwrap();
    assert_eq!(again[0].receive_count, 1, "a redriven message starts again");
}

#[tokio::test]
async fn a_message_in_flight_when_the_process_died_comes_back_after_its_timeout() {
    let dir = TempDir::new();
    let clock = clock();
    let taken = {
        let db = Database::open(&dir.0, Access::Runner).unwrap();
        let q = queue(&db, &clock, 5);
        q.enqueue(&[job(1), job(2)]).await.unwrap().all().unwrap();
        let got = q.receive(1, Duration::ZERO).await.unwrap();
        assert_eq!(got.len(), 1);
        got
        // Dropped without deleting: the process is gone.
    };
    let db = Database::open(&dir.0, Access::Runner).unwrap();
    let q = queue(&db, &clock, 5);
    let other = q.receive(10, Duration::ZERO).await.unwrap();
    assert_eq!(other.len(), 1, "only the one not in flight");
    assert_ne!(other[0].message_id, taken[0].message_id);
    q.settle(&other, &Default::default()).await.unwrap();
    clock.advance(Duration::from_secs(30));
    let back = q.receive(10, Duration::ZERO).await.unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].message_id, taken[0].message_id);
    assert_eq!(back[0].receive_count, 2);
    assert_eq!(back[0].first_received_at_ms, taken[0].first_received_at_ms);
    q.settle(&back, &Default::default()).await.unwrap();
    assert_eq!(q.depth().await.unwrap(), QueueDepth::default());
}

#[tokio::test]
async fn settle_keeps_what_the_batch_response_reports_failed() {
    use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse};
    let (_dir, _, q) = new_queue(5);
    q.enqueue(&[job(1), job(2), job(3)])
        .await
        .unwrap()
        .all()
        .unwrap();
    let got = q.receive(10, Duration::ZERO).await.unwrap();
    let mut failure = BatchItemFailure::default();
    failure.item_identifier = got[1].message_id.clone();
    let mut response = SqsBatchResponse::default();
    response.batch_item_failures = vec![failure];
    q.settle(&got, &response).await.unwrap();
    assert_eq!(q.depth().await.unwrap().in_flight, 1);
    assert!(
        !q.delete(&got[0].receipt_handle).await.unwrap(),
        "already deleted"
    );
    assert!(q.delete(&got[1].receipt_handle).await.unwrap());
}

#[tokio::test]
async fn a_long_poll_wakes_when_a_message_is_sent() {
    let dir = TempDir::new();
    let db = Database::open(&dir.0, Access::Runner).unwrap();
    let q = Arc::new(SqliteQueue::new(
        db,
        Arc::new(crate::clock::SystemClock),
        Duration::from_secs(30),
        5,
    ));
    let waiting = tokio::spawn({
        let q = q.clone();
        async move { q.receive(10, Duration::from_secs(20)).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let sent = std::time::Instant::now();
    q.enqueue(&[job(1)]).await.unwrap().all().unwrap();
    let got = waiting.await.unwrap().unwrap();
    assert_eq!(got.len(), 1);
    assert!(
        sent.elapsed() < Duration::from_secs(1),
        "{:?}",
        sent.elapsed()
    );
}

#[tokio::test]
async fn parked_messages_hide_while_held() {
    let (_dir, clock, q) = new_queue(5);
    q.park(&job(1)).await.unwrap();
    q.park(&job(2)).await.unwrap();
    assert_eq!(q.depth().await.unwrap().parked, 2);
    let first = q.take_parked(1, Duration::from_secs(60)).await.unwrap();
    let second = q.take_parked(10, Duration::from_secs(60)).await.unwrap();
    assert_eq!((first.len(), second.len()), (1, 1));
    clock.advance(Duration::from_secs(61));
    let again = q.take_parked(10, Duration::from_secs(60)).await.unwrap();
    assert_eq!(again.len(), 2, "back after the hold");
    assert!(
        q.remove_parked(&first[0].handle).await.is_err(),
        "a stale handle"
    );
    q.remove_parked(&again[0].handle).await.unwrap();
    q.release_parked(&again[1].handle).await.unwrap();
    assert_eq!(
        q.take_parked(10, Duration::from_secs(60))
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(q.parked().await.unwrap().len(), 1);
}

#[tokio::test]
async fn register_is_idempotent_and_owned() {
    let dir = TempDir::new();
    let store = SqliteStore::new(Database::open(&dir.0, Access::Runner).unwrap());
    let s = sub_pair(&store).await;
    for (case, client, unregistered) in [
        ("by another", "c2", Unregistered::OwnedByOther),
        ("by the owner", "c1", Unregistered::Deleted),
        ("again", "c1", Unregistered::NotFound),
    ] {
        assert_eq!(
            store
                .unregister(&s.record, &s.callback, &client.parse().unwrap())
                .await
                .unwrap(),
            unregistered,
            "{case}"
        );
    }
}

async fn sub_pair(store: &SqliteStore) -> Subscription {
    let s = subscription("r1", "https://a.com/1", "c1");
    assert_eq!(store.register(&s).await.unwrap(), Registered::Created);
    assert_eq!(store.register(&s).await.unwrap(), Registered::AlreadyExists);
    let theirs = subscription("r1", "https://a.com/1", "c2");
    assert_eq!(
        store.register(&theirs).await.unwrap(),
        Registered::OwnedByOther
    );
    let health = crate::health::EndpointHealth {
        failing_since: Some(at_ms(3_000)),
        last_error: Some("HTTP 500".into()),
        ..Default::default()
    };
    store
        .set_subscription_health(&s.record, &s.callback, &health)
        .await
        .unwrap();
    let stored = store
        .get_subscription(&s.record, &s.callback)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.health, health);
    assert_eq!(
        store.client_webhooks(&"c1".parse().unwrap()).await.unwrap(),
        vec![stored]
    );
    s
}

#[tokio::test]
async fn pending_pages_coalesce_continue_and_go_behind_the_cursor() {
    let dir = TempDir::new();
    let store = SqliteStore::new(Database::open(&dir.0, Access::Runner).unwrap());
    let w = WindowId(3);
    let shard = Shard(0);
    let r = records_of_shard(shard, "r", 5);
    for k in [2, 0, 1, 0, 3, 4] {
        store.mark(w, &r[k]).await.unwrap();
    }
    let p1 = store.shard_page(w, shard, None, 2).await.unwrap();
    assert_eq!(p1.items, r[..2]);
    let p2 = store
        .shard_page(w, shard, p1.next.as_deref(), 2)
        .await
        .unwrap();
    assert_eq!(p2.items, r[2..4]);
    let p3 = store
        .shard_page(w, shard, p2.next.as_deref(), 2)
        .await
        .unwrap();
    assert_eq!((p3.items, p3.next), (r[4..].to_vec(), None));
    let cursor = FlushCursor::start_of(WindowId(4));
    store
        .save_cursor(&FlushAssignment::all(), &cursor)
        .await
        .unwrap();
    assert_eq!(
        store.cursors().await.unwrap(),
        [(FlushAssignment::all(), cursor)]
    );
    assert!(
        pending_records(&store, w).await.unwrap().is_empty(),
        "flushed windows go"
    );
}

#[tokio::test]
async fn the_flush_lease_is_one_holders_and_a_new_runner_frees_it() {
    let dir = TempDir::new();
    {
        let store = SqliteStore::new(Database::open(&dir.0, Access::Runner).unwrap());
        let flush = async |holder, until, now| {
            store
                .lease_flush(&FlushAssignment::all(), &lease(holder, until), at_ms(now))
                .await
                .unwrap()
        };
        assert!(flush("a", 1_000, 100).await);
        assert!(!flush("b", 1_000, 200).await);
        store
            .release_flush(&FlushAssignment::all(), &LeaseHolder::new("b"))
            .await
            .unwrap();
        assert!(!flush("b", 1_000, 300).await, "not b's to release");
        assert!(flush("b", 2_000, 1_000).await, "expired");
        assert!(
            store
                .lease_sync(&s1(), &lease("a", 10_000), at_ms(0))
                .await
                .unwrap()
        );
        // Killed holding both leases.
    }
    let store = SqliteStore::new(Database::open(&dir.0, Access::Runner).unwrap());
    let sync = async |holder, now| {
        store
            .lease_sync(&s1(), &lease(holder, 10_000), at_ms(now))
            .await
            .unwrap()
    };
    assert!(
        store
            .lease_flush(&FlushAssignment::all(), &lease("c", 3_000), at_ms(1_500))
            .await
            .unwrap(),
        "freed at start"
    );
    assert!(sync("b", 1).await, "freed at start");
    assert!(!sync("a", 2).await);
    assert!(sync("b", 3).await, "held again by b");
    store
        .release_sync(&s1(), &LeaseHolder::new("b"))
        .await
        .unwrap();
    assert!(sync("a", 4).await);
}

/// The times of a page's attempts (epoch ms), in its order.
fn attempt_times(page: &Page<Attempt>) -> Vec<i64> {
    page.items.iter().map(|a| a.at.epoch_ms()).collect()
}

/// The sync the lease and outcome tests use.
fn s1() -> crate::ids::SyncKey {
    crate::ids::SyncKey {
        application: "app".parse().unwrap(),
        sync: "sync_00000000000000000000000000000001".parse().unwrap(),
    }
}

#[tokio::test]
async fn sync_outcomes_count_each_person_once_and_one_claimant_announces() {
    let dir = TempDir::new();
    let store = SqliteStore::new(Database::open(&dir.0, Access::Runner).unwrap());
    let outcome = |p: &str, delivered| PersonOutcome {
        person: record(p),
        delivered,
    };
    let counted = store
        .count_sync_outcomes(&s1(), &[outcome("p1", true), outcome("p2", false)])
        .await
        .unwrap();
    assert_eq!((counted.delivered, counted.failed), (1, 1));
    let again = store
        .count_sync_outcomes(&s1(), &[outcome("p1", true), outcome("p3", true)])
        .await
        .unwrap();
    assert_eq!((again.delivered, again.failed), (1, 0));
    assert_eq!(
        store.get_sync(&s1()).await.unwrap(),
        None,
        "no driver state yet"
    );
    assert!(!store.claim_sync_completion(&s1(), "x").await.unwrap());
    let sync = driver_state(1, crate::sync::SyncState::Running);
    assert_eq!(sync.key(), s1());
    store.save_sync(&sync).await.unwrap();
    let (saved, outcomes) = store.get_sync(&s1()).await.unwrap().unwrap();
    assert_eq!(saved, sync);
    assert_eq!(
        (outcomes.delivered, outcomes.failed),
        (2, 1),
        "saving keeps the counters"
    );
    assert!(store.claim_sync_completion(&s1(), "x").await.unwrap());
    assert!(
        store.claim_sync_completion(&s1(), "x").await.unwrap(),
        "again for x"
    );
    assert!(!store.claim_sync_completion(&s1(), "y").await.unwrap());
}

/// The driver state of sync `n` of application `app` (sync 1 is `s1()`), its scan done.
fn driver_state(n: u32, state: crate::sync::SyncState) -> crate::sync::FullSync {
    crate::sync::FullSync {
        application_id: "app".parse().unwrap(),
        sync_id: format!("sync_{n:032}").parse().unwrap(),
        request_interval_ms: 0,
        state,
        cursor: None,
        scan_done: true,
        scanned: 2,
        delivered: 0,
        failed: 0,
        head_attempts: 0,
        next_attempt_at: None,
        last_request_end: None,
        started_at: crate::testing::at("2026-11-26T00:00:00.000Z"),
        completed_at: None,
    }
}

#[tokio::test]
async fn a_finished_syncs_counted_markers_are_pruned_after_the_retention() {
    use crate::sync::SyncState;
    let dir = TempDir::new();
    let hour = 3_600_000;
    let store = SqliteStore::new(Database::open(&dir.0, Access::Runner).unwrap())
        .with_attempt_retention(Duration::from_millis(hour as u64));
    let outcome = |p: &str| PersonOutcome {
        person: record(p),
        delivered: true,
    };
    // 1 completes (its completion claimed), 2 is cancelled by its driver, 3 still runs.
    let (claimed, cancelled, running) = (
        driver_state(1, SyncState::Running),
        driver_state(2, SyncState::Cancelled),
        driver_state(3, SyncState::Running),
    );
    for sync in [&claimed, &cancelled, &running] {
        store.save_sync(sync).await.unwrap();
        store
            .count_sync_outcomes(&sync.key(), &[outcome("p1"), outcome("p2")])
            .await
            .unwrap();
    }
    assert!(
        store
            .claim_sync_completion(&claimed.key(), "x")
            .await
            .unwrap()
    );
    let markers = |sync: &crate::sync::FullSync| {
        let (application, sync_id) = (sync.application_id.to_string(), sync.sync_id.to_string());
        let db = store.db.clone();
        async move {
            db.read(move |conn| {
                conn.query_row(
                    "SELECT COUNT(*) FROM sync_counted WHERE application = ?1 AND sync_id = ?2",
                    rusqlite::params![application, sync_id],
                    |r| r.get::<_, i64>(0),
                )
                .map_err(db::backend)
            })
            .await
            .unwrap()
        }
    };
    let now = 100 * hour;
    store.prune(now).await.unwrap();
    for sync in [&claimed, &cancelled, &running] {
        assert_eq!(
            markers(sync).await,
            2,
            "just finished: kept for the retention"
        );
    }
    store.prune(now + 2 * hour).await.unwrap();
    assert_eq!(
        (
            markers(&claimed).await,
            markers(&cancelled).await,
            markers(&running).await
        ),
        (0, 0, 2),
        "the finished syncs' markers are gone, the running one's kept"
    );
    let (_, outcomes) = store.get_sync(&claimed.key()).await.unwrap().unwrap();
    assert_eq!(outcomes.delivered, 2, "the counters stay with the sync");
    assert_eq!(
        store
            .count_sync_outcomes(&running.key(), &[outcome("p1")])
            .await
            .unwrap()
            .delivered,
        0,
        "a running sync still counts each person once"
    );
}

fn logged(
    endpoint: &EndpointKey,
    n: u32,
    attempt: u32,
    at_ms_value: i64,
    acked: bool,
) -> LoggedAttempt {
    let job = job(n);
    LoggedAttempt {
        attempt: Attempt {
            message_id: job.id.clone(),
            endpoint: endpoint.clone(),
            attempt,
            at: at_ms(at_ms_value),
            outcome: if acked {
                OutcomeClass::Acked
            } else {
                OutcomeClass::HttpStatus
            },
            status: Some(if acked { 204 } else { 500 }),
            latency_ms: 3,
            response: String::new(),
        },
        job,
    }
}

#[tokio::test]
async fn the_attempt_log_pages_newest_first_and_finds_failed_messages() {
    let dir = TempDir::new();
    let store = SqliteStore::new(Database::open(&dir.0, Access::Runner).unwrap());
    let endpoint = EndpointKey::application(&"app-1".parse().unwrap());
    let other = EndpointKey::application(&"app-2".parse().unwrap());
    let log_endpoint = crate::attempts::LogEndpoint::application(&"app-1".parse().unwrap());
    store
        .record(vec![
            logged(&endpoint, 1, 1, 1_000, false),
            logged(&endpoint, 1, 2, 2_000, true),
            logged(&endpoint, 2, 1, 3_000, false),
            logged(&endpoint, 3, 1, 4_000, false),
            logged(&other, 4, 1, 5_000, false),
        ])
        .await
        .unwrap();
    let page = store
        .attempts(&log_endpoint, StatusFilter::All, None, 3)
        .await
        .unwrap();
    assert_eq!(attempt_times(&page), [4_000, 3_000, 2_000]);
    let rest = store
        .attempts(&log_endpoint, StatusFilter::All, page.next.as_deref(), 3)
        .await
        .unwrap();
    assert_eq!((rest.items.len(), rest.next), (1, None));
    let acked = store
        .attempts(&log_endpoint, StatusFilter::Acked, None, 10)
        .await
        .unwrap();
    assert_eq!(attempt_times(&acked), [2_000]);
    let (message, attempts) = store
        .message(&log_endpoint, &job(1).id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (message.last_attempt, message.last_outcome),
        (2, OutcomeClass::Acked)
    );
    assert_eq!(
        attempts.iter().map(|a| a.attempt).collect::<Vec<_>>(),
        [1, 2]
    );
    let failed = store
        .failed_since(&log_endpoint, at_ms(0), 1)
        .await
        .unwrap();
    assert_eq!(
        failed
            .items
            .iter()
            .map(|m| m.job.id.clone())
            .collect::<Vec<_>>(),
        [job(2).id]
    );
    assert!(failed.more, "one more failed message");
    let all_failed = store
        .failed_since(&log_endpoint, at_ms(0), 10)
        .await
        .unwrap();
    assert_eq!(all_failed.items.len(), 2, "message 1 was acked at last");
    assert_eq!(
        store
            .failed_since(&log_endpoint, at_ms(3_500), 10)
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    assert_eq!(
        store
            .messages(&log_endpoint, &[job(1).id, job(4).id])
            .await
            .unwrap()
            .len(),
        1,
        "only this endpoint's"
    );
}

#[tokio::test]
async fn record_changes_wait_in_the_stream_until_captured() {
    let dir = TempDir::new();
    let id = record("0000-0002-1825-0097");
    {
        let records = SqliteRecords::new(
            Database::open(&dir.0, Access::Runner).unwrap(),
            Arc::new(crate::clock::SystemClock),
        );
        let person = serde_json::json!({"firstName": "Josiah"})
            .as_object()
            .unwrap()
            .clone();
        let insert = records.put_person(&id, person.clone()).await.unwrap();
        assert_eq!(insert.event_name, "INSERT");
        let modify = records.put_person(&id, person).await.unwrap();
        assert_eq!(modify.event_name, "MODIFY");
        assert!(modify.change.sequence_number > insert.change.sequence_number);
        records.captured(&[insert]).await.unwrap();
        // Killed before the modification was captured.
    }
    let records = SqliteRecords::new(
        Database::open(&dir.0, Access::Runner).unwrap(),
        Arc::new(crate::clock::SystemClock),
    );
    let left = records.uncaptured().await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].event_name, "MODIFY");
    assert_eq!(
        crate::handlers::change_capture::changed_record(&left[0]),
        Some(id.clone())
    );
    let remove = records.delete_person(&id).await.unwrap().unwrap();
    assert_eq!(remove.event_name, "REMOVE");
    assert!(records.delete_person(&id).await.unwrap().is_none());
    records.captured(&left).await.unwrap();
    records.captured(&[remove]).await.unwrap();
    assert!(records.uncaptured().await.unwrap().is_empty());
}

#[tokio::test]
async fn scan_consented_examines_limit_records_per_page() {
    let dir = TempDir::new();
    let records = SqliteRecords::new(
        Database::open(&dir.0, Access::Runner).unwrap(),
        Arc::new(crate::clock::SystemClock),
    );
    for (id, consented) in [("p1", true), ("p2", false), ("p3", true)] {
        let person = if consented {
            serde_json::json!({"consents": {"app": ["members.read_name"]}})
        } else {
            serde_json::json!({})
        };
        records
            .put_person(&record(id), person.as_object().unwrap().clone())
            .await
            .unwrap();
    }
    let first = records
        .scan_consented(&"app".parse().unwrap(), None, 2)
        .await
        .unwrap();
    assert_eq!(first.items.len(), 1, "p2 examined, not consented");
    assert_eq!(first.next.as_deref(), Some("p2"));
    let second = records
        .scan_consented(&"app".parse().unwrap(), first.next.as_deref(), 2)
        .await
        .unwrap();
    assert_eq!(second.items[0].0, record("p3"));
    assert_eq!(second.next, None);
}

#[tokio::test]
async fn one_failed_write_in_a_group_leaves_the_others() {
    let dir = TempDir::new();
    let db = Database::open(&dir.0, Access::Runner).unwrap();
    let mut writes = Vec::new();
    for n in 0..200i64 {
        let db = db.clone();
        writes.push(tokio::spawn(async move {
            db.write(Durability::Normal, move |conn| {
                conn.execute(
                    "INSERT INTO meta (name, value) VALUES (?1, '1')",
                    [format!("k{n}")],
                )
                .map_err(db::backend)?;
                if n % 7 == 0 {
                    return Err(crate::ports::BackendError::Unavailable("refused".into()));
                }
                Ok(n)
            })
            .await
        }));
    }
    let mut kept = 0;
    for (n, write) in writes.into_iter().enumerate() {
        match write.await.unwrap() {
            Ok(m) => {
                assert_eq!(m, n as i64);
                kept += 1;
            }
            Err(_) => assert_eq!(n % 7, 0),
        }
    }
    let rows: i64 = db
        .read(|conn| {
            conn.query_row("SELECT COUNT(*) FROM meta WHERE name LIKE 'k%'", [], |r| {
                r.get(0)
            })
            .map_err(db::backend)
        })
        .await
        .unwrap();
    assert_eq!(
        rows, kept,
        "the failed writes were rolled back, the others kept"
    );
}

#[tokio::test]
async fn a_poison_item_is_kept_until_removed_and_marks_the_current_window() {
    let dir = TempDir::new();
    let store = SqliteStore::new(Database::open(&dir.0, Access::Runner).unwrap());
    let item = crate::poison::PoisonItem::corrupt(
        &record("r1"),
        WindowId(2),
        None,
        "bad".into(),
        crate::testing::at_ms(0),
    );
    store.set_aside(&item).await.unwrap();
    store.set_aside(&item).await.unwrap();
    assert_eq!(store.poison_items().await.unwrap(), vec![item.clone()]);
    store.save_current_window(WindowId(7)).await.unwrap();
    assert_eq!(
        store.mark_in_current_window(&record("r1")).await.unwrap(),
        WindowId(7)
    );
    assert_eq!(
        pending_records(&store, WindowId(7)).await.unwrap(),
        vec![record("r1")]
    );
    assert!(store.remove_poison(&item.id()).await.unwrap());
    assert!(!store.remove_poison(&item.id()).await.unwrap());
}

/// Rows of `table`.
async fn rows(store: &SqliteStore, table: &'static str) -> i64 {
    store
        .db
        .read(move |conn| {
            conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
                .map_err(db::backend)
        })
        .await
        .unwrap()
}

const HOUR_MS: i64 = 3_600_000;

/// A store that keeps attempts an hour, and app-1's endpoint as the log writes and reads it.
fn kept_an_hour(dir: &TempDir) -> (SqliteStore, EndpointKey, crate::attempts::LogEndpoint) {
    let store = SqliteStore::new(Database::open(&dir.0, Access::Runner).unwrap())
        .with_attempt_retention(Duration::from_secs(3600));
    let app: crate::ids::ApplicationId = "app-1".parse().unwrap();
    (
        store,
        EndpointKey::application(&app),
        crate::attempts::LogEndpoint::application(&app),
    )
}

#[tokio::test]
async fn a_batchs_quiet_attempts_are_one_row_and_go_with_it_after_the_retention() {
    let dir = TempDir::new();
    let (store, endpoint, log_endpoint) = kept_an_hour(&dir);
    let (hour, now) = (HOUR_MS, 10 * HOUR_MS);
    // Two batches of quiet attempts (first, acknowledged), the older past the retention;
    // message 9 failed first, so its acknowledgement is written with its kept row.
    let old: Vec<LoggedAttempt> = (1..=3)
        .map(|n| logged(&endpoint, n, 1, now - 2 * hour + i64::from(n), true))
        .collect();
    let new: Vec<LoggedAttempt> = (4..=6)
        .map(|n| logged(&endpoint, n, 1, now - 10 + i64::from(n), true))
        .collect();
    store.record(old).await.unwrap();
    store.record(new).await.unwrap();
    store
        .record(vec![logged(&endpoint, 9, 1, now - 5, false)])
        .await
        .unwrap();
    store
        .record(vec![logged(&endpoint, 9, 1, now - 1, true)])
        .await
        .unwrap();
    assert_eq!(
        (
            rows(&store, "quiet_groups").await,
            rows(&store, "quiet_attempts").await,
            rows(&store, "attempts").await,
            rows(&store, "messages").await
        ),
        (2, 6, 2, 1),
        "a group per batch, a finder per quiet attempt; message 9 apart"
    );
    let listed = |store: &SqliteStore| {
        let (store, endpoint) = (store.clone(), log_endpoint.clone());
        async move {
            store
                .attempts(&endpoint, StatusFilter::Acked, None, 10)
                .await
                .unwrap()
                .items
                .len()
        }
    };
    assert_eq!(listed(&store).await, 7);
    let (kept, attempts) = store
        .message(&log_endpoint, &job(2).id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((kept.job, attempts.len()), (job(2), 1));
    let pruned = store.prune(now).await.unwrap();
    assert_eq!(pruned.attempts, 3, "the old batch's quiet attempts");
    assert_eq!(
        (
            rows(&store, "quiet_groups").await,
            rows(&store, "quiet_attempts").await,
            rows(&store, "quiet_locators").await
        ),
        (1, 3, 3),
        "the new batch's group, its attempts, its three windows' locators"
    );
    assert_eq!(listed(&store).await, 4);
    assert!(
        store
            .message(&log_endpoint, &job(2).id)
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn attempts_messages_recoveries_and_tokens_go_after_their_retention() {
    let dir = TempDir::new();
    let (store, endpoint, log_endpoint) = kept_an_hour(&dir);
    let (hour, now) = (HOUR_MS, 10 * HOUR_MS);
    store
        .record(vec![
            logged(&endpoint, 1, 1, now - 2 * hour, false),
            logged(&endpoint, 1, 2, now - hour - 1, true),
            logged(&endpoint, 2, 1, now - 2 * hour, false),
            logged(&endpoint, 2, 2, now - 10, true),
        ])
        .await
        .unwrap();
    let recovery = |id: &str, started_at_ms| crate::attempts::Recovery {
        id: crate::attempts::RecoveryId::new(id),
        endpoint: endpoint.clone(),
        since: "1h".into(),
        started_at: at_ms(started_at_ms),
        messages: vec![],
        complete: true,
    };
    store
        .save_recovery(&recovery("rec_old", now - 2 * hour))
        .await
        .unwrap();
    store
        .save_recovery(&recovery("rec_new", now - 10))
        .await
        .unwrap();
    let token = |hash: &str, expires_at| AccessToken {
        token_hash: hash.into(),
        refresh_token_hash: "r".into(),
        client_id: "c".parse().unwrap(),
        scope: "/webhook".into(),
        issued_at: Timestamp::UNIX_EPOCH,
        expires_at: Timestamp::from_epoch_secs(expires_at).unwrap(),
    };
    store
        .put_token(&token("expired", now / 1000 - 1))
        .await
        .unwrap();
    store
        .put_token(&token("valid", now / 1000 + 60))
        .await
        .unwrap();

    let pruned = store.prune(now).await.unwrap();
    assert_eq!(
        pruned,
        Pruned {
            attempts: 3,
            messages: 1,
            recoveries: 1,
            tokens: 1,
            sync_markers: 0,
        },
        "message 1's latest attempt is older than the retention, message 2's is not"
    );
    let left = store
        .attempts(&log_endpoint, StatusFilter::All, None, 10)
        .await
        .unwrap();
    assert_eq!(attempt_times(&left), [now - 10]);
    assert!(
        store
            .message(&log_endpoint, &job(1).id)
            .await
            .unwrap()
            .is_none()
    );
    let (kept, attempts) = store
        .message(&log_endpoint, &job(2).id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((kept.last_attempt, attempts.len()), (2, 1));
    assert!(
        store
            .recovery(&endpoint, &crate::attempts::RecoveryId::new("rec_old"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .recovery(&endpoint, &crate::attempts::RecoveryId::new("rec_new"))
            .await
            .unwrap()
            .is_some()
    );
    assert!(store.get_token("expired").await.unwrap().is_none());
    assert!(store.get_token("valid").await.unwrap().is_some());
    assert_eq!(
        store.prune(now).await.unwrap(),
        Pruned::default(),
        "nothing more"
    );
}

#[tokio::test]
async fn a_version_1_database_is_migrated_when_opened() {
    let dir = TempDir::new();
    let file = dir.0.join(DATABASE_FILE);
    let client = OAuthClient::new(
        &"APP-V1".parse().unwrap(),
        "secret",
        crate::clock::Clock::now(&crate::clock::SystemClock),
    );
    let endpoint = EndpointKey::application(&"app-1".parse().unwrap());
    let log_endpoint = crate::attempts::LogEndpoint::application(&"app-1".parse().unwrap());
    let old = logged(&endpoint, 1, 1, 1_000, true);
    {
        // What version 1 of this program left: its schema, and rows written by it.
        let mut conn = rusqlite::Connection::open(&file).unwrap();
        schema::migrate_to(&mut conn, &file, 1).unwrap();
        let version: u32 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, 1);
        conn.execute(
            "INSERT INTO clients (id, body) VALUES (?1, ?2)",
            rusqlite::params!["APP-V1", serde_json::to_string(&client).unwrap()],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO attempts (endpoint, sort_key, message_id, at_ms, acked, body)
             VALUES (?1, ?2, ?3, ?4, 1, ?5)",
            rusqlite::params![
                endpoint.as_str(),
                old.attempt.sort_key(),
                old.attempt.message_id.as_str(),
                old.attempt.at.epoch_ms(),
                serde_json::to_string(&old.attempt).unwrap()
            ],
        )
        .unwrap();
    }
    let db = Database::open(&dir.0, Access::Runner).unwrap();
    let (version, indexes) = db
        .read(|conn| {
            let version: u32 = conn
                .pragma_query_value(None, "user_version", |r| r.get(0))
                .map_err(db::backend)?;
            let indexes: i64 = conn
                .query_row(
                    "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name IN
                     ('attempts_by_time', 'messages_by_time', 'recoveries_by_time', 'tokens_by_expiry')",
                    [],
                    |r| r.get(0),
                )
                .map_err(db::backend)?;
            Ok((version, indexes))
        })
        .await
        .unwrap();
    assert_eq!((version, indexes), (schema::SCHEMA_VERSION, 4));
    let store = SqliteStore::new(db).with_attempt_retention(Duration::from_secs(1));
    assert_eq!(
        store.get_client(&"APP-V1".parse().unwrap()).await.unwrap(),
        Some(client)
    );
    assert_eq!(
        store
            .attempts(&log_endpoint, StatusFilter::All, None, 10)
            .await
            .unwrap()
            .items,
        vec![old.attempt]
    );
    assert_eq!(
        store.prune(10_000).await.unwrap().attempts,
        1,
        "pruned through the new index"
    );
}
