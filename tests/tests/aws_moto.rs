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
use webhooks::http_client::{CallbackClient, HttpSettings};
use webhooks::lambda_http::{Body, Request};
use webhooks::oauth::{OAuthClient, sha256_hex};
use webhooks::ports::{ClientStore, PendingChanges, Person};
use webhooks::record::RecordId;
use webhooks::retry::RetryPolicy;
use webhooks::window::ManualWindows;
use webhooks_tests::Receiver;
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
        let http = CallbackClient::new(&HttpSettings {
            timeout: Duration::from_secs(2),
            url_policy: insecure,
            ..HttpSettings::default()
        });
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

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orcid_flow_over_dynamodb_streams_and_sqs() {
    let mut p = Pipeline::new(5).await;
    p.aws
        .store
        .put_client(&OAuthClient::new(
            "APP-1",
            "s3cret",
            time::OffsetDateTime::now_utc(),
        ))
        .await
        .unwrap();
    p.change(serde_json::json!({"firstName": "Josiah"})).await;
    let report = p.capture_and_flush().await;
    assert_eq!((report.records, report.jobs), (1, 0), "no subscribers yet");
    let receiver = Receiver::start().await;
    let callback = receiver.url("/0000-0002-7465-2162/updated");
    let path = format!("/{RECORD}/webhook/{}", encode(&callback));

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
    p.aws
        .store
        .put_client(&OAuthClient::new(
            "APP-1",
            "s3cret",
            time::OffsetDateTime::now_utc(),
        ))
        .await
        .unwrap();
    p.change(serde_json::json!({"v": 0})).await;
    p.capture_and_flush().await;
    let receiver = Receiver::start().await;
    receiver.script(&[500; 10]);
    let token = p.token().await;
    let path = format!("/{RECORD}/webhook/{}", encode(&receiver.url("/down")));
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
}

#[tokio::test]
async fn pending_pages_and_cursor_round_trip_on_dynamodb() {
    let env = MotoEnv::create(3).await;
    let aws = AwsServices::new(&env.config, env.settings());
    let window = webhooks::window::WindowId(42);
    for id in ["c", "a", "b", "a", "d", "e"] {
        aws.store
            .mark(window, &RecordId::parse(id).unwrap())
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = aws.store.page(window, after.as_deref(), 2).await.unwrap();
        seen.extend(page.items.iter().map(|r| r.as_str().to_owned()));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, ["a", "b", "c", "d", "e"]);
    let item = aws
        .store
        .raw_item("PENDING#42", "a")
        .await
        .unwrap()
        .unwrap();
    assert!(
        item.contains_key("expires_at"),
        "pending entries expire through TTL"
    );
    assert_eq!(aws.store.cursor().await.unwrap(), None);
    let cursor = webhooks::ports::FlushCursor {
        window,
        after: Some("b".into()),
    };
    aws.store.save_cursor(&cursor).await.unwrap();
    assert_eq!(aws.store.cursor().await.unwrap(), Some(cursor));
}
