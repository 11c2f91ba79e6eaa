//! `Endpoint`: one workload attached to one network, like `docker run --net` or
//! `docker network connect`.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::conditions::Condition;

/// The desired attachment of a workload to a network.
#[derive(CustomResource, KubeSchema, Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "pier.dev",
    version = "v1alpha1",
    kind = "Endpoint",
    plural = "endpoints",
    singular = "endpoint",
    namespaced,
    shortname = "pep",
    category = "pier",
    status = "EndpointStatus",
    doc = "An Endpoint attaches one workload (a named network namespace, a Pod, or another Endpoint's namespace) to one Network, like `docker run --net` or `docker network connect`. Type `kubectl get pep` or `endpoint.pier.dev` (`kubectl explain endpoint.pier.dev`): plain `endpoints` names Kubernetes' core v1 Endpoints.",
    printcolumn(
        name = "Network",
        type_ = "string",
        json_path = ".spec.network",
        description = "The network (default: bridge)"
    ),
    printcolumn(
        name = "Node",
        type_ = "string",
        json_path = ".status.node",
        description = "The node the workload runs on"
    ),
    printcolumn(
        name = "IP",
        type_ = "string",
        json_path = ".status.ipv4Address",
        description = "The endpoint's IPv4 address"
    ),
    printcolumn(
        name = "IPv6",
        type_ = "string",
        json_path = ".status.ipv6Address",
        description = "The endpoint's IPv6 address (networks with IPv6)"
    ),
    printcolumn(
        name = "Interface",
        type_ = "string",
        json_path = ".status.interface",
        description = "The interface in the workload's namespace"
    ),
    printcolumn(
        name = "MAC",
        type_ = "string",
        json_path = ".status.macAddress",
        description = "The interface's MAC address",
        priority = 1
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the endpoint is allocated and attached on its node"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        description = "Why not ready: the operator's reason (such as AddressInUse) or the node's (such as PodNetnsNotFound), whichever failed first"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    selectable = ".spec.network",
    selectable = ".status.node"
)]
#[x_kube(validation = Rule::new("has(self.network) == has(oldSelf.network)").message("network cannot be added or removed after creation; create another Endpoint to connect to another network"))]
#[x_kube(validation = Rule::new("!has(self.target.endpoint) || (!has(self.network) && !has(self.interface) && !has(self.ipv4Address) && !has(self.ipv6Address) && !has(self.macAddress) && !has(self.aliases))").message("an Endpoint sharing another Endpoint's namespace (container mode) takes no network, interface, addresses or aliases of its own"))]
#[serde(rename_all = "camelCase")]
pub struct EndpointSpec {
    /// The Network to attach to (`docker run --net NAME`). Defaults to `bridge`. Immutable: to join
    /// another network, create another Endpoint for the same target (`docker network connect`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), pattern(crate::schema::OBJECT_NAME))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("network is immutable"))]
    pub network: Option<String>,

    /// The workload whose network namespace gets the interface. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("target is immutable"))]
    pub target: EndpointTarget,

    /// The interface name inside the namespace. Defaults to the next free `ethN` among the
    /// namespace's Endpoints (`eth0` for the first network, `eth1` after a connect, ...); in a
    /// Pod, whose `eth0` is the cluster network's, to the next free `netN` (`net1`, `net2`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 15), pattern(crate::schema::INTERFACE))]
    pub interface: Option<String>,

    /// A static IPv4 address in the network's subnet (`docker run --ip`). Allocated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 15), pattern(crate::schema::IPV4))]
    pub ipv4_address: Option<String>,

    /// A static IPv6 address in the network's `ipv6Subnet` (`docker run --ip6`), on a network
    /// with IPv6. Allocated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 39), pattern(crate::schema::IPV6_CHARS))]
    #[x_kube(validation = Rule::new("isIP(self) && ip(self).family() == 6").message("ipv6Address must be an IPv6 address"))]
    pub ipv6_address: Option<String>,

    /// A static MAC address (`docker run --mac-address`). Derived from the IPv4 address when absent,
    /// as Docker does (`02:42:` followed by the address's four bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 17), pattern(crate::schema::MAC))]
    pub mac_address: Option<String>,

    /// Extra DNS names on this network (`docker run --network-alias`). Several endpoints may share
    /// an alias: the name then resolves to all of their addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 32),
        inner(length(min = 1, max = 63), pattern(crate::schema::DNS_LABEL))
    )]
    pub aliases: Option<Vec<String>>,
}

/// Exactly one of `netns`, `pod` or `endpoint`.
#[derive(KubeSchema, Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[x_kube(validation = Rule::new("(has(self.netns) ? 1 : 0) + (has(self.pod) ? 1 : 0) + (has(self.endpoint) ? 1 : 0) == 1").message("target must set exactly one of netns, pod or endpoint"))]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
#[serde(rename_all = "camelCase")]
pub struct EndpointTarget {
    /// A named network namespace (`/var/run/netns/NAME`, as `ip netns add NAME` makes) on a node.
    /// Pier creates it when absent. For local mode, VMs and tests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<NetnsTarget>,
    /// A Pod in the Endpoint's namespace; its node comes from the Pod's `spec.nodeName`. The
    /// Pod keeps its `eth0`, addresses and default route: Pier adds `net1`, `net2`, ... A Pod's
    /// `pier.dev/networks` annotation makes such Endpoints by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<LocalObjectReference>,
    /// Another Endpoint in the same namespace whose network namespace this one shares
    /// (`docker run --net container:NAME`): no interface of its own, reachable over `lo`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<LocalObjectReference>,
}

