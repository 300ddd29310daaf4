//! Figure 6: AWS API calls per delivered notification, counted by a recording proxy in
//! front of moto server while the real handlers, over the real AWS adapters
//! (`AwsServices::new`), run the pipeline; and the dollars per million notifications they
//! come to at published prices.
//!
//! The handlers' log output is captured with the functions' JSON formatter at the default
//! level (INFO), with the delivery function's metric lines, and priced as CloudWatch Logs
//! ingestion.
//!
//! Lambda's event source mappings are emulated as they call AWS: the DynamoDB stream is
//! read outside the count (stream reads by a Lambda trigger are free), the SQS source is
//! counted (ReceiveMessage up to 10 per call until 100 messages or the 1 s batching
//! window, then DeleteMessageBatch of what the handler did not report failed).

use crate::receiver::Receiver;
use crate::report::{Table, Verdict};
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, MessageSystemAttributeName};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::instrument::WithSubscriber;
use tracing_subscriber::filter::LevelFilter;
use webhooks::application::Application;
use webhooks::aws::AwsServices;
use webhooks::aws::dynamodb::DynamoRecords;
use webhooks::aws_lambda_events::event::dynamodb::Event;
use webhooks::aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use webhooks::callback::{CallbackUrl, UrlPolicy};
use webhooks::handlers::{ChangeCapture, Delivery, Flush};
use webhooks::http_client::{CallbackClient, HttpSettings};
use webhooks::oauth::OAuthClient;
use webhooks::ports::{ApplicationStore, ClientStore, SubscriptionStore};
use webhooks::record::RecordId;
use webhooks::subscription::Subscription;
use webhooks::window::ManualWindows;
use webhooks_tests::logs::LogCapture;
use webhooks_tests::moto::{MotoEnv, StreamPoller};

/// Prices, us-east-1, as published on the AWS pricing pages (see docs/benchmarks.md for
/// the date they were read).
mod price {
    /// DynamoDB on-demand, per write request unit.
    pub const WRU: f64 = 0.625e-6;
    /// DynamoDB on-demand, per read request unit.
    pub const RRU: f64 = 0.125e-6;
    /// SQS standard queue, per request (each 64 KiB chunk of payload is one request).
    pub const SQS: f64 = 0.40e-6;
    /// Lambda, per request.
    pub const LAMBDA_REQUEST: f64 = 0.20e-6;
    /// Lambda arm64, per GB-second.
    pub const LAMBDA_GB_S: f64 = 0.0000133334;
    /// EventBridge custom events published (PutEvents), per event (64 KiB chunk).
    pub const EB_PUT_EVENTS: f64 = 1.00e-6;
    /// EventBridge API destinations, per invocation.
    pub const EB_API_DESTINATION: f64 = 0.20e-6;
    /// CloudWatch Logs ingestion (standard log class), per byte ($0.50 per GB, GB = 2^30).
    pub const LOG_BYTE: f64 = 0.50 / 1_073_741_824.0;
}

/// A moto server started for the cost figure (stopped when dropped).
pub struct Moto(Option<std::process::Child>);

impl Moto {
    /// Uses `MOTO_ENDPOINT` if set; otherwise starts `.venv/bin/moto_server` (or
    /// `MOTO_SERVER`) on a free 127.0.0.1 port and sets `MOTO_ENDPOINT`. Must run before
    /// other threads start.
    pub fn start() -> Self {
        if std::env::var_os("MOTO_ENDPOINT").is_some() {
            return Self(None);
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let server = std::env::var("MOTO_SERVER").unwrap_or_else(|_| {
            concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/moto_server").to_owned()
        });
        let child = std::process::Command::new(&server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {server} ({e}): run scripts/test once to install it, or set MOTO_ENDPOINT")
            });
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "moto server did not listen within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // SAFETY: called from `main` before the runtime or any other thread exists.
        unsafe { std::env::set_var("MOTO_ENDPOINT", format!("http://127.0.0.1:{port}")) };
        Self(Some(child))
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn sdk_config(endpoint: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "testing", "testing", None, None, "moto",
        ))
        .load()
        .await
}

/// Calls and billing units per operation.
#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    calls: u64,
    /// DynamoDB read or write request units (0 for other services).
    units: f64,
    /// SQS and EventBridge billed requests (64 KiB chunks).
    billed: u64,
}

const WRITES: [&str; 4] = ["PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem"];

