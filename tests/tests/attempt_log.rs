//! The delivery attempt log against a real receiver on 127.0.0.1 that answers 500, 500,
//! then 204: the log holds exactly the three attempts it saw, with their statuses, in
//! order, the first KiB of each response, and the message that was sent — on the
//! in-memory adapter and on DynamoDB (moto).

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use webhooks::application::Application;
use webhooks::attempts::{LogEndpoint, OutcomeClass, StatusFilter};
use webhooks::callback::UrlPolicy;
use webhooks::handlers::{ApiSettings, Delivery, DeliverySettings, Registration};
use webhooks::http_client::RESPONSE_PREFIX_BYTES;
use webhooks::http_client::{CallbackClient, HttpSettings};
use webhooks::job::DeliveryJob;
use webhooks::memory::{MemoryQueue, MemoryStore, ReceivedMessage};
use webhooks::ports::{ApplicationStore, AttemptLog};
use webhooks::record::RecordId;
use webhooks::retry::RetryPolicy;
use webhooks::testing::faults::{Fault, Faults};
use webhooks::window::WindowId;
use webhooks_tests::api::request;

/// What the receiver answers, in order: status and body.
fn script() -> Vec<(u16, String)> {
    vec![
        // Longer than what the log keeps.
        (500, format!("first failure {}", "x".repeat(3000))),
        (500, "second failure".to_owned()),
        (204, String::new()),
    ]
}

/// The `webhook-id` and answered status of each request, in order.
type Seen = Arc<Mutex<Vec<(String, u16)>>>;

/// A receiver answering [`script`] and noting the `webhook-id` and status of each request.
struct ScriptedReceiver {
    addr: SocketAddr,
    seen: Seen,
    server: tokio::task::JoinHandle<()>,
}

impl ScriptedReceiver {
    async fn start() -> Self {
        let seen: Seen = Arc::default();
        async fn answer(State(seen): State<Seen>, headers: http::HeaderMap) -> Response {
            let mut seen = seen.lock().unwrap();
            let (status, body) = script()
                .get(seen.len())
                .cloned()
                .unwrap_or((204, String::new()));
            let id = headers
                .get("webhook-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            seen.push((id, status));
            (StatusCode::from_u16(status).unwrap(), body).into_response()
        }
        let app = Router::new().fallback(answer).with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, seen, server }
    }

