//! What an apply would change: the steps, in the order they run, and what cannot be applied.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::report::ObjectKey;
use crate::firewall::{FirewallPlan, IptablesChange, NativeChange};
use crate::kernel::netlink::{VxlanConf, format_mac};
use crate::kernel::sysctl;

/// One change to a bridge that exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BridgeFix {
    Mtu(u32),
    Up,
    AddAddress(IpNet),
    RemoveAddress(IpNet),
    RouteLocalnet,
    /// `accept_ra = 0`: no router advertisement from a container configures the node.
    IgnoreRouterAdvertisements,
}

impl fmt::Display for BridgeFix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BridgeFix::Mtu(mtu) => write!(f, "set mtu {mtu}"),
            BridgeFix::Up => write!(f, "set up"),
            BridgeFix::AddAddress(address) => write!(f, "add address {address}"),
            BridgeFix::RemoveAddress(address) => write!(f, "remove address {address}"),
            BridgeFix::RouteLocalnet => write!(f, "route_localnet=1"),
            BridgeFix::IgnoreRouterAdvertisements => write!(f, "accept_ra=0"),
        }
    }
}

/// One change to a VXLAN device that exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VxlanFix {
    Mtu(u32),
    /// Enslave it to its network's bridge (by name: the bridge may be made by the same plan).
    Master(String),
    Up,
}

impl fmt::Display for VxlanFix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VxlanFix::Mtu(mtu) => write!(f, "set mtu {mtu}"),
            VxlanFix::Master(bridge) => write!(f, "set master {bridge}"),
            VxlanFix::Up => write!(f, "set up"),
        }
    }
}

/// Everything needed to create an overlay network's VXLAN device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateVxlan {
    pub network: String,
    pub vxlan: String,
    /// The network's bridge, which the device is enslaved to.
    pub bridge: String,
    pub conf: VxlanConf,
    pub mtu: u32,
}

/// Everything needed to (re)create one endpoint's veth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attach {
    pub endpoint: String,
    pub network: String,
    pub bridge: String,
    pub netns: PathBuf,
    pub host_veth: String,
    pub interface: String,
    /// The IPv4 address, on a network with IPv4.
    pub address: Option<Ipv4Net>,
    /// The IPv6 address, on a network with IPv6.
    pub address6: Option<Ipv6Net>,
    pub mac: Vec<u8>,
    /// The gateway for the IPv4 default route, when this is the endpoint's primary network.
    pub default_gateway: Option<Ipv4Addr>,
    /// The gateway for the IPv6 default route, likewise.
    pub default_gateway6: Option<Ipv6Addr>,
    pub mtu: u32,
    /// Written to the host veth's alias as the last step (see the module docs).
    pub fingerprint: String,
    /// An existing host veth (index) with a stale configuration, deleted first.
    pub replaces: Option<u32>,
}

/// One change the plan makes, in the order they are applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `net.ipv4.ip_forward = 1` in the host namespace.
    EnableForwarding,
    /// `net.ipv6.conf.all.forwarding = 1` in the host namespace (a network has IPv6).
    EnableIpv6Forwarding,
    /// Delete a Pier-owned link that the state does not contain (or that must be re-made).
    DeleteLink {
        name: String,
        index: u32,
        reason: String,
    },
    /// A bridge with the gateway address of each family its network has.
    CreateBridge {
        network: String,
        bridge: String,
        gateway: Option<Ipv4Net>,
        gateway6: Option<Ipv6Net>,
        mtu: u32,
    },
    FixBridge {
        network: String,
        bridge: String,
        index: u32,
        fixes: Vec<BridgeFix>,
    },
    AttachEndpoint(Box<Attach>),
    /// A `null` endpoint's namespace has `lo` down.
    LoopbackUp {
        endpoint: String,
        netns: PathBuf,
    },
    /// An overlay network's VXLAN device, created on its bridge and set up.
    CreateVxlan(Box<CreateVxlan>),
    FixVxlan {
        network: String,
        vxlan: String,
        index: u32,
        fixes: Vec<VxlanFix>,
    },
    /// The FDB entry of a remote endpoint's MAC on the VXLAN device: added, or its remote
    /// replaced (`replace`: an entry for the MAC exists).
    SetFdbEntry {
        network: String,
        vxlan: String,
        mac: Vec<u8>,
        destination: Ipv4Addr,
        /// The remote endpoint it is for, by id.
        endpoint: String,
        replace: bool,
    },
    /// Delete the VXLAN device's FDB entry for `mac`, with every remote it has.
    DeleteFdbEntry {
        network: String,
        vxlan: String,
        mac: Vec<u8>,
        reason: String,
    },
    /// The permanent neighbour entry of a remote endpoint's address on the VXLAN device.
    SetNeighbour {
        network: String,
        vxlan: String,
        address: IpAddr,
        mac: Vec<u8>,
        endpoint: String,
        replace: bool,
    },
    DeleteNeighbour {
        network: String,
        vxlan: String,
        address: IpAddr,
        reason: String,
    },
}

