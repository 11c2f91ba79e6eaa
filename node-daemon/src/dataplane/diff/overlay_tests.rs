//! The overlay driver's diff against hand-built snapshots: no kernel, no root.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::diff;
use super::tests::{
    applied, bare_node, bare_node6, bridge_endpoint, bridge_network, deleted, link,
};
use crate::dataplane::plan::{Plan, Step, VxlanFix};
use crate::dataplane::report::ObjectKey;
use crate::dataplane::scope::Scope;
use crate::dataplane::snapshot::{OverlayEntries, Snapshot};
use crate::kernel::netlink::{FdbEntry, LinkKind, NeighbourEntry, VxlanConf, parse_mac};
use crate::state::{Driver, NetworkState, NodeState, RemoteEndpoint};

const TUNNEL: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const NODE_B: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
const NODE_C: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 3);

/// What the kernel would have after an overlay step (called by `applied`).
pub(super) fn apply_overlay(snapshot: &mut Snapshot, step: &Step, next: &mut u32) {
    match step {
        Step::CreateVxlan(create) => {
            let mut made = link(*next, &create.vxlan, LinkKind::Vxlan);
            made.vxlan = Some(create.conf);
            made.mtu = Some(create.mtu);
            made.master = snapshot.link(&create.bridge).map(|l| l.index);
            snapshot.links.push(made);
            snapshot
                .overlay_entries
                .insert(create.vxlan.clone(), Ok(OverlayEntries::default()));
            *next += 1;
        }
        Step::FixVxlan { index, fixes, .. } => {
            for fix in fixes {
                let master = match fix {
                    VxlanFix::Master(bridge) => snapshot.link(bridge).map(|l| l.index),
                    _ => None,
                };
                let Some(vxlan) = snapshot.links.iter_mut().find(|l| l.index == *index) else {
                    continue;
                };
                match fix {
                    VxlanFix::Mtu(mtu) => vxlan.mtu = Some(*mtu),
                    VxlanFix::Master(_) => vxlan.master = master,
                    VxlanFix::Up => vxlan.up = true,
                }
            }
        }
        _ => apply_entry(snapshot, step),
    }
}

fn apply_entry(snapshot: &mut Snapshot, step: &Step) {
    let name = match step {
        Step::SetFdbEntry { vxlan, .. }
        | Step::DeleteFdbEntry { vxlan, .. }
        | Step::SetNeighbour { vxlan, .. }
        | Step::DeleteNeighbour { vxlan, .. } => vxlan,
        _ => return,
    };
    let Some(Ok(entries)) = snapshot.overlay_entries.get_mut(name) else {
        return;
    };
    match step {
        Step::SetFdbEntry {
            mac, destination, ..
        } => {
            // NLM_F_REPLACE changes the first remote of the MAC, or adds the entry.
            match entries.fdb.iter_mut().find(|e| e.mac == *mac) {
                Some(entry) => {
                    entry.destination = Some(*destination);
                    entry.permanent = true;
                }
                None => entries.fdb.push(fdb(mac, *destination)),
            }
        }
        Step::DeleteFdbEntry { mac, .. } => entries.fdb.retain(|e| e.mac != *mac),
        Step::SetNeighbour { address, mac, .. } => {
            entries.neighbours.retain(|e| e.address != *address);
            entries.neighbours.push(neighbour(*address, mac));
        }
        Step::DeleteNeighbour { address, .. } => {
            entries.neighbours.retain(|e| e.address != *address)
        }
        _ => {}
    }
}

fn fdb(mac: &[u8], destination: Ipv4Addr) -> FdbEntry {
    FdbEntry {
        mac: mac.to_vec(),
        destination: Some(destination),
        permanent: true,
    }
}

fn neighbour(address: impl Into<IpAddr>, mac: &[u8]) -> NeighbourEntry {
    NeighbourEntry {
        address: address.into(),
        mac: Some(mac.to_vec()),
        permanent: true,
    }
}

fn overlay_network(name: &str, subnet: &str, gateway: Ipv4Addr, id: u32) -> NetworkState {
    NetworkState {
        driver: Driver::Overlay,
        mtu: 1450,
        vxlan_id: Some(id),
        ..bridge_network(name, subnet, gateway)
    }
}

