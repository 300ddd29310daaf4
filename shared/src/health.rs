//! Endpoint health, as users of Svix and Stripe expect: an endpoint that has failed every
//! attempt for a period (default 5 days) is disabled, a `410 Gone` disables it at once, its
//! owner sees why and re-enables it. A disabled endpoint gets no new jobs; jobs already
//! queued for it are parked (the parked queue, not the dead-letter queue, which means
//! "something failed"), where nothing is lost, until they are replayed.

use crate::clock::Timestamp;
use crate::http_client::AttemptFailure;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// When an endpoint is disabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Failing every attempt for this long disables the endpoint.
    pub disable_after: Duration,
    /// A failure more than this after the previous one starts a new streak (a failing
    /// endpoint with queued retries fails at least every 12 hours).
    pub streak_gap: Duration,
    /// A further failure of an endpoint already failing is saved at most this often: its
    /// item is not rewritten on every attempt (DynamoDB takes at most 1 000 writes a
    /// second on one item, and each costs).
    pub save_interval: Duration,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        Self {
            disable_after: Duration::from_secs(5 * 24 * 3600),
            streak_gap: Duration::from_secs(24 * 3600),
            save_interval: Duration::from_secs(60),
        }
    }
}

/// Why the delivery rules disabled an endpoint. Stored and shown as its text
/// ([`EndpointHealth::disabled_reason`]), written here only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisableReason {
    /// The receiver answered `410 Gone`.
    Gone,
    /// Every attempt failed for [`HealthPolicy::disable_after`] or longer.
    FailingFor {
        /// Whole days since the streak began.
        days: i64,
        /// The latest attempt's error.
        last_error: String,
    },
}

impl std::fmt::Display for DisableReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Gone => f.write_str("the receiver answered 410 Gone"),
            Self::FailingFor { days, last_error } => write!(
                f,
                "every attempt failed for {days} days; last error: {last_error}"
            ),
        }
    }
}

/// The health of one endpoint (a subscription's callback, or an application's webhook).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointHealth {
    /// Start of the current streak of failures (stored as epoch seconds, so kept to the
    /// second).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::clock::epoch_secs_option"
    )]
    pub failing_since: Option<Timestamp>,
    /// The latest failure (stored as epoch seconds).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::clock::epoch_secs_option"
    )]
    pub last_failure_at: Option<Timestamp>,
    /// What the latest failure was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When the endpoint was disabled (stored as epoch seconds).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::clock::epoch_secs_option"
    )]
    pub disabled_at: Option<Timestamp>,
    /// What disabled it, as its owner reads it: a [`DisableReason`], or why its stored URL is
    /// unusable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
}

impl EndpointHealth {
    /// True when the endpoint gets no deliveries.
    pub fn is_disabled(&self) -> bool {
        self.disabled_at.is_some()
    }

    /// True when a failure streak is recorded.
    pub fn is_failing(&self) -> bool {
        self.failing_since.is_some()
    }

    /// Records a failed attempt; true when this disables the endpoint.
    pub fn record_failure(
        &mut self,
        now: Timestamp,
        failure: &AttemptFailure,
        policy: &HealthPolicy,
    ) -> bool {
        // Kept to the second, as stored: a value read back compares equal.
        let now = now.whole_secs();
        if self.is_disabled() {
            return false;
        }
        let new_streak = self
            .last_failure_at
            .is_none_or(|last| secs_between(now, last) > policy.streak_gap.as_secs() as i64);
        if new_streak || self.failing_since.is_none() {
            self.failing_since = Some(now);
        }
        self.last_failure_at = Some(now);
        self.last_error = Some(failure.to_string().chars().take(300).collect());
        let reason = if *failure == AttemptFailure::HttpStatus(410) {
            Some(DisableReason::Gone)
        } else {
            let since = self.failing_since.unwrap_or(now);
            let failing = secs_between(now, since);
            (failing >= policy.disable_after.as_secs() as i64).then(|| DisableReason::FailingFor {
                days: failing / 86_400,
                last_error: self.last_error.clone().unwrap_or_default(),
            })
        };
        match reason {
            Some(reason) => {
                self.disabled_at = Some(now);
                self.disabled_reason = Some(reason.to_string());
                true
            }
            None => false,
        }
    }

