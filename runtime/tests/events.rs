//! Events against the embedded API server: a repeated warning is one Event with a growing series;
//! a normal Event is published once each time, the publisher keeping nothing of it.

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};

#[tokio::test]
async fn warnings_make_series_and_normal_events_are_one_offs() {
    let server = pier_apiserver::ApiServer::in_memory()
        .await
        .expect("server starts");
    let client = kube::Client::new(server.service(), "default");
    // Any object will do: the namespace every server has.
    let about = Api::<Namespace>::all(client.clone())
        .get("default")
        .await
        .expect("namespace default");
    let events = pier_runtime::Events::new(client.clone(), "pier-test", "instance".into());
    for _ in 0..3 {
        events
            .publish(&about, true, "Failing", "Reconcile", "it failed".into())
            .await;
    }
    for _ in 0..2 {
        events
            .publish(&about, false, "Done", "Reconcile", "it worked".into())
            .await;
    }
    let listed = Api::<Event>::namespaced(client, "default")
        .list(&ListParams::default())
        .await
        .expect("listed");
    let with_reason = |reason: &str| -> Vec<&Event> {
        listed
            .items
            .iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .collect()
    };
    let warnings = with_reason("Failing");
    assert_eq!(warnings.len(), 1, "one warning with a series");
    assert_eq!(warnings[0].series.as_ref().map(|s| s.count), Some(3));
    let normal = with_reason("Done");
    assert_eq!(normal.len(), 2, "each normal Event on its own");
    assert!(normal.iter().all(|e| e.series.is_none()));
}
