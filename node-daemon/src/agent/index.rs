//! The node's state kept up to date one object at a time, so that N Endpoints arriving at once
//! cost O(N log N) instead of a whole [`build::build`] each (O(N²) in all).
//!
//! An Endpoint event evaluates that Endpoint, and what its outcome feeds: the endpoints sharing
//! its namespace (container mode), the PortPublishes leading to it, and its namespace's
//! default-route claim (the oldest claim keeps the route). A Network event re-evaluates the
//! network's endpoints only when something they are built from changed ([`NetworkFacts`]: the
//! operator rewrites a Network's status for every endpoint it allocates, which changes none).
//! The evaluation itself is [`build`]'s, object by object; [`build::build`] stays the
//! from-scratch definition, which the resync runs. The unit tests drive both with random
//! sequences of events and require the same state and refusals after every one.
//!
//! A scoped apply is given a projection ([`NodeIndex::projection`]): every network and port, the
//! endpoints in scope, and the few that the dataplane compares them with (those with the same
//! address on the same network, those in the same namespace, a sharer's owner), in the state's
//! order. Planned within its scope, it gives the plan the whole state gives (tested too), so an
//! attach copies a handful of endpoints, not all of them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;

use pier_crds::{Endpoint, Network, PortPublish};
use pier_memory::ShrinkIfSparse as _;

use super::build::{
    self, Age, Built, Evaluated, Inputs, NetworkFacts, Refusal, endpoint_key, object_id, ports_key,
};
use crate::dataplane::{ObjectKey, Scope};
use crate::kernel::hostnet::HostSubnet;
use crate::state::{Attachment, Driver, EndpointState, Netns, NodeState, PublishedPort};

#[cfg(test)]
mod tests;

/// What the node's objects are built with besides the objects themselves (see [`Inputs`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Environment {
    /// This node's name.
    pub node: String,
    /// Whether Endpoints may target named namespaces on this node.
    pub netns_targets: bool,
    /// Subnets the node uses for things Pier does not own.
    pub host_subnets: Vec<HostSubnet>,
    /// Network namespaces of target Pods found on this node, by `NAMESPACE/POD`.
    pub pod_netns: HashMap<String, PathBuf>,
    /// This node's tunnel address.
    pub tunnel: Option<Ipv4Addr>,
    /// Why there is no tunnel address, when the detection said why.
    pub tunnel_problem: Option<String>,
}

/// Where an endpoint is in the state: the ones with a namespace of their own first (`false`),
/// then the container-mode ones, each part by [`Age`].
type Position = (bool, Age);

/// One Endpoint of this node and what it evaluated to.
#[derive(Debug)]
struct EndpointEntry {
    object: Arc<Endpoint>,
    age: Age,
    /// The Network its status names: a change of that Network's facts re-evaluates it.
    network: Option<String>,
    /// `NAMESPACE/POD` of a Pod target: a change of that Pod's namespace re-evaluates it.
    pod: Option<String>,
    evaluated: Result<Evaluated, Refusal>,
}

impl EndpointEntry {
    /// Where its output goes, if it has a namespace (of its own or shared).
    fn position(&self) -> Option<Position> {
        match &self.evaluated {
            Ok(Evaluated::Own { .. }) => Some((false, self.age.clone())),
            Ok(Evaluated::Shares(_)) => Some((true, self.age.clone())),
            Err(_) => None,
        }
    }

    /// The owner it shares the namespace of, in container mode.
    fn owner(&self) -> Option<&str> {
        match &self.evaluated {
            Ok(Evaluated::Shares(owner)) => Some(owner),
            _ => None,
        }
    }
}

/// One PortPublish of this node and its ports (or why they are left out).
#[derive(Debug)]
struct PortsEntry {
    object: Arc<PortPublish>,
    /// The id of the Endpoint it names.
    endpoint: String,
    result: Result<Vec<PublishedPort>, Refusal>,
}

