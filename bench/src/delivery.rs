//! Figures 1, 2 and 5: the real delivery handler (`Delivery::handle`) over the in-memory
//! adapters and the real `CallbackClient`, against a local receiver.

use crate::receiver::Receiver;
use crate::report::{Stats, Table, Verdict};
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use webhooks::application::Application;
use webhooks::aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use webhooks::clock::{Clock, SystemClock};
use webhooks::handlers::{Delivery, DeliverySettings};
use webhooks::job::DeliveryJob;
use webhooks::memory::{MemoryQueue, MemoryStore};
use webhooks::oauth::OAuthClient;
use webhooks::ports::{ApplicationStore, ClientStore, SubscriptionStore};
use webhooks::record::RecordId;
use webhooks::subscription::Subscription;
use webhooks::window::WindowId;

/// Which delivery style the jobs have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Style {
    /// ORCID style: empty POST, Standard Webhooks signature with the client's secret.
    Orcid,
    /// Members style: scoped person in a signed envelope (HMAC body hash + signature).
    Members,
}

impl Style {
    const ALL: [Style; 2] = [Style::Orcid, Style::Members];

    fn name(self) -> &'static str {
        match self {
            Style::Orcid => "ORCID-style",
            Style::Members => "Members-style",
        }
    }

    /// Its name on the bench's command line (`delivery-loop`, the child processes).
    pub fn arg(self) -> &'static str {
        match self {
            Style::Orcid => "orcid",
            Style::Members => "members",
        }
    }

    pub fn parse(arg: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.arg() == arg)
    }
}

/// The subscription of record `i` to a callback on the receiver.
fn subscription(receiver_url: &str, i: usize) -> Subscription {
    let record = RecordId::parse(&format!("p-{i:07}")).expect("record id");
    let url = format!("{receiver_url}/{}/updated", record.as_str());
    webhooks::testing::subscription(&record, &url, "APP-BENCH")
}

/// The delivery handler over in-memory ports holding one OAuth client (with webhook
/// secrets), the subscriptions of records `0..subscriptions` to callbacks on the
/// receiver, and one application (with a signing key) pointing at the receiver.
pub async fn handler(receiver_url: &str, concurrency: usize, subscriptions: usize) -> Delivery {
    let store = Arc::new(MemoryStore::default());
    for i in 0..subscriptions {
        store
            .register(&subscription(receiver_url, i))
            .await
            .expect("memory register");
    }
    let mut client = OAuthClient::new(&"APP-BENCH".parse().unwrap(), "secret", SystemClock.now());
    client.webhook_secrets = Some(webhooks::signing::SigningSecrets::generate());
    store.put_client(&client).await.expect("memory put");
    let mut app = Application::new(
        &"app-bench".parse().unwrap(),
        "key-bench",
        webhooks::clock::Timestamp::UNIX_EPOCH,
    );
    app.webhook.url = Some(format!("{receiver_url}/members").into());
    app.webhook.signing_key = Some("helloWorld".into());
    store.put_application(&app).await.expect("memory put");
    let ports = webhooks::testing::memory_ports(
        store,
        Arc::new(MemoryQueue::new(Duration::from_secs(30), 5)),
    );
    let http = webhooks::testing::local_callback_client(Duration::from_secs(10));
    Delivery::new(
        ports,
        http,
        DeliverySettings {
            concurrency,
            ..DeliverySettings::default()
        },
    )
}

fn person(i: usize) -> serde_json::Map<String, serde_json::Value> {
    serde_json::json!({
        "personID": format!("p-{i:07}"),
        "lastChangedDate": "2026-01-01T00:00:00.000Z",
        "firstName": "Josiah",
        "lastName": "Carberry",
        "displayName": "Josiah Carberry",
        "email": format!("p{i}@example.org"),
    })
    .as_object()
    .expect("object")
    .clone()
}

