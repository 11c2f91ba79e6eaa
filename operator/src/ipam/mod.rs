//! IP address management: subnets for Networks, addresses for Endpoints, MACs from addresses.
//!
//! Pure logic with no Kubernetes or kernel imports, tested directly: allocation happens once, in the
//! operator, and is recorded in status; a restarted operator calls the `rebuild` constructors with
//! what it reads back from status. Everything here is deterministic so that controller tests can
//! predict the addresses Docker would have given.
//!
//! * [`pools`]: where automatic subnets come from (Docker's defaults, or configured).
//! * [`subnets`]: one non-overlapping subnet per Network, cluster-wide.
//! * [`addresses`]: one pool of addresses per Network (gateway, ipRange, aux addresses).
//! * [`bitmap`]: the O(1)-amortised free-slot finder shared with [`crate::ports`].
//! * [`hash`]: a cheap hasher for the integer-keyed maps on the allocation path.
//! * [`ipv6`]: IPv6 subnets (a /64 of the cluster's ULA /48) and addresses, never listed.
//! * [`mac`]: Docker's `02:42:` + IPv4 MAC addresses.
//! * [`vxlan`]: one VXLAN id per overlay Network, cluster-wide.

pub mod addresses;
pub mod bitmap;
pub mod hash;
pub mod ipv6;
pub mod mac;
pub mod pools;
pub mod subnets;
pub mod vxlan;

pub use addresses::{AddressError, AddressPool, AddressPoolConfig, PoolConfigError, Reservation};
pub use bitmap::Bitmap;
pub use mac::{MacAddr, MacParseError};
pub use pools::{DEFAULT_POOLS, Pool, PoolError, default_pools, first_free_subnet};
pub use subnets::{SubnetAllocator, SubnetError};
pub use vxlan::{VxlanIdError, VxlanIds};

/// The result of rebuilding an allocator from recorded allocations: the allocator, holding every
/// entry that could be kept (first come, first kept), and one error per entry that could not.
///
/// A rebuild never fails as a whole because of bad entries: the operator must come back up and
/// keep serving the allocations that are sound, while reporting (e.g. as a condition on the
/// affected objects) every one that is not.
#[derive(Debug, Clone)]
pub struct Rebuilt<A, E> {
    /// The allocator with every kept entry.
    pub allocator: A,
    /// Why each rejected entry was rejected, in input order.
    pub rejected: Vec<E>,
}

impl<A, E> Rebuilt<A, E> {
    /// True when every entry was kept.
    pub fn is_clean(&self) -> bool {
        self.rejected.is_empty()
    }
}
