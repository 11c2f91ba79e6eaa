//! Kernel tests of the link side of the dataplane: each test has its own host namespace and
//! container namespaces (see tests/common) and checks real traffic.

mod common;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::dual_stack::{dual_network, ip6, v6_only_network, with_address6};
use common::{Lab, Ns, bridge_endpoint, bridge_network, other_network};
use pier_node::dataplane::{ObjectKey, Outcome, Scope, Step};
use pier_node::state::{Attachment, Driver, EndpointState, NodeState};

fn ip(text: &str) -> Ipv4Addr {
    text.parse().expect("test address")
}

fn one_network(c1: &Ns, c2: &Ns) -> NodeState {
    NodeState {
        networks: vec![bridge_network(
            "workshop-tage",
            "172.18.0.0/16",
            "172.18.0.1",
        )],
        endpoints: vec![
            bridge_endpoint(
                "default/con1",
                c1,
                "workshop-tage",
                "eth0",
                "172.18.0.2",
                true,
            ),
            bridge_endpoint(
                "default/con2",
                c2,
                "workshop-tage",
                "eth0",
                "172.18.0.3",
                true,
            ),
        ],
        ports: vec![],
        ..NodeState::default()
    }
}

#[test]
fn bridge_veth_address_default_route_and_lo_come_up() {
    let lab = Lab::new("brup");
    let (c1, c2) = (lab.container("c1"), lab.container("c2"));
    // Start from lo down to see the dataplane bring it up.
    c1.sh("ip link set lo down");
    let state = one_network(&c1, &c2);
    let bridge = state.networks[0].bridge_name();
    let veth = state.endpoints[0].host_veth_name();
    lab.apply_ok(&state);

    let shown = lab.host.sh(&format!("ip -o -4 addr show dev {bridge}"));
    assert!(shown.contains("172.18.0.1/16"), "{shown}");
    let shown = lab.host.sh(&format!("ip -o link show dev {veth}"));
    assert!(shown.contains(&format!("master {bridge}")), "{shown}");
    // The host side is a bridge port only: no IPv6 link-local address.
    let v6 = lab.host.sh(&format!("ip -6 addr show dev {veth}"));
    assert!(v6.trim().is_empty(), "{v6}");
    assert!(
        shown.contains("state UP") || shown.contains(",UP"),
        "{shown}"
    );
    assert_eq!(lab.host.sh("cat /proc/sys/net/ipv4/ip_forward").trim(), "1");
    assert_eq!(
        lab.host
            .sh(&format!(
                "cat /proc/sys/net/ipv4/conf/{bridge}/route_localnet"
            ))
            .trim(),
        "1"
    );

    // One transmit and one receive queue on each side, allocated so (not cut down to one after
    // the veth was registered, which waits for an RCU grace period per side).
    for shown in [
        lab.host.sh(&format!("ip -d -o link show dev {veth}")),
        c1.sh("ip -d -o link show dev eth0"),
    ] {
        assert!(shown.contains("numtxqueues 1 numrxqueues 1"), "{shown}");
    }

    let shown = c1.sh("ip -o -4 addr show dev eth0");
    assert!(shown.contains("172.18.0.2/16"), "{shown}");
    // An IPv4-only endpoint has no IPv6 link-local address (nothing multicast into the bridge).
    let v6 = c1.sh("ip -6 addr show dev eth0");
    assert!(v6.trim().is_empty(), "{v6}");
    let shown = c1.sh("ip -o link show dev eth0");
    assert!(shown.contains("02:42:ac:12:00:02"), "{shown}");
    let shown = c1.sh("ip -4 route show default");
    assert!(shown.contains("via 172.18.0.1 dev eth0"), "{shown}");
    let shown = c1.sh("ip -o link show dev lo");
    assert!(shown.contains(",UP"), "{shown}");

    assert!(c1.ping_eventually(ip("172.18.0.3")), "con1 -> con2 by IP");
    assert!(c2.ping_eventually(ip("172.18.0.2")), "con2 -> con1 by IP");
    assert!(c1.ping_eventually(ip("172.18.0.1")), "con1 -> gateway");
    lab.assert_converged(&state);
}

#[test]
fn apply_twice_plans_nothing_the_second_time() {
    let lab = Lab::new("twice");
    let (c1, c2) = (lab.container("c1"), lab.container("c2"));
    let state = one_network(&c1, &c2);
    let first = lab.dataplane.plan(&state, &Scope::Full).expect("plan");
    assert!(!first.is_empty());
    lab.apply_ok(&state);
    let second = lab.dataplane.plan(&state, &Scope::Full).expect("plan");
    assert!(second.is_empty(), "{second}");
    let report = lab.apply_ok(&state);
    assert!(
        report.objects.values().all(|o| *o == Outcome::InSync),
        "{report}"
    );
}

