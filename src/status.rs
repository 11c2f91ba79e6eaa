//! `pier status`: what `pier up` runs on this machine, as `docker info` or `kind get clusters`
//! answer — the process, its API address and kubeconfig, the node(s), networks, endpoints and
//! published ports, and what Pier owns in the kernel. It reads; it changes nothing.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Node;
use kube::api::ListParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Resource, ResourceExt as _};
use pier_crds::conditions::{ATTACHED, Condition, READY};
use pier_crds::endpoint::Endpoint;
use pier_crds::network::Network;
use pier_crds::portpublish::PortPublish;
use pier_node::kernel::node_lock;

/// How long the API may take to answer each list.
const API_TIMEOUT: Duration = Duration::from_secs(5);

/// `pier status` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// The data directory `pier up` uses.
    #[arg(long, env = "PIER_DATA_DIR", default_value = "/var/lib/pier")]
    pub data_dir: PathBuf,
    /// The node namespace `pier up` uses (`--node-netns`); the machine's own when absent.
    #[arg(long)]
    pub node_netns: Option<PathBuf>,
}

/// Everything `pier status` shows; each part says why it is missing.
#[derive(Debug)]
pub struct Status {
    /// `pier up` holding the node, e.g. "`pier up` (pid 12, data directory /var/lib/pier)".
    pub running: Option<String>,
    pub data_dir: PathBuf,
    pub kubeconfig: Result<String, String>,
    pub merged_into: Option<PathBuf>,
    pub api: Result<Objects, String>,
    pub kernel: Result<Kernel, String>,
}

/// The API's objects, as rows.
#[derive(Debug, Default)]
pub struct Objects {
    pub nodes: Vec<String>,
    pub networks: Vec<String>,
    pub endpoints: Vec<String>,
    pub port_publishes: Vec<String>,
}

/// Pier's objects in the node's kernel.
#[derive(Debug, Default)]
pub struct Kernel {
    pub links: Vec<String>,
    pub tables: Vec<&'static str>,
    pub namespaces: Vec<String>,
}

/// The text of a status.
pub fn render(status: &Status) -> String {
    let mut out = String::new();
    let running = status.running.as_deref().unwrap_or("not running");
    let _ = writeln!(out, "Pier:            {running}");
    let _ = writeln!(out, "Data directory:  {}", status.data_dir.display());
    let kubeconfig = status.data_dir.join("kubeconfig");
    match &status.kubeconfig {
        Ok(server) => {
            let _ = writeln!(out, "API server:      {server}");
            let _ = writeln!(out, "Kubeconfig:      {}", kubeconfig.display());
        }
        Err(why) => {
            let _ = writeln!(out, "API server:      unknown ({why})");
        }
    }
    let context = pier_apiserver::kubeconfig::CONTEXT;
    let _ = match &status.merged_into {
        Some(path) => writeln!(out, "Context:         {context} (in {})", path.display()),
        None => writeln!(
            out,
            "Context:         {context} (only in the kubeconfig above)"
        ),
    };
    match &status.api {
        Ok(objects) => render_objects(&mut out, objects),
        Err(why) => {
            let _ = writeln!(out, "Objects:         unavailable ({why})");
        }
    }
    match &status.kernel {
        Ok(kernel) => render_kernel(&mut out, kernel),
        Err(why) => {
            let _ = writeln!(out, "Kernel:          unavailable ({why})");
        }
    }
    out
}

fn render_objects(out: &mut String, objects: &Objects) {
    section(out, "Nodes", &objects.nodes);
    section(out, "Networks", &objects.networks);
    section(out, "Endpoints", &objects.endpoints);
    section(out, "Port publishes", &objects.port_publishes);
}

fn render_kernel(out: &mut String, kernel: &Kernel) {
    let _ = writeln!(out, "Kernel (what `pier down` removes):");
    let tables = if kernel.tables.is_empty() {
        "none".to_owned()
    } else {
        kernel.tables.join(", ")
    };
    let _ = writeln!(out, "  nftables:      {tables}");
    let _ = writeln!(out, "  links:         {}", list_or_none(&kernel.links));
    let _ = writeln!(out, "  namespaces:    {}", list_or_none(&kernel.namespaces));
}

