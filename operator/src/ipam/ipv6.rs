//! IPv6 address management (pure): a subnet per Network (a /64 of the cluster's unique local
//! /48 unless the spec names one) and addresses in subnets far too large to list.
//!
//! A /64 has 2^64 addresses, so nothing here is per address of the subnet: a pool is a cursor
//! over the range, the addresses held, and the ones released. Dynamic allocation takes the
//! cursor's next address (skipping held ones) and reuses released addresses only once the cursor
//! has run through the range, so an address is not handed out again while neighbour caches may
//! still point at its previous holder; either way it is O(1) amortised, whatever the range's
//! size. Only a small, fully used range (a /120, say) is ever scanned for holes.
//!
//! The default prefix follows RFC 4193 as Docker does since Engine 27: `fd` and a 40-bit Global
//! ID, here a hash of the cluster's identity (the uid of its `default` Namespace), so two
//! clusters do not pick the same prefix and one cluster keeps it across operator restarts.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv6Addr;

use ipnet::Ipv6Net;

use super::Rebuilt;

/// The prefix length of the cluster's unique local prefix.
pub const ULA_PREFIX_LEN: u8 = 48;
/// The prefix length of the subnet a Network with IPv6 but no `ipv6Subnet` gets.
pub const DEFAULT_SUBNET_PREFIX_LEN: u8 = 64;
/// The longest prefix a Network's IPv6 subnet may have: room for the gateway and endpoints.
pub const MAX_SUBNET_PREFIX_LEN: u8 = 124;

/// The cluster's unique local /48: `fd` followed by 40 bits of a hash of `cluster_id`.
pub fn ula_prefix(cluster_id: &str) -> Ipv6Net {
    let hash = pier_crds::names::fnv1a64(cluster_id.as_bytes()).to_be_bytes();
    let mut octets = [0u8; 16];
    octets[0] = 0xfd;
    octets[1..6].copy_from_slice(&hash[..5]);
    Ipv6Net::new_assert(Ipv6Addr::from(octets), ULA_PREFIX_LEN)
}

/// Why a Network gets no IPv6 subnet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Subnet6Error {
    /// The requested subnet overlaps another Network's.
    #[error("IPv6 subnet {requested} overlaps {existing} of network {holder:?}")]
    Overlap {
        /// What was asked for.
        requested: Ipv6Net,
        /// The subnet in the way.
        existing: Ipv6Net,
        /// Its Network.
        holder: String,
    },
    /// The requested subnet has host bits or too long a prefix.
    #[error(
        "IPv6 subnet {0} must be a network address with a prefix of at most {MAX_SUBNET_PREFIX_LEN} bits"
    )]
    Invalid(Ipv6Net),
    /// Every /64 of the pool is taken.
    #[error("no free /{DEFAULT_SUBNET_PREFIX_LEN} is left in the IPv6 pool {0}")]
    Exhausted(Ipv6Net),
}

/// One IPv6 subnet per Network, no two overlapping.
#[derive(Debug, Clone)]
pub struct Subnets6 {
    pool: Ipv6Net,
    by_network: BTreeMap<String, Ipv6Net>,
    /// The next /64 of the pool to try: automatic subnets are handed out in order.
    cursor: u64,
}

impl Subnets6 {
    /// Nothing allocated; automatic subnets come from `pool` (a /48 by default).
    pub fn new(pool: Ipv6Net) -> Self {
        Self {
            pool,
            by_network: BTreeMap::new(),
            cursor: 0,
        }
    }

    /// The pool automatic subnets come from.
    pub fn pool(&self) -> Ipv6Net {
        self.pool
    }

    /// The subnet `network` holds.
    pub fn get(&self, network: &str) -> Option<Ipv6Net> {
        self.by_network.get(network).copied()
    }

