//! Operational events for operators, as Svix's operational webhooks: an endpoint disabled
//! or re-enabled, a message exhausted (moved to the dead-letter queue), a full sync
//! completed, a change set aside as a poison item. Published through the
//! [`OpsEvents`](crate::ports::OpsEvents) port: to EventBridge (an operator routes them to
//! alarms or e-mail) on AWS; the local runner logs them ([`crate::memory::LoggedEvents`]).

use crate::ids::{ApplicationId, SyncId};
use crate::job::MessageId;
use serde::Serialize;

/// The `source` of every operational event.
pub const EVENT_SOURCE: &str = "person-webhooks";

/// One operational event; `detail-type` is its kind in words, `detail` its fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OpsEvent {
    /// An endpoint stopped getting deliveries.
    EndpointDisabled {
        /// `subscription:<record>:<callback>` or `application:<id>`.
        endpoint: String,
        reason: String,
    },
    /// Its owner re-enabled it.
    EndpointEnabled { endpoint: String },
    /// A message failed its last attempt and is in the dead-letter queue.
    MessageExhausted {
        /// The message id (`webhook-id`).
        message_id: MessageId,
        endpoint: String,
        attempts: u32,
        last_error: String,
    },
    /// A full sync finished.
    SyncCompleted {
        application: ApplicationId,
        sync: SyncId,
        /// Persons delivered.
        delivered: u64,
        /// Persons dead-lettered.
        failed: u64,
    },
    /// The flush set a change aside: it can never be queued as it is (see
    /// [`crate::poison`]). `webhooks-admin poison replay <poison_id>` replays it once fixed.
    ChangeSetAside {
        /// The poison item's id.
        poison_id: crate::poison::PoisonId,
        /// The changed record.
        record: String,
        /// The window it changed in.
        window: u64,
        /// The subscriber held back, or `all` when the record itself could not be read.
        endpoint: String,
        reason: String,
    },
}

impl OpsEvent {
    /// The EventBridge `detail-type`.
    pub fn detail_type(&self) -> &'static str {
        match self {
            Self::EndpointDisabled { .. } => "Endpoint Disabled",
            Self::EndpointEnabled { .. } => "Endpoint Enabled",
            Self::MessageExhausted { .. } => "Message Exhausted",
            Self::SyncCompleted { .. } => "Sync Completed",
            Self::ChangeSetAside { .. } => "Change Set Aside",
        }
    }
}
