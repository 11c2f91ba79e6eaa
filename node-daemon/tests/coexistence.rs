//! The dataplane on machines that are not empty: beside Docker (iptables-nft chains, `FORWARD`
//! policy DROP, br_netfilter), beside a strict iptables-legacy firewall (ufw's defaults: `INPUT`
//! and `FORWARD` DROP), beside firewalls written natively in nftables (firewalld's nftables
//! backend, a hand-written `inet filter`), probed from another host of the LAN, and attacked from a container
//! through its gateway; and the same for IPv6 (Docker's ip6tables, ufw's, an `ip6` table). Real
//! packets throughout; every test has its own namespaces.
//!
//! ```text
//!  lan (192.0.2.2) ──uplink0── host (192.0.2.1) ── pier bridge "web" 172.18.0.0/16 ── con1 .2, con2 .3
//!                                               ├── pier bridge "vault" (internal) 10.77.0.0/24 ── vault1 .2
//!                                               └── docker0 172.17.0.0/16 ── dockercon .2  (Docker's own)
//! ```

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use common::{Lab, Ns, bridge_endpoint, bridge_network, published};
use pier_node::dataplane::{ObjectKey, Outcome, Scope};
use pier_node::firewall::native::{self, NativeHook};
use pier_node::firewall::{self, iptables};
use pier_node::state::{Attachment, NetworkState, NodeState};

const HOST_UPLINK: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const LAN: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 1);
const CON1: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 2);
const VAULT1: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const DOCKERCON: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 2);

/// What Docker sets up on start (shared with the whole-system tests).
const DOCKER_HOST: &str = include_str!("../../tests/fixtures/docker-host.sh");

/// ufw's defaults (deny incoming, deny routed), through iptables-legacy.
const STRICT_HOST: &str = "\
sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1
iptables-legacy -A INPUT -i lo -j ACCEPT
iptables-legacy -A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
iptables-legacy -P INPUT DROP
iptables-legacy -P FORWARD DROP
";

/// What firewalld's nftables backend amounts to for Pier's traffic (zone public, no services):
/// base chains at forward and input that reject or drop everything not allowed. Loaded with
/// `nft -f`, as firewalld does (without the owner flag, which only a live owner keeps).
const FIREWALLD_HOST: &str = "\
table inet firewalld {
    chain filter_INPUT {
        type filter hook input priority filter + 10; policy drop;
        ct state established,related accept
        ct state invalid drop
        iifname \"lo\" accept
        reject with icmpx admin-prohibited
    }
    chain filter_FORWARD {
        type filter hook forward priority filter + 10; policy accept;
        ct state established,related accept
        ct state invalid drop
        iifname \"lo\" accept
        reject with icmpx admin-prohibited
    }
    chain filter_OUTPUT {
        type filter hook output priority filter + 10; policy accept;
        oifname \"lo\" accept
    }
}
";

/// A hand-written firewall: `inet filter` with forward policy drop, and an `ip` family table
/// that drops what comes in.
const INET_FILTER_HOST: &str = "\
table inet filter {
    chain forward {
        type filter hook forward priority filter; policy drop;
    }
}
table ip guard {
    chain in {
        type filter hook input priority filter; policy drop;
        ct state established,related accept
        iifname \"lo\" accept
    }
}
";

/// Loads a ruleset into the node's namespace with `nft -f`.
fn nft_load(host: &Ns, ruleset: &str) {
    host.sh(&format!("nft -f - <<'EOF'\n{ruleset}EOF"));
}

/// `nft list ruleset` (no handles, no counters in these rulesets).
fn nft_ruleset(host: &Ns) -> String {
    host.sh("nft list ruleset")
}

/// Pier's rules as `nft list` prints them, in order.
fn pier_lines(hook: NativeHook) -> Vec<String> {
    native::desired(hook)
        .iter()
        .map(|r| format!("{} comment \"{}\"", r.text, r.comment()))
        .collect()
}

/// The rules of one chain as `nft list chain` prints them.
fn chain_rules(host: &Ns, chain: &str) -> Vec<String> {
    host.sh(&format!("nft list chain {chain}"))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("table") && !l.starts_with("chain"))
        .filter(|l| !l.starts_with("type") && *l != "}")
        .map(str::to_owned)
        .collect()
}

/// Deletes, by hand, the rule of Pier's in `inet firewalld`'s `chain` whose text has `what`.
fn delete_pier_rule(host: &Ns, chain: &str, what: &str) {
    let handle = host
        .sh(&format!("nft -a list chain inet firewalld {chain}"))
        .lines()
        .find(|l| l.contains(what) && l.contains("pier:coexist:"))
        .and_then(|l| l.rsplit("# handle ").next())
        .map(|h| h.trim().to_owned())
        .expect("Pier's rule has a handle");
    host.sh(&format!(
        "nft delete rule inet firewalld {chain} handle {handle}"
    ));
}

