//! The `bridge` driver: a Linux bridge per network (with the gateway address of each family the
//! network has, up, `route_localnet`, no router advertisements accepted), IP forwarding on the
//! node, and a veth per endpoint into its namespace. An `overlay` network has the same bridge and
//! endpoints (its VXLAN device is [`super::overlay`]'s).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::Diff;
use super::checks::{check_address, check_address6, earlier, valid_interface_name};
use crate::dataplane::alias::{AliasState, read_alias};
use crate::dataplane::names::fingerprint;
use crate::dataplane::plan::{Attach, BridgeFix, Step};
use crate::dataplane::report::{OWN_DEFAULT_ROUTE_KEPT, ObjectKey};
use crate::dataplane::snapshot::{NamespaceIdentity, Peer};
use crate::kernel::netlink::{self, Link, LinkKind};
use crate::state::{BridgeAttachment, EndpointState, NetworkState, NodeState};

/// `net.ipv4.ip_forward`, needed as soon as the state has a network with a bridge, and
/// `net.ipv6.conf.all.forwarding` as soon as one has IPv6.
pub(super) fn forwarding(diff: &mut Diff<'_>) {
    let bridges = || diff.state.networks.iter().filter(|n| n.driver.has_bridge());
    let wants_v4 = bridges().next().is_some();
    let wants_v6 = bridges().any(|n| n.subnet6.is_some());
    if !wants_v4 {
        return;
    }
    // Writing net.ipv4.ip_forward (net.ipv6.conf.all.forwarding) sets `forwarding` on every
    // link, `lo` included, and `lo` always exists: its settings, read with the links, stand for
    // the node's.
    let lo = diff.links.get("lo");
    let v4 = lo
        .and_then(|lo| lo.inet)
        .is_some_and(|conf| conf.forwarding);
    let v6 = !wants_v6
        || lo
            .and_then(|lo| lo.inet6)
            .is_some_and(|conf| conf.forwarding);
    // Before everything else, as the first steps.
    if !v4 {
        diff.plan.steps.push(Step::EnableForwarding);
    }
    if !v6 {
        diff.plan.steps.push(Step::EnableIpv6Forwarding);
    }
    if v4 && v6 {
        diff.in_sync(ObjectKey::Forwarding);
    }
}

/// The gateway addresses a network's bridge has, with the subnet's prefix: IPv4 and IPv6.
type Gateways = (Option<Ipv4Net>, Option<Ipv6Net>);

fn gateways(network: &NetworkState) -> Gateways {
    let v4 = network
        .subnet
        .zip(network.gateway)
        .and_then(|(subnet, gateway)| Ipv4Net::new(gateway, subnet.prefix_len()).ok());
    let v6 = network
        .subnet6
        .zip(network.gateway6)
        .and_then(|(subnet, gateway)| Ipv6Net::new(gateway, subnet.prefix_len()).ok());
    (v4, v6)
}

/// A bridge or overlay network's bridge: created, re-made (its name held by another kind of
/// link) or fixed. Its MAC derives from its name, so an overlay's gateway has one MAC on every
/// node.
pub(super) fn network(diff: &mut Diff<'_>, network: &NetworkState) {
    if !network.driver.has_bridge() {
        return;
    }
    let (gateway, gateway6) = gateways(network);
    if gateway.is_none() && gateway6.is_none() {
        return; // validate() rejected this already
    }
    let name = network.bridge_name();
    let create = Step::CreateBridge {
        network: network.name.clone(),
        bridge: name.clone(),
        gateway,
        gateway6,
        mtu: network.mtu,
    };
    match diff.links.get(name.as_str()).copied() {
        None => diff.bridges.push(create),
        Some(link) if link.kind != LinkKind::Bridge => {
            // The name is Pier's by contract; whatever holds it is re-made.
            diff.deletes.push(Step::DeleteLink {
                name: name.clone(),
                index: link.index,
                reason: "not a bridge".to_owned(),
            });
            diff.bridges.push(create);
        }
        Some(link) => {
            let fixes = bridge_fixes(diff, link, network.mtu, (gateway, gateway6));
            if fixes.is_empty() {
                diff.in_sync(ObjectKey::network(&network.name));
            } else {
                diff.bridges.push(Step::FixBridge {
                    network: network.name.clone(),
                    bridge: name,
                    index: link.index,
                    fixes,
                });
            }
        }
    }
}

