//! Checks of charts/pier that need no cluster:
//!
//! - the real Helm engine (PyPI `helm-sdkpy`, Helm's Go library; `tests/chart/render.py`) lints
//!   the chart and renders it with the default values, with each value of values.yaml toggled
//!   on its own, and with all of them toggled at once;
//! - every rendered object decodes strictly into its k8s-openapi type (a round trip, since the
//!   decoders skip unknown fields: what does not come back was not understood);
//! - values.yaml documents every value;
//! - the RBAC of each role grants exactly what that binary's code calls, derived from its source
//!   by `tests/chart/rbac.rs`: a gap (a call the chart does not allow) or an excess (a grant no
//!   code uses) fails.
//!
//! Needs `pip install --ignore-requires-python helm-sdkpy` (and PyYAML), as `.ci/run` does.

#[path = "chart/rbac.rs"]
mod rbac;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Container, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One way to set the values, and what Helm made of it.
#[derive(Debug, Clone)]
struct Rendered {
    name: String,
    objects: Vec<Value>,
    notes: String,
}

/// The value toggles: for each leaf of values.yaml (dotted path), a value different from its
/// default. Booleans are flipped automatically; every other leaf needs an entry here, and the
/// test fails on a leaf without one (so a new value is rendered at least once).
fn toggles() -> BTreeMap<&'static str, Value> {
    BTreeMap::from([
        ("image.repository", json!("registry.example/pier")),
        ("image.tag", json!("dev")),
        ("image.pullPolicy", json!("Always")),
        ("imagePullSecrets", json!([{"name": "regcred"}])),
        ("nameOverride", json!("net")),
        ("fullnameOverride", json!("pier-cni")),
        ("logLevel", json!("debug,hyper=info")),
        ("logFormat", json!("text")),
        ("operator.replicas", json!(1)),
        ("operator.leaseDurationSeconds", json!(30)),
        ("operator.leaseName", json!("pier-leader")),
        ("operator.adminPort", json!(9190)),
        ("operator.bridgeSubnet", json!("10.99.0.0/16")),
        (
            "operator.addressPools",
            json!(["base=10.10.0.0/16,size=24", "base=10.20.0.0/16,size=24"]),
        ),
        ("operator.ipv6Pool", json!("fd12:3456:789a::/48")),
        ("operator.portRange", json!("40000-40100")),
        ("operator.deniedHostPorts", json!([])),
        (
            "operator.resources",
            json!({"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}),
        ),
        (
            "operator.nodeSelector",
            json!({"node-role.kubernetes.io/control-plane": ""}),
        ),
        (
            "operator.tolerations",
            json!([{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}]),
        ),
        (
            "operator.affinity",
            json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]}]}]}}}),
        ),
        (
            "operator.podAnnotations",
            json!({"example.com/team": "net"}),
        ),
        ("node.adminPort", json!(9191)),
        ("node.tunnelAddressFrom", json!("defaultRoute")),
        ("node.resources", json!({"requests": {"cpu": "200m"}})),
        ("node.nodeSelector", json!({"pier.dev/dataplane": "true"})),
        ("node.tolerations", json!([])),
        ("node.priorityClassName", json!("")),
        ("node.podAnnotations", json!({"example.com/team": "net"})),
        ("node.podLabels", json!({"example.com/team": "net"})),
        (
            "node.affinity",
            json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "pier.dev/dataplane", "operator": "In", "values": ["true"]}]}]}}}),
        ),
        (
            "node.extraEnv",
            json!([{"name": "PIER_RESYNC_SECONDS", "value": "30"}]),
        ),
        ("node.extraArgs", json!(["--resync-seconds=30"])),
        ("operator.podLabels", json!({"example.com/team": "net"})),
        (
            "operator.priorityClassName",
            json!("system-cluster-critical"),
        ),
        (
            "operator.extraEnv",
            json!([{"name": "RUST_BACKTRACE", "value": "1"}]),
        ),
        ("operator.extraArgs", json!(["--port-range=40000-40100"])),
        ("serviceAccount.name", json!("pier-sa")),
        (
            "serviceAccount.annotations",
            json!({"iam.example.com/role": "pier"}),
        ),
        ("metrics.serviceMonitor.interval", json!("10s")),
        (
            "metrics.serviceMonitor.labels",
            json!({"release": "prometheus"}),
        ),
    ])
}

fn default_values() -> Value {
    let text =
        std::fs::read_to_string(root().join("charts/pier/values.yaml")).expect("values.yaml");
    serde_yaml::from_str(&text).expect("values.yaml parses")
}

/// Dotted paths of the leaves of `values` (maps are descended into unless empty).
fn leaves(values: &Value, prefix: &str, out: &mut Vec<(String, Value)>) {
    match values {
        Value::Object(map) if !map.is_empty() && !(prefix.ends_with("resources")) => {
            for (k, v) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(v, &path, out);
            }
        }
        other => out.push((prefix.to_owned(), other.clone())),
    }
}

fn set_path(values: &mut Value, path: &str, value: Value) {
    let mut cur = values;
    let parts: Vec<&str> = path.split('.').collect();
    for part in &parts[..parts.len() - 1] {
        cur = cur
            .as_object_mut()
            .expect("object")
            .entry(part.to_string())
            .or_insert_with(|| json!({}));
    }
    cur.as_object_mut()
        .expect("object")
        .insert(parts[parts.len() - 1].to_owned(), value);
}

/// The cases: defaults, each leaf toggled alone, everything toggled together.
fn cases() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    leaves(&default_values(), "", &mut out);
    let toggles = toggles();
    let mut missing = Vec::new();
    let mut cases = vec![("default".to_owned(), json!({}))];
    let mut all = json!({});
    for (path, default) in &out {
        let toggled = match (default, toggles.get(path.as_str())) {
            (Value::Bool(b), _) => Value::Bool(!b),
            (_, Some(v)) => v.clone(),
            (_, None) => {
                missing.push(path.clone());
                continue;
            }
        };
        assert_ne!(&toggled, default, "the toggle of {path} is its default");
        let mut values = json!({});
        set_path(&mut values, path, toggled.clone());
        set_path(&mut all, path, toggled);
        cases.push((format!("{path} toggled"), values));
    }
    assert!(
        missing.is_empty(),
        "values without a toggle in tests/chart.rs toggles(): {missing:?}"
    );
    for key in toggles.keys() {
        assert!(
            out.iter().any(|(p, _)| p == key),
            "toggles() names {key}, which values.yaml does not have"
        );
    }
    cases.push(("everything toggled".to_owned(), all));
    cases
}

