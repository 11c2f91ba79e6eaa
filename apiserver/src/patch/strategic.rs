//! Strategic merge patch for the built-in kinds (pure), what `kubectl apply` and Helm's
//! upgrades send for them: a JSON merge patch whose lists of keyed objects (containers by
//! `name`, a Service's ports by `port`, conditions by `type`, ...) merge element by element,
//! with the directives `$patch` (replace, delete), `$retainKeys`, `$setElementOrder/FIELD` and
//! `$deleteFromPrimitiveList/FIELD`. The merge keys are those of the Go types' `patchMergeKey`
//! tags for the fields of the kinds served; every other list is replaced, as in Kubernetes.

use serde_json::{Map, Value};

/// How a list field is patched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListStrategy {
    Replace,
    /// Objects merged by the value of this key.
    MergeByKey(&'static str),
    /// Primitive values: the union (`metadata.finalizers`).
    Union,
}

const CONTAINER_LISTS: [&str; 3] = ["containers", "initContainers", "ephemeralContainers"];

/// The strategy of the list at `path` (field names from the object's root) of a `kind`.
fn list_strategy(kind: &str, path: &[String]) -> ListStrategy {
    let Some(field) = path.last().map(String::as_str) else {
        return ListStrategy::Replace;
    };
    let parent = path.len().checked_sub(2).map(|i| path[i].as_str());
    let exactly = |p: &[&str]| path.iter().map(String::as_str).eq(p.iter().copied());
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "resourceClaims"
        | "schedulingGates" => ListStrategy::MergeByKey("name"),
        "volumeMounts" => ListStrategy::MergeByKey("mountPath"),
        "volumeDevices" => ListStrategy::MergeByKey("devicePath"),
        "hostAliases" => ListStrategy::MergeByKey("ip"),
        "topologySpreadConstraints" => ListStrategy::MergeByKey("topologyKey"),
        "ports" if kind == "Service" && exactly(&["spec", "ports"]) => {
            ListStrategy::MergeByKey("port")
        }
        "ports" if parent.is_some_and(|p| CONTAINER_LISTS.contains(&p)) => {
            ListStrategy::MergeByKey("containerPort")
        }
        "conditions" if exactly(&["status", "conditions"]) => ListStrategy::MergeByKey("type"),
        "addresses" if kind == "Node" && exactly(&["status", "addresses"]) => {
            ListStrategy::MergeByKey("type")
        }
        "secrets" if kind == "ServiceAccount" && path.len() == 1 => {
            ListStrategy::MergeByKey("name")
        }
        "ownerReferences" if exactly(&["metadata", "ownerReferences"]) => {
            ListStrategy::MergeByKey("uid")
        }
        "finalizers" if exactly(&["metadata", "finalizers"]) => ListStrategy::Union,
        _ => ListStrategy::Replace,
    }
}

/// Why a strategic merge patch cannot be applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StrategicError {
    #[error("unknown patch directive {0:?} in a strategic merge patch")]
    UnknownDirective(String),
    #[error("the strategic merge patch must be a JSON object")]
    NotAnObject,
}

/// Applies strategic merge patch `patch` to `target`, an object of built-in `kind`.
pub fn strategic_merge_patch(
    target: &mut Value,
    patch: &Value,
    kind: &str,
) -> Result<(), StrategicError> {
    let Value::Object(patch) = patch else {
        return Err(StrategicError::NotAnObject);
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let mut path = Vec::new();
    if let Value::Object(t) = target {
        merge_map(t, patch, kind, &mut path)?;
    }
    Ok(())
}

fn directive(patch: &Map<String, Value>) -> Option<&str> {
    patch.get("$patch").and_then(Value::as_str)
}

/// `patch` without its directives (for a `$patch: replace`), recursively.
fn without_directives(value: &Value) -> Value {
    match value {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), without_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(
            a.iter()
                .filter(|v| !v.get("$patch").is_some_and(|d| d == "replace"))
                .map(without_directives)
                .collect(),
        ),
        other => other.clone(),
    }
}

