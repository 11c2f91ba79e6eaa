//! The kube-rs client against the in-process service: CRUD, semantics, patches, apply, watch.

mod common;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::core::{ApiResource, GroupVersionKind};
use pier_apiserver::event_budget::EventBudget;
use pier_apiserver::{ApiServer, Options};
use serde_json::{Value, json};

fn networks(client: &kube::Client) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("pier.dev", "v1alpha1", "Network"),
        "networks",
    );
    Api::all_with(client.clone(), &ar)
}

fn endpoints(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("pier.dev", "v1alpha1", "Endpoint"),
        "endpoints",
    );
    Api::namespaced_with(client.clone(), ns, &ar)
}

fn obj(v: Value) -> DynamicObject {
    serde_json::from_value(v).expect("valid object")
}

fn network(name: &str, spec: Value) -> DynamicObject {
    obj(
        json!({"apiVersion": "pier.dev/v1alpha1", "kind": "Network", "metadata": {"name": name}, "spec": spec}),
    )
}

fn code(e: kube::Error) -> u16 {
    match e {
        kube::Error::Api(s) => s.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn create_get_list_defaults_and_metadata() {
    let (_s, client) = common::server_with_crds(Options::default()).await;
    let api = networks(&client);
    let created = api
        .create(
            &PostParams::default(),
            &network("a", json!({"subnet": "172.18.0.0/16"})),
        )
        .await
        .expect("created");
    let m = &created.metadata;
    assert!(m.uid.is_some());
    assert!(m.creation_timestamp.is_some());
    assert_eq!(m.generation, Some(1));
    assert_eq!(created.data["spec"]["driver"], "bridge", "defaulted");
    assert_eq!(created.data["spec"]["dns"], true, "defaulted");
    let got = api.get("a").await.expect("get");
    assert_eq!(got.metadata.resource_version, m.resource_version);
    let e = api
        .create(&PostParams::default(), &network("a", json!({})))
        .await
        .expect_err("exists");
    assert_eq!(code(e), 409);
    assert_eq!(code(api.get("nope").await.expect_err("missing")), 404);
    let list = api.list(&ListParams::default()).await.expect("list");
    assert_eq!(list.items.len(), 1);
    // generateName
    let mut g = network("", json!({}));
    g.metadata.name = None;
    g.metadata.generate_name = Some("gen-".into());
    let generated = api
        .create(&PostParams::default(), &g)
        .await
        .expect("generated");
    let name = generated.metadata.name.expect("named");
    assert!(name.starts_with("gen-") && name.len() == 9, "{name}");
}

#[tokio::test]
async fn generation_status_subresource_and_conflicts() {
    let (_s, client) = common::server_with_crds(Options::default()).await;
    let api = networks(&client);
    let created = api
        .create(&PostParams::default(), &network("n", json!({"mtu": 1500})))
        .await
        .expect("created");
    // Labels do not bump generation.
    let p = api
        .patch(
            "n",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
        )
        .await
        .expect("label patch");
    assert_eq!(p.metadata.generation, Some(1));
    // Status on the main resource is ignored.
    let p = api
        .patch(
            "n",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"mtu": 9000}, "status": {"subnet": "x"}})),
        )
        .await
        .expect("spec patch");
    assert_eq!(p.metadata.generation, Some(2));
    assert!(p.data.get("status").is_none());
    // Spec on /status is ignored, status is written, generation unchanged.
    let s = api
        .patch_status(
            "n",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"mtu": 1}, "status": {"subnet": "10.0.0.0/24"}})),
        )
        .await
        .expect("status patch");
    assert_eq!(s.data["spec"]["mtu"], 9000);
    assert_eq!(s.data["status"]["subnet"], "10.0.0.0/24");
    assert_eq!(s.metadata.generation, Some(2));
    // A stale resourceVersion conflicts.
    let mut stale = created.clone();
    stale.data["spec"]["mtu"] = json!(1400);
    let e = api
        .replace("n", &PostParams::default(), &stale)
        .await
        .expect_err("stale");
    assert_eq!(code(e), 409);
    // Custom resources allow no unconditional update.
    let mut unpinned = created.clone();
    unpinned.metadata.resource_version = None;
    let e = api
        .replace("n", &PostParams::default(), &unpinned)
        .await
        .expect_err("needs a resourceVersion");
    assert_eq!(code(e), 422);
    // JSON patch.
    let jp: json_patch::Patch =
        serde_json::from_value(json!([{"op": "replace", "path": "/spec/mtu", "value": 1450}]))
            .expect("patch");
    let j = api
        .patch("n", &PatchParams::default(), &Patch::<()>::Json(jp))
        .await
        .expect("json patch");
    assert_eq!(j.data["spec"]["mtu"], 1450);
}

#[tokio::test]
async fn strategic_merge_on_custom_resources_is_415() {
    let (_s, client) = common::server_with_crds(Options::default()).await;
    let api = networks(&client);
    api.create(&PostParams::default(), &network("n", json!({})))
        .await
        .expect("created");
    let e = api
        .patch(
            "n",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"mtu": 1}})),
        )
        .await
        .expect_err("415");
    assert_eq!(code(e), 415);
}

