//! The adapter contract: what every adapter set (in memory, DynamoDB and SQS, and any
//! other) must do behind the ports, written once as scenarios and run against each set, so
//! that the sets cannot drift apart. Each scenario gets fresh adapters from a factory and
//! names itself when it fails.
//!
//! An adapter set plugs in with a factory of [`Adapters`]:
//!
//! ```ignore
//! webhooks::testing::contract::run_all("memory", || async { Adapters::memory() }).await;
//! ```

/// A module's scenarios, each named after its function.
macro_rules! scenarios {
    ($($scenario:ident),+ $(,)?) => {
        pub(super) const SCENARIOS: &[super::Scenario] = &[$(super::Scenario {
            name: stringify!($scenario),
            run: |adapters| futures::FutureExt::boxed($scenario(adapters)),
        }),+];
    };
}

mod attempts;
mod pending;
mod queue;
mod records;
#[cfg(feature = "sqlite")]
mod sqlite;
mod stores;
mod syncs;

use crate::memory::{MemoryQueue, MemoryRecords, MemoryStore, ReceivedMessage};
use crate::ports::{ParkedQueue, Person, Ports};
use crate::record::RecordId;
use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

/// What a test does to an adapter set besides calling its ports: the registry writes
/// persons into the records table, and the Lambda event source receives from the delivery
/// queue (the handlers never receive; they are handed messages).
#[async_trait]
pub trait Harness: Send + Sync {
    /// Creates or replaces a person (its `id` field set to `id`).
    async fn put_person(&self, id: &RecordId, person: &Person);
    /// Receives up to `max` visible messages of the delivery queue, as its event source
    /// does (each receive counted and hidden for the visibility timeout), waiting up to
    /// `wait` for the first.
    async fn receive(&self, max: usize, wait: Duration) -> Vec<ReceivedMessage>;
    /// The bodies in the dead-letter queue (left there).
    async fn dead_letters(&self) -> Vec<String>;
}

/// The delivery queue's settings as the adapter set was created with them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSettings {
    /// How long a received message stays hidden.
    pub visibility_timeout: Duration,
    /// The receive after this many moves a message to the dead-letter queue.
    pub max_receive_count: u32,
}

/// One adapter set, fresh (nothing stored, every queue empty).
#[derive(Clone)]
pub struct Adapters {
    /// Every port (events and clock are not part of the contract).
    pub ports: Ports,
    pub parked: Arc<dyn ParkedQueue>,
    /// The registry's and the event source's side.
    pub harness: Arc<dyn Harness>,
    /// The delivery queue's settings.
    pub queue: QueueSettings,
}

impl Adapters {
    /// The in-memory adapter set (visibility timeout 3 s, dead-lettered on the third
    /// receive).
    pub fn memory() -> Self {
        let queue_settings = QueueSettings {
            visibility_timeout: Duration::from_secs(3),
            max_receive_count: 2,
        };
        let store = Arc::new(MemoryStore::default());
        let records = Arc::new(MemoryRecords::default());
        let queue = Arc::new(MemoryQueue::new(
            queue_settings.visibility_timeout,
            queue_settings.max_receive_count,
        ));
        Self {
            ports: crate::ports::Ports::over(
                store,
                records.clone(),
                queue.clone(),
                Arc::new(crate::memory::LoggedEvents::default()),
                Arc::new(crate::clock::SystemClock),
            ),
            parked: queue.clone(),
            harness: Arc::new(MemoryHarness { records, queue }),
            queue: queue_settings,
        }
    }
}

/// The harness of the in-memory adapters.
pub struct MemoryHarness {
    pub records: Arc<MemoryRecords>,
    pub queue: Arc<MemoryQueue>,
}

#[async_trait]
impl Harness for MemoryHarness {
    async fn put_person(&self, id: &RecordId, person: &Person) {
        self.records.put_person(id, person.clone());
    }

    async fn receive(&self, max: usize, wait: Duration) -> Vec<ReceivedMessage> {
        self.queue.receive(max, wait).await
    }

    async fn dead_letters(&self) -> Vec<String> {
        self.queue.dead_letters()
    }
}

/// One scenario of the contract.
#[derive(Clone, Copy)]
pub struct Scenario {
    /// Its name (its function's), saying what it shows.
    pub name: &'static str,
    /// Runs it on fresh adapters; panics (an assertion) when the adapters break it.
    pub run: fn(Adapters) -> BoxFuture<'static, ()>,
}

/// Every scenario of the contract.
pub fn scenarios() -> Vec<Scenario> {
    [
        stores::SCENARIOS,
        syncs::SCENARIOS,
        pending::SCENARIOS,
        records::SCENARIOS,
        attempts::SCENARIOS,
        queue::SCENARIOS,
    ]
    .concat()
}

