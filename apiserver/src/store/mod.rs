//! The object store: JSON objects by (storage key, namespace, name), one global resourceVersion
//! counter, a history of change events for watches ([`history`]: bounded by count, by age and by
//! bytes, like etcd's compaction), and durability through [`wal`].
//!
//! Objects are kept as their encoded JSON, one copy each: a decoded `serde_json::Value` takes
//! 6-9 times the bytes of its JSON (a map node per object in `managedFields`), and the encoded
//! form is what watches send and the log writes anyway. Readers get a freshly decoded object.
//!
//! Watches are fed per storage key: each publication (a group of writes made durable together)
//! goes to the key's feed as one [`Batch`], sent after the store's lock is released, so a
//! watcher wakes once per group and writers never wait on the fan-out.
//!
//! A write is visible (to get, list and watch) only once it is on disk. Until then it is
//! pending: later writes see it (their preconditions check against it, [`Store::latest`]), readers
//! do not. The log writer publishes pending writes in resourceVersion order once their group is
//! fsynced, before acknowledging them; when a group fails, every pending write is dropped
//! unseen (later ones may build on the failed ones) and their requests fail.

pub mod history;
pub mod wal;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use pier_memory::ShrinkIfSparse as _;
use serde_json::Value;
use tokio::sync::{broadcast, oneshot};

use crate::error::{ApiError, Error};
use history::History;
use wal::{LogIo, Wal};

/// The watch history's byte budget when the live objects take less (see [`history`]).
pub const HISTORY_MIN_BYTES: usize = 1 << 20;

/// What kind of change an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// Changes published together (one durable group of writes) to one storage key's watches.
pub type Batch = Arc<[Arc<Event>]>;

/// Batches a key's feed holds for watches that have not taken them yet; a watch further behind
/// is told it lagged (and is closed, to resume from its last version). Values leave the feed
/// once every watch took them, so this bounds what a stuck watch can hold, not what is kept.
const FEED_CAPACITY: usize = 2048;

/// One committed change.
#[derive(Debug)]
pub struct Event {
    pub rv: u64,
    pub key: String,
    pub namespace: String,
    pub kind: EventType,
    /// The new object (for deletions: the last state, with the deletion's resourceVersion), for
    /// selectors: without its managed fields (see [`for_selectors`]); [`Event::json`] is the
    /// whole object.
    pub object: Arc<Value>,
    /// The object before the change, if any, for selectors: without its managed fields (see
    /// [`for_selectors`]).
    pub old: Option<Arc<Value>>,
    /// The whole object's JSON, encoded once for all watchers (by the store: what it keeps).
    pub encoded: OnceLock<Bytes>,
}

impl Event {
    /// The whole object as JSON (set by the store; else encoded from `object` on first use).
    pub fn json(&self) -> &Bytes {
        self.encoded.get_or_init(|| encode(&self.object))
    }
}

/// An object's JSON as the store keeps it, in an allocation of its length: the encoder's buffer
/// grows by doubling, so it would keep up to twice the bytes for as long as the object (or its
/// change in the watch history) lives; an Event stays an hour.
pub fn encode(object: &Value) -> Bytes {
    let json = serde_json::to_vec(object).unwrap_or_default();
    Bytes::from(json.into_boxed_slice())
}

/// What a change keeps decoded of its objects, which watches' selectors read (and, for the one
/// it replaced, only they: to tell ADDED and DELETED from MODIFIED): not their managed fields,
/// most of a decoded object's size, held by every change in flight to watches (the whole object
/// is in [`Event::json`]). A shared object is kept as it is (no copy).
pub(crate) fn for_selectors(mut object: Arc<Value>) -> Arc<Value> {
    if let Some(meta) = Arc::get_mut(&mut object)
        .and_then(|o| o.get_mut("metadata"))
        .and_then(Value::as_object_mut)
    {
        meta.remove("managedFields");
    }
    object
}

/// A copy of `object` without its managed fields (see [`for_selectors`]), made without copying
/// them first.
fn without_managed_fields(object: &Value) -> Value {
    let Value::Object(fields) = object else {
        return object.clone();
    };
    let copy = |(key, value): (&String, &Value)| match (key.as_str(), value) {
        ("metadata", Value::Object(meta)) => {
            let meta = meta
                .iter()
                .filter(|(k, _)| k.as_str() != "managedFields")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            (key.clone(), Value::Object(meta))
        }
        _ => (key.clone(), value.clone()),
    };
    Value::Object(fields.iter().map(copy).collect())
}

/// An object the store encoded, decoded for a reader.
pub(crate) fn decode(json: &Bytes) -> Arc<Value> {
    let object = serde_json::from_slice(json).unwrap_or_else(|e| {
        // Only JSON the store encoded itself is decoded: this is a bug, not bad input.
        tracing::error!(error = %e, "a stored object does not decode");
        Value::Null
    });
    Arc::new(object)
}

/// The precondition of a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The object must not exist (create).
    Absent,
    /// The object must exist at exactly this resourceVersion.
    Rv(u64),
}

/// Why a commit did not happen.
#[derive(Debug, PartialEq, Eq)]
pub enum CommitError {
    /// The object exists (for `Expect::Absent`).
    Exists,
    /// The object is gone (for `Expect::Rv`).
    Missing,
    /// The object changed since it was read.
    Changed,
    /// Committed in memory but the disk write failed (the answer must be an error).
    NotDurable(String),
}

/// Waits for a commit to be durable.
#[derive(Debug)]
pub struct Durable(Option<oneshot::Receiver<Result<(), String>>>);

impl Durable {
    /// Resolves once the write is on disk (immediately for in-memory stores).
    pub async fn wait(self) -> Result<(), ApiError> {
        match self.0 {
            None => Ok(()),
            Some(rx) => match rx.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(ApiError::Internal(e)),
                Err(_) => Err(ApiError::Internal("the log writer stopped".into())),
            },
        }
    }
}

/// An object's (namespace, name) within its storage key.
pub type NamespacedName = (String, String);