#[test]
fn none_gives_lo_only() {
    let lab = Lab::new("none");
    let c = lab.container("c");
    c.sh("ip link set lo down");
    let state = NodeState {
        networks: vec![other_network("none", Driver::Null)],
        endpoints: vec![EndpointState {
            id: "default/lonely".into(),
            uid: "uid-lonely".into(),
            name: "lonely".into(),
            aliases: vec![],
            netns: c.netns(),
            attachment: Attachment::Null {
                network: "none".into(),
            },
        }],
        ports: vec![],
        ..NodeState::default()
    };
    lab.apply_ok(&state);
    assert_eq!(c.links(), vec!["lo".to_owned()]);
    assert!(c.sh("ip -o link show dev lo").contains(",UP"));
    assert!(c.ping(ip("127.0.0.1")));
    // Nothing was made in the host namespace either.
    assert_eq!(lab.host.links(), vec!["lo".to_owned()]);
    lab.assert_converged(&state);
}

#[test]
fn host_creates_nothing() {
    let lab = Lab::new("host");
    let state = NodeState {
        networks: vec![other_network("host", Driver::Host)],
        endpoints: vec![EndpointState {
            id: "default/native".into(),
            uid: "uid-native".into(),
            name: "native".into(),
            aliases: vec![],
            netns: pier_node::state::Netns::Host,
            attachment: Attachment::Host {
                network: "host".into(),
            },
        }],
        ports: vec![],
        ..NodeState::default()
    };
    let plan = lab.dataplane.plan(&state, &Scope::Full).expect("plan");
    // No link work at all (the firewall may still create its empty base table).
    assert!(plan.steps.is_empty(), "{plan}");
    assert!(plan.problems.is_empty(), "{plan}");
    let before = lab.host.links();
    lab.apply_ok(&state);
    assert_eq!(lab.host.links(), before);
}

