//! The Pod controller: turns a Pod's `pier.dev/networks` annotation into Endpoints the Pod owns
//! (connecting and disconnecting as the annotation changes), and sets the Pod condition
//! `pier.dev/attached` from its Endpoints, which a readiness gate waits for.
//!
//! No finalizer: a Pod is not Pier's to hold. Its Endpoints carry an owner reference, so the
//! garbage collector deletes them with it; where none runs (`pier up`), the Endpoint controller
//! does (see [`orphaned`]).

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, PodCondition, PodSpec, PodStatus};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use pier_crds::pod::{ATTACHED_CONDITION, NETWORKS_ANNOTATION, made_for, parse_networks};
use pier_crds::{Condition, Endpoint, conditions};

use super::Error;
use crate::context::{Context, FIELD_MANAGER};
use crate::pod_networks::{self, PodFacts, Readiness};

/// The controller's name in metrics and logs.
pub const NAME: &str = "pod";

/// Reconciles one Pod.
pub async fn reconcile(pod: Arc<Pod>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.reconciled(NAME);
    let action = apply(&pod, &ctx).await?;
    ctx.backoff.reset(&super::key(&*pod));
    Ok(action)
}

/// The error policy: backoff.
pub fn error_policy(pod: Arc<Pod>, error: &Error, ctx: Arc<Context>) -> Action {
    super::error_policy(pod, error, ctx, NAME)
}

/// Strips a watched Pod down to what this controller reads (metadata but managed fields, the
/// readiness gates, hostNetwork, phase and conditions): the store holds every Pod of the
/// cluster, and most of a Pod (containers, volumes, statuses) is of no use here.
pub fn keep_what_is_read(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    pod.spec = pod.spec.take().map(|spec| PodSpec {
        readiness_gates: spec.readiness_gates,
        host_network: spec.host_network,
        node_name: spec.node_name,
        ..PodSpec::default()
    });
    pod.status = pod.status.take().map(|status| PodStatus {
        phase: status.phase,
        conditions: status.conditions,
        ..PodStatus::default()
    });
}

/// Whether the Pod lists the `pier.dev/attached` readiness gate.
fn has_gate(pod: &Pod) -> bool {
    pod.spec
        .iter()
        .flat_map(|s| s.readiness_gates.iter().flatten())
        .any(|g| g.condition_type == ATTACHED_CONDITION)
}

fn facts(pod: &Pod) -> PodFacts<'_> {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    PodFacts {
        namespace: pod.metadata.namespace.as_deref().unwrap_or_default(),
        name: pod.metadata.name.as_deref().unwrap_or_default(),
        uid: pod.metadata.uid.as_deref().unwrap_or_default(),
        finished: matches!(phase, Some("Succeeded" | "Failed")),
        deleting: pod.metadata.deletion_timestamp.is_some(),
    }
}

/// The annotation's entries, or why they cannot be had.
fn wanted(pod: &Pod) -> Result<Vec<pier_crds::pod::PodNetwork>, String> {
    let Some(text) = pod.annotations().get(NETWORKS_ANNOTATION) else {
        return Ok(Vec::new());
    };
    let entries = parse_networks(text).map_err(|e| e.to_string())?;
    let host_network = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    if host_network && !entries.is_empty() {
        return Err(format!(
            "{NETWORKS_ANNOTATION} on a hostNetwork Pod: it shares the node's network namespace, \
             which Pier gives no interfaces"
        ));
    }
    Ok(entries)
}

async fn apply(pod: &Pod, ctx: &Context) -> Result<Action, Error> {
    // Most Pods of a cluster ask nothing of Pier: they cost no more than this. (An Endpoint made
    // for an earlier Pod of the name goes through the Endpoint controller, see `orphaned`.)
    let annotated = pod.annotations().contains_key(NETWORKS_ANNOTATION);
    if !annotated && !has_gate(pod) {
        return Ok(Action::await_change());
    }
    let facts = facts(pod);
    let all = ctx
        .stores
        .endpoints()
        .await
        .map_err(|source| Error::Store {
            what: "endpoints",
            source,
        })?;
    let mine = pod_networks::endpoints_of(&facts, all.iter().map(|e| &**e));
    let wanted = wanted(pod);
    let plan = pod_networks::plan(&facts, wanted.as_ref().ok().map(Vec::as_slice), &mine);
    let api: Api<Endpoint> = Api::namespaced(ctx.client.clone(), facts.namespace);
    let mut problems: Vec<String> = wanted.err().into_iter().collect();
    problems.extend(plan.conflicts.iter().cloned());
    for endpoint in &plan.create {
        if let Some(refused) = create(&api, pod, endpoint, ctx).await? {
            problems.push(refused);
        }
    }
    for endpoint in &plan.update {
        update(&api, endpoint).await?;
    }
    for name in &plan.delete {
        delete(&api, pod, name, ctx).await?;
    }
    if facts.finished {
        return Ok(Action::await_change());
    }
    // The Endpoints as they are now, but those going: the ones just created are not in the store
    // yet, and come back here when the store has them.
    let current: Vec<&Endpoint> = mine
        .into_iter()
        .filter(|e| e.metadata.deletion_timestamp.is_none())
        .filter(|e| {
            !plan
                .delete
                .iter()
                .any(|d| Some(d.as_str()) == e.metadata.name.as_deref())
        })
        .collect();
    let readiness = pod_networks::readiness(&problems, &plan.wanted, &current);
    write_condition(pod, &readiness, ctx).await?;
    Ok(Action::await_change())
}

