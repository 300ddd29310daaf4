//! Figure 7: the local runner on a data directory (SQLite, `--data-dir`) against the same
//! runner in memory, end to end on one machine, in the same run. Each round changes every
//! record once (`Runtime::put_person`: the record written, its change captured — the
//! changes ingested per second), then flushes and waits for the receiver on 127.0.0.1 to
//! have answered every delivery (flush start to last acknowledgement — the deliveries per
//! second). The durable runner goes on for rounds until its attempt log holds a million
//! delivered messages (`DURABLE_DELIVERED` changes that), so the figure per round is the
//! growth curve. Every round quotes the machine's load average, as this machine is shared.

use crate::receiver::Receiver;
use crate::report::{Table, Verdict};
use futures::StreamExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use webhooks::callback::{CallbackUrl, UrlPolicy};
use webhooks::ids::ClientId;
use webhooks::record::RecordId;
use webhooks::subscription::Subscription;
use webhooks_local::{LocalConfig, LocalService};

/// Records changed per round, each with [`SUBSCRIPTIONS`] callbacks.
const RECORDS: usize = 5_000;
/// Callbacks per record: a round delivers `RECORDS * SUBSCRIPTIONS` messages.
const SUBSCRIPTIONS: usize = 10;
/// Changes (record writes) in flight at once.
const WRITERS: usize = 64;
/// The durable target, deliveries per second.
const TARGET: f64 = 5_000.0;
/// The longest one round may take before the run fails.
const ROUND_LIMIT: Duration = Duration::from_secs(600);

/// One round's figures.
struct Round {
    delivered_before: usize,
    changes_per_s: f64,
    flush: Duration,
    deliveries_per_s: f64,
    /// CPU time of the whole process (runner, receiver and the round's driver) per
    /// delivery, microseconds: what a delivery costs, apart from how much of the machine
    /// other sessions left to this one.
    cpu_us_per_delivery: f64,
    load: String,
}

