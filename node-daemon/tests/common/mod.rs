//! Kernel test fixture: a private "host" namespace per test plus "container" (and "remote")
//! namespaces, all named after the test, the process id and a counter (so tests run in
//! parallel, also across test binaries) and deleted on drop with everything running inside.
//! Nothing here touches the machine's own namespace.
//!
//! Needs root and iproute2 (`ip netns`), ping (iputils-ping), busybox (busybox-static) and socat;
//! the firewall tests also nftables (see [`firewall`]).
#![allow(dead_code)] // each test binary uses a different part of the fixture

pub mod dual_stack;
pub mod firewall;
pub mod ipv6;
pub mod overlay;

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pier_node::dataplane::{Dataplane, Report, Scope};
use pier_node::state::{
    Attachment, BridgeAttachment, Driver, EndpointState, Netns, NetworkState, NodeState, Protocol,
    PublishedPort,
};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A number unique in this process (names of namespaces and links).
fn unique() -> usize {
    COUNTER.fetch_add(1, Ordering::SeqCst)
}

/// Fails the test loudly when it cannot do what it must: a test never passes silently.
pub fn require_root() {
    require_root_with(&[]);
}

/// [`require_root`], and the tools `extra` too (`nft` for the firewall tests).
pub fn require_root_with(extra: &[&str]) {
    let uid = nix::unistd::Uid::effective();
    assert!(
        uid.is_root(),
        "this kernel test needs root (network namespaces, links, nftables); run `cargo test -p pier-node` as root"
    );
    for tool in ["ip", "ping", "busybox", "socat"].iter().chain(extra) {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(
            found,
            "this kernel test needs `{tool}` (apt-get install iproute2 iputils-ping busybox-static socat nftables)"
        );
    }
}

/// A named network namespace (`ip netns add`), deleted on drop with its processes.
#[derive(Debug)]
pub struct Ns {
    pub name: String,
}

