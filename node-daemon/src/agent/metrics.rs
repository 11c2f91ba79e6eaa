//! The node agent's Prometheus metrics (`pier_node_*`), served on `pier node`'s admin port:
//! attach and detach latency, kernel errors by kind, DNS answers by response code, and the
//! objects the agent watches by condition (every Network; this node's Endpoints and
//! PortPublishes).

use std::collections::BTreeMap;

use pier_crds::Condition;
use pier_crds::conditions::WithConditions;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::Error;
use super::build::Built;
use super::context::Context;
use crate::dataplane::{ObjectKey, Report, Scope};
use crate::dns::metrics::DnsMetrics;

/// The prefix of every node metric's name.
const PREFIX: &str = "pier_node";

/// The kind an apply that failed as a whole is counted under (the host namespace unreadable, the
/// state invalid); a failed object is counted under its report key's kind ([`ObjectKey::kind`]).
const WHOLE_APPLY: &str = "dataplane";

/// The label of a kernel error.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// What failed: a report key's kind (`link`, `endpoint`, `network`, `firewall`, ...) or
    /// `dataplane`.
    pub kind: &'static str,
}

/// The labels of a count of objects.
#[derive(Debug, Clone, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct ConditionLabels {
    /// `Network`, `Endpoint` or `PortPublish`.
    pub kind: &'static str,
    /// The condition's type (`Ready`, `Attached`, `Published`).
    pub condition: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
}

/// Every metric the node agent exports. Clones of the handles count into the same metrics.
#[derive(Debug)]
pub struct NodeMetrics {
    /// Seconds an attach waited for its endpoint's kernel apply (shared with the attaches
    /// applied together).
    pub attach: Histogram,
    /// How many attaches each apply served (see [`super::arrival`]): the count is the number of
    /// applies, the sum the number of attaches.
    pub attach_batch: Histogram,
    /// Seconds a detach waited for its links to be removed (with the detaches removed together).
    pub detach: Histogram,
    /// How many detaches each removal served (see [`super::removal`]): the count is the number
    /// of removals, the sum the number of detaches.
    pub detach_batch: Histogram,
    /// Kernel objects that failed to apply, by kind.
    pub kernel_errors: Family<KindLabels, Counter>,
    /// Endpoints evaluated to keep the node's state up to date (see `agent::index`): an Endpoint
    /// event evaluates that Endpoint (and any sharing its namespace), a resync all of them.
    pub state_evaluations: Counter,
    /// Objects the agent watches by condition (every Network of the cluster; this node's
    /// Endpoints and PortPublishes), as of the last full reconcile.
    pub objects: Family<ConditionLabels, Gauge>,
    /// DNS answers by response code (the embedded DNS server counts into these).
    pub dns: DnsMetrics,
}

/// Latency buckets from 0.5 ms to about 4 s: an attach takes a few milliseconds, a slow one
/// (a loaded node, a namespace being created) up to seconds.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 14))
}

impl Default for NodeMetrics {
    fn default() -> Self {
        let kernel_errors = Family::<KindLabels, Counter>::default();
        // Every kind listed from the start, at 0: a scrape shows the series before any error.
        for kind in ObjectKey::KINDS.into_iter().chain([WHOLE_APPLY]) {
            let _ = kernel_errors.get_or_create(&KindLabels { kind });
        }
        NodeMetrics {
            attach: latency(),
            attach_batch: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            detach: latency(),
            detach_batch: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            kernel_errors,
            state_evaluations: Counter::default(),
            objects: Family::default(),
            dns: DnsMetrics::default(),
        }
    }
}

impl NodeMetrics {
    /// Registers every metric in `registry` under `pier_node_`.
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix(PREFIX);
        registry.register(
            "attach_duration_seconds",
            "Time an endpoint attach waited for its kernel apply",
            self.attach.clone(),
        );
        registry.register(
            "attach_batch_size",
            "Endpoint attaches one apply served",
            self.attach_batch.clone(),
        );
        registry.register(
            "detach_duration_seconds",
            "Time an endpoint detach waited for its links to be removed",
            self.detach.clone(),
        );
        registry.register(
            "detach_batch_size",
            "Endpoint detaches whose links one removal (one apply) took",
            self.detach_batch.clone(),
        );
        registry.register(
            "kernel_errors",
            "Kernel objects that failed to apply, by kind",
            self.kernel_errors.clone(),
        );
        registry.register(
            "state_evaluations",
            "Endpoints evaluated to keep the node's state up to date (one per Endpoint event; all at each resync)",
            self.state_evaluations.clone(),
        );
        registry.register(
            "objects",
            "Networks, and this node's Endpoints and PortPublishes, by condition type and status, at the last full reconcile",
            self.objects.clone(),
        );
        self.dns.register(registry);
    }

    /// Counts the failures of an apply: each failed object by kind, or the whole apply.
    fn count_failures(&self, result: &Result<Report, Error>) {
        match result {
            Ok(report) => {
                for (object, _) in report.failures() {
                    let kind = object.kind();
                    self.kernel_errors.get_or_create(&KindLabels { kind }).inc();
                }
            }
            Err(Error::Dataplane(_)) => {
                self.kernel_errors
                    .get_or_create(&KindLabels { kind: WHOLE_APPLY })
                    .inc();
            }
            Err(_) => {}
        }
    }

    /// Sets the objects-by-condition gauges to `counts` (label sets no longer seen are dropped).
    pub fn set_objects(&self, counts: BTreeMap<ConditionLabels, i64>) {
        self.objects.clear();
        for (labels, count) in counts {
            self.objects.get_or_create(&labels).set(count);
        }
    }

    /// Recounts the objects by condition from the agent's stores.
    pub fn observe_objects(&self, ctx: &Context) {
        let (networks, endpoints, ports) = (
            ctx.networks.state(),
            ctx.endpoints.state(),
            ctx.ports.state(),
        );
        let all = networks
            .iter()
            .map(|n| ("Network", n.conditions()))
            .chain(endpoints.iter().map(|e| ("Endpoint", e.conditions())))
            .chain(ports.iter().map(|p| ("PortPublish", p.conditions())));
        self.set_objects(count_by_condition(all));
    }
}

