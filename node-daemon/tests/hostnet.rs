//! Kernel test of `hostnet`: the subnets a namespace already uses, read over netlink, without the
//! ones Pier owns. Runs in its own namespace (see tests/common); needs root.

mod common;

use common::{Ns, require_root};
use ipnet::Ipv4Net;
use pier_node::kernel::hostnet::subnets_in_use_in;

fn net(text: &str) -> Ipv4Net {
    text.parse().expect("test subnet")
}

#[test]
fn reports_foreign_addresses_and_routes_but_not_piers_own() {
    require_root();
    let ns = Ns::new("hostnet");
    ns.sh("ip link add hn0 type veth peer name hn1 \
         && ip addr add 10.123.4.1/24 dev hn0 \
         && ip link set hn0 up && ip link set hn1 up \
         && ip route add 10.200.0.0/16 via 10.123.4.2 dev hn0 \
         && ip link add pier-0000abcd type bridge \
         && ip addr add 10.124.0.1/24 dev pier-0000abcd \
         && ip link set pier-0000abcd up");

    let found = subnets_in_use_in(Some(&ns.path())).expect("reading the namespace's subnets");
    let subnets: Vec<Ipv4Net> = found.iter().map(|h| h.subnet).collect();
    let shown = format!("{found:#?}");

    let address = found
        .iter()
        .find(|h| h.subnet == net("10.123.4.0/24"))
        .unwrap_or_else(|| panic!("10.123.4.0/24 missing from {shown}"));
    assert_eq!(address.source, "address 10.123.4.1/24 on hn0");
    let route = found
        .iter()
        .find(|h| h.subnet == net("10.200.0.0/16"))
        .unwrap_or_else(|| panic!("10.200.0.0/16 missing from {shown}"));
    assert_eq!(route.source, "route 10.200.0.0/16 via 10.123.4.2 dev hn0");

    // Pier's bridge (its address and its connected route), loopback, and the local table's
    // per-address routes are all left out.
    assert!(!subnets.contains(&net("10.124.0.0/24")), "{shown}");
    assert!(!subnets.contains(&net("127.0.0.0/8")), "{shown}");
    assert!(!subnets.contains(&net("10.123.4.1/32")), "{shown}");
    assert_eq!(subnets.len(), 2, "{shown}");
}
