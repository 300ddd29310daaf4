//! The local runner: the same handlers as the four Lambdas, over the in-memory adapters or,
//! with a data directory, the SQLite ones ([`storage`]), wired the way AWS wires them — an HTTP server in front of `registration` (like API
//! Gateway's `$default` route), record writes that feed `change-capture` the stream
//! record DynamoDB would emit, a timer that runs `flush` (like the EventBridge schedule),
//! and delivery workers that poll the SQS-like queue and call `delivery` with an SQS batch,
//! deleting what it acknowledged (like the Lambda SQS event source).

mod duration;
mod http;
pub mod storage;

pub use duration::parse_duration;
pub use storage::Storage;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, RwLock, watch};
use tokio::task::JoinSet;
use webhooks::application::Application;
use webhooks::aws_lambda_events::event::dynamodb::{Event, EventRecord};
use webhooks::callback::UrlPolicy;
use webhooks::clock::{Clock, SystemClock};
use webhooks::handlers::{
    ApiSettings, ChangeCapture, Delivery, DeliverySettings, Flush, FlushReport, FlushSettings,
    ParkedReplay, ParkedReplayer, Registration,
};
use webhooks::health::HealthPolicy;
use webhooks::http_client::{CallbackClient, HttpSettings};
use webhooks::ids::{ApplicationId, ClientId};
use webhooks::memory::LoggedEvents;
use webhooks::memory::{QueueDepth, ReceivedMessage};
use webhooks::oauth::{OAuthClient, SecretHash, new_secret, sha256_hex};
use webhooks::ports::{BackendError, Person, Ports};
use webhooks::record::RecordId;
use webhooks::retry::RetryPolicy;
use webhooks::window::{FlushWindows, ManualWindows, WindowId};

/// The record the seed's curl examples use; created at start so they work verbatim.
pub const SAMPLE_RECORD: &str = "0000-0002-7465-2162";

/// How often a durable runner deletes what the retention no longer keeps (and once at start).
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Batch size of the local delivery event source: the `BatchSize` of the delivery
/// function's SQS event source in template.yaml, so a batch is as large as on AWS (and a
/// durable runner commits a batch's receive, attempts and deletions once each).
const DELIVERY_BATCH: usize = 100;

/// Everything the local runner can be told.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// Where the HTTP API listens.
    pub listen: SocketAddr,
    /// How often the flush runs (the window length).
    pub flush_interval: Duration,
    /// How long after closing a window the flush waits before reading it.
    pub flush_grace: Duration,
    pub retry: RetryPolicy,
    /// The ack deadline of one delivery attempt.
    pub delivery_timeout: Duration,
    /// Concurrent requests within one delivery batch.
    pub delivery_concurrency: usize,
    /// A flush page with at most this many jobs has their first attempt made by the flush
    /// itself (0: every job goes on the queue), as `FLUSH_FIRST_ATTEMPTS` on Lambda.
    pub flush_first_attempts: usize,
    /// Concurrent delivery pollers (like concurrent Lambda invocations).
    pub delivery_workers: usize,
    /// The queue's default visibility timeout (a crashed delivery reappears after it).
    pub visibility_timeout: Duration,
    pub token_lifetime: Duration,
    /// Allow http and loopback/private callbacks (local receivers).
    pub allow_insecure_callbacks: bool,
    /// OAuth clients to create, as (id, secret); one is generated when empty.
    pub clients: Vec<(ClientId, String)>,
    /// Members-style applications to create, as (id, API key).
    pub applications: Vec<(ApplicationId, String)>,
    /// Create [`SAMPLE_RECORD`] at start.
    pub sample_record: bool,
    /// An endpoint failing every attempt this long is disabled.
    pub endpoint_disable_after: Duration,
    /// Keep everything in this directory (SQLite) instead of in memory.
    pub data_dir: Option<PathBuf>,
    /// How long delivery attempts and the messages kept with them are kept (durable mode).
    pub attempt_retention: Duration,
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
            flush_first_attempts: FlushSettings::default().first_attempts_up_to,
            delivery_workers: 4,
            visibility_timeout: Duration::from_secs(60),
            token_lifetime: Duration::from_secs(3600),
            allow_insecure_callbacks: false,
            clients: vec![],
            applications: vec![],
            sample_record: true,
            endpoint_disable_after: HealthPolicy::default().disable_after,
            data_dir: None,
            attempt_retention: Duration::from_secs(
                webhooks::attempts::DEFAULT_RETENTION_DAYS * 24 * 3600,
            ),
        }
    }
}

