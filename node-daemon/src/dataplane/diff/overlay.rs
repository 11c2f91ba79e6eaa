//! The `overlay` driver: on each node the network's bridge (as for `bridge`, made by
//! [`super::bridge`]) with a VXLAN device on it — learning off, ARP proxy on, no default remote —
//! whose FDB (MAC → tunnel address of the endpoint's node) and neighbour table (IPv4 and IPv6
//! address → MAC) hold exactly the network's endpoints on other nodes. Nothing is learned or
//! flooded: a MAC without an entry goes nowhere, and the device answers ARP and IPv6 neighbour
//! solicitations for remote endpoints itself.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::Diff;
use super::checks::{check_address, check_address6};
use crate::dataplane::plan::{CreateVxlan, Step, VxlanFix};
use crate::dataplane::report::ObjectKey;
use crate::kernel::netlink::{self, FdbEntry, Link, LinkKind, NeighbourEntry, VxlanConf};
use crate::kernel::tunnel;
use crate::state::{Attachment, Driver, NetworkState, RemoteEndpoint};
use pier_crds::network::VXLAN_PORT;

/// An overlay network's VXLAN device and its entries; a network without a VXLAN id or a node
/// without a tunnel address is a problem of the network (its bridge and endpoints still apply).
pub(super) fn network(diff: &mut Diff<'_>, network: &NetworkState) {
    if network.driver != Driver::Overlay {
        return;
    }
    let object = ObjectKey::network(&network.name);
    let Some(id) = network.vxlan_id else {
        let message = "no VXLAN id allocated yet: no VXLAN device on this node";
        diff.problem(&object, message.to_owned());
        return;
    };
    let Some(local) = diff.state.tunnel else {
        let message = "this node has no tunnel address: no VXLAN device on this node";
        diff.problem(&object, message.to_owned());
        return;
    };
    let conf = VxlanConf {
        id,
        local: Some(local),
        remote: None,
        port: VXLAN_PORT,
        learning: false,
        proxy: true,
    };
    let created = device(diff, network, conf);
    // A device made now gets its entries at once; an existing one's are kept by the scopes
    // that read them (an attach does not pay for every remote endpoint of the network).
    if created || diff.scope.has_overlay_entries() {
        entries(diff, network, local, created);
    }
}

/// The VXLAN device: created, re-made (settings the kernel cannot change) or fixed. Says whether
/// this plan makes it (and so whether it has no entries yet).
fn device(diff: &mut Diff<'_>, network: &NetworkState, conf: VxlanConf) -> bool {
    let name = network.vxlan_name();
    let bridge = network.bridge_name();
    let create = Step::CreateVxlan(Box::new(CreateVxlan {
        network: network.name.clone(),
        vxlan: name.clone(),
        bridge: bridge.clone(),
        conf,
        mtu: network.mtu,
    }));
    let Some(link) = diff.links.get(name.as_str()).copied() else {
        diff.bridges.push(create);
        return true;
    };
    if let Some(reason) = remake_reason(link, &conf) {
        diff.deletes.push(Step::DeleteLink {
            name,
            index: link.index,
            reason,
        });
        diff.bridges.push(create);
        return true;
    }
    let fixes = vxlan_fixes(diff, link, &bridge, network.mtu);
    if !fixes.is_empty() {
        diff.bridges.push(Step::FixVxlan {
            network: network.name.clone(),
            vxlan: name,
            index: link.index,
            fixes,
        });
    }
    false
}

/// Why the link holding the device's name must be re-made, if it must.
fn remake_reason(link: &Link, want: &VxlanConf) -> Option<String> {
    let Some(have) = link.vxlan.filter(|_| link.kind == LinkKind::Vxlan) else {
        return Some("not a VXLAN device".to_owned());
    };
    let address = |ip: Option<Ipv4Addr>| ip.map_or_else(|| "none".to_owned(), |ip| ip.to_string());
    let settings = [
        ("id", have.id.to_string(), want.id.to_string()),
        ("local", address(have.local), address(want.local)),
        ("remote", address(have.remote), address(want.remote)),
        ("dstport", have.port.to_string(), want.port.to_string()),
        (
            "learning",
            have.learning.to_string(),
            want.learning.to_string(),
        ),
        ("proxy", have.proxy.to_string(), want.proxy.to_string()),
    ];
    let differs: Vec<String> = settings
        .iter()
        .filter(|(_, have, want)| have != want)
        .map(|(what, have, want)| format!("{what} {have} instead of {want}"))
        .collect();
    (!differs.is_empty()).then(|| differs.join(", "))
}