fn require_iptables() {
    common::require_root_with(&["iptables-nft", "iptables-legacy"]);
}

/// `iptables-save` of one backend without its comments and packet counters: what a reset must
/// leave exactly as it was.
fn iptables_save(host: &Ns, backend: &str) -> String {
    host.sh(&format!("{backend}-save"))
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match l.find(" [") {
            Some(at) if l.starts_with(':') => &l[..at],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A host of the LAN, linked to the node by a veth Pier does not own, with a route to the
/// container subnets via the node (what a router or a curious neighbour would have).
fn lan_host(lab: &Lab) -> Ns {
    let lan = lab.lan_computer("lan", HOST_UPLINK, LAN);
    lan.sh(&format!(
        "ip route add 172.16.0.0/12 via {HOST_UPLINK} && ip route add 10.77.0.0/24 via {HOST_UPLINK}"
    ));
    lan
}

struct Node {
    con1: Ns,
    con2: Ns,
    vault1: Ns,
    state: NodeState,
}

/// con1 and con2 on `web`, vault1 on the internal `vault`; con1's port 80 published on 8000 of
/// every address and 8080 of 127.0.0.1 only.
fn node(lab: &Lab) -> Node {
    let (con1, con2, vault1) = (
        lab.container("con1"),
        lab.container("con2"),
        lab.container("vault1"),
    );
    let mut vault = bridge_network("vault", "10.77.0.0/24", "10.77.0.1");
    vault.internal = true;
    let mut loopback_only = published("default/web-lo", "default/con1", 8080, "172.18.0.2", 80);
    loopback_only.host_ip = Ipv4Addr::LOCALHOST.into();
    let state = NodeState {
        networks: vec![bridge_network("web", "172.18.0.0/16", "172.18.0.1"), vault],
        endpoints: vec![
            bridge_endpoint("default/con1", &con1, "web", "eth0", "172.18.0.2", true),
            bridge_endpoint("default/con2", &con2, "web", "eth0", "172.18.0.3", true),
            bridge_endpoint(
                "default/vault1",
                &vault1,
                "vault",
                "eth0",
                "10.77.0.2",
                true,
            ),
        ],
        ports: vec![
            published("default/web", "default/con1", 8000, "172.18.0.2", 80),
            loopback_only,
        ],
        ..NodeState::default()
    };
    Node {
        con1,
        con2,
        vault1,
        state,
    }
}

#[test]
fn beside_docker_the_lesson_traffic_flows_and_reset_leaves_dockers_rules_as_they_were() {
    require_iptables();
    let lab = Lab::new("dock");
    let lan = lan_host(&lab);
    lab.host.sh(DOCKER_HOST);
    let dockercon = lab.container("dockercon");
    lab.host.sh(&format!(
        "ip link add vdock type veth peer name eth0 netns {c} && ip link set vdock master docker0 up",
        c = dockercon.name
    ));
    dockercon.sh("ip addr add 172.17.0.2/16 dev eth0 && ip link set eth0 up && ip route add default via 172.17.0.1");
    let _lan_web = lan.serve_http(80, "hello from the lan");
    assert_eq!(
        dockercon.http_get_eventually(LAN, 80).as_deref(),
        Some("hello from the lan"),
        "Docker's container reaches the LAN before Pier"
    );
    let before = iptables_save(&lab.host, "iptables-nft");

    let node = node(&lab);
    lab.apply_ok(&node.state);
    lab.assert_converged(&node.state);
    let _web = node.con1.serve_http(80, "hello from con1");

    let traffic_flows = || {
        assert!(node.con2.ping_eventually(CON1), "same network, bridged");
        assert_eq!(
            lan.http_get_eventually(HOST_UPLINK, 8000).as_deref(),
            Some("hello from con1"),
            "published port from the LAN"
        );
        assert_eq!(
            node.con2.http_get_eventually(HOST_UPLINK, 8000).as_deref(),
            Some("hello from con1"),
            "published port from a container (hairpin)"
        );
        assert_eq!(
            node.con1.http_get_eventually(LAN, 80).as_deref(),
            Some("hello from the lan"),
            "a container reaches the outside (masquerade)"
        );
    };
    traffic_flows();
    // The internal network stays closed both ways, Docker's container is unharmed.
    assert_eq!(node.vault1.http_get(LAN, 80), None, "internal egress");
    assert!(!lan.ping(VAULT1), "internal ingress");
    assert_eq!(
        dockercon.http_get_eventually(LAN, 80).as_deref(),
        Some("hello from the lan"),
        "Docker's container beside Pier"
    );
    // Docker isolates its bridge from every other one, Pier's included, and Pier's accepts in
    // Docker's table do not open Docker's containers to Pier's: only Docker's published port.
    assert!(!dockercon.ping(CON1), "docker0 -> pier bridge");
    let _docker_web = dockercon.serve_http(80, "hello from docker");
    assert_eq!(
        node.con1.http_get(DOCKERCON, 80),
        None,
        "pier container -> Docker container, unpublished"
    );
    assert!(
        !node.con1.ping(DOCKERCON),
        "pier container pings a Docker container"
    );
    assert_eq!(
        node.con1.http_get_eventually(HOST_UPLINK, 8888).as_deref(),
        Some("hello from docker"),
        "pier container -> Docker's published port"
    );

    // Without Pier's accepts Docker's DROP policy takes the traffic: what a firewall reload
    // (or a Docker that flushed FORWARD) leaves. The next full apply (the agent's resync)
    // puts them back.
    lab.host.sh(&format!(
        "iptables-nft -D FORWARD -m comment --comment '{}' -j {}",
        iptables::JUMP_COMMENT,
        iptables::CHAIN_FORWARD
    ));
    assert!(
        !node.con2.ping(CON1),
        "Docker's FORWARD DROP without Pier's jump"
    );
    assert_eq!(lan.http_get(HOST_UPLINK, 8000), None);
    let plan = lab.dataplane.plan(&node.state, &Scope::Full).expect("plan");
    assert!(
        plan.to_string()
            .contains("jump FORWARD -> PIER-FORWARD inserted first"),
        "{plan}"
    );
    lab.apply_ok(&node.state);
    lab.assert_converged(&node.state);
    traffic_flows();

    // `pier down`: Docker's rules exactly as before, Docker's container still fine.
    let report = lab.dataplane.reset().expect("reset");
    assert!(report.is_success(), "{report}");
    assert_eq!(iptables_save(&lab.host, "iptables-nft"), before);
    assert_eq!(
        dockercon.http_get_eventually(LAN, 80).as_deref(),
        Some("hello from the lan")
    );
}

#[test]
fn beside_a_strict_legacy_firewall_pier_opens_only_its_bridges_and_dns() {
    require_iptables();
    let lab = Lab::new("strict");
    let lan = lan_host(&lab);
    lab.host.sh(STRICT_HOST);
    let before = iptables_save(&lab.host, "iptables-legacy");
    let node = node(&lab);
    lab.apply_ok(&node.state);
    lab.assert_converged(&node.state);
    let _web = node.con1.serve_http(80, "hello from con1");
    // A stand-in for the embedded DNS on the gateway, and another service of the node's there.
    let _dns = lab.host.serve_udp(53, "dns-answer");
    let _ssh = lab.host.serve_http(22, "the node's own service");

    assert!(node.con2.ping_eventually(CON1), "same network");
    assert_eq!(
        lan.http_get_eventually(HOST_UPLINK, 8000).as_deref(),
        Some("hello from con1"),
        "published port from the LAN"
    );
    assert_eq!(
        node.con2.udp_request(GATEWAY, 53).as_deref(),
        Some("dns-answer"),
        "DNS on the gateway through INPUT DROP"
    );
    assert_eq!(
        node.con2.http_get(GATEWAY, 22),
        None,
        "only DNS is opened on the node, not its other services"
    );
    let report = lab.dataplane.reset().expect("reset");
    assert!(report.is_success(), "{report}");
    assert_eq!(iptables_save(&lab.host, "iptables-legacy"), before);
}

#[test]
fn from_the_lan_only_published_ports_reach_containers() {
    common::require_root();
    let lab = Lab::new("lanp");
    let lan = lan_host(&lab);
    let node = node(&lab);
    lab.apply_ok(&node.state);
    let _web = node.con1.serve_http(80, "hello from con1");
    let _other = node.con1.serve_http(9000, "not published");

    assert_eq!(
        lan.http_get_eventually(HOST_UPLINK, 8000).as_deref(),
        Some("hello from con1"),
        "the published port"
    );
    assert_eq!(lan.http_get(CON1, 80), None, "routed to the container");
    assert_eq!(lan.http_get(CON1, 9000), None, "an unpublished port");
    assert!(!lan.ping(CON1), "ping routed to the container");
    assert_eq!(
        lan.http_get(HOST_UPLINK, 8080),
        None,
        "a port published on 127.0.0.1"
    );
    assert_eq!(
        lab.host
            .http_get_eventually(Ipv4Addr::LOCALHOST, 8080)
            .as_deref(),
        Some("hello from con1"),
        "127.0.0.1:8080 from the node itself"
    );
    // Replies to what containers start still come back.
    let _lan_web = lan.serve_http(80, "hello from the lan");
    assert_eq!(
        node.con2.http_get_eventually(LAN, 80).as_deref(),
        Some("hello from the lan")
    );
    // Control: without table inet pier the routed packets reach the container.
    firewall::reset(Some(&lab.host.path())).expect("firewall reset");
    assert_eq!(
        lan.http_get_eventually(CON1, 9000).as_deref(),
        Some("not published")
    );
}

#[test]
fn containers_never_reach_the_nodes_loopback_services() {
    common::require_root();
    let lab = Lab::new("lo8558");
    let node = node(&lab);
    lab.apply_ok(&node.state);
    // Services of the node bound to 127.0.0.1 only.
    let received = std::env::temp_dir().join(format!("{}-udp-received", lab.host.name));
    let _ = std::fs::remove_file(&received);
    let _udp = lab.host.spawn(&format!(
        "socat -u UDP4-RECV:5555,bind=127.0.0.1 OPEN:{},creat,append",
        received.display()
    ));
    let _tcp = lab
        .host
        .spawn("socat TCP4-LISTEN:5556,bind=127.0.0.1,fork,reuseaddr SYSTEM:'echo hi'");
    std::thread::sleep(std::time::Duration::from_millis(300));
    // What an attacker in a container does (CVE-2020-8558): route 127.0.0.0/8 to the gateway.
    node.con1.sh(&format!(
        "ip addr flush dev lo && \
         sysctl -qw net.ipv4.conf.eth0.route_localnet=1 && \
         ip route add 127.0.0.0/8 via {GATEWAY} dev eth0"
    ));
    let attack = |n: usize| {
        for _ in 0..n {
            node.con1
                .exec("echo secret | busybox timeout 2 socat -u - UDP4-SENDTO:127.0.0.1:5555");
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
        let udp = std::fs::read_to_string(&received).unwrap_or_default();
        let tcp = node
            .con1
            .exec("busybox timeout 3 socat -T 2 - TCP4:127.0.0.1:5556,connect-timeout=2 </dev/null")
            .status
            .success();
        (udp.contains("secret"), tcp)
    };
    assert_eq!(attack(3), (false, false), "UDP arrived / TCP connected");
    // Control: the same attack works without table inet pier (route_localnet=1 stays on the
    // bridge, as the node's own 127.0.0.1:hostPort needs it).
    firewall::reset(Some(&lab.host.path())).expect("firewall reset");
    assert_eq!(
        attack(3),
        (true, true),
        "the attack itself must work without the rule"
    );
    let _ = std::fs::remove_file(&received);
}

#[test]
fn beside_firewalld_on_nftables_pier_opens_only_its_bridges_and_dns() {
    common::require_root_with(&["nft"]);
    let lab = Lab::new("fwd");
    let lan = lan_host(&lab);
    // Where Docker or Kubernetes loaded br_netfilter, even traffic bridged within one Pier
    // network meets firewalld's forward chain.
    lab.host
        .sh("sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1");
    nft_load(&lab.host, FIREWALLD_HOST);
    let before = nft_ruleset(&lab.host);

    let node = node(&lab);
    let report = lab.apply_ok(&node.state);
    assert!(
        matches!(
            report.outcome(&ObjectKey::Nftables),
            Some(Outcome::Changed(_))
        ),
        "{report}"
    );
    lab.assert_converged(&node.state);
    // Pier's rules first in each chain, as nft prints them; firewalld's rules untouched after.
    let forward = chain_rules(&lab.host, "inet firewalld filter_FORWARD");
    assert_eq!(
        forward[..2],
        pier_lines(NativeHook::Forward),
        "{forward:#?}"
    );
    assert_eq!(forward[2], "ct state established,related accept");
    assert_eq!(forward.len(), 6, "{forward:#?}");
    let input = chain_rules(&lab.host, "inet firewalld filter_INPUT");
    assert_eq!(input[..2], pier_lines(NativeHook::Input), "{input:#?}");
    assert_eq!(input.len(), 6, "{input:#?}");
    assert_eq!(
        chain_rules(&lab.host, "inet firewalld filter_OUTPUT"),
        ["oifname \"lo\" accept"],
        "no accepts at the output hook"
    );

    let _web = node.con1.serve_http(80, "hello from con1");
    let _lan_web = lan.serve_http(80, "hello from the lan");
    let _dns = lab.host.serve_udp(53, "dns-answer");
    let _ssh = lab.host.serve_http(22, "the node's own service");
    let published_from_lan = || lan.http_get_eventually(HOST_UPLINK, 8000);
    assert!(node.con2.ping_eventually(CON1), "same network, bridged");
    assert_eq!(
        published_from_lan().as_deref(),
        Some("hello from con1"),
        "published port from the LAN"
    );
    assert_eq!(
        node.con1.http_get_eventually(LAN, 80).as_deref(),
        Some("hello from the lan"),
        "a container reaches the outside (masquerade)"
    );
    assert_eq!(
        node.con2.udp_request(GATEWAY, 53).as_deref(),
        Some("dns-answer"),
        "DNS on the gateway through firewalld's input chain"
    );
    assert_eq!(
        node.con2.http_get(GATEWAY, 22),
        None,
        "only DNS is opened on the node, not its other services"
    );
    assert_eq!(node.vault1.http_get(LAN, 80), None, "internal egress");
    assert!(!lan.ping(VAULT1), "internal ingress");

    // Someone deletes Pier's rules: firewalld's reject takes the published port and DNS; the
    // next full apply puts them back.
    delete_pier_rule(&lab.host, "filter_FORWARD", "oifname");
    delete_pier_rule(&lab.host, "filter_INPUT", "udp dport 53");
    assert_eq!(lan.http_get(HOST_UPLINK, 8000), None, "without Pier's rule");
    assert_eq!(
        node.con2.udp_request(GATEWAY, 53),
        None,
        "without Pier's rule"
    );
    let plan = lab.dataplane.plan(&node.state, &Scope::Full).expect("plan");
    assert!(
        plan.to_string().contains(
            "~ nftables inet firewalld filter_FORWARD: rule `oifname \"pier-*\" accept` inserted at the top"
        ),
        "{plan}"
    );
    lab.apply_ok(&node.state);
    lab.assert_converged(&node.state);
    assert_eq!(published_from_lan().as_deref(), Some("hello from con1"));
    assert_eq!(
        node.con2.udp_request(GATEWAY, 53).as_deref(),
        Some("dns-answer")
    );

    // `pier down`: firewalld's ruleset exactly as before.
    let report = lab.dataplane.reset().expect("reset");
    assert!(report.is_success(), "{report}");
    assert_eq!(nft_ruleset(&lab.host), before);
}

#[test]
fn beside_a_hand_written_inet_filter_and_across_a_reload() {
    common::require_root_with(&["nft"]);
    let lab = Lab::new("nfilt");
    let lan = lan_host(&lab);
    nft_load(&lab.host, INET_FILTER_HOST);
    let before = nft_ruleset(&lab.host);
    let node = node(&lab);
    let _web = node.con1.serve_http(80, "hello from con1");

    // A firewall reload between Pier's read and its batch: the table Pier planned against is
    // gone. The error is reported under its own key, the rest applies, the next apply converges.
    let plan = lab.dataplane.plan(&node.state, &Scope::Full).expect("plan");
    assert_eq!(plan.nftables.len(), 2, "{plan}");
    lab.host.sh("nft delete table ip guard");
    let report = lab.dataplane.execute(&plan).expect("execute");
    assert!(
        matches!(
            report.outcome(&ObjectKey::Nftables),
            Some(Outcome::Failed(_))
        ),
        "{report}"
    );
    assert_eq!(
        report
            .objects
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Failed(_)))
            .count(),
        1,
        "{report}"
    );
    // Links and table inet pier are in place, but without Pier's accepts the policy drop of
    // inet filter takes the published port.
    assert_eq!(
        lan.http_get(HOST_UPLINK, 8000),
        None,
        "without Pier's accepts"
    );
    nft_load(&lab.host, INET_FILTER_HOST);
    lab.apply_ok(&node.state);
    lab.assert_converged(&node.state);
    assert_eq!(
        chain_rules(&lab.host, "inet filter forward"),
        pier_lines(NativeHook::Forward)
    );
    assert_eq!(
        chain_rules(&lab.host, "ip guard in")[..2],
        pier_lines(NativeHook::Input)
    );

    let _lan_web = lan.serve_http(80, "hello from the lan");
    let _dns = lab.host.serve_udp(53, "dns-answer");
    let _ssh = lab.host.serve_http(22, "the node's own service");
    assert_eq!(
        lan.http_get_eventually(HOST_UPLINK, 8000).as_deref(),
        Some("hello from con1"),
        "published port from the LAN through forward policy drop"
    );
    assert_eq!(
        node.con1.http_get_eventually(LAN, 80).as_deref(),
        Some("hello from the lan"),
        "a container reaches the outside"
    );
    assert_eq!(
        node.con2.udp_request(GATEWAY, 53).as_deref(),
        Some("dns-answer"),
        "DNS on the gateway through the ip table's input policy drop"
    );
    assert_eq!(node.con2.http_get(GATEWAY, 22), None, "the node's ssh");
    assert_eq!(node.vault1.http_get(LAN, 80), None, "internal egress");

    let report = lab.dataplane.reset().expect("reset");
    assert!(report.is_success(), "{report}");
    assert_eq!(nft_ruleset(&lab.host), before);
}

#[test]
fn a_table_only_its_owner_may_change_is_left_alone_and_named() {
    common::require_root_with(&["nft"]);
    let lab = Lab::new("nown");
    // firewalld 2 creates its table with the owner flag; the table lives as long as the owner's
    // netlink socket, here an interactive nft reading from a pipe that stays open for 30 s (long
    // enough for the test; the pipeline ends by itself after).
    let _owner = lab.host.spawn(
        "sh -c \"(echo 'add table inet owned { flags owner; }'; \
         echo 'add chain inet owned forward_c { type filter hook forward priority 0; policy drop; }'; \
         sleep 30) | nft -i\"",
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !lab
        .host
        .exec("nft list chain inet owned forward_c")
        .status
        .success()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the owned table did not appear"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let before = lab.host.sh("nft list table inet owned");
    let node = node(&lab);
    let report = lab.apply_ok(&node.state);
    let notes = report
        .notes
        .get(&ObjectKey::Nftables)
        .cloned()
        .unwrap_or_default();
    assert_eq!(notes, [native::owned_note("inet owned")], "{report}");
    assert!(
        lab.dataplane
            .plan(&node.state, &Scope::Full)
            .expect("plan")
            .nftables
            .is_empty()
    );
    assert_eq!(lab.host.sh("nft list table inet owned"), before);
    let report = lab.dataplane.reset().expect("reset");
    assert!(report.is_success(), "{report}");
}

// IPv6 beside the same firewalls. The links code gives the bridge and the endpoints their IPv6
// addresses; until it does in this tree, `give_ipv6` adds them by hand (idempotently) after each
// apply, so these tests exercise the firewall's IPv6 side whoever made the addresses.

const UPLINK6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x2, 0, 0, 0, 0, 1);
const LAN6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x2, 0, 0, 0, 0, 2);
const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 1);
const CON1_6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 2);

