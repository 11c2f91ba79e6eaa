//! `helm install` for real against `pier up`'s API server: Helm's own library (PyPI
//! `helm-sdkpy`, Helm 4's Go code; `tests/helm/helm.py`) installs charts/pier, upgrades it,
//! lists, shows the history, rolls back and uninstalls, and kubectl reads what it made.
//!
//! Nothing runs the Deployment and DaemonSet here (the embedded API server has no kubelet and
//! no controllers, like a kube-apiserver alone), so Helm does not wait for readiness: what
//! this proves is that every object the chart renders is accepted, stored, updated and deleted
//! with Kubernetes' semantics (client-side apply: creates, then three-way strategic merge
//! patches for built-ins and JSON merge patches for custom resources), that Helm's release
//! records (Secrets, found by label) work, and that the CRDs behave as the README says.
//! Pods running the image need a real cluster (`tests/kind/run.sh`).
//!
//! Needs root (as every `pier up` test), kubectl and `pip install --ignore-requires-python
//! helm-sdkpy` (and PyYAML), as `.ci/run` does.

#[path = "chart/rbac.rs"]
#[allow(dead_code)] // tests/chart.rs uses the rest
mod rbac;
mod system;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Deserialize;
use serde_json::{Value, json};

use system::Pier;

const NAMESPACE: &str = "pier-system";
const PIER_CRDS: [&str; 3] = [
    "networks.pier.dev",
    "endpoints.pier.dev",
    "portpublishes.pier.dev",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `tests/helm/helm.py`, one request per line.
struct Helm {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    kubeconfig: String,
}

impl Helm {
    fn start(pier: &Pier) -> Helm {
        let mut child = Command::new("python3")
            .arg(root().join("tests/helm/helm.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs (tests/helm/helm.py needs it)");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Helm {
            child,
            stdin,
            stdout,
            kubeconfig: pier.kubeconfig.display().to_string(),
        }
    }

    /// One action: its result, or Helm's error.
    fn call(&mut self, mut request: Value) -> Result<Value, String> {
        request["kubeconfig"] = json!(self.kubeconfig);
        request["namespace"] = json!(NAMESPACE);
        writeln!(self.stdin, "{request}").expect("helm.py takes the request");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("helm.py answers");
        let answer: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
            panic!(
                "helm.py answered {line:?} ({e}); pip install --ignore-requires-python helm-sdkpy?"
            )
        });
        match answer.get("error") {
            Some(error) => Err(error.as_str().unwrap_or_default().to_owned()),
            None => Ok(answer["ok"].clone()),
        }
    }

    fn ok(&mut self, request: Value) -> Value {
        let what = request["action"].clone();
        self.call(request)
            .unwrap_or_else(|e| panic!("helm {what} failed: {e}"))
    }
}

