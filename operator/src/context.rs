//! What every reconcile shares: the client, the allocations (behind one lock, so two reconciles
//! never hand out the same thing), the event recorder, metrics and per-object backoff.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Resource, ResourceExt};

use crate::allocations::Allocations;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::stores::Stores;

/// The field manager of every write (DESIGN.md §4).
pub const FIELD_MANAGER: &str = "pier-operator";
/// The finalizer that holds deletions until allocations are released.
pub const FINALIZER: &str = pier_crds::finalizers::OPERATOR;

/// Shared state of the controllers.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Settings.
    pub config: Config,
    allocations: Mutex<Allocations>,
    recorder: Recorder,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The controllers' reflector stores, read instead of the API.
    pub stores: Stores,
    /// Consecutive failures per object, for the backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client and recorder have no Debug; the allocations are what matter when debugging.
        f.debug_struct("Context")
            .field("config", &self.config)
            .field("allocations", &self.allocations)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// A context over rebuilt allocations.
    pub fn new(
        client: Client,
        config: Config,
        allocations: Allocations,
        metrics: Arc<Metrics>,
        stores: Stores,
    ) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: Some(config.lease.identity.clone()),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            config,
            allocations: Mutex::new(allocations),
            metrics,
            stores,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// The allocations. Never held across an `.await`: allocation is in memory, the API write
    /// comes after.
    pub fn allocations(&self) -> MutexGuard<'_, Allocations> {
        // A panic while holding the lock leaves allocations that are still consistent (every
        // facade method is all-or-nothing), so a poisoned lock is used as is.
        self.allocations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Publishes an Event about `obj`. Failing to publish is logged, never fatal: Events are
    /// best-effort in Kubernetes too.
    pub async fn event<K>(&self, obj: &K, warning: bool, reason: &str, action: &str, note: String)
    where
        K: Resource<DynamicType = ()>,
    {
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_owned(),
            note: Some(note),
            action: action.to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &obj.object_ref(&())).await {
            tracing::warn!(error = %e, object = %obj.name_any(), reason, "cannot publish event");
        }
    }

    /// Forgets `key`'s failures (it reconciled).
    pub fn succeeded(&self, key: &str) {
        let mut failures = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        failures.remove(key);
    }

    /// Counts a failure of `key` and returns how long to wait: `min_backoff` doubled per
    /// consecutive failure, at most `max_backoff`.
    pub fn backoff(&self, key: &str) -> Duration {
        let mut failures = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = failures.entry(key.to_owned()).or_default();
        *n = n.saturating_add(1);
        backoff_delay(self.config.min_backoff, self.config.max_backoff, *n)
    }

    /// Updates the pool gauges.
    pub fn observe(&self) {
        let allocations = self.allocations();
        self.metrics.observe(&allocations);
    }
}

/// `min` doubled `failures - 1` times, capped at `max`.
pub fn backoff_delay(min: Duration, max: Duration, failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    min.saturating_mul(factor).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_then_caps() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(5));
        assert_eq!(backoff_delay(min, max, 1), Duration::from_millis(100));
        assert_eq!(backoff_delay(min, max, 2), Duration::from_millis(200));
        assert_eq!(backoff_delay(min, max, 4), Duration::from_millis(800));
        assert_eq!(backoff_delay(min, max, 10), max);
        assert_eq!(backoff_delay(min, max, u32::MAX), max);
    }
}
