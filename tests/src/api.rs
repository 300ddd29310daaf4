//! The HTTP API handler over in-memory adapters, with the seed's client, a token, the
//! seed's record and two applications, for tests that call it directly; and
//! [`LocalApi`], a client of a running local runner's HTTP API.

use std::sync::Arc;
use std::time::Duration;
use webhooks::application::Application;
use webhooks::clock::Clock;
use webhooks::handlers::{ApiSettings, Registration};
use webhooks::http_client::{CallbackClient, HttpSettings};
use webhooks::lambda_http::{Body, Request};
use webhooks::memory::{MemoryQueue, MemoryRecords, MemoryStore};
use webhooks::oauth::{IssuedToken, OAuthClient};
use webhooks::ports::{ApplicationStore, ClientStore, TokenStore};
use webhooks::record::RecordId;
use webhooks::testing::ManualClock;

/// The seed's record.
pub const RECORD: &str = "0000-0002-7465-2162";

/// A registration handler and what it stores.
pub struct TestApi {
    pub registration: Registration,
    pub store: Arc<MemoryStore>,
    /// Time (starts now, moves when told).
    pub clock: Arc<ManualClock>,
}

/// Tokens issued at setup.
pub struct Tokens {
    /// APP-1's `/webhook` token.
    pub app1: String,
    /// APP-2's `/webhook` token.
    pub app2: String,
    /// APP-1's token with another scope.
    pub wrong_scope: String,
    /// APP-1's token that expires 60 s after setup.
    pub short_lived: String,
}

impl TestApi {
    /// Clients APP-1 and APP-2 (secrets `secret-1`, `secret-2`), applications app-1 and
    /// app-2 (keys `key-1`, `key-2`), and the seed's record.
    pub async fn new() -> (Self, Tokens) {
        let store = Arc::new(MemoryStore::default());
        let records = Arc::new(MemoryRecords::default());
        let clock = Arc::new(ManualClock::new(time::OffsetDateTime::now_utc()));
        records.put_person(&RecordId::parse(RECORD).unwrap(), Default::default());
        let now = clock.now();
        for (id, secret) in [("APP-1", "secret-1"), ("APP-2", "secret-2")] {
            let mut client = OAuthClient::new(&id.parse().unwrap(), secret, now);
            client.scopes.push("/read-limited".into());
            store.put_client(&client).await.unwrap();
        }
        for (id, key) in [("app-1", "key-1"), ("app-2", "key-2")] {
            store
                .put_application(&Application::new(&id.parse().unwrap(), key, now))
                .await
                .unwrap();
        }
        let issue = |client: &str, scope: &str, lifetime: i64| {
            IssuedToken::new(&client.parse().unwrap(), scope, now, lifetime)
        };
        let issued = [
            issue("APP-1", "/webhook", 3600),
            issue("APP-2", "/webhook", 3600),
            issue("APP-1", "/read-limited", 3600),
            issue("APP-1", "/webhook", 60),
        ];
        for token in &issued {
            store.put_token(&token.stored).await.unwrap();
        }
        let [app1, app2, wrong_scope, short_lived] = issued.map(|t| t.access_token);
        let registration = Registration {
            ports: webhooks::ports::Ports::over(
                store.clone(),
                records,
                Arc::new(MemoryQueue::new(Duration::from_secs(30), 3)),
                Arc::new(webhooks::memory::LoggedEvents::default()),
                clock.clone(),
            ),
            http: CallbackClient::new(&HttpSettings::default()),
            settings: ApiSettings::default(),
        };
        (
            Self {
                registration,
                store,
                clock,
            },
            Tokens {
                app1,
                app2,
                wrong_scope,
                short_lived,
            },
        )
    }

    /// Calls the handler; returns the status, the `error` code (if any) and the body.
    pub async fn call(&self, request: Request) -> (u16, String, String) {
        let response = self.registration.handle(request).await;
        let body = match response.body() {
            Body::Text(t) => t.clone(),
            Body::Binary(b) => String::from_utf8_lossy(b).into_owned(),
            _ => String::new(),
        };
        let code = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_default();
        (response.status().as_u16(), code, body)
    }
}

/// A request to the API.
pub fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Request {
    let mut builder = http::Request::builder()
        .method(method)
        .uri(format!("https://api.example.org{path}"));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Body::Text(body.to_owned())).unwrap()
}