#[tokio::test]
async fn validation_rejects_with_field_paths_and_cel_messages() {
    let (_s, client) = common::server_with_crds(Options::default()).await;
    let api = networks(&client);
    let e = api
        .create(
            &PostParams::default(),
            &network("bad", json!({"subnet": "172.18.0.1/16"})),
        )
        .await
        .expect_err("invalid");
    let kube::Error::Api(status) = e else {
        panic!("api error")
    };
    assert_eq!(status.code, 422);
    assert!(
        status.message.contains("subnet must be a network address"),
        "{}",
        status.message
    );
    let e = api
        .create(
            &PostParams::default(),
            &network("bad", json!({"subnet": "nope"})),
        )
        .await
        .expect_err("invalid");
    let kube::Error::Api(status) = e else {
        panic!("api error")
    };
    assert!(status.message.contains("spec.subnet"), "{}", status.message);
    // Transition rule: the driver is immutable.
    api.create(
        &PostParams::default(),
        &network("n", json!({"driver": "bridge"})),
    )
    .await
    .expect("created");
    let e = api
        .patch(
            "n",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"driver": "host"}})),
        )
        .await
        .expect_err("immutable");
    let kube::Error::Api(status) = e else {
        panic!("api error")
    };
    assert!(
        status.message.contains("driver is immutable"),
        "{}",
        status.message
    );
    // Unknown fields are pruned.
    let p = api
        .patch(
            "n",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"bogus": 1}})),
        )
        .await
        .expect("pruned");
    assert!(p.data["spec"].get("bogus").is_none());
}

#[tokio::test]
async fn finalizers_hold_deletion() {
    let (_s, client) = common::server_with_crds(Options::default()).await;
    let api = networks(&client);
    let mut n = network("f", json!({}));
    n.metadata.finalizers = Some(vec!["pier.dev/operator".into()]);
    api.create(&PostParams::default(), &n)
        .await
        .expect("created");
    api.delete("f", &DeleteParams::default())
        .await
        .expect("delete");
    let held = api.get("f").await.expect("still there");
    assert!(held.metadata.deletion_timestamp.is_some());
    api.patch(
        "f",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("release");
    assert_eq!(code(api.get("f").await.expect_err("gone")), 404);
}

#[tokio::test]
async fn delete_collection_returns_the_deleted_objects_as_a_list() {
    let (_s, client) = common::server_with_crds(Options::default()).await;
    let api = networks(&client);
    for (name, app) in [("a", "web"), ("b", "web"), ("c", "db")] {
        let mut n = network(name, json!({}));
        n.metadata.labels = Some([("app".to_string(), app.to_string())].into());
        if name == "b" {
            n.metadata.finalizers = Some(vec!["pier.dev/operator".into()]);
        }
        api.create(&PostParams::default(), &n)
            .await
            .expect("created");
    }
    let deleted = api
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels("app=web"),
        )
        .await
        .expect("deleted");
    let list = deleted.left().expect("the deleted objects, as a list");
    let mut names: Vec<String> = list
        .items
        .iter()
        .filter_map(|o| o.metadata.name.clone())
        .collect();
    names.sort();
    assert_eq!(names, ["a", "b"]);
    // As stored when deleted: the one held by its finalizer carries its deletion timestamp.
    let held = list
        .items
        .iter()
        .find(|o| o.metadata.name.as_deref() == Some("b"))
        .expect("b");
    assert!(held.metadata.deletion_timestamp.is_some());
    assert!(held.metadata.managed_fields.is_some());
    assert_eq!(code(api.get("a").await.expect_err("gone")), 404);
    assert!(
        api.get("b")
            .await
            .expect("held")
            .metadata
            .deletion_timestamp
            .is_some()
    );
    assert!(
        api.get("c")
            .await
            .expect("not selected")
            .metadata
            .deletion_timestamp
            .is_none()
    );
}

#[tokio::test]
async fn selectors_and_pagination() {
    let (_s, client) = common::server_with_crds(Options::default()).await;
    let api = networks(&client);
    for i in 0..10 {
        let mut n = network(
            &format!("n{i:02}"),
            json!({"driver": if i % 2 == 0 { "bridge" } else { "null" }}),
        );
        n.metadata.labels = Some(
            [(
                "tier".to_string(),
                if i < 5 { "a" } else { "b" }.to_string(),
            )]
            .into(),
        );
        api.create(&PostParams::default(), &n)
            .await
            .expect("created");
    }
    let count = |lp: ListParams| {
        let api = api.clone();
        async move { api.list(&lp).await.expect("list").items.len() }
    };
    assert_eq!(count(ListParams::default().labels("tier=a")).await, 5);
    assert_eq!(count(ListParams::default().labels("tier!=a")).await, 5);
    assert_eq!(
        count(ListParams::default().labels("tier in (a,b)")).await,
        10
    );
    assert_eq!(
        count(ListParams::default().labels("tier notin (a)")).await,
        5
    );
    assert_eq!(count(ListParams::default().labels("tier")).await, 10);
    assert_eq!(count(ListParams::default().labels("!tier")).await, 0);
    assert_eq!(
        count(ListParams::default().fields("metadata.name=n03")).await,
        1
    );
    assert_eq!(
        count(ListParams::default().fields("spec.driver=null")).await,
        5
    );
    assert!(
        api.list(&ListParams::default().fields("spec.mtu=1"))
            .await
            .is_err()
    );
    let mut seen = Vec::new();
    let mut lp = ListParams::default().limit(3);
    loop {
        let page = api.list(&lp).await.expect("page");
        seen.extend(page.items.iter().filter_map(|o| o.metadata.name.clone()));
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => break,
        }
    }
    assert_eq!(seen.len(), 10);
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
}

