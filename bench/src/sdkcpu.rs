//! The CPU the flush spends per AWS call, measured: the real adapters (`AwsServices`, the
//! AWS SDK with its default HTTP client) against moto server, one call at a time on a
//! single-threaded runtime, so the thread's CPU clock holds the adapter's work, the SDK's
//! serialising, signing and parsing, and the HTTP client's (moto's work is in another
//! process). The load model (figure 8) charges these per call to each flush invocation's
//! share of a vCPU: a flush of millions of records is bound by its CPU as much as by its
//! waits.
//!
//! Over plain HTTP, on a connection kept open: on AWS each call is also encrypted (TLS), a
//! few microseconds per 10 KB, not counted.

use crate::proxy::Replay;
use crate::simulated::{LatencyModel, thread_cpu, thread_kernel_cpu};
use std::time::Duration;
use webhooks::callback::{CallbackUrl, UrlPolicy};
use webhooks::job::DeliveryJob;
use webhooks::ports::{PendingChanges, SubscriptionStore};
use webhooks::record::RecordId;
use webhooks::subscription::Subscription;
use webhooks::window::{Shard, WindowId};
use webhooks_tests::moto::MotoEnv;

/// Calls measured per operation.
const CALLS: u32 = 500;
/// Calls to moto before, uncounted (its answer to the last is replayed).
const WARM_UP: u32 = 20;

/// The CPU of one call of each kind the flush makes per page.
#[derive(Debug, Clone, Copy)]
pub struct SdkCpu {
    /// `SendMessageBatch` of 10 jobs ([`DeliveryQueue::enqueue`] of 10, their encoding
    /// included).
    pub send_batch: Duration,
    /// A record's subscriptions (`Query` returning 10 items).
    pub subscriptions_query: Duration,
    /// A page of a shard's pending records (`Query` of pending items).
    pub pending_query: Duration,
    /// The share of all of it spent in the kernel: the socket calls, and here also the
    /// loopback's delivery of each request to the proxy, which a network card does on AWS.
    pub kernel_share: f64,
}

/// Measures [`SdkCpu`] against the moto server at `MOTO_ENDPOINT`, on a thread and a
/// single-threaded runtime of its own. The calls go through a proxy ([`crate::proxy`]) on
/// another runtime: the SDK keeps its connection open as it does with AWS (moto closes
/// every connection after one call), and the counted calls are answered with moto's
/// answers to the uncounted ones after the cost model's latency ([`LatencyModel::STATED`]),
/// as AWS answers in milliseconds where moto takes a tenth of a second, and waiting costs
/// the client CPU too. The proxy's own work is on its threads, not counted.
pub fn measure() -> SdkCpu {
    let moto = webhooks_tests::moto::endpoint();
    std::thread::spawn(move || {
        let proxy_runtime = tokio::runtime::Runtime::new().expect("the proxy's runtime");
        let (proxied, replay) = proxy_runtime.block_on(crate::proxy::start_replayable(moto));
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(measure_here(&proxied, &replay))
    })
    .join()
    .expect("the SDK CPU measurement")
}

/// The thread's CPU per call of `call` and the part of it in the kernel, over [`CALLS`]
/// calls answered by the proxy's replay of moto's answers to the calls before, each
/// `latency` after its request (the cost model's for the call's service).
async fn per_call<F: std::future::Future<Output = ()>>(
    replay: &Replay,
    latency: Duration,
    mut call: impl FnMut() -> F,
) -> (Duration, Duration) {
    for _ in 0..WARM_UP {
        call().await;
    }
    replay.start(latency);
    let (start, kernel) = (thread_cpu(), thread_kernel_cpu());
    for _ in 0..CALLS {
        call().await;
    }
    (
        (thread_cpu() - start) / CALLS,
        (thread_kernel_cpu() - kernel) / CALLS,
    )
}

async fn measure_here(endpoint: &str, replay: &Replay) -> SdkCpu {
    let env = MotoEnv::create_on(webhooks_tests::moto::sdk_config_at(endpoint).await, 5).await;
    let aws = webhooks::aws::AwsServices::new(&env.config, env.settings());
    let record = RecordId::parse("0000-0002-1825-0097").expect("a record id");
    let mut jobs = Vec::new();
    for k in 0..10 {
        let subscription = Subscription {
            record: record.clone(),
            callback: CallbackUrl::parse(
                &format!("https://hooks{k}.example.org/orcid/0000-0002-1825-0097"),
                UrlPolicy::default(),
            )
            .expect("a callback URL"),
            client_id: "APP-NPXKK6HFN6TJ4YYI".parse().expect("a client id"),
            created_at: webhooks::clock::Timestamp::UNIX_EPOCH,
            health: Default::default(),
        };
        aws.store
            .register(&subscription)
            .await
            .expect("a subscription on moto");
        jobs.push(DeliveryJob::for_subscription(
            &subscription,
            WindowId(5_900_000),
            webhooks::clock::Timestamp::UNIX_EPOCH,
        ));
    }
    let window = WindowId(5_900_000);
    let shard = Shard::of(&record);
    let pending: Vec<RecordId> = (0..2_000)
        .map(|n| RecordId::parse(&format!("r{n:05}")).expect("a record id"))
        .filter(|r| Shard::of(r) == shard)
        .take(100)
        .collect();
    aws.store
        .mark_all(window, &pending)
        .await
        .expect("pending records on moto");
    let queue = aws.ports().queue;
    let store = aws.store.clone();
    let send_batch = per_call(replay, LatencyModel::STATED.sqs, || {
        let (queue, jobs) = (queue.clone(), &jobs);
        async move {
            let sent = queue.enqueue(jobs).await.expect("a send to moto");
            assert!(sent.refused.is_empty(), "moto refused a job: {sent:?}");
        }
    })
    .await;
    let subscriptions_query = per_call(replay, LatencyModel::STATED.dynamodb, || {
        let (store, record) = (store.clone(), &record);
        async move {
            let found = store
                .subscriptions_of(record)
                .await
                .expect("a query of moto");
            assert_eq!(found.len(), 10, "the record's subscriptions");
        }
    })
    .await;
    let pending_query = per_call(replay, LatencyModel::STATED.dynamodb, || {
        let store = store.clone();
        async move {
            store
                .shard_page(window, shard, None, 100)
                .await
                .expect("a query of moto");
        }
    })
    .await;
    let all = [send_batch, subscriptions_query, pending_query];
    let total: Duration = all.iter().map(|(cpu, _)| *cpu).sum();
    let kernel: Duration = all.iter().map(|(_, kernel)| *kernel).sum();
    SdkCpu {
        send_batch: send_batch.0,
        subscriptions_query: subscriptions_query.0,
        pending_query: pending_query.0,
        kernel_share: kernel.as_secs_f64() / total.as_secs_f64(),
    }
}

/// The figure on its own: the flush's CPU per AWS call.
pub fn sdkcpu(table: &mut crate::report::Table) {
    let cpu = measure();
    table.row(
        "9 SDK CPU",
        "the flush's CPU per AWS call: the adapter, the AWS SDK and its HTTP client against moto, one call at a time",
        format!(
            "SendMessageBatch of 10 jobs {} µs; a record's subscriptions (Query, 10 items) {} µs; a page of pending records (Query) {} µs; {:.0} % of it in the kernel",
            cpu.send_batch.as_micros(),
            cpu.subscriptions_query.as_micros(),
            cpu.pending_query.as_micros(),
            cpu.kernel_share * 100.0
        ),
        "-",
        crate::report::Verdict::judge(true, ""),
    );
}
