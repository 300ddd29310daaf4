//! Figure 8: a load model. The real change-capture and flush handlers, over the in-memory
//! pending store, run on a paused clock at 10 000 changes a second for 10 minutes of
//! simulated time, with a skew (a fifth of the changes fall on 100 hot records, every
//! other change is a record's only one). Every call of the pending store, the
//! subscription store and the queue is counted against the DynamoDB or SQS key it would
//! touch on AWS, per simulated second, and waits the cost figure's modelled latency
//! ([`LatencyModel::STATED`]), so the flush's duration per window is its critical path of
//! modelled waits. Printed: the busiest key's rate (writes and reads a second), the
//! flush's duration and size per window, and the delivery queue's depth given a delivery
//! fleet of stated concurrency.
//!
//! What is modelled rather than run: the subscriptions (ten per record, generated when the
//! flush asks: registering millions in memory is no part of the load), the queue (jobs are
//! counted, not kept: 24 million a window would not fit), and delivery (a fleet draining
//! the queue at the cost model's pace: a batch of 100 in 125 ms per invocation).

use crate::report::{Table, Verdict};
use crate::sdkcpu::SdkCpu;
use crate::simulated::LatencyModel;
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use webhooks::aws_lambda_events::event::dynamodb::{Event, EventRecord};
use webhooks::callback::{CallbackUrl, UrlPolicy};
use webhooks::handlers::{ChangeCapture, Flush, FlushSettings};
use webhooks::ids::ClientId;
use webhooks::job::DeliveryJob;
use webhooks::memory::{LoggedEvents, MemoryQueue, MemoryRecords, MemoryStore};
use webhooks::ports::{
    BackendError, BackendResult, DeliveryQueue, Enqueued, FlushCursor, Lease, LeaseHolder, Page,
    PendingChanges, Ports,
};
use webhooks::record::RecordId;
use webhooks::subscription::{Registered, Subscription, Unregistered};
use webhooks::window::{FlushAssignment, ManualWindows, Shard, WindowId};

const CHANGES_PER_SECOND: usize = 10_000;
const SECONDS: u64 = 600;
/// Records per change-capture invocation (the stream's batch size in template.yaml).
const BATCH: usize = 100;
const HOT_RECORDS: u64 = 100;
/// One change in this many falls on a hot record.
const HOT_EVERY: u64 = 5;
const SUBSCRIPTIONS_PER_RECORD: usize = 10;
const WINDOW: u64 = 300;
const GRACE: u64 = 90;
/// Delivery invocations running at once, each delivering a batch of 100 in 125 ms (the
/// cost model's busy batch): 100 000 deliveries a second.
const DELIVERY_CONCURRENCY: u64 = 125;
const DELIVERED_PER_INVOCATION_SECOND: u64 = 800;

/// Writes and reads per key in the current simulated second, and the busiest seen.
#[derive(Default)]
struct KeyLoad {
    second: u64,
    current: HashMap<String, (u64, u64)>,
    /// (key, requests in one second) of the busiest key for writes, then for reads.
    hottest_writes: (String, u64),
    hottest_reads: (String, u64),
    /// The most SQS calls in one second.
    sqs_calls: u64,
}

impl KeyLoad {
    fn fold(&mut self) {
        for (key, (writes, reads)) in self.current.drain() {
            if key.starts_with("SQS#") {
                // A standard queue has no per-key limit: its calls are counted apart.
                self.sqs_calls = self.sqs_calls.max(writes);
                continue;
            }
            if writes > self.hottest_writes.1 {
                self.hottest_writes = (key.clone(), writes);
            }
            if reads > self.hottest_reads.1 {
                self.hottest_reads = (key, reads);
            }
        }
    }

    fn note(&mut self, second: u64, key: String, writes: u64, reads: u64) {
        if second != self.second {
            self.fold();
            self.second = second;
        }
        let entry = self.current.entry(key).or_default();
        entry.0 += writes;
        entry.1 += reads;
    }
}