fn remote(id: &str, address: Ipv4Addr, mac: &str, tunnel: Ipv4Addr) -> RemoteEndpoint {
    RemoteEndpoint {
        id: id.to_owned(),
        name: id.to_owned(),
        aliases: Vec::new(),
        network: "ov".to_owned(),
        address: Some(address),
        address6: None,
        mac: mac.to_owned(),
        node: format!("node-{tunnel}"),
        tunnel,
    }
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 20, 0, last)
}

fn mac(text: &str) -> Vec<u8> {
    parse_mac(text).expect("test MAC")
}

/// Overlay `ov` (10.20.0.0/24, VNI 4096) with local endpoint `default/a` at .2 and remote
/// endpoints `default/b` (node B) and `default/c` (node C).
fn overlay_node() -> NodeState {
    let mut local = bridge_endpoint("default/a", "ov", ip(2));
    if let crate::state::Attachment::Bridge(bridge) = &mut local.attachment {
        bridge.mac = "02:00:00:00:00:02".to_owned();
    }
    NodeState {
        networks: vec![overlay_network("ov", "10.20.0.0/24", ip(1), 4096)],
        endpoints: vec![local],
        tunnel: Some(TUNNEL),
        remote_endpoints: vec![
            remote("default/b", ip(3), "02:00:00:00:00:03", NODE_B),
            remote("default/c", ip(4), "02:00:00:00:00:04", NODE_C),
        ],
        ..NodeState::default()
    }
}

/// `state` applied in full on a bare node.
fn converged(state: &NodeState) -> Snapshot {
    let before = bare_node(state);
    applied(before.clone(), &diff(&before, state, &Scope::Full))
}

fn vxlan_entries<'a>(snapshot: &'a Snapshot, state: &NodeState) -> &'a OverlayEntries {
    match snapshot
        .overlay_entries
        .get(&state.networks[0].vxlan_name())
    {
        Some(Ok(entries)) => entries,
        other => panic!("entries expected, got {other:?}"),
    }
}

fn entry_steps(plan: &Plan) -> Vec<&Step> {
    plan.steps
        .iter()
        .filter(|s| {
            matches!(
                s,
                Step::SetFdbEntry { .. }
                    | Step::DeleteFdbEntry { .. }
                    | Step::SetNeighbour { .. }
                    | Step::DeleteNeighbour { .. }
            )
        })
        .collect()
}

#[test]
fn an_overlay_network_gets_a_bridge_a_vxlan_device_and_an_entry_pair_per_remote_endpoint() {
    let state = overlay_node();
    let plan = diff(&bare_node(&state), &state, &Scope::Full);
    assert!(plan.problems.is_empty(), "{plan}");
    let network = &state.networks[0];
    let create = plan
        .steps
        .iter()
        .find_map(|s| match s {
            Step::CreateVxlan(create) => Some(create),
            _ => None,
        })
        .unwrap_or_else(|| panic!("a VXLAN device expected:\n{plan}"));
    assert_eq!(create.vxlan, network.vxlan_name());
    assert_eq!(create.bridge, network.bridge_name());
    assert_eq!(create.mtu, 1450);
    let want = VxlanConf {
        id: 4096,
        local: Some(TUNNEL),
        remote: None,
        port: pier_crds::network::VXLAN_PORT,
        learning: false,
        proxy: true,
    };
    assert_eq!(create.conf, want);
    assert!(
        plan.steps
            .iter()
            .any(|s| matches!(s, Step::CreateBridge { .. })),
        "{plan}"
    );
    assert!(
        plan.steps
            .iter()
            .any(|s| matches!(s, Step::AttachEndpoint(_))),
        "{plan}"
    );
    assert_eq!(entry_steps(&plan).len(), 4, "{plan}");
    let text = plan.to_string();
    assert!(text.contains("nolearning, proxy"), "{text}");
    assert!(
        text.contains("+ fdb 02:00:00:00:00:03 dst 10.99.0.2 on pvx"),
        "{text}"
    );
    assert!(
        text.contains("+ neigh 10.20.0.4 lladdr 02:00:00:00:00:04 on pvx"),
        "{text}"
    );

    let after = applied(bare_node(&state), &plan);
    let entries = vxlan_entries(&after, &state);
    assert_eq!(
        entries.fdb,
        [
            fdb(&mac("02:00:00:00:00:03"), NODE_B),
            fdb(&mac("02:00:00:00:00:04"), NODE_C)
        ]
    );
    assert_eq!(entries.neighbours.len(), 2);
    for scope in [Scope::Full, Scope::Overlay, Scope::endpoints(["default/a"])] {
        let again = diff(&after, &state, &scope);
        assert!(again.steps.is_empty(), "{scope:?}: {again}");
        assert!(again.problems.is_empty(), "{scope:?}: {again}");
        assert!(again.in_sync.contains(&ObjectKey::network("ov")), "{again}");
    }
}

