//! The firewall's part of a plan: table `inet pier` (rendered from the state and diffed against
//! the kernel's by [`crate::firewall`]) and, in full plans, Pier's accepts in other firewalls.

use std::collections::BTreeSet;
use std::path::Path;

use super::plan::Plan;
use super::report::ObjectKey;
use super::scope::Scope;
use super::snapshot::Snapshot;
use crate::firewall;
use crate::kernel::hostnet;
use crate::kernel::netlink::LinkKind;
use crate::state::{Driver, NodeState};
use pier_runtime::error_chain as chain;

/// The VXLAN ids of the state's overlays whose Pier device exists now: the only ones the table
/// guards (a missing device may be one another program's device keeps from being made).
fn vxlan_devices(snapshot: &Snapshot, state: &NodeState) -> BTreeSet<u32> {
    state
        .networks
        .iter()
        .filter(|n| n.driver == Driver::Overlay)
        .filter_map(|n| {
            let id = n.vxlan_id?;
            let link = snapshot.link(&n.vxlan_name())?;
            let made = link.kind == LinkKind::Vxlan && link.vxlan.is_some_and(|c| c.id == id);
            made.then_some(id)
        })
        .collect()
}

/// Adds what the firewalls need to `plan`; what cannot be read becomes a problem of its key.
pub(super) fn plan(
    host_netns: Option<&Path>,
    snapshot: &Snapshot,
    state: &NodeState,
    scope: &Scope,
    plan: &mut Plan,
) {
    // A full plan also finds the other engines' bridges (a scoped one keeps what the kernel has:
    // it has not read every link).
    let host_bridges = match &snapshot.host_routes {
        Some(Ok(routes)) => Some(hostnet::host_bridges(&snapshot.links, routes)),
        Some(Err(message)) => {
            plan.problem(ObjectKey::Firewall, message.clone());
            None
        }
        None => None,
    };
    let vxlan_devices = vxlan_devices(snapshot, state);
    match firewall::plan_with(
        host_netns,
        state,
        host_bridges.as_deref(),
        Some(&vxlan_devices),
    ) {
        Ok(table) => plan.firewall = Some(table),
        Err(error) => plan.problem(ObjectKey::Firewall, chain(&error)),
    }
    // Other firewalls' accepts are constant and only need repair when someone else's reload took
    // them: a full apply (start, resync) checks them, an attach does not pay for running
    // iptables-save.
    if !scope.is_full() {
        return;
    }
    match firewall::iptables_plan(host_netns) {
        Ok(changes) => plan.iptables = changes,
        Err(error) => plan.problem(ObjectKey::Iptables, chain(&error)),
    }
    match firewall::native_plan(host_netns) {
        Ok(native) => {
            plan.nftables = native.changes;
            if !native.notes.is_empty() {
                plan.notes.insert(ObjectKey::Nftables, native.notes);
            }
        }
        Err(error) => plan.problem(ObjectKey::Nftables, chain(&error)),
    }
}
