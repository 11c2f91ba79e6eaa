//! The PortPublish controller: host ports on the endpoint's node (explicit ones checked against
//! every PortPublish of that node, automatic ones from the range), recorded in status with the
//! node's addresses and a `docker ps`-style summary.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use pier_crds::conditions::{self, ALLOCATED};
use pier_crds::portpublish::PublishedPortStatus;
use pier_crds::{Endpoint, PortPublish, PortPublishStatus};

use super::refusal::{self, Outcome, Refusal};
use super::{Error, apply_status};
use crate::allocations::owner_key;
use crate::context::Context;
use crate::ports::{HostPort, PortError, PortSpec};
use pier_crds::conditions::differs as conditions_differ;
use pier_crds::conditions::reason;

/// The controller's name in metrics and logs.
pub const NAME: &str = "portpublish";

/// Reconciles one PortPublish.
pub async fn reconcile(pp: Arc<PortPublish>, ctx: Arc<Context>) -> Result<Action, Error> {
    let api: Api<PortPublish> =
        Api::namespaced(ctx.client.clone(), &pp.namespace().unwrap_or_default());
    super::reconcile_finalized(api, pp, ctx, NAME, apply, cleanup).await
}

/// The error policy: backoff.
pub fn error_policy(pp: Arc<PortPublish>, error: &Error, ctx: Arc<Context>) -> Action {
    super::error_policy(pp, error, ctx, NAME)
}

