//! The HTTP API handler over in-memory adapters, with the seed's client, a token, the
//! seed's record and two applications, for tests that call it directly.

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
                .put_application(&Application::new(
                    &id.parse().unwrap(),
                    key,
                    now.epoch_secs(),
                ))
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
