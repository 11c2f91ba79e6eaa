//! Kernel tests of the embedded DNS: the lesson's name resolution with real `dig` and
//! `ping` inside namespaces, against the real dataplane. Each test has its own host namespace
//! (common::Lab), its own containers and, where it forwards, its own upstream resolver in another
//! namespace. Needs root, iproute2, iputils-ping, dnsutils (dig), socat.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Lab, Ns, bridge_endpoint, bridge_network};
use hickory_server::proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA};
use hickory_server::proto::rr::{RData, Record, RecordType};
use pier_node::dns::{DnsConfig, DnsHandle, DnsServer, UpstreamConfig};
use pier_node::state::{Attachment, NetworkState, NodeState};
use tokio::sync::watch;

const UPSTREAM_HOST: &str = "198.51.100.1";
const UPSTREAM: &str = "198.51.100.53";
/// The IPv6 upstream resolver and the host namespace's address on its link.
const UPSTREAM6_HOST: &str = "2001:db8:53::1";
const UPSTREAM6: &str = "2001:db8:53::53";

fn require_dig() {
    let found = Command::new("sh")
        .args(["-c", "command -v dig"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "this kernel test needs `dig` (apt-get install dnsutils)"
    );
}

/// A running Pier DNS in a lab's host namespace, fed by a watch channel.
struct Dns {
    runtime: tokio::runtime::Runtime,
    handle: Option<DnsHandle>,
    state: watch::Sender<NodeState>,
    resolv_conf: PathBuf,
}

impl Dns {
    fn start(lab: &Lab, state: &NodeState, upstreams: &[&str]) -> Dns {
        Dns::start_limited(
            lab,
            state,
            upstreams,
            UpstreamConfig::default().max_in_flight,
        )
    }

    fn start_limited(
        lab: &Lab,
        state: &NodeState,
        upstreams: &[&str],
        max_in_flight: usize,
    ) -> Dns {
        require_dig();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let resolv_conf = std::env::temp_dir().join(format!("{}-upstream.conf", lab.host.name));
        let text: String = upstreams
            .iter()
            .map(|s| format!("nameserver {s}\n"))
            .collect::<String>()
            + "search corp.example\n";
        std::fs::write(&resolv_conf, text).expect("writing the upstream resolv.conf");
        let (tx, rx) = watch::channel(state.clone());
        let config = DnsConfig {
            port: 53,
            // `ip netns exec` reads /etc/netns/NAME/resolv.conf; namespace names are unique.
            etc_netns: Some("/etc/netns".into()),
            upstream: UpstreamConfig {
                resolv_conf: resolv_conf.clone(),
                timeout: Duration::from_millis(700),
                max_in_flight,
                ..UpstreamConfig::default()
            },
            ..DnsConfig::default()
        };
        let handle = {
            let _inside = runtime.enter();
            DnsServer::start_with(Some(lab.host.path()), rx, config).expect("dns starts")
        };
        let dns = Dns {
            runtime,
            handle: Some(handle),
            state: tx,
            resolv_conf,
        };
        dns.wait_synced();
        dns
    }

    fn handle(&self) -> &DnsHandle {
        self.handle.as_ref().expect("running")
    }

    fn wait_synced(&self) {
        self.runtime.block_on(self.handle().synced());
    }

    /// Sends a new state and waits until views, listeners and files follow it.
    fn set(&self, state: &NodeState) {
        self.state.send_replace(state.clone());
        self.wait_synced();
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            self.runtime.block_on(handle.stop());
        }
        let _ = std::fs::remove_file(&self.resolv_conf);
    }
}

/// What `dig` said: the status and the answer records' data.
#[derive(Debug)]
struct Dig {
    status: String,
    answers: Vec<String>,
    flags: String,
    /// The whole output, shown by assertion messages (through Debug) when a test fails.
    #[allow(dead_code)]
    raw: String,
}

