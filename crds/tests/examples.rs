//! Every manifest under `examples/` is a Pier object the API server would accept: each YAML
//! document decodes into its typed kind without losing a field (a misspelt field would be dropped
//! silently by `kubectl apply`), passes the CRD's schema and CEL rules, and the folders can be
//! applied together (no object, namespace or fixed host port is used by two of them).
//! The Kubernetes workloads of `examples/pods/` (Pods, Deployments) decode the same way into
//! their k8s-openapi types, and what they ask of Pier is checked against that folder's Network.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::CustomResourceExt;
use pier_crds::pod::{
    ATTACHED_CONDITION, NETWORKS_ANNOTATION, PodNetwork, endpoint_name, parse_networks,
};
use pier_crds::{Endpoint, Network, PortPublish};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crds/ has a parent")
        .join("examples")
}

/// Every `.yaml`/`.yml` file under `dir`, recursively, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("reading a directory entry").path();
        if path.is_dir() {
            files.extend(yaml_files(&path));
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// One non-empty YAML document of an example file, as JSON.
#[derive(Debug)]
struct Document {
    file: PathBuf,
    index: usize,
    value: Value,
}

impl Document {
    fn at(&self) -> String {
        format!("{} (document {})", self.file.display(), self.index + 1)
    }

    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or_default()
    }

    fn api_version(&self) -> &str {
        self.value["apiVersion"].as_str().unwrap_or_default()
    }

    fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or_default()
    }

    /// The example folder (`01-published-webserver`, ...) the file is in.
    fn folder(&self) -> String {
        self.file
            .strip_prefix(examples_dir())
            .ok()
            .and_then(|p| p.components().next())
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

fn documents() -> Vec<Document> {
    let mut documents = Vec::new();
    for file in yaml_files(&examples_dir()) {
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
        for (index, document) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let value = Value::deserialize(document)
                .unwrap_or_else(|e| panic!("{} document {}: {e}", file.display(), index + 1));
            // `---` at the end or comments only.
            if !value.is_null() {
                documents.push(Document {
                    file: file.clone(),
                    index,
                    value,
                });
            }
        }
    }
    documents
}

/// The fields of `original` that `decoded` lacks or has with another value (`decoded` may have
/// more: the defaults the type fills in).
fn lost_fields(original: &Value, decoded: &Value, at: &str, lost: &mut Vec<String>) {
    match (original, decoded) {
        (Value::Object(fields), Value::Object(kept)) => {
            for (key, value) in fields {
                match kept.get(key) {
                    Some(again) => lost_fields(value, again, &format!("{at}.{key}"), lost),
                    None => lost.push(format!("{at}.{key}")),
                }
            }
        }
        (Value::Array(items), Value::Array(kept)) if items.len() == kept.len() => {
            for (i, (item, again)) in items.iter().zip(kept).enumerate() {
                lost_fields(item, again, &format!("{at}[{i}]"), lost);
            }
        }
        _ if original == decoded => {}
        _ => lost.push(format!("{at} ({original} became {decoded})")),
    }
}

/// Decodes into `K` and requires every field to survive the round trip.
fn decode<K>(document: &Document) -> K
where
    K: DeserializeOwned + serde::Serialize,
{
    let at = document.at();
    let object: K = serde_json::from_value(document.value.clone())
        .unwrap_or_else(|e| panic!("{at} does not decode as {}: {e}", document.kind()));
    let again = serde_json::to_value(&object).expect("encodes");
    let mut lost = Vec::new();
    lost_fields(&document.value, &again, "", &mut lost);
    assert!(lost.is_empty(), "{at}: unknown or changed fields {lost:?}");
    object
}

/// Decodes into `K`, requires every field to survive, and checks the CRD's schema and rules.
fn check<K>(document: &Document) -> K
where
    K: DeserializeOwned + serde::Serialize + CustomResourceExt,
{
    let at = document.at();
    let object: K = decode(document);

    let crd = K::crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("every Pier CRD has a schema");
    let schema = serde_json::to_value(schema).expect("schema encodes");
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    let mut errors: Vec<String> = validator
        .iter_errors(&document.value)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    if let Err(cel) = kube_cel::validate(&schema, &document.value, None) {
        errors.extend(cel.into_vec().into_iter().map(|e| e.to_string()));
    }
    assert!(
        errors.is_empty(),
        "{at} is rejected by the CRD: {errors:#?}"
    );
    object
}

