//! The IPv6 part of the fixture: dual-stack and IPv6-only networks and endpoints, and IPv6
//! traffic (`ping -6`) and addresses read inside namespaces.

use std::net::Ipv6Addr;

use pier_node::state::{Attachment, EndpointState, NetworkState};

use super::{Ns, bridge_network};

pub fn ip6(text: &str) -> Ipv6Addr {
    text.parse().expect("test IPv6 address")
}

/// A bridge network with both families.
pub fn dual_network(
    name: &str,
    subnet: &str,
    gateway: &str,
    subnet6: &str,
    gateway6: &str,
) -> NetworkState {
    NetworkState {
        subnet6: Some(subnet6.parse().expect("test IPv6 subnet")),
        gateway6: Some(ip6(gateway6)),
        ..bridge_network(name, subnet, gateway)
    }
}

/// An IPv6-only bridge network (`ipv4: false`).
pub fn v6_only_network(name: &str, subnet6: &str, gateway6: &str) -> NetworkState {
    NetworkState {
        subnet: None,
        gateway: None,
        ..dual_network(name, "10.0.0.0/8", "10.0.0.1", subnet6, gateway6)
    }
}

/// `endpoint` with the IPv6 address `address6` too.
pub fn with_address6(mut endpoint: EndpointState, address6: &str) -> EndpointState {
    if let Attachment::Bridge(bridge) = &mut endpoint.attachment {
        bridge.address6 = Some(ip6(address6));
    }
    endpoint
}

impl Ns {
    /// The global (not link-local) IPv6 addresses of `device`, one `ip -6 -o addr` line each.
    pub fn global_addresses6(&self, device: &str) -> Vec<String> {
        self.sh(&format!("ip -6 -o addr show dev {device} scope global"))
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// `ip -6 neigh show dev DEVICE`: the device's IPv6 neighbours as `ADDRESS MAC STATE`,
    /// multicast ones (the kernel's own) left out, sorted.
    pub fn neighbours6(&self, device: &str) -> Vec<String> {
        let shown = self.sh(&format!("ip -6 neigh show dev {device}"));
        let mut entries: Vec<String> = shown
            .lines()
            .filter(|line| !line.starts_with("ff"))
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
}
