//! Overlay Networks in the operator: a VXLAN id per network (from 4096, released with it), scope
//! `cluster`, the MTU (the spec's, else the smallest underlay MTU the nodes record minus 50 when
//! the network is created, kept afterwards), and everything a bridge network allocates (static
//! address and MAC, ipRange, auxAddresses).

mod common;

use common::*;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use pier_crds::names::UNDERLAY_MTU_ANNOTATION;
use pier_crds::{Endpoint, Network, NetworkStatus};
use serde_json::json;

fn status(n: &Network) -> NetworkStatus {
    n.status.clone().unwrap_or_default()
}

/// Records `mtu` as node `name`'s underlay MTU, creating the Node if needed (as an agent does).
async fn underlay_mtu(client: &kube::Client, name: &str, mtu: u32) {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "annotations": {UNDERLAY_MTU_ANNOTATION: mtu.to_string()}}});
    nodes
        .patch(name, &PatchParams::apply("test"), &Patch::Apply(&node))
        .await
        .expect("node annotated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlays_get_a_vxlan_id_and_an_mtu_from_the_nodes() {
    let (_server, client) = cluster().await;
    let op = Operator::start(&client, config("op-1"));
    let nets: Api<Network> = Api::all(client.clone());

    // No node has said anything yet: a 1500 underlay is assumed.
    create(&nets, &network("ov1", json!({"driver": "overlay"}))).await;
    let ov1 = wait_for(&nets, "ov1", "allocated", |n| status(n).vxlan_id.is_some()).await;
    let first = status(&ov1);
    assert_eq!(first.vxlan_id, Some(4096));
    assert_eq!(first.scope.as_deref(), Some("cluster"));
    assert_eq!(first.mtu, Some(1450));
    assert!(
        first.subnet.is_some() && first.gateway.is_some(),
        "{first:?}"
    );

    // Once the nodes record their underlays, a new overlay takes the smallest minus 50; one that
    // has its MTU keeps it (a change would re-make every endpoint's interface).
    underlay_mtu(&client, NODE, 9000).await;
    underlay_mtu(&client, "node-b", 1400).await;
    create(&nets, &network("late", json!({"driver": "overlay"}))).await;
    let late = wait_for(&nets, "late", "allocated", |n| status(n).vxlan_id.is_some()).await;
    assert_eq!(status(&late).mtu, Some(1350));
    let eps: Api<Endpoint> = Api::namespaced(client.clone(), "default");
    let on_node_a = json!({"target": {"netns": {"name": "on-ov1", "node": NODE}}});
    create(&eps, &endpoint("on-ov1", "on-ov1", Some("ov1"), on_node_a)).await;
    let ov1 = wait_for(&nets, "ov1", "1 endpoint", |n| status(n).endpoints == 1).await;
    assert_eq!(status(&ov1).mtu, Some(1450), "kept");

    // The spec's MTU wins; another overlay gets the next id; bridges say `local` and 1500.
    create(
        &nets,
        &network("ov2", json!({"driver": "overlay", "mtu": 1300})),
    )
    .await;
    let ov2 = wait_for(&nets, "ov2", "allocated", |n| status(n).vxlan_id.is_some()).await;
    assert_eq!(status(&ov2).vxlan_id, Some(4098));
    assert_eq!(status(&ov2).mtu, Some(1300));
    create(&nets, &network("br", json!({}))).await;
    let br = wait_for(&nets, "br", "allocated", |n| status(n).subnet.is_some()).await;
    assert_eq!(status(&br).scope.as_deref(), Some("local"));
    assert_eq!(status(&br).mtu, Some(1500));
    assert_eq!(status(&br).vxlan_id, None);

    // Deleting an overlay releases its id for the next one.
    eps.delete("on-ov1", &DeleteParams::default())
        .await
        .expect("delete");
    nets.delete("ov1", &DeleteParams::default())
        .await
        .expect("delete");
    wait_gone(&nets, "ov1").await;
    create(&nets, &network("ov3", json!({"driver": "overlay"}))).await;
    let ov3 = wait_for(&nets, "ov3", "allocated", |n| status(n).vxlan_id.is_some()).await;
    assert_eq!(status(&ov3).vxlan_id, Some(4096));
    op.stop().await;
}

/// What a bridge network's Endpoint can ask for works on an overlay: a static address and MAC,
/// aliases, dynamic addresses from ipRange only, aux addresses never handed out; and a restarted
/// operator keeps every VXLAN id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlay_endpoints_allocate_like_bridge_endpoints() {
    let (_server, client) = cluster().await;
    let op = Operator::start(&client, config("op-1"));
    let nets: Api<Network> = Api::all(client.clone());
    let eps: Api<Endpoint> = Api::namespaced(client.clone(), "default");
    create(
        &nets,
        &network(
            "ov",
            json!({"driver": "overlay", "subnet": "10.30.0.0/24", "ipRange": "10.30.0.128/25",
                   "auxAddresses": {"router": "10.30.0.128"}}),
        ),
    )
    .await;
    create(
        &eps,
        &endpoint(
            "fixed",
            "fixed",
            Some("ov"),
            json!({"ipv4Address": "10.30.0.10", "macAddress": "02:00:00:00:00:0a",
                   "aliases": ["web"]}),
        ),
    )
    .await;
    create(&eps, &endpoint("dynamic", "dynamic", Some("ov"), json!({}))).await;
    let fixed = allocated(&eps, "fixed").await;
    let fixed = fixed.status.unwrap_or_default();
    assert_eq!(fixed.ipv4_address.as_deref(), Some("10.30.0.10"));
    assert_eq!(fixed.mac_address.as_deref(), Some("02:00:00:00:00:0a"));
    assert_eq!(fixed.dns_names, ["fixed", "web"]);
    assert_eq!(fixed.gateway.as_deref(), Some("10.30.0.1"));
    let dynamic = allocated(&eps, "dynamic").await;
    assert_eq!(address(&dynamic).as_deref(), Some("10.30.0.129"));

    let id = status(&nets.get("ov").await.expect("get")).vxlan_id;
    op.kill().await;
    let op = Operator::start(&client, config("op-2"));
    create(&nets, &network("ov-next", json!({"driver": "overlay"}))).await;
    let next = wait_for(&nets, "ov-next", "allocated", |n| {
        status(n).vxlan_id.is_some()
    })
    .await;
    assert_ne!(
        status(&next).vxlan_id,
        id,
        "the restarted operator kept ov's id"
    );
    assert_eq!(status(&nets.get("ov").await.expect("get")).vxlan_id, id);
    op.stop().await;
}
