//! Durability: a snapshot plus an append-only log of JSON lines, fsynced in groups.
//!
//! `snapshot.jsonl` holds the whole state as of one resourceVersion (header line, then one object a
//! line); `wal.jsonl` the writes after it. Opening replays both (a torn last line, from a crash in
//! the middle of a write, is dropped: it was never acknowledged), writes a fresh snapshot atomically
//! (temporary file, fsync, rename, fsync of the directory) and starts an empty log. Writes are
//! appended by one thread that fsyncs once for all writes queued meanwhile (group commit) and only
//! then acknowledges them.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::oneshot;

use crate::error::Error;

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
    /// storage key -> (namespace, name) -> object
    pub objects: BTreeMap<String, BTreeMap<(String, String), Value>>,
}

/// A write to log: serialized by the writer thread, off the request path.
#[derive(Debug)]
pub struct Pending {
    pub rv: u64,
    pub k: String,
    pub ns: String,
    pub n: String,
    pub o: Option<std::sync::Arc<Value>>,
}

#[derive(Serialize)]
struct RecordRef<'a> {
    rv: u64,
    k: &'a str,
    ns: &'a str,
    n: &'a str,
    o: Option<&'a Value>,
}

/// The whole store at one version, sharing the objects with it.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub rv: u64,
    /// (storage key, namespace, name, object)
    pub objects: Vec<(String, String, String, std::sync::Arc<Value>)>,
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

const SNAPSHOT: &str = "snapshot.jsonl";
const LOG: &str = "wal.jsonl";

