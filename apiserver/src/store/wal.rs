//! Durability: a snapshot plus an append-only log of JSON lines, fsynced in groups.
//!
//! `snapshot.jsonl` holds the whole state as of one resourceVersion (header line, then one object a
//! line); `wal.jsonl` the writes after it. Opening replays both (a torn last line, from a crash in
//! the middle of a write, is dropped: it was never acknowledged), writes a fresh snapshot atomically
//! (temporary file, fsync, rename, fsync of the directory) and starts an empty log. Writes are
//! appended by one thread that fsyncs once for all writes queued meanwhile (group commit), then
//! has the store publish them ([`Publisher::durable`]) and only then acknowledges them. A group
//! whose write or fsync fails is cut from the log (truncated back to the last good record) and
//! every write queued after it is refused unwritten ([`Publisher::failed`]): those were computed
//! on top of the failed ones. If even the truncation fails, the log takes no more writes until
//! the next start, which drops a torn last line; whole records of the failed group that did
//! reach the file are replayed then, so writes answered with an error may reappear after that
//! double fault (a storage that fails both fsync and truncate). All files are 0600
//! ([`crate::private`]).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};

use bytes::Bytes;
use pier_memory::ShrinkIfSparse as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::oneshot;

use crate::error::Error;
use crate::private;

/// One write as logged: `o` is the object, or null for a deletion.
#[derive(Debug, Serialize, Deserialize)]
pub struct Record {
    pub rv: u64,
    pub k: String,
    pub ns: String,
    pub n: String,
    pub o: Option<Value>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    rv: u64,
}

/// The state recovered on open.
#[derive(Debug, Default)]
pub struct Recovered {
    pub rv: u64,
    /// The version the snapshot was taken at.
    pub snapshot_rv: u64,
    /// storage key -> (namespace, name) -> object, as JSON (see [`super::encode`])
    pub objects: BTreeMap<String, BTreeMap<(String, String), Bytes>>,
}

/// A write to log, the object already encoded (the store's JSON, written as it is).
#[derive(Debug)]
pub struct Pending {
    pub rv: u64,
    pub k: String,
    pub ns: String,
    pub n: String,
    pub o: Option<Bytes>,
}

/// A [`Record`] without its object, which follows as JSON already encoded.
#[derive(Serialize)]
struct RecordHead<'a> {
    rv: u64,
    k: &'a str,
    ns: &'a str,
    n: &'a str,
}

/// Appends one record line: `{"rv":..,"k":..,"ns":..,"n":..,"o":OBJECT}` (`"o":null` for a
/// deletion), the form [`Record`] reads.
fn record_line(head: &RecordHead<'_>, object: Option<&[u8]>, out: &mut Vec<u8>) {
    let start = out.len();
    // A struct always encodes to an object: its closing brace is replaced by the object's field.
    if serde_json::to_writer(&mut *out, head).is_err() || out.last() != Some(&b'}') {
        out.truncate(start);
        return;
    }
    out.pop();
    out.extend_from_slice(b",\"o\":");
    out.extend_from_slice(object.unwrap_or(b"null"));
    out.extend_from_slice(b"}\n");
}

/// The whole store at one version, sharing the objects' JSON with it.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub rv: u64,
    /// (storage key, namespace, name, object)
    pub objects: Vec<(String, String, String, Bytes)>,
}

/// The log file's operations, the seam where tests make a write or an fsync fail.
pub trait LogIo: Send + Sync + std::fmt::Debug {
    /// Appends a group of records.
    fn write(&self, file: &mut File, buf: &[u8]) -> std::io::Result<()> {
        file.write_all(buf)
    }
    /// Makes what was appended durable.
    fn sync(&self, file: &mut File) -> std::io::Result<()> {
        file.sync_data()
    }
    /// Cuts the log back to `len` bytes, durably.
    fn truncate(&self, file: &mut File, len: u64) -> std::io::Result<()> {
        file.set_len(len)?;
        file.sync_all()
    }
}

