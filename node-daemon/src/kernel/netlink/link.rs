//! Links: read-back, bridges, veth pairs, VXLAN devices, deletion and attribute changes.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::Path;

use futures::TryStreamExt;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::link::{
    AfSpecInet, AfSpecInet6, AfSpecUnspec, In6AddrGenMode, Inet6DevConf, InfoBridgePort,
    InfoPortData,
};
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, InfoVxlan, LinkAttribute, LinkExtentMask, LinkFlags, LinkInfo,
    LinkMessage,
};
use rtnetlink::{LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkVxlan};

use super::{ENODEV, NetlinkError, Nl, errno};

/// The kind of a link as far as Pier cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkKind {
    Bridge,
    Veth,
    Vxlan,
    /// Any other kind (`dummy`, `vxlan`, ...), by its kernel name.
    Other(String),
    /// No kind reported: physical devices and `lo`.
    None,
}

/// One link as the kernel reports it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub kind: LinkKind,
    /// The index of the bridge this link is enslaved to.
    pub master: Option<u32>,
    pub mtu: Option<u32>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// `ip link set NAME alias ...`: Pier keeps a veth's configuration fingerprint here.
    pub alias: Option<String>,
    pub mac: Option<Vec<u8>>,
    /// Bridge ports only: hairpin mode (frames may leave through the port they came in on).
    pub hairpin: bool,
    /// IPv4 settings of the link (`net.ipv4.conf.<link>.*`), when the kernel reported them.
    pub inet: Option<InetConf>,
    /// IPv6 settings of the link (`net.ipv6.conf.<link>.*`), when the kernel reported them (it
    /// does not when IPv6 is off in the kernel).
    pub inet6: Option<Inet6Conf>,
    /// VXLAN devices only: their settings.
    pub vxlan: Option<VxlanConf>,
    /// The link's group (`ip link set NAME group N`; 0, the default, for almost every link).
    pub group: u32,
}

/// The settings of a VXLAN device that Pier sets at creation (the kernel cannot change most of
/// them later, so a device that differs is re-made).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanConf {
    /// The VXLAN network identifier.
    pub id: u32,
    /// The source address of the outer packets (this node's tunnel address).
    pub local: Option<Ipv4Addr>,
    /// The default destination (`remote`/`group`): Pier sets none, so nothing is flooded.
    pub remote: Option<Ipv4Addr>,
    /// The UDP destination port.
    pub port: u16,
    /// Whether the device learns remote MACs from received packets.
    pub learning: bool,
    /// Whether the device answers ARP requests from its neighbour table.
    pub proxy: bool,
}

impl VxlanConf {
    fn from_infos(infos: &[InfoVxlan]) -> VxlanConf {
        // The kernel's defaults for attributes it leaves out.
        let mut conf = VxlanConf {
            id: 0,
            local: None,
            remote: None,
            port: 0,
            learning: true,
            proxy: false,
        };
        for info in infos {
            match info {
                InfoVxlan::Id(id) => conf.id = *id,
                InfoVxlan::Local(ip) => conf.local = Some(*ip),
                InfoVxlan::Group(ip) => conf.remote = Some(*ip),
                InfoVxlan::Port(port) => conf.port = *port,
                InfoVxlan::Learning(on) => conf.learning = *on,
                InfoVxlan::Proxy(on) => conf.proxy = *on,
                _ => {}
            }
        }
        conf
    }
}

/// What a VXLAN device looks like when created (down; the caller sets it up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub conf: VxlanConf,
    pub mtu: u32,
    /// The bridge it is enslaved to.
    pub master: u32,
}

/// The IPv4 per-link settings Pier reads back, from the link's `IFLA_AF_SPEC` (so no thread has
/// to enter the namespace to read `/proc/sys/net`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InetConf {
    /// `net.ipv4.conf.<link>.forwarding`; writing `net.ipv4.ip_forward` sets it on every link.
    pub forwarding: bool,
    /// `net.ipv4.conf.<link>.route_localnet`.
    pub route_localnet: bool,
}

/// The IPv6 per-link settings Pier reads back, from the link's `IFLA_AF_SPEC` (IPv6 settings
/// cannot be written by netlink: writes go through `/proc/sys`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inet6Conf {
    /// `net.ipv6.conf.<link>.forwarding`; writing `net.ipv6.conf.all.forwarding` sets it on
    /// every link.
    pub forwarding: bool,
    /// `net.ipv6.conf.<link>.accept_ra` (0 ignores router advertisements, 1 accepts them unless
    /// forwarding, 2 accepts them even when forwarding).
    pub accept_ra: i32,
    /// `net.ipv6.conf.<link>.disable_ipv6`.
    pub disabled: bool,
}

