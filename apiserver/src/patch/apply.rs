//! Server-side apply and managed fields (pure).

use serde_json::{Map, Value, json};

use super::fields::{self, FieldSet, Schema};

/// One `metadata.managedFields` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    pub api_version: String,
    pub time: String,
    /// `""` or `status`.
    pub subresource: String,
    pub fields: FieldSet,
}

/// Which part of the object a write may touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Everything (no status subresource).
    All,
    /// Everything but `.status` (main resource with a status subresource).
    ExceptStatus,
    /// Only `.status` (the status subresource).
    OnlyStatus,
}

impl Scope {
    fn allows(self, path: &[String]) -> bool {
        let is_status = path.first().is_some_and(|s| s == "f:status");
        match self {
            Scope::All => true,
            Scope::ExceptStatus => !is_status,
            Scope::OnlyStatus => is_status,
        }
    }
}

/// Who writes and how.
#[derive(Debug, Clone, Copy)]
pub struct Writer<'a> {
    pub manager: &'a str,
    pub api_version: &'a str,
    pub subresource: &'a str,
    pub now: &'a str,
    pub scope: Scope,
    pub schema: Schema<'a>,
}

/// A conflict with another manager's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub manager: String,
    pub api_version: String,
    pub field: String,
}

/// The conflicts of an apply, worded as the real server does.
/// Equal values, numbers compared by value as Kubernetes' structured merge diff does (an
/// applier's `65535.0`, from YAML parsed into floats, is the stored `65535`).
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_value(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_value(v, w)))
        }
        _ => a == b,
    }
}

pub fn conflict_message(conflicts: &[Conflict]) -> String {
    let n = conflicts.len();
    if n == 1 {
        let c = &conflicts[0];
        return format!(
            "Apply failed with 1 conflict: conflict with \"{}\" using {}: {}",
            c.manager, c.api_version, c.field
        );
    }
    let mut s = format!("Apply failed with {n} conflicts: ");
    let lines: Vec<String> = conflicts
        .iter()
        .map(|c| {
            format!(
                "conflict with \"{}\" using {}: {}",
                c.manager, c.api_version, c.field
            )
        })
        .collect();
    s.push_str(&lines.join("\n"));
    s
}

/// Read `metadata.managedFields`.
pub fn read_managed(obj: &Value) -> Vec<Entry> {
    let Some(list) = obj
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    let s = |e: &Value, k: &str| {
        e.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    list.iter()
        .map(|e| Entry {
            manager: s(e, "manager"),
            operation: s(e, "operation"),
            api_version: s(e, "apiVersion"),
            time: s(e, "time"),
            subresource: s(e, "subresource"),
            fields: e
                .get("fieldsV1")
                .map(fields::from_fields_v1)
                .unwrap_or_default(),
        })
        .collect()
}

/// Write `metadata.managedFields` (entries without fields are dropped).
pub fn write_managed(obj: &mut Value, entries: &[Entry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut m = Map::new();
            m.insert("manager".into(), json!(e.manager));
            m.insert("operation".into(), json!(e.operation));
            m.insert("apiVersion".into(), json!(e.api_version));
            m.insert("time".into(), json!(e.time));
            m.insert("fieldsType".into(), json!("FieldsV1"));
            m.insert("fieldsV1".into(), fields::to_fields_v1(&e.fields));
            if !e.subresource.is_empty() {
                m.insert("subresource".into(), json!(e.subresource));
            }
            Value::Object(m)
        })
        .collect();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if list.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(list));
        }
    }
}

fn is_value_path(path: &[String]) -> bool {
    path.last().is_some_and(|s| s.starts_with("f:"))
}

fn owned_by_other(entries: &[Entry], me: Option<usize>, path: &[String]) -> bool {
    entries
        .iter()
        .enumerate()
        .any(|(i, e)| Some(i) != me && e.fields.iter().any(|p| p.starts_with(path)))
}

/// Merge an applied configuration into a live value, schema-aware.
pub fn merge(live: &mut Value, applied: &Value, schema: Schema<'_>) {
    match (live.as_object_mut(), applied) {
        (Some(l), Value::Object(a)) if !schema.atomic_map() => {
            for (k, v) in a {
                if v.is_null() {
                    l.remove(k);
                    continue;
                }
                match l.get_mut(k) {
                    Some(lv) => merge(lv, v, schema.child(k)),
                    None => {
                        l.insert(k.clone(), v.clone());
                    }
                }
            }
            return;
        }
        _ => {}
    }
    match (live.as_array_mut(), applied) {
        (Some(l), Value::Array(a)) if schema.list_type() == "map" => {
            let keys = schema.map_keys();
            for item in a {
                let key = fields::item_key(item, &keys);
                match l.iter_mut().find(|i| fields::item_key(i, &keys) == key) {
                    Some(li) => merge(li, item, schema.items()),
                    None => l.push(item.clone()),
                }
            }
        }
        (Some(l), Value::Array(a)) if schema.list_type() == "set" => {
            for item in a {
                if !l.contains(item) {
                    l.push(item.clone());
                }
            }
        }
        _ => *live = applied.clone(),
    }
}

