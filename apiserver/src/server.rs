//! [`ApiServer`]: the public entry point (`pier up` and the tests).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::api::Api;
use crate::error::Error;
use crate::event_budget::EventBudget;
use crate::http::ApiService;
use crate::store::Store;
use crate::store::wal::{FileIo, LogIo};
use crate::tls::Material;

/// Tunables.
#[derive(Debug, Clone)]
pub struct Options {
    /// Change events kept for watches to resume from (older versions get 410 Gone).
    pub history: usize,
    /// Change events are also dropped from that history once older than this (like the etcd
    /// compaction kube-apiserver runs, `--etcd-compaction-interval`, 5 min): each keeps a whole
    /// object version alive, and a watch that far behind re-lists after its 410 anyway.
    pub history_max_age: Duration,
    /// The history also keeps no more bytes of JSON than the live objects take, or this many
    /// when they take less: its memory follows the objects, not the writes that made them.
    pub history_min_bytes: usize,
    /// Concurrent watches allowed (more get 429).
    pub max_watches: usize,
    /// How often watches that asked for bookmarks get one.
    pub bookmark_interval: Duration,
    /// A watch whose client takes none of its events for this long is closed (the client
    /// resumes from its last version), rather than buffering for it.
    pub watch_stall_timeout: Duration,
    /// The local node's name (default: the host name).
    pub node_name: Option<String>,
    /// Compact the durable log into a snapshot after this many writes.
    pub compact_every: usize,
    /// Events last seen longer ago are deleted (kube-apiserver's `--event-ttl`, 1 h).
    pub event_ttl: Duration,
    /// How many Events are kept at most, for the other objects stored (the oldest go first).
    pub event_budget: EventBudget,
    /// Connections served at once over HTTPS. Further ones wait, unaccepted, in the listen
    /// backlog until one closes: a client sees latency rather than a reset it would report as
    /// an error, and the server's file descriptors stay bounded. (HTTP/2 clients such as kube-rs
    /// multiplex every request and watch over one connection.)
    pub max_connections: usize,
    /// The durable log's writes and fsyncs (tests make them fail).
    pub log_io: Arc<dyn LogIo>,
}

impl Options {
    /// The defaults, with one local node named `node_name`.
    pub fn for_node(node_name: impl Into<String>) -> Options {
        Options {
            node_name: Some(node_name.into()),
            ..Options::default()
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            history: 10_000,
            history_max_age: Duration::from_secs(300),
            history_min_bytes: crate::store::HISTORY_MIN_BYTES,
            max_watches: 1024,
            bookmark_interval: Duration::from_secs(10),
            watch_stall_timeout: Duration::from_secs(10),
            node_name: None,
            compact_every: 50_000,
            event_ttl: Duration::from_secs(3600),
            event_budget: EventBudget::default(),
            max_connections: 1024,
            log_io: Arc::new(FileIo),
        }
    }
}

/// The embedded API server.
#[derive(Debug, Clone)]
pub struct ApiServer {
    api: Arc<Api>,
    dir: Option<PathBuf>,
    tls: Material,
    max_connections: usize,
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_lowercase())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The address the host uses to reach the outside (no packet is sent), else loopback.
fn host_address() -> String {
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect("192.0.2.1:9")?;
            s.local_addr()
        })
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| "127.0.0.1".into())
}

/// How often the maintenance task runs: a tenth of the event TTL (at most every minute) and a
/// tenth of the history's max age (at most every 30 s), whichever is sooner, and at most every
/// 100 ms. Each step then runs at least as often as its own period asks.
fn maintenance_period(event_ttl: Duration, history_max_age: Duration) -> Duration {
    let events = (event_ttl / 10).min(Duration::from_secs(60));
    let history = (history_max_age / 10).min(Duration::from_secs(30));
    events.min(history).max(Duration::from_millis(100))
}

