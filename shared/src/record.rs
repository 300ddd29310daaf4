//! Record identifiers: the key of the records table, and the ORCID iD form the
//! ORCID-style routes require.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest record id accepted anywhere (DynamoDB keys allow more; nobody needs more).
pub const MAX_RECORD_ID_LEN: usize = 128;

/// The key of a person record: 1 to 128 characters of `[A-Za-z0-9._-]`.
///
/// ORCID-style routes additionally require the [`OrcidId`] form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RecordId(String);

/// Why a string is not a [`RecordId`] or [`OrcidId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRecordId {
    /// Empty, too long, or a character outside `[A-Za-z0-9._-]`.
    #[error("a record id is 1 to 128 characters of letters, digits, '.', '_' or '-'")]
    Malformed,
    /// Not of the form `dddd-dddd-dddd-dddX`.
    #[error("an ORCID iD has the form dddd-dddd-dddd-dddX")]
    NotOrcidShape,
    /// The ISO 7064 MOD 11-2 check character does not match.
    #[error("the ORCID iD's check digit is wrong (expected {expected})")]
    CheckDigit {
        /// The check character the first fifteen digits call for.
        expected: char,
    },
}

impl RecordId {
    /// Validates a record id.
    pub fn parse(s: &str) -> Result<Self, InvalidRecordId> {
        Self::check(s).map(|()| Self(s.to_owned()))
    }

    fn check(s: &str) -> Result<(), InvalidRecordId> {
        let ok = !s.is_empty()
            && s.len() <= MAX_RECORD_ID_LEN
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(())
        } else {
            Err(InvalidRecordId::Malformed)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RecordId {
    type Error = InvalidRecordId;
    /// Keeps the string once checked (a stored id is read without a second copy).
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::check(&s).map(|()| Self(s))
    }
}

impl From<RecordId> for String {
    fn from(id: RecordId) -> Self {
        id.0
    }
}

/// Lets ordered collections of ids be searched by `&str` (the order is the string order).
impl std::borrow::Borrow<str> for RecordId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An ORCID iD: `dddd-dddd-dddd-dddX` whose last character is the ISO 7064 MOD 11-2
/// check character of the first fifteen digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OrcidId(RecordId);

impl OrcidId {
    /// Parses and checks an ORCID iD.
    pub fn parse(s: &str) -> Result<Self, InvalidRecordId> {
        let bytes = s.as_bytes();
        let shape_ok = bytes.len() == 19
            && bytes.iter().enumerate().all(|(i, &b)| match i {
                4 | 9 | 14 => b == b'-',
                18 => b.is_ascii_digit() || b == b'X',
                _ => b.is_ascii_digit(),
            });
        if !shape_ok {
            return Err(InvalidRecordId::NotOrcidShape);
        }
        let digits = bytes[..18]
            .iter()
            .filter(|b| b.is_ascii_digit())
            .map(|b| u32::from(b - b'0'));
        let expected = mod_11_2_check(digits);
        if char::from(bytes[18]) != expected {
            return Err(InvalidRecordId::CheckDigit { expected });
        }
        Ok(Self(RecordId(s.to_owned())))
    }

    /// The iD as a record key.
    pub fn record_id(&self) -> &RecordId {
        &self.0
    }
}

/// ISO 7064 MOD 11-2 check character over base digits, as ORCID computes it.
fn mod_11_2_check(digits: impl Iterator<Item = u32>) -> char {
    let total = digits.fold(0, |total, d| (total + d) * 2);
    match (12 - total % 11) % 11 {
        10 => 'X',
        n => char::from_digit(n, 10).expect("n < 10"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_orcid_ids_parse() {
        for id in [
            "0000-0002-1825-0097",
            "0000-0002-1694-233X",
            "0000-0002-7465-2162",
        ] {
            let parsed = OrcidId::parse(id).unwrap_or_else(|e| panic!("{id}: {e}"));
            assert_eq!(parsed.record_id().as_str(), id);
        }
    }

    #[test]
    fn wrong_check_digit_is_refused() {
        assert_eq!(
            OrcidId::parse("0000-0002-1825-0098"),
            Err(InvalidRecordId::CheckDigit { expected: '7' })
        );
        assert_eq!(
            OrcidId::parse("0000-0002-1694-2330"),
            Err(InvalidRecordId::CheckDigit { expected: 'X' })
        );
    }

    #[test]
    fn wrong_shapes_are_refused() {
        for id in [
            "",
            "0000-0002-1825-009",
            "0000000218250097",
            "0000-0002-1825-0097 ",
            "0000-0002-1825-009x",
            "000a-0002-1825-0097",
            "0000_0002_1825_0097",
            "0000-0002-1825-00970",
        ] {
            assert_eq!(
                OrcidId::parse(id),
                Err(InvalidRecordId::NotOrcidShape),
                "{id}"
            );
        }
    }

    #[test]
    fn record_ids_are_restricted_to_safe_characters() {
        assert!(RecordId::parse("person-42_a.b").is_ok());
        for bad in ["", "a/b", "a b", "é", &"x".repeat(129)] {
            assert_eq!(
                RecordId::parse(bad),
                Err(InvalidRecordId::Malformed),
                "{bad}"
            );
        }
        assert!(RecordId::parse(&"x".repeat(128)).is_ok());
    }
}
