//! The `pier` context in the invoking user's kubeconfig, as `kind create cluster` merges
//! `kind-NAME`: `pier up` (run with sudo) writes cluster, user and context `pier` into
//! `$KUBECONFIG` or `~/.kube/config` of `SUDO_USER`, owned by that user, so a plain `kubectl`
//! works without root; `pier down --purge` takes them out again. Other entries stay as they were.

use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use pier_apiserver::kubeconfig::CONTEXT;
use serde_yaml::{Mapping, Value};

/// The file in the data directory that records which kubeconfig `pier up` merged into, so
/// `pier down --purge` finds it whoever runs it.
pub const MERGED_RECORD: &str = "merged-kubeconfig";

/// The lists of a kubeconfig that hold named entries.
const LISTS: [&str; 3] = ["clusters", "users", "contexts"];

#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    #[error("{} is not a kubeconfig (a YAML mapping)", path.display())]
    NotAMapping { path: PathBuf },
    #[error("parsing {} as YAML", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    #[error(
        "{} is a symbolic link or not owned by uid {uid}: not writing it as root",
        path.display()
    )]
    Untrusted { path: PathBuf, uid: u32 },
    #[error("no home directory for user {user:?} (SUDO_USER)")]
    NoHome { user: String },
    #[error("{action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where to merge and who owns the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub path: PathBuf,
    /// uid and gid of the user the file belongs to; `None`: whoever runs `pier`.
    pub owner: Option<(u32, u32)>,
}

/// The user who ran `sudo`: name, uid, gid, home.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SudoUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

/// The target from the environment: the first file of `kubeconfig_env` (`$KUBECONFIG`, kept by
/// `sudo -E`), else `~/.kube/config` of the sudo user, else of `home`.
pub fn choose_target(
    kubeconfig_env: Option<&str>,
    sudo_user: Option<&SudoUser>,
    home: Option<&Path>,
) -> Option<Target> {
    let owner = sudo_user.map(|u| (u.uid, u.gid));
    if let Some(first) = kubeconfig_env.and_then(|v| v.split(':').find(|p| !p.is_empty())) {
        return Some(Target {
            path: PathBuf::from(first),
            owner,
        });
    }
    let home = sudo_user.map(|u| u.home.as_path()).or(home)?;
    Some(Target {
        path: home.join(".kube").join("config"),
        owner,
    })
}

/// The sudo user named by `SUDO_USER` (not root), from the password database.
pub fn sudo_user_from_env() -> Result<Option<SudoUser>, KubeconfigError> {
    let Some(name) = std::env::var("SUDO_USER").ok().filter(|n| n != "root") else {
        return Ok(None);
    };
    let user = nix::unistd::User::from_name(&name)
        .ok()
        .flatten()
        .ok_or_else(|| KubeconfigError::NoHome { user: name.clone() })?;
    Ok(Some(SudoUser {
        name,
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        home: user.dir,
    }))
}

/// `existing` (a kubeconfig's text, or none) with Pier's cluster, user and context from `ours`
/// replacing any of the same name, and `pier` as the current context.
pub fn merge(existing: Option<&str>, ours: &str, path: &Path) -> Result<String, KubeconfigError> {
    let mut config = parse(existing.unwrap_or(""), path)?;
    let ours = parse(ours, path)?;
    for list in LISTS {
        let mut entries = without_pier(config.get(list));
        if let Some(Value::Sequence(mine)) = ours.get(list) {
            entries.extend(mine.iter().cloned());
        }
        config.insert(list.into(), Value::Sequence(entries));
    }
    config
        .entry("apiVersion".into())
        .or_insert_with(|| "v1".into());
    config
        .entry("kind".into())
        .or_insert_with(|| "Config".into());
    config.insert("current-context".into(), CONTEXT.into());
    to_text(&config)
}

/// `existing` without Pier's entries; the current context is cleared if it was `pier`.
pub fn remove(existing: &str, path: &Path) -> Result<String, KubeconfigError> {
    let mut config = parse(existing, path)?;
    for list in LISTS {
        if config.contains_key(list) {
            let kept = without_pier(config.get(list));
            config.insert(list.into(), Value::Sequence(kept));
        }
    }
    if config.get("current-context").and_then(Value::as_str) == Some(CONTEXT) {
        config.insert("current-context".into(), "".into());
    }
    to_text(&config)
}

