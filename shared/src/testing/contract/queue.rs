//! The delivery queue (SQS semantics: visibility timeouts, receive counts, the dead-letter
//! queue after the maximum receive count) and the parked queue.

use super::{Adapters, person, record};
use crate::job::{DeliveryJob, MessageId};
use crate::memory::ReceivedMessage;
use crate::message::{self, MAX_MESSAGE_BYTES, Refusal};
use crate::window::WindowId;
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::time::Instant;

scenarios![
    queue_delivers_enqueued_jobs_and_reports_refusals,
    queue_hides_a_received_message_until_its_visibility_timeout,
    queue_retry_later_hides_for_the_delay,
    queue_dead_letters_after_the_maximum_receives,
    queue_delayed_job_waits_for_its_delay,
    parked_jobs_are_held_removed_and_released,
];

/// Slack on every time the queue is expected to keep (a remote queue's clock and round
/// trips).
const SLACK: Duration = Duration::from_millis(300);

fn job(i: usize) -> DeliveryJob {
    DeliveryJob::for_application(
        &"app-1".parse().unwrap(),
        &record(&format!("p-{i}")),
        person(json!({"personID": format!("p-{i}"), "firstName": "Ann"})),
        WindowId(1),
        crate::testing::at("2026-11-26T10:00:00.000Z"),
    )
}

fn job_id(body: &str) -> MessageId {
    message::decode(body).expect("a queued body decodes").id
}

/// Receives until `n` messages came or `within` passed.
async fn receive_n(a: &Adapters, n: usize, within: Duration) -> Vec<ReceivedMessage> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    while got.len() < n && Instant::now() < deadline {
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_secs(1));
        got.extend(a.harness.receive(n - got.len(), wait).await);
    }
    got
}

/// Enqueues one job and receives it (the first receive).
async fn enqueue_and_receive(a: &Adapters) -> Vec<ReceivedMessage> {
    a.ports
        .queue
        .enqueue(&[job(0)])
        .await
        .unwrap()
        .all()
        .unwrap();
    receive_n(a, 1, Duration::from_secs(10)).await
}

/// Nothing to receive right now.
async fn nothing_visible(a: &Adapters) -> bool {
    a.harness.receive(10, Duration::ZERO).await.is_empty()
}

async fn queue_delivers_enqueued_jobs_and_reports_refusals(a: Adapters) {
    let huge = DeliveryJob::for_application(
        &"app-1".parse().unwrap(),
        &record("p-huge"),
        person(json!({"firstName": "x".repeat(MAX_MESSAGE_BYTES)})),
        WindowId(1),
        crate::testing::at("2026-11-26T10:00:00.000Z"),
    );
    let jobs = [job(0), huge, job(2)];
    let enqueued = a.ports.queue.enqueue(&jobs).await.unwrap();
    assert_eq!(enqueued.refused.len(), 1, "{enqueued:?}");
    assert_eq!(enqueued.refused[0].index, 1, "refused by its position");
    assert!(
        matches!(enqueued.refused[0].refusal, Refusal::TooLarge { .. }),
        "{enqueued:?}"
    );
    let got = receive_n(&a, 2, Duration::from_secs(10)).await;
    let ids: BTreeSet<String> = got
        .iter()
        .map(|m| job_id(&m.body).as_str().to_owned())
        .collect();
    let expected: BTreeSet<String> = [&jobs[0], &jobs[2]]
        .iter()
        .map(|j| j.id.as_str().to_owned())
        .collect();
    assert_eq!(ids, expected, "the others, each once");
    assert!(got.iter().all(|m| m.receive_count == 1), "{got:?}");
    assert_eq!(
        message::decode(&got[0].body).ok().as_ref(),
        jobs.iter().find(|j| j.id == job_id(&got[0].body)),
        "the job as enqueued"
    );
    assert!(
        a.ports.queue.enqueue(&[]).await.unwrap().refused.is_empty(),
        "nothing to enqueue"
    );
}

async fn queue_hides_a_received_message_until_its_visibility_timeout(a: Adapters) {
    let first = enqueue_and_receive(&a).await;
    let received_at = Instant::now();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].receive_count, 1);
    assert!(nothing_visible(&a).await, "hidden while in flight");
    let timeout = a.queue.visibility_timeout;
    let again = receive_n(&a, 1, timeout + Duration::from_secs(5)).await;
    let hidden = received_at.elapsed();
    assert_eq!(again.len(), 1, "back after the visibility timeout");
    assert_eq!(again[0].message_id, first[0].message_id, "the same message");
    assert_eq!(again[0].receive_count, 2, "received twice");
    assert!(
        hidden + SLACK >= timeout,
        "hidden for {hidden:?}, the timeout is {timeout:?}"
    );
}

