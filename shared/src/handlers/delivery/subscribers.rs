//! Subscriber lookup and caching: the settings a job needs (subscription, OAuth client,
//! application) read once per [`SUBSCRIBER_CACHE_TTL`] rather than once per message.

use super::Delivery;
use crate::application::Application;
use crate::attempts::EndpointKey;
use crate::callback::CallbackUrl;
use crate::health::EndpointHealth;
use crate::ids::{ApplicationId, ClientId};
use crate::job::{DeliveryJob, Target};
use crate::oauth::OAuthClient;
use crate::ports::BackendResult;
use crate::record::RecordId;
use crate::subscription::{Subscription, endpoint_name};
use futures::StreamExt;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// How long subscriber settings (URL, keys, secrets) are reused before being read again.
pub const SUBSCRIBER_CACHE_TTL: Duration = Duration::from_secs(30);

/// Subscriber settings read recently (`None` remembers "no such subscriber"), so a batch
/// for one subscriber reads them once.
struct TtlCache<V>(Mutex<HashMap<String, Entry<V>>>);

type Entry<V> = (Instant, Option<Arc<V>>);

impl<V> Default for TtlCache<V> {
    fn default() -> Self {
        Self(Mutex::new(HashMap::new()))
    }
}

impl<V> TtlCache<V> {
    /// The map. A panic while it was held cannot leave an entry half-written (each
    /// change is one insert or remove), so a poisoned lock is used as it is, rather than
    /// failing every delivery of the process after it.
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry<V>>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn get(&self, key: &str) -> Option<Option<Arc<V>>> {
        self.map()
            .get(key)
            .filter(|(at, _)| at.elapsed() < SUBSCRIBER_CACHE_TTL)
            .map(|(_, v)| v.clone())
    }

    fn forget(&self, key: &str) {
        self.map().remove(key);
    }

    fn put(&self, key: &str, value: Option<Arc<V>>) {
        self.map().insert(key.to_owned(), (Instant::now(), value));
    }
}

impl<V: HasHealth> TtlCache<V> {
    /// The cached endpoint, unless it is disabled: a cached "disabled" is read again, as
    /// its owner may have just re-enabled it.
    fn get_unless_disabled(&self, key: &str) -> Option<Option<Arc<V>>> {
        self.get(key)
            .filter(|hit| !hit.as_ref().is_some_and(|v| v.health().is_disabled()))
    }
}

/// An endpoint setting that carries its delivery health.
trait HasHealth {
    fn health(&self) -> &EndpointHealth;
}

impl HasHealth for Application {
    fn health(&self) -> &EndpointHealth {
        &self.health
    }
}

impl HasHealth for Subscription {
    fn health(&self) -> &EndpointHealth {
        &self.health
    }
}

impl<V: HasHealth> HasHealth for Named<V> {
    fn health(&self) -> &EndpointHealth {
        self.settings.health()
    }
}

/// An endpoint's settings as read, with the names every attempt gives the endpoint worked
/// out once, when they are read: per attempt, formatting its name and hashing a
/// subscription's attempt-log key (SHA-256 and hex) took 0.9 µs of an ORCID-style message
/// in figure 2's profile (docs/benchmarks.md, fourth pass).
#[derive(Debug)]
pub(super) struct Named<V> {
    pub(super) settings: V,
    /// The endpoint as logs and operational events name it.
    name: String,
    /// Its attempt log's key.
    key: EndpointKey,
}

impl Named<Subscription> {
    fn subscription(subscription: Subscription) -> Self {
        Self {
            name: subscription.endpoint(),
            key: EndpointKey::subscription(&subscription.record, &subscription.callback),
            settings: subscription,
        }
    }
}

impl Named<Application> {
    fn application(application: Application) -> Self {
        Self {
            name: application.endpoint(),
            key: EndpointKey::application(&application.id),
            settings: application,
        }
    }
}

/// The cached settings of every subscriber the handler has met.
#[derive(Default)]
pub(super) struct Subscribers {
    applications: TtlCache<Named<Application>>,
    clients: TtlCache<OAuthClient>,
    subscriptions: TtlCache<Named<Subscription>>,
}

/// The endpoint a job goes to, with its health as last read.
#[derive(Debug, Clone)]
pub(super) enum Endpoint {
    Subscription(Arc<Named<Subscription>>),
    Application(Arc<Named<Application>>),
}

impl Endpoint {
    /// The endpoint as logs and operational events name it.
    pub(super) fn name(&self) -> &str {
        match self {
            Self::Subscription(s) => &s.name,
            Self::Application(a) => &a.name,
        }
    }

    /// Its attempt log's key.
    pub(super) fn key(&self) -> &EndpointKey {
        match self {
            Self::Subscription(s) => &s.key,
            Self::Application(a) => &a.key,
        }
    }

    pub(super) fn health(&self) -> &EndpointHealth {
        match self {
            Self::Subscription(s) => &s.settings.health,
            Self::Application(a) => &a.settings.health,
        }
    }

    /// The same endpoint with `health` in place of what was read.
    fn with_health(&self, health: &EndpointHealth) -> Self {
        fn updated<V: Clone>(named: &Named<V>, set: impl FnOnce(&mut V)) -> Arc<Named<V>> {
            let mut settings = named.settings.clone();
            set(&mut settings);
            Arc::new(Named {
                settings,
                name: named.name.clone(),
                key: named.key.clone(),
            })
        }
        match self {
            Self::Subscription(s) => Self::Subscription(updated(s, |s| s.health = health.clone())),
            Self::Application(a) => Self::Application(updated(a, |a| a.health = health.clone())),
        }
    }
}

