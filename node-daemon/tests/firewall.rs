//! Kernel tests of the firewall's table management: each test has its own "host" namespace.

mod common;

use common::Ns;
use common::firewall::{network, network6, port, require_root, state};
use pier_node::firewall::{
    self, LOOPBACK6_RULES, MAP_PORTS_ADDR, MAP_PORTS_ADDR6, MAP_PORTS_ANY, MAP_PORTS_ANY6, render,
};
use pier_node::state::{NodeState, Protocol};

fn sample() -> NodeState {
    state(
        vec![
            network("web", "172.18.0.0/16", false),
            network("db", "172.19.0.0/16", false),
            network("secret", "10.77.0.0/24", true),
        ],
        vec![
            port("0.0.0.0", 8000, Protocol::Tcp, "172.18.0.2", 80),
            port("127.0.0.1", 8443, Protocol::Tcp, "172.18.0.2", 443),
            port("0.0.0.0", 5353, Protocol::Udp, "172.19.0.3", 53),
            port("0.0.0.0", 9000, Protocol::Sctp, "172.19.0.3", 9000),
            // internal: never published
            port("0.0.0.0", 7000, Protocol::Tcp, "10.77.0.2", 70),
        ],
    )
}

fn converge(host: &Ns, state: &NodeState) {
    let plan = firewall::plan(Some(&host.path()), state).expect("plan");
    firewall::apply(Some(&host.path()), &plan).expect("apply");
}

fn set_elements(json: &serde_json::Value, name: &str) -> Vec<serde_json::Value> {
    json["nftables"]
        .as_array()
        .expect("nftables array")
        .iter()
        .filter_map(|o| o.get("set").or_else(|| o.get("map")))
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("set {name} in {json}"))
        .get("elem")
        .and_then(|e| e.as_array().cloned())
        .unwrap_or_default()
}

#[test]
fn apply_creates_the_table_and_a_second_plan_is_empty() {
    require_root();
    let host = Ns::new("apply");
    let state = sample();
    let plan = firewall::plan(Some(&host.path()), &state).expect("plan");
    assert!(plan.rebuild().is_some(), "{plan}");
    firewall::apply(Some(&host.path()), &plan).expect("apply");

    let json = host.pier_json();
    let objects = json["nftables"].as_array().expect("nftables array");
    let chains: Vec<_> = objects
        .iter()
        .filter_map(|o| o.get("chain"))
        .map(|c| {
            (
                c["name"].as_str().expect("name"),
                c["hook"].as_str().expect("hook"),
            )
        })
        .collect();
    assert_eq!(
        chains,
        [
            ("forward", "forward"),
            ("input", "input"),
            ("prerouting", "prerouting"),
            ("output", "output"),
            ("postrouting", "postrouting")
        ]
    );
    assert_eq!(set_elements(&json, "bridges").len(), 3);
    assert_eq!(set_elements(&json, "internal_bridges").len(), 1);
    assert_eq!(set_elements(&json, MAP_PORTS_ANY).len(), 3, "{json}");
    assert_eq!(set_elements(&json, MAP_PORTS_ADDR).len(), 1, "{json}");

    // nft decompiles the kernel's bytecode back into exactly the rules Pier meant.
    let listing = host.sh("nft list table inet pier");
    for chain in &render(&state).chains {
        for rule in &chain.rules {
            assert!(
                listing.contains(rule.text),
                "rule {:?} not in\n{listing}",
                rule.text
            );
        }
    }
    let bridges = host.sh("nft list set inet pier bridges");
    for n in &state.networks {
        assert!(
            bridges.contains(&format!("\"{}\"", n.bridge_name())),
            "{bridges}"
        );
    }
    assert!(
        listing.contains("tcp . 8000 : 172.18.0.2 . 80"),
        "{listing}"
    );
    assert!(
        listing.contains("127.0.0.1 . tcp . 8443 : 172.18.0.2 . 443"),
        "{listing}"
    );
    assert!(
        listing.contains("sctp . 9000 : 172.19.0.3 . 9000"),
        "{listing}"
    );
    assert!(
        !listing.contains("7000"),
        "internal port published:\n{listing}"
    );
    // Adjacent subnets are one range.
    assert!(listing.contains("172.18.0.0/15"), "{listing}");
    assert!(
        !listing.contains("10.77.0.0"),
        "internal subnet masqueraded:\n{listing}"
    );

    let again = firewall::plan(Some(&host.path()), &state).expect("second plan");
    assert!(again.is_empty(), "second plan not empty:\n{again}");
    assert_eq!(again.to_string(), "table inet pier: up to date\n");
}