#[test]
fn the_overlay_scope_plans_only_overlay_networks_and_no_endpoints() {
    let mut state = overlay_node();
    state.networks.push(bridge_network(
        "front",
        "172.18.0.0/16",
        Ipv4Addr::new(172, 18, 0, 1),
    ));
    let plan = diff(&bare_node(&state), &state, &Scope::Overlay);
    assert!(plan.problems.is_empty(), "{plan}");
    let bridges: Vec<&str> = plan
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::CreateBridge { network, .. } => Some(network.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(bridges, ["ov"], "{plan}");
    assert!(
        !plan
            .steps
            .iter()
            .any(|s| matches!(s, Step::AttachEndpoint(_))),
        "{plan}"
    );
    assert!(
        plan.steps.iter().any(|s| matches!(s, Step::CreateVxlan(_))),
        "{plan}"
    );
    assert_eq!(entry_steps(&plan).len(), 4, "{plan}");
}

#[test]
fn a_moved_endpoint_has_its_fdb_entry_replaced_and_nothing_else() {
    let mut state = overlay_node();
    let after = converged(&state);
    state.remote_endpoints[0].tunnel = NODE_C;
    let plan = diff(&after, &state, &Scope::Overlay);
    assert!(plan.problems.is_empty(), "{plan}");
    assert_eq!(
        entry_steps(&plan),
        [&Step::SetFdbEntry {
            network: "ov".to_owned(),
            vxlan: state.networks[0].vxlan_name(),
            mac: mac("02:00:00:00:00:03"),
            destination: NODE_C,
            endpoint: "default/b".to_owned(),
            replace: true,
        }],
        "{plan}"
    );
    assert!(
        plan.to_string()
            .contains("~ fdb 02:00:00:00:00:03 dst 10.99.0.3")
    );
    let moved = applied(after, &plan);
    let fdb_count = vxlan_entries(&moved, &state).fdb.len();
    assert_eq!(fdb_count, 2, "never a second entry for one MAC");
    assert!(diff(&moved, &state, &Scope::Overlay).steps.is_empty());
}

#[test]
fn a_changed_mac_and_a_removed_endpoint_leave_no_stale_entries() {
    let mut state = overlay_node();
    let after = converged(&state);
    state.remote_endpoints[0].mac = "02:00:00:00:00:33".to_owned();
    state.remote_endpoints.remove(1);
    let plan = diff(&after, &state, &Scope::Overlay);
    assert!(plan.problems.is_empty(), "{plan}");
    let text = plan.to_string();
    for line in [
        "- fdb 02:00:00:00:00:03 on",
        "- fdb 02:00:00:00:00:04 on",
        "- neigh 10.20.0.4 on",
        "+ fdb 02:00:00:00:00:33 dst 10.99.0.2",
        "~ neigh 10.20.0.3 lladdr 02:00:00:00:00:33",
    ] {
        assert!(text.contains(line), "{line:?} expected in:\n{text}");
    }
    assert_eq!(entry_steps(&plan).len(), 5, "{plan}");
    let next = applied(after, &plan);
    let entries = vxlan_entries(&next, &state);
    assert_eq!(entries.fdb, [fdb(&mac("02:00:00:00:00:33"), NODE_B)]);
    assert_eq!(
        entries.neighbours,
        [neighbour(ip(3), &mac("02:00:00:00:00:33"))]
    );
}

#[test]
fn foreign_entries_and_a_mac_with_two_remotes_are_repaired() {
    let state = overlay_node();
    let mut after = converged(&state);
    let name = state.networks[0].vxlan_name();
    let Some(Ok(entries)) = after.overlay_entries.get_mut(&name) else {
        panic!("entries expected");
    };
    // Someone appended a second remote, flooded to all-zeros, and lost a neighbour entry.
    entries.fdb.push(fdb(&mac("02:00:00:00:00:03"), NODE_C));
    entries.fdb.push(fdb(&[0; 6], NODE_C));
    entries.neighbours.retain(|e| e.address != ip(4));
    let plan = diff(&after, &state, &Scope::Full);
    let text = plan.to_string();
    for line in [
        "- fdb 02:00:00:00:00:03 on",
        "+ fdb 02:00:00:00:00:03 dst 10.99.0.2",
        "- fdb 00:00:00:00:00:00 on",
        "+ neigh 10.20.0.4",
    ] {
        assert!(text.contains(line), "{line:?} expected in:\n{text}");
    }
    let repaired = applied(after, &plan);
    assert!(diff(&repaired, &state, &Scope::Full).steps.is_empty());
    assert_eq!(vxlan_entries(&repaired, &state).fdb.len(), 2);
}

#[test]
fn a_vxlan_device_with_other_settings_is_re_made_and_a_drifted_one_fixed() {
    let state = overlay_node();
    let after = converged(&state);
    let name = state.networks[0].vxlan_name();
    let mut relearning = after.clone();
    let vxlan = relearning.links.iter_mut().find(|l| l.name == name);
    let vxlan = vxlan.expect("the VXLAN device");
    vxlan.vxlan = vxlan.vxlan.map(|c| VxlanConf {
        learning: true,
        id: 7,
        ..c
    });
    let plan = diff(&relearning, &state, &Scope::Overlay);
    assert_eq!(deleted(&plan), [name.as_str()], "{plan}");
    assert!(
        plan.to_string()
            .contains("id 7 instead of 4096, learning true instead of false"),
        "{plan}"
    );
    assert!(plan.steps.iter().any(|s| matches!(s, Step::CreateVxlan(_))));
    assert_eq!(
        entry_steps(&plan).len(),
        4,
        "a new device gets every entry: {plan}"
    );

    let mut drifted = after;
    let vxlan = drifted.links.iter_mut().find(|l| l.name == name);
    let vxlan = vxlan.expect("the VXLAN device");
    vxlan.mtu = Some(1500);
    vxlan.up = false;
    vxlan.master = None;
    let plan = diff(&drifted, &state, &Scope::Full);
    let fixes = plan.steps.iter().find_map(|s| match s {
        Step::FixVxlan { fixes, .. } => Some(fixes.clone()),
        _ => None,
    });
    let bridge = state.networks[0].bridge_name();
    assert_eq!(
        fixes,
        Some(vec![
            VxlanFix::Mtu(1450),
            VxlanFix::Master(bridge),
            VxlanFix::Up
        ]),
        "{plan}"
    );
    assert!(entry_steps(&plan).is_empty(), "{plan}");
}

#[test]
fn without_a_tunnel_address_or_a_vxlan_id_the_network_has_a_problem_and_the_rest_applies() {
    let mut no_tunnel = overlay_node();
    no_tunnel.tunnel = None;
    let mut no_id = overlay_node();
    no_id.networks[0].vxlan_id = None;
    for (state, message) in [(no_tunnel, "no tunnel address"), (no_id, "no VXLAN id")] {
        let plan = diff(&bare_node(&state), &state, &Scope::Full);
        let [problem] = plan.problems.as_slice() else {
            panic!("one problem expected:\n{plan}");
        };
        assert_eq!(problem.object, ObjectKey::network("ov"));
        assert!(problem.message.contains(message), "{}", problem.message);
        assert!(
            plan.steps
                .iter()
                .any(|s| matches!(s, Step::CreateBridge { .. }))
        );
        assert!(
            plan.steps
                .iter()
                .any(|s| matches!(s, Step::AttachEndpoint(_)))
        );
        assert!(!plan.steps.iter().any(|s| matches!(s, Step::CreateVxlan(_))));
        assert!(entry_steps(&plan).is_empty(), "{plan}");
    }
}

#[test]
fn remote_endpoints_that_cannot_have_entries_are_problems_of_the_network() {
    let mut state = overlay_node();
    state.remote_endpoints.extend([
        remote("default/bad-mac", ip(5), "02:00", NODE_B),
        remote("default/local-address", ip(2), "02:00:00:00:00:06", NODE_B),
        remote("default/same-mac", ip(7), "02:00:00:00:00:03", NODE_C),
        remote("default/here", ip(8), "02:00:00:00:00:08", TUNNEL),
        remote("default/zero-mac", ip(10), "00:00:00:00:00:00", NODE_B),
        remote("default/group-mac", ip(11), "01:00:5e:00:00:01", NODE_B),
        remote(
            "default/loopback-node",
            ip(12),
            "02:00:00:00:00:0c",
            Ipv4Addr::LOCALHOST,
        ),
        remote(
            "default/outside",
            Ipv4Addr::new(10, 21, 0, 9),
            "02:00:00:00:00:09",
            NODE_B,
        ),
    ]);
    let plan = diff(&bare_node(&state), &state, &Scope::Full);
    let problems: Vec<&str> = plan.problems.iter().map(|p| p.message.as_str()).collect();
    assert_eq!(problems.len(), 8, "{plan}");
    assert!(
        plan.problems
            .iter()
            .all(|p| p.object == ObjectKey::network("ov"))
    );
    for expected in [
        "default/bad-mac: invalid MAC",
        "default/local-address: address 10.20.0.2 is endpoint \"default/a\"'s",
        "default/same-mac: MAC 02:00:00:00:00:03 is endpoint \"default/b\"'s",
        "default/here: its node's tunnel address 10.99.0.1 is this node's",
        "default/outside: address 10.21.0.9 is outside",
        "default/zero-mac: MAC 00:00:00:00:00:00 is not a unicast address",
        "default/group-mac: MAC 01:00:5e:00:00:01 is not a unicast address",
        "default/loopback-node: its node's tunnel address 127.0.0.1 is not a unicast address",
    ] {
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "{expected:?} in {problems:#?}"
        );
    }
    assert_eq!(entry_steps(&plan).len(), 4, "only b and c: {plan}");
}

