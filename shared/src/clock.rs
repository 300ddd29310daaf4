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
        // Straight from the system time's milliseconds: through `OffsetDateTime` it was a
        // calendar date worked out and 128-bit divisions, three times a delivery
        // (docs/benchmarks.md, figure 2, thirteenth pass).
        Timestamp::from(SystemTime::now())
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
    // Worked out when compiled: read per message, it was 128-bit arithmetic each time.
    const fn ms(t: time::PrimitiveDateTime) -> i64 {
        (t.assume_utc().unix_timestamp_nanos() / 1_000_000) as i64
    }
    const MIN: i64 = ms(time::PrimitiveDateTime::MIN);
    const MAX: i64 = ms(time::PrimitiveDateTime::MAX);
    MIN..=MAX
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
        // The form this code writes (every job's `created_at`) read directly; any other
        // form of RFC 3339 (offsets, other fractions, a leap second) by the `time` crate.
        civil::parse_utc_millis(text).or_else(|| {
            OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                .ok()
                .map(Self::from)
        })
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
        // Worked out from the milliseconds (a Members-style envelope's `publishTime`, in
        // every message): through `OffsetDateTime` it was 128-bit arithmetic and a
        // calendar conversion, 1 600 instructions a message (docs/benchmarks.md, figure 2,
        // thirteenth pass). Years before 0 keep the `time` crate's text.
        civil::utc_millis(self.epoch_ms).unwrap_or_else(|| {
            let t =
                OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.epoch_ms) * 1_000_000)
                    .unwrap_or(OffsetDateTime::UNIX_EPOCH);
            rfc3339_millis_formatted(t)
        })
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

/// To the millisecond (rounded down, before the epoch too); the nearest end of the range
/// for a time past it.
impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        let ms = match t.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(after) => i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
            Err(before) => {
                let before = before.duration();
                let part = u128::from(before.subsec_nanos() % 1_000_000 != 0);
                i64::try_from(before.as_millis() + part).map_or(i64::MIN, |ms| -ms)
            }
        };
        let range = ms_range();
        Self {
            epoch_ms: ms.clamp(*range.start(), *range.end()),
        }
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

/// RFC 3339 UTC text with milliseconds (`2021-02-26T19:13:55.749Z`, years 0 to 9999)
/// to and from epoch milliseconds, by the proleptic Gregorian calendar (H. Hinnant's
/// `days_from_civil` and `civil_from_days`), without the `time` crate's intermediate
/// date-time. The tests hold both to the `time` crate.
mod civil {
    use super::Timestamp;

    const MS_A_DAY: i64 = 86_400_000;
    /// Days from 0000-03-01 to 1970-01-01.
    const EPOCH_SHIFT: i64 = 719_468;
    const DAYS_AN_ERA: i64 = 146_097;

    /// The text of `epoch_ms`; `None` before year 0.
    pub(super) fn utc_millis(epoch_ms: i64) -> Option<String> {
        let (y, m, d) = civil_from_days(epoch_ms.div_euclid(MS_A_DAY));
        let year = u32::try_from(y).ok().filter(|y| *y <= 9999)?;
        let in_day = u32::try_from(epoch_ms.rem_euclid(MS_A_DAY)).ok()?;
        let mut text = *b"0000-00-00T00:00:00.000Z";
        let mut put = |at: usize, width: usize, mut n: u32| {
            for i in (at..at + width).rev() {
                text[i] = b'0' + (n % 10) as u8;
                n /= 10;
            }
        };
        put(0, 4, year);
        put(5, 2, m);
        put(8, 2, d);
        put(11, 2, in_day / 3_600_000);
        put(14, 2, in_day / 60_000 % 60);
        put(17, 2, in_day / 1000 % 60);
        put(20, 3, in_day % 1000);
        String::from_utf8(text.to_vec()).ok()
    }

