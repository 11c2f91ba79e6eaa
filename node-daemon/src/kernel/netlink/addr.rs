//! IPv4 addresses and the default route.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteProtocol};
use rtnetlink::{AddressMessageBuilder, RouteMessageBuilder};

use super::{NetlinkError, Nl};

/// One IPv4 address on one link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct V4Address {
    pub index: u32,
    pub address: Ipv4Net,
}

fn from_message(message: AddressMessage) -> Option<V4Address> {
    let prefix = message.header.prefix_len;
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on point-to-point links
    // and equal to IFA_LOCAL elsewhere, so prefer IFA_LOCAL.
    let mut local = None;
    let mut address = None;
    for attribute in message.attributes {
        match attribute {
            AddressAttribute::Local(IpAddr::V4(ip)) => local = Some(ip),
            AddressAttribute::Address(IpAddr::V4(ip)) => address = Some(ip),
            _ => {}
        }
    }
    let ip = local.or(address)?;
    Some(V4Address {
        index: message.header.index,
        address: Ipv4Net::new(ip, prefix).ok()?,
    })
}

/// All IPv4 addresses in the namespace of `nl` (one dump).
pub fn list_v4_addresses(nl: &Nl) -> Result<Vec<V4Address>, NetlinkError> {
    nl.v4_addresses()
}

impl Nl {
    /// All IPv4 addresses in this namespace (one dump).
    pub fn v4_addresses(&self) -> Result<Vec<V4Address>, NetlinkError> {
        let messages = self
            .block_on(async {
                let mut request = self.handle().address().get();
                // IPv4 only: an unspecified family would also dump the IPv6 link-local address of
                // every veth, which makes the dump grow with the number of endpoints.
                request.message_mut().header.family = AddressFamily::Inet;
                request.execute().try_collect::<Vec<_>>().await
            })
            .map_err(|e| NetlinkError::ListAddresses(Box::new(e)))?;
        Ok(messages.into_iter().filter_map(from_message).collect())
    }

    /// Adds an IPv4 address to a link.
    pub fn add_address(
        &self,
        index: u32,
        link: &str,
        address: Ipv4Net,
    ) -> Result<(), NetlinkError> {
        self.block_on(
            self.handle()
                .address()
                .add(index, IpAddr::V4(address.addr()), address.prefix_len())
                .execute(),
        )
        .map_err(|source| NetlinkError::AddAddress {
            link: link.to_owned(),
            address: address.to_string(),
            source: Box::new(source),
        })
    }

    /// Removes an IPv4 address from a link.
    pub fn delete_address(
        &self,
        index: u32,
        link: &str,
        address: Ipv4Net,
    ) -> Result<(), NetlinkError> {
        let message = AddressMessageBuilder::<Ipv4Addr>::new()
            .index(index)
            .address(address.addr(), address.prefix_len())
            .build();
        self.block_on(self.handle().address().del(message).execute())
            .map_err(|source| NetlinkError::DeleteAddress {
                link: link.to_owned(),
                address: address.to_string(),
                source: Box::new(source),
            })
    }

    /// The IPv4 default routes of the main table, as (gateway, output link index).
    pub fn default_routes(&self) -> Result<Vec<(Ipv4Addr, u32)>, NetlinkError> {
        let request = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let routes = self
            .block_on(async {
                self.handle()
                    .route()
                    .get(request)
                    .execute()
                    .try_collect::<Vec<_>>()
                    .await
            })
            .map_err(|e| NetlinkError::ListRoutes(Box::new(e)))?;
        Ok(routes
            .into_iter()
            .filter(|route| route.header.destination_prefix_length == 0)
            .filter_map(|route| {
                let mut gateway = None;
                let mut oif = None;
                for attribute in route.attributes {
                    match attribute {
                        RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gateway = Some(ip),
                        RouteAttribute::Oif(index) => oif = Some(index),
                        _ => {}
                    }
                }
                Some((gateway?, oif?))
            })
            .collect())
    }

    /// Makes `gateway` on link `index` the default route, replacing a default route of the same
    /// metric; marked as Pier's ([`super::route::PIER_ROUTE_PROTOCOL`]).
    pub fn replace_default_route(
        &self,
        index: u32,
        link: &str,
        gateway: Ipv4Addr,
    ) -> Result<(), NetlinkError> {
        let message = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .output_interface(index)
            .protocol(RouteProtocol::from(super::PIER_ROUTE_PROTOCOL))
            .build();
        self.block_on(self.handle().route().add(message).replace().execute())
            .map_err(|source| NetlinkError::DefaultRoute {
                link: link.to_owned(),
                gateway,
                source: Box::new(source),
            })
    }
}