fn parse(text: &str, path: &Path) -> Result<Mapping, KubeconfigError> {
    if text.trim().is_empty() {
        return Ok(Mapping::new());
    }
    let value: Value = serde_yaml::from_str(text).map_err(|source| KubeconfigError::Parse {
        path: path.to_owned(),
        source,
    })?;
    match value {
        Value::Mapping(map) => Ok(map),
        Value::Null => Ok(Mapping::new()),
        _ => Err(KubeconfigError::NotAMapping {
            path: path.to_owned(),
        }),
    }
}

fn without_pier(list: Option<&Value>) -> Vec<Value> {
    let Some(Value::Sequence(entries)) = list else {
        return Vec::new();
    };
    entries
        .iter()
        .filter(|e| e.get("name").and_then(Value::as_str) != Some(CONTEXT))
        .cloned()
        .collect()
}

fn to_text(config: &Mapping) -> Result<String, KubeconfigError> {
    // A mapping of strings, sequences and mappings always serializes.
    Ok(serde_yaml::to_string(config).unwrap_or_default())
}

/// Merges `ours` into the target's file (created with its folder if absent), owned by the
/// target's user, mode 0600, replaced atomically.
pub fn merge_into(target: &Target, ours: &str) -> Result<(), KubeconfigError> {
    let existing = read_existing(target)?;
    let merged = merge(existing.as_deref(), ours, &target.path)?;
    write_owned(target, &merged)
}

/// Takes Pier's entries out of the target's file, if it exists.
pub fn remove_from(target: &Target) -> Result<bool, KubeconfigError> {
    let Some(existing) = read_existing(target)? else {
        return Ok(false);
    };
    let kept = remove(&existing, &target.path)?;
    write_owned(target, &kept)?;
    Ok(true)
}

/// The file's text; refuses a symbolic link or a file of another user (root must not copy a
/// file the user could not read into one they can).
fn read_existing(target: &Target) -> Result<Option<String>, KubeconfigError> {
    let path = &target.path;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(io("reading", path, source)),
    };
    if let Some((uid, _)) = target.owner
        && (meta.file_type().is_symlink() || meta.uid() != uid)
    {
        return Err(KubeconfigError::Untrusted {
            path: path.clone(),
            uid,
        });
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| io("reading", path, e))?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut file, &mut text).map_err(|e| io("reading", path, e))?;
    Ok(Some(text))
}

fn write_owned(target: &Target, text: &str) -> Result<(), KubeconfigError> {
    let path = &target.path;
    let dir = path.parent().unwrap_or(Path::new("."));
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(|e| io("creating", dir, e))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))
            .map_err(|e| io("setting the mode of", dir, e))?;
        chown(dir, target.owner)?;
    }
    let temp = dir.join(format!(".pier-kubeconfig.{}", std::process::id()));
    let _ = std::fs::remove_file(&temp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .map_err(|e| io("creating", &temp, e))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| io("writing", &temp, e))?;
    chown(&temp, target.owner)?;
    std::fs::rename(&temp, path).map_err(|e| io("replacing", path, e))
}

fn chown(path: &Path, owner: Option<(u32, u32)>) -> Result<(), KubeconfigError> {
    let Some((uid, gid)) = owner else {
        return Ok(());
    };
    nix::unistd::chown(
        path,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
    )
    .map_err(|errno| io("changing the owner of", path, errno.into()))
}

