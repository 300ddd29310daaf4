//! The DynamoDB attempt log keeps a batch's quiet attempts (first attempt, acknowledged) in
//! one item per owner and every other attempt on its own, and the SQLite log keeps them in
//! one row per batch: every read must still answer exactly what the in-memory log answers. Both are fed the same attempts — quiet ones,
//! failures and retries, owners' redeliveries, a failed message sent again from the
//! dead-letter queue (its acknowledged first attempt is quiet, after failures), batches
//! written concurrently with overlapping times, a batch over the item size and one over
//! the group span — and then every listing (each filter, paged at several sizes), every
//! message, `failed_since` and `messages` are compared.

use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use webhooks::attempts::{
    Attempt, EndpointKey, LogEndpoint, LoggedAttempt, OutcomeClass, StatusFilter, StoredMessage,
};
use webhooks::aws::dynamodb::{DynamoStore, GROUP_SHARDS};
use webhooks::callback::{CallbackUrl, UrlPolicy};
use webhooks::job::{DeliveryJob, MessageId};
use webhooks::memory::MemoryStore;
use webhooks::ports::AttemptLog;
use webhooks::record::RecordId;
use webhooks::subscription::Subscription;
use webhooks::window::WindowId;

/// 2025-11-24T16:00:00Z, a window boundary.
const T0: i64 = 1_764_000_000_000;
const WINDOW_MS: i64 = 300_000;
const RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

fn subscription(client: &str, n: usize) -> Subscription {
    Subscription {
        record: RecordId::parse(&format!("0000-0002-7465-{:04}", 2100 + n)).unwrap(),
        callback: CallbackUrl::parse(
            &format!("https://{}.example/hook/{n}", client.to_lowercase()),
            UrlPolicy::default(),
        )
        .unwrap(),
        client_id: client.parse().unwrap(),
        created_at: webhooks::clock::Timestamp::UNIX_EPOCH,
        health: Default::default(),
    }
}

/// The endpoints: two clients' subscriptions and two applications.
fn endpoints() -> Vec<(LogEndpoint, Option<Subscription>)> {
    let mut all = Vec::new();
    for (client, first) in [("C1", 0), ("C2", 10)] {
        for n in first..first + 4 {
            let s = subscription(client, n);
            all.push((LogEndpoint::subscription(&s), Some(s)));
        }
    }
    for app in ["A1", "A2"] {
        all.push((LogEndpoint::application(&app.parse().unwrap()), None));
    }
    all
}

fn created_at(window: u64) -> webhooks::clock::Timestamp {
    webhooks::testing::at_ms(T0 + window as i64 * WINDOW_MS)
}

fn job_for(endpoint: &(LogEndpoint, Option<Subscription>), window: u64) -> DeliveryJob {
    match &endpoint.1 {
        Some(s) => DeliveryJob::for_subscription(s, WindowId(window), created_at(window)),
        None => {
            let webhooks::attempts::EndpointOwner::Application(app) = &endpoint.0.owner else {
                unreachable!("an endpoint without a subscription is an application's")
            };
            let record = RecordId::parse("0000-0002-7465-2162").unwrap();
            let mut person = serde_json::Map::new();
            person.insert("id".into(), format!("{app}-{window}").into());
            DeliveryJob::for_application(app, &record, person, WindowId(window), created_at(window))
        }
    }
}

fn logged(job: &DeliveryJob, n: u32, at_ms: i64, status: u16, response: &str) -> LoggedAttempt {
    let acked = (200..300).contains(&status);
    LoggedAttempt {
        attempt: Attempt {
            message_id: job.id.clone(),
            endpoint: EndpointKey::of_job(job),
            attempt: n,
            at: webhooks::testing::at_ms(at_ms),
            outcome: if acked {
                OutcomeClass::Acked
            } else {
                OutcomeClass::HttpStatus
            },
            status: Some(status),
            latency_ms: 12,
            response: response.to_owned(),
        },
        job: job.clone(),
    }
}

