//! Field sets for managed fields (FieldsV1), schema-aware (pure).
//!
//! A field set is a set of owned paths. A path is a list of FieldsV1 keys: `f:NAME` (an object
//! field), `k:{"type":"Ready"}` (an item of a list-type map, by its keys) and `v:"x"` (an item of
//! a list-type set). Lists without a list type are atomic and maps granular, as in Kubernetes.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

/// One owned path.
pub type Path = Vec<String>;
/// A set of owned paths.
pub type FieldSet = BTreeSet<Path>;

/// A (possibly absent) structural schema node.
#[derive(Debug, Clone, Copy)]
pub struct Schema<'a>(pub Option<&'a Value>);

fn metadata_schema() -> &'static Value {
    static META: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    META.get_or_init(|| {
        json!({"type": "object", "properties": {
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
            "finalizers": {"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "set"},
            "ownerReferences": {"type": "array", "items": {"type": "object"},
                "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["uid"]},
        }})
    })
}

/// The metadata fields that field management tracks.
pub const TRACKED_METADATA: [&str; 4] = ["labels", "annotations", "finalizers", "ownerReferences"];

impl<'a> Schema<'a> {
    pub fn child(self, field: &str) -> Schema<'a> {
        let Some(s) = self.0 else { return Schema(None) };
        if let Some(p) = s.get("properties").and_then(|p| p.get(field)) {
            return Schema(Some(p));
        }
        Schema(s.get("additionalProperties").filter(|a| a.is_object()))
    }

    pub fn items(self) -> Schema<'a> {
        Schema(self.0.and_then(|s| s.get("items")))
    }

    /// `map`, `set` or `atomic`.
    pub fn list_type(self) -> &'a str {
        self.0
            .and_then(|s| s.get("x-kubernetes-list-type"))
            .and_then(Value::as_str)
            .unwrap_or("atomic")
    }

    pub fn map_keys(self) -> Vec<&'a str> {
        self.0
            .and_then(|s| s.get("x-kubernetes-list-map-keys"))
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    }

    pub fn atomic_map(self) -> bool {
        self.0
            .and_then(|s| s.get("x-kubernetes-map-type"))
            .and_then(Value::as_str)
            == Some("atomic")
    }
}

/// The schema for a top-level field, with metadata's fixed shape.
pub fn top_schema<'a>(root: Schema<'a>, field: &str) -> Schema<'a> {
    if field == "metadata" {
        Schema(Some(metadata_schema()))
    } else {
        root.child(field)
    }
}

/// The `k:` key of a list-map item.
pub fn item_key(item: &Value, keys: &[&str]) -> String {
    let mut m = Map::new();
    let mut sorted: Vec<&str> = keys.to_vec();
    sorted.sort_unstable();
    for k in sorted {
        if let Some(v) = item.get(k) {
            m.insert(k.to_string(), v.clone());
        }
    }
    format!("k:{}", Value::Object(m))
}

/// Every path `obj` sets, as owned by whoever applied it.
pub fn fields_of(obj: &Value, root: Schema<'_>) -> FieldSet {
    let mut out = FieldSet::new();
    let Some(map) = obj.as_object() else {
        return out;
    };
    for (k, v) in map {
        match k.as_str() {
            "apiVersion" | "kind" => {}
            "metadata" => {
                let meta = top_schema(root, "metadata");
                if let Some(m) = v.as_object() {
                    for f in TRACKED_METADATA {
                        if let Some(fv) = m.get(f) {
                            walk_value(
                                fv,
                                meta.child(f),
                                vec!["f:metadata".into(), format!("f:{f}")],
                                &mut out,
                            );
                        }
                    }
                }
            }
            _ => walk_value(v, root.child(k), vec![format!("f:{k}")], &mut out),
        }
    }
    out
}