/// The real file operations.
#[derive(Debug, Default, Clone, Copy)]
pub struct FileIo;

impl LogIo for FileIo {}

/// What the writer thread tells the store, before it acknowledges anything.
pub trait Publisher: Send + 'static {
    /// Every write up to `rv` is on disk: make them visible.
    fn durable(&mut self, rv: u64);
    /// A group failed and was cut from the log: forget every write not yet visible and return
    /// the last resourceVersion handed out, through which queued writes are refused unwritten.
    fn failed(&mut self) -> u64;
}

/// What the writer thread does, in order.
#[derive(Debug)]
enum Job {
    Append(Pending, oneshot::Sender<Result<(), String>>),
    /// Write a snapshot of the whole state at `rv`, then empty the log.
    Snapshot(Snapshot),
}

/// The log writer handle.
#[derive(Debug)]
pub struct Wal {
    tx: mpsc::Sender<Job>,
}

/// A recovered, emptied log, ready for [`Recovery::start`].
#[derive(Debug)]
pub struct Recovery {
    dir: PathBuf,
    log_path: PathBuf,
    file: File,
    io: Arc<dyn LogIo>,
}

const SNAPSHOT: &str = "snapshot.jsonl";
const LOG: &str = "wal.jsonl";

fn apply(rec: Record, state: &mut Recovered) {
    state.rv = state.rv.max(rec.rv);
    let objs = state.objects.entry(rec.k).or_default();
    match rec.o {
        Some(o) => {
            objs.insert((rec.ns, rec.n), super::encode(&o));
        }
        None => {
            objs.remove(&(rec.ns, rec.n));
        }
    }
}

fn read_lines(path: &Path, state: &mut Recovered, snapshot: bool) -> Result<(), Error> {
    let data = match fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(path, e)),
    };
    let corrupt = |e: serde_json::Error| Error::Corrupt {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let mut lines = data
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .peekable();
    if snapshot && let Some(first) = lines.next() {
        let h: Header = serde_json::from_slice(first).map_err(corrupt)?;
        state.rv = state.rv.max(h.rv);
        state.snapshot_rv = h.rv;
    }
    while let Some(line) = lines.next() {
        let last = lines.peek().is_none();
        match serde_json::from_slice::<Record>(line) {
            // Log records the snapshot already contains (a crash between writing a snapshot and
            // truncating the log) are skipped.
            Ok(rec) if !snapshot && rec.rv <= state.snapshot_rv => {}
            Ok(rec) => apply(rec, state),
            // A torn final line: the write never completed, so it was never acknowledged.
            Err(_) if last && !snapshot => break,
            Err(e) => return Err(corrupt(e)),
        }
    }
    Ok(())
}

fn fsync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Recovers the state in `dir` (created 0700 if missing, its files made 0600), compacts it into
/// a new snapshot and empties the log.
pub fn recover(dir: &Path, io: Arc<dyn LogIo>) -> Result<(Recovered, Recovery), Error> {
    private::ensure_tree(dir)?;
    let mut state = Recovered::default();
    read_lines(&dir.join(SNAPSHOT), &mut state, true)?;
    read_lines(&dir.join(LOG), &mut state, false)?;
    write_snapshot(
        dir,
        state.rv,
        state.objects.iter().flat_map(|(k, objs)| {
            objs.iter()
                .map(move |((ns, n), o)| (k.as_str(), ns.as_str(), n.as_str(), &o[..]))
        }),
    )?;
    let log_path = dir.join(LOG);
    let log = private::create_file(&log_path)?;
    log.sync_all().map_err(|e| Error::io(&log_path, e))?;
    fsync_dir(dir)?;
    // Appends land at the end even after the log is cut back.
    let file = OpenOptions::new()
        .append(true)
        .open(&log_path)
        .map_err(|e| Error::io(&log_path, e))?;
    let recovery = Recovery {
        dir: dir.to_path_buf(),
        log_path,
        file,
        io,
    };
    Ok((state, recovery))
}

