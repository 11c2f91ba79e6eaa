//! Real traffic through table `inet pier`, on a topology the fixture builds by hand:
//!
//! ```text
//!  remote (198.51.100.2) ──up0── host (198.51.100.1) ── bridge "web" 172.18.0.0/24 ── web1 .2, web2 .3
//!                                                   ├── bridge "db"  172.19.0.0/24 ── db1 .2
//!                                                   └── bridge "vault" (internal) 10.77.0.0/24 ── vault1 .2
//! ```
//!
//! The remote machine has no route to the container subnets, so a reply reaches it only through
//! the host's NAT. Every test has its own namespaces and runs in parallel with the others.

mod common;

use std::net::Ipv4Addr;

use common::firewall::{bridge, container, network, port, require_root, state};
use common::{Ns, veth};
use pier_node::firewall;
use pier_node::state::{NetworkState, NodeState, Protocol};

const HOST_UPLINK: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const REMOTE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const GATEWAY_WEB: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 1);
const WEB1: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 2);
const DB1: Ipv4Addr = Ipv4Addr::new(172, 19, 0, 2);
const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;

struct Lab {
    // Containers first: they are dropped before the host their veths hang off.
    web1: Ns,
    web2: Ns,
    db1: Ns,
    vault1: Ns,
    remote: Ns,
    host: Ns,
    state: NodeState,
}