    fn seen(&self) -> Vec<(String, u16)> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for ScriptedReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Delivers one Members-style job through the delivery handler and a queue with the
/// handler's retry schedule until the receiver acknowledges; checks the log `log` kept.
async fn attempts_match_what_the_receiver_saw(log: Arc<dyn AttemptLog>) {
    let receiver = ScriptedReceiver::start().await;
    let store = Arc::new(MemoryStore::default());
    let queue = Arc::new(MemoryQueue::new(Duration::from_secs(30), 5));
    let mut app = Application::new(
        &"app-log".parse().unwrap(),
        "key-log",
        webhooks::clock::Timestamp::UNIX_EPOCH,
    );
    app.webhook.url = Some(format!("http://{}/hook", receiver.addr).into());
    store.put_application(&app).await.unwrap();
    let mut ports = webhooks::testing::memory_ports(store.clone(), queue.clone());
    ports.attempts = log.clone();
    let api = Registration {
        ports: ports.clone(),
        http: CallbackClient::new(&HttpSettings::default()),
        settings: ApiSettings::default(),
    };
    let delivery = delivery_over(ports);
    let record = RecordId::parse("0000-0002-7465-2162").unwrap();
    let mut person = serde_json::Map::new();
    person.insert("id".into(), record.as_str().into());
    let job = DeliveryJob::for_application(
        &"app-log".parse().unwrap(),
        &record,
        person,
        WindowId(9),
        webhooks::testing::at("2026-11-26T10:00:00.000Z"),
    );
    queue.send(serde_json::to_string(&job).unwrap());

    run_queue(&delivery, &queue, &receiver, 3).await;
    let seen = receiver.seen();
    assert_eq!(
        seen.iter().map(|(_, s)| *s).collect::<Vec<_>>(),
        vec![500, 500, 204],
        "the receiver saw the scripted answers"
    );
    assert!(seen.iter().all(|(id, _)| id == job.id.as_str()));

    let endpoint = LogEndpoint::application(&"app-log".parse().unwrap());
    let page = log
        .attempts(&endpoint, StatusFilter::All, None, 10)
        .await
        .unwrap();
    assert_eq!(page.next, None);
    let newest_first: Vec<(u32, Option<u16>, OutcomeClass)> = page
        .items
        .iter()
        .map(|a| (a.attempt, a.status, a.outcome))
        .collect();
    assert_eq!(
        newest_first,
        vec![
            (3, Some(204), OutcomeClass::Acked),
            (2, Some(500), OutcomeClass::HttpStatus),
            (1, Some(500), OutcomeClass::HttpStatus),
        ],
        "one entry per attempt the receiver saw, newest first"
    );
    assert!(page.items.iter().all(|a| a.message_id == job.id));
    assert!(page.items.windows(2).all(|w| w[0].at >= w[1].at));
    let first = &page.items[2];
    assert_eq!(first.response.len(), RESPONSE_PREFIX_BYTES);
    assert!(first.response.starts_with("first failure xxx"));
    assert_eq!(page.items[1].response, "second failure");
    assert_eq!(page.items[0].response, "");

    // The message is kept with its attempts, oldest first.
    let (message, attempts) = log.message(&endpoint, &job.id).await.unwrap().unwrap();
    assert_eq!(message.job, job.replayable());
    assert_eq!(message.last_outcome, OutcomeClass::Acked);
    assert_eq!(message.last_attempt, 3);
    assert_eq!(
        attempts.iter().map(|a| a.status).collect::<Vec<_>>(),
        vec![Some(500), Some(500), Some(204)]
    );
    api_shows_the_log(&api, &job).await;

    // Redelivery: the same message id again, as a new attempt series, to the URL its
    // owner set just now (the delivery handler has the old one cached).
    let moved = OutageReceiver::default();
    let (moved_addr, moved_server) = moved.start().await;
    let mut app = store
        .get_application(&"app-log".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    app.webhook.url = Some(format!("http://{moved_addr}/new").into());
    store.put_application(&app).await.unwrap();
    let redeliver = format!(
        "/application/app-log/webhook/messages/{}/redeliver",
        job.id.as_str()
    );
    let (status, body) = call(&api, "POST", &redeliver).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["messageId"], job.id.as_str());
    run_queue_until(
        &delivery,
        &queue,
        || receiver.seen().len() + moved.seen().len() >= 4,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(receiver.seen().len(), 3, "nothing more to the old URL");
    let again: Vec<(String, u16)> = moved.seen().into_iter().map(|(id, s, _)| (id, s)).collect();
    assert_eq!(
        again,
        vec![(job.id.as_str().to_owned(), 204)],
        "the same webhook-id, at the current URL"
    );
    moved_server.abort();
    let page = log
        .attempts(&endpoint, StatusFilter::All, None, 10)
        .await
        .unwrap();
    assert_eq!(
        page.items
            .iter()
            .map(|a| (a.attempt, a.status))
            .collect::<Vec<_>>(),
        vec![
            (1, Some(204)),
            (3, Some(204)),
            (2, Some(500)),
            (1, Some(500))
        ],
        "a new series starts at attempt 1"
    );
    // Not while the endpoint is disabled; not a message it never got.
    let mut disabled = webhooks::health::EndpointHealth::default();
    disabled.disable(
        webhooks::clock::Timestamp::UNIX_EPOCH,
        "the receiver answered 410 Gone".into(),
    );
    store
        .set_application_health(&"app-log".parse().unwrap(), &disabled)
        .await
        .unwrap();
    let (status, body) = call(&api, "POST", &redeliver).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("endpoint_disabled"))
    );
    let (status, body) = call(
        &api,
        "POST",
        "/application/app-log/webhook/messages/msg_00000000000000000000000000000000/redeliver",
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("message_not_found"))
    );
    assert!(
        queue
            .receive(10, Duration::from_millis(100))
            .await
            .is_empty(),
        "nothing queued"
    );

    // Another endpoint sees none of it.
    let other = LogEndpoint::application(&"app-other".parse().unwrap());
    assert!(log.message(&other, &job.id).await.unwrap().is_none());
    assert!(
        log.attempts(&other, StatusFilter::All, None, 10)
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn in_memory_log_matches_the_receiver() {
    attempts_match_what_the_receiver_saw(Arc::new(MemoryStore::default())).await;
}

#[tokio::test]
async fn dynamodb_log_matches_the_receiver() {
    let env = webhooks_tests::moto::MotoEnv::create(5).await;
    let store = webhooks::aws::dynamodb::DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&env.config),
        &env.service_table,
        std::sync::Arc::new(webhooks::clock::SystemClock),
    )
    .with_attempt_retention(Duration::from_secs(7 * 24 * 3600));
    attempts_match_what_the_receiver_saw(Arc::new(store.clone())).await;
    // Every item carries its TTL: the attempt's time plus the retention.
    let endpoint = LogEndpoint::application(&"app-log".parse().unwrap());
    let page = store
        .attempts(&endpoint, StatusFilter::All, None, 1)
        .await
        .unwrap();
    let newest = &page.items[0];
    let item = store
        .raw_item(
            &format!("ATTEMPTS#{}", endpoint.key.as_str()),
            &newest.sort_key(),
        )
        .await
        .unwrap()
        .unwrap();
    let expires: i64 = item["expires_at"].as_n().unwrap().parse().unwrap();
    assert_eq!(expires, newest.at.epoch_secs() + 7 * 24 * 3600);
    // A subscription stored before the client webhook index existed (no index entry; the
    // index itself is the adapter contract's) is listed once the operator's backfill
    // (`webhooks-admin index-webhooks`) has run.
    use webhooks::ports::SubscriptionStore;
    let record = RecordId::parse("0000-0002-7465-2162").unwrap();
    let callback =
        webhooks::callback::CallbackUrl::parse("https://a.example/hook", UrlPolicy::default())
            .unwrap();
    let subscription = webhooks::subscription::Subscription {
        record: record.clone(),
        callback: callback.clone(),
        client_id: "APP-1".parse().unwrap(),
        created_at: webhooks::clock::Timestamp::UNIX_EPOCH,
        health: Default::default(),
    };
    let (pk, sk) = (
        format!("SUB#{record}"),
        format!(
            "CALLBACK#{}",
            webhooks::oauth::sha256_hex(callback.as_str())
        ),
    );
    let mut item = serde_dynamo::to_item::<
        _,
        std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue>,
    >(&subscription)
    .unwrap();
    item.insert("pk".into(), aws_sdk_dynamodb::types::AttributeValue::S(pk));
    item.insert("sk".into(), aws_sdk_dynamodb::types::AttributeValue::S(sk));
    aws_sdk_dynamodb::Client::new(&env.config)
        .put_item()
        .table_name(&env.service_table)
        .set_item(Some(item))
        .send()
        .await
        .unwrap();
    assert!(
        store
            .client_webhooks(&"APP-1".parse().unwrap())
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.index_client_webhooks().await.unwrap(), 1);
    assert_eq!(
        store
            .client_webhooks(&"APP-1".parse().unwrap())
            .await
            .unwrap(),
        vec![subscription]
    );
}

