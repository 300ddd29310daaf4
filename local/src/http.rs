//! The local HTTP server: API Gateway's part (every request not under `/local/` goes to
//! the registration handler with its raw path intact) plus the local-only endpoints.

use crate::Runtime;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use http::{StatusCode, header};
use serde::Serialize;
use std::sync::{Arc, Mutex};
use webhooks::handlers::FlushReport;
use webhooks::handlers::api_error::ApiError;
use webhooks::handlers::registration::MAX_BODY_BYTES;
use webhooks::handlers::replay;
use webhooks::lambda_http::{self, RequestExt};
use webhooks::ports::{BackendError, Person};
use webhooks::record::RecordId;
use webhooks::window::WindowId;

/// Requests the built-in test receiver got (`POST /local/inbox/...`).
#[derive(Debug, Default)]
pub struct Inbox(Mutex<Vec<InboxEntry>>);

/// One request the built-in receiver got.
#[derive(Debug, Clone, Serialize)]
pub struct InboxEntry {
    path: String,
    headers: serde_json::Map<String, serde_json::Value>,
    body: String,
    received_at: String,
}

const INBOX_LIMIT: usize = 1000;

pub fn router(runtime: Arc<Runtime>) -> Router {
    Router::new()
        .route(
            "/local/records/{id}",
            put(put_record).delete(delete_record).get(get_record),
        )
        .route("/local/flush", post(flush))
        .route("/local/dlq/replay", post(replay_dead_letters))
        .route("/local/parked/replay", post(replay_parked))
        .route("/local/poison/replay", post(replay_poison))
        .route("/local/status", get(status))
        .route("/local/inbox", get(list_inbox).delete(clear_inbox))
        .route("/local/inbox/{*name}", post(receive))
        .fallback(api)
        .with_state(runtime)
}

/// An error answer of a local endpoint, in the API's error shape.
struct LocalError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl LocalError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn unknown_record() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "unknown_record",
            "no record has this id",
        )
    }
}

impl IntoResponse for LocalError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": self.code, "error_description": self.message});
        (self.status, axum::Json(body)).into_response()
    }
}

fn record_id(id: &str) -> Result<RecordId, LocalError> {
    RecordId::parse(id)
        .map_err(|e| LocalError::new(StatusCode::BAD_REQUEST, "invalid_record_id", e.to_string()))
}