impl Lab {
    fn new(tag: &str, ports: Vec<pier_node::state::PublishedPort>) -> Lab {
        require_root();
        let host = Ns::new(&format!("{tag}-host"));
        let remote = Ns::new(&format!("{tag}-remote"));
        veth(&host, "up0", &remote, "eth0");
        host.sh(&format!("ip addr add {HOST_UPLINK}/24 dev up0"));
        remote.sh(&format!("ip addr add {REMOTE}/24 dev eth0"));
        let networks: Vec<NetworkState> = vec![
            network("web", "172.18.0.0/24", false),
            network("db", "172.19.0.0/24", false),
            network("vault", "10.77.0.0/24", true),
        ];
        for n in &networks {
            bridge(&host, n);
        }
        let web1 = container(&host, &networks[0], "172.18.0.2", &format!("{tag}-web1"));
        let web2 = container(&host, &networks[0], "172.18.0.3", &format!("{tag}-web2"));
        let db1 = container(&host, &networks[1], "172.19.0.2", &format!("{tag}-db1"));
        let vault1 = container(&host, &networks[2], "10.77.0.2", &format!("{tag}-vault1"));
        let lab = Lab {
            web1,
            web2,
            db1,
            vault1,
            remote,
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
}

#[test]
fn published_port_reaches_the_endpoint_from_a_remote_host_the_node_and_localhost() {
    let lab = Lab::new(
        "pub",
        vec![port("0.0.0.0", 8000, Protocol::Tcp, "172.18.0.2", 80)],
    );
    let _web1 = lab.web1.serve_http(80, "hello from web1");

    // From another machine (prerouting).
    assert_eq!(
        lab.remote.http_get(HOST_UPLINK, 8000).as_deref(),
        Some("hello from web1"),
        "remote -> host:8000"
    );
    // From the node itself (output hook), to its own address, the gateway and 127.0.0.1.
    for addr in [HOST_UPLINK, GATEWAY_WEB, LOCALHOST] {
        assert_eq!(
            lab.host.http_get(addr, 8000).as_deref(),
            Some("hello from web1"),
            "node -> {addr}:8000"
        );
    }
    // A port nobody published stays closed.
    assert_eq!(lab.remote.http_get(HOST_UPLINK, 8001), None);
    // 0.0.0.0 means this node's addresses only (`fib daddr type local`): an endpoint talking to
    // port 8000 of another machine reaches that machine, not web1.
    let _remote = lab.remote.serve_http(8000, "the remote's own 8000");
    assert_eq!(
        lab.web2.http_get(REMOTE, 8000).as_deref(),
        Some("the remote's own 8000")
    );
    // Without Pier's table there is no DNAT at all: the rules are what publishes.
    lab.reset();
    assert_eq!(lab.remote.http_get(HOST_UPLINK, 8000), None);
    assert_eq!(lab.host.http_get(LOCALHOST, 8000), None);
}

#[test]
fn hairpin_from_an_endpoint_on_the_same_bridge() {
    let lab = Lab::new(
        "hair",
        vec![port("0.0.0.0", 8000, Protocol::Tcp, "172.18.0.2", 80)],
    );
    let _web1 = lab.web1.serve_http(80, "hello from web1");
    for addr in [HOST_UPLINK, GATEWAY_WEB] {
        assert_eq!(
            lab.web2.http_get(addr, 8000).as_deref(),
            Some("hello from web1"),
            "web2 -> {addr}:8000 (hairpin)"
        );
    }
    // Even the endpoint itself reaches its own published port (needs hairpin mode on its bridge
    // port when br_netfilter is active; the fixture sets it, as the links side must).
    assert_eq!(
        lab.web1.http_get(GATEWAY_WEB, 8000).as_deref(),
        Some("hello from web1"),
        "web1 -> its own published port"
    );
}

#[test]
fn host_ip_binds_one_address_and_udp_is_published_too() {
    let lab = Lab::new(
        "hostip",
        vec![
            port("127.0.0.1", 8001, Protocol::Tcp, "172.18.0.2", 80),
            port(
                &HOST_UPLINK.to_string(),
                8002,
                Protocol::Tcp,
                "172.18.0.2",
                80,
            ),
            port("0.0.0.0", 5353, Protocol::Udp, "172.19.0.2", 53),
        ],
    );
    let _web1 = lab.web1.serve_http(80, "web1");
    let _db1 = lab.db1.serve_udp(53, "udp-from-db1");

    assert_eq!(lab.host.http_get(LOCALHOST, 8001).as_deref(), Some("web1"));
    assert_eq!(
        lab.remote.http_get(HOST_UPLINK, 8001),
        None,
        "127.0.0.1:8001 must not be reachable on the uplink address"
    );
    assert_eq!(
        lab.remote.http_get(HOST_UPLINK, 8002).as_deref(),
        Some("web1")
    );
    assert_eq!(
        lab.host.http_get(GATEWAY_WEB, 8002),
        None,
        "198.51.100.1:8002 must not be reachable on another address"
    );
    assert_eq!(
        lab.remote.udp_request(HOST_UPLINK, 5353).as_deref(),
        Some("udp-from-db1")
    );
    assert_eq!(
        lab.host.udp_request(LOCALHOST, 5353).as_deref(),
        Some("udp-from-db1")
    );
}

#[test]
fn egress_is_masqueraded_and_internal_networks_have_none() {
    let lab = Lab::new("egress", vec![]);
    let _remote = lab.remote.serve_http(80, "hello from remote");
    // The remote has no route to 172.18.0.0/24: the answer comes back only through masquerade.
    assert_eq!(
        lab.web1.http_get(REMOTE, 80).as_deref(),
        Some("hello from remote")
    );
    let seen = lab
        .remote
        .sh("cat /proc/net/nf_conntrack 2>/dev/null || true");
    assert!(!seen.contains("src=172.18.0.2"), "{seen}");

    // Internal: give the remote a route back, so that only the firewall can stop the traffic.
    lab.remote
        .sh(&format!("ip route add 10.77.0.0/24 via {HOST_UPLINK}"));
    assert_eq!(lab.vault1.http_get(REMOTE, 80), None, "internal egress");
    assert!(
        !lab.remote.ping(Ipv4Addr::new(10, 77, 0, 2)),
        "ingress to internal"
    );
    // Control: without Pier's table the same packets flow (routed, not masqueraded).
    lab.reset();
    assert_eq!(
        lab.vault1.http_get(REMOTE, 80).as_deref(),
        Some("hello from remote")
    );
    // And without masquerade, web1's reply has no way back.
    assert_eq!(lab.web1.http_get(REMOTE, 80), None);
}

#[test]
fn networks_are_isolated_from_each_other() {
    let lab = Lab::new("iso", vec![]);
    assert!(lab.web1.ping(WEB1), "self");
    assert!(
        lab.web1.ping(Ipv4Addr::new(172, 18, 0, 3)),
        "same network, bridged"
    );
    assert!(!lab.web1.ping(DB1), "web -> db must be dropped");
    assert!(!lab.db1.ping(WEB1), "db -> web must be dropped");
    assert!(!lab.vault1.ping(WEB1), "internal -> web must be dropped");
    // Control: without Pier's table the host routes between the bridges.
    lab.reset();
    assert!(lab.web1.ping(DB1), "without the table web -> db is routed");
    lab.apply();
    assert!(!lab.web1.ping(DB1), "isolation back after apply");
}
