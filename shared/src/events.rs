//! Operational events for operators, as Svix's operational webhooks: an endpoint disabled
//! or re-enabled, a message exhausted (moved to the dead-letter queue), a full sync
//! completed, a change set aside as a poison item. Published to EventBridge (an operator routes them to alarms or e-mail); the
//! local runner logs them.

use async_trait::async_trait;
use serde::Serialize;
use std::sync::Mutex;

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
        /// Why.
        reason: String,
    },
    /// Its owner re-enabled it.
    EndpointEnabled {
        /// The endpoint.
        endpoint: String,
    },
    /// A message failed its last attempt and is in the dead-letter queue.
    MessageExhausted {
        /// The message id (`webhook-id`).
        message_id: String,
        /// The endpoint.
        endpoint: String,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        last_error: String,
    },
    /// A full sync finished.
    SyncCompleted {
        /// The application.
        application: String,
        /// The sync.
        sync: String,
        /// Persons delivered.
        delivered: u64,
        /// Persons dead-lettered.
        failed: u64,
    },
    /// The flush set a change aside: it can never be queued as it is (see
    /// [`crate::poison`]). `webhooks-admin poison replay <poison_id>` replays it once fixed.
    ChangeSetAside {
        /// The poison item's id.
        poison_id: String,
        /// The changed record.
        record: String,
        /// The window it changed in.
        window: u64,
        /// The subscriber held back, or `all` when the record itself could not be read.
        endpoint: String,
        /// Why.
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

/// Where operational events go.
#[async_trait]
pub trait OpsEvents: Send + Sync {
    /// Publishes events; failures are the caller's to log (an event is never worth
    /// failing a delivery for).
    async fn publish(&self, events: &[OpsEvent]) -> crate::ports::BackendResult<()>;
}

/// Publishes one event; a failure is logged, never passed on (an operational event is
/// never worth failing a request or a delivery for).
pub async fn announce(events: &dyn OpsEvents, event: OpsEvent) {
    if let Err(e) = events.publish(&[event]).await {
        tracing::warn!(error = %e, "operational event not published");
    }
}

/// Logs events and keeps them (the local runner, tests).
#[derive(Debug, Default)]
pub struct LoggedEvents(Mutex<Vec<OpsEvent>>);

impl LoggedEvents {
    /// Every event published so far.
    pub fn published(&self) -> Vec<OpsEvent> {
        self.0.lock().expect("events lock").clone()
    }
}

#[async_trait]
impl OpsEvents for LoggedEvents {
    async fn publish(&self, events: &[OpsEvent]) -> crate::ports::BackendResult<()> {
        for event in events {
            tracing::warn!(event = %serde_json::to_string(event).unwrap_or_default(), "operational event: {}", event.detail_type());
        }
        self.0
            .lock()
            .expect("events lock")
            .extend_from_slice(events);
        Ok(())
    }
}
