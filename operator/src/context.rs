//! What every reconcile shares: the client, the allocations (behind one lock, so two reconciles
//! never hand out the same thing), the Events, metrics and per-object backoff.

use std::sync::{Arc, Mutex, MutexGuard};

use kube::Client;
use pier_runtime::{Backoff, Events};

use crate::allocations::Allocations;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::pace::{ENDPOINT_COUNT_PACE, Pacer};
use crate::stores::Stores;

/// The field manager of every write: the allocations in status stay apart from the node's
/// conditions.
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
    /// Events about the objects reconciled.
    pub events: Events,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The controllers' reflector stores, read instead of the API.
    pub stores: Stores,
    /// Retry delays of the objects that are failing.
    pub backoff: Backoff,
    /// When each Network's endpoint count was last written (see [`crate::pace`]).
    pub endpoint_counts: Pacer,
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
        Context {
            events: Events::new(client.clone(), FIELD_MANAGER, config.lease.identity.clone()),
            backoff: Backoff::new(config.min_backoff, config.max_backoff),
            endpoint_counts: Pacer::new(ENDPOINT_COUNT_PACE),
            client,
            config,
            allocations: Mutex::new(allocations),
            metrics,
            stores,
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

    /// Updates the pool gauges.
    pub fn observe(&self) {
        let allocations = self.allocations();
        self.metrics.observe(&allocations);
    }
}
