//! The incremental state against the from-scratch build: random sequences of events (objects
//! added, changed and deleted; namespaces of Pods found; the node's subnets and tunnel
//! changing) must leave [`NodeIndex`] with exactly what [`build::build`] makes of the objects
//! of that moment. And a scoped plan of a projection is the scoped plan of the whole state.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use pier_crds::conditions::{self, ALLOCATED, READY};
use pier_crds::endpoint::{LocalObjectReference, NetnsTarget};
use pier_crds::portpublish::PublishedPortStatus;
use pier_crds::{
    EndpointSpec, EndpointStatus, EndpointTarget, NetworkSpec, NetworkStatus, PortPublishSpec,
    PortPublishStatus,
};
use proptest::prelude::*;

use super::*;
use crate::dataplane::{Snapshot, diff};
use crate::kernel::netlink::{InetConf, Link, LinkKind};

const NODE: &str = "node-a";

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

/// The operator's conditions: `Allocated` (what the node reads of Endpoints and PortPublishes)
/// and `Ready` (what Networks carry).
fn ready(yes: bool) -> Vec<pier_crds::Condition> {
    let reason = if yes { "Allocated" } else { "AddressInUse" };
    [ALLOCATED, READY]
        .into_iter()
        .map(|kind| conditions::observe(&[], kind, yes, reason, "", Some(1)))
        .collect()
}

/// A Network, as the generator describes it.
#[derive(Debug, Clone)]
struct NetworkSpecOf {
    name: u8,
    /// 0 bridge, 1 overlay, 2 null, 3 host.
    driver: u8,
    allocated: bool,
    subnet: u8,
    ipv6: bool,
    /// What the operator rewrites for every endpoint: nothing built depends on it.
    count: u8,
    uid: u8,
}

fn network(spec: &NetworkSpecOf) -> Arc<Network> {
    let name = format!("n{}", spec.name);
    let driver = match spec.driver {
        0 => pier_crds::Driver::Bridge,
        1 => pier_crds::Driver::Overlay,
        2 => pier_crds::Driver::Null,
        _ => pier_crds::Driver::Host,
    };
    let addressed = spec.allocated && driver.has_subnet();
    let mut metadata = meta(None, &name, 0);
    metadata.uid = Some(format!("uid-{name}-{}", spec.uid));
    Arc::new(Network {
        metadata,
        spec: NetworkSpec {
            driver,
            ipv4: true,
            ipv6: spec.ipv6,
            mtu: Some(1500),
            dns: true,
            ..NetworkSpec::default()
        },
        status: Some(NetworkStatus {
            subnet: addressed.then(|| format!("10.{}.0.0/16", spec.subnet)),
            gateway: addressed.then(|| format!("10.{}.0.1", spec.subnet)),
            ipv6_subnet: (addressed && spec.ipv6).then(|| format!("fd00:{}::/64", spec.subnet)),
            ipv6_gateway: (addressed && spec.ipv6).then(|| format!("fd00:{}::1", spec.subnet)),
            vxlan_id: (spec.allocated && spec.driver == 1).then_some(4096),
            endpoints: i32::from(spec.count),
            conditions: ready(spec.allocated),
            ..NetworkStatus::default()
        }),
    })
}

/// An Endpoint, as the generator describes it.
#[derive(Debug, Clone)]
struct EndpointOf {
    name: u8,
    age: u8,
    /// 0..3 a named namespace, 3..5 a Pod, 5.. container mode sharing endpoint `target - 5`.
    target: u8,
    network: u8,
    address: u8,
    interface: u8,
    default_route: Option<bool>,
    allocated: bool,
    elsewhere: bool,
    deleting: bool,
    aliases: u8,
    /// An IPv6 address too (refused on a network without IPv6, as one without on one with).
    v6: bool,
}

