//! Fixture of the firewall kernel tests: private namespaces for a "host", its "containers" and a
//! "remote" machine, named after the process id and a counter (so tests run in parallel, also
//! across test binaries), and deleted on drop with everything running inside. Nothing here
//! touches the machine's own namespace.
//!
//! It builds the links by hand with `ip`, so the firewall is tested without the links code.
//! Needs root, iproute2, nftables (the `nft` CLI, to inspect), busybox and socat.
#![allow(dead_code)] // each test binary uses a different part of the fixture

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pier_node::state::{Driver, NetworkState, NodeState, Protocol, PublishedPort};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Fails loudly when the test cannot run (DESIGN.md §5: a kernel test never passes silently).
pub fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "firewall kernel tests need root (network namespaces, nftables): run `cargo test -p pier-node` as root"
    );
    for tool in ["ip", "nft", "busybox", "socat"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(
            found,
            "firewall kernel tests need `{tool}` (apt-get install iproute2 nftables busybox-static socat)"
        );
    }
}

fn sh(cmd: &str) -> Output {
    Command::new("sh")
        .args(["-c", cmd])
        .output()
        .expect("sh runs")
}

/// A named network namespace (`ip netns add`), deleted on drop with its processes.
#[derive(Debug)]
pub struct Ns {
    pub name: String,
}

impl Ns {
    pub fn new(tag: &str) -> Ns {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("pfw{}-{n}-{tag}", std::process::id());
        let out = sh(&format!("ip netns add {name}"));
        assert!(out.status.success(), "ip netns add {name}: {out:?}");
        let ns = Ns { name };
        ns.ok("ip link set lo up");
        ns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// Runs `cmd` with `sh -c` inside the namespace.
    pub fn run(&self, cmd: &str) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, "sh", "-c", cmd])
            .output()
            .expect("ip netns exec runs")
    }

    /// Runs `cmd` inside and panics with its output unless it succeeds; returns stdout.
    pub fn ok(&self, cmd: &str) -> String {
        let out = self.run(cmd);
        assert!(
            out.status.success(),
            "in {}: `{cmd}` failed: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `nft -j list table inet pier` in this namespace, parsed.
    pub fn pier_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok("nft -j list table inet pier")).expect("nft prints JSON")
    }

    /// Whether table `inet pier` exists here.
    pub fn has_pier_table(&self) -> bool {
        self.run("nft list table inet pier").status.success()
    }

    /// Starts a busybox web server on `port` that answers with `body`.
    pub fn serve_http(&self, port: u16, body: &str) {
        let dir = format!("/tmp/{}-www-{port}", self.name);
        std::fs::create_dir_all(&dir).expect("web root");
        std::fs::write(format!("{dir}/index.html"), body).expect("index.html");
        // busybox httpd daemonises; the drop of the namespace kills it.
        self.ok(&format!("busybox httpd -p {port} -h {dir}"));
        self.wait_listening(port);
    }

    /// Starts a UDP echo-with-prefix server on `port`.
    pub fn serve_udp(&self, port: u16, reply: &str) {
        self.ok(&format!(
            "setsid socat UDP4-RECVFROM:{port},fork SYSTEM:'echo {reply}' >/dev/null 2>&1 < /dev/null &"
        ));
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self
                .ok("cat /proc/net/udp")
                .contains(&format!(":{port:04X} "))
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("UDP server on {port} in {} did not start", self.name);
    }

    fn wait_listening(&self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let tcp = self.ok("cat /proc/net/tcp /proc/net/tcp6 2>/dev/null");
            if tcp
                .lines()
                .any(|l| l.contains(&format!(":{port:04X} ")) && l.contains(" 0A "))
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("server on {port} in {} did not start", self.name);
    }

    /// HTTP GET from inside this namespace; the body, or `None` when it fails or times out.
    /// (socat as the client: busybox-static's wget crashes in glibc's static resolver code.)
    pub fn http_get(&self, addr: Ipv4Addr, port: u16) -> Option<String> {
        let out = self.run(&format!(
            "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox timeout 4 socat -T 3 - TCP4:{addr}:{port},connect-timeout=2"
        ));
        let response = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() || !response.starts_with("HTTP/1.") {
            return None;
        }
        let body = response.split_once("\r\n\r\n").map(|(_, body)| body)?;
        Some(body.trim().to_owned())
    }

    /// A UDP request from inside this namespace; the reply, if any.
    pub fn udp_request(&self, addr: Ipv4Addr, port: u16) -> Option<String> {
        let out = self.run(&format!(
            "echo hi | busybox timeout 3 socat -T 2 - UDP4:{addr}:{port}"
        ));
        let reply = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        (!reply.is_empty()).then_some(reply)
    }

    /// Whether one ping gets an answer.
    pub fn pings(&self, addr: Ipv4Addr) -> bool {
        self.run(&format!("busybox ping -c 1 -W 1 {addr}"))
            .status
            .success()
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = sh(&format!(
            "ip netns pids {0} | xargs -r kill -9; ip netns del {0}; rm -rf /tmp/{0}-www-*",
            self.name
        ));
    }
}

