//! Per-network address allocation: what `docker network create --subnet --gateway --ip-range
//! --aux-address` and `docker run --ip` do.
//!
//! One bit per address of the subnet, set when the address cannot be handed out: the network and
//! broadcast addresses, the gateway and aux addresses are set at creation, so dynamic allocation
//! never has to special-case them and is a cursor step in the common case (see [`Bitmap`]).
//! Dynamic addresses come only from `ipRange`; static requests may name any free address of the
//! subnet, as with Docker.
//!
//! Every allocation has an owner (a string such as `namespace/endpoint`), so that asking again is
//! idempotent — a controller that crashes after allocating but before writing status gets the same
//! address on its next try — and so that errors can say *who* holds an address.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::Ipv4Net;
use pier_memory::ShrinkIfSparse as _;

use super::Rebuilt;
use super::bitmap::Bitmap;
use super::hash::IntMap;
use super::subnets::has_host_bits;

/// The largest subnet a Network may have (a /8: 16 Mi addresses, a 2 MiB bitmap). Larger ones
/// would cost memory out of proportion to any bridge.
pub const MAX_SUBNET_PREFIX: u8 = 8;

/// What a Network's spec says about its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressPoolConfig {
    /// The Network's subnet.
    pub subnet: Ipv4Net,
    /// The gateway (the bridge's address); the first usable address when absent.
    pub gateway: Option<Ipv4Addr>,
    /// Where dynamic addresses come from (`docker --ip-range`); the whole subnet when absent.
    pub ip_range: Option<Ipv4Net>,
    /// Named addresses never handed out (`docker --aux-address`), e.g. a router outside Pier.
    pub aux_addresses: BTreeMap<String, Ipv4Addr>,
}

impl AddressPoolConfig {
    /// A configuration with only a subnet: default gateway, whole-subnet range, no aux addresses.
    pub fn new(subnet: Ipv4Net) -> Self {
        Self {
            subnet,
            gateway: None,
            ip_range: None,
            aux_addresses: BTreeMap::new(),
        }
    }

    /// Sets the gateway.
    pub fn with_gateway(mut self, gateway: Ipv4Addr) -> Self {
        self.gateway = Some(gateway);
        self
    }

    /// Sets the range dynamic addresses come from.
    pub fn with_ip_range(mut self, ip_range: Ipv4Net) -> Self {
        self.ip_range = Some(ip_range);
        self
    }

    /// Adds a reserved aux address.
    pub fn with_aux(mut self, name: impl Into<String>, address: Ipv4Addr) -> Self {
        self.aux_addresses.insert(name.into(), address);
        self
    }
}

/// Why an address of the subnet is never handed out.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reservation {
    /// The subnet's first address (not reserved in a /31, RFC 3021).
    NetworkAddress,
    /// The subnet's last address (not reserved in a /31).
    Broadcast,
    /// The gateway, i.e. the bridge's own address.
    Gateway,
    /// An aux address, by name.
    Aux(String),
}

impl fmt::Display for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reservation::NetworkAddress => f.write_str("the network address"),
            Reservation::Broadcast => f.write_str("the broadcast address"),
            Reservation::Gateway => f.write_str("the gateway"),
            Reservation::Aux(name) => write!(f, "aux address {name:?}"),
        }
    }
}

/// Why a Network's address configuration is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolConfigError {
    /// A /32 has one address: there is no room for a gateway and an endpoint.
    #[error(
        "subnet {subnet} is too small: it must hold a gateway and at least one endpoint (/31 or larger)"
    )]
    SubnetTooSmall {
        /// The subnet.
        subnet: Ipv4Net,
    },
    /// Larger than [`MAX_SUBNET_PREFIX`].
    #[error(
        "subnet {subnet} is too large: a network's subnet may be at most a /{MAX_SUBNET_PREFIX}"
    )]
    SubnetTooLarge {
        /// The subnet.
        subnet: Ipv4Net,
    },
    /// The subnet or range has bits set past its prefix length.
    #[error("{what} {net} has host bits set (did you mean {}?)", net.trunc())]
    HostBitsSet {
        /// "subnet" or "ipRange".
        what: &'static str,
        /// The CIDR as given.
        net: Ipv4Net,
    },
    /// The gateway is not in the subnet.
    #[error("gateway {gateway} is outside subnet {subnet}")]
    GatewayOutsideSubnet {
        /// The gateway.
        gateway: Ipv4Addr,
        /// The subnet.
        subnet: Ipv4Net,
    },
    /// The gateway is the network or broadcast address.
    #[error("gateway {gateway} cannot be {reservation} of subnet {subnet}")]
    GatewayReserved {
        /// The gateway.
        gateway: Ipv4Addr,
        /// What the address is.
        reservation: Reservation,
        /// The subnet.
        subnet: Ipv4Net,
    },
    /// An aux address is not in the subnet.
    #[error("aux address {name:?} ({address}) is outside subnet {subnet}")]
    AuxOutsideSubnet {
        /// The aux address's name.
        name: String,
        /// The address.
        address: Ipv4Addr,
        /// The subnet.
        subnet: Ipv4Net,
    },
    /// An aux address is also the network/broadcast address, the gateway or another aux address.
    #[error("aux address {name:?} ({address}) is already {reservation}")]
    AuxReserved {
        /// The aux address's name.
        name: String,
        /// The address.
        address: Ipv4Addr,
        /// What it collides with.
        reservation: Reservation,
    },
    /// `ipRange` is not within the subnet.
    #[error("ipRange {range} is not within subnet {subnet}")]
    RangeOutsideSubnet {
        /// The range.
        range: Ipv4Net,
        /// The subnet.
        subnet: Ipv4Net,
    },
}

