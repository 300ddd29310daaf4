//! The `delivery` Lambda (SQS): POST each job to its subscriber; on a negative
//! acknowledgement hide the message for the retry delay (visibility timeout) and report
//! it as a batch item failure; after the last attempt let SQS move it to the DLQ.
//! Full-sync steps travel on the same queue and are run here too. A store or queue failure
//! is not a delivery attempt: the job is sent again carrying its attempt count (see
//! `backend_failure`).

use super::outbound::{Outbound, application_request, callback_request};
use super::sync_driver::{StepOutcome, SyncDriver, announce_if_complete};
use crate::application::{Application, NoWebhook};
use crate::attempts::{Attempt, EndpointKey, LoggedAttempt};
use crate::callback::CallbackUrl;
use crate::clock::rfc3339_millis;
use crate::events::{OpsEvent, announce};
use crate::health::{EndpointHealth, HealthPolicy};
use crate::http_client::{AttemptOutcome, CallbackClient};
use crate::job::{DeliveryJob, Target};
use crate::metrics::DeliveryMetrics;
use crate::oauth::OAuthClient;
use crate::ports::{BackendError, BackendResult, MAX_SEND_DELAY, PersonOutcome, Ports};
use crate::record::RecordId;
use crate::retry::RetryPolicy;
use crate::subscription::{Subscription, endpoint_name};
use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use futures::StreamExt;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tracing::Instrument;

/// Backend failures one job may meet before it goes to the dead-letter queue: with
/// delays doubling to the 15-minute cap, about a day of continuous outage.
pub const MAX_BACKEND_FAILURES: u32 = 100;

/// The endpoint a job is for, as logs and operational events name it.
fn endpoint_of(job: &DeliveryJob) -> String {
    match &job.target {
        Target::Callback {
            record, callback, ..
        } => endpoint_name(record, callback),
        Target::Application { application, .. } | Target::SyncStep { application, .. } => {
            crate::application::endpoint_name(application)
        }
    }
}

/// The clock's time in epoch milliseconds.
fn epoch_ms(clock: &dyn crate::clock::Clock) -> i64 {
    (clock.now().unix_timestamp_nanos() / 1_000_000) as i64
}

/// How long subscriber settings (URL, keys, secrets) are reused before being read again.
pub const SUBSCRIBER_CACHE_TTL: Duration = Duration::from_secs(30);

/// Settings of the delivery handler.
#[derive(Debug, Clone, Copy)]
pub struct DeliverySettings {
    /// The retry schedule (its `max_attempts` equals the queue's maxReceiveCount).
    pub retry: RetryPolicy,
    /// Concurrent requests within one batch.
    pub concurrency: usize,
    /// When failing endpoints are disabled.
    pub health: HealthPolicy,
    /// Print CloudWatch Embedded Metric Format lines (on Lambda).
    pub metrics: bool,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            // The SQS batch size: a whole batch in flight at once (see docs/benchmarks.md).
            concurrency: 100,
            health: HealthPolicy::default(),
            metrics: false,
        }
    }
}

/// The endpoint a job goes to, with its health as last read.
#[derive(Debug, Clone)]
enum Endpoint {
    Subscription(Arc<Subscription>),
    Application(Arc<Application>),
}

impl Endpoint {
    fn name(&self) -> String {
        match self {
            Self::Subscription(s) => s.endpoint(),
            Self::Application(a) => a.endpoint(),
        }
    }

    fn key(&self) -> EndpointKey {
        match self {
            Self::Subscription(s) => EndpointKey::subscription(&s.record, &s.callback),
            Self::Application(a) => EndpointKey::application(&a.id),
        }
    }

    fn health(&self) -> &EndpointHealth {
        match self {
            Self::Subscription(s) => &s.health,
            Self::Application(a) => &a.health,
        }
    }
}

/// What to do with a message after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Acknowledged: the message is deleted.
    Delivered,
    /// Not acknowledged: try again after the delay.
    RetryAfter(Duration),
    /// Not acknowledged and that was the last attempt: to the dead-letter queue.
    Exhausted,
}

/// The retry decision for attempt `attempt` (1-based), given whether it acknowledged.
pub fn decide(
    acknowledged: bool,
    retry: &RetryPolicy,
    attempt: u32,
    outcome: &AttemptOutcome,
) -> Verdict {
    if acknowledged {
        Verdict::Delivered
    } else if retry.is_last(attempt) {
        Verdict::Exhausted
    } else {
        Verdict::RetryAfter(retry.next_delay(attempt, outcome.retry_after))
    }
}

