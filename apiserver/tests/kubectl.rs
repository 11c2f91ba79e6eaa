//! The real `kubectl` against the HTTPS server, with the kubeconfig the server writes.
//! kubectl must be installed (CI installs it); these tests fail loudly otherwise.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pier_apiserver::{ApiServer, Options};

struct Kubectl {
    kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
    _server: ApiServer,
}

impl Kubectl {
    async fn start() -> Kubectl {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = ApiServer::in_memory_with(Options::for_node("node-a"))
            .await
            .expect("server");
        let (addr, _task) = server
            .serve_https("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("https");
        let kubeconfig = dir.path().join("kubeconfig");
        server
            .write_kubeconfig(&kubeconfig, &format!("https://{addr}"))
            .expect("kubeconfig");
        Kubectl {
            kubeconfig,
            _dir: dir,
            _server: server,
        }
    }

    async fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let kubeconfig = self.kubeconfig.clone();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let stdin = stdin.map(String::from);
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut cmd = Command::new("kubectl");
            cmd.arg("--kubeconfig")
                .arg(&kubeconfig)
                .args(&args)
                .env("HOME", kubeconfig.parent().unwrap_or(Path::new("/tmp")))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .stdin(std::process::Stdio::piped());
            let mut child = cmd
                .spawn()
                .expect("kubectl must be installed to run these tests");
            if let Some(input) = stdin {
                child
                    .stdin
                    .take()
                    .expect("stdin")
                    .write_all(input.as_bytes())
                    .expect("write stdin");
            } else {
                drop(child.stdin.take());
            }
            child.wait_with_output().expect("kubectl ran")
        })
        .await
        .expect("join")
    }

    /// Run and expect success; returns stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args, None).await;
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    async fn ok_stdin(&self, args: &[&str], input: &str) -> String {
        let out = self.run(args, Some(input)).await;
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run and expect failure; returns stderr.
    async fn fails(&self, args: &[&str], input: Option<&str>) -> String {
        let out = self.run(args, input).await;
        assert!(!out.status.success(), "kubectl {args:?} should have failed");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    async fn apply_crds(&self) {
        let crds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
        let out = self
            .ok(&["apply", "-f", crds.to_str().expect("utf-8 path")])
            .await;
        assert!(out.contains("networks.pier.dev created"), "{out}");
    }
}

const NETWORK: &str = "apiVersion: pier.dev/v1alpha1
kind: Network
metadata: {name: workshop-tage}
spec:
  subnet: 172.18.0.0/16
  gateway: 172.18.0.1
";

/// The stored built-in kinds are described by their types' schemas (k8s-openapi's), down to the
/// fields of a Deployment's containers, as kube-apiserver's OpenAPI describes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_explain_walks_the_built_in_kinds_schemas() {
    let k = Kubectl::start().await;
    let out = k
        .ok(&["explain", "deployment.spec.template.spec.containers.image"])
        .await;
    assert!(out.contains("FIELD: image <string>"), "{out}");
    let out = k.ok(&["explain", "secret.data"]).await;
    assert!(out.contains("FIELD: data <map[string]string>"), "{out}");
    let out = k.ok(&["explain", "clusterrole.rules.verbs"]).await;
    assert!(out.contains("FIELD: verbs <[]string>"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_get_describe_explain_patch_wait_delete() {
    let k = Kubectl::start().await;
    k.apply_crds().await;
    let out = k.ok_stdin(&["apply", "-f", "-"], NETWORK).await;
    assert!(
        out.contains("network.pier.dev/workshop-tage created"),
        "{out}"
    );

    // Table columns from additionalPrinterColumns.
    let out = k.ok(&["get", "networks"]).await;
    let header = out.lines().next().unwrap_or_default();
    for col in [
        "NAME",
        "DRIVER",
        "SCOPE",
        "SUBNET",
        "ENDPOINTS",
        "READY",
        "AGE",
    ] {
        assert!(header.contains(col), "{out}");
    }
    assert!(out.contains("workshop-tage   bridge"), "{out}");
    let wide = k.ok(&["get", "pnet", "-o", "wide"]).await;
    assert!(wide.contains("GATEWAY"), "{wide}");
    let all = k.ok(&["get", "pier"]).await;
    assert!(all.contains("network.pier.dev/workshop-tage"), "{all}");

    let out = k.ok(&["describe", "network", "workshop-tage"]).await;
    assert!(out.contains("Subnet:    172.18.0.0/16"), "{out}");
    let out = k.ok(&["explain", "networks.spec.subnet"]).await;
    assert!(out.contains("FIELD: subnet <string>"), "{out}");

    let out = k
        .ok(&[
            "get",
            "network",
            "workshop-tage",
            "-o",
            "jsonpath={.spec.driver}",
        ])
        .await;
    assert_eq!(out, "bridge");
    let out = k
        .ok(&["get", "network", "workshop-tage", "-o", "yaml"])
        .await;
    assert!(
        out.contains("uid:") && out.contains("generation: 1"),
        "{out}"
    );

    k.ok(&[
        "patch",
        "network",
        "workshop-tage",
        "--type=merge",
        "-p",
        r#"{"spec":{"mtu":1400}}"#,
    ])
    .await;
    let out = k
        .ok(&[
            "get",
            "network",
            "workshop-tage",
            "-o",
            "jsonpath={.spec.mtu} {.metadata.generation}",
        ])
        .await;
    assert_eq!(out, "1400 2");

    // Status through the subresource, then wait for the condition.
    k.ok(&[
        "patch", "network", "workshop-tage", "--subresource=status", "--type=merge", "-p",
        r#"{"status":{"subnet":"172.18.0.0/16","conditions":[{"type":"Ready","status":"True","reason":"Allocated","message":"","lastTransitionTime":"2026-01-01T00:00:00Z"}]}}"#,
    ])
    .await;
    let out = k
        .ok(&[
            "wait",
            "--for=condition=Ready",
            "network/workshop-tage",
            "--timeout=10s",
        ])
        .await;
    assert!(out.contains("condition met"), "{out}");
    let out = k.ok(&["get", "networks", "--no-headers"]).await;
    assert!(
        out.contains("172.18.0.0/16") && out.contains("True"),
        "{out}"
    );

    // Delete with a finalizer held, then released.
    k.ok(&[
        "patch",
        "network",
        "workshop-tage",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":["pier.dev/operator"]}}"#,
    ])
    .await;
    k.ok(&["delete", "network", "workshop-tage", "--wait=false"])
        .await;
    let out = k
        .ok(&[
            "get",
            "network",
            "workshop-tage",
            "-o",
            "jsonpath={.metadata.deletionTimestamp}",
        ])
        .await;
    assert!(
        !out.is_empty(),
        "deletionTimestamp set while the finalizer is held"
    );
    k.ok(&[
        "patch",
        "network",
        "workshop-tage",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ])
    .await;
    let err = k.fails(&["get", "network", "workshop-tage"], None).await;
    assert!(
        err.contains("NotFound") || err.contains("not found"),
        "{err}"
    );

    // The local node, with its address.
    let out = k
        .ok(&[
            "get",
            "nodes",
            "-o",
            "jsonpath={.items[0].metadata.name} {.items[0].status.addresses[0].type}",
        ])
        .await;
    assert_eq!(out, "node-a InternalIP");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_server_side_apply_conflicts_and_force() {
    let k = Kubectl::start().await;
    k.apply_crds().await;
    let out = k
        .ok_stdin(&["apply", "--server-side", "-f", "-"], NETWORK)
        .await;
    assert!(out.contains("serverside-applied"), "{out}");
    let other = "apiVersion: pier.dev/v1alpha1
kind: Network
metadata: {name: workshop-tage}
spec:
  subnet: 172.18.0.0/16
  mtu: 9000
";
    k.ok_stdin(
        &["apply", "--server-side", "--field-manager=ops", "-f", "-"],
        other,
    )
    .await;
    let changed = other.replace("9000", "1400");
    let err = k
        .fails(
            &["apply", "--server-side", "--field-manager=other", "-f", "-"],
            Some(&changed),
        )
        .await;
    assert!(err.contains("conflict with \"ops\""), "{err}");
    assert!(err.contains(".spec.mtu"), "{err}");
    k.ok_stdin(
        &[
            "apply",
            "--server-side",
            "--field-manager=other",
            "--force-conflicts",
            "-f",
            "-",
        ],
        &changed,
    )
    .await;
    let out = k
        .ok(&[
            "get",
            "network",
            "workshop-tage",
            "-o",
            "jsonpath={.spec.mtu}",
        ])
        .await;
    assert_eq!(out, "1400");
    let out = k
        .ok(&[
            "get",
            "network",
            "workshop-tage",
            "--show-managed-fields",
            "-o",
            "jsonpath={.metadata.managedFields[*].manager}",
        ])
        .await;
    assert!(
        out.contains("kubectl") && out.contains("ops") && out.contains("other"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_invalid_objects_are_rejected_with_the_schema_message() {
    let k = Kubectl::start().await;
    k.apply_crds().await;
    let bad = NETWORK.replace("172.18.0.0/16", "172.18.0.1/16");
    let err = k.fails(&["apply", "-f", "-"], Some(&bad)).await;
    assert!(err.contains("is invalid"), "{err}");
    assert!(err.contains("subnet must be a network address"), "{err}");
    let bad = NETWORK.replace("172.18.0.0/16", "nonsense");
    let err = k.fails(&["apply", "-f", "-"], Some(&bad)).await;
    assert!(err.contains("spec.subnet"), "{err}");
    // kubectl asks for strict field validation: unknown fields are errors, not silently dropped.
    let typo = format!("{NETWORK}  mtuu: 1400\n");
    let err = k.fails(&["apply", "-f", "-"], Some(&typo)).await;
    assert!(err.contains("unknown field \"spec.mtuu\""), "{err}");
    // Without validation they are pruned, as the real server does.
    k.ok_stdin(&["apply", "--validate=false", "-f", "-"], &typo)
        .await;
    let out = k
        .ok(&["get", "network", "workshop-tage", "-o", "jsonpath={.spec}"])
        .await;
    assert!(!out.contains("mtuu"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_watch_prints_rows_and_describe_shows_recorded_events() {
    let k = Kubectl::start().await;
    k.apply_crds().await;
    k.ok_stdin(&["apply", "-f", "-"], NETWORK).await;
    // An event as kube-rs's recorder writes it (events.k8s.io/v1).
    let uid = k
        .ok(&[
            "get",
            "network",
            "workshop-tage",
            "-o",
            "jsonpath={.metadata.uid}",
        ])
        .await;
    let event = r#"{"apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": "workshop-tage.1", "namespace": "default"},
        "eventTime": "2026-01-01T00:00:00.000000Z", "type": "Normal", "reason": "Allocated",
        "action": "Allocate", "note": "subnet 172.18.0.0/16", "reportingController": "pier-operator",
        "reportingInstance": "pier-operator-1",
        "regarding": {"apiVersion": "pier.dev/v1alpha1", "kind": "Network", "name": "workshop-tage", "uid": "UID"}}"#
        .replace("UID", &uid);
    k.ok_stdin(&["create", "-f", "-"], &event).await;
    let out = k.ok(&["describe", "network", "workshop-tage"]).await;
    assert!(
        out.contains("Allocated") && out.contains("subnet 172.18.0.0/16"),
        "{out}"
    );

    // `kubectl get -w`: wait for the initial row, change the object, expect a second row.
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&k.kubeconfig)
        .args(["get", "networks", "-w"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("kubectl -w");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    async fn next_line(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
        tokio::time::timeout(std::time::Duration::from_secs(30), rx.recv())
            .await
            .expect("kubectl -w printed in time")
            .expect("kubectl -w still running")
    }
    let header = next_line(&mut rx).await;
    assert!(
        header.contains("DRIVER") && header.contains("SUBNET"),
        "{header}"
    );
    let first = next_line(&mut rx).await;
    assert!(
        first.starts_with("workshop-tage") && first.contains("bridge"),
        "{first}"
    );
    k.ok(&["label", "network", "workshop-tage", "changed=yes"])
        .await;
    let second = next_line(&mut rx).await;
    assert!(
        second.starts_with("workshop-tage") && second.contains("bridge"),
        "{second}"
    );
    child.kill().expect("stop kubectl -w");
    child.wait().expect("reaped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_without_the_token_is_unauthorized() {
    let k = Kubectl::start().await;
    let err = k.fails(&["get", "namespaces", "--token=wrong"], None).await;
    assert!(err.contains("You must be logged in"), "{err}");
    let out = k.ok(&["get", "namespaces"]).await;
    assert!(out.contains("default"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_bad_names_are_refused_as_kube_apiserver_refuses_them() {
    let k = Kubectl::start().await;
    k.apply_crds().await;
    let bad = NETWORK.replace("workshop-tage", "Bad_Name");
    let err = k.fails(&["apply", "-f", "-"], Some(&bad)).await;
    assert!(
        err.contains(
            "metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain must \
             consist of lower case alphanumeric characters, '-' or '.', and must start and end \
             with an alphanumeric character"
        ),
        "{err}"
    );
    let out = k.ok(&["get", "networks", "-o", "name"]).await;
    assert!(!out.contains("Bad_Name"), "{out}");
    // Namespaces are labels: no dots.
    let ns = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a.b}\n";
    let err = k.fails(&["apply", "-f", "-"], Some(ns)).await;
    assert!(
        err.contains("metadata.name: Invalid value: \"a.b\": must not contain dots"),
        "{err}"
    );
}

/// kubectl's typed commands send protobuf bodies (`application/vnd.kubernetes.protobuf`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_create_namespace_configmap_and_secret() {
    let k = Kubectl::start().await;
    let out = k.ok(&["create", "namespace", "demo"]).await;
    assert!(out.contains("namespace/demo created"), "{out}");
    let ns: serde_json::Value =
        serde_json::from_str(&k.ok(&["get", "namespace", "demo", "-o", "json"]).await)
            .expect("JSON");
    assert_eq!(ns["status"]["phase"], "Active");
    assert!(ns["metadata"].get("generateName").is_none(), "{ns}");

    let out = k
        .ok(&[
            "create",
            "configmap",
            "settings",
            "-n",
            "demo",
            "--from-literal=mode=fast",
        ])
        .await;
    assert!(out.contains("configmap/settings created"), "{out}");
    let blob = k.kubeconfig.with_file_name("blob");
    std::fs::write(&blob, [0u8, 1, 2, 255]).expect("blob written");
    let from_file = format!("--from-file=blob={}", blob.display());
    k.ok(&["create", "configmap", "binary", "-n", "demo", &from_file])
        .await;
    let data = k
        .ok(&[
            "get",
            "configmap",
            "settings",
            "-n",
            "demo",
            "-o",
            "jsonpath={.data.mode}",
        ])
        .await;
    assert_eq!(data, "fast");
    let binary = k
        .ok(&[
            "get",
            "cm",
            "binary",
            "-n",
            "demo",
            "-o",
            "jsonpath={.binaryData.blob}",
        ])
        .await;
    assert_eq!(binary, "AAEC/w==");

    let out = k
        .ok(&[
            "create",
            "secret",
            "generic",
            "creds",
            "-n",
            "demo",
            "--from-literal=password=hunter2",
        ])
        .await;
    assert!(out.contains("secret/creds created"), "{out}");
    let secret = k
        .ok(&[
            "get",
            "secret",
            "creds",
            "-n",
            "demo",
            "-o",
            "jsonpath={.type} {.data.password}",
        ])
        .await;
    assert_eq!(secret, "Opaque aHVudGVyMg==");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_auth_can_i_says_yes() {
    let k = Kubectl::start().await;
    k.apply_crds().await;
    let out = k
        .ok(&["auth", "can-i", "create", "endpoints.pier.dev"])
        .await;
    assert_eq!(out.trim(), "yes");
    let out = k.ok(&["auth", "can-i", "delete", "namespaces"]).await;
    assert_eq!(out.trim(), "yes");
    let out = k.ok(&["auth", "can-i", "--list"]).await;
    assert!(out.contains("*.*"), "{out}");
}
