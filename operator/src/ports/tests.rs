//! Tests of host-port allocation: one per rule, then properties against a simple model.

use std::collections::{BTreeSet, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;

use super::*;

const ANY: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const ETH: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5));
const ANY6: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

fn hp(node: &str, protocol: Protocol, ip: IpAddr, port: u16) -> HostPort {
    HostPort::new(node, protocol, ip, port)
}

fn tcp(ip: IpAddr, port: u16) -> HostPort {
    hp("node-a", Protocol::Tcp, ip, port)
}

#[test]
fn fixed_port_conflicts_name_the_holder() {
    let mut a = PortAllocator::default();
    a.reserve("default/web", &tcp(ANY, 8000)).expect("free");
    let err = a
        .reserve("default/api", &tcp(ANY, 8000))
        .expect_err("taken");
    assert_eq!(
        err,
        PortError::Conflict {
            requested: tcp(ANY, 8000),
            held: tcp(ANY, 8000),
            holder: "default/web".into()
        }
    );
    assert_eq!(
        err.to_string(),
        "host port 0.0.0.0:8000/tcp on node \"node-a\" conflicts with 0.0.0.0:8000, \
         already published by default/web"
    );
    // Idempotent for the holder.
    assert_eq!(
        a.reserve("default/web", &tcp(ANY, 8000)),
        Ok(tcp(ANY, 8000))
    );
    assert_eq!(a.len(), 1);
}

#[test]
fn wildcard_conflicts_with_specific_both_ways() {
    let mut a = PortAllocator::default();
    a.reserve("ns/one", &tcp(LO, 8000)).expect("free");
    // A second specific address may share the port...
    a.reserve("ns/two", &tcp(ETH, 8000))
        .expect("different address");
    // ...but the wildcard conflicts with both.
    let err = a
        .reserve("ns/three", &tcp(ANY, 8000))
        .expect_err("wildcard");
    assert!(
        matches!(err, PortError::Conflict { ref holder, .. } if holder == "ns/one" || holder == "ns/two")
    );
    assert!(matches!(
        a.reserve("ns/three", &tcp(ANY6, 8000)),
        Err(PortError::Conflict { .. })
    ));

    let mut b = PortAllocator::default();
    b.reserve("ns/wild", &tcp(ANY, 9000)).expect("free");
    let err = b
        .reserve("ns/x", &tcp(LO, 9000))
        .expect_err("specific under wildcard");
    assert_eq!(
        err,
        PortError::Conflict {
            requested: tcp(LO, 9000),
            held: tcp(ANY, 9000),
            holder: "ns/wild".into()
        }
    );
    // The same owner cannot hold both either: the kernel would refuse the second bind.
    assert!(matches!(
        b.reserve("ns/wild", &tcp(LO, 9000)),
        Err(PortError::Conflict { .. })
    ));
}

#[test]
fn different_node_or_protocol_never_conflicts() {
    let mut a = PortAllocator::default();
    a.reserve("ns/a", &tcp(ANY, 80)).expect("free");
    a.reserve("ns/b", &hp("node-a", Protocol::Udp, ANY, 80))
        .expect("udp");
    a.reserve("ns/c", &hp("node-a", Protocol::Sctp, ANY, 80))
        .expect("sctp");
    a.reserve("ns/d", &hp("node-b", Protocol::Tcp, ANY, 80))
        .expect("other node");
    assert_eq!(a.len(), 4);
}

#[test]
fn ipv4_mapped_addresses_are_the_ipv4_address() {
    let mut a = PortAllocator::default();
    let mapped = IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped());
    a.reserve("ns/a", &tcp(LO, 80)).expect("free");
    assert!(matches!(
        a.reserve("ns/b", &tcp(mapped, 80)),
        Err(PortError::Conflict { .. })
    ));
    assert_eq!(a.holder(&tcp(mapped, 80)), Some("ns/a"));
}

#[test]
fn port_zero_is_refused() {
    let mut a = PortAllocator::default();
    assert!(matches!(
        a.reserve("ns/a", &tcp(ANY, 0)),
        Err(PortError::ZeroPort { .. })
    ));
}