/// One storage key's objects by (namespace, name), as JSON.
type Objects = BTreeMap<NamespacedName, Bytes>;

/// A version of an object written but not durable yet: decoded (for the writes that follow it)
/// and encoded (for the log and, once durable, the store).
#[derive(Debug, Clone)]
struct Version {
    object: Arc<Value>,
    json: Bytes,
}

/// (storage key, namespace, name)
type ObjectId = (String, String, String);

#[derive(Debug)]
struct Inner {
    /// The version of the last visible (durable) write.
    rv: u64,
    /// The version of the last write, pending ones included.
    next_rv: u64,
    /// The visible objects.
    objects: HashMap<String, Objects>,
    /// The bytes of the visible objects' JSON.
    live_bytes: usize,
    /// The newest pending state of each object with pending writes (None: deleted), and the
    /// version that wrote it.
    pending: HashMap<ObjectId, (u64, Option<Version>)>,
    /// Pending writes in version order, with the object's name.
    queue: VecDeque<(String, Arc<Event>)>,
    /// The version of the last visible write of each storage key.
    key_rv: HashMap<String, u64>,
    /// Recent changes, for watches that resume.
    history: History,
    /// Log records written since the last snapshot.
    since_snapshot: usize,
    /// Each watched storage key's feed of published changes.
    feeds: HashMap<String, broadcast::Sender<Batch>>,
}

/// The store. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Store {
    shared: Arc<Shared>,
    wal: Option<Wal>,
    /// Take a snapshot (and empty the log) after this many log records.
    compact_every: usize,
}

/// What the log writer thread reaches too (to publish).
#[derive(Debug)]
struct Shared {
    inner: Mutex<Inner>,
    /// Every write up to this version is published or dropped.
    settled: tokio::sync::watch::Sender<u64>,
}

/// A consistent page of a list: its objects decoded, or their JSON as stored.
#[derive(Debug)]
pub struct Page<T = Arc<Value>> {
    pub items: Vec<T>,
    pub rv: u64,
    /// The (namespace, name) to continue after, if there is more.
    pub next: Option<(String, String)>,
    pub remaining: usize,
}

/// What the store holds, in objects and bytes of JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub objects: usize,
    pub object_bytes: usize,
    /// Changes in the watch history.
    pub history: usize,
    /// The history's bytes (an upper bound: see [`history`]).
    pub history_bytes: usize,
}

/// A started watch: the events after the requested version, then the live feed.
#[derive(Debug)]
pub struct Subscription {
    pub backlog: Vec<Arc<Event>>,
    /// The key's changes from now on (some may also be in `backlog` or `initial`: skip what
    /// is not newer than what was already sent).
    pub live: broadcast::Receiver<Batch>,
    /// Current objects (for watches that start with synthetic ADDED events).
    pub initial: Vec<Arc<Value>>,
    pub rv: u64,
}

fn rv_of(obj: &Value) -> u64 {
    obj.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn set_rv(obj: &mut Value, rv: u64) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
    }
}

impl Store {
    /// A store that lives in memory only.
    pub fn in_memory(history_cap: usize) -> Store {
        Store::build(wal::Recovered::default(), history_cap, usize::MAX)
    }

    /// A store persisted in `dir`, compacting its log into a snapshot every `compact_every`
    /// writes; `io` does the log's writes and fsyncs.
    pub fn open(
        dir: &Path,
        history_cap: usize,
        compact_every: usize,
        io: Arc<dyn LogIo>,
    ) -> Result<Store, Error> {
        let (recovered, recovery) = wal::recover(dir, io)?;
        let mut store = Store::build(recovered, history_cap, compact_every);
        store.wal = Some(recovery.start(Publish(store.shared.clone()))?);
        Ok(store)
    }

    fn build(recovered: wal::Recovered, history_cap: usize, compact_every: usize) -> Store {
        let live_bytes = recovered
            .objects
            .values()
            .flat_map(BTreeMap::values)
            .map(Bytes::len)
            .sum();
        let objects = recovered.objects.into_iter().collect();
        let history = History::new(
            recovered.rv,
            history::Bounds {
                count: history_cap,
                max_age: Duration::MAX,
                min_bytes: HISTORY_MIN_BYTES,
            },
        );
        Store {
            shared: Arc::new(Shared {
                inner: Mutex::new(Inner {
                    rv: recovered.rv,
                    next_rv: recovered.rv,
                    objects,
                    live_bytes,
                    pending: HashMap::new(),
                    queue: VecDeque::new(),
                    key_rv: HashMap::new(),
                    history,
                    since_snapshot: 0,
                    feeds: HashMap::new(),
                }),
                settled: tokio::sync::watch::Sender::new(recovered.rv),
            }),
            wal: None,
            compact_every: compact_every.max(1),
        }
    }

    /// Also drop changes from the history once they are older than `max_age` (by default
    /// only the count bounds it): see [`Store::prune_history`].
    pub fn with_history_max_age(self, max_age: Duration) -> Store {
        self.lock().history.set_max_age(max_age);
        self
    }

    /// The history's byte budget when the live objects take less (default
    /// [`HISTORY_MIN_BYTES`]): see [`history`].
    pub fn with_history_min_bytes(self, min_bytes: usize) -> Store {
        self.lock().history.set_min_bytes(min_bytes);
        self
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.shared.lock()
    }

    /// The current resourceVersion.
    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    /// One object.
    pub fn get(&self, key: &str, ns: &str, name: &str) -> Option<Arc<Value>> {
        let json = stored(&self.lock(), key, ns, name)?;
        // Decoded outside the lock.
        Some(decode(&json))
    }

    /// Whether an object exists (visible), without decoding it.
    pub fn contains(&self, key: &str, ns: &str, name: &str) -> bool {
        stored(&self.lock(), key, ns, name).is_some()
    }

    /// One object as the next write sees it: with pending writes, which readers do not see yet.
    /// For computing writes only: what it returns may never become durable.
    pub fn latest(&self, key: &str, ns: &str, name: &str) -> Option<Arc<Value>> {
        latest_locked(&self.lock(), key, ns, name)
    }

