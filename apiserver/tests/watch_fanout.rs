//! Watch fan-out: a burst reaches every one of many watchers, whole and in order (selectors
//! included); a burst waiting for a watcher leaves in one frame rather than one per event; a
//! client that stops reading is closed after the stall timeout, holding a bounded buffer, while
//! the others get every event meanwhile.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use pier_apiserver::http::body::ResponseBody;
use pier_apiserver::store::Expect;
use pier_apiserver::{ApiServer, Options};
use serde_json::{Value, json};
use tower::ServiceExt;

const ENDPOINTS: &str = "/apis/pier.dev/v1alpha1/namespaces/default/endpoints";
const ENDPOINTS_KEY: &str = "pier.dev/endpoints";

fn endpoint(name: &str, app: &str) -> Value {
    json!({
        "apiVersion": "pier.dev/v1alpha1", "kind": "Endpoint",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": app}},
        "spec": {"network": "net", "target": {"netns": {"name": name, "node": "node-a"}}}
    })
}

async fn request(server: &ApiServer, method: http::Method, uri: &str, body: &Value) -> u16 {
    let req = http::Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    let resp = server.service().oneshot(req).await.expect("infallible");
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    status
}

/// Opens a watch on Endpoints (`query` appended) through the in-process service.
async fn open_watch(server: &ApiServer, query: &str) -> ResponseBody {
    let req = http::Request::get(format!("{ENDPOINTS}?watch=true&{query}"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = server.service().oneshot(req).await.expect("infallible");
    assert_eq!(resp.status(), 200, "watch opened");
    resp.into_body()
}

/// One watch event as received: (type, name, resourceVersion, label app).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    kind: String,
    name: String,
    rv: u64,
    app: String,
}

fn parse_lines(text: &[u8]) -> Vec<Seen> {
    text.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let v: Value = serde_json::from_slice(l).expect("each line is a JSON event");
            let meta = &v["object"]["metadata"];
            Seen {
                kind: v["type"].as_str().unwrap_or_default().to_string(),
                name: meta["name"].as_str().unwrap_or_default().to_string(),
                rv: meta["resourceVersion"]
                    .as_str()
                    .and_then(|rv| rv.parse().ok())
                    .unwrap_or(0),
                app: meta["labels"]["app"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            }
        })
        .collect()
}

/// Reads a watch until `count` events arrived (or `limit` passed); each event with its arrival.
async fn collect(mut body: ResponseBody, count: usize, limit: Duration) -> Vec<(Seen, Instant)> {
    let mut seen = Vec::new();
    let mut carry = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    while seen.len() < count {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => frame,
            _ => break,
        };
        let Some(data) = frame.data_ref() else {
            continue;
        };
        let at = Instant::now();
        carry.extend_from_slice(data);
        if let Some(end) = carry.iter().rposition(|b| *b == b'\n') {
            seen.extend(parse_lines(&carry[..end]).into_iter().map(|s| (s, at)));
            carry.drain(..=end);
        }
    }
    seen
}