impl Recovery {
    /// Starts the log writer, which tells `publisher` what became of each group of writes.
    pub fn start(self, publisher: impl Publisher) -> Result<Wal, Error> {
        let (tx, rx) = mpsc::channel::<Job>();
        let path = self.log_path.clone();
        std::thread::Builder::new()
            .name("pier-apiserver-wal".into())
            .spawn(move || writer(self, publisher, rx))
            .map_err(|e| Error::io(&path, e))?;
        Ok(Wal { tx })
    }
}

impl Wal {
    /// Queue a record; the receiver resolves once it is on disk and published. None: the
    /// writer is gone, nothing was queued.
    pub fn append(&self, rec: Pending) -> Option<oneshot::Receiver<Result<(), String>>> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Job::Append(rec, tx)).ok()?;
        Some(rx)
    }

    /// Queue a snapshot of `state` (the whole store at `state.rv`, which every record queued
    /// before has and none queued after has); the log is emptied once it is on disk.
    pub fn snapshot(&self, state: Snapshot) {
        let _ = self.tx.send(Job::Snapshot(state));
    }
}

fn encode(p: &Pending, buf: &mut Vec<u8>) -> Result<(), String> {
    let head = RecordHead {
        rv: p.rv,
        k: &p.k,
        ns: &p.ns,
        n: &p.n,
    };
    let start = buf.len();
    record_line(&head, p.o.as_deref(), buf);
    if buf.len() == start {
        return Err(format!("cannot encode the log record of {}/{}", p.k, p.n));
    }
    Ok(())
}

fn write_snapshot<'a>(
    dir: &Path,
    rv: u64,
    items: impl Iterator<Item = (&'a str, &'a str, &'a str, &'a [u8])>,
) -> Result<(), Error> {
    let tmp: PathBuf = dir.join(format!("{SNAPSHOT}.tmp"));
    let io = |e| Error::io(&tmp, e);
    let mut out = std::io::BufWriter::new(private::create_file(&tmp)?);
    let header = serde_json::to_string(&Header { rv }).unwrap_or_default();
    writeln!(out, "{header}").map_err(io)?;
    let mut line = Vec::new();
    for (k, ns, n, o) in items {
        line.clear();
        record_line(&RecordHead { rv: 0, k, ns, n }, Some(o), &mut line);
        if line.is_empty() {
            return Err(Error::Corrupt {
                path: tmp.display().to_string(),
                message: format!("cannot encode the snapshot record of {k}/{n}"),
            });
        }
        out.write_all(&line).map_err(io)?;
    }
    let file = out.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    fs::rename(&tmp, dir.join(SNAPSHOT)).map_err(io)?;
    fsync_dir(dir)
}