/// Why the service did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory could not be opened.
    #[error(transparent)]
    Storage(#[from] webhooks::sqlite::OpenError),
    /// Its storage failed while starting.
    #[error("starting: {0}")]
    Backend(#[from] BackendError),
    /// The HTTP listener could not be bound.
    #[error("listening: {0}")]
    Io(#[from] std::io::Error),
}

/// In memory, or in the data directory when one is given.
fn open_storage(
    config: &LocalConfig,
    clock: Arc<dyn Clock>,
) -> Result<Storage, webhooks::sqlite::OpenError> {
    Ok(match &config.data_dir {
        None => Storage::memory(clock, config.visibility_timeout, config.retry.max_attempts),
        Some(dir) => Storage::open(
            dir,
            clock,
            config.visibility_timeout,
            config.retry.max_attempts,
            config.attempt_retention,
        )?,
    })
}

fn delivery_settings(config: &LocalConfig) -> DeliverySettings {
    DeliverySettings {
        retry: config.retry,
        concurrency: config.delivery_concurrency,
        health: HealthPolicy {
            disable_after: config.endpoint_disable_after,
            ..HealthPolicy::default()
        },
        metrics: false,
    }
}

/// The wired-up service: storage and handlers.
pub struct Runtime {
    /// Where the state is kept.
    pub storage: Storage,
    /// The ports the handlers share.
    pub ports: Ports,
    /// Operational events (logged).
    pub events: Arc<LoggedEvents>,
    windows: Arc<ManualWindows>,
    /// Held to write a record and capture its change in one window; taken exclusively to
    /// close the window, so the window a change reports is the one it was captured in.
    window_gate: RwLock<()>,
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
    async fn open(config: &LocalConfig) -> Result<Self, StartError> {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let storage = open_storage(config, clock.clone())?;
        let windows = Arc::new(ManualWindows::starting_at(storage.current_window().await?));
        let url_policy = UrlPolicy {
            allow_insecure: config.allow_insecure_callbacks,
        };
        let events = Arc::new(LoggedEvents::default());
        let ports = storage.ports(events.clone(), clock);
        let http = CallbackClient::new(&HttpSettings {
            timeout: config.delivery_timeout,
            url_policy,
            ..HttpSettings::default()
        })
        .with_clock(ports.clock.clone());
        let delivery = Delivery::new(ports.clone(), http.clone(), delivery_settings(config));
        Ok(Self {
            registration: Registration {
                ports: ports.clone(),
                http: http.clone(),
                settings: ApiSettings {
                    url_policy,
                    token_lifetime: config.token_lifetime,
                },
            },
            change_capture: ChangeCapture {
                pending: ports.pending.clone(),
                windows: windows.clone(),
            },
            flush: Flush {
                ports: ports.clone(),
                windows: windows.clone(),
                settings: FlushSettings {
                    first_attempts_up_to: config.flush_first_attempts,
                    ..FlushSettings::default()
                },
                // As on Lambda: a quiet window's jobs are attempted by the flush itself.
                delivery: Some(delivery.clone()),
            },
            delivery,
            events,
            storage,
            ports,
            windows,
            window_gate: RwLock::new(()),
            flush_lock: Mutex::new(()),
            flush_grace: config.flush_grace,
            // Like a Lambda invocation's time limit, well inside the visibility timeout.
            sync_step_budget: config.visibility_timeout / 3,
            inbox: http::Inbox::default(),
        })
    }

    /// Creates or replaces a person and runs change capture on the stream record; returns
    /// the record and the window the change was captured in. When capture fails, the
    /// change stays in the stream (durable mode) and the next flush captures it.
    pub async fn put_person(
        &self,
        id: &RecordId,
        person: Person,
    ) -> Result<(EventRecord, WindowId), BackendError> {
        let _open = self.window_gate.read().await;
        let record = self.storage.put_person(id, person).await?;
        let window = self.windows.current();
        self.capture(vec![record.clone()]).await?;
        Ok((record, window))
    }

    /// Deletes a person and runs change capture on the stream record (`None`: no such person).
    pub async fn delete_person(&self, id: &RecordId) -> Result<Option<EventRecord>, BackendError> {
        let _open = self.window_gate.read().await;
        let Some(record) = self.storage.delete_person(id).await? else {
            return Ok(None);
        };
        self.capture(vec![record.clone()]).await?;
        Ok(Some(record))
    }

    /// Runs change capture on stream records, then drops them from the stream.
    async fn capture(&self, records: Vec<EventRecord>) -> Result<(), BackendError> {
        let mut event = Event::default();
        event.records = records.clone();
        let response = self.change_capture.handle(event).await;
        if let Some(failed) = response.batch_item_failures.first() {
            return Err(BackendError::Unavailable(format!(
                "change capture failed at stream record {:?}; it stays in the stream",
                failed.item_identifier
            )));
        }
        self.storage.captured(&records).await
    }

    /// Captures the changes a crash (or a failed capture) left in the stream.
    async fn capture_left_over(&self) -> Result<usize, BackendError> {
        let left = self.storage.uncaptured().await?;
        let count = left.len();
        for chunk in left.chunks(100) {
            let _open = self.window_gate.read().await;
            self.capture(chunk.to_vec()).await?;
        }
        Ok(count)
    }

    /// Closes the current window and, after the grace period, flushes it (what the
    /// schedule does every flush interval).
    pub async fn flush_now(&self) -> Result<FlushReport, BackendError> {
        let _one_at_a_time = self.flush_lock.lock().await;
        let left_over = self.capture_left_over().await?;
        if left_over > 0 {
            tracing::warn!(changes = left_over, "captured changes left in the stream");
        }
        {
            let _closing = self.window_gate.write().await;
            // Saved first: a crash between the two starts the next runner in the new window.
            self.storage
                .save_current_window(WindowId(self.windows.current().0 + 1))
                .await?;
            self.windows.close_current();
        }
        tokio::time::sleep(self.flush_grace).await;
        self.flush.run(None).await
    }

    /// The current window number.
    pub fn current_window(&self) -> u64 {
        self.windows.current().0
    }

    /// Deletes attempts, kept messages and recoveries older than the retention, and expired
    /// tokens (durable mode), logging what went.
    async fn prune(&self) {
        let now_ms = self.ports.clock.now().epoch_ms();
        match self.storage.prune(now_ms).await {
            Ok(Some(pruned)) => tracing::info!(?pruned, "retention applied"),
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "pruning failed; the next run tries again"),
        }
    }

    /// Queue, DLQ and parked counts.
    pub async fn queue_depth(&self) -> Result<QueueDepth, BackendError> {
        self.storage.depth().await
    }

    /// Sends the parked jobs whose endpoint is enabled again back to the delivery queue;
    /// the others stay parked (what `webhooks-admin parked replay` does on AWS).
    pub async fn replay_parked(&self) -> Result<ParkedReplay, BackendError> {
        ParkedReplayer {
            subscriptions: self.ports.subscriptions.as_ref(),
            applications: self.ports.applications.as_ref(),
            queue: self.ports.queue.as_ref(),
            parked: self.storage.parked_queue(),
        }
        .replay(usize::MAX)
        .await
    }

    /// One poll of the delivery event source: receive a batch, invoke the handler, delete
    /// what it did not report as failed. Returns how many messages it handled.
    async fn deliver_batch(&self, wait: Duration) -> usize {
        let messages = match self.storage.receive(DELIVERY_BATCH, wait).await {
            Ok(messages) if messages.is_empty() => return 0,
            Ok(messages) => messages,
            Err(e) => {
                tracing::error!(error = %e, "receiving deliveries failed; polling again");
                tokio::time::sleep(wait.max(Duration::from_millis(100))).await;
                return 0;
            }
        };
        let event =
            ReceivedMessage::batch_event(&messages, "arn:aws:sqs:local:000000000000:delivery");
        let deadline = tokio::time::Instant::now() + self.sync_step_budget;
        let response = self.delivery.handle(event, deadline).await;
        if let Err(e) = self.storage.settle(&messages, &response).await {
            // Not deleted: they come back after their visibility timeout (at least once).
            tracing::error!(error = %e, "settling a delivery batch failed");
        }
        messages.len()
    }
}

/// A subscriber created at start, with the secrets shown once.
#[derive(Debug, Clone)]
pub struct Bootstrapped {
    /// Client or application id.
    pub id: String,
    /// Client secret or API key; `None` for a client an earlier start of a durable runner
    /// created (stored only as a hash, it was shown then).
    pub secret: Option<String>,
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
    pub runtime: Arc<Runtime>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl LocalService {
    /// Starts the HTTP API, the flush timer and the delivery workers.
    pub async fn start(config: LocalConfig) -> Result<Self, StartError> {
        if config.allow_insecure_callbacks {
            tracing::warn!(
                "INSECURE CALLBACKS ALLOWED: plain http and loopback/private callback addresses can be registered and called. Local development only."
            );
        }
        let runtime = Arc::new(Runtime::open(&config).await?);
        if let Some(dir) = runtime.storage.data_dir() {
            let left_over = runtime.capture_left_over().await?;
            tracing::info!(data_dir = %dir.display(), window = runtime.current_window(), changes_captured_again = left_over, "durable storage opened");
        }
        let (clients, applications) = bootstrap(&runtime, &config).await?;
        if config.sample_record {
            let id = RecordId::parse(SAMPLE_RECORD).expect("valid sample id");
            if runtime.ports.records.get_person(&id).await?.is_none() {
                runtime.put_person(&id, sample_person()).await?;
            }
        }
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let (shutdown, _) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tasks.spawn(serve_http(listener, runtime.clone(), shutdown.subscribe()));
        tasks.spawn(flush_timer(
            runtime.clone(),
            config.flush_interval,
            shutdown.subscribe(),
        ));
        if runtime.storage.data_dir().is_some() {
            tasks.spawn(retention_timer(runtime.clone(), shutdown.subscribe()));
        }
        for _ in 0..config.delivery_workers.max(1) {
            tasks.spawn(delivery_worker(runtime.clone(), shutdown.subscribe()));
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

    /// Stops everything, waits for the tasks to end and closes the storage.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
        self.runtime.storage.close();
        tracing::info!("local webhook service stopped");
    }
}

/// The HTTP API, until the shutdown flag is raised.
async fn serve_http(
    listener: tokio::net::TcpListener,
    runtime: Arc<Runtime>,
    stop: watch::Receiver<bool>,
) {
    let app = http::router(runtime);
    let serve = axum::serve(listener, app).with_graceful_shutdown(stopped(stop));
    if let Err(e) = serve.await {
        tracing::error!(error = %e, "HTTP server failed");
    }
}

/// A flush every `interval`, as the scheduler runs it on AWS, until the shutdown flag is
/// raised.
async fn flush_timer(runtime: Arc<Runtime>, interval: Duration, stop: watch::Receiver<bool>) {
    let stop = stopped(stop);
    tokio::pin!(stop);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = ticks.tick() => {
                if let Err(e) = runtime.flush_now().await {
                    tracing::error!(error = %e, "scheduled flush failed; the next one resumes");
                }
            }
        }
    }
}

/// Applies the retention at start and every [`PRUNE_EVERY`] (durable mode).
async fn retention_timer(runtime: Arc<Runtime>, stop: watch::Receiver<bool>) {
    let stop = stopped(stop);
    tokio::pin!(stop);
    let mut ticks = tokio::time::interval(PRUNE_EVERY);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = ticks.tick() => runtime.prune().await,
        }
    }
}