/// What Docker 27+ adds for IPv6 (`"ipv6": true, "ip6tables": true`): the same chains through
/// ip6tables-nft, the FORWARD policy DROP, br_netfilter for IPv6 too.
const DOCKER_HOST6: &str = "\
sysctl -qw net.ipv6.conf.all.forwarding=1 net.bridge.bridge-nf-call-ip6tables=1
ip6tables-nft -N DOCKER
ip6tables-nft -N DOCKER-ISOLATION-STAGE-1
ip6tables-nft -N DOCKER-USER
ip6tables-nft -P FORWARD DROP
ip6tables-nft -A FORWARD -j DOCKER-USER
ip6tables-nft -A FORWARD -j DOCKER-ISOLATION-STAGE-1
ip6tables-nft -A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
ip6tables-nft -A FORWARD -o docker0 -j DOCKER
ip6tables-nft -A FORWARD -i docker0 ! -o docker0 -j ACCEPT
ip6tables-nft -A DOCKER-ISOLATION-STAGE-1 -j RETURN
ip6tables-nft -A DOCKER-USER -j RETURN
ip6tables-nft -t nat -N DOCKER
ip6tables-nft -t nat -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
";

/// ufw's IPv6 defaults (deny incoming, deny routed) through ip6tables-legacy, with the ICMPv6
/// ufw's before6.rules accept (neighbour discovery: without it no IPv6 works at all).
const STRICT_HOST6: &str = "\
sysctl -qw net.ipv6.conf.all.forwarding=1 net.bridge.bridge-nf-call-ip6tables=1
ip6tables-legacy -A INPUT -i lo -j ACCEPT
ip6tables-legacy -A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
ip6tables-legacy -A INPUT -p ipv6-icmp -j ACCEPT
ip6tables-legacy -P INPUT DROP
ip6tables-legacy -P FORWARD DROP
";