#[test]
fn automatic_ports_skip_every_used_port_and_wrap() {
    let range = PortRange::new(40000, 40004).expect("range");
    let mut a = PortAllocator::new(range);
    // Used on a specific address only: still skipped, so auto ports conflict with nothing.
    a.reserve("ns/fixed", &tcp(LO, 40001)).expect("free");
    a.reserve("ns/fixed", &tcp(ANY, 40003)).expect("free");
    let got: Vec<u16> = (0..3)
        .map(|_| {
            a.allocate("ns/auto", "node-a", Protocol::Tcp, ETH)
                .expect("free")
                .port
        })
        .collect();
    assert_eq!(got, vec![40000, 40002, 40004]);
    let err = a
        .allocate("ns/auto", "node-a", Protocol::Tcp, ETH)
        .expect_err("exhausted");
    assert_eq!(
        err.to_string(),
        "no free tcp host port left in 40000-40004 on node \"node-a\""
    );
    // Other protocols and nodes have their own range.
    assert!(a.allocate("ns/auto", "node-a", Protocol::Udp, ANY).is_ok());
    assert!(a.allocate("ns/auto", "node-b", Protocol::Tcp, ANY).is_ok());
    // Released ports come back once the cursor wraps.
    assert_eq!(a.release(&tcp(ETH, 40002)), Some("ns/auto".into()));
    assert_eq!(
        a.allocate("ns/again", "node-a", Protocol::Tcp, ANY)
            .map(|p| p.port),
        Ok(40002)
    );
    assert_eq!(a.available("node-a", Protocol::Tcp), 0);
    assert_eq!(a.available("node-c", Protocol::Tcp), 5);
}

#[test]
fn released_port_not_reused_at_once() {
    let mut a = PortAllocator::default();
    let p = a.allocate("ns/a", "n", Protocol::Tcp, ANY).expect("free");
    assert_eq!(p.port, 32768);
    a.release_owner("ns/a");
    let q = a.allocate("ns/b", "n", Protocol::Tcp, ANY).expect("free");
    assert_eq!(q.port, 32769);
}

#[test]
fn release_by_owner_and_individually() {
    let mut a = PortAllocator::default();
    a.reserve("ns/web", &tcp(ANY, 80)).expect("free");
    a.reserve("ns/web", &tcp(LO, 443)).expect("free");
    a.reserve("ns/web", &hp("node-a", Protocol::Udp, ANY, 53))
        .expect("free");
    a.reserve("ns/other", &tcp(ETH, 443)).expect("free");
    assert_eq!(a.release(&tcp(LO, 443)), Some("ns/web".into()));
    assert_eq!(a.release(&tcp(LO, 443)), None);
    assert_eq!(a.ports_of("ns/web").len(), 2);
    let freed: BTreeSet<HostPort> = a.release_owner("ns/web").into_iter().collect();
    assert_eq!(
        freed,
        [tcp(ANY, 80), hp("node-a", Protocol::Udp, ANY, 53)]
            .into_iter()
            .collect()
    );
    assert!(a.ports_of("ns/web").is_empty());
    assert_eq!(a.holder(&tcp(ETH, 443)), Some("ns/other"));
    // Freed ports are free for others.
    a.reserve("ns/new", &tcp(ANY, 80)).expect("freed");
    // The wildcard 443 is still blocked by ns/other's specific 443.
    assert!(a.reserve("ns/new", &tcp(ANY, 443)).is_err());
}

#[test]
fn release_node_frees_everything_there() {
    let mut a = PortAllocator::default();
    a.reserve("ns/a", &hp("gone", Protocol::Tcp, ANY, 80))
        .expect("free");
    a.reserve("ns/a", &hp("stays", Protocol::Tcp, ANY, 80))
        .expect("free");
    a.allocate("ns/b", "gone", Protocol::Udp, ANY)
        .expect("free");
    let freed = a.release_node("gone");
    assert_eq!(freed.len(), 2);
    assert_eq!(a.ports_of("ns/a"), &[hp("stays", Protocol::Tcp, ANY, 80)]);
    assert!(a.ports_of("ns/b").is_empty());
    assert_eq!(a.len(), 1);
}