/// What an existing device lacks: its MTU, its place on the bridge (a bridge this plan re-makes
/// loses its ports), up.
fn vxlan_fixes(diff: &Diff<'_>, link: &Link, bridge: &str, mtu: u32) -> Vec<VxlanFix> {
    let mut fixes = Vec::new();
    if link.mtu != Some(mtu) {
        fixes.push(VxlanFix::Mtu(mtu));
    }
    let bridge_remade = diff
        .bridges
        .iter()
        .any(|s| matches!(s, Step::CreateBridge { bridge: b, .. } if b == bridge));
    let on_bridge = !bridge_remade
        && diff
            .links
            .get(bridge)
            .is_some_and(|b| b.kind == LinkKind::Bridge && link.master == Some(b.index));
    if !on_bridge {
        fixes.push(VxlanFix::Master(bridge.to_owned()));
    }
    if !link.up {
        fixes.push(VxlanFix::Up);
    }
    fixes
}

/// A remote endpoint that passed its checks.
struct Remote<'a> {
    endpoint: &'a str,
    mac: Vec<u8>,
    address: Option<Ipv4Addr>,
    address6: Option<Ipv6Addr>,
    tunnel: Ipv4Addr,
}

impl Remote<'_> {
    /// Its addresses: one neighbour entry each.
    fn addresses(&self) -> impl Iterator<Item = IpAddr> {
        let v4 = self.address.map(IpAddr::V4);
        let v6 = self.address6.map(IpAddr::V6);
        v4.into_iter().chain(v6)
    }
}

/// The device's FDB and neighbour entries: exactly one of each per remote endpoint.
fn entries(diff: &mut Diff<'_>, network: &NetworkState, local: Ipv4Addr, created: bool) {
    let vxlan = network.vxlan_name();
    let remotes = remotes(diff, network, local);
    let snapshot = diff.snapshot;
    let (fdb, neighbours): (&[FdbEntry], &[NeighbourEntry]) = if created {
        (&[], &[])
    } else {
        match snapshot.overlay_entries.get(&vxlan) {
            Some(Ok(entries)) => (&entries.fdb, &entries.neighbours),
            Some(Err(message)) => {
                let message = format!("reading the entries of {vxlan}: {message}");
                diff.problem(&ObjectKey::network(&network.name), message);
                return;
            }
            None => {
                let message = format!("the entries of {vxlan} were not read");
                diff.problem(&ObjectKey::network(&network.name), message);
                return;
            }
        }
    };
    fdb_steps(diff, &network.name, &vxlan, &remotes, fdb);
    neighbour_steps(diff, &network.name, &vxlan, &remotes, neighbours);
}

/// The network's remote endpoints that can have entries here; each other one is a problem of
/// the network. A MAC or an address is the first endpoint's: local ones first, then remote ones
/// in the state's order.
fn remotes<'a>(diff: &mut Diff<'a>, network: &NetworkState, local: Ipv4Addr) -> Vec<Remote<'a>> {
    let state = diff.state;
    let mut macs: HashMap<Vec<u8>, &str> = HashMap::new();
    let mut addresses: HashMap<IpAddr, &str> = HashMap::new();
    for endpoint in &state.endpoints {
        if let Attachment::Bridge(bridge) = &endpoint.attachment
            && bridge.network == network.name
        {
            if let Some(mac) = netlink::parse_mac(&bridge.mac) {
                macs.entry(mac).or_insert(&endpoint.id);
            }
            let v4 = bridge.address.map(IpAddr::V4);
            for address in v4.into_iter().chain(bridge.address6.map(IpAddr::V6)) {
                addresses.entry(address).or_insert(&endpoint.id);
            }
        }
    }
    let mut remotes = Vec::new();
    let ours = state
        .remote_endpoints
        .iter()
        .filter(|r| r.network == network.name);
    for remote in ours {
        match check_remote(remote, network, local, &macs, &addresses) {
            Ok(mac) => {
                macs.insert(mac.clone(), &remote.id);
                let checked = Remote {
                    endpoint: &remote.id,
                    mac,
                    address: remote.address,
                    address6: remote.address6,
                    tunnel: remote.tunnel,
                };
                for address in checked.addresses() {
                    addresses.insert(address, &remote.id);
                }
                remotes.push(checked);
            }
            Err(message) => {
                let message = format!("remote endpoint {}: {message}", remote.id);
                diff.problem(&ObjectKey::network(&network.name), message);
            }
        }
    }
    remotes
}