#[test]
fn stale_vxlan_devices_go_in_full_and_with_their_bridge_foreign_ones_never() {
    let state = overlay_node();
    let mut node = converged(&state);
    let stale = "pvx0a1b2c3d";
    let mut stale_link = link(90, stale, LinkKind::Vxlan);
    stale_link.vxlan = Some(VxlanConf {
        id: 5000,
        local: Some(TUNNEL),
        remote: None,
        port: 4789,
        learning: false,
        proxy: true,
    });
    node.links.push(stale_link);
    node.links.push(link(91, "pier-0a1b2c3d", LinkKind::Bridge));
    node.links.push(link(92, "vxlan0", LinkKind::Vxlan));
    node.links.push(link(93, "pvxlan0", LinkKind::Vxlan));
    let full = diff(&node, &state, &Scope::Full);
    assert_eq!(deleted(&full), ["pvx0a1b2c3d", "pier-0a1b2c3d"], "{full}");
    for scope in [Scope::Overlay, Scope::endpoints(["default/a"])] {
        assert!(
            deleted(&diff(&node, &state, &scope)).is_empty(),
            "{scope:?}"
        );
    }
    let removal = Scope::removal(["pier-0a1b2c3d"]);
    assert_eq!(
        deleted(&diff(&node, &state, &removal)),
        ["pvx0a1b2c3d", "pier-0a1b2c3d"]
    );
    // The network's own device is wanted even when a removal names its bridge.
    let own = Scope::removal([state.networks[0].bridge_name()]);
    assert!(deleted(&diff(&node, &state, &own)).is_empty());
}