/// The CPU of a flush invocation. Lambda gives CPU in proportion to memory, a whole vCPU
/// per 1 769 MB: below that the invocation has one vCPU at its share of the speed, above it
/// one whole vCPU per 1 769 MB (rounded down). Each vCPU serves one call's CPU at a time,
/// while the calls' waits overlap: the flush runs its lookups and sends on tasks of their
/// own (`webhooks::ports::on_own_task`), which the runtime's threads share. Each call
/// takes the CPU its kind costs ([`CpuCosts`]) before its network wait.
struct Cpu {
    vcpus: tokio::sync::Semaphore,
    /// Each vCPU's speed, a whole vCPU's being 1.
    speed: f64,
    costs: CpuCosts,
    /// CPU time spent (at a whole vCPU).
    spent: Mutex<Duration>,
}

/// What each kind of call costs the flush in CPU, measured (see [`crate::sdkcpu`]).
#[derive(Debug, Clone, Copy)]
pub struct CpuCosts {
    pub sdk: SdkCpu,
    /// The handler's own work per job (over the in-memory adapters).
    pub per_job: Duration,
}

/// The CPU work of a call.
#[derive(Clone, Copy)]
enum Work {
    /// A change-capture call: not the flush's CPU.
    Free,
    /// A `Query` of a shard's pending items; also the price of the cursor and lease calls.
    PendingQuery,
    /// A record's subscriptions.
    SubscriptionsQuery,
    /// A `SendMessageBatch` of `jobs` jobs.
    Send { jobs: u64 },
}

impl Cpu {
    fn of(memory_mb: f64, costs: CpuCosts) -> Self {
        let vcpus = memory_mb / VCPU_MB;
        Self {
            vcpus: tokio::sync::Semaphore::new((vcpus.floor() as usize).max(1)),
            speed: vcpus.min(1.0),
            costs,
            spent: Mutex::default(),
        }
    }

    /// Spends `work`'s CPU on a vCPU when one is free.
    async fn spend(&self, work: Work) {
        let c = &self.costs;
        let cpu = match work {
            Work::Free => return,
            Work::PendingQuery => c.sdk.pending_query,
            Work::SubscriptionsQuery => c.sdk.subscriptions_query,
            Work::Send { jobs } => c.sdk.send_batch + c.per_job * jobs as u32,
        };
        *self
            .spent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) += cpu;
        let _vcpu = self.vcpus.acquire().await;
        tokio::time::sleep(cpu.div_f64(self.speed)).await;
    }
}

/// Counts each call against its key, takes its CPU from the invocation's share (a flush
/// invocation's), and waits its modelled latency.
#[derive(Clone)]
struct Meter {
    load: Arc<Mutex<KeyLoad>>,
    start: Instant,
    cpu: Option<Arc<Cpu>>,
}

impl Meter {
    async fn call(&self, key: String, writes: u64, reads: u64, work: Work, latency: Duration) {
        let second = self.start.elapsed().as_secs();
        self.load
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .note(second, key, writes, reads);
        if let Some(cpu) = &self.cpu {
            cpu.spend(work).await;
        }
        tokio::time::sleep(latency).await;
    }
}

/// The in-memory pending store, counted by the DynamoDB keys of the same calls
/// (docs/architecture.md: `PENDING#<window>#<shard>`, `FLUSH`/`CURSOR`, `FLUSH`/`LEASE`).
struct MeteredPending {
    inner: Arc<MemoryStore>,
    meter: Meter,
}

/// The partition of every flush cursor and lease (`FLUSH`, one item of each per
/// assignment): counted as one key.
const FLUSH_KEY: &str = "FLUSH";

fn pending_key(window: WindowId, shard: Shard) -> String {
    format!("PENDING#{}#{}", window.0, shard.0)
}

