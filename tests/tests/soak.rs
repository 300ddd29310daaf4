//! The at-least-once promise under faults: a randomized soak of record changes through
//! change capture, flush and delivery, with every store and queue operation liable to
//! fail, fail after taking effect, or hang (the handler is then killed, as a Lambda
//! timeout would), receivers that fail, hang past the ack deadline, reset connections and
//! answer 3xx or 429 with Retry-After, and a lossy message deletion. Besides those passing
//! faults, two permanent ones that never heal: one record whose stored items never decode,
//! and one (record, subscriber) pair whose job the queue always refuses. Then, with the
//! passing faults healed, every (record, subscriber) pair must have a delivery issued after
//! the record's last change, a dead-lettered one, or a poison item an operator sees (set
//! aside, never silently lost), and the flush must have got past every window. Bounded in
//! count and time. A fixed seed unless told (`SOAK_SEED=<seed>` replays one,
//! `RANDOM_SEEDS=1` draws one; it is printed either way); `SOAK_CHANGES=<n>` makes it longer.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::{Instant, timeout};
use webhooks::aws_lambda_events::event::dynamodb::{Event, EventRecord};
use webhooks::callback::{CallbackUrl, UrlPolicy};
use webhooks::clock::{Clock, SystemClock};
use webhooks::events::OpsEvent;
use webhooks::handlers::{ChangeCapture, Delivery, DeliverySettings, Flush, FlushSettings};
use webhooks::job::{DeliveryJob, MessageId, Target};
use webhooks::memory::LoggedEvents;
use webhooks::memory::{MemoryQueue, MemoryRecords, MemoryStore, ReceivedMessage};
use webhooks::ports::{PendingChanges, Ports, SubscriptionStore};
use webhooks::record::RecordId;
use webhooks::retry::RetryPolicy;
use webhooks::subscription::{Subscription, endpoint_name};
use webhooks::testing::faults::{Faults, PermanentFaults};
use webhooks::testing::whole_flush_cursor;
use webhooks::window::{FlushWindows, ManualWindows};

const RECORDS: usize = 40;
const CLIENTS: usize = 6;
const MAX_ATTEMPTS: u32 = 6;

/// A raw HTTP receiver: in chaos it answers from a seeded mix of behaviours; healed, 204.
struct ChaosReceiver {
    port: u16,
    healthy: Arc<AtomicBool>,
    /// (path, webhook-id) of every acknowledged request.
    acked: Arc<Mutex<Vec<(String, String)>>>,
    requests: Arc<Mutex<u64>>,
}

impl ChaosReceiver {
    async fn start(seed: u64) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let healthy = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(Mutex::new(0));
        let rng = Arc::new(Mutex::new(fastrand::Rng::with_seed(seed ^ 0x5eed)));
        let (h, a, r) = (healthy.clone(), acked.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (h, a, r, rng) = (h.clone(), a.clone(), r.clone(), rng.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 2048];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&head).to_string();
                    let path = text.split_whitespace().nth(1).unwrap_or("").to_owned();
                    let id = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("webhook-id:")
                                .map(|v| v.trim().to_owned())
                        })
                        .unwrap_or_default();
                    *r.lock().unwrap() += 1;
                    let roll = if h.load(Ordering::SeqCst) {
                        0.0
                    } else {
                        rng.lock().unwrap().f64()
                    };
                    let answer = match roll {
                        x if x < 0.55 => "HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n",
                        x if x < 0.65 => {
                            "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        }
                        x if x < 0.72 => {
                            "HTTP/1.1 302 Found\r\nlocation: http://169.254.169.254/\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        }
                        x if x < 0.80 => {
                            "HTTP/1.1 429 Too Many Requests\r\nretry-after: 0\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        }
                        x if x < 0.90 => {
                            // Past the ack deadline, then gone.
                            tokio::time::sleep(Duration::from_millis(400)).await;
                            return;
                        }
                        _ => return, // connection reset: closed without an answer
                    };
                    if answer.starts_with("HTTP/1.1 204") {
                        a.lock().unwrap().push((path, id));
                    }
                    let _ = socket.write_all(answer.as_bytes()).await;
                });
            }
        });
        Self {
            port,
            healthy,
            acked,
            requests,
        }
    }
}

