//! The diff against hand-built snapshots: no kernel, no root.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::{IpNet, Ipv4Net};

use super::diff;
use crate::dataplane::plan::{BridgeFix, Plan, Step};
use crate::dataplane::report::ObjectKey;
use crate::dataplane::scope::Scope;
use crate::dataplane::snapshot::{Peer, Snapshot};
use crate::kernel::netlink::{Inet6Conf, InetConf, Link, LinkKind, V4Address, V6Address};
use crate::state::{
    Attachment, BridgeAttachment, Driver, EndpointState, Netns, NetworkState, NodeState,
};

pub(super) fn net(text: &str) -> Ipv4Net {
    text.parse().expect("test subnet")
}

pub(super) fn bridge_network(name: &str, subnet: &str, gateway: Ipv4Addr) -> NetworkState {
    NetworkState {
        name: name.to_owned(),
        uid: format!("uid-{name}"),
        driver: Driver::Bridge,
        subnet: Some(net(subnet)),
        gateway: Some(gateway),
        mtu: 1500,
        internal: false,
        dns: true,
        vxlan_id: None,
        subnet6: None,
        gateway6: None,
    }
}

pub(super) fn bridge_endpoint(id: &str, network: &str, address: Ipv4Addr) -> EndpointState {
    EndpointState {
        id: id.to_owned(),
        uid: format!("uid-{id}"),
        name: id.to_owned(),
        aliases: Vec::new(),
        netns: Netns::Path(namespace_of(id)),
        attachment: Attachment::Bridge(BridgeAttachment {
            network: network.to_owned(),
            interface: "eth0".to_owned(),
            address: Some(address),
            address6: None,
            mac: "02:42:ac:12:00:02".to_owned(),
            default_route: true,
        }),
    }
}

pub(super) fn namespace_of(id: &str) -> PathBuf {
    PathBuf::from("/proc/test/ns").join(id.replace('/', "-"))
}

/// `front` (172.18.0.0/16) with endpoint `default/a` at .2.
fn one_endpoint() -> NodeState {
    NodeState {
        networks: vec![bridge_network(
            "front",
            "172.18.0.0/16",
            Ipv4Addr::new(172, 18, 0, 1),
        )],
        endpoints: vec![bridge_endpoint(
            "default/a",
            "front",
            Ipv4Addr::new(172, 18, 0, 2),
        )],
        ports: Vec::new(),
        ..NodeState::default()
    }
}

pub(super) fn link(index: u32, name: &str, kind: LinkKind) -> Link {
    Link {
        index,
        name: name.to_owned(),
        kind,
        master: None,
        mtu: Some(1500),
        up: true,
        alias: None,
        mac: None,
        hairpin: false,
        vxlan: None,
        group: 0,
        inet: Some(InetConf {
            forwarding: true,
            route_localnet: false,
        }),
        inet6: None,
    }
}

/// A node with `lo` only (forwarding off), and the namespace files of `state`'s endpoints.
pub(super) fn bare_node(state: &NodeState) -> Snapshot {
    let mut lo = link(1, "lo", LinkKind::None);
    lo.inet = Some(InetConf {
        forwarding: false,
        route_localnet: false,
    });
    let mut snapshot = Snapshot {
        links: vec![lo],
        ..Snapshot::default()
    };
    for (inode, endpoint) in (100u64..).zip(&state.endpoints) {
        if let Some(path) = endpoint.netns.path() {
            snapshot.namespaces.insert(path, Some((1, inode)));
        }
    }
    snapshot
}

/// [`bare_node`] with IPv6 in the kernel (forwarding off, router advertisements accepted), read
/// in full (so its IPv6 addresses were read too).
pub(super) fn bare_node6(state: &NodeState) -> Snapshot {
    let mut snapshot = bare_node(state);
    snapshot.links[0].inet6 = Some(Inet6Conf {
        forwarding: false,
        accept_ra: 1,
        disabled: false,
    });
    snapshot.addresses6 = Some(Vec::new());
    snapshot
}