#[test]
fn container_mode_shares_the_namespace_over_lo() {
    let lab = Lab::new("share");
    let (c1, c2) = (lab.container("c1"), lab.container("c2"));
    let mut state = one_network(&c1, &c2);
    // con3 runs `--net container:con1`: same namespace, no interface of its own.
    state.endpoints.push(EndpointState {
        id: "default/con3".into(),
        uid: "uid-con3".into(),
        name: "con3".into(),
        aliases: vec![],
        netns: c1.netns(),
        attachment: Attachment::Shared {
            endpoint: "default/con1".into(),
        },
    });
    lab.apply_ok(&state);
    assert_eq!(
        c1.links().into_iter().collect::<BTreeSet<_>>(),
        BTreeSet::from(["lo".to_owned(), "eth0".to_owned()])
    );
    // One "container" listens on 127.0.0.1 only, the other reaches it over lo.
    let _server =
        c1.spawn("socat TCP-LISTEN:7000,bind=127.0.0.1,reuseaddr,fork SYSTEM:'echo shared-lo'");
    let mut answer = String::new();
    for _ in 0..50 {
        answer = c1
            .exec("socat -T1 - TCP:127.0.0.1:7000 </dev/null")
            .stdout
            .iter()
            .map(|b| *b as char)
            .collect();
        if answer.contains("shared-lo") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(answer.contains("shared-lo"), "got {answer:?}");
    // ...and it is not reachable from the other network member.
    assert!(
        !c2.exec("socat -T1 - TCP:172.18.0.2:7000 </dev/null")
            .status
            .success()
    );
    lab.assert_converged(&state);
}

/// Needs the firewall's isolation rules (forward between two Pier bridges is dropped).
#[test]
fn networks_are_isolated_until_connect_and_disconnect_removes_only_eth1() {
    let lab = Lab::new("iso");
    let (c1, c3) = (lab.container("c1"), lab.container("c3"));
    let mut state = NodeState {
        networks: vec![
            bridge_network("workshop-tage", "172.18.0.0/16", "172.18.0.1"),
            bridge_network("ch-open", "172.19.0.0/16", "172.19.0.1"),
        ],
        endpoints: vec![
            bridge_endpoint(
                "default/con1",
                &c1,
                "workshop-tage",
                "eth0",
                "172.18.0.2",
                true,
            ),
            bridge_endpoint("default/con3", &c3, "ch-open", "eth0", "172.19.0.2", true),
        ],
        ports: vec![],
        ..NodeState::default()
    };
    lab.apply_ok(&state);
    assert!(
        c3.ping_eventually(ip("172.19.0.1")),
        "con3 reaches its own gateway"
    );
    assert!(
        !c3.ping(ip("172.18.0.2")),
        "con3 must not reach con1 across networks"
    );

    // docker network connect workshop-tage con3
    let connect = bridge_endpoint(
        "default/con3-wt",
        &c3,
        "workshop-tage",
        "eth1",
        "172.18.0.4",
        false,
    );
    state.endpoints.push(connect);
    let plan = lab.dataplane.plan(&state, &Scope::Full).expect("plan");
    assert_eq!(plan.steps.len(), 1, "connect is one new veth:\n{plan}");
    assert!(matches!(plan.steps[0], Step::AttachEndpoint(_)), "{plan}");
    lab.apply_ok(&state);
    let shown = c3.sh("ip -o -4 addr show dev eth1");
    assert!(shown.contains("172.18.0.4/16"), "{shown}");
    assert!(
        c3.ping_eventually(ip("172.18.0.2")),
        "after connect con3 reaches con1"
    );
    // The primary network keeps the default route.
    assert!(c3.sh("ip -4 route show default").contains("dev eth0"));
    lab.assert_converged(&state);

    // docker network disconnect workshop-tage con3
    state.endpoints.pop();
    lab.apply_ok(&state);
    assert_eq!(
        c3.links().into_iter().collect::<BTreeSet<_>>(),
        BTreeSet::from(["lo".to_owned(), "eth0".to_owned()])
    );
    assert!(
        c3.sh("ip -o -4 addr show dev eth0")
            .contains("172.19.0.2/16")
    );
    assert!(c3.ping_eventually(ip("172.19.0.1")));
    lab.assert_converged(&state);
}

#[test]
fn one_failing_endpoint_does_not_stop_the_others() {
    let lab = Lab::new("fail");
    let (c1, c2, c4) = (
        lab.container("c1"),
        lab.container("c2"),
        lab.container("c4"),
    );
    // c4 already has a foreign interface named eth0: a name clash, reported for that endpoint only.
    c4.sh("ip link add eth0 type veth peer name other0");
    let mut state = one_network(&c1, &c2);
    state.endpoints.push(bridge_endpoint(
        "default/clash",
        &c4,
        "workshop-tage",
        "eth0",
        "172.18.0.4",
        true,
    ));
    // Same address as con1.
    let dup_ns = lab.container("dup");
    state.endpoints.push(bridge_endpoint(
        "default/dup",
        &dup_ns,
        "workshop-tage",
        "eth0",
        "172.18.0.2",
        true,
    ));
    // A namespace that does not exist.
    let mut missing = bridge_endpoint(
        "default/ghost",
        &c1,
        "workshop-tage",
        "eth0",
        "172.18.0.9",
        true,
    );
    missing.netns = pier_node::state::Netns::Named(format!("pt-missing-{}", std::process::id()));
    state.endpoints.push(missing);

    let report = lab
        .dataplane
        .apply(&state, &Scope::Full)
        .expect("apply runs");
    let failed: BTreeSet<String> = report
        .failures()
        .map(|(object, _)| object.to_string())
        .collect();
    assert_eq!(
        failed,
        BTreeSet::from([
            "endpoint/default/clash".to_owned(),
            "endpoint/default/dup".to_owned(),
            "endpoint/default/ghost".to_owned()
        ]),
        "{report}"
    );
    let text = report.to_string();
    assert!(text.contains("name clash"), "{text}");
    assert!(text.contains("in use"), "{text}");
    assert!(text.contains("does not exist"), "{text}");
    // The foreign dummy survived; the good endpoints work.
    assert!(c4.sh("ip -o link show dev eth0").contains("eth0@other0"));
    assert!(c1.ping_eventually(ip("172.18.0.3")));
}

#[test]
fn garbage_collects_veths_of_deleted_namespaces_and_removed_networks() {
    let lab = Lab::new("gc");
    let (c1, c2) = (lab.container("c1"), lab.container("c2"));
    let state = one_network(&c1, &c2);
    lab.apply_ok(&state);
    let veth2 = state.endpoints[1].host_veth_name();
    // The namespace is re-created under the same name: the old veth went with the old namespace,
    // the new namespace is empty; apply must re-make eth0 there.
    let name2 = c2.name.clone();
    drop(c2);
    Command::new("ip")
        .args(["netns", "add", &name2])
        .status()
        .expect("ip netns add");
    let c2 = Ns { name: name2 };
    c2.sh("ip link set lo up");
    // The old namespace is torn down asynchronously: its veth may still be there (with a
    // fingerprint naming the old namespace) or already gone; both must converge.
    let _maybe_still_there = lab.host.links().contains(&veth2);
    lab.apply_ok(&state);
    lab.assert_converged(&state);
    assert!(c2.links().contains(&"eth0".to_owned()));
    assert!(c2.ping_eventually(ip("172.18.0.2")));

    // Dropping the network from the state removes its bridge and veths.
    let empty = NodeState::default();
    lab.apply_ok(&empty);
    assert_eq!(lab.host.links(), vec!["lo".to_owned()]);
    assert_eq!(c1.links(), vec!["lo".to_owned()]);
}

#[test]
fn reset_removes_everything_pier_owns_and_keeps_foreign_links() {
    let lab = Lab::new("reset");
    let (c1, c2) = (lab.container("c1"), lab.container("c2"));
    lab.host.sh("ip link add br-foreign type bridge && ip link add pvnotours type veth peer name pvnotours1 && ip link add pier-br0 type bridge");
    let state = one_network(&c1, &c2);
    lab.apply_ok(&state);
    // An apply with an empty state and a reset both leave foreign links alone.
    let report = lab.dataplane.reset().expect("reset");
    assert!(report.is_success(), "{report}");
    let left: BTreeSet<String> = lab.host.links().into_iter().collect();
    assert_eq!(
        left,
        BTreeSet::from(
            ["lo", "br-foreign", "pvnotours", "pvnotours1", "pier-br0"].map(String::from)
        )
    );
    assert_eq!(c1.links(), vec!["lo".to_owned()]);
    let nft = lab.host.exec("nft list table inet pier");
    assert!(
        !nft.status.success(),
        "the inet pier table must be gone after reset"
    );
}

#[test]
fn kill_9_mid_apply_then_apply_converges() {
    let lab = Lab::new("kill");
    let containers: Vec<Ns> = (0..6).map(|i| lab.container(&format!("k{i}"))).collect();
    let state = NodeState {
        networks: vec![bridge_network(
            "workshop-tage",
            "172.18.0.0/16",
            "172.18.0.1",
        )],
        endpoints: containers
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                bridge_endpoint(
                    &format!("default/k{i}"),
                    ns,
                    "workshop-tage",
                    "eth0",
                    &format!("172.18.0.{}", i + 10),
                    true,
                )
            })
            .collect(),
        ports: vec![],
        ..NodeState::default()
    };
    let file = std::env::temp_dir().join(format!("{}-state.json", lab.host.name));
    std::fs::write(&file, serde_json::to_vec(&state).expect("state serializes"))
        .expect("write state");
    let mut child = Command::new(env!("CARGO_BIN_EXE_pier-dataplane"))
        .args(["apply", "-f"])
        .arg(&file)
        .arg("--netns")
        .arg(lab.host.path())
        .env("PIER_DATAPLANE_STEP_DELAY_MS", "150")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn pier-dataplane");
    std::thread::sleep(Duration::from_millis(500));
    child.kill().expect("kill -9");
    let status = child.wait().expect("wait");
    assert!(
        !status.success(),
        "the apply must have been killed half-way"
    );
    let half = lab.dataplane.plan(&state, &Scope::Full).expect("plan");
    assert!(!half.is_empty(), "a killed apply leaves work to do");

    let output = Command::new(env!("CARGO_BIN_EXE_pier-dataplane"))
        .args(["apply", "-f"])
        .arg(&file)
        .arg("--netns")
        .arg(lab.host.path())
        .output()
        .expect("run pier-dataplane");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    lab.assert_converged(&state);
    assert!(containers[0].ping_eventually(ip("172.18.0.15")));
    let _ = std::fs::remove_file(file);
}

