//! The detach path's kernel work, shared by the detaches in flight.
//!
//! Deleting a veth costs the kernel about 20 ms of RCU grace periods, serialized by its RTNL
//! lock, so 500 Endpoints deleted one after another took 10 s of kernel time alone. Each detach
//! instead submits its [`Departure`] (its veth, its network's bridge should nothing else use it,
//! its named namespace) to one loop, which removes what every detach waiting asked for with one
//! apply: one plan from the node's incremental state as it is then (projected for the links
//! removed, as every scoped apply is; the Endpoints being deleted are no longer in it), one
//! table update, all the links in one kernel request (see `dataplane::bulk`),
//! then the namespaces Pier made that nothing stays in. Every detach of the batch waits for that
//! and gets the shared answer, so a finalizer is still removed only once its own veth and
//! namespace are gone, and a failed apply is an error of every detach in it (each retries with
//! its backoff).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use super::Error;
use super::batch::{Batcher, Batches, Linger};
use super::context::Context;
use super::metrics;
use crate::dataplane::{ObjectKey, Outcome, Report, Scope};
use crate::kernel::named_netns::NamedNetnsError;

/// What one detach asks to be removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Departure {
    /// The endpoint's host-side veth.
    pub veth: String,
    /// Other links to remove unless still wanted (its network's bridge).
    pub links: Vec<String>,
    /// Its named namespace (`spec.target.netns`), removed after its veth if Pier made it and no
    /// Endpoint that stays targets it.
    pub netns: Option<String>,
}

/// What one removal did for the detaches it served.
#[derive(Debug, Default)]
pub struct Removal {
    /// The apply's report (the links by [`ObjectKey::Link`]).
    pub report: Report,
    /// The named namespaces that could not be removed, with why.
    pub netns_failures: BTreeMap<String, Arc<NamedNetnsError>>,
}

/// What one removal answers every detach it served, or why it failed as a whole.
pub type Removed = Result<Arc<Removal>, Arc<Error>>;

/// Where detaches submit their departures.
pub type Removals = Batcher<Departure, Removed>;

/// How long a removal waits for more detaches: until none came for 10 ms, at most 100 ms. The
/// detaches of many Endpoints deleted at once arrive over a while (as the controller's slots
/// free up), and every removal pays a fixed cost (a plan, a dump of the node's links, the kernel's
/// grace periods), so a burst still arriving is worth waiting for; a lone detach waits 10 ms,
/// little beside the kernel's own.
pub const LINGER: Linger = Linger {
    quiet: Duration::from_millis(10),
    longest: Duration::from_millis(100),
};

/// A batcher for the detaches and the queue [`run`] serves.
pub fn removals() -> (Removals, Batches<Departure, Removed>) {
    Batcher::new(LINGER)
}

/// Serves the detaches' removals until the agent stops.
pub async fn run(ctx: Arc<Context>, batches: Batches<Departure, Removed>) {
    batches
        .run(|departures| remove(Arc::clone(&ctx), departures))
        .await;
}

/// Removes the links of every departure in one apply, then their namespaces.
async fn remove(ctx: Arc<Context>, departures: Vec<Departure>) -> Removed {
    let started = std::time::Instant::now();
    let links: BTreeSet<String> = departures
        .iter()
        .flat_map(|d| std::iter::once(&d.veth).chain(&d.links))
        .cloned()
        .collect();
    let scope = Scope::Removal(links.into_iter().collect());
    let mut built = ctx.projection(&scope);
    let applied = metrics::apply(&ctx, &mut built, scope).await;
    ctx.config
        .metrics
        .detach_batch
        .observe(departures.len() as f64);
    let report = applied.map_err(Arc::new)?;
    let staying = ctx.endpoints.state().into_iter().filter_map(|ep| {
        let target = ep.spec.target.netns.as_ref()?;
        ep.metadata
            .deletion_timestamp
            .is_none()
            .then(|| target.name.clone())
    });
    let namespaces = namespaces_to_remove(&departures, &report, staying.collect());
    let kernel = Arc::clone(&ctx.kernel);
    let netns_failures = ctx
        .blocking(move || {
            let mut failures = BTreeMap::new();
            for name in namespaces {
                if let Err(error) = kernel.remove_named_netns(&name) {
                    failures.insert(name, Arc::new(error));
                }
            }
            failures
        })
        .await
        .map_err(Arc::new)?;
    tracing::debug!(detaches = departures.len(), took = ?started.elapsed(), "removed together");
    Ok(Arc::new(Removal {
        report,
        netns_failures,
    }))
}

/// The named namespaces of `departures` to remove: those whose endpoint's veth is gone (not
/// failed in `report`) and that no Endpoint staying on the node targets (`staying`). Endpoints
/// being deleted do not keep one: whichever leaves first takes it (a veth left in it goes with
/// it), so Endpoints sharing a namespace and deleted together leave none behind. Whether Pier
/// made it is the kernel's side to check (a namespace Pier did not make is never removed).
pub fn namespaces_to_remove(
    departures: &[Departure],
    report: &Report,
    staying: BTreeSet<String>,
) -> BTreeSet<String> {
    departures
        .iter()
        .filter(|d| {
            !matches!(
                report.outcome(&ObjectKey::Link(d.veth.clone())),
                Some(Outcome::Failed(_))
            )
        })
        .filter_map(|d| d.netns.clone())
        .filter(|name| !staying.contains(name))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn departure(veth: &str, netns: Option<&str>) -> Departure {
        Departure {
            veth: veth.to_owned(),
            links: vec!["pier-0a1b2c3d".to_owned()],
            netns: netns.map(str::to_owned),
        }
    }

    #[test]
    fn a_namespace_goes_unless_its_veth_failed_or_an_endpoint_stays_in_it() {
        let departures = [
            departure("pv0000000001", Some("con1")),
            departure("pv0000000002", Some("con2")),
            departure("pv0000000003", Some("shared")),
            departure("pv0000000004", Some("failing")),
            departure("pv0000000005", None),
        ];
        let mut report = Report::default();
        report.objects.insert(
            ObjectKey::Link("pv0000000004".into()),
            Outcome::Failed("device or resource busy".into()),
        );
        let staying = BTreeSet::from(["shared".to_owned()]);
        assert_eq!(
            namespaces_to_remove(&departures, &report, staying),
            BTreeSet::from(["con1".to_owned(), "con2".to_owned()])
        );
    }

    #[test]
    fn endpoints_sharing_a_namespace_and_leaving_together_take_it_once() {
        let departures = [
            departure("pv0000000001", Some("both")),
            departure("pv0000000002", Some("both")),
        ];
        assert_eq!(
            namespaces_to_remove(&departures, &Report::default(), BTreeSet::new()),
            BTreeSet::from(["both".to_owned()])
        );
    }
}