fn walk_value(v: &Value, schema: Schema<'_>, path: Path, out: &mut FieldSet) {
    match v {
        Value::Object(m) if !m.is_empty() && !schema.atomic_map() => {
            for (k, cv) in m {
                let mut p = path.clone();
                p.push(format!("f:{k}"));
                walk_value(cv, schema.child(k), p, out);
            }
        }
        Value::Array(items) if schema.list_type() == "map" => {
            let keys = schema.map_keys();
            for item in items {
                let mut p = path.clone();
                p.push(item_key(item, &keys));
                out.insert(p.clone());
                if let Some(m) = item.as_object() {
                    for (k, cv) in m {
                        let mut cp = p.clone();
                        cp.push(format!("f:{k}"));
                        walk_value(cv, schema.items().child(k), cp, out);
                    }
                }
            }
        }
        Value::Array(items) if schema.list_type() == "set" => {
            for item in items {
                let mut p = path.clone();
                p.push(format!("v:{item}"));
                out.insert(p);
            }
        }
        _ => {
            out.insert(path);
        }
    }
}

fn parse_key(k: &str) -> Option<(char, &str)> {
    let (kind, rest) = k.split_at_checked(2)?;
    let c = kind.chars().next()?;
    Some((c, rest))
}

fn item_matches(item: &Value, key: &Map<String, Value>) -> bool {
    key.iter().all(|(k, v)| item.get(k) == Some(v))
}

/// The value at a path, if present.
pub fn get<'v>(obj: &'v Value, path: &[String]) -> Option<&'v Value> {
    let mut cur = obj;
    for seg in path {
        let (kind, rest) = parse_key(seg)?;
        cur = match kind {
            'f' => cur.get(rest)?,
            'k' => {
                let key: Map<String, Value> = serde_json::from_str(rest).ok()?;
                cur.as_array()?.iter().find(|i| item_matches(i, &key))?
            }
            'v' => {
                let want: Value = serde_json::from_str(rest).ok()?;
                cur.as_array()?.iter().find(|i| **i == want)?
            }
            _ => return None,
        };
    }
    Some(cur)
}

/// Remove the value at a path (a field, a list-map item or a set item).
pub fn remove(obj: &mut Value, path: &[String]) {
    let Some((last, parent)) = path.split_last() else {
        return;
    };
    let mut cur = obj;
    for seg in parent {
        let Some((kind, rest)) = parse_key(seg) else {
            return;
        };
        let next = match kind {
            'f' => cur.get_mut(rest),
            'k' => {
                let Ok(key) = serde_json::from_str::<Map<String, Value>>(rest) else {
                    return;
                };
                cur.as_array_mut()
                    .and_then(|a| a.iter_mut().find(|i| item_matches(i, &key)))
            }
            _ => None,
        };
        let Some(next) = next else { return };
        cur = next;
    }
    let Some((kind, rest)) = parse_key(last) else {
        return;
    };
    match kind {
        'f' => {
            if let Some(m) = cur.as_object_mut() {
                m.remove(rest);
            }
        }
        'k' => {
            if let (Ok(key), Some(a)) = (
                serde_json::from_str::<Map<String, Value>>(rest),
                cur.as_array_mut(),
            ) {
                a.retain(|i| !item_matches(i, &key));
            }
        }
        'v' => {
            if let (Ok(want), Some(a)) = (serde_json::from_str::<Value>(rest), cur.as_array_mut()) {
                a.retain(|i| *i != want);
            }
        }
        _ => {}
    }
}

/// Encode as FieldsV1 JSON.
pub fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in set {
        insert_path(&mut root, path);
    }
    // Nodes that got children after being marked owned need "." too: fix up in a second pass.
    let mut value = Value::Object(root);
    mark_owned(&mut value, set, &mut Vec::new());
    value
}

fn insert_path(map: &mut Map<String, Value>, path: &[String]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let entry = map
        .entry(first.clone())
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(next) = entry {
        insert_path(next, rest);
    }
}

