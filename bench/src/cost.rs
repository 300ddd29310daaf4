//! Figure 6: AWS API calls per delivered notification, counted by a recording proxy in
//! front of moto server while the real handlers, over the real AWS adapters
//! (`AwsServices::new`), run the pipeline; and the dollars per million notifications they
//! come to at published prices, beside EventBridge API destinations' for the same job.
//!
//! The figure is the same from run to run and machine to machine: the handlers run on a
//! paused clock ([`crate::simulated`]) where each AWS call takes a stated latency and the
//! receiver a stated answer time, so an invocation's billed duration is its simulated
//! waiting plus the CPU it measurably used (scaled to the function's share of a vCPU), not
//! what moto took; and the event sources hand over batches of exactly the configured size.
//!
//! The handlers' log output is captured with the functions' JSON formatter at the default
//! level (INFO), with the delivery function's metric lines, and priced as CloudWatch Logs
//! ingestion.
//!
//! A scenario is charged what its notifications add. What a scheduled flush run pays
//! every five minutes whether or not anything changed (its invocation, lease, cursor, the
//! `Query` of every shard of each window it covers, the applications query, its log lines
//! and duration) is measured alone, on a set-up of its own with nothing to flush
//! ([`idle_flushes`]), and taken off once per flush run the scenario made ([`Run::net`]);
//! the gross figure, every flush run charged whole, is printed beside.
//!
//! Lambda's event source mappings are emulated as they call AWS: the DynamoDB stream is
//! read outside the count (stream reads by a Lambda trigger are free), the SQS source is
//! counted (ReceiveMessage up to 10 per call until the batch is full, then
//! DeleteMessageBatch of what the handler did not report failed).

use crate::report::{Table, Verdict};
use crate::simulated::{self, LatencyModel, SimulatedReceiver, thread_cpu};
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, MessageSystemAttributeName};
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
use webhooks::handlers::{ChangeCapture, Delivery, Flush, FlushReport};
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

/// Calls and billing units per operation.
#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    calls: u64,
    /// DynamoDB read or write request units (0 for other services).
    units: f64,
    /// SQS and EventBridge billed requests (64 KiB chunks).
    billed: u64,
}

impl Tally {
    /// This tally less `times` x `fixed`, each figure floored at zero.
    fn less(self, fixed: Tally, times: u32) -> Tally {
        Tally {
            calls: self.calls.saturating_sub(fixed.calls * u64::from(times)),
            units: (self.units - fixed.units * f64::from(times)).max(0.0),
            billed: self.billed.saturating_sub(fixed.billed * u64::from(times)),
        }
    }

    fn is_zero(&self) -> bool {
        self.calls == 0 && self.units == 0.0 && self.billed == 0
    }
}

const WRITES: [&str; 4] = ["PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem"];

/// The calls the service made, counted by operation (`X-Amz-Target`) with their billing
/// units while counting is on, as the proxy in front of moto ([`crate::proxy`]) shows them.
#[derive(Clone, Default)]
struct Calls {
    counting: Arc<AtomicBool>,
    calls: Arc<Mutex<BTreeMap<String, Tally>>>,
}

