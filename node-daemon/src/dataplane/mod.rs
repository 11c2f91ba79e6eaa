//! The dataplane: make the kernel of one node match a [`NodeState`].
//!
//! [`Dataplane::plan`] reads what the kernel has *now* (links, addresses, sysctls of the host
//! namespace; the namespaces of endpoints that need it) and diffs it against the desired state.
//! Nothing is remembered between runs, so a restart, a crash or a `kill -9` in the middle of an apply
//! converges on the next apply. [`Dataplane::apply`] executes a plan with the fewest changes it can
//! and reports per object: one endpoint failing (missing namespace, address in use, a name clash with
//! a foreign link) does not stop the others. [`Dataplane::reset`] removes everything Pier owns.
//!
//! Ownership (DESIGN.md §4): bridges `pier-` + 8 hex digits, host-side veths `pv` + 10 hex digits.
//! Links matching neither pattern are never touched.
//!
//! ## How a veth is known to be in sync without entering every namespace
//! When an endpoint's veth is fully configured (peer named, addressed, routed, up), the last step
//! writes a fingerprint of its desired configuration — including the identity (device and inode) of
//! the target namespace — into the host-side veth's alias. The plan compares that alias, the bridge
//! it is enslaved to and its up flag, all read from one link dump of the host namespace. A veth whose
//! apply was interrupted has no (or an old) fingerprint and is re-created; a veth whose namespace was
//! deleted disappears with it; one whose namespace file now names another namespace has a stale
//! fingerprint. This keeps one attach cheap at 1000 endpoints (no per-namespace round trips), at the
//! price of not noticing someone re-addressing `eth0` by hand inside a container; [`Dataplane::deep`]
//! turns on that check (it enters every namespace).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ipnet::Ipv4Net;

use crate::firewall::{self, FirewallPlan, IptablesChange, NativeChange};
use crate::kernel::hostnet;
use crate::kernel::netlink::{self, Link, LinkKind, NetlinkError, Nl, VethSpec};
use crate::kernel::netns::{self, NetnsError};
use crate::kernel::sysctl::{self, SysctlError};
use crate::state::{
    Attachment, BRIDGE_PREFIX, BridgeAttachment, Driver, EndpointState, HOST_VETH_PREFIX, Netns,
    NetworkState, NodeState, StateError,
};

/// A failure that stops the whole plan or apply (as opposed to one object's failure in a [`Report`]).
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("the desired state is invalid")]
    InvalidState(#[source] StateError),
    #[error("opening the host network namespace")]
    HostNamespace(#[source] NetlinkError),
    #[error("the host network namespace {0} does not exist")]
    HostNamespaceMissing(PathBuf),
    #[error("reading links and addresses of the host namespace")]
    ReadBack(#[source] NetlinkError),
}

/// The report key of table `inet pier`.
pub const FIREWALL: &str = "firewall/inet-pier";
/// The report key of Pier's accepts in other firewalls' iptables tables.
pub const IPTABLES: &str = "firewall/iptables";
/// The report key of Pier's accepts in other programs' nftables tables (firewalld, `inet filter`).
pub const NFTABLES: &str = "firewall/nftables";

/// The note on an endpoint whose namespace kept a default route of its own (Docker's `network
/// connect` to a running container keeps the container's gateway).
pub const OWN_DEFAULT_ROUTE_KEPT: &str = "default route left as it was: the namespace has its own";

/// Appended to a host veth's fingerprint alias when its attach kept the namespace's own default
/// route, so that an in-sync plan still knows it (and says so) without entering the namespace.
const OWN_DEFAULT_ALIAS: &str = "own-default";

/// Whether a link name is a bridge Pier owns (`pier-` + 8 lowercase hex digits).
pub fn is_pier_bridge_name(name: &str) -> bool {
    name.strip_prefix(BRIDGE_PREFIX)
        .is_some_and(|rest| rest.len() == 8 && is_lower_hex(rest))
}

/// Whether a link name is a host-side veth Pier owns (`pv` + 10 lowercase hex digits).
pub fn is_pier_veth_name(name: &str) -> bool {
    name.strip_prefix(HOST_VETH_PREFIX)
        .is_some_and(|rest| rest.len() == 10 && is_lower_hex(rest))
}

fn is_lower_hex(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether a link found in the host namespace is Pier's (name pattern and kind both match).
fn is_owned(link: &Link) -> bool {
    (link.kind == LinkKind::Bridge && is_pier_bridge_name(&link.name))
        || (link.kind == LinkKind::Veth && is_pier_veth_name(&link.name))
}

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
    pub fn object(&self) -> String {
        match self {
            Step::EnableForwarding => "node/forwarding".to_owned(),
            Step::DeleteLink { name, .. } => format!("link/{name}"),
            Step::CreateBridge { network, .. } | Step::FixBridge { network, .. } => {
                format!("network/{network}")
            }
            Step::AttachEndpoint(attach) => format!("endpoint/{}", attach.endpoint),
            Step::LoopbackUp { endpoint, .. } => format!("endpoint/{endpoint}"),
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
            Step::AttachEndpoint(attach) => {
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
            Step::LoopbackUp { endpoint, netns } => {
                write!(f, "~ endpoint {endpoint}: lo up in {}", netns.display())
            }
        }
    }
}

/// Something about one object that cannot be applied; the rest of the state still is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `endpoint/ID`, `network/NAME`, ...
    pub object: String,
    pub message: String,
}

/// What an apply would change, computed from the desired state and the kernel's current state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub problems: Vec<Problem>,
    /// Objects found exactly as desired.
    pub in_sync: BTreeSet<String>,
    /// What the user should know about objects as desired (e.g. [`OWN_DEFAULT_ROUTE_KEPT`]).
    pub notes: BTreeMap<String, Vec<String>>,
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

/// The result for one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    InSync,
    Changed(Vec<String>),
    Failed(String),
}

/// What an apply did, per object (`network/NAME`, `endpoint/ID`, `link/NAME`, `node/...`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub objects: BTreeMap<String, Outcome>,
    /// What the user should know about objects that are as desired, per object.
    pub notes: BTreeMap<String, Vec<String>>,
}

