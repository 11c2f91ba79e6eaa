//! The firewall tests' part of the fixture: they build the links by hand with `ip` (so the
//! firewall is tested without the links code) and inspect table `inet pier` with the `nft` CLI.
//! Call [`require_root`] first: it asks for nftables too.

use pier_node::state::{NetworkState, NodeState, Protocol, PublishedPort};

use super::{Ns, bridge_network, published, unique, veth};

/// Fails loudly when a firewall test cannot run: root and the fixture's tools, and `nft`.
pub fn require_root() {
    super::require_root_with(&["nft"]);
}

impl Ns {
    /// `nft -j list table inet pier` in this namespace, parsed.
    pub fn pier_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.sh("nft -j list table inet pier")).expect("nft prints JSON")
    }

    /// Whether table `inet pier` exists here.
    pub fn has_pier_table(&self) -> bool {
        self.exec("nft list table inet pier").status.success()
    }
}

/// A bridge network as Pier's NodeState has it, its gateway the subnet's first address.
pub fn network(name: &str, subnet: &str, internal: bool) -> NetworkState {
    let subnet: ipnet::Ipv4Net = subnet.parse().expect("test subnet");
    let gateway = subnet
        .hosts()
        .next()
        .expect("subnet has a first host address");
    NetworkState {
        uid: format!("uid-{name}-{}", std::process::id()),
        internal,
        ..bridge_network(name, &subnet.to_string(), &gateway.to_string())
    }
}

/// One published port of endpoint `default/web`.
pub fn port(
    host_ip: &str,
    host_port: u16,
    protocol: Protocol,
    endpoint_address: &str,
    container_port: u16,
) -> PublishedPort {
    PublishedPort {
        host_ip: host_ip.parse().expect("host ip"),
        protocol,
        ..published(
            &format!("default/p{host_port}"),
            "default/web",
            host_port,
            endpoint_address,
            container_port,
        )
    }
}

/// Builds the bridge of `network` in `host` with its gateway address, as the links code would,
/// with the sysctls the firewall relies on (ip_forward, route_localnet on the bridge).
pub fn bridge(host: &Ns, network: &NetworkState) {
    let name = network.bridge_name();
    let subnet = network.subnet.expect("bridge network has a subnet");
    let gateway = network.gateway.expect("bridge network has a gateway");
    host.sh(&format!(
        "ip link add {name} type bridge && ip addr add {gateway}/{} dev {name} && ip link set {name} up \
         && sysctl -qw net.ipv4.ip_forward=1 && sysctl -qw net.ipv4.conf.{name}.route_localnet=1",
        subnet.prefix_len()
    ));
}

/// A "container": a namespace with `eth0` on the bridge of `network` at `address`, default route
/// via the gateway.
pub fn container(host: &Ns, network: &NetworkState, address: &str, tag: &str) -> Ns {
    let ns = Ns::new(tag);
    let subnet = network.subnet.expect("bridge network has a subnet");
    let gateway = network.gateway.expect("bridge network has a gateway");
    let host_if = format!("v{}", unique());
    veth(host, &host_if, &ns, "eth0");
    // Hairpin mode on the bridge port, as Docker sets it: with br_netfilter active (the
    // default here, bridge-nf-call-iptables=1), an endpoint reaching its own published port has
    // its DNATed frame bridged back out the port it came in on, which a bridge drops otherwise.
    host.sh(&format!(
        "ip link set {host_if} master {} && ip link set {host_if} type bridge_slave hairpin on",
        network.bridge_name()
    ));
    ns.sh(&format!(
        "ip addr add {address}/{} dev eth0",
        subnet.prefix_len()
    ));
    ns.sh(&format!("ip route add default via {gateway}"));
    ns
}

/// A NodeState with these networks and ports (endpoints do not matter to the firewall).
pub fn state(networks: Vec<NetworkState>, ports: Vec<PublishedPort>) -> NodeState {
    NodeState {
        networks,
        ports,
        ..NodeState::default()
    }
}
