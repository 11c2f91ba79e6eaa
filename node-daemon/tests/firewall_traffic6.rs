//! Real IPv6 traffic through tables `inet pier` and `ip6 pier`, on a topology the fixture builds
//! by hand (addresses `nodad`, so they work at once):
//!
//! ```text
//!  lan 2001:db8:ff::2 ──up0── host 2001:db8:ff::1 ── bridge "web" 172.18.0.0/24 + fd00:18::/64 ── web1 .2/::2, web2 .3/::3
//!      198.51.100.2              198.51.100.1     ├── bridge "db" fd00:19::/64 (IPv6 only) ── db1 ::2
//!                                                 └── bridge "vault" fd00:77::/64 (internal) ── vault1 ::2
//! ```
//!
//! The LAN host has no route to the container subnets unless a test gives it one, so an answer
//! reaches it only through the node's NAT. The servers say which client address they saw: a
//! published port keeps the LAN host's, as a DNAT does (no userland proxy); a masquerade shows
//! the node's. Every test has its own namespaces and runs in parallel with the others.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use common::firewall::{bridge, container_dual, network6, port, require_root, state};
use common::{Ns, veth};
use pier_node::firewall;
use pier_node::state::{NetworkState, NodeState, Protocol, PublishedPort};

const UPLINK6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 1);
const LAN6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 2);
const UPLINK: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const LAN: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const GATEWAY_WEB6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 1);
const WEB1: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 2);
const WEB2: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 3);
const DB1: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x19, 0, 0, 0, 0, 0, 2);
const VAULT1: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 2);
const LOOPBACK6: Ipv6Addr = Ipv6Addr::LOCALHOST;

struct Lab {
    // Containers first: they are dropped before the host their veths hang off.
    web1: Ns,
    web2: Ns,
    db1: Ns,
    vault1: Ns,
    lan: Ns,
    host: Ns,
    state: NodeState,
}

impl Lab {
    fn new(tag: &str, ports: Vec<PublishedPort>) -> Lab {
        require_root();
        let host = Ns::new(&format!("{tag}-host"));
        let lan = Ns::new(&format!("{tag}-lan"));
        veth(&host, "up0", &lan, "eth0");
        host.sh(&format!(
            "ip addr add {UPLINK}/24 dev up0 && ip -6 addr add {UPLINK6}/64 dev up0 nodad"
        ));
        lan.sh(&format!(
            "ip addr add {LAN}/24 dev eth0 && ip -6 addr add {LAN6}/64 dev eth0 nodad"
        ));
        let networks: Vec<NetworkState> = vec![
            network6("web", Some("172.18.0.0/24"), "fd00:18::/64", false),
            network6("db", None, "fd00:19::/64", false),
            network6("vault", None, "fd00:77::/64", true),
        ];
        for n in &networks {
            bridge(&host, n);
        }
        for n in &networks {
            host.wait_link_local(&n.bridge_name());
        }
        let [web, db, vault] = [&networks[0], &networks[1], &networks[2]];
        let web1 = container_dual(
            &host,
            web,
            Some("172.18.0.2"),
            Some("fd00:18::2"),
            &format!("{tag}-web1"),
        );
        let web2 = container_dual(
            &host,
            web,
            Some("172.18.0.3"),
            Some("fd00:18::3"),
            &format!("{tag}-web2"),
        );
        let db1 = container_dual(&host, db, None, Some("fd00:19::2"), &format!("{tag}-db1"));
        let vault1 = container_dual(
            &host,
            vault,
            None,
            Some("fd00:77::2"),
            &format!("{tag}-vault1"),
        );
        let lab = Lab {
            web1,
            web2,
            db1,
            vault1,
            lan,
            host,
            state: state(networks, ports),
        };
        lab.apply();
        lab
    }

    fn apply(&self) {
        let host = self.host.path();
        let plan = firewall::plan(Some(&host), &self.state).expect("plan");
        firewall::apply(Some(&host), &plan).expect("apply");
    }

    fn reset(&self) {
        firewall::reset(Some(&self.host.path())).expect("reset");
    }

    /// Sets br_netfilter's IPv6 switch in the node's namespace; false when br_netfilter is not
    /// loaded on this machine (there is no switch then, and bridged frames never meet it).
    fn bridge_netfilter6(&self, on: bool) -> bool {
        let key = "/proc/sys/net/bridge/bridge-nf-call-ip6tables";
        if !self.host.exec(&format!("test -e {key}")).status.success() {
            return false;
        }
        self.host.sh(&format!("echo {} > {key}", u8::from(on)));
        true
    }
}