#[async_trait]
impl PendingChanges for MeteredPending {
    async fn mark_all(&self, window: WindowId, records: &[RecordId]) -> BackendResult<()> {
        let shards: std::collections::BTreeSet<Shard> = records.iter().map(Shard::of).collect();
        // One BatchWriteItem: one item per shard touched.
        let writes = shards.into_iter().map(|shard| {
            self.meter
                .call(pending_key(window, shard), 1, 0, Work::Free, Duration::ZERO)
        });
        futures::future::join_all(writes).await;
        tokio::time::sleep(LatencyModel::STATED.dynamodb).await;
        self.inner.mark_all(window, records).await
    }
    async fn shard_page(
        &self,
        window: WindowId,
        shard: Shard,
        after: Option<&str>,
        limit: usize,
    ) -> BackendResult<Page<RecordId>> {
        let key = pending_key(window, shard);
        self.meter
            .call(key, 0, 1, Work::PendingQuery, LatencyModel::STATED.dynamodb)
            .await;
        self.inner.shard_page(window, shard, after, limit).await
    }
    async fn cursors(&self) -> BackendResult<Vec<(FlushAssignment, FlushCursor)>> {
        let latency = LatencyModel::STATED.dynamodb;
        self.meter
            .call(FLUSH_KEY.into(), 0, 1, Work::PendingQuery, latency)
            .await;
        self.inner.cursors().await
    }
    async fn save_cursor(
        &self,
        assignment: &FlushAssignment,
        cursor: &FlushCursor,
    ) -> BackendResult<()> {
        let latency = LatencyModel::STATED.dynamodb;
        self.meter
            .call(FLUSH_KEY.into(), 1, 0, Work::PendingQuery, latency)
            .await;
        self.inner.save_cursor(assignment, cursor).await
    }
    async fn lease_flush(
        &self,
        assignment: &FlushAssignment,
        lease: &Lease,
        now: webhooks::clock::Timestamp,
    ) -> BackendResult<bool> {
        let latency = LatencyModel::STATED.dynamodb;
        self.meter
            .call(FLUSH_KEY.into(), 1, 0, Work::PendingQuery, latency)
            .await;
        self.inner.lease_flush(assignment, lease, now).await
    }
    async fn release_flush(
        &self,
        assignment: &FlushAssignment,
        holder: &LeaseHolder,
    ) -> BackendResult<()> {
        let latency = LatencyModel::STATED.dynamodb;
        self.meter
            .call(FLUSH_KEY.into(), 1, 0, Work::PendingQuery, latency)
            .await;
        self.inner.release_flush(assignment, holder).await
    }
    async fn set_aside(&self, item: &webhooks::poison::PoisonItem) -> BackendResult<()> {
        self.inner.set_aside(item).await
    }
    async fn poison_items(&self) -> BackendResult<Vec<webhooks::poison::PoisonItem>> {
        self.inner.poison_items().await
    }
    async fn remove_poison(&self, id: &webhooks::poison::PoisonId) -> BackendResult<bool> {
        self.inner.remove_poison(id).await
    }
}

/// Ten subscriptions per record, made when asked for, counted as the `Query` of the
/// record's `SUB#<record>` partition.
struct GeneratedSubscriptions {
    callbacks: Vec<CallbackUrl>,
    client: ClientId,
    meter: Meter,
}

fn only_subscriptions_of() -> BackendError {
    BackendError::Unavailable("the load model serves subscriptions_of only".into())
}

#[async_trait]
impl webhooks::ports::SubscriptionStore for GeneratedSubscriptions {
    async fn register(&self, _: &Subscription) -> BackendResult<Registered> {
        Err(only_subscriptions_of())
    }
    async fn unregister(
        &self,
        _: &RecordId,
        _: &CallbackUrl,
        _: &ClientId,
    ) -> BackendResult<Unregistered> {
        Err(only_subscriptions_of())
    }
    async fn subscriptions_of(&self, record: &RecordId) -> BackendResult<Vec<Subscription>> {
        let key = format!("SUB#{record}");
        self.meter
            .call(
                key,
                0,
                1,
                Work::SubscriptionsQuery,
                LatencyModel::STATED.dynamodb,
            )
            .await;
        Ok(self
            .callbacks
            .iter()
            .map(|callback| Subscription {
                record: record.clone(),
                callback: callback.clone(),
                client_id: self.client.clone(),
                created_at: webhooks::clock::Timestamp::UNIX_EPOCH,
                health: Default::default(),
            })
            .collect())
    }
    async fn client_webhooks(&self, _: &ClientId) -> BackendResult<Vec<Subscription>> {
        Err(only_subscriptions_of())
    }
    async fn client_webhook(
        &self,
        _: &ClientId,
        _: &webhooks::attempts::EndpointKey,
    ) -> BackendResult<Option<Subscription>> {
        Err(only_subscriptions_of())
    }
    async fn get_subscription(
        &self,
        _: &RecordId,
        _: &CallbackUrl,
    ) -> BackendResult<Option<Subscription>> {
        Err(only_subscriptions_of())
    }
    async fn set_subscription_health(
        &self,
        _: &RecordId,
        _: &CallbackUrl,
        _: &webhooks::health::EndpointHealth,
    ) -> BackendResult<()> {
        Err(only_subscriptions_of())
    }
}

