//! `pier dataplane plan|apply|reset`: drive the dataplane from a NodeState file, no API server.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::dataplane::{Dataplane, DataplaneError, Scope};
use crate::kernel::node_lock::{Holder, LOCK_DIR, NodeLock};
use crate::state::NodeState;

/// `pier dataplane ...`
#[derive(Debug, Args)]
pub struct DataplaneArgs {
    #[command(subcommand)]
    pub command: DataplaneCommand,
    /// The node's network namespace file (e.g. /var/run/netns/node1); default: this process's own.
    #[arg(long, global = true, value_name = "HOST_NETNS_PATH")]
    pub netns: Option<PathBuf>,
}

/// The dataplane subcommands.
#[derive(Debug, Subcommand)]
pub enum DataplaneCommand {
    /// Print what `apply` would change, read against the kernel now.
    Plan(StateFile),
    /// Make the kernel match the state; prints a per-object report, fails if any object failed.
    Apply(StateFile),
    /// Remove every bridge and veth Pier owns (and its nftables table) from the node.
    Reset,
}

/// The state file argument.
#[derive(Debug, Args)]
pub struct StateFile {
    /// A NodeState as JSON (see node-daemon/examples/).
    #[arg(short = 'f', long = "file", value_name = "STATE_JSON")]
    pub file: PathBuf,
    /// Also check every endpoint's interface inside its namespace (slower).
    #[arg(long)]
    pub deep: bool,
}

/// A NodeState file (`-f state.json`) that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error("reading state file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing state file {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Reads a NodeState from a JSON file (`pier dataplane ... -f`, `pier dns -f`).
pub fn read_state(path: &Path) -> Result<NodeState, StateFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| StateFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| StateFileError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// What the `dataplane` command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    State(#[from] StateFileError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error("{0} object(s) failed (see the report above)")]
    Failed(usize),
    #[error("taking the node's namespace")]
    Lock(#[source] crate::kernel::node_lock::LockError),
}

/// Test hook: `PIER_DATAPLANE_STEP_DELAY_MS` slows every applied step, so a test can kill an
/// apply half-way. Unset in normal use.
const STEP_DELAY_ENV: &str = "PIER_DATAPLANE_STEP_DELAY_MS";

/// The node's lock of the namespace `args` works in, for `command` (with `file` as what it
/// works from, shown to a second instance).
fn lock(args: &DataplaneArgs, command: &str, file: &Path) -> Result<NodeLock, CliError> {
    NodeLock::acquire(
        Path::new(LOCK_DIR),
        args.netns.as_deref(),
        &Holder::this_process(command, file),
    )
    .map_err(CliError::Lock)
}

/// Runs `pier dataplane ...`, printing the plan or report on stdout.
pub fn run(args: &DataplaneArgs) -> Result<(), CliError> {
    let delay = std::env::var(STEP_DELAY_ENV)
        .ok()
        .and_then(|ms| ms.parse::<u64>().ok())
        .map(Duration::from_millis);
    let dataplane = Dataplane::new(args.netns.clone()).with_step_delay(delay);
    match &args.command {
        DataplaneCommand::Plan(file) => {
            let state = read_state(&file.file)?;
            let plan = dataplane.deep(file.deep).plan(&state, &Scope::Full)?;
            print!("{plan}");
        }
        DataplaneCommand::Apply(file) => {
            let state = read_state(&file.file)?;
            // Changing the kernel under a running `pier up` or `pier node` would undo its work.
            let _owner = lock(args, "pier dataplane apply", &file.file)?;
            let report = dataplane.deep(file.deep).apply(&state, &Scope::Full)?;
            print!("{report}");
            let failed = report.failures().count();
            if failed > 0 {
                return Err(CliError::Failed(failed));
            }
        }
        DataplaneCommand::Reset => {
            let _owner = lock(args, "pier dataplane reset", Path::new("/"))?;
            let report = dataplane.reset()?;
            print!("{report}");
            let failed = report.failures().count();
            if failed > 0 {
                return Err(CliError::Failed(failed));
            }
        }
    }
    Ok(())
}
