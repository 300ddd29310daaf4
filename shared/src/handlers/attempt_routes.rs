//! The attempt log's routes: an endpoint's attempts (newest first, filtered, paged by an
//! opaque cursor) and one kept message with its attempts, for both styles.

use super::api_error::{ApiError, json_response};
use super::registration::{Registration, base_url, body_bytes};
use super::views::{AttemptView, MessageView, RecoveryView, WebhookView};
use crate::attempts::{
    Attempt, EndpointKey, LogEndpoint, Recovery, RecoveryId, StatusFilter, StoredMessage,
};
use crate::clock::Timestamp;
use crate::job::{DeliveryJob, MessageId};
use crate::ports::MAX_SEND_DELAY;
use crate::subscription::Subscription;
use base64::Engine;
use futures::StreamExt;
use http::StatusCode;
use lambda_http::{Body, Request, Response};
use serde::Deserialize;
use serde_json::json;
use std::time::Duration;

/// The most messages one recovery sends.
/// (5 000 message ids keep the recovery item well under DynamoDB's 400 KB.)
pub const MAX_RECOVER: usize = 5_000;
/// Delayed sends of a recovery in flight at once.
const RECOVER_SENDS: usize = 16;

/// The body of a recovery: `{"since": RFC 3339}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecoverRequest {
    since: String,
}

impl RecoverRequest {
    /// The body's `since`, as given and as a time.
    fn parse(body: &[u8]) -> Result<(String, Timestamp), ApiError> {
        let body: Self =
            serde_json::from_slice(body).map_err(|e| ApiError::InvalidBody(e.to_string()))?;
        let since = Timestamp::parse_rfc3339(&body.since)
            .ok_or_else(|| ApiError::InvalidBody("since must be an RFC 3339 time".into()))?;
        Ok((body.since, since))
    }
}

/// How many messages one recovery sends. Paced through the send delay, which reaches
/// 15 minutes ahead at most: a longer recovery is left for another call (its messages are
/// found again while they fail).
fn recover_limit(interval_ms: u64) -> usize {
    match interval_ms {
        0 => MAX_RECOVER,
        ms => ((MAX_SEND_DELAY.as_millis() as u64 / ms) as usize + 1).min(MAX_RECOVER),
    }
}

/// Attempts per page unless `limit` says otherwise.
pub const DEFAULT_PAGE: usize = 20;
/// The most attempts one page holds.
pub const MAX_PAGE: usize = 100;
/// The longest cursor accepted (a sort key is under 60 bytes).
const MAX_CURSOR_BYTES: usize = 256;

const CURSOR: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The query of an attempt listing: `status=failed|acked`, `limit=N`, `cursor=C`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ListQuery {
    filter: StatusFilter,
    limit: usize,
    after: Option<String>,
}

impl ListQuery {
    fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        let mut parsed = Self {
            filter: StatusFilter::All,
            limit: DEFAULT_PAGE,
            after: None,
        };
        for (name, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match name.as_ref() {
                "status" => {
                    parsed.filter = StatusFilter::parse(&value).ok_or_else(|| {
                        ApiError::InvalidQuery("status must be failed or acked".into())
                    })?
                }
                "limit" => {
                    parsed.limit = value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=MAX_PAGE).contains(n))
                        .ok_or_else(|| {
                            ApiError::InvalidQuery(format!(
                                "limit must be a whole number from 1 to {MAX_PAGE}"
                            ))
                        })?
                }
                "cursor" => {
                    let invalid = || {
                        ApiError::InvalidQuery(
                            "cursor is not one this API gave (pass nextCursor as it is)".into(),
                        )
                    };
                    let bytes = CURSOR.decode(value.as_bytes()).map_err(|_| invalid())?;
                    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
                    if text.is_empty() || text.len() > MAX_CURSOR_BYTES {
                        return Err(invalid());
                    }
                    parsed.after = Some(text);
                }
                _ => {}
            }
        }
        Ok(parsed)
    }
}

