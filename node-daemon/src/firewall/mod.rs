//! nftables for Pier: table `inet pier` for both families, and on a node with IPv6 networks table
//! `ip6 pier` (`[::1]:hostPort`, see `render.rs`), changed in one atomic netlink batch per apply.
//!
//! - [`render`] computes the desired tables from a `NodeState` (pure, unit-tested);
//! - [`plan`] reads the tables back from the kernel and diffs them against the rendering;
//! - [`apply`] sends the plan as one batch; [`reset`] deletes the tables.
//!
//! Pier's own tables aside, it only adds tagged accepts to other tables. Where another firewall's
//! iptables or ip6tables chains would drop Pier's traffic (Docker's `FORWARD` policy DROP, ufw),
//! [`iptables`] adds the accepts Pier's bridges need there, through the tools, since those tables
//! are theirs to write; [`native`] does the same in firewalls written natively in nftables.
//! Everything else goes through libnftnl over netlink; the `nft` binary is not needed at run
//! time (tests use it to inspect).
//!
//! What the rules do (see `render.rs` for the exact rules and why), for IPv4 and IPv6:
//! - masquerade traffic from a non-internal network's subnet leaving through a non-Pier interface;
//! - drop traffic routed between two different Pier bridges (network isolation);
//! - internal networks: drop forwarding between their bridge and non-Pier interfaces;
//! - published ports: DNAT through maps in prerouting (other hosts, endpoints = hairpin) and
//!   output (the node itself, including 127.0.0.1 and ::1), with masquerade of hairpin and
//!   loopback sources.
//!
//! Kernel settings the rules rely on, set by the links side (`sysctl.rs`): `net.ipv4.ip_forward=1`
//! (and IPv6 forwarding on a node with IPv6 networks) in the host namespace and
//! `net.ipv4.conf.<bridge>.route_localnet=1` on Pier bridges (for `127.0.0.1:hostPort`). Where br_netfilter is active (`bridge-nf-call-iptables=1`, the
//! default once the module is loaded), an endpoint reaching its *own* published port also needs
//! hairpin mode on its bridge port, as with Docker: its DNATed frame is bridged back out the port
//! it came in on.

mod expr;
pub mod iptables;
mod kernel;
pub mod native;
mod plan;
mod render;
mod sys;

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::kernel::netns::{self, NetnsError};
use crate::state::NodeState;

pub use expr::{CmpOp, Expr, MetaKey, PayloadBase, Verdict};
pub use iptables::{Backend, IptablesChange};
pub use native::NativeChange;
pub use plan::Loopback6Change;
pub use plan::{FirewallPlan, Rebuild, SetChange};
pub use render::{
    ChainKind, ChainSpec, Element, Field, Hook, LOOPBACK6_CHAIN, LOOPBACK6_PRIORITY,
    LOOPBACK6_RULES, MAP_PORTS_ADDR, MAP_PORTS_ADDR6, MAP_PORTS_ANY, MAP_PORTS_ANY6, RuleSpec,
    Ruleset, SET_BRIDGE_PAIRS, SET_BRIDGES, SET_HOST_BRIDGES, SET_INTERNAL, SET_MASQ, SET_MASQ6,
    SetSpec, TABLE, render, render_with,
};