fn endpoint(spec: &EndpointOf) -> Arc<Endpoint> {
    let name = format!("e{}", spec.name);
    let mut metadata = meta(Some("default"), &name, i64::from(spec.age));
    if spec.deleting {
        metadata.deletion_timestamp = metadata.creation_timestamp.clone();
    }
    let target = match spec.target {
        0..3 => EndpointTarget {
            netns: Some(NetnsTarget {
                name: format!("ns{}", spec.target),
                node: None,
            }),
            ..EndpointTarget::default()
        },
        3..5 => EndpointTarget {
            pod: Some(LocalObjectReference {
                name: format!("p{}", spec.target - 3),
            }),
            ..EndpointTarget::default()
        },
        other => EndpointTarget {
            endpoint: Some(LocalObjectReference {
                name: format!("e{}", other - 5),
            }),
            ..EndpointTarget::default()
        },
    };
    let shares = target.endpoint.is_some();
    let network = format!("n{}", spec.network);
    let subnet = spec.network;
    let mut dns_names = vec![name.clone()];
    dns_names.extend((0..spec.aliases).map(|a| format!("alias{a}")));
    let status = EndpointStatus {
        node: Some(if spec.elsewhere { "node-b" } else { NODE }.to_owned()),
        network: (!shares).then_some(network),
        ipv4_address: (!shares).then(|| format!("10.{subnet}.0.{}", 2 + spec.address)),
        ipv6_address: (!shares && spec.v6).then(|| format!("fd00:{subnet}::{}", 2 + spec.address)),
        mac_address: (!shares).then(|| format!("02:42:0a:00:00:{:02x}", spec.address)),
        interface: (!shares).then(|| format!("eth{}", spec.interface)),
        default_route: spec.default_route,
        dns_names: if shares { Vec::new() } else { dns_names },
        conditions: ready(spec.allocated),
        ..EndpointStatus::default()
    };
    Arc::new(Endpoint {
        metadata,
        spec: EndpointSpec {
            target,
            ..EndpointSpec::default()
        },
        status: Some(status),
    })
}

/// A PortPublish, as the generator describes it.
#[derive(Debug, Clone)]
struct PortsOf {
    name: u8,
    endpoint: u8,
    host_port: u16,
    v6: bool,
    allocated: bool,
    elsewhere: bool,
}

fn publish(spec: &PortsOf) -> Arc<PortPublish> {
    let mut ports = vec![PublishedPortStatus {
        container_port: 80,
        protocol: pier_crds::Protocol::Tcp,
        host_ip: "0.0.0.0".into(),
        host_port: i32::from(spec.host_port),
    }];
    if spec.v6 {
        ports.push(PublishedPortStatus {
            host_ip: "::".into(),
            ..ports[0].clone()
        });
    }
    Arc::new(PortPublish {
        metadata: meta(Some("default"), &format!("pp{}", spec.name), 0),
        spec: PortPublishSpec {
            endpoint: format!("e{}", spec.endpoint),
            ports: vec![],
        },
        status: Some(PortPublishStatus {
            node: Some(if spec.elsewhere { "node-b" } else { NODE }.to_owned()),
            ports,
            conditions: ready(spec.allocated),
            ..PortPublishStatus::default()
        }),
    })
}

/// One thing that happens to the node.
#[derive(Debug, Clone)]
enum Event {
    Network(NetworkSpecOf),
    NetworkGone(u8),
    Endpoint(EndpointOf),
    EndpointGone(u8),
    Ports(PortsOf),
    PortsGone(u8),
    /// Pod `p0`/`p1`'s namespace found (or no longer).
    PodNetns(u8, bool),
    /// The node uses (or stops using) network n0's subnet itself.
    HostSubnet(bool),
    Tunnel(bool),
}

fn network_spec() -> impl Strategy<Value = NetworkSpecOf> {
    let ipv6 = prop::bool::weighted(0.1);
    // Mostly bridge networks, allocated: their endpoints are the ones that can clash.
    let driver = prop_oneof![6 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8), 1 => Just(3u8)];
    let allocated = prop::bool::weighted(0.85);
    (0..3u8, driver, allocated, 0..3u8, ipv6, 0..4u8, 0..2u8).prop_map(
        |(name, driver, allocated, subnet, flip, count, uid)| NetworkSpecOf {
            name,
            driver,
            allocated,
            subnet,
            // n1 has IPv6 (mostly): endpoints can match the families of their network.
            ipv6: (name == 1) != flip,
            count,
            uid,
        },
    )
}