    fn overlapping(&self, network: &str, subnet: Ipv6Net) -> Option<(&str, Ipv6Net)> {
        self.by_network
            .iter()
            .filter(|(name, _)| name.as_str() != network)
            .find(|(_, held)| held.contains(&subnet) || subnet.contains(*held))
            .map(|(name, held)| (name.as_str(), *held))
    }

    /// Gives `network` the requested subnet, or the next free /64 of the pool. Idempotent.
    pub fn allocate(
        &mut self,
        network: &str,
        requested: Option<Ipv6Net>,
    ) -> Result<Ipv6Net, Subnet6Error> {
        if let Some(held) = self.get(network)
            && requested.is_none_or(|r| r == held)
        {
            return Ok(held);
        }
        let subnet = match requested {
            Some(subnet) => {
                if subnet.trunc() != subnet || subnet.prefix_len() > MAX_SUBNET_PREFIX_LEN {
                    return Err(Subnet6Error::Invalid(subnet));
                }
                if let Some((holder, existing)) = self.overlapping(network, subnet) {
                    return Err(Subnet6Error::Overlap {
                        requested: subnet,
                        existing,
                        holder: holder.to_owned(),
                    });
                }
                subnet
            }
            None => self.next_free(network)?,
        };
        self.by_network.insert(network.to_owned(), subnet);
        Ok(subnet)
    }

    /// The next /64 of the pool that overlaps no Network's subnet.
    fn next_free(&mut self, network: &str) -> Result<Ipv6Net, Subnet6Error> {
        let bits = u32::from(DEFAULT_SUBNET_PREFIX_LEN.saturating_sub(self.pool.prefix_len()));
        let count = 1u128 << bits.min(64);
        let base = u128::from(self.pool.network());
        let step = 1u128 << (128 - u32::from(DEFAULT_SUBNET_PREFIX_LEN));
        // Each held subnet can push the cursor past at most one candidate, so this stops after
        // at most (networks + 1) tries per call unless the pool is full.
        for _ in 0..=self.by_network.len() {
            if u128::from(self.cursor) >= count {
                break;
            }
            let candidate = Ipv6Net::new_assert(
                Ipv6Addr::from(base + u128::from(self.cursor) * step),
                DEFAULT_SUBNET_PREFIX_LEN,
            );
            self.cursor += 1;
            if self.overlapping(network, candidate).is_none() {
                return Ok(candidate);
            }
        }
        // The cursor ran out: look for a /64 released since (a full pool is rare enough).
        (0..count.min(1 << 16))
            .map(|i| {
                Ipv6Net::new_assert(Ipv6Addr::from(base + i * step), DEFAULT_SUBNET_PREFIX_LEN)
            })
            .find(|candidate| self.overlapping(network, *candidate).is_none())
            .ok_or(Subnet6Error::Exhausted(self.pool))
    }

    /// Frees `network`'s subnet.
    pub fn release(&mut self, network: &str) -> Option<Ipv6Net> {
        self.by_network.remove(network)
    }

    /// The allocator holding the recorded subnets (first come, first kept), automatic ones
    /// continuing after the last recorded subnet of the pool.
    pub fn rebuild(
        pool: Ipv6Net,
        recorded: impl IntoIterator<Item = (String, Ipv6Net)>,
    ) -> Rebuilt<Self, Subnet6Error> {
        let mut allocator = Self::new(pool);
        let mut rejected = Vec::new();
        for (network, subnet) in recorded {
            if let Err(e) = allocator.allocate(&network, Some(subnet)) {
                rejected.push(e);
            }
        }
        let step_bits = 128 - u32::from(DEFAULT_SUBNET_PREFIX_LEN);
        allocator.cursor = allocator
            .by_network
            .values()
            .filter(|s| pool.contains(*s))
            .map(|s| ((u128::from(s.network()) - u128::from(pool.network())) >> step_bits) + 1)
            .max()
            .map_or(0, |next| u64::try_from(next).unwrap_or(u64::MAX));
        Rebuilt {
            allocator,
            rejected,
        }
    }
}