async fn queue_retry_later_hides_for_the_delay(a: Adapters) {
    let timeout = a.queue.visibility_timeout;
    assert!(
        timeout >= Duration::from_secs(3),
        "the visibility timeout ({timeout:?}) must be well over the 1 s retry delay"
    );
    let first = enqueue_and_receive(&a).await;
    assert_eq!(first.len(), 1);
    a.ports
        .queue
        .retry_later(&first[0].receipt_handle, Duration::from_secs(1))
        .await
        .unwrap();
    let hidden_at = Instant::now();
    assert!(nothing_visible(&a).await, "hidden for the delay");
    let again = receive_n(&a, 1, Duration::from_secs(5)).await;
    let hidden = hidden_at.elapsed();
    assert_eq!(again.len(), 1, "back after the delay");
    assert_eq!(again[0].receive_count, 2);
    assert!(
        hidden + SLACK >= Duration::from_secs(1) && hidden < timeout,
        "hidden for {hidden:?}: the delay (1 s), not the visibility timeout ({timeout:?})"
    );
}

async fn queue_dead_letters_after_the_maximum_receives(a: Adapters) {
    let failing = job(0);
    a.ports
        .queue
        .enqueue(std::slice::from_ref(&failing))
        .await
        .unwrap()
        .all()
        .unwrap();
    for receive in 1..=a.queue.max_receive_count {
        let got = receive_n(&a, 1, Duration::from_secs(10)).await;
        assert_eq!(got.len(), 1, "receive {receive}");
        assert_eq!(got[0].receive_count, receive);
        a.ports
            .queue
            .retry_later(&got[0].receipt_handle, Duration::ZERO)
            .await
            .unwrap();
    }
    assert!(
        receive_n(&a, 1, Duration::from_secs(2)).await.is_empty(),
        "not received again after the last receive"
    );
    let straight = job(1);
    a.ports.queue.dead_letter(&straight).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let dead = loop {
        let dead: BTreeSet<String> = a
            .harness
            .dead_letters()
            .await
            .iter()
            .map(|body| job_id(body).as_str().to_owned())
            .collect();
        if dead.len() >= 2 || Instant::now() >= deadline {
            break dead;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        dead,
        BTreeSet::from([
            failing.id.as_str().to_owned(),
            straight.id.as_str().to_owned()
        ]),
        "both in the dead-letter queue: moved by the receive count, and put there"
    );
}

async fn queue_delayed_job_waits_for_its_delay(a: Adapters) {
    let delay = Duration::from_secs(2);
    a.ports.queue.enqueue_delayed(&job(0), delay).await.unwrap();
    let sent_at = Instant::now();
    assert!(nothing_visible(&a).await, "not before its delay");
    let got = receive_n(&a, 1, delay + Duration::from_secs(5)).await;
    let waited = sent_at.elapsed();
    assert_eq!(got.len(), 1, "received after its delay");
    assert_eq!(got[0].receive_count, 1);
    assert!(waited + SLACK >= delay, "visible after {waited:?}");
}

async fn parked_jobs_are_held_removed_and_released(a: Adapters) {
    let (one, two) = (job(0), job(1));
    a.ports.queue.park(&one).await.unwrap();
    a.ports.queue.park(&two).await.unwrap();
    let (short, long) = (Duration::from_secs(1), Duration::from_secs(60));
    let first = a.parked.take_parked(1, short).await.unwrap();
    let held_at = Instant::now();
    assert_eq!(first.len(), 1, "at most the number asked for");
    let second = a.parked.take_parked(10, long).await.unwrap();
    assert_eq!(second.len(), 1, "a held one is not handed out again");
    assert_ne!(first[0].message_id, second[0].message_id);
    let taken: BTreeSet<String> = [&first[0], &second[0]]
        .iter()
        .map(|m| job_id(&m.body).as_str().to_owned())
        .collect();
    assert_eq!(
        taken,
        BTreeSet::from([one.id.as_str().to_owned(), two.id.as_str().to_owned()])
    );
    let back = loop {
        let got = a.parked.take_parked(10, long).await.unwrap();
        if !got.is_empty() || held_at.elapsed() > Duration::from_secs(8) {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let held = held_at.elapsed();
    assert_eq!(
        back.iter().map(|m| &m.message_id).collect::<Vec<_>>(),
        [&first[0].message_id],
        "not removed within its hold: parked again as it was"
    );
    assert!(held + SLACK >= short, "held for {held:?}");
    a.parked.remove_parked(&back[0].handle).await.unwrap();
    a.parked.release_parked(&second[0].handle).await.unwrap();
    let again = a.parked.take_parked(10, long).await.unwrap();
    assert_eq!(
        again.iter().map(|m| &m.message_id).collect::<Vec<_>>(),
        [&second[0].message_id],
        "released: at once; removed: never again"
    );
    assert!(nothing_visible(&a).await, "parked is not queued");
    assert!(
        a.harness.dead_letters().await.is_empty(),
        "parked is not dead-lettered"
    );
}
