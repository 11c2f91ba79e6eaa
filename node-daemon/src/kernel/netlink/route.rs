//! Reading the routing tables of both families back.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
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
        is_foreign_default(self.destination.prefix_len(), self.table, self.protocol)
    }
}

/// One IPv6 route as the kernel reports it (the same facts as [`V4Route`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V6Route {
    /// `::/0` for a default route.
    pub destination: Ipv6Net,
    pub gateway: Option<Ipv6Addr>,
    pub oif: Option<u32>,
    pub table: u32,
    pub kind: RouteKind,
    pub protocol: u8,
}

impl V6Route {
    /// A default route of the main table that Pier did not set (one a router advertisement
    /// made, `proto ra`, is one too).
    pub fn is_foreign_default(&self) -> bool {
        is_foreign_default(self.destination.prefix_len(), self.table, self.protocol)
    }
}

fn is_foreign_default(prefix: u8, table: u32, protocol: u8) -> bool {
    prefix == 0 && table == MAIN_TABLE && protocol != PIER_ROUTE_PROTOCOL
}

/// The first default route of the main table among `routes` that Pier did not set.
pub fn foreign_default_route(routes: &[V4Route]) -> Option<&V4Route> {
    routes.iter().find(|r| r.is_foreign_default())
}

/// The first IPv6 default route of the main table among `routes` that Pier did not set.
pub fn foreign_v6_default_route(routes: &[V6Route]) -> Option<&V6Route> {
    routes.iter().find(|r| r.is_foreign_default())
}

/// What Pier reads of one route message, for either family.
struct Parts {
    prefix: u8,
    destination: Option<IpAddr>,
    gateway: Option<IpAddr>,
    oif: Option<u32>,
    table: u32,
    kind: RouteKind,
    protocol: u8,
}

fn parts(message: RouteMessage) -> Parts {
    // Tables above 255 only fit the attribute; the header then says RT_TABLE_COMPAT.
    let mut parts = Parts {
        prefix: message.header.destination_prefix_length,
        destination: None,
        gateway: None,
        oif: None,
        table: u32::from(message.header.table),
        kind: match message.header.kind {
            RouteType::Unicast => RouteKind::Unicast,
            RouteType::BlackHole => RouteKind::Blackhole,
            RouteType::Unreachable => RouteKind::Unreachable,
            RouteType::Prohibit => RouteKind::Prohibit,
            other => RouteKind::Other(u8::from(other)),
        },
        protocol: u8::from(message.header.protocol),
    };
    for attribute in message.attributes {
        match attribute {
            RouteAttribute::Destination(address) => parts.destination = ip(address),
            RouteAttribute::Gateway(address) => parts.gateway = ip(address),
            RouteAttribute::Oif(index) => parts.oif = Some(index),
            RouteAttribute::Table(id) => parts.table = id,
            _ => {}
        }
    }
    parts
}

fn ip(address: RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(ip) => Some(ip.into()),
        RouteAddress::Inet6(ip) => Some(ip.into()),
        _ => None,
    }
}

fn from_message(message: RouteMessage) -> Option<V4Route> {
    let parts = parts(message);
    let destination = match parts.destination {
        None => Ipv4Addr::UNSPECIFIED,
        Some(IpAddr::V4(ip)) => ip,
        Some(IpAddr::V6(_)) => return None,
    };
    Some(V4Route {
        destination: Ipv4Net::new(destination, parts.prefix).ok()?,
        gateway: match parts.gateway {
            Some(IpAddr::V4(ip)) => Some(ip),
            _ => None,
        },
        oif: parts.oif,
        table: parts.table,
        kind: parts.kind,
        protocol: parts.protocol,
    })
}

fn v6_from_message(message: RouteMessage) -> Option<V6Route> {
    let parts = parts(message);
    let destination = match parts.destination {
        None => Ipv6Addr::UNSPECIFIED,
        Some(IpAddr::V6(ip)) => ip,
        Some(IpAddr::V4(_)) => return None,
    };
    Some(V6Route {
        destination: Ipv6Net::new(destination, parts.prefix).ok()?,
        gateway: match parts.gateway {
            Some(IpAddr::V6(ip)) => Some(ip),
            _ => None,
        },
        oif: parts.oif,
        table: parts.table,
        kind: parts.kind,
        protocol: parts.protocol,
    })
}

impl Nl {
    /// Every IPv4 route of every table in this namespace (one dump; callers filter by `table`,
    /// since the kernel ignores the table in a dump request unless strict checking is on).
    pub fn v4_routes(&self) -> Result<Vec<V4Route>, NetlinkError> {
        let messages = self.dump_routes(RouteMessageBuilder::<Ipv4Addr>::new().build())?;
        Ok(messages.into_iter().filter_map(from_message).collect())
    }

    /// Every IPv6 route of every table in this namespace (one dump, as [`Nl::v4_routes`]).
    pub fn v6_routes(&self) -> Result<Vec<V6Route>, NetlinkError> {
        let messages = self.dump_routes(RouteMessageBuilder::<Ipv6Addr>::new().build())?;
        Ok(messages.into_iter().filter_map(v6_from_message).collect())
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

    #[test]
    fn an_ipv6_default_route_pier_did_not_set_is_foreign() {
        const RA: u8 = 9; // learnt from a router advertisement
        let route = |destination: &str, protocol: u8| V6Route {
            destination: destination.parse().expect("net"),
            gateway: Some("fe80::1".parse().expect("gateway")),
            oif: Some(2),
            table: MAIN_TABLE,
            kind: RouteKind::Unicast,
            protocol,
        };
        let pier = route("::/0", PIER_ROUTE_PROTOCOL);
        let learnt = route("::/0", RA);
        assert!(learnt.is_foreign_default());
        assert!(!pier.is_foreign_default());
        assert!(!route("fd00::/64", RA).is_foreign_default());
        assert_eq!(
            foreign_v6_default_route(&[pier, learnt.clone()]),
            Some(&learnt)
        );
    }
}
