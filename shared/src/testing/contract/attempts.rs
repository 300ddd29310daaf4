//! The attempt log: an endpoint's attempts newest first, filtered and paged; the kept
//! messages; failing messages for a recovery; recoveries.

use super::{Adapters, read_pages, record};
use crate::attempts::RecoveryId;
use crate::attempts::{
    Attempt, EndpointKey, LogEndpoint, LoggedAttempt, OutcomeClass, Recovery, StatusFilter,
};
use crate::job::{DeliveryJob, MessageId};
use crate::ports::Page;
use crate::testing::at_ms;
use crate::window::WindowId;

scenarios![
    attempts_newest_first_filtered_and_paged,
    attempt_messages_are_kept_with_their_attempts,
    failed_since_lists_each_failing_message_once,
    recoveries_are_kept_per_endpoint,
];

/// When the jobs were created (2026-11-26T10:00:00Z), epoch ms; attempts come after.
const CREATED_MS: i64 = 1_795_687_200_000;

fn endpoint() -> EndpointKey {
    EndpointKey::application(&"app-log".parse().unwrap())
}

/// An application's endpoint as the log is read.
fn log_endpoint(application: &str) -> LogEndpoint {
    LogEndpoint::application(&application.parse().unwrap())
}

fn job(record_id: &str) -> DeliveryJob {
    let mut person = serde_json::Map::new();
    person.insert("id".into(), record_id.into());
    DeliveryJob::for_application(
        &"app-log".parse().unwrap(),
        &record(record_id),
        person,
        WindowId(9),
        crate::testing::at("2026-11-26T10:00:00.000Z"),
    )
}

/// Attempt `n` of `job` to `endpoint`, `after_ms` after the job was created.
fn attempt(
    job: &DeliveryJob,
    endpoint: &EndpointKey,
    n: u32,
    after_ms: i64,
    ok: bool,
) -> LoggedAttempt {
    let (outcome, status) = if ok {
        (OutcomeClass::Acked, Some(204))
    } else {
        (OutcomeClass::HttpStatus, Some(500))
    };
    LoggedAttempt {
        attempt: Attempt {
            message_id: job.id.clone(),
            endpoint: endpoint.clone(),
            attempt: n,
            at: at_ms(CREATED_MS + after_ms),
            outcome,
            status,
            latency_ms: 12,
            response: if ok { String::new() } else { "down".into() },
        },
        job: job.replayable(),
    }
}

/// (message's record, attempt number) of each attempt, as listed.
fn listed(attempts: &[Attempt], jobs: &[(&str, &DeliveryJob)]) -> Vec<(String, u32)> {
    attempts
        .iter()
        .map(|a| {
            let name = jobs
                .iter()
                .find(|(_, j)| j.id == a.message_id)
                .map_or("?", |(name, _)| name);
            (name.to_owned(), a.attempt)
        })
        .collect()
}

async fn attempt_pages(a: &Adapters, filter: StatusFilter, limit: usize) -> Vec<Page<Attempt>> {
    read_pages(20, |after| {
        let log = a.ports.attempts.clone();
        async move {
            log.attempts(&log_endpoint("app-log"), filter, after.as_deref(), limit)
                .await
        }
    })
    .await
}

