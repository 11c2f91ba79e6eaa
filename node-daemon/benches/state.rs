//! The node agent's state work when N Endpoints arrive at once, without a kernel or an API
//! server: per Endpoint event, what the agent did before the incremental state (a whole
//! `build::build` of the node and a copy of it for the apply: O(N) each, O(N²) in all) against
//! what it does now (`NodeIndex::upsert_endpoint` and the projection of the endpoint's scope).
//! Pure CPU work on one thread, so the comparison holds on a busy machine too.
//!
//! Not a test: `cargo bench -p pier-node --bench state` (env `PIER_BENCH_SIZES=100,500,2000`,
//! `PIER_BENCH_REPS=3`, `PIER_BENCH_JSON`). Each Endpoint brings two events to the agent, as in
//! `pier up` (the operator's allocation, then the node's finalizer); every repetition's time is a
//! sample in the JSON. No root needed.

mod shared;

use shared::{Stats, env_or, stats, write_json};
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use pier_crds::conditions::{self, READY};
use pier_crds::endpoint::NetnsTarget;
use pier_crds::{Endpoint, EndpointSpec, EndpointStatus, EndpointTarget, Network};
use pier_crds::{NetworkSpec, NetworkStatus};
use pier_node::agent::build::{self, Inputs};
use pier_node::agent::index::{Environment, NodeIndex};
use pier_node::dataplane::Scope;

const NODE: &str = "node-a";
/// Events per Endpoint reaching the agent (allocated by the operator, finalizer added).
const EVENTS: usize = 2;

fn network() -> Arc<Network> {
    Arc::new(Network {
        metadata: ObjectMeta {
            name: Some("bench".into()),
            uid: Some("uid-bench".into()),
            ..ObjectMeta::default()
        },
        spec: NetworkSpec {
            dns: true,
            ..NetworkSpec::default()
        },
        status: Some(NetworkStatus {
            subnet: Some("10.0.0.0/8".into()),
            gateway: Some("10.0.0.1".into()),
            ..NetworkStatus::default()
        }),
    })
}

/// Endpoint `n`, allocated on this node; `finalized` after the node's finalizer was added.
fn endpoint(n: usize, finalized: bool) -> Arc<Endpoint> {
    let name = format!("ep{n}");
    let [_, a, b, c] = u32::try_from(n + 2).unwrap_or(0).to_be_bytes();
    Arc::new(Endpoint {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some("default".into()),
            uid: Some(format!("uid-{name}")),
            creation_timestamp: Some(Time(
                Timestamp::from_second(1_700_000_000 + i64::try_from(n).unwrap_or(0))
                    .expect("timestamp"),
            )),
            finalizers: finalized.then(|| vec![pier_crds::finalizers::NODE.to_owned()]),
            ..ObjectMeta::default()
        },
        spec: EndpointSpec {
            network: Some("bench".into()),
            target: EndpointTarget {
                netns: Some(NetnsTarget {
                    name: name.clone(),
                    node: None,
                }),
                ..EndpointTarget::default()
            },
            ..EndpointSpec::default()
        },
        status: Some(EndpointStatus {
            node: Some(NODE.into()),
            network: Some("bench".into()),
            ipv4_address: Some(format!("10.{a}.{b}.{c}")),
            mac_address: Some(format!("02:42:0a:{a:02x}:{b:02x}:{c:02x}")),
            interface: Some("eth0".into()),
            default_route: Some(true),
            dns_names: vec![name],
            conditions: vec![conditions::observe(&[], READY, true, "Allocated", "", None)],
            ..EndpointStatus::default()
        }),
    })
}

/// The agent before: each event builds the whole node and copies it for the apply.
fn full_builds(n: usize) -> Duration {
    let networks = [network()];
    let mut store: Vec<Arc<Endpoint>> = Vec::with_capacity(n);
    let no_pods = HashMap::new();
    let no_tunnels = HashMap::new();
    let start = Instant::now();
    for i in 0..n {
        store.push(endpoint(i, false));
        for event in 0..EVENTS {
            store[i] = endpoint(i, event > 0);
            let built = build::build(Inputs {
                node: NODE,
                networks: &networks,
                endpoints: &store,
                ports: &[],
                host_subnets: &[],
                pod_netns: &no_pods,
                netns_targets: true,
                remote_endpoints: &[],
                tunnels: &no_tunnels,
                tunnel: None,
                tunnel_problem: None,
            });
            black_box(built.state.clone());
        }
    }
    start.elapsed()
}

/// The agent now: each event updates the index, and the apply gets its scope's projection.
fn incremental(n: usize) -> Duration {
    let mut index = NodeIndex::new(Environment {
        node: NODE.to_owned(),
        netns_targets: true,
        ..Environment::default()
    });
    index.upsert_network(network());
    let start = Instant::now();
    for i in 0..n {
        for event in 0..EVENTS {
            let object = endpoint(i, event > 0);
            let scope = Scope::endpoints([build::object_id(&object.metadata)]);
            index.upsert_endpoint(object);
            black_box(index.projection(&scope));
        }
    }
    let elapsed = start.elapsed();
    assert_eq!(
        index.state().endpoints.len(),
        n,
        "every endpoint in the state"
    );
    elapsed
}

fn seconds(samples: &[Duration]) -> Stats {
    stats(samples.iter().map(Duration::as_secs_f64).collect())
}

fn main() {
    let sizes: Vec<usize> = env_or("PIER_BENCH_SIZES", "100,500,2000")
        .split(',')
        .map(|s| s.trim().parse().expect("PIER_BENCH_SIZES: numbers"))
        .collect();
    let reps: usize = env_or("PIER_BENCH_REPS", "3")
        .parse()
        .expect("PIER_BENCH_REPS: a number");
    assert!(reps > 0, "PIER_BENCH_REPS: at least 1");
    println!("| Endpoints at once | whole build per event (before) | incremental (now) | ratio |");
    println!("|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    for &n in &sizes {
        let full: Vec<Duration> = (0..reps).map(|_| full_builds(n)).collect();
        let now: Vec<Duration> = (0..reps).map(|_| incremental(n)).collect();
        let (full, now) = (seconds(&full), seconds(&now));
        let (f, i) = (full.median, now.median);
        println!(
            "| {n} | {:.3} s | {:.4} s | {:.0}x |",
            f,
            i,
            f / i.max(f64::MIN_POSITIVE)
        );
        rows.push(serde_json::json!({
            "endpoints": n, "full_build_s": full, "incremental_s": now,
        }));
    }
    write_json(&serde_json::json!({
        "bench": "state",
        "events_per_endpoint": EVENTS,
        "repetitions": reps,
        "sizes": rows,
        "command": "cargo bench -p pier-node --bench state",
    }));
}