/// Runs tests/chart/render.py (the real Helm engine) on `cases`: its answer, one entry per case
/// with the manifest or Helm's error.
fn render(cases: &[(String, Value)]) -> Value {
    let request = json!({
        "chart": root().join("charts/pier"),
        "cases": cases.iter().map(|(name, values)| json!({"name": name, "values": values})).collect::<Vec<_>>(),
    });
    let mut child = Command::new("python3")
        .arg(root().join("tests/chart/render.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs (tests/chart/render.py needs it)");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(request.to_string().as_bytes())
            .expect("writes the request");
    }
    let output = child.wait_with_output().expect("render.py finishes");
    assert!(
        output.status.success(),
        "tests/chart/render.py failed (pip install --ignore-requires-python helm-sdkpy?):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("render.py answers JSON")
}

/// Renders every case once per test run (the Helm library takes a few seconds to load).
fn rendered() -> &'static Vec<Rendered> {
    static RENDERED: OnceLock<Vec<Rendered>> = OnceLock::new();
    RENDERED.get_or_init(|| {
        let cases = cases();
        let answer = render(&cases);
        assert_lint_clean("the chart", &answer["lint"]);
        let mut out = Vec::new();
        for ((name, values), case) in cases
            .into_iter()
            .zip(answer["cases"].as_array().expect("cases"))
        {
            assert_eq!(case["name"], json!(name));
            if let Some(error) = case.get("error") {
                panic!("helm could not render the chart with {name} ({values}): {error}");
            }
            assert_lint_clean(&name, &case["lint"]);
            let manifest = case["manifest"].as_str().expect("manifest");
            let objects = serde_yaml::Deserializer::from_str(manifest)
                .map(|doc| Value::deserialize(doc).expect("rendered YAML parses"))
                .filter(|v| !v.is_null())
                .collect();
            out.push(Rendered {
                name,
                objects,
                notes: case["notes"].as_str().unwrap_or_default().to_owned(),
            });
        }
        out
    })
}

fn assert_lint_clean(what: &str, lint: &Value) {
    assert!(
        lint["Errors"].is_null() || lint["Errors"] == json!([]),
        "helm lint of {what}: {lint}"
    );
    assert!(
        lint["Messages"].is_null() || lint["Messages"] == json!([]),
        "helm lint of {what} has findings: {lint}"
    );
}

/// The subset of the Prometheus Operator's ServiceMonitor the chart writes, strictly.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceMonitor {
    api_version: String,
    kind: String,
    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    spec: ServiceMonitorSpec,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceMonitorSpec {
    selector: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    namespace_selector: NamespaceSelector,
    endpoints: Vec<ServiceMonitorEndpoint>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NamespaceSelector {
    match_names: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceMonitorEndpoint {
    port: String,
    path: String,
    interval: String,
}

/// Decodes `object` as `T` and encodes it again: every field must come back unchanged.
fn round_trip<T: serde::de::DeserializeOwned + Serialize>(case: &str, object: &Value) {
    let name = format!(
        "{} {} ({case})",
        object["kind"].as_str().unwrap_or("?"),
        object["metadata"]["name"].as_str().unwrap_or("?")
    );
    let typed: T = serde_json::from_value(object.clone())
        .unwrap_or_else(|e| panic!("{name} does not decode: {e}"));
    let again = serde_json::to_value(&typed).expect("encodes");
    assert_eq!(&again, object, "{name} has fields its type does not know");
}

#[test]
fn chart_lints_and_renders_with_every_value_toggled() {
    let rendered = rendered();
    // defaults + one case per value + all at once
    assert!(rendered.len() > 20, "{} cases", rendered.len());
    for r in rendered {
        assert!(!r.objects.is_empty(), "{}: nothing rendered", r.name);
        assert!(
            r.notes.contains("kubectl get pier"),
            "{}: NOTES.txt",
            r.name
        );
        let mut names = BTreeSet::new();
        for o in &r.objects {
            let key = format!(
                "{}/{}/{}",
                o["kind"].as_str().unwrap_or_default(),
                o["metadata"]["namespace"].as_str().unwrap_or_default(),
                o["metadata"]["name"].as_str().unwrap_or_default()
            );
            assert!(names.insert(key.clone()), "{}: {key} twice", r.name);
        }
    }
}

#[test]
fn every_rendered_object_decodes_strictly() {
    let mut kinds = BTreeSet::new();
    for r in rendered() {
        for o in &r.objects {
            let kind = o["kind"].as_str().unwrap_or_default();
            kinds.insert(kind.to_owned());
            match kind {
                "Deployment" => round_trip::<Deployment>(&r.name, o),
                "DaemonSet" => round_trip::<DaemonSet>(&r.name, o),
                "ServiceAccount" => round_trip::<ServiceAccount>(&r.name, o),
                "Service" => round_trip::<Service>(&r.name, o),
                "ClusterRole" => round_trip::<ClusterRole>(&r.name, o),
                "ClusterRoleBinding" => round_trip::<ClusterRoleBinding>(&r.name, o),
                "Role" => round_trip::<Role>(&r.name, o),
                "RoleBinding" => round_trip::<RoleBinding>(&r.name, o),
                "PodDisruptionBudget" => round_trip::<PodDisruptionBudget>(&r.name, o),
                "CustomResourceDefinition" => round_trip::<CustomResourceDefinition>(&r.name, o),
                "ServiceMonitor" => round_trip::<ServiceMonitor>(&r.name, o),
                "ValidatingAdmissionPolicy" => round_trip::<ValidatingAdmissionPolicy>(&r.name, o),
                "ValidatingAdmissionPolicyBinding" => {
                    round_trip::<ValidatingAdmissionPolicyBinding>(&r.name, o)
                }
                other => panic!("{}: no strict decoder for kind {other}", r.name),
            }
        }
    }
    // Every template is rendered by some case.
    for kind in [
        "Deployment",
        "DaemonSet",
        "ServiceAccount",
        "Service",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "PodDisruptionBudget",
        "CustomResourceDefinition",
        "ServiceMonitor",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ] {
        assert!(kinds.contains(kind), "no case renders a {kind}");
    }
}

fn find<'a>(r: &'a Rendered, kind: &str) -> Vec<&'a Value> {
    r.objects
        .iter()
        .filter(|o| o["kind"] == json!(kind))
        .collect()
}

fn container<T: serde::de::DeserializeOwned>(o: &Value) -> (T, Container) {
    let typed: T = serde_json::from_value(o.clone()).expect("decodes");
    let c: Container =
        serde_json::from_value(o["spec"]["template"]["spec"]["containers"][0].clone())
            .expect("container");
    (typed, c)
}

fn env(c: &Container, name: &str) -> Option<k8s_openapi::api::core::v1::EnvVar> {
    c.env.as_ref()?.iter().find(|e| e.name == name).cloned()
}

