//! One watch for several subscribers (pier_runtime::lean::SharedWatch), against the embedded API
//! server: a single watch request whatever the number of subscribers, every event to each of
//! them (deletions only to the `touched` ones), the store and inspectors updated first, and no
//! managed fields kept.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use pier_runtime::lean;
use tower::ServiceExt as _;

/// The next object a subscriber gets (within 10 s), as `name=value` of its `data.v`.
async fn next(stream: &mut (impl Stream<Item = Arc<ConfigMap>> + Unpin)) -> Arc<ConfigMap> {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("an object within 10 s")
        .expect("the stream goes on")
}

fn value(cm: &ConfigMap) -> String {
    let v = cm.data.as_ref().and_then(|d| d.get("v")).cloned();
    format!(
        "{}={}",
        cm.metadata.name.as_deref().unwrap_or("?"),
        v.unwrap_or_default()
    )
}

#[tokio::test]
async fn one_watch_feeds_every_subscriber() {
    let server = pier_apiserver::ApiServer::in_memory()
        .await
        .expect("server starts");
    let watches = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&watches);
    let service = server
        .service()
        .map_request(move |request: http::Request<_>| {
            let uri = request.uri();
            if uri.path().ends_with("/configmaps")
                && uri.query().is_some_and(|q| q.contains("watch=true"))
            {
                counted.fetch_add(1, Ordering::SeqCst);
            }
            request
        });
    let client = kube::Client::new(service, "default");
    let api: Api<ConfigMap> = Api::namespaced(client, "default");

    let mut shared = lean::shared(api.clone(), watcher::Config::default());
    let store = shared.store();
    let (mut first, mut second) = (shared.applied().boxed(), shared.applied().boxed());
    let mut touched = shared.touched().boxed();
    let inspected = Arc::new(AtomicUsize::new(0));
    let (seen, inspect_store) = (Arc::clone(&inspected), shared.store());
    shared.inspect(move |event| {
        if let watcher::Event::Apply(cm) = event {
            // The store has applied the event when inspectors see it.
            assert!(inspect_store.get(&ObjectRef::from_obj(cm)).is_some());
            seen.fetch_add(1, Ordering::SeqCst);
        }
    });
    let running = tokio::spawn(shared.run());
    store.wait_until_ready().await.expect("initial list");

    let apply = |v: &'static str| {
        let api = api.clone();
        async move {
            let cm: ConfigMap = serde_json::from_value(serde_json::json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "a"}, "data": {"v": v}}))
            .expect("a ConfigMap");
            api.patch("a", &PatchParams::apply("test").force(), &Patch::Apply(cm))
                .await
                .expect("applied")
        }
    };
    let stored = apply("1").await;
    assert!(
        stored.metadata.managed_fields.is_some(),
        "the server keeps them"
    );
    apply("2").await;
    for subscriber in [&mut first, &mut second, &mut touched] {
        let created = next(subscriber).await;
        assert_eq!(value(&created), "a=1");
        assert!(created.metadata.managed_fields.is_none(), "not kept");
        assert_eq!(value(&*next(subscriber).await), "a=2");
    }
    let in_store = store
        .get(&ObjectRef::new("a").within("default"))
        .expect("in the store");
    assert_eq!(value(&in_store), "a=2");
    assert!(in_store.metadata.managed_fields.is_none());

    api.delete("a", &DeleteParams::default())
        .await
        .expect("deleted");
    assert_eq!(value(&*next(&mut touched).await), "a=2", "the deletion");
    // Applied subscribers get no deletion: the next thing they see is a new object.
    apply("3").await;
    for subscriber in [&mut first, &mut second, &mut touched] {
        assert_eq!(value(&*next(subscriber).await), "a=3");
    }
    assert_eq!(inspected.load(Ordering::SeqCst), 3, "three applies");
    assert_eq!(
        watches.load(Ordering::SeqCst),
        1,
        "one watch for three subscribers"
    );
    running.abort();
}