    /// Whether an object exists as the next write sees it (pending writes included), without
    /// decoding it.
    pub fn latest_contains(&self, key: &str, ns: &str, name: &str) -> bool {
        let inner = self.lock();
        match pending_state(&inner, key, ns, name) {
            Some(state) => state.is_some(),
            None => stored(&inner, key, ns, name).is_some(),
        }
    }

    /// The version of the last visible write to storage key `key` (0: none since the start).
    pub fn key_version(&self, key: &str) -> u64 {
        self.lock().key_rv.get(key).copied().unwrap_or(0)
    }

    /// Waits until every write up to `rv` is visible or dropped.
    pub async fn settled(&self, rv: u64) {
        let mut rx = self.shared.settled.subscribe();
        let _ = rx.wait_for(|settled| *settled >= rv).await;
    }

    /// Every object of a storage key (in one namespace, or all when `ns` is None), in (ns, name)
    /// order, starting after `after`, at most `limit` matching `filter`.
    pub fn list(
        &self,
        key: &str,
        ns: Option<&str>,
        after: Option<(String, String)>,
        limit: Option<usize>,
        filter: &dyn Fn(&Value) -> bool,
    ) -> Page {
        self.list_with(key, ns, after, limit, &|_, json| {
            let object = decode(json);
            filter(&object).then_some(object)
        })
    }

    /// Like [`Store::list`], with the objects' JSON as stored (shared, not copied): nothing is
    /// decoded without a `filter`, and with one each object only to be tested, then dropped. A
    /// list's memory is then its JSON, where decoded objects took several times that, all at
    /// once (about 10 MB for 500 Endpoints, per list).
    pub fn list_json(
        &self,
        key: &str,
        ns: Option<&str>,
        after: Option<(String, String)>,
        limit: Option<usize>,
        filter: Option<&dyn Fn(&Value) -> bool>,
    ) -> Page<Bytes> {
        self.list_with(key, ns, after, limit, &|_, json| match filter {
            None => Some(json.clone()),
            Some(filter) => filter(&decode(json)).then(|| json.clone()),
        })
    }

    /// The objects of `key` (in namespace `ns`, if any) after `after` in (namespace, name)
    /// order, at most `limit`, as `select` makes them from their (namespace, name) and JSON
    /// (skipping those it returns none for).
    pub fn list_with<T>(
        &self,
        key: &str,
        ns: Option<&str>,
        after: Option<(String, String)>,
        limit: Option<usize>,
        select: &dyn Fn(&NamespacedName, &Bytes) -> Option<T>,
    ) -> Page<T> {
        let inner = self.lock();
        let mut page = Page {
            items: Vec::new(),
            rv: inner.rv,
            next: None,
            remaining: 0,
        };
        let Some(objs) = inner.objects.get(key) else {
            return page;
        };
        let start = match (&after, ns) {
            (Some(a), _) => Bound::Excluded(a.clone()),
            (None, Some(ns)) => Bound::Included((ns.to_string(), String::new())),
            (None, None) => Bound::Unbounded,
        };
        let limit = limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
        for (id @ (ons, oname), json) in objs.range((start, Bound::Unbounded)) {
            if let Some(ns) = ns
                && ons.as_str() != ns
            {
                if ons.as_str() > ns {
                    break;
                }
                continue;
            }
            let Some(item) = select(id, json) else {
                continue;
            };
            if page.items.len() >= limit {
                page.remaining += 1;
                continue;
            }
            page.items.push(item);
            if page.items.len() == limit {
                page.next = Some((ons.clone(), oname.clone()));
            }
        }
        if page.remaining == 0 {
            page.next = None;
        }
        page
    }

    /// What the store holds now.
    pub fn usage(&self) -> Usage {
        let inner = self.lock();
        Usage {
            objects: inner.objects.values().map(BTreeMap::len).sum(),
            object_bytes: inner.live_bytes,
            history: inner.history.len(),
            history_bytes: inner.history.bytes(),
        }
    }

    /// How many objects storage key `key` holds.
    pub fn count(&self, key: &str) -> usize {
        self.lock().objects.get(key).map_or(0, BTreeMap::len)
    }

    /// Every storage key with at least one object, and how many.
    pub fn counts(&self) -> Vec<(String, usize)> {
        let inner = self.lock();
        inner
            .objects
            .iter()
            .map(|(k, o)| (k.clone(), o.len()))
            .collect()
    }

    /// Write (`Some`) or delete (`None`) an object if `expect` holds (checked against the
    /// latest state, pending writes included). Sets the new resourceVersion in the object and
    /// queues the log write; the change becomes visible once durable ([`Durable::wait`]), at
    /// once for an in-memory store.
    pub fn commit(
        &self,
        key: &str,
        ns: &str,
        name: &str,
        expect: Expect,
        new: Option<Value>,
    ) -> Result<(Arc<Value>, Durable), CommitError> {
        let mut inner = self.lock();
        let old = latest_locked(&inner, key, ns, name);
        match (expect, &old) {
            (Expect::Absent, Some(_)) => return Err(CommitError::Exists),
            (Expect::Rv(_), None) => return Err(CommitError::Missing),
            (Expect::Rv(rv), Some(o)) if rv_of(o) != rv => return Err(CommitError::Changed),
            _ => {}
        }
        if new.is_none() && old.is_none() {
            return Err(CommitError::Missing);
        }
        let rv = inner.next_rv + 1;
        let (kind, object) = match new {
            Some(mut obj) => {
                set_rv(&mut obj, rv);
                let kind = if old.is_some() {
                    EventType::Modified
                } else {
                    EventType::Added
                };
                (kind, Arc::new(obj))
            }
            None => {
                let mut last = old.as_deref().cloned().unwrap_or(Value::Null);
                set_rv(&mut last, rv);
                (EventType::Deleted, Arc::new(last))
            }
        };
        // Encoded once: what the store keeps, the log writes and watches send.
        let json = encode(&object);
        let stored = (kind != EventType::Deleted).then(|| Version {
            object: object.clone(),
            json: json.clone(),
        });
        let event = Arc::new(Event {
            rv,
            key: key.to_string(),
            namespace: ns.to_string(),
            kind,
            object: Arc::new(without_managed_fields(&object)),
            old: old.map(for_selectors),
            encoded: OnceLock::from(json),
        });
        let Some(wal) = &self.wal else {
            inner.next_rv = rv;
            // In memory, commits publish themselves: under the lock, which keeps their order.
            let feed = self.shared.apply_locked(&mut inner, name, event.clone());
            if let Some(feed) = feed {
                let _ = feed.send(Arc::from([event]));
            }
            self.shared.settled.send_replace(rv);
            return Ok((object, Durable(None)));
        };
        let Some(ack) = wal.append(wal::Pending {
            rv,
            k: key.to_string(),
            ns: ns.to_string(),
            n: name.to_string(),
            o: stored.as_ref().map(|v| v.json.clone()),
        }) else {
            return Err(CommitError::NotDurable("the log writer stopped".into()));
        };
        inner.next_rv = rv;
        inner.pending.insert(
            (key.to_string(), ns.to_string(), name.to_string()),
            (rv, stored),
        );
        inner.queue.push_back((name.to_string(), event));
        inner.since_snapshot += 1;
        if inner.since_snapshot >= self.compact_every {
            inner.since_snapshot = 0;
            wal.snapshot(wal::Snapshot {
                rv,
                objects: latest_objects(&inner),
            });
        }
        Ok((object, Durable(Some(ack))))
    }