#[test]
fn assign_is_idempotent_and_keeps_automatic_ports() {
    let mut a = PortAllocator::default();
    let specs = [
        PortSpec::fixed(Protocol::Tcp, ANY, 8000),
        PortSpec::auto(Protocol::Tcp, ANY),
        PortSpec::auto(Protocol::Tcp, LO),
        PortSpec {
            protocol: Protocol::Udp,
            host_ip: ANY,
            host_port: Some(0),
        },
    ];
    let first = a.assign("ns/web", "node-a", &specs).expect("free");
    assert_eq!(
        first.iter().map(|p| p.port).collect::<Vec<_>>(),
        vec![8000, 32768, 32769, 32768]
    );
    // Someone else takes automatic ports meanwhile; reconciling again changes nothing.
    a.allocate("ns/other", "node-a", Protocol::Tcp, ANY)
        .expect("free");
    let again = a.assign("ns/web", "node-a", &specs).expect("same");
    assert_eq!(again, first);
    assert_eq!(a.ports_of("ns/web").len(), 4);
    // Dropping an entry releases its port.
    let fewer = a.assign("ns/web", "node-a", &specs[..2]).expect("subset");
    assert_eq!(fewer, first[..2].to_vec());
    assert_eq!(a.holder(&first[2]), None);
    // Moving to another node releases everything on the old one.
    let moved = a
        .assign("ns/web", "node-b", &specs[..2])
        .expect("other node");
    assert!(moved.iter().all(|p| p.node == "node-b"));
    assert_eq!(a.holder(&first[0]), None);
}

#[test]
fn assign_can_widen_its_own_port_to_the_wildcard() {
    let mut a = PortAllocator::default();
    a.assign("ns/web", "n", &[PortSpec::fixed(Protocol::Tcp, LO, 80)])
        .expect("free");
    let got = a
        .assign("ns/web", "n", &[PortSpec::fixed(Protocol::Tcp, ANY, 80)])
        .expect("its own old port does not block it");
    assert_eq!(got, vec![hp("n", Protocol::Tcp, ANY, 80)]);
}

#[test]
fn assign_is_all_or_nothing() {
    let mut a = PortAllocator::default();
    a.reserve("ns/db", &hp("n", Protocol::Tcp, ANY, 5432))
        .expect("free");
    let before = a
        .assign(
            "ns/web",
            "n",
            &[
                PortSpec::fixed(Protocol::Tcp, ANY, 80),
                PortSpec::auto(Protocol::Tcp, ANY),
            ],
        )
        .expect("free");
    let err = a
        .assign(
            "ns/web",
            "n",
            &[
                PortSpec::fixed(Protocol::Tcp, ANY, 81),
                PortSpec::fixed(Protocol::Tcp, LO, 5432),
                PortSpec::auto(Protocol::Udp, ANY),
            ],
        )
        .expect_err("5432 is taken");
    assert!(matches!(err, PortError::Conflict { ref holder, .. } if holder == "ns/db"));
    assert_eq!(a.ports_of("ns/web"), before.as_slice());
    assert_eq!(a.holder(&hp("n", Protocol::Tcp, ANY, 81)), None);
    // Two entries of one PortPublish that conflict with each other are refused too.
    assert!(
        a.assign(
            "ns/x",
            "n",
            &[
                PortSpec::fixed(Protocol::Tcp, ANY, 90),
                PortSpec::fixed(Protocol::Tcp, LO, 90)
            ]
        )
        .is_err()
    );
    assert!(a.ports_of("ns/x").is_empty());
}

#[test]
fn rebuild_reports_every_bad_entry() {
    let entries = vec![
        ("ns/a", tcp(ANY, 80)),
        ("ns/b", tcp(LO, 80)),  // under a's wildcard
        ("ns/a", tcp(ANY, 80)), // duplicate
        ("ns/c", tcp(LO, 81)),
        ("ns/d", tcp(ETH, 81)), // fine: different specific address
        ("ns/e", tcp(ANY, 81)), // over c and d
        ("ns/f", tcp(ANY, 0)),  // not a port
    ];
    let rebuilt = PortAllocator::rebuild(PortRange::default(), entries);
    let r = &rebuilt.rejected;
    assert_eq!(r.len(), 4, "{r:?}");
    assert!(matches!(&r[0], PortError::Conflict { holder, .. } if holder == "ns/a"));
    assert!(matches!(&r[1], PortError::Duplicate { owner, .. } if owner == "ns/a"));
    assert!(matches!(&r[2], PortError::Conflict { holder, .. } if holder == "ns/c"));
    assert!(matches!(&r[3], PortError::ZeroPort { .. }));
    assert_eq!(rebuilt.allocator.len(), 3);
    assert!(!rebuilt.is_clean());
}