#[test]
fn default_render_runs_both_roles_as_designed() {
    let r = &rendered()[0];
    assert_eq!(r.name, "default");
    // Operator: pier operator, 2 replicas with leader election, probes on the admin port,
    // locked down.
    let deployments = find(r, "Deployment");
    assert_eq!(deployments.len(), 1);
    let (deployment, c) = container::<Deployment>(deployments[0]);
    let spec = deployment.spec.expect("spec");
    assert_eq!(spec.replicas, Some(2));
    assert_eq!(c.args.as_deref(), Some(&["operator".to_owned()][..]));
    let pod = spec.template.spec.expect("pod spec");
    assert_eq!(pod.service_account_name.as_deref(), Some("pier0-operator"));
    let lease_ns = env(&c, "PIER_LEASE_NAMESPACE").expect("lease namespace");
    assert_eq!(
        lease_ns
            .value_from
            .and_then(|v| v.field_ref)
            .map(|f| f.field_path),
        Some("metadata.namespace".to_owned())
    );
    assert_eq!(
        env(&c, "PIER_ADMIN_ADDR").and_then(|e| e.value).as_deref(),
        Some("0.0.0.0:9090")
    );
    // Kubernetes' own ports are refused by default, the same list as `pier operator`'s default.
    assert_eq!(
        env(&c, "PIER_DENIED_HOST_PORTS")
            .and_then(|e| e.value)
            .as_deref(),
        Some(pier_operator::ports::KUBERNETES_HOST_PORTS)
    );
    let live = c.liveness_probe.and_then(|p| p.http_get).expect("liveness");
    let ready = c
        .readiness_probe
        .and_then(|p| p.http_get)
        .expect("readiness");
    assert_eq!(live.path.as_deref(), Some("/livez"));
    assert_eq!(ready.path.as_deref(), Some("/readyz"));
    let port = &c.ports.as_ref().expect("ports")[0];
    assert_eq!(
        (port.name.as_deref(), port.container_port),
        (Some("admin"), 9090)
    );
    assert!(c.resources.is_some());
    let sc = c.security_context.expect("securityContext");
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.and_then(|c| c.drop),
        Some(vec!["ALL".to_owned()])
    );
    assert_eq!(
        sc.seccomp_profile.map(|s| s.type_),
        Some("RuntimeDefault".to_owned())
    );

    // Node daemon: pier node on the host network, NODE_NAME from the downward API, hostPID
    // for Pod targets, the netns folders, every node, one node at a time.
    let daemonsets = find(r, "DaemonSet");
    assert_eq!(daemonsets.len(), 1);
    let (ds, c) = container::<DaemonSet>(daemonsets[0]);
    let spec = ds.spec.expect("spec");
    assert_eq!(c.args.as_deref(), Some(&["node".to_owned()][..]));
    let strategy = spec
        .update_strategy
        .and_then(|s| s.rolling_update)
        .expect("rolling");
    assert_eq!(
        strategy.max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );
    let pod = spec.template.spec.expect("pod spec");
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.host_pid, Some(true));
    let tolerations = pod.tolerations.expect("tolerations");
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none())
    );
    let node_name = env(&c, "NODE_NAME").expect("NODE_NAME");
    assert_eq!(
        node_name
            .value_from
            .and_then(|v| v.field_ref)
            .map(|f| f.field_path),
        Some("spec.nodeName".to_owned())
    );
    let mounts = c.volume_mounts.clone().expect("mounts");
    let netns = mounts
        .iter()
        .find(|m| m.mount_path == "/var/run/netns")
        .expect("/var/run/netns");
    assert_eq!(netns.mount_propagation.as_deref(), Some("Bidirectional"));
    assert!(mounts.iter().any(|m| m.mount_path == "/etc/netns"));
    // The namespace's lock is the node's, so `pier up` on the node and the daemon see each other.
    let run_pier = mounts
        .iter()
        .find(|m| m.mount_path == pier_node::kernel::node_lock::LOCK_DIR)
        .expect("the lock directory");
    let volume = pod
        .volumes
        .as_ref()
        .and_then(|v| v.iter().find(|v| v.name == run_pier.name))
        .and_then(|v| v.host_path.clone())
        .expect("a hostPath volume for the lock directory");
    assert_eq!(volume.path, pier_node::kernel::node_lock::LOCK_DIR);
    // iptables-restore -w, where another firewall has iptables rules, shares the node's lock.
    let xtables = mounts
        .iter()
        .find(|m| m.mount_path == "/run/xtables.lock")
        .expect("the node's xtables lock");
    let volume = pod
        .volumes
        .as_ref()
        .and_then(|v| v.iter().find(|v| v.name == xtables.name))
        .and_then(|v| v.host_path.clone())
        .expect("a hostPath volume for the xtables lock");
    assert_eq!(
        (volume.path.as_str(), volume.type_.as_deref()),
        ("/run/xtables.lock", Some("FileOrCreate"))
    );
    assert!(c.liveness_probe.is_some() && c.readiness_probe.is_some());
}

/// Netns targets are off in a cluster unless `node.netnsTargets`; on, the daemon keeps which
/// namespaces it created in a directory of the node (a read-only root could not hold it, and a
/// new Pod must still know them).
/// Whether `labels` has every entry of `wanted` (a label selector's `matchLabels`).
fn has_labels(labels: &Value, wanted: &serde_json::Map<String, Value>) -> bool {
    wanted
        .iter()
        .all(|(key, value)| labels.get(key) == Some(value))
}

/// The port of an `ADDRESS:PORT` value (the admin address a binary listens on).
fn port_of(address: &str) -> Option<i32> {
    address.rsplit(':').next()?.parse().ok()
}

/// The binaries (`pier ROLE`) whose admin port serves `/metrics`, with the file that serves it:
/// each registers its metrics and hands them to pier-runtime's admin server.
const METRICS_SERVERS: [(&str, &str); 2] = [
    ("operator", "operator/src/run.rs"),
    ("node", "node-daemon/src/agent/cli.rs"),
];