fn section(out: &mut String, title: &str, rows: &[String]) {
    let _ = writeln!(out, "{:<17}{}", format!("{title}:"), rows.len());
    for row in rows {
        let _ = writeln!(out, "  {row}");
    }
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(" ")
    }
}

/// Gathers and prints the status. The kernel is read before the runtime starts: the netlink
/// code runs a runtime of its own, which cannot start inside another.
pub fn run(args: &StatusArgs) -> anyhow::Result<()> {
    let kernel = read_kernel(args);
    let kubeconfig = read_kubeconfig(&args.data_dir.join("kubeconfig"));
    let api = match &kubeconfig {
        Ok(config) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the tokio runtime")?
            .block_on(list_objects(config.clone())),
        Err(_) => Err("no kubeconfig to reach the API server with".to_owned()),
    };
    let status = Status {
        running: running(args),
        data_dir: args.data_dir.clone(),
        kubeconfig: kubeconfig.map(|(_, server)| server),
        merged_into: crate::kubeconfig::recorded(&args.data_dir).map(|t| t.path),
        api,
        kernel,
    };
    print!("{}", render(&status));
    Ok(())
}

/// The `pier up` (or `pier node`) holding the node namespace, if one runs.
fn running(args: &StatusArgs) -> Option<String> {
    let holder =
        node_lock::current_holder(Path::new(node_lock::LOCK_DIR), args.node_netns.as_deref())?;
    Some(format!(
        "running: `{}` (pid {}, data directory {})",
        holder.command,
        holder.pid,
        holder.data_dir.display()
    ))
}

fn read_kubeconfig(path: &Path) -> Result<(Kubeconfig, String), String> {
    if !path.exists() {
        return Err(format!(
            "no {}: `pier up` has not run with this data directory",
            path.display()
        ));
    }
    let config = Kubeconfig::read_from(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let server = config
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.server.clone())
        .ok_or_else(|| format!("{} names no server", path.display()))?;
    Ok((config, server))
}

async fn list_objects((config, _): (Kubeconfig, String)) -> Result<Objects, String> {
    let listed = async {
        let config = kube::Config::from_custom_kubeconfig(config, &KubeConfigOptions::default())
            .await
            .context("reading the kubeconfig")?;
        let client = Client::try_from(config).context("a client for the API server")?;
        let nodes = names(&client, |n: &Node| n.name_any()).await?;
        let networks = names(&client, network_row).await?;
        let endpoints = names(&client, endpoint_row).await?;
        let port_publishes = names(&client, port_publish_row).await?;
        anyhow::Ok(Objects {
            nodes,
            networks,
            endpoints,
            port_publishes,
        })
    };
    match tokio::time::timeout(API_TIMEOUT * 4, listed).await {
        Ok(Ok(objects)) => Ok(objects),
        Ok(Err(error)) => Err(format!("{error:#}")),
        Err(_) => Err("the API server did not answer in time".to_owned()),
    }
}

/// One row per object of kind `K`, in every namespace.
async fn names<K>(client: &Client, row: impl Fn(&K) -> String) -> anyhow::Result<Vec<String>>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::all(client.clone());
    let list = tokio::time::timeout(API_TIMEOUT, api.list(&ListParams::default()))
        .await
        .context("the API server did not answer in time")?
        .with_context(|| format!("listing {}", K::plural(&K::DynamicType::default())))?;
    Ok(list.items.iter().map(row).collect())
}

fn network_row(network: &Network) -> String {
    let status = network.status.as_ref();
    let subnet = status.and_then(|s| s.subnet.as_deref()).unwrap_or("-");
    let ready = condition(status.map(|s| s.conditions.as_slice()), READY);
    format!(
        "{} ({:?}, {subnet}, {ready})",
        network.name_any(),
        network.spec.driver
    )
}

fn endpoint_row(endpoint: &Endpoint) -> String {
    let status = endpoint.status.as_ref();
    let address = status
        .and_then(|s| s.ipv4_address.as_deref())
        .unwrap_or("-");
    let network = status
        .and_then(|s| s.network.as_deref())
        .or(endpoint.spec.network.as_deref())
        .unwrap_or(pier_operator::defaults::BRIDGE);
    let attached = condition(status.map(|s| s.conditions.as_slice()), ATTACHED);
    format!(
        "{}/{} ({network}, {address}, {attached})",
        endpoint.namespace().unwrap_or_default(),
        endpoint.name_any()
    )
}

