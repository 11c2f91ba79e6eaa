//! Attach latency: how long one more endpoint takes to come up when the node already has 10, 100
//! and 1000 (over 4 bridge networks, so no bridge nears its 1024-port limit), for Pier's
//! `Dataplane::apply` (plan read back from the kernel + links + firewall) and, in the same run on
//! the same machine, for `netavark setup` (Podman's network tool, Debian package `netavark`);
//! then detach (removing it again): Pier's apply in the removal scope of its veth and bridge (the node agent's
//! detach path) and `netavark teardown`. Each repetition times Pier and netavark back to back at each size,
//! so their ratio is computed pair by pair (the machine's load drifts between repetitions).
//! Optionally iperf3 throughput host -> endpoint through a published port vs. the direct path.
//!
//! `PIER_BENCH_FAMILIES` says which address families the networks and endpoints have: `ipv4`
//! (the default), `dual` (dual-stack) or `ipv6` (IPv6-only), or several, comma-separated
//! (`ipv4,dual`): then each size has one node per family, the repetitions take the families in
//! turn, and the attach time of each family is also given relative to the first family's, pair
//! by pair. netavark runs beside the first family, with the same families.
//!
//! Not a test: run as root with
//! `cargo bench -p pier-node --bench attach` (env `PIER_BENCH_SIZES=10,100,1000`,
//! `PIER_BENCH_REPS=15`, `PIER_BENCH_NETAVARK=/usr/lib/podman/netavark`, `PIER_BENCH_IPERF=1`,
//! `PIER_BENCH_FAMILIES=ipv4`).
//! Everything happens in namespaces made here (`pb<pid>-...`), removed at the end.

mod shared;

use shared::{Stats, env_or, stats, write_json};
use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnet::Ipv6Net;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pier_node::dataplane::{Dataplane, Scope};
use pier_node::kernel::netns;
use pier_node::state::{
    Attachment, BridgeAttachment, Driver, EndpointState, Netns, NetworkState, NodeState, Protocol,
    PublishedPort,
};

const NETWORKS: usize = 4;

/// Runs `ip -batch -` with the given lines (one process for thousands of namespaces).
fn ip_batch(lines: &[String]) {
    let mut child = Command::new("ip")
        .args(["-force", "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn ip -batch");
    let mut input = child.stdin.take().expect("stdin of ip");
    for line in lines {
        writeln!(input, "{line}").expect("write to ip -batch");
    }
    drop(input);
    child.wait().expect("ip -batch");
}

struct Namespaces {
    names: Vec<String>,
}

impl Namespaces {
    fn new(prefix: &str, count: usize) -> Namespaces {
        let names: Vec<String> = (0..count).map(|i| format!("{prefix}-{i}")).collect();
        ip_batch(
            &names
                .iter()
                .map(|n| format!("netns add {n}"))
                .collect::<Vec<_>>(),
        );
        Namespaces { names }
    }

    fn path(&self, i: usize) -> PathBuf {
        PathBuf::from(pier_crds::names::NETNS_DIR).join(&self.names[i])
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        ip_batch(
            &self
                .names
                .iter()
                .map(|n| format!("netns del {n}"))
                .collect::<Vec<_>>(),
        );
    }
}

/// The address families of a run's networks and endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Ipv4,
    Dual,
    Ipv6,
}

impl Family {
    fn parse(text: &str) -> Option<Family> {
        match text.trim() {
            "ipv4" => Some(Family::Ipv4),
            "dual" => Some(Family::Dual),
            "ipv6" => Some(Family::Ipv6),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4",
            Family::Dual => "dual",
            Family::Ipv6 => "ipv6",
        }
    }

    fn v4(self) -> bool {
        self != Family::Ipv6
    }

    fn v6(self) -> bool {
        self != Family::Ipv4
    }
}

fn network(j: usize, family: Family) -> NetworkState {
    let octet = 60 + j as u8;
    NetworkState {
        name: format!("bench{j}"),
        uid: format!("uid-bench-{j}"),
        driver: Driver::Bridge,
        subnet: family
            .v4()
            .then(|| format!("10.{octet}.0.0/16").parse().expect("subnet")),
        gateway: family.v4().then_some(Ipv4Addr::new(10, octet, 0, 1)),
        subnet6: family.v6().then(|| {
            let prefix = Ipv6Addr::new(0xfd00, 0, u16::from(octet), 0, 0, 0, 0, 0);
            Ipv6Net::new(prefix, 64).expect("a /64")
        }),
        gateway6: family
            .v6()
            .then_some(Ipv6Addr::new(0xfd00, 0, u16::from(octet), 0, 0, 0, 0, 1)),
        mtu: 1500,
        internal: false,
        dns: false,
        vxlan_id: None,
    }
}