async fn attempts_newest_first_filtered_and_paged(a: Adapters) {
    let log = &a.ports.attempts;
    let (m1, m2, m3) = (job("r1"), job("r2"), job("r3"));
    let other = EndpointKey::application(&"app-other".parse().unwrap());
    log.record(vec![
        attempt(&m1, &endpoint(), 1, 1_000, false),
        attempt(&m1, &endpoint(), 2, 3_000, false),
        attempt(&m3, &other, 1, 2_000, false),
    ])
    .await
    .unwrap();
    let m2_first = attempt(&m2, &endpoint(), 1, 5_000, false);
    log.record(vec![
        attempt(&m1, &endpoint(), 3, 7_000, true),
        m2_first.clone(),
    ])
    .await
    .unwrap();
    // Delivered twice (at least once): the same attempt written again is one entry.
    log.record(vec![m2_first.clone(), m2_first]).await.unwrap();
    let jobs = [("m1", &m1), ("m2", &m2), ("m3", &m3)];
    let name = |n: &str, i: u32| (n.to_owned(), i);

    let all = attempt_pages(&a, StatusFilter::All, 10).await;
    assert_eq!(all.len(), 1);
    assert_eq!(
        listed(&all[0].items, &jobs),
        [name("m1", 3), name("m2", 1), name("m1", 2), name("m1", 1)],
        "newest first, this endpoint's only"
    );
    let failed = attempt_pages(&a, StatusFilter::Failed, 10).await;
    assert_eq!(
        listed(&failed[0].items, &jobs),
        [name("m2", 1), name("m1", 2), name("m1", 1)]
    );
    let acked = attempt_pages(&a, StatusFilter::Acked, 10).await;
    assert_eq!(listed(&acked[0].items, &jobs), [name("m1", 3)]);

    for (filter, limit, expected) in [
        (StatusFilter::All, 2, vec![2, 2]),
        (StatusFilter::All, 3, vec![3, 1]),
        (StatusFilter::All, 4, vec![4]),
        (StatusFilter::Failed, 1, vec![1, 1, 1]),
        (StatusFilter::Acked, 1, vec![1]),
    ] {
        let pages = attempt_pages(&a, filter, limit).await;
        assert_eq!(
            pages.iter().map(|p| p.items.len()).collect::<Vec<_>>(),
            expected,
            "{filter:?} in pages of {limit}: a full page ending the listing has no next"
        );
        let joined: Vec<Attempt> = pages.into_iter().flat_map(|p| p.items).collect();
        let whole = attempt_pages(&a, filter, 10).await.remove(0).items;
        assert_eq!(
            joined, whole,
            "{filter:?} in pages of {limit}: the same listing"
        );
    }
    let theirs = a
        .ports
        .attempts
        .attempts(&log_endpoint("app-other"), StatusFilter::All, None, 10)
        .await
        .unwrap();
    assert_eq!(listed(&theirs.items, &jobs), [name("m3", 1)]);
    assert_eq!(theirs.next, None);
    let none = log
        .attempts(&log_endpoint("app-none"), StatusFilter::All, None, 10)
        .await
        .unwrap();
    assert_eq!((none.items.len(), none.next), (0, None));
}

async fn attempt_messages_are_kept_with_their_attempts(a: Adapters) {
    let log = &a.ports.attempts;
    let (m1, m2) = (job("r1"), job("r2"));
    log.record(vec![
        attempt(&m1, &endpoint(), 1, 1_000, false),
        attempt(&m2, &endpoint(), 1, 1_500, false),
    ])
    .await
    .unwrap();
    log.record(vec![
        attempt(&m1, &endpoint(), 2, 3_000, false),
        attempt(&m1, &endpoint(), 3, 7_000, true),
    ])
    .await
    .unwrap();
    let (message, attempts) = log
        .message(&log_endpoint("app-log"), &m1.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(message.job, m1.replayable());
    assert_eq!(message.endpoint, endpoint());
    assert_eq!(
        (
            message.last_attempt,
            message.last_attempt_at.epoch_ms(),
            message.last_outcome
        ),
        (3, CREATED_MS + 7_000, OutcomeClass::Acked),
        "as its latest attempt left it"
    );
    assert_eq!(
        attempts.iter().map(|a| a.attempt).collect::<Vec<_>>(),
        [1, 2, 3],
        "its attempts, oldest first, no other message's"
    );
    let unknown = MessageId::derive(&["unknown"]);
    assert!(
        log.message(&log_endpoint("app-log"), &unknown)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        log.message(&log_endpoint("app-other"), &m1.id)
            .await
            .unwrap()
            .is_none(),
        "kept per endpoint"
    );
    let mut kept: Vec<MessageId> = log
        .messages(
            &log_endpoint("app-log"),
            &[m1.id.clone(), unknown, m2.id.clone()],
        )
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.job.id)
        .collect();
    kept.sort_by(|x, y| x.as_str().cmp(y.as_str()));
    let mut expected = vec![m1.id.clone(), m2.id.clone()];
    expected.sort_by(|x, y| x.as_str().cmp(y.as_str()));
    assert_eq!(kept, expected, "those still kept");
    assert!(
        log.messages(&log_endpoint("app-other"), &[m1.id])
            .await
            .unwrap()
            .is_empty()
    );
}

