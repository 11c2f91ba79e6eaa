//! The Network controller: subnet and gateway into status (and for an overlay its VXLAN id and
//! MTU), endpoint count, and a finalizer that holds a deletion while endpoints use the network
//! (Docker's "network has active endpoints").

use std::sync::Arc;
use std::time::Instant;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::api::ListParams;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use pier_crds::conditions::differs as conditions_differ;
use pier_crds::names::{UNDERLAY_MTU_ANNOTATION, bridge_name};
use pier_crds::network::{DEFAULT_MTU, MIN_UNDERLAY_MTU, overlay_mtu};
use pier_crds::{Driver, Network, NetworkStatus};

use super::refusal::{self, Outcome, Refusal};
use super::{Error, apply_status};
use crate::allocations::{NetworkAllocError, network_request, network6_request};
use crate::context::Context;
use crate::ipam::SubnetError;
use crate::ipam::ipv6::{Network6Allocation, Network6Error, Subnet6Error};
use pier_crds::conditions::reason;

/// The controller's name in metrics and logs.
pub const NAME: &str = "network";

/// Reconciles one Network.
pub async fn reconcile(net: Arc<Network>, ctx: Arc<Context>) -> Result<Action, Error> {
    let api: Api<Network> = Api::all(ctx.client.clone());
    super::reconcile_finalized(api, net, ctx, NAME, apply, cleanup).await
}

/// The error policy: backoff.
pub fn error_policy(net: Arc<Network>, error: &Error, ctx: Arc<Context>) -> Action {
    super::error_policy(net, error, ctx, NAME)
}

/// The status with only the conditions the operator owns, to compare with what it would write.
fn owned(status: Option<&NetworkStatus>) -> Option<NetworkStatus> {
    status.map(|s| NetworkStatus {
        conditions: crate::conditions::operator_owned(&s.conditions),
        ..s.clone()
    })
}

async fn apply(api: &Api<Network>, net: &Network, ctx: &Context) -> Result<Action, Error> {
    let name = net.name_any();
    let current = net.status.clone().unwrap_or_default();
    let generation = net.metadata.generation;
    let mut status = NetworkStatus {
        scope: Some(net.spec.driver.scope().into()),
        endpoints: i32::try_from(ctx.allocations().endpoint_count(&name)).unwrap_or(i32::MAX),
        observed_generation: generation,
        ..NetworkStatus::default()
    };
    let outcome: Outcome = match net.spec.driver {
        Driver::Host | Driver::Null => Ok(format!("{} network", net.spec.driver.as_str())),
        Driver::Bridge => allocate(net, ctx).await.map(|addressing| {
            addressing.record(&mut status);
            status.bridge = Some(bridge_name(&net.uid().unwrap_or_default()));
            status.mtu = Some(net.spec.mtu.unwrap_or(DEFAULT_MTU));
            addressing.to_string()
        }),
        Driver::Overlay => match allocate_overlay(net, ctx).await {
            Ok(overlay) => {
                overlay.addressing.record(&mut status);
                status.bridge = Some(bridge_name(&net.uid().unwrap_or_default()));
                status.vxlan_id = Some(overlay.vxlan_id);
                status.mtu = Some(overlay.mtu);
                Ok(format!(
                    "{}, VXLAN id {}, MTU {}",
                    overlay.addressing, overlay.vxlan_id, overlay.mtu
                ))
            }
            Err(OverlayError::Refused(refusal)) => Err(refusal),
            Err(OverlayError::Nodes(source)) => {
                return Err(Error::List {
                    what: "nodes",
                    source,
                });
            }
        },
    };
    let condition = refusal::condition(&current.conditions, &outcome, generation);
    let changed = conditions_differ(&current.conditions, &condition);
    status.conditions = vec![condition];
    let written = owned(net.status.as_ref());
    if only_the_count_differs(written.as_ref(), &status)
        && let Err(wait) = ctx.endpoint_counts.admit(&name, Instant::now())
    {
        // Endpoints keep coming or going: the count goes with the next write, at most
        // `ENDPOINT_COUNT_PACE` from the last (or with any other change before that).
        return Ok(Action::requeue(wait));
    }
    apply_status(api, net, written.as_ref(), &status).await?;
    match outcome {
        Ok(message)
            if (current.subnet != status.subnet && status.subnet.is_some())
                || (current.ipv6_subnet != status.ipv6_subnet && status.ipv6_subnet.is_some()) =>
        {
            ctx.metrics.allocated("subnet", 1);
            tracing::info!(network = %name, %message, "subnet allocated");
            ctx.events
                .publish(net, false, "SubnetAllocated", "Allocate", message)
                .await;
        }
        Err(r) if changed => r.report(ctx, net, NAME, "Allocate").await,
        _ => {}
    }
    Ok(Action::await_change())
}

