//! The Lambda functions' settings, read once at start from the environment the SAM
//! template sets (every operator setting is a template parameter).

use crate::callback::UrlPolicy;
use crate::handlers::{ApiSettings, DeliverySettings, FlushSettings};
use crate::http_client::HttpSettings;
use crate::retry::RetryPolicy;
use std::time::Duration;

/// A missing or malformed environment variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A required variable is not set.
    #[error("environment variable {0} is required")]
    Missing(&'static str),
    /// A variable does not parse.
    #[error("environment variable {name} = {value:?} is not valid: {reason}")]
    Invalid {
        name: &'static str,
        value: String,
        reason: &'static str,
    },
}

/// Everything the functions are configured with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `SERVICE_TABLE`: clients, tokens, subscriptions, pending changes, cursor.
    pub service_table: String,
    /// `RECORDS_TABLE`: the persons.
    pub records_table: String,
    /// `DELIVERY_QUEUE_URL`.
    pub delivery_queue_url: String,
    /// `DEAD_LETTER_QUEUE_URL`: where a paced sync puts a person after its last attempt.
    pub dead_letter_queue_url: String,
    /// `DISABLED_ENDPOINT_QUEUE_URL`: where jobs for disabled endpoints are parked.
    pub disabled_endpoint_queue_url: String,
    /// `FLUSH_INTERVAL_MINUTES` (default 5): window length and flush schedule.
    pub flush_interval: Duration,
    /// `FLUSH_GRACE_SECONDS` (default 90).
    pub flush_grace: Duration,
    /// `FLUSH_FIRST_ATTEMPTS` (default 10): a page of a shard with at most this many jobs
    /// has their first attempt made by the flush itself; 0 queues every job
    /// ([`FlushSettings::first_attempts_up_to`]).
    pub flush_first_attempts: usize,
    /// `RETRY_BASE_SECONDS` (default 60) and `MAX_ATTEMPTS` (default 15).
    pub retry: RetryPolicy,
    /// `DELIVERY_TIMEOUT_SECONDS` (default 10).
    pub delivery_timeout: Duration,
    /// `DELIVERY_CONCURRENCY` (default 100).
    pub delivery_concurrency: usize,
    /// `TOKEN_LIFETIME_SECONDS` (default 3600).
    pub token_lifetime: Duration,
    /// `OPS_EVENT_BUS` (default `default`): where operational events go.
    pub ops_event_bus: String,
    /// `ENDPOINT_DISABLE_AFTER_HOURS` (default 120): failing this long disables an endpoint.
    pub endpoint_disable_after: Duration,
    /// `ATTEMPT_RETENTION_DAYS` (default 30): how long delivery attempts and their
    /// messages are kept.
    pub attempt_retention: Duration,
    /// `ALLOW_INSECURE_CALLBACKS` (`true`; default empty, false): accept and deliver to plain
    /// http and private addresses. Only for the local emulator (`sam local`), whose receiver
    /// sits on the docker bridge; the deployed template leaves it empty.
    pub allow_insecure_callbacks: bool,
}

/// The environment as settings read it: a variable set to the empty string is unset
/// (the template declares some with an empty default).
struct Environment<F>(F);

impl<F: Fn(&str) -> Option<String>> Environment<F> {
    fn set(&self, name: &str) -> Option<String> {
        (self.0)(name).filter(|v| !v.is_empty())
    }

    fn required(&self, name: &'static str) -> Result<String, ConfigError> {
        self.set(name).ok_or(ConfigError::Missing(name))
    }

    /// A positive whole number, `default` when unset.
    fn number(&self, name: &'static str, default: u64) -> Result<u64, ConfigError> {
        self.whole(name, default, 1, "expected a positive whole number")
    }

    /// A whole number, 0 included, or `default` when unset.
    fn count(&self, name: &'static str, default: u64) -> Result<u64, ConfigError> {
        self.whole(name, default, 0, "expected a whole number")
    }

    fn whole(
        &self,
        name: &'static str,
        default: u64,
        least: u64,
        reason: &'static str,
    ) -> Result<u64, ConfigError> {
        match self.set(name) {
            None => Ok(default),
            Some(value) => match value.trim().parse::<u64>() {
                Ok(n) if n >= least => Ok(n),
                _ => Err(ConfigError::Invalid {
                    name,
                    value,
                    reason,
                }),
            },
        }
    }

