//! Full syncs ("Sync Data"): every person an application may see, pushed once.
//!
//! A sync is driven by steps (one delivery-queue message at a time, each replaced by the
//! next before it is acknowledged) that read the records table from a saved cursor:
//!
//! - with `requestIntervalMs = 0` a step turns each page of persons into ordinary delivery
//!   jobs, which deliver concurrently and retry like any other; their outcomes are counted;
//! - with an interval, a step POSTs one person at a time, starting each request at least
//!   the interval after the previous one finished, so the receiver never sees two requests
//!   closer than the interval whatever the number of workers (a lease on the sync keeps
//!   one step running). A failed person is retried in place on the retry schedule and,
//!   after the last attempt, dead-lettered so the sync moves on.
//!
//! Progress is saved after every page or person; a crash repeats at most that (duplicates,
//! never a skipped person).

use crate::clock::Timestamp;
use crate::ids::{ApplicationId, SyncId, SyncKey};
use serde::{Deserialize, Serialize};

/// Where a sync stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncState {
    /// Reading persons and delivering.
    Running,
    /// Every person was delivered or dead-lettered.
    Completed,
    /// The application's webhook was removed while it ran, or its stored URL is unusable.
    Cancelled,
}

/// A full sync's saved state. Every field is always written (absent values as null), so
/// saving it replaces all of the driver's state and nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FullSync {
    pub application_id: ApplicationId,
    pub sync_id: SyncId,
    /// The interval it runs with (fixed at start).
    pub request_interval_ms: u64,
    /// Where it stands (as the driver saved it).
    pub state: SyncState,
    /// The last person id read from the records table.
    #[serde(default)]
    pub cursor: Option<String>,
    /// The records table has been read to the end.
    #[serde(default)]
    pub scan_done: bool,
    /// Persons read so far.
    #[serde(default)]
    pub scanned: u64,
    /// Paced syncs: persons acknowledged.
    #[serde(default)]
    pub delivered: u64,
    /// Paced syncs: persons dead-lettered after the last attempt.
    #[serde(default)]
    pub failed: u64,
    /// Paced syncs: failed attempts at the person after `cursor`.
    #[serde(default)]
    pub head_attempts: u32,
    /// Paced syncs: not before this, after a failed attempt.
    #[serde(default, rename = "next_attempt_at_ms")]
    pub next_attempt_at: Option<Timestamp>,
    /// Paced syncs: when the previous request finished.
    #[serde(default, rename = "last_request_end_ms")]
    pub last_request_end: Option<Timestamp>,
    /// Start time (stored as RFC 3339).
    #[serde(with = "crate::clock::rfc3339")]
    pub started_at: Timestamp,
    /// Completion time (stored as RFC 3339).
    #[serde(default, with = "crate::clock::rfc3339::option")]
    pub completed_at: Option<Timestamp>,
}

/// Outcomes counted by the delivery of fan-out sync jobs (written apart from the driver's
/// state, so neither overwrites the other).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncOutcomes {
    /// Acknowledged jobs.
    #[serde(default)]
    pub delivered: u64,
    /// Jobs that went to the dead-letter queue.
    #[serde(default)]
    pub failed: u64,
}

impl FullSync {
    pub fn new(
        application_id: &ApplicationId,
        request_interval_ms: u64,
        started_at: Timestamp,
    ) -> Self {
        Self {
            application_id: application_id.clone(),
            sync_id: SyncId::generate(),
            request_interval_ms,
            state: SyncState::Running,
            cursor: None,
            scan_done: false,
            scanned: 0,
            delivered: 0,
            failed: 0,
            head_attempts: 0,
            next_attempt_at: None,
            last_request_end: None,
            started_at,
            completed_at: None,
        }
    }

    /// How the sync store keys it.
    pub fn key(&self) -> SyncKey {
        SyncKey {
            application: self.application_id.clone(),
            sync: self.sync_id.clone(),
        }
    }

    /// True for syncs paced by an interval.
    pub fn is_paced(&self) -> bool {
        self.request_interval_ms > 0
    }

    /// Where the sync stands with the outcomes its fan-out jobs counted: persons read
    /// but neither delivered nor failed are still queued, and a running sync whose scan
    /// is done with none queued is complete.
    pub fn progress(&self, outcomes: SyncOutcomes) -> SyncProgress {
        let delivered = self.delivered + outcomes.delivered;
        let failed = self.failed + outcomes.failed;
        let queued = self.scanned.saturating_sub(delivered + failed);
        let state = match self.state {
            SyncState::Running if self.scan_done && queued == 0 => SyncState::Completed,
            state => state,
        };
        SyncProgress {
            state,
            delivered,
            failed,
            queued,
        }
    }
}

/// A sync's progress: its own counts and its fan-out jobs' together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncProgress {
    pub state: SyncState,
    /// Persons acknowledged.
    pub delivered: u64,
    /// Persons dead-lettered.
    pub failed: u64,
    /// Persons read and not yet delivered or failed.
    pub queued: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress() {
        let mut sync = FullSync::new(&"app-1".parse().unwrap(), 0, crate::testing::at_ms(0));
        sync.scanned = 10;
        let progress = sync.progress(SyncOutcomes {
            delivered: 7,
            failed: 1,
        });
        assert_eq!((progress.queued, progress.state), (2, SyncState::Running));
        sync.scan_done = true;
        let progress = sync.progress(SyncOutcomes {
            delivered: 9,
            failed: 1,
        });
        assert_eq!((progress.queued, progress.state), (0, SyncState::Completed));
    }
}
