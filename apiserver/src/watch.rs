//! Watches: resume from a resourceVersion, bookmarks, 410 Gone as an ERROR event, timeouts, a
//! bound on concurrent watches and on what each buffers (a watcher that falls too far behind is
//! closed and must resume, as with the real server).
//!
//! Fan-out: the store hands each watch the changes of its key in batches (a durable group of
//! writes each, every object encoded once for all watches). A watch's task takes every batch
//! already waiting, renders their lines into one frame and hands that to its connection, so a
//! burst costs a watcher one wake and one write rather than one per event, and a watcher that
//! fell behind catches up in large frames. A client that stops reading is closed: when its
//! connection takes no frame for the stall timeout ([`crate::Options::watch_stall_timeout`]), or
//! once it is more than the store's feed capacity behind. It resumes from its last version (410
//! Gone if that left the history). Nobody else waits for it: the store never blocks on a watch.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::TryRecvError;
use tokio::sync::{broadcast, mpsc};

use crate::api::{Api, Params};
use crate::error::ApiError;
use crate::resources::Resource;
use crate::store::{Batch, Event, EventType};

/// Frames queued per watch ahead of its connection.
const QUEUE: usize = 4;
/// A frame is handed over once it holds this many bytes (an event larger than that makes a frame
/// of its own): what a watch buffers is at most about [`QUEUE`] + 1 frames of this size.
const FRAME_BYTES: usize = 64 * 1024;

/// Appends a watch event line around an already encoded object.
fn push_encoded(out: &mut Vec<u8>, kind: &str, object: &[u8]) {
    out.reserve(object.len() + 32);
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\",\"object\":");
    out.extend_from_slice(object);
    out.extend_from_slice(b"}\n");
}

fn push_line(out: &mut Vec<u8>, kind: &str, object: &Value) {
    if serde_json::to_writer(&mut *out, &json!({"type": kind, "object": object})).is_ok() {
        out.push(b'\n');
    }
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut out = Vec::new();
    push_line(&mut out, kind, object);
    Bytes::from(out)
}

type Filter = Box<dyn Fn(&Value) -> bool + Send + Sync>;

/// Table watches (kubectl get -w): each object becomes a one-row Table, the column definitions
/// only in the first.
struct TableForm {
    include: String,
    first: bool,
}

/// What one watch sends: its selection, the last version it passed, and the lines rendered but
/// not yet handed to the connection.
struct Lines {
    res: Arc<Resource>,
    ns: Option<String>,
    filter: Filter,
    table: Option<TableForm>,
    last: u64,
    out: Vec<u8>,
    /// How long the connection may take no frame before the watch ends.
    stall: Duration,
}

impl Lines {
    fn in_ns(&self, o: &Value) -> bool {
        self.ns
            .as_deref()
            .is_none_or(|ns| o.pointer("/metadata/namespace").and_then(Value::as_str) == Some(ns))
    }

    /// An object as served (tables and events.k8s.io form rendered here, per watch).
    fn push_object(&mut self, kind: &str, o: &Value) {
        let Some(table) = &mut self.table else {
            return push_line(&mut self.out, kind, o);
        };
        let rv = o
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let mut t = crate::table::table(&self.res, &[o], rv, None, &table.include);
        if !table.first {
            t["columnDefinitions"] = json!([]);
        }
        table.first = false;
        push_line(&mut self.out, kind, &t);
    }

    fn push_initial(&mut self, o: &Arc<Value>) {
        let o = Api::from_storage(&self.res, o.clone());
        if self.in_ns(&o) && (self.filter)(&o) {
            self.push_object("ADDED", &o);
        }
    }

