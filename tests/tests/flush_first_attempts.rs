//! The flush makes the first attempt of a small page's jobs itself
//! (`FlushSettings::first_attempts_up_to`): acknowledged jobs never reach the queue, a failed
//! one goes on it for its next attempt after the retry delay, carrying the attempt it made,
//! and a job on its last attempt goes to the dead-letter queue. A larger page, or a run too
//! near its deadline, queues every job as before. Over the memory adapters, with a real
//! receiver on 127.0.0.1.

use std::sync::{Arc, Mutex};
use std::time::Duration;
use webhooks::handlers::{Delivery, DeliverySettings, Flush, FlushReport, FlushSettings};
use webhooks::job::DeliveryJob;
use webhooks::memory::{MemoryQueue, MemoryStore};
use webhooks::oauth::OAuthClient;
use webhooks::ports::{ClientStore, PendingChanges, SubscriptionStore};
use webhooks::record::RecordId;
use webhooks::retry::RetryPolicy;
use webhooks::testing::faults::{Fault, Faults};
use webhooks::window::{FlushWindows, ManualWindows, Shard};
use webhooks_tests::Receiver;

const SECRET: &str = "client-secret";

struct Service {
    flush: Flush,
    queue: Arc<MemoryQueue>,
    receiver: Receiver,
    /// The delivery metric lines printed: one per batch of first attempts.
    metric_lines: Arc<Mutex<Vec<String>>>,
}

/// `records` changed in a closed window, each with one callback on the receiver; the
/// flush attempts pages of at most `up_to` jobs itself, `max_attempts` in all.
async fn service(records: &[RecordId], up_to: usize, max_attempts: u32) -> Service {
    service_with(
        records,
        up_to,
        max_attempts,
        Arc::new(Faults::none()),
        Arc::new(Faults::none()),
    )
    .await
}

/// [`service`], with the flush's queue operations going through `queue_faults` and its
/// store's through `store_faults`.
async fn service_with(
    records: &[RecordId],
    up_to: usize,
    max_attempts: u32,
    queue_faults: Arc<Faults>,
    store_faults: Arc<Faults>,
) -> Service {
    let store = Arc::new(MemoryStore::default());
    let queue = Arc::new(MemoryQueue::new(Duration::from_secs(60), max_attempts));
    let ports = webhooks::testing::memory_ports(
        Arc::new(store.with_faults(store_faults)),
        Arc::new(queue.with_faults(queue_faults)),
    );
    let receiver = Receiver::start().await;
    store
        .put_client(&OAuthClient::new(
            &"APP-1".parse().unwrap(),
            SECRET,
            time::OffsetDateTime::now_utc().into(),
        ))
        .await
        .unwrap();
    let windows = Arc::new(ManualWindows::default());
    for record in records {
        let url = receiver.url(&format!("/{}", record.as_str()));
        store
            .register(&webhooks::testing::subscription(record, &url, "APP-1"))
            .await
            .unwrap();
        store.mark(windows.current(), record).await.unwrap();
    }
    windows.close_current();
    let metric_lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let delivery = Delivery::new(
        ports.clone(),
        webhooks::testing::local_callback_client(Duration::from_secs(2)),
        DeliverySettings {
            retry: RetryPolicy {
                base: Duration::from_secs(1),
                max_attempts,
                jitter: 0.0,
            },
            metrics: true,
            ..DeliverySettings::default()
        },
    )
    .with_metric_lines({
        let lines = metric_lines.clone();
        Arc::new(move |line: &str| lines.lock().unwrap().push(line.to_owned()))
    });
    let flush = Flush {
        ports,
        windows,
        settings: FlushSettings {
            first_attempts_up_to: up_to,
            ..FlushSettings::default()
        },
        delivery: Some(delivery),
    };
    Service {
        flush,
        queue,
        receiver,
        metric_lines,
    }
}

fn records(prefix: &str, n: usize) -> Vec<RecordId> {
    (0..n)
        .map(|i| RecordId::parse(&format!("{prefix}{i}")).unwrap())
        .collect()
}

/// The messages on the queue, visible or not (hidden for a delay).
fn queued(queue: &MemoryQueue) -> usize {
    let depth = queue.depth();
    depth.visible + depth.in_flight
}

/// The jobs received within `wait`.
async fn received_jobs(queue: &MemoryQueue, wait: Duration) -> Vec<DeliveryJob> {
    queue
        .receive(10, wait)
        .await
        .into_iter()
        .map(|m| serde_json::from_str(&m.body).expect("a job"))
        .collect()
}

#[tokio::test]
async fn a_quiet_windows_jobs_are_delivered_by_the_flush_and_never_queued() {
    let s = service(&records("quiet", 3), 10, 5).await;
    let report = s.flush.run(None).await.unwrap();
    assert_eq!(
        (report.records, report.jobs, report.first_attempts),
        (3, 3, 3),
        "{report:?}"
    );
    let hits = s.receiver.hits();
    assert_eq!(hits.len(), 3, "one POST per record, made by the flush");
    for hit in &hits {
        assert!(
            hit.headers.contains_key("webhook-signature"),
            "signed as by the delivery function: {hit:?}"
        );
    }
    assert_eq!(queued(&s.queue), 0, "nothing on the queue");
}

