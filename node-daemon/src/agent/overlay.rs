//! The agent's part of overlay networks: this node's tunnel address, recorded where the other
//! nodes read it, and the follower that keeps this node's VXLAN entries on the other nodes'
//! endpoints.
//!
//! The Kubernetes API is the only control plane. Each agent records its tunnel address and its
//! underlay MTU as annotations on its own Node (`pier.dev/tunnel-address`,
//! `pier.dev/underlay-mtu`): the Node lives exactly as long as the node is in the cluster, so a
//! Node deleted takes every entry pointing at it along, and every agent may already read Nodes.
//! Where an endpoint is (node, address, MAC) comes from its Endpoint's status, which the operator
//! writes once allocated: no gossip, nothing learned from traffic. Every change of another node's
//! Endpoint or of a Node wakes [`follow`], which re-applies the overlay networks' entries (a
//! burst of changes is one apply: the wake-ups coalesce while an apply runs).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::ObjectRef;
use pier_crds::names::{TUNNEL_ADDRESS_ANNOTATION, UNDERLAY_MTU_ANNOTATION};

use super::context::{Context, lock};
use super::metrics;
use super::{Error, FIELD_MANAGER};
use crate::dataplane::Scope;
use crate::kernel::tunnel::{self, Tunnel};
use crate::state::Driver;

/// The nodes' tunnel addresses by node name, from their annotations (a Node without a readable,
/// usable one has no overlay entries pointing at it).
pub fn tunnels(nodes: &[Arc<PartialObjectMeta<Node>>]) -> HashMap<String, Ipv4Addr> {
    nodes
        .iter()
        .filter(|node| node.metadata.deletion_timestamp.is_none())
        .filter_map(|node| {
            let address = node
                .metadata
                .annotations
                .as_ref()?
                .get(TUNNEL_ADDRESS_ANNOTATION)?
                .parse()
                .ok()
                .filter(|address| tunnel::is_usable(*address))?;
            Some((node.metadata.name.clone()?, address))
        })
        .collect()
}

/// The annotations that say `tunnel` on a Node.
fn annotations(tunnel: Tunnel) -> [(&'static str, String); 2] {
    [
        (TUNNEL_ADDRESS_ANNOTATION, tunnel.address.to_string()),
        (UNDERLAY_MTU_ANNOTATION, tunnel.underlay_mtu.to_string()),
    ]
}

/// Detects this node's tunnel and records it on the node's Node when the Node does not say it
/// yet (creating the Node with `register_node`). A node without a tunnel address keeps working
/// for everything but overlays; their Endpoints here are refused with `NoTunnelAddress`.
pub async fn announce(ctx: &Context) -> Result<(), Error> {
    let kernel = Arc::clone(&ctx.kernel);
    let given = ctx.config.tunnel_address;
    let detected = ctx.blocking(move || kernel.tunnel(given)).await?;
    let tunnel = match detected {
        Ok(tunnel) => tunnel,
        Err(error) => {
            let why = pier_runtime::error_chain(&error);
            let before = lock(&ctx.tunnel).replace(Err(why.clone()));
            if before
                .as_ref()
                .is_none_or(|b| b.as_ref().err() != Some(&why))
            {
                tracing::warn!(error = %why, "no tunnel address: overlay networks cannot be set up on this node");
                ctx.overlay_changed.notify_one();
            }
            return Ok(());
        }
    };
    if lock(&ctx.tunnel).replace(Ok(tunnel)) != Some(Ok(tunnel)) {
        tracing::info!(address = %tunnel.address, underlay_mtu = tunnel.underlay_mtu, "tunnel address for overlay networks");
        ctx.overlay_changed.notify_one();
    }
    let name = &ctx.config.node_name;
    let recorded = ctx.nodes.get(&ObjectRef::new(name));
    let says_it = recorded.as_ref().is_some_and(|node| {
        let have = node.metadata.annotations.as_ref();
        annotations(tunnel)
            .iter()
            .all(|(key, value)| have.and_then(|a| a.get(*key)) == Some(value))
    });
    if says_it || (recorded.is_none() && !ctx.config.register_node) {
        return Ok(());
    }
    record(ctx, name, tunnel).await
}

/// Writes the tunnel annotations of Node `name` by server-side apply as `pier-node` (which
/// creates the Node when it does not exist: only with `register_node`, see [`announce`]).
async fn record(ctx: &Context, name: &str, tunnel: Tunnel) -> Result<(), Error> {
    let annotations: serde_json::Map<String, serde_json::Value> = annotations(tunnel)
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value.into()))
        .collect();
    let patch = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "annotations": annotations},
    });
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    nodes
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(|source| Error::RecordTunnel {
            node: name.to_owned(),
            source,
        })?;
    tracing::info!(node = name, address = %tunnel.address, "tunnel address recorded on the Node");
    Ok(())
}