impl Drop for Helm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the Deployment and DaemonSet controllers and the kubelets would report once a rollout
/// is done, written by the test through the status subresource (nothing else runs them
/// here): Helm's rollback waits for it, as on a cluster. Stops when dropped.
struct RolloutStandIn {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RolloutStandIn {
    fn start(pier: &Pier) -> RolloutStandIn {
        let stop = Arc::new(AtomicBool::new(false));
        let kubectl = format!("kubectl --kubeconfig {}", pier.kubeconfig.display());
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                report_rollouts_done(&kubectl);
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        });
        RolloutStandIn {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for RolloutStandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The status of a finished rollout of `workload` (generation `generation`).
fn rollout_done(workload: &Value, generation: &Value) -> Value {
    if workload["kind"] == "Deployment" {
        let replicas = workload["spec"]["replicas"].as_i64().unwrap_or(1);
        json!({"observedGeneration": generation, "replicas": replicas,
            "updatedReplicas": replicas, "readyReplicas": replicas, "availableReplicas": replicas,
            "conditions": [
                {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}]})
    } else {
        // One node: `pier up`'s.
        json!({"observedGeneration": generation, "desiredNumberScheduled": 1,
            "currentNumberScheduled": 1, "updatedNumberScheduled": 1, "numberAvailable": 1,
            "numberReady": 1, "numberMisscheduled": 0})
    }
}

fn report_rollouts_done(kubectl: &str) {
    let out = system::sh(&format!(
        "{kubectl} get deployments.apps,daemonsets.apps -n {NAMESPACE} -o json"
    ));
    let Ok(list) = serde_json::from_slice::<Value>(&out.stdout) else {
        return;
    };
    for workload in list["items"].as_array().into_iter().flatten() {
        let generation = &workload["metadata"]["generation"];
        if &workload["status"]["observedGeneration"] == generation {
            continue;
        }
        let patch = json!({"status": rollout_done(workload, generation)});
        let _ = system::sh(&format!(
            "{kubectl} patch {}.apps {} -n {NAMESPACE} --subresource=status --type=merge -p '{patch}'",
            workload["kind"].as_str().unwrap_or_default().to_lowercase(),
            workload["metadata"]["name"].as_str().unwrap_or_default(),
        ));
    }
}

/// The objects of a release's manifest.
fn objects(release: &Value) -> Vec<Value> {
    let manifest = release["manifest"].as_str().expect("a manifest");
    serde_yaml::Deserializer::from_str(manifest)
        .map(|doc| Value::deserialize(doc).expect("the manifest parses"))
        .filter(|v| !v.is_null())
        .collect()
}

/// `kind.group NAME [-n NAMESPACE]` for kubectl.
fn kubectl_ref(object: &Value) -> String {
    let kind = object["kind"].as_str().unwrap_or_default().to_lowercase();
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let resource = match api_version.rsplit_once('/') {
        Some((group, version)) => format!("{kind}.{version}.{group}"),
        None => kind,
    };
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    match object["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{resource} {name} -n {ns}"),
        None => format!("{resource} {name}"),
    }
}

/// Where `live` differs from `rendered` in a field `rendered` sets (None: it has them all).
fn missing_from(live: &Value, rendered: &Value, path: &str) -> Option<String> {
    match (live, rendered) {
        (Value::Object(l), Value::Object(r)) => r.iter().find_map(|(k, v)| match l.get(k) {
            Some(lv) => missing_from(lv, v, &format!("{path}.{k}")),
            None if v.is_null() => None,
            None => Some(format!("{path}.{k} is missing (rendered {v})")),
        }),
        (Value::Array(l), Value::Array(r)) if l.len() == r.len() => l
            .iter()
            .zip(r)
            .enumerate()
            .find_map(|(i, (lv, rv))| missing_from(lv, rv, &format!("{path}[{i}]"))),
        _ if live == rendered => None,
        // A number is the same number however Helm's YAML wrote it (65535 or 65535.0).
        (Value::Number(l), Value::Number(r)) if l.as_f64() == r.as_f64() => None,
        _ => Some(format!("{path} is {live}, rendered {rendered}")),
    }
}

/// Every object of `release` is stored as Helm rendered it, readable with kubectl.
fn assert_stored(pier: &Pier, release: &Value) -> Vec<Value> {
    let objects = objects(release);
    assert!(!objects.is_empty(), "the release has objects");
    for object in &objects {
        let what = kubectl_ref(object);
        let live: Value = serde_json::from_str(&pier.kubectl_ok(&format!("get {what} -o json")))
            .expect("kubectl prints JSON");
        if let Some(difference) = missing_from(&live, object, "") {
            panic!("{what} is not stored as rendered: {difference}");
        }
        assert_eq!(
            live["metadata"]["annotations"]["meta.helm.sh/release-name"], release["name"],
            "{what} names its release"
        );
    }
    objects
}

/// The stored ClusterRoles and Roles of each role grant exactly what its code calls, as
/// `tests/chart.rs` derives it from the source (`tests/chart/rbac.rs`).
fn assert_rbac_matches_the_code(pier: &Pier) {
    for (component, src) in [("operator", "operator/src"), ("node", "node-daemon/src")] {
        let usage = rbac::scan_all(&[&root().join(src), &root().join("runtime/src")]);
        let roles: Value = serde_json::from_str(&pier.kubectl_ok(&format!(
            "get clusterroles,roles -A -l app.kubernetes.io/component={component} -o json"
        )))
        .expect("kubectl prints JSON");
        let mut stored = std::collections::BTreeSet::new();
        for rule in roles["items"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|role| role["rules"].as_array().cloned().unwrap_or_default())
        {
            let strings = |key: &str| -> Vec<String> {
                rule[key]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            };
            for group in strings("apiGroups") {
                for resource in strings("resources") {
                    for verb in strings("verbs") {
                        stored.insert((group.clone(), resource.clone(), verb));
                    }
                }
            }
        }
        assert_eq!(
            stored, usage.grants,
            "{component}: the stored RBAC is what its code calls"
        );
    }
}

/// Whether `kubectl get` of `object` says NotFound.
fn gone(pier: &Pier, object: &Value) -> bool {
    let out = pier.kubectl(&format!("get {}", kubectl_ref(object)));
    !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("NotFound")
}

fn kinds(objects: &[Value]) -> Vec<String> {
    let mut kinds: Vec<String> = objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap_or_default().to_owned())
        .collect();
    kinds.sort();
    kinds.dedup();
    kinds
}

