//! Rule rendering is pure: these tests need no kernel.

use super::*;
use crate::state::Driver;
use crate::state::{NetworkState, PublishedPort};
use std::net::Ipv6Addr;

fn network(name: &str, subnet: &str, internal: bool) -> NetworkState {
    let subnet: ipnet::Ipv4Net = subnet.parse().expect("test subnet");
    NetworkState {
        name: name.into(),
        uid: format!("uid-{name}"),
        driver: Driver::Bridge,
        subnet: Some(subnet),
        gateway: subnet.hosts().next(),
        mtu: 1500,
        internal,
        dns: true,
        vxlan_id: None,
        subnet6: None,
        gateway6: None,
    }
}

fn dual_stack(name: &str, subnet: &str, subnet6: &str, internal: bool) -> NetworkState {
    let subnet6: ipnet::Ipv6Net = subnet6.parse().expect("test subnet6");
    NetworkState {
        subnet6: Some(subnet6),
        gateway6: subnet6.hosts().nth(1),
        ..network(name, subnet, internal)
    }
}

fn port(
    host_ip: &str,
    host_port: u16,
    protocol: Protocol,
    to: &str,
    to_port: u16,
) -> PublishedPort {
    PublishedPort {
        id: format!("default/p{host_port}"),
        endpoint: "default/web".into(),
        host_ip: host_ip.parse().expect("host ip"),
        host_port,
        protocol,
        endpoint_address: to.parse().expect("endpoint address"),
        container_port: to_port,
    }
}

fn shown(ruleset: &Ruleset, set: &str) -> Vec<String> {
    let set = ruleset.set(set).expect("set exists");
    set.elements.iter().map(|e| set.show(e)).collect()
}

#[test]
fn empty_state_renders_the_constant_structure_with_empty_sets() {
    let ruleset = render(&NodeState::default());
    let names: Vec<_> = ruleset.sets.iter().map(|s| s.name).collect();
    assert_eq!(
        names,
        [
            SET_BRIDGES,
            SET_BRIDGE_PAIRS,
            SET_INTERNAL,
            SET_HOST_BRIDGES,
            SET_MASQ,
            SET_MASQ6,
            MAP_PORTS_ADDR,
            MAP_PORTS_ANY,
            MAP_PORTS_ADDR6,
            MAP_PORTS_ANY6,
            SET_OVERLAY_IDS,
            SET_OVERLAY_PEERS
        ]
    );
    assert!(ruleset.sets.iter().all(|s| s.elements.is_empty()));
    let chains: Vec<_> = ruleset
        .chains
        .iter()
        .map(|c| (c.name, c.kind, c.hook, c.priority))
        .collect();
    assert_eq!(
        chains,
        [
            ("forward", ChainKind::Filter, Hook::Forward, 0),
            ("input", ChainKind::Filter, Hook::Input, 0),
            ("prerouting", ChainKind::Nat, Hook::Prerouting, -100),
            ("output", ChainKind::Nat, Hook::Output, -100),
            ("postrouting", ChainKind::Nat, Hook::Postrouting, 100),
        ]
    );
    // Rules never depend on the state: all state is in sets.
    let with_state = render(&NodeState {
        networks: vec![network("a", "172.18.0.0/16", false)],
        ..NodeState::default()
    });
    assert_eq!(ruleset.chains, with_state.chains);
    // Table ip6 pier only where a network has IPv6: a node without it needs no `dup`.
    assert_eq!(ruleset.loopback6, None);
    assert_eq!(with_state.loopback6, None);
    let dual = render(&NodeState {
        networks: vec![dual_stack("a", "172.18.0.0/16", "fd00:18::/64", false)],
        ..NodeState::default()
    });
    assert_eq!(dual.chains, ruleset.chains);
    let chain = dual.loopback6.expect("table ip6 pier");
    assert_eq!(
        (chain.name, chain.kind, chain.hook, chain.priority),
        (LOOPBACK6_CHAIN, ChainKind::Filter, Hook::Prerouting, -90)
    );
}