#[test]
fn cli_plan_prints_changes_and_then_nothing() {
    let lab = Lab::new("cli");
    let (c1, c2) = (lab.container("c1"), lab.container("c2"));
    let state = one_network(&c1, &c2);
    let file = std::env::temp_dir().join(format!("{}-state.json", lab.host.name));
    std::fs::write(&file, serde_json::to_vec(&state).expect("state serializes"))
        .expect("write state");
    let run = |verb: &str| {
        let output = Command::new(env!("CARGO_BIN_EXE_pier-dataplane"))
            .args([verb, "-f"])
            .arg(&file)
            .arg("--netns")
            .arg(lab.host.path())
            .output()
            .expect("run pier-dataplane");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let plan = run("plan");
    assert!(plan.contains("+ bridge pier-"), "{plan}");
    assert!(plan.contains("+ endpoint default/con1"), "{plan}");
    run("apply");
    let plan = run("plan");
    assert!(plan.contains("links: no changes"), "{plan}");
    let _ = std::fs::remove_file(file);
}

#[test]
fn scoped_apply_attaches_one_endpoint_and_leaves_garbage_to_the_full_apply() {
    let lab = Lab::new("scope");
    let (c1, c2, c3) = (
        lab.container("c1"),
        lab.container("c2"),
        lab.container("c3"),
    );
    let mut state = one_network(&c1, &c2);
    state.endpoints.push(bridge_endpoint(
        "default/con3",
        &c3,
        "workshop-tage",
        "eth0",
        "172.18.0.4",
        true,
    ));
    lab.apply_ok(&state);
    // con3 leaves the state; con4 arrives, applied alone.
    let gone = state.endpoints.pop().expect("con3");
    let c4 = lab.container("c4");
    state.endpoints.push(bridge_endpoint(
        "default/con4",
        &c4,
        "workshop-tage",
        "eth0",
        "172.18.0.5",
        true,
    ));
    let plan = lab
        .dataplane
        .plan(&state, &Scope::endpoints(["default/con4"]))
        .expect("scoped plan");
    assert_eq!(plan.steps.len(), 1, "{plan}");
    let report = lab
        .dataplane
        .apply(&state, &Scope::endpoints(["default/con4"]))
        .expect("scoped apply");
    assert!(report.is_success(), "{report}");
    assert!(c4.ping_eventually(ip("172.18.0.2")));
    // The scoped apply did not collect con3's veth; the full apply does.
    assert!(lab.host.links().contains(&gone.host_veth_name()));
    let full = lab.dataplane.plan(&state, &Scope::Full).expect("plan");
    assert_eq!(full.steps.len(), 1, "{full}");
    lab.apply_ok(&state);
    assert!(!lab.host.links().contains(&gone.host_veth_name()));
    assert_eq!(c3.links(), vec!["lo".to_owned()]);
    // A scoped apply checks addresses against the whole state.
    let c5 = lab.container("c5");
    state.endpoints.push(bridge_endpoint(
        "default/con5",
        &c5,
        "workshop-tage",
        "eth0",
        "172.18.0.2",
        true,
    ));
    let report = lab
        .dataplane
        .apply(&state, &Scope::endpoints(["default/con5"]))
        .expect("scoped apply");
    let failed: Vec<String> = report
        .failures()
        .map(|(object, _)| object.to_string())
        .collect();
    assert_eq!(failed, vec!["endpoint/default/con5"], "{report}");
}

#[test]
fn removal_deletes_only_the_named_links_the_state_no_longer_wants() {
    let lab = Lab::new("remove");
    let (c1, c2, c3) = (
        lab.container("c1"),
        lab.container("c2"),
        lab.container("c3"),
    );
    let mut state = one_network(&c1, &c2);
    state
        .networks
        .push(bridge_network("ch-open", "172.19.0.0/16", "172.19.0.1"));
    state.endpoints.push(bridge_endpoint(
        "default/con3",
        &c3,
        "ch-open",
        "eth0",
        "172.19.0.2",
        true,
    ));
    lab.apply_ok(&state);
    let tage = state.networks[0].bridge_name();
    let open = state.networks[1].bridge_name();
    let con2 = state.endpoints[1].host_veth_name();
    let con3 = state.endpoints[2].host_veth_name();
    lab.host
        .sh("ip link add pv00deadbeef type veth peer name stray-peer && ip link add br-foreign type bridge");

    // con2 leaves: its veth goes; the bridge it was on stays for con1; a stray veth and a foreign
    // link named alongside are left alone (the stray one to the full apply).
    state.endpoints.remove(1);
    let plan = lab
        .dataplane
        .plan(
            &state,
            &Scope::removal([con2.as_str(), tage.as_str(), "br-foreign"]),
        )
        .expect("removal plan");
    assert_eq!(plan.steps.len(), 1, "{plan}");
    assert!(
        matches!(&plan.steps[0], Step::DeleteLink { name, .. } if *name == con2),
        "{plan}"
    );
    let report = lab
        .dataplane
        .apply(
            &state,
            &Scope::removal([con2.as_str(), tage.as_str(), "br-foreign"]),
        )
        .expect("removal");
    assert!(report.is_success(), "{report}");
    let links = lab.host.links();
    assert!(!links.contains(&con2), "{links:?}");
    for kept in [&tage, &open, &con3, "pv00deadbeef", "br-foreign"] {
        assert!(links.iter().any(|l| l == kept), "{kept} kept: {links:?}");
    }
    assert_eq!(c2.links(), vec!["lo".to_owned()]);
    assert!(c1.ping_eventually(ip("172.18.0.1")));

    // Naming a veth the state still wants (con1's) deletes nothing.
    let con1 = state.endpoints[0].host_veth_name();
    let plan = lab
        .dataplane
        .plan(&state, &Scope::removal([con1.as_str()]))
        .expect("removal plan");
    assert!(plan.steps.is_empty(), "{plan}");

    // con3 leaves, the last on ch-open: its veth and its network's bridge go.
    state.endpoints.pop();
    state.networks.pop();
    let report = lab
        .dataplane
        .apply(&state, &Scope::removal([con3.as_str(), open.as_str()]))
        .expect("removal");
    assert!(report.is_success(), "{report}");
    let links = lab.host.links();
    assert!(
        !links.contains(&con3) && !links.contains(&open),
        "{links:?}"
    );
    assert!(links.contains(&tage) && links.contains(&con1), "{links:?}");
}

#[test]
fn example_state_files_parse_and_validate() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in [
        root.join("examples/drivers.json"),
        root.join("../examples/dataplane/lesson.json"),
    ] {
        let text = std::fs::read_to_string(&file).expect("example exists");
        let state: NodeState = serde_json::from_str(&text).expect("example parses");
        assert_eq!(state.validate(), Ok(()), "{}", file.display());
    }
}

