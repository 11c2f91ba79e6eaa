//! Pier's cluster operator.
//!
//! Allocation happens here, once, and is recorded in status (DESIGN.md §2). The allocators are pure
//! logic with no kube imports so they can be tested and benchmarked directly.

pub mod ipam;
pub mod ports;