/// Why an address could not be allocated (or why a rebuild entry was not kept).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// The requested address is not in the subnet.
    #[error("address {address} is outside subnet {subnet}")]
    OutsideSubnet {
        /// The address asked for.
        address: Ipv4Addr,
        /// The subnet.
        subnet: Ipv4Net,
    },
    /// The requested address is reserved.
    #[error("address {address} is reserved: it is {reservation}")]
    Reserved {
        /// The address asked for.
        address: Ipv4Addr,
        /// What it is.
        reservation: Reservation,
    },
    /// The requested address belongs to someone else.
    #[error("address {address} is already assigned to {holder}")]
    Taken {
        /// The address asked for.
        address: Ipv4Addr,
        /// Its owner.
        holder: String,
    },
    /// The owner already holds a different address (an endpoint has one address per network).
    #[error("{owner} already has address {current}; it cannot also have {requested}")]
    OwnerHasAddress {
        /// The owner asking.
        owner: String,
        /// What it holds.
        current: Ipv4Addr,
        /// What it asked for.
        requested: Ipv4Addr,
    },
    /// Every address of the dynamic range is taken or reserved.
    #[error("no free address left in {range} (subnet {subnet})")]
    Exhausted {
        /// The subnet.
        subnet: Ipv4Net,
        /// The range dynamic addresses come from.
        range: Ipv4Net,
    },
    /// Rebuild only: the same (owner, address) pair appears more than once in the input.
    #[error("{owner} is listed with address {address} more than once")]
    Duplicate {
        /// The owner.
        owner: String,
        /// The address.
        address: Ipv4Addr,
    },
}

/// The addresses of one Network: who holds which, what is reserved, what is free.
#[derive(Debug, Clone)]
pub struct AddressPool {
    subnet: Ipv4Net,
    /// The subnet's first address as an integer; bit `i` of `bits` is address `base + i`.
    base: u32,
    gateway: Ipv4Addr,
    ip_range: Ipv4Net,
    /// Dynamic allocation searches bits `[range_lo, range_hi)`.
    range_lo: u32,
    range_hi: u32,
    aux: BTreeMap<String, Ipv4Addr>,
    aux_by_offset: HashMap<u32, String>,
    /// Set = reserved or allocated.
    bits: Bitmap,
    /// Owner → offset. The owner string is shared with `by_offset` (one allocation per owner).
    by_owner: HashMap<Arc<str>, u32>,
    /// Offset → owner, for "taken by whom" and release by address.
    by_offset: IntMap<u32, Arc<str>>,
}