/// The ServiceMonitor scrapes `/metrics` on the named port of every Service it selects; each such
/// Service must lead to a container port on which `pier operator` or `pier node` serves its admin
/// port (the port of PIER_ADMIN_ADDR), and between them the Services cover both roles.
#[test]
fn every_service_the_service_monitor_selects_serves_metrics() {
    for (role, file) in METRICS_SERVERS {
        let src = std::fs::read_to_string(root().join(file)).expect("source");
        assert!(
            src.contains("Admin::new(") && src.contains(".register(&mut registry)"),
            "{file}: pier {role} serves its registered metrics on pier-runtime's admin port"
        );
    }
    let mut monitors = 0;
    for r in rendered() {
        for monitor in find(r, "ServiceMonitor") {
            monitors += 1;
            let case = &r.name;
            let spec = &monitor["spec"];
            let wanted = spec["selector"]["matchLabels"]
                .as_object()
                .unwrap_or_else(|| panic!("{case}: the ServiceMonitor selects by matchLabels"));
            let namespaces: Vec<&Value> = spec["namespaceSelector"]["matchNames"]
                .as_array()
                .map(|names| names.iter().collect())
                .unwrap_or_default();
            let endpoints = spec["endpoints"].as_array().expect("endpoints");
            assert!(
                !endpoints.is_empty(),
                "{case}: the ServiceMonitor scrapes something"
            );
            for endpoint in endpoints {
                assert_eq!(endpoint["path"], json!("/metrics"), "{case}: {endpoint}");
            }
            let selected: Vec<&Value> = find(r, "Service")
                .into_iter()
                .filter(|svc| has_labels(&svc["metadata"]["labels"], wanted))
                .filter(|svc| namespaces.contains(&&svc["metadata"]["namespace"]))
                .collect();
            assert!(
                !selected.is_empty(),
                "{case}: the ServiceMonitor selects no Service"
            );
            let mut roles = BTreeSet::new();
            for service in selected {
                let name = &service["metadata"]["name"];
                let typed: Service = serde_json::from_value(service.clone()).expect("Service");
                let svc_spec = typed.spec.expect("Service spec");
                let pods = svc_spec.selector.clone().unwrap_or_default();
                let pods = serde_json::to_value(pods).expect("selector");
                let pods = pods.as_object().expect("selector map");
                assert!(!pods.is_empty(), "{case}: Service {name} selects its Pods");
                let workloads: Vec<&Value> = find(r, "Deployment")
                    .into_iter()
                    .chain(find(r, "DaemonSet"))
                    .filter(|w| has_labels(&w["spec"]["template"]["metadata"]["labels"], pods))
                    .collect();
                assert!(
                    !workloads.is_empty(),
                    "{case}: Service {name} selects no Pods"
                );
                for endpoint in endpoints {
                    let port_name = endpoint["port"].as_str().expect("endpoint port name");
                    let port = svc_spec
                        .ports
                        .iter()
                        .flatten()
                        .find(|p| p.name.as_deref() == Some(port_name))
                        .unwrap_or_else(|| {
                            panic!("{case}: Service {name} has no port {port_name}")
                        });
                    let target = port.target_port.clone().expect("targetPort");
                    for workload in &workloads {
                        let (_, c) = container::<Value>(workload);
                        let role = c
                            .args
                            .as_ref()
                            .and_then(|a| a.first())
                            .cloned()
                            .unwrap_or_default();
                        assert!(
                            METRICS_SERVERS.iter().any(|(r, _)| *r == role),
                            "{case}: Service {name} leads to `pier {role}`, which serves no /metrics"
                        );
                        let admin = env(&c, "PIER_ADMIN_ADDR")
                            .and_then(|e| e.value)
                            .and_then(|a| port_of(&a))
                            .unwrap_or_else(|| panic!("{case}: pier {role} has an admin address"));
                        let served = c
                            .ports
                            .iter()
                            .flatten()
                            .find(|p| match &target {
                                IntOrString::Int(n) => p.container_port == *n,
                                IntOrString::String(s) => p.name.as_deref() == Some(s.as_str()),
                            })
                            .map(|p| p.container_port);
                        assert_eq!(
                            served,
                            Some(admin),
                            "{case}: Service {name}'s {port_name} port targets {target:?}, which is \
                             not pier {role}'s admin port {admin}"
                        );
                        roles.insert(role);
                    }
                }
            }
            assert_eq!(
                roles,
                BTreeSet::from(["node".to_owned(), "operator".to_owned()]),
                "{case}: the ServiceMonitor scrapes both the operator and every node"
            );
        }
    }
    assert!(monitors > 0, "some case renders the ServiceMonitor");
}

#[test]
fn netns_targets_are_off_unless_enabled_and_then_keep_their_markers_on_the_node() {
    let default = &rendered()[0];
    let (_, c) = container::<DaemonSet>(find(default, "DaemonSet")[0]);
    assert_eq!(
        env(&c, "PIER_NETNS_TARGETS")
            .and_then(|e| e.value)
            .as_deref(),
        Some("false")
    );
    assert!(env(&c, "PIER_STATE_DIR").is_none());
    let r = rendered()
        .iter()
        .find(|r| r.name == "node.netnsTargets toggled")
        .expect("case");
    let (ds, c) = container::<DaemonSet>(find(r, "DaemonSet")[0]);
    assert_eq!(
        env(&c, "PIER_NETNS_TARGETS")
            .and_then(|e| e.value)
            .as_deref(),
        Some("true")
    );
    let state_dir = env(&c, "PIER_STATE_DIR")
        .and_then(|e| e.value)
        .expect("PIER_STATE_DIR");
    let mount = c
        .volume_mounts
        .unwrap_or_default()
        .into_iter()
        .find(|m| m.mount_path == state_dir)
        .expect("the state directory is mounted");
    let volume = ds
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|p| p.volumes)
        .unwrap_or_default()
        .into_iter()
        .find(|v| v.name == mount.name)
        .and_then(|v| v.host_path)
        .expect("from the node");
    assert_eq!(volume.path, state_dir);
}

/// Each node's tunnel address (overlay networks) is the kubelet's `status.hostIP` by default;
/// with `defaultRoute` the chart sets nothing and the daemon detects it from the default route.
#[test]
fn tunnel_address_is_the_host_ip_unless_the_default_route_is_asked_for() {
    let (_, c) = container::<DaemonSet>(find(&rendered()[0], "DaemonSet")[0]);
    let field = env(&c, "PIER_TUNNEL_ADDRESS")
        .and_then(|e| e.value_from)
        .and_then(|from| from.field_ref)
        .map(|field| field.field_path);
    assert_eq!(field.as_deref(), Some("status.hostIP"));
    let r = rendered()
        .iter()
        .find(|r| r.name == "node.tunnelAddressFrom toggled")
        .expect("case");
    let (_, c) = container::<DaemonSet>(find(r, "DaemonSet")[0]);
    assert!(env(&c, "PIER_TUNNEL_ADDRESS").is_none());
}

