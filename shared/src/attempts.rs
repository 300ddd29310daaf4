//! The delivery attempt log: what an endpoint's owner sees of every attempt (like GitHub's
//! "Recent Deliveries" or Svix's message attempts), and the message kept beside it so it
//! can be sent again. Kept `AttemptRetentionDays`.

use crate::callback::CallbackUrl;
use crate::clock::{Timestamp, push_zero_padded};
use crate::http_client::{AttemptFailure, AttemptOutcome, RESPONSE_PREFIX_BYTES};
use crate::ids::{ApplicationId, ClientId};
use crate::job::{DeliveryJob, MessageId, Target};
use crate::record::RecordId;
use crate::subscription::Subscription;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// How long attempts and their messages are kept unless configured
/// (`AttemptRetentionDays`).
pub const DEFAULT_RETENTION_DAYS: u64 = 30;

/// The endpoint an attempt went to, as the log keys it: `app_<application id>` for an
/// application's webhook, `wh_<32 hex digits>` (a hash of record and callback URL) for an
/// ORCID-style subscription. The latter is the subscription's opaque webhook id, which
/// its client uses in paths instead of the URL (API Gateway decodes paths, so a URL in
/// one would be ambiguous).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EndpointKey(String);

impl EndpointKey {
    /// An application's webhook.
    pub fn application(application: &ApplicationId) -> Self {
        Self(format!("app_{application}"))
    }

    /// An ORCID-style subscription.
    pub fn subscription(record: &RecordId, callback: &CallbackUrl) -> Self {
        let mut h = Sha256::new();
        h.update(record.as_str().as_bytes());
        h.update([0]);
        h.update(callback.as_str().as_bytes());
        Self(format!("wh_{}", hex::encode(&h.finalize()[..16])))
    }

