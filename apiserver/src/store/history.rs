//! The watch history: recent changes, for watches that resume from a resourceVersion.
//!
//! Each change is kept as the JSON the store already encoded (shared with the store and the
//! other changes of the same object, not a decoded copy), and the history is bounded three ways,
//! like etcd's compaction: by count, by age, and by bytes, at most [`BYTES_PER_LIVE_BYTE`] times
//! what the live objects take (or a floor, for a store with few objects). So its memory follows the live objects: a
//! burst of writes, or of objects created and deleted, leaves no more than that behind. A watch
//! resuming from before a dropped change of its own kind gets 410 Gone and re-lists; changes of
//! other kinds do not matter to it (like kube-apiserver's watch cache, one window per resource):
//! a watch of a kind that has not changed resumes however long ago it last saw an event.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use pier_memory::ShrinkIfSparse as _;

use super::{Event, EventType, decode, for_selectors};

/// The history's byte budget per byte of live objects, both counted in JSON. One: a burst that
/// creates every object at once (a whole namespace applied) stays resumable, as its changes'
/// JSON is the objects'; a watch further behind than that re-lists, which costs about what
/// replaying would; and after a burst of deletions (a namespace, `pier down`) what the history
/// keeps of the deleted objects is at most what is live (issue 19: with twice the live bytes
/// and a per-change overhead counted, 3 MB of deleted Endpoints' JSON stayed after 500 were
/// deleted, beside 1.5 MB of live objects). The count bound caps the bookkeeping per change.
pub const BYTES_PER_LIVE_BYTE: usize = 1;

/// One change as kept: the new object's JSON and the one it replaced.
#[derive(Debug, Clone)]
struct Recorded {
    at: Instant,
    rv: u64,
    key: String,
    namespace: String,
    kind: EventType,
    object: Bytes,
    /// The previous version (none for a creation; for a deletion the object itself is it).
    old: Option<Bytes>,
}

impl Recorded {
    /// The JSON this change holds: an upper bound, as `old` is usually shared with the change
    /// before it or with the store.
    fn cost(&self) -> usize {
        self.object.len() + self.old.as_ref().map_or(0, Bytes::len)
    }

    /// The change as watches take it (decoded: only for watches that resume, which are rare).
    fn event(&self) -> Arc<Event> {
        let object = for_selectors(decode(&self.object));
        let old = match (self.kind, &self.old) {
            (EventType::Deleted, _) => Some(object.clone()),
            (_, Some(old)) => Some(for_selectors(decode(old))),
            (_, None) => None,
        };
        Arc::new(Event {
            rv: self.rv,
            key: self.key.clone(),
            namespace: self.namespace.clone(),
            kind: self.kind,
            object,
            old,
            encoded: OnceLock::from(self.object.clone()),
        })
    }
}

/// The bounds of a [`History`].
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Changes kept at most.
    pub count: usize,
    /// Changes recorded longer ago are dropped.
    pub max_age: Duration,
    /// The byte budget when the live objects take less than this.
    pub min_bytes: usize,
}

/// Why a watch cannot resume: the oldest version it could resume after.
#[derive(Debug, PartialEq, Eq)]
pub struct TooOld {
    pub oldest_resumable: u64,
}

/// Recent changes, oldest first.
#[derive(Debug)]
pub struct History {
    entries: VecDeque<Recorded>,
    /// What `entries` hold, by [`Recorded::cost`].
    bytes: usize,
    bounds: Bounds,
    /// No watch resumes from before this version (the store's start, or a compaction).
    floor: u64,
    /// Per storage key, the version of its newest dropped change: a watch of that key resumes
    /// only from there on.
    dropped_through: HashMap<String, u64>,
}

impl History {
    /// An empty history of a store at version `rv`.
    pub fn new(rv: u64, bounds: Bounds) -> History {
        History {
            entries: VecDeque::new(),
            bytes: 0,
            bounds: Bounds {
                count: bounds.count.max(1),
                ..bounds
            },
            floor: rv,
            dropped_through: HashMap::new(),
        }
    }

