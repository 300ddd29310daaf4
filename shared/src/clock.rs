//! Time as a port, so tests and the local runner can control it, and the one type every
//! rule reads time as ([`Timestamp`]).

use std::time::{Duration, SystemTime};
use time::OffsetDateTime;

/// The source of "now" for every rule that depends on time. Adapters that stamp what they
/// store (TTLs, stream records, send times) take it too, so a test's clock is theirs.
pub trait Clock: std::fmt::Debug + Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp(OffsetDateTime::now_utc())
    }
}

/// A point in time (UTC). Stored and sent as epoch milliseconds, epoch seconds or
/// RFC 3339 text depending on the field; those conversions are the methods here, used
/// where a value is stored, sent or read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(OffsetDateTime);

impl Timestamp {
    /// `ms` milliseconds after the Unix epoch; `None` out of range.
    pub fn from_epoch_ms(ms: i64) -> Option<Self> {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .ok()
            .map(Self)
    }

    /// `secs` seconds after the Unix epoch; `None` out of range.
    pub fn from_epoch_secs(secs: i64) -> Option<Self> {
        OffsetDateTime::from_unix_timestamp(secs).ok().map(Self)
    }

    /// RFC 3339 text, e.g. `2021-02-26T19:13:55.749Z`; `None` when it is not.
    pub fn parse_rfc3339(text: &str) -> Option<Self> {
        OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
            .ok()
            .map(Self)
    }

    /// Milliseconds since the Unix epoch (rounded down).
    pub fn epoch_ms(self) -> i64 {
        self.0.unix_timestamp_nanos().div_euclid(1_000_000) as i64
    }

    /// Seconds since the Unix epoch (rounded down).
    pub fn epoch_secs(self) -> i64 {
        self.0.unix_timestamp()
    }

    /// RFC 3339 UTC with milliseconds, e.g. `2021-02-26T19:13:55.749Z`.
    pub fn rfc3339(self) -> String {
        rfc3339_millis(self.0)
    }

    /// The time `by` later (the latest time there is, if that is out of range).
    pub fn plus(self, by: Duration) -> Self {
        Self(
            self.0
                .checked_add(by.try_into().unwrap_or(time::Duration::MAX))
                .unwrap_or(time::PrimitiveDateTime::MAX.assume_utc()),
        )
    }

    /// How long after `earlier` this is (zero when it is not after it).
    pub fn since(self, earlier: Self) -> Duration {
        (self.0 - earlier.0).try_into().unwrap_or_default()
    }
}

impl From<OffsetDateTime> for Timestamp {
    fn from(t: OffsetDateTime) -> Self {
        Self(t)
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        Self(t.into())
    }
}

impl From<Timestamp> for SystemTime {
    fn from(t: Timestamp) -> Self {
        t.0.into()
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(&self.rfc3339())
    }
}

/// RFC 3339 UTC with milliseconds, e.g. `2021-02-26T19:13:55.749Z`.
fn rfc3339_millis(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn formats_with_millis_in_utc() {
        assert_eq!(
            Timestamp::from(datetime!(2021-02-26 20:13:55.749 +01:00)).rfc3339(),
            "2021-02-26T19:13:55.749Z"
        );
    }

    #[test]
    fn conversions_at_the_storage_boundary() {
        let t = Timestamp::from(datetime!(2021-02-26 19:13:55.749 UTC));
        assert_eq!(t.epoch_ms(), 1_614_366_835_749);
        assert_eq!(t.epoch_secs(), 1_614_366_835);
        assert_eq!(Timestamp::from_epoch_ms(t.epoch_ms()), Some(t));
        assert_eq!(
            Timestamp::from_epoch_secs(1_614_366_835).map(Timestamp::epoch_ms),
            Some(1_614_366_835_000)
        );
        assert_eq!(Timestamp::parse_rfc3339(&t.rfc3339()), Some(t));
        let before_1970 = Timestamp::from_epoch_ms(-1).map(Timestamp::epoch_secs);
        assert_eq!(before_1970, Some(-1), "rounded down, not toward zero");
    }

    #[test]
    fn values_that_are_no_time_are_refused() {
        for (case, parsed) in [
            (
                "epoch ms past year 9999",
                Timestamp::from_epoch_ms(i64::MAX),
            ),
            (
                "epoch s past year 9999",
                Timestamp::from_epoch_secs(i64::MAX),
            ),
            ("not RFC 3339", Timestamp::parse_rfc3339("26/02/2021")),
            ("no offset", Timestamp::parse_rfc3339("2021-02-26T19:13:55")),
        ] {
            assert_eq!(parsed, None, "{case}");
        }
    }

    #[test]
    fn durations_between_times() {
        let t = Timestamp::from(datetime!(2021-02-26 19:13:55 UTC));
        let later = t.plus(Duration::from_millis(1_500));
        assert_eq!(later.since(t), Duration::from_millis(1_500));
        assert_eq!(t.since(later), Duration::ZERO, "never negative");
        assert_eq!(
            t.plus(Duration::MAX).plus(Duration::MAX),
            t.plus(Duration::MAX),
            "saturates"
        );
    }
}