impl Ns {
    pub fn new(tag: &str) -> Ns {
        let name = format!("pt-{tag}-{}-{}", std::process::id(), unique());
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = Ns { name };
        ns.sh("ip link set lo up");
        ns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(pier_crds::names::NETNS_DIR).join(&self.name)
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
    #[must_use = "the process is killed when the guard is dropped"]
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

    /// Whether one ping gets an answer within a second.
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

    /// An HTTP/1.0 GET of `http://ADDR:PORT/` from inside the namespace: the (trimmed) body of
    /// any HTTP answer, or None when there is none in a few seconds. socat is the client:
    /// busybox-static's wget crashes in glibc's static resolver code on Debian 12.
    pub fn http_get(&self, addr: Ipv4Addr, port: u16) -> Option<String> {
        let output = self.exec(&format!(
            "printf 'GET / HTTP/1.0\\r\\nHost: {addr}:{port}\\r\\n\\r\\n' | busybox timeout 4 socat -T 3 - TCP4:{addr}:{port},connect-timeout=2"
        ));
        let response = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() || !response.starts_with("HTTP/1.") {
            return None;
        }
        let (_, body) = response.split_once("\r\n\r\n")?;
        Some(body.trim().to_owned())
    }

    /// HTTP GET, retried for a few seconds (the path may still be settling).
    pub fn http_get_eventually(&self, addr: Ipv4Addr, port: u16) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(6);
        while Instant::now() < deadline {
            if let Some(body) = self.http_get(addr, port) {
                return Some(body);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// Starts busybox httpd on `port` serving a file whose content is `body`, and waits until
    /// it listens.
    #[must_use = "the server is killed when the guard is dropped"]
    pub fn serve_http(&self, port: u16, body: &str) -> Bg {
        let dir = self.web_roots().join(port.to_string());
        std::fs::create_dir_all(&dir).expect("creating the web root");
        std::fs::write(dir.join("index.html"), body).expect("writing index.html");
        let server = self.spawn(&format!("busybox httpd -f -p {port} -h {}", dir.display()));
        self.wait_bound("/proc/net/tcp /proc/net/tcp6", port, " 0A ");
        server
    }

    /// Starts a UDP server on `port` that answers every datagram with `reply`, and waits until
    /// it is bound.
    #[must_use = "the server is killed when the guard is dropped"]
    pub fn serve_udp(&self, port: u16, reply: &str) -> Bg {
        let server = self.spawn(&format!(
            // The reply script reads the request first: a script that exits before socat has
            // handed it the datagram makes socat fail on the broken pipe and send no reply.
            "socat UDP4-RECVFROM:{port},fork SYSTEM:'read -r _; echo {reply}'"
        ));
        self.wait_bound("/proc/net/udp", port, "");
        server
    }

    /// A UDP request from inside the namespace; the reply, if any.
    /// UDP promises no delivery, so like any UDP client this asks up to three times (a loaded
    /// machine loses a first datagram now and then, and the tests would flake on it).
    pub fn udp_request(&self, addr: impl Into<IpAddr>, port: u16) -> Option<String> {
        let target = match addr.into() {
            IpAddr::V4(a) => format!("UDP4:{a}:{port}"),
            IpAddr::V6(a) => format!("UDP6:[{a}]:{port}"),
        };
        (0..3).find_map(|_| {
            // `-t 2`: after stdin's EOF socat waits that long for the reply (the default,
            // 0.5 s, is shorter than a forked server's answer on a loaded machine).
            let output = self.exec(&format!(
                "echo hi | busybox timeout 3 socat -t 2 -T 2 - {target}"
            ));
            let reply = String::from_utf8_lossy(&output.stdout).trim().to_owned();
            (!reply.is_empty()).then_some(reply)
        })
    }

    /// Waits until a line of the socket `tables` has local port `port` (and `state`).
    fn wait_bound(&self, tables: &str, port: u16, state: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let sockets = self.sh(&format!("cat {tables} 2>/dev/null || true"));
            if sockets
                .lines()
                .any(|l| l.contains(&format!(":{port:04X} ")) && l.contains(state))
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("server on {port} in {} did not start", self.name);
    }

    /// Where [`Ns::serve_http`] keeps its files (removed on drop).
    fn web_roots(&self) -> PathBuf {
        std::env::temp_dir().join(format!("{}-www", self.name))
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
        let _ = std::fs::remove_dir_all(self.web_roots());
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

/// Links two namespaces with a veth pair, `a_if` in `a` and `b_if` in `b`, both up, no addresses.
pub fn veth(a: &Ns, a_if: &str, b: &Ns, b_if: &str) {
    let tmp = format!("t{}", unique());
    a.sh(&format!(
        "ip link add {a_if} type veth peer name {tmp} && ip link set {tmp} netns {} && ip link set {a_if} up",
        b.name
    ));
    b.sh(&format!(
        "ip link set {tmp} name {b_if} && ip link set {b_if} up"
    ));
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

    /// Another computer on the node's LAN: namespace `name`, linked to the host by a veth Pier
    /// does not own (`uplink0`, a stand-in for the node's NIC), the host at `host/24` and the
    /// computer at `peer/24`. Returns the computer; routes are the caller's.
    pub fn lan_computer(&self, name: &str, host: Ipv4Addr, peer: Ipv4Addr) -> Ns {
        let computer = self.container(name);
        self.host.sh(&format!(
            "ip link add uplink0 type veth peer name eth0 netns {computer} && \
             ip addr add {host}/24 dev uplink0 && ip link set uplink0 up",
            computer = computer.name
        ));
        computer.sh(&format!(
            "ip addr add {peer}/24 dev eth0 && ip link set eth0 up"
        ));
        computer
    }

    /// Applies and requires every object to succeed.
    pub fn apply_ok(&self, state: &NodeState) -> Report {
        let report = self
            .dataplane
            .apply(state, &Scope::Full)
            .expect("apply runs");
        assert!(report.is_success(), "apply failed:\n{report}");
        report
    }

    /// Asserts that planning again finds nothing to do.
    pub fn assert_converged(&self, state: &NodeState) {
        let plan = self.dataplane.plan(state, &Scope::Full).expect("plan runs");
        assert!(plan.is_empty(), "second plan is not empty:\n{plan}");
    }
}

pub fn bridge_network(name: &str, subnet: &str, gateway: &str) -> NetworkState {
    NetworkState {
        subnet: Some(subnet.parse().expect("test subnet")),
        gateway: Some(gateway.parse().expect("test gateway")),
        dns: true,
        ..other_network(name, Driver::Bridge)
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
        vxlan_id: None,
        subnet6: None,
        gateway6: None,
    }
}

/// An endpoint `id` in namespace `ns` on bridge network `network`, with `address` (IPv4, or IPv6
/// on an IPv6-only network); its MAC derives from the address's last 32 bits.
pub fn bridge_endpoint(
    id: &str,
    ns: &Ns,
    network: &str,
    interface: &str,
    address: &str,
    default_route: bool,
) -> EndpointState {
    let ip: IpAddr = address.parse().expect("test address");
    let mac = match ip {
        IpAddr::V4(v4) => v4.octets(),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            [o[12], o[13], o[14], o[15]]
        }
    };
    EndpointState {
        id: id.into(),
        uid: format!("uid-ep-{id}-{network}"),
        name: id.rsplit('/').next().unwrap_or(id).into(),
        aliases: vec![],
        netns: ns.netns(),
        attachment: Attachment::Bridge(BridgeAttachment {
            network: network.into(),
            interface: interface.into(),
            address: match ip {
                IpAddr::V4(v4) => Some(v4),
                IpAddr::V6(_) => None,
            },
            address6: match ip {
                IpAddr::V6(v6) => Some(v6),
                IpAddr::V4(_) => None,
            },
            mac: format!(
                "02:42:{:02x}:{:02x}:{:02x}:{:02x}",
                mac[0], mac[1], mac[2], mac[3]
            ),
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
        host_ip: Ipv4Addr::UNSPECIFIED.into(),
        host_port,
        protocol: Protocol::Tcp,
        endpoint_address: address.parse().expect("test address"),
        container_port,
    }
}
