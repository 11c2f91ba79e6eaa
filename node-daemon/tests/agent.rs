//! The node agent's controllers against the embedded API server and the real operator, with the
//! in-memory kernel ([`FakeKernel`]): attach, detach and the finalizers' order, refusal reasons,
//! and the resync's repairs. No root, no kernel object: every test has its own API server.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use pier_apiserver::ApiServer;
use pier_crds::conditions::reason;
use pier_crds::conditions::{self, ATTACHED, PUBLISHED};
use pier_crds::finalizers;
use pier_crds::names::TUNNEL_ADDRESS_ANNOTATION;
use pier_crds::{Endpoint, Network, PortPublish};
use pier_node::agent::fake::{FAKE_TUNNEL, FakeKernel};
use pier_node::agent::metrics::NodeMetrics;
use pier_node::agent::{AgentConfig, AgentHealth};
use pier_node::dataplane::Scope;
use pier_node::dataplane::{ObjectKey, Outcome};
use pier_node::kernel::host_ports::HostPort;
use pier_node::kernel::hostnet::HostSubnet;
use pier_node::state::{Attachment, Netns, Protocol};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The operator's test fixture: an embedded API server with Pier's CRDs, and the real operator.
#[path = "../../operator/tests/common/mod.rs"]
mod operator_fixture;

use operator_fixture::{NODE, Operator, object};

/// How long a wait may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(30);

/// An API server with Pier's CRDs, the operator, and the agent on a fake kernel.
struct Cluster {
    _server: ApiServer,
    client: Client,
    kernel: Arc<FakeKernel>,
    /// What the agent counts.
    metrics: Arc<NodeMetrics>,
    operator: Operator,
    stop: watch::Sender<bool>,
    agent: JoinHandle<()>,
}

impl Cluster {
    /// Starts everything and waits for the agent's first full reconcile. `kernel` is the node
    /// as it is before the agent starts.
    async fn start(kernel: FakeKernel, resync: Duration) -> Cluster {
        let (server, client) = operator_fixture::cluster().await;
        let operator = Operator::start(&client, operator_fixture::config("test-operator"));
        let (stop, stopped) = watch::channel(false);
        let until_stopped = || {
            let mut stopped = stopped.clone();
            async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            }
        };

        let mut agent = AgentConfig::new(NODE);
        agent.resync = resync;
        agent.dns = None;
        agent.netns_targets = true;
        agent.min_backoff = Duration::from_millis(20);
        agent.max_backoff = Duration::from_millis(500);
        let metrics = Arc::clone(&agent.metrics);
        let kernel = Arc::new(kernel);
        let health = Arc::new(AgentHealth::default());
        let agent = tokio::spawn({
            let (client, kernel, health) = (client.clone(), kernel.clone(), health.clone());
            let stopped = until_stopped();
            async move {
                let result =
                    pier_node::agent::run_with(client, agent, kernel, health, stopped).await;
                if let Err(error) = result {
                    panic!("the agent stopped: {error}");
                }
            }
        });
        let deadline = Instant::now() + PATIENCE;
        while !health.ready.load(Ordering::Relaxed) {
            assert!(Instant::now() < deadline, "the agent never became ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Cluster {
            _server: server,
            client,
            kernel,
            metrics,
            operator,
            stop,
            agent,
        }
    }

    fn api<K: Resource<Scope = k8s_openapi::NamespaceResourceScope>>(&self) -> Api<K>
    where
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), "default")
    }

    /// Stops the agent and the operator cleanly (an agent that panicked fails the test).
    async fn stop(self) {
        let _ = self.stop.send(true);
        self.agent.await.expect("the agent stopped cleanly");
        self.operator.stop().await;
    }
}

async fn create<K>(api: &Api<K>, value: Value) -> K
where
    K: Resource + Clone + DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    api.create(&PostParams::default(), &object(value))
        .await
        .expect("object created")
}

/// A bridge Network with `subnet`.
async fn network(cluster: &Cluster, name: &str, subnet: &str) {
    let networks: Api<Network> = Api::all(cluster.client.clone());
    create(
        &networks,
        json!({"apiVersion": "pier.dev/v1alpha1", "kind": "Network",
            "metadata": {"name": name}, "spec": {"subnet": subnet}}),
    )
    .await;
}

/// An Endpoint of `target` on `network`.
async fn endpoint(cluster: &Cluster, name: &str, network: &str, target: Value) -> Endpoint {
    create(
        &cluster.api(),
        json!({"apiVersion": "pier.dev/v1alpha1", "kind": "Endpoint",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"network": network, "target": target}}),
    )
    .await
}

