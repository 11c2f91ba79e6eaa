//! The node's tunnel address and underlay MTU: where other nodes send this node's overlay
//! (VXLAN) packets, and how large they may be.
//!
//! By default the address is the one on the interface of the node's default route (what a node
//! is reached at by its peers in nearly every cluster: kubelet's InternalIP is picked the same
//! way); `--tunnel-address` (the chart passes the Pod's `status.hostIP`) overrides it. The MTU is
//! that interface's: an overlay's MTU is the smallest underlay MTU of the cluster minus the VXLAN
//! headers.

use std::net::Ipv4Addr;
use std::path::Path;

use super::netlink::{NetlinkError, Nl, V4Address, V4Route, foreign_default_route};

/// Where this node's overlay packets go and leave from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tunnel {
    pub address: Ipv4Addr,
    /// The MTU of the interface that has the address.
    pub underlay_mtu: u32,
}

/// Why the node has no tunnel address.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("reading the node's links, addresses and routes")]
    Read(#[source] NetlinkError),
    #[error("the node has no default route to find its tunnel address from: pass --tunnel-address")]
    NoDefaultRoute,
    #[error("the interface of the node's default route has no IPv4 address: pass --tunnel-address")]
    NoAddress,
    #[error("no interface of the node has the tunnel address {0}")]
    AddressNotFound(Ipv4Addr),
    #[error("{0} cannot be a tunnel address (unspecified, loopback, broadcast or multicast)")]
    Unusable(Ipv4Addr),
}

/// Whether `address` can be a node's tunnel address: not unspecified, loopback, broadcast or
/// multicast.
pub fn is_usable(address: Ipv4Addr) -> bool {
    !(address.is_unspecified()
        || address.is_loopback()
        || address.is_broadcast()
        || address.is_multicast())
}

/// This node's tunnel in the namespace at `netns` (`None`: the process's own), the given
/// address or the one of the default route's interface.
pub fn detect_in(netns: Option<&Path>, given: Option<Ipv4Addr>) -> Result<Tunnel, TunnelError> {
    let nl = Nl::open_in(netns).map_err(TunnelError::Read)?;
    let links = nl.links().map_err(TunnelError::Read)?;
    let addresses = nl.v4_addresses().map_err(TunnelError::Read)?;
    let routes = match given {
        Some(_) => Vec::new(),
        None => nl.v4_routes().map_err(TunnelError::Read)?,
    };
    let mtu_of = |index: u32| links.iter().find(|l| l.index == index).and_then(|l| l.mtu);
    choose(mtu_of, &addresses, &routes, given)
}

/// The pure half of [`detect_in`].
pub fn choose(
    mtu_of: impl Fn(u32) -> Option<u32>,
    addresses: &[V4Address],
    routes: &[V4Route],
    given: Option<Ipv4Addr>,
) -> Result<Tunnel, TunnelError> {
    let (index, address) = match given {
        Some(address) => {
            let found = addresses.iter().find(|a| a.address.addr() == address);
            (
                found.ok_or(TunnelError::AddressNotFound(address))?.index,
                address,
            )
        }
        None => {
            let route = foreign_default_route(routes).ok_or(TunnelError::NoDefaultRoute)?;
            let index = route.oif.ok_or(TunnelError::NoDefaultRoute)?;
            let found = addresses.iter().find(|a| a.index == index);
            (index, found.ok_or(TunnelError::NoAddress)?.address.addr())
        }
    };
    if !is_usable(address) {
        return Err(TunnelError::Unusable(address));
    }
    let underlay_mtu = mtu_of(index).unwrap_or(pier_crds::network::DEFAULT_MTU.unsigned_abs());
    Ok(Tunnel {
        address,
        underlay_mtu,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::netlink::{MAIN_TABLE, RouteKind};

    /// MTUs by link index.
    fn mtus(links: &[(u32, u32)]) -> impl Fn(u32) -> Option<u32> + '_ {
        |index| links.iter().find(|(i, _)| *i == index).map(|(_, mtu)| *mtu)
    }

    fn address(index: u32, cidr: &str) -> V4Address {
        V4Address {
            index,
            address: cidr.parse().expect("test address"),
        }
    }

    fn default_via(oif: u32) -> V4Route {
        V4Route {
            destination: "0.0.0.0/0".parse().expect("default"),
            gateway: Some(Ipv4Addr::new(10, 0, 0, 254)),
            oif: Some(oif),
            table: MAIN_TABLE,
            kind: RouteKind::Unicast,
            protocol: 3,
        }
    }

    #[test]
    fn the_default_routes_interface_gives_address_and_mtu() {
        let links = [(1, 65536), (2, 9000), (3, 1500)];
        let addresses = [
            address(1, "127.0.0.1/8"),
            address(3, "192.168.1.5/24"),
            address(2, "10.0.0.5/24"),
        ];
        let tunnel = choose(mtus(&links), &addresses, &[default_via(2)], None).expect("found");
        assert_eq!(tunnel.address, Ipv4Addr::new(10, 0, 0, 5));
        assert_eq!(tunnel.underlay_mtu, 9000);
    }

    #[test]
    fn a_given_address_wins_and_must_exist() {
        let links = [(2, 9000), (3, 1400)];
        let addresses = [address(2, "10.0.0.5/24"), address(3, "192.168.1.5/24")];
        let given = Some(Ipv4Addr::new(192, 168, 1, 5));
        let tunnel = choose(mtus(&links), &addresses, &[default_via(2)], given).expect("found");
        assert_eq!(tunnel.underlay_mtu, 1400);
        let missing = choose(
            mtus(&links),
            &addresses,
            &[],
            Some(Ipv4Addr::new(1, 2, 3, 4)),
        );
        assert!(matches!(missing, Err(TunnelError::AddressNotFound(_))));
        assert!(matches!(
            choose(mtus(&links), &addresses, &[], None),
            Err(TunnelError::NoDefaultRoute)
        ));
    }
}
