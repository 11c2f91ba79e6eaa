//! An in-memory [`NodeKernel`]: the node agent's controllers run against an API server with no
//! kernel work and no root, and tests look at what the node would have.
//!
//! It keeps what a node has (attached endpoints, Pier's links, the published ports, held host
//! ports, named namespaces, Pods' namespaces, the host's own subnets), records every apply with
//! its scope and every link removal with its time, and fails where told to: one endpoint's attach
//! or detach, a host port some process of the node holds. Links go and come as the real
//! dataplane's do: by name, a veth per bridge endpoint and a bridge per bridge network.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::build::endpoint_key;
use super::context::lock;
use super::node_kernel::{HeldPort, NodeKernel};
use crate::dataplane::{DataplaneError, ObjectKey, Outcome, Report, Scope};
use crate::kernel::host_ports::{HostPort, Opened, Refused};
use crate::kernel::hostnet::HostSubnet;
use crate::kernel::named_netns::NamedNetnsError;
use crate::kernel::netlink::NetlinkError;
use crate::kernel::podns::PodNetnsError;
use crate::kernel::tunnel::{Tunnel, TunnelError};
use crate::state::{Attachment, EndpointState, NodeState, PublishedPort};

/// The fake node's tunnel address when none is given (TEST-NET-1).
pub const FAKE_TUNNEL: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

/// One apply the agent made: the scope, the state it was given (ports it could not hold
/// already left out) and what the fake reported.
#[derive(Debug, Clone)]
pub struct Applied {
    pub scope: Scope,
    pub state: NodeState,
    pub report: Report,
}

/// One link the agent removed, and when.
#[derive(Debug, Clone)]
pub struct Removed {
    pub link: String,
    pub at: Instant,
}

/// The node the fake has.
#[derive(Debug, Default)]
struct Node {
    /// Attached endpoints by id, as last applied.
    endpoints: BTreeMap<String, EndpointState>,
    /// Pier's links: bridges and host-side veths.
    links: BTreeSet<String>,
    /// What table `inet pier` publishes.
    published: Vec<PublishedPort>,
    applied: Vec<Applied>,
    removed: Vec<Removed>,
    named_netns: BTreeSet<String>,
    /// Pods' namespaces by Pod uid.
    pods: HashMap<String, PathBuf>,
    host_subnets: Vec<HostSubnet>,
    /// Endpoint id → the message its attach fails with.
    attach_failures: HashMap<String, String>,
    /// Endpoint id → the message the removal of its veth fails with.
    detach_failures: HashMap<String, String>,
    /// Host ports a process of the node listens on.
    ports_in_use: BTreeSet<HostPort>,
    /// Whether applies scoped to endpoints (attaches) fail as a whole, as when the host
    /// namespace cannot be opened; full and other applies go on.
    attach_applies_fail: bool,
    /// How long each apply takes, as a real kernel's does (none by default).
    apply_time: Duration,
    /// How long making sure a named namespace exists takes (none by default).
    netns_time: Duration,
}

/// An in-memory node kernel (see the module's documentation).
#[derive(Debug, Default)]
pub struct FakeKernel {
    node: Mutex<Node>,
    /// The host ports held by the agent: a port leaves when the agent drops its socket.
    held: Arc<Mutex<BTreeSet<HostPort>>>,
}

/// The fake's socket: holds its port until dropped.
struct HeldSocket {
    port: HostPort,
    held: Arc<Mutex<BTreeSet<HostPort>>>,
}

impl Drop for HeldSocket {
    fn drop(&mut self) {
        lock(&self.held).remove(&self.port);
    }
}

impl FakeKernel {
    /// An empty node: no links, no ports in use, no Pods, no subnets of its own.
    pub fn new() -> FakeKernel {
        FakeKernel::default()
    }

    /// The endpoint `id` as attached, if it is.
    pub fn attached(&self, id: &str) -> Option<EndpointState> {
        lock(&self.node).endpoints.get(id).cloned()
    }

    /// Pier's links on the node (bridges and host-side veths).
    pub fn links(&self) -> BTreeSet<String> {
        lock(&self.node).links.clone()
    }

    /// The ports table `inet pier` publishes.
    pub fn published(&self) -> Vec<PublishedPort> {
        lock(&self.node).published.clone()
    }

    /// The host ports the agent holds open.
    pub fn held_ports(&self) -> BTreeSet<HostPort> {
        lock(&self.held).clone()
    }

    /// Every apply so far, oldest first.
    pub fn applied(&self) -> Vec<Applied> {
        lock(&self.node).applied.clone()
    }