/// The attempts of one message, in the order they are made.
fn story(rng: &mut fastrand::Rng, job: &DeliveryJob, start: i64) -> Vec<LoggedAttempt> {
    let mut at = start;
    let mut next = |rng: &mut fastrand::Rng| {
        at += rng.i64(1..120_000);
        at
    };
    let redelivered = job.redelivered();
    let replayed = job.replayable();
    match rng.u8(0..20) {
        0..=11 => vec![logged(job, 1, next(rng), 204, "")],
        12 | 13 => vec![
            logged(job, 1, next(rng), 500, "down"),
            logged(job, 2, next(rng), 204, "ok"),
        ],
        // Dead-lettered, then sent again by its owner.
        14 => vec![
            logged(job, 1, next(rng), 500, "down"),
            logged(job, 2, next(rng), 503, "still down"),
            logged(&redelivered, 1, next(rng), 204, ""),
        ],
        // Dead-lettered, then replayed from the dead-letter queue: a quiet attempt after failures.
        15 | 16 => vec![
            logged(job, 1, next(rng), 500, "down"),
            logged(job, 2, next(rng), 502, "down"),
            logged(&replayed, 1, next(rng), 204, "back"),
        ],
        17 => vec![
            logged(job, 1, next(rng), 500, "down"),
            logged(job, 2, next(rng), 500, "down"),
        ],
        // Acknowledged, then sent again by its owner twice, the second failing.
        _ => vec![
            logged(job, 1, next(rng), 200, "ok"),
            logged(&redelivered, 1, next(rng), 204, ""),
            logged(&redelivered, 1, next(rng), 500, "oops"),
        ],
    }
}

/// Record calls as concurrent delivery invocations make them: three lanes, each message's
/// attempts in one lane in the order they were made, each lane cut into batches.
fn batches(rng: &mut fastrand::Rng) -> Vec<Vec<LoggedAttempt>> {
    let endpoints = endpoints();
    let mut lanes: Vec<Vec<LoggedAttempt>> = vec![Vec::new(); 3];
    for window in 0..6u64 {
        for (n, endpoint) in endpoints.iter().enumerate() {
            if rng.u8(0..10) < 3 {
                continue;
            }
            let job = job_for(endpoint, window);
            let start = T0 + window as i64 * WINDOW_MS + 30_000;
            lanes[(n + window as usize) % 3].extend(story(rng, &job, start));
        }
    }
    let mut lanes: Vec<Vec<Vec<LoggedAttempt>>> = lanes
        .into_iter()
        .map(|lane| {
            let mut calls = Vec::new();
            let mut lane = lane.into_iter().peekable();
            while lane.peek().is_some() {
                let size = rng.usize(1..12);
                calls.push(lane.by_ref().take(size).collect());
            }
            calls.reverse();
            calls
        })
        .collect();
    // The lanes' calls interleave at random, each lane's in its order (so each message's
    // attempts are recorded in the order they were made).
    let mut calls = Vec::new();
    loop {
        let open: Vec<usize> = (0..lanes.len()).filter(|l| !lanes[*l].is_empty()).collect();
        let Some(&lane) = open.get(rng.usize(..open.len().max(1))) else {
            return calls;
        };
        calls.extend(lanes[lane].pop());
    }
}

async fn dynamo() -> (DynamoStore, webhooks_tests::moto::MotoEnv) {
    let env = webhooks_tests::moto::MotoEnv::create(5).await;
    let store = DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&env.config),
        &env.service_table,
        std::sync::Arc::new(webhooks::clock::SystemClock),
    )
    .with_attempt_retention(RETENTION);
    (store, env)
}

/// Every page of a listing, concatenated (a DynamoDB page may stop short with a cursor).
async fn all_pages(
    log: &dyn AttemptLog,
    endpoint: &LogEndpoint,
    filter: StatusFilter,
    limit: usize,
) -> Vec<Attempt> {
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..1000 {
        let page = log
            .attempts(endpoint, filter, after.as_deref(), limit)
            .await
            .unwrap();
        assert!(page.items.len() <= limit);
        all.extend(page.items);
        match page.next {
            Some(next) => after = Some(next),
            None => return all,
        }
    }
    panic!("a listing that does not end");
}

fn ids_of(messages: &[StoredMessage]) -> Vec<&str> {
    messages.iter().map(|m| m.job.id.as_str()).collect()
}