fn dig(ns: &Ns, args: &str) -> Dig {
    // Retries like a real stub resolver: a fresh veth can lose its first packets while the
    // kernel activates its queue (linkwatch runs at most once a second).
    let out = ns.exec(&format!(
        "dig +time=1 +tries=3 +noall +comments +answer +cmd {args}"
    ));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text
        .split("status: ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap_or("NO ANSWER")
        .to_owned();
    let flags = text
        .split("flags: ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .unwrap_or_default()
        .to_owned();
    let mut answers: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().last().map(str::to_owned))
        .collect();
    answers.sort();
    Dig {
        status,
        answers,
        flags,
        raw: text + &String::from_utf8_lossy(&out.stderr),
    }
}

/// The lesson: con1, con2 on workshop-tage; con3 on ch-open.
struct Lesson {
    con1: Ns,
    con2: Ns,
    con3: Ns,
    state: NodeState,
}

fn lesson(lab: &Lab) -> Lesson {
    let (con1, con2, con3) = (
        lab.container("con1"),
        lab.container("con2"),
        lab.container("con3"),
    );
    let state = NodeState {
        networks: vec![
            bridge_network("workshop-tage", "172.18.0.0/16", "172.18.0.1"),
            bridge_network("ch-open", "172.19.0.0/16", "172.19.0.1"),
        ],
        endpoints: vec![
            bridge_endpoint(
                "default/con1",
                &con1,
                "workshop-tage",
                "eth0",
                "172.18.0.2",
                true,
            ),
            bridge_endpoint(
                "default/con2",
                &con2,
                "workshop-tage",
                "eth0",
                "172.18.0.3",
                true,
            ),
            bridge_endpoint("default/con3", &con3, "ch-open", "eth0", "172.19.0.2", true),
        ],
        ports: vec![],
        ..NodeState::default()
    };
    lab.apply_ok(&state);
    Lesson {
        con1,
        con2,
        con3,
        state,
    }
}

#[test]
fn lesson_names_resolve_only_on_shared_networks_until_connect() {
    let lab = Lab::new("dnsl");
    let mut l = lesson(&lab);
    let dns = Dns::start(&lab, &l.state, &[]);

    // con2 resolves con1 and the other way round, through the namespace's own resolv.conf.
    let got = dig(&l.con2, "con1");
    assert_eq!(
        (got.status.as_str(), got.answers.clone()),
        ("NOERROR", vec!["172.18.0.2".to_owned()]),
        "{got:?}"
    );
    assert!(got.flags.contains("aa"), "local answers are authoritative");
    let got = dig(&l.con1, "con2");
    assert_eq!(got.answers, vec!["172.18.0.3"], "{got:?}");
    let conf = std::fs::read_to_string(format!("/etc/netns/{}/resolv.conf", l.con2.name))
        .expect("con2's resolv.conf is written");
    assert!(conf.contains("nameserver 172.18.0.1\n"), "{conf}");
    assert!(conf.contains("search corp.example\n"), "{conf}");
    assert!(conf.contains("options ndots:0\n"), "{conf}");
    assert!(l.con2.ping_eventually("172.18.0.2".parse().expect("ip")));
    assert!(
        l.con2.exec("ping -c1 -W2 con1").status.success(),
        "ping con1 from con2"
    );

    // con3 on ch-open: `ping: bad address 'con1'`.
    let got = dig(&l.con3, "con1");
    assert_eq!(got.status, "NXDOMAIN", "{got:?}");
    assert!(!l.con3.exec("ping -c1 -W1 con1").status.success());

    // docker network connect workshop-tage con3.
    let mut connect = bridge_endpoint(
        "default/con3-workshop-tage",
        &l.con3,
        "workshop-tage",
        "eth1",
        "172.18.0.4",
        false,
    );
    connect.name = "con3".into();
    l.state.endpoints.push(connect);
    lab.apply_ok(&l.state);
    dns.set(&l.state);
    let got = dig(&l.con3, "con1");
    assert_eq!(got.answers, vec!["172.18.0.2"], "{got:?}");
    let ping = l.con3.exec("ping -c1 -W2 con1");
    assert!(
        ping.status.success(),
        "ping -c1 con1 from con3 after connect: {}{}",
        String::from_utf8_lossy(&ping.stdout),
        String::from_utf8_lossy(&ping.stderr)
    );
    // And con1 now sees con3 (its workshop-tage address).
    let got = dig(&l.con1, "con3");
    assert_eq!(got.answers, vec!["172.18.0.4"], "{got:?}");
    assert_eq!(dns.handle().stats().dropped, 0);
}

#[test]
fn network_qualified_names_aliases_and_ptr() {
    let lab = Lab::new("dnsa");
    let mut l = lesson(&lab);
    for (index, alias) in [(0, vec!["web"]), (1, vec!["web", "www"])] {
        l.state.endpoints[index].aliases = alias.into_iter().map(str::to_owned).collect();
    }
    let dns = Dns::start(&lab, &l.state, &[]);
    let _ = &dns;

    let got = dig(&l.con2, "con1.workshop-tage");
    assert_eq!(got.answers, vec!["172.18.0.2"], "{got:?}");
    let got = dig(&l.con2, "CON1.Workshop-Tage");
    assert_eq!(
        got.answers,
        vec!["172.18.0.2"],
        "names are case-insensitive"
    );
    let got = dig(&l.con1, "web");
    assert_eq!(got.answers, vec!["172.18.0.2", "172.18.0.3"], "{got:?}");
    let got = dig(&l.con1, "www.workshop-tage");
    assert_eq!(got.answers, vec!["172.18.0.3"], "{got:?}");
    let got = dig(&l.con2, "-x 172.18.0.2");
    assert_eq!(got.answers, vec!["con1.workshop-tage."], "{got:?}");
    // TTL 0 for local names: a reconnect is seen at once.
    let out = l
        .con2
        .sh("dig +time=2 +tries=1 +noall +answer con1 | awk '{print $2}'");
    assert_eq!(out.trim(), "0", "TTL of a local answer");
    // AAAA of a local name: no data, not an error and not forwarded.
    let got = dig(&l.con2, "con1 AAAA");
    assert_eq!((got.status.as_str(), got.answers.len()), ("NOERROR", 0));
    // From ch-open, all of them are unknown.
    let got = dig(&l.con3, "web");
    assert_eq!(got.status, "NXDOMAIN", "{got:?}");
    assert_eq!(dig(&l.con3, "con1.workshop-tage").status, "SERVFAIL"); // forwarded, no upstream
    assert_eq!(
        dig(&l.con3, "nosuch.workshop-tage").status,
        "SERVFAIL",
        "exactly like an unknown name"
    );
}

#[test]
fn removing_an_endpoint_makes_its_name_vanish_at_once() {
    let lab = Lab::new("dnsr");
    let mut l = lesson(&lab);
    let dns = Dns::start(&lab, &l.state, &[]);
    assert_eq!(dig(&l.con2, "con1").answers, vec!["172.18.0.2"]);
    let con1_conf = PathBuf::from(format!("/etc/netns/{}/resolv.conf", l.con1.name));
    assert!(con1_conf.exists());

    l.state.endpoints.remove(0);
    dns.state.send_replace(l.state.clone());
    // No wait for the rest of the sync: the views alone are what queries see.
    let started = Instant::now();
    let mut status = String::new();
    while started.elapsed() < Duration::from_secs(2) {
        status = dig(&l.con2, "con1").status;
        if status == "NXDOMAIN" {
            break;
        }
    }
    assert_eq!(status, "NXDOMAIN");
    dns.wait_synced();
    assert!(!con1_conf.exists(), "con1's resolv.conf is removed with it");
    lab.apply_ok(&l.state);
}

#[test]
fn forwarded_names_resolve_through_the_upstream_over_udp_and_tcp() {
    let lab = Lab::new("dnsf");
    let l = lesson(&lab);
    let upstream = Upstream::start(&lab);
    // A dead first server: failover to the second.
    let dns = Dns::start(&lab, &l.state, &["198.51.100.99", UPSTREAM]);

    let got = dig(&l.con1, "example.test");
    assert_eq!(
        (got.status.as_str(), got.answers.clone()),
        ("NOERROR", vec!["192.0.2.53".to_owned()]),
        "{got:?}"
    );
    let got = dig(&l.con1, "nosuch.test");
    assert_eq!(got.status, "NXDOMAIN", "{got:?}");
    // The upstream truncates big.test over UDP: the forwarder retries over TCP; the client gets
    // a truncated UDP answer and `dig` retries over TCP to Pier.
    let got = dig(&l.con1, "big.test");
    assert_eq!(got.answers.len(), 100, "{got:?}");
    assert!(upstream.tcp_queries() >= 1, "the forwarder used TCP");
    // A client over TCP.
    let got = dig(&l.con2, "+tcp example.test");
    assert_eq!(got.answers, vec!["192.0.2.53"], "{got:?}");
    let got = dig(&l.con2, "+tcp con1");
    assert_eq!(got.answers, vec!["172.18.0.2"], "{got:?}");
    let stats = dns.handle().stats();
    assert!(stats.forwarded >= 3, "{stats:?}");
}

#[test]
fn internal_networks_are_not_forwarded() {
    let lab = Lab::new("dnsi");
    let mut l = lesson(&lab);
    l.state.networks[0].internal = true;
    lab.apply_ok(&l.state);
    let _upstream = Upstream::start(&lab);
    let _dns = Dns::start(&lab, &l.state, &[UPSTREAM]);
    assert_eq!(dig(&l.con1, "con2").answers, vec!["172.18.0.3"]);
    assert_eq!(dig(&l.con1, "example.test").status, "NXDOMAIN");
    // ch-open is not internal: it forwards.
    assert_eq!(dig(&l.con3, "example.test").answers, vec!["192.0.2.53"]);
}

#[test]
fn listeners_follow_the_bridges_and_garbage_does_not_kill_the_server() {
    let lab = Lab::new("dnsg");
    let l = lesson(&lab);
    let only_workshop = NodeState {
        networks: vec![l.state.networks[0].clone()],
        endpoints: l.state.endpoints[..2].to_vec(),
        ports: vec![],
        ..NodeState::default()
    };
    let dns = Dns::start(&lab, &only_workshop, &[]);
    assert_eq!(
        dns.handle().listening(),
        vec!["172.18.0.1:53".parse().expect("addr")]
    );
    assert_eq!(dig(&l.con3, "@172.19.0.1 con3").status, "NO ANSWER");

    // ch-open comes: its gateway gets a listener; workshop-tage's keeps serving.
    dns.set(&l.state);
    assert_eq!(dns.handle().listening().len(), 2);
    assert_eq!(dig(&l.con3, "@172.19.0.1 con3").answers, vec!["172.19.0.2"]);

    // Garbage: random bytes, a short packet, a response, a huge TCP length prefix.
    l.con1.sh(
        "head -c 300 /dev/urandom | socat -u - UDP:172.18.0.1:53; \
         printf 'x' | socat -u - UDP:172.18.0.1:53; \
         printf '\\000\\001\\201\\200\\000\\001\\000\\000\\000\\000\\000\\000' | socat -u - UDP:172.18.0.1:53; \
         head -c 2000 /dev/urandom | socat -u - UDP:172.18.0.1:53; \
         printf '\\377\\377abc' | socat -T1 - TCP:172.18.0.1:53,connect-timeout=2 || true",
    );
    let got = dig(&l.con2, "con1");
    assert_eq!(
        got.answers,
        vec!["172.18.0.2"],
        "still answers after garbage"
    );

    // ch-open goes: its listener goes, the other stays.
    dns.set(&only_workshop);
    assert_eq!(dns.handle().listening().len(), 1);
    assert_eq!(dig(&l.con2, "con1").answers, vec!["172.18.0.2"]);

    // ch-open comes back: the new listener has the address to itself (no socket of the old one
    // is left in its SO_REUSEPORT group to swallow a share of the queries), so queries from
    // many source ports are all answered at the first try.
    dns.set(&l.state);
    assert_eq!(dns.handle().listening().len(), 2);
    let answered = l
        .con3
        .sh("for i in $(seq 16); do dig +short +tries=1 +time=2 @172.19.0.1 con3 || true; done");
    assert_eq!(
        answered
            .lines()
            .filter(|line| *line == "172.19.0.2")
            .count(),
        16,
        "{answered}"
    );
}

/// Sends `count` queries for `name` A from `socket` back to back (ids from `first_id`) to
/// `server`, reading answers on another thread meanwhile; returns the addresses each id was
/// answered with (ids answered twice or not at all are visible as such).
fn burst(
    socket: &UdpSocket,
    server: SocketAddr,
    name: &str,
    first_id: u16,
    count: u16,
) -> Vec<(u16, Vec<String>)> {
    let receiver = socket.try_clone().expect("clone socket");
    receiver
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let reader = std::thread::spawn(move || {
        let mut answers = Vec::new();
        let mut buffer = [0u8; 1500];
        while answers.len() < usize::from(count) {
            let Ok(n) = receiver.recv(&mut buffer) else {
                break;
            };
            let message = Message::from_vec(&buffer[..n]).expect("one whole DNS message");
            let addresses = message
                .answers
                .iter()
                .filter_map(|record| match &record.data {
                    RData::A(A(address)) => Some(address.to_string()),
                    _ => None,
                })
                .collect();
            answers.push((message.metadata.id, addresses));
        }
        answers
    });
    for id in first_id..first_id + count {
        let mut query = Message::new(id, MessageType::Query, OpCode::Query);
        query.add_query(hickory_server::proto::op::Query::query(
            hickory_server::proto::rr::Name::from_ascii(name).expect("name"),
            RecordType::A,
        ));
        socket
            .send_to(&query.to_vec().expect("encodes"), server)
            .expect("sending a query");
    }
    let mut answers = reader.join().expect("reader");
    answers.sort();
    answers
}

#[test]
fn a_burst_from_one_asker_leaves_in_segmented_datagrams_and_arrives_one_answer_each() {
    let lab = Lab::new("dnsb");
    let l = dual_stack_lesson(&lab);
    let dns = Dns::start(&lab, &l.state, &[]);
    // The paths are up (a fresh veth may lose its first packets).
    assert_eq!(dig(&l.con1, "con2").answers, vec!["172.18.0.3"]);
    assert!(
        ping_eventually(&l.con1, "fd00:18::1"),
        "con1 reaches gateway6"
    );
    for (client, server) in [
        ("0.0.0.0:0", "172.18.0.1:53"),
        ("[::]:0", "[fd00:18::1]:53"),
    ] {
        let socket = pier_node::kernel::netns::run_in(Some(&l.con1.path()), move || {
            UdpSocket::bind(client).expect("client socket")
        })
        .expect("socket in con1");
        let server: SocketAddr = server.parse().expect("address");
        let before = dns.handle().stats().segmented;
        const BURST: u16 = 48;
        // Whether the server finds several queries queued at once is up to the scheduler: a
        // few bursts, each of which must arrive whole, until one went segmented.
        for round in 0..5u16 {
            let first_id = round * BURST;
            let answers = burst(&socket, server, "con2.", first_id, BURST);
            let want: Vec<(u16, Vec<String>)> = (first_id..first_id + BURST)
                .map(|id| (id, vec!["172.18.0.3".to_owned()]))
                .collect();
            assert_eq!(
                answers, want,
                "{server}: each query answered once, on its own"
            );
            if dns.handle().stats().segmented > before {
                break;
            }
        }
        let stats = dns.handle().stats();
        assert!(
            stats.segmented >= before + 2,
            "{server}: answers to one asker left together: {stats:?}"
        );
    }
}

#[test]
fn a_flood_of_forwarded_queries_is_shed_and_local_names_still_answer() {
    let lab = Lab::new("dnsx");
    let l = lesson(&lab);
    // An upstream that never answers: every forwarded query holds its slot for the whole timeout.
    lab.host
        .sh("ip link add sink0 type veth peer name sink1 && ip addr add 198.51.100.1/24 dev sink0 && ip link set sink0 up && ip link set sink1 up");
    let dns = Dns::start_limited(&lab, &l.state, &["198.51.100.99"], 8);
    let socket = pier_node::kernel::netns::run_in(Some(&l.con1.path()), || {
        UdpSocket::bind("0.0.0.0:0").expect("client socket")
    })
    .expect("socket in con1");
    for i in 0..300u16 {
        let mut query = Message::new(i, MessageType::Query, OpCode::Query);
        query.add_query(hickory_server::proto::op::Query::query(
            hickory_server::proto::rr::Name::from_ascii(format!("x{i}.example.")).expect("name"),
            RecordType::A,
        ));
        let bytes = query.to_vec().expect("encodes");
        socket
            .send_to(&bytes, "172.18.0.1:53")
            .expect("sending a query");
    }
    // While the flood is in flight, local names answer at once.
    let started = Instant::now();
    let got = dig(&l.con2, "+tries=1 con1");
    assert_eq!(got.answers, vec!["172.18.0.2"], "{got:?}");
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    let stats = dns.handle().stats();
    assert!(
        stats.dropped >= 250,
        "queries beyond 8 in flight are dropped: {stats:?}"
    );
    assert!(stats.forwarded >= 300, "{stats:?}");
}

#[test]
fn strangers_are_refused() {
    let lab = Lab::new("dnss");
    let l = lesson(&lab);
    let _dns = Dns::start(&lab, &l.state, &[]);
    // The host itself is no endpoint: Pier is not an open resolver.
    let got = dig(&lab.host, "@172.18.0.1 con1");
    assert_eq!(got.status, "REFUSED", "{got:?}");
}

// ---------------------------------------------------------------------------------------------
// IPv6 and dual-stack.

/// Pings `address` (either family) until it answers, for up to 5 s.
fn ping_eventually(ns: &Ns, address: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if ns.exec(&format!("ping -c1 -W1 {address}")).status.success() {
            return true;
        }
    }
    false
}

