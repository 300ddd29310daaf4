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
        Timestamp::from(OffsetDateTime::now_utc())
    }
}

/// A point in time (UTC), to the millisecond. Stored and sent as epoch milliseconds (its
/// serde form), epoch seconds or RFC 3339 text depending on the field; those conversions
/// are the methods here, used where a value is stored, sent or read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    /// Milliseconds since the Unix epoch; always a time `OffsetDateTime` can hold (years
    /// -9999 to 9999), so it can always be written as text.
    epoch_ms: i64,
}

/// The range of epoch milliseconds a `Timestamp` holds.
fn ms_range() -> std::ops::RangeInclusive<i64> {
    let ms = |t: OffsetDateTime| (t.unix_timestamp_nanos() / 1_000_000) as i64;
    let min = time::PrimitiveDateTime::MIN.assume_utc();
    let max = time::PrimitiveDateTime::MAX.assume_utc();
    ms(min)..=ms(max)
}

impl Timestamp {
    /// 1970-01-01T00:00:00Z.
    pub const UNIX_EPOCH: Self = Self { epoch_ms: 0 };

    /// `ms` milliseconds after the Unix epoch; `None` out of range.
    pub fn from_epoch_ms(ms: i64) -> Option<Self> {
        ms_range().contains(&ms).then_some(Self { epoch_ms: ms })
    }

    /// `secs` seconds after the Unix epoch; `None` out of range.
    pub fn from_epoch_secs(secs: i64) -> Option<Self> {
        Self::from_epoch_ms(secs.checked_mul(1000)?)
    }

    /// RFC 3339 text, e.g. `2021-02-26T19:13:55.749Z`; `None` when it is not.
    pub fn parse_rfc3339(text: &str) -> Option<Self> {
        OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
            .ok()
            .map(Self::from)
    }

    /// Milliseconds since the Unix epoch.
    pub fn epoch_ms(self) -> i64 {
        self.epoch_ms
    }

    /// Seconds since the Unix epoch (rounded down).
    pub fn epoch_secs(self) -> i64 {
        self.epoch_ms.div_euclid(1000)
    }

    /// This time rounded down to the second (what a field stored as epoch seconds keeps).
    pub fn whole_secs(self) -> Self {
        Self {
            epoch_ms: self.epoch_secs() * 1000,
        }
    }

    /// RFC 3339 UTC with milliseconds, e.g. `2021-02-26T19:13:55.749Z`.
    pub fn rfc3339(self) -> String {
        let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.epoch_ms) * 1_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        rfc3339_millis(t)
    }

    /// The time `by` later (to the millisecond; the latest time there is, if that is out
    /// of range).
    pub fn plus(self, by: Duration) -> Self {
        let by = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        let range = ms_range();
        Self {
            epoch_ms: self.epoch_ms.saturating_add(by).min(*range.end()),
        }
    }

    /// How long after `earlier` this is (zero when it is not after it).
    pub fn since(self, earlier: Self) -> Duration {
        let ms = self.epoch_ms.saturating_sub(earlier.epoch_ms);
        Duration::from_millis(u64::try_from(ms).unwrap_or(0))
    }
}

/// To the millisecond (rounded down).
impl From<OffsetDateTime> for Timestamp {
    fn from(t: OffsetDateTime) -> Self {
        Self {
            epoch_ms: t.unix_timestamp_nanos().div_euclid(1_000_000) as i64,
        }
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        Self::from(OffsetDateTime::from(t))
    }
}

impl From<Timestamp> for SystemTime {
    fn from(t: Timestamp) -> Self {
        let since_epoch = Duration::from_millis(t.epoch_ms.unsigned_abs());
        if t.epoch_ms >= 0 {
            SystemTime::UNIX_EPOCH + since_epoch
        } else {
            SystemTime::UNIX_EPOCH - since_epoch
        }
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(&self.rfc3339())
    }
}

/// Written as epoch milliseconds, the form the stores keep times in.
impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_i64(self.epoch_ms)
    }
}

/// Read back from epoch milliseconds; a number no time can have is an error (a stored
/// item that does not decode).
impl<'de> serde::Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let ms = i64::deserialize(deserializer)?;
        Self::from_epoch_ms(ms)
            .ok_or_else(|| serde::de::Error::custom(format!("{ms} ms is no time")))
    }
}

/// A [`Timestamp`] field stored as RFC 3339 text (`#[serde(with = "crate::clock::rfc3339")]`):
/// written as [`Timestamp::rfc3339`], read back from any RFC 3339 text; text that is not
/// one is an error (a stored item that does not decode).
pub mod rfc3339 {
    use super::Timestamp;
    use serde::de::{Error, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Timestamp, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&t.rfc3339())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Timestamp, D::Error> {
        deserializer.deserialize_str(Rfc3339Text)
    }