/// A hand-written IPv6 firewall: an `ip6` family table dropping what is forwarded and what
/// comes in, neighbour discovery aside.
const IP6_FILTER_HOST: &str = "\
table ip6 guard6 {
    chain forward_c {
        type filter hook forward priority filter; policy drop;
    }
    chain in {
        type filter hook input priority filter; policy drop;
        ct state established,related accept
        iifname \"lo\" accept
        icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept
    }
}
";

/// The LAN host of [`lan_host`] with IPv6 too, and a route to the container subnets via the node.
fn lan_host6(lab: &Lab) -> Ns {
    let lan = lan_host(lab);
    lab.host
        .sh(&format!("ip -6 addr add {UPLINK6}/64 dev uplink0 nodad"));
    lan.sh(&format!(
        "ip -6 addr add {LAN6}/64 dev eth0 nodad && ip -6 route add fd00::/16 via {UPLINK6}"
    ));
    lan
}

/// [`node`] with IPv6 on `web` (fd00:18::/64, con1 ::2, con2 ::3) and on the internal `vault`
/// (fd00:77::/64, vault1 ::2); con1's port 80 also published on `[::]:8000`.
fn node6(lab: &Lab) -> Node {
    let mut node = node(lab);
    let with6 = |network: &mut NetworkState, subnet6: &str| {
        let subnet6: ipnet::Ipv6Net = subnet6.parse().expect("subnet6");
        network.subnet6 = Some(subnet6);
        network.gateway6 = Some(Ipv6Addr::from(u128::from(subnet6.network()) + 1));
    };
    with6(&mut node.state.networks[0], "fd00:18::/64");
    with6(&mut node.state.networks[1], "fd00:77::/64");
    for (endpoint, address6) in
        node.state
            .endpoints
            .iter_mut()
            .zip(["fd00:18::2", "fd00:18::3", "fd00:77::2"])
    {
        if let Attachment::Bridge(bridge) = &mut endpoint.attachment {
            bridge.address6 = Some(address6.parse().expect("address6"));
        }
    }
    let mut web6 = published("default/web6", "default/con1", 8000, "fd00:18::2", 80);
    web6.host_ip = Ipv6Addr::UNSPECIFIED.into();
    node.state.ports.push(web6);
    node
}

