//! Everything the operator has handed out, in one place: subnets (one per Network), addresses
//! (one [`AddressPool`] per bridge Network), host ports, and which endpoint holds which interface
//! in which namespace.
//!
//! A facade over the pure allocators in [`crate::ipam`] and [`crate::ports`], with no kube client:
//! the controllers hold it behind one mutex (so two reconciles can never hand out the same
//! address), and [`Allocations::from_objects`] rebuilds it from the statuses a restarted operator
//! reads back before it reconciles anything (allocation is recorded only in status).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use kube::ResourceExt;
use pier_crds::{Driver, Endpoint, EndpointTarget, Network, PortPublish};
use pier_memory::ShrinkIfSparse as _;

use crate::ipam::ipv6::{
    self, Address6Error, Ipv6Networks, Network6Allocation, Network6Error, Network6Request,
};
use crate::ipam::{
    AddressError, AddressPool, AddressPoolConfig, Pool, PoolConfigError, SubnetAllocator,
    SubnetError, VxlanIdError, VxlanIds,
};
use crate::ports::{
    HostPort, KUBERNETES_HOST_PORTS, PortAllocator, PortError, PortRange, PortSet, PortSpec,
};

/// Where automatic subnets and ports come from.
#[derive(Debug, Clone)]
pub struct AllocConfig {
    /// Address pools for Networks without `spec.subnet`, in order.
    pub pools: Vec<Pool>,
    /// Where automatic host ports come from.
    pub port_range: PortRange,
    /// Host ports never published, fixed or automatic (`PortNotAllowed`).
    pub denied_ports: PortSet,
    /// The Network an Endpoint without `spec.network` joins.
    pub default_network: String,
    /// Subnets automatic allocation from the pools must skip: those already in use on the
    /// machine (e.g. Docker's 172.17.0.0/16 in local mode). An explicit `spec.subnet` is not
    /// refused because of them; each node daemon checks that against its own routes.
    pub excluded: Vec<Ipv4Net>,
    /// Where automatic IPv6 subnets (a /64 each) come from: the cluster's unique local /48
    /// (`pier operator` derives it from the cluster's identity, see [`ipv6::ula_prefix`]).
    pub ipv6_pool: Ipv6Net,
}

impl Default for AllocConfig {
    fn default() -> Self {
        Self {
            pools: crate::ipam::default_pools(),
            port_range: PortRange::default(),
            // The constant is unit-tested to parse.
            denied_ports: KUBERNETES_HOST_PORTS.parse().unwrap_or_default(),
            default_network: crate::defaults::BRIDGE.to_owned(),
            excluded: Vec::new(),
            ipv6_pool: ipv6::ula_prefix(""),
        }
    }
}

/// What a bridge Network asks for: its spec, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkRequest {
    /// `spec.subnet` (allocated from the pools when absent).
    pub subnet: Option<Ipv4Net>,
    /// `spec.gateway`.
    pub gateway: Option<Ipv4Addr>,
    /// `spec.ipRange`.
    pub ip_range: Option<Ipv4Net>,
    /// `spec.auxAddresses`.
    pub aux_addresses: BTreeMap<String, Ipv4Addr>,
}

/// Why a Network gets no subnet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkAllocError {
    /// The subnet overlaps another Network's, or none is free.
    #[error(transparent)]
    Subnet(#[from] SubnetError),
    /// The gateway, range or aux addresses do not fit the subnet.
    #[error(transparent)]
    Config(#[from] PoolConfigError),
}

/// The subnet and gateway a bridge Network holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetworkAllocation {
    /// The subnet.
    pub subnet: Ipv4Net,
    /// The gateway (the bridge's address).
    pub gateway: Ipv4Addr,
}

/// What an Endpoint asks for, once its node and network are known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachRequest {
    /// The Network.
    pub network: String,
    /// The namespace it attaches: see [`target_key`].
    pub target: String,
    /// `spec.interface`; the next free name of the namespace when absent (see [`TargetKind`]).
    pub interface: Option<String>,
    /// The IPv6 address: `spec.ipv6Address`, or the one recorded in status.
    pub address6: Option<Ipv6Addr>,
    /// Whether the Network has IPv6, so the Endpoint gets an IPv6 address.
    pub needs_address6: bool,
    /// What kind of namespace `target` is.
    pub kind: TargetKind,
    /// The address: `spec.ipv4Address`, or the one recorded in status.
    pub address: Option<Ipv4Addr>,
    /// False for `host` and `null` networks, which hand out no addresses.
    pub needs_address: bool,
    /// The Endpoint's creation time in milliseconds since the epoch: of a namespace's Endpoints
    /// with an address, the oldest carries the default route (see [`Allocations::default_route`]).
    pub created: Option<i64>,
}

/// What an Endpoint holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The address (bridge networks with IPv4 only).
    pub address: Option<Ipv4Addr>,
    /// The IPv6 address (networks with IPv6 only).
    pub address6: Option<Ipv6Addr>,
    /// The interface name in the namespace.
    pub interface: String,
    /// Whether this call handed out something new (for Events and metrics).
    pub new: bool,
}

/// Why an Endpoint cannot be attached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttachError {
    /// The namespace is already attached to the network by another Endpoint.
    #[error("namespace {target} is already attached to network {network:?} by endpoint {holder}")]
    AlreadyAttached {
        /// The namespace.
        target: String,
        /// The Network.
        network: String,
        /// The Endpoint attaching it.
        holder: String,
    },
    /// The interface name is taken in the namespace.
    #[error("interface {interface} in namespace {target} is already used by endpoint {holder}")]
    InterfaceTaken {
        /// The name.
        interface: String,
        /// The namespace.
        target: String,
        /// The Endpoint using it.
        holder: String,
    },
    /// The Network has no subnet (yet).
    #[error("network {0:?} has no subnet yet")]
    NetworkNotReady(String),
    /// The address cannot be had.
    #[error(transparent)]
    Address(#[from] AddressError),
    /// The IPv6 address cannot be had.
    #[error(transparent)]
    Address6(#[from] Address6Error),
}

/// One Endpoint's record.
#[derive(Debug, Clone)]
struct Record {
    network: String,
    target: String,
    interface: String,
    kind: TargetKind,
    has_address: bool,
    created: Option<i64>,
}

/// The key of the namespace an Endpoint attaches: a named netns on a node, or a Pod.
pub fn target_key(endpoint_namespace: &str, endpoint: &Endpoint, node: &str) -> Option<String> {
    let target = &endpoint.spec.target;
    if let Some(netns) = &target.netns {
        return Some(format!("netns {}/{}", node, netns.name));
    }
    if let Some(pod) = &target.pod {
        return Some(format!("pod {}/{}", endpoint_namespace, pod.name));
    }
    None
}

/// The owner key of a namespaced object in the allocators: `namespace/name`, which is also how
/// refusals name the holder.
pub fn owner_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// What kind of namespace an Endpoint attaches: it decides the interface names and whether an
/// Endpoint may carry the namespace's default route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// A namespace Pier gives all its networking, as Docker a container's: `eth0`, `eth1`, ...
    /// in connect order, and the default route through the first network.
    Container,
    /// A Pod: its `eth0`, addresses and default route are the cluster network's, so Pier's
    /// interfaces are `net1`, `net2`, ... (Multus's names) and never carry the default route.
    Pod,
}