impl AddressPool {
    /// Validates `config` and builds an empty pool.
    pub fn new(config: &AddressPoolConfig) -> Result<Self, PoolConfigError> {
        let subnet = config.subnet;
        if has_host_bits(subnet) {
            return Err(PoolConfigError::HostBitsSet {
                what: "subnet",
                net: subnet,
            });
        }
        if subnet.prefix_len() >= 32 {
            return Err(PoolConfigError::SubnetTooSmall { subnet });
        }
        if subnet.prefix_len() < MAX_SUBNET_PREFIX {
            return Err(PoolConfigError::SubnetTooLarge { subnet });
        }
        let base = u32::from(subnet.network());
        let size = 1u32 << (32 - u32::from(subnet.prefix_len()));
        // A /31 is a point-to-point link (RFC 3021): both addresses are usable.
        let edges_reserved = subnet.prefix_len() <= 30;

        let ip_range = match config.ip_range {
            Some(range) if has_host_bits(range) => {
                return Err(PoolConfigError::HostBitsSet {
                    what: "ipRange",
                    net: range,
                });
            }
            Some(range) if !subnet.contains(&range) => {
                return Err(PoolConfigError::RangeOutsideSubnet { range, subnet });
            }
            Some(range) => range,
            None => subnet,
        };
        let range_lo = u32::from(ip_range.network()) - base;
        let range_hi = u32::from(ip_range.broadcast()) - base + 1;

        let mut pool = Self {
            subnet,
            base,
            gateway: subnet.network(),
            ip_range,
            range_lo,
            range_hi,
            aux: config.aux_addresses.clone(),
            aux_by_offset: HashMap::new(),
            bits: Bitmap::new(size),
            by_owner: HashMap::new(),
            by_offset: IntMap::default(),
        };
        if edges_reserved {
            pool.bits.set(0);
            pool.bits.set(size - 1);
        }

        let gateway = match config.gateway {
            Some(gateway) => {
                let offset = pool
                    .offset(gateway)
                    .ok_or(PoolConfigError::GatewayOutsideSubnet { gateway, subnet })?;
                if let Some(reservation) = pool.edge_reservation(offset) {
                    return Err(PoolConfigError::GatewayReserved {
                        gateway,
                        reservation,
                        subnet,
                    });
                }
                gateway
            }
            // First usable: .1 in a /30 or larger, the first address of a /31.
            None => Ipv4Addr::from(base + u32::from(edges_reserved)),
        };
        pool.gateway = gateway;
        pool.bits.set(u32::from(gateway) - base);

        for (name, &address) in &config.aux_addresses {
            let offset = pool
                .offset(address)
                .ok_or_else(|| PoolConfigError::AuxOutsideSubnet {
                    name: name.clone(),
                    address,
                    subnet,
                })?;
            if let Some(reservation) = pool.reservation_at(offset) {
                return Err(PoolConfigError::AuxReserved {
                    name: name.clone(),
                    address,
                    reservation,
                });
            }
            pool.bits.set(offset);
            pool.aux_by_offset.insert(offset, name.clone());
        }
        Ok(pool)
    }

    /// Rebuilds a pool from the `(owner, address)` pairs recorded in Endpoint statuses.
    ///
    /// Entries are taken in order as static requests; one that repeats an entry, gives an owner a
    /// second address, takes an address someone earlier holds, or is outside the subnet or
    /// reserved is not kept and is reported — all of them, not just the first. The configuration
    /// itself being invalid is the outer error.
    pub fn rebuild<I, S>(
        config: &AddressPoolConfig,
        existing: I,
    ) -> Result<Rebuilt<Self, AddressError>, PoolConfigError>
    where
        I: IntoIterator<Item = (S, Ipv4Addr)>,
        S: AsRef<str>,
    {
        let mut pool = Self::new(config)?;
        let mut rejected = Vec::new();
        for (owner, address) in existing {
            let owner = owner.as_ref();
            if pool.address_of(owner) == Some(address) {
                rejected.push(AddressError::Duplicate {
                    owner: owner.to_owned(),
                    address,
                });
            } else if let Err(e) = pool.allocate(owner, Some(address)) {
                rejected.push(e);
            }
        }
        Ok(Rebuilt {
            allocator: pool,
            rejected,
        })
    }

    /// Gives `owner` an address: `requested` if given and free, else the next free address of the
    /// range after the last one handed out (wrapping round, so released addresses are reused
    /// only after the rest of the range has been used).
    ///
    /// Idempotent: an owner that already holds an address gets it back.
    pub fn allocate(
        &mut self,
        owner: &str,
        requested: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr, AddressError> {
        if let Some(&offset) = self.by_owner.get(owner) {
            let current = self.addr(offset);
            return match requested {
                Some(requested) if requested != current => Err(AddressError::OwnerHasAddress {
                    owner: owner.to_owned(),
                    current,
                    requested,
                }),
                _ => Ok(current),
            };
        }
        let offset = match requested {
            Some(address) => {
                let offset = self.check_static(address)?;
                self.bits.set(offset);
                offset
            }
            None => self
                .bits
                .set_next_clear(self.range_lo, self.range_hi)
                .ok_or(AddressError::Exhausted {
                    subnet: self.subnet,
                    range: self.ip_range,
                })?,
        };
        let owner: Arc<str> = Arc::from(owner);
        self.by_owner.insert(Arc::clone(&owner), offset);
        self.by_offset.insert(offset, owner);
        Ok(self.addr(offset))
    }

    /// The offset of a statically requested address, if it may be handed out.
    fn check_static(&self, address: Ipv4Addr) -> Result<u32, AddressError> {
        let offset = self.offset(address).ok_or(AddressError::OutsideSubnet {
            address,
            subnet: self.subnet,
        })?;
        if let Some(reservation) = self.reservation_at(offset) {
            return Err(AddressError::Reserved {
                address,
                reservation,
            });
        }
        if let Some(holder) = self.by_offset.get(&offset) {
            return Err(AddressError::Taken {
                address,
                holder: holder.to_string(),
            });
        }
        Ok(offset)
    }

    /// The entries its owner tables have room for (tests of what a burst leaves behind).
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.by_owner.capacity() + self.by_offset.capacity()
    }

