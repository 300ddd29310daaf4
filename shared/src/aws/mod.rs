//! The AWS adapters and the wiring the Lambda `main`s use: SDK clients built once per
//! process, handlers built over them.

pub mod connections;
pub mod dynamodb;
pub mod eventbridge;
pub mod sqs;

use crate::clock::{Clock, SystemClock, Timestamp};
use crate::config::Settings;
use crate::handlers::{ChangeCapture, Delivery, Flush, Registration};
use crate::http_client::CallbackClient;
use crate::ports::Ports;
use crate::window::ClockWindows;
use dynamodb::{DynamoRecords, DynamoStore};
use eventbridge::EventBridgeEvents;
use sqs::SqsQueue;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// An SDK call's failure as a backend error a later call may not meet (throttling, a
/// service error, no connection), with the SDK's whole error chain as its text. Each
/// adapter tells apart, in one helper of its own, the failures that are not this: an
/// unmet DynamoDB condition (`dynamodb::applied`), a message SQS refuses for good
/// ([`sqs::refusal_of`]).
fn unavailable<E: std::error::Error>(e: E) -> crate::ports::BackendError {
    // The smithy type every SDK crate re-exports.
    crate::ports::BackendError::Unavailable(aws_sdk_sqs::error::DisplayErrorContext(&e).to_string())
}

/// Time kept in hand before a Lambda invocation's deadline, for saving progress.
pub const DEADLINE_MARGIN: Duration = Duration::from_secs(15);

/// The instant a handler should stop starting new work, given the invocation deadline
/// (epoch milliseconds, as the Lambda context gives it).
pub fn stop_before(deadline_epoch_ms: u64, now: Timestamp) -> Instant {
    let now_ms = u64::try_from(now.epoch_ms()).unwrap_or_default();
    let left = Duration::from_millis(deadline_epoch_ms.saturating_sub(now_ms));
    Instant::now() + left.saturating_sub(DEADLINE_MARGIN)
}

/// `config` with environment settings that are set but empty treated as unset.
///
/// The template declares `AWS_ENDPOINT_URL` with an empty default (`sam local` passes a
/// function only the variables the template declares), so every deployed function has it
/// set and empty; each SDK client would take "" as its endpoint and panic on the first
/// request ("URL was unset").
fn without_empty_settings(config: &aws_config::SdkConfig) -> aws_config::SdkConfig {
    match config.service_config() {
        None => config.clone(),
        Some(_) => config
            .to_builder()
            .service_config(NonEmptySettings(config.clone()))
            .build(),
    }
}

/// The settings of the wrapped configuration's environment, without empty values.
#[derive(Debug)]
struct NonEmptySettings(aws_config::SdkConfig);

impl aws_types::service_config::LoadServiceConfig for NonEmptySettings {
    fn load_config(&self, key: aws_types::service_config::ServiceConfigKey<'_>) -> Option<String> {
        self.0
            .service_config()?
            .load_config(key)
            .filter(|value| !value.trim().is_empty())
    }
}

/// The adapters over one SDK configuration.
#[derive(Clone)]
pub struct AwsServices {
    pub store: Arc<DynamoStore>,
    pub records: Arc<DynamoRecords>,
    pub queue: Arc<SqsQueue>,
    pub events: Arc<EventBridgeEvents>,
    pub settings: Settings,
    /// The one clock of the handlers and the adapters.
    pub clock: Arc<dyn Clock>,
}

impl AwsServices {
    /// Loads the SDK configuration from the environment (honours `AWS_ENDPOINT_URL`); the
    /// clients share one HTTPS client that connects on the first request.
    pub async fn load(settings: Settings) -> Self {
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(connections::sdk_https_client())
            .load()
            .await;
        Self::new(&config, settings)
    }

