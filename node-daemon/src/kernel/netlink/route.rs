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

/// The route protocol (`ip route ... proto 0xf1`) of the default routes Pier sets inside an
/// endpoint's namespace: how a later attach tells Pier's default route (which it may replace)
/// from the namespace's own (which it never touches). Unassigned in the kernel's rtnetlink.h and
/// iproute2's rt_protos.
pub const PIER_ROUTE_PROTOCOL: u8 = 0xf1;

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
    /// Who added it (`RTPROT_*`; [`PIER_ROUTE_PROTOCOL`] for Pier's default routes).
    pub protocol: u8,
}

impl V4Route {
    /// A default route of the main table that Pier did not set.
    pub fn is_foreign_default(&self) -> bool {
        self.destination.prefix_len() == 0
            && self.table == MAIN_TABLE
            && self.protocol != PIER_ROUTE_PROTOCOL
    }
}

/// The first default route of the main table among `routes` that Pier did not set.
pub fn foreign_default_route(routes: &[V4Route]) -> Option<&V4Route> {
    routes.iter().find(|r| r.is_foreign_default())
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
        protocol: u8::from(message.header.protocol),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn route(destination: &str, table: u32, protocol: u8) -> V4Route {
        V4Route {
            destination: destination.parse().expect("net"),
            gateway: Some(Ipv4Addr::new(10, 0, 0, 1)),
            oif: Some(2),
            table,
            kind: RouteKind::Unicast,
            protocol,
        }
    }

    #[test]
    fn a_default_route_pier_did_not_set_is_foreign() {
        const BOOT: u8 = 3; // `ip route add`
        const DHCP: u8 = 16;
        let own = route("0.0.0.0/0", MAIN_TABLE, BOOT);
        let pier = route("0.0.0.0/0", MAIN_TABLE, PIER_ROUTE_PROTOCOL);
        assert!(own.is_foreign_default());
        assert!(route("0.0.0.0/0", MAIN_TABLE, DHCP).is_foreign_default());
        assert!(!pier.is_foreign_default());
        // Not a default route, or not in the main table: not what the namespace routes by.
        assert!(!route("10.0.0.0/8", MAIN_TABLE, BOOT).is_foreign_default());
        assert!(!route("0.0.0.0/0", 100, BOOT).is_foreign_default());
        assert_eq!(foreign_default_route(std::slice::from_ref(&pier)), None);
        assert_eq!(
            foreign_default_route(&[pier, own.clone()]),
            Some(&own),
            "the namespace's own beside Pier's"
        );
    }
}