impl Report {
    /// The objects that failed, with their messages.
    pub fn failures(&self) -> impl Iterator<Item = (&str, &str)> {
        self.objects
            .iter()
            .filter_map(|(object, outcome)| match outcome {
                Outcome::Failed(message) => Some((object.as_str(), message.as_str())),
                _ => None,
            })
    }

    /// Whether every object is now as desired.
    pub fn is_success(&self) -> bool {
        self.failures().next().is_none()
    }

    fn changed(&mut self, object: String, what: String) {
        match self.objects.entry(object).or_insert(Outcome::InSync) {
            Outcome::Changed(changes) => changes.push(what),
            outcome @ Outcome::InSync => *outcome = Outcome::Changed(vec![what]),
            Outcome::Failed(_) => {}
        }
    }

    fn failed(&mut self, object: String, message: String) {
        self.objects.insert(object, Outcome::Failed(message));
    }

    /// The notes on `object` (empty when none).
    pub fn notes_of(&self, object: &str) -> &[String] {
        self.notes.get(object).map_or(&[], Vec::as_slice)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (object, outcome) in &self.objects {
            match outcome {
                Outcome::InSync => writeln!(f, "{object}: in sync")?,
                Outcome::Changed(changes) => writeln!(f, "{object}: {}", changes.join("; "))?,
                Outcome::Failed(message) => writeln!(f, "{object}: FAILED: {message}")?,
            }
        }
        Ok(())
    }
}

/// An error with all its sources, `outer: inner: innermost`, for reports.
pub use pier_runtime::error_chain as chain;

/// The dataplane of one node, working on the host namespace it was given.
///
/// Every method blocks the calling thread (netlink answers are awaited on a private runtime):
/// from async code call it through `tokio::task::spawn_blocking`, never on a runtime worker.
#[derive(Debug, Clone, Default)]
pub struct Dataplane {
    host_netns: Option<PathBuf>,
    deep: bool,
    step_delay: Option<Duration>,
    /// Shared by clones; also serializes applies of one dataplane.
    host: Arc<Mutex<Option<CachedHost>>>,
}

impl Dataplane {
    /// `host_netns`: the namespace file of the node's namespace; `None` is the process's own.
    /// Tests pass a namespace of their own so they never touch the machine's.
    pub fn new(host_netns: Option<PathBuf>) -> Dataplane {
        Dataplane {
            host_netns,
            ..Dataplane::default()
        }
    }

    /// Also verify each fingerprinted veth inside its namespace (one namespace entry each).
    pub fn deep(mut self, deep: bool) -> Dataplane {
        self.deep = deep;
        self
    }

    /// Sleeps after every applied step: only for tests that kill an apply half-way.
    pub fn with_step_delay(mut self, delay: Option<Duration>) -> Dataplane {
        self.step_delay = delay;
        self
    }

    /// The host namespace this dataplane works on.
    pub fn host_netns(&self) -> Option<&Path> {
        self.host_netns.as_deref()
    }

    fn open_host(&self) -> Result<Nl, DataplaneError> {
        Nl::open_in(self.host_netns()).map_err(DataplaneError::HostNamespace)
    }

    /// Runs `work` with the socket in the host namespace, opened once and kept while the
    /// namespace at `host_netns` stays the same one (device and inode of its file). Keeping it
    /// saves a thread start per apply, which on a busy node can wait a scheduler tick. A failure
    /// drops the socket, so the next call starts from a fresh one.
    fn with_host<T>(
        &self,
        work: impl FnOnce(&Nl) -> Result<T, DataplaneError>,
    ) -> Result<T, DataplaneError> {
        let identity = match self.host_netns() {
            Some(path) => Some(
                namespace_identity(path)
                    .ok_or_else(|| DataplaneError::HostNamespaceMissing(path.to_path_buf()))?,
            ),
            None => None,
        };
        // A panic while holding the lock leaves at worst a socket to re-open.
        let mut cached = self.host.lock().unwrap_or_else(PoisonError::into_inner);
        let nl = match cached.take() {
            Some(host) if host.identity == identity => host.nl,
            _ => self.open_host()?,
        };
        let result = work(&nl);
        if result.is_ok() {
            *cached = Some(CachedHost { identity, nl });
        }
        result
    }

    /// What an apply of `state` would change now.
    pub fn plan(&self, state: &NodeState) -> Result<Plan, DataplaneError> {
        state.validate().map_err(DataplaneError::InvalidState)?;
        self.with_host(|host| self.plan_with(host, state, None))
    }

    /// Like [`Dataplane::plan`], but reads back and changes only the endpoints `ids` (plus the
    /// bridges and the firewall table), and collects no garbage. The whole state is still used to
    /// check the endpoints (duplicate addresses and interface names). This is the attach path:
    /// its cost does not grow with the number of endpoints already on the node, where a full
    /// plan dumps every link. A full `apply` (at start and periodically) remains what removes
    /// leftovers.
    pub fn plan_endpoints(&self, state: &NodeState, ids: &[&str]) -> Result<Plan, DataplaneError> {
        validate_scoped(state, ids)?;
        let scope = Scoped::endpoints(ids);
        self.with_host(|host| self.plan_with(host, state, Some(&scope)))
    }

    /// Applies the endpoints `ids` of `state` (see [`Dataplane::plan_endpoints`]).
    pub fn apply_endpoints(
        &self,
        state: &NodeState,
        ids: &[&str],
    ) -> Result<Report, DataplaneError> {
        validate_scoped(state, ids)?;
        let scope = Scoped::endpoints(ids);
        self.with_host(|host| {
            let plan = self.plan_with(host, state, Some(&scope))?;
            Ok(self.execute_with(host, &plan))
        })
    }

    /// What removing links would change: the bridges and the firewall table of `state` (as in a
    /// scoped plan with no endpoint), and a deletion of each of the links `names` that is Pier's
    /// and that `state` does not want. This is the detach path: it reads those links by name
    /// instead of dumping every link, so its cost does not grow with the node's endpoints.
    pub fn plan_removal(&self, state: &NodeState, names: &[&str]) -> Result<Plan, DataplaneError> {
        validate_scoped(state, &[])?;
        let scope = Scoped::removal(names);
        self.with_host(|host| self.plan_with(host, state, Some(&scope)))
    }

