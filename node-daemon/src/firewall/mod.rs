//! nftables for Pier: one table, `inet pier`, changed in one atomic netlink batch per apply.
//!
//! - [`render`] computes the desired table from a `NodeState` (pure, unit-tested);
//! - [`plan`] reads the table back from the kernel and diffs it against the rendering;
//! - [`apply`] sends the plan as one batch; [`reset`] deletes the table.
//!
//! Pier never touches any other table (DESIGN.md §4). Everything goes through libnftnl over
//! netlink; the `nft` binary is not needed at run time (tests use it to inspect).
//!
//! What the rules do (see `render.rs` for the exact rules and why):
//! - masquerade traffic from a non-internal network's subnet leaving through a non-Pier interface;
//! - drop traffic routed between two different Pier bridges (network isolation);
//! - internal networks: drop forwarding between their bridge and non-Pier interfaces;
//! - published ports: DNAT through maps in prerouting (other hosts, endpoints = hairpin) and
//!   output (the node itself, including 127.0.0.1), with masquerade of hairpin and loopback
//!   sources.
//!
//! Kernel settings the rules rely on, set by the links side (`sysctl.rs`): `net.ipv4.ip_forward=1`
//! in the host namespace and `net.ipv4.conf.<bridge>.route_localnet=1` on Pier bridges (for
//! `127.0.0.1:hostPort`). Where br_netfilter is active (`bridge-nf-call-iptables=1`, the
//! default once the module is loaded), an endpoint reaching its *own* published port also needs
//! hairpin mode on its bridge port, as with Docker: its DNATed frame is bridged back out the port
//! it came in on.

mod expr;
mod kernel;
mod plan;
mod render;
mod sys;

use std::io;
use std::path::Path;

use crate::netns::{self, NetnsError};
use crate::state::NodeState;

pub use expr::{CmpOp, Expr, MetaKey, PayloadBase, Verdict};
pub use plan::{FirewallPlan, Rebuild, SetChange};
pub use render::{
    ChainKind, ChainSpec, Element, Field, Hook, MAP_PORTS_ADDR, MAP_PORTS_ANY, RuleSpec, Ruleset,
    SET_BRIDGE_PAIRS, SET_BRIDGES, SET_INTERNAL, SET_MASQ, SetSpec, TABLE, render,
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
    #[error("building the nftables batch: invalid {what}")]
    Build { what: String },
    #[error("the kernel rejected the nftables batch for table inet pier")]
    Apply(#[source] io::Error),
    #[error("deleting table inet pier")]
    Reset(#[source] io::Error),
}

/// Reads table `inet pier` from the kernel of `host_netns` (`None`: this process's namespace)
/// and returns what must change for it to match `state`.
pub fn plan(host_netns: Option<&Path>, state: &NodeState) -> Result<FirewallPlan, FirewallError> {
    let desired = render(state);
    let current = netns::run_in(host_netns, || {
        let socket = kernel::open()?;
        kernel::read(&socket)
    })
    .map_err(FirewallError::Netns)??;
    Ok(plan::diff(current.as_ref(), desired))
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

/// Deletes table `inet pier` and everything in it; no other table is touched. Succeeds when
/// there is no such table.
pub fn reset(host_netns: Option<&Path>) -> Result<(), FirewallError> {
    let batch = kernel::delete_table_batch();
    netns::run_in(host_netns, move || {
        let socket = kernel::open()?;
        match kernel::send(&socket, &batch) {
            Err(err) if !kernel::is_not_found(&err) => Err(FirewallError::Reset(err)),
            _ => Ok(()),
        }
    })
    .map_err(FirewallError::Netns)?
}
