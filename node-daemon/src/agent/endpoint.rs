//! The node's Endpoint reconciler: the endpoint's interface exists on this node (`Attached`), and
//! is gone before the Endpoint is (finalizer `pier.dev/node`).

use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::Event as Finalizer;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use pier_crds::Endpoint;
use pier_crds::conditions::WithConditions;
use pier_crds::conditions::reason;
use pier_crds::conditions::{self, ATTACHED};
use pier_crds::names::bridge_name;
use pier_memory::ShrinkIfSparse as _;
use pier_runtime::finalizer::finalizer;

use super::build::{endpoint_key, object_id};
use super::context::{Context, key, lock, write_condition};
use super::removal::Departure;
use super::resync::attached_condition;
use super::{Error, FINALIZER};
use crate::dataplane::{ObjectKey, Outcome, Scope};
use crate::state::{Attachment, EndpointState, Netns, NodeState, host_veth_name};

/// Reconciles one Endpoint of this node.
pub async fn reconcile(ep: Arc<Endpoint>, ctx: Arc<Context>) -> Result<Action, Error> {
    let api: Api<Endpoint> =
        Api::namespaced(ctx.client.clone(), &ep.namespace().unwrap_or_default());
    let key = key(&*ep);
    let action = finalizer(&api, FINALIZER, ep, |event| async {
        match event {
            Finalizer::Apply(ep) => attach(&api, &ep, &ctx).await,
            Finalizer::Cleanup(ep) => detach(&ep, &ctx).await,
        }
    })
    .await;
    let action = action.map_err(|e| Error::Finalizer(Box::new(e)))?;
    ctx.backoff.reset(&key);
    Ok(action)
}

/// Retries with a per-object backoff.
pub fn error_policy(ep: Arc<Endpoint>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = key(&*ep);
    let delay = ctx.backoff.next(&key);
    if error.is_transient() {
        tracing::debug!(endpoint = %key, error = %pier_runtime::error_chain(error), ?delay, "retrying");
    } else {
        tracing::warn!(endpoint = %key, error = %pier_runtime::error_chain(error), ?delay, "endpoint reconcile failed");
    }
    Action::requeue(delay)
}

/// The `Attached` condition for an endpoint the dataplane has as desired.
pub fn attached_message(endpoint: &EndpointState, state: &NodeState) -> String {
    let netns = match &endpoint.netns {
        Netns::Named(name) => format!("netns {name}"),
        Netns::Path(path) => format!("namespace {}", path.display()),
        Netns::Host => "the node's namespace".to_owned(),
    };
    match &endpoint.attachment {
        Attachment::Bridge(bridge) => {
            let network = state.networks.iter().find(|n| n.name == bridge.network);
            let prefix = network
                .and_then(|n| n.subnet)
                .map_or(32, |s| s.prefix_len());
            let bridge_name = network.map(|n| n.bridge_name()).unwrap_or_default();
            let address = bridge
                .address
                .map(|a| format!(" {a}/{prefix}"))
                .unwrap_or_default();
            format!(
                "{}{address} in {netns}, on bridge {bridge_name}",
                bridge.interface
            )
        }
        Attachment::Null { network } => format!("{netns} has lo only (network {network})"),
        Attachment::Host { network } => {
            format!("uses the node's own namespace (network {network})")
        }
        Attachment::Shared { endpoint } => {
            format!("shares the namespace of endpoint {endpoint} ({netns})")
        }
    }
}

/// What an attach depends on in the Endpoint itself: the same again needs no kernel work.
fn attach_input(ep: &Endpoint) -> Option<String> {
    let status = ep.status.as_ref()?;
    conditions::is_true(&status.conditions, ATTACHED).then(|| {
        format!(
            "{:?}/{:?}/{:?}/{:?}/{:?}/{:?}/{:?}/{:?}",
            ep.metadata.generation,
            status.node,
            status.network,
            status.ipv4_address,
            status.mac_address,
            status.interface,
            status.default_route,
            status.dns_names
        )
    })
}

