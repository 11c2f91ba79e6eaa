//! Runs a [`Plan`] against the kernel: the link steps in order, then the firewall's batches,
//! reporting per object. One object's failure does not stop the others.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;

use super::alias::{AliasState, alias};
use super::bulk::{self, Deleted, Doomed};
use super::names::bridge_mac;
use super::plan::{Attach, BridgeFix, CreateVxlan, Plan, Step, VxlanFix};
use pier_runtime::error_chain as chain;

use super::report::{OWN_DEFAULT_ROUTE_KEPT, ObjectKey, Outcome, Report};
use crate::firewall;
use crate::kernel::netlink::{self, NetlinkError, Nl, VethSpec, VxlanSpec};
use crate::kernel::netns::{self, NetnsError};
use crate::kernel::sysctl::{self, SysctlError};

/// One step's failure, reported for its object.
#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("working in a namespace")]
    Netns(#[source] NetnsError),
    #[error(transparent)]
    Sysctl(SysctlError),
    #[error("name clash: {name} already exists in {netns} and is not Pier's")]
    NameClash { name: String, netns: String },
}

/// Where and how a plan is executed.
pub(super) struct Executor<'a> {
    /// The socket in the host namespace.
    pub host: &'a Nl,
    /// The host namespace's file (`None`: the process's own).
    pub host_netns: Option<&'a Path>,
    /// Sleeps after every link step (once after the deletions, which go together): only for
    /// tests that kill an apply half-way.
    pub step_delay: Option<Duration>,
}