    /// What the change is to this watch's selection, if anything.
    fn translate(&self, e: &Event) -> Option<&'static str> {
        if e.key != self.res.storage_key || self.ns.as_deref().is_some_and(|n| n != e.namespace) {
            return None;
        }
        let now = (self.filter)(&e.object);
        let before = e.old.as_deref().is_some_and(&self.filter);
        let kind = match (e.kind, before, now) {
            (EventType::Deleted, true, _) => "DELETED",
            (EventType::Deleted, false, _) => return None,
            (_, _, true) if e.old.is_none() || !before => "ADDED",
            (_, _, true) => "MODIFIED",
            (_, true, false) => "DELETED",
            (_, false, false) => return None,
        };
        Some(kind)
    }

    /// A change, unless this watch already passed its version.
    fn push_event(&mut self, e: &Event) {
        if e.rv <= self.last {
            return;
        }
        self.last = e.rv;
        let Some(kind) = self.translate(e) else {
            return;
        };
        if self.table.is_some() || self.res.events_form {
            // The whole object (the event's own is without managed fields).
            let o = Api::from_storage(&self.res, crate::store::decode(e.json()));
            self.push_object(kind, &o);
        } else {
            push_encoded(&mut self.out, kind, e.json());
        }
    }

    fn push_batch(&mut self, batch: &Batch) {
        for e in batch.iter() {
            self.push_event(e);
        }
    }

    /// Renders the batches already waiting, up to a frame's worth; false when the watch must end
    /// (it fell behind the feed, or the store is gone).
    fn drain(&mut self, live: &mut broadcast::Receiver<Batch>) -> bool {
        while self.out.len() < FRAME_BYTES {
            match live.try_recv() {
                Ok(batch) => self.push_batch(&batch),
                Err(TryRecvError::Empty) => return true,
                Err(_) => return false,
            }
        }
        true
    }

    fn push_bookmark(&mut self, initial_end: bool) {
        let mut meta = json!({"resourceVersion": self.last.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let bookmark =
            json!({"kind": self.res.kind, "apiVersion": self.res.api_version(), "metadata": meta});
        push_line(&mut self.out, "BOOKMARK", &bookmark);
    }

    fn full(&self) -> bool {
        self.out.len() >= FRAME_BYTES
    }

    /// Hands what is rendered to the connection; false when the watch must end (the client is
    /// gone or stopped reading).
    async fn flush(&mut self, tx: &mpsc::Sender<Bytes>) -> bool {
        if self.out.is_empty() {
            return true;
        }
        let frame = Bytes::from(std::mem::take(&mut self.out));
        // A timer only when the queue is full.
        match tx.try_send(frame) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(frame)) => matches!(
                tokio::time::timeout(self.stall, tx.send(frame)).await,
                Ok(Ok(()))
            ),
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Flushes once a frame's worth is rendered.
    async fn flush_if_full(&mut self, tx: &mpsc::Sender<Bytes>) -> bool {
        !self.full() || self.flush(tx).await
    }
}

/// How a watch runs, from its parameters.
struct Options {
    from: Option<u64>,
    send_initial: bool,
    bookmarks: bool,
    timeout: Duration,
}

impl Options {
    fn parse(params: &Params) -> Result<Options, ApiError> {
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
        Ok(Options {
            from: if send_initial { None } else { from },
            send_initial,
            bookmarks: params
                .get("allowWatchBookmarks")
                .is_some_and(|b| b == "true"),
            timeout: params
                .get("timeoutSeconds")
                .and_then(|t| t.parse::<u64>().ok())
                .map(Duration::from_secs)
                .unwrap_or(Duration::from_secs(1800)),
        })
    }
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
    let filter: Filter = Box::new(Api::filter(&res, params)?);
    let opts = Options::parse(params)?;
    let ns = if res.namespaced { ns } else { None };
    let (tx, rx) = mpsc::channel(QUEUE);
    let sub = match api.store.subscribe(&res.storage_key, opts.from) {
        Ok(s) => s,
        Err(e @ ApiError::Gone(_)) => {
            api.count_gone();
            let _ = tx.try_send(line("ERROR", &e.status()));
            return Ok(rx);
        }
        Err(e) => return Err(e),
    };
    let table = as_table.then(|| TableForm {
        include: params.get("includeObject").cloned().unwrap_or_default(),
        first: true,
    });
    let lines = Lines {
        res,
        ns,
        filter,
        table,
        last: opts.from.unwrap_or(sub.rv),
        out: Vec::new(),
        stall: api.watch_stall_timeout,
    };
    let interval = api.bookmark_interval;
    let closer = api.closer.subscribe();
    tokio::spawn(async move {
        let _permit = permit;
        run(lines, sub, opts, interval, closer, tx).await;
    });
    Ok(rx)
}

/// The watch's task: what the subscription already holds, then the live feed until the watch
/// ends.
async fn run(
    mut lines: Lines,
    sub: crate::store::Subscription,
    opts: Options,
    interval: Duration,
    mut closer: tokio::sync::watch::Receiver<u64>,
    tx: mpsc::Sender<Bytes>,
) {
    for o in &sub.initial {
        lines.push_initial(o);
        if !lines.flush_if_full(&tx).await {
            return;
        }
    }
    // Streaming lists (sendInitialEvents=true): the initial events end with a bookmark.
    if opts.send_initial {
        lines.push_bookmark(true);
    }
    for e in &sub.backlog {
        lines.push_event(e);
        if !lines.flush_if_full(&tx).await {
            return;
        }
    }
    if !lines.flush(&tx).await {
        return;
    }
    let mut live = sub.live;
    let deadline = tokio::time::sleep(opts.timeout);
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(interval);
    tick.tick().await;
    loop {
        // Whether the watch goes on after what was rendered is handed over.
        let goes_on = tokio::select! {
            got = live.recv() => match got {
                Ok(batch) => {
                    lines.push_batch(&batch);
                    lines.drain(&mut live)
                }
                // Too slow (the client resumes from its last version), or the store is gone.
                Err(_) => false,
            },
            _ = tick.tick(), if opts.bookmarks => {
                lines.push_bookmark(false);
                true
            }
            _ = &mut deadline => {
                if opts.bookmarks {
                    lines.push_bookmark(false);
                }
                false
            }
            _ = tx.closed() => return,
            _ = closer.changed() => return,
        };
        if !lines.flush(&tx).await || !goes_on {
            return;
        }
    }
}