#[test]
fn one_more_port_is_one_element_and_removing_it_removes_it() {
    require_root();
    let host = Ns::new("port");
    let mut state = state(vec![network("web", "172.18.0.0/16", false)], vec![]);
    for i in 0..1000 {
        state
            .ports
            .push(port("0.0.0.0", 10000 + i, Protocol::Tcp, "172.18.0.2", 80));
    }
    converge(&host, &state);

    state
        .ports
        .push(port("0.0.0.0", 8000, Protocol::Tcp, "172.18.0.3", 80));
    let plan = firewall::plan(Some(&host.path()), &state).expect("plan");
    assert!(plan.rebuild().is_none(), "{plan}");
    assert_eq!(plan.element_changes(), 1, "{plan}");
    assert!(
        plan.to_string()
            .contains("+ ports_any tcp . 8000 : 172.18.0.3 . 80"),
        "{plan}"
    );
    firewall::apply(Some(&host.path()), &plan).expect("apply");
    let listing = host.sh("nft list map inet pier ports_any");
    assert!(
        listing.contains("tcp . 8000 : 172.18.0.3 . 80"),
        "{listing}"
    );
    assert_eq!(set_elements(&host.pier_json(), MAP_PORTS_ANY).len(), 1001);

    state.ports.pop();
    let plan = firewall::plan(Some(&host.path()), &state).expect("plan");
    assert_eq!(plan.element_changes(), 1, "{plan}");
    assert!(
        plan.to_string().contains("- ports_any tcp . 8000"),
        "{plan}"
    );
    firewall::apply(Some(&host.path()), &plan).expect("apply");
    let listing = host.sh("nft list map inet pier ports_any");
    assert!(!listing.contains(" 8000 "), "{listing}");
    assert!(
        firewall::plan(Some(&host.path()), &state)
            .expect("plan")
            .is_empty()
    );
}

#[test]
fn changed_networks_are_element_changes() {
    require_root();
    let host = Ns::new("nets");
    let mut state = sample();
    converge(&host, &state);
    state.networks.remove(1); // db: 172.19.0.0/16
    let plan = firewall::plan(Some(&host.path()), &state).expect("plan");
    assert!(plan.rebuild().is_none(), "{plan}");
    firewall::apply(Some(&host.path()), &plan).expect("apply");
    let listing = host.sh("nft list set inet pier masq_subnets");
    assert!(listing.contains("172.18.0.0/16"), "{listing}");
    assert!(!listing.contains("172.19"), "{listing}");
    assert!(
        firewall::plan(Some(&host.path()), &state)
            .expect("plan")
            .is_empty()
    );
}

#[test]
fn foreign_table_survives_apply_and_reset() {
    require_root();
    let host = Ns::new("foreign");
    host.sh("nft add table inet foreign && nft add chain inet foreign input '{ type filter hook input priority 0; }' && nft add rule inet foreign input tcp dport 22 accept");
    converge(&host, &sample());
    let mut state = sample();
    state.ports.pop();
    state.ports.pop();
    converge(&host, &state);
    let foreign = host.sh("nft list table inet foreign");
    assert!(foreign.contains("tcp dport 22 accept"), "{foreign}");

    firewall::reset(Some(&host.path())).expect("reset");
    assert!(
        !host.has_pier_table(),
        "table inet pier still there after reset"
    );
    let foreign = host.sh("nft list table inet foreign");
    assert!(foreign.contains("tcp dport 22 accept"), "{foreign}");
    // Resetting twice is fine.
    firewall::reset(Some(&host.path())).expect("second reset");
}

#[test]
fn out_of_band_damage_is_repaired_by_the_next_apply() {
    require_root();
    let host = Ns::new("repair");
    let state = sample();
    converge(&host, &state);
    // Sorted lines: hash sets list their elements in an order that depends on a per-set seed.
    let listing = || {
        let mut lines: Vec<String> = host
            .sh("nft list table inet pier")
            .split([',', '\n'])
            .map(|l| l.trim().to_owned())
            .collect();
        lines.sort();
        lines
    };
    let pristine = listing();

    for damage in [
        "nft flush table inet pier",
        "nft flush chain inet pier postrouting",
        "nft delete chain inet pier forward",
        "nft flush map inet pier ports_any",
        "nft delete element inet pier bridges '{ \"pier-00000000\" }' 2>/dev/null; nft add element inet pier bridges '{ \"foreign0\" }'",
        "nft insert rule inet pier forward accept",
        "nft delete table inet pier",
    ] {
        host.sh(damage);
        let plan = firewall::plan(Some(&host.path()), &state).expect("plan");
        assert!(!plan.is_empty(), "damage `{damage}` not noticed");
        firewall::apply(Some(&host.path()), &plan).expect("repair");
        assert_eq!(listing(), pristine, "not repaired after `{damage}`");
        assert!(
            firewall::plan(Some(&host.path()), &state)
                .expect("plan")
                .is_empty(),
            "plan not empty after repairing `{damage}`"
        );
    }
}