/// The delivery queue, counted: `SendMessageBatch` of 10, at most `SEND_CONCURRENCY` calls
/// in flight in the invocation (as the SQS adapter sends), the jobs dropped once counted.
struct CountedQueue {
    enqueued: Arc<AtomicU64>,
    meter: Meter,
    sending: tokio::sync::Semaphore,
}

#[async_trait]
impl DeliveryQueue for CountedQueue {
    async fn enqueue(&self, jobs: &[DeliveryJob]) -> BackendResult<Enqueued> {
        let sends = jobs.chunks(10).map(|batch| async move {
            let _sending = self.sending.acquire().await;
            let work = Work::Send {
                jobs: batch.len() as u64,
            };
            self.meter
                .call("SQS#delivery".into(), 1, 0, work, LatencyModel::STATED.sqs)
                .await;
        });
        futures::future::join_all(sends).await;
        self.enqueued.fetch_add(jobs.len() as u64, Ordering::SeqCst);
        Ok(Enqueued::default())
    }
    async fn enqueue_delayed(&self, _: &DeliveryJob, _: Duration) -> BackendResult<()> {
        Ok(())
    }
    async fn retry_later(&self, _: &str, _: Duration) -> BackendResult<()> {
        Ok(())
    }
    async fn dead_letter(&self, _: &DeliveryJob) -> BackendResult<()> {
        Ok(())
    }
    async fn park(&self, _: &DeliveryJob) -> BackendResult<()> {
        Ok(())
    }
}

/// The change stream: record ids with the skew, as KEYS_ONLY stream records.
struct Changes {
    next_fresh: u64,
    n: u64,
}

impl Changes {
    fn next_id(&mut self) -> String {
        self.n += 1;
        if self.n.is_multiple_of(HOT_EVERY) {
            // Spread over the hot records by a fixed stride: deterministic.
            format!("hot-{:03}", (self.n / HOT_EVERY * 37) % HOT_RECORDS)
        } else {
            self.next_fresh += 1;
            format!("rec-{:09}", self.next_fresh)
        }
    }

    fn batch(&mut self) -> Event {
        let mut event = Event::default();
        event.records = (0..BATCH)
            .map(|_| {
                let mut record = EventRecord::default();
                let keys = serde_json::json!({ "id": self.next_id() });
                record.change.keys = serde_dynamo::to_item(keys).unwrap_or_default();
                record.change.sequence_number = Some(format!("{:021}", self.n));
                record.event_name = "MODIFY".into();
                record
            })
            .collect();
        event
    }
}

/// What one flush run did, in simulated time.
struct WindowFlush {
    started_at: u64,
    took: Duration,
    report: webhooks::handlers::FlushReport,
    /// The CPU it spent (at a whole vCPU).
    cpu: Duration,
}

/// One flush invocation of the schedule: its shards and its CPU.
struct Worker {
    assignment: FlushAssignment,
    flush: Arc<Flush>,
    cpu: Arc<Cpu>,
}

struct Model {
    capture: ChangeCapture,
    workers: Vec<Worker>,
    windows: Arc<ManualWindows>,
    enqueued: Arc<AtomicU64>,
    meter: Meter,
}

/// The flush function's memory by default (template.yaml's `FlushMemory`).
const FLUSH_MEMORY_MB: f64 = 512.0;
/// The flush's memory for a window of millions of records, split over 8 invocations:
/// Lambda's largest, six vCPUs each (five in this model, which rounds down).
const LARGE_FLUSH_MEMORY_MB: f64 = 10240.0;
/// The window the issue asks to flush within its five minutes.
const TARGET_RECORDS: f64 = 3_000_000.0;
/// Lambda's memory for a whole vCPU.
const VCPU_MB: f64 = 1769.0;