    /// Every link removal so far, oldest first.
    pub fn removed(&self) -> Vec<Removed> {
        lock(&self.node).removed.clone()
    }

    /// The named namespaces that exist.
    pub fn named_netns(&self) -> BTreeSet<String> {
        lock(&self.node).named_netns.clone()
    }

    /// Makes every apply take `time`, as work in a real kernel does.
    pub fn take_for_each_apply(&self, time: Duration) {
        lock(&self.node).apply_time = time;
    }

    /// Makes every check or creation of a named namespace take `time`, as the kernel's does.
    pub fn take_for_each_namespace(&self, time: Duration) {
        lock(&self.node).netns_time = time;
    }

    /// Makes the attach of endpoint `id` fail with `message` (`None`: succeed again).
    pub fn fail_attach(&self, id: &str, message: Option<&str>) {
        set_failure(&mut lock(&self.node).attach_failures, id, message);
    }

    /// Makes every apply scoped to endpoints (an attach's) fail as a whole, or not.
    pub fn fail_attach_applies(&self, fail: bool) {
        lock(&self.node).attach_applies_fail = fail;
    }

    /// Makes the removal of endpoint `id`'s veth fail with `message` (`None`: succeed again).
    pub fn fail_detach(&self, id: &str, message: Option<&str>) {
        set_failure(&mut lock(&self.node).detach_failures, id, message);
    }

    /// A process of the node listens on `port` from now on.
    pub fn use_port(&self, port: HostPort) {
        lock(&self.node).ports_in_use.insert(port);
    }

    /// The process listening on `port` is gone.
    pub fn release_port(&self, port: &HostPort) {
        lock(&self.node).ports_in_use.remove(port);
    }

    /// The Pod with uid `uid` runs here, in the namespace at `netns`.
    pub fn add_pod(&self, uid: &str, netns: impl Into<PathBuf>) {
        lock(&self.node).pods.insert(uid.to_owned(), netns.into());
    }

    /// The node's own subnets from now on (what the next resync reads).
    pub fn set_host_subnets(&self, subnets: Vec<HostSubnet>) {
        lock(&self.node).host_subnets = subnets;
    }

    /// Deletes endpoint `id`'s interface behind the agent's back (its veth, for a bridge
    /// endpoint), as someone with `ip link del` would.
    pub fn delete_by_hand(&self, id: &str) {
        let mut node = lock(&self.node);
        if let Some(endpoint) = node.endpoints.remove(id) {
            node.links.remove(&endpoint.host_veth_name());
        }
    }
}

fn set_failure(failures: &mut HashMap<String, String>, id: &str, message: Option<&str>) {
    match message {
        Some(message) => failures.insert(id.to_owned(), message.to_owned()),
        None => failures.remove(id),
    };
}

/// The links `state` wants: a bridge per bridge network, a veth per bridge endpoint.
fn wanted_links(state: &NodeState) -> BTreeSet<String> {
    let bridges = state
        .networks
        .iter()
        .filter(|n| n.driver.has_bridge())
        .map(|n| n.bridge_name());
    let veths = state
        .endpoints
        .iter()
        .filter(|e| matches!(e.attachment, Attachment::Bridge(_)))
        .map(EndpointState::host_veth_name);
    bridges.chain(veths).collect()
}

/// `Changed` with `what`, or `InSync` when nothing changed.
fn outcome(changed: bool, what: &str) -> Outcome {
    if changed {
        Outcome::Changed(vec![what.to_owned()])
    } else {
        Outcome::InSync
    }
}

impl Node {
    fn attach(&mut self, endpoint: &EndpointState, report: &mut Report) {
        let key = endpoint_key(&endpoint.id);
        if let Some(message) = self.attach_failures.get(&endpoint.id) {
            report.objects.insert(key, Outcome::Failed(message.clone()));
            return;
        }
        let veth =
            matches!(endpoint.attachment, Attachment::Bridge(_)).then(|| endpoint.host_veth_name());
        let present = self.endpoints.get(&endpoint.id) == Some(endpoint)
            && veth.as_ref().is_none_or(|veth| self.links.contains(veth));
        self.endpoints.insert(endpoint.id.clone(), endpoint.clone());
        self.links.extend(veth);
        report.objects.insert(key, outcome(!present, "attached"));
    }