fn find<'a>(objects: &'a [Value], kind: &str, name_suffix: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| {
            o["kind"] == kind
                && o["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.ends_with(name_suffix))
        })
        .unwrap_or_else(|| panic!("a {kind} *{name_suffix} in the release"))
}

/// The log level the first container of workload `object` gets (its `RUST_LOG` variable).
fn log_level(pier: &Pier, object: &str) -> String {
    pier.jsonpath(
        &format!("{object} -n {NAMESPACE}"),
        "{.spec.template.spec.containers[0].env[?(@.name==\"RUST_LOG\")].value}",
    )
}

fn operator_log_level(pier: &Pier) -> String {
    log_level(pier, "deployment.apps/pier-operator")
}

/// A copy of charts/pier whose Network CRD has a changed column description: a new chart
/// version changing a CRD.
fn chart_with_changed_crd(dir: &Path) -> PathBuf {
    let chart = dir.join("pier");
    system::sh_ok(&format!(
        "cp -r {} {}",
        root().join("charts/pier").display(),
        chart.display()
    ));
    let crd = chart.join("crds/networks.yaml");
    let text = std::fs::read_to_string(&crd).expect("networks.yaml");
    let old = "description: The allocated subnet\n";
    assert!(text.contains(old), "the Network CRD has a Subnet column");
    std::fs::write(
        &crd,
        text.replace(old, "description: The allocated subnet (v2)\n"),
    )
    .expect("writes the CRD");
    chart
}

/// `stringData` merged into `data`, and `data` that is not base64 refused, by kubectl apply.
fn secrets_as_kube_apiserver_takes_them(pier: &Pier) {
    let secret = |data: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: s, namespace: {NAMESPACE}}}\n{data}\n"
        )
    };
    pier.apply(&secret("data: {a: eA==}\nstringData: {b: hi}"));
    assert_eq!(
        pier.jsonpath(&format!("secret s -n {NAMESPACE}"), "{.data.a} {.data.b}"),
        "eA== aGk="
    );
    let refused = system::sh(&format!(
        "printf '%s' '{}' | kubectl --kubeconfig {} apply -f -",
        secret("data: {a: not-base64!}"),
        pier.kubeconfig.display()
    ));
    let error = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && error.contains("cannot be handled as a Secret"),
        "{error}"
    );
    pier.kubectl_ok(&format!("delete secret s -n {NAMESPACE}"));
}