/// `n` delivery jobs of `style` to the receiver, as the flush would have written them.
pub fn jobs(receiver_url: &str, style: Style, n: usize) -> Vec<DeliveryJob> {
    let created = SystemClock.now();
    (0..n)
        .map(|i| {
            let record = RecordId::parse(&format!("p-{i:07}")).expect("record id");
            match style {
                Style::Orcid => DeliveryJob::for_subscription(
                    &subscription(receiver_url, i),
                    WindowId(1),
                    created,
                ),
                Style::Members => DeliveryJob::for_application(
                    &"app-bench".parse().unwrap(),
                    &record,
                    person(i),
                    WindowId(1),
                    created,
                ),
            }
        })
        .collect()
}

/// The jobs as Lambda SQS events of `batch` messages each (first receive).
pub fn events(jobs: &[DeliveryJob], batch: usize) -> Vec<SqsEvent> {
    jobs.chunks(batch)
        .map(|chunk| {
            let mut event = SqsEvent::default();
            event.records = chunk
                .iter()
                .map(|job| {
                    let mut m = SqsMessage::default();
                    m.message_id = Some(uuid::Uuid::new_v4().to_string());
                    m.receipt_handle = Some(uuid::Uuid::new_v4().to_string());
                    m.body = Some(serde_json::to_string(job).expect("job serializes"));
                    m.attributes = HashMap::from([
                        ("ApproximateReceiveCount".to_owned(), "1".to_owned()),
                        ("SentTimestamp".to_owned(), "0".to_owned()),
                    ]);
                    m.event_source = Some("aws:sqs".into());
                    m
                })
                .collect();
            event
        })
        .collect()
}

fn far_deadline() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(60)
}

/// Figure 1: one invocation, a batch of 100, receiver waits 200 ms per request.
pub async fn concurrency(table: &mut Table) {
    const DELAY: Duration = Duration::from_millis(200);
    const RUNS: usize = 5;
    let receiver = Receiver::start(DELAY, 2);
    let url = receiver.url("");
    let events_100 = |style| events(&jobs(&url, style, 100), 100);
    // One request alone, through the same handler: the reference time.
    let single = {
        let delivery = handler(&url, 1, 100).await;
        let mut samples = Vec::new();
        for _ in 0..RUNS {
            let event = events(&jobs(&url, Style::Orcid, 1), 1).remove(0);
            let before = receiver.hits();
            let t = Instant::now();
            let response = delivery.handle(event, far_deadline()).await;
            samples.push(t.elapsed());
            assert!(response.batch_item_failures.is_empty(), "delivered");
            assert_eq!(receiver.hits(), before + 1, "the receiver was reached");
        }
        Stats::of(&samples)
    };
    table.note(format!(
        "one request alone through the handler (200 ms receiver): {}",
        single.ms()
    ));
    for concurrency in [8usize, 32, 64, 100] {
        let delivery = handler(&url, concurrency, 100).await;
        // A warm-up batch opens the pool's connections, as a warm Lambda has.
        let runs = RUNS;
        let mut samples = Vec::new();
        let mut peak = 0;
        for run in 0..=runs {
            let event = events_100(Style::Orcid).remove(0);
            receiver.take_peak_in_flight();
            let t = Instant::now();
            let response = tokio::time::timeout(
                Duration::from_secs(40),
                delivery.handle(event, far_deadline()),
            )
            .await
            .expect("a batch finishes within 40 s");
            let took = t.elapsed();
            assert!(response.batch_item_failures.is_empty(), "all delivered");
            let held = receiver.take_peak_in_flight();
            assert!(held > 0, "the receiver was reached");
            peak = peak.max(held);
            if run > 0 {
                samples.push(took);
            }
        }
        let stats = Stats::of(&samples);
        let ratio = stats.median.as_secs_f64() / single.median.as_secs_f64();
        let default = webhooks::handlers::DeliverySettings::default().concurrency;
        let verdict = if concurrency == default {
            Verdict::judge(
                ratio <= 1.5,
                "the default DELIVERY_CONCURRENCY = batch size",
            )
        } else {
            Verdict::Info
        };
        table.row(
            "1 delivery concurrency",
            format!("batch of 100, 200 ms receiver, concurrency {concurrency}"),
            format!(
                "{} ({ratio:.2} x one request; peak {peak} in flight)",
                stats.ms()
            ),
            "<= 1.5 x one request",
            verdict,
        );
    }
}