#[test]
fn bridges_pairs_and_internal_sets_name_pier_bridges() {
    let state = NodeState {
        networks: vec![
            network("a", "172.18.0.0/16", false),
            network("b", "10.1.0.0/24", true),
            NetworkState {
                driver: Driver::Host,
                subnet: None,
                gateway: None,
                ..network("host", "10.9.0.0/24", false)
            },
        ],
        ..NodeState::default()
    };
    let ruleset = render(&state);
    let a = state.networks[0].bridge_name();
    let b = state.networks[1].bridge_name();
    let mut bridges = vec![format!("\"{a}\""), format!("\"{b}\"")];
    bridges.sort();
    let mut got = shown(&ruleset, SET_BRIDGES);
    got.sort();
    assert_eq!(got, bridges);
    let mut pairs = vec![format!("\"{a}\" . \"{a}\""), format!("\"{b}\" . \"{b}\"")];
    pairs.sort();
    let mut got = shown(&ruleset, SET_BRIDGE_PAIRS);
    got.sort();
    assert_eq!(got, pairs);
    assert_eq!(shown(&ruleset, SET_INTERNAL), [format!("\"{b}\"")]);
    // Interface names are 16 bytes, NUL padded; pairs are two of them.
    let set = ruleset.set(SET_BRIDGE_PAIRS).expect("pairs");
    assert_eq!(set.key_len(), 32);
    assert!(set.elements.iter().all(|e| e.key.len() == 32));
    assert_eq!(ruleset.set(SET_BRIDGES).expect("bridges").key_len(), 16);
}

#[test]
fn masquerade_covers_non_internal_subnets_merged_into_ranges() {
    let state = NodeState {
        networks: vec![
            network("a", "172.18.0.0/16", false),
            network("b", "172.19.0.0/16", false),
            network("c", "10.0.0.0/24", false),
            network("internal", "10.0.1.0/24", true),
        ],
        ..NodeState::default()
    };
    let ruleset = render(&state);
    let set = ruleset.set(SET_MASQ).expect("masq set");
    assert!(set.interval);
    assert_eq!(set.flags(), 0x4);
    assert_eq!(
        shown(&ruleset, SET_MASQ),
        [
            "10.0.0.0 (range start)",
            "10.0.1.0 (range end)",
            "172.18.0.0 (range start)",
            "172.20.0.0 (range end)",
        ]
    );
}

#[test]
fn a_range_up_to_the_last_address_has_no_end_element() {
    assert_eq!(
        merge_ranges(vec![(5u32, 9), (1, 2), (3, 4), (20, 30), (25, 26)]),
        [(1, 9), (20, 30)]
    );
    let state = NodeState {
        networks: vec![network("top", "255.255.255.0/24", false)],
        ..NodeState::default()
    };
    assert_eq!(
        shown(&render(&state), SET_MASQ),
        ["255.255.255.0 (range start)"]
    );
}

#[test]
fn ports_go_to_the_specific_or_the_wildcard_map() {
    let state = NodeState {
        networks: vec![
            network("web", "172.18.0.0/16", false),
            network("secret", "10.77.0.0/24", true),
        ],
        ports: vec![
            port("0.0.0.0", 8000, Protocol::Tcp, "172.18.0.2", 80),
            port("127.0.0.1", 8443, Protocol::Tcp, "172.18.0.2", 443),
            port("0.0.0.0", 5353, Protocol::Udp, "172.18.0.3", 53),
            port("192.0.2.7", 3868, Protocol::Sctp, "172.18.0.4", 3868),
            port("0.0.0.0", 7000, Protocol::Tcp, "10.77.0.2", 70),
        ],
        ..NodeState::default()
    };
    let ruleset = render(&state);
    assert_eq!(
        shown(&ruleset, MAP_PORTS_ANY),
        [
            "tcp . 8000 : 172.18.0.2 . 80",
            "udp . 5353 : 172.18.0.3 . 53",
        ]
    );
    assert_eq!(
        shown(&ruleset, MAP_PORTS_ADDR),
        [
            "127.0.0.1 . tcp . 8443 : 172.18.0.2 . 443",
            "192.0.2.7 . sctp . 3868 : 172.18.0.4 . 3868",
        ]
    );
    let addr = ruleset.set(MAP_PORTS_ADDR).expect("map");
    assert_eq!(addr.flags(), 0x8);
    // (ipv4_addr . inet_proto . inet_service) : (ipv4_addr . inet_service), as nft numbers them.
    assert_eq!(addr.key_type(), (((7 << 6) | 12) << 6) | 13);
    assert_eq!(addr.key_len(), 12);
    assert_eq!(addr.data_type_len(), Some(((7 << 6) | 13, 8)));
    let any = ruleset.set(MAP_PORTS_ANY).expect("map");
    assert_eq!(any.key_len(), 8);
    // Each field starts on a 4-byte register; the port is in network byte order.
    let element = any.elements.iter().next().expect("an element");
    assert_eq!(element.key, [6, 0, 0, 0, 0x1f, 0x40, 0, 0]);
    assert_eq!(
        element.data.as_deref(),
        Some(&[172, 18, 0, 2, 0, 80, 0, 0][..])
    );
}

