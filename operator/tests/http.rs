//! The operator over HTTPS (kubeconfig, bearer token, TLS) against a persistent embedded API
//! server, and across a restart of both: allocations survive and nothing is handed out twice.

mod common;

use common::*;
use kube::api::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};
use pier_apiserver::{ApiServer, Options};
use pier_crds::{Endpoint, Network};
use serde_json::json;

async fn https_client(
    server: &ApiServer,
    dir: &std::path::Path,
) -> (kube::Client, tokio::task::JoinHandle<()>) {
    let (addr, task) = server
        .serve_https("127.0.0.1:0".parse().expect("address"))
        .await
        .expect("serving");
    let path = dir.join("kubeconfig");
    server
        .write_kubeconfig(&path, &format!("https://{addr}"))
        .expect("kubeconfig");
    let kc = Kubeconfig::read_from(&path).expect("kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("config");
    (kube::Client::try_from(cfg).expect("client"), task)
}

async fn open(dir: &std::path::Path) -> ApiServer {
    ApiServer::open_with(dir.join("data"), Options::for_node(NODE))
        .await
        .expect("server opens")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_https_and_across_a_restart_of_everything() {
    logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = open(dir.path()).await;
    let (client, serving) = https_client(&server, dir.path()).await;
    pier_crds::manifests::install(&client, "test")
        .await
        .expect("CRDs installed");
    let op = Operator::start(&client, config("op-1"));
    let nets: Api<Network> = Api::all(client.clone());
    let eps: Api<Endpoint> = Api::namespaced(client.clone(), "default");
    create(&nets, &network("workshop-tage", json!({}))).await;
    for name in ["con1", "con2"] {
        create(
            &eps,
            &endpoint(name, name, Some("workshop-tage"), json!({})),
        )
        .await;
        allocated(&eps, name).await;
    }
    assert_eq!(
        address(&eps.get("con2").await.expect("con2")).as_deref(),
        Some("172.18.0.3")
    );
    op.stop().await;
    serving.abort();
    drop(server);

    // Everything restarts from the data directory.
    let server = open(dir.path()).await;
    let (client, serving) = https_client(&server, dir.path()).await;
    let op = Operator::start(&client, config("op-2"));
    let eps: Api<Endpoint> = Api::namespaced(client.clone(), "default");
    let nets: Api<Network> = Api::all(client.clone());
    create(
        &eps,
        &endpoint("con3", "con3", Some("workshop-tage"), json!({})),
    )
    .await;
    assert_eq!(
        address(&allocated(&eps, "con3").await).as_deref(),
        Some("172.18.0.4")
    );
    assert_eq!(
        address(&eps.get("con1").await.expect("con1")).as_deref(),
        Some("172.18.0.2")
    );
    create(&nets, &network("ch-open", json!({}))).await;
    let ch = wait_for(&nets, "ch-open", "subnet", |n| {
        n.status.as_ref().is_some_and(|s| s.subnet.is_some())
    })
    .await;
    assert_eq!(
        ch.status.and_then(|s| s.subnet).as_deref(),
        Some("172.19.0.0/16")
    );
    op.stop().await;
    serving.abort();
}
