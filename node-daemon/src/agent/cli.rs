//! `pier node`: the agent as the chart's DaemonSet runs it, with its admin port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pier_runtime::admin::Admin;
use prometheus_client::registry::Registry;

use super::{AgentConfig, AgentError, AgentHealth};
use crate::dns::DnsConfig;
use crate::kernel::node_lock::{Holder, LOCK_DIR, LockError, NodeLock};

/// `pier node` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    /// This node's name, as the Endpoints' `status.node` names it (the downward API's
    /// `spec.nodeName` in the chart).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// Seconds between full reconciles of the node (drift repair).
    #[arg(long, env = "PIER_RESYNC_SECONDS", default_value_t = 10)]
    pub resync_seconds: u64,
    /// Address of the admin port (/livez, /readyz, /metrics); `off` to disable.
    #[arg(long, env = "PIER_ADMIN_ADDR", default_value = "0.0.0.0:9091")]
    pub admin_addr: String,
    /// Port of the embedded DNS server on every gateway address; 0 disables it.
    #[arg(long, env = "PIER_DNS_PORT", default_value_t = 53)]
    pub dns_port: u16,
    /// Where the agent keeps its own state (which namespaces it created).
    #[arg(long, env = "PIER_STATE_DIR", default_value = "/var/lib/pier/node")]
    pub state_dir: PathBuf,
    /// Root of the host's procfs (Pods' namespaces are found there).
    #[arg(long, env = "PIER_PROC_ROOT", default_value = "/proc")]
    pub proc_root: PathBuf,
    /// Let Endpoints target named namespaces (/var/run/netns/NAME) on this node; off by
    /// default, since in a cluster Pods are the targets (such Endpoints are refused with
    /// reason NetnsTargetsDisabled).
    #[arg(long, env = "PIER_NETNS_TARGETS")]
    pub netns_targets: bool,
    /// The underlay address other nodes send this node's overlay (VXLAN) traffic to. Default:
    /// the address of the interface of the node's default route. The chart passes the Pod's
    /// `status.hostIP`.
    #[arg(long, env = "PIER_TUNNEL_ADDRESS")]
    pub tunnel_address: Option<std::net::Ipv4Addr>,
    /// Create this node's Node object when it does not exist, as kubelet's --register-node does
    /// (for nodes without a kubelet, e.g. beside `pier up`). Off: in a cluster kubelet registers
    /// nodes, and a deleted Node must stay deleted.
    #[arg(long, env = "PIER_REGISTER_NODE")]
    pub register_node: bool,
}

/// Why `pier node` stopped.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("--admin-addr {0:?} is not an address like 0.0.0.0:9091 (or `off`)")]
    AdminAddr(String),
    #[error("serving the admin port on {addr}")]
    Admin {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to the Kubernetes API")]
    Client(#[source] kube::Error),
    #[error("listening for signals")]
    Signal(#[source] std::io::Error),
    #[error("the node agent")]
    Agent(#[source] AgentError),
    #[error(transparent)]
    Lock(#[from] LockError),
}

impl NodeArgs {
    /// The agent's configuration from the flags.
    pub fn config(&self) -> AgentConfig {
        let mut config = AgentConfig::new(self.node_name.clone());
        config.resync = Duration::from_secs(self.resync_seconds.max(1));
        config.dns = (self.dns_port != 0).then(|| DnsConfig {
            port: self.dns_port,
            ..DnsConfig::default()
        });
        config.state_dir = self.state_dir.clone();
        config.proc_root = self.proc_root.clone();
        config.netns_targets = self.netns_targets;
        config.tunnel_address = self.tunnel_address;
        config.register_node = self.register_node;
        config
    }
}

/// Runs `pier node` until SIGINT or SIGTERM.
pub async fn run(args: NodeArgs) -> Result<(), NodeError> {
    // Held until the agent stops: another Pier in this namespace would delete our links.
    let _owner = NodeLock::acquire(
        Path::new(LOCK_DIR),
        None,
        &Holder::this_process("pier node", &args.state_dir),
    )?;
    let health = Arc::new(AgentHealth::default());
    let admin = match args.admin_addr.as_str() {
        "off" | "" => None,
        text => Some(
            text.parse::<SocketAddr>()
                .map_err(|_| NodeError::AdminAddr(text.to_owned()))?,
        ),
    };
    let config = args.config();
    if let Some(addr) = admin {
        let mut registry = Registry::default();
        config.metrics.register(&mut registry);
        let (bound, _serving) = Admin::new(health.clone(), Arc::new(registry))
            .serve(addr)
            .await
            .map_err(|source| NodeError::Admin { addr, source })?;
        tracing::info!(%bound, "admin port: /livez /readyz /metrics");
    }
    let client = kube::Client::try_default()
        .await
        .map_err(NodeError::Client)?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(NodeError::Signal)?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    super::run(client, config, health, shutdown)
        .await
        .map_err(NodeError::Agent)
}