impl Delivery {
    /// Reads each client and application of the batch once, before the concurrent
    /// deliveries would all miss the cache at the same moment and read it a hundred times.
    pub(super) async fn prefetch_subscribers<'a>(
        &self,
        jobs: impl Iterator<Item = &'a DeliveryJob>,
    ) {
        let mut clients = BTreeSet::new();
        let mut applications = BTreeSet::new();
        for job in jobs {
            match &job.target {
                Target::Callback { client, .. } => clients.insert(client),
                Target::Application { application, .. } => applications.insert(application),
                Target::SyncStep { .. } => false,
            };
        }
        // A failed read here is only a missed warm-up: each delivery reads again itself.
        let reads: Vec<_> = clients
            .iter()
            .map(|c| futures::future::Either::Left(async move { self.client(c).await.map(|_| ()) }))
            .chain(applications.iter().map(|a| {
                futures::future::Either::Right(async move { self.application(a).await.map(|_| ()) })
            }))
            .collect();
        let _ = futures::stream::iter(reads)
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await;
    }

    /// Drops the cached settings of a job's subscriber, so they are read again.
    pub(super) fn forget_subscriber(&self, target: &Target) {
        let cache = &self.subscribers;
        match target {
            Target::Callback {
                record,
                callback,
                client,
            } => {
                cache.clients.forget(client.as_str());
                cache.subscriptions.forget(&endpoint_name(record, callback));
            }
            Target::Application { application, .. } => {
                cache.applications.forget(application.as_str())
            }
            Target::SyncStep { .. } => {}
        }
    }

    pub(super) async fn application(
        &self,
        id: &ApplicationId,
    ) -> BackendResult<Option<Arc<Named<Application>>>> {
        let cache = &self.subscribers.applications;
        if let Some(hit) = cache.get_unless_disabled(id.as_str()) {
            return Ok(hit);
        }
        let app = self
            .ports
            .applications
            .get_application(id)
            .await?
            .map(|app| Arc::new(Named::application(app)));
        cache.put(id.as_str(), app.clone());
        Ok(app)
    }

    pub(super) async fn client(&self, id: &ClientId) -> BackendResult<Option<Arc<OAuthClient>>> {
        let cache = &self.subscribers.clients;
        if let Some(hit) = cache.get(id.as_str()) {
            return Ok(hit);
        }
        let client = self.ports.clients.get_client(id).await?.map(Arc::new);
        cache.put(id.as_str(), client.clone());
        Ok(client)
    }

    /// Caches subscriptions its caller has just read (the flush, before it makes their
    /// jobs' first attempts), as a read of each would: their jobs find them without a
    /// `GetItem` each for the items the flush's query has just returned.
    pub(crate) fn remember_subscriptions(&self, subscriptions: Vec<Subscription>) {
        for subscription in subscriptions {
            self.remember_subscription(subscription);
        }
    }

    /// Caches a subscription that was found, under its endpoint's name (the key
    /// [`Self::subscription`] looks it up by).
    fn remember_subscription(&self, subscription: Subscription) -> Arc<Named<Subscription>> {
        let named = Arc::new(Named::subscription(subscription));
        self.subscribers
            .subscriptions
            .put(&named.name, Some(named.clone()));
        named
    }

    pub(super) async fn subscription(
        &self,
        record: &RecordId,
        callback: &CallbackUrl,
    ) -> BackendResult<Option<Arc<Named<Subscription>>>> {
        let key = endpoint_name(record, callback);
        if let Some(hit) = self.subscribers.subscriptions.get_unless_disabled(&key) {
            return Ok(hit);
        }
        // Only found subscriptions are remembered: a callback registered again right after
        // being removed must not have its jobs dropped.
        Ok(self
            .ports
            .subscriptions
            .get_subscription(record, callback)
            .await?
            .map(|subscription| self.remember_subscription(subscription)))
    }

    /// Writes an endpoint's health to its store.
    pub(super) async fn store_health(
        &self,
        endpoint: &Endpoint,
        health: &EndpointHealth,
    ) -> BackendResult<()> {
        match endpoint {
            Endpoint::Subscription(s) => {
                self.ports
                    .subscriptions
                    .set_subscription_health(&s.settings.record, &s.settings.callback, health)
                    .await
            }
            Endpoint::Application(a) => {
                self.ports
                    .applications
                    .set_application_health(&a.settings.id, health)
                    .await
            }
        }
    }

    /// Caches the endpoint with `health`, and returns it so.
    pub(super) fn remember_health(&self, endpoint: &Endpoint, health: &EndpointHealth) -> Endpoint {
        let updated = endpoint.with_health(health);
        let cache = &self.subscribers;
        match &updated {
            Endpoint::Subscription(s) => cache.subscriptions.put(&s.name, Some(s.clone())),
            Endpoint::Application(a) => cache
                .applications
                .put(a.settings.id.as_str(), Some(a.clone())),
        }
        updated
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cache_whose_lock_was_poisoned_still_serves() {
        let cache: TtlCache<OAuthClient> = TtlCache::default();
        cache.put("app-1", None);
        let poisoned = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _held = cache.0.lock();
            panic!("a panic while the lock is held");
        }));
        assert!(poisoned.is_err() && cache.0.is_poisoned());
        assert_eq!(cache.get("app-1").map(|hit| hit.is_none()), Some(true));
        cache.forget("app-1");
        assert!(cache.get("app-1").is_none());
    }
}
