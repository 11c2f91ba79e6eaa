//! Pier's per-node daemon.
//!
//! Turns the desired `NodeState` of one node into kernel objects (bridges, veths, addresses, routes,
//! one nftables table) and serves network-scoped DNS. See DESIGN.md §2 and §4.

pub mod agent;
pub mod cli;
pub mod dns;
pub mod firewall;
pub mod host_ports;
pub mod hostnet;
pub mod named_netns;
pub mod netlink;
pub mod netns;
pub mod node_lock;
pub mod podns;
pub mod reconcile;
pub mod state;
pub mod sysctl;
