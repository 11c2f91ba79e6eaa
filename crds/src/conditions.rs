//! Kubernetes-style conditions (`metav1.Condition`) and the types and reasons Pier sets.

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

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
