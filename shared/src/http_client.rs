//! The delivery HTTP client: one shared hyper client per process (rustls, HTTP/1.1 and 2,
//! keep-alive) that never follows redirects, resolves names itself and drops every address
//! [`is_public_ip`] refuses before connecting, checks IP-literal hosts the same way, sees
//! `102 Processing` interim responses (which acknowledge Members-style deliveries), and
//! bounds time and the bytes it reads from a receiver.

use crate::ack::AckPolicy;
use crate::callback::{CallbackUrl, UrlPolicy, check_url};
use crate::clock::{Clock, SystemClock};
use crate::netguard::is_public_ip;
use crate::retry::parse_retry_after;
use bytes::Bytes;
use futures::task::AtomicWaker;
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioExecutor;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

/// The most response-body bytes an attempt keeps (what the attempt log shows, as GitHub
/// and Svix do).
pub const RESPONSE_PREFIX_BYTES: usize = 1024;

/// The most response-body bytes read from a receiver (the rest is discarded unread).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Headers a request carries besides the caller's: `User-Agent` (ours), `Host` and
/// `Content-Length` (hyper's).
const HEADERS_ADDED: usize = 3;

/// Settings of the delivery client.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Total time for one attempt: connect, send, and the response (the ack deadline).
    pub timeout: Duration,
    /// Which URLs and addresses may be reached.
    pub url_policy: UrlPolicy,
    /// Fixed name-to-address entries consulted before DNS, like /etc/hosts. The address
    /// policy applies to them too (tests use this to point a name at 127.0.0.1).
    pub hosts: HashMap<String, Vec<IpAddr>>,
    /// Certificates (DER) trusted beside the system roots: a private CA in front of
    /// receivers, or a test's own.
    pub extra_roots: Vec<Vec<u8>>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            url_policy: UrlPolicy::default(),
            hosts: HashMap::new(),
            extra_roots: Vec::new(),
        }
    }
}

/// What one delivery attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptOutcome {
    /// The receiver's status code (`102` when it answered `102 Processing`), if it answered.
    pub status: Option<u16>,
    /// The receiver's `Retry-After`, if any.
    pub retry_after: Option<Duration>,
    /// Time from sending to the response (or the failure).
    pub latency: Duration,
    /// Why there is no status: refused by policy, timeout, connection or request error
    /// (never [`AttemptFailure::HttpStatus`]: an answer's status is `status`).
    pub error: Option<AttemptFailure>,
    /// The first [`RESPONSE_PREFIX_BYTES`] of the response body (what
    /// the attempt log keeps); empty without an answer.
    pub body_prefix: Bytes,
}

/// Why an attempt did not acknowledge: the one account of a failed attempt that the
/// attempt log ([`crate::attempts::OutcomeClass`]), the metrics and the endpoint's health read. Its text
/// is what they show (`HTTP 503`, `timeout: no response within 10s`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptFailure {
    /// The receiver answered with a status that does not acknowledge.
    HttpStatus(u16),
    /// No answer within the delivery timeout.
    Timeout(Duration),
    /// No connection: the error and its causes.
    Connection(String),
    /// The request could not be made, or the exchange broke after connecting.
    Request(String),
    /// The URL or its addresses are not allowed by the URL policy: nothing was sent.
    RefusedByUrlPolicy(String),
}

impl std::fmt::Display for AttemptFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::HttpStatus(status) => write!(f, "HTTP {status}"),
            Self::Timeout(after) => write!(f, "timeout: no response within {after:?}"),
            Self::Connection(detail) => write!(f, "connection error: {detail}"),
            Self::Request(detail) => write!(f, "request error: {detail}"),
            Self::RefusedByUrlPolicy(detail) => write!(f, "refused: {detail}"),
        }
    }
}

