//! The local runner: the same handlers as the four Lambdas, over the in-memory adapters,
//! wired the way AWS wires them — an HTTP server in front of `registration` (like API
//! Gateway's `$default` route), record writes that feed `change-capture` the stream
//! record DynamoDB would emit, a timer that runs `flush` (like the EventBridge schedule),
//! and delivery workers that poll the in-memory SQS queue and call `delivery` with an
//! SQS batch, deleting what it acknowledged (like the Lambda SQS event source).

mod duration;
mod http;

pub use duration::parse_duration;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, watch};
use tokio::task::JoinSet;
use webhooks::application::Application;
use webhooks::aws_lambda_events::event::dynamodb::{Event, EventRecord};
use webhooks::aws_lambda_events::event::sqs::SqsEvent;
use webhooks::callback::UrlPolicy;
use webhooks::clock::{Clock, SystemClock};
use webhooks::handlers::{
    ApiSettings, ChangeCapture, Delivery, DeliverySettings, Flush, FlushReport, FlushSettings,
    ParkedReplay, ParkedReplayer, Registration,
};
use webhooks::health::HealthPolicy;
use webhooks::http_client::{CallbackClient, HttpSettings};
use webhooks::memory::LoggedEvents;
use webhooks::memory::{MemoryQueue, MemoryRecords, MemoryStore, QueueDepth};
use webhooks::oauth::{OAuthClient, new_client_id, new_secret};
use webhooks::ports::{ApplicationStore, BackendError, ClientStore, Person};
use webhooks::record::RecordId;
use webhooks::retry::RetryPolicy;
use webhooks::window::{FlushWindows, ManualWindows};

/// The record the seed's curl examples use; created at start so they work verbatim.
pub const SAMPLE_RECORD: &str = "0000-0002-7465-2162";

/// SQS batch size of the local delivery event source.
const DELIVERY_BATCH: usize = 10;

/// Everything the local runner can be told.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// Where the HTTP API listens.
    pub listen: SocketAddr,
    /// How often the flush runs (the window length).
    pub flush_interval: Duration,
    /// How long after closing a window the flush waits before reading it.
    pub flush_grace: Duration,
    /// The retry schedule.
    pub retry: RetryPolicy,
    /// The ack deadline of one delivery attempt.
    pub delivery_timeout: Duration,
    /// Concurrent requests within one delivery batch.
    pub delivery_concurrency: usize,
    /// Concurrent delivery pollers (like concurrent Lambda invocations).
    pub delivery_workers: usize,
    /// The queue's default visibility timeout (a crashed delivery reappears after it).
    pub visibility_timeout: Duration,
    /// Access token lifetime.
    pub token_lifetime: Duration,
    /// Allow http and loopback/private callbacks (local receivers).
    pub allow_insecure_callbacks: bool,
    /// OAuth clients to create, as (id, secret); one is generated when empty.
    pub clients: Vec<(String, String)>,
    /// Members-style applications to create, as (id, API key).
    pub applications: Vec<(String, String)>,
    /// Create [`SAMPLE_RECORD`] at start.
    pub sample_record: bool,
    /// An endpoint failing every attempt this long is disabled.
    pub endpoint_disable_after: Duration,
}

impl Default for LocalConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 3000)),
            flush_interval: Duration::from_secs(300),
            flush_grace: Duration::from_millis(200),
            retry: RetryPolicy::default(),
            delivery_timeout: Duration::from_secs(10),
            delivery_concurrency: 100,
            delivery_workers: 4,
            visibility_timeout: Duration::from_secs(60),
            token_lifetime: Duration::from_secs(3600),
            allow_insecure_callbacks: false,
            clients: vec![],
            applications: vec![],
            sample_record: true,
            endpoint_disable_after: HealthPolicy::default().disable_after,
        }
    }
}

/// The wired-up service: stores, queue and handlers.
pub struct Runtime {
    /// The service table.
    pub store: Arc<MemoryStore>,
    /// The records table.
    pub records: Arc<MemoryRecords>,
    /// The delivery queue and its DLQ.
    pub queue: Arc<MemoryQueue>,
    /// Operational events (logged).
    pub events: Arc<LoggedEvents>,
    windows: Arc<ManualWindows>,
    registration: Registration,
    change_capture: ChangeCapture,
    flush: Flush,
    delivery: Delivery,
    flush_lock: Mutex<()>,
    flush_grace: Duration,
    sync_step_budget: Duration,
    inbox: http::Inbox,
}

