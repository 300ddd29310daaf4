//! When a failed delivery is tried again: `min(base * 2^(n-1), 12 h)` after failed attempt
//! `n`, spread by a little jitter, never sooner than the receiver's `Retry-After`, and not
//! at all after the last attempt.

use crate::clock::Timestamp;
use std::time::Duration;

/// The longest any retry waits (also SQS's visibility-timeout limit).
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(12 * 60 * 60);

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Delay after the first failed attempt.
    pub base: Duration,
    /// Attempts in all; after the last one the message goes to the dead-letter queue.
    pub max_attempts: u32,
    /// Fraction of the delay added or removed at random (0.1 = ±10 %).
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(60),
            max_attempts: 15,
            jitter: 0.1,
        }
    }
}

impl RetryPolicy {
    /// True when failed attempt `attempt` (1-based) was the last one.
    pub fn is_last(&self, attempt: u32) -> bool {
        attempt >= self.max_attempts
    }

    /// The delay after failed attempt `attempt` (1-based), with `jitter_sample` in
    /// `[-1, 1]` choosing where in the jitter band it falls.
    pub fn delay_after(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        jitter_sample: f64,
    ) -> Duration {
        let doublings = attempt.saturating_sub(1).min(32);
        let exponential = self
            .base
            .saturating_mul(1u32 << doublings.min(31))
            .min(MAX_RETRY_DELAY);
        let factor = 1.0 + self.jitter * jitter_sample.clamp(-1.0, 1.0);
        let jittered = exponential.mul_f64(factor.max(0.0)).min(MAX_RETRY_DELAY);
        jittered
            .max(retry_after.unwrap_or_default())
            .min(MAX_RETRY_DELAY)
    }

    /// [`Self::delay_after`] with a random jitter sample.
    pub fn next_delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        self.delay_after(attempt, retry_after, fastrand::f64() * 2.0 - 1.0)
    }
}

/// Reads a `Retry-After` value: delay seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: Timestamp) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(MAX_RETRY_DELAY));
    }
    let at = Timestamp::from(httpdate::parse_http_date(value).ok()?);
    Some(at.since(now).min(MAX_RETRY_DELAY))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_secs(60),
            max_attempts: 15,
            jitter: 0.1,
        }
    }

    #[test]
    fn delays_double_then_cap_at_twelve_hours() {
        let p = policy();
        let delays: Vec<u64> = (1..=12)
            .map(|n| p.delay_after(n, None, 0.0).as_secs())
            .collect();
        assert_eq!(
            delays,
            vec![
                60, 120, 240, 480, 960, 1920, 3840, 7680, 15360, 30720, 43200, 43200
            ]
        );
        assert_eq!(p.delay_after(1000, None, 0.0), MAX_RETRY_DELAY);
    }

    #[test]
    fn jitter_stays_in_its_band_and_under_the_cap() {
        let p = policy();
        assert_eq!(p.delay_after(1, None, -1.0), Duration::from_secs(54));
        assert_eq!(p.delay_after(1, None, 1.0), Duration::from_secs(66));
        assert_eq!(p.delay_after(20, None, 1.0), MAX_RETRY_DELAY);
        for n in 1..20 {
            let d = p.next_delay(n, None);
            let mid = p.delay_after(n, None, 0.0);
            assert!(
                d >= mid.mul_f64(0.9) && d <= mid.mul_f64(1.1).min(MAX_RETRY_DELAY),
                "attempt {n}: {d:?} around {mid:?}"
            );
        }
    }

    #[test]
    fn retry_after_is_honoured_but_capped() {
        let p = policy();
        assert_eq!(
            p.delay_after(1, Some(Duration::from_secs(600)), 0.0),
            Duration::from_secs(600)
        );
        assert_eq!(
            p.delay_after(3, Some(Duration::from_secs(5)), 0.0),
            Duration::from_secs(240)
        );
        assert_eq!(
            p.delay_after(1, Some(Duration::from_secs(86400)), 0.0),
            MAX_RETRY_DELAY
        );
    }

    #[test]
    fn last_attempt() {
        let p = policy();
        assert!(!p.is_last(14));
        assert!(p.is_last(15));
    }

    #[test]
    fn retry_after_forms() {
        let now =
            Timestamp::from(httpdate::parse_http_date("Wed, 25 Nov 2026 12:00:00 GMT").unwrap());
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 25 Nov 2026 12:01:30 GMT", now),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            parse_retry_after("Wed, 25 Nov 2026 11:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
    }
}
