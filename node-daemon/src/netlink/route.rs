//! Reading the IPv4 routing tables back.

use std::net::Ipv4Addr;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::RouteMessageBuilder;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteType,
};

use super::{NetlinkError, Nl};

/// `RT_TABLE_MAIN`: the table `ip route` shows and most software adds to.
pub const MAIN_TABLE: u32 = RouteHeader::RT_TABLE_MAIN as u32;

/// What a route does with matching packets, as far as Pier tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// Forwarded to a link or gateway.
    Unicast,
    Blackhole,
    Unreachable,
    Prohibit,
    /// Anything else (`local`, `broadcast`, `throw`, ...), by its `RTN_*` number.
    Other(u8),
}

/// One IPv4 route as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V4Route {
    /// `0.0.0.0/0` for a default route.
    pub destination: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    /// Output link; `None` for multipath and blackhole-style routes.
    pub oif: Option<u32>,
    pub table: u32,
    pub kind: RouteKind,
}

fn from_message(message: RouteMessage) -> Option<V4Route> {
    let prefix = message.header.destination_prefix_length;
    // Tables above 255 only fit the attribute; the header then says RT_TABLE_COMPAT.
    let mut table = u32::from(message.header.table);
    let mut destination = Ipv4Addr::UNSPECIFIED;
    let mut gateway = None;
    let mut oif = None;
    for attribute in message.attributes {
        match attribute {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => destination = ip,
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gateway = Some(ip),
            RouteAttribute::Oif(index) => oif = Some(index),
            RouteAttribute::Table(id) => table = id,
            _ => {}
        }
    }
    let kind = match message.header.kind {
        RouteType::Unicast => RouteKind::Unicast,
        RouteType::BlackHole => RouteKind::Blackhole,
        RouteType::Unreachable => RouteKind::Unreachable,
        RouteType::Prohibit => RouteKind::Prohibit,
        other => RouteKind::Other(u8::from(other)),
    };
    Some(V4Route {
        destination: Ipv4Net::new(destination, prefix).ok()?,
        gateway,
        oif,
        table,
        kind,
    })
}

impl Nl {
    /// Every IPv4 route of every table in this namespace (one dump; callers filter by `table`,
    /// since the kernel ignores the table in a dump request unless strict checking is on).
    pub fn v4_routes(&self) -> Result<Vec<V4Route>, NetlinkError> {
        let request = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let messages = self
            .block_on(async {
                self.handle()
                    .route()
                    .get(request)
                    .execute()
                    .try_collect::<Vec<_>>()
                    .await
            })
            .map_err(|e| NetlinkError::ListRoutes(Box::new(e)))?;
        Ok(messages.into_iter().filter_map(from_message).collect())
    }
}