impl Calls {
    /// Starts a proxy to `upstream` that counts into these calls; returns its URL.
    async fn proxy(&self, upstream: String) -> String {
        let calls = self.clone();
        crate::proxy::start(
            upstream,
            Arc::new(move |target, request, response| calls.record(target, request, response)),
        )
        .await
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
            tally.units = single_write_units(&operation, request);
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

/// The write units of a `BatchWriteItem` request: one per started KiB of each item put
/// ([`item_size`]), one per item deleted.
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
        .map(|write| write_units(&write["PutRequest"]["Item"]))
        .sum()
}

/// The write units of a `PutItem` request (its item's size), or of another write (its
/// request's JSON, which bounds what it writes from above).
fn single_write_units(operation: &str, request: &[u8]) -> f64 {
    let body = serde_json::from_slice::<serde_json::Value>(request).unwrap_or_default();
    if operation == "PutItem" && body["Item"].is_object() {
        write_units(&body["Item"])
    } else {
        request.len().div_ceil(1024).max(1) as f64
    }
}

/// One write unit per started KiB of the item, at least one.
fn write_units(item: &serde_json::Value) -> f64 {
    item_size(item).div_ceil(1024).max(1) as f64
}

/// An item's size as DynamoDB bills it (developer guide, "Item sizes and formats"): each
/// attribute's name and value, a string by its UTF-8 bytes, a number by its significant
/// digits, a binary by its bytes, a list or map 3 bytes plus 1 per element. `item` is the
/// request's DynamoDB JSON (binaries in base64).
fn item_size(item: &serde_json::Value) -> usize {
    item.as_object()
        .into_iter()
        .flatten()
        .map(|(name, value)| name.len() + value_size(value))
        .sum()
}

fn value_size(value: &serde_json::Value) -> usize {
    let Some((kind, v)) = value.as_object().and_then(|o| o.iter().next()) else {
        return 0;
    };
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("").to_owned();
    let each = |v: &serde_json::Value, size: &dyn Fn(&serde_json::Value) -> usize| -> usize {
        v.as_array().into_iter().flatten().map(size).sum()
    };
    match kind.as_str() {
        "S" => text(v).len(),
        "N" => number_size(&text(v)),
        "B" => binary_size(&text(v)),
        "SS" => each(v, &|e| text(e).len()),
        "NS" => each(v, &|e| number_size(&text(e))),
        "BS" => each(v, &|e| binary_size(&text(e))),
        "L" => 3 + each(v, &|e| value_size(e) + 1),
        "M" => 3 + item_size(v) + v.as_object().map_or(0, |m| m.len()),
        _ => 1,
    }
}

/// A number's size: 1 byte plus one per two significant digits.
fn number_size(number: &str) -> usize {
    let digits: String = number.chars().filter(char::is_ascii_digit).collect();
    let significant = digits.trim_start_matches('0').trim_end_matches('0').len();
    significant.div_ceil(2) + 1
}

/// The bytes of a base64 text.
fn binary_size(base64: &str) -> usize {
    let padding = base64.bytes().rev().take_while(|b| *b == b'=').count();
    (base64.len() / 4 * 3).saturating_sub(padding)
}

/// The memory at which a Lambda function has one full vCPU (Lambda allocates CPU in
/// proportion to memory; docs.aws.amazon.com/lambda/latest/dg/configuration-memory.html).
const FULL_VCPU_MB: f64 = 1769.0;

/// Lambda work of one function: invocations, their modelled waits and measured CPU, and
/// the summed billed duration (1 ms rounding).
#[derive(Debug, Clone, Copy, Default)]
struct LambdaUse {
    invocations: u64,
    billed_ms: u64,
    /// Simulated time spent waiting on AWS calls and the receiver.
    wait: Duration,
    /// CPU time on this machine's core.
    cpu: Duration,
    memory_mb: u64,
}

impl LambdaUse {
    fn with_memory(memory_mb: u64) -> Self {
        Self {
            memory_mb,
            ..Self::default()
        }
    }

    /// Adds an invocation. Below one vCPU the function's CPU work takes proportionally
    /// longer; it is counted as not overlapping the waits (an upper bound).
    fn add(&mut self, took: Took) {
        let slowdown = (FULL_VCPU_MB / self.memory_mb as f64).max(1.0);
        let billed = took.wait + took.cpu.mul_f64(slowdown);
        self.invocations += 1;
        self.wait += took.wait;
        self.cpu += took.cpu;
        self.billed_ms += (billed.as_micros() as u64).div_ceil(1000).max(1);
    }

    /// This use less `times` x `fixed` (invocations, billed duration, waits and CPU),
    /// each floored at zero; the memory stays this one's.
    fn less(self, fixed: LambdaUse, times: u32) -> LambdaUse {
        LambdaUse {
            invocations: self
                .invocations
                .saturating_sub(fixed.invocations * u64::from(times)),
            billed_ms: self
                .billed_ms
                .saturating_sub(fixed.billed_ms * u64::from(times)),
            wait: self.wait.saturating_sub(fixed.wait * times),
            cpu: self.cpu.saturating_sub(fixed.cpu * times),
            memory_mb: self.memory_mb,
        }
    }

