//! The `Ready` condition the operator owns, Kubernetes-style: `lastTransitionTime` moves only when
//! the status flips, so a reconcile that changes nothing writes nothing new.

use pier_crds::conditions::{self, Condition, READY};

/// Reasons the operator gives, one per outcome (the API's vocabulary; users grep for them).
pub mod reason {
    /// Everything is allocated.
    pub const ALLOCATED: &str = "Allocated";
    /// A Network's subnet overlaps another Network's.
    pub const SUBNET_CONFLICT: &str = "SubnetConflict";
    /// No pool subnet is free.
    pub const POOLS_EXHAUSTED: &str = "PoolsExhausted";
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
}

/// The `Ready` condition to write: `lastTransitionTime` kept from `existing` when the status does
/// not change.
pub fn ready(
    existing: &[Condition],
    ok: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
) -> Condition {
    conditions::observe(existing, READY, ok, reason, message, generation)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    #[test]
    fn transition_time_moves_only_on_flips() {
        let first = ready(&[], false, reason::NETWORK_NOT_FOUND, "waiting", Some(1));
        assert_eq!(first.status, "False");
        let mut old = first.clone();
        old.last_transition_time = Time(Timestamp::UNIX_EPOCH);
        let same = ready(
            &[old.clone()],
            false,
            reason::NETWORK_NOT_READY,
            "still",
            Some(2),
        );
        assert_eq!(same.last_transition_time, old.last_transition_time);
        assert_eq!(same.reason, "NetworkNotReady");
        assert_eq!(same.observed_generation, Some(2));
        let flipped = ready(&[old.clone()], true, reason::ALLOCATED, "", Some(2));
        assert_ne!(flipped.last_transition_time, old.last_transition_time);
        assert_eq!(flipped.status, "True");
    }
}