    /// Applies [`Dataplane::plan_removal`]: e.g. the departed endpoint's veth and the bridge of its
    /// network, which goes only if no endpoint of `state` still uses it.
    pub fn remove_links(
        &self,
        state: &NodeState,
        names: &[&str],
    ) -> Result<Report, DataplaneError> {
        validate_scoped(state, &[])?;
        let scope = Scoped::removal(names);
        self.with_host(|host| {
            let plan = self.plan_with(host, state, Some(&scope))?;
            Ok(self.execute_with(host, &plan))
        })
    }

    /// The links a plan looks at: all of them, or (scoped) the bridges, the scoped veths and the
    /// links to remove, by name.
    fn read_links(
        host: &Nl,
        state: &NodeState,
        scope: Option<&Scoped<'_>>,
    ) -> Result<Vec<Link>, NetlinkError> {
        let Some(scope) = scope else {
            return host.links();
        };
        let mut names: BTreeSet<String> = BTreeSet::from(["lo".to_owned()]);
        names.extend(
            state
                .networks
                .iter()
                .filter(|n| n.driver == Driver::Bridge)
                .map(NetworkState::bridge_name),
        );
        names.extend(
            state
                .endpoints
                .iter()
                .filter(|e| {
                    scope.endpoints.contains(e.id.as_str())
                        && matches!(e.attachment, Attachment::Bridge(_))
                })
                .map(EndpointState::host_veth_name),
        );
        names.extend(scope.removals.iter().map(|name| (*name).to_owned()));
        let mut links = Vec::new();
        for name in &names {
            links.extend(host.link(name)?);
        }
        Ok(links)
    }