#[test]
fn denied_host_ports_can_be_emptied() {
    let r = rendered()
        .iter()
        .find(|r| r.name == "operator.deniedHostPorts toggled")
        .expect("case");
    let (_, c) = container::<Deployment>(find(r, "Deployment")[0]);
    let value = env(&c, "PIER_DENIED_HOST_PORTS").and_then(|e| e.value);
    assert_eq!(value.as_deref(), Some(""));
    let parsed: pier_operator::ports::PortSet = value.unwrap_or_default().parse().expect("parses");
    assert!(parsed.is_empty(), "no port denied");
}

#[test]
fn unprivileged_node_mode_adds_only_the_needed_capabilities() {
    let r = rendered()
        .iter()
        .find(|r| r.name == "node.privileged toggled")
        .expect("case");
    let (_, c) = container::<DaemonSet>(find(r, "DaemonSet")[0]);
    let sc = c.security_context.expect("securityContext");
    assert_eq!(sc.privileged, None);
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let caps = sc.capabilities.expect("capabilities");
    assert_eq!(caps.drop, Some(vec!["ALL".to_owned()]));
    // SYS_PTRACE comes with hostPID (other users' /proc/PID/ns/net); NET_RAW only on request.
    assert_eq!(
        caps.add,
        Some(vec![
            "NET_ADMIN".to_owned(),
            "SYS_ADMIN".to_owned(),
            "NET_BIND_SERVICE".to_owned(),
            "SYS_PTRACE".to_owned()
        ])
    );
    let mounts = c.volume_mounts.expect("mounts");
    let netns = mounts
        .iter()
        .find(|m| m.mount_path == "/var/run/netns")
        .expect("netns");
    // Bidirectional propagation is only allowed in privileged containers.
    assert_eq!(netns.mount_propagation.as_deref(), Some("HostToContainer"));
}

#[test]
fn crds_as_templates_match_the_committed_crds_and_are_kept() {
    let r = rendered()
        .iter()
        .find(|r| r.name == "crds.manage toggled")
        .expect("case");
    let crds = find(r, "CustomResourceDefinition");
    assert_eq!(crds.len(), 3);
    for crd in crds {
        assert_eq!(
            crd["metadata"]["annotations"]["helm.sh/resource-policy"],
            json!("keep")
        );
        let name = crd["spec"]["names"]["plural"].as_str().expect("plural");
        let committed: Value = serde_yaml::from_str(
            &std::fs::read_to_string(root().join(format!("charts/pier/crds/{name}.yaml")))
                .expect("committed CRD"),
        )
        .expect("parses");
        assert_eq!(
            crd["spec"], committed["spec"],
            "{name}: spec differs from crds/"
        );
    }
    assert!(find(&rendered()[0], "CustomResourceDefinition").is_empty());
}

#[test]
fn values_yaml_documents_every_value() {
    let text = std::fs::read_to_string(root().join("charts/pier/values.yaml")).expect("values");
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    leaves(&default_values(), "", &mut out);
    let undocumented: Vec<_> = out
        .iter()
        .filter(|(path, _)| comment_above(&lines, key_line(&lines, path)).is_empty())
        .map(|(path, _)| path.clone())
        .collect();
    assert!(
        undocumented.is_empty(),
        "values.yaml: values without a comment right above them: {undocumented:?}"
    );
}

/// The line of values.yaml where the dotted `path` is set: the key line of each segment in
/// turn, each below and deeper than the last.
fn key_line(lines: &[&str], path: &str) -> usize {
    let mut from = 0;
    let mut indent = 0;
    let mut found = None;
    for (depth, key) in path.split('.').enumerate() {
        let hit = lines.iter().enumerate().skip(from).find(|(_, l)| {
            let t = l.trim_start();
            let ind = l.len() - t.len();
            (depth == 0 && ind == 0 || depth > 0 && ind > indent)
                && t.starts_with(&format!("{key}:"))
        });
        let Some((i, l)) = hit else {
            panic!("{path} not found in values.yaml");
        };
        from = i + 1;
        indent = l.len() - l.trim_start().len();
        found = Some(i);
    }
    found.unwrap_or_else(|| panic!("{path} not found in values.yaml"))
}

/// The comment block right above line `at`, as one line of text (`# -- ` and `# ` removed).
fn comment_above(lines: &[&str], at: usize) -> String {
    let mut block = Vec::new();
    for line in lines[..at].iter().rev() {
        let Some(text) = line.trim_start().strip_prefix('#') else {
            break;
        };
        block.push(text.trim().trim_start_matches("--").trim());
    }
    block.reverse();
    block.join(" ")
}

const README: &str = "charts/pier/README.md";
const VALUES_BEGIN: &str = "<!-- values:begin (generated by tests/chart.rs from values.yaml; PIER_UPDATE_CHART_README=1 cargo test --test chart to refresh) -->";
const VALUES_END: &str = "<!-- values:end -->";

/// The values table of the chart's README, generated from values.yaml's comments.
fn values_table() -> String {
    let text = std::fs::read_to_string(root().join("charts/pier/values.yaml")).expect("values");
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    leaves(&default_values(), "", &mut out);
    out.sort_by_key(|(path, _)| key_line(&lines, path));
    let mut table =
        String::from("| Key | Type | Default | Description |\n| --- | --- | --- | --- |\n");
    for (path, default) in out {
        let kind = match &default {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Number(_) => "int",
            Value::String(_) => "string",
            Value::Array(_) => "list",
            Value::Object(_) => "object",
        };
        let description = comment_above(&lines, key_line(&lines, &path)).replace('|', "\\|");
        table.push_str(&format!(
            "| `{path}` | {kind} | `{}` | {description} |\n",
            default.to_string().replace('|', "\\|")
        ));
    }
    table
}

/// charts/pier/README.md's values table is what values.yaml's comments say (helm-docs style):
/// regenerate it with `PIER_UPDATE_CHART_README=1 cargo test --test chart`.
#[test]
fn chart_readme_is_generated_from_the_values_comments() {
    let path = root().join(README);
    let readme = std::fs::read_to_string(&path).expect("charts/pier/README.md exists");
    let (Some(begin), Some(end)) = (readme.find(VALUES_BEGIN), readme.find(VALUES_END)) else {
        panic!("{README} lacks the markers {VALUES_BEGIN} ... {VALUES_END}");
    };
    let current = &readme[begin + VALUES_BEGIN.len()..end];
    let wanted = format!("\n{}", values_table());
    if std::env::var_os("PIER_UPDATE_CHART_README").is_some() {
        let updated = format!(
            "{}{wanted}{}",
            &readme[..begin + VALUES_BEGIN.len()],
            &readme[end..]
        );
        std::fs::write(&path, updated).expect("README written");
        return;
    }
    assert!(
        current == wanted,
        "{README} is out of date with values.yaml: run PIER_UPDATE_CHART_README=1 cargo test --test chart"
    );
}

