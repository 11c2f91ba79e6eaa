//! Requests made at about the same time, served by one piece of work: how the detaches of many
//! Endpoints deleted at once become one removal (see [`super::removal`]), and the attaches of
//! Endpoints created at once share applies (see [`super::arrival`]).
//!
//! Callers [`Batcher::submit`] a request and wait for its answer; one loop ([`Batches::run`])
//! takes the first request waiting and then every request that follows within a short quiet gap
//! of the one before (for at most a longest wait), runs the work once for all of them and gives
//! every caller the same answer. While the work runs, new requests queue for the next batch, so
//! batches grow by themselves when requests come faster than the work is done; the gap keeps a
//! burst that is still arriving together instead of cutting it into a large batch and a small
//! one, each paying the work's fixed cost; a lone request waits only the gap. Other work that
//! should not fall into a burst of requests waits for the batcher to be idle ([`Batcher::idle`]).
//! Pure async logic: no kube, no netlink.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

/// The loop serving a [`Batcher`] stopped before answering (the agent is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the batch loop stopped before answering")]
pub struct BatchStopped;

/// One request and where its answer goes.
struct Waiting<R, O> {
    request: R,
    answer: oneshot::Sender<O>,
}

/// Where requests are submitted; cheap to clone.
pub struct Batcher<R, O> {
    queue: mpsc::UnboundedSender<Waiting<R, O>>,
    activity: Arc<Activity>,
}

impl<R, O> Clone for Batcher<R, O> {
    fn clone(&self) -> Self {
        Batcher {
            queue: self.queue.clone(),
            activity: Arc::clone(&self.activity),
        }
    }
}

/// Requests submitted through every clone of a batcher: so far, and those not answered yet.
#[derive(Debug, Default)]
struct Activity {
    submitted: AtomicU64,
    unanswered: AtomicU64,
}

/// Counts a request as unanswered until dropped (answered, or its caller gave up).
struct Unanswered<'a>(&'a Activity);

impl<'a> Unanswered<'a> {
    fn count(activity: &'a Activity) -> Self {
        activity.submitted.fetch_add(1, Ordering::Relaxed);
        activity.unanswered.fetch_add(1, Ordering::Relaxed);
        Unanswered(activity)
    }
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        self.0.unanswered.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<R, O> std::fmt::Debug for Batcher<R, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").finish_non_exhaustive()
    }
}

/// How long a batch waits for more requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Linger {
    /// A batch closes when no request came for this long.
    pub quiet: Duration,
    /// ... or this long after its first request.
    pub longest: Duration,
}

/// The loop's side: the queue of waiting requests.
pub struct Batches<R, O> {
    queue: mpsc::UnboundedReceiver<Waiting<R, O>>,
    linger: Linger,
}

impl<R, O> std::fmt::Debug for Batches<R, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batches")
            .field("linger", &self.linger)
            .finish_non_exhaustive()
    }
}

impl<R, O> Batcher<R, O> {
    /// A batcher and its loop's queue; a batch waits for more requests as `linger` says.
    pub fn new(linger: Linger) -> (Batcher<R, O>, Batches<R, O>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        (
            Batcher {
                queue: sender,
                activity: Arc::default(),
            },
            Batches {
                queue: receiver,
                linger,
            },
        )
    }

    /// Submits `request` and waits for the answer of the batch it joined.
    pub async fn submit(&self, request: R) -> Result<O, BatchStopped> {
        let _unanswered = Unanswered::count(&self.activity);
        let (answer, answered) = oneshot::channel();
        self.queue
            .send(Waiting { request, answer })
            .map_err(|_| BatchStopped)?;
        answered.await.map_err(|_| BatchStopped)
    }

    /// Waits until the batcher has been idle for `quiet` (no request submitted meanwhile, none
    /// waiting for its answer), or for `longest` at most: for work that should not fall into a
    /// burst of requests but must not wait for a steady stream of them to end.
    pub async fn idle(&self, quiet: Duration, longest: Duration) {
        let give_up = tokio::time::Instant::now() + longest;
        let mut submitted = self.activity.submitted.load(Ordering::Relaxed);
        loop {
            let now = tokio::time::Instant::now();
            if now >= give_up {
                return;
            }
            tokio::time::sleep_until((now + quiet).min(give_up)).await;
            let latest = self.activity.submitted.load(Ordering::Relaxed);
            if latest == submitted && self.activity.unanswered.load(Ordering::Relaxed) == 0 {
                return;
            }
            submitted = latest;
        }
    }
}

