//! `Table` responses for `kubectl get` (meta.k8s.io/v1), with a CRD's additionalPrinterColumns.

use serde_json::{Value, json};

use crate::resources::{Column, Resource};

/// Whether the client asked for a Table.
pub fn wants_table(accept: &str) -> bool {
    accept.split(',').any(|a| {
        let a = a.replace(' ', "");
        a.contains("as=Table") && a.contains("g=meta.k8s.io")
    })
}

fn columns(res: &Resource) -> Vec<Column> {
    let mut cols = vec![Column {
        name: "Name".into(),
        type_: "string".into(),
        format: "name".into(),
        description: "Name must be unique within a namespace.".into(),
        priority: 0,
        json_path: ".metadata.name".into(),
    }];
    if res.columns.is_empty() {
        cols.push(Column {
            name: "Age".into(),
            type_: "date".into(),
            format: String::new(),
            description: "CreationTimestamp is a timestamp representing the server time when this object was created.".into(),
            priority: 0,
            json_path: ".metadata.creationTimestamp".into(),
        });
    } else {
        cols.extend(res.columns.iter().cloned());
    }
    cols
}

/// Evaluate the JSONPath subset printer columns use: `.a.b`, `[n]`, `[*]`, `[?(@.k=="v")]`.
pub fn eval(obj: &Value, path: &str) -> Vec<Value> {
    let path = path.trim().trim_start_matches('{').trim_end_matches('}');
    let path = path.strip_prefix('$').unwrap_or(path);
    let mut cur = vec![obj.clone()];
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let (field, after) = r.split_at(end);
            if !field.is_empty() {
                cur = cur.iter().filter_map(|v| v.get(field).cloned()).collect();
            }
            rest = after;
        } else if let Some(r) = rest.strip_prefix('[') {
            let Some(end) = r.find(']') else {
                return Vec::new();
            };
            let (inner, after) = (&r[..end], &r[end + 1..]);
            rest = after;
            let items: Vec<Value> = cur
                .iter()
                .flat_map(|v| v.as_array().cloned().unwrap_or_default())
                .collect();
            if inner == "*" {
                cur = items;
            } else if let Ok(i) = inner.parse::<usize>() {
                cur = cur
                    .iter()
                    .filter_map(|v| v.as_array().and_then(|a| a.get(i)).cloned())
                    .collect();
            } else if let Some(expr) = inner.strip_prefix("?(@.").and_then(|e| e.strip_suffix(')'))
            {
                let Some((field, value)) = expr.split_once("==") else {
                    return Vec::new();
                };
                let want = value.trim().trim_matches(|c| c == '"' || c == '\'');
                cur = items
                    .into_iter()
                    .filter(|it| {
                        it.pointer(&format!("/{}", field.trim().replace('.', "/")))
                            .is_some_and(|v| {
                                v.as_str().map(String::from).unwrap_or(v.to_string()) == want
                            })
                    })
                    .collect();
            } else {
                return Vec::new();
            }
        } else {
            return Vec::new();
        }
    }
    cur
}

/// A human duration as kubectl prints ages: 45s, 5m, 3h, 2d.
pub fn human_age(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..120 => format!("{s}s"),
        120..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

fn cell(obj: &Value, col: &Column) -> Value {
    // Built-in columns may name alternatives: `.lastTimestamp|.eventTime`.
    let found = col
        .json_path
        .split('|')
        .map(|p| eval(obj, p))
        .find(|v| v.iter().any(|x| !x.is_null()))
        .unwrap_or_default();
    let Some(v) = found.into_iter().next() else {
        return Value::Null;
    };
    match col.type_.as_str() {
        "date" => match v.as_str().and_then(|s| s.parse::<jiff::Timestamp>().ok()) {
            Some(t) => json!(human_age(
                jiff::Timestamp::now().as_second() - t.as_second()
            )),
            None => v,
        },
        "string" => match v {
            Value::String(_) => v,
            Value::Null => Value::Null,
            other => json!(other.to_string()),
        },
        _ => v,
    }
}

/// The Table for objects (a list, or one object), `include`: `None`, `Object` or metadata only.
pub fn table(
    res: &Resource,
    objects: &[&Value],
    rv: &str,
    cont: Option<&str>,
    include: &str,
) -> Value {
    let cols = columns(res);
    let defs: Vec<Value> = cols
        .iter()
        .map(|c| {
            json!({"name": c.name, "type": c.type_, "format": c.format,
                "description": c.description, "priority": c.priority})
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let cells: Vec<Value> = cols.iter().map(|c| cell(o, c)).collect();
            let object = match include {
                "None" => Value::Null,
                "Object" => (*o).clone(),
                _ => json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                    "metadata": o.get("metadata").cloned().unwrap_or(json!({}))}),
            };
            json!({"cells": cells, "object": object})
        })
        .collect();
    let mut meta = json!({"resourceVersion": rv});
    if let Some(c) = cont {
        meta["continue"] = json!(c);
    }
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta,
        "columnDefinitions": defs, "rows": rows})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonpath_subset() {
        let o = json!({"spec": {"driver": "bridge"}, "status": {"conditions": [
            {"type": "Attached", "status": "False"}, {"type": "Ready", "status": "True"}]}});
        assert_eq!(eval(&o, ".spec.driver"), vec![json!("bridge")]);
        assert_eq!(
            eval(&o, r#".status.conditions[?(@.type=="Ready")].status"#),
            vec![json!("True")]
        );
        assert_eq!(
            eval(&o, ".status.conditions[0].type"),
            vec![json!("Attached")]
        );
        assert_eq!(eval(&o, ".status.conditions[*].type").len(), 2);
        assert!(eval(&o, ".spec.missing").is_empty());
    }

    #[test]
    fn ages() {
        assert_eq!(human_age(5), "5s");
        assert_eq!(human_age(300), "5m");
        assert_eq!(human_age(7200), "2h");
        assert_eq!(human_age(3 * 86400), "3d");
    }

    #[test]
    fn accept_header() {
        assert!(wants_table(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
        ));
        assert!(!wants_table("application/json"));
    }
}