#[test]
fn every_example_manifest_is_a_valid_pier_object() {
    let documents = documents();
    assert!(
        documents.len() >= 10,
        "expected the lesson's examples, found {} documents",
        documents.len()
    );
    for document in &documents {
        let at = document.at();
        assert!(!document.name().is_empty(), "{at}: no metadata.name");
        match (document.api_version(), document.kind()) {
            ("pier.dev/v1alpha1", "Network") => {
                check::<Network>(document);
            }
            ("pier.dev/v1alpha1", "Endpoint") => {
                check::<Endpoint>(document);
            }
            ("pier.dev/v1alpha1", "PortPublish") => {
                check::<PortPublish>(document);
            }
            // Workloads attached by annotation: decoded strictly here, their annotation, gate and
            // DNS checked in `the_pods_example_attaches_by_annotation_and_resolves_through_pier`.
            ("v1", "Pod") | ("apps/v1", "Deployment") if document.folder() == PODS => {
                workload(document);
            }
            (api_version, kind) => {
                panic!("{at}: {api_version} {kind} is not a Pier kind (or a workload in {PODS}/)")
            }
        }
    }
}

/// The folder whose manifests are Kubernetes workloads attached by annotation.
const PODS: &str = "pods";

/// A Pod or a Deployment decoded strictly: where it is (for messages), its Pod's metadata and spec.
fn workload(document: &Document) -> (String, ObjectMeta, PodSpec) {
    let at = document.at();
    let (metadata, spec) = match document.kind() {
        "Pod" => {
            let pod: Pod = decode(document);
            (pod.metadata, pod.spec)
        }
        "Deployment" => {
            let deployment: Deployment = decode(document);
            let template = deployment
                .spec
                .map(|spec| spec.template)
                .unwrap_or_default();
            (template.metadata.unwrap_or_default(), template.spec)
        }
        other => panic!("{at}: {other} is not a workload"),
    };
    let spec = spec.unwrap_or_else(|| panic!("{at}: no Pod spec"));
    (at, metadata, spec)
}

#[test]
fn every_lesson_step_has_manifests_and_a_readme() {
    let root = examples_dir();
    assert!(root.join("README.md").is_file(), "examples/README.md");
    let mut steps = 0;
    for entry in std::fs::read_dir(&root).expect("reading examples/") {
        let path = entry.expect("reading a directory entry").path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !path.is_dir() || !name.starts_with(|c: char| c.is_ascii_digit()) {
            continue;
        }
        steps += 1;
        assert!(path.join("README.md").is_file(), "{name} has no README.md");
        assert!(!yaml_files(&path).is_empty(), "{name} has no manifests");
    }
    assert!(
        steps >= 5,
        "expected the lesson's five steps, found {steps}"
    );
}

/// Applying every folder at once must work: no two folders define the same object, attach the
/// same named namespace or publish the same fixed host port.
#[test]
fn example_folders_can_be_applied_together() {
    let documents = documents();
    let mut objects: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut namespaces: BTreeMap<String, String> = BTreeMap::new();
    let mut host_ports: BTreeMap<(String, i32), String> = BTreeMap::new();
    for document in &documents {
        let folder = document.folder();
        let at = document.at();
        let key = (document.kind().to_owned(), document.name().to_owned());
        if let Some(other) = objects.insert(key.clone(), at.clone()) {
            panic!("{key:?} is defined twice: {other} and {at}");
        }
        match document.kind() {
            "Endpoint" => {
                let endpoint: Endpoint = check(document);
                if let Some(netns) = endpoint.spec.target.netns {
                    // One folder may attach a namespace twice (`network connect`); two may not.
                    let owner = namespaces
                        .entry(netns.name.clone())
                        .or_insert(folder.clone());
                    assert_eq!(
                        *owner, folder,
                        "netns {} is used by {owner} and by {at}",
                        netns.name
                    );
                }
            }
            "PortPublish" => {
                let publish: PortPublish = check(document);
                for port in publish.spec.ports {
                    let Some(host_port) = port.host_port else {
                        continue;
                    };
                    let key = (format!("{:?}", port.protocol), host_port);
                    if let Some(other) = host_ports.insert(key, at.clone()) {
                        panic!("host port {host_port} is published by {other} and {at}");
                    }
                }
            }
            _ => {}
        }
    }
}

