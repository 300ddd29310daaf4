//! Endpoint health over a batch: each attempt's effect noted as it ends, each endpoint's
//! health written at most once when the batch is done, and disabled endpoints announced.

use super::Delivery;
use super::subscribers::{Endpoint, Named};
use crate::application::Application;
use crate::clock::Timestamp;
use crate::events::OpsEvent;
use crate::health::{EndpointHealth, HealthPolicy};
use crate::http_client::AttemptFailure;
use crate::http_client::AttemptOutcome;
use crate::ports::announce;
use std::collections::HashMap;
use std::sync::Arc;

/// An attempt's effect on its endpoint's health.
pub(super) struct HealthNote {
    endpoint: Endpoint,
    /// When the attempt ended.
    at: Timestamp,
    /// `None` when it acknowledged.
    failure: Option<AttemptFailure>,
}

impl HealthNote {
    pub(super) fn of(
        endpoint: &Endpoint,
        at: Timestamp,
        outcome: &AttemptOutcome,
        acknowledged: bool,
    ) -> Self {
        Self {
            endpoint: endpoint.clone(),
            at,
            failure: outcome.failure(acknowledged),
        }
    }
}

/// Each endpoint's health over a batch, by endpoint name.
#[derive(Default)]
pub(super) struct HealthTallies(HashMap<String, HealthTally>);

/// An endpoint's health over a batch: as read before it, and after its attempts.
struct HealthTally {
    endpoint: Endpoint,
    saved: EndpointHealth,
    now: EndpointHealth,
    newly_disabled: bool,
}

impl HealthTallies {
    /// Room for `endpoints` endpoints.
    pub(super) fn with_capacity(endpoints: usize) -> Self {
        Self(HashMap::with_capacity(endpoints))
    }

    /// Applies an attempt's outcome to the endpoint's health as this batch sees it
    /// (written once the batch is done, by [`Delivery::save_health`]).
    pub(super) fn add(&mut self, note: HealthNote, policy: &HealthPolicy) {
        let endpoint = note.endpoint;
        // Looked up by the name the endpoint carries; copied only for its first attempt.
        let tally = match self.0.get_mut(endpoint.name()) {
            Some(tally) => tally,
            // Acknowledged, with no failure streak to end: its health stays as read, and
            // nothing is tallied (nearly every attempt; a tally copied the endpoint's name
            // and its health twice, to find nothing to save).
            None if note.failure.is_none() && endpoint.health().success_changes_nothing() => {
                return;
            }
            None => self
                .0
                .entry(endpoint.name().to_owned())
                .or_insert(HealthTally {
                    saved: endpoint.health().clone(),
                    now: endpoint.health().clone(),
                    endpoint,
                    newly_disabled: false,
                }),
        };
        match note.failure {
            None => tally.now.record_success(),
            Some(failure) => {
                tally.newly_disabled |= tally.now.record_failure(note.at, &failure, policy);
            }
        }
    }
}

impl Delivery {
    /// Writes each endpoint's health once for the batch, and only when it must be
    /// ([`EndpointHealth::must_save_over`]: a change of state, or a further failure at most
    /// once per save interval); announces the endpoints it disabled.
    pub(super) async fn save_health(&self, tallies: HealthTallies) {
        for tally in tallies.0.into_values() {
            if !tally
                .now
                .must_save_over(&tally.saved, &self.settings.health)
            {
                continue;
            }
            let health = tally.now;
            match self.store_health(&tally.endpoint, &health).await {
                Ok(()) => {
                    self.remember_health(&tally.endpoint, &health);
                }
                // The cache keeps what is stored: the next batch's attempts, compared with
                // it, write their health again.
                Err(e) => {
                    tracing::warn!(endpoint = %tally.endpoint.name(), error = %e, "could not save the endpoint's health")
                }
            }
            if tally.newly_disabled {
                let reason = health.disabled_reason.clone().unwrap_or_default();
                self.announce_disabled(&tally.endpoint, reason).await;
            }
        }
    }

    /// Disables an application whose stored webhook URL cannot be used (once: later jobs
    /// find it disabled), and tells its operators why.
    pub(super) async fn disable_application(
        &self,
        application: Arc<Named<Application>>,
        reason: String,
    ) -> Endpoint {
        let endpoint = Endpoint::Application(application);
        let mut health = endpoint.health().clone();
        let now = self.ports.clock.now();
        if !health.disable(now, reason.clone()) {
            return endpoint;
        }
        if let Err(e) = self.store_health(&endpoint, &health).await {
            tracing::warn!(error = %e, "could not save the endpoint's health");
        }
        let endpoint = self.remember_health(&endpoint, &health);
        self.announce_disabled(&endpoint, reason).await;
        endpoint
    }

    async fn announce_disabled(&self, endpoint: &Endpoint, reason: String) {
        tracing::error!(endpoint = %endpoint.name(), %reason, "endpoint disabled");
        announce(
            self.ports.events.as_ref(),
            OpsEvent::EndpointDisabled {
                endpoint: endpoint.name().to_owned(),
                reason,
            },
        )
        .await;
    }
}
