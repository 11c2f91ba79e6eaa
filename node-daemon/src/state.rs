//! `NodeState`: everything one node must have, as plain data (no kube or netlink types).
//!
//! The node daemon builds it from API objects; `pier dataplane plan|apply -f state.json` reads it from
//! a file, so the dataplane can be driven, debugged and benchmarked without an API server. Every
//! address and port in it was allocated by the operator: the node never invents one.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

pub use pier_crds::Protocol;
pub use pier_crds::names::host_veth_name;

/// The desired state of one node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeState {
    /// Networks with something on this node (bridge networks get a bridge here).
    #[serde(default)]
    pub networks: Vec<NetworkState>,
    /// Attachments of workloads on this node to networks, and container-mode sharers.
    #[serde(default)]
    pub endpoints: Vec<EndpointState>,
    /// Host ports published on this node.
    #[serde(default)]
    pub ports: Vec<PublishedPort>,
    /// This node's tunnel address: the underlay address its overlay networks' VXLAN devices
    /// send from and other nodes send to (absent: no overlay network can be set up here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<Ipv4Addr>,
    /// The endpoints of this node's overlay networks that live on other nodes: static FDB and
    /// neighbour entries on the network's VXLAN device here, and names in its DNS view.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_endpoints: Vec<RemoteEndpoint>,
}

/// The network driver, as in `docker network create --driver`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// A Linux bridge per node, a veth per endpoint, NAT to the outside.
    #[default]
    Bridge,
    /// A bridge network across nodes: on each node a bridge as for `bridge`, plus a VXLAN device
    /// on it with static entries for the network's endpoints on other nodes.
    Overlay,
    /// The node's own namespace: nothing to create.
    Host,
    /// Docker's `none`: the namespace gets `lo` only.
    Null,
}

impl Driver {
    /// Whether a network of this driver has a bridge (and a subnet and a gateway) on the node.
    pub fn has_bridge(self) -> bool {
        matches!(self, Driver::Bridge | Driver::Overlay)
    }
}

/// One Network as this node needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkState {
    /// The Network's name (also the DNS suffix in `NAME.NETWORK`).
    pub name: String,
    /// The Network's uid: the bridge name derives from it, so a re-created Network gets a new bridge.
    pub uid: String,
    #[serde(default)]
    pub driver: Driver,
    /// The IPv4 subnet (absent for `host` and `null`, and on an IPv6-only network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<Ipv4Net>,
    /// The IPv4 gateway address, set on the bridge (absent with `subnet`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    /// The IPv6 subnet of a network with IPv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<Ipv6Net>,
    /// The IPv6 gateway address, set on the bridge (absent with `subnet6`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<Ipv6Addr>,
    #[serde(default = "default_mtu")]
    pub mtu: u32,
    /// No egress, no masquerade, no published ports.
    #[serde(default)]
    pub internal: bool,
    /// Embedded DNS serves this network's endpoints.
    #[serde(default = "default_true")]
    pub dns: bool,
    /// The VXLAN id (overlay networks only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vxlan_id: Option<u32>,
}

fn default_mtu() -> u32 {
    pier_crds::network::DEFAULT_MTU.unsigned_abs()
}

fn default_true() -> bool {
    true
}

impl NetworkState {
    /// A bridge network has a subnet and a gateway inside it for each family it has, and at
    /// least one family.
    fn check_addressing(&self) -> Result<(), StateError> {
        let outside = |gateway: IpAddr, subnet: ipnet::IpNet| StateError::GatewayOutsideSubnet {
            network: self.name.clone(),
            gateway,
            subnet,
        };
        let v4 = match (self.subnet, self.gateway) {
            (Some(subnet), Some(gateway)) if !subnet.contains(&gateway) => {
                return Err(outside(gateway.into(), subnet.into()));
            }
            (Some(_), Some(_)) => true,
            (None, None) => false,
            _ => return Err(StateError::BridgeWithoutSubnet(self.name.clone())),
        };
        let v6 = match (self.subnet6, self.gateway6) {
            (Some(subnet), Some(gateway)) if !subnet.contains(&gateway) => {
                return Err(outside(gateway.into(), subnet.into()));
            }
            (Some(_), Some(_)) => true,
            (None, None) => false,
            _ => return Err(StateError::BridgeWithoutSubnet(self.name.clone())),
        };
        if v4 || v6 {
            Ok(())
        } else {
            Err(StateError::BridgeWithoutSubnet(self.name.clone()))
        }
    }

    /// The bridge Pier owns for this network: `pier-` + 8 hex digits of the uid's hash (the
    /// operator records the same name in the Network's status).
    pub fn bridge_name(&self) -> String {
        pier_crds::names::bridge_name(&self.uid)
    }

    /// The VXLAN device Pier owns for this network when it is an overlay: `pvx` + the bridge's 8
    /// hex digits.
    pub fn vxlan_name(&self) -> String {
        pier_crds::names::vxlan_name(&self.uid)
    }
}