/// The node's [`Built`] state, updated object by object (see the module's documentation).
#[derive(Debug, Default)]
pub struct NodeIndex {
    env: Environment,
    /// Never filled: the per-object evaluation does not look at other nodes.
    no_tunnels: HashMap<String, Ipv4Addr>,
    networks: HashMap<String, (Arc<Network>, NetworkFacts)>,
    endpoints: HashMap<String, EndpointEntry>,
    /// By id, so the state's ports come in the order [`build::build`] gives them.
    publishes: BTreeMap<String, PortsEntry>,
    /// Endpoint ids by the Network their status names.
    by_network: HashMap<String, BTreeSet<String>>,
    /// Endpoint ids by the Pod they target.
    by_pod: HashMap<String, BTreeSet<String>>,
    /// Container-mode endpoint ids by the endpoint whose namespace they share.
    sharers: HashMap<String, BTreeSet<String>>,
    /// PortPublish ids by the endpoint they name.
    ports_to: HashMap<String, BTreeSet<String>>,
    /// The state: networks, endpoints and ports (never the other nodes' part).
    state: NodeState,
    /// The position of each of `state.endpoints`, in order.
    positions: Vec<Position>,
    endpoint_refusals: BTreeMap<String, Refusal>,
    port_refusals: BTreeMap<String, Refusal>,
    ports_changed: bool,
    /// The endpoints in the state claiming their namespace's default route: the oldest has it.
    claims: HashMap<Netns, BTreeSet<Age>>,
    /// The endpoints in the state by namespace, by address on a network, by network (those
    /// with a namespace of their own) and by host veth.
    in_namespace: HashMap<Netns, BTreeSet<Position>>,
    on_address: HashMap<(String, IpAddr), BTreeSet<Position>>,
    on_network: HashMap<String, BTreeSet<Position>>,
    veths: HashMap<String, Position>,
    /// How many times an endpoint was evaluated (its own part, or a sharer's namespace).
    evaluations: u64,
}

impl NodeIndex {
    /// An empty node in `env`.
    pub fn new(env: Environment) -> NodeIndex {
        NodeIndex {
            env,
            ..NodeIndex::default()
        }
    }

    /// The node's state (without the other nodes' part).
    pub fn state(&self) -> &NodeState {
        &self.state
    }

    /// The environment the objects are built in.
    pub fn environment(&self) -> &Environment {
        &self.env
    }

    /// How many endpoint evaluations were made so far (what the agent counts in its metrics).
    pub fn evaluations(&self) -> u64 {
        self.evaluations
    }

    /// The whole state and every refusal, as [`build::build`] gives them (without the other
    /// nodes' part).
    pub fn built(&self) -> Built {
        let refusals = self
            .endpoint_refusals
            .iter()
            .map(|(id, why)| (endpoint_key(id), why.clone()))
            .chain(self.port_refusals_keyed())
            .collect();
        Built {
            state: self.state.clone(),
            refusals,
        }
    }