    /// Removes `link` unless `wanted` has it (or the removal is told to fail), with the
    /// endpoint it belonged to.
    fn remove(&mut self, link: &str, wanted: &BTreeSet<String>, report: &mut Report) {
        if wanted.contains(link) {
            return;
        }
        let owner = self
            .endpoints
            .values()
            .find(|e| e.host_veth_name() == link)
            .map(|e| e.id.clone());
        let key = ObjectKey::Link(link.to_owned());
        if let Some(message) = owner.as_ref().and_then(|id| self.detach_failures.get(id)) {
            report.objects.insert(key, Outcome::Failed(message.clone()));
            return;
        }
        if let Some(id) = owner {
            self.endpoints.remove(&id);
        }
        if self.links.remove(link) {
            self.removed.push(Removed {
                link: link.to_owned(),
                at: Instant::now(),
            });
            report.objects.insert(key, outcome(true, "deleted"));
        }
    }
}

impl NodeKernel for FakeKernel {
    fn apply(&self, state: &NodeState, scope: &Scope) -> Result<Report, DataplaneError> {
        let (apply_time, attach_applies_fail) = {
            let node = lock(&self.node);
            (node.apply_time, node.attach_applies_fail)
        };
        std::thread::sleep(apply_time);
        if attach_applies_fail && matches!(scope, Scope::Endpoints(_)) {
            return Err(DataplaneError::HostNamespaceMissing(PathBuf::from(
                "/run/netns/fake-node",
            )));
        }
        let mut node = lock(&self.node);
        let node = &mut *node;
        let mut report = Report::default();
        for network in state.networks.iter().filter(|n| n.driver.has_bridge()) {
            let created = node.links.insert(network.bridge_name());
            report.objects.insert(
                ObjectKey::network(&network.name),
                outcome(created, "bridge created"),
            );
        }
        let in_scope = |endpoint: &EndpointState| scope.has_endpoint(&endpoint.id);
        for endpoint in state.endpoints.iter().filter(|e| in_scope(e)) {
            node.attach(endpoint, &mut report);
        }
        let wanted = wanted_links(state);
        let candidates: Vec<String> = match scope {
            Scope::Full => node.links.iter().cloned().collect(),
            Scope::Removal(links) => links.clone(),
            Scope::Endpoints(_) | Scope::Overlay => Vec::new(),
        };
        for link in candidates {
            node.remove(&link, &wanted, &mut report);
        }
        if matches!(scope, Scope::Full) {
            // Endpoints with no link of their own (null, host, shared) go with the state.
            let ids: BTreeSet<&str> = state.endpoints.iter().map(|e| e.id.as_str()).collect();
            node.endpoints.retain(|id, _| ids.contains(id.as_str()));
        }
        let table_changed = node.published != state.ports;
        node.published = state.ports.clone();
        report.objects.insert(
            ObjectKey::Firewall,
            outcome(table_changed, "ports rewritten"),
        );
        node.applied.push(Applied {
            scope: scope.clone(),
            state: state.clone(),
            report: report.clone(),
        });
        Ok(report)
    }

    fn open_host_ports(&self, ports: &[HostPort]) -> Vec<Opened<HeldPort>> {
        let in_use = lock(&self.node).ports_in_use.clone();
        let mut held = lock(&self.held);
        ports
            .iter()
            .map(|port| {
                if in_use.contains(port) || !held.insert(*port) {
                    return Opened::Refused(Refused::InUse);
                }
                Opened::Held(Box::new(HeldSocket {
                    port: *port,
                    held: Arc::clone(&self.held),
                }) as HeldPort)
            })
            .collect()
    }

    fn ensure_named_netns(&self, name: &str) -> Result<bool, NamedNetnsError> {
        let netns_time = lock(&self.node).netns_time;
        std::thread::sleep(netns_time);
        Ok(lock(&self.node).named_netns.insert(name.to_owned()))
    }

    fn remove_named_netns(&self, name: &str) -> Result<bool, NamedNetnsError> {
        Ok(lock(&self.node).named_netns.remove(name))
    }

    fn host_subnets(&self) -> Result<Vec<HostSubnet>, NetlinkError> {
        Ok(lock(&self.node).host_subnets.clone())
    }

    /// The given address, else [`FAKE_TUNNEL`], on a 1500-byte underlay.
    fn tunnel(&self, given: Option<Ipv4Addr>) -> Result<Tunnel, TunnelError> {
        Ok(Tunnel {
            address: given.unwrap_or(FAKE_TUNNEL),
            underlay_mtu: 1500,
        })
    }

    fn find_pod_netns(&self, pod_uid: &str) -> Result<Option<PathBuf>, PodNetnsError> {
        Ok(lock(&self.node).pods.get(pod_uid).cloned())
    }