    /// Drops the changes recorded more than the history's max age ago (like etcd's periodic
    /// compaction), and any beyond its other bounds: each keeps a whole object version (and the
    /// one it replaced) alive, and a watch that fell that far behind re-lists anyway. Watches
    /// resuming from before them get 410 Gone. Every write does this; call it periodically so an
    /// idle store frees them too. Returns how many were dropped.
    pub fn prune_history(&self) -> usize {
        let mut inner = self.lock();
        let live_bytes = inner.live_bytes;
        inner.history.prune(Instant::now(), live_bytes)
    }

    /// How many changes the history holds.
    pub fn history_len(&self) -> usize {
        self.lock().history.len()
    }

    /// When the change at `rv` became visible (its commit: durable and published to watches),
    /// while the history still holds it: how benchmarks time watch delivery from the commit.
    pub fn committed_at(&self, rv: u64) -> Option<Instant> {
        self.lock().history.recorded_at(rv)
    }

    /// Forget the change history (like an etcd compaction): watches can no longer resume from
    /// any earlier version and get 410 Gone.
    pub fn compact_history(&self) {
        let mut inner = self.lock();
        let rv = inner.rv;
        inner.history.clear(rv);
    }

    /// Start a watch on `key` after resourceVersion `from` (None: from now, with the current
    /// objects as `initial`). Fails with 410 Gone when `from` is older than the history kept.
    pub fn subscribe(&self, key: &str, from: Option<u64>) -> Result<Subscription, ApiError> {
        // Under the lock: the live feed from exactly this version, and the JSON before it
        // (shared, not copied); decoded once the lock is released.
        let mut inner = self.lock();
        let live = inner
            .feeds
            .entry(key.to_string())
            .or_insert_with(|| broadcast::channel(FEED_CAPACITY).0)
            .subscribe();
        let rv = inner.rv;
        let (initial, backlog) = match from {
            None => {
                let initial: Vec<Bytes> = inner
                    .objects
                    .get(key)
                    .map(|o| o.values().cloned().collect())
                    .unwrap_or_default();
                (initial, history::Changes::default())
            }
            Some(from) => match inner.history.since(key, from) {
                Ok(changes) => (Vec::new(), changes),
                Err(too_old) => {
                    return Err(ApiError::Gone(format!(
                        "too old resource version: {from} ({})",
                        too_old.oldest_resumable + 1
                    )));
                }
            },
        };
        drop(inner);
        Ok(Subscription {
            backlog: backlog.events(),
            live,
            initial: initial.iter().map(decode).collect(),
            rv,
        })
    }
}

/// The visible object's JSON.
fn stored(inner: &Inner, key: &str, ns: &str, name: &str) -> Option<Bytes> {
    inner
        .objects
        .get(key)
        .and_then(|o| o.get(&(ns.to_string(), name.to_string())))
        .cloned()
}

/// The state a write not yet durable leaves the object in (`Some(None)`: deleted), which the
/// next write sees instead of what is stored; `None` when no write of it is pending.
fn pending_state<'a>(
    inner: &'a Inner,
    key: &str,
    ns: &str,
    name: &str,
) -> Option<&'a Option<Version>> {
    if inner.pending.is_empty() {
        return None;
    }
    inner
        .pending
        .get(&(key.to_string(), ns.to_string(), name.to_string()))
        .map(|(_, state)| state)
}

fn latest_locked(inner: &Inner, key: &str, ns: &str, name: &str) -> Option<Arc<Value>> {
    match pending_state(inner, key, ns, name) {
        Some(state) => state.as_ref().map(|v| v.object.clone()),
        None => stored(inner, key, ns, name).map(|json| decode(&json)),
    }
}