fn apply(rec: Record, state: &mut Recovered) {
    state.rv = state.rv.max(rec.rv);
    let objs = state.objects.entry(rec.k).or_default();
    match rec.o {
        Some(o) => {
            objs.insert((rec.ns, rec.n), o);
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

impl Wal {
    /// Recover the state in `dir` (created if missing), compact it into a new snapshot and start
    /// the log writer.
    pub fn open(dir: &Path) -> Result<(Wal, Recovered), Error> {
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut state = Recovered::default();
        read_lines(&dir.join(SNAPSHOT), &mut state, true)?;
        read_lines(&dir.join(LOG), &mut state, false)?;
        write_snapshot(
            dir,
            state.rv,
            state.objects.iter().flat_map(|(k, objs)| {
                objs.iter()
                    .map(move |((ns, n), o)| (k.as_str(), ns.as_str(), n.as_str(), o))
            }),
        )?;
        let log_path = dir.join(LOG);
        let log = File::create(&log_path).map_err(|e| Error::io(&log_path, e))?;
        log.sync_all().map_err(|e| Error::io(&log_path, e))?;
        fsync_dir(dir)?;
        let (tx, rx) = mpsc::channel::<Job>();
        let path = log_path.clone();
        std::thread::Builder::new()
            .name("pier-apiserver-wal".into())
            .spawn({
                let dir = dir.to_path_buf();
                move || writer(dir, path, log, rx)
            })
            .map_err(|e| Error::io(&log_path, e))?;
        Ok((Wal { tx }, state))
    }

    /// Queue a record; the receiver resolves once it is on disk.
    pub fn append(&self, rec: Pending) -> oneshot::Receiver<Result<(), String>> {
        let (tx, rx) = oneshot::channel();
        if let Err(mpsc::SendError(Job::Append(_, tx))) = self.tx.send(Job::Append(rec, tx)) {
            let _ = tx.send(Err("the log writer stopped".into()));
        }
        rx
    }

    /// Queue a snapshot of `state` (the whole store at `state.rv`, which every record queued
    /// before has and none queued after has); the log is emptied once it is on disk.
    pub fn snapshot(&self, state: Snapshot) {
        let _ = self.tx.send(Job::Snapshot(state));
    }
}

fn encode(p: &Pending, buf: &mut Vec<u8>) -> Result<(), String> {
    let r = RecordRef {
        rv: p.rv,
        k: &p.k,
        ns: &p.ns,
        n: &p.n,
        o: p.o.as_deref(),
    };
    serde_json::to_writer(&mut *buf, &r).map_err(|e| e.to_string())?;
    buf.push(b'\n');
    Ok(())
}

fn write_snapshot<'a>(
    dir: &Path,
    rv: u64,
    items: impl Iterator<Item = (&'a str, &'a str, &'a str, &'a Value)>,
) -> Result<(), Error> {
    let tmp: PathBuf = dir.join(format!("{SNAPSHOT}.tmp"));
    let io = |e| Error::io(&tmp, e);
    let mut out = std::io::BufWriter::new(File::create(&tmp).map_err(io)?);
    let header = serde_json::to_string(&Header { rv }).unwrap_or_default();
    writeln!(out, "{header}").map_err(io)?;
    for (k, ns, n, o) in items {
        let rec = RecordRef {
            rv: 0,
            k,
            ns,
            n,
            o: Some(o),
        };
        serde_json::to_writer(&mut out, &rec).map_err(|e| Error::Corrupt {
            path: tmp.display().to_string(),
            message: e.to_string(),
        })?;
        out.write_all(b"\n").map_err(io)?;
    }
    let file = out.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    fs::rename(&tmp, dir.join(SNAPSHOT)).map_err(io)?;
    fsync_dir(dir)
}

fn writer(dir: PathBuf, path: PathBuf, file: File, rx: mpsc::Receiver<Job>) {
    let mut file = match OpenOptions::new().append(true).open(&path) {
        Ok(f) => f,
        Err(_) => file,
    };
    let mut buf = Vec::new();
    let mut acks = Vec::new();
    let mut next = rx.recv().ok();
    while let Some(job) = next.take() {
        let mut snapshot = None;
        let mut result = Ok(());
        let mut job = Some(job);
        // Gather every queued append (up to a snapshot, which must follow them on disk).
        while let Some(j) = job.take() {
            match j {
                Job::Append(p, ack) => {
                    if let Err(e) = encode(&p, &mut buf) {
                        result = Err(e);
                    }
                    acks.push(ack);
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
        if !buf.is_empty() && result.is_ok() {
            result = file
                .write_all(&buf)
                .and_then(|()| file.sync_data())
                .map_err(|e| format!("{}: {e}", path.display()));
        }
        if result.is_err() {
            tracing::error!(?result, "apiserver log write failed");
        }
        for ack in acks.drain(..) {
            let _ = ack.send(result.clone());
        }
        buf.clear();
        if let Some(state) = snapshot {
            let items = state
                .objects
                .iter()
                .map(|(k, ns, n, o)| (k.as_str(), ns.as_str(), n.as_str(), &**o));
            let done = write_snapshot(&dir, state.rv, items).and_then(|()| {
                file.set_len(0)
                    .and_then(|()| file.sync_all())
                    .map_err(|e| Error::io(&path, e))
            });
            if let Err(e) = done {
                tracing::error!(error = %e, "apiserver snapshot failed; the log keeps growing");
            }
        }
        next = rx.recv().ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn replays_log_and_drops_a_torn_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (wal, state) = Wal::open(dir.path()).expect("open");
            assert_eq!(state.rv, 0);
            for rv in 1..=3 {
                let rx = wal.append(Pending {
                    rv,
                    k: "g/r".into(),
                    ns: "".into(),
                    n: format!("o{rv}"),
                    o: Some(std::sync::Arc::new(json!({"rv": rv}))),
                });
                rx.blocking_recv().expect("acked").expect("written");
            }
            let rx = wal.append(Pending {
                rv: 4,
                k: "g/r".into(),
                ns: "".into(),
                n: "o1".into(),
                o: None,
            });
            rx.blocking_recv().expect("acked").expect("written");
        }
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(LOG))
            .expect("log");
        f.write_all(b"{\"rv\":5,\"k\":\"g/").expect("torn write");
        drop(f);
        let (_wal, state) = Wal::open(dir.path()).expect("reopen");
        assert_eq!(state.rv, 4);
        let objs = &state.objects["g/r"];
        assert_eq!(objs.len(), 2);
        assert!(objs.contains_key(&(String::new(), "o2".to_string())));
        // Reopening again reads the compacted snapshot.
        drop(_wal);
        let (_wal, again) = Wal::open(dir.path()).expect("reopen twice");
        assert_eq!(again.rv, 4);
        assert_eq!(again.objects["g/r"].len(), 2);
    }
}
