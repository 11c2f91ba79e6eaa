//! Pier's embedded DNS: network-scoped names, like Docker's embedded DNS.
//!
//! ```text
//! watch<NodeState> ──► views (pure: asker address → visible records) ──► handler (hickory-server)
//!                  ├─► listeners: UDP+TCP :53 on each DNS-enabled gateway (IPv4 and IPv6),
//!                  │   following the bridges
//!                  └─► /etc/netns/NAME/resolv.conf for named-namespace endpoints
//! node resolv.conf ──► forwarder (UDP, TCP fallback, timeout, failover, bounded) for the rest
//! ```
//!
//! The node daemon starts it beside the dataplane with [`DnsServer::start`] and feeds it the same
//! `NodeState`. Records change live as the watch changes; nothing is ever restarted.

pub mod cli;
pub mod datagrams;
pub mod forward;
pub mod listeners;
pub mod metrics;
pub mod resolv_conf;
pub mod server;
pub mod sockets;
pub mod spreading;
pub mod udp;
pub mod views;
pub mod wire;
pub mod yielding;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::kernel::netns::NetnsError;
use crate::state::NodeState;

pub use forward::{DnsStats, UpstreamConfig};

use forward::Forwarder;
use listeners::Listeners;
use metrics::DnsMetrics;
use resolv_conf::{ResolvConf, ResolvConfWriter};
use server::{PierHandler, Shared};
use sockets::NetnsSockets;
use views::Views;

/// Everything the DNS server can be told.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// The port on every gateway (53; tests and benchmarks may use another).
    pub port: u16,
    /// Where to write `NAME/resolv.conf` for named namespaces (`/etc/netns`); `None`: write none.
    pub etc_netns: Option<PathBuf>,
    /// Upstream resolvers and forwarding limits.
    pub upstream: UpstreamConfig,
    /// Where answers are counted by response code (the node agent registers these on its admin
    /// port; `pier dns` has none and prints its stats on exit instead).
    pub metrics: DnsMetrics,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            port: 53,
            etc_netns: Some("/etc/netns".into()),
            upstream: UpstreamConfig::default(),
            metrics: DnsMetrics::default(),
        }
    }
}

/// Starting the DNS server failed.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("the DNS server must be started from inside a tokio runtime")]
    NoRuntime(#[source] tokio::runtime::TryCurrentError),
    #[error("starting the socket thread in the node namespace")]
    Netns(#[source] NetnsError),
}

/// The embedded DNS server.
#[derive(Debug)]
pub struct DnsServer;

impl DnsServer {
    /// Starts serving `state` with the default port (53) and `/etc/netns`.
    pub fn start(
        host_netns: Option<PathBuf>,
        state: watch::Receiver<NodeState>,
        upstream: UpstreamConfig,
    ) -> Result<DnsHandle, DnsError> {
        let config = DnsConfig {
            upstream,
            ..DnsConfig::default()
        };
        DnsServer::start_with(host_netns, state, config)
    }

    /// Starts serving `state`: listeners in `host_netns` (`None`: this process's namespace).
    pub fn start_with(
        host_netns: Option<PathBuf>,
        mut state: watch::Receiver<NodeState>,
        config: DnsConfig,
    ) -> Result<DnsHandle, DnsError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(DnsError::NoRuntime)?;
        let sockets = NetnsSockets::start(host_netns.clone()).map_err(DnsError::Netns)?;
        let forwarder = Forwarder::new(&config.upstream, sockets.clone());
        let initial = state.borrow_and_update().clone();
        let shared = Arc::new(Shared::new(
            Views::build(&initial),
            forwarder,
            config.metrics.clone(),
        ));
        let listeners = Listeners::new(config.port, sockets, PierHandler::new(shared.clone()));
        let owner = resolv_conf::owner_of(host_netns.as_deref());
        let writer = config
            .etc_netns
            .clone()
            .map(|root| ResolvConfWriter::new(root, owner));
        let (stop_tx, stop_rx) = watch::channel(false);
        let (applied_tx, applied) = watch::channel(None);
        let (listening_tx, listening) = watch::channel(Vec::new());
        let sync = Sync {
            shared: shared.clone(),
            state: state.clone(),
            listeners,
            writer,
            config,
            applied: applied_tx,
            listening: listening_tx,
        };
        let task = runtime.spawn(sync.run(stop_rx));
        Ok(DnsHandle {
            shared,
            stop: stop_tx,
            task: Some(task),
            state,
            applied,
            listening,
        })
    }
}