/// Every object as of the last write, pending ones included (what a snapshot queued behind
/// them holds).
fn latest_objects(inner: &Inner) -> Vec<(String, String, String, Bytes)> {
    let mut out: Vec<_> = inner
        .objects
        .iter()
        .flat_map(|(k, objs)| {
            objs.iter()
                .map(move |((ns, n), o)| (k.clone(), ns.clone(), n.clone(), o.clone()))
        })
        .filter(|(k, ns, n, _)| {
            inner.pending.is_empty()
                || !inner
                    .pending
                    .contains_key(&(k.clone(), ns.clone(), n.clone()))
        })
        .collect();
    out.extend(inner.pending.iter().filter_map(|((k, ns, n), (_, o))| {
        o.as_ref()
            .map(|o| (k.clone(), ns.clone(), n.clone(), o.json.clone()))
    }));
    out
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (each change is applied whole).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes a change visible: applies it and records it in the history. Returns its key's
    /// feed while a watch of that key is open, for the caller to send the change to.
    fn apply_locked(
        &self,
        inner: &mut Inner,
        name: &str,
        event: Arc<Event>,
    ) -> Option<broadcast::Sender<Batch>> {
        let id = (event.namespace.clone(), name.to_string());
        let objs = inner.objects.entry(event.key.clone()).or_default();
        let previous = if event.kind == EventType::Deleted {
            objs.remove(&id)
        } else {
            inner.live_bytes += event.json().len();
            objs.insert(id, event.json().clone())
        };
        if objs.is_empty() {
            inner.objects.remove(&event.key);
        }
        inner.live_bytes -= previous.as_ref().map_or(0, Bytes::len);
        inner.rv = event.rv;
        match inner.key_rv.get_mut(&event.key) {
            Some(v) => *v = event.rv,
            None => {
                inner.key_rv.insert(event.key.clone(), event.rv);
            }
        }
        let live_bytes = inner.live_bytes;
        inner
            .history
            .record(&event, previous, Instant::now(), live_bytes);
        inner
            .feeds
            .get(&event.key)
            .filter(|feed| feed.receiver_count() > 0)
            .cloned()
    }
}

/// Adds `event` to the batch of its feed (a group of writes usually touches one or two keys).
fn add_to_batch(
    batches: &mut Vec<(broadcast::Sender<Batch>, Vec<Arc<Event>>)>,
    feed: broadcast::Sender<Batch>,
    event: Arc<Event>,
) {
    match batches.iter_mut().find(|(f, _)| f.same_channel(&feed)) {
        Some((_, events)) => events.push(event),
        None => batches.push((feed, vec![event])),
    }
}

/// The store's side of the log writer.
#[derive(Debug)]
struct Publish(Arc<Shared>);

impl wal::Publisher for Publish {
    fn durable(&mut self, rv: u64) {
        let shared = &self.0;
        // Only this (the log writer's) thread publishes durable writes, so sending the batches
        // after the lock is released keeps them in order.
        let mut batches: Vec<(broadcast::Sender<Batch>, Vec<Arc<Event>>)> = Vec::new();
        let mut inner = shared.lock();
        while inner.queue.front().is_some_and(|(_, e)| e.rv <= rv) {
            let Some((name, event)) = inner.queue.pop_front() else {
                break;
            };
            let id = (event.key.clone(), event.namespace.clone(), name.clone());
            if inner
                .pending
                .get(&id)
                .is_some_and(|(at, _)| *at == event.rv)
            {
                inner.pending.remove(&id);
            }
            if let Some(feed) = shared.apply_locked(&mut inner, &name, event.clone()) {
                add_to_batch(&mut batches, feed, event);
            }
        }
        // A burst of writes grew them; they are empty between bursts.
        inner.pending.shrink_if_sparse();
        inner.queue.shrink_if_sparse();
        drop(inner);
        for (feed, events) in batches {
            // No watch left is fine.
            let _ = feed.send(Arc::from(events));
        }
        shared.settled.send_replace(rv);
    }