/// The IPv6 addresses of `node`'s bridges and endpoints, and IPv6 forwarding (see above).
fn give_ipv6(lab: &Lab, node: &Node) {
    for network in &node.state.networks {
        let (Some(subnet6), Some(gateway6)) = (network.subnet6, network.gateway6) else {
            continue;
        };
        let bridge = network.bridge_name();
        lab.host.sh(&format!(
            "sysctl -qw net.ipv6.conf.all.forwarding=1 && \
             ip -6 addr replace {gateway6}/{} dev {bridge} nodad",
            subnet6.prefix_len()
        ));
        lab.host.wait_link_local(&bridge);
    }
    let containers = [&node.con1, &node.con2, &node.vault1];
    for (ns, endpoint) in containers.into_iter().zip(&node.state.endpoints) {
        let Attachment::Bridge(bridge) = &endpoint.attachment else {
            continue;
        };
        let (Some(address6), Some(network)) = (
            bridge.address6,
            node.state
                .networks
                .iter()
                .find(|n| n.name == bridge.network),
        ) else {
            continue;
        };
        ns.add_address6(network, &bridge.interface, &address6.to_string());
    }
}

/// Applies `node`'s state, requires convergence, and gives it its IPv6 addresses.
fn apply6(lab: &Lab, node: &Node) {
    lab.apply_ok(&node.state);
    lab.assert_converged(&node.state);
    give_ipv6(lab, node);
}