/// Subscriber settings read recently (`None` remembers "no such subscriber"), so a batch
/// for one subscriber reads them once.
struct TtlCache<V>(Mutex<HashMap<String, Entry<V>>>);

type Entry<V> = (Instant, Option<Arc<V>>);

impl<V> Default for TtlCache<V> {
    fn default() -> Self {
        Self(Mutex::new(HashMap::new()))
    }
}

impl<V> TtlCache<V> {
    fn get(&self, key: &str) -> Option<Option<Arc<V>>> {
        let map = self.0.lock().expect("cache lock");
        map.get(key)
            .filter(|(at, _)| at.elapsed() < SUBSCRIBER_CACHE_TTL)
            .map(|(_, v)| v.clone())
    }

    fn forget(&self, key: &str) {
        self.0.lock().expect("cache lock").remove(key);
    }

    fn put(&self, key: &str, value: Option<Arc<V>>) {
        self.0
            .lock()
            .expect("cache lock")
            .insert(key.to_owned(), (Instant::now(), value));
    }
}

/// How often a batch tries to count its sync outcomes (before giving the messages back),
/// and, once counted, to check and announce the sync's completion.
const COUNT_ATTEMPTS: u32 = 8;
/// The first wait between those tries (then 4 times longer each, up to
/// [`COUNT_RETRY_MAX_DELAY`]).
const COUNT_RETRY_DELAY: Duration = Duration::from_millis(50);
/// The longest wait between two tries.
const COUNT_RETRY_MAX_DELAY: Duration = Duration::from_secs(1);