    fn port_refusals_keyed(&self) -> impl Iterator<Item = (ObjectKey, Refusal)> + '_ {
        self.port_refusals
            .iter()
            .map(|(id, why)| (ports_key(id), why.clone()))
    }

    /// What an apply within `scope` needs of the state: every network and port, every port
    /// refusal, and the endpoints the scope plans with those the dataplane compares them with
    /// (see the module's documentation), with their refusals. The full scope gets everything.
    pub fn projection(&self, scope: &Scope) -> Built {
        let positions: BTreeSet<Position> = match scope {
            Scope::Full => return self.built(),
            Scope::Endpoints(ids) => ids.iter().flat_map(|id| self.related(id)).collect(),
            Scope::Removal(links) => links
                .iter()
                .filter_map(|link| self.veths.get(link).cloned())
                .collect(),
            Scope::Overlay => self
                .state
                .networks
                .iter()
                .filter(|n| n.driver == Driver::Overlay)
                .filter_map(|n| self.on_network.get(&n.name))
                .flatten()
                .cloned()
                .collect(),
        };
        let endpoints = positions
            .iter()
            .filter_map(|p| self.at(p))
            .cloned()
            .collect();
        let mut refusals: BTreeMap<ObjectKey, Refusal> = self.port_refusals_keyed().collect();
        if let Scope::Endpoints(ids) = scope {
            for id in ids {
                if let Some(why) = self.endpoint_refusals.get(id) {
                    refusals.insert(endpoint_key(id), why.clone());
                }
            }
        }
        let state = NodeState {
            networks: self.state.networks.clone(),
            endpoints,
            ports: self.state.ports.clone(),
            ..NodeState::default()
        };
        Built { state, refusals }
    }

    /// Endpoint `id` and those a plan of it compares it with.
    fn related(&self, id: &str) -> Vec<Position> {
        let Some(position) = self.position_of(id) else {
            return Vec::new();
        };
        let Some(endpoint) = self.at(&position) else {
            return Vec::new();
        };
        let mut related = vec![position];
        related.extend(
            self.in_namespace
                .get(&endpoint.netns)
                .into_iter()
                .flatten()
                .cloned(),
        );
        match &endpoint.attachment {
            Attachment::Bridge(bridge) => {
                let ips = [
                    bridge.address.map(IpAddr::V4),
                    bridge.address6.map(IpAddr::V6),
                ];
                for ip in ips.into_iter().flatten() {
                    let same = self.on_address.get(&(bridge.network.clone(), ip));
                    related.extend(same.into_iter().flatten().cloned());
                }
            }
            Attachment::Shared { endpoint: owner } => related.extend(self.position_of(owner)),
            Attachment::Null { .. } | Attachment::Host { .. } => {}
        }
        related
    }

    /// Where endpoint `id` is in the state, if it is.
    fn position_of(&self, id: &str) -> Option<Position> {
        let position = self.endpoints.get(id)?.position()?;
        self.positions.binary_search(&position).ok()?;
        Some(position)
    }

    /// The endpoint at `position` in the state.
    fn at(&self, position: &Position) -> Option<&EndpointState> {
        let index = self.positions.binary_search(position).ok()?;
        self.state.endpoints.get(index)
    }

    /// The endpoint `id` as the state has it.
    pub fn endpoint(&self, id: &str) -> Option<&EndpointState> {
        self.at(&self.position_of(id)?)
    }

    // --- Networks

    /// A Network was added or changed.
    pub fn upsert_network(&mut self, network: Arc<Network>) {
        let Some(name) = network.metadata.name.clone() else {
            return;
        };
        let facts = NetworkFacts::of(&network);
        let changed = self.networks.get(&name).is_none_or(|(_, f)| *f != facts);
        self.networks.insert(name.clone(), (network, facts));
        if changed {
            self.network_changed(&name);
        }
    }

    /// The Network `name` was deleted.
    pub fn remove_network(&mut self, name: &str) {
        if self.networks.remove(name).is_some() {
            self.network_changed(name);
        }
    }

    /// The Networks are now `networks` (a watch listed them again).
    pub fn replace_networks(&mut self, networks: impl IntoIterator<Item = Arc<Network>>) {
        let networks: Vec<Arc<Network>> = networks.into_iter().collect();
        let names: BTreeSet<&str> = networks
            .iter()
            .filter_map(|n| n.metadata.name.as_deref())
            .collect();
        let gone: Vec<String> = self
            .networks
            .keys()
            .filter(|name| !names.contains(name.as_str()))
            .cloned()
            .collect();
        for name in gone {
            self.remove_network(&name);
        }
        for network in networks {
            self.upsert_network(network);
        }
    }

    fn network_changed(&mut self, name: &str) {
        let ids: Vec<String> = self
            .by_network
            .get(name)
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        for id in ids {
            self.reevaluate(&id);
        }
        self.sync_network(name);
        self.flush_ports();
    }

    /// Puts network `name` in the state, or takes it out, as its endpoints here need it.
    fn sync_network(&mut self, name: &str) {
        let used = self.on_network.get(name).is_some_and(|p| !p.is_empty());
        let wanted = used
            .then(|| self.networks.get(name).and_then(|(_, f)| f.state.clone()))
            .flatten();
        let networks = &mut self.state.networks;
        let found = networks.binary_search_by(|n| n.name.as_str().cmp(name));
        match (found, wanted) {
            (Ok(at), Some(network)) => networks[at] = network,
            (Ok(at), None) => {
                networks.remove(at);
            }
            (Err(at), Some(network)) => networks.insert(at, network),
            (Err(_), None) => {}
        }
    }

    // --- The environment

    /// The environment is now `env`: everything is evaluated again when it changed.
    pub fn set_environment(&mut self, env: Environment) {
        if self.env == env {
            return;
        }
        self.env = env;
        let ids: Vec<String> = self.endpoints.keys().cloned().collect();
        for id in ids {
            self.reevaluate(&id);
        }
        self.flush_ports();
    }

    /// The namespace of Pod `pod` (`NAMESPACE/POD`) on this node is now `path` (`None`: not
    /// found): its Endpoints are evaluated again.
    pub fn set_pod_netns(&mut self, pod: &str, path: Option<PathBuf>) {
        let changed = match path {
            Some(path) => self.env.pod_netns.insert(pod.to_owned(), path.clone()) != Some(path),
            None => self.env.pod_netns.remove(pod).is_some(),
        };
        if !changed {
            return;
        }
        let ids: Vec<String> = self
            .by_pod
            .get(pod)
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        for id in ids {
            self.reevaluate(&id);
        }
        self.flush_ports();
    }

    // --- Endpoints

    /// An Endpoint of this node was added or changed.
    pub fn upsert_endpoint(&mut self, endpoint: Arc<Endpoint>) {
        self.put_endpoint(endpoint);
        self.flush_ports();
    }

    /// The Endpoint `id` (`NAMESPACE/NAME`) was deleted.
    pub fn remove_endpoint(&mut self, id: &str) {
        self.take_endpoint(id);
        self.dependents_changed(id);
        self.flush_ports();
        self.shrink_endpoint_indexes();
    }

    /// Gives back what a burst of Endpoints made the indexes grow, once most are gone.
    fn shrink_endpoint_indexes(&mut self) {
        self.endpoints.shrink_if_sparse();
        self.by_network.shrink_if_sparse();
        self.by_pod.shrink_if_sparse();
        self.sharers.shrink_if_sparse();
        self.positions.shrink_if_sparse();
        self.state.endpoints.shrink_if_sparse();
        self.claims.shrink_if_sparse();
        self.in_namespace.shrink_if_sparse();
        self.on_address.shrink_if_sparse();
        self.on_network.shrink_if_sparse();
        self.veths.shrink_if_sparse();
    }

    /// This node's Endpoints are now `endpoints` (a watch listed them again).
    pub fn replace_endpoints(&mut self, endpoints: impl IntoIterator<Item = Arc<Endpoint>>) {
        let endpoints: Vec<Arc<Endpoint>> = endpoints.into_iter().collect();
        let listed = endpoints.iter().map(|e| object_id(&e.metadata));
        for id in not_listed(self.endpoints.keys(), listed) {
            self.remove_endpoint(&id);
        }
        for endpoint in endpoints {
            self.put_endpoint(endpoint);
        }
        self.flush_ports();
    }

    /// Evaluates endpoint `id` again from its object.
    fn reevaluate(&mut self, id: &str) {
        if let Some(object) = self.endpoints.get(id).map(|e| Arc::clone(&e.object)) {
            self.put_endpoint(object);
        }
    }

    fn put_endpoint(&mut self, endpoint: Arc<Endpoint>) {
        let id = object_id(&endpoint.metadata);
        if !build::endpoint_is_mine(&self.inputs(), &endpoint) {
            self.take_endpoint(&id);
            self.dependents_changed(&id);
            return;
        }
        let entry = self.evaluate(endpoint);
        // The same outcome from the same dependencies changes nothing. A sharer's output also
        // depends on its object (uid, names), so it is always put again.
        let same = self.endpoints.get(&id).is_some_and(|old| {
            old.evaluated == entry.evaluated
                && old.age == entry.age
                && old.network == entry.network
                && old.pod == entry.pod
                && old.owner().is_none()
        });
        if same {
            if let Some(old) = self.endpoints.get_mut(&id) {
                old.object = entry.object;
            }
            return;
        }
        self.take_endpoint(&id);
        self.index_entry(&id, &entry);
        self.endpoints.insert(id.clone(), entry);
        self.place(&id);
        self.dependents_changed(&id);
    }

    /// The entry of an Endpoint object, evaluated.
    fn evaluate(&mut self, object: Arc<Endpoint>) -> EndpointEntry {
        self.evaluations += 1;
        let networks = &self.networks;
        let network_of = |name: &str| networks.get(name).map(|(network, _)| &**network);
        let evaluated = build::evaluate_endpoint(&self.inputs(), network_of, &object);
        let status = object.status.as_ref();
        let namespace = object.metadata.namespace.as_deref().unwrap_or_default();
        EndpointEntry {
            age: build::age(&object),
            network: status.and_then(|s| s.network.clone()),
            pod: object
                .spec
                .target
                .pod
                .as_ref()
                .map(|pod| format!("{namespace}/{}", pod.name)),
            evaluated,
            object,
        }
    }

    fn inputs(&self) -> Inputs<'_> {
        Inputs {
            node: &self.env.node,
            networks: &[],
            endpoints: &[],
            ports: &[],
            host_subnets: &self.env.host_subnets,
            pod_netns: &self.env.pod_netns,
            netns_targets: self.env.netns_targets,
            remote_endpoints: &[],
            tunnels: &self.no_tunnels,
            tunnel: self.env.tunnel,
            tunnel_problem: self.env.tunnel_problem.as_deref(),
        }
    }

    fn index_entry(&mut self, id: &str, entry: &EndpointEntry) {
        let dependencies = [
            (&mut self.by_network, entry.network.as_deref()),
            (&mut self.by_pod, entry.pod.as_deref()),
            (&mut self.sharers, entry.owner()),
        ];
        for (index, key) in dependencies {
            if let Some(key) = key {
                index
                    .entry(key.to_owned())
                    .or_default()
                    .insert(id.to_owned());
            }
        }
    }

    /// Takes endpoint `id` out of the state, its refusals and the indexes (not its
    /// dependents: see [`Self::dependents_changed`]).
    fn take_endpoint(&mut self, id: &str) {
        self.unplace(id);
        let Some(entry) = self.endpoints.remove(id) else {
            return;
        };
        let dependencies = [
            (&mut self.by_network, entry.network.as_deref()),
            (&mut self.by_pod, entry.pod.as_deref()),
            (&mut self.sharers, entry.owner()),
        ];
        for (index, key) in dependencies {
            if let Some(key) = key {
                remove_from(index, key, id);
            }
        }
    }

    /// The sharers of endpoint `id` and the ports leading to it or to them follow its change.
    fn dependents_changed(&mut self, id: &str) {
        let sharers: Vec<String> = self
            .sharers
            .get(id)
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        for sharer in &sharers {
            self.unplace(sharer);
            self.place(sharer);
        }
        let ports: BTreeSet<String> = std::iter::once(id)
            .chain(sharers.iter().map(String::as_str))
            .filter_map(|endpoint| self.ports_to.get(endpoint))
            .flatten()
            .cloned()
            .collect();
        for port in ports {
            self.evaluate_ports(&port);
        }
    }

    /// Puts endpoint `id`'s outcome in the state or in the refusals.
    fn place(&mut self, id: &str) {
        let Some(entry) = self.endpoints.get(id) else {
            return;
        };
        let age = entry.age.clone();
        let output = match &entry.evaluated {
            Err(why) => Err(why.clone()),
            Ok(Evaluated::Own {
                state,
                claims_route,
            }) => Ok(((false, age), (**state).clone(), *claims_route)),
            Ok(Evaluated::Shares(owner)) => {
                let (object, owner) = (Arc::clone(&entry.object), owner.clone());
                self.evaluations += 1;
                let netns = self.own_netns(&owner);
                build::shared_endpoint(&object, owner, netns.as_ref())
                    .map(|state| ((true, age), state, false))
            }
        };
        match output {
            Ok((position, state, claims_route)) => self.insert(position, state, claims_route),
            Err(why) => {
                self.endpoint_refusals.insert(id.to_owned(), why);
            }
        }
    }

    /// The namespace of endpoint `id` when it is in the state with a namespace of its own.
    fn own_netns(&self, id: &str) -> Option<Netns> {
        let own = matches!(self.endpoints.get(id)?.evaluated, Ok(Evaluated::Own { .. }));
        own.then(|| self.endpoint(id).map(|e| e.netns.clone()))
            .flatten()
    }

    /// Takes endpoint `id`'s outcome out of the state and the refusals.
    fn unplace(&mut self, id: &str) {
        self.endpoint_refusals.remove(id);
        let Some(position) = self.endpoints.get(id).and_then(EndpointEntry::position) else {
            return;
        };
        let Ok(index) = self.positions.binary_search(&position) else {
            return;
        };
        self.positions.remove(index);
        let state = self.state.endpoints.remove(index);
        self.unindex_state(&position, &state);
    }

    /// Puts `state` at `position`, with its claim of its namespace's default route.
    fn insert(&mut self, position: Position, state: EndpointState, claims_route: bool) {
        self.index_state(&position, &state);
        let netns = state.netns.clone();
        let network = state.network().map(str::to_owned);
        match self.positions.binary_search(&position) {
            Ok(index) => self.state.endpoints[index] = state,
            Err(index) => {
                self.positions.insert(index, position.clone());
                self.state.endpoints.insert(index, state);
            }
        }
        if claims_route {
            let (_, age) = position;
            self.claims.entry(netns.clone()).or_default().insert(age);
            self.fix_routes(&netns);
        }
        if let Some(network) = network {
            self.sync_network(&network);
        }
    }

    fn index_state(&mut self, position: &Position, state: &EndpointState) {
        let at = || position.clone();
        self.in_namespace
            .entry(state.netns.clone())
            .or_default()
            .insert(at());
        if let Attachment::Bridge(bridge) = &state.attachment {
            for ip in addresses(bridge) {
                let key = (bridge.network.clone(), ip);
                self.on_address.entry(key).or_default().insert(at());
            }
            self.veths.insert(state.host_veth_name(), at());
        }
        if let Some(network) = state.network() {
            let on = self.on_network.entry(network.to_owned()).or_default();
            on.insert(at());
        }
    }

    fn unindex_state(&mut self, position: &Position, state: &EndpointState) {
        remove_position(&mut self.in_namespace, &state.netns, position);
        if let Attachment::Bridge(bridge) = &state.attachment {
            for ip in addresses(bridge) {
                let key = (bridge.network.clone(), ip);
                remove_position(&mut self.on_address, &key, position);
            }
            self.veths.remove(&state.host_veth_name());
        }
        if let Some(claims) = self.claims.get_mut(&state.netns)
            && claims.remove(&position.1)
        {
            if claims.is_empty() {
                self.claims.remove(&state.netns);
            }
            self.fix_routes(&state.netns);
        }
        if let Some(network) = state.network() {
            remove_position(&mut self.on_network, network, position);
            self.sync_network(network);
        }
    }

    /// Gives the default route of `netns` to its oldest claim, and takes it from the others.
    fn fix_routes(&mut self, netns: &Netns) {
        let Some(claims) = self.claims.get(netns) else {
            return;
        };
        let first = claims.first().cloned();
        for age in claims.iter() {
            if let Ok(index) = self.positions.binary_search(&(false, age.clone())) {
                let routed = Some(age) == first.as_ref();
                build::set_default_route(&mut self.state.endpoints[index], routed);
            }
        }
    }

    // --- PortPublishes

    /// A PortPublish of this node was added or changed.
    pub fn upsert_ports(&mut self, publish: Arc<PortPublish>) {
        let id = object_id(&publish.metadata);
        if !build::ports_are_mine(&self.inputs(), &publish) {
            self.remove_ports(&id);
            return;
        }
        let endpoint = build::ports_endpoint(&publish);
        if let Some(old) = self.publishes.get(&id)
            && old.endpoint != endpoint
        {
            remove_from(&mut self.ports_to, &old.endpoint, &id);
        }
        self.ports_to
            .entry(endpoint.clone())
            .or_default()
            .insert(id.clone());
        let result = self.publish(&id, &publish, &endpoint);
        self.set_ports(&id, &result);
        let entry = PortsEntry {
            object: publish,
            endpoint,
            result,
        };
        self.publishes.insert(id, entry);
        self.ports_changed = true;
        self.flush_ports();
    }

    /// The PortPublish `id` was deleted.
    pub fn remove_ports(&mut self, id: &str) {
        if let Some(old) = self.publishes.remove(id) {
            remove_from(&mut self.ports_to, &old.endpoint, id);
            self.port_refusals.remove(id);
            self.ports_changed = true;
        }
        self.flush_ports();
    }

    /// This node's PortPublishes are now `publishes` (a watch listed them again).
    pub fn replace_ports(&mut self, publishes: impl IntoIterator<Item = Arc<PortPublish>>) {
        let publishes: Vec<Arc<PortPublish>> = publishes.into_iter().collect();
        let listed = publishes.iter().map(|p| object_id(&p.metadata));
        for id in not_listed(self.publishes.keys(), listed) {
            self.remove_ports(&id);
        }
        for publish in publishes {
            self.upsert_ports(publish);
        }
    }

    /// Evaluates PortPublish `id` again (its endpoint changed).
    fn evaluate_ports(&mut self, id: &str) {
        let Some(entry) = self.publishes.get(id) else {
            return;
        };
        let result = self.publish(id, &entry.object, &entry.endpoint);
        if entry.result == result {
            return;
        }
        self.set_ports(id, &result);
        if let Some(entry) = self.publishes.get_mut(id) {
            entry.result = result;
        }
        self.ports_changed = true;
    }

    /// The ports of a PortPublish naming `endpoint`, or why they are left out.
    fn publish(
        &self,
        id: &str,
        publish: &PortPublish,
        endpoint: &str,
    ) -> Result<Vec<PublishedPort>, Refusal> {
        let destination = self.destination(endpoint);
        let destination = destination.as_ref().map(|(id, a)| (id.as_str(), *a));
        build::publish_ports(id, publish, destination)
    }

    /// Where ports naming `endpoint` lead (as [`build::build`] finds it): to its address on a
    /// bridge network, or in container mode to that of the endpoint whose namespace it shares.
    fn destination(&self, endpoint: &str) -> Option<(String, build::Addresses)> {
        let named = self.endpoint(endpoint)?;
        let receiver = match &named.attachment {
            Attachment::Shared { endpoint: owner } => self.endpoint(owner)?,
            _ => named,
        };
        match &receiver.attachment {
            Attachment::Bridge(bridge) => {
                Some((receiver.id.clone(), (bridge.address, bridge.address6)))
            }
            _ => None,
        }
    }

    fn set_ports(&mut self, id: &str, result: &Result<Vec<PublishedPort>, Refusal>) {
        match result {
            Ok(_) => {
                self.port_refusals.remove(id);
            }
            Err(why) => {
                self.port_refusals.insert(id.to_owned(), why.clone());
            }
        }
    }

    /// The state's ports again from the PortPublishes' (in id order), after one changed.
    fn flush_ports(&mut self) {
        if !std::mem::take(&mut self.ports_changed) {
            return;
        }
        self.state.ports = self
            .publishes
            .values()
            .filter_map(|entry| entry.result.as_ref().ok())
            .flatten()
            .cloned()
            .collect();
    }
}

