//! Host-port allocation per (node, protocol, host IP): what `docker run -p` and `-P` decide.
//!
//! The rule the kernel enforces, and so the one checked here: on one node and protocol, a port
//! bound on the unspecified address (`0.0.0.0` or `::`) conflicts with the same port on every
//! address, and vice versa; two different specific addresses may share a port. Conflicts are
//! caught here, when a PortPublish is reconciled, so the user reads a clear error in its status
//! instead of a node daemon failing to install a rule.
//!
//! Each (node, protocol) has a [`Bitmap`] over all 65,536 ports with a bit set when *any* address
//! holds that port, so an automatic port — one no address uses, hence one that conflicts with
//! nothing — is found by the same O(1)-amortised cursor search as IPAM addresses, with released
//! ports reused once the cursor comes round (as Docker's port allocator does).

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::protocol::{PortRange, PortSet, Protocol};
use crate::ipam::hash::IntMap;
use crate::ipam::{Bitmap, Rebuilt};

/// One published socket on a node: what an allocation holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPort {
    /// The node the port is published on.
    pub node: String,
    /// The protocol.
    pub protocol: Protocol,
    /// The host address (unspecified = every address of the node).
    pub host_ip: IpAddr,
    /// The port.
    pub port: u16,
}

impl HostPort {
    /// A host port; an IPv4-mapped IPv6 address is stored as the IPv4 address it maps, since
    /// the kernel treats `::ffff:127.0.0.1` and `127.0.0.1` as the same.
    pub fn new(node: impl Into<String>, protocol: Protocol, host_ip: IpAddr, port: u16) -> Self {
        Self {
            node: node.into(),
            protocol,
            host_ip: host_ip.to_canonical(),
            port,
        }
    }

    /// The same port with its address in canonical form (see [`HostPort::new`]).
    fn normalized(&self) -> Self {
        Self {
            host_ip: self.host_ip.to_canonical(),
            ..self.clone()
        }
    }

    /// Whether the two cannot both be bound: same node, protocol and port, and the same address
    /// or either one unspecified.
    pub fn conflicts_with(&self, other: &HostPort) -> bool {
        self.node == other.node
            && self.protocol == other.protocol
            && self.port == other.port
            && ips_conflict(self.host_ip, other.host_ip)
    }
}

impl fmt::Display for HostPort {
    /// `0.0.0.0:8000/tcp on node "node-a"` (IPv6 addresses in brackets).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} on node {:?}",
            SocketAddr::new(self.host_ip, self.port),
            self.protocol,
            self.node
        )
    }
}

/// Whether the same port on these two addresses (same node and protocol) would conflict.
///
/// The unspecified address of either family counts as every address: `docker -p 8000:80`
/// binds both `0.0.0.0` and `::`, and a dual-stack `::` socket takes IPv4 too, so treating
/// them as conflicting with everything never lets through a pair the kernel would refuse.
pub fn ips_conflict(a: IpAddr, b: IpAddr) -> bool {
    let (a, b) = (a.to_canonical(), b.to_canonical());
    a == b || a.is_unspecified() || b.is_unspecified()
}

/// One entry of a PortPublish: what [`PortAllocator::assign`] is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortSpec {
    /// The protocol.
    pub protocol: Protocol,
    /// The host address (unspecified for all).
    pub host_ip: IpAddr,
    /// The host port; `None` (or `Some(0)`, as Docker and Kubernetes read a zero hostPort)
    /// means "pick one", like `docker run -P` or `-p 80`.
    pub host_port: Option<u16>,
}

impl PortSpec {
    /// A fixed host port.
    pub fn fixed(protocol: Protocol, host_ip: IpAddr, port: u16) -> Self {
        Self {
            protocol,
            host_ip,
            host_port: Some(port),
        }
    }

    /// An automatically chosen host port.
    pub fn auto(protocol: Protocol, host_ip: IpAddr) -> Self {
        Self {
            protocol,
            host_ip,
            host_port: None,
        }
    }