impl Registration {
    /// One page of `endpoint`'s attempts as the request's query asks.
    pub(super) async fn attempts_page(
        &self,
        request: &Request,
        endpoint: &LogEndpoint,
    ) -> Result<Response<Body>, ApiError> {
        let query = ListQuery::parse(request.uri().query())?;
        let page = self
            .ports
            .attempts
            .attempts(endpoint, query.filter, query.after.as_deref(), query.limit)
            .await?;
        let data: Vec<_> = page.items.iter().map(AttemptView::from).collect();
        let next = page.next.map(|n| CURSOR.encode(n));
        Ok(json_response(
            StatusCode::OK,
            &json!({"data": data, "nextCursor": next}),
        ))
    }

    /// The kept message `message_id` of `endpoint` and its attempts; 404 when the id is
    /// malformed or nothing is kept under it (for this endpoint).
    async fn kept_message(
        &self,
        endpoint: &LogEndpoint,
        message_id: &str,
    ) -> Result<(MessageId, StoredMessage, Vec<Attempt>), ApiError> {
        let id = MessageId::parse(message_id).ok_or(ApiError::MessageNotFound)?;
        let (message, attempts) = self
            .ports
            .attempts
            .message(endpoint, &id)
            .await?
            .ok_or(ApiError::MessageNotFound)?;
        Ok((id, message, attempts))
    }

    /// A kept message of `endpoint` with its attempts.
    pub(super) async fn message_view(
        &self,
        endpoint: &LogEndpoint,
        message_id: &str,
    ) -> Result<Response<Body>, ApiError> {
        let (_, message, attempts) = self.kept_message(endpoint, message_id).await?;
        Ok(json_response(
            StatusCode::OK,
            &MessageView::new(&message, &attempts),
        ))
    }

    /// Sends a kept message of `endpoint` again now: the same message id, to the
    /// endpoint's current URL with its current keys (the delivery handler reads them), as a
    /// new attempt series with the whole retry schedule. Refused while it is disabled.
    pub(super) async fn redeliver(
        &self,
        endpoint: &LogEndpoint,
        disabled: bool,
        message_id: &str,
    ) -> Result<Response<Body>, ApiError> {
        let (id, message, _) = self.kept_message(endpoint, message_id).await?;
        if disabled {
            return Err(ApiError::EndpointDisabled);
        }
        let job = message.job.redelivered();
        self.ports
            .queue
            .enqueue(std::slice::from_ref(&job))
            .await?
            .all()?;
        tracing::info!(message_id = %id.as_str(), endpoint = %endpoint.key.as_str(), "message redelivered by its endpoint's owner");
        Ok(json_response(
            StatusCode::ACCEPTED,
            &json!({"messageId": id.as_str()}),
        ))
    }

    /// Sends again, once each, every kept message of `endpoint` that failed since the
    /// request's `since` and whose latest attempt failed (dead-lettered, or still being
    /// retried), paced `interval_ms` apart through the queue's delay.
    pub(super) async fn recover(
        &self,
        request: &Request,
        endpoint: &LogEndpoint,
        disabled: bool,
        interval_ms: u64,
    ) -> Result<Response<Body>, ApiError> {
        let (since_text, since) = RecoverRequest::parse(body_bytes(request))?;
        if disabled {
            return Err(ApiError::EndpointDisabled);
        }
        let page = self
            .ports
            .attempts
            .failed_since(endpoint, since, recover_limit(interval_ms))
            .await?;
        let jobs: Vec<DeliveryJob> = page.items.iter().map(|m| m.job.redelivered()).collect();
        // Kept before anything is sent: a failed send answers 503 and this id is never
        // shown, while a recovery sent but not kept would have no progress to read.
        let recovery = Recovery {
            id: RecoveryId::generate(),
            endpoint: endpoint.key.clone(),
            since: since_text.clone(),
            started_at: self.ports.clock.now(),
            messages: jobs.iter().map(|j| j.id.clone()).collect(),
            complete: !page.more,
        };
        self.ports.attempts.save_recovery(&recovery).await?;
        self.send_paced(&jobs, interval_ms).await?;
        tracing::info!(endpoint = %endpoint.key.as_str(), messages = jobs.len(), since = %since_text, "failed messages recovered by the endpoint's owner");
        let view = RecoveryView::new(&recovery, &[]).started(interval_ms);
        let mut response = json_response(StatusCode::ACCEPTED, &view);
        let location = format!(
            "{}{}/{}",
            base_url(request),
            request.uri().path(),
            recovery.id
        );
        if let Ok(value) = http::HeaderValue::from_str(&location) {
            response.headers_mut().insert(http::header::LOCATION, value);
        }
        Ok(response)
    }

