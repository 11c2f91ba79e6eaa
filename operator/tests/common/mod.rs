//! Shared helpers: an embedded API server with Pier's CRDs, operators to start and kill, waits.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, PostParams};
use kube::{Client, Resource};
use pier_apiserver::{ApiServer, Options};
use pier_operator::admin::Health;
use pier_operator::config::Config;
use pier_operator::metrics::Metrics;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The embedded API server's single node.
pub const NODE: &str = "node-a";

/// Logs for failing tests (`RUST_LOG=pier_operator=debug cargo test`).
pub fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// A fresh in-memory API server (one node, `node-a`) with Pier's CRDs, and a client on it.
pub async fn cluster() -> (ApiServer, Client) {
    logs();
    let server = ApiServer::in_memory_with(Options::for_node(NODE))
        .await
        .expect("API server starts");
    let client = Client::new(server.service(), "default");
    pier_crds::manifests::install(&client, "test")
        .await
        .expect("CRDs installed");
    (server, client)
}

/// Settings for tests: a 2 s lease, quick retries.
pub fn config(identity: &str) -> Config {
    let mut config = Config::default();
    config.lease.identity = identity.into();
    config.lease.duration = Duration::from_secs(2);
    config.lease.retry = Duration::from_millis(200);
    config.wait_requeue = Duration::from_secs(1);
    config.min_backoff = Duration::from_millis(20);
    config.max_backoff = Duration::from_millis(500);
    config
}

/// A running operator.
pub struct Operator {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    task: JoinHandle<()>,
    stop: oneshot::Sender<()>,
}

impl Operator {
    /// Starts an operator on `client`.
    pub fn start(client: &Client, config: Config) -> Operator {
        let metrics = Arc::new(Metrics::default());
        let health = Arc::new(Health::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(pier_operator::run_with_client(
            client.clone(),
            config,
            Arc::clone(&metrics),
            Arc::clone(&health),
            async move {
                let _ = stopped.await;
            },
        ));
        Operator {
            metrics,
            health,
            task,
            stop,
        }
    }

    /// Kills it: no clean shutdown, the lease is left to expire (a crashed Pod).
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    /// Stops it cleanly (it releases the lease).
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Builds an object from JSON.
pub fn object<K: DeserializeOwned>(v: Value) -> K {
    serde_json::from_value(v).expect("valid object")
}

pub fn network(name: &str, spec: Value) -> pier_crds::Network {
    object(json!({"apiVersion": "pier.dev/v1alpha1", "kind": "Network",
        "metadata": {"name": name}, "spec": spec}))
}

/// An Endpoint on a named netns (no node: the cluster's only node).
pub fn endpoint(
    name: &str,
    netns: &str,
    network: Option<&str>,
    extra: Value,
) -> pier_crds::Endpoint {
    let mut spec = json!({"target": {"netns": {"name": netns}}});
    if let Some(n) = network {
        spec["network"] = json!(n);
    }
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            spec.insert(k.clone(), v.clone());
        }
    }
    object(
        json!({"apiVersion": "pier.dev/v1alpha1", "kind": "Endpoint",
        "metadata": {"name": name, "namespace": "default"}, "spec": spec}),
    )
}

pub fn publish(name: &str, endpoint: &str, ports: Value) -> pier_crds::PortPublish {
    object(
        json!({"apiVersion": "pier.dev/v1alpha1", "kind": "PortPublish",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"endpoint": endpoint, "ports": ports}}),
    )
}

/// Creates an object.
pub async fn create<K>(api: &Api<K>, obj: &K) -> K
where
    K: Resource + Clone + DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    api.create(&PostParams::default(), obj)
        .await
        .expect("object created")
}

/// Polls `name` until `pred` holds (30 s at most).
pub async fn wait_for<K, F>(api: &Api<K>, name: &str, what: &str, pred: F) -> K
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    F: Fn(&K) -> bool,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got = api.get_opt(name).await.expect("get");
        if let Some(obj) = &got
            && pred(obj)
        {
            return obj.clone();
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {name}: {what}; last seen {got:#?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls until `name` is gone.
pub async fn wait_gone<K>(api: &Api<K>, name: &str)
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while api.get_opt(name).await.expect("get").is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} still exists"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The operator's condition's (status, reason, message): an Endpoint's or PortPublish's
/// `Allocated`, a Network's `Ready`.
pub fn ready_of(conditions: &[pier_crds::Condition]) -> Option<(String, String, String)> {
    pier_crds::conditions::find(conditions, "Allocated")
        .or_else(|| pier_crds::conditions::find(conditions, "Ready"))
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

pub fn endpoint_ready(ep: &pier_crds::Endpoint) -> Option<(String, String, String)> {
    ep.status.as_ref().and_then(|s| ready_of(&s.conditions))
}

pub fn endpoint_reason(ep: &pier_crds::Endpoint) -> String {
    endpoint_ready(ep).map(|r| r.1).unwrap_or_default()
}

pub fn address(ep: &pier_crds::Endpoint) -> Option<String> {
    ep.status.as_ref().and_then(|s| s.ipv4_address.clone())
}

/// Waits for an Endpoint to be Allocated=True and returns it.
pub async fn allocated(api: &Api<pier_crds::Endpoint>, name: &str) -> pier_crds::Endpoint {
    wait_for(api, name, "Allocated=True", |e| {
        endpoint_ready(e).is_some_and(|r| r.0 == "True")
    })
    .await
}

/// The Events (events.k8s.io/v1) about `name` in `namespace`, as (type, reason, note).
pub async fn events_about(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Vec<(String, String, String)> {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), namespace);
    api.list(&Default::default())
        .await
        .expect("events listed")
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default(),
            )
        })
        .collect()
}

/// Waits until an Event with `reason` about `name` exists; returns its note.
pub async fn event_with(client: &Client, namespace: &str, name: &str, reason: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let events = events_about(client, namespace, name).await;
        if let Some((_, _, note)) = events.iter().find(|e| e.1 == reason) {
            return note.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {reason} event about {name}: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