/// The Prometheus Operator's ServiceMonitor CRD, reduced to what a cluster with it serves.
const SERVICE_MONITOR_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: servicemonitors.monitoring.coreos.com}
spec:
  group: monitoring.coreos.com
  names: {kind: ServiceMonitor, listKind: ServiceMonitorList, plural: servicemonitors, singular: servicemonitor, shortNames: [smon]}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec: {type: object, x-kubernetes-preserve-unknown-fields: true}
"#;

/// The test's `pier up`, Helm session and chart.
struct Session {
    pier: Pier,
    helm: Helm,
    chart: String,
}

/// A release's history as (revision, status) pairs.
fn revisions(history: &Value) -> Vec<(Value, Value)> {
    history
        .as_array()
        .expect("a history")
        .iter()
        .map(|r| (r["version"].clone(), r["status"].clone()))
        .collect()
}

/// `helm install --create-namespace` with the default values: its objects.
fn install_with_the_defaults(s: &mut Session) -> Vec<Value> {
    // Install with the defaults: crds/ first, then every template, validated against the
    // server as the helm CLI does by default.
    let installed = s.helm.ok(
        json!({"action": "install", "release": "pier", "chart": s.chart,
        "create_namespace": true, "validate": true}),
    );
    assert_eq!(installed["status"], "deployed", "{installed}");
    assert_eq!(installed["version"], 1);
    assert!(
        installed["notes"]
            .as_str()
            .is_some_and(|n| n.contains("is installed in namespace pier-system")),
        "NOTES rendered: {installed}"
    );
    let first = assert_stored(&s.pier, &installed);
    for kind in [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "DaemonSet",
        "PodDisruptionBudget",
    ] {
        assert!(
            kinds(&first).contains(&kind.to_owned()),
            "a {kind} by default"
        );
    }
    for crd in PIER_CRDS {
        s.pier.kubectl_ok(&format!("get crd {crd}"));
    }
    let table = s
        .pier
        .kubectl_ok(&format!("get deploy,ds,pdb,sa -n {NAMESPACE}"));
    assert!(
        table.contains("pier-operator") && table.contains("pier-node"),
        "{table}"
    );
    let records = s.pier.kubectl_ok(&format!(
        "get secrets -n {NAMESPACE} -l owner=helm,name=pier -o name"
    ));
    assert_eq!(
        records.trim(),
        "secret/sh.helm.release.v1.pier.v1",
        "Helm's record"
    );
    assert_rbac_matches_the_code(&s.pier);
    secrets_as_kube_apiserver_takes_them(&s.pier);
    let listed = s.helm.ok(json!({"action": "list"}));
    assert_eq!(listed[0]["name"], "pier", "{listed}");
    assert_eq!(listed[0]["status"], "deployed", "{listed}");
    assert_eq!(operator_log_level(&s.pier), "info");
    first
}

/// `helm upgrade` with other values from chart version `chart_v2`: its objects.
fn upgrade_with_other_values(s: &mut Session, chart_v2: &str) -> Vec<Value> {
    // Upgrade: other values, and the CRDs managed by the release from now on (the CRDs exist
    // without Helm's annotations, installed from crds/: taking them over needs
    // --take-ownership once), from a chart version whose Network CRD changed.
    let upgraded = s.helm.ok(
        json!({"action": "upgrade", "release": "pier", "chart": chart_v2,
        "take_ownership": true,
        "values": {"operator": {"replicas": 1}, "logLevel": "debug", "crds": {"manage": true}}}),
    );
    assert_eq!(upgraded["version"], 2, "{upgraded}");
    let second = assert_stored(&s.pier, &upgraded);
    assert_eq!(
        s.pier.jsonpath(
            &format!("deployment.apps/pier-operator -n {NAMESPACE}"),
            "{.spec.replicas} {.metadata.generation}"
        ),
        "1 2",
        "the Deployment was patched (its generation counts the change)"
    );
    assert_eq!(operator_log_level(&s.pier), "debug");
    let operator = find(&second, "Deployment", "operator");
    let live_image = s.pier.jsonpath(
        &format!("deployment.apps/pier-operator -n {NAMESPACE}"),
        "{.spec.template.spec.containers[0].image}",
    );
    assert_eq!(
        json!(live_image),
        operator["spec"]["template"]["spec"]["containers"][0]["image"],
        "the strategic merge patch kept the container whole"
    );
    assert_eq!(
        s.pier.jsonpath(
            "crd networks.pier.dev",
            "{.spec.versions[0].additionalPrinterColumns[?(@.name==\"Subnet\")].description}"
        ),
        "The allocated subnet (v2)",
        "with crds.manage=true helm upgrade upgrades the CRDs"
    );
    let history = s.helm.ok(json!({"action": "history", "release": "pier"}));
    assert_eq!(
        revisions(&history),
        vec![
            (json!(1), json!("superseded")),
            (json!(2), json!("deployed"))
        ]
    );
    second
}