    /// Sends `jobs`, the `i`-th delayed `i * interval_ms` (all at once for 0).
    async fn send_paced(&self, jobs: &[DeliveryJob], interval_ms: u64) -> Result<(), ApiError> {
        if interval_ms == 0 {
            self.ports.queue.enqueue(jobs).await?.all()?;
            return Ok(());
        }
        // Owned futures, collected first: a lazy map over borrowed jobs is not `Send`
        // for every lifetime, which the HTTP server's handler must be.
        let sends: Vec<_> = jobs
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, job)| {
                let queue = self.ports.queue.clone();
                let delay =
                    Duration::from_millis(interval_ms.saturating_mul(i as u64)).min(MAX_SEND_DELAY);
                async move { queue.enqueue_delayed(&job, delay).await }
            })
            .collect();
        let results: Vec<_> = futures::stream::iter(sends)
            .buffer_unordered(RECOVER_SENDS)
            .collect()
            .await;
        results.into_iter().collect::<Result<Vec<()>, _>>()?;
        Ok(())
    }

    /// A recovery's progress.
    pub(super) async fn recovery_view(
        &self,
        endpoint: &LogEndpoint,
        recovery_id: &str,
    ) -> Result<Response<Body>, ApiError> {
        let recovery = self
            .ports
            .attempts
            .recovery(&endpoint.key, &RecoveryId::new(recovery_id))
            .await?
            .ok_or(ApiError::RecoveryNotFound)?;
        let kept = self
            .ports
            .attempts
            .messages(endpoint, &recovery.messages)
            .await?;
        Ok(json_response(
            StatusCode::OK,
            &RecoveryView::new(&recovery, &kept),
        ))
    }

    /// `GET /application/{id}/webhook/recover/{recoveryId}`.
    pub(super) async fn application_recovery(
        &self,
        request: &Request,
        id: &str,
        recovery_id: &str,
    ) -> Result<Response<Body>, ApiError> {
        let app = self.authenticate_application(request, id).await?;
        self.recovery_view(&LogEndpoint::application(&app.id), recovery_id)
            .await
    }

    /// `GET /webhooks/{id}/recover/{recoveryId}`.
    pub(super) async fn webhook_recovery(
        &self,
        request: &Request,
        webhook: &str,
        recovery_id: &str,
    ) -> Result<Response<Body>, ApiError> {
        let (key, _) = self.own_webhook(request, webhook).await?;
        self.recovery_view(&key, recovery_id).await
    }

    /// `POST /application/{id}/webhook/recover`.
    pub(super) async fn application_recover(
        &self,
        request: &Request,
        id: &str,
    ) -> Result<Response<Body>, ApiError> {
        let app = self.authenticate_application(request, id).await?;
        self.recover(
            request,
            &LogEndpoint::application(&app.id),
            app.health.is_disabled(),
            app.webhook.request_interval_ms,
        )
        .await
    }

    /// `POST /webhooks/{id}/recover`.
    pub(super) async fn webhook_recover(
        &self,
        request: &Request,
        webhook: &str,
    ) -> Result<Response<Body>, ApiError> {
        let (key, subscription) = self.own_webhook(request, webhook).await?;
        self.recover(request, &key, subscription.health.is_disabled(), 0)
            .await
    }

    /// `POST /application/{id}/webhook/messages/{messageId}/redeliver`.
    pub(super) async fn application_redeliver(
        &self,
        request: &Request,
        id: &str,
        message_id: &str,
    ) -> Result<Response<Body>, ApiError> {
        let app = self.authenticate_application(request, id).await?;
        self.redeliver(
            &LogEndpoint::application(&app.id),
            app.health.is_disabled(),
            message_id,
        )
        .await
    }

    /// `GET /application/{id}/webhook/attempts`.
    pub(super) async fn application_attempts(
        &self,
        request: &Request,
        id: &str,
    ) -> Result<Response<Body>, ApiError> {
        let app = self.authenticate_application(request, id).await?;
        self.attempts_page(request, &LogEndpoint::application(&app.id))
            .await
    }

    /// `GET /application/{id}/webhook/messages/{messageId}`.
    pub(super) async fn application_message(
        &self,
        request: &Request,
        id: &str,
        message_id: &str,
    ) -> Result<Response<Body>, ApiError> {
        let app = self.authenticate_application(request, id).await?;
        self.message_view(&LogEndpoint::application(&app.id), message_id)
            .await
    }
}

