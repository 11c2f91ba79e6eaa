//! Two operators: only the leader writes; killing it hands over to the standby.

mod common;

use common::*;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use pier_crds::{Endpoint, Network};
use serde_json::json;

fn holder(lease: &Lease) -> Option<String> {
    lease.spec.as_ref().and_then(|s| s.holder_identity.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_writes_and_killing_it_hands_over() {
    let (_server, client) = cluster().await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    let nets: Api<Network> = Api::all(client.clone());
    let eps: Api<Endpoint> = Api::namespaced(client.clone(), "default");

    let a = Operator::start(&client, config("op-a"));
    wait_for(&leases, "pier-operator", "held by op-a", |l| {
        holder(l).as_deref() == Some("op-a")
    })
    .await;
    let b = Operator::start(&client, config("op-b"));
    wait_for(&nets, "bridge", "subnet", |n| {
        n.status.as_ref().is_some_and(|s| s.subnet.is_some())
    })
    .await;

    create(&eps, &endpoint("one", "one", None, json!({}))).await;
    let one = allocated(&eps, "one").await;
    // Let the standby retry a few times: it must never reconcile.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert!(a.metrics.total_reconciles() > 0);
    assert_eq!(b.metrics.total_reconciles(), 0, "the standby wrote nothing");
    assert!(a.metrics.encode().contains("pier_operator_leader 1"));
    assert!(b.metrics.encode().contains("pier_operator_leader 0"));

    // Kill the leader: no clean shutdown, its lease expires and the standby takes over.
    a.kill().await;
    let lease = wait_for(&leases, "pier-operator", "held by op-b", |l| {
        holder(l).as_deref() == Some("op-b")
    })
    .await;
    assert_eq!(lease.spec.and_then(|s| s.lease_transitions), Some(1));
    create(&eps, &endpoint("two", "two", None, json!({}))).await;
    let two = allocated(&eps, "two").await;
    assert_ne!(
        address(&one),
        address(&two),
        "the new leader rebuilt what the old one allocated"
    );
    assert_eq!(address(&two).as_deref(), Some("172.17.0.3"));
    assert!(b.metrics.total_reconciles() > 0);

    // A clean stop gives the lease up at once.
    b.stop().await;
    let lease = leases.get("pier-operator").await.expect("lease");
    assert_eq!(holder(&lease), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_port_serves_health_and_metrics() {
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let metrics = Arc::new(pier_operator::metrics::Metrics::default());
    metrics.reconciled("endpoint");
    let health = Arc::new(pier_operator::admin::Health::default());
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let (addr, task) = pier_runtime::admin::Admin::new(health, Arc::new(registry))
        .serve("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bound");
    let get = |path: &'static str| async move {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("write");
        let mut out = String::new();
        tcp.read_to_string(&mut out).await.expect("read");
        out
    };
    assert!(get("/livez").await.starts_with("HTTP/1.1 200"));
    assert!(get("/readyz").await.starts_with("HTTP/1.1 503"));
    let m = get("/metrics").await;
    assert!(
        m.contains("pier_operator_reconciles_total{controller=\"endpoint\"} 1"),
        "{m}"
    );
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_lease_stops_the_controllers() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use k8s_openapi::jiff::Timestamp;
    use kube::api::PostParams;

    let (_server, client) = cluster().await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    let eps: Api<Endpoint> = Api::namespaced(client.clone(), "default");
    let a = Operator::start(&client, config("op-a"));
    wait_for(&leases, "pier-operator", "held by op-a", |l| {
        holder(l).as_deref() == Some("op-a")
    })
    .await;
    create(&eps, &endpoint("before", "before", None, json!({}))).await;
    allocated(&eps, "before").await;

    // Someone else takes the lease (e.g. after a network partition the others saw it expire).
    let mut lease = leases.get("pier-operator").await.expect("lease");
    if let Some(spec) = lease.spec.as_mut() {
        spec.holder_identity = Some("intruder".into());
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        spec.lease_duration_seconds = Some(60);
    }
    leases
        .replace("pier-operator", &PostParams::default(), &lease)
        .await
        .expect("lease taken");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !a.metrics.encode().contains("pier_operator_leader 0") {
        assert!(tokio::time::Instant::now() < deadline, "still leading");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Stopped: a new Endpoint gets nothing from op-a.
    create(&eps, &endpoint("after", "after", None, json!({}))).await;
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    let after = eps.get("after").await.expect("get");
    assert_eq!(
        after.status, None,
        "a replica without the lease wrote nothing"
    );
    assert_eq!(after.metadata.finalizers, None);
    // The intruder's lease is respected: op-a does not take it back.
    assert_eq!(
        holder(&leases.get("pier-operator").await.expect("lease")).as_deref(),
        Some("intruder")
    );
    a.stop().await;
}