/// The longest a scenario may take (the queue's take a few visibility timeouts).
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(90);
/// Scenarios run at once (their waits on the queue overlap).
const CONCURRENT_SCENARIOS: usize = 4;

/// What a run of the contract found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Scenarios that passed.
    pub passed: Vec<&'static str>,
    /// Scenarios that failed, with why.
    pub failed: Vec<(&'static str, String)>,
}

/// Runs every scenario, each on fresh adapters from `factory`, and prints the figures;
/// panics naming every scenario `adapter_set` failed.
pub async fn run_all<F, Fut>(adapter_set: &str, factory: F) -> Report
where
    F: Fn() -> Fut,
    Fut: Future<Output = Adapters>,
{
    let report = run(&scenarios(), factory).await;
    println!(
        "adapter contract on {adapter_set}: {} scenarios, {} passed, {} failed",
        report.passed.len() + report.failed.len(),
        report.passed.len(),
        report.failed.len()
    );
    if !report.failed.is_empty() {
        let failures: Vec<String> = report
            .failed
            .iter()
            .map(|(name, why)| format!("scenario `{name}` on {adapter_set}: {why}"))
            .collect();
        panic!(
            "the {adapter_set} adapters break the contract:\n{}",
            failures.join("\n")
        );
    }
    report
}

/// Runs `scenarios`, each on fresh adapters from `factory`.
pub async fn run<F, Fut>(scenarios: &[Scenario], factory: F) -> Report
where
    F: Fn() -> Fut,
    Fut: Future<Output = Adapters>,
{
    let factory = &factory;
    let outcomes: Vec<(&'static str, Result<(), String>)> =
        futures::stream::iter(scenarios.iter().map(|scenario| async move {
            let adapters = factory().await;
            let run = AssertUnwindSafe((scenario.run)(adapters)).catch_unwind();
            let outcome = match tokio::time::timeout(SCENARIO_TIMEOUT, run).await {
                Err(_) => Err(format!("did not finish within {SCENARIO_TIMEOUT:?}")),
                Ok(Err(panic)) => Err(panic_message(panic.as_ref())),
                Ok(Ok(())) => Ok(()),
            };
            (scenario.name, outcome)
        }))
        .buffer_unordered(CONCURRENT_SCENARIOS)
        .collect()
        .await;
    let mut report = Report::default();
    for (name, outcome) in outcomes {
        match outcome {
            Ok(()) => report.passed.push(name),
            Err(why) => report.failed.push((name, why)),
        }
    }
    report.passed.sort_unstable();
    report.failed.sort_unstable();
    report
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "panicked".to_owned())
}

/// Reads a listing page by page from the start, returning every page; fails after `max`
/// pages (a listing that never ends).
async fn read_pages<T, F, Fut>(max: usize, mut page: F) -> Vec<crate::ports::Page<T>>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: Future<Output = crate::ports::BackendResult<crate::ports::Page<T>>>,
{
    let mut pages = Vec::new();
    let mut after = None;
    loop {
        assert!(
            pages.len() < max,
            "the listing did not end within {max} pages"
        );
        let got = page(after.take()).await.expect("a page");
        let next = got.next.clone();
        pages.push(got);
        match next {
            Some(next) => after = Some(next),
            None => return pages,
        }
    }
}

/// A record id from test data.
fn record(id: &str) -> RecordId {
    RecordId::parse(id).expect("a valid record id")
}

/// A person from a JSON object literal.
fn person(value: serde_json::Value) -> Person {
    value.as_object().cloned().expect("a JSON object")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaks(_: Adapters) -> BoxFuture<'static, ()> {
        async { assert_eq!(1, 2, "one is two") }.boxed()
    }

    fn hangs(_: Adapters) -> BoxFuture<'static, ()> {
        futures::future::pending().boxed()
    }

    #[tokio::test(start_paused = true)]
    async fn a_broken_or_stuck_scenario_is_named_with_why() {
        let report = run(
            &[
                Scenario {
                    name: "broken",
                    run: breaks,
                },
                Scenario {
                    name: "stuck",
                    run: hangs,
                },
            ],
            || async { Adapters::memory() },
        )
        .await;
        assert!(report.passed.is_empty());
        assert_eq!(report.failed.len(), 2);
        assert_eq!(report.failed[0].0, "broken");
        assert!(report.failed[0].1.contains("one is two"), "{report:?}");
        assert_eq!(report.failed[1].0, "stuck");
        assert!(report.failed[1].1.contains("did not finish"), "{report:?}");
    }
}