    /// The fixed port, if any (0 counts as none).
    fn fixed_port(&self) -> Option<u16> {
        self.host_port.filter(|p| *p != 0)
    }
}

/// Why a host port could not be allocated (or why a rebuild entry was not kept).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// Someone holds a port this one conflicts with.
    #[error("host port {requested} conflicts with {}, already published by {holder}", SocketAddr::new(held.host_ip, held.port))]
    Conflict {
        /// The port asked for.
        requested: HostPort,
        /// The port held that it conflicts with.
        held: HostPort,
        /// Who holds it.
        holder: String,
    },
    /// Every port of the automatic range is in use on this node and protocol.
    #[error("no free {protocol} host port left in {range} on node {node:?}")]
    Exhausted {
        /// The node.
        node: String,
        /// The protocol.
        protocol: Protocol,
        /// The automatic range.
        range: PortRange,
    },
    /// The port is one of the operator's denied host ports (the node's own services use it).
    #[error(
        "host port {requested} may not be published: the operator's denied host ports ({denied}) \
         are kept for the node's own services"
    )]
    NotAllowed {
        /// The port asked for.
        requested: HostPort,
        /// The denied ports.
        denied: PortSet,
    },
    /// Port 0 cannot be held (ask for an automatic port instead).
    #[error("host port {requested} is not a port: ask for an automatic port instead of port 0")]
    ZeroPort {
        /// The port asked for.
        requested: HostPort,
    },
    /// Rebuild only: the same (owner, port) pair appears more than once in the input.
    #[error("{owner} is listed with host port {port} more than once")]
    Duplicate {
        /// The owner.
        owner: String,
        /// The port.
        port: HostPort,
    },
}

/// One holder of a port on one (node, protocol).
#[derive(Debug, Clone)]
struct Holder {
    host_ip: IpAddr,
    owner: Arc<str>,
}

/// The ports of one (node, protocol).
#[derive(Debug, Clone)]
struct Table {
    /// Bit `p` is set iff some address holds port `p`; its cursor serves automatic ports.
    used: Bitmap,
    /// Port → its holders, which never conflict with each other (several only when they are
    /// all on different specific addresses).
    holders: IntMap<u16, Vec<Holder>>,
}

impl Table {
    /// A table with nothing held; the `denied` ports are marked used, so the automatic search
    /// never picks one (and, never held, they are never cleared).
    fn new(denied: &PortSet) -> Self {
        let mut used = Bitmap::new(1 << 16);
        for port in denied.ports() {
            used.set(u32::from(port));
        }
        Self {
            used,
            holders: IntMap::default(),
        }
    }

    /// The holder of `port` that `host_ip` conflicts with, if any.
    fn conflict(&self, host_ip: IpAddr, port: u16) -> Option<&Holder> {
        self.holders
            .get(&port)?
            .iter()
            .find(|h| ips_conflict(h.host_ip, host_ip))
    }

    fn insert(&mut self, host_ip: IpAddr, port: u16, owner: Arc<str>) {
        self.used.set(u32::from(port));
        self.holders
            .entry(port)
            .or_default()
            .push(Holder { host_ip, owner });
    }

    /// Removes the holder of exactly (`host_ip`, `port`), returning its owner.
    fn remove(&mut self, host_ip: IpAddr, port: u16) -> Option<Arc<str>> {
        let holders = self.holders.get_mut(&port)?;
        let i = holders.iter().position(|h| h.host_ip == host_ip)?;
        let holder = holders.swap_remove(i);
        if holders.is_empty() {
            self.holders.remove(&port);
            self.used.clear(u32::from(port));
        }
        Some(holder.owner)
    }
}

/// All host ports of the cluster, per node and protocol, with their owners.
#[derive(Debug, Clone)]
pub struct PortAllocator {
    range: PortRange,
    /// Ports never handed out, fixed or automatic.
    denied: PortSet,
    tables: HashMap<String, HashMap<Protocol, Table>>,
    /// Owner → its ports, in the order they were taken.
    by_owner: HashMap<Arc<str>, Vec<HostPort>>,
}

