//! The HTTP API (the `registration` Lambda behind API Gateway's `$default` route, and the
//! local runner's HTTP server): the OAuth token endpoint and ORCID-style webhook
//! registration.

use super::api_error::{ApiError, empty_response, json_response};
use super::views::WebhookView;
use crate::callback::{CallbackUrl, UrlPolicy, decode_path_segment};
use crate::events::OpsEvent;
use crate::http_client::CallbackClient;
use crate::ids::ClientId;
use crate::oauth::{BearerError, IssuedToken, TokenRequest, authorize_webhook, sha256_hex};
use crate::ports::{Ports, announce};
use crate::record::OrcidId;
use crate::subscription::{Registered, Subscription, Unregistered};
use base64::Engine;
use http::{HeaderMap, Method, StatusCode, header};
use lambda_http::{Body, Request, RequestExt, Response};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use std::time::Duration;

/// Largest request body accepted on any route.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What `encodeURIComponent` leaves alone; the seed's encoded callbacks use this form.
const URI_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

/// Settings of the HTTP API.
#[derive(Debug, Clone, Copy)]
pub struct ApiSettings {
    /// Which callback URLs may be registered.
    pub url_policy: UrlPolicy,
    /// Lifetime of issued access tokens.
    pub token_lifetime: Duration,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            url_policy: UrlPolicy::default(),
            token_lifetime: Duration::from_secs(3600),
        }
    }
}

pub struct Registration {
    pub ports: Ports,
    /// The delivery client (Run Test delivers at once).
    pub http: CallbackClient,
    pub settings: ApiSettings,
}

