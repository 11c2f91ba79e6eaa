//! When a receive thread gives its CPU to the askers before it takes its next batch.
//!
//! Pier's DNS serves the endpoints of its own node, so its askers share its CPUs. Under load a
//! receive thread that goes straight back to `recvmmsg` after answering finds the one or two
//! queries that arrived meanwhile and answers them alone, while the askers it just woke wait
//! for that same CPU to send the rest. Giving the CPU away first lets them send, and the next
//! batch is larger: more answers share each datagram and each wakeup (measured:
//! benches/notes/dns.md). Two ways, by the thread's query rate:
//!
//! - Below [`HOT_RATE`], a `sched_yield`, which returns at once when nothing else is runnable
//!   there. A thread that is not an asker (a CPU-bound neighbour) would instead keep the CPU
//!   for a whole time slice at every yield and delay the next queries by as much, so yields
//!   that take long are watched: when they become common the thread stops yielding, and tries
//!   one again every [`PROBE_EVERY`] to see whether the neighbour has gone.
//! - At [`HOT_RATE`] and above, a [`PAUSE`]: a sleep. Any task may run meanwhile, but the
//!   sleep ends on a timer, so a neighbour gets microseconds rather than a time slice. A
//!   yield would not do there: a load generator at its limit keeps the CPU for milliseconds
//!   like a neighbour, and the guard above stops yielding just when batching pays most.

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

/// Queries per second, on one receive thread, from which it pauses rather than yields. Below
/// it queries arrive more than 50 µs apart on average, so a [`PAUSE`] would gather hardly one
/// more and only add latency; the 10,000 QPS of the latency bench (all on the first thread:
/// `spreading.rs`) stay below it.
pub const HOT_RATE: u32 = 20_000;

/// How long a hot thread sleeps before its next receive. Long enough for the askers just
/// answered to send again: in quick DNS bench runs, 20 µs gave 7.8 µs of CPU per answer where
/// 30 µs mostly gave 3.3-4.1 (benches/notes/dns.md). The timer's wakeup adds about 20 µs.
pub const PAUSE: Duration = Duration::from_micros(30);

/// Timer slack, in nanoseconds, for a thread that pauses: with the default (50 µs) a
/// [`PAUSE`] could end that much later than asked.
pub const PAUSE_TIMER_SLACK_NS: u64 = 1_000;

/// The query rate is counted over windows of at least this long: long enough that a burst
/// queued behind a neighbour's time slice (a few ms) does not look like a high rate.
const RATE_WINDOW: Duration = Duration::from_millis(10);

/// What a receive thread does before its next receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveWay {
    /// Receive at once.
    No,
    /// `sched_yield`, and report how long it took with [`GiveWayToAskers::yielded`].
    Yield,
    /// Sleep for [`PAUSE`].
    Pause,
}

/// Per receive thread: what to do before the next receive.
#[derive(Debug, Default)]
pub struct GiveWayToAskers {
    /// Moving average of the share of long yields.
    long_share: f32,
    /// Set while stopped: when the next probing yield is due.
    probe_at: Option<Instant>,
    /// The current rate window: when it started and the queries taken since.
    window: Option<(Instant, u32)>,
    /// Whether the last whole window's rate was at least [`HOT_RATE`].
    hot: bool,
}

impl GiveWayToAskers {
    /// What to do before the next receive, `taken` queries having come with the last one: a
    /// full batch means more are queued already, and they would only wait.
    pub fn before_receive(&mut self, now: Instant, taken: usize, full_batch: usize) -> GiveWay {
        self.count(now, taken);
        if taken >= full_batch {
            GiveWay::No
        } else if self.hot {
            GiveWay::Pause
        } else if self.probe_at.is_none_or(|due| now >= due) {
            GiveWay::Yield
        } else {
            GiveWay::No
        }
    }

    /// Records a yield that ended at `now` after `took`.
    pub fn yielded(&mut self, now: Instant, took: Duration) {
        let long = took > LONG_YIELD;
        if self.probe_at.is_some() {
            if long {
                self.probe_at = Some(now + PROBE_EVERY);
            } else {
                self.long_share = 0.0;
                self.probe_at = None;
            }
            return;
        }
        self.long_share += WEIGHT * (f32::from(u8::from(long)) - self.long_share);
        if self.long_share > LONG_SHARE_LIMIT {
            self.probe_at = Some(now + PROBE_EVERY);
        }
    }

