//! Runs one step of a full sync (see [`crate::sync`] for the design).

use super::outbound::application_request;
use crate::application::Application;
use crate::attempts::{Attempt, EndpointKey, LoggedAttempt};
use crate::callback::CallbackUrl;
use crate::events::OpsEvent;
use crate::http_client::{AttemptOutcome, CallbackClient};
use crate::ids::SyncKey;
use crate::job::{DeliveryJob, Target};
use crate::members::{ScopedPerson, consented_scopes, scoped_person};
use crate::ports::{
    BackendError, Lease, LeaseHolder, MAX_SEND_DELAY, OpsEvents, PersonOutcome, Ports, SyncStore,
    announce,
};
use crate::record::RecordId;
use crate::retry::RetryPolicy;
use crate::sync::{FullSync, SyncState};
use std::time::Duration;
use tokio::time::Instant;

/// Persons read per page when fanning out.
const FAN_OUT_PAGE: usize = 100;
/// Persons read per page when paced.
const PACED_PAGE: usize = 25;
/// How long past its deadline a step's lease lasts (then another step may take over).
const LEASE_SLACK: Duration = Duration::from_secs(60);

/// Who claims a completion for the steps: always the same, so a step retried after its
/// claim landed (but reported an error) still announces.
const STEP_CLAIMANT: &str = "sync-step";

/// Announces a fan-out sync's completion, once: when it has read every person and an
/// outcome is counted for each. Both the delivery that counts outcomes and the step that
/// finishes reading call it, so whichever comes last sees the sync complete. `claimant`
/// is the caller's: a retried claim by the same caller still wins.
pub async fn announce_if_complete(
    syncs: &dyn SyncStore,
    events: &dyn OpsEvents,
    key: &SyncKey,
    claimant: &str,
) -> Result<(), BackendError> {
    let Some((sync, outcomes)) = syncs.get_sync(key).await? else {
        return Ok(());
    };
    let complete = !sync.is_paced()
        && sync.state == SyncState::Running
        && sync.scan_done
        && outcomes.delivered + outcomes.failed >= sync.scanned;
    if complete && syncs.claim_sync_completion(key, claimant).await? {
        announce(
            events,
            OpsEvent::SyncCompleted {
                application: key.application.clone(),
                sync: key.sync.clone(),
                delivered: outcomes.delivered,
                failed: outcomes.failed,
            },
        )
        .await;
    }
    Ok(())
}

/// What the step asks for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    /// The sync is finished (or gone); no further step.
    Done,
    /// Run another step after this delay (at most [`MAX_SEND_DELAY`], the longest a queue
    /// message can wait: a step that wakes before its time re-checks and waits again).
    Again(Duration),
}

/// The next step after `wait`, capped at what a queue delay can express.
fn again_after(wait: Duration) -> StepOutcome {
    StepOutcome::Again(wait.min(MAX_SEND_DELAY))
}

/// One step of a full sync.
pub struct SyncDriver<'a> {
    pub ports: &'a Ports,
    /// The delivery client (paced syncs send themselves).
    pub http: &'a CallbackClient,
    /// Retry schedule for a person that fails in a paced sync.
    pub retry: RetryPolicy,
}