    fn plan_with(
        &self,
        host: &Nl,
        state: &NodeState,
        scope: Option<&Scoped<'_>>,
    ) -> Result<Plan, DataplaneError> {
        let links = Self::read_links(host, state, scope).map_err(DataplaneError::ReadBack)?;
        let addresses = host.v4_addresses().map_err(DataplaneError::ReadBack)?;
        let by_name: HashMap<&str, &Link> = links.iter().map(|l| (l.name.as_str(), l)).collect();
        let by_index: HashMap<u32, &Link> = links.iter().map(|l| (l.index, l)).collect();

        // Writing net.ipv4.ip_forward sets `forwarding` on every link, `lo` included, and `lo`
        // always exists: its setting, read with the links, stands for the node's.
        let forwarding = by_name
            .get("lo")
            .and_then(|lo| lo.inet)
            .is_some_and(|conf| conf.forwarding);

        let mut plan = Plan::default();
        let mut deletes = Vec::new();
        let mut bridges = Vec::new();
        let mut attaches = Vec::new();
        let mut others = Vec::new();

        let networks = state.networks_by_name();
        let wanted_bridges: HashMap<String, &NetworkState> = state
            .networks
            .iter()
            .filter(|n| n.driver == Driver::Bridge)
            .map(|n| (n.bridge_name(), n))
            .collect();
        if !wanted_bridges.is_empty() {
            if forwarding {
                plan.in_sync.insert("node/forwarding".to_owned());
            } else {
                plan.steps.push(Step::EnableForwarding);
            }
        }

        // Bridges.
        for network in state.networks.iter().filter(|n| n.driver == Driver::Bridge) {
            let object = format!("network/{}", network.name);
            let (Some(subnet), Some(gateway)) = (network.subnet, network.gateway) else {
                continue; // validate() rejected this already
            };
            let gateway_net = match Ipv4Net::new(gateway, subnet.prefix_len()) {
                Ok(net) => net,
                Err(_) => continue, // same prefix as a valid subnet: cannot happen
            };
            let name = network.bridge_name();
            let create = Step::CreateBridge {
                network: network.name.clone(),
                bridge: name.clone(),
                gateway: gateway_net,
                mtu: network.mtu,
            };
            match by_name.get(name.as_str()) {
                None => bridges.push(create),
                Some(link) if link.kind != LinkKind::Bridge => {
                    // The name is Pier's by contract; whatever holds it is re-made.
                    deletes.push(Step::DeleteLink {
                        name: name.clone(),
                        index: link.index,
                        reason: "not a bridge".to_owned(),
                    });
                    bridges.push(create);
                }
                Some(link) => {
                    let mut fixes = Vec::new();
                    if link.mtu != Some(network.mtu) {
                        fixes.push(BridgeFix::Mtu(network.mtu));
                    }
                    if !link.up {
                        fixes.push(BridgeFix::Up);
                    }
                    let present: Vec<Ipv4Net> = addresses
                        .iter()
                        .filter(|a| a.index == link.index)
                        .map(|a| a.address)
                        .collect();
                    if !present.contains(&gateway_net) {
                        fixes.push(BridgeFix::AddAddress(gateway_net));
                    }
                    fixes.extend(
                        present
                            .iter()
                            .filter(|a| **a != gateway_net)
                            .map(|a| BridgeFix::RemoveAddress(*a)),
                    );
                    if !link.inet.is_some_and(|conf| conf.route_localnet) {
                        fixes.push(BridgeFix::RouteLocalnet);
                    }
                    if fixes.is_empty() {
                        plan.in_sync.insert(object);
                    } else {
                        bridges.push(Step::FixBridge {
                            network: network.name.clone(),
                            bridge: name.clone(),
                            index: link.index,
                            fixes,
                        });
                    }
                }
            }
        }

        // Endpoints.
        // Only container-mode endpoints look others up by id; most states have few of them.
        let shares = state
            .endpoints
            .iter()
            .any(|e| matches!(e.attachment, Attachment::Shared { .. }));
        let endpoint_ids: HashSet<&str> = if shares {
            state.endpoints.iter().map(|e| e.id.as_str()).collect()
        } else {
            HashSet::new()
        };
        let mut wanted_veths: BTreeSet<String> = BTreeSet::new();
        let mut used_addresses: HashMap<(&str, Ipv4Addr), &str> = HashMap::new();
        let mut used_interfaces: HashMap<(&Netns, &str), &str> = HashMap::new();
        let mut namespace_ids: HashMap<PathBuf, Option<(u64, u64)>> = HashMap::new();
        for (position, endpoint) in state.endpoints.iter().enumerate() {
            let in_scope = scope.is_none_or(|s| s.endpoints.contains(endpoint.id.as_str()));
            if !in_scope {
                // A scoped plan checks its few endpoints against the earlier ones by a scan
                // (`earlier` below) instead of filling maps with every endpoint of the node.
                continue;
            }
            let object = format!("endpoint/{}", endpoint.id);
            let mut problem = |message: String| {
                if in_scope {
                    plan.problems.push(Problem {
                        object: object.clone(),
                        message,
                    });
                }
            };
            match &endpoint.attachment {
                Attachment::Shared { endpoint: target } => {
                    if endpoint_ids.contains(target.as_str()) && target != &endpoint.id {
                        plan.in_sync.insert(object);
                    } else {
                        problem(format!(
                            "shares the namespace of unknown endpoint {target:?}"
                        ));
                    }
                }
                Attachment::Host { network } => match networks.get(network.as_str()) {
                    Some(n) if n.driver == Driver::Host => {
                        plan.in_sync.insert(object);
                    }
                    _ => problem(format!("network {network:?} is not a host network here")),
                },
                Attachment::Null { network } => {
                    if !matches!(networks.get(network.as_str()), Some(n) if n.driver == Driver::Null)
                    {
                        problem(format!("network {network:?} is not a null network here"));
                        continue;
                    }
                    let Some(path) = self.endpoint_netns(endpoint) else {
                        problem("a null endpoint needs a namespace of its own".to_owned());
                        continue;
                    };
                    match loopback_up(&path) {
                        Ok(true) => {
                            plan.in_sync.insert(object);
                        }
                        Ok(false) => others.push(Step::LoopbackUp {
                            endpoint: endpoint.id.clone(),
                            netns: path,
                        }),
                        Err(error) => problem(format!("namespace: {}", chain(&error))),
                    }
                }
                Attachment::Bridge(bridge) => {
                    let host_veth = endpoint.host_veth_name();
                    let existing = by_name.get(host_veth.as_str()).copied();
                    // From here on, a problem also means: leave no stale veth behind.
                    let stale = |reason: &str| {
                        existing
                            .filter(|l| l.kind == LinkKind::Veth)
                            .map(|l| Step::DeleteLink {
                                name: l.name.clone(),
                                index: l.index,
                                reason: reason.to_owned(),
                            })
                    };
                    let Some(network) = networks.get(bridge.network.as_str()) else {
                        problem(format!("unknown network {:?}", bridge.network));
                        deletes.extend(stale("its network is unknown"));
                        continue;
                    };
                    let (Driver::Bridge, Some(subnet), Some(gateway)) =
                        (network.driver, network.subnet, network.gateway)
                    else {
                        problem(format!(
                            "network {:?} is not a bridge network",
                            bridge.network
                        ));
                        deletes.extend(stale("its network is not a bridge network"));
                        continue;
                    };
                    let address = bridge.address;
                    if let Err(message) = check_address(address, subnet, gateway) {
                        problem(message);
                        deletes.extend(stale("its address is invalid"));
                        continue;
                    }
                    // First wins: the same address twice on one network is a problem for the
                    // later endpoint in the state's order, in full and in scoped plans alike.
                    let taken = if scope.is_some() {
                        earlier(&state.endpoints[..position], |b, _| {
                            b.network == bridge.network && b.address == address
                        })
                    } else {
                        used_addresses
                            .insert((bridge.network.as_str(), address), endpoint.id.as_str())
                    };
                    if let Some(other) = taken {
                        used_addresses.insert((bridge.network.as_str(), address), other);
                        problem(format!(
                            "address {address} is in use by endpoint {other:?} on network {:?}",
                            bridge.network
                        ));
                        deletes.extend(stale("its address is in use"));
                        continue;
                    }
                    let Some(mac) = netlink::parse_mac(&bridge.mac) else {
                        problem(format!("invalid MAC address {:?}", bridge.mac));
                        deletes.extend(stale("its MAC is invalid"));
                        continue;
                    };
                    if !valid_interface_name(&bridge.interface) {
                        problem(format!("invalid interface name {:?}", bridge.interface));
                        deletes.extend(stale("its interface name is invalid"));
                        continue;
                    }
                    let Some(path) = self.endpoint_netns(endpoint) else {
                        problem("a bridge endpoint needs a namespace of its own".to_owned());
                        deletes.extend(stale("it has no namespace"));
                        continue;
                    };
                    let taken = if scope.is_some() {
                        earlier(&state.endpoints[..position], |b, netns| {
                            netns == &endpoint.netns && b.interface == bridge.interface
                        })
                    } else {
                        used_interfaces.insert(
                            (&endpoint.netns, bridge.interface.as_str()),
                            endpoint.id.as_str(),
                        )
                    };
                    if let Some(other) = taken {
                        used_interfaces.insert((&endpoint.netns, bridge.interface.as_str()), other);
                        problem(format!(
                            "interface {} in {} is already endpoint {other:?}",
                            bridge.interface,
                            path.display()
                        ));
                        deletes.extend(stale("its interface name is taken"));
                        continue;
                    }
                    let namespace_id = *namespace_ids
                        .entry(path.clone())
                        .or_insert_with(|| namespace_identity(&path));
                    let Some((device, inode)) = namespace_id else {
                        problem(format!("namespace {} does not exist", path.display()));
                        deletes.extend(stale("its namespace is gone"));
                        continue;
                    };
                    wanted_veths.insert(host_veth.clone());
                    let address_net = match Ipv4Net::new(address, subnet.prefix_len()) {
                        Ok(net) => net,
                        Err(_) => continue, // the subnet's own prefix length is valid
                    };
                    let bridge_name = network.bridge_name();
                    let default_gateway = bridge.default_route.then_some(gateway);
                    let fingerprint = fingerprint(&format!(
                        "{bridge_name}|{}|{address_net}|{}|{default_gateway:?}|{}|{device}:{inode}",
                        bridge.interface, bridge.mac, network.mtu
                    ));
                    let bridge_index = by_name
                        .get(bridge_name.as_str())
                        .filter(|l| l.kind == LinkKind::Bridge)
                        .map(|l| l.index);
                    let mut replaces = None;
                    if let Some(link) = existing {
                        let alias = link
                            .alias
                            .as_deref()
                            .and_then(|alias| read_alias(alias, &fingerprint));
                        let fresh = link.kind == LinkKind::Veth
                            && link.up
                            && link.hairpin
                            && link.master.is_some()
                            && link.master == bridge_index
                            && alias.is_some()
                            && (!self.deep
                                || peer_matches(
                                    &path,
                                    &bridge.interface,
                                    address_net,
                                    &mac,
                                    default_gateway,
                                    alias == Some(AliasState::OwnDefaultKept),
                                ));
                        if fresh {
                            if alias == Some(AliasState::OwnDefaultKept) {
                                plan.notes
                                    .entry(object.clone())
                                    .or_default()
                                    .push(OWN_DEFAULT_ROUTE_KEPT.to_owned());
                            }
                            plan.in_sync.insert(object);
                            continue;
                        }
                        if link.kind != LinkKind::Veth {
                            problem(format!(
                                "host link {host_veth} exists and is not Pier's veth (name clash with a foreign link)"
                            ));
                            wanted_veths.remove(&host_veth);
                            continue;
                        }
                        replaces = Some(link.index);
                    }
                    attaches.push(Step::AttachEndpoint(Box::new(Attach {
                        endpoint: endpoint.id.clone(),
                        network: bridge.network.clone(),
                        bridge: bridge_name,
                        netns: path,
                        host_veth,
                        interface: bridge.interface.clone(),
                        address: address_net,
                        mac,
                        default_gateway,
                        mtu: network.mtu,
                        fingerprint,
                        replaces,
                    })));
                }
            }
        }

        // Garbage: Pier-owned links the state does not want; a scoped plan has not read every
        // link, so it looks only at the links it was asked to remove.
        let garbage: Vec<&Link> = match scope {
            None => links.iter().collect(),
            Some(scope) => links
                .iter()
                .filter(|l| scope.removals.contains(l.name.as_str()))
                .collect(),
        };
        if scope.is_some() {
            // Veths of endpoints outside the scope are wanted too (a full plan knows them all).
            let names: BTreeSet<&str> = garbage.iter().map(|l| l.name.as_str()).collect();
            wanted_veths.extend(
                state
                    .endpoints
                    .iter()
                    .filter(|e| matches!(e.attachment, Attachment::Bridge(_)))
                    .map(EndpointState::host_veth_name)
                    .filter(|name| names.contains(name.as_str())),
            );
        }
        let already: BTreeSet<u32> = deletes
            .iter()
            .filter_map(|s| match s {
                Step::DeleteLink { index, .. } => Some(*index),
                _ => None,
            })
            .collect();
        for link in garbage.into_iter().filter(|l| is_owned(l)) {
            if already.contains(&link.index) {
                continue;
            }
            let wanted = match link.kind {
                LinkKind::Bridge => wanted_bridges.contains_key(&link.name),
                _ => wanted_veths.contains(&link.name),
            };
            if !wanted {
                let reason = match (&link.kind, link.master.and_then(|m| by_index.get(&m))) {
                    (LinkKind::Bridge, _) => "no network in the state uses it".to_owned(),
                    (_, Some(master)) => {
                        format!("no endpoint in the state uses it (on {})", master.name)
                    }
                    _ => "no endpoint in the state uses it".to_owned(),
                };
                deletes.push(Step::DeleteLink {
                    name: link.name.clone(),
                    index: link.index,
                    reason,
                });
            }
        }

        // Table `inet pier` is read back the same way. A full plan also finds the other
        // engines' bridges (a scoped one keeps what the kernel has: it does not read every link).
        let host_bridges = if scope.is_none() {
            match host.v4_routes() {
                Ok(routes) => Some(hostnet::host_bridges(&links, &routes)),
                Err(error) => {
                    plan.problems.push(Problem {
                        object: FIREWALL.to_owned(),
                        message: chain(&error),
                    });
                    None
                }
            }
        } else {
            None
        };
        match firewall::plan_with(self.host_netns(), state, host_bridges.as_deref()) {
            Ok(firewall) => plan.firewall = Some(firewall),
            Err(error) => plan.problems.push(Problem {
                object: FIREWALL.to_owned(),
                message: chain(&error),
            }),
        }
        // Other firewalls' iptables accepts are constant and only need repair when someone
        // else's reload took them: a full apply (start, resync) checks them, an attach does not
        // pay for running iptables-save.
        if scope.is_none() {
            match firewall::iptables_plan(self.host_netns()) {
                Ok(changes) => plan.iptables = changes,
                Err(error) => plan.problems.push(Problem {
                    object: IPTABLES.to_owned(),
                    message: chain(&error),
                }),
            }
            match firewall::native_plan(self.host_netns()) {
                Ok(native) => {
                    plan.nftables = native.changes;
                    if !native.notes.is_empty() {
                        plan.notes.insert(NFTABLES.to_owned(), native.notes);
                    }
                }
                Err(error) => plan.problems.push(Problem {
                    object: NFTABLES.to_owned(),
                    message: chain(&error),
                }),
            }
        }

        // Deletions first: they free names, addresses and routes that new objects may reuse.
        plan.steps.extend(deletes);
        plan.steps.extend(bridges);
        plan.steps.extend(attaches);
        plan.steps.extend(others);
        Ok(plan)
    }

