//! A full sync survives its step being cut off (a Lambda timeout or crash) and spans
//! many steps (invocations) without skipping anybody.

use async_trait::async_trait;
use base64::Engine;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use webhooks::application::Application;
use webhooks::handlers::sync_driver::{StepOutcome, SyncDriver};
use webhooks::http_client::CallbackClient;
use webhooks::job::Target;
use webhooks::memory::{MemoryQueue, MemoryRecords, MemoryStore};
use webhooks::ports::{BackendResult, Page, Person, Ports, RecordStore};
use webhooks::record::RecordId;
use webhooks::retry::RetryPolicy;
use webhooks::sync::{FullSync, SyncState};
use webhooks::testing::ManualClock;
use webhooks_tests::Receiver;

const PERSONS: usize = 30;

struct Setup {
    ports: Ports,
    queue: Arc<MemoryQueue>,
    clock: Arc<ManualClock>,
    http: CallbackClient,
    receiver: Receiver,
    sync: FullSync,
}

async fn setup(interval_ms: u64) -> Setup {
    setup_with(interval_ms, PERSONS).await
}

async fn setup_with(interval_ms: u64, persons: usize) -> Setup {
    let clock = Arc::new(ManualClock::new(time::OffsetDateTime::now_utc()));
    let records = Arc::new(MemoryRecords::default());
    let queue = Arc::new(MemoryQueue::new(Duration::from_secs(60), 5));
    let ports = webhooks::ports::Ports::over(
        Arc::new(MemoryStore::default()),
        records.clone(),
        queue.clone(),
        Arc::new(webhooks::memory::LoggedEvents::default()),
        clock.clone(),
    );
    for i in 0..persons {
        let person =
            serde_json::json!({"firstName": "P", "consents": {"app-1": ["members.read_name"]}});
        records.put_person(
            &RecordId::parse(&format!("p-{i:03}")).unwrap(),
            person.as_object().unwrap().clone(),
        );
    }
    let receiver = Receiver::start().await;
    let mut app = Application::new(
        &"app-1".parse().unwrap(),
        "key",
        webhooks::clock::Timestamp::UNIX_EPOCH,
    );
    app.webhook.url = Some(receiver.url("/sync").into());
    app.webhook.request_interval_ms = interval_ms;
    ports.applications.put_application(&app).await.unwrap();
    let sync = FullSync::new(
        &"app-1".parse().unwrap(),
        interval_ms,
        webhooks::testing::at_ms(0),
    );
    ports.syncs.save_sync(&sync).await.unwrap();
    let http = webhooks::testing::local_callback_client(Duration::from_millis(500));
    Setup {
        ports,
        queue,
        clock,
        http,
        receiver,
        sync,
    }
}

