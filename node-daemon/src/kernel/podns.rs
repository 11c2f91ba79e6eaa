//! Finding a Pod's network namespace from procfs, without a CRI client.
//!
//! The kubelet puts every container of a Pod, the sandbox (pause) process included, in a cgroup
//! named after the Pod's UID: `.../pod<uid>/...` with the cgroupfs driver and
//! `...-pod<uid with _ for ->.slice/...` with the systemd driver. Any of those processes holds the
//! Pod's network namespace at `/proc/<pid>/ns/net`.

use std::io;
use std::path::{Path, PathBuf};

/// Why the namespace could not be looked for (a Pod with no process yet is `Ok(None)`, not this).
#[derive(Debug, thiserror::Error)]
pub enum PodNetnsError {
    #[error("pod uid {uid:?} is not a Kubernetes uid (hex digits and dashes)")]
    InvalidUid { uid: String },
    #[error("listing processes in {path}")]
    ListProcesses {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("reading {path}")]
    ReadCgroup {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// The network namespace file (`<proc_root>/<pid>/ns/net`) of the lowest-numbered process in the
/// Pod's cgroup — normally the sandbox, which is started first — or `None` when no process runs
/// in it (not started yet, or already gone).
///
/// Processes that exit during the scan are skipped.
pub fn find_pod_netns(proc_root: &Path, pod_uid: &str) -> Result<Option<PathBuf>, PodNetnsError> {
    let pattern = UidPattern::new(pod_uid)?;
    let entries = std::fs::read_dir(proc_root).map_err(|source| PodNetnsError::ListProcesses {
        path: proc_root.display().to_string(),
        source,
    })?;
    let mut lowest: Option<u32> = None;
    for entry in entries {
        let entry = entry.map_err(|source| PodNetnsError::ListProcesses {
            path: proc_root.display().to_string(),
            source,
        })?;
        // `self`, `sys`, `net`, ...: everything that is not a pid.
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if lowest.is_some_and(|low| low < pid) {
            continue;
        }
        let path = entry.path().join("cgroup");
        let cgroups = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if vanished(&error) => continue,
            Err(source) => {
                return Err(PodNetnsError::ReadCgroup {
                    path: path.display().to_string(),
                    source,
                });
            }
        };
        if pattern.matches(&cgroups) {
            lowest = Some(pid);
        }
    }
    Ok(lowest.map(|pid| proc_root.join(pid.to_string()).join("ns").join("net")))
}

/// The process exited between listing and reading (`ENOENT`, or `ESRCH` from a dying task).
fn vanished(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::NotFound
        || error.raw_os_error() == Some(nix::errno::Errno::ESRCH as i32)
}

/// The two spellings of one Pod's cgroup segment.
#[derive(Debug)]
struct UidPattern {
    /// `pod<uid>` (cgroupfs driver).
    dashes: String,
    /// `pod<uid with _>` (systemd driver, where `-` separates slice levels).
    underscores: String,
}

impl UidPattern {
    /// Validates first, so that no uid (empty, `/`, `*`, ...) can match every process.
    fn new(uid: &str) -> Result<UidPattern, PodNetnsError> {
        let valid = uid.bytes().any(|b| b.is_ascii_hexdigit())
            && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
        if !valid {
            return Err(PodNetnsError::InvalidUid {
                uid: uid.to_owned(),
            });
        }
        // Kubernetes uids are lowercase and so are the cgroup names made from them.
        let uid = uid.to_ascii_lowercase();
        Ok(UidPattern {
            dashes: format!("pod{uid}"),
            underscores: format!("pod{}", uid.replace('-', "_")),
        })
    }

