//! Time as a port, so tests and the local runner can control it.

use time::OffsetDateTime;

/// The source of "now" for every rule that depends on time.
pub trait Clock: Send + Sync + 'static {
    /// The current UTC time.
    fn now(&self) -> OffsetDateTime;
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// RFC 3339 UTC with milliseconds, e.g. `2021-02-26T19:13:55.749Z`.
pub fn rfc3339_millis(t: OffsetDateTime) -> String {
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
            rfc3339_millis(datetime!(2021-02-26 20:13:55.749 +01:00)),
            "2021-02-26T19:13:55.749Z"
        );
    }
}