    /// Reads the text where the deserializer has it (every job read has one such field:
    /// read into a `String` first, it was an allocation a message).
    struct Rfc3339Text;

    impl Visitor<'_> for Rfc3339Text {
        type Value = Timestamp;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an RFC 3339 time")
        }

        fn visit_str<E: Error>(self, text: &str) -> Result<Timestamp, E> {
            Timestamp::parse_rfc3339(text)
                .ok_or_else(|| E::custom(format!("{text:?} is no RFC 3339 time")))
        }
    }

    /// The same for an optional field (`None` stored as null, or absent with
    /// `#[serde(default)]`).
    pub mod option {
        use super::Timestamp;
        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(
            t: &Option<Timestamp>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => serializer.serialize_some(&t.rfc3339()),
                None => serializer.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<Timestamp>, D::Error> {
            Ok(Option::<Present>::deserialize(deserializer)?.map(|present| present.0))
        }

        /// A time that is there, read as [`super::deserialize`] reads it.
        struct Present(Timestamp);

        impl<'de> Deserialize<'de> for Present {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                super::deserialize(deserializer).map(Present)
            }
        }
    }
}

/// A [`Timestamp`] field stored as epoch seconds (`#[serde(with = "crate::clock::epoch_secs")]`):
/// written rounded down to the second; a number no time can have is an error.
pub mod epoch_secs {
    use super::Timestamp;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Timestamp, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_i64(t.epoch_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Timestamp, D::Error> {
        let secs = i64::deserialize(deserializer)?;
        Timestamp::from_epoch_secs(secs)
            .ok_or_else(|| serde::de::Error::custom(format!("{secs} s is no time")))
    }
}

/// An optional [`Timestamp`] field stored as epoch seconds
/// (`#[serde(with = "crate::clock::epoch_secs_option")]`): written rounded down to the
/// second; a number no time can have is an error.
pub mod epoch_secs_option {
    use super::Timestamp;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        t: &Option<Timestamp>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => serializer.serialize_some(&t.epoch_secs()),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Timestamp>, D::Error> {
        Option::<i64>::deserialize(deserializer)?
            .map(|secs| {
                Timestamp::from_epoch_secs(secs)
                    .ok_or_else(|| serde::de::Error::custom(format!("{secs} s is no time")))
            })
            .transpose()
    }
}

/// RFC 3339 UTC with milliseconds, e.g. `2021-02-26T19:13:55.749Z`.
/// Written digit by digit: `format!` with its padding was 1.5 % of a Members-style
/// delivery's time in figure 2's profile (docs/benchmarks.md), for the envelope's
/// publish time.
fn rfc3339_millis(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let Ok(year) = u64::try_from(t.year()) else {
        // Before year 0: the sign first.
        return rfc3339_millis_formatted(t);
    };
    let mut text = String::with_capacity("2021-02-26T19:13:55.749Z".len());
    push_zero_padded(&mut text, year, 4);
    for (separator, n, width) in [
        ('-', u64::from(u8::from(t.month())), 2),
        ('-', u64::from(t.day()), 2),
        ('T', u64::from(t.hour()), 2),
        (':', u64::from(t.minute()), 2),
        (':', u64::from(t.second()), 2),
        ('.', u64::from(t.millisecond()), 3),
    ] {
        text.push(separator);
        push_zero_padded(&mut text, n, width);
    }
    text.push('Z');
    text
}

/// The same text through `format!`: the years before 0, and the tests' reference.
fn rfc3339_millis_formatted(t: OffsetDateTime) -> String {
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

/// Writes the decimal digits of `n` at the end of `digits`; returns where they start.
fn write_digits(n: u64, digits: &mut [u8; 20]) -> usize {
    let mut start = digits.len();
    let mut rest = n;
    loop {
        start -= 1;
        digits[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            return start;
        }
    }
}

/// Appends `n` in decimal, zero-padded to at least `width` digits (what `{:0width$}`
/// writes, without `format!`'s machinery).
pub(crate) fn push_zero_padded(out: &mut String, n: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let start = write_digits(n, &mut digits).min(digits.len().saturating_sub(width));
    out.extend(digits[start..].iter().map(|&d| char::from(d)));
}

/// `n` in decimal (what `to_string` writes), written into `digits`: a signature and its
/// timestamp header are made for every message, and `to_string` was an allocation each.
pub(crate) fn decimal(n: i64, digits: &mut [u8; 20]) -> &str {
    let mut start = write_digits(n.unsigned_abs(), digits);
    if n < 0 {
        start -= 1;
        digits[start] = b'-';
    }
    // ASCII digits and a sign: always UTF-8.
    std::str::from_utf8(&digits[start..]).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn decimal_writes_what_to_string_writes() {
        let mut digits = [0; 20];
        for n in [
            0,
            7,
            -7,
            10,
            1_795_687_200,
            -1_795_687_200,
            i64::MAX,
            i64::MIN,
        ] {
            assert_eq!(decimal(n, &mut digits), n.to_string());
        }
    }

    #[test]
    fn rfc3339_writes_what_format_writes_across_the_range() {
        let reference = |t: Timestamp| {
            rfc3339_millis_formatted(
                OffsetDateTime::from_unix_timestamp_nanos(i128::from(t.epoch_ms) * 1_000_000)
                    .unwrap(),
            )
        };
        let range = ms_range();
        let mut samples = vec![*range.start(), *range.end(), 0, -1, 1, 999, 1_000];
        // Spread over the whole range (years -9999 to 9999), ms and all.
        let step = (range.end() / 997).max(1);
        samples.extend(
            (-997..=997)
                .map(|k| (k * step + k.rem_euclid(1000)).clamp(*range.start(), *range.end())),
        );
        for ms in samples {
            let t = Timestamp::from_epoch_ms(ms).unwrap();
            assert_eq!(t.rfc3339(), reference(t), "at {ms} ms");
        }
        assert_eq!(Timestamp::UNIX_EPOCH.rfc3339(), "1970-01-01T00:00:00.000Z");
    }

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
    fn a_field_stored_as_rfc3339_text_reads_any_json_string_of_one() {
        #[derive(Debug, serde::Deserialize)]
        struct Item {
            #[serde(with = "crate::clock::rfc3339")]
            at: Timestamp,
            #[serde(default, with = "crate::clock::rfc3339::option")]
            until: Option<Timestamp>,
        }
        let read = |json: &str| serde_json::from_str::<Item>(json);
        let at = Timestamp::from_epoch_ms(1_614_366_835_749).unwrap();
        let item = read(r#"{"at": "2021-02-26T19:13:55.749Z"}"#).unwrap();
        assert_eq!((item.at, item.until), (at, None));
        // Escaped, the text is unescaped into a buffer first: read the same.
        let item = read(r#"{"at": "2021-02-26T19:13:55.749\u005A", "until": null}"#).unwrap();
        assert_eq!((item.at, item.until), (at, None));
        let item =
            read(r#"{"at": "2021-02-26T19:13:55.749Z", "until": "2021-02-26T19:13:55.749Z"}"#);
        assert_eq!(item.unwrap().until, Some(at));
        for (json, error) in [
            (
                r#"{"at": "26/02/2021"}"#,
                r#""26/02/2021" is no RFC 3339 time"#,
            ),
            (r#"{"at": 1614366835749}"#, "expected an RFC 3339 time"),
            (
                r#"{"at": "2021-02-26T19:13:55.749Z", "until": "soon"}"#,
                r#""soon" is no RFC 3339 time"#,
            ),
        ] {
            let refused = read(json).unwrap_err().to_string();
            assert!(refused.contains(error), "{json}: {refused}");
        }
    }

    #[test]
    fn stored_as_epoch_ms() {
        let t = Timestamp::from_epoch_ms(1_614_366_835_749).unwrap();
        assert_eq!(serde_json::to_string(&t).unwrap(), "1614366835749");
        assert_eq!(
            serde_json::from_str::<Timestamp>("1614366835749").unwrap(),
            t
        );
        for (case, json) in [
            ("past year 9999", "9223372036854775807"),
            ("not a number", r#""2021-02-26T19:13:55.749Z""#),
        ] {
            assert!(serde_json::from_str::<Timestamp>(json).is_err(), "{case}");
        }
    }

    #[test]
    fn to_the_millisecond() {
        let t = Timestamp::from(datetime!(2021-02-26 19:13:55.749_999 UTC));
        assert_eq!(t.rfc3339(), "2021-02-26T19:13:55.749Z");
        assert_eq!(
            t.plus(Duration::from_micros(999)),
            t,
            "less than a millisecond adds nothing"
        );
        let before_1970 = Timestamp::from(datetime!(1969-12-31 23:59:59.999_5 UTC));
        assert_eq!(before_1970.epoch_ms(), -1, "rounded down");
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