/// `PUT /local/records/{id}` with a JSON object: write the person, feed change capture.
async fn put_record(
    State(rt): State<Arc<Runtime>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, LocalError> {
    let id = record_id(&id)?;
    let mut person: Person = serde_json::from_slice(&body).map_err(|e| {
        LocalError::new(
            StatusCode::BAD_REQUEST,
            "invalid_person",
            format!("the body must be a JSON object: {e}"),
        )
    })?;
    if !person.contains_key("lastChangedDate") {
        let now = rt.ports.clock.now().rfc3339();
        person.insert("lastChangedDate".into(), now.into());
    }
    let (record, window) = rt.put_person(&id, person).await.map_err(unavailable)?;
    let status = if record.event_name == "INSERT" {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let body =
        serde_json::json!({"id": id.as_str(), "event": record.event_name, "window": window.0});
    Ok((status, axum::Json(body)).into_response())
}

/// `DELETE /local/records/{id}`: remove the person, feed change capture.
async fn delete_record(
    State(rt): State<Arc<Runtime>>,
    Path(id): Path<String>,
) -> Result<StatusCode, LocalError> {
    let id = record_id(&id)?;
    match rt.delete_person(&id).await.map_err(unavailable)? {
        Some(_) => Ok(StatusCode::NO_CONTENT),
        None => Err(LocalError::unknown_record()),
    }
}

/// `GET /local/records/{id}`.
async fn get_record(
    State(rt): State<Arc<Runtime>>,
    Path(id): Path<String>,
) -> Result<axum::Json<Person>, LocalError> {
    let id = record_id(&id)?;
    match rt
        .ports
        .records
        .get_person(&id)
        .await
        .map_err(unavailable)?
    {
        Some(person) => Ok(axum::Json(person)),
        None => Err(LocalError::unknown_record()),
    }
}

/// `POST /local/flush`: close the current window and flush now.
async fn flush(State(rt): State<Arc<Runtime>>) -> Result<axum::Json<FlushReport>, LocalError> {
    rt.flush_now().await.map(axum::Json).map_err(unavailable)
}

/// A storage failure as the local endpoints answer it.
fn unavailable(e: BackendError) -> LocalError {
    LocalError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        e.to_string(),
    )
}

/// `POST /local/dlq/replay`: move every dead-lettered job back to the delivery queue.
async fn replay_dead_letters(
    State(rt): State<Arc<Runtime>>,
) -> Result<axum::Json<serde_json::Value>, LocalError> {
    let moved = rt
        .storage
        .redrive_dead_letters()
        .await
        .map_err(unavailable)?;
    tracing::info!(moved, "dead letters replayed");
    Ok(axum::Json(serde_json::json!({ "moved": moved })))
}

/// `POST /local/parked/replay`: send the parked jobs whose endpoint is enabled again back
/// to the delivery queue; the others stay parked and are listed by endpoint.
async fn replay_parked(
    State(rt): State<Arc<Runtime>>,
) -> Result<axum::Json<webhooks::handlers::ParkedReplay>, LocalError> {
    let report = rt.replay_parked().await.map_err(unavailable)?;
    tracing::info!(replayed = report.replayed, still_disabled = ?report.still_disabled, "parked jobs replayed");
    Ok(axum::Json(report))
}

/// `POST /local/poison/replay`: mark the record of every poison item pending again (as
/// `webhooks-admin poison replay --all` does) so the next flush rebuilds its jobs.
async fn replay_poison(
    State(rt): State<Arc<Runtime>>,
) -> Result<axum::Json<serde_json::Value>, LocalError> {
    let mut replayed = 0;
    let pending = rt.ports.pending.as_ref();
    for item in pending.poison_items().await.map_err(unavailable)? {
        if replay::replay_poison(pending, &item.id(), WindowId(rt.current_window()))
            .await
            .map_err(unavailable)?
            .is_some()
        {
            replayed += 1;
        }
    }
    tracing::info!(replayed, "poison items replayed");
    Ok(axum::Json(serde_json::json!({ "replayed": replayed })))
}

/// `GET /local/status`: queue counts, the DLQ, the parked jobs, poison items and the current window.
async fn status(State(rt): State<Arc<Runtime>>) -> Result<Response, LocalError> {
    let poison: Vec<serde_json::Value> = match rt.ports.pending.poison_items().await {
        Ok(items) => items
            .iter()
            .map(|item| {
                let mut view = serde_json::to_value(item).unwrap_or_default();
                view["id"] = item.id().to_string().into();
                view["reason"] = item.reason().into();
                view
            })
            .collect(),
        Err(e) => vec![e.to_string().into()],
    };
    let depth = rt.queue_depth().await.map_err(unavailable)?;
    let as_json = |bodies: Vec<String>| -> Vec<serde_json::Value> {
        bodies
            .iter()
            .map(|body| serde_json::from_str(body).unwrap_or_else(|_| body.as_str().into()))
            .collect()
    };
    Ok(axum::Json(serde_json::json!({
        "window": rt.current_window(),
        "queue": {"visible": depth.visible, "in_flight": depth.in_flight, "dead_letters": depth.dead, "parked": depth.parked},
        "dead_letters": as_json(rt.storage.dead_letters().await.map_err(unavailable)?),
        "parked": as_json(rt.storage.parked().await.map_err(unavailable)?),
        "poison": poison,
    }))
    .into_response())
}

/// `POST /local/inbox/{name}`: a receiver to point callbacks at (needs
/// `--allow-insecure-callbacks`); answers 204 and keeps the request.
async fn receive(
    State(rt): State<Arc<Runtime>>,
    Path(name): Path<String>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let headers = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned().into(),
            )
        })
        .collect();
    tracing::info!(inbox = %name, bytes = body.len(), "inbox received a webhook");
    let mut inbox = rt.inbox.0.lock().expect("inbox lock");
    if inbox.len() >= INBOX_LIMIT {
        inbox.remove(0);
    }
    inbox.push(InboxEntry {
        path: format!("/local/inbox/{name}"),
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        received_at: rt.ports.clock.now().rfc3339(),
    });
    StatusCode::NO_CONTENT.into_response()
}

async fn list_inbox(State(rt): State<Arc<Runtime>>) -> Response {
    let inbox = rt.inbox.0.lock().expect("inbox lock").clone();
    axum::Json(inbox).into_response()
}

async fn clear_inbox(State(rt): State<Arc<Runtime>>) -> Response {
    rt.inbox.0.lock().expect("inbox lock").clear();
    StatusCode::NO_CONTENT.into_response()
}

/// Everything else: what API Gateway would hand the registration Lambda.
async fn api(State(rt): State<Arc<Runtime>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY_BYTES + 1).await else {
        return from_lambda(ApiError::PayloadTooLarge(MAX_BODY_BYTES).into_response());
    };
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let raw_path = parts.uri.path().to_owned();
    let uri = format!("http://{host}{path_and_query}")
        .parse::<http::Uri>()
        .unwrap_or_else(|_| parts.uri.clone());
    let mut lambda_request = http::Request::builder()
        .method(parts.method)
        .uri(uri)
        .body(if body.is_empty() {
            lambda_http::Body::Empty
        } else {
            lambda_http::Body::Binary(body.to_vec())
        })
        .expect("method and URI come from a parsed request");
    *lambda_request.headers_mut() = parts.headers;
    let lambda_request = lambda_request.with_raw_http_path(raw_path);
    from_lambda(rt.registration.handle(lambda_request).await)
}

fn from_lambda(response: lambda_http::Response<lambda_http::Body>) -> Response {
    let (parts, body) = response.into_parts();
    let bytes = match body {
        lambda_http::Body::Empty => Vec::new(),
        lambda_http::Body::Text(text) => text.into_bytes(),
        lambda_http::Body::Binary(bytes) => bytes,
        _ => Vec::new(),
    };
    Response::from_parts(parts, axum::body::Body::from(bytes))
}
