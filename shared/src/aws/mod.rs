//! The AWS adapters and the wiring the Lambda `main`s use: SDK clients built once per
//! process, handlers built over them.

pub mod dynamodb;
pub mod eventbridge;
pub mod sqs;

use crate::clock::SystemClock;
use crate::config::Settings;
use crate::handlers::{ChangeCapture, Delivery, Flush, Registration};
use crate::http_client::CallbackClient;
use crate::ports::Ports;
use crate::window::ClockWindows;
use dynamodb::{DynamoRecords, DynamoStore};
use eventbridge::EventBridgeEvents;
use sqs::SqsQueue;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// Time kept in hand before a Lambda invocation's deadline, for saving progress.
pub const DEADLINE_MARGIN: Duration = Duration::from_secs(15);

/// The instant a handler should stop starting new work, given the invocation deadline
/// (epoch milliseconds, as the Lambda context gives it).
pub fn stop_before(deadline_epoch_ms: u64) -> Instant {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    let left = Duration::from_millis(deadline_epoch_ms.saturating_sub(now_ms));
    Instant::now() + left.saturating_sub(DEADLINE_MARGIN)
}

/// The adapters over one SDK configuration.
#[derive(Clone)]
pub struct AwsServices {
    /// The service table.
    pub store: Arc<DynamoStore>,
    /// The records table.
    pub records: Arc<DynamoRecords>,
    /// The delivery queue.
    pub queue: Arc<SqsQueue>,
    /// Operational events.
    pub events: Arc<EventBridgeEvents>,
    /// Settings.
    pub settings: Settings,
}

impl AwsServices {
    /// Loads the SDK configuration from the environment (honours `AWS_ENDPOINT_URL`).
    pub async fn load(settings: Settings) -> Self {
        let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        Self::new(&config, settings)
    }

    /// The adapters over `config`.
    pub fn new(config: &aws_config::SdkConfig, settings: Settings) -> Self {
        let dynamodb = aws_sdk_dynamodb::Client::new(config);
        Self {
            store: Arc::new(
                DynamoStore::new(dynamodb.clone(), &settings.service_table)
                    .with_attempt_retention(settings.attempt_retention),
            ),
            records: Arc::new(DynamoRecords::new(dynamodb, &settings.records_table)),
            queue: Arc::new(
                SqsQueue::new(
                    aws_sdk_sqs::Client::new(config),
                    &settings.delivery_queue_url,
                    &settings.dead_letter_queue_url,
                )
                .with_parked_queue(&settings.disabled_endpoint_queue_url),
            ),
            events: Arc::new(EventBridgeEvents::new(
                aws_sdk_eventbridge::Client::new(config),
                &settings.ops_event_bus,
            )),
            settings,
        }
    }

    /// Every port over the AWS adapters.
    pub fn ports(&self) -> Ports {
        Ports {
            clients: self.store.clone(),
            tokens: self.store.clone(),
            subscriptions: self.store.clone(),
            applications: self.store.clone(),
            syncs: self.store.clone(),
            pending: self.store.clone(),
            attempts: self.store.clone(),
            records: self.records.clone(),
            queue: self.queue.clone(),
            events: self.events.clone(),
            clock: Arc::new(SystemClock),
        }
    }

    fn windows(&self) -> Arc<ClockWindows> {
        Arc::new(ClockWindows::new(
            Arc::new(SystemClock),
            self.settings.flush_interval,
            self.settings.flush_grace,
        ))
    }

    fn http(&self) -> CallbackClient {
        CallbackClient::new(&self.settings.http())
    }

    /// The registration handler.
    pub fn registration(&self) -> Registration {
        Registration {
            ports: self.ports(),
            http: self.http(),
            settings: self.settings.api(),
        }
    }

    /// The change-capture handler.
    pub fn change_capture(&self) -> ChangeCapture {
        ChangeCapture {
            pending: self.store.clone(),
            windows: self.windows(),
        }
    }

    /// The flush handler.
    pub fn flush(&self) -> Flush {
        Flush {
            ports: self.ports(),
            windows: self.windows(),
            settings: self.settings.flush(),
        }
    }

    /// The delivery handler.
    pub fn delivery(&self) -> Delivery {
        Delivery::new(self.ports(), self.http(), self.settings.delivery())
    }
}
