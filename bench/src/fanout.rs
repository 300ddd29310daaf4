//! Figure 3: the real flush (`Flush::run`) over the in-memory adapters — pending records x
//! subscriptions -> delivery jobs on the queue — and how its time grows with the input.

use crate::report::{Table, Verdict};
use std::sync::Arc;
use std::time::{Duration, Instant};
use webhooks::application::Application;
use webhooks::callback::{CallbackUrl, UrlPolicy};
use webhooks::clock::SystemClock;
use webhooks::handlers::{Flush, FlushSettings};
use webhooks::memory::{MemoryQueue, MemoryRecords, MemoryStore};
use webhooks::ports::{ApplicationStore, PendingChanges, SubscriptionStore};
use webhooks::record::RecordId;
use webhooks::subscription::Subscription;
use webhooks::window::{FlushWindows, ManualWindows};

/// One flush input shape.
#[derive(Debug, Clone, Copy)]
struct Shape {
    records: usize,
    subscriptions: usize,
    members: bool,
}

impl Shape {
    fn jobs(&self) -> usize {
        self.records * (self.subscriptions + usize::from(self.members))
    }
}

/// Builds the state, runs one flush, returns (jobs, time of the flush alone).
async fn run(shape: Shape) -> (u64, Duration) {
    let (jobs, took, _) = run_measured(shape).await;
    (jobs, took)
}

/// The flush's CPU per job over the in-memory adapters, ORCID-style, ten subscriptions per
/// record (the process's CPU clock around the flush alone: the handler's own work, the
/// in-memory adapters' on top).
pub async fn flush_cpu_per_job() -> Duration {
    let shape = Shape {
        records: 5_000,
        subscriptions: 10,
        members: false,
    };
    let (jobs, _, cpu) = run_measured(shape).await;
    cpu / u32::try_from(jobs).unwrap_or(u32::MAX).max(1)
}

/// [`run`], with the process's CPU time over the flush.
async fn run_measured(shape: Shape) -> (u64, Duration, Duration) {
    let store = Arc::new(MemoryStore::default());
    let records = Arc::new(MemoryRecords::default());
    let queue = Arc::new(MemoryQueue::new(Duration::from_secs(30), 5));
    let windows = Arc::new(ManualWindows::default());
    if shape.members {
        let mut app = Application::new(
            &"app-bench".parse().unwrap(),
            "key-bench",
            webhooks::clock::Timestamp::UNIX_EPOCH,
        );
        app.webhook.url = Some("https://hooks.example.org/members".to_owned().into());
        store.put_application(&app).await.expect("memory put");
    }
    let window = windows.current();
    for r in 0..shape.records {
        let record = RecordId::parse(&format!("p-{r:07}")).expect("record id");
        for s in 0..shape.subscriptions {
            let callback = CallbackUrl::parse(
                &format!("https://hooks{s}.example.org/{}/updated", record.as_str()),
                UrlPolicy::default(),
            )
            .expect("callback");
            store
                .register(&Subscription {
                    record: record.clone(),
                    callback,
                    client_id: format!("APP-{s}").parse().unwrap(),
                    created_at: webhooks::clock::Timestamp::UNIX_EPOCH,
                    health: Default::default(),
                })
                .await
                .expect("memory register");
        }
        if shape.members {
            let person = serde_json::json!({
                "firstName": "Josiah", "lastName": "Carberry", "email": "j@example.org",
                "consents": {"app-bench": ["members.read_name", "members.email"]},
            });
            records.put_person(&record, person.as_object().expect("object").clone());
        }
        store.mark(window, &record).await.expect("memory mark");
    }
    windows.close_current();
    let flush = Flush {
        // Figure 3 measures the fan-out onto the queue.
        delivery: None,
        ports: webhooks::ports::Ports::over(
            store,
            records,
            queue.clone(),
            Arc::new(webhooks::memory::LoggedEvents::default()),
            Arc::new(SystemClock),
        ),
        windows,
        settings: FlushSettings::default(),
    };
    let t = Instant::now();
    let cpu = crate::simulated::cpu_clock(libc::CLOCK_PROCESS_CPUTIME_ID);
    let report = tokio::time::timeout(Duration::from_secs(60), flush.run(None))
        .await
        .expect("a flush finishes within 60 s")
        .expect("memory flush");
    let cpu = crate::simulated::cpu_clock(libc::CLOCK_PROCESS_CPUTIME_ID) - cpu;
    let took = t.elapsed();
    assert_eq!(report.jobs as usize, shape.jobs(), "{report:?}");
    assert_eq!(queue.depth().visible, shape.jobs());
    (report.jobs, took, cpu)
}

fn exponent(small: (u64, Duration), large: (u64, Duration)) -> f64 {
    (large.1.as_secs_f64() / small.1.as_secs_f64()).ln() / (large.0 as f64 / small.0 as f64).ln()
}

/// Runs the series and adds the rows.
pub async fn fanout(table: &mut Table) {
    // Median of three runs per shape.
    async fn timed(shape: Shape) -> (u64, Duration) {
        let mut samples = Vec::new();
        for _ in 0..3 {
            samples.push(run(shape).await);
        }
        samples.sort_by_key(|s| s.1);
        samples[1]
    }
    let series: [(&str, Vec<Shape>); 3] = [
        (
            "ORCID-style, 10 subscriptions per record, records grow",
            [2_500, 5_000, 10_000, 20_000]
                .map(|records| Shape {
                    records,
                    subscriptions: 10,
                    members: false,
                })
                .to_vec(),
        ),
        (
            "ORCID-style, 1 subscription per record, records grow",
            [12_500, 25_000, 50_000, 100_000]
                .map(|records| Shape {
                    records,
                    subscriptions: 1,
                    members: false,
                })
                .to_vec(),
        ),
        (
            "ORCID-style, 10 000 records, subscriptions per record grow",
            [1, 2, 5, 10]
                .map(|subscriptions| Shape {
                    records: 10_000,
                    subscriptions,
                    members: false,
                })
                .to_vec(),
        ),
    ];
    for (name, shapes) in series {
        let mut points = Vec::new();
        for shape in shapes {
            points.push(timed(shape).await);
        }
        let at_100k = points
            .iter()
            .find(|p| p.0 == 100_000)
            .copied()
            .unwrap_or(points[points.len() - 1]);
        let k = exponent(points[0], points[points.len() - 1]);
        let curve = points
            .iter()
            .map(|(jobs, d)| format!("{}k: {:.0} ms", jobs / 1000, d.as_secs_f64() * 1000.0))
            .collect::<Vec<_>>()
            .join(", ");
        table.row(
            "3 flush fan-out",
            name,
            format!(
                "{:.0} jobs/s at {}k jobs; {curve}; growth exponent {k:.2}",
                at_100k.0 as f64 / at_100k.1.as_secs_f64(),
                at_100k.0 / 1000
            ),
            "100k jobs, linear (exponent ~1)",
            Verdict::judge(k < 1.25, &format!("exponent {k:.2}")),
        );
    }
    let members = timed(Shape {
        records: 100_000,
        subscriptions: 0,
        members: true,
    })
    .await;
    table.row(
        "3 flush fan-out",
        "Members-style, 100 000 consented persons, 1 application",
        format!(
            "{:.0} jobs/s ({:.0} ms for 100k jobs)",
            members.0 as f64 / members.1.as_secs_f64(),
            members.1.as_secs_f64() * 1000.0
        ),
        "100k jobs",
        Verdict::Info,
    );
}