    /// Counts `taken` queries into the rate window, closing it when it is long enough.
    fn count(&mut self, now: Instant, taken: usize) {
        let taken = u32::try_from(taken).unwrap_or(u32::MAX);
        let (start, queries) = self.window.get_or_insert((now, 0));
        *queries = queries.saturating_add(taken);
        let elapsed = now.saturating_duration_since(*start);
        if elapsed >= RATE_WINDOW {
            // queries / elapsed >= HOT_RATE, without dividing.
            self.hot =
                u128::from(*queries) * 1_000_000 >= u128::from(HOT_RATE) * elapsed.as_micros();
            self.window = Some((now, 0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHORT: Duration = Duration::from_micros(5);
    const LONG: Duration = Duration::from_millis(2);
    const BATCH: usize = 32;

    /// Feeds `batches` batches of `taken` queries, `every` apart from `start`; returns what the
    /// policy said after the last one and when that was.
    fn feed(
        policy: &mut GiveWayToAskers,
        start: Instant,
        batches: u32,
        every: Duration,
        taken: usize,
    ) -> (GiveWay, Instant) {
        let mut said = GiveWay::No;
        let mut now = start;
        for i in 0..batches {
            now = start + every * i;
            said = policy.before_receive(now, taken, BATCH);
            if said == GiveWay::Yield {
                policy.yielded(now, SHORT);
            }
        }
        (said, now)
    }

    #[test]
    fn short_yields_keep_it_yielding_and_a_full_batch_does_not_wait() {
        let mut policy = GiveWayToAskers::default();
        // 5,000 queries a second: one every 200 µs.
        let (said, now) = feed(
            &mut policy,
            Instant::now(),
            1000,
            Duration::from_micros(200),
            1,
        );
        assert_eq!(said, GiveWay::Yield);
        assert_eq!(policy.before_receive(now, BATCH, BATCH), GiveWay::No);
    }

    #[test]
    fn a_rare_long_yield_is_tolerated() {
        let mut policy = GiveWayToAskers::default();
        let now = Instant::now();
        for i in 0..1000 {
            assert_eq!(
                policy.before_receive(now, 1, BATCH),
                GiveWay::Yield,
                "yield {i}"
            );
            policy.yielded(now, if i % 100 == 0 { LONG } else { SHORT });
        }
    }

    #[test]
    fn a_cpu_bound_neighbour_stops_it_and_probes_find_when_it_has_gone() {
        let mut policy = GiveWayToAskers::default();
        let start = Instant::now();
        let mut long_ones = 0;
        while policy.before_receive(start, 1, BATCH) == GiveWay::Yield {
            policy.yielded(start, LONG);
            long_ones += 1;
            assert!(
                long_ones <= 8,
                "still yielding after {long_ones} long yields"
            );
        }
        assert_eq!(long_ones, 8, "eight in a row stop it");
        let halfway = start + PROBE_EVERY / 2;
        assert_eq!(policy.before_receive(halfway, 1, BATCH), GiveWay::No);

        // The probe finds the neighbour still there: stopped for another period.
        let probe = start + PROBE_EVERY;
        assert_eq!(policy.before_receive(probe, 1, BATCH), GiveWay::Yield);
        policy.yielded(probe, LONG);
        let halfway = probe + PROBE_EVERY / 2;
        assert_eq!(policy.before_receive(halfway, 1, BATCH), GiveWay::No);

        // The next finds it gone: yielding again, the history forgotten.
        let probe = probe + PROBE_EVERY;
        assert_eq!(policy.before_receive(probe, 1, BATCH), GiveWay::Yield);
        policy.yielded(probe, SHORT);
        assert_eq!(policy.before_receive(probe, 1, BATCH), GiveWay::Yield);
        policy.yielded(probe, LONG);
        assert_eq!(policy.before_receive(probe, 1, BATCH), GiveWay::Yield);
    }

    #[test]
    fn a_hot_thread_pauses_after_small_batches_only_and_stops_when_the_rate_falls() {
        let mut policy = GiveWayToAskers::default();
        let start = Instant::now();
        // 4 queries every 50 µs: 80,000 a second, for more than a window.
        let (said, now) = feed(&mut policy, start, 400, Duration::from_micros(50), 4);
        assert_eq!(said, GiveWay::Pause);
        assert_eq!(policy.before_receive(now, BATCH, BATCH), GiveWay::No);

        // Then 1 query every 200 µs (5,000 a second): yielding again after a window.
        let (said, _) = feed(&mut policy, now, 100, Duration::from_micros(200), 1);
        assert_eq!(said, GiveWay::Yield);
    }

    #[test]
    fn bursts_queued_behind_a_neighbours_time_slice_are_not_a_high_rate() {
        let mut policy = GiveWayToAskers::default();
        // 15 queries at once every 3 ms: 5,000 a second, each burst alone far above it.
        let (said, _) = feed(
            &mut policy,
            Instant::now(),
            100,
            Duration::from_millis(3),
            15,
        );
        assert_eq!(said, GiveWay::Yield);
    }

    #[test]
    fn a_hot_thread_pauses_even_where_yields_have_stopped() {
        let mut policy = GiveWayToAskers::default();
        let start = Instant::now();
        while policy.before_receive(start, 1, BATCH) == GiveWay::Yield {
            policy.yielded(start, LONG);
        }
        // A pause ends on a timer: a neighbour cannot keep the CPU for a time slice.
        let (said, _) = feed(&mut policy, start, 400, Duration::from_micros(50), 4);
        assert_eq!(said, GiveWay::Pause);
    }
}
