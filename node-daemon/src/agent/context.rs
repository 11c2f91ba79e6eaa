//! What the node agent's reconcilers share: the API client, the stores the watches fill, the
//! node's kernel, the DNS state, and the writes of the node's conditions and Events.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::Node;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::Store;
use kube::{Api, Client, Resource};
use pier_crds::conditions::{self, Condition};
use pier_crds::{Endpoint, Network, PortPublish};
use pier_runtime::{Backoff, Events};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, Semaphore, watch};

use super::arrival::Arrivals;
use super::build::{self, Built, Inputs};
use super::index::{Environment, NodeIndex};
use super::metrics::NodeMetrics;
use super::node_kernel::{HeldPort, NodeKernel};
use super::removal::Removals;
use super::{AgentConfig, Error, FIELD_MANAGER};
use crate::dataplane::{Outcome, Report, Scope};
use crate::dns::resolv_conf;
use crate::kernel::host_ports::{HostPort, PortHolder};
use crate::kernel::hostnet::HostSubnet;
use crate::kernel::tunnel::Tunnel;
use crate::state::{Netns, NodeState, RemoteEndpoint};

/// Shared by the reconcilers and the resync loop.
pub struct Context {
    pub client: Client,
    pub config: AgentConfig,
    /// Where the kernel work goes: the node's own kernel, or a fake in tests.
    pub kernel: Arc<dyn NodeKernel>,
    pub networks: Store<Network>,
    pub endpoints: Store<Endpoint>,
    pub ports: Store<PortPublish>,
    /// The Endpoints of the other nodes (an overlay's endpoints there are entries here).
    pub remote_endpoints: Store<Endpoint>,
    /// The cluster's Nodes, for their tunnel addresses (`pier.dev/tunnel-address`).
    pub nodes: Store<PartialObjectMeta<Node>>,
    /// This node's tunnel once detected, or why there is none (see [`super::overlay`]).
    pub tunnel: Mutex<Option<Result<Tunnel, String>>>,
    /// Woken by every change of another node's Endpoint or of a Node: the overlay follower
    /// re-applies the overlay networks' entries.
    pub overlay_changed: Arc<Notify>,
    /// The other nodes' part of the last apply of entries (full or overlay scope) that
    /// succeeded in full (`None` after one that did not), written in the apply's turn.
    programmed: Arc<Mutex<Option<RemotePart>>>,
    /// Applies numbered in the order they ran, and the number of the one DNS serves.
    turns: Arc<AtomicU64>,
    dns_turn: Mutex<u64>,
    /// Refreshed by every resync (and at start).
    pub host_subnets: Mutex<Vec<HostSubnet>>,
    /// Target Pods' namespaces found on this node, by `NAMESPACE/POD`.
    pub pod_netns: Mutex<HashMap<String, PathBuf>>,
    /// What the DNS server serves: the node's state, handed over by [`feed_dns`] after applies.
    pub dns_state: watch::Sender<NodeState>,
    /// Woken after every apply: the DNS server gets the node's state.
    dns_changed: Notify,
    /// The other nodes' part of the latest apply (by turn), for DNS.
    dns_remote: Mutex<RemotePart>,
    /// The node's state kept up to date from the watches' events.
    pub index: SharedIndex,
    /// Whether `index` was filled from the stores once they listed (see [`Context::wait_synced`]).
    index_seeded: AtomicBool,
    /// What each Endpoint (by uid) was last attached as, to skip the reconcile that only our own
    /// status write caused: the resync still checks the kernel for all of them.
    pub attached: Mutex<HashMap<String, String>>,
    /// The sockets holding the published host ports (see [`crate::kernel::host_ports`]); locked across
    /// each apply, so the ports held and the ports in the table change together.
    pub host_ports: Arc<Mutex<PortHolder<HeldPort>>>,
    /// Events about the objects reconciled.
    pub events: Events,
    /// Retry delays of the objects that are failing.
    pub backoff: Backoff,
    /// Where detaches hand their links over to be removed together (see [`super::removal`]).
    pub removals: Removals,
    /// Where attaches hand their endpoints over to be attached together (see
    /// [`super::arrival`]).
    pub arrivals: Arrivals,
    /// One permit per attach running (see [`super::ATTACHES_AT_ONCE`]).
    pub attach_slots: Semaphore,
    /// Held by each apply, and by a full reconcile from before it builds its state until its
    /// apply is done: a full apply removes what its state lacks, so a state built while another
    /// apply waited to run would remove what that apply made (see [`super::metrics::apply`]).
    pub apply_turn: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("node", &self.config.node_name)
            .finish_non_exhaustive()
    }
}

