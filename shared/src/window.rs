//! The five-minute coalescing windows.
//!
//! Change capture marks a record pending in the window open at the time it runs; marking
//! the same record twice in one window is one pending entry. The flush only reads windows
//! that closed at least a grace period ago (longer than change capture can take between
//! reading the clock and its write landing), and never deletes what it read: it advances
//! a cursor past the window and the entries expire. So a change that arrives while a flush
//! runs lands in a window that flush does not read, and the next flush delivers it.

use crate::clock::Clock;
use crate::record::RecordId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How long pending entries live after their last write (then the store's TTL deletes
/// them for free); the flush looks no further back than this.
pub const PENDING_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// A coalescing window's number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WindowId(pub u64);

/// Shards per window: each window's pending changes are split by a stable hash of the
/// record id, so no store key takes a whole window's writes, and the flush runs one worker
/// per shard. Eight keep each (window, shard) key under a third of DynamoDB's 1 000 writes
/// a second per partition at 10 000 changes a second in batches of 100 (each batch writes
/// at most one item per shard: 100 writes a second per key).
pub const PENDING_SHARDS: u16 = 8;

/// One shard of a window's pending changes: `0..PENDING_SHARDS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Shard(pub u16);

impl Shard {
    /// The shard of a record: the same for every write of it, in every store.
    pub fn of(record: &RecordId) -> Self {
        let hash = Sha256::digest(record.as_str().as_bytes());
        Self(u16::from_be_bytes([hash[0], hash[1]]) % PENDING_SHARDS)
    }

    /// Every shard of a window, in order.
    pub fn all() -> impl Iterator<Item = Self> {
        (0..PENDING_SHARDS).map(Self)
    }
}

/// The shards one flush run works on. By default a run flushes every shard (one scheduled
/// invocation); a large registry splits them over several invocations started by the
/// schedule at once (the template's `FlushWorkers`), each with its own cursor and lease,
/// so the shards of a window are flushed with the CPU of several functions.
///
/// Assignments must not overlap while both run (two cursors for one shard would notify
/// its records twice). Each assignment keeps its own cursor; one that has none yet starts
/// from where the whole flush's cursor stands, so splitting a running deployment loses
/// nothing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FlushAssignment(std::collections::BTreeSet<Shard>);

/// Why a flush assignment was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssignmentError {
    #[error("a flush assignment names no shard")]
    Empty,
    #[error("shard {0} does not exist (shards are 0 to {max})", max = PENDING_SHARDS - 1)]
    NoSuchShard(u64),
    #[error("{0:?} is not a list of shard numbers")]
    NotAKey(String),
}

impl FlushAssignment {
    /// Every shard: the run the default schedule starts, and the local runner's.
    pub fn all() -> Self {
        Self(Shard::all().collect())
    }

    /// The shards numbered in `shards` (each once), refused when it is empty or names a
    /// shard that does not exist.
    pub fn of(shards: impl IntoIterator<Item = u64>) -> Result<Self, AssignmentError> {
        let shards = shards
            .into_iter()
            .map(|n| match u16::try_from(n) {
                Ok(n) if n < PENDING_SHARDS => Ok(Shard(n)),
                _ => Err(AssignmentError::NoSuchShard(n)),
            })
            .collect::<Result<std::collections::BTreeSet<_>, _>>()?;
        if shards.is_empty() {
            return Err(AssignmentError::Empty);
        }
        Ok(Self(shards))
    }

    /// Its shards, in order.
    pub fn shards(&self) -> impl Iterator<Item = Shard> + '_ {
        self.0.iter().copied()
    }

    /// True when it covers every shard.
    pub fn is_all(&self) -> bool {
        self.0.len() == usize::from(PENDING_SHARDS)
    }

    /// What tells its cursor and lease apart from other assignments' in a store: `None`
    /// for every shard (the keys the flush had before assignments existed), otherwise
    /// its shard numbers, such as `3` or `0,1`.
    pub fn key(&self) -> Option<String> {
        if self.is_all() {
            return None;
        }
        let numbers: Vec<String> = self.0.iter().map(|s| s.0.to_string()).collect();
        Some(numbers.join(","))
    }

    /// The name a store keeps its item under, `base` for every shard and `base#<key>`
    /// for a part of them (`CURSOR`, `CURSOR#3`).
    pub fn name(&self, base: &str) -> String {
        match self.key() {
            None => base.to_owned(),
            Some(key) => format!("{base}#{key}"),
        }
    }

    /// The assignment whose item is named `name` ([`Self::name`] with `base`); `None`
    /// when `name` is not such a name, an error when its shards are not an assignment.
    pub fn from_name(base: &str, name: &str) -> Option<Result<Self, AssignmentError>> {
        let rest = name.strip_prefix(base)?;
        if rest.is_empty() {
            return Some(Ok(Self::all()));
        }
        let key = rest.strip_prefix('#')?;
        let numbers: Result<Vec<u64>, _> = key.split(',').map(str::parse).collect();
        Some(match numbers {
            Ok(numbers) => Self::of(numbers),
            Err(_) => Err(AssignmentError::NotAKey(key.to_owned())),
        })
    }
}

/// Assigns changes to windows and says which windows may be flushed.
pub trait FlushWindows: Send + Sync + 'static {
    /// The window a change captured now belongs to.
    fn current(&self) -> WindowId;
    /// The newest window that is closed and past its grace period, if any.
    fn closed_through(&self) -> Option<WindowId>;
}

