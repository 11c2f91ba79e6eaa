//! What the kernel has now, as far as a plan of one scope needs it: the only reads of a plan
//! besides table `inet pier`'s. The diff then works on this snapshot without touching the
//! kernel.
//!
//! What is read, by scope:
//! - full: every link of the host namespace, its addresses (both families) and IPv4 routes;
//! - endpoints and removal: `lo`, the state's bridges and VXLAN devices, the scoped endpoints'
//!   host veths and the links to remove, each by name, and the host's IPv4 addresses (and its
//!   IPv6 ones when a network of the state has IPv6: an IPv4-only attach pays for no IPv6 dump);
//! - overlay: `lo`, the overlay networks' bridges and VXLAN devices, by name;
//! - full and overlay only, for the overlay networks in scope: the FDB and neighbour entries of each VXLAN
//!   device that exists (one dump of each per device);
//! - always, for the scoped endpoints: the identity (device and inode) of each bridge endpoint's
//!   namespace file, and `lo`'s state inside each null endpoint's namespace;
//! - deep only: inside the namespace of each scoped bridge endpoint whose host veth exists, its
//!   interface, addresses and default routes of the families it has. Without `deep` no bridge
//!   endpoint's namespace is entered: the host veth's alias stands for it.

use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use ipnet::{Ipv4Net, Ipv6Net};

use super::scope::Scope;
use crate::kernel::netlink::{
    self, FdbEntry, Link, LinkKind, NeighbourEntry, NetlinkError, Nl, V4Address, V4Route, V6Address,
};
use crate::state::{Attachment, BridgeAttachment, Driver, EndpointState, NodeState};
use pier_runtime::error_chain as chain;

/// Device and inode of a namespace file: a re-created namespace at the same path differs.
pub type NamespaceIdentity = (u64, u64);

/// The kernel's state for one plan.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Links of the host namespace: all of them (full scope) or those the scope names.
    pub links: Vec<Link>,
    /// IPv4 addresses of the host namespace.
    pub addresses: Vec<V4Address>,
    /// IPv6 addresses of the host namespace, link-local ones left out (`None`: not read, in a
    /// scoped plan of a state without IPv6).
    pub addresses6: Option<Vec<V6Address>>,
    /// Routes of the host namespace (full scope only; `Err` is why they could not be read).
    pub host_routes: Option<Result<Vec<V4Route>, String>>,
    /// Identity of each scoped bridge endpoint's namespace file; `None` when it does not exist.
    pub namespaces: HashMap<PathBuf, Option<NamespaceIdentity>>,
    /// Whether `lo` is up in each scoped null endpoint's namespace (`Err`: why it is unknown).
    pub loopbacks: HashMap<PathBuf, Result<bool, String>>,
    /// Deep only (`None` otherwise): the peers found inside the namespaces, by namespace file and
    /// interface name. A peer that could not be read is absent.
    pub peers: Option<HashMap<(PathBuf, String), Peer>>,
    /// The entries of each existing VXLAN device of an overlay network in scope, by device name
    /// (`Err`: why they could not be read).
    pub overlay_entries: HashMap<String, Result<OverlayEntries, String>>,
}

/// The static entries of one VXLAN device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OverlayEntries {
    pub fdb: Vec<FdbEntry>,
    pub neighbours: Vec<NeighbourEntry>,
}

/// An endpoint's interface inside its namespace (deep plans only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peer {
    pub index: u32,
    pub up: bool,
    pub mac: Option<Vec<u8>>,
    /// The IPv4 addresses on this interface.
    pub addresses: Vec<Ipv4Net>,
    /// The IPv6 addresses on this interface, link-local ones left out (read when the endpoint
    /// has IPv6).
    pub addresses6: Vec<Ipv6Net>,
    /// The namespace's default routes, as (gateway, link index) (read when the endpoint wants one).
    pub default_routes: Vec<(Ipv4Addr, u32)>,
    /// Whether the namespace has a default route Pier did not set.
    pub foreign_default: bool,
    /// The namespace's IPv6 default routes (read when the endpoint wants one and has IPv6).
    pub default_routes6: Vec<(Ipv6Addr, u32)>,
    /// Whether the namespace has an IPv6 default route Pier did not set.
    pub foreign_default6: bool,
}

impl Snapshot {
    /// Reads what a plan of `state` in `scope` needs from the host namespace `host` and from the
    /// scoped endpoints' namespaces.
    pub fn read(
        host: &Nl,
        state: &NodeState,
        scope: &Scope,
        deep: bool,
    ) -> Result<Snapshot, NetlinkError> {
        let links = read_links(host, state, scope)?;
        let addresses = host.v4_addresses()?;
        // A full plan reads them always, to remove an IPv6 address Pier no longer wants.
        let has_ipv6 = state.networks.iter().any(|n| n.subnet6.is_some());
        let addresses6 = if scope.is_full() || has_ipv6 {
            Some(host.v6_addresses()?)
        } else {
            None
        };
        let host_routes = scope
            .is_full()
            .then(|| host.v4_routes().map_err(|error| chain(&error)));
        let mut snapshot = Snapshot {
            links,
            addresses,
            addresses6,
            host_routes,
            peers: deep.then(HashMap::new),
            ..Snapshot::default()
        };
        snapshot.read_overlay_entries(host, state, scope);
        let networks = state.networks_by_name();
        for endpoint in state.endpoints.iter().filter(|e| scope.has_endpoint(&e.id)) {
            let Some(path) = endpoint.netns.path() else {
                continue;
            };
            match &endpoint.attachment {
                Attachment::Null { network }
                    if networks
                        .get(network.as_str())
                        .is_some_and(|n| n.driver == Driver::Null) =>
                {
                    let up = loopback_up(&path).map_err(|error| chain(&error));
                    snapshot.loopbacks.insert(path, up);
                }
                Attachment::Bridge(bridge) => {
                    snapshot.read_bridge_endpoint(endpoint, bridge, path);
                }
                _ => {}
            }
        }
        Ok(snapshot)
    }

