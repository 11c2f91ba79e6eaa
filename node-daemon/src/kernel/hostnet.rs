//! Subnets already in use on the node by things Pier does not own (Docker's `docker0`, a VPN's
//! tunnel, the LAN), so a Network is never given — or silently attached to — a subnet that would
//! shadow them.
//!
//! The collection itself ([`collect`]) is pure and unit-tested; [`subnets_in_use`] feeds it one
//! dump each of links, addresses and routes.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;

use crate::kernel::netlink::{
    Link, LinkKind, MAIN_TABLE, NetlinkError, Nl, RouteKind, V4Address, V4Route,
};
use pier_crds::names::{is_pier_bridge_name, is_pier_veth_name};

/// One subnet the node already uses, and what uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSubnet {
    /// Always a network address (`172.17.0.0/16`, not `172.17.0.1/16`).
    pub subnet: Ipv4Net,
    /// For messages: `address 172.17.0.1/16 on docker0` or `route 10.8.0.0/24 dev tun0`.
    pub source: String,
}

/// The first subnet in `in_use` that overlaps `subnet`.
///
/// Two CIDR blocks overlap iff one contains the other's network address (blocks nest or are
/// disjoint, they never partly overlap).
pub fn overlapping(subnet: Ipv4Net, in_use: &[HostSubnet]) -> Option<&HostSubnet> {
    in_use.iter().find(|host| {
        host.subnet.contains(&subnet.network()) || subnet.contains(&host.subnet.network())
    })
}

/// The subnets in use in the namespace `nl` is bound to (see [`collect`] for what counts).
pub fn subnets_in_use(nl: &Nl) -> Result<Vec<HostSubnet>, NetlinkError> {
    let links = nl.links()?;
    let addresses = nl.v4_addresses()?;
    let routes = nl.v4_routes()?;
    Ok(collect(&links, &addresses, &routes))
}

/// [`subnets_in_use`] for the namespace at `netns` (`None`: the process's own namespace).
pub fn subnets_in_use_in(netns: Option<&Path>) -> Result<Vec<HostSubnet>, NetlinkError> {
    subnets_in_use(&Nl::open_in(netns)?)
}

/// Loopback and link-local: every host has them and no Network may use them anyway.
const ALWAYS_IGNORED: [Ipv4Net; 2] = [
    Ipv4Net::new_assert(Ipv4Addr::new(127, 0, 0, 0), 8),
    Ipv4Net::new_assert(Ipv4Addr::new(169, 254, 0, 0), 16),
];

/// The subnets in use, from one dump each of links, addresses and routes: every IPv4 address (as
/// its network; /32s too, they overlap as much as any other) and every forwarding, blackhole,
/// unreachable or prohibit route of the main table, except
/// - anything on `lo` or on a link Pier owns (its bridges and host-side veths),
/// - anything inside 127.0.0.0/8 or 169.254.0.0/16,
/// - default routes, and the two /1 halves VPNs (OpenVPN's `def1`) install to override the
///   default route without replacing it: counted as in use they would overlap every subnet.
///
/// Each subnet appears once, addresses first (they name the link most readably).
/// The node's bridges of other container engines and hypervisors (docker0, br-…, virbr0): bridges
/// that are not Pier's and carry no default route of the main table (one that does is the
/// node's uplink, e.g. `br0` on a hypervisor host). Sorted by name.
pub fn host_bridges(links: &[Link], routes: &[V4Route]) -> Vec<String> {
    let uplinks: HashSet<u32> = routes
        .iter()
        .filter(|r| r.table == MAIN_TABLE && r.destination.prefix_len() == 0)
        .filter_map(|r| r.oif)
        .collect();
    let mut names: Vec<String> = links
        .iter()
        .filter(|l| l.kind == LinkKind::Bridge && !is_pier_bridge_name(&l.name))
        .filter(|l| !uplinks.contains(&l.index))
        .map(|l| l.name.clone())
        .collect();
    names.sort();
    names
}