impl SyncDriver<'_> {
    /// Runs the sync until it is done or `deadline` nears, saving progress as it goes.
    /// `holder` names this step for the sync's lease: the step job's id, the same when
    /// the queue delivers it again or it is sent again after a backend failure.
    pub async fn step(
        &self,
        key: &SyncKey,
        holder: &LeaseHolder,
        deadline: Instant,
    ) -> Result<StepOutcome, BackendError> {
        let ports = self.ports;
        let Some(mut sync) = self.runnable(key).await? else {
            return Ok(StepOutcome::Done);
        };
        let now = ports.clock.now();
        let lease = Lease {
            holder: holder.clone(),
            until: now.plus(deadline.saturating_duration_since(Instant::now()) + LEASE_SLACK),
        };
        if !ports.syncs.lease_sync(key, &lease, now).await? {
            tracing::info!(sync = %key, "another step of this sync is running; this one ends");
            return Ok(StepOutcome::Done);
        }
        let outcome = self.run(&mut sync, deadline).await;
        self.release(&sync, &lease, outcome).await
    }

    /// The sync, when a step has persons to read: it exists and runs, and its scan is not
    /// saved as done (a step repeated after its last save landed would count the last
    /// page twice: it only announces the completion, if that is left to do).
    async fn runnable(&self, key: &SyncKey) -> Result<Option<FullSync>, BackendError> {
        let ports = self.ports;
        let Some((sync, _)) = ports.syncs.get_sync(key).await? else {
            tracing::warn!(sync = %key, "sync step for an unknown sync; dropped");
            return Ok(None);
        };
        if sync.state != SyncState::Running {
            return Ok(None);
        }
        if sync.scan_done {
            announce_if_complete(
                ports.syncs.as_ref(),
                ports.events.as_ref(),
                key,
                STEP_CLAIMANT,
            )
            .await?;
            return Ok(None);
        }
        Ok(Some(sync))
    }

    /// Runs the leased sync over its application's webhook (cancelled when there is none
    /// it can send to).
    async fn run(
        &self,
        sync: &mut FullSync,
        deadline: Instant,
    ) -> Result<StepOutcome, BackendError> {
        let applications = &self.ports.applications;
        let Some(application) = applications.get_application(&sync.application_id).await? else {
            return self.cancel(sync, "the application was removed").await;
        };
        let url = match application.webhook.target() {
            Ok(url) => url.clone(),
            Err(why) => return self.cancel(sync, &why.to_string()).await,
        };
        if sync.is_paced() {
            self.paced(&application, &url, sync, deadline).await
        } else {
            self.fan_out(&application, sync, deadline).await
        }
    }

    /// Frees the lease so the next step can start at once (a crash leaves it to expire).
    async fn release(
        &self,
        sync: &FullSync,
        lease: &Lease,
        outcome: Result<StepOutcome, BackendError>,
    ) -> Result<StepOutcome, BackendError> {
        let ports = self.ports;
        let released = ports.syncs.release_sync(&sync.key(), &lease.holder).await;
        let Err(e) = released else {
            return outcome;
        };
        // The next step is another message: arriving while the lease still holds, it
        // would stand aside and the sync would stop. It comes once it expired.
        tracing::warn!(error = %e, "could not free the sync's lease; the next step waits for it to expire");
        let expires_in = lease.until.since(ports.clock.now());
        outcome.map(|next| match next {
            StepOutcome::Again(delay) => again_after(delay.max(expires_in)),
            StepOutcome::Done => StepOutcome::Done,
        })
    }

    fn scoped(
        application: &Application,
        id: &crate::record::RecordId,
        person: &crate::ports::Person,
    ) -> Option<ScopedPerson> {
        consented_scopes(person, &application.id).map(|scopes| scoped_person(id, person, &scopes))
    }

    /// Ends a sync that cannot deliver (its webhook was removed or cannot be used).
    async fn cancel(&self, sync: &mut FullSync, why: &str) -> Result<StepOutcome, BackendError> {
        sync.state = SyncState::Cancelled;
        sync.completed_at = Some(self.ports.clock.now());
        self.ports.syncs.save_sync(sync).await?;
        tracing::warn!(application_id = %sync.application_id, sync_id = %sync.sync_id, why, "sync cancelled");
        Ok(StepOutcome::Done)
    }

    async fn complete(&self, sync: &mut FullSync) -> Result<StepOutcome, BackendError> {
        sync.scan_done = true;
        if sync.is_paced() {
            sync.state = SyncState::Completed;
            sync.completed_at = Some(self.ports.clock.now());
        }
        self.ports.syncs.save_sync(sync).await?;
        if !sync.is_paced() {
            // Every delivery may have been counted before the scan was saved as done.
            announce_if_complete(
                self.ports.syncs.as_ref(),
                self.ports.events.as_ref(),
                &sync.key(),
                STEP_CLAIMANT,
            )
            .await?;
        }
        if sync.is_paced() {
            let event = OpsEvent::SyncCompleted {
                application: sync.application_id.clone(),
                sync: sync.sync_id.clone(),
                delivered: sync.delivered,
                failed: sync.failed,
            };
            announce(self.ports.events.as_ref(), event).await;
        }
        tracing::info!(sync_id = %sync.sync_id, scanned = sync.scanned, "sync read every person");
        Ok(StepOutcome::Done)
    }

    /// Interval 0: every page of persons becomes ordinary delivery jobs.
    async fn fan_out(
        &self,
        application: &Application,
        sync: &mut FullSync,
        deadline: Instant,
    ) -> Result<StepOutcome, BackendError> {
        let ports = self.ports;
        loop {
            if Instant::now() >= deadline {
                return Ok(StepOutcome::Again(Duration::ZERO));
            }
            let page = ports
                .records
                .scan_consented(&application.id, sync.cursor.as_deref(), FAN_OUT_PAGE)
                .await?;
            let created_at = ports.clock.now();
            let jobs: Vec<DeliveryJob> = page
                .items
                .iter()
                .filter_map(|(id, person)| {
                    Self::scoped(application, id, person)
                        .map(|scoped| DeliveryJob::for_sync(&sync.key(), id, scoped, created_at))
                })
                .collect();
            let enqueued = ports.queue.enqueue(&jobs).await?;
            // A person the queue refuses for good (too large) is counted as failed, so the
            // sync still completes with exact counts (once, if this page is read again).
            let mut refused_persons = Vec::new();
            for refused in &enqueued.refused {
                tracing::error!(sync_id = %sync.sync_id, job = %jobs[refused.index].id.as_str(), refusal = %refused.refusal, "sync job refused by the queue; counted as failed");
                if let Target::Application { record, .. } = &jobs[refused.index].target {
                    refused_persons.push(PersonOutcome {
                        person: record.clone(),
                        delivered: false,
                    });
                }
            }
            if !refused_persons.is_empty() {
                ports
                    .syncs
                    .count_sync_outcomes(&sync.key(), &refused_persons)
                    .await?;
            }
            sync.scanned += jobs.len() as u64;
            match page.next {
                Some(next) => {
                    sync.cursor = Some(next);
                    ports.syncs.save_sync(sync).await?;
                }
                None => return self.complete(sync).await,
            }
        }
    }

    /// An interval: one request at a time, each starting at least the interval after the
    /// previous one finished.
    async fn paced(
        &self,
        application: &Application,
        url: &CallbackUrl,
        sync: &mut FullSync,
        deadline: Instant,
    ) -> Result<StepOutcome, BackendError> {
        let ports = self.ports;
        loop {
            if let Some(at) = sync.next_attempt_at {
                let wait = at.since(ports.clock.now());
                if !wait.is_zero() {
                    ports.syncs.save_sync(sync).await?;
                    return Ok(again_after(wait));
                }
            }
            let page = ports
                .records
                .scan_consented(&application.id, sync.cursor.as_deref(), PACED_PAGE)
                .await?;
            for (id, person) in &page.items {
                let Some(scoped) = Self::scoped(application, id, person) else {
                    continue;
                };
                if let Some(stop) = self.wait_for_interval(sync, deadline).await? {
                    return Ok(stop);
                }
                let (job, outcome, acknowledged) =
                    self.send_paced(application, url, sync, id, scoped).await;
                if let Some(stop) = self
                    .after_paced(sync, id, &job, &outcome, acknowledged)
                    .await?
                {
                    return Ok(stop);
                }
            }
            match page.next {
                // Every person up to the scan position was handled above.
                Some(next) => sync.cursor = Some(next),
                None => return self.complete(sync).await,
            }
        }
    }

    /// Sleeps until the interval after the previous request has passed. `Some` when that
    /// wait, or the request after it, would pass the deadline: the progress is saved and
    /// the step comes back through the queue.
    async fn wait_for_interval(
        &self,
        sync: &FullSync,
        deadline: Instant,
    ) -> Result<Option<StepOutcome>, BackendError> {
        let ports = self.ports;
        let interval = Duration::from_millis(sync.request_interval_ms);
        let attempt_time = self.http_budget();
        if let Some(end) = sync.last_request_end {
            let wait = end.plus(interval).since(ports.clock.now());
            if !wait.is_zero() {
                // Never sleep past the deadline: come back through the queue.
                if Instant::now() + wait + attempt_time >= deadline {
                    ports.syncs.save_sync(sync).await?;
                    return Ok(Some(again_after(wait)));
                }
                tokio::time::sleep(wait).await;
            }
        }
        if Instant::now() + attempt_time >= deadline {
            ports.syncs.save_sync(sync).await?;
            return Ok(Some(StepOutcome::Again(Duration::ZERO)));
        }
        Ok(None)
    }

    /// Sends a person once, as a delivery of the sync, and records the attempt in the
    /// attempt log like every other delivery (one write per paced request; the log serves
    /// the owner, so a failed write costs no delivery).
    async fn send_paced(
        &self,
        application: &Application,
        url: &CallbackUrl,
        sync: &mut FullSync,
        id: &RecordId,
        scoped: ScopedPerson,
    ) -> (DeliveryJob, AttemptOutcome, bool) {
        let ports = self.ports;
        let now = ports.clock.now();
        let job = DeliveryJob::for_sync(&sync.key(), id, scoped.clone(), now);
        let request = application_request(
            &job.id,
            application,
            url,
            &[scoped],
            job.created_at,
            ports.clock.as_ref(),
        );
        if sync.head_attempts == 0 {
            sync.scanned += 1;
        }
        let at = ports.clock.now();
        let (outcome, acknowledged) = request.send(self.http).await;
        sync.last_request_end = Some(ports.clock.now());
        let endpoint = EndpointKey::application(&application.id);
        let attempt = sync.head_attempts + 1;
        let logged = LoggedAttempt {
            attempt: Attempt::new(&job, endpoint, attempt, at, &outcome, acknowledged),
            job: job.replayable(),
        };
        if let Err(e) = ports.attempts.record(vec![logged]).await {
            tracing::error!(error = %e, "could not record a sync delivery attempt");
        }
        (job, outcome, acknowledged)
    }

    /// After a paced request: on to the next person, or (not acknowledged, attempts left)
    /// `Some` retry of this one after the delay. The last failed attempt dead-letters the
    /// job and moves on.
    async fn after_paced(
        &self,
        sync: &mut FullSync,
        id: &RecordId,
        job: &DeliveryJob,
        outcome: &AttemptOutcome,
        acknowledged: bool,
    ) -> Result<Option<StepOutcome>, BackendError> {
        let ports = self.ports;
        let status = outcome.status;
        // Like other deliveries: a success is not worth a line at INFO.
        if acknowledged {
            tracing::debug!(sync_id = %sync.sync_id, person = %id, status, "sync delivery");
            sync.delivered += 1;
        } else {
            let error = outcome.error.as_ref().map(tracing::field::display);
            tracing::warn!(sync_id = %sync.sync_id, person = %id, status, error, "sync delivery failed");
            sync.head_attempts += 1;
            if !self.retry.is_last(sync.head_attempts) {
                let delay = self
                    .retry
                    .next_delay(sync.head_attempts, outcome.retry_after);
                sync.next_attempt_at = Some(ports.clock.now().plus(delay));
                ports.syncs.save_sync(sync).await?;
                return Ok(Some(again_after(delay)));
            }
            ports.queue.dead_letter(job).await?;
            sync.failed += 1;
        }
        sync.head_attempts = 0;
        sync.next_attempt_at = None;
        sync.cursor = Some(id.to_string());
        ports.syncs.save_sync(sync).await?;
        Ok(None)
    }

    /// Time to keep in hand for one request before the deadline.
    fn http_budget(&self) -> Duration {
        self.http.timeout() + Duration::from_secs(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callback::UrlPolicy;
    use crate::http_client::HttpSettings;
    use crate::memory::{MemoryQueue, MemoryRecords, MemoryStore};
    use crate::record::RecordId;
    use crate::testing::ManualClock;
    use std::sync::Arc;

    fn app_1() -> crate::ids::ApplicationId {
        crate::ids::ApplicationId::parse("app-1").unwrap()
    }

    struct Paced {
        ports: Ports,
        clock: Arc<ManualClock>,
        http: CallbackClient,
        sync: FullSync,
    }

    /// A paced sync whose previous request has just finished, with one person left.
    async fn paced(interval: Duration) -> Paced {
        let clock = Arc::new(ManualClock::new(time::OffsetDateTime::now_utc()));
        let records = Arc::new(MemoryRecords::default());
        let ports = crate::ports::Ports::over(
            Arc::new(MemoryStore::default()),
            records.clone(),
            Arc::new(MemoryQueue::new(Duration::from_secs(60), 5)),
            Arc::new(crate::memory::LoggedEvents::default()),
            clock.clone(),
        );
        let person = serde_json::json!({"consents": {"app-1": ["members.read_name"]}});
        records.put_person(
            &RecordId::parse("p-1").unwrap(),
            person.as_object().unwrap().clone(),
        );
        let mut app = Application::new(&app_1(), "key", crate::clock::Timestamp::UNIX_EPOCH);
        // Never reached: the step must stop before its request.
        app.webhook.url = Some("http://127.0.0.1:9/sync".to_owned().into());
        app.webhook.request_interval_ms = interval.as_millis() as u64;
        ports.applications.put_application(&app).await.unwrap();
        let mut sync = FullSync::new(
            &app_1(),
            app.webhook.request_interval_ms,
            crate::testing::at_ms(0),
        );
        sync.last_request_end = Some(ports.clock.now());
        ports.syncs.save_sync(&sync).await.unwrap();
        let http = CallbackClient::new(&HttpSettings {
            timeout: Duration::from_secs(5),
            url_policy: UrlPolicy {
                allow_insecure: true,
            },
            ..HttpSettings::default()
        });
        Paced {
            ports,
            clock,
            http,
            sync,
        }
    }

    #[tokio::test]
    async fn a_paced_request_is_in_the_attempt_log() {
        // 1 ms: an interval of 0 is a fan-out sync, which queues jobs instead.
        let setup = paced(Duration::from_millis(1)).await;
        let driver = SyncDriver {
            ports: &setup.ports,
            http: &setup.http,
            retry: RetryPolicy::default(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        driver
            .step(&setup.sync.key(), &LeaseHolder::new("step-1"), deadline)
            .await
            .unwrap();
        let page = setup
            .ports
            .attempts
            .attempts(
                &crate::attempts::LogEndpoint::application(&"app-1".parse().unwrap()),
                crate::attempts::StatusFilter::All,
                None,
                10,
            )
            .await
            .unwrap();
        let seen: Vec<_> = page.items.iter().map(|a| (a.attempt, a.outcome)).collect();
        assert_eq!(
            seen,
            vec![(1, crate::attempts::OutcomeClass::ConnectionError)],
            "nothing listens on port 9"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_paced_step_never_waits_past_its_deadline() {
        let setup = paced(Duration::from_secs(600)).await;
        let driver = SyncDriver {
            ports: &setup.ports,
            http: &setup.http,
            retry: RetryPolicy::default(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let outcome = driver
            .step(&setup.sync.key(), &LeaseHolder::new("step-1"), deadline)
            .await
            .unwrap();
        assert!(
            Instant::now() <= deadline,
            "the step ran {:?} past its deadline",
            Instant::now() - deadline
        );
        assert_eq!(outcome, StepOutcome::Again(Duration::from_secs(600)));
    }

    #[tokio::test(start_paused = true)]
    async fn an_interval_longer_than_a_queue_delay_is_waited_in_several_steps() {
        let setup = paced(Duration::from_secs(3600)).await;
        let driver = SyncDriver {
            ports: &setup.ports,
            http: &setup.http,
            retry: RetryPolicy::default(),
        };
        let mut waits = Vec::new();
        for _ in 0..4 {
            let deadline = Instant::now() + Duration::from_secs(60);
            let outcome = driver
                .step(&setup.sync.key(), &LeaseHolder::new("step-1"), deadline)
                .await
                .unwrap();
            assert!(Instant::now() <= deadline);
            let StepOutcome::Again(wait) = outcome else {
                panic!("the sync ended early: {outcome:?}");
            };
            waits.push(wait.as_secs());
            setup.clock.advance(wait);
        }
        assert_eq!(waits, [MAX_SEND_DELAY.as_secs(); 4]);
        let (sync, _) = setup
            .ports
            .syncs
            .get_sync(&setup.sync.key())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            sync.scanned, 0,
            "nobody was sent before the interval passed"
        );
    }
}