    fn dollars(&self) -> f64 {
        self.invocations as f64 * price::LAMBDA_REQUEST
            + self.billed_ms as f64 / 1000.0 * self.memory_mb as f64 / 1024.0 * price::LAMBDA_GB_S
    }
}

/// What one invocation took: simulated waiting and this thread's CPU time.
#[derive(Debug, Clone, Copy)]
struct Took {
    wait: Duration,
    cpu: Duration,
}

/// Times an invocation in simulated time and thread CPU time.
async fn timed<T>(invocation: impl std::future::Future<Output = T>) -> (T, Took) {
    let (wall, cpu) = (tokio::time::Instant::now(), thread_cpu());
    let out = invocation.await;
    let took = Took {
        wait: wall.elapsed(),
        cpu: thread_cpu().saturating_sub(cpu),
    };
    (out, took)
}

/// Runs of the flush schedule in a 30-day month (one every five minutes).
const SCHEDULED_RUNS_A_MONTH: u64 = 30 * 24 * 12;

/// The three functions, in the order their work is kept.
const FUNCTIONS: [&str; 3] = ["change-capture", "flush", "delivery"];

/// What the service used over a stretch of a simulation: the AWS calls counted through
/// the proxy, each function's Lambda work (in [`FUNCTIONS`]' order), and the bytes the
/// functions logged (CloudWatch Logs ingestion).
#[derive(Debug, Clone, Default)]
struct Usage {
    calls: BTreeMap<String, Tally>,
    lambdas: [LambdaUse; 3],
    log_bytes: usize,
}

impl Usage {
    /// This usage less `times` x `fixed`: per call kind (calls, request units, billed
    /// requests), per function (invocations, billed duration, waits, CPU) and for log
    /// bytes, each floored at zero. A call kind with nothing left is dropped; `fixed`'s
    /// kinds this usage does not have subtract nothing.
    fn less(&self, fixed: &Usage, times: u32) -> Usage {
        let calls = self
            .calls
            .iter()
            .map(|(kind, tally)| {
                let fixed = fixed.calls.get(kind).copied().unwrap_or_default();
                (kind.clone(), tally.less(fixed, times))
            })
            .filter(|(_, tally)| !tally.is_zero())
            .collect();
        let mut lambdas = self.lambdas;
        for (used, fixed) in lambdas.iter_mut().zip(fixed.lambdas) {
            *used = used.less(fixed, times);
        }
        Usage {
            calls,
            lambdas,
            log_bytes: self
                .log_bytes
                .saturating_sub(fixed.log_bytes * times as usize),
        }
    }

