//! Every status code of the HTTP API's table, on the in-memory adapters.

use super::*;
use crate::clock::Clock;
use crate::http_client::{CallbackClient, HttpSettings};
use crate::memory::{MemoryQueue, MemoryRecords, MemoryStore};
use crate::oauth::OAuthClient;
use crate::ports::{ClientStore, SubscriptionStore};
use crate::record::RecordId;
use crate::testing::ManualClock;
use serde_json::Value;
use std::sync::Arc;
use time::macros::datetime;

const RECORD: &str = "0000-0002-7465-2162";
const SEED_CALLBACK: &str = "https%3A%2F%2Fnowhere2.com%2F0000-0002-7465-2162%2Fupdated";
const HOST: &str = "https://api.example.org";

struct Api {
    registration: Registration,
    store: Arc<MemoryStore>,
    clock: Arc<ManualClock>,
}

async fn api() -> Api {
    let store = Arc::new(MemoryStore::default());
    let records = Arc::new(MemoryRecords::default());
    let clock = Arc::new(ManualClock::new(datetime!(2026-11-25 12:00 UTC)));
    records.put_person(&RecordId::parse(RECORD).unwrap(), Default::default());
    for (id, secret) in [("APP-1", "secret-1"), ("APP-2", "secret-2")] {
        store
            .put_client(&OAuthClient::new(&id.parse().unwrap(), secret, clock.now()))
            .await
            .unwrap();
    }
    let mut reader = OAuthClient::new(&"APP-READ".parse().unwrap(), "secret-r", clock.now());
    reader.scopes = vec!["/read-limited".into()];
    store.put_client(&reader).await.unwrap();
    Api {
        registration: Registration {
            ports: crate::ports::Ports::over(
                store.clone(),
                records,
                Arc::new(MemoryQueue::new(std::time::Duration::from_secs(30), 3)),
                Arc::new(crate::memory::LoggedEvents::default()),
                clock.clone(),
            ),
            http: CallbackClient::new(&HttpSettings::default()),
            settings: ApiSettings::default(),
        },
        store,
        clock,
    }
}

fn request(method: &str, path: &str, token: Option<&str>, body: &str) -> Request {
    let mut builder = http::Request::builder()
        .method(method)
        .uri(format!("{HOST}{path}"));
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    builder
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::Text(body.into()))
        .unwrap()
}

async fn call(api: &Api, req: Request) -> (u16, HeaderMap, Value) {
    let response = api.registration.handle(req).await;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = match response.body() {
        Body::Text(t) => serde_json::from_str(t).unwrap(),
        Body::Empty => Value::Null,
        Body::Binary(b) => serde_json::from_slice(b).unwrap(),
        _ => Value::Null,
    };
    (status, headers, body)
}

fn token_body(client: &str, secret: &str, scope: &str) -> String {
    format!("client_id={client}&client_secret={secret}&scope={scope}&grant_type=client_credentials")
}

