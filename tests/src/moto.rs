//! The AWS side against moto server: resources created per test (unique names, so tests
//! share one server), and pollers that feed the handlers the way Lambda's event source
//! mappings do — `GetRecords` on the table's stream, `ReceiveMessage` on the queue.

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType, StreamSpecification, StreamViewType,
};
use aws_sdk_dynamodbstreams::types::ShardIteratorType;
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use std::collections::HashMap;
use std::time::Duration;
use webhooks::aws_lambda_events::event::dynamodb::{Event, EventRecord, StreamRecord};
use webhooks::aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use webhooks::handlers::Delivery;

/// The moto server the test command started.
pub fn endpoint() -> String {
    std::env::var("MOTO_ENDPOINT").expect(
        "MOTO_ENDPOINT is not set: run scripts/test, which starts moto server for these tests",
    )
}

/// SDK configuration pointing at moto.
pub async fn sdk_config() -> SdkConfig {
    sdk_config_at(&endpoint()).await
}

/// SDK configuration pointing at `endpoint` (moto, or a proxy in front of it), with moto's
/// region and credentials.
pub async fn sdk_config_at(endpoint: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "testing", "testing", None, None, "moto",
        ))
        .load()
        .await
}

/// `config` with every request through `faults` (`Faults::http_client`, the fault
/// injection point of the AWS adapters) and without the SDK's own retries, which would
/// retry most faults away.
pub fn with_faults(
    config: &SdkConfig,
    faults: &std::sync::Arc<webhooks::testing::faults::Faults>,
) -> SdkConfig {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    // The client the SDK would have chosen itself (rustls with aws-lc).
    let inner = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::AwsLc))
        .build_https();
    config
        .to_builder()
        .http_client(faults.http_client(inner))
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .build()
}

/// The ARN of the queue at `url`.
async fn queue_arn(sqs: &aws_sdk_sqs::Client, url: &str) -> String {
    sqs.get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("queue attributes")
        .attributes
        .unwrap_or_default()
        .remove(&QueueAttributeName::QueueArn)
        .expect("a queue has an ARN")
}

/// One test's tables and queues.
pub struct MotoEnv {
    pub config: SdkConfig,
    pub records_table: String,
    pub service_table: String,
    pub queue_url: String,
    pub dlq_url: String,
    /// Parked queue URL (jobs for disabled endpoints).
    pub parked_url: String,
    /// The records table's stream.
    pub stream_arn: String,
    /// The EventBridge bus for operational events.
    pub ops_bus: String,
    /// A queue the bus's rule sends every operational event to.
    pub ops_queue_url: String,
}

impl MotoEnv {
    /// Creates the tables (records with a KEYS_ONLY stream), the delivery queue and its DLQ
    /// with a redrive policy of `max_receive_count`, and the parked queue.
    pub async fn create(max_receive_count: u32) -> Self {
        Self::create_on(sdk_config().await, max_receive_count).await
    }

