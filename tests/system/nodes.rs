//! More nodes beside `pier up`: `pier node` (the per-node agent, as the chart's DaemonSet runs it)
//! in a namespace of its own, and an underlay joining node namespaces as a LAN joins machines.
//!
//! A node agent reaches `pier up`'s API server (on the machine's 127.0.0.1) through a socat
//! bridge: a UNIX socket on the machine, a TCP listener on the node's 127.0.0.1 at the same port,
//! so the kubeconfig (and its certificate for 127.0.0.1) work unchanged.
//!
//! `pier node` runs under `nsenter --net`, not `ip netns exec`: the latter also gives the process
//! a mount namespace of its own whose mounts do not propagate back, so the namespaces `pier node`
//! creates under /var/run/netns would not be visible outside it. The chart mounts /var/run/netns
//! with `mountPropagation: Bidirectional`, which is what sharing the machine's mount namespace
//! reproduces.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{in_netns, sh, sh_ok, wait_for};

/// `pier node`'s admin port inside its node (each node's loopback is its own, so a fixed port is
/// safe).
pub const ADMIN_PORT: u16 = 9091;

/// How `pier node` was started, to start it again after a kill.
struct Launch {
    kubeconfig: PathBuf,
    env: Vec<(String, String)>,
}

/// A node: a network namespace with `pier node` in it. Dropping it kills every process it
/// started (by process group) and deletes its namespace and the named namespaces it lists, also
/// when the test fails (printing the agent's log then).
pub struct PierNode {
    /// The node's name (`NODE_NAME`, Endpoints' `target.netns.node`).
    pub name: String,
    /// The node's network namespace.
    pub netns: String,
    dir: tempfile::TempDir,
    /// `pier node` (a process group of its own).
    agent: Option<Child>,
    launch: Option<Launch>,
    /// The socat processes of the API bridge (each a process group of its own).
    bridge: Vec<Child>,
    /// Named namespaces the test targets on this node.
    containers: Vec<String>,
}

impl PierNode {
    /// A fresh namespace `netns` with `lo` up for node `name`; `containers`: the named
    /// namespaces the test will target on it (removed now if left over, and on drop).
    pub fn create(name: &str, netns: &str, containers: &[&str]) -> PierNode {
        let _ = sh(&format!("ip netns del {netns} 2>/dev/null"));
        for container in containers {
            let _ = sh(&format!(
                "ip netns del {container} 2>/dev/null; rm -rf /etc/netns/{container}"
            ));
        }
        sh_ok(&format!(
            "ip netns add {netns} && ip netns exec {netns} ip link set lo up"
        ));
        PierNode {
            name: name.to_owned(),
            netns: netns.to_owned(),
            dir: tempfile::tempdir().expect("the node's directory"),
            agent: None,
            launch: None,
            bridge: Vec::new(),
            containers: containers.iter().map(|c| (*c).to_owned()).collect(),
        }
    }

