//! The resources served: built-in ones and those of the stored CustomResourceDefinitions.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::validation::Checks;

/// One additional printer column.
#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub type_: String,
    pub format: String,
    pub description: String,
    pub priority: i64,
    pub json_path: String,
}

/// One served group/version/resource.
#[derive(Debug, Clone)]
pub struct Resource {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub list_kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub status_subresource: bool,
    /// A custom resource (from a CRD).
    pub custom: bool,
    pub checks: Option<Arc<Checks>>,
    /// A built-in's list types for server-side apply ([`crate::structure`]); CRDs use `checks`.
    pub builtin_structure: Option<&'static Value>,
    pub columns: Vec<Column>,
    /// Field selector fields beyond metadata.name/namespace (`spec.network`).
    pub selectable: Vec<String>,
    /// Objects of all versions of a resource share one storage key.
    pub storage_key: String,
    /// Stored in another form (events.k8s.io/v1 Events are stored as core v1 Events).
    pub events_form: bool,
    /// A review ([`crate::reviews`]): create-only, answered and never stored.
    pub review: bool,
    /// A built-in kind decoded into its k8s-openapi type on every write.
    pub typed: Option<crate::builtin_kinds::Kind>,
    /// `metadata.generation` counts spec changes, and a create's `status` is dropped when the
    /// kind has a status subresource (custom resources, Deployments, ...).
    pub generation: bool,
}

impl Resource {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The schema (custom resources only).
    pub fn schema(&self) -> Option<&Value> {
        self.checks.as_deref().map(Checks::schema)
    }

    /// The structure field management follows: the CRD schema, or a built-in's list types.
    pub fn apply_schema(&self) -> Option<&Value> {
        self.schema().or(self.builtin_structure)
    }

    /// Fields usable in field selectors.
    pub fn selectable_fields(&self) -> Vec<String> {
        let mut f = vec![
            "metadata.name".to_string(),
            "metadata.namespace".to_string(),
        ];
        f.extend(self.selectable.iter().cloned());
        f
    }

