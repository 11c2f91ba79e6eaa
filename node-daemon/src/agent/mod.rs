//! The node agent (`pier node`): watches the API for what belongs on this node, builds the
//! NodeState, drives the dataplane and DNS, and reports `Attached` / `Published` (DESIGN.md §2).
//!
//! INTERFACE SKELETON (session 3 coordination): the signatures below are the contract `pier up`
//! (src/up.rs) and the whole-system tests build against. The body is being written now.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::dns::DnsConfig;

/// Field manager of every write the node agent makes (DESIGN.md §4).
pub const FIELD_MANAGER: &str = "pier-node";
/// The node-scoped finalizer: kernel objects are gone before the object is.
pub const FINALIZER: &str = "pier.dev/node";

/// Everything the node agent runs with.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// This node's name (the Endpoints' and PortPublishes' `status.node`).
    pub node_name: String,
    /// The node's network namespace (`None`: the process's own). Tests and `pier up --node-netns`
    /// pass another so nothing touches the machine's namespace.
    pub host_netns: Option<PathBuf>,
    /// Full reconcile interval (drift repair): every kernel object Pier owns is read back.
    pub resync: Duration,
    /// Embedded DNS (`None`: no DNS server).
    pub dns: Option<DnsConfig>,
    /// Root of procfs, for finding Pods' namespaces (`/proc`; tests pass a fake tree).
    pub proc_root: PathBuf,
    /// Where the agent keeps its own small state (e.g. which named namespaces it created).
    pub state_dir: PathBuf,
    /// Per-object retry delay after an error: doubles per failure up to `max_backoff`.
    pub min_backoff: Duration,
    /// The longest retry delay.
    pub max_backoff: Duration,
}

impl AgentConfig {
    /// Defaults for a node: resync 10 s, DNS on, `/proc`, `/var/lib/pier/node`, backoff
    /// 100 ms..60 s, the process's own namespace.
    pub fn new(node_name: impl Into<String>) -> AgentConfig {
        AgentConfig {
            node_name: node_name.into(),
            host_netns: None,
            resync: Duration::from_secs(10),
            dns: Some(DnsConfig::default()),
            proc_root: PathBuf::from("/proc"),
            state_dir: PathBuf::from("/var/lib/pier/node"),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// What the agent's admin port (/livez, /readyz) reports.
#[derive(Debug, Default)]
pub struct AgentHealth {
    /// Set after the first full reconcile of the node succeeded.
    pub ready: AtomicBool,
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("starting the embedded DNS server")]
    Dns(#[source] crate::dns::DnsError),
}

/// Runs the agent until `shutdown` resolves. Kernel objects stay in place on shutdown (a restart
/// resumes with them); `pier down` / `Dataplane::reset` removes them.
pub async fn run(
    _client: kube::Client,
    _config: AgentConfig,
    _health: Arc<AgentHealth>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    shutdown.await;
    Ok(())
}