    /// The adapters over `config`.
    pub fn new(config: &aws_config::SdkConfig, settings: Settings) -> Self {
        if settings.allow_insecure_callbacks {
            tracing::warn!(
                "ALLOW_INSECURE_CALLBACKS=true: plain http and private callback addresses are \
                 accepted and delivered to (meant for the local emulator only)"
            );
        }
        let config = &without_empty_settings(config);
        let dynamodb = aws_sdk_dynamodb::Client::new(config);
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        Self {
            store: Arc::new(
                DynamoStore::new(dynamodb.clone(), &settings.service_table, clock.clone())
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
            clock,
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
            clock: self.clock.clone(),
        }
    }

    fn windows(&self) -> Arc<ClockWindows> {
        Arc::new(ClockWindows::new(
            self.clock.clone(),
            self.settings.flush_interval,
            self.settings.flush_grace,
        ))
    }

    fn http(&self) -> CallbackClient {
        CallbackClient::new(&self.settings.http()).with_clock(self.clock.clone())
    }

    pub fn registration(&self) -> Registration {
        Registration {
            ports: self.ports(),
            http: self.http(),
            settings: self.settings.api(),
        }
    }

    pub fn change_capture(&self) -> ChangeCapture {
        ChangeCapture {
            pending: self.store.clone(),
            windows: self.windows(),
        }
    }

    pub fn flush(&self) -> Flush {
        Flush {
            ports: self.ports(),
            windows: self.windows(),
            settings: self.settings.flush(),
            delivery: Some(self.delivery()),
        }
    }

    pub fn delivery(&self) -> Delivery {
        Delivery::new(self.ports(), self.http(), self.settings.delivery())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::ClientStore;
    use aws_sdk_dynamodb::config::{Credentials, Region, SharedCredentialsProvider};
    use aws_types::service_config::{LoadServiceConfig, ServiceConfigKey};
    use std::collections::HashMap;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Environment variables as the SDK's loader hands them to each service client.
    #[derive(Debug)]
    struct Environment(HashMap<&'static str, &'static str>);

    impl LoadServiceConfig for Environment {
        fn load_config(&self, key: ServiceConfigKey<'_>) -> Option<String> {
            self.0.get(key.env()).map(|v| v.to_string())
        }
    }

    /// Answers one DynamoDB request with an empty JSON object (GetItem: no item).
    async fn one_answer_server() -> (String, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // Headers, then as many body bytes as content-length says.
            loop {
                let n = socket.read(&mut buf).await.unwrap();
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request).to_lowercase();
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if request.len() >= end + 4 + length {
                        break;
                    }
                }
                assert!(n > 0, "connection closed mid-request");
            }
            let body = "{}";
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/x-amz-json-1.0\r\n\
                 content-length: {}\r\n\r\n{body}",
                body.len()
            );
            socket.write_all(response.as_bytes()).await.unwrap();
        });
        (url, server)
    }

    fn settings() -> Settings {
        let env = HashMap::from([
            ("SERVICE_TABLE", "svc"),
            ("RECORDS_TABLE", "rec"),
            ("DELIVERY_QUEUE_URL", "http://127.0.0.1:9/q"),
            ("DEAD_LETTER_QUEUE_URL", "http://127.0.0.1:9/dlq"),
            ("DISABLED_ENDPOINT_QUEUE_URL", "http://127.0.0.1:9/disabled"),
        ]);
        Settings::from_lookup(|name| env.get(name).map(|v| v.to_string())).unwrap()
    }

    /// An SDK configuration with test credentials whose clients send to `url`.
    fn config_to(url: &str) -> aws_types::sdk_config::Builder {
        aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(Region::new("eu-west-1"))
            .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
                "AKIDTEST", "secret", None, None, "test",
            )))
            .endpoint_url(url)
    }

    /// Reads a client through services built on `config`: the one-answer server's empty
    /// answer is "no such client", so `Ok(None)` says the request reached it.
    async fn reaches(config: &aws_config::SdkConfig, server: tokio::task::JoinHandle<()>) {
        let services = AwsServices::new(config, settings());
        let client = tokio::time::timeout(
            Duration::from_secs(20),
            services
                .store
                .get_client(&"APP-NPXKK6HFN6TJ4YYI".parse().unwrap()),
        )
        .await
        .expect("the request did not finish");
        assert!(matches!(client, Ok(None)), "{client:?}");
        server.await.unwrap();
    }

    /// The template declares `AWS_ENDPOINT_URL` with an empty default (SAM passes only
    /// declared variables to `sam local`): deployed, the variable is set and empty, and the
    /// clients must then use their normal endpoint, not "".
    #[tokio::test]
    async fn an_empty_aws_endpoint_url_is_as_if_unset() {
        let (url, server) = one_answer_server().await;
        // The server's URL stands for the endpoint the SDK would otherwise resolve (a real
        // one is not reachable from a test).
        let config = config_to(&url)
            .service_config(Environment(HashMap::from([("AWS_ENDPOINT_URL", "")])))
            .build();
        reaches(&config, server).await;
    }

    /// The HTTPS client `load` gives the SDK clients (it builds its connector on the first
    /// request) carries their requests.
    #[tokio::test]
    async fn the_clients_of_load_reach_their_endpoint() {
        let (url, server) = one_answer_server().await;
        let config = config_to(&url)
            .http_client(connections::sdk_https_client())
            .build();
        reaches(&config, server).await;
    }
}
