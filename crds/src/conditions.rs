//! Kubernetes-style conditions (`metav1.Condition`) and the types and reasons Pier sets.

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// Whether the object works. A Network's: the operator allocated it. An Endpoint's or
/// PortPublish's: the operator allocated it *and* its node attached or published it; when not,
/// the reason of whichever failed first (the operator's, then the node's), as [`summary`] computes
/// it. The `Ready` column of `kubectl get pep` and `kubectl get ppub` shows it.
pub const READY: &str = "Ready";
/// The Endpoint's or PortPublish's allocations are recorded (set by the operator).
pub const ALLOCATED: &str = "Allocated";
/// The Endpoint's interface exists on its node (set by the node daemon).
pub const ATTACHED: &str = "Attached";
/// The PortPublish's ports are live on its node (set by the node daemon).
pub const PUBLISHED: &str = "Published";

/// Condition reasons, one per outcome: the API's vocabulary (users grep for them), shared by the
/// operator (`Ready`) and the node daemon (`Attached`, `Published`).
pub mod reason {
    // The operator's `Ready`.
    /// Everything is allocated.
    pub const ALLOCATED: &str = "Allocated";
    /// A Network's subnet overlaps another Network's.
    pub const SUBNET_CONFLICT: &str = "SubnetConflict";
    /// No pool subnet is free.
    pub const POOLS_EXHAUSTED: &str = "PoolsExhausted";
    /// Every VXLAN id is held by another overlay Network.
    pub const VXLAN_IDS_EXHAUSTED: &str = "VxlanIdsExhausted";
    /// A Network's gateway, ipRange or aux addresses do not fit.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// A Network is being deleted while endpoints use it.
    pub const IN_USE: &str = "InUse";
    /// The Endpoint's Network does not exist (yet).
    pub const NETWORK_NOT_FOUND: &str = "NetworkNotFound";
    /// The Endpoint's Network has no subnet (yet).
    pub const NETWORK_NOT_READY: &str = "NetworkNotReady";
    /// The netns target names no node and the cluster has several.
    pub const NODE_REQUIRED: &str = "NodeRequired";
    /// The target Pod does not exist.
    pub const POD_NOT_FOUND: &str = "PodNotFound";
    /// The target Pod has no node yet.
    pub const POD_NOT_SCHEDULED: &str = "PodNotScheduled";
    /// The endpoint shared (container mode) or published does not exist.
    pub const ENDPOINT_NOT_FOUND: &str = "EndpointNotFound";
    /// The endpoint shared or published has no node or address yet.
    pub const ENDPOINT_NOT_READY: &str = "EndpointNotReady";
    /// The namespace is already on this network through another Endpoint.
    pub const ALREADY_ATTACHED: &str = "AlreadyAttached";
    /// The interface name is taken in the namespace.
    pub const INTERFACE_IN_USE: &str = "InterfaceInUse";
    /// The static address is taken, reserved or outside the subnet.
    pub const ADDRESS_IN_USE: &str = "AddressInUse";
    /// The static address is not in the subnet or is reserved.
    pub const INVALID_ADDRESS: &str = "InvalidAddress";
    /// No address is free.
    pub const ADDRESSES_EXHAUSTED: &str = "AddressesExhausted";
    /// A host port is held by another PortPublish.
    pub const PORT_CONFLICT: &str = "PortConflict";
    /// An explicit host port is one of the operator's denied host ports.
    pub const PORT_NOT_ALLOWED: &str = "PortNotAllowed";
    /// No automatic host port is free.
    pub const PORTS_EXHAUSTED: &str = "PortsExhausted";
    /// Ports cannot be published from an internal network.
    pub const INTERNAL_NETWORK: &str = "InternalNetwork";
    /// Ports cannot be published to an endpoint without an address (host and none networks).
    pub const NO_ADDRESS: &str = "NoAddress";

    /// `Ready` of an allocated Endpoint or PortPublish whose node has not reported yet.
    pub const WAITING_FOR_NODE: &str = "WaitingForNode";

    // The node daemon's `Attached` and `Published`.
    /// The operator has not (or not yet) allocated the object: its `Ready` is not `True`.
    pub const NOT_ALLOCATED: &str = "NotAllocated";
    /// The Network's subnet overlaps an address or route of the node that Pier does not own.
    pub const SUBNET_IN_USE_ON_NODE: &str = "SubnetInUseOnNode";
    /// The target Pod's network namespace was not found on this node.
    pub const POD_NETNS_NOT_FOUND: &str = "PodNetnsNotFound";
    /// The PortPublish's Endpoint is not attached on this node.
    pub const ENDPOINT_NOT_ATTACHED: &str = "EndpointNotAttached";
    /// The Endpoint targets a named netns, and this node does not serve netns targets.
    pub const NETNS_TARGETS_DISABLED: &str = "NetnsTargetsDisabled";
    /// A process of the node already has one of the PortPublish's host ports (that port is
    /// left out; the others are published).
    pub const PORT_IN_USE_ON_NODE: &str = "PortInUseOnNode";
    /// The Endpoint's overlay network needs this node's tunnel address, and it has none (no
    /// default route to detect it from, and no `--tunnel-address`).
    pub const NO_TUNNEL_ADDRESS: &str = "NoTunnelAddress";
    /// The endpoint's interface exists as desired.
    pub const ATTACHED: &str = "Attached";
    /// The kernel refused part of the endpoint's attachment.
    pub const ATTACH_FAILED: &str = "AttachFailed";
    /// The ports are live in the node's table.
    pub const PUBLISHED: &str = "Published";
    /// The node's table could not be written.
    pub const PUBLISH_FAILED: &str = "PublishFailed";
}