/// Gives the bridges and endpoints of `state` their IPv6 addresses by hand, without DAD (as the
/// dataplane adds Pier's). `replace`: a no-op where the dataplane already did it.
fn add_ipv6_by_hand(lab: &Lab, state: &NodeState, containers: &[&Ns]) {
    let prefix = |network: &NetworkState| network.subnet6.map(|s| s.prefix_len());
    for network in &state.networks {
        if let (Some(gateway6), Some(len)) = (network.gateway6, prefix(network)) {
            lab.host.sh(&format!(
                "ip -6 addr replace {gateway6}/{len} dev {} nodad",
                network.bridge_name()
            ));
        }
    }
    for endpoint in &state.endpoints {
        let Attachment::Bridge(bridge) = &endpoint.attachment else {
            continue;
        };
        let network = state.networks.iter().find(|n| n.name == bridge.network);
        let (Some(address6), Some(len)) = (bridge.address6, network.and_then(prefix)) else {
            continue;
        };
        let ns = containers
            .iter()
            .find(|ns| ns.netns() == endpoint.netns)
            .expect("the endpoint's container");
        ns.sh(&format!(
            "ip -6 addr replace {address6}/{len} dev {} nodad",
            bridge.interface
        ));
    }
}

fn with_ipv6(mut state: NodeState, network: usize, subnet6: &str, gateway6: &str) -> NodeState {
    state.networks[network].subnet6 = Some(subnet6.parse().expect("subnet6"));
    state.networks[network].gateway6 = Some(gateway6.parse().expect("gateway6"));
    state
}

