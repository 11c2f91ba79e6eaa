//! `Network`: a virtual switch with a subnet, like `docker network create`.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::conditions::Condition;

/// The desired state of a Network: `docker network create [OPTIONS] NAME`.
#[derive(CustomResource, KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "pier.dev",
    version = "v1alpha1",
    kind = "Network",
    plural = "networks",
    singular = "network",
    shortname = "pnet",
    category = "pier",
    status = "NetworkStatus",
    doc = "A Network is a virtual switch with its own subnet, like a Docker network: endpoints on it reach each other and resolve each other's names; different networks are isolated.",
    printcolumn(name = "Driver", type_ = "string", json_path = ".spec.driver", description = "The network driver"),
    printcolumn(name = "Scope", type_ = "string", json_path = ".status.scope", description = "Where the network exists: local (per node, bridge) or cluster (across nodes, overlay)"),
    printcolumn(name = "Subnet", type_ = "string", json_path = ".status.subnet", description = "The allocated subnet"),
    printcolumn(name = "Gateway", type_ = "string", json_path = ".status.gateway", description = "The gateway address", priority = 1),
    printcolumn(name = "IPv6-Subnet", type_ = "string", json_path = ".status.ipv6Subnet", description = "The allocated IPv6 subnet (networks with IPv6)"),
    printcolumn(name = "Endpoints", type_ = "integer", json_path = ".status.endpoints", description = "Endpoints attached to this network"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status", description = "Whether the network is ready"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    selectable = ".spec.driver",
    validation = Rule::new("self.metadata.name.size() <= 63").message("a Network name is at most 63 characters, so NAME.NETWORK stays a valid DNS name"),
)]
#[x_kube(validation = Rule::new("has(self.subnet) == has(oldSelf.subnet)").message("subnet cannot be added or removed after creation"))]
#[x_kube(validation = Rule::new("self.driver == 'bridge' || self.driver == 'overlay' || (!has(self.subnet) && !has(self.gateway) && !has(self.ipRange) && !has(self.auxAddresses) && !self.internal && !has(self.mtu) && !self.ipv6 && self.ipv4)").message("only bridge and overlay networks take subnet, gateway, ipRange, auxAddresses, internal, mtu, ipv4 and ipv6"))]
#[x_kube(validation = Rule::new("self.ipv4 || self.ipv6").message("a network needs IPv4 or IPv6: ipv4: false needs ipv6: true"))]
#[x_kube(validation = Rule::new("self.ipv4 || (!has(self.subnet) && !has(self.gateway) && !has(self.ipRange) && !has(self.auxAddresses))").message("an IPv6-only network (ipv4: false) takes no IPv4 subnet, gateway, ipRange or auxAddresses"))]
#[x_kube(validation = Rule::new("self.ipv6 || (!has(self.ipv6Subnet) && !has(self.ipv6Gateway) && !has(self.ipv6IpRange))").message("ipv6Subnet, ipv6Gateway and ipv6IpRange need ipv6: true"))]
#[x_kube(validation = Rule::new("has(self.ipv6Subnet) == has(oldSelf.ipv6Subnet)").message("ipv6Subnet cannot be added or removed after creation"))]
#[x_kube(validation = Rule::new("!has(self.ipv6Gateway) || (has(self.ipv6Subnet) && cidr(self.ipv6Subnet).containsIP(self.ipv6Gateway))").message("ipv6Gateway needs an ipv6Subnet and must lie within it"))]
#[x_kube(validation = Rule::new("!has(self.ipv6IpRange) || (has(self.ipv6Subnet) && cidr(self.ipv6Subnet).containsCIDR(self.ipv6IpRange))").message("ipv6IpRange needs an ipv6Subnet and must lie within it"))]
#[x_kube(validation = Rule::new("!has(self.gateway) || (has(self.subnet) && cidr(self.subnet).containsIP(self.gateway))").message("gateway needs a subnet and must lie within it"))]
#[x_kube(validation = Rule::new("!has(self.ipRange) || (has(self.subnet) && cidr(self.subnet).containsCIDR(self.ipRange))").message("ipRange needs a subnet and must lie within it"))]
#[x_kube(validation = Rule::new("!has(self.auxAddresses) || (has(self.subnet) && self.auxAddresses.all(k, cidr(self.subnet).containsIP(self.auxAddresses[k])))").message("auxAddresses need a subnet and must lie within it"))]
#[serde(rename_all = "camelCase")]
pub struct NetworkSpec {
    /// The network driver: `bridge` (a Linux bridge per node, the default), `overlay` (one network
    /// across nodes, VXLAN between them), `host` (the node's own network namespace) or `null`
    /// (Docker's `none`: loopback only). Immutable.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("driver is immutable"))]
    pub driver: Driver,