/// One contender's pass over the messages: wall-clock rate, and the process's CPU time per
/// message (the receiver runs in this process too, alike for every contender). Under a
/// loaded machine the rate follows the load; the CPU time much less.
#[derive(Debug, Clone, Copy)]
struct Pass {
    per_sec: f64,
    cpu_us: f64,
}

/// Wall and CPU time, and allocations while they are counted ([`crate::allocs`]), summed
/// over the timed parts of a figure, with the messages those sent.
#[derive(Default)]
struct Stopwatch {
    messages: usize,
    wall: Duration,
    cpu: Duration,
    allocations: u64,
    bytes: u64,
}

impl Stopwatch {
    /// Times `work`, which sends `n` messages, and adds it to what was timed before.
    async fn time(&mut self, n: usize, work: impl std::future::Future<Output = ()>) {
        let (allocations, bytes) = crate::allocs::so_far();
        let cpu = process_cpu();
        let t = Instant::now();
        work.await;
        self.wall += t.elapsed();
        self.cpu += process_cpu().saturating_sub(cpu);
        let (allocations_after, bytes_after) = crate::allocs::so_far();
        self.allocations += allocations_after - allocations;
        self.bytes += bytes_after - bytes;
        self.messages += n;
    }

    fn pass(&self) -> Pass {
        let n = self.messages as f64;
        Pass {
            per_sec: n / self.wall.as_secs_f64(),
            cpu_us: self.cpu.as_secs_f64() * 1e6 / n,
        }
    }
}

impl Pass {
    /// The medians of the rates and of the CPU times (each on its own).
    fn median(passes: &[Pass]) -> Self {
        let median = |f: fn(&Pass) -> f64| {
            let mut v: Vec<f64> = passes.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        Self {
            per_sec: median(|p| p.per_sec),
            cpu_us: median(|p| p.cpu_us),
        }
    }

    /// The best rate and the least CPU time (each on its own): on a shared machine the
    /// neighbours only ever slow a round, so the best is the least disturbed.
    fn best(passes: &[Pass]) -> Self {
        Self {
            per_sec: passes.iter().map(|p| p.per_sec).fold(0.0, f64::max),
            cpu_us: passes
                .iter()
                .map(|p| p.cpu_us)
                .fold(f64::INFINITY, f64::min),
        }
    }
}

fn process_cpu() -> Duration {
    crate::simulated::cpu_clock(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// A contender of figure 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Contender {
    /// A bare reqwest loop, `buffer_unordered` over all the messages.
    Bare,
    /// The same in batches of 100 (the Lambda batch shape).
    BareBatches,
    /// The bare loop sending the headers a Members-style delivery has (fixed values): the
    /// same bytes on the wire, so the receiver's share is alike and what is left of the
    /// difference is the handler's own work.
    BareWithHeaders,
    /// `Delivery::handle` over jobs of one style.
    Handler(Style),
}

impl Contender {
    const ALL: [Contender; 5] = [
        Contender::Bare,
        Contender::BareBatches,
        Contender::BareWithHeaders,
        Contender::Handler(Style::Orcid),
        Contender::Handler(Style::Members),
    ];

    /// Its name on the child's command line.
    pub fn arg(self) -> &'static str {
        match self {
            Contender::Bare => "bare",
            Contender::BareBatches => "bare100",
            Contender::BareWithHeaders => "bare-headers",
            Contender::Handler(style) => style.arg(),
        }
    }

    pub fn parse(arg: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.arg() == arg)
    }
}

/// Messages a pass of figure 2 sends, and its requests in flight at once.
const THROUGHPUT_MESSAGES: usize = 20_000;
const THROUGHPUT_CONCURRENCY: usize = 32;

/// The bare contender's client: reqwest as a plain caller builds it, redirects off.
fn bare_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("reqwest client")
}

/// Passes of figure 2 a child times, after its warm one.
const TIMED_PASSES: usize = 2;