fn set_address6(state: &mut NodeState, endpoint: usize, address6: &str) {
    if let Attachment::Bridge(bridge) = &mut state.endpoints[endpoint].attachment {
        bridge.address6 = Some(address6.parse().expect("address6"));
    }
}

/// The lesson on dual-stack networks: workshop-tage fd00:18::/64 (con1 ::2, con2 ::3), ch-open
/// fd00:19::/64 (con3 ::2).
fn dual_stack_lesson(lab: &Lab) -> Lesson {
    let mut l = lesson(lab);
    l.state = with_ipv6(l.state, 0, "fd00:18::/64", "fd00:18::1");
    l.state = with_ipv6(l.state, 1, "fd00:19::/64", "fd00:19::1");
    set_address6(&mut l.state, 0, "fd00:18::2");
    set_address6(&mut l.state, 1, "fd00:18::3");
    set_address6(&mut l.state, 2, "fd00:19::2");
    lab.apply_ok(&l.state);
    add_ipv6_by_hand(lab, &l.state, &[&l.con1, &l.con2, &l.con3]);
    l
}

#[test]
fn dual_stack_names_answer_aaaa_and_ptr_over_the_ipv6_gateway() {
    let lab = Lab::new("dns6");
    let l = dual_stack_lesson(&lab);
    let dns = Dns::start(&lab, &l.state, &[]);
    let listening = dns.handle().listening();
    for address in ["172.18.0.1:53", "[fd00:18::1]:53", "[fd00:19::1]:53"] {
        let address: SocketAddr = address.parse().expect("addr");
        assert!(listening.contains(&address), "{address}: {listening:?}");
    }
    assert!(
        ping_eventually(&l.con2, "fd00:18::1"),
        "con2 reaches gateway6"
    );

    // Over IPv6, from con2's IPv6 address: AAAA, A, the network-qualified name, TCP.
    let got = dig(&l.con2, "@fd00:18::1 AAAA con1");
    assert_eq!(
        (got.status.as_str(), got.answers.clone()),
        ("NOERROR", vec!["fd00:18::2".to_owned()]),
        "{got:?}"
    );
    assert!(got.flags.contains("aa"), "local answers are authoritative");
    assert_eq!(
        dig(&l.con2, "@fd00:18::1 A con1").answers,
        vec!["172.18.0.2"]
    );
    let got = dig(&l.con2, "@fd00:18::1 +tcp AAAA CON1.workshop-tage");
    assert_eq!(got.answers, vec!["fd00:18::2"], "{got:?}");
    // PTR in ip6.arpa, over either family.
    let got = dig(&l.con2, "@fd00:18::1 -x fd00:18::2");
    assert_eq!(got.answers, vec!["con1.workshop-tage."], "{got:?}");
    let got = dig(&l.con2, "-x fd00:18::2");
    assert_eq!(got.answers, vec!["con1.workshop-tage."], "{got:?}");
    // The namespace's resolv.conf keeps the IPv4 gateway (one nameserver per network); AAAA
    // through it, and `ping -6` by name.
    let conf = std::fs::read_to_string(format!("/etc/netns/{}/resolv.conf", l.con2.name))
        .expect("con2's resolv.conf is written");
    assert!(
        conf.contains(
            "nameserver 172.18.0.1
"
        ),
        "{conf}"
    );
    assert!(!conf.contains("fd00:18::1"), "{conf}");
    assert_eq!(dig(&l.con2, "AAAA con1").answers, vec!["fd00:18::2"]);
    assert!(
        ping_eventually(&l.con2, "fd00:18::2"),
        "con2 reaches con1 over IPv6"
    );
    let ping = l.con2.exec("ping -6 -c1 -W2 con1");
    assert!(
        ping.status.success(),
        "ping -6 con1 from con2: {}{}",
        String::from_utf8_lossy(&ping.stdout),
        String::from_utf8_lossy(&ping.stderr)
    );

    // con3 asks from its IPv6 address on ch-open: workshop-tage's names are unknown.
    let got = dig(&l.con3, "@fd00:19::1 AAAA con1");
    assert_eq!(got.status, "NXDOMAIN", "{got:?}");
    assert_eq!(
        dig(&l.con3, "@fd00:19::1 AAAA con3").answers,
        vec!["fd00:19::2"]
    );
    // The host is no endpoint, over IPv6 either.
    let got = dig(&lab.host, "@fd00:18::1 AAAA con1");
    assert_eq!(got.status, "REFUSED", "{got:?}");
}