#[test]
fn thousands_of_ports_go_in_one_batch() {
    require_root();
    let host = Ns::new("large");
    // ~600 KB of netlink: several libnftnl batch pages, sent as one datagram (one transaction).
    let mut state = state(vec![network("web", "172.18.0.0/16", false)], vec![]);
    for i in 0..6000u16 {
        let protocol = if i % 2 == 0 {
            Protocol::Tcp
        } else {
            Protocol::Udp
        };
        state
            .ports
            .push(port("0.0.0.0", 20000 + i, protocol, "172.18.0.2", 80));
    }
    converge(&host, &state);
    assert_eq!(set_elements(&host.pier_json(), MAP_PORTS_ANY).len(), 6000);
    assert!(
        firewall::plan(Some(&host.path()), &state)
            .expect("plan")
            .is_empty()
    );
    // Removing all of them is element deletes in several messages of one batch.
    state.ports.clear();
    let plan = firewall::plan(Some(&host.path()), &state).expect("plan");
    assert_eq!(plan.element_changes(), 6000);
    firewall::apply(Some(&host.path()), &plan).expect("apply");
    assert!(set_elements(&host.pier_json(), MAP_PORTS_ANY).is_empty());
}

/// `sample()` with IPv6 beside IPv4 on web, an IPv6-only network and IPv6 ports.
fn sample6() -> NodeState {
    let mut state = sample();
    state.networks[0] = network6("web", Some("172.18.0.0/16"), "fd00:18::/64", false);
    state.networks[2] = network6("secret", Some("10.77.0.0/24"), "fd00:77::/64", true);
    state
        .networks
        .push(network6("v6only", None, "fd00:18:0:1::/64", false));
    state.ports.extend([
        port("::", 8000, Protocol::Tcp, "fd00:18::2", 80),
        port("::1", 8443, Protocol::Tcp, "fd00:18::2", 443),
        port("2001:db8::7", 5353, Protocol::Udp, "fd00:18:0:1::3", 53),
        // internal: never published
        port("::", 7000, Protocol::Tcp, "fd00:77::2", 70),
    ]);
    state
}

#[test]
fn ipv6_maps_and_table_ip6_pier_apply_converge_and_go() {
    require_root();
    let host = Ns::new("apply6");
    let state = sample6();
    converge(&host, &state);

    let json = host.pier_json();
    assert_eq!(set_elements(&json, MAP_PORTS_ANY6).len(), 1, "{json}");
    assert_eq!(set_elements(&json, MAP_PORTS_ADDR6).len(), 2, "{json}");
    let listing = host.sh("nft list table inet pier");
    for element in [
        "tcp . 8000 : fd00:18::2 . 80",
        "::1 . tcp . 8443 : fd00:18::2 . 443",
        "2001:db8::7 . udp . 5353 : fd00:18:0:1::3 . 53",
    ] {
        assert!(listing.contains(element), "{element} not in\n{listing}");
    }
    assert!(!listing.contains("fd00:77::"), "internal IPv6:\n{listing}");
    // Adjacent /64s are one range in the masquerade set; the internal one is left out.
    let masq = host.sh("nft list set inet pier masq_subnets6");
    assert!(masq.contains("fd00:18::/63"), "{masq}");

    // nft reads table ip6 pier back as exactly the rules Pier meant.
    let ip6 = host.sh("nft list table ip6 pier");
    assert!(
        ip6.contains("type filter hook prerouting priority dstnat + 10; policy accept;"),
        "{ip6}"
    );
    for text in LOOPBACK6_RULES {
        assert!(ip6.contains(text), "rule {text:?} not in\n{ip6}");
    }
    let again = firewall::plan(Some(&host.path()), &state).expect("second plan");
    assert!(again.is_empty(), "second plan not empty:\n{again}");

    // Damage to table ip6 pier is repaired, whole.
    for damage in [
        "nft flush chain ip6 pier loopback6",
        "nft delete table ip6 pier",
        "nft add chain ip6 pier extra",
    ] {
        host.sh(damage);
        let plan = firewall::plan(Some(&host.path()), &state).expect("plan");
        assert!(
            plan.loopback6().is_some(),
            "damage `{damage}` not noticed: {plan}"
        );
        assert!(plan.rebuild().is_none(), "{plan}");
        firewall::apply(Some(&host.path()), &plan).expect("repair");
        assert_eq!(host.sh("nft list table ip6 pier"), ip6, "after `{damage}`");
    }

    // No IPv6 network left: the table goes, in the same batch as the element changes.
    let ipv4_only = sample();
    let plan = firewall::plan(Some(&host.path()), &ipv4_only).expect("plan");
    assert!(plan.rebuild().is_none(), "{plan}");
    assert!(
        plan.to_string().contains("table ip6 pier: delete"),
        "{plan}"
    );
    firewall::apply(Some(&host.path()), &plan).expect("apply");
    assert!(!host.exec("nft list table ip6 pier").status.success());
    assert!(
        set_elements(&host.pier_json(), MAP_PORTS_ANY6).is_empty(),
        "IPv6 ports left"
    );
    assert!(
        firewall::plan(Some(&host.path()), &ipv4_only)
            .expect("plan")
            .is_empty()
    );

    // Reset takes both tables.
    converge(&host, &state);
    firewall::reset(Some(&host.path())).expect("reset");
    assert!(!host.has_pier_table());
    assert!(!host.exec("nft list table ip6 pier").status.success());
    firewall::reset(Some(&host.path())).expect("second reset");
}
