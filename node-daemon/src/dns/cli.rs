//! `pier dns --state FILE [--netns HOST_NETNS]`: the embedded DNS from a NodeState file, without
//! an API server, so it can be run, debugged and measured alone. The file is re-read when it
//! changes (edit it, and names change live); Ctrl-C stops the server and removes its files.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use clap::Args;
use tokio::sync::watch;

use super::{DnsConfig, DnsError, DnsServer, UpstreamConfig};
use crate::cli::{StateFileError, read_state};

/// How often the state file is checked for changes.
const STATE_POLL: Duration = Duration::from_millis(200);

/// `pier dns ...`
#[derive(Debug, Args)]
pub struct DnsArgs {
    /// A NodeState as JSON (the same file `pier dataplane apply -f` takes).
    #[arg(long, value_name = "STATE_JSON")]
    pub state: PathBuf,
    /// The node's network namespace file (e.g. /var/run/netns/node1); default: this process's own.
    #[arg(long, value_name = "HOST_NETNS_PATH")]
    pub netns: Option<PathBuf>,
    /// The port on each gateway.
    #[arg(long, default_value_t = 53)]
    pub port: u16,
    /// The node's resolv.conf: the upstream resolvers.
    #[arg(long, default_value = "/etc/resolv.conf")]
    pub resolv_conf: PathBuf,
    /// Where to write NAME/resolv.conf for named namespaces.
    #[arg(long, default_value = "/etc/netns")]
    pub etc_netns: PathBuf,
    /// Do not write any namespace resolv.conf.
    #[arg(long)]
    pub no_resolv_conf: bool,
    /// Forwarded queries in flight at most (beyond that they are dropped and counted).
    #[arg(long, default_value_t = 512)]
    pub max_in_flight: usize,
    /// Runtime worker threads (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// What `pier dns` can fail with.
#[derive(Debug, thiserror::Error)]
pub enum DnsCliError {
    #[error(transparent)]
    State(#[from] StateFileError),
    #[error("starting the tokio runtime")]
    Runtime(#[source] std::io::Error),
    #[error(transparent)]
    Dns(#[from] DnsError),
    #[error("waiting for Ctrl-C")]
    Signal(#[source] std::io::Error),
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Runs `pier dns` until Ctrl-C; prints the counters on exit.
pub fn run(args: &DnsArgs) -> Result<(), DnsCliError> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.threads {
        builder.worker_threads(threads.max(1));
    }
    let runtime = builder.enable_all().build().map_err(DnsCliError::Runtime)?;
    runtime.block_on(serve(args))
}

async fn serve(args: &DnsArgs) -> Result<(), DnsCliError> {
    let state = read_state(&args.state)?;
    let (tx, rx) = watch::channel(state);
    let config = DnsConfig {
        port: args.port,
        etc_netns: (!args.no_resolv_conf).then(|| args.etc_netns.clone()),
        upstream: UpstreamConfig {
            resolv_conf: args.resolv_conf.clone(),
            max_in_flight: args.max_in_flight,
            ..UpstreamConfig::default()
        },
        // No admin port here: the counters are printed on exit, not served.
        ..DnsConfig::default()
    };
    let handle = DnsServer::start_with(args.netns.clone(), rx, config)?;
    handle.synced().await;
    tracing::info!(listening = ?handle.listening(), "pier dns serving");

    let mut seen = modified(&args.state);
    let mut poll = tokio::time::interval(STATE_POLL);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let outcome = loop {
        tokio::select! {
            signal = &mut ctrl_c => break signal.map_err(DnsCliError::Signal),
            _ = poll.tick() => {
                let now = modified(&args.state);
                if now == seen {
                    continue;
                }
                seen = now;
                // A half-written or broken file keeps the last good state being served.
                match read_state(&args.state) {
                    Ok(state) => {
                        tx.send_replace(state);
                        handle.synced().await;
                        tracing::info!(listening = ?handle.listening(), "state file reloaded");
                    }
                    Err(error) => tracing::warn!(error = %pier_runtime::error_chain(&error), "keeping the last state"),
                }
            }
        }
    };
    let stats = handle.stats();
    handle.stop().await;
    println!("{stats:?}");
    outcome
}
