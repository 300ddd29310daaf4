//! ORCID-style subscriptions: one callback URL for one record, owned by one client.

use crate::callback::CallbackUrl;
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
    /// Registration time, epoch seconds.
    pub created_at: i64,
    /// Delivery health of the callback.
    #[serde(default)]
    pub health: crate::health::EndpointHealth,
}

impl Subscription {
    /// The endpoint name used in logs and operational events.
    pub fn endpoint(&self) -> String {
        endpoint_name(&self.record, &self.callback)
    }
}

/// `subscription:<record>:<callback>`.
pub fn endpoint_name(record: &RecordId, callback: &CallbackUrl) -> String {
    format!("subscription:{record}:{callback}")
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
