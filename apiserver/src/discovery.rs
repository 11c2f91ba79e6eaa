//! Discovery documents: /version, /api, /api/v1, /apis, /apis/GROUP, /apis/GROUP/VERSION.

use serde_json::{Value, json};

use crate::resources::Registry;

/// `/version`.
pub fn version() -> Value {
    json!({
        "major": "1", "minor": "33", "gitVersion": "v1.33.0-pier", "gitCommit": "pier",
        "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64",
    })
}

/// `/api`.
pub fn core_versions() -> Value {
    json!({
        "kind": "APIVersions", "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
    })
}

fn group_doc(reg: &Registry, group: &str) -> Option<Value> {
    let versions = reg.versions(group)?;
    let preferred = reg.preferred(group)?;
    let gv = |v: &str| json!({"groupVersion": format!("{group}/{v}"), "version": v});
    Some(json!({
        "kind": "APIGroup", "apiVersion": "v1", "name": group,
        "versions": versions.keys().rev().map(|v| gv(v)).collect::<Vec<_>>(),
        "preferredVersion": gv(&preferred),
    }))
}

/// `/apis`.
pub fn groups(reg: &Registry) -> Value {
    let groups: Vec<Value> = reg
        .groups
        .keys()
        .filter(|g| !g.is_empty())
        .filter_map(|g| group_doc(reg, g))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/GROUP`.
pub fn group(reg: &Registry, group: &str) -> Option<Value> {
    if group.is_empty() {
        return None;
    }
    group_doc(reg, group)
}

/// `/api/v1` and `/apis/GROUP/VERSION`.
pub fn resources(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    let list = reg.versions(group)?.get(version)?;
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    let resources: Vec<Value> = list.iter().flat_map(|r| r.discovery()).collect();
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}