fn v6(address: Ipv6Addr) -> Option<IpAddr> {
    Some(IpAddr::V6(address))
}

/// Port `::`:8000 to web1:80.
fn web1_on_8000() -> PublishedPort {
    port("::", 8000, Protocol::Tcp, "fd00:18::2", 80)
}

#[test]
fn a_published_ipv6_port_from_the_lan_sees_the_lan_hosts_address() {
    let lab = Lab::new("pub6", vec![web1_on_8000()]);
    let _web1 = lab.web1.serve_peer(80);

    // From another machine (prerouting): DNAT, no proxy, so the server sees the LAN host.
    assert_eq!(
        lab.lan.peer_seen(UPLINK6, 8000),
        v6(LAN6),
        "lan -> [uplink]:8000"
    );
    // From the node itself (output hook), to its own addresses: the server sees the node's
    // address on the way (the uplink's, the bridge's) as with any local connection.
    assert_eq!(
        lab.host.peer_seen(UPLINK6, 8000),
        v6(UPLINK6),
        "node -> [uplink]:8000"
    );
    assert_eq!(
        lab.host.peer_seen(GATEWAY_WEB6, 8000),
        v6(GATEWAY_WEB6),
        "node -> [gateway]:8000"
    );
    // A port nobody published stays closed; the IPv4 side knows nothing of this port.
    assert_eq!(lab.lan.peer_seen(UPLINK6, 8001), None);
    assert_eq!(
        lab.lan.peer_seen(UPLINK, 8000),
        None,
        "IPv4 was not published"
    );
    // `::` means this node's addresses only (`fib daddr type local`): web2 talking to port 8000
    // of another machine reaches that machine, not web1 (the LAN host has a route back here).
    lab.lan
        .sh(&format!("ip -6 route add fd00:18::/64 via {UPLINK6}"));
    let _lan = lab.lan.serve_peer(8000);
    assert_eq!(
        lab.web2.peer_seen(LAN6, 8000),
        v6(UPLINK6),
        "web2 -> the LAN host's own 8000, masqueraded on the way out"
    );
    // Without Pier's tables there is no DNAT at all: the rules are what publishes.
    lab.reset();
    assert_eq!(lab.lan.peer_seen(UPLINK6, 8000), None);
}

#[test]
fn the_node_reaches_ipv6_loopback_ports_with_and_without_br_netfilter() {
    let lab = Lab::new(
        "lo6",
        vec![
            web1_on_8000(),
            port("::1", 8443, Protocol::Tcp, "fd00:18::2", 80),
            port("::1", 8444, Protocol::Tcp, "fd00:19::2", 9000),
            port("::", 5353, Protocol::Udp, "fd00:19::2", 53),
        ],
    );
    let _web1 = lab.web1.serve_peer(80);
    let _db1 = lab.db1.serve_bytes(9000, 3_000_000);
    let _udp = lab.db1.serve_udp_peer(53);
    let has_switch = lab.bridge_netfilter6(true);
    for br_netfilter in [true, false] {
        if br_netfilter && !has_switch {
            continue;
        }
        lab.bridge_netfilter6(br_netfilter);
        let mode = format!("br_netfilter for IPv6 {br_netfilter}");
        // The endpoint sees the bridge's address, as 127.0.0.1 shows as the IPv4 gateway.
        for port in [8443, 8000] {
            assert_eq!(
                lab.host.peer_seen(LOOPBACK6, port),
                v6(GATEWAY_WEB6),
                "node -> [::1]:{port}, {mode}"
            );
        }
        // Many packets each way (checksums rewritten right on every one), another bridge.
        assert_eq!(
            lab.host.bytes_received(LOOPBACK6, 8444),
            3_000_000,
            "a 3 MB answer through [::1]:8444, {mode}"
        );
        assert_eq!(
            lab.host.udp_peer_seen(LOOPBACK6, 5353),
            v6(Ipv6Addr::new(0xfd00, 0x19, 0, 0, 0, 0, 0, 1)),
            "UDP on [::1]:5353, {mode}"
        );
    }
    // Control: without table ip6 pier the answers die on the bridge (the kernel refuses `::1`
    // from anywhere but `lo`); the next apply makes the table again.
    lab.host.sh("nft delete table ip6 pier");
    assert_eq!(
        lab.host.peer_seen(LOOPBACK6, 8443),
        None,
        "without ip6 pier"
    );
    lab.apply();
    assert_eq!(lab.host.peer_seen(LOOPBACK6, 8443), v6(GATEWAY_WEB6));
    // `::1` is the node's loopback only: not its other addresses, not the LAN.
    assert_eq!(
        lab.lan.peer_seen(UPLINK6, 8443),
        None,
        "lan -> [uplink]:8443"
    );
    assert_eq!(
        lab.host.peer_seen(UPLINK6, 8443),
        None,
        "node -> [uplink]:8443"
    );
    // The node's own services on ::1 are untouched by the table.
    let _own = lab.host.serve_peer(7000);
    assert_eq!(lab.host.peer_seen(LOOPBACK6, 7000), v6(LOOPBACK6));
}

