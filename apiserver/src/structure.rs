//! The structure server-side apply follows for the built-in kinds (pure): the list types of
//! Kubernetes' own OpenAPI (`+listType=map`, `+listMapKey=type`) for the lists that several
//! writers share. Without them every list of a built-in is atomic, and an apply of one Pod
//! condition by one manager (Pier's operator, on pods/status) would remove the others (the
//! kubelet's). Custom resources take theirs from their CRD schema instead.
//!
//! Only list types live here: nothing is validated or pruned with these fragments, and every
//! field they do not name keeps the defaults (maps granular, lists atomic), so for instance
//! `spec.readinessGates` stays atomic as in Kubernetes.

use std::sync::OnceLock;

use serde_json::{Value, json};

/// A list of objects keyed by their `type`, as conditions are in Kubernetes.
fn keyed_by_type() -> Value {
    json!({
        "type": "array",
        "items": {"type": "object"},
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
    })
}

/// An object whose `status` has the given lists.
fn with_status_lists(lists: &[&str]) -> Value {
    let properties: serde_json::Map<String, Value> = lists
        .iter()
        .map(|name| ((*name).to_owned(), keyed_by_type()))
        .collect();
    json!({"type": "object", "properties": {
        "status": {"type": "object", "properties": properties},
    }})
}

/// Pod: `status.conditions` keyed by `type` (the kubelet's and Pier's readiness gate condition).
fn pod() -> &'static Value {
    static POD: OnceLock<Value> = OnceLock::new();
    POD.get_or_init(|| with_status_lists(&["conditions"]))
}

/// Node: `status.conditions` and `status.addresses`, both keyed by `type`.
fn node() -> &'static Value {
    static NODE: OnceLock<Value> = OnceLock::new();
    NODE.get_or_init(|| with_status_lists(&["conditions", "addresses"]))
}

/// The structure of built-in kind `kind` of API group `group` (`""`: core), if it has lists
/// that are not atomic.
pub fn builtin(group: &str, kind: &str) -> Option<&'static Value> {
    match (group, kind) {
        ("", "Pod") => Some(pod()),
        ("", "Node") => Some(node()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patch::fields::Schema;

    #[test]
    fn pod_and_node_lists_are_keyed_by_type() {
        let status = |kind| Schema(builtin("", kind)).child("status");
        for (kind, list) in [
            ("Pod", "conditions"),
            ("Node", "conditions"),
            ("Node", "addresses"),
        ] {
            let schema = status(kind).child(list);
            assert_eq!(schema.list_type(), "map", "{kind} status.{list}");
            assert_eq!(schema.map_keys(), vec!["type"], "{kind} status.{list}");
        }
        let gates = Schema(builtin("", "Pod"))
            .child("spec")
            .child("readinessGates");
        assert_eq!(gates.list_type(), "atomic", "as in Kubernetes");
        assert!(builtin("", "Namespace").is_none());
        assert!(builtin("apps", "Pod").is_none(), "only core Pods");
    }
}
