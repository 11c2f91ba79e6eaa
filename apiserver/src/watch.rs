//! Watches: resume from a resourceVersion, bookmarks, 410 Gone as an ERROR event, timeouts, a
//! bound on concurrent watches and on what each buffers (a watcher that falls too far behind is
//! closed and must resume, as with the real server).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use crate::api::{Api, Params};
use crate::error::ApiError;
use crate::resources::Resource;
use crate::store::{Event, EventType};

/// Frames queued per watcher before it is applied backpressure.
const QUEUE: usize = 256;

/// A watch event line around an already encoded object.
fn line_encoded(kind: &str, object: &[u8]) -> Bytes {
    let mut v = Vec::with_capacity(object.len() + 32);
    v.extend_from_slice(b"{\"type\":\"");
    v.extend_from_slice(kind.as_bytes());
    v.extend_from_slice(b"\",\"object\":");
    v.extend_from_slice(object);
    v.extend_from_slice(b"}\n");
    Bytes::from(v)
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut v = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

/// Start a watch; the receiver yields newline-delimited watch events.
pub fn start(
    api: Arc<Api>,
    res: Arc<Resource>,
    ns: Option<String>,
    params: &Params,
    as_table: bool,
) -> Result<mpsc::Receiver<Bytes>, ApiError> {
    let permit = api
        .watch_slots
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::TooManyRequests("too many watches".into()))?;
    let filter = Api::filter(&res, params)?;
    let from = params
        .get("resourceVersion")
        .filter(|rv| !rv.is_empty() && *rv != "0")
        .map(|rv| {
            rv.parse::<u64>()
                .map_err(|_| ApiError::BadRequest(format!("invalid resourceVersion {rv:?}")))
        })
        .transpose()?;
    // sendInitialEvents=true (streaming lists): the current objects, then a bookmark.
    let send_initial = params.get("sendInitialEvents").is_some_and(|b| b == "true");
    let from = if send_initial { None } else { from };
    let bookmarks = params
        .get("allowWatchBookmarks")
        .is_some_and(|b| b == "true");
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let ns = if res.namespaced { ns } else { None };
    let (tx, rx) = mpsc::channel(QUEUE);
    let sub = match api.store.subscribe(&res.storage_key, from) {
        Ok(s) => s,
        Err(e @ ApiError::Gone(_)) => {
            api.count_gone();
            let _ = tx.try_send(line("ERROR", &e.status()));
            drop(permit);
            return Ok(rx);
        }
        Err(e) => return Err(e),
    };
    let interval = api.bookmark_interval;
    let mut closer = api.closer.subscribe();
    let include = params.get("includeObject").cloned().unwrap_or_default();
    tokio::spawn(async move {
        // Table watches (kubectl get -w): each object becomes a one-row Table, the column
        // definitions only in the first.
        let mut first = true;
        let mut render = |kind: &str, o: &Value| -> Bytes {
            if !as_table {
                return line(kind, o);
            }
            let rv = o
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let mut t = crate::table::table(&res, &[o], rv, None, &include);
            if !first {
                t["columnDefinitions"] = json!([]);
            }
            first = false;
            line(kind, &t)
        };
        let _permit = permit;
        let in_ns = |o: &Value| {
            ns.as_deref().is_none_or(|ns| {
                o.pointer("/metadata/namespace").and_then(Value::as_str) == Some(ns)
            })
        };
        let mut last = from.unwrap_or(sub.rv);
        let bookmark = |rv: u64, initial_end: bool| {
            let mut meta = json!({"resourceVersion": rv.to_string()});
            if initial_end {
                meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
            }
            line(
                "BOOKMARK",
                &json!({"kind": res.kind, "apiVersion": res.api_version(), "metadata": meta}),
            )
        };
        let served = |o: &Arc<Value>| Api::from_storage(&res, o.clone());
        for o in &sub.initial {
            let o = served(o);
            if in_ns(&o) && filter(&o) && tx.send(render("ADDED", &o)).await.is_err() {
                return;
            }
        }
        // Streaming lists (sendInitialEvents=true): the initial events end with a bookmark.
        if send_initial && tx.send(bookmark(sub.rv, true)).await.is_err() {
            return;
        }
        let translate = |e: &Event| -> Option<&'static str> {
            if e.key != res.storage_key || ns.as_deref().is_some_and(|n| n != e.namespace) {
                return None;
            }
            let now = filter(&e.object);
            let before = e.old.as_deref().is_some_and(&filter);
            let kind = match (e.kind, before, now) {
                (EventType::Deleted, true, _) => "DELETED",
                (EventType::Deleted, false, _) => return None,
                (_, _, true) if e.old.is_none() || !before => "ADDED",
                (_, _, true) => "MODIFIED",
                (_, true, false) => "DELETED",
                (_, false, false) => return None,
            };
            Some(kind)
        };
        let mut emit = |kind: &str, e: &Event| -> Bytes {
            if as_table || res.events_form {
                // The whole object (the event's own is without managed fields).
                render(kind, &served(&crate::store::decode(e.json())))
            } else {
                line_encoded(kind, e.json())
            }
        };
        for e in &sub.backlog {
            if e.rv <= last {
                continue;
            }
            last = e.rv;
            if let Some(kind) = translate(e)
                && tx.send(emit(kind, e)).await.is_err()
            {
                return;
            }
        }
        let mut live = sub.live;
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        loop {
            tokio::select! {
                ev = live.recv() => match ev {
                    Ok(e) => {
                        if e.rv <= last {
                            continue;
                        }
                        last = e.rv;
                        if let Some(kind) = translate(&e)
                            && tx.send(emit(kind, &e)).await.is_err() {
                                return;
                            }
                    }
                    // Too slow: end the watch; the client resumes from its last version.
                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tick.tick(), if bookmarks => {
                    if tx.send(bookmark(last, false)).await.is_err() {
                        return;
                    }
                }
                _ = &mut deadline => {
                    if bookmarks {
                        let _ = tx.send(bookmark(last, false)).await;
                    }
                    return;
                }
                _ = tx.closed() => return,
                _ = closer.changed() => return,
            }
        }
    });
    Ok(rx)
}