/// What an existing bridge lacks.
fn bridge_fixes(diff: &Diff<'_>, link: &Link, mtu: u32, gateways: Gateways) -> Vec<BridgeFix> {
    let mut fixes = Vec::new();
    if link.mtu != Some(mtu) {
        fixes.push(BridgeFix::Mtu(mtu));
    }
    if !link.up {
        fixes.push(BridgeFix::Up);
    }
    let snapshot = diff.snapshot;
    let present = snapshot.addresses.iter().filter(|a| a.index == link.index);
    address_fixes(
        &mut fixes,
        present.map(|a| IpNet::V4(a.address)),
        gateways.0.map(IpNet::V4),
    );
    // Not read (a scoped plan of a state without IPv6): left to the next full plan.
    if let Some(addresses6) = &snapshot.addresses6 {
        let present = addresses6.iter().filter(|a| a.index == link.index);
        address_fixes(
            &mut fixes,
            present.map(|a| IpNet::V6(a.address)),
            gateways.1.map(IpNet::V6),
        );
    }
    if !link.inet.is_some_and(|conf| conf.route_localnet) {
        fixes.push(BridgeFix::RouteLocalnet);
    }
    // No IPv6 settings reported: IPv6 is off in the kernel, nothing can accept an advertisement.
    if link.inet6.is_some_and(|conf| conf.accept_ra != 0) {
        fixes.push(BridgeFix::IgnoreRouterAdvertisements);
    }
    fixes
}

/// The gateway of one family added when missing; every other address of that family on the
/// bridge removed.
fn address_fixes(
    fixes: &mut Vec<BridgeFix>,
    present: impl Iterator<Item = IpNet>,
    gateway: Option<IpNet>,
) {
    let present: Vec<IpNet> = present.collect();
    if let Some(gateway) = gateway
        && !present.contains(&gateway)
    {
        fixes.push(BridgeFix::AddAddress(gateway));
    }
    fixes.extend(
        present
            .into_iter()
            .filter(|a| Some(*a) != gateway)
            .map(BridgeFix::RemoveAddress),
    );
}

/// A bridge endpoint that passed its checks: what its veth must be.
struct Checked<'a> {
    network: &'a NetworkState,
    address: Option<Ipv4Net>,
    address6: Option<Ipv6Net>,
    mac: Vec<u8>,
    netns: PathBuf,
    identity: NamespaceIdentity,
}

impl Checked<'_> {
    /// The default gateway of each family the endpoint has, when it carries the default route.
    fn default_gateways(&self, bridge: &BridgeAttachment) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
        if !bridge.default_route {
            return (None, None);
        }
        let v4 = self.address.and(self.network.gateway);
        let v6 = self.address6.and(self.network.gateway6);
        (v4, v6)
    }

    /// The fingerprint of the veth's configuration. An IPv4-only endpoint's is what it was
    /// before IPv6 existed, so an upgrade re-makes no veth.
    fn fingerprint(&self, bridge_name: &str, bridge: &BridgeAttachment) -> String {
        let (gateway, gateway6) = self.default_gateways(bridge);
        let (device, inode) = self.identity;
        let address = self
            .address
            .map_or_else(|| "none".to_owned(), |a| a.to_string());
        let mut description = format!(
            "{bridge_name}|{}|{address}|{}|{gateway:?}|{}|{device}:{inode}",
            bridge.interface, bridge.mac, self.network.mtu
        );
        if let Some(address6) = self.address6 {
            description.push_str(&format!("|{address6}|{gateway6:?}"));
        }
        fingerprint(&description)
    }
}

/// A bridge endpoint's veth: in sync (by its fingerprint alias), (re)made, or a problem, in which
/// case a stale veth of it is deleted.
pub(super) fn endpoint<'a>(
    diff: &mut Diff<'a>,
    position: usize,
    endpoint: &'a EndpointState,
    bridge: &'a BridgeAttachment,
) {
    let object = ObjectKey::endpoint(&endpoint.id);
    let host_veth = endpoint.host_veth_name();
    let existing = diff.links.get(host_veth.as_str()).copied();
    let checked = match check(diff, position, endpoint, bridge) {
        Ok(checked) => checked,
        Err((message, stale_reason)) => {
            diff.problem(&object, message);
            // A problem also means: leave no stale veth behind.
            if let Some(link) = existing.filter(|l| l.kind == LinkKind::Veth) {
                diff.deletes.push(Step::DeleteLink {
                    name: link.name.clone(),
                    index: link.index,
                    reason: stale_reason.to_owned(),
                });
            }
            return;
        }
    };
    diff.wanted_veths.insert(host_veth.clone());
    let bridge_name = checked.network.bridge_name();
    let fingerprint = checked.fingerprint(&bridge_name, bridge);
    let mut replaces = None;
    if let Some(link) = existing {
        if let Some(alias) = fresh(diff, link, &bridge_name, &fingerprint, &checked, bridge) {
            if alias == AliasState::OwnDefaultKept {
                let notes = diff.plan.notes.entry(object.clone()).or_default();
                notes.push(OWN_DEFAULT_ROUTE_KEPT.to_owned());
            }
            diff.in_sync(object);
            return;
        }
        if link.kind != LinkKind::Veth {
            diff.problem(
                &object,
                format!(
                    "host link {host_veth} exists and is not Pier's veth (name clash with a foreign link)"
                ),
            );
            diff.wanted_veths.remove(&host_veth);
            return;
        }
        replaces = Some(link.index);
    }
    let (default_gateway, default_gateway6) = checked.default_gateways(bridge);
    diff.attaches.push(Step::AttachEndpoint(Box::new(Attach {
        endpoint: endpoint.id.clone(),
        network: bridge.network.clone(),
        bridge: bridge_name,
        netns: checked.netns,
        host_veth,
        interface: bridge.interface.clone(),
        address: checked.address,
        address6: checked.address6,
        mac: checked.mac,
        default_gateway,
        default_gateway6,
        mtu: checked.network.mtu,
        fingerprint,
        replaces,
    })));
}

