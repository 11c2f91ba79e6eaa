//! The pure half of a plan: what the links of a node must change, from a [`Snapshot`] of the
//! kernel and the desired [`NodeState`], within a [`Scope`]. No I/O: every kernel fact comes from
//! the snapshot, so each case is unit-tested with a hand-built one.
//!
//! One module per driver ([`bridge`], [`overlay`], [`null`], [`host`]: what a network or an
//! endpoint of that driver needs),
//! [`garbage`] for Pier's links the state no longer wants, and [`checks`] for the endpoint checks
//! drivers share. Adding a driver means one module here and its steps in the executor.

mod bridge;
mod checks;
mod garbage;
mod host;
#[cfg(test)]
mod ipv6_tests;
mod null;
mod overlay;
#[cfg(test)]
mod overlay_tests;
#[cfg(test)]
mod tests;

pub use garbage::is_owned;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use super::plan::{Plan, Step};
use super::report::ObjectKey;
use super::scope::Scope;
use super::snapshot::Snapshot;
use crate::kernel::netlink::Link;
use crate::state::{Attachment, Netns, NetworkState, NodeState};

/// The steps that make the kernel in `snapshot` match `state` within `scope`, what cannot be
/// applied, and what is in sync. The firewall's part of the plan is not here.
pub fn diff(snapshot: &Snapshot, state: &NodeState, scope: &Scope) -> Plan {
    let mut diff = Diff::new(snapshot, state, scope);
    bridge::forwarding(&mut diff);
    for network in state.networks.iter().filter(|n| scope.has_network(n)) {
        bridge::network(&mut diff, network);
        overlay::network(&mut diff, network);
    }
    for (position, endpoint) in state.endpoints.iter().enumerate() {
        // A scoped plan checks its few endpoints against the earlier ones by a scan instead of
        // filling maps with every endpoint of the node.
        if !scope.has_endpoint(&endpoint.id) {
            continue;
        }
        match &endpoint.attachment {
            Attachment::Shared { endpoint: target } => host::shared(&mut diff, endpoint, target),
            Attachment::Host { network } => host::host(&mut diff, endpoint, network),
            Attachment::Null { network } => null::endpoint(&mut diff, endpoint, network),
            Attachment::Bridge(attachment) => {
                bridge::endpoint(&mut diff, position, endpoint, attachment)
            }
        }
    }
    garbage::collect(&mut diff);
    diff.finish()
}

/// A diff under way: the inputs, indexes of them, and the steps found so far by kind.
struct Diff<'a> {
    snapshot: &'a Snapshot,
    state: &'a NodeState,
    scope: &'a Scope,
    links: HashMap<&'a str, &'a Link>,
    networks: BTreeMap<&'a str, &'a NetworkState>,
    plan: Plan,
    deletes: Vec<Step>,
    bridges: Vec<Step>,
    attaches: Vec<Step>,
    others: Vec<Step>,
    /// Host veths of the state's bridge endpoints planned so far.
    wanted_veths: BTreeSet<String>,
    /// First endpoint per (network, address) and per (namespace, interface) (full plans).
    used_addresses: HashMap<(&'a str, IpAddr), &'a str>,
    used_interfaces: HashMap<(&'a Netns, &'a str), &'a str>,
    /// Every endpoint id, when some endpoint shares another's namespace (few states do).
    endpoint_ids: HashSet<&'a str>,
}

impl<'a> Diff<'a> {
    fn new(snapshot: &'a Snapshot, state: &'a NodeState, scope: &'a Scope) -> Diff<'a> {
        let shares = state
            .endpoints
            .iter()
            .any(|e| matches!(e.attachment, Attachment::Shared { .. }));
        Diff {
            snapshot,
            state,
            scope,
            links: snapshot
                .links
                .iter()
                .map(|l| (l.name.as_str(), l))
                .collect(),
            networks: state.networks_by_name(),
            plan: Plan::default(),
            deletes: Vec::new(),
            bridges: Vec::new(),
            attaches: Vec::new(),
            others: Vec::new(),
            wanted_veths: BTreeSet::new(),
            used_addresses: HashMap::new(),
            used_interfaces: HashMap::new(),
            endpoint_ids: if shares {
                state.endpoints.iter().map(|e| e.id.as_str()).collect()
            } else {
                HashSet::new()
            },
        }
    }

    fn problem(&mut self, object: &ObjectKey, message: String) {
        self.plan.problem(object.clone(), message);
    }

    fn in_sync(&mut self, object: ObjectKey) {
        self.plan.in_sync.insert(object);
    }

    /// The plan, with its steps in the order they run.
    fn finish(self) -> Plan {
        let mut plan = self.plan;
        // Deletions first: they free names, addresses and routes that new objects may reuse.
        plan.steps.extend(self.deletes);
        plan.steps.extend(self.bridges);
        plan.steps.extend(self.attaches);
        plan.steps.extend(self.others);
        plan
    }
}