    fn read_bridge_endpoint(
        &mut self,
        endpoint: &EndpointState,
        bridge: &BridgeAttachment,
        path: PathBuf,
    ) {
        if !self.namespaces.contains_key(&path) {
            self.namespaces
                .insert(path.clone(), namespace_identity(&path));
        }
        // Deep only: looking the veth up scans the links, once per endpoint.
        let Some(peers) = &mut self.peers else {
            return;
        };
        let host_veth = endpoint.host_veth_name();
        let veth_exists = self
            .links
            .iter()
            .any(|l| l.name == host_veth && l.kind == LinkKind::Veth);
        if veth_exists && let Some(peer) = read_peer(&path, bridge) {
            peers.insert((path, bridge.interface.clone()), peer);
        }
    }

    /// The FDB and neighbour entries of the VXLAN devices of the overlay networks in scope (in
    /// the scopes that keep them: see [`Scope::has_overlay_entries`]).
    fn read_overlay_entries(&mut self, host: &Nl, state: &NodeState, scope: &Scope) {
        if !scope.has_overlay_entries() {
            return;
        }
        let overlays = state
            .networks
            .iter()
            .filter(|n| n.driver == Driver::Overlay && scope.has_network(n));
        for network in overlays {
            let name = network.vxlan_name();
            let Some(link) = self
                .links
                .iter()
                .find(|l| l.name == name && l.kind == LinkKind::Vxlan)
            else {
                continue;
            };
            let entries = read_entries(host, link.index, &name).map_err(|error| chain(&error));
            self.overlay_entries.insert(name, entries);
        }
    }

    /// The host link named `name`.
    pub fn link(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.name == name)
    }
}

/// The links a plan looks at: all of them, or (scoped) the bridges, the scoped veths and the
/// links to remove, by name.
fn read_links(host: &Nl, state: &NodeState, scope: &Scope) -> Result<Vec<Link>, NetlinkError> {
    if scope.is_full() {
        return host.links();
    }
    let mut names: BTreeSet<String> = BTreeSet::from(["lo".to_owned()]);
    let networks = state
        .networks
        .iter()
        .filter(|n| n.driver.has_bridge() && scope.has_network(n));
    for network in networks {
        names.insert(network.bridge_name());
        if network.driver == Driver::Overlay {
            names.insert(network.vxlan_name());
        }
    }
    names.extend(
        state
            .endpoints
            .iter()
            .filter(|e| scope.has_endpoint(&e.id) && matches!(e.attachment, Attachment::Bridge(_)))
            .map(EndpointState::host_veth_name),
    );
    names.extend(scope.removals());
    let mut links = Vec::new();
    for name in &names {
        links.extend(host.link(name)?);
    }
    Ok(links)
}

/// The FDB and neighbour entries of the VXLAN device `index`.
fn read_entries(host: &Nl, index: u32, name: &str) -> Result<OverlayEntries, NetlinkError> {
    Ok(OverlayEntries {
        fdb: host.fdb_entries(index, name)?,
        neighbours: host.neighbours(index, name)?,
    })
}

/// Device and inode of the namespace file at `path`.
pub fn namespace_identity(path: &Path) -> Option<NamespaceIdentity> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Whether `lo` is up in the namespace at `path`.
fn loopback_up(path: &Path) -> Result<bool, NetlinkError> {
    let nl = Nl::open_in(Some(path))?;
    Ok(nl.link("lo")?.is_some_and(|l| l.up))
}

/// The endpoint's interface inside the namespace at `path`; `None` when any read fails.
fn read_peer(path: &Path, bridge: &BridgeAttachment) -> Option<Peer> {
    let nl = Nl::open_in(Some(path)).ok()?;
    let link = nl.link(&bridge.interface).ok()??;
    let has_ipv6 = bridge.address6.is_some();
    let addresses = nl
        .v4_addresses()
        .ok()?
        .into_iter()
        .filter(|a| a.index == link.index)
        .map(|a| a.address)
        .collect();
    let addresses6 = if has_ipv6 {
        let all = nl.v6_addresses().ok()?;
        all.into_iter()
            .filter(|a| a.index == link.index)
            .map(|a| a.address)
            .collect()
    } else {
        Vec::new()
    };
    let mut peer = Peer {
        index: link.index,
        up: link.up,
        mac: link.mac,
        addresses,
        addresses6,
        ..Peer::default()
    };
    if bridge.default_route {
        peer.foreign_default = nl
            .v4_routes()
            .is_ok_and(|routes| netlink::foreign_default_route(&routes).is_some());
        peer.default_routes = nl.default_routes().unwrap_or_default();
    }
    if bridge.default_route && has_ipv6 {
        peer.foreign_default6 = nl
            .v6_routes()
            .is_ok_and(|routes| netlink::foreign_v6_default_route(&routes).is_some());
        peer.default_routes6 = nl.v6_default_routes().unwrap_or_default();
    }
    Some(peer)
}