/// A named network namespace on a node.
#[derive(KubeSchema, Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetnsTarget {
    /// The namespace's name: a file name under `/var/run/netns`.
    #[schemars(length(min = 1, max = 63), pattern(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$"))]
    pub name: String,
    /// The node it lives on. May be omitted when the cluster has exactly one node (local mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), pattern(crate::schema::OBJECT_NAME))]
    pub node: Option<String>,
}

/// A reference to an object by name in the same namespace.
#[derive(KubeSchema, Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalObjectReference {
    /// The object's name.
    #[schemars(length(min = 1, max = 253), pattern(crate::schema::OBJECT_NAME))]
    pub name: String,
}

/// What the operator allocated for an Endpoint and what the node daemon made of it.
#[derive(KubeSchema, Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointStatus {
    /// The node the workload runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The Network the endpoint is attached to (spec.network, or the default network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// The allocated IPv4 address (what `docker inspect` shows as IPAddress).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_address: Option<String>,
    /// The prefix length of the network's subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_length: Option<i32>,
    /// The allocated IPv6 address (networks with IPv6; `GlobalIPv6Address` in `docker inspect`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_address: Option<String>,
    /// The prefix length of the network's IPv6 subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_prefix_length: Option<i32>,
    /// The network's IPv6 gateway (the next hop of the IPv6 default route when `defaultRoute`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_gateway: Option<String>,
    /// The network's gateway (the next hop of the default route when `defaultRoute` is true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Whether the namespace's default route goes through this network's gateway. Set on every
    /// Endpoint with an address (bridge networks); always false in a Pod (its default route is
    /// the cluster network's); else true on exactly one Endpoint of a namespace,
    /// the first one attached (the oldest by creation time, ties by namespace/name), as Docker
    /// keeps the network a container was started on as its gateway across `docker network
    /// connect`. When that Endpoint goes, the next oldest takes the default route over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_route: Option<bool>,
    /// The interface's MAC address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
    /// The interface name inside the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// The names other endpoints on the network resolve to this endpoint's address: the
    /// Endpoint's name first (what a reverse lookup answers, `NAME.NETWORK`) — the Pod's name
    /// for an Endpoint made from a Pod's annotation — then its aliases.
    /// Empty in container mode: a sharer has no name of its own, as in Docker.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_names: Vec<String>,
    /// The `.metadata.generation` the operator last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The latest observations: `Allocated` (operator; reasons such as `NetworkNotFound`,
    /// `NodeRequired`, `AddressInUse`), `Attached` (node daemon: the interface exists; reasons
    /// such as `PodNetnsNotFound`) and `Ready`: both, or the reason of whichever failed first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// The names of the Endpoints whose published ports lead to Endpoint `name`'s address: `name`
/// itself and, in container mode, every Endpoint of `namespace` that shares its network namespace.
/// Both the operator and the node follow a PortPublish's Endpoint through this.
pub fn publishing_through<'a>(
    endpoints: impl IntoIterator<Item = &'a Endpoint>,
    namespace: Option<&str>,
    name: &str,
) -> Vec<String> {
    let mut names: Vec<String> = endpoints
        .into_iter()
        .filter(|e| e.metadata.namespace.as_deref() == namespace)
        .filter(|e| {
            e.spec
                .target
                .endpoint
                .as_ref()
                .is_some_and(|t| t.name == name)
        })
        .filter_map(|e| e.metadata.name.clone())
        .collect();
    names.push(name.to_owned());
    names
}

/// Of `publishes`, those that lead to Endpoint `name` of `namespace` (see [`publishing_through`]).
/// `endpoints` gives the Endpoints to look for sharers among, and is called only when a
/// PortPublish of that namespace exists: most Endpoint events concern no port, and neither
/// controller should walk every Endpoint for them.
pub fn publishes_following<P, E>(
    publishes: Vec<P>,
    namespace: Option<&str>,
    name: &str,
    endpoints: impl FnOnce() -> Vec<E>,
) -> Vec<P>
where
    P: std::ops::Deref<Target = crate::PortPublish>,
    E: std::ops::Deref<Target = Endpoint>,
{
    let in_namespace: Vec<P> = publishes
        .into_iter()
        .filter(|p| p.metadata.namespace.as_deref() == namespace)
        .collect();
    if in_namespace.is_empty() {
        return in_namespace;
    }
    let endpoints = endpoints();
    let leading_to_it = publishing_through(endpoints.iter().map(|e| &**e), namespace, name);
    in_namespace
        .into_iter()
        .filter(|p| leading_to_it.contains(&p.spec.endpoint))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(namespace: &str, name: &str, shares: Option<&str>) -> Endpoint {
        let mut endpoint = Endpoint::new(name, EndpointSpec::default());
        endpoint.metadata.namespace = Some(namespace.into());
        endpoint.spec.target.endpoint =
            shares.map(|other| LocalObjectReference { name: other.into() });
        endpoint
    }

    #[test]
    fn ports_lead_through_the_endpoints_that_share_a_namespace() {
        let endpoints = [
            endpoint("default", "web", None),
            endpoint("default", "sidecar", Some("web")),
            endpoint("other", "elsewhere", Some("web")),
            endpoint("default", "unrelated", Some("db")),
        ];
        assert_eq!(
            publishing_through(&endpoints, Some("default"), "web"),
            vec!["sidecar".to_owned(), "web".to_owned()]
        );
        assert_eq!(
            publishing_through(&endpoints, Some("default"), "db"),
            vec!["unrelated".to_owned(), "db".to_owned()]
        );
    }
}
