//! Custom resource validation: pruning of unknown fields, defaulting, the OpenAPI v3 schema's
//! constraints (checked with `jsonschema`) and `x-kubernetes-validations` CEL rules (`kube-cel`).

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::error::Cause;

/// The compiled checks of one CRD version.
pub struct Checks {
    schema: Value,
    validator: jsonschema::Validator,
    cel: Arc<kube_cel::CompiledSchema>,
    /// Where in `cel` the rules are, so a write evaluates only the subtrees that have rules.
    rules: RuleTree,
}

/// Which subtrees of a compiled schema hold CEL rules: a node is kept only when rules are at or
/// below it. kube-cel converts the value at every node of a tree it walks into CEL values
/// (the whole object at the root, with its managed fields and status, then each child again),
/// which made rule checking the largest cost of a status write; walking this tree first, the
/// conversion happens only where rules are.
#[derive(Debug, Default)]
struct RuleTree {
    /// Rules (or rules that failed to compile, reported by evaluating them) on this node, or
    /// `allOf`/`oneOf`/`anyOf` branches with rules: the node's subtree is evaluated whole.
    here: bool,
    /// A transition rule (one reading `oldSelf`) at or below: such a subtree is evaluated even
    /// when unchanged, as Kubernetes does not ratchet transition rules.
    transition: bool,
    properties: Vec<(String, RuleTree)>,
    items: Option<Box<RuleTree>>,
    additional_properties: Option<Box<RuleTree>>,
}

impl RuleTree {
    /// The rules of `node`'s subtree; `None` when it has none.
    fn of(node: &kube_cel::CompiledSchema) -> Option<RuleTree> {
        let branches = node.all_of.iter().chain(&node.one_of).chain(&node.any_of);
        let branch_trees: Vec<RuleTree> = branches.filter_map(RuleTree::of).collect();
        let own_transition = node.validations.iter().any(|rule| {
            rule.as_ref()
                .map_or(true, |compiled| compiled.is_transition_rule)
        });
        let mut tree = RuleTree {
            here: !node.validations.is_empty() || !branch_trees.is_empty(),
            transition: own_transition || branch_trees.iter().any(|t| t.transition),
            ..RuleTree::default()
        };
        tree.properties = node
            .properties
            .iter()
            .filter_map(|(name, child)| Some((name.clone(), RuleTree::of(child)?)))
            .collect();
        tree.items = node.items.as_deref().and_then(RuleTree::of).map(Box::new);
        tree.additional_properties = node
            .additional_properties
            .as_deref()
            .filter(|_| !node.preserve_unknown_fields)
            .and_then(RuleTree::of)
            .map(Box::new);
        let children = tree.properties.iter().map(|(_, t)| t);
        let children = children
            .chain(tree.items.as_deref())
            .chain(tree.additional_properties.as_deref());
        let mut any_child = false;
        for child in children {
            any_child = true;
            tree.transition |= child.transition;
        }
        (tree.here || any_child).then_some(tree)
    }

    /// Evaluates the rules under `node` (this tree's schema node) for `value` at `path`,
    /// pushing their violations. A subtree equal to its old value is not evaluated unless it
    /// has transition rules: Kubernetes' validation ratcheting (GA in 1.33) accepts unchanged
    /// values whatever their rules say, so their errors would be dropped anyway.
    fn check(
        &self,
        node: &kube_cel::CompiledSchema,
        value: &Value,
        old: Option<&Value>,
        path: &str,
        errors: &mut Vec<kube_cel::ValidationError>,
    ) {
        if !self.transition && old == Some(value) {
            return;
        }
        if self.here {
            if let Err(found) = kube_cel::validate_compiled(node, value, old) {
                errors.extend(found.into_vec().into_iter().map(|mut error| {
                    error.field_path = under(path, &error.field_path);
                    error
                }));
            }
            return;
        }
        if let Value::Object(fields) = value {
            for (name, tree) in &self.properties {
                if let (Some(child), Some(child_value)) =
                    (node.properties.get(name), fields.get(name))
                {
                    let child_old = old.and_then(|o| o.get(name));
                    tree.check(child, child_value, child_old, &join(path, name), errors);
                }
            }
            if let (Some(tree), Some(child)) = (
                self.additional_properties.as_deref(),
                node.additional_properties.as_deref(),
            ) {
                for (key, child_value) in fields {
                    if node.properties.contains_key(key) {
                        continue;
                    }
                    let child_old = old.and_then(|o| o.get(key));
                    tree.check(child, child_value, child_old, &join(path, key), errors);
                }
            }
        }
        if let (Some(tree), Some(child), Value::Array(items)) =
            (self.items.as_deref(), node.items.as_deref(), value)
        {
            for (index, item) in items.iter().enumerate() {
                let item_old = old.and_then(Value::as_array).and_then(|a| a.get(index));
                tree.check(child, item, item_old, &format!("{path}[{index}]"), errors);
            }
        }
    }
}