/// A name with only IPv4 (con2 after it loses its IPv6 address) answers AAAA with NODATA.
#[test]
fn a_name_without_ipv6_answers_aaaa_with_nodata_and_listeners_follow_gateway6() {
    let lab = Lab::new("dns6n");
    let mut l = dual_stack_lesson(&lab);
    let dns = Dns::start(&lab, &l.state, &[]);
    if let Attachment::Bridge(bridge) = &mut l.state.endpoints[1].attachment {
        bridge.address6 = None;
    }
    // ch-open drops IPv6: its IPv6 listener goes, the IPv4 one stays.
    l.state.networks[1].subnet6 = None;
    l.state.networks[1].gateway6 = None;
    if let Attachment::Bridge(bridge) = &mut l.state.endpoints[2].attachment {
        bridge.address6 = None;
    }
    dns.set(&l.state);
    let got = dig(&l.con1, "@fd00:18::1 AAAA con2");
    assert_eq!(
        (got.status.as_str(), got.answers.len()),
        ("NOERROR", 0),
        "{got:?}"
    );
    assert_eq!(
        dig(&l.con1, "@fd00:18::1 A con2").answers,
        vec!["172.18.0.3"]
    );
    let listening = dns.handle().listening();
    assert!(
        !listening.contains(&"[fd00:19::1]:53".parse().expect("addr")),
        "{listening:?}"
    );
    assert!(
        listening.contains(&"172.19.0.1:53".parse().expect("addr")),
        "{listening:?}"
    );
    assert_eq!(dig(&l.con3, "con3").answers, vec!["172.19.0.2"]);
}

