//! Figure 4: cold start of each function binary — from exec to its first
//! `GET /2018-06-01/runtime/invocation/next` on a minimal Lambda runtime API served here —
//! and the release binary sizes (x86_64 built here; arm64 from `cargo lambda build`).

use crate::report::{Stats, Table, Verdict, rss_kib};
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The four function binaries.
pub const FUNCTIONS: [&str; 4] = ["registration", "change-capture", "flush", "delivery"];

/// Runs per binary.
const RUNS: usize = 15;

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
                "<= 20 ms",
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
                .env("RUST_LOG", "info")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("spawn function");
            let pid = child.id().map(|p| p.to_string()).unwrap_or_default();
            let polled = tokio::time::timeout(Duration::from_secs(5), polls.recv()).await;
            let resident = rss_kib(&pid);
            let _ = child.kill().await;
            let _ = child.wait().await;
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
                        "no poll within 5 s",
                        "<= 20 ms",
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
            "<= 20 ms",
            Verdict::judge(stats.median <= Duration::from_millis(20), ""),
        );
    }
    server.abort();
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
