//! Delivery jobs: what the flush puts on the queue, one per (changed record, subscriber)
//! per window, and what the delivery function executes.

use crate::callback::CallbackUrl;
use crate::clock::Timestamp;
use crate::ids::{ApplicationId, ClientId, SyncId, SyncKey};
use crate::members::ScopedPerson;
use crate::record::RecordId;
use crate::subscription::Subscription;
use crate::window::WindowId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The job format version written by this code.
pub const JOB_VERSION: u8 = 1;

/// A message id: `msg_` and 32 hex digits, derived from what the message is about, so a
/// job enqueued twice (a flush retried after a crash) carries the same id and receivers
/// can de-duplicate. It is the Standard Webhooks `webhook-id` and stays the same across
/// retries.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MessageId(String);

impl MessageId {
    /// Derives the id from the parts that identify one notification.
    pub fn derive(parts: &[&str]) -> Self {
        let mut h = Sha256::new();
        for part in parts {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        Self(format!("msg_{}", hex::encode(&h.finalize()[..16])))
    }

    /// Derives the id of a notification of `window`: the same as [`Self::derive`] but its
    /// first eight hex digits are the window's number (its low 32 bits), so the ids of one
    /// window share a tag ([`Self::tag`]) by which the attempt log finds a message kept
    /// with others of its window. The other 96 bits stay a hash of the parts.
    pub fn derive_in(window: WindowId, parts: &[&str]) -> Self {
        let hashed = Self::derive(parts);
        let hash = hashed.0.get(4 + 8..).unwrap_or_default();
        Self(format!("msg_{:08x}{hash}", window.0 as u32))
    }

    /// The first eight hex digits: the window of an id made by [`Self::derive_in`],
    /// a part of the hash for others. Stores use it to keep a message findable by its id
    /// without one index entry per message.
    pub fn tag(&self) -> &str {
        self.0.get(4..12).unwrap_or(&self.0)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A message id as a client gives it (`msg_` and 32 lowercase hex digits).
    pub fn parse(text: &str) -> Option<Self> {
        let hex = text.strip_prefix("msg_")?;
        (hex.len() == 32 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| Self(text.to_owned()))
    }
}

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(&self.0)
    }
}

/// Who a job is for and what it carries. Written as an object tagged by `kind`; read
/// through [`StoredTarget`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", try_from = "StoredTarget")]
pub enum Target {
    /// ORCID style: an empty POST to a record's callback URL.
    Callback {
        /// The changed record.
        record: RecordId,
        /// Where to POST.
        callback: CallbackUrl,
        /// The subscribing client.
        client: ClientId,
    },
    /// Members style: the scoped person in a signed envelope to the application's webhook.
    Application {
        application: ApplicationId,
        /// The person's record id.
        record: RecordId,
        /// The person as the application may see it (scoped when the job was made).
        person: ScopedPerson,
        /// The full sync this job belongs to, if any (its outcome is counted there).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sync: Option<SyncId>,
    },
    /// One step of a full sync (see [`crate::sync`]).
    SyncStep {
        application: ApplicationId,
        sync: SyncId,
    },
}

/// A [`Target`] as read: the fields of every kind in one struct, read in one pass. serde's
/// internally tagged form buffers the whole object, copying each string, before it looks
/// at the tag (in the delivery benchmark's profile that was most of reading a job).
#[derive(Deserialize)]
struct StoredTarget {
    kind: TargetKind,
    record: Option<RecordId>,
    /// The subscription's key: not parsed as a URL on the way in (a delivery sends to the
    /// subscription's stored URL).
    #[serde(default, deserialize_with = "callback_named_by_job")]
    callback: Option<CallbackUrl>,
    client: Option<ClientId>,
    application: Option<ApplicationId>,
    person: Option<ScopedPerson>,
    sync: Option<SyncId>,
}