fn merge_map(
    target: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    kind: &str,
    path: &mut Vec<String>,
) -> Result<(), StrategicError> {
    match directive(patch) {
        None | Some("merge") => {}
        Some("replace") => {
            if let Value::Object(m) = without_directives(&Value::Object(patch.clone())) {
                *target = m;
            }
            return Ok(());
        }
        Some(other) => return Err(StrategicError::UnknownDirective(other.to_owned())),
    }
    if let Some(Value::Array(retain)) = patch.get("$retainKeys") {
        target.retain(|k, _| retain.iter().any(|r| r == k));
    }
    for (key, value) in patch {
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Value::Array(gone)) = (target.get_mut(field), value) {
                list.retain(|v| !gone.contains(v));
            }
            continue;
        }
        if key.starts_with('$') {
            continue;
        }
        if value.is_null() {
            target.remove(key);
            continue;
        }
        path.push(key.clone());
        merge_field(target, key, value, kind, path)?;
        path.pop();
    }
    for (key, order) in patch {
        if let (Some(field), Value::Array(order)) = (key.strip_prefix("$setElementOrder/"), order) {
            path.push(field.to_owned());
            let strategy = list_strategy(kind, path);
            path.pop();
            if let Some(Value::Array(list)) = target.get_mut(field) {
                reorder(list, order, strategy);
            }
        }
    }
    Ok(())
}

