//! Pier's links that the state does not want. A full plan looks at every link it read; a
//! removal plan only at the links it was asked to remove (it has not read the others); an
//! endpoints or overlay plan collects nothing.

use std::collections::{BTreeSet, HashMap};

use super::Diff;
use crate::dataplane::plan::Step;
use crate::kernel::netlink::{Link, LinkKind};
use crate::state::{Attachment, Driver, EndpointState};
use pier_crds::names::{is_pier_bridge_name, is_pier_veth_name, is_pier_vxlan_name};

/// Whether a link found in the host namespace is Pier's (name pattern and kind both match).
pub fn is_owned(link: &Link) -> bool {
    match link.kind {
        LinkKind::Bridge => is_pier_bridge_name(&link.name),
        LinkKind::Veth => is_pier_veth_name(&link.name),
        LinkKind::Vxlan => is_pier_vxlan_name(&link.name),
        _ => false,
    }
}

pub(super) fn collect(diff: &mut Diff<'_>) {
    let (scope, snapshot, state) = (diff.scope, diff.snapshot, diff.state);
    let garbage: Vec<&Link> = snapshot
        .links
        .iter()
        .filter(|l| scope.may_remove(&l.name) && is_owned(l))
        .collect();
    if !scope.is_full() {
        // Veths of endpoints outside the scope are wanted too (a full plan knows them all).
        let names: BTreeSet<&str> = garbage.iter().map(|l| l.name.as_str()).collect();
        let outside: Vec<String> = state
            .endpoints
            .iter()
            .filter(|e| matches!(e.attachment, Attachment::Bridge(_)))
            .map(EndpointState::host_veth_name)
            .filter(|name| names.contains(name.as_str()))
            .collect();
        diff.wanted_veths.extend(outside);
    }
    let wanted_bridges: BTreeSet<String> = state
        .networks
        .iter()
        .filter(|n| n.driver.has_bridge())
        .map(|n| n.bridge_name())
        .collect();
    let wanted_vxlans: BTreeSet<String> = state
        .networks
        .iter()
        .filter(|n| n.driver == Driver::Overlay)
        .map(|n| n.vxlan_name())
        .collect();
    let already: BTreeSet<u32> = diff
        .deletes
        .iter()
        .filter_map(|s| match s {
            Step::DeleteLink { index, .. } => Some(*index),
            _ => None,
        })
        .collect();
    let by_index: HashMap<u32, &Link> = snapshot.links.iter().map(|l| (l.index, l)).collect();
    for link in garbage {
        let wanted = match link.kind {
            LinkKind::Bridge => wanted_bridges.contains(&link.name),
            LinkKind::Vxlan => wanted_vxlans.contains(&link.name),
            _ => diff.wanted_veths.contains(&link.name),
        };
        if wanted || already.contains(&link.index) {
            continue;
        }
        let reason = match (&link.kind, link.master.and_then(|m| by_index.get(&m))) {
            (LinkKind::Bridge, _) => "no network in the state uses it".to_owned(),
            (LinkKind::Vxlan, _) => "no overlay network in the state uses it".to_owned(),
            (_, Some(master)) => format!("no endpoint in the state uses it (on {})", master.name),
            _ => "no endpoint in the state uses it".to_owned(),
        };
        diff.deletes.push(Step::DeleteLink {
            name: link.name.clone(),
            index: link.index,
            reason,
        });
    }
}