    /// The IPv4 subnet in CIDR form, e.g. `172.18.0.0/16` (`docker network create --subnet`).
    /// Allocated from the default address pools when absent. Must be a network address (no host
    /// bits set). Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 18), pattern(crate::schema::IPV4_CIDR))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("subnet is immutable"))]
    #[x_kube(validation = Rule::new("cidr(self) == cidr(self).masked()").message("subnet must be a network address without host bits, e.g. 172.18.0.0/16"))]
    pub subnet: Option<String>,

    /// The gateway address on the bridge (`--gateway`). Defaults to the first usable address of the
    /// subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 15), pattern(crate::schema::IPV4))]
    pub gateway: Option<String>,

    /// Hand out dynamic addresses only from this range, a CIDR inside the subnet (`--ip-range`).
    /// Static addresses may still lie anywhere in the subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 18), pattern(crate::schema::IPV4_CIDR))]
    pub ip_range: Option<String>,

    /// Addresses never handed out to endpoints, by name (`--aux-address router=172.18.0.5`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 256))]
    pub aux_addresses: Option<BTreeMap<String, AuxAddress>>,

    /// Restrict external access (`--internal`): no route out, no masquerade, no published ports.
    #[serde(default)]
    pub internal: bool,

    /// The MTU of the bridge and of every endpoint interface on it. When absent: 1500 for a
    /// bridge network; for an overlay network the smallest underlay MTU of the cluster's nodes
    /// when it is created, minus the 50 bytes of VXLAN headers (kept afterwards).
    /// `status.mtu` says what is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = MIN_MTU, max = 65535))]
    pub mtu: Option<i32>,

    /// Serve the embedded DNS to this network's endpoints: they resolve each other by name, by
    /// alias and as `NAME.NETWORK`.
    #[serde(default = "default_true")]
    pub dns: bool,

    /// IPv4 on the network (the default). `ipv4: false` with `ipv6: true` makes an IPv6-only
    /// network (Docker's `--ipv4=false`). Immutable.
    #[serde(default = "default_true")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("ipv4 is immutable"))]
    pub ipv4: bool,

    /// IPv6 on the network (`docker network create --ipv6`): every endpoint gets an IPv6 address
    /// too, names resolve to it (AAAA), traffic out is masqueraded and published ports answer on
    /// the node's IPv6 addresses. Without `ipv6Subnet` the network gets a /64 of the cluster's
    /// unique local (ULA) /48. Immutable.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("ipv6 is immutable"))]
    pub ipv6: bool,

    /// The IPv6 subnet in CIDR form, e.g. `fd12:3456:789a:1::/64` (Docker's second `--subnet`),
    /// with room for a gateway and endpoints (a prefix of at most 124 bits). Must be a network
    /// address. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 43), pattern(crate::schema::IPV6_CIDR_CHARS))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("ipv6Subnet is immutable"))]
    #[x_kube(validation = Rule::new("isCIDR(self) && cidr(self).ip().family() == 6").message("ipv6Subnet must be an IPv6 CIDR, e.g. fd12:3456:789a:1::/64"))]
    #[x_kube(validation = Rule::new("!isCIDR(self) || (cidr(self) == cidr(self).masked() && cidr(self).prefixLength() <= 124)").message("ipv6Subnet must be a network address without host bits, with a prefix of at most 124 bits"))]
    pub ipv6_subnet: Option<String>,

    /// The IPv6 gateway address on the bridge. Defaults to the first address after the subnet's
    /// own (`...::1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 39), pattern(crate::schema::IPV6_CHARS))]
    #[x_kube(validation = Rule::new("isIP(self) && ip(self).family() == 6").message("ipv6Gateway must be an IPv6 address"))]
    pub ipv6_gateway: Option<String>,