pub fn collect(links: &[Link], addresses: &[V4Address], routes: &[V4Route]) -> Vec<HostSubnet> {
    let names: HashMap<u32, &Link> = links.iter().map(|link| (link.index, link)).collect();
    // A link that vanished between the dumps has no name; it is not known to be Pier's, so keep it.
    let skipped = |index: u32| names.get(&index).is_some_and(|link| is_skipped_link(link));
    let name = |index: u32| match names.get(&index) {
        Some(link) => link.name.clone(),
        None => format!("link #{index}"),
    };

    let mut seen = HashSet::new();
    let mut found = Vec::new();
    let mut push = |subnet: Ipv4Net, source: String| {
        if ALWAYS_IGNORED
            .iter()
            .any(|ignored| ignored.contains(&subnet))
        {
            return;
        }
        if seen.insert(subnet) {
            found.push(HostSubnet { subnet, source });
        }
    };

    for address in addresses {
        if skipped(address.index) {
            continue;
        }
        push(
            address.address.trunc(),
            format!("address {} on {}", address.address, name(address.index)),
        );
    }
    for route in routes {
        if route.table != MAIN_TABLE || route.destination.prefix_len() <= 1 {
            continue;
        }
        if route.oif.is_some_and(skipped) {
            continue;
        }
        let destination = route.destination.trunc();
        let source = match route.kind {
            RouteKind::Unicast => {
                let mut text = format!("route {destination}");
                if let Some(gateway) = route.gateway {
                    text.push_str(&format!(" via {gateway}"));
                }
                if let Some(oif) = route.oif {
                    text.push_str(&format!(" dev {}", name(oif)));
                }
                text
            }
            RouteKind::Blackhole => format!("route blackhole {destination}"),
            RouteKind::Unreachable => format!("route unreachable {destination}"),
            RouteKind::Prohibit => format!("route prohibit {destination}"),
            // `throw` and friends route nothing themselves.
            RouteKind::Other(_) => continue,
        };
        push(destination, source);
    }
    found
}