    /// [`Self::create`] through `config` (the benchmark's own moto connection).
    pub async fn create_on(config: SdkConfig, max_receive_count: u32) -> Self {
        let suffix = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        let dynamodb = aws_sdk_dynamodb::Client::new(&config);
        let records_table = format!("records-{suffix}");
        let service_table = format!("service-{suffix}");
        let key = |name: &str, key_type: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(key_type)
                .build()
                .unwrap()
        };
        let attr = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap()
        };
        let created = dynamodb
            .create_table()
            .table_name(&records_table)
            .key_schema(key("id", KeyType::Hash))
            .attribute_definitions(attr("id"))
            .billing_mode(BillingMode::PayPerRequest)
            .stream_specification(
                StreamSpecification::builder()
                    .stream_enabled(true)
                    // As template.yaml: change capture reads only the key.
                    .stream_view_type(StreamViewType::KeysOnly)
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .expect("create records table");
        let stream_arn = created
            .table_description
            .and_then(|t| t.latest_stream_arn)
            .expect("the records table has a stream");
        dynamodb
            .create_table()
            .table_name(&service_table)
            .key_schema(key("pk", KeyType::Hash))
            .key_schema(key("sk", KeyType::Range))
            .attribute_definitions(attr("pk"))
            .attribute_definitions(attr("sk"))
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await
            .expect("create service table");

        let sqs = aws_sdk_sqs::Client::new(&config);
        // The template pins both queues to the message size the service checks for.
        let max_size = webhooks::message::MAX_MESSAGE_BYTES.to_string();
        let dlq_url = sqs
            .create_queue()
            .queue_name(format!("delivery-dlq-{suffix}"))
            .attributes(QueueAttributeName::MaximumMessageSize, &max_size)
            .send()
            .await
            .expect("create DLQ")
            .queue_url
            .unwrap();
        let dlq_arn = queue_arn(&sqs, &dlq_url).await;
        let parked_url = sqs
            .create_queue()
            .queue_name(format!("disabled-endpoint-{suffix}"))
            .send()
            .await
            .expect("create parked queue")
            .queue_url
            .unwrap();
        let redrive = serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receive_count.to_string()});
        let queue_url = sqs
            .create_queue()
            .queue_name(format!("delivery-{suffix}"))
            .attributes(QueueAttributeName::RedrivePolicy, redrive.to_string())
            .attributes(QueueAttributeName::VisibilityTimeout, "3")
            .attributes(QueueAttributeName::MaximumMessageSize, &max_size)
            .send()
            .await
            .expect("create delivery queue")
            .queue_url
            .unwrap();
        // An operator's routing: a rule on the bus sending the service's events to a queue.
        let events = aws_sdk_eventbridge::Client::new(&config);
        let ops_bus = format!("ops-{suffix}");
        events
            .create_event_bus()
            .name(&ops_bus)
            .send()
            .await
            .expect("create bus");
        let ops_queue_url = sqs
            .create_queue()
            .queue_name(format!("ops-events-{suffix}"))
            .send()
            .await
            .expect("create ops queue")
            .queue_url
            .unwrap();
        let ops_queue_arn = queue_arn(&sqs, &ops_queue_url).await;
        events
            .put_rule()
            .name("ops-to-queue")
            .event_bus_name(&ops_bus)
            .event_pattern(r#"{"source": ["person-webhooks"]}"#)
            .send()
            .await
            .expect("put rule");
        events
            .put_targets()
            .rule("ops-to-queue")
            .event_bus_name(&ops_bus)
            .targets(
                aws_sdk_eventbridge::types::Target::builder()
                    .id("queue")
                    .arn(ops_queue_arn)
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .expect("put targets");
        Self {
            config,
            records_table,
            service_table,
            queue_url,
            dlq_url,
            parked_url,
            stream_arn,
            ops_bus,
            ops_queue_url,
        }
    }

    /// Settings naming this environment's resources.
    pub fn settings(&self) -> webhooks::config::Settings {
        let env = HashMap::from([
            ("SERVICE_TABLE", self.service_table.clone()),
            ("RECORDS_TABLE", self.records_table.clone()),
            ("DELIVERY_QUEUE_URL", self.queue_url.clone()),
            ("DEAD_LETTER_QUEUE_URL", self.dlq_url.clone()),
            ("DISABLED_ENDPOINT_QUEUE_URL", self.parked_url.clone()),
            ("OPS_EVENT_BUS", self.ops_bus.clone()),
        ]);
        webhooks::config::Settings::from_lookup(|name| env.get(name).cloned()).unwrap()
    }

    /// Operational events the bus's rule delivered to the ops queue (received, deleted).
    pub async fn ops_events(&self) -> Vec<serde_json::Value> {
        let sqs = aws_sdk_sqs::Client::new(&self.config);
        let out = sqs
            .receive_message()
            .queue_url(&self.ops_queue_url)
            .max_number_of_messages(10)
            .send()
            .await
            .unwrap();
        let mut events = Vec::new();
        for message in out.messages.unwrap_or_default() {
            if let Some(body) = &message.body {
                events.push(serde_json::from_str(body).unwrap());
            }
            sqs.delete_message()
                .queue_url(&self.ops_queue_url)
                .receipt_handle(message.receipt_handle.unwrap())
                .send()
                .await
                .unwrap();
        }
        events
    }

    /// Bodies of the messages in the dead-letter queue (received, not deleted).
    pub async fn dead_letters(&self) -> Vec<String> {
        self.peek(&self.dlq_url).await
    }

    /// Bodies of the messages in the parked queue (received, not deleted).
    pub async fn parked(&self) -> Vec<String> {
        self.peek(&self.parked_url).await
    }

    /// Bodies of the messages in the delivery queue (received, not deleted).
    pub async fn queued(&self) -> Vec<String> {
        self.peek(&self.queue_url).await
    }

    /// Every item of one partition of the service table, as stored, in sort-key order.
    pub async fn partition(&self, pk: &str) -> Vec<HashMap<String, AttributeValue>> {
        let dynamodb = aws_sdk_dynamodb::Client::new(&self.config);
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let out = dynamodb
                .query()
                .table_name(&self.service_table)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", AttributeValue::S(pk.to_owned()))
                .set_exclusive_start_key(start)
                .send()
                .await
                .unwrap();
            items.extend(out.items.unwrap_or_default());
            start = out.last_evaluated_key;
            if start.is_none() {
                return items;
            }
        }
    }

    /// Up to ten message bodies of a queue, left visible.
    async fn peek(&self, queue_url: &str) -> Vec<String> {
        let sqs = aws_sdk_sqs::Client::new(&self.config);
        let out = sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .visibility_timeout(0)
            .send()
            .await
            .unwrap();
        out.messages
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| m.body)
            .collect()
    }
}

