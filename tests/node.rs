//! `pier node`, the per-node agent as the chart's DaemonSet runs it, as a second node beside
//! `pier up` (system tier, see docs/architecture.md). Needs root, kubectl, iproute2, ping, socat,
//! nsenter and nft.
//!
//! `pier up` is node `node-a` (its kernel work in the fixture's node namespace). Node B is a
//! namespace of its own with the real `pier node` binary in it, configured by the environment
//! the chart gives it; it reaches `pier up`'s API server (on the machine's 127.0.0.1) through a
//! socat bridge: a UNIX socket on the machine, a TCP listener on B's 127.0.0.1 at the same port,
//! so the kubeconfig (and its certificate for 127.0.0.1) work unchanged.
//!
//! `pier node` runs under `nsenter --net`, not `ip netns exec`: the latter also gives the process
//! a mount namespace of its own whose mounts do not propagate back, so the namespaces `pier node`
//! creates under /var/run/netns would not be visible outside it. The chart mounts /var/run/netns
//! with `mountPropagation: Bidirectional`, which is what sharing the machine's mount namespace
//! reproduces.

mod system;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use system::{Pier, sh, sh_ok, wait_for};

/// `pier node`'s admin port inside node B (B's loopback is its own, so a fixed port is safe).
const ADMIN_PORT: u16 = 9091;
/// Metrics every node agent's admin port lists (with DNS on).
const NODE_METRICS: [&str; 5] = [
    "pier_node_attach_duration_seconds_bucket",
    "pier_node_detach_duration_seconds_count",
    "pier_node_kernel_errors_total",
    "pier_node_dns_queries_total{rcode=\"NOERROR\"}",
    "pier_node_objects{",
];

/// The attaches timed so far, from a `/metrics` response (0 when not listed).
fn attach_count(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("pier_node_attach_duration_seconds_count "))
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or(0)
}

/// Node B's name, as Endpoints' `target.netns.node` and `status.node` name it.
const NODE_B: &str = "node-b";
/// The fixture's `pier up --node-name`.
const NODE_A: &str = "node-a";

/// A second node: a network namespace with `pier node` in it. Dropping it kills every process it
/// started (by process group) and deletes its namespace and the named namespaces it lists, also
/// when the test fails.
struct SecondNode {
    netns: String,
    dir: tempfile::TempDir,
    /// `pier node` (a process group of its own).
    agent: Option<Child>,
    /// The socat processes of the API bridge (each a process group of its own).
    bridge: Vec<Child>,
    /// Named namespaces the test targets on this node.
    containers: Vec<String>,
}

impl SecondNode {
    /// A fresh namespace `nd-TAG-b-PID` with `lo` up.
    fn create(tag: &str, containers: &[&str]) -> SecondNode {
        let netns = format!("nd-{tag}-b-{}", std::process::id());
        let _ = sh(&format!("ip netns del {netns} 2>/dev/null"));
        for name in containers {
            let _ = sh(&format!(
                "ip netns del {name} 2>/dev/null; rm -rf /etc/netns/{name}"
            ));
        }
        sh_ok(&format!(
            "ip netns add {netns} && ip netns exec {netns} ip link set lo up"
        ));
        SecondNode {
            netns,
            dir: tempfile::tempdir().expect("node B's directory"),
            agent: None,
            bridge: Vec::new(),
            containers: containers.iter().map(|c| (*c).to_owned()).collect(),
        }
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("pier-node.log")
    }