/// Wall-clock windows of fixed length (the Lambda deployment): window `n` covers
/// `[n * length, (n + 1) * length)` since the Unix epoch.
pub struct ClockWindows {
    clock: Arc<dyn Clock>,
    length: Duration,
    grace: Duration,
}

impl ClockWindows {
    /// Windows of `length` that become flushable `grace` after they close.
    pub fn new(clock: Arc<dyn Clock>, length: Duration, grace: Duration) -> Self {
        assert!(!length.is_zero(), "window length must be positive");
        Self {
            clock,
            length,
            grace,
        }
    }

    fn window_at(&self, unix_millis: i128) -> i128 {
        unix_millis.div_euclid(self.length.as_millis() as i128)
    }

    fn now_millis(&self) -> i128 {
        i128::from(self.clock.now().epoch_ms())
    }
}

impl FlushWindows for ClockWindows {
    fn current(&self) -> WindowId {
        WindowId(self.window_at(self.now_millis()).max(0) as u64)
    }

    fn closed_through(&self) -> Option<WindowId> {
        let last_closed = self.window_at(self.now_millis() - self.grace.as_millis() as i128) - 1;
        u64::try_from(last_closed).ok().map(WindowId)
    }
}

/// Windows closed by hand (the local runner and tests): the flush timer or a
/// "flush now" closes the current window, waits the grace period, then flushes.
#[derive(Debug)]
pub struct ManualWindows {
    current: AtomicU64,
}

impl Default for ManualWindows {
    fn default() -> Self {
        Self {
            current: AtomicU64::new(1),
        }
    }
}

impl ManualWindows {
    /// Windows whose current one is `window` (a durable runner goes on from where the
    /// previous one stopped, so no pending change is left behind the flush cursor).
    pub fn starting_at(window: WindowId) -> Self {
        Self {
            current: AtomicU64::new(window.0.max(1)),
        }
    }

    /// Closes the current window; changes from now on go to the next one.
    pub fn close_current(&self) -> WindowId {
        WindowId(self.current.fetch_add(1, Ordering::SeqCst))
    }
}

impl FlushWindows for ManualWindows {
    fn current(&self) -> WindowId {
        WindowId(self.current.load(Ordering::SeqCst))
    }

    fn closed_through(&self) -> Option<WindowId> {
        self.current
            .load(Ordering::SeqCst)
            .checked_sub(1)
            .filter(|w| *w > 0)
            .map(WindowId)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::ManualClock;
    use time::macros::datetime;

    #[test]
    fn an_assignment_names_existing_shards_and_keys_apart_from_the_whole() {
        let all = FlushAssignment::all();
        assert!(all.is_all());
        assert_eq!(all.key(), None, "the whole flush keeps its earlier keys");
        assert_eq!(all.shards().count(), usize::from(PENDING_SHARDS));
        let part = FlushAssignment::of([1, 0, 1]).unwrap();
        assert_eq!(part.shards().collect::<Vec<_>>(), [Shard(0), Shard(1)]);
        assert_eq!(part.key().as_deref(), Some("0,1"));
        assert_eq!(FlushAssignment::of(0..8).unwrap(), all);
        for a in [&all, &part] {
            let name = a.name("CURSOR");
            assert_eq!(
                FlushAssignment::from_name("CURSOR", &name),
                Some(Ok(a.clone()))
            );
        }
        assert_eq!(part.name("CURSOR"), "CURSOR#0,1");
        assert_eq!(FlushAssignment::from_name("CURSOR", "LEASE"), None);
        assert_eq!(FlushAssignment::from_name("CURSOR", "CURSORS"), None);
        assert!(matches!(
            FlushAssignment::from_name("CURSOR", "CURSOR#a"),
            Some(Err(AssignmentError::NotAKey(_)))
        ));
        assert_eq!(FlushAssignment::of([]), Err(AssignmentError::Empty));
        assert_eq!(
            FlushAssignment::of([3, 8]),
            Err(AssignmentError::NoSuchShard(8))
        );
    }

    #[test]
    fn clock_windows_close_after_grace() {
        let clock = Arc::new(ManualClock::new(datetime!(2026-11-25 12:00:00 UTC)));
        let w = ClockWindows::new(
            clock.clone(),
            Duration::from_secs(300),
            Duration::from_secs(90),
        );
        let start = w.current();
        assert_eq!(
            start.0 * 300,
            datetime!(2026-11-25 12:00:00 UTC).unix_timestamp() as u64
        );
        // At the window's start, the previous window closed 0 s ago: not yet flushable.
        assert_eq!(w.closed_through(), Some(WindowId(start.0 - 2)));
        clock.advance(Duration::from_secs(89));
        assert_eq!(w.closed_through(), Some(WindowId(start.0 - 2)));
        clock.advance(Duration::from_secs(1));
        assert_eq!(w.closed_through(), Some(WindowId(start.0 - 1)));
        assert_eq!(w.current(), start);
        clock.advance(Duration::from_secs(210));
        assert_eq!(w.current(), WindowId(start.0 + 1));
        assert_eq!(w.closed_through(), Some(WindowId(start.0 - 1)));
    }

    #[test]
    fn manual_windows_close_by_hand() {
        let w = ManualWindows::default();
        assert_eq!(w.closed_through(), None);
        let first = w.current();
        assert_eq!(w.close_current(), first);
        assert_eq!(w.closed_through(), Some(first));
        assert_eq!(w.current(), WindowId(first.0 + 1));
    }
}
