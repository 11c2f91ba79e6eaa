//! `pier node`: the agent as the chart's DaemonSet runs it, with its admin port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

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
    /// Address of the admin port (/livez, /readyz); `off` to disable.
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
    if let Some(addr) = admin {
        let bound = serve_admin(addr, Arc::clone(&health))
            .await
            .map_err(|source| NodeError::Admin { addr, source })?;
        tracing::info!(%bound, "admin port: /livez /readyz");
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
    super::run(client, args.config(), health, shutdown)
        .await
        .map_err(NodeError::Agent)
}

/// Serves `/livez` (always 200) and `/readyz` (200 once the first full reconcile succeeded) on
/// `addr`; returns the bound address.
pub async fn serve_admin(
    addr: SocketAddr,
    health: Arc<AgentHealth>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let ready = health.ready.load(Ordering::Relaxed);
            tokio::spawn(async move {
                let mut request = [0u8; 1024];
                let read =
                    tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut request)).await;
                let Ok(Ok(n)) = read else { return };
                let response = admin_response(&request[..n], ready);
                let _ = tcp.write_all(response.as_bytes()).await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    Ok(bound)
}

/// The whole HTTP/1.1 response to one request (probes send a GET and close).
fn admin_response(request: &[u8], ready: bool) -> String {
    let line = request.split(|b| *b == b'\n').next().unwrap_or_default();
    let path = std::str::from_utf8(line)
        .ok()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("");
    let (status, body) = match path {
        "/livez" => ("200 OK", "ok\n"),
        "/readyz" if ready => ("200 OK", "ok\n"),
        "/readyz" => (
            "503 Service Unavailable",
            "not ready: the first full reconcile has not succeeded yet\n",
        ),
        _ => ("404 Not Found", "not found\n"),
    };
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes() {
        assert!(admin_response(b"GET /livez HTTP/1.1\r\n\r\n", false).starts_with("HTTP/1.1 200"));
        assert!(admin_response(b"GET /readyz HTTP/1.1\r\n\r\n", false).starts_with("HTTP/1.1 503"));
        assert!(admin_response(b"GET /readyz HTTP/1.1\r\n\r\n", true).starts_with("HTTP/1.1 200"));
        assert!(admin_response(b"GET /x HTTP/1.1\r\n\r\n", true).starts_with("HTTP/1.1 404"));
        assert!(admin_response(b"", true).starts_with("HTTP/1.1 404"));
    }
}