#[test]
fn hairpin_over_ipv6_from_endpoints_of_the_same_bridge() {
    let lab = Lab::new("hair6", vec![web1_on_8000()]);
    let _web1 = lab.web1.serve_peer(80);
    for addr in [UPLINK6, GATEWAY_WEB6] {
        assert_eq!(
            lab.web2.peer_seen(addr, 8000),
            v6(GATEWAY_WEB6),
            "web2 -> [{addr}]:8000 (hairpin, masqueraded so the answer comes back the same way)"
        );
    }
    assert_eq!(
        lab.web1.peer_seen(GATEWAY_WEB6, 8000),
        v6(GATEWAY_WEB6),
        "web1 -> its own published port"
    );
    // An endpoint of another network reaches it neither directly nor through the published
    // port: the DNATed packet is still routed between two Pier bridges, and isolation drops it,
    // as for IPv4.
    assert_eq!(
        lab.db1.peer_seen(UPLINK6, 8000),
        None,
        "db1 -> [uplink]:8000"
    );
    assert_eq!(lab.db1.peer_seen(WEB1, 80), None, "db1 -> web1 directly");
}

#[test]
fn ipv6_networks_are_isolated_from_each_other() {
    let lab = Lab::new("iso6", vec![]);
    assert!(lab.web1.ping6_eventually(WEB2), "same network, bridged");
    assert!(!lab.web1.ping6(DB1), "web -> db must be dropped");
    assert!(!lab.db1.ping6(WEB1), "db -> web must be dropped");
    assert!(!lab.vault1.ping6(WEB1), "internal -> web must be dropped");
    assert!(!lab.web1.ping6(VAULT1), "web -> internal must be dropped");
    // Control: without Pier's tables the host routes between the bridges.
    lab.reset();
    assert!(
        lab.web1.ping6_eventually(DB1),
        "without the table web -> db is routed"
    );
    lab.apply();
    assert!(!lab.web1.ping6(DB1), "isolation back after apply");
}

#[test]
fn ipv6_egress_is_masqueraded_and_internal_networks_have_none() {
    let lab = Lab::new("egress6", vec![]);
    let _lan = lab.lan.serve_peer(80);
    // The LAN host has no route to fd00::/16: the answer comes back only through masquerade,
    // and the LAN host sees the node's address.
    assert_eq!(
        lab.web1.peer_seen(LAN6, 80),
        v6(UPLINK6),
        "dual-stack network"
    );
    assert_eq!(
        lab.db1.peer_seen(LAN6, 80),
        v6(UPLINK6),
        "IPv6-only network"
    );

    // Internal: give the LAN host a route back, so that only the firewall can stop the traffic.
    lab.lan
        .sh(&format!("ip -6 route add fd00:77::/64 via {UPLINK6}"));
    assert_eq!(lab.vault1.peer_seen(LAN6, 80), None, "internal egress");
    assert!(!lab.lan.ping6(VAULT1), "ingress to internal");
    // Control: without Pier's tables the same packets flow (routed, not masqueraded).
    lab.reset();
    assert_eq!(lab.vault1.peer_seen_eventually(LAN6, 80), v6(VAULT1));
    // And without masquerade, web1's answer has no way back.
    assert_eq!(lab.web1.peer_seen(LAN6, 80), None);
}

#[test]
fn from_the_lan_only_published_ipv6_ports_reach_containers() {
    let lab = Lab::new("lanp6", vec![web1_on_8000()]);
    // A router or a curious neighbour with a route to the container subnets via the node.
    lab.lan
        .sh(&format!("ip -6 route add fd00::/16 via {UPLINK6}"));
    let _web = lab.web1.serve_peer(80);
    let _other = lab.web1.serve_peer(9000);
    assert_eq!(
        lab.lan.peer_seen(UPLINK6, 8000),
        v6(LAN6),
        "the published port"
    );
    assert_eq!(lab.lan.peer_seen(WEB1, 80), None, "routed to the container");
    assert_eq!(lab.lan.peer_seen(WEB1, 9000), None, "an unpublished port");
    assert_eq!(lab.lan.peer_seen(DB1, 9000), None, "an IPv6-only network");
    assert!(!lab.lan.ping6(WEB1), "ping routed to the container");
    // Answers to what containers start still come back.
    let _lan = lab.lan.serve_peer(80);
    assert_eq!(lab.web2.peer_seen(LAN6, 80), v6(UPLINK6));
    // Control: without the tables the routed packets reach the container.
    lab.reset();
    assert_eq!(lab.lan.peer_seen_eventually(WEB1, 9000), v6(LAN6));
}

