//! Fault injection, at the one point each adapter set sends every operation through, so no
//! wrapper forwards the ports method by method: the in-memory adapters' operation gate
//! (`MemoryStore::with_faults` and its siblings) and, for the AWS adapters, the SDK's HTTP
//! client ([`Faults::http_client`]: every DynamoDB and SQS request).
//!
//! A plan decides, for each operation by its name (a port method's name in memory, the AWS
//! API's operation name on AWS), whether it succeeds, fails before taking effect, fails
//! after taking effect (a timeout whose write landed), or never returns (the handler is
//! killed there, as a Lambda timeout or OOM would): drawn from a seed ([`Faults::seeded`];
//! the same seed replays the same decisions for the same sequence of operations), or
//! written by the test ([`Faults::scripted`]). Used by the soak, moto fault, hot items and
//! sync lease tests.
//!
//! Those faults pass. [`PermanentFaults`] do not: a queue that refuses one particular job
//! every time, a record whose stored items never decode — bad data, which healing the
//! backends does not cure.

use crate::job::DeliveryJob;
use crate::message::Refusal;
use crate::ports::{BackendError, BackendResult};
use crate::record::RecordId;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What happens to one operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// It runs normally.
    None,
    /// It fails without taking effect.
    Fail,
    /// It takes effect, then reports failure (a timeout after the write landed).
    FailAfter,
    /// It never returns: whoever awaits it is stuck until killed.
    Hang,
}

/// Counts of injected faults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Operations that ran.
    pub operations: u64,
    /// Failed before taking effect.
    pub failed: u64,
    /// Failed after taking effect.
    pub failed_after: u64,
    /// Never returned.
    pub hung: u64,
    /// Refused or read back corrupt by a [`PermanentFaults`] rule.
    pub permanent: u64,
}

/// Picks the items a permanent fault applies to.
pub type Pick<T> = Option<Box<dyn Fn(&T) -> bool + Send + Sync>>;

/// Items a port refuses every time, healed or not.
#[derive(Default)]
pub struct PermanentFaults {
    /// Jobs the queue refuses for good (as SQS refuses a message it cannot take).
    pub refuse_job: Pick<DeliveryJob>,
    /// Records whose stored items read back corrupt (their subscriptions and person).
    pub corrupt_record: Pick<RecordId>,
}

/// How each operation's fault is chosen.
enum Plan {
    /// Drawn from a seeded source, for every operation or only the named ones.
    Seeded {
        rng: Mutex<fastrand::Rng>,
        fail: f64,
        fail_after: f64,
        hang: f64,
        only: Option<Vec<String>>,
    },
    /// Decided by the test, from the operation's name.
    Scripted(Box<dyn Fn(&str) -> Fault + Send + Sync>),
}

/// A fault plan, shared by every adapter it is given to, with what it did.
pub struct Faults {
    plan: Plan,
    healed: AtomicBool,
    operations: AtomicU64,
    failed: AtomicU64,
    failed_after: AtomicU64,
    hung: AtomicU64,
    calls: Mutex<BTreeMap<String, u64>>,
    permanent_rules: PermanentFaults,
    permanent: AtomicU64,
}

impl std::fmt::Debug for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Faults")
            .field("counts", &self.counts())
            .finish_non_exhaustive()
    }
}

impl Faults {
    fn with_plan(plan: Plan) -> Self {
        Self {
            plan,
            healed: AtomicBool::new(false),
            operations: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            failed_after: AtomicU64::new(0),
            hung: AtomicU64::new(0),
            calls: Mutex::default(),
            permanent_rules: PermanentFaults::default(),
            permanent: AtomicU64::new(0),
        }
    }

    /// Faults drawn from `seed` with these probabilities per operation.
    pub fn seeded(seed: u64, fail: f64, fail_after: f64, hang: f64) -> Self {
        Self::with_plan(Plan::Seeded {
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
            fail,
            fail_after,
            hang,
            only: None,
        })
    }

    /// The same seeded faults, on the operations named `operations` only (the others run
    /// as they are, and draw nothing from the seed).
    pub fn only(mut self, operations: &[&str]) -> Self {
        if let Plan::Seeded { only, .. } = &mut self.plan {
            *only = Some(operations.iter().map(|op| (*op).to_owned()).collect());
        }
        self
    }

