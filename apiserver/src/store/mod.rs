//! The object store: JSON objects by (storage key, namespace, name), one global resourceVersion
//! counter, a history of change events for watches (bounded by count and by age, like etcd's
//! compaction), and durability through [`wal`].

pub mod wal;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::{broadcast, oneshot};

use crate::error::{ApiError, Error};
use wal::Wal;

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

/// One committed change.
#[derive(Debug)]
pub struct Event {
    pub rv: u64,
    pub key: String,
    pub namespace: String,
    pub kind: EventType,
    /// The new object (for deletions: the last state, with the deletion's resourceVersion).
    pub object: Arc<Value>,
    /// The object before the change, if any.
    pub old: Option<Arc<Value>>,
    /// The object's JSON, encoded once for all watchers.
    pub encoded: std::sync::OnceLock<bytes::Bytes>,
}

impl Event {
    /// The object as JSON (encoded on first use, then shared).
    pub fn json(&self) -> &bytes::Bytes {
        self.encoded.get_or_init(|| {
            bytes::Bytes::from(serde_json::to_vec(&*self.object).unwrap_or_default())
        })
    }
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

type Objects = BTreeMap<(String, String), Arc<Value>>;

#[derive(Debug)]
struct Inner {
    rv: u64,
    objects: HashMap<String, Objects>,
    /// Recent changes, oldest first, each with when it was recorded.
    history: VecDeque<(Instant, Arc<Event>)>,
    /// The resourceVersion of the oldest change a watch can still resume after.
    oldest_resumable: u64,
    /// Log records written since the last snapshot.
    since_snapshot: usize,
}

/// The store. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Store {
    inner: Mutex<Inner>,
    wal: Option<Wal>,
    events: broadcast::Sender<Arc<Event>>,
    history_cap: usize,
    /// Changes recorded longer ago are dropped from the history.
    history_max_age: Duration,
    /// Take a snapshot (and empty the log) after this many log records.
    compact_every: usize,
}

/// A consistent page of a list.
#[derive(Debug)]
pub struct Page {
    pub items: Vec<Arc<Value>>,
    pub rv: u64,
    /// The (namespace, name) to continue after, if there is more.
    pub next: Option<(String, String)>,
    pub remaining: usize,
}