/// values.schema.json describes every value of values.yaml (so a new value gets a type).
#[test]
fn values_schema_describes_every_value() {
    let text = std::fs::read_to_string(root().join("charts/pier/values.schema.json"))
        .expect("charts/pier/values.schema.json exists");
    let schema: Value = serde_json::from_str(&text).expect("the schema is JSON");
    let mut out = Vec::new();
    leaves(&default_values(), "", &mut out);
    for (path, _) in out {
        let mut at = &schema;
        for key in path.split('.') {
            at = &at["properties"][key];
        }
        assert!(
            at["type"].is_string() || at["type"].is_array(),
            "values.schema.json: no type for {path}"
        );
    }
}

/// Helm validates the values against values.schema.json: a wrong type or an unknown value is
/// refused with the path in the message, before anything renders.
#[test]
fn values_schema_rejects_wrong_types_and_unknown_values() {
    let wrong = [
        (
            "replicas as text",
            json!({"operator": {"replicas": "two"}}),
            "replicas",
        ),
        (
            "privileged as text",
            json!({"node": {"privileged": "yes"}}),
            "privileged",
        ),
        ("log format", json!({"logFormat": "xml"}), "logFormat"),
        (
            "pull policy",
            json!({"image": {"pullPolicy": "Sometimes"}}),
            "pullPolicy",
        ),
        (
            "misspelt value",
            json!({"operater": {"replicas": 1}}),
            "operater",
        ),
    ];
    let cases: Vec<(String, Value)> = wrong
        .iter()
        .map(|(name, values, _)| (name.to_string(), values.clone()))
        .collect();
    let answer = render(&cases);
    for ((name, _, path), case) in wrong.iter().zip(answer["cases"].as_array().expect("cases")) {
        let error = case["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: the chart rendered; the schema should refuse it"));
        assert!(
            error.contains("schema") && error.contains(path),
            "{name}: {error}"
        );
    }
}

/// Kubernetes' `view`, `edit` and `admin` roles get Pier's kinds by aggregation: namespace users
/// bound to `edit` create Endpoints and PortPublishes (not Networks, which are cluster-wide);
/// `view` only reads.
#[test]
fn aggregated_roles_give_view_edit_and_admin_the_pier_kinds() {
    let label = |role: &str| format!("rbac.authorization.k8s.io/aggregate-to-{role}");
    let grants_of = |r: &Rendered, role: &str| -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        for o in find(r, "ClusterRole") {
            if o["metadata"]["labels"][label(role)] != json!("true") {
                continue;
            }
            let rules: Vec<PolicyRule> = serde_json::from_value(o["rules"].clone()).expect("rules");
            for rule in rules {
                assert_eq!(
                    rule.api_groups.as_deref(),
                    Some(&["pier.dev".to_owned()][..])
                );
                for res in rule.resources.unwrap_or_default() {
                    for v in &rule.verbs {
                        out.insert((res.clone(), v.clone()));
                    }
                }
            }
        }
        out
    };
    let r = &rendered()[0];
    let read = ["get", "list", "watch"];
    let write = ["create", "update", "patch", "delete", "deletecollection"];
    let view = grants_of(r, "view");
    for res in ["networks", "endpoints", "portpublishes"] {
        for v in read {
            assert!(
                view.contains(&(res.into(), v.into())),
                "view lacks {v} {res}"
            );
        }
    }
    assert!(
        view.iter().all(|(_, v)| read.contains(&v.as_str())),
        "view writes: {view:?}"
    );
    for role in ["edit", "admin"] {
        let granted = grants_of(r, role);
        assert!(
            granted.is_superset(&view),
            "{role} cannot read what view reads"
        );
        for res in ["endpoints", "portpublishes"] {
            for v in write {
                assert!(
                    granted.contains(&(res.into(), v.into())),
                    "{role} lacks {v} {res}"
                );
            }
        }
        assert!(
            !granted
                .iter()
                .any(|(res, v)| res == "networks" && write.contains(&v.as_str())),
            "{role} may change Networks: {granted:?}"
        );
        assert!(
            !granted.iter().any(|(res, _)| res.contains('/')),
            "{role} may write status: {granted:?}"
        );
    }
    let off = rendered()
        .iter()
        .find(|r| r.name == "rbac.aggregateToDefaultRoles toggled")
        .expect("case");
    assert!(grants_of(off, "view").is_empty() && grants_of(off, "edit").is_empty());
}

/// The chart refuses the deletion of the predefined Networks up front: a ValidatingAdmissionPolicy
/// on DELETE of networks naming exactly the operator's defaults, bound with Deny.
#[test]
fn predefined_networks_are_protected_by_an_admission_policy() {
    let r = &rendered()[0];
    let policies = find(r, "ValidatingAdmissionPolicy");
    assert_eq!(policies.len(), 1);
    let policy: ValidatingAdmissionPolicy =
        serde_json::from_value(policies[0].clone()).expect("policy");
    let spec = policy.spec.expect("spec");
    let rules = spec
        .match_constraints
        .and_then(|m| m.resource_rules)
        .expect("resource rules");
    assert_eq!(rules.len(), 1);
    assert_eq!(
        rules[0].operations.as_deref(),
        Some(&["DELETE".to_owned()][..])
    );
    assert_eq!(
        rules[0].resources.as_deref(),
        Some(&["networks".to_owned()][..])
    );
    assert_eq!(
        rules[0].api_groups.as_deref(),
        Some(&[pier_crds::GROUP.to_owned()][..])
    );
    let expression = &spec.validations.expect("validations")[0].expression;
    let names = [
        pier_operator::defaults::BRIDGE,
        pier_operator::defaults::HOST,
        pier_operator::defaults::NONE,
    ];
    assert_eq!(
        expression,
        &format!(
            "!(oldObject.metadata.name in {})",
            serde_json::to_string(&names)
                .expect("json")
                .replace('"', "'")
                .replace(',', ", ")
        ),
    );
    let bindings = find(r, "ValidatingAdmissionPolicyBinding");
    let binding: ValidatingAdmissionPolicyBinding =
        serde_json::from_value(bindings[0].clone()).expect("binding");
    let binding = binding.spec.expect("spec");
    assert_eq!(binding.policy_name, policy.metadata.name);
    assert_eq!(binding.validation_actions, Some(vec!["Deny".to_owned()]));
    for off in [
        "operator.defaultNetworks toggled",
        "operator.protectDefaultNetworks toggled",
    ] {
        let r = rendered().iter().find(|r| r.name == off).expect("case");
        assert!(find(r, "ValidatingAdmissionPolicy").is_empty(), "{off}");
    }
}