    /// Disables the endpoint for `reason` (one no delivery attempt can cure); true when it
    /// was enabled until now.
    pub fn disable(&mut self, now: Timestamp, reason: String) -> bool {
        if self.is_disabled() {
            return false;
        }
        self.disabled_at = Some(now.whole_secs());
        self.disabled_reason = Some(reason);
        true
    }

    /// Whether this health, after some attempts, must be written over `saved` (what the
    /// store held when read): always when the endpoint's state changed (it started
    /// failing, recovered, or was disabled), and for further failures of an endpoint
    /// already failing only once `policy.save_interval` has passed since the saved
    /// failure. What is not written loses nothing the rules need: the streak's start
    /// is saved, and a failure at most a minute old is close enough for a streak gap of a day.
    pub fn must_save_over(&self, saved: &Self, policy: &HealthPolicy) -> bool {
        if self.disabled_at != saved.disabled_at || self.failing_since != saved.failing_since {
            return true;
        }
        match (self.last_failure_at, saved.last_failure_at) {
            (Some(latest), Some(written)) => {
                secs_between(latest, written) >= policy.save_interval.as_secs() as i64
            }
            (latest, written) => latest != written,
        }
    }

    /// True when an acknowledged delivery would change nothing ([`Self::record_success`]
    /// has no streak to end).
    pub fn success_changes_nothing(&self) -> bool {
        self.failing_since.is_none() && self.last_failure_at.is_none() && self.last_error.is_none()
    }

    /// Records an acknowledged delivery: the streak ends.
    pub fn record_success(&mut self) {
        self.failing_since = None;
        self.last_failure_at = None;
        self.last_error = None;
    }

    /// The owner re-enables the endpoint: everything is forgotten.
    pub fn enable(&mut self) {
        *self = Self::default();
    }
}