fn endpoint_spec() -> impl Strategy<Value = EndpointOf> {
    // Mostly named namespaces (where addresses and interfaces can clash), some Pods and
    // container-mode sharers.
    let target = prop_oneof![6 => 0..3u8, 1 => 3..5u8, 2 => 5..13u8];
    let first = (0..8u8, 0..4u8, target, 0..3u8, 0..3u8, 0..2u8);
    let second = (
        prop::option::of(any::<bool>()),
        prop::bool::weighted(0.95),
        prop::bool::weighted(0.05),
        prop::bool::weighted(0.05),
        0..2u8,
        prop::bool::weighted(0.1),
    );
    (first, second).prop_map(
        |(
            (name, age, target, network, address, interface),
            (default_route, allocated, elsewhere, deleting, aliases, flip),
        )| EndpointOf {
            name,
            age,
            target,
            network,
            address,
            interface,
            default_route,
            allocated,
            elsewhere,
            deleting,
            aliases,
            // On n1 with an IPv6 address (mostly), as its network has.
            v6: (network == 1) != flip,
        },
    )
}

fn ports_spec() -> impl Strategy<Value = PortsOf> {
    (
        0..3u8,
        0..8u8,
        8000..8003u16,
        any::<bool>(),
        prop::bool::weighted(0.85),
        prop::bool::weighted(0.1),
    )
        .prop_map(
            |(name, endpoint, host_port, v6, allocated, elsewhere)| PortsOf {
                name,
                endpoint,
                host_port,
                v6,
                allocated,
                elsewhere,
            },
        )
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        3 => network_spec().prop_map(Event::Network),
        1 => (0..3u8).prop_map(Event::NetworkGone),
        10 => endpoint_spec().prop_map(Event::Endpoint),
        1 => (0..8u8).prop_map(Event::EndpointGone),
        2 => ports_spec().prop_map(Event::Ports),
        1 => (0..3u8).prop_map(Event::PortsGone),
        1 => (0..2u8, any::<bool>()).prop_map(|(pod, found)| Event::PodNetns(pod, found)),
        1 => any::<bool>().prop_map(Event::HostSubnet),
        1 => any::<bool>().prop_map(Event::Tunnel),
    ]
}

/// Random events after two bridge networks exist (the events may change or delete them).
fn events(most: usize) -> impl Strategy<Value = Vec<Event>> {
    prop::collection::vec(event(), 1..most).prop_map(|mut events| {
        let bridge = |name, ipv6| {
            Event::Network(NetworkSpecOf {
                name,
                driver: 0,
                allocated: true,
                subnet: name,
                ipv6,
                count: 0,
                uid: 0,
            })
        };
        events.splice(0..0, [bridge(0, false), bridge(1, true)]);
        events
    })
}

/// The objects of the moment, and the same events given to the index.
struct World {
    networks: BTreeMap<String, Arc<Network>>,
    endpoints: BTreeMap<String, Arc<Endpoint>>,
    ports: BTreeMap<String, Arc<PortPublish>>,
    env: Environment,
    index: NodeIndex,
}

impl World {
    fn new() -> World {
        let env = Environment {
            node: NODE.to_owned(),
            netns_targets: true,
            ..Environment::default()
        };
        World {
            networks: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            ports: BTreeMap::new(),
            index: NodeIndex::new(env.clone()),
            env,
        }
    }

    fn apply(&mut self, event: &Event) {
        match event {
            Event::Network(spec) => {
                let network = network(spec);
                self.networks
                    .insert(format!("n{}", spec.name), network.clone());
                self.index.upsert_network(network);
            }
            Event::NetworkGone(name) => {
                let name = format!("n{name}");
                self.networks.remove(&name);
                self.index.remove_network(&name);
            }
            Event::Endpoint(spec) => {
                let endpoint = endpoint(spec);
                let id = object_id(&endpoint.metadata);
                self.endpoints.insert(id, endpoint.clone());
                self.index.upsert_endpoint(endpoint);
            }
            Event::EndpointGone(name) => {
                let id = format!("default/e{name}");
                self.endpoints.remove(&id);
                self.index.remove_endpoint(&id);
            }
            Event::Ports(spec) => {
                let publish = publish(spec);
                self.ports
                    .insert(object_id(&publish.metadata), publish.clone());
                self.index.upsert_ports(publish);
            }
            Event::PortsGone(name) => {
                let id = format!("default/pp{name}");
                self.ports.remove(&id);
                self.index.remove_ports(&id);
            }
            _ => self.apply_environment(event),
        }
    }