/// The other nodes' part of a state: this node's tunnel address and the remote endpoints.
pub type RemotePart = (Option<Ipv4Addr>, Vec<RemoteEndpoint>);

/// The stores the other nodes' part of a state is built from, movable into kernel work.
struct ElsewhereStores {
    node: String,
    remote_endpoints: Store<Endpoint>,
    nodes: Store<PartialObjectMeta<Node>>,
    tunnel: Option<Ipv4Addr>,
}

impl ElsewhereStores {
    /// Rebuilds `state`'s remote endpoints and tunnel from what the stores hold now.
    fn refresh(&self, state: &mut NodeState) {
        let remote_endpoints = self.remote_endpoints.state();
        let tunnels = super::overlay::tunnels(&self.nodes.state());
        let elsewhere = build::Elsewhere {
            node: &self.node,
            remote_endpoints: &remote_endpoints,
            tunnels: &tunnels,
            tunnel: self.tunnel,
        };
        build::remote_endpoints(elsewhere, state);
    }
}

/// The node's [`NodeIndex`], shared by the watches that feed it and the reconcilers that read
/// it; every change counts its evaluations into the node's metrics. Locked briefly, never
/// across kernel work or an await.
#[derive(Debug, Clone)]
pub struct SharedIndex {
    index: Arc<Mutex<NodeIndex>>,
    metrics: Arc<NodeMetrics>,
}

impl SharedIndex {
    /// An empty index for the node `config` describes.
    pub fn new(config: &AgentConfig) -> SharedIndex {
        let env = Environment {
            node: config.node_name.clone(),
            netns_targets: config.netns_targets,
            ..Environment::default()
        };
        SharedIndex {
            index: Arc::new(Mutex::new(NodeIndex::new(env))),
            metrics: Arc::clone(&config.metrics),
        }
    }

    /// Changes the index with `change`.
    pub fn update<T>(&self, change: impl FnOnce(&mut NodeIndex) -> T) -> T {
        let mut index = lock(&self.index);
        let before = index.evaluations();
        let result = change(&mut index);
        let evaluated = index.evaluations() - before;
        drop(index);
        if evaluated > 0 {
            self.metrics.state_evaluations.inc_by(evaluated);
        }
        result
    }

    /// Reads the index.
    pub fn read<T>(&self, look: impl FnOnce(&NodeIndex) -> T) -> T {
        look(&lock(&self.index))
    }
}

/// The stores the agent's watches fill, and how the overlay follower hears of changes.
#[derive(Debug)]
pub struct Stores {
    pub networks: Store<Network>,
    /// This node's Endpoints (the Endpoint controller's store).
    pub endpoints: Store<Endpoint>,
    pub ports: Store<PortPublish>,
    pub remote_endpoints: Store<Endpoint>,
    pub nodes: Store<PartialObjectMeta<Node>>,
    pub overlay_changed: Arc<Notify>,
    /// Fed by the Network, Endpoint and PortPublish watches.
    pub index: SharedIndex,
}