// ---- properties ----

const IPS: [IpAddr; 4] = [ANY, LO, ETH, ANY6];

#[derive(Debug, Clone)]
enum Op {
    Reserve {
        owner: u8,
        node: u8,
        udp: bool,
        ip: usize,
        port: u16,
    },
    Auto {
        owner: u8,
        node: u8,
        udp: bool,
        ip: usize,
    },
    Release {
        node: u8,
        udp: bool,
        ip: usize,
        port: u16,
    },
    ReleaseOwner(u8),
}

fn op() -> impl Strategy<Value = Op> {
    // Few owners, nodes, addresses and ports so that conflicts are frequent; ports 100-103
    // are outside and 200-205 inside the automatic range used below.
    let port = prop_oneof![100u16..104, 200u16..206];
    prop_oneof![
        4 => (0u8..4, 0u8..2, any::<bool>(), 0usize..4, port.clone())
            .prop_map(|(owner, node, udp, ip, port)| Op::Reserve { owner, node, udp, ip, port }),
        3 => (0u8..4, 0u8..2, any::<bool>(), 0usize..4)
            .prop_map(|(owner, node, udp, ip)| Op::Auto { owner, node, udp, ip }),
        2 => (0u8..2, any::<bool>(), 0usize..4, port)
            .prop_map(|(node, udp, ip, port)| Op::Release { node, udp, ip, port }),
        1 => (0u8..4).prop_map(Op::ReleaseOwner),
    ]
}

fn port_of(node: u8, udp: bool, ip: usize, port: u16) -> HostPort {
    let protocol = if udp { Protocol::Udp } else { Protocol::Tcp };
    hp(&format!("node{node}"), protocol, IPS[ip], port)
}

fn all_held(a: &PortAllocator) -> Vec<(String, HostPort)> {
    let mut held: Vec<(String, HostPort)> =
        a.iter().map(|(o, p)| (o.to_owned(), p.clone())).collect();
    held.sort();
    held
}

