//! Endpoints with nothing to create: the `host` driver (the node's own namespace) and container
//! mode (an endpoint sharing another's namespace).

use super::Diff;
use crate::dataplane::report::ObjectKey;
use crate::state::{Driver, EndpointState};

/// A `host` endpoint is in sync when its network is a host network.
pub(super) fn host(diff: &mut Diff<'_>, endpoint: &EndpointState, network: &str) {
    let object = ObjectKey::endpoint(&endpoint.id);
    match diff.networks.get(network) {
        Some(n) if n.driver == Driver::Host => diff.in_sync(object),
        _ => diff.problem(
            &object,
            format!("network {network:?} is not a host network here"),
        ),
    }
}

/// A container-mode endpoint is in sync when the endpoint it shares with exists.
pub(super) fn shared(diff: &mut Diff<'_>, endpoint: &EndpointState, target: &str) {
    let object = ObjectKey::endpoint(&endpoint.id);
    if diff.endpoint_ids.contains(target) && target != endpoint.id {
        diff.in_sync(object);
    } else {
        diff.problem(
            &object,
            format!("shares the namespace of unknown endpoint {target:?}"),
        );
    }
}