async fn same_answers(memory: &MemoryStore, store: &dyn AttemptLog, limits: &[usize]) {
    for (endpoint, _) in endpoints() {
        for filter in [StatusFilter::All, StatusFilter::Failed, StatusFilter::Acked] {
            let expected = all_pages(memory, &endpoint, filter, 1000).await;
            for &limit in limits {
                let got = all_pages(store, &endpoint, filter, limit).await;
                assert_eq!(got, expected, "{endpoint:?} {filter:?} by {limit}");
            }
        }
        let everything = all_pages(memory, &endpoint, StatusFilter::All, 1000).await;
        let mut ids: Vec<MessageId> = everything.iter().map(|a| a.message_id.clone()).collect();
        ids.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        ids.dedup();
        for id in &ids {
            assert_eq!(
                store.message(&endpoint, id).await.unwrap(),
                memory.message(&endpoint, id).await.unwrap(),
                "{endpoint:?} {id:?}"
            );
        }
        let stranger = LogEndpoint::application(&"A-none".parse().unwrap());
        if let Some(id) = ids.first() {
            assert_eq!(store.message(&stranger, id).await.unwrap(), None);
        }
        let mut asked = ids.clone();
        asked.push(MessageId::parse("msg_0000000100000000000000000000abcd").unwrap());
        let sorted = |mut m: Vec<StoredMessage>| {
            m.sort_by(|a, b| a.job.id.as_str().cmp(b.job.id.as_str()));
            m
        };
        assert_eq!(
            sorted(store.messages(&endpoint, &asked).await.unwrap()),
            sorted(memory.messages(&endpoint, &asked).await.unwrap()),
            "{endpoint:?}"
        );
        for since_ms in [0, T0 + 2 * WINDOW_MS, T0 + 4 * WINDOW_MS + 60_000] {
            let since = webhooks::testing::at_ms(since_ms);
            for limit in [1, 2, 1000] {
                let got = store.failed_since(&endpoint, since, limit).await.unwrap();
                let expected = memory.failed_since(&endpoint, since, limit).await.unwrap();
                assert_eq!(
                    (ids_of(&got.items), got.more),
                    (ids_of(&expected.items), expected.more),
                    "{endpoint:?} since {since} limit {limit}"
                );
                assert_eq!(got.items, expected.items);
            }
        }
    }
}

#[tokio::test]
async fn every_read_answers_as_the_in_memory_log() {
    let seed = webhooks_tests::seed("ATTEMPT_LOG_SEED", 20261126);
    let mut rng = fastrand::Rng::with_seed(seed);
    let memory = MemoryStore::default();
    let (store, _env) = dynamo().await;
    let calls = batches(&mut rng);
    let quiet = calls.iter().flatten().filter(|l| l.is_quiet()).count();
    let total: usize = calls.iter().map(Vec::len).sum();
    assert!(
        quiet > total / 4 && quiet < total,
        "{quiet} of {total}: a mix"
    );
    for call in &calls {
        memory.record(call.to_vec()).await.unwrap();
        store.record(call.to_vec()).await.unwrap();
    }
    same_answers(&memory, &store, &[1, 3, 100]).await;
}

/// A batch larger than one item can hold, and one whose attempts span more than a group
/// may: split, each part under DynamoDB's 400 KB, each carrying its TTL; read as one.
#[tokio::test]
async fn large_and_long_batches_are_split() {
    let memory = MemoryStore::default();
    let (store, env) = dynamo().await;
    let endpoints = endpoints();
    let c1: Vec<_> = endpoints.iter().take(4).collect();
    let mut big = Vec::new();
    for window in 10..110u64 {
        for (n, endpoint) in c1.iter().enumerate() {
            let job = job_for(endpoint, window);
            let at = T0 + 10 * WINDOW_MS + (window as i64) * 100 + n as i64;
            big.push(logged(&job, 1, at, 204, &"x".repeat(1000)));
        }
    }
    let long: Vec<LoggedAttempt> = (0..20)
        .map(|i| {
            logged(
                &job_for(c1[0], 200 + i),
                1,
                T0 + 20 * WINDOW_MS + i as i64 * 20_000,
                204,
                "",
            )
        })
        .collect();
    for call in [&big, &long] {
        memory.record(call.to_vec()).await.unwrap();
        store.record(call.to_vec()).await.unwrap();
    }
    // The owner's groups are spread over its 16 group partitions (the earlier single one,
    // `GROUP#client_C1`, stays empty).
    assert!(env.partition("GROUP#client_C1").await.is_empty());
    let mut groups = Vec::new();
    let mut partitions = 0;
    for shard in 0..16 {
        let items = env.partition(&format!("GROUP#client_C1#{shard}")).await;
        partitions += usize::from(!items.is_empty());
        groups.extend(items);
    }
    assert!(partitions >= 2, "spread over partitions: {partitions}");
    let mut sizes = BTreeMap::new();
    for item in &groups {
        let sk = item["sk"].as_s().unwrap();
        let newest: i64 = sk[..13].parse().unwrap();
        let expires: i64 = item["expires_at"].as_n().unwrap().parse().unwrap();
        assert_eq!(expires, newest / 1000 + RETENTION.as_secs() as i64, "{sk}");
        // The entries, deflated (a group is cut by the size of their text).
        let size = item["z"].as_b().unwrap().as_ref().len();
        assert!(size < 400_000, "{sk}: {size} bytes");
        sizes.insert(sk.clone(), size);
    }
    // 400 entries of over a KiB: at least two groups; 20 attempts over 380 s with a
    // 60 s span: at least five.
    assert!(groups.len() >= 2 + 5, "{sizes:?}");
    same_answers(&memory, &store, &[100]).await;
}

