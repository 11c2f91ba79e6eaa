//! The Endpoint controller: resolves the target to a node, allocates the address, MAC and
//! interface into status, refuses a second endpoint of one namespace on one network, and releases
//! everything on delete (finalizer).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, ListParams};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use pier_crds::{Endpoint, EndpointStatus};

use super::refusal::{self, Outcome, Refusal};
use super::{Error, apply_status};
use crate::allocations::{
    AttachError, AttachRequest, TargetKind, creation_millis, owner_key, target_key,
};
use crate::context::Context;
use crate::ipam::ipv6::Address6Error;
use crate::ipam::{AddressError, MacAddr};
use pier_crds::conditions::differs as conditions_differ;
use pier_crds::conditions::reason;
use pier_crds::pod::made_for;

/// The controller's name in metrics and logs.
pub const NAME: &str = "endpoint";

/// Reconciles one Endpoint.
pub async fn reconcile(ep: Arc<Endpoint>, ctx: Arc<Context>) -> Result<Action, Error> {
    let api: Api<Endpoint> =
        Api::namespaced(ctx.client.clone(), &ep.namespace().unwrap_or_default());
    super::reconcile_finalized(api, ep, ctx, NAME, apply, cleanup).await
}

/// The error policy: backoff.
pub fn error_policy(ep: Arc<Endpoint>, error: &Error, ctx: Arc<Context>) -> Action {
    super::error_policy(ep, error, ctx, NAME)
}

/// The Network an Endpoint joins: `spec.network` or the default (`bridge`).
pub fn network_of(ep: &Endpoint, default: &str) -> String {
    ep.spec
        .network
        .clone()
        .unwrap_or_else(|| default.to_owned())
}

fn owned(status: Option<&EndpointStatus>) -> Option<EndpointStatus> {
    status.map(|s| EndpointStatus {
        conditions: crate::conditions::operator_owned(&s.conditions),
        ..s.clone()
    })
}

async fn apply(api: &Api<Endpoint>, ep: &Endpoint, ctx: &Context) -> Result<Action, Error> {
    if let Some(why) = super::pod::orphaned(ep, ctx).await? {
        return delete_orphan(api, ep, why, ctx).await;
    }
    let current = ep.status.clone().unwrap_or_default();
    let generation = ep.metadata.generation;
    let mut status = EndpointStatus {
        observed_generation: generation,
        ..EndpointStatus::default()
    };
    let outcome = allocate(ep, ctx, &mut status).await?;
    let condition = refusal::allocated(&current.conditions, &outcome, generation);
    let changed = conditions_differ(&current.conditions, &condition);
    status.conditions = crate::conditions::allocated_and_ready(
        &current.conditions,
        condition,
        pier_crds::conditions::ATTACHED,
        generation,
    );
    apply_status(api, ep, owned(ep.status.as_ref()).as_ref(), &status).await?;
    let name = super::key(ep);
    match outcome {
        Ok(_) => {
            if status.ipv4_address.is_some() && current.ipv4_address != status.ipv4_address {
                let note = format!(
                    "address {} ({}) on network {}, interface {} on node {}",
                    status.ipv4_address.as_deref().unwrap_or_default(),
                    status.mac_address.as_deref().unwrap_or_default(),
                    status.network.as_deref().unwrap_or_default(),
                    status.interface.as_deref().unwrap_or_default(),
                    status.node.as_deref().unwrap_or_default(),
                );
                ctx.metrics.allocated("address", 1);
                tracing::info!(endpoint = %name, %note, "address allocated");
                ctx.events
                    .publish(ep, false, "AddressAllocated", "Allocate", note)
                    .await;
                ctx.observe();
            } else if status.ipv4_address.is_none() && changed {
                // host and null networks, and container mode: nothing but a node and a name.
                let note = status
                    .conditions
                    .first()
                    .map(|c| c.message.clone())
                    .unwrap_or_default();
                ctx.events
                    .publish(ep, false, reason::ALLOCATED, "Allocate", note)
                    .await;
            }
            Ok(Action::await_change())
        }
        Err(r) => Ok(r.requeue(changed, ctx, ep, NAME).await),
    }
}

