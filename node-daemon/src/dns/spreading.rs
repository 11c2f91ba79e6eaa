//! How many of a gateway's receive threads the kernel hands queries to: the first alone until
//! it falls behind, then all of them.
//!
//! A gateway has one UDP socket and receive thread per runtime worker (SO_REUSEPORT siblings),
//! so that every core can answer when one is not enough. But one is nearly always enough: an
//! answer from memory costs a few microseconds, and Pier's askers run on the same node, on the
//! same CPUs. Spread over two threads, a flood of queries keeps a receive thread on each CPU
//! beside an asker, and each batch comes smaller and costs more: in the DNS bench on 2 cores
//! the two threads answered 90-106k queries a second at 6.9-8.3 µs of CPU per answer when they
//! sat on different CPUs, 157-165k when they shared one, and one thread alone 170-186k at 2.9-3.3
//! µs (benches/notes/dns.md). So queries go to the first socket only, and to all of them (the
//! kernel's hash of the asker's address) only while the first thread cannot keep up: when most
//! of its receives come back full, queries are queueing. Its rate then is what one thread
//! manages; spread stays until the gateway's rate has stayed below half of that for
//! [`CALM_FOR`], or for [`RETRY_AFTER`] at most (the first thread may have fallen behind for want
//! of CPU, beside a CPU-bound neighbour, rather than for the load).

use std::time::{Duration, Instant};

/// Where the kernel sends a gateway's queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spread {
    /// To the first socket of the group.
    First,
    /// To every socket, by the kernel's hash of the asker's address and port.
    All,
}

/// The first thread's receives are judged over windows this long: a stall of a few
/// milliseconds (a neighbour's time slice) fills a few batches, not most of a window's.
pub const WINDOW: Duration = Duration::from_millis(100);

/// A window with fewer receives than this says nothing about keeping up (a trickle of queries).
const MIN_RECEIVES: u32 = 8;

/// The first thread is behind when at least this share of its receives in a window came back
/// full. In the DNS bench's flood, which one thread keeps up with, no window passed 10%;
/// beside a CPU-bound process per CPU, windows reached 67%.
const BEHIND_SHARE: f64 = 0.75;

/// Spread ends once the gateway's rate has stayed below half the rate at which the first thread
/// fell behind for this long.
pub const CALM_FOR: Duration = Duration::from_secs(1);

/// Spread ends after this long in any case; if the first thread falls behind again, it spreads
/// again within a [`WINDOW`].
pub const RETRY_AFTER: Duration = Duration::from_secs(30);

/// While queries are spread, the first thread's wait for them ends this often, so that it
/// judges the gateway's rate even when the kernel's hash sends it none.
pub const IDLE_CHECK: Duration = Duration::from_secs(1);

/// Runs in the first receive thread of a gateway, which hears of every receive it makes.
#[derive(Debug)]
pub struct SpreadWhenBehind {
    /// The current window: when it began, the receives and the full ones in it, and the count of
    /// queries taken by all threads when it began.
    window_start: Instant,
    receives: u32,
    full: u32,
    all_taken_at_start: u64,
    /// Set while spread: when it began, and the queries a second at which the first thread fell
    /// behind.
    spread_since: Option<(Instant, f64)>,
    /// While spread: since when the rate has stayed low.
    calm_since: Option<Instant>,
}

impl SpreadWhenBehind {
    /// Starts with the queries going to the first thread; `all_taken` is the count of queries
    /// the gateway's threads have taken so far.
    pub fn new(now: Instant, all_taken: u64) -> SpreadWhenBehind {
        SpreadWhenBehind {
            window_start: now,
            receives: 0,
            full: 0,
            all_taken_at_start: all_taken,
            spread_since: None,
            calm_since: None,
        }
    }

