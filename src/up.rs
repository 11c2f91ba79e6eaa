//! `pier up`: the whole system on one Linux machine, in one process. The embedded API server
//! (HTTPS on loopback, token-authenticated), Pier's CRDs, the operator and the node agent for the
//! local node; `kubectl --kubeconfig DATA_DIR/kubeconfig` drives it like a cluster.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context as _, bail};
use ipnet::Ipv4Net;
use kube::Client;
use pier_apiserver::{ApiServer, Options};
use pier_node::agent::{AgentConfig, AgentHealth};
use pier_node::dns::DnsConfig;
use pier_runtime::admin::{Admin, Readiness};
use prometheus_client::registry::Registry;

use crate::manifests;

/// The field manager of what `pier up` writes (CRDs, `-f` manifests).
const FIELD_MANAGER: &str = "pier-up";

/// `pier up` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// Where the API server's data, the kubeconfig (DATA_DIR/kubeconfig) and the node's state live.
    #[arg(long, env = "PIER_DATA_DIR", default_value = "/var/lib/pier")]
    pub data_dir: PathBuf,
    /// Manifests to apply once running: a file, or a folder of .yaml/.yml/.json files (repeat).
    #[arg(short = 'f', long = "filename")]
    pub files: Vec<PathBuf>,
    /// The API server's HTTPS address; loopback only (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub listen: SocketAddr,
    /// The node's network namespace (a namespace file); the machine's own when absent. Tests pass
    /// their own so they never touch the machine's.
    #[arg(long)]
    pub node_netns: Option<PathBuf>,
    /// The local node's name (default: the host name).
    #[arg(long)]
    pub node_name: Option<String>,
    /// Port of the embedded DNS server on every gateway address; 0 disables it.
    #[arg(long, default_value_t = 53)]
    pub dns_port: u16,
    /// Seconds between full reconciles of the node (drift repair).
    #[arg(long, default_value_t = 10)]
    pub resync_seconds: u64,
    /// Host ports no PortPublish may publish (`22,6443,10255-10259`), refused with
    /// `PortNotAllowed`. None by default, as Docker lets you publish any free port: a port a
    /// process of the machine listens on (sshd's 22) is refused anyway, with `PortInUseOnNode`.
    #[arg(long, default_value = "")]
    pub denied_host_ports: pier_operator::ports::PortSet,
    /// Address of the admin port (/livez, /readyz, /metrics with the operator's and the node's
    /// metrics), e.g. 127.0.0.1:9091; off by default.
    #[arg(long, default_value = "off")]
    pub admin_addr: String,
    /// Do not merge the context `pier` into the invoking user's kubeconfig (`$KUBECONFIG`, or
    /// `~/.kube/config` of `SUDO_USER` under sudo); DATA_DIR/kubeconfig is written anyway.
    #[arg(long)]
    pub no_merge_kubeconfig: bool,
}

/// `pier up` is ready when both halves are: the operator leads with its allocations rebuilt, and
/// the node's first full reconcile succeeded.
#[derive(Debug)]
struct UpHealth {
    operator: Arc<pier_operator::admin::Health>,
    agent: Arc<AgentHealth>,
}

impl Readiness for UpHealth {
    fn ready(&self) -> Result<(), &'static str> {
        self.operator.ready()?;
        self.agent.ready()
    }
}