/// Endpoint `i` of the run, in namespace `ns`: network `i % 4`, a unique address of each family
/// there.
fn endpoint(i: usize, ns: &str, family: Family) -> EndpointState {
    let j = i % NETWORKS;
    let k = i / NETWORKS;
    let address = Ipv4Addr::new(10, 60 + j as u8, (k / 200) as u8, (k % 200 + 2) as u8);
    let address6 = Ipv6Addr::new(0xfd00, 0, 60 + j as u16, 0, 0, 0, 0, k as u16 + 2);
    let o = address.octets();
    EndpointState {
        id: format!("bench/e{i}"),
        uid: format!("uid-bench-e{i}"),
        name: format!("e{i}"),
        aliases: vec![],
        netns: Netns::Named(ns.to_owned()),
        attachment: Attachment::Bridge(BridgeAttachment {
            network: format!("bench{j}"),
            interface: "eth0".into(),
            address: family.v4().then_some(address),
            address6: family.v6().then_some(address6),
            mac: format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3]),
            default_route: true,
        }),
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// One node of a given size for the Pier measurements: its own host namespace and containers.
struct PierWorld {
    size: usize,
    family: Family,
    _host: Namespaces,
    _containers: Namespaces,
    dataplane: Dataplane,
    state: NodeState,
    bigger: NodeState,
    extra: String,
    attach: Vec<f64>,
    detach: Vec<f64>,
    full: Vec<f64>,
}

/// One node of a given size for netavark: its host namespace (with netavark's own bridges and
/// iptables rules) and containers; the setup and teardown samples of the extra container.
struct NetavarkWorld {
    host: Namespaces,
    containers: Namespaces,
    setup: Vec<f64>,
    teardown: Vec<f64>,
}

/// What one size of one family measured, for the table and the JSON.
struct SizeResult {
    size: usize,
    family: Family,
    /// Per repetition: this family's attach / the first family's at the same size.
    attach_vs_first: Stats,
    attach: Stats,
    detach: Stats,
    full: Stats,
    netavark: Option<(Stats, Stats)>,
    /// Per repetition: netavark setup / Pier attach, netavark teardown / Pier detach.
    ratios: Option<(Stats, Stats)>,
}

/// Builds one Pier node per family and size, all grown first.
fn pier_worlds(pid: u32, families: &[Family], sizes: &[usize]) -> Vec<PierWorld> {
    let mut worlds = Vec::new();
    for &family in families {
        for &size in sizes {
            worlds.push(pier_world(pid, family, size));
        }
    }
    worlds
}

fn pier_world(pid: u32, family: Family, size: usize) -> PierWorld {
    let tag = family.name();
    let host = Namespaces::new(&format!("pb{pid}-h{tag}{size}"), 1);
    let containers = Namespaces::new(&format!("pb{pid}-c{tag}{size}"), size + 1);
    let dataplane = Dataplane::new(Some(host.path(0)));
    let state = NodeState {
        networks: (0..NETWORKS).map(|j| network(j, family)).collect(),
        endpoints: (0..size)
            .map(|i| endpoint(i, &containers.names[i], family))
            .collect(),
        ..NodeState::default()
    };
    let report = dataplane.apply(&state, &Scope::Full).expect("grow apply");
    assert!(report.is_success(), "growing to {size} ({tag}): {report}");
    let extra = endpoint(size, &containers.names[size], family);
    let mut bigger = state.clone();
    bigger.endpoints.push(extra.clone());
    PierWorld {
        size,
        family,
        _host: host,
        _containers: containers,
        dataplane,
        state,
        bigger,
        extra: extra.id,
        attach: Vec::new(),
        detach: Vec::new(),
        full: Vec::new(),
    }
}

