//! Per-object retry delays: exponential with jitter (backon's, the crate kube's own watchers use),
//! reset when the object reconciles. Jitter keeps objects that failed together (an API outage)
//! from all retrying in the same instant.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

type Delays = <ExponentialBuilder as BackoffBuilder>::Backoff;

/// The first retry delay of a controller that sets none.
pub const DEFAULT_MIN: Duration = Duration::from_millis(100);
/// The longest retry delay (before jitter) of a controller that sets none.
pub const DEFAULT_MAX: Duration = Duration::from_secs(60);

/// The retry delays of every object that is failing, by key.
#[derive(Debug)]
pub struct Backoff {
    builder: ExponentialBuilder,
    max: Duration,
    failing: Mutex<HashMap<String, Delays>>,
}

impl Backoff {
    /// Delays that start at `min` and double per consecutive failure up to `max`; jitter adds up
    /// to as much again to each (so a delay is in `[d, 2d)` of the unjittered `d`).
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            builder: ExponentialBuilder::new()
                .with_min_delay(min)
                .with_max_delay(max.max(min))
                .with_factor(2.0)
                .without_max_times()
                .with_jitter(),
            max: max.max(min),
            failing: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a failure of `key` and returns how long to wait before retrying it.
    pub fn next(&self, key: &str) -> Duration {
        let mut failing = self.failing.lock().unwrap_or_else(PoisonError::into_inner);
        let delays = failing
            .entry(key.to_owned())
            .or_insert_with(|| self.builder.build());
        // Without a limit on attempts the iterator never ends; the cap if it did.
        delays.next().unwrap_or(self.max)
    }

    /// Whether `key` failed and has not reconciled since.
    pub fn is_failing(&self, key: &str) -> bool {
        self.failing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(key)
    }

    /// Forgets `key`'s failures (it reconciled).
    pub fn reset(&self, key: &str) {
        self.failing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_is_failing_from_its_first_failure_until_it_reconciles() {
        let backoff = Backoff::new(DEFAULT_MIN, DEFAULT_MAX);
        assert!(!backoff.is_failing("default/a"));
        backoff.next("default/a");
        assert!(backoff.is_failing("default/a"));
        assert!(!backoff.is_failing("default/b"));
        backoff.reset("default/a");
        assert!(!backoff.is_failing("default/a"));
    }

    #[test]
    fn doubles_with_jitter_within_bounds_then_caps() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(5));
        let backoff = Backoff::new(min, max);
        for round in 0..20 {
            let key = format!("default/ep{round}");
            for failure in 0u32..12 {
                let base = min.saturating_mul(1 << failure).min(max);
                let delay = backoff.next(&key);
                assert!(
                    delay >= base && delay < base * 2,
                    "failure {failure}: {delay:?} not in [{base:?}, {:?})",
                    base * 2
                );
            }
        }
    }

    #[test]
    fn jitter_spreads_objects_that_failed_together() {
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(60));
        let delays: std::collections::BTreeSet<Duration> = (0..20)
            .map(|i| backoff.next(&format!("ns/obj{i}")))
            .collect();
        assert!(delays.len() > 1, "20 first delays all equal: {delays:?}");
    }

    #[test]
    fn reset_starts_over_and_keys_are_independent() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(60));
        let backoff = Backoff::new(min, max);
        for _ in 0..5 {
            backoff.next("a");
        }
        let b = backoff.next("b");
        assert!(b >= min && b < min * 2, "{b:?}");
        backoff.reset("a");
        let a = backoff.next("a");
        assert!(a >= min && a < min * 2, "{a:?}");
    }
}