fn scoped(obj: &Value, scope: Scope) -> Value {
    let mut out = Map::new();
    if let Some(m) = obj.as_object() {
        for (k, v) in m {
            let allowed = match (scope, k.as_str()) {
                (_, "apiVersion" | "kind") => false,
                (Scope::OnlyStatus, "status") => true,
                (Scope::OnlyStatus, _) => false,
                (Scope::ExceptStatus, "status") => false,
                _ => true,
            };
            if !allowed {
                continue;
            }
            if k == "metadata" {
                let mut meta = Map::new();
                if let Some(mm) = v.as_object() {
                    for f in fields::TRACKED_METADATA {
                        if let Some(fv) = mm.get(f) {
                            meta.insert(f.to_string(), fv.clone());
                        }
                    }
                }
                out.insert(k.clone(), Value::Object(meta));
            } else {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    Value::Object(out)
}

/// Server-side apply `applied` by `w` onto `live` (which carries the managed fields). Returns the
/// new object, or the conflicts when not forced.
pub fn apply(
    live: &Value,
    applied: &Value,
    w: &Writer<'_>,
    force: bool,
) -> Result<Value, Vec<Conflict>> {
    let mut entries = read_managed(live);
    let applied = scoped(applied, w.scope);
    let new_set: FieldSet = fields::fields_of(&applied, w.schema)
        .into_iter()
        .filter(|p| w.scope.allows(p))
        .collect();
    let me = entries.iter().position(|e| {
        e.manager == w.manager && e.operation == "Apply" && e.subresource == w.subresource
    });

    let mut conflicts = Vec::new();
    let mut forced: Vec<(usize, fields::Path)> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if Some(i) == me || (e.manager == w.manager && e.subresource == w.subresource) {
            continue;
        }
        for p in e.fields.intersection(&new_set) {
            if !is_value_path(p) {
                continue;
            }
            let (Some(lv), Some(av)) = (fields::get(live, p), fields::get(&applied, p)) else {
                continue;
            };
            if !same_value(lv, av) {
                conflicts.push(Conflict {
                    manager: e.manager.clone(),
                    api_version: e.api_version.clone(),
                    field: fields::display(p),
                });
                forced.push((i, p.clone()));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflicts);
    }
    for (i, p) in forced {
        if let Some(e) = entries.get_mut(i) {
            e.fields.remove(&p);
        }
    }

    let mut out = live.clone();
    // Fields this manager applied before and no longer does are removed, unless someone else
    // owns them too.
    if let Some(me) = me {
        let dropped: Vec<fields::Path> = entries[me].fields.difference(&new_set).cloned().collect();
        let mut removed: Vec<&fields::Path> = Vec::new();
        for p in &dropped {
            if removed.iter().any(|r| p.starts_with(r)) {
                continue;
            }
            if !owned_by_other(&entries, Some(me), p) && !new_set.iter().any(|n| n.starts_with(p)) {
                fields::remove(&mut out, p);
                removed.push(p);
            }
        }
    }
    merge(&mut out, &applied, w.schema);
    let entry = Entry {
        manager: w.manager.to_string(),
        operation: "Apply".into(),
        api_version: w.api_version.to_string(),
        time: w.now.to_string(),
        subresource: w.subresource.to_string(),
        fields: new_set,
    };
    match me {
        Some(i) => entries[i] = entry,
        None => entries.push(entry),
    }
    for e in &mut entries {
        fields::retain_existing(&mut e.fields, &out);
    }
    write_managed(&mut out, &entries);
    Ok(out)
}

/// Record a non-apply write (create, update, merge or JSON patch) by `w`: the fields it changed
/// become its own (operation `Update`) and leave every other manager. The entries it starts
/// from are the ones the client sent, as kube-apiserver does (so they can be edited), or the
/// object's when it sent none (a body built afresh, as `kubectl replace -f` sends, keeps them).
pub fn track_update(old: Option<&Value>, new: &mut Value, w: &Writer<'_>) {
    let sent = read_managed(new);
    let mut entries = if sent.is_empty() {
        old.map(read_managed).unwrap_or_default()
    } else {
        sent
    };
    let changed: FieldSet = fields::fields_of(new, w.schema)
        .into_iter()
        .filter(|p| w.scope.allows(p))
        .filter(|p| old.and_then(|o| fields::get(o, p)) != fields::get(new, p))
        .collect();
    if !changed.is_empty() {
        for e in &mut entries {
            e.fields
                .retain(|p| !changed.contains(p) || !is_value_path(p));
        }
        let pos = entries.iter().position(|e| {
            e.manager == w.manager && e.operation == "Update" && e.subresource == w.subresource
        });
        match pos {
            Some(i) => {
                entries[i].fields.extend(changed);
                entries[i].time = w.now.to_string();
            }
            None => entries.push(Entry {
                manager: w.manager.to_string(),
                operation: "Update".into(),
                api_version: w.api_version.to_string(),
                time: w.now.to_string(),
                subresource: w.subresource.to_string(),
                fields: changed,
            }),
        }
    }
    for e in &mut entries {
        fields::retain_existing(&mut e.fields, new);
    }
    write_managed(new, &entries);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "spec": {"type": "object"},
            "status": {"type": "object", "properties": {"conditions": {
                "type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"],
                "items": {"type": "object"}
            }}}
        }})
    }

    fn writer<'a>(manager: &'a str, scope: Scope, schema: &'a Value) -> Writer<'a> {
        Writer {
            manager,
            api_version: "pier.dev/v1alpha1",
            subresource: if scope == Scope::OnlyStatus {
                "status"
            } else {
                ""
            },
            now: "2026-01-01T00:00:00Z",
            scope,
            schema: Schema(Some(schema)),
        }
    }

    fn base() -> Value {
        json!({"apiVersion": "pier.dev/v1alpha1", "kind": "Network", "metadata": {"name": "n"}})
    }

    #[test]
    fn numbers_are_the_same_value_however_written() {
        assert!(same_value(&json!({"m": [65535]}), &json!({"m": [65535.0]})));
        assert!(!same_value(&json!({"m": 1}), &json!({"m": 1.5})));
        assert!(!same_value(&json!({"m": 1}), &json!({"m": "1"})));
    }

    #[test]
    fn apply_owns_conflicts_forces_and_removes_dropped_fields() {
        let s = schema();
        let a = writer("alice", Scope::ExceptStatus, &s);
        let b = writer("bob", Scope::ExceptStatus, &s);
        let o1 = apply(
            &base(),
            &json!({"metadata": {"labels": {"x": "1"}}, "spec": {"mtu": 1500, "dns": true}}),
            &a,
            false,
        )
        .expect("first apply");
        assert_eq!(o1["spec"], json!({"mtu": 1500, "dns": true}));
        let mf = &o1["metadata"]["managedFields"][0];
        assert_eq!(mf["manager"], "alice");
        assert_eq!(mf["operation"], "Apply");
        assert_eq!(
            mf["fieldsV1"],
            json!({"f:metadata": {"f:labels": {"f:x": {}}}, "f:spec": {"f:mtu": {}, "f:dns": {}}})
        );
        // Same value: shared ownership, no conflict.
        let o2 = apply(&o1, &json!({"spec": {"mtu": 1500}}), &b, false).expect("shared");
        // Different value: conflict naming alice and the field.
        let err = apply(&o2, &json!({"spec": {"dns": false}}), &b, false).expect_err("conflict");
        assert_eq!(
            conflict_message(&err),
            "Apply failed with 1 conflict: conflict with \"alice\" using pier.dev/v1alpha1: .spec.dns"
        );
        let o3 =
            apply(&o2, &json!({"spec": {"mtu": 1500, "dns": false}}), &b, true).expect("forced");
        assert_eq!(o3["spec"]["dns"], false);
        let alice = read_managed(&o3)
            .into_iter()
            .find(|e| e.manager == "alice")
            .expect("alice stays");
        assert!(
            !alice
                .fields
                .contains(&vec!["f:spec".to_string(), "f:dns".to_string()])
        );
        // alice stops applying mtu: bob applied mtu too, so it stays; the label goes.
        let o4 = apply(&o3, &json!({"spec": {}}), &a, false).expect("drop");
        assert_eq!(o4["spec"]["mtu"], 1500);
        assert!(
            o4["metadata"]
                .get("labels")
                .is_none_or(|l| l.get("x").is_none())
        );
        // bob stops applying mtu too: removed.
        let o5 = apply(&o4, &json!({"spec": {"dns": false}}), &b, false).expect("drop mtu");
        assert!(o5["spec"].get("mtu").is_none());
    }

    #[test]
    fn status_conditions_are_shared_by_key() {
        let s = schema();
        let op = writer("pier-operator", Scope::OnlyStatus, &s);
        let node = writer("pier-node", Scope::OnlyStatus, &s);
        let live =
            json!({"apiVersion": "v", "kind": "K", "metadata": {"name": "n"}, "spec": {"a": 1}});
        let o1 = apply(
            &live,
            &json!({"spec": {"a": 2}, "status": {"subnet": "10.0.0.0/24", "conditions": [{"type": "Ready", "status": "True"}]}}),
            &op,
            false,
        )
        .expect("operator");
        assert_eq!(o1["spec"]["a"], 1, "spec is ignored on /status");
        let o2 = apply(
            &o1,
            &json!({"status": {"conditions": [{"type": "Attached", "status": "True"}]}}),
            &node,
            false,
        )
        .expect("node");
        assert_eq!(o2["status"]["conditions"].as_array().map(Vec::len), Some(2));
        let err = apply(
            &o2,
            &json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
            &node,
            false,
        )
        .expect_err("Ready belongs to the operator");
        assert_eq!(err[0].field, ".status.conditions[type=\"Ready\"].status");
        // The operator drops Ready: it is removed, Attached stays.
        let o3 = apply(
            &o2,
            &json!({"status": {"subnet": "10.0.0.0/24"}}),
            &op,
            false,
        )
        .expect("drop Ready");
        assert_eq!(
            o3["status"]["conditions"],
            json!([{"type": "Attached", "status": "True"}])
        );
    }

    #[test]
    fn pod_conditions_of_two_managers_stay_apart() {
        let pod = crate::structure::builtin("", "Pod").expect("Pods have a structure");
        let status_writer = |manager| Writer {
            api_version: "v1",
            ..writer(manager, Scope::OnlyStatus, pod)
        };
        let (kubelet, operator) = (status_writer("kubelet"), status_writer("pier-operator"));
        let condition = |type_: &str, status: &str| json!({"type": type_, "status": status});
        let conditions = |obj: &Value| obj["status"]["conditions"].clone();
        let live = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
            "spec": {"readinessGates": [{"conditionType": "pier.dev/attached"}]}});
        let ready = json!({"status": {"conditions": [condition("Ready", "False")]}});
        let o1 = apply(&live, &ready, &kubelet, false).expect("kubelet");
        let attaching =
            json!({"status": {"conditions": [condition("pier.dev/attached", "False")]}});
        let o2 = apply(&o1, &attaching, &operator, false).expect("operator");
        assert_eq!(
            conditions(&o2),
            json!([
                condition("Ready", "False"),
                condition("pier.dev/attached", "False")
            ]),
            "an apply of one condition keeps the other manager's"
        );
        let attached = json!({"status": {"conditions": [condition("pier.dev/attached", "True")]}});
        let o3 = apply(&o2, &attached, &operator, false).expect("no conflict: its own entry");
        assert_eq!(
            conditions(&o3),
            json!([
                condition("Ready", "False"),
                condition("pier.dev/attached", "True")
            ]),
            "re-applying one condition updates only it"
        );
        let now_ready = json!({"status": {"conditions": [condition("Ready", "True")]}});
        let o4 = apply(&o3, &now_ready, &kubelet, false).expect("kubelet again");
        assert_eq!(
            conditions(&o4),
            json!([
                condition("Ready", "True"),
                condition("pier.dev/attached", "True")
            ])
        );
        let err = apply(&o4, &ready, &operator, false).expect_err("Ready is the kubelet's");
        assert_eq!(err[0].field, ".status.conditions[type=\"Ready\"].status");
    }

    #[test]
    fn updates_take_ownership_of_changed_fields() {
        let s = schema();
        let a = writer("alice", Scope::ExceptStatus, &s);
        let o1 = apply(&base(), &json!({"spec": {"mtu": 1500}}), &a, false).expect("apply");
        let mut o2 = o1.clone();
        o2["spec"]["mtu"] = json!(9000);
        track_update(
            Some(&o1),
            &mut o2,
            &writer("kubectl-edit", Scope::ExceptStatus, &s),
        );
        let entries = read_managed(&o2);
        assert_eq!(entries.len(), 1, "alice lost her only field: {entries:?}");
        assert_eq!(entries[0].manager, "kubectl-edit");
        assert_eq!(entries[0].operation, "Update");
        let err = apply(&o2, &json!({"spec": {"mtu": 1500}}), &a, false).expect_err("conflict");
        assert_eq!(err[0].manager, "kubectl-edit");
    }
}