/// Deletes an Endpoint made for a Pod that is gone, as the garbage collector does where one runs
/// (its deletion then releases what it holds, through the finalizers).
async fn delete_orphan(
    api: &Api<Endpoint>,
    ep: &Endpoint,
    why: String,
    ctx: &Context,
) -> Result<Action, Error> {
    let name = ep.name_any();
    match api.delete(&name, &DeleteParams::background()).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => return Ok(Action::await_change()),
        Err(source) => return Err(Error::DeleteEndpoint { what: name, source }),
    }
    tracing::info!(endpoint = %super::key(ep), %why, "deleted with its pod");
    ctx.events
        .publish(ep, false, "PodGone", "Delete", format!("deleted: {why}"))
        .await;
    Ok(Action::await_change())
}

/// Fills `status` for the Endpoint; `Ok(Err(..))` when refused or waiting.
async fn allocate(
    ep: &Endpoint,
    ctx: &Context,
    status: &mut EndpointStatus,
) -> Result<Outcome, Error> {
    let ns = ep.namespace().unwrap_or_default();
    let owner = owner_key(&ns, &ep.name_any());
    let target = &ep.spec.target;

    // Container mode: the shared endpoint's node; no interface or address of its own.
    if let Some(shared) = &target.endpoint {
        // Read from the API, not the store: the shared Endpoint's node decides where this one is
        // attached, and this reconcile usually runs because that node changed, seen by a watch
        // other than the one filling the store (which may still hold the previous version).
        let api: Api<Endpoint> = Api::namespaced(ctx.client.clone(), &ns);
        let other = api
            .get_opt(&shared.name)
            .await
            .map_err(|source| Error::Get {
                what: format!("endpoint {ns}/{}", shared.name),
                source,
            })?;
        let Some(other) = other else {
            return Ok(Err(Refusal::wait(
                reason::ENDPOINT_NOT_FOUND,
                format!(
                    "endpoint {} (whose namespace this one shares) does not exist",
                    shared.name
                ),
            )));
        };
        let Some(node) = other.status.as_ref().and_then(|s| s.node.clone()) else {
            return Ok(Err(Refusal::wait(
                reason::ENDPOINT_NOT_READY,
                format!("endpoint {} has no node yet", shared.name),
            )));
        };
        status.node = Some(node);
        return Ok(Ok(format!(
            "shares the network namespace of endpoint {}",
            shared.name
        )));
    }

    let node = match resolve_node(ep, ctx, &ns).await? {
        Ok(node) => node,
        Err(r) => {
            // A target that lost its node holds nothing.
            release(ctx, &owner);
            return Ok(Err(r));
        }
    };
    status.node = Some(node.clone());
    let network_name = network_of(ep, &ctx.config.alloc.default_network);
    status.network = Some(network_name.clone());

    // What this reconcile uses of the Network either cannot change (the driver) or is checked
    // again under the allocations' lock (the subnet), so the store's copy is as good as a fresh one.
    let network = match super::network(ctx, &network_name).await? {
        Some(n) if n.metadata.deletion_timestamp.is_none() => n,
        Some(_) => {
            return Ok(Err(Refusal::wait(
                reason::NETWORK_NOT_FOUND,
                format!("network {network_name} is being deleted"),
            )));
        }
        None => {
            return Ok(Err(Refusal::wait(
                reason::NETWORK_NOT_FOUND,
                format!("network {network_name} does not exist; waiting for it to be created"),
            )));
        }
    };
    let needs_address = network.spec.driver.has_subnet() && network.spec.has_ipv4();
    let needs_address6 = network.spec.has_ipv6();
    let Some(target_key) = target_key(&ns, ep, &node) else {
        return Ok(Err(Refusal::refuse(
            reason::INVALID_ADDRESS,
            "target names no namespace",
        )));
    };

    let (requested, requested6) = match requested_addresses(ep, &network_name) {
        Ok(r) => r,
        Err(refused) => return Ok(Err(refused)),
    };
    let kind = TargetKind::of(target);
    if kind == TargetKind::Pod
        && ep.spec.interface.as_deref() == Some(TargetKind::POD_CLUSTER_INTERFACE)
    {
        return Ok(Err(Refusal::refuse(
            reason::INTERFACE_IN_USE,
            format!(
                "interface {} of a Pod is its cluster network's: leave spec.interface out \
                 (net1, net2, ...) or name another",
                TargetKind::POD_CLUSTER_INTERFACE
            ),
        )));
    }
    let request = AttachRequest {
        network: network_name.clone(),
        target: target_key,
        interface: ep.spec.interface.clone(),
        kind,
        address: if needs_address { requested } else { None },
        needs_address,
        address6: if needs_address6 { requested6 } else { None },
        needs_address6,
        created: creation_millis(ep),
    };
    let attached = {
        let mut allocations = ctx.allocations();
        let result = allocations.attach(&owner, &request);
        if result
            .as_ref()
            .is_err_and(|e| !matches!(e, AttachError::NetworkNotReady(_)))
        {
            // Refused: it holds nothing (no stale address kept from an earlier spec).
            allocations.detach(&owner);
        }
        result.map(|a| {
            let default_route = allocations.default_route(&owner);
            let networks = (
                allocations.network(&network_name),
                allocations.network6(&network_name),
            );
            (a, networks, default_route)
        })
    };
    let (attachment, (network_alloc, network6_alloc), default_route) = match attached {
        Ok(a) => a,
        Err(e) => return Ok(Err(refusal(&e))),
    };
    status.interface = Some(attachment.interface.clone());
    // Made from a Pod's annotation: the Pod's name, not the Endpoint's (`POD-NETWORK`).
    let name = made_for(&ep.metadata).map_or_else(|| ep.name_any(), |pod| pod.name.clone());
    let mut dns_names = vec![name];
    dns_names.extend(ep.spec.aliases.iter().flatten().cloned());
    status.dns_names = dns_names;
    let derived_mac = match (attachment.address, attachment.address6) {
        (Some(address), _) => MacAddr::from_ipv4(address),
        (None, Some(address6)) => MacAddr::from_ipv6(address6),
        (None, None) => {
            return Ok(Ok(format!(
                "on {} network {network_name}",
                network.spec.driver.as_str()
            )));
        }
    };
    let mut addresses = Vec::new();
    if let (Some(address), Some(n)) = (attachment.address, network_alloc) {
        status.ipv4_address = Some(address.to_string());
        status.prefix_length = Some(i32::from(n.subnet.prefix_len()));
        status.gateway = Some(n.gateway.to_string());
        addresses.push(address.to_string());
    }
    if let (Some(address6), Some(n)) = (attachment.address6, network6_alloc) {
        status.ipv6_address = Some(address6.to_string());
        status.ipv6_prefix_length = Some(i32::from(n.subnet.prefix_len()));
        status.ipv6_gateway = Some(n.gateway.to_string());
        addresses.push(address6.to_string());
    }
    status.default_route = default_route;
    status.mac_address = Some(
        ep.spec
            .mac_address
            .clone()
            .unwrap_or_else(|| derived_mac.to_string()),
    );
    Ok(Ok(format!(
        "address {} on network {network_name}",
        addresses.join(" and ")
    )))
}

