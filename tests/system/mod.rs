//! Whole-system fixture: `pier up` (the real binary) in a node namespace of the test's own, the
//! real `kubectl` against it, and real traffic from the node namespace and the containers'.
//!
//! Every test gets its own data directory, API server (port 0) and node namespace, so tests run
//! in parallel; container namespaces carry the names the manifests give them, which differ
//! between tests. Dropping the fixture stops `pier up`, runs `pier down` and deletes the node
//! namespace, also when the test fails.
#![allow(dead_code)] // each test uses a different part of the fixture

pub mod nodes;
pub mod pods;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Fails loudly when the test cannot run: a test never passes silently.
pub fn require_root_and_tools() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "whole-system tests need root (pier up creates namespaces, links and nftables rules): \
         run `cargo test` as root"
    );
    for tool in ["ip", "ping", "kubectl", "busybox", "socat", "nft"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "whole-system tests need `{tool}` (kubectl, iproute2, iputils-ping, busybox-static, socat, nftables)"
        );
    }
}

/// Runs `sh -c script`; the output.
pub fn sh(script: &str) -> Output {
    Command::new("sh")
        .args(["-c", script])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script:?}: {e}"))
}

/// Runs `sh -c script`; stdout, panicking with stderr on failure.
pub fn sh_ok(script: &str) -> String {
    let out = sh(script);
    assert!(
        out.status.success(),
        "{script:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ip netns exec NETNS sh -c script` (the script is one argument: any quoting works).
pub fn in_netns(netns: &str, script: &str) -> Output {
    Command::new("ip")
        .args(["netns", "exec", netns, "sh", "-c", script])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script:?} in {netns}: {e}"))
}

/// Whether one ping from the named namespace `netns` to `to` (an address or a name) is answered.
pub fn ping(netns: &str, to: &str) -> bool {
    in_netns(netns, &format!("ping -c1 -W1 {to}"))
        .status
        .success()
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One `pier up` with its node namespace and data directory.
pub struct Pier {
    pub tag: String,
    pub node_netns: String,
    pub data_dir: PathBuf,
    pub kubeconfig: PathBuf,
    /// Named namespaces the test's manifests target (removed on drop, should Pier not have).
    pub containers: Vec<String>,
    /// A command `pier up` runs under (e.g. `unshare --mount`), if any.
    wrapper: Vec<String>,
    /// Environment of `pier up` beyond the default: (name, value), `None` removes it.
    pub env: Vec<(String, Option<String>)>,
    child: Option<Child>,
    _data: tempfile::TempDir,
}

impl Pier {
    /// Starts `pier up` (node `node-a`, resync every 2 s) in a fresh node namespace and waits
    /// for its `ready` line. `containers`: the named namespaces the test will use.
    pub fn up(tag: &str, containers: &[&str]) -> Pier {
        Pier::up_after(tag, containers, "true")
    }

    /// Like [`Pier::up`], running `script` in the node namespace first (e.g. to give the node
    /// addresses of its own, as Docker's docker0 has).
    pub fn up_after(tag: &str, containers: &[&str], script: &str) -> Pier {
        Pier::up_with(tag, containers, script, &[])
    }

    /// Like [`Pier::up`], with `pier up` run under `wrapper` (a command that runs its arguments).
    pub fn up_wrapped(tag: &str, containers: &[&str], wrapper: &[&str]) -> Pier {
        Pier::up_with(tag, containers, "true", wrapper)
    }

    fn up_with(tag: &str, containers: &[&str], script: &str, wrapper: &[&str]) -> Pier {
        let mut pier = Pier::prepare(tag, containers, script, wrapper);
        pier.start(&[]);
        pier
    }

    /// A `pier up` made ready to start (namespaces made) but not started: set `env`, then
    /// [`Pier::start`] with the flags the test needs.
    pub fn prepare(tag: &str, containers: &[&str], script: &str, wrapper: &[&str]) -> Pier {
        require_root_and_tools();
        let data = tempfile::tempdir().expect("data dir");
        let node_netns = format!("pn-{tag}-{}", std::process::id());
        let _ = sh(&format!("ip netns del {node_netns} 2>/dev/null"));
        sh_ok(&format!(
            "ip netns add {node_netns} && ip netns exec {node_netns} ip link set lo up"
        ));
        sh_ok(&format!("ip netns exec {node_netns} sh -c '{script}'"));
        for name in containers {
            // Left over from an earlier failed run: Pier must create them itself here.
            let _ = sh(&format!("ip netns del {name} 2>/dev/null"));
        }
        Pier {
            tag: tag.into(),
            node_netns,
            data_dir: data.path().to_path_buf(),
            kubeconfig: data.path().join("kubeconfig"),
            containers: containers.iter().map(|c| (*c).to_owned()).collect(),
            wrapper: wrapper.iter().map(|w| (*w).to_owned()).collect(),
            env: Vec::new(),
            child: None,
            _data: data,
        }
    }

    /// Another `pier up` (not started) with a data directory of its own in this one's node
    /// namespace, as a second `pier up --data-dir B` on the same machine.
    pub fn another_in_same_node(&self, tag: &str) -> Pier {
        let data = tempfile::tempdir().expect("data dir");
        Pier {
            tag: tag.into(),
            node_netns: self.node_netns.clone(),
            data_dir: data.path().to_path_buf(),
            kubeconfig: data.path().join("kubeconfig"),
            containers: Vec::new(),
            wrapper: Vec::new(),
            env: Vec::new(),
            child: None,
            _data: data,
        }
    }

    /// The pid of the running `pier up`.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The port of the API server, from the kubeconfig.
    pub fn api_port(&self) -> u16 {
        let server = self.kubectl_ok("config view -o 'jsonpath={.clusters[0].cluster.server}'");
        server
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("a port in the kubeconfig's server {server:?}"))
    }

    /// The node namespace's file, as `--node-netns` takes it.
    pub fn node_netns_path(&self) -> String {
        format!("/var/run/netns/{}", self.node_netns)
    }

    /// Starts (or restarts) the process; `extra`: more flags (e.g. `-f PATH`).
    pub fn start(&mut self, extra: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.join("pier.log"))
            .expect("log file");
        let pier = env!("CARGO_BIN_EXE_pier");
        let mut command = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(pier);
                command
            }
            None => Command::new(pier),
        };
        // `pier up` merges its context into $KUBECONFIG: the test's own file, never root's.
        command.env("KUBECONFIG", self.data_dir.join("user-kubeconfig"));
        for (name, value) in &self.env {
            match value {
                Some(value) => command.env(name, value),
                None => command.env_remove(name),
            };
        }
        let mut child = command
            .args(["up", "--listen", "127.0.0.1:0", "--node-name", "node-a"])
            .args(["--admin-addr", "127.0.0.1:0"])
            .args(["--resync-seconds", "2", "--data-dir"])
            .arg(&self.data_dir)
            .arg("--node-netns")
            .arg(format!("/var/run/netns/{}", self.node_netns))
            .args(extra)
            .env("RUST_LOG", "info,hickory_server=warn")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("pier up starts");
        let stdout = child.stdout.take().expect("stdout");
        self.child = Some(child);
        let lines = read_lines_until_ready(stdout, Duration::from_secs(60));
        match lines {
            Ok(lines) => assert_eq!(
                lines.first().map(PathBuf::from).as_deref(),
                Some(self.kubeconfig.as_path()),
                "pier up prints its kubeconfig path first"
            ),
            Err(printed) => panic!(
                "pier up did not print `ready` (stdout: {printed:?}); log:\n{}",
                self.log()
            ),
        }
    }

    /// `GET path` on `pier up`'s admin port (the address its log names last): the whole response.
    pub fn admin_get(&self, path: &str) -> String {
        use std::io::{Read, Write};
        let log = self.log();
        let address = log
            .lines()
            .rev()
            .filter(|line| line.contains("admin port"))
            .find_map(|line| line.split("bound=").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("pier up logs its admin port; log:\n{log}"));
        let mut tcp = std::net::TcpStream::connect(address).expect("pier up's admin port");
        tcp.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        write!(
            tcp,
            "GET {path} HTTP/1.1\r\nHost: pier\r\nConnection: close\r\n\r\n"
        )
        .expect("request");
        let mut response = String::new();
        tcp.read_to_string(&mut response).expect("response");
        response
    }

    /// `pier up`'s log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("pier.log")).unwrap_or_default()
    }

    /// SIGKILL, as a crash would.
    pub fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGINT, as Ctrl-C; asserts a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
            let status = child.wait().expect("pier up exits");
            assert!(status.success(), "pier up exited with {status} on Ctrl-C");
            let log = self.log();
            assert!(
                !log.contains("panicked"),
                "pier up panicked while stopping:\n{log}"
            );
        }
    }

    /// `kubectl ARGS` against this Pier; the output.
    pub fn kubectl(&self, args: &str) -> Output {
        sh(&format!(
            "kubectl --kubeconfig {} {args}",
            self.kubeconfig.display()
        ))
    }

    /// `kubectl ARGS`; stdout, panicking on failure.
    pub fn kubectl_ok(&self, args: &str) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl apply -f -` of `yaml`.
    pub fn apply(&self, yaml: &str) {
        self.apply_with(&[], yaml);
    }

    /// `kubectl apply FLAGS -f -` of `yaml` (e.g. `--server-side --subresource=status`).
    pub fn apply_with(&self, flags: &[&str], yaml: &str) {
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("apply")
            .args(flags)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl runs");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(yaml.as_bytes())
            .expect("writes the manifest");
        let out = child.wait_with_output().expect("kubectl ends");
        assert!(
            out.status.success(),
            "kubectl apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `kubectl get KIND NAME -o jsonpath=PATH` (empty when absent).
    pub fn jsonpath(&self, object: &str, path: &str) -> String {
        let out = self.kubectl(&format!("get {object} -o jsonpath='{path}'"));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The status of condition `type_` of `object`: `(status, reason)`.
    pub fn condition(&self, object: &str, type_: &str) -> (String, String) {
        let status = self.jsonpath(
            object,
            &format!("{{.status.conditions[?(@.type==\"{type_}\")].status}}"),
        );
        let reason = self.jsonpath(
            object,
            &format!("{{.status.conditions[?(@.type==\"{type_}\")].reason}}"),
        );
        (status, reason)
    }

    /// Waits until condition `type_` of `object` has `status`; its reason.
    pub fn wait_condition(&self, object: &str, type_: &str, status: &str) -> String {
        wait_for(
            &format!("{object} {type_}={status}"),
            Duration::from_secs(30),
            || {
                let (s, reason) = self.condition(object, type_);
                (s == status).then_some(reason)
            },
        )
    }

    /// `ip netns exec NODE sh -c script` (the node's namespace).
    pub fn on_node(&self, script: &str) -> Output {
        sh(&format!(
            "ip netns exec {} sh -c '{script}'",
            self.node_netns
        ))
    }

    /// An HTTP/1.0 GET from the node namespace; the response (busybox wget crashes on Debian 12).
    pub fn http_from_node(&self, authority: &str) -> String {
        let out = self.on_node(&format!(
            "printf \"GET / HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n\" | socat -T2 -t5 - TCP:{authority},connect-timeout=2"
        ));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Serves `body` with busybox httpd on port 80 in the named namespace `netns`.
    pub fn serve_http(&self, netns: &str, body: &str) -> Child {
        let dir = self.data_dir.join(format!("www-{netns}"));
        std::fs::create_dir_all(&dir).expect("www dir");
        std::fs::write(dir.join("index.html"), body).expect("index.html");
        Command::new("ip")
            .args([
                "netns", "exec", netns, "busybox", "httpd", "-f", "-p", "80", "-h",
            ])
            .arg(&dir)
            .spawn()
            .expect("httpd starts")
    }

    /// The links of the node namespace (`ip -br link` lines).
    pub fn node_links(&self) -> String {
        String::from_utf8_lossy(&self.on_node("ip -br link").stdout).into_owned()
    }
}

impl Drop for Pier {
    fn drop(&mut self) {
        self.kill_9();
        let _ = Command::new(env!("CARGO_BIN_EXE_pier"))
            .args(["down", "--data-dir"])
            .arg(&self.data_dir)
            .arg("--node-netns")
            .arg(format!("/var/run/netns/{}", self.node_netns))
            .output();
        let _ = sh(&format!("ip netns del {}", self.node_netns));
        for name in &self.containers {
            let _ = sh(&format!(
                "ip netns del {name} 2>/dev/null; rm -rf /etc/netns/{name}"
            ));
        }
        if std::thread::panicking() {
            eprintln!("--- pier up log ({}) ---\n{}", self.tag, self.log());
        }
    }
}

/// Reads stdout lines until `ready`; `Err(lines)` when the process ends or the time is up.
fn read_lines_until_ready(
    stdout: ChildStdout,
    timeout: Duration,
) -> Result<Vec<String>, Vec<String>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + timeout;
    let mut lines = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line == "ready" => return Ok(lines),
            Ok(line) => lines.push(line),
            Err(_) => return Err(lines),
        }
    }
}

/// The repository's examples folder.
pub fn examples(step: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(step)
}

/// A process the test started, killed when dropped (also when the test fails, so it never
/// outlives the test holding the harness's output open).
pub struct Process(pub Child);

impl Process {
    pub fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A named network namespace of the test's own (`ip netns add`), deleted when dropped.
pub struct TestNetns(pub String);

impl TestNetns {
    pub fn new(name: &str) -> TestNetns {
        let _ = sh(&format!("ip netns del {name} 2>/dev/null"));
        sh_ok(&format!(
            "ip netns add {name} && ip -n {name} link set lo up"
        ));
        TestNetns(name.to_owned())
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = sh(&format!("ip netns del {} 2>/dev/null", self.0));
    }
}