/// How `link`, the endpoint's host veth, completed its attach, if it is in sync with `checked`:
/// up, hairpin, on its bridge, the fingerprint in its alias (and, deep, the peer as made).
fn fresh(
    diff: &Diff<'_>,
    link: &Link,
    bridge_name: &str,
    fingerprint: &str,
    checked: &Checked<'_>,
    bridge: &BridgeAttachment,
) -> Option<AliasState> {
    let bridge_index = diff
        .links
        .get(bridge_name)
        .filter(|l| l.kind == LinkKind::Bridge)
        .map(|l| l.index);
    let alias = link
        .alias
        .as_deref()
        .and_then(|alias| read_alias(alias, fingerprint))?;
    let on_host = link.kind == LinkKind::Veth
        && link.up
        && link.hairpin
        && link.master.is_some()
        && link.master == bridge_index;
    let inside = match &diff.snapshot.peers {
        None => true,
        Some(peers) => peers
            .get(&(checked.netns.clone(), bridge.interface.clone()))
            .is_some_and(|peer| peer_as_made(peer, checked, bridge, alias)),
    };
    (on_host && inside).then_some(alias)
}

/// Whether the endpoint's interface, read inside its namespace (deep plans), is as its attach
/// made it: up, its MAC and addresses, and the default route of each family it routes by (or
/// the namespace's own, where the attach kept that).
fn peer_as_made(
    peer: &Peer,
    checked: &Checked<'_>,
    bridge: &BridgeAttachment,
    alias: AliasState,
) -> bool {
    let kept = alias == AliasState::OwnDefaultKept;
    let (gateway, gateway6) = checked.default_gateways(bridge);
    let v4_route = gateway.is_none_or(|gateway| {
        peer.default_routes.contains(&(gateway, peer.index)) || (kept && peer.foreign_default)
    });
    let v6_route = gateway6.is_none_or(|gateway| {
        peer.default_routes6.contains(&(gateway, peer.index)) || (kept && peer.foreign_default6)
    });
    let v4_address = checked.address.is_none_or(|a| peer.addresses.contains(&a));
    let v6_address = checked
        .address6
        .is_none_or(|a| peer.addresses6.contains(&a));
    v4_route
        && v6_route
        && peer.up
        && peer.mac.as_deref() == Some(checked.mac.as_slice())
        && v4_address
        && v6_address
}

/// A failed check: the problem's message and the reason to delete the endpoint's stale veth.
type CheckError = (String, &'static str);

/// The checks of a bridge endpoint, in order; the first failing one gives the problem's message
/// and the reason to delete its stale veth.
fn check<'a>(
    diff: &mut Diff<'a>,
    position: usize,
    endpoint: &'a EndpointState,
    bridge: &'a BridgeAttachment,
) -> Result<Checked<'a>, CheckError> {
    let network = diff
        .networks
        .get(bridge.network.as_str())
        .copied()
        .filter(|n| n.driver.has_bridge() && (n.subnet.is_some() || n.subnet6.is_some()));
    let Some(network) = network else {
        let known = diff.networks.contains_key(bridge.network.as_str());
        return Err(if known {
            (
                format!("network {:?} is not a bridge network", bridge.network),
                "its network is not a bridge network",
            )
        } else {
            (
                format!("unknown network {:?}", bridge.network),
                "its network is unknown",
            )
        });
    };
    let (address, address6) = check_addresses(diff, position, network, bridge)?;
    let Some(mac) = netlink::parse_mac(&bridge.mac) else {
        return Err((
            format!("invalid MAC address {:?}", bridge.mac),
            "its MAC is invalid",
        ));
    };
    if !valid_interface_name(&bridge.interface) {
        return Err((
            format!("invalid interface name {:?}", bridge.interface),
            "its interface name is invalid",
        ));
    }
    // `Netns::Host` has no file: it is the host namespace, which owns no interface of its own.
    let Some(netns) = endpoint.netns.path() else {
        return Err((
            "a bridge endpoint needs a namespace of its own".to_owned(),
            "it has no namespace",
        ));
    };
    if let Some(other) = interface_taken(diff, position, endpoint, bridge) {
        return Err((
            format!(
                "interface {} in {} is already endpoint {other:?}",
                bridge.interface,
                netns.display()
            ),
            "its interface name is taken",
        ));
    }
    let Some(identity) = diff.snapshot.namespaces.get(&netns).copied().flatten() else {
        return Err((
            format!("namespace {} does not exist", netns.display()),
            "its namespace is gone",
        ));
    };
    Ok(Checked {
        network,
        address,
        address6,
        mac,
        netns,
        identity,
    })
}

