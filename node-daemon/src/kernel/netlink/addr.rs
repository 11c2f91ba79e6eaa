//! Addresses of both families and the default routes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol};
use rtnetlink::{AddressMessageBuilder, RouteMessageBuilder};

use super::{NetlinkError, Nl};

/// One IPv4 address on one link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct V4Address {
    pub index: u32,
    pub address: Ipv4Net,
}

/// One IPv6 address on one link (never a link-local one: see [`Nl::v6_addresses`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct V6Address {
    pub index: u32,
    pub address: Ipv6Net,
}

/// The link index and the address of one address message. IFA_LOCAL is the interface's own
/// address; IFA_ADDRESS is the peer on point-to-point links and equal to IFA_LOCAL elsewhere
/// (IPv6 sends IFA_ADDRESS only), so IFA_LOCAL wins.
fn from_message(message: AddressMessage) -> Option<(u32, IpNet)> {
    let prefix = message.header.prefix_len;
    let mut local = None;
    let mut address = None;
    for attribute in message.attributes {
        match attribute {
            AddressAttribute::Local(ip) => local = Some(ip),
            AddressAttribute::Address(ip) => address = Some(ip),
            _ => {}
        }
    }
    let ip = local.or(address)?;
    Some((message.header.index, IpNet::new(ip, prefix).ok()?))
}

/// All IPv4 addresses in the namespace of `nl` (one dump).
pub fn list_v4_addresses(nl: &Nl) -> Result<Vec<V4Address>, NetlinkError> {
    nl.v4_addresses()
}

impl Nl {
    /// The addresses of one family in this namespace (one dump).
    fn addresses(&self, family: AddressFamily) -> Result<Vec<(u32, IpNet)>, NetlinkError> {
        let messages = self
            .block_on(async {
                let mut request = self.handle().address().get();
                request.message_mut().header.family = family;
                request.execute().try_collect::<Vec<_>>().await
            })
            .map_err(|e| NetlinkError::ListAddresses(Box::new(e)))?;
        Ok(messages.into_iter().filter_map(from_message).collect())
    }

    /// All IPv4 addresses in this namespace (one dump).
    pub fn v4_addresses(&self) -> Result<Vec<V4Address>, NetlinkError> {
        // IPv4 only: an unspecified family would also dump the IPv6 link-local address of every
        // veth, which makes the dump grow with the number of endpoints.
        let addresses = self.addresses(AddressFamily::Inet)?;
        Ok(addresses
            .into_iter()
            .filter_map(|(index, address)| match address {
                IpNet::V4(address) => Some(V4Address { index, address }),
                IpNet::V6(_) => None,
            })
            .collect())
    }

    /// The IPv6 addresses in this namespace (one dump), without the link-local ones (`fe80::/10`):
    /// the kernel gives those to links by itself, and Pier sets and removes none.
    pub fn v6_addresses(&self) -> Result<Vec<V6Address>, NetlinkError> {
        let addresses = self.addresses(AddressFamily::Inet6)?;
        Ok(addresses
            .into_iter()
            .filter_map(|(index, address)| match address {
                IpNet::V6(address) if !address.addr().is_unicast_link_local() => {
                    Some(V6Address { index, address })
                }
                _ => None,
            })
            .collect())
    }

