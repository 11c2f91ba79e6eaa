//! Overlay networks across nodes (system tier, see docs/architecture.md): three node namespaces
//! on an underlay (a bridge in a namespace of its own, each node with its own address and a
//! default route via the underlay's router), node A running `pier up --node-netns`, nodes B and
//! C running `pier node` (`system::nodes::PierNode`), all driven with the real `kubectl`. Needs
//! root, kubectl, iproute2 (ip, bridge), ping, busybox-static, socat, nsenter and nft.
//!
//! Node B detects its tunnel address from its default route; node C has two underlay addresses
//! and is told which one to use (`PIER_TUNNEL_ADDRESS`, as the chart sets it from
//! `status.hostIP`), so traffic to C working proves the override is what other nodes use.

mod system;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use system::nodes::{PierNode, Underlay};
use system::{Pier, Process, in_netns, ping, wait_for};

/// `pier up`'s node (the fixture's `--node-name`).
const NODE_A: &str = "node-a";
const NODE_B: &str = "node-b";
const NODE_C: &str = "node-c";
/// Node C's second underlay address, its tunnel address by `PIER_TUNNEL_ADDRESS`.
const C_TUNNEL_HOST: u8 = 13;
/// How long a change may take to reach every node here (the target is far below).
const CONVERGE: Duration = Duration::from_secs(30);

/// Three nodes on one underlay. Fields drop in order: B and C (agents, API bridges and
/// namespaces) before `pier up` whose API they use, the underlay last.
struct Cluster {
    b: PierNode,
    c: PierNode,
    a: Pier,
    _underlay: Underlay,
    /// The named namespaces of the test's "containers", by role (`con1` on A, `con2` on B,
    /// `con3` on C), unique per test and process.
    con: BTreeMap<&'static str, String>,
}

impl Cluster {
    /// The underlay, `pier up` for node A, `pier node` for B and C (registering their Nodes, as
    /// kubelet's `--register-node`), all ready, each node reaching the others on the underlay.
    fn start(tag: &str) -> Cluster {
        let pid = std::process::id();
        let con: BTreeMap<&'static str, String> = ["con1", "con2", "con3"]
            .into_iter()
            .map(|role| (role, format!("{tag}-{role}-{pid}")))
            .collect();
        let underlay = Underlay::create(&format!("pu-{tag}-{pid}"));
        let a = Pier::up_after(tag, &[&con["con1"]], &underlay.wiring(1));
        let mut b = PierNode::create(NODE_B, &format!("pn-{tag}-b-{pid}"), &[&con["con2"]]);
        let mut c = PierNode::create(NODE_C, &format!("pn-{tag}-c-{pid}"), &[&con["con3"]]);
        system::sh_ok(&format!(
            "ip netns exec {} sh -c '{}'",
            b.netns,
            underlay.wiring(2)
        ));
        system::sh_ok(&format!(
            "ip netns exec {} sh -c '{} && ip addr add {}/24 dev {}'",
            c.netns,
            underlay.wiring(3),
            Underlay::address(C_TUNNEL_HOST),
            Underlay::LINK
        ));
        for (from, to) in [(&a.node_netns, 2), (&b.netns, 3), (&c.netns, 1)] {
            assert!(
                ping(from, &Underlay::address(to)),
                "{from} reaches {} on the underlay",
                Underlay::address(to)
            );
        }
        let port = a.api_port();
        let c_tunnel = Underlay::address(C_TUNNEL_HOST);
        for (node, tunnel) in [(&mut b, None), (&mut c, Some(c_tunnel.as_str()))] {
            let mut env = vec![
                ("PIER_NETNS_TARGETS", "true"),
                ("PIER_REGISTER_NODE", "true"),
            ];
            env.extend(tunnel.map(|address| ("PIER_TUNNEL_ADDRESS", address)));
            node.start_agent_with(&a.kubeconfig, &env);
            node.bridge_api(port);
        }
        b.wait_ready();
        c.wait_ready();
        Cluster {
            b,
            c,
            a,
            _underlay: underlay,
            con,
        }
    }

    /// The named namespace of container `role`.
    fn ns(&self, role: &str) -> &str {
        &self.con[role]
    }