fn ip6(last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x20, 0, 0, 0, 0, 0, last)
}

/// [`overlay_node`] dual-stack (fd00:20::/64 beside 10.20.0.0/24): `default/a` at ::2, `default/b`
/// at .3 and ::3, `default/c` IPv6-only at ::4.
fn dual_overlay_node() -> NodeState {
    let mut state = overlay_node();
    state.networks[0].subnet6 = Some("fd00:20::/64".parse().expect("subnet6"));
    state.networks[0].gateway6 = Some(ip6(1));
    if let crate::state::Attachment::Bridge(bridge) = &mut state.endpoints[0].attachment {
        bridge.address6 = Some(ip6(2));
    }
    state.remote_endpoints[0].address6 = Some(ip6(3));
    state.remote_endpoints[1].address = None;
    state.remote_endpoints[1].address6 = Some(ip6(4));
    state
}

fn neighbour_addresses(plan: &Plan) -> Vec<(char, IpAddr)> {
    plan.steps
        .iter()
        .filter_map(|s| match s {
            Step::SetNeighbour { address, .. } => Some(('+', *address)),
            Step::DeleteNeighbour { address, .. } => Some(('-', *address)),
            _ => None,
        })
        .collect()
}

#[test]
fn dual_stack_and_ipv6_only_remotes_get_a_neighbour_entry_per_address() {
    let state = dual_overlay_node();
    let plan = diff(&bare_node6(&state), &state, &Scope::Full);
    assert!(plan.problems.is_empty(), "{plan}");
    assert_eq!(
        neighbour_addresses(&plan),
        [
            ('+', ip(3).into()),
            ('+', ip6(3).into()),
            ('+', ip6(4).into())
        ],
        "{plan}"
    );
    let fdb_entries = entry_steps(&plan)
        .iter()
        .filter(|s| matches!(s, Step::SetFdbEntry { .. }))
        .count();
    assert_eq!(fdb_entries, 2, "one FDB entry per MAC: {plan}");
    assert!(
        plan.to_string()
            .contains("+ neigh fd00:20::4 lladdr 02:00:00:00:00:04 on pvx"),
        "{plan}"
    );
    let after = applied(bare_node6(&state), &plan);
    assert_eq!(
        vxlan_entries(&after, &state).neighbours,
        [
            neighbour(ip(3), &mac("02:00:00:00:00:03")),
            neighbour(ip6(3), &mac("02:00:00:00:00:03")),
            neighbour(ip6(4), &mac("02:00:00:00:00:04")),
        ]
    );
    for scope in [Scope::Full, Scope::Overlay] {
        assert!(diff(&after, &state, &scope).steps.is_empty(), "{scope:?}");
    }
}