    fn endpoint_netns(&self, endpoint: &EndpointState) -> Option<PathBuf> {
        // `Netns::Host` has no file: it is the host namespace, which owns no interface of its own.
        endpoint.netns.path()
    }

    /// Applies `state`: plan against the kernel now, then execute.
    pub fn apply(&self, state: &NodeState) -> Result<Report, DataplaneError> {
        state.validate().map_err(DataplaneError::InvalidState)?;
        self.with_host(|host| {
            let plan = self.plan_with(host, state, None)?;
            Ok(self.execute_with(host, &plan))
        })
    }

    /// Executes a plan made earlier (by `plan`): the kernel may have moved on since, in which case
    /// single steps fail and are reported; a fresh apply converges.
    pub fn execute(&self, plan: &Plan) -> Result<Report, DataplaneError> {
        self.with_host(|host| Ok(self.execute_with(host, plan)))
    }

    fn execute_with(&self, host: &Nl, plan: &Plan) -> Report {
        let mut report = Report::default();
        for object in &plan.in_sync {
            report.objects.insert(object.clone(), Outcome::InSync);
        }
        report.notes.extend(plan.notes.clone());
        for problem in &plan.problems {
            report.failed(problem.object.clone(), problem.message.clone());
        }
        let mut bridge_indexes: HashMap<String, u32> = HashMap::new();
        let mut failed_networks: HashMap<String, String> = HashMap::new();
        for step in &plan.steps {
            let object = step.object();
            if let Step::AttachEndpoint(attach) = step
                && let Some(reason) = failed_networks.get(&attach.network)
            {
                report.failed(
                    object,
                    format!("network {} failed: {reason}", attach.network),
                );
                continue;
            }
            let done = match step {
                Step::AttachEndpoint(attach) => {
                    self.attach(host, attach, &mut bridge_indexes)
                        .map(|attached| {
                            if attached == Attached::OwnDefaultKept {
                                report
                                    .notes
                                    .entry(object.clone())
                                    .or_default()
                                    .push(OWN_DEFAULT_ROUTE_KEPT.to_owned());
                            }
                        })
                }
                _ => self.execute_step(host, step, &mut bridge_indexes),
            };
            match done {
                Ok(()) => report.changed(object, step.to_string()),
                Err(error) => {
                    let message = chain(&error);
                    if let Step::CreateBridge { network, .. } | Step::FixBridge { network, .. } =
                        step
                    {
                        failed_networks.insert(network.clone(), message.clone());
                    }
                    tracing::warn!(%object, error = %message, "dataplane step failed");
                    report.failed(object, message);
                }
            }
            if let Some(delay) = self.step_delay {
                std::thread::sleep(delay);
            }
        }
        // After the links: one atomic batch for the whole table.
        if let Some(firewall) = &plan.firewall {
            if firewall.is_empty() {
                report.objects.insert(FIREWALL.to_owned(), Outcome::InSync);
            } else {
                match firewall::apply(self.host_netns(), firewall) {
                    Ok(()) => {
                        report.changed(FIREWALL.to_owned(), "table inet pier updated".to_owned())
                    }
                    Err(error) => report.failed(FIREWALL.to_owned(), chain(&error)),
                }
            }
        }
        if !plan.iptables.is_empty() {
            match firewall::iptables_apply(self.host_netns(), &plan.iptables) {
                Ok(()) => {
                    for change in &plan.iptables {
                        report.changed(IPTABLES.to_owned(), change.summary.join("; "));
                    }
                }
                Err(error) => report.failed(IPTABLES.to_owned(), chain(&error)),
            }
        }
        if !plan.nftables.is_empty() {
            match firewall::native_apply(self.host_netns(), &plan.nftables) {
                Ok(()) => {
                    for change in &plan.nftables {
                        report.changed(
                            NFTABLES.to_owned(),
                            format!("{}: {}", change.location(), change.summary.join("; ")),
                        );
                    }
                }
                Err(error) => report.failed(NFTABLES.to_owned(), chain(&error)),
            }
        }
        report
    }

