//! The static entries of a VXLAN device: its forwarding database (MAC → remote tunnel address,
//! `bridge fdb ... self permanent`) and its IPv4 and IPv6 neighbours (address → MAC, `ip neigh
//! ... nud permanent`), which the device answers ARP requests and IPv6 neighbour solicitations
//! from when `proxy` is on.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use rtnetlink::packet_core::DefaultNla;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};

use super::{NetlinkError, Nl};

/// One FDB entry of a device itself (`NTF_SELF`); a MAC with several remotes is one entry per
/// remote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdbEntry {
    pub mac: Vec<u8>,
    /// Where frames for `mac` are sent (a VXLAN remote); `None` for a local entry.
    pub destination: Option<Ipv4Addr>,
    pub permanent: bool,
}

/// One IPv4 or IPv6 neighbour entry of a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighbourEntry {
    pub address: IpAddr,
    pub mac: Option<Vec<u8>>,
    pub permanent: bool,
}

impl Nl {
    /// Runs one neighbour dump request (FDB or IP) for the device `name`.
    fn dump_neighbours(
        &self,
        request: rtnetlink::NeighbourGetRequest,
        name: &str,
    ) -> Result<Vec<NeighbourMessage>, NetlinkError> {
        self.block_on(request.execute().try_collect::<Vec<_>>())
            .map_err(|source| NetlinkError::ListNeighbours {
                link: name.to_owned(),
                source: Box::new(source),
            })
    }

    /// The device's own FDB entries (one dump filtered by the kernel to the device).
    pub fn fdb_entries(&self, index: u32, name: &str) -> Result<Vec<FdbEntry>, NetlinkError> {
        let mut request = self.handle().neighbours().get();
        let message = request.message_mut();
        message.header.family = AddressFamily::Bridge;
        message.header.ifindex = index;
        // Without strict checking the kernel reads an FDB dump request as iproute2 sends it, an
        // `ifinfomsg` (16 bytes) whose `ifi_index` (at the offset of `ndm_ifindex`) names the
        // port, but only when the request is not exactly an `ndmsg` (12 bytes, or 12 plus one
        // u32 attribute): an empty attribute makes it 16, so the kernel filters.
        message
            .attributes
            .push(NeighbourAttribute::Other(DefaultNla::new(0, Vec::new())));
        let messages = self.dump_neighbours(request, name)?;
        Ok(messages
            .into_iter()
            .filter(|m| m.header.ifindex == index && m.header.flags.contains(NeighbourFlags::Own))
            .filter_map(fdb_entry)
            .collect())
    }

    /// Adds the FDB entry `mac` → `destination` on the device, or replaces the remote of the
    /// entry `mac` has (never a second remote).
    pub fn replace_fdb_entry(
        &self,
        index: u32,
        name: &str,
        mac: &[u8],
        destination: Ipv4Addr,
    ) -> Result<(), NetlinkError> {
        let request = self
            .handle()
            .neighbours()
            .add_bridge(index, mac)
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .destination(IpAddr::V4(destination))
            .replace();
        self.block_on(request.execute())
            .map_err(|source| NetlinkError::SetNeighbour {
                link: name.to_owned(),
                what: format!("fdb {}", format_mac(mac)),
                source: Box::new(source),
            })
    }

    /// Deletes the device's FDB entry for `mac` with all its remotes.
    pub fn delete_fdb_entry(&self, index: u32, name: &str, mac: &[u8]) -> Result<(), NetlinkError> {
        let mut message = NeighbourMessage::default();
        message.header.family = AddressFamily::Bridge;
        message.header.ifindex = index;
        // NTF_SELF: the device's own table; without it the kernel asks the bridge it is on.
        message.header.flags = NeighbourFlags::Own;
        message
            .attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        self.block_on(self.handle().neighbours().del(message).execute())
            .map_err(|source| NetlinkError::DeleteNeighbour {
                link: name.to_owned(),
                what: format!("fdb {}", format_mac(mac)),
                source: Box::new(source),
            })
    }