/// What a Network's spec says about its IPv6 addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressPool6Config {
    /// The subnet.
    pub subnet: Ipv6Net,
    /// The gateway; the subnet's first address after its own (`::1`) when absent.
    pub gateway: Option<Ipv6Addr>,
    /// Where dynamic addresses come from; the whole subnet when absent.
    pub ip_range: Option<Ipv6Net>,
}

/// Why a pool cannot be laid out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolConfig6Error {
    /// The gateway is not a usable address of the subnet.
    #[error("IPv6 gateway {gateway} is not a usable address of {subnet}")]
    Gateway {
        /// The gateway.
        gateway: Ipv6Addr,
        /// The subnet.
        subnet: Ipv6Net,
    },
    /// The range is not inside the subnet.
    #[error("IPv6 ipRange {range} is not inside {subnet}")]
    Range {
        /// The range.
        range: Ipv6Net,
        /// The subnet.
        subnet: Ipv6Net,
    },
}

/// Why an address cannot be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Address6Error {
    /// The requested address is outside the subnet.
    #[error("IPv6 address {address} is not in subnet {subnet}")]
    OutOfSubnet {
        /// The address.
        address: Ipv6Addr,
        /// The subnet.
        subnet: Ipv6Net,
    },
    /// The subnet's own address (the subnet-router anycast address) or the gateway.
    #[error("IPv6 address {0} is reserved (the subnet's own address or its gateway)")]
    Reserved(Ipv6Addr),
    /// Someone else holds it.
    #[error("IPv6 address {address} is in use by {holder}")]
    Taken {
        /// The address.
        address: Ipv6Addr,
        /// Its holder.
        holder: String,
    },
    /// No address of the range is free.
    #[error("no free IPv6 address is left in {0}")]
    Exhausted(Ipv6Net),
}

/// The IPv6 addresses of one Network.
#[derive(Debug, Clone)]
pub struct AddressPool6 {
    subnet: Ipv6Net,
    gateway: Ipv6Addr,
    /// The dynamic range, as offsets from the subnet's address (inclusive).
    first: u128,
    last: u128,
    /// The next offset the cursor hands out.
    next: u128,
    /// Offsets of the range released since the cursor passed them.
    released: BTreeSet<u128>,
    /// Offset → holder, and holder → offset.
    holders: HashMap<u128, String>,
    owners: HashMap<String, u128>,
}

impl AddressPool6 {
    /// An empty pool.
    pub fn new(config: &AddressPool6Config) -> Result<Self, PoolConfig6Error> {
        let subnet = config.subnet;
        let base = u128::from(subnet.network());
        let size_minus_one = u128::MAX >> subnet.prefix_len();
        let gateway = config.gateway.unwrap_or_else(|| Ipv6Addr::from(base + 1));
        if !subnet.contains(&gateway) || gateway == subnet.network() {
            return Err(PoolConfig6Error::Gateway { gateway, subnet });
        }
        let range = config.ip_range.unwrap_or(subnet);
        if !subnet.contains(&range) {
            return Err(PoolConfig6Error::Range { range, subnet });
        }
        let first = (u128::from(range.network()) - base).max(1);
        let last = (u128::from(range.broadcast()) - base).min(size_minus_one);
        Ok(Self {
            subnet,
            gateway,
            first,
            last,
            next: first,
            released: BTreeSet::new(),
            holders: HashMap::new(),
            owners: HashMap::new(),
        })
    }

    /// The subnet.
    pub fn subnet(&self) -> Ipv6Net {
        self.subnet
    }

    /// The gateway.
    pub fn gateway(&self) -> Ipv6Addr {
        self.gateway
    }

    /// How many addresses are held.
    pub fn len(&self) -> usize {
        self.owners.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }

