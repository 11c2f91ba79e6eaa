//! Pier's cluster operator.
//!
//! Allocation happens here, once, and is recorded in status, which the node agents read. The
//! allocators are pure
//! logic with no kube imports so they can be tested and benchmarked directly; [`allocations`]
//! composes them, [`controllers`] drive them from the API, [`run`] elects a leader and runs them.

pub mod admin;
pub mod allocations;
pub mod conditions;
pub mod config;
pub mod context;
pub mod controllers;
pub mod defaults;
pub mod ipam;
pub mod leader;
pub mod metrics;
pub mod pace;
pub mod pod_networks;
pub mod ports;
pub mod run;
pub mod stores;

pub use config::{Config, OperatorArgs};
pub use run::{RunError, run, run_with_client};
