//! 200 Endpoints created concurrently get 200 distinct addresses; an operator killed mid-way and
//! replaced allocates nothing twice and keeps every existing allocation.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use futures::StreamExt;
use kube::Api;
use pier_crds::{Endpoint, Network};
use serde_json::json;

const N: usize = 200;

async fn addresses(eps: &Api<Endpoint>) -> BTreeMap<String, String> {
    eps.list(&Default::default())
        .await
        .expect("list")
        .items
        .iter()
        .filter_map(|e| Some((e.metadata.name.clone()?, address(e)?)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_endpoints_get_distinct_addresses_across_a_restart() {
    let (_server, client) = cluster().await;
    let nets: Api<Network> = Api::all(client.clone());
    let eps: Api<Endpoint> = Api::namespaced(client.clone(), "default");
    let first = Operator::start(&client, config("op-1"));
    wait_for(&nets, "bridge", "subnet", |n| {
        n.status.as_ref().is_some_and(|s| s.subnet.is_some())
    })
    .await;

    let create_range = |range: std::ops::Range<usize>| {
        let eps = eps.clone();
        futures::stream::iter(range)
            .map(move |i| {
                let eps = eps.clone();
                async move {
                    let name = format!("ep-{i:03}");
                    create(&eps, &endpoint(&name, &name, None, json!({}))).await;
                }
            })
            .buffer_unordered(32)
            .collect::<Vec<()>>()
    };
    create_range(0..N / 2).await;
    // Kill the operator while it is allocating: once some endpoints have addresses.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while addresses(&eps).await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "nothing allocated");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    first.kill().await;
    let before = addresses(&eps).await;
    create_range(N / 2..N).await;

    // A new replica (another identity) takes over once the killed one's lease expires.
    let second = Operator::start(&client, config("op-2"));
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    let after = loop {
        let now = addresses(&eps).await;
        if now.len() == N {
            break now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {N} allocated",
            now.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let distinct: BTreeSet<&String> = after.values().collect();
    assert_eq!(distinct.len(), N, "every address distinct");
    for (name, addr) in &before {
        assert_eq!(
            after.get(name),
            Some(addr),
            "{name} kept its address across the restart"
        );
    }
    assert!(after.values().all(|a| a.starts_with("172.17.")));
    assert!(second.metrics.total_reconciles() > 0);
    // The bridge counts them all.
    wait_for(&nets, "bridge", "all endpoints counted", |n| {
        n.status.as_ref().is_some_and(|s| s.endpoints == N as i32)
    })
    .await;
    eprintln!("{} of {N} allocated before the restart", before.len());
    assert!(
        !before.is_empty() && before.len() < N,
        "the restart came mid-way"
    );
    second.stop().await;
}