/// Reads the records table's stream like the Lambda event source mapping does.
pub struct StreamPoller {
    client: aws_sdk_dynamodbstreams::Client,
    iterators: Vec<String>,
}

impl StreamPoller {
    /// Starts at the beginning (TRIM_HORIZON) of every shard.
    pub async fn start(env: &MotoEnv) -> Self {
        let client = aws_sdk_dynamodbstreams::Client::new(&env.config);
        let description = client
            .describe_stream()
            .stream_arn(&env.stream_arn)
            .send()
            .await
            .expect("describe stream")
            .stream_description
            .unwrap();
        let mut iterators = Vec::new();
        for shard in description.shards.unwrap_or_default() {
            let iterator = client
                .get_shard_iterator()
                .stream_arn(&env.stream_arn)
                .shard_id(shard.shard_id.unwrap())
                .shard_iterator_type(ShardIteratorType::TrimHorizon)
                .send()
                .await
                .expect("get shard iterator")
                .shard_iterator
                .unwrap();
            iterators.push(iterator);
        }
        Self { client, iterators }
    }

    /// Every stream record written since the last poll, as one Lambda event.
    pub async fn poll(&mut self) -> Event {
        let mut event = Event::default();
        for iterator in &mut self.iterators {
            let out = self
                .client
                .get_records()
                .shard_iterator(iterator.clone())
                .send()
                .await
                .expect("get records");
            if let Some(next) = out.next_shard_iterator {
                *iterator = next;
            }
            event.records.extend(
                out.records
                    .unwrap_or_default()
                    .into_iter()
                    .map(to_lambda_record),
            );
        }
        event
    }
}

fn to_lambda_item(
    item: Option<HashMap<String, aws_sdk_dynamodbstreams::types::AttributeValue>>,
) -> serde_dynamo::Item {
    let Some(item) = item else {
        return Default::default();
    };
    let json: serde_json::Value = serde_dynamo::from_item(item).expect("stream image converts");
    serde_dynamo::to_item(json).expect("JSON object converts")
}

fn to_lambda_record(record: aws_sdk_dynamodbstreams::types::Record) -> EventRecord {
    let data = record.dynamodb.expect("stream records carry their change");
    let mut change = StreamRecord::default();
    change.approximate_creation_date_time = chrono::Utc::now();
    change.keys = to_lambda_item(data.keys);
    change.new_image = to_lambda_item(data.new_image);
    change.old_image = to_lambda_item(data.old_image);
    change.sequence_number = data.sequence_number;
    change.size_bytes = data.size_bytes.unwrap_or_default();
    let mut lambda = EventRecord::default();
    lambda.event_id = record.event_id.unwrap_or_default();
    lambda.event_name = record
        .event_name
        .map(|n| n.as_str().to_owned())
        .unwrap_or_default();
    lambda.event_source = record.event_source;
    lambda.event_version = record.event_version;
    lambda.aws_region = record.aws_region.unwrap_or_default();
    lambda.change = change;
    lambda
}

/// Feeds the delivery handler from the queue like the Lambda SQS event source does:
/// receive, invoke, delete what the handler did not report as failed.
pub struct QueuePoller {
    client: aws_sdk_sqs::Client,
    queue_url: String,
}

