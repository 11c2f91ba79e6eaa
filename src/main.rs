//! `pier`: one binary, one subcommand per role (operator, node, up, dataplane, ...).

mod allocator;
mod errors;
mod kubeconfig;
mod manifests;
mod status;
mod up;

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "pier",
    version,
    about = "Docker-style container networking for Kubernetes"
)]
struct Cli {
    /// Log format on stderr: `text` for people, `json` (one object per line) for log collectors.
    #[arg(long, global = true, env = "PIER_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Logs go to stderr (stdout carries command output such as `pier crds`); `RUST_LOG` filters.
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,hickory_server=warn"));
    // Colours only on a terminal: a log file or `kubectl logs` would show the escape codes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions of Pier's API as YAML (for `kubectl apply -f -`).
    Crds,
    /// Drive the node dataplane from a NodeState file: plan, apply, reset.
    Dataplane(pier_node::cli::DataplaneArgs),
    /// Serve the embedded DNS for a NodeState file (re-read on change) until Ctrl-C.
    Dns(pier_node::dns::cli::DnsArgs),
    /// Run the cluster operator: allocate subnets, addresses and host ports (leader-elected).
    Operator(pier_operator::OperatorArgs),
    /// Run the node agent: bridges, veths, ports and DNS for this node's objects.
    Node(pier_node::agent::cli::NodeArgs),
    /// Run everything on this machine: API server (kubectl works), operator and node agent.
    Up(up::UpArgs),
    /// Remove Pier's kernel objects from this machine (after `pier up` stopped).
    Down(up::DownArgs),
    /// Show what `pier up` runs here: API address, kubeconfig, nodes, networks, endpoints and
    /// Pier's kernel objects (like `docker info`).
    Status(status::StatusArgs),
    /// Print a shell completion script: `source <(pier completion bash)`.
    Completion {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
}

/// How long a blocking thread (kernel work: netlink, mounts) waits for more work before it
/// exits. A burst of Endpoints starts about ten; tokio's default of 10 s kept them, each with its
/// stack and its allocator cache (about 1 MiB a thread after a burst), well after the burst was
/// over (benches/memory.sh). Starting a thread again costs tens of microseconds.
const BLOCKING_THREAD_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(1);

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .thread_keep_alive(BLOCKING_THREAD_KEEP_ALIVE)
        .on_thread_park(allocator::on_worker_park)
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let chain: Vec<String> = error.chain().map(ToString::to_string).collect();
            eprint!("{}", errors::render(&chain));
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Dataplane(args) => {
            pier_node::cli::run(&args).context("pier dataplane")?;
        }
        Command::Dns(args) => {
            pier_node::dns::cli::run(&args).context("pier dns")?;
        }
        Command::Operator(args) => {
            runtime()?
                .block_on(pier_operator::run(args))
                .context("pier operator")?;
        }
        Command::Node(args) => {
            runtime()?
                .block_on(pier_node::agent::cli::run(args))
                .context("pier node")?;
        }
        Command::Up(args) => {
            runtime()?.block_on(up::run(args)).context("pier up")?;
        }
        Command::Down(args) => {
            up::down(&args).context("pier down")?;
        }
        Command::Status(args) => {
            status::run(&args)?;
        }
        Command::Completion { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "pier", &mut std::io::stdout());
        }
        Command::Crds => {
            let yaml = pier_crds::manifests::all_crds_yaml().context("rendering the CRDs")?;
            std::io::stdout()
                .write_all(yaml.as_bytes())
                .context("writing the CRDs to stdout")?;
        }
    }
    Ok(())
}