    fn failed(&mut self) -> u64 {
        let shared = &self.0;
        let mut inner = shared.lock();
        inner.queue.clear();
        inner.pending.clear();
        let last = inner.next_rv;
        shared.settled.send_replace(last);
        last
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(name: &str) -> Value {
        json!({"metadata": {"name": name}})
    }

    #[test]
    fn a_list_of_stored_json_holds_what_a_decoded_list_holds() {
        let s = Store::in_memory(100);
        for (ns, name, app) in [
            ("a", "x", "web"),
            ("a", "y", "db"),
            ("b", "x", "web"),
            ("b", "y", "db"),
            ("b", "z", "web"),
        ] {
            let labelled =
                json!({"metadata": {"name": name, "namespace": ns, "labels": {"app": app}}});
            s.commit("k", ns, name, Expect::Absent, Some(labelled))
                .expect("write");
        }
        let web = |o: &Value| o["metadata"]["labels"]["app"] == "web";
        let everything = |_: &Value| true;
        let names = |items: Vec<Value>| -> Vec<String> {
            items
                .iter()
                .map(|o| format!("{}/{}", o["metadata"]["namespace"], o["metadata"]["name"]))
                .collect()
        };
        type Filter<'a> = Option<&'a dyn Fn(&Value) -> bool>;
        let cases: [(Option<&str>, Filter<'_>, Option<usize>); 5] = [
            (None, None, None),
            (Some("b"), None, None),
            (None, Some(&web), None),
            (None, Some(&web), Some(1)),
            (Some("b"), None, Some(2)),
        ];
        for (ns, filter, limit) in cases {
            let mut after = None;
            loop {
                let decoded = s.list("k", ns, after.clone(), limit, filter.unwrap_or(&everything));
                let stored = s.list_json("k", ns, after.clone(), limit, filter);
                let case = format!(
                    "{ns:?} filtered {} limit {limit:?} after {after:?}",
                    filter.is_some()
                );
                assert_eq!(
                    names(
                        decoded
                            .items
                            .into_iter()
                            .map(Arc::unwrap_or_clone)
                            .collect()
                    ),
                    names(
                        stored
                            .items
                            .iter()
                            .map(|json| Arc::unwrap_or_clone(decode(json)))
                            .collect()
                    ),
                    "{case}"
                );
                assert_eq!(
                    (decoded.rv, &decoded.next, decoded.remaining),
                    (stored.rv, &stored.next, stored.remaining),
                    "{case}"
                );
                after = decoded.next;
                if after.is_none() {
                    break;
                }
            }
        }
        // Nothing decoded or copied: the items are the store's own JSON.
        let stored = s.list_json("k", Some("a"), None, None, None);
        let kept = stored_json(&s, "k", "a", "x");
        assert_eq!(stored.items[0].as_ptr(), kept.as_ptr());
    }

    fn stored_json(s: &Store, key: &str, ns: &str, name: &str) -> Bytes {
        stored(&s.lock(), key, ns, name).expect("stored")
    }

    #[test]
    fn commits_bump_one_counter_and_check_preconditions() {
        let s = Store::in_memory(10);
        let (a, _) = s
            .commit("g/r", "", "a", Expect::Absent, Some(obj("a")))
            .expect("create");
        assert_eq!(a["metadata"]["resourceVersion"], "1");
        assert_eq!(
            s.commit("g/r", "", "a", Expect::Absent, Some(obj("a")))
                .err(),
            Some(CommitError::Exists)
        );
        assert_eq!(
            s.commit("g/r", "", "a", Expect::Rv(7), Some(obj("a")))
                .err(),
            Some(CommitError::Changed)
        );
        let (b, _) = s
            .commit("g/r", "", "a", Expect::Rv(1), Some(obj("a")))
            .expect("update");
        assert_eq!(b["metadata"]["resourceVersion"], "2");
        s.commit("g/x", "ns", "b", Expect::Absent, Some(obj("b")))
            .expect("other key");
        assert_eq!(s.current_rv(), 3);
    }

    #[test]
    fn lists_page_in_order_within_a_namespace() {
        let s = Store::in_memory(10);
        for (ns, n) in [("b", "1"), ("a", "2"), ("a", "1"), ("c", "1")] {
            s.commit("k", ns, n, Expect::Absent, Some(obj(n)))
                .expect("create");
        }
        let all = |_: &Value| true;
        let p = s.list("k", None, None, Some(2), &all);
        assert_eq!(p.items.len(), 2);
        assert_eq!(p.remaining, 2);
        assert_eq!(p.next, Some(("a".into(), "2".into())));
        let p2 = s.list("k", None, p.next, Some(2), &all);
        assert_eq!(p2.items.len(), 2);
        assert_eq!(p2.next, None);
        let in_a = s.list("k", Some("a"), None, None, &all);
        assert_eq!(in_a.items.len(), 2);
    }

    #[test]
    fn the_log_is_compacted_into_snapshots() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = Store::open(dir.path(), 10, 10, Arc::new(wal::FileIo)).expect("open");
            for i in 0..25 {
                let (_, d) = s
                    .commit("k", "", &format!("o{i}"), Expect::Absent, Some(obj("x")))
                    .expect("create");
                futures::executor::block_on(d.wait()).expect("durable");
            }
            let (_, d) = s
                .commit("k", "", "o0", Expect::Rv(1), None)
                .expect("delete");
            futures::executor::block_on(d.wait()).expect("durable");
        }
        let log = std::fs::read_to_string(dir.path().join("wal.jsonl")).expect("log");
        assert!(
            log.lines().count() <= 10,
            "compacted: {} lines",
            log.lines().count()
        );
        let s = Store::open(dir.path(), 10, 10, Arc::new(wal::FileIo)).expect("reopen");
        assert_eq!(s.current_rv(), 26);
        let all = s.list("k", None, None, None, &|_| true);
        assert_eq!(all.items.len(), 24);
        let o7 = s.get("k", "", "o7").expect("recovered");
        assert_eq!(
            *o7,
            json!({"metadata": {"name": "x", "resourceVersion": "8"}})
        );
    }

    #[test]
    fn watches_resume_and_expire() {
        let s = Store::in_memory(2);
        for n in ["a", "b", "c"] {
            s.commit("k", "", n, Expect::Absent, Some(obj(n)))
                .expect("create");
        }
        let sub = s.subscribe("k", Some(1)).expect("resumable");
        assert_eq!(
            sub.backlog.iter().map(|e| e.rv).collect::<Vec<_>>(),
            vec![2, 3]
        );
        assert!(matches!(s.subscribe("k", Some(0)), Err(ApiError::Gone(_))));
    }

    #[test]
    fn a_watch_of_a_kind_that_did_not_change_resumes_after_other_kinds_changes_are_dropped() {
        // An idle kind's watchers hold an old version (no event of theirs came since); the
        // history dropping other kinds' changes must not send them back to a full list.
        let s = Store::in_memory(2);
        s.commit("idle", "", "a", Expect::Absent, Some(obj("a")))
            .expect("create");
        for n in ["b", "c", "d", "e"] {
            s.commit("busy", "", n, Expect::Absent, Some(obj(n)))
                .expect("create");
        }
        // Kept: rv 4 and 5 (busy); dropped: 1 (idle), 2 and 3 (busy).
        let sub = s
            .subscribe("idle", Some(1))
            .expect("nothing of it dropped since");
        assert!(sub.backlog.is_empty());
        assert!(matches!(
            s.subscribe("idle", Some(0)),
            Err(ApiError::Gone(_))
        ));
        assert!(matches!(
            s.subscribe("busy", Some(2)),
            Err(ApiError::Gone(_))
        ));
        assert_eq!(
            rvs(&s.subscribe("busy", Some(3)).expect("kept")),
            vec![4, 5]
        );
        // A new change of the idle kind is seen by the resumed watch.
        s.commit("idle", "", "f", Expect::Absent, Some(obj("f")))
            .expect("create");
        assert_eq!(rvs(&s.subscribe("idle", Some(1)).expect("kept")), vec![6]);
        // A compaction is for every kind.
        s.compact_history();
        assert!(matches!(
            s.subscribe("idle", Some(5)),
            Err(ApiError::Gone(_))
        ));
        assert!(s.subscribe("idle", Some(6)).is_ok());
    }

    fn rvs(sub: &Subscription) -> Vec<u64> {
        sub.backlog.iter().map(|e| e.rv).collect()
    }