impl Default for PortAllocator {
    /// An allocator with automatic ports from 32768-60999.
    fn default() -> Self {
        Self::new(PortRange::default())
    }
}

impl PortAllocator {
    /// An empty allocator picking automatic ports from `range`.
    pub fn new(range: PortRange) -> Self {
        Self::denying(range, PortSet::empty())
    }

    /// An empty allocator picking automatic ports from `range` that never hands out a port of
    /// `denied` (the node's own services: sshd, the kubelet, ...).
    pub fn denying(range: PortRange, denied: PortSet) -> Self {
        Self {
            range,
            denied,
            tables: HashMap::new(),
            by_owner: HashMap::new(),
        }
    }

    /// Rebuilds the allocator from the `(owner, port)` pairs recorded in PortPublish statuses.
    ///
    /// Entries are taken in order as fixed requests; one that repeats an entry, conflicts with an
    /// earlier one (wildcard rules included) or is port 0 is not kept and is reported — all of
    /// them, not just the first.
    pub fn rebuild<I, S>(range: PortRange, existing: I) -> Rebuilt<Self, PortError>
    where
        I: IntoIterator<Item = (S, HostPort)>,
        S: AsRef<str>,
    {
        Self::rebuild_denying(range, PortSet::empty(), existing)
    }

    /// [`PortAllocator::rebuild`] of an allocator [`denying`](PortAllocator::denying) `denied`:
    /// a recorded port that is denied now is not kept and is reported.
    pub fn rebuild_denying<I, S>(
        range: PortRange,
        denied: PortSet,
        existing: I,
    ) -> Rebuilt<Self, PortError>
    where
        I: IntoIterator<Item = (S, HostPort)>,
        S: AsRef<str>,
    {
        let mut this = Self::denying(range, denied);
        let mut rejected = Vec::new();
        for (owner, port) in existing {
            let owner = owner.as_ref();
            let port = port.normalized();
            if this.holder(&port) == Some(owner) {
                rejected.push(PortError::Duplicate {
                    owner: owner.to_owned(),
                    port,
                });
            } else if let Err(e) = this.reserve(owner, &port) {
                rejected.push(e);
            }
        }
        Rebuilt {
            allocator: this,
            rejected,
        }
    }

    /// The range automatic ports come from.
    pub fn range(&self) -> PortRange {
        self.range
    }

    /// The ports never handed out.
    pub fn denied(&self) -> &PortSet {
        &self.denied
    }

    /// Takes a fixed host port for `owner` (`docker run -p 8000:80`).
    ///
    /// Idempotent: an owner already holding exactly this port gets `Ok` again. Returns the port
    /// as stored (address in canonical form).
    pub fn reserve(&mut self, owner: &str, port: &HostPort) -> Result<HostPort, PortError> {
        let port = port.normalized();
        if port.port == 0 {
            return Err(PortError::ZeroPort { requested: port });
        }
        if self.denied.contains(port.port) {
            return Err(PortError::NotAllowed {
                requested: port,
                denied: self.denied.clone(),
            });
        }
        if let Some(h) = self
            .tables
            .get(&port.node)
            .and_then(|t| t.get(&port.protocol))
            .and_then(|t| t.conflict(port.host_ip, port.port))
        {
            if &*h.owner == owner && h.host_ip == port.host_ip {
                return Ok(port);
            }
            return Err(PortError::Conflict {
                held: HostPort {
                    host_ip: h.host_ip,
                    ..port.clone()
                },
                holder: h.owner.to_string(),
                requested: port,
            });
        }
        let owner = self.owner_key(owner);
        self.table_mut(&port.node, port.protocol).insert(
            port.host_ip,
            port.port,
            Arc::clone(&owner),
        );
        self.by_owner.entry(owner).or_default().push(port.clone());
        Ok(port)
    }

