//! The ORCID-style flow end to end on the local runner: real HTTP to the API, real
//! record changes through change capture, the flush, the delivery workers, and a real
//! receiver on 127.0.0.1.

use serde_json::{Value, json};
use std::time::Duration;
use webhooks::retry::RetryPolicy;
use webhooks_local::{LocalConfig, LocalService, SAMPLE_RECORD};
use webhooks_tests::api::LocalApi;
use webhooks_tests::{Receiver, wait_until};

const CLIENT: (&str, &str) = (
    "APP-NPXKK6HFN6TJ4YYI",
    "060c36f2-cce2-4f74-bde0-a17d8bb30a97",
);
const WAIT: Duration = Duration::from_secs(10);

fn config(retry_base: Duration, max_attempts: u32) -> LocalConfig {
    LocalConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        // The timer stays out of the way; the tests flush by hand.
        flush_interval: Duration::from_secs(3600),
        flush_grace: Duration::from_millis(300),
        retry: RetryPolicy {
            base: retry_base,
            max_attempts,
            jitter: 0.1,
        },
        delivery_timeout: Duration::from_secs(2),
        allow_insecure_callbacks: true,
        clients: vec![(CLIENT.0.parse().unwrap(), CLIENT.1.into())],
        ..LocalConfig::default()
    }
}