    /// The APIResource entry of discovery.
    pub fn discovery(&self) -> Vec<Value> {
        let mut main = json!({
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": if self.review {
                json!(["create"])
            } else {
                json!(["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"])
            },
        });
        if !self.short_names.is_empty() {
            main["shortNames"] = json!(self.short_names);
        }
        if !self.categories.is_empty() {
            main["categories"] = json!(self.categories);
        }
        let mut out = vec![main];
        if self.status_subresource {
            out.push(json!({
                "name": format!("{}/status", self.plural),
                "singularName": "",
                "namespaced": self.namespaced,
                "kind": self.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        out
    }
}

#[allow(clippy::too_many_arguments)]
fn builtin(
    group: &str,
    version: &str,
    plural: &str,
    kind: &str,
    namespaced: bool,
    short: &[&str],
    status: bool,
) -> Resource {
    Resource {
        group: group.into(),
        version: version.into(),
        plural: plural.into(),
        singular: kind.to_lowercase(),
        kind: kind.into(),
        list_kind: format!("{kind}List"),
        namespaced,
        short_names: short.iter().map(|s| s.to_string()).collect(),
        categories: Vec::new(),
        status_subresource: status,
        custom: false,
        checks: None,
        builtin_structure: crate::structure::builtin(group, kind),
        columns: Vec::new(),
        selectable: Vec::new(),
        storage_key: format!("{group}/{plural}"),
        events_form: false,
        review: false,
        typed: None,
        generation: false,
    }
}

fn column(name: &str, type_: &str, json_path: &str, priority: i64) -> Column {
    Column {
        name: name.into(),
        type_: type_.into(),
        format: String::new(),
        description: String::new(),
        priority,
        json_path: json_path.into(),
    }
}

/// The built-in resources.
pub fn builtins() -> Vec<Resource> {
    let mut events_v1 = builtin("", "v1", "events", "Event", true, &["ev"], false);
    events_v1.selectable = vec![
        "involvedObject.kind".into(),
        "involvedObject.name".into(),
        "involvedObject.namespace".into(),
        "involvedObject.uid".into(),
        "reason".into(),
        "type".into(),
    ];
    events_v1.columns = vec![
        column("Last Seen", "date", ".lastTimestamp|.eventTime", 0),
        column("Type", "string", ".type", 0),
        column("Reason", "string", ".reason", 0),
        column("Object", "string", ".involvedObject.name", 0),
        column("Message", "string", ".message", 0),
    ];
    let mut events = builtin(
        "events.k8s.io",
        "v1",
        "events",
        "Event",
        true,
        &["ev"],
        false,
    );
    // One storage for both forms, as in Kubernetes: `kubectl describe` reads core events, the
    // kube-rs recorder writes events.k8s.io ones.
    events.storage_key = "/events".into();
    events.events_form = true;
    events.selectable = vec![
        "regarding.kind".into(),
        "regarding.name".into(),
        "regarding.namespace".into(),
        "regarding.uid".into(),
        "reason".into(),
        "type".into(),
        "reportingController".into(),
    ];
    let mut pods = builtin("", "v1", "pods", "Pod", true, &["po"], true);
    pods.selectable = vec!["spec.nodeName".into(), "status.phase".into()];
    let mut crds = builtin(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        false,
        &["crd", "crds"],
        true,
    );
    crds.categories = vec!["api-extensions".into()];
    crds.columns = vec![column(
        "Created At",
        "string",
        ".metadata.creationTimestamp",
        0,
    )];
    let age = || column("Age", "date", ".metadata.creationTimestamp", 0);
    let mut namespaces = builtin("", "v1", "namespaces", "Namespace", false, &["ns"], true);
    namespaces.columns = vec![column("Status", "string", ".status.phase", 0), age()];
    let mut nodes = builtin("", "v1", "nodes", "Node", false, &["no"], true);
    nodes.columns = vec![
        column(
            "Ready",
            "string",
            r#".status.conditions[?(@.type=="Ready")].status"#,
            0,
        ),
        age(),
        column("Version", "string", ".status.nodeInfo.kubeletVersion", 0),
        column(
            "Internal-IP",
            "string",
            r#".status.addresses[?(@.type=="InternalIP")].address"#,
            1,
        ),
    ];
    let mut leases = builtin(
        "coordination.k8s.io",
        "v1",
        "leases",
        "Lease",
        true,
        &[],
        false,
    );
    leases.columns = vec![column("Holder", "string", ".spec.holderIdentity", 0), age()];
    let mut all = vec![namespaces, nodes, pods, events_v1, events, leases, crds];
    all.extend(crate::builtin_kinds::kinds().into_iter().map(stored_kind));
    all.extend(crate::reviews::KINDS.iter().map(|(plural, kind)| Resource {
        review: true,
        ..builtin(crate::reviews::GROUP, "v1", plural, kind, false, &[], false)
    }));
    all
}

/// A built-in kind that is only stored ([`crate::builtin_kinds`]), with kubectl's columns.
fn stored_kind(kind: crate::builtin_kinds::Kind) -> Resource {
    let mut r = builtin(
        kind.group,
        "v1",
        kind.plural,
        kind.kind,
        kind.namespaced,
        kind.short_names,
        kind.status,
    );
    // Services have no generation in Kubernetes; the workload kinds and policies do.
    r.generation = kind.status && kind.kind != "Service";
    r.columns = stored_kind_columns(kind.kind);
    if matches!(
        kind.kind,
        "Service" | "Deployment" | "DaemonSet" | "ReplicaSet" | "StatefulSet"
    ) {
        // `kubectl get all`, as in Kubernetes.
        r.categories = vec!["all".into()];
    }
    r.typed = Some(kind);
    r
}

/// kube-apiserver's columns for `kubectl get` of the stored kinds. The workloads' status
/// columns stay empty: no controller here counts replicas.
fn stored_kind_columns(kind: &str) -> Vec<Column> {
    let age = || column("Age", "date", ".metadata.creationTimestamp", 0);
    match kind {
        "Secret" => vec![column("Type", "string", ".type", 0), age()],
        "Service" => vec![
            column("Type", "string", ".spec.type", 0),
            column("Cluster-IP", "string", ".spec.clusterIP", 0),
            column("Port(s)", "string", ".spec.ports[*].port", 0),
            age(),
            column("Selector", "string", ".spec.selector", 1),
        ],
        "Deployment" => vec![
            column("Replicas", "integer", ".spec.replicas", 0),
            column("Ready", "integer", ".status.readyReplicas", 0),
            column("Up-to-date", "integer", ".status.updatedReplicas", 0),
            column("Available", "integer", ".status.availableReplicas", 0),
            age(),
        ],
        "DaemonSet" => vec![
            column("Desired", "integer", ".status.desiredNumberScheduled", 0),
            column("Ready", "integer", ".status.numberReady", 0),
            column(
                "Node Selector",
                "string",
                ".spec.template.spec.nodeSelector",
                0,
            ),
            age(),
        ],
        "PodDisruptionBudget" => vec![
            column("Min Available", "string", ".spec.minAvailable", 0),
            column("Max Unavailable", "string", ".spec.maxUnavailable", 0),
            column(
                "Allowed Disruptions",
                "integer",
                ".status.disruptionsAllowed",
                0,
            ),
            age(),
        ],
        "RoleBinding" | "ClusterRoleBinding" => {
            vec![column("Role", "string", ".roleRef.name", 0), age()]
        }
        _ => Vec::new(),
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// The resources a stored CRD object defines (one per served version).
pub fn from_crd(crd: &Value) -> Result<Vec<Resource>, String> {
    let spec = crd.get("spec").ok_or("a CRD needs a spec")?;
    let s = |v: &Value, k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let group = s(spec, "group");
    let names = spec.get("names").ok_or("a CRD needs spec.names")?;
    let plural = s(names, "plural");
    let kind = s(names, "kind");
    if group.is_empty() || plural.is_empty() || kind.is_empty() {
        return Err("a CRD needs spec.group, spec.names.plural and spec.names.kind".into());
    }
    let singular = Some(s(names, "singular"))
        .filter(|x| !x.is_empty())
        .unwrap_or_else(|| kind.to_lowercase());
    let list_kind = Some(s(names, "listKind"))
        .filter(|x| !x.is_empty())
        .unwrap_or_else(|| format!("{kind}List"));
    let namespaced = s(spec, "scope") != "Cluster";
    let mut out = Vec::new();
    for v in spec
        .get("versions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if v.get("served") == Some(&Value::Bool(false)) {
            continue;
        }
        let checks = match v.pointer("/schema/openAPIV3Schema") {
            Some(schema) => Some(Arc::new(Checks::new(schema)?)),
            None => None,
        };
        let columns = v
            .get("additionalPrinterColumns")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|c| Column {
                name: s(c, "name"),
                type_: s(c, "type"),
                format: s(c, "format"),
                description: s(c, "description"),
                priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                json_path: s(c, "jsonPath"),
            })
            .collect();
        let selectable = v
            .get("selectableFields")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|f| s(f, "jsonPath").trim_start_matches('.').to_string())
            .collect();
        out.push(Resource {
            group: group.clone(),
            version: s(v, "name"),
            plural: plural.clone(),
            singular: singular.clone(),
            kind: kind.clone(),
            list_kind: list_kind.clone(),
            namespaced,
            short_names: strings(names.get("shortNames")),
            categories: strings(names.get("categories")),
            status_subresource: v.pointer("/subresources/status").is_some(),
            custom: true,
            checks,
            builtin_structure: None,
            columns,
            selectable,
            storage_key: format!("{group}/{plural}"),
            events_form: false,
            review: false,
            typed: None,
            generation: true,
        });
    }
    Ok(out)
}

/// Every served resource, by group and version (a snapshot; rebuilt when CRDs change).
#[derive(Debug, Default)]
pub struct Registry {
    /// group -> version -> resources (BTreeMaps: stable discovery order)
    pub groups: BTreeMap<String, BTreeMap<String, Vec<Arc<Resource>>>>,
}

impl Registry {
    /// Built-ins plus the resources of `crds`.
    pub fn build(crds: &[Arc<Value>]) -> Registry {
        let mut reg = Registry::default();
        for r in builtins() {
            reg.add(r);
        }
        for crd in crds {
            match from_crd(crd) {
                Ok(rs) => rs.into_iter().for_each(|r| reg.add(r)),
                Err(e) => tracing::warn!(error = %e, "CRD not served"),
            }
        }
        reg
    }

    fn add(&mut self, r: Resource) {
        self.groups
            .entry(r.group.clone())
            .or_default()
            .entry(r.version.clone())
            .or_default()
            .push(Arc::new(r));
    }

    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<Arc<Resource>> {
        self.groups
            .get(group)?
            .get(version)?
            .iter()
            .find(|r| r.plural == plural)
            .cloned()
    }

    pub fn versions(&self, group: &str) -> Option<&BTreeMap<String, Vec<Arc<Resource>>>> {
        self.groups.get(group)
    }

    /// The preferred (first served) version of a group: v1 over v1beta1 over v1alpha1.
    pub fn preferred(&self, group: &str) -> Option<String> {
        let versions = self.groups.get(group)?;
        let rank = |v: &str| {
            let stable = !v.contains("alpha") && !v.contains("beta");
            let beta = v.contains("beta");
            (stable, beta, v.to_string())
        };
        versions.keys().max_by_key(|v| rank(v)).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pier_crds_are_served() {
        let crds: Vec<Arc<Value>> = pier_crds::manifests::all_crds()
            .into_iter()
            .map(|(_, c)| Arc::new(serde_json::to_value(c).expect("encodes")))
            .collect();
        let reg = Registry::build(&crds);
        let net = reg
            .find("pier.dev", "v1alpha1", "networks")
            .expect("served");
        assert!(!net.namespaced);
        assert!(net.status_subresource);
        assert_eq!(net.short_names, vec!["pnet"]);
        assert!(net.columns.iter().any(|c| c.name == "Subnet"));
        assert_eq!(net.selectable, vec!["spec.driver"]);
        assert!(reg.find("", "v1", "namespaces").is_some());
        assert_eq!(reg.preferred("pier.dev").as_deref(), Some("v1alpha1"));
    }

    #[test]
    fn the_kinds_helm_and_the_chart_use_are_served() {
        let reg = Registry::build(&[]);
        for (group, plural, namespaced, status) in [
            ("", "secrets", true, false),
            ("", "serviceaccounts", true, false),
            ("", "configmaps", true, false),
            ("", "services", true, true),
            ("apps", "deployments", true, true),
            ("apps", "daemonsets", true, true),
            ("policy", "poddisruptionbudgets", true, true),
            ("rbac.authorization.k8s.io", "clusterroles", false, false),
            ("rbac.authorization.k8s.io", "rolebindings", true, false),
            (
                "admissionregistration.k8s.io",
                "validatingadmissionpolicies",
                false,
                true,
            ),
            (
                "admissionregistration.k8s.io",
                "validatingadmissionpolicybindings",
                false,
                false,
            ),
        ] {
            let r = reg.find(group, "v1", plural).expect(plural);
            assert_eq!(r.namespaced, namespaced, "{plural}");
            assert_eq!(r.status_subresource, status, "{plural}");
            assert!(r.typed.is_some(), "{plural} decoded into its type");
            let names: Vec<Value> = r.discovery().iter().map(|d| d["name"].clone()).collect();
            assert_eq!(
                names.len(),
                if status { 2 } else { 1 },
                "{plural}: {names:?}"
            );
        }
        let deployments = reg.find("apps", "v1", "deployments").expect("served");
        assert!(deployments.generation && deployments.categories == vec!["all"]);
        assert!(!reg.find("", "v1", "services").expect("served").generation);
        assert_eq!(reg.preferred("apps").as_deref(), Some("v1"));
    }
}