    /// A webhook id as a client gives it in a path; `None` unless it has the form of one
    /// (it may still name no subscription, or another client's).
    pub fn webhook_id(text: &str) -> Option<Self> {
        let hex = text.strip_prefix("wh_")?;
        (hex.len() == 32
            && hex
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
        .then(|| Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Who owns an endpoint: an application owns its webhook, an OAuth client its ORCID-style
/// subscriptions. A store may keep an owner's attempts together (the DynamoDB adapter
/// writes a delivery batch's acknowledged first attempts as one item per owner), so the
/// log is read by endpoint and owner.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EndpointOwner {
    /// A Members-style application.
    Application(ApplicationId),
    /// The OAuth client that registered an ORCID-style subscription.
    Client(ClientId),
}

impl EndpointOwner {
    /// The owner of the endpoint `job` goes to.
    pub fn of_job(job: &DeliveryJob) -> Self {
        match &job.target {
            Target::Callback { client, .. } => Self::Client(client.clone()),
            Target::Application { application, .. } | Target::SyncStep { application, .. } => {
                Self::Application(application.clone())
            }
        }
    }

    /// The owner as a storage key: `app_<id>` or `client_<id>`.
    pub fn key(&self) -> String {
        match self {
            Self::Application(id) => format!("app_{id}"),
            Self::Client(id) => format!("client_{id}"),
        }
    }
}

/// An endpoint as the attempt log is read: its key and its owner.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LogEndpoint {
    pub key: EndpointKey,
    pub owner: EndpointOwner,
}

impl LogEndpoint {
    /// An application's webhook.
    pub fn application(application: &ApplicationId) -> Self {
        Self {
            key: EndpointKey::application(application),
            owner: EndpointOwner::Application(application.clone()),
        }
    }

    /// An ORCID-style subscription, owned by the client that registered it.
    pub fn subscription(subscription: &Subscription) -> Self {
        Self {
            key: EndpointKey::subscription(&subscription.record, &subscription.callback),
            owner: EndpointOwner::Client(subscription.client_id.clone()),
        }
    }
}

impl EndpointKey {
    /// The endpoint `job` goes to (a sync step's is its application's webhook).
    pub fn of_job(job: &DeliveryJob) -> Self {
        match &job.target {
            Target::Callback {
                record, callback, ..
            } => Self::subscription(record, callback),
            Target::Application { application, .. } | Target::SyncStep { application, .. } => {
                Self::application(application)
            }
        }
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeClass {
    /// The receiver acknowledged.
    Acked,
    /// The receiver answered with a status that does not acknowledge.
    HttpStatus,
    /// No answer within the delivery timeout.
    Timeout,
    /// No connection, or it broke.
    ConnectionError,
    /// The URL or its addresses are not allowed by the URL policy: nothing was sent.
    RefusedByUrlPolicy,
}

impl OutcomeClass {
    /// The class of an attempt that ended with `outcome`.
    pub fn of(outcome: &AttemptOutcome, acknowledged: bool) -> Self {
        outcome
            .failure(acknowledged)
            .map_or(Self::Acked, |failure| Self::of_failure(&failure))
    }

    /// The class of a failed attempt.
    pub fn of_failure(failure: &AttemptFailure) -> Self {
        match failure {
            AttemptFailure::HttpStatus(_) => Self::HttpStatus,
            AttemptFailure::Timeout(_) => Self::Timeout,
            AttemptFailure::Connection(_) | AttemptFailure::Request(_) => Self::ConnectionError,
            AttemptFailure::RefusedByUrlPolicy(_) => Self::RefusedByUrlPolicy,
        }
    }

    /// True for an acknowledged attempt.
    pub fn is_acked(self) -> bool {
        self == Self::Acked
    }
}

/// One recorded delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// The message (`webhook-id`), the same across its attempts and redeliveries.
    pub message_id: MessageId,
    pub endpoint: EndpointKey,
    /// 1-based attempt number within its attempt series.
    pub attempt: u32,
    /// When it was made.
    #[serde(rename = "at_ms")]
    pub at: Timestamp,
    pub outcome: OutcomeClass,
    /// The receiver's HTTP status, if it answered.
    pub status: Option<u16>,
    /// Time from sending to the answer (or the failure), milliseconds.
    pub latency_ms: u64,
    /// The first [`RESPONSE_PREFIX_BYTES`] of the response body (lossy UTF-8), or the
    /// error when there was no answer. Never anything of the request.
    pub response: String,
}

impl Attempt {
    /// The log entry of an attempt of `job` to `endpoint`.
    pub fn new(
        job: &DeliveryJob,
        endpoint: EndpointKey,
        attempt: u32,
        at: Timestamp,
        outcome: &AttemptOutcome,
        acknowledged: bool,
    ) -> Self {
        let response = match (&outcome.error, outcome.status) {
            (Some(error), None) => error.to_string(),
            _ => {
                let end = outcome.body_prefix.len().min(RESPONSE_PREFIX_BYTES);
                String::from_utf8_lossy(&outcome.body_prefix[..end]).into_owned()
            }
        };
        Self {
            message_id: job.id.clone(),
            endpoint,
            attempt,
            at,
            outcome: OutcomeClass::of(outcome, acknowledged),
            status: outcome.status,
            latency_ms: outcome.latency.as_millis().min(u128::from(u64::MAX)) as u64,
            response,
        }
    }

    /// The position of this attempt in its endpoint's log: time first, so the log reads
    /// newest first by going backwards; unique per attempt.
    pub fn sort_key(&self) -> String {
        // `{:013}#{message_id}#{:04}`, written without `format!` (whose padding made it a
        // quarter of the in-memory attempt log's work per attempt in figure 2's profile).
        let message_id = self.message_id.as_str();
        let mut key = String::with_capacity(13 + 1 + message_id.len() + 1 + 4);
        push_zero_padded(&mut key, self.at.epoch_ms().max(0).unsigned_abs(), 13);
        key.push('#');
        key.push_str(message_id);
        key.push('#');
        push_zero_padded(&mut key, u64::from(self.attempt), 4);
        key
    }
}

/// An attempt together with the message it sent: what the delivery handler records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedAttempt {
    pub attempt: Attempt,
    /// The message as it can be sent again (counters cleared).
    pub job: DeliveryJob,
}

impl LoggedAttempt {
    /// True for the attempt nearly every message has while its receiver is healthy: the
    /// first of its series, acknowledged, not sent again by its owner, to the endpoint its
    /// job names. Nothing about it needs finding on its own (no recovery looks for it), so
    /// a store may keep it with the other quiet attempts of its batch to the same owner.
    pub fn is_quiet(&self) -> bool {
        let a = &self.attempt;
        a.attempt == 1
            && a.outcome.is_acked()
            && !self.job.redelivery
            && a.endpoint == EndpointKey::of_job(&self.job)
    }
}

/// The failing messages a recovery sends again: the first of them (a recovery takes at
/// most so many), and whether more were left behind (the recovery is then incomplete).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailingMessages {
    /// Oldest failure first, each message once.
    pub items: Vec<StoredMessage>,
    /// True when more failing messages follow these.
    pub more: bool,
}

impl FailingMessages {
    /// The first `limit` of up to `limit + 1` failing messages found (one more than are
    /// taken, to know whether more follow).
    pub fn from_overfetch(mut items: Vec<StoredMessage>, limit: usize) -> Self {
        let more = items.len() > limit;
        items.truncate(limit);
        Self { items, more }
    }
}

fn is_first(n: &u32) -> bool {
    *n == 1
}

fn first() -> u32 {
    1
}

fn is_acked(outcome: &OutcomeClass) -> bool {
    outcome.is_acked()
}

fn acked() -> OutcomeClass {
    OutcomeClass::Acked
}

/// A quiet attempt ([`LoggedAttempt::is_quiet`]) with its message, as a store keeps it in a
/// group of its batch's quiet attempts. Short names, and what every quiet attempt has left
/// out (attempt 1 and acknowledged as defaults; the endpoint, which its job names): they
/// are stored in every entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuietEntry {
    #[serde(rename = "t")]
    pub at_ms: Timestamp,
    #[serde(rename = "n", default = "first", skip_serializing_if = "is_first")]
    pub attempt: u32,
    #[serde(rename = "o", default = "acked", skip_serializing_if = "is_acked")]
    pub outcome: OutcomeClass,
    #[serde(rename = "s", default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(rename = "l")]
    pub latency_ms: u64,
    #[serde(rename = "r", default, skip_serializing_if = "String::is_empty")]
    pub response: String,
    #[serde(rename = "j")]
    pub job: DeliveryJob,
}

