//! Endpoint health on the local runner: a callback failing every attempt for the
//! configured period is disabled (and its queued jobs are parked, not dead-lettered: the
//! DLQ means "something failed"), `410 Gone` disables at once, the owner sees why and
//! re-enables it, a replay sends parked jobs back only once their endpoint is enabled, and
//! operators get operational events.

use serde_json::{Value, json};
use std::time::Duration;
use webhooks::events::OpsEvent;
use webhooks::health::DisableReason;
use webhooks::retry::RetryPolicy;
use webhooks_local::{LocalConfig, LocalService};
use webhooks_tests::Receiver;
use webhooks_tests::api::LocalApi;

const WAIT: Duration = Duration::from_secs(10);

/// The runner's API as APP-1, with its token.
struct Api {
    local: LocalApi,
    token: String,
}

impl Api {
    async fn new(service: &LocalService) -> Self {
        let local = LocalApi::new(service.addr, "APP-1", "secret-1");
        let token = local.token().await;
        Self { local, token }
    }

    async fn webhook(&self, method: reqwest::Method, callback: &str) -> (u16, Value) {
        let response = self.local.webhook(method, &self.token, callback).await;
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// `POST /local/parked/replay`.
    async fn replay_parked(&self) -> Value {
        self.local.post("/local/parked/replay").await
    }

    async fn change_and_flush(&self) -> Value {
        self.local.change(json!({"v": fastrand_value()})).await;
        self.local.flush().await
    }
}

fn fastrand_value() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

async fn service(disable_after: Duration) -> LocalService {
    LocalService::start(LocalConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        flush_interval: Duration::from_secs(3600),
        flush_grace: Duration::from_millis(50),
        retry: RetryPolicy {
            base: Duration::from_millis(100),
            max_attempts: 8,
            jitter: 0.0,
        },
        delivery_timeout: Duration::from_secs(2),
        allow_insecure_callbacks: true,
        clients: vec![("APP-1".parse().unwrap(), "secret-1".into())],
        endpoint_disable_after: disable_after,
        ..LocalConfig::default()
    })
    .await
    .unwrap()
}