/// Polls `name` until `pred` holds.
async fn wait_for<K, F>(api: &Api<K>, name: &str, what: &str, pred: F) -> K
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    F: Fn(&K) -> bool,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        let got = api.get_opt(name).await.expect("get");
        if let Some(obj) = &got
            && pred(obj)
        {
            return obj.clone();
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {name}: {what}; last seen {got:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls until `check` holds.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The condition `type_` of a status's conditions as (status, reason, message).
fn condition(list: &[pier_crds::Condition], type_: &str) -> Option<(String, String, String)> {
    conditions::find(list, type_).map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

fn attached(ep: &Endpoint) -> Option<(String, String, String)> {
    ep.status
        .as_ref()
        .and_then(|s| condition(&s.conditions, ATTACHED))
}

fn published(publish: &PortPublish) -> Option<(String, String, String)> {
    publish
        .status
        .as_ref()
        .and_then(|s| condition(&s.conditions, PUBLISHED))
}

fn is_attached(ep: &Endpoint) -> bool {
    attached(ep).is_some_and(|c| c.0 == "True")
}

/// Whether `ep` is `Attached=False` for `why` (before the operator's allocation, it is for
/// another reason first: `NotAllocated`).
fn refused_for(ep: &Endpoint, why: &str) -> bool {
    attached(ep).is_some_and(|c| c.0 == "False" && c.1 == why)
}

fn has_finalizer<K: Resource>(obj: &K, finalizer: &str) -> bool {
    obj.finalizers().iter().any(|f| f == finalizer)
}

/// Waits until an Event with `reason` about `name` exists; returns its (type, note).
async fn event_with(client: &Client, name: &str, reason: &str) -> (String, String) {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), "default");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let events = api.list(&Default::default()).await.expect("events listed");
        let found = events.items.into_iter().find(|e| {
            e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                && e.reason.as_deref() == Some(reason)
        });
        if let Some(event) = found {
            return (
                event.type_.unwrap_or_default(),
                event.note.unwrap_or_default(),
            );
        }
        assert!(Instant::now() < deadline, "no {reason} event about {name}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn tcp(port: u16) -> HostPort {
    HostPort {
        ip: Ipv4Addr::UNSPECIFIED.into(),
        protocol: Protocol::Tcp,
        port,
    }
}

/// What a watch of Endpoints saw of one object: when, its finalizers, and whether it was the
/// deletion.
type Seen = Vec<(Instant, Vec<String>, bool)>;

/// Records every change of Endpoint `name` the watch sees, until the test ends.
fn record_changes(api: Api<Endpoint>, name: &str) -> Arc<std::sync::Mutex<Seen>> {
    let seen = Arc::new(std::sync::Mutex::new(Seen::new()));
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        let mut events = watcher(api, config).boxed();
        while let Some(event) = events.next().await {
            let (obj, deleted) = match event {
                Ok(watcher::Event::Apply(obj) | watcher::Event::InitApply(obj)) => (obj, false),
                Ok(watcher::Event::Delete(obj)) => (obj, true),
                _ => continue,
            };
            let at = Instant::now();
            let list = obj.finalizers().to_vec();
            record
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push((at, list, deleted));
        }
    });
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_then_detach_in_finalizer_order() {
    let cluster = Cluster::start(FakeKernel::new(), Duration::from_secs(10)).await;
    network(&cluster, "web", "10.30.0.0/24").await;
    let eps: Api<Endpoint> = cluster.api();
    endpoint(&cluster, "a", "web", json!({"netns": {"name": "ns-a"}})).await;

    // Attach: Attached=True, the fake has the endpoint as the operator allocated it, in the
    // namespace the agent created, and the node's finalizer holds the object.
    let ep = wait_for(&eps, "a", "Attached=True", is_attached).await;
    let status = ep.status.clone().expect("status");
    let on_node = cluster
        .kernel
        .attached("default/a")
        .expect("the fake has the endpoint");
    assert_eq!(on_node.netns, Netns::Named("ns-a".into()));
    let Attachment::Bridge(bridge) = &on_node.attachment else {
        panic!("a bridge attachment: {on_node:?}");
    };
    assert_eq!(
        bridge.address.map(|a| a.to_string()),
        status.ipv4_address,
        "the address is the operator's"
    );
    assert_eq!(Some(&bridge.mac), status.mac_address.as_ref());
    assert!(cluster.kernel.named_netns().contains("ns-a"));
    assert!(has_finalizer(&ep, finalizers::NODE));
    assert!(has_finalizer(&ep, finalizers::OPERATOR));
    // The attach was the endpoint's own scoped apply.
    assert!(cluster.kernel.applied().iter().any(|a| {
        matches!(&a.scope, Scope::Endpoints(ids) if ids == &["default/a".to_owned()])
            && a.state.endpoints.iter().any(|e| e.id == "default/a")
    }));
    let veth = on_node.host_veth_name();
    assert!(cluster.kernel.links().contains(&veth));

    // Detach refused by the kernel: the object stays, held by both finalizers, and the
    // endpoint stays on the node.
    let seen = record_changes(eps.clone(), "a");
    cluster
        .kernel
        .fail_detach("default/a", Some("device or resource busy"));
    eps.delete("a", &DeleteParams::default())
        .await
        .expect("deleted");
    eventually("the agent tried to remove the veth", || {
        cluster.kernel.applied().iter().any(|a| {
            matches!(&a.scope, Scope::Removal(links) if links.contains(&veth))
                && matches!(
                    a.report.objects.get(&ObjectKey::Link(veth.clone())),
                    Some(Outcome::Failed(_))
                )
        })
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held = eps.get("a").await.expect("still there");
    assert!(held.metadata.deletion_timestamp.is_some());
    assert!(has_finalizer(&held, finalizers::NODE));
    assert!(has_finalizer(&held, finalizers::OPERATOR));
    assert!(cluster.kernel.attached("default/a").is_some());
    assert!(cluster.kernel.links().contains(&veth));
    assert!(!cluster.kernel.removed().iter().any(|r| r.link == veth));

    // The kernel lets go: the veth goes, then the node's finalizer, then the operator's.
    cluster.kernel.fail_detach("default/a", None);
    let deadline = Instant::now() + PATIENCE;
    while eps.get_opt("a").await.expect("get").is_some() {
        assert!(Instant::now() < deadline, "the endpoint was never deleted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(cluster.kernel.attached("default/a").is_none());
    assert!(!cluster.kernel.links().contains(&veth));
    assert!(
        !cluster.kernel.named_netns().contains("ns-a"),
        "the namespace the agent made goes with its last endpoint"
    );
    let removed = cluster.kernel.removed();
    let veth_removed = removed
        .iter()
        .find(|r| r.link == veth)
        .expect("the veth removal was recorded")
        .at;
    eventually("the watch saw the deletion", || {
        seen.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .any(|s| s.2)
    })
    .await;
    let seen = seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let node_released = seen
        .iter()
        .find(|(_, list, _)| !list.iter().any(|f| f == finalizers::NODE))
        .expect("a version without the node's finalizer");
    assert!(
        veth_removed < node_released.0,
        "the node's finalizer went after the kernel detach"
    );
    assert!(
        node_released.1.iter().any(|f| f == finalizers::OPERATOR) && !node_released.2,
        "the node's finalizer went first, while the operator's still held: {seen:?}"
    );
    for (_, list, _) in &seen {
        let holds = |finalizer: &str| list.iter().any(|f| f == finalizer);
        assert!(
            holds(finalizers::OPERATOR) || !holds(finalizers::NODE),
            "the operator's finalizer never goes before the node's: {seen:?}"
        );
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attach_failure_is_attached_false_with_a_warning_until_it_passes() {
    let kernel = FakeKernel::new();
    let message = "moving eth0 into ns-b: file exists";
    kernel.fail_attach("default/b", Some(message));
    let cluster = Cluster::start(kernel, Duration::from_secs(10)).await;
    network(&cluster, "web", "10.31.0.0/24").await;
    let eps: Api<Endpoint> = cluster.api();
    endpoint(&cluster, "b", "web", json!({"netns": {"name": "ns-b"}})).await;

    let ep = wait_for(&eps, "b", "Attached=False", |e| {
        refused_for(e, reason::ATTACH_FAILED)
    })
    .await;
    let (_, _, said) = attached(&ep).expect("Attached");
    assert_eq!(said, message);
    let (kind, note) = event_with(&cluster.client, "b", reason::ATTACH_FAILED).await;
    assert_eq!(kind, "Warning");
    assert_eq!(note, message);
    assert!(cluster.kernel.attached("default/b").is_none());

    // The kernel recovers: the controller's retry attaches it.
    cluster.kernel.fail_attach("default/b", None);
    wait_for(&eps, "b", "Attached=True", is_attached).await;
    assert!(cluster.kernel.attached("default/b").is_some());
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_without_a_namespace_on_the_node_is_pod_netns_not_found_until_it_runs() {
    let cluster = Cluster::start(FakeKernel::new(), Duration::from_secs(10)).await;
    network(&cluster, "web", "10.32.0.0/24").await;
    let pods: Api<Pod> = cluster.api();
    let pod = create(
        &pods,
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-0", "namespace": "default"},
            "spec": {"nodeName": NODE, "containers": [{"name": "web", "image": "nginx"}]}}),
    )
    .await;
    let eps: Api<Endpoint> = cluster.api();
    endpoint(&cluster, "p", "web", json!({"pod": {"name": "web-0"}})).await;

    let ep = wait_for(&eps, "p", "Attached=False", |e| {
        refused_for(e, reason::POD_NETNS_NOT_FOUND)
    })
    .await;
    let (_, _, said) = attached(&ep).expect("Attached");
    assert!(said.contains("default/web-0"), "{said}");
    assert!(cluster.kernel.attached("default/p").is_none());

    // The Pod's sandbox starts: the agent looks again on its own and attaches into it.
    let netns = "/proc/4242/ns/net";
    cluster.kernel.add_pod(&pod.uid().expect("uid"), netns);
    wait_for(&eps, "p", "Attached=True", is_attached).await;
    let on_node = cluster.kernel.attached("default/p").expect("attached");
    assert_eq!(on_node.netns, Netns::Path(netns.into()));
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subnet_the_node_uses_is_subnet_in_use_on_node() {
    let kernel = FakeKernel::new();
    kernel.set_host_subnets(vec![HostSubnet {
        subnet: "10.33.0.0/16".parse().expect("subnet"),
        source: "address 10.33.1.1/16 on eth1".into(),
    }]);
    let cluster = Cluster::start(kernel, Duration::from_secs(10)).await;
    network(&cluster, "lan", "10.33.5.0/24").await;
    let eps: Api<Endpoint> = cluster.api();
    endpoint(&cluster, "s", "lan", json!({"netns": {"name": "ns-s"}})).await;
    let ep = wait_for(&eps, "s", "Attached=False", |e| {
        refused_for(e, reason::SUBNET_IN_USE_ON_NODE)
    })
    .await;
    let (_, _, said) = attached(&ep).expect("Attached");
    assert!(said.contains("address 10.33.1.1/16 on eth1"), "{said}");
    assert!(cluster.kernel.attached("default/s").is_none());
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_in_use_is_refused_the_others_published_and_the_resync_publishes_it_once_free() {
    let kernel = FakeKernel::new();
    kernel.use_port(tcp(18081));
    let cluster = Cluster::start(kernel, Duration::from_millis(300)).await;
    network(&cluster, "web", "10.34.0.0/24").await;
    let eps: Api<Endpoint> = cluster.api();
    endpoint(&cluster, "srv", "web", json!({"netns": {"name": "ns-srv"}})).await;
    wait_for(&eps, "srv", "Attached=True", is_attached).await;
    let publishes: Api<PortPublish> = cluster.api();
    create(
        &publishes,
        json!({"apiVersion": "pier.dev/v1alpha1", "kind": "PortPublish",
            "metadata": {"name": "srv-ports", "namespace": "default"},
            "spec": {"endpoint": "srv", "ports": [
                {"containerPort": 80, "hostPort": 18080},
                {"containerPort": 81, "hostPort": 18081}]}}),
    )
    .await;

    let publish = wait_for(&publishes, "srv-ports", "Published=False", |p| {
        published(p).is_some_and(|c| c.0 == "False" && c.1 == reason::PORT_IN_USE_ON_NODE)
    })
    .await;
    let (_, _, said) = published(&publish).expect("Published");
    assert!(said.contains("0.0.0.0:18081/tcp"), "{said}");
    let live: Vec<u16> = cluster
        .kernel
        .published()
        .iter()
        .map(|p| p.host_port)
        .collect();
    assert_eq!(live, vec![18080], "the other port is published");
    assert!(cluster.kernel.held_ports().contains(&tcp(18080)));
    assert!(!cluster.kernel.held_ports().contains(&tcp(18081)));

    // The process lets go of the port: the next resync holds and publishes it.
    cluster.kernel.release_port(&tcp(18081));
    wait_for(&publishes, "srv-ports", "Published=True", |p| {
        published(p).is_some_and(|c| c.0 == "True")
    })
    .await;
    eventually("both ports are published", || {
        cluster.kernel.published().len() == 2
    })
    .await;
    assert!(cluster.kernel.held_ports().contains(&tcp(18081)));

    // Withdrawn before the object goes: the table is empty and the sockets closed.
    publishes
        .delete("srv-ports", &DeleteParams::default())
        .await
        .expect("deleted");
    let deadline = Instant::now() + PATIENCE;
    while publishes.get_opt("srv-ports").await.expect("get").is_some() {
        assert!(
            Instant::now() < deadline,
            "the PortPublish was never deleted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(cluster.kernel.published().is_empty());
    assert!(cluster.kernel.held_ports().is_empty());
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_resync_reattaches_what_was_removed_behind_the_agents_back() {
    let cluster = Cluster::start(FakeKernel::new(), Duration::from_millis(300)).await;
    network(&cluster, "web", "10.35.0.0/24").await;
    let eps: Api<Endpoint> = cluster.api();
    endpoint(&cluster, "r", "web", json!({"netns": {"name": "ns-r"}})).await;
    wait_for(&eps, "r", "Attached=True", is_attached).await;
    let veth = cluster
        .kernel
        .attached("default/r")
        .expect("attached")
        .host_veth_name();

    let before = cluster.kernel.applied().len();
    cluster.kernel.delete_by_hand("default/r");
    assert!(!cluster.kernel.links().contains(&veth));
    eventually("the endpoint is back", || {
        cluster.kernel.attached("default/r").is_some() && cluster.kernel.links().contains(&veth)
    })
    .await;
    // Nothing in the API changed: the repair is the resync's full apply.
    let applied = cluster.kernel.applied();
    let repair = applied[before..]
        .iter()
        .find(|a| {
            matches!(
                a.report.objects.get(&ObjectKey::endpoint("default/r")),
                Some(Outcome::Changed(_))
            )
        })
        .expect("an apply re-attached it");
    assert!(matches!(repair.scope, Scope::Full), "{:?}", repair.scope);
    let ep = eps.get("r").await.expect("endpoint");
    assert!(is_attached(&ep));
    cluster.stop().await;
}

/// Another node's Endpoint of an overlay network this node has reaches this node's entries on its
/// own event, not at the resync (an hour here): an apply of `Scope::Overlay` with it (at its node's
/// tunnel address) within seconds, and one without it once its Node is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_nodes_overlay_endpoint_is_applied_on_its_event() {
    let cluster = Cluster::start(FakeKernel::default(), Duration::from_secs(3600)).await;
    let networks: Api<Network> = Api::all(cluster.client.clone());
    create(
        &networks,
        json!({"apiVersion": "pier.dev/v1alpha1", "kind": "Network",
            "metadata": {"name": "ov"}, "spec": {"driver": "overlay", "subnet": "10.40.0.0/24"}}),
    )
    .await;
    // Node B, with the tunnel address its agent would record.
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    let node_b = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-b",
        "annotations": {TUNNEL_ADDRESS_ANNOTATION: "198.51.100.2"}}});
    nodes
        .patch(
            "node-b",
            &PatchParams::apply("test"),
            &Patch::Apply(&node_b),
        )
        .await
        .expect("node B recorded");
    endpoint(
        &cluster,
        "here",
        "ov",
        json!({"netns": {"name": "here", "node": NODE}}),
    )
    .await;
    wait_for(&cluster.api(), "here", "attached", is_attached).await;
    let tunnel = cluster.kernel.applied().last().and_then(|a| a.state.tunnel);
    assert_eq!(tunnel, Some(FAKE_TUNNEL), "the node's own tunnel address");

    let overlay_applies_with = |id: &str| {
        cluster
            .kernel
            .applied()
            .into_iter()
            .filter(|a| a.scope == Scope::Overlay)
            .map(|a| {
                a.state
                    .remote_endpoints
                    .iter()
                    .any(|r| r.id == id && r.tunnel == Ipv4Addr::new(198, 51, 100, 2))
            })
            .collect::<Vec<bool>>()
    };
    let far = json!({"netns": {"name": "far", "node": "node-b"}});
    endpoint(&cluster, "far", "ov", far).await;
    let soon = Instant::now() + Duration::from_secs(5);
    while !overlay_applies_with("default/far").contains(&true) {
        assert!(
            Instant::now() < soon,
            "no overlay apply with far within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    nodes
        .delete("node-b", &DeleteParams::default())
        .await
        .expect("node B deleted");
    let soon = Instant::now() + Duration::from_secs(5);
    while overlay_applies_with("default/far").last() != Some(&false) {
        assert!(
            Instant::now() < soon,
            "far's entries not gone with its Node within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_deleted_together_share_removals_and_a_failing_one_holds_only_itself() {
    let cluster = Cluster::start(FakeKernel::new(), Duration::from_secs(3600)).await;
    network(&cluster, "many", "10.36.0.0/24").await;
    let eps: Api<Endpoint> = cluster.api();
    let names = endpoints_with_namespaces(&cluster, "many", "d", 24, Duration::ZERO).await;
    for name in &names {
        wait_for(&eps, name, "Attached=True", is_attached).await;
    }
    let veth_of = |name: &str| {
        cluster
            .kernel
            .attached(&format!("default/{name}"))
            .expect("attached")
            .host_veth_name()
    };
    let stuck = veth_of("d3");
    cluster
        .kernel
        .fail_detach("default/d3", Some("device or resource busy"));

    eps.delete_collection(&DeleteParams::default(), &Default::default())
        .await
        .expect("deleted");
    eventually("all but the failing one are gone", || {
        let links = cluster.kernel.links();
        names
            .iter()
            .filter(|n| *n != "d3")
            .all(|n| cluster.kernel.attached(&format!("default/{n}")).is_none())
            && links.contains(&stuck)
    })
    .await;
    // Removals served several detaches each; the failure was the failing link's only.
    let removals = applied_scopes(&cluster, |scope| match scope {
        Scope::Removal(links) => Some(links),
        _ => None,
    });
    let widest = removals.iter().map(Vec::len).max().unwrap_or(0);
    assert!(
        widest > 2,
        "no removal served more than two detaches: {removals:?}"
    );
    for name in names.iter().filter(|n| *n != "d3") {
        wait_for_gone(&eps, name).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held = eps.get("d3").await.expect("still there");
    assert!(has_finalizer(&held, finalizers::NODE));
    assert!(cluster.kernel.links().contains(&stuck));

    // The kernel lets go: its retry takes it.
    cluster.kernel.fail_detach("default/d3", None);
    wait_for_gone(&eps, "d3").await;
    assert!(!cluster.kernel.links().contains(&stuck));
    cluster.stop().await;
}

/// Endpoints created together go to the kernel together: the attaches that arrive while an
/// apply runs share the next one (each apply has a cost of its own), and one endpoint's failure
/// in a shared apply is that endpoint's only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_created_together_share_applies_and_a_failing_one_fails_only_itself() {
    let kernel = FakeKernel::new();
    kernel.take_for_each_apply(Duration::from_millis(50));
    let message = "moving eth0 into ns-a3: file exists";
    kernel.fail_attach("default/a3", Some(message));
    let cluster = Cluster::start(kernel, Duration::from_secs(3600)).await;
    network(&cluster, "many", "10.37.0.0/24").await;
    let eps: Api<Endpoint> = cluster.api();
    let names = endpoints_with_namespaces(&cluster, "many", "a", 24, Duration::ZERO).await;
    for name in names.iter().filter(|n| *n != "a3") {
        wait_for(&eps, name, "Attached=True", is_attached).await;
    }
    let failed = wait_for(&eps, "a3", "Attached=False", |e| {
        refused_for(e, reason::ATTACH_FAILED)
    })
    .await;
    let (_, _, said) = attached(&failed).expect("Attached");
    assert_eq!(said, message);
    assert!(cluster.kernel.attached("default/a3").is_none());

    let attaches = applied_scopes(&cluster, |scope| match scope {
        Scope::Endpoints(ids) => Some(ids),
        _ => None,
    });
    let widest = attaches.iter().map(Vec::len).max().unwrap_or(0);
    assert!(
        widest > 2,
        "no apply attached more than two endpoints: {attaches:?}"
    );
    // The failing one shared an apply with others that attached.
    let with_failing = attaches
        .iter()
        .find(|ids| ids.len() > 1 && ids.contains(&"default/a3".to_owned()));
    assert!(
        with_failing.is_some(),
        "a3 was never attached together with others: {attaches:?}"
    );

    // The kernel recovers: its retry attaches it.
    cluster.kernel.fail_attach("default/a3", None);
    wait_for(&eps, "a3", "Attached=True", is_attached).await;
    cluster.stop().await;
}

/// A full reconcile that runs while endpoints are being attached never takes their veths for
/// garbage: its state is built after the applies before it are done, and no apply runs between
/// its build and its own apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_reconcile_during_a_burst_of_attaches_removes_none_of_them() {
    let kernel = FakeKernel::new();
    // Applies slow enough for attaches to queue while one runs, and a full apply's check of
    // every endpoint's namespace slow enough for other applies to run meanwhile (as on a node
    // making namespaces for them); resyncs often enough to meet them, endpoints arriving all
    // along.
    kernel.take_for_each_apply(Duration::from_millis(50));
    kernel.take_for_each_namespace(Duration::from_millis(3));
    let cluster = Cluster::start(kernel, Duration::from_millis(100)).await;
    network(&cluster, "many", "10.38.0.0/24").await;
    let eps: Api<Endpoint> = cluster.api();
    let names =
        endpoints_with_namespaces(&cluster, "many", "b", 60, Duration::from_millis(15)).await;
    for name in &names {
        wait_for(&eps, name, "Attached=True", is_attached).await;
    }
    let veths: BTreeSet<String> = names
        .iter()
        .filter_map(|n| cluster.kernel.attached(&format!("default/{n}")))
        .map(|e| e.host_veth_name())
        .collect();
    assert_eq!(veths.len(), names.len(), "every endpoint attached");
    let taken: Vec<String> = cluster
        .kernel
        .removed()
        .into_iter()
        .map(|r| r.link)
        .filter(|link| veths.contains(link))
        .collect();
    assert!(
        taken.is_empty(),
        "full reconciles removed veths of endpoints attached meanwhile: {taken:?}"
    );
    cluster.stop().await;
}

/// Creates Endpoints `PREFIX0`, `PREFIX1`, ... on `network`, each targeting a named namespace
/// of its own (`ns-NAME`), `pause` apart; returns their names.
async fn endpoints_with_namespaces(
    cluster: &Cluster,
    network: &str,
    prefix: &str,
    count: usize,
    pause: Duration,
) -> Vec<String> {
    let names: Vec<String> = (0..count).map(|i| format!("{prefix}{i}")).collect();
    for name in &names {
        let target = json!({"netns": {"name": format!("ns-{name}")}});
        endpoint(cluster, name, network, target).await;
        tokio::time::sleep(pause).await;
    }
    names
}

/// What each apply of the kind `pick` takes named (the endpoints or links of its scope), in
/// the order they ran.
fn applied_scopes(cluster: &Cluster, pick: fn(Scope) -> Option<Vec<String>>) -> Vec<Vec<String>> {
    cluster
        .kernel
        .applied()
        .into_iter()
        .filter_map(|a| pick(a.scope))
        .collect()
}

/// An endpoint's attach is reported once, when a full reconcile attaches it while its own
/// attach is on the way (a resync falling into a burst): the attach in flight reports it, the
/// resync leaves it out. Both used to write `Attached` and publish its Event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_reconcile_during_a_burst_of_attaches_reports_each_attach_once() {
    let kernel = FakeKernel::new();
    // Applies slow enough for attaches to queue behind a resync's, resyncs often enough to
    // fall into the burst.
    kernel.take_for_each_apply(Duration::from_millis(40));
    let cluster = Cluster::start(kernel, Duration::from_millis(60)).await;
    network(&cluster, "once", "10.39.0.0/24").await;
    let eps: Api<Endpoint> = cluster.api();
    let names = endpoints_with_namespaces(&cluster, "once", "r", 40, Duration::ZERO).await;
    for name in &names {
        wait_for(&eps, name, "Attached=True", is_attached).await;
    }
    // Long enough for a late second report of any of them to land.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events: Api<k8s_openapi::api::events::v1::Event> = cluster.api();
    let mut reports: BTreeMap<String, usize> = BTreeMap::new();
    for event in events
        .list(&Default::default())
        .await
        .expect("events listed")
    {
        let about = event.regarding.and_then(|r| r.name).unwrap_or_default();
        if event.action.as_deref() == Some(ATTACHED) && names.contains(&about) {
            *reports.entry(about).or_default() += 1;
        }
    }
    let twice: Vec<_> = reports.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "attaches reported more than once: {twice:?}"
    );
    assert_eq!(
        reports.len(),
        names.len(),
        "every attach reported: {reports:?}"
    );
    cluster.stop().await;
}

/// A periodic full reconcile that falls due during a burst of attaches waits for the burst to
/// end (one period at most) instead of taking the apply turn from it for a check of the whole
/// node; it still runs once the burst is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_reconcile_due_during_a_burst_of_attaches_waits_for_its_end() {
    let kernel = FakeKernel::new();
    kernel.take_for_each_apply(Duration::from_millis(10));
    let period = Duration::from_secs(2);
    let cluster = Cluster::start(kernel, period).await;
    // The first periodic resync is due one period from now (the first ran before `start`
    // returned).
    let started = Instant::now();
    network(&cluster, "wait", "10.41.0.0/24").await;
    let eps: Api<Endpoint> = cluster.api();
    // Endpoints 20 ms apart until a quarter period after it was due: it falls inside the burst,
    // and the burst ends well before another period has passed.
    let mut names = Vec::new();
    while started.elapsed() < period + period / 4 {
        let name = format!("w{}", names.len());
        let target = json!({"netns": {"name": format!("ns-{name}")}});
        endpoint(&cluster, &name, "wait", target).await;
        names.push(name);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for name in &names {
        wait_for(&eps, name, "Attached=True", is_attached).await;
    }
    let kinds = || -> Vec<&'static str> {
        cluster
            .kernel
            .applied()
            .into_iter()
            .map(|a| match a.scope {
                Scope::Full => "full",
                Scope::Endpoints(_) => "attach",
                _ => "other",
            })
            .collect()
    };
    let applied = kinds();
    let first = applied.iter().position(|k| *k == "attach");
    let last = applied.iter().rposition(|k| *k == "attach");
    let (Some(first), Some(last)) = (first, last) else {
        panic!("no attach applied: {applied:?}");
    };
    assert!(
        !applied[first..last].contains(&"full"),
        "a full reconcile ran inside the burst: {applied:?}"
    );
    // Not skipped: it runs once the attaches are done.
    eventually("a full reconcile after the burst", || {
        kinds()[last..].contains(&"full")
    })
    .await;
    cluster.stop().await;
}

/// An endpoint whose attach fails as a whole, writing no condition (the node's namespace
/// unreadable for its apply), is reported by the next full reconcile that attaches it, not
/// left to its retry's backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_first_attach_is_reported_by_the_resync_that_attaches_it() {
    let kernel = FakeKernel::new();
    kernel.fail_attach_applies(true);
    let cluster = Cluster::start(kernel, Duration::from_millis(300)).await;
    network(&cluster, "late", "10.40.0.0/24").await;
    let eps: Api<Endpoint> = cluster.api();
    endpoint(&cluster, "f1", "late", json!({"netns": {"name": "ns-f1"}})).await;
    // Only a full apply can attach it: every attach of its own fails.
    wait_for(&eps, "f1", "Attached=True", is_attached).await;
    assert!(cluster.kernel.attached("default/f1").is_some());
    cluster.stop().await;
}

/// Waits until `name` is gone from the API.
async fn wait_for_gone(api: &Api<Endpoint>, name: &str) {
    let deadline = Instant::now() + PATIENCE;
    while api.get_opt(name).await.expect("get").is_some() {
        assert!(Instant::now() < deadline, "{name} was never deleted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
/// Waits until the agent's count of endpoint evaluations stays the same for a moment (the
/// events of objects already attached have all reached it), and returns it.
async fn settled_evaluations(cluster: &Cluster) -> u64 {
    let deadline = Instant::now() + PATIENCE;
    let mut last = cluster.metrics.state_evaluations.get();
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = cluster.metrics.state_evaluations.get();
        if now == last {
            return now;
        }
        assert!(Instant::now() < deadline, "the agent never went quiet");
        last = now;
    }
}

/// An Endpoint's events touch that endpoint only: the agent evaluates it (not the other
/// endpoints of its network: the node's state is kept up to date one object at a time, and the
/// operator's rewrites of the Network's endpoint count change nothing it is built from), and the
/// kernel's scoped apply gets it without the node's other endpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_event_touches_that_endpoint_only() {
    // No resync during the test: it evaluates every endpoint, as the full check it is.
    let cluster = Cluster::start(FakeKernel::new(), Duration::from_secs(3600)).await;
    network(&cluster, "many", "10.31.0.0/24").await;
    let eps: Api<Endpoint> = cluster.api();
    const EARLIER: usize = 20;
    for n in 0..EARLIER {
        let netns = json!({"netns": {"name": format!("ns-m{n}")}});
        endpoint(&cluster, &format!("m{n}"), "many", netns).await;
    }
    for n in 0..EARLIER {
        wait_for(&eps, &format!("m{n}"), "Attached=True", is_attached).await;
    }
    let before = settled_evaluations(&cluster).await;
    let applies_before = cluster.kernel.applied().len();

    endpoint(
        &cluster,
        "last",
        "many",
        json!({"netns": {"name": "ns-last"}}),
    )
    .await;
    wait_for(&eps, "last", "Attached=True", is_attached).await;
    let evaluated = settled_evaluations(&cluster).await - before;
    // One per event of the new Endpoint (allocated, finalizer added, attached, ...); a build of
    // the whole node per event would be 21 each.
    assert!(
        (1..=8).contains(&evaluated),
        "{evaluated} evaluations for one new endpoint beside {EARLIER}"
    );
    let applied = cluster.kernel.applied();
    let attach = applied[applies_before..]
        .iter()
        .find(|a| matches!(&a.scope, Scope::Endpoints(ids) if ids == &["default/last".to_owned()]))
        .expect("the new endpoint's scoped apply");
    let ids: Vec<&str> = attach
        .state
        .endpoints
        .iter()
        .map(|e| e.id.as_str())
        .collect();
    assert_eq!(
        ids,
        ["default/last"],
        "the kernel got the new endpoint alone"
    );
    assert_eq!(attach.state.networks.len(), 1, "with its network");
    cluster.stop().await;
}