impl Runtime {
    fn new(config: &LocalConfig) -> Self {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let store = Arc::new(MemoryStore::default());
        let records = Arc::new(MemoryRecords::default());
        let queue = Arc::new(MemoryQueue::new(
            config.visibility_timeout,
            config.retry.max_attempts,
        ));
        let windows = Arc::new(ManualWindows::default());
        let url_policy = UrlPolicy {
            allow_insecure: config.allow_insecure_callbacks,
        };
        let events = Arc::new(LoggedEvents::default());
        let ports = webhooks::memory::ports(
            store.clone(),
            records.clone(),
            queue.clone(),
            events.clone(),
            clock,
        );
        let http = CallbackClient::new(&HttpSettings {
            timeout: config.delivery_timeout,
            url_policy,
            ..HttpSettings::default()
        });
        Self {
            registration: Registration {
                ports: ports.clone(),
                http: http.clone(),
                settings: ApiSettings {
                    url_policy,
                    token_lifetime: config.token_lifetime,
                },
            },
            change_capture: ChangeCapture {
                pending: store.clone(),
                windows: windows.clone(),
            },
            flush: Flush {
                ports: ports.clone(),
                windows: windows.clone(),
                settings: FlushSettings::default(),
            },
            delivery: Delivery::new(
                ports,
                http,
                DeliverySettings {
                    retry: config.retry,
                    concurrency: config.delivery_concurrency,
                    health: HealthPolicy {
                        disable_after: config.endpoint_disable_after,
                        ..HealthPolicy::default()
                    },
                    metrics: false,
                },
            ),
            events,
            store,
            records,
            queue,
            windows,
            flush_lock: Mutex::new(()),
            flush_grace: config.flush_grace,
            // Like a Lambda invocation's time limit, well inside the visibility timeout.
            sync_step_budget: config.visibility_timeout / 3,
            inbox: http::Inbox::default(),
        }
    }

    /// Creates or replaces a person and runs change capture on the stream record.
    pub async fn put_person(&self, id: &RecordId, person: Person) -> EventRecord {
        let record = self.records.put_person(id, person);
        self.capture(record.clone()).await;
        record
    }

    /// Deletes a person and runs change capture on the stream record.
    pub async fn delete_person(&self, id: &RecordId) -> Option<EventRecord> {
        let record = self.records.delete_person(id)?;
        self.capture(record.clone()).await;
        Some(record)
    }

    async fn capture(&self, record: EventRecord) {
        let mut event = Event::default();
        event.records = vec![record];
        // The in-memory store does not fail; a stream would retry a reported failure.
        let response = self.change_capture.handle(event).await;
        debug_assert!(response.batch_item_failures.is_empty());
    }

    /// Closes the current window and, after the grace period, flushes it (what the
    /// schedule does every flush interval).
    pub async fn flush_now(&self) -> Result<FlushReport, BackendError> {
        let _one_at_a_time = self.flush_lock.lock().await;
        self.windows.close_current();
        tokio::time::sleep(self.flush_grace).await;
        self.flush.run(None).await
    }

    /// The current window number.
    pub fn current_window(&self) -> u64 {
        self.windows.current().0
    }

    /// Queue and DLQ counts.
    pub fn queue_depth(&self) -> QueueDepth {
        self.queue.depth()
    }

    /// Sends the parked jobs whose endpoint is enabled again back to the delivery queue;
    /// the others stay parked (what `webhooks-admin parked replay` does on AWS).
    pub async fn replay_parked(&self) -> Result<ParkedReplay, BackendError> {
        ParkedReplayer {
            subscriptions: self.store.as_ref(),
            applications: self.store.as_ref(),
            queue: self.queue.as_ref(),
            parked: self.queue.as_ref(),
        }
        .replay(usize::MAX)
        .await
    }

    /// One poll of the delivery event source: receive a batch, invoke the handler, delete
    /// what it did not report as failed. Returns how many messages it handled.
    async fn deliver_batch(&self, wait: Duration) -> usize {
        let messages = self.queue.receive(DELIVERY_BATCH, wait).await;
        if messages.is_empty() {
            return 0;
        }
        let mut event = SqsEvent::default();
        event.records = messages
            .iter()
            .map(|m| m.to_sqs_message("arn:aws:sqs:local:000000000000:delivery"))
            .collect();
        let deadline = tokio::time::Instant::now() + self.sync_step_budget;
        let response = self.delivery.handle(event, deadline).await;
        self.queue.settle(&messages, &response);
        messages.len()
    }
}

