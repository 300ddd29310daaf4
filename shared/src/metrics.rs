//! CloudWatch metrics in Embedded Metric Format: one JSON log line per delivery
//! invocation and per flush run, which CloudWatch Logs turns into metrics with no API call.

use crate::http_client::{AttemptFailure, AttemptOutcome};
use serde_json::{Value, json};

/// The metric namespace.
pub const NAMESPACE: &str = "PersonWebhooks";

/// What one delivery invocation did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeliveryMetrics {
    /// Attempts made.
    pub deliveries: u64,
    /// Acknowledged attempts.
    pub acks: u64,
    /// Failed attempts by class.
    pub failures_3xx: u64,
    pub failures_4xx: u64,
    pub failures_5xx: u64,
    /// Other non-acknowledging answers (1xx, 203, 205, …).
    pub failures_other_status: u64,
    /// No answer within the ack deadline.
    pub failures_timeout: u64,
    /// Connection errors and refused addresses.
    pub failures_connection: u64,
    /// Messages moved toward the dead-letter queue.
    pub dlq_moves: u64,
    /// Jobs for disabled endpoints put in the parked queue.
    pub parked: u64,
    /// Attempt latencies in milliseconds.
    pub latencies_ms: Vec<f64>,
}

impl DeliveryMetrics {
    /// Counts one attempt.
    pub fn record(&mut self, outcome: &AttemptOutcome, acknowledged: bool) {
        self.deliveries += 1;
        self.latencies_ms
            .push(outcome.latency.as_secs_f64() * 1000.0);
        let Some(failure) = outcome.failure(acknowledged) else {
            self.acks += 1;
            return;
        };
        match failure {
            AttemptFailure::HttpStatus(300..=399) => self.failures_3xx += 1,
            AttemptFailure::HttpStatus(400..=499) => self.failures_4xx += 1,
            AttemptFailure::HttpStatus(500..=599) => self.failures_5xx += 1,
            AttemptFailure::HttpStatus(_) => self.failures_other_status += 1,
            AttemptFailure::Timeout(_) => self.failures_timeout += 1,
            AttemptFailure::Connection(_)
            | AttemptFailure::Request(_)
            | AttemptFailure::RefusedByUrlPolicy(_) => self.failures_connection += 1,
        }
    }

    /// Adds what another part of the same invocation did.
    pub fn merge(&mut self, other: DeliveryMetrics) {
        // Taken apart, so that a new field cannot be left out here.
        let DeliveryMetrics {
            deliveries,
            acks,
            failures_3xx,
            failures_4xx,
            failures_5xx,
            failures_other_status,
            failures_timeout,
            failures_connection,
            dlq_moves,
            parked,
            latencies_ms,
        } = other;
        self.deliveries += deliveries;
        self.acks += acks;
        self.failures_3xx += failures_3xx;
        self.failures_4xx += failures_4xx;
        self.failures_5xx += failures_5xx;
        self.failures_other_status += failures_other_status;
        self.failures_timeout += failures_timeout;
        self.failures_connection += failures_connection;
        self.dlq_moves += dlq_moves;
        self.parked += parked;
        self.latencies_ms.extend(latencies_ms);
    }

    /// The EMF document (a single log line when serialized).
    pub fn emf(&self, function: &str, timestamp_ms: i64) -> Value {
        let counts = [
            ("Deliveries", self.deliveries),
            ("Acks", self.acks),
            ("Failures3xx", self.failures_3xx),
            ("Failures4xx", self.failures_4xx),
            ("Failures5xx", self.failures_5xx),
            ("FailuresOtherStatus", self.failures_other_status),
            ("FailuresTimeout", self.failures_timeout),
            ("FailuresConnection", self.failures_connection),
            ("DlqMoves", self.dlq_moves),
            ("Parked", self.parked),
        ];
        let mut metrics: Vec<Value> = counts
            .iter()
            .map(|(name, _)| json!({"Name": name, "Unit": "Count"}))
            .collect();
        metrics.push(json!({"Name": "AttemptLatency", "Unit": "Milliseconds"}));
        let mut doc = json!({
            "_aws": {
                "Timestamp": timestamp_ms,
                "CloudWatchMetrics": [{"Namespace": NAMESPACE, "Dimensions": [["Function"]], "Metrics": metrics}],
            },
            "Function": function,
            "AttemptLatency": self.latencies_ms,
        });
        for (name, value) in counts {
            doc[name] = value.into();
        }
        doc
    }
}

/// What one flush run did, and how far behind it left the windows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushMetrics {
    /// Windows completely flushed.
    pub windows: u64,
    /// Pending records read.
    pub records: u64,
    /// Delivery jobs made (enqueued, or first attempted by the flush itself).
    pub jobs: u64,
    /// Jobs whose first attempt the flush made itself (docs/architecture.md, "First
    /// attempts by the flush"); the rest went to the delivery queue unattempted.
    pub first_attempts: u64,
    /// Changes set aside as poison items (an operator looks at them).
    pub set_aside: u64,
    /// How long the oldest closed window not yet completely flushed has been waiting, in
    /// whole windows' length: 0 when the run caught up with every closed window.
    pub lag_seconds: u64,
}

