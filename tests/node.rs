//! `pier node`, the per-node agent as the chart's DaemonSet runs it, as a second node beside
//! `pier up` (system tier, see docs/architecture.md). Needs root, kubectl, iproute2, ping, socat,
//! nsenter and nft.
//!
//! `pier up` is node `node-a` (its kernel work in the fixture's node namespace). Node B is a
//! namespace of its own with the real `pier node` binary in it, configured by the environment
//! the chart gives it (`system::nodes::PierNode`: how it reaches the API server and why it runs
//! under `nsenter --net`).

mod system;

use std::path::Path;
use std::time::Duration;

use system::nodes::PierNode;
use system::{Pier, in_netns, ping, sh, wait_for};

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
    let mut node = PierNode::create(NODE_B, &format!("nd-off-b-{}", std::process::id()), &[&z]);
    register_node_b(&pier);
    node.start_agent(&pier.kubeconfig, false);
    node.bridge_api(pier.api_port());
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
    let mut node = PierNode::create(NODE_B, &format!("nd-two-b-{}", std::process::id()), &[&y]);
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

    node.bridge_api(pier.api_port());
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