proptest! {
    /// Against a model list of held ports: a fixed request succeeds iff nothing held conflicts
    /// with it (wildcards included) or its owner holds exactly it; automatic ports are in the
    /// range and conflict with nothing; held ports never conflict pairwise.
    #[test]
    fn never_hands_out_conflicting_ports(ops in proptest::collection::vec(op(), 0..300)) {
        let range = PortRange::new(200, 205).expect("range");
        let mut a = PortAllocator::new(range);
        let mut model: Vec<(String, HostPort)> = Vec::new();
        for op in ops {
            match op {
                Op::Reserve { owner, node, udp, ip, port } => {
                    let owner = format!("o{owner}");
                    let want = port_of(node, udp, ip, port);
                    let conflicting: Vec<&(String, HostPort)> = model.iter().filter(|(_, p)| p.conflicts_with(&want)).collect();
                    let exact_self = conflicting.iter().any(|(o, p)| *o == owner && *p == want);
                    match a.reserve(&owner, &want) {
                        Ok(got) => {
                            prop_assert_eq!(&got, &want);
                            prop_assert!(conflicting.is_empty() || exact_self, "missed conflict for {}", want);
                            if !exact_self { model.push((owner, want)); }
                        }
                        Err(PortError::Conflict { holder, held, .. }) => {
                            prop_assert!(!exact_self);
                            prop_assert!(conflicting.iter().any(|(o, p)| *o == holder && *p == held));
                        }
                        Err(e) => prop_assert!(false, "unexpected {e}"),
                    }
                }
                Op::Auto { owner, node, udp, ip } => {
                    let owner = format!("o{owner}");
                    let protocol = if udp { Protocol::Udp } else { Protocol::Tcp };
                    let node = format!("node{node}");
                    match a.allocate(&owner, &node, protocol, IPS[ip]) {
                        Ok(got) => {
                            prop_assert!(range.contains(got.port));
                            prop_assert!(!model.iter().any(|(_, p)| p.conflicts_with(&got)), "auto port {} collides", got);
                            model.push((owner, got));
                        }
                        Err(PortError::Exhausted { .. }) => {
                            for port in range.ports() {
                                prop_assert!(model.iter().any(|(_, p)| p.node == node && p.protocol == protocol && p.port == port));
                            }
                        }
                        Err(e) => prop_assert!(false, "unexpected {e}"),
                    }
                }
                Op::Release { node, udp, ip, port } => {
                    let which = port_of(node, udp, ip, port);
                    let pos = model.iter().position(|(_, p)| *p == which);
                    let expected = pos.map(|i| model.remove(i).0);
                    prop_assert_eq!(a.release(&which), expected);
                }
                Op::ReleaseOwner(o) => {
                    let owner = format!("o{o}");
                    let mut freed = a.release_owner(&owner);
                    freed.sort();
                    let mut expected: Vec<HostPort> = model.iter().filter(|(o, _)| *o == owner).map(|(_, p)| p.clone()).collect();
                    expected.sort();
                    model.retain(|(o, _)| *o != owner);
                    prop_assert_eq!(freed, expected);
                }
            }
            let mut sorted = model.clone();
            sorted.sort();
            prop_assert_eq!(all_held(&a), sorted);
        }
        let held = all_held(&a);
        for (i, (_, x)) in held.iter().enumerate() {
            for (_, y) in &held[i + 1..] {
                prop_assert!(!x.conflicts_with(y), "{} and {} both held", x, y);
            }
        }
    }

    /// Rebuilding from arbitrary entries keeps a conflict-free subset and reports the rest;
    /// automatic allocation afterwards never collides with a kept entry and uses every free port.
    #[test]
    fn rebuild_then_allocate_never_collides(entries in proptest::collection::vec((0u8..4, 0usize..4, 195u16..210), 0..40)) {
        let range = PortRange::new(200, 205).expect("range");
        let input: Vec<(String, HostPort)> = entries.iter().map(|(o, ip, port)| (format!("o{o}"), tcp(IPS[*ip], *port))).collect();
        let rebuilt = PortAllocator::rebuild(range, input.clone());
        prop_assert_eq!(rebuilt.allocator.len() + rebuilt.rejected.len(), input.len());
        let mut a = rebuilt.allocator;
        let kept: Vec<HostPort> = a.iter().map(|(_, p)| p.clone()).collect();
        let used_in_range: HashSet<u16> = kept.iter().map(|p| p.port).filter(|p| range.contains(*p)).collect();
        let mut n = 0u32;
        while let Ok(p) = a.allocate("new", "node-a", Protocol::Tcp, ANY) {
            prop_assert!(!kept.iter().any(|k| k.conflicts_with(&p)), "{} collides", p);
            n += 1;
        }
        prop_assert_eq!(n as usize, range.len() as usize - used_in_range.len());
    }

    /// Released automatic ports are handed out again (once the cursor comes round).
    #[test]
    fn released_ports_are_reused(release in proptest::collection::btree_set(0usize..6, 0..6)) {
        let range = PortRange::new(200, 205).expect("range");
        let mut a = PortAllocator::new(range);
        let ports: Vec<HostPort> = (0..6).map(|i| a.allocate(&format!("o{i}"), "n", Protocol::Tcp, ANY).expect("free")).collect();
        let mut freed = BTreeSet::new();
        for &i in &release {
            prop_assert!(a.release(&ports[i]).is_some());
            freed.insert(ports[i].port);
        }
        let again: BTreeSet<u16> = (0..freed.len()).map(|i| a.allocate(&format!("n{i}"), "n", Protocol::Tcp, ANY).expect("released port").port).collect();
        prop_assert_eq!(again, freed);
        prop_assert!(a.allocate("more", "n", Protocol::Tcp, ANY).is_err(), "range is full again");
    }

    /// `assign` either succeeds with ports that conflict with no one else's, or leaves
    /// everything as it was; repeating a successful assign changes nothing.
    #[test]
    fn assign_is_atomic_and_idempotent(
        setup in proptest::collection::vec((0usize..4, 200u16..204), 0..6),
        specs in proptest::collection::vec((0usize..4, proptest::option::of(200u16..204)), 0..5),
    ) {
        let range = PortRange::new(200, 203).expect("range");
        let mut a = PortAllocator::new(range);
        for (i, (ip, port)) in setup.iter().enumerate() {
            let _ = a.reserve(&format!("other{i}"), &tcp(IPS[*ip], *port));
        }
        let specs: Vec<PortSpec> = specs.iter().map(|(ip, port)| PortSpec { protocol: Protocol::Tcp, host_ip: IPS[*ip], host_port: *port }).collect();
        let before = all_held(&a);
        match a.assign("me", "node-a", &specs) {
            Ok(got) => {
                prop_assert_eq!(got.len(), specs.len());
                for p in &got {
                    prop_assert!(!before.iter().any(|(_, q)| q.conflicts_with(p)));
                }
                let after = all_held(&a);
                prop_assert_eq!(a.assign("me", "node-a", &specs), Ok(got));
                prop_assert_eq!(all_held(&a), after);
            }
            Err(_) => prop_assert_eq!(all_held(&a), before),
        }
    }
}

