//! From API objects to the node's [`NodeState`]: a pure function, so what the node daemon does for
//! a set of objects is unit-tested without an API server or a kernel.
//!
//! Every address, MAC, interface and host port comes from a status the operator wrote: the node
//! never invents one (DESIGN.md §2). What cannot go on this node is left out with a reason, and the
//! rest of the node goes on.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;

use ipnet::Ipv4Net;
use pier_crds::conditions::{self, READY, reason};
use pier_crds::{Endpoint, Network, PortPublish};

use crate::dataplane::ObjectKey;
use crate::kernel::host_ports::{HostPort, Refused};
use crate::kernel::hostnet::{HostSubnet, overlapping};
use crate::state::{
    Attachment, BridgeAttachment, Driver, EndpointState, Netns, NetworkState, NodeState, Protocol,
    PublishedPort,
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

fn refuse(
    refusals: &mut BTreeMap<ObjectKey, Refusal>,
    key: ObjectKey,
    reason: &'static str,
    message: String,
) {
    refusals.insert(key, Refusal { reason, message });
}

/// Builds the node's state. Objects being deleted are left out (their kernel objects go).
pub fn build(inputs: Inputs<'_>) -> Built {
    let mut built = Built::default();
    let networks: HashMap<&str, &Network> = inputs
        .networks
        .iter()
        .filter_map(|n| Some((n.metadata.name.as_deref()?, &**n)))
        .collect();
    let mine = |deleting: bool, node: Option<&str>| !deleting && node == Some(inputs.node);

    let mut endpoints: Vec<&Endpoint> = inputs
        .endpoints
        .iter()
        .map(|e| &**e)
        .filter(|e| {
            mine(
                e.metadata.deletion_timestamp.is_some(),
                e.status.as_ref().and_then(|s| s.node.as_deref()),
            ) && e.metadata.uid.is_some()
        })
        .collect();
    // Older first: the first bridge network of a namespace carries its default route, as the
    // network a Docker container was started on does.
    endpoints.sort_by_cached_key(|e| {
        (
            e.metadata.creation_timestamp.clone(),
            object_id(&e.metadata),
        )
    });

    let mut used_networks: BTreeSet<&str> = BTreeSet::new();
    let mut shared: Vec<(&Endpoint, String)> = Vec::new();
    let mut routed_namespaces: BTreeSet<Netns> = BTreeSet::new();
    for endpoint in endpoints {
        let id = object_id(&endpoint.metadata);
        let key = endpoint_key(&id);
        let Some(status) = endpoint.status.as_ref() else {
            continue;
        };
        if !conditions::is_true(&status.conditions, READY) {
            let why = conditions::find(&status.conditions, READY)
                .map(|c| format!("{}: {}", c.reason, c.message))
                .unwrap_or_else(|| "not looked at yet".to_owned());
            refuse(
                &mut built.refusals,
                key,
                reason::NOT_ALLOCATED,
                format!("waiting for the operator's allocation ({why})"),
            );
            continue;
        }
        let namespace = endpoint.metadata.namespace.as_deref().unwrap_or_default();
        let target = &endpoint.spec.target;
        if let Some(other) = &target.endpoint {
            shared.push((endpoint, format!("{namespace}/{}", other.name)));
            continue;
        }
        let netns = if let Some(named) = &target.netns {
            if !inputs.netns_targets {
                refuse(
                    &mut built.refusals,
                    key,
                    reason::NETNS_TARGETS_DISABLED,
                    format!(
                        "netns targets are off on node {} (in a cluster, Pods are the targets; a named \
                         namespace is made and used by hand): enable them with the chart value \
                         node.netnsTargets=true (pier node --netns-targets)",
                        inputs.node
                    ),
                );
                continue;
            }
            Netns::Named(named.name.clone())
        } else if let Some(pod) = &target.pod {
            let pod_id = format!("{namespace}/{}", pod.name);
            match inputs.pod_netns.get(&pod_id) {
                Some(path) => Netns::Path(path.clone()),
                None => {
                    refuse(
                        &mut built.refusals,
                        key,
                        reason::POD_NETNS_NOT_FOUND,
                        format!(
                            "no process of pod {pod_id} found on node {} (is it running?)",
                            inputs.node
                        ),
                    );
                    continue;
                }
            }
        } else {
            continue;
        };
        let Some((network_name, network)) = status
            .network
            .as_deref()
            .and_then(|name| Some((name, *networks.get(name)?)))
        else {
            refuse(
                &mut built.refusals,
                key,
                reason::NETWORK_NOT_READY,
                format!(
                    "network {} is not known on this node yet",
                    status.network.as_deref().unwrap_or("(none)")
                ),
            );
            continue;
        };
        let attachment = match network.spec.driver {
            pier_crds::Driver::Null => Attachment::Null {
                network: network_name.to_owned(),
            },
            pier_crds::Driver::Host => Attachment::Host {
                network: network_name.to_owned(),
            },
            pier_crds::Driver::Bridge => {
                let Some((subnet, _)) = bridge_addressing(network) else {
                    refuse(
                        &mut built.refusals,
                        key,
                        reason::NETWORK_NOT_READY,
                        format!("network {network_name} has no subnet and gateway yet"),
                    );
                    continue;
                };
                if let Some(host) = overlapping(subnet, inputs.host_subnets) {
                    refuse(
                        &mut built.refusals,
                        key,
                        reason::SUBNET_IN_USE_ON_NODE,
                        format!(
                            "network {network_name}'s subnet {subnet} overlaps {} on node {}; \
                             nothing of the node's was changed",
                            host.source, inputs.node
                        ),
                    );
                    continue;
                }
                let allocated = (
                    status.ipv4_address.as_deref().and_then(|a| a.parse().ok()),
                    status.mac_address.as_ref(),
                    status.interface.as_ref(),
                );
                let (Some(address), Some(mac), Some(interface)) = allocated else {
                    refuse(
                        &mut built.refusals,
                        key,
                        reason::NOT_ALLOCATED,
                        "the status has no address, MAC or interface yet".to_owned(),
                    );
                    continue;
                };
                Attachment::Bridge(BridgeAttachment {
                    network: network_name.to_owned(),
                    interface: interface.clone(),
                    address,
                    mac: mac.clone(),
                    default_route: routed_namespaces.insert(netns.clone()),
                })
            }
        };
        used_networks.insert(network_name);
        built.state.endpoints.push(EndpointState {
            id,
            uid: endpoint.metadata.uid.clone().unwrap_or_default(),
            name: endpoint.metadata.name.clone().unwrap_or_default(),
            aliases: endpoint.spec.aliases.clone().unwrap_or_default(),
            netns,
            attachment,
        });
    }

    // Container mode: the namespace of the endpoint shared, once that one is on the node.
    let own_namespaces: HashMap<String, Netns> = built
        .state
        .endpoints
        .iter()
        .map(|e| (e.id.clone(), e.netns.clone()))
        .collect();
    for (endpoint, other) in shared {
        let id = object_id(&endpoint.metadata);
        match own_namespaces.get(&other) {
            Some(netns) => built.state.endpoints.push(EndpointState {
                uid: endpoint.metadata.uid.clone().unwrap_or_default(),
                name: endpoint.metadata.name.clone().unwrap_or_default(),
                aliases: Vec::new(),
                netns: netns.clone(),
                attachment: Attachment::Shared { endpoint: other },
                id,
            }),
            None => refuse(
                &mut built.refusals,
                endpoint_key(&id),
                reason::ENDPOINT_NOT_FOUND,
                format!(
                    "endpoint {other} (whose namespace this one shares) is not attached on this node"
                ),
            ),
        }
    }

    built.state.networks = used_networks
        .iter()
        .filter_map(|name| network_state(networks.get(name)?))
        .collect();

    let addresses: HashMap<&str, Ipv4Addr> = built
        .state
        .endpoints
        .iter()
        .filter_map(|e| match &e.attachment {
            Attachment::Bridge(bridge) => Some((e.id.as_str(), bridge.address)),
            _ => None,
        })
        .collect();
    let mut ports: Vec<&PortPublish> = inputs
        .ports
        .iter()
        .map(|p| &**p)
        .filter(|p| {
            mine(
                p.metadata.deletion_timestamp.is_some(),
                p.status.as_ref().and_then(|s| s.node.as_deref()),
            )
        })
        .collect();
    ports.sort_by_key(|p| object_id(&p.metadata));
    let mut published = Vec::new();
    for publish in ports {
        let id = object_id(&publish.metadata);
        let key = ports_key(&id);
        let Some(status) = publish.status.as_ref() else {
            continue;
        };
        if !conditions::is_true(&status.conditions, READY) {
            refuse(
                &mut built.refusals,
                key,
                reason::NOT_ALLOCATED,
                "waiting for the operator to allocate the host ports".to_owned(),
            );
            continue;
        }
        let namespace = publish.metadata.namespace.as_deref().unwrap_or_default();
        let endpoint = format!("{namespace}/{}", publish.spec.endpoint);
        let Some(address) = addresses.get(endpoint.as_str()) else {
            refuse(
                &mut built.refusals,
                key,
                reason::ENDPOINT_NOT_ATTACHED,
                format!(
                    "endpoint {} has no interface on a bridge network of this node",
                    publish.spec.endpoint
                ),
            );
            continue;
        };
        match published_ports(&id, &endpoint, *address, status) {
            Some(mut these) => published.append(&mut these),
            None => refuse(
                &mut built.refusals,
                key,
                reason::NOT_ALLOCATED,
                "the status's ports are not valid host ports".to_owned(),
            ),
        }
    }
    built.state.ports = published;
    built
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

fn bridge_addressing(network: &Network) -> Option<(Ipv4Net, Ipv4Addr)> {
    let status = network.status.as_ref()?;
    let subnet: Ipv4Net = status.subnet.as_deref()?.parse().ok()?;
    let gateway: Ipv4Addr = status.gateway.as_deref()?.parse().ok()?;
    subnet.contains(&gateway).then_some((subnet, gateway))
}

fn network_state(network: &Network) -> Option<NetworkState> {
    let (driver, addressing) = match network.spec.driver {
        pier_crds::Driver::Bridge => (Driver::Bridge, Some(bridge_addressing(network)?)),
        pier_crds::Driver::Host => (Driver::Host, None),
        pier_crds::Driver::Null => (Driver::Null, None),
    };
    Some(NetworkState {
        name: network.metadata.name.clone()?,
        uid: network.metadata.uid.clone()?,
        driver,
        subnet: addressing.map(|(subnet, _)| subnet),
        gateway: addressing.map(|(_, gateway)| gateway),
        mtu: u32::try_from(network.spec.mtu).unwrap_or(1500),
        internal: network.spec.internal,
        dns: network.spec.dns,
    })
}

fn published_ports(
    id: &str,
    endpoint: &str,
    address: Ipv4Addr,
    status: &pier_crds::PortPublishStatus,
) -> Option<Vec<PublishedPort>> {
    status
        .ports
        .iter()
        .map(|port| {
            Some(PublishedPort {
                id: id.to_owned(),
                endpoint: endpoint.to_owned(),
                host_ip: if port.host_ip.is_empty() {
                    Ipv4Addr::UNSPECIFIED
                } else {
                    port.host_ip.parse().ok()?
                },
                host_port: u16::try_from(port.host_port).ok().filter(|p| *p > 0)?,
                protocol: match port.protocol {
                    pier_crds::Protocol::Tcp => Protocol::Tcp,
                    pier_crds::Protocol::Udp => Protocol::Udp,
                    pier_crds::Protocol::Sctp => Protocol::Sctp,
                },
                endpoint_address: address,
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
                mtu: 1500,
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
        })
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
        let endpoints = [
            endpoint("con3-tage", "con3", "tage", "172.18.0.4", "eth1", 10),
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
            ip: Ipv4Addr::UNSPECIFIED,
            protocol: Protocol::Tcp,
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
        let sharer = |name: &str, other: &str| {
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
        };
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
}
