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

/// One YAML document of a file: its 1-based index and its objects, or why it is unusable.
#[derive(Debug)]
pub struct Document {
    pub index: usize,
    pub objects: anyhow::Result<Vec<Value>>,
}

/// The documents of one file (empty ones skipped, `List`s' items flattened). A YAML syntax
/// error ends the file: the parser cannot find the next document after it.
pub fn documents(text: &str) -> Vec<Document> {
    let mut documents = Vec::new();
    for (n, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let index = n + 1;
        match Value::deserialize(document) {
            Ok(value) => documents.push(Document {
                index,
                objects: document_objects(value),
            }),
            Err(error) => {
                documents.push(Document {
                    index,
                    objects: Err(anyhow::Error::new(error).context("parsing YAML")),
                });
                break;
            }
        }
    }
    documents
}

fn document_objects(value: Value) -> anyhow::Result<Vec<Value>> {
    match value {
        Value::Null => Ok(Vec::new()),
        Value::Object(ref map) if map.get("kind").and_then(Value::as_str) == Some("List") => {
            Ok(map
                .get("items")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default())
        }
        Value::Object(_) => Ok(vec![value]),
        other => bail!("a manifest must be an object, found {other}"),
    }
}

/// What `pier up -f` did: one line per applied object, one per failure (file, document,
/// reason). A failure does not stop the others, as with `kubectl apply -f`.
#[derive(Debug, Default)]
pub struct Outcome {
    pub applied: Vec<String>,
    pub failed: Vec<String>,
}

/// Applies every object under `path`, going on past the ones that fail.
pub async fn apply_path(client: &Client, path: &Path, manager: &str) -> Outcome {
    let mut outcome = Outcome::default();
    let discovery = match Discovery::new(client.clone()).run().await {
        Ok(discovery) => discovery,
        Err(error) => {
            let error = anyhow::Error::new(error).context("discovering the API's resources");
            outcome
                .failed
                .push(format!("{}: {error:#}", path.display()));
            return outcome;
        }
    };
    let files = match files(path) {
        Ok(files) => files,
        Err(error) => {
            outcome.failed.push(format!("{error:#}"));
            return outcome;
        }
    };
    for file in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(error) => {
                outcome.failed.push(format!("{}: {error}", file.display()));
                continue;
            }
        };
        for document in documents(&text) {
            let failed = |error: &anyhow::Error| {
                format!("{}: document {}: {error:#}", file.display(), document.index)
            };
            let objects = match &document.objects {
                Ok(objects) => objects,
                Err(error) => {
                    outcome.failed.push(failed(error));
                    continue;
                }
            };
            for object in objects {
                match apply_one(client, &discovery, object.clone(), manager).await {
                    Ok(line) => outcome.applied.push(line),
                    Err(error) => outcome.failed.push(failed(&error)),
                }
            }
        }
    }
    outcome
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
        let documents = documents(text);
        let objects: Vec<Value> = documents
            .into_iter()
            .flat_map(|d| d.objects.expect("parses"))
            .collect();
        assert_eq!(objects.len(), 2);
        assert_eq!(objects[1]["metadata"]["name"], "b");
    }

    #[test]
    fn a_bad_document_is_reported_with_its_index_and_the_others_kept() {
        let text = "{kind: Network, metadata: {name: a}}\n---\n- just\n- a list\n---\n\
                    {kind: Network, metadata: {name: c}}\n---\nkey: [unclosed\n";
        let documents = documents(text);
        let indexes: Vec<(usize, bool)> = documents
            .iter()
            .map(|d| (d.index, d.objects.is_ok()))
            .collect();
        assert_eq!(indexes, [(1, true), (2, false), (3, true), (4, false)]);
        let reason = format!("{:#}", documents[1].objects.as_ref().expect_err("a list"));
        assert!(reason.contains("must be an object"), "{reason}");
    }
}