fn writer(log: Recovery, mut publisher: impl Publisher, rx: mpsc::Receiver<Job>) {
    let Recovery {
        dir,
        log_path: path,
        mut file,
        io,
    } = log;
    // The log's length up to its last record known to be on disk.
    let mut good_len: u64 = 0;
    // Writes up to this version were computed on top of a failed group: never written.
    let mut void_through: u64 = 0;
    // Set when a failed group could not be cut from the log: it takes no more writes.
    let mut broken: Option<String> = None;
    let mut buf = Vec::new();
    let mut acks = Vec::new();
    let mut next = rx.recv().ok();
    while let Some(job) = next.take() {
        let mut snapshot = None;
        let mut encoded = Ok(());
        let mut last_rv = 0;
        let mut job = Some(job);
        // Gather every queued append (up to a snapshot, which must follow them on disk).
        while let Some(j) = job.take() {
            match j {
                Job::Append(p, ack) => {
                    if let Some(why) = &broken {
                        let _ = ack.send(Err(why.clone()));
                    } else if p.rv <= void_through {
                        let _ = ack.send(Err(format!(
                            "not written: an earlier write to {} failed",
                            path.display()
                        )));
                    } else {
                        if let Err(e) = encode(&p, &mut buf) {
                            encoded = Err(e);
                        }
                        last_rv = p.rv;
                        acks.push(ack);
                    }
                }
                Job::Snapshot(state) => {
                    snapshot = Some(state);
                    break;
                }
            }
            if acks.len() < 4096 {
                job = rx.try_recv().ok();
            }
        }
        if !acks.is_empty() {
            let result = encoded.and_then(|()| {
                io.write(&mut file, &buf)
                    .and_then(|()| io.sync(&mut file))
                    .map_err(|e| format!("{}: {e}", path.display()))
            });
            match &result {
                Ok(()) => {
                    good_len += buf.len() as u64;
                    publisher.durable(last_rv);
                }
                Err(e) => {
                    tracing::error!(error = %e, "apiserver log write failed; its writes are dropped");
                    if let Err(t) = io.truncate(&mut file, good_len) {
                        tracing::error!(error = %t, "apiserver log cannot be cut back; it takes no more writes until restarted");
                        broken = Some(format!(
                            "{}: the log could not be repaired after a failed write ({t}); \
                             restart the server",
                            path.display()
                        ));
                    }
                    void_through = publisher.failed();
                }
            }
            // A burst's group grew them; the next, smaller groups give that back.
            acks.shrink_if_sparse();
            for ack in acks.drain(..) {
                let _ = ack.send(result.clone());
            }
        }
        buf.shrink_if_sparse();
        buf.clear();
        // A snapshot that includes failed writes is not written.
        if let Some(state) = snapshot.filter(|s| s.rv > void_through && broken.is_none()) {
            let items = state
                .objects
                .iter()
                .map(|(k, ns, n, o)| (k.as_str(), ns.as_str(), n.as_str(), &o[..]));
            let done = write_snapshot(&dir, state.rv, items)
                .and_then(|()| io.truncate(&mut file, 0).map_err(|e| Error::io(&path, e)));
            match done {
                Ok(()) => good_len = 0,
                Err(e) => {
                    tracing::error!(error = %e, "apiserver snapshot failed; the log keeps growing")
                }
            }
        }
        next = rx.recv().ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Records what the writer published.
    #[derive(Debug, Default, Clone)]
    struct Seen(Arc<Mutex<Vec<Result<u64, ()>>>>);

    impl Publisher for Seen {
        fn durable(&mut self, rv: u64) {
            self.0.lock().expect("lock").push(Ok(rv));
        }
        fn failed(&mut self) -> u64 {
            self.0.lock().expect("lock").push(Err(()));
            0
        }
    }

    /// Fails the `n`th write after writing half of it, and every truncation when asked.
    #[derive(Debug, Default)]
    struct Faulty {
        writes: AtomicUsize,
        fail_write: usize,
        fail_truncate: bool,
    }

    impl LogIo for Faulty {
        fn write(&self, file: &mut File, buf: &[u8]) -> std::io::Result<()> {
            if self.writes.fetch_add(1, Ordering::SeqCst) + 1 == self.fail_write {
                file.write_all(&buf[..buf.len() / 2])?;
                return Err(std::io::Error::other("injected: disk full"));
            }
            file.write_all(buf)
        }
        fn truncate(&self, file: &mut File, len: u64) -> std::io::Result<()> {
            if self.fail_truncate {
                return Err(std::io::Error::other("injected: truncate"));
            }
            FileIo.truncate(file, len)
        }
    }

    fn open(dir: &Path, io: Arc<dyn LogIo>, seen: Seen) -> (Wal, Recovered) {
        let (state, recovery) = recover(dir, io).expect("open");
        (recovery.start(seen).expect("start"), state)
    }

    fn put(wal: &Wal, rv: u64, name: &str) -> Result<(), String> {
        let rx = wal
            .append(Pending {
                rv,
                k: "g/r".into(),
                ns: "".into(),
                n: name.into(),
                o: Some(crate::store::encode(&json!({"rv": rv}))),
            })
            .expect("queued");
        rx.blocking_recv().expect("acked")
    }

    #[test]
    fn replays_log_and_drops_a_torn_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (wal, state) = open(dir.path(), Arc::new(FileIo), Seen::default());
            assert_eq!(state.rv, 0);
            for rv in 1..=3 {
                put(&wal, rv, &format!("o{rv}")).expect("written");
            }
            let rx = wal
                .append(Pending {
                    rv: 4,
                    k: "g/r".into(),
                    ns: "".into(),
                    n: "o1".into(),
                    o: None,
                })
                .expect("queued");
            rx.blocking_recv().expect("acked").expect("written");
        }
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(LOG))
            .expect("log");
        f.write_all(b"{\"rv\":5,\"k\":\"g/").expect("torn write");
        drop(f);
        let (_wal, state) = open(dir.path(), Arc::new(FileIo), Seen::default());
        assert_eq!(state.rv, 4);
        let objs = &state.objects["g/r"];
        assert_eq!(objs.len(), 2);
        assert!(objs.contains_key(&(String::new(), "o2".to_string())));
        // Reopening again reads the compacted snapshot.
        drop(_wal);
        let (_wal, again) = open(dir.path(), Arc::new(FileIo), Seen::default());
        assert_eq!(again.rv, 4);
        assert_eq!(again.objects["g/r"].len(), 2);
    }

    #[test]
    fn a_failed_write_is_cut_from_the_log_and_later_writes_follow_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let seen = Seen::default();
        let faulty = Arc::new(Faulty {
            fail_write: 2,
            ..Faulty::default()
        });
        {
            let (wal, _) = open(dir.path(), faulty, seen.clone());
            put(&wal, 1, "a").expect("written");
            let e = put(&wal, 2, "b").expect_err("injected");
            assert!(e.contains("injected: disk full"), "{e}");
            put(&wal, 3, "c").expect("written after the failure");
        }
        assert_eq!(*seen.0.lock().expect("lock"), vec![Ok(1), Err(()), Ok(3)]);
        // Half a record was written and cut away: the log holds exactly the good ones.
        let log = fs::read_to_string(dir.path().join(LOG)).expect("log");
        assert_eq!(log.lines().count(), 2, "{log}");
        let (_wal, state) = open(dir.path(), Arc::new(FileIo), Seen::default());
        let names: Vec<&str> = state.objects["g/r"]
            .keys()
            .map(|(_, n)| n.as_str())
            .collect();
        assert_eq!(names, vec!["a", "c"]);
    }

    #[test]
    fn a_log_that_cannot_be_repaired_takes_no_more_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let faulty = Arc::new(Faulty {
            fail_write: 1,
            fail_truncate: true,
            ..Faulty::default()
        });
        {
            let (wal, _) = open(dir.path(), faulty, Seen::default());
            put(&wal, 1, "a").expect_err("injected");
            let e = put(&wal, 2, "b").expect_err("refused");
            assert!(e.contains("restart the server"), "{e}");
        }
        // The next start drops the torn half record.
        let (_wal, state) = open(dir.path(), Arc::new(FileIo), Seen::default());
        assert_eq!(state.rv, 0);
        assert!(state.objects.is_empty());
    }

    #[test]
    fn files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = dir.path().join("store");
        fs::create_dir(&store).expect("dir");
        fs::set_permissions(&store, fs::Permissions::from_mode(0o755)).expect("chmod");
        let (wal, _) = open(&store, Arc::new(FileIo), Seen::default());
        put(&wal, 1, "a").expect("written");
        let mode = |p: &Path| fs::metadata(p).expect("exists").permissions().mode() & 0o777;
        assert_eq!(mode(&store), 0o700);
        assert_eq!(mode(&store.join(LOG)), 0o600);
        assert_eq!(mode(&store.join(SNAPSHOT)), 0o600);
    }
}