#[test]
fn dual_stack_ports_and_ports_on_one_ipv6_address() {
    let lab = Lab::new(
        "dual6",
        vec![
            // No hostIP on a dual-stack endpoint: one entry per family, the same host port.
            port("0.0.0.0", 8000, Protocol::Tcp, "172.18.0.2", 80),
            web1_on_8000(),
            port(&UPLINK6.to_string(), 8002, Protocol::Tcp, "fd00:18::2", 80),
            port("::", 5353, Protocol::Udp, "fd00:19::2", 53),
        ],
    );
    let _web1 = lab.web1.serve_peer(80);
    let _db1 = lab.db1.serve_udp_peer(53);
    assert_eq!(
        lab.lan.peer_seen(UPLINK, 8000),
        Some(IpAddr::V4(LAN)),
        "over IPv4"
    );
    assert_eq!(lab.lan.peer_seen(UPLINK6, 8000), v6(LAN6), "over IPv6");
    assert_eq!(lab.lan.peer_seen(UPLINK6, 8002), v6(LAN6), "[uplink]:8002");
    assert_eq!(
        lab.host.peer_seen(GATEWAY_WEB6, 8002),
        None,
        "[uplink]:8002 must not be reachable on another address"
    );
    assert_eq!(
        lab.lan.udp_peer_seen(UPLINK6, 5353),
        v6(LAN6),
        "UDP over IPv6"
    );
}

#[test]
fn containers_never_reach_the_nodes_ipv6_loopback_services() {
    // A `::1` port published, so table ip6 pier (which hands some `::1` packets to lo) is there.
    let lab = Lab::new(
        "lo6atk",
        vec![port("::1", 8443, Protocol::Tcp, "fd00:18::2", 80)],
    );
    assert!(lab.host.exec("nft list table ip6 pier").status.success());
    // Services of the node bound to ::1 only.
    let received = std::env::temp_dir().join(format!("{}-udp-received", lab.host.name));
    let _ = std::fs::remove_file(&received);
    let _udp = lab.host.spawn(&format!(
        "socat -u UDP6-RECV:5555,bind=[::1] OPEN:{},creat,append",
        received.display()
    ));
    let _tcp = lab.host.serve_peer(5556);
    // What an attacker in a container does: route ::1 to the gateway.
    lab.web1.sh(&format!(
        "ip -6 addr del ::1/128 dev lo && ip -6 route add ::1/128 via {GATEWAY_WEB6} dev eth0"
    ));
    // Proof that the attack reaches the node: a counter on the bridge, before any of its rules.
    let bridge = lab.state.networks[0].bridge_name();
    lab.host.sh(&format!(
        "nft add table netdev probe && \
         nft add chain netdev probe in '{{ type filter hook ingress device \"{bridge}\" priority 0; }}' && \
         nft add rule netdev probe in ip6 daddr ::1 counter"
    ));
    let arrived = || {
        let listing = lab.host.sh("nft list chain netdev probe in");
        listing
            .split("counter packets ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let has_switch = lab.bridge_netfilter6(true);
    for br_netfilter in [true, false] {
        if br_netfilter && !has_switch {
            continue;
        }
        lab.bridge_netfilter6(br_netfilter);
        let before = arrived();
        lab.web1
            .exec("echo secret | busybox timeout 2 socat -u - UDP6-SENDTO:[::1]:5555");
        assert_eq!(
            lab.web1.peer_seen(LOOPBACK6, 5556),
            None,
            "TCP to the node's ::1"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
        let udp = std::fs::read_to_string(&received).unwrap_or_default();
        assert!(
            !udp.contains("secret"),
            "UDP arrived, br_netfilter {br_netfilter}"
        );
        assert!(
            arrived() > before,
            "the attack must reach the node's bridge to prove anything"
        );
    }
    // Control: the node's own UDP service was listening all along.
    lab.host
        .exec("echo from-the-node | busybox timeout 2 socat -u - UDP6-SENDTO:[::1]:5555");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let udp = std::fs::read_to_string(&received).unwrap_or_default();
    assert!(udp.contains("from-the-node"), "{udp:?}");
    let _ = std::fs::remove_file(&received);
}