    /// The address `owner` holds.
    pub fn address_of(&self, owner: &str) -> Option<Ipv6Addr> {
        self.owners.get(owner).map(|o| self.address(*o))
    }

    fn address(&self, offset: u128) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.subnet.network()) + offset)
    }

    fn offset(&self, address: Ipv6Addr) -> u128 {
        u128::from(address) - u128::from(self.subnet.network())
    }

    fn free(&self, offset: u128) -> bool {
        offset != 0 && self.address(offset) != self.gateway && !self.holders.contains_key(&offset)
    }

    /// Gives `owner` the requested address, or the next free one. Idempotent: an owner asking
    /// again gets what it holds (unless it asks for another address, which it then moves to).
    pub fn allocate(
        &mut self,
        owner: &str,
        requested: Option<Ipv6Addr>,
    ) -> Result<Ipv6Addr, Address6Error> {
        if let Some(held) = self.address_of(owner)
            && requested.is_none_or(|r| r == held)
        {
            return Ok(held);
        }
        let offset = match requested {
            Some(address) => self.check_requested(owner, address)?,
            None => self
                .next_free()
                .ok_or(Address6Error::Exhausted(self.subnet))?,
        };
        self.release(owner);
        self.released.remove(&offset);
        self.holders.insert(offset, owner.to_owned());
        self.owners.insert(owner.to_owned(), offset);
        Ok(self.address(offset))
    }

    fn check_requested(&self, owner: &str, address: Ipv6Addr) -> Result<u128, Address6Error> {
        if !self.subnet.contains(&address) {
            return Err(Address6Error::OutOfSubnet {
                address,
                subnet: self.subnet,
            });
        }
        let offset = self.offset(address);
        if offset == 0 || address == self.gateway {
            return Err(Address6Error::Reserved(address));
        }
        match self.holders.get(&offset) {
            Some(holder) if holder != owner => Err(Address6Error::Taken {
                address,
                holder: holder.clone(),
            }),
            _ => Ok(offset),
        }
    }

    /// The cursor's next free offset, else a released one, else (a small, full range) a hole.
    fn next_free(&mut self) -> Option<u128> {
        while self.next <= self.last {
            let offset = self.next;
            self.next += 1;
            if self.free(offset) {
                return Some(offset);
            }
        }
        if let Some(offset) = self.released.pop_first() {
            return Some(offset);
        }
        // Only a range whose every address was handed out gets here; bounded for safety.
        let span = (self.last - self.first).min(1 << 20);
        (self.first..=self.first + span).find(|o| self.free(*o))
    }

    /// Frees what `owner` holds.
    pub fn release(&mut self, owner: &str) -> Option<Ipv6Addr> {
        let offset = self.owners.remove(owner)?;
        self.holders.remove(&offset);
        if (self.first..self.next).contains(&offset) {
            self.released.insert(offset);
        }
        Some(self.address(offset))
    }
}

/// What a Network with IPv6 asks for: its spec, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Network6Request {
    /// `spec.ipv6Subnet` (a /64 of the pool when absent).
    pub subnet: Option<Ipv6Net>,
    /// `spec.ipv6Gateway`.
    pub gateway: Option<Ipv6Addr>,
    /// `spec.ipv6IpRange`.
    pub ip_range: Option<Ipv6Net>,
}

/// The IPv6 subnet and gateway a Network holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network6Allocation {
    /// The subnet.
    pub subnet: Ipv6Net,
    /// The gateway.
    pub gateway: Ipv6Addr,
}