#[test]
fn a_duplicate_port_key_keeps_the_first() {
    let state = NodeState {
        ports: vec![
            port("0.0.0.0", 8000, Protocol::Tcp, "172.18.0.2", 80),
            port("0.0.0.0", 8000, Protocol::Tcp, "172.18.0.9", 90),
            port("0.0.0.0", 8000, Protocol::Udp, "172.18.0.9", 90),
        ],
        ..NodeState::default()
    };
    assert_eq!(
        shown(&render(&state), MAP_PORTS_ANY),
        [
            "tcp . 8000 : 172.18.0.2 . 80",
            "udp . 8000 : 172.18.0.9 . 90",
        ]
    );
}

#[test]
fn rules_carry_their_fingerprint_and_the_nat_registers_line_up() {
    let ruleset = render(&NodeState::default());
    let mut comments = BTreeSet::new();
    for chain in &ruleset.chains {
        for rule in &chain.rules {
            let comment = rule.comment();
            assert!(
                comment.starts_with(&format!("pier:{}:", rule.id)),
                "{comment}"
            );
            // nft comments are at most 128 bytes.
            assert!(comment.len() < 128);
            comments.insert((chain.name, comment));
        }
    }
    assert_eq!(comments.len(), 21);

    // The DNAT rules read the map's value (address . port) from the registers the lookup wrote:
    // the port follows a 4-byte IPv4 address in the next register, a 16-byte IPv6 one 4 later.
    let prerouting = ruleset
        .chains
        .iter()
        .find(|c| c.name == "prerouting")
        .expect("a prerouting chain");
    let ids: Vec<_> = prerouting.rules.iter().map(|r| r.id).collect();
    assert_eq!(ids, ["dnat-addr", "dnat-any", "dnat-addr6", "dnat-any6"]);
    for rule in &prerouting.rules {
        let lookup = rule
            .exprs
            .iter()
            .find_map(|e| match e {
                Expr::Lookup { dreg: Some(d), .. } => Some(*d),
                _ => None,
            })
            .expect("a map lookup");
        let dnat = if rule.id.ends_with('6') {
            Expr::Dnat6 {
                addr: lookup,
                port: lookup + 4,
            }
        } else {
            Expr::Dnat {
                addr: lookup,
                port: lookup + 1,
            }
        };
        assert_eq!(rule.exprs.last(), Some(&dnat), "{}", rule.id);
        // Only the wildcard maps need `fib daddr type local`.
        let fib = rule
            .exprs
            .iter()
            .any(|e| matches!(e, Expr::FibDaddrType { .. }));
        assert_eq!(fib, rule.id.starts_with("dnat-any"), "{}", rule.id);
    }
    let output = ruleset.chains.iter().find(|c| c.name == "output");
    assert_eq!(output.map(|c| &c.rules), Some(&prerouting.rules));
    // Every IPv4 or IPv6 header match is guarded by `meta nfproto` (the table is inet), and so
    // is every NAT.
    for chain in &ruleset.chains {
        for rule in &chain.rules {
            let first_ip_match = rule.exprs.iter().position(|e| {
                matches!(
                    e,
                    Expr::Payload {
                        base: PayloadBase::Network,
                        ..
                    } | Expr::Dnat { .. }
                        | Expr::Masquerade
                )
            });
            if let Some(at) = first_ip_match {
                let guarded = rule.exprs[..at]
                    .windows(2)
                    .any(|pair| pair == Expr::is_ipv4() || pair == Expr::is_ipv6());
                assert!(guarded, "{}", rule.id);
            }
        }
    }
}

