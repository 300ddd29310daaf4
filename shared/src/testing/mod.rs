//! What tests, benchmarks and tools need to test the service, and production never runs:
//! a clock that moves when told ([`ManualClock`]), fault injection for any adapter
//! ([`faults`]), and the contract every adapter set keeps ([`contract`]). Compiled only with the `testing` feature (as tokio's `test-util`), which
//! the `tests` crate enables; the Lambda functions and the local runner build without it.

pub mod contract;
pub mod faults;

use crate::clock::{Clock, Timestamp};
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

/// A lease for `holder` until `until_ms` epoch milliseconds.
pub fn lease(holder: &str, until_ms: i64) -> crate::ports::Lease {
    crate::ports::Lease {
        holder: crate::ports::LeaseHolder::new(holder),
        until: at_ms(until_ms),
    }
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
