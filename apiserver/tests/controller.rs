//! A real `kube::runtime::Controller` against the in-process service: objects present at start,
//! created later, changed, deleted through a finalizer; a 409 answered by a retry; a watch that
//! gets 410 Gone re-lists.

mod common;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use pier_apiserver::Options;
use pier_crds::Network;
use serde_json::json;
use tokio::sync::mpsc;

const FINALIZER: &str = "pier.dev/test-controller";

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(String),
}

struct Ctx {
    client: Client,
    seen: mpsc::UnboundedSender<String>,
    /// Names whose first reconcile writes with a stale resourceVersion (and so gets 409).
    conflict_once: std::sync::Mutex<std::collections::HashSet<String>>,
}

async fn reconcile(net: Arc<Network>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let api: Api<Network> = Api::all(ctx.client.clone());
    finalizer(&api, FINALIZER, net, |event| async {
        match event {
            Finalizer::Apply(net) => {
                let name = net.name_any();
                let first = ctx.conflict_once.lock().expect("lock").remove(&name);
                if first {
                    // Write with a stale version: the server answers 409 and we retry.
                    let mut stale = (*net).clone();
                    stale.metadata.resource_version = Some("1".into());
                    stale.spec.mtu = Some(1234);
                    api.replace(&name, &PostParams::default(), &stale).await?;
                }
                let generation = net.metadata.generation.unwrap_or(0);
                api.patch_status(
                    &name,
                    &PatchParams::apply("test-controller").force(),
                    &Patch::Apply(json!({
                        "apiVersion": "pier.dev/v1alpha1", "kind": "Network",
                        "status": {"observedGeneration": generation, "conditions": [{
                            "type": "Ready", "status": "True", "reason": "Reconciled",
                            "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z",
                            "observedGeneration": generation}]}
                    })),
                )
                .await?;
                let _ = ctx.seen.send(format!("apply {name} {generation}"));
                Ok(Action::await_change())
            }
            Finalizer::Cleanup(net) => {
                let _ = ctx.seen.send(format!("cleanup {}", net.name_any()));
                Ok(Action::await_change())
            }
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    })
}

fn error_policy(_: Arc<Network>, err: &Error, ctx: Arc<Ctx>) -> Action {
    if let Error::Kube(kube::Error::Api(s)) = err {
        let _ = ctx.seen.send(format!("error {}", s.code));
    }
    Action::requeue(Duration::from_millis(50))
}

fn network(name: &str, mtu: Option<i32>) -> Network {
    let mtu = mtu.unwrap_or(1500);
    serde_json::from_value(json!({"apiVersion": "pier.dev/v1alpha1", "kind": "Network",
        "metadata": {"name": name}, "spec": {"mtu": mtu}}))
    .expect("valid Network")
}

async fn expect(rx: &mut mpsc::UnboundedReceiver<String>, want: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let got = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {want:?}"))
            .expect("controller running");
        if got == want {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_reconciles_through_the_whole_lifecycle() {
    let (server, client) = common::server_with_crds(Options {
        history: 20,
        ..Options::default()
    })
    .await;
    let api: Api<Network> = Api::all(client.clone());
    api.create(&PostParams::default(), &network("at-start", None))
        .await
        .expect("created");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        seen: tx,
        conflict_once: std::sync::Mutex::new(["conflicted".to_string()].into()),
    });
    let wc = watcher::Config::default();
    let controller = tokio::spawn(
        Controller::new(api.clone(), wc)
            .run(reconcile, error_policy, ctx)
            .for_each(|_| futures::future::ready(())),
    );

    expect(&mut rx, "apply at-start 1").await;
    let got = api.get("at-start").await.expect("get");
    assert!(got.finalizers().iter().any(|f| f == FINALIZER));
    assert_eq!(got.status.and_then(|s| s.observed_generation), Some(1));

    api.create(&PostParams::default(), &network("later", None))
        .await
        .expect("created");
    expect(&mut rx, "apply later 1").await;

    api.patch(
        "later",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"mtu": 9000}})),
    )
    .await
    .expect("changed");
    expect(&mut rx, "apply later 2").await;

    // 409 on a stale write, then a successful retry.
    api.create(&PostParams::default(), &network("conflicted", None))
        .await
        .expect("created");
    expect(&mut rx, "error 409").await;
    expect(&mut rx, "apply conflicted 1").await;

    // Deletion goes through the finalizer.
    api.delete("later", &DeleteParams::default())
        .await
        .expect("delete");
    expect(&mut rx, "cleanup later").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while api.get_opt("later").await.expect("get").is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "finalizer never released"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Writes the watcher does not see, then a compaction and closed watches: the watcher
    // resumes from a version that is gone, gets 410 and re-lists.
    let gone_before = server.api().gone_count();
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::default_namespaced(client.clone());
    for i in 0..5 {
        let ev: k8s_openapi::api::core::v1::Event = serde_json::from_value(json!({
            "metadata": {"name": format!("other-{i}")},
            "involvedObject": {"kind": "Network", "name": "x"}, "reason": "Other", "message": ""
        }))
        .expect("event");
        events
            .create(&PostParams::default(), &ev)
            .await
            .expect("event");
    }
    server.api().compact_history();
    server.api().close_watches();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while server.api().gone_count() == gone_before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no watch met 410 Gone"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    api.create(&PostParams::default(), &network("after-gone", None))
        .await
        .expect("created");
    expect(&mut rx, "apply after-gone 1").await;
    controller.abort();
}
