//! The firewall tests' part of the fixture: they build the links by hand with `ip` (so the
//! firewall is tested without the links code) and inspect table `inet pier` with the `nft` CLI.
//! Call [`require_root`] first: it asks for nftables too.

use std::net::Ipv6Addr;

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

/// A bridge network with IPv6 `subnet6` (its gateway the subnet's `::1`) beside IPv4 `subnet`,
/// or IPv6 only (`subnet` None).
pub fn network6(name: &str, subnet: Option<&str>, subnet6: &str, internal: bool) -> NetworkState {
    let subnet6: ipnet::Ipv6Net = subnet6.parse().expect("test subnet6");
    let base = match subnet {
        Some(subnet) => network(name, subnet, internal),
        None => NetworkState {
            subnet: None,
            gateway: None,
            ..network(name, "10.255.255.0/24", internal)
        },
    };
    NetworkState {
        subnet6: Some(subnet6),
        gateway6: Some(Ipv6Addr::from(u128::from(subnet6.network()) + 1)),
        ..base
    }
}

/// Builds the bridge of `network` in `host` with its gateway addresses, as the links code would,
/// with the sysctls the firewall relies on (ip_forward, route_localnet on the bridge; IPv6
/// forwarding when the network has IPv6). An IPv6 bridge is ready for every test once
/// [`Ns::wait_link_local`] returns for it.
pub fn bridge(host: &Ns, network: &NetworkState) {
    let name = network.bridge_name();
    host.sh(&format!("ip link add {name} type bridge"));
    if let (Some(subnet), Some(gateway)) = (network.subnet, network.gateway) {
        host.sh(&format!(
            "ip addr add {gateway}/{} dev {name}",
            subnet.prefix_len()
        ));
    }
    if let (Some(subnet6), Some(gateway6)) = (network.subnet6, network.gateway6) {
        host.sh(&format!(
            "ip -6 addr add {gateway6}/{} dev {name} nodad && sysctl -qw net.ipv6.conf.all.forwarding=1",
            subnet6.prefix_len()
        ));
    }
    host.sh(&format!(
        "ip link set {name} up && sysctl -qw net.ipv4.ip_forward=1 \
         && sysctl -qw net.ipv4.conf.{name}.route_localnet=1"
    ));
}

/// A "container": a namespace with `eth0` on the bridge of `network` at `address`, default route
/// via the gateway.
pub fn container(host: &Ns, network: &NetworkState, address: &str, tag: &str) -> Ns {
    container_dual(host, network, Some(address), None, tag)
}

/// A container with an IPv4 `address`, an IPv6 `address6`, or both, each with its default
/// route via the network's gateway of that family.
pub fn container_dual(
    host: &Ns,
    network: &NetworkState,
    address: Option<&str>,
    address6: Option<&str>,
    tag: &str,
) -> Ns {
    let ns = Ns::new(tag);
    let host_if = format!("v{}", unique());
    veth(host, &host_if, &ns, "eth0");
    // Hairpin mode on the bridge port, as Docker sets it: with br_netfilter active (the
    // default here, bridge-nf-call-iptables=1), an endpoint reaching its own published port has
    // its DNATed frame bridged back out the port it came in on, which a bridge drops otherwise.
    host.sh(&format!(
        "ip link set {host_if} master {} && ip link set {host_if} type bridge_slave hairpin on",
        network.bridge_name()
    ));
    if let Some(address) = address {
        let subnet = network
            .subnet
            .expect("an IPv4 address needs an IPv4 subnet");
        let gateway = network.gateway.expect("bridge network has a gateway");
        ns.sh(&format!(
            "ip addr add {address}/{} dev eth0",
            subnet.prefix_len()
        ));
        ns.sh(&format!("ip route add default via {gateway}"));
    }
    if let Some(address6) = address6 {
        ns.add_address6(network, "eth0", address6);
    }
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