/// GET on the API as app-log's owner: status and JSON body.
async fn get(api: &Registration, path: &str) -> (u16, serde_json::Value) {
    call(api, "GET", path).await
}

/// A request to the API as app-log's owner: status and JSON body.
async fn call(api: &Registration, method: &str, path: &str) -> (u16, serde_json::Value) {
    let response = api
        .handle(request(method, path, &[("x-access-token", "key-log")], ""))
        .await;
    let body = match response.body() {
        webhooks::lambda_http::Body::Text(t) => serde_json::from_str(t).unwrap(),
        _ => serde_json::Value::Null,
    };
    (response.status().as_u16(), body)
}

/// The Members-style routes show the same log.
async fn api_shows_the_log(api: &Registration, job: &DeliveryJob) {
    let base = "/application/app-log/webhook";
    let (status, all) = get(api, &format!("{base}/attempts")).await;
    assert_eq!(status, 200, "{all}");
    let statuses: Vec<_> = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, vec![204, 500, 500], "newest first");
    assert_eq!(all["data"][0]["outcome"], "acked");
    assert_eq!(all["data"][1]["outcome"], "http_status");
    assert_eq!(all["data"][1]["response"], "second failure");
    assert_eq!(all["data"][0]["messageId"], job.id.as_str());
    assert!(all["nextCursor"].is_null());

    // Failed ones, one per page, following the cursor.
    let (_, first) = get(api, &format!("{base}/attempts?status=failed&limit=1")).await;
    assert_eq!(first["data"].as_array().unwrap().len(), 1);
    assert_eq!(first["data"][0]["attempt"], 2);
    let cursor = first["nextCursor"].as_str().unwrap().to_owned();
    let (_, second) = get(
        api,
        &format!("{base}/attempts?status=failed&limit=1&cursor={cursor}"),
    )
    .await;
    assert_eq!(second["data"][0]["attempt"], 1);
    let (_, acked) = get(api, &format!("{base}/attempts?status=acked")).await;
    assert_eq!(acked["data"].as_array().unwrap().len(), 1);
    for bad in ["status=ok", "limit=0", "limit=1000", "cursor=!!"] {
        let (status, body) = get(api, &format!("{base}/attempts?{bad}")).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_request")),
            "{bad}"
        );
    }

    let (status, message) = get(api, &format!("{base}/messages/{}", job.id.as_str())).await;
    assert_eq!(status, 200, "{message}");
    assert_eq!(message["messageId"], job.id.as_str());
    assert_eq!(message["lastOutcome"], "acked");
    assert_eq!(message["person"]["id"], "0000-0002-7465-2162");
    let attempts: Vec<_> = message["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status"].as_u64().unwrap())
        .collect();
    assert_eq!(attempts, vec![500, 500, 204], "oldest first");
    let (status, body) = get(
        api,
        &format!("{base}/messages/msg_00000000000000000000000000000000"),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("message_not_found"))
    );
}

