//! Default address pools: where a Network without `spec.subnet` gets its subnet from.
//!
//! They are Docker's defaults, in Docker's order, so that a user moving from `docker network
//! create` sees the same subnets (172.17.0.0/16 for `bridge`, then 172.18.0.0/16, ...).
//! A cluster whose nodes already use some of these ranges configures its own list, in the same
//! `base=CIDR,size=N` form as dockerd's `--default-address-pool`.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnet::Ipv4Net;

use super::subnets::{SubnetAllocator, has_host_bits};

/// A base range cut into subnets of one prefix length (`size`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pool {
    base: Ipv4Net,
    size: u8,
}

/// Why a pool definition is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// `size` must be at least the base's prefix length (a pool cannot hand out subnets larger
    /// than itself) and at most 30 (smaller subnets cannot hold a gateway and an endpoint).
    #[error(
        "address pool {base}: subnet size /{size} must be between /{} and /30",
        base.prefix_len()
    )]
    InvalidSize {
        /// The pool's base range.
        base: Ipv4Net,
        /// The requested subnet prefix length.
        size: u8,
    },
    /// The base has bits set past its prefix (e.g. `172.17.0.1/16`), which is almost always a typo.
    #[error("address pool base {base} has host bits set (did you mean {}?)", base.trunc())]
    HostBitsSet {
        /// The base as given.
        base: Ipv4Net,
    },
    /// The text is not `base=CIDR,size=N` (or `CIDR,N`).
    #[error(
        "cannot parse address pool {text:?}: {reason} (expected e.g. base=10.10.0.0/16,size=24)"
    )]
    Parse {
        /// The text as given.
        text: String,
        /// What was wrong.
        reason: String,
    },
}

impl Pool {
    /// A pool handing out `/size` subnets of `base`.
    pub fn new(base: Ipv4Net, size: u8) -> Result<Self, PoolError> {
        if has_host_bits(base) {
            return Err(PoolError::HostBitsSet { base });
        }
        if size < base.prefix_len() || size > 30 {
            return Err(PoolError::InvalidSize { base, size });
        }
        Ok(Self { base, size })
    }

    /// The range the subnets come from.
    pub fn base(&self) -> Ipv4Net {
        self.base
    }

    /// The prefix length of each subnet handed out.
    pub fn size(&self) -> u8 {
        self.size
    }

    /// Number of addresses in each subnet of this pool, as a `u64` (a /0 base has 2^32).
    pub(crate) fn block(&self) -> u64 {
        1u64 << (32 - u32::from(self.size))
    }

    /// The subnet of this pool that starts at `start` (which must be block-aligned).
    pub(crate) fn subnet_at(&self, start: u32) -> Option<Ipv4Net> {
        Ipv4Net::new(Ipv4Addr::from(start), self.size).ok()
    }

    /// Every subnet of the pool, in order (lazily: a /8 cut into /24s is 65,536 of them).
    pub fn subnets(&self) -> impl Iterator<Item = Ipv4Net> + '_ {
        let first = u64::from(u32::from(self.base.network()));
        let end = u64::from(u32::from(self.base.broadcast())) + 1;
        let block = self.block();
        (0..)
            .map(move |k| first + k * block)
            .take_while(move |start| *start < end)
            .filter_map(move |start| u32::try_from(start).ok())
            .filter_map(move |start| self.subnet_at(start))
    }
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "base={},size={}", self.base, self.size)
    }
}

impl FromStr for Pool {
    type Err = PoolError;

    /// Parses dockerd's `--default-address-pool` syntax, `base=10.10.0.0/16,size=24`
    /// (the keys may be left out: `10.10.0.0/16,24`).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| PoolError::Parse {
            text: text.to_owned(),
            reason: reason.to_owned(),
        };
        let mut base = None;
        let mut size = None;
        for (i, part) in text.split(',').map(str::trim).enumerate() {
            let (key, value) = match part.split_once('=') {
                Some((k, v)) => (k.trim(), v.trim()),
                None if i == 0 => ("base", part),
                None if i == 1 => ("size", part),
                None => return Err(err("too many fields")),
            };
            match key {
                "base" => {
                    base = Some(
                        value
                            .parse::<Ipv4Net>()
                            .map_err(|_| err("base is not an IPv4 CIDR"))?,
                    );
                }
                "size" => {
                    size = Some(
                        value
                            .trim_start_matches('/')
                            .parse::<u8>()
                            .map_err(|_| err("size is not a prefix length"))?,
                    );
                }
                _ => return Err(err("unknown key (use base= and size=)")),
            }
        }
        let base = base.ok_or_else(|| err("missing base"))?;
        let size = size.ok_or_else(|| err("missing size"))?;
        Pool::new(base, size)
    }
}

/// Builds a pool from constants known to be valid.
const fn known(a: u8, b: u8, prefix: u8, size: u8) -> Pool {
    Pool {
        base: Ipv4Net::new_assert(Ipv4Addr::new(a, b, 0, 0), prefix),
        size,
    }
}