/// Waits until every message the queue held has been handled: nothing visible, nothing
/// in flight or waiting for a retry. After it, no further request can reach a receiver.
async fn drained(service: &LocalService) {
    let empty = wait_until(WAIT, async || {
        let depth = service.runtime.queue_depth().await.unwrap();
        depth.visible + depth.in_flight == 0
    })
    .await;
    assert!(
        empty,
        "the queue drained: {:?}",
        service.runtime.queue_depth().await.unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orcid_flow_end_to_end() {
    let service = LocalService::start(config(Duration::from_millis(400), 5))
        .await
        .unwrap();
    let api = LocalApi::new(service.addr, CLIENT.0, CLIENT.1);
    let receiver = Receiver::start().await;
    let callback = receiver.url("/0000-0002-7465-2162/updated");

    // Token: 200 with the seed's fields.
    let token = api.token_response().await;
    for field in [
        "access_token",
        "token_type",
        "refresh_token",
        "expires_in",
        "scope",
    ] {
        assert!(token.get(field).is_some(), "{field} missing from {token}");
    }
    assert_eq!(token["token_type"], "bearer");
    assert_eq!(token["scope"], "/webhook");
    let token = token["access_token"].as_str().unwrap().to_owned();

    // Register: 201 with the exact Location, then 204.
    let response = api.webhook(reqwest::Method::PUT, &token, &callback).await;
    assert_eq!(response.status(), 201);
    assert_eq!(
        response.headers()["location"],
        api.webhook_url(&callback).as_str()
    );
    let response = api.webhook(reqwest::Method::PUT, &token, &callback).await;
    assert_eq!(response.status(), 204);

    // Two changes in one window: exactly one empty POST after the flush.
    api.change(json!({"firstName": "Josiah"})).await;
    api.change(json!({"firstName": "Josiah", "lastName": "Carberry"}))
        .await;
    let report = api.flush().await;
    assert_eq!(report["jobs"], 1, "{report}");
    receiver.wait_for(1, WAIT).await;
    drained(&service).await;
    let hits = receiver.hits();
    assert_eq!(hits.len(), 1, "exactly one POST per window");
    assert_eq!(hits[0].method, "POST");
    assert_eq!(hits[0].path, "/0000-0002-7465-2162/updated");
    assert!(
        hits[0].body.is_empty(),
        "ORCID-style notifications have an empty body"
    );
    assert!(
        hits[0].headers["webhook-id"]
            .to_str()
            .unwrap()
            .starts_with("msg_")
    );

    // 500, 500, then 204: three attempts, the gap doubling.
    receiver.script(&[500, 500]);
    api.change(json!({"firstName": "Jo"})).await;
    api.flush().await;
    let hits = receiver.wait_for(4, WAIT).await;
    assert_eq!(hits.len(), 4);
    let first_gap = hits[2].at - hits[1].at;
    let second_gap = hits[3].at - hits[2].at;
    let ratio = second_gap.as_secs_f64() / first_gap.as_secs_f64();
    assert!(
        first_gap >= Duration::from_millis(350),
        "first retry after ~400 ms, was {first_gap:?}"
    );
    assert!(
        (1.5..=2.6).contains(&ratio),
        "gaps {first_gap:?} then {second_gap:?}: ratio {ratio}"
    );
    assert_eq!(
        hits[1].headers["webhook-id"], hits[3].headers["webhook-id"],
        "webhook-id is stable across retries"
    );
    drained(&service).await;
    assert_eq!(
        receiver.hits().len(),
        4,
        "acknowledged: no further attempts"
    );

    // Unregister: 204, and a further change sends nothing.
    let response = api
        .webhook(reqwest::Method::DELETE, &token, &callback)
        .await;
    assert_eq!(response.status(), 204);
    api.change(json!({"firstName": "Joe"})).await;
    let report = api.flush().await;
    assert_eq!(report["jobs"], 0, "{report}");
    // The flush has returned having queued nothing, and nothing was left in the queue.
    assert_eq!(
        service.runtime.queue_depth().await.unwrap(),
        Default::default(),
        "nothing queued after unregistering"
    );
    assert_eq!(receiver.hits().len(), 4, "no POST after unregistering");

    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_during_a_flush_is_delivered_by_the_next_flush() {
    let service = LocalService::start(config(Duration::from_millis(200), 5))
        .await
        .unwrap();
    let api = LocalApi::new(service.addr, CLIENT.0, CLIENT.1);
    let receiver = Receiver::start().await;
    let token = api.token().await;
    let callback = receiver.url("/hook");
    assert_eq!(
        api.webhook(reqwest::Method::PUT, &token, &callback)
            .await
            .status(),
        201
    );

    let window_before = api.change(json!({"v": 1})).await["window"]
        .as_u64()
        .unwrap();
    // The flush closes the window, waits its grace period (300 ms), then reads it; this
    // change lands in between, in the next window.
    let flushing = tokio::spawn({
        let http = api.http.clone();
        let url = format!("{}/local/flush", api.base);
        async move {
            http.post(url)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    });
    // Once the flush has closed the window, and while it waits its grace period.
    let closed = wait_until(WAIT, async || {
        service.runtime.current_window() > window_before
    })
    .await;
    assert!(closed, "the flush closed the window");
    let window_during = api.change(json!({"v": 2})).await["window"]
        .as_u64()
        .unwrap();
    let first = flushing.await.unwrap();
    assert!(
        window_during > window_before,
        "the change landed after the window closed"
    );
    assert_eq!(first["jobs"], 1, "{first}");
    receiver.wait_for(1, WAIT).await;

    let second = api.flush().await;
    assert_eq!(
        second["jobs"], 1,
        "the next flush picks up the change: {second}"
    );
    assert_eq!(receiver.wait_for(2, WAIT).await.len(), 2);
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_that_always_fails_ends_in_the_dead_letter_queue_and_replays() {
    let service = LocalService::start(config(Duration::from_millis(100), 3))
        .await
        .unwrap();
    let api = LocalApi::new(service.addr, CLIENT.0, CLIENT.1);
    let receiver = Receiver::start().await;
    receiver.script(&[500, 500, 500]);
    let token = api.token().await;
    assert_eq!(
        api.webhook(reqwest::Method::PUT, &token, &receiver.url("/down"))
            .await
            .status(),
        201
    );
    api.change(json!({"v": 1})).await;
    api.flush().await;
    let hits = receiver.wait_for(3, WAIT).await;
    assert_eq!(hits.len(), 3);
    wait_until(WAIT, async || {
        api.status().await["queue"]["dead_letters"] == 1
    })
    .await;
    let status = api.status().await;
    assert_eq!(status["queue"]["dead_letters"], 1, "{status}");
    assert_eq!(
        status["dead_letters"][0]["target"]["callback"],
        receiver.url("/down").as_str()
    );
    assert_eq!(receiver.hits().len(), 3, "no attempt after the last");

    // The receiver is healthy again (its script is spent): replay the DLQ.
    let replay = api.post("/local/dlq/replay").await;
    assert_eq!(replay["moved"], 1);
    let hits = receiver.wait_for(4, WAIT).await;
    assert_eq!(hits.len(), 4, "the replayed message is delivered");
    assert_eq!(hits[3].headers["webhook-id"], hits[0].headers["webhook-id"]);
    assert_eq!(api.status().await["queue"]["dead_letters"], 0);
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_query_sent_as_the_request_query_is_400() {
    let service = LocalService::start(config(Duration::from_millis(100), 3))
        .await
        .unwrap();
    let api = LocalApi::new(service.addr, CLIENT.0, CLIENT.1);
    let token = api.token().await;
    let token = token.as_str();
    // Not encoded: the `?` starts the request's own query string.
    let response = api
        .http
        .put(format!(
            "{}/{SAMPLE_RECORD}/webhook/https://nowhere2.com/updated?user=7",
            api.base
        ))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "callback_url_query", "{body}");
    // Encoded, it reaches the local runner whole and is registered as sent.
    let response = api
        .webhook(
            reqwest::Method::PUT,
            token,
            "http://127.0.0.1:9/updated?user=7",
        )
        .await;
    assert_eq!(response.status(), 201);
}

/// Members style on the local runner, whose queue applies SQS's limits: a person with a
/// character SQS refuses is delivered intact, a person too large for any message is set
/// aside as a poison item that `/local/status` shows and `/local/poison/replay` replays,
/// and the flush is not held back by it.
/// A runner with application `app-1`'s webhook on a new receiver, where `p-big` (too large
/// for any queue message) and `p-odd` (a character SQS refuses) changed.
async fn members_big_and_odd(first_attempts: usize) -> (LocalService, LocalApi, Receiver) {
    let service = LocalService::start(LocalConfig {
        applications: vec![("app-1".parse().unwrap(), "key-1".into())],
        sample_record: false,
        flush_first_attempts: first_attempts,
        ..config(Duration::from_millis(100), 3)
    })
    .await
    .unwrap();
    let api = LocalApi::new(service.addr, CLIENT.0, CLIENT.1);
    let receiver = Receiver::start().await;
    let (status, answer) = api
        .application_call(
            reqwest::Method::PATCH,
            "/application/app-1",
            "key-1",
            Some(json!({"webhook": {"url": receiver.url("/members")}})),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let put = async |id: &str, first_name: String| {
        let person = json!({"firstName": first_name, "consents": {"app-1": ["members.read_name"]}});
        api.put_person(id, person).await;
    };
    put("p-big", "x".repeat(webhooks::message::MAX_MESSAGE_BYTES)).await;
    put("p-odd", "Zoë\u{FFFF}".into()).await;
    (service, api, receiver)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_person_is_set_aside_and_the_others_are_delivered() {
    // Every job through the queue, which refuses the large one.
    let (service, api, receiver) = members_big_and_odd(0).await;
    let report = api.flush().await;
    assert_eq!(
        (report["jobs"].clone(), report["set_aside"].clone()),
        (json!(1), json!(1)),
        "{report}"
    );
    let hits = receiver.wait_for(1, WAIT).await;
    let envelope: Value = serde_json::from_slice(&hits[0].body).unwrap();
    let data = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        envelope["message"]["data"].as_str().unwrap(),
    )
    .unwrap();
    let persons: Value = serde_json::from_slice(&data).unwrap();
    assert_eq!(persons[0]["firstName"], "Zoë\u{FFFF}");

    let status = api.status().await;
    assert_eq!(status["poison"].as_array().unwrap().len(), 1, "{status}");
    assert_eq!(status["poison"][0]["record"], "p-big");
    assert_eq!(status["poison"][0]["endpoint"], "application:app-1");
    let first_window = status["poison"][0]["window"].clone();

    // Replayed as it is, it is set aside again by the next flush, in a later window.
    let replay = api.post("/local/poison/replay").await;
    assert_eq!(replay["replayed"], 1);
    assert!(api.status().await["poison"].as_array().unwrap().is_empty());
    let report = api.flush().await;
    assert_eq!(report["set_aside"], 1, "{report}");
    let status = api.status().await;
    assert!(
        status["poison"][0]["window"].as_u64() > first_window.as_u64(),
        "{status}"
    );
    service.stop().await;
}

/// With the flush's first attempts, a job too large for the queue reaches its receiver
/// when the first attempt is acknowledged, and is set aside only when it needs the queue
/// for another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_too_large_for_the_queue_is_set_aside_only_when_its_first_attempt_fails() {
    let (service, api, receiver) = members_big_and_odd(10).await;
    let report = api.flush().await;
    assert_eq!(
        (
            report["jobs"].clone(),
            report["first_attempts"].clone(),
            report["set_aside"].clone()
        ),
        (json!(2), json!(2), json!(0)),
        "{report}"
    );
    let hits = receiver.wait_for(2, WAIT).await;
    assert_eq!(hits.len(), 2, "both delivered by the flush");
    assert!(api.status().await["poison"].as_array().unwrap().is_empty());

    // Both fail their first attempt: the odd one is retried from the queue, the large one
    // cannot be queued and is set aside.
    receiver.script(&[500, 500]);
    let put = async |id: &str, first_name: String| {
        let person = json!({"firstName": first_name, "consents": {"app-1": ["members.read_name"]}});
        api.put_person(id, person).await;
    };
    put("p-big", "y".repeat(webhooks::message::MAX_MESSAGE_BYTES)).await;
    put("p-odd", "Zoë again\u{FFFF}".into()).await;
    let report = api.flush().await;
    assert_eq!(report["set_aside"], 1, "{report}");
    let status = api.status().await;
    assert_eq!(status["poison"][0]["record"], "p-big", "{status}");
    // The odd one's second attempt, from the queue after the retry delay, is acknowledged.
    let hits = receiver.wait_for(5, WAIT).await;
    assert_eq!(
        hits.len(),
        5,
        "{:?}",
        hits.iter().map(|h| h.status).collect::<Vec<_>>()
    );
    assert_eq!(hits[4].status, 204);
    service.stop().await;
}
