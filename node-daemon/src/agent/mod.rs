//! The node agent (`pier node`): watches the API for what belongs on this node, builds the
//! NodeState, drives the dataplane and DNS, and reports `Attached` / `Published`. The operator
//! decides (addresses, ports, names, the default route); the agent applies what status says.
//!
//! Two controllers (Endpoints and PortPublishes whose `status.node` names this node, by field
//! selector) attach and publish one object at a time on the fast path (the attaches in flight
//! share their kernel applies: [`arrival`]); a resync loop runs a full
//! reconcile at start and every `resync` (drift repair, garbage collection, host subnets). The
//! resync builds the node's state from scratch with one pure function ([`build::build`]); the
//! controllers read it from [`index::NodeIndex`], which the watches keep up to date one object
//! at a time with the same evaluation, so N Endpoints arriving at once do not cost N full builds.

pub mod arrival;
pub mod batch;
pub mod build;
pub mod cli;
pub mod context;
pub mod endpoint;
pub mod fake;
pub mod index;
pub mod metrics;
pub mod node_kernel;
pub mod overlay;
pub mod portpublish;
pub mod removal;
pub mod resync;

use std::future::Future;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::ResourceExt;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, controller, watcher};
use pier_crds::endpoint::publishes_following;
use pier_crds::{Endpoint, Network, PortPublish};
use pier_runtime::lean;
use tokio::sync::{Notify, watch};

use crate::dns::{DnsConfig, DnsServer};
use crate::state::NodeState;
use context::{Context, SharedIndex, Stores};
use metrics::NodeMetrics;
use node_kernel::{NodeKernel, RealKernel};

/// Field manager of every write the node agent makes: its conditions and finalizer stay apart
/// from the operator's.
pub const FIELD_MANAGER: &str = "pier-node";
/// The node-scoped finalizer: kernel objects are gone before the object is.
pub const FINALIZER: &str = pier_crds::finalizers::NODE;

/// Everything the node agent runs with.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// This node's name (the Endpoints' and PortPublishes' `status.node`).
    pub node_name: String,
    /// The node's network namespace (`None`: the process's own). Tests and `pier up --node-netns`
    /// pass another so nothing touches the machine's namespace.
    pub host_netns: Option<PathBuf>,
    /// Full reconcile interval (drift repair): every kernel object Pier owns is read back.
    pub resync: Duration,
    /// Embedded DNS (`None`: no DNS server).
    pub dns: Option<DnsConfig>,
    /// Root of procfs, for finding Pods' namespaces (`/proc`; tests pass a fake tree).
    pub proc_root: PathBuf,
    /// Where the agent keeps its own small state (e.g. which named namespaces it created).
    pub state_dir: PathBuf,
    /// Per-object retry delay after an error: doubles per failure up to `max_backoff`; jitter
    /// adds up to as much again.
    pub min_backoff: Duration,
    /// The longest retry delay before jitter.
    pub max_backoff: Duration,
    /// Whether Endpoints may target named namespaces (`/var/run/netns/NAME`) on this node: on
    /// for `pier up` (local mode is all about them), off for `pier node` unless enabled (in a
    /// cluster Pods are the targets, and containerd's `cni-*` namespaces are Pods' own).
    pub netns_targets: bool,
    /// Where the agent counts (the admin port serves these).
    pub metrics: Arc<NodeMetrics>,
    /// This node's tunnel address for overlay networks (`None`: the address of the interface of
    /// the default route).
    pub tunnel_address: Option<Ipv4Addr>,
    /// Create the Node object when it is missing (see `pier node --register-node`).
    pub register_node: bool,
}

impl AgentConfig {
    /// Defaults for a node: resync 10 s, DNS on, `/proc`, `/var/lib/pier/node`, backoff
    /// 100 ms..60 s, the process's own namespace, no netns targets.
    pub fn new(node_name: impl Into<String>) -> AgentConfig {
        AgentConfig {
            node_name: node_name.into(),
            host_netns: None,
            resync: Duration::from_secs(10),
            dns: Some(DnsConfig::default()),
            proc_root: PathBuf::from("/proc"),
            state_dir: PathBuf::from("/var/lib/pier/node"),
            min_backoff: pier_runtime::backoff::DEFAULT_MIN,
            max_backoff: pier_runtime::backoff::DEFAULT_MAX,
            netns_targets: false,
            metrics: Arc::new(NodeMetrics::default()),
            tunnel_address: None,
            register_node: false,
        }
    }
}

