//! Network namespaces: running code inside one without ever leaving a shared thread there.
//!
//! `setns` changes the namespace of the calling thread only. A tokio worker or the caller's thread
//! moved into a foreign namespace would silently send later work to the wrong place, so
//! everything here runs on threads of its own: a job enters its namespace on one, does its work,
//! and the thread goes back to the process's namespace before it takes another job. A thread
//! that cannot go back ends with the job. Starting and ending a thread per job cost more than
//! the job on a busy node (each attach has two: its namespace made and its interface set up).
//! Netlink sockets opened inside a namespace stay bound to it after the job, so callers can open
//! sockets inside and use them from anywhere.

use std::any::Any;
use std::fs::File;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Mutex, PoisonError};

use nix::sched::{CloneFlags, setns};

/// The process's own namespace: where every worker returns after a job.
const HOME: &str = "/proc/self/ns/net";

/// Idle workers kept for the next jobs; more are started when more jobs run at once, and those
/// beyond this end when they are done.
const KEPT: usize = 4;

/// A job, type-erased: what it returns goes back to [`run_in`], which knows its type.
type Job = Box<dyn FnOnce() -> Box<dyn Any + Send> + Send>;

/// What a worker answers for one job: the job's result (`None`: it panicked), and whether the
/// worker is back home (and may take another job).
struct Done {
    result: Option<Box<dyn Any + Send>>,
    home: bool,
}

/// A worker thread, idle, waiting for its next job.
struct Worker {
    jobs: mpsc::Sender<(Job, mpsc::SyncSender<Done>)>,
}

static IDLE: Mutex<Vec<Worker>> = Mutex::new(Vec::new());

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

/// Runs `work` on a thread of its own inside the namespace at `netns` (`None`: the namespace of
/// the process, still on a thread of its own so the caller's thread is never touched).
pub fn run_in<T, F>(netns: Option<&Path>, work: F) -> Result<T, NetnsError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let target = netns.map(Path::to_path_buf);
    let shown = target
        .as_deref()
        .map_or_else(|| "(own)".to_owned(), |p| p.display().to_string());
    let job: Job = Box::new(move || -> Box<dyn Any + Send> {
        let result = match &target {
            Some(path) => enter(path).map(|()| work()),
            None => Ok(work()),
        };
        Box::new(result)
    });
    let worker = lock(&IDLE).pop().map_or_else(Worker::start, Ok)?;
    let panicked = || NetnsError::Panicked {
        path: shown.clone(),
    };
    let Done { result, home } = worker.run(job).ok_or_else(panicked)?;
    if home {
        let mut idle = lock(&IDLE);
        if idle.len() < KEPT {
            idle.push(worker);
        }
    }
    let result = result.ok_or_else(panicked)?;
    match result.downcast::<Result<T, NetnsError>>() {
        Ok(result) => *result,
        // The job above boxes exactly this type.
        Err(_) => unreachable!("a job's result has the type run_in gave it"),
    }
}

impl Worker {
    /// Starts a worker in the process's namespace.
    fn start() -> Result<Worker, NetnsError> {
        let home = File::open(HOME).map_err(|source| NetnsError::Open {
            path: PathBuf::from(HOME),
            source,
        })?;
        let (jobs, queue) = mpsc::channel::<(Job, mpsc::SyncSender<Done>)>();
        std::thread::Builder::new()
            .name("pier-netns".into())
            .spawn(move || serve(&home, &queue))
            .map_err(NetnsError::Spawn)?;
        Ok(Worker { jobs })
    }

    /// Runs `job` on this worker and waits for it (`None`: the worker is gone).
    fn run(&self, job: Job) -> Option<Done> {
        let (done_tx, done) = mpsc::sync_channel(1);
        self.jobs.send((job, done_tx)).ok()?;
        done.recv().ok()
    }
}

/// A worker's life: home first (it may have been started from a thread elsewhere), then each
/// job, going home after it; it ends when it cannot go home or nobody keeps it.
fn serve(home: &File, queue: &mpsc::Receiver<(Job, mpsc::SyncSender<Done>)>) {
    let mut at_home = setns(home, CloneFlags::CLONE_NEWNET).is_ok();
    while at_home && let Ok((job, done)) = queue.recv() {
        let result = std::panic::catch_unwind(AssertUnwindSafe(job)).ok();
        at_home = setns(home, CloneFlags::CLONE_NEWNET).is_ok();
        let _ = done.send(Done {
            result,
            home: at_home,
        });
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
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

    /// The inode of the calling thread's network namespace.
    fn thread_netns() -> u64 {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata("/proc/thread-self/ns/net")
            .expect("own namespace")
            .ino()
    }

    #[test]
    fn a_worker_is_back_in_the_process_namespace_for_its_next_job() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root: it makes network namespaces"
        );
        let own = thread_netns();
        let worker = Worker::start().expect("a worker");
        let answer = |done: Option<Done>| -> u64 {
            let done = done.expect("the worker answers");
            assert!(done.home, "the worker went home");
            *done
                .result
                .expect("the job did not panic")
                .downcast::<u64>()
                .expect("the job's type")
        };
        for _ in 0..3 {
            // A job that leaves for a new namespace, as making a named namespace does...
            let inside = answer(worker.run(Box::new(|| {
                nix::sched::unshare(CloneFlags::CLONE_NEWNET).expect("unshare");
                Box::new(thread_netns())
            })));
            assert_ne!(inside, own, "the job ran in its new namespace");
            // ...and the next job on the same worker runs at home.
            let next = answer(worker.run(Box::new(|| Box::new(thread_netns()))));
            assert_eq!(next, own, "the worker came back");
        }
    }

    #[test]
    fn a_panicking_job_is_an_error_and_the_next_job_runs() {
        let err = run_in(None, || panic!("on purpose")).expect_err("must fail");
        assert!(matches!(err, NetnsError::Panicked { .. }), "{err}");
        assert_eq!(run_in(None, || 7).expect("runs"), 7);
    }

    #[test]
    fn a_missing_namespace_is_an_open_error() {
        let err = run_in(Some(Path::new("/var/run/netns/pier-does-not-exist")), || ())
            .expect_err("must fail");
        assert!(matches!(err, NetnsError::Open { .. }), "{err}");
    }
}