fn io(action: &'static str, path: &Path, source: std::io::Error) -> KubeconfigError {
    KubeconfigError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// Records the merged file in the data directory (for `pier down --purge`).
pub fn record(data_dir: &Path, target: &Target) -> Result<(), KubeconfigError> {
    let record = data_dir.join(MERGED_RECORD);
    let owner = target
        .owner
        .map_or_else(String::new, |(uid, gid)| format!("{uid}:{gid}"));
    let text = format!("{}\n{owner}\n", target.path.display());
    std::fs::write(&record, text).map_err(|e| io("writing", &record, e))
}

/// The target `pier up` recorded in `data_dir`, if it merged.
pub fn recorded(data_dir: &Path) -> Option<Target> {
    let text = std::fs::read_to_string(data_dir.join(MERGED_RECORD)).ok()?;
    let mut lines = text.lines();
    let path = PathBuf::from(lines.next().filter(|l| !l.is_empty())?);
    let owner = lines.next().and_then(|l| {
        let (uid, gid) = l.split_once(':')?;
        Some((uid.parse().ok()?, gid.parse().ok()?))
    });
    Some(Target { path, owner })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: &str = "apiVersion: v1\nkind: Config\nclusters:\n- name: pier\n  cluster: {server: 'https://127.0.0.1:6443'}\nusers:\n- name: pier\n  user: {token: t}\ncontexts:\n- name: pier\n  context: {cluster: pier, user: pier}\ncurrent-context: pier\n";
    const THEIRS: &str = "apiVersion: v1\nkind: Config\nclusters:\n- name: kind-a\n  cluster: {server: 'https://10.0.0.1:6443'}\n- name: pier\n  cluster: {server: 'https://old:1'}\nusers:\n- name: kind-a\n  user: {token: a}\ncontexts:\n- name: kind-a\n  context: {cluster: kind-a, user: kind-a}\ncurrent-context: kind-a\npreferences: {colors: true}\n";

    fn names(text: &str, list: &str) -> Vec<String> {
        let value: Value = serde_yaml::from_str(text).expect("yaml");
        value[list]
            .as_sequence()
            .expect("list")
            .iter()
            .map(|e| e["name"].as_str().expect("name").to_owned())
            .collect()
    }

    #[test]
    fn merging_keeps_other_entries_and_replaces_pier_s() {
        let merged = merge(Some(THEIRS), OURS, Path::new("x")).expect("merges");
        assert_eq!(names(&merged, "clusters"), ["kind-a", "pier"]);
        assert_eq!(names(&merged, "users"), ["kind-a", "pier"]);
        assert_eq!(names(&merged, "contexts"), ["kind-a", "pier"]);
        assert!(merged.contains("https://127.0.0.1:6443") && !merged.contains("old:1"));
        assert!(merged.contains("current-context: pier"));
        assert!(merged.contains("colors: true"));
    }

    #[test]
    fn merging_into_nothing_gives_pier_s_config() {
        let merged = merge(None, OURS, Path::new("x")).expect("merges");
        assert_eq!(names(&merged, "contexts"), ["pier"]);
        assert!(merged.contains("kind: Config"));
    }

    #[test]
    fn removing_takes_out_only_pier_s_entries() {
        let merged = merge(Some(THEIRS), OURS, Path::new("x")).expect("merges");
        let removed = remove(&merged, Path::new("x")).expect("removes");
        assert_eq!(names(&removed, "clusters"), ["kind-a"]);
        assert_eq!(names(&removed, "contexts"), ["kind-a"]);
        assert!(removed.contains("current-context: ''"));
        let kept = remove(
            THEIRS
                .replace("- name: pier\n  cluster: {server: 'https://old:1'}\n", "")
                .as_str(),
            Path::new("x"),
        )
        .expect("removes");
        assert!(kept.contains("current-context: kind-a"));
    }

    #[test]
    fn a_broken_kubeconfig_is_an_error_not_overwritten() {
        assert!(merge(Some("- a\n- b\n"), OURS, Path::new("x")).is_err());
        assert!(merge(Some("a: [\n"), OURS, Path::new("x")).is_err());
    }

    #[test]
    fn the_target_follows_kubeconfig_then_the_sudo_user_then_home() {
        let user = SudoUser {
            name: "ann".into(),
            uid: 1000,
            gid: 1001,
            home: "/home/ann".into(),
        };
        let home = Some(Path::new("/root"));
        let t = choose_target(Some(":/a/kc:/b/kc"), Some(&user), home).expect("target");
        assert_eq!(t.path, Path::new("/a/kc"));
        assert_eq!(t.owner, Some((1000, 1001)));
        let t = choose_target(None, Some(&user), home).expect("target");
        assert_eq!(t.path, Path::new("/home/ann/.kube/config"));
        let t = choose_target(Some(""), None, home).expect("target");
        assert_eq!(
            (t.path.as_path(), t.owner),
            (Path::new("/root/.kube/config"), None)
        );
        assert_eq!(choose_target(None, None, None), None);
    }

    #[test]
    fn the_record_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = Target {
            path: "/home/ann/.kube/config".into(),
            owner: Some((1000, 1001)),
        };
        record(dir.path(), &target).expect("recorded");
        assert_eq!(recorded(dir.path()), Some(target));
    }
}