/// How many objects have each (kind, condition type, status).
pub fn count_by_condition<'a>(
    objects: impl IntoIterator<Item = (&'static str, &'a [Condition])>,
) -> BTreeMap<ConditionLabels, i64> {
    let mut counts = BTreeMap::new();
    for (kind, conditions) in objects {
        for condition in conditions {
            let labels = ConditionLabels {
                kind,
                condition: condition.type_.clone(),
                status: condition.status.clone(),
            };
            *counts.entry(labels).or_insert(0) += 1;
        }
    }
    counts
}

/// `ctx.apply` in its turn (see [`Context::apply_turn`]), observed: its kernel failures counted
/// by kind.
pub async fn apply(ctx: &Context, built: &mut Built, scope: Scope) -> Result<Report, Error> {
    let _turn = ctx.apply_turn.lock().await;
    apply_in_turn(ctx, built, scope).await
}

/// [`apply`] for a caller that holds the apply turn already (a full reconcile, which builds its
/// state in the turn).
pub async fn apply_in_turn(
    ctx: &Context,
    built: &mut Built,
    scope: Scope,
) -> Result<Report, Error> {
    let result = ctx.apply(built, scope).await;
    ctx.config.metrics.count_failures(&result);
    result
}

#[cfg(test)]
mod tests {
    use crate::dataplane::Outcome;

    use super::*;

    fn condition(type_: &str, status: &str) -> Condition {
        pier_crds::conditions::observe(&[], type_, status == "True", "Why", "", None)
    }

    fn encode(metrics: &NodeMetrics) -> String {
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        text
    }

    #[test]
    fn failed_report_entries_are_counted_by_kind() {
        let metrics = NodeMetrics::default();
        let mut report = Report::default();
        report.objects.insert(
            ObjectKey::Link("pv1".into()),
            Outcome::Failed("exists".into()),
        );
        report.objects.insert(
            ObjectKey::Link("pv2".into()),
            Outcome::Failed("exists".into()),
        );
        report
            .objects
            .insert(ObjectKey::endpoint("a"), Outcome::InSync);
        metrics.count_failures(&Ok(report));
        let text = encode(&metrics);
        assert!(
            text.contains("pier_node_kernel_errors_total{kind=\"link\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("pier_node_kernel_errors_total{kind=\"endpoint\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn objects_are_counted_by_kind_condition_and_status() {
        let ready = [condition("Ready", "True"), condition("Attached", "True")];
        let refused = [condition("Ready", "True"), condition("Attached", "False")];
        let counts = count_by_condition([
            ("Endpoint", &ready[..]),
            ("Endpoint", &ready[..]),
            ("Endpoint", &refused[..]),
            ("Network", &ready[..1]),
            ("PortPublish", &[][..]),
        ]);
        let get = |kind, condition: &str, status: &str| {
            counts
                .get(&ConditionLabels {
                    kind,
                    condition: condition.into(),
                    status: status.into(),
                })
                .copied()
        };
        assert_eq!(get("Endpoint", "Ready", "True"), Some(3));
        assert_eq!(get("Endpoint", "Attached", "True"), Some(2));
        assert_eq!(get("Endpoint", "Attached", "False"), Some(1));
        assert_eq!(get("Network", "Ready", "True"), Some(1));
        assert_eq!(counts.len(), 4);

        let metrics = NodeMetrics::default();
        metrics.set_objects(counts);
        metrics.set_objects(count_by_condition([("Network", &ready[..1])]));
        let text = encode(&metrics);
        assert!(
            text.contains(
                "pier_node_objects{kind=\"Network\",condition=\"Ready\",status=\"True\"} 1"
            ),
            "{text}"
        );
        assert!(
            !text.contains("kind=\"Endpoint\""),
            "gone label sets: {text}"
        );
    }

    #[test]
    fn every_metric_is_listed_under_the_node_prefix() {
        let metrics = NodeMetrics::default();
        metrics.attach.observe(0.002);
        let text = encode(&metrics);
        for name in [
            "pier_node_attach_duration_seconds_bucket",
            "pier_node_attach_duration_seconds_count 1",
            "pier_node_detach_duration_seconds_count 0",
            "pier_node_kernel_errors_total{kind=\"dataplane\"} 0",
            "pier_node_state_evaluations_total 0",
            "pier_node_dns_queries_total{rcode=\"NOERROR\"} 0",
        ] {
            assert!(text.contains(name), "{name} missing:\n{text}");
        }
    }
}