/// A running DNS server. Dropping it stops the server (best effort); `stop` waits for it.
#[derive(Debug)]
pub struct DnsHandle {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    state: watch::Receiver<NodeState>,
    applied: watch::Receiver<Option<NodeState>>,
    listening: watch::Receiver<Vec<SocketAddr>>,
}

impl DnsHandle {
    /// Counters: queries, local answers, forwarded, refused, NXDOMAIN, SERVFAIL, dropped.
    pub fn stats(&self) -> DnsStats {
        self.shared.counters.snapshot()
    }

    /// The addresses listened on now.
    pub fn listening(&self) -> Vec<SocketAddr> {
        self.listening.borrow().clone()
    }

    /// Waits until the latest `NodeState` is fully applied: views, listeners, resolv.conf files.
    /// (Views alone are swapped first, within microseconds of the change.)
    pub async fn synced(&self) {
        let mut applied = self.applied.clone();
        loop {
            let done = applied.borrow_and_update().as_ref() == Some(&*self.state.borrow());
            if done || applied.changed().await.is_err() {
                return;
            }
        }
    }

    /// Stops every listener and removes the resolv.conf files it wrote.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for DnsHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// The one task that applies states: views first (the part queries see), then listeners and
/// files; failed listeners and files are retried on the next tick, upstreams re-read on each.
struct Sync {
    shared: Arc<Shared>,
    state: watch::Receiver<NodeState>,
    listeners: Listeners,
    writer: Option<ResolvConfWriter>,
    config: DnsConfig,
    applied: watch::Sender<Option<NodeState>>,
    listening: watch::Sender<Vec<SocketAddr>>,
}

impl Sync {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.config.upstream.reload_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut state_open = true;
        let mut incomplete = self.apply(true).await;
        loop {
            tokio::select! {
                changed = self.state.changed(), if state_open => {
                    // A closed sender means the state is final: keep serving it until stopped.
                    state_open = changed.is_ok();
                    incomplete = self.apply(true).await;
                }
                _ = tick.tick() => {
                    let upstream_changed = self.reload_upstream();
                    if incomplete || upstream_changed {
                        incomplete = self.apply(false).await;
                    }
                }
                _ = stop.changed() => break,
            }
        }
        self.listeners.stop_all().await;
        if let Some(writer) = &mut self.writer {
            for error in writer.remove_all() {
                tracing::warn!(error = %pier_runtime::error_chain(&error), "removing a resolv.conf");
            }
        }
        self.listening.send_replace(Vec::new());
    }

    /// Applies the current state; returns whether something failed (to retry).
    async fn apply(&mut self, new_state: bool) -> bool {
        let state = self.state.borrow_and_update().clone();
        let views = Views::rebuild(&state, Some(&self.shared.views()));
        let gateways = views.listen.clone();
        if new_state {
            self.shared.set_views(views);
        }
        let mut failed = false;
        for error in self.listeners.sync(&gateways).await {
            tracing::warn!(error = %pier_runtime::error_chain(&error), "DNS listener");
            failed = true;
        }
        self.listening.send_replace(self.listeners.listening());
        if let Some(writer) = &mut self.writer {
            let search = self.shared.forwarder.upstream().search.clone();
            for error in writer.sync(&state, &search) {
                tracing::warn!(error = %pier_runtime::error_chain(&error), "namespace resolv.conf");
                failed = true;
            }
        }
        self.applied.send_replace(Some(state));
        failed
    }

    /// Re-reads the node's resolv.conf; true if it changed.
    fn reload_upstream(&self) -> bool {
        // A missing file was already warned about at start; it means no upstreams, quietly.
        let now = std::fs::read_to_string(&self.config.upstream.resolv_conf)
            .map(|text| ResolvConf::parse(&text))
            .unwrap_or_default();
        let forwarder = &self.shared.forwarder;
        if *forwarder.upstream() == now {
            return false;
        }
        tracing::info!(nameservers = ?now.nameservers, search = ?now.search, "upstream resolvers changed");
        forwarder.set_upstream(now);
        true
    }
}
