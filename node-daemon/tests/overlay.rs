//! Kernel tests of overlay networks: three "hosts" (namespaces with a dataplane each) on an
//! underlay (a bridge in a namespace of its own), hand-built NodeStates, and real packets
//! between containers on different hosts.

mod common;

use std::net::Ipv4Addr;

use common::dual_stack::{ip6, with_address6};
use common::overlay::{Placement, Underlay, host_state, overlay_network, remote, tunnel_of};
use common::{Lab, Ns, bridge_endpoint};
use pier_node::dataplane::Scope;
use pier_node::state::{NetworkState, NodeState};

fn ip(text: &str) -> Ipv4Addr {
    text.parse().expect("test address")
}

/// The MAC `bridge_endpoint` gives the endpoint at `address`.
fn mac_of_endpoint(address: &str) -> String {
    let o = ip(address).octets();
    format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

/// Three hosts with one container each on overlay `ov` (10.20.0.0/24, VNI 4096): con1 .2 on
/// host 1, con2 .3 on host 2, con3 .4 on host 3.
struct World {
    underlay: Underlay,
    hosts: Vec<Lab>,
    containers: Vec<Ns>,
    networks: Vec<NetworkState>,
    placement: Placement,
}

impl World {
    fn new(tag: &str) -> World {
        let underlay = Underlay::new(tag);
        let hosts: Vec<Lab> = (1..=3).map(|n| underlay.host(tag, n)).collect();
        let containers: Vec<Ns> = hosts
            .iter()
            .enumerate()
            .map(|(i, lab)| lab.container(&format!("con{}", i + 1)))
            .collect();
        let placement = (1..=3u8)
            .map(|n| {
                let address = format!("10.20.0.{}", n + 1);
                let container = &containers[usize::from(n - 1)];
                let id = format!("default/con{n}");
                (
                    n,
                    bridge_endpoint(&id, container, "ov", "eth0", &address, true),
                )
            })
            .collect();
        World {
            underlay,
            hosts,
            containers,
            networks: vec![overlay_network("ov", "10.20.0.0/24", "10.20.0.1", 4096)],
            placement,
        }
    }

    fn state(&self, n: u8) -> NodeState {
        host_state(n, &self.networks, &self.placement)
    }

    fn host(&self, n: u8) -> &Lab {
        &self.hosts[usize::from(n - 1)]
    }

    /// Applies every host's state in full and requires it converged.
    fn apply_all(&self) {
        for n in 1..=3 {
            let state = self.state(n);
            self.host(n).apply_ok(&state);
            self.host(n).assert_converged(&state);
        }
    }

    /// Applies host `n`'s state within `scope`, requiring success.
    fn apply(&self, n: u8, scope: &Scope) {
        let report = self
            .host(n)
            .dataplane
            .apply(&self.state(n), scope)
            .expect("apply runs");
        assert!(report.is_success(), "host {n}, {scope:?}:\n{report}");
    }

    fn vxlan(&self) -> String {
        self.networks[0].vxlan_name()
    }

    /// Host `n`'s FDB and neighbour entries on the overlay's VXLAN device.
    fn entries(&self, n: u8) -> (Vec<String>, Vec<String>) {
        let host = &self.host(n).host;
        (host.fdb(&self.vxlan()), host.neighbours(&self.vxlan()))
    }

    /// What host `n`'s entries must be: one pair per endpoint of `ov` on another host.
    fn expected_entries(&self, n: u8) -> (Vec<String>, Vec<String>) {
        let remotes: Vec<_> = self
            .placement
            .iter()
            .filter(|(host, _)| *host != n)
            .filter_map(|(host, endpoint)| remote(*host, endpoint))
            .filter(|r| r.network == "ov")
            .collect();
        let mut fdb: Vec<String> = remotes
            .iter()
            .map(|r| format!("{} dst {} permanent", r.mac, r.tunnel))
            .collect();
        let mut neighbours: Vec<String> = remotes
            .iter()
            .filter_map(|r| Some(format!("{} {} PERMANENT", r.address?, r.mac)))
            .collect();
        fdb.sort();
        neighbours.sort();
        (fdb, neighbours)
    }

    /// Every host with an endpoint of `ov` has exactly its remote endpoints' entries.
    fn assert_entries_exact(&self) {
        for n in 1..=3 {
            if self.state(n).networks.iter().any(|net| net.name == "ov") {
                assert_eq!(self.entries(n), self.expected_entries(n), "host {n}");
            }
        }
    }
}

#[test]
fn containers_on_different_hosts_reach_each_other_through_static_entries_only() {
    let world = World::new("ovp");
    world.apply_all();
    let [con1, con2, con3] = world.containers.as_slice() else {
        panic!("three containers");
    };
    assert!(con1.ping_eventually(ip("10.20.0.3")), "con1 -> con2");
    assert!(con1.ping_eventually(ip("10.20.0.4")), "con1 -> con3");
    assert!(con2.ping_eventually(ip("10.20.0.4")), "con2 -> con3");
    assert!(con3.ping_eventually(ip("10.20.0.2")), "con3 -> con1");
    world.assert_entries_exact();

    // The VXLAN device as made: its settings, on the bridge, up.
    let vxlan = world.vxlan();
    let shown = world.host(1).host.sh(&format!("ip -d link show {vxlan}"));
    for expected in [
        // iproute2 prints `remote` or `group` between these when the device has one.
        "vxlan id 4096 local 10.99.0.1 ",
        "dstport 4789",
        "nolearning",
        "proxy",
        "mtu 1450",
        &format!("master {}", world.networks[0].bridge_name()),
    ] {
        assert!(shown.contains(expected), "{expected:?} in:\n{shown}");
    }

    // One gateway, one MAC, on every host.
    let gateway = ip("10.20.0.1");
    let macs: Vec<Option<String>> = world
        .containers
        .iter()
        .map(|c| {
            assert!(c.ping_eventually(gateway), "{} -> gateway", c.name);
            c.mac_of(gateway)
        })
        .collect();
    assert!(macs[0].is_some(), "{macs:?}");
    assert!(macs.iter().all(|m| *m == macs[0]), "{macs:?}");
}

#[test]
fn the_mtu_leaves_room_for_the_vxlan_headers() {
    let world = World::new("ovm");
    world.apply_all();
    let con1 = &world.containers[0];
    assert!(con1.ping_eventually(ip("10.20.0.3")));
    // 1422 bytes of ICMP payload + 8 ICMP + 20 IP = 1450, the overlay's MTU; the VXLAN packet
    // on the underlay is then exactly 1500.
    let fits = con1.exec("ping -c1 -W2 -M do -s 1422 10.20.0.3");
    assert!(
        fits.status.success(),
        "{}",
        String::from_utf8_lossy(&fits.stdout)
    );
    let too_big = con1.exec("ping -c1 -W2 -M do -s 1423 10.20.0.3");
    assert!(!too_big.status.success(), "one byte more must not pass");
}

#[test]
fn moved_and_removed_endpoints_leave_exactly_the_live_entries() {
    let mut world = World::new("ovc");
    world.apply_all();
    // con2 moves from host 2 to host 3 (same address and MAC, a new namespace there).
    let moved = world.host(3).container("con2b");
    world.placement[1] = (
        3,
        bridge_endpoint("default/con2", &moved, "ov", "eth0", "10.20.0.3", true),
    );
    // con3 goes away.
    world.placement.remove(2);
    // Host 2 detaches con2 as the node agent does: its veth and its network's bridge, which
    // takes the network's VXLAN device with it (host 2 has no endpoint of ov left).
    let veth = bridge_endpoint(
        "default/con2",
        &world.containers[1],
        "ov",
        "eth0",
        "10.20.0.3",
        true,
    )
    .host_veth_name();
    let bridge = world.networks[0].bridge_name();
    world.apply(2, &Scope::removal([veth.clone(), bridge.clone()]));
    let left = world.host(2).host.links();
    for gone in [&veth, &bridge, &world.vxlan()] {
        assert!(!left.contains(gone), "{gone} left on host 2: {left:?}");
    }
    world.apply(3, &Scope::Full);
    world.apply(1, &Scope::Overlay);
    world.assert_entries_exact();
    let (fdb, _) = world.entries(1);
    assert_eq!(
        fdb,
        [format!(
            "{} dst {} permanent",
            mac_of_endpoint("10.20.0.3"),
            tunnel_of(3)
        )],
        "one entry for the moved MAC, pointing at its new host"
    );
    let con1 = &world.containers[0];
    assert!(
        con1.ping_eventually(ip("10.20.0.3")),
        "con1 -> con2 on host 3"
    );
    assert!(!con1.ping(ip("10.20.0.4")), "con3 is gone");
    for n in 1..=3 {
        world.host(n).assert_converged(&world.state(n));
    }
}

#[test]
fn a_deleted_entry_or_vxlan_device_is_repaired_by_the_next_full_apply() {
    let world = World::new("ovr");
    world.apply_all();
    let vxlan = world.vxlan();
    let con2_mac = mac_of_endpoint("10.20.0.3");
    world.host(1).host.sh(&format!(
        "bridge fdb del {con2_mac} dev {vxlan} self && ip neigh del 10.20.0.4 dev {vxlan}"
    ));
    world.host(2).host.sh(&format!("ip link del {vxlan}"));
    // Someone adds a flooding default entry: it goes too.
    world.host(3).host.sh(&format!(
        "bridge fdb append 00:00:00:00:00:00 dev {vxlan} dst 10.99.0.1 self permanent"
    ));
    let plan = world
        .host(1)
        .dataplane
        .plan(&world.state(1), &Scope::Full)
        .expect("plan runs");
    let text = plan.to_string();
    assert!(
        text.contains(&format!("+ fdb {con2_mac} dst 10.99.0.2 on {vxlan}")),
        "{text}"
    );
    assert!(text.contains("+ neigh 10.20.0.4 lladdr"), "{text}");
    world.apply_all();
    world.assert_entries_exact();
    assert!(world.containers[0].ping_eventually(ip("10.20.0.3")));
    assert!(world.containers[1].ping_eventually(ip("10.20.0.4")));
}

#[test]
fn a_second_overlay_network_is_isolated_from_the_first() {
    let mut world = World::new("ovi");
    world.apply_all();
    world
        .networks
        .push(overlay_network("ov2", "10.30.0.0/24", "10.30.0.1", 4097));
    let con4 = world.host(1).container("con4");
    let con5 = world.host(2).container("con5");
    world.placement.extend([
        (
            1,
            bridge_endpoint("default/con4", &con4, "ov2", "eth0", "10.30.0.2", true),
        ),
        (
            2,
            bridge_endpoint("default/con5", &con5, "ov2", "eth0", "10.30.0.3", true),
        ),
    ]);
    // The attach path: the first endpoint of ov2 on a host brings its bridge, VXLAN device and
    // entries.
    world.apply(1, &Scope::endpoints(["default/con4"]));
    world.apply(2, &Scope::endpoints(["default/con5"]));
    for n in 1..=3 {
        world.host(n).assert_converged(&world.state(n));
    }
    assert!(con4.ping_eventually(ip("10.30.0.3")), "con4 -> con5 on ov2");
    assert!(
        world.containers[0].ping_eventually(ip("10.20.0.3")),
        "ov still works"
    );
    for target in ["10.20.0.2", "10.20.0.3", "10.20.0.4"] {
        assert!(
            !con4.ping(ip(target)),
            "con4 (ov2) must not reach {target} (ov)"
        );
    }
    assert!(
        !world.containers[1].ping(ip("10.30.0.2")),
        "con2 (ov) -> con4 (ov2)"
    );
    // Each device has its own network's entries only; host 3 has no endpoint of ov2 and so
    // no device for it.
    let ov2_vxlan = world.networks[1].vxlan_name();
    let con5_mac = mac_of_endpoint("10.30.0.3");
    assert_eq!(
        world.host(1).host.fdb(&ov2_vxlan),
        [format!("{con5_mac} dst {} permanent", tunnel_of(2))]
    );
    world.assert_entries_exact();
    assert!(!world.host(3).host.links().contains(&ov2_vxlan));
}

#[test]
fn reset_removes_the_vxlan_devices_and_leaves_foreign_ones() {
    let world = World::new("ovx");
    world.apply_all();
    let host = &world.host(1).host;
    host.sh("ip link add vxlan9 type vxlan id 9 dstport 4789 local 10.99.0.1 nolearning");
    let report = world.host(1).dataplane.reset().expect("reset runs");
    assert!(report.is_success(), "{report}");
    let links = host.links();
    assert!(!links.contains(&world.vxlan()), "{links:?}");
    assert!(
        !links.contains(&world.networks[0].bridge_name()),
        "{links:?}"
    );
    assert!(
        links.iter().any(|l| l == "vxlan9"),
        "foreign device kept: {links:?}"
    );
}

/// A LAN computer on the underlay that speaks VXLAN (id 4096, con2's MAC, to host 2) does not
/// get a frame into the overlay: only the nodes with an endpoint of the network may send into
/// it. Once host 2's state names it as such a node, the same frames pass (so it is that rule
/// that stopped them, kept up to date by `Scope::Overlay`).
#[test]
fn only_the_overlays_nodes_may_send_into_it() {
    let world = World::new("ovg");
    world.apply_all();
    let [con1, con2, _] = world.containers.as_slice() else {
        panic!("three containers");
    };
    let received = tempfile::NamedTempFile::new().expect("a file for what con2 receives");
    let path = received.path().display().to_string();
    let _listener = con2.spawn(&format!("socat -u UDP4-RECV:9999 OPEN:{path},append"));
    let read = || std::fs::read_to_string(&path).unwrap_or_default();
    let until = |what: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if read().contains(what) {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        false
    };
    let send = |from: &Ns, text: &str| {
        from.sh(&format!(
            "for i in 1 2 3; do echo {text} | socat -u - UDP4-SENDTO:10.20.0.3:9999; done"
        ));
    };
    send(con1, "from-con1");
    assert!(
        until("from-con1"),
        "con2 hears con1 across the overlay: {:?}",
        read()
    );

    let lan = Ns::new("ovg-lan");
    world.underlay.attach(&lan, 50);
    lan.sh(&format!(
        "ip link add inj type vxlan id 4096 local {} remote {} dstport 4789 nolearning && \
         ip link set inj address 02:42:0a:14:00:32 mtu 1450 up && \
         ip addr add 10.20.0.50/24 dev inj && \
         ip neigh add 10.20.0.3 lladdr {} dev inj nud permanent",
        tunnel_of(50),
        tunnel_of(2),
        mac_of_endpoint("10.20.0.3")
    ));
    send(&lan, "from-lan");
    assert!(
        !until("from-lan"),
        "a LAN computer put a frame into the overlay: {:?}",
        read()
    );

    let mut state = world.state(2);
    state
        .remote_endpoints
        .push(pier_node::state::RemoteEndpoint {
            id: "default/lan".into(),
            name: "lan".into(),
            aliases: vec![],
            network: "ov".into(),
            address: Some(ip("10.20.0.50")),
            address6: None,
            mac: "02:42:0a:14:00:32".into(),
            node: "lan".into(),
            tunnel: tunnel_of(50),
        });
    let report = world
        .host(2)
        .dataplane
        .apply(&state, &Scope::Overlay)
        .expect("apply runs");
    assert!(report.is_success(), "{report}");
    send(&lan, "from-peer");
    assert!(
        until("from-peer"),
        "a declared node's frames pass: {:?}",
        read()
    );
}

/// Another program's VXLAN device holding the overlay's id on the same port (Calico's and Docker
/// Swarm's overlays use 4096 on UDP 4789 too): Pier's device cannot be made, which is a problem of
/// the network, and table `inet pier` leaves that id alone, so the other program's packets still
/// arrive.
#[test]
fn another_programs_vxlan_device_with_the_same_id_keeps_its_traffic() {
    let world = World::new("ovf");
    let host = world.host(1);
    host.host.sh(&format!(
        "ip link add calico0 type vxlan id 4096 local {} dstport 4789 nolearning && \
         ip addr add 10.66.0.1/24 dev calico0 && ip link set calico0 up",
        tunnel_of(1)
    ));
    let report = host
        .dataplane
        .apply(&world.state(1), &Scope::Full)
        .expect("apply runs");
    let network = pier_node::dataplane::ObjectKey::network("ov");
    assert!(
        matches!(
            report.outcome(&network),
            Some(pier_node::dataplane::Outcome::Failed(_))
        ),
        "{report}"
    );
    let ids = host.host.sh("nft list set inet pier overlay_ids");
    assert!(!ids.contains("4096"), "{ids}");

    let lan = Ns::new("ovf-lan");
    world.underlay.attach(&lan, 50);
    lan.sh(&format!(
        "ip link add s0 type vxlan id 4096 local {} remote {} dstport 4789 && \
         ip addr add 10.66.0.2/24 dev s0 && ip link set s0 up",
        tunnel_of(50),
        tunnel_of(1)
    ));
    let received = || {
        host.host
            .sh("cat /sys/class/net/calico0/statistics/rx_packets")
            .trim()
            .parse::<u64>()
            .expect("a packet count")
    };
    let before = received();
    lan.exec("ping -c3 -i0.2 -W1 10.66.0.1");
    assert!(
        received() > before,
        "the other program's VXLAN packets arrive"
    );
}

/// Two hosts with one container each on an overlay network with IPv6.
struct World6 {
    _underlay: Underlay,
    hosts: [Lab; 2],
    containers: [Ns; 2],
    networks: Vec<NetworkState>,
    placement: Placement,
}

impl World6 {
    /// Overlay `ov` (VNI 4096) with fd00:20::/64 (gateway ::1), and 10.20.0.0/24 when `dual`:
    /// con1 at ::2 (.2) on host 1, con2 at ::3 (.3) on host 2.
    fn new(tag: &str, dual: bool) -> World6 {
        let underlay = Underlay::new(tag);
        let hosts = [underlay.host(tag, 1), underlay.host(tag, 2)];
        let containers = [hosts[0].container("con1"), hosts[1].container("con2")];
        let mut network = overlay_network("ov", "10.20.0.0/24", "10.20.0.1", 4096);
        network.subnet6 = Some("fd00:20::/64".parse().expect("subnet6"));
        network.gateway6 = Some(ip6("fd00:20::1"));
        if !dual {
            network.subnet = None;
            network.gateway = None;
        }
        let placement = (1..=2u8)
            .zip(&containers)
            .map(|(n, container)| {
                let id = format!("default/con{n}");
                let address6 = format!("fd00:20::{}", n + 1);
                let endpoint = if dual {
                    let address = format!("10.20.0.{}", n + 1);
                    let endpoint = bridge_endpoint(&id, container, "ov", "eth0", &address, true);
                    with_address6(endpoint, &address6)
                } else {
                    bridge_endpoint(&id, container, "ov", "eth0", &address6, true)
                };
                (n, endpoint)
            })
            .collect();
        World6 {
            _underlay: underlay,
            hosts,
            containers,
            networks: vec![network],
            placement,
        }
    }

    fn state(&self, n: u8) -> NodeState {
        host_state(n, &self.networks, &self.placement)
    }

    fn host(&self, n: u8) -> &Lab {
        &self.hosts[usize::from(n - 1)]
    }

    fn apply(&self, n: u8, scope: &Scope) {
        let report = self
            .host(n)
            .dataplane
            .apply(&self.state(n), scope)
            .expect("apply runs");
        assert!(report.is_success(), "host {n}, {scope:?}:\n{report}");
        self.host(n).assert_converged(&self.state(n));
    }

    /// Host `n`'s entries on the VXLAN device: FDB, IPv4 and IPv6 neighbours.
    fn entries(&self, n: u8) -> (Vec<String>, Vec<String>, Vec<String>) {
        let host = &self.host(n).host;
        let vxlan = self.networks[0].vxlan_name();
        (
            host.fdb(&vxlan),
            host.neighbours(&vxlan),
            host.neighbours6(&vxlan),
        )
    }
}

#[test]
fn a_dual_stack_overlay_carries_ipv6_across_hosts() {
    let mut world = World6::new("ov6", true);
    world.apply(1, &Scope::Full);
    world.apply(2, &Scope::Full);
    let [con1, con2] = &world.containers;
    assert!(
        con1.ping6_eventually(ip6("fd00:20::3")),
        "con1 -> con2 over IPv6"
    );
    assert!(
        con2.ping6_eventually(ip6("fd00:20::2")),
        "con2 -> con1 over IPv6"
    );
    assert!(
        con1.ping_eventually(ip("10.20.0.3")),
        "con1 -> con2 over IPv4"
    );
    assert!(
        con2.ping6_eventually(ip6("fd00:20::1")),
        "con2 -> its gateway6"
    );
    let con2_mac = mac_of_endpoint("10.20.0.3");
    assert_eq!(
        world.entries(1),
        (
            vec![format!("{con2_mac} dst {} permanent", tunnel_of(2))],
            vec![format!("10.20.0.3 {con2_mac} PERMANENT")],
            vec![format!("fd00:20::3 {con2_mac} PERMANENT")],
        )
    );

    // con2 goes: host 2 detaches it (its veth and its network's bridge, the VXLAN device with
    // it), host 1 follows in the overlay scope and drops every entry of it.
    let (_, gone) = world.placement.pop().expect("con2");
    let bridge = world.networks[0].bridge_name();
    world.apply(2, &Scope::removal([gone.host_veth_name(), bridge]));
    world.apply(1, &Scope::Overlay);
    assert_eq!(world.entries(1), (vec![], vec![], vec![]));
    assert!(!con1.ping6(ip6("fd00:20::3")), "con2 is gone");
    assert!(con1.ping6_eventually(ip6("fd00:20::1")));
}

#[test]
fn an_ipv6_only_overlay_carries_ipv6_across_hosts() {
    let world = World6::new("ov6o", false);
    world.apply(1, &Scope::Full);
    world.apply(2, &Scope::Full);
    let [con1, con2] = &world.containers;
    assert!(con1.sh("ip -4 addr show dev eth0").trim().is_empty());
    assert!(con1.ping6_eventually(ip6("fd00:20::3")), "con1 -> con2");
    assert!(con2.ping6_eventually(ip6("fd00:20::2")), "con2 -> con1");
    let (fdb, neighbours, neighbours6) = world.entries(2);
    let con1_mac = "02:42:00:00:00:02";
    assert_eq!(fdb, [format!("{con1_mac} dst {} permanent", tunnel_of(1))]);
    assert!(neighbours.is_empty(), "{neighbours:?}");
    assert_eq!(neighbours6, [format!("fd00:20::2 {con1_mac} PERMANENT")]);
}