/// A bridge attachment's addresses, of each family it has.
fn addresses(bridge: &crate::state::BridgeAttachment) -> impl Iterator<Item = IpAddr> {
    let v4 = bridge.address.map(IpAddr::V4);
    v4.into_iter().chain(bridge.address6.map(IpAddr::V6))
}

/// Removes `id` from the set of `key` in `index`, and the set when it is empty.
fn remove_from(index: &mut HashMap<String, BTreeSet<String>>, key: &str, id: &str) {
    if let Some(ids) = index.get_mut(key) {
        ids.remove(id);
        if ids.is_empty() {
            index.remove(key);
        }
    }
}

/// Removes `position` from the set of `key` in `index`, and the set when it is empty.
fn remove_position<K, Q>(index: &mut HashMap<K, BTreeSet<Position>>, key: &Q, position: &Position)
where
    K: std::borrow::Borrow<Q> + std::hash::Hash + Eq,
    Q: std::hash::Hash + Eq + ?Sized,
{
    if let Some(positions) = index.get_mut(key) {
        positions.remove(position);
        if positions.is_empty() {
            index.remove(key);
        }
    }
}

/// The ids `kept` holds that are not `listed` (gone while a watch was not looking).
fn not_listed<'k>(
    kept: impl Iterator<Item = &'k String>,
    listed: impl Iterator<Item = String>,
) -> Vec<String> {
    let listed: BTreeSet<String> = listed.collect();
    kept.filter(|id| !listed.contains(*id)).cloned().collect()
}