/// A recording proxy in front of moto: forwards every request and, while counting is on,
/// counts it by operation (`X-Amz-Target`) with its billing units.
#[derive(Clone)]
struct Proxy {
    upstream: String,
    client: reqwest::Client,
    counting: Arc<AtomicBool>,
    calls: Arc<Mutex<BTreeMap<String, Tally>>>,
}

impl Proxy {
    async fn start(upstream: String) -> (Self, String) {
        let proxy = Self {
            upstream,
            client: reqwest::Client::new(),
            counting: Arc::new(AtomicBool::new(false)),
            calls: Arc::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("addr");
        let app = Router::new().fallback(forward).with_state(proxy.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (proxy, format!("http://{addr}"))
    }

    fn count(&self, on: bool) {
        self.counting.store(on, Ordering::SeqCst);
    }

    fn take(&self) -> BTreeMap<String, Tally> {
        std::mem::take(&mut *self.calls.lock().expect("calls lock"))
    }

    fn record(&self, target: &str, request: &[u8], response: &[u8]) {
        if !self.counting.load(Ordering::SeqCst) {
            return;
        }
        let operation = target.rsplit('.').next().unwrap_or("unknown").to_owned();
        let dynamodb = target.starts_with("DynamoDB_");
        let consistent = String::from_utf8_lossy(request).contains("\"ConsistentRead\":true");
        let mut tally = Tally {
            calls: 1,
            ..Tally::default()
        };
        let key = if !dynamodb {
            // SQS and EventBridge bill each 64 KiB chunk of payload as one request.
            tally.billed = request.len().max(response.len()).div_ceil(64 * 1024).max(1) as u64;
            operation
        } else if operation == "BatchWriteItem" {
            // Billed per item, each rounded up to 1 KiB: a batch of small items costs as
            // many WRU as separate writes of them.
            tally.units = batch_write_units(request);
            operation
        } else if WRITES.contains(&operation.as_str()) {
            // One WRU per 1 KiB of item (the request JSON bounds the item from above).
            tally.units = request.len().div_ceil(1024).max(1) as f64;
            operation
        } else {
            // One RRU per 4 KiB read strongly consistent, half that eventually consistent
            // (the response JSON bounds the items read from above).
            let units = response.len().div_ceil(4096).max(1) as f64;
            tally.units = if consistent { units } else { units / 2.0 };
            format!(
                "{operation} ({})",
                if consistent { "consistent" } else { "eventual" }
            )
        };
        let mut all = self.calls.lock().expect("calls lock");
        let entry = all.entry(key).or_default();
        entry.calls += tally.calls;
        entry.units += tally.units;
        entry.billed += tally.billed;
    }
}

/// The write units of a `BatchWriteItem` request: one per started KiB of each item (its
/// JSON bounds its size from above), at least one per item.
fn batch_write_units(request: &[u8]) -> f64 {
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(request) else {
        return request.len().div_ceil(1024).max(1) as f64;
    };
    body["RequestItems"]
        .as_object()
        .into_iter()
        .flat_map(|tables| tables.values())
        .filter_map(|writes| writes.as_array())
        .flatten()
        .map(|write| {
            let item = if write["PutRequest"].is_object() {
                &write["PutRequest"]["Item"]
            } else {
                &write["DeleteRequest"]["Key"]
            };
            item.to_string().len().div_ceil(1024).max(1) as f64
        })
        .sum()
}

async fn forward(State(proxy): State<Proxy>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body: Bytes = axum::body::to_bytes(body, 16 << 20)
        .await
        .unwrap_or_default();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let target = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let mut upstream = proxy
        .client
        .request(parts.method, format!("{}{path}", proxy.upstream))
        .body(body.clone());
    for (name, value) in &parts.headers {
        if name != http::header::HOST && name != http::header::CONTENT_LENGTH {
            upstream = upstream.header(name, value);
        }
    }
    let Ok(answer) = upstream.send().await else {
        return http::StatusCode::BAD_GATEWAY.into_response();
    };
    let status = answer.status();
    let headers = answer.headers().clone();
    let bytes = answer.bytes().await.unwrap_or_default();
    proxy.record(&target, &body, &bytes);
    let mut response = (status, bytes).into_response();
    for (name, value) in &headers {
        if name != http::header::CONTENT_LENGTH && name != http::header::TRANSFER_ENCODING {
            response.headers_mut().insert(name, value.clone());
        }
    }
    response
}

/// Lambda work of one function: invocations and summed billed duration (1 ms rounding).
#[derive(Debug, Clone, Copy, Default)]
struct LambdaUse {
    invocations: u64,
    billed_ms: u64,
    memory_mb: u64,
}

impl LambdaUse {
    fn with_memory(memory_mb: u64) -> Self {
        Self {
            memory_mb,
            ..Self::default()
        }
    }

    fn add(&mut self, took: Duration) {
        self.invocations += 1;
        self.billed_ms += (took.as_micros() as u64).div_ceil(1000).max(1);
    }

    fn dollars(&self) -> f64 {
        self.invocations as f64 * price::LAMBDA_REQUEST
            + self.billed_ms as f64 / 1000.0 * self.memory_mb as f64 / 1024.0 * price::LAMBDA_GB_S
    }
}

/// One scenario's counts.
struct Run {
    name: String,
    delivered: usize,
    calls: BTreeMap<String, Tally>,
    lambdas: [(&'static str, LambdaUse); 3],
    /// Bytes the three functions logged (CloudWatch Logs ingestion).
    log_bytes: usize,
}

/// The shape of one scenario.
#[derive(Debug, Clone, Copy)]
struct Scenario {
    name: &'static str,
    records: usize,
    subscriptions_per_record: usize,
    members: bool,
    /// Messages per invocation the event sources hand over (100 busy, 1 sparse).
    batch: usize,
}

async fn scenario(s: Scenario, receiver: &Receiver, logs: &LogCapture) -> Run {
    let endpoint = std::env::var("MOTO_ENDPOINT").expect("MOTO_ENDPOINT");
    let direct = sdk_config(&endpoint).await;
    let (proxy, proxied) = Proxy::start(endpoint).await;
    let resources = MotoEnv::create_on(direct.clone(), 5).await;
    let settings = resources.settings();
    // The service's adapters exactly as the functions build them, over the counting proxy.
    let aws = AwsServices::new(&sdk_config(&proxied).await, settings.clone());
    let sqs = aws_sdk_sqs::Client::new(&sdk_config(&proxied).await);
    // The registry's own writes to its records table are not the service's cost.
    let registry = DynamoRecords::new(
        aws_sdk_dynamodb::Client::new(&direct),
        &settings.records_table,
    );
    let windows = Arc::new(ManualWindows::default());
    let insecure = UrlPolicy {
        allow_insecure: true,
    };
    let http = CallbackClient::new(&HttpSettings {
        timeout: Duration::from_secs(5),
        url_policy: insecure,
        ..HttpSettings::default()
    });
    let change_capture = ChangeCapture {
        pending: aws.store.clone(),
        windows: windows.clone(),
    };
    // The flush's metric line is counted below (the bench's stdout is its table).
    let flush = Flush {
        ports: aws.ports(),
        windows: windows.clone(),
        settings: webhooks::handlers::FlushSettings {
            metrics: false,
            ..settings.flush()
        },
    };
    // The metric lines the function prints go to the log capture (the bench's stdout is
    // its table).
    let delivery = Delivery::new(aws.ports(), http, settings.delivery()).with_metric_lines({
        let logs = logs.clone();
        Arc::new(move |line: &str| logs.write_line(line))
    });

    // Set-up, not counted: the subscriber side and the persons.
    aws.store
        .put_client(&OAuthClient::new(
            &"APP-1".parse().unwrap(),
            "s3cret",
            webhooks::clock::Clock::now(&webhooks::clock::SystemClock),
        ))
        .await
        .expect("put client");
    if s.members {
        let mut app = Application::new(&"app-1".parse().unwrap(), "key-1", 0);
        app.webhook.url = Some(receiver.url("/members").into());
        app.webhook.signing_key = Some("helloWorld".into());
        aws.store.put_application(&app).await.expect("put app");
    }
    for r in 0..s.records {
        let record = RecordId::parse(&format!("p-{r:05}")).expect("record id");
        for k in 0..s.subscriptions_per_record {
            aws.store
                .register(&Subscription {
                    record: record.clone(),
                    callback: CallbackUrl::parse(
                        &receiver.url(&format!("/{}/{k}", record.as_str())),
                        insecure,
                    )
                    .expect("callback"),
                    client_id: "APP-1".parse().unwrap(),
                    created_at: 0,
                    health: Default::default(),
                })
                .await
                .expect("register");
        }
        let person = serde_json::json!({
            "firstName": format!("P{r}"), "lastName": "Carberry", "email": "p@example.org",
            "consents": if s.members { serde_json::json!({"app-1": ["members.read_name"]}) } else { serde_json::json!({}) },
        });
        registry
            .put_person(&record, person.as_object().expect("object"))
            .await
            .expect("put person");
    }
    let expected = s.records * (s.subscriptions_per_record + usize::from(s.members));
    proxy.count(true);
    logs.clear();
    let hits_before = receiver.hits();

    let mut capture_use = LambdaUse::with_memory(256);
    let mut flush_use = LambdaUse::with_memory(512);
    let mut delivery_use = LambdaUse::with_memory(512);

    // Change capture: the stream's records in event-source batches.
    proxy.count(false);
    // Not counted: a Lambda trigger's reads of its stream are free.
    let mut stream = StreamPoller::start(&resources).await;
    let mut changes = Vec::new();
    for _ in 0..50 {
        let page = stream.poll().await.records;
        if page.is_empty() {
            break;
        }
        changes.extend(page);
    }
    proxy.count(true);
    assert_eq!(
        changes.len(),
        s.records,
        "one stream record per person written"
    );
    for chunk in changes.chunks(s.batch) {
        let mut event = Event::default();
        event.records = chunk.to_vec();
        let t = Instant::now();
        let response = change_capture.handle(event).await;
        capture_use.add(t.elapsed());
        assert!(response.batch_item_failures.is_empty());
    }
    windows.close_current();
    let t = Instant::now();
    let report = flush.run(None).await.expect("flush");
    flush_use.add(t.elapsed());
    // The line the function prints for this run.
    let now_ms = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
    logs.write_line(&flush.metrics_of(&report).emf(now_ms).to_string());
    assert_eq!(report.jobs as usize, expected, "{report:?}");

    // Delivery through an emulated SQS event source, bounded in time.
    let deadline = Instant::now() + Duration::from_secs(90);
    while receiver.hits() - hits_before < expected && Instant::now() < deadline {
        let mut batch: Vec<aws_sdk_sqs::types::Message> = Vec::new();
        let window = Instant::now() + Duration::from_secs(1);
        while batch.len() < s.batch && Instant::now() < window {
            let out = sqs
                .receive_message()
                .queue_url(&resources.queue_url)
                .max_number_of_messages((s.batch - batch.len()).min(10) as i32)
                .wait_time_seconds(1)
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .send()
                .await
                .expect("receive");
            let got = out.messages.unwrap_or_default();
            if got.is_empty() && !batch.is_empty() {
                break;
            }
            batch.extend(got);
        }
        if batch.is_empty() {
            continue;
        }
        let mut event = SqsEvent::default();
        let mut receipts = HashMap::new();
        for m in batch {
            let mut lambda = SqsMessage::default();
            lambda.message_id = m.message_id.clone();
            lambda.receipt_handle = m.receipt_handle.clone();
            lambda.body = m.body;
            lambda.attributes = m
                .attributes
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k.as_str().to_owned(), v))
                .collect();
            receipts.insert(
                m.message_id.unwrap_or_default(),
                m.receipt_handle.unwrap_or_default(),
            );
            event.records.push(lambda);
        }
        let t = Instant::now();
        let response = delivery
            .handle(event, tokio::time::Instant::now() + Duration::from_secs(30))
            .await;
        delivery_use.add(t.elapsed());
        let done: Vec<(String, String)> = receipts
            .into_iter()
            .filter(|(id, _)| {
                !response
                    .batch_item_failures
                    .iter()
                    .any(|f| &f.item_identifier == id)
            })
            .collect();
        for chunk in done.chunks(10) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, (_, receipt))| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(receipt)
                        .build()
                        .expect("entry")
                })
                .collect();
            sqs.delete_message_batch()
                .queue_url(&resources.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .expect("delete batch");
        }
    }
    let delivered = receiver.hits() - hits_before;
    assert_eq!(delivered, expected, "every notification delivered in time");
    let log_bytes = logs.bytes();
    Run {
        log_bytes,
        name: s.name.to_owned(),
        delivered,
        calls: proxy.take(),
        lambdas: [
            ("change-capture", capture_use),
            ("flush", flush_use),
            ("delivery", delivery_use),
        ],
    }
}

