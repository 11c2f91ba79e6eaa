//! Host-port allocation for PortPublish: fixed ports checked for conflicts, automatic ports
//! picked from a range, per (node, protocol, host IP), with owners so errors name who holds what.
//!
//! Pure logic with no Kubernetes or kernel imports, tested directly. Like IPAM, allocation happens
//! once in the operator and is recorded in status; [`PortAllocator::rebuild`] is how a restarted
//! operator recovers. The free-port search reuses IPAM's [`crate::ipam::Bitmap`].

pub mod allocator;
pub mod protocol;

pub use allocator::{HostPort, PortAllocator, PortError, PortSpec, ips_conflict};
pub use protocol::{
    DEFAULT_AUTO_PORTS, KUBERNETES_HOST_PORTS, PortRange, PortRangeError, PortSet, Protocol,
    ProtocolParseError,
};

#[cfg(test)]
mod tests;
