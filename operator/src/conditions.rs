//! The conditions the operator owns (`Ready`; an Endpoint's and PortPublish's `Allocated`),
//! Kubernetes-style: `lastTransitionTime` moves only when the status flips, so a reconcile that
//! changes nothing writes nothing new.

/// The conditions of a status the operator owns (`Ready`, `Allocated`): what it compares with
/// what it would write, leaving the node's conditions out.
pub fn operator_owned(conditions: &[Condition]) -> Vec<Condition> {
    conditions
        .iter()
        .filter(|c| c.type_ == READY || c.type_ == ALLOCATED)
        .cloned()
        .collect()
}

#[cfg(test)]
use pier_crds::conditions::reason;
use pier_crds::conditions::{self, ALLOCATED, Condition, READY};

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

/// An Endpoint's or PortPublish's conditions from the operator: its `allocated` one, and its
/// `Ready` from that and the node's `node_type` condition in `existing` (the node writes its own;
/// a change of it brings the object back here, so `Ready` follows).
pub fn allocated_and_ready(
    existing: &[Condition],
    allocated: Condition,
    node_type: &str,
    generation: Option<i64>,
) -> Vec<Condition> {
    let ready = conditions::summary(existing, &allocated, node_type, generation);
    vec![allocated, ready]
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