#[test]
fn display_reads_like_nft() {
    let state = NodeState {
        networks: vec![network("web", "172.18.0.0/16", false)],
        ports: vec![port("0.0.0.0", 8000, Protocol::Tcp, "172.18.0.2", 80)],
        ..NodeState::default()
    };
    let text = render(&state).to_string();
    assert!(text.starts_with("table inet pier {"), "{text}");
    assert!(text.contains("map ports_any {"), "{text}");
    assert!(text.contains("type inet_proto . inet_service : ipv4_addr . inet_service"));
    assert!(
        text.contains("element tcp . 8000 : 172.18.0.2 . 80"),
        "{text}"
    );
    assert!(text.contains("type nat hook prerouting priority -100; policy accept;"));
    assert!(
        text.contains("masquerade comment \"pier:masquerade-egress:"),
        "{text}"
    );
}

#[test]
fn userdata_tells_nft_the_key_byte_order() {
    let ruleset = render(&NodeState::default());
    let mut host_endian = vec![0u8, 4];
    host_endian.extend_from_slice(&1u32.to_ne_bytes());
    assert_eq!(
        ruleset.set(SET_BRIDGES).expect("set").userdata(),
        host_endian
    );
    assert_eq!(
        ruleset.set(SET_MASQ).expect("set").userdata()[2..],
        2u32.to_ne_bytes()
    );
    assert!(
        ruleset
            .set(MAP_PORTS_ANY)
            .expect("map")
            .userdata()
            .is_empty()
    );
}

#[test]
fn other_engines_bridges_are_set_elements_and_the_rules_stay_constant() {
    let host_bridges = vec!["docker0".to_owned(), "virbr0".to_owned()];
    let ruleset = render_with(&NodeState::default(), &host_bridges, None);
    assert_eq!(
        shown(&ruleset, SET_HOST_BRIDGES),
        ["\"docker0\"", "\"virbr0\""]
    );
    assert_eq!(ruleset.chains, render(&NodeState::default()).chains);
    let set = ruleset.set(SET_HOST_BRIDGES).expect("set");
    let names: Vec<String> = set.elements.iter().map(|e| ifname_of(&e.key)).collect();
    assert_eq!(names, host_bridges);
}

/// Only the nodes with an endpoint of an overlay may send into it (by its VXLAN id); an overlay
/// is masqueraded and isolated like a bridge network.
#[test]
fn overlay_peers_are_pairs_of_vxlan_id_and_tunnel_address() {
    let overlay = |name: &str, subnet: &str, id: u32| NetworkState {
        driver: Driver::Overlay,
        vxlan_id: Some(id),
        ..network(name, subnet, false)
    };
    let remote = |id: &str, network: &str, tunnel: &str| crate::state::RemoteEndpoint {
        id: id.into(),
        name: id.into(),
        aliases: vec![],
        network: network.into(),
        address: Some("10.20.0.9".parse().expect("address")),
        address6: None,
        mac: "02:42:0a:14:00:09".into(),
        node: format!("node-{tunnel}"),
        tunnel: tunnel.parse().expect("tunnel"),
    };
    let state = NodeState {
        networks: vec![
            overlay("a", "10.20.0.0/24", 4096),
            overlay("b", "10.21.0.0/24", 70000),
        ],
        remote_endpoints: vec![
            remote("x", "a", "10.0.0.2"),
            remote("y", "a", "10.0.0.2"),
            remote("z", "b", "10.0.0.3"),
            remote("stray", "unknown", "10.0.0.4"),
        ],
        ..NodeState::default()
    };
    let ruleset = render(&state);
    assert_eq!(shown(&ruleset, SET_OVERLAY_IDS), ["4096", "70000"]);
    assert_eq!(
        shown(&ruleset, SET_OVERLAY_PEERS),
        ["4096 . 10.0.0.2", "70000 . 10.0.0.3"]
    );
    assert_eq!(shown(&ruleset, SET_BRIDGES).len(), 2);
    assert!(shown(&ruleset, SET_MASQ).contains(&"10.21.0.0 (range start)".to_owned()));
    assert!(OVERLAY_PEERS_ONLY.contains(&format!("udp dport {VXLAN_PORT} ")));

    // Only the ids whose device exists: 4096 may be another program's (Calico, Docker Swarm).
    let made = BTreeSet::from([70000]);
    let ruleset = render_with(&state, &[], Some(&made));
    assert_eq!(shown(&ruleset, SET_OVERLAY_IDS), ["70000"]);
    assert_eq!(shown(&ruleset, SET_OVERLAY_PEERS), ["70000 . 10.0.0.3"]);
}

