//! Full syncs on the local runner: a paced sync never lets two requests reach the
//! receiver closer than the interval, an unpaced one fans out and finishes much sooner,
//! and persons without consent are never sent.

use base64::Engine;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;
use webhooks_local::{LocalConfig, LocalService};
use webhooks_tests::api::LocalApi;
use webhooks_tests::{Hit, Receiver};

const PERSONS: usize = 50;

async fn service() -> LocalService {
    LocalService::start(LocalConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        flush_interval: Duration::from_secs(3600),
        allow_insecure_callbacks: true,
        applications: vec![
            ("app-paced".parse().unwrap(), "key-paced".into()),
            ("app-fast".parse().unwrap(), "key-fast".into()),
        ],
        sample_record: false,
        ..LocalConfig::default()
    })
    .await
    .unwrap()
}

/// The runner's API, with full syncs.
struct Api(LocalApi);

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        key: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.0.application_call(method, path, key, body).await
    }

    async fn put_person(&self, id: &str, person: Value) {
        self.0.put_person(id, person).await;
    }

    /// Starts a sync and waits for it to complete; returns (progress, elapsed).
    async fn sync(&self, app: &str, key: &str) -> (Value, Duration) {
        let started = tokio::time::Instant::now();
        let (status, sync) = self
            .call(
                reqwest::Method::POST,
                &format!("/application/{app}/webhook/sync"),
                key,
                None,
            )
            .await;
        assert_eq!(status, 202, "{sync}");
        let id = sync["syncId"].as_str().unwrap().to_owned();
        let deadline = started + Duration::from_secs(30);
        loop {
            let (_, progress) = self
                .call(
                    reqwest::Method::GET,
                    &format!("/application/{app}/webhook/sync/{id}"),
                    key,
                    None,
                )
                .await;
            if progress["state"] == "completed" || tokio::time::Instant::now() > deadline {
                return (progress, started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn persons_in(hit: &Hit) -> Vec<String> {
    let envelope: Value = serde_json::from_slice(&hit.body).unwrap();
    let data = base64::engine::general_purpose::STANDARD
        .decode(envelope["message"]["data"].as_str().unwrap())
        .unwrap();
    let persons: Vec<Value> = serde_json::from_slice(&data).unwrap();
    persons
        .iter()
        .map(|p| p["personID"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_and_unpaced_full_syncs() {
    let service = service().await;
    let api = Api(LocalApi::anonymous(service.addr));
    let paced = Receiver::start().await;
    let fast = Receiver::start().await;
    for (app, key, receiver, interval) in [
        ("app-paced", "key-paced", &paced, 100),
        ("app-fast", "key-fast", &fast, 0),
    ] {
        let webhook = json!({"webhook": {"url": receiver.url("/sync"), "signingKey": "k", "requestIntervalMs": interval}});
        let (status, _) = api
            .call(
                reqwest::Method::PATCH,
                &format!("/application/{app}"),
                key,
                Some(webhook),
            )
            .await;
        assert_eq!(status, 200, "{app}");
    }
    let scopes = json!(["members.read_name"]);
    for i in 0..PERSONS {
        let consents = json!({"app-paced": scopes, "app-fast": scopes});
        api.put_person(
            &format!("p-{i:03}"),
            json!({"firstName": format!("P{i}"), "consents": consents}),
        )
        .await;
    }
    for i in 0..5 {
        api.put_person(
            &format!("x-{i}"),
            json!({"firstName": "No", "consents": {"app-other": scopes}}),
        )
        .await;
    }
    let expected: BTreeSet<String> = (0..PERSONS).map(|i| format!("p-{i:03}")).collect();

    let (progress, paced_elapsed) = api.sync("app-paced", "key-paced").await;
    assert_eq!(progress["state"], "completed", "{progress}");
    assert_eq!(
        (
            progress["delivered"].as_u64(),
            progress["failed"].as_u64(),
            progress["queued"].as_u64()
        ),
        (Some(PERSONS as u64), Some(0), Some(0))
    );
    let hits = paced.hits();
    assert_eq!(hits.len(), PERSONS);
    let got: BTreeSet<String> = hits.iter().flat_map(persons_in).collect();
    assert_eq!(got, expected, "every consented person once, nobody else");
    let closest = hits.windows(2).map(|w| w[1].at - w[0].at).min().unwrap();
    assert!(
        closest >= Duration::from_millis(100),
        "two requests {closest:?} apart with a 100 ms interval"
    );

    let (progress, fast_elapsed) = api.sync("app-fast", "key-fast").await;
    assert_eq!(progress["state"], "completed", "{progress}");
    assert_eq!(progress["delivered"].as_u64(), Some(PERSONS as u64));
    let got: BTreeSet<String> = fast
        .wait_for(PERSONS, Duration::from_secs(5))
        .await
        .iter()
        .flat_map(persons_in)
        .collect();
    assert_eq!(got, expected);
    println!(
        "paced sync of {PERSONS}: {paced_elapsed:?}, closest gap {closest:?}; unpaced: {fast_elapsed:?}"
    );
    assert!(
        fast_elapsed * 4 < paced_elapsed,
        "unpaced {fast_elapsed:?} vs paced {paced_elapsed:?}"
    );
    service.stop().await;
}