/// An IPv6-only network (no IPv4 at all): its endpoints' resolv.conf names gateway6, they ask
/// over IPv6 and get AAAA, NODATA for A, PTR, and forwarded names. The listener is bound before
/// the bridge has gateway6, which then comes with DAD (tentative for a while): it serves once the
/// address is usable. The links are made by hand (a plain bridge, not Pier's): only the DNS
/// server is under test here.
#[test]
fn an_ipv6_only_networks_endpoints_ask_over_ipv6() {
    let lab = Lab::new("dns6o");
    let (con4, con5) = (lab.container("con4"), lab.container("con5"));
    lab.host
        .sh("ip link add v6br0 type bridge && ip link set v6br0 up");
    for (ns, address, host_side) in [(&con4, "fd00:20::4", "h4"), (&con5, "fd00:20::5", "h5")] {
        lab.host.sh(&format!(
            "ip link add {host_side} type veth peer name eth0 netns {} && \
             ip link set {host_side} master v6br0 up",
            ns.name
        ));
        ns.sh(&format!(
            "ip -6 addr add {address}/64 dev eth0 nodad && ip link set eth0 up"
        ));
    }
    let mut network = bridge_network("v6net", "10.0.0.0/8", "10.0.0.1");
    network.subnet = None;
    network.gateway = None;
    let mut state = with_ipv6(
        NodeState {
            networks: vec![network],
            ..NodeState::default()
        },
        0,
        "fd00:20::/64",
        "fd00:20::1",
    );
    for (ns, id, address6) in [
        (&con4, "default/con4", "fd00:20::4"),
        (&con5, "default/con5", "fd00:20::5"),
    ] {
        let mut endpoint = bridge_endpoint(id, ns, "v6net", "eth0", "10.0.0.99", true);
        if let Attachment::Bridge(bridge) = &mut endpoint.attachment {
            bridge.address = None;
            bridge.address6 = Some(address6.parse().expect("address6"));
        }
        state.endpoints.push(endpoint);
    }
    let upstream = Upstream::start_at(&lab, UPSTREAM6_HOST, UPSTREAM6);
    let dns = Dns::start(&lab, &state, &[UPSTREAM6]);
    assert_eq!(
        dns.handle().listening(),
        vec!["[fd00:20::1]:53".parse::<SocketAddr>().expect("addr")]
    );
    lab.host.sh("ip -6 addr add fd00:20::1/64 dev v6br0");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lab
        .host
        .sh("ip -6 addr show dev v6br0 tentative")
        .is_empty()
    {
        assert!(Instant::now() < deadline, "DAD of fd00:20::1 never ends");
        std::thread::sleep(Duration::from_millis(50));
    }
    let conf = std::fs::read_to_string(format!("/etc/netns/{}/resolv.conf", con5.name))
        .expect("con5's resolv.conf is written");
    let nameservers: Vec<&str> = conf
        .lines()
        .filter(|l| l.starts_with("nameserver"))
        .collect();
    assert_eq!(nameservers, vec!["nameserver fd00:20::1"], "{conf}");
    assert!(
        ping_eventually(&con5, "fd00:20::1"),
        "con5 reaches gateway6"
    );

    // Through the resolv.conf, that is over IPv6.
    let got = dig(&con5, "AAAA con4");
    assert_eq!(
        (got.status.as_str(), got.answers.clone()),
        ("NOERROR", vec!["fd00:20::4".to_owned()]),
        "{got:?}"
    );
    let got = dig(&con5, "A con4");
    assert_eq!(
        (got.status.as_str(), got.answers.len()),
        ("NOERROR", 0),
        "NODATA: {got:?}"
    );
    assert_eq!(
        dig(&con5, "+tcp AAAA con4.v6net").answers,
        vec!["fd00:20::4"]
    );
    assert_eq!(dig(&con4, "-x fd00:20::5").answers, vec!["con5.v6net."]);
    let ping = con5.exec("ping -c1 -W2 con4");
    assert!(
        ping.status.success(),
        "ping con4 from con5: {}{}",
        String::from_utf8_lossy(&ping.stdout),
        String::from_utf8_lossy(&ping.stderr)
    );
    // Forwarded to the IPv6 upstream, over UDP and (truncated) TCP.
    assert_eq!(
        dig(&con5, "AAAA example.test").answers,
        vec!["2001:db8::53"]
    );
    assert_eq!(dig(&con5, "example.test").answers, vec!["192.0.2.53"]);
    assert_eq!(dig(&con5, "big.test").answers.len(), 100);
    assert!(
        upstream.tcp_queries() >= 1,
        "the forwarder used TCP over IPv6"
    );
    assert_eq!(dig(&con5, "nosuch.test").status, "NXDOMAIN");
}