    /// Adds an address to a link. An IPv6 address skips duplicate address detection
    /// (`nodad`): Pier's addresses are allocated once in the cluster, and a tentative address
    /// could not be bound (the DNS server on a gateway) or routed from for a second or more.
    pub fn add_address(&self, index: u32, link: &str, address: IpNet) -> Result<(), NetlinkError> {
        let mut request = self
            .handle()
            .address()
            .add(index, address.addr(), address.prefix_len());
        if address.addr().is_ipv6() {
            let message = request.message_mut();
            message.header.flags |= AddressHeaderFlags::Nodad;
            message
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        self.block_on(request.execute())
            .map_err(|source| NetlinkError::AddAddress {
                link: link.to_owned(),
                address: address.to_string(),
                source: Box::new(source),
            })
    }

    /// Removes an address from a link.
    pub fn delete_address(
        &self,
        index: u32,
        link: &str,
        address: IpNet,
    ) -> Result<(), NetlinkError> {
        let message = match address {
            IpNet::V4(v4) => AddressMessageBuilder::<Ipv4Addr>::new()
                .index(index)
                .address(v4.addr(), v4.prefix_len())
                .build(),
            IpNet::V6(v6) => AddressMessageBuilder::<Ipv6Addr>::new()
                .index(index)
                .address(v6.addr(), v6.prefix_len())
                .build(),
        };
        self.block_on(self.handle().address().del(message).execute())
            .map_err(|source| NetlinkError::DeleteAddress {
                link: link.to_owned(),
                address: address.to_string(),
                source: Box::new(source),
            })
    }

    /// The route messages of one dump request.
    pub(super) fn dump_routes(
        &self,
        request: RouteMessage,
    ) -> Result<Vec<RouteMessage>, NetlinkError> {
        self.block_on(async {
            self.handle()
                .route()
                .get(request)
                .execute()
                .try_collect::<Vec<_>>()
                .await
        })
        .map_err(|e| NetlinkError::ListRoutes(Box::new(e)))
    }

    /// The IPv4 default routes of the main table, as (gateway, output link index).
    pub fn default_routes(&self) -> Result<Vec<(Ipv4Addr, u32)>, NetlinkError> {
        let routes = self.dump_routes(RouteMessageBuilder::<Ipv4Addr>::new().build())?;
        Ok(default_gateways(routes)
            .filter_map(|(gateway, oif)| match gateway {
                IpAddr::V4(gateway) => Some((gateway, oif)),
                IpAddr::V6(_) => None,
            })
            .collect())
    }

    /// The IPv6 default routes, as (gateway, output link index).
    pub fn v6_default_routes(&self) -> Result<Vec<(Ipv6Addr, u32)>, NetlinkError> {
        let routes = self.dump_routes(RouteMessageBuilder::<Ipv6Addr>::new().build())?;
        Ok(default_gateways(routes)
            .filter_map(|(gateway, oif)| match gateway {
                IpAddr::V6(gateway) => Some((gateway, oif)),
                IpAddr::V4(_) => None,
            })
            .collect())
    }

    /// Makes `gateway` on link `index` the default route of its family, replacing a default
    /// route of the same metric; marked as Pier's ([`super::route::PIER_ROUTE_PROTOCOL`]).
    pub fn replace_default_route(
        &self,
        index: u32,
        link: &str,
        gateway: IpAddr,
    ) -> Result<(), NetlinkError> {
        let protocol = RouteProtocol::from(super::PIER_ROUTE_PROTOCOL);
        let message = match gateway {
            IpAddr::V4(v4) => RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(v4)
                .output_interface(index)
                .protocol(protocol)
                .build(),
            // `onlink`: the gateway is on the endpoint's subnet by construction, but the kernel
            // adds the subnet's route of an address given before the link was up from a work
            // queue, later; without it, a loaded node refuses the route (EHOSTUNREACH).
            IpAddr::V6(v6) => RouteMessageBuilder::<Ipv6Addr>::new()
                .gateway(v6)
                .output_interface(index)
                .protocol(protocol)
                .onlink()
                .build(),
        };
        self.block_on(self.handle().route().add(message).replace().execute())
            .map_err(|source| NetlinkError::DefaultRoute {
                link: link.to_owned(),
                gateway,
                source: Box::new(source),
            })
    }
}

/// The (gateway, output link) of each default route among `routes` that has both.
fn default_gateways(routes: Vec<RouteMessage>) -> impl Iterator<Item = (IpAddr, u32)> {
    routes
        .into_iter()
        .filter(|route| route.header.destination_prefix_length == 0)
        .filter_map(|route| {
            let mut gateway = None;
            let mut oif = None;
            for attribute in route.attributes {
                match attribute {
                    RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gateway = Some(ip.into()),
                    RouteAttribute::Gateway(RouteAddress::Inet6(ip)) => gateway = Some(ip.into()),
                    RouteAttribute::Oif(index) => oif = Some(index),
                    _ => {}
                }
            }
            Some((gateway?, oif?))
        })
}
