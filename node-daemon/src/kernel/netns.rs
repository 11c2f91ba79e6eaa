//! Network namespaces: running code inside one without ever leaving a shared thread there.
//!
//! `setns` changes the namespace of the calling thread only. A tokio worker or the caller's thread
//! moved into a foreign namespace would silently send later work to the wrong place, so everything
//! here runs on a fresh OS thread that enters the namespace, does its work and then exits: the
//! thread dies with the namespace it was in. Netlink sockets opened on that thread stay
//! bound to the namespace after the thread ends, so callers can open sockets inside and use them
//! from anywhere.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};

/// Entering or using a namespace failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("opening network namespace {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("entering network namespace {path}")]
    Enter {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("starting a thread for network namespace work")]
    Spawn(#[source] std::io::Error),
    #[error("the thread working in network namespace {path} panicked")]
    Panicked { path: String },
}

/// Runs `work` on a dedicated OS thread inside the namespace at `netns` (`None`: the namespace of
/// the calling process, still on a dedicated thread so the caller's thread is never touched).
pub fn run_in<T, F>(netns: Option<&Path>, work: F) -> Result<T, NetnsError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let target = netns.map(Path::to_path_buf);
    let shown = target
        .as_deref()
        .map_or_else(|| "(own)".to_owned(), |p| p.display().to_string());
    let handle = std::thread::Builder::new()
        .name("pier-netns".into())
        .spawn(move || -> Result<T, NetnsError> {
            if let Some(path) = target {
                enter(&path)?;
            }
            Ok(work())
        })
        .map_err(NetnsError::Spawn)?;
    handle
        .join()
        .map_err(|_| NetnsError::Panicked { path: shown })?
}

/// Moves the calling thread into the namespace at `path`. Only for threads made for this purpose.
fn enter(path: &Path) -> Result<(), NetnsError> {
    let file = File::open(path).map_err(|source| NetnsError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_namespace_runs_on_another_thread() {
        let caller = std::thread::current().id();
        let worker = run_in(None, || std::thread::current().id()).expect("runs");
        assert_ne!(caller, worker);
    }

    #[test]
    fn a_missing_namespace_is_an_open_error() {
        let err = run_in(Some(Path::new("/var/run/netns/pier-does-not-exist")), || ())
            .expect_err("must fail");
        assert!(matches!(err, NetnsError::Open { .. }), "{err}");
    }
}
