//! Running the operator: the leader-election loop, and, while leading, the controllers started
//! only after the allocations are rebuilt from every object's status.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::ListParams;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use pier_crds::endpoint::publishes_following;
use pier_crds::{Endpoint, Network, PortPublish};
use pier_runtime::lean;

use crate::admin::Health;
use crate::allocations::Allocations;
use crate::config::{Config, ConfigError, OperatorArgs};
use crate::context::Context;
use crate::controllers::dependents::SharedDependents;
use crate::controllers::{self, endpoint, network, pod, portpublish};
use crate::metrics::Metrics;
use crate::stores::Stores;
use crate::{defaults, leader};

/// Why the operator stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The flags are not usable.
    #[error("configuration")]
    Config(#[from] ConfigError),
    /// No kubeconfig or in-cluster configuration.
    #[error("connecting to the API server")]
    Client(#[source] kube::Error),
    /// The admin port cannot be bound.
    #[error("serving the admin port on {addr}")]
    Admin {
        /// The address.
        addr: std::net::SocketAddr,
        /// The bind error.
        #[source]
        source: std::io::Error,
    },
    /// Waiting for SIGTERM.
    #[error("installing the signal handler")]
    Signal(#[source] std::io::Error),
}

/// `pier operator`: runs until SIGINT or SIGTERM, against the cluster of the kubeconfig (or the
/// in-cluster service account).
pub async fn run(args: OperatorArgs) -> Result<(), RunError> {
    let config = Config::try_from(&args)?;
    let client = Client::try_default().await.map_err(RunError::Client)?;
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::default());
    if let Some(addr) = config.admin_addr {
        let mut registry = prometheus_client::registry::Registry::default();
        metrics.register(&mut registry);
        let admin = pier_runtime::admin::Admin::new(health.clone(), Arc::new(registry));
        let (bound, _task) = admin
            .serve(addr)
            .await
            .map_err(|source| RunError::Admin { addr, source })?;
        tracing::info!(%bound, "admin port: /livez /readyz /metrics");
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(RunError::Signal)?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
    };
    run_with_client(client, config, metrics, health, shutdown).await;
    Ok(())
}

/// Runs the leader-election loop until `shutdown` resolves, running the controllers while this
/// replica holds the Lease and stopping them as soon as it loses it. On shutdown the Lease is
/// released so a standby takes over at once.
pub async fn run_with_client(
    client: Client,
    config: Config,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()>,
) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), &config.lease.namespace);
    let identity = config.lease.identity.clone();
    let mut controllers: Option<AbortOnDrop> = None;
    let mut last_renew: Option<Instant> = None;
    // A standby is ready: it serves its purpose by waiting.
    health.ready.store(true, Ordering::Relaxed);
    tokio::pin!(shutdown);
    loop {
        let leading = match leader::try_acquire_or_renew(&leases, &config.lease).await {
            Ok(held) => {
                last_renew = held.then(Instant::now);
                held
            }
            Err(e) => {
                // Keep leading through a short API outage, but stop well before the lease could
                // have expired for the others (at two thirds of it).
                let keep = controllers.is_some()
                    && last_renew.is_some_and(|t| t.elapsed() < config.lease.duration * 2 / 3);
                tracing::warn!(error = %e, %identity, keep, "cannot renew the lease");
                keep
            }
        };
        if leading && controllers.as_ref().is_none_or(|h| h.0.is_finished()) {
            tracing::info!(%identity, "leading: starting the controllers");
            metrics.leader.set(1);
            health.ready.store(false, Ordering::Relaxed);
            controllers = Some(AbortOnDrop(tokio::spawn(run_controllers(
                client.clone(),
                config.clone(),
                Arc::clone(&metrics),
                Arc::clone(&health),
            ))));
        } else if !leading && let Some(task) = controllers.take() {
            tracing::warn!(%identity, "lost the lease: stopping the controllers");
            drop(task);
            metrics.leader.set(0);
            health.ready.store(true, Ordering::Relaxed);
        }
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(config.lease.retry) => {}
        }
    }
    if let Some(mut task) = controllers.take() {
        task.0.abort();
        let _ = (&mut task.0).await;
        metrics.leader.set(0);
        if let Err(e) = leader::release(&leases, &config.lease).await {
            tracing::warn!(error = %e, "cannot release the lease");
        }
    }
}

/// The controllers' task, aborted when dropped: if the leader loop itself is dropped (its task
/// aborted, as when an embedding program stops it), the controllers must stop with it, or a
/// replica that lost the lease would keep writing.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Lists every object of a kind (status included).
async fn list_all<K>(api: &Api<K>, what: &'static str) -> Result<Vec<K>, controllers::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.list(&ListParams::default())
        .await
        .map(|l| l.items)
        .map_err(|source| controllers::Error::List { what, source })
}

