//! The end-to-end scenario over the AWS adapters, against moto server: persons written to
//! DynamoDB, change capture fed from real `GetRecords` on the table's stream, the flush
//! writing real SQS messages, delivery fed from real `ReceiveMessage` (real
//! `ApproximateReceiveCount`), failures re-hidden with real `ChangeMessageVisibility`, and
//! a message that always fails moved to the DLQ by the queue's redrive policy.

use std::sync::Arc;
use std::time::Duration;
use webhooks::aws::AwsServices;
use webhooks::callback::UrlPolicy;
use webhooks::handlers::{
    ApiSettings, ChangeCapture, Delivery, DeliverySettings, Flush, FlushSettings, Registration,
};
use webhooks::lambda_http::{Body, Request};
use webhooks::oauth::{OAuthClient, sha256_hex};
use webhooks::ports::{ClientStore, PendingChanges, Person};
use webhooks::record::RecordId;
use webhooks::retry::RetryPolicy;
use webhooks::testing::whole_flush_cursor;
use webhooks::window::ManualWindows;
use webhooks_tests::Receiver;
use webhooks_tests::api::encode_component;
use webhooks_tests::moto::{MotoEnv, QueuePoller, StreamPoller};

const RECORD: &str = "0000-0002-7465-2162";

struct Pipeline {
    env: MotoEnv,
    aws: AwsServices,
    registration: Registration,
    change_capture: ChangeCapture,
    flush: Flush,
    delivery: Delivery,
    windows: Arc<ManualWindows>,
    stream: StreamPoller,
    queue: QueuePoller,
}

impl Pipeline {
    /// The handlers over the AWS adapters; windows are closed by hand so the test does not
    /// wait five minutes, and callbacks may be plain http on 127.0.0.1 (the receiver).
    async fn new(max_attempts: u32) -> Self {
        let env = MotoEnv::create(max_attempts).await;
        let aws = AwsServices::new(&env.config, env.settings());
        let windows = Arc::new(ManualWindows::default());
        let insecure = UrlPolicy {
            allow_insecure: true,
        };
        let retry = RetryPolicy {
            base: Duration::from_secs(1),
            max_attempts,
            jitter: 0.0,
        };
        let http = webhooks::testing::local_callback_client(Duration::from_secs(2));
        Self {
            registration: Registration {
                ports: aws.ports(),
                http: http.clone(),
                settings: ApiSettings {
                    url_policy: insecure,
                    ..ApiSettings::default()
                },
            },
            change_capture: ChangeCapture {
                pending: aws.store.clone(),
                windows: windows.clone(),
            },
            flush: Flush {
                delivery: None,
                ports: aws.ports(),
                windows: windows.clone(),
                settings: FlushSettings::default(),
            },
            delivery: Delivery::new(
                aws.ports(),
                http,
                DeliverySettings {
                    retry,
                    concurrency: 8,
                    ..DeliverySettings::default()
                },
            ),
            stream: StreamPoller::start(&env).await,
            queue: QueuePoller::new(&env),
            windows,
            aws,
            env,
        }
    }