impl AttemptOutcome {
    /// Why the attempt did not acknowledge, given whether its answer acknowledged (which
    /// depends on the delivery style's [`crate::ack::AckPolicy`]); `None` when it did.
    pub fn failure(&self, acknowledged: bool) -> Option<AttemptFailure> {
        if acknowledged {
            return None;
        }
        Some(match (self.status, &self.error) {
            (Some(status), _) => AttemptFailure::HttpStatus(status),
            (None, Some(error)) => error.clone(),
            (None, None) => AttemptFailure::Request("no answer and no error".into()),
        })
    }
}

/// The resolver's refusal: no address of the name is one a callback may reach, so nothing
/// was sent. Typed, so [`describe`] can tell it from a failed connection.
#[derive(Debug)]
struct NoPublicAddress(String);

impl std::fmt::Display for NoPublicAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} has no public address", self.0)
    }
}

impl std::error::Error for NoPublicAddress {}

/// Resolves names and keeps only the addresses the policy allows, so the connector can
/// only ever connect to checked addresses (no DNS-rebinding gap between check and use).
#[derive(Clone)]
struct GuardedResolver {
    allow_private: bool,
    hosts: Arc<HashMap<String, Vec<IpAddr>>>,
}

type Resolving =
    Pin<Box<dyn Future<Output = std::io::Result<std::vec::IntoIter<SocketAddr>>> + Send>>;

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Resolving;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let host = name.as_str().trim_end_matches('.').to_ascii_lowercase();
        let fixed = self.hosts.get(&host).cloned();
        let allow_private = self.allow_private;
        Box::pin(async move {
            let candidates: Vec<SocketAddr> = match fixed {
                Some(ips) => ips.into_iter().map(|ip| SocketAddr::new(ip, 0)).collect(),
                None => tokio::net::lookup_host((host.as_str(), 0)).await?.collect(),
            };
            let allowed: Vec<SocketAddr> = candidates
                .into_iter()
                .filter(|a| allow_private || is_public_ip(a.ip()))
                .collect();
            if allowed.is_empty() {
                return Err(std::io::Error::other(NoPublicAddress(host)));
            }
            Ok(allowed.into_iter())
        })
    }
}

type Connector = hyper_rustls::HttpsConnector<HttpConnector<GuardedResolver>>;

/// The client every delivery goes through. Cheap to clone (shares one connection pool).
#[derive(Clone)]
pub struct CallbackClient {
    /// Built on the first request, not with the client: loading the system certificate
    /// store was half of a function's start-up (docs/benchmarks.md), and most invocations
    /// of the HTTP API never reach a receiver.
    client: Arc<OnceCell<Client<Connector, Full<Bytes>>>>,
    /// What the client is built from.
    settings: Arc<HttpSettings>,
    policy: UrlPolicy,
    timeout: Duration,
    /// Reads a `Retry-After` date against it.
    clock: Arc<dyn Clock>,
}

fn tls_config(extra_roots: &[Vec<u8>]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for der in extra_roots {
        if let Err(e) = roots.add(rustls::pki_types::CertificateDer::from(der.clone())) {
            tracing::error!(error = %e, "an extra root certificate was refused");
        }
    }
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::warn!(%error, "could not load a system root certificate");
    }
    let (added, _) = roots.add_parsable_certificates(native.certs);
    if added == 0 {
        tracing::error!("no system root certificates: https deliveries will fail");
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("the default protocol versions are supported")
    .with_root_certificates(roots)
    .with_no_client_auth()
}

/// The hyper client over the guarded resolver and rustls with the system roots (read here).
fn build_client(settings: &HttpSettings) -> Client<Connector, Full<Bytes>> {
    let resolver = GuardedResolver {
        allow_private: settings.url_policy.allow_insecure,
        hosts: Arc::new(settings.hosts.clone()),
    };
    let mut http = HttpConnector::new_with_resolver(resolver);
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(settings.timeout.min(Duration::from_secs(5))));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config(&settings.extra_roots))
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(https)
}

impl CallbackClient {
    /// The client of a process; its connections and certificate store come with the first
    /// request.
    pub fn new(settings: &HttpSettings) -> Self {
        Self {
            client: Arc::new(OnceCell::new()),
            settings: Arc::new(settings.clone()),
            policy: settings.url_policy,
            timeout: settings.timeout,
            clock: Arc::new(SystemClock),
        }
    }

