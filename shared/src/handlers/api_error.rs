//! Every error the HTTP API answers, mapped to its status code and stable code in one
//! place. Bodies are `{"error": CODE, "error_description": MESSAGE}` on every route (the
//! OAuth error shape of RFC 6749, which the token endpoint must use anyway).

use crate::callback::InvalidCallbackUrl;
use crate::oauth::{BearerError, OAuthError};
use crate::ports::BackendError;
use crate::record::InvalidRecordId;
use http::{HeaderValue, StatusCode, header};
use lambda_http::{Body, Response};

/// An error answer of the HTTP API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// Token endpoint errors.
    #[error(transparent)]
    OAuth(#[from] OAuthError),
    /// Bearer-token errors.
    #[error(transparent)]
    Bearer(#[from] BearerError),
    /// The record id in the path is not an ORCID iD.
    #[error(transparent)]
    RecordId(#[from] InvalidRecordId),
    /// The callback URL in the path is refused.
    #[error(transparent)]
    CallbackUrl(#[from] InvalidCallbackUrl),
    /// The webhook request has a query string: the callback URL in the path is cut
    /// where the client's `?` was, so it is not the URL the client sent.
    #[error(
        "the request has a query string, so the callback URL in the path is not the whole URL that was sent (its '?' split it; API Gateway splits even at an encoded %3F); register a callback URL without a query string"
    )]
    CallbackQuery,
    /// The record does not exist.
    #[error("no record has this id")]
    UnknownRecord,
    /// No such webhook to remove.
    #[error("no webhook with this callback URL is registered for this record")]
    NoSuchWebhook,
    /// Another client owns the webhook.
    #[error("this webhook belongs to another client")]
    NotOwner,
    /// No route has this path.
    #[error("no such resource")]
    NotFound,
    /// The path exists but not with this method.
    #[error("method not allowed; allowed: {0}")]
    MethodNotAllowed(&'static str),
    /// The body is larger than the limit.
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// No `x-access-token`, or one no application has.
    #[error("an x-access-token header with the application's API key is required")]
    ApiKey,
    /// The API key belongs to another application.
    #[error("this API key belongs to another application")]
    OtherApplication,
    /// The body is not the JSON the route takes.
    #[error("the request body is not valid: {0}")]
    InvalidBody(String),
    /// A webhook setting is refused.
    #[error(transparent)]
    InvalidPatch(#[from] crate::application::InvalidPatch),
    /// The application has no webhook URL to use for this.
    #[error("{0}; set one with PATCH /application/{{id}}")]
    WebhookNotConfigured(#[from] crate::application::NoWebhook),
    /// No person with this id is visible to the application.
    #[error("no person with this id has given this application consent")]
    PersonNotFound,
    /// No such sync.
    #[error("no sync with this id")]
    SyncNotFound,
    /// No kept message with this id for this endpoint (never sent there, or older than
    /// the retention period).
    #[error(
        "no message with this id was sent to this endpoint (messages are kept for the retention period)"
    )]
    MessageNotFound,
    /// The endpoint is disabled: nothing can be sent to it until its owner re-enables it.
    #[error(
        "the endpoint is disabled; re-enable it first (PATCH the application's webhook, or register the callback again)"
    )]
    EndpointDisabled,
    /// No such recovery.
    #[error("no recovery with this id")]
    RecoveryNotFound,
    /// A query parameter is not valid.
    #[error("query parameter {0}")]
    InvalidQuery(String),
    /// A backing service failed; the request did nothing or can be repeated.
    #[error("the service is temporarily unavailable; retry the request")]
    Unavailable(#[from] BackendError),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::OAuth(OAuthError::InvalidClient | OAuthError::InvalidScope) => {
                StatusCode::UNAUTHORIZED
            }
            Self::OAuth(_) => StatusCode::BAD_REQUEST,
            Self::Bearer(BearerError::InsufficientScope) => StatusCode::FORBIDDEN,
            Self::Bearer(_) => StatusCode::UNAUTHORIZED,
            Self::RecordId(_) | Self::CallbackUrl(_) | Self::CallbackQuery => {
                StatusCode::BAD_REQUEST
            }
            Self::UnknownRecord | Self::NoSuchWebhook | Self::NotFound => StatusCode::NOT_FOUND,
            Self::NotOwner => StatusCode::FORBIDDEN,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::ApiKey => StatusCode::UNAUTHORIZED,
            Self::OtherApplication => StatusCode::FORBIDDEN,
            Self::InvalidBody(_) | Self::InvalidPatch(_) => StatusCode::BAD_REQUEST,
            Self::WebhookNotConfigured(_) => StatusCode::CONFLICT,
            Self::PersonNotFound | Self::SyncNotFound | Self::MessageNotFound => {
                StatusCode::NOT_FOUND
            }
            Self::InvalidQuery(_) => StatusCode::BAD_REQUEST,
            Self::RecoveryNotFound => StatusCode::NOT_FOUND,
            Self::EndpointDisabled => StatusCode::CONFLICT,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::OAuth(OAuthError::InvalidRequest(_)) => "invalid_request",
            Self::OAuth(OAuthError::UnsupportedGrantType) => "unsupported_grant_type",
            Self::OAuth(OAuthError::InvalidClient) => "invalid_client",
            Self::OAuth(OAuthError::InvalidScope) => "invalid_scope",
            Self::Bearer(BearerError::Missing | BearerError::Invalid | BearerError::Expired) => {
                "invalid_token"
            }
            Self::Bearer(BearerError::InsufficientScope) => "insufficient_scope",
            Self::RecordId(_) => "invalid_record_id",
            Self::CallbackUrl(_) => "invalid_callback_url",
            Self::CallbackQuery => "callback_url_query",
            Self::UnknownRecord => "unknown_record",
            Self::NoSuchWebhook => "webhook_not_found",
            Self::NotOwner => "forbidden",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed(_) => "method_not_allowed",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::ApiKey => "invalid_api_key",
            Self::OtherApplication => "forbidden",
            Self::InvalidBody(_) => "invalid_request",
            Self::InvalidPatch(_) => "invalid_webhook",
            Self::WebhookNotConfigured(_) => "webhook_not_configured",
            Self::PersonNotFound => "person_not_found",
            Self::SyncNotFound => "sync_not_found",
            Self::MessageNotFound => "message_not_found",
            Self::InvalidQuery(_) => "invalid_request",
            Self::RecoveryNotFound => "recovery_not_found",
            Self::EndpointDisabled => "endpoint_disabled",
            Self::Unavailable(_) => "temporarily_unavailable",
        }
    }

    pub fn into_response(self) -> Response<Body> {
        if let Self::Unavailable(e) = &self {
            tracing::error!(error = %e, "backend failure answered with 503");
        }
        let body = serde_json::json!({"error": self.code(), "error_description": self.to_string()});
        let mut response = json_response(self.status(), &body);
        let headers = response.headers_mut();
        match &self {
            Self::Bearer(e) => {
                let challenge = match e {
                    BearerError::Missing => r#"Bearer realm="webhooks""#.to_owned(),
                    _ => format!(
                        r#"Bearer realm="webhooks", error="{}", error_description="{}""#,
                        self.code(),
                        self
                    ),
                };
                if let Ok(v) = HeaderValue::from_str(&challenge) {
                    headers.insert(header::WWW_AUTHENTICATE, v);
                }
            }
            Self::OAuth(OAuthError::InvalidClient) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(r#"Basic realm="webhooks""#),
                );
            }
            Self::MethodNotAllowed(allow) => {
                headers.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            Self::Unavailable(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}

/// A JSON response with `status` (a view of [`super::views`], or a small `json!` body).
pub fn json_response<T: serde::Serialize + ?Sized>(status: StatusCode, body: &T) -> Response<Body> {
    // Views hold strings, numbers and string-keyed maps only: serializing cannot fail.
    let text = serde_json::to_string(body).expect("API views serialize");
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json;charset=UTF-8")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::Text(text))
        .expect("static parts are valid")
}

/// An empty response with `status`.
pub fn empty_response(status: StatusCode) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(Body::Empty)
        .expect("static parts are valid")
}