impl FlushMetrics {
    /// The EMF document (a single log line when serialized).
    pub fn emf(&self, timestamp_ms: i64) -> Value {
        let counts = [
            ("FlushedWindows", self.windows, "Count"),
            ("FlushedRecords", self.records, "Count"),
            ("FlushedJobs", self.jobs, "Count"),
            ("FlushFirstAttempts", self.first_attempts, "Count"),
            ("ChangesSetAside", self.set_aside, "Count"),
            ("FlushLagSeconds", self.lag_seconds, "Seconds"),
        ];
        let metrics: Vec<Value> = counts
            .iter()
            .map(|(name, _, unit)| json!({"Name": name, "Unit": unit}))
            .collect();
        let mut doc = json!({
            "_aws": {
                "Timestamp": timestamp_ms,
                "CloudWatchMetrics": [{"Namespace": NAMESPACE, "Dimensions": [["Function"]], "Metrics": metrics}],
            },
            "Function": "flush",
        });
        for (name, value, _) in counts {
            doc[name] = value.into();
        }
        doc
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn outcome(status: Option<u16>, error: Option<AttemptFailure>) -> AttemptOutcome {
        AttemptOutcome {
            status,
            retry_after: None,
            latency: Duration::from_millis(12),
            error,
            body_prefix: bytes::Bytes::new(),
        }
    }

    #[test]
    fn the_flush_document_declares_its_lag_in_seconds() {
        let doc = FlushMetrics {
            windows: 2,
            records: 7,
            jobs: 9,
            first_attempts: 4,
            set_aside: 1,
            lag_seconds: 600,
        }
        .emf(5);
        assert_eq!(doc["FlushFirstAttempts"], 4);
        assert_eq!(doc["ChangesSetAside"], 1);
        assert_eq!(doc["FlushLagSeconds"], 600);
        assert_eq!(doc["FlushedJobs"], 9);
        assert_eq!(doc["Function"], "flush");
        let declared = doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .unwrap();
        assert!(declared.contains(&json!({"Name": "FlushLagSeconds", "Unit": "Seconds"})));
        for metric in declared {
            assert!(
                metric["Name"]
                    .as_str()
                    .is_some_and(|name| doc.get(name).is_some()),
                "{metric}"
            );
        }
    }

    #[test]
    fn failures_are_classified_and_the_document_is_emf() {
        let mut m = DeliveryMetrics::default();
        m.record(&outcome(Some(204), None), true);
        m.record(&outcome(Some(302), None), false);
        m.record(&outcome(Some(429), None), false);
        m.record(&outcome(Some(503), None), false);
        m.record(&outcome(Some(203), None), false);
        m.record(
            &outcome(None, Some(AttemptFailure::Timeout(Duration::from_secs(10)))),
            false,
        );
        m.record(
            &outcome(None, Some(AttemptFailure::Connection("refused".into()))),
            false,
        );
        let doc = m.emf("delivery", 1);
        assert_eq!(doc["Deliveries"], 7);
        assert_eq!(doc["Acks"], 1);
        for name in [
            "Failures3xx",
            "Failures4xx",
            "Failures5xx",
            "FailuresOtherStatus",
            "FailuresTimeout",
            "FailuresConnection",
        ] {
            assert_eq!(doc[name], 1, "{name}");
        }
        assert_eq!(doc["AttemptLatency"].as_array().unwrap().len(), 7);
        let declared = doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .unwrap();
        for metric in declared {
            assert!(
                doc.get(metric["Name"].as_str().unwrap()).is_some(),
                "every declared metric has a value"
            );
        }
    }

    #[test]
    fn failures_without_an_answer_are_counted_by_their_kind() {
        let mut m = DeliveryMetrics::default();
        for (failure, acknowledged) in [
            (AttemptFailure::Timeout(Duration::from_secs(10)), false),
            (AttemptFailure::Connection("reset".into()), false),
            (AttemptFailure::Request("broke".into()), false),
            (AttemptFailure::RefusedByUrlPolicy("private".into()), false),
            // Its text starts with "timeout", its kind is a connection error.
            (
                AttemptFailure::Connection("timeout while connecting".into()),
                false,
            ),
        ] {
            m.record(&outcome(None, Some(failure)), acknowledged);
        }
        assert_eq!((m.failures_timeout, m.failures_connection), (1, 4));
    }

    #[test]
    fn merged_parts_count_as_one_invocation() {
        let outcomes = [
            (outcome(Some(204), None), true),
            (outcome(Some(302), None), false),
            (outcome(Some(429), None), false),
            (outcome(Some(503), None), false),
            (outcome(Some(203), None), false),
            (
                outcome(None, Some(AttemptFailure::Timeout(Duration::from_secs(10)))),
                false,
            ),
            (
                outcome(None, Some(AttemptFailure::Connection("refused".into()))),
                false,
            ),
        ];
        let mut whole = DeliveryMetrics::default();
        let mut merged = DeliveryMetrics::default();
        for (i, (outcome, acknowledged)) in outcomes.iter().enumerate() {
            whole.record(outcome, *acknowledged);
            let mut part = DeliveryMetrics::default();
            part.record(outcome, *acknowledged);
            part.dlq_moves = i as u64;
            part.parked = 2 * i as u64;
            whole.dlq_moves += i as u64;
            whole.parked += 2 * i as u64;
            merged.merge(part);
        }
        assert_eq!(merged, whole);
    }
}
