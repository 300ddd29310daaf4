//! The JSON bodies the API answers with, as serde types: what a client reads is declared
//! here, field by field, apart from how the domain keeps it (a domain type may change
//! how it stores something without changing what the API shows).

use crate::application::{Application, mask};
use crate::attempts::{Attempt, EndpointKey, OutcomeClass, Recovery, StoredMessage};
use crate::callback::CallbackUrl;
use crate::clock::Timestamp;
use crate::health::EndpointHealth;
use crate::ids::{ApplicationId, SyncId};
use crate::job::{MessageId, Target};
use crate::ports::Person;
use crate::record::RecordId;
use crate::subscription::Subscription;
use crate::sync::{FullSync, SyncOutcomes, SyncState};
use serde::Serialize;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthView {
    status: &'static str,
    disabled_reason: Option<String>,
    disabled_at: Option<String>,
    failing_since: Option<String>,
    last_error: Option<String>,
}

impl From<&EndpointHealth> for HealthView {
    fn from(health: &EndpointHealth) -> Self {
        Self {
            status: if health.is_disabled() {
                "disabled"
            } else {
                "enabled"
            },
            disabled_reason: health.disabled_reason.clone(),
            disabled_at: health.disabled_at.map(Timestamp::rfc3339),
            failing_since: health.failing_since.map(Timestamp::rfc3339),
            last_error: health.last_error.clone(),
        }
    }
}

/// A subscription's webhook: its record and callback with its health, and in a listing
/// its opaque id.
#[derive(Debug, Serialize)]
pub struct WebhookView {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<EndpointKey>,
    record: RecordId,
    callback: CallbackUrl,
    #[serde(flatten)]
    health: HealthView,
}

impl WebhookView {
    /// The webhook of `subscription`, named by `id` when given.
    pub fn new(subscription: &Subscription, id: Option<EndpointKey>) -> Self {
        Self {
            id,
            record: subscription.record.clone(),
            callback: subscription.callback.clone(),
            health: HealthView::from(&subscription.health),
        }
    }
}

/// An application; its signing key masked.
#[derive(Debug, Serialize)]
pub struct ApplicationView {
    id: ApplicationId,
    webhook: ApplicationWebhookView,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ApplicationWebhookView {
    url: String,
    signing_key: Option<String>,
    request_interval_ms: u64,
    health: HealthView,
}

impl From<&Application> for ApplicationView {
    fn from(app: &Application) -> Self {
        let webhook = &app.webhook;
        Self {
            id: app.id.clone(),
            webhook: ApplicationWebhookView {
                url: webhook
                    .url
                    .as_ref()
                    .map_or_else(String::new, |u| u.as_str().to_owned()),
                signing_key: webhook.signing_key.as_ref().map(|key| mask(key.expose())),
                request_interval_ms: webhook.request_interval_ms,
                health: HealthView::from(&app.health),
            },
        }
    }
}

/// A full sync's progress.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncView {
    sync_id: SyncId,
    state: SyncState,
    request_interval_ms: u64,
    scanned: u64,
    scan_complete: bool,
    queued: u64,
    delivered: u64,
    failed: u64,
    started_at: String,
    completed_at: Option<String>,
}

impl SyncView {
    /// The sync with the outcomes its fan-out jobs counted.
    pub fn new(sync: &FullSync, outcomes: SyncOutcomes) -> Self {
        let progress = sync.progress(outcomes);
        Self {
            sync_id: sync.sync_id.clone(),
            state: progress.state,
            request_interval_ms: sync.request_interval_ms,
            scanned: sync.scanned,
            scan_complete: sync.scan_done,
            queued: progress.queued,
            delivered: progress.delivered,
            failed: progress.failed,
            started_at: sync.started_at.rfc3339(),
            completed_at: sync.completed_at.map(Timestamp::rfc3339),
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AttemptView {
    message_id: MessageId,
    attempt: u32,
    timestamp: String,
    outcome: OutcomeClass,
    status: Option<u16>,
    latency_ms: u64,
    response: String,
}

impl From<&Attempt> for AttemptView {
    fn from(attempt: &Attempt) -> Self {
        Self {
            message_id: attempt.message_id.clone(),
            attempt: attempt.attempt,
            timestamp: attempt.at.rfc3339(),
            outcome: attempt.outcome,
            status: attempt.status,
            latency_ms: attempt.latency_ms,
            response: attempt.response.clone(),
        }
    }
}

/// A kept message and its attempts: what was sent (the person for an application; the
/// record and callback for a callback) and how it went.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageView {
    message_id: MessageId,
    created_at: String,
    last_attempt_at: String,
    last_outcome: OutcomeClass,
    attempts: Vec<AttemptView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    record: Option<RecordId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    person: Option<Person>,
    #[serde(skip_serializing_if = "Option::is_none")]
    callback: Option<CallbackUrl>,
}

impl MessageView {
    /// `message` with `attempts`, oldest first.
    pub fn new(message: &StoredMessage, attempts: &[Attempt]) -> Self {
        let job = &message.job;
        let (record, person, callback) = match &job.target {
            Target::Application { record, person, .. } => {
                (Some(record.clone()), Some(person.to_map()), None)
            }
            Target::Callback {
                record, callback, ..
            } => (Some(record.clone()), None, Some(callback.clone())),
            Target::SyncStep { .. } => (None, None, None),
        };
        Self {
            message_id: job.id.clone(),
            created_at: job.created_at.rfc3339(),
            last_attempt_at: message.last_attempt_at.rfc3339(),
            last_outcome: message.last_outcome,
            attempts: attempts.iter().map(AttemptView::from).collect(),
            record,
            person,
            callback,
        }
    }
}

/// An owner's recovery and its progress.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryView {
    recovery_id: String,
    since: String,
    started_at: String,
    messages: usize,
    delivered: usize,
    failing: usize,
    queued: usize,
    complete: bool,
    /// Only in the answer that starts it.
    #[serde(skip_serializing_if = "Option::is_none")]
    request_interval_ms: Option<u64>,
}

impl RecoveryView {
    /// `recovery` with its messages as kept now.
    pub fn new(recovery: &Recovery, kept: &[StoredMessage]) -> Self {
        let progress = recovery.progress(kept);
        Self {
            recovery_id: recovery.id.to_string(),
            since: recovery.since.clone(),
            started_at: recovery.started_at.rfc3339(),
            messages: recovery.messages.len(),
            delivered: progress.delivered,
            failing: progress.failing,
            queued: progress.queued,
            complete: recovery.complete,
            request_interval_ms: None,
        }
    }