#[test]
fn denied_ports_are_never_handed_out() {
    let denied: PortSet = KUBERNETES_HOST_PORTS.parse().expect("default");
    // A range holding some of them: 6443 and 10250 among 6442-6444 and 10249-10251.
    let range = PortRange::new(6442, 6444).expect("range");
    let mut a = PortAllocator::denying(range, denied.clone());
    assert_eq!(a.available("node-a", Protocol::Tcp), 2);
    for ip in [ANY, LO] {
        let err = a.reserve("default/ssh", &tcp(ip, 22)).expect_err("denied");
        assert_eq!(
            err,
            PortError::NotAllowed {
                requested: tcp(ip, 22),
                denied: denied.clone()
            }
        );
    }
    assert!(
        a.reserve("default/dns", &hp("node-a", Protocol::Udp, ANY, 6443))
            .is_err(),
        "every protocol"
    );
    assert_eq!(
        a.reserve("default/ssh", &tcp(ANY, 22))
            .expect_err("denied")
            .to_string(),
        "host port 0.0.0.0:22/tcp on node \"node-a\" may not be published: the operator's \
         denied host ports (22,2379-2380,6443,10250,10255-10259) are kept for the node's own \
         services"
    );
    let auto: Vec<u16> = (0..2)
        .map(|i| {
            a.allocate(&format!("default/p{i}"), "node-a", Protocol::Tcp, ANY)
                .expect("free")
                .port
        })
        .collect();
    assert_eq!(auto, vec![6442, 6444]);
    assert!(matches!(
        a.allocate("default/p2", "node-a", Protocol::Tcp, ANY),
        Err(PortError::Exhausted { .. })
    ));
    // Releasing every port of the range leaves the denied one out of the automatic search.
    a.release_owner("default/p0");
    a.release_owner("default/p1");
    let specs = [
        PortSpec::auto(Protocol::Tcp, ANY),
        PortSpec::auto(Protocol::Tcp, ANY),
    ];
    let ports: BTreeSet<u16> = a
        .assign("default/both", "node-a", &specs)
        .expect("two free")
        .iter()
        .map(|p| p.port)
        .collect();
    assert_eq!(ports, BTreeSet::from([6442, 6444]));
    assert!(
        a.assign(
            "default/fixed",
            "node-a",
            &[PortSpec::fixed(Protocol::Tcp, ANY, 10250)]
        )
        .is_err()
    );
}

#[test]
fn rebuild_drops_ports_denied_since() {
    let denied: PortSet = "22".parse().expect("set");
    let rebuilt = PortAllocator::rebuild_denying(
        PortRange::default(),
        denied,
        [
            ("default/ssh", tcp(ANY, 22)),
            ("default/web", tcp(ANY, 8000)),
        ],
    );
    assert_eq!(rebuilt.allocator.len(), 1);
    assert_eq!(
        rebuilt.allocator.holder(&tcp(ANY, 8000)),
        Some("default/web")
    );
    assert!(matches!(
        rebuilt.rejected.as_slice(),
        [PortError::NotAllowed { .. }]
    ));
}