impl QuietEntry {
    pub fn of(logged: &LoggedAttempt) -> Self {
        let a = &logged.attempt;
        Self {
            at_ms: a.at,
            attempt: a.attempt,
            outcome: a.outcome,
            status: a.status,
            latency_ms: a.latency_ms,
            response: a.response.clone(),
            job: logged.job.clone(),
        }
    }

    /// The attempt as it was logged.
    pub fn attempt(&self) -> Attempt {
        Attempt {
            message_id: self.job.id.clone(),
            endpoint: EndpointKey::of_job(&self.job),
            attempt: self.attempt,
            at: self.at_ms,
            outcome: self.outcome,
            status: self.status,
            latency_ms: self.latency_ms,
            response: self.response.clone(),
        }
    }

    /// Its message as this attempt left it.
    pub fn message(&self) -> StoredMessage {
        StoredMessage {
            endpoint: EndpointKey::of_job(&self.job),
            job: self.job.clone(),
            last_attempt: self.attempt,
            last_attempt_at: self.at_ms,
            last_outcome: self.outcome,
        }
    }
}

/// A kept message with how its latest attempt ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    pub endpoint: EndpointKey,
    /// What is sent (counters cleared).
    pub job: DeliveryJob,
    /// Its latest recorded attempt's number.
    pub last_attempt: u32,
    /// When its latest recorded attempt was made.
    #[serde(rename = "last_attempt_ms")]
    pub last_attempt_at: Timestamp,
    /// How its latest recorded attempt ended.
    pub last_outcome: OutcomeClass,
}