/// The CPU time this process has used, every thread.
fn process_cpu() -> Duration {
    crate::simulated::cpu_clock(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// The 1-minute load average of the machine.
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// A directory under the system's temporary directory, removed when dropped.
struct DataDir(PathBuf);

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn client() -> ClientId {
    "APP-BENCH".parse().expect("client id")
}

fn record(i: usize) -> RecordId {
    RecordId::parse(&format!("p-{i:07}")).expect("record id")
}

async fn start(receiver: &Receiver, data_dir: Option<PathBuf>) -> LocalService {
    let service = LocalService::start(LocalConfig {
        listen: "127.0.0.1:0".parse().expect("address"),
        flush_interval: Duration::from_secs(24 * 3600),
        flush_grace: Duration::from_millis(50),
        allow_insecure_callbacks: true,
        clients: vec![(client(), "bench-secret".into())],
        sample_record: false,
        data_dir,
        ..LocalConfig::default()
    })
    .await
    .expect("the runner starts");
    let subscriptions = service.runtime.ports.subscriptions.clone();
    let policy = UrlPolicy {
        allow_insecure: true,
    };
    let registrations = (0..RECORDS).flat_map(|r| (0..SUBSCRIPTIONS).map(move |k| (r, k)));
    futures::stream::iter(registrations)
        .map(|(r, k)| {
            let subscriptions = subscriptions.clone();
            let subscription = Subscription {
                record: record(r),
                callback: CallbackUrl::parse(&receiver.url(&format!("/r{r}/{k}")), policy)
                    .expect("callback"),
                client_id: client(),
                created_at: webhooks::clock::Timestamp::UNIX_EPOCH,
                health: Default::default(),
            };
            async move { subscriptions.register(&subscription).await }
        })
        .buffer_unordered(WRITERS)
        .for_each(|registered| async move {
            registered.expect("register");
        })
        .await;
    service
}

/// One round: every record changed once, then one flush delivered to the receiver.
async fn round(service: &LocalService, receiver: &Receiver, n: usize) -> Round {
    let delivered_before = receiver.hits();
    let runtime = service.runtime.clone();
    let started = Instant::now();
    futures::stream::iter(0..RECORDS)
        .map(|r| {
            let runtime = runtime.clone();
            let person = serde_json::json!({"firstName": format!("round {n}")});
            async move {
                let person = person.as_object().cloned().unwrap_or_default();
                runtime.put_person(&record(r), person).await
            }
        })
        .buffer_unordered(WRITERS)
        .for_each(|written| async move {
            written.expect("put person");
        })
        .await;
    let changes_per_s = RECORDS as f64 / started.elapsed().as_secs_f64();
    let expected = delivered_before + RECORDS * SUBSCRIPTIONS;
    let started = Instant::now();
    let cpu_before = process_cpu();
    let report = runtime.flush_now().await.expect("flush");
    assert_eq!(report.jobs as usize, RECORDS * SUBSCRIPTIONS, "{report:?}");
    let flush = started.elapsed();
    while receiver.hits() < expected {
        assert!(
            started.elapsed() < ROUND_LIMIT,
            "round {n}: {} of {} deliveries after {ROUND_LIMIT:?}",
            receiver.hits() - delivered_before,
            RECORDS * SUBSCRIPTIONS
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let deliveries_per_s = (RECORDS * SUBSCRIPTIONS) as f64 / started.elapsed().as_secs_f64();
    let cpu_us_per_delivery = process_cpu().saturating_sub(cpu_before).as_secs_f64() * 1e6
        / (RECORDS * SUBSCRIPTIONS) as f64;
    // Settled before the next round reads the queue's depth as empty.
    while runtime
        .queue_depth()
        .await
        .map_or(1, |d| d.visible + d.in_flight)
        > 0
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Round {
        delivered_before,
        changes_per_s,
        flush,
        deliveries_per_s,
        cpu_us_per_delivery,
        load: load(),
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// The database file's and the WAL's sizes, MB.
fn database_mb(dir: &std::path::Path) -> (f64, f64) {
    let size = |name: &str| std::fs::metadata(dir.join(name)).map_or(0.0, |m| m.len() as f64 / 1e6);
    (
        size(webhooks::sqlite::DATABASE_FILE),
        size(&format!("{}-wal", webhooks::sqlite::DATABASE_FILE)),
    )
}

fn directory_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Figure 7.
pub async fn durable(table: &mut Table) {
    let total: usize = std::env::var("DURABLE_DELIVERED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let per_round = RECORDS * SUBSCRIPTIONS;
    let durable_rounds = total.div_ceil(per_round).max(2);
    let memory_rounds = 2;
    let receiver = Receiver::start(Duration::ZERO, 1);

    let mut memory = Vec::new();
    let service = start(&receiver, None).await;
    for n in 0..memory_rounds {
        let r = round(&service, &receiver, n).await;
        eprintln!(
            "memory  round {n}: {:.0} changes/s, flush {:?}, {:.0} deliveries/s, {:.0} us CPU per delivery (load {})",
            r.changes_per_s, r.flush, r.deliveries_per_s, r.cpu_us_per_delivery, r.load
        );
        memory.push(r);
    }
    service.stop().await;

    let dir =
        DataDir(std::env::temp_dir().join(format!("webhooks-bench-{}", uuid::Uuid::new_v4())));
    let mut durable = Vec::new();
    let service = start(&receiver, Some(dir.0.clone())).await;
    let base = receiver.hits();
    for n in 0..durable_rounds {
        let mut r = round(&service, &receiver, n).await;
        r.delivered_before -= base;
        let (database, wal) = database_mb(&dir.0);
        eprintln!(
            "durable round {n}: {} delivered before it, {:.0} changes/s, flush {:?}, {:.0} deliveries/s, {:.0} us CPU per delivery (load {}), database {database:.0} MB + WAL {wal:.0} MB",
            r.delivered_before,
            r.changes_per_s,
            r.flush,
            r.deliveries_per_s,
            r.cpu_us_per_delivery,
            r.load,
        );
        durable.push(r);
    }
    service.stop().await;
    let on_disk = directory_bytes(&dir.0);

    let summary = |rounds: &[Round]| {
        let mut changes: Vec<f64> = rounds.iter().map(|r| r.changes_per_s).collect();
        let mut deliveries: Vec<f64> = rounds.iter().map(|r| r.deliveries_per_s).collect();
        let loads: Vec<&str> = rounds.iter().map(|r| r.load.as_str()).collect();
        (
            median(&mut changes),
            median(&mut deliveries),
            loads.join(", "),
        )
    };
    let (memory_changes, memory_deliveries, memory_load) = summary(&memory);
    let (durable_changes, durable_deliveries, durable_load) = summary(&durable);
    table.row(
        "7 durable mode",
        format!(
            "in memory: {memory_rounds} rounds of {RECORDS} changes then {per_round} ORCID-style deliveries (1 flush), receiver on 127.0.0.1"
        ),
        format!(
            "{memory_changes:.0} changes/s ingested, {memory_deliveries:.0} deliveries/s end to end (medians; load average {memory_load})"
        ),
        "reference",
        Verdict::Info,
    );
    table.row(
        "7 durable mode",
        format!("--data-dir (SQLite): the same, {durable_rounds} rounds"),
        format!(
            "{durable_changes:.0} changes/s ingested, {durable_deliveries:.0} deliveries/s end to end (medians; {:.2} x in memory; load average {durable_load})",
            durable_deliveries / memory_deliveries
        ),
        ">= 5000 deliveries/s",
        Verdict::judge(durable_deliveries >= TARGET, ""),
    );
    let curve: Vec<String> = durable
        .iter()
        .map(|r| {
            format!(
                "{}k: {:.0}/s",
                r.delivered_before / 1000,
                r.deliveries_per_s
            )
        })
        .collect();
    let head = (durable.len() / 3).clamp(1, 3);
    let mut first: Vec<f64> = durable[..head].iter().map(|r| r.deliveries_per_s).collect();
    let mut last: Vec<f64> = durable[durable.len() - head..]
        .iter()
        .map(|r| r.deliveries_per_s)
        .collect();
    let ratio = median(&mut last) / median(&mut first);
    table.row(
        "7 durable mode",
        format!(
            "deliveries/s by messages already delivered (the attempt log's size), up to {}k; {:.0} MB on disk at the end",
            durable_rounds * per_round / 1000,
            on_disk as f64 / 1e6
        ),
        format!(
            "{}; last {head} rounds / first {head}: {ratio:.2}",
            curve.join(", ")
        ),
        "no fall-off (>= 0.8)",
        Verdict::judge(ratio >= 0.8, ""),
    );
    // The same growth in CPU per delivery, which the machine's load moves far less.
    let cost: Vec<String> = durable
        .iter()
        .map(|r| {
            format!(
                "{}k: {:.0}",
                r.delivered_before / 1000,
                r.cpu_us_per_delivery
            )
        })
        .collect();
    let mut first: Vec<f64> = durable[..head]
        .iter()
        .map(|r| r.cpu_us_per_delivery)
        .collect();
    let mut last: Vec<f64> = durable[durable.len() - head..]
        .iter()
        .map(|r| r.cpu_us_per_delivery)
        .collect();
    let growth = median(&mut last) / median(&mut first);
    table.row(
        "7 durable mode",
        "CPU per delivery (us, the whole process: runner and receiver) by messages already delivered",
        format!(
            "{}; last {head} rounds / first {head}: {growth:.2}",
            cost.join(", ")
        ),
        "reference",
        Verdict::Info,
    );
}
