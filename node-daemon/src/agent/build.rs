//! From API objects to the node's [`NodeState`]: a pure function, so what the node daemon does for
//! a set of objects is unit-tested without an API server or a kernel.
//!
//! Every address, MAC, interface, DNS name, default-route choice and host port comes from a
//! status the operator wrote: the node never invents or re-derives one, so the operator's record
//! and the kernel cannot disagree. What cannot go on this node is left out with a reason, and the
//! rest of the node goes on.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::Arc;

use ipnet::{Ipv4Net, Ipv6Net};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use pier_crds::conditions::{self, READY, reason};
use pier_crds::{Endpoint, EndpointStatus, Network, PortPublish};

use crate::dataplane::ObjectKey;
use crate::kernel::host_ports::{HostPort, Refused};
use crate::kernel::hostnet::{HostSubnet, overlapping};
use crate::state::{
    Attachment, BridgeAttachment, Driver, EndpointState, Netns, NetworkState, NodeState,
    PublishedPort, RemoteEndpoint,
};

/// What the node's objects are built from.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// This node's name: only objects whose `status.node` names it are built.
    pub node: &'a str,
    pub networks: &'a [Arc<Network>],
    pub endpoints: &'a [Arc<Endpoint>],
    pub ports: &'a [Arc<PortPublish>],
    /// Subnets the node uses for things Pier does not own.
    pub host_subnets: &'a [HostSubnet],
    /// Network namespaces of target Pods found on this node, by `NAMESPACE/POD`.
    pub pod_netns: &'a HashMap<String, PathBuf>,
    /// Whether Endpoints may target named namespaces on this node (see `AgentConfig`).
    pub netns_targets: bool,
    /// The Endpoints of other nodes: an overlay's endpoints there become entries and names here.
    pub remote_endpoints: &'a [Arc<Endpoint>],
    /// The nodes' tunnel addresses by node name (their `pier.dev/tunnel-address` annotations).
    pub tunnels: &'a HashMap<String, Ipv4Addr>,
    /// This node's tunnel address (`None`: overlay networks cannot be set up here).
    pub tunnel: Option<Ipv4Addr>,
    /// Why there is no tunnel address, when the detection said why.
    pub tunnel_problem: Option<&'a str>,
}

/// Why one object was left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: &'static str,
    pub message: String,
}

/// The desired state of the node and what was left out of it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Built {
    pub state: NodeState,
    /// By [`endpoint_key`] or [`ports_key`].
    pub refusals: BTreeMap<ObjectKey, Refusal>,
}

/// The key of an Endpoint in reports and refusals (the dataplane's own).
pub fn endpoint_key(id: &str) -> ObjectKey {
    ObjectKey::endpoint(id)
}

/// The key of a PortPublish in refusals.
pub fn ports_key(id: &str) -> ObjectKey {
    ObjectKey::Ports(id.to_owned())
}

/// `NAMESPACE/NAME` of an object.
pub fn object_id(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}

fn refusal(reason: &'static str, message: String) -> Refusal {
    Refusal { reason, message }
}

/// Networks by name.
type Networks<'a> = HashMap<&'a str, &'a Network>;

/// What one Endpoint of this node is before the others are looked at: an endpoint with a
/// namespace of its own (which may claim that namespace's default route; the oldest claim wins),
/// or a container-mode one naming the Endpoint whose namespace it shares.
#[derive(Debug, Clone, PartialEq)]
pub enum Evaluated {
    /// `state` has `default_route` false; `claims_route` says whether it asks for it.
    Own {
        state: Box<EndpointState>,
        claims_route: bool,
    },
    /// The `id` of the Endpoint whose namespace it shares.
    Shares(String),
}

/// Builds the node's state. Objects being deleted are left out (their kernel objects go).
pub fn build(inputs: Inputs<'_>) -> Built {
    let mut built = Built::default();
    let networks: Networks<'_> = inputs
        .networks
        .iter()
        .filter_map(|n| Some((n.metadata.name.as_deref()?, &**n)))
        .collect();
    let shared = build_endpoints(&inputs, &networks, &mut built);
    build_shared_endpoints(shared, &mut built);
    let used_networks: BTreeSet<&str> = built
        .state
        .endpoints
        .iter()
        .filter_map(EndpointState::network)
        .collect();
    let network_states = used_networks
        .iter()
        .filter_map(|name| network_state(networks.get(name)?))
        .collect();
    built.state.networks = network_states;
    remote_endpoints(Elsewhere::of(&inputs), &mut built.state);
    build_ports(&inputs, &mut built);
    built
}

/// What the other nodes' part of a state is built from (see [`remote_endpoints`]).
#[derive(Debug, Clone, Copy)]
pub struct Elsewhere<'a> {
    /// This node's name.
    pub node: &'a str,
    pub remote_endpoints: &'a [Arc<Endpoint>],
    pub tunnels: &'a HashMap<String, Ipv4Addr>,
    pub tunnel: Option<Ipv4Addr>,
}