#[tokio::test]
async fn namespaced_objects_need_their_namespace() {
    let (_s, client) = common::server_with_crds(Options::default()).await;
    let ep = |name: &str| {
        obj(
            json!({"apiVersion": "pier.dev/v1alpha1", "kind": "Endpoint",
        "metadata": {"name": name}, "spec": {"network": "x", "target": {"netns": {"name": "c1", "node": "n"}}}}),
        )
    };
    endpoints(&client, "default")
        .create(&PostParams::default(), &ep("e1"))
        .await
        .expect("in default");
    let e = endpoints(&client, "nowhere")
        .create(&PostParams::default(), &ep("e1"))
        .await
        .expect_err("no namespace");
    assert_eq!(code(e), 404);
    let all: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("pier.dev", "v1alpha1", "Endpoint"),
            "endpoints",
        ),
    );
    assert_eq!(
        all.list(&ListParams::default())
            .await
            .expect("all")
            .items
            .len(),
        1
    );
    assert_eq!(
        all.list(&ListParams::default().fields("spec.network=x"))
            .await
            .expect("sel")
            .items
            .len(),
        1
    );
}

#[tokio::test]
async fn names_are_validated_like_kube_apiserver() {
    let (_s, client) = common::server_with_crds(Options::default()).await;
    let api = networks(&client);
    let invalid = |e: kube::Error| match e {
        kube::Error::Api(s) => s,
        other => panic!("expected an API error, got {other:?}"),
    };
    for bad in ["Bad_Name", "-a", "a..b", &"x".repeat(254)] {
        let e = invalid(
            api.create(&PostParams::default(), &network(bad, json!({})))
                .await
                .expect_err(bad),
        );
        assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"), "{bad}");
        assert!(
            e.message.contains("metadata.name: Invalid value:"),
            "{}",
            e.message
        );
        assert!(api.get_opt(bad).await.expect("get").is_none(), "{bad}");
    }
    // Server-side apply creates through the same check.
    let e = invalid(
        api.patch(
            "Also_Bad",
            &PatchParams::apply("test"),
            &Patch::Apply(network("Also_Bad", json!({}))),
        )
        .await
        .expect_err("apply refused"),
    );
    assert_eq!(e.code, 422);
    // Dots are fine in names, not in namespace names (labels, at most 63 characters).
    api.create(&PostParams::default(), &network("a.b-c.0", json!({})))
        .await
        .expect("a subdomain is a valid name");
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let ns = |name: &str| -> k8s_openapi::api::core::v1::Namespace {
        serde_json::from_value(json!({"metadata": {"name": name}})).expect("namespace")
    };
    for bad in ["a.b", &"n".repeat(64), "Upper"] {
        let e = invalid(
            namespaces
                .create(&PostParams::default(), &ns(bad))
                .await
                .expect_err(bad),
        );
        assert_eq!(e.code, 422, "{bad}");
    }
    namespaces
        .create(&PostParams::default(), &ns(&"n".repeat(63)))
        .await
        .expect("63 characters are fine");
    // generateName: the prefix is cut so the name stays short, and checked itself.
    let generated = api
        .create(
            &PostParams::default(),
            &obj(json!({"apiVersion": "pier.dev/v1alpha1", "kind": "Network",
                "metadata": {"generateName": format!("{}-", "g".repeat(80))}, "spec": {}})),
        )
        .await
        .expect("generated");
    let name = generated.metadata.name.expect("name");
    assert_eq!(name.len(), 63, "{name}");
    let e = invalid(
        api.create(
            &PostParams::default(),
            &obj(json!({"apiVersion": "pier.dev/v1alpha1", "kind": "Network",
                "metadata": {"generateName": "Gen-"}, "spec": {}})),
        )
        .await
        .expect_err("bad prefix"),
    );
    assert_eq!(e.code, 422);
    assert!(e.message.contains("metadata.generateName"), "{}", e.message);
}

/// An apply configuration of Network `n` with `mtu`.
fn network_mtu(mtu: u32) -> Patch<Value> {
    Patch::Apply(json!({
        "apiVersion": "pier.dev/v1alpha1", "kind": "Network", "metadata": {"name": "n"},
        "spec": {"mtu": mtu}}))
}

/// A server with Pier's CRDs where alice has applied Network `n` (MTU 1500): the server (kept
/// for the test's length), the Networks' API, and the object the apply returned.
async fn network_n_applied_by_alice() -> (ApiServer, Api<DynamicObject>, DynamicObject) {
    let (server, client) = common::server_with_crds(Options::default()).await;
    let api = networks(&client);
    let applied = api
        .patch("n", &PatchParams::apply("alice"), &network_mtu(1500))
        .await
        .expect("apply creates");
    (server, api, applied)
}

/// Each managed-fields entry of `obj` as (manager, operation, `detail` of the entry).
fn managed_entries(
    obj: DynamicObject,
    detail: fn(&ManagedFieldsEntry) -> String,
) -> Vec<(String, String, String)> {
    obj.metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .map(|e| {
            let detail = detail(&e);
            (
                e.manager.unwrap_or_default(),
                e.operation.unwrap_or_default(),
                detail,
            )
        })
        .collect()
}

