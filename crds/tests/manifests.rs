//! The committed CRD manifests are what the code generates, decode strictly, and are structural
//! (what a real API server demands before it serves a CRD).
//!
//! After changing the types, regenerate the committed copies with
//! `PIER_UPDATE_CRDS=1 cargo test -p pier-crds --test manifests`.

use std::path::{Path, PathBuf};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use pier_crds::manifests::{all_crds, crd_yaml};
use serde_json::Value;

/// Where the committed copies live, relative to the workspace root.
const COMMITTED_DIRS: [&str; 2] = ["crds", "charts/pier/crds"];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crds/ has a parent")
        .to_path_buf()
}

#[test]
fn committed_manifests_match_the_generated_ones() {
    let update = std::env::var_os("PIER_UPDATE_CRDS").is_some();
    let mut stale = Vec::new();
    for dir in COMMITTED_DIRS {
        let dir = workspace_root().join(dir);
        for (file, crd) in all_crds() {
            let generated = crd_yaml(&crd).expect("renders");
            let path = dir.join(file);
            if update {
                std::fs::create_dir_all(&dir).expect("creates the manifest folder");
                std::fs::write(&path, &generated).expect("writes the manifest");
                continue;
            }
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            if committed != generated {
                stale.push(path.display().to_string());
            }
        }
    }
    assert!(
        stale.is_empty(),
        "these committed CRDs differ from the generated ones: {stale:?}\n\
         regenerate with: PIER_UPDATE_CRDS=1 cargo test -p pier-crds --test manifests"
    );
}

fn committed_documents() -> Vec<(PathBuf, Value)> {
    let mut documents = Vec::new();
    for dir in COMMITTED_DIRS {
        for (file, _) in all_crds() {
            let path = workspace_root().join(dir).join(file);
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            let value: Value = serde_yaml::from_str(&text)
                .unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()));
            documents.push((path, value));
        }
    }
    documents
}

/// k8s-openapi's decoders skip unknown fields, so strictness is checked by a round trip: decoding
/// and encoding again must give back every field of the file. A misspelt or unknown field is lost
/// on the way and fails the comparison, as `kubectl apply --validate=strict` would fail.
#[test]
fn committed_manifests_decode_strictly_into_crds() {
    for (path, value) in committed_documents() {
        let crd: CustomResourceDefinition = serde_json::from_value(value.clone())
            .unwrap_or_else(|e| panic!("{} is not a CRD: {e}", path.display()));
        let again = serde_json::to_value(&crd).expect("encodes");
        assert_eq!(
            again,
            value,
            "{} has fields k8s-openapi does not know",
            path.display()
        );
        assert_eq!(crd.spec.group, pier_crds::GROUP);
        assert_eq!(crd.spec.versions.len(), 1);
        assert_eq!(crd.spec.versions[0].name, pier_crds::VERSION);
        let names = &crd.spec.names;
        assert_eq!(
            names.categories.as_deref(),
            Some(&[pier_crds::CATEGORY.to_owned()][..]),
            "{}",
            path.display()
        );
        let short = names.short_names.clone().unwrap_or_default();
        let expected = match names.kind.as_str() {
            "Network" => "pnet",
            "Endpoint" => "pep",
            "PortPublish" => "ppub",
            other => panic!("unexpected kind {other}"),
        };
        assert_eq!(short, vec![expected.to_owned()]);
    }
}

#[test]
fn committed_schemas_are_structural() {
    for (path, value) in committed_documents() {
        let schema = &value["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        assert!(schema.is_object(), "{} has no schema", path.display());
        let mut problems = Vec::new();
        check_structural(schema, "openAPIV3Schema", false, &mut problems);
        assert!(
            problems.is_empty(),
            "{} is not structural:\n{}",
            path.display(),
            problems.join("\n")
        );
    }
}

/// The rules of a structural schema (Kubernetes docs, "Specifying a structural schema"): every node
/// has a type (unless it is int-or-string or preserves unknown fields), `additionalProperties` never
/// stands beside `properties`, and the value-validation branches (`allOf`, `anyOf`, `oneOf`, `not`)
/// carry no `type`, `description`, `default`, `additionalProperties` or `nullable`.
fn check_structural(node: &Value, at: &str, in_junctor: bool, problems: &mut Vec<String>) {
    let Some(object) = node.as_object() else {
        problems.push(format!("{at}: not an object"));
        return;
    };
    let typed = object.contains_key("type")
        || object.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true))
        || object.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if in_junctor {
        for forbidden in [
            "type",
            "description",
            "default",
            "additionalProperties",
            "nullable",
        ] {
            if object.contains_key(forbidden) {
                problems.push(format!("{at}: `{forbidden}` inside a junctor"));
            }
        }
    } else if !typed {
        problems.push(format!("{at}: no type"));
    }
    if object.contains_key("properties") && object.contains_key("additionalProperties") {
        problems.push(format!("{at}: additionalProperties beside properties"));
    }
    for key in ["$ref", "definitions", "$defs", "$schema"] {
        if object.contains_key(key) {
            problems.push(format!("{at}: `{key}` is not allowed in a CRD schema"));
        }
    }
    if let Some(properties) = object.get("properties").and_then(Value::as_object) {
        for (name, child) in properties {
            check_structural(child, &format!("{at}.{name}"), in_junctor, problems);
        }
    }
    if let Some(items) = object.get("items") {
        check_structural(items, &format!("{at}[]"), in_junctor, problems);
    }
    if let Some(additional) = object.get("additionalProperties")
        && additional.is_object()
    {
        check_structural(additional, &format!("{at}{{}}"), in_junctor, problems);
    }
    for junctor in ["allOf", "anyOf", "oneOf"] {
        if let Some(branches) = object.get(junctor).and_then(Value::as_array) {
            for (i, branch) in branches.iter().enumerate() {
                check_structural(branch, &format!("{at}.{junctor}[{i}]"), true, problems);
            }
        }
    }
    if let Some(not) = object.get("not") {
        check_structural(not, &format!("{at}.not"), true, problems);
    }
}

/// The checker itself must catch what it claims to, or the test above proves nothing.
#[test]
fn structural_checker_catches_violations() {
    let bad = serde_json::json!({
        "type": "object",
        "properties": {
            "untyped": {"description": "no type"},
            "both": {"type": "object", "properties": {"a": {"type": "string"}},
                     "additionalProperties": {"type": "string"}},
            "junctor": {"type": "string", "anyOf": [{"type": "string"}]}
        }
    });
    let mut problems = Vec::new();
    check_structural(&bad, "root", false, &mut problems);
    assert_eq!(problems.len(), 3, "{problems:?}");
}
