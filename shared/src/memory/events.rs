//! The in-memory operational events adapter.

use crate::events::OpsEvent;
use crate::ports::{BackendResult, OpsEvents};
use async_trait::async_trait;
use std::sync::Mutex;

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
    async fn publish(&self, events: &[OpsEvent]) -> BackendResult<()> {
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