/// What a bridge or overlay Network holds of each family it has.
struct Addressing {
    v4: Option<(Ipv4Net, std::net::Ipv4Addr)>,
    v6: Option<Network6Allocation>,
}

impl Addressing {
    fn record(&self, status: &mut NetworkStatus) {
        if let Some((subnet, gateway)) = self.v4 {
            status.subnet = Some(subnet.to_string());
            status.gateway = Some(gateway.to_string());
        }
        if let Some(v6) = self.v6 {
            status.ipv6_subnet = Some(v6.subnet.to_string());
            status.ipv6_gateway = Some(v6.gateway.to_string());
        }
    }
}

impl std::fmt::Display for Addressing {
    /// `subnet 172.18.0.0/16, gateway 172.18.0.1, IPv6 subnet fd..::/64, gateway fd..::1`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some((subnet, gateway)) = self.v4 {
            parts.push(format!("subnet {subnet}, gateway {gateway}"));
        }
        if let Some(v6) = self.v6 {
            parts.push(format!("IPv6 subnet {}, gateway {}", v6.subnet, v6.gateway));
        }
        f.write_str(&parts.join(", "))
    }
}

/// The subnets and gateways of a bridge or overlay Network, or why not.
async fn allocate(net: &Network, ctx: &Context) -> Result<Addressing, Refusal> {
    let v4 = if net.spec.has_ipv4() {
        Some(allocate_ipv4(net, ctx).await?)
    } else {
        None
    };
    let v6 = if net.spec.has_ipv6() {
        Some(allocate_ipv6(net, ctx)?)
    } else {
        None
    };
    Ok(Addressing { v4, v6 })
}

/// The IPv6 subnet (the spec's, or the next /64 of the cluster's ULA prefix) and gateway.
fn allocate_ipv6(net: &Network, ctx: &Context) -> Result<Network6Allocation, Refusal> {
    let request =
        network6_request(net).map_err(|e| Refusal::refuse(reason::INVALID_SPEC, e.to_string()))?;
    let result = ctx.allocations().ensure_network6(&net.name_any(), &request);
    result.map_err(|e| {
        let why = match &e {
            Network6Error::Subnet(Subnet6Error::Overlap { .. }) => reason::SUBNET_CONFLICT,
            Network6Error::Subnet(Subnet6Error::Exhausted(_)) => reason::POOLS_EXHAUSTED,
            _ => reason::INVALID_SPEC,
        };
        Refusal::refuse(why, e.to_string())
    })
}

/// The IPv4 subnet and gateway of a bridge or overlay Network, or why not.
async fn allocate_ipv4(
    net: &Network,
    ctx: &Context,
) -> Result<(Ipv4Net, std::net::Ipv4Addr), Refusal> {
    let name = net.name_any();
    let request =
        network_request(net).map_err(|e| Refusal::refuse(reason::INVALID_SPEC, e.to_string()))?;
    if request.subnet.is_none() && ctx.allocations().network(&name).is_none() {
        // Automatic subnets skip every subnet another Network asks for explicitly, even one not
        // reconciled yet: `bridge` keeps 172.17.0.0/16 whatever order the Networks come in.
        let reserved = explicit_subnets(ctx, &name).await;
        ctx.allocations().reserve_explicit(reserved);
    }
    let result = ctx.allocations().ensure_network(&name, &request);
    result.map(|a| (a.subnet, a.gateway)).map_err(|e| {
        let why = match &e {
            NetworkAllocError::Subnet(SubnetError::Overlap { .. }) => reason::SUBNET_CONFLICT,
            NetworkAllocError::Subnet(SubnetError::PoolsExhausted { .. }) => {
                reason::POOLS_EXHAUSTED
            }
            _ => reason::INVALID_SPEC,
        };
        Refusal::refuse(why, e.to_string())
    })
}

/// What an overlay Network holds besides a bridge network's subnet and gateway.
struct OverlayAllocation {
    addressing: Addressing,
    vxlan_id: u32,
    mtu: i32,
}

/// Why an overlay Network has no allocation (yet).
enum OverlayError {
    Refused(Refusal),
    Nodes(kube::Error),
}