    /// This client reading `Retry-After` dates against `clock`.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The hyper client, built by the first caller.
    async fn client(&self) -> &Client<Connector, Full<Bytes>> {
        self.client
            .get_or_init(|| async { build_client(&self.settings) })
            .await
    }

    /// The ack deadline of one attempt.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// POSTs `body` with `headers` to `url` once and reports what happened. The URL was
    /// checked when it was set; it is checked again here, against this client's policy.
    /// Where `ack` takes `102 Processing` as an acknowledgement, that interim answer ends
    /// the attempt; otherwise the final answer is awaited, as after any interim answer.
    pub async fn post(
        &self,
        url: &CallbackUrl,
        headers: Vec<(HeaderName, String)>,
        body: Bytes,
        ack: AckPolicy,
    ) -> AttemptOutcome {
        // The first request builds the client (reading the certificate store), outside the
        // attempt's latency and timeout.
        let client = self.client().await;
        let started = Instant::now();
        let failed = |error: AttemptFailure| AttemptOutcome {
            status: None,
            retry_after: None,
            latency: started.elapsed(),
            error: Some(error),
            body_prefix: Bytes::new(),
        };
        if let Err(e) = url.url().and_then(|parsed| check_url(parsed, self.policy)) {
            return failed(AttemptFailure::RefusedByUrlPolicy(e.to_string()));
        }
        let uri = match url.uri() {
            Ok(uri) => uri,
            Err(e) => return failed(AttemptFailure::Request(e.to_string())),
        };
        let mut request = match post_request(uri, headers, body) {
            Ok(request) => request,
            Err(e) => return failed(AttemptFailure::Request(e.to_string())),
        };
        let processing = ack
            .acknowledges(PROCESSING)
            .then(|| on_processing(&mut request));
        let answer = async {
            match tokio::time::timeout(self.timeout, self.exchange(client, request, started)).await
            {
                Ok(Ok(answer)) => answer,
                Ok(Err(e)) => failed(describe(&e)),
                Err(_) => failed(AttemptFailure::Timeout(self.timeout)),
            }
        };
        match processing {
            Some(processing) => processing.or_final(answer, started).await,
            None => answer.await,
        }
    }

    /// Sends `request` and reads the answer (its latency counted from `started`).
    async fn exchange(
        &self,
        client: &Client<Connector, Full<Bytes>>,
        request: http::Request<Full<Bytes>>,
        started: Instant,
    ) -> Result<AttemptOutcome, hyper_util::client::legacy::Error> {
        let response = client.request(request).await?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, self.clock.now()));
        let latency = started.elapsed();
        Ok(AttemptOutcome {
            status: Some(status),
            retry_after,
            latency,
            error: None,
            body_prefix: read_prefix(response.into_body()).await,
        })
    }
}

/// The POST request, with the client's `User-Agent` and `headers`. Its header map is
/// sized once for them and for the `Host` and `Content-Length` that hyper adds: a map that
/// grows is reallocated, and when hyper's connection task adds a header the old map is
/// freed on another thread than the one that allocated it (a profile showed the growth
/// costing more than a microsecond per Members-style request).
fn post_request(
    uri: http::Uri,
    headers: Vec<(HeaderName, String)>,
    body: Bytes,
) -> Result<http::Request<Full<Bytes>>, http::Error> {
    let mut map = HeaderMap::with_capacity(headers.len() + HEADERS_ADDED);
    map.insert(
        http::header::USER_AGENT,
        HeaderValue::from_static(USER_AGENT),
    );
    for (name, value) in headers {
        // The value's bytes become the header's (checked, not copied).
        map.append(name, HeaderValue::from_maybe_shared(Bytes::from(value))?);
    }
    let mut request = http::Request::new(Full::new(body));
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = uri;
    *request.headers_mut() = map;
    Ok(request)
}

