//! The Members-style application routes of the HTTP API, authenticated by
//! `x-access-token: <application API key>`; an application sees and changes only itself.

use super::api_error::{ApiError, json_response};
use super::outbound::application_request;
use super::registration::{Registration, base_url, body_bytes};
use super::views::{ApplicationView, SyncView};
use crate::application::{Application, ApplicationPatch};
use crate::clock::Timestamp;
use crate::events::OpsEvent;
use crate::ids::{SyncId, SyncKey};
use crate::job::{DeliveryJob, MessageId};
use crate::members::{ScopedPerson, consented_scopes, sample_person, scoped_person};
use crate::oauth::sha256_hex;
use crate::ports::announce;
use crate::record::RecordId;
use crate::sync::FullSync;
use http::{StatusCode, header};
use lambda_http::{Body, Request, Response};
use serde::Deserialize;
use serde_json::json;

/// The body of `POST /application/{id}/webhook/test`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TestRequest {
    person_id: Option<String>,
}

impl Registration {
    /// The application `id`, if the request's API key is its own.
    pub(super) async fn authenticate_application(
        &self,
        request: &Request,
        id: &str,
    ) -> Result<Application, ApiError> {
        let key = request
            .headers()
            .get("x-access-token")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or(ApiError::ApiKey)?;
        let owner = self
            .ports
            .applications
            .application_for_key(&sha256_hex(key))
            .await?
            .ok_or(ApiError::ApiKey)?;
        // The path's id is compared as text: one that is not an application id is not the
        // caller's either, and the typed id comes from the key's index.
        if owner.as_str() != id {
            return Err(ApiError::OtherApplication);
        }
        self.ports
            .applications
            .get_application(&owner)
            .await?
            .ok_or(ApiError::ApiKey)
    }

    /// `GET /application/{id}`.
    pub(super) async fn get_application(
        &self,
        request: &Request,
        id: &str,
    ) -> Result<Response<Body>, ApiError> {
        let app = self.authenticate_application(request, id).await?;
        Ok(json_response(StatusCode::OK, &ApplicationView::from(&app)))
    }

    /// `PATCH /application/{id}`: change the webhook; answers the updated application.
    pub(super) async fn patch_application(
        &self,
        request: &Request,
        id: &str,
    ) -> Result<Response<Body>, ApiError> {
        let mut app = self.authenticate_application(request, id).await?;
        let patch: ApplicationPatch = parse_json(body_bytes(request))?;
        let was_disabled = app.health.is_disabled();
        app.apply(patch, self.settings.url_policy)?;
        self.ports.applications.put_application(&app).await?;
        if was_disabled && !app.health.is_disabled() {
            announce(
                self.ports.events.as_ref(),
                OpsEvent::EndpointEnabled {
                    endpoint: app.endpoint(),
                },
            )
            .await;
        }
        tracing::info!(application_id = %app.id, url = app.webhook.url.as_ref().map(|u| u.as_str()), "application webhook updated");
        Ok(json_response(StatusCode::OK, &ApplicationView::from(&app)))
    }

    /// `POST /application/{id}/webhook/secret`: a new Standard Webhooks secret, shown
    /// once; the previous one keeps signing beside it for 24 hours.
    pub(super) async fn rotate_secret(
        &self,
        request: &Request,
        id: &str,
    ) -> Result<Response<Body>, ApiError> {
        let mut app = self.authenticate_application(request, id).await?;
        let secret = app.secrets.rotate(self.ports.clock.now());
        self.ports.applications.put_application(&app).await?;
        let previous_until = app.secrets.previous_until.map(Timestamp::rfc3339);
        Ok(json_response(
            StatusCode::OK,
            &json!({"secret": secret.expose(), "previousSecretValidUntil": previous_until}),
        ))
    }

    /// `POST /application/{id}/webhook/test`: deliver one person now and tell how it went.
    pub(super) async fn run_test(
        &self,
        request: &Request,
        id: &str,
    ) -> Result<Response<Body>, ApiError> {
        let app = self.authenticate_application(request, id).await?;
        let body = body_bytes(request);
        let test: TestRequest = if body.iter().all(u8::is_ascii_whitespace) {
            TestRequest::default()
        } else {
            parse_json(body)?
        };
        let person = match test.person_id {
            None => ScopedPerson::from_map(&sample_person()),
            Some(person_id) => {
                let record = RecordId::parse(&person_id).map_err(|_| ApiError::PersonNotFound)?;
                let person = self
                    .ports
                    .records
                    .get_person(&record)
                    .await?
                    .ok_or(ApiError::PersonNotFound)?;
                let scopes = consented_scopes(&person, &app.id).ok_or(ApiError::PersonNotFound)?;
                scoped_person(&record, &person, &scopes)
            }
        };
        let message_id = MessageId::derive(&["test", &uuid::Uuid::new_v4().to_string()]);
        let outbound = application_request(
            &message_id,
            &app,
            app.webhook.target()?,
            &[person],
            self.ports.clock.now(),
            self.ports.clock.as_ref(),
        );
        let (outcome, acknowledged) = outbound.send(&self.http).await;
        tracing::info!(application_id = %app.id, status = outcome.status, acknowledged, "webhook test");
        Ok(json_response(
            StatusCode::OK,
            &json!({
                "messageId": message_id.as_str(),
                "status": outcome.status,
                "acknowledged": acknowledged,
                "latencyMs": outcome.latency.as_millis() as u64,
                "error": outcome.error.as_ref().map(ToString::to_string),
            }),
        ))
    }

    /// `POST /application/{id}/webhook/sync`: start a full sync (202 with its progress).
    pub(super) async fn start_sync(
        &self,
        request: &Request,
        id: &str,
    ) -> Result<Response<Body>, ApiError> {
        let app = self.authenticate_application(request, id).await?;
        app.webhook.target()?;
        let now = self.ports.clock.now();
        let sync = FullSync::new(&app.id, app.webhook.request_interval_ms, now);
        self.ports.syncs.save_sync(&sync).await?;
        self.ports
            .queue
            .enqueue(&[DeliveryJob::sync_step(&sync.key(), now)])
            .await?
            .all()?;
        tracing::info!(application_id = %app.id, sync_id = %sync.sync_id, interval_ms = sync.request_interval_ms, "full sync started");
        let mut response = json_response(
            StatusCode::ACCEPTED,
            &SyncView::new(&sync, Default::default()),
        );
        let location = format!(
            "{}/application/{}/webhook/sync/{}",
            base_url(request),
            app.id,
            sync.sync_id
        );
        if let Ok(value) = http::HeaderValue::from_str(&location) {
            response.headers_mut().insert(header::LOCATION, value);
        }
        Ok(response)
    }

    /// `GET /application/{id}/webhook/sync/{syncId}`: progress.
    pub(super) async fn sync_status(
        &self,
        request: &Request,
        id: &str,
        sync_id: &str,
    ) -> Result<Response<Body>, ApiError> {
        let app = self.authenticate_application(request, id).await?;
        // An id that is not a sync id names no sync.
        let sync = SyncId::parse(sync_id).map_err(|_| ApiError::SyncNotFound)?;
        let key = SyncKey {
            application: app.id,
            sync,
        };
        let (sync, outcomes) = self
            .ports
            .syncs
            .get_sync(&key)
            .await?
            .ok_or(ApiError::SyncNotFound)?;
        Ok(json_response(
            StatusCode::OK,
            &SyncView::new(&sync, outcomes),
        ))
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::InvalidBody(e.to_string()))
}