/// Why a Network gets no IPv6 subnet or pool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Network6Error {
    /// The subnet overlaps another Network's, or none is free.
    #[error(transparent)]
    Subnet(#[from] Subnet6Error),
    /// The gateway or range does not fit the subnet.
    #[error(transparent)]
    Config(#[from] PoolConfig6Error),
}

/// The IPv6 side of every Network: subnets and a pool per Network.
#[derive(Debug, Clone)]
pub struct Ipv6Networks {
    subnets: Subnets6,
    pools: HashMap<String, AddressPool6>,
}

impl Ipv6Networks {
    /// Nothing allocated; automatic subnets from `pool`.
    pub fn new(pool: Ipv6Net) -> Self {
        Self {
            subnets: Subnets6::new(pool),
            pools: HashMap::new(),
        }
    }

    /// Gives `network` its IPv6 subnet and pool. Idempotent; the gateway and range are read when
    /// the pool is first made.
    pub fn ensure_network(
        &mut self,
        network: &str,
        request: &Network6Request,
    ) -> Result<Network6Allocation, Network6Error> {
        let had_subnet = self.subnets.get(network).is_some();
        let subnet = self.subnets.allocate(network, request.subnet)?;
        if let Some(pool) = self.pools.get(network) {
            return Ok(Network6Allocation {
                subnet,
                gateway: pool.gateway(),
            });
        }
        let config = AddressPool6Config {
            subnet,
            gateway: request.gateway,
            ip_range: request.ip_range,
        };
        match AddressPool6::new(&config) {
            Ok(pool) => {
                let gateway = pool.gateway();
                self.pools.insert(network.to_owned(), pool);
                Ok(Network6Allocation { subnet, gateway })
            }
            Err(e) => {
                if !had_subnet {
                    self.subnets.release(network);
                }
                Err(e.into())
            }
        }
    }

    /// What `network` holds.
    pub fn network(&self, network: &str) -> Option<Network6Allocation> {
        let pool = self.pools.get(network)?;
        Some(Network6Allocation {
            subnet: pool.subnet(),
            gateway: pool.gateway(),
        })
    }

    /// Frees `network`'s subnet and pool.
    pub fn release_network(&mut self, network: &str) -> Option<Ipv6Net> {
        self.pools.remove(network);
        self.subnets.release(network)
    }

    /// The pool of `network`, if it has one.
    pub fn pool_mut(&mut self, network: &str) -> Option<&mut AddressPool6> {
        self.pools.get_mut(network)
    }

    /// The address `owner` holds on `network`.
    pub fn address_of(&self, network: &str, owner: &str) -> Option<Ipv6Addr> {
        self.pools.get(network)?.address_of(owner)
    }

    /// Frees what `owner` holds on `network`.
    pub fn release(&mut self, network: &str, owner: &str) -> Option<Ipv6Addr> {
        self.pools.get_mut(network)?.release(owner)
    }

    /// The Networks' subnets and pools as recorded (first come, first kept). Each entry is a
    /// Network's name, its request and its recorded subnet.
    pub fn rebuild(
        pool: Ipv6Net,
        recorded: impl IntoIterator<Item = (String, Network6Request, Ipv6Net)>,
    ) -> (Self, Vec<String>) {
        let recorded: Vec<_> = recorded.into_iter().collect();
        let rebuilt = Subnets6::rebuild(
            pool,
            recorded
                .iter()
                .map(|(name, _, subnet)| (name.clone(), *subnet)),
        );
        let mut rejected: Vec<String> = rebuilt.rejected.iter().map(ToString::to_string).collect();
        let mut this = Self {
            subnets: rebuilt.allocator,
            pools: HashMap::new(),
        };
        for (name, request, subnet) in recorded {
            if this.subnets.get(&name) != Some(subnet) {
                continue;
            }
            let config = AddressPool6Config {
                subnet,
                gateway: request.gateway,
                ip_range: request.ip_range,
            };
            match AddressPool6::new(&config) {
                Ok(pool) => {
                    this.pools.insert(name, pool);
                }
                Err(e) => {
                    rejected.push(format!("network {name:?}: {e}"));
                    this.subnets.release(&name);
                }
            }
        }
        (this, rejected)
    }
}

#[cfg(test)]
#[path = "ipv6_tests.rs"]
mod tests;