    /// Whether any line of a `/proc/<pid>/cgroup` file (`ID:CONTROLLERS:PATH`, v1 or v2) has the
    /// Pod's segment in its path.
    fn matches(&self, cgroups: &str) -> bool {
        cgroups.lines().any(|line| {
            let path = line.splitn(3, ':').nth(2).unwrap_or_default();
            has_segment(path, &self.dashes) || has_segment(path, &self.underscores)
        })
    }
}

/// Whether `needle` occurs in `path` as a whole segment: after `/` or `-`, and before `/`, `.`
/// (`.slice`) or the end, so that a uid never matches a longer one that it is a prefix of.
fn has_segment(path: &str, needle: &str) -> bool {
    path.match_indices(needle).any(|(at, _)| {
        let before = path[..at].chars().next_back();
        let after = path[at + needle.len()..].chars().next();
        matches!(before, Some('/' | '-')) && matches!(after, None | Some('/' | '.'))
    })
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    const UID: &str = "0b5c7e9e-3f0d-4c1a-9e2b-5d6f7a8b9c0d";

    /// A fake procfs: `pid` directories with the given cgroup file (None: no file).
    fn procfs(processes: &[(&str, Option<&str>)]) -> tempfile::TempDir {
        let root = tempfile::tempdir().expect("creating a temp dir");
        for (name, cgroup) in processes {
            let dir = root.path().join(name);
            fs::create_dir_all(&dir).expect("creating a fake pid dir");
            if let Some(text) = cgroup {
                fs::write(dir.join("cgroup"), text).expect("writing a fake cgroup file");
            }
        }
        root
    }

    fn netns_of(root: &tempfile::TempDir, pid: &str) -> Option<PathBuf> {
        Some(root.path().join(pid).join("ns").join("net"))
    }

    const OTHER_POD: &str = "0::/kubepods/besteffort/pod11111111-2222-3333-4444-555555555555/abc\n";

    #[test]
    fn cgroupfs_driver_v1_lowest_pid_wins() {
        let v1 = format!(
            "12:memory:/kubepods/besteffort/pod{UID}/4f1e\n11:cpu,cpuacct:/kubepods/besteffort/pod{UID}/4f1e\n0::/\n"
        );
        let root = procfs(&[
            ("1", Some("0::/init.scope\n")),
            ("812", Some(&v1)),
            ("95", Some(&v1)),
            ("97", Some(OTHER_POD)),
        ]);
        assert_eq!(
            find_pod_netns(root.path(), UID).expect("scan"),
            netns_of(&root, "95")
        );
    }

    #[test]
    fn systemd_driver_and_cgroup_v2_single_line() {
        let underscored = UID.replace('-', "_");
        let v2 = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{underscored}.slice/cri-containerd-9a8b.scope\n"
        );
        let root = procfs(&[("40", Some(OTHER_POD)), ("4321", Some(&v2))]);
        assert_eq!(
            find_pod_netns(root.path(), UID).expect("scan"),
            netns_of(&root, "4321")
        );
        // Guaranteed pods sit directly under kubepods, and uppercase uids are normalised.
        let guaranteed = format!("0::/kubepods.slice/kubepods-pod{underscored}.slice\n");
        let root = procfs(&[("7", Some(&guaranteed))]);
        assert_eq!(
            find_pod_netns(root.path(), &UID.to_uppercase()).expect("scan"),
            netns_of(&root, "7")
        );
    }

    #[test]
    fn no_match_missing_cgroup_files_and_non_pid_entries() {
        let mine = format!("0::/kubepods/pod{UID}\n");
        let root = procfs(&[
            ("self", Some(&mine)),
            ("sys", None),
            ("10", None),
            ("11", Some(OTHER_POD)),
            ("12", Some("0::/system.slice/sshd.service\n")),
        ]);
        fs::write(root.path().join("uptime"), "1.0 1.0\n").expect("writing a fake file");
        assert_eq!(find_pod_netns(root.path(), UID).expect("scan"), None);
    }

    #[test]
    fn a_uid_matches_only_its_whole_segment() {
        // A shortened uid is a prefix of the real one but a different pod.
        let full = format!("0::/kubepods/besteffort/pod{UID}/c\n");
        let root = procfs(&[("5", Some(&full))]);
        assert_eq!(find_pod_netns(root.path(), "0b5c7e9e").expect("scan"), None);
        // A static pod's uid (32 hex, no dashes) is a valid uid.
        let static_uid = "5c9d8f0e1a2b3c4d5e6f708192a3b4c5";
        let root = procfs(&[(
            "6",
            Some(&format!("0::/kubepods/burstable/pod{static_uid}\n")),
        )]);
        assert_eq!(
            find_pod_netns(root.path(), static_uid).expect("scan"),
            netns_of(&root, "6")
        );
    }

    #[test]
    fn invalid_uids_are_refused_before_scanning() {
        let root = procfs(&[("1", Some("0::/\n"))]);
        for uid in [
            "",
            "-",
            "---",
            "*",
            "../1",
            "pod 1",
            "0b5c/7e9e",
            "0b5c_7e9e",
        ] {
            let error = find_pod_netns(root.path(), uid).expect_err("invalid uid");
            assert!(
                matches!(error, PodNetnsError::InvalidUid { .. }),
                "{uid:?}: {error}"
            );
        }
    }

    #[test]
    fn an_unreadable_proc_root_is_an_error() {
        let root = procfs(&[]);
        let missing = root.path().join("nope");
        let error = find_pod_netns(&missing, UID).expect_err("missing proc root");
        assert!(
            matches!(error, PodNetnsError::ListProcesses { .. }),
            "{error}"
        );
    }
}
