//! Named network namespaces (`/var/run/netns/NAME`): created on first use, as `ip netns add`
//! does, and removed only when Pier created them.
//!
//! An Endpoint may target a namespace that does not exist yet (the lesson's `docker run` makes the
//! container and its namespace at once). Pier then creates it and leaves a marker in its state
//! directory; when the last Endpoint of that namespace goes, the namespace goes with it. A
//! namespace someone else made (no marker) is never removed.

use std::fs::{self, OpenOptions};
use std::io::ErrorKind;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use nix::unistd::linkat;

use pier_crds::names::NETNS_DIR;

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
    #[error(
        "{path} would not be visible outside Pier: {mount_point} is a slave mount (mounts \
         propagate into it from the node, not back); mount {NETNS_DIR} with bidirectional \
         propagation, or create the namespace on the node first (`ip netns add`)"
    )]
    NotPropagated { path: PathBuf, mount_point: PathBuf },
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
    /// The empty file every marker is a hard link to (beside `marker_dir`, not in it).
    marker_template: PathBuf,
    /// Serializes create and remove, so two reconciles never race on one name; holds the
    /// unnamed file the mount points are links to (see [`NamedNetns::make_mount_point`]).
    lock: Mutex<MountPointSource>,
    /// Whether the run directory was found to propagate and made a shared mount point: done
    /// once, not for every namespace (the mount table has a line per namespace, so reading it
    /// for each made creating N namespaces O(N²)); a failed creation checks again.
    prepared: AtomicBool,
}