/// The `User-Agent` of every delivery.
pub const USER_AGENT: &str = concat!("person-webhooks/", env!("CARGO_PKG_VERSION"));

/// The status of the interim answer `102 Processing`.
const PROCESSING: u16 = 102;

/// Told when the receiver answers `102 Processing`. Where that interim answer acknowledges
/// (Members style), it ends the attempt at once; without this hook the client would wait
/// for a final answer that may never come. (Elsewhere no hook is set: it costs a request
/// extension and a waker, and the final answer is the one that counts.)
#[derive(Default)]
struct Processing {
    /// Set before `waker` is woken, and so before any final answer after it is read.
    seen: AtomicBool,
    /// The attempt waiting for an answer. (A `tokio::sync::Notify` took a lock to wait
    /// and another to stop: docs/benchmarks.md, figure 2, thirteenth pass.)
    waker: AtomicWaker,
}

impl Processing {
    /// `102 Processing` if the receiver answers it, else the final `answer` (the attempt
    /// having started at `started`).
    async fn or_final(
        &self,
        answer: impl Future<Output = AttemptOutcome>,
        started: Instant,
    ) -> AttemptOutcome {
        let interim = || AttemptOutcome {
            status: Some(PROCESSING),
            retry_after: None,
            latency: started.elapsed(),
            error: None,
            body_prefix: Bytes::new(),
        };
        let mut answer = std::pin::pin!(answer);
        std::future::poll_fn(|cx| {
            self.waker.register(cx.waker());
            if self.seen.load(Ordering::Acquire) {
                return Poll::Ready(interim());
            }
            // The connection's task may read the interim and the final answer at once, on
            // another thread, between two polls here: the interim one still came first.
            answer.as_mut().poll(cx).map(|answer| {
                if self.seen.load(Ordering::Acquire) {
                    interim()
                } else {
                    answer
                }
            })
        })
        .await
    }
}

fn on_processing(request: &mut http::Request<Full<Bytes>>) -> Arc<Processing> {
    let processing = Arc::new(Processing::default());
    let signal = processing.clone();
    hyper::ext::on_informational(request, move |response| {
        if response.status() == http::StatusCode::PROCESSING {
            signal.seen.store(true, Ordering::Release);
            signal.waker.wake();
        }
    });
    processing
}

/// The first [`RESPONSE_PREFIX_BYTES`] of a response body. Reads a bounded amount so a
/// keep-alive connection can be reused; a receiver that streams more is cut off by the
/// cap, one that stalls by the timeout.
async fn read_prefix(mut body: hyper::body::Incoming) -> Bytes {
    let mut read = 0;
    let mut prefix = Vec::new();
    while read < MAX_RESPONSE_BYTES {
        match body.frame().await {
            Some(Ok(frame)) => {
                let data = frame.data_ref().map_or(&[][..], |d| &d[..]);
                let room = RESPONSE_PREFIX_BYTES.saturating_sub(prefix.len());
                prefix.extend_from_slice(&data[..data.len().min(room)]);
                read += data.len();
            }
            _ => break,
        }
    }
    Bytes::from(prefix)
}

/// A failed exchange as the attempt's failure: the error and its causes, classed by
/// what failed.
fn describe(e: &hyper_util::client::legacy::Error) -> AttemptFailure {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    if refused_by_resolver(e) {
        AttemptFailure::RefusedByUrlPolicy(text)
    } else if e.is_connect() {
        AttemptFailure::Connection(text)
    } else {
        AttemptFailure::Request(text)
    }
}

/// Whether the connection failed because the resolver refused every address of the name
/// ([`NoPublicAddress`], wrapped in the `io::Error` the connector returns).
fn refused_by_resolver(e: &hyper_util::client::legacy::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let io = s.downcast_ref::<std::io::Error>();
        if io
            .and_then(|io| io.get_ref())
            .is_some_and(|inner| inner.is::<NoPublicAddress>())
        {
            return true;
        }
        source = s.source();
    }
    false
}