#[test]
fn deep_plan_notices_a_container_side_changed_by_hand() {
    let lab = Lab::new("deep");
    let (c1, c2) = (lab.container("c1"), lab.container("c2"));
    let state = one_network(&c1, &c2);
    lab.apply_ok(&state);
    // Someone removes con1's address and default route inside the container.
    c1.sh("ip addr flush dev eth0");
    // The fast plan trusts the fingerprint on the host veth (see the dataplane module)...
    assert!(
        lab.dataplane
            .plan(&state, &Scope::Full)
            .expect("plan")
            .is_empty()
    );
    // ...the deep plan enters every namespace and re-makes what differs.
    let deep = lab.dataplane.clone().deep(true);
    let plan = deep.plan(&state, &Scope::Full).expect("deep plan");
    assert_eq!(plan.steps.len(), 1, "{plan}");
    let report = deep.apply(&state, &Scope::Full).expect("deep apply");
    assert!(report.is_success(), "{report}");
    assert!(
        c1.sh("ip -o -4 addr show dev eth0")
            .contains("172.18.0.2/16")
    );
    assert!(c1.sh("ip -4 route show default").contains("via 172.18.0.1"));
    assert!(c1.ping_eventually(ip("172.18.0.3")));
    assert!(
        deep.plan(&state, &Scope::Full)
            .expect("deep plan")
            .is_empty()
    );
}

#[test]
fn sysctls_and_bridge_changes_made_by_hand_are_read_back_and_repaired() {
    let lab = Lab::new("drift");
    let (c1, c2) = (lab.container("c1"), lab.container("c2"));
    let state = one_network(&c1, &c2);
    let bridge = state.networks[0].bridge_name();
    lab.apply_ok(&state);
    lab.host.sh(&format!(
        "echo 0 > /proc/sys/net/ipv4/ip_forward && \
         echo 0 > /proc/sys/net/ipv4/conf/{bridge}/route_localnet && \
         ip addr flush dev {bridge} && ip link set {bridge} mtu 1400"
    ));
    let plan = lab.dataplane.plan(&state, &Scope::Full).expect("plan");
    let text = plan.to_string();
    assert!(text.contains("net.ipv4.ip_forward=1"), "{text}");
    assert!(text.contains("route_localnet=1"), "{text}");
    assert!(text.contains("add address 172.18.0.1/16"), "{text}");
    assert!(text.contains("set mtu 1500"), "{text}");
    lab.apply_ok(&state);
    lab.assert_converged(&state);
    assert_eq!(lab.host.sh("cat /proc/sys/net/ipv4/ip_forward").trim(), "1");
    assert!(c1.ping_eventually(ip("172.18.0.1")));
}

