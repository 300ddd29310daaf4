//! Every sample event in `events/` (the ones `sam local invoke -e` uses) is loaded and run
//! through its handler, on the in-memory adapters.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use webhooks::aws_lambda_events::event::dynamodb::Event;
use webhooks::aws_lambda_events::event::eventbridge::EventBridgeEvent;
use webhooks::aws_lambda_events::event::sqs::SqsEvent;
use webhooks::callback::UrlPolicy;
use webhooks::clock::{Clock, SystemClock};
use webhooks::handlers::{
    ApiSettings, ChangeCapture, Delivery, DeliverySettings, Flush, FlushError, FlushEvent,
    FlushSettings, Registration,
};
use webhooks::http_client::{CallbackClient, HttpSettings};
use webhooks::memory::{MemoryQueue, MemoryRecords, MemoryStore};
use webhooks::oauth::{AccessToken, OAuthClient, sha256_hex};
use webhooks::ports::{ClientStore, PendingChanges, Ports, SubscriptionStore, TokenStore};
use webhooks::record::RecordId;
use webhooks::retry::RetryPolicy;
use webhooks::testing::pending_records;
use webhooks::window::{AssignmentError, FlushWindows, ManualWindows, Shard};

const SEED_CLIENT: (&str, &str) = (
    "APP-NPXKK6HFN6TJ4YYI",
    "060c36f2-cce2-4f74-bde0-a17d8bb30a97",
);
const SEED_TOKEN: &str = "5eb23750-1e19-47a3-b6f6-26635c34e8ee";