fn callback_named_by_job<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<CallbackUrl>, D::Error> {
    Ok(Option::<String>::deserialize(deserializer)?.map(CallbackUrl::named_by_job))
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum TargetKind {
    Callback,
    Application,
    SyncStep,
}

/// A stored target without a field its kind needs.
#[derive(Debug, thiserror::Error)]
#[error("missing field `{0}`")]
pub struct MissingField(&'static str);

fn required<T>(value: Option<T>, field: &'static str) -> Result<T, MissingField> {
    value.ok_or(MissingField(field))
}

impl TryFrom<StoredTarget> for Target {
    type Error = MissingField;

    fn try_from(stored: StoredTarget) -> Result<Self, MissingField> {
        Ok(match stored.kind {
            TargetKind::Callback => Self::Callback {
                record: required(stored.record, "record")?,
                callback: required(stored.callback, "callback")?,
                client: required(stored.client, "client")?,
            },
            TargetKind::Application => Self::Application {
                application: required(stored.application, "application")?,
                record: required(stored.record, "record")?,
                person: required(stored.person, "person")?,
                sync: stored.sync,
            },
            TargetKind::SyncStep => Self::SyncStep {
                application: required(stored.application, "application")?,
                sync: required(stored.sync, "sync")?,
            },
        })
    }
}

impl Target {
    /// The full sync this job is a step of, or sends a person for.
    pub fn sync(&self) -> Option<SyncKey> {
        match self {
            Self::Application {
                application,
                sync: Some(sync),
                ..
            }
            | Self::SyncStep { application, sync } => Some(SyncKey {
                application: application.clone(),
                sync: sync.clone(),
            }),
            Self::Application { sync: None, .. } | Self::Callback { .. } => None,
        }
    }
}

/// One notification to deliver; the body of one delivery-queue message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryJob {
    /// Format version ([`JOB_VERSION`]).
    pub v: u8,
    /// Stable message id.
    pub id: MessageId,
    /// The subscriber and the payload kind.
    pub target: Target,
    /// The coalescing window that produced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<u64>,
    /// When the job was created (stored and sent as RFC 3339 UTC with milliseconds).
    #[serde(with = "crate::clock::rfc3339")]
    pub created_at: Timestamp,
    /// Delivery attempts made before this message was sent. A job sent again after a
    /// backend failure carries them over, since the new message's receive count starts
    /// from zero.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempts_made: u32,
    /// Store or queue failures met while handling this job so far; they are retried on
    /// their own schedule and are not delivery attempts.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub backend_failures: u32,
    /// Sent again by its endpoint's owner (redeliver, recover), who may have just changed
    /// the endpoint's URL or keys: delivery reads them fresh instead of from its cache.
    #[serde(default, skip_serializing_if = "is_false")]
    pub redelivery: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl DeliveryJob {
    /// The job notifying `subscription` of a change to its record in `window`.
    pub fn for_subscription(
        subscription: &Subscription,
        window: WindowId,
        created_at: Timestamp,
    ) -> Self {
        let window_text = window.0.to_string();
        Self {
            v: JOB_VERSION,
            id: MessageId::derive_in(
                window,
                &[
                    "callback",
                    &window_text,
                    subscription.record.as_str(),
                    subscription.callback.as_str(),
                ],
            ),
            target: Target::Callback {
                record: subscription.record.clone(),
                callback: subscription.callback.clone(),
                client: subscription.client_id.clone(),
            },
            window: Some(window.0),
            created_at,
            attempts_made: 0,
            backend_failures: 0,
            redelivery: false,
        }
    }
}

impl DeliveryJob {
    /// The job telling `application` that `record` changed in `window`.
    pub fn for_application(
        application: &ApplicationId,
        record: &RecordId,
        person: impl Into<ScopedPerson>,
        window: WindowId,
        created_at: Timestamp,
    ) -> Self {
        Self {
            v: JOB_VERSION,
            id: MessageId::derive_in(
                window,
                &[
                    "application",
                    &window.0.to_string(),
                    application.as_str(),
                    record.as_str(),
                ],
            ),
            target: Target::Application {
                application: application.clone(),
                record: record.clone(),
                person: person.into(),
                sync: None,
            },
            window: Some(window.0),
            created_at,
            attempts_made: 0,
            backend_failures: 0,
            redelivery: false,
        }
    }

    /// The job sending `record` to the sync's application as part of the full sync.
    pub fn for_sync(
        sync: &SyncKey,
        record: &RecordId,
        person: impl Into<ScopedPerson>,
        created_at: Timestamp,
    ) -> Self {
        Self {
            v: JOB_VERSION,
            id: MessageId::derive(&["sync", sync.sync.as_str(), record.as_str()]),
            target: Target::Application {
                application: sync.application.clone(),
                record: record.clone(),
                person: person.into(),
                sync: Some(sync.sync.clone()),
            },
            window: None,
            created_at,
            attempts_made: 0,
            backend_failures: 0,
            redelivery: false,
        }
    }

    /// A step of full sync `sync`.
    pub fn sync_step(sync: &SyncKey, created_at: Timestamp) -> Self {
        Self {
            v: JOB_VERSION,
            id: MessageId::derive(&[
                "sync-step",
                sync.sync.as_str(),
                &uuid::Uuid::new_v4().to_string(),
            ]),
            target: Target::SyncStep {
                application: sync.application.clone(),
                sync: sync.sync.clone(),
            },
            window: None,
            created_at,
            attempts_made: 0,
            backend_failures: 0,
            redelivery: false,
        }
    }
}

impl DeliveryJob {
    /// The job to send again after a backend failure during delivery attempt `attempt`
    /// (1-based), which therefore did not happen.
    pub fn after_backend_failure(&self, attempt: u32) -> Self {
        Self {
            attempts_made: attempt.saturating_sub(1),
            backend_failures: self.backend_failures.saturating_add(1),
            ..self.clone()
        }
    }

    /// The job to put on the queue after delivery attempt `attempt` (1-based) failed
    /// before it was on the queue (the flush's own first attempt): its next receive is
    /// attempt `attempt + 1`.
    pub fn after_attempt(&self, attempt: u32) -> Self {
        Self {
            attempts_made: attempt,
            ..self.clone()
        }
    }

    /// The job as its owner sends it again: a new attempt series, with the endpoint's
    /// settings read fresh.
    pub fn redelivered(&self) -> Self {
        Self {
            redelivery: true,
            ..self.replayable()
        }
    }

    /// The job without its counters: what the dead-letter and parked queues keep, so that a replay
    /// starts with the whole retry budget.
    pub fn replayable(&self) -> Self {
        self.clone().into_replayable()
    }

    /// [`Self::replayable`], without a copy.
    pub fn into_replayable(self) -> Self {
        Self {
            attempts_made: 0,
            backend_failures: 0,
            ..self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callback::UrlPolicy;
    use serde_json::{Map, Value};

    fn sub(url: &str) -> Subscription {
        Subscription {
            record: RecordId::parse("0000-0002-7465-2162").unwrap(),
            callback: CallbackUrl::parse(url, UrlPolicy::default()).unwrap(),
            client_id: ClientId::parse("APP-1").unwrap(),
            created_at: crate::clock::Timestamp::UNIX_EPOCH,
            health: Default::default(),
        }
    }

    #[test]
    fn ids_are_stable_per_window_and_subscription() {
        let a = DeliveryJob::for_subscription(
            &sub("https://a.com/x"),
            WindowId(7),
            crate::testing::at_ms(0),
        );
        let again = DeliveryJob::for_subscription(
            &sub("https://a.com/x"),
            WindowId(7),
            crate::testing::at_ms(1),
        );
        let next = DeliveryJob::for_subscription(
            &sub("https://a.com/x"),
            WindowId(8),
            crate::testing::at_ms(0),
        );
        let other = DeliveryJob::for_subscription(
            &sub("https://a.com/y"),
            WindowId(7),
            crate::testing::at_ms(0),
        );
        assert_eq!(a.id, again.id);
        assert_ne!(a.id, next.id);
        assert_ne!(a.id, other.id);
        assert!(a.id.as_str().starts_with("msg_") && a.id.as_str().len() == 36);
        assert_eq!(MessageId::parse(a.id.as_str()), Some(a.id.clone()));
        assert_eq!(a.id.tag(), "00000007", "the window leads the id");
        assert_eq!(a.id.tag(), other.id.tag(), "one tag per window");
        assert_ne!(a.id.tag(), next.id.tag());
    }

    #[test]
    fn counters_survive_a_backend_failure_and_are_cleared_for_replay() {
        let job = DeliveryJob::for_subscription(
            &sub("https://a.com/x"),
            WindowId(7),
            crate::testing::at_ms(0),
        );
        assert!(
            !serde_json::to_string(&job)
                .unwrap()
                .contains("attempts_made"),
            "absent while zero: older readers see the same body"
        );
        // Failed during its third attempt (two were made), twice.
        let again = job.after_backend_failure(3).after_backend_failure(3);
        assert_eq!((again.attempts_made, again.backend_failures), (2, 2));
        let json = serde_json::to_string(&again).unwrap();
        assert_eq!(serde_json::from_str::<DeliveryJob>(&json).unwrap(), again);
        assert_eq!(again.replayable(), job);
        assert_eq!(again.id, job.id, "the same webhook-id");
    }

    #[test]
    fn job_json_round_trips() {
        let job = DeliveryJob::for_subscription(
            &sub("https://a.com/x"),
            WindowId(7),
            crate::testing::at_ms(0),
        );
        let json = serde_json::to_string(&job).unwrap();
        assert!(json.contains(r#""kind":"callback""#), "{json}");
        assert_eq!(serde_json::from_str::<DeliveryJob>(&json).unwrap(), job);
    }

    #[test]
    fn every_kind_of_target_round_trips_and_a_missing_field_is_refused() {
        let sync = SyncKey {
            application: "app-1".parse().unwrap(),
            sync: SyncId::generate(),
        };
        let record = RecordId::parse("p-1").unwrap();
        let person: Map<String, Value> = serde_json::from_str(r#"{"personID":"p-1"}"#).unwrap();
        let created = crate::testing::at_ms(0);
        let jobs = [
            DeliveryJob::for_subscription(&sub("https://a.com/x"), WindowId(7), created),
            DeliveryJob::for_application(
                &sync.application,
                &record,
                person.clone(),
                WindowId(7),
                created,
            ),
            DeliveryJob::for_sync(&sync, &record, person, created),
            DeliveryJob::sync_step(&sync, created),
        ];
        for job in jobs {
            let json = serde_json::to_value(&job).unwrap();
            assert_eq!(
                serde_json::from_value::<DeliveryJob>(json.clone()).unwrap(),
                job
            );
            // The kind may come anywhere in the object.
            let target = json["target"].as_object().unwrap();
            let mut reordered: Map<String, Value> = target
                .iter()
                .filter(|(k, _)| *k != "kind")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            reordered.insert("kind".into(), target["kind"].clone());
            let mut moved = json.clone();
            moved["target"] = Value::Object(reordered);
            assert_eq!(serde_json::from_value::<DeliveryJob>(moved).unwrap(), job);
            let optional = |field: &str| {
                field == "kind"
                    || field == "sync" && matches!(job.target, Target::Application { .. })
            };
            for field in target.keys().filter(|field| !optional(field)) {
                let mut without = json.clone();
                without["target"].as_object_mut().unwrap().remove(field);
                let error = serde_json::from_value::<DeliveryJob>(without).unwrap_err();
                assert!(
                    error
                        .to_string()
                        .contains(&format!("missing field `{field}`")),
                    "{error}"
                );
            }
        }
        let unknown = r#"{"v":1,"id":"msg_00000007000000000000000000000000","target":{"kind":"fax","record":"p-1"},"created_at":"2026-11-26T10:00:00.123Z"}"#;
        assert!(serde_json::from_str::<DeliveryJob>(unknown).is_err());
    }

    #[test]
    fn the_creation_time_is_stored_as_rfc3339_text_and_must_be_one() {
        let job = DeliveryJob::for_subscription(
            &sub("https://a.com/x"),
            WindowId(7),
            crate::testing::at("2026-11-26T10:00:00.123Z"),
        );
        let mut json = serde_json::to_value(&job).unwrap();
        assert_eq!(json["created_at"], "2026-11-26T10:00:00.123Z");
        json["created_at"] = "yesterday".into();
        assert!(serde_json::from_value::<DeliveryJob>(json).is_err());
    }
}