/// A SQLite store on a fresh directory under the system's temporary directory.
struct SqliteLog {
    store: webhooks::sqlite::SqliteStore,
    dir: std::path::PathBuf,
}

impl SqliteLog {
    fn open() -> Self {
        let dir = std::env::temp_dir().join(format!("webhooks-groups-{}", uuid::Uuid::new_v4()));
        let db = webhooks::sqlite::Database::open(&dir, webhooks::sqlite::Access::Runner).unwrap();
        Self {
            store: webhooks::sqlite::SqliteStore::new(db).with_attempt_retention(RETENTION),
            dir,
        }
    }
}

impl Drop for SqliteLog {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The same mix on SQLite, where a batch's quiet attempts are one row (recorded in calls
/// as the delivery handler makes them, one per batch).
#[tokio::test]
async fn every_read_answers_as_the_in_memory_log_on_sqlite() {
    let seed = webhooks_tests::seed("ATTEMPT_LOG_SEED", 20261126);
    let mut rng = fastrand::Rng::with_seed(seed);
    let memory = MemoryStore::default();
    let log = SqliteLog::open();
    let calls = batches(&mut rng);
    for call in &calls {
        memory.record(call.to_vec()).await.unwrap();
        log.store.record(call.to_vec()).await.unwrap();
    }
    // At least once: a batch recorded again.
    if let Some(call) = calls.get(calls.len() / 2) {
        memory.record(call.to_vec()).await.unwrap();
        log.store.record(call.to_vec()).await.unwrap();
    }
    same_answers(&memory, &log.store, &[1, 3, 100]).await;
}

/// The large and long batches on SQLite: one row each, read as the in-memory log.
#[tokio::test]
async fn large_and_long_batches_on_sqlite() {
    let memory = MemoryStore::default();
    let log = SqliteLog::open();
    let endpoints = endpoints();
    let mut big = Vec::new();
    for window in 10..110u64 {
        for (n, endpoint) in endpoints.iter().enumerate() {
            let job = job_for(endpoint, window);
            let at = T0 + 10 * WINDOW_MS + (window as i64) * 100 + n as i64;
            big.push(logged(&job, 1, at, 204, &"x".repeat(1000)));
        }
    }
    memory.record(big.clone()).await.unwrap();
    log.store.record(big).await.unwrap();
    same_answers(&memory, &log.store, &[100]).await;
}

/// Groups and locators written before the group partitions were sharded (one
/// `GROUP#<owner>` partition, `LOCATE#<owner>#<tag>` locators) are still read: the log is
/// recorded, then every group and locator is moved back to where earlier versions wrote
/// it, and every read still answers as the in-memory log.
#[tokio::test]
async fn groups_in_the_single_partition_of_earlier_versions_are_still_read() {
    let seed = webhooks_tests::seed("ATTEMPT_LOG_SEED", 20261127);
    let mut rng = fastrand::Rng::with_seed(seed);
    let memory = MemoryStore::default();
    let (store, env) = dynamo().await;
    let calls = batches(&mut rng);
    for call in &calls {
        memory.record(call.to_vec()).await.unwrap();
        store.record(call.to_vec()).await.unwrap();
    }
    // Where this version wrote each group and locator, and where earlier versions did.
    let owners: BTreeSet<String> = endpoints().iter().map(|(e, _)| e.owner.key()).collect();
    let tags: BTreeSet<String> = calls
        .iter()
        .flatten()
        .map(|l| l.job.id.tag().to_owned())
        .collect();
    let mut partitions = Vec::new();
    for owner in &owners {
        for shard in 0..GROUP_SHARDS {
            partitions.push((format!("GROUP#{owner}#{shard}"), format!("GROUP#{owner}")));
            for tag in &tags {
                partitions.push((
                    format!("LOCATE#{owner}#{tag}#{shard}"),
                    format!("LOCATE#{owner}#{tag}"),
                ));
            }
        }
    }
    let dynamodb = aws_sdk_dynamodb::Client::new(&env.config);
    let mut moved = 0;
    for (pk, legacy) in partitions {
        for item in env.partition(&pk).await {
            let mut old = item.clone();
            old.insert("pk".into(), AttributeValue::S(legacy.clone()));
            dynamodb
                .put_item()
                .table_name(&env.service_table)
                .set_item(Some(old))
                .send()
                .await
                .unwrap();
            dynamodb
                .delete_item()
                .table_name(&env.service_table)
                .key("pk", AttributeValue::S(pk.clone()))
                .key("sk", item["sk"].clone())
                .send()
                .await
                .unwrap();
            moved += 1;
        }
    }
    assert!(moved > 10, "groups and locators moved: {moved}");
    same_answers(&memory, &store, &[1, 3, 100]).await;
}