/// Docker's default local-scope pools, in Docker's order: 172.17.0.0/16 through 172.31.0.0/16
/// as /16s, then 192.168.0.0/16 cut into /20s (31 subnets in all).
pub const DEFAULT_POOLS: [Pool; 7] = [
    known(172, 17, 16, 16),
    known(172, 18, 16, 16),
    known(172, 19, 16, 16),
    known(172, 20, 14, 16),
    known(172, 24, 14, 16),
    known(172, 28, 14, 16),
    known(192, 168, 16, 20),
];

/// [`DEFAULT_POOLS`] as a `Vec`, for [`super::SubnetAllocator::new`].
pub fn default_pools() -> Vec<Pool> {
    DEFAULT_POOLS.to_vec()
}

/// The first subnet of `pools` (in order) that overlaps none of `excluded`, e.g. where local mode
/// puts the default `bridge` Network when Docker already has 172.17.0.0/16.
pub fn first_free_subnet(pools: &[Pool], excluded: &[Ipv4Net]) -> Option<Ipv4Net> {
    // The allocator jumps past each exclusion instead of trying every subnet of a big pool.
    let mut allocator = SubnetAllocator::new(pools.to_vec());
    allocator.set_excluded(excluded.iter().copied());
    allocator.allocate("", None).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("test CIDR")
    }

    #[test]
    fn defaults_are_dockers() {
        let all: Vec<Ipv4Net> = DEFAULT_POOLS.iter().flat_map(|p| p.subnets()).collect();
        assert_eq!(all.len(), 15 + 16);
        assert_eq!(all[0], net("172.17.0.0/16"));
        assert_eq!(all[14], net("172.31.0.0/16"));
        assert_eq!(all[15], net("192.168.0.0/20"));
        assert_eq!(all[16], net("192.168.16.0/20"));
        assert_eq!(all[30], net("192.168.240.0/20"));
    }

    #[test]
    fn parses_docker_syntax() {
        let p: Pool = "base=10.10.0.0/16,size=24".parse().expect("valid pool");
        assert_eq!(p.base(), net("10.10.0.0/16"));
        assert_eq!(p.size(), 24);
        assert_eq!(p.to_string().parse::<Pool>(), Ok(p));
        let q: Pool = "10.10.0.0/16, /24".parse().expect("short form");
        assert_eq!(q, p);
        assert_eq!(p.subnets().count(), 256);
    }

    #[test]
    fn rejects_bad_pools() {
        assert!(matches!(
            "base=10.0.0.0/16,size=8".parse::<Pool>(),
            Err(PoolError::InvalidSize { size: 8, .. })
        ));
        assert!(matches!(
            "base=10.0.0.0/16,size=31".parse::<Pool>(),
            Err(PoolError::InvalidSize { size: 31, .. })
        ));
        assert!(matches!(
            "base=10.0.0.1/16,size=24".parse::<Pool>(),
            Err(PoolError::HostBitsSet { .. })
        ));
        for bad in [
            "",
            "base=10.0.0.0/16",
            "size=24",
            "base=x,size=24",
            "a=1,b=2",
            "1,2,3",
        ] {
            assert!(
                matches!(bad.parse::<Pool>(), Err(PoolError::Parse { .. })),
                "{bad:?} should not parse"
            );
        }
        let msg = "base=10.0.0.1/16,size=24"
            .parse::<Pool>()
            .expect_err("host bits")
            .to_string();
        assert!(msg.contains("did you mean 10.0.0.0/16"), "{msg}");
    }

    #[test]
    fn first_free_subnet_skips_excluded() {
        assert_eq!(
            first_free_subnet(&DEFAULT_POOLS, &[]),
            Some(net("172.17.0.0/16"))
        );
        // Docker's docker0 and a VPN route inside 172.18/16.
        assert_eq!(
            first_free_subnet(
                &DEFAULT_POOLS,
                &[net("172.17.0.0/16"), net("172.18.3.0/24")]
            ),
            Some(net("172.19.0.0/16"))
        );
        // An exclusion containing whole pools moves on to the next pool.
        assert_eq!(
            first_free_subnet(&DEFAULT_POOLS, &[net("172.16.0.0/12")]),
            Some(net("192.168.0.0/20"))
        );
        // Host addresses (non-network CIDRs) exclude their whole network.
        let pool = Pool::new(net("10.10.0.0/16"), 24).expect("pool");
        assert_eq!(
            first_free_subnet(&[pool], &[net("10.10.0.1/24"), net("10.10.1.7/32")]),
            Some(net("10.10.2.0/24"))
        );
        assert_eq!(first_free_subnet(&[pool], &[net("10.0.0.0/8")]), None);
        assert_eq!(first_free_subnet(&[], &[]), None);
    }

    #[test]
    fn whole_address_space_pool_iterates_without_overflow() {
        let p = Pool::new(net("0.0.0.0/0"), 1).expect("valid");
        let subnets: Vec<_> = p.subnets().collect();
        assert_eq!(subnets, vec![net("0.0.0.0/1"), net("128.0.0.0/1")]);
    }
}