    /// The node namespace of node `name`.
    fn node_netns(&self, name: &str) -> &str {
        match name {
            NODE_A => &self.a.node_netns,
            NODE_B => &self.b.netns,
            NODE_C => &self.c.netns,
            other => panic!("no node {other}"),
        }
    }

    /// Every Node's tunnel-address annotation, once all three have one.
    fn wait_tunnel_addresses(&self) -> BTreeMap<String, String> {
        let mut found = BTreeMap::new();
        let annotated = wait_until(CONVERGE, || {
            found = [NODE_A, NODE_B, NODE_C]
                .into_iter()
                .map(|node| {
                    let address = self.a.jsonpath(
                        &format!("node {node}"),
                        "{.metadata.annotations.pier\\.dev/tunnel-address}",
                    );
                    (node.to_owned(), address)
                })
                .collect();
            found.values().all(|a| !a.is_empty())
        });
        assert!(
            annotated,
            "every node annotates its Node with its tunnel address within {CONVERGE:?}: {found:?}\n{}",
            String::from_utf8_lossy(&self.a.kubectl("get nodes -o wide").stdout)
        );
        found
    }

    /// The Endpoints as the API has them now.
    fn endpoints(&self) -> Vec<Seen> {
        let list: Value = serde_json::from_str(&self.a.kubectl_ok("get pep -o json"))
            .expect("kubectl get -o json parses");
        list["items"]
            .as_array()
            .map(|items| items.iter().filter_map(Seen::from_json).collect())
            .unwrap_or_default()
    }

    /// Waits until every node holds exactly the overlay entries its remote endpoints call for:
    /// one FDB entry (MAC -> the remote node's tunnel address) and one permanent neighbour entry
    /// (address -> MAC) per endpoint of an overlay network that has an endpoint on the node,
    /// sitting on another node; nothing else, nothing twice.
    fn wait_entries_exact(&self, what: &str, overlays: &[&str]) {
        let tunnels = self.wait_tunnel_addresses();
        let mut last = String::new();
        let converged = wait_until(CONVERGE, || {
            let endpoints = self.endpoints();
            let mut report = String::new();
            let mut all_right = true;
            for node in [NODE_A, NODE_B, NODE_C] {
                let wanted = wanted_entries(&endpoints, overlays, node, &tunnels);
                let held = entries(self.node_netns(node));
                if held != wanted {
                    all_right = false;
                }
                report.push_str(&format!(
                    "{node}: wanted {wanted:?}\n{node}: holds  {held:?}\n"
                ));
            }
            last = report;
            all_right
        });
        assert!(
            converged,
            "{what}: the nodes' overlay entries did not converge within {CONVERGE:?}:\n{last}"
        );
    }

    /// Waits until no node holds an FDB or neighbour entry naming any of `gone`.
    fn wait_no_entries_for(&self, gone: &[Seen]) {
        let mut last = String::new();
        let clean = wait_until(CONVERGE, || {
            last.clear();
            for node in [NODE_A, NODE_B, NODE_C] {
                let held = entries(self.node_netns(node));
                for endpoint in gone {
                    let named = held.fdb.iter().any(|(mac, _)| *mac == endpoint.mac)
                        || held
                            .neigh
                            .iter()
                            .any(|(ip, mac)| *ip == endpoint.address || *mac == endpoint.mac);
                    if named {
                        last.push_str(&format!("{node} still holds {endpoint:?}: {held:?}\n"));
                    }
                }
            }
            last.is_empty()
        });
        assert!(clean, "entries left after the Endpoints went:\n{last}");
    }
}

/// One Endpoint as the overlay entries need it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    name: String,
    network: String,
    node: String,
    address: String,
    mac: String,
}

impl Seen {
    /// From a `kubectl get -o json` item; `None` until the operator and the node agent have
    /// written what the entries need (address, MAC, node, Attached=True).
    fn from_json(item: &Value) -> Option<Seen> {
        let status = &item["status"];
        let attached = status["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Attached" && c["status"] == "True");
        let text = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_owned);
        attached.then_some(())?;
        Some(Seen {
            name: text(&item["metadata"]["name"])?,
            network: text(&item["spec"]["network"])?,
            node: text(&status["node"])?,
            address: text(&status["ipv4Address"])?,
            mac: text(&status["macAddress"])?.to_lowercase(),
        })
    }
}