/// The event source mapping: receive, invoke, delete what did not fail; until the
/// receiver saw `requests` requests (at most 20 s).
async fn run_queue(
    delivery: &Delivery,
    queue: &MemoryQueue,
    receiver: &ScriptedReceiver,
    requests: usize,
) {
    run_queue_until(
        delivery,
        queue,
        || receiver.seen().len() >= requests,
        Duration::from_secs(20),
    )
    .await
}

/// [`run_queue`] until `done()` holds or `bound` passed (the test then asserts on what
/// it waited for).
async fn run_queue_until(
    delivery: &Delivery,
    queue: &MemoryQueue,
    done: impl Fn() -> bool,
    bound: Duration,
) {
    let deadline = Instant::now() + bound;
    while !done() && Instant::now() < deadline {
        let received = queue
            .receive(
                10,
                Duration::from_millis(200).min(deadline - Instant::now()),
            )
            .await;
        let event = ReceivedMessage::batch_event(&received, "arn:aws:sqs:local:0:delivery");
        if event.records.is_empty() {
            continue;
        }
        let response = delivery
            .handle(event, Instant::now() + Duration::from_secs(30))
            .await;
        queue.settle(&received, &response);
    }
}

fn delivery_over(ports: webhooks::ports::Ports) -> Delivery {
    Delivery::new(
        ports,
        webhooks::testing::local_callback_client(Duration::from_secs(5)),
        DeliverySettings {
            retry: RetryPolicy {
                base: Duration::from_millis(20),
                max_attempts: 5,
                jitter: 0.0,
            },
            ..DeliverySettings::default()
        },
    )
}

