//! The diff of IPv6 and dual-stack bridge networks against hand-built snapshots: no kernel, no
//! root.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv6Net};

use super::diff;
use super::tests::{
    applied, bare_node, bare_node6, bridge_endpoint, bridge_network, namespace_of, net,
};
use crate::dataplane::names::fingerprint;
use crate::dataplane::plan::{BridgeFix, Step};
use crate::dataplane::report::ObjectKey;
use crate::dataplane::scope::Scope;
use crate::dataplane::snapshot::Peer;
use crate::kernel::netlink::{Inet6Conf, V4Address, V6Address};
use crate::state::{Attachment, NetworkState, NodeState};

fn ip6(text: &str) -> Ipv6Addr {
    text.parse().expect("test IPv6 address")
}

fn net6(text: &str) -> Ipv6Net {
    text.parse().expect("test IPv6 subnet")
}

/// `front` dual-stack: 172.18.0.0/16 and fd00:18::/64, gateways .1 and ::1.
fn dual_network() -> NetworkState {
    NetworkState {
        subnet6: Some(net6("fd00:18::/64")),
        gateway6: Some(ip6("fd00:18::1")),
        ..bridge_network("front", "172.18.0.0/16", Ipv4Addr::new(172, 18, 0, 1))
    }
}

/// `six`: IPv6-only, fd00:19::/64, gateway ::1.
fn v6_only_network() -> NetworkState {
    NetworkState {
        subnet: None,
        gateway: None,
        subnet6: Some(net6("fd00:19::/64")),
        gateway6: Some(ip6("fd00:19::1")),
        ..bridge_network("six", "10.0.0.0/8", Ipv4Addr::new(10, 0, 0, 1))
    }
}

/// Endpoint `id` on `network` with the given addresses (the default route on).
fn endpoint(
    id: &str,
    network: &str,
    address: Option<Ipv4Addr>,
    address6: Option<&str>,
) -> crate::state::EndpointState {
    let mut endpoint = bridge_endpoint(id, network, Ipv4Addr::new(172, 18, 0, 2));
    if let Attachment::Bridge(bridge) = &mut endpoint.attachment {
        bridge.address = address;
        bridge.address6 = address6.map(ip6);
    }
    endpoint
}

/// `front` with `default/a` at .2 and ::2.
fn dual_state() -> NodeState {
    NodeState {
        networks: vec![dual_network()],
        endpoints: vec![endpoint(
            "default/a",
            "front",
            Some(Ipv4Addr::new(172, 18, 0, 2)),
            Some("fd00:18::2"),
        )],
        ..NodeState::default()
    }
}