/// `encodeURIComponent`.
pub fn encode_component(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z'
            | b'a'..=b'z'
            | b'0'..=b'9'
            | b'-'
            | b'_'
            | b'.'
            | b'!'
            | b'~'
            | b'*'
            | b'\''
            | b'('
            | b')' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A client of a local runner's HTTP API (at `http://{addr}`) as one OAuth client: a
/// token, the seed's record's webhooks, its changes, the flush and the status.
pub struct LocalApi {
    /// For the requests a test makes itself.
    pub http: reqwest::Client,
    /// `http://{addr}`.
    pub base: String,
    client: (String, String),
}

impl LocalApi {
    /// The API at `addr`, as the client `client_id` with `secret`.
    pub fn new(addr: std::net::SocketAddr, client_id: &str, secret: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: format!("http://{addr}"),
            client: (client_id.to_owned(), secret.to_owned()),
        }
    }

    /// The API at `addr` as no OAuth client (for applications' calls and the records).
    pub fn anonymous(addr: std::net::SocketAddr) -> Self {
        Self::new(addr, "", "")
    }

    /// The token endpoint's answer (200, asserted) to a client-credentials grant.
    pub async fn token_response(&self) -> serde_json::Value {
        let (id, secret) = &self.client;
        let body = format!(
            "client_id={id}&client_secret={secret}&scope=/webhook&grant_type=client_credentials"
        );
        let response = self
            .http
            .post(format!("{}/oauth/token", self.base))
            .header("accept", "application/json")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    /// A `/webhook` access token.
    pub async fn token(&self) -> String {
        let token = self.token_response().await;
        token["access_token"].as_str().unwrap().to_owned()
    }

    /// The webhook URL of the seed's record for `callback`.
    pub fn webhook_url(&self, callback: &str) -> String {
        format!(
            "{}/{RECORD}/webhook/{}",
            self.base,
            encode_component(callback)
        )
    }

    /// Calls the seed's record's webhook URL for `callback` with `method`.
    pub async fn webhook(
        &self,
        method: reqwest::Method,
        token: &str,
        callback: &str,
    ) -> reqwest::Response {
        self.http
            .request(method, self.webhook_url(callback))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// Registers `callback` for the seed's record; the status.
    pub async fn register(&self, token: &str, callback: &str) -> u16 {
        self.webhook(reqwest::Method::PUT, token, callback)
            .await
            .status()
            .as_u16()
    }

    /// Changes the seed's record (a success, asserted); the runner's answer.
    pub async fn change(&self, person: serde_json::Value) -> serde_json::Value {
        self.put_person(RECORD, person).await
    }

    /// Puts the person `record` in the runner's records (a success, asserted); the
    /// runner's answer.
    pub async fn put_person(&self, record: &str, person: serde_json::Value) -> serde_json::Value {
        let request = self
            .http
            .put(format!("{}/local/records/{record}", self.base))
            .json(&person);
        let (status, answer) = answer(request).await;
        assert!((200..300).contains(&status), "{status}: {answer}");
        answer
    }

    /// Flushes now (200, asserted); the flush's report.
    pub async fn flush(&self) -> serde_json::Value {
        let (status, report) = answer(self.http.post(format!("{}/local/flush", self.base))).await;
        assert_eq!(status, 200, "{report}");
        report
    }

    /// The runner's status.
    pub async fn status(&self) -> serde_json::Value {
        answer(self.http.get(format!("{}/local/status", self.base)))
            .await
            .1
    }

    /// POSTs to one of the runner's commands (`/local/dlq/replay`, ...); its JSON answer.
    pub async fn post(&self, path: &str) -> serde_json::Value {
        answer(self.http.post(format!("{}{path}", self.base)))
            .await
            .1
    }

    /// Calls an application's API at `path` with its API `key` (and a JSON `body`); the
    /// status and the JSON answer (null when there is none).
    pub async fn application_call(
        &self,
        method: reqwest::Method,
        path: &str,
        key: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("x-access-token", key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        answer(request).await
    }
}

/// Sends `request`: the status and the JSON answer (null when there is none).
async fn answer(request: reqwest::RequestBuilder) -> (u16, serde_json::Value) {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (
        status,
        response.json().await.unwrap_or(serde_json::Value::Null),
    )
}