/// Rebuilds the allocations from every object's status.
pub async fn rebuild(client: &Client, config: &Config) -> Result<Allocations, controllers::Error> {
    let networks = list_all(&Api::<Network>::all(client.clone()), "networks").await?;
    let endpoints = list_all(&Api::<Endpoint>::all(client.clone()), "endpoints").await?;
    let publishes = list_all(&Api::<PortPublish>::all(client.clone()), "portpublishes").await?;
    let (allocations, rejected) =
        Allocations::from_objects(config.alloc.clone(), &networks, &endpoints, &publishes);
    for r in &rejected {
        tracing::warn!(rejected = %r, "recorded allocation not kept; the object will be reconciled again");
    }
    tracing::info!(
        networks = networks.len(),
        endpoints = endpoints.len(),
        portpublishes = publishes.len(),
        rejected = rejected.len(),
        "allocations rebuilt from status"
    );
    Ok(allocations)
}

/// The leader's work: default networks, rebuild, then the controllers until aborted.
async fn run_controllers(
    client: Client,
    config: Config,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) {
    // Retry the start-up steps until they succeed: without them nothing may be reconciled.
    let (allocations, config) = loop {
        let started = match with_cluster_ipv6_pool(&client, &config).await {
            Ok(config) => start(&client, &config).await.map(|a| (a, config)),
            Err(e) => Err(e),
        };
        match started {
            Ok(started) => break started,
            Err(e) => {
                tracing::warn!(error = %e, source = ?std::error::Error::source(&e), "operator start-up failed; retrying");
                tokio::time::sleep(config.min_backoff.max(std::time::Duration::from_secs(1))).await;
            }
        }
    };
    let controllers = Controllers::new(&client, &config.alloc.default_network);
    let ctx = Arc::new(Context::new(
        client,
        config,
        allocations,
        metrics,
        controllers.stores(),
    ));
    ctx.observe();
    health.ready.store(true, Ordering::Relaxed);
    controllers.run(ctx).await;
}

