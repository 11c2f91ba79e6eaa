//! Named network namespaces (`/var/run/netns/NAME`): created on first use, as `ip netns add`
//! does, and removed only when Pier created them.
//!
//! An Endpoint may target a namespace that does not exist yet (the lesson's `docker run` makes the
//! container and its namespace at once). Pier then creates it and leaves a marker in its state
//! directory; when the last Endpoint of that namespace goes, the namespace goes with it. A
//! namespace someone else made (no marker) is never removed.

use std::fs::{self, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};

/// Where `ip netns` keeps its namespaces.
pub const RUN_DIR: &str = "/var/run/netns";

/// Creating or removing a named namespace failed.
#[derive(Debug, thiserror::Error)]
pub enum NamedNetnsError {
    #[error("{name:?} is not a valid namespace name")]
    InvalidName { name: String },
    #[error("preparing {path} (directory, shared mount)")]
    Prepare {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("creating network namespace {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("removing network namespace {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the marker {path}")]
    Marker {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The named namespaces of one node, with the markers of those Pier created.
#[derive(Debug)]
pub struct NamedNetns {
    run_dir: PathBuf,
    marker_dir: PathBuf,
    /// Serializes create and remove, so two reconciles never race on one name.
    lock: Mutex<()>,
}

impl NamedNetns {
    /// Namespaces under `run_dir` (normally [`RUN_DIR`]); markers under `state_dir/netns`.
    pub fn new(run_dir: impl Into<PathBuf>, state_dir: &Path) -> NamedNetns {
        NamedNetns {
            run_dir: run_dir.into(),
            marker_dir: state_dir.join("netns"),
            lock: Mutex::new(()),
        }
    }

    /// The namespace file of `name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.run_dir.join(name)
    }

    fn marker(&self, name: &str) -> PathBuf {
        self.marker_dir.join(name)
    }

    /// Whether Pier created the namespace `name` (and so may remove it).
    pub fn created_by_pier(&self, name: &str) -> bool {
        valid_name(name) && self.marker(name).exists()
    }

    /// Makes sure `name` exists; returns whether it was created now. Blocks (mounts, a thread).
    pub fn ensure(&self, name: &str) -> Result<bool, NamedNetnsError> {
        if !valid_name(name) {
            return Err(NamedNetnsError::InvalidName { name: name.into() });
        }
        let _guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        let path = self.path(name);
        if is_namespace(&path) {
            return Ok(false);
        }
        self.prepare_run_dir()?;
        // The marker first: a crash between the two leaves a marker for a namespace that a later
        // `ensure` creates (and Pier then owns), never a Pier namespace without a marker.
        let marker = self.marker(name);
        fs::create_dir_all(&self.marker_dir)
            .and_then(|()| fs::write(&marker, b""))
            .map_err(|source| NamedNetnsError::Marker {
                path: marker.clone(),
                source,
            })?;
        if let Err(error) = create_namespace(&path) {
            let _ = fs::remove_file(&marker);
            return Err(error);
        }
        tracing::info!(namespace = %path.display(), "created network namespace");
        Ok(true)
    }

    /// Removes `name` if Pier created it; returns whether it did. Blocks.
    pub fn remove_if_created(&self, name: &str) -> Result<bool, NamedNetnsError> {
        if !self.created_by_pier(name) {
            return Ok(false);
        }
        let _guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        let path = self.path(name);
        let remove = |source| NamedNetnsError::Remove {
            path: path.clone(),
            source,
        };
        match umount2(&path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL | nix::Error::ENOENT) => {}
            Err(errno) => return Err(remove(std::io::Error::from(errno))),
        }
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == ErrorKind::NotFound => {}
            Err(error) => return Err(remove(error)),
        }
        let marker = self.marker(name);
        match fs::remove_file(&marker) {
            Ok(()) => {}
            Err(error) if error.kind() == ErrorKind::NotFound => {}
            Err(source) => {
                return Err(NamedNetnsError::Marker {
                    path: marker,
                    source,
                });
            }
        }
        tracing::info!(namespace = %path.display(), "removed network namespace");
        Ok(true)
    }

    /// The names Pier created (from the markers), e.g. for `pier down`.
    pub fn created(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(&self.marker_dir) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .filter(|name| valid_name(name))
            .collect();
        names.sort();
        names
    }

    /// The directory must be a shared mount point, so namespaces mounted into it show in every
    /// mount namespace (what `ip netns add` does: make it shared, bind-mounting it onto itself
    /// first when it is not a mount point yet).
    fn prepare_run_dir(&self) -> Result<(), NamedNetnsError> {
        let dir = &self.run_dir;
        let fail = |source| NamedNetnsError::Prepare {
            path: dir.clone(),
            source,
        };
        fs::create_dir_all(dir).map_err(fail)?;
        let shared = || {
            mount(
                None::<&str>,
                dir,
                None::<&str>,
                MsFlags::MS_SHARED | MsFlags::MS_REC,
                None::<&str>,
            )
        };
        match shared() {
            Ok(()) => Ok(()),
            Err(nix::Error::EINVAL) => {
                mount(
                    Some(dir),
                    dir,
                    Some("none"),
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )
                .map_err(|e| fail(e.into()))?;
                shared().map_err(|e| fail(e.into()))
            }
            Err(errno) => Err(fail(errno.into())),
        }
    }
}

/// A file name under the run directory: no separators, not `.`/`..`.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0')
}

/// Whether `path` is a namespace file (a bind mount of an nsfs inode), not a leftover plain file.
fn is_namespace(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

/// Creates the file and bind-mounts a fresh namespace onto it, from a thread made for it: the
/// `unshare` moves only that thread, which ends right after.
fn create_namespace(path: &Path) -> Result<(), NamedNetnsError> {
    let fail = |source| NamedNetnsError::Create {
        path: path.to_path_buf(),
        source,
    };
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(path)
    {
        Ok(_) => {}
        // A plain file left by an interrupted create: reuse it.
        Err(error) if error.kind() == ErrorKind::AlreadyExists => {}
        Err(error) => return Err(fail(error)),
    }
    let target = path.to_path_buf();
    let made = std::thread::Builder::new()
        .name("pier-netns-add".into())
        .spawn(move || -> Result<(), nix::Error> {
            unshare(CloneFlags::CLONE_NEWNET)?;
            mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                Some("none"),
                MsFlags::MS_BIND,
                None::<&str>,
            )
        })
        .map_err(fail)?
        .join()
        .map_err(|_| fail(std::io::Error::other("the namespace thread panicked")))?;
    if let Err(errno) = made {
        let _ = fs::remove_file(path);
        return Err(fail(errno.into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_file_names() {
        assert!(valid_name("con1"));
        assert!(valid_name("web.1_a-b"));
        assert!(!valid_name(""));
        assert!(!valid_name(".."));
        assert!(!valid_name("a/b"));
    }

    #[test]
    fn markers_list_what_pier_created() {
        let dir = tempfile::tempdir().expect("temp dir");
        let named = NamedNetns::new(dir.path().join("run"), dir.path());
        assert!(named.created().is_empty());
        fs::create_dir_all(dir.path().join("netns")).expect("marker dir");
        fs::write(dir.path().join("netns/con1"), b"").expect("marker");
        assert_eq!(named.created(), vec!["con1".to_owned()]);
        assert!(named.created_by_pier("con1"));
        assert!(!named.created_by_pier("con2"));
    }
}