/// A namespace Pier did not set up, with a default route of its own (a container's gateway): an
/// endpoint joining it adds its interface and subnet route and leaves that default route, says
/// so in its report, stays in sync (also by the deep check), and leaves the route when it goes.
/// A default route Pier set for an earlier endpoint is still Pier's to replace.
#[test]
fn a_namespace_keeps_its_own_default_route_when_an_endpoint_joins_and_leaves() {
    let lab = Lab::new("owndef");
    let (own, uplink) = (lab.container("own"), lab.container("up"));
    common::veth(&own, "ext0", &uplink, "up0");
    own.sh("ip addr add 10.99.0.2/24 dev ext0 && ip route add default via 10.99.0.1");
    uplink.sh("ip addr add 10.99.0.1/24 dev up0");
    let default_before = own.sh("ip -4 route show default");
    assert!(
        default_before.contains("via 10.99.0.1 dev ext0"),
        "{default_before}"
    );

    let mut state = NodeState {
        networks: vec![bridge_network("tage", "172.18.0.0/16", "172.18.0.1")],
        endpoints: vec![bridge_endpoint(
            "default/own",
            &own,
            "tage",
            "eth0",
            "172.18.0.2",
            true,
        )],
        ports: vec![],
        ..NodeState::default()
    };
    let report = lab.apply_ok(&state);
    let object = &ObjectKey::endpoint("default/own");
    assert_eq!(
        report.notes_of(object),
        [pier_node::dataplane::OWN_DEFAULT_ROUTE_KEPT.to_owned()],
        "{report}"
    );
    assert_eq!(own.sh("ip -4 route show default"), default_before);
    let subnet = own.sh("ip -4 route show 172.18.0.0/16");
    assert!(subnet.contains("dev eth0"), "the subnet's route: {subnet}");
    assert!(
        own.ping_eventually(ip("172.18.0.1")),
        "the bridge network works"
    );
    assert!(own.ping(ip("10.99.0.1")), "and so does the namespace's own");

    // In sync, by the fast and the deep plan, and the note stays.
    lab.assert_converged(&state);
    let deep = lab.dataplane.clone().deep(true);
    assert!(
        deep.plan(&state, &Scope::Full)
            .expect("deep plan")
            .is_empty()
    );
    let again = lab.apply_ok(&state);
    assert_eq!(again.objects[object], Outcome::InSync);
    assert_eq!(again.notes_of(object), report.notes_of(object));

    state.endpoints.clear();
    lab.apply_ok(&state);
    assert!(!own.links().contains(&"eth0".to_owned()));
    assert_eq!(own.sh("ip -4 route show default"), default_before);

    // A namespace whose default route is Pier's: a later primary endpoint replaces it.
    let c = lab.container("c");
    let mut state = NodeState {
        networks: vec![
            bridge_network("tage", "172.18.0.0/16", "172.18.0.1"),
            bridge_network("other", "172.19.0.0/16", "172.19.0.1"),
        ],
        endpoints: vec![bridge_endpoint(
            "default/c",
            &c,
            "tage",
            "eth0",
            "172.18.0.3",
            true,
        )],
        ports: vec![],
        ..NodeState::default()
    };
    let report = lab.apply_ok(&state);
    assert!(
        report
            .notes_of(&ObjectKey::endpoint("default/c"))
            .is_empty(),
        "{report}"
    );
    let shown = c.sh("ip -4 route show default");
    assert!(shown.contains("via 172.18.0.1 dev eth0"), "{shown}");
    assert!(
        shown.contains("proto 0xf1") || shown.contains("proto 241"),
        "marked as Pier's: {shown}"
    );
    state.endpoints.push(bridge_endpoint(
        "default/c-other",
        &c,
        "other",
        "eth1",
        "172.19.0.3",
        true,
    ));
    let report = lab.apply_ok(&state);
    assert_eq!(
        report.objects[&ObjectKey::endpoint("default/c")],
        Outcome::InSync
    );
    assert!(
        report
            .notes_of(&ObjectKey::endpoint("default/c-other"))
            .is_empty(),
        "{report}"
    );
    let shown = c.sh("ip -4 route show default");
    assert!(
        shown.contains("via 172.19.0.1 dev eth1") && !shown.contains("eth0"),
        "Pier's own default route is replaced: {shown}"
    );
}