impl TargetKind {
    /// The kind of an Endpoint's target (container mode shares another's namespace: it attaches
    /// nothing, and counts as a container).
    pub fn of(target: &EndpointTarget) -> TargetKind {
        if target.pod.is_some() {
            TargetKind::Pod
        } else {
            TargetKind::Container
        }
    }

    /// The prefix and first number of the interface names Pier gives in such a namespace.
    fn interface_names(self) -> (&'static str, u32) {
        match self {
            TargetKind::Container => ("eth", 0),
            TargetKind::Pod => ("net", 1),
        }
    }

    /// The interface a Pod's cluster network gives it, which Pier never takes.
    pub const POD_CLUSTER_INTERFACE: &'static str = "eth0";
}

/// The first interface name of `kind` not in `used`: `ethN` for a container (Docker numbers them
/// in connect order), `netN` from 1 for a Pod.
pub fn next_free_interface<'a>(
    kind: TargetKind,
    used: impl IntoIterator<Item = &'a str>,
) -> String {
    let taken: std::collections::HashSet<&str> = used.into_iter().collect();
    let (prefix, first) = kind.interface_names();
    (first..)
        .map(|n| format!("{prefix}{n}"))
        .find(|name| !taken.contains(name.as_str()))
        .unwrap_or_else(|| format!("{prefix}{first}"))
}

/// The allocations of the whole cluster.
#[derive(Debug, Clone)]
pub struct Allocations {
    config: AllocConfig,
    subnets: SubnetAllocator,
    /// Overlay Network name → its VXLAN id.
    vxlan_ids: VxlanIds,
    /// Bridge Network name → its addresses.
    pools: HashMap<String, AddressPool>,
    /// IPv6 subnets and addresses of the Networks with IPv6.
    v6: Ipv6Networks,
    ports: PortAllocator,
    /// Endpoint owner → what it holds.
    records: HashMap<String, Record>,
    /// (namespace, network) → the Endpoint attaching it.
    attachments: HashMap<(String, String), String>,
    /// Namespace → interface → Endpoint.
    interfaces: HashMap<String, BTreeMap<String, String>>,
    /// Network → number of Endpoints attached.
    counts: HashMap<String, usize>,
}

impl Default for Allocations {
    fn default() -> Self {
        Self::new(AllocConfig::default())
    }
}