/// The routes, matched on the raw (still percent-encoded) path.
enum Route<'a> {
    Token,
    Console(&'static super::console::Asset),
    Webhook { record: &'a str, callback: &'a str },
    Application { id: &'a str },
    WebhookSecret { id: &'a str },
    WebhookTest { id: &'a str },
    Sync { id: &'a str },
    SyncStatus { id: &'a str, sync: &'a str },
    Attempts { id: &'a str },
    Message { id: &'a str, message: &'a str },
    ClientWebhooks,
    WebhookAttempts { webhook: &'a str },
    WebhookMessage { webhook: &'a str, message: &'a str },
    Redeliver { id: &'a str, message: &'a str },
    WebhookRedeliver { webhook: &'a str, message: &'a str },
    Recover { id: &'a str },
    WebhookRecover { webhook: &'a str },
    Recovery { id: &'a str, recovery: &'a str },
    WebhookRecovery { webhook: &'a str, recovery: &'a str },
}

impl<'a> Route<'a> {
    fn parse(path: &'a str) -> Option<Self> {
        if path == "/oauth/token" {
            return Some(Self::Token);
        }
        if let Some(asset) = super::console::asset(path) {
            return Some(Self::Console(asset));
        }
        if let Some(rest) = path.strip_prefix("/application/") {
            let segments: Vec<&str> = rest.split('/').collect();
            return match segments.as_slice() {
                [id] if !id.is_empty() => Some(Self::Application { id }),
                [id, "webhook", "secret"] => Some(Self::WebhookSecret { id }),
                [id, "webhook", "test"] => Some(Self::WebhookTest { id }),
                [id, "webhook", "sync"] => Some(Self::Sync { id }),
                [id, "webhook", "sync", sync] if !sync.is_empty() => {
                    Some(Self::SyncStatus { id, sync })
                }
                [id, "webhook", "attempts"] => Some(Self::Attempts { id }),
                [id, "webhook", "messages", message] if !message.is_empty() => {
                    Some(Self::Message { id, message })
                }
                [id, "webhook", "messages", message, "redeliver"] => {
                    Some(Self::Redeliver { id, message })
                }
                [id, "webhook", "recover"] => Some(Self::Recover { id }),
                [id, "webhook", "recover", recovery] if !recovery.is_empty() => {
                    Some(Self::Recovery { id, recovery })
                }
                _ => None,
            };
        }
        if path == "/webhooks" {
            return Some(Self::ClientWebhooks);
        }
        if let Some(rest) = path.strip_prefix("/webhooks/") {
            let segments: Vec<&str> = rest.split('/').collect();
            match segments.as_slice() {
                [webhook, "attempts"] => return Some(Self::WebhookAttempts { webhook }),
                [webhook, "messages", message] if !message.is_empty() => {
                    return Some(Self::WebhookMessage { webhook, message });
                }
                [webhook, "messages", message, "redeliver"] => {
                    return Some(Self::WebhookRedeliver { webhook, message });
                }
                [webhook, "recover"] => return Some(Self::WebhookRecover { webhook }),
                [webhook, "recover", recovery] if !recovery.is_empty() => {
                    return Some(Self::WebhookRecovery { webhook, recovery });
                }
                _ => {}
            }
        }
        // `/{record}/webhook/{callback}`: the callback is everything after `/webhook/`, so
        // it survives whether the gateway kept `%2F` encoded or decoded it into `/`.
        let rest = path.strip_prefix('/')?;
        let (record, rest) = rest.split_once('/')?;
        let callback = rest.strip_prefix("webhook/")?;
        (!record.is_empty() && !callback.is_empty()).then_some(Self::Webhook { record, callback })
    }

    fn allowed(&self) -> &'static str {
        match self {
            Self::Token
            | Self::WebhookSecret { .. }
            | Self::WebhookTest { .. }
            | Self::Sync { .. }
            | Self::Redeliver { .. }
            | Self::WebhookRedeliver { .. }
            | Self::Recover { .. }
            | Self::WebhookRecover { .. } => "POST",
            Self::Webhook { .. } => "GET, PUT, DELETE",
            Self::Console(_) => "GET",
            Self::Application { .. } => "GET, PATCH",
            Self::SyncStatus { .. }
            | Self::Attempts { .. }
            | Self::Message { .. }
            | Self::ClientWebhooks
            | Self::WebhookAttempts { .. }
            | Self::WebhookMessage { .. }
            | Self::Recovery { .. }
            | Self::WebhookRecovery { .. } => "GET",
        }
    }
}

impl Registration {
    /// Answers one HTTP request. Never fails: every error is a JSON answer.
    pub async fn handle(&self, request: Request) -> Response<Body> {
        match self.dispatch(&request).await {
            Ok(response) => response,
            Err(e) => e.into_response(),
        }
    }

    async fn dispatch(&self, request: &Request) -> Result<Response<Body>, ApiError> {
        let path = raw_path(request);
        let route = Route::parse(path).ok_or(ApiError::NotFound)?;
        if body_bytes(request).len() > MAX_BODY_BYTES {
            return Err(ApiError::PayloadTooLarge(MAX_BODY_BYTES));
        }
        match (&route, request.method()) {
            (Route::Token, &Method::POST) => self.token(request).await,
            (Route::Console(asset), &Method::GET) => Ok(asset.response()),
            (Route::Webhook { record, callback }, &Method::PUT) => {
                self.register(request, record, callback).await
            }
            (Route::Webhook { record, callback }, &Method::GET) => {
                self.webhook_status(request, record, callback).await
            }
            (Route::Webhook { record, callback }, &Method::DELETE) => {
                self.unregister(request, record, callback).await
            }
            (Route::Application { id }, &Method::GET) => self.get_application(request, id).await,
            (Route::Application { id }, &Method::PATCH) => {
                self.patch_application(request, id).await
            }
            (Route::WebhookSecret { id }, &Method::POST) => self.rotate_secret(request, id).await,
            (Route::WebhookTest { id }, &Method::POST) => self.run_test(request, id).await,
            (Route::Sync { id }, &Method::POST) => self.start_sync(request, id).await,
            (Route::SyncStatus { id, sync }, &Method::GET) => {
                self.sync_status(request, id, sync).await
            }
            (Route::Attempts { id }, &Method::GET) => self.application_attempts(request, id).await,
            (Route::Message { id, message }, &Method::GET) => {
                self.application_message(request, id, message).await
            }
            (Route::ClientWebhooks, &Method::GET) => self.client_webhooks(request).await,
            (Route::WebhookAttempts { webhook }, &Method::GET) => {
                self.webhook_attempts(request, webhook).await
            }
            (Route::WebhookMessage { webhook, message }, &Method::GET) => {
                self.webhook_message(request, webhook, message).await
            }
            (Route::Redeliver { id, message }, &Method::POST) => {
                self.application_redeliver(request, id, message).await
            }
            (Route::WebhookRedeliver { webhook, message }, &Method::POST) => {
                self.webhook_redeliver(request, webhook, message).await
            }
            (Route::Recover { id }, &Method::POST) => self.application_recover(request, id).await,
            (Route::WebhookRecover { webhook }, &Method::POST) => {
                self.webhook_recover(request, webhook).await
            }
            (Route::Recovery { id, recovery }, &Method::GET) => {
                self.application_recovery(request, id, recovery).await
            }
            (Route::WebhookRecovery { webhook, recovery }, &Method::GET) => {
                self.webhook_recovery(request, webhook, recovery).await
            }
            _ => Err(ApiError::MethodNotAllowed(route.allowed())),
        }
    }

    /// `POST /oauth/token`: the client-credentials exchange.
    async fn token(&self, request: &Request) -> Result<Response<Body>, ApiError> {
        let basic = basic_credentials(request.headers());
        let token_request = TokenRequest::from_form(body_bytes(request), basic)?;
        let client = self
            .ports
            .clients
            .get_client(&token_request.client_id)
            .await?;
        let scope = token_request.authorize(client.as_ref())?;
        let lifetime = self.settings.token_lifetime.as_secs() as i64;
        let issued = IssuedToken::new(
            &token_request.client_id,
            &scope,
            self.ports.clock.now(),
            lifetime,
        );
        self.ports.tokens.put_token(&issued.stored).await?;
        tracing::info!(client_id = %token_request.client_id, "token issued");
        let mut response = json_response(
            StatusCode::OK,
            &serde_json::json!({
                "access_token": issued.access_token,
                "token_type": "bearer",
                "refresh_token": issued.refresh_token,
                "expires_in": lifetime,
                "scope": scope,
            }),
        );
        response
            .headers_mut()
            .insert(header::PRAGMA, http::HeaderValue::from_static("no-cache"));
        Ok(response)
    }

    /// Checks the bearer token and returns the client id it belongs to.
    pub(super) async fn authenticate(&self, headers: &HeaderMap) -> Result<ClientId, ApiError> {
        let presented = bearer_token(headers).ok_or(BearerError::Missing)?;
        let token = self.ports.tokens.get_token(&sha256_hex(presented)).await?;
        let client_id = authorize_webhook(token.as_ref(), self.ports.clock.now())?.clone();
        // A disabled or deleted client's tokens stop working at once.
        match self.ports.clients.get_client(&client_id).await? {
            Some(client) if !client.disabled => Ok(client_id),
            _ => Err(BearerError::Invalid.into()),
        }
    }

    /// The caller's client id and the existing webhook the path names. Only the exact text
    /// that was registered matters here, not today's URL policy, so a webhook registered
    /// under an older policy can still be seen and removed.
    async fn addressed_webhook(
        &self,
        request: &Request,
        record: &str,
        raw_callback: &str,
    ) -> Result<(ClientId, OrcidId, CallbackUrl), ApiError> {
        let client_id = self.authenticate(request.headers()).await?;
        let record = OrcidId::parse(record)?;
        let callback = CallbackUrl::try_from(path_callback(request, raw_callback)?)?;
        Ok((client_id, record, callback))
    }

    /// `PUT /{record}/webhook/{callback}`.
    async fn register(
        &self,
        request: &Request,
        record: &str,
        raw_callback: &str,
    ) -> Result<Response<Body>, ApiError> {
        let client_id = self.authenticate(request.headers()).await?;
        let record = OrcidId::parse(record)?;
        let callback = CallbackUrl::parse(
            &path_callback(request, raw_callback)?,
            self.settings.url_policy,
        )?;
        if self
            .ports
            .records
            .get_person(record.record_id())
            .await?
            .is_none()
        {
            return Err(ApiError::UnknownRecord);
        }
        let subscription = Subscription {
            record: record.record_id().clone(),
            callback,
            client_id,
            created_at: self.ports.clock.now().whole_secs(),
            health: Default::default(),
        };
        match self.ports.subscriptions.register(&subscription).await? {
            Registered::Created => {
                tracing::info!(record = %subscription.record, client_id = %subscription.client_id, "webhook registered");
                let mut response = empty_response(StatusCode::CREATED);
                // Built from the request's host and percent-encoded parts, so always a
                // valid header; were it not, the webhook is still registered.
                if let Ok(value) = http::HeaderValue::from_str(&location(request, &subscription)) {
                    response.headers_mut().insert(header::LOCATION, value);
                }
                Ok(response)
            }
            Registered::AlreadyExists => {
                self.reenable_if_disabled(&subscription).await?;
                Ok(empty_response(StatusCode::NO_CONTENT))
            }
            Registered::OwnedByOther => Err(ApiError::NotOwner),
        }
    }

    /// Registering again is how an owner re-enables a disabled callback.
    async fn reenable_if_disabled(&self, subscription: &Subscription) -> Result<(), ApiError> {
        let subscriptions = &self.ports.subscriptions;
        let existing = subscriptions
            .get_subscription(&subscription.record, &subscription.callback)
            .await?;
        if !existing.is_some_and(|s| s.health.is_disabled()) {
            return Ok(());
        }
        subscriptions
            .set_subscription_health(
                &subscription.record,
                &subscription.callback,
                &Default::default(),
            )
            .await?;
        let endpoint = subscription.endpoint();
        let event = OpsEvent::EndpointEnabled {
            endpoint: endpoint.clone(),
        };
        announce(self.ports.events.as_ref(), event).await;
        tracing::info!(%endpoint, "webhook re-enabled by its owner");
        Ok(())
    }

    /// `GET /{record}/webhook/{callback}`: the owner sees the webhook's health.
    async fn webhook_status(
        &self,
        request: &Request,
        record: &str,
        raw_callback: &str,
    ) -> Result<Response<Body>, ApiError> {
        let (client_id, record, callback) = self
            .addressed_webhook(request, record, raw_callback)
            .await?;
        let subscription = self
            .ports
            .subscriptions
            .get_subscription(record.record_id(), &callback)
            .await?
            .ok_or(ApiError::NoSuchWebhook)?;
        if !subscription.is_owned_by(&client_id) {
            return Err(ApiError::NotOwner);
        }
        Ok(json_response(
            StatusCode::OK,
            &WebhookView::new(&subscription, None),
        ))
    }

    /// `DELETE /{record}/webhook/{callback}`.
    async fn unregister(
        &self,
        request: &Request,
        record: &str,
        raw_callback: &str,
    ) -> Result<Response<Body>, ApiError> {
        let (client_id, record, callback) = self
            .addressed_webhook(request, record, raw_callback)
            .await?;
        match self
            .ports
            .subscriptions
            .unregister(record.record_id(), &callback, &client_id)
            .await?
        {
            Unregistered::Deleted => {
                tracing::info!(record = %record.record_id(), client_id = %client_id, "webhook unregistered");
                Ok(empty_response(StatusCode::NO_CONTENT))
            }
            Unregistered::NotFound => Err(ApiError::NoSuchWebhook),
            Unregistered::OwnedByOther => Err(ApiError::NotOwner),
        }
    }
}

/// The path as the client sent it: API Gateway's raw path when there is one (the URI's
/// path can be normalised), else the URI's.
fn raw_path(request: &Request) -> &str {
    match request.raw_http_path() {
        "" => request.uri().path(),
        raw => raw,
    }
}

pub(super) fn body_bytes(request: &Request) -> &[u8] {
    request.body().as_ref()
}

/// The callback text of a webhook route. A request with a query string is refused: the
/// client's callback had a `?` that split it (sent unencoded, or decoded by API Gateway,
/// whose HTTP APIs decode the path before splitting it), so the path holds only part of
/// the URL the client meant, and registering that part would be silently wrong.
fn path_callback(request: &Request, raw: &str) -> Result<String, ApiError> {
    if request.uri().query().is_some_and(|q| !q.is_empty()) {
        return Err(ApiError::CallbackQuery);
    }
    Ok(decode_path_segment(raw)?)
}

/// `scheme://host` of the request, as the client addressed the API.
pub(super) fn base_url(request: &Request) -> String {
    let uri = request.uri();
    let host = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            request
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "localhost".into());
    format!("{}://{host}", uri.scheme_str().unwrap_or("http"))
}

/// The absolute URL of the registered webhook: the request's scheme and host, the record
/// and the callback in `encodeURIComponent` form (which is the request URL itself for
/// the seed's example).
fn location(request: &Request, subscription: &Subscription) -> String {
    format!(
        "{}/{}/webhook/{}",
        base_url(request),
        subscription.record,
        encode_uri_component(subscription.callback.as_str())
    )
}

/// `text` as JavaScript's `encodeURIComponent` writes it: the form of a callback URL in a
/// path the seed's examples use.
pub fn encode_uri_component(text: &str) -> String {
    utf8_percent_encode(text, URI_COMPONENT).to_string()
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let (id, secret) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some((id.to_owned(), secret.to_owned()))
}

#[cfg(test)]
mod tests;