impl<'a> Elsewhere<'a> {
    fn of(inputs: &Inputs<'a>) -> Elsewhere<'a> {
        Elsewhere {
            node: inputs.node,
            remote_endpoints: inputs.remote_endpoints,
            tunnels: inputs.tunnels,
            tunnel: inputs.tunnel,
        }
    }
}

/// Sets the endpoints on other nodes of the state's overlay networks, and this node's tunnel
/// address when it has one (both empty without an overlay network). Those not allocated yet,
/// being deleted, or on a node without a recorded tunnel address (a Node deleted from the
/// cluster) are left out: no entry points at them. Called again just before an apply, so a
/// state built earlier never takes back what a newer one put in.
pub fn remote_endpoints(elsewhere: Elsewhere<'_>, state: &mut NodeState) {
    state.tunnel = None;
    state.remote_endpoints.clear();
    let overlays: BTreeSet<&str> = state
        .networks
        .iter()
        .filter(|n| n.driver == Driver::Overlay)
        .map(|n| n.name.as_str())
        .collect();
    if overlays.is_empty() {
        return;
    }
    let mut remote: Vec<RemoteEndpoint> = elsewhere
        .remote_endpoints
        .iter()
        .filter(|e| e.metadata.deletion_timestamp.is_none())
        .filter_map(|e| remote_endpoint(elsewhere, &overlays, e))
        .collect();
    remote.sort_by(|a, b| a.id.cmp(&b.id));
    state.tunnel = elsewhere.tunnel;
    state.remote_endpoints = remote;
}

/// One endpoint of another node, if it belongs in this node's entries.
fn remote_endpoint(
    elsewhere: Elsewhere<'_>,
    overlays: &BTreeSet<&str>,
    endpoint: &Endpoint,
) -> Option<RemoteEndpoint> {
    let status = endpoint.status.as_ref()?;
    let network = status.network.as_deref().filter(|n| overlays.contains(n))?;
    let node = status.node.as_deref().filter(|n| *n != elsewhere.node)?;
    if !conditions::is_true(&status.conditions, READY) {
        return None;
    }
    let tunnel = *elsewhere.tunnels.get(node)?;
    let mut names = status.dns_names.iter().cloned();
    Some(RemoteEndpoint {
        id: object_id(&endpoint.metadata),
        name: names.next()?,
        aliases: names.collect(),
        network: network.to_owned(),
        address: status.ipv4_address.as_deref().and_then(|a| a.parse().ok()),
        address6: status.ipv6_address.as_deref().and_then(|a| a.parse().ok()),
        mac: status.mac_address.clone()?,
        node: node.to_owned(),
        tunnel,
    })
}

/// Whether an object is this node's and not being deleted.
fn mine(inputs: &Inputs<'_>, deleting: bool, node: Option<&str>) -> bool {
    !deleting && node == Some(inputs.node)
}

/// Whether the Endpoint is built on this node at all (this node's, not being deleted, with a
/// uid): the others are neither in the state nor refused.
pub fn endpoint_is_mine(inputs: &Inputs<'_>, endpoint: &Endpoint) -> bool {
    mine(
        inputs,
        endpoint.metadata.deletion_timestamp.is_some(),
        endpoint.status.as_ref().and_then(|s| s.node.as_deref()),
    ) && endpoint.metadata.uid.is_some()
}

/// Whether the PortPublish is built on this node at all.
pub fn ports_are_mine(inputs: &Inputs<'_>, publish: &PortPublish) -> bool {
    mine(
        inputs,
        publish.metadata.deletion_timestamp.is_some(),
        publish.status.as_ref().and_then(|s| s.node.as_deref()),
    )
}

/// Where an Endpoint goes in the state: older first, as the operator orders a namespace's
/// attachments (should two statuses claim one namespace's default route, one written before
/// the other was updated, the older keeps it), then by id.
pub type Age = (Option<Time>, String);

/// The [`Age`] of an Endpoint.
pub fn age(endpoint: &Endpoint) -> Age {
    (
        endpoint.metadata.creation_timestamp.clone(),
        object_id(&endpoint.metadata),
    )
}

/// One Endpoint of this node on its own (see [`Evaluated`]), or why it is left out;
/// `network_of` finds a Network by name.
pub fn evaluate_endpoint<'n>(
    inputs: &Inputs<'_>,
    network_of: impl Fn(&str) -> Option<&'n Network>,
    endpoint: &Endpoint,
) -> Result<Evaluated, Refusal> {
    let status = allocated_status(endpoint)?;
    if let Some(other) = &endpoint.spec.target.endpoint {
        let namespace = endpoint.metadata.namespace.as_deref().unwrap_or_default();
        return Ok(Evaluated::Shares(format!("{namespace}/{}", other.name)));
    }
    let (state, claims_route) = own_endpoint(inputs, network_of, endpoint, status)?;
    Ok(Evaluated::Own {
        state: Box::new(state),
        claims_route,
    })
}

/// Sets whether the endpoint carries its namespace's default route (bridge attachments only).
pub fn set_default_route(state: &mut EndpointState, default_route: bool) {
    if let Attachment::Bridge(bridge) = &mut state.attachment {
        bridge.default_route = default_route;
    }
}

/// The Endpoints with a namespace of their own go into `built`; the container-mode ones are
/// returned with the `id` of the Endpoint whose namespace they share, for
/// [`build_shared_endpoints`] once every namespace is known.
fn build_endpoints<'e>(
    inputs: &Inputs<'e>,
    networks: &Networks<'_>,
    built: &mut Built,
) -> Vec<(&'e Endpoint, String)> {
    let mut endpoints: Vec<&Endpoint> = inputs
        .endpoints
        .iter()
        .map(|e| &**e)
        .filter(|e| endpoint_is_mine(inputs, e))
        .collect();
    endpoints.sort_by_cached_key(|e| age(e));
    let mut shared = Vec::new();
    let mut routed_namespaces: BTreeSet<Netns> = BTreeSet::new();
    let network_of = |name: &str| networks.get(name).copied();
    for endpoint in endpoints {
        match evaluate_endpoint(inputs, network_of, endpoint) {
            Ok(Evaluated::Own {
                mut state,
                claims_route,
            }) => {
                // The first claim of a namespace keeps its default route.
                let routed = claims_route && routed_namespaces.insert(state.netns.clone());
                set_default_route(&mut state, routed);
                built.state.endpoints.push(*state);
            }
            Ok(Evaluated::Shares(other)) => shared.push((endpoint, other)),
            Err(why) => {
                let key = endpoint_key(&object_id(&endpoint.metadata));
                built.refusals.insert(key, why);
            }
        }
    }
    shared
}

/// The Endpoint's status once the operator has allocated it (`Ready` is `True`).
fn allocated_status(endpoint: &Endpoint) -> Result<&EndpointStatus, Refusal> {
    let status = endpoint.status.as_ref();
    let conditions = status.map(|s| s.conditions.as_slice()).unwrap_or_default();
    match status {
        Some(status) if conditions::is_true(conditions, READY) => Ok(status),
        _ => {
            let why = conditions::find(conditions, READY)
                .map(|c| format!("{}: {}", c.reason, c.message))
                .unwrap_or_else(|| "not looked at yet".to_owned());
            Err(refusal(
                reason::NOT_ALLOCATED,
                format!("waiting for the operator's allocation ({why})"),
            ))
        }
    }
}

/// An Endpoint with a namespace of its own, from its status: the network, the interface, the
/// address, the MAC and its DNS names (`default_route` false), and whether it claims its
/// namespace's default route.
fn own_endpoint<'n>(
    inputs: &Inputs<'_>,
    network_of: impl Fn(&str) -> Option<&'n Network>,
    endpoint: &Endpoint,
    status: &EndpointStatus,
) -> Result<(EndpointState, bool), Refusal> {
    let netns = endpoint_netns(inputs, endpoint)?;
    let Some((network_name, network)) = status
        .network
        .as_deref()
        .and_then(|name| Some((name, network_of(name)?)))
    else {
        return Err(refusal(
            reason::NETWORK_NOT_READY,
            format!(
                "network {} is not known on this node yet",
                status.network.as_deref().unwrap_or("(none)")
            ),
        ));
    };
    let mut claims_route = false;
    let attachment = match network.spec.driver {
        pier_crds::Driver::Null => Attachment::Null {
            network: network_name.to_owned(),
        },
        pier_crds::Driver::Host => Attachment::Host {
            network: network_name.to_owned(),
        },
        pier_crds::Driver::Bridge | pier_crds::Driver::Overlay => {
            let bridge = bridge_attachment(inputs, network_name, network, status)?;
            // The operator names one Endpoint per namespace; a second claim is a status not
            // updated yet, and a namespace has one default route. A Pod's is its cluster
            // network's, whatever a status (of an older operator) says.
            claims_route = bridge.default_route && endpoint.spec.target.pod.is_none();
            Attachment::Bridge(BridgeAttachment {
                default_route: false,
                ..bridge
            })
        }
    };
    let mut dns_names = status.dns_names.iter().cloned();
    let state = EndpointState {
        id: object_id(&endpoint.metadata),
        uid: endpoint.metadata.uid.clone().unwrap_or_default(),
        name: dns_names.next().unwrap_or_default(),
        aliases: dns_names.collect(),
        netns,
        attachment,
    };
    Ok((state, claims_route))
}