#[tokio::test]
async fn a_failed_first_attempt_is_queued_for_its_second_after_the_retry_delay() {
    let s = service(&records("failing", 1), 10, 5).await;
    s.receiver.script(&[500]);
    let report = s.flush.run(None).await.unwrap();
    assert_eq!((report.jobs, report.first_attempts), (1, 1), "{report:?}");
    assert_eq!(s.receiver.hits().len(), 1);
    let depth = s.queue.depth();
    assert_eq!(
        (depth.visible, depth.in_flight),
        (0, 1),
        "queued, hidden for the retry delay: {depth:?}"
    );
    // After the delay (1 s), the delivery function receives it as its second attempt.
    let jobs = received_jobs(&s.queue, Duration::from_secs(10)).await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        jobs[0].attempts_made, 1,
        "it carries the attempt the flush made"
    );
    assert!(s.queue.dead_letters().is_empty());
}

#[tokio::test]
async fn a_failed_last_attempt_goes_to_the_dead_letter_queue() {
    let s = service(&records("last", 1), 10, 1).await;
    s.receiver.script(&[500]);
    let report = s.flush.run(None).await.unwrap();
    assert_eq!(report.first_attempts, 1, "{report:?}");
    assert_eq!(queued(&s.queue), 0, "not queued for another attempt");
    let dead = s.queue.dead_letters();
    assert_eq!(dead.len(), 1, "moved to the dead-letter queue: {dead:?}");
    let job: DeliveryJob = serde_json::from_str(&dead[0]).unwrap();
    assert_eq!(
        job.attempts_made, 0,
        "kept replayable, with its whole retry budget"
    );
}

#[tokio::test]
async fn a_page_above_the_bound_is_queued_unattempted() {
    // One shard's page of three jobs, above a bound of two.
    let s = service(
        &webhooks::testing::records_of_shard(Shard(3), "busy", 3),
        2,
        5,
    )
    .await;
    let report = s.flush.run(None).await.unwrap();
    assert_eq!((report.jobs, report.first_attempts), (3, 0), "{report:?}");
    assert!(s.receiver.hits().is_empty(), "no attempt by the flush");
    assert_eq!(received_jobs(&s.queue, Duration::ZERO).await.len(), 3);
}

#[tokio::test]
async fn a_run_near_its_deadline_queues_instead_of_attempting() {
    let s = service(&records("late", 2), 10, 5).await;
    // Less than the attempts' timeout (2 s) and what follows them before the deadline.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    let report: FlushReport = s.flush.run(Some(deadline)).await.unwrap();
    assert_eq!((report.jobs, report.first_attempts), (2, 0), "{report:?}");
    assert!(s.receiver.hits().is_empty());
    assert_eq!(received_jobs(&s.queue, Duration::ZERO).await.len(), 2);
}

/// Records in several shards, one record each.
fn one_in_each_of(shards: u16, prefix: &str) -> Vec<RecordId> {
    (0..shards)
        .flat_map(|shard| webhooks::testing::records_of_shard(Shard(shard), prefix, 1))
        .collect()
}

#[tokio::test]
async fn a_windows_last_pages_over_several_shards_are_attempted_as_one_batch() {
    let s = service(&one_in_each_of(3, "spread"), 10, 5).await;
    let report = s.flush.run(None).await.unwrap();
    assert_eq!((report.jobs, report.first_attempts), (3, 3), "{report:?}");
    assert_eq!(s.receiver.hits().len(), 3);
    // The flush's own metric line counts them too.
    let emf = s.flush.metrics_of(&report).emf(0);
    assert_eq!(
        (
            emf["FlushedJobs"].as_u64(),
            emf["FlushFirstAttempts"].as_u64()
        ),
        (Some(3), Some(3))
    );
    let lines = s.metric_lines.lock().unwrap().clone();
    assert_eq!(
        lines.len(),
        1,
        "one batch, so one metric line (and one attempt-log write): {lines:?}"
    );
}

#[tokio::test]
async fn a_windows_batch_that_cannot_be_handed_over_is_repeated_by_the_next_run() {
    // The queue takes nothing while the fault lasts: a refused first attempt cannot wait
    // for its retry on it.
    let faults = Arc::new(Faults::scripted(|operation| match operation {
        "enqueue" | "enqueue_delayed" => Fault::Fail,
        _ => Fault::None,
    }));
    let s = service_with(
        &one_in_each_of(3, "again"),
        10,
        5,
        faults.clone(),
        Arc::new(Faults::none()),
    )
    .await;
    s.receiver.script(&[500]);
    assert!(
        s.flush.run(None).await.is_err(),
        "the run fails, its shards not done"
    );
    assert_eq!(s.receiver.hits().len(), 3);
    faults.heal();
    let report = s.flush.run(None).await.unwrap();
    assert_eq!(
        (report.records, report.first_attempts),
        (3, 3),
        "the window's pages come again, attempts included: {report:?}"
    );
    let hits = s.receiver.hits();
    assert_eq!(hits.len(), 6);
    assert!(hits[3..].iter().all(|hit| hit.status == 204));
    assert_eq!(queued(&s.queue), 0);
}

#[tokio::test]
async fn the_first_attempts_take_the_subscriptions_the_flush_has_just_read() {
    // Every read of a single subscription fails: a job whose delivery read its subscription
    // again would be sent to the queue as a backend failure instead of delivered.
    let faults = Arc::new(Faults::scripted(|operation| match operation {
        "get_subscription" => Fault::Fail,
        _ => Fault::None,
    }));
    let s = service_with(
        &records("seeded", 3),
        10,
        5,
        Arc::new(Faults::none()),
        faults.clone(),
    )
    .await;
    let report = s.flush.run(None).await.unwrap();
    assert_eq!((report.jobs, report.first_attempts), (3, 3), "{report:?}");
    assert_eq!(s.receiver.hits().len(), 3, "each delivered by the flush");
    assert_eq!(queued(&s.queue), 0, "nothing sent again");
    assert_eq!(faults.counts().failed, 0, "no subscription read again");
}