/// `workshop-tage` dual-stack (172.18.0.0/16 and fd00:18::/64): con1 .2 / ::2 and con2 .3 / ::3,
/// both with the default route.
fn dual_stack(c1: &Ns, c2: &Ns) -> NodeState {
    let mut state = one_network(c1, c2);
    state.networks[0] = dual_network(
        "workshop-tage",
        "172.18.0.0/16",
        "172.18.0.1",
        "fd00:18::/64",
        "fd00:18::1",
    );
    state.endpoints = state
        .endpoints
        .into_iter()
        .zip(["fd00:18::2", "fd00:18::3"])
        .map(|(endpoint, address6)| with_address6(endpoint, address6))
        .collect();
    state
}

#[test]
fn dual_stack_endpoints_reach_each_other_and_the_gateway_over_both_families() {
    let lab = Lab::new("dual");
    let (c1, c2) = (lab.container("c1"), lab.container("c2"));
    let state = dual_stack(&c1, &c2);
    let bridge = state.networks[0].bridge_name();
    lab.apply_ok(&state);

    // The bridge: both gateways, usable at once (no duplicate address detection), and deaf to
    // router advertisements; the node forwards IPv6.
    let shown = lab.host.global_addresses6(&bridge);
    assert!(
        shown.len() == 1 && shown[0].contains("fd00:18::1/64"),
        "{shown:?}"
    );
    assert!(!shown[0].contains("tentative"), "{shown:?}");
    assert!(
        lab.host
            .sh(&format!("ip -o -4 addr show dev {bridge}"))
            .contains("172.18.0.1/16")
    );
    let sysctl = |key: &str| {
        lab.host
            .sh(&format!("cat /proc/sys/net/{key}"))
            .trim()
            .to_owned()
    };
    assert_eq!(sysctl("ipv6/conf/all/forwarding"), "1");
    assert_eq!(sysctl(&format!("ipv6/conf/{bridge}/accept_ra")), "0");

    // The endpoint: its address (not tentative), the IPv6 default route beside IPv4's.
    let shown = c1.global_addresses6("eth0");
    assert!(
        shown.len() == 1 && shown[0].contains("fd00:18::2/64") && !shown[0].contains("tentative"),
        "{shown:?}"
    );
    // An endpoint with IPv6 keeps its link-local address, as any IPv6 interface has one.
    let shown = c1.sh("ip -6 -o addr show dev eth0 scope link");
    assert!(shown.contains("fe80::"), "{shown}");
    let shown = c1.sh("ip -6 route show default");
    assert!(shown.contains("via fd00:18::1 dev eth0"), "{shown}");
    assert!(
        c1.sh("ip -4 route show default")
            .contains("via 172.18.0.1 dev eth0")
    );

    assert!(
        c1.ping6_eventually(ip6("fd00:18::3")),
        "con1 -> con2 over IPv6"
    );
    assert!(
        c2.ping6_eventually(ip6("fd00:18::2")),
        "con2 -> con1 over IPv6"
    );
    assert!(c1.ping6_eventually(ip6("fd00:18::1")), "con1 -> gateway6");
    assert!(
        c1.ping_eventually(ip("172.18.0.3")),
        "con1 -> con2 over IPv4"
    );
    lab.assert_converged(&state);
}

#[test]
fn an_ipv6_only_network_works_without_any_ipv4() {
    let lab = Lab::new("six");
    let (c1, c2) = (lab.container("c1"), lab.container("c2"));
    let state = NodeState {
        networks: vec![v6_only_network("six", "fd00:19::/64", "fd00:19::1")],
        endpoints: vec![
            bridge_endpoint("default/s1", &c1, "six", "eth0", "fd00:19::2", true),
            bridge_endpoint("default/s2", &c2, "six", "eth0", "fd00:19::3", true),
        ],
        ..NodeState::default()
    };
    let bridge = state.networks[0].bridge_name();
    lab.apply_ok(&state);
    for (ns, device) in [(&lab.host, bridge.as_str()), (&c1, "eth0"), (&c2, "eth0")] {
        let v4 = ns.sh(&format!("ip -o -4 addr show dev {device}"));
        assert!(v4.trim().is_empty(), "no IPv4 on {device}: {v4}");
    }
    assert!(c1.sh("ip -4 route show").trim().is_empty());
    assert!(
        c1.sh("ip -6 route show default")
            .contains("via fd00:19::1 dev eth0")
    );
    assert!(c1.ping6_eventually(ip6("fd00:19::3")), "s1 -> s2");
    assert!(c2.ping6_eventually(ip6("fd00:19::1")), "s2 -> gateway6");
    lab.assert_converged(&state);
}

/// Removing an endpoint takes its addresses of both families with its interface; disconnecting
/// a second network leaves the first's addresses and default routes alone.
#[test]
fn removing_an_ipv6_endpoint_removes_its_addresses() {
    let lab = Lab::new("rm6");
    let (c1, c2) = (lab.container("c1"), lab.container("c2"));
    let mut state = dual_stack(&c1, &c2);
    state
        .networks
        .push(v6_only_network("six", "fd00:19::/64", "fd00:19::1"));
    state.endpoints.push(bridge_endpoint(
        "default/con1-six",
        &c1,
        "six",
        "eth1",
        "fd00:19::2",
        false,
    ));
    lab.apply_ok(&state);
    assert_eq!(c1.global_addresses6("eth1").len(), 1);
    assert!(c1.ping6_eventually(ip6("fd00:19::1")));

    // docker network disconnect six con1
    state.endpoints.pop();
    lab.apply_ok(&state);
    assert!(!c1.links().contains(&"eth1".to_owned()));
    let everywhere = c1.sh("ip -6 -o addr show scope global");
    assert!(
        everywhere.contains("fd00:18::2/64") && !everywhere.contains("fd00:19::"),
        "{everywhere}"
    );
    assert!(
        c1.sh("ip -6 route show default")
            .contains("via fd00:18::1 dev eth0")
    );

    // con2 leaves.
    state.endpoints.remove(1);
    lab.apply_ok(&state);
    assert_eq!(c2.links(), vec!["lo".to_owned()]);
    assert!(c2.sh("ip -6 -o addr show scope global").trim().is_empty());
    assert!(c2.sh("ip -6 route show default").trim().is_empty());
    assert!(c1.ping6_eventually(ip6("fd00:18::1")));
    lab.assert_converged(&state);
}