    /// Calls of every kind.
    fn call_count(&self) -> u64 {
        self.calls.values().map(|t| t.calls).sum()
    }
}

/// One scenario's counts.
struct Run {
    name: String,
    delivered: usize,
    /// Everything the scenario used, every flush run charged whole.
    gross: Usage,
    /// The windows each of its flush runs covered (one entry per run).
    flush_windows: Vec<u64>,
    /// The delivery event source's batch sizes, in order.
    delivery_batches: Vec<usize>,
}

/// A scheduled flush run with nothing to flush, measured on a set-up of its own: what
/// every run of the schedule pays whether or not anything changed.
#[derive(Debug, Clone)]
struct IdleFlush {
    /// The windows the run covered.
    windows: u64,
    usage: Usage,
}

impl Run {
    /// What the scenario's notifications added: its usage less, for each of its flush
    /// runs, the fixed part `idle` (measured over as many windows as the scenario's runs
    /// covered). An error when a run covered another number of windows than `idle`.
    fn net(&self, idle: &IdleFlush) -> Result<Usage, String> {
        if let Some(w) = self.flush_windows.iter().find(|w| **w != idle.windows) {
            return Err(format!(
                "{}: a flush run covered {w} windows, the idle flush {}: measure the idle flush over the same windows",
                self.name, idle.windows
            ));
        }
        let runs = u32::try_from(self.flush_windows.len())
            .map_err(|_| format!("{}: too many flush runs", self.name))?;
        Ok(self.gross.less(&idle.usage, runs))
    }
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
    /// The most it may cost per million notifications (`None`: a reference row).
    target: Option<f64>,
}

/// Where a scenario's AWS calls go: moto directly (set-up, the stream's reads) and the
/// counting proxy in front of it (what the service pays for), both reached from the
/// simulation through the real-time runtime `io`.
struct Upstreams {
    moto: String,
    calls: Calls,
    proxied: String,
    io: tokio::runtime::Handle,
}

/// The service's side of a scenario: its handlers over the AWS adapters (through the
/// proxy), and what set-up needs.
struct Service {
    aws: AwsServices,
    sqs: aws_sdk_sqs::Client,
    registry: DynamoRecords,
    resources: MotoEnv,
    windows: Arc<ManualWindows>,
}

async fn service(up: &Upstreams) -> Service {
    let direct = simulated::sdk_config(&up.moto, up.io.clone()).await;
    let resources = MotoEnv::create_on(direct.clone(), 5).await;
    let settings = resources.settings();
    let proxied = simulated::sdk_config(&up.proxied, up.io.clone()).await;
    // The registry's own writes to its records table are not the service's cost.
    let registry = DynamoRecords::new(
        aws_sdk_dynamodb::Client::new(&direct),
        &settings.records_table,
    );
    Service {
        // The service's adapters exactly as the functions build them, over the proxy.
        aws: AwsServices::new(&proxied, settings),
        sqs: aws_sdk_sqs::Client::new(&proxied),
        registry,
        resources,
        windows: Arc::new(ManualWindows::default()),
    }
}

/// Set-up, not counted: the subscriber side and the persons.
async fn populate(s: Scenario, svc: &Service, receiver: &SimulatedReceiver) {
    let insecure = UrlPolicy {
        allow_insecure: true,
    };
    svc.aws
        .store
        .put_client(&OAuthClient::new(
            &"APP-1".parse().unwrap(),
            "s3cret",
            webhooks::clock::Clock::now(&webhooks::clock::SystemClock),
        ))
        .await
        .expect("put client");
    if s.members {
        let mut app = Application::new(
            &"app-1".parse().unwrap(),
            "key-1",
            webhooks::clock::Timestamp::UNIX_EPOCH,
        );
        app.webhook.url = Some(receiver.url("/members").into());
        app.webhook.signing_key = Some("helloWorld".into());
        svc.aws.store.put_application(&app).await.expect("put app");
    }
    for r in 0..s.records {
        let record = RecordId::parse(&format!("p-{r:05}")).expect("record id");
        for k in 0..s.subscriptions_per_record {
            let callback = receiver.url(&format!("/{}/{k}", record.as_str()));
            svc.aws
                .store
                .register(&Subscription {
                    record: record.clone(),
                    callback: CallbackUrl::parse(&callback, insecure).expect("callback"),
                    client_id: "APP-1".parse().unwrap(),
                    created_at: webhooks::clock::Timestamp::UNIX_EPOCH,
                    health: Default::default(),
                })
                .await
                .expect("register");
        }
        let person = serde_json::json!({
            "firstName": format!("P{r}"), "lastName": "Carberry", "email": "p@example.org",
            "consents": if s.members { serde_json::json!({"app-1": ["members.read_name"]}) } else { serde_json::json!({}) },
        });
        svc.registry
            .put_person(&record, person.as_object().expect("object"))
            .await
            .expect("put person");
    }
}

/// Change capture on the stream's records, in event-source batches of exactly `s.batch`.
async fn capture_changes(s: Scenario, svc: &Service, up: &Upstreams) -> LambdaUse {
    let change_capture = ChangeCapture {
        pending: svc.aws.store.clone(),
        windows: svc.windows.clone(),
    };
    // Not counted: a Lambda trigger's reads of its stream are free.
    up.calls.count(false);
    let mut stream = StreamPoller::start(&svc.resources).await;
    let mut changes = Vec::new();
    for _ in 0..50 {
        let page = stream.poll().await.records;
        if page.is_empty() {
            break;
        }
        changes.extend(page);
    }
    up.calls.count(true);
    assert_eq!(
        changes.len(),
        s.records,
        "one stream record per person written"
    );
    let mut used = LambdaUse::with_memory(256);
    for chunk in changes.chunks(s.batch) {
        let mut event = Event::default();
        event.records = chunk.to_vec();
        let (response, took) = timed(change_capture.handle(event)).await;
        used.add(took);
        assert!(response.batch_item_failures.is_empty());
    }
    used
}

/// The delivery handler as the functions build it (the flush for its first attempts, and
/// the delivery function), with a client that reaches the receiver on 127.0.0.1; the
/// metric lines it prints go to the log capture.
fn delivery_handler(svc: &Service, logs: &LogCapture) -> Delivery {
    let http = webhooks::testing::local_callback_client(Duration::from_secs(5));
    Delivery::new(svc.aws.ports(), http, svc.resources.settings().delivery()).with_metric_lines({
        let logs = logs.clone();
        Arc::new(move |line: &str| logs.write_line(line))
    })
}

/// One scheduled flush run after closing the current window, as the schedule starts it;
/// its metric line goes to the log capture.
async fn flush_window(svc: &Service, logs: &LogCapture) -> (LambdaUse, FlushReport) {
    // The flush's metric line is counted below (the bench's stdout is its table).
    let flush = Flush {
        ports: svc.aws.ports(),
        windows: svc.windows.clone(),
        settings: webhooks::handlers::FlushSettings {
            metrics: false,
            ..svc.resources.settings().flush()
        },
        delivery: Some(delivery_handler(svc, logs)),
    };
    svc.windows.close_current();
    let mut used = LambdaUse::with_memory(512);
    let (report, took) = timed(flush.run(None)).await;
    let report = report.expect("flush");
    used.add(took);
    // The line the function prints for this run.
    let now_ms = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
    logs.write_line(&flush.metrics_of(&report).emf(now_ms).to_string());
    (used, report)
}

/// Up to `size` messages from the delivery queue, as the SQS event source hands them
/// over: batches of exactly the configured size while the queue holds that many (the
/// emulated poller receives until the batch is full, never by a timer).
async fn receive_batch(svc: &Service, size: usize) -> Vec<aws_sdk_sqs::types::Message> {
    let mut batch: Vec<aws_sdk_sqs::types::Message> = Vec::new();
    let mut empty_receives = 0;
    while batch.len() < size && empty_receives < 3 {
        let out = svc
            .sqs
            .receive_message()
            .queue_url(&svc.resources.queue_url)
            .max_number_of_messages((size - batch.len()).min(10) as i32)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .expect("receive");
        let got = out.messages.unwrap_or_default();
        empty_receives = if got.is_empty() {
            empty_receives + 1
        } else {
            0
        };
        batch.extend(got);
    }
    batch
}

/// The Lambda event of a received batch, and each message's receipt handle by id.
fn sqs_event(batch: Vec<aws_sdk_sqs::types::Message>) -> (SqsEvent, HashMap<String, String>) {
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
    (event, receipts)
}

/// Delivery through an emulated SQS event source (counted: Lambda's poller bills its
/// receives and deletes to the account), until `expected` notifications were answered.
async fn deliver(
    s: Scenario,
    svc: &Service,
    receiver: &SimulatedReceiver,
    logs: &LogCapture,
    expected: usize,
) -> (LambdaUse, Vec<usize>) {
    let delivery = delivery_handler(svc, logs);
    let mut used = LambdaUse::with_memory(512);
    let mut batches = Vec::new();
    for _ in 0..expected {
        // Counted from the start: the flush made the first attempts of small pages.
        if receiver.hits() >= expected {
            break;
        }
        let batch = receive_batch(svc, s.batch).await;
        if batch.is_empty() {
            break;
        }
        batches.push(batch.len());
        let (event, receipts) = sqs_event(batch);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let (response, took) = timed(delivery.handle(event, deadline)).await;
        used.add(took);
        let done: Vec<String> = receipts
            .into_iter()
            .filter(|(id, _)| {
                !response
                    .batch_item_failures
                    .iter()
                    .any(|f| &f.item_identifier == id)
            })
            .map(|(_, receipt)| receipt)
            .collect();
        for chunk in done.chunks(10) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, receipt)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(receipt)
                        .build()
                        .expect("entry")
                })
                .collect();
            svc.sqs
                .delete_message_batch()
                .queue_url(&svc.resources.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .expect("delete batch");
        }
    }
    (used, batches)
}