#[test]
fn ipv6_subnets_are_masqueraded_merged_and_internal_ones_are_not() {
    let state = NodeState {
        networks: vec![
            dual_stack("a", "172.18.0.0/16", "fd00:18::/64", false),
            dual_stack("b", "172.19.0.0/16", "fd00:18:0:1::/64", false),
            dual_stack("vault", "10.0.1.0/24", "fd00:77::/64", true),
            // IPv6-only.
            NetworkState {
                subnet: None,
                gateway: None,
                ..dual_stack("v6only", "10.9.0.0/24", "2001:db8:1::/48", false)
            },
        ],
        ..NodeState::default()
    };
    let ruleset = render(&state);
    let set = ruleset.set(SET_MASQ6).expect("masq6 set");
    assert!(set.interval);
    assert_eq!(set.key_type(), 8);
    assert_eq!(set.key_len(), 16);
    assert_eq!(set.userdata()[2..], 2u32.to_ne_bytes());
    assert_eq!(
        shown(&ruleset, SET_MASQ6),
        [
            "2001:db8:1:: (range start)",
            "2001:db8:2:: (range end)",
            "fd00:18:: (range start)",
            "fd00:18:0:2:: (range end)",
        ]
    );
    // The IPv4 set is as before: the IPv6-only network adds nothing there.
    assert_eq!(
        shown(&ruleset, SET_MASQ),
        ["172.18.0.0 (range start)", "172.20.0.0 (range end)"]
    );
    // Every Pier bridge, whatever its families, is in the interface sets the forward rules use.
    assert_eq!(shown(&ruleset, SET_BRIDGES).len(), 4);
    assert_eq!(shown(&ruleset, SET_INTERNAL).len(), 1);
    // The last IPv6 address has no address after it.
    assert_eq!(
        merge_ranges(vec![(u128::MAX - 1, u128::MAX), (0, 0)]).len(),
        2
    );
    let top = NodeState {
        networks: vec![dual_stack("top", "10.0.0.0/24", "ffff::/16", false)],
        ..NodeState::default()
    };
    assert_eq!(shown(&render(&top), SET_MASQ6), ["ffff:: (range start)"]);
}