/// What the kernel would report after `plan`'s steps ran on `snapshot`.
pub(super) fn applied(mut snapshot: Snapshot, plan: &Plan) -> Snapshot {
    let mut next = snapshot.links.iter().map(|l| l.index).max().unwrap_or(0) + 1;
    for step in &plan.steps {
        match step {
            Step::EnableForwarding => {
                for l in &mut snapshot.links {
                    if let Some(inet) = &mut l.inet {
                        inet.forwarding = true;
                    }
                }
            }
            Step::EnableIpv6Forwarding => {
                for l in &mut snapshot.links {
                    if let Some(inet6) = &mut l.inet6 {
                        inet6.forwarding = true;
                    }
                }
            }
            Step::DeleteLink { index, name, .. } => {
                snapshot.links.retain(|l| l.index != *index);
                snapshot.overlay_entries.remove(name);
            }
            Step::CreateBridge {
                bridge,
                gateway,
                gateway6,
                mtu,
                ..
            } => {
                let mut made = link(next, bridge, LinkKind::Bridge);
                made.mtu = Some(*mtu);
                made.inet = made.inet.map(|c| InetConf {
                    route_localnet: true,
                    ..c
                });
                made.inet6 = snapshot.links[0]
                    .inet6
                    .map(|c| Inet6Conf { accept_ra: 0, ..c });
                snapshot.links.push(made);
                let gateways = [gateway.map(IpNet::V4), gateway6.map(IpNet::V6)];
                for gateway in gateways.into_iter().flatten() {
                    add_address(&mut snapshot, next, gateway);
                }
                next += 1;
            }
            Step::FixBridge { index, fixes, .. } => {
                for fix in fixes {
                    fix_bridge(&mut snapshot, *index, fix);
                }
            }
            Step::AttachEndpoint(attach) => {
                snapshot.links.retain(|l| Some(l.index) != attach.replaces);
                let master = snapshot.link(&attach.bridge).map(|l| l.index);
                let mut veth = link(next, &attach.host_veth, LinkKind::Veth);
                veth.master = master;
                veth.hairpin = true;
                veth.alias = Some(attach.fingerprint.clone());
                snapshot.links.push(veth);
                next += 1;
            }
            Step::LoopbackUp { netns, .. } => {
                snapshot.loopbacks.insert(netns.clone(), Ok(true));
            }
            _ => super::overlay_tests::apply_overlay(&mut snapshot, step, &mut next),
        }
    }
    snapshot
}

fn add_address(snapshot: &mut Snapshot, index: u32, address: IpNet) {
    match address {
        IpNet::V4(address) => snapshot.addresses.push(V4Address { index, address }),
        IpNet::V6(address) => snapshot
            .addresses6
            .get_or_insert_default()
            .push(V6Address { index, address }),
    }
}

fn fix_bridge(snapshot: &mut Snapshot, index: u32, fix: &BridgeFix) {
    match fix {
        BridgeFix::AddAddress(address) => add_address(snapshot, index, *address),
        BridgeFix::RemoveAddress(IpNet::V4(address)) => snapshot
            .addresses
            .retain(|a| !(a.index == index && a.address == *address)),
        BridgeFix::RemoveAddress(IpNet::V6(address)) => {
            if let Some(addresses6) = &mut snapshot.addresses6 {
                addresses6.retain(|a| !(a.index == index && a.address == *address));
            }
        }
        BridgeFix::IgnoreRouterAdvertisements => {
            let bridge = snapshot.links.iter_mut().find(|l| l.index == index);
            if let Some(inet6) = bridge.and_then(|l| l.inet6.as_mut()) {
                inet6.accept_ra = 0;
            }
        }
        BridgeFix::Mtu(_) | BridgeFix::Up | BridgeFix::RouteLocalnet => {}
    }
}

