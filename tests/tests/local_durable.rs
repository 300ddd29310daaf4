//! The local runner with `--data-dir`: what it is told to keep is there after a restart
//! (clients and their tokens, subscriptions, records, the windows, a change left in the
//! stream), and a second runner on the same directory is refused with a clear error.
//! (`tests/durable/test_crash.py` kills the binary with `kill -9` at random points.)

use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;
use webhooks::record::RecordId;
use webhooks::sqlite::OpenError;
use webhooks_local::{LocalConfig, LocalService, SAMPLE_RECORD, StartError, Storage};
use webhooks_tests::Receiver;
use webhooks_tests::api::LocalApi;

const CLIENT: (&str, &str) = ("APP-DURABLE", "durable-secret");
const WAIT: Duration = Duration::from_secs(10);

/// A directory under the system's temporary directory, removed when dropped.
struct DataDir(PathBuf);

impl DataDir {
    fn new() -> Self {
        Self(std::env::temp_dir().join(format!("webhooks-durable-{}", uuid::Uuid::new_v4())))
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn config(dir: &DataDir) -> LocalConfig {
    LocalConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        flush_interval: Duration::from_secs(3600),
        flush_grace: Duration::from_millis(50),
        allow_insecure_callbacks: true,
        clients: vec![(CLIENT.0.parse().unwrap(), CLIENT.1.into())],
        applications: vec![("app-1".parse().unwrap(), "key-1".into())],
        data_dir: Some(dir.0.clone()),
        ..LocalConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_runner_keeps_what_it_was_told() {
    let dir = DataDir::new();
    let receiver = Receiver::start().await;
    let callback = receiver.url("/durable");

    let first = LocalService::start(config(&dir)).await.unwrap();
    let first_secret = first.applications[0].webhook_secret.clone();
    let api = LocalApi::new(first.addr, CLIENT.0, CLIENT.1);
    let token = api.token().await;
    assert_eq!(api.register(&token, &callback).await, 201);
    let before = api.change(json!({"firstName": "Josiah"})).await;
    assert_eq!(api.flush().await["jobs"], 1);
    receiver.wait_for(1, WAIT).await;
    first.stop().await;

    let second = LocalService::start(config(&dir)).await.unwrap();
    assert_eq!(
        second.applications[0].webhook_secret, first_secret,
        "started again with the same API key, the application keeps its signing secret"
    );
    let api = LocalApi::new(second.addr, CLIENT.0, CLIENT.1);
    assert_eq!(
        api.register(&token, &callback).await,
        204,
        "the token issued before the restart works, and the subscription is there"
    );
    let after = api.change(json!({"firstName": "Jo"})).await;
    assert_eq!(after["event"], "MODIFY", "the record survived: {after}");
    assert!(
        after["window"].as_u64() > before["window"].as_u64(),
        "windows go on from where they were: {before} then {after}"
    );
    assert_eq!(api.flush().await["jobs"], 1);
    let hits = receiver.wait_for(2, WAIT).await;
    assert_eq!(hits.len(), 2);
    assert_ne!(
        hits[0].headers["webhook-id"], hits[1].headers["webhook-id"],
        "two changes in two windows, two messages"
    );
    let status = api.status().await;
    assert_eq!(status["queue"]["dead_letters"], 0, "{status}");
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_runner_on_the_same_directory_is_refused() {
    let dir = DataDir::new();
    let first = LocalService::start(config(&dir)).await.unwrap();
    let Err(refused) = LocalService::start(config(&dir)).await else {
        panic!("a second runner started on the same data directory");
    };
    assert!(
        matches!(refused, StartError::Storage(OpenError::Locked { .. })),
        "{refused:?}"
    );
    let message = refused.to_string();
    assert!(
        message.contains(&dir.0.display().to_string())
            && message.contains(&format!("pid {}", std::process::id())),
        "the error names the directory and the holder: {message}"
    );
    first.stop().await;
    LocalService::start(config(&dir))
        .await
        .expect("free once the first stopped")
        .stop()
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_left_in_the_stream_is_captured_at_the_next_start() {
    let dir = DataDir::new();
    let receiver = Receiver::start().await;
    let first = LocalService::start(config(&dir)).await.unwrap();
    let api = LocalApi::new(first.addr, CLIENT.0, CLIENT.1);
    let token = api.token().await;
    assert_eq!(api.register(&token, &receiver.url("/left")).await, 201);
    first.stop().await;

    // A record written, then the process gone before change capture ran.
    let storage = Storage::open(
        &dir.0,
        std::sync::Arc::new(webhooks::clock::SystemClock),
        Duration::from_secs(60),
        5,
        Duration::from_secs(3600),
    )
    .unwrap();
    let person = json!({"firstName": "Left"}).as_object().unwrap().clone();
    storage
        .put_person(&RecordId::parse(SAMPLE_RECORD).unwrap(), person)
        .await
        .unwrap();
    storage.close();
    drop(storage);

    let second = LocalService::start(config(&dir)).await.unwrap();
    let report = LocalApi::new(second.addr, CLIENT.0, CLIENT.1).flush().await;
    assert_eq!(report["jobs"], 1, "{report}");
    assert_eq!(receiver.wait_for(1, WAIT).await.len(), 1);
    second.stop().await;
}