impl StoredMessage {
    /// The message as `logged` leaves it. A message has one attempt in flight at a time
    /// and its attempts come one after the other, so the latest one written is the
    /// latest one made.
    pub fn of(logged: &LoggedAttempt) -> Self {
        Self::of_job(&logged.attempt, logged.job.clone())
    }

    /// The message of `job` as `attempt` of it leaves it.
    pub fn of_job(attempt: &Attempt, job: DeliveryJob) -> Self {
        Self {
            endpoint: attempt.endpoint.clone(),
            job,
            last_attempt: attempt.attempt,
            last_attempt_at: attempt.at,
            last_outcome: attempt.outcome,
        }
    }

    /// Notes `attempt`, of this message, as its latest (the job kept as it is).
    pub fn note_latest(&mut self, attempt: &Attempt) {
        self.last_attempt = attempt.attempt;
        self.last_attempt_at = attempt.at;
        self.last_outcome = attempt.outcome;
    }

    /// The earliest time any of its attempts can have been made (the job's creation).
    pub fn created(&self) -> Timestamp {
        self.job.created_at
    }
}

/// A recovery's id: `rec_` and 32 hex digits. Serialized as its text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RecoveryId(String);

impl RecoveryId {
    /// A new, random id.
    pub fn generate() -> Self {
        Self(format!("rec_{}", uuid::Uuid::new_v4().simple()))
    }

    /// The id a request names (checked only by being found).
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// The id as the stores keep it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RecoveryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An owner's recovery: which messages it sent again, so its progress can be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recovery {
    pub id: RecoveryId,
    pub endpoint: EndpointKey,
    /// The `since` it was asked for, as given.
    pub since: String,
    /// When it started.
    #[serde(rename = "started_at_ms")]
    pub started_at: Timestamp,
    /// The messages it sent again.
    pub messages: Vec<MessageId>,
    /// False when more failed messages were left for another recovery.
    pub complete: bool,
}

impl Recovery {
    /// Its progress, from its messages as kept now: a message whose latest attempt came
    /// after the start is delivered (acknowledged) or failing (still retried, or
    /// dead-lettered again); one with none since is still queued.
    pub fn progress(&self, kept: &[StoredMessage]) -> RecoveryProgress {
        let (mut delivered, mut failing) = (0, 0);
        for message in kept {
            if message.last_attempt_at >= self.started_at && self.messages.contains(&message.job.id)
            {
                if message.last_outcome.is_acked() {
                    delivered += 1;
                } else {
                    failing += 1;
                }
            }
        }
        RecoveryProgress {
            delivered,
            failing,
            queued: self.messages.len() - delivered - failing,
        }
    }
}

/// How far a recovery's messages have come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryProgress {
    /// Acknowledged since the recovery started.
    pub delivered: usize,
    /// Attempted since and failed.
    pub failing: usize,
    /// Not attempted since.
    pub queued: usize,
}

/// Which attempts a listing shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StatusFilter {
    /// Every attempt.
    #[default]
    All,
    /// Attempts that did not acknowledge.
    Failed,
    /// Acknowledged attempts.
    Acked,
}