/// A subscriber created at start, with the secrets shown once.
#[derive(Debug, Clone)]
pub struct Bootstrapped {
    /// Client or application id.
    pub id: String,
    /// Client secret or API key.
    pub secret: String,
    /// The Standard Webhooks secret that signs its deliveries.
    pub webhook_secret: String,
}

/// A running local service.
pub struct LocalService {
    /// Where the HTTP API listens.
    pub addr: SocketAddr,
    /// The OAuth clients created at start.
    pub clients: Vec<Bootstrapped>,
    /// The applications created at start.
    pub applications: Vec<Bootstrapped>,
    /// The wired-up service.
    pub runtime: Arc<Runtime>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl LocalService {
    /// Starts the HTTP API, the flush timer and the delivery workers.
    pub async fn start(config: LocalConfig) -> std::io::Result<Self> {
        if config.allow_insecure_callbacks {
            tracing::warn!(
                "INSECURE CALLBACKS ALLOWED: plain http and loopback/private callback addresses can be registered and called. Local development only."
            );
        }
        let runtime = Arc::new(Runtime::new(&config));
        let (clients, applications) = bootstrap(&runtime, &config).await;
        if config.sample_record {
            let id = RecordId::parse(SAMPLE_RECORD).expect("valid sample id");
            runtime.put_person(&id, sample_person()).await;
        }
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let (shutdown, _) = watch::channel(false);
        let mut tasks = JoinSet::new();

        let app = http::router(runtime.clone());
        let stop = shutdown.subscribe();
        tasks.spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(stopped(stop));
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "HTTP server failed");
            }
        });

        let stop = stopped(shutdown.subscribe());
        let rt = runtime.clone();
        let interval = config.flush_interval;
        tasks.spawn(async move {
            tokio::pin!(stop);
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            loop {
                tokio::select! {
                    _ = &mut stop => break,
                    _ = ticks.tick() => {
                        if let Err(e) = rt.flush_now().await {
                            tracing::error!(error = %e, "scheduled flush failed; the next one resumes");
                        }
                    }
                }
            }
        });

        for _ in 0..config.delivery_workers.max(1) {
            let stop = stopped(shutdown.subscribe());
            let rt = runtime.clone();
            tasks.spawn(async move {
                tokio::pin!(stop);
                loop {
                    tokio::select! {
                        _ = &mut stop => break,
                        _ = rt.deliver_batch(Duration::from_secs(1)) => {}
                    }
                }
            });
        }
        tracing::info!(%addr, "local webhook service started");
        Ok(Self {
            addr,
            clients,
            applications,
            runtime,
            shutdown,
            tasks,
        })
    }

    /// Stops everything and waits for the tasks to end.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
        tracing::info!("local webhook service stopped");
    }
}

/// Resolves when the shutdown flag is raised.
async fn stopped(mut flag: watch::Receiver<bool>) {
    let _ = flag.wait_for(|stop| *stop).await;
}

async fn bootstrap(
    runtime: &Runtime,
    config: &LocalConfig,
) -> (Vec<Bootstrapped>, Vec<Bootstrapped>) {
    let clients = if config.clients.is_empty() {
        vec![(new_client_id(), new_secret())]
    } else {
        config.clients.clone()
    };
    let now = SystemClock.now();
    let mut created_clients = Vec::new();
    for (id, secret) in clients {
        let client = OAuthClient::new(&id, &secret, now);
        let webhook_secret = client
            .webhook_secrets
            .as_ref()
            .map(|s| s.current.expose().to_owned())
            .unwrap_or_default();
        runtime
            .store
            .put_client(&client)
            .await
            .expect("the in-memory store does not fail");
        created_clients.push(Bootstrapped {
            id,
            secret,
            webhook_secret,
        });
    }
    let mut created_applications = Vec::new();
    for (id, api_key) in &config.applications {
        let application = Application::new(id, api_key, now.unix_timestamp());
        runtime
            .store
            .put_application(&application)
            .await
            .expect("the in-memory store does not fail");
        created_applications.push(Bootstrapped {
            id: id.clone(),
            secret: api_key.clone(),
            webhook_secret: application.secrets.current.expose().to_owned(),
        });
    }
    (created_clients, created_applications)
}

fn sample_person() -> Person {
    serde_json::json!({
        "firstName": "Josiah",
        "lastName": "Carberry",
        "displayName": "Josiah Carberry",
        "email": "josiah@example.org",
    })
    .as_object()
    .cloned()
    .expect("an object")
}