/// Helm's rollback of an upgrade the API server refuses.
fn roll_back_a_refused_upgrade(s: &mut Session, chart_v2: &str) {
    // Rollback. helm-sdkpy 0.1.32's `Rollback` fails before it reaches any API server (its Go
    // shim never sets Helm 4's wait strategy: "wait strategy not set"), so Helm's rollback runs
    // here as `helm upgrade --rollback-on-failure` runs it: an upgrade the API server refuses
    // (an annotation that is not a string: 400, as from kube-apiserver) after the DaemonSet
    // took its new log level, rolled back to revision 2 by Helm, which then waits for the
    // workloads to be ready (reported by the stand-in for their controllers).
    let rollouts = RolloutStandIn::start(&s.pier);
    let failed = s.helm.call(
        json!({"action": "upgrade", "release": "pier", "chart": chart_v2,
        "rollback_on_failure": true, "skip_schema_validation": true,
        "values": {"operator": {"replicas": 1, "podAnnotations": {"example.com/count": 5}},
            "logLevel": "trace", "crds": {"manage": true}}}),
    );
    let error = failed.expect_err("the API server refuses an annotation that is not a string");
    assert!(
        error.contains("cannot be handled as a Deployment") && error.contains("rollback"),
        "{error}"
    );
    assert_eq!(
        log_level(&s.pier, "daemonset.apps/pier-node"),
        "debug",
        "rolled back"
    );
    assert_eq!(operator_log_level(&s.pier), "debug");
    let history = s.helm.ok(json!({"action": "history", "release": "pier"}));
    assert_eq!(
        revisions(&history),
        vec![
            (json!(1), json!("superseded")),
            (json!(2), json!("superseded")),
            (json!(3), json!("failed")),
            (json!(4), json!("deployed")),
        ]
    );
    let status = s.helm.ok(json!({"action": "status", "release": "pier"}));
    assert_eq!(status["version"], 4, "{status}");
    assert_stored(&s.pier, &status);
    drop(rollouts);
    let table = s
        .pier
        .kubectl_ok(&format!("get deployment.apps pier-operator -n {NAMESPACE}"));
    assert!(
        table
            .lines()
            .nth(1)
            .is_some_and(|row| row.split_whitespace().nth(2) == Some("1")),
        "the status subresource's readyReplicas in kubectl's table: {table}"
    );
}

/// `helm uninstall` of release `pier` (whose revisions had `objects`).
fn uninstall_keeps_the_crds(s: &mut Session, objects: &[Value]) {
    // Uninstall: everything but the CRDs goes, Helm's records too.
    s.helm.ok(json!({"action": "uninstall", "release": "pier"}));
    for object in objects {
        if object["kind"] == "CustomResourceDefinition" {
            continue;
        }
        assert!(gone(&s.pier, object), "{} is left", kubectl_ref(object));
    }
    for crd in PIER_CRDS {
        s.pier.kubectl_ok(&format!("get crd {crd}"));
    }
    let records = s
        .pier
        .kubectl_ok(&format!("get secrets -n {NAMESPACE} -l owner=helm -o name"));
    assert_eq!(records.trim(), "", "Helm's records are gone");
    assert_eq!(s.helm.ok(json!({"action": "list"})), json!([]));
}