impl Allocations {
    /// Nothing allocated.
    pub fn new(config: AllocConfig) -> Self {
        let ipv6_pool = config.ipv6_pool;
        let mut subnets = SubnetAllocator::new(config.pools.clone());
        subnets.set_excluded(config.excluded.iter().copied());
        Self {
            subnets,
            ports: PortAllocator::denying(config.port_range, config.denied_ports.clone()),
            config,
            vxlan_ids: VxlanIds::default(),
            pools: HashMap::new(),
            v6: Ipv6Networks::new(ipv6_pool),
            records: HashMap::new(),
            attachments: HashMap::new(),
            interfaces: HashMap::new(),
            counts: HashMap::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &AllocConfig {
        &self.config
    }

    /// Gives a bridge Network its subnet (the requested one, or the next free pool subnet) and its
    /// address pool. Idempotent; the first Network to ask keeps an overlapping subnet.
    ///
    /// The gateway, ipRange and aux addresses are read when the pool is first made: the pool
    /// cannot change under endpoints that already hold addresses.
    pub fn ensure_network(
        &mut self,
        name: &str,
        request: &NetworkRequest,
    ) -> Result<NetworkAllocation, NetworkAllocError> {
        let had_subnet = self.subnets.get(name).is_some();
        let subnet = self.subnets.allocate(name, request.subnet)?;
        if let Some(pool) = self.pools.get(name) {
            return Ok(NetworkAllocation {
                subnet,
                gateway: pool.gateway(),
            });
        }
        match AddressPool::new(&pool_config(subnet, request)) {
            Ok(pool) => {
                let gateway = pool.gateway();
                self.pools.insert(name.to_owned(), pool);
                Ok(NetworkAllocation { subnet, gateway })
            }
            Err(e) => {
                // A Network whose addresses cannot be laid out must not hold a subnet others
                // could use.
                if !had_subnet {
                    self.subnets.release(name);
                }
                Err(e.into())
            }
        }
    }

    /// Makes automatic subnets skip `subnets` (the explicit subnets of Networks, reconciled or
    /// not), replacing the previous set; the configured [`AllocConfig::excluded`] subnets stay
    /// skipped. Explicit requests and held subnets are not affected.
    pub fn reserve_explicit(&mut self, subnets: impl IntoIterator<Item = Ipv4Net>) {
        self.subnets
            .set_excluded(self.config.excluded.iter().copied().chain(subnets));
    }

    /// What a Network holds.
    pub fn network(&self, name: &str) -> Option<NetworkAllocation> {
        let pool = self.pools.get(name)?;
        Some(NetworkAllocation {
            subnet: pool.subnet(),
            gateway: pool.gateway(),
        })
    }

    /// Frees a Network's subnet, pool and VXLAN id (its endpoints must be gone), returning the
    /// subnet.
    pub fn release_network(&mut self, name: &str) -> Option<Ipv4Net> {
        self.pools.remove(name);
        self.v6.release_network(name);
        self.vxlan_ids.release(name);
        self.subnets.release(name)
    }

    /// Gives a Network with IPv6 its IPv6 subnet (the requested one, or the next /64 of the
    /// cluster's ULA prefix) and pool. Idempotent.
    pub fn ensure_network6(
        &mut self,
        name: &str,
        request: &Network6Request,
    ) -> Result<Network6Allocation, Network6Error> {
        self.v6.ensure_network(name, request)
    }

    /// What a Network holds of IPv6.
    pub fn network6(&self, name: &str) -> Option<Network6Allocation> {
        self.v6.network(name)
    }

    /// The VXLAN id of an overlay Network, given on first ask (the lowest free from 4096).
    pub fn ensure_vxlan_id(&mut self, name: &str) -> Result<u32, VxlanIdError> {
        self.vxlan_ids.ensure(name)
    }

    /// Number of Endpoints attached to `network`.
    pub fn endpoint_count(&self, network: &str) -> usize {
        self.counts.get(network).copied().unwrap_or(0)
    }

    /// `(network, addresses allocated, addresses still free)` for each bridge Network.
    pub fn pool_usage(&self) -> Vec<(String, usize, u32)> {
        let mut out: Vec<_> = self
            .pools
            .iter()
            .map(|(name, pool)| (name.clone(), pool.len(), pool.available()))
            .collect();
        out.sort();
        out
    }

    /// Number of host ports held.
    pub fn ports_held(&self) -> usize {
        self.ports.len()
    }

    /// Attaches Endpoint `owner`: refuses a second Endpoint of one namespace on one network,
    /// gives it its address and an interface name. All or nothing; idempotent.
    pub fn attach(
        &mut self,
        owner: &str,
        request: &AttachRequest,
    ) -> Result<Attachment, AttachError> {
        let key = (request.target.clone(), request.network.clone());
        if let Some(holder) = self.attachments.get(&key)
            && holder != owner
        {
            return Err(AttachError::AlreadyAttached {
                target: request.target.clone(),
                network: request.network.clone(),
                holder: holder.clone(),
            });
        }
        let existing = self.records.get(owner).cloned();
        // An Endpoint's network and target are immutable; a record that disagrees is stale
        // (e.g. rebuilt from an old status): start again.
        if let Some(r) = &existing
            && (r.network != request.network || r.target != request.target)
        {
            self.detach(owner);
            return self.attach(owner, request);
        }
        let interface = match (&request.interface, &existing) {
            (Some(wanted), _) => {
                if let Some(holder) = self
                    .interfaces
                    .get(&request.target)
                    .and_then(|m| m.get(wanted))
                    && holder != owner
                {
                    return Err(AttachError::InterfaceTaken {
                        interface: wanted.clone(),
                        target: request.target.clone(),
                        holder: holder.clone(),
                    });
                }
                wanted.clone()
            }
            (None, Some(r)) => r.interface.clone(),
            (None, None) => next_free_interface(
                request.kind,
                self.interfaces
                    .get(&request.target)
                    .into_iter()
                    .flat_map(|m| m.keys().map(String::as_str)),
            ),
        };
        let had_address = self
            .pools
            .get(&request.network)
            .and_then(|p| p.address_of(owner));
        let address = if request.needs_address {
            let pool = self
                .pools
                .get_mut(&request.network)
                .ok_or_else(|| AttachError::NetworkNotReady(request.network.clone()))?;
            Some(pool.allocate(owner, request.address)?)
        } else {
            None
        };
        let had_address6 = self.v6.address_of(&request.network, owner);
        let address6 = match self.allocate6(owner, request) {
            Ok(a) => a,
            Err(e) => {
                // All or nothing: the IPv4 address this call took goes back.
                if had_address.is_none()
                    && address.is_some()
                    && let Some(pool) = self.pools.get_mut(&request.network)
                {
                    pool.release(owner);
                }
                return Err(e);
            }
        };
        let new = existing.is_none() || had_address != address || had_address6 != address6;
        if let Some(r) = &existing
            && r.interface != interface
            && let Some(m) = self.interfaces.get_mut(&r.target)
        {
            m.remove(&r.interface);
        }
        self.interfaces
            .entry(request.target.clone())
            .or_default()
            .insert(interface.clone(), owner.to_owned());
        self.attachments.insert(key, owner.to_owned());
        if existing.is_none() {
            *self.counts.entry(request.network.clone()).or_default() += 1;
        }
        self.records.insert(
            owner.to_owned(),
            Record {
                network: request.network.clone(),
                target: request.target.clone(),
                interface: interface.clone(),
                kind: request.kind,
                has_address: address.is_some() || address6.is_some(),
                created: request.created,
            },
        );
        Ok(Attachment {
            address,
            address6,
            interface,
            new,
        })
    }

    /// The IPv6 address of an attach, when its Network has IPv6.
    fn allocate6(
        &mut self,
        owner: &str,
        request: &AttachRequest,
    ) -> Result<Option<Ipv6Addr>, AttachError> {
        if !request.needs_address6 {
            return Ok(None);
        }
        let pool = self
            .v6
            .pool_mut(&request.network)
            .ok_or_else(|| AttachError::NetworkNotReady(request.network.clone()))?;
        Ok(Some(pool.allocate(owner, request.address6)?))
    }

    /// Whether Endpoint `owner` carries its namespace's default route: `None` when it holds no
    /// address (nothing to route through), else whether it is the first of the namespace's
    /// Endpoints with an address: the oldest by creation time, ties by owner key. Docker's rule:
    /// the network a container was started on stays its gateway after `docker network connect`.
    /// A Pod's Endpoints never do: its default route is the cluster network's.
    pub fn default_route(&self, owner: &str) -> Option<bool> {
        let record = self.records.get(owner).filter(|r| r.has_address)?;
        if record.kind == TargetKind::Pod {
            return Some(false);
        }
        let first = self
            .interfaces
            .get(&record.target)?
            .values()
            .filter_map(|holder| Some((holder, self.records.get(holder)?)))
            .filter(|(_, r)| r.has_address && r.target == record.target)
            .min_by_key(|(holder, r)| (r.created, holder.as_str()))
            .map(|(holder, _)| holder.as_str());
        Some(first == Some(owner))
    }

    /// Frees everything Endpoint `owner` holds, returning its address (the IPv4 one when it has
    /// both).
    pub fn detach(&mut self, owner: &str) -> Option<IpAddr> {
        let record = self.records.remove(owner)?;
        let key = (record.target.clone(), record.network.clone());
        if self.attachments.get(&key).is_some_and(|h| h == owner) {
            self.attachments.remove(&key);
        }
        if let Some(m) = self.interfaces.get_mut(&record.target) {
            if m.get(&record.interface).is_some_and(|h| h == owner) {
                m.remove(&record.interface);
            }
            if m.is_empty() {
                self.interfaces.remove(&record.target);
            }
        }
        if let Some(c) = self.counts.get_mut(&record.network) {
            *c = c.saturating_sub(1);
        }
        self.records.shrink_if_sparse();
        self.attachments.shrink_if_sparse();
        self.interfaces.shrink_if_sparse();
        let address6 = self.v6.release(&record.network, owner).map(IpAddr::V6);
        let address = self
            .pools
            .get_mut(&record.network)
            .and_then(|pool| pool.release(owner))
            .map(IpAddr::V4);
        address.or(address6)
    }

    /// Makes PortPublish `owner` hold exactly `specs` on `node` (all or nothing).
    pub fn assign_ports(
        &mut self,
        owner: &str,
        node: &str,
        specs: &[PortSpec],
    ) -> Result<Vec<HostPort>, PortError> {
        self.ports.assign(owner, node, specs)
    }

    /// The ports PortPublish `owner` holds.
    pub fn ports_of(&self, owner: &str) -> &[HostPort] {
        self.ports.ports_of(owner)
    }

    /// Frees every port of PortPublish `owner`.
    pub fn release_ports(&mut self, owner: &str) -> Vec<HostPort> {
        self.ports.release_owner(owner)
    }

    /// Rebuilds everything from the statuses of every object, oldest object first (so the first
    /// holder keeps a contested subnet, address or port). Returns the allocations and one message
    /// per recorded allocation that could not be kept; those objects get new allocations or a
    /// refusal when they are reconciled.
    pub fn from_objects(
        config: AllocConfig,
        networks: &[Network],
        endpoints: &[Endpoint],
        publishes: &[PortPublish],
    ) -> (Self, Vec<String>) {
        let mut rejected = Vec::new();
        let mut networks: Vec<&Network> = networks.iter().collect();
        networks.sort_by_key(|n| age_key(*n));
        let bridge_networks: Vec<(&Network, Ipv4Net)> = networks
            .iter()
            .filter(|n| n.spec.driver.has_subnet())
            .filter_map(|n| {
                let subnet = n.status.as_ref()?.subnet.as_deref()?.parse().ok()?;
                Some((*n, subnet))
            })
            .collect();
        let rebuilt = SubnetAllocator::rebuild(
            config.pools.clone(),
            bridge_networks.iter().map(|(n, s)| (n.name_any(), *s)),
        );
        rejected.extend(rebuilt.rejected.iter().map(ToString::to_string));
        let vxlan_ids = VxlanIds::rebuild(networks.iter().filter_map(|n| {
            let id = n.status.as_ref()?.vxlan_id?;
            (n.spec.driver == Driver::Overlay).then(|| (n.name_any(), id))
        }));
        rejected.extend(vxlan_ids.rejected.iter().map(ToString::to_string));
        let (v6, rejected6) = Ipv6Networks::rebuild(
            config.ipv6_pool,
            networks.iter().filter_map(|n| {
                let subnet = n.status.as_ref()?.ipv6_subnet.as_deref()?.parse().ok()?;
                let request = network6_request(n).ok()?;
                n.spec.has_ipv6().then(|| (n.name_any(), request, subnet))
            }),
        );
        rejected.extend(rejected6);
        let mut this = Self::new(config);
        this.subnets = rebuilt.allocator;
        this.vxlan_ids = vxlan_ids.allocator;
        this.v6 = v6;
        this.subnets
            .set_excluded(this.config.excluded.iter().copied());

        let mut endpoints: Vec<&Endpoint> = endpoints.iter().collect();
        endpoints.sort_by_key(|e| age_key(*e));
        for (network, subnet) in &bridge_networks {
            let name = network.name_any();
            if this.subnets.get(&name) != Some(*subnet) {
                continue;
            }
            let request = match network_request(network) {
                Ok(r) => r,
                Err(e) => {
                    rejected.push(format!("network {name:?}: {e}"));
                    this.subnets.release(&name);
                    continue;
                }
            };
            match AddressPool::new(&pool_config(*subnet, &request)) {
                Ok(pool) => {
                    this.pools.insert(name, pool);
                }
                Err(e) => {
                    rejected.push(format!("network {name:?}: {e}"));
                    this.subnets.release(&name);
                }
            }
        }
        for endpoint in endpoints {
            let Some(status) = &endpoint.status else {
                continue;
            };
            let (Some(network), Some(node), Some(interface)) = (
                status.network.as_deref(),
                status.node.as_deref(),
                status.interface.as_deref(),
            ) else {
                continue;
            };
            let namespace = endpoint.namespace().unwrap_or_default();
            let Some(target) = target_key(&namespace, endpoint, node) else {
                continue;
            };
            let address = status
                .ipv4_address
                .as_deref()
                .and_then(|a| a.parse::<Ipv4Addr>().ok());
            let address6 = status
                .ipv6_address
                .as_deref()
                .and_then(|a| a.parse::<Ipv6Addr>().ok());
            let owner = owner_key(&namespace, &endpoint.name_any());
            let request = AttachRequest {
                network: network.to_owned(),
                target,
                interface: Some(interface.to_owned()),
                kind: TargetKind::of(&endpoint.spec.target),
                address,
                needs_address: address.is_some(),
                address6,
                needs_address6: address6.is_some(),
                created: creation_millis(endpoint),
            };
            if let Err(e) = this.attach(&owner, &request) {
                rejected.push(format!("endpoint {owner}: {e}"));
            }
        }

        let mut publishes: Vec<&PortPublish> = publishes.iter().collect();
        publishes.sort_by_key(|p| age_key(*p));
        let mut held = Vec::new();
        for publish in publishes {
            let Some(status) = &publish.status else {
                continue;
            };
            let Some(node) = status.node.as_deref() else {
                continue;
            };
            let owner = owner_key(
                &publish.namespace().unwrap_or_default(),
                &publish.name_any(),
            );
            for port in &status.ports {
                let (Ok(host_ip), Ok(number)) = (
                    port.host_ip.parse::<IpAddr>(),
                    u16::try_from(port.host_port),
                ) else {
                    rejected.push(format!("portpublish {owner}: unreadable port {port:?}"));
                    continue;
                };
                // The `::` twin of a port published on both families is held by its 0.0.0.0
                // entry (see the PortPublish controller's `port_statuses`).
                let twin_of_v4 = host_ip == IpAddr::V6(Ipv6Addr::UNSPECIFIED)
                    && status.ports.iter().any(|other| {
                        other.host_ip.parse() == Ok(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
                            && other.host_port == port.host_port
                            && other.protocol == port.protocol
                    });
                if twin_of_v4 {
                    continue;
                }
                held.push((
                    owner.clone(),
                    HostPort::new(node, port.protocol, host_ip, number),
                ));
            }
        }
        let rebuilt = PortAllocator::rebuild_denying(
            this.config.port_range,
            this.config.denied_ports.clone(),
            held,
        );
        rejected.extend(rebuilt.rejected.iter().map(ToString::to_string));
        this.ports = rebuilt.allocator;
        (this, rejected)
    }
}

/// Sort key: oldest first, then by name (creation timestamps have second resolution).
fn age_key<K: kube::Resource>(obj: &K) -> (Option<i64>, String, String) {
    let meta = obj.meta();
    (
        creation_millis(obj),
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// An object's creation time in milliseconds since the epoch.
pub fn creation_millis<K: kube::Resource>(obj: &K) -> Option<i64> {
    obj.meta()
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_millisecond())
}

fn pool_config(subnet: Ipv4Net, request: &NetworkRequest) -> AddressPoolConfig {
    AddressPoolConfig {
        subnet,
        gateway: request.gateway,
        ip_range: request.ip_range,
        aux_addresses: request.aux_addresses.clone(),
    }
}

/// Why a Network's spec cannot be read (the API server's schema normally prevents it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("spec.{field} {value:?} is not valid")]
pub struct SpecError {
    /// The field.
    pub field: &'static str,
    /// Its value.
    pub value: String,
}

/// Parses a bridge Network's spec.
pub fn network_request(network: &Network) -> Result<NetworkRequest, SpecError> {
    let spec = &network.spec;
    let mut aux_addresses = BTreeMap::new();
    for (name, address) in spec.aux_addresses.iter().flatten() {
        let parsed = parse::<Ipv4Addr>("auxAddresses", Some(&address.0))?;
        if let Some(a) = parsed {
            aux_addresses.insert(name.clone(), a);
        }
    }
    Ok(NetworkRequest {
        subnet: parse("subnet", spec.subnet.as_ref())?,
        gateway: parse("gateway", spec.gateway.as_ref())?,
        ip_range: parse("ipRange", spec.ip_range.as_ref())?,
        aux_addresses,
    })
}

/// A spec field parsed, or the field and value that do not parse.
fn parse<T: std::str::FromStr>(
    field: &'static str,
    value: Option<&String>,
) -> Result<Option<T>, SpecError> {
    value
        .map(|v| {
            v.parse().map_err(|_| SpecError {
                field,
                value: v.clone(),
            })
        })
        .transpose()
}

/// What a Network with IPv6 asks for, parsed from its spec.
pub fn network6_request(network: &Network) -> Result<Network6Request, SpecError> {
    let spec = &network.spec;
    Ok(Network6Request {
        subnet: parse("ipv6Subnet", spec.ipv6_subnet.as_ref())?,
        gateway: parse("ipv6Gateway", spec.ipv6_gateway.as_ref())?,
        ip_range: parse("ipv6IpRange", spec.ipv6_ip_range.as_ref())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::Protocol;

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("test CIDR")
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("test address")
    }

    fn auto() -> NetworkRequest {
        NetworkRequest {
            subnet: None,
            gateway: None,
            ip_range: None,
            aux_addresses: BTreeMap::new(),
        }
    }

    fn attach(network: &str, target: &str) -> AttachRequest {
        AttachRequest {
            network: network.into(),
            target: target.into(),
            interface: None,
            kind: TargetKind::Container,
            address: None,
            needs_address: true,
            address6: None,
            needs_address6: false,
            created: None,
        }
    }

    #[test]
    fn next_free_interface_fills_gaps() {
        let container = TargetKind::Container;
        assert_eq!(next_free_interface(container, []), "eth0");
        assert_eq!(next_free_interface(container, ["eth0"]), "eth1");
        assert_eq!(
            next_free_interface(container, ["eth0", "eth2", "foo"]),
            "eth1"
        );
        // A Pod's eth0 is the cluster network's: Pier's are net1, net2, ...
        assert_eq!(next_free_interface(TargetKind::Pod, []), "net1");
        assert_eq!(
            next_free_interface(TargetKind::Pod, ["net1", "net3"]),
            "net2"
        );
    }

    #[test]
    fn lesson_subnets_and_addresses() {
        let mut a = Allocations::default();
        let bridge = a.ensure_network("bridge", &auto()).expect("bridge");
        assert_eq!(bridge.subnet, net("172.17.0.0/16"));
        assert_eq!(bridge.gateway, ip("172.17.0.1"));
        let tage = a.ensure_network("workshop-tage", &auto()).expect("tage");
        assert_eq!(tage.subnet, net("172.18.0.0/16"));
        // Idempotent.
        assert_eq!(a.ensure_network("workshop-tage", &auto()), Ok(tage));

        let con1 = a
            .attach("default/con1", &attach("workshop-tage", "netns n/con1"))
            .expect("con1");
        assert_eq!(con1.address, Some(ip("172.18.0.2")));
        assert_eq!(con1.interface, "eth0");
        assert!(con1.new);
        let con2 = a
            .attach("default/con2", &attach("workshop-tage", "netns n/con2"))
            .expect("con2");
        assert_eq!(con2.address, Some(ip("172.18.0.3")));
        // Again: same answer, nothing new.
        let again = a
            .attach("default/con1", &attach("workshop-tage", "netns n/con1"))
            .expect("con1");
        assert_eq!(again.address, con1.address);
        assert!(!again.new);
        assert_eq!(a.endpoint_count("workshop-tage"), 2);

        // con3 on ch-open, then connected to workshop-tage: eth0 then eth1.
        a.ensure_network("ch-open", &auto()).expect("ch-open");
        let c3 = a
            .attach("default/con3", &attach("ch-open", "netns n/con3"))
            .expect("con3");
        assert_eq!(c3.address, Some(ip("172.19.0.2")));
        assert_eq!(c3.interface, "eth0");
        let c3b = a
            .attach(
                "default/con3-tage",
                &attach("workshop-tage", "netns n/con3"),
            )
            .expect("connect");
        assert_eq!(c3b.interface, "eth1");
        assert_eq!(c3b.address, Some(ip("172.18.0.4")));
    }

    #[test]
    fn automatic_subnets_skip_excluded_host_subnets() {
        let config = AllocConfig {
            excluded: vec![net("172.17.0.0/16"), net("172.19.4.0/24")],
            ..AllocConfig::default()
        };
        let mut a = Allocations::new(config.clone());
        // 172.17/16 is docker0's, 172.19/16 holds a routed /24.
        let first = a.ensure_network("first", &auto()).expect("first");
        assert_eq!(first.subnet, net("172.18.0.0/16"));
        // Reserving explicit subnets keeps the configured exclusions.
        a.reserve_explicit([net("172.20.0.0/16")]);
        let second = a.ensure_network("second", &auto()).expect("second");
        assert_eq!(second.subnet, net("172.21.0.0/16"));
        // An explicit subnet is not refused here (the node daemon refuses it per node).
        let explicit = NetworkRequest {
            subnet: Some(net("172.17.0.0/16")),
            ..auto()
        };
        let docker = a.ensure_network("docker", &explicit).expect("explicit");
        assert_eq!(docker.subnet, net("172.17.0.0/16"));

        // A restarted operator keeps skipping them.
        let (mut b, rejected) = Allocations::from_objects(config, &[], &[], &[]);
        assert!(rejected.is_empty(), "{rejected:?}");
        let again = b.ensure_network("first", &auto()).expect("first");
        assert_eq!(again.subnet, net("172.18.0.0/16"));
    }

    #[test]
    fn refusals_name_the_holder() {
        let mut a = Allocations::default();
        a.ensure_network(
            "workshop",
            &NetworkRequest {
                subnet: Some(net("10.1.0.0/16")),
                ..auto()
            },
        )
        .expect("free");
        let err = a
            .ensure_network(
                "other",
                &NetworkRequest {
                    subnet: Some(net("10.1.2.0/24")),
                    ..auto()
                },
            )
            .expect_err("overlap");
        assert!(err.to_string().contains("\"workshop\""), "{err}");

        a.attach("ns/a", &attach("workshop", "netns n/x"))
            .expect("first");
        let err = a
            .attach("ns/b", &attach("workshop", "netns n/x"))
            .expect_err("second endpoint of one namespace");
        assert!(matches!(&err, AttachError::AlreadyAttached { holder, .. } if holder == "ns/a"));

        let mut req = attach("workshop", "netns n/y");
        req.address = Some(ip("10.1.0.2"));
        let err = a.attach("ns/c", &req).expect_err("taken");
        assert!(err.to_string().contains("ns/a"), "{err}");
        // Nothing was kept for the refused endpoint.
        assert_eq!(a.endpoint_count("workshop"), 1);
        let mut req = attach("workshop", "netns n/x");
        req.network = "missing".into();
        assert_eq!(
            a.attach("ns/d", &req),
            Err(AttachError::NetworkNotReady("missing".into()))
        );
    }

    #[test]
    fn bad_gateway_holds_no_subnet() {
        let mut a = Allocations::default();
        let err = a
            .ensure_network(
                "bad",
                &NetworkRequest {
                    subnet: Some(net("10.1.0.0/16")),
                    gateway: Some(ip("10.2.0.1")),
                    ..auto()
                },
            )
            .expect_err("gateway outside");
        assert!(matches!(err, NetworkAllocError::Config(_)));
        assert!(
            a.ensure_network(
                "good",
                &NetworkRequest {
                    subnet: Some(net("10.1.0.0/16")),
                    ..auto()
                }
            )
            .is_ok()
        );
    }

    #[test]
    fn detach_frees_the_address_and_interface() {
        let mut a = Allocations::default();
        a.ensure_network("bridge", &auto()).expect("bridge");
        let first = a.attach("ns/a", &attach("bridge", "netns n/a")).expect("a");
        assert_eq!(a.detach("ns/a"), first.address.map(IpAddr::V4));
        assert_eq!(a.endpoint_count("bridge"), 0);
        // The namespace may attach again, with eth0 again.
        let again = a.attach("ns/b", &attach("bridge", "netns n/a")).expect("b");
        assert_eq!(again.interface, "eth0");
        assert_eq!(a.detach("ns/missing"), None);
    }

    #[test]
    fn detaching_most_of_a_burst_gives_the_tables_back() {
        let mut a = Allocations::default();
        a.ensure_network("bridge", &auto()).expect("bridge");
        let capacity = |a: &Allocations| {
            a.records.capacity()
                + a.attachments.capacity()
                + a.interfaces.capacity()
                + a.pools.get("bridge").map_or(0, AddressPool::capacity)
        };
        for i in 0..1_000 {
            a.attach(
                &format!("ns/e{i}"),
                &attach("bridge", &format!("netns n/{i}")),
            )
            .expect("attached");
        }
        let grown = capacity(&a);
        for i in 10..1_000 {
            a.detach(&format!("ns/e{i}")).expect("detached");
        }
        assert_eq!(a.endpoint_count("bridge"), 10);
        let left = capacity(&a);
        assert!(left * 20 < grown, "{left} of {grown} kept for 10 endpoints");
        // What is left still works.
        assert!(a.detach("ns/e0").is_some());
        a.attach("ns/again", &attach("bridge", "netns n/0"))
            .expect("attached again");
    }

    #[test]
    fn host_networks_need_no_pool() {
        let mut a = Allocations::default();
        let mut req = attach("host", "pod ns/p");
        req.needs_address = false;
        let got = a.attach("ns/h", &req).expect("host");
        assert_eq!(got.address, None);
        assert_eq!(got.interface, "eth0");
        assert_eq!(a.endpoint_count("host"), 1);
        assert_eq!(a.detach("ns/h"), None);
    }

    #[test]
    fn ports_are_all_or_nothing_and_name_the_holder() {
        let mut a = Allocations::default();
        let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let got = a
            .assign_ports(
                "default/web",
                "node-a",
                &[
                    PortSpec::auto(Protocol::Tcp, any),
                    PortSpec::fixed(Protocol::Tcp, any, 8000),
                ],
            )
            .expect("free");
        assert_eq!(got[0].port, 32768);
        assert_eq!(got[1].port, 8000);
        let err = a
            .assign_ports(
                "default/other",
                "node-a",
                &[PortSpec::fixed(Protocol::Tcp, any, 8000)],
            )
            .expect_err("conflict");
        assert!(err.to_string().contains("default/web"), "{err}");
        // Another node is fine.
        assert!(
            a.assign_ports(
                "default/other",
                "node-b",
                &[PortSpec::fixed(Protocol::Tcp, any, 8000)]
            )
            .is_ok()
        );
        assert_eq!(a.ports_held(), 3);
        a.release_ports("default/web");
        assert_eq!(a.ports_held(), 1);
    }

    fn object<K: serde::de::DeserializeOwned>(v: serde_json::Value) -> K {
        serde_json::from_value(v).expect("valid object")
    }

    #[test]
    fn rebuild_from_statuses_keeps_first_holders() {
        let networks: Vec<Network> = vec![
            object(
                serde_json::json!({"apiVersion": "pier.dev/v1alpha1", "kind": "Network",
                "metadata": {"name": "bridge", "creationTimestamp": "2026-01-01T00:00:00Z"},
                "spec": {}, "status": {"subnet": "172.17.0.0/16", "gateway": "172.17.0.1"}}),
            ),
            object(
                serde_json::json!({"apiVersion": "pier.dev/v1alpha1", "kind": "Network",
                "metadata": {"name": "late", "creationTimestamp": "2026-01-02T00:00:00Z"},
                "spec": {}, "status": {"subnet": "172.17.0.0/24"}}),
            ),
        ];
        let ep = |name: &str, addr: &str, ts: &str| -> Endpoint {
            object(
                serde_json::json!({"apiVersion": "pier.dev/v1alpha1", "kind": "Endpoint",
                "metadata": {"name": name, "namespace": "default", "creationTimestamp": ts},
                "spec": {"target": {"netns": {"name": name}}},
                "status": {"node": "n", "network": "bridge", "ipv4Address": addr, "interface": "eth0"}}),
            )
        };
        let endpoints = vec![
            ep("b", "172.17.0.2", "2026-01-03T00:00:00Z"),
            ep("a", "172.17.0.2", "2026-01-02T00:00:00Z"),
            ep("c", "172.17.0.3", "2026-01-04T00:00:00Z"),
        ];
        let publishes: Vec<PortPublish> = vec![object(serde_json::json!({
            "apiVersion": "pier.dev/v1alpha1", "kind": "PortPublish",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"endpoint": "a", "ports": [{"containerPort": 80}]},
            "status": {"node": "n", "ports": [{"containerPort": 80, "protocol": "TCP", "hostIP": "0.0.0.0", "hostPort": 32772}]}}))];
        let (mut a, rejected) =
            Allocations::from_objects(AllocConfig::default(), &networks, &endpoints, &publishes);
        assert_eq!(rejected.len(), 2, "{rejected:?}");
        assert!(rejected[0].contains("\"late\""), "{rejected:?}");
        assert!(rejected[1].contains("default/b"), "{rejected:?}");
        assert_eq!(a.endpoint_count("bridge"), 2);
        // The next address skips those kept; the next port too.
        let next = a
            .attach("default/d", &attach("bridge", "netns n/d"))
            .expect("d");
        assert_eq!(next.address, Some(ip("172.17.0.4")));
        let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let err = a
            .assign_ports(
                "default/x",
                "n",
                &[PortSpec::fixed(Protocol::Tcp, any, 32772)],
            )
            .expect_err("kept");
        assert!(err.to_string().contains("default/web"), "{err}");
        assert_eq!(a.ports_of("default/web").len(), 1);
    }

    #[test]
    fn rebuild_keeps_the_oldest_overlays_vxlan_id() {
        let overlay = |name: &str, ts: &str, subnet: &str| -> Network {
            object(
                serde_json::json!({"apiVersion": "pier.dev/v1alpha1", "kind": "Network",
                "metadata": {"name": name, "creationTimestamp": ts},
                "spec": {"driver": "overlay"},
                "status": {"subnet": subnet, "gateway": subnet.replace(".0/24", ".1"), "vxlanId": 4097}}),
            )
        };
        let networks = vec![
            overlay("young", "2026-01-02T00:00:00Z", "10.1.2.0/24"),
            overlay("old", "2026-01-01T00:00:00Z", "10.1.1.0/24"),
        ];
        let (mut a, rejected) =
            Allocations::from_objects(AllocConfig::default(), &networks, &[], &[]);
        assert_eq!(rejected.len(), 1, "{rejected:?}");
        assert!(rejected[0].contains("\"young\""), "{rejected:?}");
        assert_eq!(a.ensure_vxlan_id("old"), Ok(4097), "kept");
        assert_eq!(a.ensure_vxlan_id("young"), Ok(4096), "a new one");
        assert!(a.network("young").is_some(), "its subnet is kept");
        a.release_network("old");
        assert_eq!(
            a.ensure_vxlan_id("third"),
            Ok(4097),
            "released with the network"
        );
    }

    /// Docker's rule: the first network attached keeps the default route after a connect; when
    /// its Endpoint goes, the next oldest takes it over; `host` and `null` attachments (no
    /// address) neither carry nor take it.
    #[test]
    fn the_oldest_attachment_of_a_namespace_carries_the_default_route() {
        let mut a = Allocations::default();
        a.ensure_network("bridge", &auto()).expect("bridge");
        a.ensure_network("tage", &auto()).expect("tage");
        let at = |network: &str, created: i64| AttachRequest {
            created: Some(created),
            ..attach(network, "netns n/con3")
        };
        // Reconciled in any order: the creation time decides, ties by owner key.
        a.attach("default/con3-tage", &at("tage", 20))
            .expect("tage");
        assert_eq!(a.default_route("default/con3-tage"), Some(true));
        a.attach("default/con3", &at("bridge", 10)).expect("bridge");
        assert_eq!(a.default_route("default/con3"), Some(true));
        assert_eq!(a.default_route("default/con3-tage"), Some(false));
        let none = AttachRequest {
            needs_address: false,
            ..at("none", 1)
        };
        a.attach("default/con3-none", &none).expect("none");
        assert_eq!(a.default_route("default/con3-none"), None);
        assert_eq!(a.default_route("default/con3"), Some(true));
        // Another namespace has its own.
        a.attach("default/con1", &attach("tage", "netns n/con1"))
            .expect("con1");
        assert_eq!(a.default_route("default/con1"), Some(true));
        // A tie in creation time: the smaller owner key.
        let tie = |network: &str| AttachRequest {
            created: Some(5),
            ..attach(network, "netns n/tie")
        };
        a.attach("default/tie-b", &tie("bridge")).expect("b");
        a.attach("default/tie-a", &tie("tage")).expect("a");
        assert_eq!(a.default_route("default/tie-a"), Some(true));
        assert_eq!(a.default_route("default/tie-b"), Some(false));
        a.detach("default/con3");
        assert_eq!(a.default_route("default/con3-tage"), Some(true));
        assert_eq!(a.default_route("default/con3"), None);
    }

    /// A Pod keeps its cluster network's eth0 and default route: Pier's interfaces are net1,
    /// net2, ... and none of them routes by default.
    #[test]
    fn pods_get_net_interfaces_and_no_default_route() {
        let mut a = Allocations::default();
        a.ensure_network("tage", &auto()).expect("tage");
        a.ensure_network("ch-open", &auto()).expect("ch-open");
        let pod = |network: &str, created: i64| AttachRequest {
            kind: TargetKind::Pod,
            created: Some(created),
            ..attach(network, "pod default/web")
        };
        let first = a.attach("default/web-tage", &pod("tage", 1)).expect("tage");
        let second = a
            .attach("default/web-ch-open", &pod("ch-open", 2))
            .expect("ch-open");
        assert_eq!(
            (first.interface.as_str(), second.interface.as_str()),
            ("net1", "net2")
        );
        assert_eq!(a.default_route("default/web-tage"), Some(false));
        assert_eq!(a.default_route("default/web-ch-open"), Some(false));
    }

    fn v6(s: &str) -> Ipv6Addr {
        s.parse().expect("test address")
    }

    /// Dual-stack and IPv6-only: an address of each family the network has, both released
    /// together, and an attach that cannot get its IPv6 address keeps no IPv4 one either.
    #[test]
    fn dual_stack_and_ipv6_only_attachments() {
        let mut a = Allocations::default();
        a.ensure_network("dual", &auto()).expect("IPv4 side");
        let request6 = Network6Request {
            subnet: Some("fd00:18::/64".parse().expect("subnet")),
            ..Network6Request::default()
        };
        let dual6 = a.ensure_network6("dual", &request6).expect("IPv6 side");
        assert_eq!(dual6.gateway, v6("fd00:18::1"));
        let only6 = a
            .ensure_network6("only6", &Network6Request::default())
            .expect("a /64 of the pool");
        assert_eq!(only6.subnet.prefix_len(), 64);
        assert!(AllocConfig::default().ipv6_pool.contains(&only6.subnet));

        let both = AttachRequest {
            needs_address6: true,
            ..attach("dual", "netns n/c1")
        };
        let got = a.attach("ns/c1", &both).expect("dual-stack");
        assert_eq!(got.address6, Some(v6("fd00:18::2")));
        assert!(got.address.is_some());
        assert_eq!(a.default_route("ns/c1"), Some(true));

        let only = AttachRequest {
            needs_address: false,
            needs_address6: true,
            ..attach("only6", "netns n/c2")
        };
        let got = a.attach("ns/c2", &only).expect("IPv6-only");
        assert_eq!((got.address, got.address6.is_some()), (None, true));
        assert_eq!(
            a.default_route("ns/c2"),
            Some(true),
            "an IPv6 address routes too"
        );

        // A static IPv6 address already held: refused, and the IPv4 address taken for it is
        // given back.
        let clash = AttachRequest {
            needs_address6: true,
            address6: Some(v6("fd00:18::2")),
            ..attach("dual", "netns n/c3")
        };
        assert!(matches!(
            a.attach("ns/c3", &clash),
            Err(AttachError::Address6(Address6Error::Taken { .. }))
        ));
        let c3_address = AttachRequest {
            address: Some(ip("172.17.0.3")),
            ..both_at("netns n/c4")
        };
        let c4 = a
            .attach("ns/c4", &c3_address)
            .expect("c3's address was given back");
        assert_eq!(c4.address6, Some(v6("fd00:18::3")));

        assert_eq!(a.detach("ns/c1"), Some(IpAddr::V4(ip("172.17.0.2"))));
        assert_eq!(a.detach("ns/c2").map(|a| a.is_ipv6()), Some(true));
        let again = a.attach("ns/c5", &both_at("netns n/c5")).expect("c5");
        assert_eq!(
            again.address6,
            Some(v6("fd00:18::4")),
            "fresh addresses first"
        );
    }

    fn both_at(target: &str) -> AttachRequest {
        AttachRequest {
            needs_address6: true,
            ..attach("dual", target)
        }
    }

    #[test]
    fn ipv6_allocations_are_rebuilt_from_status() {
        let network: Network = serde_json::from_value(serde_json::json!({
            "apiVersion": "pier.dev/v1alpha1", "kind": "Network",
            "metadata": {"name": "dual", "uid": "u1", "creationTimestamp": "2026-12-05T00:00:00Z"},
            "spec": {"ipv6": true},
            "status": {"subnet": "172.18.0.0/16", "gateway": "172.18.0.1",
                       "ipv6Subnet": "fd00:5::/64", "ipv6Gateway": "fd00:5::1"}
        }))
        .expect("network");
        let endpoint: Endpoint = serde_json::from_value(serde_json::json!({
            "apiVersion": "pier.dev/v1alpha1", "kind": "Endpoint",
            "metadata": {"name": "c1", "namespace": "ns", "creationTimestamp": "2026-12-05T00:00:01Z"},
            "spec": {"network": "dual", "target": {"netns": {"name": "c1", "node": "n"}}},
            "status": {"network": "dual", "node": "n", "interface": "eth0",
                       "ipv4Address": "172.18.0.2", "ipv6Address": "fd00:5::9"}
        }))
        .expect("endpoint");
        let (mut a, rejected) =
            Allocations::from_objects(AllocConfig::default(), &[network], &[endpoint], &[]);
        assert!(rejected.is_empty(), "{rejected:?}");
        assert_eq!(
            a.network6("dual").map(|n| n.subnet.to_string()),
            Some("fd00:5::/64".to_owned())
        );
        let clash = AttachRequest {
            address6: Some(v6("fd00:5::9")),
            ..both_at("netns n/c2")
        };
        assert!(
            matches!(a.attach("ns/c2", &clash), Err(AttachError::Address6(_))),
            "c1 keeps its recorded address"
        );
    }
}
