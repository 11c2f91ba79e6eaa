//! Pier's per-node daemon, grouped by layer.
//!
//! - `kernel`: the kernel's primitives Pier uses (network namespaces, netlink, sysctl, the host's
//!   addresses, the node lock, host port holders). No Pier policy.
//! - `names`: the names Pier's kernel objects have and the hash behind them.
//! - `state`: `NodeState`, the desired state of one node: the contract between the agent and the
//!   layers below.
//! - `dataplane`: bridges, veths, addresses and routes from `NodeState`.
//! - `firewall`: table `inet pier` and the accepts in other firewalls.
//! - `dns`: network-scoped DNS.
//! - `agent`: the controllers that watch the API and drive the layers above.
//!
//! See docs/architecture.md.

pub mod agent;
pub mod cli;
pub mod dataplane;
pub mod dns;
pub mod firewall;
pub mod kernel;
pub mod names;
pub mod state;
