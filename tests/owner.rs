//! One owner per node namespace: a second `pier up`, a `pier node` or a `pier down` in the
//! namespace a running `pier up` manages refuses, naming the running one, and touches nothing;
//! a lock left by `kill -9` is free again. Needs root, kubectl, iproute2, ping, nsenter and nft.

mod system;

use std::process::{Command, Output};
use std::time::Duration;

use system::{Pier, sh, wait_for};

/// Runs the `pier` binary with `args` (at most 60 s: a refusal is immediate, a start would hang).
fn pier_command(args: &[&str]) -> Output {
    Command::new("timeout")
        .arg("60")
        .arg(env!("CARGO_BIN_EXE_pier"))
        .args(args)
        .env("RUST_LOG", "info,hickory_server=warn")
        .output()
        .expect("pier runs")
}

/// Asserts `out` is a refusal that names `pier up` with `pid` and `data_dir`.
fn assert_refused(what: &str, out: &Output, pid: u32, data_dir: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what} exits with an error, not a timeout (124) or a crash:\n{stdout}{stderr}"
    );
    assert!(
        !stdout.lines().any(|l| l == "ready"),
        "{what} never says ready:\n{stdout}"
    );
    let named = format!("`pier up` (pid {pid}, data directory {data_dir})");
    assert!(
        stderr.contains(&named) && stderr.contains("only one Pier may manage"),
        "{what} names the running one ({named}):\n{stderr}"
    );
}

/// The `eth0` line of `ip -4 -br addr` in namespace `netns` ("" when absent).
fn eth0(netns: &str) -> String {
    let out = sh(&format!("ip netns exec {netns} ip -4 -br addr show eth0"));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn a_second_pier_in_the_same_node_namespace_refuses_until_the_first_is_gone() {
    assert!(
        sh("command -v nsenter").status.success(),
        "this test needs `nsenter` (util-linux)"
    );
    let container = format!("ow-c-{}", std::process::id());
    let mut first = Pier::up("owner", &[&container]);
    first.apply(&format!(
        r#"
apiVersion: pier.dev/v1alpha1
kind: Endpoint
metadata: {{name: web}}
spec: {{target: {{netns: {{name: {container}}}}}}}
"#
    ));
    first.wait_condition("pep web", "Attached", "True");
    let address = first.jsonpath("pep web", "{.status.ipv4Address}");
    let uid = first.jsonpath("pep web", "{.metadata.uid}");
    let veth = pier_node::state::host_veth_name(&uid);
    assert!(eth0(&container).contains(&format!("{address}/")));
    assert!(first.node_links().contains(&veth));

    let pid = first.pid().expect("pier up runs");
    let data_dir = first.data_dir.display().to_string();
    let netns = first.node_netns_path();
    let other = tempfile::tempdir().expect("another data dir");
    let other_dir = other.path().display().to_string();

    // `pier up --data-dir B` in the same node namespace.
    let second = pier_command(&[
        "up",
        "--listen",
        "127.0.0.1:0",
        "--node-name",
        "node-a",
        "--resync-seconds",
        "2",
        "--data-dir",
        &other_dir,
        "--node-netns",
        &netns,
    ]);
    assert_refused("a second pier up", &second, pid, &data_dir);
    assert!(
        !other.path().join("api").exists(),
        "the refused pier up opened no API data"
    );

    // `pier down` while it runs, with its own data directory as a user would type it.
    let down = pier_command(&["down", "--data-dir", &data_dir, "--node-netns", &netns]);
    assert_refused("pier down", &down, pid, &data_dir);
    // `pier dataplane reset` (the dataplane without an API server) would delete its links too.
    let reset = pier_command(&["dataplane", "--netns", &netns, "reset"]);
    assert_refused("pier dataplane reset", &reset, pid, &data_dir);

    // `pier node` (the DaemonSet's command) in the same namespace: the process's own.
    let node = Command::new("timeout")
        .arg("60")
        .arg("nsenter")
        .arg(format!("--net={netns}"))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_pier"))
        .arg("node")
        .env("NODE_NAME", "node-a")
        .env("KUBECONFIG", &first.kubeconfig)
        .env("PIER_STATE_DIR", other.path().join("node"))
        .env("PIER_ADMIN_ADDR", "off")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .expect("pier node runs");
    assert_refused("pier node", &node, pid, &data_dir);

    // The first one's endpoint kept its interface and veth through all three, and still answers.
    assert!(
        eth0(&container).contains(&format!("{address}/")),
        "{container} kept eth0"
    );
    assert!(first.node_links().contains(&veth), "{}", first.node_links());
    assert!(
        first
            .on_node(&format!("ping -c1 -W2 {address}"))
            .status
            .success()
    );
    assert_eq!(first.condition("pep web", "Attached").0, "True");

    // kill -9 leaves the lock file, but not the lock: a new pier up starts in that namespace.
    first.kill_9();
    let mut next = first.another_in_same_node("owner-next");
    next.start(&[]);
    let next_pid = next.pid().expect("the new pier up runs");
    wait_for("the new pier up to serve", Duration::from_secs(10), || {
        next.kubectl("get pnet bridge")
            .status
            .success()
            .then_some(())
    });
    // ... and it holds the lock now: pier down names it.
    let down = pier_command(&["down", "--data-dir", &data_dir, "--node-netns", &netns]);
    assert_refused(
        "pier down beside the new one",
        &down,
        next_pid,
        &next.data_dir.display().to_string(),
    );
    // Once it stopped, pier down runs.
    next.stop();
    let down = pier_command(&[
        "down",
        "--data-dir",
        &next.data_dir.display().to_string(),
        "--node-netns",
        &netns,
    ]);
    assert!(
        down.status.success(),
        "pier down after pier up stopped: {}",
        String::from_utf8_lossy(&down.stderr)
    );
}
