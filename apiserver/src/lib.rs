//! Pier's embedded Kubernetes-compatible API server.
//!
//! The store of local mode (`pier up`) and of the controller tests. See DESIGN.md §2.