fn merge_field(
    target: &mut Map<String, Value>,
    key: &str,
    value: &Value,
    kind: &str,
    path: &mut Vec<String>,
) -> Result<(), StrategicError> {
    match value {
        Value::Object(p) if directive(p) == Some("delete") => {
            target.remove(key);
        }
        Value::Object(p) => {
            let slot = target
                .entry(key.to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            if !slot.is_object() {
                *slot = Value::Object(Map::new());
            }
            if let Value::Object(t) = slot {
                merge_map(t, p, kind, path)?;
            }
        }
        Value::Array(p) => {
            let strategy = list_strategy(kind, path);
            let slot = target
                .entry(key.to_owned())
                .or_insert_with(|| Value::Array(Vec::new()));
            if !slot.is_array() {
                *slot = Value::Array(Vec::new());
            }
            if let Value::Array(t) = slot {
                merge_list(t, p, strategy, kind, path)?;
            }
        }
        other => {
            target.insert(key.to_owned(), other.clone());
        }
    }
    Ok(())
}

fn merge_list(
    target: &mut Vec<Value>,
    patch: &[Value],
    strategy: ListStrategy,
    kind: &str,
    path: &mut Vec<String>,
) -> Result<(), StrategicError> {
    let replace = patch
        .iter()
        .any(|v| v.get("$patch").is_some_and(|d| d == "replace"));
    let key = match strategy {
        _ if replace => {
            if let Value::Array(items) = without_directives(&Value::Array(patch.to_vec())) {
                *target = items;
            }
            return Ok(());
        }
        ListStrategy::Replace => {
            *target = patch.iter().map(without_directives).collect();
            return Ok(());
        }
        ListStrategy::Union => {
            for item in patch {
                if !target.contains(item) {
                    target.push(item.clone());
                }
            }
            return Ok(());
        }
        ListStrategy::MergeByKey(key) => key,
    };
    for item in patch {
        let Value::Object(p) = item else {
            target.push(item.clone());
            continue;
        };
        let id = p.get(key);
        let existing = target
            .iter_mut()
            .position(|t| id.is_some() && t.get(key) == id);
        match (directive(p), existing) {
            (Some("delete"), Some(_)) => target.retain(|t| t.get(key) != id),
            (Some("delete"), None) => {}
            (_, Some(i)) => {
                if let Value::Object(t) = &mut target[i] {
                    merge_map(t, p, kind, path)?;
                }
            }
            (_, None) => {
                let mut fresh = Map::new();
                merge_map(&mut fresh, p, kind, path)?;
                target.push(Value::Object(fresh));
            }
        }
    }
    Ok(())
}

/// Orders `list` as `order` says (`$setElementOrder`); elements it does not name keep their
/// relative order after the named ones.
fn reorder(list: &mut [Value], order: &[Value], strategy: ListStrategy) {
    let identity = |v: &Value| -> Option<Value> {
        match strategy {
            ListStrategy::MergeByKey(key) => v.get(key).cloned(),
            _ => Some(v.clone()),
        }
    };
    let wanted: Vec<Option<Value>> = order.iter().map(identity).collect();
    let rank = |v: &Value| {
        let id = identity(v);
        wanted
            .iter()
            .position(|w| id.is_some() && *w == id)
            .unwrap_or(wanted.len())
    };
    list.sort_by_key(rank);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn patched(kind: &str, mut target: Value, patch: Value) -> Value {
        strategic_merge_patch(&mut target, &patch, kind).expect("applies");
        target
    }

    #[test]
    fn containers_merge_by_name_with_helm_s_element_order() {
        let deployment = json!({"spec": {"replicas": 2, "template": {"spec": {"containers": [
            {"name": "operator", "image": "pier:1", "args": ["operator"],
             "env": [{"name": "RUST_LOG", "value": "info"}, {"name": "POD", "value": "x"}],
             "ports": [{"containerPort": 9090, "name": "admin"}]},
            {"name": "side", "image": "busybox"}]}}}});
        // What Helm's three-way merge sends when the log level and the replicas change.
        let patch = json!({"spec": {"replicas": 1, "template": {"spec": {
            "$setElementOrder/containers": [{"name": "operator"}, {"name": "side"}],
            "containers": [{"name": "operator",
                "$setElementOrder/env": [{"name": "RUST_LOG"}, {"name": "POD"}],
                "env": [{"name": "RUST_LOG", "value": "debug"}]}]}}}});
        let out = patched("Deployment", deployment, patch);
        let containers = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(out["spec"]["replicas"], json!(1));
        assert_eq!(containers[0]["image"], json!("pier:1"), "kept");
        assert_eq!(containers[0]["args"], json!(["operator"]));
        assert_eq!(
            containers[0]["env"],
            json!([{"name": "RUST_LOG", "value": "debug"}, {"name": "POD", "value": "x"}])
        );
        assert_eq!(containers[1]["name"], json!("side"));
    }

    #[test]
    fn delete_replace_and_retain_directives() {
        let target = json!({"metadata": {"finalizers": ["a"], "labels": {"x": "1", "y": "2"}},
            "spec": {"ports": [{"port": 80, "name": "http"}, {"port": 9090, "name": "admin"}],
                "selector": {"app": "a", "old": "b"},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}});
        let patch = json!({"metadata": {"finalizers": ["b"], "labels": {"y": null}},
            "spec": {"ports": [{"port": 80, "$patch": "delete"}],
                "selector": {"$patch": "replace", "app": "c"},
                "strategy": {"$retainKeys": ["type"], "type": "Recreate"}}});
        let out = patched("Service", target, patch);
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b"]));
        assert_eq!(out["metadata"]["labels"], json!({"x": "1"}));
        assert_eq!(
            out["spec"]["ports"],
            json!([{"port": 9090, "name": "admin"}])
        );
        assert_eq!(out["spec"]["selector"], json!({"app": "c"}));
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
    }

    #[test]
    fn unkeyed_lists_are_replaced_and_primitives_deleted() {
        let target = json!({"rules": [{"verbs": ["get"]}, {"verbs": ["list"]}],
            "metadata": {"finalizers": ["a", "b"]}});
        let patch = json!({"rules": [{"verbs": ["watch"]}],
            "metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}});
        let out = patched("ClusterRole", target, patch);
        assert_eq!(out["rules"], json!([{"verbs": ["watch"]}]));
        assert_eq!(out["metadata"]["finalizers"], json!(["b"]));
        let mut t = json!({});
        assert_eq!(
            strategic_merge_patch(&mut t, &json!({"a": {"$patch": "bogus"}}), "Pod"),
            Err(StrategicError::UnknownDirective("bogus".into()))
        );
    }
}