    async fn api(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> (u16, http::HeaderMap, String) {
        let mut builder = http::Request::builder()
            .method(method)
            .uri(format!("https://api.example.org{path}"));
        if let Some(token) = token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        let request: Request = builder.body(Body::Text(body.into())).unwrap();
        let response = self.registration.handle(request).await;
        let text = match response.body() {
            Body::Text(t) => t.clone(),
            _ => String::new(),
        };
        (response.status().as_u16(), response.headers().clone(), text)
    }

    /// Client APP-1 with secret `s3cret`.
    async fn add_client(&self) {
        let client = OAuthClient::new(
            &"APP-1".parse().unwrap(),
            "s3cret",
            time::OffsetDateTime::now_utc().into(),
        );
        self.aws.store.put_client(&client).await.unwrap();
    }

    async fn token(&self) -> String {
        let form =
            "client_id=APP-1&client_secret=s3cret&scope=%2Fwebhook&grant_type=client_credentials";
        let (status, _, body) = self.api("POST", "/oauth/token", None, form).await;
        assert_eq!(status, 200, "{body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        json["access_token"].as_str().unwrap().to_owned()
    }

    async fn change(&self, person: serde_json::Value) {
        let person: Person = person.as_object().unwrap().clone();
        self.aws
            .records
            .put_person(&RecordId::parse(RECORD).unwrap(), &person)
            .await
            .unwrap();
    }

    /// Stream -> change capture, then close the window and flush it.
    async fn capture_and_flush(&mut self) -> webhooks::handlers::FlushReport {
        let event = self.stream.poll().await;
        let response = self.change_capture.handle(event).await;
        assert!(response.batch_item_failures.is_empty());
        self.windows.close_current();
        self.flush.run(None).await.unwrap()
    }

    /// Polls the queue until `receiver` has `n` requests or `timeout` passes.
    async fn deliver_until(&self, receiver: &Receiver, n: usize, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while receiver.hits().len() < n && tokio::time::Instant::now() < deadline {
            self.queue
                .run_once(&self.delivery, Duration::from_secs(1))
                .await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orcid_flow_over_dynamodb_streams_and_sqs() {
    let mut p = Pipeline::new(5).await;
    p.add_client().await;
    p.change(serde_json::json!({"firstName": "Josiah"})).await;
    let report = p.capture_and_flush().await;
    assert_eq!((report.records, report.jobs), (1, 0), "no subscribers yet");
    let receiver = Receiver::start().await;
    let callback = receiver.url("/0000-0002-7465-2162/updated");
    let path = format!("/{RECORD}/webhook/{}", encode_component(&callback));

    // The token is stored only as a hash.
    let token = p.token().await;
    let stored = p
        .aws
        .store
        .raw_item(&format!("TOKEN#{}", sha256_hex(&token)), "TOKEN")
        .await
        .unwrap()
        .unwrap();
    assert!(!format!("{stored:?}").contains(&token));

    // Register: 201 with Location, 204 again (conditional write).
    let (status, headers, body) = p.api("PUT", &path, Some(&token), "").await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        headers["location"],
        format!("https://api.example.org{path}").as_str()
    );
    assert_eq!(p.api("PUT", &path, Some(&token), "").await.0, 204);

    // Two changes in one window: one stream batch, one pending entry, one message, one POST.
    p.change(serde_json::json!({"firstName": "Josiah", "v": 1}))
        .await;
    p.change(serde_json::json!({"firstName": "Josiah", "v": 2}))
        .await;
    let report = p.capture_and_flush().await;
    assert_eq!((report.records, report.jobs), (1, 1), "{report:?}");
    p.deliver_until(&receiver, 1, Duration::from_secs(10)).await;
    p.queue.run_once(&p.delivery, Duration::from_secs(1)).await;
    let hits = receiver.hits();
    assert_eq!(hits.len(), 1);
    assert!(hits[0].body.is_empty());

    // 500, 500, 204: three attempts; the retry gaps come from real visibility timeouts.
    receiver.script(&[500, 500]);
    p.change(serde_json::json!({"v": 3})).await;
    assert_eq!(p.capture_and_flush().await.jobs, 1);
    p.deliver_until(&receiver, 4, Duration::from_secs(20)).await;
    let hits = receiver.hits();
    assert_eq!(hits.len(), 4);
    let first_gap = (hits[2].at - hits[1].at).as_secs_f64();
    let second_gap = (hits[3].at - hits[2].at).as_secs_f64();
    assert!(first_gap >= 0.9, "first retry after 1 s, was {first_gap}");
    assert!(
        second_gap >= 1.9 && second_gap / first_gap >= 1.4,
        "gaps {first_gap} then {second_gap}"
    );

    // Unregister: 204; a further change enqueues nothing.
    assert_eq!(p.api("DELETE", &path, Some(&token), "").await.0, 204);
    p.change(serde_json::json!({"v": 4})).await;
    assert_eq!(p.capture_and_flush().await.jobs, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_always_fails_ends_in_the_dlq() {
    let mut p = Pipeline::new(2).await;
    p.add_client().await;
    p.change(serde_json::json!({"v": 0})).await;
    p.capture_and_flush().await;
    let receiver = Receiver::start().await;
    receiver.script(&[500, 500]);
    let token = p.token().await;
    let path = format!(
        "/{RECORD}/webhook/{}",
        encode_component(&receiver.url("/down"))
    );
    assert_eq!(p.api("PUT", &path, Some(&token), "").await.0, 201);
    p.change(serde_json::json!({"v": 1})).await;
    assert_eq!(p.capture_and_flush().await.jobs, 1);
    p.deliver_until(&receiver, 2, Duration::from_secs(15)).await;
    assert_eq!(receiver.hits().len(), 2);
    // The last attempt set visibility 0; the next receive moves the message to the DLQ.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let dead = loop {
        p.queue.run_once(&p.delivery, Duration::from_secs(1)).await;
        let dead = p.env.dead_letters().await;
        if !dead.is_empty() || tokio::time::Instant::now() > deadline {
            break dead;
        }
    };
    assert_eq!(dead.len(), 1);
    assert!(dead[0].contains("/down"), "{}", dead[0]);
    assert_eq!(receiver.hits().len(), 2, "no attempt after the last");

    // Replay (receive / send / delete) once the receiver is healthy: delivered.
    assert_eq!(p.aws.queue.redrive_by_loop(100).await.unwrap(), 1);
    assert!(p.env.dead_letters().await.is_empty());
    p.deliver_until(&receiver, 3, Duration::from_secs(10)).await;
    assert_eq!(
        receiver.hits().len(),
        3,
        "the replayed message is delivered"
    );
}

// What every adapter set does (paging, leases, conditional writes, counting) is the
// adapter contract, run on these adapters by tests/tests/contract.rs; here, what is
// DynamoDB's own: how items are stored.

/// A stream batch's pending records are one item per shard they touch (a record always in
/// the same shard), each with its TTL; the same batch marked again is the same items.
#[tokio::test]
async fn a_batch_of_pending_records_is_one_item_per_shard_with_its_ttl() {
    use webhooks::aws::dynamodb::{PENDING_SHARDS, pending_shard};
    let env = MotoEnv::create(3).await;
    let aws = AwsServices::new(&env.config, env.settings());
    let window = webhooks::window::WindowId(42);
    let records: Vec<RecordId> = (0..100)
        .map(|i| RecordId::parse(&format!("r{i:03}")).unwrap())
        .collect();
    let stored = || async {
        let mut items = Vec::new();
        for shard in 0..PENDING_SHARDS {
            let stored = env.partition(&format!("PENDING#42#{shard}")).await;
            items.extend(stored.into_iter().map(|i| (shard, i)));
        }
        items
    };
    aws.store.mark_all(window, &records).await.unwrap();
    let items = stored().await;
    assert_eq!(
        items.len(),
        PENDING_SHARDS as usize,
        "one item per shard touched"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let ttl = webhooks::window::PENDING_TTL.as_secs();
    let mut ids = Vec::new();
    for (shard, item) in &items {
        let expires: u64 = item["expires_at"].as_n().unwrap().parse().unwrap();
        assert!(
            (now + ttl - 60..=now + ttl + 60).contains(&expires),
            "a pending item expires a week after its write: {expires} vs now {now}"
        );
        for id in item["records"].as_l().unwrap() {
            let record = RecordId::parse(id.as_s().unwrap()).unwrap();
            assert_eq!(pending_shard(&record), *shard, "{record} in its shard");
            ids.push(record);
        }
    }
    ids.sort();
    let mut expected = records.clone();
    expected.sort();
    assert_eq!(ids, expected, "every record once");
    aws.store.mark_all(window, &records).await.unwrap();
    assert_eq!(
        stored().await.len(),
        items.len(),
        "marked again: the same items"
    );
}

#[tokio::test]
async fn an_application_is_stored_without_its_api_key_on_dynamodb() {
    use webhooks::application::Application;
    use webhooks::ports::ApplicationStore;

    let env = MotoEnv::create(3).await;
    let aws = AwsServices::new(&env.config, env.settings());
    aws.store
        .put_application(&Application::new(
            &"app-1".parse().unwrap(),
            "key-1",
            webhooks::clock::Timestamp::UNIX_EPOCH,
        ))
        .await
        .unwrap();
    let stored = aws.store.raw_item("APPS", "app-1").await.unwrap().unwrap();
    assert!(stored.contains_key("api_key_hash"), "{stored:?}");
    let index = aws
        .store
        .raw_item(&format!("APIKEY#{}", sha256_hex("key-1")), "APIKEY")
        .await
        .unwrap()
        .unwrap();
    for item in [stored, index] {
        assert!(
            !format!("{item:?}").contains("key-1"),
            "the API key is stored only as a hash: {item:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_flow_over_dynamodb_and_sqs() {
    use webhooks::application::Application;
    use webhooks::ports::ApplicationStore;

    let mut p = Pipeline::new(5).await;
    let receiver = Receiver::start().await;
    let mut app = Application::new(
        &"app-1".parse().unwrap(),
        "key-1",
        webhooks::clock::Timestamp::UNIX_EPOCH,
    );
    app.webhook.url = Some(receiver.url("/members").into());
    app.webhook.signing_key = Some("helloWorld".into());
    app.webhook.request_interval_ms = 50;
    p.aws.store.put_application(&app).await.unwrap();
    for i in 0..4 {
        let consents = serde_json::json!({"app-1": ["members.read_name"]});
        let person = serde_json::json!({"firstName": format!("P{i}"), "email": "hidden@example.org", "consents": consents});
        p.aws
            .records
            .put_person(
                &RecordId::parse(&format!("p-{i}")).unwrap(),
                person.as_object().unwrap(),
            )
            .await
            .unwrap();
    }

    // A change: the flush reads the person's consents from DynamoDB, one envelope arrives.
    let report = p.capture_and_flush().await;
    assert_eq!((report.records, report.jobs), (4, 4), "{report:?}");
    p.deliver_until(&receiver, 4, Duration::from_secs(10)).await;
    let hits = receiver.hits();
    assert_eq!(hits.len(), 4);
    let envelope: serde_json::Value = serde_json::from_slice(&hits[0].body).unwrap();
    assert_eq!(envelope["subscription"], "app-1");
    assert!(
        hits[0].headers["webhook-signature"]
            .to_str()
            .unwrap()
            .starts_with("v1,")
    );

    // A paced full sync driven through the real queue: sync steps and deliveries.
    let (status, _, body) = {
        let mut builder = http::Request::builder()
            .method("POST")
            .uri("https://api.example.org/application/app-1/webhook/sync");
        builder = builder.header("x-access-token", "key-1");
        let response = p
            .registration
            .handle(builder.body(Body::Empty).unwrap())
            .await;
        let text = match response.body() {
            Body::Text(t) => t.clone(),
            _ => String::new(),
        };
        (response.status().as_u16(), response.headers().clone(), text)
    };
    assert_eq!(status, 202, "{body}");
    let sync_id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["syncId"]
        .as_str()
        .unwrap()
        .to_owned();
    p.deliver_until(&receiver, 8, Duration::from_secs(15)).await;
    let hits = receiver.hits();
    assert_eq!(hits.len(), 8);
    let closest = hits[4..]
        .windows(2)
        .map(|w| w[1].at - w[0].at)
        .min()
        .unwrap();
    assert!(closest >= Duration::from_millis(50), "{closest:?}");
    let (sync, outcomes) = webhooks::ports::SyncStore::get_sync(
        p.aws.store.as_ref(),
        &webhooks::ids::SyncKey {
            application: "app-1".parse().unwrap(),
            sync: sync_id.parse().unwrap(),
        },
    )
    .await
    .unwrap()
    .unwrap();
    let progress = sync.progress(outcomes);
    assert_eq!(progress.state, webhooks::sync::SyncState::Completed);
    assert_eq!(progress.delivered, 4);
}

/// The at-least-once invariant at small scale against moto: every DynamoDB and SQS call
/// of the handlers may fail, fail after taking effect, or hang (the handler is killed
/// there); after healing, every (record, subscriber) pair has a delivery issued after the
/// record's last change, or a dead-lettered one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_notification_is_lost_when_handlers_are_killed_between_aws_calls() {
    use std::collections::HashMap;
    use tokio::time::timeout;
    use webhooks::aws_lambda_events::event::dynamodb::Event;
    use webhooks::job::MessageId;
    use webhooks::ports::{Ports, SubscriptionStore};
    use webhooks::subscription::Subscription;
    use webhooks::testing::faults::Faults;

    let seed = webhooks_tests::seed("MOTO_FAULTS_SEED", 20261125);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut p = Pipeline::new(4).await;
    let faults = Arc::new(Faults::seeded(seed, 0.05, 0.05, 0.03));
    // The handlers' adapters send every request through the plan; the test's own (`p.aws`:
    // setup, the stream, the receiver's side) are left alone.
    let faulty = AwsServices::new(
        &webhooks_tests::moto::with_faults(&p.env.config, &faults),
        p.env.settings(),
    );
    let ports = Ports {
        events: Arc::new(webhooks::memory::LoggedEvents::default()),
        ..faulty.ports()
    };
    let capture = ChangeCapture {
        pending: faulty.store.clone(),
        windows: p.windows.clone(),
    };
    let flush = Flush {
        delivery: None,
        ports: ports.clone(),
        windows: p.windows.clone(),
        settings: FlushSettings {
            page_size: 3,
            // A killed run's lease lasts this long past its deadline.
            lease_margin: Duration::from_millis(100),
            ..FlushSettings::default()
        },
    };
    let http = webhooks::testing::local_callback_client(Duration::from_millis(500));
    let retry = RetryPolicy {
        base: Duration::from_secs(1),
        max_attempts: 4,
        jitter: 0.0,
    };
    let delivery = Delivery::new(
        ports,
        http,
        DeliverySettings {
            retry,
            concurrency: 8,
            ..DeliverySettings::default()
        },
    );
    let receiver = Receiver::start().await;
    receiver.script(&[500, 503, 500, 429, 500, 302]);

    const RECORDS: usize = 6;
    let mut pairs = Vec::new();
    for record in 0..RECORDS {
        let id = RecordId::parse(&format!("r{record}")).unwrap();
        for client in 0..2 {
            let url = receiver.url(&format!("/c{client}/r{record}"));
            let subscription = Subscription {
                record: id.clone(),
                callback: webhooks::callback::CallbackUrl::parse(
                    &url,
                    UrlPolicy {
                        allow_insecure: true,
                    },
                )
                .unwrap(),
                client_id: format!("client-{client}").parse().unwrap(),
                created_at: webhooks::clock::Timestamp::UNIX_EPOCH,
                health: Default::default(),
            };
            p.aws.store.register(&subscription).await.unwrap();
            pairs.push((record, url));
        }
    }
    let mut last_change_window: HashMap<usize, u64> = HashMap::new();
    let mut pending_stream = Vec::new();
    for round in 0..12 {
        for _ in 0..rng.usize(1..=5) {
            let record = rng.usize(0..RECORDS);
            let person = serde_json::json!({"round": round, "n": rng.u32(..)});
            p.aws
                .records
                .put_person(
                    &RecordId::parse(&format!("r{record}")).unwrap(),
                    person.as_object().unwrap(),
                )
                .await
                .unwrap();
            last_change_window.insert(
                record,
                webhooks::window::FlushWindows::current(p.windows.as_ref()).0,
            );
        }
        pending_stream.extend(p.stream.poll().await.records);
        // The stream retries a batch from its first failed record until it succeeds.
        while !pending_stream.is_empty() {
            let mut event = Event::default();
            event.records = pending_stream.clone();
            if let Ok(response) = timeout(Duration::from_secs(2), capture.handle(event)).await {
                match response
                    .batch_item_failures
                    .first()
                    .and_then(|f| f.item_identifier.clone())
                {
                    None => pending_stream.clear(),
                    Some(sequence) => {
                        let at = pending_stream
                            .iter()
                            .position(|r| r.change.sequence_number.as_deref() == Some(&sequence))
                            .unwrap();
                        pending_stream.drain(..at);
                    }
                }
            }
        }
        p.windows.close_current();
        let _ = timeout(
            Duration::from_secs(2),
            flush.run(Some(
                tokio::time::Instant::now() + Duration::from_millis(1500),
            )),
        )
        .await;
        let _ = timeout(
            Duration::from_secs(2),
            p.queue.run_once(&delivery, Duration::from_millis(200)),
        )
        .await;
    }
    faults.heal();
    p.windows.close_current();
    let final_window = webhooks::window::FlushWindows::current(p.windows.as_ref()).0;
    // Until a run completes (a killed run's lease expires first).
    loop {
        match flush.run(None).await {
            Ok(report) if !report.lease_held => break,
            Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(_) => {}
        }
    }
    let satisfied = |acked: &std::collections::HashSet<(String, String)>,
                     dead: &[String],
                     record: usize,
                     url: &str| {
        let from = last_change_window[&record];
        let path = url::Url::parse(url).unwrap().path().to_owned();
        (from..=final_window).any(|w| {
            let id = MessageId::derive_in(
                webhooks::window::WindowId(w),
                &["callback", &w.to_string(), &format!("r{record}"), url],
            )
            .as_str()
            .to_owned();
            acked.contains(&(path.clone(), id.clone())) || dead.iter().any(|d| d.contains(&id))
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (mut lost, mut dead) = (Vec::new(), Vec::new());
    while tokio::time::Instant::now() < deadline {
        p.queue.run_once(&delivery, Duration::from_secs(1)).await;
        let acked: std::collections::HashSet<(String, String)> = receiver
            .hits()
            .iter()
            .filter_map(|h| {
                Some((
                    h.path.clone(),
                    h.headers.get("webhook-id")?.to_str().ok()?.to_owned(),
                ))
            })
            .collect();
        dead.extend(p.env.dead_letters().await);
        lost = pairs
            .iter()
            .filter(|(record, _)| last_change_window.contains_key(record))
            .filter(|(record, url)| !satisfied(&acked, &dead, *record, url))
            .cloned()
            .collect();
        if lost.is_empty() {
            break;
        }
    }
    let counts = faults.counts();
    println!(
        "moto fault test: {} requests received, {} dead-lettered, {} lost; injected {} failures, {} after effect, {} hangs in {} AWS calls",
        receiver.hits().len(),
        dead.len(),
        lost.len(),
        counts.failed,
        counts.failed_after,
        counts.hung,
        counts.operations
    );
    assert!(
        lost.is_empty(),
        "lost: {lost:?} — replay with MOTO_FAULTS_SEED={seed}"
    );
}

/// Operational events reach EventBridge: a receiver answering 410 is disabled at once,
/// the exhausted message is announced, and an operator's rule (here: to an SQS queue)
/// gets both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operational_events_reach_eventbridge() {
    let mut p = Pipeline::new(1).await;
    p.aws
        .store
        .put_client(&OAuthClient::new(
            &"APP-1".parse().unwrap(),
            "s3cret",
            time::OffsetDateTime::now_utc().into(),
        ))
        .await
        .unwrap();
    p.change(serde_json::json!({"v": 0})).await;
    p.capture_and_flush().await;
    let receiver = Receiver::start().await;
    receiver.script(&[410]);
    let token = p.token().await;
    let path = format!(
        "/{RECORD}/webhook/{}",
        encode_component(&receiver.url("/gone"))
    );
    assert_eq!(p.api("PUT", &path, Some(&token), "").await.0, 201);
    p.change(serde_json::json!({"v": 1})).await;
    assert_eq!(p.capture_and_flush().await.jobs, 1);
    p.deliver_until(&receiver, 1, Duration::from_secs(10)).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut events = Vec::new();
    while events.len() < 2 && tokio::time::Instant::now() < deadline {
        events.extend(p.env.ops_events().await);
    }
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["detail-type"].as_str().unwrap_or(""))
        .collect();
    assert!(kinds.contains(&"Endpoint Disabled"), "{events:?}");
    assert!(kinds.contains(&"Message Exhausted"), "{events:?}");
    let disabled = events
        .iter()
        .find(|e| e["detail-type"] == "Endpoint Disabled")
        .unwrap();
    assert_eq!(disabled["source"], "person-webhooks");
    assert_eq!(
        disabled["detail"]["reason"],
        webhooks::health::DisableReason::Gone.to_string()
    );
    // The owner sees it too.
    let (status, _, body) = p.api("GET", &path, Some(&token), "").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"disabled\""), "{body}");
}

/// The records of the ORCID-style jobs `receive_jobs` takes off the queue.
async fn notified_records(sqs: &aws_sdk_sqs::Client, queue_url: &str, n: usize) -> Vec<String> {
    receive_jobs(sqs, queue_url, n)
        .await
        .into_iter()
        .map(|j| match j.target {
            webhooks::job::Target::Callback { record, .. } => record.as_str().to_owned(),
            other => panic!("{other:?}"),
        })
        .collect()
}

/// Receives every message of `queue_url` (deleting them) until `n` arrived or 10 s passed.
async fn receive_jobs(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    n: usize,
) -> Vec<webhooks::job::DeliveryJob> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut jobs = Vec::new();
    while jobs.len() < n && tokio::time::Instant::now() < deadline {
        let out = sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        for message in out.messages.unwrap_or_default() {
            let body = message.body.unwrap();
            assert_eq!(webhooks::message::check(&body), Ok(()), "as sent");
            jobs.push(webhooks::message::decode(&body).unwrap());
            sqs.delete_message()
                .queue_url(queue_url)
                .receipt_handle(message.receipt_handle.unwrap())
                .send()
                .await
                .unwrap();
        }
    }
    jobs
}

fn person_job(n: usize, first_name: &str) -> webhooks::job::DeliveryJob {
    let person = serde_json::json!({"personID": format!("p{n}"), "firstName": first_name});
    webhooks::job::DeliveryJob::for_application(
        &"app-1".parse().unwrap(),
        &RecordId::parse(&format!("p{n}")).unwrap(),
        person.as_object().unwrap().clone(),
        webhooks::window::WindowId(1),
        webhooks::testing::at("2026-11-26T00:00:00.000Z"),
    )
}

/// SQS refuses some characters (moto does not check them, so what is sent is checked
/// here), messages over the queue's size and batches over its total: the adapter escapes,
/// splits by bytes, and reports a job that can never fit instead of failing the others.
#[tokio::test]
async fn the_sqs_adapter_escapes_splits_by_bytes_and_reports_refusals() {
    use webhooks::message::{MAX_MESSAGE_BYTES, Refusal};
    use webhooks::ports::DeliveryQueue;
    let env = MotoEnv::create(5).await;
    let aws = webhooks::aws::AwsServices::new(&env.config, env.settings());
    let sqs = aws_sdk_sqs::Client::new(&env.config);

    // Ten jobs of 120 KiB: 1.2 MiB, over any single SendMessageBatch (moto's limit is
    // 1 MiB, AWS's 256 KiB or 1 MiB); one job over the message size; one with U+FFFF.
    let mut jobs = vec![person_job(0, "Zoë\u{FFFF}\u{FFFE}")];
    for n in 1..=10 {
        jobs.push(person_job(n, &"x".repeat(120 * 1024)));
    }
    jobs.push(person_job(11, &"y".repeat(MAX_MESSAGE_BYTES)));
    let enqueued = aws
        .queue
        .enqueue(&jobs)
        .await
        .expect("no transient failure");
    assert_eq!(enqueued.refused.len(), 1, "{:?}", enqueued.refused);
    assert_eq!(enqueued.refused[0].index, 11);
    assert!(matches!(
        enqueued.refused[0].refusal,
        Refusal::TooLarge { .. }
    ));
    let mut got = receive_jobs(&sqs, &env.queue_url, 11).await;
    got.sort_by_key(|j| j.id.as_str().to_owned());
    let mut want = jobs[..11].to_vec();
    want.sort_by_key(|j| j.id.as_str().to_owned());
    assert_eq!(
        got, want,
        "every job but the refused one, decoded unchanged"
    );

    // A queue whose size limit is lower than the service's own check (an operator's
    // setting): SQS refuses the whole batch (moto: InvalidParameterValue), the adapter
    // finds the one entry at fault and sends the others.
    let small = sqs
        .create_queue()
        .queue_name(format!("small-{}", uuid::Uuid::new_v4().simple()))
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::MaximumMessageSize,
            "1024",
        )
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let queue = webhooks::aws::sqs::SqsQueue::new(sqs.clone(), &small, &env.dlq_url);
    let jobs = [
        person_job(20, "Ann"),
        person_job(21, &"z".repeat(2000)),
        person_job(22, "Cy"),
    ];
    let enqueued = queue.enqueue(&jobs).await.expect("no transient failure");
    assert_eq!(enqueued.refused.len(), 1, "{:?}", enqueued.refused);
    assert_eq!(enqueued.refused[0].index, 1);
    assert!(
        matches!(&enqueued.refused[0].refusal, Refusal::Rejected { reason } if reason.starts_with("InvalidParameterValue")),
        "{:?}",
        enqueued.refused[0].refusal
    );
    assert_eq!(receive_jobs(&sqs, &small, 2).await.len(), 2);
}

/// A person consenting to app-1's name scope, written and marked pending now.
async fn change_person(aws: &AwsServices, windows: &ManualWindows, id: &str, first_name: &str) {
    let record = RecordId::parse(id).unwrap();
    let person =
        serde_json::json!({"firstName": first_name, "consents": {"app-1": ["members.read_name"]}});
    aws.records
        .put_person(&record, person.as_object().unwrap())
        .await
        .unwrap();
    aws.store
        .mark(webhooks::window::FlushWindows::current(windows), &record)
        .await
        .unwrap();
}

/// The flush over DynamoDB and SQS with a person too large for any message: the job is set
/// aside as a poison item in the service table, the cursor moves on, and the next window
/// is flushed.
#[tokio::test]
async fn a_poison_change_is_set_aside_in_dynamodb_and_the_flush_moves_on() {
    use webhooks::application::Application;
    use webhooks::ports::ApplicationStore;
    let env = MotoEnv::create(5).await;
    let aws = webhooks::aws::AwsServices::new(&env.config, env.settings());
    let sqs = aws_sdk_sqs::Client::new(&env.config);
    let windows = Arc::new(ManualWindows::default());
    let mut app = Application::new(
        &"app-1".parse().unwrap(),
        "key-1",
        webhooks::clock::Timestamp::UNIX_EPOCH,
    );
    app.webhook.url = Some("https://example.org/hook".into());
    aws.store.put_application(&app).await.unwrap();
    let big = "x".repeat(webhooks::message::MAX_MESSAGE_BYTES);
    change_person(&aws, &windows, "p-1", &big).await;
    change_person(&aws, &windows, "p-2", "Zoë\u{FFFF}").await;
    windows.close_current();
    change_person(&aws, &windows, "p-3", "Di").await;
    windows.close_current();
    let flush = Flush {
        delivery: None,
        ports: aws.ports(),
        windows: windows.clone(),
        settings: FlushSettings::default(),
    };
    let report = flush
        .run(None)
        .await
        .expect("the poison does not fail the run");
    assert_eq!((report.jobs, report.set_aside), (2, 1), "{report:?}");
    let poison = aws.store.poison_items().await.unwrap();
    assert_eq!(poison.len(), 1, "{poison:?}");
    assert_eq!(poison[0].record.as_str(), "p-1");
    assert_eq!(poison[0].endpoint.as_deref(), Some("application:app-1"));
    let mut names: Vec<String> = receive_jobs(&sqs, &env.queue_url, 2)
        .await
        .into_iter()
        .map(|j| match j.target {
            webhooks::job::Target::Application { person, .. } => {
                person.to_map()["firstName"].as_str().unwrap().to_owned()
            }
            other => panic!("{other:?}"),
        })
        .collect();
    names.sort();
    assert_eq!(names, ["Di", "Zoë\u{FFFF}"]);
}

/// An application item whose webhook URL was damaged in DynamoDB (by hand, or by another
/// version) still loads; one batch of 100 with a step of its paced sync delivers the other
/// 99, the sync is cancelled, and a job for it lands in the real DLQ instead of a panic
/// aborting the invocation or the job being dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_stored_url_on_dynamodb_costs_only_its_own_messages() {
    use aws_sdk_dynamodb::types::AttributeValue;
    use webhooks::application::{Application, NoWebhook};
    use webhooks::aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
    use webhooks::job::DeliveryJob;
    use webhooks::ports::{ApplicationStore, SyncStore};
    use webhooks::sync::{FullSync, SyncState};

    let p = Pipeline::new(3).await;
    let receiver = Receiver::start().await;
    let mut good = Application::new(
        &"app-good".parse().unwrap(),
        "key-good",
        webhooks::clock::Timestamp::UNIX_EPOCH,
    );
    good.webhook.url = Some(receiver.url("/members").into());
    p.aws.store.put_application(&good).await.unwrap();
    let mut bad = Application::new(
        &"app-bad".parse().unwrap(),
        "key-bad",
        webhooks::clock::Timestamp::UNIX_EPOCH,
    );
    bad.webhook.url = Some("https://example.org/hook".to_owned().into());
    bad.webhook.request_interval_ms = 1000;
    p.aws.store.put_application(&bad).await.unwrap();
    aws_sdk_dynamodb::Client::new(&p.env.config)
        .update_item()
        .table_name(&p.env.service_table)
        .key("pk", AttributeValue::S("APPS".into()))
        .key("sk", AttributeValue::S("app-bad".into()))
        .update_expression("SET webhook.#url = :url")
        .expression_attribute_names("#url", "url")
        .expression_attribute_values(
            ":url",
            AttributeValue::S("https://exa mple.org/hook".into()),
        )
        .send()
        .await
        .unwrap();
    let loaded = p
        .aws
        .store
        .get_application(&"app-bad".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(loaded.webhook.target(), Err(NoWebhook::Unusable(_))),
        "{:?}",
        loaded.webhook
    );
    let consents = serde_json::json!({"app-bad": ["members.read_name"]});
    p.aws
        .records
        .put_person(
            &RecordId::parse("p-0").unwrap(),
            serde_json::json!({"firstName": "P", "consents": consents})
                .as_object()
                .unwrap(),
        )
        .await
        .unwrap();
    let sync = FullSync::new(
        &"app-bad".parse().unwrap(),
        1000,
        webhooks::testing::at("2026-11-26T12:00:00.000Z"),
    );
    p.aws.store.save_sync(&sync).await.unwrap();

    let created_at = webhooks::testing::at("2026-11-26T12:00:00.000Z");
    let person_job = |application: &str, i: usize| {
        let person = serde_json::json!({"id": format!("p-{i}")});
        DeliveryJob::for_application(
            &application.parse().unwrap(),
            &RecordId::parse(&format!("p-{i}")).unwrap(),
            person.as_object().unwrap().clone(),
            webhooks::window::WindowId(1),
            created_at,
        )
    };
    let batch = |jobs: &[DeliveryJob]| {
        let mut event = SqsEvent::default();
        event.records = jobs
            .iter()
            .enumerate()
            .map(|(i, job)| {
                let mut message = SqsMessage::default();
                message.message_id = Some(format!("m-{i}"));
                message.body = Some(serde_json::to_string(job).unwrap());
                message.attributes = std::collections::HashMap::from([(
                    "ApproximateReceiveCount".into(),
                    "1".into(),
                )]);
                message
            })
            .collect();
        event
    };
    let mut jobs = vec![DeliveryJob::sync_step(&sync.key(), created_at)];
    jobs.extend((0..99).map(|i| person_job("app-good", i)));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let response = p.delivery.handle(batch(&jobs), deadline).await;
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(
        receiver.wait_for(99, Duration::from_secs(10)).await.len(),
        99
    );
    let (sync, _) = p.aws.store.get_sync(&sync.key()).await.unwrap().unwrap();
    assert_eq!(sync.state, SyncState::Cancelled);

    let job = person_job("app-bad", 1);
    let response = p
        .delivery
        .handle(batch(std::slice::from_ref(&job)), deadline)
        .await;
    assert!(response.batch_item_failures.is_empty());
    // Parked (its endpoint is disabled), not dead-lettered.
    let parked: Vec<DeliveryJob> = p
        .env
        .parked()
        .await
        .iter()
        .map(|body| serde_json::from_str(body).unwrap())
        .collect();
    assert_eq!(parked, [job]);
    assert!(p.env.dead_letters().await.is_empty());
    let loaded = p
        .aws
        .store
        .get_application(&"app-bad".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(loaded.health.is_disabled());
    let view =
        serde_json::to_value(webhooks::handlers::views::ApplicationView::from(&loaded)).unwrap();
    assert_eq!(view["webhook"]["url"], "https://exa mple.org/hook");
}

/// Pending items written by an earlier version (one per record in `PENDING#<window>`)
/// are still read, from their key; an entry whose key is no record id, a shard item
/// without its records and a record id in one that does not parse are skipped, so none
/// stops the flush at that page for every later window.
#[tokio::test]
async fn a_damaged_pending_entry_does_not_stop_the_page() {
    use aws_sdk_dynamodb::types::AttributeValue;
    let env = MotoEnv::create(3).await;
    let aws = AwsServices::new(&env.config, env.settings());
    let dynamodb = aws_sdk_dynamodb::Client::new(&env.config);
    let window = webhooks::window::WindowId(7);
    aws.store
        .mark(window, &RecordId::parse("a").unwrap())
        .await
        .unwrap();
    for (sk, record) in [
        ("b", AttributeValue::N("1".into())),
        ("no#id", AttributeValue::Null(true)),
    ] {
        dynamodb
            .put_item()
            .table_name(&env.service_table)
            .item("pk", AttributeValue::S("PENDING#7".into()))
            .item("sk", AttributeValue::S(sk.into()))
            .item("record", record)
            .send()
            .await
            .unwrap();
    }
    let shard = webhooks::aws::dynamodb::pending_shard(&RecordId::parse("c").unwrap());
    for (sk, records) in [
        ("damaged", AttributeValue::N("1".into())),
        (
            "mixed",
            AttributeValue::L(vec![
                AttributeValue::S("no#id".into()),
                AttributeValue::N("2".into()),
                AttributeValue::S("c".into()),
            ]),
        ),
    ] {
        dynamodb
            .put_item()
            .table_name(&env.service_table)
            .item("pk", AttributeValue::S(format!("PENDING#7#{shard}")))
            .item("sk", AttributeValue::S(sk.into()))
            .item("records", records)
            .send()
            .await
            .unwrap();
    }
    let pending = webhooks::testing::pending_records(aws.store.as_ref(), window)
        .await
        .expect("no corrupt error");
    let mut records: Vec<&str> = pending.iter().map(|r| r.as_str()).collect();
    records.sort_unstable();
    assert_eq!(records, ["a", "b", "c"]);
}

/// Records r00, r01, ... each with one ORCID-style subscriber (https://a.example/<record>).
async fn subscribe_records(aws: &webhooks::aws::AwsServices, n: usize) -> Vec<RecordId> {
    use webhooks::callback::{CallbackUrl, UrlPolicy};
    use webhooks::ports::SubscriptionStore;
    let records: Vec<RecordId> = (0..n)
        .map(|i| RecordId::parse(&format!("r{i:02}")).unwrap())
        .collect();
    for record in &records {
        aws.store
            .register(&webhooks::subscription::Subscription {
                record: record.clone(),
                callback: CallbackUrl::parse(
                    &format!("https://a.example/{record}"),
                    UrlPolicy::default(),
                )
                .unwrap(),
                client_id: "APP-1".parse().unwrap(),
                created_at: webhooks::clock::Timestamp::UNIX_EPOCH,
                health: Default::default(),
            })
            .await
            .unwrap();
    }
    records
}

/// A flush test's set-up on moto: `n` records with a subscriber each (`subscribe_records`),
/// marked pending in one window in the batches that `batches` names (ranges of the
/// records, as stream batches mark them), and that window closed.
struct ClosedWindow {
    env: MotoEnv,
    aws: AwsServices,
    sqs: aws_sdk_sqs::Client,
    windows: Arc<ManualWindows>,
    window: webhooks::window::WindowId,
    records: Vec<RecordId>,
}

impl ClosedWindow {
    async fn new(n: usize, batches: &[std::ops::Range<usize>]) -> Self {
        let env = MotoEnv::create(5).await;
        let aws = AwsServices::new(&env.config, env.settings());
        let sqs = aws_sdk_sqs::Client::new(&env.config);
        let windows = Arc::new(ManualWindows::default());
        let records = subscribe_records(&aws, n).await;
        let window = webhooks::window::FlushWindows::current(windows.as_ref());
        for batch in batches {
            aws.store
                .mark_all(window, &records[batch.clone()])
                .await
                .unwrap();
        }
        windows.close_current();
        Self {
            env,
            aws,
            sqs,
            windows,
            window,
            records,
        }
    }
}

/// A record changed in several stream batches of a window is in several items of its
/// shard; the flush notifies it once in that window, across pages and shards.
#[tokio::test]
async fn a_record_marked_by_several_batches_is_notified_once_per_window() {
    let ClosedWindow {
        env,
        aws,
        sqs,
        windows,
        records,
        ..
    } = ClosedWindow::new(30, &[0..20, 10..30, 0..30, 5..6]).await;
    let flush = Flush {
        delivery: None,
        ports: aws.ports(),
        windows: windows.clone(),
        settings: FlushSettings {
            page_size: 7,
            ..FlushSettings::default()
        },
    };
    let report = flush.run(None).await.unwrap();
    assert_eq!((report.records, report.jobs), (30, 30), "{report:?}");
    let mut notified = notified_records(&sqs, &env.queue_url, 31).await;
    notified.sort();
    let expected: Vec<String> = records.iter().map(|r| r.as_str().to_owned()).collect();
    assert_eq!(notified, expected, "each record once");
}

/// Ids are checked when read back: an item whose client, application or API-key index
/// names an id no client or application can have is corrupt (a clear backend error the
/// handlers already deal with), never a panic or an id passed on unchecked.
#[tokio::test]
async fn a_stored_id_that_does_not_parse_is_corrupt() {
    use aws_sdk_dynamodb::types::AttributeValue;
    use webhooks::ports::{ApplicationStore, BackendError};
    let env = MotoEnv::create(3).await;
    let aws = AwsServices::new(&env.config, env.settings());
    let dynamodb = aws_sdk_dynamodb::Client::new(&env.config);
    dynamodb
        .put_item()
        .table_name(&env.service_table)
        .item("pk", AttributeValue::S("APIKEY#abc".into()))
        .item("sk", AttributeValue::S("APIKEY".into()))
        .item("application_id", AttributeValue::S("not an id/".into()))
        .send()
        .await
        .unwrap();
    let index = aws.store.application_for_key("abc").await;
    assert!(
        matches!(index, Err(BackendError::Corrupt(_))),
        "API key index: {index:?}"
    );
    let id = "APP-1".parse().unwrap();
    let client = OAuthClient::new(&id, "s", time::OffsetDateTime::now_utc().into());
    aws.store.put_client(&client).await.unwrap();
    dynamodb
        .update_item()
        .table_name(&env.service_table)
        .key("pk", AttributeValue::S("CLIENTS".into()))
        .key("sk", AttributeValue::S("APP-1".into()))
        .update_expression("SET client_id = :bad")
        .expression_attribute_values(":bad", AttributeValue::S("a b".into()))
        .send()
        .await
        .unwrap();
    let read = aws.store.get_client(&id).await;
    assert!(
        matches!(read, Err(BackendError::Corrupt(_))),
        "client item: {read:?}"
    );
}

/// The DynamoDB adapter stamps TTLs with the clock it is given, not the machine's: a
/// pending change expires seven days after the store's now.
#[tokio::test]
async fn ttls_are_stamped_by_the_stores_clock() {
    use webhooks::aws::dynamodb::{DynamoStore, pending_shard};
    let env = MotoEnv::create(3).await;
    let start = time::macros::datetime!(2031-01-02 03:04:05 UTC);
    let clock = Arc::new(webhooks::testing::ManualClock::new(start));
    let dynamodb = aws_sdk_dynamodb::Client::new(&env.config);
    let store = DynamoStore::new(dynamodb.clone(), &env.service_table, clock);
    let record = RecordId::parse("a").unwrap();
    store
        .mark(webhooks::window::WindowId(7), &record)
        .await
        .unwrap();
    let stored = env
        .partition(&format!("PENDING#7#{}", pending_shard(&record)))
        .await;
    let expires: Vec<&str> = stored
        .iter()
        .filter_map(|item| item.get("expires_at")?.as_n().ok().map(String::as_str))
        .collect();
    let week_later = start.unix_timestamp() + 7 * 24 * 3600;
    assert_eq!(expires, [week_later.to_string().as_str()]);
}

/// A delivery queue that lets `pass` enqueues through and holds every later one until the
/// run is killed: a flush whose workers stop in the middle of their shards.
struct StuckQueue {
    inner: Arc<dyn webhooks::ports::DeliveryQueue>,
    pass: tokio::sync::Semaphore,
    /// Enqueues held.
    stuck: std::sync::atomic::AtomicUsize,
    /// Jobs let through.
    passed: std::sync::atomic::AtomicUsize,
}

impl StuckQueue {
    /// A flush over `aws`'s ports whose delivery queue lets `pass` enqueues through and
    /// holds the later ones; and that queue, to watch.
    fn flush(
        aws: &AwsServices,
        windows: &Arc<ManualWindows>,
        settings: FlushSettings,
        pass: usize,
    ) -> (Arc<Self>, Arc<Flush>) {
        let queue = Arc::new(Self {
            inner: aws.ports().queue,
            pass: tokio::sync::Semaphore::new(pass),
            stuck: Default::default(),
            passed: Default::default(),
        });
        let mut ports = aws.ports();
        ports.queue = queue.clone();
        let flush = Arc::new(Flush {
            delivery: None,
            ports,
            windows: windows.clone(),
            settings,
        });
        (queue, flush)
    }

    /// Whether an enqueue is held.
    fn is_stuck(&self) -> bool {
        self.stuck.load(std::sync::atomic::Ordering::SeqCst) > 0
    }

    /// Waits, at most ten seconds, until an enqueue is held and `saved_mid_way` (a shard's
    /// position after a page is stored): the moment to kill the run. The save follows the
    /// page's enqueue, and under load moto answers it well after the next page blocks.
    async fn wait_until_stuck<F, Fut>(&self, saved_mid_way: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        for _ in 0..1_000 {
            if self.is_stuck() && saved_mid_way().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// How many times each record was notified.
fn times_notified(
    records: impl IntoIterator<Item = String>,
) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for record in records {
        *counts.entry(record).or_default() += 1;
    }
    counts
}

/// How many records of each shard were notified twice.
fn twice_per_shard(
    counts: &std::collections::BTreeMap<String, usize>,
) -> std::collections::BTreeMap<webhooks::window::Shard, usize> {
    let mut doubled = std::collections::BTreeMap::new();
    for (record, _) in counts.iter().filter(|(_, n)| **n == 2) {
        let shard = webhooks::window::Shard::of(&RecordId::parse(record).unwrap());
        *doubled.entry(shard).or_default() += 1;
    }
    doubled
}

#[async_trait::async_trait]
impl webhooks::ports::DeliveryQueue for StuckQueue {
    async fn enqueue(
        &self,
        jobs: &[webhooks::job::DeliveryJob],
    ) -> webhooks::ports::BackendResult<webhooks::ports::Enqueued> {
        match self.pass.try_acquire() {
            Ok(permit) => {
                permit.forget();
                self.passed
                    .fetch_add(jobs.len(), std::sync::atomic::Ordering::SeqCst);
            }
            Err(_) => {
                self.stuck.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                std::future::pending::<()>().await
            }
        }
        self.inner.enqueue(jobs).await
    }
    async fn enqueue_delayed(
        &self,
        job: &webhooks::job::DeliveryJob,
        delay: Duration,
    ) -> webhooks::ports::BackendResult<()> {
        self.inner.enqueue_delayed(job, delay).await
    }
    async fn retry_later(
        &self,
        receipt: &str,
        delay: Duration,
    ) -> webhooks::ports::BackendResult<()> {
        self.inner.retry_later(receipt, delay).await
    }
    async fn dead_letter(
        &self,
        job: &webhooks::job::DeliveryJob,
    ) -> webhooks::ports::BackendResult<()> {
        self.inner.dead_letter(job).await
    }
    async fn park(&self, job: &webhooks::job::DeliveryJob) -> webhooks::ports::BackendResult<()> {
        self.inner.park(job).await
    }
}

/// The flush runs one worker per shard; a run killed while its workers are in the middle
/// of their shards leaves each shard's last saved page in the cursor, and the next run
/// resumes every shard from there: every record notified, none more than once but for
/// the one page per shard that was enqueued and not saved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_flush_worker_is_resumed_from_its_shard_position() {
    let ClosedWindow {
        env,
        aws,
        sqs,
        windows,
        window,
        ..
    } = ClosedWindow::new(40, &[0..15, 15..30, 30..40]).await;
    let settings = FlushSettings {
        page_size: 2,
        // The killed run's leases last until its deadline.
        lease_margin: Duration::ZERO,
        ..FlushSettings::default()
    };
    let (queue, killed_flush) = StuckQueue::flush(&aws, &windows, settings, 6);
    // Its leases last until this deadline (no margin); it is killed well before.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let run = tokio::spawn({
        let flush = killed_flush.clone();
        async move { flush.run(Some(deadline)).await }
    });
    // Killed once six pages went through, a worker waits at the seventh, and a shard's
    // position after its page is stored.
    queue
        .wait_until_stuck(|| async {
            whole_flush_cursor(aws.store.as_ref())
                .await
                .is_some_and(|c| c.shards.iter().any(|p| p.after.is_some()))
        })
        .await;
    assert!(queue.is_stuck(), "a worker is stuck mid-shard");
    run.abort();
    assert!(
        run.await.is_err_and(|e| e.is_cancelled()),
        "the run was killed"
    );
    // The dead run's lease expires at its deadline.
    tokio::time::sleep_until(deadline + Duration::from_millis(100)).await;
    let saved = whole_flush_cursor(aws.store.as_ref())
        .await
        .expect("progress saved");
    assert_eq!(saved.window, window, "{saved:?}");
    let mid_way: Vec<_> = saved.shards.iter().filter(|p| p.after.is_some()).collect();
    assert!(!mid_way.is_empty(), "shards saved mid-way: {saved:?}");
    let first = notified_records(&sqs, &env.queue_url, 12).await;
    assert!((6..=12).contains(&first.len()), "six pages: {first:?}");

    let flush = Flush {
        delivery: None,
        ports: aws.ports(),
        windows: windows.clone(),
        settings,
    };
    let report = flush.run(None).await.unwrap();
    assert_eq!(
        (report.windows, report.lease_held),
        (1, false),
        "{report:?}"
    );
    let second = notified_records(&sqs, &env.queue_url, report.jobs as usize + 1).await;
    let counts = times_notified(first.into_iter().chain(second));
    assert_eq!(counts.len(), 40, "no record skipped: {counts:?}");
    for (record, n) in &counts {
        assert!(*n <= 2, "{record} queued {n} times");
    }
    let doubled = twice_per_shard(&counts);
    assert!(
        doubled.values().all(|n| *n <= 2),
        "at most a page per shard again: {doubled:?}"
    );
    assert_eq!(
        whole_flush_cursor(aws.store.as_ref())
            .await
            .map(|c| c.window.0),
        Some(window.0 + 1),
        "the window is done"
    );
}

/// The template's `FlushWorkers`: two flushes, each of half the shards, run at once. One is
/// killed mid-way and does not hold the other back; its next run resumes its shards from
/// their saved positions (its own cursor item and lease): every record notified, the
/// killed part's at most a page per shard again, the other part's exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_flush_of_some_shards_is_resumed_and_holds_no_other_back() {
    use webhooks::window::{FlushAssignment, Shard};
    let one_batch = 0..40;
    let ClosedWindow {
        env,
        aws,
        sqs,
        windows,
        window,
        records,
    } = ClosedWindow::new(40, &[one_batch]).await;
    let (low, high) = (
        FlushAssignment::of(0..4).unwrap(),
        FlushAssignment::of(4..8).unwrap(),
    );
    let in_low = |r: &RecordId| low.shards().any(|s| s == Shard::of(r));
    let low_records = records.iter().filter(|r| in_low(r)).count();
    assert!((10..=30).contains(&low_records), "{low_records} of 40");
    let settings = FlushSettings {
        page_size: 2,
        lease_margin: Duration::ZERO,
        ..FlushSettings::default()
    };
    let (queue, killed_flush) = StuckQueue::flush(&aws, &windows, settings, 4);
    let flush = Flush {
        delivery: None,
        ports: aws.ports(),
        windows: windows.clone(),
        settings,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let run = tokio::spawn({
        let (flush, low) = (killed_flush.clone(), low.clone());
        async move { flush.run_assignment(&low, Some(deadline)).await }
    });
    let other = flush.run_assignment(&high, None).await.unwrap();
    assert_eq!(
        (other.lease_held, other.jobs as usize),
        (false, 40 - low_records),
        "the other half, whole: {other:?}"
    );
    let low_saved_mid_way = || async {
        webhooks::testing::flush_cursor_of(aws.store.as_ref(), &low)
            .await
            .is_some_and(|c| c.shards.iter().any(|p| p.after.is_some()))
    };
    queue.wait_until_stuck(low_saved_mid_way).await;
    assert!(low_saved_mid_way().await, "the killed half saved mid-way");
    run.abort();
    assert!(run.await.is_err_and(|e| e.is_cancelled()), "killed");
    tokio::time::sleep_until(deadline + Duration::from_millis(100)).await;
    let resumed = flush.run_assignment(&low, None).await.unwrap();
    assert_eq!(
        (resumed.windows, resumed.lease_held),
        (1, false),
        "{resumed:?}"
    );
    let passed = queue.passed.load(std::sync::atomic::Ordering::SeqCst);
    let expected = 40 - low_records + passed + resumed.jobs as usize;
    let sent = notified_records(&sqs, &env.queue_url, expected).await;
    assert_eq!(sent.len(), expected, "what each run enqueued");
    let counts = times_notified(sent);
    assert_eq!(counts.len(), 40, "no record skipped: {counts:?}");
    for (record, n) in &counts {
        let expected = if in_low(&RecordId::parse(record).unwrap()) {
            1..=2
        } else {
            1..=1
        };
        assert!(expected.contains(n), "{record} queued {n} times");
    }
    let doubled = twice_per_shard(&counts);
    assert!(
        doubled.values().all(|n| *n <= 2),
        "at most a page per shard again: {doubled:?}"
    );
    let whole = webhooks::testing::whole_flush_cursor(aws.store.as_ref()).await;
    assert_eq!(whole, None, "the halves keep their own cursors");
    for part in [&low, &high] {
        let cursor = webhooks::testing::flush_cursor_of(aws.store.as_ref(), part).await;
        assert_eq!(cursor.map(|c| c.window.0), Some(window.0 + 1), "{part:?}");
    }
}