    fn execute_step(
        &self,
        host: &Nl,
        step: &Step,
        bridge_indexes: &mut HashMap<String, u32>,
    ) -> Result<(), StepError> {
        match step {
            Step::EnableForwarding => {
                netns::run_in(self.host_netns(), || sysctl::set(sysctl::IP_FORWARD, "1"))
                    .map_err(StepError::Netns)?
                    .map_err(StepError::Sysctl)
            }
            Step::DeleteLink { name, index, .. } => match host.delete_link(*index, name) {
                // Gone already (e.g. the peer's namespace was deleted meanwhile): that is the goal.
                Err(error) if error.errno() == Some(netlink::ENODEV) => Ok(()),
                other => other.map_err(StepError::Netlink),
            },
            Step::CreateBridge {
                bridge,
                gateway,
                mtu,
                ..
            } => {
                host.create_bridge(bridge, *mtu, bridge_mac(bridge))?;
                let index = lookup(host, bridge)?;
                bridge_indexes.insert(bridge.clone(), index);
                host.add_address(index, bridge, *gateway)?;
                self.enable_route_localnet(bridge)
            }
            Step::FixBridge {
                bridge,
                index,
                fixes,
                ..
            } => {
                for fix in fixes {
                    match fix {
                        BridgeFix::Mtu(mtu) => host.set_mtu(*index, bridge, *mtu)?,
                        BridgeFix::Up => host.set_up(*index, bridge)?,
                        BridgeFix::AddAddress(address) => {
                            host.add_address(*index, bridge, *address)?
                        }
                        BridgeFix::RemoveAddress(address) => {
                            host.delete_address(*index, bridge, *address)?
                        }
                        BridgeFix::RouteLocalnet => self.enable_route_localnet(bridge)?,
                    }
                }
                Ok(())
            }
            Step::AttachEndpoint(attach) => self.attach(host, attach, bridge_indexes).map(|_| ()),
            Step::LoopbackUp { netns, .. } => {
                let nl = Nl::open_in(Some(netns)).map_err(StepError::Netlink)?;
                let lo = lookup(&nl, "lo")?;
                nl.set_up(lo, "lo").map_err(StepError::Netlink)
            }
        }
    }

    fn enable_route_localnet(&self, bridge: &str) -> Result<(), StepError> {
        let key = sysctl::route_localnet(bridge);
        netns::run_in(self.host_netns(), move || sysctl::set(&key, "1"))
            .map_err(StepError::Netns)?
            .map_err(StepError::Sysctl)
    }

