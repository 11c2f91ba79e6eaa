//! Patches: JSON merge patch, JSON patch, strategic merge patch for built-ins ([`strategic`])
//! and server-side apply (see [`apply`]).

pub mod apply;
pub mod fields;
pub mod strategic;

use serde_json::Value;

use crate::error::ApiError;

/// The patch formats, by content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    Merge,
    Json,
    Strategic,
    Apply,
}

impl PatchKind {
    /// From the request's Content-Type.
    pub fn from_content_type(ct: &str) -> Result<PatchKind, ApiError> {
        let ct = ct.split(';').next().unwrap_or_default().trim();
        match ct {
            "application/merge-patch+json" => Ok(PatchKind::Merge),
            "application/json-patch+json" => Ok(PatchKind::Json),
            "application/strategic-merge-patch+json" => Ok(PatchKind::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Ok(PatchKind::Apply),
            other => Err(ApiError::UnsupportedMediaType(format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml; got {other:?}"
            ))),
        }
    }
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Default::default());
            }
            if let Some(t) = target.as_object_mut() {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// RFC 6902 JSON patch.
pub fn json_patch(target: &mut Value, patch: &[u8]) -> Result<(), ApiError> {
    let ops: Vec<Value> = serde_json::from_slice(patch)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON patch: {e}")))?;
    // As in Kubernetes, `test` of a missing path against null succeeds (kube-rs's finalizer
    // helper relies on it).
    let ops: Vec<Value> = ops
        .into_iter()
        .filter(|op| {
            let is_null_test = op.get("op").and_then(Value::as_str) == Some("test")
                && op.get("value").is_none_or(Value::is_null);
            let missing = op
                .get("path")
                .and_then(Value::as_str)
                .is_some_and(|p| target.pointer(p).is_none());
            !(is_null_test && missing)
        })
        .collect();
    let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops))
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON patch: {e}")))?;
    json_patch::patch(target, &patch).map_err(|e| ApiError::Invalid {
        group: String::new(),
        kind: String::new(),
        name: String::new(),
        message: format!("the JSON patch could not be applied: {e}"),
        causes: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc7386() {
        let mut t = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        merge_patch(&mut t, &json!({"a": "z", "c": {"f": null}, "l": [3]}));
        assert_eq!(t, json!({"a": "z", "c": {"d": "e"}, "l": [3]}));
        let mut s = json!("x");
        merge_patch(&mut s, &json!({"k": 1}));
        assert_eq!(s, json!({"k": 1}));
    }

    #[test]
    fn json_patch_ops() {
        let mut t = json!({"spec": {"a": 1, "l": [1]}});
        json_patch(
            &mut t,
            br#"[{"op":"replace","path":"/spec/a","value":2},{"op":"add","path":"/spec/l/-","value":5},{"op":"test","path":"/spec/a","value":2}]"#,
        )
        .expect("applies");
        assert_eq!(t, json!({"spec": {"a": 2, "l": [1, 5]}}));
        assert!(json_patch(&mut t, br#"[{"op":"test","path":"/spec/a","value":9}]"#).is_err());
        assert!(json_patch(&mut t, b"{}").is_err());
        json_patch(
            &mut t,
            br#"[{"op":"test","path":"/metadata/finalizers","value":null},{"op":"add","path":"/metadata","value":{}}]"#,
        )
        .expect("a null test of a missing path passes");
    }

    #[test]
    fn content_types() {
        assert_eq!(
            PatchKind::from_content_type("application/apply-patch+yaml; charset=utf-8")
                .expect("known"),
            PatchKind::Apply
        );
        assert!(PatchKind::from_content_type("text/plain").is_err());
    }
}