/// One Pier repetition at one size: an apply in the endpoints scope of one more endpoint (the
/// attach path), then an apply in the removal scope of its veth and its bridge with the state without it (detach: what the node
/// agent runs when an Endpoint goes; the bridge stays, others use it),
/// then a full `apply` of the same addition (the start-up/periodic reconcile), removed again
/// untimed.
fn pier_repetition(world: &mut PierWorld) {
    let attach = Scope::endpoints([world.extra.as_str()]);
    let start = Instant::now();
    let report = world
        .dataplane
        .apply(&world.bigger, &attach)
        .expect("apply (endpoints scope)");
    world.attach.push(ms(start.elapsed()));
    assert!(report.is_success(), "{report}");
    let removed = world
        .bigger
        .endpoints
        .iter()
        .find(|e| e.id == world.extra)
        .map(|e| {
            let bridge = e.network().and_then(|network| {
                world
                    .bigger
                    .networks
                    .iter()
                    .find(|n| n.name == network)
                    .map(|n| n.bridge_name())
            });
            [Some(e.host_veth_name()), bridge]
        })
        .expect("the extra endpoint");
    let detach = Scope::removal(removed.into_iter().flatten());
    let start = Instant::now();
    let report = world
        .dataplane
        .apply(&world.state, &detach)
        .expect("detach (removal scope)");
    world.detach.push(ms(start.elapsed()));
    assert!(report.is_success(), "{report}");
    let start = Instant::now();
    let report = world
        .dataplane
        .apply(&world.bigger, &Scope::Full)
        .expect("apply");
    world.full.push(ms(start.elapsed()));
    assert!(report.is_success(), "{report}");
    let report = world
        .dataplane
        .apply(&world.state, &Scope::Full)
        .expect("shrink apply");
    assert!(report.is_success(), "{report}");
}

/// Pier (one node per family and size) and, when installed, netavark (one node per size, with
/// the first family): all grown first; then the repetitions go round the sizes and families,
/// netavark right after the first family's Pier at each size, so whatever load the machine has
/// hits every size and family alike, and ratios are taken per pair.
fn bench(
    pid: u32,
    netavark_binary: Option<&str>,
    families: &[Family],
    sizes: &[usize],
    reps: usize,
) -> Vec<SizeResult> {
    let mut worlds = pier_worlds(pid, families, sizes);
    let first = families[0];
    let mut peers: Option<Vec<NetavarkWorld>> =
        netavark_binary.map(|binary| netavark_worlds(pid, binary, first, sizes));
    for _ in 0..reps {
        for (i, world) in worlds.iter_mut().enumerate() {
            pier_repetition(world);
            if let (Some(binary), Some(peers)) = (netavark_binary, peers.as_mut())
                && world.family == first
            {
                netavark_repetition(binary, first, world.size, &mut peers[i]);
            }
        }
    }
    let per_pair =
        |theirs: &[f64], ours: &[f64]| stats(theirs.iter().zip(ours).map(|(t, o)| t / o).collect());
    let mut results = Vec::new();
    for (i, world) in worlds.iter().enumerate() {
        let _ = world.dataplane.reset();
        let peer = peers
            .as_ref()
            .and_then(|p| p.get(i))
            .filter(|_| world.family == first);
        let ratios = peer.map(|p| {
            (
                per_pair(&p.setup, &world.attach),
                per_pair(&p.teardown, &world.detach),
            )
        });
        let first_world = &worlds[i % sizes.len()];
        let result = SizeResult {
            size: world.size,
            family: world.family,
            attach_vs_first: per_pair(&world.attach, &first_world.attach),
            attach: stats(world.attach.clone()),
            detach: stats(world.detach.clone()),
            full: stats(world.full.clone()),
            netavark: peer.map(|p| (stats(p.setup.clone()), stats(p.teardown.clone()))),
            ratios,
        };
        log_result(&result);
        results.push(result);
    }
    results
}

fn log_result(result: &SizeResult) {
    let (a, d, f) = (&result.attach, &result.detach, &result.full);
    eprintln!(
        "pier     N={:5} {}: attach median {:.2} ms (min {:.2}, max {:.2}); detach median {:.2} ms (min {:.2}, max {:.2}); full apply median {:.2} ms (min {:.2}, max {:.2})",
        result.size,
        result.family.name(),
        a.median,
        a.min,
        a.max,
        d.median,
        d.min,
        d.max,
        f.median,
        f.min,
        f.max
    );
    if let Some((s, t)) = &result.netavark {
        eprintln!(
            "netavark N={:5}: setup median {:.2} ms (min {:.2}, max {:.2}); teardown median {:.2} ms (min {:.2}, max {:.2})",
            result.size, s.median, s.min, s.max, t.median, t.min, t.max
        );
    }
}

