//! An application whose stored webhook URL no longer parses (an item written by hand, by
//! another version, or damaged) costs only its own messages: each gets a clear outcome,
//! the rest of the batch is delivered, and nothing panics (release builds abort on a
//! panic, which would fail every message of the invocation).

use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use webhooks::application::{Application, NoWebhook};
use webhooks::callback::CallbackUrl;
use webhooks::clock::SystemClock;
use webhooks::events::OpsEvent;
use webhooks::handlers::views::ApplicationView;
use webhooks::handlers::{Delivery, DeliverySettings};
use webhooks::job::DeliveryJob;
use webhooks::memory::LoggedEvents;
use webhooks::memory::{MemoryQueue, MemoryRecords, MemoryStore, ReceivedMessage};
use webhooks::ports::Ports;
use webhooks::record::RecordId;
use webhooks::subscription::Subscription;
use webhooks::sync::{FullSync, SyncState};
use webhooks::window::WindowId;
use webhooks_tests::Receiver;

/// An application item as storage holds it, with `url` in place of its webhook URL.
fn stored_application(id: &str, url: &str) -> Application {
    let mut item: Value = serde_json::to_value(Application::new(
        &id.parse().unwrap(),
        "key",
        webhooks::clock::Timestamp::UNIX_EPOCH,
    ))
    .unwrap();
    item["webhook"] = json!({"url": url, "request_interval_ms": 1000});
    serde_json::from_value(item).unwrap()
}

struct Service {
    ports: Ports,
    queue: Arc<MemoryQueue>,
    events: Arc<LoggedEvents>,
    delivery: Delivery,
    receiver: Receiver,
}

async fn service() -> Service {
    let queue = Arc::new(MemoryQueue::new(Duration::from_secs(60), 5));
    let events = Arc::new(LoggedEvents::default());
    let records = Arc::new(MemoryRecords::default());
    // Somebody the broken application's sync would send.
    let person = json!({"firstName": "P", "consents": {"app-bad": ["members.read_name"]}});
    records.put_person(
        &RecordId::parse("p-0").unwrap(),
        person.as_object().unwrap().clone(),
    );
    let ports = webhooks::ports::Ports::over(
        Arc::new(MemoryStore::default()),
        records,
        queue.clone(),
        events.clone(),
        Arc::new(SystemClock),
    );
    let receiver = Receiver::start().await;
    let good = stored_application("app-good", &receiver.url("/members"));
    ports.applications.put_application(&good).await.unwrap();
    let broken = stored_application("app-bad", "https://exa mple.org/hook");
    ports.applications.put_application(&broken).await.unwrap();
    let http = webhooks::testing::local_callback_client(Duration::from_secs(5));
    let delivery = Delivery::new(
        ports.clone(),
        http,
        DeliverySettings {
            concurrency: 100,
            ..DeliverySettings::default()
        },
    );
    Service {
        ports,
        queue,
        events,
        delivery,
        receiver,
    }
}

fn person_job(application: &str, i: usize) -> DeliveryJob {
    let person = json!({"id": format!("p-{i}"), "firstName": "P"});
    DeliveryJob::for_application(
        &application.parse().unwrap(),
        &RecordId::parse(&format!("p-{i}")).unwrap(),
        person.as_object().unwrap().clone(),
        WindowId(1),
        webhooks::testing::at("2026-11-26T12:00:00.000Z"),
    )
}