impl Step {
    /// The object this step is reported under.
    pub fn object(&self) -> ObjectKey {
        match self {
            Step::EnableForwarding | Step::EnableIpv6Forwarding => ObjectKey::Forwarding,
            Step::DeleteLink { name, .. } => ObjectKey::Link(name.clone()),
            Step::CreateBridge { network, .. } | Step::FixBridge { network, .. } => {
                ObjectKey::network(network)
            }
            Step::AttachEndpoint(attach) => ObjectKey::endpoint(&attach.endpoint),
            Step::LoopbackUp { endpoint, .. } => ObjectKey::endpoint(endpoint),
            Step::CreateVxlan(create) => ObjectKey::network(&create.network),
            Step::FixVxlan { network, .. }
            | Step::SetFdbEntry { network, .. }
            | Step::DeleteFdbEntry { network, .. }
            | Step::SetNeighbour { network, .. }
            | Step::DeleteNeighbour { network, .. } => ObjectKey::network(network),
        }
    }

    /// The overlay network whose VXLAN device this step needs (or makes).
    pub fn vxlan_network(&self) -> Option<&str> {
        match self {
            Step::CreateVxlan(create) => Some(&create.network),
            Step::FixVxlan { network, .. }
            | Step::SetFdbEntry { network, .. }
            | Step::DeleteFdbEntry { network, .. }
            | Step::SetNeighbour { network, .. }
            | Step::DeleteNeighbour { network, .. } => Some(network),
            _ => None,
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::EnableForwarding => write!(f, "~ sysctl {}=1", sysctl::IP_FORWARD),
            Step::EnableIpv6Forwarding => write!(f, "~ sysctl {}=1", sysctl::IPV6_FORWARD),
            Step::DeleteLink { name, reason, .. } => write!(f, "- link {name} ({reason})"),
            Step::CreateBridge {
                network,
                bridge,
                gateway,
                gateway6,
                mtu,
            } => {
                let gateways: Vec<String> = [gateway.map(IpNet::from), gateway6.map(IpNet::from)]
                    .into_iter()
                    .flatten()
                    .map(|g| g.to_string())
                    .collect();
                write!(
                    f,
                    "+ bridge {bridge} for network {network}: {}, mtu {mtu}, up, route_localnet=1, accept_ra=0",
                    gateways.join(", ")
                )
            }
            Step::FixBridge {
                network,
                bridge,
                fixes,
                ..
            } => {
                let fixes: Vec<String> = fixes.iter().map(ToString::to_string).collect();
                write!(
                    f,
                    "~ bridge {bridge} for network {network}: {}",
                    fixes.join(", ")
                )
            }
            Step::AttachEndpoint(attach) => fmt_attach(f, attach),
            Step::LoopbackUp { endpoint, netns } => {
                write!(f, "~ endpoint {endpoint}: lo up in {}", netns.display())
            }
            _ => fmt_overlay(f, self),
        }
    }
}