/// netavark's options for container `i` in namespace `ns`, with the families of `family`.
fn netavark_options(i: usize, ns: &str, family: Family) -> String {
    let j = i % NETWORKS;
    let k = i / NETWORKS;
    let octet = 80 + j;
    let mut static_ips = Vec::new();
    let mut subnets = Vec::new();
    if family.v4() {
        let address = Ipv4Addr::new(10, octet as u8, (k / 200) as u8, (k % 200 + 2) as u8);
        static_ips.push(address.to_string());
        subnets.push(serde_json::json!({
            "gateway": format!("10.{octet}.0.1"), "subnet": format!("10.{octet}.0.0/16")
        }));
    }
    if family.v6() {
        static_ips.push(format!("fd00:0:{octet}::{:x}", k + 2));
        subnets.push(serde_json::json!({
            "gateway": format!("fd00:0:{octet}::1"), "subnet": format!("fd00:0:{octet}::/64")
        }));
    }
    serde_json::json!({
        "container_id": format!("{:064x}", i + 1),
        "container_name": ns,
        "networks": {format!("nv{j}"): {"interface_name": "eth0", "static_ips": static_ips}},
        "network_info": {format!("nv{j}"): {
            "dns_enabled": false, "driver": "bridge", "id": format!("{:064x}", 0xbe00 + j),
            "internal": false, "ipv6_enabled": family.v6(), "name": format!("nv{j}"),
            "network_interface": format!("nvbr{j}"),
            "subnets": subnets
        }},
        "port_mappings": []
    })
    .to_string()
}

