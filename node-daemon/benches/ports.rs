//! Published-port latency: how long `firewall::plan` + `firewall::apply` take to add one published
//! port when the node already publishes 10, 100 and 1000 (target: < 5 ms and flat, because one
//! port is one map element whatever the number of ports), and to remove it again.
//!
//! Not a test: run as root with
//! `cargo bench -p pier-node --bench ports` (env `PIER_BENCH_SIZES=10,100,1000`,
//! `PIER_BENCH_REPS=50`, `PIER_BENCH_PAUSE_MS=20` before each add and each remove, `PIER_BENCH_SETNS=1`).
//! Everything happens in a network namespace made here (unshared by the process, or
//! `pbports<pid>` with PIER_BENCH_SETNS=1, deleted at the end); the machine's own namespace is
//! never touched. The first 5 repetitions of each size are warm-up and not counted.
//! Prints a Markdown table for BENCHMARKS.md.

mod shared;

use shared::{env_or, stats, write_json};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use pier_node::firewall;
use pier_node::state::{Driver, NetworkState, NodeState, Protocol, PublishedPort};

/// Repetitions per size run before measuring (caches, first-use allocations in the kernel).
const WARMUP: usize = 5;

struct HostNs(String);

impl HostNs {
    fn new() -> HostNs {
        let name = format!("pbports{}", std::process::id());
        let status = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("run ip netns add");
        assert!(
            status.success(),
            "ip netns add {name} failed (the benchmark needs root)"
        );
        HostNs(name)
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(pier_crds::names::NETNS_DIR).join(&self.0)
    }
}

impl Drop for HostNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn published(host_port: u16, last_octet: u8) -> PublishedPort {
    PublishedPort {
        id: format!("default/p{host_port}"),
        endpoint: "default/web".into(),
        host_ip: Ipv4Addr::UNSPECIFIED.into(),
        host_port,
        protocol: Protocol::Tcp,
        endpoint_address: Ipv4Addr::new(172, 18, 0, last_octet).into(),
        container_port: 80,
    }
}

fn state(ports: usize) -> NodeState {
    NodeState {
        networks: vec![NetworkState {
            name: "web".into(),
            uid: "bench-web".into(),
            driver: Driver::Bridge,
            subnet: Some("172.18.0.0/16".parse().expect("subnet")),
            gateway: Some(Ipv4Addr::new(172, 18, 0, 1)),
            subnet6: None,
            gateway6: None,
            mtu: 1500,
            internal: false,
            dns: true,
            vxlan_id: None,
        }],
        endpoints: vec![],
        ports: (0..ports)
            .map(|i| published(10_000 + i as u16, 2 + (i % 250) as u8))
            .collect(),
        ..NodeState::default()
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    // `cargo bench` passes `--bench`; a plain `cargo test --benches` run passes nothing useful.
    let sizes: Vec<usize> = env_or("PIER_BENCH_SIZES", "10,100,1000")
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .expect("PIER_BENCH_SIZES: comma-separated numbers")
        })
        .collect();
    let reps: usize = env_or("PIER_BENCH_REPS", "50")
        .parse()
        .expect("PIER_BENCH_REPS: a number");
    let pause_ms: u64 = env_or("PIER_BENCH_PAUSE_MS", "20")
        .parse()
        .expect("PIER_BENCH_PAUSE_MS: a number");
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the ports benchmark needs root (network namespaces, nftables)"
    );
    // By default the benchmark moves itself into a fresh network namespace and drives it as
    // "its own" (`host_netns = None`), as `pier node` does on a real node. With
    // PIER_BENCH_SETNS=1 it drives a named namespace instead (`host_netns = Some(path)`, as the
    // kernel tests do), which adds a setns per plan and per apply.
    let via_setns = env_or("PIER_BENCH_SETNS", "0") == "1";
    let named = via_setns.then(HostNs::new);
    if !via_setns {
        // Before any thread exists: threads spawned later inherit this namespace.
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
    }
    let host_path = named.as_ref().map(HostNs::path);
    let host_path = host_path.as_deref();
    let converge = |state: &NodeState| {
        let plan = firewall::plan(host_path, state).expect("plan");
        firewall::apply(host_path, &plan).expect("apply");
    };
    println!(
        "host namespace: {}",
        if via_setns {
            "named, entered with setns per call"
        } else {
            "the process's own (as `pier node`)"
        }
    );

    println!(
        "| ports already published | add one port: plan+apply median | min | max | plan (read back + diff) median | apply (one batch) median | remove it again: plan+apply median |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    for &size in &sizes {
        let base = state(size);
        converge(&base);
        let mut plus_one = base.clone();
        plus_one.ports.push(published(9_000, 2));
        let (mut total, mut plans, mut applies) = (Vec::new(), Vec::new(), Vec::new());
        let (mut removes, mut remove_plans) = (Vec::new(), Vec::new());
        for rep in 0..reps + WARMUP {
            let start = Instant::now();
            let plan = firewall::plan(host_path, &plus_one).expect("plan");
            let planned = Instant::now();
            firewall::apply(host_path, &plan).expect("apply");
            let done = Instant::now();
            assert_eq!(plan.element_changes(), 1, "{plan}");
            if rep >= WARMUP {
                total.push(done - start);
                plans.push(planned - start);
                applies.push(done - planned);
            }
            // Let the kernel's deferred transaction cleanup finish before each change, so it is
            // not billed to the next one (ports do not change at kHz rates in real life).
            std::thread::sleep(Duration::from_millis(pause_ms));
            // Remove it again: plan+apply back to the N ports.
            let start = Instant::now();
            let plan = firewall::plan(host_path, &base).expect("plan");
            let planned = start.elapsed();
            firewall::apply(host_path, &plan).expect("apply");
            let removed = start.elapsed();
            assert_eq!(plan.element_changes(), 1, "{plan}");
            if rep >= WARMUP {
                removes.push(removed);
                remove_plans.push(planned);
            }
            std::thread::sleep(Duration::from_millis(pause_ms));
        }
        let in_ms = |samples: Vec<Duration>| stats(samples.into_iter().map(ms).collect());
        let (t, p, a) = (in_ms(total), in_ms(plans), in_ms(applies));
        let (r, rp) = (in_ms(removes), in_ms(remove_plans));
        println!(
            "| {size} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |",
            t.median, t.min, t.max, p.median, a.median, r.median
        );
        rows.push(serde_json::json!({
            "ports": size,
            "add_one_ms": t,
            "plan_ms": p,
            "apply_ms": a,
            "remove_one_ms": r,
            "remove_plan_ms": rp,
        }));
    }
    firewall::reset(host_path).expect("reset");
    println!("\n({reps} repetitions per size, {pause_ms} ms pause between repetitions)");
    write_json(&serde_json::json!({
        "bench": "ports",
        "repetitions": reps,
        "pause_ms": pause_ms,
        "host_netns_via_setns": via_setns,
        "sizes": rows,
    }));
}