/// The grants of one role in a render: (group, resource, verb) from its ClusterRole(s) and
/// Role(s), by the `app.kubernetes.io/component` label.
fn chart_grants(r: &Rendered, component: &str) -> BTreeSet<rbac::Grant> {
    let mut grants = BTreeSet::new();
    for o in r.objects.iter().filter(|o| {
        (o["kind"] == json!("ClusterRole") || o["kind"] == json!("Role"))
            && o["metadata"]["labels"]["app.kubernetes.io/component"] == json!(component)
    }) {
        let rules: Vec<PolicyRule> =
            serde_json::from_value(o["rules"].clone()).expect("rules decode");
        for rule in rules {
            // resourceNames narrows a `get` to named objects (the operator reads the default
            // Namespace alone): the scanner sees the verb the code needs, not the names, so
            // such a rule counts as its verb; on list and watch Kubernetes would not narrow it.
            assert!(
                rule.non_resource_urls.is_none(),
                "the scanner does not model nonResourceURLs"
            );
            assert!(
                rule.resource_names.is_none() || rule.verbs.iter().all(|v| v == "get"),
                "{component}: resourceNames only narrow `get` here"
            );
            for g in rule.api_groups.clone().unwrap_or_default() {
                for res in rule.resources.clone().unwrap_or_default() {
                    for v in &rule.verbs {
                        assert!(
                            g != "*" && res != "*" && v != "*",
                            "{component}: a wildcard grant"
                        );
                        grants.insert((g.clone(), res.clone(), v.clone()));
                    }
                }
            }
        }
    }
    grants
}

fn show(set: &BTreeSet<rbac::Grant>, usage: &rbac::Usage) -> String {
    set.iter()
        .map(|g| {
            let from = usage
                .origins
                .get(g)
                .map(|o| o.join(", "))
                .unwrap_or_default();
            format!("\n  {:?} {} {} {}", g.0, g.1, g.2, from)
        })
        .collect()
}

/// The shared runtime both binaries call with their handles (status writes, the finalizer
/// wrapper, Events): scanned with each.
const RUNTIME_SRC: &str = "runtime/src";

fn check_role(component: &str, src: &str) -> rbac::Usage {
    let usage = rbac::scan_all(&[&root().join(src), &root().join(RUNTIME_SRC)]);
    assert!(
        usage.problems.is_empty(),
        "the RBAC scanner cannot account for these API uses in {src}:\n  {}",
        usage.problems.join("\n  ")
    );
    let needed = usage.grants.clone();
    for r in rendered() {
        let granted = chart_grants(r, component);
        let gaps: BTreeSet<_> = needed.difference(&granted).cloned().collect();
        let excess: BTreeSet<_> = granted.difference(&needed).cloned().collect();
        assert!(
            gaps.is_empty() && excess.is_empty(),
            "{component} RBAC in charts/pier ({}) differs from what {src} calls\n\
             missing from the chart:{}\ngranted but unused:{}",
            r.name,
            show(&gaps, &usage),
            show(&excess, &usage)
        );
    }
    usage
}

#[test]
fn operator_rbac_matches_the_operator_code() {
    let usage = check_role("operator", "operator/src");
    assert!(usage.uses_api, "operator/src makes no API call?");
    // The essentials, so a scanner that silently finds nothing cannot pass.
    for (g, r, v) in [
        ("pier.dev", "networks", "watch"),
        ("pier.dev", "endpoints/status", "patch"),
        ("pier.dev", "portpublishes", "patch"),
        ("coordination.k8s.io", "leases", "update"),
        ("events.k8s.io", "events", "create"),
    ] {
        assert!(
            usage
                .grants
                .contains(&(g.to_owned(), r.to_owned(), v.to_owned())),
            "the scanner missed {g} {r} {v}: {:?}",
            usage.grants
        );
    }
    // The Lease is namespaced (Api::namespaced in the release namespace): a Role, not cluster-wide.
    let r = &rendered()[0];
    for o in find(r, "ClusterRole") {
        assert!(!o.to_string().contains("leases"), "leases in a ClusterRole");
    }
    assert!(
        find(r, "Role")
            .iter()
            .any(|o| o.to_string().contains("leases"))
    );
}

#[test]
fn node_rbac_matches_the_node_daemon_code() {
    let usage = check_role("node", "node-daemon/src");
    // Nodes are the kubelet's to register: the chart never asks the daemon to create its own
    // (`--register-node` is for machines without a kubelet, beside `pier up`).
    for r in rendered() {
        for o in find(r, "DaemonSet") {
            let (_, c): (DaemonSet, Container) = container(o);
            assert!(
                env(&c, "PIER_REGISTER_NODE").is_none(),
                "{}: the DaemonSet sets PIER_REGISTER_NODE (in a cluster the kubelet registers Nodes)",
                r.name
            );
        }
    }
    assert!(usage.uses_api, "node-daemon/src makes no API call?");
    // The essentials, so a scanner that silently finds nothing cannot pass.
    for (g, r, v) in [
        ("pier.dev", "endpoints", "watch"),
        ("pier.dev", "endpoints", "patch"),
        ("pier.dev", "endpoints/status", "patch"),
        ("pier.dev", "portpublishes/status", "patch"),
        ("", "pods", "get"),
    ] {
        assert!(
            usage
                .grants
                .contains(&(g.to_owned(), r.to_owned(), v.to_owned())),
            "the scanner missed {g} {r} {v}: {:?}",
            usage.grants
        );
    }
}