fn deliveries_per_person(receiver: &Receiver) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for hit in receiver.hits() {
        let envelope: serde_json::Value = serde_json::from_slice(&hit.body).unwrap();
        let data = base64::engine::general_purpose::STANDARD
            .decode(envelope["message"]["data"].as_str().unwrap())
            .unwrap();
        let persons: Vec<serde_json::Value> = serde_json::from_slice(&data).unwrap();
        for p in persons {
            *counts
                .entry(p["personID"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    counts
}

impl Setup {
    fn driver(&self) -> SyncDriver<'_> {
        SyncDriver {
            ports: &self.ports,
            http: &self.http,
            retry: RetryPolicy::default(),
        }
    }

    /// A step of the message `holder` (each new step message has its own id).
    async fn step_of(&self, holder: &str, budget: Duration) -> StepOutcome {
        let deadline = tokio::time::Instant::now() + budget;
        self.driver()
            .step(
                &self.sync.key(),
                &webhooks::ports::LeaseHolder::new(holder),
                deadline,
            )
            .await
            .unwrap()
    }

    async fn step(&self, budget: Duration) -> StepOutcome {
        self.step_of(&uuid::Uuid::new_v4().to_string(), budget)
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_sync_spans_many_short_steps() {
    let s = setup(20).await;
    let mut steps = 0;
    // Each step has 1.8 s; a request needs its ack deadline and a second in hand (1.5 s),
    // so a step sends about a dozen persons and hands over to the next.
    while let StepOutcome::Again(delay) = s.step(Duration::from_millis(1800)).await {
        // The next step comes back at once, or after what is left of the interval.
        assert!(delay <= Duration::from_millis(20), "{delay:?}");
        steps += 1;
        assert!(steps < 100, "the sync makes progress");
    }
    let counts = deliveries_per_person(&s.receiver);
    assert_eq!(counts.len(), PERSONS);
    assert!(counts.values().all(|&n| n == 1), "nobody twice: {counts:?}");
    assert!(steps >= 2, "it took several steps: {steps}");
    let (sync, _) = s
        .ports
        .syncs
        .get_sync(&s.sync.key())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        sync.progress(Default::default()).state,
        SyncState::Completed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_step_is_resumed_without_skipping_anybody() {
    let s = setup(20).await;
    // The step is killed mid-way (its future dropped, as a Lambda timeout would) once a
    // few persons have arrived.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let driver = s.driver();
    let key = s.sync.key();
    let holder = webhooks::ports::LeaseHolder::new("step-1");
    let step = driver.step(&key, &holder, deadline);
    tokio::select! {
        _ = step => panic!("the step finished before it was cut off"),
        _ = s.receiver.wait_for(3, Duration::from_secs(20)) => {}
    }
    let before = deliveries_per_person(&s.receiver).len();
    assert!(
        before > 0 && before < PERSONS,
        "it was cut mid-way: {before}"
    );

    // Its lease still holds: a second step now stands aside rather than run beside it.
    assert_eq!(s.step(Duration::from_secs(30)).await, StepOutcome::Done);
    assert_eq!(deliveries_per_person(&s.receiver).len(), before);

    // Once the lease expires, the redelivered step message resumes from the saved cursor.
    s.clock.advance(Duration::from_secs(120));
    assert_eq!(
        s.step_of("step-1", Duration::from_secs(30)).await,
        StepOutcome::Done
    );
    let counts = deliveries_per_person(&s.receiver);
    assert_eq!(counts.len(), PERSONS, "nobody skipped");
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    assert!(
        duplicates <= 1,
        "at most the person in flight is sent twice: {counts:?}"
    );
}

/// A records table whose every page read takes a second (of paused test time), so a
/// step's deadline falls between two pages exactly where the test says.
struct SlowRecords {
    inner: Arc<dyn RecordStore>,
}

#[async_trait]
impl RecordStore for SlowRecords {
    async fn get_person(&self, id: &RecordId) -> BackendResult<Option<Person>> {
        self.inner.get_person(id).await
    }

    async fn scan_consented(
        &self,
        application: &webhooks::ids::ApplicationId,
        after: Option<&str>,
        limit: usize,
    ) -> BackendResult<Page<(RecordId, Person)>> {
        tokio::time::sleep(Duration::from_secs(1)).await;
        self.inner.scan_consented(application, after, limit).await
    }
}

/// The delivery jobs on the queue, counted per person.
async fn queued_per_person(queue: &MemoryQueue) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    loop {
        let batch = queue.receive(10, Duration::ZERO).await;
        if batch.is_empty() {
            return counts;
        }
        for message in batch {
            let job = webhooks::message::decode(&message.body).unwrap();
            match job.target {
                Target::Application { record, .. } => {
                    *counts.entry(record.as_str().to_owned()).or_default() += 1
                }
                other => panic!("a fan-out enqueues person jobs only: {other:?}"),
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_fan_out_sync_enqueues_everybody_once_across_steps() {
    // Three pages of persons (100 a page); each page read takes 1 s and a step has 1.5 s,
    // so the first step reads two pages and hands over, the second reads the last.
    const MANY: usize = 250;
    let mut s = setup_with(0, MANY).await;
    s.ports.records = Arc::new(SlowRecords {
        inner: s.ports.records.clone(),
    });
    let mut steps = 1;
    while let StepOutcome::Again(delay) = s.step(Duration::from_millis(1500)).await {
        assert_eq!(delay, Duration::ZERO, "the next step may start at once");
        steps += 1;
        assert!(steps <= 10, "the sync makes progress");
    }
    assert_eq!(
        steps, 2,
        "the deadline fell between the second and third pages"
    );

    let counts = queued_per_person(&s.queue).await;
    assert_eq!(counts.len(), MANY, "everybody enqueued");
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "enqueued more than once: {twice:?}");
    let (sync, outcomes) = s
        .ports
        .syncs
        .get_sync(&s.sync.key())
        .await
        .unwrap()
        .unwrap();
    assert!(sync.scan_done);
    assert_eq!(sync.scanned, MANY as u64);
    let progress = sync.progress(outcomes);
    assert_eq!(
        (progress.queued, progress.state),
        (MANY as u64, SyncState::Running)
    );
}