async fn token(api: &Api, client: &str, secret: &str) -> String {
    let (status, _, body) = call(
        api,
        request(
            "POST",
            "/oauth/token",
            None,
            &token_body(client, secret, "/webhook"),
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().unwrap().to_owned()
}

fn webhook_path(callback: &str) -> String {
    format!("/{RECORD}/webhook/{callback}")
}

#[tokio::test]
async fn token_200_has_the_seed_fields_and_stores_only_hashes() {
    let api = api().await;
    let (status, headers, body) = call(
        &api,
        request(
            "POST",
            "/oauth/token",
            None,
            &token_body("APP-1", "secret-1", "/webhook"),
        ),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["scope"], "/webhook");
    assert_eq!(body["expires_in"], 3600);
    let access = body["access_token"].as_str().unwrap();
    let refresh = body["refresh_token"].as_str().unwrap();
    let stored = serde_json::to_string(&api.store.stored_tokens()).unwrap();
    assert!(!stored.contains(access) && !stored.contains(refresh));
    assert!(stored.contains(&sha256_hex(access)));
}

#[tokio::test]
async fn token_errors() {
    let api = api().await;
    let cases = [
        (
            "client_id=APP-1&client_secret=secret-1&grant_type=client_credentials",
            400,
            "invalid_request",
        ),
        (
            "client_id=APP-1&scope=/webhook&grant_type=client_credentials",
            400,
            "invalid_request",
        ),
        (
            "client_id=APP-1&client_secret=secret-1&scope=/webhook",
            400,
            "invalid_request",
        ),
        (
            "client_id=APP-1&client_secret=secret-1&scope=/webhook&grant_type=authorization_code",
            400,
            "unsupported_grant_type",
        ),
        (
            "client_id=APP-9&client_secret=secret-1&scope=/webhook&grant_type=client_credentials",
            401,
            "invalid_client",
        ),
        (
            "client_id=APP-1&client_secret=wrong&scope=/webhook&grant_type=client_credentials",
            401,
            "invalid_client",
        ),
        (
            "client_id=APP-1&client_secret=secret-1&scope=/read-limited&grant_type=client_credentials",
            401,
            "invalid_scope",
        ),
        (
            "client_id=APP-READ&client_secret=secret-r&scope=/webhook&grant_type=client_credentials",
            401,
            "invalid_scope",
        ),
    ];
    for (body, status, code) in cases {
        let (got, _, json) = call(&api, request("POST", "/oauth/token", None, body)).await;
        assert_eq!(
            (got, json["error"].as_str().unwrap()),
            (status, code),
            "{body}"
        );
        assert!(json["error_description"].as_str().unwrap().len() > 5);
    }
}

#[tokio::test]
async fn register_201_with_location_then_204() {
    let api = api().await;
    let t = token(&api, "APP-1", "secret-1").await;
    let (status, headers, _) = call(
        &api,
        request("PUT", &webhook_path(SEED_CALLBACK), Some(&t), ""),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(
        headers["location"],
        format!("{HOST}/{RECORD}/webhook/{SEED_CALLBACK}")
    );
    let (status, headers, _) = call(
        &api,
        request("PUT", &webhook_path(SEED_CALLBACK), Some(&t), ""),
    )
    .await;
    assert_eq!(status, 204);
    assert!(headers.get("location").is_none());
}

#[tokio::test]
async fn register_accepts_a_path_the_gateway_already_decoded() {
    let api = api().await;
    let t = token(&api, "APP-1", "secret-1").await;
    let decoded = "https://nowhere2.com/0000-0002-7465-2162/updated";
    let (status, headers, _) =
        call(&api, request("PUT", &webhook_path(decoded), Some(&t), "")).await;
    assert_eq!(status, 201);
    assert_eq!(
        headers["location"],
        format!("{HOST}/{RECORD}/webhook/{SEED_CALLBACK}")
    );
    let (status, _, _) = call(
        &api,
        request("PUT", &webhook_path(SEED_CALLBACK), Some(&t), ""),
    )
    .await;
    assert_eq!(status, 204, "both forms name the same webhook");
}

#[tokio::test]
async fn register_errors() {
    let api = api().await;
    let t = token(&api, "APP-1", "secret-1").await;
    let read = {
        let (_, _, body) = call(
            &api,
            request(
                "POST",
                "/oauth/token",
                None,
                &token_body("APP-READ", "secret-r", "/read-limited"),
            ),
        )
        .await;
        body["access_token"].as_str().unwrap().to_owned()
    };
    let seed = webhook_path(SEED_CALLBACK);
    let cases: Vec<(Request, u16, &str)> = vec![
        (request("PUT", &seed, None, ""), 401, "invalid_token"),
        (
            request("PUT", &seed, Some("not-a-token"), ""),
            401,
            "invalid_token",
        ),
        (
            request("PUT", &seed, Some(&read), ""),
            403,
            "insufficient_scope",
        ),
        (
            request(
                "PUT",
                &format!("/0000-0002-7465-2161/webhook/{SEED_CALLBACK}"),
                Some(&t),
                "",
            ),
            400,
            "invalid_record_id",
        ),
        (
            request(
                "PUT",
                &format!("/not-an-orcid/webhook/{SEED_CALLBACK}"),
                Some(&t),
                "",
            ),
            400,
            "invalid_record_id",
        ),
        (
            request(
                "PUT",
                &webhook_path("http%3A%2F%2Fnowhere2.com%2Fx"),
                Some(&t),
                "",
            ),
            400,
            "invalid_callback_url",
        ),
        (
            request(
                "PUT",
                &webhook_path("https%3A%2F%2F127.0.0.1%2Fx"),
                Some(&t),
                "",
            ),
            400,
            "invalid_callback_url",
        ),
        (
            request(
                "PUT",
                &webhook_path("https%3A%2F%2Fa.com%2F%zz"),
                Some(&t),
                "",
            ),
            400,
            "invalid_callback_url",
        ),
        (
            request("PUT", &webhook_path("not-a-url"), Some(&t), ""),
            400,
            "invalid_callback_url",
        ),
        (
            request(
                "PUT",
                &format!("/0000-0002-1825-0097/webhook/{SEED_CALLBACK}"),
                Some(&t),
                "",
            ),
            404,
            "unknown_record",
        ),
    ];
    for (req, status, code) in cases {
        let uri = req.uri().to_string();
        let (got, headers, json) = call(&api, req).await;
        assert_eq!(
            (got, json["error"].as_str().unwrap_or_default()),
            (status, code),
            "{uri}"
        );
        if status == 401 {
            assert!(
                headers["www-authenticate"]
                    .to_str()
                    .unwrap()
                    .starts_with("Bearer")
            );
        }
    }
}

#[tokio::test]
async fn expired_token_is_401() {
    let api = api().await;
    let t = token(&api, "APP-1", "secret-1").await;
    api.clock.advance(std::time::Duration::from_secs(3600));
    let (status, headers, json) = call(
        &api,
        request("PUT", &webhook_path(SEED_CALLBACK), Some(&t), ""),
    )
    .await;
    assert_eq!(
        (status, json["error"].as_str().unwrap()),
        (401, "invalid_token")
    );
    // The challenge carries the code (RFC 6750); that it is the expiry is
    // `BearerError::Expired`, tested with `authorize_webhook`.
    assert!(
        headers["www-authenticate"]
            .to_str()
            .unwrap()
            .contains(r#"error="invalid_token""#),
        "{headers:?}"
    );
}

#[tokio::test]
async fn disabled_client_tokens_stop_working() {
    let api = api().await;
    let t = token(&api, "APP-1", "secret-1").await;
    let mut client = api
        .store
        .get_client(&"APP-1".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    client.disabled = true;
    api.store.put_client(&client).await.unwrap();
    let (status, _, _) = call(
        &api,
        request("PUT", &webhook_path(SEED_CALLBACK), Some(&t), ""),
    )
    .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn unregister_204_404_403() {
    let api = api().await;
    let mine = token(&api, "APP-1", "secret-1").await;
    let theirs = token(&api, "APP-2", "secret-2").await;
    let seed = webhook_path(SEED_CALLBACK);
    assert_eq!(
        call(&api, request("DELETE", &seed, Some(&mine), ""))
            .await
            .0,
        404
    );
    assert_eq!(
        call(&api, request("PUT", &seed, Some(&mine), "")).await.0,
        201
    );
    let (status, _, json) = call(&api, request("PUT", &seed, Some(&theirs), "")).await;
    assert_eq!(
        (status, json["error"].as_str().unwrap()),
        (403, "forbidden")
    );
    let (status, _, json) = call(&api, request("DELETE", &seed, Some(&theirs), "")).await;
    assert_eq!(
        (status, json["error"].as_str().unwrap()),
        (403, "forbidden")
    );
    assert_eq!(
        call(&api, request("DELETE", &seed, Some(&mine), ""))
            .await
            .0,
        204
    );
    let (status, _, json) = call(&api, request("DELETE", &seed, Some(&mine), "")).await;
    assert_eq!(
        (status, json["error"].as_str().unwrap()),
        (404, "webhook_not_found")
    );
    assert_eq!(call(&api, request("DELETE", &seed, None, "")).await.0, 401);
}

#[tokio::test]
async fn unknown_routes_wrong_methods_and_big_bodies() {
    let api = api().await;
    let (status, _, json) = call(&api, request("GET", "/nothing/here", None, "")).await;
    assert_eq!(
        (status, json["error"].as_str().unwrap()),
        (404, "not_found")
    );
    let (status, headers, _) = call(&api, request("GET", "/oauth/token", None, "")).await;
    assert_eq!((status, headers["allow"].to_str().unwrap()), (405, "POST"));
    let (status, headers, _) = call(
        &api,
        request("POST", &webhook_path(SEED_CALLBACK), None, ""),
    )
    .await;
    assert_eq!(
        (status, headers["allow"].to_str().unwrap()),
        (405, "GET, PUT, DELETE")
    );
    let big = "x".repeat(MAX_BODY_BYTES + 1);
    assert_eq!(
        call(&api, request("POST", "/oauth/token", None, &big))
            .await
            .0,
        413
    );
}

#[tokio::test]
async fn basic_auth_token_request() {
    let api = api().await;
    let basic = base64::engine::general_purpose::STANDARD.encode("APP-1:secret-1");
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("{HOST}/oauth/token"))
        .header("authorization", format!("Basic {basic}"))
        .body(Body::Text(
            "grant_type=client_credentials&scope=%2Fwebhook".into(),
        ))
        .unwrap();
    assert_eq!(call(&api, req).await.0, 200);
}

#[tokio::test]
async fn a_callback_whose_query_was_split_off_is_400_not_201() {
    let api = api().await;
    let t = token(&api, "APP-1", "secret-1").await;
    // What reaches the function when the client's `?` was taken as the request's own
    // query string (unencoded, or decoded by the gateway before it split the URL).
    let split = webhook_path("https://nowhere2.com/updated?user=7");
    for method in ["PUT", "GET", "DELETE"] {
        let (status, _, body) = call(&api, request(method, &split, Some(&t), "")).await;
        assert_eq!(status, 400, "{method}: {body}");
        assert_eq!(body["error"], "callback_url_query", "{method}");
    }
    assert!(
        api.store
            .subscriptions_of(&RecordId::parse(RECORD).unwrap())
            .await
            .unwrap()
            .is_empty(),
        "nothing was registered"
    );
    // The whole callback percent-encoded arrives intact and is registered as sent.
    let encoded = "https%3A%2F%2Fnowhere2.com%2Fupdated%3Fuser%3D7";
    let (status, _, _) = call(&api, request("PUT", &webhook_path(encoded), Some(&t), "")).await;
    assert_eq!(status, 201);
}

#[tokio::test]
async fn the_console_is_served_with_a_strict_content_security_policy() {
    let api = api().await;
    for (path, content_type) in [
        ("/console", "text/html; charset=utf-8"),
        ("/console/", "text/html; charset=utf-8"),
        ("/console/console.js", "text/javascript; charset=utf-8"),
        ("/console/console.css", "text/css; charset=utf-8"),
    ] {
        let response = api
            .registration
            .handle(request("GET", path, None, ""))
            .await;
        let headers = response.headers();
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(headers["content-type"], content_type, "{path}");
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(
            csp.starts_with("default-src 'self'") && !csp.contains("unsafe"),
            "{csp}"
        );
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(headers["x-frame-options"], "DENY");
        assert_eq!(headers["referrer-policy"], "no-referrer");
        assert!(
            matches!(response.body(), Body::Text(t) if !t.is_empty()),
            "{path}"
        );
    }
    let (status, headers, _) = call(&api, request("POST", "/console", None, "")).await;
    assert_eq!((status, headers["allow"].to_str().unwrap()), (405, "GET"));
    let (status, _, json) = call(&api, request("GET", "/console/nothing.js", None, "")).await;
    assert_eq!(
        (status, json["error"].as_str().unwrap()),
        (404, "not_found")
    );
}