/// Re-applies the overlay networks' entries whenever another node's Endpoint or a Node changes,
/// until the task is dropped. A failed apply is tried again after a backoff (doubling up to the
/// resync interval), not only at the next change.
pub async fn follow(ctx: Arc<Context>) {
    if ctx.wait_synced().await.is_err() {
        return;
    }
    let mut retry = ctx.config.min_backoff;
    loop {
        ctx.overlay_changed.notified().await;
        // Without an overlay network here, another node's Endpoints are nothing to this node; a
        // Node's heartbeat or a bridge network's Endpoint elsewhere changes nothing applied.
        let has_overlay = ctx.index.read(|index| {
            let networks = &index.state().networks;
            networks.iter().any(|n| n.driver == Driver::Overlay)
        });
        if !has_overlay {
            continue;
        }
        let mut built = ctx.projection(&Scope::Overlay);
        ctx.refresh_elsewhere(&mut built.state);
        let part = (built.state.tunnel, built.state.remote_endpoints.clone());
        if ctx.is_programmed(&part) {
            continue;
        }
        let failure = match metrics::apply(&ctx, &mut built, Scope::Overlay).await {
            Ok(report) => report
                .failures()
                .map(|(object, message)| format!("{object}: {message}"))
                .reduce(|a, b| format!("{a}; {b}")),
            Err(error) => Some(pier_runtime::error_chain(&error)),
        };
        match failure {
            None => retry = ctx.config.min_backoff,
            Some(error) => {
                tracing::warn!(%error, retry_in = ?retry, "overlay entries not applied");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(ctx.config.resync);
                ctx.overlay_changed.notify_one();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn node(name: &str, annotations: &[(&str, &str)]) -> Arc<PartialObjectMeta<Node>> {
        Arc::new(PartialObjectMeta::<Node> {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            ..PartialObjectMeta::default()
        })
    }

    #[test]
    fn only_nodes_with_a_readable_tunnel_address_count() {
        let nodes = [
            node("a", &[(TUNNEL_ADDRESS_ANNOTATION, "10.0.0.1")]),
            node("b", &[(TUNNEL_ADDRESS_ANNOTATION, "not an address")]),
            node("loop", &[(TUNNEL_ADDRESS_ANNOTATION, "127.0.0.1")]),
            node("c", &[]),
        ];
        let tunnels = tunnels(&nodes);
        assert_eq!(tunnels.len(), 1);
        assert_eq!(tunnels.get("a"), Some(&Ipv4Addr::new(10, 0, 0, 1)));
    }

    #[test]
    fn the_annotations_carry_address_and_underlay_mtu() {
        let tunnel = Tunnel {
            address: Ipv4Addr::new(10, 0, 0, 1),
            underlay_mtu: 9000,
        };
        assert_eq!(
            annotations(tunnel),
            [
                (TUNNEL_ADDRESS_ANNOTATION, "10.0.0.1".to_owned()),
                (UNDERLAY_MTU_ANNOTATION, "9000".to_owned()),
            ]
        );
    }
}