/// A firewall step that failed.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("running nftables work in the host network namespace")]
    Netns(#[source] NetnsError),
    #[error("opening a netfilter netlink socket")]
    Socket(#[source] io::Error),
    #[error("reading the {what} of table inet pier back from the kernel")]
    Read {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("reading the {what} of the node's other nftables tables")]
    ReadNative {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "the kernel rejected the batch of Pier's accepts in other nftables tables (a firewall \
         reloading meanwhile is repaired by the next resync)"
    )]
    NativeApply(#[source] io::Error),
    #[error("building the nftables batch: invalid {what}")]
    Build { what: String },
    #[error("the kernel rejected the nftables batch for table inet pier")]
    Apply(#[source] io::Error),
    #[error("deleting table inet pier or ip6 pier")]
    Reset(#[source] io::Error),
    #[error(
        "the node has an iptables {backend} filter table, but {tool} is not installed: Pier cannot \
         add the accepts its bridges need there (install the iptables package)"
    )]
    IptablesToolMissing { backend: Backend, tool: String },
    #[error("running {tool}")]
    IptablesRun {
        tool: String,
        #[source]
        source: io::Error,
    },
    #[error("{tool} failed: {stderr}")]
    IptablesFailed { tool: String, stderr: String },
}

/// Reads table `inet pier` from the kernel of `host_netns` (`None`: this process's namespace)
/// and returns what must change for it to match `state`. The other engines' bridges stay as the
/// last full plan found them (an attach does not read every link of the node).
pub fn plan(host_netns: Option<&Path>, state: &NodeState) -> Result<FirewallPlan, FirewallError> {
    plan_with(host_netns, state, None, None)
}

/// [`plan`], with the other engines' bridges now on the node (`None`: as the kernel has them)
/// and the VXLAN ids whose Pier device exists on the node (`None`: every overlay's).
pub fn plan_with(
    host_netns: Option<&Path>,
    state: &NodeState,
    host_bridges: Option<&[String]>,
    vxlan_devices: Option<&BTreeSet<u32>>,
) -> Result<FirewallPlan, FirewallError> {
    let (current, current6) = netns::run_in(host_netns, || {
        let socket = kernel::open()?;
        kernel::read(&socket)
    })
    .map_err(FirewallError::Netns)??;
    let kept: Vec<String>;
    let host_bridges = match host_bridges {
        Some(names) => names,
        None => {
            kept = current
                .as_ref()
                .and_then(|table| table.elements.get(SET_HOST_BRIDGES))
                .into_iter()
                .flatten()
                .map(|element| render::ifname_of(&element.key))
                .collect();
            &kept
        }
    };
    Ok(plan::diff(
        current.as_ref(),
        current6.as_ref(),
        render_with(state, host_bridges, vxlan_devices),
    ))
}

/// Carries out `plan` in one atomic netlink batch. An empty plan sends nothing.
pub fn apply(host_netns: Option<&Path>, plan: &FirewallPlan) -> Result<(), FirewallError> {
    if plan.is_empty() {
        return Ok(());
    }
    let batch = kernel::batch(plan)?;
    netns::run_in(host_netns, move || {
        let socket = kernel::open()?;
        kernel::send(&socket, &batch).map_err(FirewallError::Apply)
    })
    .map_err(FirewallError::Netns)?
}

/// Which of Pier's tables exist now: (`inet pier`, `ip6 pier`), for `pier status`.
pub fn tables_present(host_netns: Option<&Path>) -> Result<(bool, bool), FirewallError> {
    let (inet, ip6) = netns::run_in(host_netns, || {
        let socket = kernel::open()?;
        kernel::read(&socket)
    })
    .map_err(FirewallError::Netns)??;
    Ok((inet.is_some(), ip6.is_some()))
}

/// Deletes tables `inet pier` and `ip6 pier` and everything in them; no other table is touched.
/// Succeeds when there is no such table.
pub fn reset(host_netns: Option<&Path>) -> Result<(), FirewallError> {
    netns::run_in(host_netns, move || {
        let socket = kernel::open()?;
        // One batch each: a batch fails whole when one of its tables is missing.
        for batch in [kernel::delete_table_batch(), kernel::delete_table6_batch()] {
            match kernel::send(&socket, &batch) {
                Err(err) if !kernel::is_not_found(&err) => return Err(FirewallError::Reset(err)),
                _ => {}
            }
        }
        Ok(())
    })
    .map_err(FirewallError::Netns)?
}

/// Pier's accepts in other programs' nftables tables (see [`native`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NativePlan {
    pub changes: Vec<NativeChange>,
    /// Why a table got no accepts (it has an owner), one sentence each.
    pub notes: Vec<String>,
}

/// Reads the base chains at the forward and input hooks of other programs' nftables tables in
/// `host_netns` and returns what gives each one Pier's accepts.
pub fn native_plan(host_netns: Option<&Path>) -> Result<NativePlan, FirewallError> {
    let (chains, owned) = netns::run_in(host_netns, || kernel::native_read(&kernel::open()?))
        .map_err(FirewallError::Netns)??;
    Ok(NativePlan {
        changes: native::diff(&chains),
        notes: owned.iter().map(|t| native::owned_note(t)).collect(),
    })
}

/// Carries out `changes` in one atomic netlink batch. Nothing is sent when there are none.
pub fn native_apply(
    host_netns: Option<&Path>,
    changes: &[NativeChange],
) -> Result<(), FirewallError> {
    if changes.is_empty() {
        return Ok(());
    }
    let batch = kernel::native_batch(changes)?;
    netns::run_in(host_netns, move || {
        kernel::send(&kernel::open()?, &batch).map_err(FirewallError::NativeApply)
    })
    .map_err(FirewallError::Netns)?
}

/// Deletes every rule of Pier's from other programs' nftables tables, by handle, and nothing
/// else; returns what it deleted.
pub fn native_reset(host_netns: Option<&Path>) -> Result<Vec<NativeChange>, FirewallError> {
    netns::run_in(host_netns, || {
        let socket = kernel::open()?;
        let (chains, _) = kernel::native_read(&socket)?;
        let changes = native::removal(&chains);
        if !changes.is_empty() {
            let batch = kernel::native_batch(&changes)?;
            kernel::send(&socket, &batch).map_err(FirewallError::NativeApply)?;
        }
        Ok(changes)
    })
    .map_err(FirewallError::Netns)?
}