    fn apply_environment(&mut self, event: &Event) {
        match event {
            Event::PodNetns(pod, found) => {
                let pod = format!("default/p{pod}");
                let path = found.then(|| PathBuf::from(format!("/proc/1{pod}/ns/net")));
                match &path {
                    Some(path) => self.env.pod_netns.insert(pod.clone(), path.clone()),
                    None => self.env.pod_netns.remove(&pod),
                };
                self.index.set_pod_netns(&pod, path);
            }
            Event::HostSubnet(used) => {
                self.env.host_subnets = if *used {
                    vec![HostSubnet {
                        subnet: "10.0.0.0/16".parse().expect("subnet"),
                        source: "address 10.0.0.1/16 on eth9".to_owned(),
                    }]
                } else {
                    Vec::new()
                };
                self.index.set_environment(self.env.clone());
            }
            Event::Tunnel(detected) => {
                self.env.tunnel = detected.then_some(Ipv4Addr::new(192, 0, 2, 1));
                self.env.tunnel_problem = (!detected).then(|| "no default route".to_owned());
                self.index.set_environment(self.env.clone());
            }
            _ => {}
        }
    }

    /// The from-scratch build of the objects of the moment.
    fn full_build(&self) -> Built {
        let networks: Vec<Arc<Network>> = self.networks.values().cloned().collect();
        let endpoints: Vec<Arc<Endpoint>> = self.endpoints.values().cloned().collect();
        let ports: Vec<Arc<PortPublish>> = self.ports.values().cloned().collect();
        build::build(Inputs {
            node: NODE,
            networks: &networks,
            endpoints: &endpoints,
            ports: &ports,
            host_subnets: &self.env.host_subnets,
            pod_netns: &self.env.pod_netns,
            netns_targets: true,
            remote_endpoints: &[],
            tunnels: &HashMap::new(),
            tunnel: self.env.tunnel,
            tunnel_problem: self.env.tunnel_problem.as_deref(),
        })
    }