/// Runs `jobs` with at most `width` at once.
async fn in_parallel<F>(jobs: Vec<F>, width: usize)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let jobs = Arc::new(std::sync::Mutex::new(jobs.into_iter()));
    let workers: Vec<_> = (0..width)
        .map(|_| {
            let jobs = jobs.clone();
            tokio::spawn(async move {
                loop {
                    let job = jobs.lock().expect("jobs").next();
                    match job {
                        Some(job) => job.await,
                        None => return,
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.expect("worker");
    }
}

/// What a watch with `selector` (None: everything) must see of `changes` (as the store recorded
/// them, in order): label changes in or out of the selection read as ADDED / DELETED.
fn expected(changes: &[Seen], selector: Option<&str>) -> Vec<Seen> {
    let mut app_of: BTreeMap<String, String> = BTreeMap::new();
    let mut out = Vec::new();
    for c in changes {
        let before = app_of.get(&c.name).cloned();
        let matches = |app: &str| selector.is_none_or(|s| s == app);
        let was = before.as_deref().is_some_and(matches);
        let kind = match c.kind.as_str() {
            "DELETED" => {
                app_of.remove(&c.name);
                was.then_some("DELETED")
            }
            _ => {
                app_of.insert(c.name.clone(), c.app.clone());
                match (was, matches(&c.app)) {
                    (false, true) => Some("ADDED"),
                    (true, true) => Some("MODIFIED"),
                    (true, false) => Some("DELETED"),
                    (false, false) => None,
                }
            }
        };
        if let Some(kind) = kind {
            out.push(Seen {
                kind: kind.into(),
                ..c.clone()
            });
        }
    }
    out
}

/// The changes of Endpoints after `from`, as the store recorded them (the truth to compare with).
fn recorded(server: &ApiServer, from: u64) -> Vec<Seen> {
    let sub = server
        .api()
        .store
        .subscribe(ENDPOINTS_KEY, Some(from))
        .expect("history holds the run");
    sub.backlog
        .iter()
        .map(|e| Seen {
            kind: e.kind.as_str().to_string(),
            name: e.object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .into(),
            rv: e.rv,
            app: e.object["metadata"]["labels"]["app"]
                .as_str()
                .unwrap_or_default()
                .into(),
        })
        .collect()
}

/// Creates, relabels (in and out of `app=a1`) and deletes, 32 requests in flight.
async fn burst(server: &ApiServer, objects: usize) {
    let names: Vec<String> = (0..objects).map(|i| format!("ep-{i:04}")).collect();
    let creates = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let (server, body) = (server.clone(), endpoint(name, &format!("a{}", i % 3)));
            async move {
                let status = request(&server, http::Method::POST, ENDPOINTS, &body).await;
                assert_eq!(status, 201, "created");
            }
        })
        .collect();
    in_parallel(creates, 32).await;
    let changes = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let server = server.clone();
            let uri = format!("{ENDPOINTS}/{name}");
            async move {
                if i % 2 == 0 {
                    let patch =
                        json!({"metadata": {"labels": {"app": format!("a{}", (i + 1) % 3)}}});
                    let req = http::Request::patch(&uri)
                        .header("content-type", "application/merge-patch+json")
                        .body(Full::new(Bytes::from(patch.to_string())))
                        .expect("request");
                    let resp = server.service().oneshot(req).await.expect("infallible");
                    assert_eq!(resp.status(), 200, "relabelled");
                } else {
                    let status = request(&server, http::Method::DELETE, &uri, &json!({})).await;
                    assert_eq!(status, 200, "deleted");
                }
            }
        })
        .collect();
    in_parallel(changes, 32).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_reaches_every_one_of_many_watchers_whole_and_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A durable store: writes become visible in fsynced groups, as in production.
    let server = ApiServer::open_with(dir.path(), Options::default())
        .await
        .expect("server");
    common::install_crds(&kube::Client::new(server.service(), "default")).await;
    let from = server.api().store.current_rv();
    let objects = 300;
    // Each object: created, then relabelled or deleted.
    let total = objects * 2;
    let mut watchers = Vec::new();
    for _ in 0..40 {
        let body = open_watch(&server, &format!("resourceVersion={from}")).await;
        watchers.push(tokio::spawn(collect(body, total, Duration::from_secs(120))));
    }
    let body = open_watch(
        &server,
        &format!("resourceVersion={from}&labelSelector=app%3Da1"),
    )
    .await;
    let selected = tokio::spawn(collect(body, usize::MAX, Duration::from_secs(20)));

    burst(&server, objects).await;

    let changes = recorded(&server, from);
    assert_eq!(changes.len(), total, "every write recorded");
    let everything = expected(&changes, None);
    for (i, w) in watchers.into_iter().enumerate() {
        let seen: Vec<Seen> = w.await.expect("watcher").into_iter().map(|s| s.0).collect();
        assert_eq!(seen.len(), total, "watcher {i} got every event");
        assert_eq!(seen, everything, "watcher {i}: every event, in order");
    }
    let seen: Vec<Seen> = selected
        .await
        .expect("watcher")
        .into_iter()
        .map(|s| s.0)
        .collect();
    let want = expected(&changes, Some("a1"));
    assert!(
        want.iter().any(|s| s.kind == "DELETED") && want.iter().any(|s| s.kind == "ADDED"),
        "the burst moves objects in and out of the selection"
    );
    assert_eq!(seen, want, "the selector's watch: its events, in order");
}

