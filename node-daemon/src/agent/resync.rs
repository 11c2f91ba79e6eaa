//! The full reconcile of the node, at start and then every `resync`: read back every kernel object
//! Pier owns and converge it on what the API says. This is what removes what belongs to objects
//! deleted while the agent was down, and what repairs drift (a veth deleted by hand, the `pier`
//! table flushed, a bridge removed). It also re-reads the node's own subnets and brings every
//! object's condition up to date. One that falls due during a burst of attaches waits for the
//! burst to end, one period at most.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use kube::{Api, ResourceExt};
use pier_crds::Condition;
use pier_crds::conditions::WithConditions;
use pier_crds::conditions::{self, ATTACHED, PUBLISHED, reason};
use pier_crds::{Endpoint, PortPublish};

use super::build::{Built, endpoint_key, object_id, ports_key};
use super::context::{Context, key, lock, write_condition};
use super::endpoint::attached_message;
use super::metrics;
use super::portpublish::{firewall_outcome, published_message};
use super::{AgentHealth, Error, FINALIZER};
use crate::dataplane::{ObjectKey, Outcome, Report, Scope};

/// Runs full reconciles until the task is dropped; marks the agent ready after the first success.
pub async fn run(ctx: Arc<Context>, health: Arc<AgentHealth>) {
    if let Err(error) = ctx.wait_synced().await {
        tracing::error!(error = %pier_runtime::error_chain(&error), "watches never listed");
        return;
    }
    loop {
        match once(&ctx).await {
            Ok(()) => health.ready.store(true, Ordering::Relaxed),
            Err(error) => {
                tracing::warn!(error = %pier_runtime::error_chain(&error), "full reconcile of the node failed");
            }
        }
        ctx.config.metrics.observe_objects(&ctx);
        tokio::time::sleep(ctx.config.resync).await;
        // A burst of attaches (Endpoints applied at once) goes first: the full apply would take
        // the apply turn from it for as long as it checks the whole node, and it reports the
        // attaches' endpoints no sooner than they do. A steady stream of attaches delays the full
        // check by one period at most.
        ctx.arrivals.idle(ATTACHES_QUIET, ctx.config.resync).await;
    }
}

/// How long no attach must have been submitted or waiting for a periodic full reconcile to go:
/// longer than the gaps between the attaches of a burst (each Endpoint's watch event, its
/// reconcile), short beside the resync period.
const ATTACHES_QUIET: Duration = Duration::from_millis(200);

/// One full reconcile.
pub async fn once(ctx: &Context) -> Result<(), Error> {
    let kernel = Arc::clone(&ctx.kernel);
    let subnets = ctx
        .blocking(move || kernel.host_subnets())
        .await?
        .map_err(Error::HostSubnets)?;
    *lock(&ctx.host_subnets) = subnets;
    // Before the build: a first overlay endpoint needs the tunnel address. A Node that cannot
    // be annotated now is tried again at the next resync; the rest of the node goes on.
    if let Err(error) = super::overlay::announce(ctx).await {
        tracing::warn!(error = %pier_runtime::error_chain(&error), "cannot record the tunnel address");
    }
    lock(&ctx.pod_netns).retain(|_, path| ctx.kernel.netns_exists(path));
    // The full check: the state built from scratch, and the incremental one caught up with the
    // stores and the node's subnets, Pods and tunnel as read now. Built in the apply turn: an
    // attach applied between the build and this apply would be garbage to it.
    let turn = ctx.apply_turn.lock().await;
    ctx.reseed_index();
    let mut built = ctx.build();
    let report = metrics::apply_in_turn(ctx, &mut built, Scope::Full).await;
    drop(turn);
    let report = report?;
    let repaired: Vec<String> = report
        .objects
        .iter()
        .filter_map(|(object, outcome)| match outcome {
            Outcome::Changed(changes) => Some(format!("{object}: {}", changes.join("; "))),
            _ => None,
        })
        .collect();
    if !repaired.is_empty() {
        tracing::info!(changes = ?repaired, "full reconcile changed the kernel");
    }
    // The node's firewalls are no object's: their failures (a missing iptables tool, another
    // firewall's table gone mid-batch) are said here, at every resync until repaired.
    for (object, message) in report.failures() {
        if matches!(
            object,
            ObjectKey::Firewall | ObjectKey::Iptables | ObjectKey::Nftables
        ) {
            tracing::warn!(%object, error = %message, "the node's firewall is not as Pier needs it");
        }
    }
    report_all(ctx, &built, &report).await
}