pub(super) fn deleted(plan: &Plan) -> Vec<&str> {
    plan.steps
        .iter()
        .filter_map(|s| match s {
            Step::DeleteLink { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect()
}

#[test]
fn an_empty_node_gets_forwarding_a_bridge_and_a_veth_for_one_endpoint() {
    let state = one_endpoint();
    let plan = diff(&bare_node(&state), &state, &Scope::Full);
    assert!(plan.problems.is_empty(), "{plan}");
    let [forwarding, bridge, attach] = plan.steps.as_slice() else {
        panic!("three steps expected:\n{plan}");
    };
    assert_eq!(*forwarding, Step::EnableForwarding);
    assert!(
        matches!(bridge, Step::CreateBridge { bridge, gateway, mtu: 1500, .. }
            if *bridge == state.networks[0].bridge_name() && *gateway == Some(net("172.18.0.1/16"))),
        "{plan}"
    );
    let Step::AttachEndpoint(attach) = attach else {
        panic!("an attach expected:\n{plan}");
    };
    assert_eq!(attach.endpoint, "default/a");
    assert_eq!(attach.address, Some(net("172.18.0.2/16")));
    assert_eq!(attach.address6, None);
    assert_eq!(attach.host_veth, state.endpoints[0].host_veth_name());
    assert_eq!(attach.default_gateway, Some(Ipv4Addr::new(172, 18, 0, 1)));
    assert_eq!(attach.replaces, None);
}

#[test]
fn an_applied_plan_is_in_sync() {
    let state = one_endpoint();
    let before = bare_node(&state);
    let after = applied(before.clone(), &diff(&before, &state, &Scope::Full));
    let plan = diff(&after, &state, &Scope::Full);
    assert!(plan.steps.is_empty(), "{plan}");
    assert!(plan.problems.is_empty(), "{plan}");
    for object in [
        ObjectKey::Forwarding,
        ObjectKey::network("front"),
        ObjectKey::endpoint("default/a"),
    ] {
        assert!(plan.in_sync.contains(&object), "{object}: {plan}");
    }
}

#[test]
fn a_drifted_bridge_address_is_fixed() {
    let state = one_endpoint();
    let before = bare_node(&state);
    let mut drifted = applied(before.clone(), &diff(&before, &state, &Scope::Full));
    let bridge = drifted
        .link(&state.networks[0].bridge_name())
        .expect("bridge")
        .index;
    drifted.addresses.retain(|a| a.index != bridge);
    drifted.addresses.push(V4Address {
        index: bridge,
        address: net("10.1.0.1/24"),
    });
    let plan = diff(&drifted, &state, &Scope::Full);
    assert_eq!(
        plan.steps,
        [Step::FixBridge {
            network: "front".to_owned(),
            bridge: state.networks[0].bridge_name(),
            index: bridge,
            fixes: vec![
                BridgeFix::AddAddress(net("172.18.0.1/16").into()),
                BridgeFix::RemoveAddress(net("10.1.0.1/24").into()),
            ],
        }],
        "{plan}"
    );
    assert!(diff(&applied(drifted, &plan), &state, &Scope::Full).is_empty());
}

#[test]
fn a_drifted_endpoint_address_re_makes_its_veth() {
    let state = one_endpoint();
    let before = bare_node(&state);
    let after = applied(before.clone(), &diff(&before, &state, &Scope::Full));
    let mut moved = state.clone();
    if let Attachment::Bridge(bridge) = &mut moved.endpoints[0].attachment {
        bridge.address = Some(Ipv4Addr::new(172, 18, 0, 9));
    }
    let plan = diff(&after, &moved, &Scope::Full);
    let veth = after
        .link(&state.endpoints[0].host_veth_name())
        .expect("veth");
    let [Step::AttachEndpoint(attach)] = plan.steps.as_slice() else {
        panic!("one attach expected:\n{plan}");
    };
    assert_eq!(attach.address, Some(net("172.18.0.9/16")));
    assert_eq!(attach.replaces, Some(veth.index));
}

#[test]
fn stale_pier_links_are_removed_only_in_full_and_removal_scopes() {
    let state = one_endpoint();
    let before = bare_node(&state);
    let mut node = applied(before.clone(), &diff(&before, &state, &Scope::Full));
    node.links.push(link(50, "pv0123456789", LinkKind::Veth));
    node.links.push(link(51, "pier-0a1b2c3d", LinkKind::Bridge));

    let full = diff(&node, &state, &Scope::Full);
    assert_eq!(deleted(&full), ["pv0123456789", "pier-0a1b2c3d"], "{full}");

    let attach = diff(&node, &state, &Scope::endpoints(["default/a"]));
    assert!(deleted(&attach).is_empty(), "{attach}");

    let removal = diff(&node, &state, &Scope::removal(["pv0123456789"]));
    assert_eq!(deleted(&removal), ["pv0123456789"], "{removal}");

    // A wanted veth named for removal stays.
    let wanted = state.endpoints[0].host_veth_name();
    let removal = diff(&node, &state, &Scope::removal([wanted.as_str()]));
    assert!(deleted(&removal).is_empty(), "{removal}");
}

#[test]
fn foreign_links_are_never_touched() {
    let state = one_endpoint();
    let before = bare_node(&state);
    let mut node = applied(before.clone(), &diff(&before, &state, &Scope::Full));
    let foreign = ["br-foreign", "pvnet0", "pier-br0", "docker0"];
    node.links.push(link(60, foreign[0], LinkKind::Bridge));
    node.links.push(link(61, foreign[1], LinkKind::Veth));
    node.links.push(link(62, foreign[2], LinkKind::Bridge));
    node.links.push(link(63, foreign[3], LinkKind::Bridge));
    // A Pier-shaped name on a link of another kind is not Pier's either.
    node.links.push(link(
        64,
        "pv9999999999",
        LinkKind::Other("dummy".to_owned()),
    ));
    for scope in [
        Scope::Full,
        Scope::removal(foreign),
        Scope::removal(["pv9999999999"]),
    ] {
        let plan = diff(&node, &state, &scope);
        assert!(plan.steps.is_empty(), "{scope:?}: {plan}");
    }

    // A foreign link holding an endpoint's veth name is a problem, not a deletion.
    let mut clash = before.clone();
    clash.links.push(link(
        70,
        &state.endpoints[0].host_veth_name(),
        LinkKind::Other("dummy".to_owned()),
    ));
    let plan = diff(&clash, &state, &Scope::Full);
    assert!(deleted(&plan).is_empty(), "{plan}");
    assert!(
        plan.problems
            .iter()
            .any(|p| p.object == ObjectKey::endpoint("default/a")
                && p.message.contains("name clash")),
        "{plan}"
    );
}

#[test]
fn the_endpoints_scope_ignores_other_endpoints() {
    let mut state = one_endpoint();
    state.endpoints.push(bridge_endpoint(
        "default/b",
        "front",
        Ipv4Addr::new(172, 18, 0, 3),
    ));
    // Invalid: would be a problem in a full plan.
    state.endpoints.push(bridge_endpoint(
        "default/bad",
        "nowhere",
        Ipv4Addr::new(172, 18, 0, 4),
    ));
    let node = bare_node(&state);
    let plan = diff(&node, &state, &Scope::endpoints(["default/b"]));
    let attached: Vec<&str> = plan
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::AttachEndpoint(a) => Some(a.endpoint.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(attached, ["default/b"], "{plan}");
    assert!(plan.problems.is_empty(), "{plan}");
    assert!(!plan.in_sync.contains(&ObjectKey::endpoint("default/a")));

    let full = diff(&node, &state, &Scope::Full);
    assert_eq!(full.problems.len(), 1, "{full}");
    assert_eq!(full.problems[0].object, ObjectKey::endpoint("default/bad"));
}

#[test]
fn a_scoped_endpoint_is_checked_against_the_whole_state() {
    let mut state = one_endpoint();
    state.endpoints.push(bridge_endpoint(
        "default/twin",
        "front",
        Ipv4Addr::new(172, 18, 0, 2),
    ));
    let node = bare_node(&state);
    for scope in [Scope::Full, Scope::endpoints(["default/twin"])] {
        let plan = diff(&node, &state, &scope);
        let [problem] = plan.problems.as_slice() else {
            panic!("{scope:?}: one problem expected:\n{plan}");
        };
        assert_eq!(problem.object, ObjectKey::endpoint("default/twin"));
        assert!(problem.message.contains("in use by endpoint \"default/a\""));
    }
}

#[test]
fn a_deep_plan_trusts_the_peer_not_the_alias() {
    let state = one_endpoint();
    let before = bare_node(&state);
    let mut node = applied(before.clone(), &diff(&before, &state, &Scope::Full));
    let veth = node
        .link(&state.endpoints[0].host_veth_name())
        .expect("veth")
        .index;
    // The peer as made.
    let peer = Peer {
        index: 2,
        up: true,
        mac: Some(vec![0x02, 0x42, 0xac, 0x12, 0x00, 0x02]),
        addresses: vec![net("172.18.0.2/16")],
        default_routes: vec![(Ipv4Addr::new(172, 18, 0, 1), 2)],
        foreign_default: false,
        ..Peer::default()
    };
    let key = (namespace_of("default/a"), "eth0".to_owned());
    node.peers = Some([(key.clone(), peer.clone())].into());
    assert!(diff(&node, &state, &Scope::Full).steps.is_empty());
    // Re-addressed by hand inside the namespace: the fast plan cannot see it, the deep one can.
    let readdressed = Peer {
        addresses: vec![net("172.18.0.77/16")],
        ..peer
    };
    node.peers = Some([(key, readdressed)].into());
    let plan = diff(&node, &state, &Scope::Full);
    assert!(
        matches!(plan.steps.as_slice(), [Step::AttachEndpoint(a)] if a.replaces == Some(veth)),
        "{plan}"
    );
    node.peers = None;
    assert!(diff(&node, &state, &Scope::Full).steps.is_empty());
}

#[test]
fn a_null_endpoint_gets_its_loopback_up() {
    let state = NodeState {
        networks: vec![NetworkState {
            driver: Driver::Null,
            subnet: None,
            gateway: None,
            ..bridge_network("none", "10.0.0.0/8", Ipv4Addr::new(10, 0, 0, 1))
        }],
        endpoints: vec![EndpointState {
            attachment: Attachment::Null {
                network: "none".to_owned(),
            },
            ..bridge_endpoint("default/n", "none", Ipv4Addr::new(10, 0, 0, 2))
        }],
        ..NodeState::default()
    };
    let path = namespace_of("default/n");
    let mut node = bare_node(&state);
    node.loopbacks.insert(path.clone(), Ok(false));
    let plan = diff(&node, &state, &Scope::Full);
    assert_eq!(
        plan.steps,
        [Step::LoopbackUp {
            endpoint: "default/n".to_owned(),
            netns: path,
        }]
    );
    let plan = diff(&applied(node, &plan), &state, &Scope::Full);
    assert!(plan.steps.is_empty(), "{plan}");
    assert!(plan.in_sync.contains(&ObjectKey::endpoint("default/n")));
}