/// Dollars per notification of a run: (DynamoDB, SQS, Lambda, CloudWatch Logs).
fn dollars(run: &Run) -> (f64, f64, f64, f64) {
    let n = run.delivered as f64;
    let mut dynamo = 0.0;
    let mut sqs = 0.0;
    for (op, t) in &run.calls {
        if t.billed > 0 {
            sqs += t.billed as f64 * price::SQS;
        } else if WRITES.iter().any(|w| op.starts_with(w)) {
            dynamo += t.units * price::WRU;
        } else {
            dynamo += t.units * price::RRU;
        }
    }
    let lambda: f64 = run.lambdas.iter().map(|(_, u)| u.dollars()).sum();
    let logs = run.log_bytes as f64 * price::LOG_BYTE;
    (dynamo / n, sqs / n, lambda / n, logs / n)
}

/// Runs the scenarios and adds the rows.
pub async fn cost(table: &mut Table) {
    // A receiver that takes 100 ms, a typical webhook endpoint: it sets the delivery
    // function's billed duration.
    let receiver = Receiver::start(Duration::from_millis(100), 2);
    let logs = LogCapture::default();
    let scenarios = [
        Scenario {
            name: "ORCID-style, 200 records x 1 subscription, busy (batches of 100)",
            records: 200,
            subscriptions_per_record: 1,
            members: false,
            batch: 100,
        },
        Scenario {
            name: "ORCID-style, 20 records x 10 subscriptions, busy",
            records: 20,
            subscriptions_per_record: 10,
            members: false,
            batch: 100,
        },
        Scenario {
            name: "Members-style, 200 persons x 1 application, busy",
            records: 200,
            subscriptions_per_record: 0,
            members: true,
            batch: 100,
        },
        Scenario {
            name: "ORCID-style, 5 records x 1 subscription, sparse (1 message per invocation)",
            records: 5,
            subscriptions_per_record: 1,
            members: false,
            batch: 1,
        },
    ];
    let eventbridge = (price::EB_PUT_EVENTS + price::EB_API_DESTINATION) * 1e6;
    for s in scenarios {
        // The functions' log lines, as they format them at the default level.
        let run = tokio::time::timeout(
            Duration::from_secs(180),
            scenario(s, &receiver, &logs).with_subscriber(logs.lambda_json(LevelFilter::INFO)),
        )
        .await
        .expect("a cost scenario finishes within 180 s");
        let n = run.delivered as f64;
        let calls = run
            .calls
            .iter()
            .map(|(op, t)| {
                let units = if t.billed > 0 {
                    String::new()
                } else if WRITES.iter().any(|w| op.starts_with(w)) {
                    format!(" = {:.3} WRU", t.units / n)
                } else {
                    format!(" = {:.3} RRU", t.units / n)
                };
                format!("{op} {:.3}{units}", t.calls as f64 / n)
            })
            .collect::<Vec<_>>()
            .join("; ");
        let lambdas = run
            .lambdas
            .iter()
            .map(|(name, u)| {
                format!(
                    "{name} {:.3} inv, {:.1} ms",
                    u.invocations as f64 / n,
                    u.billed_ms as f64 / n
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        let (dynamo, sqs, lambda, logs) = dollars(&run);
        let total = (dynamo + sqs + lambda + logs) * 1e6;
        table.row(
            "6 cost",
            format!("{} ({} delivered)", run.name, run.delivered),
            format!(
                "**${total:.3} per million** (DynamoDB ${:.3}, SQS ${:.3}, Lambda ${:.3}, CloudWatch Logs ${:.3}). Calls per notification: {calls}. Lambda per notification: {lambdas}. Logged per notification: {:.1} bytes",
                dynamo * 1e6,
                sqs * 1e6,
                lambda * 1e6,
                logs * 1e6,
                run.log_bytes as f64 / n
            ),
            &format!("< $1.00 and < EventBridge ${eventbridge:.2}"),
            Verdict::judge(total < 1.0 && total < eventbridge, ""),
        );
    }
    table.note(format!(
        "cost: EventBridge for the same job = PutEvents ${:.2}/M + API destination invocations ${:.2}/M = ${eventbridge:.2} per million; prices us-east-1 as of 2026-11-25 (see docs/benchmarks.md)",
        price::EB_PUT_EVENTS * 1e6,
        price::EB_API_DESTINATION * 1e6
    ));
}