/// ORCID style: a client lists its webhooks (each with an opaque id) and reads the
/// attempts of one by that id; another client finds none of it.
#[tokio::test]
async fn a_client_reads_its_webhooks_attempts_by_id() {
    use webhooks::oauth::{IssuedToken, OAuthClient};
    use webhooks::ports::{ClientStore, SubscriptionStore, TokenStore};
    let receiver = ScriptedReceiver::start().await;
    let store = Arc::new(MemoryStore::default());
    let queue = Arc::new(MemoryQueue::new(Duration::from_secs(30), 5));
    let now = webhooks::clock::Clock::now(&webhooks::clock::SystemClock);
    let mut tokens = Vec::new();
    for (client, secret) in [("APP-1", "s1"), ("APP-2", "s2")] {
        store
            .put_client(&OAuthClient::new(&client.parse().unwrap(), secret, now))
            .await
            .unwrap();
        let token = IssuedToken::new(&client.parse().unwrap(), "/webhook", now, 3600);
        store.put_token(&token.stored).await.unwrap();
        tokens.push(token.access_token);
    }
    let record = RecordId::parse("0000-0002-7465-2162").unwrap();
    let subscription = webhooks::testing::subscription(
        &record,
        &format!("http://{}/orcid", receiver.addr),
        "APP-1",
    );
    store.register(&subscription).await.unwrap();
    let ports = webhooks::testing::memory_ports(store.clone(), queue.clone());
    let api = Registration {
        ports: ports.clone(),
        http: CallbackClient::new(&HttpSettings::default()),
        settings: ApiSettings::default(),
    };
    let delivery = delivery_over(ports);
    let job = DeliveryJob::for_subscription(
        &subscription,
        WindowId(4),
        webhooks::testing::at("2026-11-26T10:00:00.000Z"),
    );
    queue.send(serde_json::to_string(&job).unwrap());
    run_queue(&delivery, &queue, &receiver, 3).await;
    assert_eq!(
        receiver.seen().iter().map(|(_, s)| *s).collect::<Vec<_>>(),
        vec![500, 500, 204]
    );

    let call = |path: String, token: &str| {
        let auth = format!("Bearer {token}");
        let api = &api;
        async move {
            let response = api
                .handle(request("GET", &path, &[("authorization", &auth)], ""))
                .await;
            let body: serde_json::Value = match response.body() {
                webhooks::lambda_http::Body::Text(t) => serde_json::from_str(t).unwrap(),
                _ => serde_json::Value::Null,
            };
            (response.status().as_u16(), body)
        }
    };
    let (status, list) = call("/webhooks".into(), &tokens[0]).await;
    assert_eq!(status, 200, "{list}");
    let hooks = list["data"].as_array().unwrap();
    assert_eq!(hooks.len(), 1);
    assert_eq!(hooks[0]["record"], record.as_str());
    assert_eq!(hooks[0]["callback"], subscription.callback.as_str());
    assert_eq!(hooks[0]["status"], "enabled");
    let id = hooks[0]["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("wh_"));

    let (status, attempts) = call(format!("/webhooks/{id}/attempts"), &tokens[0]).await;
    assert_eq!(status, 200, "{attempts}");
    let statuses: Vec<_> = attempts["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, vec![204, 500, 500], "newest first");
    let (status, message) = call(
        format!("/webhooks/{id}/messages/{}", job.id.as_str()),
        &tokens[0],
    )
    .await;
    assert_eq!(status, 200, "{message}");
    assert_eq!(message["callback"], subscription.callback.as_str());
    assert_eq!(message["attempts"].as_array().unwrap().len(), 3);

    // Redelivery by webhook id: the same message id again.
    let auth = format!("Bearer {}", tokens[0]);
    let response = api
        .handle(request(
            "POST",
            &format!("/webhooks/{id}/messages/{}/redeliver", job.id.as_str()),
            &[("authorization", &auth)],
            "",
        ))
        .await;
    assert_eq!(response.status().as_u16(), 202);
    run_queue(&delivery, &queue, &receiver, 4).await;
    assert_eq!(receiver.seen()[3], (job.id.as_str().to_owned(), 204));
    // Everything is acked now: a recovery of this webhook finds nothing to send.
    let response = api
        .handle(request(
            "POST",
            &format!("/webhooks/{id}/recover"),
            &[("authorization", &auth)],
            r#"{"since":"2020-01-01T00:00:00Z"}"#,
        ))
        .await;
    assert_eq!(response.status().as_u16(), 202);
    match response.body() {
        webhooks::lambda_http::Body::Text(t) => {
            let body: serde_json::Value = serde_json::from_str(t).unwrap();
            assert_eq!(body["messages"], 0);
        }
        other => panic!("{other:?}"),
    }

    // APP-2 has no webhooks and cannot read APP-1's by its id.
    let (_, theirs) = call("/webhooks".into(), &tokens[1]).await;
    assert_eq!(theirs["data"].as_array().unwrap().len(), 0);
    for path in [
        format!("/webhooks/{id}/attempts"),
        format!("/webhooks/{id}/messages/{}", job.id.as_str()),
        "/webhooks/wh_nonsense/attempts".to_owned(),
    ] {
        let (status, body) = call(path.clone(), &tokens[1]).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (404, Some("webhook_not_found")),
            "{path}"
        );
    }
}

/// A receiver that is down (503) while told so, else answers 204; notes each request's
/// `webhook-id`, status and arrival.
#[derive(Clone, Default)]
struct OutageReceiver {
    down: Arc<std::sync::atomic::AtomicBool>,
    seen: Arc<Mutex<Vec<(String, u16, Instant)>>>,
}

impl OutageReceiver {
    async fn start(&self) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        async fn answer(State(r): State<OutageReceiver>, headers: http::HeaderMap) -> Response {
            let status = if r.down.load(std::sync::atomic::Ordering::SeqCst) {
                503
            } else {
                204
            };
            let id = headers
                .get("webhook-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            r.seen.lock().unwrap().push((id, status, Instant::now()));
            StatusCode::from_u16(status).unwrap().into_response()
        }
        let app = Router::new().fallback(answer).with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        (addr, server)
    }

    fn seen(&self) -> Vec<(String, u16, Instant)> {
        self.seen.lock().unwrap().clone()
    }

    fn count(&self, id: &str, status: u16) -> usize {
        self.seen()
            .iter()
            .filter(|(i, s, _)| i == id && *s == status)
            .count()
    }
}

/// After an outage that dead-lettered three messages, recover sends each of them exactly
/// once, paced by the application's requestIntervalMs, and nothing that was acked.
async fn recover_after_an_outage(log: Arc<dyn AttemptLog>) {
    let receiver = OutageReceiver::default();
    let (addr, server) = receiver.start().await;
    let store = Arc::new(MemoryStore::default());
    // Two attempts, then the dead-letter queue (the redrive policy).
    let queue = Arc::new(MemoryQueue::new(Duration::from_secs(30), 2));
    let mut app = Application::new(
        &"app-rec".parse().unwrap(),
        "key-rec",
        webhooks::clock::Timestamp::UNIX_EPOCH,
    );
    app.webhook.url = Some(format!("http://{addr}/hook").into());
    app.webhook.request_interval_ms = 100;
    store.put_application(&app).await.unwrap();
    let mut ports = webhooks::testing::memory_ports(store.clone(), queue.clone());
    ports.attempts = log.clone();
    let api = Registration {
        ports: ports.clone(),
        http: CallbackClient::new(&HttpSettings::default()),
        settings: ApiSettings::default(),
    };
    let mut delivery = delivery_over(ports);
    delivery.settings.retry.max_attempts = 2;
    let job = |n: u64| {
        let record = RecordId::parse("0000-0002-7465-2162").unwrap();
        let mut person = serde_json::Map::new();
        person.insert("id".into(), record.as_str().into());
        DeliveryJob::for_application(
            &"app-rec".parse().unwrap(),
            &record,
            person,
            WindowId(n),
            webhooks::testing::at("2026-11-26T10:00:00.000Z"),
        )
    };
    let count = || receiver.seen().len();
    let bound = Duration::from_secs(20);
    // Acked before the outage.
    let acked = job(1);
    queue.send(serde_json::to_string(&acked).unwrap());
    run_queue_until(&delivery, &queue, || count() >= 1, bound).await;
    // The outage starts in a later millisecond than the acked attempt (the log keeps
    // milliseconds): the first tick of the clock after it.
    let acked_at = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    let outage_start = loop {
        let now = time::OffsetDateTime::now_utc();
        if now.unix_timestamp_nanos() / 1_000_000 > acked_at {
            break now;
        }
        tokio::task::yield_now().await;
    };
    receiver
        .down
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let failed: Vec<DeliveryJob> = (2..5).map(job).collect();
    for j in &failed {
        queue.send(serde_json::to_string(j).unwrap());
    }
    // The acked one, then two attempts of each failed one.
    run_queue_until(&delivery, &queue, || count() > 2 * failed.len(), bound).await;
    // Once more: the queue's redrive moves each after its last attempt.
    run_queue_until(
        &delivery,
        &queue,
        || queue.dead_letters().len() == failed.len(),
        bound,
    )
    .await;
    assert_eq!(
        receiver.seen().len(),
        7,
        "two attempts each during the outage"
    );
    assert_eq!(queue.dead_letters().len(), 3, "all three dead-lettered");
    receiver
        .down
        .store(false, std::sync::atomic::Ordering::SeqCst);

    let since = webhooks::clock::Timestamp::from(outage_start).rfc3339();
    let recover = |body: String| {
        let api = &api;
        async move {
            let response = api
                .handle(request(
                    "POST",
                    "/application/app-rec/webhook/recover",
                    &[("x-access-token", "key-rec")],
                    &body,
                ))
                .await;
            let body: serde_json::Value = match response.body() {
                webhooks::lambda_http::Body::Text(t) => serde_json::from_str(t).unwrap(),
                _ => serde_json::Value::Null,
            };
            (response.status().as_u16(), body)
        }
    };
    let recover_sent = Instant::now();
    let (status, body) = recover(format!(r#"{{"since":"{since}"}}"#)).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["messages"], 3);
    assert_eq!(body["complete"], true);
    assert_eq!(body["requestIntervalMs"], 100);
    let recovery_id = body["recoveryId"].as_str().unwrap().to_owned();
    let progress = || {
        let api = &api;
        let path = format!("/application/app-rec/webhook/recover/{recovery_id}");
        async move {
            let response = api
                .handle(request("GET", &path, &[("x-access-token", "key-rec")], ""))
                .await;
            assert_eq!(response.status().as_u16(), 200);
            match response.body() {
                webhooks::lambda_http::Body::Text(t) => {
                    serde_json::from_str::<serde_json::Value>(t).unwrap()
                }
                _ => serde_json::Value::Null,
            }
        }
    };
    let before = progress().await;
    assert_eq!(
        (&before["queued"], &before["delivered"], &before["failing"]),
        (&3.into(), &0.into(), &0.into()),
        "{before}"
    );
    // Until every recovered message is handled: after that nothing more can arrive.
    run_queue_until(
        &delivery,
        &queue,
        || {
            let depth = queue.depth();
            depth.visible + depth.in_flight == 0
        },
        bound,
    )
    .await;
    for j in &failed {
        assert_eq!(
            receiver.count(j.id.as_str(), 204),
            1,
            "each failed message once"
        );
    }
    assert_eq!(
        receiver.count(acked.id.as_str(), 204),
        1,
        "the acked one not again"
    );
    assert_eq!(receiver.seen().len(), 10);
    let after = progress().await;
    assert_eq!(
        (&after["queued"], &after["delivered"], &after["failing"]),
        (&0.into(), &3.into(), &0.into()),
        "{after}"
    );
    // Paced: the i-th recovered message is hidden for i intervals (100 ms) after it was
    // queued, so it cannot arrive sooner after the recovery was asked for (unpaced, all three
    // would come at once). A slow poller only makes them later: a bound, not a timing.
    let after_recover: Vec<Duration> = receiver.seen()[7..]
        .iter()
        .map(|(_, _, at)| *at - recover_sent)
        .collect();
    for (i, waited) in after_recover.iter().enumerate() {
        assert!(
            *waited >= Duration::from_millis(100) * i as u32,
            "recovered message {i} arrived {waited:?} after the recovery: {after_recover:?}"
        );
    }
    // Now they are acked: a second recovery finds nothing.
    let (status, body) = recover(format!(r#"{{"since":"{since}"}}"#)).await;
    assert_eq!((status, body["messages"].as_u64()), (202, Some(0)));
    let (status, body) = recover(r#"{"since":"yesterday"}"#.into()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );
    server.abort();
}

#[tokio::test]
async fn in_memory_recover_after_an_outage() {
    recover_after_an_outage(Arc::new(MemoryStore::default())).await;
}

#[tokio::test]
async fn dynamodb_recover_after_an_outage() {
    let env = webhooks_tests::moto::MotoEnv::create(5).await;
    let store = webhooks::aws::dynamodb::DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&env.config),
        &env.service_table,
        std::sync::Arc::new(webhooks::clock::SystemClock),
    );
    recover_after_an_outage(Arc::new(store)).await;
}

/// When the log cannot be written the deliveries stand: an acknowledged message is not
/// delivered again, and nothing is lost.
#[tokio::test]
async fn a_log_that_cannot_be_written_costs_no_delivery() {
    let receiver = OutageReceiver::default();
    let (addr, server) = receiver.start().await;
    let store = Arc::new(MemoryStore::default());
    let queue = Arc::new(MemoryQueue::new(Duration::from_secs(30), 5));
    let mut app = Application::new(
        &"app-broken".parse().unwrap(),
        "key-b",
        webhooks::clock::Timestamp::UNIX_EPOCH,
    );
    app.webhook.url = Some(format!("http://{addr}/hook").into());
    store.put_application(&app).await.unwrap();
    let mut ports = webhooks::testing::memory_ports(store, queue.clone());
    // An attempt log that cannot be written (DynamoDB throttled for the whole batch).
    let broken = Faults::scripted(|_| Fault::Fail);
    ports.attempts = Arc::new(MemoryStore::default().with_faults(Arc::new(broken)));
    let delivery = delivery_over(ports);
    let record = RecordId::parse("0000-0002-7465-2162").unwrap();
    let mut person = serde_json::Map::new();
    person.insert("id".into(), record.as_str().into());
    let job = DeliveryJob::for_application(
        &"app-broken".parse().unwrap(),
        &record,
        person,
        WindowId(1),
        webhooks::testing::at("2026-11-26T10:00:00.000Z"),
    );
    queue.send(serde_json::to_string(&job).unwrap());
    let received = queue.receive(10, Duration::from_secs(2)).await;
    let event = ReceivedMessage::batch_event(&received, "arn:aws:sqs:local:0:delivery");
    let response = delivery
        .handle(event, Instant::now() + Duration::from_secs(30))
        .await;
    assert!(
        response.batch_item_failures.is_empty(),
        "the acknowledged message is done"
    );
    assert_eq!(receiver.seen().len(), 1);
    server.abort();
}