/// A remote endpoint's MAC, if it can have entries (an IPv4 or an IPv6 address or both, each
/// in the network's subnet of its family when the network has one).
fn check_remote(
    remote: &RemoteEndpoint,
    network: &NetworkState,
    local: Ipv4Addr,
    macs: &HashMap<Vec<u8>, &str>,
    addresses: &HashMap<IpAddr, &str>,
) -> Result<Vec<u8>, String> {
    if remote.address.is_none() && remote.address6.is_none() {
        return Err("it has no address".to_owned());
    }
    let mac = netlink::parse_mac(&remote.mac)
        .ok_or_else(|| format!("invalid MAC address {:?}", remote.mac))?;
    // All zeros is the VXLAN device's default destination (where unknown frames would flood);
    // a group address is no endpoint's.
    if mac.iter().all(|b| *b == 0) || mac.first().is_some_and(|b| b & 1 == 1) {
        return Err(format!("MAC {} is not a unicast address", remote.mac));
    }
    if let (Some(subnet), Some(gateway), Some(address)) =
        (network.subnet, network.gateway, remote.address)
    {
        check_address(address, subnet, gateway)?;
    }
    if let (Some(subnet), Some(gateway), Some(address)) =
        (network.subnet6, network.gateway6, remote.address6)
    {
        check_address6(address, subnet, gateway)?;
    }
    if remote.tunnel == local {
        return Err(format!("its node's tunnel address {local} is this node's"));
    }
    if !tunnel::is_usable(remote.tunnel) {
        return Err(format!(
            "its node's tunnel address {} is not a unicast address",
            remote.tunnel
        ));
    }
    if let Some(other) = macs.get(&mac) {
        return Err(format!("MAC {} is endpoint {other:?}'s", remote.mac));
    }
    let v4 = remote.address.map(IpAddr::V4);
    for address in v4.into_iter().chain(remote.address6.map(IpAddr::V6)) {
        if let Some(other) = addresses.get(&address) {
            return Err(format!("address {address} is endpoint {other:?}'s"));
        }
    }
    Ok(mac)
}

/// FDB steps: a missing entry added, a wrong or temporary one replaced, a MAC with several
/// remotes deleted and re-added, an entry of no remote endpoint deleted.
fn fdb_steps(
    diff: &mut Diff<'_>,
    network: &str,
    vxlan: &str,
    remotes: &[Remote<'_>],
    present: &[FdbEntry],
) {
    let mut by_mac: BTreeMap<&[u8], Vec<&FdbEntry>> = BTreeMap::new();
    for entry in present {
        by_mac.entry(&entry.mac).or_default().push(entry);
    }
    for remote in remotes {
        let have = by_mac.remove(remote.mac.as_slice()).unwrap_or_default();
        if let [one] = have.as_slice()
            && one.destination == Some(remote.tunnel)
            && one.permanent
        {
            continue;
        }
        if have.len() > 1 {
            diff.deletes.push(Step::DeleteFdbEntry {
                network: network.to_owned(),
                vxlan: vxlan.to_owned(),
                mac: remote.mac.clone(),
                reason: format!("{} remotes instead of one", have.len()),
            });
        }
        diff.others.push(Step::SetFdbEntry {
            network: network.to_owned(),
            vxlan: vxlan.to_owned(),
            mac: remote.mac.clone(),
            destination: remote.tunnel,
            endpoint: remote.endpoint.to_owned(),
            replace: have.len() == 1,
        });
    }
    for mac in by_mac.into_keys() {
        diff.deletes.push(Step::DeleteFdbEntry {
            network: network.to_owned(),
            vxlan: vxlan.to_owned(),
            mac: mac.to_vec(),
            reason: "no remote endpoint has it".to_owned(),
        });
    }
}

/// Neighbour steps, for both families: a missing entry added, a wrong or temporary one
/// replaced, an entry of no remote endpoint deleted. An entry of a multicast address is no
/// endpoint's but the kernel's own (a `NOARP` one it may make for a group the device sends to,
/// e.g. MLD's `ff02::16`), and is left alone.
fn neighbour_steps(
    diff: &mut Diff<'_>,
    network: &str,
    vxlan: &str,
    remotes: &[Remote<'_>],
    present: &[NeighbourEntry],
) {
    let mut by_address: BTreeMap<IpAddr, &NeighbourEntry> = present
        .iter()
        .filter(|e| !e.address.is_multicast())
        .map(|e| (e.address, e))
        .collect();
    for remote in remotes {
        for address in remote.addresses() {
            let have = by_address.remove(&address);
            let mac = Some(remote.mac.as_slice());
            if have.is_some_and(|e| e.permanent && e.mac.as_deref() == mac) {
                continue;
            }
            diff.others.push(Step::SetNeighbour {
                network: network.to_owned(),
                vxlan: vxlan.to_owned(),
                address,
                mac: remote.mac.clone(),
                endpoint: remote.endpoint.to_owned(),
                replace: have.is_some(),
            });
        }
    }
    for address in by_address.into_keys() {
        diff.deletes.push(Step::DeleteNeighbour {
            network: network.to_owned(),
            vxlan: vxlan.to_owned(),
            address,
            reason: "no remote endpoint has it".to_owned(),
        });
    }
}
