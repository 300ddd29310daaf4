//! What goes over the wire for each kind of delivery: URL, headers, body and the rule
//! that decides whether the answer acknowledges. Shared by the delivery handler, the
//! Run Test endpoint and the paced full sync, so all three send exactly the same thing.

use crate::ack::AckPolicy;
use crate::application::Application;
use crate::callback::CallbackUrl;
use crate::clock::{Clock, Timestamp};
use crate::http_client::{AttemptOutcome, CallbackClient};
use crate::job::MessageId;
use crate::members::{ScopedPerson, envelope};
use crate::signing::SigningSecrets;
use bytes::Bytes;
use http::HeaderName;

/// The Standard Webhooks header names. Constants, so a request's header names are never
/// parsed or allocated (for a name outside the standard set `http` copies it otherwise).
pub const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
pub const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
pub const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");

/// One request to a subscriber.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub url: CallbackUrl,
    /// Headers (Standard Webhooks, content type).
    pub headers: Vec<(HeaderName, String)>,
    pub body: Bytes,
    /// Which answers acknowledge.
    pub ack: AckPolicy,
}

impl Outbound {
    /// Sends it once; returns the outcome and whether it acknowledged. The header values
    /// and the body go to the request as they are, not copied.
    pub async fn send(self, http: &CallbackClient) -> (AttemptOutcome, bool) {
        let outcome = http
            .post(&self.url, self.headers, self.body, self.ack)
            .await;
        let acknowledged = outcome.status.is_some_and(|s| self.ack.acknowledges(s));
        (outcome, acknowledged)
    }
}

/// The Standard Webhooks headers: `webhook-id`, `webhook-timestamp`, and
/// `webhook-signature` when the subscriber has secrets.
fn standard_headers(
    message_id: &MessageId,
    timestamp: i64,
    body: &[u8],
    secrets: Option<&SigningSecrets>,
) -> Vec<(HeaderName, String)> {
    // Room for the signature and a content type: the vector is never grown.
    let mut headers = Vec::with_capacity(4);
    headers.push((WEBHOOK_ID, message_id.as_str().to_owned()));
    let mut digits = [0; 20];
    // Sized exactly (as `to_string` does not), so the header value takes the buffer as it is.
    headers.push((
        WEBHOOK_TIMESTAMP,
        crate::clock::decimal(timestamp, &mut digits).to_owned(),
    ));
    if let Some(secrets) = secrets {
        headers.push((
            WEBHOOK_SIGNATURE,
            secrets.signature_header(message_id.as_str(), timestamp, body),
        ));
    }
    headers
}

/// ORCID style: an empty POST to the callback.
pub fn callback_request(
    message_id: &MessageId,
    callback: &CallbackUrl,
    secrets: Option<&SigningSecrets>,
    clock: &dyn Clock,
) -> Outbound {
    let timestamp = clock.now().epoch_secs();
    Outbound {
        url: callback.clone(),
        headers: standard_headers(message_id, timestamp, b"", secrets),
        body: Bytes::new(),
        ack: AckPolicy::AnySuccess,
    }
}

/// Members style: the envelope with `persons` to `url`, the application's webhook (see
/// [`crate::application::WebhookConfig::target`]).
pub fn application_request(
    message_id: &MessageId,
    application: &Application,
    url: &CallbackUrl,
    persons: &[ScopedPerson],
    publish_time: Timestamp,
    clock: &dyn Clock,
) -> Outbound {
    let body = envelope(
        persons,
        application.webhook.signing_key.as_ref(),
        message_id.as_str(),
        &publish_time.rfc3339(),
        application.id.as_str(),
    );
    let timestamp = clock.now().epoch_secs();
    let mut headers = standard_headers(message_id, timestamp, &body, Some(&application.secrets));
    headers.push((http::header::CONTENT_TYPE, "application/json".to_owned()));
    Outbound {
        url: url.clone(),
        headers,
        // As a boxed slice (sized exactly, in place): from a vector with room to spare,
        // `Bytes` allocates a header to share it by.
        body: Bytes::from(body.into_boxed_slice()),
        ack: AckPolicy::MembersCodes,
    }
}