/// Delivers batches from the queue as they come, until the shutdown flag is raised.
async fn delivery_worker(runtime: Arc<Runtime>, stop: watch::Receiver<bool>) {
    let stop = stopped(stop);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = runtime.deliver_batch(Duration::from_secs(1)) => {}
        }
    }
}

/// Resolves when the shutdown flag is raised.
async fn stopped(mut flag: watch::Receiver<bool>) {
    let _ = flag.wait_for(|stop| *stop).await;
}

/// Creates the clients and applications asked for (a durable runner keeps those it has,
/// with their webhook secrets, when started again with the same credentials).
async fn bootstrap(
    runtime: &Runtime,
    config: &LocalConfig,
) -> Result<(Vec<Bootstrapped>, Vec<Bootstrapped>), BackendError> {
    let ports = &runtime.ports;
    let mut clients = Vec::new();
    let mut wanted = config.clients.clone();
    if wanted.is_empty() {
        let stored = ports.clients.list_clients().await?;
        if stored.is_empty() {
            wanted.push((ClientId::generate(), new_secret()));
        }
        clients.extend(stored.iter().map(|client| Bootstrapped {
            id: client.client_id.to_string(),
            secret: None,
            webhook_secret: webhook_secret(client),
        }));
    }
    for (id, secret) in wanted {
        let client = bootstrap_client(ports, &id, &secret).await?;
        clients.push(Bootstrapped {
            id: id.to_string(),
            secret: Some(secret),
            webhook_secret: webhook_secret(&client),
        });
    }
    let mut applications = Vec::new();
    for (id, api_key) in &config.applications {
        let application = bootstrap_application(ports, id, api_key).await?;
        applications.push(Bootstrapped {
            id: id.to_string(),
            secret: Some(api_key.clone()),
            webhook_secret: application.secrets.current.expose().to_owned(),
        });
    }
    Ok((clients, applications))
}