/// The server's periodic upkeep on one interval, until the server is gone: expired Events
/// deleted, old watch history dropped (so an idle server frees it too; writes prune it as
/// well). The Events' budget has a shorter period of its own ([`keep_events_within`]).
async fn maintain(api: std::sync::Weak<Api>, opts: MaintenanceOptions) {
    let period = maintenance_period(opts.event_ttl, opts.history_max_age);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    // A slow step (many Events to delete) postpones the next run rather than bunching them.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(api) = api.upgrade() else {
            return;
        };
        expire_events(&api, opts.event_ttl).await;
        prune_history(&api, opts.history_max_age);
    }
}

/// What the maintenance task needs of [`Options`].
#[derive(Debug, Clone, Copy)]
struct MaintenanceOptions {
    event_ttl: Duration,
    history_max_age: Duration,
}

/// Deletes the Events last seen more than `ttl` ago (each failed deletion is logged and
/// retried on the next run).
async fn expire_events(api: &Api, ttl: Duration) {
    let deleted = api.expire_events(ttl).await;
    if deleted > 0 {
        tracing::debug!(deleted, ?ttl, "expired events deleted");
    }
}

/// How often the number of Events is checked against their budget: soon after a burst of
/// deletions took the objects that allowed them (a check is a count; only a trim lists them).
const EVENT_BUDGET_PERIOD: Duration = Duration::from_secs(1);

/// Keeps the stored Events within `budget` until the server is gone.
async fn keep_events_within(api: std::sync::Weak<Api>, budget: EventBudget) {
    let mut ticks = tokio::time::interval(EVENT_BUDGET_PERIOD);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(api) = api.upgrade() else {
            return;
        };
        let deleted = api.trim_events(&budget).await;
        if deleted > 0 {
            tracing::debug!(deleted, ?budget, "oldest events deleted, over their budget");
        }
    }
}

/// Drops watch history older than `max_age`.
fn prune_history(api: &Api, max_age: Duration) {
    let dropped = api.prune_history();
    if dropped > 0 {
        tracing::trace!(dropped, ?max_age, "old watch history dropped");
    }
}

/// The local node object.
pub fn local_node(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
            "node-role.kubernetes.io/control-plane": "",
        }},
        "spec": {},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": host_address()},
                {"type": "Hostname", "address": name},
            ],
            "conditions": [{"type": "Ready", "status": "True", "reason": "PierLocalMode",
                "message": "the local node of Pier's embedded API server",
                "lastHeartbeatTime": crate::api::now(), "lastTransitionTime": crate::api::now()}],
            "nodeInfo": {"operatingSystem": "linux", "architecture": std::env::consts::ARCH,
                "kubeletVersion": "v1.33.0-pier", "containerRuntimeVersion": "pier://0",
                "kernelVersion": "", "osImage": "", "kubeProxyVersion": "", "machineID": "", "systemUUID": "", "bootID": ""},
        }
    })
}

impl ApiServer {
    /// Open (or create) a server whose state lives in `data_dir`.
    pub async fn open(data_dir: impl AsRef<Path>) -> Result<ApiServer, Error> {
        ApiServer::open_with(data_dir, Options::default()).await
    }

    /// [`ApiServer::open`] with options. The directory becomes 0700 and every file in it 0600
    /// (also when it existed with looser modes).
    pub async fn open_with(data_dir: impl AsRef<Path>, opts: Options) -> Result<ApiServer, Error> {
        let dir = data_dir.as_ref().to_path_buf();
        crate::private::ensure_tree(&dir)?;
        let store = Store::open(
            &dir.join("store"),
            opts.history,
            opts.compact_every,
            opts.log_io.clone(),
        )?
        .with_history_max_age(opts.history_max_age)
        .with_history_min_bytes(opts.history_min_bytes);
        let tls = Material::load_or_create(&dir)?;
        ApiServer::start(store, Some(dir), tls, opts).await
    }

    /// A server that keeps nothing on disk (tests).
    pub async fn in_memory() -> Result<ApiServer, Error> {
        ApiServer::in_memory_with(Options::default()).await
    }

    /// [`ApiServer::in_memory`] with options.
    pub async fn in_memory_with(opts: Options) -> Result<ApiServer, Error> {
        let store = Store::in_memory(opts.history)
            .with_history_max_age(opts.history_max_age)
            .with_history_min_bytes(opts.history_min_bytes);
        ApiServer::start(store, None, Material::generate()?, opts).await
    }