/// A lock that a panic elsewhere does not make unusable: every value behind these locks is
/// replaced whole, never left half-written.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Context {
    /// A context over the watches' stores, doing its kernel work with `kernel`; its detaches'
    /// links go to `removals` (served by [`super::removal::run`]), its attaches' endpoints to
    /// `arrivals` (served by [`super::arrival::run`]).
    pub fn new(
        client: Client,
        config: AgentConfig,
        kernel: Arc<dyn NodeKernel>,
        stores: Stores,
        dns_state: watch::Sender<NodeState>,
        removals: Removals,
        arrivals: Arrivals,
    ) -> Context {
        let Stores {
            networks,
            endpoints,
            ports,
            remote_endpoints,
            nodes,
            overlay_changed,
            index,
        } = stores;
        Context {
            events: Events::new(client.clone(), FIELD_MANAGER, config.node_name.clone()),
            backoff: Backoff::new(config.min_backoff, config.max_backoff),
            client,
            kernel,
            config,
            networks,
            endpoints,
            ports,
            remote_endpoints,
            nodes,
            tunnel: Mutex::new(None),
            overlay_changed,
            programmed: Arc::new(Mutex::new(None)),
            turns: Arc::new(AtomicU64::new(0)),
            dns_turn: Mutex::new(0),
            host_subnets: Mutex::new(Vec::new()),
            pod_netns: Mutex::new(HashMap::new()),
            dns_state,
            dns_changed: Notify::new(),
            dns_remote: Mutex::new((None, Vec::new())),
            index,
            index_seeded: AtomicBool::new(false),
            attached: Mutex::new(HashMap::new()),
            host_ports: Arc::new(Mutex::new(PortHolder::default())),
            removals,
            arrivals,
            attach_slots: Semaphore::new(super::ATTACHES_AT_ONCE),
            apply_turn: tokio::sync::Mutex::new(()),
        }
    }

    /// Waits until every watch has listed once: before that, a full apply would remove what
    /// belongs to objects not seen yet.
    pub async fn wait_synced(&self) -> Result<(), Error> {
        self.networks
            .wait_until_ready()
            .await
            .map_err(Error::NotSynced)?;
        self.endpoints
            .wait_until_ready()
            .await
            .map_err(Error::NotSynced)?;
        self.ports
            .wait_until_ready()
            .await
            .map_err(Error::NotSynced)?;
        self.remote_endpoints
            .wait_until_ready()
            .await
            .map_err(Error::NotSynced)?;
        self.nodes
            .wait_until_ready()
            .await
            .map_err(Error::NotSynced)?;
        if !self.index_seeded.swap(true, AtomicOrdering::AcqRel) {
            // The watches fill the index right after their stores; this closes the moment
            // between a store being listed and its watch's next step.
            self.reseed_index();
        }
        Ok(())
    }

    /// Fills the index from the stores as they are now and the node's environment (the
    /// resync's safety net: the index follows every event, this follows the stores).
    pub fn reseed_index(&self) {
        let env = Environment {
            node: self.config.node_name.clone(),
            netns_targets: self.config.netns_targets,
            host_subnets: lock(&self.host_subnets).clone(),
            pod_netns: lock(&self.pod_netns).clone(),
            tunnel: self.tunnel_address(),
            tunnel_problem: self.tunnel_problem(),
        };
        self.index.update(|index| {
            index.set_environment(env);
            index.replace_networks(self.networks.state());
            index.replace_endpoints(self.endpoints.state());
            index.replace_ports(self.ports.state());
        });
    }

    /// What an apply within `scope` needs of the node's state (see [`NodeIndex::projection`]).
    pub fn projection(&self, scope: &Scope) -> Built {
        self.index.read(|index| index.projection(scope))
    }

    /// The namespace of Pod `pod` (`NAMESPACE/POD`) is now `path` (`None`: not found here).
    pub fn set_pod_netns(&self, pod: &str, path: Option<PathBuf>) {
        match &path {
            Some(path) => lock(&self.pod_netns).insert(pod.to_owned(), path.clone()),
            None => lock(&self.pod_netns).remove(pod),
        };
        self.index.update(|index| index.set_pod_netns(pod, path));
    }

    /// The node's state from what the stores hold now, built from scratch (the resync's).
    pub fn build(&self) -> Built {
        let (networks, endpoints, ports) = (
            self.networks.state(),
            self.endpoints.state(),
            self.ports.state(),
        );
        let host_subnets = lock(&self.host_subnets).clone();
        let pod_netns = lock(&self.pod_netns).clone();
        let remote_endpoints = self.remote_endpoints.state();
        let tunnels = super::overlay::tunnels(&self.nodes.state());
        let tunnel = self.tunnel_address();
        let tunnel_problem = self.tunnel_problem();
        build::build(Inputs {
            node: &self.config.node_name,
            networks: &networks,
            endpoints: &endpoints,
            ports: &ports,
            host_subnets: &host_subnets,
            pod_netns: &pod_netns,
            netns_targets: self.config.netns_targets,
            remote_endpoints: &remote_endpoints,
            tunnels: &tunnels,
            tunnel,
            tunnel_problem: tunnel_problem.as_deref(),
        })
    }

    /// This node's tunnel address, once detected.
    fn tunnel_address(&self) -> Option<Ipv4Addr> {
        lock(&self.tunnel)
            .as_ref()
            .and_then(|t| t.as_ref().ok())
            .map(|t| t.address)
    }

    /// Why this node has no tunnel address, when the detection said why.
    fn tunnel_problem(&self) -> Option<String> {
        lock(&self.tunnel).as_ref().and_then(|t| t.clone().err())
    }

    /// Sets the other nodes' part of `state` from what the stores hold now.
    pub fn refresh_elsewhere(&self, state: &mut NodeState) {
        self.elsewhere().refresh(state);
    }

    /// What refreshes the other nodes' part of a state inside an apply.
    fn elsewhere(&self) -> ElsewhereStores {
        ElsewhereStores {
            node: self.config.node_name.clone(),
            remote_endpoints: self.remote_endpoints.clone(),
            nodes: self.nodes.clone(),
            tunnel: self.tunnel_address(),
        }
    }

    /// Applies `built` to the kernel (creating missing named namespaces of the endpoints in
    /// scope first), then hands the state to the DNS server.
    ///
    /// Published ports are held first (see [`crate::kernel::host_ports`]): one the node cannot hold is
    /// left out of the table and out of `built`, and its PortPublish refused there. Ports refused
    /// before are tried again by the full apply (the resync) only.
    pub async fn apply(&self, built: &mut Built, scope: Scope) -> Result<Report, Error> {
        let named: Vec<String> = built
            .state
            .endpoints
            .iter()
            .filter(|e| scope.has_endpoint(&e.id))
            .filter_map(|e| match &e.netns {
                Netns::Named(name) => Some(name.clone()),
                _ => None,
            })
            .collect();
        let kernel = Arc::clone(&self.kernel);
        let mut state = built.state.clone();
        let resolv_conf_root = self.config.dns.as_ref().and_then(|d| d.etc_netns.clone());
        let resolv_conf_owner = resolv_conf::owner_of(self.config.host_netns.as_deref());
        let holder = Arc::clone(&self.host_ports);
        let elsewhere = self.elsewhere();
        let (turns, programmed) = (Arc::clone(&self.turns), Arc::clone(&self.programmed));
        let (report, created, uncreatable, refused, (turn, elsewhere_part)) = self
            .blocking(move || {
                let mut created = Vec::new();
                let mut uncreatable = HashMap::new();
                for name in &named {
                    match kernel.ensure_named_netns(name) {
                        Ok(true) => created.push(name.clone()),
                        Ok(false) => {}
                        Err(error) => {
                            let message = pier_runtime::error_chain(&error);
                            tracing::warn!(namespace = %name, error = %message, "cannot create network namespace");
                            uncreatable.insert(name.clone(), message);
                        }
                    }
                }
                let mut holder = lock(&holder);
                // Applies run one at a time from here: the other nodes' part as the stores have
                // it now, so an apply built before a newer one ran cannot take its entries back;
                // and a turn number, so its state does not reach DNS after a newer one's.
                let turn = turns.fetch_add(1, AtomicOrdering::Relaxed) + 1;
                elsewhere.refresh(&mut state);
                let elsewhere_part = (state.tunnel, state.remote_endpoints.clone());
                let wanted: BTreeSet<HostPort> =
                    state.ports.iter().map(HostPort::of).collect();
                let refused =
                    holder.converge(&wanted, matches!(scope, Scope::Full), |ports| {
                        kernel.open_host_ports(ports)
                    });
                state
                    .ports
                    .retain(|port| !refused.contains_key(&HostPort::of(port)));
                let mut report = kernel.apply(&state, &scope);
                // Only the scopes that converge the entries say what the kernel has of them.
                if scope.has_overlay_entries() {
                    let done = report.as_ref().is_ok_and(Report::is_success);
                    *lock(&programmed) = done.then(|| elsewhere_part.clone());
                }
                drop(holder);
                if let (Ok(report), Some(root)) = (&mut report, &resolv_conf_root) {
                    note_foreign_resolv_confs(report, &state, &scope, root, &resolv_conf_owner);
                }
                (report, created, uncreatable, refused, (turn, elsewhere_part))
            })
            .await?;
        (built.state.tunnel, built.state.remote_endpoints) = elsewhere_part;
        build::refuse_ports(built, &refused, &self.config.node_name);
        if !created.is_empty() {
            tracing::info!(?created, "network namespaces created for endpoints");
        }
        let mut report = report.map_err(Error::Dataplane)?;
        // Why a namespace is missing says more than the dataplane's "does not exist".
        for endpoint in &built.state.endpoints {
            if let Netns::Named(name) = &endpoint.netns
                && let Some(message) = uncreatable.get(name)
            {
                report.objects.insert(
                    build::endpoint_key(&endpoint.id),
                    Outcome::Failed(format!("creating network namespace {name}: {message}")),
                );
            }
        }
        self.serve_dns(turn, &built.state);
        Ok(report)
    }

    /// Has [`feed_dns`] hand the node's state to the DNS server, with the other nodes' part of
    /// apply number `turn` unless a later apply's is there already.
    fn serve_dns(&self, turn: u64, state: &NodeState) {
        let mut served = lock(&self.dns_turn);
        if turn < *served {
            return;
        }
        *served = turn;
        *lock(&self.dns_remote) = (state.tunnel, state.remote_endpoints.clone());
        drop(served);
        self.dns_changed.notify_one();
    }

    /// The state the DNS server serves: the node's, with the other nodes' part of the latest
    /// apply.
    fn dns_view(&self) -> NodeState {
        let mut state = self.index.read(|index| index.state().clone());
        (state.tunnel, state.remote_endpoints) = lock(&self.dns_remote).clone();
        state
    }

    /// Whether the other nodes' part `part` is what the kernel last had applied in full.
    pub fn is_programmed(&self, part: &RemotePart) -> bool {
        lock(&self.programmed).as_ref() == Some(part)
    }

    /// Runs kernel work off the async runtime (it blocks on netlink and mounts).
    pub async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Error> {
        tokio::task::spawn_blocking(work)
            .await
            .map_err(Error::Blocking)
    }
}

