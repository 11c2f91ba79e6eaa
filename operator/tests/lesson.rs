//! The lesson's objects through the real controllers on the embedded API server: Docker's
//! subnets, addresses .2, .3, ..., automatic ports; static addresses and explicit ports honoured.

mod common;

use common::*;
use kube::Api;
use pier_crds::{Endpoint, Network, PortPublish};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lesson_objects_get_docker_subnets_addresses_and_ports() {
    let (_server, client) = cluster().await;
    let op = Operator::start(&client, config("op-1"));
    let nets: Api<Network> = Api::all(client.clone());
    let eps: Api<Endpoint> = Api::namespaced(client.clone(), "default");
    let pps: Api<PortPublish> = Api::namespaced(client.clone(), "default");

    // A fresh Pier has bridge, host and none, like a fresh Docker host.
    let bridge = wait_for(&nets, "bridge", "subnet", |n| {
        n.status.as_ref().is_some_and(|s| s.subnet.is_some())
    })
    .await;
    let status = bridge.status.clone().expect("status");
    assert_eq!(status.subnet.as_deref(), Some("172.17.0.0/16"));
    assert_eq!(status.gateway.as_deref(), Some("172.17.0.1"));
    assert_eq!(status.scope.as_deref(), Some("local"));
    let uid = bridge.metadata.uid.clone().expect("uid");
    assert_eq!(
        status.bridge.as_deref(),
        Some(pier_crds::names::bridge_name(&uid).as_str())
    );
    assert_eq!(
        ready_of(&status.conditions).map(|r| r.0).as_deref(),
        Some("True")
    );
    for (name, driver) in [("host", "host"), ("none", "null")] {
        let n = wait_for(&nets, name, "ready", |n| {
            n.status
                .as_ref()
                .is_some_and(|s| ready_of(&s.conditions).is_some())
        })
        .await;
        assert_eq!(n.spec.driver.as_str(), driver);
        assert_eq!(n.status.and_then(|s| s.subnet), None);
    }

    // docker network create workshop-tage; docker run --name con1/con2 --net workshop-tage
    create(&nets, &network("workshop-tage", json!({}))).await;
    let tage = wait_for(&nets, "workshop-tage", "subnet", |n| {
        n.status.as_ref().is_some_and(|s| s.subnet.is_some())
    })
    .await;
    assert_eq!(
        tage.status.and_then(|s| s.subnet).as_deref(),
        Some("172.18.0.0/16")
    );
    for name in ["con1", "con2"] {
        create(
            &eps,
            &endpoint(name, name, Some("workshop-tage"), json!({})),
        )
        .await;
        // One after the other, as in the lesson, so the addresses come in order.
        allocated(&eps, name).await;
    }
    let con1 = allocated(&eps, "con1").await.status.expect("status");
    assert_eq!(con1.ipv4_address.as_deref(), Some("172.18.0.2"));
    assert_eq!(con1.prefix_length, Some(16));
    assert_eq!(con1.gateway.as_deref(), Some("172.18.0.1"));
    assert_eq!(con1.mac_address.as_deref(), Some("02:42:ac:12:00:02"));
    assert_eq!(con1.interface.as_deref(), Some("eth0"));
    assert_eq!(con1.node.as_deref(), Some(NODE));
    assert_eq!(con1.network.as_deref(), Some("workshop-tage"));
    assert_eq!(con1.dns_names, vec!["con1".to_owned()]);
    let con2 = allocated(&eps, "con2").await;
    assert_eq!(address(&con2).as_deref(), Some("172.18.0.3"));

    // docker network create ch-open; docker run --name con3 --net ch-open;
    // docker network connect workshop-tage con3 (a second Endpoint on the same netns).
    create(&nets, &network("ch-open", json!({}))).await;
    create(&eps, &endpoint("con3", "con3", Some("ch-open"), json!({}))).await;
    let con3 = allocated(&eps, "con3").await.status.expect("status");
    assert_eq!(con3.ipv4_address.as_deref(), Some("172.19.0.2"));
    assert_eq!(con3.interface.as_deref(), Some("eth0"));
    create(
        &eps,
        &endpoint(
            "con3-tage",
            "con3",
            Some("workshop-tage"),
            json!({"aliases": ["third"]}),
        ),
    )
    .await;
    let connected = allocated(&eps, "con3-tage").await.status.expect("status");
    assert_eq!(connected.interface.as_deref(), Some("eth1"));
    assert_eq!(connected.ipv4_address.as_deref(), Some("172.18.0.4"));
    assert_eq!(connected.mac_address.as_deref(), Some("02:42:ac:12:00:04"));
    assert_eq!(
        connected.dns_names,
        vec!["con3-tage".to_owned(), "third".to_owned()]
    );
    // con3's first network keeps its default route.
    assert_eq!(con3.default_route, Some(true));
    assert_eq!(connected.default_route, Some(false));

    // docker run --ip: a static address is honoured.
    create(
        &eps,
        &endpoint(
            "fixed",
            "fixed",
            Some("workshop-tage"),
            json!({"ipv4Address": "172.18.0.10"}),
        ),
    )
    .await;
    assert_eq!(
        address(&allocated(&eps, "fixed").await).as_deref(),
        Some("172.18.0.10")
    );
    let tage = wait_for(&nets, "workshop-tage", "4 endpoints", |n| {
        n.status.as_ref().is_some_and(|s| s.endpoints == 4)
    })
    .await;
    assert_eq!(tage.status.map(|s| s.endpoints), Some(4));

    // docker run -d -P nginx: no network given joins bridge; automatic ports.
    create(&eps, &endpoint("web", "web", None, json!({}))).await;
    let web = allocated(&eps, "web").await.status.expect("status");
    assert_eq!(web.network.as_deref(), Some("bridge"));
    assert_eq!(web.ipv4_address.as_deref(), Some("172.17.0.2"));
    create(
        &pps,
        &publish(
            "web",
            "web",
            json!([{"containerPort": 80}, {"containerPort": 443}]),
        ),
    )
    .await;
    let pp = wait_for(&pps, "web", "ports", |p| {
        p.status.as_ref().is_some_and(|s| s.summary.is_some())
    })
    .await
    .status
    .expect("status");
    assert_eq!(
        pp.summary.as_deref(),
        Some("0.0.0.0:32768->80/tcp, 0.0.0.0:32769->443/tcp")
    );
    assert_eq!(pp.node.as_deref(), Some(NODE));
    assert!(
        !pp.node_addresses.is_empty(),
        "node addresses from the Node"
    );
    assert_eq!(
        ready_of(&pp.conditions).map(|r| r.0).as_deref(),
        Some("True")
    );

    // docker run -d -p 8000:80 nginx: an explicit port is honoured.
    create(&eps, &endpoint("web2", "web2", None, json!({}))).await;
    create(&pps, &publish("web2", "web2", json!([{"containerPort": 80, "hostPort": 8000}, {"containerPort": 53, "protocol": "UDP", "hostIP": "127.0.0.1"}]))).await;
    let pp2 = wait_for(&pps, "web2", "ports", |p| {
        p.status.as_ref().is_some_and(|s| s.summary.is_some())
    })
    .await
    .status
    .expect("status");
    assert_eq!(
        pp2.summary.as_deref(),
        Some("0.0.0.0:8000->80/tcp, 127.0.0.1:32768->53/udp")
    );

    // --net container:con1 shares con1's namespace: its node, no address of its own.
    let shared: Endpoint = object(
        json!({"apiVersion": "pier.dev/v1alpha1", "kind": "Endpoint",
        "metadata": {"name": "sidecar", "namespace": "default"},
        "spec": {"target": {"endpoint": {"name": "con1"}}}}),
    );
    create(&eps, &shared).await;
    let sidecar = allocated(&eps, "sidecar").await.status.expect("status");
    assert_eq!(sidecar.node.as_deref(), Some(NODE));
    assert_eq!(sidecar.ipv4_address, None);

    // --net host and --net none: attached, no address.
    create(
        &eps,
        &endpoint("on-host", "on-host", Some("host"), json!({})),
    )
    .await;
    let on_host = allocated(&eps, "on-host").await.status.expect("status");
    assert_eq!(on_host.ipv4_address, None);

    // Every allocation is an Event.
    let note = event_with(&client, "default", "con1", "AddressAllocated").await;
    assert!(note.contains("172.18.0.2"), "{note}");
    event_with(&client, "default", "web", "PortsAllocated").await;
    event_with(&client, "default", "on-host", "Allocated").await;
    event_with(&client, "default", "sidecar", "Allocated").await;
    event_with(&client, "default", "workshop-tage", "SubnetAllocated").await;
    assert!(
        op.metrics
            .encode()
            .contains("pier_operator_allocations_total{kind=\"address\"}")
    );
    op.stop().await;
}
