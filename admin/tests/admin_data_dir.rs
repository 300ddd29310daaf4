//! The admin command line against a local runner's data directory (`--data-dir`), beside
//! the running runner: a client it creates gets tokens from the runner, and loses them when
//! disabled; an application it creates opens the API; a dead letter it replays is
//! delivered; a poison item it lists and replays is flushed and delivered.

mod common;

use common::{admin_command, printed, run};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use webhooks::callback::{CallbackUrl, UrlPolicy};
use webhooks::job::DeliveryJob;
use webhooks::poison::PoisonItem;
use webhooks::ports::{DeliveryQueue, PendingChanges, SubscriptionStore};
use webhooks::record::RecordId;
use webhooks::sqlite::{Access, Database, SqliteQueue, SqliteStore};
use webhooks::subscription::Subscription;
use webhooks::window::WindowId;
use webhooks_local::{LocalConfig, LocalService};
use webhooks_tests::Receiver;

const WAIT: Duration = Duration::from_secs(10);

/// A directory under the system's temporary directory, removed when dropped.
struct DataDir(PathBuf);

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn admin(dir: &Path, args: &[&str]) -> (i32, String, String) {
    run(admin_command()
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .env_remove("SERVICE_TABLE"))
}

async fn token_status(base: &str, id: &str, secret: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("{base}/oauth/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "client_id={id}&client_secret={secret}&scope=/webhook&grant_type=client_credentials"
        ))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn flush(base: &str) -> Value {
    let body = reqwest::Client::new()
        .post(format!("{base}/local/flush"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_commands_work_on_a_data_directory_beside_the_runner() {
    let dir =
        DataDir(std::env::temp_dir().join(format!("webhooks-admin-{}", uuid::Uuid::new_v4())));
    let (code, _, stderr) = admin(&dir.0, &["clients", "list"]);
    assert_eq!(code, 2, "no database yet: a usage error");
    assert!(stderr.contains("holds no database"), "{stderr}");

    let service = LocalService::start(LocalConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        flush_interval: Duration::from_secs(3600),
        flush_grace: Duration::from_millis(50),
        allow_insecure_callbacks: true,
        sample_record: false,
        data_dir: Some(dir.0.clone()),
        ..LocalConfig::default()
    })
    .await
    .unwrap();
    let base = format!("http://{}", service.addr);

    // Clients: created here, served by the runner; disabled here, refused by the runner.
    let (code, stdout, stderr) = admin(&dir.0, &["clients", "create", "--id", "APP-ADMIN"]);
    assert_eq!(code, 0, "{stderr}");
    let secret = printed(&stdout, "client_secret");
    assert_eq!(token_status(&base, "APP-ADMIN", &secret).await, 200);
    let (code, stdout, _) = admin(&dir.0, &["clients", "list"]);
    assert_eq!(code, 0);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("APP-ADMIN ") && l.contains("enabled")),
        "{stdout}"
    );
    let (code, _, stderr) = admin(&dir.0, &["clients", "disable", "APP-ADMIN"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(token_status(&base, "APP-ADMIN", &secret).await, 401);

    // Applications: the API key printed opens the application's API.
    let (code, stdout, stderr) = admin(&dir.0, &["applications", "create", "--id", "app-9"]);
    assert_eq!(code, 0, "{stderr}");
    let api_key = printed(&stdout, "api_key");
    let status = reqwest::Client::new()
        .get(format!("{base}/application/app-9"))
        .header("x-access-token", api_key)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    let (_, stdout, _) = admin(&dir.0, &["applications", "list"]);
    assert!(stdout.lines().any(|l| l.starts_with("app-9 ")), "{stdout}");

    // A subscription to deliver to, written beside the runner as the tool writes.
    let receiver = Receiver::start().await;
    let tool = Database::open(&dir.0, Access::Tool).unwrap();
    let store = SqliteStore::new(tool.clone());
    let record = RecordId::parse("0000-0002-7465-2162").unwrap();
    let callback = CallbackUrl::parse(
        &receiver.url("/hook"),
        UrlPolicy {
            allow_insecure: true,
        },
    )
    .unwrap();
    store
        .register(&Subscription {
            record: record.clone(),
            callback: callback.clone(),
            client_id: "APP-ADMIN".parse().unwrap(),
            created_at: webhooks::clock::Timestamp::UNIX_EPOCH,
            health: Default::default(),
        })
        .await
        .unwrap();

    // The dead-letter queue: a job dead-lettered, replayed by the tool, delivered by the runner.
    let queue = SqliteQueue::new(
        tool.clone(),
        Arc::new(webhooks::clock::SystemClock),
        Duration::ZERO,
        1,
    );
    let subscription = store
        .get_subscription(&record, &callback)
        .await
        .unwrap()
        .unwrap();
    let job = DeliveryJob::for_subscription(
        &subscription,
        WindowId(1),
        webhooks::testing::at("2026-11-26T00:00:00.000Z"),
    );
    queue.dead_letter(&job).await.unwrap();
    let (code, stdout, stderr) = admin(&dir.0, &["dlq", "replay"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("moved 1 messages"), "{stdout}");
    let hits = receiver.wait_for(1, WAIT).await;
    assert_eq!(hits[0].headers["webhook-id"], job.id.as_str());
    assert_eq!(service.runtime.queue_depth().await.unwrap().dead, 0);

    // Poison: listed, replayed into the runner's current window, flushed and delivered.
    let item = PoisonItem::corrupt(
        &record,
        WindowId(1),
        None,
        "was broken".into(),
        webhooks::testing::at("2026-11-26T00:00:00.000Z"),
    );
    store.set_aside(&item).await.unwrap();
    let (code, stdout, _) = admin(&dir.0, &["poison", "list"]);
    assert_eq!(code, 0);
    assert!(stdout.contains(item.id().as_str()), "{stdout}");
    let (code, stdout, stderr) = admin(&dir.0, &["poison", "replay", item.id().as_str()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(&format!(
            "pending in window {}",
            service.runtime.current_window()
        )),
        "{stdout}"
    );
    assert!(store.poison_items().await.unwrap().is_empty());
    let (code, _, stderr) = admin(&dir.0, &["poison", "replay", item.id().as_str()]);
    assert_eq!(code, 2, "gone once replayed: {stderr}");
    assert_eq!(flush(&base).await["jobs"], 1);
    assert_eq!(receiver.wait_for(2, WAIT).await.len(), 2);

    tool.close();
    service.stop().await;
}