    /// No faults: every operation runs as it is (the counts still tell which ran).
    pub fn none() -> Self {
        Self::scripted(|_| Fault::None)
    }

    /// Faults the test decides, from each operation's name (`decide` may keep state, to
    /// fail only the first call of an operation, say).
    pub fn scripted(decide: impl Fn(&str) -> Fault + Send + Sync + 'static) -> Self {
        Self::with_plan(Plan::Scripted(Box::new(decide)))
    }

    /// The same faults, plus permanent ones.
    pub fn with_permanent(mut self, rules: PermanentFaults) -> Self {
        self.permanent_rules = rules;
        self
    }

    /// No more faults from now on (permanent ones stay).
    pub fn heal(&self) {
        self.healed.store(true, Ordering::SeqCst);
    }

    /// What the next call of `operation` gets.
    pub fn roll(&self, operation: &str) -> Fault {
        self.operations.fetch_add(1, Ordering::Relaxed);
        *self
            .calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(operation.to_owned())
            .or_default() += 1;
        if self.healed.load(Ordering::SeqCst) {
            return Fault::None;
        }
        let fault = match &self.plan {
            Plan::Scripted(decide) => decide(operation),
            Plan::Seeded {
                only: Some(ops), ..
            } if !ops.iter().any(|op| op == operation) => Fault::None,
            Plan::Seeded {
                rng,
                fail,
                fail_after,
                hang,
                ..
            } => {
                let x = rng.lock().unwrap_or_else(|e| e.into_inner()).f64();
                if x < *fail {
                    Fault::Fail
                } else if x < fail + fail_after {
                    Fault::FailAfter
                } else if x < fail + fail_after + hang {
                    Fault::Hang
                } else {
                    Fault::None
                }
            }
        };
        match fault {
            Fault::Fail => self.failed.fetch_add(1, Ordering::Relaxed),
            Fault::FailAfter => self.failed_after.fetch_add(1, Ordering::Relaxed),
            Fault::Hang => self.hung.fetch_add(1, Ordering::Relaxed),
            Fault::None => 0,
        };
        fault
    }

    /// How many of each fault were injected.
    pub fn counts(&self) -> FaultCounts {
        FaultCounts {
            operations: self.operations.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            failed_after: self.failed_after.load(Ordering::Relaxed),
            hung: self.hung.load(Ordering::Relaxed),
            permanent: self.permanent.load(Ordering::Relaxed),
        }
    }

    /// How many times `operation` was called, faults or not.
    pub fn calls(&self, operation: &str) -> u64 {
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(operation)
            .copied()
            .unwrap_or(0)
    }

    /// Runs `operation` (named `name`) with the fault the plan gives it.
    pub async fn around<R>(
        &self,
        name: &str,
        operation: impl Future<Output = BackendResult<R>>,
    ) -> BackendResult<R> {
        inject(self.roll(name), operation, |what| {
            BackendError::Unavailable(what.into())
        })
        .await
    }

    /// Why the queue must refuse this job for good, if it must.
    pub fn refusal(&self, job: &DeliveryJob) -> Option<Refusal> {
        let refused = self
            .permanent_rules
            .refuse_job
            .as_ref()
            .is_some_and(|f| f(job));
        refused.then(|| {
            self.permanent.fetch_add(1, Ordering::Relaxed);
            Refusal::Rejected {
                reason: "InvalidMessageContents: injected permanent refusal".into(),
            }
        })
    }

    /// `Corrupt` when this record's stored items must read back corrupt.
    pub fn check_record(&self, record: &RecordId) -> BackendResult<()> {
        if self
            .permanent_rules
            .corrupt_record
            .as_ref()
            .is_some_and(|f| f(record))
        {
            self.permanent.fetch_add(1, Ordering::Relaxed);
            return Err(BackendError::Corrupt(format!(
                "injected: an item of record {record} does not decode"
            )));
        }
        Ok(())
    }