/// Seconds from `earlier` to `later` (negative when it is not later).
fn secs_between(later: Timestamp, earlier: Timestamp) -> i64 {
    later.epoch_secs() - earlier.epoch_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    /// The time `secs` epoch seconds.
    fn at(secs: i64) -> Timestamp {
        Timestamp::from_epoch_secs(secs).unwrap()
    }

    #[test]
    fn failing_every_attempt_for_five_days_disables() {
        let policy = HealthPolicy::default();
        let mut health = EndpointHealth::default();
        let mut now = 1_000_000;
        for failure in 0..10 {
            assert!(
                !health.record_failure(at(now), &AttemptFailure::HttpStatus(500), &policy),
                "failure {failure}, {} h in",
                failure * 12
            );
            now += 12 * 3600;
        }
        assert!(health.is_failing() && !health.is_disabled());
        assert!(
            health.record_failure(at(now + 1), &AttemptFailure::HttpStatus(503), &policy),
            "5 days and 1 s"
        );
        let reason = DisableReason::FailingFor {
            days: 5,
            last_error: "HTTP 503".into(),
        };
        assert_eq!(health.disabled_reason, Some(reason.to_string()));
        let timeout = AttemptFailure::Timeout(Duration::from_secs(10));
        assert!(
            !health.record_failure(at(now + 2), &timeout, &policy),
            "disabled only once"
        );
        health.enable();
        assert_eq!(health, EndpointHealth::default());
    }

    #[test]
    fn a_success_or_a_long_gap_ends_the_streak() {
        let policy = HealthPolicy::default();
        let mut health = EndpointHealth::default();
        health.record_failure(at(0), &AttemptFailure::HttpStatus(500), &policy);
        health.record_success();
        assert!(!health.is_failing());
        health.record_failure(at(10), &AttemptFailure::HttpStatus(500), &policy);
        // A stale streak (no failure for over a day) restarts instead of disabling.
        assert!(!health.record_failure(
            at(10 + 6 * DAY),
            &AttemptFailure::HttpStatus(500),
            &policy
        ));
        assert_eq!(health.failing_since, Some(at(10 + 6 * DAY)));
    }

    #[test]
    fn a_success_changes_nothing_exactly_when_there_is_no_streak_to_end() {
        let policy = HealthPolicy::default();
        let disabled = EndpointHealth {
            disabled_at: Some(at(5)),
            ..EndpointHealth::default()
        };
        let mut failing = EndpointHealth::default();
        failing.record_failure(at(0), &AttemptFailure::HttpStatus(500), &policy);
        let errored = EndpointHealth {
            last_error: Some("connection refused".into()),
            ..EndpointHealth::default()
        };
        for health in [EndpointHealth::default(), disabled, failing, errored] {
            let mut after = health.clone();
            after.record_success();
            assert_eq!(
                health.success_changes_nothing(),
                after == health,
                "{health:?}"
            );
        }
        assert!(EndpointHealth::default().success_changes_nothing());
    }

    #[test]
    fn further_failures_are_saved_at_most_once_per_interval() {
        let policy = HealthPolicy::default();
        let saved = EndpointHealth::default();
        let mut health = saved.clone();
        health.record_success();
        assert!(
            !health.must_save_over(&saved, &policy),
            "healthy stays healthy"
        );
        health.record_failure(at(1_000), &AttemptFailure::HttpStatus(500), &policy);
        assert!(health.must_save_over(&saved, &policy), "starts failing");
        let saved = health.clone();
        health.record_failure(at(1_059), &AttemptFailure::HttpStatus(503), &policy);
        assert!(!health.must_save_over(&saved, &policy), "59 s later");
        health.record_failure(at(1_060), &AttemptFailure::HttpStatus(503), &policy);
        assert!(health.must_save_over(&saved, &policy), "a minute later");
        let mut gone = saved.clone();
        gone.record_failure(at(1_001), &AttemptFailure::HttpStatus(410), &policy);
        assert!(gone.must_save_over(&saved, &policy), "disabled at once");
        let mut recovered = saved.clone();
        recovered.record_success();
        assert!(recovered.must_save_over(&saved, &policy), "recovered");
    }

    #[test]
    fn the_last_error_is_the_failures_text() {
        let mut health = EndpointHealth::default();
        let policy = HealthPolicy::default();
        for (case, failure, text) in [
            ("a status", AttemptFailure::HttpStatus(503), "HTTP 503"),
            (
                "a timeout",
                AttemptFailure::Timeout(Duration::from_secs(10)),
                "timeout: no response within 10s",
            ),
            (
                "a refused address",
                AttemptFailure::RefusedByUrlPolicy("10.0.0.1 is private".into()),
                "refused: 10.0.0.1 is private",
            ),
        ] {
            health.record_failure(at(1), &failure, &policy);
            assert_eq!(health.last_error.as_deref(), Some(text), "{case}");
        }
        health.record_failure(at(2), &AttemptFailure::Connection("x".repeat(400)), &policy);
        assert_eq!(
            health.last_error.map(|e| e.chars().count()),
            Some(300),
            "a long error is cut"
        );
    }

    #[test]
    fn times_are_kept_to_the_second_as_stored() {
        let policy = HealthPolicy::default();
        let mut health = EndpointHealth::default();
        health.record_failure(
            Timestamp::from_epoch_ms(1_000_999).unwrap(),
            &AttemptFailure::HttpStatus(500),
            &policy,
        );
        let json = serde_json::to_value(&health).unwrap();
        assert_eq!(json["failing_since"], 1_000, "stored as epoch seconds");
        let read_back: EndpointHealth = serde_json::from_value(json).unwrap();
        assert_eq!(read_back, health, "what is read back is what was kept");
        assert!(!health.must_save_over(&read_back, &policy));
    }

    #[test]
    fn gone_disables_at_once() {
        let mut health = EndpointHealth::default();
        assert!(health.record_failure(
            at(5),
            &AttemptFailure::HttpStatus(410),
            &HealthPolicy::default()
        ));
        assert!(health.is_disabled());
        assert_eq!(
            health.disabled_reason,
            Some(DisableReason::Gone.to_string())
        );
    }
}
