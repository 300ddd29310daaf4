//! Operational events on an EventBridge bus (`PutEvents`, re-sending the entries it
//! reports failed).

use crate::events::{EVENT_SOURCE, OpsEvent};

use crate::ports::{BackendError, BackendResult, OpsEvents};
use async_trait::async_trait;
use aws_sdk_eventbridge::Client;
use aws_sdk_eventbridge::error::DisplayErrorContext;
use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use std::time::Duration;

/// PutEvents takes at most 10 entries.
const BATCH: usize = 10;
/// Rounds of re-sending failed entries.
const ROUNDS: u32 = 3;

/// The bus operational events go to.
#[derive(Debug, Clone)]
pub struct EventBridgeEvents {
    client: Client,
    bus: String,
}

impl EventBridgeEvents {
    /// Events to `bus` (a name or ARN).
    pub fn new(client: Client, bus: impl Into<String>) -> Self {
        Self {
            client,
            bus: bus.into(),
        }
    }

    fn entry(&self, event: &OpsEvent) -> PutEventsRequestEntry {
        PutEventsRequestEntry::builder()
            .event_bus_name(&self.bus)
            .source(EVENT_SOURCE)
            .detail_type(event.detail_type())
            .detail(serde_json::to_string(event).expect("events serialize"))
            .build()
    }
}

#[async_trait]
impl OpsEvents for EventBridgeEvents {
    async fn publish(&self, events: &[OpsEvent]) -> BackendResult<()> {
        for chunk in events.chunks(BATCH) {
            let mut pending: Vec<PutEventsRequestEntry> =
                chunk.iter().map(|e| self.entry(e)).collect();
            for round in 0..ROUNDS {
                if round > 0 {
                    tokio::time::sleep(Duration::from_millis(100 << round)).await;
                }
                let out = match self
                    .client
                    .put_events()
                    .set_entries(Some(pending.clone()))
                    .send()
                    .await
                {
                    Ok(out) => out,
                    Err(e) => {
                        tracing::warn!(error = %DisplayErrorContext(&e), round, "PutEvents failed");
                        continue;
                    }
                };
                if out.failed_entry_count == 0 {
                    pending.clear();
                    break;
                }
                // Result entries line up with the request entries; keep the failed ones.
                pending = pending
                    .into_iter()
                    .zip(out.entries.unwrap_or_default())
                    .filter(|(_, result)| result.error_code.is_some())
                    .map(|(entry, _)| entry)
                    .collect();
            }
            if !pending.is_empty() {
                return Err(BackendError::Unavailable(format!(
                    "{} operational events not published",
                    pending.len()
                )));
            }
        }
        Ok(())
    }
}