/// The addresses the Endpoint asks for: its spec's static ones, else what a previous reconcile
/// recorded on the same network (the allocations may have been rebuilt without them if that
/// write raced a restart: keep them rather than hand out others).
fn requested_addresses(
    ep: &Endpoint,
    network_name: &str,
) -> Result<(Option<Ipv4Addr>, Option<Ipv6Addr>), Refusal> {
    let recorded = ep
        .status
        .as_ref()
        .filter(|s| s.network.as_deref() == Some(network_name));
    let v4 = match &ep.spec.ipv4_address {
        Some(text) => Some(text.parse::<Ipv4Addr>().map_err(|_| {
            Refusal::refuse(
                reason::INVALID_ADDRESS,
                format!("spec.ipv4Address {text:?} is not an IPv4 address"),
            )
        })?),
        None => recorded.and_then(|s| s.ipv4_address.as_deref()?.parse().ok()),
    };
    let v6 = match &ep.spec.ipv6_address {
        Some(text) => Some(text.parse::<Ipv6Addr>().map_err(|_| {
            Refusal::refuse(
                reason::INVALID_ADDRESS,
                format!("spec.ipv6Address {text:?} is not an IPv6 address"),
            )
        })?),
        None => recorded.and_then(|s| s.ipv6_address.as_deref()?.parse().ok()),
    };
    Ok((v4, v6))
}

