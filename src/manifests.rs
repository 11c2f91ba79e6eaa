//! `pier up -f PATH`: apply manifests (a file or a folder) by server-side apply, as
//! `kubectl apply --server-side -f PATH` would.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use kube::api::{DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::discovery::{Discovery, Scope};
use kube::{Api, Client};
use serde::Deserialize;
use serde_json::Value;

/// The manifest files of `path`: itself, or the `.yaml`/`.yml`/`.json` files of a folder in name
/// order (not recursive, like `kubectl apply -f DIR`).
pub fn files(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("reading {}", path.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// The objects of one file (YAML documents; empty ones and `List`s' items handled).
pub fn objects(text: &str) -> anyhow::Result<Vec<Value>> {
    let mut objects = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let value = Value::deserialize(document).context("parsing YAML")?;
        match value {
            Value::Null => {}
            Value::Object(ref map) if map.get("kind").and_then(Value::as_str) == Some("List") => {
                if let Some(items) = map.get("items").and_then(Value::as_array) {
                    objects.extend(items.iter().cloned());
                }
            }
            Value::Object(_) => objects.push(value),
            other => bail!("a manifest must be an object, found {other}"),
        }
    }
    Ok(objects)
}

/// Applies every object under `path`; returns one `kind/name applied` line per object.
pub async fn apply_path(
    client: &Client,
    path: &Path,
    manager: &str,
) -> anyhow::Result<Vec<String>> {
    let discovery = Discovery::new(client.clone())
        .run()
        .await
        .context("discovering the API's resources")?;
    let mut applied = Vec::new();
    for file in files(path)? {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        for object in objects(&text).with_context(|| format!("in {}", file.display()))? {
            let line = apply_one(client, &discovery, object, manager)
                .await
                .with_context(|| format!("in {}", file.display()))?;
            applied.push(line);
        }
    }
    Ok(applied)
}

async fn apply_one(
    client: &Client,
    discovery: &Discovery,
    object: Value,
    manager: &str,
) -> anyhow::Result<String> {
    let text = |field: &str| {
        object
            .get(field)
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    let (api_version, kind) = (text("apiVersion"), text("kind"));
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .context("an object without metadata.name")?
        .to_owned();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let Some((resource, capabilities)) = discovery.resolve_gvk(&gvk) else {
        bail!("the API serves no {kind} in {api_version}");
    };
    let api: Api<DynamicObject> = if capabilities.scope == Scope::Namespaced {
        let namespace = object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default");
        Api::namespaced_with(client.clone(), namespace, &resource)
    } else {
        Api::all_with(client.clone(), &resource)
    };
    api.patch(
        &name,
        &PatchParams::apply(manager).force(),
        &Patch::Apply(&object),
    )
    .await
    .with_context(|| format!("applying {kind} {name}"))?;
    Ok(format!("{}/{name} applied", resource.plural))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_lists_and_empty_documents() {
        let text = "---\napiVersion: pier.dev/v1alpha1\nkind: Network\nmetadata: {name: a}\n---\n---\n\
                    apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Namespace, metadata: {name: b}}\n";
        let objects = objects(text).expect("parses");
        assert_eq!(objects.len(), 2);
        assert_eq!(objects[1]["metadata"]["name"], "b");
        assert!(super::objects("- just\n- a list\n").is_err());
    }
}