impl Registration {
    /// The caller's webhook that `webhook` names: another client's is not found, as is
    /// one that does not exist (webhook ids are opaque; they reveal nothing).
    async fn own_webhook(
        &self,
        request: &Request,
        webhook: &str,
    ) -> Result<(LogEndpoint, Subscription), ApiError> {
        let client_id = self.authenticate(request.headers()).await?;
        let key = EndpointKey::webhook_id(webhook).ok_or(ApiError::NoSuchWebhook)?;
        let subscription = self
            .ports
            .subscriptions
            .client_webhook(&client_id, &key)
            .await?
            .ok_or(ApiError::NoSuchWebhook)?;
        Ok((LogEndpoint::subscription(&subscription), subscription))
    }

    /// `POST /webhooks/{id}/messages/{messageId}/redeliver`.
    pub(super) async fn webhook_redeliver(
        &self,
        request: &Request,
        webhook: &str,
        message_id: &str,
    ) -> Result<Response<Body>, ApiError> {
        let (key, subscription) = self.own_webhook(request, webhook).await?;
        self.redeliver(&key, subscription.health.is_disabled(), message_id)
            .await
    }

    /// `GET /webhooks`: the caller's webhooks, each with its opaque id and health.
    pub(super) async fn client_webhooks(
        &self,
        request: &Request,
    ) -> Result<Response<Body>, ApiError> {
        let client_id = self.authenticate(request.headers()).await?;
        let webhooks = self.ports.subscriptions.client_webhooks(&client_id).await?;
        let data: Vec<_> = webhooks
            .iter()
            .map(|s| {
                let id = EndpointKey::subscription(&s.record, &s.callback);
                WebhookView::new(s, Some(id))
            })
            .collect();
        Ok(json_response(StatusCode::OK, &json!({"data": data})))
    }

    /// `GET /webhooks/{id}/attempts`.
    pub(super) async fn webhook_attempts(
        &self,
        request: &Request,
        webhook: &str,
    ) -> Result<Response<Body>, ApiError> {
        let (key, _) = self.own_webhook(request, webhook).await?;
        self.attempts_page(request, &key).await
    }

    /// `GET /webhooks/{id}/messages/{messageId}`.
    pub(super) async fn webhook_message(
        &self,
        request: &Request,
        webhook: &str,
        message_id: &str,
    ) -> Result<Response<Body>, ApiError> {
        let (key, _) = self.own_webhook(request, webhook).await?;
        self.message_view(&key, message_id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_queries() {
        assert_eq!(
            ListQuery::parse(None).unwrap(),
            ListQuery {
                filter: StatusFilter::All,
                limit: DEFAULT_PAGE,
                after: None
            }
        );
        let cursor = CURSOR.encode("0001#msg_x#0001");
        let q = ListQuery::parse(Some(&format!("status=failed&limit=5&cursor={cursor}"))).unwrap();
        assert_eq!(q.filter, StatusFilter::Failed);
        assert_eq!(q.limit, 5);
        assert_eq!(q.after.as_deref(), Some("0001#msg_x#0001"));
        for bad in [
            "status=ok",
            "limit=0",
            "limit=101",
            "limit=x",
            "cursor=%%%",
            "cursor=",
        ] {
            assert!(
                matches!(ListQuery::parse(Some(bad)), Err(ApiError::InvalidQuery(_))),
                "{bad}"
            );
        }
    }
}