/// Runs `netavark setup|teardown` inside the host namespace; returns the time it took.
fn netavark(binary: &str, host: &Path, verb: &str, ns: &Path, options: String) -> Duration {
    let binary = binary.to_owned();
    let verb = verb.to_owned();
    let ns = ns.to_path_buf();
    // netavark's state directory, one per host namespace.
    let config = std::env::temp_dir().join(format!(
        "pier-bench-netavark-{}",
        host.file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    ));
    netns::run_in(Some(host), move || {
        // A child forked on this thread starts in the thread's namespace.
        let start = Instant::now();
        let mut child = Command::new(&binary)
            .arg("--config")
            .arg(&config)
            .arg(&verb)
            .arg(&ns)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn netavark");
        child
            .stdin
            .take()
            .expect("netavark stdin")
            .write_all(options.as_bytes())
            .expect("write netavark options");
        let output = child.wait_with_output().expect("netavark runs");
        let took = start.elapsed();
        assert!(
            output.status.success(),
            "netavark {verb}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        took
    })
    .expect("namespace thread")
}

/// netavark: one node per size as for Pier (with `family`), grown first.
fn netavark_worlds(pid: u32, binary: &str, family: Family, sizes: &[usize]) -> Vec<NetavarkWorld> {
    sizes
        .iter()
        .map(|&size| {
            let host = Namespaces::new(&format!("pb{pid}-nvh{size}"), 1);
            let containers = Namespaces::new(&format!("pb{pid}-nv{size}"), size + 1);
            for i in 0..size {
                netavark(
                    binary,
                    &host.path(0),
                    "setup",
                    &containers.path(i),
                    netavark_options(i, &containers.names[i], family),
                );
            }
            NetavarkWorld {
                host,
                containers,
                setup: Vec::new(),
                teardown: Vec::new(),
            }
        })
        .collect()
}

/// One netavark repetition at one size: `setup` of one more container, then its `teardown`.
fn netavark_repetition(binary: &str, family: Family, size: usize, world: &mut NetavarkWorld) {
    let options = netavark_options(size, &world.containers.names[size], family);
    let host = world.host.path(0);
    let container = world.containers.path(size);
    world.setup.push(ms(netavark(
        binary,
        &host,
        "setup",
        &container,
        options.clone(),
    )));
    world
        .teardown
        .push(ms(netavark(binary, &host, "teardown", &container, options)));
}

/// Alternating iperf3 runs per path: one 5 s run varies by +-30% on a shared machine, so the
/// paths take turns and each reports its median.
const IPERF_ROUNDS: usize = 3;

/// iperf3 throughput of both paths: each run's Gbit/s, in the order they ran.
struct Iperf {
    direct: Vec<f64>,
    published: Vec<f64>,
}

fn median_of(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// iperf3 from the host namespace to an endpoint: directly to its address, and through a
/// published port on the host's own address (DNAT in the output hook), [`IPERF_ROUNDS`] times
/// each, alternating. Gbit/s.
fn bench_iperf(pid: u32) -> Option<Iperf> {
    let host = Namespaces::new(&format!("pb{pid}-iphost"), 1);
    let containers = Namespaces::new(&format!("pb{pid}-ip"), 1);
    let dataplane = Dataplane::new(Some(host.path(0)));
    let ep = endpoint(0, &containers.names[0], Family::Ipv4);
    let Attachment::Bridge(bridge) = &ep.attachment else {
        return None;
    };
    let address = bridge.address?;
    let state = NodeState {
        networks: vec![network(0, Family::Ipv4)],
        ports: vec![PublishedPort {
            id: "bench/iperf".into(),
            endpoint: ep.id.clone(),
            host_ip: Ipv4Addr::UNSPECIFIED.into(),
            host_port: 15201,
            protocol: Protocol::Tcp,
            endpoint_address: address.into(),
            container_port: 5201,
        }],
        endpoints: vec![ep],
        ..NodeState::default()
    };
    let report = dataplane.apply(&state, &Scope::Full).expect("apply");
    assert!(report.is_success(), "{report}");
    let in_ns = |ns: &str, script: &str| {
        Command::new("ip")
            .args(["netns", "exec", ns, "sh", "-c", script])
            .output()
            .expect("ip netns exec")
    };
    in_ns(
        &host.names[0],
        "ip link set lo up; ip link add pbdummy type bridge; ip addr add 192.0.2.1/24 dev pbdummy; ip link set pbdummy up",
    );
    let mut server = Command::new("ip")
        .args(["netns", "exec", &containers.names[0], "iperf3", "-s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    std::thread::sleep(Duration::from_millis(500));
    let run = |target: &str, port: u16| -> Option<f64> {
        let output = in_ns(
            &host.names[0],
            &format!("iperf3 -J -t 5 -c {target} -p {port}"),
        );
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
        json["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .map(|b| b / 1e9)
    };
    let mut rounds = Vec::new();
    for _ in 0..IPERF_ROUNDS {
        rounds.push((run(&address.to_string(), 5201), run("192.0.2.1", 15201)));
    }
    let _ = server.kill();
    let _ = server.wait();
    let _ = dataplane.reset();
    let mut iperf = Iperf {
        direct: Vec::new(),
        published: Vec::new(),
    };
    for (direct, published) in rounds {
        iperf.direct.push(direct?);
        iperf.published.push(published?);
    }
    Some(iperf)
}

/// The results as a Markdown table (a family column when there are several families).
fn print_table(results: &[SizeResult], reps: usize, several: bool) {
    let fmt = |s: &Stats| format!("{:.2} / {:.2} / {:.2}", s.median, s.min, s.max);
    println!(
        "| endpoints on the node | Pier attach (`apply`, endpoints scope) | Pier detach (`apply`, removal scope) | Pier full `apply` incl. the new endpoint | netavark setup | netavark teardown | setup ratio per pair | teardown ratio per pair |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in results {
        let (setup, teardown) = r.netavark.as_ref().map_or_else(
            || ("not installed".to_owned(), "not installed".to_owned()),
            |(s, t)| (fmt(s), fmt(t)),
        );
        let (rs, rt) = r.ratios.as_ref().map_or_else(
            || ("-".to_owned(), "-".to_owned()),
            |(s, t)| (format!("{:.1}x", s.median), format!("{:.1}x", t.median)),
        );
        let size = if several {
            format!("{} ({})", r.size, r.family.name())
        } else {
            r.size.to_string()
        };
        println!(
            "| {size} | {} | {} | {} | {setup} | {teardown} | {rs} | {rt} |",
            fmt(&r.attach),
            fmt(&r.detach),
            fmt(&r.full)
        );
    }
    println!(
        "\n(median / min / max in ms over {reps} repetitions; ratios: median of netavark / Pier per repetition)"
    );
}

/// Each later family's attach time against the first family's, per size (several families).
fn print_family_ratios(results: &[SizeResult], first: Family) {
    for r in results.iter().filter(|r| r.family != first) {
        let ratio = &r.attach_vs_first;
        println!(
            "Pier attach, {} / {} at N={}: median {:.2}x per pair (min {:.2}x, max {:.2}x); medians {:.2} ms / {:.2} ms",
            r.family.name(),
            first.name(),
            r.size,
            ratio.median,
            ratio.min,
            ratio.max,
            r.attach.median,
            results
                .iter()
                .find(|f| f.family == first && f.size == r.size)
                .map_or(f64::NAN, |f| f.attach.median)
        );
    }
}

/// iperf3 through a published port, printed; its figures for the JSON.
fn run_iperf(pid: u32) -> serde_json::Value {
    match bench_iperf(pid) {
        Some(runs) => {
            let (direct, published) = (median_of(&runs.direct), median_of(&runs.published));
            println!(
                "\niperf3 host -> endpoint, 5 s TCP, median of {IPERF_ROUNDS} alternating runs: direct {direct:.2} Gbit/s {:?}, through published port {published:.2} Gbit/s {:?} ({:.0}%)",
                runs.direct,
                runs.published,
                published / direct * 100.0
            );
            serde_json::json!({
                "direct_gbps": direct,
                "published_gbps": published,
                "direct_runs_gbps": runs.direct,
                "published_runs_gbps": runs.published,
            })
        }
        None => {
            println!("\niperf3: not run (iperf3 missing or failed)");
            serde_json::Value::Null
        }
    }
}

fn json_row(r: &SizeResult) -> serde_json::Value {
    serde_json::json!({
        "endpoints": r.size,
        "family": r.family.name(),
        "pier_attach_ms": r.attach,
        "pier_detach_ms": r.detach,
        "pier_full_apply_ms": r.full,
        "attach_ratio_to_first_family_per_pair": r.attach_vs_first,
        "netavark_setup_ms": r.netavark.as_ref().map(|(s, _)| s),
        "netavark_teardown_ms": r.netavark.as_ref().map(|(_, t)| t),
        "setup_ratio_per_pair": r.ratios.as_ref().map(|(s, _)| s),
        "teardown_ratio_per_pair": r.ratios.as_ref().map(|(_, t)| t),
    })
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported here.
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the attach benchmark needs root (network namespaces)"
    );
    let sizes: Vec<usize> = env_or("PIER_BENCH_SIZES", "10,100,1000")
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let reps: usize = env_or("PIER_BENCH_REPS", "15").parse().unwrap_or(15);
    let families: Vec<Family> = env_or("PIER_BENCH_FAMILIES", "ipv4")
        .split(',')
        .map(|text| {
            Family::parse(text).unwrap_or_else(|| {
                panic!("PIER_BENCH_FAMILIES: {text:?} is not ipv4, dual or ipv6")
            })
        })
        .collect();
    let netavark_binary = env_or("PIER_BENCH_NETAVARK", "/usr/lib/podman/netavark");
    let pid = std::process::id();

    let netavark = Path::new(&netavark_binary)
        .exists()
        .then_some(netavark_binary.as_str());
    let results = bench(pid, netavark, &families, &sizes, reps);
    print_table(&results, reps, families.len() > 1);
    let first: Vec<&SizeResult> = results.iter().filter(|r| r.family == families[0]).collect();
    if let (Some(smallest), Some(largest)) = (first.first(), first.last()) {
        println!(
            "Pier attach median, largest/smallest size: {:.2}x",
            largest.attach.median / smallest.attach.median
        );
    }
    if families.len() > 1 {
        print_family_ratios(&results, families[0]);
    }
    let iperf = if env_or("PIER_BENCH_IPERF", "1") == "1" {
        run_iperf(pid)
    } else {
        serde_json::Value::Null
    };
    write_json(&serde_json::json!({
        "bench": "attach",
        "repetitions": reps,
        "interleaved": true,
        "families": families.iter().map(|f| f.name()).collect::<Vec<_>>(),
        "sizes": results.iter().map(json_row).collect::<Vec<_>>(),
        "iperf3": iperf,
    }));
}