async fn attach(api: &Api<Endpoint>, ep: &Endpoint, ctx: &Context) -> Result<Action, Error> {
    ctx.wait_synced().await?;
    let uid = ep.metadata.uid.clone().unwrap_or_default();
    let input = attach_input(ep);
    if input.is_some() && lock(&ctx.attached).get(&uid) == input.as_ref() {
        // Only our own `Attached` write changed since this endpoint was attached.
        return Ok(Action::await_change());
    }
    // Never closed: `None` cannot happen, and would only mean no bound.
    let _slot = ctx.attach_slots.acquire().await.ok();
    if let Some(pod) = &ep.spec.target.pod {
        find_pod_netns(ep, &pod.name, ctx).await?;
    }
    let id = object_id(&ep.metadata);
    // This endpoint and the few the dataplane compares it with, not the whole node.
    let scope = Scope::Endpoints(vec![id.clone()]);
    let built = ctx.projection(&scope);
    let object = endpoint_key(&id);
    let existing = ep.conditions().to_vec();
    let generation = ep.metadata.generation;
    if let Some(refusal) = built.refusals.get(&object) {
        if let Some(condition) = attached_condition(&built, None, &id, &existing, generation) {
            write_condition(ctx, api, ep, &existing, condition).await?;
        }
        // Pods start later than their Endpoints; everything else comes with a watch event or
        // the next resync (host subnets).
        return Ok(match refusal.reason {
            reason::POD_NETNS_NOT_FOUND => {
                Action::requeue(ctx.config.resync.min(std::time::Duration::from_secs(5)))
            }
            _ => Action::await_change(),
        });
    }
    if !built.state.endpoints.iter().any(|e| e.id == id) {
        // Not (or no longer) this node's.
        return Ok(Action::await_change());
    }
    drop(built);
    let started = Instant::now();
    let arrived = ctx
        .arrivals
        .submit(id.clone())
        .await
        .map_err(Error::ArrivalStopped)?
        .map_err(Error::Arrival)?;
    ctx.config
        .metrics
        .attach
        .observe(started.elapsed().as_secs_f64());
    let Some(condition) = attached_condition(
        &arrived.built,
        Some(&arrived.report),
        &id,
        &existing,
        generation,
    ) else {
        return Ok(Action::await_change());
    };
    write_condition(ctx, api, ep, &existing, condition.clone()).await?;
    if condition.status != "True" {
        return Err(Error::Attach {
            endpoint: id,
            message: condition.message,
        });
    }
    let mut written = ep.clone();
    if let Some(status) = written.status.as_mut() {
        status.conditions.retain(|c| c.type_ != ATTACHED);
        status.conditions.push(condition);
    }
    if let Some(input) = attach_input(&written) {
        lock(&ctx.attached).insert(uid, input);
    }
    Ok(Action::await_change())
}

/// Removes the endpoint's kernel objects: its veth, and its network's bridge when no other
/// endpoint on the node uses it, with the firewall table of the node without it; then its named
/// namespace if Pier made it and no Endpoint staying on the node targets it. The removal is
/// shared with the other detaches in flight (see [`super::removal`]; the resync's full apply
/// collects anything else left over) and returns once they are gone, so the finalizer goes after
/// them.
async fn detach(ep: &Endpoint, ctx: &Context) -> Result<Action, Error> {
    ctx.wait_synced().await?;
    {
        let mut attached = lock(&ctx.attached);
        attached.remove(ep.metadata.uid.as_deref().unwrap_or_default());
        attached.shrink_if_sparse();
    }
    let veth = host_veth_name(ep.metadata.uid.as_deref().unwrap_or_default());
    let network = ep.status.as_ref().and_then(|s| s.network.as_deref());
    let links = network
        .and_then(|name| ctx.networks.get(&ObjectRef::new(name)))
        .map(|network| bridge_name(network.metadata.uid.as_deref().unwrap_or_default()))
        .into_iter()
        .collect();
    let departure = Departure {
        veth: veth.clone(),
        links,
        netns: ep.spec.target.netns.as_ref().map(|n| n.name.clone()),
    };
    let started = Instant::now();
    let removal = ctx
        .removals
        .submit(departure)
        .await
        .map_err(Error::RemovalStopped)?
        .map_err(Error::Removal)?;
    ctx.config
        .metrics
        .detach
        .observe(started.elapsed().as_secs_f64());
    if let Some(Outcome::Failed(message)) = removal.report.outcome(&ObjectKey::Link(veth.clone())) {
        return Err(Error::Detach {
            endpoint: key(ep),
            message: message.clone(),
        });
    }
    let netns_failure = ep
        .spec
        .target
        .netns
        .as_ref()
        .and_then(|n| removal.netns_failures.get(&n.name));
    if let Some(error) = netns_failure {
        return Err(Error::Netns(Arc::clone(error)));
    }
    tracing::info!(endpoint = %key(ep), %veth, "endpoint detached");
    Ok(Action::await_change())
}

/// Finds the target Pod's namespace on this node (its uid in a process's cgroup).
async fn find_pod_netns(ep: &Endpoint, pod: &str, ctx: &Context) -> Result<(), Error> {
    let namespace = ep.namespace().unwrap_or_default();
    let pod_id = format!("{namespace}/{pod}");
    let known = super::context::lock(&ctx.pod_netns).get(&pod_id).cloned();
    if known.is_some_and(|path| ctx.kernel.netns_exists(&path)) {
        return Ok(());
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let found = pods.get_opt(pod).await.map_err(|source| Error::Pod {
        pod: pod_id.clone(),
        source,
    })?;
    let Some(uid) = found.and_then(|p| p.metadata.uid) else {
        ctx.set_pod_netns(&pod_id, None);
        return Ok(());
    };
    let kernel = Arc::clone(&ctx.kernel);
    let path = ctx
        .blocking(move || kernel.find_pod_netns(&uid))
        .await?
        .map_err(Error::PodNetns)?;
    ctx.set_pod_netns(&pod_id, path);
    Ok(())
}