/// The endpoint's address of each family its network has (an address of a family the network
/// lacks, or none for one it has, is a problem), each in its subnet and nobody else's.
fn check_addresses<'a>(
    diff: &mut Diff<'a>,
    position: usize,
    network: &NetworkState,
    bridge: &'a BridgeAttachment,
) -> Result<(Option<Ipv4Net>, Option<Ipv6Net>), CheckError> {
    let invalid = |message: String| (message, "its address is invalid");
    let name = &bridge.network;
    let address = match (network.subnet.zip(network.gateway), bridge.address) {
        (Some((subnet, gateway)), Some(address)) => {
            check_address(address, subnet, gateway).map_err(invalid)?;
            Ipv4Net::new(address, subnet.prefix_len()).ok()
        }
        (Some(_), None) => {
            return Err(invalid(format!(
                "endpoint has no IPv4 address on network {name:?}"
            )));
        }
        (None, Some(address)) => {
            let message = format!("network {name:?} has no IPv4 subnet for address {address}");
            return Err(invalid(message));
        }
        (None, None) => None,
    };
    let address6 = match (network.subnet6.zip(network.gateway6), bridge.address6) {
        (Some((subnet, gateway)), Some(address)) => {
            check_address6(address, subnet, gateway).map_err(invalid)?;
            Ipv6Net::new(address, subnet.prefix_len()).ok()
        }
        (Some(_), None) => {
            let message = format!("endpoint has no IPv6 address on network {name:?}");
            return Err(invalid(message));
        }
        (None, Some(address)) => {
            let message = format!("network {name:?} has no IPv6 subnet for address {address}");
            return Err(invalid(message));
        }
        (None, None) => None,
    };
    let ips = [
        address.map(|a| IpAddr::V4(a.addr())),
        address6.map(|a| IpAddr::V6(a.addr())),
    ];
    for ip in ips.into_iter().flatten() {
        if let Some(other) = address_taken(diff, position, bridge, ip) {
            return Err((
                format!("address {ip} is in use by endpoint {other:?} on network {name:?}"),
                "its address is in use",
            ));
        }
    }
    Ok((address, address6))
}

/// The endpoint that has the address `ip` of this endpoint on its network first, if another
/// does. First wins: the same address twice on one network is a problem for the later endpoint
/// in the state's order, in full and in scoped plans alike.
fn address_taken<'a>(
    diff: &mut Diff<'a>,
    position: usize,
    bridge: &'a BridgeAttachment,
    ip: IpAddr,
) -> Option<&'a str> {
    let state = diff.state;
    if diff.scope.is_full() {
        let key = (bridge.network.as_str(), ip);
        let first = *diff
            .used_addresses
            .entry(key)
            .or_insert(endpoint_id(state, position));
        (first != endpoint_id(state, position)).then_some(first)
    } else {
        earlier(&state.endpoints[..position], |b, _| {
            b.network == bridge.network
                && (b.address.map(IpAddr::V4) == Some(ip) || b.address6.map(IpAddr::V6) == Some(ip))
        })
    }
}

/// Like [`address_taken`], for the interface name in the endpoint's namespace.
fn interface_taken<'a>(
    diff: &mut Diff<'a>,
    position: usize,
    endpoint: &'a EndpointState,
    bridge: &'a BridgeAttachment,
) -> Option<&'a str> {
    let state = diff.state;
    if diff.scope.is_full() {
        let key = (&endpoint.netns, bridge.interface.as_str());
        let first = *diff
            .used_interfaces
            .entry(key)
            .or_insert(endpoint_id(state, position));
        (first != endpoint_id(state, position)).then_some(first)
    } else {
        earlier(&state.endpoints[..position], |b, netns| {
            netns == &endpoint.netns && b.interface == bridge.interface
        })
    }
}

fn endpoint_id(state: &NodeState, position: usize) -> &str {
    state.endpoints[position].id.as_str()
}
