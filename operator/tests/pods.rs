//! Pods attached by annotation (`pier.dev/networks`): the operator makes one Endpoint per entry,
//! owned by the Pod, connects and disconnects as the annotation changes, deletes them with the
//! Pod (no garbage collector runs here, as in `pier up`), says what is wrong with a bad
//! annotation on the Pod (Event and condition), and sets the Pod condition `pier.dev/attached`
//! only once every Endpoint of the Pod is attached.

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use pier_crds::pod::{ATTACHED_CONDITION, NETWORKS_ANNOTATION, POD_LABEL, made_for};
use pier_crds::{Endpoint, Network};
use serde_json::{Value, json};

/// A Pod on the cluster's node with the annotation (if any) and the readiness gate.
fn pod(name: &str, annotation: Option<&str>, extra_spec: Value) -> Pod {
    let mut pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"nodeName": NODE, "containers": [{"name": "app", "image": "busybox"}],
                 "readinessGates": [{"conditionType": ATTACHED_CONDITION}]}});
    if let Some(text) = annotation {
        pod["metadata"]["annotations"] = json!({NETWORKS_ANNOTATION: text});
    }
    if let (Some(spec), Some(extra)) = (pod["spec"].as_object_mut(), extra_spec.as_object()) {
        spec.extend(extra.clone());
    }
    object(pod)
}

/// The Pod's `pier.dev/attached` condition: (status, reason, message).
fn attached(pod: &Pod) -> Option<(String, String, String)> {
    pod.status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == ATTACHED_CONDITION)
        .map(|c| {
            (
                c.status.clone(),
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
            )
        })
}

async fn wait_attached(pods: &Api<Pod>, name: &str, status: &str, reason: &str) -> String {
    let pod = wait_for(
        pods,
        name,
        &format!("{ATTACHED_CONDITION}={status} ({reason})"),
        |p| attached(p).is_some_and(|c| c.0 == status && c.1 == reason),
    )
    .await;
    attached(&pod).map(|c| c.2).unwrap_or_default()
}

/// Says what the node agent says once the interface exists: `Attached=True`, as `pier-node`.
async fn node_attaches(eps: &Api<Endpoint>, name: &str) {
    let status = json!({"apiVersion": "pier.dev/v1alpha1", "kind": "Endpoint",
        "status": {"conditions": [{"type": "Attached", "status": "True", "reason": "Attached",
            "message": "interface exists", "lastTransitionTime": "2026-12-05T00:00:00Z"}]}});
    eps.patch_status(
        name,
        &PatchParams::apply("pier-node").force(),
        &Patch::Apply(&status),
    )
    .await
    .expect("Attached written");
}

/// The names of the Endpoints labelled for Pod `name`.
async fn endpoints_of(eps: &Api<Endpoint>, name: &str) -> Vec<String> {
    let mut names: Vec<String> = eps
        .list(&kube::api::ListParams::default().labels(&format!("{POD_LABEL}={name}")))
        .await
        .expect("endpoints listed")
        .items
        .into_iter()
        .filter_map(|e| e.metadata.name)
        .collect();
    names.sort();
    names
}

