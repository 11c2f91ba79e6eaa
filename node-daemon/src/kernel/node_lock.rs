//! One owner per node namespace: `pier up`, `pier node` and `pier down` each hold an exclusive
//! advisory lock (flock(2)) on a file named after the identity of the network namespace they
//! manage. A second Pier in the same namespace would delete the first one's bridges and veths at
//! its first full reconcile (it owns the same names), so it refuses to start instead.
//!
//! The lock lives in a machine-wide run directory, not in a data directory (two instances differ
//! there), and is keyed by the namespace's device and inode, so a bind mount under
//! /var/run/netns, `/proc/PID/ns/net` and `--node-netns` paths all name the same lock. The kernel
//! releases a flock when its holder dies, so a lock left by `kill -9` is free again at once:
//! there is no pid file to guess stale. The file records who holds it, for the refusal message.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where the lock files live: machine-wide, emptied at boot (a tmpfs), shared by every Pier of
/// the machine (the chart mounts the node's).
pub const LOCK_DIR: &str = "/run/pier";

/// The process's own network namespace (what `pier node` manages).
const OWN_NETNS: &str = "/proc/self/ns/net";

/// Who holds a lock: written into the lock file by its holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The command, e.g. `pier up`.
    pub command: String,
    pub pid: u32,
    /// Its data (or state) directory.
    pub data_dir: PathBuf,
}

impl Holder {
    /// This process, running `command` with `data_dir` (made absolute, for the message).
    pub fn this_process(command: &str, data_dir: &Path) -> Holder {
        Holder {
            command: command.to_owned(),
            pid: std::process::id(),
            data_dir: std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_owned()),
        }
    }

    fn describe(&self) -> String {
        format!(
            "`{}` (pid {}, data directory {})",
            self.command,
            self.pid,
            self.data_dir.display()
        )
    }
}

/// The lock file's name for the namespace with this device and inode.
fn lock_file_name(dev: u64, ino: u64) -> String {
    format!("netns-{dev}-{ino}.lock")
}

/// The holder recorded in a lock file's text; `None` when unreadable (e.g. being written).
fn parse_holder(text: &str) -> Option<Holder> {
    serde_json::from_str(text).ok()
}

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "network namespace {netns} is already managed by {}: only one Pier may manage a \
         network namespace (it owns every Pier bridge and veth there); stop that one first \
         (lock {})",
        holder.as_ref().map_or_else(|| "another Pier process".to_owned(), Holder::describe),
        lock.display()
    )]
    Held {
        netns: String,
        lock: PathBuf,
        holder: Option<Holder>,
    },
    #[error("reading the identity of network namespace {netns}")]
    Namespace {
        netns: String,
        #[source]
        source: std::io::Error,
    },
    #[error("locking {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Who holds the lock of `netns` (`None`: the process's own) in `dir`, without taking it: the
/// recorded holder, if that process still lives. For `pier status`; a record left by a dead
/// holder reads as nobody.
pub fn current_holder(dir: &Path, netns: Option<&Path>) -> Option<Holder> {
    let identity = std::fs::metadata(netns.unwrap_or(Path::new(OWN_NETNS))).ok()?;
    let text =
        std::fs::read_to_string(dir.join(lock_file_name(identity.dev(), identity.ino()))).ok()?;
    let holder = parse_holder(&text)?;
    Path::new("/proc")
        .join(holder.pid.to_string())
        .exists()
        .then_some(holder)
}

/// The held lock; released when dropped (or when the process dies, by the kernel).
#[derive(Debug)]
pub struct NodeLock {
    _file: File,
    path: PathBuf,
}

impl NodeLock {
    /// Takes the lock of network namespace `netns` (`None`: the process's own) in `dir`
    /// (normally [`LOCK_DIR`]) for `me`, without waiting.
    pub fn acquire(dir: &Path, netns: Option<&Path>, me: &Holder) -> Result<NodeLock, LockError> {
        let netns_path = netns.unwrap_or(Path::new(OWN_NETNS));
        let netns_name =
            netns.map_or_else(|| "of this process".to_owned(), |p| p.display().to_string());
        let identity = std::fs::metadata(netns_path).map_err(|source| LockError::Namespace {
            netns: netns_name.clone(),
            source,
        })?;
        let path = dir.join(lock_file_name(identity.dev(), identity.ino()));
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
        // Never truncated before the lock is ours: the holder's record must survive our attempt.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|text| parse_holder(&text));
                return Err(LockError::Held {
                    netns: netns_name,
                    lock: path,
                    holder,
                });
            }
            Err(std::fs::TryLockError::Error(source)) => return Err(io(source)),
        }
        // A record left by a holder that died is replaced.
        let record = serde_json::to_string(me).map_err(|e| io(std::io::Error::other(e)))?;
        file.set_len(0)
            .and_then(|()| file.write_all(record.as_bytes()))
            .map_err(io)?;
        Ok(NodeLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(command: &str, pid: u32, dir: &str) -> Holder {
        Holder {
            command: command.into(),
            pid,
            data_dir: dir.into(),
        }
    }

    #[test]
    fn record_round_trips_and_garbage_is_no_holder() {
        let h = holder("pier up", 42, "/var/lib/pier");
        let text = serde_json::to_string(&h).expect("json");
        assert_eq!(parse_holder(&text), Some(h));
        assert_eq!(parse_holder(""), None);
        assert_eq!(parse_holder("{\"pid\":"), None);
    }

    #[test]
    fn refusal_names_the_holder_its_pid_and_data_directory() {
        let error = LockError::Held {
            netns: "/var/run/netns/node".into(),
            lock: "/run/pier/netns-4-1.lock".into(),
            holder: Some(holder("pier up", 42, "/srv/a")),
        };
        let message = error.to_string();
        for part in [
            "/var/run/netns/node",
            "`pier up` (pid 42, data directory /srv/a)",
            "stop that one first",
        ] {
            assert!(message.contains(part), "{message}");
        }
        let unknown = LockError::Held {
            netns: "x".into(),
            lock: "l".into(),
            holder: None,
        };
        assert!(unknown.to_string().contains("another Pier process"));
    }

    #[test]
    fn key_is_the_namespace_identity() {
        assert_eq!(lock_file_name(4, 4026531840), "netns-4-4026531840.lock");
    }

    /// flock(2) locks belong to an open file: a second open in the same process conflicts,
    /// which is what a second process sees too.
    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let run = dir.path().join("run");
        let a = holder("pier up", 1, "/a");
        let first = NodeLock::acquire(&run, None, &a).expect("first lock");
        match NodeLock::acquire(&run, None, &holder("pier down", 2, "/b")) {
            Err(LockError::Held { holder, lock, .. }) => {
                assert_eq!(holder, Some(a));
                assert_eq!(lock, first.path());
            }
            other => panic!("expected Held, got {other:?}"),
        }
        let mode = std::fs::metadata(first.path()).expect("lock file").mode() & 0o777;
        assert_eq!(mode, 0o600);
        drop(first);
        let b = holder("pier down", 2, "/b");
        let second = NodeLock::acquire(&run, None, &b).expect("free after drop");
        let text = std::fs::read_to_string(second.path()).expect("record");
        assert_eq!(parse_holder(&text), Some(b), "the old record is replaced");
    }

    #[test]
    fn a_missing_namespace_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let me = holder("pier up", 1, "/a");
        let missing = dir.path().join("no-such-netns");
        let error = NodeLock::acquire(dir.path(), Some(&missing), &me).expect_err("missing");
        assert!(matches!(error, LockError::Namespace { .. }), "{error:?}");
    }
}
