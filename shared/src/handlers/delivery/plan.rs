//! Planning a batch: each message read once, and what its job asks for (a request to
//! send, a sync step to run, or nothing left to do).

use super::Delivery;
use super::subscribers::{Endpoint, Named};
use crate::application::{Application, NoWebhook};
use crate::callback::CallbackUrl;
use crate::handlers::outbound::{Outbound, application_request, callback_request};
use crate::ids::{ApplicationId, ClientId, SyncKey};
use crate::job::{DeliveryJob, Target};
use crate::members::ScopedPerson;
use crate::ports::BackendResult;
use crate::record::RecordId;
use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use std::sync::Arc;

/// What the handler keeps of a message it received: the rest of an SQS message (its other
/// attributes, checksums and source) is dropped as the batch is taken, on the thread that
/// read the event, rather than on the batch's worker after its request (memory freed on
/// another thread than the one that allocated it costs the allocator more: figure 2's
/// profile in docs/benchmarks.md, twelfth pass).
#[derive(Debug)]
pub(super) struct QueueMessage {
    /// The SQS message id (what a batch item failure names).
    pub(super) id: String,
    /// The handle its visibility is changed by (none for a job the flush attempts first:
    /// it is on no queue).
    pub(super) receipt_handle: Option<String>,
    /// How often SQS has handed it out (1 when it does not say).
    pub(super) receives: u32,
}

impl QueueMessage {
    /// A job the flush has made, attempted before it is on any queue.
    pub(super) fn unqueued(job: &DeliveryJob) -> Self {
        Self {
            id: job.id.as_str().to_owned(),
            receipt_handle: None,
            receives: 1,
        }
    }
}

/// A message's job: its body as received, or the job itself (made by the flush).
pub(super) enum Body {
    Text(Option<String>),
    Job(DeliveryJob),
}

/// A message of the batch, its body not yet read.
pub(super) type Unread = (QueueMessage, Body);

/// A message of the batch, with its body read as a job.
pub(super) type Parsed = (QueueMessage, Result<DeliveryJob, serde_json::Error>);

/// What the handler keeps of each message of the event: the rest is dropped here, on the
/// thread that read the event.
pub(super) fn unread(event: SqsEvent) -> Vec<Unread> {
    event
        .records
        .into_iter()
        .map(|m| {
            let receives = receives(&m);
            let message = QueueMessage {
                id: m.message_id.unwrap_or_default(),
                receipt_handle: m.receipt_handle,
                receives,
            };
            (message, Body::Text(m.body))
        })
        .collect()
}

/// Reads each message's body once, as a job.
pub(super) fn read(unread: Vec<Unread>) -> Vec<Parsed> {
    unread
        .into_iter()
        .map(|(message, body)| {
            let job = match body {
                Body::Text(text) => serde_json::from_str(text.as_deref().unwrap_or("")),
                Body::Job(job) => Ok(job),
            };
            (message, job)
        })
        .collect()
}

/// How often SQS has handed this message out (1 when it does not say).
fn receives(message: &SqsMessage) -> u32 {
    // Found by going through the few attributes SQS sends (four or five) rather than by
    // the map's SipHash of the name, which was most of reading a message's attributes
    // (figure 2's profile, docs/benchmarks.md, thirteenth pass).
    message
        .attributes
        .iter()
        .find(|(name, _)| *name == "ApproximateReceiveCount")
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or(1)
}

/// Where a batch's messages come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    /// Received from the delivery queue: a retry hides the message for its delay, and the
    /// queue's redrive policy moves it to the dead-letter queue after its last receive.
    Queue,
    /// Jobs the flush has just made, attempted before they are on any queue: a retry is the
    /// job sent to the queue with a delay, a move to the dead-letter queue a message sent.
    Flush,
}

/// A message received in this batch, with its job and the attempt it is.
pub(super) struct Received<'a> {
    pub(super) message: &'a QueueMessage,
    pub(super) source: Source,
    pub(super) job: &'a DeliveryJob,
    /// Receives of this message, plus the attempts of the messages it replaced (1-based).
    pub(super) attempt: u32,
}

/// What a message asked for.
pub(super) enum Work {
    Send(Send),
    Drop(&'static str),
    /// The application's stored webhook URL cannot be used: no attempt can succeed until
    /// its owner sets a new one.
    Unusable {
        application: Arc<Named<Application>>,
        reason: String,
    },
    SyncStep(SyncKey),
}

/// A request to make.
pub(super) struct Send {
    pub(super) outbound: Outbound,
    /// The full sync this job is part of, if any.
    pub(super) sync: Option<SyncKey>,
    pub(super) endpoint: Endpoint,
}

impl Delivery {
    /// What `job` asks for, with its subscriber's settings read (from the cache when fresh).
    pub(super) async fn work(&self, job: &DeliveryJob) -> BackendResult<Work> {
        if job.redelivery {
            self.forget_subscriber(&job.target);
        }
        match &job.target {
            Target::Callback {
                record,
                callback,
                client,
            } => self.callback_work(job, record, callback, client).await,
            Target::Application {
                application,
                person,
                ..
            } => {
                self.application_work(job, application, person, job.target.sync())
                    .await
            }
            Target::SyncStep { .. } => Ok(match job.target.sync() {
                Some(sync) => Work::SyncStep(sync),
                None => Work::Drop("a sync step names no sync"),
            }),
        }
    }

    async fn callback_work(
        &self,
        job: &DeliveryJob,
        record: &RecordId,
        callback: &CallbackUrl,
        client: &ClientId,
    ) -> BackendResult<Work> {
        let Some(subscription) = self.subscription(record, callback).await? else {
            return Ok(Work::Drop("the callback was unregistered"));
        };
        let client = self.client(client).await?;
        let secrets = client.as_ref().and_then(|c| c.webhook_secrets.as_ref());
        let clock = self.ports.clock.as_ref();
        Ok(Work::Send(Send {
            // The stored subscription's URL (the same text the job names, by which it was
            // found), parsed when it was cached and shared by every request to it.
            outbound: callback_request(&job.id, &subscription.settings.callback, secrets, clock),
            sync: None,
            endpoint: Endpoint::Subscription(subscription),
        }))
    }

    async fn application_work(
        &self,
        job: &DeliveryJob,
        application: &ApplicationId,
        person: &ScopedPerson,
        sync: Option<SyncKey>,
    ) -> BackendResult<Work> {
        let Some(app) = self.application(application).await? else {
            return Ok(Work::Drop("the application no longer exists"));
        };
        let url = match app.settings.webhook.target() {
            Ok(url) => url,
            Err(NoWebhook::Unset) => return Ok(Work::Drop("the application has no webhook URL")),
            Err(why @ NoWebhook::Unusable(_)) => {
                return Ok(Work::Unusable {
                    reason: why.to_string(),
                    application: app,
                });
            }
        };
        let outbound = application_request(
            &job.id,
            &app.settings,
            url,
            std::slice::from_ref(person),
            job.created_at,
            self.ports.clock.as_ref(),
        );
        Ok(Work::Send(Send {
            outbound,
            sync,
            endpoint: Endpoint::Application(app),
        }))
    }
}