/// `0.0.0.0:32772->80/tcp, 127.0.0.1:8443->443/tcp`, as the PORTS column of `docker ps`.
pub fn summary(ports: &[PublishedPortStatus]) -> String {
    ports
        .iter()
        .map(PublishedPortStatus::docker_form)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The status entries for allocated ports, one per spec port.
pub fn port_statuses(
    spec: &[pier_crds::PortSpec],
    held: &[HostPort],
    dual_stack: bool,
) -> Vec<PublishedPortStatus> {
    let mut statuses = Vec::with_capacity(held.len());
    for (s, h) in spec.iter().zip(held) {
        let status = PublishedPortStatus {
            container_port: s.container_port,
            protocol: s.protocol,
            host_ip: h.host_ip.to_string(),
            host_port: i32::from(h.port),
        };
        // No hostIP on a dual-stack endpoint: the same port on every address of both families,
        // as Docker publishes `-p 8000:80` on 0.0.0.0 and `::` (the allocation on 0.0.0.0
        // already conflicts with every address of either).
        let twin = (dual_stack && s.host_ip.is_none()).then(|| PublishedPortStatus {
            host_ip: Ipv6Addr::UNSPECIFIED.to_string(),
            ..status.clone()
        });
        statuses.push(status);
        statuses.extend(twin);
    }
    statuses
}

fn owned(status: Option<&PortPublishStatus>) -> Option<PortPublishStatus> {
    status.map(|s| PortPublishStatus {
        conditions: crate::conditions::operator_owned(&s.conditions),
        ..s.clone()
    })
}

async fn apply(api: &Api<PortPublish>, pp: &PortPublish, ctx: &Context) -> Result<Action, Error> {
    let ns = pp.namespace().unwrap_or_default();
    let owner = owner_key(&ns, &pp.name_any());
    let current = pp.status.clone().unwrap_or_default();
    let generation = pp.metadata.generation;
    let mut status = PortPublishStatus {
        observed_generation: generation,
        ..PortPublishStatus::default()
    };
    let outcome = allocate(pp, ctx, &owner, &mut status).await?;
    if outcome.is_err() {
        // Refused or waiting: it holds no port.
        let freed = ctx.allocations().release_ports(&owner);
        ctx.metrics.released("port", freed.len() as u64);
    }
    let condition = refusal::allocated(&current.conditions, &outcome, generation);
    let changed = conditions_differ(&current.conditions, &condition);
    status.conditions = crate::conditions::allocated_and_ready(
        &current.conditions,
        condition,
        pier_crds::conditions::PUBLISHED,
        generation,
    );
    apply_status(api, pp, owned(pp.status.as_ref()).as_ref(), &status).await?;
    ctx.observe();
    match outcome {
        Ok(_) => {
            if current.ports != status.ports {
                let note = format!(
                    "{} on node {}",
                    status.summary.as_deref().unwrap_or_default(),
                    status.node.as_deref().unwrap_or_default()
                );
                ctx.metrics.allocated("port", status.ports.len() as u64);
                tracing::info!(portpublish = %owner, %note, "ports allocated");
                ctx.events
                    .publish(pp, false, "PortsAllocated", "Allocate", note)
                    .await;
            }
            Ok(Action::await_change())
        }
        Err(r) => Ok(r.requeue(changed, ctx, pp, NAME).await),
    }
}

async fn allocate(
    pp: &PortPublish,
    ctx: &Context,
    owner: &str,
    status: &mut PortPublishStatus,
) -> Result<Outcome, Error> {
    let ns = pp.namespace().unwrap_or_default();
    // The published Endpoint from the API, not the store: its node and readiness decide where the
    // host ports are held, and this reconcile usually runs because they changed, seen by a watch
    // other than the one filling the store (which may still hold the previous version).
    let endpoints: Api<Endpoint> = Api::namespaced(ctx.client.clone(), &ns);
    let name = &pp.spec.endpoint;
    let get = |what: String| move |source| Error::Get { what, source };
    let Some(ep) = endpoints
        .get_opt(name)
        .await
        .map_err(get(format!("endpoint {ns}/{name}")))?
    else {
        return Ok(Err(Refusal::wait(
            reason::ENDPOINT_NOT_FOUND,
            format!("endpoint {name} does not exist"),
        )));
    };
    let ep_status = ep.status.clone().unwrap_or_default();
    let (Some(node), true) = (
        ep_status.node.clone(),
        conditions::is_true(&ep_status.conditions, ALLOCATED),
    ) else {
        return Ok(Err(Refusal::wait(
            reason::ENDPOINT_NOT_READY,
            format!("endpoint {name} is not allocated yet"),
        )));
    };
    // Container mode (`docker run --net container:NAME`): the namespace belongs to the Endpoint
    // shared, so the ports lead to that Endpoint's address, as Docker publishes the ports of a
    // shared namespace on the container that owns it. The node resolves it the same way. From
    // the API, like the published Endpoint: its node and readiness decide.
    let receiver = match ep.spec.target.endpoint.clone() {
        None => ep,
        Some(shared) => {
            let owner = endpoints
                .get_opt(&shared.name)
                .await
                .map_err(get(format!("endpoint {ns}/{}", shared.name)))?;
            match owner {
                Some(owner)
                    if owner.status.as_ref().is_some_and(|s| {
                        s.node.as_deref() == Some(node.as_str())
                            && conditions::is_true(&s.conditions, ALLOCATED)
                    }) =>
                {
                    owner
                }
                _ => {
                    return Ok(Err(Refusal::wait(
                        reason::ENDPOINT_NOT_READY,
                        format!(
                            "endpoint {name} shares the namespace of endpoint {}, which is not \
                             allocated yet: the ports lead to its address",
                            shared.name
                        ),
                    )));
                }
            }
        }
    };
    let network_name = receiver.status.as_ref().and_then(|s| s.network.clone());
    if let Some(network_name) = network_name {
        // `internal` from the store: a change of it brings no PortPublish back, so a GET would
        // only be fresher by the store's lag, at no gain in correctness.
        let network = super::network(ctx, &network_name).await?;
        if network.is_some_and(|n| n.spec.internal) {
            return Ok(Err(Refusal::refuse(
                reason::INTERNAL_NETWORK,
                format!(
                    "endpoint {} is on internal network {network_name}, which publishes no ports",
                    receiver.name_any()
                ),
            )));
        }
    }
    // A host or none network gives the endpoint no address of its own: Docker discards `-p`
    // there, and no node could publish to it.
    let families = receiver.status.as_ref().map_or((false, false), |s| {
        (s.ipv4_address.is_some(), s.ipv6_address.is_some())
    });
    if families == (false, false) {
        return Ok(Err(Refusal::refuse(
            reason::NO_ADDRESS,
            format!(
                "endpoint {} has no address of its own (a host or none network): ports can be \
                 published only to an endpoint on a bridge network",
                receiver.name_any()
            ),
        )));
    }
    status.node = Some(node.clone());
    // From the API: the operator keeps no store of Nodes.
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let node_obj = nodes
        .get_opt(&node)
        .await
        .map_err(get(format!("node {node}")))?;
    status.node_addresses = node_obj
        .and_then(|n| n.status?.addresses)
        .unwrap_or_default()
        .into_iter()
        .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
        .map(|a| a.address)
        .collect();

    let mut specs = Vec::with_capacity(pp.spec.ports.len());
    for p in &pp.spec.ports {
        let host_ip = match host_ip_for(p.host_ip.as_deref(), families, &receiver.name_any()) {
            Ok(ip) => ip,
            Err(refused) => return Ok(Err(refused)),
        };
        let host_port = match p.host_port.map(u16::try_from) {
            None => None,
            Some(Ok(port)) => Some(port),
            Some(Err(_)) => {
                return Ok(Err(Refusal::refuse(
                    reason::PORT_CONFLICT,
                    format!("hostPort {:?} is not a port", p.host_port),
                )));
            }
        };
        specs.push(PortSpec {
            protocol: p.protocol,
            host_ip,
            host_port,
        });
    }
    let assigned = ctx.allocations().assign_ports(owner, &node, &specs);
    match assigned {
        Ok(held) => {
            status.ports = port_statuses(&pp.spec.ports, &held, families == (true, true));
            let text = summary(&status.ports);
            status.summary = Some(text.clone());
            Ok(Ok(format!("{text} on node {node}")))
        }
        Err(e @ PortError::Exhausted { .. }) => {
            Ok(Err(Refusal::refuse(reason::PORTS_EXHAUSTED, e.to_string())))
        }
        Err(e @ PortError::NotAllowed { .. }) => Ok(Err(Refusal::refuse(
            reason::PORT_NOT_ALLOWED,
            e.to_string(),
        ))),
        Err(e) => Ok(Err(Refusal::refuse(reason::PORT_CONFLICT, e.to_string()))),
    }
}

/// The host address a port is allocated on: `hostIP`, which must be of a family the endpoint
/// has (`families`: IPv4, IPv6), or, absent, every address (`0.0.0.0`, which conflicts with
/// both families; `::` for an IPv6-only endpoint).
fn host_ip_for(
    host_ip: Option<&str>,
    families: (bool, bool),
    endpoint: &str,
) -> Result<IpAddr, Refusal> {
    let Some(text) = host_ip else {
        return Ok(if families.0 {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        } else {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        });
    };
    let ip: IpAddr = text.parse().map_err(|_| {
        Refusal::refuse(
            reason::PORT_CONFLICT,
            format!("hostIP {text:?} is not an address"),
        )
    })?;
    let (family, has) = match ip.to_canonical() {
        IpAddr::V4(_) => ("IPv4", families.0),
        IpAddr::V6(_) => ("IPv6", families.1),
    };
    if !has {
        return Err(Refusal::refuse(
            reason::NO_ADDRESS,
            format!("endpoint {endpoint} has no {family} address for hostIP {text}"),
        ));
    }
    Ok(ip)
}

async fn cleanup(
    _api: &Api<PortPublish>,
    pp: &PortPublish,
    ctx: &Context,
) -> Result<Action, Error> {
    let owner = owner_key(&pp.namespace().unwrap_or_default(), &pp.name_any());
    let freed = ctx.allocations().release_ports(&owner);
    if !freed.is_empty() {
        ctx.metrics.released("port", freed.len() as u64);
        ctx.observe();
        let text = freed
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        tracing::info!(portpublish = %owner, ports = %text, "ports released");
        ctx.events
            .publish(
                pp,
                false,
                "PortsReleased",
                "Delete",
                format!("released {text}"),
            )
            .await;
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pier_crds::Protocol;

    #[test]
    fn summary_reads_like_docker_ps() {
        let ports = vec![
            PublishedPortStatus {
                container_port: 80,
                protocol: Protocol::Tcp,
                host_ip: "0.0.0.0".into(),
                host_port: 32772,
            },
            PublishedPortStatus {
                container_port: 443,
                protocol: Protocol::Tcp,
                host_ip: "0.0.0.0".into(),
                host_port: 32771,
            },
            PublishedPortStatus {
                container_port: 53,
                protocol: Protocol::Udp,
                host_ip: "127.0.0.1".into(),
                host_port: 5353,
            },
        ];
        assert_eq!(
            summary(&ports),
            "0.0.0.0:32772->80/tcp, 0.0.0.0:32771->443/tcp, 127.0.0.1:5353->53/udp"
        );
        assert_eq!(summary(&[]), "");
    }
}