    pub fn set_max_age(&mut self, max_age: Duration) {
        self.bounds.max_age = max_age;
    }

    pub fn set_min_bytes(&mut self, min_bytes: usize) {
        self.bounds.min_bytes = min_bytes;
    }

    /// Records `event`, which replaced `previous` (the stored JSON before it), then drops what
    /// exceeds the bounds, given that the live objects now take `live_bytes`.
    pub fn record(
        &mut self,
        event: &Event,
        previous: Option<Bytes>,
        now: Instant,
        live_bytes: usize,
    ) {
        let entry = Recorded {
            at: now,
            rv: event.rv,
            key: event.key.clone(),
            namespace: event.namespace.clone(),
            kind: event.kind,
            object: event.json().clone(),
            old: previous.filter(|_| event.kind != EventType::Deleted),
        };
        self.bytes += entry.cost();
        self.entries.push_back(entry);
        self.prune(now, live_bytes);
    }

    /// Drops the changes beyond the bounds (the oldest first); returns how many.
    pub fn prune(&mut self, now: Instant, live_bytes: usize) -> usize {
        let budget = live_bytes
            .saturating_mul(BYTES_PER_LIVE_BYTE)
            .max(self.bounds.min_bytes);
        let cutoff = now.checked_sub(self.bounds.max_age);
        let mut dropped = 0;
        while let Some(oldest) = self.entries.front() {
            let too_old = cutoff.is_some_and(|cutoff| oldest.at < cutoff);
            let too_many = self.entries.len() > self.bounds.count;
            // The newest change stays whatever its size: a watch can always resume from now.
            let too_big = self.bytes > budget && self.entries.len() > 1;
            if !(too_old || too_many || too_big) {
                break;
            }
            if let Some(entry) = self.entries.pop_front() {
                self.bytes -= entry.cost();
                self.dropped_through.insert(entry.key, entry.rv);
                dropped += 1;
            }
        }
        // A burst grows the deque's buffer; give it back once mostly empty.
        if dropped > 0 {
            self.entries.shrink_if_sparse();
            self.dropped_through.shrink_if_sparse();
        }
        dropped
    }

    /// The changes of storage key `key` after version `from`, or why a watch cannot resume.
    /// Cheap (the JSON is shared): decode them with [`Changes::events`] outside the store's lock.
    pub fn since(&self, key: &str, from: u64) -> Result<Changes, TooOld> {
        let oldest_resumable = self
            .dropped_through
            .get(key)
            .map_or(self.floor, |&dropped| dropped.max(self.floor));
        if from < oldest_resumable {
            return Err(TooOld { oldest_resumable });
        }
        let start = self.entries.partition_point(|e| e.rv <= from);
        Ok(Changes(
            self.entries
                .range(start..)
                .filter(|e| e.key == key)
                .cloned()
                .collect(),
        ))
    }

    /// When the change at version `rv` was recorded, while it is kept.
    pub fn recorded_at(&self, rv: u64) -> Option<Instant> {
        let i = self.entries.binary_search_by_key(&rv, |e| e.rv).ok()?;
        self.entries.get(i).map(|e| e.at)
    }

    /// Forget every change: no watch can resume from before `rv`.
    pub fn clear(&mut self, rv: u64) {
        self.entries.clear();
        self.entries.shrink_to_fit();
        self.bytes = 0;
        self.floor = rv;
        self.dropped_through.clear();
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// What the kept changes hold, in bytes (see [`Recorded::cost`]).
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// Changes taken from the history, not decoded yet.
#[derive(Debug, Default)]
pub struct Changes(Vec<Recorded>);

impl Changes {
    /// The changes as watches take them, oldest first.
    pub fn events(self) -> Vec<Arc<Event>> {
        self.0.iter().map(Recorded::event).collect()
    }
}
