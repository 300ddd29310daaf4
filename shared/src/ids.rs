//! The ids of clients, applications and full syncs. Each is parsed once where it comes in
//! (an API path or body, a stored item, a queue message, a command line) and carried as
//! its type from there, so a function taking a [`ClientId`] cannot be handed an
//! application's id, and an id that does not follow its rule never gets past the edge.
//! Record ids are in [`crate::record`], message ids in [`crate::job`].

use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest client or application id accepted.
pub const MAX_NAME_ID_LEN: usize = 64;

/// Why a string is not an id of its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidId {
    /// Not a [`ClientId`].
    #[error("a client id is 1 to 64 characters of letters, digits, '.', '_' or '-'")]
    Client,
    /// Not an [`ApplicationId`].
    #[error("an application id is 1 to 64 characters of letters, digits, '.', '_' or '-'")]
    Application,
    /// Not a [`SyncId`].
    #[error("a sync id is 'sync_' and 32 lowercase hex digits")]
    Sync,
}

/// The rule client and application ids share: 1 to 64 of `[A-Za-z0-9._-]` (safe in a
/// path segment and in a storage key).
fn is_name_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// What every id type has besides its rule: its text, display, conversions from and to
/// `String` (serde goes through them, so reading a stored id checks it) and `FromStr`.
macro_rules! id_text {
    ($name:ident) => {
        impl $name {
            /// Checks an id given as text.
            pub fn parse(s: &str) -> Result<Self, InvalidId> {
                Self::check(s).map(|()| Self(s.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        /// As text, padded like a string (`{:<24}` lines up a column).
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidId;
            /// Keeps the string once checked (a stored id is read without a second copy).
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::check(&s).map(|()| Self(s))
            }
        }

        impl std::str::FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> Self {
                id.0
            }
        }

        /// Lets maps keyed by the id be searched by `&str` (the same hash and order).
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

/// An OAuth client's id, e.g. `APP-NPXKK6HFN6TJ4YYI`: 1 to 64 of `[A-Za-z0-9._-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClientId(String);

impl ClientId {
    /// Checks a client id.
    fn check(s: &str) -> Result<(), InvalidId> {
        if is_name_id(s) {
            Ok(())
        } else {
            Err(InvalidId::Client)
        }
    }

    /// A new client id in the ORCID style: `APP-` and 16 upper-case letters and digits.
    pub fn generate() -> Self {
        let digits = uuid::Uuid::new_v4().simple().to_string()[..16].to_ascii_uppercase();
        Self(format!("APP-{digits}"))
    }
}

id_text!(ClientId);

/// A Members-style application's id: 1 to 64 of `[A-Za-z0-9._-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ApplicationId(String);

impl ApplicationId {
    /// Checks an application id.
    fn check(s: &str) -> Result<(), InvalidId> {
        if is_name_id(s) {
            Ok(())
        } else {
            Err(InvalidId::Application)
        }
    }
}

id_text!(ApplicationId);

/// A full sync's id: `sync_` and 32 lowercase hex digits (a random UUID).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SyncId(String);

impl SyncId {
    /// Checks a sync id.
    fn check(s: &str) -> Result<(), InvalidId> {
        let hex = s.strip_prefix("sync_").ok_or(InvalidId::Sync)?;
        if hex.len() == 32 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(())
        } else {
            Err(InvalidId::Sync)
        }
    }

    /// A new random sync id.
    pub fn generate() -> Self {
        Self(format!("sync_{}", uuid::Uuid::new_v4().simple()))
    }
}

id_text!(SyncId);

/// A full sync as the sync store keys it: the application and its sync.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SyncKey {
    /// The application the sync sends to.
    pub application: ApplicationId,
    pub sync: SyncId,
}

impl fmt::Display for SyncKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.application, self.sync)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids() {
        for (case, text) in [
            ("the ORCID style", "APP-NPXKK6HFN6TJ4YYI"),
            ("one character", "a"),
            ("dots, dashes, underscores", "a.b_c-d"),
            ("64 characters", &"x".repeat(64)),
        ] {
            assert_eq!(
                ClientId::parse(text).map(String::from).as_deref(),
                Ok(text),
                "{case}"
            );
        }
        for (case, text) in [
            ("empty", ""),
            ("65 characters", &"x".repeat(65)),
            ("a slash", "a/b"),
            ("a space", "a b"),
            ("a colon", "a:b"),
            ("non-ASCII", "é"),
        ] {
            assert_eq!(ClientId::parse(text), Err(InvalidId::Client), "{case}");
        }
        let generated = ClientId::generate();
        assert_eq!(ClientId::parse(generated.as_str()), Ok(generated.clone()));
        assert!(generated.as_str().starts_with("APP-") && generated.as_str().len() == 20);
    }

    #[test]
    fn application_ids() {
        for (case, text) in [
            ("a plain name", "app-1"),
            ("64 characters", &"x".repeat(64)),
        ] {
            assert!(ApplicationId::parse(text).is_ok(), "{case}");
        }
        for (case, text) in [
            ("empty", ""),
            ("65 characters", &"x".repeat(65)),
            ("a hash, the storage key separator", "a#b"),
            ("a slash", "a/b"),
            ("percent-encoded", "a%20b"),
        ] {
            assert_eq!(
                ApplicationId::parse(text),
                Err(InvalidId::Application),
                "{case}"
            );
        }
    }

    #[test]
    fn sync_ids() {
        let generated = SyncId::generate();
        assert_eq!(SyncId::parse(generated.as_str()), Ok(generated));
        assert!(SyncId::parse("sync_0123456789abcdef0123456789abcdef").is_ok());
        for (case, text) in [
            ("empty", ""),
            ("no prefix", "0123456789abcdef0123456789abcdef"),
            ("another prefix", "msg_0123456789abcdef0123456789abcdef"),
            ("31 digits", "sync_0123456789abcdef0123456789abcde"),
            ("33 digits", "sync_0123456789abcdef0123456789abcdef0"),
            ("upper-case hex", "sync_0123456789ABCDEF0123456789abcdef"),
            ("not hex", "sync_0123456789abcdef0123456789abcdeg"),
        ] {
            assert_eq!(SyncId::parse(text), Err(InvalidId::Sync), "{case}");
        }
    }

    #[test]
    fn ids_are_checked_when_read_back() {
        let stored: Result<ApplicationId, _> = serde_json::from_str(r#""app-1""#);
        assert_eq!(stored.unwrap().as_str(), "app-1");
        for (case, json) in [
            ("an application id with a slash", r#""a/b""#),
            ("an empty application id", r#""""#),
        ] {
            assert!(
                serde_json::from_str::<ApplicationId>(json).is_err(),
                "{case}"
            );
        }
        assert!(serde_json::from_str::<SyncId>(r#""sync_x""#).is_err());
        assert!(serde_json::from_str::<ClientId>(r#""a b""#).is_err());
        assert_eq!(
            serde_json::to_string(&ClientId::parse("APP-1").unwrap()).unwrap(),
            r#""APP-1""#,
            "written as a plain string"
        );
        assert_eq!(
            format!("[{:<7}]", ClientId::parse("APP-1").unwrap()),
            "[APP-1  ]",
            "displayed as a string is, padding included"
        );
    }
}
