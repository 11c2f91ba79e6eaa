//! The `null` driver (Docker's `none`): the endpoint's namespace gets `lo` up, nothing else.

use super::Diff;
use crate::dataplane::plan::Step;
use crate::dataplane::report::ObjectKey;
use crate::state::{Driver, EndpointState};

pub(super) fn endpoint(diff: &mut Diff<'_>, endpoint: &EndpointState, network: &str) {
    let object = ObjectKey::endpoint(&endpoint.id);
    if !matches!(diff.networks.get(network), Some(n) if n.driver == Driver::Null) {
        diff.problem(
            &object,
            format!("network {network:?} is not a null network here"),
        );
        return;
    }
    // `Netns::Host` has no file: it is the host namespace, which owns no interface of its own.
    let Some(path) = endpoint.netns.path() else {
        diff.problem(
            &object,
            "a null endpoint needs a namespace of its own".to_owned(),
        );
        return;
    };
    match diff.snapshot.loopbacks.get(&path) {
        Some(Ok(true)) => diff.in_sync(object),
        Some(Ok(false)) => diff.others.push(Step::LoopbackUp {
            endpoint: endpoint.id.clone(),
            netns: path,
        }),
        Some(Err(message)) => diff.problem(&object, format!("namespace: {message}")),
        None => diff.problem(&object, "namespace: not read".to_owned()),
    }
}
