//! Logging cost: at the default level (INFO), a successful delivery writes no log line of
//! its own (it is counted in the batch's metric line); a failed one is logged. Captured
//! with the JSON formatter the functions use.

use std::sync::Arc;
use std::time::Duration;
use tracing::instrument::WithSubscriber;
use tracing_subscriber::filter::LevelFilter;
use webhooks::handlers::{Delivery, DeliverySettings};
use webhooks::job::DeliveryJob;
use webhooks::memory::{MemoryQueue, MemoryStore, ReceivedMessage};
use webhooks::oauth::OAuthClient;
use webhooks::ports::{ClientStore, DeliveryQueue, SubscriptionStore};
use webhooks::record::RecordId;
use webhooks::retry::RetryPolicy;
use webhooks::window::WindowId;
use webhooks_tests::Receiver;
use webhooks_tests::logs::LogCapture;

#[tokio::test]
async fn a_successful_delivery_writes_no_log_line_at_info_and_a_failure_does() {
    let store = Arc::new(MemoryStore::default());
    let queue = Arc::new(MemoryQueue::new(Duration::from_secs(60), 10));
    let ports = webhooks::testing::memory_ports(store.clone(), queue.clone());
    let receiver = Receiver::start().await;
    store
        .put_client(&OAuthClient::new(
            &"APP-1".parse().unwrap(),
            "secret",
            time::OffsetDateTime::now_utc().into(),
        ))
        .await
        .unwrap();
    let mut jobs = Vec::new();
    for i in 0..4 {
        let subscription = webhooks::testing::subscription(
            &RecordId::parse(&format!("r{i}")).unwrap(),
            &receiver.url(&format!("/r{i}")),
            "APP-1",
        );
        store.register(&subscription).await.unwrap();
        jobs.push(DeliveryJob::for_subscription(
            &subscription,
            WindowId(1),
            webhooks::testing::at_ms(0),
        ));
    }
    let emf: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let delivery = Delivery::new(
        ports,
        webhooks::testing::local_callback_client(Duration::from_secs(2)),
        DeliverySettings {
            retry: RetryPolicy {
                base: Duration::from_secs(60),
                max_attempts: 5,
                jitter: 0.0,
            },
            metrics: true,
            ..DeliverySettings::default()
        },
    )
    .with_metric_lines({
        let emf = emf.clone();
        Arc::new(move |line: &str| emf.lock().unwrap().push(line.to_owned()))
    });
    let logs = LogCapture::default();
    let deliver = |jobs: Vec<DeliveryJob>| {
        let queue = queue.clone();
        let delivery = &delivery;
        async move {
            assert!(queue.enqueue(&jobs).await.unwrap().refused.is_empty());
            let received = queue.receive(100, Duration::from_millis(100)).await;
            let event = ReceivedMessage::batch_event(&received, "arn:aws:sqs:local:0:delivery");
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            delivery.handle(event, deadline).await
        }
    };

    // Three acknowledged deliveries: not one line at INFO.
    let response = deliver(jobs[..3].to_vec())
        .with_subscriber(logs.lambda_json(LevelFilter::INFO))
        .await;
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(receiver.hits().len(), 3);
    let lines = logs.lines();
    assert!(
        lines.is_empty(),
        "successful deliveries log nothing at INFO; got {} bytes: {lines:#?}",
        logs.bytes()
    );
    // They are counted in the batch's one metric line instead.
    let metrics: Vec<serde_json::Value> = emf
        .lock()
        .unwrap()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(metrics.len(), 1);
    assert_eq!(
        (&metrics[0]["Deliveries"], &metrics[0]["Acks"]),
        (&3.into(), &3.into())
    );

    // One failure: logged, as JSON, naming the delivery.
    receiver.script(&[500]);
    let response = deliver(jobs[3..].to_vec())
        .with_subscriber(logs.lambda_json(LevelFilter::INFO))
        .await;
    assert_eq!(response.batch_item_failures.len(), 1);
    let lines = logs.lines();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    let line: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(line["level"], "WARN", "{line}");
    assert_eq!(line["fields"]["status"], 500, "{line}");
    assert_eq!(
        line["span"]["delivery_id"],
        jobs[3].id.as_str(),
        "the failure names its delivery: {line}"
    );
}
