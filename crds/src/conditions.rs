//! Kubernetes-style conditions (`metav1.Condition`) and the types and reasons Pier sets.

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// The object is valid and its allocations are recorded (set by the operator).
pub const READY: &str = "Ready";
/// The Endpoint's interface exists on its node (set by the node daemon).
pub const ATTACHED: &str = "Attached";
/// The PortPublish's ports are live on its node (set by the node daemon).
pub const PUBLISHED: &str = "Published";

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

/// Whether `new` says something other than what `existing` holds for its type (status, reason or
/// message): the change worth an Event.
pub fn differs(existing: &[Condition], new: &Condition) -> bool {
    find(existing, &new.type_).is_none_or(|c| {
        c.status != new.status || c.reason != new.reason || c.message != new.message
    })
}
