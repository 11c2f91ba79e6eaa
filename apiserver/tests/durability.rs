//! Durability: state survives a restart and `kill -9`; nothing acknowledged is lost and
//! resourceVersions keep increasing.
//!
//! The kill -9 test re-runs this test binary as a child server process (the ignored
//! `child_server` test, selected by PIER_APISERVER_CHILD_DIR) and kills it with SIGKILL while
//! writes are in flight.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use kube::api::{Api, DynamicObject, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, GroupVersionKind};
use pier_apiserver::ApiServer;
use serde_json::json;

fn networks(client: &kube::Client) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("pier.dev", "v1alpha1", "Network"),
        "networks",
    );
    Api::all_with(client.clone(), &ar)
}

fn network(name: &str) -> DynamicObject {
    serde_json::from_value(json!({"apiVersion": "pier.dev/v1alpha1", "kind": "Network",
        "metadata": {"name": name}, "spec": {"mtu": 1500}}))
    .expect("valid")
}

#[tokio::test]
async fn state_survives_restart_and_versions_keep_increasing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let last_rv;
    {
        let server = ApiServer::open(dir.path()).await.expect("open");
        let client = kube::Client::new(server.service(), "default");
        common::install_crds(&client).await;
        let api = networks(&client);
        for i in 0..20 {
            api.create(&PostParams::default(), &network(&format!("n{i}")))
                .await
                .expect("created");
        }
        api.delete("n3", &Default::default())
            .await
            .expect("deleted");
        last_rv = api
            .list(&ListParams::default())
            .await
            .expect("list")
            .metadata
            .resource_version
            .expect("rv")
            .parse::<u64>()
            .expect("numeric");
    }
    let server = ApiServer::open(dir.path()).await.expect("reopen");
    let client = kube::Client::new(server.service(), "default");
    let api = networks(&client);
    let list = api.list(&ListParams::default()).await.expect("list");
    assert_eq!(list.items.len(), 19, "the CRDs and objects came back");
    assert!(api.get_opt("n3").await.expect("get").is_none());
    let created = api
        .create(&PostParams::default(), &network("after"))
        .await
        .expect("created after restart");
    let rv: u64 = created
        .metadata
        .resource_version
        .expect("rv")
        .parse()
        .expect("numeric");
    assert!(rv > last_rv, "{rv} > {last_rv}");
}

/// The child server process of `acknowledged_writes_survive_kill_9`.
#[tokio::test]
#[ignore = "run by acknowledged_writes_survive_kill_9 as a child process"]
async fn child_server() {
    let Ok(dir) = std::env::var("PIER_APISERVER_CHILD_DIR") else {
        return;
    };
    // Frequent snapshots, so the kill lands around log compactions too.
    let opts = pier_apiserver::Options {
        compact_every: 97,
        ..Default::default()
    };
    let server = ApiServer::open_with(&dir, opts).await.expect("open");
    let (addr, task) = server
        .serve_https("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("serve");
    let kubeconfig = std::path::Path::new(&dir).join("kubeconfig");
    server
        .write_kubeconfig(&kubeconfig, &format!("https://{addr}"))
        .expect("kubeconfig");
    println!("READY");
    task.await.expect("serving");
}

fn spawn_child(dir: &std::path::Path) -> Child {
    let exe = std::env::current_exe().expect("test binary");
    let mut child = Command::new(exe)
        .args(["--exact", "child_server", "--ignored", "--nocapture"])
        .env("PIER_APISERVER_CHILD_DIR", dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child server");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.contains("READY") => break,
            Some(Ok(_)) => continue,
            other => panic!("child server did not start: {other:?}"),
        }
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    child
}

async fn client_for(dir: &std::path::Path) -> kube::Client {
    let kc = Kubeconfig::read_from(dir.join("kubeconfig")).expect("kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("config");
    kube::Client::try_from(cfg).expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = spawn_child(dir.path());
    let client = client_for(dir.path()).await;
    common::install_crds(&client).await;
    let api = networks(&client);
    let acked = Arc::new(std::sync::Mutex::new(Vec::<(String, u64)>::new()));
    let counter = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for w in 0..8 {
        let api = api.clone();
        let acked = acked.clone();
        let counter = counter.clone();
        writers.push(tokio::spawn(async move {
            loop {
                let i = counter.fetch_add(1, Ordering::SeqCst);
                match api
                    .create(&PostParams::default(), &network(&format!("w{w}-{i}")))
                    .await
                {
                    Ok(o) => {
                        let rv = o
                            .metadata
                            .resource_version
                            .and_then(|r| r.parse().ok())
                            .unwrap_or(0);
                        acked
                            .lock()
                            .expect("lock")
                            .push((o.metadata.name.unwrap_or_default(), rv));
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    // Let writes flow, then kill the server mid-stream.
    while acked.lock().expect("lock").len() < 300 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    for w in writers {
        w.await.expect("writer ends");
    }
    let acked = acked.lock().expect("lock").clone();
    let max_rv = acked.iter().map(|(_, rv)| *rv).max().unwrap_or(0);

    let mut child = spawn_child(dir.path());
    let client = client_for(dir.path()).await;
    let api = networks(&client);
    let list = api.list(&ListParams::default()).await.expect("list");
    let present: std::collections::HashSet<String> = list
        .items
        .iter()
        .filter_map(|o| o.metadata.name.clone())
        .collect();
    let lost: Vec<&String> = acked
        .iter()
        .map(|(n, _)| n)
        .filter(|n| !present.contains(*n))
        .collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    let after = api
        .create(&PostParams::default(), &network("after-restart"))
        .await
        .expect("write after restart");
    let rv: u64 = after
        .metadata
        .resource_version
        .and_then(|r| r.parse().ok())
        .expect("rv");
    assert!(rv > max_rv, "{rv} > {max_rv}");
    child.kill().expect("stop child");
    child.wait().expect("reaped");
}