    /// Hand out dynamic IPv6 addresses only from this range, a CIDR inside `ipv6Subnet`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 43), pattern(crate::schema::IPV6_CIDR_CHARS))]
    #[x_kube(validation = Rule::new("isCIDR(self) && cidr(self).ip().family() == 6").message("ipv6IpRange must be an IPv6 CIDR"))]
    pub ipv6_ip_range: Option<String>,
}

/// What an empty spec means (`spec: {}`): the serde defaults, so that a spec built in code and
/// one read from the API agree (DNS and IPv4 on).
impl Default for NetworkSpec {
    fn default() -> Self {
        NetworkSpec {
            driver: Driver::default(),
            subnet: None,
            gateway: None,
            ip_range: None,
            aux_addresses: None,
            internal: false,
            mtu: None,
            dns: true,
            ipv4: true,
            ipv6: false,
            ipv6_subnet: None,
            ipv6_gateway: None,
            ipv6_ip_range: None,
        }
    }
}

impl NetworkSpec {
    /// Whether the network has IPv4 (every bridge and overlay network but an IPv6-only one).
    pub fn has_ipv4(&self) -> bool {
        self.ipv4 || !self.ipv6
    }

    /// Whether the network has IPv6.
    pub fn has_ipv6(&self) -> bool {
        self.ipv6 && self.driver.has_subnet()
    }
}

/// The MTU of a bridge Network that sets none (Docker's default for its bridges), and of the
/// underlay assumed for an overlay Network before any node has said what its underlay has.
pub const DEFAULT_MTU: i32 = 1500;

/// What VXLAN over IPv4 adds to every frame: outer IPv4 (20), UDP (8), VXLAN (8) and the inner
/// Ethernet header (14). An overlay's MTU is its underlay's minus this.
pub const VXLAN_OVERHEAD: i32 = 50;

/// The smallest MTU the schema allows a Network (IPv4's minimum).
pub const MIN_MTU: i32 = 68;

/// The smallest underlay that carries an overlay of [`MIN_MTU`].
pub const MIN_UNDERLAY_MTU: i32 = MIN_MTU + VXLAN_OVERHEAD;

/// The MTU of an overlay Network that sets none: the smallest of the nodes' underlay MTUs (or
/// [`DEFAULT_MTU`] while no node has said) minus [`VXLAN_OVERHEAD`].
pub fn overlay_mtu(underlay_mtus: impl IntoIterator<Item = i32>) -> i32 {
    underlay_mtus.into_iter().min().unwrap_or(DEFAULT_MTU) - VXLAN_OVERHEAD
}

/// The first VXLAN id the operator hands out (Docker's overlay driver starts here too).
pub const FIRST_VXLAN_ID: u32 = 4096;

/// The largest VXLAN id (24 bits).
pub const MAX_VXLAN_ID: u32 = (1 << 24) - 1;

/// The UDP port of VXLAN (IANA's, and Linux's and Docker's default).
pub const VXLAN_PORT: u16 = 4789;

fn default_true() -> bool {
    true
}

/// An IPv4 address reserved within the subnet.
#[derive(JsonSchema, Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AuxAddress(#[schemars(length(max = 15), pattern(crate::schema::IPV4))] pub String);

/// A network driver.
#[derive(JsonSchema, Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// A Linux bridge per node, a veth pair per endpoint, masquerade to the outside.
    #[default]
    Bridge,
    /// One network across nodes: a bridge with a VXLAN device on each node where it has
    /// endpoints; the same gateway address and MAC everywhere, so traffic out leaves from the
    /// endpoint's own node.
    Overlay,
    /// The node's own network namespace: nothing is created.
    Host,
    /// Loopback only (Docker's `none`).
    Null,
}