/// A second release with every object-changing value toggled, with server-side apply.
fn install_with_every_object_toggled(s: &mut Session) {
    // A second install with every value toggled that changes which objects exist: metrics
    // Services and a ServiceMonitor (its CRD installed first, as the Prometheus Operator
    // would), no PodDisruptionBudget, the unprivileged node daemon, the CRDs as templates
    // (kept by the first release: taken over again). With server-side apply, the helm CLI's
    // default for new installs; this release's upgrade then applies too.
    s.pier.apply(SERVICE_MONITOR_CRD);
    let toggled_values = json!({
        "crds": {"manage": true},
        "metrics": {"service": true, "serviceMonitor": {"enabled": true}},
        "operator": {"podDisruptionBudget": false, "defaultNetworks": false},
        "node": {"privileged": false, "netRaw": true, "hostPID": false, "netnsTargets": true},
    });
    let toggled = s.helm.ok(
        json!({"action": "install", "release": "pier2", "chart": s.chart,
        "take_ownership": true, "server_side_apply": true, "values": toggled_values}),
    );
    assert_eq!(toggled["status"], "deployed", "{toggled}");
    let all = assert_stored(&s.pier, &toggled);
    let toggled_kinds = kinds(&all);
    for kind in ["Service", "ServiceMonitor", "CustomResourceDefinition"] {
        assert!(
            toggled_kinds.contains(&kind.to_owned()),
            "a {kind}: {toggled_kinds:?}"
        );
    }
    assert!(!toggled_kinds.contains(&"PodDisruptionBudget".to_owned()));
    let node = find(&all, "DaemonSet", "node");
    let security = &node["spec"]["template"]["spec"]["containers"][0]["securityContext"];
    assert!(
        security.get("privileged").is_none() && security["capabilities"]["drop"] == json!(["ALL"]),
        "the unprivileged mode: {security}"
    );
    let operator = format!(
        "deployment.apps/{}",
        find(&all, "Deployment", "operator")["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
    );
    // The field manager is Helm's program name: `helm` from the CLI, `python3` here.
    let managed = s.pier.jsonpath(
        &format!("{operator} -n {NAMESPACE} --show-managed-fields"),
        "{.metadata.managedFields[*].operation}",
    );
    assert_eq!(
        managed, "Apply",
        "server-side apply: one applier owns it all"
    );
    let mut warn = toggled_values.clone();
    warn["logLevel"] = json!("warn");
    let upgraded = s.helm.ok(
        json!({"action": "upgrade", "release": "pier2", "chart": s.chart,
        "values": warn}),
    );
    assert_eq!(upgraded["version"], 2, "{upgraded}");
    assert_stored(&s.pier, &upgraded);
    assert_eq!(log_level(&s.pier, &operator), "warn");
    s.helm
        .ok(json!({"action": "uninstall", "release": "pier2"}));
    for object in &all {
        if object["kind"] != "CustomResourceDefinition" {
            assert!(gone(&s.pier, object), "{} is left", kubectl_ref(object));
        }
    }
}

#[test]
fn helm_installs_upgrades_rolls_back_and_uninstalls_the_chart() {
    let pier = Pier::up("helm", &[]);
    let helm = Helm::start(&pier);
    let chart = root().join("charts/pier").display().to_string();
    let mut s = Session { pier, helm, chart };
    let first = install_with_the_defaults(&mut s);
    let dir = tempfile::tempdir().expect("temp dir");
    let chart_v2 = chart_with_changed_crd(dir.path()).display().to_string();
    let second = upgrade_with_other_values(&mut s, &chart_v2);
    roll_back_a_refused_upgrade(&mut s, &chart_v2);
    let objects: Vec<Value> = first.into_iter().chain(second).collect();
    uninstall_keeps_the_crds(&mut s, &objects);
    install_with_every_object_toggled(&mut s);
}