/// The configuration with the cluster's own IPv6 pool, unless `--ipv6-pool` names one: the ULA
/// /48 of the cluster's identity, the uid of its `default` Namespace (every cluster has it, it
/// lives as long as the cluster, and reading it needs nothing but `get` on that Namespace).
async fn with_cluster_ipv6_pool(
    client: &Client,
    config: &Config,
) -> Result<Config, controllers::Error> {
    let mut config = config.clone();
    if !config.derive_ipv6_pool {
        return Ok(config);
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let default = namespaces
        .get_metadata_opt("default")
        .await
        .map_err(|source| controllers::Error::Get {
            what: "namespace default".to_owned(),
            source,
        })?;
    match default.and_then(|n| n.metadata.uid) {
        Some(uid) => config.alloc.ipv6_pool = crate::ipam::ipv6::ula_prefix(&uid),
        None => tracing::warn!(
            pool = %config.alloc.ipv6_pool,
            "the default Namespace has no uid: IPv6 subnets come from the fixed fallback pool"
        ),
    }
    Ok(config)
}

async fn start(client: &Client, config: &Config) -> Result<Allocations, controllers::Error> {
    if config.default_networks {
        let created = defaults::ensure(&Api::all(client.clone()), config.bridge_subnet)
            .await
            .map_err(|source| controllers::Error::List {
                what: "default networks",
                source,
            })?;
        if !created.is_empty() {
            tracing::info!(?created, "default networks created");
        }
    }
    rebuild(client, config).await
}

/// The controllers, built before the context that holds their stores.
struct Controllers {
    network: Controller<Network>,
    endpoint: Controller<Endpoint>,
    publish: Controller<PortPublish>,
    pod: Controller<Pod>,
    /// The Endpoints the Pod controller reads (the shared watch's store).
    pod_endpoints: Store<Endpoint>,
    /// The shared watches, run beside the controllers.
    watches: Vec<futures::future::BoxFuture<'static, ()>>,
}

impl Controllers {
    /// The controllers and the watches that bring objects back to them.
    fn new(client: &Client, default_network: &str) -> Self {
        let wc = watcher::Config::default;
        let pods: Api<Pod> = Api::all(client.clone());
        // One watch per kind for every controller here (pier_runtime::lean::SharedWatch): each
        // event is decoded once. Stores keep no managed fields: no reconciler reads them.
        let mut networks = lean::shared(Api::<Network>::all(client.clone()), wc());
        let mut endpoints = lean::shared(Api::<Endpoint>::all(client.clone()), wc());
        let publishes: Api<PortPublish> = Api::all(client.clone());

        // Network: its endpoint count follows its Endpoints.
        let default = default_network.to_owned();
        let network = Controller::for_shared_stream(networks.applied(), networks.store())
            .watches_shared_stream(endpoints.touched(), move |ep| {
                Some(ObjectRef::<Network>::new(&endpoint::network_of(
                    &ep, &default,
                )))
            });

        // Endpoint: waits on its Network, its Pod, or the Endpoint whose namespace it shares;
        // follows the other Endpoints of its namespace (the oldest carries the default route).
        let store = endpoints.store();
        let (by_network, by_pod) = (store.clone(), store.clone());
        let dependents = SharedDependents::default();
        endpoints.inspect(dependents.follow(store.clone()));
        let sharers = store;
        let default = default_network.to_owned();
        let allocation_changes = pier_crds::network::AllocationChanges::default();
        let endpoint = Controller::for_shared_stream(endpoints.applied(), endpoints.store())
            .watches_shared_stream(networks.touched(), move |net| {
                if !allocation_changes.changed(&net) {
                    return Vec::new();
                }
                let name = net.name_any();
                by_network
                    .state()
                    .into_iter()
                    .filter(|e| endpoint::network_of(e, &default) == name)
                    // Only those still waiting for it, and only when its allocation changed: an
                    // allocated Endpoint does not depend on anything of its Network that can
                    // change (subnet and driver are immutable), and requeueing them on every
                    // endpoint-count update would make filling a network quadratic.
                    .filter(|e| {
                        !e.status.as_ref().is_some_and(|s| {
                            pier_crds::conditions::is_true(
                                &s.conditions,
                                pier_crds::conditions::ALLOCATED,
                            )
                        })
                    })
                    .map(|e| ObjectRef::from_obj(&*e))
                    .collect::<Vec<_>>()
            })
            .watches(pods.clone(), wc(), move |pod| {
                let (name, ns) = (pod.name_any(), pod.namespace());
                by_pod
                    .state()
                    .into_iter()
                    .filter(|e| e.namespace() == ns)
                    .filter(|e| e.spec.target.pod.as_ref().is_some_and(|p| p.name == name))
                    .map(|e| ObjectRef::from_obj(&*e))
                    .collect::<Vec<_>>()
            })
            .watches_shared_stream(endpoints.touched(), move |changed| dependents.of(&changed));

        // PortPublish: follows its Endpoint (node, address, readiness), and for a container-mode
        // Endpoint the one whose namespace it shares (the ports lead to that one's address).
        let publish = lean::controller(publishes, wc());
        let store = publish.store();
        let publish = publish.watches_shared_stream(endpoints.touched(), move |ep| {
            let ports = store.state();
            let ns = ep.metadata.namespace.as_deref();
            publishes_following(ports, ns, &ep.name_any(), || sharers.state())
                .iter()
                .map(|p| ObjectRef::from_obj(&**p))
                .collect::<Vec<_>>()
        });

        // Pod: its annotation makes its Endpoints, whose attachment makes its condition. Woken by
        // the Endpoints that target it (deletions included: a predecessor's Endpoint gone frees
        // the name); it reads them from the shared store.
        let pod_endpoints = endpoints.store();
        let targeting = endpoints.touched();
        // Every Pod of the cluster, kept in the store with only what the controller reads.
        let (pod_reader, pod_writer) = reflector::store();
        let all_pods = watcher(pods, wc())
            .default_backoff()
            .modify(pod::keep_what_is_read)
            .reflect(pod_writer)
            .applied_objects();
        let pod = Controller::for_stream(all_pods, pod_reader).watches_shared_stream(
            targeting,
            |ep: Arc<Endpoint>| {
                let pod = ep.spec.target.pod.as_ref()?;
                Some(ObjectRef::<Pod>::new(&pod.name).within(&ep.namespace()?))
            },
        );
        Controllers {
            network,
            endpoint,
            publish,
            pod,
            pod_endpoints,
            watches: vec![Box::pin(networks.run()), Box::pin(endpoints.run())],
        }
    }

    /// The stores the reconcilers read.
    fn stores(&self) -> Stores {
        Stores::new(self.network.store(), self.pod_endpoints.clone())
    }

    /// Runs the controllers (until the task is aborted).
    async fn run(self, ctx: Arc<Context>) {
        let network = self
            .network
            .run(network::reconcile, network::error_policy, Arc::clone(&ctx))
            .for_each(|_| futures::future::ready(()));
        let endpoint = self
            .endpoint
            .run(
                endpoint::reconcile,
                endpoint::error_policy,
                Arc::clone(&ctx),
            )
            .for_each(|_| futures::future::ready(()));
        let publish = self
            .publish
            .run(
                portpublish::reconcile,
                portpublish::error_policy,
                Arc::clone(&ctx),
            )
            .for_each(|_| futures::future::ready(()));
        let keep_ctx = Arc::clone(&ctx);
        let predefined = async move {
            if keep_ctx.config.default_networks {
                defaults::keep(&keep_ctx).await;
            }
        };
        let pod = self
            .pod
            .run(pod::reconcile, pod::error_policy, ctx)
            .for_each(|_| futures::future::ready(()));
        let watches = futures::future::join_all(self.watches);
        futures::join!(network, endpoint, publish, pod, predefined, watches);
    }
}