    #[test]
    fn history_is_bounded_by_age() {
        let age = Duration::from_millis(300);
        let s = Store::in_memory(100).with_history_max_age(age);
        for n in ["a", "b"] {
            s.commit("k", "", n, Expect::Absent, Some(obj(n)))
                .expect("create");
        }
        std::thread::sleep(age + Duration::from_millis(100));
        // A write drops what is older than the max age: a and b (rv 1 and 2).
        for n in ["c", "d"] {
            s.commit("k", "", n, Expect::Absent, Some(obj(n)))
                .expect("create");
        }
        assert_eq!(s.history_len(), 2);
        assert!(matches!(s.subscribe("k", Some(0)), Err(ApiError::Gone(_))));
        // After rv 1 comes rv 2, which is gone: no silent gap.
        assert!(matches!(s.subscribe("k", Some(1)), Err(ApiError::Gone(_))));
        let sub = s.subscribe("k", Some(2)).expect("resumable");
        assert_eq!(rvs(&sub), vec![3, 4]);

        // Idle: pruning frees them without any write.
        assert_eq!(s.prune_history(), 0, "nothing is old yet");
        std::thread::sleep(age + Duration::from_millis(100));
        assert_eq!(s.prune_history(), 2);
        assert_eq!(s.history_len(), 0);
        assert!(matches!(s.subscribe("k", Some(3)), Err(ApiError::Gone(_))));
        let sub = s.subscribe("k", Some(4)).expect("up to date");
        assert!(sub.backlog.is_empty());
    }

    /// An object of about `size` bytes of JSON, with managed fields like a real one's.
    fn sized(name: &str, size: usize, label: &str) -> Value {
        json!({"metadata": {"name": name, "labels": {"app": label},
            "managedFields": [{"manager": "m", "fieldsV1": {"f:spec": {"f:pad": {}}}}]},
            "spec": {"pad": "x".repeat(size)}})
    }

    #[test]
    fn history_memory_follows_the_live_objects() {
        let floor = 16 << 10;
        let s = Store::in_memory(10_000).with_history_min_bytes(floor);
        // 50 objects of ~500 bytes, each rewritten 20 times: 1,000 changes, ~25 KiB live.
        for round in 0..20u64 {
            for i in 0..50 {
                let name = format!("o{i}");
                let expect = if round == 0 {
                    Expect::Absent
                } else {
                    Expect::Rv(rv_of(&s.get("k", "", &name).expect("exists")))
                };
                s.commit("k", "", &name, expect, Some(sized(&name, 500, "a")))
                    .expect("write");
            }
        }
        let u = s.usage();
        assert_eq!(u.objects, 50);
        assert!(u.object_bytes > floor, "{u:?}");
        assert!(
            u.history_bytes <= u.object_bytes * history::BYTES_PER_LIVE_BYTE,
            "{u:?}"
        );
        assert!(s.history_len() < 200, "{} changes kept", s.history_len());
        // The newest changes are still there to resume from; older ones are gone.
        let now = s.current_rv();
        assert_eq!(
            rvs(&s.subscribe("k", Some(now - 10)).expect("recent")).len(),
            10
        );
        assert!(matches!(s.subscribe("k", Some(1)), Err(ApiError::Gone(_))));

        // Everything deleted: the history shrinks to the floor, the store to nothing.
        for i in 0..50 {
            let name = format!("o{i}");
            let rv = rv_of(&s.get("k", "", &name).expect("exists"));
            s.commit("k", "", &name, Expect::Rv(rv), None)
                .expect("delete");
        }
        let u = s.usage();
        assert_eq!((u.objects, u.object_bytes), (0, 0), "{u:?}");
        assert!(u.history_bytes <= floor, "{u:?}");
        assert!(
            !s.subscribe("k", Some(s.current_rv() - 1))
                .expect("last")
                .backlog
                .is_empty()
        );
    }

    #[test]
    fn usage_counts_the_json_of_the_live_objects() {
        let s = Store::in_memory(100);
        let json_of = |name: &str| encode(&s.get("k", "ns", name).expect("exists")).len();
        s.commit("k", "ns", "a", Expect::Absent, Some(sized("a", 100, "x")))
            .expect("create");
        s.commit("k", "ns", "b", Expect::Absent, Some(sized("b", 300, "x")))
            .expect("create");
        assert_eq!(s.usage().object_bytes, json_of("a") + json_of("b"));
        assert_eq!(s.usage().objects, 2);
        s.commit("k", "ns", "a", Expect::Rv(1), Some(sized("a", 2000, "x")))
            .expect("update");
        assert_eq!(s.usage().object_bytes, json_of("a") + json_of("b"));
        let before = s.usage().object_bytes;
        let b = json_of("b");
        s.commit("k", "ns", "b", Expect::Rv(2), None)
            .expect("delete");
        assert_eq!(s.usage().object_bytes, before - b);
        assert_eq!(s.usage().objects, 1);
        assert_eq!(s.counts(), vec![("k".to_string(), 1)]);
    }

    #[test]
    fn resumed_watches_get_the_replaced_object_for_their_selectors() {
        let s = Store::in_memory(100);
        s.commit("k", "", "a", Expect::Absent, Some(sized("a", 10, "before")))
            .expect("create");
        s.commit("k", "", "a", Expect::Rv(1), Some(sized("a", 10, "after")))
            .expect("update");
        s.commit("k", "", "a", Expect::Rv(2), None).expect("delete");
        let sub = s.subscribe("k", Some(0)).expect("resumable");
        let [created, updated, deleted] = &sub.backlog[..] else {
            panic!("three changes: {:?}", rvs(&sub));
        };
        assert!(created.old.is_none());
        let old = updated.old.as_deref().expect("the version replaced");
        assert_eq!(old["metadata"]["labels"]["app"], "before");
        assert!(old["metadata"].get("managedFields").is_none(), "{old}");
        assert_eq!(updated.object["metadata"]["labels"]["app"], "after");
        assert!(updated.object["metadata"].get("managedFields").is_none());
        assert_eq!(deleted.kind, EventType::Deleted);
        assert_eq!(deleted.object["metadata"]["resourceVersion"], "3");
        assert_eq!(deleted.old.as_deref(), Some(&*deleted.object));
        // What watches send is the whole object, as stored.
        let whole = decode(updated.json());
        assert_eq!(whole["metadata"]["managedFields"][0]["manager"], "m");
        assert_eq!(
            without_managed_fields(&whole),
            *updated.object,
            "the same object"
        );
    }

