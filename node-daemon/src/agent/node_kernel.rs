//! The node's kernel as the agent uses it, behind one trait: the real node ([`RealKernel`]) or an
//! in-memory one ([`super::fake::FakeKernel`]) that lets the controllers run against an API
//! server in ordinary tests.
//!
//! Every method blocks (netlink, mounts, procfs): the agent calls them on a blocking thread. What
//! to do (which namespaces, which ports, which scope) stays in the agent; the kernel only does it.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use super::AgentConfig;
use crate::dataplane::Scope;
use crate::dataplane::{Dataplane, DataplaneError, Report};
use crate::kernel::host_ports::{self, HostPort, Opened, Refused};
use crate::kernel::hostnet::HostSubnet;
use crate::kernel::named_netns::{NamedNetns, NamedNetnsError};
use crate::kernel::netlink::NetlinkError;
use crate::kernel::podns::PodNetnsError;
use crate::kernel::tunnel::{Tunnel, TunnelError};
use crate::state::NodeState;

/// A held host port: the socket, kept open until dropped (see [`crate::kernel::host_ports`]).
pub type HeldPort = Box<dyn Send>;

/// The kernel work the node agent does.
pub trait NodeKernel: Send + Sync {
    /// Converges the node's links and firewall on `state` within `scope`.
    fn apply(&self, state: &NodeState, scope: &Scope) -> Result<Report, DataplaneError>;

    /// Opens `ports` in the node's namespace, one outcome per port, in order.
    fn open_host_ports(&self, ports: &[HostPort]) -> Vec<Opened<HeldPort>>;

    /// Creates the named namespace `name` unless it exists; `true` when it was created.
    fn ensure_named_netns(&self, name: &str) -> Result<bool, NamedNetnsError>;

    /// Removes the named namespace `name` if Pier created it; `true` when it was removed.
    fn remove_named_netns(&self, name: &str) -> Result<bool, NamedNetnsError>;

    /// The subnets the node uses for things Pier does not own.
    fn host_subnets(&self) -> Result<Vec<HostSubnet>, NetlinkError>;

    /// The node's tunnel for overlay networks: `given`, or the default route's interface's
    /// address, with that interface's MTU.
    fn tunnel(&self, given: Option<Ipv4Addr>) -> Result<Tunnel, TunnelError>;

    /// The network namespace of the Pod with uid `pod_uid`, if one of its processes runs here.
    fn find_pod_netns(&self, pod_uid: &str) -> Result<Option<PathBuf>, PodNetnsError>;

    /// Whether a namespace found earlier (a Pod's) is still there.
    fn netns_exists(&self, path: &Path) -> bool;
}

/// The node's own kernel.
#[derive(Debug)]
pub struct RealKernel {
    dataplane: Dataplane,
    named: NamedNetns,
    host_netns: Option<PathBuf>,
    proc_root: PathBuf,
}

impl RealKernel {
    /// The kernel of the node `config` describes (its namespace, procfs and state directory).
    pub fn new(config: &AgentConfig) -> RealKernel {
        RealKernel {
            dataplane: Dataplane::new(config.host_netns.clone()),
            named: NamedNetns::new(pier_crds::names::NETNS_DIR, &config.state_dir),
            host_netns: config.host_netns.clone(),
            proc_root: config.proc_root.clone(),
        }
    }
}

impl NodeKernel for RealKernel {
    fn apply(&self, state: &NodeState, scope: &Scope) -> Result<Report, DataplaneError> {
        self.dataplane.apply(state, scope)
    }

    /// In the node's namespace (`None`: the process's own, where this blocking thread already
    /// is).
    fn open_host_ports(&self, ports: &[HostPort]) -> Vec<Opened<HeldPort>> {
        let open_all = |ports: Vec<HostPort>| -> Vec<Opened<HeldPort>> {
            ports
                .iter()
                .map(|port| {
                    Opened::from_result(
                        host_ports::open(port).map(|socket| Box::new(socket) as HeldPort),
                    )
                })
                .collect()
        };
        match self.host_netns.as_deref() {
            None => open_all(ports.to_vec()),
            Some(path) => {
                let owned = ports.to_vec();
                crate::kernel::netns::run_in(Some(path), move || open_all(owned)).unwrap_or_else(
                    |error| {
                        let message = pier_runtime::error_chain(&error);
                        ports
                            .iter()
                            .map(|_| Opened::Refused(Refused::Failed(message.clone())))
                            .collect()
                    },
                )
            }
        }
    }

    fn ensure_named_netns(&self, name: &str) -> Result<bool, NamedNetnsError> {
        self.named.ensure(name)
    }

    fn remove_named_netns(&self, name: &str) -> Result<bool, NamedNetnsError> {
        self.named.remove_if_created(name)
    }

    fn host_subnets(&self) -> Result<Vec<HostSubnet>, NetlinkError> {
        crate::kernel::hostnet::subnets_in_use_in(self.host_netns.as_deref())
    }

    fn tunnel(&self, given: Option<Ipv4Addr>) -> Result<Tunnel, TunnelError> {
        crate::kernel::tunnel::detect_in(self.host_netns.as_deref(), given)
    }

    fn find_pod_netns(&self, pod_uid: &str) -> Result<Option<PathBuf>, PodNetnsError> {
        crate::kernel::podns::find_pod_netns(&self.proc_root, pod_uid)
    }

    fn netns_exists(&self, path: &Path) -> bool {
        path.exists()
    }
}