impl<R, O: Clone> Batches<R, O> {
    /// Serves batches with `work` until every [`Batcher`] is dropped. Every request of a batch
    /// gets the batch's answer; a caller that stopped waiting is skipped.
    pub async fn run<F, Fut>(mut self, mut work: F)
    where
        F: FnMut(Vec<R>) -> Fut,
        Fut: Future<Output = O>,
    {
        while let Some(batch) = self.next().await {
            let (requests, answers): (Vec<R>, Vec<oneshot::Sender<O>>) = batch
                .into_iter()
                .map(|waiting| (waiting.request, waiting.answer))
                .unzip();
            let answer = work(requests).await;
            for waiting in answers {
                let _ = waiting.send(answer.clone());
            }
        }
    }

    /// The next batch: the first request, then each one that follows within the quiet gap of
    /// the one before (until the longest wait is up), and those queued by then. `None` once
    /// every batcher is gone.
    async fn next(&mut self) -> Option<Vec<Waiting<R, O>>> {
        let first = self.queue.recv().await?;
        let mut batch = vec![first];
        let last = tokio::time::Instant::now() + self.linger.longest;
        loop {
            let until = (tokio::time::Instant::now() + self.linger.quiet).min(last);
            match tokio::time::timeout_at(until, self.queue.recv()).await {
                Ok(Some(waiting)) => batch.push(waiting),
                Ok(None) | Err(_) => break,
            }
        }
        while let Ok(waiting) = self.queue.try_recv() {
            batch.push(waiting);
        }
        Some(batch)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    fn gap(quiet_ms: u64, longest_ms: u64) -> Linger {
        Linger {
            quiet: Duration::from_millis(quiet_ms),
            longest: Duration::from_millis(longest_ms),
        }
    }

    /// A batcher, its loop's task, and the batches it served.
    type Summing = (
        Batcher<u32, Result<u32, String>>,
        tokio::task::JoinHandle<()>,
        Arc<Mutex<Vec<Vec<u32>>>>,
    );

    /// A loop whose work records each batch's requests and answers with their sum, or fails
    /// when the batch holds 0.
    fn summing(linger: Linger, work_time: Duration) -> Summing {
        let (batcher, batches) = Batcher::new(linger);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&seen);
        let task = tokio::spawn(batches.run(move |requests: Vec<u32>| {
            let recorded = Arc::clone(&recorded);
            async move {
                tokio::time::sleep(work_time).await;
                recorded.lock().expect("lock").push(requests.clone());
                if requests.contains(&0) {
                    Err(format!("batch of {} failed", requests.len()))
                } else {
                    Ok(requests.iter().sum())
                }
            }
        }));
        (batcher, task, seen)
    }

    #[tokio::test]
    async fn requests_made_together_are_served_by_one_piece_of_work() {
        let (batcher, _task, seen) = summing(gap(20, 1000), Duration::ZERO);
        let answers = futures::future::join_all((1..=50).map(|n| {
            let batcher = batcher.clone();
            async move { batcher.submit(n).await }
        }))
        .await;
        let total: u32 = (1..=50).sum();
        for answer in answers {
            assert_eq!(answer.expect("answered"), Ok(total));
        }
        assert_eq!(seen.lock().expect("lock").len(), 1);
    }