fn event_text(name: &str) -> String {
    let path = format!("{}/../events/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn event<T: serde::de::DeserializeOwned>(name: &str) -> T {
    serde_json::from_str(&event_text(name)).unwrap_or_else(|e| panic!("events/{name}: {e}"))
}

struct Service {
    store: Arc<MemoryStore>,
    records: Arc<MemoryRecords>,
    queue: Arc<MemoryQueue>,
    windows: Arc<ManualWindows>,
}

impl Service {
    async fn new() -> Self {
        let store = Arc::new(MemoryStore::default());
        let now = SystemClock.now();
        store
            .put_client(&OAuthClient::new(
                &SEED_CLIENT.0.parse().unwrap(),
                SEED_CLIENT.1,
                now,
            ))
            .await
            .unwrap();
        // The seed's token, as if issued earlier.
        store
            .put_token(&AccessToken {
                token_hash: sha256_hex(SEED_TOKEN),
                refresh_token_hash: sha256_hex("refresh"),
                client_id: SEED_CLIENT.0.parse().unwrap(),
                scope: "/webhook".into(),
                issued_at: now.whole_secs(),
                expires_at: now.whole_secs().plus(std::time::Duration::from_secs(3600)),
            })
            .await
            .unwrap();
        let records = Arc::new(MemoryRecords::default());
        records.put_person(
            &RecordId::parse("0000-0002-7465-2162").unwrap(),
            Default::default(),
        );
        Self {
            store,
            records,
            queue: Arc::new(MemoryQueue::new(Duration::from_secs(30), 3)),
            windows: Arc::new(ManualWindows::default()),
        }
    }

    fn ports(&self) -> Ports {
        webhooks::ports::Ports::over(
            self.store.clone(),
            self.records.clone(),
            self.queue.clone(),
            Arc::new(webhooks::memory::LoggedEvents::default()),
            Arc::new(SystemClock),
        )
    }

    fn registration(&self) -> Registration {
        Registration {
            ports: self.ports(),
            http: CallbackClient::new(&HttpSettings::default()),
            settings: ApiSettings::default(),
        }
    }

    fn flush(&self) -> Flush {
        Flush {
            delivery: None,
            ports: self.ports(),
            windows: self.windows.clone(),
            settings: FlushSettings::default(),
        }
    }
}

async fn api(
    service: &Service,
    name: &str,
) -> webhooks::lambda_http::Response<webhooks::lambda_http::Body> {
    let request = webhooks::lambda_http::request::from_str(&event_text(name))
        .unwrap_or_else(|e| panic!("events/{name}: {e}"));
    service.registration().handle(request).await
}

#[tokio::test]
async fn token_event() {
    let service = Service::new().await;
    let response = api(&service, "token.json").await;
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = match response.body() {
        webhooks::lambda_http::Body::Text(t) => serde_json::from_str(t).unwrap(),
        other => panic!("unexpected body {other:?}"),
    };
    assert_eq!(body["scope"], "/webhook");
}

#[tokio::test]
async fn register_and_unregister_events() {
    let service = Service::new().await;
    let response = api(&service, "register.json").await;
    assert_eq!(response.status(), 201);
    assert_eq!(
        response.headers()["location"],
        "https://a1b2c3d4e5.execute-api.eu-west-1.amazonaws.com/0000-0002-7465-2162/webhook/https%3A%2F%2Fnowhere2.com%2F0000-0002-7465-2162%2Fupdated"
    );
    assert_eq!(api(&service, "register.json").await.status(), 204);
    assert_eq!(api(&service, "unregister.json").await.status(), 204);
    assert_eq!(api(&service, "unregister.json").await.status(), 404);
}

#[tokio::test]
async fn a_register_event_whose_callback_query_was_split_off_is_400() {
    let service = Service::new().await;
    // API Gateway HTTP APIs decode the path and split it at `?`: a callback sent as
    // `https%3A%2F%2Fnowhere2.com%2Fupdated%3Fuser%3D7` arrives as this.
    let mut event: serde_json::Value = event("register.json");
    let path = "/0000-0002-7465-2162/webhook/https://nowhere2.com/updated";
    event["rawPath"] = path.into();
    event["requestContext"]["http"]["path"] = path.into();
    event["rawQueryString"] = "user=7".into();
    let request = webhooks::lambda_http::request::from_str(&event.to_string()).unwrap();
    let response = service.registration().handle(request).await;
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = match response.body() {
        webhooks::lambda_http::Body::Text(t) => serde_json::from_str(t).unwrap(),
        other => panic!("unexpected body {other:?}"),
    };
    assert_eq!(body["error"], "callback_url_query", "{body}");
}

#[tokio::test]
async fn stream_events_mark_records_pending() {
    let service = Service::new().await;
    let capture = ChangeCapture {
        pending: service.store.clone(),
        windows: service.windows.clone(),
    };
    let window = service.windows.current();
    for name in [
        "stream-insert.json",
        "stream-modify.json",
        "stream-remove.json",
    ] {
        let stream: Event = event(name);
        assert!(!stream.records.is_empty(), "{name}");
        let response = capture.handle(stream).await;
        assert!(response.batch_item_failures.is_empty(), "{name}");
    }
    // The insert and the modify change 0000-0002-7465-2162 more than once, the remove
    // changes 0000-0002-1825-0097: one pending entry each, counted in the pages as read
    // (a set would hide a second entry).
    let pending = pending_records(service.store.as_ref(), window)
        .await
        .unwrap();
    let mut ids: Vec<&str> = pending.iter().map(|r| r.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        ["0000-0002-1825-0097", "0000-0002-7465-2162"],
        "one pending entry per changed record"
    );
}

#[tokio::test]
async fn schedule_event_runs_the_flush() {
    let service = Service::new().await;
    let flush = service.flush();
    api(&service, "register.json").await;
    service
        .store
        .mark(
            service.windows.current(),
            &RecordId::parse("0000-0002-7465-2162").unwrap(),
        )
        .await
        .unwrap();
    service.windows.close_current();
    let scheduled: EventBridgeEvent = event("schedule.json");
    assert_eq!(scheduled.detail_type, "Scheduled Event");
    let report = flush.handle(event("schedule.json"), None).await.unwrap();
    assert_eq!((report.records, report.jobs), (1, 1));
    assert_eq!(service.queue.depth().visible, 1);
}

/// The constant input of a schedule that gives a flush some of the shards (the template's
/// `FlushWorkers`): it flushes those shards' records and leaves the others' to theirs.
#[tokio::test]
async fn a_flush_event_with_shards_flushes_those_shards_only() {
    let service = Service::new().await;
    let flush = service.flush();
    api(&service, "register.json").await;
    // The sample's shards are 0 to 3: 0000-0002-7465-2162 is in shard 1.
    let record = RecordId::parse("0000-0002-7465-2162").unwrap();
    assert_eq!(Shard::of(&record), Shard(1));
    service
        .store
        .mark(service.windows.current(), &record)
        .await
        .unwrap();
    service.windows.close_current();
    let others = FlushEvent {
        shards: Some(vec![4, 5, 6, 7]),
        ..FlushEvent::default()
    };
    let report = flush.handle(others, None).await.unwrap();
    assert_eq!(
        (report.jobs, report.behind_windows),
        (0, 0),
        "the closed windows flushed, without shard 1: {report:?}"
    );
    let sample: FlushEvent = event("flush-shards.json");
    let report = flush.handle(sample.clone(), None).await.unwrap();
    assert_eq!((report.records, report.jobs), (1, 1), "{report:?}");
    assert_eq!(service.queue.depth().visible, 1);
    let again = flush.handle(sample, None).await.unwrap();
    assert_eq!(
        (again.windows, again.jobs),
        (0, 0),
        "its cursor moved on: {again:?}"
    );
    let wrong = FlushEvent {
        shards: Some(vec![8]),
        ..FlushEvent::default()
    };
    assert!(matches!(
        flush.handle(wrong, None).await,
        Err(FlushError::Assignment(AssignmentError::NoSuchShard(8)))
    ));
}

#[tokio::test]
async fn sqs_event_runs_the_delivery() {
    let service = Service::new().await;
    // Point the sample's hosts at 127.0.0.1, where nothing serves https on port 443: both
    // deliveries fail to connect and are reported as batch item failures.
    let loopback: IpAddr = "127.0.0.1".parse().unwrap();
    let delivery = Delivery::new(
        service.ports(),
        CallbackClient::new(&HttpSettings {
            timeout: Duration::from_secs(2),
            url_policy: UrlPolicy {
                allow_insecure: true,
            },
            hosts: HashMap::from([
                ("nowhere2.com".to_owned(), vec![loopback]),
                ("example.org".to_owned(), vec![loopback]),
            ]),
            ..HttpSettings::default()
        }),
        DeliverySettings {
            retry: RetryPolicy::default(),
            concurrency: 4,
            ..DeliverySettings::default()
        },
    );
    let batch: SqsEvent = event("sqs-batch.json");
    let ids: Vec<String> = batch
        .records
        .iter()
        .map(|m| m.message_id.clone().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    // Nobody subscribed to these callbacks (yet): the jobs are dropped, acknowledged.
    let response = delivery.handle(batch.clone(), deadline).await;
    assert!(response.batch_item_failures.is_empty());

    // Subscribed, the delivery is attempted.
    assert_eq!(api(&service, "register.json").await.status(), 201);
    service
        .store
        .register(&webhooks::subscription::Subscription {
            record: RecordId::parse("0000-0002-1825-0097").unwrap(),
            callback: webhooks::callback::CallbackUrl::parse(
                "https://example.org/hooks/0000-0002-1825-0097",
                UrlPolicy::default(),
            )
            .unwrap(),
            client_id: SEED_CLIENT.0.parse().unwrap(),
            created_at: webhooks::clock::Timestamp::UNIX_EPOCH,
            health: Default::default(),
        })
        .await
        .unwrap();
    let delivery = Delivery::new(
        delivery.ports.clone(),
        delivery.http.clone(),
        delivery.settings,
    );
    let response = delivery.handle(batch, deadline).await;
    let mut failed: Vec<String> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect();
    failed.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(failed, expected);
}
