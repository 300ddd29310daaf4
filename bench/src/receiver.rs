//! A webhook receiver on 127.0.0.1 for the load figures: answers 204 to every POST, after
//! a fixed delay, and only counts requests (no recording, so it stays cheap). It runs on
//! its own runtime and thread so the code under test does not share a scheduler with it.

use axum::Router;
use axum::extract::State;
use http::StatusCode;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

struct Shared {
    delay: Duration,
    hits: AtomicUsize,
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
}

/// A running receiver; stops when dropped.
pub struct Receiver {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

async fn answer(State(shared): State<Arc<Shared>>, body: axum::body::Bytes) -> StatusCode {
    let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    shared.peak_in_flight.fetch_max(now, Ordering::SeqCst);
    if !shared.delay.is_zero() {
        tokio::time::sleep(shared.delay).await;
    }
    drop(body);
    shared.hits.fetch_add(1, Ordering::SeqCst);
    shared.in_flight.fetch_sub(1, Ordering::SeqCst);
    StatusCode::NO_CONTENT
}

impl Receiver {
    /// Starts a receiver that answers every request after `delay`, on `threads` workers.
    pub fn start(delay: Duration, threads: usize) -> Self {
        let shared = Arc::new(Shared {
            delay,
            hits: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            peak_in_flight: AtomicUsize::new(0),
        });
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let state = shared.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads.max(1))
                .enable_all()
                .build()
                .expect("receiver runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind 127.0.0.1");
                addr_tx
                    .send(listener.local_addr().expect("local addr"))
                    .expect("report addr");
                let app = Router::new().fallback(answer).with_state(state);
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await;
            });
            // Connections still open are dropped with the runtime.
            runtime.shutdown_timeout(Duration::from_millis(100));
        });
        let addr = addr_rx.recv().expect("receiver started");
        Self {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The URL of `path` on this receiver.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Requests answered so far.
    pub fn hits(&self) -> usize {
        self.shared.hits.load(Ordering::SeqCst)
    }

    /// The most requests it held at once, then resets that figure.
    pub fn take_peak_in_flight(&self) -> usize {
        self.shared.peak_in_flight.swap(0, Ordering::SeqCst)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