/// The scanner finds what it claims to, and refuses what it cannot see.
#[test]
fn rbac_scanner_derives_verbs_from_code() {
    let dir = tempfile_dir("scanner");
    std::fs::write(
        dir.join("lib.rs"),
        r#"
use kube::Api;
async fn run(client: Client) {
    let nets: Api<Network> = Api::all(client.clone());
    Controller::new(nets.clone(), wc()).run();
    let secrets = Api::<Secret>::namespaced(client.clone(), "ns");
    secrets.get_opt("x").await;
    Api::<ConfigMap>::namespaced(client.clone(), "ns").delete("y", &dp).await;
    write_status(&nets, &obj).await;
    finalizer(&nets, "pier.dev/x", obj, |e| async {}).await;
    ensure(&Api::all(client.clone())).await;
    let rec = Recorder::new(client.clone(), reporter);
    ctx.services.create(&pp, &svc).await;
}
struct Ctx {
    services: Api<Service>,
}
async fn write_status<K: Resource>(api: &Api<K>, obj: &K) {
    api.patch_status("n", &pp, &patch).await;
}
async fn ensure(api: &Api<Lease>) {
    api.replace("l", &pp, &l).await;
}
#[cfg(test)]
mod tests {
    async fn t(api: Api<Namespace>) { api.delete("x", &dp).await; }
}
"#,
    )
    .expect("writes");
    let usage = rbac::scan(&dir);
    assert!(usage.problems.is_empty(), "{:?}", usage.problems);
    let got: BTreeSet<String> = usage
        .grants
        .iter()
        .map(|(g, r, v)| format!("{g}/{r}:{v}"))
        .collect();
    let want: BTreeSet<String> = [
        "pier.dev/networks:list",
        "pier.dev/networks:watch",
        "pier.dev/networks:patch",
        "pier.dev/networks/status:patch",
        "/secrets:get",
        "/configmaps:delete",
        "/services:create",
        "coordination.k8s.io/leases:update",
        "events.k8s.io/events:create",
        "events.k8s.io/events:patch",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(got, want);

    std::fs::write(
        dir.join("lib.rs"),
        r#"
async fn run(client: Client) {
    let a: Api<Widget> = Api::all(client.clone());
    let n: Api<Node> = Api::all(client.clone());
    n.evict("x").await;
    let anything = Api::all(client.clone());
    client.request::<Node>(req).await;
    let maybe: Option<Api<Pod>> = None;
    if let Some(p) = maybe { p.delete("x", &dp).await; }
}
"#,
    )
    .expect("writes");
    let usage = rbac::scan(&dir);
    // Each of these uses is refused rather than missed.
    let expected = [
        ":3: Api<Widget>: unknown type",
        ":4: Api<Node> is used, but the RBAC scanner saw no call on it",
        ":5: `n.evict(..)` on an Api handle: unknown method",
        ":6: an untyped `Api::all`",
        ":7: a raw client.request",
        ":8: Api<Pod> is used, but the RBAC scanner saw no call on it",
    ];
    assert_eq!(
        usage.problems.len(),
        expected.len(),
        "{:#?}",
        usage.problems
    );
    for (problem, want) in usage.problems.iter().zip(expected) {
        assert!(problem.contains(want), "{problem} (expected {want})");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pier-chart-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[test]
#[ignore = "prints what the scanner derives: cargo test -p pier --test chart -- --ignored --nocapture"]
fn print_scanned_grants() {
    for src in ["operator/src", "node-daemon/src"] {
        let usage = rbac::scan_all(&[&root().join(src), &root().join(RUNTIME_SRC)]);
        println!("{src}: uses the API: {}", usage.uses_api);
        for (grant, origins) in &usage.origins {
            println!(
                "  {:?} {} {}  <- {}",
                grant.0,
                grant.1,
                grant.2,
                origins.join(", ")
            );
        }
        for p in &usage.problems {
            println!("  problem: {p}");
        }
    }
}

/// `true` when every field of `original` is in `again` with the same value (`again` may add
/// defaults the typed decoder fills in).
fn covers(again: &Value, original: &Value) -> bool {
    match (again, original) {
        (Value::Object(a), Value::Object(o)) => o
            .iter()
            .all(|(k, v)| a.get(k).is_some_and(|av| covers(av, v))),
        (Value::Array(a), Value::Array(o)) => {
            a.len() == o.len() && a.iter().zip(o).all(|(x, y)| covers(x, y))
        }
        (a, o) => a == o,
    }
}

fn decode_covering<T: serde::de::DeserializeOwned + Serialize>(path: &str, object: &Value) {
    let typed: T = serde_json::from_value(object.clone())
        .unwrap_or_else(|e| panic!("{path}: {} does not decode: {e}", object["kind"]));
    let again = serde_json::to_value(&typed).expect("encodes");
    assert!(
        covers(&again, object),
        "{path}: {} has fields its type does not know:\n{object:#}\nunderstood:\n{again:#}",
        object["kind"]
    );
}

/// The kind test's manifests decode strictly: Pods into k8s-openapi's Pod, Pier objects into
/// the API types (which may add their defaults, but must keep every field written).
#[test]
fn kind_manifests_decode_strictly() {
    let dir = root().join("tests/kind/manifests");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/kind/manifests")
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    let mut kinds = BTreeSet::new();
    for path in files {
        let text = std::fs::read_to_string(&path).expect("reads");
        let name = path.display().to_string();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let object = Value::deserialize(doc).expect("YAML parses");
            if object.is_null() {
                continue;
            }
            let kind = object["kind"].as_str().unwrap_or_default().to_owned();
            match kind.as_str() {
                "Pod" => round_trip::<k8s_openapi::api::core::v1::Pod>(&name, &object),
                "Network" => decode_covering::<pier_crds::Network>(&name, &object),
                "Endpoint" => decode_covering::<pier_crds::Endpoint>(&name, &object),
                "PortPublish" => decode_covering::<pier_crds::PortPublish>(&name, &object),
                other => panic!("{name}: unexpected kind {other}"),
            }
            kinds.insert(kind);
        }
    }
    assert_eq!(kinds.len(), 4, "{kinds:?}");
}

/// The environment variables a crate's clap flags read (`env = "NAME"`).
fn declared_env(src: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(r#"\benv\s*=\s*"([A-Z0-9_]+)""#).expect("regex");
    let mut files = Vec::new();
    let mut stack = vec![root().join(src)];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files
        .iter()
        .flat_map(|f| {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            re.captures_iter(&text)
                .map(|c| c[1].to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Every variable the chart sets for a role is one its code reads (`RUST_LOG` goes to the log
/// filter; the binary's global flags in src/, such as `PIER_LOG_FORMAT`, apply to every role),
/// so a renamed flag cannot leave the chart setting nothing.
fn check_env(kind: &str, src: &str, extra: &[&str]) -> usize {
    let mut declared = declared_env(src);
    if declared.is_empty() {
        return 0;
    }
    declared.extend(declared_env("src"));
    let mut checked = 0;
    for r in rendered() {
        for o in find(r, kind) {
            let c: Container =
                serde_json::from_value(o["spec"]["template"]["spec"]["containers"][0].clone())
                    .expect("container");
            for e in c.env.unwrap_or_default() {
                checked += 1;
                assert!(
                    e.name == "RUST_LOG"
                        || extra.contains(&e.name.as_str())
                        || declared.contains(&e.name),
                    "{} ({}): the chart sets {}, which {src} does not read (it reads {declared:?})",
                    kind,
                    r.name,
                    e.name
                );
            }
        }
    }
    checked
}

#[test]
fn chart_sets_only_environment_the_code_reads() {
    // RUST_BACKTRACE: read by Rust's standard library (the operator.extraEnv toggle sets it).
    assert!(check_env("Deployment", "operator/src", &["RUST_BACKTRACE"]) > 0);
    assert!(check_env("DaemonSet", "node-daemon/src", &[]) > 0);
}