fn mark_owned(v: &mut Value, set: &FieldSet, path: &mut Path) {
    let Value::Object(m) = v else { return };
    let keys: Vec<String> = m.keys().filter(|k| *k != ".").cloned().collect();
    if !path.is_empty() && set.contains(path.as_slice()) && !keys.is_empty() {
        m.insert(".".into(), json!({}));
    }
    for k in keys {
        if let Some(child) = m.get_mut(&k) {
            path.push(k);
            mark_owned(child, set, path);
            path.pop();
        }
    }
}

/// Decode FieldsV1 JSON.
pub fn from_fields_v1(v: &Value) -> FieldSet {
    let mut out = FieldSet::new();
    collect(v, &mut Vec::new(), &mut out);
    out
}

fn collect(v: &Value, path: &mut Path, out: &mut FieldSet) {
    let Some(m) = v.as_object() else { return };
    if (m.is_empty() || m.contains_key(".")) && !path.is_empty() {
        out.insert(path.clone());
    }
    for (k, child) in m {
        if k == "." {
            continue;
        }
        path.push(k.clone());
        collect(child, path, out);
        path.pop();
    }
}

/// Human form of a path, as in conflict messages: `.spec.ports[containerPort=80]`.
pub fn display(path: &[String]) -> String {
    let mut s = String::new();
    for seg in path {
        match parse_key(seg) {
            Some(('f', name)) => {
                s.push('.');
                s.push_str(name);
            }
            Some(('k', key)) => {
                let inner = serde_json::from_str::<Map<String, Value>>(key)
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_else(|_| key.to_string());
                s.push_str(&format!("[{inner}]"));
            }
            Some(('v', val)) => s.push_str(&format!("[={val}]")),
            _ => s.push_str(seg),
        }
    }
    s
}

/// Keep only the paths that exist in `obj`.
pub fn retain_existing(set: &mut FieldSet, obj: &Value) {
    set.retain(|p| get(obj, p).is_some());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conditions_schema() -> Value {
        json!({"type": "object", "properties": {
            "spec": {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"}}}},
            "status": {"type": "object", "properties": {"conditions": {
                "type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"],
                "items": {"type": "object", "properties": {"type": {"type": "string"}, "status": {"type": "string"}}}
            }}}
        }})
    }

    #[test]
    fn fields_of_follows_list_types() {
        let schema = conditions_schema();
        let obj = json!({
            "apiVersion": "x/v1", "kind": "K",
            "metadata": {"name": "n", "labels": {"a": "b"}, "finalizers": ["f1"]},
            "spec": {"tags": ["x", "y"], "m": {}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}
        });
        let set = fields_of(&obj, Schema(Some(&schema)));
        let fv1 = to_fields_v1(&set);
        assert_eq!(
            fv1,
            json!({
                "f:metadata": {"f:labels": {"f:a": {}}, "f:finalizers": {"v:\"f1\"": {}}},
                "f:spec": {"f:tags": {}, "f:m": {}},
                "f:status": {"f:conditions": {"k:{\"type\":\"Ready\"}": {".": {}, "f:type": {}, "f:status": {}}}}
            })
        );
        assert_eq!(from_fields_v1(&fv1), set);
    }

    #[test]
    fn get_remove_and_display() {
        let mut obj = json!({"status": {"conditions": [{"type": "A"}, {"type": "B", "status": "x"}]},
            "metadata": {"finalizers": ["a", "b"]}});
        let p: Path = vec![
            "f:status".into(),
            "f:conditions".into(),
            "k:{\"type\":\"B\"}".into(),
            "f:status".into(),
        ];
        assert_eq!(get(&obj, &p), Some(&json!("x")));
        assert_eq!(display(&p), ".status.conditions[type=\"B\"].status");
        remove(&mut obj, &p[..3]);
        assert_eq!(obj["status"]["conditions"], json!([{"type": "A"}]));
        remove(
            &mut obj,
            &["f:metadata".into(), "f:finalizers".into(), "v:\"a\"".into()],
        );
        assert_eq!(obj["metadata"]["finalizers"], json!(["b"]));
    }
}
