//! Poison items: changes the flush set aside because they can never be queued as they are
//! (a job the queue refuses for good, a record whose stored items do not decode). Retrying
//! them would block every later window, so the flush records each one where an operator
//! sees it (`webhooks-admin poison list`, an operational event), moves on, and the
//! operator replays it once the data is fixed ([`replay`]).

use crate::clock::Timestamp;
use crate::events::OpsEvent;
use crate::job::{DeliveryJob, MessageId, Target};
use crate::message::Refusal;
use crate::record::RecordId;
use crate::subscription::endpoint_name;
use crate::window::WindowId;
use serde::{Deserialize, Serialize};

/// Why a change was set aside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PoisonCause {
    /// The queue refused the change's job for one subscriber.
    Refused {
        /// The queue's reason.
        refusal: Refusal,
    },
    /// A stored item of the record (its subscriptions, its person, an application it
    /// consented to) does not decode.
    Corrupt {
        /// The decoding error.
        detail: String,
    },
}

/// A change set aside: which record, which window, which subscriber (or all of them), why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoisonItem {
    /// The changed record.
    pub record: RecordId,
    /// The window it changed in.
    pub window: WindowId,
    /// The subscriber whose job was refused (`subscription:...` or `application:...`);
    /// `None` when the record could not be read, which holds back all of its subscribers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The refused job's message id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<MessageId>,
    pub cause: PoisonCause,
    /// When (stored as RFC 3339 UTC with milliseconds).
    #[serde(with = "crate::clock::rfc3339")]
    pub set_aside_at: Timestamp,
}

/// A poison item's id ([`PoisonItem::id`]): how the stores key it and an operator names
/// it. Serialized as its text.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PoisonId(String);

impl PoisonId {
    /// The id an operator gave (checked only by being found).
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// The id as the stores keep it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for PoisonId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl PoisonItem {
    /// The item for `record`'s job that the queue refused.
    pub fn refused(
        record: &RecordId,
        job: &DeliveryJob,
        window: WindowId,
        refusal: Refusal,
        at: Timestamp,
    ) -> Self {
        let endpoint = match &job.target {
            Target::Callback {
                record, callback, ..
            } => endpoint_name(record, callback),
            Target::Application { application, .. } | Target::SyncStep { application, .. } => {
                crate::application::endpoint_name(application)
            }
        };
        Self {
            record: record.clone(),
            window,
            endpoint: Some(endpoint),
            message_id: Some(job.id.clone()),
            cause: PoisonCause::Refused { refusal },
            set_aside_at: at,
        }
    }

    /// The item for a record whose stored items do not decode: every subscriber of it
    /// is held back (`endpoint` `None`), or the one whose item it is.
    pub fn corrupt(
        record: &RecordId,
        window: WindowId,
        endpoint: Option<String>,
        detail: String,
        at: Timestamp,
    ) -> Self {
        Self {
            record: record.clone(),
            window,
            endpoint,
            message_id: None,
            cause: PoisonCause::Corrupt { detail },
            set_aside_at: at,
        }
    }

    /// The item's id: window (zero-padded, so ids sort oldest first), record, and the
    /// refused message, the endpoint, or `record`. The same poison set aside twice (a flush page
    /// repeated after a crash) has the same id.
    pub fn id(&self) -> PoisonId {
        let what = match (&self.message_id, &self.endpoint) {
            (Some(message), _) => message.as_str(),
            (None, Some(endpoint)) => endpoint,
            (None, None) => "record",
        };
        PoisonId(format!("{:020}#{}#{what}", self.window.0, self.record))
    }

    /// The operational event announcing it.
    pub fn event(&self) -> OpsEvent {
        OpsEvent::ChangeSetAside {
            poison_id: self.id(),
            record: self.record.to_string(),
            window: self.window.0,
            endpoint: self.endpoint.clone().unwrap_or_else(|| "all".into()),
            reason: self.reason(),
        }
    }

    /// The reason in words, for operators.
    pub fn reason(&self) -> String {
        match &self.cause {
            PoisonCause::Refused { refusal } => refusal.to_string(),
            PoisonCause::Corrupt { detail } => format!("stored item is corrupt: {detail}"),
        }
    }
}
