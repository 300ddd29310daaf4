//! The admin command line against moto: create (secret printed once, stored hashed),
//! list, disable and enable; DLQ replay; parked-job replay for disabled endpoints.

mod common;

use common::{admin_command, printed, run};
use std::process::Command;
use std::time::Duration;
use webhooks::aws::AwsServices;
use webhooks::callback::{CallbackUrl, UrlPolicy};
use webhooks::health::EndpointHealth;
use webhooks::job::DeliveryJob;
use webhooks::ports::{ClientStore, DeliveryQueue, SubscriptionStore};
use webhooks::record::RecordId;
use webhooks::subscription::Subscription;
use webhooks::window::WindowId;
use webhooks_tests::moto::{MotoEnv, QueuePoller, endpoint};

/// The admin command pointed at this test's tables and queues on moto.
fn admin_command_for(env: &MotoEnv, args: &[&str]) -> Command {
    let mut command = admin_command();
    command
        .args(args)
        .env("SERVICE_TABLE", &env.service_table)
        .env("DELIVERY_QUEUE_URL", &env.queue_url)
        .env("DEAD_LETTER_QUEUE_URL", &env.dlq_url)
        .env("DISABLED_ENDPOINT_QUEUE_URL", &env.parked_url)
        .env("AWS_ENDPOINT_URL", endpoint())
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing");
    command
}

fn admin(env: &MotoEnv, args: &[&str]) -> (i32, String, String) {
    run(&mut admin_command_for(env, args))
}