async fn wait_until(check: impl AsyncFnMut() -> bool) -> bool {
    webhooks_tests::wait_until(WAIT, check).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_failing_for_the_period_is_disabled_and_re_enabled_by_its_owner() {
    let service = service(Duration::from_secs(2)).await;
    let api = Api::new(&service).await;
    let receiver = Receiver::start().await;
    receiver.script(&[500; 12]);
    let callback = receiver.url("/flaky");
    assert_eq!(api.webhook(reqwest::Method::PUT, &callback).await.0, 201);
    api.change_and_flush().await;

    // Attempts at 0, 0.1, 0.3, 0.7, 1.5 and 3.1 s: failing for over 2 s (health keeps
    // whole seconds), so disabled.
    assert!(
        wait_until(
            async || api.webhook(reqwest::Method::GET, &callback).await.1["status"] == "disabled"
        )
        .await
    );
    let (status, health) = api.webhook(reqwest::Method::GET, &callback).await;
    assert_eq!(status, 200);
    // Failing for the period (under a day: 0 whole days), the latest error kept.
    let last_error = health["lastError"].as_str().unwrap_or_default();
    assert!(last_error.contains("500"), "the status answered: {health}");
    let reason = DisableReason::FailingFor {
        days: 0,
        last_error: last_error.to_owned(),
    };
    assert_eq!(health["disabledReason"], reason.to_string(), "{health}");
    let attempts = receiver.hits().len();
    assert!((5..=6).contains(&attempts), "{attempts} attempts");

    // The job still queued is parked, not dead-lettered; a new change enqueues nothing.
    assert!(wait_until(async || service.runtime.queue_depth().await.unwrap().parked == 1).await);
    assert_eq!(service.runtime.queue_depth().await.unwrap().dead, 0);
    assert_eq!(api.change_and_flush().await["jobs"], 0);
    // Replaying while it is still disabled leaves it parked: no round trip through
    // delivery, no attempt.
    let replay = api.replay_parked().await;
    assert_eq!(replay["replayed"], 0, "{replay}");
    assert_eq!(
        replay["still_disabled"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(endpoint, n)| (endpoint.ends_with("/flaky"), n.as_u64()))
            .collect::<Vec<_>>(),
        [(true, Some(1))],
        "{replay}"
    );
    // Nothing was sent back: had the replay queued the job, it would be visible (or in
    // flight) now, since the replay has returned.
    assert_eq!(
        service.runtime.queue_depth().await.unwrap(),
        webhooks::memory::QueueDepth {
            parked: 1,
            ..Default::default()
        }
    );
    assert_eq!(receiver.hits().len(), attempts, "no attempt while disabled");

    // Operators were told.
    let events = service.runtime.events.published();
    assert!(events.iter().any(|e| matches!(e, OpsEvent::EndpointDisabled { endpoint, .. } if endpoint.ends_with("/flaky"))), "{events:?}");

    // The receiver has healed (what was left of its failing script is dropped), and the
    // owner registers the callback again: enabled.
    receiver.script(&[]);
    assert_eq!(api.webhook(reqwest::Method::PUT, &callback).await.0, 204);
    assert_eq!(
        api.webhook(reqwest::Method::GET, &callback).await.1["status"],
        "enabled"
    );
    assert!(
        service
            .runtime
            .events
            .published()
            .iter()
            .any(|e| matches!(e, OpsEvent::EndpointEnabled { .. }))
    );
    // Enabled again: the replay sends the parked job, and a new change is delivered too,
    // each on its first attempt.
    assert_eq!(api.replay_parked().await["replayed"], 1);
    assert_eq!(api.change_and_flush().await["jobs"], 1);
    let delivered = |hits: &[webhooks_tests::Hit]| {
        hits.iter()
            .filter(|h| h.path == "/flaky" && h.status == 204)
            .count()
    };
    assert!(wait_until(async || delivered(&receiver.hits()) == 2).await);
    assert!(
        wait_until(async || {
            let depth = service.runtime.queue_depth().await.unwrap();
            depth.visible + depth.in_flight == 0
        })
        .await
    );
    let after_healing = &receiver.hits()[attempts..];
    assert_eq!(
        after_healing.iter().map(|h| h.status).collect::<Vec<_>>(),
        [204, 204],
        "after healing, one successful attempt each for the replayed job and the new change"
    );
    assert_eq!(service.runtime.queue_depth().await.unwrap().parked, 0);
    assert_eq!(service.runtime.queue_depth().await.unwrap().dead, 0);
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_disables_at_once_and_exhausted_messages_are_announced() {
    let service = service(Duration::from_secs(3600)).await;
    let api = Api::new(&service).await;
    let receiver = Receiver::start().await;
    receiver.script(&[410]);
    let gone = receiver.url("/gone");
    assert_eq!(api.webhook(reqwest::Method::PUT, &gone).await.0, 201);
    api.change_and_flush().await;
    assert!(
        wait_until(
            async || api.webhook(reqwest::Method::GET, &gone).await.1["status"] == "disabled"
        )
        .await
    );
    let health = api.webhook(reqwest::Method::GET, &gone).await.1;
    assert_eq!(health["disabledReason"], DisableReason::Gone.to_string());
    assert_eq!(receiver.hits().len(), 1, "one attempt, then disabled");
    assert!(
        wait_until(async || service.runtime.queue_depth().await.unwrap().parked == 1).await,
        "the message waits in the parked queue"
    );
    assert_eq!(
        service.runtime.queue_depth().await.unwrap().dead,
        0,
        "a job parked for a disabled endpoint is not a failure in the DLQ"
    );
    let events = service.runtime.events.published();
    assert!(
        events.iter().any(
            |e| matches!(e, OpsEvent::EndpointDisabled { reason, .. } if *reason == DisableReason::Gone.to_string())
        ),
        "{events:?}"
    );
    service.stop().await;
}