impl Executor<'_> {
    /// Executes `plan`; the report starts from what the plan found in sync and its problems.
    pub fn run(&self, plan: &Plan) -> Report {
        let mut report = Report::default();
        for object in &plan.in_sync {
            report.objects.insert(object.clone(), Outcome::InSync);
        }
        report.notes.extend(plan.notes.clone());
        for problem in &plan.problems {
            report.failed(problem.object.clone(), problem.message.clone());
        }
        self.links(plan, &mut report);
        self.firewall(plan, &mut report);
        report
    }

    fn links(&self, plan: &Plan, report: &mut Report) {
        self.deletions(plan, report);
        let mut indexes: HashMap<String, u32> = HashMap::new();
        let mut failed = Failed::default();
        let others = plan
            .steps
            .iter()
            .filter(|s| !matches!(s, Step::DeleteLink { .. }));
        for step in others {
            let object = step.object();
            if let Some(reason) = failed.blocks(step) {
                report.failed(object, reason);
                continue;
            }
            match self.step(step, &mut indexes) {
                Ok(kept) => {
                    if kept == AliasState::OwnDefaultKept {
                        report.note(object.clone(), OWN_DEFAULT_ROUTE_KEPT.to_owned());
                    }
                    report.changed(object, step.to_string());
                }
                Err(error) => {
                    let message = chain(&error);
                    failed.record(step, &message);
                    tracing::warn!(%object, error = %message, "dataplane step failed");
                    report.failed(object, message);
                }
            }
            if let Some(delay) = self.step_delay {
                std::thread::sleep(delay);
            }
        }
    }

    /// The plan's link deletions, together (see [`super::bulk`]): they come first in a plan
    /// anyway, and nothing else waits on one of them but the steps after them all.
    fn deletions(&self, plan: &Plan, report: &mut Report) {
        let (steps, doomed): (Vec<&Step>, Vec<Doomed>) = plan
            .steps
            .iter()
            .filter_map(|step| match step {
                Step::DeleteLink { name, index, .. } => Some((
                    step,
                    Doomed {
                        index: *index,
                        name: name.clone(),
                    },
                )),
                _ => None,
            })
            .unzip();
        if doomed.is_empty() {
            return;
        }
        for (step, result) in steps
            .into_iter()
            .zip(bulk::delete_links(self.host, &doomed))
        {
            let object = step.object();
            match result {
                Ok(Deleted::InGroup(links)) => {
                    report.changed(object, format!("{step}, one request for {links} links"));
                }
                Ok(Deleted::Alone) => report.changed(object, step.to_string()),
                Err(error) => {
                    let message = chain(&error);
                    tracing::warn!(%object, error = %message, "dataplane step failed");
                    report.failed(object, message);
                }
            }
        }
        if let Some(delay) = self.step_delay {
            std::thread::sleep(delay);
        }
    }

    /// After the links: one atomic batch for table `inet pier`, then the other firewalls.
    fn firewall(&self, plan: &Plan, report: &mut Report) {
        if let Some(table) = &plan.firewall {
            if table.is_empty() {
                report.objects.insert(ObjectKey::Firewall, Outcome::InSync);
            } else {
                match firewall::apply(self.host_netns, table) {
                    Ok(()) => {
                        report.changed(ObjectKey::Firewall, "table inet pier updated".to_owned())
                    }
                    Err(error) => report.failed(ObjectKey::Firewall, chain(&error)),
                }
            }
        }
        if !plan.iptables.is_empty() {
            match firewall::iptables_apply(self.host_netns, &plan.iptables) {
                Ok(()) => {
                    for change in &plan.iptables {
                        report.changed(ObjectKey::Iptables, change.summary.join("; "));
                    }
                }
                Err(error) => report.failed(ObjectKey::Iptables, chain(&error)),
            }
        }
        if !plan.nftables.is_empty() {
            match firewall::native_apply(self.host_netns, &plan.nftables) {
                Ok(()) => {
                    for change in &plan.nftables {
                        let what = format!("{}: {}", change.location(), change.summary.join("; "));
                        report.changed(ObjectKey::Nftables, what);
                    }
                }
                Err(error) => report.failed(ObjectKey::Nftables, chain(&error)),
            }
        }
    }

    /// Runs one step; an attach says what it kept, every other step is [`AliasState::AsPlanned`].
    /// `indexes` caches link indexes by name (bridges and VXLAN devices) within the run.
    fn step(
        &self,
        step: &Step,
        indexes: &mut HashMap<String, u32>,
    ) -> Result<AliasState, StepError> {
        let host = self.host;
        match step {
            Step::EnableForwarding => {
                self.host_sysctls(vec![(sysctl::IP_FORWARD.to_owned(), "1")])?
            }
            Step::EnableIpv6Forwarding => {
                self.host_sysctls(vec![(sysctl::IPV6_FORWARD.to_owned(), "1")])?;
            }
            // Done together before the other steps (`deletions`).
            Step::DeleteLink { .. } => {}
            Step::CreateBridge {
                bridge,
                gateway,
                gateway6,
                mtu,
                ..
            } => {
                host.create_bridge(bridge, *mtu, bridge_mac(bridge))?;
                let index = lookup(host, bridge)?;
                indexes.insert(bridge.clone(), index);
                let gateways = [gateway.map(IpNet::V4), gateway6.map(IpNet::V6)];
                for gateway in gateways.into_iter().flatten() {
                    host.add_address(index, bridge, gateway)?;
                }
                self.new_bridge_sysctls(bridge)?;
            }
            Step::FixBridge {
                bridge,
                index,
                fixes,
                ..
            } => {
                for fix in fixes {
                    self.fix_bridge(bridge, *index, fix)?;
                }
            }
            Step::AttachEndpoint(attach) => return self.attach(attach, indexes),
            Step::LoopbackUp { netns, .. } => {
                let nl = Nl::open_in(Some(netns))?;
                let lo = lookup(&nl, "lo")?;
                nl.set_up(lo, "lo")?;
            }
            _ => self.overlay_step(step, indexes)?,
        }
        Ok(AliasState::AsPlanned)
    }

    /// A step of an overlay network's VXLAN device or of its entries.
    fn overlay_step(
        &self,
        step: &Step,
        indexes: &mut HashMap<String, u32>,
    ) -> Result<(), StepError> {
        let host = self.host;
        match step {
            Step::CreateVxlan(create) => self.create_vxlan(create, indexes)?,
            Step::FixVxlan {
                vxlan,
                index,
                fixes,
                ..
            } => {
                for fix in fixes {
                    match fix {
                        VxlanFix::Mtu(mtu) => host.set_mtu(*index, vxlan, *mtu)?,
                        VxlanFix::Master(bridge) => {
                            let master = cached(host, indexes, bridge)?;
                            host.set_master(*index, vxlan, master)?;
                        }
                        VxlanFix::Up => host.set_up(*index, vxlan)?,
                    }
                }
            }
            Step::SetFdbEntry {
                vxlan,
                mac,
                destination,
                ..
            } => {
                let index = cached(host, indexes, vxlan)?;
                host.replace_fdb_entry(index, vxlan, mac, *destination)?;
            }
            Step::DeleteFdbEntry { vxlan, mac, .. } => {
                let index = cached(host, indexes, vxlan)?;
                gone_is_fine(host.delete_fdb_entry(index, vxlan, mac))?;
            }
            Step::SetNeighbour {
                vxlan,
                address,
                mac,
                ..
            } => {
                let index = cached(host, indexes, vxlan)?;
                host.replace_neighbour(index, vxlan, *address, mac)?;
            }
            Step::DeleteNeighbour { vxlan, address, .. } => {
                let index = cached(host, indexes, vxlan)?;
                gone_is_fine(host.delete_neighbour(index, vxlan, *address))?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Creates the device down on its bridge, without an IPv6 link-local address (it carries
    /// no traffic of its own), then sets it up.
    fn create_vxlan(
        &self,
        create: &CreateVxlan,
        indexes: &mut HashMap<String, u32>,
    ) -> Result<(), StepError> {
        let host = self.host;
        let master = cached(host, indexes, &create.bridge)?;
        host.create_vxlan(&VxlanSpec {
            name: create.vxlan.clone(),
            conf: create.conf,
            mtu: create.mtu,
            master,
        })?;
        let index = lookup(host, &create.vxlan)?;
        indexes.insert(create.vxlan.clone(), index);
        host.set_no_ipv6_link_local(index, &create.vxlan)?;
        host.set_up(index, &create.vxlan)?;
        Ok(())
    }

    fn fix_bridge(&self, bridge: &str, index: u32, fix: &BridgeFix) -> Result<(), StepError> {
        let host = self.host;
        match fix {
            BridgeFix::Mtu(mtu) => host.set_mtu(index, bridge, *mtu)?,
            BridgeFix::Up => host.set_up(index, bridge)?,
            BridgeFix::AddAddress(address) => host.add_address(index, bridge, *address)?,
            BridgeFix::RemoveAddress(address) => host.delete_address(index, bridge, *address)?,
            BridgeFix::RouteLocalnet => {
                self.host_sysctls(vec![(sysctl::route_localnet(bridge), "1")])?;
            }
            BridgeFix::IgnoreRouterAdvertisements => {
                self.host_sysctls(vec![(sysctl::accept_ra(bridge), "0")])?;
            }
        }
        Ok(())
    }

    /// A new bridge's settings, written by one thread in the host namespace: `route_localnet`,
    /// and `accept_ra = 0` unless the kernel has IPv6 off (then nothing could accept one).
    fn new_bridge_sysctls(&self, bridge: &str) -> Result<(), StepError> {
        let route_localnet = sysctl::route_localnet(bridge);
        let accept_ra = sysctl::accept_ra(bridge);
        netns::run_in(self.host_netns, move || {
            sysctl::set(&route_localnet, "1")?;
            if sysctl::exists(&accept_ra) {
                sysctl::set(&accept_ra, "0")?;
            }
            Ok(())
        })
        .map_err(StepError::Netns)?
        .map_err(StepError::Sysctl)
    }

    /// Writes sysctls of the host namespace, in order, on one thread there.
    fn host_sysctls(&self, values: Vec<(String, &'static str)>) -> Result<(), StepError> {
        netns::run_in(self.host_netns, move || {
            values
                .iter()
                .try_for_each(|(key, value)| sysctl::set(key, value))
        })
        .map_err(StepError::Netns)?
        .map_err(StepError::Sysctl)
    }

    /// Makes one endpoint's veth: the pair, the peer's address, state and default route in the
    /// namespace, the host side's settings, and last the fingerprint in its alias.
    fn attach(
        &self,
        attach: &Attach,
        indexes: &mut HashMap<String, u32>,
    ) -> Result<AliasState, StepError> {
        let host = self.host;
        if let Some(index) = attach.replaces {
            match host.delete_link(index, &attach.host_veth) {
                Err(error) if error.errno() == Some(netlink::ENODEV) => {}
                other => other?,
            }
        }
        let master = cached(host, indexes, &attach.bridge)?;
        self.create_veth(attach, master)?;
        // From here a failure leaves a veth without fingerprint: the next plan re-makes it.
        let kept = configure_peer(attach)?;
        let host_index = lookup(host, &attach.host_veth)?;
        host.set_no_ipv6_link_local(host_index, &attach.host_veth)?;
        host.set_hairpin(host_index, &attach.host_veth)?;
        host.set_up(host_index, &attach.host_veth)?;
        host.set_alias(
            host_index,
            &attach.host_veth,
            &alias(&attach.fingerprint, kept),
        )?;
        Ok(kept)
    }

    fn create_veth(&self, attach: &Attach, master: u32) -> Result<(), StepError> {
        let spec = VethSpec {
            host: attach.host_veth.clone(),
            peer: attach.interface.clone(),
            mtu: attach.mtu,
            peer_mac: attach.mac.clone(),
            master,
        };
        match self.host.create_veth(&spec, &attach.netns) {
            Err(error) if error.errno() == Some(netlink::EEXIST) => {
                let on_host = self.host.link(&attach.host_veth).ok().flatten().is_some();
                Err(StepError::NameClash {
                    name: if on_host {
                        attach.host_veth.clone()
                    } else {
                        attach.interface.clone()
                    },
                    netns: if on_host {
                        "the host namespace".to_owned()
                    } else {
                        attach.netns.display().to_string()
                    },
                })
            }
            other => Ok(other?),
        }
    }
}

/// Inside the endpoint's namespace: IPv6 on where the endpoint has it, the peer's addresses, up,
/// `lo` up, and the default route of each family.
fn configure_peer(attach: &Attach) -> Result<AliasState, StepError> {
    let inside = Nl::open_in(Some(&attach.netns))?;
    let peer_link = inside
        .link(&attach.interface)?
        .ok_or_else(|| NetlinkError::NoSuchLink(attach.interface.clone()))?;
    let peer = peer_link.index;
    if attach.address6.is_some() && peer_link.inet6.is_none_or(|conf| conf.disabled) {
        enable_ipv6(&attach.netns, &attach.interface)?;
    }
    let addresses = [
        attach.address.map(IpNet::V4),
        attach.address6.map(IpNet::V6),
    ];
    // An endpoint without IPv6 gets no link-local address either (Docker turns IPv6 off on such
    // an interface): on coming up it would send duplicate address detection, MLD reports and
    // router solicitations, multicasts the bridge floods to every other port, so N endpoints
    // attached at once would cost the node's kernel O(N²) frames (the largest part of its work
    // with 2,000 on two bridges: benches/notes/local.md). Set before the link is up, which is
    // when the address is made.
    if attach.address6.is_none() && peer_link.inet6.is_some_and(|conf| !conf.disabled) {
        inside.set_no_ipv6_link_local(peer, &attach.interface)?;
    }
    for address in addresses.into_iter().flatten() {
        inside.add_address(peer, &attach.interface, address)?;
    }
    inside.set_up(peer, &attach.interface)?;
    let lo = lookup(&inside, "lo")?;
    inside.set_up(lo, "lo")?;
    // A namespace Pier did not set up may route by a gateway of its own (a container's, a
    // Pod's): the endpoint then adds only its subnet (the address's route), as Docker's `network
    // connect` does, family by family. A default route Pier set for another endpoint is replaced.
    let mut kept = AliasState::AsPlanned;
    if let Some(gateway) = attach.default_gateway {
        if netlink::foreign_default_route(&inside.v4_routes()?).is_some() {
            kept = AliasState::OwnDefaultKept;
        } else {
            inside.replace_default_route(peer, &attach.interface, gateway.into())?;
        }
    }
    if let Some(gateway) = attach.default_gateway6 {
        if netlink::foreign_v6_default_route(&inside.v6_routes()?).is_some() {
            kept = AliasState::OwnDefaultKept;
        } else {
            inside.replace_default_route(peer, &attach.interface, gateway.into())?;
        }
    }
    Ok(kept)
}

/// Turns IPv6 on in the namespace at `netns` (`all`, `default` and the interface), which a
/// namespace made while the node's `default.disable_ipv6` was 1 has off. Only then: it takes a
/// thread entering the namespace.
fn enable_ipv6(netns: &Path, interface: &str) -> Result<(), StepError> {
    let keys = ["all", "default", interface].map(sysctl::disable_ipv6);
    netns::run_in(Some(netns), move || {
        keys.iter().try_for_each(|key| sysctl::set(key, "0"))
    })
    .map_err(StepError::Netns)?
    .map_err(StepError::Sysctl)
}

/// The networks whose bridge or VXLAN device failed in this run, with why: the steps that need
/// them are reported failed without being tried.
#[derive(Default)]
struct Failed {
    bridges: HashMap<String, String>,
    vxlans: HashMap<String, String>,
}

impl Failed {
    fn record(&mut self, step: &Step, message: &str) {
        match step {
            Step::CreateBridge { network, .. } | Step::FixBridge { network, .. } => {
                self.bridges.insert(network.clone(), message.to_owned());
            }
            Step::CreateVxlan(create) => {
                self.vxlans
                    .insert(create.network.clone(), message.to_owned());
            }
            Step::FixVxlan { network, .. } => {
                self.vxlans.insert(network.clone(), message.to_owned());
            }
            _ => {}
        }
    }

    /// Why `step` cannot run, if its network's bridge or VXLAN device failed.
    fn blocks(&self, step: &Step) -> Option<String> {
        let (network, vxlan_needed) = match step {
            Step::AttachEndpoint(attach) => (attach.network.as_str(), false),
            Step::CreateVxlan(create) => (create.network.as_str(), false),
            _ => (step.vxlan_network()?, true),
        };
        if let Some(reason) = self.bridges.get(network) {
            return Some(format!("network {network} failed: {reason}"));
        }
        let reason = self.vxlans.get(network).filter(|_| vxlan_needed)?;
        Some(format!(
            "the VXLAN device of network {network} failed: {reason}"
        ))
    }
}

/// A delete of an entry that is gone already (ENOENT) reached its goal.
fn gone_is_fine(result: Result<(), NetlinkError>) -> Result<(), NetlinkError> {
    match result {
        Err(error) if error.errno() == Some(netlink::ENOENT) => Ok(()),
        other => other,
    }
}

/// The index of the link `name`, looked up once per run.
fn cached(nl: &Nl, indexes: &mut HashMap<String, u32>, name: &str) -> Result<u32, NetlinkError> {
    if let Some(index) = indexes.get(name) {
        return Ok(*index);
    }
    let index = lookup(nl, name)?;
    indexes.insert(name.to_owned(), index);
    Ok(index)
}

fn lookup(nl: &Nl, name: &str) -> Result<u32, NetlinkError> {
    nl.link(name)?
        .map(|l| l.index)
        .ok_or_else(|| NetlinkError::NoSuchLink(name.to_owned()))
}