/// The shards of worker `k` of `workers` (the template's `FlushShards` mapping).
fn assignment(k: usize, workers: usize) -> FlushAssignment {
    let per = usize::from(webhooks::window::PENDING_SHARDS) / workers;
    FlushAssignment::of((k * per..(k + 1) * per).map(|n| n as u64)).expect("shards that exist")
}

fn model(workers: usize, memory_mb: f64, costs: CpuCosts) -> Model {
    let meter = Meter {
        load: Arc::default(),
        start: Instant::now(),
        cpu: None,
    };
    let store = Arc::new(MemoryStore::default());
    let enqueued = Arc::new(AtomicU64::new(0));
    let callbacks: Vec<CallbackUrl> = (0..SUBSCRIPTIONS_PER_RECORD)
        .map(|k| {
            CallbackUrl::parse(
                &format!("https://hooks{k}.example.org/orcid"),
                UrlPolicy::default(),
            )
            .expect("a valid callback")
        })
        .collect();
    let windows = Arc::new(ManualWindows::default());
    let worker = |k: usize| {
        let cpu = Arc::new(Cpu::of(memory_mb, costs));
        let meter = Meter {
            cpu: Some(cpu.clone()),
            ..meter.clone()
        };
        let mut ports = Ports::over(
            store.clone(),
            Arc::new(MemoryRecords::default()),
            Arc::new(MemoryQueue::new(Duration::from_secs(60), 5)),
            Arc::new(LoggedEvents::default()),
            Arc::new(webhooks::clock::SystemClock),
        );
        ports.pending = Arc::new(MeteredPending {
            inner: store.clone(),
            meter: meter.clone(),
        });
        ports.queue = Arc::new(CountedQueue {
            enqueued: enqueued.clone(),
            meter: meter.clone(),
            sending: tokio::sync::Semaphore::new(webhooks::aws::sqs::SEND_CONCURRENCY),
        });
        ports.subscriptions = Arc::new(GeneratedSubscriptions {
            callbacks: callbacks.clone(),
            client: "APP-1".parse().expect("a client id"),
            meter,
        });
        Worker {
            assignment: assignment(k, workers),
            flush: Arc::new(Flush {
                // The model's windows make pages of 250 jobs, which go on the queue; a
                // shard's last page of at most 10 (attempted by a deployed flush itself)
                // is a rounding error in a window of millions.
                delivery: None,
                ports,
                windows: windows.clone(),
                settings: FlushSettings::default(),
            }),
            cpu,
        }
    };
    let workers = (0..workers).map(worker).collect();
    Model {
        capture: ChangeCapture {
            pending: Arc::new(MeteredPending {
                inner: store.clone(),
                meter: meter.clone(),
            }),
            windows: windows.clone(),
        },
        workers,
        windows,
        enqueued,
        meter,
    }
}

/// The delivery queue's depth, a second at a time, drained by the modelled fleet.
#[derive(Default)]
struct QueueDepth {
    depth: u64,
    enqueued_before: u64,
    /// (depth, at second) at its deepest.
    peak: (u64, u64),
    /// The first second after the last one that ended with messages waiting.
    empty_from: u64,
}

impl QueueDepth {
    fn tick(&mut self, second: u64, enqueued: u64) {
        let drain = DELIVERY_CONCURRENCY * DELIVERED_PER_INVOCATION_SECOND;
        self.depth = (self.depth + enqueued - self.enqueued_before).saturating_sub(drain);
        self.enqueued_before = enqueued;
        if self.depth > self.peak.0 {
            self.peak = (self.depth, second);
        }
        if self.depth > 0 {
            self.empty_from = second + 1;
        }
    }
}

/// A flush started by the schedule at a second, running in the background: (worker,
/// second, the task giving its report, its duration and its CPU).
type Running = (
    usize,
    u64,
    tokio::task::JoinHandle<(
        BackendResult<webhooks::handlers::FlushReport>,
        Duration,
        Duration,
    )>,
);

/// Starts the schedule's runs: one per worker, at once.
fn start_flushes(m: &Model, second: u64) -> Vec<Running> {
    m.workers
        .iter()
        .enumerate()
        .map(|(k, w)| {
            let (flush, assignment, cpu) = (w.flush.clone(), w.assignment.clone(), w.cpu.clone());
            let handle = tokio::spawn(async move {
                let started = Instant::now();
                let spent_before = *cpu
                    .spent
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let report = flush.run_assignment(&assignment, None).await;
                let spent = *cpu
                    .spent
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                (report, started.elapsed(), spent - spent_before)
            });
            (k, second, handle)
        })
        .collect()
}

