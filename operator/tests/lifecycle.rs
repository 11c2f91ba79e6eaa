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
    let ready_at =
        pier_crds::conditions::find(&first.status.clone().expect("status").conditions, "Ready")
            .expect("Ready")
            .last_transition_time
            .clone();

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
    let ready = pier_crds::conditions::find(&status.conditions, "Ready").expect("Ready");
    assert_eq!(ready.status, "True");
    assert_eq!(
        ready.last_transition_time, ready_at,
        "unchanged status keeps its transition time"
    );
    assert_eq!(ready.observed_generation, after.metadata.generation);
    assert_eq!(address(&first), status.ipv4_address);
    op.stop().await;
}