#[test]
fn beside_docker_with_ipv6_pier_ipv6_traffic_flows_and_reset_leaves_ip6tables_as_it_was() {
    require_iptables();
    common::require_root_with(&["ip6tables-nft", "ip6tables-legacy"]);
    let lab = Lab::new("dock6");
    let lan = lan_host6(&lab);
    lab.host.sh(DOCKER_HOST);
    lab.host.sh(DOCKER_HOST6);
    let before = iptables_save(&lab.host, "ip6tables-nft");
    let node = node6(&lab);
    apply6(&lab, &node);
    let _web = node.con1.serve_peer(80);
    let _lan_web = lan.serve_peer(80);

    let traffic_flows = || {
        assert!(node.con2.ping6_eventually(CON1_6), "same network, bridged");
        assert_eq!(
            lan.peer_seen_eventually(UPLINK6, 8000),
            Some(IpAddr::V6(LAN6)),
            "published port from the LAN, the client's address kept"
        );
        assert_eq!(
            node.con2.peer_seen_eventually(UPLINK6, 8000),
            Some(IpAddr::V6(GATEWAY6)),
            "published port from a container (hairpin)"
        );
        assert_eq!(
            node.con1.peer_seen_eventually(LAN6, 80),
            Some(IpAddr::V6(UPLINK6)),
            "a container reaches the outside (masquerade)"
        );
    };
    traffic_flows();
    assert_eq!(lan.peer_seen(CON1_6, 80), None, "routed, unpublished");
    assert_eq!(
        node.vault1.peer_seen(LAN6, 80),
        None,
        "internal egress over IPv6"
    );

    // Without Pier's jump in ip6tables, Docker's IPv6 FORWARD DROP takes the traffic; the next
    // full apply puts it back.
    lab.host.sh(&format!(
        "ip6tables-nft -D FORWARD -m comment --comment '{}' -j {}",
        iptables::JUMP_COMMENT,
        iptables::CHAIN_FORWARD
    ));
    assert!(!node.con2.ping6(CON1_6), "Docker's ip6tables FORWARD DROP");
    assert_eq!(lan.peer_seen(UPLINK6, 8000), None);
    let plan = lab.dataplane.plan(&node.state, &Scope::Full).expect("plan");
    assert!(
        plan.to_string()
            .contains("~ ip6tables-nft filter: jump FORWARD -> PIER-FORWARD inserted first"),
        "{plan}"
    );
    apply6(&lab, &node);
    traffic_flows();

    // `pier down`: Docker's IPv6 rules exactly as before.
    let report = lab.dataplane.reset().expect("reset");
    assert!(report.is_success(), "{report}");
    assert_eq!(iptables_save(&lab.host, "ip6tables-nft"), before);
}