/// Subnet, gateway, VXLAN id and MTU of an overlay Network, or why not.
async fn allocate_overlay(net: &Network, ctx: &Context) -> Result<OverlayAllocation, OverlayError> {
    let addressing = allocate(net, ctx).await.map_err(OverlayError::Refused)?;
    let vxlan_id = ctx
        .allocations()
        .ensure_vxlan_id(&net.name_any())
        .map_err(|e| {
            OverlayError::Refused(Refusal::refuse(reason::VXLAN_IDS_EXHAUSTED, e.to_string()))
        })?;
    // Chosen once: a later change would re-make every endpoint's interface on every node.
    let chosen = net.status.as_ref().and_then(|s| s.mtu);
    let mtu = match net.spec.mtu.or(chosen) {
        Some(mtu) => mtu,
        None => overlay_mtu(underlay_mtus(ctx).await.map_err(OverlayError::Nodes)?),
    };
    Ok(OverlayAllocation {
        addressing,
        vxlan_id,
        mtu,
    })
}

/// The underlay MTUs the node agents recorded on their Nodes (values that are not a number, or
/// too small to carry VXLAN and an IPv4 packet, are skipped).
async fn underlay_mtus(ctx: &Context) -> Result<Vec<i32>, kube::Error> {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let list = nodes.list_metadata(&ListParams::default()).await?;
    Ok(list
        .items
        .iter()
        .filter_map(|node| {
            node.metadata
                .annotations
                .as_ref()?
                .get(UNDERLAY_MTU_ANNOTATION)?
                .parse()
                .ok()
                .filter(|mtu| *mtu >= MIN_UNDERLAY_MTU)
        })
        .collect())
}

/// The explicit subnets of every other Network, from the store (best effort, as a list from the
/// API would be: a Network created after either is not seen; a closed store reserves nothing).
async fn explicit_subnets(ctx: &Context, except: &str) -> Vec<Ipv4Net> {
    match ctx.stores.networks().await {
        Ok(networks) => networks
            .iter()
            .filter(|n| n.name_any() != except)
            .filter_map(|n| n.spec.subnet.as_deref()?.parse().ok())
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the networks to skip their subnets");
            Vec::new()
        }
    }
}

/// Whether `status` differs from what was written only in the endpoint count (the field paced
/// by [`Context::endpoint_counts`]).
fn only_the_count_differs(written: Option<&NetworkStatus>, status: &NetworkStatus) -> bool {
    written.is_some_and(|written| {
        written.endpoints != status.endpoints
            && NetworkStatus {
                endpoints: status.endpoints,
                ..written.clone()
            } == *status
    })
}

async fn cleanup(api: &Api<Network>, net: &Network, ctx: &Context) -> Result<Action, Error> {
    let name = net.name_any();
    let count = ctx.allocations().endpoint_count(&name);
    if count > 0 {
        let current = net.status.clone().unwrap_or_default();
        let message = format!(
            "network {name} has {count} active endpoint(s): its deletion waits until they are deleted"
        );
        let in_use = Refusal::refuse(reason::IN_USE, message);
        let condition = in_use.condition(&current.conditions, net.metadata.generation);
        let changed = conditions_differ(&current.conditions, &condition);
        let status = NetworkStatus {
            endpoints: i32::try_from(count).unwrap_or(i32::MAX),
            conditions: vec![condition],
            ..owned(Some(&current)).unwrap_or_default()
        };
        apply_status(api, net, owned(net.status.as_ref()).as_ref(), &status).await?;
        if changed {
            in_use.report(ctx, net, NAME, "Delete").await;
        }
        return Err(Error::InUse {
            network: name,
            count,
        });
    }
    let released = ctx.allocations().release_network(&name);
    ctx.endpoint_counts.forget(&name);
    if let Some(subnet) = released {
        ctx.metrics.released("subnet", 1);
        tracing::info!(network = %name, %subnet, "subnet released");
        ctx.events
            .publish(
                net,
                false,
                "SubnetReleased",
                "Delete",
                format!("subnet {subnet} released"),
            )
            .await;
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written() -> NetworkStatus {
        NetworkStatus {
            subnet: Some("10.1.0.0/24".into()),
            gateway: Some("10.1.0.1".into()),
            endpoints: 3,
            ..NetworkStatus::default()
        }
    }

    #[test]
    fn only_a_new_count_is_paced() {
        let count = NetworkStatus {
            endpoints: 4,
            ..written()
        };
        assert!(only_the_count_differs(Some(&written()), &count));
        // Nothing changed: no write anyway, nothing to pace.
        assert!(!only_the_count_differs(Some(&written()), &written()));
        // The count and something else: the write goes now.
        let both = NetworkStatus {
            endpoints: 4,
            mtu: Some(1400),
            ..written()
        };
        assert!(!only_the_count_differs(Some(&written()), &both));
        // The first status goes now.
        assert!(!only_the_count_differs(None, &count));
    }
}