/// Links two namespaces with a veth pair, `a_if` in `a` and `b_if` in `b`, both up, no addresses.
pub fn veth(a: &Ns, a_if: &str, b: &Ns, b_if: &str) {
    let tmp = format!("t{}", COUNTER.fetch_add(1, Ordering::SeqCst));
    a.ok(&format!(
        "ip link add {a_if} type veth peer name {tmp} && ip link set {tmp} netns {} && ip link set {a_if} up",
        b.name
    ));
    b.ok(&format!(
        "ip link set {tmp} name {b_if} && ip link set {b_if} up"
    ));
}

/// A bridge network as Pier's NodeState has it.
pub fn network(name: &str, subnet: &str, internal: bool) -> NetworkState {
    let subnet: ipnet::Ipv4Net = subnet.parse().expect("test subnet");
    let gateway = subnet
        .hosts()
        .next()
        .expect("subnet has a first host address");
    NetworkState {
        name: name.into(),
        uid: format!("uid-{name}-{}", std::process::id()),
        driver: Driver::Bridge,
        subnet: Some(subnet),
        gateway: Some(gateway),
        mtu: 1500,
        internal,
        dns: true,
    }
}

/// One published port.
pub fn port(
    host_ip: &str,
    host_port: u16,
    protocol: Protocol,
    endpoint_address: &str,
    container_port: u16,
) -> PublishedPort {
    PublishedPort {
        id: format!("default/p{host_port}"),
        endpoint: "default/web".into(),
        host_ip: host_ip.parse().expect("host ip"),
        host_port,
        protocol,
        endpoint_address: endpoint_address.parse().expect("endpoint address"),
        container_port,
    }
}

/// Builds the bridge of `network` in `host` with its gateway address, as the links code would,
/// with the sysctls the firewall relies on (ip_forward, route_localnet on the bridge).
pub fn bridge(host: &Ns, network: &NetworkState) {
    let name = network.bridge_name();
    let subnet = network.subnet.expect("bridge network has a subnet");
    let gateway = network.gateway.expect("bridge network has a gateway");
    host.ok(&format!(
        "ip link add {name} type bridge && ip addr add {gateway}/{} dev {name} && ip link set {name} up \
         && sysctl -qw net.ipv4.ip_forward=1 && sysctl -qw net.ipv4.conf.{name}.route_localnet=1",
        subnet.prefix_len()
    ));
}

/// A "container": a namespace with `eth0` on the bridge of `network` at `address`, default route
/// via the gateway.
pub fn container(host: &Ns, network: &NetworkState, address: &str, tag: &str) -> Ns {
    let ns = Ns::new(tag);
    let subnet = network.subnet.expect("bridge network has a subnet");
    let gateway = network.gateway.expect("bridge network has a gateway");
    let host_if = format!("v{}", COUNTER.fetch_add(1, Ordering::SeqCst));
    veth(host, &host_if, &ns, "eth0");
    // Hairpin mode on the bridge port, as Docker sets it: with br_netfilter active (the
    // default here, bridge-nf-call-iptables=1), an endpoint reaching its own published port has
    // its DNATed frame bridged back out the port it came in on, which a bridge drops otherwise.
    host.ok(&format!(
        "ip link set {host_if} master {} && ip link set {host_if} type bridge_slave hairpin on",
        network.bridge_name()
    ));
    ns.ok(&format!(
        "ip addr add {address}/{} dev eth0",
        subnet.prefix_len()
    ));
    ns.ok(&format!("ip route add default via {gateway}"));
    ns
}

/// A NodeState with these networks and ports (endpoints do not matter to the firewall).
pub fn state(networks: Vec<NetworkState>, ports: Vec<PublishedPort>) -> NodeState {
    NodeState {
        networks,
        endpoints: vec![],
        ports,
    }
}
