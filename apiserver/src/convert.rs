//! Conversion between the two forms of an Event: `events.k8s.io/v1` (what kube-rs's recorder
//! writes) and core `v1` (what `kubectl describe` reads). Both are served from one storage, in the
//! core form, as in Kubernetes.

use serde_json::{Map, Value};

/// (events.k8s.io/v1 field, core v1 field) pairs that differ only by name.
const RENAMES: [(&str, &str); 7] = [
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

fn rename(v: Value, forward: bool, api_version: &str) -> Value {
    let Value::Object(m) = v else { return v };
    let mut out = Map::new();
    for (k, val) in m {
        let key = RENAMES
            .iter()
            .find(|(a, b)| if forward { a == &k } else { b == &k })
            .map(|(a, b)| {
                if forward {
                    b.to_string()
                } else {
                    a.to_string()
                }
            })
            .unwrap_or(k);
        out.insert(key, val);
    }
    out.insert("apiVersion".into(), Value::String(api_version.into()));
    out.insert("kind".into(), Value::String("Event".into()));
    Value::Object(out)
}

/// events.k8s.io/v1 → core v1.
pub fn event_to_core(v: Value) -> Value {
    rename(v, true, "v1")
}

/// core v1 → events.k8s.io/v1.
pub fn event_from_core(v: Value) -> Value {
    rename(v, false, "events.k8s.io/v1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips() {
        let ev = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"},
            "regarding": {"kind": "Network", "name": "n"}, "note": "allocated", "reason": "Allocated",
            "reportingController": "pier-operator", "type": "Normal", "eventTime": "2026-01-01T00:00:00.000000Z"});
        let core = event_to_core(ev.clone());
        assert_eq!(core["apiVersion"], "v1");
        assert_eq!(core["involvedObject"]["name"], "n");
        assert_eq!(core["message"], "allocated");
        assert_eq!(core["reportingComponent"], "pier-operator");
        assert_eq!(event_from_core(core), ev);
    }
}