    fn attach(
        &self,
        host: &Nl,
        attach: &Attach,
        bridge_indexes: &mut HashMap<String, u32>,
    ) -> Result<Attached, StepError> {
        if let Some(index) = attach.replaces {
            match host.delete_link(index, &attach.host_veth) {
                Err(error) if error.errno() == Some(netlink::ENODEV) => {}
                other => other?,
            }
        }
        let master = match bridge_indexes.get(&attach.bridge) {
            Some(index) => *index,
            None => {
                let index = lookup(host, &attach.bridge)?;
                bridge_indexes.insert(attach.bridge.clone(), index);
                index
            }
        };
        let spec = VethSpec {
            host: attach.host_veth.clone(),
            peer: attach.interface.clone(),
            mtu: attach.mtu,
            peer_mac: attach.mac.clone(),
            master,
        };
        if let Err(error) = host.create_veth(&spec, &attach.netns) {
            if error.errno() == Some(netlink::EEXIST) {
                let on_host = host.link(&attach.host_veth).ok().flatten().is_some();
                return Err(StepError::NameClash {
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
                });
            }
            return Err(error.into());
        }
        // From here a failure leaves a veth without fingerprint: the next plan re-makes it.
        let inside = Nl::open_in(Some(&attach.netns))?;
        let peer = lookup(&inside, &attach.interface)?;
        inside.add_address(peer, &attach.interface, attach.address)?;
        inside.set_up(peer, &attach.interface)?;
        let lo = lookup(&inside, "lo")?;
        inside.set_up(lo, "lo")?;
        let mut attached = Attached::AsPlanned;
        if let Some(gateway) = attach.default_gateway {
            // A namespace Pier did not set up may route by a gateway of its own (a container's,
            // a Pod's): the endpoint then adds only its subnet (the address's route), as Docker's
            // `network connect` does. A default route Pier set for another endpoint is replaced.
            if netlink::foreign_default_route(&inside.v4_routes()?).is_some() {
                attached = Attached::OwnDefaultKept;
            } else {
                inside.replace_default_route(peer, &attach.interface, gateway)?;
            }
        }
        let host_index = lookup(host, &attach.host_veth)?;
        host.set_no_ipv6_link_local(host_index, &attach.host_veth)?;
        host.set_hairpin(host_index, &attach.host_veth)?;
        host.set_up(host_index, &attach.host_veth)?;
        let alias = match attached {
            Attached::AsPlanned => attach.fingerprint.clone(),
            Attached::OwnDefaultKept => format!("{} {OWN_DEFAULT_ALIAS}", attach.fingerprint),
        };
        host.set_alias(host_index, &attach.host_veth, &alias)?;
        Ok(attached)
    }

    /// Removes everything Pier owns in the host namespace (veths first, then bridges).
    pub fn reset(&self) -> Result<Report, DataplaneError> {
        self.with_host(|host| self.reset_with(host))
    }

    fn reset_with(&self, host: &Nl) -> Result<Report, DataplaneError> {
        let links = host.links().map_err(DataplaneError::ReadBack)?;
        let mut report = Report::default();
        let mut owned: Vec<&Link> = links.iter().filter(|l| is_owned(l)).collect();
        owned.sort_by_key(|l| l.kind == LinkKind::Bridge);
        for link in owned {
            let object = format!("link/{}", link.name);
            match host.delete_link(link.index, &link.name) {
                Ok(()) => report.changed(object, "deleted".to_owned()),
                Err(error) if error.errno() == Some(netlink::ENODEV) => {
                    report.changed(object, "deleted".to_owned())
                }
                Err(error) => report.failed(object, chain(&error)),
            }
        }
        match firewall::reset(self.host_netns()) {
            Ok(()) => report.changed(FIREWALL.to_owned(), "table inet pier deleted".to_owned()),
            Err(error) => report.failed(FIREWALL.to_owned(), chain(&error)),
        }
        match firewall::iptables_reset(self.host_netns()) {
            Ok(removed) => {
                for change in removed {
                    report.changed(IPTABLES.to_owned(), change.summary.join("; "));
                }
            }
            Err(error) => report.failed(IPTABLES.to_owned(), chain(&error)),
        }
        match firewall::native_reset(self.host_netns()) {
            Ok(removed) => report.changed(
                NFTABLES.to_owned(),
                format!(
                    "Pier's rules removed from {} chain(s) of other nftables tables",
                    removed.len()
                ),
            ),
            Err(error) => report.failed(NFTABLES.to_owned(), chain(&error)),
        }
        Ok(report)
    }
}

/// The host socket a dataplane keeps between calls.
#[derive(Debug)]
struct CachedHost {
    identity: Option<(u64, u64)>,
    nl: Nl,
}

/// What `NodeState::validate` checks, limited to what a scoped plan relies on: the networks
/// (few) and that each scoped endpoint id appears once. Hashing every endpoint id of a large node
/// on every attach cost as much as the rest of the plan; a full apply still validates everything.
fn validate_scoped(state: &NodeState, ids: &[&str]) -> Result<(), DataplaneError> {
    let networks = NodeState {
        networks: state.networks.clone(),
        ..NodeState::default()
    };
    networks.validate().map_err(DataplaneError::InvalidState)?;
    for id in ids {
        if state.endpoints.iter().filter(|e| e.id == *id).count() > 1 {
            return Err(DataplaneError::InvalidState(StateError::DuplicateEndpoint(
                (*id).to_owned(),
            )));
        }
    }
    Ok(())
}

/// What a scoped plan reads back and changes besides the bridges and the firewall table.
#[derive(Debug, Default)]
struct Scoped<'a> {
    /// Endpoints to check and attach.
    endpoints: BTreeSet<&'a str>,
    /// Links to delete if they are Pier's and the state does not want them.
    removals: BTreeSet<&'a str>,
}

