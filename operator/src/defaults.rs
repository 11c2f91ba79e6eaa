//! The default Networks of a fresh Docker host: `bridge`, `host` and `none`.

use futures::StreamExt;
use ipnet::Ipv4Net;
use kube::api::PostParams;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use pier_crds::{Driver, Network, NetworkSpec};

use crate::context::Context;

/// The default bridge network, which Endpoints without `spec.network` join.
pub const BRIDGE: &str = "bridge";
/// The host network (the node's own namespace).
pub const HOST: &str = "host";
/// Docker's `none` (driver `null`).
pub const NONE: &str = "none";

/// The Event reason when a predefined Network was deleted and is re-created.
pub const RECREATED: &str = "PredefinedNetworkRecreated";

/// Whether `name` is one of the predefined Networks, which stay (Docker: "bridge is a
/// pre-defined network and cannot be removed").
pub fn is_predefined(name: &str) -> bool {
    [BRIDGE, HOST, NONE].contains(&name)
}

/// The note of the Warning Event about a re-created predefined Network.
pub fn recreated_note(name: &str) -> String {
    format!(
        "{name} is a pre-defined network and cannot be removed: re-created (bridge, host and none \
         always exist, as on a Docker host; Endpoints without spec.network join bridge)"
    )
}

/// The three default Networks.
pub fn default_networks(bridge_subnet: Ipv4Net) -> Vec<Network> {
    let spec = |driver, subnet: Option<Ipv4Net>| NetworkSpec {
        driver,
        subnet: subnet.map(|s| s.to_string()),
        ..NetworkSpec::default()
    };
    vec![
        Network::new(BRIDGE, spec(Driver::Bridge, Some(bridge_subnet))),
        Network::new(HOST, spec(Driver::Host, None)),
        Network::new(NONE, spec(Driver::Null, None)),
    ]
}

/// Creates each default Network that does not exist. An existing one is left exactly as it is:
/// a user who changed or re-created `bridge` keeps their version. Returns the names created.
pub async fn ensure(
    api: &Api<Network>,
    bridge_subnet: Ipv4Net,
) -> Result<Vec<String>, kube::Error> {
    let mut created = Vec::new();
    for network in default_networks(bridge_subnet) {
        let name = network.metadata.name.clone().unwrap_or_default();
        match api.create(&PostParams::default(), &network).await {
            Ok(_) => created.push(name),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(created)
}

/// Keeps the predefined Networks: each one deleted is re-created at once, with a Warning Event
/// saying why, as kube-apiserver re-creates the `default` Namespace. Also after every (re)list
/// of the watch, for deletions it did not see. Runs until aborted.
pub async fn keep(ctx: &Context) {
    let api: Api<Network> = Api::all(ctx.client.clone());
    let mut events = watcher(api.clone(), watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(event) = events.next().await {
        let look = match event {
            Ok(watcher::Event::Delete(net)) => is_predefined(&net.name_any()),
            Ok(watcher::Event::InitDone) => true,
            Ok(_) => false,
            Err(error) => {
                tracing::debug!(%error, "network watch (predefined networks)");
                false
            }
        };
        if look {
            recreate(&api, ctx).await;
        }
    }
}

async fn recreate(api: &Api<Network>, ctx: &Context) {
    let created = match ensure(api, ctx.config.bridge_subnet).await {
        Ok(created) => created,
        Err(error) => {
            tracing::warn!(%error, "cannot re-create the predefined networks; retrying at the next change");
            return;
        }
    };
    for name in created {
        let note = recreated_note(&name);
        tracing::warn!(network = %name, "{note}");
        match api.get(&name).await {
            Ok(net) => {
                ctx.events
                    .publish(&net, true, RECREATED, "Recreate", note)
                    .await
            }
            Err(error) => tracing::warn!(%error, network = %name, "cannot read it back"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_networks_like_a_fresh_docker_host() {
        let nets = default_networks("172.17.0.0/16".parse().expect("cidr"));
        let summary: Vec<_> = nets
            .iter()
            .map(|n| {
                (
                    n.metadata.name.clone().unwrap_or_default(),
                    n.spec.driver.as_str(),
                    n.spec.subnet.clone(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("bridge".into(), "bridge", Some("172.17.0.0/16".into())),
                ("host".into(), "host", None),
                ("none".into(), "null", None),
            ]
        );
    }

    #[test]
    fn only_the_three_are_predefined() {
        assert!(is_predefined("bridge") && is_predefined("host") && is_predefined("none"));
        assert!(!is_predefined("workshop-tage") && !is_predefined("Bridge"));
        assert!(recreated_note("bridge").starts_with("bridge is a pre-defined network"));
    }
}
