//! A sync step whose lease was taken but whose answer was lost (a timeout after the write
//! landed) is retried by its queue message; the retry must not find the lease held by
//! itself and end the sync's chain of steps for good.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use webhooks::application::Application;
use webhooks::callback::UrlPolicy;
use webhooks::clock::SystemClock;
use webhooks::handlers::sync_driver::{StepOutcome, SyncDriver};
use webhooks::http_client::{CallbackClient, HttpSettings};
use webhooks::memory::LoggedEvents;
use webhooks::memory::{MemoryQueue, MemoryRecords, MemoryStore};
use webhooks::ports::{ApplicationStore, SyncStore};
use webhooks::record::RecordId;
use webhooks::retry::RetryPolicy;
use webhooks::sync::FullSync;
use webhooks::testing::faults::{Fault, Faults};

/// The first lease answer lost after the lease was taken (a timeout after the write
/// landed).
fn lost_first_lease_answer() -> Faults {
    let lost = AtomicBool::new(false);
    Faults::scripted(move |operation| match operation {
        "lease_sync" if !lost.swap(true, Ordering::SeqCst) => Fault::FailAfter,
        _ => Fault::None,
    })
}

/// Leases that cannot be freed (throttled).
fn unreleasable_leases() -> Faults {
    Faults::scripted(|operation| match operation {
        "release_sync" => Fault::Fail,
        _ => Fault::None,
    })
}

#[tokio::test]
async fn a_step_retried_after_its_lease_answer_was_lost_carries_on() {
    let store = Arc::new(MemoryStore::default());
    let records = Arc::new(MemoryRecords::default());
    let mut ports = webhooks::ports::Ports::over(
        store.clone(),
        records.clone(),
        Arc::new(MemoryQueue::new(Duration::from_secs(60), 5)),
        Arc::new(LoggedEvents::default()),
        Arc::new(SystemClock),
    );
    ports.syncs = Arc::new(store.with_faults(Arc::new(lost_first_lease_answer())));
    for i in 0..5 {
        let person =
            serde_json::json!({"firstName": "P", "consents": {"app-1": ["members.read_name"]}});
        records.put_person(
            &RecordId::parse(&format!("p-{i}")).unwrap(),
            person.as_object().unwrap().clone(),
        );
    }
    let mut app = Application::new(
        &"app-1".parse().unwrap(),
        "key",
        webhooks::clock::Timestamp::UNIX_EPOCH,
    );
    app.webhook.url = Some("https://example.org/hook".into());
    store.put_application(&app).await.unwrap();
    let sync = FullSync::new(&"app-1".parse().unwrap(), 0, webhooks::testing::at_ms(0));
    store.save_sync(&sync).await.unwrap();
    let http = CallbackClient::new(&HttpSettings {
        url_policy: UrlPolicy {
            allow_insecure: true,
        },
        ..HttpSettings::default()
    });
    let driver = SyncDriver {
        ports: &ports,
        http: &http,
        retry: RetryPolicy::default(),
    };
    let deadline = || tokio::time::Instant::now() + Duration::from_secs(30);
    // The step message's first delivery: the lease is taken, the answer lost.
    assert!(
        driver
            .step(
                &sync.key(),
                &webhooks::ports::LeaseHolder::new("step-message-1"),
                deadline()
            )
            .await
            .is_err()
    );
    // The same message, delivered again: it holds the lease, so it carries on.
    assert_eq!(
        driver
            .step(
                &sync.key(),
                &webhooks::ports::LeaseHolder::new("step-message-1"),
                deadline()
            )
            .await
            .unwrap(),
        StepOutcome::Done
    );
    let (state, _) = store.get_sync(&sync.key()).await.unwrap().unwrap();
    assert!(
        state.scan_done && state.scanned == 5,
        "the sync read everybody: {state:?}"
    );
}

#[tokio::test]
async fn a_lease_that_could_not_be_freed_delays_the_next_step_until_it_expires() {
    let store = Arc::new(MemoryStore::default());
    let records = Arc::new(MemoryRecords::default());
    let clock = Arc::new(webhooks::testing::ManualClock::new(
        time::OffsetDateTime::now_utc(),
    ));
    let mut ports = webhooks::ports::Ports::over(
        store.clone(),
        records.clone(),
        Arc::new(MemoryQueue::new(Duration::from_secs(60), 5)),
        Arc::new(LoggedEvents::default()),
        clock.clone(),
    );
    ports.syncs = Arc::new(store.with_faults(Arc::new(unreleasable_leases())));
    let person =
        serde_json::json!({"firstName": "P", "consents": {"app-1": ["members.read_name"]}});
    records.put_person(
        &RecordId::parse("p-0").unwrap(),
        person.as_object().unwrap().clone(),
    );
    let mut app = Application::new(
        &"app-1".parse().unwrap(),
        "key",
        webhooks::clock::Timestamp::UNIX_EPOCH,
    );
    app.webhook.url = Some("https://example.org/hook".into());
    store.put_application(&app).await.unwrap();
    let sync = FullSync::new(&"app-1".parse().unwrap(), 0, webhooks::testing::at_ms(0));
    store.save_sync(&sync).await.unwrap();
    let http = CallbackClient::new(&HttpSettings::default());
    let driver = SyncDriver {
        ports: &ports,
        http: &http,
        retry: RetryPolicy::default(),
    };
    // A step out of time at once hands over to the next, but cannot free its lease.
    let outcome = driver
        .step(
            &sync.key(),
            &webhooks::ports::LeaseHolder::new("step-1"),
            tokio::time::Instant::now(),
        )
        .await
        .unwrap();
    let StepOutcome::Again(delay) = outcome else {
        panic!("the step hands over: {outcome:?}");
    };
    assert!(
        delay >= Duration::from_secs(59),
        "the next step comes once the lease has expired, not into it: {delay:?}"
    );
    clock.advance(delay);
    assert_eq!(
        driver
            .step(
                &sync.key(),
                &webhooks::ports::LeaseHolder::new("step-2"),
                tokio::time::Instant::now() + Duration::from_secs(30)
            )
            .await
            .unwrap(),
        StepOutcome::Done
    );
    let (state, _) = store.get_sync(&sync.key()).await.unwrap().unwrap();
    assert!(state.scan_done && state.scanned == 1, "{state:?}");
}