    /// Frees `owner`'s address, returning it.
    pub fn release(&mut self, owner: &str) -> Option<Ipv4Addr> {
        let offset = self.by_owner.remove(owner)?;
        self.by_offset.remove(&offset);
        self.bits.clear(offset);
        self.by_owner.shrink_if_sparse();
        self.by_offset.shrink_if_sparse();
        Some(self.addr(offset))
    }

    /// Frees `address`, returning who held it. Reserved addresses stay reserved.
    pub fn release_address(&mut self, address: Ipv4Addr) -> Option<String> {
        let offset = self.offset(address)?;
        let owner = self.by_offset.remove(&offset)?;
        self.by_owner.remove(&owner);
        self.bits.clear(offset);
        Some(owner.to_string())
    }

    /// The subnet.
    pub fn subnet(&self) -> Ipv4Net {
        self.subnet
    }

    /// The gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// The range dynamic addresses come from (the subnet when no ipRange was given).
    pub fn ip_range(&self) -> Ipv4Net {
        self.ip_range
    }

    /// The aux addresses, by name.
    pub fn aux_addresses(&self) -> &BTreeMap<String, Ipv4Addr> {
        &self.aux
    }

    /// Who holds `address`.
    pub fn owner_of(&self, address: Ipv4Addr) -> Option<&str> {
        let offset = self.offset(address)?;
        self.by_offset.get(&offset).map(|o| &**o)
    }

    /// The address `owner` holds.
    pub fn address_of(&self, owner: &str) -> Option<Ipv4Addr> {
        self.by_owner.get(owner).map(|&o| self.addr(o))
    }

    /// Why `address` is never handed out, if it is reserved (it must be in the subnet).
    pub fn reservation(&self, address: Ipv4Addr) -> Option<Reservation> {
        self.reservation_at(self.offset(address)?)
    }