/// `lo`, and the links Pier owns: the same name-and-kind test the dataplane uses before it
/// deletes anything, so a user's link that merely looks like Pier's still counts.
fn is_skipped_link(link: &Link) -> bool {
    link.name == "lo"
        || (link.kind == LinkKind::Bridge && is_pier_bridge_name(&link.name))
        || (link.kind == LinkKind::Veth && is_pier_veth_name(&link.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> Ipv4Net {
        text.parse().expect("test subnet")
    }

    fn host(subnet: &str) -> HostSubnet {
        HostSubnet {
            subnet: net(subnet),
            source: format!("test {subnet}"),
        }
    }

    fn link(index: u32, name: &str, kind: LinkKind) -> Link {
        Link {
            up: true,
            ..Link::new(index, name, kind)
        }
    }

    fn address(index: u32, text: &str) -> V4Address {
        V4Address {
            index,
            address: net(text),
        }
    }

    fn route(destination: &str, oif: Option<u32>, table: u32, kind: RouteKind) -> V4Route {
        V4Route {
            destination: net(destination),
            gateway: None,
            oif,
            table,
            kind,
            protocol: 2,
        }
    }

    #[test]
    fn host_bridges_are_other_bridges_without_a_default_route() {
        let links = [
            link(1, "lo", LinkKind::None),
            link(2, "docker0", LinkKind::Bridge),
            link(3, "br0", LinkKind::Bridge),
            link(4, "pier-0a1b2c3d", LinkKind::Bridge),
            link(5, "virbr0", LinkKind::Bridge),
            link(6, "eth0", LinkKind::Other("veth".into())),
        ];
        let routes = [
            route("0.0.0.0/0", Some(3), MAIN_TABLE, RouteKind::Unicast),
            route("0.0.0.0/0", Some(5), 100, RouteKind::Unicast),
            route("172.17.0.0/16", Some(2), MAIN_TABLE, RouteKind::Unicast),
        ];
        // br0 is the uplink (the default route); a default route in another table does not count.
        assert_eq!(host_bridges(&links, &routes), ["docker0", "virbr0"]);
    }

    #[test]
    fn overlap_is_containment_either_way() {
        let in_use = [host("172.17.0.0/16"), host("10.8.0.0/24")];
        // Inside, containing, equal.
        assert_eq!(
            overlapping(net("172.17.5.0/24"), &in_use).map(|h| h.subnet),
            Some(net("172.17.0.0/16"))
        );
        assert_eq!(
            overlapping(net("10.0.0.0/8"), &in_use).map(|h| h.subnet),
            Some(net("10.8.0.0/24"))
        );
        assert_eq!(
            overlapping(net("172.17.0.0/16"), &in_use).map(|h| h.subnet),
            Some(net("172.17.0.0/16"))
        );
        // Adjacent blocks do not overlap.
        assert_eq!(overlapping(net("172.18.0.0/16"), &in_use), None);
        assert_eq!(overlapping(net("10.8.1.0/24"), &in_use), None);
        assert_eq!(overlapping(net("172.16.0.0/16"), &[]), None);
        // A host address given with its prefix is compared by its network.
        assert!(overlapping(net("172.17.0.1/16"), &in_use).is_some());
        // /32s overlap only the block they are in.
        let one = [host("192.168.1.7/32")];
        assert!(overlapping(net("192.168.1.0/24"), &one).is_some());
        assert!(overlapping(net("192.168.2.0/24"), &one).is_none());
    }

    #[test]
    fn collects_addresses_as_networks_and_main_table_routes() {
        let links = [
            link(1, "lo", LinkKind::None),
            link(2, "eth0", LinkKind::None),
            link(3, "docker0", LinkKind::Bridge),
            link(4, "tun0", LinkKind::Other("tun".into())),
        ];
        let addresses = [
            address(1, "127.0.0.1/8"),
            address(2, "192.168.1.20/24"),
            address(3, "172.17.0.1/16"),
            address(2, "192.168.1.99/32"),
        ];
        let mut via = route("10.0.0.0/8", Some(2), MAIN_TABLE, RouteKind::Unicast);
        via.gateway = Some(Ipv4Addr::new(192, 168, 1, 1));
        let routes = [
            route("0.0.0.0/0", Some(2), MAIN_TABLE, RouteKind::Unicast),
            // The kernel's connected routes repeat the address networks.
            route("192.168.1.0/24", Some(2), MAIN_TABLE, RouteKind::Unicast),
            route("172.17.0.0/16", Some(3), MAIN_TABLE, RouteKind::Unicast),
            route("10.8.0.0/24", Some(4), MAIN_TABLE, RouteKind::Unicast),
            via,
            route("198.51.100.0/24", None, MAIN_TABLE, RouteKind::Blackhole),
            // Other tables and kinds.
            route("203.0.113.0/24", Some(4), 100, RouteKind::Unicast),
            route("192.168.1.255/32", Some(2), 255, RouteKind::Other(3)),
            route("192.0.2.0/24", None, MAIN_TABLE, RouteKind::Other(9)),
        ];
        let found = collect(&links, &addresses, &routes);
        let pairs: Vec<(String, &str)> = found
            .iter()
            .map(|h| (h.subnet.to_string(), h.source.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("192.168.1.0/24".into(), "address 192.168.1.20/24 on eth0"),
                ("172.17.0.0/16".into(), "address 172.17.0.1/16 on docker0"),
                ("192.168.1.99/32".into(), "address 192.168.1.99/32 on eth0"),
                ("10.8.0.0/24".into(), "route 10.8.0.0/24 dev tun0"),
                (
                    "10.0.0.0/8".into(),
                    "route 10.0.0.0/8 via 192.168.1.1 dev eth0"
                ),
                ("198.51.100.0/24".into(), "route blackhole 198.51.100.0/24"),
            ]
        );
    }

    #[test]
    fn skips_pier_links_loopback_link_local_and_vpn_default_halves() {
        let links = [
            link(1, "lo", LinkKind::None),
            link(2, "eth0", LinkKind::None),
            link(5, "pier-0000abcd", LinkKind::Bridge),
            link(6, "pv0123456789", LinkKind::Veth),
            // Named like Pier's but of another kind: not Pier's, so it counts.
            link(7, "pier-0000beef", LinkKind::Other("dummy".into())),
        ];
        let addresses = [
            address(1, "10.99.0.1/32"),
            address(2, "169.254.3.4/16"),
            address(5, "10.124.0.1/24"),
            address(6, "10.125.0.1/24"),
            address(7, "10.126.0.1/24"),
        ];
        let routes = [
            route("10.124.0.0/24", Some(5), MAIN_TABLE, RouteKind::Unicast),
            route("10.127.0.0/16", Some(1), MAIN_TABLE, RouteKind::Unicast),
            route("169.254.0.0/16", Some(2), MAIN_TABLE, RouteKind::Unicast),
            route("0.0.0.0/1", Some(2), MAIN_TABLE, RouteKind::Unicast),
            route("128.0.0.0/1", Some(2), MAIN_TABLE, RouteKind::Unicast),
            // A link that vanished between the dumps still counts.
            route("10.128.0.0/16", Some(42), MAIN_TABLE, RouteKind::Unicast),
        ];
        let found = collect(&links, &addresses, &routes);
        let pairs: Vec<(String, &str)> = found
            .iter()
            .map(|h| (h.subnet.to_string(), h.source.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                (
                    "10.126.0.0/24".into(),
                    "address 10.126.0.1/24 on pier-0000beef"
                ),
                ("10.128.0.0/16".into(), "route 10.128.0.0/16 dev link #42"),
            ]
        );
    }
}