/// Figure 2, the child side: `contender` alone in a fresh process with its own receiver:
/// one pass to open connections and fill caches, then [`TIMED_PASSES`] timed. Printed as
/// `per_sec=<msg/s> cpu_us=<µs a message>`.
pub async fn throughput_child(contender: Contender) -> String {
    const N: usize = THROUGHPUT_MESSAGES;
    let receiver = Receiver::start(Duration::ZERO, 2);
    let url = receiver.url("");
    let body = bytes_of_members_envelope();
    let bare = bare_client();
    let (delivery, evs) = match contender {
        Contender::Handler(style) => (
            Some(handler(&url, THROUGHPUT_CONCURRENCY, N).await),
            events(&jobs(&url, style, N), 100),
        ),
        Contender::Bare | Contender::BareBatches | Contender::BareWithHeaders => (None, Vec::new()),
    };
    let batch = (contender == Contender::BareBatches).then_some(100);
    let headers = if contender == Contender::BareWithHeaders {
        members_style_headers()
    } else {
        Vec::new()
    };
    let (mut warm, mut timed) = (Stopwatch::default(), Stopwatch::default());
    for pass in 0..=TIMED_PASSES {
        let watch = if pass == 0 { &mut warm } else { &mut timed };
        match &delivery {
            Some(delivery) => handler_loop(delivery, &receiver, &evs, watch).await,
            None => {
                let work = bare_loop(
                    &bare,
                    &url,
                    N,
                    THROUGHPUT_CONCURRENCY,
                    batch,
                    &body,
                    &headers,
                );
                watch.time(N, work).await;
            }
        }
    }
    let pass = timed.pass();
    format!("per_sec={:.1} cpu_us={:.3}", pass.per_sec, pass.cpu_us)
}

/// One pass of `contender` in a child process of its own.
async fn throughput_pass(contender: Contender) -> Pass {
    let mut command = crate::child::command("throughput-child");
    command.arg(contender.arg());
    let fields = crate::child::run(&mut command, Duration::from_secs(120))
        .await
        .unwrap_or_else(|why| panic!("the throughput child failed: {why}"));
    Pass {
        per_sec: fields.need("per_sec"),
        cpu_us: fields.need("cpu_us"),
    }
}

/// Figure 2: messages per second through the handler vs a bare reqwest loop, each in a
/// process of its own (one contender's heap and connections never slow another's),
/// alternated over several rounds so that the machine's drift hits them alike.
pub async fn throughput(table: &mut Table) {
    const N: usize = THROUGHPUT_MESSAGES;
    const CONCURRENCY: usize = THROUGHPUT_CONCURRENCY;
    const ROUNDS: usize = 7;
    let mut results: HashMap<Contender, Vec<Pass>> = HashMap::new();
    for _ in 0..ROUNDS {
        for contender in Contender::ALL {
            let pass = throughput_pass(contender).await;
            results.entry(contender).or_default().push(pass);
        }
    }
    let bare = Pass::median(&results[&Contender::Bare]);
    table.row(
        "2 delivery throughput",
        format!("bare reqwest, buffer_unordered({CONCURRENCY}), {N} POSTs of the Members body"),
        format!(
            "{:.0} msg/s ({:.1} µs CPU a message)",
            bare.per_sec, bare.cpu_us
        ),
        "baseline",
        Verdict::Info,
    );
    let bare_best = Pass::best(&results[&Contender::Bare]);
    let bare100 = Pass::median(&results[&Contender::BareBatches]);
    let bare100_best = Pass::best(&results[&Contender::BareBatches]);
    table.row(
        "2 delivery throughput",
        "bare reqwest, same, in batches of 100 (Lambda batch shape)",
        format!(
            "{:.0} msg/s ({:.2} x bare; {:.1} µs CPU a message; best rounds {:.2} x bare's best, CPU {:.2} x)",
            bare100.per_sec,
            bare100.per_sec / bare.per_sec,
            bare100.cpu_us,
            bare100_best.per_sec / bare_best.per_sec,
            bare100_best.cpu_us / bare_best.cpu_us,
        ),
        "baseline",
        Verdict::Info,
    );
    let with_headers = Pass::median(&results[&Contender::BareWithHeaders]);
    table.row(
        "2 delivery throughput",
        "bare reqwest, same, with a Members-style delivery's headers (fixed values)",
        format!(
            "{:.0} msg/s ({:.2} x bare; {:.1} µs CPU a message)",
            with_headers.per_sec,
            with_headers.per_sec / bare.per_sec,
            with_headers.cpu_us,
        ),
        "baseline",
        Verdict::Info,
    );
    for style in Style::ALL {
        let pass = Pass::median(&results[&Contender::Handler(style)]);
        let ratio = pass.per_sec / bare.per_sec;
        let best = Pass::best(&results[&Contender::Handler(style)]);
        table.row(
            "2 delivery throughput",
            format!(
                "Delivery::handle, {} jobs, batches of 100, concurrency {CONCURRENCY}",
                style.name()
            ),
            format!(
                "{:.0} msg/s ({ratio:.2} x bare; {:.1} µs CPU a message; best rounds {:.2} x bare's best, CPU {:.2} x; {:.2} x bare with the same headers)",
                pass.per_sec,
                pass.cpu_us,
                best.per_sec / bare_best.per_sec,
                best.cpu_us / bare_best.cpu_us,
                pass.per_sec / with_headers.per_sec,
            ),
            ">= 0.9 x bare",
            Verdict::judge(ratio >= 0.9, ""),
        );
    }
    table.note(format!(
        "throughput: each contender in a fresh process with its own receiver (a pass of {N} messages to warm, then {TIMED_PASSES} timed), {ROUNDS} alternating rounds, medians quoted and the best rounds beside them; receiver answers 204 at once; CPU = the child process's (its receiver included) per message"
    ));
}