/// Runs one scenario on the simulation's paused runtime.
async fn scenario(s: Scenario, up: Upstreams, logs: LogCapture) -> Run {
    let receiver = SimulatedReceiver::start().await;
    let svc = service(&up).await;
    populate(s, &svc, &receiver).await;
    let expected = s.records * (s.subscriptions_per_record + usize::from(s.members));
    up.calls.count(true);
    logs.clear();
    let capture_use = capture_changes(s, &svc, &up).await;
    let (flush_use, flushed) = flush_window(&svc, &logs).await;
    assert_eq!(flushed.jobs as usize, expected, "{flushed:?}");
    let (delivery_use, delivery_batches) = deliver(s, &svc, &receiver, &logs, expected).await;
    let delivered = receiver.hits();
    assert_eq!(delivered, expected, "every notification delivered");
    Run {
        name: s.name.to_owned(),
        delivered,
        gross: Usage {
            log_bytes: logs.bytes(),
            calls: up.calls.take(),
            lambdas: [capture_use, flush_use, delivery_use],
        },
        flush_windows: vec![flushed.windows],
        delivery_batches,
    }
}

/// The scheduled flush with nothing to flush, on a set-up of its own made as a
/// scenario's (fresh tables and queues, the same settings, windows and adapters through
/// the proxy): the first run after set-up, which covers the same windows as a scenario's
/// flush, then the next run one window later, as the schedule makes every five minutes
/// once it has caught up.
async fn idle_flushes(up: Upstreams, logs: LogCapture) -> (IdleFlush, IdleFlush) {
    let svc = service(&up).await;
    let first = idle_flush(&svc, &up, &logs).await;
    let next = idle_flush(&svc, &up, &logs).await;
    (first, next)
}

/// One flush run on `svc`, counted alone; it must find nothing to flush.
async fn idle_flush(svc: &Service, up: &Upstreams, logs: &LogCapture) -> IdleFlush {
    up.calls.count(true);
    logs.clear();
    let (flush_use, report) = flush_window(svc, logs).await;
    up.calls.count(false);
    assert_eq!(report.jobs, 0, "nothing to flush: {report:?}");
    let mut lambdas = [LambdaUse::default(); 3];
    lambdas[1] = flush_use;
    IdleFlush {
        windows: report.windows,
        usage: Usage {
            calls: up.calls.take(),
            lambdas,
            log_bytes: logs.bytes(),
        },
    }
}