/// Runs everything until SIGINT or SIGTERM.
pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "pier up needs root: it creates bridges, veths, network namespaces and nftables rules \
             (run it with sudo)"
        );
    }
    if !args.listen.ip().is_loopback() {
        bail!(
            "--listen {} is not a loopback address: the local API server only listens on \
             127.0.0.1 or ::1",
            args.listen
        );
    }
    if let Some(netns) = &args.node_netns
        && !netns.exists()
    {
        bail!("--node-netns {} does not exist", netns.display());
    }
    // Before anything touches the kernel or the data: a second Pier here would delete ours.
    let _owner = lock_node(args.node_netns.as_deref(), "pier up", &args.data_dir)?;
    prepare_data_dir(&args.data_dir)?;
    let node_name = args.node_name.clone().unwrap_or_else(host_name);

    let server = ApiServer::open_with(
        args.data_dir.join("api"),
        Options::for_node(node_name.clone()),
    )
    .await
    .context("opening the API server's data")?;
    let (bound, serving) = server
        .serve_https(args.listen)
        .await
        .with_context(|| format!("serving HTTPS on {}", args.listen))?;
    let kubeconfig = args.data_dir.join("kubeconfig");
    server
        .write_kubeconfig(&kubeconfig, &format!("https://{bound}"))
        .context("writing the kubeconfig")?;
    if !args.no_merge_kubeconfig {
        merge_kubeconfig(&args.data_dir, &kubeconfig);
    }
    // In-process components talk to the server without TLS or sockets.
    let client = Client::new(server.service(), "default");
    pier_crds::manifests::install(&client, FIELD_MANAGER)
        .await
        .context("installing Pier's CRDs")?;

    let node_netns = args.node_netns.clone();
    let host_subnets = tokio::task::spawn_blocking(move || {
        pier_node::kernel::hostnet::subnets_in_use_in(node_netns.as_deref())
    })
    .await
    .context("reading the node's subnets")?
    .context("reading the node's addresses and routes")?;
    let operator = operator_config(
        host_subnets.iter().map(|s| s.subnet).collect(),
        args.denied_host_ports.clone(),
    );
    if operator.bridge_subnet != pier_operator::Config::default().bridge_subnet {
        tracing::info!(
            subnet = %operator.bridge_subnet,
            "172.17.0.0/16 is in use on this machine: the default bridge network gets another subnet"
        );
    }

    let agent = agent_config(&args, node_name);
    let health = Arc::new(AgentHealth::default());
    let operator_health = Arc::new(pier_operator::admin::Health::default());
    let operator_metrics = Arc::new(pier_operator::metrics::Metrics::default());
    let admin_addr = match args.admin_addr.as_str() {
        "off" | "" => None,
        text => Some(text.parse::<SocketAddr>().with_context(|| {
            format!("--admin-addr {text:?} is not an address like 127.0.0.1:9091 (or `off`)")
        })?),
    };
    if let Some(addr) = admin_addr {
        let mut registry = Registry::default();
        operator_metrics.register(&mut registry);
        agent.metrics.register(&mut registry);
        let readiness = Arc::new(UpHealth {
            operator: Arc::clone(&operator_health),
            agent: Arc::clone(&health),
        });
        let (bound, _serving) = Admin::new(readiness, Arc::new(registry))
            .serve(addr)
            .await
            .with_context(|| format!("serving the admin port on {addr}"))?;
        tracing::info!(%bound, "admin port: /livez /readyz /metrics");
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |rx: tokio::sync::watch::Receiver<bool>| async move {
        let mut rx = rx;
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let operator_task = tokio::spawn(pier_operator::run_with_client(
        client.clone(),
        operator,
        operator_metrics,
        operator_health,
        stopped(stop_rx.clone()),
    ));
    let agent_task = tokio::spawn(pier_node::agent::run(
        client.clone(),
        agent,
        Arc::clone(&health),
        stopped(stop_rx.clone()),
    ));

    for path in &args.files {
        let outcome = manifests::apply_path(&client, path, FIELD_MANAGER).await;
        for line in outcome.applied {
            eprintln!("{line}");
        }
        // A bad manifest is the user's to fix; the system it would have run on keeps running.
        for line in outcome.failed {
            eprintln!("error: {line}");
        }
    }

    let signals = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("listening for SIGTERM")?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        anyhow::Ok(())
    };
    tokio::pin!(signals);
    let mut announced = false;
    loop {
        if !announced && health.ready.load(Ordering::Relaxed) {
            println!("{}", kubeconfig.display());
            println!("ready");
            announced = true;
        }
        if agent_task.is_finished() {
            bail!("the node agent stopped on its own (see the log)");
        }
        tokio::select! {
            result = &mut signals => { result?; break; }
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    tracing::info!("stopping");
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(15), async {
        let _ = operator_task.await;
        if let Ok(Err(error)) = agent_task.await {
            tracing::warn!(error = %error, "node agent");
        }
    })
    .await;
    serving.abort();
    Ok(())
}

/// Merges the context `pier` into the invoking user's kubeconfig, as kind does. A failure (a
/// broken kubeconfig, no home) is a warning: DATA_DIR/kubeconfig works regardless.
fn merge_kubeconfig(data_dir: &Path, ours: &Path) {
    match merge_into_users_kubeconfig(data_dir, ours) {
        Ok(Some(path)) => eprintln!(
            "kubeconfig: context `{}` merged into {} (kubectl --context {0})",
            pier_apiserver::kubeconfig::CONTEXT,
            path.display()
        ),
        Ok(None) => {}
        Err(error) => tracing::warn!(
            error = format!("{error:#}"),
            "not merging the context `pier` into the user's kubeconfig"
        ),
    }
}

/// The merge itself; the file merged into, if there is a user's kubeconfig to merge into.
fn merge_into_users_kubeconfig(data_dir: &Path, ours: &Path) -> anyhow::Result<Option<PathBuf>> {
    let sudo_user = crate::kubeconfig::sudo_user_from_env()?;
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let kubeconfig_env = std::env::var("KUBECONFIG").ok();
    let Some(target) = crate::kubeconfig::choose_target(
        kubeconfig_env.as_deref(),
        sudo_user.as_ref(),
        home.as_deref(),
    ) else {
        return Ok(None);
    };
    let text =
        std::fs::read_to_string(ours).with_context(|| format!("reading {}", ours.display()))?;
    crate::kubeconfig::merge_into(&target, &text)?;
    crate::kubeconfig::record(data_dir, &target)?;
    Ok(Some(target.path))
}

/// The operator for one machine: pools skip what the machine already routes, and the default
/// `bridge` network moves off 172.17.0.0/16 when that is taken (e.g. by Docker's docker0).
fn operator_config(
    host_subnets: Vec<Ipv4Net>,
    denied_host_ports: pier_operator::ports::PortSet,
) -> pier_operator::Config {
    let mut config = pier_operator::Config::default();
    config.alloc.denied_ports = denied_host_ports;
    config.lease.identity = "pier-up".into();
    config.lease.retry = Duration::from_secs(2);
    let overlaps = |a: &Ipv4Net, b: &Ipv4Net| a.contains(&b.network()) || b.contains(&a.network());
    if host_subnets
        .iter()
        .any(|s| overlaps(s, &config.bridge_subnet))
        && let Some(free) =
            pier_operator::ipam::first_free_subnet(&config.alloc.pools, &host_subnets)
    {
        config.bridge_subnet = free;
    }
    config.alloc.excluded = host_subnets;
    config
}

/// The data directory, 0700 (also when it existed): below it are the store, the TLS key, the
/// admin token and the kubeconfig. The API server makes its own files 0600.
fn prepare_data_dir(dir: &Path) -> anyhow::Result<()> {
    pier_apiserver::private::ensure_dir(dir)
        .with_context(|| format!("preparing the data directory {}", dir.display()))
}

fn agent_config(args: &UpArgs, node_name: String) -> AgentConfig {
    let mut config = AgentConfig::new(node_name);
    config.host_netns = args.node_netns.clone();
    config.resync = Duration::from_secs(args.resync_seconds.max(1));
    config.dns = (args.dns_port != 0).then(|| DnsConfig {
        port: args.dns_port,
        ..DnsConfig::default()
    });
    config.state_dir = args.data_dir.join("node");
    // Local mode is all about named namespaces (`ip netns add con1`).
    config.netns_targets = true;
    config
}

/// The machine's host name, lower case (a valid node name), or `localhost`.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_lowercase())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Takes the machine-wide lock of the node namespace (`None`: the process's own) for `command`.
fn lock_node(
    netns: Option<&Path>,
    command: &str,
    data_dir: &Path,
) -> anyhow::Result<pier_node::kernel::node_lock::NodeLock> {
    let lock = pier_node::kernel::node_lock::NodeLock::acquire(
        Path::new(pier_node::kernel::node_lock::LOCK_DIR),
        netns,
        &pier_node::kernel::node_lock::Holder::this_process(command, data_dir),
    )?;
    Ok(lock)
}

/// `pier down` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct DownArgs {
    /// The data directory `pier up` used.
    #[arg(long, env = "PIER_DATA_DIR", default_value = "/var/lib/pier")]
    pub data_dir: PathBuf,
    /// The node namespace `pier up` used (`--node-netns`).
    #[arg(long)]
    pub node_netns: Option<PathBuf>,
    /// Also delete the data directory (the API objects, addresses and ports).
    #[arg(long)]
    pub purge: bool,
}