    #[tokio::test]
    async fn requests_arriving_while_work_runs_form_the_next_batch() {
        let (batcher, _task, seen) = summing(gap(0, 0), Duration::from_millis(100));
        let first = tokio::spawn({
            let batcher = batcher.clone();
            async move { batcher.submit(1).await }
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        let later = futures::future::join_all((2..=10).map(|n| {
            let batcher = batcher.clone();
            async move { batcher.submit(n).await }
        }))
        .await;
        assert_eq!(first.await.expect("joined").expect("answered"), Ok(1));
        for answer in later {
            assert_eq!(answer.expect("answered"), Ok((2..=10).sum()));
        }
        let seen = seen.lock().expect("lock").clone();
        assert_eq!(seen, vec![vec![1], (2..=10).collect::<Vec<_>>()]);
    }

    #[tokio::test]
    async fn a_burst_still_arriving_stays_one_batch_until_a_quiet_gap_or_the_longest_wait() {
        /// Ten requests, one every `every` ms.
        async fn burst(batcher: &Batcher<u32, Result<u32, String>>, every: u64) {
            let requests = (1..=10).map(|n| {
                let batcher = batcher.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(every * u64::from(n))).await;
                    batcher.submit(n).await
                })
            });
            for answer in futures::future::join_all(requests).await {
                assert!(answer.expect("joined").expect("answered").is_ok());
            }
        }
        // Never 200 ms quiet: one batch.
        let (batcher, _task, seen) = summing(gap(200, 5000), Duration::ZERO);
        burst(&batcher, 10).await;
        assert_eq!(
            *seen.lock().expect("lock"),
            vec![(1..=10).collect::<Vec<_>>()]
        );
        // The same spread over 180 ms with a longest wait of 35 ms: cut into several.
        let (batcher, _task, seen) = summing(gap(200, 35), Duration::ZERO);
        burst(&batcher, 20).await;
        let batches = seen.lock().expect("lock").len();
        assert!((2..10).contains(&batches), "{batches} batches");
    }

    #[tokio::test]
    async fn a_failed_batch_answers_every_request_in_it_and_the_next_batch_still_runs() {
        let (batcher, _task, _seen) = summing(gap(20, 1000), Duration::ZERO);
        let answers = futures::future::join_all([0, 1, 2].map(|n| batcher.submit(n))).await;
        for answer in answers {
            assert_eq!(
                answer.expect("answered"),
                Err("batch of 3 failed".to_owned())
            );
        }
        assert_eq!(batcher.submit(5).await.expect("answered"), Ok(5));
    }

    #[tokio::test]
    async fn a_stopped_loop_is_an_error_for_those_waiting_and_those_to_come() {
        let (batcher, task, _seen) = summing(gap(0, 0), Duration::from_secs(3600));
        let waiting = tokio::spawn({
            let batcher = batcher.clone();
            async move { batcher.submit(1).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        task.abort();
        assert!(waiting.await.expect("joined").is_err());
        assert!(batcher.submit(2).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn idle_waits_out_a_burst_and_what_it_left_unanswered_but_not_a_steady_stream() {
        let quiet = Duration::from_millis(200);
        let started = tokio::time::Instant::now();
        let waited = || started.elapsed();

        // Nothing going on: one quiet gap.
        let (batcher, _task, _seen) = summing(gap(0, 0), Duration::from_millis(300));
        batcher.idle(quiet, Duration::from_secs(10)).await;
        assert_eq!(waited(), quiet);

        // A request every 50 ms for one second, each batch's work taking 300 ms: idle once the
        // last is answered and a gap has passed.
        let started = tokio::time::Instant::now();
        let burst = tokio::spawn({
            let batcher = batcher.clone();
            async move {
                for n in 1..=20 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let batcher = batcher.clone();
                    tokio::spawn(async move { batcher.submit(n).await });
                }
            }
        });
        batcher.idle(quiet, Duration::from_secs(10)).await;
        let after = started.elapsed();
        assert!(
            after >= Duration::from_millis(1000 + 300) + quiet / 2,
            "idle {after:?} into the burst"
        );
        assert!(
            after <= Duration::from_millis(1000 + 300) + quiet * 3,
            "{after:?}"
        );
        burst.await.expect("joined");

        // A steady stream: no gap ever, so the longest wait.
        let (batcher, _task, _seen) = summing(gap(0, 0), Duration::ZERO);
        let stream = tokio::spawn({
            let batcher = batcher.clone();
            async move {
                for n in 1.. {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let _ = batcher.submit(n).await;
                }
            }
        });
        let started = tokio::time::Instant::now();
        batcher.idle(quiet, Duration::from_secs(3)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        stream.abort();
    }

    #[tokio::test]
    async fn the_loop_ends_when_every_batcher_is_gone() {
        let (batcher, task, _seen) = summing(gap(0, 0), Duration::ZERO);
        assert_eq!(batcher.submit(3).await.expect("answered"), Ok(3));
        drop(batcher);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the loop ended")
            .expect("joined");
    }
}