#[test]
fn beside_a_strict_ip6tables_legacy_firewall_pier_opens_only_its_bridges_and_dns() {
    common::require_root_with(&["ip6tables-legacy"]);
    let lab = Lab::new("strict6");
    let lan = lan_host6(&lab);
    lab.host.sh(STRICT_HOST6);
    let before = iptables_save(&lab.host, "ip6tables-legacy");
    let node = node6(&lab);
    apply6(&lab, &node);
    let _web = node.con1.serve_peer(80);
    // A stand-in for the embedded DNS on the IPv6 gateway, and another service of the node's.
    let _dns = lab.host.serve_udp_peer(53);
    let _ssh = lab.host.serve_peer(22);

    assert!(node.con2.ping6_eventually(CON1_6), "same network");
    assert_eq!(
        lan.peer_seen_eventually(UPLINK6, 8000),
        Some(IpAddr::V6(LAN6)),
        "published port from the LAN through FORWARD DROP"
    );
    assert_eq!(
        node.con2.udp_peer_seen(GATEWAY6, 53),
        Some(IpAddr::V6(Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 3))),
        "DNS on the IPv6 gateway through INPUT DROP"
    );
    assert_eq!(
        node.con2.peer_seen(GATEWAY6, 22),
        None,
        "only DNS is opened on the node, not its other services"
    );
    let report = lab.dataplane.reset().expect("reset");
    assert!(report.is_success(), "{report}");
    assert_eq!(iptables_save(&lab.host, "ip6tables-legacy"), before);
}

