//! Every refusal shows as a Ready=False condition with a reason and a message, and an Event;
//! waiting objects proceed when what they wait for appears.

mod common;

use common::*;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use pier_crds::{Endpoint, Network, PortPublish};
use serde_json::json;

fn reason_of_network(n: &Network) -> String {
    n.status
        .as_ref()
        .and_then(|s| ready_of(&s.conditions))
        .map(|r| r.1)
        .unwrap_or_default()
}

fn ready_of_publish(p: &PortPublish) -> (String, String, String) {
    p.status
        .as_ref()
        .and_then(|s| ready_of(&s.conditions))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_is_a_condition_and_an_event() {
    let (_server, client) = cluster().await;
    let op = Operator::start(&client, config("op-1"));
    let nets: Api<Network> = Api::all(client.clone());
    let eps: Api<Endpoint> = Api::namespaced(client.clone(), "default");
    let pps: Api<PortPublish> = Api::namespaced(client.clone(), "default");

    // SubnetConflict: the first Network keeps its subnet; the second names it.
    create(&nets, &network("first", json!({"subnet": "10.1.0.0/16"}))).await;
    wait_for(&nets, "first", "ready", |n| {
        reason_of_network(n) == "Allocated"
    })
    .await;
    create(&nets, &network("second", json!({"subnet": "10.1.2.0/24"}))).await;
    let second = wait_for(&nets, "second", "SubnetConflict", |n| {
        reason_of_network(n) == "SubnetConflict"
    })
    .await;
    let (status, _, message) = ready_of(&second.status.expect("status").conditions).expect("Ready");
    assert_eq!(status, "False");
    assert!(message.contains("\"first\""), "{message}");
    let note = event_with(&client, "default", "second", "SubnetConflict").await;
    assert!(note.contains("first"), "{note}");

    // NetworkNotFound, then the Endpoint proceeds when the Network appears.
    create(&eps, &endpoint("early", "early", Some("later"), json!({}))).await;
    let early = wait_for(&eps, "early", "NetworkNotFound", |e| {
        endpoint_reason(e) == "NetworkNotFound"
    })
    .await;
    assert!(endpoint_ready(&early).expect("Ready").2.contains("later"));
    event_with(&client, "default", "early", "NetworkNotFound").await;
    create(&nets, &network("later", json!({"subnet": "10.9.0.0/24"}))).await;
    assert_eq!(
        address(&allocated(&eps, "early").await).as_deref(),
        Some("10.9.0.2")
    );

    // AlreadyAttached: a second Endpoint of one namespace on one network.
    create(&eps, &endpoint("again", "early", Some("later"), json!({}))).await;
    let again = wait_for(&eps, "again", "AlreadyAttached", |e| {
        endpoint_reason(e) == "AlreadyAttached"
    })
    .await;
    assert!(
        endpoint_ready(&again)
            .expect("Ready")
            .2
            .contains("default/early")
    );
    assert_eq!(address(&again), None);
    // `kubectl get pep` shows it: Ready False, with the operator's reason.
    let conditions = &again.status.as_ref().expect("status").conditions;
    let ready = pier_crds::conditions::find(conditions, "Ready").expect("Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "AlreadyAttached")
    );
    let row = printed_row(&client, "endpoints", "again").await;
    assert_eq!(
        (row["Ready"].as_str(), row["Reason"].as_str()),
        (Some("False"), Some("AlreadyAttached")),
        "kubectl get pep again: {row:?}"
    );
    event_with(&client, "default", "again", "AlreadyAttached").await;

    // AddressInUse: a static address someone holds.
    create(
        &eps,
        &endpoint(
            "thief",
            "thief",
            Some("later"),
            json!({"ipv4Address": "10.9.0.2"}),
        ),
    )
    .await;
    let thief = wait_for(&eps, "thief", "AddressInUse", |e| {
        endpoint_reason(e) == "AddressInUse"
    })
    .await;
    assert!(
        endpoint_ready(&thief)
            .expect("Ready")
            .2
            .contains("default/early")
    );
    event_with(&client, "default", "thief", "AddressInUse").await;

    // InvalidAddress: outside the subnet.
    create(
        &eps,
        &endpoint(
            "outside",
            "outside",
            Some("later"),
            json!({"ipv4Address": "10.10.0.2"}),
        ),
    )
    .await;
    wait_for(&eps, "outside", "InvalidAddress", |e| {
        endpoint_reason(e) == "InvalidAddress"
    })
    .await;
    event_with(&client, "default", "outside", "InvalidAddress").await;

    // PortConflict names the holder; the first keeps its port.
    create(
        &pps,
        &publish(
            "holder",
            "early",
            json!([{"containerPort": 80, "hostPort": 8080}]),
        ),
    )
    .await;
    wait_for(&pps, "holder", "allocated", |p| {
        ready_of_publish(p).1 == "Allocated"
    })
    .await;
    create(&eps, &endpoint("other", "other", Some("later"), json!({}))).await;
    create(
        &pps,
        &publish(
            "clash",
            "other",
            json!([{"containerPort": 80, "hostPort": 8080}]),
        ),
    )
    .await;
    let clash = wait_for(&pps, "clash", "PortConflict", |p| {
        ready_of_publish(p).1 == "PortConflict"
    })
    .await;
    let (status, _, message) = ready_of_publish(&clash);
    assert_eq!(status, "False");
    assert!(message.contains("default/holder"), "{message}");
    assert!(clash.status.expect("status").ports.is_empty());
    let row = printed_row(&client, "portpublishes", "clash").await;
    assert_eq!(
        (row["Ready"].as_str(), row["Reason"].as_str()),
        (Some("False"), Some("PortConflict")),
        "kubectl get ppub clash: {row:?}"
    );
    event_with(&client, "default", "clash", "PortConflict").await;

    // InternalNetwork: no ports from an internal network.
    create(
        &nets,
        &network(
            "private",
            json!({"subnet": "10.8.0.0/24", "internal": true}),
        ),
    )
    .await;
    create(
        &eps,
        &endpoint("hidden", "hidden", Some("private"), json!({})),
    )
    .await;
    allocated(&eps, "hidden").await;
    create(
        &pps,
        &publish("leak", "hidden", json!([{"containerPort": 80}])),
    )
    .await;
    wait_for(&pps, "leak", "InternalNetwork", |p| {
        ready_of_publish(p).1 == "InternalNetwork"
    })
    .await;
    event_with(&client, "default", "leak", "InternalNetwork").await;

    // NoAddress: no ports to an endpoint on a host (or none) network, as Docker discards them.
    create(&nets, &network("hostnet", json!({"driver": "host"}))).await;
    create(
        &eps,
        &endpoint("on-host", "on-host", Some("hostnet"), json!({})),
    )
    .await;
    wait_for(&eps, "on-host", "Ready", |e| {
        endpoint_ready(e).is_some_and(|(status, _, _)| status == "True")
    })
    .await;
    create(
        &pps,
        &publish("nowhere", "on-host", json!([{"containerPort": 80}])),
    )
    .await;
    let refused = wait_for(&pps, "nowhere", "NoAddress", |p| {
        ready_of_publish(p).1 == "NoAddress"
    })
    .await;
    assert!(refused.status.expect("status").ports.is_empty());
    event_with(&client, "default", "nowhere", "NoAddress").await;

    // EndpointNotFound for a PortPublish.
    create(
        &pps,
        &publish("orphan", "nobody", json!([{"containerPort": 80}])),
    )
    .await;
    wait_for(&pps, "orphan", "EndpointNotFound", |p| {
        ready_of_publish(p).1 == "EndpointNotFound"
    })
    .await;

    // PodNotScheduled, and a scheduled Pod's node.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod = |name: &str, node: Option<&str>| -> Pod {
        let mut spec = json!({"containers": [{"name": "c", "image": "nginx"}]});
        if let Some(n) = node {
            spec["nodeName"] = json!(n);
        }
        object(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}))
    };
    let pod_endpoint = |name: &str, pod: &str| -> Endpoint {
        object(
            json!({"apiVersion": "pier.dev/v1alpha1", "kind": "Endpoint",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"network": "later", "target": {"pod": {"name": pod}}}}),
        )
    };
    create(&pods, &pod("pending", None)).await;
    create(&eps, &pod_endpoint("pending-ep", "pending")).await;
    wait_for(&eps, "pending-ep", "PodNotScheduled", |e| {
        endpoint_reason(e) == "PodNotScheduled"
    })
    .await;
    create(&eps, &pod_endpoint("ghost-ep", "ghost")).await;
    wait_for(&eps, "ghost-ep", "PodNotFound", |e| {
        endpoint_reason(e) == "PodNotFound"
    })
    .await;
    create(&pods, &pod("running", Some("node-x"))).await;
    create(&eps, &pod_endpoint("running-ep", "running")).await;
    let running = allocated(&eps, "running-ep").await;
    assert_eq!(
        running.status.and_then(|s| s.node).as_deref(),
        Some("node-x")
    );

    // NodeRequired: a netns without a node once the cluster has two nodes.
    let nodes: Api<Node> = Api::all(client.clone());
    create(
        &nodes,
        &object(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-b"}})),
    )
    .await;
    create(&eps, &endpoint("where", "where", Some("later"), json!({}))).await;
    let wh = wait_for(&eps, "where", "NodeRequired", |e| {
        endpoint_reason(e) == "NodeRequired"
    })
    .await;
    assert!(endpoint_ready(&wh).expect("Ready").2.contains("2 nodes"));
    // Counted past the two names the operator reads.
    create(
        &nodes,
        &object(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-c"}})),
    )
    .await;
    create(
        &eps,
        &endpoint("where-3", "where-3", Some("later"), json!({})),
    )
    .await;
    let wh = wait_for(&eps, "where-3", "NodeRequired", |e| {
        endpoint_reason(e) == "NodeRequired"
    })
    .await;
    assert!(endpoint_ready(&wh).expect("Ready").2.contains("3 nodes"));

    let metrics = op.metrics.encode();
    assert!(metrics.contains("reason=\"PortConflict\""), "{metrics}");
    op.stop().await;
}

/// The ports of a PortPublish's status.
fn host_ports(p: &PortPublish) -> Vec<i32> {
    p.status
        .as_ref()
        .map(|s| s.ports.iter().map(|port| port.host_port).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_own_ports_are_not_allowed_and_never_picked() {
    let (_server, client) = cluster().await;
    let mut config = config("op-1");
    // An automatic range around the kubelet's 10250: both of its neighbours, never it.
    config.alloc.port_range = "10249-10251".parse().expect("range");
    assert!(config.alloc.denied_ports.contains(10250), "the default");
    let op = Operator::start(&client, config);
    let nets: Api<Network> = Api::all(client.clone());
    let eps: Api<Endpoint> = Api::namespaced(client.clone(), "default");
    let pps: Api<PortPublish> = Api::namespaced(client.clone(), "default");
    create(&nets, &network("net", json!({"subnet": "10.7.0.0/24"}))).await;
    create(&eps, &endpoint("web", "web", Some("net"), json!({}))).await;
    allocated(&eps, "web").await;

    for (name, port) in [
        ("ssh", 22),
        ("apiserver", 6443),
        ("kubelet", 10250),
        ("etcd", 2379),
    ] {
        create(
            &pps,
            &publish(
                name,
                "web",
                json!([{"containerPort": 80, "hostPort": port, "hostIP": "127.0.0.1"}]),
            ),
        )
        .await;
        let refused = wait_for(&pps, name, "PortNotAllowed", |p| {
            ready_of_publish(p).1 == "PortNotAllowed"
        })
        .await;
        let (status, _, message) = ready_of_publish(&refused);
        assert_eq!(status, "False");
        assert!(
            message.contains(&format!("127.0.0.1:{port}/tcp")),
            "{message}"
        );
        assert!(host_ports(&refused).is_empty());
        let note = event_with(&client, "default", name, "PortNotAllowed").await;
        assert!(note.contains("denied host ports"), "{note}");
    }

    let first = publish(
        "auto",
        "web",
        json!([{"containerPort": 80}, {"containerPort": 81}]),
    );
    create(&pps, &first).await;
    let auto = wait_for(&pps, "auto", "allocated", |p| {
        ready_of_publish(p).1 == "Allocated"
    })
    .await;
    let mut ports = host_ports(&auto);
    ports.sort_unstable();
    assert_eq!(ports, vec![10249, 10251]);
    // The range is full: the denied port is not a spare.
    create(
        &pps,
        &publish("more", "web", json!([{"containerPort": 82}])),
    )
    .await;
    wait_for(&pps, "more", "PortsExhausted", |p| {
        ready_of_publish(p).1 == "PortsExhausted"
    })
    .await;
    op.stop().await;
}

/// The row `kubectl get` prints for `plural/name` in `default` (the API server's Table, as
/// kubectl asks for it), by column name.
async fn printed_row(
    client: &kube::Client,
    plural: &str,
    name: &str,
) -> serde_json::Map<String, serde_json::Value> {
    let mut request = kube::core::Request::new(format!(
        "/apis/pier.dev/v1alpha1/namespaces/default/{plural}"
    ))
    .get(name, &Default::default())
    .expect("request");
    request.headers_mut().insert(
        "accept",
        "application/json;as=Table;v=v1;g=meta.k8s.io"
            .parse()
            .expect("header"),
    );
    let table: serde_json::Value = client.request(request).await.expect("the Table");
    let columns = table["columnDefinitions"].as_array().expect("columns");
    let cells = table["rows"][0]["cells"].as_array().expect("one row");
    columns
        .iter()
        .zip(cells)
        .map(|(c, v)| (c["name"].as_str().unwrap_or_default().to_owned(), v.clone()))
        .collect()
}