/// Runs the batches of `events` through the handler one after another, each to the end,
/// timed on `watch`. A batch is copied just before it is handled, outside the timing: in
/// Lambda it arrives made, and in the cache from the runtime's reading it. (Copied a pass
/// at a time, 20 000 messages, each batch was cold by the time it was handled.)
async fn handler_loop(
    delivery: &Delivery,
    receiver: &Receiver,
    events: &[SqsEvent],
    watch: &mut Stopwatch,
) {
    let before = receiver.hits();
    let mut messages = 0;
    for event in events {
        let event = event.clone();
        let n = event.records.len();
        messages += n;
        watch
            .time(n, async {
                let response = tokio::time::timeout(
                    Duration::from_secs(30),
                    delivery.handle(event, far_deadline()),
                )
                .await
                .expect("a batch finishes within 30 s");
                assert!(response.batch_item_failures.is_empty());
            })
            .await;
    }
    assert_eq!(receiver.hits() - before, messages, "every message arrived");
}

/// One contender alone (the handler on one style, or with `None` the bare loop) for
/// `rounds` rounds of 20 000 messages, with allocations counted, for a profiler (`webhooks-bench delivery-loop
/// members 10` under `perf record`): the rate and CPU time of each round on stdout.
pub async fn one_contender(style: Option<Style>, rounds: usize) {
    const N: usize = THROUGHPUT_MESSAGES;
    const CONCURRENCY: usize = THROUGHPUT_CONCURRENCY;
    let receiver = Receiver::start(Duration::ZERO, 2);
    let url = receiver.url("");
    let evs = events(&jobs(&url, style.unwrap_or(Style::Members), N), 100);
    let delivery = handler(&url, CONCURRENCY, N).await;
    let bare = bare_client();
    let body = bytes_of_members_envelope();
    crate::allocs::start();
    for round in 0..rounds {
        let mut watch = Stopwatch::default();
        match style {
            Some(_) => handler_loop(&delivery, &receiver, &evs, &mut watch).await,
            None => {
                let work = bare_loop(&bare, &url, N, CONCURRENCY, Some(100), &body, &[]);
                watch.time(N, work).await;
            }
        }
        let pass = watch.pass();
        println!(
            "{} round {round}: {:.0} msg/s, {:.1} µs CPU a message, {:.1} allocations ({:.0} bytes) a message, the receiver's included",
            style.map_or("bare (batches of 100)", Style::name),
            pass.per_sec,
            pass.cpu_us,
            watch.allocations as f64 / N as f64,
            watch.bytes as f64 / N as f64,
        );
    }
}

fn bytes_of_members_envelope() -> Vec<u8> {
    // The size of a Members-style envelope for `person(0)`, so the bare loop sends as much.
    webhooks::members::envelope(
        &[webhooks::members::ScopedPerson::from_map(&person(0))],
        Some(&"helloWorld".into()),
        "msg_0000",
        "2026-01-01T00:00:00.000Z",
        "app-bench",
    )
}