impl StatusFilter {
    /// Parses the `status` query parameter (`failed` or `acked`).
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "failed" => Some(Self::Failed),
            "acked" => Some(Self::Acked),
            _ => None,
        }
    }

    /// True when the listing shows `attempt`.
    pub fn admits(self, attempt: &Attempt) -> bool {
        match self {
            Self::All => true,
            Self::Failed => !attempt.outcome.is_acked(),
            Self::Acked => attempt.outcome.is_acked(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callback::UrlPolicy;
    use crate::testing::at_ms;
    use std::time::Duration;

    fn outcome(status: Option<u16>, error: Option<AttemptFailure>) -> AttemptOutcome {
        AttemptOutcome {
            status,
            retry_after: None,
            latency: Duration::from_millis(12),
            error,
            body_prefix: bytes::Bytes::from(vec![b'x'; 3000]),
        }
    }

    #[test]
    fn sort_keys_are_the_padded_time_message_and_attempt() {
        let job = crate::job::DeliveryJob::sync_step(
            &crate::ids::SyncKey {
                application: "a".parse().unwrap(),
                sync: crate::ids::SyncId::generate(),
            },
            at_ms(0),
        );
        let key = EndpointKey::application(&"a".parse().unwrap());
        let acked = outcome(Some(204), None);
        for (ms, attempt) in [
            (0, 0),
            (1, 1),
            (1_764_000_000_123, 12),
            (9_999_999_999_999, 9_999),
            (10_000_000_000_000, 10_000),
            (123, u32::MAX),
        ] {
            let a = Attempt::new(&job, key.clone(), attempt, at_ms(ms), &acked, true);
            let expected = format!("{ms:013}#{}#{attempt:04}", job.id.as_str());
            assert_eq!(a.sort_key(), expected);
        }
    }

    #[test]
    fn classes() {
        let no_answer = |failure| outcome(None, Some(failure));
        for (case, outcome, acknowledged, class) in [
            (
                "acknowledged",
                outcome(Some(204), None),
                true,
                OutcomeClass::Acked,
            ),
            (
                "a status that does not acknowledge",
                outcome(Some(500), None),
                false,
                OutcomeClass::HttpStatus,
            ),
            (
                "a timeout",
                no_answer(AttemptFailure::Timeout(Duration::from_secs(10))),
                false,
                OutcomeClass::Timeout,
            ),
            (
                "refused by the URL policy",
                no_answer(AttemptFailure::RefusedByUrlPolicy("private".into())),
                false,
                OutcomeClass::RefusedByUrlPolicy,
            ),
            (
                "no connection",
                no_answer(AttemptFailure::Connection("reset".into())),
                false,
                OutcomeClass::ConnectionError,
            ),
            (
                "a request that broke",
                no_answer(AttemptFailure::Request("closed".into())),
                false,
                OutcomeClass::ConnectionError,
            ),
        ] {
            assert_eq!(OutcomeClass::of(&outcome, acknowledged), class, "{case}");
        }
    }

    #[test]
    fn a_failure_without_an_answer_is_the_logged_response() {
        let job = crate::job::DeliveryJob::sync_step(
            &crate::ids::SyncKey {
                application: "a".parse().unwrap(),
                sync: crate::ids::SyncId::generate(),
            },
            crate::testing::at_ms(0),
        );
        let key = EndpointKey::application(&"a".parse().unwrap());
        let timeout = outcome(None, Some(AttemptFailure::Timeout(Duration::from_secs(10))));
        let a = Attempt::new(&job, key, 1, at_ms(5), &timeout, false);
        assert_eq!(a.response, "timeout: no response within 10s");
        assert_eq!(a.outcome, OutcomeClass::Timeout);
    }

    #[test]
    fn keys_and_webhook_ids() {
        let record = RecordId::parse("0000-0002-7465-2162").unwrap();
        let url = CallbackUrl::parse("https://a.com/x", UrlPolicy::default()).unwrap();
        let key = EndpointKey::subscription(&record, &url);
        assert_eq!(EndpointKey::webhook_id(key.as_str()), Some(key.clone()));
        assert_eq!(EndpointKey::webhook_id("wh_123"), None);
        assert_eq!(EndpointKey::webhook_id("app_x"), None);
        let job = crate::job::DeliveryJob::sync_step(
            &crate::ids::SyncKey {
                application: "a".parse().unwrap(),
                sync: crate::ids::SyncId::generate(),
            },
            crate::testing::at_ms(0),
        );
        let a = Attempt::new(&job, key, 2, at_ms(5), &outcome(Some(500), None), false);
        assert_eq!(a.response.len(), RESPONSE_PREFIX_BYTES, "body cut to 1 KiB");
        assert!(a.sort_key().starts_with("0000000000005#msg_"));
        assert!(a.sort_key().ends_with("#0002"));
    }
}