    fn netns_exists(&self, path: &Path) -> bool {
        lock(&self.node).pods.values().any(|p| p == path)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::state::{BridgeAttachment, Driver, Netns, NetworkState, Protocol};

    fn state() -> NodeState {
        NodeState {
            networks: vec![NetworkState {
                name: "web".into(),
                uid: "net-uid".into(),
                driver: Driver::Bridge,
                subnet: Some("10.1.0.0/24".parse().expect("subnet")),
                gateway: Some(Ipv4Addr::new(10, 1, 0, 1)),
                mtu: 1500,
                internal: false,
                dns: true,
                vxlan_id: None,
                subnet6: None,
                gateway6: None,
            }],
            endpoints: vec![EndpointState {
                id: "default/a".into(),
                uid: "ep-uid".into(),
                name: "a".into(),
                aliases: Vec::new(),
                netns: Netns::Named("a".into()),
                attachment: Attachment::Bridge(BridgeAttachment {
                    network: "web".into(),
                    interface: "eth0".into(),
                    address: Some(Ipv4Addr::new(10, 1, 0, 2)),
                    address6: None,
                    mac: "02:42:0a:01:00:02".into(),
                    default_route: true,
                }),
            }],
            ports: Vec::new(),
            ..NodeState::default()
        }
    }

    fn port(number: u16) -> HostPort {
        HostPort {
            ip: Ipv4Addr::UNSPECIFIED.into(),
            protocol: Protocol::Tcp,
            port: number,
        }
    }

    #[test]
    fn attach_detach_and_repair_by_link() {
        let kernel = FakeKernel::new();
        let state = state();
        let veth = state.endpoints[0].host_veth_name();
        let scope = Scope::Endpoints(vec!["default/a".into()]);
        let report = kernel.apply(&state, &scope).expect("the fake applies");
        assert!(matches!(
            report.objects.get(&ObjectKey::endpoint("default/a")),
            Some(Outcome::Changed(_))
        ));
        assert!(kernel.links().contains(&veth));
        let again = kernel.apply(&state, &scope).expect("the fake applies");
        assert_eq!(
            again.objects.get(&ObjectKey::endpoint("default/a")),
            Some(&Outcome::InSync)
        );

        kernel.delete_by_hand("default/a");
        assert!(kernel.attached("default/a").is_none());
        kernel
            .apply(&state, &Scope::Full)
            .expect("the fake applies");
        assert!(kernel.attached("default/a").is_some());

        let gone = NodeState {
            endpoints: Vec::new(),
            ..state.clone()
        };
        kernel.fail_detach("default/a", Some("busy"));
        let refused = kernel
            .apply(&gone, &Scope::Removal(vec![veth.clone()]))
            .expect("the fake applies");
        assert_eq!(
            refused.objects.get(&ObjectKey::Link(veth.clone())),
            Some(&Outcome::Failed("busy".into()))
        );
        kernel.fail_detach("default/a", None);
        kernel
            .apply(&gone, &Scope::Removal(vec![veth.clone()]))
            .expect("the fake applies");
        assert!(kernel.attached("default/a").is_none());
        assert_eq!(
            kernel.removed().iter().map(|r| &r.link).collect::<Vec<_>>(),
            vec![&veth]
        );
        assert_eq!(kernel.applied().len(), 5);
    }

    #[test]
    fn attach_failures_are_reported_per_endpoint() {
        let kernel = FakeKernel::new();
        kernel.fail_attach("default/a", Some("no such namespace"));
        let report = kernel
            .apply(&state(), &Scope::Full)
            .expect("the fake applies");
        assert_eq!(
            report.objects.get(&ObjectKey::endpoint("default/a")),
            Some(&Outcome::Failed("no such namespace".into()))
        );
        assert!(kernel.attached("default/a").is_none());
    }

    #[test]
    fn ports_in_use_are_refused_and_held_ports_are_released_on_drop() {
        let kernel = FakeKernel::new();
        kernel.use_port(port(80));
        let opened = kernel.open_host_ports(&[port(80), port(81)]);
        assert!(matches!(opened[0], Opened::Refused(Refused::InUse)));
        assert!(matches!(opened[1], Opened::Held(_)));
        assert_eq!(kernel.held_ports(), BTreeSet::from([port(81)]));
        // Held once: a second open of the same port is refused, as a second bind would be.
        assert!(matches!(
            kernel.open_host_ports(&[port(81)])[0],
            Opened::Refused(Refused::InUse)
        ));
        drop(opened);
        assert!(kernel.held_ports().is_empty());
    }
}