fn fmt_overlay(f: &mut fmt::Formatter<'_>, step: &Step) -> fmt::Result {
    let sign = |replace: &bool| if *replace { "~" } else { "+" };
    match step {
        Step::CreateVxlan(create) => fmt_create_vxlan(f, create),
        Step::FixVxlan {
            network,
            vxlan,
            fixes,
            ..
        } => {
            let fixes: Vec<String> = fixes.iter().map(ToString::to_string).collect();
            write!(
                f,
                "~ vxlan {vxlan} for network {network}: {}",
                fixes.join(", ")
            )
        }
        Step::SetFdbEntry {
            vxlan,
            mac,
            destination,
            endpoint,
            replace,
            ..
        } => write!(
            f,
            "{} fdb {} dst {destination} on {vxlan} (endpoint {endpoint})",
            sign(replace),
            format_mac(mac)
        ),
        Step::DeleteFdbEntry {
            vxlan, mac, reason, ..
        } => write!(f, "- fdb {} on {vxlan} ({reason})", format_mac(mac)),
        Step::SetNeighbour {
            vxlan,
            address,
            mac,
            endpoint,
            replace,
            ..
        } => write!(
            f,
            "{} neigh {address} lladdr {} on {vxlan} (endpoint {endpoint})",
            sign(replace),
            format_mac(mac)
        ),
        Step::DeleteNeighbour {
            vxlan,
            address,
            reason,
            ..
        } => write!(f, "- neigh {address} on {vxlan} ({reason})"),
        _ => Ok(()),
    }
}

fn fmt_create_vxlan(f: &mut fmt::Formatter<'_>, create: &CreateVxlan) -> fmt::Result {
    let conf = &create.conf;
    write!(
        f,
        "+ vxlan {} for network {}: id {}, local {}, dstport {}, {}, {}, mtu {}, on {}, up",
        create.vxlan,
        create.network,
        conf.id,
        conf.local
            .map_or_else(|| "any".to_owned(), |ip| ip.to_string()),
        conf.port,
        if conf.learning {
            "learning"
        } else {
            "nolearning"
        },
        if conf.proxy { "proxy" } else { "noproxy" },
        create.mtu,
        create.bridge
    )
}

fn fmt_attach(f: &mut fmt::Formatter<'_>, attach: &Attach) -> fmt::Result {
    let addresses: Vec<String> = [
        attach.address.map(IpNet::from),
        attach.address6.map(IpNet::from),
    ]
    .into_iter()
    .flatten()
    .map(|a| a.to_string())
    .collect();
    write!(
        f,
        "{} endpoint {}: {} in {} <-> {} on {} ({}), {}, mtu {}",
        if attach.replaces.is_some() { "~" } else { "+" },
        attach.endpoint,
        attach.interface,
        attach.netns.display(),
        attach.host_veth,
        attach.bridge,
        attach.network,
        addresses.join(", "),
        attach.mtu
    )?;
    if let Some(gateway) = attach.default_gateway {
        write!(f, ", default via {gateway}")?;
    }
    if let Some(gateway) = attach.default_gateway6 {
        write!(f, ", default via {gateway}")?;
    }
    Ok(())
}

/// Something about one object that cannot be applied; the rest of the state still is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub object: ObjectKey,
    pub message: String,
}

/// What an apply would change, computed from the desired state and the kernel's current state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub problems: Vec<Problem>,
    /// Objects found exactly as desired.
    pub in_sync: BTreeSet<ObjectKey>,
    /// What the user should know about objects as desired (e.g.
    /// [`super::report::OWN_DEFAULT_ROUTE_KEPT`]).
    pub notes: BTreeMap<ObjectKey, Vec<String>>,
    /// What table `inet pier` needs (`None` when it could not be read: see `problems`).
    pub firewall: Option<FirewallPlan>,
    /// What other firewalls' iptables filter tables need (full plans only).
    pub iptables: Vec<IptablesChange>,
    /// What other programs' nftables tables need (full plans only).
    pub nftables: Vec<NativeChange>,
}

impl Plan {
    /// Nothing to change in the kernel (problems may remain: they need a change of the state).
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
            && self.firewall.as_ref().is_none_or(FirewallPlan::is_empty)
            && self.iptables.is_empty()
            && self.nftables.is_empty()
    }

    pub(crate) fn problem(&mut self, object: ObjectKey, message: String) {
        self.problems.push(Problem { object, message });
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.steps.is_empty() {
            writeln!(f, "links: no changes")?;
        }
        for step in &self.steps {
            writeln!(f, "{step}")?;
        }
        match &self.firewall {
            Some(firewall) if !firewall.is_empty() => write!(f, "{firewall}")?,
            Some(_) => writeln!(f, "firewall: no changes")?,
            None => {}
        }
        for change in &self.iptables {
            write!(f, "{change}")?;
        }
        for change in &self.nftables {
            write!(f, "{change}")?;
        }
        for problem in &self.problems {
            writeln!(f, "! {}: {}", problem.object, problem.message)?;
        }
        Ok(())
    }
}