/// A started watch: the events after the requested version, then the live feed.
#[derive(Debug)]
pub struct Subscription {
    pub backlog: Vec<Arc<Event>>,
    pub live: broadcast::Receiver<Arc<Event>>,
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
        Store::build(None, wal::Recovered::default(), history_cap, usize::MAX)
    }

    /// A store persisted in `dir`, compacting its log into a snapshot every `compact_every`
    /// writes.
    pub fn open(dir: &Path, history_cap: usize, compact_every: usize) -> Result<Store, Error> {
        let (wal, recovered) = Wal::open(dir)?;
        Ok(Store::build(
            Some(wal),
            recovered,
            history_cap,
            compact_every,
        ))
    }

    fn build(
        wal: Option<Wal>,
        recovered: wal::Recovered,
        history_cap: usize,
        compact_every: usize,
    ) -> Store {
        let objects = recovered
            .objects
            .into_iter()
            .map(|(k, objs)| {
                let objs = objs
                    .into_iter()
                    .map(|(key, o)| (key, Arc::new(o)))
                    .collect();
                (k, objs)
            })
            .collect();
        let (events, _) = broadcast::channel(16384);
        Store {
            inner: Mutex::new(Inner {
                rv: recovered.rv,
                objects,
                history: VecDeque::new(),
                oldest_resumable: recovered.rv,
                since_snapshot: 0,
            }),
            wal,
            events,
            history_cap: history_cap.max(1),
            history_max_age: Duration::MAX,
            compact_every: compact_every.max(1),
        }
    }

    /// Also drop changes from the history once they are older than `max_age` (by default
    /// only the count bounds it): see [`Store::prune_history`].
    pub fn with_history_max_age(mut self, max_age: Duration) -> Store {
        self.history_max_age = max_age;
        self
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (each commit is applied whole).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current resourceVersion.
    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    /// One object.
    pub fn get(&self, key: &str, ns: &str, name: &str) -> Option<Arc<Value>> {
        let inner = self.lock();
        inner
            .objects
            .get(key)
            .and_then(|o| o.get(&(ns.to_string(), name.to_string())))
            .cloned()
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
        for ((ons, oname), obj) in objs.range((start, Bound::Unbounded)) {
            if let Some(ns) = ns
                && ons.as_str() != ns
            {
                if ons.as_str() > ns {
                    break;
                }
                continue;
            }
            if !filter(obj) {
                continue;
            }
            if page.items.len() >= limit {
                page.remaining += 1;
                continue;
            }
            page.items.push(obj.clone());
            if page.items.len() == limit {
                page.next = Some((ons.clone(), oname.clone()));
            }
        }
        if page.remaining == 0 {
            page.next = None;
        }
        page
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

    /// Write (`Some`) or delete (`None`) an object if `expect` holds. Sets the new
    /// resourceVersion in the object, records the event and queues the log write.
    pub fn commit(
        &self,
        key: &str,
        ns: &str,
        name: &str,
        expect: Expect,
        new: Option<Value>,
    ) -> Result<(Arc<Value>, Durable), CommitError> {
        let mut inner = self.lock();
        let id = (ns.to_string(), name.to_string());
        let old = inner.objects.get(key).and_then(|o| o.get(&id)).cloned();
        match (expect, &old) {
            (Expect::Absent, Some(_)) => return Err(CommitError::Exists),
            (Expect::Rv(_), None) => return Err(CommitError::Missing),
            (Expect::Rv(rv), Some(o)) if rv_of(o) != rv => return Err(CommitError::Changed),
            _ => {}
        }
        if new.is_none() && old.is_none() {
            return Err(CommitError::Missing);
        }
        let rv = inner.rv + 1;
        inner.rv = rv;
        let (kind, object) = match new {
            Some(mut obj) => {
                set_rv(&mut obj, rv);
                let obj = Arc::new(obj);
                inner
                    .objects
                    .entry(key.to_string())
                    .or_default()
                    .insert(id.clone(), obj.clone());
                let kind = if old.is_some() {
                    EventType::Modified
                } else {
                    EventType::Added
                };
                (kind, obj)
            }
            None => {
                if let Some(objs) = inner.objects.get_mut(key) {
                    objs.remove(&id);
                }
                let mut last = old.as_deref().cloned().unwrap_or(Value::Null);
                set_rv(&mut last, rv);
                (EventType::Deleted, Arc::new(last))
            }
        };
        let durable = Durable(self.wal.as_ref().map(|wal| {
            wal.append(wal::Pending {
                rv,
                k: key.to_string(),
                ns: ns.to_string(),
                n: name.to_string(),
                o: (kind != EventType::Deleted).then(|| object.clone()),
            })
        }));
        if let Some(wal) = &self.wal {
            inner.since_snapshot += 1;
            if inner.since_snapshot >= self.compact_every {
                inner.since_snapshot = 0;
                let objects = inner
                    .objects
                    .iter()
                    .flat_map(|(k, objs)| {
                        objs.iter()
                            .map(move |((ns, n), o)| (k.clone(), ns.clone(), n.clone(), o.clone()))
                    })
                    .collect();
                wal.snapshot(wal::Snapshot { rv, objects });
            }
        }
        let event = Arc::new(Event {
            rv,
            key: key.to_string(),
            namespace: ns.to_string(),
            kind,
            object: object.clone(),
            old,
            encoded: std::sync::OnceLock::new(),
        });
        let now = Instant::now();
        self.prune_locked(&mut inner, now);
        inner.history.push_back((now, event.clone()));
        while inner.history.len() > self.history_cap {
            if let Some((_, dropped)) = inner.history.pop_front() {
                inner.oldest_resumable = dropped.rv;
            }
        }
        // No receivers is fine.
        let _ = self.events.send(event);
        Ok((object, durable))
    }

    /// Drops the changes recorded more than the history's max age ago (like etcd's periodic
    /// compaction): each keeps a whole object version (and the one it replaced) alive, and a
    /// watch that fell that far behind re-lists anyway. Watches resuming from before them get
    /// 410 Gone. Every write does this; call it periodically so an idle store frees them too.
    /// Returns how many were dropped.
    pub fn prune_history(&self) -> usize {
        let mut inner = self.lock();
        let dropped = self.prune_locked(&mut inner, Instant::now());
        // The deque keeps its buffer; give it back once mostly empty (a burst of writes
        // grows it up to the count cap).
        if dropped > 0
            && inner.history.capacity() > 64
            && inner.history.len() * 4 < inner.history.capacity()
        {
            inner.history.shrink_to_fit();
        }
        dropped
    }

    fn prune_locked(&self, inner: &mut Inner, now: Instant) -> usize {
        let Some(cutoff) = now.checked_sub(self.history_max_age) else {
            return 0; // nothing can be that old
        };
        let mut dropped = 0;
        while inner.history.front().is_some_and(|(at, _)| *at < cutoff) {
            if let Some((_, event)) = inner.history.pop_front() {
                inner.oldest_resumable = event.rv;
                dropped += 1;
            }
        }
        dropped
    }

    /// How many changes the history holds.
    pub fn history_len(&self) -> usize {
        self.lock().history.len()
    }

    /// Forget the change history (like an etcd compaction): watches can no longer resume from
    /// any earlier version and get 410 Gone.
    pub fn compact_history(&self) {
        let mut inner = self.lock();
        inner.history.clear();
        inner.oldest_resumable = inner.rv;
    }

    /// Start a watch on `key` after resourceVersion `from` (None: from now, with the current
    /// objects as `initial`). Fails with 410 Gone when `from` is older than the history kept.
    pub fn subscribe(&self, key: &str, from: Option<u64>) -> Result<Subscription, ApiError> {
        let inner = self.lock();
        let live = self.events.subscribe();
        match from {
            None => {
                let initial = inner
                    .objects
                    .get(key)
                    .map(|o| o.values().cloned().collect())
                    .unwrap_or_default();
                Ok(Subscription {
                    backlog: Vec::new(),
                    live,
                    initial,
                    rv: inner.rv,
                })
            }
            Some(from) => {
                if from < inner.oldest_resumable {
                    return Err(ApiError::Gone(format!(
                        "too old resource version: {from} ({})",
                        inner.oldest_resumable + 1
                    )));
                }
                let backlog = inner
                    .history
                    .iter()
                    .filter(|(_, e)| e.rv > from && e.key == key)
                    .map(|(_, e)| e.clone())
                    .collect();
                Ok(Subscription {
                    backlog,
                    live,
                    initial: Vec::new(),
                    rv: inner.rv,
                })
            }
        }
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
            let s = Store::open(dir.path(), 10, 10).expect("open");
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
        let s = Store::open(dir.path(), 10, 10).expect("reopen");
        assert_eq!(s.current_rv(), 26);
        let all = s.list("k", None, None, None, &|_| true);
        assert_eq!(all.items.len(), 24);
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

    #[test]
    fn without_a_max_age_only_the_count_bounds_history() {
        let s = Store::in_memory(100);
        s.commit("k", "", "a", Expect::Absent, Some(obj("a")))
            .expect("create");
        assert_eq!(s.prune_history(), 0);
        assert_eq!(rvs(&s.subscribe("k", Some(0)).expect("resumable")), vec![1]);
    }
}