/// Where the Endpoint's namespace is on this node.
fn endpoint_netns(inputs: &Inputs<'_>, endpoint: &Endpoint) -> Result<Netns, Refusal> {
    let namespace = endpoint.metadata.namespace.as_deref().unwrap_or_default();
    let target = &endpoint.spec.target;
    if let Some(named) = &target.netns {
        if !inputs.netns_targets {
            return Err(refusal(
                reason::NETNS_TARGETS_DISABLED,
                format!(
                    "netns targets are off on node {} (in a cluster, Pods are the targets; a named \
                     namespace is made and used by hand): enable them with the chart value \
                     node.netnsTargets=true (pier node --netns-targets)",
                    inputs.node
                ),
            ));
        }
        return Ok(Netns::Named(named.name.clone()));
    }
    let Some(pod) = &target.pod else {
        return Err(refusal(
            reason::NOT_ALLOCATED,
            "the target names no namespace".to_owned(),
        ));
    };
    let pod_id = format!("{namespace}/{}", pod.name);
    match inputs.pod_netns.get(&pod_id) {
        Some(path) => Ok(Netns::Path(path.clone())),
        None => Err(refusal(
            reason::POD_NETNS_NOT_FOUND,
            format!(
                "no process of pod {pod_id} found on node {} (is it running?)",
                inputs.node
            ),
        )),
    }
}

/// A veth into a bridge network, with everything the operator allocated in the status.
fn bridge_attachment(
    inputs: &Inputs<'_>,
    network_name: &str,
    network: &Network,
    status: &EndpointStatus,
) -> Result<BridgeAttachment, Refusal> {
    let Some(addressing) = Addressing::of(network) else {
        return Err(refusal(
            reason::NETWORK_NOT_READY,
            format!("network {network_name} has no subnet and gateway yet"),
        ));
    };
    if network.spec.driver == pier_crds::Driver::Overlay {
        overlay_ready(inputs, network_name, network)?;
    }
    if let Some((subnet, host)) = addressing
        .v4
        .and_then(|(subnet, _)| Some((subnet, overlapping(subnet, inputs.host_subnets)?)))
    {
        return Err(refusal(
            reason::SUBNET_IN_USE_ON_NODE,
            format!(
                "network {network_name}'s subnet {subnet} overlaps {} on node {}; nothing of the \
                 node's was changed",
                host.source, inputs.node
            ),
        ));
    }
    // An address of each family the network has.
    let address = status.ipv4_address.as_deref().and_then(|a| a.parse().ok());
    let address6 = status.ipv6_address.as_deref().and_then(|a| a.parse().ok());
    let allocated = (
        address.is_some() == addressing.v4.is_some()
            && address6.is_some() == addressing.v6.is_some(),
        status.mac_address.as_ref(),
        status.interface.as_ref(),
        !status.dns_names.is_empty(),
    );
    let (true, Some(mac), Some(interface), true) = allocated else {
        return Err(refusal(
            reason::NOT_ALLOCATED,
            "the status has no address, MAC, interface or DNS names yet".to_owned(),
        ));
    };
    // A status an older operator wrote has no `defaultRoute`: it claims the route, and the oldest
    // claim of the namespace keeps it (see `build_endpoints`), which is the operator's own rule.
    // So a node upgraded before its operator keeps every endpoint it has.
    let default_route = status.default_route.unwrap_or(true);
    Ok(BridgeAttachment {
        network: network_name.to_owned(),
        interface: interface.clone(),
        address,
        address6,
        mac: mac.clone(),
        default_route,
    })
}

/// What an overlay network needs on this node besides a bridge network's: its VXLAN id and the
/// node's tunnel address.
fn overlay_ready(
    inputs: &Inputs<'_>,
    network_name: &str,
    network: &Network,
) -> Result<(), Refusal> {
    if network.status.as_ref().and_then(|s| s.vxlan_id).is_none() {
        return Err(refusal(
            reason::NETWORK_NOT_READY,
            format!("overlay network {network_name} has no VXLAN id yet"),
        ));
    }
    if inputs.tunnel.is_none() {
        let why = inputs.tunnel_problem.unwrap_or("not detected yet");
        return Err(refusal(
            reason::NO_TUNNEL_ADDRESS,
            format!(
                "overlay network {network_name} needs node {}'s tunnel address ({why}): pass \
                 --tunnel-address (PIER_TUNNEL_ADDRESS; the chart sets it from the Pod's \
                 status.hostIP)",
                inputs.node
            ),
        ));
    }
    Ok(())
}

/// Container mode: the namespace of the Endpoint shared, once that one is on the node.
fn build_shared_endpoints(shared: Vec<(&Endpoint, String)>, built: &mut Built) {
    let own_namespaces: HashMap<String, Netns> = built
        .state
        .endpoints
        .iter()
        .map(|e| (e.id.clone(), e.netns.clone()))
        .collect();
    for (endpoint, other) in shared {
        let netns = own_namespaces.get(&other);
        match shared_endpoint(endpoint, other, netns) {
            Ok(state) => built.state.endpoints.push(state),
            Err(why) => {
                let key = endpoint_key(&object_id(&endpoint.metadata));
                built.refusals.insert(key, why);
            }
        }
    }
}

/// A container-mode endpoint sharing the namespace of Endpoint `other`, once that one is on the
/// node with a namespace of its own (`netns`).
pub fn shared_endpoint(
    endpoint: &Endpoint,
    other: String,
    netns: Option<&Netns>,
) -> Result<EndpointState, Refusal> {
    let Some(netns) = netns else {
        return Err(refusal(
            reason::ENDPOINT_NOT_FOUND,
            format!(
                "endpoint {other} (whose namespace this one shares) is not attached on this node"
            ),
        ));
    };
    // A sharer has no DNS name of its own (its status lists none), as in Docker.
    let mut dns_names = endpoint
        .status
        .iter()
        .flat_map(|s| s.dns_names.iter().cloned());
    Ok(EndpointState {
        id: object_id(&endpoint.metadata),
        uid: endpoint.metadata.uid.clone().unwrap_or_default(),
        name: dns_names.next().unwrap_or_default(),
        aliases: dns_names.collect(),
        netns: netns.clone(),
        attachment: Attachment::Shared { endpoint: other },
    })
}

/// Where each endpoint's published ports lead: `(endpoint id, address)` by the `id` named in a
/// PortPublish. A container-mode endpoint's ports lead to the endpoint whose namespace it shares,
/// at that one's address (Docker publishes a shared namespace's ports on its owner); the
/// operator resolves it the same way.
fn port_destinations(state: &NodeState) -> HashMap<&str, Destination<'_>> {
    let addresses: HashMap<&str, Addresses> = state
        .endpoints
        .iter()
        .filter_map(|e| match &e.attachment {
            Attachment::Bridge(bridge) => Some((e.id.as_str(), (bridge.address, bridge.address6))),
            _ => None,
        })
        .collect();
    state
        .endpoints
        .iter()
        .filter_map(|e| {
            let receiver = match &e.attachment {
                Attachment::Shared { endpoint } => endpoint.as_str(),
                _ => e.id.as_str(),
            };
            let address = addresses.get(receiver)?;
            Some((e.id.as_str(), (receiver, *address)))
        })
        .collect()
}

/// The published ports of this node's PortPublishes whose endpoint is here.
fn build_ports(inputs: &Inputs<'_>, built: &mut Built) {
    let mut ports: Vec<&PortPublish> = inputs
        .ports
        .iter()
        .map(|p| &**p)
        .filter(|p| ports_are_mine(inputs, p))
        .collect();
    ports.sort_by_key(|p| object_id(&p.metadata));
    let destinations = port_destinations(&built.state);
    let mut published = Vec::new();
    for publish in ports {
        let id = object_id(&publish.metadata);
        let destination = destinations.get(ports_endpoint(publish).as_str()).copied();
        match publish_ports(&id, publish, destination) {
            Ok(mut these) => published.append(&mut these),
            Err(why) => {
                built.refusals.insert(ports_key(&id), why);
            }
        }
    }
    built.state.ports = published;
}