    /// An HTTP client for the AWS SDK that sends every request through `inner` with the
    /// fault the plan gives it, named by its operation (`PutItem`, `SendMessageBatch`...):
    /// the single point for the AWS adapters. Give it an SDK configuration without retries,
    /// or the SDK retries most faults away.
    pub fn http_client(self: &Arc<Self>, inner: SharedHttpClient) -> SharedHttpClient {
        SharedHttpClient::new(FaultyHttpClient {
            inner,
            faults: self.clone(),
        })
    }
}

/// Runs `operation` with `fault`; `error` makes the error an injected fault reports.
async fn inject<T, E>(
    fault: Fault,
    operation: impl Future<Output = Result<T, E>>,
    error: impl Fn(&'static str) -> E,
) -> Result<T, E> {
    match fault {
        Fault::None => operation.await,
        Fault::Fail => Err(error("injected failure")),
        Fault::FailAfter => {
            operation.await?;
            Err(error("injected timeout after the operation took effect"))
        }
        Fault::Hang => {
            // Long enough to be killed by any invocation deadline; bounded all the same.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Err(error("injected hang"))
        }
    }
}

#[derive(Debug)]
struct FaultyHttpClient {
    inner: SharedHttpClient,
    faults: Arc<Faults>,
}

impl HttpClient for FaultyHttpClient {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(FaultyConnector {
            inner: self.inner.http_connector(settings, components),
            faults: self.faults.clone(),
        })
    }
}

#[derive(Debug)]
struct FaultyConnector {
    inner: SharedHttpConnector,
    faults: Arc<Faults>,
}

impl HttpConnector for FaultyConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        // The JSON protocols name the operation in X-Amz-Target: `DynamoDB_20120810.PutItem`.
        let name = request
            .headers()
            .get("x-amz-target")
            .and_then(|target| target.rsplit('.').next())
            .unwrap_or("unknown")
            .to_owned();
        let fault = self.faults.roll(&name);
        let inner = self.inner.clone();
        HttpConnectorFuture::new(async move {
            inject(fault, inner.call(request), |what| {
                ConnectorError::io(what.into())
            })
            .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_faults() {
        let draw = |seed| {
            let faults = Faults::seeded(seed, 0.2, 0.1, 0.05);
            (0..200).map(|_| faults.roll("op")).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        let faults = Faults::seeded(1, 0.2, 0.1, 0.05);
        for _ in 0..1000 {
            faults.roll("op");
        }
        let c = faults.counts();
        assert_eq!(c.operations, 1000);
        assert!(c.failed > 100 && c.failed < 300, "{c:?}");
        assert!(c.hung > 20 && c.hung < 90, "{c:?}");
        faults.heal();
        assert!((0..100).all(|_| faults.roll("op") == Fault::None));
        assert_eq!(faults.calls("op"), 1100);
    }

    #[test]
    fn seeded_faults_on_named_operations_only() {
        let faults = Faults::seeded(3, 1.0, 0.0, 0.0).only(&["count"]);
        assert_eq!(faults.roll("save"), Fault::None);
        assert_eq!(faults.roll("count"), Fault::Fail);
        assert_eq!((faults.calls("save"), faults.calls("count")), (1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn an_operation_runs_or_not_as_its_fault_says() {
        let ran = AtomicU64::new(0);
        let op = || async {
            ran.fetch_add(1, Ordering::SeqCst);
            Ok::<_, BackendError>(7)
        };
        let faults = Faults::scripted(|name| match name {
            "fail" => Fault::Fail,
            "after" => Fault::FailAfter,
            "hang" => Fault::Hang,
            _ => Fault::None,
        });
        assert_eq!(faults.around("fine", op()).await, Ok(7));
        assert!(faults.around("fail", op()).await.is_err());
        assert_eq!(ran.load(Ordering::SeqCst), 1, "a failure before: not run");
        assert!(faults.around("after", op()).await.is_err());
        assert_eq!(ran.load(Ordering::SeqCst), 2, "a failure after: run");
        let hung = tokio::time::timeout(Duration::from_secs(60), faults.around("hang", op())).await;
        assert!(hung.is_err(), "still waiting after a minute");
        assert_eq!(ran.load(Ordering::SeqCst), 2);
        assert_eq!(
            faults.counts(),
            FaultCounts {
                operations: 4,
                failed: 1,
                failed_after: 1,
                hung: 1,
                permanent: 0
            }
        );
    }
}