/// Where an endpoint's network namespace is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Netns {
    /// A named namespace, `/var/run/netns/NAME` (what `ip netns add NAME` makes).
    Named(String),
    /// Any namespace file, e.g. `/proc/PID/ns/net` of a Pod's sandbox.
    Path(PathBuf),
    /// The node's own namespace (the `host` driver).
    Host,
}

impl Netns {
    /// The file to open for `setns`, or `None` for the node's own namespace.
    pub fn path(&self) -> Option<PathBuf> {
        match self {
            Netns::Named(name) => Some(PathBuf::from(pier_crds::names::NETNS_DIR).join(name)),
            Netns::Path(path) => Some(path.clone()),
            Netns::Host => None,
        }
    }
}

/// One endpoint: a workload's attachment to one network, or a container-mode sharer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointState {
    /// Identity on this node, `NAMESPACE/NAME` of the Endpoint object; reports are keyed by it.
    pub id: String,
    /// The Endpoint's uid: the host-side veth name derives from it.
    pub uid: String,
    /// The DNS name: the first of the Endpoint's `status.dnsNames` (its name, like a Docker
    /// container's name).
    pub name: String,
    /// Extra DNS names (`docker run --network-alias`): the rest of `status.dnsNames`.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// The namespace the workload lives in.
    pub netns: Netns,
    /// How this endpoint is attached.
    pub attachment: Attachment,
}

/// How an endpoint joins the network world.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Attachment {
    /// A veth into the bridge of a `bridge` network.
    Bridge(BridgeAttachment),
    /// A `null` network: the namespace keeps `lo` only.
    Null {
        /// The Network's name.
        network: String,
    },
    /// A `host` network: the workload is in the node's own namespace; nothing to create.
    Host {
        /// The Network's name.
        network: String,
    },
    /// Container mode: shares the namespace of another endpoint (by `id`); no interface of its own.
    Shared {
        /// The `id` of the endpoint whose namespace this one uses.
        endpoint: String,
    },
}

/// The allocated details of a veth attachment, all from the Endpoint's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BridgeAttachment {
    /// The Network's name.
    pub network: String,
    /// The interface name inside the namespace (`eth0`, `eth1`, ...).
    pub interface: String,
    /// The endpoint's IPv4 address (absent on an IPv6-only network); the prefix length comes
    /// from the network's subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Ipv4Addr>,
    /// The endpoint's IPv6 address on a network with IPv6; the prefix length comes from the
    /// network's `subnet6`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address6: Option<Ipv6Addr>,
    /// The MAC address of the namespace-side interface, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// Whether the default routes go via this network's gateways (each family it has): the
    /// operator's choice (`status.defaultRoute`, the namespace's first network), one per
    /// namespace.
    #[serde(default)]
    pub default_route: bool,
}

impl EndpointState {
    /// The host-side veth name Pier owns for this endpoint: `pv` + 10 hex digits of the uid's hash.
    pub fn host_veth_name(&self) -> String {
        host_veth_name(&self.uid)
    }

    /// The network this endpoint is attached to, if any (container mode has none of its own).
    pub fn network(&self) -> Option<&str> {
        match &self.attachment {
            Attachment::Bridge(bridge) => Some(&bridge.network),
            Attachment::Null { network } | Attachment::Host { network } => Some(network),
            Attachment::Shared { .. } => None,
        }
    }
}

/// One published port: `hostIP:hostPort -> endpoint address:containerPort/protocol`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PublishedPort {
    /// The owner, `NAMESPACE/NAME` of the PortPublish; reports are keyed by it.
    pub id: String,
    /// The endpoint (`id`) the traffic goes to.
    pub endpoint: String,
    /// The host address to bind; `0.0.0.0` means every IPv4 address of the node, `::` every
    /// IPv6 one. One entry is one family: `endpoint_address` is of the same.
    #[serde(default = "unspecified")]
    pub host_ip: IpAddr,
    pub host_port: u16,
    pub protocol: Protocol,
    /// Where the traffic goes: the endpoint's address on its network, of `host_ip`'s family.
    pub endpoint_address: IpAddr,
    pub container_port: u16,
}

/// An endpoint of an overlay network on another node, from its Endpoint's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RemoteEndpoint {
    /// `NAMESPACE/NAME` of the Endpoint object.
    pub id: String,
    /// The DNS name (the first of `status.dnsNames`).
    pub name: String,
    /// The other DNS names.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// The overlay Network's name.
    pub network: String,
    /// Its IPv4 address (absent on an IPv6-only network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Ipv4Addr>,
    /// Its IPv6 address on a network with IPv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address6: Option<Ipv6Addr>,
    /// `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// The node it lives on.
    pub node: String,
    /// That node's tunnel address: where its VXLAN packets go.
    pub tunnel: Ipv4Addr,
}

fn unspecified() -> IpAddr {
    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
}