    /// The same, as the answer that started it (with its pace).
    pub fn started(mut self, request_interval_ms: u64) -> Self {
        self.request_interval_ms = Some(request_interval_ms);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callback::{CallbackUrl, StoredUrl, UrlPolicy};
    use crate::health::HealthPolicy;
    use crate::job::DeliveryJob;
    use crate::record::RecordId;
    use crate::window::WindowId;
    use serde_json::{Value, json};

    fn json_of(view: impl Serialize) -> Value {
        serde_json::to_value(view).unwrap()
    }

    #[test]
    fn an_application_shows_its_signing_key_masked_and_an_unset_url_empty() {
        let mut app = Application::new(
            &"app-1".parse().unwrap(),
            "key",
            crate::clock::Timestamp::UNIX_EPOCH,
        );
        assert_eq!(
            json_of(ApplicationView::from(&app)),
            json!({"id": "app-1", "webhook": {
                "url": "", "signingKey": null, "requestIntervalMs": 0,
                "health": {"status": "enabled", "disabledReason": null, "disabledAt": null,
                           "failingSince": null, "lastError": null},
            }})
        );
        let url = CallbackUrl::parse("https://someurl.com/x", UrlPolicy::default()).unwrap();
        app.webhook.url = Some(StoredUrl::Usable(url));
        app.webhook.signing_key = Some("helloWorld".into());
        let view = json_of(ApplicationView::from(&app));
        assert_eq!(view["webhook"]["url"], "https://someurl.com/x");
        assert_eq!(view["webhook"]["signingKey"], "he… (10 characters)");
        assert!(!view.to_string().contains("helloWorld"));
    }

    #[test]
    fn a_disabled_endpoint_shows_why_and_since_when() {
        let mut health = EndpointHealth::default();
        health.record_failure(
            Timestamp::from_epoch_secs(86_400).unwrap(),
            &crate::http_client::AttemptFailure::HttpStatus(410),
            &HealthPolicy::default(),
        );
        assert_eq!(
            json_of(HealthView::from(&health)),
            json!({
                "status": "disabled",
                "disabledReason": "the receiver answered 410 Gone",
                "disabledAt": "1970-01-02T00:00:00.000Z",
                "failingSince": "1970-01-02T00:00:00.000Z",
                "lastError": "HTTP 410",
            })
        );
    }

    #[test]
    fn a_sync_shows_its_progress_with_the_counted_outcomes() {
        let mut sync = FullSync::new(&"app-1".parse().unwrap(), 0, crate::testing::at_ms(0));
        sync.scanned = 10;
        sync.scan_done = true;
        let view = json_of(SyncView::new(
            &sync,
            SyncOutcomes {
                delivered: 9,
                failed: 1,
            },
        ));
        assert_eq!(view["syncId"], sync.sync_id.as_str());
        assert_eq!(
            (&view["state"], &view["queued"], &view["delivered"]),
            (&json!("completed"), &json!(0), &json!(9))
        );
        assert_eq!(view["scanComplete"], true);
    }

    #[test]
    fn a_kept_application_message_shows_the_person_and_no_callback() {
        let record = RecordId::parse("0000-0002-1825-0097").unwrap();
        let person = json!({"firstName": "Ada"}).as_object().unwrap().clone();
        let job = DeliveryJob::for_application(
            &"app-1".parse().unwrap(),
            &record,
            person,
            WindowId(1),
            crate::testing::at_ms(0),
        );
        let message = StoredMessage {
            endpoint: crate::attempts::EndpointKey::application(&"app-1".parse().unwrap()),
            job,
            last_attempt: 1,
            last_attempt_at: Timestamp::UNIX_EPOCH,
            last_outcome: OutcomeClass::Acked,
        };
        let view = json_of(MessageView::new(&message, &[]));
        assert_eq!(view["record"], "0000-0002-1825-0097");
        assert_eq!(view["person"], json!({"firstName": "Ada"}));
        assert_eq!(view["lastAttemptAt"], "1970-01-01T00:00:00.000Z");
        assert!(view.get("callback").is_none(), "{view}");
    }

    #[test]
    fn only_the_answer_that_starts_a_recovery_shows_its_pace() {
        let recovery = Recovery {
            id: crate::attempts::RecoveryId::new("rec_1"),
            endpoint: crate::attempts::EndpointKey::application(&"app-1".parse().unwrap()),
            since: "2024-01-01T00:00:00Z".into(),
            started_at: Timestamp::UNIX_EPOCH,
            messages: Vec::new(),
            complete: true,
        };
        let view = json_of(RecoveryView::new(&recovery, &[]));
        assert!(view.get("requestIntervalMs").is_none(), "{view}");
        let started = json_of(RecoveryView::new(&recovery, &[]).started(250));
        assert_eq!(started["requestIntervalMs"], 250);
        assert_eq!(started["queued"], 0);
    }
}