fn callback(port: u16, client: usize, record: usize) -> String {
    format!("http://127.0.0.1:{port}/c{client}/r{record}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_notification_is_lost_under_faults() {
    let seed = webhooks_tests::seed("SOAK_SEED", 10424912836766808443);
    let changes: usize = std::env::var("SOAK_CHANGES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    println!("soak: {changes} changes (SOAK_CHANGES=<n> sets how many)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let started = Instant::now();

    let store = Arc::new(MemoryStore::default());
    let records = Arc::new(MemoryRecords::default());
    let queue = Arc::new(MemoryQueue::new(Duration::from_millis(300), MAX_ATTEMPTS));
    let windows = Arc::new(ManualWindows::default());
    // The permanent faults: a record whose items never decode, and a pair whose job the
    // queue always refuses (on another record).
    let corrupt_record = rng.usize(0..RECORDS);
    let refused_record = (corrupt_record + 1 + rng.usize(0..RECORDS - 1)) % RECORDS;
    // The refused pair's callback path, chosen once the subscriptions exist.
    let refused_path: Arc<OnceLock<String>> = Arc::default();
    let refused = refused_path.clone();
    let permanent = PermanentFaults {
        refuse_job: Some(Box::new(move |job: &DeliveryJob| {
            matches!(&job.target, Target::Callback { callback, .. }
                if refused.get().is_some_and(|path| callback.as_str().ends_with(path.as_str())))
        })),
        corrupt_record: Some(Box::new(move |record: &RecordId| {
            record.as_str() == format!("r{corrupt_record}")
        })),
    };
    let faults = Arc::new(Faults::seeded(seed, 0.04, 0.03, 0.01).with_permanent(permanent));
    let events = Arc::new(LoggedEvents::default());
    let faulty_store = Arc::new(store.with_faults(faults.clone()));
    let faulty_queue = Arc::new(queue.with_faults(faults.clone()));
    let ports = Ports {
        clients: faulty_store.clone(),
        tokens: faulty_store.clone(),
        subscriptions: faulty_store.clone(),
        applications: faulty_store.clone(),
        syncs: faulty_store.clone(),
        pending: faulty_store.clone(),
        attempts: store.clone(),
        records: records.clone(),
        queue: faulty_queue,
        events: events.clone(),
        clock: Arc::new(SystemClock),
    };
    let receiver = ChaosReceiver::start(seed).await;

    // Subscriptions: each record watched by 1 to 3 of the clients.
    let mut pairs: Vec<(usize, usize)> = Vec::new();
    for record in 0..RECORDS {
        let mut clients: Vec<usize> = (0..CLIENTS).collect();
        rng.shuffle(&mut clients);
        for &client in &clients[..rng.usize(1..=3)] {
            let subscription = Subscription {
                record: RecordId::parse(&format!("r{record}")).unwrap(),
                callback: CallbackUrl::parse(
                    &callback(receiver.port, client, record),
                    UrlPolicy {
                        allow_insecure: true,
                    },
                )
                .unwrap(),
                client_id: format!("client-{client}").parse().unwrap(),
                created_at: SystemClock.now().whole_secs(),
                health: Default::default(),
            };
            store.register(&subscription).await.unwrap();
            pairs.push((record, client));
        }
    }
    let refused_client = pairs
        .iter()
        .find(|(r, _)| *r == refused_record)
        .map(|(_, c)| *c)
        .expect("every record has a subscriber");
    refused_path
        .set(format!("/c{refused_client}/r{refused_record}"))
        .unwrap();

    let capture = ChangeCapture {
        pending: faulty_store.clone(),
        windows: windows.clone(),
    };
    let flush = Flush {
        delivery: None,
        ports: ports.clone(),
        windows: windows.clone(),
        settings: FlushSettings {
            page_size: 7,
            // A killed run's lease lasts this long past its deadline.
            lease_margin: Duration::from_millis(100),
            ..FlushSettings::default()
        },
    };
    let http = webhooks::testing::local_callback_client(Duration::from_millis(200));
    let retry = RetryPolicy {
        base: Duration::from_millis(20),
        max_attempts: MAX_ATTEMPTS,
        jitter: 0.1,
    };
    let delivery = Arc::new(Delivery::new(
        ports.clone(),
        http,
        DeliverySettings {
            retry,
            concurrency: 8,
            ..DeliverySettings::default()
        },
    ));

    // Delivery workers: receive, invoke (killed after 1 s, as a Lambda timeout), delete
    // what succeeded (a deletion is lost now and then: the message comes back).
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..3u64 {
        let (queue, delivery, stop) = (queue.clone(), delivery.clone(), stop.clone());
        let mut wrng = fastrand::Rng::with_seed(seed.wrapping_add(w));
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let messages = queue.receive(10, Duration::from_millis(50)).await;
                if messages.is_empty() {
                    continue;
                }
                let event = ReceivedMessage::batch_event(&messages, "arn:soak");
                let deadline = Instant::now() + Duration::from_secs(1);
                let Ok(response) =
                    timeout(Duration::from_secs(1), delivery.handle(event, deadline)).await
                else {
                    continue; // killed mid-batch: nothing is deleted
                };
                for m in &messages {
                    let failed = response
                        .batch_item_failures
                        .iter()
                        .any(|f| f.item_identifier == m.message_id);
                    if !failed && wrng.f64() > 0.02 {
                        queue.delete(&m.receipt_handle);
                    }
                }
            }
        }));
    }

    // Chaos: changes, captured from a stream that retries from the first failed record,
    // and flushes that may crash anywhere (the next schedule runs them again).
    let mut last_change_window: HashMap<usize, u64> = HashMap::new();
    let mut stream: VecDeque<EventRecord> = VecDeque::new();
    let mut made = 0;
    let (mut capture_retries, mut flush_crashes) = (0u64, 0u64);
    while made < changes && started.elapsed() < Duration::from_secs(40) {
        for _ in 0..rng.usize(1..=25).min(changes - made) {
            let record = rng.usize(0..RECORDS);
            let person = serde_json::json!({"v": made}).as_object().unwrap().clone();
            stream.push_back(
                records.put_person(&RecordId::parse(&format!("r{record}")).unwrap(), person),
            );
            last_change_window.insert(record, windows.current().0);
            made += 1;
        }
        while !stream.is_empty() {
            let mut event = Event::default();
            event.records = stream.iter().take(10).cloned().collect();
            match timeout(Duration::from_millis(200), capture.handle(event)).await {
                Ok(response) => match response
                    .batch_item_failures
                    .first()
                    .and_then(|f| f.item_identifier.clone())
                {
                    None => {
                        let n = stream.len().min(10);
                        stream.drain(..n);
                    }
                    Some(sequence) => {
                        capture_retries += 1;
                        while stream
                            .front()
                            .is_some_and(|r| r.change.sequence_number.as_deref() != Some(&sequence))
                        {
                            stream.pop_front();
                        }
                    }
                },
                Err(_) => capture_retries += 1,
            }
        }
        if rng.f64() < 0.5 {
            windows.close_current();
            if !matches!(
                timeout(
                    Duration::from_millis(300),
                    flush.run(Some(
                        tokio::time::Instant::now() + Duration::from_millis(250)
                    ))
                )
                .await,
                Ok(Ok(_))
            ) {
                flush_crashes += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Healed: no more faults, healthy receivers; flush everything and let the queue drain.
    faults.heal();
    receiver.healthy.store(true, Ordering::SeqCst);
    windows.close_current();
    let final_window = windows.current().0;
    // Until a run completes (a killed run's lease expires first). Nothing stuck: with the
    // passing faults healed, a run gets through every window (a poison record no longer
    // fails it), so a few failed runs at most.
    let mut failed_runs = 0;
    loop {
        match flush.run(None).await {
            Ok(report) if !report.lease_held => break,
            Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => {
                failed_runs += 1;
                assert!(
                    failed_runs < 20,
                    "the flush is stuck after healing: {e} — replay with SOAK_SEED={seed}"
                );
            }
        }
    }
    assert_eq!(
        whole_flush_cursor(store.as_ref()).await.map(|c| c.window.0),
        Some(final_window),
        "the flush got past every closed window (the one after them is still open)"
    );
    let drain_deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let depth = queue.depth();
        if depth.visible + depth.in_flight == 0 || Instant::now() > drain_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        let _ = w.await;
    }

    // The invariant.
    let acked: Vec<(String, String)> = receiver.acked.lock().unwrap().clone();
    let acked_ids: HashSet<(String, String)> = acked.iter().cloned().collect();
    let dead: Vec<DeliveryJob> = queue
        .dead_letters()
        .iter()
        .map(|b| serde_json::from_str(b).unwrap())
        .collect();
    let dead_ids: BTreeSet<String> = dead.iter().map(|j| j.id.as_str().to_owned()).collect();
    let poison = store.poison_items().await.unwrap();
    let announced: HashSet<webhooks::poison::PoisonId> = events
        .published()
        .into_iter()
        .filter_map(|e| match e {
            OpsEvent::ChangeSetAside { poison_id, .. } => Some(poison_id),
            _ => None,
        })
        .collect();
    for item in &poison {
        assert!(
            announced.contains(&item.id()),
            "poison item {} set aside without an operational event",
            item.id()
        );
    }
    let mut lost = Vec::new();
    let mut set_aside = Vec::new();
    let mut expected_pairs = 0;
    for &(record, client) in &pairs {
        let Some(&from) = last_change_window.get(&record) else {
            continue;
        };
        expected_pairs += 1;
        let url = callback(receiver.port, client, record);
        let path = format!("/c{client}/r{record}");
        let satisfied = (from..=final_window).any(|w| {
            let id = MessageId::derive_in(
                webhooks::window::WindowId(w),
                &["callback", &w.to_string(), &format!("r{record}"), &url],
            )
            .as_str()
            .to_owned();
            acked_ids.contains(&(path.clone(), id.clone())) || dead_ids.contains(&id)
        });
        // Set aside: a poison item for this record (all subscribers, or this one) in a
        // window at or after its last change — visible to an operator, who replays it.
        let endpoint = endpoint_name(
            &RecordId::parse(&format!("r{record}")).unwrap(),
            &CallbackUrl::parse(
                &url,
                UrlPolicy {
                    allow_insecure: true,
                },
            )
            .unwrap(),
        );
        let poisoned = poison.iter().any(|p| {
            p.record.as_str() == format!("r{record}")
                && p.window.0 >= from
                && p.endpoint.as_ref().is_none_or(|e| *e == endpoint)
        });
        if satisfied {
            continue;
        }
        if poisoned {
            set_aside.push((record, client));
        } else {
            lost.push((record, client, from));
        }
    }
    let distinct: HashSet<&(String, String)> = acked.iter().collect();
    let mut by_kind = BTreeMap::new();
    for job in &dead {
        if let Target::Callback { .. } = job.target {
            *by_kind.entry("callback").or_insert(0) += 1;
        }
    }
    let counts = faults.counts();
    println!(
        "soak: seed {seed}, {made} changes over {RECORDS} records and {} subscriptions, {} windows, {:.1} s",
        pairs.len(),
        final_window,
        started.elapsed().as_secs_f64()
    );
    println!(
        "soak: {} requests, {} deliveries acknowledged, {} distinct, {} duplicates, {} dead-lettered, {} pairs checked, {} lost",
        *receiver.requests.lock().unwrap(),
        acked.len(),
        distinct.len(),
        acked.len() - distinct.len(),
        dead.len(),
        expected_pairs,
        lost.len()
    );
    println!(
        "soak: injected {} failures, {} failures after effect, {} hangs in {} operations; {capture_retries} capture retries, {flush_crashes} failed or killed flushes",
        counts.failed, counts.failed_after, counts.hung, counts.operations
    );
    println!(
        "soak: permanent faults (record r{corrupt_record} corrupt, pair (r{refused_record}, c{refused_client}) refused) hit {} times; {} poison items, {} pairs set aside",
        counts.permanent,
        poison.len(),
        set_aside.len()
    );
    assert!(
        lost.is_empty(),
        "lost (record, client, window): {lost:?} — replay with SOAK_SEED={seed}"
    );
    // The permanent faults were exercised and their pairs are visible as set aside.
    for poisoned in [corrupt_record, refused_record] {
        if last_change_window.contains_key(&poisoned) {
            assert!(
                set_aside.iter().any(|(r, _)| *r == poisoned),
                "record r{poisoned} changed but nothing of it was set aside: {poison:?}"
            );
        }
    }
    assert!(!poison.is_empty(), "the permanent faults were exercised");
    assert!(
        set_aside
            .iter()
            .all(|&(r, c)| r == corrupt_record || (r, c) == (refused_record, refused_client)),
        "only the poisoned pairs are set aside: {set_aside:?}"
    );
}