/// Removes Pier's kernel objects (bridges, veths, table `inet pier`) and the namespaces Pier
/// created. Refused while `pier up` (or `pier node`) runs in the same namespace.
pub fn down(args: &DownArgs) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("pier down needs root: it deletes bridges, veths and nftables rules");
    }
    let _owner = lock_node(args.node_netns.as_deref(), "pier down", &args.data_dir)?;
    let report = pier_node::dataplane::Dataplane::new(args.node_netns.clone())
        .reset()
        .context("removing Pier's kernel objects")?;
    print!("{report}");
    let named = pier_node::kernel::named_netns::NamedNetns::new(
        pier_crds::names::NETNS_DIR,
        &args.data_dir.join("node"),
    );
    for name in named.created() {
        named
            .remove_if_created(&name)
            .with_context(|| format!("removing network namespace {name}"))?;
        let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&name));
        println!("netns/{name}: deleted");
    }
    if args.purge {
        unmerge_kubeconfig(&args.data_dir)?;
        match std::fs::remove_dir_all(&args.data_dir) {
            Ok(()) => println!("{}: deleted", args.data_dir.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("deleting {}", args.data_dir.display()));
            }
        }
    }
    if !report.is_success() {
        bail!("some kernel objects could not be removed (see above)");
    }
    Ok(())
}

/// Takes the context `pier` out of the kubeconfig `pier up` merged it into (`--purge`).
fn unmerge_kubeconfig(data_dir: &Path) -> anyhow::Result<()> {
    let Some(target) = crate::kubeconfig::recorded(data_dir) else {
        return Ok(());
    };
    if crate::kubeconfig::remove_from(&target)? {
        println!(
            "{}: context `{}` removed",
            target.path.display(),
            pier_apiserver::kubeconfig::CONTEXT
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_data_directory_is_private_also_when_it_existed() {
        let root = tempfile::tempdir().expect("tempdir");
        let mode = |p: &Path| std::fs::metadata(p).expect("dir").permissions().mode() & 0o7777;
        let fresh = root.path().join("fresh");
        prepare_data_dir(&fresh).expect("created");
        assert_eq!(mode(&fresh), 0o700);
        let existing = root.path().join("existing");
        std::fs::create_dir(&existing).expect("mkdir");
        std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        prepare_data_dir(&existing).expect("tightened");
        assert_eq!(mode(&existing), 0o700);
    }
}