/// A NodeState that cannot be applied as a whole.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StateError {
    #[error("network {0:?} appears more than once")]
    DuplicateNetwork(String),
    #[error("bridge network {0:?} has no subnet and gateway of either family")]
    BridgeWithoutSubnet(String),
    #[error("network {network:?}: gateway {gateway} is outside subnet {subnet}")]
    GatewayOutsideSubnet {
        network: String,
        gateway: IpAddr,
        subnet: ipnet::IpNet,
    },
    #[error("endpoint {0:?} appears more than once")]
    DuplicateEndpoint(String),
}

impl NodeState {
    /// Checks what must hold for the state as a whole. Problems of single endpoints, ports or
    /// networks (unknown network, address outside the subnet, an overlay network without its
    /// VXLAN id yet, ...) are not errors here: the dataplane reports them per object and applies
    /// the rest.
    pub fn validate(&self) -> Result<(), StateError> {
        let mut networks = BTreeSet::new();
        for network in &self.networks {
            if !networks.insert(network.name.as_str()) {
                return Err(StateError::DuplicateNetwork(network.name.clone()));
            }
            if network.driver.has_bridge() {
                network.check_addressing()?;
            }
        }
        // A hash set: this runs on every attach, over every endpoint of the node.
        let mut endpoints = HashSet::with_capacity(self.endpoints.len());
        for endpoint in &self.endpoints {
            if !endpoints.insert(endpoint.id.as_str()) {
                return Err(StateError::DuplicateEndpoint(endpoint.id.clone()));
            }
        }
        Ok(())
    }

    /// Networks by name.
    pub fn networks_by_name(&self) -> BTreeMap<&str, &NetworkState> {
        self.networks.iter().map(|n| (n.name.as_str(), n)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bridge_network(name: &str, subnet: &str, gateway: &str) -> NetworkState {
        NetworkState {
            name: name.into(),
            uid: format!("uid-{name}"),
            driver: Driver::Bridge,
            subnet: Some(subnet.parse().expect("test subnet")),
            gateway: Some(gateway.parse().expect("test gateway")),
            mtu: 1500,
            internal: false,
            dns: true,
            vxlan_id: None,
            subnet6: None,
            gateway6: None,
        }
    }

    #[test]
    fn kernel_names_fit_ifnamsiz_and_are_stable() {
        let network = bridge_network("workshop-tage", "172.18.0.0/16", "172.18.0.1");
        let bridge = network.bridge_name();
        assert_eq!(bridge.len(), 13);
        assert!(bridge.starts_with("pier-"));
        assert_eq!(bridge, network.bridge_name());
        let endpoint = EndpointState {
            id: "default/con1".into(),
            uid: "0b5c7e9e-3f0d-4c57-9a59-1b2f4f3e8a10".into(),
            name: "con1".into(),
            aliases: vec![],
            netns: Netns::Named("con1".into()),
            attachment: Attachment::Null {
                network: "none".into(),
            },
        };
        let veth = endpoint.host_veth_name();
        assert_eq!(veth.len(), 12);
        assert!(veth.starts_with("pv"));
        assert!(veth[2..].chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn validate_rejects_gateway_outside_subnet_and_duplicates() {
        let mut state = NodeState {
            networks: vec![bridge_network("a", "172.18.0.0/16", "172.19.0.1")],
            ..NodeState::default()
        };
        assert!(matches!(
            state.validate(),
            Err(StateError::GatewayOutsideSubnet { .. })
        ));
        state.networks = vec![
            bridge_network("a", "172.18.0.0/16", "172.18.0.1"),
            bridge_network("a", "172.19.0.0/16", "172.19.0.1"),
        ];
        assert_eq!(
            state.validate(),
            Err(StateError::DuplicateNetwork("a".into()))
        );
    }

    #[test]
    fn json_round_trip_reads_like_the_docs() {
        let json = r#"{
          "networks": [{"name": "workshop-tage", "uid": "u1", "subnet": "172.18.0.0/16", "gateway": "172.18.0.1"}],
          "endpoints": [{"id": "default/con1", "uid": "u2", "name": "con1", "netns": {"named": "con1"},
                         "attachment": {"bridge": {"network": "workshop-tage", "interface": "eth0",
                                        "address": "172.18.0.2", "mac": "02:42:ac:12:00:02", "defaultRoute": true}}}],
          "ports": [{"id": "default/web", "endpoint": "default/con1", "hostPort": 8000, "protocol": "TCP",
                     "endpointAddress": "172.18.0.2", "containerPort": 80}]
        }"#;
        let state: NodeState = serde_json::from_str(json).expect("state parses");
        assert_eq!(state.networks[0].mtu, 1500);
        assert!(state.networks[0].dns);
        assert_eq!(state.ports[0].host_ip, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert_eq!(state.validate(), Ok(()));
        let again: NodeState =
            serde_json::from_str(&serde_json::to_string(&state).expect("serializes"))
                .expect("round trip parses");
        assert_eq!(again, state);
    }
}
