//! When a receive thread lets the askers run before it takes its next batch.
//!
//! Pier's DNS serves the endpoints of its own node, so its askers share its CPUs. Under load a
//! receive thread that goes straight back to `recvmmsg` after answering finds the one or two
//! queries that arrived meanwhile and answers them alone, while the askers it just woke wait
//! for that same CPU to send the rest; yielding the CPU first (`sched_yield`, which returns at
//! once when nothing else is runnable there) lets them send, and the next batch is larger:
//! more answers share each datagram and each wakeup (measured: benches/notes/dns.md). A thread
//! that is not an asker (a CPU-bound neighbour) would instead keep the CPU for a whole time
//! slice at every yield and delay the next queries by as much, so yields that take long are
//! watched: when they become common the thread stops yielding, and tries one again every
//! [`PROBE_EVERY`] to see whether the neighbour has gone.

use std::time::{Duration, Instant};

/// A yield that gave the CPU away this long was most likely not a burst of queries being sent:
/// an asker sends its burst in tens of microseconds, a CPU-bound task keeps a whole time slice
/// (0.75 ms or more). Not always: see [`PROBE_EVERY`].
pub const LONG_YIELD: Duration = Duration::from_micros(500);

/// Share of long yields (moving average) above which the thread stops yielding.
const LONG_SHARE_LIMIT: f32 = 0.2;

/// Weight of the latest yield in the moving average: eight long yields in a row stop it (a
/// few milliseconds of delay when a neighbour is CPU-bound), the odd long one does not.
const WEIGHT: f32 = 1.0 / 32.0;

/// While stopped, one yield this often finds out whether the neighbour is still there. An
/// asker can look like a neighbour for a while (a load generator at its limit keeps the CPU
/// for milliseconds), which argues for probing often; but each probe that finds the CPU free
/// restarts yielding, and beside truly CPU-bound neighbours probing every 50 ms let their
/// time slices in often enough to raise the p50 at 10,000 QPS from about 100 µs to 820 µs in
/// one run of three (benches/notes/dns.md).
pub const PROBE_EVERY: Duration = Duration::from_millis(500);

/// Per receive thread: whether to yield before the next receive.
#[derive(Debug, Default)]
pub struct YieldToAskers {
    /// Moving average of the share of long yields.
    long_share: f32,
    /// Set while stopped: when the next probing yield is due.
    probe_at: Option<Instant>,
}

impl YieldToAskers {
    /// Whether to yield before the next receive, `taken` queries having come with the last
    /// one: a full batch means more are queued already, and they would only wait.
    pub fn should_yield(&self, now: Instant, taken: usize, full_batch: usize) -> bool {
        taken < full_batch && self.probe_at.is_none_or(|due| now >= due)
    }

    /// Records a yield that ended at `now` after `took`.
    pub fn yielded(&mut self, now: Instant, took: Duration) {
        let long = took > LONG_YIELD;
        if self.probe_at.is_some() {
            if long {
                self.probe_at = Some(now + PROBE_EVERY);
            } else {
                *self = YieldToAskers::default();
            }
            return;
        }
        self.long_share += WEIGHT * (f32::from(u8::from(long)) - self.long_share);
        if self.long_share > LONG_SHARE_LIMIT {
            self.probe_at = Some(now + PROBE_EVERY);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHORT: Duration = Duration::from_micros(5);
    const LONG: Duration = Duration::from_millis(2);
    const BATCH: usize = 32;

    #[test]
    fn short_yields_keep_it_yielding_and_a_full_batch_does_not_wait() {
        let mut policy = YieldToAskers::default();
        let now = Instant::now();
        for _ in 0..1000 {
            assert!(policy.should_yield(now, 3, BATCH));
            policy.yielded(now, SHORT);
        }
        assert!(!policy.should_yield(now, BATCH, BATCH));
    }

    #[test]
    fn a_rare_long_yield_is_tolerated() {
        let mut policy = YieldToAskers::default();
        let now = Instant::now();
        for i in 0..1000 {
            policy.yielded(now, if i % 100 == 0 { LONG } else { SHORT });
            assert!(policy.should_yield(now, 1, BATCH), "yield {i}");
        }
    }

    #[test]
    fn a_cpu_bound_neighbour_stops_it_and_probes_find_when_it_has_gone() {
        let mut policy = YieldToAskers::default();
        let start = Instant::now();
        let mut long_ones = 0;
        while policy.should_yield(start, 1, BATCH) {
            policy.yielded(start, LONG);
            long_ones += 1;
            assert!(
                long_ones <= 8,
                "still yielding after {long_ones} long yields"
            );
        }
        assert_eq!(long_ones, 8, "eight in a row stop it");
        assert!(!policy.should_yield(start + PROBE_EVERY / 2, 1, BATCH));

        // The probe finds the neighbour still there: stopped for another period.
        let probe = start + PROBE_EVERY;
        assert!(policy.should_yield(probe, 1, BATCH));
        policy.yielded(probe, LONG);
        assert!(!policy.should_yield(probe + PROBE_EVERY / 2, 1, BATCH));

        // The next finds it gone: yielding again, the history forgotten.
        let probe = probe + PROBE_EVERY;
        assert!(policy.should_yield(probe, 1, BATCH));
        policy.yielded(probe, SHORT);
        assert!(policy.should_yield(probe, 1, BATCH));
        policy.yielded(probe, LONG);
        assert!(policy.should_yield(probe, 1, BATCH));
    }
}
