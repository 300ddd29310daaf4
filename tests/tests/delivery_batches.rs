//! A batch larger than the delivery's concurrency window: every message is delivered once
//! and signed, an unreadable one is kept for the dead-letter queue without holding up the
//! others, and each client of the batch is read once (the prefetch), not once a message.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use webhooks::aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use webhooks::clock::{Clock, SystemClock};
use webhooks::handlers::{Delivery, DeliverySettings};
use webhooks::job::DeliveryJob;
use webhooks::memory::{MemoryQueue, MemoryStore};
use webhooks::oauth::OAuthClient;
use webhooks::ports::{ClientStore, SubscriptionStore};
use webhooks::record::RecordId;
use webhooks::signing::SigningSecrets;
use webhooks::testing::faults::Faults;
use webhooks::window::WindowId;
use webhooks_tests::Receiver;

fn message(id: &str, body: String) -> SqsMessage {
    let mut m = SqsMessage::default();
    m.message_id = Some(id.to_owned());
    m.receipt_handle = Some(format!("receipt-{id}"));
    m.body = Some(body);
    m.attributes = HashMap::from([("ApproximateReceiveCount".to_owned(), "1".to_owned())]);
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_larger_than_the_window_is_delivered_once_each() {
    let receiver = Receiver::start().await;
    let faults = Arc::new(Faults::none());
    let store = Arc::new(MemoryStore::default().with_faults(faults.clone()));
    for client in ["C1", "C2"] {
        let mut oauth = OAuthClient::new(&client.parse().unwrap(), "secret", SystemClock.now());
        oauth.webhook_secrets = Some(SigningSecrets::generate());
        store.put_client(&oauth).await.unwrap();
    }
    // Records 0-2 belong to C1 (the first window); 3-9 to C2.
    let mut messages = Vec::new();
    let mut expected = HashMap::new();
    for i in 0..10 {
        let client = if i < 3 { "C1" } else { "C2" };
        let record = RecordId::parse(&format!("0000-0002-1825-{i:04}")).unwrap();
        let url = receiver.url(&format!("/{client}/{}", record.as_str()));
        let subscription = webhooks::testing::subscription(&record, &url, client);
        store.register(&subscription).await.unwrap();
        let job = DeliveryJob::for_subscription(&subscription, WindowId(1), SystemClock.now());
        expected.insert(format!("/{client}/{}", record.as_str()), job.id.clone());
        messages.push(message(
            &format!("m{i}"),
            serde_json::to_string(&job).unwrap(),
        ));
    }
    // An unreadable body past the first window.
    messages.insert(6, message("corrupt", "{\"id\": \"msg_".to_owned()));
    let mut event = SqsEvent::default();
    event.records = messages;
    let delivery = Delivery::new(
        webhooks::testing::memory_ports(
            store,
            Arc::new(MemoryQueue::new(Duration::from_secs(30), 5)),
        ),
        webhooks::testing::local_callback_client(Duration::from_secs(5)),
        DeliverySettings {
            concurrency: 3,
            ..DeliverySettings::default()
        },
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let response = delivery.handle(event, deadline).await;

    let failed: Vec<&str> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    assert_eq!(failed, ["corrupt"], "only the unreadable message stays");
    let hits = receiver.wait_for(10, Duration::from_secs(5)).await;
    assert_eq!(hits.len(), 10, "each readable message delivered once");
    for hit in &hits {
        let id = &expected[&hit.path];
        assert_eq!(hit.headers["webhook-id"], id.as_str(), "{}", hit.path);
        let signature = hit.headers["webhook-signature"].to_str().unwrap();
        assert!(signature.starts_with("v1,"), "{}: {signature}", hit.path);
    }
    assert_eq!(faults.calls("get_client"), 2, "each client read once");
}