    /// The agent's `PIER_STATE_DIR`.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("pier-node.log")
    }

    /// `pier node`'s output so far (every run of it, appended).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts `pier node` in the namespace, configured as the chart's DaemonSet configures it
    /// (`netns_targets`: the chart's `node.netnsTargets`).
    pub fn start_agent(&mut self, kubeconfig: &Path, netns_targets: bool) {
        let targets = netns_targets.to_string();
        self.start_agent_with(kubeconfig, &[("PIER_NETNS_TARGETS", &targets)]);
    }

    /// Starts `pier node` with the DaemonSet's environment plus `env` (which may override it).
    pub fn start_agent_with(&mut self, kubeconfig: &Path, env: &[(&str, &str)]) {
        self.launch = Some(Launch {
            kubeconfig: kubeconfig.to_owned(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        });
        self.restart_agent();
    }

    /// Starts `pier node` again as it was started last (after [`PierNode::kill_9`]).
    pub fn restart_agent(&mut self) {
        assert!(
            self.agent.is_none(),
            "pier node on {} still runs",
            self.name
        );
        let launch = self.launch.as_ref().expect("pier node was started before");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log file");
        let child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", self.netns))
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_pier"))
            .arg("node")
            .env("NODE_NAME", &self.name)
            .env("KUBECONFIG", &launch.kubeconfig)
            .env("PIER_STATE_DIR", self.state_dir())
            .env("PIER_ADMIN_ADDR", format!("127.0.0.1:{ADMIN_PORT}"))
            .env("PIER_DNS_PORT", "53")
            .env("PIER_RESYNC_SECONDS", "2")
            .env("PIER_NETNS_TARGETS", "false")
            .env("RUST_LOG", "info,hickory_server=warn")
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("pier node starts");
        self.agent = Some(child);
    }

    /// Bridges the machine's 127.0.0.1:`port` to the node's 127.0.0.1:`port`.
    pub fn bridge_api(&mut self, port: u16) {
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
            .expect("socat starts in the node");
        self.bridge.push(inside);
    }

    /// Waits until the agent's /readyz answers 200 (its first full reconcile is done).
    pub fn wait_ready(&self) {
        wait_for(
            &format!("pier node's /readyz on {}", self.name),
            Duration::from_secs(60),
            || (self.probe("/readyz") == "HTTP/1.1 200 OK").then_some(()),
        );
    }

    /// `sh -c script` in the node's namespace (the script is one argument: any quoting works).
    pub fn on_node(&self, script: &str) -> Output {
        in_netns(&self.netns, script)
    }

    /// The status line of `GET path` on the admin port, from inside the node ("" when nothing
    /// answers).
    pub fn probe(&self, path: &str) -> String {
        self.admin_get(path)
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned()
    }

    /// The whole response to `GET path` on the admin port, from inside the node. `-t5`: after
    /// sending the request socat waits up to 5 s for the answer (its default, 0.5 s, can cut a
    /// reply off on a loaded machine and read as an empty response).
    pub fn admin_get(&self, path: &str) -> String {
        let out = self.on_node(&format!(
            "printf 'GET {path} HTTP/1.1\\r\\nHost: node\\r\\nConnection: close\\r\\n\\r\\n' | socat -T2 -t5 - TCP:127.0.0.1:{ADMIN_PORT},connect-timeout=2"
        ));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The links of the node (`ip -br link` lines).
    pub fn links(&self) -> String {
        String::from_utf8_lossy(&self.on_node("ip -br link").stdout).into_owned()
    }

    /// SIGKILL to `pier node` (its whole process group), as a crash or an OOM kill would.
    pub fn kill_9(&mut self) {
        if let Some(mut child) = self.agent.take() {
            kill_group(&mut child);
        }
    }

    /// SIGTERM to `pier node`, as the kubelet stops a Pod; its exit status and how long it took.
    pub fn terminate(&mut self, timeout: Duration) -> (ExitStatus, Duration) {
        let mut child = self.agent.take().expect("pier node is running");
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid"));
        let start = Instant::now();
        kill(pid, Signal::SIGTERM).expect("SIGTERM to pier node");
        let status = loop {
            if let Some(status) = child.try_wait().expect("waiting for pier node") {
                break status;
            }
            if start.elapsed() > timeout {
                kill_group(&mut child);
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

/// SIGKILL to the group `child` leads (it was started with `process_group(0)`: socat's forked
/// children go too), then reaps it.
fn kill_group(child: &mut Child) {
    if let Ok(pgid) = i32::try_from(child.id()) {
        let _ = kill(Pid::from_raw(-pgid), Signal::SIGKILL);
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for PierNode {
    fn drop(&mut self) {
        for mut child in self.agent.take().into_iter().chain(self.bridge.drain(..)) {
            kill_group(&mut child);
        }
        let _ = sh(&format!("ip netns del {}", self.netns));
        for name in &self.containers {
            let _ = sh(&format!(
                "ip netns del {name} 2>/dev/null; rm -rf /etc/netns/{name}"
            ));
        }
        if std::thread::panicking() {
            eprintln!(
                "--- pier node log ({}, {}) ---\n{}",
                self.name,
                self.netns,
                self.log()
            );
        }
    }
}

/// The LAN between node namespaces: a bridge in a namespace of its own, holding the router
/// address every node's default route points at. Node `i` (from 1) gets `PREFIX.i/24` on its
/// link `underlay0`. Dropping it deletes its namespace (and with it every node's link to it).
pub struct Underlay {
    pub netns: String,
}

impl Underlay {
    /// The underlay's /24 (no other test uses it; each test's underlay is its own namespace).
    pub const PREFIX: &str = "10.98.40";
    /// The router's host number on the underlay (on the bridge).
    const ROUTER: u8 = 254;
    /// The node side's link name.
    pub const LINK: &str = "underlay0";

    /// A fresh underlay namespace `netns` with its bridge up and the router address on it.
    pub fn create(netns: &str) -> Underlay {
        let _ = sh(&format!("ip netns del {netns} 2>/dev/null"));
        sh_ok(&format!(
            "ip netns add {netns} && ip -n {netns} link set lo up && \
             ip -n {netns} link add lan type bridge && \
             ip -n {netns} addr add {}/24 dev lan && ip -n {netns} link set lan up",
            Underlay::router()
        ));
        Underlay {
            netns: netns.to_owned(),
        }
    }

    /// The address of node `index` on the underlay.
    pub fn address(index: u8) -> String {
        format!("{}.{index}", Underlay::PREFIX)
    }

    /// The router address (the nodes' default gateway).
    pub fn router() -> String {
        Underlay::address(Underlay::ROUTER)
    }

    /// A script to run *inside* node `index`'s namespace that wires it to the underlay: a veth
    /// (`underlay0` on the node, `nodeINDEX` on the bridge), the node's address and its default
    /// route via the router. No single quotes, so `Pier::up_after` can run it.
    pub fn wiring(&self, index: u8) -> String {
        let underlay = &self.netns;
        let link = Underlay::LINK;
        format!(
            "ip link add {link} type veth peer name node{index} netns {underlay} && \
             ip -n {underlay} link set node{index} master lan up && \
             ip addr add {}/24 dev {link} && ip link set {link} up && \
             ip route add default via {}",
            Underlay::address(index),
            Underlay::router()
        )
    }
}

impl Drop for Underlay {
    fn drop(&mut self) {
        let _ = sh(&format!("ip netns del {} 2>/dev/null", self.netns));
    }
}
