//! What an apply would change: the steps, in the order they run, and what cannot be applied.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;

use super::report::ObjectKey;
use crate::firewall::{FirewallPlan, IptablesChange, NativeChange};
use crate::kernel::sysctl;

/// One change to a bridge that exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BridgeFix {
    Mtu(u32),
    Up,
    AddAddress(Ipv4Net),
    RemoveAddress(Ipv4Net),
    RouteLocalnet,
}

impl fmt::Display for BridgeFix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BridgeFix::Mtu(mtu) => write!(f, "set mtu {mtu}"),
            BridgeFix::Up => write!(f, "set up"),
            BridgeFix::AddAddress(address) => write!(f, "add address {address}"),
            BridgeFix::RemoveAddress(address) => write!(f, "remove address {address}"),
            BridgeFix::RouteLocalnet => write!(f, "route_localnet=1"),
        }
    }
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
    pub address: Ipv4Net,
    pub mac: Vec<u8>,
    /// The gateway for the default route, when this is the endpoint's primary network.
    pub default_gateway: Option<Ipv4Addr>,
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
    /// Delete a Pier-owned link that the state does not contain (or that must be re-made).
    DeleteLink {
        name: String,
        index: u32,
        reason: String,
    },
    CreateBridge {
        network: String,
        bridge: String,
        gateway: Ipv4Net,
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
}

impl Step {
    /// The object this step is reported under.
    pub fn object(&self) -> ObjectKey {
        match self {
            Step::EnableForwarding => ObjectKey::Forwarding,
            Step::DeleteLink { name, .. } => ObjectKey::Link(name.clone()),
            Step::CreateBridge { network, .. } | Step::FixBridge { network, .. } => {
                ObjectKey::network(network)
            }
            Step::AttachEndpoint(attach) => ObjectKey::endpoint(&attach.endpoint),
            Step::LoopbackUp { endpoint, .. } => ObjectKey::endpoint(endpoint),
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::EnableForwarding => write!(f, "~ sysctl {}=1", sysctl::IP_FORWARD),
            Step::DeleteLink { name, reason, .. } => write!(f, "- link {name} ({reason})"),
            Step::CreateBridge {
                network,
                bridge,
                gateway,
                mtu,
            } => write!(
                f,
                "+ bridge {bridge} for network {network}: {gateway}, mtu {mtu}, up, route_localnet=1"
            ),
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
        }
    }
}

fn fmt_attach(f: &mut fmt::Formatter<'_>, attach: &Attach) -> fmt::Result {
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
        attach.address,
        attach.mtu
    )?;
    if let Some(gateway) = attach.default_gateway {
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