/// `examples/pods/`: every workload joins the folder's Networks through a readable
/// `pier.dev/networks` annotation whose entries make valid Endpoints, waits for them through the
/// readiness gate, and asks Pier's DNS on the gateway of the first network it joins; a
/// Deployment of two or more replicas shares an alias (`web`, like a Compose service).
#[test]
fn the_pods_example_attaches_by_annotation_and_resolves_through_pier() {
    let documents: Vec<Document> = documents()
        .into_iter()
        .filter(|d| d.folder() == PODS)
        .collect();
    let networks: BTreeMap<String, Network> = documents
        .iter()
        .filter(|d| d.kind() == "Network")
        .map(|d| (d.name().to_owned(), check::<Network>(d)))
        .collect();
    let kinds: Vec<&str> = documents.iter().map(Document::kind).collect();
    assert!(
        ["Network", "Deployment", "Pod"]
            .iter()
            .all(|kind| kinds.contains(kind)),
        "{PODS}/ shows a Network, a Deployment and a client Pod; found {kinds:?}"
    );
    let mut shared_alias = false;
    for document in documents.iter().filter(|d| d.kind() != "Network") {
        let (at, metadata, spec) = workload(document);
        let entries = annotated_networks(&at, &metadata, &networks);
        for entry in &entries {
            check::<Endpoint>(&endpoint_of(document, entry));
        }
        let gates = spec.readiness_gates.unwrap_or_default();
        assert!(
            gates.iter().any(|g| g.condition_type == ATTACHED_CONDITION),
            "{at}: no readiness gate {ATTACHED_CONDITION}"
        );
        let first = &networks[&entries[0].network];
        let gateway = first.spec.gateway.clone().expect("checked above");
        let dns = spec.dns_config.unwrap_or_default();
        assert_eq!(spec.dns_policy.as_deref(), Some("None"), "{at}: dnsPolicy");
        assert_eq!(dns.nameservers, Some(vec![gateway]), "{at}: nameservers");
        let searches = dns.searches.unwrap_or_default();
        assert_eq!(
            searches.first(),
            Some(&entries[0].network),
            "{at}: the network's name is the first search"
        );
        let replicas = document.value["spec"]["replicas"].as_i64().unwrap_or(1);
        shared_alias |= replicas >= 2 && entries.iter().any(|e| e.aliases.is_some());
    }
    assert!(
        shared_alias,
        "{PODS}/ shows a Deployment of replicas sharing an alias"
    );
}

/// The workload's annotation, read as the operator reads it; every network it names is a
/// Network of the folder with a fixed subnet and gateway (the Pods name the gateway).
fn annotated_networks(
    at: &str,
    metadata: &ObjectMeta,
    networks: &BTreeMap<String, Network>,
) -> Vec<PodNetwork> {
    let annotation = metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(NETWORKS_ANNOTATION))
        .unwrap_or_else(|| panic!("{at}: no {NETWORKS_ANNOTATION} annotation"));
    let entries = parse_networks(annotation).unwrap_or_else(|e| panic!("{at}: {e}"));
    assert!(!entries.is_empty(), "{at}: the annotation names no network");
    for entry in &entries {
        let network = networks.get(&entry.network).unwrap_or_else(|| {
            panic!(
                "{at}: network {:?} is not defined in {PODS}/",
                entry.network
            )
        });
        assert!(
            network.spec.subnet.is_some() && network.spec.gateway.is_some(),
            "{at}: network {} needs a fixed subnet and gateway",
            entry.network
        );
    }
    entries
}

/// The Endpoint the operator makes for one entry of a workload's annotation (the contract's
/// spec), as a document for [`check`].
fn endpoint_of(workload: &Document, entry: &PodNetwork) -> Document {
    let pod = workload.name();
    let mut spec = serde_json::to_value(entry).expect("encodes");
    spec["target"] = serde_json::json!({"pod": {"name": pod}});
    Document {
        file: workload.file.clone(),
        index: workload.index,
        value: serde_json::json!({
            "apiVersion": "pier.dev/v1alpha1",
            "kind": "Endpoint",
            "metadata": {"name": endpoint_name(pod, &entry.network)},
            "spec": spec,
        }),
    }
}
