//! The overlay tests' part of the fixture: an underlay (a bridge in a namespace of its own) with
//! "hosts" on it, each a [`Lab`] whose host namespace has `uplink0` on the underlay, its own
//! address and a default route there; and the states of an overlay network spread over hosts.

use std::net::Ipv4Addr;

use pier_node::state::{
    Attachment, Driver, EndpointState, NetworkState, NodeState, RemoteEndpoint,
};

use super::{Lab, Ns, bridge_network, veth};

/// The underlay's MTU (the hosts' `uplink0` and the underlay bridge's ports).
pub const UNDERLAY_MTU: u32 = 1500;

/// The underlay: bridge `ul0` in a namespace of its own.
#[derive(Debug)]
pub struct Underlay {
    pub ns: Ns,
}

impl Underlay {
    pub fn new(tag: &str) -> Underlay {
        super::require_root_with(&["bridge", "nft"]);
        let ns = Ns::new(&format!("{tag}-ul"));
        ns.sh("ip link add ul0 type bridge && ip link set ul0 up");
        Underlay { ns }
    }

    /// Host `n` on the underlay: `uplink0` at [`tunnel_of`]`(n)`/24, default route via .254.
    pub fn host(&self, tag: &str, n: u8) -> Lab {
        let lab = Lab::new(&format!("{tag}{n}"));
        self.attach(&lab.host, n);
        lab
    }

    /// Puts `ns` on the underlay as [`tunnel_of`]`(n)`: `uplink0`, default route via .254.
    pub fn attach(&self, ns: &Ns, n: u8) {
        let port = format!("ul{n}");
        veth(ns, "uplink0", &self.ns, &port);
        self.ns.sh(&format!("ip link set {port} master ul0"));
        ns.sh(&format!(
            "ip link set uplink0 mtu {UNDERLAY_MTU} && ip addr add {}/24 dev uplink0 && \
             ip route add default via 10.99.0.254",
            tunnel_of(n)
        ));
    }
}

/// Host `n`'s underlay (tunnel) address: 10.99.0.`n`.
pub fn tunnel_of(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 99, 0, n)
}

/// An overlay network, the same on every host (name, uid, subnet, gateway, VNI), MTU 1450.
pub fn overlay_network(name: &str, subnet: &str, gateway: &str, vxlan_id: u32) -> NetworkState {
    NetworkState {
        driver: Driver::Overlay,
        mtu: UNDERLAY_MTU - 50,
        vxlan_id: Some(vxlan_id),
        ..bridge_network(name, subnet, gateway)
    }
}

/// Where each endpoint lives: (host number, endpoint).
pub type Placement = Vec<(u8, EndpointState)>;

/// Host `n`'s state as the node agent builds it: those of `networks` with an endpoint on the
/// host, its own endpoints, its tunnel address, and the other hosts' endpoints of those
/// networks as remote endpoints.
pub fn host_state(n: u8, networks: &[NetworkState], placement: &Placement) -> NodeState {
    let endpoints: Vec<EndpointState> = placement
        .iter()
        .filter(|(host, _)| *host == n)
        .map(|(_, endpoint)| endpoint.clone())
        .collect();
    let here: Vec<NetworkState> = networks
        .iter()
        .filter(|net| {
            endpoints
                .iter()
                .any(|e| matches!(&e.attachment, Attachment::Bridge(b) if b.network == net.name))
        })
        .cloned()
        .collect();
    let remote_endpoints = placement
        .iter()
        .filter(|(host, _)| *host != n)
        .filter_map(|(host, endpoint)| remote(*host, endpoint))
        .filter(|r| here.iter().any(|net| net.name == r.network))
        .collect();
    NodeState {
        networks: here,
        endpoints,
        tunnel: Some(tunnel_of(n)),
        remote_endpoints,
        ..NodeState::default()
    }
}

/// `endpoint`, living on host `host`, as other hosts see it.
pub fn remote(host: u8, endpoint: &EndpointState) -> Option<RemoteEndpoint> {
    let Attachment::Bridge(bridge) = &endpoint.attachment else {
        return None;
    };
    Some(RemoteEndpoint {
        id: endpoint.id.clone(),
        name: endpoint.name.clone(),
        aliases: endpoint.aliases.clone(),
        network: bridge.network.clone(),
        address: bridge.address,
        address6: bridge.address6,
        mac: bridge.mac.clone(),
        node: format!("host{host}"),
        tunnel: tunnel_of(host),
    })
}

impl Ns {
    /// `bridge fdb show dev DEVICE`: the device's own FDB entries (`self`, not its bridge's
    /// entries for it) as `MAC dst ADDRESS` (with `permanent` when it is), sorted.
    pub fn fdb(&self, device: &str) -> Vec<String> {
        let shown = self.sh(&format!("bridge fdb show dev {device}"));
        let mut entries: Vec<String> = shown
            .lines()
            .filter(|line| line.split_whitespace().any(|w| w == "self"))
            .map(|line| {
                let words: Vec<&str> = line.split_whitespace().collect();
                let dst = words
                    .iter()
                    .position(|w| *w == "dst")
                    .and_then(|i| words.get(i + 1))
                    .unwrap_or(&"-");
                let permanent = if words.contains(&"permanent") {
                    " permanent"
                } else {
                    ""
                };
                format!("{} dst {dst}{permanent}", words.first().unwrap_or(&""))
            })
            .collect();
        entries.sort();
        entries
    }

    /// `ip neigh show dev DEVICE`: the device's IPv4 neighbours as `ADDRESS MAC STATE`, sorted.
    pub fn neighbours(&self, device: &str) -> Vec<String> {
        let shown = self.sh(&format!("ip -4 neigh show dev {device}"));
        let mut entries: Vec<String> = shown
            .lines()
            .map(|line| {
                let words: Vec<&str> = line.split_whitespace().collect();
                let mac = words
                    .iter()
                    .position(|w| *w == "lladdr")
                    .and_then(|i| words.get(i + 1))
                    .unwrap_or(&"-");
                let state = words.last().unwrap_or(&"");
                format!("{} {mac} {state}", words.first().unwrap_or(&""))
            })
            .collect();
        entries.sort();
        entries
    }

    /// The MAC this namespace has for `address` after reaching it (`ip neigh`), if any.
    pub fn mac_of(&self, address: Ipv4Addr) -> Option<String> {
        let shown = self.sh(&format!("ip -4 neigh show {address}"));
        let words: Vec<&str> = shown.split_whitespace().collect();
        let at = words.iter().position(|w| *w == "lladdr")?;
        words.get(at + 1).map(|mac| (*mac).to_owned())
    }
}