    /// `pier node`'s output so far.
    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts `pier node` in the namespace, configured as the chart's DaemonSet configures it
    /// (`netns_targets`: the chart's `node.netnsTargets`).
    fn start_agent(&mut self, kubeconfig: &Path, netns_targets: bool) {
        let log = std::fs::File::create(self.log_path()).expect("log file");
        let child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", self.netns))
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_pier"))
            .arg("node")
            .env("NODE_NAME", NODE_B)
            .env("KUBECONFIG", kubeconfig)
            .env("PIER_STATE_DIR", self.state_dir())
            .env("PIER_ADMIN_ADDR", format!("127.0.0.1:{ADMIN_PORT}"))
            .env("PIER_DNS_PORT", "53")
            .env("PIER_RESYNC_SECONDS", "2")
            .env("PIER_NETNS_TARGETS", netns_targets.to_string())
            .env("RUST_LOG", "info,hickory_server=warn")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("pier node starts");
        self.agent = Some(child);
    }

    /// Bridges the machine's 127.0.0.1:`port` to B's 127.0.0.1:`port`.
    fn bridge_api(&mut self, port: u16) {
        let socket = self.dir.path().join("api.sock");
        let outside = Command::new("socat")
            .arg(format!("UNIX-LISTEN:{},fork", socket.display()))
            .arg(format!("TCP:127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("socat starts on the machine");
        self.bridge.push(outside);
        wait_for("the API bridge's socket", Duration::from_secs(10), || {
            socket.exists().then_some(())
        });
        let inside = Command::new("ip")
            .args(["netns", "exec", &self.netns, "socat"])
            .arg(format!("TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr"))
            .arg(format!("UNIX-CONNECT:{}", socket.display()))
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("socat starts in node B");
        self.bridge.push(inside);
    }

    /// `sh -c script` in node B's namespace (not `on_node`'s quoting: the script is one argument).
    fn on_node(&self, script: &str) -> Output {
        in_netns(&self.netns, script)
    }

    /// The status line of `GET path` on the admin port, from inside B ("" when nothing answers).
    fn probe(&self, path: &str) -> String {
        self.admin_get(path)
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned()
    }

    /// The whole response to `GET path` on the admin port, from inside B. `-t5`: after sending
    /// the request socat waits up to 5 s for the answer (its default, 0.5 s, can cut a reply off
    /// on a loaded machine and read as an empty response).
    fn admin_get(&self, path: &str) -> String {
        let out = self.on_node(&format!(
            "printf 'GET {path} HTTP/1.1\\r\\nHost: node\\r\\nConnection: close\\r\\n\\r\\n' | socat -T2 -t5 - TCP:127.0.0.1:{ADMIN_PORT},connect-timeout=2"
        ));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The links of B (`ip -br link` lines).
    fn links(&self) -> String {
        String::from_utf8_lossy(&self.on_node("ip -br link").stdout).into_owned()
    }

    /// SIGTERM to `pier node`, as the kubelet stops a Pod; its exit status and how long it took.
    fn terminate(&mut self, timeout: Duration) -> (ExitStatus, Duration) {
        let mut child = self.agent.take().expect("pier node is running");
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid"));
        let start = Instant::now();
        kill(pid, Signal::SIGTERM).expect("SIGTERM to pier node");
        let status = loop {
            if let Some(status) = child.try_wait().expect("waiting for pier node") {
                break status;
            }
            if start.elapsed() > timeout {
                let _ = kill(pid, Signal::SIGKILL);
                let _ = child.wait();
                panic!(
                    "pier node did not exit within {timeout:?} of SIGTERM; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        (status, start.elapsed())
    }
}

impl Drop for SecondNode {
    fn drop(&mut self) {
        for mut child in self.agent.take().into_iter().chain(self.bridge.drain(..)) {
            // Each was started as the leader of its own group: socat's forked children go too.
            if let Ok(pgid) = i32::try_from(child.id()) {
                let _ = kill(Pid::from_raw(-pgid), Signal::SIGKILL);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = sh(&format!("ip netns del {}", self.netns));
        for name in &self.containers {
            let _ = sh(&format!(
                "ip netns del {name} 2>/dev/null; rm -rf /etc/netns/{name}"
            ));
        }
        if std::thread::panicking() {
            eprintln!("--- pier node log ({}) ---\n{}", self.netns, self.log());
        }
    }
}

/// `ip netns exec NETNS sh -c script`.
fn in_netns(netns: &str, script: &str) -> Output {
    Command::new("ip")
        .args(["netns", "exec", netns, "sh", "-c", script])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script:?} in {netns}: {e}"))
}

fn ping(netns: &str, to: &str) -> bool {
    in_netns(netns, &format!("ping -c1 -W1 {to}"))
        .status
        .success()
}

/// The names of the links whose master is `bridge` in `netns` (empty when there is no bridge).
fn bridge_ports(netns: &str, bridge: &str) -> Vec<String> {
    let out = in_netns(netns, &format!("ip -br link show master {bridge}"));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(['@', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// Whether `path` is a network namespace (a bind mount of nsfs, as `ip netns add` makes).
fn is_netns(path: &str) -> bool {
    let out = sh(&format!("stat -f -c %T {path}"));
    out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "nsfs"
}

/// The port of `pier up`'s API server, from its kubeconfig.
fn api_port(pier: &Pier) -> u16 {
    let server = pier.kubectl_ok("config view -o 'jsonpath={.clusters[0].cluster.server}'");
    server
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("a port in the kubeconfig's server {server:?}"))
}

/// Registers node B as its kubelet would (the operator relies on the Node object).
fn register_node_b(pier: &Pier) {
    pier.apply(&format!(
        r#"
apiVersion: v1
kind: Node
metadata:
  name: {NODE_B}
  labels: {{kubernetes.io/hostname: {NODE_B}, kubernetes.io/os: linux}}
"#
    ));
}

/// In a cluster, `pier node` serves netns targets only when the chart enables them: an Endpoint
/// naming a netns on node B is refused with a reason that says how, and an Event; no namespace,
/// bridge or veth is made for it.
#[test]
fn pier_node_refuses_netns_targets_unless_enabled() {
    assert!(
        sh("command -v nsenter").status.success(),
        "this test needs `nsenter` (util-linux)"
    );
    let z = format!("nd-z-{}", std::process::id());
    let pier = Pier::up("nd-off", &[]);
    let mut node = SecondNode::create("off", &[&z]);
    register_node_b(&pier);
    node.start_agent(&pier.kubeconfig, false);
    node.bridge_api(api_port(&pier));
    wait_for("pier node's /readyz", Duration::from_secs(60), || {
        (node.probe("/readyz") == "HTTP/1.1 200 OK").then_some(())
    });
    pier.apply(&format!(
        r#"
apiVersion: pier.dev/v1alpha1
kind: Network
metadata: {{name: nd-off}}
spec: {{}}
---
apiVersion: pier.dev/v1alpha1
kind: Endpoint
metadata: {{name: nd-z}}
spec: {{network: nd-off, target: {{netns: {{name: {z}, node: {NODE_B}}}}}}}
"#
    ));
    assert_eq!(
        pier.wait_condition("pep nd-z", "Attached", "False"),
        "NetnsTargetsDisabled"
    );
    let message = pier.jsonpath(
        "pep nd-z",
        "{.status.conditions[?(@.type==\"Attached\")].message}",
    );
    assert!(message.contains("node.netnsTargets=true"), "{message}");
    let events = wait_for("the refusal's Event", Duration::from_secs(10), || {
        let events = pier.kubectl_ok("get events -o jsonpath='{.items[*].reason}'");
        events.contains("NetnsTargetsDisabled").then_some(events)
    });
    assert!(!events.is_empty());
    assert!(
        !Path::new(&format!("/var/run/netns/{z}")).exists(),
        "no namespace was made for it"
    );
    let links = node.links();
    assert!(
        !links.contains("pier-") && !links.contains("pv"),
        "nothing of it on node B:\n{links}"
    );
}

/// A second node: `pier node` in a namespace of its own attaches the Endpoints that name it,
/// beside `pier up`'s agent for node-a, and each agent touches only its own node's objects;
/// /readyz follows the first full reconcile; deleting B's Endpoint removes its veth, bridge and
/// the namespace `pier node` created; SIGTERM stops `pier node` cleanly.
#[test]
fn second_node_runs_pier_node_beside_pier_up() {
    for tool in ["nsenter", "stat"] {
        assert!(
            sh(&format!("command -v {tool}")).status.success(),
            "this test needs `{tool}` (util-linux, coreutils)"
        );
    }
    let pid = std::process::id();
    let x = format!("nd-x-{pid}");
    let y = format!("nd-y-{pid}");
    let pier = Pier::up("nd-two", &[&x]);
    let mut node = SecondNode::create("two", &[&y]);
    // The kubelet of a real node registers its Node; the operator relies on it (an object whose
    // node is gone loses the node finalizer to the operator, as the agent will never remove it).
    register_node_b(&pier);

    // pier node starts before its API bridge exists: alive, but not ready.
    node.start_agent(&pier.kubeconfig, true);
    let livez = wait_for("pier node's admin port", Duration::from_secs(30), || {
        let line = node.probe("/livez");
        (!line.is_empty()).then_some(line)
    });
    assert_eq!(
        livez, "HTTP/1.1 200 OK",
        "/livez answers while the API is unreachable"
    );
    assert_eq!(
        node.probe("/readyz"),
        "HTTP/1.1 503 Service Unavailable",
        "/readyz before any full reconcile (the API is unreachable)"
    );

    node.bridge_api(api_port(&pier));
    wait_for("pier node's /readyz", Duration::from_secs(60), || {
        (node.probe("/readyz") == "HTTP/1.1 200 OK").then_some(())
    });
    assert_eq!(node.probe("/livez"), "HTTP/1.1 200 OK");
    assert!(
        !node.links().contains("pier-") && !node.links().contains("pv"),
        "an empty node B has no Pier links:\n{}",
        node.links()
    );

    pier.apply(&format!(
        r#"
apiVersion: pier.dev/v1alpha1
kind: Network
metadata: {{name: nd-net}}
spec: {{}}
---
apiVersion: pier.dev/v1alpha1
kind: Endpoint
metadata: {{name: nd-x}}
spec: {{network: nd-net, target: {{netns: {{name: {x}, node: {NODE_A}}}}}}}
---
apiVersion: pier.dev/v1alpha1
kind: Endpoint
metadata: {{name: nd-y}}
spec: {{network: nd-net, target: {{netns: {{name: {y}, node: {NODE_B}}}}}}}
"#
    ));
    pier.wait_condition("pep nd-x", "Attached", "True");
    pier.wait_condition("pep nd-y", "Attached", "True");
    assert_eq!(pier.jsonpath("pep nd-x", "{.status.node}"), NODE_A);
    assert_eq!(pier.jsonpath("pep nd-y", "{.status.node}"), NODE_B);
    let listing = pier.kubectl_ok("get pep nd-x nd-y");
    for (name, node_name) in [("nd-x", NODE_A), ("nd-y", NODE_B)] {
        assert!(
            listing
                .lines()
                .any(|l| l.starts_with(name) && l.contains(node_name) && l.contains("True")),
            "kubectl get pep shows {name} attached on {node_name}:\n{listing}"
        );
    }
    // Both admin ports list the node's metrics: B's attach was timed, the objects by condition
    // come with B's next full reconcile; `pier up`'s lists the operator's beside node A's.
    let metrics = wait_for("node B's objects gauge", Duration::from_secs(20), || {
        let metrics = node.admin_get("/metrics");
        metrics
            .contains(r#"pier_node_objects{kind="Endpoint",condition="Attached",status="True"} 1"#)
            .then_some(metrics)
    });
    assert!(metrics.starts_with("HTTP/1.1 200 OK"), "{metrics}");
    assert!(
        attach_count(&metrics) >= 1,
        "B timed its attach:\n{metrics}"
    );
    for name in NODE_METRICS {
        assert!(
            metrics.contains(name),
            "B's /metrics lists {name}:\n{metrics}"
        );
    }
    let up_metrics = pier.admin_get("/metrics");
    assert!(up_metrics.starts_with("HTTP/1.1 200 OK"), "{up_metrics}");
    assert!(
        attach_count(&up_metrics) >= 1,
        "A timed its attach:\n{up_metrics}"
    );
    for name in NODE_METRICS
        .iter()
        .chain(&["pier_operator_reconciles_total"])
    {
        assert!(
            up_metrics.contains(name),
            "pier up's /metrics lists {name}:\n{up_metrics}"
        );
    }
    assert!(pier.admin_get("/livez").starts_with("HTTP/1.1 200 OK"));
    assert!(pier.admin_get("/readyz").starts_with("HTTP/1.1 200 OK"));

    let finalizers = pier.jsonpath("pep nd-y", "{.metadata.finalizers}");
    assert!(
        finalizers.contains("pier.dev/node"),
        "node B's agent holds its Endpoint with the node finalizer: {finalizers}"
    );

    let x_address = pier.jsonpath("pep nd-x", "{.status.ipv4Address}");
    let y_address = pier.jsonpath("pep nd-y", "{.status.ipv4Address}");
    let gateway = pier.jsonpath("pnet nd-net", "{.status.gateway}");
    let bridge = pier.jsonpath("pnet nd-net", "{.status.bridge}");
    assert!(bridge.starts_with("pier-"), "{bridge}");
    assert_ne!(x_address, y_address, "IPAM is cluster-wide");
    let veth = |endpoint: &str| {
        let uid = pier.jsonpath(&format!("pep {endpoint}"), "{.metadata.uid}");
        assert!(!uid.is_empty(), "{endpoint} has a uid");
        pier_node::state::host_veth_name(&uid)
    };
    let (x_veth, y_veth) = (veth("nd-x"), veth("nd-y"));

    // Each node's kernel has its own endpoint's veth on its own bridge, and nothing of the other's;
    // the machine's own namespace has neither.
    assert_eq!(
        bridge_ports(&pier.node_netns, &bridge),
        vec![x_veth.clone()],
        "node A's bridge holds X's veth only:\n{}",
        pier.node_links()
    );
    assert_eq!(
        bridge_ports(&node.netns, &bridge),
        vec![y_veth.clone()],
        "node B's bridge holds Y's veth only:\n{}",
        node.links()
    );
    assert!(
        !pier.node_links().contains(&y_veth),
        "{}",
        pier.node_links()
    );
    assert!(!node.links().contains(&x_veth), "{}", node.links());
    for name in [&x_veth, &y_veth] {
        assert!(
            !sh(&format!("ip link show {name}")).status.success(),
            "{name} is not in the machine's own namespace"
        );
    }

    // Traffic: each node reaches its own endpoint; bridge networks are node-scoped (Docker).
    assert!(
        is_netns(&format!("/var/run/netns/{x}")),
        "node A created {x}"
    );
    assert!(
        is_netns(&format!("/var/run/netns/{y}")),
        "node B's pier node created {y}, visible on the machine"
    );
    assert!(
        ping(&node.netns, &y_address),
        "node B reaches Y at {y_address}"
    );
    assert!(ping(&y, &gateway), "Y reaches node B's gateway {gateway}");
    assert!(
        ping(&pier.node_netns, &x_address),
        "node A reaches X at {x_address}"
    );
    assert!(
        !ping(&pier.node_netns, &y_address),
        "node A does not reach B's endpoint"
    );
    assert!(
        !ping(&node.netns, &x_address),
        "node B does not reach A's endpoint"
    );
    let y_links = String::from_utf8_lossy(&in_netns(&y, "ip -4 -br addr").stdout).into_owned();
    assert!(
        y_links
            .lines()
            .any(|l| l.starts_with("eth0") && l.contains(&format!(" {y_address}/"))),
        "Y has its address on eth0:\n{y_links}"
    );
    // pier node's embedded DNS (PIER_DNS_PORT=53) on B's gateway answers Y's own name.
    let resolv = std::fs::read_to_string(format!("/etc/netns/{y}/resolv.conf"))
        .unwrap_or_else(|e| panic!("/etc/netns/{y}/resolv.conf: {e}"));
    assert!(
        resolv.contains(&format!("nameserver {gateway}")),
        "{resolv}"
    );
    wait_for(
        "Y to resolve and ping nd-y",
        Duration::from_secs(10),
        || ping(&y, "nd-y").then_some(()),
    );

    // Who created what: each agent's markers name only its own namespaces.
    let markers = |dir: &Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.join("netns"))
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    };
    assert_eq!(markers(&pier.data_dir.join("node")), vec![x.clone()]);
    assert_eq!(markers(&node.state_dir()), vec![y.clone()]);

    // Several resyncs of both agents (2 s each) later, nothing of B's has been touched.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(bridge_ports(&node.netns, &bridge), vec![y_veth.clone()]);
    assert_eq!(
        bridge_ports(&pier.node_netns, &bridge),
        vec![x_veth.clone()]
    );
    assert_eq!(pier.condition("pep nd-y", "Attached").0, "True");
    assert_eq!(pier.condition("pep nd-x", "Attached").0, "True");
    assert!(ping(&node.netns, &y_address), "node B still reaches Y");
    assert!(is_netns(&format!("/var/run/netns/{y}")));

    // Deleting B's Endpoint: B's agent removes veth, bridge, its namespace and resolv.conf,
    // then its finalizer; A's endpoint is untouched.
    pier.kubectl_ok("delete pep nd-y --timeout=30s");
    // `kubectl delete` returned once the object was gone: node B's agent removes its finalizer
    // only after the kernel objects went.
    assert_eq!(
        pier.kubectl("get pep nd-y").status.code(),
        Some(1),
        "the Endpoint is gone"
    );
    let links = node.links();
    assert!(
        !links.contains("pv") && !links.contains("pier-"),
        "veth and bridge left node B before the Endpoint went:\n{links}"
    );
    assert!(
        !Path::new(&format!("/var/run/netns/{y}")).exists(),
        "the namespace pier node created went before the Endpoint did"
    );
    let up_log = pier.log();
    assert!(
        !up_log.contains("removed the node finalizer"),
        "the operator did not have to remove node B's finalizer:\n{up_log}"
    );
    wait_for("Y's resolv.conf to go", Duration::from_secs(10), || {
        (!Path::new(&format!("/etc/netns/{y}")).exists()).then_some(())
    });
    assert!(markers(&node.state_dir()).is_empty());
    assert_eq!(
        bridge_ports(&pier.node_netns, &bridge),
        vec![x_veth.clone()]
    );
    assert_eq!(pier.condition("pep nd-x", "Attached").0, "True");
    assert!(ping(&pier.node_netns, &x_address), "node A still reaches X");
    assert!(is_netns(&format!("/var/run/netns/{x}")));

    // SIGTERM, as the kubelet stops the DaemonSet's Pod: a clean exit within a few seconds.
    let (status, took) = node.terminate(Duration::from_secs(15));
    let log = node.log();
    assert!(
        status.success(),
        "pier node exited with {status} on SIGTERM:\n{log}"
    );
    assert!(
        took < Duration::from_secs(5),
        "pier node took {took:?} to stop:\n{log}"
    );
    assert!(!log.contains("panicked"), "pier node panicked:\n{log}");
    assert!(
        !log.contains("reconcile failed"),
        "no reconcile of pier node failed:\n{log}"
    );
    assert!(
        log.contains("shutting down"),
        "pier node logged its shutdown:\n{log}"
    );
    // A's endpoint is still attached after B's agent went.
    assert!(ping(&pier.node_netns, &x_address));
}
