//! Kernel test fixture: a private "host" namespace per test plus "container" namespaces, all
//! named after the test and the process id (so tests run in parallel, also across test binaries)
//! and deleted on drop. Nothing here touches the machine's own namespace.
//!
//! Needs root and iproute2 (`ip netns`), ping (iputils-ping), busybox (busybox-static) and socat.
#![allow(dead_code)] // each test binary uses a different part of the fixture

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pier_node::reconcile::{Dataplane, Report};
use pier_node::state::{
    Attachment, BridgeAttachment, Driver, EndpointState, Netns, NetworkState, NodeState, Protocol,
    PublishedPort,
};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Fails the test loudly when it cannot do what it must (DESIGN.md §5: never pass silently).
pub fn require_root() {
    let uid = nix::unistd::Uid::effective();
    assert!(
        uid.is_root(),
        "this kernel test needs root (network namespaces, links, nftables); run `cargo test -p pier-node` as root"
    );
    for tool in ["ip", "ping", "busybox", "socat"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(
            found,
            "this kernel test needs `{tool}` (apt-get install iproute2 iputils-ping busybox-static socat)"
        );
    }
}

/// A named network namespace (`ip netns add`), deleted on drop.
#[derive(Debug)]
pub struct Ns {
    pub name: String,
}

impl Ns {
    pub fn new(tag: &str) -> Ns {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("pt-{tag}-{}-{n}", std::process::id());
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = Ns { name };
        ns.sh("ip link set lo up");
        ns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    pub fn netns(&self) -> Netns {
        Netns::Named(self.name.clone())
    }

    /// Runs a shell command inside the namespace; returns its output whatever the status.
    pub fn exec(&self, script: &str) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, "sh", "-c", script])
            .stdin(Stdio::null())
            .output()
            .expect("running ip netns exec")
    }

    /// Runs a shell command inside the namespace and requires success; returns stdout.
    pub fn sh(&self, script: &str) -> String {
        let output = self.exec(script);
        assert!(
            output.status.success(),
            "`{script}` in {} failed: {}{}",
            self.name,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Starts a background process inside the namespace (killed by the returned guard).
    pub fn spawn(&self, script: &str) -> Bg {
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.name,
                "sh",
                "-c",
                &format!("exec {script}"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning a background process");
        Bg(child)
    }

    pub fn ping(&self, address: Ipv4Addr) -> bool {
        self.exec(&format!("ping -c1 -W1 {address}"))
            .status
            .success()
    }

    /// Pings until it answers (ARP and DAD can take a moment on fresh links).
    pub fn ping_eventually(&self, address: Ipv4Addr) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.ping(address) {
                return true;
            }
        }
        false
    }

    /// Names of the links in the namespace.
    pub fn links(&self) -> Vec<String> {
        self.sh("ip -o link show")
            .lines()
            .filter_map(|line| line.split(':').nth(1))
            .map(|name| name.trim().split('@').next().unwrap_or_default().to_owned())
            .collect()
    }

    /// An HTTP/1.0 GET of `http://HOST:PORT/` over socat (busybox-static's wget crashes on
    /// Debian 12, and socat is installed anyway); the body of a 200 answer, or None.
    pub fn http_get(&self, url: &str) -> Option<String> {
        let authority = url.strip_prefix("http://")?.trim_end_matches('/');
        let output = self.exec(&format!(
            "printf 'GET / HTTP/1.0\\r\\nHost: {authority}\\r\\n\\r\\n' | socat -T2 - TCP:{authority},connect-timeout=2"
        ));
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let (head, body) = text.split_once("\r\n\r\n")?;
        head.lines()
            .next()
            .filter(|status| status.contains(" 200 "))
            .map(|_| body.to_owned())
    }

    /// HTTP GET, retried for a few seconds (the server may still be starting).
    pub fn http_get_eventually(&self, url: &str) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(6);
        while Instant::now() < deadline {
            if let Some(body) = self.http_get(url) {
                return Some(body);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// Starts busybox httpd on `port` serving a file whose content is `body`.
    pub fn serve_http(&self, port: u16, body: &str) -> Bg {
        let dir = std::env::temp_dir().join(format!("{}-www-{port}", self.name));
        std::fs::create_dir_all(&dir).expect("creating the web root");
        std::fs::write(dir.join("index.html"), body).expect("writing index.html");
        self.spawn(&format!("busybox httpd -f -p {port} -h {}", dir.display()))
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        // Kill what still runs inside (servers), then delete the namespace.
        let _ = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|o| {
                for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            });
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A background process, killed on drop.
#[derive(Debug)]
pub struct Bg(pub Child);

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run_ok(command: &mut Command) {
    let output = command.output().expect("running a command");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A test's world: its own host namespace and a dataplane bound to it.
#[derive(Debug)]
pub struct Lab {
    pub host: Ns,
    pub dataplane: Dataplane,
    pub tag: String,
}

impl Lab {
    pub fn new(tag: &str) -> Lab {
        require_root();
        let host = Ns::new(&format!("{tag}-h"));
        let dataplane = Dataplane::new(Some(host.path()));
        Lab {
            host,
            dataplane,
            tag: tag.to_owned(),
        }
    }

    pub fn container(&self, name: &str) -> Ns {
        Ns::new(&format!("{}-{name}", self.tag))
    }

    /// Applies and requires every object to succeed.
    pub fn apply_ok(&self, state: &NodeState) -> Report {
        let report = self.dataplane.apply(state).expect("apply runs");
        assert!(report.is_success(), "apply failed:\n{report}");
        report
    }

    /// Asserts that planning again finds nothing to do.
    pub fn assert_converged(&self, state: &NodeState) {
        let plan = self.dataplane.plan(state).expect("plan runs");
        assert!(plan.is_empty(), "second plan is not empty:\n{plan}");
    }
}

pub fn bridge_network(name: &str, subnet: &str, gateway: &str) -> NetworkState {
    NetworkState {
        name: name.into(),
        uid: format!("uid-net-{name}"),
        driver: Driver::Bridge,
        subnet: Some(subnet.parse().expect("test subnet")),
        gateway: Some(gateway.parse().expect("test gateway")),
        mtu: 1500,
        internal: false,
        dns: true,
    }
}

pub fn other_network(name: &str, driver: Driver) -> NetworkState {
    NetworkState {
        name: name.into(),
        uid: format!("uid-net-{name}"),
        driver,
        subnet: None,
        gateway: None,
        mtu: 1500,
        internal: false,
        dns: false,
    }
}

/// An endpoint `id` in namespace `ns` on bridge network `network`.
pub fn bridge_endpoint(
    id: &str,
    ns: &Ns,
    network: &str,
    interface: &str,
    address: &str,
    default_route: bool,
) -> EndpointState {
    let ip: Ipv4Addr = address.parse().expect("test address");
    let o = ip.octets();
    EndpointState {
        id: id.into(),
        uid: format!("uid-ep-{id}-{network}"),
        name: id.rsplit('/').next().unwrap_or(id).into(),
        aliases: vec![],
        netns: ns.netns(),
        attachment: Attachment::Bridge(BridgeAttachment {
            network: network.into(),
            interface: interface.into(),
            address: ip,
            mac: format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3]),
            default_route,
        }),
    }
}

pub fn published(
    id: &str,
    endpoint: &str,
    host_port: u16,
    address: &str,
    container_port: u16,
) -> PublishedPort {
    PublishedPort {
        id: id.into(),
        endpoint: endpoint.into(),
        host_ip: Ipv4Addr::UNSPECIFIED,
        host_port,
        protocol: Protocol::Tcp,
        endpoint_address: address.parse().expect("test address"),
        container_port,
    }
}
