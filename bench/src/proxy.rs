//! An HTTP proxy in front of moto server, on the runtime that starts it: forwards every
//! request and shows each exchange (the `X-Amz-Target`, the request and response bodies)
//! to whoever started it.
//!
//! Once told to replay, it answers each request moto has answered before with that answer,
//! after a stated latency: a client's CPU per call can then be measured at the pace of AWS,
//! not of moto (a `SendMessageBatch` takes moto about 170 ms on this machine, and a client
//! that waits longer spends more CPU waiting).
//!
//! It keeps its clients' connections open, as AWS does. moto's server answers
//! `Connection: close`, so a client talking to it directly opens a connection for every
//! call; hop-by-hop headers (RFC 9110, 7.6.1) are therefore not forwarded either way.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::HeaderName;
use http::header::{CONNECTION, CONTENT_LENGTH, HOST, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the proxy shows its starter of each exchange: the request's `X-Amz-Target`, the
/// request body and the response body.
pub type Exchange = Arc<dyn Fn(&str, &[u8], &[u8]) + Send + Sync>;

/// An answer of moto's, kept for replaying.
#[derive(Clone)]
struct Answer {
    status: http::StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

#[derive(Clone)]
struct Proxy {
    upstream: String,
    client: reqwest::Client,
    exchange: Exchange,
    /// While replaying, the latency of a replayed answer.
    replaying: Arc<Mutex<Option<Duration>>>,
    /// Moto's answer to each request (its `X-Amz-Target` and body) while a [`Replay`]
    /// may need it; none kept otherwise.
    answers: Option<Arc<Mutex<Answers>>>,
}

/// Moto's answers by request: its `X-Amz-Target` and body.
type Answers = HashMap<(String, Bytes), Answer>;

/// Switches a proxy to replaying: each request moto has answered before (the same
/// operation with the same body) is answered with that answer, without asking moto.
#[derive(Clone)]
pub struct Replay(Arc<Mutex<Option<Duration>>>);

impl Replay {
    /// From now on, replayed answers come `after` their request.
    pub fn start(&self, after: Duration) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(after);
    }
}

/// Starts a proxy to `upstream` on 127.0.0.1 on the current runtime; returns its URL.
pub async fn start(upstream: String, exchange: Exchange) -> String {
    serve(Proxy {
        upstream,
        client: reqwest::Client::new(),
        exchange,
        replaying: Arc::default(),
        answers: None,
    })
    .await
}

/// [`start`], with the switch to replaying.
pub async fn start_replayable(upstream: String) -> (String, Replay) {
    let proxy = Proxy {
        upstream,
        client: reqwest::Client::new(),
        exchange: Arc::new(|_, _, _| ()),
        replaying: Arc::default(),
        answers: Some(Arc::default()),
    };
    let replay = Replay(proxy.replaying.clone());
    (serve(proxy).await, replay)
}

async fn serve(proxy: Proxy) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1");
    let addr = listener.local_addr().expect("addr");
    let app = Router::new().fallback(forward).with_state(proxy);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

/// Headers that describe one connection, not the message: never forwarded.
fn hop_by_hop(name: &HeaderName) -> bool {
    [CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE].contains(name)
        || name == "keep-alive"
        || name == "proxy-connection"
}

async fn forward(State(proxy): State<Proxy>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body: Bytes = axum::body::to_bytes(body, 16 << 20)
        .await
        .unwrap_or_default();
    let target = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let key = (target, body.clone());
    let replaying = *proxy
        .replaying
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let kept = match (&proxy.answers, replaying) {
        (Some(answers), Some(after)) => answers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
            .cloned()
            .map(|answer| (answer, after)),
        _ => None,
    };
    let answer = match kept {
        Some((answer, after)) => {
            tokio::time::sleep(after).await;
            answer
        }
        None => {
            let Some(answer) = ask(&proxy, parts, &body).await else {
                return http::StatusCode::BAD_GATEWAY.into_response();
            };
            if let Some(answers) = &proxy.answers {
                answers
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(key.clone(), answer.clone());
            }
            answer
        }
    };
    (proxy.exchange)(&key.0, &body, &answer.body);
    let mut response = (answer.status, answer.body).into_response();
    for (name, value) in &answer.headers {
        if name != CONTENT_LENGTH && !hop_by_hop(name) {
            response.headers_mut().insert(name, value.clone());
        }
    }
    response
}

/// Moto's answer to the request; none when moto could not be reached.
async fn ask(proxy: &Proxy, parts: http::request::Parts, body: &Bytes) -> Option<Answer> {
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let mut upstream = proxy
        .client
        .request(parts.method, format!("{}{path}", proxy.upstream))
        .body(body.clone());
    for (name, value) in &parts.headers {
        if name != HOST && name != CONTENT_LENGTH && !hop_by_hop(name) {
            upstream = upstream.header(name, value);
        }
    }
    let answer = upstream.send().await.ok()?;
    let status = answer.status();
    let headers = answer.headers().clone();
    let body = answer.bytes().await.unwrap_or_default();
    Some(Answer {
        status,
        headers,
        body,
    })
}