#[tokio::test]
async fn server_side_apply_on_status_and_spec() {
    let (_s, api, applied) = network_n_applied_by_alice().await;
    assert_eq!(applied.data["spec"]["mtu"], 1500);
    let mf = applied
        .metadata
        .managed_fields
        .clone()
        .expect("managed fields");
    assert_eq!(mf[0].manager.as_deref(), Some("alice"));
    assert_eq!(mf[0].operation.as_deref(), Some("Apply"));
    let e = api
        .patch("n", &PatchParams::apply("bob"), &network_mtu(9000))
        .await
        .expect_err("conflict");
    let kube::Error::Api(status) = e else {
        panic!("api error")
    };
    assert_eq!(status.code, 409);
    assert!(
        status.message.contains("conflict with \"alice\""),
        "{}",
        status.message
    );
    assert!(status.message.contains(".spec.mtu"), "{}", status.message);
    let forced = api
        .patch("n", &PatchParams::apply("bob").force(), &network_mtu(9000))
        .await
        .expect("forced");
    assert_eq!(forced.data["spec"]["mtu"], 9000);
    // Status by two managers, conditions keyed by type.
    let st = |m: &str, v: Value| {
        let api = api.clone();
        let m = m.to_string();
        async move {
            api.patch_status(
                "n",
                &PatchParams::apply(&m).force(),
                &Patch::Apply(json!({
                "apiVersion": "pier.dev/v1alpha1", "kind": "Network", "metadata": {"name": "n"},
                "status": v})),
            )
            .await
        }
    };
    let cond = |t: &str| json!({"type": t, "status": "True", "reason": "R", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"});
    st(
        "pier-operator",
        json!({"subnet": "10.1.0.0/24", "conditions": [cond("Ready")]}),
    )
    .await
    .expect("operator");
    let both = st("pier-node", json!({"conditions": [cond("Attached")]}))
        .await
        .expect("node");
    assert_eq!(
        both.data["status"]["conditions"].as_array().map(Vec::len),
        Some(2)
    );
    assert_eq!(both.data["spec"]["mtu"], 9000);
    let dropped = st("pier-operator", json!({"subnet": "10.1.0.0/24"}))
        .await
        .expect("drop Ready");
    let conds = dropped.data["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(conds.len(), 1);
    assert_eq!(conds[0]["type"], "Attached");
    // No-op apply does not bump the resourceVersion.
    let again = st("pier-operator", json!({"subnet": "10.1.0.0/24"}))
        .await
        .expect("no-op");
    assert_eq!(
        again.metadata.resource_version,
        dropped.metadata.resource_version
    );
    // Apply without a field manager is rejected like the real server does.
    let e = api
        .patch("n", &PatchParams::default(), &Patch::Apply(json!({"apiVersion": "pier.dev/v1alpha1", "kind": "Network", "metadata": {"name": "n"}})))
        .await
        .expect_err("needs a manager");
    assert_eq!(code(e), 400);
}

/// An apply that changes values but not the set of fields its manager owns (a condition turning
/// True) is still that manager's `Apply`, however soon after its last one: it used to be
/// recorded as an `Update` too when the entry's time (to the second) did not move, giving every
/// Endpoint an extra `pier-operator` entry.
#[tokio::test]
async fn reapplying_changed_values_stays_one_apply_entry() {
    let (_s, api, _) = network_n_applied_by_alice().await;
    let ready = |status: &str| {
        json!({"apiVersion": "pier.dev/v1alpha1", "kind": "Network", "metadata": {"name": "n"},
        "status": {"conditions": [{"type": "Ready", "status": status, "reason": "R",
            "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})
    };
    let mut rvs = Vec::new();
    let mut last = None;
    // Four applies in a row: at least two fall within one second.
    for status in ["False", "True", "False", "True"] {
        let applied = api
            .patch_status(
                "n",
                &PatchParams::apply("pier-operator"),
                &Patch::Apply(ready(status)),
            )
            .await
            .expect("status apply");
        assert_eq!(applied.data["status"]["conditions"][0]["status"], status);
        rvs.push(applied.metadata.resource_version.clone());
        last = Some(applied);
    }
    rvs.dedup();
    assert_eq!(rvs.len(), 4, "each apply changed the object: {rvs:?}");
    let last = last.expect("four applies");
    let entries = managed_entries(last, |e| e.subresource.clone().unwrap_or_default());
    let owned = |m: &str, op: &str, sub: &str| (m.to_owned(), op.to_owned(), sub.to_owned());
    assert_eq!(
        entries,
        vec![
            owned("alice", "Apply", ""),
            owned("pier-operator", "Apply", "status")
        ]
    );
}

/// A PUT of a body built afresh (no managed fields, as `kubectl replace -f` sends) keeps the
/// object's owners and adds the writer's `Update` entry for what it changed, as kube-apiserver
/// does; the managed fields used to be dropped altogether.
#[tokio::test]
async fn replacing_without_managed_fields_keeps_the_owners() {
    let (_s, api, applied) = network_n_applied_by_alice().await;
    let mut fresh = network("n", json!({"mtu": 1500}));
    fresh.metadata.resource_version = applied.metadata.resource_version.clone();
    fresh.metadata.labels = Some([("tier".to_owned(), "web".to_owned())].into());
    let replaced = api
        .replace(
            "n",
            &PostParams {
                field_manager: Some("bob".into()),
                ..PostParams::default()
            },
            &fresh,
        )
        .await
        .expect("replaced");
    let entries = managed_entries(replaced, |e| {
        e.fields_v1
            .as_ref()
            .map(|f| f.0.to_string())
            .unwrap_or_default()
    });
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert_eq!(
        (entries[0].0.as_str(), entries[0].1.as_str()),
        ("alice", "Apply")
    );
    assert!(entries[0].2.contains("f:mtu"), "{entries:?}");
    assert_eq!(
        (entries[1].0.as_str(), entries[1].1.as_str()),
        ("bob", "Update")
    );
    assert!(entries[1].2.contains("f:tier"), "{entries:?}");
    assert!(
        !entries[1].2.contains("f:mtu"),
        "bob did not change the MTU: {entries:?}"
    );
}

/// Server-side apply of `conditions` by `manager` on pods/status of Pod `name`.
async fn apply_pod_conditions(
    pods: &Api<k8s_openapi::api::core::v1::Pod>,
    name: &str,
    manager: &str,
    conditions: Value,
) -> k8s_openapi::api::core::v1::Pod {
    pods.patch_status(
        name,
        &PatchParams::apply(manager),
        &Patch::Apply(
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "status": {"conditions": conditions}}),
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("{manager} applies {conditions}: {e}"))
}

/// `(type, status)` of every condition of `pod`, in order.
fn pod_conditions(pod: &k8s_openapi::api::core::v1::Pod) -> Vec<(String, String)> {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .map(|c| (c.type_.clone(), c.status.clone()))
        .collect()
}

#[tokio::test]
async fn pod_conditions_are_keyed_by_type_for_server_side_apply() {
    use k8s_openapi::api::core::v1::Pod;
    let (_s, client) = common::server_with_crds(Options::for_node("node-a")).await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "web"}, "spec": {
        "nodeName": "node-a", "containers": [{"name": "c", "image": "busybox"}],
        "readinessGates": [{"conditionType": "pier.dev/attached"}]}}))
    .expect("pod");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("pod created");
    let condition = |type_: &str, status: &str| json!({"type": type_, "status": status});
    let pair = |type_: &str, status: &str| (type_.to_owned(), status.to_owned());
    apply_pod_conditions(
        &pods,
        "web",
        "kubelet",
        json!([condition("Ready", "False")]),
    )
    .await;
    let both = apply_pod_conditions(
        &pods,
        "web",
        "pier-operator",
        json!([condition("pier.dev/attached", "False")]),
    )
    .await;
    assert_eq!(
        pod_conditions(&both),
        vec![pair("Ready", "False"), pair("pier.dev/attached", "False")],
        "the operator's apply keeps the kubelet's condition"
    );
    let attached = apply_pod_conditions(
        &pods,
        "web",
        "pier-operator",
        json!([condition("pier.dev/attached", "True")]),
    )
    .await;
    assert_eq!(
        pod_conditions(&attached),
        vec![pair("Ready", "False"), pair("pier.dev/attached", "True")],
        "re-applying its condition updates only it"
    );
    let ready =
        apply_pod_conditions(&pods, "web", "kubelet", json!([condition("Ready", "True")])).await;
    assert_eq!(
        pod_conditions(&ready),
        vec![pair("Ready", "True"), pair("pier.dev/attached", "True")]
    );
    let gates = ready
        .spec
        .and_then(|s| s.readiness_gates)
        .unwrap_or_default();
    assert_eq!(gates.len(), 1, "status applies leave the spec alone");
}

#[tokio::test]
async fn node_conditions_and_addresses_are_keyed_by_type() {
    use k8s_openapi::api::core::v1::Node;
    let (_s, client) = common::server_with_crds(Options::default()).await;
    let nodes: Api<Node> = Api::all(client.clone());
    let apply = |manager: &'static str, status: Value| {
        let nodes = nodes.clone();
        async move {
            nodes
                .patch_status(
                    "node-b",
                    &PatchParams::apply(manager),
                    &Patch::Apply(json!({"apiVersion": "v1", "kind": "Node",
                        "metadata": {"name": "node-b"}, "status": status})),
                )
                .await
                .unwrap_or_else(|e| panic!("{manager} applies: {e}"))
        }
    };
    let node: Node = serde_json::from_value(json!({"metadata": {"name": "node-b"}})).expect("node");
    nodes
        .create(&PostParams::default(), &node)
        .await
        .expect("node created");
    apply(
        "kubelet",
        json!({
        "addresses": [{"type": "InternalIP", "address": "192.0.2.2"}],
        "conditions": [{"type": "Ready", "status": "True"}]}),
    )
    .await;
    let both = apply(
        "pier-node",
        json!({
        "addresses": [{"type": "Hostname", "address": "node-b"}],
        "conditions": [{"type": "NetworkUnavailable", "status": "False"}]}),
    )
    .await;
    let status = both.status.expect("status");
    let types = |list: Vec<String>| list.join(",");
    assert_eq!(
        types(
            status
                .addresses
                .unwrap_or_default()
                .into_iter()
                .map(|a| a.type_)
                .collect()
        ),
        "InternalIP,Hostname"
    );
    assert_eq!(
        types(
            status
                .conditions
                .unwrap_or_default()
                .into_iter()
                .map(|c| c.type_)
                .collect()
        ),
        "Ready,NetworkUnavailable"
    );
}

#[tokio::test]
async fn watch_resumes_and_expires() {
    let (_s, client) = common::server_with_crds(Options {
        history: 5,
        ..Options::default()
    })
    .await;
    let api = networks(&client);
    let first = api
        .create(&PostParams::default(), &network("w0", json!({})))
        .await
        .expect("created");
    let rv = first.metadata.resource_version.clone().expect("rv");
    for i in 1..3 {
        api.create(
            &PostParams::default(),
            &network(&format!("w{i}"), json!({})),
        )
        .await
        .expect("created");
    }
    let mut stream = api
        .watch(&WatchParams::default(), &rv)
        .await
        .expect("watch")
        .boxed();
    let mut names = Vec::new();
    while names.len() < 2 {
        match stream.try_next().await.expect("event") {
            Some(WatchEvent::Added(o)) => names.extend(o.metadata.name),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(names, vec!["w1", "w2"]);
    api.delete("w1", &DeleteParams::default())
        .await
        .expect("delete");
    match stream.try_next().await.expect("event") {
        Some(WatchEvent::Deleted(o)) => assert_eq!(o.metadata.name.as_deref(), Some("w1")),
        other => panic!("unexpected {other:?}"),
    }
    for i in 3..12 {
        api.create(
            &PostParams::default(),
            &network(&format!("w{i}"), json!({})),
        )
        .await
        .expect("created");
    }
    let mut old = api
        .watch(&WatchParams::default(), &rv)
        .await
        .expect("watch")
        .boxed();
    match old.try_next().await.expect("event") {
        Some(WatchEvent::Error(e)) => assert_eq!(e.code, 410),
        other => panic!("expected 410, got {other:?}"),
    }
}

#[tokio::test]
async fn watch_history_is_dropped_by_age() {
    // Like the etcd compaction kube-apiserver runs every 5 minutes: changes older than
    // history_max_age cannot be resumed from (410 Gone), even on an idle server; newer ones
    // are replayed whole.
    let max_age = std::time::Duration::from_secs(1);
    let (server, client) = common::server_with_crds(Options {
        history_max_age: max_age,
        ..Options::default()
    })
    .await;
    let api = networks(&client);
    let first = api
        .create(&PostParams::default(), &network("a0", json!({})))
        .await
        .expect("created");
    let rv = first.metadata.resource_version.clone().expect("rv");
    let mut last = rv.clone();
    let mut last_written = None;
    for i in 1..3 {
        last_written = Some(std::time::Instant::now());
        let o = api
            .create(
                &PostParams::default(),
                &network(&format!("a{i}"), json!({})),
            )
            .await
            .expect("created");
        last = o.metadata.resource_version.expect("rv");
    }
    let mut stream = api
        .watch(&WatchParams::default(), &rv)
        .await
        .expect("watch")
        .boxed();
    let mut names = Vec::new();
    while names.len() < 2 {
        match stream.try_next().await.expect("event") {
            Some(WatchEvent::Added(o)) => names.extend(o.metadata.name),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(names, vec!["a1", "a2"]);
    drop(stream);
    let last_written = last_written.expect("written");

    // Idle: no write prunes, the periodic task does.
    let idle = std::time::Instant::now();
    while server.api().history_len() > 0 {
        assert!(
            idle.elapsed() < max_age * 5,
            "history kept {} changes while idle",
            server.api().history_len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        last_written.elapsed() > max_age,
        "dropped {:?} after the last write",
        last_written.elapsed()
    );
    let mut old = api
        .watch(&WatchParams::default(), &rv)
        .await
        .expect("watch")
        .boxed();
    match old.try_next().await.expect("event") {
        Some(WatchEvent::Error(e)) => assert_eq!(e.code, 410),
        other => panic!("expected 410, got {other:?}"),
    }
    // Up to date: nothing is missing, so it resumes.
    let mut current = api
        .watch(&WatchParams::default(), &last)
        .await
        .expect("watch")
        .boxed();
    api.create(&PostParams::default(), &network("a3", json!({})))
        .await
        .expect("created");
    match current.try_next().await.expect("event") {
        Some(WatchEvent::Added(o)) => assert_eq!(o.metadata.name.as_deref(), Some("a3")),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn watch_bookmarks_and_label_filtering() {
    let (_s, client) = common::server_with_crds(Options {
        bookmark_interval: std::time::Duration::from_millis(100),
        ..Options::default()
    })
    .await;
    let api = networks(&client);
    let rv = api
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("rv");
    let mut stream = api
        .watch(&WatchParams::default().labels("app=x"), &rv)
        .await
        .expect("watch")
        .boxed();
    api.create(&PostParams::default(), &network("other", json!({})))
        .await
        .expect("created");
    let mut n = network("mine", json!({}));
    n.metadata.labels = Some([("app".to_string(), "x".to_string())].into());
    api.create(&PostParams::default(), &n)
        .await
        .expect("created");
    let mut saw_bookmark = false;
    let mut saw_mine = false;
    while !(saw_bookmark && saw_mine) {
        match stream.try_next().await.expect("event") {
            Some(WatchEvent::Added(o)) => {
                assert_eq!(o.metadata.name.as_deref(), Some("mine"));
                saw_mine = true;
            }
            Some(WatchEvent::Bookmark(_)) => saw_bookmark = true,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn builtins_are_served() {
    let (_s, client) = common::server_with_crds(Options::for_node("node-a")).await;
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::{Event, Namespace, Node, Pod};
    let ns: Api<Namespace> = Api::all(client.clone());
    ns.get("default").await.expect("default namespace");
    let nodes: Api<Node> = Api::all(client.clone());
    let node = nodes.get("node-a").await.expect("local node");
    let addrs = node.status.and_then(|s| s.addresses).expect("addresses");
    assert!(addrs.iter().any(|a| a.type_ == "InternalIP"));
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    assert!(
        pods.list(&ListParams::default())
            .await
            .expect("pods")
            .items
            .is_empty()
    );
    let leases: Api<Lease> = Api::default_namespaced(client.clone());
    let lease: Lease = serde_json::from_value(
        json!({"metadata": {"name": "pier-operator"}, "spec": {"holderIdentity": "me"}}),
    )
    .expect("lease");
    leases
        .create(&PostParams::default(), &lease)
        .await
        .expect("lease created");
    let events: Api<Event> = Api::default_namespaced(client.clone());
    let ev: Event = serde_json::from_value(json!({"metadata": {"generateName": "x-"}, "involvedObject": {"kind": "Network", "name": "n"}, "reason": "R", "message": "m"})).expect("event");
    events
        .create(&PostParams::default(), &ev)
        .await
        .expect("event created");
    let ev2: k8s_openapi::api::events::v1::Event = serde_json::from_value(json!({"metadata": {"name": "e2"}, "eventTime": "2026-01-01T00:00:00.000000Z", "reason": "R", "action": "A", "reportingController": "c", "reportingInstance": "i", "type": "Normal", "note": "recorded", "regarding": {"kind": "Network", "name": "n2"}})).expect("event");
    let events2: Api<k8s_openapi::api::events::v1::Event> = Api::default_namespaced(client.clone());
    events2
        .create(&PostParams::default(), &ev2)
        .await
        .expect("events.k8s.io created");
    // One storage for both Event APIs, as kubectl describe needs.
    let all = events.list(&ListParams::default()).await.expect("list");
    assert_eq!(all.items.len(), 2);
    let core = events
        .list(&ListParams::default().fields("involvedObject.name=n2"))
        .await
        .expect("by involved object");
    assert_eq!(core.items.len(), 1);
    assert_eq!(core.items[0].message.as_deref(), Some("recorded"));
    let back = events2.get("e2").await.expect("events.k8s.io form");
    assert_eq!(back.note.as_deref(), Some("recorded"));
}

#[tokio::test]
async fn discovery_finds_custom_resources() {
    let (_s, client) = common::server_with_crds(Options::default()).await;
    let discovery = kube::discovery::Discovery::new(client.clone())
        .run()
        .await
        .expect("discovery");
    let (ar, caps) = discovery
        .resolve_gvk(&GroupVersionKind::gvk("pier.dev", "v1alpha1", "Network"))
        .expect("Network discovered");
    assert_eq!(ar.plural, "networks");
    assert_eq!(caps.scope, kube::discovery::Scope::Cluster);
    assert!(
        discovery
            .groups()
            .any(|g| g.name() == "apiextensions.k8s.io")
    );
}

#[tokio::test]
async fn deleting_namespaces_and_crds_cascades() {
    use k8s_openapi::api::core::v1::Namespace;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let (_s, client) = common::server_with_crds(Options::default()).await;
    let nss: Api<Namespace> = Api::all(client.clone());
    let e = nss
        .delete("default", &DeleteParams::default())
        .await
        .expect_err("default is protected");
    assert_eq!(code(e), 403);
    let team: Namespace =
        serde_json::from_value(json!({"metadata": {"name": "team"}})).expect("namespace");
    nss.create(&PostParams::default(), &team)
        .await
        .expect("created");
    let ep = obj(
        json!({"apiVersion": "pier.dev/v1alpha1", "kind": "Endpoint",
        "metadata": {"name": "e1"}, "spec": {"network": "x", "target": {"netns": {"name": "c1", "node": "n"}}}}),
    );
    endpoints(&client, "team")
        .create(&PostParams::default(), &ep)
        .await
        .expect("in team");
    endpoints(&client, "default")
        .create(&PostParams::default(), &ep)
        .await
        .expect("in default");
    nss.delete("team", &DeleteParams::default())
        .await
        .expect("deleted");
    assert!(
        endpoints(&client, "team")
            .get_opt("e1")
            .await
            .expect("get")
            .is_none()
    );
    assert!(
        endpoints(&client, "default")
            .get_opt("e1")
            .await
            .expect("get")
            .is_some()
    );
    // Deleting a CRD removes its custom resources and stops serving them.
    networks(&client)
        .create(&PostParams::default(), &network("n", json!({})))
        .await
        .expect("created");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.delete("networks.pier.dev", &DeleteParams::default())
        .await
        .expect("CRD deleted");
    let e = networks(&client).get("n").await.expect_err("not served");
    assert_eq!(code(e), 404);
    let again = pier_crds::manifests::all_crds()
        .into_iter()
        .find(|(n, _)| n.contains("network"))
        .expect("networks CRD")
        .1;
    crds.create(&PostParams::default(), &again)
        .await
        .expect("CRD again");
    assert!(networks(&client).get_opt("n").await.expect("get").is_none());
}

#[tokio::test]
async fn watcher_with_streaming_lists_and_plain_lists() {
    use kube::runtime::{WatchStreamExt, watcher};
    let (_s, client) = common::server_with_crds(Options::default()).await;
    let api = networks(&client);
    for i in 0..3 {
        api.create(
            &PostParams::default(),
            &network(&format!("s{i}"), json!({})),
        )
        .await
        .expect("created");
    }
    for cfg in [
        watcher::Config::default().streaming_lists(),
        watcher::Config::default().page_size(2),
    ] {
        let mut objs = watcher::watcher(api.clone(), cfg)
            .default_backoff()
            .applied_objects()
            .boxed();
        let mut names = std::collections::BTreeSet::new();
        while names.len() < 3 {
            let o = tokio::time::timeout(std::time::Duration::from_secs(10), objs.try_next())
                .await
                .expect("in time")
                .expect("no error")
                .expect("an object");
            names.extend(o.metadata.name);
        }
        assert_eq!(names.len(), 3);
    }
}

/// A server with Pier's CRDs and `options`, and its core/v1 Events of namespace `default`.
async fn server_with_events(options: Options) -> (ApiServer, Api<DynamicObject>) {
    let (server, client) = common::server_with_crds(options).await;
    let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("", "v1", "Event"), "events");
    (server, Api::namespaced_with(client, "default", &ar))
}

/// The Events `events` holds now.
async fn listed(events: &Api<DynamicObject>) -> Vec<DynamicObject> {
    events
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
}

/// Past their budget for the other objects stored, the oldest Events go (down to nine tenths
/// of it) and the newest stay; within it, none goes.
#[tokio::test]
async fn the_oldest_events_go_past_their_budget() {
    let budget = EventBudget {
        at_least: 10,
        per_object: 0,
    };
    let (_s, events) = server_with_events(Options {
        event_budget: budget,
        ..Options::default()
    })
    .await;
    let names = |list: &[DynamicObject]| -> std::collections::BTreeSet<String> {
        list.iter()
            .filter_map(|e| e.metadata.name.clone())
            .collect()
    };
    // Last seen a minute apart and after their creation (a time the server sets, so the order
    // that counts is theirs), created newest first.
    let start = jiff::Timestamp::now();
    let create = |i: i64| {
        let events = events.clone();
        async move {
            let seen = start
                .checked_add(jiff::SignedDuration::from_mins(5 + i))
                .expect("a time")
                .strftime("%Y-%m-%dT%H:%M:%SZ")
                .to_string();
            let event = obj(json!({"apiVersion": "v1", "kind": "Event",
                "metadata": {"name": format!("e{i:02}"), "namespace": "default"},
                "involvedObject": {"kind": "Network", "name": "n"},
                "reason": "Test", "message": "seen", "type": "Normal",
                "firstTimestamp": seen, "lastTimestamp": seen}));
            events
                .create(&PostParams::default(), &event)
                .await
                .expect("created");
        }
    };
    for i in (0..10).rev() {
        create(i).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    let kept = listed(&events).await;
    assert_eq!(kept.len(), 10, "within the budget: {:?}", names(&kept));
    for i in (10..25).rev() {
        create(i).await;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let kept = loop {
        let kept = listed(&events).await;
        if kept.len() <= 10 || std::time::Instant::now() > deadline {
            break kept;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let newest: std::collections::BTreeSet<String> = (16..25).map(|i| format!("e{i:02}")).collect();
    assert_eq!(names(&kept), newest, "the nine last seen stay");
}

/// The other objects stored raise the budget above its floor: with no floor at all, Events stay
/// as long as there are objects to allow them.
#[tokio::test]
async fn other_objects_allow_more_events() {
    let (_s, events) = server_with_events(Options {
        event_budget: EventBudget {
            at_least: 0,
            per_object: 10,
        },
        ..Options::default()
    })
    .await;
    // The server's own objects (namespaces, the node, the CRDs) allow 10 each.
    for i in 0..25 {
        let event = obj(json!({"apiVersion": "v1", "kind": "Event",
            "metadata": {"name": format!("e{i:02}"), "namespace": "default"},
            "involvedObject": {"kind": "Network", "name": "n"},
            "reason": "Test", "message": "seen", "type": "Normal"}));
        events
            .create(&PostParams::default(), &event)
            .await
            .expect("created");
    }
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    let kept = listed(&events).await;
    assert_eq!(kept.len(), 25);
}

#[tokio::test]
async fn events_expire_after_their_ttl() {
    // Like kube-apiserver's --event-ttl: an Event lives that long after it was last written.
    let ttl = std::time::Duration::from_secs(2);
    let (_s, events) = server_with_events(Options {
        event_ttl: ttl,
        ..Options::default()
    })
    .await;
    let stamp = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let event = obj(json!({"apiVersion": "v1", "kind": "Event",
        "metadata": {"name": "seen", "namespace": "default"},
        "involvedObject": {"kind": "Network", "name": "n"},
        "reason": "Test", "message": "seen", "type": "Normal",
        "firstTimestamp": stamp, "lastTimestamp": stamp}));
    let created = std::time::Instant::now();
    events
        .create(&PostParams::default(), &event)
        .await
        .expect("created");
    let mut gone = None;
    while created.elapsed() < ttl * 4 {
        if events.get_opt("seen").await.expect("get").is_none() {
            gone = Some(created.elapsed());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let gone = gone.expect("the event outlived its TTL by far");
    // Timestamps have whole seconds: it may go up to 1 s early, never sooner.
    assert!(
        gone >= ttl - std::time::Duration::from_secs(1),
        "deleted after {gone:?}, before its TTL"
    );
}