impl Inet6Conf {
    fn from_devconf(conf: &Inet6DevConf) -> Inet6Conf {
        Inet6Conf {
            forwarding: conf.forwarding != 0,
            accept_ra: conf.accept_ra,
            disabled: conf.disable_ipv6 != 0,
        }
    }
}

impl Link {
    /// A link with nothing known of it but its index, name and kind: down, no master, no
    /// settings reported, group 0 (what a dump fills in, and where tests start from).
    pub fn new(index: u32, name: impl Into<String>, kind: LinkKind) -> Link {
        Link {
            index,
            name: name.into(),
            kind,
            master: None,
            mtu: None,
            up: false,
            alias: None,
            mac: None,
            hairpin: false,
            inet: None,
            inet6: None,
            vxlan: None,
            group: 0,
        }
    }

    fn from_message(message: LinkMessage) -> Link {
        let mut link = Link {
            up: message.header.flags.contains(LinkFlags::Up),
            ..Link::new(message.header.index, String::new(), LinkKind::None)
        };
        for attribute in message.attributes {
            match attribute {
                LinkAttribute::IfName(name) => link.name = name,
                LinkAttribute::Controller(index) => link.master = Some(index),
                LinkAttribute::Mtu(mtu) => link.mtu = Some(mtu),
                LinkAttribute::IfAlias(alias) => link.alias = Some(alias),
                LinkAttribute::Address(mac) => link.mac = Some(mac),
                LinkAttribute::Group(group) => link.group = group,
                LinkAttribute::AfSpecUnspec(specs) => link.read_af_spec(specs),
                LinkAttribute::LinkInfo(infos) => link.read_info(infos),
                _ => {}
            }
        }
        link
    }