/// Where a PortPublish's ports lead: the receiving endpoint's id and its addresses.
pub type Destination<'a> = (&'a str, Addresses);

/// The id of the Endpoint a PortPublish names.
pub fn ports_endpoint(publish: &PortPublish) -> String {
    let namespace = publish.metadata.namespace.as_deref().unwrap_or_default();
    format!("{namespace}/{}", publish.spec.endpoint)
}

/// One PortPublish's ports to `destination` (found from [`ports_endpoint`]), or why it is not
/// published here.
pub fn publish_ports(
    id: &str,
    publish: &PortPublish,
    destination: Option<Destination<'_>>,
) -> Result<Vec<PublishedPort>, Refusal> {
    let status = publish
        .status
        .as_ref()
        .filter(|s| conditions::is_true(&s.conditions, READY))
        .ok_or_else(|| {
            refusal(
                reason::NOT_ALLOCATED,
                "waiting for the operator to allocate the host ports".to_owned(),
            )
        })?;
    let Some((receiver, address)) = destination else {
        return Err(refusal(
            reason::ENDPOINT_NOT_ATTACHED,
            format!(
                "endpoint {} has no interface on a bridge network of this node, nor shares the \
                 namespace of an endpoint that has",
                publish.spec.endpoint
            ),
        ));
    };
    published_ports(id, receiver, address, status).ok_or_else(|| {
        refusal(
            reason::NOT_ALLOCATED,
            "the status's ports are not valid host ports".to_owned(),
        )
    })
}

/// Leaves out of `built` the published ports the node could not hold (`refused`, see
/// [`crate::kernel::host_ports`]) and refuses each PortPublish concerned, naming its ports left out and
/// those still live. Refusals from [`build`] stay as they are.
pub fn refuse_ports(built: &mut Built, refused: &BTreeMap<HostPort, Refused>, node: &str) {
    if refused.is_empty() {
        return;
    }
    let mut left_out: BTreeMap<String, Vec<(HostPort, &Refused)>> = BTreeMap::new();
    built.state.ports.retain(|port| {
        let host = HostPort::of(port);
        match refused.get(&host) {
            Some(why) => {
                left_out
                    .entry(port.id.clone())
                    .or_default()
                    .push((host, why));
                false
            }
            None => true,
        }
    });
    for (id, ports) in left_out {
        let in_use: Vec<String> = ports
            .iter()
            .filter(|(_, why)| **why == Refused::InUse)
            .map(|(port, _)| port.to_string())
            .collect();
        let failed: Vec<String> = ports
            .iter()
            .filter_map(|(port, why)| match why {
                Refused::Failed(message) => {
                    Some(format!("cannot hold host port {port}: {message}"))
                }
                Refused::InUse => None,
            })
            .collect();
        let mut parts = Vec::new();
        if !in_use.is_empty() {
            parts.push(format!(
                "host port {} is in use on node {node} (a process of the node has it and keeps \
                 it); published once it is free",
                in_use.join(", ")
            ));
        }
        parts.extend(failed);
        let live = super::portpublish::published_message(&id, &built.state, node);
        if built.state.ports.iter().any(|p| p.id == id) {
            parts.push(live);
        }
        let reason = if in_use.is_empty() {
            reason::PUBLISH_FAILED
        } else {
            reason::PORT_IN_USE_ON_NODE
        };
        built.refusals.entry(ports_key(&id)).or_insert(Refusal {
            reason,
            message: parts.join("; "),
        });
    }
}

/// The subnets and gateways the operator recorded for a bridge or overlay Network: one of each
/// family its spec asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Addressing {
    v4: Option<(Ipv4Net, Ipv4Addr)>,
    v6: Option<(Ipv6Net, Ipv6Addr)>,
}

impl Addressing {
    /// `None` until the operator has recorded every family the spec asks for.
    fn of(network: &Network) -> Option<Addressing> {
        let status = network.status.as_ref()?;
        let v4 = if network.spec.has_ipv4() {
            let subnet: Ipv4Net = status.subnet.as_deref()?.parse().ok()?;
            let gateway: Ipv4Addr = status.gateway.as_deref()?.parse().ok()?;
            Some(subnet.contains(&gateway).then_some((subnet, gateway))?)
        } else {
            None
        };
        let v6 = if network.spec.has_ipv6() {
            let subnet: Ipv6Net = status.ipv6_subnet.as_deref()?.parse().ok()?;
            let gateway: Ipv6Addr = status.ipv6_gateway.as_deref()?.parse().ok()?;
            Some(subnet.contains(&gateway).then_some((subnet, gateway))?)
        } else {
            None
        };
        Some(Addressing { v4, v6 })
    }
}

/// The MTU the operator chose (`status.mtu`), else the spec's, else Docker's default.
fn network_mtu(network: &Network) -> u32 {
    network
        .status
        .as_ref()
        .and_then(|s| s.mtu)
        .or(network.spec.mtu)
        .and_then(|mtu| u32::try_from(mtu).ok())
        .unwrap_or(pier_crds::network::DEFAULT_MTU.unsigned_abs())
}

/// Everything of a Network that its endpoints' evaluation and its [`NetworkState`] read: a
/// change of anything else (the operator rewrites the status's endpoint count for every
/// endpoint it allocates) changes nothing built from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkFacts {
    driver: pier_crds::Driver,
    addressing: Option<Addressing>,
    has_vxlan_id: bool,
    /// The network as the state has it (`None`: not ready to be one).
    pub state: Option<NetworkState>,
}

impl NetworkFacts {
    pub fn of(network: &Network) -> NetworkFacts {
        NetworkFacts {
            driver: network.spec.driver,
            addressing: Addressing::of(network),
            has_vxlan_id: network.status.as_ref().and_then(|s| s.vxlan_id).is_some(),
            state: network_state(network),
        }
    }
}

fn network_state(network: &Network) -> Option<NetworkState> {
    let (driver, addressing) = match network.spec.driver {
        pier_crds::Driver::Bridge => (Driver::Bridge, Addressing::of(network)?),
        pier_crds::Driver::Overlay => (Driver::Overlay, Addressing::of(network)?),
        pier_crds::Driver::Host => (Driver::Host, Addressing { v4: None, v6: None }),
        pier_crds::Driver::Null => (Driver::Null, Addressing { v4: None, v6: None }),
    };
    Some(NetworkState {
        name: network.metadata.name.clone()?,
        uid: network.metadata.uid.clone()?,
        driver,
        subnet: addressing.v4.map(|(subnet, _)| subnet),
        gateway: addressing.v4.map(|(_, gateway)| gateway),
        subnet6: addressing.v6.map(|(subnet, _)| subnet),
        gateway6: addressing.v6.map(|(_, gateway)| gateway),
        mtu: network_mtu(network),
        internal: network.spec.internal,
        dns: network.spec.dns,
        vxlan_id: match driver {
            Driver::Overlay => Some(network.status.as_ref()?.vxlan_id?),
            _ => None,
        },
    })
}