    /// Text of exactly that form; `None` for anything else (left to the `time` crate).
    pub(super) fn parse_utc_millis(text: &str) -> Option<Timestamp> {
        let b = text.as_bytes();
        if b.len() != 24 || [4, 7, 10, 13, 16, 19, 23].map(|i| b[i]) != *b"--T::.Z" {
            return None;
        }
        let num = |at: usize, width: usize| {
            b[at..at + width].iter().try_fold(0u32, |n, &c| {
                c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
            })
        };
        let (y, m, d) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
        let (hh, mm, ss, ms) = (num(11, 2)?, num(14, 2)?, num(17, 2)?, num(20, 3)?);
        if !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
            return None;
        }
        if hh > 23 || mm > 59 || ss > 59 {
            return None;
        }
        let in_day = i64::from(((hh * 60 + mm) * 60 + ss) * 1000 + ms);
        Timestamp::from_epoch_ms(days_from_civil(i64::from(y), m, d) * MS_A_DAY + in_day)
    }

    fn days_in_month(y: u32, m: u32) -> u32 {
        match m {
            2 if y.is_multiple_of(4) && (!y.is_multiple_of(100) || y.is_multiple_of(400)) => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        }
    }

    /// Days since 1970-01-01 of the date `y`-`m`-`d` (`m` 1 to 12, `d` 1 to 31).
    fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y.rem_euclid(400);
        let mp = i64::from((m + 9) % 12);
        let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * DAYS_AN_ERA + doe - EPOCH_SHIFT
    }

    /// The date (year, month 1 to 12, day 1 to 31) `days` after 1970-01-01.
    fn civil_from_days(days: i64) -> (i64, u32, u32) {
        let z = days + EPOCH_SHIFT;
        let era = z.div_euclid(DAYS_AN_ERA);
        let doe = z.rem_euclid(DAYS_AN_ERA);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let y = yoe + era * 400 + i64::from(m <= 2);
        (y, m, d)
    }
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
    fn every_day_is_written_and_read_as_the_time_crate_does() {
        let well_known = &time::format_description::well_known::Rfc3339;
        let reference_parse = |text: &str| {
            OffsetDateTime::parse(text, well_known)
                .ok()
                .map(Timestamp::from)
        };
        let day = |d: i64| d * 86_400_000;
        // Every day from 1896 to 2104 (leap years, 1900, 2000 and 2100), each at a
        // different time of day; every 37th day of the years 0 to 9999.
        let days = (-27_000..=49_000).chain((-719_528..=2_932_896).step_by(37));
        for d in days {
            let ms = day(d) + (d * 7_919_993).rem_euclid(86_400_000);
            let t = Timestamp::from_epoch_ms(ms).unwrap();
            let text = t.rfc3339();
            let reference = rfc3339_millis_formatted(
                OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap(),
            );
            assert_eq!(text, reference, "written at {ms} ms");
            assert_eq!(
                Timestamp::parse_rfc3339(&text),
                Some(t),
                "read back: {text}"
            );
            assert_eq!(
                civil::parse_utc_millis(&text),
                reference_parse(&text),
                "{text}"
            );
        }
        for text in [
            "2021-02-29T00:00:00.000Z",
            "2100-02-29T00:00:00.000Z",
            "2021-04-31T00:00:00.000Z",
            "2021-13-01T00:00:00.000Z",
            "2021-00-01T00:00:00.000Z",
            "2021-01-00T00:00:00.000Z",
            "2021-01-01T24:00:00.000Z",
            "2021-01-01T00:60:00.000Z",
            "2021-01-01T00:00:00.00Z",
            "2021-01-01T00:00:00.0000",
            "2021-01-01 00:00:00.000Z",
            "2021-01-01T00:00:0x.000Z",
            "+021-01-01T00:00:00.000Z",
        ] {
            assert_eq!(civil::parse_utc_millis(text), None, "{text}");
            assert_eq!(
                Timestamp::parse_rfc3339(text),
                reference_parse(text),
                "{text}"
            );
        }
        for (text, other_form) in [
            ("2016-12-31T23:59:60.000Z", "a leap second"),
            ("2021-02-26T20:13:55.749+01:00", "an offset"),
            ("2021-02-26T19:13:55.749999Z", "microseconds"),
            ("2021-02-26T19:13:55Z", "no fraction"),
        ] {
            assert_eq!(
                Timestamp::parse_rfc3339(text),
                reference_parse(text),
                "{other_form}: {text}"
            );
        }
        assert_eq!(
            Timestamp::parse_rfc3339("2021-02-26T20:13:55.749+01:00").map(Timestamp::rfc3339),
            Some("2021-02-26T19:13:55.749Z".to_owned())
        );
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
    fn a_system_time_reads_as_its_calendar_time_does() {
        for t in [
            datetime!(2021-02-26 19:13:55.749_999 UTC),
            datetime!(1970-01-01 00:00:00 UTC),
            datetime!(1969-12-31 23:59:59.999_5 UTC),
            datetime!(1969-12-31 23:59:59.999 UTC),
            datetime!(1900-06-30 12:00:00.000_001 UTC),
            datetime!(9999-12-31 23:59:59.999_999 UTC),
        ] {
            assert_eq!(
                Timestamp::from(SystemTime::from(t)),
                Timestamp::from(t),
                "{t}"
            );
        }
        let far = SystemTime::UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        assert_eq!(
            Timestamp::from(far).rfc3339(),
            "9999-12-31T23:59:59.999Z",
            "past the range: its end"
        );
        let now = SystemClock.now();
        assert!(now > Timestamp::from(datetime!(2026-01-01 00:00:00 UTC)));
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
