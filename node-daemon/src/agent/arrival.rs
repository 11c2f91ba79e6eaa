//! The attach path's kernel work, shared by the attaches in flight.
//!
//! An apply has a cost of its own besides each endpoint's veth: it reads the node's bridges and
//! their addresses, renders table `inet pier` and reads the kernel's copy to diff it, hands the
//! node's state to DNS, and applies run one at a time. With one apply per Endpoint, 2,000
//! Endpoints applied at once paid that 2,000 times, one after another. Each attach instead
//! submits its endpoint's id to one loop, which attaches every endpoint waiting with one apply
//! (scoped to them: [`Scope::Endpoints`]), and each attach reads its own outcome from the shared
//! report. The loop takes what is queued and goes at once (no waiting for more): a lone attach
//! costs what it did, and attaches that arrive while an apply runs go together in the next one.
//! A failed apply is an error of every attach in it (each retries with its backoff), as one
//! endpoint's failure in a report is that endpoint's only.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use super::Error;
use super::batch::{Batcher, Batches, Linger};
use super::build::Built;
use super::context::Context;
use super::metrics;
use crate::dataplane::{Report, Scope};

/// What one apply did for the attaches it served: the state it applied (the projection for
/// their endpoints) and its report.
#[derive(Debug)]
pub struct Arrived {
    pub built: Built,
    pub report: Report,
}

/// What one apply answers every attach it served, or why it failed as a whole.
pub type Attached = Result<Arc<Arrived>, Arc<Error>>;

/// Where attaches submit their endpoints' ids.
pub type Arrivals = Batcher<String, Attached>;

/// No waiting for more: an attach goes with those queued while the previous apply ran.
pub const LINGER: Linger = Linger {
    quiet: Duration::ZERO,
    longest: Duration::ZERO,
};

/// A batcher for the attaches and the queue [`run`] serves.
pub fn arrivals() -> (Arrivals, Batches<String, Attached>) {
    Batcher::new(LINGER)
}

/// Serves the attaches until the agent stops.
pub async fn run(ctx: Arc<Context>, batches: Batches<String, Attached>) {
    batches.run(|ids| attach(Arc::clone(&ctx), ids)).await;
}

/// Attaches the endpoints `ids` (each once, whoever asked twice) with one apply.
async fn attach(ctx: Arc<Context>, ids: Vec<String>) -> Attached {
    let started = std::time::Instant::now();
    let ids: BTreeSet<String> = ids.into_iter().collect();
    let attaches = ids.len();
    ctx.config.metrics.attach_batch.observe(attaches as f64);
    let scope = Scope::Endpoints(ids.into_iter().collect());
    let mut built = ctx.projection(&scope);
    let report = metrics::apply(&ctx, &mut built, scope)
        .await
        .map_err(Arc::new)?;
    tracing::debug!(attaches, took = ?started.elapsed(), "attached together");
    Ok(Arc::new(Arrived { built, report }))
}
