//! The delivery HTTP client: one shared reqwest client (rustls, HTTP/1.1 and 2, keep-alive)
//! that never follows redirects, resolves names itself and drops every address
//! [`is_public_ip`] refuses before connecting, checks IP-literal hosts the same way, and
//! bounds time and the bytes it reads from a receiver.

use crate::callback::{UrlPolicy, check_url};
use crate::netguard::is_public_ip;
use crate::retry::parse_retry_after;
use bytes::Bytes;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// The most response-body bytes read from a receiver (the rest is discarded unread).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Settings of the delivery client.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Total time for one attempt: connect, send, and the status line (the ack deadline).
    pub timeout: Duration,
    /// Which URLs and addresses may be reached.
    pub url_policy: UrlPolicy,
    /// Fixed name-to-address entries consulted before DNS, like /etc/hosts. The address
    /// policy applies to them too (tests use this to point a name at 127.0.0.1).
    pub hosts: HashMap<String, Vec<IpAddr>>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            url_policy: UrlPolicy::default(),
            hosts: HashMap::new(),
        }
    }
}

/// What one delivery attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptOutcome {
    /// The receiver's status code, if it answered.
    pub status: Option<u16>,
    /// The receiver's `Retry-After`, if any.
    pub retry_after: Option<Duration>,
    /// Time from sending to the response (or the failure).
    pub latency: Duration,
    /// Why there is no status: refused by policy, timeout, connection error.
    pub error: Option<String>,
}

/// Resolves names and keeps only the addresses the policy allows, so the connector can
/// only ever connect to checked addresses (no DNS-rebinding gap between check and use).
struct GuardedResolver {
    allow_private: bool,
    hosts: HashMap<String, Vec<IpAddr>>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
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
                return Err(format!("{host} has no public address").into());
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// The client every delivery goes through. Cheap to clone (shares one connection pool).
#[derive(Clone)]
pub struct CallbackClient {
    client: reqwest::Client,
    policy: UrlPolicy,
}

impl CallbackClient {
    /// Builds the client once (per process).
    pub fn new(settings: &HttpSettings) -> Self {
        let resolver = GuardedResolver {
            allow_private: settings.url_policy.allow_insecure,
            hosts: settings.hosts.clone(),
        };
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(resolver))
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(concat!("person-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the TLS backend initialises");
        Self {
            client,
            policy: settings.url_policy,
        }
    }

    /// POSTs `body` with `headers` to `url` once and reports what happened.
    pub async fn post(
        &self,
        url: &url::Url,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> AttemptOutcome {
        let started = Instant::now();
        let failed = |error: String| AttemptOutcome {
            status: None,
            retry_after: None,
            latency: started.elapsed(),
            error: Some(error),
        };
        if let Err(e) = check_url(url, self.policy) {
            return failed(format!("refused: {e}"));
        }
        let mut request = self.client.post(url.clone()).body(body);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let mut response = match request.send().await {
            Ok(r) => r,
            Err(e) => return failed(describe(&e)),
        };
        let latency = started.elapsed();
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        // Read a bounded amount so a keep-alive connection can be reused; a receiver that
        // streams more (or stalls) is cut off by the cap or the total timeout.
        let mut read = 0;
        while read < MAX_RESPONSE_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => read += chunk.len(),
                _ => break,
            }
        }
        AttemptOutcome {
            status: Some(status),
            retry_after,
            latency,
            error: None,
        }
    }
}

fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connection error"
    } else {
        "request error"
    };
    let mut text = format!("{kind}: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}