/// The overlay entries one node holds: FDB entries with a remote destination (MAC, tunnel
/// address) and permanent neighbour entries (address, MAC), each as often as the kernel lists it.
#[derive(Debug, Default, PartialEq, Eq)]
struct Entries {
    fdb: Vec<(String, String)>,
    neigh: Vec<(String, String)>,
}

/// What the node in `netns` holds (sorted, duplicates kept so that they show).
fn entries(netns: &str) -> Entries {
    let fdb_out = in_netns(netns, "bridge fdb show");
    let mut fdb: Vec<(String, String)> = String::from_utf8_lossy(&fdb_out.stdout)
        .lines()
        .filter(|l| l.contains(" dev pvx"))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let mac = words.next()?.to_lowercase();
            let dst = l.split(" dst ").nth(1)?.split_whitespace().next()?;
            // The all-zero MAC is a default destination (flooding), not an endpoint's entry.
            (mac != "00:00:00:00:00:00").then(|| (mac, dst.to_owned()))
        })
        .collect();
    fdb.sort();
    let neigh_out = in_netns(netns, "ip -4 neigh show nud permanent");
    let mut neigh: Vec<(String, String)> = String::from_utf8_lossy(&neigh_out.stdout)
        .lines()
        // Only Pier's devices: the node's own neighbours are not the overlay's.
        .filter(|l| l.contains(" dev pvx") || l.contains(" dev pier-"))
        .filter_map(|l| {
            let ip = l.split_whitespace().next()?;
            let mac = l.split(" lladdr ").nth(1)?.split_whitespace().next()?;
            Some((ip.to_owned(), mac.to_lowercase()))
        })
        .collect();
    neigh.sort();
    Entries { fdb, neigh }
}

/// What node `node` should hold: the endpoints of `overlays` on other nodes, for each overlay
/// network with an endpoint on `node`.
fn wanted_entries(
    endpoints: &[Seen],
    overlays: &[&str],
    node: &str,
    tunnels: &BTreeMap<String, String>,
) -> Entries {
    let here: Vec<&str> = endpoints
        .iter()
        .filter(|e| e.node == node && overlays.contains(&e.network.as_str()))
        .map(|e| e.network.as_str())
        .collect();
    let remote: Vec<&Seen> = endpoints
        .iter()
        .filter(|e| e.node != node && here.contains(&e.network.as_str()))
        .collect();
    let mut fdb: Vec<(String, String)> = remote
        .iter()
        .map(|e| {
            (
                e.mac.clone(),
                tunnels.get(&e.node).cloned().unwrap_or_default(),
            )
        })
        .collect();
    let mut neigh: Vec<(String, String)> = remote
        .iter()
        .map(|e| (e.address.clone(), e.mac.clone()))
        .collect();
    fdb.sort();
    neigh.sort();
    Entries { fdb, neigh }
}