/// The node the Endpoint's namespace is on, or why it is not known yet. Nodes and Pods are read
/// from the API: the operator keeps no store of them.
async fn resolve_node(
    ep: &Endpoint,
    ctx: &Context,
    ns: &str,
) -> Result<Result<String, Refusal>, Error> {
    let target = &ep.spec.target;
    if let Some(netns) = &target.netns {
        if let Some(node) = &netns.node {
            return Ok(Ok(node.clone()));
        }
        // Whether there is exactly one node: two names tell, and the server counts the rest
        // (every Endpoint without a node asks, so a large cluster's nodes are not listed each
        // time).
        let nodes: Api<Node> = Api::all(ctx.client.clone());
        let list = nodes
            .list_metadata(&ListParams::default().limit(2))
            .await
            .map_err(|source| Error::List {
                what: "nodes",
                source,
            })?;
        let more = u64::try_from(list.metadata.remaining_item_count.unwrap_or(0)).unwrap_or(0);
        let more_pages = list
            .metadata
            .continue_
            .as_deref()
            .is_some_and(|c| !c.is_empty());
        return Ok(match list.items.as_slice() {
            [only] if !more_pages => Ok(only.name_any()),
            items => Err(Refusal::wait(
                reason::NODE_REQUIRED,
                format!(
                    "target.netns.node is required: the cluster has {} nodes",
                    items.len() as u64 + more
                ),
            )),
        });
    }
    if let Some(pod) = &target.pod {
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
        let found = pods.get_opt(&pod.name).await.map_err(|source| Error::Get {
            what: format!("pod {ns}/{}", pod.name),
            source,
        })?;
        return Ok(match found {
            None => Err(Refusal::wait(
                reason::POD_NOT_FOUND,
                format!("pod {} does not exist", pod.name),
            )),
            Some(p) => match p.spec.and_then(|s| s.node_name) {
                Some(node) => Ok(node),
                None => Err(Refusal::wait(
                    reason::POD_NOT_SCHEDULED,
                    format!("pod {} is not scheduled to a node yet", pod.name),
                )),
            },
        });
    }
    Ok(Err(Refusal::refuse(
        reason::INVALID_ADDRESS,
        "target must set netns, pod or endpoint",
    )))
}

/// The condition reason and message for a refused attachment.
fn refusal(e: &AttachError) -> Refusal {
    let message = e.to_string();
    match e {
        AttachError::AlreadyAttached { .. } => Refusal::refuse(reason::ALREADY_ATTACHED, message),
        AttachError::InterfaceTaken { .. } => Refusal::refuse(reason::INTERFACE_IN_USE, message),
        AttachError::NetworkNotReady(_) => Refusal::wait(reason::NETWORK_NOT_READY, message),
        AttachError::Address(AddressError::Exhausted { .. }) => {
            Refusal::refuse(reason::ADDRESSES_EXHAUSTED, message)
        }
        AttachError::Address(
            AddressError::Taken { .. }
            | AddressError::OwnerHasAddress { .. }
            | AddressError::Duplicate { .. },
        ) => Refusal::refuse(reason::ADDRESS_IN_USE, message),
        AttachError::Address(_) => Refusal::refuse(reason::INVALID_ADDRESS, message),
        AttachError::Address6(Address6Error::Exhausted(_)) => {
            Refusal::refuse(reason::ADDRESSES_EXHAUSTED, message)
        }
        AttachError::Address6(Address6Error::Taken { .. }) => {
            Refusal::refuse(reason::ADDRESS_IN_USE, message)
        }
        AttachError::Address6(_) => Refusal::refuse(reason::INVALID_ADDRESS, message),
    }
}

/// Frees what `owner` holds; true if it held an address.
fn release(ctx: &Context, owner: &str) -> bool {
    let freed = ctx.allocations().detach(owner);
    if freed.is_some() {
        ctx.metrics.released("address", 1);
        ctx.observe();
    }
    freed.is_some()
}

async fn cleanup(_api: &Api<Endpoint>, ep: &Endpoint, ctx: &Context) -> Result<Action, Error> {
    let owner = owner_key(&ep.namespace().unwrap_or_default(), &ep.name_any());
    if release(ctx, &owner) {
        let address = ep
            .status
            .as_ref()
            .and_then(|s| s.ipv4_address.clone())
            .unwrap_or_default();
        tracing::info!(endpoint = %owner, %address, "address released");
        ctx.events
            .publish(
                ep,
                false,
                "AddressReleased",
                "Delete",
                format!("address {address} released"),
            )
            .await;
    }
    Ok(Action::await_change())
}
