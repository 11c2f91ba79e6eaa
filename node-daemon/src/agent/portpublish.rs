//! The node's PortPublish reconciler: the host ports are live in table `inet pier` (`Published`),
//! and are withdrawn before the PortPublish is gone (finalizer `pier.dev/node`).

use std::sync::Arc;

use super::resync::published_condition;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::Event as Finalizer;
use kube::{Api, ResourceExt};
use pier_crds::PortPublish;
use pier_crds::conditions::WithConditions;
use pier_runtime::finalizer::finalizer;

use super::build::{object_id, ports_key};
use super::context::{Context, key, write_condition};
use super::metrics;
use super::{Error, FINALIZER};
use crate::dataplane::{ObjectKey, Outcome, Report, Scope};
use crate::state::NodeState;

/// Reconciles one PortPublish of this node.
pub async fn reconcile(publish: Arc<PortPublish>, ctx: Arc<Context>) -> Result<Action, Error> {
    let api: Api<PortPublish> =
        Api::namespaced(ctx.client.clone(), &publish.namespace().unwrap_or_default());
    let key = key(&*publish);
    let action = finalizer(&api, FINALIZER, publish, |event| async {
        match event {
            Finalizer::Apply(publish) => publish_ports(&api, &publish, &ctx).await,
            Finalizer::Cleanup(publish) => withdraw(&publish, &ctx).await,
        }
    })
    .await;
    let action = action.map_err(|e| Error::Finalizer(Box::new(e)))?;
    ctx.backoff.reset(&key);
    Ok(action)
}

/// Retries with a per-object backoff.
pub fn error_policy(publish: Arc<PortPublish>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = key(&*publish);
    let delay = ctx.backoff.next(&key);
    if error.is_transient() {
        tracing::debug!(portpublish = %key, error = %pier_runtime::error_chain(error), ?delay, "retrying");
    } else {
        tracing::warn!(portpublish = %key, error = %pier_runtime::error_chain(error), ?delay, "portpublish reconcile failed");
    }
    Action::requeue(delay)
}

/// The `Published` condition's message: the ports as `docker ps` shows them, and the node.
pub fn published_message(id: &str, state: &NodeState, node: &str) -> String {
    let ports: Vec<String> = state
        .ports
        .iter()
        .filter(|p| p.id == id)
        .map(|p| {
            pier_crds::portpublish::docker_form(
                p.host_ip,
                p.host_port,
                p.container_port,
                p.protocol,
            )
        })
        .collect();
    format!("{} live on node {node}", ports.join(", "))
}

/// The firewall's outcome in a report: `Err(message)` when the table could not be written.
pub fn firewall_outcome(report: &Report) -> Result<(), String> {
    match report.outcome(&ObjectKey::Firewall) {
        Some(Outcome::Failed(message)) => Err(message.clone()),
        _ => Ok(()),
    }
}

async fn publish_ports(
    api: &Api<PortPublish>,
    publish: &PortPublish,
    ctx: &Context,
) -> Result<Action, Error> {
    ctx.wait_synced().await?;
    // No endpoint in scope: bridges and the table only.
    let scope = Scope::Endpoints(Vec::new());
    let mut built = ctx.projection(&scope);
    let id = object_id(&publish.metadata);
    let existing = publish.conditions().to_vec();
    let generation = publish.metadata.generation;
    let node = &ctx.config.node_name;
    if built.refusals.contains_key(&ports_key(&id)) {
        if let Some(condition) = published_condition(&built, None, &id, node, &existing, generation)
        {
            write_condition(ctx, api, publish, &existing, condition).await?;
        }
        return Ok(Action::await_change());
    }
    if !built.state.ports.iter().any(|p| p.id == id) {
        return Ok(Action::await_change());
    }
    let report = metrics::apply(ctx, &mut built, scope).await?;
    let firewall = firewall_outcome(&report);
    let Some(condition) =
        published_condition(&built, Some(&firewall), &id, node, &existing, generation)
    else {
        return Ok(Action::await_change());
    };
    write_condition(ctx, api, publish, &existing, condition).await?;
    firewall.map_err(|message| Error::Publish {
        portpublish: id,
        message,
    })?;
    Ok(Action::await_change())
}

/// Withdraws the ports: the table rendered from the node without this PortPublish.
async fn withdraw(publish: &PortPublish, ctx: &Context) -> Result<Action, Error> {
    ctx.wait_synced().await?;
    let scope = Scope::Endpoints(Vec::new());
    let mut built = ctx.projection(&scope);
    let report = metrics::apply(ctx, &mut built, scope).await?;
    firewall_outcome(&report).map_err(|message| Error::Publish {
        portpublish: key(publish),
        message,
    })?;
    tracing::info!(portpublish = %key(publish), "ports withdrawn");
    Ok(Action::await_change())
}