fn attach_of(plan: &crate::dataplane::plan::Plan) -> &crate::dataplane::plan::Attach {
    plan.steps
        .iter()
        .find_map(|s| match s {
            Step::AttachEndpoint(attach) => Some(attach.as_ref()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("an attach expected:\n{plan}"))
}

#[test]
fn a_dual_stack_network_gets_both_gateways_both_forwardings_and_both_addresses() {
    let state = dual_state();
    let before = bare_node6(&state);
    let plan = diff(&before, &state, &Scope::Full);
    assert!(plan.problems.is_empty(), "{plan}");
    assert_eq!(plan.steps[0], Step::EnableForwarding, "{plan}");
    assert_eq!(plan.steps[1], Step::EnableIpv6Forwarding, "{plan}");
    assert!(
        plan.steps.iter().any(|s| matches!(s,
            Step::CreateBridge { gateway, gateway6, .. }
                if *gateway == Some(net("172.18.0.1/16")) && *gateway6 == Some(net6("fd00:18::1/64")))),
        "{plan}"
    );
    let attach = attach_of(&plan);
    assert_eq!(attach.address, Some(net("172.18.0.2/16")));
    assert_eq!(attach.address6, Some(net6("fd00:18::2/64")));
    assert_eq!(attach.default_gateway, Some(Ipv4Addr::new(172, 18, 0, 1)));
    assert_eq!(attach.default_gateway6, Some(ip6("fd00:18::1")));
    let text = plan.to_string();
    assert!(text.contains("net.ipv6.conf.all.forwarding=1"), "{text}");
    assert!(
        text.contains(
            "172.18.0.2/16, fd00:18::2/64, mtu 1500, default via 172.18.0.1, default via fd00:18::1"
        ),
        "{text}"
    );

    let after = applied(before, &plan);
    let again = diff(&after, &state, &Scope::Full);
    assert!(again.steps.is_empty(), "{again}");
    for object in [
        ObjectKey::Forwarding,
        ObjectKey::network("front"),
        ObjectKey::endpoint("default/a"),
    ] {
        assert!(again.in_sync.contains(&object), "{object}: {again}");
    }
}

#[test]
fn an_ipv6_only_network_has_no_ipv4_on_its_bridge_or_endpoints() {
    let state = NodeState {
        networks: vec![v6_only_network()],
        endpoints: vec![
            endpoint("default/a", "six", None, Some("fd00:19::2")),
            // Two IPv6-only endpoints do not share an (absent) IPv4 address.
            endpoint("default/b", "six", None, Some("fd00:19::3")),
        ],
        ..NodeState::default()
    };
    let before = bare_node6(&state);
    for scope in [Scope::Full, Scope::endpoints(["default/b"])] {
        let plan = diff(&before, &state, &scope);
        assert!(plan.problems.is_empty(), "{scope:?}: {plan}");
        assert!(
            plan.steps.iter().any(|s| matches!(s,
                Step::CreateBridge { gateway: None, gateway6: Some(g), .. } if *g == net6("fd00:19::1/64"))),
            "{plan}"
        );
        let attach = attach_of(&plan);
        assert_eq!(attach.address, None);
        assert_eq!(attach.default_gateway, None);
        assert_eq!(attach.default_gateway6, Some(ip6("fd00:19::1")));
    }
    let after = applied(before.clone(), &diff(&before, &state, &Scope::Full));
    assert!(diff(&after, &state, &Scope::Full).steps.is_empty());
}

#[test]
fn ipv6_addresses_are_checked_like_ipv4_ones() {
    let cases = [
        (
            endpoint(
                "default/a",
                "front",
                Some(Ipv4Addr::new(172, 18, 0, 2)),
                None,
            ),
            "no IPv6 address on network",
        ),
        (
            endpoint(
                "default/a",
                "front",
                Some(Ipv4Addr::new(172, 18, 0, 2)),
                Some("fd00:99::2"),
            ),
            "outside subnet fd00:18::/64",
        ),
        (
            endpoint(
                "default/a",
                "front",
                Some(Ipv4Addr::new(172, 18, 0, 2)),
                Some("fd00:18::1"),
            ),
            "the network's gateway",
        ),
        (
            endpoint("default/a", "front", None, Some("fd00:18::2")),
            "no IPv4 address on network",
        ),
    ];
    for (bad, message) in cases {
        let state = NodeState {
            networks: vec![dual_network()],
            endpoints: vec![bad],
            ..NodeState::default()
        };
        let plan = diff(&bare_node6(&state), &state, &Scope::Full);
        let [problem] = plan.problems.as_slice() else {
            panic!("one problem expected:\n{plan}");
        };
        assert!(problem.message.contains(message), "{message}: {plan}");
    }
    // An IPv6 address on a network without IPv6.
    let mut v4_only = dual_state();
    v4_only.networks[0].subnet6 = None;
    v4_only.networks[0].gateway6 = None;
    let plan = diff(&bare_node6(&v4_only), &v4_only, &Scope::Full);
    assert!(
        plan.problems.iter().any(|p| p
            .message
            .contains("has no IPv6 subnet for address fd00:18::2")),
        "{plan}"
    );
}

#[test]
fn the_same_ipv6_address_twice_is_a_problem_for_the_later_endpoint() {
    let mut state = dual_state();
    state.endpoints.push(endpoint(
        "default/twin",
        "front",
        Some(Ipv4Addr::new(172, 18, 0, 3)),
        Some("fd00:18::2"),
    ));
    let node = bare_node6(&state);
    for scope in [Scope::Full, Scope::endpoints(["default/twin"])] {
        let plan = diff(&node, &state, &scope);
        let [problem] = plan.problems.as_slice() else {
            panic!("{scope:?}: one problem expected:\n{plan}");
        };
        assert_eq!(problem.object, ObjectKey::endpoint("default/twin"));
        assert!(
            problem
                .message
                .contains("address fd00:18::2 is in use by endpoint \"default/a\""),
            "{plan}"
        );
    }
}

#[test]
fn bridge_ipv6_addresses_and_router_advertisements_converge() {
    let state = dual_state();
    let before = bare_node6(&state);
    let mut drifted = applied(before.clone(), &diff(&before, &state, &Scope::Full));
    let bridge = drifted
        .link(&state.networks[0].bridge_name())
        .expect("bridge")
        .index;
    // The gateway6 gone, a stray global address there, router advertisements accepted again.
    let addresses6 = drifted.addresses6.get_or_insert_default();
    addresses6.retain(|a| a.index != bridge);
    addresses6.push(V6Address {
        index: bridge,
        address: net6("2001:db8::5/64"),
    });
    if let Some(link) = drifted.links.iter_mut().find(|l| l.index == bridge) {
        link.inet6 = link.inet6.map(|c| Inet6Conf { accept_ra: 2, ..c });
    }
    let plan = diff(&drifted, &state, &Scope::Full);
    let [Step::FixBridge { fixes, .. }] = plan.steps.as_slice() else {
        panic!("one bridge fix expected:\n{plan}");
    };
    assert_eq!(
        *fixes,
        [
            BridgeFix::AddAddress(IpNet::V6(net6("fd00:18::1/64"))),
            BridgeFix::RemoveAddress(IpNet::V6(net6("2001:db8::5/64"))),
            BridgeFix::IgnoreRouterAdvertisements,
        ],
        "{plan}"
    );
    assert!(plan.to_string().contains("accept_ra=0"), "{plan}");
    assert!(diff(&applied(drifted, &plan), &state, &Scope::Full).is_empty());
}

#[test]
fn an_ipv6_only_bridge_loses_an_ipv4_address_and_unread_ipv6_addresses_stay() {
    let state = NodeState {
        networks: vec![v6_only_network()],
        ..NodeState::default()
    };
    let before = bare_node6(&state);
    let mut node = applied(before.clone(), &diff(&before, &state, &Scope::Full));
    let bridge = node
        .link(&state.networks[0].bridge_name())
        .expect("bridge")
        .index;
    node.addresses.push(V4Address {
        index: bridge,
        address: net("10.9.0.1/24"),
    });
    let plan = diff(&node, &state, &Scope::Full);
    assert!(
        matches!(plan.steps.as_slice(), [Step::FixBridge { fixes, .. }]
            if *fixes == [BridgeFix::RemoveAddress(IpNet::V4(net("10.9.0.1/24")))]),
        "{plan}"
    );

    // An IPv6 address on an IPv4-only network's bridge goes in a full plan; a scoped plan of
    // an IPv4-only state has not read the IPv6 addresses, so it changes none.
    let v4 = NodeState {
        networks: vec![bridge_network(
            "front",
            "172.18.0.0/16",
            Ipv4Addr::new(172, 18, 0, 1),
        )],
        ..NodeState::default()
    };
    let before = bare_node6(&v4);
    let mut node = applied(before.clone(), &diff(&before, &v4, &Scope::Full));
    let bridge = node
        .link(&v4.networks[0].bridge_name())
        .expect("bridge")
        .index;
    node.addresses6 = Some(vec![V6Address {
        index: bridge,
        address: net6("fd00:77::1/64"),
    }]);
    let plan = diff(&node, &v4, &Scope::Full);
    assert!(
        matches!(plan.steps.as_slice(), [Step::FixBridge { fixes, .. }]
            if *fixes == [BridgeFix::RemoveAddress(IpNet::V6(net6("fd00:77::1/64")))]),
        "{plan}"
    );
    node.addresses6 = None;
    let plan = diff(&node, &v4, &Scope::endpoints(Vec::<String>::new()));
    assert!(plan.steps.is_empty(), "{plan}");
}

#[test]
fn an_ipv4_only_endpoint_keeps_the_fingerprint_it_had_before_ipv6() {
    let state = NodeState {
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
        ..NodeState::default()
    };
    let plan = diff(&bare_node(&state), &state, &Scope::Full);
    let bridge = state.networks[0].bridge_name();
    // The description Pier fingerprinted before IPv6 (namespace identity (1, 100) from bare_node).
    let before_ipv6 = fingerprint(&format!(
        "{bridge}|eth0|172.18.0.2/16|02:42:ac:12:00:02|Some(172.18.0.1)|1500|1:100"
    ));
    assert_eq!(attach_of(&plan).fingerprint, before_ipv6);
}

#[test]
fn a_changed_ipv6_address_re_makes_the_veth() {
    let state = dual_state();
    let before = bare_node6(&state);
    let after = applied(before.clone(), &diff(&before, &state, &Scope::Full));
    let mut moved = state.clone();
    if let Attachment::Bridge(bridge) = &mut moved.endpoints[0].attachment {
        bridge.address6 = Some(ip6("fd00:18::9"));
    }
    let plan = diff(&after, &moved, &Scope::Full);
    let veth = after
        .link(&state.endpoints[0].host_veth_name())
        .expect("veth")
        .index;
    let [Step::AttachEndpoint(attach)] = plan.steps.as_slice() else {
        panic!("one attach expected:\n{plan}");
    };
    assert_eq!(attach.address6, Some(net6("fd00:18::9/64")));
    assert_eq!(attach.replaces, Some(veth));
}

#[test]
fn a_deep_plan_checks_the_ipv6_address_and_default_route_inside() {
    let state = dual_state();
    let before = bare_node6(&state);
    let mut node = applied(before.clone(), &diff(&before, &state, &Scope::Full));
    let peer = Peer {
        index: 2,
        up: true,
        mac: Some(vec![0x02, 0x42, 0xac, 0x12, 0x00, 0x02]),
        addresses: vec![net("172.18.0.2/16")],
        addresses6: vec![net6("fd00:18::2/64")],
        default_routes: vec![(Ipv4Addr::new(172, 18, 0, 1), 2)],
        foreign_default: false,
        default_routes6: vec![(ip6("fd00:18::1"), 2)],
        foreign_default6: false,
    };
    let key = (namespace_of("default/a"), "eth0".to_owned());
    node.peers = Some([(key.clone(), peer.clone())].into());
    assert!(diff(&node, &state, &Scope::Full).steps.is_empty());
    for broken in [
        Peer {
            addresses6: Vec::new(),
            ..peer.clone()
        },
        Peer {
            default_routes6: Vec::new(),
            ..peer.clone()
        },
    ] {
        node.peers = Some([(key.clone(), broken)].into());
        let plan = diff(&node, &state, &Scope::Full);
        assert!(
            matches!(plan.steps.as_slice(), [Step::AttachEndpoint(a)] if a.replaces.is_some()),
            "{plan}"
        );
    }
}

#[test]
fn ipv6_forwarding_is_left_alone_without_an_ipv6_network() {
    let state = NodeState {
        networks: vec![bridge_network(
            "front",
            "172.18.0.0/16",
            Ipv4Addr::new(172, 18, 0, 1),
        )],
        ..NodeState::default()
    };
    let plan = diff(&bare_node6(&state), &state, &Scope::Full);
    assert!(!plan.steps.contains(&Step::EnableIpv6Forwarding), "{plan}");
    // A node whose IPv6 forwarding is on already needs no step for it.
    let dual = dual_state();
    let mut node = bare_node6(&dual);
    node.links[0].inet6 = Some(Inet6Conf {
        forwarding: true,
        accept_ra: 1,
        disabled: false,
    });
    let plan = diff(&node, &dual, &Scope::Full);
    assert!(!plan.steps.contains(&Step::EnableIpv6Forwarding), "{plan}");
    assert!(
        !plan.in_sync.contains(&ObjectKey::Forwarding),
        "IPv4 forwarding is still off: {plan}"
    );
}
