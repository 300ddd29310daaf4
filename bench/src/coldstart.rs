//! Figure 4: cold start of each function binary — from exec to its first
//! `GET /2018-06-01/runtime/invocation/next` on a minimal Lambda runtime API served here —
//! and the release binary sizes (x86_64 built here; arm64 from `cargo lambda build`).

use crate::receiver::Receiver;
use crate::report::{Stats, Table, Verdict, rss_kib};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::get;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use webhooks::aws::AwsServices;
use webhooks::callback::CallbackUrl;
use webhooks::config::Settings;
use webhooks::http_client::CallbackClient;
use webhooks::ports::ClientStore;

/// The four function binaries.
pub const FUNCTIONS: [&str; 4] = ["registration", "change-capture", "flush", "delivery"];

/// Runs per binary.
const RUNS: usize = 15;

/// The cold start target (issue 15).
const TARGET: &str = "<= 10 ms";

/// The last non-empty line of a function's error output.
fn last_line(text: &str) -> &str {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no error output")
}

/// The minimal runtime API: reports each `next` poll, then holds it open (no event).
async fn next(State(polls): State<Arc<mpsc::UnboundedSender<Instant>>>) -> &'static str {
    let _ = polls.send(Instant::now());
    // Never answer: the bench kills the function once it has polled.
    tokio::time::sleep(Duration::from_secs(30)).await;
    ""
}

/// The workspace's target directory (`CARGO_TARGET_DIR` when set).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

fn size_mb(path: &Path) -> Option<(f64, String)> {
    let meta = std::fs::metadata(path).ok()?;
    let modified = meta
        .modified()
        .ok()
        .map(|m| {
            let t: time::OffsetDateTime = m.into();
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02} UTC",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute()
            )
        })
        .unwrap_or_default();
    Some((meta.len() as f64 / 1e6, modified))
}

/// Runs the figure.
pub async fn coldstart(table: &mut Table) {
    let (tx, mut polls) = mpsc::unbounded_channel();
    let app = Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .with_state(Arc::new(tx));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1");
    let api = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let target = target_dir();
    for name in FUNCTIONS {
        let binary = target.join("release").join(name);
        if !binary.exists() {
            table.row(
                "4 cold start",
                format!("{name}: exec -> first poll"),
                format!("not built: run cargo build --release -p {name}"),
                TARGET,
                Verdict::Missed("not measured".into()),
            );
            continue;
        }
        let mut samples = Vec::new();
        let mut rss = Vec::new();
        for _ in 0..=RUNS {
            while polls.try_recv().is_ok() {}
            let started = Instant::now();
            let mut child = tokio::process::Command::new(&binary)
                .env_clear()
                .env("PATH", "/usr/bin:/bin")
                .env("AWS_LAMBDA_RUNTIME_API", api.to_string())
                .env("AWS_LAMBDA_FUNCTION_NAME", name)
                .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512")
                .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
                .env("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{name}"))
                .env("AWS_LAMBDA_LOG_STREAM_NAME", "bench")
                .env("AWS_REGION", "us-east-1")
                .env("AWS_DEFAULT_REGION", "us-east-1")
                .env("AWS_ACCESS_KEY_ID", "AKIDBENCH")
                .env("AWS_SECRET_ACCESS_KEY", "bench")
                .env("AWS_SESSION_TOKEN", "bench")
                .env("SERVICE_TABLE", "service")
                .env("RECORDS_TABLE", "records")
                .env(
                    "DELIVERY_QUEUE_URL",
                    "https://sqs.us-east-1.amazonaws.com/000000000000/delivery",
                )
                .env(
                    "DEAD_LETTER_QUEUE_URL",
                    "https://sqs.us-east-1.amazonaws.com/000000000000/delivery-dlq",
                )
                .env(
                    "DISABLED_ENDPOINT_QUEUE_URL",
                    "https://sqs.us-east-1.amazonaws.com/000000000000/disabled-endpoint",
                )
                .env("RUST_LOG", "info")
                .stdout(std::process::Stdio::null())
                // Read when the function does not start: it says why (a missing setting).
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("spawn function");
            let pid = child.id().map(|p| p.to_string()).unwrap_or_default();
            let polled = tokio::time::timeout(Duration::from_secs(5), polls.recv()).await;
            let resident = rss_kib(&pid);
            let _ = child.kill().await;
            let _ = child.wait().await;
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = pipe.read_to_string(&mut stderr).await;
            }
            match polled {
                Ok(Some(at)) => {
                    samples.push(at - started);
                    if let Some(kib) = resident {
                        rss.push(kib);
                    }
                }
                _ => {
                    table.row(
                        "4 cold start",
                        format!("{name}: exec -> first poll"),
                        format!("no poll within 5 s: {}", last_line(&stderr)),
                        TARGET,
                        Verdict::Missed("did not start".into()),
                    );
                    break;
                }
            }
        }
        if samples.len() <= 1 {
            continue;
        }
        // The first run warms the page cache; it is not counted.
        let stats = Stats::of(&samples[1..]);
        rss.sort();
        let rss_text = rss
            .get(rss.len() / 2)
            .map(|k| format!("; RSS at first poll {:.1} MiB", *k as f64 / 1024.0))
            .unwrap_or_default();
        table.row(
            "4 cold start",
            format!("{name}: exec -> first poll, x86_64 release, {RUNS} runs"),
            format!("{}{rss_text}", stats.ms()),
            TARGET,
            Verdict::judge(stats.median <= Duration::from_millis(10), ""),
        );
    }
    server.abort();
    first_requests(table).await;
    for name in FUNCTIONS {
        let x86 = size_mb(&target.join("release").join(name));
        let arm = size_mb(&target.join("lambda").join(name).join("bootstrap"));
        let fmt = |s: &Option<(f64, String)>| match s {
            Some((mb, at)) => format!("{mb:.2} MB (built {at})"),
            None => "not built".to_owned(),
        };
        let limit = 8.0;
        let verdict = match &arm {
            Some((mb, _)) => Verdict::judge(*mb <= limit, "arm64"),
            None => Verdict::Missed("arm64 not built: cargo lambda build --release --arm64".into()),
        };
        table.row(
            "4 binary size",
            format!("{name}: release binary, stripped"),
            format!("arm64 {}; x86_64 {}", fmt(&arm), fmt(&x86)),
            "<= 8 MB",
            verdict,
        );
    }
}

