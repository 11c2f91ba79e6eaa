//! 200 Endpoints created concurrently get 200 distinct addresses; an operator killed mid-way and
//! replaced allocates nothing twice and keeps every existing allocation.
//! Endpoints that keep coming get their Network's count written a few times, paced, ending right.

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

/// Endpoints that keep coming to one Network (one every 25 ms for a second): the operator writes
/// the Network's endpoint count a few times while they come (paced), not once per Endpoint, and
/// the last value is the full count. (Unpaced, every one of them was a count write.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_that_keep_coming_write_the_network_count_a_few_times_and_end_right() {
    const TRICKLE: usize = 40;
    use kube::runtime::watcher;

    let (_server, client) = cluster().await;
    let nets: Api<Network> = Api::all(client.clone());
    let eps: Api<Endpoint> = Api::namespaced(client.clone(), "default");
    let operator = Operator::start(&client, config("op-1"));
    wait_for(&nets, "bridge", "subnet", |n| {
        n.status.as_ref().is_some_and(|s| s.subnet.is_some())
    })
    .await;

    // Every count the API server hands out for the bridge, in order.
    let counts = std::sync::Arc::new(std::sync::Mutex::new(Vec::<i32>::new()));
    let seen = counts.clone();
    let watch = tokio::spawn(
        watcher(
            nets.clone(),
            watcher::Config::default().fields("metadata.name=bridge"),
        )
        .for_each(move |event| {
            if let Ok(watcher::Event::Apply(net)) = event {
                let count = net.status.map_or(0, |s| s.endpoints);
                let mut seen = seen.lock().expect("counts");
                if seen.last() != Some(&count) {
                    seen.push(count);
                }
            }
            futures::future::ready(())
        }),
    );
    let started = std::time::Instant::now();
    for i in 0..TRICKLE {
        let name = format!("trickle-{i:02}");
        create(&eps, &endpoint(&name, &name, None, json!({}))).await;
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    wait_for(&nets, "bridge", "all endpoints counted", |n| {
        n.status
            .as_ref()
            .is_some_and(|s| s.endpoints == TRICKLE as i32)
    })
    .await;
    // At most one write per pace while they came, the first one at once (a slower machine makes
    // the trickle longer, and allows more).
    let pace = pier_operator::pace::ENDPOINT_COUNT_PACE;
    let allowed =
        usize::try_from(started.elapsed().as_millis() / pace.as_millis()).unwrap_or(usize::MAX) + 2;
    // Longer than the pace: a write still due would have gone by now.
    tokio::time::sleep(pace * 2).await;
    watch.abort();
    let counts = counts.lock().expect("counts").clone();
    eprintln!("counts written: {counts:?}");
    assert_eq!(
        counts.last(),
        Some(&(TRICKLE as i32)),
        "the last count is all of them"
    );
    assert!(
        counts.len() <= allowed && counts.len() < TRICKLE / 2,
        "{} count changes for {TRICKLE} Endpoints in {:?}: not paced ({counts:?})",
        counts.len(),
        started.elapsed()
    );
    operator.stop().await;
}