/// IPv4 endpoints forward through an IPv6 upstream of the node (a dead IPv4 one first).
#[test]
fn forwarding_reaches_an_ipv6_upstream() {
    let lab = Lab::new("dnsf6");
    let l = lesson(&lab);
    let _upstream = Upstream::start_at(&lab, UPSTREAM6_HOST, UPSTREAM6);
    let dns = Dns::start(&lab, &l.state, &["198.51.100.99", UPSTREAM6]);
    let got = dig(&l.con1, "example.test");
    assert_eq!(
        (got.status.as_str(), got.answers.clone()),
        ("NOERROR", vec!["192.0.2.53".to_owned()]),
        "{got:?}"
    );
    assert_eq!(
        dig(&l.con1, "AAAA example.test").answers,
        vec!["2001:db8::53"]
    );
    assert!(dns.handle().stats().forwarded >= 2);
}

// ---------------------------------------------------------------------------------------------
// A tiny upstream resolver in its own namespace: example.test → 192.0.2.53, big.test → 100
// addresses (truncated over UDP), NXDOMAIN for the rest.

struct Upstream {
    _ns: Ns,
    stop: Arc<AtomicBool>,
    tcp_queries: Arc<std::sync::atomic::AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Upstream {
    fn start(lab: &Lab) -> Upstream {
        Upstream::start_at(lab, UPSTREAM_HOST, UPSTREAM)
    }

    /// The upstream at `address` (IPv4 or IPv6), the host namespace at `host` on their link.
    fn start_at(lab: &Lab, host: &str, address: &str) -> Upstream {
        let ns = lab.container("upstream");
        let ip: IpAddr = address.parse().expect("upstream address");
        // IPv6 addresses without DAD, as the dataplane adds Pier's: usable at once.
        let (prefix, nodad) = if ip.is_ipv6() {
            (64, "nodad")
        } else {
            (24, "")
        };
        lab.host.sh(&format!(
            "ip link add up0 type veth peer name eth0 netns {} && \
             ip addr add {host}/{prefix} dev up0 {nodad} && ip link set up0 up",
            ns.name
        ));
        ns.sh(&format!(
            "ip addr add {address}/{prefix} dev eth0 {nodad} && ip link set eth0 up && \
             ip route add default via {host}"
        ));
        assert!(
            ping_eventually(&lab.host, address),
            "the upstream namespace is reachable from the host namespace"
        );
        let bind = SocketAddr::new(ip, 53);
        let (udp, tcp) = pier_node::kernel::netns::run_in(Some(&ns.path()), move || {
            (
                UdpSocket::bind(bind).expect("upstream udp"),
                TcpListener::bind(bind).expect("upstream tcp"),
            )
        })
        .expect("binding in the upstream namespace");
        let stop = Arc::new(AtomicBool::new(false));
        let tcp_queries = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut threads = Vec::new();
        udp.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let s = stop.clone();
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !s.load(Ordering::Relaxed) {
                let Ok((n, from)) = udp.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(answer) = upstream_answer(&buf[..n], true) {
                    let _ = udp.send_to(&answer, from);
                }
            }
        }));
        tcp.set_nonblocking(true).expect("nonblocking");
        let (s, count) = (stop.clone(), tcp_queries.clone());
        threads.push(std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Ok((mut stream, _)) = tcp.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let mut len = [0u8; 2];
                if stream.read_exact(&mut len).is_err() {
                    continue;
                }
                let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
                if stream.read_exact(&mut query).is_err() {
                    continue;
                }
                count.fetch_add(1, Ordering::SeqCst);
                if let Some(answer) = upstream_answer(&query, false) {
                    let mut framed = (answer.len() as u16).to_be_bytes().to_vec();
                    framed.extend_from_slice(&answer);
                    let _ = stream.write_all(&framed);
                }
            }
        }));
        Upstream {
            _ns: ns,
            stop,
            tcp_queries,
            threads,
        }
    }

    fn tcp_queries(&self) -> usize {
        self.tcp_queries.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn upstream_answer(query: &[u8], udp: bool) -> Option<Vec<u8>> {
    let query = Message::from_vec(query).ok()?;
    let question = query.queries.first()?.clone();
    let mut answer = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
    answer.metadata.recursion_desired = query.metadata.recursion_desired;
    answer.metadata.recursion_available = true;
    answer.add_query(question.clone());
    let name = question.name().to_lowercase().to_ascii();
    let add = |answer: &mut Message, ip: Ipv4Addr| {
        answer.add_answer(Record::from_rdata(
            question.name().clone(),
            60,
            RData::A(A(ip)),
        ));
    };
    match (name.as_str(), question.query_type()) {
        ("example.test.", RecordType::A) => add(&mut answer, Ipv4Addr::new(192, 0, 2, 53)),
        ("example.test.", RecordType::AAAA) => {
            answer.add_answer(Record::from_rdata(
                question.name().clone(),
                60,
                RData::AAAA(AAAA(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x53))),
            ));
        }
        ("big.test.", RecordType::A) if udp => answer.metadata.truncation = true,
        ("big.test.", RecordType::A) => {
            for i in 0..100 {
                add(&mut answer, Ipv4Addr::new(192, 0, 2, i + 100));
            }
        }
        _ => answer.metadata.response_code = ResponseCode::NXDomain,
    }
    answer.to_vec().ok()
}
