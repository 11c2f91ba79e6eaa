//! The dataplane: make the kernel of one node match a [`NodeState`].
//!
//! It has the firewall's shape. A plan reads what the kernel has *now* (`snapshot`: links,
//! addresses and sysctls of the host namespace; the namespaces of the endpoints that need it),
//! then diffs it against the desired state (`diff`, pure, one module per driver) into a [`Plan`]
//! of [`Step`]s (`plan`), adding what table `inet pier` needs (`tables`). An apply executes the
//! plan with the fewest changes it can (`execute`) and reports per object ([`Report`] by
//! [`ObjectKey`]): one endpoint failing (missing namespace, address in use, a name clash with a
//! foreign link) does not stop the others. Nothing is remembered between runs, so a restart, a
//! crash or a `kill -9` in the middle of an apply converges on the next apply.
//! [`Dataplane::reset`] removes everything Pier owns.
//!
//! A [`Scope`] says which part of the node a plan reads and changes: the attach path reads the
//! bridges and the new endpoint's veth by name, the detach path the links to remove, the overlay
//! path (endpoints on other nodes changed) only the overlay networks' bridges and VXLAN devices
//! with their FDB and neighbour entries, a full plan everything.
//!
//! Both families: a network has IPv4, IPv6 or both. Its bridge gets the gateway address of
//! each, an endpoint's interface its address of each and, when it carries the default route, a
//! default route via each gateway; IPv6 addresses skip duplicate address detection (usable at
//! once), IPv6 is turned on in a namespace that has it off, and the node forwards IPv6 once a
//! network has it (see [`crate::kernel::sysctl`] for the sysctls and router advertisements).
//! Overlay devices get a permanent neighbour entry per remote address of either family.
//!
//! Ownership ([`pier_crds::names`]): bridges `pier-` + 8 hex digits, host-side veths `pv` + 10 hex
//! digits, VXLAN devices `pvx` + 8 hex digits. Links matching no pattern are never touched.
//!
//! The links a plan deletes go together, in one kernel request (`bulk`): deleting them one by
//! one costs the kernel's grace periods once per link.
//!
//! ## How a veth is known to be in sync without entering every namespace
//! When an endpoint's veth is fully configured (peer named, addressed, routed, up), the last step
//! writes a fingerprint of its desired configuration — including the identity (device and inode)
//! of the target namespace — into the host-side veth's alias. The plan compares that alias, the
//! bridge it is enslaved to and its up flag, all read with the host namespace's links. A veth
//! whose apply was interrupted has no (or an old) fingerprint and is re-created; a veth whose
//! namespace was deleted disappears with it; one whose namespace file now names another namespace
//! has a stale fingerprint. This keeps one attach cheap at 1000 endpoints (no per-namespace round
//! trips), at the price of not noticing someone re-addressing `eth0` by hand inside a container;
//! [`Dataplane::deep`] turns on that check (it enters every namespace).

mod alias;
mod bulk;
mod diff;
mod execute;
mod names;
mod plan;
mod report;
mod reset;
mod scope;
mod snapshot;
mod tables;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

pub use diff::diff;
pub use plan::{Attach, BridgeFix, CreateVxlan, Plan, Problem, Step, VxlanFix};
pub use report::{OWN_DEFAULT_ROUTE_KEPT, ObjectKey, Outcome, Report};
pub use scope::Scope;
pub use snapshot::{NamespaceIdentity, OverlayEntries, Peer, Snapshot};

use crate::kernel::netlink::{NetlinkError, Nl};
use crate::state::{NodeState, StateError};
use execute::Executor;
use snapshot::namespace_identity;

/// A failure that stops the whole plan or apply (as opposed to one object's failure in a
/// [`Report`]).
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

/// The host socket a dataplane keeps between calls.
#[derive(Debug)]
struct CachedHost {
    identity: Option<(u64, u64)>,
    nl: Nl,
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

    /// What an apply of `state` within `scope` would change now.
    pub fn plan(&self, state: &NodeState, scope: &Scope) -> Result<Plan, DataplaneError> {
        scope.validate(state)?;
        self.with_host(|host| self.plan_with(host, state, scope))
    }

    /// Applies `state` within `scope`: plan against the kernel now, then execute.
    pub fn apply(&self, state: &NodeState, scope: &Scope) -> Result<Report, DataplaneError> {
        scope.validate(state)?;
        self.with_host(|host| {
            let plan = self.plan_with(host, state, scope)?;
            let mut report = self.executor(host).run(&plan);
            if plan.steps.iter().any(|s| matches!(s, Step::CreateVxlan(_))) {
                // The table guards only the VXLAN ids whose device exists (tables.rs): the
                // devices just made join it now, not at the next apply.
                let snapshot = Snapshot::read(host, state, &Scope::Overlay, false)
                    .map_err(DataplaneError::ReadBack)?;
                let mut guard = Plan::default();
                tables::plan(
                    self.host_netns(),
                    &snapshot,
                    state,
                    &Scope::Overlay,
                    &mut guard,
                );
                report.absorb(self.executor(host).run(&guard));
            }
            Ok(report)
        })
    }

    /// Executes a plan made earlier (by `plan`): the kernel may have moved on since, in which case
    /// single steps fail and are reported; a fresh apply converges.
    pub fn execute(&self, plan: &Plan) -> Result<Report, DataplaneError> {
        self.with_host(|host| Ok(self.executor(host).run(plan)))
    }

    /// Removes everything Pier owns in the host namespace (its links in one request: see
    /// `bulk`).
    pub fn reset(&self) -> Result<Report, DataplaneError> {
        self.with_host(|host| reset::reset(host, self.host_netns()))
    }

    /// The links Pier owns in the host namespace now (what `reset` would delete), for
    /// `pier status`.
    pub fn owned_links(&self) -> Result<Vec<crate::kernel::netlink::Link>, DataplaneError> {
        self.with_host(|host| {
            let links = host.links().map_err(DataplaneError::ReadBack)?;
            Ok(links.into_iter().filter(diff::is_owned).collect())
        })
    }

    /// Read, diff, and the firewall's part.
    fn plan_with(
        &self,
        host: &Nl,
        state: &NodeState,
        scope: &Scope,
    ) -> Result<Plan, DataplaneError> {
        let snapshot =
            Snapshot::read(host, state, scope, self.deep).map_err(DataplaneError::ReadBack)?;
        let mut plan = diff(&snapshot, state, scope);
        tables::plan(self.host_netns(), &snapshot, state, scope, &mut plan);
        Ok(plan)
    }

    fn executor<'a>(&'a self, host: &'a Nl) -> Executor<'a> {
        Executor {
            host,
            host_netns: self.host_netns(),
            step_delay: self.step_delay,
        }
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
            _ => Nl::open_in(self.host_netns()).map_err(DataplaneError::HostNamespace)?,
        };
        let result = work(&nl);
        if result.is_ok() {
            *cached = Some(CachedHost { identity, nl });
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dataplane_can_be_shared_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Dataplane>();
    }
}