/// Runs the model on the current (paused) runtime: each simulated second a hundred
/// change-capture invocations of 100 changes at once; a window closed every 5 minutes and
/// flushed by the schedule's runs (every 5 minutes, after the grace period, one per worker)
/// in the background; until every worker caught up after the last window closed and the
/// queue drained (at most two hours of simulated time).
async fn run(
    workers: usize,
    memory_mb: f64,
    costs: CpuCosts,
) -> (KeyLoad, Vec<WindowFlush>, QueueDepth) {
    let m = model(workers, memory_mb, costs);
    let mut changes = Changes {
        next_fresh: 0,
        n: 0,
    };
    let mut running: Vec<Running> = Vec::new();
    let mut done = Vec::new();
    let mut depth = QueueDepth::default();
    let mut caught_up = std::collections::BTreeSet::new();
    for second in 0..7_200 {
        tokio::time::sleep_until(m.meter.start + Duration::from_secs(second)).await;
        if second > 0 && second.is_multiple_of(WINDOW) && second <= SECONDS {
            m.windows.close_current();
        }
        // The schedule: a run of each worker every window length, after the grace period.
        if second > GRACE && (second - GRACE).is_multiple_of(WINDOW) {
            running.extend(start_flushes(&m, second));
        }
        if second < SECONDS {
            let batches: Vec<Event> = (0..CHANGES_PER_SECOND / BATCH)
                .map(|_| changes.batch())
                .collect();
            futures::future::join_all(batches.into_iter().map(|e| m.capture.handle(e))).await;
        }
        depth.tick(second, m.enqueued.load(Ordering::SeqCst));
        let (finished, still): (Vec<Running>, Vec<Running>) =
            running.into_iter().partition(|(_, _, h)| h.is_finished());
        running = still;
        for (worker, started_at, handle) in finished {
            let (report, took, cpu) = handle.await.expect("the flush task");
            let report = report.expect("the flush over memory");
            // Caught up: a run that started after the last window closed left none behind.
            if report.behind_windows == 0 && !report.lease_held && started_at >= SECONDS + GRACE {
                caught_up.insert(worker);
            }
            done.push(WindowFlush {
                started_at,
                took,
                report,
                cpu,
            });
        }
        if second > SECONDS + GRACE
            && caught_up.len() == workers
            && running.is_empty()
            && depth.depth == 0
        {
            break;
        }
    }
    m.meter
        .load
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .fold();
    let load = std::mem::take(
        &mut *m
            .meter
            .load
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    (load, done, depth)
}

/// The CPU each kind of call costs the flush, measured on this machine (moto at
/// `MOTO_ENDPOINT`).
fn measure_costs() -> CpuCosts {
    let sdk = crate::sdkcpu::measure();
    let per_job = tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(crate::fanout::flush_cpu_per_job());
    CpuCosts { sdk, per_job }
}

/// Runs the load model on a paused clock, with the flush in one invocation and split over
/// eight (the template's `FlushWorkers`), and adds its rows.
pub fn load(table: &mut Table) {
    let costs = measure_costs();
    table.note(format!(
        "load: the flush's CPU, measured on this machine: SendMessageBatch of 10 jobs {} µs, a record's subscriptions (Query of 10) {} µs, a page of pending records {} µs (the SDK and its HTTP client against moto, one call at a time); the handler {:.1} µs a job (over the in-memory adapters); charged to the flush invocation's vCPUs ({:.2} of one at {FLUSH_MEMORY_MB} MB, five at {LARGE_FLUSH_MEMORY_MB} MB)",
        costs.sdk.send_batch.as_micros(),
        costs.sdk.subscriptions_query.as_micros(),
        costs.sdk.pending_query.as_micros(),
        costs.per_job.as_secs_f64() * 1e6,
        FLUSH_MEMORY_MB / VCPU_MB,
    ));
    for (workers, memory_mb) in [
        (1, FLUSH_MEMORY_MB),
        (8, FLUSH_MEMORY_MB),
        (8, LARGE_FLUSH_MEMORY_MB),
    ] {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("load model runtime");
        let wall = std::time::Instant::now();
        let (load, flushes, depth) = runtime.block_on(run(workers, memory_mb, costs));
        let setting = format!("FlushWorkers {workers}, FlushMemory {memory_mb}");
        rows(table, &setting, &load, &flushes, &depth);
        table.note(format!(
            "load, {setting}: {:.0} s of wall time on this machine",
            wall.elapsed().as_secs_f64(),
        ));
    }
    table.note(format!(
        "load: waits as the cost model's (DynamoDB {} ms, SQS {} ms a call)",
        LatencyModel::STATED.dynamodb.as_millis(),
        LatencyModel::STATED.sqs.as_millis()
    ));
}

/// The rows of one run of the model.
fn rows(
    table: &mut Table,
    setting: &str,
    load: &KeyLoad,
    flushes: &[WindowFlush],
    depth: &QueueDepth,
) {
    // A third of DynamoDB's per-partition limits: 1 000 writes, 3 000 reads a second.
    let (write_key, writes) = &load.hottest_writes;
    let (read_key, reads) = &load.hottest_reads;
    table.row(
        "8 load",
        format!("{setting}: {CHANGES_PER_SECOND} changes/s for {SECONDS} s simulated, 1 in {HOT_EVERY} on {HOT_RECORDS} hot records, {SUBSCRIPTIONS_PER_RECORD} subscriptions per record: the busiest key"),
        format!("DynamoDB writes: `{write_key}` {writes} a second; reads: `{read_key}` {reads} a second (requests, each item under 4 KB). SQS: at most {} calls a second on the delivery queue", load.sqs_calls),
        "<= 333 writes/s, <= 1 000 reads/s per key",
        Verdict::judge(*writes <= 333 && *reads <= 1_000, ""),
    );
    let held = flushes.iter().filter(|f| f.report.lease_held).count();
    let mut starts: Vec<u64> = flushes.iter().map(|f| f.started_at).collect();
    starts.dedup();
    for start in starts {
        let round: Vec<&WindowFlush> = flushes
            .iter()
            .filter(|f| f.started_at == start && !f.report.lease_held)
            .collect();
        let Some(slowest) = round.iter().map(|f| f.took).max() else {
            continue;
        };
        let minutes = slowest.as_secs_f64() / 60.0;
        let records: u64 = round.iter().map(|f| f.report.records).sum();
        // The model's windows hold 2.4 million records (its skew): the flush's rate says
        // how long 3 million take, a record's work being the same.
        let rate = records as f64 / slowest.as_secs_f64().max(1e-9);
        let target_minutes = TARGET_RECORDS / rate / 60.0;
        let jobs: u64 = round.iter().map(|f| f.report.jobs).sum();
        let windows = round.iter().map(|f| f.report.windows).max().unwrap_or(0);
        let behind = round
            .iter()
            .map(|f| f.report.behind_windows)
            .max()
            .unwrap_or(0);
        let cpu = round.iter().map(|f| f.cpu).max().unwrap_or_default();
        table.row(
            "8 load",
            format!("{setting}: flush runs started at {start} s ({} of them)", round.len()),
            format!(
                "{minutes:.1} min simulated (the slowest run): {windows} windows, {records} records, {jobs} jobs ({:.0} records/s), {behind} closed windows left; the busiest run's CPU {:.0} s at a whole vCPU; at that rate 3 million records take {target_minutes:.1} min",
                rate,
                cpu.as_secs_f64(),
            ),
            "a window of 3 million records within 5 min",
            Verdict::judge(target_minutes <= 5.0, ""),
        );
    }
    table.note(format!(
        "load, {setting}: {held} scheduled flush runs found the one before still running (lease held) and did nothing"
    ));
    table.row(
        "8 load",
        format!("{setting}: delivery queue, drained by {DELIVERY_CONCURRENCY} delivery invocations at once ({} deliveries/s)", DELIVERY_CONCURRENCY * DELIVERED_PER_INVOCATION_SECOND),
        format!(
            "deepest {} messages at {} s; empty again from {} s",
            depth.peak.0, depth.peak.1, depth.empty_from
        ),
        "-",
        Verdict::judge(true, ""),
    );
}
