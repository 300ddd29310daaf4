//! Helpers for the end-to-end tests: a real HTTP receiver on 127.0.0.1 that records every
//! request and answers from a script, and the AWS side against moto server.

pub mod api;
pub mod logs;
pub mod moto;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, Method, StatusCode};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// One request a [`Receiver`] got.
#[derive(Debug, Clone)]
pub struct Hit {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When it arrived.
    pub at: Instant,
    /// The status code the receiver answered.
    pub status: u16,
}

#[derive(Default)]
struct Shared {
    hits: Mutex<Vec<Hit>>,
    script: Mutex<VecDeque<u16>>,
    arrived: Notify,
}

/// A webhook receiver: answers the scripted status codes in order, then 204.
pub struct Receiver {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Starts a receiver on a free 127.0.0.1 port.
    pub async fn start() -> Self {
        let shared = Arc::new(Shared::default());
        let app = Router::new().fallback(record).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("receiver serves");
        });
        Self {
            addr,
            shared,
            server,
        }
    }

    /// The URL of `path` on this receiver.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answers these status codes to the next requests, in order, instead of whatever
    /// was left of an earlier script (an empty script: 204 from now on).
    pub fn script(&self, statuses: &[u16]) {
        *self.shared.script.lock().unwrap() = statuses.iter().copied().collect();
    }

    /// Every request so far.
    pub fn hits(&self) -> Vec<Hit> {
        self.shared.hits.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests arrived (or `timeout`), and returns them all.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Hit> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.shared.arrived.notified();
            let hits = self.hits();
            if hits.len() >= n || Instant::now() >= deadline {
                return hits;
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }
}

/// The seed of a randomised test. `var=<n>` replays a run; otherwise `default`, so CI
/// and every other run repeat the same case, unless `RANDOM_SEEDS=1` asks for a fresh
/// seed. Printed either way, with the command that replays it.
pub fn seed(var: &str, default: u64) -> u64 {
    let (seed, how) = match std::env::var(var) {
        Ok(text) => match text.trim().parse() {
            Ok(seed) => (seed, "given"),
            Err(e) => panic!("{var}={text:?} is not a u64 seed: {e}"),
        },
        Err(_) if std::env::var("RANDOM_SEEDS").is_ok_and(|v| v == "1") => {
            (fastrand::u64(..), "drawn: RANDOM_SEEDS=1")
        }
        Err(_) => (default, "the default"),
    };
    println!("seed {seed} ({how}); {var}={seed} replays it");
    seed
}

/// Polls `check` until it holds or `timeout` passes; true when it held. For conditions
/// nothing announces (a queue drained, a state stored): the test then asserts on what it
/// waited for, never on "long enough".
pub async fn wait_until(timeout: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn record(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let status = shared.script.lock().unwrap().pop_front().unwrap_or(204);
    shared.hits.lock().unwrap().push(Hit {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        headers: parts.headers,
        body,
        at: Instant::now(),
        status,
    });
    shared.arrived.notify_waiters();
    StatusCode::from_u16(status).unwrap().into_response()
}