    #[test]
    fn live_changes_hold_their_objects_without_managed_fields() {
        let s = Store::in_memory(100);
        let sub = s.subscribe("k", None).expect("watch");
        let mut live = sub.live;
        let (written, _) = s
            .commit("k", "", "a", Expect::Absent, Some(sized("a", 10, "x")))
            .expect("create");
        // The writer gets the whole object back; watches get it as JSON.
        assert!(written["metadata"].get("managedFields").is_some());
        let batch = live.try_recv().expect("published");
        let [event] = &batch[..] else {
            panic!("one change in the batch: {batch:?}");
        };
        assert!(event.object["metadata"].get("managedFields").is_none());
        assert_eq!(*decode(event.json()), *written);
    }

    /// Holds each fsync until the test lets it through, saying when one waits.
    #[derive(Debug)]
    struct Gate {
        waiting: Mutex<std::sync::mpsc::Sender<()>>,
        go: Mutex<std::sync::mpsc::Receiver<()>>,
    }

    impl wal::LogIo for Gate {
        fn sync(&self, file: &mut std::fs::File) -> std::io::Result<()> {
            let _ = self.waiting.lock().map(|w| w.send(()));
            let _ = self.go.lock().map(|g| g.recv());
            file.sync_data()
        }
    }

    /// A store in `dir` whose every fsync says it is waiting, then waits for a go.
    fn gated_store(
        dir: &Path,
    ) -> (
        Store,
        std::sync::mpsc::Receiver<()>,
        std::sync::mpsc::Sender<()>,
    ) {
        let (waiting_tx, waiting) = std::sync::mpsc::channel();
        let (go, go_rx) = std::sync::mpsc::channel();
        let gate = Gate {
            waiting: Mutex::new(waiting_tx),
            go: Mutex::new(go_rx),
        };
        let s = Store::open(dir, 100, usize::MAX, Arc::new(gate)).expect("open");
        (s, waiting, go)
    }

    fn rvs_of(batch: &Batch) -> Vec<u64> {
        batch.iter().map(|e| e.rv).collect()
    }

    #[test]
    fn the_next_write_sees_pending_creates_and_deletes_that_readers_do_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (s, waiting, go) = gated_store(dir.path());
        let (_, created) = s
            .commit("k", "", "a", Expect::Absent, Some(obj("a")))
            .expect("commit");
        waiting.recv().expect("the create's fsync waits");
        assert!(s.latest_contains("k", "", "a"), "a pending create");
        assert!(!s.contains("k", "", "a"), "not visible yet");
        assert!(!s.latest_contains("k", "", "b"));
        go.send(()).expect("release the fsync");
        futures::executor::block_on(created.wait()).expect("durable");
        assert!(s.contains("k", "", "a"));

        let (_, deleted) = s.commit("k", "", "a", Expect::Rv(1), None).expect("delete");
        waiting.recv().expect("the delete's fsync waits");
        assert!(!s.latest_contains("k", "", "a"), "a pending delete");
        assert!(s.contains("k", "", "a"), "still visible");
        go.send(()).expect("release the fsync");
        futures::executor::block_on(deleted.wait()).expect("durable");
        assert!(!s.contains("k", "", "a") && !s.latest_contains("k", "", "a"));
    }

    #[test]
    fn a_durable_group_reaches_each_keys_watches_as_one_batch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (s, waiting, go) = gated_store(dir.path());
        let mut a = s.subscribe("a", None).expect("watch a").live;
        let mut b = s.subscribe("b", None).expect("watch b").live;
        let (_, first) = s
            .commit("a", "", "a0", Expect::Absent, Some(obj("a0")))
            .expect("commit");
        waiting.recv().expect("the first write's fsync waits");
        // Queued meanwhile: the next group.
        let mut durable = vec![first];
        for (key, name) in [("a", "a1"), ("b", "b1"), ("a", "a2")] {
            let (_, d) = s
                .commit(key, "", name, Expect::Absent, Some(obj(name)))
                .expect("commit");
            durable.push(d);
        }
        for _ in 0..2 {
            go.send(()).expect("release an fsync");
        }
        for d in durable {
            futures::executor::block_on(d.wait()).expect("durable");
        }
        assert_eq!(rvs_of(&a.try_recv().expect("a: first group")), vec![1]);
        assert_eq!(rvs_of(&a.try_recv().expect("a: second group")), vec![2, 4]);
        assert_eq!(rvs_of(&b.try_recv().expect("b: its part")), vec![3]);
        assert!(
            a.try_recv().is_err() && b.try_recv().is_err(),
            "nothing else"
        );
    }

    #[test]
    fn the_writes_queue_gives_back_what_a_burst_grew_once_durable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (s, waiting, go) = gated_store(dir.path());
        let (_, first) = s
            .commit("k", "", "o0", Expect::Absent, Some(obj("o0")))
            .expect("commit");
        waiting.recv().expect("the first write's fsync waits");
        // A burst queues behind it, pending.
        let mut durable = vec![first];
        for i in 1..2_000 {
            let name = format!("o{i}");
            let (_, d) = s
                .commit("k", "", &name, Expect::Absent, Some(obj(&name)))
                .expect("commit");
            durable.push(d);
        }
        let grown = {
            let inner = s.lock();
            inner.pending.capacity() + inner.queue.capacity()
        };
        assert!(grown >= 2 * 1_999, "{grown}");
        for _ in 0..durable.len() {
            go.send(()).expect("release an fsync");
        }
        for d in durable {
            futures::executor::block_on(d.wait()).expect("durable");
        }
        let inner = s.lock();
        assert!(inner.pending.is_empty() && inner.queue.is_empty());
        let left = inner.pending.capacity() + inner.queue.capacity();
        assert!(
            left <= 2 * pier_memory::MIN_CAPACITY,
            "{left} of {grown} kept with nothing pending"
        );
    }

    #[test]
    fn without_a_max_age_only_the_count_bounds_history() {
        let s = Store::in_memory(100);
        s.commit("k", "", "a", Expect::Absent, Some(obj("a")))
            .expect("create");
        assert_eq!(s.prune_history(), 0);
        assert_eq!(rvs(&s.subscribe("k", Some(0)).expect("resumable")), vec![1]);
    }
}