    /// Takes an automatic host port for `owner` (`docker run -P`): the next port of the range,
    /// after the last one handed out on this node and protocol, that no address uses.
    ///
    /// Every call takes a new port; [`PortAllocator::assign`] is the idempotent form.
    pub fn allocate(
        &mut self,
        owner: &str,
        node: &str,
        protocol: Protocol,
        host_ip: IpAddr,
    ) -> Result<HostPort, PortError> {
        let host_ip = host_ip.to_canonical();
        let range = self.range;
        let owner = self.owner_key(owner);
        let table = self.table_mut(node, protocol);
        let port = table
            .used
            .set_next_clear(u32::from(range.first()), u32::from(range.last()) + 1)
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| PortError::Exhausted {
                node: node.to_owned(),
                protocol,
                range,
            })?;
        table.insert(host_ip, port, Arc::clone(&owner));
        let port = HostPort {
            node: node.to_owned(),
            protocol,
            host_ip,
            port,
        };
        self.by_owner.entry(owner).or_default().push(port.clone());
        Ok(port)
    }

    /// Makes `owner` (a PortPublish) hold exactly the ports `specs` ask for on `node`, all or
    /// nothing, and returns them in `specs` order.
    ///
    /// Fixed ports are taken as asked. An automatic port keeps the port the owner already had for
    /// an automatic entry of the same protocol and address, if any (so reconciling an unchanged
    /// PortPublish again changes nothing); otherwise it gets a new one. Ports the owner held that
    /// `specs` no longer ask for — including every port on another node — are released. If any
    /// port cannot be had, the owner keeps exactly what it held before and the first error is
    /// returned (as `docker run -p` fails whole).
    pub fn assign(
        &mut self,
        owner: &str,
        node: &str,
        specs: &[PortSpec],
    ) -> Result<Vec<HostPort>, PortError> {
        let previous = self.release_owner(owner);
        match self.try_assign(owner, node, specs, &previous) {
            Ok(ports) => Ok(ports),
            Err(e) => {
                self.release_owner(owner);
                for port in &previous {
                    // Cannot fail: the state is what it was when the owner held these.
                    let restored = self.reserve(owner, port);
                    debug_assert!(restored.is_ok(), "{restored:?}");
                }
                Err(e)
            }
        }
    }

    fn try_assign(
        &mut self,
        owner: &str,
        node: &str,
        specs: &[PortSpec],
        previous: &[HostPort],
    ) -> Result<Vec<HostPort>, PortError> {
        let mut out: Vec<Option<HostPort>> = vec![None; specs.len()];
        for (slot, spec) in out.iter_mut().zip(specs) {
            if let Some(port) = spec.fixed_port() {
                let want = HostPort::new(node, spec.protocol, spec.host_ip, port);
                *slot = Some(self.reserve(owner, &want)?);
            }
        }
        let mut reusable: Vec<&HostPort> = previous
            .iter()
            .filter(|p| p.node == node && self.range.contains(p.port))
            .collect();
        for (slot, spec) in out.iter_mut().zip(specs) {
            if slot.is_some() {
                continue;
            }
            let host_ip = spec.host_ip.to_canonical();
            let reuse = reusable.iter().position(|p| {
                p.protocol == spec.protocol && p.host_ip == host_ip && self.conflict(p).is_none()
            });
            *slot = Some(match reuse {
                Some(i) => {
                    let p = reusable.remove(i);
                    self.reserve(owner, p)?
                }
                None => self.allocate(owner, node, spec.protocol, host_ip)?,
            });
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// Frees one port, returning who held it. The port must match exactly (same address).
    pub fn release(&mut self, port: &HostPort) -> Option<String> {
        let port = port.normalized();
        let owner = self
            .tables
            .get_mut(&port.node)?
            .get_mut(&port.protocol)?
            .remove(port.host_ip, port.port)?;
        if let Some(list) = self.by_owner.get_mut(&*owner) {
            list.retain(|p| *p != port);
            if list.is_empty() {
                self.by_owner.remove(&*owner);
            }
        }
        Some(owner.to_string())
    }

    /// Frees every port `owner` holds (all ports of a PortPublish), returning them.
    pub fn release_owner(&mut self, owner: &str) -> Vec<HostPort> {
        let ports = self.by_owner.remove(owner).unwrap_or_default();
        for port in &ports {
            if let Some(table) = self
                .tables
                .get_mut(&port.node)
                .and_then(|t| t.get_mut(&port.protocol))
            {
                table.remove(port.host_ip, port.port);
            }
        }
        ports
    }

    /// Frees every port on `node` (the node left the cluster), returning `(owner, port)` pairs.
    pub fn release_node(&mut self, node: &str) -> Vec<(String, HostPort)> {
        let Some(tables) = self.tables.remove(node) else {
            return Vec::new();
        };
        let mut freed = Vec::new();
        for (protocol, table) in tables {
            for (port, holders) in table.holders {
                for h in holders {
                    let hp = HostPort {
                        node: node.to_owned(),
                        protocol,
                        host_ip: h.host_ip,
                        port,
                    };
                    if let Some(list) = self.by_owner.get_mut(&*h.owner) {
                        list.retain(|p| *p != hp);
                        if list.is_empty() {
                            self.by_owner.remove(&*h.owner);
                        }
                    }
                    freed.push((h.owner.to_string(), hp));
                }
            }
        }
        freed.sort();
        freed
    }

    /// Who holds exactly `port` (same address).
    pub fn holder(&self, port: &HostPort) -> Option<&str> {
        let host_ip = port.host_ip.to_canonical();
        self.tables
            .get(&port.node)?
            .get(&port.protocol)?
            .holders
            .get(&port.port)?
            .iter()
            .find(|h| h.host_ip == host_ip)
            .map(|h| &*h.owner)
    }

    /// The held port `port` would conflict with, and its holder (the port itself if held).
    pub fn conflict(&self, port: &HostPort) -> Option<(HostPort, &str)> {
        let h = self
            .tables
            .get(&port.node)?
            .get(&port.protocol)?
            .conflict(port.host_ip.to_canonical(), port.port)?;
        Some((
            HostPort {
                host_ip: h.host_ip,
                ..port.clone()
            },
            &*h.owner,
        ))
    }

    /// The ports `owner` holds, in the order taken.
    pub fn ports_of(&self, owner: &str) -> &[HostPort] {
        self.by_owner.get(owner).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Every `(owner, port)` held, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &HostPort)> + '_ {
        self.by_owner
            .iter()
            .flat_map(|(o, ports)| ports.iter().map(move |p| (&**o, p)))
    }

    /// Number of ports held.
    pub fn len(&self) -> usize {
        self.by_owner.values().map(Vec::len).sum()
    }

    /// True when no port is held.
    pub fn is_empty(&self) -> bool {
        self.by_owner.is_empty()
    }

    /// Number of automatic ports still free on `node` for `protocol`.
    pub fn available(&self, node: &str, protocol: Protocol) -> u32 {
        let (lo, hi) = (
            u32::from(self.range.first()),
            u32::from(self.range.last()) + 1,
        );
        match self.tables.get(node).and_then(|t| t.get(&protocol)) {
            Some(table) => table.used.count_clear_in(lo, hi),
            None => {
                let denied: std::collections::BTreeSet<u16> = self
                    .denied
                    .ports()
                    .filter(|p| self.range.contains(*p))
                    .collect();
                self.range.len() - u32::try_from(denied.len()).unwrap_or(u32::MAX)
            }
        }
    }

    /// The shared key for `owner` (one string allocation per owner, not per port).
    fn owner_key(&self, owner: &str) -> Arc<str> {
        match self.by_owner.get_key_value(owner) {
            Some((key, _)) => Arc::clone(key),
            None => Arc::from(owner),
        }
    }

    fn table_mut(&mut self, node: &str, protocol: Protocol) -> &mut Table {
        let denied = &self.denied;
        self.tables
            .entry(node.to_owned())
            .or_default()
            .entry(protocol)
            .or_insert_with(|| Table::new(denied))
    }
}