fn port_publish_row(publish: &PortPublish) -> String {
    let summary = publish
        .status
        .as_ref()
        .and_then(|s| s.summary.as_deref())
        .unwrap_or("-");
    format!(
        "{}/{} ({summary})",
        publish.namespace().unwrap_or_default(),
        publish.name_any()
    )
}

/// `Attached` or `not Attached: Reason`, from the condition `type_`.
fn condition(conditions: Option<&[Condition]>, type_: &str) -> String {
    match conditions.and_then(|c| c.iter().find(|c| c.type_ == type_)) {
        Some(c) if c.status == "True" => type_.to_owned(),
        Some(c) => format!("not {type_}: {}", c.reason),
        None => format!("not {type_} yet"),
    }
}

fn read_kernel(args: &StatusArgs) -> Result<Kernel, String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("run `pier status` as root to read the kernel".to_owned());
    }
    let netns = args.node_netns.as_deref();
    let links = pier_node::dataplane::Dataplane::new(args.node_netns.clone())
        .owned_links()
        .map_err(|e| pier_runtime::error_chain(&e))?;
    let (inet, ip6) =
        pier_node::firewall::tables_present(netns).map_err(|e| pier_runtime::error_chain(&e))?;
    let tables = [(inet, "table inet pier"), (ip6, "table ip6 pier")]
        .into_iter()
        .filter_map(|(present, name)| present.then_some(name))
        .collect();
    let namespaces = pier_node::kernel::named_netns::NamedNetns::new(
        pier_crds::names::NETNS_DIR,
        &args.data_dir.join("node"),
    )
    .created();
    Ok(Kernel {
        links: links.into_iter().map(|l| l.name).collect(),
        tables,
        namespaces,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_pier_shows_every_part() {
        let status = Status {
            running: Some("running: `pier up` (pid 7, data directory /d)".into()),
            data_dir: "/d".into(),
            kubeconfig: Ok("https://127.0.0.1:6443".into()),
            merged_into: Some("/home/ann/.kube/config".into()),
            api: Ok(Objects {
                nodes: vec!["node-a".into()],
                networks: vec!["bridge (Bridge, 172.18.0.0/16, Ready)".into()],
                endpoints: vec![],
                port_publishes: vec![],
            }),
            kernel: Ok(Kernel {
                links: vec!["pier-0123".into()],
                tables: vec!["table inet pier"],
                namespaces: vec!["con1".into()],
            }),
        };
        let text = render(&status);
        for expected in [
            "Pier:            running: `pier up` (pid 7",
            "API server:      https://127.0.0.1:6443",
            "Kubeconfig:      /d/kubeconfig",
            "Context:         pier (in /home/ann/.kube/config)",
            "Nodes:           1\n  node-a",
            "Networks:        1\n  bridge (Bridge, 172.18.0.0/16, Ready)",
            "Endpoints:       0",
            "  nftables:      table inet pier",
            "  links:         pier-0123",
            "  namespaces:    con1",
        ] {
            assert!(text.contains(expected), "{expected:?} in:\n{text}");
        }
    }

    #[test]
    fn a_stopped_pier_says_why_each_part_is_missing() {
        let status = Status {
            running: None,
            data_dir: "/d".into(),
            kubeconfig: Err("/d/kubeconfig: not found".into()),
            merged_into: None,
            api: Err("/d/kubeconfig: not found".into()),
            kernel: Ok(Kernel::default()),
        };
        let text = render(&status);
        assert!(text.starts_with("Pier:            not running\n"), "{text}");
        assert!(text.contains("API server:      unknown (/d/kubeconfig: not found)"));
        assert!(text.contains("Objects:         unavailable"));
        assert!(text.contains("  links:         none"));
    }

    #[test]
    fn a_condition_names_its_reason_when_false() {
        let condition_of = |status: &str, reason: &str| {
            pier_crds::conditions::observe(&[], ATTACHED, status == "True", reason, "", None)
        };
        let t = [condition_of("True", "Attached")];
        assert_eq!(condition(Some(&t), ATTACHED), "Attached");
        let f = [condition_of("False", "AddressInUse")];
        assert_eq!(condition(Some(&f), ATTACHED), "not Attached: AddressInUse");
        assert_eq!(condition(None, ATTACHED), "not Attached yet");
    }
}