/// Sends `jobs` through the queue and hands them to the handler as one batch.
async fn deliver(s: &Service, jobs: &[DeliveryJob]) -> usize {
    for job in jobs {
        s.queue.send(serde_json::to_string(job).unwrap());
    }
    let received = s.queue.receive(jobs.len(), Duration::ZERO).await;
    assert_eq!(received.len(), jobs.len());
    let event = ReceivedMessage::batch_event(&received, "arn:aws:sqs:local:0:delivery");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let response = s.delivery.handle(event, deadline).await;
    response.batch_item_failures.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_stored_url_costs_only_its_own_message() {
    let s = service().await;
    // The one bad message: a step of a paced sync of the application with the broken URL.
    let sync = FullSync::new(
        &"app-bad".parse().unwrap(),
        1000,
        webhooks::testing::at("2026-11-26T12:00:00.000Z"),
    );
    s.ports.syncs.save_sync(&sync).await.unwrap();
    let mut batch = vec![DeliveryJob::sync_step(
        &sync.key(),
        webhooks::testing::at("2026-11-26T12:00:00.000Z"),
    )];
    batch.extend((0..99).map(|i| person_job("app-good", i)));
    assert_eq!(batch.len(), 100);

    let failures = deliver(&s, &batch).await;
    assert_eq!(failures, 0);
    assert_eq!(
        s.receiver.wait_for(99, Duration::from_secs(10)).await.len(),
        99
    );
    let (sync, _) = s.ports.syncs.get_sync(&sync.key()).await.unwrap().unwrap();
    assert_eq!(
        sync.state,
        SyncState::Cancelled,
        "the sync cannot deliver: it ends"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_for_a_broken_stored_url_is_kept_and_the_endpoint_disabled() {
    let s = service().await;
    let job = person_job("app-bad", 1);
    let failures = deliver(&s, &[job.clone(), person_job("app-good", 2)]).await;
    assert_eq!(failures, 0);
    assert_eq!(
        s.receiver.wait_for(1, Duration::from_secs(10)).await.len(),
        1
    );
    // Not dropped: parked until the URL is fixed (which re-enables the endpoint) and the
    // parked jobs are replayed; the dead-letter queue is for failures.
    let parked: Vec<DeliveryJob> = s
        .queue
        .parked()
        .iter()
        .map(|body| serde_json::from_str(body).unwrap())
        .collect();
    assert_eq!(parked, [job]);
    assert!(s.queue.dead_letters().is_empty());
    let app = s
        .ports
        .applications
        .get_application(&"app-bad".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(app.health.is_disabled(), "{:?}", app.health);
    // Disabled because its stored URL is unusable: the reason is that error's.
    let why = app
        .webhook
        .target()
        .expect_err("the stored URL is unusable");
    assert!(matches!(why, NoWebhook::Unusable(_)), "{why:?}");
    let reason = app.health.disabled_reason.clone().unwrap_or_default();
    assert_eq!(reason, why.to_string());
    assert!(
        s.events.published().contains(&OpsEvent::EndpointDisabled {
            endpoint: "application:app-bad".into(),
            reason,
        }),
        "{:?}",
        s.events.published()
    );
    let view = serde_json::to_value(ApplicationView::from(&app)).unwrap();
    assert_eq!(view["webhook"]["url"], "https://exa mple.org/hook");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_naming_a_callback_that_is_not_a_url_costs_only_its_own_message() {
    let s = service().await;
    let good = webhooks::testing::subscription(
        &RecordId::parse("0000-0002-7465-2162").unwrap(),
        &s.receiver.url("/cb"),
        "APP-1",
    );
    s.ports.subscriptions.register(&good).await.unwrap();
    // As a damaged queue message could name it: no subscription has this text.
    let broken = Subscription {
        callback: CallbackUrl::named_by_job("https://exa mple.org/cb".into()),
        ..good.clone()
    };
    let at = webhooks::testing::at("2026-11-26T12:00:00.000Z");
    let jobs = [
        DeliveryJob::for_subscription(&broken, WindowId(1), at),
        DeliveryJob::for_subscription(&good, WindowId(1), at),
    ];
    assert!(broken.callback.url().is_err(), "the text is not a URL");

    let failures = deliver(&s, &jobs).await;
    assert_eq!(failures, 0, "nothing is retried");
    // The batch has ended: every request it made has been answered.
    let hits = s.receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(hits.len(), 1, "only the good job is sent");
    assert_eq!(hits[0].path, "/cb");
    // Read and dropped, not refused as unreadable toward the dead-letter queue.
    assert!(s.queue.dead_letters().is_empty());
    assert!(s.queue.parked().is_empty());
    assert!(s.queue.receive(10, Duration::ZERO).await.is_empty());
}
