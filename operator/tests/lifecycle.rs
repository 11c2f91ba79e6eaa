//! Deleting a Network with endpoints is held until they are gone; deleting an Endpoint frees its
//! address for the next one.

mod common;

use common::*;
use kube::Api;
use kube::api::DeleteParams;
use pier_crds::{Endpoint, Network};
use serde_json::json;

fn network_ready(n: &Network) -> (String, String, String) {
    n.status
        .as_ref()
        .and_then(|s| ready_of(&s.conditions))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_deletion_waits_for_its_endpoints() {
    let (_server, client) = cluster().await;
    let op = Operator::start(&client, config("op-1"));
    let nets: Api<Network> = Api::all(client.clone());
    let eps: Api<Endpoint> = Api::namespaced(client.clone(), "default");

    create(&nets, &network("busy", json!({"subnet": "10.5.0.0/24"}))).await;
    create(&eps, &endpoint("e1", "e1", Some("busy"), json!({}))).await;
    create(&eps, &endpoint("e2", "e2", Some("busy"), json!({}))).await;
    allocated(&eps, "e1").await;
    allocated(&eps, "e2").await;
    wait_for(&nets, "busy", "2 endpoints", |n| {
        n.status.as_ref().is_some_and(|s| s.endpoints == 2)
    })
    .await;

    nets.delete("busy", &DeleteParams::default())
        .await
        .expect("delete");
    let held = wait_for(&nets, "busy", "InUse", |n| network_ready(n).1 == "InUse").await;
    let (status, _, message) = network_ready(&held);
    assert_eq!(status, "False");
    assert!(message.contains("2 active endpoint"), "{message}");
    event_with(&client, "default", "busy", "InUse").await;

    // A new Endpoint cannot join a Network being deleted.
    create(&eps, &endpoint("late", "late", Some("busy"), json!({}))).await;
    wait_for(&eps, "late", "NetworkNotFound", |e| {
        endpoint_reason(e) == "NetworkNotFound"
    })
    .await;

    eps.delete("e1", &DeleteParams::default())
        .await
        .expect("delete");
    wait_gone(&eps, "e1").await;
    wait_for(&nets, "busy", "1 endpoint", |n| {
        n.status.as_ref().is_some_and(|s| s.endpoints == 1)
    })
    .await;
    assert!(
        nets.get_opt("busy").await.expect("get").is_some(),
        "still held by e2"
    );
    eps.delete("e2", &DeleteParams::default())
        .await
        .expect("delete");
    wait_gone(&nets, "busy").await;
    event_with(&client, "default", "busy", "SubnetReleased").await;

    // The subnet is free again.
    create(&nets, &network("reuse", json!({"subnet": "10.5.0.0/24"}))).await;
    wait_for(&nets, "reuse", "Allocated", |n| {
        network_ready(n).1 == "Allocated"
    })
    .await;
    op.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_endpoint_frees_its_address_for_the_next() {
    let (_server, client) = cluster().await;
    let op = Operator::start(&client, config("op-1"));
    let nets: Api<Network> = Api::all(client.clone());
    let eps: Api<Endpoint> = Api::namespaced(client.clone(), "default");

    // A /29: .0 network, .1 gateway, .7 broadcast: five addresses for endpoints.
    create(&nets, &network("tiny", json!({"subnet": "10.6.0.0/29"}))).await;
    for i in 2..=6 {
        let name = format!("e{i}");
        create(&eps, &endpoint(&name, &name, Some("tiny"), json!({}))).await;
        let e = allocated(&eps, &name).await;
        assert_eq!(address(&e), Some(format!("10.6.0.{i}")));
    }
    create(&eps, &endpoint("extra", "extra", Some("tiny"), json!({}))).await;
    let full = wait_for(&eps, "extra", "AddressesExhausted", |e| {
        endpoint_reason(e) == "AddressesExhausted"
    })
    .await;
    assert!(
        endpoint_ready(&full)
            .expect("Ready")
            .2
            .contains("10.6.0.0/29")
    );
    event_with(&client, "default", "extra", "AddressesExhausted").await;

    eps.delete("e4", &DeleteParams::default())
        .await
        .expect("delete");
    wait_gone(&eps, "e4").await;
    event_with(&client, "default", "e4", "AddressReleased").await;
    // The waiting endpoint retries (it is requeued) and gets the freed address.
    let got = allocated(&eps, "extra").await;
    assert_eq!(address(&got).as_deref(), Some("10.6.0.4"));
    op.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_conditions_survive_operator_status_writes() {
    use kube::api::{Patch, PatchParams};

    let (_server, client) = cluster().await;
    let op = Operator::start(&client, config("op-1"));
    let eps: Api<Endpoint> = Api::namespaced(client.clone(), "default");
    create(&eps, &endpoint("web", "web", None, json!({}))).await;
    let first = allocated(&eps, "web").await;
    let first_conditions = first.status.clone().expect("status").conditions;
    let allocated_at = pier_crds::conditions::find(&first_conditions, "Allocated")
        .expect("Allocated")
        .last_transition_time
        .clone();
    // Allocated, but no node has attached it yet: not Ready, and the column says why.
    let waiting = pier_crds::conditions::find(&first_conditions, "Ready").expect("Ready");
    assert_eq!(
        (waiting.status.as_str(), waiting.reason.as_str()),
        ("False", "WaitingForNode")
    );

    // The node daemon reports Attached with its own field manager.
    eps.patch_status(
        "web",
        &PatchParams::apply("pier-node").force(),
        &Patch::Apply(
            json!({"apiVersion": "pier.dev/v1alpha1", "kind": "Endpoint",
            "status": {"conditions": [{"type": "Attached", "status": "True", "reason": "Attached",
                "message": "eth0 up", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}),
        ),
    )
    .await
    .expect("node status");
    // A spec change makes the operator write again (new observedGeneration).
    eps.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"aliases": ["www"]}})),
    )
    .await
    .expect("spec changed");
    let after = wait_for(&eps, "web", "aliases in status", |e| {
        e.status
            .as_ref()
            .is_some_and(|s| s.dns_names.contains(&"www".to_owned()))
    })
    .await;
    let status = after.status.expect("status");
    assert_eq!(status.observed_generation, after.metadata.generation);
    assert!(
        pier_crds::conditions::is_true(&status.conditions, "Attached"),
        "{:?}",
        status.conditions
    );
    let allocated =
        pier_crds::conditions::find(&status.conditions, "Allocated").expect("Allocated");
    assert_eq!(allocated.status, "True");
    assert_eq!(
        allocated.last_transition_time, allocated_at,
        "unchanged status keeps its transition time"
    );
    assert_eq!(allocated.observed_generation, after.metadata.generation);
    // Allocated and attached: Ready, with the node's word.
    let ready = pier_crds::conditions::find(&status.conditions, "Ready").expect("Ready");
    assert_eq!(
        (
            ready.status.as_str(),
            ready.reason.as_str(),
            ready.message.as_str()
        ),
        ("True", "Attached", "eth0 up")
    );
    assert_eq!(address(&first), status.ipv4_address);
    op.stop().await;
}

/// Adds the node agent's finalizer, as `pier node` does once the Endpoint is on its node.
async fn hold_for_node(eps: &Api<Endpoint>, name: &str) {
    use kube::api::{Patch, PatchParams};
    let current = eps.get(name).await.expect("get");
    let mut finalizers = current.metadata.finalizers.clone().unwrap_or_default();
    finalizers.push(pier_crds::finalizers::NODE.to_owned());
    eps.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": finalizers}})),
    )
    .await
    .expect("node finalizer added");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_is_released_only_after_the_node_let_go() {
    use kube::api::{Patch, PatchParams};

    let (_server, client) = cluster().await;
    let op = Operator::start(&client, config("op-1"));
    let nets: Api<Network> = Api::all(client.clone());
    let eps: Api<Endpoint> = Api::namespaced(client.clone(), "default");
    // A /30: one address for endpoints (.2), so its reuse shows when it was released.
    create(&nets, &network("one", json!({"subnet": "10.7.0.0/30"}))).await;
    create(&eps, &endpoint("first", "first", Some("one"), json!({}))).await;
    let first = allocated(&eps, "first").await;
    assert_eq!(address(&first).as_deref(), Some("10.7.0.2"));
    hold_for_node(&eps, "first").await;

    eps.delete("first", &DeleteParams::default())
        .await
        .expect("delete");
    create(&eps, &endpoint("second", "second", Some("one"), json!({}))).await;
    wait_for(&eps, "second", "AddressesExhausted", |e| {
        endpoint_reason(e) == "AddressesExhausted"
    })
    .await;
    // The node still holds `first`: the operator keeps its finalizer and the address.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let held = eps.get("first").await.expect("still there");
    assert_eq!(
        held.metadata.finalizers.as_deref(),
        Some(
            &[
                pier_crds::finalizers::OPERATOR.to_owned(),
                pier_crds::finalizers::NODE.to_owned()
            ][..]
        )
    );
    assert_eq!(
        endpoint_reason(&eps.get("second").await.expect("get")),
        "AddressesExhausted"
    );

    // The node lets go (as the agent's finalizer helper does): then the address is released.
    eps.patch(
        "first",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": [pier_crds::finalizers::OPERATOR]}})),
    )
    .await
    .expect("node finalizer removed");
    wait_gone(&eps, "first").await;
    let second = allocated(&eps, "second").await;
    assert_eq!(address(&second).as_deref(), Some("10.7.0.2"));
    op.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_is_gone_does_not_hold_a_deletion() {
    use k8s_openapi::api::core::v1::Node;

    let (_server, client) = cluster().await;
    let op = Operator::start(&client, config("op-1"));
    let eps: Api<Endpoint> = Api::namespaced(client.clone(), "default");
    create(&eps, &endpoint("orphan", "orphan", None, json!({}))).await;
    allocated(&eps, "orphan").await;
    hold_for_node(&eps, "orphan").await;
    // The node leaves the cluster with the Endpoint still on it.
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .delete(NODE, &DeleteParams::default())
        .await
        .expect("node deleted");
    eps.delete("orphan", &DeleteParams::default())
        .await
        .expect("delete");
    wait_gone(&eps, "orphan").await;
    let note = event_with(&client, "default", "orphan", "NodeGone").await;
    assert!(note.contains(pier_crds::finalizers::NODE), "{note}");
    op.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_predefined_network_is_recreated_with_a_warning() {
    let (_server, client) = cluster().await;
    let op = Operator::start(&client, config("op-1"));
    let nets: Api<Network> = Api::all(client.clone());
    let first = wait_for(&nets, "bridge", "bridge allocated", |n| {
        network_ready(n).0 == "True"
    })
    .await;
    for name in ["bridge", "host", "none"] {
        let before = wait_for(&nets, name, "exists", |_| true).await;
        nets.delete(name, &DeleteParams::default())
            .await
            .expect("delete");
        // Back at once, as a new object (a new uid), and allocated again.
        let again = wait_for(&nets, name, "re-created", |n| {
            n.metadata.uid != before.metadata.uid && network_ready(n).0 == "True"
        })
        .await;
        assert!(again.metadata.deletion_timestamp.is_none());
        let note = event_with(&client, "default", name, "PredefinedNetworkRecreated").await;
        assert!(
            note.starts_with(&format!("{name} is a pre-defined network")),
            "{note}"
        );
        let events = events_about(&client, "default", name).await;
        assert!(
            events.iter().any(
                |(kind, reason, _)| kind == "Warning" && reason == "PredefinedNetworkRecreated"
            ),
            "{events:?}"
        );
    }
    let bridge = nets.get("bridge").await.expect("bridge");
    let subnet = |n: &Network| n.status.as_ref().and_then(|s| s.subnet.clone());
    assert_eq!(subnet(&bridge), subnet(&first), "the same subnet as before");
    op.stop().await;
}