/// Runs `call` until it succeeds, at most [`COUNT_ATTEMPTS`] times, with doubling-by-four
/// waits between tries, and never waiting past `deadline`.
async fn retry_until<T, F, Fut>(deadline: Instant, mut call: F) -> BackendResult<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = BackendResult<T>>,
{
    let mut delay = COUNT_RETRY_DELAY;
    let mut attempt = 1;
    loop {
        match call().await {
            Err(e) if attempt < COUNT_ATTEMPTS && Instant::now() + delay < deadline => {
                tracing::debug!(error = %e, attempt, "sync bookkeeping failed; trying again");
                tokio::time::sleep(delay).await;
                delay = (delay * 4).min(COUNT_RETRY_MAX_DELAY);
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// What a batch's deliveries note as they go: its metrics, and what is left to do once
/// all its attempts are made (one counter write per sync and at most one health write per
/// endpoint, instead of one of each per message).
#[derive(Default)]
struct BatchLedger {
    metrics: Mutex<DeliveryMetrics>,
    sync_outcomes: Mutex<Vec<SyncOutcome>>,
    health: Mutex<HashMap<String, HealthTally>>,
    attempts: Mutex<Vec<LoggedAttempt>>,
}

/// A fan-out sync job's final outcome, to be counted.
struct SyncOutcome {
    application: String,
    sync: String,
    outcome: PersonOutcome,
    message_id: String,
    receipt_handle: Option<String>,
}

/// An endpoint's health over a batch: as read before it, and after its attempts.
struct HealthTally {
    endpoint: Endpoint,
    saved: EndpointHealth,
    now: EndpointHealth,
    newly_disabled: bool,
}

/// The delivery handler.
pub struct Delivery {
    /// The ports.
    pub ports: Ports,
    /// The shared HTTP client.
    pub http: CallbackClient,
    /// Settings.
    pub settings: DeliverySettings,
    applications: TtlCache<Application>,
    clients: TtlCache<OAuthClient>,
    subscriptions: TtlCache<Subscription>,
    metric_lines: MetricLines,
}

/// Where the metric lines go: stdout on Lambda (CloudWatch Logs turns Embedded Metric
/// Format lines into metrics); the cost benchmark counts their bytes.
pub type MetricLines = Arc<dyn Fn(&str) + Send + Sync>;

/// What a message asked for.
enum Work {
    Send {
        outbound: Outbound,
        sync: Option<(String, String)>,
        endpoint: Endpoint,
    },
    Drop(&'static str),
    /// The application's stored webhook URL cannot be used: no attempt can succeed until
    /// its owner sets a new one.
    Unusable {
        application: Arc<Application>,
        reason: String,
    },
    SyncStep {
        application: String,
        sync: String,
    },
}

impl Delivery {
    /// The handler over `ports`.
    pub fn new(ports: Ports, http: CallbackClient, settings: DeliverySettings) -> Self {
        Self {
            ports,
            http,
            settings,
            applications: TtlCache::default(),
            clients: TtlCache::default(),
            subscriptions: TtlCache::default(),
            metric_lines: Arc::new(|line| println!("{line}")),
        }
    }

    /// Sends the metric lines (when [`DeliverySettings::metrics`] is on) to `lines`
    /// instead of stdout.
    pub fn with_metric_lines(mut self, lines: MetricLines) -> Self {
        self.metric_lines = lines;
        self
    }

    /// Delivers a batch concurrently; failed messages are listed in the response (an
    /// `Err` would make Lambda retry the whole batch). Sync steps stop before `deadline`.
    pub async fn handle(&self, event: SqsEvent, deadline: Instant) -> SqsBatchResponse {
        // Each body is parsed once, here.
        let messages: Vec<(SqsMessage, Result<DeliveryJob, serde_json::Error>)> = event
            .records
            .into_iter()
            .map(|m| {
                let job = serde_json::from_str(m.body.as_deref().unwrap_or(""));
                (m, job)
            })
            .collect();
        self.prefetch_subscribers(messages.iter().filter_map(|(_, job)| job.as_ref().ok()))
            .await;
        let ledger = BatchLedger::default();
        let mut failed: Vec<String> = futures::stream::iter(messages)
            .map(|(message, job)| self.process(message, job, deadline, &ledger))
            .buffer_unordered(self.settings.concurrency.max(1))
            .filter_map(|failed| async move { failed })
            .collect()
            .await;
        let BatchLedger {
            metrics,
            sync_outcomes,
            health,
            attempts,
        } = ledger;
        self.save_health(health.into_inner().expect("health lock"))
            .await;
        self.log_attempts(attempts.into_inner().expect("attempts lock"))
            .await;
        failed.extend(
            self.count_sync_outcomes(sync_outcomes.into_inner().expect("outcomes lock"), deadline)
                .await,
        );
        let failures: Vec<BatchItemFailure> = failed
            .into_iter()
            .map(|message_id| {
                let mut failure = BatchItemFailure::default();
                failure.item_identifier = message_id;
                failure
            })
            .collect();
        let metrics = metrics.into_inner().expect("metrics lock");
        if metrics.deliveries + metrics.dlq_moves + metrics.parked > 0 {
            let now_ms = epoch_ms(self.ports.clock.as_ref());
            let line = metrics.emf("delivery", now_ms).to_string();
            if self.settings.metrics {
                (self.metric_lines)(&line);
            } else {
                tracing::debug!(emf = %line, "delivery metrics");
            }
        }
        let mut response = SqsBatchResponse::default();
        response.batch_item_failures = failures;
        response
    }

    /// Reads each client and application of the batch once, before the concurrent
    /// deliveries would all miss the cache at the same moment and read it a hundred times.
    async fn prefetch_subscribers<'a>(&self, jobs: impl Iterator<Item = &'a DeliveryJob>) {
        let mut clients = std::collections::BTreeSet::new();
        let mut applications = std::collections::BTreeSet::new();
        for job in jobs {
            match &job.target {
                Target::Callback { client, .. } => clients.insert(client.as_str()),
                Target::Application { application, .. } => {
                    applications.insert(application.as_str())
                }
                Target::SyncStep { .. } => false,
            };
        }
        // A failed read here is only a missed warm-up: each delivery reads again itself.
        let reads: Vec<_> = clients
            .iter()
            .map(|c| futures::future::Either::Left(async move { self.client(c).await.map(|_| ()) }))
            .chain(applications.iter().map(|a| {
                futures::future::Either::Right(async move { self.application(a).await.map(|_| ()) })
            }))
            .collect();
        let _ = futures::stream::iter(reads)
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await;
    }

    /// Drops the cached settings of a job's subscriber, so they are read again.
    fn forget_subscriber(&self, target: &Target) {
        match target {
            Target::Callback {
                record,
                callback,
                client,
            } => {
                self.clients.forget(client);
                self.subscriptions.forget(&endpoint_name(record, callback));
            }
            Target::Application { application, .. } => self.applications.forget(application),
            Target::SyncStep { .. } => {}
        }
    }

    async fn application(&self, id: &str) -> BackendResult<Option<Arc<Application>>> {
        // A cached "disabled" is read again: its owner may have just re-enabled it.
        if let Some(hit) = self.applications.get(id)
            && !hit.as_ref().is_some_and(|a| a.health.is_disabled())
        {
            return Ok(hit);
        }
        let app = self
            .ports
            .applications
            .get_application(id)
            .await?
            .map(Arc::new);
        self.applications.put(id, app.clone());
        Ok(app)
    }

    async fn client(&self, id: &str) -> BackendResult<Option<Arc<OAuthClient>>> {
        if let Some(hit) = self.clients.get(id) {
            return Ok(hit);
        }
        let client = self.ports.clients.get_client(id).await?.map(Arc::new);
        self.clients.put(id, client.clone());
        Ok(client)
    }

    async fn work(&self, job: &DeliveryJob) -> BackendResult<Work> {
        let clock = self.ports.clock.as_ref();
        if job.redelivery {
            self.forget_subscriber(&job.target);
        }
        Ok(match &job.target {
            Target::Callback {
                record,
                callback,
                client,
            } => {
                let Some(subscription) = self.subscription(record, callback).await? else {
                    return Ok(Work::Drop("the callback was unregistered"));
                };
                let client = self.client(client).await?;
                let secrets = client.as_ref().and_then(|c| c.webhook_secrets.as_ref());
                Work::Send {
                    outbound: callback_request(job.id.as_str(), callback, secrets, clock),
                    sync: None,
                    endpoint: Endpoint::Subscription(subscription),
                }
            }
            Target::Application {
                application,
                person,
                sync,
                ..
            } => {
                let Some(app) = self.application(application).await? else {
                    return Ok(Work::Drop("the application no longer exists"));
                };
                let outbound = match app.webhook.target() {
                    Ok(url) => application_request(
                        job.id.as_str(),
                        &app,
                        url,
                        std::slice::from_ref(person),
                        &job.created_at,
                        clock,
                    ),
                    Err(NoWebhook::Unset) => {
                        return Ok(Work::Drop("the application has no webhook URL"));
                    }
                    Err(why @ NoWebhook::Unusable(_)) => {
                        return Ok(Work::Unusable {
                            application: app,
                            reason: why.to_string(),
                        });
                    }
                };
                Work::Send {
                    outbound,
                    sync: sync.clone().map(|s| (application.clone(), s)),
                    endpoint: Endpoint::Application(app),
                }
            }
            Target::SyncStep { application, sync } => Work::SyncStep {
                application: application.clone(),
                sync: sync.clone(),
            },
        })
    }

    /// Delivers one message; returns its message id when it must stay on the queue.
    async fn process(
        &self,
        message: SqsMessage,
        job: Result<DeliveryJob, serde_json::Error>,
        deadline: Instant,
        ledger: &BatchLedger,
    ) -> Option<String> {
        let message_id = message.message_id.clone().unwrap_or_default();
        let receives: u32 = message
            .attributes
            .get("ApproximateReceiveCount")
            .and_then(|n| n.parse().ok())
            .unwrap_or(1);
        let job = match job {
            Ok(job) => job,
            Err(e) => {
                // Keep it: retrying cannot fix it, but the DLQ keeps it for an operator.
                tracing::error!(%message_id, receives, error = %e, "unreadable delivery job; sending it toward the dead-letter queue");
                self.hide(&message, Duration::ZERO, &message_id).await;
                return Some(message_id);
            }
        };
        // Receives of this message, plus the attempts of the messages it replaced.
        let attempt = job.attempts_made.saturating_add(receives);
        let span =
            tracing::info_span!("delivery", delivery_id = %job.id.as_str(), %message_id, attempt);
        self.process_job(&message, message_id, &job, attempt, deadline, ledger)
            .instrument(span)
            .await
    }

    /// Delivers one job (inside its span, so every log line names the delivery).
    async fn process_job(
        &self,
        message: &SqsMessage,
        message_id: String,
        job: &DeliveryJob,
        attempt: u32,
        deadline: Instant,
        ledger: &BatchLedger,
    ) -> Option<String> {
        let work = match self.work(job).await {
            Ok(work) => work,
            Err(e) => {
                return self
                    .backend_failure(message, &message_id, job, attempt, e)
                    .await;
            }
        };
        match work {
            Work::Drop(why) => {
                tracing::warn!(why, "job dropped");
                None
            }
            Work::SyncStep { application, sync } => {
                self.sync_step(
                    message,
                    &message_id,
                    (job, attempt),
                    (&application, &sync),
                    deadline,
                )
                .await
            }
            Work::Unusable {
                application,
                reason,
            } => {
                let endpoint = self.disable_application(application, reason).await;
                self.set_aside(
                    message,
                    message_id,
                    (job, attempt),
                    &endpoint,
                    &ledger.metrics,
                )
                .await
            }
            Work::Send {
                outbound,
                sync,
                endpoint,
            } => {
                if endpoint.health().is_disabled() {
                    return self
                        .set_aside(
                            message,
                            message_id,
                            (job, attempt),
                            &endpoint,
                            &ledger.metrics,
                        )
                        .await;
                }
                let at_ms = epoch_ms(self.ports.clock.as_ref());
                let (outcome, acknowledged) = outbound.send(&self.http).await;
                ledger
                    .attempts
                    .lock()
                    .expect("attempts lock")
                    .push(LoggedAttempt {
                        attempt: Attempt::new(
                            job,
                            endpoint.key(),
                            attempt,
                            at_ms,
                            &outcome,
                            acknowledged,
                        ),
                        job: job.replayable(),
                    });
                ledger
                    .metrics
                    .lock()
                    .expect("metrics lock")
                    .record(&outcome, acknowledged);
                self.tally_health(&ledger.health, &endpoint, &outcome, acknowledged);
                let verdict = decide(acknowledged, &self.settings.retry, attempt, &outcome);
                if let (Some((application, sync)), Verdict::Delivered | Verdict::Exhausted) =
                    (sync, verdict)
                    && let Target::Application { record, .. } = &job.target
                {
                    ledger
                        .sync_outcomes
                        .lock()
                        .expect("outcomes lock")
                        .push(SyncOutcome {
                            application,
                            sync,
                            outcome: PersonOutcome {
                                person: record.clone(),
                                delivered: verdict == Verdict::Delivered,
                            },
                            message_id: message_id.clone(),
                            receipt_handle: message.receipt_handle.clone(),
                        });
                }
                match verdict {
                    Verdict::Delivered => {
                        // Counted in the batch's metric line; one INFO line per delivery
                        // would cost more in CloudWatch Logs than the rest of its logging.
                        tracing::debug!(
                            status = outcome.status,
                            latency_ms = outcome.latency.as_millis() as u64,
                            "delivered"
                        );
                        None
                    }
                    Verdict::RetryAfter(delay) => {
                        tracing::warn!(
                            status = outcome.status,
                            error = outcome.error.as_deref(),
                            retry_in_ms = delay.as_millis() as u64,
                            "delivery failed; will retry"
                        );
                        self.hide(message, delay, &message_id).await;
                        Some(message_id)
                    }
                    Verdict::Exhausted => {
                        tracing::error!(
                            status = outcome.status,
                            error = outcome.error.as_deref(),
                            "delivery failed on the last attempt; moving to the dead-letter queue"
                        );
                        ledger.metrics.lock().expect("metrics lock").dlq_moves += 1;
                        announce(
                            self.ports.events.as_ref(),
                            OpsEvent::MessageExhausted {
                                message_id: job.id.as_str().to_owned(),
                                endpoint: endpoint.name(),
                                attempts: attempt,
                                last_error: outcome.error.clone().unwrap_or_else(|| {
                                    format!("HTTP {}", outcome.status.unwrap_or_default())
                                }),
                            },
                        )
                        .await;
                        self.exhausted(message, message_id, job).await
                    }
                }
            }
        }
    }

    /// After the last attempt. A message whose receive count holds its whole history is
    /// left to the queue's redrive policy (which moves the original message); one sent
    /// again after a backend failure is below the redrive limit, so it is moved here.
    async fn exhausted(
        &self,
        message: &SqsMessage,
        message_id: String,
        job: &DeliveryJob,
    ) -> Option<String> {
        if *job != job.replayable() {
            match self.ports.queue.dead_letter(&job.replayable()).await {
                Ok(()) => return None,
                Err(e) => {
                    tracing::warn!(error = %e, "could not move the job to the dead-letter queue; it will come back");
                }
            }
        }
        self.hide(message, Duration::ZERO, &message_id).await;
        Some(message_id)
    }

    /// A job for a disabled endpoint. Lose nothing, and keep the DLQ for failures: the
    /// parked queue keeps it until the owner re-enables the endpoint and an operator
    /// replays it (`handlers::replay`).
    async fn set_aside(
        &self,
        message: &SqsMessage,
        message_id: String,
        (job, attempt): (&DeliveryJob, u32),
        endpoint: &Endpoint,
        metrics: &Mutex<DeliveryMetrics>,
    ) -> Option<String> {
        match self.ports.queue.park(&job.replayable()).await {
            Ok(()) => {
                metrics.lock().expect("metrics lock").parked += 1;
                tracing::warn!(endpoint = %endpoint.name(), "endpoint disabled; job parked until it is re-enabled");
                None
            }
            Err(e) => {
                self.backend_failure(message, &message_id, job, attempt, e)
                    .await
            }
        }
    }

    /// Disables an application whose stored webhook URL cannot be used (once: later jobs
    /// find it disabled), and tells its operators why.
    async fn disable_application(&self, application: Arc<Application>, reason: String) -> Endpoint {
        let mut updated = (*application).clone();
        let now = self.ports.clock.now().unix_timestamp();
        if !updated.health.disable(now, reason.clone()) {
            return Endpoint::Application(application);
        }
        let updated = Arc::new(updated);
        if let Err(e) = self
            .ports
            .applications
            .set_application_health(&updated.id, &updated.health)
            .await
        {
            tracing::warn!(error = %e, "could not save the endpoint's health");
        }
        self.applications.put(&updated.id, Some(updated.clone()));
        let endpoint = Endpoint::Application(updated);
        tracing::error!(endpoint = %endpoint.name(), %reason, "endpoint disabled");
        announce(
            self.ports.events.as_ref(),
            OpsEvent::EndpointDisabled {
                endpoint: endpoint.name(),
                reason,
            },
        )
        .await;
        endpoint
    }

    /// Applies an attempt's outcome to the endpoint's health as this batch sees it
    /// (written once the batch is done, by [`Self::save_health`]).
    fn tally_health(
        &self,
        tallies: &Mutex<HashMap<String, HealthTally>>,
        endpoint: &Endpoint,
        outcome: &AttemptOutcome,
        acknowledged: bool,
    ) {
        let mut tallies = tallies.lock().expect("health lock");
        let tally = tallies
            .entry(endpoint.name())
            .or_insert_with(|| HealthTally {
                endpoint: endpoint.clone(),
                saved: endpoint.health().clone(),
                now: endpoint.health().clone(),
                newly_disabled: false,
            });
        if acknowledged {
            tally.now.record_success();
        } else {
            let error = outcome
                .error
                .clone()
                .unwrap_or_else(|| format!("HTTP {}", outcome.status.unwrap_or_default()));
            tally.newly_disabled |= tally.now.record_failure(
                self.ports.clock.now().unix_timestamp(),
                outcome.status,
                &error,
                &self.settings.health,
            );
        }
    }

    /// Writes each endpoint's health once for the batch, and only when it must be
    /// ([`EndpointHealth::must_save_over`]: a change of state, or a further failure at most
    /// once per save interval); announces the endpoints it disabled.
    async fn save_health(&self, tallies: HashMap<String, HealthTally>) {
        for tally in tallies.into_values() {
            if !tally
                .now
                .must_save_over(&tally.saved, &self.settings.health)
            {
                continue;
            }
            let health = tally.now;
            let written = match &tally.endpoint {
                Endpoint::Subscription(s) => {
                    let result = self
                        .ports
                        .subscriptions
                        .set_subscription_health(&s.record, &s.callback, &health)
                        .await;
                    if result.is_ok() {
                        let mut updated = (**s).clone();
                        updated.health = health.clone();
                        self.subscriptions
                            .put(&s.endpoint(), Some(Arc::new(updated)));
                    }
                    result
                }
                Endpoint::Application(a) => {
                    let result = self
                        .ports
                        .applications
                        .set_application_health(&a.id, &health)
                        .await;
                    if result.is_ok() {
                        let mut updated = (**a).clone();
                        updated.health = health.clone();
                        self.applications.put(&a.id, Some(Arc::new(updated)));
                    }
                    result
                }
            };
            if let Err(e) = written {
                // The cache keeps what is stored: the next batch's attempts, compared with it,
                // write their health again.
                tracing::warn!(endpoint = %tally.endpoint.name(), error = %e, "could not save the endpoint's health");
            }
            if tally.newly_disabled {
                let reason = health.disabled_reason.clone().unwrap_or_default();
                tracing::error!(endpoint = %tally.endpoint.name(), %reason, "endpoint disabled");
                announce(
                    self.ports.events.as_ref(),
                    OpsEvent::EndpointDisabled {
                        endpoint: tally.endpoint.name(),
                        reason,
                    },
                )
                .await;
            }
        }
    }

    /// Records the batch's attempts in one call. The log is for the endpoint's owner:
    /// when it cannot be written the deliveries stand, and the failure is logged.
    async fn log_attempts(&self, attempts: Vec<LoggedAttempt>) {
        if attempts.is_empty() {
            return;
        }
        if let Err(e) = self.ports.attempts.record(&attempts).await {
            tracing::error!(error = %e, attempts = attempts.len(), "could not record delivery attempts");
        }
    }

    /// Counts the batch's fan-out sync outcomes, one call per sync (each person once,
    /// however often its job came back), and announces a sync it completes. A throttled
    /// or failed count is tried again a few times; if it still fails, the acknowledged
    /// messages are given back to be delivered and counted again (a duplicate for the
    /// receiver, never a lost count); returns their ids.
    async fn count_sync_outcomes(
        &self,
        outcomes: Vec<SyncOutcome>,
        deadline: Instant,
    ) -> Vec<String> {
        let mut per_sync: BTreeMap<(String, String), Vec<SyncOutcome>> = BTreeMap::new();
        for outcome in outcomes {
            per_sync
                .entry((outcome.application.clone(), outcome.sync.clone()))
                .or_default()
                .push(outcome);
        }
        let mut give_back = Vec::new();
        for ((application, sync), outcomes) in per_sync {
            let persons: Vec<PersonOutcome> = outcomes.iter().map(|o| o.outcome.clone()).collect();
            let counted = retry_until(deadline, || {
                self.ports
                    .syncs
                    .count_sync_outcomes(&application, &sync, &persons)
            })
            .await;
            if let Err(e) = counted {
                give_back.extend(self.give_back_uncounted(outcomes, &sync, &e).await);
                continue;
            }
            // Counted: the messages are done whatever happens next. The completion is
            // claimed with one claimant on every try, so a claim that landed but reported
            // an error is still this batch's to announce; giving the messages back here
            // would leave such a claim with nobody to announce it.
            let claimant = uuid::Uuid::new_v4().simple().to_string();
            let announced = retry_until(deadline, || {
                announce_if_complete(
                    self.ports.syncs.as_ref(),
                    self.ports.events.as_ref(),
                    &application,
                    &sync,
                    &claimant,
                )
            })
            .await;
            if let Err(e) = announced {
                tracing::error!(%sync, error = %e, "could not check or announce the sync's completion; the step or a later batch checks again");
            }
        }
        give_back
    }

    /// Gives the delivered messages of a sync whose outcomes could not be counted back to
    /// the queue (delivered and counted again later); returns their ids.
    async fn give_back_uncounted(
        &self,
        outcomes: Vec<SyncOutcome>,
        sync: &str,
        e: &BackendError,
    ) -> Vec<String> {
        let mut give_back = Vec::new();
        for outcome in outcomes {
            if outcome.outcome.delivered {
                tracing::warn!(message_id = %outcome.message_id, %sync, error = %e, "could not count the sync outcome; the message will be delivered and counted again");
                if let Some(receipt) = outcome.receipt_handle.as_deref()
                    && let Err(e) = self
                        .ports
                        .queue
                        .retry_later(receipt, self.settings.retry.base)
                        .await
                {
                    tracing::warn!(message_id = %outcome.message_id, error = %e, "could not change the message's visibility");
                }
                give_back.push(outcome.message_id);
            } else {
                // Already on its way to the dead-letter queue: its count is missing
                // until it is replayed and delivered.
                tracing::error!(message_id = %outcome.message_id, %sync, error = %e, "could not count a dead-lettered sync job");
            }
        }
        give_back
    }

    async fn subscription(
        &self,
        record: &RecordId,
        callback: &CallbackUrl,
    ) -> BackendResult<Option<Arc<Subscription>>> {
        let key = endpoint_name(record, callback);
        // A cached "disabled" is read again: its owner may have just re-enabled it.
        if let Some(hit) = self.subscriptions.get(&key)
            && !hit.as_ref().is_some_and(|s| s.health.is_disabled())
        {
            return Ok(hit);
        }
        let subscription = self
            .ports
            .subscriptions
            .get_subscription(record, callback)
            .await?
            .map(Arc::new);
        // Only found subscriptions are remembered: a callback registered again right after
        // being removed must not have its jobs dropped.
        if subscription.is_some() {
            self.subscriptions.put(&key, subscription.clone());
        }
        Ok(subscription)
    }

    async fn sync_step(
        &self,
        message: &SqsMessage,
        message_id: &str,
        (job, attempt): (&DeliveryJob, u32),
        (application, sync): (&str, &str),
        deadline: Instant,
    ) -> Option<String> {
        let driver = SyncDriver {
            ports: &self.ports,
            http: &self.http,
            retry: self.settings.retry,
        };
        // The lease's holder is the step job's id: the same when SQS delivers the message
        // again and when a backend failure sends the job again as a new message.
        match driver
            .step(application, sync, job.id.as_str(), deadline)
            .await
        {
            Ok(StepOutcome::Done) => None,
            Ok(StepOutcome::Again(delay)) => {
                let next = DeliveryJob::sync_step(
                    application,
                    sync,
                    rfc3339_millis(self.ports.clock.now()),
                );
                match self.ports.queue.enqueue_delayed(&next, delay).await {
                    Ok(()) => None,
                    Err(e) => {
                        self.backend_failure(message, message_id, job, attempt, e)
                            .await
                    }
                }
            }
            Err(e) => {
                self.backend_failure(message, message_id, job, attempt, e)
                    .await
            }
        }
    }

    /// A store or queue failed before the receiver was tried (attempt `attempt` did not
    /// happen). The job is sent again as a new message after the doubling delay for its
    /// backend failures (at most the 15-minute send delay), carrying the attempts it made,
    /// and this message is acknowledged: a backend outage spends no delivery attempt.
    /// After [`MAX_BACKEND_FAILURES`] it goes to the dead-letter queue. Only when the
    /// queue refuses the new message does this one stay, hidden for the doubling delay
    /// of its receive count (then the outage does spend a receive).
    async fn backend_failure(
        &self,
        message: &SqsMessage,
        message_id: &str,
        job: &DeliveryJob,
        attempt: u32,
        e: BackendError,
    ) -> Option<String> {
        let again = job.after_backend_failure(attempt);
        if again.backend_failures > MAX_BACKEND_FAILURES {
            tracing::error!(error = %e, backend_failures = job.backend_failures, "backend failing for too long; moving the job to the dead-letter queue");
            announce(
                self.ports.events.as_ref(),
                OpsEvent::MessageExhausted {
                    message_id: job.id.as_str().to_owned(),
                    endpoint: endpoint_of(job),
                    attempts: again.attempts_made,
                    last_error: e.to_string(),
                },
            )
            .await;
            return self.exhausted(message, message_id.to_owned(), &again).await;
        }
        let delay = self
            .settings
            .retry
            .next_delay(again.backend_failures, None)
            .min(MAX_SEND_DELAY);
        match self.ports.queue.enqueue_delayed(&again, delay).await {
            Ok(()) => {
                tracing::warn!(error = %e, backend_failures = again.backend_failures, retry_in_ms = delay.as_millis() as u64, "backend failure; the job will be retried without spending an attempt");
                None
            }
            Err(queue_error) => {
                let receives = attempt.saturating_sub(job.attempts_made).max(1);
                let delay = self.settings.retry.next_delay(receives, None);
                tracing::warn!(error = %e, %queue_error, retry_in_ms = delay.as_millis() as u64, "backend failure, and the job could not be sent again; the message will be retried");
                self.hide(message, delay, message_id).await;
                Some(message_id.to_owned())
            }
        }
    }

    async fn hide(&self, message: &SqsMessage, delay: Duration, message_id: &str) {
        let Some(receipt) = message.receipt_handle.as_deref() else {
            return;
        };
        if let Err(e) = self.ports.queue.retry_later(receipt, delay).await {
            // The message still comes back after the queue's default visibility timeout.
            tracing::warn!(%message_id, error = %e, "could not change the message's visibility");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(status: Option<u16>, retry_after: Option<u64>) -> AttemptOutcome {
        AttemptOutcome {
            status,
            retry_after: retry_after.map(Duration::from_secs),
            latency: Duration::ZERO,
            error: status.is_none().then(|| "timeout".into()),
            body_prefix: bytes::Bytes::new(),
        }
    }

    #[test]
    fn decisions() {
        let retry = RetryPolicy {
            base: Duration::from_secs(10),
            max_attempts: 3,
            jitter: 0.0,
        };
        assert_eq!(
            decide(true, &retry, 1, &outcome(Some(204), None)),
            Verdict::Delivered
        );
        assert_eq!(
            decide(true, &retry, 3, &outcome(Some(200), None)),
            Verdict::Delivered
        );
        assert_eq!(
            decide(false, &retry, 1, &outcome(Some(500), None)),
            Verdict::RetryAfter(Duration::from_secs(10))
        );
        assert_eq!(
            decide(false, &retry, 2, &outcome(None, None)),
            Verdict::RetryAfter(Duration::from_secs(20))
        );
        assert_eq!(
            decide(false, &retry, 1, &outcome(Some(429), Some(120))),
            Verdict::RetryAfter(Duration::from_secs(120))
        );
        assert_eq!(
            decide(false, &retry, 3, &outcome(Some(500), None)),
            Verdict::Exhausted
        );
    }
}
