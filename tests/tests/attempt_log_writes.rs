//! When a delivery batch's attempts reach the attempt log (`webhooks::ports::LogWrites`): a
//! store in this process (the memory adapter) takes each attempt as its request ends,
//! while the batch's other requests are still in flight, so the batch's end waits on no
//! log write; DynamoDB and SQLite take the batch's attempts in one call at its end.

use axum::Router;
use axum::extract::{Request, State};
use http::StatusCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use webhooks::attempts::{LogEndpoint, StatusFilter};
use webhooks::handlers::{Delivery, DeliverySettings};
use webhooks::job::DeliveryJob;
use webhooks::memory::{MemoryQueue, MemoryStore, ReceivedMessage};
use webhooks::oauth::OAuthClient;
use webhooks::ports::{AttemptLog, ClientStore, DeliveryQueue, LogWrites, SubscriptionStore};
use webhooks::record::RecordId;
use webhooks::subscription::Subscription;
use webhooks::window::WindowId;
use webhooks_tests::wait_until;

/// A receiver on 127.0.0.1 that answers `/held` only once the test releases it, and every
/// other path at once (204).
async fn held_receiver(release: Arc<Notify>) -> (String, tokio::task::JoinHandle<()>) {
    async fn answer(State(release): State<Arc<Notify>>, request: Request) -> StatusCode {
        if request.uri().path() == "/held" {
            release.notified().await;
        }
        StatusCode::NO_CONTENT
    }
    let app = Router::new().fallback(answer).with_state(release);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (url, server)
}

async fn logged(store: &MemoryStore, subscription: &Subscription) -> usize {
    store
        .attempts(
            &LogEndpoint::subscription(subscription),
            StatusFilter::All,
            None,
            10,
        )
        .await
        .unwrap()
        .items
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_attempt_is_in_the_memory_log_while_its_batch_still_waits_on_another() {
    let store = Arc::new(MemoryStore::default());
    assert_eq!(store.writes(), LogWrites::PerAttempt);
    let queue = Arc::new(MemoryQueue::new(Duration::from_secs(60), 10));
    let ports = webhooks::testing::memory_ports(store.clone(), queue.clone());
    let release = Arc::new(Notify::new());
    let (url, server) = held_receiver(release.clone()).await;
    store
        .put_client(&OAuthClient::new(
            &"APP-1".parse().unwrap(),
            "secret",
            webhooks::testing::at_ms(0),
        ))
        .await
        .unwrap();
    let mut subscriptions = Vec::new();
    for (record, path) in [("r-fast", "/fast"), ("r-held", "/held")] {
        let subscription = webhooks::testing::subscription(
            &RecordId::parse(record).unwrap(),
            &format!("{url}{path}"),
            "APP-1",
        );
        store.register(&subscription).await.unwrap();
        subscriptions.push(subscription);
    }
    let jobs: Vec<DeliveryJob> = subscriptions
        .iter()
        .map(|s| DeliveryJob::for_subscription(s, WindowId(1), webhooks::testing::at_ms(0)))
        .collect();
    assert!(queue.enqueue(&jobs).await.unwrap().refused.is_empty());
    let received = queue.receive(10, Duration::from_millis(100)).await;
    let event = ReceivedMessage::batch_event(&received, "arn:aws:sqs:local:0:delivery");
    assert_eq!(event.records.len(), 2);
    let delivery = Delivery::new(
        ports,
        webhooks::testing::local_callback_client(Duration::from_secs(20)),
        DeliverySettings::default(),
    );
    let batch = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        delivery.handle(event, deadline).await
    });

    let (fast, held) = (&subscriptions[0], &subscriptions[1]);
    let fast_is_logged = async || logged(&store, fast).await == 1;
    assert!(
        wait_until(Duration::from_secs(10), fast_is_logged).await,
        "the acknowledged attempt is logged while the other request is held"
    );
    // The held request has not ended: the batch waits on it, and it is not logged.
    assert!(!batch.is_finished());
    assert_eq!(logged(&store, held).await, 0);

    // Released, the held attempt ends and is logged too; the batch ends with both sent.
    release.notify_one();
    let response = tokio::time::timeout(Duration::from_secs(10), batch)
        .await
        .expect("the batch ends once its held request is answered")
        .unwrap();
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(logged(&store, held).await, 1);
    assert_eq!(logged(&store, fast).await, 1, "each attempt is logged once");
    server.abort();
}