/// `inner`, a field path relative to the node at `path`, as a path from the object's root.
fn under(path: &str, inner: &str) -> String {
    if path.is_empty() {
        inner.to_owned()
    } else if inner.is_empty() {
        path.to_owned()
    } else if inner.starts_with(['[', '.']) {
        // An index, or a rule's `fieldPath` (`.mtu`) on the node itself.
        format!("{path}{inner}")
    } else {
        format!("{path}.{inner}")
    }
}

impl std::fmt::Debug for Checks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checks").finish_non_exhaustive()
    }
}

/// Rewrite Kubernetes schema extensions into plain JSON Schema (`nullable`, int-or-string).
fn to_json_schema(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out: Map<String, Value> = m
                .iter()
                .map(|(k, v)| {
                    let v = match k.as_str() {
                        // Keys whose values are names, not schemas, or literal values.
                        "default"
                        | "enum"
                        | "example"
                        | "required"
                        | "x-kubernetes-validations" => v.clone(),
                        _ => to_json_schema(v),
                    };
                    (k.clone(), v)
                })
                .collect();
            if out.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
                out.remove("type");
            }
            if out.get("nullable") == Some(&Value::Bool(true)) {
                if let Some(Value::String(t)) = out.get("type").cloned() {
                    out.insert("type".into(), serde_json::json!([t, "null"]));
                }
                if let Some(Value::Array(e)) = out.get_mut("enum") {
                    e.push(Value::Null);
                }
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(to_json_schema).collect()),
        other => other.clone(),
    }
}

fn json_path(pointer: &str) -> String {
    pointer
        .trim_start_matches('/')
        .split('/')
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .enumerate()
        .fold(String::new(), |mut acc, (i, seg)| {
            if seg.parse::<usize>().is_ok() {
                acc.push_str(&format!("[{seg}]"));
            } else {
                if i > 0 {
                    acc.push('.');
                }
                acc.push_str(&seg);
            }
            acc
        })
}

impl Checks {
    /// Compile a CRD version's `openAPIV3Schema`.
    pub fn new(schema: &Value) -> Result<Checks, String> {
        let validator = jsonschema::validator_for(&to_json_schema(schema))
            .map_err(|e| format!("invalid openAPIV3Schema: {e}"))?;
        let cel = kube_cel::compile_schema(schema);
        let rules = RuleTree::of(&cel).unwrap_or_default();
        Ok(Checks {
            schema: schema.clone(),
            validator,
            cel: Arc::new(cel),
            rules,
        })
    }

    /// The schema.
    pub fn schema(&self) -> &Value {
        &self.schema
    }

    /// Drop fields the schema does not declare and fill in defaults, as the real server does
    /// before validating and storing.
    /// Returns the paths of the fields pruned (`spec.bogus`), for strict field validation.
    pub fn prune_and_default(&self, obj: &mut Value) -> Vec<String> {
        let mut pruned = Vec::new();
        prune(obj, &self.schema, true, "", &mut pruned);
        *obj = kube_cel::apply_defaults(&self.schema, obj);
        pruned
    }