    /// The device's IPv4 and IPv6 neighbour entries (one dump of both families, filtered by
    /// the kernel to the device; FDB entries are another family's dump).
    pub fn neighbours(&self, index: u32, name: &str) -> Result<Vec<NeighbourEntry>, NetlinkError> {
        let mut request = self.handle().neighbours().get();
        let message = request.message_mut();
        message.header.family = AddressFamily::Unspec;
        message.attributes.push(NeighbourAttribute::IfIndex(index));
        let messages = self.dump_neighbours(request, name)?;
        Ok(messages
            .into_iter()
            .filter(|m| m.header.ifindex == index)
            .filter_map(neighbour_entry)
            .collect())
    }

    /// Sets the permanent neighbour entry `address` → `mac` on the device (added or replaced).
    pub fn replace_neighbour(
        &self,
        index: u32,
        name: &str,
        address: IpAddr,
        mac: &[u8],
    ) -> Result<(), NetlinkError> {
        let request = self
            .handle()
            .neighbours()
            .add(index, address)
            .state(NeighbourState::Permanent)
            .link_layer_address(mac)
            .replace();
        self.block_on(request.execute())
            .map_err(|source| NetlinkError::SetNeighbour {
                link: name.to_owned(),
                what: format!("neighbour {address}"),
                source: Box::new(source),
            })
    }

    /// Deletes the device's neighbour entry for `address`.
    pub fn delete_neighbour(
        &self,
        index: u32,
        name: &str,
        address: IpAddr,
    ) -> Result<(), NetlinkError> {
        let mut message = NeighbourMessage::default();
        let (family, destination) = match address {
            IpAddr::V4(ip) => (AddressFamily::Inet, NeighbourAddress::Inet(ip)),
            IpAddr::V6(ip) => (AddressFamily::Inet6, NeighbourAddress::Inet6(ip)),
        };
        message.header.family = family;
        message.header.ifindex = index;
        message
            .attributes
            .push(NeighbourAttribute::Destination(destination));
        self.block_on(self.handle().neighbours().del(message).execute())
            .map_err(|source| NetlinkError::DeleteNeighbour {
                link: name.to_owned(),
                what: format!("neighbour {address}"),
                source: Box::new(source),
            })
    }
}

fn fdb_entry(message: NeighbourMessage) -> Option<FdbEntry> {
    let mut mac = None;
    let mut destination = None;
    for attribute in message.attributes {
        match attribute {
            NeighbourAttribute::LinkLayerAddress(bytes) => mac = Some(bytes),
            NeighbourAttribute::Destination(address) => destination = ipv4(&address),
            _ => {}
        }
    }
    Some(FdbEntry {
        mac: mac?,
        destination,
        permanent: message.header.state == NeighbourState::Permanent,
    })
}

fn neighbour_entry(message: NeighbourMessage) -> Option<NeighbourEntry> {
    let mut address = None;
    let mut mac = None;
    for attribute in message.attributes {
        match attribute {
            NeighbourAttribute::Destination(destination) => address = ip(&destination),
            NeighbourAttribute::LinkLayerAddress(bytes) => mac = Some(bytes),
            _ => {}
        }
    }
    Some(NeighbourEntry {
        address: address?,
        mac,
        permanent: message.header.state == NeighbourState::Permanent,
    })
}

/// The IP address of a neighbour entry.
fn ip(address: &NeighbourAddress) -> Option<IpAddr> {
    match address {
        NeighbourAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        NeighbourAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}

/// An IPv4 address in a neighbour message (an FDB message, of family `AF_BRIDGE`, carries it as
/// raw bytes).
fn ipv4(address: &NeighbourAddress) -> Option<Ipv4Addr> {
    match address {
        NeighbourAddress::Inet(ip) => Some(*ip),
        NeighbourAddress::Other(bytes) => <[u8; 4]>::try_from(bytes.as_slice())
            .ok()
            .map(Ipv4Addr::from),
        _ => None,
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdb_destinations_come_as_raw_bytes() {
        assert_eq!(
            ipv4(&NeighbourAddress::Other(vec![10, 99, 0, 2])),
            Some(Ipv4Addr::new(10, 99, 0, 2))
        );
        assert_eq!(ipv4(&NeighbourAddress::Other(vec![0; 16])), None);
        assert_eq!(
            format_mac(&[2, 0x42, 0xac, 0x12, 0, 0x0a]),
            "02:42:ac:12:00:0a"
        );
    }
}