/// Polls `check` every 100 ms until it is true; whether it became true within `timeout`.
fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    loop {
        if check() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An Endpoint of `network` in the named namespace `netns` on `node`.
fn endpoint(name: &str, network: &str, netns: &str, node: &str) -> String {
    format!(
        "apiVersion: pier.dev/v1alpha1\nkind: Endpoint\nmetadata: {{name: {name}}}\n\
         spec: {{network: {network}, target: {{netns: {{name: {netns}, node: {node}}}}}}}\n---\n"
    )
}

/// An overlay Network.
fn overlay(name: &str) -> String {
    format!(
        "apiVersion: pier.dev/v1alpha1\nkind: Network\nmetadata: {{name: {name}}}\n\
         spec: {{driver: overlay}}\n---\n"
    )
}

/// An HTTP/1.0 GET from the named namespace `netns`; the response.
fn http_from(netns: &str, authority: &str) -> String {
    let out = in_netns(
        netns,
        &format!(
            "printf 'GET / HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n' | socat -T2 -t5 - TCP:{authority},connect-timeout=2"
        ),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether busybox's resolver, asking the DNS server `server` from `netns`, finds `name`.
fn resolves(netns: &str, name: &str, server: &str) -> bool {
    in_netns(netns, &format!("busybox nslookup {name} {server}"))
        .status
        .success()
}

/// The lesson across nodes: an overlay Network spans A, B and C (scope cluster, a VXLAN id
/// from 4096, MTU 1450 on a 1500 underlay); con1 (A) and con2 (B) ping each other by name and
/// talk TCP; con2's published port answers on B's underlay address; con3 (C, another overlay)
/// neither reaches nor resolves con1 until a second Endpoint connects it; the largest
/// unfragmented ping passes and one byte more with DF fails; each node holds exactly its remote
/// endpoints' FDB and neighbour entries, and none once the Endpoints are deleted.
#[test]
fn overlay_lesson_across_three_nodes() {
    let cluster = Cluster::start("ovl");
    let pier = &cluster.a;
    let tunnels = cluster.wait_tunnel_addresses();
    assert_eq!(
        tunnels[NODE_A],
        Underlay::address(1),
        "A: from its default route"
    );
    assert_eq!(
        tunnels[NODE_B],
        Underlay::address(2),
        "B: from its default route"
    );
    assert_eq!(
        tunnels[NODE_C],
        Underlay::address(C_TUNNEL_HOST),
        "C: PIER_TUNNEL_ADDRESS wins over the default route's address"
    );
    for node in [NODE_A, NODE_B, NODE_C] {
        let mtu = pier.jsonpath(
            &format!("node {node}"),
            "{.metadata.annotations.pier\\.dev/underlay-mtu}",
        );
        assert_eq!(mtu, "1500", "{node} records its underlay MTU");
    }

    let (con1, con2, con3) = (cluster.ns("con1"), cluster.ns("con2"), cluster.ns("con3"));
    pier.apply(&format!(
        "{}{}{}{}{}\
         apiVersion: pier.dev/v1alpha1\nkind: PortPublish\nmetadata: {{name: con2}}\n\
         spec: {{endpoint: con2, ports: [{{containerPort: 80, hostPort: 8080}}]}}\n",
        overlay("ov-tage"),
        overlay("ov-open"),
        endpoint("con1", "ov-tage", con1, NODE_A),
        endpoint("con2", "ov-tage", con2, NODE_B),
        endpoint("con3", "ov-open", con3, NODE_C),
    ));
    for name in ["con1", "con2", "con3"] {
        pier.wait_condition(&format!("pep {name}"), "Attached", "True");
    }
    pier.wait_condition("ppub con2", "Published", "True");
    for (name, node) in [("con1", NODE_A), ("con2", NODE_B), ("con3", NODE_C)] {
        assert_eq!(
            pier.jsonpath(&format!("pep {name}"), "{.status.node}"),
            node
        );
    }

    // docker network ls: scope cluster for overlays, local for bridge; ids and MTU in status.
    let networks = pier.kubectl_ok("get pnet");
    for (network, scope) in [
        ("ov-tage", "cluster"),
        ("ov-open", "cluster"),
        ("bridge", "local"),
    ] {
        assert!(
            networks
                .lines()
                .any(|l| l.starts_with(&format!("{network} ")) && l.contains(scope)),
            "kubectl get pnet shows {network} with scope {scope}:\n{networks}"
        );
    }
    let vxlan_id = |network: &str| -> u32 {
        let id = pier.jsonpath(&format!("pnet {network}"), "{.status.vxlanId}");
        id.parse()
            .unwrap_or_else(|_| panic!("{network} has status.vxlanId: {id:?}"))
    };
    let (tage_id, open_id) = (vxlan_id("ov-tage"), vxlan_id("ov-open"));
    assert!(tage_id >= 4096 && open_id >= 4096, "{tage_id} {open_id}");
    assert_ne!(tage_id, open_id, "one VXLAN id per overlay network");
    for network in ["ov-tage", "ov-open"] {
        assert_eq!(
            pier.jsonpath(&format!("pnet {network}"), "{.status.mtu}"),
            "1450",
            "{network}: the underlay's 1500 minus VXLAN's 50"
        );
    }

    // Names and traffic across nodes: each node's DNS sees the other node's endpoint.
    let con1_address = pier.jsonpath("pep con1", "{.status.ipv4Address}");
    let con2_address = pier.jsonpath("pep con2", "{.status.ipv4Address}");
    wait_for("con1 (A) to ping con2 (B) by name", CONVERGE, || {
        ping(con1, "con2").then_some(())
    });
    wait_for("con2 (B) to ping con1 (A) by name", CONVERGE, || {
        ping(con2, "con1").then_some(())
    });
    assert!(ping(con1, &con2_address), "con1 reaches {con2_address}");
    let _httpd = Process(pier.serve_http(con2, "hello from con2 on node-b"));
    let page = wait_for(
        "con1 to fetch http://con2/",
        Duration::from_secs(10),
        || {
            let page = http_from(con1, "con2:80");
            page.contains("hello from con2 on node-b").then_some(page)
        },
    );
    assert!(page.starts_with("HTTP/1."), "{page}");

    // The published port leaves from the endpoint's own node: B's underlay address, from A.
    let b_address = Underlay::address(2);
    wait_for(
        &format!("con2's published port on {b_address}:8080 from node A"),
        Duration::from_secs(10),
        || {
            pier.http_from_node(&format!("{b_address}:8080"))
                .contains("hello from con2 on node-b")
                .then_some(())
        },
    );

    // MTU 1450: 1422 bytes of ICMP payload + 28 of headers fit; one more with DF set does not.
    assert!(
        in_netns(con1, "ping -c1 -W2 -M do -s 1422 con2")
            .status
            .success(),
        "the largest unfragmented ping (1422 bytes) passes"
    );
    assert!(
        !in_netns(con1, "ping -c1 -W2 -M do -s 1423 con2")
            .status
            .success(),
        "one byte more with DF set fails"
    );

    // Isolation: con3 on ov-open neither reaches nor resolves con1 until it is connected.
    let open_gateway = pier.jsonpath("pnet ov-open", "{.status.gateway}");
    wait_for(
        "con3 to resolve its own name (the DNS server answers at all)",
        CONVERGE,
        || resolves(con3, "con3", &open_gateway).then_some(()),
    );
    assert!(
        !ping(con3, &con1_address),
        "ov-open is isolated from ov-tage"
    );
    assert!(
        !resolves(con3, "con1", &open_gateway),
        "con3 does not resolve con1 before the connect"
    );
    pier.apply(&endpoint("con3-tage", "ov-tage", con3, NODE_C));
    pier.wait_condition("pep con3-tage", "Attached", "True");
    assert_eq!(
        pier.jsonpath("pep con3-tage", "{.status.interface}"),
        "eth1"
    );
    wait_for(
        "con3 (C) to resolve con1 (A) after the connect",
        CONVERGE,
        || resolves(con3, "con1", &open_gateway).then_some(()),
    );
    wait_for("con3 (C) to ping con1 (A) by name", CONVERGE, || {
        ping(con3, "con1").then_some(())
    });
    wait_for("con3 (C) to ping con2 (B) by name", CONVERGE, || {
        ping(con3, "con2").then_some(())
    });
    cluster.wait_entries_exact("after the connect", &["ov-tage", "ov-open"]);

    // Deleting the Endpoints leaves no entry for them on any node.
    let gone = cluster.endpoints();
    assert_eq!(gone.len(), 4, "{gone:?}");
    pier.kubectl_ok("delete ppub con2 --timeout=60s");
    pier.kubectl_ok("delete pep con1 con2 con3 con3-tage --timeout=60s");
    cluster.wait_no_entries_for(&gone);
    cluster.wait_entries_exact("after the deletes", &["ov-tage", "ov-open"]);
}

/// Convergence: the entries are exactly the live remote endpoints after a `kill -9` of node B's
/// agent while Endpoints came and went elsewhere, and its restart; a hand-deleted FDB entry and
/// VXLAN device come back with the resync; node C's Node deleted from the cluster (its agent
/// stopped) takes C's entries off A and B.
#[test]
fn overlay_converges_after_kill_9_and_node_removal() {
    let mut cluster = Cluster::start("ovc");
    let (con1, con2, con3) = (
        cluster.ns("con1").to_owned(),
        cluster.ns("con2").to_owned(),
        cluster.ns("con3").to_owned(),
    );
    cluster.a.apply(&format!(
        "{}{}{}{}",
        overlay("ov-conv"),
        endpoint("ea", "ov-conv", &con1, NODE_A),
        endpoint("eb", "ov-conv", &con2, NODE_B),
        endpoint("ec", "ov-conv", &con3, NODE_C),
    ));
    for name in ["ea", "eb", "ec"] {
        cluster
            .a
            .wait_condition(&format!("pep {name}"), "Attached", "True");
    }
    cluster.wait_entries_exact("three endpoints on three nodes", &["ov-conv"]);
    wait_for("eb (B) to ping ec (C) by name", CONVERGE, || {
        ping(&con2, "ec").then_some(())
    });

    // kill -9 of B's agent; meanwhile ec goes and ec2 comes on C: B's kernel still holds ec.
    cluster.b.kill_9();
    let ec = cluster
        .endpoints()
        .into_iter()
        .find(|e| e.name == "ec")
        .expect("ec is attached");
    cluster.a.kubectl_ok("delete pep ec --timeout=60s");
    cluster.a.apply(&endpoint("ec2", "ov-conv", &con3, NODE_C));
    cluster.a.wait_condition("pep ec2", "Attached", "True");
    assert!(
        entries(&cluster.b.netns)
            .fdb
            .iter()
            .any(|(mac, _)| *mac == ec.mac),
        "with its agent dead, B still holds ec's entry (the test would prove nothing otherwise)"
    );

    // The restart converges: ec's entry gone, ec2's there, each once; traffic works.
    cluster.b.restart_agent();
    cluster.b.wait_ready();
    cluster.wait_entries_exact("after B's restart", &["ov-conv"]);
    wait_for("eb (B) to ping ec2 (C) by name", CONVERGE, || {
        ping(&con2, "ec2").then_some(())
    });
    wait_for("eb (B) to ping ea (A) by name", CONVERGE, || {
        ping(&con2, "ea").then_some(())
    });
    assert_eq!(cluster.a.condition("pep eb", "Attached").0, "True");

    // Drift on A: a hand-deleted FDB entry, then the VXLAN device itself, come back.
    let uid = cluster.a.jsonpath("pnet ov-conv", "{.metadata.uid}");
    let vxlan = pier_crds::names::vxlan_name(&uid);
    let eb = cluster
        .endpoints()
        .into_iter()
        .find(|e| e.name == "eb")
        .expect("eb is attached");
    let a_netns = cluster.a.node_netns.clone();
    system::sh_ok(&format!(
        "ip netns exec {a_netns} bridge fdb del {} dev {vxlan} dst {}",
        eb.mac,
        Underlay::address(2)
    ));
    cluster.wait_entries_exact("after a hand-deleted FDB entry on A", &["ov-conv"]);
    system::sh_ok(&format!("ip netns exec {a_netns} ip link del {vxlan}"));
    cluster.wait_entries_exact("after a hand-deleted VXLAN device on A", &["ov-conv"]);
    wait_for("ea (A) to ping eb (B) again", CONVERGE, || {
        ping(&con1, &eb.address).then_some(())
    });

    // Node C leaves the cluster: its agent stops, its Node is deleted; A and B drop its entries.
    let (status, _) = cluster.c.terminate(Duration::from_secs(15));
    assert!(status.success(), "pier node on C exited with {status}");
    let ec2 = cluster
        .endpoints()
        .into_iter()
        .find(|e| e.name == "ec2")
        .expect("ec2 is still attached in the API");
    cluster
        .a
        .kubectl_ok(&format!("delete node {NODE_C} --timeout=60s"));
    let mut last = Entries::default();
    let dropped = wait_until(CONVERGE, || {
        [NODE_A, NODE_B].into_iter().all(|node| {
            last = entries(cluster.node_netns(node));
            !last.fdb.iter().any(|(mac, _)| *mac == ec2.mac)
                && !last.neigh.iter().any(|(ip, _)| *ip == ec2.address)
        })
    });
    assert!(
        dropped,
        "node C's endpoint ec2 ({ec2:?}) still has entries after its Node went: {last:?}"
    );
    assert!(
        ping(&con1, &eb.address),
        "A and B still reach each other after C left"
    );
}
