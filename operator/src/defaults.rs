//! The default Networks of a fresh Docker host: `bridge`, `host` and `none`.

use ipnet::Ipv4Net;
use kube::Api;
use kube::api::PostParams;
use pier_crds::{Driver, Network, NetworkSpec};

/// The default bridge network, which Endpoints without `spec.network` join.
pub const BRIDGE: &str = "bridge";
/// The host network (the node's own namespace).
pub const HOST: &str = "host";
/// Docker's `none` (driver `null`).
pub const NONE: &str = "none";

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
}