#[test]
fn ipv6_neighbours_are_replaced_and_removed_like_ipv4_ones() {
    let mut state = dual_overlay_node();
    let before = bare_node6(&state);
    let mut after = applied(before.clone(), &diff(&before, &state, &Scope::Full));
    let name = state.networks[0].vxlan_name();
    let Some(Ok(entries)) = after.overlay_entries.get_mut(&name) else {
        panic!("entries expected");
    };
    // b's IPv6 entry made temporary with a wrong MAC, a stray one, and the kernel's own
    // multicast entry (MLD's report group), which stays.
    for entry in &mut entries.neighbours {
        if entry.address == IpAddr::from(ip6(3)) {
            entry.mac = Some(mac("02:00:00:00:00:99"));
            entry.permanent = false;
        }
    }
    entries
        .neighbours
        .push(neighbour(ip6(9), &mac("02:00:00:00:00:09")));
    let mld: Ipv6Addr = "ff02::16".parse().expect("group");
    entries.neighbours.push(NeighbourEntry {
        address: mld.into(),
        mac: Some(mac("33:33:00:00:00:16")),
        permanent: false,
    });
    let plan = diff(&after, &state, &Scope::Overlay);
    assert_eq!(
        neighbour_addresses(&plan),
        [('-', ip6(9).into()), ('+', ip6(3).into())],
        "{plan}"
    );
    assert!(
        plan.to_string()
            .contains("~ neigh fd00:20::3 lladdr 02:00:00:00:00:03"),
        "{plan}"
    );
    let repaired = applied(after, &plan);
    assert!(diff(&repaired, &state, &Scope::Overlay).steps.is_empty());

    // c goes: its FDB entry and its only (IPv6) neighbour entry with it.
    state.remote_endpoints.remove(1);
    let plan = diff(&repaired, &state, &Scope::Overlay);
    assert_eq!(neighbour_addresses(&plan), [('-', ip6(4).into())], "{plan}");
    assert!(
        plan.to_string().contains("- fdb 02:00:00:00:00:04 on"),
        "{plan}"
    );
}

#[test]
fn remote_ipv6_addresses_are_checked() {
    let mut state = dual_overlay_node();
    let base = remote("default/x", ip(20), "02:00:00:00:00:20", NODE_B);
    let mut no_address = base.clone();
    no_address.id = "default/none".to_owned();
    no_address.address = None;
    let mut outside = base.clone();
    outside.id = "default/outside6".to_owned();
    outside.address = None;
    outside.address6 = Some("fd00:21::5".parse().expect("address"));
    outside.mac = "02:00:00:00:00:21".to_owned();
    let mut taken = base;
    taken.id = "default/taken6".to_owned();
    taken.address = None;
    taken.address6 = Some(ip6(2));
    taken.mac = "02:00:00:00:00:22".to_owned();
    state.remote_endpoints.extend([no_address, outside, taken]);
    let plan = diff(&bare_node6(&state), &state, &Scope::Full);
    let problems: Vec<&str> = plan.problems.iter().map(|p| p.message.as_str()).collect();
    for expected in [
        "default/none: it has no address",
        "default/outside6: address fd00:21::5 is outside subnet fd00:20::/64",
        "default/taken6: address fd00:20::2 is endpoint \"default/a\"'s",
    ] {
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "{expected:?} in {problems:#?}"
        );
    }
    assert_eq!(problems.len(), 3, "{plan}");
}