    /// The index's state with the other nodes' part as the build sets it (none here but the
    /// tunnel address on a node with an overlay network).
    fn incremental(&self) -> Built {
        let mut built = self.index.built();
        let tunnels = HashMap::new();
        let elsewhere = build::Elsewhere {
            node: NODE,
            remote_endpoints: &[],
            tunnels: &tunnels,
            tunnel: self.env.tunnel,
        };
        build::remote_endpoints(elsewhere, &mut built.state);
        built
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// After every event, the incremental state is the full build of the objects of that moment.
    #[test]
    fn the_incremental_state_is_the_full_build_after_every_event(
        events in events(120)
    ) {
        let mut world = World::new();
        for (n, event) in events.iter().enumerate() {
            world.apply(event);
            let full = world.full_build();
            let incremental = world.incremental();
            prop_assert_eq!(&incremental.state, &full.state, "state after event {}: {:?}", n, event);
            prop_assert_eq!(&incremental.refusals, &full.refusals, "refusals after event {}: {:?}", n, event);
        }
    }

    /// Listing everything again (a watch restarted) gives the same as the events did.
    #[test]
    fn a_relist_gives_the_same_state(events in events(100)) {
        let mut world = World::new();
        for event in &events {
            world.apply(event);
        }
        let mut relisted = NodeIndex::new(world.env.clone());
        relisted.replace_ports(world.ports.values().cloned());
        relisted.replace_endpoints(world.endpoints.values().cloned());
        relisted.replace_networks(world.networks.values().cloned());
        prop_assert_eq!(relisted.built(), world.index.built());
        // And replacing with nothing empties it.
        relisted.replace_endpoints([]);
        relisted.replace_ports([]);
        relisted.replace_networks([]);
        prop_assert_eq!(relisted.built(), Built::default());
    }

    /// A scoped plan of the projection is the scoped plan of the whole state, and the firewall
    /// renders the same table from both.
    #[test]
    fn a_projection_plans_what_the_whole_state_plans(
        events in events(120),
        chosen in any::<prop::sample::Index>(),
        removed in prop::collection::vec(0..8u8, 0..3),
    ) {
        let mut world = World::new();
        for event in &events {
            world.apply(event);
        }
        let full = world.index.built().state;
        // One of the endpoints in the state (mostly; else one that is not).
        let id = match full.endpoints.len() {
            0 => "default/e0".to_owned(),
            n => full.endpoints[chosen.index(n)].id.clone(),
        };
        let snapshot = snapshot_of(&full, &removed);
        let veths: Vec<String> = removed
            .iter()
            .map(|n| crate::state::host_veth_name(&format!("uid-e{n}")))
            .chain(full.networks.iter().map(|n| n.bridge_name()))
            .collect();
        let scopes = [
            Scope::endpoints([id.clone()]),
            Scope::Endpoints(Vec::new()),
            Scope::Removal(veths),
            Scope::Overlay,
        ];
        for scope in &scopes {
            let projection = world.index.projection(scope).state;
            prop_assert_eq!(
                diff(&snapshot, &projection, scope),
                diff(&snapshot, &full, scope),
                "scope {:?}", scope
            );
            prop_assert_eq!(
                crate::firewall::render(&projection),
                crate::firewall::render(&full)
            );
        }
        let projected = world.index.projection(&Scope::endpoints([id.clone()]));
        let whole = world.index.built();
        prop_assert_eq!(projected.refusals.get(&endpoint_key(&id)), whole.refusals.get(&endpoint_key(&id)));
        prop_assert_eq!(
            projected.state.endpoints.iter().find(|e| e.id == id),
            whole.state.endpoints.iter().find(|e| e.id == id)
        );
    }
}

/// What the kernel has for the plans of `state`: every namespace exists, `lo` is up in each,
/// and the host veths of endpoints `with_veth` exist (so removals and re-creations are planned).
fn snapshot_of(state: &NodeState, with_veth: &[u8]) -> Snapshot {
    let link = |index: u32, name: String, kind: LinkKind| Link {
        mtu: Some(1500),
        up: true,
        inet: Some(InetConf {
            forwarding: true,
            route_localnet: true,
        }),
        ..Link::new(index, name, kind)
    };
    let mut links = vec![link(1, "lo".to_owned(), LinkKind::None)];
    for (n, name) in with_veth.iter().enumerate() {
        let veth = crate::state::host_veth_name(&format!("uid-e{name}"));
        let index = u32::try_from(n).unwrap_or(0) + 10;
        links.push(link(index, veth, LinkKind::Veth));
    }
    let mut snapshot = Snapshot {
        links,
        ..Snapshot::default()
    };
    for endpoint in &state.endpoints {
        if let Some(path) = endpoint.netns.path() {
            snapshot.namespaces.insert(path.clone(), Some((1, 2)));
            snapshot.loopbacks.insert(path, Ok(true));
        }
    }
    snapshot
}

/// The index counts its evaluations: an Endpoint event evaluates that Endpoint, not the others
/// of its network, and a Network status rewrite that changes nothing built evaluates none.
/// Network `n0`, an allocated IPv4 bridge.
fn bridge_n0() -> NetworkSpecOf {
    NetworkSpecOf {
        name: 0,
        driver: 0,
        allocated: true,
        subnet: 0,
        ipv6: false,
        count: 0,
        uid: 0,
    }
}

/// Endpoint `e{name}`, allocated on `n0` at `address`, in named namespace `ns0`.
fn on_n0(name: u8, address: u8) -> EndpointOf {
    EndpointOf {
        name,
        age: name,
        target: 0,
        network: 0,
        address,
        interface: 0,
        default_route: Some(false),
        allocated: true,
        elsewhere: false,
        deleting: false,
        aliases: 0,
        v6: false,
    }
}

#[test]
fn one_endpoint_event_evaluates_one_endpoint() {
    let mut world = World::new();
    let bridge = bridge_n0();
    world.apply(&Event::Network(bridge.clone()));
    let on = on_n0;
    for n in 0..6 {
        world.apply(&Event::Endpoint(EndpointOf {
            target: n % 3,
            interface: n / 3,
            ..on(n, n)
        }));
    }
    assert_eq!(world.index.state().endpoints.len(), 6);
    let before = world.index.evaluations();
    world.apply(&Event::Endpoint(EndpointOf {
        aliases: 1,
        ..on(6, 7)
    }));
    assert_eq!(
        world.index.evaluations() - before,
        1,
        "the new endpoint only"
    );
    let before = world.index.evaluations();
    world.apply(&Event::Network(NetworkSpecOf {
        count: 7,
        ..bridge.clone()
    }));
    assert_eq!(
        world.index.evaluations(),
        before,
        "an endpoint count rewritten"
    );
    world.apply(&Event::Network(NetworkSpecOf { uid: 1, ..bridge }));
    assert_eq!(
        world.index.evaluations() - before,
        7,
        "a re-created Network: all of its endpoints"
    );
    assert_eq!(world.incremental(), world.full_build());
}

/// A burst of Endpoints that come and go leaves no tables sized for the burst: the node agent
/// lives as long as the node (issue 19's memory after deleting 500).
#[test]
fn the_indexes_give_back_what_a_burst_of_endpoints_grew() {
    let mut world = World::new();
    world.apply(&Event::Network(bridge_n0()));
    let on = |name: u8| EndpointOf {
        target: name % 3,
        interface: name / 3,
        ..on_n0(name, name)
    };
    let capacity = |index: &NodeIndex| {
        index.endpoints.capacity()
            + index.by_network.capacity()
            + index.positions.capacity()
            + index.state.endpoints.capacity()
            + index.on_address.capacity()
            + index.veths.capacity()
    };
    for n in 0..=250 {
        world.apply(&Event::Endpoint(on(n)));
    }
    let grown = capacity(&world.index);
    assert!(grown >= 6 * 250, "{grown}");
    for n in 5..=250 {
        world.apply(&Event::EndpointGone(n));
    }
    assert_eq!(world.index.state().endpoints.len(), 5);
    let left = capacity(&world.index);
    assert!(
        left <= 6 * pier_memory::MIN_CAPACITY * 2,
        "{left} of {grown} kept for 5 endpoints"
    );
    assert_eq!(world.incremental(), world.full_build());
}

/// Two endpoints of one network on one address in different namespaces: the later one's plan
/// reports the clash from the projection as from the whole state.
#[test]
fn a_projection_keeps_an_earlier_endpoint_on_the_same_address() {
    let mut world = World::new();
    world.apply(&Event::Network(NetworkSpecOf {
        name: 0,
        driver: 0,
        allocated: true,
        subnet: 0,
        ipv6: false,
        count: 0,
        uid: 0,
    }));
    for (name, target) in [(0, 0), (1, 1)] {
        world.apply(&Event::Endpoint(EndpointOf {
            name,
            age: name,
            target,
            network: 0,
            address: 1,
            interface: 0,
            default_route: Some(true),
            allocated: true,
            elsewhere: false,
            deleting: false,
            aliases: 0,
            v6: false,
        }));
    }
    let full = world.index.built().state;
    assert_eq!(full.endpoints.len(), 2);
    let scope = Scope::endpoints(["default/e1"]);
    let projection = world.index.projection(&scope).state;
    let snapshot = snapshot_of(&full, &[]);
    let plan = diff(&snapshot, &projection, &scope);
    assert!(
        plan.problems
            .iter()
            .any(|p| p.message.contains("in use by endpoint \"default/e0\"")),
        "{plan}"
    );
    assert_eq!(plan, diff(&snapshot, &full, &scope));
    assert_eq!(
        projection.endpoints, full.endpoints,
        "e0 is e1's earlier clash"
    );
}