/// The first-request figure's fake DynamoDB: `{}` to every call (GetItem: no item).
async fn empty_item() -> ([(http::header::HeaderName, &'static str); 1], &'static str) {
    (
        [(http::header::CONTENT_TYPE, "application/x-amz-json-1.0")],
        "{}",
    )
}

/// What a process's first requests pay beside its second ones, now that the clients
/// connect (and read the system certificate store) on first use rather than at start-up:
/// a fresh process (`webhooks-bench first-request-child`) built as the functions are
/// (`AwsServices::load`, the callback client of the settings) times a DynamoDB `GetItem`
/// to a fake DynamoDB on 127.0.0.1 and a callback POST to a receiver, twice each.
async fn first_requests(table: &mut Table) {
    let row = |table: &mut Table, value: String, verdict: Verdict| {
        table.row(
            "4 cold start",
            format!(
                "first requests of a fresh process (connect, read the system roots), {RUNS} runs"
            ),
            value,
            "-",
            verdict,
        )
    };
    let receiver = Receiver::start(Duration::ZERO, 1);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1");
    let dynamodb = format!("http://{}", listener.local_addr().expect("addr"));
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, Router::new().fallback(empty_item)).await;
    });
    let mut samples: [Vec<Duration>; 4] = Default::default();
    for _ in 0..=RUNS {
        let mut command = crate::child::command("first-request-child");
        command
            .arg(receiver.url("/hook"))
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "AKIDBENCH")
            .env("AWS_SECRET_ACCESS_KEY", "bench")
            .env("AWS_ENDPOINT_URL", &dynamodb)
            .env("SERVICE_TABLE", "service")
            .env("RECORDS_TABLE", "records")
            .env("DELIVERY_QUEUE_URL", format!("{dynamodb}/q/delivery"))
            .env("DEAD_LETTER_QUEUE_URL", format!("{dynamodb}/q/dlq"))
            .env(
                "DISABLED_ENDPOINT_QUEUE_URL",
                format!("{dynamodb}/q/parked"),
            )
            .env("ALLOW_INSECURE_CALLBACKS", "true");
        let parsed = crate::child::run(&mut command, Duration::from_secs(30))
            .await
            .and_then(|fields| {
                FIRST_REQUEST_FIELDS
                    .map(|name| fields.get(name).map(Duration::from_micros))
                    .into_iter()
                    .collect::<Option<Vec<Duration>>>()
                    .ok_or_else(|| format!("the child printed {:?}", fields.text()))
            });
        let parsed = match parsed {
            Ok(parsed) => parsed,
            Err(why) => {
                row(
                    table,
                    format!("the child failed: {}", why.trim()),
                    Verdict::Missed("not measured".into()),
                );
                server.abort();
                return;
            }
        };
        for (kind, sample) in samples.iter_mut().zip(parsed) {
            kind.push(sample);
        }
    }
    server.abort();
    // As above, the first run is not counted.
    let [sdk_first, sdk_second, callback_first, callback_second] =
        samples.map(|kind| Stats::of(&kind[1..]).ms());
    row(
        table,
        format!(
            "DynamoDB GetItem {sdk_first}, the second {sdk_second}; \
             callback POST {callback_first}, the second {callback_second}"
        ),
        Verdict::Info,
    );
}

/// What the first-request child prints, in microseconds, in this order.
const FIRST_REQUEST_FIELDS: [&str; 4] = [
    "sdk_first_us",
    "sdk_second_us",
    "callback_first_us",
    "callback_second_us",
];

/// The first-request figure's child: the clients as a function builds them, two
/// requests of each; prints the four durations ([`FIRST_REQUEST_FIELDS`]).
pub async fn first_requests_child(receiver_url: &str) -> Result<String, String> {
    let settings = Settings::from_env().map_err(|e| e.to_string())?;
    let url = CallbackUrl::parse(receiver_url, settings.url_policy()).map_err(|e| e.to_string())?;
    let services = AwsServices::load(settings.clone()).await;
    let http = CallbackClient::new(&settings.http());
    let app = "APP-NPXKK6HFN6TJ4YYI"
        .parse()
        .map_err(|e| format!("application id: {e:?}"))?;
    let mut took = Vec::new();
    for _ in 0..2 {
        let started = Instant::now();
        let found = services.store.get_client(&app).await;
        took.push(started.elapsed());
        if !matches!(found, Ok(None)) {
            return Err(format!("GetItem: {found:?}"));
        }
    }
    for _ in 0..2 {
        let started = Instant::now();
        // Members style, whose `102 Processing` hook is the costlier request.
        let outcome = http
            .post(
                &url,
                Vec::new(),
                Bytes::from_static(b"{}"),
                webhooks::ack::AckPolicy::MembersCodes,
            )
            .await;
        took.push(started.elapsed());
        if outcome.status != Some(204) {
            return Err(format!("POST: {outcome:?}"));
        }
    }
    Ok(FIRST_REQUEST_FIELDS
        .iter()
        .zip(&took)
        .map(|(name, took)| format!("{name}={}", took.as_micros()))
        .collect::<Vec<_>>()
        .join(" "))
}
