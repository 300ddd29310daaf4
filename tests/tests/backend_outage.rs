//! A backend outage does not spend a job's delivery attempts: with the service table
//! unavailable for an hour (a long DynamoDB throttle), a job whose receiver was never
//! tried is not dead-lettered; once the table answers again the receiver gets it.

use async_trait::async_trait;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use webhooks::application::Application;
use webhooks::clock::SystemClock;
use webhooks::events::OpsEvent;
use webhooks::handlers::{Delivery, DeliverySettings};
use webhooks::health::EndpointHealth;
use webhooks::job::DeliveryJob;
use webhooks::memory::LoggedEvents;
use webhooks::memory::{MemoryQueue, MemoryRecords, MemoryStore, ReceivedMessage};
use webhooks::ports::{ApplicationStore, BackendError, BackendResult};
use webhooks::record::RecordId;
use webhooks::retry::RetryPolicy;
use webhooks::window::WindowId;
use webhooks_tests::Receiver;

/// The application store, unavailable until `until` or while `down` is set.
struct Outage {
    inner: Arc<MemoryStore>,
    until: Instant,
    down: Arc<AtomicBool>,
}

impl Outage {
    fn check(&self) -> BackendResult<()> {
        if Instant::now() < self.until || self.down.load(Ordering::SeqCst) {
            Err(BackendError::Unavailable(
                "ProvisionedThroughputExceededException".into(),
            ))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl ApplicationStore for Outage {
    async fn get_application(
        &self,
        id: &webhooks::ids::ApplicationId,
    ) -> BackendResult<Option<Application>> {
        self.check()?;
        self.inner.get_application(id).await
    }
    async fn put_application(&self, application: &Application) -> BackendResult<()> {
        self.check()?;
        self.inner.put_application(application).await
    }
    async fn application_for_key(
        &self,
        api_key_hash: &str,
    ) -> BackendResult<Option<webhooks::ids::ApplicationId>> {
        self.check()?;
        self.inner.application_for_key(api_key_hash).await
    }
    async fn list_applications(&self) -> BackendResult<Vec<Application>> {
        self.check()?;
        self.inner.list_applications().await
    }
    async fn set_application_health(
        &self,
        id: &webhooks::ids::ApplicationId,
        health: &EndpointHealth,
    ) -> BackendResult<()> {
        self.check()?;
        self.inner.set_application_health(id, health).await
    }
}

const MAX_ATTEMPTS: u32 = 5;

#[tokio::test(start_paused = true)]
async fn an_hour_of_backend_failures_does_not_dead_letter_an_untried_job() {
    let store = Arc::new(MemoryStore::default());
    // The queue's redrive policy matches the retry budget, as the template sets it.
    let queue = Arc::new(MemoryQueue::new(Duration::from_secs(30), MAX_ATTEMPTS));
    let receiver = Receiver::start().await;
    let mut app = Application::new(
        &"app-1".parse().unwrap(),
        "key",
        webhooks::clock::Timestamp::UNIX_EPOCH,
    );
    app.webhook.url = Some(receiver.url("/members").into());
    store.put_application(&app).await.unwrap();
    let outage_ends = Instant::now() + Duration::from_secs(3600);
    let mut ports = webhooks::testing::memory_ports(store.clone(), queue.clone());
    ports.applications = Arc::new(Outage {
        inner: store,
        until: outage_ends,
        down: Arc::default(),
    });
    let delivery = Delivery::new(
        ports,
        webhooks::testing::local_callback_client(Duration::from_secs(5)),
        DeliverySettings {
            retry: RetryPolicy {
                base: Duration::from_secs(60),
                max_attempts: MAX_ATTEMPTS,
                jitter: 0.0,
            },
            ..DeliverySettings::default()
        },
    );
    let job = person_job();
    queue.send(serde_json::to_string(&job).unwrap());

    // The event source mapping: receive, invoke, delete what did not fail.
    let mut invocations = 0;
    let mut paused = true;
    while receiver.hits().is_empty() && invocations < 100 {
        let received = queue.receive(10, Duration::from_secs(20 * 60)).await;
        if received.is_empty() {
            break;
        }
        if paused && Instant::now() >= outage_ends {
            // The request goes over real sockets: real time from here on.
            tokio::time::resume();
            paused = false;
        }
        invocations += 1;
        let event = ReceivedMessage::batch_event(&received, "arn:aws:sqs:local:0:delivery");
        let response = delivery
            .handle(event, Instant::now() + Duration::from_secs(60))
            .await;
        queue.settle(&received, &response);
    }
    assert_eq!(
        queue.dead_letters(),
        Vec::<String>::new(),
        "dead-lettered after {invocations} invocations, none of which tried the receiver"
    );
    assert_eq!(receiver.hits().len(), 1, "{invocations} invocations");
    assert_eq!(queue.depth().visible + queue.depth().in_flight, 0);
}

fn person_job() -> DeliveryJob {
    let person = json!({"id": "p-1", "firstName": "P"});
    DeliveryJob::for_application(
        &"app-1".parse().unwrap(),
        &RecordId::parse("p-1").unwrap(),
        person.as_object().unwrap().clone(),
        WindowId(1),
        webhooks::testing::at("2026-11-26T12:00:00.000Z"),
    )
}

/// Attempts made before an outage still count, and only they do: a job whose receiver
/// always fails gets exactly `MAX_ATTEMPTS` requests, with backend failures in between,
/// and then lands in the dead-letter queue with its counters cleared for replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_requests_to_the_receiver_count_as_attempts() {
    let store = Arc::new(MemoryStore::default());
    let queue = Arc::new(MemoryQueue::new(Duration::from_secs(30), MAX_ATTEMPTS));
    let events = Arc::new(LoggedEvents::default());
    let receiver = Receiver::start().await;
    receiver.script(&[500; 10]);
    let mut app = Application::new(
        &"app-1".parse().unwrap(),
        "key",
        webhooks::clock::Timestamp::UNIX_EPOCH,
    );
    app.webhook.url = Some(receiver.url("/members").into());
    store.put_application(&app).await.unwrap();
    let down = Arc::new(AtomicBool::new(false));
    let mut ports = webhooks::ports::Ports::over(
        store.clone(),
        Arc::new(MemoryRecords::default()),
        queue.clone(),
        events.clone(),
        Arc::new(SystemClock),
    );
    ports.applications = Arc::new(Outage {
        inner: store,
        until: Instant::now(),
        down: down.clone(),
    });
    let http = webhooks::testing::local_callback_client(Duration::from_secs(5));
    let settings = DeliverySettings {
        retry: RetryPolicy {
            base: Duration::from_millis(10),
            max_attempts: MAX_ATTEMPTS,
            jitter: 0.0,
        },
        ..DeliverySettings::default()
    };
    let job = person_job();
    queue.send(serde_json::to_string(&job).unwrap());

    // Invocations 2 to 4 meet the outage; every other one tries the receiver.
    for invocation in 1..=20 {
        down.store((2..=4).contains(&invocation), Ordering::SeqCst);
        let received = queue.receive(10, Duration::from_secs(2)).await;
        if received.is_empty() {
            break;
        }
        // Each invocation in a new container: nothing cached from the last one.
        let delivery = Delivery::new(ports.clone(), http.clone(), settings);
        let event = ReceivedMessage::batch_event(&received, "arn:aws:sqs:local:0:delivery");
        let response = delivery
            .handle(event, Instant::now() + Duration::from_secs(30))
            .await;
        queue.settle(&received, &response);
    }
    assert_eq!(receiver.hits().len(), MAX_ATTEMPTS as usize);
    let dead: Vec<DeliveryJob> = queue
        .dead_letters()
        .iter()
        .map(|body| serde_json::from_str(body).unwrap())
        .collect();
    assert_eq!(
        dead,
        std::slice::from_ref(&job),
        "kept once, with the whole budget for a replay"
    );
    assert!(
        events.published().iter().any(|e| matches!(
            e,
            OpsEvent::MessageExhausted { attempts, .. } if *attempts == MAX_ATTEMPTS
        )),
        "{:?}",
        events.published()
    );
}