async fn failed_since_lists_each_failing_message_once(a: Adapters) {
    let log = &a.ports.attempts;
    let jobs: Vec<DeliveryJob> = (1..=5).map(|i| job(&format!("r{i}"))).collect();
    let e = endpoint();
    log.record(vec![
        // m1 failed, then acknowledged: not failing.
        attempt(&jobs[0], &e, 1, 1_000, false),
        attempt(&jobs[0], &e, 2, 7_000, true),
        // m2 failed twice: listed once.
        attempt(&jobs[1], &e, 1, 5_000, false),
        attempt(&jobs[1], &e, 2, 6_000, false),
        // m3 failed only before `since`.
        attempt(&jobs[2], &e, 1, 500, false),
        attempt(&jobs[3], &e, 1, 8_000, false),
        attempt(&jobs[4], &e, 1, 9_000, false),
    ])
    .await
    .unwrap();
    let since = CREATED_MS + 900;
    let ids = |page: &crate::attempts::FailingMessages| {
        page.items
            .iter()
            .map(|m| {
                jobs.iter()
                    .position(|j| j.id == m.job.id)
                    .map_or(0, |i| i + 1)
            })
            .collect::<Vec<_>>()
    };
    let all = log
        .failed_since(&log_endpoint("app-log"), at_ms(since), 10)
        .await
        .unwrap();
    assert_eq!(
        (ids(&all), all.more),
        (vec![2, 4, 5], false),
        "failing messages with a failure since then, oldest failure first, each once"
    );
    let two = log
        .failed_since(&log_endpoint("app-log"), at_ms(since), 2)
        .await
        .unwrap();
    assert_eq!((ids(&two), two.more), (vec![2, 4], true), "more follow");
    let three = log
        .failed_since(&log_endpoint("app-log"), at_ms(since), 3)
        .await
        .unwrap();
    assert_eq!(
        (ids(&three), three.more),
        (vec![2, 4, 5], false),
        "exactly all: no next"
    );
    let late = log
        .failed_since(&log_endpoint("app-log"), at_ms(CREATED_MS + 8_500), 10)
        .await
        .unwrap();
    assert_eq!(ids(&late), [5]);
    assert!(
        log.failed_since(&log_endpoint("app-other"), at_ms(0), 10)
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

async fn recoveries_are_kept_per_endpoint(a: Adapters) {
    let log = &a.ports.attempts;
    let mut recovery = Recovery {
        id: RecoveryId::new("rec_0123456789abcdef0123456789abcdef"),
        endpoint: endpoint(),
        since: "2026-11-26T09:00:00Z".into(),
        started_at: at_ms(CREATED_MS + 60_000),
        messages: vec![job("r1").id, job("r2").id],
        complete: false,
    };
    log.save_recovery(&recovery).await.unwrap();
    assert_eq!(
        log.recovery(&endpoint(), &recovery.id).await.unwrap(),
        Some(recovery.clone())
    );
    let other = EndpointKey::application(&"app-other".parse().unwrap());
    assert_eq!(log.recovery(&other, &recovery.id).await.unwrap(), None);
    assert_eq!(
        log.recovery(
            &endpoint(),
            &RecoveryId::new("rec_ffffffffffffffffffffffffffffffff"),
        )
        .await
        .unwrap(),
        None
    );
    recovery.complete = true;
    log.save_recovery(&recovery).await.unwrap();
    assert_eq!(
        log.recovery(&endpoint(), &recovery.id).await.unwrap(),
        Some(recovery),
        "saved again: replaced"
    );
}
