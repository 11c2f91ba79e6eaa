//! Embedded DNS benchmark: Pier's DNS and aardvark-dns (Podman's, Debian package
//! `aardvark-dns`) serve the same 200 names on the same bridge gateway of a private "host"
//! namespace, in one run; dnsperf (Debian package `dnsperf`) asks from a "container" namespace on
//! that bridge. Reports max QPS, latency p50/p99 at a fixed 10,000 QPS, and Pier's record update
//! latency (endpoint added to the NodeState → its name answerable).
//!
//! Not a test: run as root with `cargo bench -p pier-node --bench dns`
//! (env `PIER_BENCH_SECONDS=10`, `PIER_BENCH_ROUNDS=3`, `PIER_BENCH_CLIENTS=4`, `PIER_BENCH_AARDVARK=/usr/lib/podman/aardvark-dns`).
//! All traffic stays inside namespaces made here; they are removed at the end.

#[path = "../tests/common/mod.rs"]
mod common;

mod shared;

use shared::{env_or, stats, write_json};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Lab, Ns, bridge_endpoint, bridge_network};
use hickory_server::proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_server::proto::rr::{Name, RecordType};
use pier_node::dns::{DnsConfig, DnsServer, UpstreamConfig};
use pier_node::state::{EndpointState, NodeState};
use tokio::sync::watch;

const GATEWAY: &str = "172.30.0.1";
const NAMES: usize = 200;
const PIER_PORT: u16 = 53;
const AARDVARK_PORT: u16 = 5300;

fn name_address(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(172, 30, 0, 10 + i as u8)
}

/// A records-only endpoint (no kernel objects: only the DNS server sees it).
fn record(client: &Ns, name: &str, address: Ipv4Addr) -> EndpointState {
    let mut endpoint = bridge_endpoint(
        &format!("default/{name}"),
        client,
        "bench",
        "eth9",
        &address.to_string(),
        false,
    );
    // Another namespace than the client's, so these are separate askers' endpoints.
    endpoint.netns = pier_node::state::Netns::Named(format!("absent-{name}"));
    endpoint
}

#[derive(serde::Serialize, Debug, Default)]
struct Run {
    qps: f64,
    lost: String,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
    answered: usize,
    /// The server's CPU time per answered query (user + system), in µs.
    cpu_us: f64,
}

/// User + system CPU time of a process so far, in seconds (/proc/PID/stat fields 14 and 15).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_default()
    };
    // `rest` starts at field 3 (state): utime is field 14, stime 15.
    let hz = 100.0; // USER_HZ on Linux
    (ticks(11) + ticks(12)) / hz
}

