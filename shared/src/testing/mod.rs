//! What tests, benchmarks and tools need to test the service, and production never runs:
//! a clock that moves when told ([`ManualClock`]), fault injection for any adapter
//! ([`faults`]), the contract every adapter set keeps ([`contract`]), and a window's
//! pending records read shard by shard ([`pending_records`], [`records_of_shard`]), and the
//! values tests make again and again ([`at`], [`subscription`], [`memory_ports`],
//! [`local_callback_client`]).
//! Compiled only with the `testing` feature (as tokio's `test-util`), which the `tests`
//! crate enables; the Lambda functions and the local runner build without it.

pub mod contract;
pub mod faults;

use crate::clock::{Clock, Timestamp};
use crate::ports::{BackendResult, PendingChanges};
use crate::record::RecordId;
use crate::window::{Shard, WindowId};
use std::sync::Mutex;
use std::time::Duration;

/// The time `ms` epoch milliseconds (tests write times as numbers).
pub fn at_ms(ms: i64) -> Timestamp {
    Timestamp::from_epoch_ms(ms).expect("a time in range")
}

/// The time written as RFC 3339 text `text` (tests write some times as text).
pub fn at(text: &str) -> Timestamp {
    Timestamp::parse_rfc3339(text).expect("an RFC 3339 time")
}

/// Ports over the in-memory `store` and `queue`, with no person records, operational events
/// only logged and the system clock: what a delivery test or benchmark runs the handler over.
pub fn memory_ports(
    store: std::sync::Arc<crate::memory::MemoryStore>,
    queue: std::sync::Arc<crate::memory::MemoryQueue>,
) -> crate::ports::Ports {
    crate::ports::Ports::over(
        store,
        std::sync::Arc::new(crate::memory::MemoryRecords::default()),
        queue,
        std::sync::Arc::new(crate::memory::LoggedEvents::default()),
        std::sync::Arc::new(crate::clock::SystemClock),
    )
}

/// A callback client that may POST to a test receiver's `http://127.0.0.1` URL, each
/// request bounded by `timeout`.
pub fn local_callback_client(timeout: Duration) -> crate::http_client::CallbackClient {
    crate::http_client::CallbackClient::new(&crate::http_client::HttpSettings {
        timeout,
        url_policy: crate::callback::UrlPolicy {
            allow_insecure: true,
        },
        ..crate::http_client::HttpSettings::default()
    })
}

/// A new subscription of `client` to `record` at `url` (a test receiver's `http://127.0.0.1`
/// URL allowed), registered at the epoch, healthy.
pub fn subscription(
    record: &RecordId,
    url: &str,
    client: &str,
) -> crate::subscription::Subscription {
    let policy = crate::callback::UrlPolicy {
        allow_insecure: true,
    };
    crate::subscription::Subscription {
        record: record.clone(),
        callback: crate::callback::CallbackUrl::parse(url, policy).expect("a callback URL"),
        client_id: client.parse().expect("a client id"),
        created_at: Timestamp::UNIX_EPOCH,
        health: Default::default(),
    }
}

/// A lease for `holder` until `until_ms` epoch milliseconds.
pub fn lease(holder: &str, until_ms: i64) -> crate::ports::Lease {
    crate::ports::Lease {
        holder: crate::ports::LeaseHolder::new(holder),
        until: at_ms(until_ms),
    }
}

/// The saved cursor of the flush of `assignment`, without the time it was saved (tests
/// compare positions).
pub async fn flush_cursor_of(
    pending: &dyn crate::ports::PendingChanges,
    assignment: &crate::window::FlushAssignment,
) -> Option<crate::ports::FlushCursor> {
    let saved = pending.cursors().await.expect("the saved cursors");
    saved
        .into_iter()
        .find(|(saved_by, _)| saved_by == assignment)
        .map(|(_, cursor)| crate::ports::FlushCursor {
            saved_at: None,
            ..cursor
        })
}

/// The whole flush's saved cursor ([`flush_cursor_of`] every shard).
pub async fn whole_flush_cursor(
    pending: &dyn crate::ports::PendingChanges,
) -> Option<crate::ports::FlushCursor> {
    flush_cursor_of(pending, &crate::window::FlushAssignment::all()).await
}

/// A clock that only moves when told to (tests).
#[derive(Debug)]
pub struct ManualClock(Mutex<Timestamp>);

impl ManualClock {
    /// A clock standing at `start` (a `Timestamp` or a `time::OffsetDateTime`).
    pub fn new(start: impl Into<Timestamp>) -> Self {
        Self(Mutex::new(start.into()))
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let mut now = self.0.lock().expect("clock lock");
        *now = now.plus(by);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.0.lock().expect("clock lock")
    }
}

/// `n` record ids of `shard`, sorted, each `prefix` followed by a number: records that one
/// shard's pages hold together.
pub fn records_of_shard(shard: Shard, prefix: &str, n: usize) -> Vec<RecordId> {
    let mut records: Vec<RecordId> = (0..)
        .map(|k| RecordId::parse(&format!("{prefix}{k}")).expect("a valid record id"))
        .filter(|record| Shard::of(record) == shard)
        .take(n)
        .collect();
    records.sort_unstable();
    records
}

/// Every record pending in `window`: each shard's pages read to the end, shard by shard,
/// as the store returns them (a record DynamoDB holds in several batches comes as often).
pub async fn pending_records(
    pending: &(impl PendingChanges + ?Sized),
    window: WindowId,
) -> BackendResult<Vec<RecordId>> {
    const MAX_PAGES: usize = 1_000;
    let mut records = Vec::new();
    for shard in Shard::all() {
        let mut after: Option<String> = None;
        for read in 1.. {
            assert!(
                read <= MAX_PAGES,
                "{shard:?} did not end in {MAX_PAGES} pages"
            );
            let page = pending
                .shard_page(window, shard, after.as_deref(), 100)
                .await?;
            records.extend(page.items);
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
    }
    Ok(records)
}
