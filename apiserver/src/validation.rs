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
        Ok(Checks {
            schema: schema.clone(),
            validator,
            cel: Arc::new(cel),
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
        if let Err(errs) = kube_cel::validate_compiled(&self.cel, obj, old) {
            for e in errs.into_vec() {
                let field = e.field_path.clone();
                causes.push(Cause {
                    reason: e
                        .reason
                        .clone()
                        .unwrap_or_else(|| "FieldValueInvalid".into()),
                    field,
                    message: format!("Invalid value: \"object\": {}", e.message),
                });
            }
        }
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
}