#[test]
fn beside_a_hand_written_ip6_table_pier_adds_its_accepts_there() {
    common::require_root_with(&["nft"]);
    let lab = Lab::new("nfilt6");
    let lan = lan_host6(&lab);
    lab.host
        .sh("sysctl -qw net.ipv6.conf.all.forwarding=1 net.bridge.bridge-nf-call-ip6tables=1");
    nft_load(&lab.host, IP6_FILTER_HOST);
    let before = nft_ruleset(&lab.host);
    let node = node6(&lab);
    apply6(&lab, &node);
    assert_eq!(
        chain_rules(&lab.host, "ip6 guard6 forward_c"),
        pier_lines(NativeHook::Forward)
    );
    assert_eq!(
        chain_rules(&lab.host, "ip6 guard6 in")[..2],
        pier_lines(NativeHook::Input)
    );
    let _web = node.con1.serve_peer(80);
    let _lan_web = lan.serve_peer(80);
    let _dns = lab.host.serve_udp_peer(53);
    let _ssh = lab.host.serve_peer(22);
    assert_eq!(
        lan.peer_seen_eventually(UPLINK6, 8000),
        Some(IpAddr::V6(LAN6)),
        "published port from the LAN through forward policy drop"
    );
    assert_eq!(
        node.con1.peer_seen_eventually(LAN6, 80),
        Some(IpAddr::V6(UPLINK6)),
        "a container reaches the outside"
    );
    assert!(
        node.con2.udp_peer_seen(GATEWAY6, 53).is_some(),
        "DNS on the IPv6 gateway through the ip6 table's input policy drop"
    );
    assert_eq!(node.con2.peer_seen(GATEWAY6, 22), None, "the node's ssh");
    assert_eq!(lan.peer_seen(CON1_6, 80), None, "routed, unpublished");

    let report = lab.dataplane.reset().expect("reset");
    assert!(report.is_success(), "{report}");
    assert_eq!(nft_ruleset(&lab.host), before);
}