/// Where the legacy backends list their tables (this thread's namespace: the work runs on a
/// thread inside the host namespace).
const LEGACY_TABLES: &str = "/proc/thread-self/net/ip_tables_names";
const LEGACY6_TABLES: &str = "/proc/thread-self/net/ip6_tables_names";

/// The built-in chains of `backend`'s filter table that exist in the calling thread's namespace;
/// empty when the backend has no filter table (nothing of Pier's belongs there then).
fn iptables_builtins(backend: Backend) -> Result<Vec<String>, FirewallError> {
    let legacy = |tables: &str| match std::fs::read_to_string(tables) {
        // x_tables creates every built-in chain with the table. Reading this file loads nothing.
        Ok(names) if names.lines().any(|n| n.trim() == "filter") => {
            iptables::builtins().map(str::to_owned).collect()
        }
        _ => Vec::new(),
    };
    let existing = match backend {
        Backend::Nft => kernel::iptables_nft_builtins(&kernel::open()?, sys::FAMILY_IPV4)?,
        Backend::Nft6 => kernel::iptables_nft_builtins(&kernel::open()?, sys::FAMILY_IPV6)?,
        Backend::Legacy => legacy(LEGACY_TABLES),
        Backend::Legacy6 => legacy(LEGACY6_TABLES),
    };
    Ok(existing
        .into_iter()
        .filter(|c| iptables::builtins().any(|b| b == c))
        .collect())
}

/// Runs an iptables tool in the calling thread's namespace (a child inherits it).
fn run_tool(
    backend: Backend,
    tool: &str,
    args: &[&str],
    stdin: &str,
) -> Result<String, FirewallError> {
    let spawned = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return Err(FirewallError::IptablesToolMissing {
                backend,
                tool: tool.to_owned(),
            });
        }
        other => other.map_err(|source| FirewallError::IptablesRun {
            tool: tool.to_owned(),
            source,
        })?,
    };
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin.as_bytes())
            .map_err(|source| FirewallError::IptablesRun {
                tool: tool.to_owned(),
                source,
            })?;
    }
    let output = child
        .wait_with_output()
        .map_err(|source| FirewallError::IptablesRun {
            tool: tool.to_owned(),
            source,
        })?;
    if !output.status.success() {
        return Err(FirewallError::IptablesFailed {
            tool: tool.to_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// What `backend`'s filter table has now; `None` when there is no filter table.
fn iptables_read(backend: Backend) -> Result<Option<iptables::FilterTable>, FirewallError> {
    let builtins = iptables_builtins(backend)?;
    if builtins.is_empty() {
        return Ok(None);
    }
    let save = run_tool(backend, &backend.save_tool(), &["-t", "filter"], "")?;
    Ok(Some(iptables::FilterTable::parse(&save, builtins)))
}

/// For each iptables backend with a filter table in `host_netns`: what gives Pier's bridges
/// their accepts there (see [`iptables`]). Empty when every backend is in sync or has no table.
pub fn iptables_plan(host_netns: Option<&Path>) -> Result<Vec<IptablesChange>, FirewallError> {
    netns::run_in(host_netns, || {
        let mut changes = Vec::new();
        for backend in Backend::ALL {
            if let Some(table) = iptables_read(backend)? {
                changes.extend(iptables::diff(backend, &table));
            }
        }
        Ok(changes)
    })
    .map_err(FirewallError::Netns)?
}

/// Carries out each change in one `iptables-restore --noflush` batch per backend.
pub fn iptables_apply(
    host_netns: Option<&Path>,
    changes: &[IptablesChange],
) -> Result<(), FirewallError> {
    if changes.is_empty() {
        return Ok(());
    }
    let changes = changes.to_vec();
    netns::run_in(host_netns, move || {
        for change in &changes {
            run_restore(change)?;
        }
        Ok(())
    })
    .map_err(FirewallError::Netns)?
}

/// Removes Pier's chains and jumps from every iptables backend; nothing else is touched.
/// Returns what was removed.
pub fn iptables_reset(host_netns: Option<&Path>) -> Result<Vec<IptablesChange>, FirewallError> {
    netns::run_in(host_netns, || {
        let mut removed = Vec::new();
        for backend in Backend::ALL {
            let Some(table) = iptables_read(backend)? else {
                continue;
            };
            if let Some(change) = iptables::removal(backend, &table) {
                run_restore(&change)?;
                removed.push(change);
            }
        }
        Ok(removed)
    })
    .map_err(FirewallError::Netns)?
}

/// One `iptables-restore --noflush` batch; `-w` waits for the xtables lock that other users of
/// the legacy backend hold.
fn run_restore(change: &IptablesChange) -> Result<String, FirewallError> {
    let tool = change.backend.restore_tool();
    run_tool(
        change.backend,
        &tool,
        &["--noflush", "-w", "5"],
        &change.script,
    )
}