    /// `true`, or `false` when unset.
    fn flag(&self, name: &'static str) -> Result<bool, ConfigError> {
        match self.set(name).as_deref() {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(other) => Err(ConfigError::Invalid {
                name,
                value: other.into(),
                reason: "expected true, false or empty",
            }),
        }
    }
}

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup` (tests pass a map).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Environment(lookup);
        let retention_days = crate::attempts::DEFAULT_RETENTION_DAYS;
        Ok(Self {
            service_table: env.required("SERVICE_TABLE")?,
            records_table: env.required("RECORDS_TABLE")?,
            delivery_queue_url: env.required("DELIVERY_QUEUE_URL")?,
            dead_letter_queue_url: env.required("DEAD_LETTER_QUEUE_URL")?,
            disabled_endpoint_queue_url: env.required("DISABLED_ENDPOINT_QUEUE_URL")?,
            flush_interval: Duration::from_secs(60 * env.number("FLUSH_INTERVAL_MINUTES", 5)?),
            flush_grace: Duration::from_secs(env.number("FLUSH_GRACE_SECONDS", 90)?),
            flush_first_attempts: env.count(
                "FLUSH_FIRST_ATTEMPTS",
                FlushSettings::default().first_attempts_up_to as u64,
            )? as usize,
            retry: RetryPolicy {
                base: Duration::from_secs(env.number("RETRY_BASE_SECONDS", 60)?),
                max_attempts: env.number("MAX_ATTEMPTS", 15)?.min(u64::from(u32::MAX)) as u32,
                ..RetryPolicy::default()
            },
            delivery_timeout: Duration::from_secs(env.number("DELIVERY_TIMEOUT_SECONDS", 10)?),
            delivery_concurrency: env.number("DELIVERY_CONCURRENCY", 100)? as usize,
            token_lifetime: Duration::from_secs(env.number("TOKEN_LIFETIME_SECONDS", 3600)?),
            ops_event_bus: env.set("OPS_EVENT_BUS").unwrap_or_else(|| "default".into()),
            endpoint_disable_after: Duration::from_secs(
                3600 * env.number("ENDPOINT_DISABLE_AFTER_HOURS", 120)?,
            ),
            attempt_retention: Duration::from_secs(
                24 * 3600 * env.number("ATTEMPT_RETENTION_DAYS", retention_days)?,
            ),
            allow_insecure_callbacks: env.flag("ALLOW_INSECURE_CALLBACKS")?,
        })
    }

    /// Which callback URLs are accepted and reached.
    pub fn url_policy(&self) -> UrlPolicy {
        UrlPolicy {
            allow_insecure: self.allow_insecure_callbacks,
        }
    }

    /// Settings of the HTTP API.
    pub fn api(&self) -> ApiSettings {
        ApiSettings {
            url_policy: self.url_policy(),
            token_lifetime: self.token_lifetime,
        }
    }

    /// Settings of the flush; entries older than the pending TTL are not looked for.
    pub fn flush(&self) -> FlushSettings {
        let windows_per_ttl = crate::window::PENDING_TTL.as_secs() / self.flush_interval.as_secs();
        FlushSettings {
            max_lag: windows_per_ttl,
            window_length: self.flush_interval,
            metrics: true,
            first_attempts_up_to: self.flush_first_attempts,
            ..FlushSettings::default()
        }
    }

    /// Settings of the delivery handler.
    pub fn delivery(&self) -> DeliverySettings {
        DeliverySettings {
            retry: self.retry,
            concurrency: self.delivery_concurrency,
            health: crate::health::HealthPolicy {
                disable_after: self.endpoint_disable_after,
                ..Default::default()
            },
            metrics: true,
        }
    }

    /// Settings of the delivery HTTP client (insecure only where `ALLOW_INSECURE_CALLBACKS`
    /// says so, which the deployed template never does).
    pub fn http(&self) -> HttpSettings {
        HttpSettings {
            timeout: self.delivery_timeout,
            url_policy: self.url_policy(),
            ..HttpSettings::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(extra: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let mut env: HashMap<&str, &str> = HashMap::from([
            ("SERVICE_TABLE", "svc"),
            ("RECORDS_TABLE", "rec"),
            ("DELIVERY_QUEUE_URL", "https://sqs/q"),
            ("DEAD_LETTER_QUEUE_URL", "https://sqs/dlq"),
            ("DISABLED_ENDPOINT_QUEUE_URL", "https://sqs/parked"),
        ]);
        env.extend(extra.iter().copied());
        Settings::from_lookup(|name| env.get(name).map(|v| v.to_string()))
    }

    #[test]
    fn defaults_match_the_template() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.flush_interval, Duration::from_secs(300));
        assert_eq!(s.flush_grace, Duration::from_secs(90));
        assert_eq!(s.retry.base, Duration::from_secs(60));
        assert_eq!(s.retry.max_attempts, 15);
        assert_eq!(s.delivery_timeout, Duration::from_secs(10));
        assert_eq!(s.delivery_concurrency, 100);
        assert_eq!(s.token_lifetime, Duration::from_secs(3600));
        assert_eq!(s.flush().max_lag, 2016);
        assert_eq!(s.flush().first_attempts_up_to, 10);
        let queued = settings(&[("FLUSH_FIRST_ATTEMPTS", "0")]).unwrap();
        assert_eq!(queued.flush().first_attempts_up_to, 0);
        assert!(settings(&[("FLUSH_FIRST_ATTEMPTS", "-1")]).is_err());
    }

    #[test]
    fn errors_name_the_variable() {
        let err = Settings::from_lookup(|_| None).unwrap_err();
        assert_eq!(err, ConfigError::Missing("SERVICE_TABLE"));
        let err = settings(&[("MAX_ATTEMPTS", "many")]).unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Invalid {
                    name: "MAX_ATTEMPTS",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(settings(&[("RETRY_BASE_SECONDS", "0")]).is_err());
    }

    #[test]
    fn insecure_callbacks_only_when_asked_for() {
        // The template declares the variable empty: that is the secure default.
        for value in [None, Some(""), Some("false")] {
            let extra: Vec<(&str, &str)> = value
                .map(|v| ("ALLOW_INSECURE_CALLBACKS", v))
                .into_iter()
                .collect();
            let s = settings(&extra).unwrap_or_else(|e| panic!("{value:?}: {e}"));
            assert!(!s.api().url_policy.allow_insecure, "{value:?}");
            assert!(!s.http().url_policy.allow_insecure, "{value:?}");
        }
        let s = settings(&[("ALLOW_INSECURE_CALLBACKS", "true")]).unwrap();
        assert!(s.api().url_policy.allow_insecure);
        assert!(s.http().url_policy.allow_insecure);
        let err = settings(&[("ALLOW_INSECURE_CALLBACKS", "yes")]).unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Invalid {
                    name: "ALLOW_INSECURE_CALLBACKS",
                    ..
                }
            ),
            "{err:?}"
        );
    }
}