impl Driver {
    /// The name used in the API and by `docker network ls`.
    pub fn as_str(self) -> &'static str {
        match self {
            Driver::Bridge => "bridge",
            Driver::Overlay => "overlay",
            Driver::Host => "host",
            Driver::Null => "null",
        }
    }

    /// Where a network of this driver exists, as `docker network ls` says: `cluster` for an
    /// overlay (one network across nodes), `local` for the others.
    pub fn scope(self) -> &'static str {
        match self {
            Driver::Overlay => "cluster",
            Driver::Bridge | Driver::Host | Driver::Null => "local",
        }
    }

    /// Whether networks of this driver have a subnet and a bridge on each node (bridge, overlay).
    pub fn has_subnet(self) -> bool {
        matches!(self, Driver::Bridge | Driver::Overlay)
    }
}

/// What of a Network the Endpoints waiting for it depend on: its identity and what the operator
/// allocated (not its endpoint count, which changes with every attach).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocated {
    pub uid: Option<String>,
    pub subnet: Option<String>,
    pub gateway: Option<String>,
    pub ipv6_subnet: Option<String>,
    pub ipv6_gateway: Option<String>,
    pub vxlan_id: Option<u32>,
    pub mtu: Option<i32>,
}

impl Network {
    /// What the Endpoints waiting for this Network depend on.
    pub fn allocated(&self) -> Allocated {
        let status = self.status.as_ref();
        Allocated {
            uid: self.metadata.uid.clone(),
            subnet: status.and_then(|s| s.subnet.clone()),
            gateway: status.and_then(|s| s.gateway.clone()),
            ipv6_subnet: status.and_then(|s| s.ipv6_subnet.clone()),
            ipv6_gateway: status.and_then(|s| s.ipv6_gateway.clone()),
            vxlan_id: status.and_then(|s| s.vxlan_id),
            mtu: status.and_then(|s| s.mtu),
        }
    }
}

/// Tells the watch events of Networks whose allocation changed from the rest (the endpoint
/// count is rewritten on every attach: waking every Endpoint waiting on the network for each
/// would make filling a network quadratic).
#[derive(Debug, Default)]
pub struct AllocationChanges {
    seen: std::sync::Mutex<BTreeMap<String, Allocated>>,
}

impl AllocationChanges {
    /// Whether `network`'s allocation differs from the last one seen under its name (the first
    /// event of a name counts as a change).
    pub fn changed(&self, network: &Network) -> bool {
        let name = network.metadata.name.clone().unwrap_or_default();
        let allocated = network.allocated();
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        seen.insert(name, allocated.clone()) != Some(allocated)
    }
}

/// What the operator allocated for a Network, and how it is doing.
#[derive(KubeSchema, Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkStatus {
    /// The subnet in use: the spec's, or the one allocated from the default pools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    /// The gateway address in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// The IPv6 subnet in use (networks with IPv6): the spec's, or a /64 of the cluster's ULA
    /// prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_subnet: Option<String>,
    /// The IPv6 gateway address in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_gateway: Option<String>,
    /// The Linux bridge on each node where the network has endpoints (`pier-` + 8 hex digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    /// `local`: the network exists per node, as Docker's bridge networks do; `cluster`: one
    /// network across nodes (overlay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The VXLAN id of an overlay network (from 4096, unique in the cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vxlan_id: Option<u32>,
    /// The MTU of the bridge and of every endpoint interface: the spec's, or the default
    /// (1500 for a bridge; the smallest underlay MTU of the nodes minus 50 for an overlay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<i32>,
    /// How many Endpoints are attached to this network.
    #[serde(default)]
    pub endpoints: i32,
    /// The `.metadata.generation` the operator last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The latest observations: `Ready` (reasons such as `SubnetConflict`, `InUse`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_allocation_changes_count() {
        let changes = AllocationChanges::default();
        let mut network = Network::new("ov", NetworkSpec::default());
        network.metadata.uid = Some("u1".into());
        assert!(changes.changed(&network), "the first event");
        assert!(!changes.changed(&network));
        let status = network.status.get_or_insert_with(NetworkStatus::default);
        status.endpoints = 7;
        assert!(
            !changes.changed(&network),
            "the endpoint count is no allocation"
        );
        let status = network.status.get_or_insert_with(NetworkStatus::default);
        status.subnet = Some("10.0.0.0/24".into());
        assert!(changes.changed(&network));
        network.metadata.uid = Some("u2".into());
        assert!(changes.changed(&network), "a re-created network");
    }
}