/// The headers a Members-style delivery sends besides the content type, with values of
/// their length (`webhooks::handlers::outbound` and `CallbackClient` write the real ones).
fn members_style_headers() -> Vec<(http::HeaderName, http::HeaderValue)> {
    use webhooks::handlers::outbound::{WEBHOOK_ID, WEBHOOK_SIGNATURE, WEBHOOK_TIMESTAMP};
    [
        (http::header::USER_AGENT, webhooks::http_client::USER_AGENT),
        (WEBHOOK_ID, "msg_0000000100112233445566778899aabb"),
        (WEBHOOK_TIMESTAMP, "1795687200"),
        (
            WEBHOOK_SIGNATURE,
            "v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=",
        ),
    ]
    .into_iter()
    .map(|(name, value)| (name, http::HeaderValue::from_static(value)))
    .collect()
}

async fn bare_loop(
    client: &reqwest::Client,
    url: &str,
    n: usize,
    concurrency: usize,
    batch: Option<usize>,
    body: &[u8],
    headers: &[(http::HeaderName, http::HeaderValue)],
) {
    let send = |i: usize| {
        let mut request = client.post(format!("{url}/bare/{i}"));
        for (name, value) in headers {
            request = request.header(name.clone(), value.clone());
        }
        let request = request
            .header("content-type", "application/json")
            .body(body.to_vec());
        async move {
            let response = request.send().await.expect("bare POST");
            assert!(response.status().is_success());
            let _ = response.bytes().await;
        }
    };
    let all = async {
        match batch {
            None => {
                futures::stream::iter(0..n)
                    .map(send)
                    .buffer_unordered(concurrency)
                    .collect::<Vec<()>>()
                    .await;
            }
            Some(size) => {
                for start in (0..n).step_by(size) {
                    futures::stream::iter(start..(start + size).min(n))
                        .map(send)
                        .buffer_unordered(concurrency)
                        .collect::<Vec<()>>()
                        .await;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("the bare loop finishes within 60 s");
}

/// Figure 5, the child side: one invocation over 100 messages, then the process's peak RSS.
pub async fn rss_child(receiver_url: &str, style: Style) -> u64 {
    let delivery = handler(receiver_url, DeliverySettings::default().concurrency, 100).await;
    let event = events(&jobs(receiver_url, style, 100), 100).remove(0);
    let response = tokio::time::timeout(
        Duration::from_secs(30),
        delivery.handle(event, far_deadline()),
    )
    .await
    .expect("the batch finishes within 30 s");
    assert!(response.batch_item_failures.is_empty(), "all delivered");
    crate::report::peak_rss_kib("self").expect("VmHWM readable")
}

/// Figure 5: peak RSS of a fresh process running the delivery handler over 100 messages.
pub async fn rss(table: &mut Table) {
    let receiver = Receiver::start(Duration::from_millis(20), 1);
    for style in Style::ALL {
        let mut samples = Vec::new();
        for _ in 0..3 {
            let before = receiver.hits();
            let mut command = crate::child::command("rss-child");
            command.arg(receiver.url("")).arg(style.arg());
            let kib: u64 = crate::child::run(&mut command, Duration::from_secs(30))
                .await
                .unwrap_or_else(|why| panic!("the rss child failed: {why}"))
                .need("peak_rss_kib");
            assert_eq!(
                receiver.hits(),
                before + 100,
                "the child delivered its batch"
            );
            samples.push(kib);
        }
        samples.sort();
        let mib = samples[samples.len() / 2] as f64 / 1024.0;
        table.row(
            "5 memory",
            format!(
                "peak RSS, one delivery invocation, {} batch of 100 (in-process handler, fresh process)",
                style.name()
            ),
            format!(
                "{mib:.1} MiB (min {:.1}, max {:.1})",
                samples[0] as f64 / 1024.0,
                samples[samples.len() - 1] as f64 / 1024.0
            ),
            "well under 128 MB",
            Verdict::judge(mib < 64.0, ""),
        );
    }
}
