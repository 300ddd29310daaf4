//! ORCID-style subscriptions: one callback URL for one record, owned by one client.

use crate::callback::CallbackUrl;
use crate::clock::Timestamp;
use crate::ids::ClientId;
use crate::record::RecordId;
use serde::{Deserialize, Serialize};

/// A callback registered for a record. The pair (record, callback) is the identity;
/// only the owning client may remove it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    /// The watched record.
    pub record: RecordId,
    /// Where to POST when the record changes.
    pub callback: CallbackUrl,
    /// The OAuth client that registered it.
    pub client_id: ClientId,
    /// Registration time (stored as epoch seconds).
    #[serde(with = "crate::clock::epoch_secs")]
    pub created_at: Timestamp,
    /// Delivery health of the callback.
    #[serde(default)]
    pub health: crate::health::EndpointHealth,
}

impl Subscription {
    /// The endpoint name used in logs and operational events.
    pub fn endpoint(&self) -> String {
        endpoint_name(&self.record, &self.callback)
    }

    /// True when `client` registered it: only its owner sees, changes or removes it.
    pub fn is_owned_by(&self, client: &ClientId) -> bool {
        self.client_id == *client
    }
}

/// `subscription:<record>:<callback>`.
pub fn endpoint_name(record: &RecordId, callback: &CallbackUrl) -> String {
    // Put together by hand: `format!` took several times as long, and the delivery
    // handler looks a subscription up by this name for every message.
    const PREFIX: &str = "subscription:";
    let (record, callback) = (record.as_str(), callback.as_str());
    let mut name = String::with_capacity(PREFIX.len() + record.len() + 1 + callback.len());
    name.push_str(PREFIX);
    name.push_str(record);
    name.push(':');
    name.push_str(callback);
    name
}

/// What registering a subscription did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registered {
    /// It is new (201).
    Created,
    /// The same client had already registered it (204).
    AlreadyExists,
    /// Another client owns this (record, callback) pair (403).
    OwnedByOther,
}

impl Registered {
    /// What registering `new` does where `existing` is stored for its (record, callback):
    /// `Created` (the store then writes it) only where there is none.
    pub fn given(existing: Option<&Subscription>, new: &Subscription) -> Self {
        match existing {
            None => Self::Created,
            Some(existing) if existing.is_owned_by(&new.client_id) => Self::AlreadyExists,
            Some(_) => Self::OwnedByOther,
        }
    }
}

/// What unregistering a subscription did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unregistered {
    /// Removed (204).
    Deleted,
    /// There was none (404).
    NotFound,
    /// Another client owns it (403); nothing was removed.
    OwnedByOther,
}

impl Unregistered {
    /// What `client` unregistering does where `existing` is stored: `Deleted` (the store
    /// then removes it) only when `client` owns it.
    pub fn given(existing: Option<&Subscription>, client: &ClientId) -> Self {
        match existing {
            None => Self::NotFound,
            Some(existing) if existing.is_owned_by(client) => Self::Deleted,
            Some(_) => Self::OwnedByOther,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callback::UrlPolicy;

    fn owned_by(client: &str) -> Subscription {
        Subscription {
            record: RecordId::parse("0000-0002-1825-0097").unwrap(),
            callback: CallbackUrl::parse("https://a.example/hook", UrlPolicy::default()).unwrap(),
            client_id: client.parse().unwrap(),
            created_at: Timestamp::from_epoch_secs(1_700_000_000).unwrap(),
            health: Default::default(),
        }
    }

    #[test]
    fn only_the_owner_registers_again_or_unregisters() {
        let (mine, theirs) = (owned_by("APP-ONE"), owned_by("APP-TWO"));
        let me: ClientId = "APP-ONE".parse().unwrap();
        for (case, existing, registered, unregistered) in [
            (
                "none stored",
                None,
                Registered::Created,
                Unregistered::NotFound,
            ),
            (
                "mine stored",
                Some(&mine),
                Registered::AlreadyExists,
                Unregistered::Deleted,
            ),
            (
                "theirs stored",
                Some(&theirs),
                Registered::OwnedByOther,
                Unregistered::OwnedByOther,
            ),
        ] {
            assert_eq!(Registered::given(existing, &mine), registered, "{case}");
            assert_eq!(Unregistered::given(existing, &me), unregistered, "{case}");
        }
    }
}