/// An endpoint's addresses: IPv4, IPv6 (each when its network has the family).
pub type Addresses = (Option<Ipv4Addr>, Option<Ipv6Addr>);

/// The status's ports, each to the endpoint's address of its host address's family.
fn published_ports(
    id: &str,
    endpoint: &str,
    (address, address6): Addresses,
    status: &pier_crds::PortPublishStatus,
) -> Option<Vec<PublishedPort>> {
    status
        .ports
        .iter()
        .map(|port| {
            let host_ip: IpAddr = if port.host_ip.is_empty() {
                Ipv4Addr::UNSPECIFIED.into()
            } else {
                port.host_ip.parse().ok()?
            };
            let host_ip = host_ip.to_canonical();
            let endpoint_address: IpAddr = match host_ip {
                IpAddr::V4(_) => address?.into(),
                IpAddr::V6(_) => address6?.into(),
            };
            Some(PublishedPort {
                id: id.to_owned(),
                endpoint: endpoint.to_owned(),
                host_ip,
                host_port: u16::try_from(port.host_port).ok().filter(|p| *p > 0)?,
                protocol: port.protocol,
                endpoint_address,
                container_port: u16::try_from(port.container_port).ok().filter(|p| *p > 0)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use k8s_openapi::jiff::Timestamp;
    use pier_crds::endpoint::{LocalObjectReference, NetnsTarget};
    use pier_crds::portpublish::PublishedPortStatus;
    use pier_crds::{
        EndpointSpec, EndpointStatus, EndpointTarget, NetworkSpec, NetworkStatus, PortPublishSpec,
        PortPublishStatus,
    };

    const NODE: &str = "node-a";

    fn ready() -> Vec<pier_crds::Condition> {
        vec![conditions::observe(
            &[],
            READY,
            true,
            "Allocated",
            "",
            Some(1),
        )]
    }

    fn meta(namespace: Option<&str>, name: &str, age: i64) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: namespace.map(Into::into),
            uid: Some(format!("uid-{name}")),
            creation_timestamp: Some(Time(
                Timestamp::from_second(1_700_000_000 + age).expect("timestamp"),
            )),
            ..ObjectMeta::default()
        }
    }

    fn bridge(name: &str, subnet: &str, gateway: &str) -> Arc<Network> {
        Arc::new(Network {
            metadata: meta(None, name, 0),
            spec: NetworkSpec {
                mtu: Some(1500),
                dns: true,
                ..NetworkSpec::default()
            },
            status: Some(NetworkStatus {
                subnet: Some(subnet.into()),
                gateway: Some(gateway.into()),
                conditions: ready(),
                ..NetworkStatus::default()
            }),
        })
    }

    fn endpoint(
        name: &str,
        netns: &str,
        network: &str,
        address: &str,
        iface: &str,
        age: i64,
    ) -> Arc<Endpoint> {
        Arc::new(Endpoint {
            metadata: meta(Some("default"), name, age),
            spec: EndpointSpec {
                network: Some(network.into()),
                target: EndpointTarget {
                    netns: Some(NetnsTarget {
                        name: netns.into(),
                        node: None,
                    }),
                    ..EndpointTarget::default()
                },
                ..EndpointSpec::default()
            },
            status: Some(EndpointStatus {
                node: Some(NODE.into()),
                network: Some(network.into()),
                ipv4_address: Some(address.into()),
                mac_address: Some("02:42:ac:12:00:02".into()),
                interface: Some(iface.into()),
                default_route: Some(true),
                dns_names: vec![name.into()],
                conditions: ready(),
                ..EndpointStatus::default()
            }),
        })
    }

    fn with_status(
        endpoint: Arc<Endpoint>,
        change: impl FnOnce(&mut EndpointStatus),
    ) -> Arc<Endpoint> {
        let mut endpoint = (*endpoint).clone();
        if let Some(status) = endpoint.status.as_mut() {
            change(status);
        }
        Arc::new(endpoint)
    }

    fn sharer(name: &str, other: &str) -> Arc<Endpoint> {
        Arc::new(Endpoint {
            metadata: meta(Some("default"), name, 5),
            spec: EndpointSpec {
                target: EndpointTarget {
                    endpoint: Some(LocalObjectReference { name: other.into() }),
                    ..EndpointTarget::default()
                },
                ..EndpointSpec::default()
            },
            status: Some(EndpointStatus {
                node: Some(NODE.into()),
                conditions: ready(),
                ..EndpointStatus::default()
            }),
        })
    }

    fn publish(name: &str, endpoint: &str, host_port: i32) -> Arc<PortPublish> {
        Arc::new(PortPublish {
            metadata: meta(Some("default"), name, 0),
            spec: PortPublishSpec {
                endpoint: endpoint.into(),
                ports: vec![],
            },
            status: Some(PortPublishStatus {
                node: Some(NODE.into()),
                ports: vec![PublishedPortStatus {
                    container_port: 80,
                    protocol: pier_crds::Protocol::Tcp,
                    host_ip: "0.0.0.0".into(),
                    host_port,
                }],
                conditions: ready(),
                ..PortPublishStatus::default()
            }),
        })
    }

    fn run(
        networks: &[Arc<Network>],
        endpoints: &[Arc<Endpoint>],
        ports: &[Arc<PortPublish>],
        host_subnets: &[HostSubnet],
    ) -> Built {
        build(Inputs {
            node: NODE,
            networks,
            endpoints,
            ports,
            host_subnets,
            pod_netns: &HashMap::new(),
            netns_targets: true,
            remote_endpoints: &[],
            tunnels: &HashMap::new(),
            tunnel: None,
            tunnel_problem: None,
        })
    }

    fn overlay(name: &str, subnet: &str, gateway: &str) -> Arc<Network> {
        let mut network = (*bridge(name, subnet, gateway)).clone();
        network.spec.driver = pier_crds::Driver::Overlay;
        network.spec.mtu = None;
        if let Some(status) = network.status.as_mut() {
            status.vxlan_id = Some(4096);
            status.mtu = Some(1450);
        }
        Arc::new(network)
    }

    /// An overlay on this node: its endpoints on other nodes with a recorded tunnel address are
    /// in the state (sorted, with names), the rest (not allocated, being deleted, on a node
    /// without a tunnel address, on a bridge network) are not; the MTU is the operator's.
    #[test]
    fn an_overlays_endpoints_elsewhere_become_remote_endpoints() {
        let networks = [
            overlay("ov", "10.20.0.0/24", "10.20.0.1"),
            bridge("br", "172.18.0.0/16", "172.18.0.1"),
        ];
        let endpoints = [endpoint("local", "local", "ov", "10.20.0.2", "eth0", 1)];
        fn on(node: &'static str) -> impl FnOnce(&mut EndpointStatus) {
            move |s| s.node = Some(node.to_owned())
        }
        let far = with_status(
            endpoint("far", "x", "ov", "10.20.0.3", "eth0", 2),
            on("node-b"),
        );
        let mut aliased = (*endpoint("alias", "y", "ov", "10.20.0.4", "eth0", 3)).clone();
        if let Some(s) = aliased.status.as_mut() {
            s.node = Some("node-c".into());
            s.dns_names = vec!["alias".into(), "www".into()];
        }
        let nowhere = with_status(
            endpoint("gone", "z", "ov", "10.20.0.5", "eth0", 4),
            on("node-x"),
        );
        let waiting = with_status(endpoint("wait", "w", "ov", "10.20.0.6", "eth0", 5), |s| {
            s.node = Some("node-b".into());
            s.conditions.clear();
        });
        let mut deleting = (*endpoint("del", "d", "ov", "10.20.0.7", "eth0", 6)).clone();
        deleting.metadata.deletion_timestamp = deleting.metadata.creation_timestamp.clone();
        let deleting = with_status(Arc::new(deleting), on("node-b"));
        let bridged = with_status(
            endpoint("br1", "b", "br", "172.18.0.2", "eth0", 7),
            on("node-b"),
        );
        let remote = [far, Arc::new(aliased), nowhere, waiting, deleting, bridged];
        let tunnels = HashMap::from([
            ("node-b".to_owned(), Ipv4Addr::new(10, 0, 0, 2)),
            ("node-c".to_owned(), Ipv4Addr::new(10, 0, 0, 3)),
        ]);
        let built = build(Inputs {
            node: NODE,
            networks: &networks,
            endpoints: &endpoints,
            ports: &[],
            host_subnets: &[],
            pod_netns: &HashMap::new(),
            netns_targets: true,
            remote_endpoints: &remote,
            tunnels: &tunnels,
            tunnel: Some(Ipv4Addr::new(10, 0, 0, 1)),
            tunnel_problem: None,
        });
        assert!(built.refusals.is_empty(), "{:?}", built.refusals);
        assert_eq!(built.state.tunnel, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(built.state.networks[0].vxlan_id, Some(4096));
        assert_eq!(built.state.networks[0].mtu, 1450);
        let remote: Vec<(&str, &str, Ipv4Addr, &[String])> = built
            .state
            .remote_endpoints
            .iter()
            .map(|r| {
                (
                    r.id.as_str(),
                    r.node.as_str(),
                    r.tunnel,
                    r.aliases.as_slice(),
                )
            })
            .collect();
        assert_eq!(
            remote,
            vec![
                (
                    "default/alias",
                    "node-c",
                    Ipv4Addr::new(10, 0, 0, 3),
                    &["www".to_owned()][..]
                ),
                ("default/far", "node-b", Ipv4Addr::new(10, 0, 0, 2), &[][..]),
            ]
        );
    }

    /// Without a tunnel address, an overlay endpoint is refused with a reason that says how to
    /// give one; bridge endpoints and the state without overlays are as before.
    #[test]
    fn an_overlay_endpoint_needs_the_nodes_tunnel_address() {
        let networks = [
            overlay("ov", "10.20.0.0/24", "10.20.0.1"),
            bridge("br", "172.18.0.0/16", "172.18.0.1"),
        ];
        let endpoints = [
            endpoint("o", "o", "ov", "10.20.0.2", "eth0", 1),
            endpoint("b", "b", "br", "172.18.0.2", "eth0", 2),
        ];
        let built = run(&networks, &endpoints, &[], &[]);
        let refusal = &built.refusals[&endpoint_key("default/o")];
        assert_eq!(refusal.reason, reason::NO_TUNNEL_ADDRESS);
        assert!(
            refusal.message.contains("--tunnel-address"),
            "{}",
            refusal.message
        );
        assert_eq!(built.state.endpoints.len(), 1);
        assert_eq!(built.state.tunnel, None);
        assert!(built.state.remote_endpoints.is_empty());
    }

    /// In a cluster (`pier node` without `--netns-targets`) a named netns is refused with a
    /// reason that says how to enable it; everything else on the node goes on.
    #[test]
    fn netns_targets_are_refused_where_they_are_off() {
        let networks = [bridge("tage", "172.18.0.0/16", "172.18.0.1")];
        let endpoints = [endpoint("con1", "con1", "tage", "172.18.0.2", "eth0", 1)];
        let built = build(Inputs {
            node: NODE,
            networks: &networks,
            endpoints: &endpoints,
            ports: &[],
            host_subnets: &[],
            pod_netns: &HashMap::new(),
            netns_targets: false,
            remote_endpoints: &[],
            tunnels: &HashMap::new(),
            tunnel: None,
            tunnel_problem: None,
        });
        assert!(built.state.endpoints.is_empty(), "{:?}", built.state);
        assert!(
            built.state.networks.is_empty(),
            "no bridge for a refused endpoint"
        );
        let refusal = &built.refusals[&endpoint_key("default/con1")];
        assert_eq!(refusal.reason, reason::NETNS_TARGETS_DISABLED);
        assert!(
            refusal.message.contains("node.netnsTargets=true") && !refusal.message.contains("  "),
            "{}",
            refusal.message
        );
        let on = run(&networks, &endpoints, &[], &[]);
        assert_eq!(on.state.endpoints.len(), 1, "{:?}", on.refusals);
    }

    #[test]
    fn lesson_connect_gives_two_interfaces_and_one_default_route() {
        let networks = [
            bridge("tage", "172.18.0.0/16", "172.18.0.1"),
            bridge("other", "172.19.0.0/16", "172.19.0.1"),
        ];
        // The operator's choice: con3's first network carries its default route.
        let endpoints = [
            with_status(
                endpoint("con3-tage", "con3", "tage", "172.18.0.4", "eth1", 10),
                |s| s.default_route = Some(false),
            ),
            endpoint("con3", "con3", "other", "172.19.0.2", "eth0", 1),
            endpoint("con1", "con1", "tage", "172.18.0.2", "eth0", 2),
        ];
        let built = run(&networks, &endpoints, &[], &[]);
        assert!(built.refusals.is_empty(), "{:?}", built.refusals);
        assert_eq!(built.state.validate(), Ok(()));
        assert_eq!(built.state.networks.len(), 2);
        let routes: Vec<(&str, bool)> = built
            .state
            .endpoints
            .iter()
            .map(|e| match &e.attachment {
                Attachment::Bridge(b) => (e.id.as_str(), b.default_route),
                _ => (e.id.as_str(), false),
            })
            .collect();
        assert_eq!(
            routes,
            vec![
                ("default/con3", true),
                ("default/con1", true),
                ("default/con3-tage", false)
            ]
        );
    }

    #[test]
    fn subnet_in_use_on_the_node_is_refused_and_the_rest_goes_on() {
        let networks = [
            bridge("bridge", "172.17.0.0/16", "172.17.0.1"),
            bridge("tage", "172.18.0.0/16", "172.18.0.1"),
        ];
        let endpoints = [
            endpoint("a", "a", "bridge", "172.17.0.2", "eth0", 1),
            endpoint("b", "b", "tage", "172.18.0.2", "eth0", 2),
        ];
        let docker = [HostSubnet {
            subnet: "172.17.0.0/16".parse().expect("subnet"),
            source: "address 172.17.0.1/16 on docker0".into(),
        }];
        let built = run(&networks, &endpoints, &[publish("web", "a", 8000)], &docker);
        let refusal = &built.refusals[&endpoint_key("default/a")];
        assert_eq!(refusal.reason, reason::SUBNET_IN_USE_ON_NODE);
        assert!(refusal.message.contains("docker0"), "{}", refusal.message);
        assert_eq!(
            built.refusals[&ports_key("default/web")].reason,
            reason::ENDPOINT_NOT_ATTACHED
        );
        assert_eq!(built.state.endpoints.len(), 1);
        assert_eq!(built.state.networks.len(), 1);
        assert_eq!(built.state.networks[0].name, "tage");
        assert!(built.state.ports.is_empty());
    }

    #[test]
    fn ports_carry_the_endpoint_address_and_other_nodes_are_ignored() {
        let networks = [bridge("bridge", "172.17.0.0/16", "172.17.0.1")];
        let mut elsewhere = (*endpoint("far", "far", "bridge", "172.17.0.9", "eth0", 3)).clone();
        if let Some(status) = elsewhere.status.as_mut() {
            status.node = Some("node-b".into());
        }
        let endpoints = [
            endpoint("web", "web", "bridge", "172.17.0.2", "eth0", 1),
            Arc::new(elsewhere),
        ];
        let built = run(&networks, &endpoints, &[publish("web", "web", 32772)], &[]);
        assert_eq!(built.state.endpoints.len(), 1);
        assert_eq!(built.state.ports.len(), 1);
        let port = &built.state.ports[0];
        assert_eq!(port.host_port, 32772);
        assert_eq!(port.container_port, 80);
        assert_eq!(port.endpoint_address, Ipv4Addr::new(172, 17, 0, 2));
        assert_eq!(port.endpoint, "default/web");
    }

    #[test]
    fn ports_the_node_cannot_hold_are_left_out_and_the_rest_stays_live() {
        let networks = [bridge("bridge", "172.17.0.0/16", "172.17.0.1")];
        let endpoints = [endpoint("web", "web", "bridge", "172.17.0.2", "eth0", 1)];
        let mut two = (*publish("two", "web", 8000)).clone();
        if let Some(status) = two.status.as_mut() {
            status.ports.push(PublishedPortStatus {
                container_port: 81,
                protocol: pier_crds::Protocol::Tcp,
                host_ip: "127.0.0.1".into(),
                host_port: 8001,
            });
        }
        let ports = [Arc::new(two), publish("other", "web", 9000)];
        let mut built = run(&networks, &endpoints, &ports, &[]);
        assert_eq!(built.state.ports.len(), 3);
        let held = |port| HostPort {
            ip: Ipv4Addr::UNSPECIFIED.into(),
            protocol: pier_crds::Protocol::Tcp,
            port,
        };
        refuse_ports(
            &mut built,
            &BTreeMap::from([(held(8000), Refused::InUse)]),
            NODE,
        );
        let live: Vec<u16> = built.state.ports.iter().map(|p| p.host_port).collect();
        assert_eq!(
            live,
            vec![9000, 8001],
            "the other port and the other PortPublish stay"
        );
        let refusal = &built.refusals[&ports_key("default/two")];
        assert_eq!(refusal.reason, reason::PORT_IN_USE_ON_NODE);
        assert_eq!(
            refusal.message,
            "host port 0.0.0.0:8000/tcp is in use on node node-a (a process of the node has it \
             and keeps it); published once it is free; 127.0.0.1:8001->81/tcp live on node node-a"
        );
        assert!(!built.refusals.contains_key(&ports_key("default/other")));

        let mut built = run(&networks, &endpoints, &ports, &[]);
        refuse_ports(
            &mut built,
            &BTreeMap::from([(held(9000), Refused::Failed("Permission denied".into()))]),
            NODE,
        );
        let refusal = &built.refusals[&ports_key("default/other")];
        assert_eq!(refusal.reason, reason::PUBLISH_FAILED);
        assert_eq!(
            refusal.message,
            "cannot hold host port 0.0.0.0:9000/tcp: Permission denied"
        );
    }

    #[test]
    fn deleting_and_unallocated_objects_are_left_out() {
        let networks = [bridge("bridge", "172.17.0.0/16", "172.17.0.1")];
        let mut deleting = (*endpoint("gone", "gone", "bridge", "172.17.0.3", "eth0", 1)).clone();
        deleting.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        let mut waiting = (*endpoint("wait", "wait", "bridge", "172.17.0.4", "eth0", 1)).clone();
        if let Some(status) = waiting.status.as_mut() {
            status.conditions = vec![conditions::observe(
                &[],
                READY,
                false,
                "AddressInUse",
                "172.17.0.4 is taken",
                Some(1),
            )];
        }
        let built = run(
            &networks,
            &[Arc::new(deleting), Arc::new(waiting)],
            &[],
            &[],
        );
        assert!(built.state.endpoints.is_empty());
        assert!(built.state.networks.is_empty(), "no endpoint, no bridge");
        let refusal = &built.refusals[&endpoint_key("default/wait")];
        assert_eq!(refusal.reason, reason::NOT_ALLOCATED);
        assert!(refusal.message.contains("AddressInUse"));
        assert!(!built.refusals.contains_key(&endpoint_key("default/gone")));
    }

    #[test]
    fn container_mode_shares_the_namespace_once_the_other_is_here() {
        let networks = [bridge("bridge", "172.17.0.0/16", "172.17.0.1")];
        let endpoints = [
            endpoint("db", "db", "bridge", "172.17.0.2", "eth0", 1),
            sharer("sidecar", "db"),
            sharer("orphan", "missing"),
        ];
        let built = run(&networks, &endpoints, &[], &[]);
        let sidecar = built
            .state
            .endpoints
            .iter()
            .find(|e| e.id == "default/sidecar")
            .expect("sidecar built");
        assert_eq!(sidecar.netns, Netns::Named("db".into()));
        assert_eq!(
            built.refusals[&endpoint_key("default/orphan")].reason,
            reason::ENDPOINT_NOT_FOUND
        );
        assert_eq!(built.state.validate(), Ok(()));
    }

    /// The default route is the operator's choice, whatever the ages; should two statuses claim
    /// it for one namespace (one not updated yet), the older keeps it; without a choice in the
    /// status of an older operator the oldest attachment keeps it.
    #[test]
    fn the_default_route_follows_the_status() {
        let networks = [
            bridge("tage", "172.18.0.0/16", "172.18.0.1"),
            bridge("other", "172.19.0.0/16", "172.19.0.1"),
        ];
        let routes = |endpoints: &[Arc<Endpoint>]| -> Vec<(String, bool)> {
            let built = run(&networks, endpoints, &[], &[]);
            built
                .state
                .endpoints
                .iter()
                .filter_map(|e| match &e.attachment {
                    Attachment::Bridge(b) => Some((e.id.clone(), b.default_route)),
                    _ => None,
                })
                .collect()
        };
        let older = endpoint("con3", "con3", "other", "172.19.0.2", "eth0", 1);
        let younger = endpoint("con3-tage", "con3", "tage", "172.18.0.4", "eth1", 10);
        let chosen = [
            with_status(older.clone(), |s| s.default_route = Some(false)),
            younger.clone(),
        ];
        assert_eq!(
            routes(&chosen),
            vec![
                ("default/con3".to_owned(), false),
                ("default/con3-tage".to_owned(), true)
            ]
        );
        assert_eq!(
            routes(&[older.clone(), younger.clone()]),
            vec![
                ("default/con3".to_owned(), true),
                ("default/con3-tage".to_owned(), false)
            ]
        );
        // Statuses of an older operator (no `defaultRoute`): the oldest attachment keeps the
        // route, as before the operator recorded it, and no endpoint is left out.
        let from_an_older_operator = [
            with_status(older, |s| s.default_route = None),
            with_status(younger, |s| s.default_route = None),
        ];
        assert_eq!(
            routes(&from_an_older_operator),
            vec![
                ("default/con3".to_owned(), true),
                ("default/con3-tage".to_owned(), false)
            ]
        );
    }

    /// A dual-stack network and an IPv6-only one: the state has each family the operator
    /// recorded, an endpoint an address of each, and a port published without hostIP leads each
    /// family to the endpoint's address of that family.
    #[test]
    fn dual_stack_and_ipv6_only_networks_reach_the_state() {
        let mut dual = (*bridge("dual", "172.18.0.0/16", "172.18.0.1")).clone();
        dual.spec.ipv6 = true;
        if let Some(status) = dual.status.as_mut() {
            status.ipv6_subnet = Some("fd00:18::/64".into());
            status.ipv6_gateway = Some("fd00:18::1".into());
        }
        let mut only6 = (*bridge("only6", "172.19.0.0/16", "172.19.0.1")).clone();
        only6.spec.ipv6 = true;
        only6.spec.ipv4 = false;
        if let Some(status) = only6.status.as_mut() {
            status.subnet = None;
            status.gateway = None;
            status.ipv6_subnet = Some("fd00:19::/64".into());
            status.ipv6_gateway = Some("fd00:19::1".into());
        }
        let networks = [Arc::new(dual), Arc::new(only6)];
        let on_dual = with_status(endpoint("c1", "c1", "dual", "172.18.0.2", "eth0", 1), |s| {
            s.ipv6_address = Some("fd00:18::2".into());
        });
        let on_only6 = with_status(
            endpoint("c2", "c2", "only6", "172.19.0.2", "eth0", 1),
            |s| {
                s.ipv4_address = None;
                s.ipv6_address = Some("fd00:19::2".into());
            },
        );
        let mut web = (*publish("web", "c1", 8000)).clone();
        if let Some(status) = web.status.as_mut() {
            let twin = PublishedPortStatus {
                host_ip: "::".into(),
                ..status.ports[0].clone()
            };
            status.ports.push(twin);
        }
        let built = run(&networks, &[on_dual, on_only6], &[Arc::new(web)], &[]);
        assert!(built.refusals.is_empty(), "{:?}", built.refusals);
        let by_name = built.state.networks_by_name();
        assert_eq!(
            by_name["dual"].subnet6,
            Some("fd00:18::/64".parse().expect("net"))
        );
        assert_eq!(by_name["only6"].subnet, None);
        assert_eq!(
            by_name["only6"].gateway6,
            Some("fd00:19::1".parse().expect("ip"))
        );
        let addresses: Vec<_> = built
            .state
            .endpoints
            .iter()
            .filter_map(|e| match &e.attachment {
                Attachment::Bridge(b) => Some((b.address, b.address6)),
                _ => None,
            })
            .collect();
        assert_eq!(
            addresses,
            [
                (
                    Some("172.18.0.2".parse().expect("ip")),
                    Some("fd00:18::2".parse().expect("ip"))
                ),
                (None, Some("fd00:19::2".parse().expect("ip")))
            ]
        );
        let ports: Vec<String> = built
            .state
            .ports
            .iter()
            .map(|p| format!("{} -> {}", p.host_ip, p.endpoint_address))
            .collect();
        assert_eq!(ports, ["0.0.0.0 -> 172.18.0.2", ":: -> fd00:18::2"]);
    }

    /// A Pod's default route is its cluster network's: no status makes Pier take it.
    #[test]
    fn a_pod_never_gets_the_default_route() {
        let networks = [bridge("tage", "172.18.0.0/16", "172.18.0.1")];
        let mut on_pod = (*endpoint("web-tage", "unused", "tage", "172.18.0.4", "net1", 1)).clone();
        on_pod.spec.target = EndpointTarget {
            pod: Some(pier_crds::endpoint::LocalObjectReference { name: "web".into() }),
            ..EndpointTarget::default()
        };
        if let Some(status) = on_pod.status.as_mut() {
            status.default_route = None;
        }
        let pod_netns =
            HashMap::from([("default/web".to_owned(), PathBuf::from("/proc/1/ns/net"))]);
        let built = build(Inputs {
            node: NODE,
            networks: &networks,
            endpoints: &[Arc::new(on_pod)],
            ports: &[],
            host_subnets: &[],
            pod_netns: &pod_netns,
            netns_targets: true,
            remote_endpoints: &[],
            tunnels: &HashMap::new(),
            tunnel: None,
            tunnel_problem: None,
        });
        let routes: Vec<bool> = built
            .state
            .endpoints
            .iter()
            .filter_map(|e| match &e.attachment {
                Attachment::Bridge(b) => Some(b.default_route),
                _ => None,
            })
            .collect();
        assert_eq!(routes, [false]);
    }

    /// DNS names are those of the status (the Endpoint's name first, then its aliases), not the
    /// spec's; a bridge Endpoint whose status has none waits for the operator.
    #[test]
    fn dns_names_come_from_the_status() {
        let networks = [bridge("tage", "172.18.0.0/16", "172.18.0.1")];
        let mut spec_says = (*endpoint("con1", "con1", "tage", "172.18.0.2", "eth0", 1)).clone();
        spec_says.spec.aliases = Some(vec!["from-spec".into()]);
        let named = with_status(Arc::new(spec_says), |s| {
            s.dns_names = vec!["con1".into(), "web".into(), "www".into()];
        });
        let built = run(&networks, std::slice::from_ref(&named), &[], &[]);
        let state = &built.state.endpoints[0];
        assert_eq!(state.name, "con1");
        assert_eq!(state.aliases, vec!["web".to_owned(), "www".to_owned()]);
        let nameless = with_status(named, |s| s.dns_names.clear());
        let built = run(&networks, &[nameless], &[], &[]);
        assert!(built.state.endpoints.is_empty());
        assert_eq!(
            built.refusals[&endpoint_key("default/con1")].reason,
            reason::NOT_ALLOCATED
        );
    }

    /// `--net container:web` with a PortPublish on the sharer: the ports lead to web's address
    /// (the namespace's owner), as the operator allocated them; without the owner on the node
    /// there is nothing to lead to.
    #[test]
    fn container_mode_ports_lead_to_the_owner_address() {
        let networks = [bridge("bridge", "172.17.0.0/16", "172.17.0.1")];
        let endpoints = [
            endpoint("web", "web", "bridge", "172.17.0.2", "eth0", 1),
            sharer("sidecar", "web"),
        ];
        let ports = [publish("side", "sidecar", 8080)];
        let built = run(&networks, &endpoints, &ports, &[]);
        assert!(built.refusals.is_empty(), "{:?}", built.refusals);
        assert_eq!(built.state.ports.len(), 1);
        let port = &built.state.ports[0];
        assert_eq!(port.id, "default/side");
        assert_eq!(port.endpoint, "default/web");
        assert_eq!(port.endpoint_address, Ipv4Addr::new(172, 17, 0, 2));
        assert_eq!((port.host_port, port.container_port), (8080, 80));

        let built = run(&networks, &[sharer("sidecar", "web")], &ports, &[]);
        assert!(built.state.ports.is_empty());
        assert_eq!(
            built.refusals[&ports_key("default/side")].reason,
            reason::ENDPOINT_NOT_ATTACHED
        );
    }
}