impl NamedNetns {
    /// Namespaces under `run_dir` (normally [`NETNS_DIR`]); markers under `state_dir/netns`.
    pub fn new(run_dir: impl Into<PathBuf>, state_dir: &Path) -> NamedNetns {
        NamedNetns {
            run_dir: run_dir.into(),
            marker_dir: state_dir.join("netns"),
            marker_template: state_dir.join("netns.marker"),
            lock: Mutex::new(MountPointSource::None),
            prepared: AtomicBool::new(false),
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
        let mut mount_point_source = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        let path = self.path(name);
        if is_namespace(&path) {
            return Ok(false);
        }
        if !self.prepared.load(Ordering::Acquire) {
            if let Some(mount_point) = self.slave_mount() {
                return Err(NamedNetnsError::NotPropagated { path, mount_point });
            }
            self.prepare_run_dir()?;
            self.prepared.store(true, Ordering::Release);
        }
        // The marker first: a crash between the two leaves a marker for a namespace that a later
        // `ensure` creates (and Pier then owns), never a Pier namespace without a marker.
        let marker = self.marker(name);
        self.write_marker(&marker)
            .map_err(|source| NamedNetnsError::Marker {
                path: marker.clone(),
                source,
            })?;
        let created = self
            .make_mount_point(&mut mount_point_source, &path)
            .map_err(|source| NamedNetnsError::Create {
                path: path.clone(),
                source,
            })
            .and_then(|()| mount_namespace(&path));
        if let Err(error) = created {
            let _ = fs::remove_file(&marker);
            self.prepared.store(false, Ordering::Release);
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

    /// Makes the file at `path` that a namespace is mounted on: a hard link to one unnamed file
    /// of the run directory (`O_TMPFILE`, kept open in `source`), so creating and removing a
    /// namespace allocates and frees no inode. Where the run directory is on a disk filesystem
    /// (ext4 without a journal, where `/run` is not a tmpfs) each new inode scans past the
    /// inodes freed in the last minutes: with 2,000 namespaces made after 2,000 were removed,
    /// that scan was the largest single cost of making them. Where no link can be made (no `O_TMPFILE`; a kernel before
    /// 6.10 without `CAP_DAC_READ_SEARCH`, which `linkat` of a descriptor needed) the file is a
    /// new one, as `ip netns add` makes it, and no link is tried again. A file already there
    /// (left by an interrupted create) is used as it is.
    fn make_mount_point(&self, source: &mut MountPointSource, path: &Path) -> std::io::Result<()> {
        let mut fresh_files = 0;
        loop {
            if matches!(source, MountPointSource::None) {
                if fresh_files == 2 {
                    break;
                }
                fresh_files += 1;
                *source = unnamed_file(&self.run_dir)
                    .map_or(MountPointSource::Unusable, MountPointSource::File);
            }
            let MountPointSource::File(file) = source else {
                break;
            };
            match linkat(&*file, "", AT_FDCWD, path, AtFlags::AT_EMPTY_PATH) {
                Ok(()) | Err(Errno::EEXIST) => return Ok(()),
                // A new file: every link to this one was removed (an unnamed file cannot get a
                // name back then), it has as many links as the filesystem allows, or the run
                // directory was mounted over since it was made.
                Err(Errno::ENOENT) if links(file) == Some(0) => *source = MountPointSource::None,
                Err(Errno::EMLINK | Errno::EXDEV) => *source = MountPointSource::None,
                Err(_) => {
                    *source = MountPointSource::Unusable;
                    break;
                }
            }
        }
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(MOUNT_POINT_MODE)
            .open(path)
        {
            Err(error) if error.kind() != ErrorKind::AlreadyExists => Err(error),
            _ => Ok(()),
        }
    }

    /// Leaves the marker `marker`: a hard link to one empty file, so a marker is a directory
    /// entry and not an inode of its own to allocate (on ext4 without a journal each new inode
    /// scans for recently deleted ones: creating files, markers among them, took a tenth of the
    /// machine's CPU while 2,000 namespaces were created at once after thousands were removed).
    /// Only its name matters; where links fail (a link limit, a filesystem without them) it is a
    /// file of its own.
    fn write_marker(&self, marker: &Path) -> std::io::Result<()> {
        fs::create_dir_all(&self.marker_dir)?;
        let link = || fs::hard_link(&self.marker_template, marker);
        let linked = match link() {
            Err(error) if error.kind() == ErrorKind::NotFound => {
                fs::write(&self.marker_template, b"").and_then(|()| link())
            }
            other => other,
        };
        match linked {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == ErrorKind::AlreadyExists => Ok(()),
            Err(_) => fs::write(marker, b""),
        }
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

    /// The mount holding the run directory, if Pier's mount namespace only receives mounts from
    /// its master there (a container's `HostToContainer` mount, `ip netns exec`, a service with
    /// private mounts): a namespace created in it would exist for Pier alone.
    fn slave_mount(&self) -> Option<PathBuf> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
        // /var/run is usually a link to /run, which is what mountinfo names.
        let dir = fs::canonicalize(&self.run_dir)
            .or_else(|_| {
                let parent = self.run_dir.parent().unwrap_or(Path::new("/"));
                let name = self.run_dir.file_name().unwrap_or_default();
                fs::canonicalize(parent).map(|p| p.join(name))
            })
            .ok()?;
        slave_mount_over(&mountinfo, &dir)
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

/// The mount point of the mount that holds `dir` in `mountinfo` (`/proc/self/mountinfo`), if
/// that mount is a slave (optional field `master:N`).
fn slave_mount_over(mountinfo: &str, dir: &Path) -> Option<PathBuf> {
    let mut holder: Option<(PathBuf, bool)> = None;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(separator) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let Some(point) = fields.get(4).map(|p| unescape(p)) else {
            continue;
        };
        let point = PathBuf::from(point);
        // The longest mount point above `dir`; of equal ones the later (mounted over the other).
        let deeper = holder
            .as_ref()
            .is_none_or(|(held, _)| point.components().count() >= held.components().count());
        if dir.starts_with(&point) && deeper {
            let optional = fields.get(6..separator).unwrap_or_default();
            let slave = optional.iter().any(|f| f.starts_with("master:"));
            holder = Some((point, slave));
        }
    }
    holder.and_then(|(point, slave)| slave.then_some(point))
}

/// mountinfo's octal escapes (`\040` for a space) undone.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)))
            .map(|d| d.iter().fold(0u32, |n, b| n * 8 + u32::from(b - b'0')));
        match octal.and_then(|n| u8::try_from(n).ok()) {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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

/// The mode of a mount point file (read-only, as the namespace file mounted on it reads).
const MOUNT_POINT_MODE: u32 = 0o444;

/// What the mount points of new namespaces are made from (see [`NamedNetns::make_mount_point`]).
#[derive(Debug)]
enum MountPointSource {
    /// None open yet (or the last one can no longer be linked).
    None,
    /// The unnamed file the mount points are links to.
    File(OwnedFd),
    /// Links cannot be made here: each mount point is a new file.
    Unusable,
}

/// How many names `file` has (`None`: unknown).
fn links(file: &OwnedFd) -> Option<u64> {
    nix::sys::stat::fstat(file).ok().map(|stat| stat.st_nlink)
}

/// An unnamed file in `dir`, to be linked under names.
fn unnamed_file(dir: &Path) -> std::io::Result<OwnedFd> {
    OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_TMPFILE)
        .mode(MOUNT_POINT_MODE)
        .open(dir)
        .map(OwnedFd::from)
}

/// Bind-mounts a fresh namespace onto the file `path`, from a thread of
/// [`crate::kernel::netns`]: the `unshare` moves only that thread, which goes back to the
/// process's namespace after the job. On failure the file goes.
fn mount_namespace(path: &Path) -> Result<(), NamedNetnsError> {
    let fail = |source| NamedNetnsError::Create {
        path: path.to_path_buf(),
        source,
    };
    let target = path.to_path_buf();
    let made = crate::kernel::netns::run_in(None, move || -> Result<(), nix::Error> {
        unshare(CloneFlags::CLONE_NEWNET)?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            Some("none"),
            MsFlags::MS_BIND,
            None::<&str>,
        )
    })
    .map_err(|error| fail(std::io::Error::other(pier_runtime::error_chain(&error))))?;
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
    fn a_slave_mount_over_the_run_directory_is_found() {
        let host = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
25 22 0:23 / /run rw,nosuid shared:5 - tmpfs tmpfs rw
40 25 0:4 / /run/netns rw shared:12 - tmpfs tmpfs rw
";
        let dir = Path::new("/run/netns");
        assert_eq!(slave_mount_over(host, dir), None);
        // HostToContainer: the container's mounts are slaves of the node's.
        let container = "\
300 299 0:80 / / rw master:1 - overlay overlay rw
310 300 0:23 /netns /run/netns rw,nosuid master:5 - tmpfs tmpfs rw
";
        assert_eq!(
            slave_mount_over(container, dir),
            Some(PathBuf::from("/run/netns"))
        );
        // Bidirectional: shared with the node's peer group, no master.
        let bidirectional = "\
300 299 0:80 / / rw master:1 - overlay overlay rw
310 300 0:23 /netns /run/netns rw,nosuid shared:5 - tmpfs tmpfs rw
";
        assert_eq!(slave_mount_over(bidirectional, dir), None);
        // No mount at /run/netns: the one above it decides; a private one is not a slave.
        let private = "300 299 0:80 / / rw - overlay overlay rw\n";
        assert_eq!(slave_mount_over(private, dir), None);
        let slave_root = "300 299 0:80 / / rw master:1 - overlay overlay rw\n";
        assert_eq!(slave_mount_over(slave_root, dir), Some(PathBuf::from("/")));
        // Escaped mount points; a sibling with a common prefix does not count.
        let escaped = "\
22 1 254:0 / / rw shared:1 - ext4 /dev/vda rw
41 22 0:4 / /run/net\\040ns rw master:3 - tmpfs tmpfs rw
42 22 0:4 / /run/netnsx rw master:3 - tmpfs tmpfs rw
";
        assert_eq!(
            slave_mount_over(escaped, Path::new("/run/net ns/x")),
            Some(PathBuf::from("/run/net ns"))
        );
        assert_eq!(slave_mount_over(escaped, dir), None);
    }

    /// The number of names of the unnamed file the mount points are links to (`None`: none
    /// open).
    fn mount_point_links(named: &NamedNetns) -> Option<u64> {
        match &*named.lock.lock().unwrap_or_else(PoisonError::into_inner) {
            MountPointSource::File(file) => links(file),
            _ => None,
        }
    }

    #[test]
    fn mount_points_are_links_to_one_file_and_namespaces_stay_apart() {
        use std::os::unix::fs::MetadataExt;

        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root: it makes named network namespaces"
        );
        let state = tempfile::tempdir().expect("temp dir");
        let named = NamedNetns::new(NETNS_DIR, state.path());
        let names: Vec<String> = ["a", "b", "c"]
            .iter()
            .map(|n| format!("pier-mp-{}-{n}", std::process::id()))
            .collect();
        let inode = |name: &str| fs::metadata(named.path(name)).expect("namespace").ino();
        for name in &names[..2] {
            assert!(named.ensure(name).expect("created"), "{name} is new");
            assert!(is_namespace(&named.path(name)), "{name} is mounted");
        }
        assert_ne!(inode(&names[0]), inode(&names[1]), "two namespaces");
        assert_eq!(mount_point_links(&named), Some(2), "one file, two names");
        // Existing: not created again, no new name.
        assert!(!named.ensure(&names[0]).expect("exists"));
        assert_eq!(mount_point_links(&named), Some(2));
        for name in &names[..2] {
            assert!(named.remove_if_created(name).expect("removed"));
            assert!(!named.path(name).exists(), "{name} is gone");
        }
        assert_eq!(mount_point_links(&named), Some(0), "no name left");
        // A file whose every name is gone cannot be linked again: a new one serves.
        assert!(named.ensure(&names[2]).expect("created"));
        assert!(is_namespace(&named.path(&names[2])));
        assert_eq!(mount_point_links(&named), Some(1));
        assert!(named.remove_if_created(&names[2]).expect("removed"));
        assert!(!named.path(&names[2]).exists());
    }

    #[test]
    fn mount_points_are_links_until_links_cannot_be_made() {
        use std::os::unix::fs::MetadataExt;

        let dir = tempfile::tempdir().expect("temp dir");
        let named = NamedNetns::new(dir.path(), dir.path());
        let mut source = MountPointSource::None;
        let inode = |name: &str| fs::metadata(named.path(name)).expect("mount point").ino();
        for name in ["a", "b"] {
            named
                .make_mount_point(&mut source, &named.path(name))
                .expect("made");
        }
        assert_eq!(inode("a"), inode("b"), "links to one file");
        // A leftover is used as it is.
        named
            .make_mount_point(&mut source, &named.path("a"))
            .expect("again");
        // Every name gone: the next is a link to a new file.
        fs::remove_file(named.path("a")).expect("rm a");
        fs::remove_file(named.path("b")).expect("rm b");
        named
            .make_mount_point(&mut source, &named.path("c"))
            .expect("made after all links went");
        assert!(matches!(&source, MountPointSource::File(file) if links(file) == Some(1)));
        // Where links cannot be made, a file of its own.
        let mut unusable = MountPointSource::Unusable;
        named
            .make_mount_point(&mut unusable, &named.path("d"))
            .expect("a plain file");
        assert_ne!(inode("c"), inode("d"));
        assert_eq!(fs::metadata(named.path("d")).expect("d").nlink(), 1);
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

    #[test]
    fn markers_are_links_to_one_file_outside_the_list() {
        use std::os::unix::fs::MetadataExt;

        let dir = tempfile::tempdir().expect("temp dir");
        let named = NamedNetns::new(dir.path().join("run"), dir.path());
        for name in ["a", "b", "c"] {
            named.write_marker(&named.marker(name)).expect("marker");
        }
        // Again: an existing marker is fine.
        named
            .write_marker(&named.marker("a"))
            .expect("marker again");
        assert_eq!(named.created(), vec!["a", "b", "c"]);
        let inode = |name: &str| fs::metadata(named.marker(name)).expect("marker").ino();
        assert_eq!(inode("a"), inode("c"));
        assert_eq!(
            fs::metadata(dir.path().join("netns.marker"))
                .expect("template")
                .nlink(),
            4
        );
        fs::remove_file(named.marker("b")).expect("remove");
        assert_eq!(named.created(), vec!["a", "c"]);
    }
}