/// Creates one Endpoint; `Some(why)` when the API refuses it (a value the Endpoint schema does
/// not accept: the annotation's fault, said on the Pod).
async fn create(
    api: &Api<Endpoint>,
    pod: &Pod,
    endpoint: &Endpoint,
    ctx: &Context,
) -> Result<Option<String>, Error> {
    let name = endpoint.name_any();
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    };
    match api.create(&params, endpoint).await {
        Ok(_) => {
            let note = format!(
                "endpoint {name} connects the Pod to network {}",
                endpoint.spec.network.as_deref().unwrap_or_default()
            );
            tracing::info!(pod = %super::key(pod), %note, "connected");
            ctx.events
                .publish(pod, false, "Connected", "Connect", note)
                .await;
            Ok(None)
        }
        // The store has not seen it yet: nothing to do.
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(None),
        Err(kube::Error::Api(status)) if status.code == 422 || status.code == 400 => {
            Ok(Some(format!("endpoint {name}: {}", status.message)))
        }
        Err(source) => Err(Error::CreateEndpoint { what: name, source }),
    }
}

/// Replaces an Endpoint's spec with what the annotation now says (a merge patch with every
/// field, so a field the entry dropped is removed).
async fn update(api: &Api<Endpoint>, endpoint: &Endpoint) -> Result<(), Error> {
    let name = endpoint.name_any();
    let spec = &endpoint.spec;
    let patch = serde_json::json!({"spec": {
        "interface": spec.interface,
        "ipv4Address": spec.ipv4_address,
        "ipv6Address": spec.ipv6_address,
        "macAddress": spec.mac_address,
        "aliases": spec.aliases,
    }});
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|source| Error::UpdateEndpoint { what: name, source })?;
    Ok(())
}

async fn delete(api: &Api<Endpoint>, pod: &Pod, name: &str, ctx: &Context) -> Result<(), Error> {
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
        Err(source) => {
            return Err(Error::DeleteEndpoint {
                what: name.to_owned(),
                source,
            });
        }
    }
    let note = format!("endpoint {name} deleted: the Pod no longer lists its network");
    tracing::info!(pod = %super::key(pod), %note, "disconnected");
    ctx.events
        .publish(pod, false, "Disconnected", "Disconnect", note)
        .await;
    Ok(())
}

/// The Pod's conditions in Pier's form (the fields they share).
fn pod_conditions(pod: &Pod) -> Vec<Condition> {
    pod.status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .filter_map(|c| {
            Some(Condition {
                type_: c.type_.clone(),
                status: c.status.clone(),
                reason: c.reason.clone().unwrap_or_default(),
                message: c.message.clone().unwrap_or_default(),
                observed_generation: None,
                last_transition_time: c.last_transition_time.clone()?,
            })
        })
        .collect()
}

/// Applies the `pier.dev/attached` condition when it says something new (an invalid annotation
/// also gets a Warning Event, once per new message).
async fn write_condition(pod: &Pod, readiness: &Readiness, ctx: &Context) -> Result<(), Error> {
    let existing = pod_conditions(pod);
    let condition = conditions::observe(
        &existing,
        ATTACHED_CONDITION,
        readiness.attached,
        readiness.reason,
        readiness.message.clone(),
        None,
    );
    if !conditions::differs(&existing, &condition) {
        return Ok(());
    }
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
    let pod_condition = PodCondition {
        type_: condition.type_,
        status: condition.status,
        reason: Some(condition.reason),
        message: Some(condition.message),
        last_transition_time: Some(condition.last_transition_time),
        ..PodCondition::default()
    };
    pier_runtime::status::apply_condition(&api, pod, FIELD_MANAGER, &pod_condition)
        .await
        .map_err(|error| {
            let what = super::key(pod);
            match error {
                pier_runtime::status::StatusError::Encode(source) => Error::Encode { what, source },
                pier_runtime::status::StatusError::Api(source) => {
                    Error::WriteStatus { what, source }
                }
            }
        })?;
    if readiness.reason == pier_crds::pod::reason::INVALID_ANNOTATION {
        tracing::warn!(pod = %super::key(pod), message = %readiness.message, "invalid annotation");
        ctx.events
            .publish(
                pod,
                true,
                readiness.reason,
                "Connect",
                readiness.message.clone(),
            )
            .await;
    }
    Ok(())
}

/// Why an Endpoint made from a Pod's annotation has lost that Pod (`None` while it is there):
/// the Pod is gone, re-created under the same name (another uid), or finished. The Endpoint
/// controller then deletes it, as the garbage collector would. Read from the API: deleting on a
/// stale "gone" would cut a running Pod off.
pub async fn orphaned(endpoint: &Endpoint, ctx: &Context) -> Result<Option<String>, Error> {
    let Some(owner) = made_for(&endpoint.metadata) else {
        return Ok(None);
    };
    let namespace = endpoint.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let pod = pods
        .get_opt(&owner.name)
        .await
        .map_err(|source| Error::Get {
            what: format!("pod {namespace}/{}", owner.name),
            source,
        })?;
    Ok(match pod {
        None => Some(format!("pod {} no longer exists", owner.name)),
        Some(p) if p.metadata.uid.as_deref() != Some(owner.uid.as_str()) => {
            Some(format!("pod {} was re-created", owner.name))
        }
        Some(p) if facts(&p).finished => Some(format!("pod {} has finished", owner.name)),
        Some(_) => None,
    })
}