/// How long the DNS server keeps a state at least while endpoints keep coming: each hand-over
/// copies the node's state and the server rebuilds its views and files from all of it, so
/// during a burst of thousands of Endpoints this bounds that work to a share of the CPUs; the
/// first change after a quiet moment goes at once.
fn dns_pace(endpoints: usize) -> Duration {
    const BASE: Duration = Duration::from_millis(50);
    const PER_ENDPOINT: Duration = Duration::from_micros(50);
    BASE + PER_ENDPOINT * u32::try_from(endpoints).unwrap_or(u32::MAX)
}

/// Hands the node's state to the DNS server after applies, paced by [`dns_pace`], until the
/// task is dropped.
pub async fn feed_dns(ctx: Arc<Context>) {
    loop {
        ctx.dns_changed.notified().await;
        let state = ctx.dns_view();
        let pace = dns_pace(state.endpoints.len());
        ctx.dns_state.send_if_modified(|serving| {
            let changed = *serving != state;
            if changed {
                *serving = state;
            }
            changed
        });
        tokio::time::sleep(pace).await;
    }
}

/// Notes on the endpoints in `scope` whose named namespace has a resolv.conf that Pier did not
/// write (the DNS server leaves it alone): the `Attached` message says so.
fn note_foreign_resolv_confs(
    report: &mut Report,
    state: &NodeState,
    scope: &Scope,
    root: &Path,
    owner: &str,
) {
    let served = resolv_conf::served_namespaces(state);
    for endpoint in &state.endpoints {
        let in_scope = scope.has_endpoint(&endpoint.id);
        if let (true, Netns::Named(name)) = (in_scope, &endpoint.netns)
            && served.contains(name)
            && resolv_conf::is_foreign(root, name, owner)
        {
            report
                .notes
                .entry(build::endpoint_key(&endpoint.id))
                .or_default()
                .push(resolv_conf::FOREIGN_NOTE.to_owned());
        }
    }
}

pub use pier_runtime::key;

/// Writes the node's condition `condition` into `obj`'s status by server-side apply as
/// `pier-node` (only that entry of the list-map: the operator's `Ready` stays its own), and
/// publishes an Event when what it says changed. Unchanged: no write.
pub async fn write_condition<K>(
    ctx: &Context,
    api: &Api<K>,
    obj: &K,
    existing: &[Condition],
    condition: Condition,
) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    let event = conditions::differs(existing, &condition);
    let same_generation = conditions::find(existing, &condition.type_)
        .is_some_and(|c| c.observed_generation == condition.observed_generation);
    if !event && same_generation {
        return Ok(());
    }
    pier_runtime::status::apply_condition(api, obj, FIELD_MANAGER, &condition)
        .await
        .map_err(|source| Error::WriteStatus {
            what: format!("{} {}", K::kind(&()), key(obj)),
            source,
        })?;
    if event {
        let ok = condition.status == "True";
        ctx.events
            .publish(
                obj,
                !ok,
                &condition.reason,
                &condition.type_,
                condition.message,
            )
            .await;
    }
    Ok(())
}