    /// After each receive of the first thread: `taken` queries came, of at most `full_batch`
    /// (none when the receive timed out), and the gateway's threads have taken `all_taken` so
    /// far. Returns where queries should go from now on when that changes.
    pub fn after_receive(
        &mut self,
        now: Instant,
        taken: usize,
        full_batch: usize,
        all_taken: u64,
    ) -> Option<Spread> {
        if taken > 0 {
            self.receives = self.receives.saturating_add(1);
            self.full = self.full.saturating_add(u32::from(taken >= full_batch));
        }
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed < WINDOW {
            return None;
        }
        #[allow(clippy::cast_precision_loss)] // query counts far below 2^52
        let rate = all_taken.saturating_sub(self.all_taken_at_start) as f64 / elapsed.as_secs_f64();
        let behind = self.receives >= MIN_RECEIVES
            && f64::from(self.full) >= BEHIND_SHARE * f64::from(self.receives);
        self.window_start = now;
        self.receives = 0;
        self.full = 0;
        self.all_taken_at_start = all_taken;
        match self.spread_since {
            None if behind => {
                self.spread_since = Some((now, rate));
                self.calm_since = None;
                Some(Spread::All)
            }
            None => None,
            Some((since, behind_at)) => {
                if rate * 2.0 < behind_at {
                    self.calm_since.get_or_insert(now);
                } else {
                    self.calm_since = None;
                }
                let calm = self
                    .calm_since
                    .is_some_and(|calm| now.saturating_duration_since(calm) >= CALM_FOR);
                (calm || now.saturating_duration_since(since) >= RETRY_AFTER).then(|| {
                    self.spread_since = None;
                    self.calm_since = None;
                    Spread::First
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BATCH: usize = 32;

    /// Feeds the first thread's receives for `length`: one every `every`, `taken` queries each,
    /// while all threads together take `rate` queries a second. Returns the changes it asked
    /// for, each with when, and the time and count at the end.
    fn feed(
        policy: &mut SpreadWhenBehind,
        start: (Instant, u64),
        length: Duration,
        every: Duration,
        taken: usize,
        rate: u64,
    ) -> (Vec<(Duration, Spread)>, (Instant, u64)) {
        let (begin, counted) = start;
        let mut changes = Vec::new();
        let mut elapsed = Duration::ZERO;
        let mut all = counted;
        while elapsed < length {
            elapsed += every;
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            {
                all = counted + (rate as f64 * elapsed.as_secs_f64()) as u64;
            }
            if let Some(change) = policy.after_receive(begin + elapsed, taken, BATCH, all) {
                changes.push((elapsed, change));
            }
        }
        (changes, (begin + elapsed, all))
    }

    #[test]
    fn a_thread_that_keeps_up_keeps_every_query() {
        let start = Instant::now();
        let mut policy = SpreadWhenBehind::new(start, 0);
        // 180,000 queries a second in batches of 20, none full.
        let (changes, _) = feed(
            &mut policy,
            (start, 0),
            Duration::from_secs(5),
            Duration::from_micros(111),
            20,
            180_000,
        );
        assert_eq!(changes, vec![]);
    }

    #[test]
    fn full_receives_spread_within_a_window_and_a_stall_does_not() {
        let start = Instant::now();
        let mut policy = SpreadWhenBehind::new(start, 0);
        // 5 ms of full batches (the backlog a stall leaves), then light ones: not behind.
        let (changes, end) = feed(
            &mut policy,
            (start, 0),
            Duration::from_millis(5),
            Duration::from_micros(50),
            BATCH,
            200_000,
        );
        assert_eq!(changes, vec![]);
        let (changes, end) = feed(
            &mut policy,
            end,
            Duration::from_millis(300),
            Duration::from_micros(100),
            10,
            100_000,
        );
        assert_eq!(changes, vec![]);
        // Every receive full: behind.
        let (changes, _) = feed(
            &mut policy,
            end,
            Duration::from_millis(250),
            Duration::from_micros(100),
            BATCH,
            320_000,
        );
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(changes[0].1, Spread::All);
        assert!(changes[0].0 <= WINDOW * 2, "{changes:?}");
    }

    #[test]
    fn a_trickle_is_never_behind() {
        let start = Instant::now();
        let mut policy = SpreadWhenBehind::new(start, 0);
        // Five receives a window, every one full (a burst each 20 ms): too few to judge.
        let (changes, _) = feed(
            &mut policy,
            (start, 0),
            Duration::from_secs(1),
            Duration::from_millis(20),
            BATCH,
            1_600,
        );
        assert_eq!(changes, vec![]);
    }

    /// Spreads a policy at 300,000 queries a second; returns the time and count then.
    fn spread_at_300k(policy: &mut SpreadWhenBehind, start: Instant) -> (Instant, u64) {
        let (changes, end) = feed(
            policy,
            (start, 0),
            WINDOW * 2,
            Duration::from_micros(100),
            BATCH,
            300_000,
        );
        assert_eq!(changes.last().map(|c| c.1), Some(Spread::All));
        end
    }

    #[test]
    fn spread_holds_under_load_and_ends_once_the_rate_falls_by_half() {
        let start = Instant::now();
        let mut policy = SpreadWhenBehind::new(start, 0);
        let end = spread_at_300k(&mut policy, start);
        // Still 200,000 a second over all threads (the first hears a share of it): spread.
        let (changes, end) = feed(
            &mut policy,
            end,
            Duration::from_secs(5),
            Duration::from_micros(200),
            16,
            200_000,
        );
        assert_eq!(changes, vec![]);
        // 100,000 a second: below half; back to the first after CALM_FOR.
        let (changes, _) = feed(
            &mut policy,
            end,
            Duration::from_secs(3),
            Duration::from_micros(200),
            8,
            100_000,
        );
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(changes[0].1, Spread::First);
        assert!(changes[0].0 >= CALM_FOR && changes[0].0 <= CALM_FOR + WINDOW * 2);
    }

    #[test]
    fn spread_is_retried_after_a_while_and_taken_again_if_still_behind() {
        let start = Instant::now();
        let mut policy = SpreadWhenBehind::new(start, 0);
        let end = spread_at_300k(&mut policy, start);
        // The first thread hears nothing (its receive times out every second): still, it
        // gathers the queries again after RETRY_AFTER.
        let (changes, end) = feed(
            &mut policy,
            end,
            RETRY_AFTER + Duration::from_secs(2),
            Duration::from_secs(1),
            0,
            300_000,
        );
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(changes[0].1, Spread::First);
        assert!(changes[0].0 >= RETRY_AFTER - Duration::from_secs(1));
        // Still behind alone: spread again.
        let (changes, _) = feed(
            &mut policy,
            end,
            WINDOW * 2,
            Duration::from_micros(100),
            BATCH,
            300_000,
        );
        assert_eq!(changes.last().map(|c| c.1), Some(Spread::All));
    }
}
