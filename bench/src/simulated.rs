//! Simulated time for the cost figure: the handlers run on a paused clock, so the time an
//! invocation spends waiting is what a stated latency model says, not what moto or this
//! machine's load happen to take.
//!
//! Every AWS call goes through [`Relay`], an HTTP connector for the AWS SDK that forwards
//! the request to moto (through the counting proxy) on another runtime while the
//! simulation's thread is blocked, so no simulated time passes while moto works; then it
//! waits the call's modelled latency on the paused clock. Concurrent calls therefore
//! overlap in simulated time exactly as the handler issues them, and a handler's simulated
//! duration is its critical path of modelled waits. The webhook receiver runs on the same
//! paused clock ([`SimulatedReceiver`]). What the handler computes takes no simulated time;
//! it is measured apart as the thread's CPU time ([`thread_cpu`]).

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_smithy_runtime_api::client::http::{
    HttpConnector, HttpConnectorFuture, SharedHttpConnector, http_client_fn,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_types::body::SdkBody;
use axum::Router;
use http::StatusCode;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How long each AWS call takes, seen from a Lambda function in the same region (see
/// docs/benchmarks.md, "Latency model", for the published figures behind them).
#[derive(Debug, Clone, Copy)]
pub struct LatencyModel {
    /// Any DynamoDB call (service side single-digit milliseconds, plus the round trip).
    pub dynamodb: Duration,
    /// Any SQS call ("tens or low hundreds of milliseconds" as SQS documents it).
    pub sqs: Duration,
    /// EventBridge `PutEvents`.
    pub eventbridge: Duration,
    /// A webhook receiver's answer (a typical endpoint).
    pub receiver: Duration,
}

impl LatencyModel {
    /// The model the cost figure uses.
    pub const STATED: Self = Self {
        dynamodb: Duration::from_millis(10),
        sqs: Duration::from_millis(20),
        eventbridge: Duration::from_millis(20),
        receiver: Duration::from_millis(100),
    };

    /// The latency of a call, by its `X-Amz-Target` (every service the functions use
    /// speaks the JSON protocols, which name the operation there).
    fn of(&self, target: &str) -> Duration {
        if target.starts_with("AmazonSQS.") {
            self.sqs
        } else if target.starts_with("AWSEvents.") {
            self.eventbridge
        } else {
            self.dynamodb
        }
    }
}

/// The AWS SDK's HTTP connection in the simulation (see the module's doc).
#[derive(Debug, Clone)]
struct Relay {
    /// A runtime on real time that does the forwarding.
    io: tokio::runtime::Handle,
    client: reqwest::Client,
    model: LatencyModel,
}

impl HttpConnector for Relay {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let latency = self
            .model
            .of(request.headers().get("x-amz-target").unwrap_or(""));
        let answer = self.forward(&request);
        HttpConnectorFuture::new(async move {
            tokio::time::sleep(latency).await;
            answer
        })
    }
}

impl Relay {
    /// Sends the request on the real-time runtime and blocks this thread until the answer
    /// is in (the simulation's runtime has this one thread: its clock cannot move).
    fn forward(&self, request: &HttpRequest) -> Result<HttpResponse, ConnectorError> {
        let method = reqwest::Method::from_bytes(request.method().as_bytes())
            .map_err(|e| ConnectorError::other(e.into(), None))?;
        let mut outgoing = self
            .client
            .request(method, request.uri())
            .body(request.body().bytes().unwrap_or_default().to_vec());
        for (name, value) in request.headers().iter() {
            if !name.eq_ignore_ascii_case("host") && !name.eq_ignore_ascii_case("content-length") {
                outgoing = outgoing.header(name, value);
            }
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.io.spawn(async move {
            let answer = async {
                let response = outgoing.send().await?;
                let status = response.status().as_u16();
                let headers = response.headers().clone();
                let body = response.bytes().await?;
                Ok::<_, reqwest::Error>((status, headers, body))
            }
            .await;
            let _ = tx.send(answer);
        });
        let (status, headers, body) = rx
            .recv()
            .map_err(|e| ConnectorError::other(e.into(), None))?
            .map_err(|e| ConnectorError::io(e.into()))?;
        let status = status
            .try_into()
            .map_err(|e: aws_smithy_runtime_api::http::HttpError| {
                ConnectorError::other(e.into(), None)
            })?;
        let mut response = HttpResponse::new(status, SdkBody::from(body));
        for (name, value) in &headers {
            if let Ok(value) = value.to_str() {
                response
                    .headers_mut()
                    .insert(name.as_str().to_owned(), value.to_owned());
            }
        }
        Ok(response)
    }
}

/// An SDK configuration whose calls go to `endpoint` through the relay: use it only on
/// the simulation's paused runtime, with `io` a runtime on real time.
pub async fn sdk_config(endpoint: &str, io: tokio::runtime::Handle) -> SdkConfig {
    let relay = Relay {
        io,
        client: reqwest::Client::new(),
        model: LatencyModel::STATED,
    };
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "testing", "testing", None, None, "moto",
        ))
        .http_client(http_client_fn(move |_, _| {
            SharedHttpConnector::new(relay.clone())
        }))
        // Its throughput checks read the clock, which here is simulated.
        .stalled_stream_protection(
            aws_config::stalled_stream_protection::StalledStreamProtectionConfig::disabled(),
        )
        .load()
        .await
}

/// A webhook receiver on the simulation's paused clock: answers 204 to every request
/// after the model's receiver latency. Start it from the simulation's runtime.
pub struct SimulatedReceiver {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

impl SimulatedReceiver {
    pub async fn start() -> Self {
        let hits = Arc::new(AtomicUsize::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("addr");
        let counter = hits.clone();
        let app = Router::new().fallback(move || {
            let counter = counter.clone();
            async move {
                tokio::time::sleep(LatencyModel::STATED.receiver).await;
                counter.fetch_add(1, Ordering::SeqCst);
                StatusCode::NO_CONTENT
            }
        });
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, hits }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Requests answered so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// The CPU time this thread has used (the simulation's runtime runs on one thread, so
/// the difference around an invocation is what the invocation computed, including the AWS
/// SDK's signing and parsing; waits and moto's own work are not in it).
pub fn thread_cpu() -> Duration {
    cpu_clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// The part of this thread's CPU time spent in the kernel (`getrusage`; Linux splits the
/// thread's exact total between user and kernel by sampling at each clock tick, so this is
/// a fair share over many calls, not an exact figure for one).
pub fn thread_kernel_cpu() -> Duration {
    // SAFETY: an all-zero rusage is a valid value of the plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct it is given, nothing else.
    let status = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    assert_eq!(status, 0, "getrusage(RUSAGE_THREAD) is available on Linux");
    Duration::new(
        usage.ru_stime.tv_sec as u64,
        usage.ru_stime.tv_usec as u32 * 1_000,
    )
}

/// A CPU-time clock of Linux (`CLOCK_THREAD_CPUTIME_ID`, `CLOCK_PROCESS_CPUTIME_ID`).
pub fn cpu_clock(clock: libc::clockid_t) -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec it is given, nothing else.
    let status = unsafe { libc::clock_gettime(clock, &mut now) };
    assert_eq!(status, 0, "the CPU clock {clock} is available on Linux");
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}