impl<'a> Scoped<'a> {
    fn endpoints(ids: &[&'a str]) -> Scoped<'a> {
        Scoped {
            endpoints: ids.iter().copied().collect(),
            ..Scoped::default()
        }
    }

    fn removal(names: &[&'a str]) -> Scoped<'a> {
        Scoped {
            removals: names.iter().copied().collect(),
            ..Scoped::default()
        }
    }
}

/// The first endpoint among `endpoints` with a bridge attachment matching `matches`, by id.
fn earlier(
    endpoints: &[EndpointState],
    matches: impl Fn(&BridgeAttachment, &Netns) -> bool,
) -> Option<&str> {
    endpoints.iter().find_map(|e| match &e.attachment {
        Attachment::Bridge(b) if matches(b, &e.netns) => Some(e.id.as_str()),
        _ => None,
    })
}

/// How an attach went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attached {
    AsPlanned,
    /// The namespace had a default route of its own, which stays.
    OwnDefaultKept,
}

/// What a host veth's alias says about its endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AliasState {
    AsPlanned,
    OwnDefaultKept,
}

/// Reads a host veth's `alias` against the `fingerprint` of the desired configuration; `None`
/// when it is not that configuration's.
fn read_alias(alias: &str, fingerprint: &str) -> Option<AliasState> {
    match alias.strip_prefix(fingerprint)? {
        "" => Some(AliasState::AsPlanned),
        rest if rest.strip_prefix(' ') == Some(OWN_DEFAULT_ALIAS) => {
            Some(AliasState::OwnDefaultKept)
        }
        _ => None,
    }
}

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

fn lookup(nl: &Nl, name: &str) -> Result<u32, NetlinkError> {
    nl.link(name)?
        .map(|l| l.index)
        .ok_or_else(|| NetlinkError::NoSuchLink(name.to_owned()))
}

/// Whether `lo` is up in the namespace at `path`.
fn loopback_up(path: &Path) -> Result<bool, NetlinkError> {
    let nl = Nl::open_in(Some(path))?;
    Ok(nl.link("lo")?.is_some_and(|l| l.up))
}

/// Deep check: the peer inside the namespace has the name, MAC, address, state and default
/// route we made (or, when the attach kept the namespace's own default route, that one is still
/// there).
fn peer_matches(
    path: &Path,
    interface: &str,
    address: Ipv4Net,
    mac: &[u8],
    default_gateway: Option<Ipv4Addr>,
    own_default_kept: bool,
) -> bool {
    let Ok(nl) = Nl::open_in(Some(path)) else {
        return false;
    };
    let Ok(Some(link)) = nl.link(interface) else {
        return false;
    };
    let Ok(addresses) = nl.v4_addresses() else {
        return false;
    };
    let route_ok = match default_gateway {
        None => true,
        Some(_) if own_default_kept => nl
            .v4_routes()
            .is_ok_and(|routes| netlink::foreign_default_route(&routes).is_some()),
        Some(gateway) => nl
            .default_routes()
            .is_ok_and(|routes| routes.contains(&(gateway, link.index))),
    };
    route_ok
        && link.up
        && link.mac.as_deref() == Some(mac)
        && addresses
            .iter()
            .any(|a| a.index == link.index && a.address == address)
}

/// Device and inode of a namespace file: a re-created namespace at the same path differs.
fn namespace_identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

fn check_address(address: Ipv4Addr, subnet: Ipv4Net, gateway: Ipv4Addr) -> Result<(), String> {
    if !subnet.contains(&address) {
        return Err(format!("address {address} is outside subnet {subnet}"));
    }
    if address == gateway {
        return Err(format!("address {address} is the network's gateway"));
    }
    if subnet.prefix_len() < 31 && (address == subnet.network() || address == subnet.broadcast()) {
        return Err(format!(
            "address {address} is the network or broadcast address of {subnet}"
        ));
    }
    Ok(())
}

fn valid_interface_name(name: &str) -> bool {
    // IFNAMSIZ is 16 including the NUL; '/' and whitespace are rejected by the kernel, and `lo`
    // would collide with the namespace's loopback.
    !name.is_empty()
        && name.len() < 16
        && name != "lo"
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
}

/// A stable, locally administered unicast MAC for a bridge, from its name (`02:` + FNV-1a).
fn bridge_mac(bridge: &str) -> [u8; 6] {
    let hash = fnv1a(bridge).to_be_bytes();
    [0x02, hash[0], hash[1], hash[2], hash[3], hash[4]]
}

fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// `pier1 <16 hex>`: FNV-1a of the description; stable across builds (unlike std's hasher).
fn fingerprint(description: &str) -> String {
    format!("pier1 {:016x}", fnv1a(description))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dataplane_can_be_shared_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Dataplane>();
    }

    #[test]
    fn ownership_patterns_are_strict() {
        assert!(is_pier_bridge_name("pier-0a1b2c3d"));
        assert!(!is_pier_bridge_name("pier-0a1b2c3"));
        assert!(!is_pier_bridge_name("pier-0A1B2C3D"));
        assert!(!is_pier_bridge_name("pier-br0"));
        assert!(is_pier_veth_name("pv0123456789"));
        assert!(!is_pier_veth_name("pvnet0"));
        assert!(!is_pier_veth_name("pv01234567890"));
    }

    #[test]
    fn addresses_are_checked_against_the_subnet() {
        let subnet: Ipv4Net = "172.18.0.0/16".parse().expect("subnet");
        let gateway = Ipv4Addr::new(172, 18, 0, 1);
        assert!(check_address(Ipv4Addr::new(172, 18, 0, 2), subnet, gateway).is_ok());
        assert!(check_address(gateway, subnet, gateway).is_err());
        assert!(check_address(Ipv4Addr::new(172, 19, 0, 2), subnet, gateway).is_err());
        assert!(check_address(Ipv4Addr::new(172, 18, 255, 255), subnet, gateway).is_err());
    }

    #[test]
    fn interface_names_fit_the_kernel() {
        assert!(valid_interface_name("eth0"));
        assert!(!valid_interface_name("lo"));
        assert!(!valid_interface_name("a-very-long-name0"));
        assert!(!valid_interface_name("a/b"));
    }

    #[test]
    fn bridge_macs_are_local_unicast_and_stable() {
        let mac = bridge_mac("pier-0a1b2c3d");
        assert_eq!(mac[0], 0x02);
        assert_eq!(mac, bridge_mac("pier-0a1b2c3d"));
        assert_ne!(mac, bridge_mac("pier-0a1b2c3e"));
    }

    #[test]
    fn an_alias_is_the_fingerprint_and_what_the_attach_kept() {
        let print = fingerprint("x");
        assert_eq!(read_alias(&print, &print), Some(AliasState::AsPlanned));
        assert_eq!(
            read_alias(&format!("{print} {OWN_DEFAULT_ALIAS}"), &print),
            Some(AliasState::OwnDefaultKept)
        );
        assert_eq!(read_alias(&fingerprint("y"), &print), None);
        assert_eq!(read_alias(&format!("{print} other"), &print), None);
        assert_eq!(
            read_alias(&format!("{print}{OWN_DEFAULT_ALIAS}"), &print),
            None
        );
        assert_eq!(read_alias("", &print), None);
    }

    #[test]
    fn fingerprints_are_stable() {
        assert_eq!(fingerprint("x"), fingerprint("x"));
        assert_ne!(fingerprint("x"), fingerprint("y"));
        assert!(fingerprint("x").starts_with("pier1 "));
    }
}