    async fn start(
        store: Store,
        dir: Option<PathBuf>,
        tls: Material,
        opts: Options,
    ) -> Result<ApiServer, Error> {
        let mut api = Api::new(store, opts.max_watches);
        api.bookmark_interval = opts.bookmark_interval;
        api.watch_stall_timeout = opts.watch_stall_timeout;
        let api = Arc::new(api);
        let node = opts.node_name.unwrap_or_else(host_name);
        api.bootstrap(Some(local_node(&node)))
            .await
            .map_err(|e| Error::Crd(format!("bootstrap: {e}")))?;
        let maintenance = MaintenanceOptions {
            event_ttl: opts.event_ttl,
            history_max_age: opts.history_max_age,
        };
        tokio::spawn(maintain(Arc::downgrade(&api), maintenance));
        tokio::spawn(keep_events_within(Arc::downgrade(&api), opts.event_budget));
        Ok(ApiServer {
            api,
            dir,
            tls,
            max_connections: opts.max_connections.max(1),
        })
    }

    /// The engine (for embedding and tests).
    pub fn api(&self) -> &Arc<Api> {
        &self.api
    }

    /// The data directory, if persistent.
    pub fn data_dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The in-process service, without authentication: `kube::Client::new(server.service(), "default")`.
    pub fn service(&self) -> ApiService {
        ApiService::new(self.api.clone(), None)
    }

    /// The service requiring the bearer token (what HTTPS serves).
    pub fn authenticated_service(&self) -> ApiService {
        ApiService::new(self.api.clone(), Some(self.tls.token.clone()))
    }

    /// The bearer token clients must send.
    pub fn token(&self) -> &str {
        self.tls.token.as_str()
    }

    /// The CA certificate (PEM) that signed the serving certificate.
    pub fn ca_pem(&self) -> &str {
        &self.tls.ca_pem
    }

    /// Serve HTTPS on `addr` (port 0: any free port); returns the bound address and the task.
    pub async fn serve_https(
        &self,
        addr: SocketAddr,
    ) -> Result<(SocketAddr, JoinHandle<()>), Error> {
        let listen = |source| Error::Listen { addr, source };
        let listener = TcpListener::bind(addr).await.map_err(listen)?;
        let bound = listener.local_addr().map_err(listen)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(self.tls.server_config()?);
        let svc = self.authenticated_service();
        let slots = Arc::new(tokio::sync::Semaphore::new(self.max_connections));
        let task = tokio::spawn(async move {
            loop {
                // Accept only with a free slot; the slot goes with the connection.
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (tcp, _) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let svc = svc.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    let handshake =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await;
                    let Ok(Ok(tls)) = handshake else {
                        return;
                    };
                    let hyper_svc = hyper::service::service_fn(move |req| {
                        let mut svc = svc.clone();
                        tower::Service::call(&mut svc, req)
                    });
                    let mut builder = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    );
                    // A client that never finishes its headers does not hold a connection.
                    builder
                        .http1()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(30));
                    if let Err(e) = builder
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), hyper_svc)
                        .await
                    {
                        tracing::debug!(error = %e, "connection ended");
                    }
                });
            }
        });
        Ok((bound, task))
    }

    /// Write a kubeconfig for `server_url` (e.g. `https://127.0.0.1:6443`).
    pub fn write_kubeconfig(&self, path: impl AsRef<Path>, server_url: &str) -> Result<(), Error> {
        let yaml = crate::kubeconfig::render(server_url, &self.tls.ca_pem, self.tls.token.as_str());
        crate::private::write_file(path.as_ref(), &yaml)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maintenance_runs_as_often_as_its_most_frequent_step() {
        let secs = Duration::from_secs;
        // The defaults: history every 30 s (its cap) beats events every 60 s.
        assert_eq!(maintenance_period(secs(3600), secs(300)), secs(30));
        // A short event TTL sets the pace.
        assert_eq!(maintenance_period(secs(50), secs(300)), secs(5));
        // Never busier than every 100 ms.
        assert_eq!(
            maintenance_period(Duration::from_millis(10), Duration::ZERO),
            Duration::from_millis(100)
        );
    }
}
