//! The operator end to end on the embedded API server, in-process: how long from an Endpoint
//! created to its address in status, and how long 1,000 Endpoints take to be allocated.
//!
//! Not a timed test: a report. `cargo bench -p pier-operator --bench controllers`
//! (figures in BENCHMARKS.md, section "Operator"). With `PIER_BENCH_JSON=FILE` the figures are
//! also written there as JSON (read by `benches/run.sh`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use pier_apiserver::{ApiServer, Options};
use pier_crds::{Endpoint, Network};
use serde_json::json;
use tokio::sync::mpsc;

const SEQUENTIAL: usize = 300;
const BULK: usize = 1000;

fn endpoint(name: &str, network: &str) -> Endpoint {
    serde_json::from_value(
        json!({"apiVersion": "pier.dev/v1alpha1", "kind": "Endpoint",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"network": network, "target": {"netns": {"name": name}}}}),
    )
    .expect("valid Endpoint")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let server = ApiServer::in_memory_with(Options::for_node("node-a"))
        .await
        .expect("API server starts");
    let client = Client::new(server.service(), "default");
    pier_crds::manifests::install(&client, "test")
        .await
        .expect("CRDs installed");
    let mut config = pier_operator::Config::default();
    config.lease.identity = "bench".into();
    let metrics = std::sync::Arc::new(pier_operator::metrics::Metrics::default());
    let health = std::sync::Arc::new(pier_operator::admin::Health::default());
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(pier_operator::run_with_client(
        client.clone(),
        config,
        metrics,
        health,
        async move {
            let _ = stopped.await;
        },
    ));

    let nets: Api<Network> = Api::all(client.clone());
    let eps: Api<Endpoint> = Api::namespaced(client.clone(), "default");
    for name in ["seq", "bulk"] {
        let net: Network = serde_json::from_value(json!({"apiVersion": "pier.dev/v1alpha1",
            "kind": "Network", "metadata": {"name": name}, "spec": {}}))
        .expect("valid Network");
        nets.create(&PostParams::default(), &net)
            .await
            .expect("network created");
    }

    // One watch reports when each Endpoint first shows an address.
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, Instant)>();
    let watch = eps.clone();
    tokio::spawn(async move {
        let mut seen = std::collections::HashSet::new();
        let stream = watcher(watch, watcher::Config::default()).applied_objects();
        futures::pin_mut!(stream);
        while let Some(Ok(ep)) = stream.next().await {
            let has = ep.status.as_ref().is_some_and(|s| s.ipv4_address.is_some());
            if has && seen.insert(ep.name_any()) {
                let _ = tx.send((ep.name_any(), Instant::now()));
            }
        }
    });
    // Wait until the networks have subnets (the operator is leading and rebuilt).
    for name in ["seq", "bulk"] {
        while nets
            .get(name)
            .await
            .ok()
            .and_then(|n| n.status?.subnet)
            .is_none()
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    // 1. Latency: one Endpoint at a time, created → address in status.
    let mut latencies = Vec::with_capacity(SEQUENTIAL);
    for i in 0..SEQUENTIAL {
        let name = format!("seq-{i:04}");
        let start = Instant::now();
        eps.create(&PostParams::default(), &endpoint(&name, "seq"))
            .await
            .expect("created");
        loop {
            let (got, at) = rx.recv().await.expect("watch running");
            if got == name {
                latencies.push(at - start);
                break;
            }
        }
    }
    latencies.sort();
    println!(
        "Endpoint created -> address in status ({SEQUENTIAL}, one at a time): p50 {}, p90 {}, p99 {}, max {}",
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.9)),
        ms(percentile(&latencies, 0.99)),
        ms(percentile(&latencies, 1.0)),
    );

    // 2. Throughput: BULK Endpoints created concurrently, until the last has its address.
    let start = Instant::now();
    let creates = {
        let eps = eps.clone();
        tokio::spawn(async move {
            futures::stream::iter(0..BULK)
                .map(|i| {
                    let eps = eps.clone();
                    async move {
                        let name = format!("bulk-{i:04}");
                        eps.create(&PostParams::default(), &endpoint(&name, "bulk"))
                            .await
                            .expect("created");
                    }
                })
                .buffer_unordered(64)
                .collect::<Vec<()>>()
                .await;
            Instant::now()
        })
    };
    let mut done: HashMap<String, Instant> = HashMap::new();
    while done.len() < BULK {
        let (name, at) = rx.recv().await.expect("watch running");
        if name.starts_with("bulk-") {
            done.insert(name, at);
        }
    }
    let created = creates.await.expect("creates") - start;
    let last = done.values().max().copied().unwrap_or(start) - start;
    let distinct: std::collections::HashSet<String> = eps
        .list(&Default::default())
        .await
        .expect("list")
        .items
        .iter()
        .filter(|e| e.spec.network.as_deref() == Some("bulk"))
        .filter_map(|e| e.status.as_ref()?.ipv4_address.clone())
        .collect();
    assert_eq!(distinct.len(), BULK, "every address distinct");
    println!(
        "{BULK} Endpoints created concurrently (64 in flight): all created in {}, all allocated in {} ({:.0} endpoints/s)",
        ms(created),
        ms(last),
        BULK as f64 / last.as_secs_f64()
    );
    if let Ok(path) = std::env::var("PIER_BENCH_JSON") {
        let f = |d: Duration| d.as_secs_f64() * 1e3;
        let document = json!({
            "bench": "operator",
            "sequential": SEQUENTIAL,
            "created_to_address_ms": {
                "p50": f(percentile(&latencies, 0.5)),
                "p90": f(percentile(&latencies, 0.9)),
                "p99": f(percentile(&latencies, 0.99)),
                "max": f(percentile(&latencies, 1.0)),
                "samples": latencies.iter().map(|d| f(*d)).collect::<Vec<f64>>(),
            },
            "bulk": BULK,
            "bulk_created_s": created.as_secs_f64(),
            "bulk_allocated_s": last.as_secs_f64(),
        });
        let text = serde_json::to_string_pretty(&document).expect("JSON of plain numbers");
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("PIER_BENCH_JSON={path}: {e}"));
    }
}