/// A Pier object's conditions, read from its status (none before it has a status).
pub trait WithConditions {
    /// The object's conditions.
    fn conditions(&self) -> &[Condition];
}

impl WithConditions for crate::Network {
    fn conditions(&self) -> &[Condition] {
        self.status.as_ref().map_or(&[], |s| &s.conditions)
    }
}

impl WithConditions for crate::Endpoint {
    fn conditions(&self) -> &[Condition] {
        self.status.as_ref().map_or(&[], |s| &s.conditions)
    }
}

impl WithConditions for crate::PortPublish {
    fn conditions(&self) -> &[Condition] {
        self.status.as_ref().map_or(&[], |s| &s.conditions)
    }
}

/// Finds the condition of `type_` in a list.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of `type_` is present and `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

/// The condition of `type_` to write: `lastTransitionTime` kept from `existing` when the status
/// does not change, so a reconcile that changes nothing writes nothing new.
pub fn observe(
    existing: &[Condition],
    type_: &str,
    ok: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let last_transition_time = find(existing, type_)
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(Timestamp::now()));
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time,
    }
}

/// The `Ready` condition of an Endpoint or PortPublish: the operator's `allocated` when that is
/// not `True` (the operator fails first: the node waits for it), else the node's condition of
/// `node_type` (`Attached`, `Published`) as it stands in `existing`; `WaitingForNode` while the
/// node has not spoken, or still speaks of an allocation it has not seen.
pub fn summary(
    existing: &[Condition],
    allocated: &Condition,
    node_type: &str,
    generation: Option<i64>,
) -> Condition {
    let node = find(existing, node_type).filter(|c| c.reason != reason::NOT_ALLOCATED);
    let (ok, why, message) = match node {
        _ if allocated.status != "True" => {
            (false, allocated.reason.as_str(), allocated.message.clone())
        }
        Some(node) => (
            node.status == "True",
            node.reason.as_str(),
            node.message.clone(),
        ),
        None => (
            false,
            reason::WAITING_FOR_NODE,
            format!("{}; waiting for the node's {node_type}", allocated.message),
        ),
    };
    observe(existing, READY, ok, why, message, generation)
}

/// Whether `new` says something other than what `existing` holds for its type (status, reason or
/// message): the change worth an Event.
pub fn differs(existing: &[Condition], new: &Condition) -> bool {
    find(existing, &new.type_).is_none_or(|c| {
        c.status != new.status || c.reason != new.reason || c.message != new.message
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn condition(type_: &str, ok: bool, why: &str, message: &str) -> Condition {
        observe(&[], type_, ok, why, message, Some(1))
    }

    fn shown(c: &Condition) -> (&str, &str, &str) {
        (c.status.as_str(), c.reason.as_str(), c.message.as_str())
    }

    #[test]
    fn ready_says_why_whoever_failed_first() {
        let refused = condition(
            ALLOCATED,
            false,
            reason::ADDRESS_IN_USE,
            "172.17.0.5 is taken",
        );
        let node_waits = condition(ATTACHED, false, reason::NOT_ALLOCATED, "not allocated");
        let ready = summary(
            std::slice::from_ref(&node_waits),
            &refused,
            ATTACHED,
            Some(1),
        );
        assert_eq!(
            shown(&ready),
            ("False", "AddressInUse", "172.17.0.5 is taken")
        );

        let allocated = condition(ALLOCATED, true, reason::ALLOCATED, "172.17.0.5 on bridge");
        let ready = summary(&[], &allocated, ATTACHED, Some(1));
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason, "WaitingForNode");
        assert!(
            ready.message.contains("172.17.0.5 on bridge"),
            "{}",
            ready.message
        );
        // The node has not seen the allocation yet: still waiting, not the node's NotAllocated.
        let ready = summary(&[node_waits], &allocated, ATTACHED, Some(1));
        assert_eq!(ready.reason, "WaitingForNode");

        let node_failed = condition(ATTACHED, false, reason::POD_NETNS_NOT_FOUND, "no netns");
        let ready = summary(&[node_failed], &allocated, ATTACHED, Some(1));
        assert_eq!(shown(&ready), ("False", "PodNetnsNotFound", "no netns"));

        let live = condition(PUBLISHED, true, reason::PUBLISHED, "0.0.0.0:8080->80/tcp");
        let ready = summary(&[live], &allocated, PUBLISHED, Some(1));
        assert_eq!(shown(&ready), ("True", "Published", "0.0.0.0:8080->80/tcp"));
    }
}