    /// Every violation of the schema and of its CEL rules (`old` for transition rules).
    pub fn validate(&self, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
        let mut causes: Vec<Cause> = self
            .validator
            .iter_errors(obj)
            .map(|e| {
                let path = json_path(e.instance_path().as_str());
                let value = e.instance().to_string();
                Cause {
                    reason: "FieldValueInvalid".into(),
                    field: path.clone(),
                    message: format!("Invalid value: {value}: {e}"),
                }
            })
            .collect();
        let mut errors = Vec::new();
        self.rules.check(&self.cel, obj, old, "", &mut errors);
        causes.extend(errors.into_iter().map(|e| Cause {
            reason: e.reason.unwrap_or_else(|| "FieldValueInvalid".into()),
            field: e.field_path,
            message: format!("Invalid value: \"object\": {}", e.message),
        }));
        causes
    }
}

fn join(path: &str, k: &str) -> String {
    if path.is_empty() {
        k.to_string()
    } else {
        format!("{path}.{k}")
    }
}

fn prune(v: &mut Value, schema: &Value, root: bool, path: &str, pruned: &mut Vec<String>) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return;
    }
    match v {
        Value::Object(m) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            if props.is_none() && additional.is_none() {
                if schema.get("type").and_then(Value::as_str) == Some("object") && !root {
                    pruned.extend(m.keys().map(|k| join(path, k)));
                    m.clear();
                }
                return;
            }
            m.retain(|k, _| {
                let keep = (root && matches!(k.as_str(), "apiVersion" | "kind" | "metadata"))
                    || props.is_some_and(|p| p.contains_key(k))
                    || additional.is_some();
                if !keep {
                    pruned.push(join(path, k));
                }
                keep
            });
            for (k, child) in m.iter_mut() {
                if root && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                if let Some(s) = props.and_then(|p| p.get(k)).or(additional) {
                    prune(child, s, false, &join(path, k), pruned);
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune(item, s, false, &format!("{path}[{i}]"), pruned);
                }
            }
        }
        _ => {}
    }
}

