//! `Network`: a virtual switch with a subnet, like `docker network create`.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::conditions::Condition;

/// The desired state of a Network: `docker network create [OPTIONS] NAME`.
#[derive(CustomResource, KubeSchema, Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
    printcolumn(name = "Scope", type_ = "string", json_path = ".status.scope", description = "Where the network exists: local (per node)"),
    printcolumn(name = "Subnet", type_ = "string", json_path = ".status.subnet", description = "The allocated subnet"),
    printcolumn(name = "Gateway", type_ = "string", json_path = ".status.gateway", description = "The gateway address", priority = 1),
    printcolumn(name = "Endpoints", type_ = "integer", json_path = ".status.endpoints", description = "Endpoints attached to this network"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status", description = "Whether the network is ready"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    selectable = ".spec.driver",
    validation = Rule::new("self.metadata.name.size() <= 63").message("a Network name is at most 63 characters, so NAME.NETWORK stays a valid DNS name"),
)]
#[x_kube(validation = Rule::new("has(self.subnet) == has(oldSelf.subnet)").message("subnet cannot be added or removed after creation"))]
#[x_kube(validation = Rule::new("self.driver == 'bridge' || (!has(self.subnet) && !has(self.gateway) && !has(self.ipRange) && !has(self.auxAddresses) && !self.internal)").message("only bridge networks take subnet, gateway, ipRange, auxAddresses and internal"))]
#[x_kube(validation = Rule::new("!has(self.gateway) || (has(self.subnet) && cidr(self.subnet).containsIP(self.gateway))").message("gateway needs a subnet and must lie within it"))]
#[x_kube(validation = Rule::new("!has(self.ipRange) || (has(self.subnet) && cidr(self.subnet).containsCIDR(self.ipRange))").message("ipRange needs a subnet and must lie within it"))]
#[x_kube(validation = Rule::new("!has(self.auxAddresses) || (has(self.subnet) && self.auxAddresses.all(k, cidr(self.subnet).containsIP(self.auxAddresses[k])))").message("auxAddresses need a subnet and must lie within it"))]
#[serde(rename_all = "camelCase")]
pub struct NetworkSpec {
    /// The network driver: `bridge` (a Linux bridge per node, the default), `host` (the node's own
    /// network namespace) or `null` (Docker's `none`: loopback only). Immutable.
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

    /// The MTU of the bridge and of every endpoint interface on it.
    #[serde(default = "default_mtu")]
    #[schemars(range(min = 68, max = 65535))]
    pub mtu: i32,

    /// Serve the embedded DNS to this network's endpoints: they resolve each other by name, by
    /// alias and as `NAME.NETWORK`.
    #[serde(default = "default_true")]
    pub dns: bool,
}

/// The MTU of a Network that sets none (Docker's default for its bridges).
pub const DEFAULT_MTU: i32 = 1500;

fn default_mtu() -> i32 {
    DEFAULT_MTU
}

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
            Driver::Host => "host",
            Driver::Null => "null",
        }
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
    /// The Linux bridge on each node where the network has endpoints (`pier-` + 8 hex digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    /// `local`: the network exists per node, as Docker's bridge networks do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
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