impl QueuePoller {
    /// A poller of `queue_url`.
    pub fn new(env: &MotoEnv) -> Self {
        Self {
            client: aws_sdk_sqs::Client::new(&env.config),
            queue_url: env.queue_url.clone(),
        }
    }

    /// One receive (long poll of `wait`) and invocation; returns the messages handled.
    pub async fn run_once(&self, delivery: &Delivery, wait: Duration) -> usize {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(wait.as_secs() as i32)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .expect("receive message");
        let messages = out.messages.unwrap_or_default();
        if messages.is_empty() {
            return 0;
        }
        let mut event = SqsEvent::default();
        let mut receipts = HashMap::new();
        for message in messages {
            let mut lambda = SqsMessage::default();
            lambda.message_id = message.message_id.clone();
            lambda.receipt_handle = message.receipt_handle.clone();
            lambda.body = message.body;
            lambda.attributes = message
                .attributes
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k.as_str().to_owned(), v))
                .collect();
            lambda.event_source = Some("aws:sqs".into());
            receipts.insert(
                message.message_id.unwrap_or_default(),
                message.receipt_handle.unwrap_or_default(),
            );
            event.records.push(lambda);
        }
        let handled = event.records.len();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let response = delivery.handle(event, deadline).await;
        for (message_id, receipt) in receipts {
            if !response
                .batch_item_failures
                .iter()
                .any(|f| f.item_identifier == message_id)
            {
                self.client
                    .delete_message()
                    .queue_url(&self.queue_url)
                    .receipt_handle(receipt)
                    .send()
                    .await
                    .expect("delete message");
            }
        }
        handled
    }
}

/// The AWS adapter set on one fresh moto environment, for the adapter contract: its
/// delivery queue hides received messages for 3 s and dead-letters on the third receive.
pub async fn contract_adapters() -> webhooks::testing::contract::Adapters {
    use webhooks::testing::contract::{Adapters, QueueSettings};
    let env = MotoEnv::create(2).await;
    let aws = webhooks::aws::AwsServices::new(&env.config, env.settings());
    Adapters {
        ports: aws.ports(),
        parked: aws.queue.clone(),
        harness: std::sync::Arc::new(MotoHarness {
            sqs: aws_sdk_sqs::Client::new(&env.config),
            records: aws.records.clone(),
            env,
        }),
        queue: QueueSettings {
            visibility_timeout: Duration::from_secs(3),
            max_receive_count: 2,
        },
    }
}

/// The registry's and the SQS event source's side of a moto environment.
struct MotoHarness {
    env: MotoEnv,
    sqs: aws_sdk_sqs::Client,
    records: std::sync::Arc<webhooks::aws::dynamodb::DynamoRecords>,
}

#[async_trait::async_trait]
impl webhooks::testing::contract::Harness for MotoHarness {
    async fn put_person(&self, id: &webhooks::record::RecordId, person: &webhooks::ports::Person) {
        self.records
            .put_person(id, person)
            .await
            .expect("put person");
    }

    async fn receive(&self, max: usize, wait: Duration) -> Vec<webhooks::memory::ReceivedMessage> {
        let out = self
            .sqs
            .receive_message()
            .queue_url(&self.env.queue_url)
            .max_number_of_messages(max.clamp(1, 10) as i32)
            .wait_time_seconds(wait.as_secs_f64().ceil() as i32)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .expect("receive message");
        out.messages
            .unwrap_or_default()
            .into_iter()
            .map(|m| {
                let attributes = m.attributes.unwrap_or_default();
                let number = |name: MessageSystemAttributeName| -> u128 {
                    attributes
                        .get(&name)
                        .and_then(|v| v.parse().ok())
                        .unwrap_or_default()
                };
                webhooks::memory::ReceivedMessage {
                    message_id: m.message_id.unwrap_or_default(),
                    receipt_handle: m.receipt_handle.unwrap_or_default(),
                    body: m.body.unwrap_or_default(),
                    receive_count: number(MessageSystemAttributeName::ApproximateReceiveCount)
                        as u32,
                    sent_at_ms: number(MessageSystemAttributeName::SentTimestamp),
                    first_received_at_ms: number(
                        MessageSystemAttributeName::ApproximateFirstReceiveTimestamp,
                    ),
                }
            })
            .collect()
    }

    async fn dead_letters(&self) -> Vec<String> {
        self.env.dead_letters().await
    }
}