/// Dollars per notification of `usage` over `notifications`: (DynamoDB, SQS, Lambda,
/// CloudWatch Logs).
fn dollars(usage: &Usage, notifications: usize) -> (f64, f64, f64, f64) {
    let n = notifications as f64;
    let mut dynamo = 0.0;
    let mut sqs = 0.0;
    for (op, t) in &usage.calls {
        if t.billed > 0 {
            sqs += t.billed as f64 * price::SQS;
        } else if WRITES.iter().any(|w| op.starts_with(w)) {
            dynamo += t.units * price::WRU;
        } else {
            dynamo += t.units * price::RRU;
        }
    }
    let lambda: f64 = usage.lambdas.iter().map(LambdaUse::dollars).sum();
    let logs = usage.log_bytes as f64 * price::LOG_BYTE;
    (dynamo / n, sqs / n, lambda / n, logs / n)
}

/// The calls of `usage` per notification (or per run, with 1), with their request units.
fn calls_per_notification(usage: &Usage, notifications: usize) -> String {
    let n = notifications as f64;
    usage
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
        .join("; ")
}

/// Each function's invocations, waits and CPU per notification (functions not invoked
/// left out).
fn lambda_per_notification(usage: &Usage, notifications: usize) -> String {
    let n = notifications as f64;
    FUNCTIONS
        .iter()
        .zip(&usage.lambdas)
        .filter(|(_, u)| u.invocations > 0 || u.billed_ms > 0)
        .map(|(name, u)| {
            format!(
                "{name} {:.3} inv, {:.2} ms waiting + {:.3} ms CPU, {:.2} ms billed at {} MB",
                u.invocations as f64 / n,
                u.wait.as_secs_f64() * 1e3 / n,
                u.cpu.as_secs_f64() * 1e3 / n,
                u.billed_ms as f64 / n,
                u.memory_mb
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Runs `simulation` (a scenario, or the idle flush) on a paused clock of its own (a
/// thread of the blocking pool), with the proxy and the relay's forwarding on this
/// runtime, under the functions' log subscriber.
async fn simulate<T, F>(
    logs: &LogCapture,
    simulation: impl FnOnce(Upstreams, LogCapture) -> F + Send + 'static,
) -> T
where
    F: std::future::Future<Output = T>,
    T: Send + 'static,
{
    let moto = std::env::var("MOTO_ENDPOINT").expect("MOTO_ENDPOINT");
    let calls = Calls::default();
    let proxied = calls.proxy(moto.clone()).await;
    let up = Upstreams {
        moto,
        calls,
        proxied,
        io: tokio::runtime::Handle::current(),
    };
    let logs = logs.clone();
    let simulation = tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("simulation runtime");
        // The functions' log lines, as they format them at the default level.
        let subscriber = logs.lambda_json(LevelFilter::INFO);
        runtime.block_on(simulation(up, logs).with_subscriber(subscriber))
    });
    tokio::time::timeout(Duration::from_secs(300), simulation)
        .await
        .expect("a cost simulation finishes within 300 s")
        .expect("the cost simulation ran")
}

/// Runs the scenarios and adds the rows.
pub async fn cost(table: &mut Table) {
    let logs = LogCapture::default();
    let scenarios = [
        Scenario {
            name: "ORCID-style, 200 records x 1 subscription, busy (batches of 100)",
            records: 200,
            subscriptions_per_record: 1,
            members: false,
            batch: 100,
            target: Some(0.60),
        },
        Scenario {
            name: "ORCID-style, 20 records x 10 subscriptions, busy",
            records: 20,
            subscriptions_per_record: 10,
            members: false,
            batch: 100,
            target: Some(0.30),
        },
        Scenario {
            name: "Members-style, 200 persons x 1 application, busy",
            records: 200,
            subscriptions_per_record: 0,
            members: true,
            batch: 100,
            target: Some(0.60),
        },
        Scenario {
            name: "ORCID-style, 5 records x 1 subscription, sparse (1 message per invocation)",
            records: 5,
            subscriptions_per_record: 1,
            members: false,
            batch: 1,
            target: Some(2.00),
        },
        // The sparsest traffic: one change in a window, so nothing of the window's first
        // attempts (the receiver's wait, the attempt-log write, the metric line) is shared.
        Scenario {
            name: "ORCID-style, 1 record x 1 subscription, alone in its window",
            records: 1,
            subscriptions_per_record: 1,
            members: false,
            batch: 1,
            target: None,
        },
    ];
    let eventbridge = (price::EB_PUT_EVENTS + price::EB_API_DESTINATION) * 1e6;
    let per_run = |usage: &Usage| {
        let (dynamo, sqs, lambda, log) = dollars(usage, 1);
        dynamo + sqs + lambda + log
    };
    // The fixed part each scenario's flush runs are relieved of.
    let (idle, steady) = simulate(&logs, idle_flushes).await;
    table.row(
        "6 cost",
        "fixed part: a scheduled flush with nothing to flush (a set-up of its own; subtracted from each scenario per flush run)",
        format!(
            "a scheduled flush with nothing to flush: {} calls, ${:.7} per run, ${:.3} per month at {SCHEDULED_RUNS_A_MONTH} runs (steady state, {} window a run: {}; {}; logged {} bytes). Subtracted per scenario flush run: the first run after set-up, {} windows as each scenario's flush covers: {} calls, ${:.7} ({}; {}; logged {} bytes)",
            steady.usage.call_count(),
            per_run(&steady.usage),
            per_run(&steady.usage) * SCHEDULED_RUNS_A_MONTH as f64,
            steady.windows,
            calls_per_notification(&steady.usage, 1),
            lambda_per_notification(&steady.usage, 1),
            steady.usage.log_bytes,
            idle.windows,
            idle.usage.call_count(),
            per_run(&idle.usage),
            calls_per_notification(&idle.usage, 1),
            lambda_per_notification(&idle.usage, 1),
            idle.usage.log_bytes,
        ),
        "-",
        Verdict::Info,
    );
    for s in scenarios {
        let run = simulate(&logs, move |up, logs| scenario(s, up, logs)).await;
        let net = run.net(&idle).unwrap_or_else(|e| panic!("{e}"));
        let (dynamo, sqs, lambda, log) = dollars(&net, run.delivered);
        let total = (dynamo + sqs + lambda + log) * 1e6;
        let (g_dynamo, g_sqs, g_lambda, g_log) = dollars(&run.gross, run.delivered);
        let gross = (g_dynamo + g_sqs + g_lambda + g_log) * 1e6;
        table.row(
            "6 cost",
            format!("{} ({} delivered)", run.name, run.delivered),
            format!(
                "**${total:.3} per million** net of {} x the fixed part of a flush run, EventBridge API destinations for the same job ${eventbridge:.3} ({:.2} x EventBridge) (DynamoDB ${:.3}, SQS ${:.3}, Lambda ${:.3}, CloudWatch Logs ${:.3}); gross, each flush run charged whole: ${gross:.3} per million (DynamoDB ${:.3}, SQS ${:.3}, Lambda ${:.3}, CloudWatch Logs ${:.3}). Net calls per notification: {}. Net Lambda per notification: {}. Delivery batches: {:?}. Logged per notification: {:.1} bytes net, {:.1} gross",
                run.flush_windows.len(),
                total / eventbridge,
                dynamo * 1e6,
                sqs * 1e6,
                lambda * 1e6,
                log * 1e6,
                g_dynamo * 1e6,
                g_sqs * 1e6,
                g_lambda * 1e6,
                g_log * 1e6,
                calls_per_notification(&net, run.delivered),
                lambda_per_notification(&net, run.delivered),
                run.delivery_batches,
                net.log_bytes as f64 / run.delivered as f64,
                run.gross.log_bytes as f64 / run.delivered as f64,
            ),
            &s.target.map_or("-".to_owned(), |t| format!("<= ${t:.2}")),
            s.target
                .map_or(Verdict::Info, |t| Verdict::judge(total <= t, "net")),
        );
    }
    let model = LatencyModel::STATED;
    table.note(format!(
        "cost: EventBridge for the same job = PutEvents ${:.2}/M + API destination invocations ${:.2}/M = ${eventbridge:.2} per million; prices us-east-1 as of 2026-11-25; Lambda time = simulated waits (DynamoDB {} ms, SQS {} ms, receiver {} ms a call) + measured CPU scaled to the function's share of a vCPU (see docs/benchmarks.md)",
        price::EB_PUT_EVENTS * 1e6,
        price::EB_API_DESTINATION * 1e6,
        model.dynamodb.as_millis(),
        model.sqs.as_millis(),
        model.receiver.as_millis(),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(calls: u64, units: f64, billed: u64) -> Tally {
        Tally {
            calls,
            units,
            billed,
        }
    }

    fn lambda(invocations: u64, billed_ms: u64, wait_ms: u64, cpu_us: u64) -> LambdaUse {
        LambdaUse {
            invocations,
            billed_ms,
            wait: Duration::from_millis(wait_ms),
            cpu: Duration::from_micros(cpu_us),
            memory_mb: 512,
        }
    }

    /// A scenario's counts: two flush runs' worth of fixed calls and a notification's own.
    fn gross() -> Usage {
        Usage {
            calls: BTreeMap::from([
                ("Query (eventual)".to_owned(), tally(24, 12.0, 0)),
                ("PutItem".to_owned(), tally(3, 3.0, 0)),
                ("DeleteItem".to_owned(), tally(1, 1.0, 0)),
                ("SendMessageBatch".to_owned(), tally(5, 0.0, 5)),
            ]),
            lambdas: [
                lambda(5, 60, 50, 1_000),
                lambda(2, 150, 130, 7_000),
                lambda(5, 630, 610, 5_000),
            ],
            log_bytes: 5_000,
        }
    }

    fn idle() -> Usage {
        Usage {
            calls: BTreeMap::from([
                ("Query (eventual)".to_owned(), tally(10, 5.0, 0)),
                ("PutItem".to_owned(), tally(1, 1.0, 0)),
                // More than the scenario made: floors at zero, and the kind goes.
                ("DeleteItem".to_owned(), tally(1, 1.0, 0)),
                // A kind the scenario did not make subtracts nothing.
                ("GetItem (consistent)".to_owned(), tally(1, 0.5, 0)),
            ]),
            lambdas: [
                LambdaUse::default(),
                lambda(1, 60, 50, 4_000),
                LambdaUse::default(),
            ],
            log_bytes: 400,
        }
    }

    #[test]
    fn the_fixed_part_is_taken_once_per_flush_run_per_kind_and_floors_at_zero() {
        let gross = gross();
        let net = gross.less(&idle(), 2);
        let kinds: Vec<&str> = net.calls.keys().map(String::as_str).collect();
        assert_eq!(kinds, ["PutItem", "Query (eventual)", "SendMessageBatch"]);
        let query = net.calls["Query (eventual)"];
        assert_eq!((query.calls, query.units), (4, 2.0));
        let put = net.calls["PutItem"];
        assert_eq!((put.calls, put.units), (1, 1.0));
        // Floors at zero rather than going negative (two runs of one DeleteItem from one).
        assert!(!net.calls.contains_key("DeleteItem"));
        assert_eq!(net.calls["SendMessageBatch"].billed, 5);
        // Per function: only the flush had a fixed part.
        assert_eq!(net.lambdas[0].invocations, 5);
        assert_eq!(net.lambdas[0].billed_ms, 60);
        let flush = net.lambdas[1];
        assert_eq!((flush.invocations, flush.billed_ms), (0, 30));
        assert_eq!(flush.wait, Duration::from_millis(30));
        // 7 ms less twice 4 ms floors at zero.
        assert_eq!(flush.cpu, Duration::ZERO);
        assert_eq!(flush.memory_mb, 512);
        assert_eq!(net.lambdas[2].billed_ms, 630);
        assert_eq!(net.log_bytes, 4_200);
        // The gross is kept as it was.
        assert_eq!(gross.calls["Query (eventual)"].calls, 24);
        assert_eq!(gross.calls["DeleteItem"].calls, 1);
        assert_eq!(gross.lambdas[1].invocations, 2);
        assert_eq!(gross.log_bytes, 5_000);
        // The net costs less than the gross, by twice the fixed part's price.
        let sum = |(a, b, c, d): (f64, f64, f64, f64)| a + b + c + d;
        let saved = sum(dollars(&gross, 1)) - sum(dollars(&net, 1));
        let fixed = sum(dollars(&idle(), 1));
        // DeleteItem's second run and the missing GetItem are not subtracted.
        let not_taken = 1.0 * price::WRU + 2.0 * 0.5 * price::RRU;
        assert!(
            (saved - (2.0 * fixed - not_taken)).abs() < 1e-12,
            "{saved} {fixed}"
        );
    }

    #[test]
    fn a_flush_run_over_other_windows_than_the_idle_flush_is_refused() {
        let run = |windows: Vec<u64>| Run {
            name: "scenario".to_owned(),
            delivered: 5,
            gross: gross(),
            flush_windows: windows,
            delivery_batches: vec![],
        };
        let idle = IdleFlush {
            windows: 2,
            usage: idle(),
        };
        let net = run(vec![2, 2]).net(&idle).expect("same windows");
        assert_eq!(net.calls["Query (eventual)"].calls, 4);
        let once = run(vec![2]).net(&idle).expect("same windows");
        assert_eq!(once.calls["Query (eventual)"].calls, 14);
        let refused = run(vec![2, 3])
            .net(&idle)
            .expect_err("another window count");
        assert!(refused.contains("covered 3 windows"), "{refused}");
    }
}