fn dnsperf(client: &Ns, port: u16, file: &str, extra: &str) -> String {
    let seconds = env_or("PIER_BENCH_SECONDS", "10");
    let clients = env_or("PIER_BENCH_CLIENTS", "4");
    let command =
        format!("dnsperf -s {GATEWAY} -p {port} -d {file} -c {clients} -l {seconds} {extra}");
    eprintln!("  $ ip netns exec {} {command}", client.name);
    let out = client.exec(&command);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// CPU-bound processes, one per CPU, until dropped.
struct BusyNeighbours(Vec<std::process::Child>);

impl BusyNeighbours {
    fn count() -> usize {
        std::thread::available_parallelism().map_or(1, usize::from)
    }

    fn start() -> BusyNeighbours {
        BusyNeighbours(
            (0..Self::count())
                .map(|_| {
                    Command::new("sh")
                        .args(["-c", "while :; do :; done"])
                        .spawn()
                        .expect("busy loop starts")
                })
                .collect(),
        )
    }
}

impl Drop for BusyNeighbours {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn field<'a>(text: &'a str, label: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .map(str::trim)
}

fn throughput(client: &Ns, port: u16, file: &str, server_pid: u32) -> Run {
    let cpu_before = cpu_seconds(server_pid);
    let text = dnsperf(client, port, file, "-q 200");
    let cpu = cpu_seconds(server_pid) - cpu_before;
    let completed: f64 = field(&text, "Queries completed:")
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_default();
    Run {
        qps: field(&text, "Queries per second:")
            .and_then(|v| v.parse().ok())
            .unwrap_or_default(),
        lost: field(&text, "Queries lost:").unwrap_or("?").to_owned(),
        cpu_us: cpu * 1e6 / completed.max(1.0),
        ..Run::default()
    }
}

/// Latency percentiles at a fixed rate, from dnsperf's per-query verbose lines
/// (`> NOERROR name A 0.000123`).
fn latency(client: &Ns, port: u16, file: &str, rate: u32) -> Run {
    let text = dnsperf(client, port, file, &format!("-Q {rate} -v"));
    let mut samples: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("> "))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .map(|s| s * 1e6)
        .collect();
    samples.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        samples
            .get(((samples.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    Run {
        qps: field(&text, "Queries per second:")
            .and_then(|v| v.parse().ok())
            .unwrap_or_default(),
        lost: field(&text, "Queries lost:").unwrap_or("?").to_owned(),
        p50_us: pick(0.50),
        p99_us: pick(0.99),
        max_us: pick(1.0),
        answered: samples.len(),
        cpu_us: f64::NAN,
    }
}

/// Sends `name A?` from `socket` until an answer with data comes; returns when it did.
fn answerable(socket: &UdpSocket, server: SocketAddr, name: &str, id: u16) -> bool {
    let mut query = Message::new(id, MessageType::Query, OpCode::Query);
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(
        Name::from_ascii(format!("{name}.")).expect("bench name"),
        RecordType::A,
    ));
    let bytes = query.to_vec().expect("query encodes");
    let mut buffer = [0u8; 1500];
    socket.send_to(&bytes, server).expect("send query");
    while let Ok(n) = socket.recv(&mut buffer) {
        if let Ok(answer) = Message::from_vec(&buffer[..n])
            && answer.metadata.id == id
        {
            return answer.metadata.response_code == ResponseCode::NoError
                && !answer.answers.is_empty();
        }
    }
    false
}

/// The run of server `who` among `runs` (one per server).
fn run_of<'a>(runs: &'a [(&str, Run)], who: &str) -> Option<&'a Run> {
    runs.iter().find(|(l, _)| *l == who).map(|(_, r)| r)
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 - 1.0) * q).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let lab = Lab::new("dnsb");
    let client = lab.container("client");
    let mut state = NodeState {
        networks: vec![bridge_network("bench", "172.30.0.0/24", GATEWAY)],
        endpoints: vec![bridge_endpoint(
            "default/client",
            &client,
            "bench",
            "eth0",
            "172.30.0.2",
            true,
        )],
        ports: vec![],
        ..NodeState::default()
    };
    lab.apply_ok(&state);
    assert!(client.ping_eventually(GATEWAY.parse().expect("gateway")));
    for i in 0..NAMES {
        state
            .endpoints
            .push(record(&client, &format!("svc{i}"), name_address(i)));
    }

    // Pier, in this process, on the gateway (2 runtime workers: the machine has 2 cores).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (tx, rx) = watch::channel(state.clone());
    let upstream = std::env::temp_dir().join(format!("pier-bench-dns-{}.conf", std::process::id()));
    std::fs::write(&upstream, "").expect("empty upstream resolv.conf");
    let handle = {
        let _inside = runtime.enter();
        DnsServer::start_with(
            Some(lab.host.path()),
            rx,
            DnsConfig {
                port: PIER_PORT,
                etc_netns: None,
                upstream: UpstreamConfig {
                    resolv_conf: upstream.clone(),
                    ..UpstreamConfig::default()
                },
                ..DnsConfig::default()
            },
        )
        .expect("pier dns starts")
    };
    runtime.block_on(handle.synced());

    // aardvark-dns with the same names on the same gateway, another port.
    let aardvark = env_or("PIER_BENCH_AARDVARK", "/usr/lib/podman/aardvark-dns");
    let config = std::env::temp_dir().join(format!("pier-bench-aardvark-{}", std::process::id()));
    std::fs::create_dir_all(&config).expect("aardvark config dir");
    let mut lines = format!("{GATEWAY}\nclient 172.30.0.2  client\n");
    for i in 0..NAMES {
        lines.push_str(&format!("svc{i} {}  svc{i}\n", name_address(i)));
    }
    std::fs::write(config.join("bench"), lines).expect("aardvark config");
    let aardvark_command = format!(
        "{aardvark} --config {} -p {AARDVARK_PORT} run",
        config.display()
    );
    eprintln!("  $ ip netns exec {} {aardvark_command}", lab.host.name);
    let _aardvark = Command::new("ip")
        .args(["netns", "exec", &lab.host.name, "sh", "-c"])
        .arg(format!("exec {aardvark_command}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(common::Bg)
        .expect("starting aardvark-dns");
    std::thread::sleep(Duration::from_millis(500));
    // aardvark-dns is the only process in the host namespace (`ip netns exec` execs it).
    let aardvark_pid: u32 = Command::new("ip")
        .args(["netns", "pids", &lab.host.name])
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .find(|pid: &u32| {
                    std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .is_ok_and(|c| c.trim() == "aardvark-dns")
                })
        })
        .expect("aardvark-dns runs in the host namespace");
    // Each server: its label, its port and the process whose CPU time is its own.
    let servers = [
        ("pier", PIER_PORT, std::process::id()),
        ("aardvark-dns", AARDVARK_PORT, aardvark_pid),
    ];

    let queries = std::env::temp_dir().join(format!("pier-bench-queries-{}", std::process::id()));
    let text: String = (0..NAMES).map(|i| format!("svc{i} A\n")).collect();
    std::fs::write(&queries, text).expect("query file");
    let file = queries.display().to_string();

    for (label, port, _) in servers {
        let check = client.exec(&format!("dig +short +time=1 @{GATEWAY} -p {port} svc7"));
        let answer = String::from_utf8_lossy(&check.stdout).trim().to_owned();
        assert_eq!(answer, "172.30.0.17", "{label} answers svc7");
    }

    // Alternate servers, so drift on the machine hits both alike.
    let mut max = Vec::new();
    let rounds: usize = env_or("PIER_BENCH_ROUNDS", "3").parse().unwrap_or(3);
    for round in 0..rounds {
        for (label, port, pid) in servers {
            let run = throughput(&client, port, &file, pid);
            eprintln!("round {round} {label}: {run:?}");
            max.push((label, run));
        }
    }
    let mut fixed = Vec::new();
    for (label, port, _) in servers {
        let run = latency(&client, port, &file, 10_000);
        eprintln!("10k QPS {label}: {run:?}");
        fixed.push((label, run));
    }
    // The same beside CPU-bound neighbours, one per CPU: a node's DNS shares its CPUs with
    // workloads, and a server that gives its CPU away to let askers run must not give it to them.
    // Flooded too: a server that pauses for its askers under load must not hand the CPU to
    // neighbours at every pause.
    let mut beside_busy = Vec::new();
    let mut flooded_beside_busy = Vec::new();
    {
        let _neighbours = BusyNeighbours::start();
        for (label, port, pid) in servers {
            let run = latency(&client, port, &file, 10_000);
            eprintln!("10k QPS beside busy neighbours {label}: {run:?}");
            beside_busy.push((label, run));
            let run = throughput(&client, port, &file, pid);
            eprintln!("max QPS beside busy neighbours {label}: {run:?}");
            flooded_beside_busy.push((label, run));
        }
    }

    // Update latency: add one endpoint to the NodeState, ask for it until it answers.
    let socket = pier_node::kernel::netns::run_in(Some(&client.path()), || {
        UdpSocket::bind("0.0.0.0:0").expect("client socket")
    })
    .expect("socket in the client namespace");
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let server: SocketAddr = format!("{GATEWAY}:{PIER_PORT}").parse().expect("addr");
    let mut updates = Vec::new();
    for k in 0..50u16 {
        let name = format!("new{k}");
        let mut next = state.clone();
        next.endpoints.push(record(
            &client,
            &name,
            Ipv4Addr::new(172, 30, 0, 220 + (k % 30) as u8),
        ));
        let started = Instant::now();
        tx.send_replace(next);
        let mut id = k.wrapping_mul(1000);
        while !answerable(&socket, server, &name, id) {
            id = id.wrapping_add(1);
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{name} never answered"
            );
        }
        updates.push(started.elapsed().as_secs_f64() * 1e6);
        runtime.block_on(handle.synced());
        tx.send_replace(state.clone());
        runtime.block_on(handle.synced());
    }
    updates.sort_by(f64::total_cmp);
    let mut builds: Vec<f64> = (0..50)
        .map(|_| {
            let started = Instant::now();
            let views = pier_node::dns::views::Views::build(&state);
            let took = started.elapsed().as_secs_f64() * 1e6;
            drop(views);
            took
        })
        .collect();
    builds.sort_by(f64::total_cmp);

    let of = |who: &str, pick: fn(&Run) -> f64| {
        let mut values: Vec<f64> = max
            .iter()
            .filter(|(l, _)| *l == who)
            .map(|(_, r)| pick(r))
            .collect();
        values.sort_by(f64::total_cmp);
        values
    };
    let median = |values: &[f64]| percentile(values, 0.5);
    let best = |values: &[f64]| values.last().copied().unwrap_or(f64::NAN);
    println!(
        "\n| server | max QPS per round ({rounds} rounds, {} clients) | best | median | server CPU µs/query (median) | lost (each round) | QPS at -Q 10000 | p50 µs | p99 µs | max µs | answered |",
        env_or("PIER_BENCH_CLIENTS", "4")
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (label, run) in &fixed {
        let qps = of(label, |r| r.qps);
        let lost = max
            .iter()
            .filter(|(l, _)| l == label)
            .map(|(_, r)| r.lost.clone())
            .collect::<Vec<_>>()
            .join(" / ");
        let rounds_qps = max
            .iter()
            .filter(|(l, _)| l == label)
            .map(|(_, r)| format!("{:.0}", r.qps))
            .collect::<Vec<_>>()
            .join(" / ");
        println!(
            "| {label} | {rounds_qps} | {:.0} | {:.0} | {:.2} | {lost} | {:.0} | {:.0} | {:.0} | {:.0} | {} |",
            best(&qps),
            median(&qps),
            median(&of(label, |r| r.cpu_us)),
            run.qps,
            run.p50_us,
            run.p99_us,
            run.max_us,
            run.answered
        );
    }
    let (pier, aardvark) = (of("pier", |r| r.qps), of("aardvark-dns", |r| r.qps));
    println!(
        "\nPier / aardvark-dns max QPS: best {:.2}x, median {:.2}x; CPU per query: aardvark-dns / Pier {:.2}x",
        best(&pier) / best(&aardvark).max(1.0),
        median(&pier) / median(&aardvark).max(1.0),
        median(&of("aardvark-dns", |r| r.cpu_us)) / median(&of("pier", |r| r.cpu_us)).max(1e-9)
    );
    println!(
        "Update latency (endpoint added → answerable, {} samples): p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs",
        updates.len(),
        percentile(&updates, 0.5),
        percentile(&updates, 0.99),
        percentile(&updates, 1.0)
    );
    println!(
        "Views rebuild for {} endpoints (part of the update): p50 {:.0} µs, max {:.0} µs",
        state.endpoints.len(),
        percentile(&builds, 0.5),
        percentile(&builds, 1.0)
    );
    println!("Pier counters: {:?}", handle.stats());

    // Rounds alternate the two servers, so each round's pair saw the same machine load.
    let pair_ratios: Vec<f64> = max
        .chunks(2)
        .filter_map(|pair| match pair {
            [(_, ours), (_, theirs)] => Some(ours.qps / theirs.qps.max(1.0)),
            _ => None,
        })
        .collect();
    let runs = |who: &str| -> Vec<&Run> {
        max.iter()
            .filter(|(l, _)| *l == who)
            .map(|(_, r)| r)
            .collect()
    };
    let at_10k = |who: &str| run_of(&fixed, who);
    let beside = |who: &str| run_of(&beside_busy, who);
    let flooded = |who: &str| run_of(&flooded_beside_busy, who);
    write_json(&serde_json::json!({
        "bench": "dns",
        "rounds": rounds,
        "clients": env_or("PIER_BENCH_CLIENTS", "4"),
        "max_qps_rounds": {"pier": runs("pier"), "aardvark-dns": runs("aardvark-dns")},
        "qps_ratio_per_round": pair_ratios,
        "at_10k_qps": {"pier": at_10k("pier"), "aardvark-dns": at_10k("aardvark-dns")},
        "at_10k_qps_beside_busy_neighbours": {
            "pier": beside("pier"),
            "aardvark-dns": beside("aardvark-dns"),
            "neighbours": BusyNeighbours::count(),
        },
        "max_qps_beside_busy_neighbours": {
            "pier": flooded("pier"),
            "aardvark-dns": flooded("aardvark-dns"),
            "neighbours": BusyNeighbours::count(),
        },
        // Every update sample; the 10,000 QPS runs keep percentiles only (100,000 per server).
        "update_us": {
            "p50": percentile(&updates, 0.5),
            "p99": percentile(&updates, 0.99),
            "max": percentile(&updates, 1.0),
            "all": stats(updates.clone()),
        },
        "views_rebuild_us": stats(builds.clone()),
    }));

    runtime.block_on(handle.stop());
    let _ = std::fs::remove_dir_all(&config);
    let _ = std::fs::remove_file(&queries);
    let _ = std::fs::remove_file(&upstream);
}
