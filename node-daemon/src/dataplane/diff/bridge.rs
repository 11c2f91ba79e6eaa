//! The `bridge` driver: a Linux bridge per network (with the gateway's address, up,
//! `route_localnet`), IP forwarding on the node, and a veth per endpoint into its namespace.
//! An `overlay` network has the same bridge and endpoints (its VXLAN device is [`super::overlay`]'s).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;

use super::Diff;
use super::checks::{check_address, earlier, valid_interface_name};
use crate::dataplane::alias::{AliasState, read_alias};
use crate::dataplane::names::fingerprint;
use crate::dataplane::plan::{Attach, BridgeFix, Step};
use crate::dataplane::report::{OWN_DEFAULT_ROUTE_KEPT, ObjectKey};
use crate::dataplane::snapshot::NamespaceIdentity;
use crate::kernel::netlink::{self, Link, LinkKind};
use crate::state::{BridgeAttachment, EndpointState, NetworkState, NodeState};

/// `net.ipv4.ip_forward`, needed as soon as the state has a network with a bridge.
pub(super) fn forwarding(diff: &mut Diff<'_>) {
    if !diff.state.networks.iter().any(|n| n.driver.has_bridge()) {
        return;
    }
    // Writing net.ipv4.ip_forward sets `forwarding` on every link, `lo` included, and `lo`
    // always exists: its setting, read with the links, stands for the node's.
    let forwarding = diff
        .links
        .get("lo")
        .and_then(|lo| lo.inet)
        .is_some_and(|conf| conf.forwarding);
    if forwarding {
        diff.in_sync(ObjectKey::Forwarding);
    } else {
        // Before everything else, as the first step.
        diff.plan.steps.push(Step::EnableForwarding);
    }
}

/// A bridge or overlay network's bridge: created, re-made (its name held by another kind of
/// link) or fixed. Its MAC derives from its name, so an overlay's gateway has one MAC on every
/// node.
pub(super) fn network(diff: &mut Diff<'_>, network: &NetworkState) {
    if !network.driver.has_bridge() {
        return;
    }
    let (Some(subnet), Some(gateway)) = (network.subnet, network.gateway) else {
        return; // validate() rejected this already
    };
    let Ok(gateway_net) = Ipv4Net::new(gateway, subnet.prefix_len()) else {
        return; // same prefix as a valid subnet: cannot happen
    };
    let name = network.bridge_name();
    let create = Step::CreateBridge {
        network: network.name.clone(),
        bridge: name.clone(),
        gateway: gateway_net,
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
            let fixes = bridge_fixes(diff, link, network.mtu, gateway_net);
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
fn bridge_fixes(diff: &Diff<'_>, link: &Link, mtu: u32, gateway: Ipv4Net) -> Vec<BridgeFix> {
    let mut fixes = Vec::new();
    if link.mtu != Some(mtu) {
        fixes.push(BridgeFix::Mtu(mtu));
    }
    if !link.up {
        fixes.push(BridgeFix::Up);
    }
    let present: Vec<Ipv4Net> = diff
        .snapshot
        .addresses
        .iter()
        .filter(|a| a.index == link.index)
        .map(|a| a.address)
        .collect();
    if !present.contains(&gateway) {
        fixes.push(BridgeFix::AddAddress(gateway));
    }
    fixes.extend(
        present
            .iter()
            .filter(|a| **a != gateway)
            .map(|a| BridgeFix::RemoveAddress(*a)),
    );
    if !link.inet.is_some_and(|conf| conf.route_localnet) {
        fixes.push(BridgeFix::RouteLocalnet);
    }
    fixes
}

/// A bridge endpoint that passed its checks: what its veth must be.
struct Checked<'a> {
    network: &'a NetworkState,
    address: Ipv4Net,
    gateway: Ipv4Addr,
    mac: Vec<u8>,
    netns: PathBuf,
    identity: NamespaceIdentity,
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
    let default_gateway = bridge.default_route.then_some(checked.gateway);
    let (device, inode) = checked.identity;
    let fingerprint = fingerprint(&format!(
        "{bridge_name}|{}|{}|{}|{default_gateway:?}|{}|{device}:{inode}",
        bridge.interface, checked.address, bridge.mac, checked.network.mtu
    ));
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
    diff.attaches.push(Step::AttachEndpoint(Box::new(Attach {
        endpoint: endpoint.id.clone(),
        network: bridge.network.clone(),
        bridge: bridge_name,
        netns: checked.netns,
        host_veth,
        interface: bridge.interface.clone(),
        address: checked.address,
        mac: checked.mac,
        default_gateway,
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
            .is_some_and(|peer| {
                let route_ok = match (bridge.default_route, alias) {
                    (false, _) => true,
                    (true, AliasState::OwnDefaultKept) => peer.foreign_default,
                    (true, AliasState::AsPlanned) => {
                        peer.default_routes.contains(&(checked.gateway, peer.index))
                    }
                };
                route_ok
                    && peer.up
                    && peer.mac.as_deref() == Some(checked.mac.as_slice())
                    && peer.addresses.contains(&checked.address)
            }),
    };
    (on_host && inside).then_some(alias)
}

/// The checks of a bridge endpoint, in order; the first failing one gives the problem's message
/// and the reason to delete its stale veth.
fn check<'a>(
    diff: &mut Diff<'a>,
    position: usize,
    endpoint: &'a EndpointState,
    bridge: &'a BridgeAttachment,
) -> Result<Checked<'a>, (String, &'static str)> {
    let Some(network) = diff.networks.get(bridge.network.as_str()).copied() else {
        return Err((
            format!("unknown network {:?}", bridge.network),
            "its network is unknown",
        ));
    };
    let (true, Some(subnet), Some(gateway)) =
        (network.driver.has_bridge(), network.subnet, network.gateway)
    else {
        return Err((
            format!("network {:?} is not a bridge network", bridge.network),
            "its network is not a bridge network",
        ));
    };
    let Some(address) = bridge.address else {
        return Err((
            format!(
                "endpoint has no IPv4 address on network {:?}",
                bridge.network
            ),
            "its address is invalid",
        ));
    };
    check_address(address, subnet, gateway)
        .map_err(|message| (message, "its address is invalid"))?;
    if let Some(other) = address_taken(diff, position, bridge) {
        return Err((
            format!(
                "address {address} is in use by endpoint {other:?} on network {:?}",
                bridge.network
            ),
            "its address is in use",
        ));
    }
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
    let Ok(address) = Ipv4Net::new(address, subnet.prefix_len()) else {
        return Err((
            format!("address {address} does not fit subnet {subnet}"),
            "its address is invalid",
        ));
    };
    Ok(Checked {
        network,
        address,
        gateway,
        mac,
        netns,
        identity,
    })
}

/// The endpoint that has this endpoint's address on its network first, if another does. First
/// wins: the same address twice on one network is a problem for the later endpoint in the
/// state's order, in full and in scoped plans alike.
fn address_taken<'a>(
    diff: &mut Diff<'a>,
    position: usize,
    bridge: &'a BridgeAttachment,
) -> Option<&'a str> {
    let state = diff.state;
    if diff.scope.is_full() {
        let key = (bridge.network.as_str(), bridge.address);
        let first = *diff
            .used_addresses
            .entry(key)
            .or_insert(endpoint_id(state, position));
        (first != endpoint_id(state, position)).then_some(first)
    } else {
        earlier(&state.endpoints[..position], |b, _| {
            b.network == bridge.network && b.address == bridge.address
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