#[test]
fn ipv6_ports_go_to_their_own_maps() {
    let state = NodeState {
        networks: vec![
            dual_stack("web", "172.18.0.0/16", "fd00:18::/64", false),
            dual_stack("vault", "10.77.0.0/24", "fd00:77::/64", true),
        ],
        ports: vec![
            port("0.0.0.0", 8000, Protocol::Tcp, "172.18.0.2", 80),
            port("::", 8000, Protocol::Tcp, "fd00:18::2", 80),
            port("::1", 8443, Protocol::Tcp, "fd00:18::2", 443),
            port("2001:db8::7", 5353, Protocol::Udp, "fd00:18::3", 53),
            // Internal: never published.
            port("::", 7000, Protocol::Tcp, "fd00:77::2", 70),
            // Mixed families cannot be DNATed: left out.
            port("::", 7001, Protocol::Tcp, "172.18.0.2", 71),
            port("0.0.0.0", 7002, Protocol::Tcp, "fd00:18::2", 72),
        ],
        ..NodeState::default()
    };
    let ruleset = render(&state);
    assert_eq!(
        shown(&ruleset, MAP_PORTS_ANY),
        ["tcp . 8000 : 172.18.0.2 . 80"]
    );
    assert!(shown(&ruleset, MAP_PORTS_ADDR).is_empty());
    assert_eq!(
        shown(&ruleset, MAP_PORTS_ANY6),
        ["tcp . 8000 : fd00:18::2 . 80"]
    );
    assert_eq!(
        shown(&ruleset, MAP_PORTS_ADDR6),
        [
            "::1 . tcp . 8443 : fd00:18::2 . 443",
            "2001:db8::7 . udp . 5353 : fd00:18::3 . 53",
        ]
    );
    // (ipv6_addr . inet_proto . inet_service) : (ipv6_addr . inet_service), as nft numbers
    // them; each field on its 4-byte registers.
    let addr = ruleset.set(MAP_PORTS_ADDR6).expect("map");
    assert_eq!(addr.key_type(), (((8 << 6) | 12) << 6) | 13);
    assert_eq!(addr.key_len(), 24);
    assert_eq!(addr.data_type_len(), Some(((8 << 6) | 13, 20)));
    let any = ruleset.set(MAP_PORTS_ANY6).expect("map");
    assert_eq!(any.key_len(), 8);
    let element = any.elements.iter().next().expect("an element");
    assert_eq!(element.key, [6, 0, 0, 0, 0x1f, 0x40, 0, 0]);
    let mut value = "fd00:18::2"
        .parse::<Ipv6Addr>()
        .expect("address")
        .octets()
        .to_vec();
    value.extend([0, 80, 0, 0]);
    assert_eq!(element.data.as_deref(), Some(&value[..]));
}

#[test]
fn the_ip6_table_hands_loopback_answers_to_lo() {
    let ruleset = render(&NodeState {
        networks: vec![dual_stack("web", "172.18.0.0/16", "fd00:18::/64", false)],
        ..NodeState::default()
    });
    let chain = ruleset.loopback6.expect("table ip6 pier");
    let texts: Vec<_> = chain.rules.iter().map(|r| r.text).collect();
    assert_eq!(texts, LOOPBACK6_RULES);
    for rule in &chain.rules {
        // Only replies to `::1` on a Pier bridge whose source was masqueraded...
        assert!(rule.exprs.contains(&Expr::Cmp {
            op: CmpOp::Eq,
            sreg: REG_1,
            data: pier_crds::names::BRIDGE_PREFIX.as_bytes().to_vec(),
        }));
        assert!(rule.exprs.contains(&Expr::CtDirection { dreg: REG_1 }));
        // ...get the source back and go to `lo` (index 1), and nowhere else.
        assert!(rule.exprs.contains(&Expr::CtOriginal {
            key: crate::firewall::expr::CtOriginal::DaddrIp6,
            dreg: REG_1
        }));
        assert_eq!(
            rule.exprs[rule.exprs.len() - 2..],
            [
                Expr::Dup6 {
                    addr: REG_1,
                    dev: crate::firewall::expr::REG_2
                },
                Expr::Verdict(Verdict::Drop)
            ]
        );
        assert!(rule.exprs.contains(&Expr::Immediate {
            dreg: crate::firewall::expr::REG_2,
            data: 1u32.to_ne_bytes().to_vec()
        }));
    }
    let text = NodeState {
        networks: vec![dual_stack("web", "172.18.0.0/16", "fd00:18::/64", false)],
        ..NodeState::default()
    };
    let text = render(&text).to_string();
    assert!(text.contains("table ip6 pier {"), "{text}");
    assert!(
        text.contains("type filter hook prerouting priority -90; policy accept;"),
        "{text}"
    );
    assert!(text.contains("map ports_any6 {"), "{text}");
    assert!(
        text.contains("type inet_proto . inet_service : ipv6_addr . inet_service"),
        "{text}"
    );
}
