//! What the operator's admin port reports on `/readyz` (the port itself is
//! [`pier_runtime::admin`]'s, with `/livez` and the operator's `/metrics`).

use std::sync::atomic::{AtomicBool, Ordering};

use pier_runtime::admin::Readiness;

/// The operator's readiness.
#[derive(Debug, Default)]
pub struct Health {
    /// Ready: a standby waiting for the lease, or the leader once its allocations are rebuilt
    /// and its controllers run.
    pub ready: AtomicBool,
}

impl Readiness for Health {
    fn ready(&self) -> Result<(), &'static str> {
        if self.ready.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err("rebuilding allocations")
        }
    }
}
