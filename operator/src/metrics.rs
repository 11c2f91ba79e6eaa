//! Prometheus metrics, served on the admin port's `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The prefix of every operator metric's name.
const PREFIX: &str = "pier_operator";

/// Labels naming a controller.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// `network`, `endpoint` or `portpublish`.
    pub controller: String,
}

/// Labels of a failed or refused reconcile.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The controller.
    pub controller: String,
    /// The condition reason or error kind (a small fixed set).
    pub reason: String,
}

/// Labels of an allocation.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// `subnet`, `address` or `port`.
    pub kind: String,
}

/// Labels of a Network's address pool.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NetworkLabels {
    /// The Network.
    pub network: String,
}

/// Every metric the operator exports.
#[derive(Debug)]
pub struct Metrics {
    /// The operator's metrics alone (see [`Metrics::encode`]).
    registry: Registry,
    /// Reconciles run, per controller.
    pub reconciles: Family<ControllerLabels, Counter>,
    /// Reconciles that failed or ended in a refusal, per controller and reason.
    pub errors: Family<ErrorLabels, Counter>,
    /// Subnets, addresses and ports handed out.
    pub allocations: Family<KindLabels, Counter>,
    /// Subnets, addresses and ports given back.
    pub releases: Family<KindLabels, Counter>,
    /// Addresses allocated, per Network.
    pub pool_used: Family<NetworkLabels, Gauge>,
    /// Addresses still free for dynamic allocation, per Network.
    pub pool_free: Family<NetworkLabels, Gauge>,
    /// Host ports held in the whole cluster.
    pub ports_held: Gauge,
    /// 1 while this replica holds the lease and runs the controllers.
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Metrics {
            reconciles: Family::default(),
            errors: Family::default(),
            allocations: Family::default(),
            releases: Family::default(),
            pool_used: Family::default(),
            pool_free: Family::default(),
            ports_held: Gauge::default(),
            leader: Gauge::default(),
            registry: Registry::default(),
        };
        let mut registry = Registry::default();
        m.register(&mut registry);
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// Registers every metric in `registry`, under `pier_operator_` (the admin port's registry;
    /// the same handles, so both see every count).
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix(PREFIX);
        registry.register("reconciles", "Reconciles run", self.reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconciles that failed or were refused, by reason",
            self.errors.clone(),
        );
        registry.register(
            "allocations",
            "Subnets, addresses and host ports handed out",
            self.allocations.clone(),
        );
        registry.register(
            "releases",
            "Subnets, addresses and host ports given back",
            self.releases.clone(),
        );
        registry.register(
            "pool_addresses_used",
            "Addresses allocated in a Network's pool",
            self.pool_used.clone(),
        );
        registry.register(
            "pool_addresses_free",
            "Addresses still free for dynamic allocation in a Network's pool",
            self.pool_free.clone(),
        );
        registry.register("host_ports", "Host ports held", self.ports_held.clone());
        registry.register(
            "leader",
            "1 while this replica is the leader",
            self.leader.clone(),
        );
    }

    /// Counts a reconcile.
    pub fn reconciled(&self, controller: &str) {
        self.reconciles
            .get_or_create(&ControllerLabels {
                controller: controller.to_owned(),
            })
            .inc();
    }

    /// Counts a failure or refusal.
    pub fn error(&self, controller: &str, reason: &str) {
        self.errors
            .get_or_create(&ErrorLabels {
                controller: controller.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts allocations.
    pub fn allocated(&self, kind: &str, n: u64) {
        self.allocations
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .inc_by(n);
    }

    /// Counts releases.
    pub fn released(&self, kind: &str, n: u64) {
        self.releases
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .inc_by(n);
    }

    /// Total reconciles over all controllers (tests read it to see who did the work).
    pub fn total_reconciles(&self) -> u64 {
        ["network", "endpoint", "portpublish"]
            .iter()
            .map(|c| {
                self.reconciles
                    .get_or_create(&ControllerLabels {
                        controller: (*c).to_owned(),
                    })
                    .get()
            })
            .sum()
    }

    /// Updates the pool gauges from the allocations.
    pub fn observe(&self, allocations: &crate::allocations::Allocations) {
        for (network, used, free) in allocations.pool_usage() {
            let labels = NetworkLabels { network };
            self.pool_used
                .get_or_create(&labels)
                .set(i64::try_from(used).unwrap_or(i64::MAX));
            self.pool_free.get_or_create(&labels).set(i64::from(free));
        }
        self.ports_held
            .set(i64::try_from(allocations.ports_held()).unwrap_or(i64::MAX));
    }

    /// The operator's metrics alone in the text exposition format (tests read them; the admin
    /// port serves its own registry).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_counters_and_gauges() {
        let m = Metrics::default();
        m.reconciled("endpoint");
        m.error("endpoint", "NetworkNotFound");
        m.allocated("address", 2);
        let mut a = crate::allocations::Allocations::default();
        a.ensure_network(
            "bridge",
            &crate::allocations::NetworkRequest {
                subnet: None,
                gateway: None,
                ip_range: None,
                aux_addresses: Default::default(),
            },
        )
        .expect("bridge");
        m.observe(&a);
        let text = m.encode();
        assert!(
            text.contains("pier_operator_reconciles_total{controller=\"endpoint\"} 1"),
            "{text}"
        );
        assert!(text.contains("reason=\"NetworkNotFound\""), "{text}");
        assert!(
            text.contains("pier_operator_allocations_total{kind=\"address\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("pier_operator_pool_addresses_free{network=\"bridge\"} 65533"),
            "{text}"
        );
        assert_eq!(m.total_reconciles(), 1);
    }
}
