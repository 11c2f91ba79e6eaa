//! What one workload namespace's Endpoints decide together, through the real controllers on the
//! embedded API server: which one carries the default route (Docker's rule: the first network
//! attached), and where the ports of a container-mode Endpoint lead.

mod common;

use common::*;
use kube::Api;
use kube::api::DeleteParams;
use pier_crds::{Endpoint, Network, PortPublish};
use serde_json::json;

fn default_route(ep: &Endpoint) -> Option<bool> {
    ep.status.as_ref().and_then(|s| s.default_route)
}

async fn wait_route(eps: &Api<Endpoint>, name: &str, route: bool) -> Endpoint {
    wait_for(eps, name, &format!("defaultRoute {route}"), |e| {
        default_route(e) == Some(route)
    })
    .await
}

/// `docker run --net ch-open con3; docker network connect workshop-tage con3`: the first network
/// keeps the default route, even when its Endpoint is allocated after the connect's; when it goes,
/// the connected one takes it over. `host` and `null` attachments carry none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_network_attached_carries_the_default_route() {
    let (_server, client) = cluster().await;
    let op = Operator::start(&client, config("op-1"));
    let nets: Api<Network> = Api::all(client.clone());
    let eps: Api<Endpoint> = Api::namespaced(client.clone(), "default");

    create(&nets, &network("workshop-tage", json!({}))).await;
    // con3's first network does not exist yet: it waits, its connect is allocated first.
    create(&eps, &endpoint("con3", "con3", Some("ch-open"), json!({}))).await;
    wait_for(&eps, "con3", "NetworkNotFound", |e| {
        endpoint_reason(e) == "NetworkNotFound"
    })
    .await;
    create(
        &eps,
        &endpoint("con3-tage", "con3", Some("workshop-tage"), json!({})),
    )
    .await;
    let connected = allocated(&eps, "con3-tage").await;
    assert_eq!(
        default_route(&connected),
        Some(true),
        "alone in its namespace"
    );
    assert_eq!(
        default_route(&eps.get("con3").await.expect("con3")),
        None,
        "not attached: no choice recorded"
    );

    // The first network comes: its Endpoint takes the default route, the connect gives it up.
    create(&nets, &network("ch-open", json!({}))).await;
    let first = allocated(&eps, "con3").await;
    assert_eq!(default_route(&first), Some(true));
    let connected = wait_route(&eps, "con3-tage", false).await;
    let status = connected.status.expect("status");
    assert_eq!(
        status.gateway.as_deref(),
        Some("172.18.0.1"),
        "the gateway is still recorded"
    );

    // Another namespace has its own; host and null attachments record no choice.
    create(
        &eps,
        &endpoint("con1", "con1", Some("workshop-tage"), json!({})),
    )
    .await;
    assert_eq!(
        default_route(&wait_route(&eps, "con1", true).await),
        Some(true)
    );
    create(
        &eps,
        &endpoint("on-host", "on-host", Some("host"), json!({})),
    )
    .await;
    assert_eq!(default_route(&allocated(&eps, "on-host").await), None);

    // The first Endpoint goes: the connected one carries the default route now.
    eps.delete("con3", &DeleteParams::default())
        .await
        .expect("con3 deleted");
    wait_gone(&eps, "con3").await;
    wait_route(&eps, "con3-tage", true).await;
    op.stop().await;
}

/// `--net container:web` with a PortPublish on the sharer: Docker refuses `-p` there and publishes
/// the ports of the owner of the namespace, so Pier leads the sharer's ports to its owner's
/// address: allocated once the owner is, never before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_mode_ports_lead_to_the_owner_of_the_namespace() {
    let (_server, client) = cluster().await;
    let op = Operator::start(&client, config("op-1"));
    let eps: Api<Endpoint> = Api::namespaced(client.clone(), "default");
    let nets: Api<Network> = Api::all(client.clone());
    let pps: Api<PortPublish> = Api::namespaced(client.clone(), "default");
    let sharer = |name: &str, owner: &str| -> Endpoint {
        object(
            json!({"apiVersion": "pier.dev/v1alpha1", "kind": "Endpoint",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"target": {"endpoint": {"name": owner}}}}),
        )
    };

    // The owner waits for its network: the sharer has a node, its ports wait for the owner.
    create(&eps, &endpoint("web", "web", Some("late"), json!({}))).await;
    create(&eps, &sharer("sidecar", "web")).await;
    allocated(&eps, "sidecar").await;
    create(
        &pps,
        &publish(
            "side",
            "sidecar",
            json!([{"containerPort": 80, "hostPort": 8080}]),
        ),
    )
    .await;
    let waiting = wait_for(&pps, "side", "EndpointNotReady", |p| {
        p.status
            .as_ref()
            .and_then(|s| ready_of(&s.conditions))
            .is_some_and(|r| r.1 == "EndpointNotReady")
    })
    .await
    .status
    .expect("status");
    let message = ready_of(&waiting.conditions).expect("ready").2;
    assert!(message.contains("endpoint web"), "{message}");
    assert!(waiting.ports.is_empty(), "no host port while waiting");
    let note = event_with(&client, "default", "side", "EndpointNotReady").await;
    assert!(note.contains("web"), "{note}");

    // The owner is allocated: the ports follow, on its node.
    create(&nets, &network("late", json!({}))).await;
    let web = allocated(&eps, "web").await.status.expect("status");
    let published = wait_for(&pps, "side", "ports", |p| {
        p.status.as_ref().is_some_and(|s| s.summary.is_some())
    })
    .await
    .status
    .expect("status");
    assert_eq!(published.summary.as_deref(), Some("0.0.0.0:8080->80/tcp"));
    assert_eq!(published.node, web.node);
    assert_eq!(
        ready_of(&published.conditions).map(|r| r.0).as_deref(),
        Some("True")
    );
    op.stop().await;
}