/// A namespace made while the node's `default.disable_ipv6` was 1 has IPv6 off: an endpoint
/// with IPv6 turns it on there.
#[test]
fn ipv6_turned_off_in_a_namespace_is_turned_on_for_an_ipv6_endpoint() {
    let lab = Lab::new("off6");
    let (c1, c2) = (lab.container("c1"), lab.container("c2"));
    c1.sh("echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6 && \
         echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6");
    let state = dual_stack(&c1, &c2);
    lab.apply_ok(&state);
    let read = |key: &str| c1.sh(&format!("cat /proc/sys/net/ipv6/conf/{key}/disable_ipv6"));
    for key in ["all", "default", "eth0"] {
        assert_eq!(read(key).trim(), "0", "{key}");
    }
    assert!(c1.ping6_eventually(ip6("fd00:18::3")));
    lab.assert_converged(&state);
}

#[test]
fn ipv6_drift_on_the_node_and_inside_an_endpoint_is_repaired() {
    let lab = Lab::new("drift6");
    let (c1, c2) = (lab.container("c1"), lab.container("c2"));
    let state = dual_stack(&c1, &c2);
    let bridge = state.networks[0].bridge_name();
    lab.apply_ok(&state);
    lab.host.sh(&format!(
        "echo 0 > /proc/sys/net/ipv6/conf/all/forwarding && \
         echo 1 > /proc/sys/net/ipv6/conf/{bridge}/accept_ra && \
         ip -6 addr flush dev {bridge} scope global && \
         ip -6 addr add 2001:db8::5/64 dev {bridge} nodad"
    ));
    let text = lab
        .dataplane
        .plan(&state, &Scope::Full)
        .expect("plan")
        .to_string();
    for expected in [
        "net.ipv6.conf.all.forwarding=1",
        "add address fd00:18::1/64",
        "remove address 2001:db8::5/64",
        "accept_ra=0",
    ] {
        assert!(text.contains(expected), "{expected:?} in:\n{text}");
    }
    lab.apply_ok(&state);
    lab.assert_converged(&state);
    assert!(c1.ping6_eventually(ip6("fd00:18::1")));

    // Inside con1: its IPv6 address and default route gone by hand; the deep plan sees it.
    c1.sh("ip -6 addr flush dev eth0 scope global");
    let deep = lab.dataplane.clone().deep(true);
    let plan = deep.plan(&state, &Scope::Full).expect("deep plan");
    assert_eq!(plan.steps.len(), 1, "{plan}");
    let report = deep.apply(&state, &Scope::Full).expect("deep apply");
    assert!(report.is_success(), "{report}");
    assert!(c1.sh("ip -6 route show default").contains("via fd00:18::1"));
    assert!(c1.ping6_eventually(ip6("fd00:18::3")));
    assert!(
        deep.plan(&state, &Scope::Full)
            .expect("deep plan")
            .is_empty()
    );
}

/// A namespace routing IPv6 by a gateway of its own keeps that default route when a dual-stack
/// endpoint joins; its IPv4 default route (which it lacks) is Pier's.
#[test]
fn a_namespace_keeps_its_own_ipv6_default_route() {
    let lab = Lab::new("own6");
    let (own, uplink, c2) = (
        lab.container("own"),
        lab.container("up"),
        lab.container("c2"),
    );
    common::veth(&own, "ext0", &uplink, "up0");
    own.sh("ip -6 addr add fd99::2/64 dev ext0 nodad && ip -6 route add default via fd99::1");
    let state = dual_stack(&own, &c2);
    let report = lab.apply_ok(&state);
    let object = &ObjectKey::endpoint("default/con1");
    assert_eq!(
        report.notes_of(object),
        [pier_node::dataplane::OWN_DEFAULT_ROUTE_KEPT.to_owned()],
        "{report}"
    );
    let shown = own.sh("ip -6 route show default");
    assert!(
        shown.contains("via fd99::1 dev ext0") && !shown.contains("eth0"),
        "{shown}"
    );
    assert!(
        own.sh("ip -4 route show default")
            .contains("via 172.18.0.1 dev eth0")
    );
    assert!(
        own.ping6_eventually(ip6("fd00:18::3")),
        "its subnet still works"
    );
    lab.assert_converged(&state);
    let deep = lab.dataplane.clone().deep(true);
    assert!(
        deep.plan(&state, &Scope::Full)
            .expect("deep plan")
            .is_empty()
    );
}