#[tokio::test]
async fn a_burst_waiting_for_a_watcher_leaves_in_one_frame() {
    let server = ApiServer::in_memory().await.expect("server");
    common::install_crds(&kube::Client::new(server.service(), "default")).await;
    let from = server.api().store.current_rv();
    let mut body = open_watch(&server, &format!("resourceVersion={from}")).await;
    // On this single-threaded runtime the watch's task runs only when this test awaits: the ten
    // writes are all waiting for it by then.
    for i in 0..10 {
        let name = format!("ep-{i}");
        server
            .api()
            .store
            .commit(
                ENDPOINTS_KEY,
                "default",
                &name,
                Expect::Absent,
                Some(endpoint(&name, "a")),
            )
            .expect("commit");
    }
    let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("a frame")
        .expect("not the end")
        .expect("data");
    let data = frame.into_data().expect("data frame");
    let seen = parse_lines(&data);
    assert_eq!(
        seen.iter().map(|s| s.rv).collect::<Vec<_>>(),
        (from + 1..=from + 10).collect::<Vec<_>>(),
        "one frame holds the ten events, in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_watcher_is_closed_and_the_others_get_every_event_meanwhile() {
    let stall = Duration::from_secs(2);
    let max_watches = 64;
    let server = ApiServer::in_memory_with(Options {
        watch_stall_timeout: stall,
        max_watches,
        ..Options::default()
    })
    .await
    .expect("server");
    common::install_crds(&kube::Client::new(server.service(), "default")).await;
    let from = server.api().store.current_rv();
    // Read by nobody (as a client that stopped reading).
    let mut stuck = open_watch(&server, &format!("resourceVersion={from}")).await;
    let writes = 600;
    let mut readers = Vec::new();
    for _ in 0..8 {
        let body = open_watch(&server, &format!("resourceVersion={from}")).await;
        readers.push(tokio::spawn(collect(body, writes, Duration::from_secs(60))));
    }
    let mut committed = Vec::new();
    for i in 0..writes {
        let name = format!("ep-{i:04}");
        // Big objects, so the stuck watch's buffer fills.
        let mut obj = endpoint(&name, "a");
        obj["metadata"]["annotations"] = json!({"pad": "x".repeat(4096)});
        let status = request(&server, http::Method::POST, ENDPOINTS, &obj).await;
        assert_eq!(status, 201);
        committed.push(Instant::now());
    }
    for r in readers {
        let seen = r.await.expect("reader");
        assert_eq!(seen.len(), writes, "a reading watcher got every event");
        for (s, at) in &seen {
            let i = (s.rv - from - 1) as usize;
            let late = at.saturating_duration_since(committed[i]);
            assert!(
                late < stall,
                "event {i} reached a reading watcher {late:?} after its create returned: held up \
                 by the stuck one"
            );
        }
    }
    // The stuck watch ends by itself (its slot is free again) ...
    let freed = tokio::time::timeout(stall * 10, async {
        while server.api().watch_slots.available_permits() < max_watches {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        freed.is_ok(),
        "the stuck watch still holds its slot {:?} after the writes",
        stall * 10
    );
    // ... having buffered a few frames, not every event: what is left ends the stream.
    let mut buffered = 0;
    while let Some(frame) = stuck.frame().await {
        buffered += frame
            .expect("frame")
            .into_data()
            .map(|d| d.len())
            .unwrap_or(0);
    }
    assert!(
        buffered < 600 * 1024,
        "the stuck watch buffered {buffered} bytes"
    );
}

#[tokio::test]
async fn a_watcher_further_behind_than_the_feed_holds_is_closed_with_a_gapless_prefix() {
    let server = ApiServer::in_memory().await.expect("server");
    common::install_crds(&kube::Client::new(server.service(), "default")).await;
    let from = server.api().store.current_rv();
    let body = open_watch(&server, &format!("resourceVersion={from}")).await;
    // On this single-threaded runtime the watch's task runs only when the test awaits: these
    // writes all pile up in the feed, more than it holds.
    let writes = 5000;
    for i in 0..writes {
        let name = format!("ep-{i:04}");
        server
            .api()
            .store
            .commit(
                ENDPOINTS_KEY,
                "default",
                &name,
                Expect::Absent,
                Some(endpoint(&name, "a")),
            )
            .expect("commit");
    }
    let seen = collect(body, usize::MAX, Duration::from_secs(20)).await;
    assert!(
        seen.len() < writes,
        "the watch ended instead of buffering every write: {} events",
        seen.len()
    );
    let rvs: Vec<u64> = seen.iter().map(|(s, _)| s.rv).collect();
    let prefix: Vec<u64> = (from + 1..).take(rvs.len()).collect();
    assert_eq!(rvs, prefix, "what it sent has no gap");
    // The client resumes from there and gets the rest.
    let last = rvs.last().copied().unwrap_or(from);
    let resumed = open_watch(&server, &format!("resourceVersion={last}")).await;
    let rest = collect(resumed, writes - rvs.len(), Duration::from_secs(20)).await;
    assert_eq!(rest.len(), writes - rvs.len(), "the rest after resuming");
}