    /// Every `(owner, address)` allocated, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Ipv4Addr)> + '_ {
        self.by_owner.iter().map(|(o, &off)| (&**o, self.addr(off)))
    }

    /// Number of addresses allocated (static and dynamic).
    pub fn len(&self) -> usize {
        self.by_owner.len()
    }

    /// True when nothing is allocated.
    pub fn is_empty(&self) -> bool {
        self.by_owner.is_empty()
    }

    /// Number of addresses dynamic allocation can still hand out. O(range / 64).
    pub fn available(&self) -> u32 {
        self.bits.count_clear_in(self.range_lo, self.range_hi)
    }

    /// The offset of `address` in the subnet, if it is in it.
    fn offset(&self, address: Ipv4Addr) -> Option<u32> {
        self.subnet
            .contains(&address)
            .then(|| u32::from(address) - self.base)
    }

    /// The address at `offset`.
    fn addr(&self, offset: u32) -> Ipv4Addr {
        Ipv4Addr::from(self.base + offset)
    }

    /// Network or broadcast address (never in a /31).
    fn edge_reservation(&self, offset: u32) -> Option<Reservation> {
        if self.subnet.prefix_len() > 30 {
            return None;
        }
        if offset == 0 {
            Some(Reservation::NetworkAddress)
        } else if offset == self.bits.len() - 1 {
            Some(Reservation::Broadcast)
        } else {
            None
        }
    }

    /// What reserves `offset`, if anything.
    fn reservation_at(&self, offset: u32) -> Option<Reservation> {
        if let Some(r) = self.edge_reservation(offset) {
            return Some(r);
        }
        if self.addr(offset) == self.gateway {
            return Some(Reservation::Gateway);
        }
        self.aux_by_offset
            .get(&offset)
            .map(|name| Reservation::Aux(name.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeSet, HashSet};

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("test CIDR")
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("test address")
    }

    fn pool(cfg: AddressPoolConfig) -> AddressPool {
        AddressPool::new(&cfg).expect("valid config")
    }

    #[test]
    fn defaults_gateway_first_and_skips_network_address() {
        let mut p = pool(AddressPoolConfig::new(net("172.18.0.0/16")));
        assert_eq!(p.gateway(), ip("172.18.0.1"));
        assert_eq!(p.allocate("default/con1", None), Ok(ip("172.18.0.2")));
        assert_eq!(p.allocate("default/con2", None), Ok(ip("172.18.0.3")));
        // Idempotent, also when asked with the address it has.
        assert_eq!(p.allocate("default/con1", None), Ok(ip("172.18.0.2")));
        assert_eq!(
            p.allocate("default/con1", Some(ip("172.18.0.2"))),
            Ok(ip("172.18.0.2"))
        );
        assert_eq!(p.owner_of(ip("172.18.0.3")), Some("default/con2"));
        assert_eq!(p.address_of("default/con2"), Some(ip("172.18.0.3")));
        assert_eq!(p.len(), 2);
    }

    #[test]
    fn small_pool_never_hands_out_network_broadcast_or_gateway() {
        let mut p = pool(AddressPoolConfig::new(net("10.0.0.0/29")));
        let got: Vec<_> = (0..5)
            .map(|i| p.allocate(&format!("e{i}"), None).expect("free"))
            .collect();
        assert_eq!(
            got,
            ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"].map(ip)
        );
        let err = p.allocate("e5", None).expect_err("full");
        assert_eq!(
            err,
            AddressError::Exhausted {
                subnet: net("10.0.0.0/29"),
                range: net("10.0.0.0/29")
            }
        );
        assert_eq!(
            err.to_string(),
            "no free address left in 10.0.0.0/29 (subnet 10.0.0.0/29)"
        );
    }

    #[test]
    fn slash_30_holds_gateway_and_one_endpoint() {
        let mut p = pool(AddressPoolConfig::new(net("10.0.0.0/30")));
        assert_eq!(p.gateway(), ip("10.0.0.1"));
        assert_eq!(p.allocate("a", None), Ok(ip("10.0.0.2")));
        assert!(matches!(
            p.allocate("b", None),
            Err(AddressError::Exhausted { .. })
        ));
    }

    #[test]
    fn slash_31_uses_both_addresses() {
        let mut p = pool(AddressPoolConfig::new(net("10.0.0.0/31")));
        assert_eq!(p.gateway(), ip("10.0.0.0"));
        assert_eq!(p.allocate("a", None), Ok(ip("10.0.0.1")));
        assert!(matches!(
            p.allocate("b", None),
            Err(AddressError::Exhausted { .. })
        ));
        assert_eq!(p.reservation(ip("10.0.0.0")), Some(Reservation::Gateway));
    }

    #[test]
    fn rejects_slash_32_and_huge_subnets() {
        let err = AddressPool::new(&AddressPoolConfig::new(net("10.0.0.1/32"))).expect_err("/32");
        assert_eq!(
            err,
            PoolConfigError::SubnetTooSmall {
                subnet: net("10.0.0.1/32")
            }
        );
        assert!(err.to_string().contains("too small"));
        assert!(matches!(
            AddressPool::new(&AddressPoolConfig::new(net("10.0.0.0/7"))),
            Err(PoolConfigError::SubnetTooLarge { .. })
        ));
        assert!(AddressPool::new(&AddressPoolConfig::new(net("10.0.0.0/8"))).is_ok());
        assert!(matches!(
            AddressPool::new(&AddressPoolConfig::new(net("10.0.0.1/24"))),
            Err(PoolConfigError::HostBitsSet { what: "subnet", .. })
        ));
    }

    #[test]
    fn explicit_gateway_rules() {
        let p = pool(AddressPoolConfig::new(net("10.0.0.0/24")).with_gateway(ip("10.0.0.254")));
        assert_eq!(p.gateway(), ip("10.0.0.254"));
        assert_eq!(p.reservation(ip("10.0.0.254")), Some(Reservation::Gateway));
        assert_eq!(p.reservation(ip("10.0.0.1")), None);
        let outside = AddressPool::new(
            &AddressPoolConfig::new(net("10.0.0.0/24")).with_gateway(ip("10.0.1.1")),
        )
        .expect_err("outside");
        assert_eq!(
            outside,
            PoolConfigError::GatewayOutsideSubnet {
                gateway: ip("10.0.1.1"),
                subnet: net("10.0.0.0/24")
            }
        );
        assert_eq!(
            outside.to_string(),
            "gateway 10.0.1.1 is outside subnet 10.0.0.0/24"
        );
        for (gw, what) in [
            ("10.0.0.0", Reservation::NetworkAddress),
            ("10.0.0.255", Reservation::Broadcast),
        ] {
            let err =
                AddressPool::new(&AddressPoolConfig::new(net("10.0.0.0/24")).with_gateway(ip(gw)))
                    .expect_err("reserved gateway");
            assert!(
                matches!(err, PoolConfigError::GatewayReserved { reservation, .. } if reservation == what)
            );
        }
    }

    #[test]
    fn aux_addresses_are_reserved_and_checked() {
        let mut p = pool(
            AddressPoolConfig::new(net("10.0.0.0/29"))
                .with_aux("router", ip("10.0.0.2"))
                .with_aux("printer", ip("10.0.0.4")),
        );
        assert_eq!(p.allocate("a", None), Ok(ip("10.0.0.3")));
        assert_eq!(p.allocate("b", None), Ok(ip("10.0.0.5")));
        let err = p.allocate("c", Some(ip("10.0.0.2"))).expect_err("aux");
        assert_eq!(
            err,
            AddressError::Reserved {
                address: ip("10.0.0.2"),
                reservation: Reservation::Aux("router".into())
            }
        );
        assert_eq!(
            err.to_string(),
            "address 10.0.0.2 is reserved: it is aux address \"router\""
        );
        assert!(matches!(
            AddressPool::new(
                &AddressPoolConfig::new(net("10.0.0.0/29")).with_aux("x", ip("10.0.1.2"))
            ),
            Err(PoolConfigError::AuxOutsideSubnet { .. })
        ));
        assert!(matches!(
            AddressPool::new(
                &AddressPoolConfig::new(net("10.0.0.0/29")).with_aux("x", ip("10.0.0.1"))
            ),
            Err(PoolConfigError::AuxReserved {
                reservation: Reservation::Gateway,
                ..
            })
        ));
        assert!(matches!(
            AddressPool::new(
                &AddressPoolConfig::new(net("10.0.0.0/29"))
                    .with_aux("x", ip("10.0.0.3"))
                    .with_aux("y", ip("10.0.0.3"))
            ),
            Err(PoolConfigError::AuxReserved {
                reservation: Reservation::Aux(_),
                ..
            })
        ));
    }

    #[test]
    fn dynamic_addresses_only_from_ip_range_static_anywhere() {
        let mut p =
            pool(AddressPoolConfig::new(net("172.18.0.0/16")).with_ip_range(net("172.18.5.0/30")));
        assert_eq!(p.gateway(), ip("172.18.0.1"));
        let got: Vec<_> = (0..4)
            .map(|i| p.allocate(&format!("e{i}"), None).expect("free"))
            .collect();
        // The range's own first and last addresses are ordinary addresses of the subnet.
        assert_eq!(
            got,
            ["172.18.5.0", "172.18.5.1", "172.18.5.2", "172.18.5.3"].map(ip)
        );
        assert!(
            matches!(p.allocate("e4", None), Err(AddressError::Exhausted { range, .. }) if range == net("172.18.5.0/30"))
        );
        assert_eq!(
            p.allocate("s", Some(ip("172.18.9.9"))),
            Ok(ip("172.18.9.9"))
        );
        assert!(matches!(
            AddressPool::new(
                &AddressPoolConfig::new(net("172.18.0.0/16")).with_ip_range(net("172.19.0.0/24"))
            ),
            Err(PoolConfigError::RangeOutsideSubnet { .. })
        ));
        assert!(matches!(
            AddressPool::new(
                &AddressPoolConfig::new(net("172.18.0.0/16")).with_ip_range(net("172.18.0.0/15"))
            ),
            Err(PoolConfigError::RangeOutsideSubnet { .. })
        ));
        assert!(matches!(
            AddressPool::new(
                &AddressPoolConfig::new(net("172.18.0.0/16")).with_ip_range(net("172.18.5.1/24"))
            ),
            Err(PoolConfigError::HostBitsSet {
                what: "ipRange",
                ..
            })
        ));
    }

    #[test]
    fn static_requests_refused_with_reason() {
        let mut p = pool(AddressPoolConfig::new(net("10.0.0.0/24")));
        p.allocate("default/web", Some(ip("10.0.0.10")))
            .expect("free");
        let taken = p
            .allocate("default/db", Some(ip("10.0.0.10")))
            .expect_err("taken");
        assert_eq!(
            taken,
            AddressError::Taken {
                address: ip("10.0.0.10"),
                holder: "default/web".into()
            }
        );
        assert_eq!(
            taken.to_string(),
            "address 10.0.0.10 is already assigned to default/web"
        );
        assert!(matches!(
            p.allocate("x", Some(ip("10.0.1.10"))),
            Err(AddressError::OutsideSubnet { .. })
        ));
        for (a, r) in [
            ("10.0.0.0", Reservation::NetworkAddress),
            ("10.0.0.255", Reservation::Broadcast),
            ("10.0.0.1", Reservation::Gateway),
        ] {
            assert_eq!(
                p.allocate("x", Some(ip(a))),
                Err(AddressError::Reserved {
                    address: ip(a),
                    reservation: r
                })
            );
        }
        assert_eq!(
            p.allocate("default/web", Some(ip("10.0.0.11"))),
            Err(AddressError::OwnerHasAddress {
                owner: "default/web".into(),
                current: ip("10.0.0.10"),
                requested: ip("10.0.0.11")
            })
        );
        // Refusals changed nothing.
        assert_eq!(p.len(), 1);
        assert_eq!(p.available(), 256 - 3 - 1);
    }

    #[test]
    fn release_by_owner_and_address_then_reuse_after_wrap() {
        let mut p = pool(AddressPoolConfig::new(net("10.0.0.0/29")));
        for i in 0..5 {
            p.allocate(&format!("e{i}"), None).expect("free");
        }
        assert_eq!(p.release("e1"), Some(ip("10.0.0.3")));
        assert_eq!(p.release("e1"), None);
        assert_eq!(p.release_address(ip("10.0.0.5")), Some("e3".to_owned()));
        assert_eq!(
            p.release_address(ip("10.0.0.1")),
            None,
            "the gateway stays reserved"
        );
        assert_eq!(p.reservation(ip("10.0.0.1")), Some(Reservation::Gateway));
        assert_eq!(p.allocate("n1", None), Ok(ip("10.0.0.3")));
        assert_eq!(p.allocate("n2", None), Ok(ip("10.0.0.5")));
        assert!(matches!(
            p.allocate("n3", None),
            Err(AddressError::Exhausted { .. })
        ));
    }

    #[test]
    fn released_address_not_reused_at_once() {
        let mut p = pool(AddressPoolConfig::new(net("10.0.0.0/24")));
        let a = p.allocate("a", None).expect("free");
        p.release("a");
        let b = p.allocate("b", None).expect("free");
        assert_ne!(a, b, "the cursor moves on like Docker's");
    }

    #[test]
    fn fills_a_slash_16() {
        let mut p = pool(AddressPoolConfig::new(net("172.18.0.0/16")));
        let mut seen = HashSet::new();
        for i in 0..65_533u32 {
            let a = p.allocate(&format!("e{i}"), None).expect("free address");
            assert!(seen.insert(a));
        }
        assert_eq!(p.available(), 0);
        assert!(matches!(
            p.allocate("last", None),
            Err(AddressError::Exhausted { .. })
        ));
    }

    #[test]
    fn rebuild_reports_every_bad_entry() {
        let cfg = AddressPoolConfig::new(net("10.0.0.0/24")).with_aux("r", ip("10.0.0.5"));
        let entries = vec![
            ("ns/a", ip("10.0.0.2")),
            ("ns/b", ip("10.0.0.2")),   // taken by a
            ("ns/a", ip("10.0.0.2")),   // duplicate
            ("ns/a", ip("10.0.0.3")),   // a has .2
            ("ns/c", ip("10.0.1.2")),   // outside
            ("ns/d", ip("10.0.0.5")),   // aux
            ("ns/e", ip("10.0.0.255")), // broadcast
            ("ns/f", ip("10.0.0.4")),
        ];
        let rebuilt = AddressPool::rebuild(&cfg, entries).expect("valid config");
        let r = &rebuilt.rejected;
        assert_eq!(r.len(), 6, "{r:?}");
        assert!(matches!(&r[0], AddressError::Taken { holder, .. } if holder == "ns/a"));
        assert!(matches!(&r[1], AddressError::Duplicate { owner, .. } if owner == "ns/a"));
        assert!(matches!(&r[2], AddressError::OwnerHasAddress { owner, .. } if owner == "ns/a"));
        assert!(matches!(&r[3], AddressError::OutsideSubnet { .. }));
        assert!(matches!(
            &r[4],
            AddressError::Reserved {
                reservation: Reservation::Aux(_),
                ..
            }
        ));
        assert!(matches!(
            &r[5],
            AddressError::Reserved {
                reservation: Reservation::Broadcast,
                ..
            }
        ));
        let mut p = rebuilt.allocator;
        assert_eq!(p.len(), 2);
        assert_eq!(p.address_of("ns/a"), Some(ip("10.0.0.2")));
        // Allocation continues around the rebuilt entries.
        assert_eq!(p.allocate("ns/g", None), Ok(ip("10.0.0.3")));
        assert_eq!(p.allocate("ns/h", None), Ok(ip("10.0.0.6")));
        assert!(
            AddressPool::rebuild(
                &AddressPoolConfig::new(net("10.0.0.0/32")),
                Vec::<(String, Ipv4Addr)>::new()
            )
            .is_err()
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Dynamic(u8),
        Static(u8, u8),
        Release(u8),
        ReleaseAddress(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => any::<u8>().prop_map(Op::Dynamic),
            2 => (any::<u8>(), any::<u8>()).prop_map(|(o, a)| Op::Static(o, a)),
            2 => any::<u8>().prop_map(Op::Release),
            1 => any::<u8>().prop_map(Op::ReleaseAddress),
        ]
    }

    /// Config for the properties: a /25 inside a /24 address space (so some statics are
    /// outside), range in the second half, one aux address.
    fn prop_config() -> AddressPoolConfig {
        AddressPoolConfig::new(net("10.0.0.0/25"))
            .with_ip_range(net("10.0.0.64/26"))
            .with_aux("aux", ip("10.0.0.70"))
    }

    proptest! {
        /// No address is ever held by two owners, dynamic addresses come from the range and are
        /// never reserved, and `Exhausted` means the range is really full.
        #[test]
        fn never_hands_out_an_address_twice(ops in proptest::collection::vec(op(), 0..400)) {
            let mut p = pool(prop_config());
            let mut model: HashMap<String, Ipv4Addr> = HashMap::new();
            for op in ops {
                match op {
                    Op::Dynamic(o) => {
                        let owner = format!("o{o}");
                        match p.allocate(&owner, None) {
                            Ok(a) => {
                                if let Some(prev) = model.get(&owner) {
                                    prop_assert_eq!(*prev, a);
                                } else {
                                    prop_assert!(p.ip_range().contains(&a));
                                    prop_assert!(p.reservation(a).is_none());
                                    prop_assert!(!model.values().any(|v| *v == a), "{} twice", a);
                                    model.insert(owner, a);
                                }
                            }
                            Err(AddressError::Exhausted { .. }) => {
                                let used: BTreeSet<_> = model.values().copied().collect();
                                let free = p.ip_range().hosts().chain([p.ip_range().network(), p.ip_range().broadcast()])
                                    .filter(|a| p.reservation(*a).is_none() && !used.contains(a))
                                    .count();
                                prop_assert_eq!(free, 0);
                            }
                            Err(e) => prop_assert!(false, "unexpected {e}"),
                        }
                    }
                    Op::Static(o, a) => {
                        let owner = format!("o{o}");
                        let addr = Ipv4Addr::new(10, 0, 0, a);
                        let holder = model.iter().find(|(_, v)| **v == addr).map(|(k, _)| k.clone());
                        let res = p.allocate(&owner, Some(addr));
                        match (&res, model.get(&owner)) {
                            (Ok(got), Some(prev)) => prop_assert_eq!(got, prev),
                            (Ok(got), None) => {
                                prop_assert_eq!(*got, addr);
                                prop_assert!(holder.is_none());
                                model.insert(owner, addr);
                            }
                            (Err(AddressError::Taken { holder: h, .. }), _) => prop_assert_eq!(Some(h.clone()), holder),
                            (Err(AddressError::OutsideSubnet { .. }), _) => prop_assert!(a >= 128),
                            (Err(AddressError::Reserved { .. }), _) => prop_assert!(p.reservation(addr).is_some()),
                            (Err(AddressError::OwnerHasAddress { .. }), Some(prev)) => prop_assert_ne!(*prev, addr),
                            (Err(e), _) => prop_assert!(false, "unexpected {e}"),
                        }
                    }
                    Op::Release(o) => {
                        let owner = format!("o{o}");
                        prop_assert_eq!(p.release(&owner), model.remove(&owner));
                    }
                    Op::ReleaseAddress(a) => {
                        let addr = Ipv4Addr::new(10, 0, 0, a);
                        let holder = model.iter().find(|(_, v)| **v == addr).map(|(k, _)| k.clone());
                        if let Some(h) = &holder { model.remove(h); }
                        prop_assert_eq!(p.release_address(addr), holder);
                    }
                }
                prop_assert_eq!(p.len(), model.len());
            }
            let held: HashSet<Ipv4Addr> = p.iter().map(|(_, a)| a).collect();
            prop_assert_eq!(held.len(), p.len());
        }

        /// After filling the range, releasing any subset and allocating as many again hands out
        /// exactly the released addresses.
        #[test]
        fn released_addresses_are_reused(release in proptest::collection::btree_set(0usize..62, 0..62)) {
            let mut p = pool(prop_config());
            let mut all = Vec::new();
            while let Ok(a) = p.allocate(&format!("e{}", all.len()), None) {
                all.push(a);
            }
            // The /26 range minus the aux address and the subnet's broadcast address.
            prop_assert_eq!(all.len(), 64 - 2);
            let mut freed = BTreeSet::new();
            for &i in &release {
                if let Some(a) = all.get(i) {
                    prop_assert_eq!(p.release(&format!("e{i}")), Some(*a));
                    freed.insert(*a);
                }
            }
            let mut again = BTreeSet::new();
            for i in 0..freed.len() {
                again.insert(p.allocate(&format!("n{i}"), None).expect("a released address"));
            }
            prop_assert_eq!(again, freed);
            prop_assert!(matches!(p.allocate("more", None), Err(AddressError::Exhausted { .. })), "range is full again");
        }

        /// Rebuilding from arbitrary (possibly bad) entries then allocating dynamically never
        /// hands out a kept entry's address, and fills exactly the rest of the range.
        #[test]
        fn rebuild_then_allocate_never_collides(entries in proptest::collection::vec((0u8..40, any::<u8>()), 0..80)) {
            let input: Vec<(String, Ipv4Addr)> = entries.iter().map(|(o, a)| (format!("o{o}"), Ipv4Addr::new(10, 0, 0, *a))).collect();
            let rebuilt = AddressPool::rebuild(&prop_config(), input.clone()).expect("valid config");
            prop_assert_eq!(rebuilt.allocator.len() + rebuilt.rejected.len(), input.len());
            let mut p = rebuilt.allocator;
            let kept: HashSet<Ipv4Addr> = p.iter().map(|(_, a)| a).collect();
            let free_before = p.available();
            let mut n = 0;
            while let Ok(a) = p.allocate(&format!("new{n}"), None) {
                prop_assert!(!kept.contains(&a), "{} collides with a rebuilt entry", a);
                n += 1;
            }
            prop_assert_eq!(n, free_before);
        }
    }
}