async fn networks(client: &kube::Client, names: &[&str]) {
    let nets: Api<Network> = Api::all(client.clone());
    for name in names {
        create(&nets, &network(name, json!({}))).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_annotated_pod_gets_endpoints_it_owns_and_is_ready_once_all_are_attached() {
    let (_server, client) = cluster().await;
    let _op = Operator::start(&client, config("op-1"));
    networks(&client, &["workshop-tage", "ch-open"]).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let eps: Api<Endpoint> = Api::namespaced(client.clone(), "default");
    let annotation =
        r#"[{"network": "workshop-tage", "aliases": ["web"]}, {"network": "ch-open"}]"#;
    let web = create(&pods, &pod("web-1", Some(annotation), json!({}))).await;

    let tage = allocated(&eps, "web-1-workshop-tage").await;
    let open = allocated(&eps, "web-1-ch-open").await;
    let owner = made_for(&tage.metadata).expect("owned by the Pod");
    assert_eq!(owner.uid, web.metadata.uid.clone().unwrap_or_default());
    assert_eq!(owner.name, "web-1");
    let status = tage.status.clone().unwrap_or_default();
    assert_eq!(status.interface.as_deref(), Some("net1"));
    assert_eq!(
        status.default_route,
        Some(false),
        "the Pod's own eth0 keeps it"
    );
    assert_eq!(
        status.dns_names,
        ["web-1", "web"],
        "the Pod's name, then the aliases"
    );
    assert_eq!(
        open.status.and_then(|s| s.interface).as_deref(),
        Some("net2")
    );
    assert_eq!(
        endpoints_of(&eps, "web-1").await,
        ["web-1-ch-open", "web-1-workshop-tage"]
    );

    // Not ready while an interface is missing; ready once the node has made both.
    let waiting = wait_attached(&pods, "web-1", "False", "Attaching").await;
    assert!(waiting.contains("is not attached"), "{waiting}");
    node_attaches(&eps, "web-1-workshop-tage").await;
    wait_for(&pods, "web-1", "waiting for ch-open alone", |p| {
        attached(p).is_some_and(|c| c.0 == "False" && c.2.contains("endpoint web-1-ch-open"))
    })
    .await;
    node_attaches(&eps, "web-1-ch-open").await;
    let message = wait_attached(&pods, "web-1", "True", "Attached").await;
    assert_eq!(message, "attached: net1 on workshop-tage, net2 on ch-open");
    let note = event_with(&client, "default", "web-1", "Connected").await;
    assert!(note.contains("to network"), "{note}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_the_annotation_connects_and_disconnects_and_deleting_the_pod_removes_them() {
    let (_server, client) = cluster().await;
    let _op = Operator::start(&client, config("op-1"));
    networks(&client, &["a", "b"]).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let eps: Api<Endpoint> = Api::namespaced(client.clone(), "default");
    create(&pods, &pod("app", Some("a"), json!({}))).await;
    allocated(&eps, "app-a").await;

    let annotate = |text: &'static str| {
        let pods = pods.clone();
        async move {
            let patch = json!({"metadata": {"annotations": {NETWORKS_ANNOTATION: text}}});
            pods.patch("app", &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .expect("annotated");
        }
    };
    // Connect b: a keeps net1, b gets net2.
    annotate("a, b").await;
    let b = allocated(&eps, "app-b").await;
    assert_eq!(b.status.and_then(|s| s.interface).as_deref(), Some("net2"));
    // Disconnect a: its Endpoint goes, b stays.
    annotate("b").await;
    wait_gone(&eps, "app-a").await;
    let note = event_with(&client, "default", "app", "Disconnected").await;
    assert!(note.contains("app-a"), "{note}");
    assert_eq!(endpoints_of(&eps, "app").await, ["app-b"]);
    // Reconnect a: the lowest free name again.
    annotate("b, a").await;
    let a = allocated(&eps, "app-a").await;
    assert_eq!(a.status.and_then(|s| s.interface).as_deref(), Some("net1"));

    // The Pod goes: so do its Endpoints, and their addresses are free again.
    pods.delete("app", &DeleteParams::default())
        .await
        .expect("pod deleted");
    wait_gone(&eps, "app-a").await;
    wait_gone(&eps, "app-b").await;
    let nets: Api<Network> = Api::all(client.clone());
    wait_for(&nets, "a", "no endpoints", |n| {
        n.status.as_ref().is_some_and(|s| s.endpoints == 0)
    })
    .await;

    // A Pod re-created under the same name gets Endpoints of its own.
    let again = create(&pods, &pod("app", Some("a"), json!({}))).await;
    let a = allocated(&eps, "app-a").await;
    assert_eq!(
        made_for(&a.metadata).map(|o| o.uid.clone()),
        again.metadata.uid
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_annotation_is_said_on_the_pod_and_breaks_nothing_else() {
    let (_server, client) = cluster().await;
    let _op = Operator::start(&client, config("op-1"));
    networks(&client, &["a"]).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let eps: Api<Endpoint> = Api::namespaced(client.clone(), "default");

    // Unreadable: a typo in a field name.
    create(
        &pods,
        &pod(
            "typo",
            Some(r#"[{"network": "a", "alias": ["web"]}]"#),
            json!({}),
        ),
    )
    .await;
    let message = wait_attached(&pods, "typo", "False", "InvalidAnnotation").await;
    assert!(message.contains("unknown field `alias`"), "{message}");
    let note = event_with(&client, "default", "typo", "InvalidAnnotation").await;
    assert!(note.contains("unknown field"), "{note}");

    // A value the Endpoint schema refuses: the API's words, on the Pod.
    create(
        &pods,
        &pod(
            "bad-alias",
            Some(r#"[{"network": "a", "aliases": ["Not_A_Name"]}]"#),
            json!({}),
        ),
    )
    .await;
    let message = wait_attached(&pods, "bad-alias", "False", "InvalidAnnotation").await;
    assert!(
        message.contains("bad-alias-a") && message.contains("aliases"),
        "{message}"
    );

    // A hostNetwork Pod is the node's namespace: nothing to attach.
    create(&pods, &pod("host", Some("a"), json!({"hostNetwork": true}))).await;
    let message = wait_attached(&pods, "host", "False", "InvalidAnnotation").await;
    assert!(message.contains("hostNetwork"), "{message}");

    // A good Pod beside them is unaffected.
    create(&pods, &pod("good", Some("a"), json!({}))).await;
    allocated(&eps, "good-a").await;

    // Breaking a working Pod's annotation keeps what it has.
    let patch = json!({"metadata": {"annotations": {NETWORKS_ANNOTATION: "a, a"}}});
    pods.patch("good", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("annotated");
    let message = wait_attached(&pods, "good", "False", "InvalidAnnotation").await;
    assert!(message.contains("twice"), "{message}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(eps.get_opt("good-a").await.expect("get").is_some(), "kept");
    assert_eq!(endpoints_of(&eps, "typo").await, Vec::<String>::new());
    assert_eq!(endpoints_of(&eps, "host").await, Vec::<String>::new());
}
