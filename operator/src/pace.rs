//! Paced writes: a field that changes with every dependent of an object (a Network's endpoint
//! count, with every Endpoint allocated or released) is written at most once per interval per
//! object. A burst of 2,000 Endpoints made 2,000 Network status writes, each fanned out to every
//! watch; paced, a few a second. The last value is never lost: a reconcile told to wait requeues
//! itself for when the write may go. Pure logic: no kube.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pier_memory::ShrinkIfSparse as _;

/// How often a Network's endpoint count is written at most while it keeps changing: `kubectl
/// get networks` lags a burst by at most this.
pub const ENDPOINT_COUNT_PACE: Duration = Duration::from_millis(500);

/// When each object's paced field was last written.
#[derive(Debug)]
pub struct Pacer {
    interval: Duration,
    written: Mutex<HashMap<String, Instant>>,
}

impl Pacer {
    /// A pacer allowing one write per `interval` per object.
    pub fn new(interval: Duration) -> Self {
        Pacer {
            interval,
            written: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a write for `key` may go at `now` (then it counts as written at `now`), or how long
    /// until it may.
    pub fn admit(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let mut written = self.lock();
        if let Some(last) = written.get(key) {
            let since = now.saturating_duration_since(*last);
            if since < self.interval {
                return Err(self.interval - since);
            }
        }
        written.insert(key.to_owned(), now);
        Ok(())
    }

    /// Forgets `key` (its object is gone).
    pub fn forget(&self, key: &str) {
        let mut written = self.lock();
        written.remove(key);
        written.shrink_if_sparse();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PACE: Duration = Duration::from_millis(500);

    #[test]
    fn the_first_write_goes_and_the_next_waits_out_the_interval() {
        let pacer = Pacer::new(PACE);
        let t0 = Instant::now();
        assert_eq!(pacer.admit("net", t0), Ok(()));
        assert_eq!(
            pacer.admit("net", t0 + Duration::from_millis(200)),
            Err(Duration::from_millis(300))
        );
        // A refused write does not move the clock: the interval counts from the last write.
        assert_eq!(
            pacer.admit("net", t0 + Duration::from_millis(400)),
            Err(Duration::from_millis(100))
        );
        assert_eq!(pacer.admit("net", t0 + PACE), Ok(()));
        assert_eq!(
            pacer.admit("net", t0 + PACE + Duration::from_millis(1)),
            Err(PACE - Duration::from_millis(1))
        );
    }

    #[test]
    fn objects_are_paced_apart_and_forgotten_ones_start_over() {
        let pacer = Pacer::new(PACE);
        let t0 = Instant::now();
        assert_eq!(pacer.admit("a", t0), Ok(()));
        assert_eq!(pacer.admit("b", t0), Ok(()));
        assert!(pacer.admit("a", t0 + Duration::from_millis(1)).is_err());
        pacer.forget("a");
        assert_eq!(pacer.admit("a", t0 + Duration::from_millis(1)), Ok(()));
    }
}