/// A client's current webhook secret, or "" when it has none.
fn webhook_secret(client: &OAuthClient) -> String {
    client
        .webhook_secrets
        .as_ref()
        .map(|s| s.current.expose().to_owned())
        .unwrap_or_default()
}

/// The client `id` with `secret`: kept as stored, its secret replaced, or created.
async fn bootstrap_client(
    ports: &Ports,
    id: &ClientId,
    secret: &str,
) -> Result<OAuthClient, BackendError> {
    Ok(match ports.clients.get_client(id).await? {
        Some(stored) if stored.secret.matches(secret) => stored,
        Some(mut stored) => {
            stored.secret = SecretHash::of(secret);
            ports.clients.put_client(&stored).await?;
            stored
        }
        None => {
            let client = OAuthClient::new(id, secret, ports.clock.now());
            ports.clients.put_client(&client).await?;
            client
        }
    })
}

/// The application `id` with `api_key`: kept as stored, its key replaced, or created.
async fn bootstrap_application(
    ports: &Ports,
    id: &ApplicationId,
    api_key: &str,
) -> Result<Application, BackendError> {
    Ok(match ports.applications.get_application(id).await? {
        Some(stored) if stored.api_key_hash == sha256_hex(api_key) => stored,
        Some(mut stored) => {
            stored.api_key_hash = sha256_hex(api_key);
            ports.applications.put_application(&stored).await?;
            stored
        }
        None => {
            let now = ports.clock.now();
            let application = Application::new(id, api_key, now);
            ports.applications.put_application(&application).await?;
            application
        }
    })
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