/// Writes every condition that no longer says what the node has.
async fn report_all(ctx: &Context, built: &Built, report: &Report) -> Result<(), Error> {
    let mut first_error = None;
    let has_finalizer = |finalizers: &Option<Vec<String>>| {
        finalizers
            .as_ref()
            .is_some_and(|f| f.iter().any(|f| f == FINALIZER))
    };
    for ep in ctx.endpoints.state() {
        // Objects the reconciler has not taken yet (no finalizer) or that are going get nothing.
        if ep.metadata.deletion_timestamp.is_some() || !has_finalizer(&ep.metadata.finalizers) {
            continue;
        }
        // An endpoint's first report is its attach's while that attach is on its way (queued
        // or in flight): a resync that attached it meanwhile (one falling into a burst of new
        // Endpoints) reported it as well, and both wrote `Attached` and published its Event.
        // One whose attach failed without a condition (its apply failed as a whole) is the
        // resync's to report: its retry may be a minute away.
        if conditions::find(ep.conditions(), ATTACHED).is_none()
            && !ctx.backoff.is_failing(&key(&*ep))
        {
            continue;
        }
        let api: Api<Endpoint> =
            Api::namespaced(ctx.client.clone(), &ep.namespace().unwrap_or_default());
        let id = object_id(&ep.metadata);
        let existing = ep.conditions().to_vec();
        let generation = ep.metadata.generation;
        let Some(condition) = attached_condition(built, Some(report), &id, &existing, generation)
        else {
            continue;
        };
        if let Err(error) = write_condition(ctx, &api, &*ep, &existing, condition).await {
            first_error.get_or_insert(error);
        }
    }
    let firewall = firewall_outcome(report);
    for publish in ctx.ports.state() {
        if publish.metadata.deletion_timestamp.is_some()
            || !has_finalizer(&publish.metadata.finalizers)
        {
            continue;
        }
        let api: Api<PortPublish> =
            Api::namespaced(ctx.client.clone(), &publish.namespace().unwrap_or_default());
        let id = object_id(&publish.metadata);
        let existing = publish.conditions().to_vec();
        let generation = publish.metadata.generation;
        let Some(condition) = published_condition(
            built,
            Some(&firewall),
            &id,
            &ctx.config.node_name,
            &existing,
            generation,
        ) else {
            continue;
        };
        if let Err(error) = write_condition(ctx, &api, &*publish, &existing, condition).await {
            first_error.get_or_insert(error);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// The `Attached` condition of endpoint `id` on this node: its refusal, or (once applied with
/// `report`) whether the dataplane has it as desired. `None`: not this node's, or not applied.
pub fn attached_condition(
    built: &Built,
    report: Option<&Report>,
    id: &str,
    existing: &[Condition],
    generation: Option<i64>,
) -> Option<Condition> {
    let object = endpoint_key(id);
    let (ok, reason, message) = if let Some(refusal) = built.refusals.get(&object) {
        (false, refusal.reason, refusal.message.clone())
    } else {
        let endpoint = built.state.endpoints.iter().find(|e| e.id == id)?;
        let report = report?;
        match report.objects.get(&object) {
            Some(Outcome::Failed(message)) => (false, reason::ATTACH_FAILED, message.clone()),
            _ => {
                let mut message = attached_message(endpoint, &built.state);
                for note in report.notes_of(&object) {
                    message.push_str("; ");
                    message.push_str(note);
                }
                (true, reason::ATTACHED, message)
            }
        }
    };
    Some(conditions::observe(
        existing, ATTACHED, ok, reason, message, generation,
    ))
}

/// The `Published` condition of PortPublish `id` on `node`: its refusal, or (once applied, with
/// the table's outcome `firewall`) whether its ports are live. `None`: not this node's, or not
/// applied.
pub fn published_condition(
    built: &Built,
    firewall: Option<&Result<(), String>>,
    id: &str,
    node: &str,
    existing: &[Condition],
    generation: Option<i64>,
) -> Option<Condition> {
    let (ok, reason, message) = if let Some(refusal) = built.refusals.get(&ports_key(id)) {
        (false, refusal.reason, refusal.message.clone())
    } else if built.state.ports.iter().any(|p| p.id == id) {
        match firewall? {
            Err(message) => (false, reason::PUBLISH_FAILED, message.clone()),
            Ok(()) => (
                true,
                reason::PUBLISHED,
                published_message(id, &built.state, node),
            ),
        }
    } else {
        return None;
    };
    Some(conditions::observe(
        existing, PUBLISHED, ok, reason, message, generation,
    ))
}
