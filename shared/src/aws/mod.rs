//! The AWS adapters and the wiring the Lambda `main`s use: SDK clients built once per
//! process, handlers built over them.

pub mod dynamodb;
pub mod sqs;

use crate::clock::{Clock, SystemClock};
use crate::config::Settings;
use crate::handlers::{ChangeCapture, Delivery, Flush, Registration};
use crate::http_client::CallbackClient;
use crate::window::ClockWindows;
use dynamodb::{DynamoRecords, DynamoStore};
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
            store: Arc::new(DynamoStore::new(dynamodb.clone(), &settings.service_table)),
            records: Arc::new(DynamoRecords::new(dynamodb, &settings.records_table)),
            queue: Arc::new(SqsQueue::new(
                aws_sdk_sqs::Client::new(config),
                &settings.delivery_queue_url,
            )),
            settings,
        }
    }

    fn clock() -> Arc<dyn Clock> {
        Arc::new(SystemClock)
    }

    fn windows(&self) -> Arc<ClockWindows> {
        Arc::new(ClockWindows::new(
            Self::clock(),
            self.settings.flush_interval,
            self.settings.flush_grace,
        ))
    }

    /// The registration handler.
    pub fn registration(&self) -> Registration {
        Registration {
            clients: self.store.clone(),
            tokens: self.store.clone(),
            subscriptions: self.store.clone(),
            records: self.records.clone(),
            clock: Self::clock(),
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
            pending: self.store.clone(),
            subscriptions: self.store.clone(),
            queue: self.queue.clone(),
            windows: self.windows(),
            clock: Self::clock(),
            settings: self.settings.flush(),
        }
    }

    /// The delivery handler.
    pub fn delivery(&self) -> Delivery {
        Delivery {
            queue: self.queue.clone(),
            http: CallbackClient::new(&self.settings.http()),
            settings: self.settings.delivery(),
        }
    }
}