    /// The IPv4 and IPv6 settings.
    fn read_af_spec(&mut self, specs: Vec<AfSpecUnspec>) {
        for spec in specs {
            match spec {
                AfSpecUnspec::Inet(inet) => {
                    for conf in inet {
                        if let AfSpecInet::DevConf(conf) = conf {
                            self.inet = Some(InetConf {
                                forwarding: conf.forwarding != 0,
                                route_localnet: conf.route_localnet != 0,
                            });
                        }
                    }
                }
                AfSpecUnspec::Inet6(inet6) => {
                    for conf in inet6 {
                        if let AfSpecInet6::DevConf(conf) = conf {
                            self.inet6 = Some(Inet6Conf::from_devconf(&conf));
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// The kind, the bridge port's hairpin flag and a VXLAN device's settings.
    fn read_info(&mut self, infos: Vec<LinkInfo>) {
        for info in infos {
            match info {
                LinkInfo::Kind(kind) => {
                    self.kind = match kind {
                        InfoKind::Bridge => LinkKind::Bridge,
                        InfoKind::Veth => LinkKind::Veth,
                        InfoKind::Vxlan => LinkKind::Vxlan,
                        other => LinkKind::Other(other.to_string()),
                    };
                }
                LinkInfo::Data(InfoData::Vxlan(infos)) => {
                    self.vxlan = Some(VxlanConf::from_infos(&infos));
                }
                LinkInfo::PortData(InfoPortData::BridgePort(port)) => {
                    self.hairpin = port
                        .iter()
                        .any(|p| matches!(p, InfoBridgePort::HairpinMode(true)));
                }
                _ => {}
            }
        }
    }
}

/// What a veth pair for one endpoint looks like when created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethSpec {
    /// Host-side name (`pv...`), stays in the socket's namespace.
    pub host: String,
    /// Peer name inside the target namespace (`eth0`, ...).
    pub peer: String,
    pub mtu: u32,
    /// MAC of the peer.
    pub peer_mac: Vec<u8>,
    /// Bridge index the host side is enslaved to.
    pub master: u32,
}

impl Nl {
    /// Every link in the namespace (one dump).
    pub fn links(&self) -> Result<Vec<Link>, NetlinkError> {
        self.block_on(async {
            self.handle()
                .link()
                .get()
                // Statistics are most of each message and Pier never reads them: at 1000 links
                // skipping them makes the dump several times cheaper to build and to parse.
                .set_filter_mask(AddressFamily::Unspec, vec![LinkExtentMask::SkipStats])
                .execute()
                .map_ok(Link::from_message)
                .try_collect::<Vec<_>>()
                .await
        })
        .map_err(|e| NetlinkError::ListLinks(Box::new(e)))
    }

    /// One link by name, `None` when there is none.
    pub fn link(&self, name: &str) -> Result<Option<Link>, NetlinkError> {
        let found = self.block_on(async {
            self.handle()
                .link()
                .get()
                .match_name(name)
                .execute()
                .try_next()
                .await
        });
        match found {
            Ok(message) => Ok(message.map(Link::from_message)),
            Err(error) if errno(&error) == Some(ENODEV) => Ok(None),
            Err(source) => Err(NetlinkError::GetLink {
                name: name.to_owned(),
                source: Box::new(source),
            }),
        }
    }

    /// Creates an up bridge with the given MTU.
    ///
    /// The MAC is set explicitly: a bridge without one takes the lowest MAC of its ports and
    /// changes it as ports come and go, which leaves stale gateway entries in the endpoints' ARP
    /// caches and makes every attach recompute it.
    pub fn create_bridge(&self, name: &str, mtu: u32, mac: [u8; 6]) -> Result<(), NetlinkError> {
        let message = LinkBridge::new(name).mtu(mtu).address(mac.to_vec()).build();
        self.block_on(self.handle().link().add(message).execute())
            .map_err(|source| NetlinkError::CreateBridge {
                name: name.to_owned(),
                source: Box::new(source),
            })
    }

    /// Creates a veth pair in one request: the host side here, enslaved to the bridge; the peer
    /// directly inside the namespace at `peer_netns` with its final name, MAC and MTU. Both stay
    /// down: Linux 6.18 answers ENOTCONN to a peer created up in another namespace (the caller
    /// sets it up from inside), and the host side must not come up before its IPv6 address
    /// generation is turned off.
    /// Creating the peer in place (rather than create, move, rename) leaves no half-made peer with a
    /// temporary name behind if the process dies, and a name clash in the target is one `EEXIST`.
    ///
    /// Both sides get one transmit and one receive queue, which is what a veth uses unless told
    /// otherwise: asked for no number, the kernel makes one queue per CPU and then cuts each side
    /// down to one, and each cut of a registered device waits for an RCU grace period with the
    /// RTNL lock held, two per veth (0.7 ms of waiting per endpoint with 2,000 made at once on
    /// two busy CPUs, and every other netlink change of the node waiting behind it).
    pub fn create_veth(&self, spec: &VethSpec, peer_netns: &Path) -> Result<(), NetlinkError> {
        let namespace = File::open(peer_netns).map_err(|source| NetlinkError::OpenNamespace {
            path: peer_netns.display().to_string(),
            source,
        })?;
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(spec.peer.clone())
            .mtu(spec.mtu)
            .address(spec.peer_mac.clone())
            .setns_by_fd(namespace.as_raw_fd())
            .append_extra_attribute(LinkAttribute::NumTxQueues(VETH_QUEUES))
            .append_extra_attribute(LinkAttribute::NumRxQueues(VETH_QUEUES))
            .build();
        let message = LinkVeth::new(&spec.host, &spec.peer)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .mtu(spec.mtu)
            .controller(spec.master)
            .append_extra_attribute(LinkAttribute::NumTxQueues(VETH_QUEUES))
            .append_extra_attribute(LinkAttribute::NumRxQueues(VETH_QUEUES))
            .build();
        let result = self.block_on(self.handle().link().add(message).execute());
        // The namespace file must stay open until the kernel has read the fd.
        drop(namespace);
        result.map_err(|source| NetlinkError::CreateVeth {
            host: spec.host.clone(),
            peer: spec.peer.clone(),
            source: Box::new(source),
        })
    }

    /// Creates a VXLAN device, down, enslaved to a bridge: no `remote` or `group`, so a frame
    /// whose MAC has no FDB entry goes nowhere.
    pub fn create_vxlan(&self, spec: &VxlanSpec) -> Result<(), NetlinkError> {
        let conf = &spec.conf;
        let mut builder = LinkVxlan::new(&spec.name, conf.id)
            .port(conf.port)
            .learning(conf.learning)
            .proxy(conf.proxy)
            .mtu(spec.mtu)
            .controller(spec.master);
        if let Some(local) = conf.local {
            builder = builder.local(local);
        }
        if let Some(remote) = conf.remote {
            builder = builder.remote(remote);
        }
        self.block_on(self.handle().link().add(builder.build()).execute())
            .map_err(|source| NetlinkError::CreateVxlan {
                name: spec.name.clone(),
                source: Box::new(source),
            })
    }

    /// Enslaves a link to a bridge (`ip link set NAME master BRIDGE`).
    pub fn set_master(&self, index: u32, name: &str, master: u32) -> Result<(), NetlinkError> {
        let message = LinkUnspec::new_with_index(index).controller(master).build();
        self.change(message, name, "set master")
    }

    /// Deletes a link (a veth takes its peer with it).
    pub fn delete_link(&self, index: u32, name: &str) -> Result<(), NetlinkError> {
        self.block_on(self.handle().link().del(index).execute())
            .map_err(|source| NetlinkError::DeleteLink {
                name: name.to_owned(),
                source: Box::new(source),
            })
    }

    /// Moves a link into a group (`ip link set NAME group GROUP`).
    pub fn set_group(&self, index: u32, name: &str, group: u32) -> Result<(), NetlinkError> {
        let message = LinkUnspec::new_with_index(index)
            .append_extra_attribute(LinkAttribute::Group(group))
            .build();
        self.change(message, name, "set group")
    }

    /// Deletes every link of a group in one request (`ip link delete group GROUP`: `RTM_DELLINK`
    /// with no index and no name, only `IFLA_GROUP`). The kernel takes them all down together
    /// (one `unregister_netdevice_many`), so its grace periods are paid once, not per link; and
    /// it deletes either all of them or, when one cannot be deleted this way, none.
    pub fn delete_group(&self, group: u32) -> Result<(), NetlinkError> {
        let mut message = LinkMessage::default();
        message.header.index = 0;
        message.attributes.push(LinkAttribute::Group(group));
        self.block_on(self.handle().link().del_with_message(message).execute())
            .map_err(|source| NetlinkError::DeleteGroup {
                group,
                source: Box::new(source),
            })
    }

    /// Sets a link administratively up.
    pub fn set_up(&self, index: u32, name: &str) -> Result<(), NetlinkError> {
        let message = LinkUnspec::new_with_index(index).up().build();
        self.change(message, name, "set up")
    }

    /// Sets a link's MTU.
    pub fn set_mtu(&self, index: u32, name: &str, mtu: u32) -> Result<(), NetlinkError> {
        let message = LinkUnspec::new_with_index(index).mtu(mtu).build();
        self.change(message, name, "set mtu")
    }

    /// Turns on hairpin mode on a bridge port (`ip link set NAME type bridge_slave hairpin on`).
    /// With br_netfilter active (bridge-nf-call-iptables=1), an endpoint that reaches its own
    /// published port has its DNATed frame bridged back out the port it came in on; without
    /// hairpin mode the bridge drops it. Docker sets the same.
    pub fn set_hairpin(&self, index: u32, name: &str) -> Result<(), NetlinkError> {
        let message = LinkBridgePort::new(index).hairpin(true).build();
        self.block_on(self.handle().link().set_port(message).execute())
            .map_err(|source| NetlinkError::SetLink {
                name: name.to_owned(),
                what: "set hairpin on",
                source: Box::new(source),
            })
    }

    /// Stops IPv6 from giving a link a link-local address (`ip link set NAME addrgenmode none`);
    /// only effective before the link first goes up. A host-side veth is a bridge port and needs
    /// no address, while 1000 of them each doing IPv6 DAD and MLD kept the kernel's RTNL lock
    /// busy enough to double the time of every other netlink change on the node (measured).
    pub fn set_no_ipv6_link_local(&self, index: u32, name: &str) -> Result<(), NetlinkError> {
        let message = LinkUnspec::new_with_index(index)
            .append_extra_attribute(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
                vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
            )]))
            .build();
        self.change(message, name, "set addrgenmode none")
    }

    /// Sets a link's alias (`ip link set NAME alias TEXT`).
    pub fn set_alias(&self, index: u32, name: &str, alias: &str) -> Result<(), NetlinkError> {
        let message = LinkUnspec::new_with_index(index).alias(alias).build();
        self.change(message, name, "set alias")
    }

    fn change(
        &self,
        message: LinkMessage,
        name: &str,
        what: &'static str,
    ) -> Result<(), NetlinkError> {
        self.block_on(self.handle().link().change(message).execute())
            .map_err(|source| NetlinkError::SetLink {
                name: name.to_owned(),
                what,
                source: Box::new(source),
            })
    }
}

/// Transmit and receive queues of each side of a veth (see [`Nl::create_veth`]).
const VETH_QUEUES: u32 = 1;

/// Parses `aa:bb:cc:dd:ee:ff` into six bytes.
pub fn parse_mac(text: &str) -> Option<Vec<u8>> {
    let bytes = text
        .split(':')
        .map(|part| {
            if part.len() == 2 {
                u8::from_str_radix(part, 16).ok()
            } else {
                None
            }
        })
        .collect::<Option<Vec<u8>>>()?;
    (bytes.len() == 6).then_some(bytes)
}

#[cfg(test)]
mod tests {
    use super::parse_mac;

    #[test]
    fn macs_parse_strictly() {
        assert_eq!(
            parse_mac("02:42:ac:12:00:0a"),
            Some(vec![2, 0x42, 0xac, 0x12, 0, 0x0a])
        );
        assert_eq!(parse_mac("02:42:ac:12:00"), None);
        assert_eq!(parse_mac("02:42:ac:12:00:0g"), None);
        assert_eq!(parse_mac("2:42:ac:12:00:0a"), None);
    }
}