/// The message of a 422 for `causes`, as the real server words it.
pub fn invalid_message(kind: &str, group: &str, name: &str, causes: &[Cause]) -> String {
    let what = if group.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}.{group}")
    };
    let parts: Vec<String> = causes
        .iter()
        .map(|c| {
            if c.field.is_empty() {
                c.message.clone()
            } else {
                format!("{}: {}", c.field, c.message)
            }
        })
        .collect();
    let body = if parts.len() == 1 {
        parts[0].clone()
    } else {
        format!("[{}]", parts.join(", "))
    };
    format!("{what} \"{name}\" is invalid: {body}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "spec": {"type": "object", "properties": {
                "driver": {"type": "string", "default": "bridge", "enum": ["bridge", "host"]},
                "mtu": {"type": "integer", "maximum": 9000, "nullable": true},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}}
            }, "x-kubernetes-validations": [{"rule": "self.driver == 'bridge' || !has(self.mtu)", "message": "mtu needs bridge"}]},
            "status": {"type": "object", "properties": {"n": {"type": "integer"}}}
        }})
    }

    #[test]
    fn prunes_defaults_and_validates() {
        let c = Checks::new(&schema()).expect("compiles");
        let mut obj = json!({"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "a", "zzz": 1},
            "spec": {"mtu": null, "unknown": 1, "free": {"any": 1}, "labels": {"a": "b"}}, "junk": true});
        let pruned = c.prune_and_default(&mut obj);
        assert_eq!(pruned, vec!["junk".to_string(), "spec.unknown".to_string()]);
        assert_eq!(
            obj,
            json!({"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "a", "zzz": 1},
                "spec": {"driver": "bridge", "mtu": null, "free": {"any": 1}, "labels": {"a": "b"}}})
        );
        assert!(
            c.validate(&obj, None).is_empty(),
            "{:?}",
            c.validate(&obj, None)
        );
        let bad = json!({"spec": {"driver": "host", "mtu": 9001}});
        let causes = c.validate(&bad, None);
        assert!(causes.iter().any(|c| c.field == "spec.mtu"), "{causes:?}");
        assert!(
            causes
                .iter()
                .any(|c| c.message.contains("mtu needs bridge")),
            "{causes:?}"
        );
        let msg = invalid_message("Network", "pier.dev", "x", &causes[..1]);
        assert!(
            msg.starts_with("Network.pier.dev \"x\" is invalid: spec.mtu: Invalid value: 9001"),
            "{msg}"
        );
    }

    fn ratchet_schema() -> Value {
        json!({"type": "object", "properties": {
            "metadata": {"type": "object"},
            "spec": {"type": "object", "properties": {
                "driver": {"type": "string"},
                "mtu": {"type": "integer"},
                "ports": {"type": "array", "items": {"type": "object", "properties": {
                    "port": {"type": "integer"}},
                    "x-kubernetes-validations": [{"rule": "self.port > 0", "message": "port must be positive"}]}},
                "labels": {"type": "object", "additionalProperties": {"type": "string",
                    "x-kubernetes-validations": [{"rule": "self != 'bad'", "message": "no bad labels"}]}}
            }, "x-kubernetes-validations": [
                {"rule": "self.driver == 'bridge' || !has(self.mtu)", "message": "mtu needs bridge", "fieldPath": ".mtu"}]},
            "lock": {"type": "object", "properties": {"locked": {"type": "boolean"}},
                "x-kubernetes-validations": [{"rule": "!has(oldSelf.locked) || !oldSelf.locked", "message": "locked"}]},
            "status": {"type": "object", "properties": {"n": {"type": "integer"}}}
        }})
    }

    fn messages(causes: &[Cause]) -> Vec<String> {
        causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect()
    }

    #[test]
    fn rules_report_paths_from_the_root_as_before() {
        let c = Checks::new(&ratchet_schema()).expect("compiles");
        let obj = json!({"metadata": {"name": "a"}, "spec": {"driver": "host", "mtu": 1500,
            "ports": [{"port": 1}, {"port": 0}], "labels": {"a": "ok", "b": "bad"}}});
        let mut found = messages(&c.validate(&obj, None));
        found.sort();
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found[0].starts_with("spec.labels.b: ") && found[0].contains("no bad labels"));
        assert!(found[1].starts_with("spec.mtu: ") && found[1].contains("mtu needs bridge"));
        assert!(
            found[2].starts_with("spec.ports[1]: ") && found[2].contains("port must be positive")
        );
    }

    #[test]
    fn unchanged_subtrees_are_ratcheted_but_transition_rules_still_run() {
        let c = Checks::new(&ratchet_schema()).expect("compiles");
        // Stored before its rule existed: an invalid spec, left as it is by a status write.
        let old = json!({"metadata": {"name": "a"}, "spec": {"driver": "host", "mtu": 1500,
            "ports": [{"port": 0}]}, "status": {"n": 1}});
        let mut status_write = old.clone();
        status_write["status"]["n"] = json!(2);
        assert!(c.validate(&status_write, Some(&old)).is_empty());
        // Changing one field of the subtree evaluates its rules again, unchanged parts too.
        let mut spec_write = old.clone();
        spec_write["spec"]["driver"] = json!("macvlan");
        let found = messages(&c.validate(&spec_write, Some(&old)));
        assert!(
            found.iter().any(|m| m.contains("mtu needs bridge")),
            "{found:?}"
        );
        // On create nothing is ratcheted.
        assert_eq!(c.validate(&old, None).len(), 2);
        // A transition rule runs on an unchanged value: locked stays locked.
        let locked =
            json!({"spec": {"driver": "bridge"}, "lock": {"locked": true}, "status": {"n": 1}});
        let mut touched = locked.clone();
        touched["status"]["n"] = json!(2);
        let found = messages(&c.validate(&touched, Some(&locked)));
        assert!(
            found
                .iter()
                .any(|m| m.starts_with("lock: ") && m.contains("locked")),
            "{found:?}"
        );
    }
}