/// What the agent's admin port reports on /readyz.
#[derive(Debug, Default)]
pub struct AgentHealth {
    /// Set after the first full reconcile of the node succeeded.
    pub ready: AtomicBool,
}

impl pier_runtime::admin::Readiness for AgentHealth {
    fn ready(&self) -> Result<(), &'static str> {
        if self.ready.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err("the first full reconcile has not succeeded yet")
        }
    }
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("starting the embedded DNS server")]
    Dns(#[source] crate::dns::DnsError),
}

/// Why one reconcile failed: one variant per step.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the watches stopped before listing")]
    NotSynced(#[source] reflector::store::WriterDropped),
    #[error("running kernel work")]
    Blocking(#[source] tokio::task::JoinError),
    #[error("applying the node's state")]
    Dataplane(#[source] crate::dataplane::DataplaneError),
    #[error("attaching endpoint {endpoint}: {message}")]
    Attach { endpoint: String, message: String },
    #[error("detaching endpoint {endpoint}: {message}")]
    Detach { endpoint: String, message: String },
    #[error("attaching the endpoints attached together")]
    Arrival(#[source] Arc<Error>),
    #[error("attaching the endpoint")]
    ArrivalStopped(#[source] batch::BatchStopped),
    #[error("removing the links of the endpoints detached together")]
    Removal(#[source] Arc<Error>),
    #[error("removing the endpoint's links")]
    RemovalStopped(#[source] batch::BatchStopped),
    #[error("publishing the ports of {portpublish}: {message}")]
    Publish {
        portpublish: String,
        message: String,
    },
    #[error("removing a network namespace")]
    Netns(#[source] Arc<crate::kernel::named_netns::NamedNetnsError>),
    #[error("reading pod {pod}")]
    Pod {
        pod: String,
        #[source]
        source: kube::Error,
    },
    #[error("finding a pod's network namespace")]
    PodNetns(#[source] crate::kernel::podns::PodNetnsError),
    #[error("reading the node's own addresses and routes")]
    HostSubnets(#[source] crate::kernel::netlink::NetlinkError),
    #[error("recording the tunnel address on node {node}")]
    RecordTunnel {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("writing the status of {what}")]
    WriteStatus {
        what: String,
        #[source]
        source: pier_runtime::status::StatusError,
    },
    #[error("finalizer {FINALIZER}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// A finalizer patch made from a cached copy older than another writer's change (the operator
    /// adds its finalizer at the same time): the API refuses it (409, or 422 for the JSON patch's
    /// test) and the next run, on the newer copy, succeeds. Expected, so not worth a warning.
    pub fn is_transient(&self) -> bool {
        use kube::runtime::finalizer::Error as F;
        match self {
            Error::Finalizer(inner) => matches!(
                &**inner,
                F::AddFinalizer(kube::Error::Api(s)) | F::RemoveFinalizer(kube::Error::Api(s))
                    if s.code == 409 || s.code == 422
            ),
            _ => false,
        }
    }
}

/// How many PortPublishes are reconciled at once (kernel work is serialized in the dataplane
/// anyway; this bounds the blocking threads waiting for it).
const CONCURRENCY: u16 = 8;

/// How many Endpoints are reconciled at once. A detach waits for a removal shared with the
/// detaches in flight without holding a thread, and one removal takes the links of all of them
/// (see [`removal`]): the more in flight when many are deleted, the fewer removals. Attaches are
/// bounded on their own ([`ATTACHES_AT_ONCE`]). With 64, 500 Endpoints deleted at once took 11
/// removals of at most 64 each and 3.1 s until no veth was left (benches/teardown.sh).
const ENDPOINT_CONCURRENCY: u16 = 256;

/// How many Endpoint attaches run at once. Those waiting for an apply hold no thread, and the
/// next apply takes all of them (see [`arrival`]), so this bounds an apply's batch: with up to 64
/// endpoints, what an apply costs whatever its size (reading the bridges and the firewall table,
/// handing the state to DNS) is a small part of it.
pub const ATTACHES_AT_ONCE: usize = 64;

/// Runs the agent on this node's kernel until `shutdown` resolves. Kernel objects stay in place
/// on shutdown (a restart resumes with them); `pier down` / `Dataplane::reset` removes them.
pub async fn run(
    client: kube::Client,
    config: AgentConfig,
    health: Arc<AgentHealth>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let kernel = Arc::new(RealKernel::new(&config));
    run_with(client, config, kernel, health, shutdown).await
}

/// Runs the agent with its kernel work going to `kernel` (the node's own, or a fake in tests)
/// until `shutdown` resolves.
pub async fn run_with(
    client: kube::Client,
    config: AgentConfig,
    kernel: Arc<dyn NodeKernel>,
    health: Arc<AgentHealth>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let on_node = on_node(&config.node_name);
    let networks: Api<Network> = Api::all(client.clone());
    let index = SharedIndex::new(&config);

    // Networks: a store of its own (the controllers' stores hold this node's objects only).
    // No store keeps managed fields (pier_runtime::lean): nothing here reads them.
    // The same watch wakes the Endpoint controller.
    let mut network_watch = lean::shared(networks, watcher::Config::default());
    let network_store = network_watch.store();
    network_watch.inspect(feeder(&index, &network_store));
    let networks_touched = network_watch.touched();

    // This node's Endpoints and PortPublishes: each event reaches the index right after the
    // controller's store. One watch of the Endpoints feeds the index, the Endpoint controller
    // and the PortPublish controller (each event decoded once).
    let endpoints: Api<Endpoint> = Api::all(client.clone());
    let publishes: Api<PortPublish> = Api::all(client.clone());
    let mut endpoint_watch = lean::shared(endpoints.clone(), on_node.clone());
    let endpoint_store = endpoint_watch.store();
    endpoint_watch.inspect(feeder(&index, &endpoint_store));
    let endpoint_controller =
        Controller::for_shared_stream(endpoint_watch.applied(), endpoint_store.clone())
            .with_config(controller::Config::default().concurrency(ENDPOINT_CONCURRENCY));
    let endpoints_touched = endpoint_watch.touched();
    let (publish_store, publish_events) = lean::store(publishes, on_node.clone());
    let publish_events = publish_events
        .inspect_ok(feeder(&index, &publish_store))
        .applied_objects();
    let publish_controller = Controller::for_stream(publish_events, publish_store.clone())
        .with_config(controller::Config::default().concurrency(CONCURRENCY));

    // The other nodes' Endpoints and the Nodes: an overlay's entries here follow them.
    let overlay_changed = Arc::new(Notify::new());
    let (remote_store, remote_watch) = lean::store(endpoints.clone(), off_node(&config.node_name));
    let remote_watch = remote_watch.for_each(notifier(&overlay_changed));
    let nodes: Api<PartialObjectMeta<Node>> = Api::all(client.clone());
    let (node_store, node_watch) = lean::store(nodes, watcher::Config::default());
    let node_watch = node_watch.for_each(notifier(&overlay_changed));

    let (dns_state, dns_watch) = watch::channel(NodeState::default());
    let dns = match config.dns.clone() {
        Some(dns_config) => Some(
            DnsServer::start_with(
                config.host_netns.clone(),
                dns_watch,
                DnsConfig {
                    metrics: config.metrics.dns.clone(),
                    ..dns_config
                },
            )
            .map_err(AgentError::Dns)?,
        ),
        None => None,
    };
    let (removals, removal_queue) = removal::removals();
    let (arrivals, arrival_queue) = arrival::arrivals();
    let ctx = Arc::new(Context::new(
        client.clone(),
        config,
        kernel,
        Stores {
            networks: network_store,
            endpoints: endpoint_store.clone(),
            ports: publish_store.clone(),
            remote_endpoints: remote_store,
            nodes: node_store,
            overlay_changed,
            index,
        },
        dns_state,
        removals,
        arrivals,
    ));
    let has_dns = dns.is_some();

    let (stop_tx, stop_rx) = watch::channel(false);
    let endpoint_controller = run_endpoints(
        endpoint_controller,
        networks_touched,
        &ctx,
        stopped(&stop_rx),
    );
    let publish_controller = run_publishes(
        publish_controller,
        endpoints_touched,
        &ctx,
        stopped(&stop_rx),
    );
    let resync = resync::run(Arc::clone(&ctx), health);
    let overlay = overlay::follow(Arc::clone(&ctx));
    let removal = removal::run(Arc::clone(&ctx), removal_queue);
    let arrival = arrival::run(Arc::clone(&ctx), arrival_queue);
    let feed_dns = async {
        if has_dns {
            context::feed_dns(Arc::clone(&ctx)).await;
        } else {
            futures::future::pending::<()>().await;
        }
    };
    let work = async {
        tokio::select! {
            () = network_watch.run() => {}
            () = endpoint_watch.run() => {}
            _ = removal => {}
            _ = arrival => {}
            _ = remote_watch => {}
            _ = node_watch => {}
            _ = resync => {}
            _ = overlay => {}
            _ = feed_dns => {}
            () = async { futures::join!(endpoint_controller, publish_controller); } => {}
        }
    };
    tokio::pin!(work);
    tokio::select! {
        () = &mut work => tracing::warn!("node agent stopped on its own"),
        () = shutdown => {
            tracing::info!("node agent shutting down");
            let _ = stop_tx.send(true);
            // The controllers finish the reconciles in flight (no kernel work is cut in half).
            let _ = tokio::time::timeout(Duration::from_secs(10), &mut work).await;
        }
    }
    if let Some(dns) = dns {
        dns.stop().await;
    }
    Ok(())
}

/// What the index does with a watch event of its kind of object; on a relist, whose objects its
/// `store` holds by then (the reflector applies each event before passing it on), the index
/// takes the store's objects, which also forgets those deleted while the watch was down.
fn feeder<K>(index: &SharedIndex, store: &Store<K>) -> impl Fn(&watcher::Event<K>) + use<K>
where
    K: Indexed + kube::Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    let (index, store) = (index.clone(), store.clone());
    move |event| match event {
        // The store's copy: the index shares it instead of keeping one of its own.
        watcher::Event::Apply(object) => {
            let object = store
                .get(&ObjectRef::from_obj(object))
                .unwrap_or_else(|| Arc::new(object.clone()));
            index.update(|index| K::upsert(index, object));
        }
        watcher::Event::Delete(object) => index.update(|index| K::remove(index, object)),
        watcher::Event::InitDone => {
            let objects = store.state();
            index.update(|index| K::replace(index, objects));
        }
        watcher::Event::Init | watcher::Event::InitApply(_) => {}
    }
}

/// A kind of object the node's index is fed.
trait Indexed: Sized {
    fn upsert(index: &mut index::NodeIndex, object: Arc<Self>);
    fn remove(index: &mut index::NodeIndex, object: &Self);
    fn replace(index: &mut index::NodeIndex, objects: Vec<Arc<Self>>);
}

impl Indexed for Network {
    fn upsert(index: &mut index::NodeIndex, object: Arc<Network>) {
        index.upsert_network(object);
    }
    fn remove(index: &mut index::NodeIndex, object: &Network) {
        index.remove_network(&object.name_any());
    }
    fn replace(index: &mut index::NodeIndex, objects: Vec<Arc<Network>>) {
        index.replace_networks(objects);
    }
}

impl Indexed for Endpoint {
    fn upsert(index: &mut index::NodeIndex, object: Arc<Endpoint>) {
        index.upsert_endpoint(object);
    }
    fn remove(index: &mut index::NodeIndex, object: &Endpoint) {
        index.remove_endpoint(&build::object_id(&object.metadata));
    }
    fn replace(index: &mut index::NodeIndex, objects: Vec<Arc<Endpoint>>) {
        index.replace_endpoints(objects);
    }
}

impl Indexed for PortPublish {
    fn upsert(index: &mut index::NodeIndex, object: Arc<PortPublish>) {
        index.upsert_ports(object);
    }
    fn remove(index: &mut index::NodeIndex, object: &PortPublish) {
        index.remove_ports(&build::object_id(&object.metadata));
    }
    fn replace(index: &mut index::NodeIndex, objects: Vec<Arc<PortPublish>>) {
        index.replace_ports(objects);
    }
}

/// The watch of the objects whose `status.node` names `node`.
fn on_node(node: &str) -> watcher::Config {
    watcher::Config::default().fields(&format!("status.node={node}"))
}

/// The watch of the objects whose `status.node` names another node (or none yet).
fn off_node(node: &str) -> watcher::Config {
    watcher::Config::default().fields(&format!("status.node!={node}"))
}

/// A `for_each` callback that wakes `notify` on every watch event.
fn notifier<T>(notify: &Arc<Notify>) -> impl FnMut(T) -> futures::future::Ready<()> + use<T> {
    let notify = Arc::clone(notify);
    move |_| {
        notify.notify_one();
        futures::future::ready(())
    }
}

/// Resolves once `true` is sent on the channel `stop` belongs to.
fn stopped(stop: &watch::Receiver<bool>) -> impl Future<Output = ()> + use<> {
    let mut stop = stop.clone();
    async move {
        let _ = stop.wait_for(|stop| *stop).await;
    }
}

/// Runs the Endpoint controller until `stopped` resolves.
fn run_endpoints(
    controller: Controller<Endpoint>,
    networks: impl futures::Stream<Item = Arc<Network>> + Send + 'static,
    ctx: &Arc<Context>,
    stopped: impl Future<Output = ()> + Send + Sync + 'static,
) -> impl Future<Output = ()> {
    // A Network's status being filled concerns its endpoints here that wait for it. Only those,
    // and only when its allocation changed: the operator rewrites a Network's status on every
    // endpoint it gains, and waking its waiting endpoints each time would make filling a network
    // quadratic. What else can change the next resync applies.
    let by_network = controller.store();
    let allocation_changes = pier_crds::network::AllocationChanges::default();
    controller
        .watches_shared_stream(networks, move |net| {
            if !allocation_changes.changed(&net) {
                return Vec::new();
            }
            let name = net.name_any();
            by_network
                .state()
                .into_iter()
                .filter(|e| e.status.as_ref().and_then(|s| s.network.as_deref()) == Some(&name))
                .filter(|e| {
                    !e.status.as_ref().is_some_and(|s| {
                        pier_crds::conditions::is_true(
                            &s.conditions,
                            pier_crds::conditions::ATTACHED,
                        )
                    })
                })
                .map(|e| ObjectRef::from_obj(&*e))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(stopped)
        .run(endpoint::reconcile, endpoint::error_policy, Arc::clone(ctx))
        .for_each(|_| futures::future::ready(()))
}

/// Runs the PortPublish controller until `stopped` resolves. A PortPublish follows its Endpoint
/// (attached, re-addressed, gone), and in container mode the Endpoint whose namespace that one
/// shares: `endpoints` are this node's, as they change.
fn run_publishes(
    controller: Controller<PortPublish>,
    endpoints: impl futures::Stream<Item = Arc<Endpoint>> + Send + 'static,
    ctx: &Arc<Context>,
    stopped: impl Future<Output = ()> + Send + Sync + 'static,
) -> impl Future<Output = ()> {
    let by_endpoint = controller.store();
    let sharers = ctx.endpoints.clone();
    controller
        .watches_shared_stream(endpoints, move |ep| {
            let ports = by_endpoint.state();
            let ns = ep.metadata.namespace.as_deref();
            publishes_following(ports, ns, &ep.name_any(), || sharers.state())
                .iter()
                .map(|p| ObjectRef::from_obj(&**p))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(stopped)
        .run(
            portpublish::reconcile,
            portpublish::error_policy,
            Arc::clone(ctx),
        )
        .for_each(|_| futures::future::ready(()))
}