#[tokio::test]
async fn create_list_disable_enable() {
    let env = MotoEnv::create(3).await;
    let aws = AwsServices::new(&env.config, env.settings());

    let (code, stdout, stderr) = admin(&env, &["clients", "create", "--id", "APP-TEST"]);
    assert_eq!(code, 0, "{stderr}");
    let secret = printed(&stdout, "client_secret");
    let stored = aws
        .store
        .raw_item("CLIENTS", "APP-TEST")
        .await
        .unwrap()
        .unwrap();
    assert!(
        !format!("{stored:?}").contains(&secret),
        "only a hash is stored"
    );
    let client = aws
        .store
        .get_client(&"APP-TEST".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(client.secret.matches(&secret));

    let (code, _, stderr) = admin(&env, &["clients", "create", "--id", "APP-TEST"]);
    assert_eq!(code, 2, "a duplicate id is refused: {stderr}");
    let (code, stdout, _) = admin(&env, &["clients", "create"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("client_id:      APP-"));
    assert!(stdout.contains("webhook_secret: whsec_"));

    let (_, list, _) = admin(&env, &["clients", "list"]);
    assert_eq!(list.lines().count(), 3, "{list}");
    assert!(list.contains("APP-TEST") && list.contains("enabled"));

    assert_eq!(admin(&env, &["clients", "disable", "APP-TEST"]).0, 0);
    assert!(
        aws.store
            .get_client(&"APP-TEST".parse().unwrap())
            .await
            .unwrap()
            .unwrap()
            .disabled
    );
    let (_, list, _) = admin(&env, &["clients", "list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with("APP-TEST") && l.contains("disabled"))
    );
    assert_eq!(admin(&env, &["clients", "enable", "APP-TEST"]).0, 0);
    assert!(
        !aws.store
            .get_client(&"APP-TEST".parse().unwrap())
            .await
            .unwrap()
            .unwrap()
            .disabled
    );
    assert_eq!(admin(&env, &["clients", "disable", "APP-NOPE"]).0, 2);

    let before = aws
        .store
        .get_client(&"APP-TEST".parse().unwrap())
        .await
        .unwrap()
        .unwrap()
        .webhook_secrets
        .unwrap();
    let (code, stdout, _) = admin(&env, &["clients", "rotate-webhook-secret", "APP-TEST"]);
    assert_eq!(code, 0);
    let after = aws
        .store
        .get_client(&"APP-TEST".parse().unwrap())
        .await
        .unwrap()
        .unwrap()
        .webhook_secrets
        .unwrap();
    assert!(stdout.contains(after.current.expose()));
    assert_eq!(
        after.previous,
        Some(before.current),
        "the old secret keeps signing for a day"
    );
}

#[tokio::test]
async fn applications_create_and_list() {
    use webhooks::ports::ApplicationStore;
    let env = MotoEnv::create(3).await;
    let aws = AwsServices::new(&env.config, env.settings());
    let (code, stdout, stderr) = admin(&env, &["applications", "create", "--id", "app-1"]);
    assert_eq!(code, 0, "{stderr}");
    let key = printed(&stdout, "api_key");
    let app = aws
        .store
        .get_application(&"app-1".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(app.api_key_hash, webhooks::oauth::sha256_hex(&key));
    assert!(stdout.contains(app.secrets.current.expose()));
    assert_eq!(
        admin(&env, &["applications", "create", "--id", "app-1"]).0,
        2
    );
    let (_, list, _) = admin(&env, &["applications", "list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with("app-1") && l.ends_with("-")),
        "{list}"
    );
}

#[tokio::test]
async fn dlq_replay_moves_dead_letters_back() {
    let env = MotoEnv::create(3).await;
    let sqs = aws_sdk_sqs::Client::new(&env.config);
    for i in 0..3 {
        sqs.send_message()
            .queue_url(&env.dlq_url)
            .message_body(format!("{{\"n\":{i}}}"))
            .send()
            .await
            .unwrap();
    }
    for method in ["auto", "loop"] {
        let out = admin_command_for(&env, &["dlq", "replay", "--method", method])
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        println!("{method}: {stdout}{stderr}");
        assert!(out.status.success(), "{stderr}");
    }
    // Whichever way moto moved them, all three are back on the delivery queue.
    let mut bodies = Vec::new();
    for _ in 0..5 {
        let received = sqs
            .receive_message()
            .queue_url(&env.queue_url)
            .max_number_of_messages(10)
            .send()
            .await
            .unwrap();
        bodies.extend(
            received
                .messages
                .unwrap_or_default()
                .into_iter()
                .filter_map(|m| m.body),
        );
        if bodies.len() >= 3 {
            break;
        }
    }
    bodies.sort();
    assert_eq!(bodies, [r#"{"n":0}"#, r#"{"n":1}"#, r#"{"n":2}"#]);
    assert!(env.dead_letters().await.is_empty());
}

#[tokio::test]
async fn poison_items_are_listed_and_replayed() {
    use webhooks::poison::PoisonItem;
    use webhooks::ports::PendingChanges;
    use webhooks::record::RecordId;
    use webhooks::window::WindowId;
    let env = MotoEnv::create(3).await;
    let aws = AwsServices::new(&env.config, env.settings());
    let record = RecordId::parse("0000-0002-7465-2162").unwrap();
    let item = PoisonItem::corrupt(
        &record,
        WindowId(40),
        None,
        "missing field `callback`".into(),
        webhooks::testing::at("2026-11-26T00:00:00.000Z"),
    );
    aws.store.set_aside(&item).await.unwrap();

    let (code, list, stderr) = admin(&env, &["poison", "list"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        list.contains(item.id().as_str()) && list.contains("missing field"),
        "{list}"
    );

    let (code, _, stderr) = admin(&env, &["poison", "replay", "no-such-item"]);
    assert_eq!(code, 2, "{stderr}");
    let (code, stdout, stderr) = admin(
        &env,
        &["poison", "replay", "--all", "--flush-interval-minutes", "5"],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("replayed:"), "{stdout}");
    assert!(aws.store.poison_items().await.unwrap().is_empty());
    // Pending again in the window open now (five-minute windows since the epoch), as a
    // change would be: the flush reads it once it closes.
    let now = time::OffsetDateTime::now_utc().unix_timestamp() as u64;
    let mut found = false;
    for window in [now / 300, now / 300 + 1] {
        let pending = webhooks::testing::pending_records(aws.store.as_ref(), WindowId(window))
            .await
            .unwrap();
        found |= pending == vec![record.clone()];
    }
    assert!(found, "marked pending in the current window");
}

#[tokio::test]
async fn jobs_for_a_disabled_endpoint_are_parked_and_replayed_only_once_it_is_enabled() {
    let env = MotoEnv::create(3).await;
    let aws = AwsServices::new(&env.config, env.settings());
    let record = RecordId::parse("0000-0002-1825-0097").unwrap();
    let callback = CallbackUrl::parse("https://example.org/gone", UrlPolicy::default()).unwrap();
    let subscription = Subscription {
        record: record.clone(),
        callback: callback.clone(),
        client_id: "APP-1".parse().unwrap(),
        created_at: webhooks::clock::Timestamp::UNIX_EPOCH,
        health: EndpointHealth {
            disabled_at: Some(webhooks::testing::at_ms(1_000)),
            disabled_reason: Some("the receiver answered 410 Gone".into()),
            ..EndpointHealth::default()
        },
    };
    aws.store.register(&subscription).await.unwrap();
    // A job for it in the DLQ (dead-lettered there before parking existed), replayed.
    let job = DeliveryJob::for_subscription(
        &subscription,
        WindowId(1),
        webhooks::testing::at("2026-11-26T00:00:00.000Z"),
    );
    aws.queue.dead_letter(&job).await.unwrap();
    let (code, stdout, stderr) = admin(&env, &["dlq", "replay", "--method", "loop"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("moved 1 "), "{stdout}");

    // Delivery parks it: the DLQ keeps meaning "something failed".
    let delivery = aws.delivery();
    let poller = QueuePoller::new(&env);
    assert_eq!(poller.run_once(&delivery, Duration::from_secs(2)).await, 1);
    assert!(env.dead_letters().await.is_empty());
    assert_eq!(env.parked().await.len(), 1);
    // So replaying the DLQ again has nothing to move: no loop.
    let (_, stdout, _) = admin(&env, &["dlq", "replay", "--method", "loop"]);
    assert!(stdout.contains("moved 0 "), "{stdout}");

    // Replaying the parked queue while the endpoint is still disabled leaves it parked
    // (visible again at once) and says why.
    let (code, stdout, stderr) = admin(&env, &["parked", "replay"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("replayed 0 parked jobs"), "{stdout}");
    assert!(
        stdout.contains("left parked: 1 jobs for") && stdout.contains("https://example.org/gone"),
        "{stdout}"
    );
    assert!(stderr.contains("re-enables"), "{stderr}");
    assert!(env.queued().await.is_empty());
    assert_eq!(env.parked().await.len(), 1);

    // Re-enabled by its owner: the replay sends it back to the delivery queue.
    let mut health = subscription.health.clone();
    health.enable();
    aws.store
        .set_subscription_health(&record, &callback, &health)
        .await
        .unwrap();
    let (code, stdout, stderr) = admin(&env, &["parked", "replay"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("replayed 1 parked jobs"), "{stdout}");
    assert!(env.parked().await.is_empty());
    let queued = env.queued().await;
    assert_eq!(queued.len(), 1);
    assert_eq!(
        serde_json::from_str::<DeliveryJob>(&queued[0]).unwrap(),
        job
    );
}
