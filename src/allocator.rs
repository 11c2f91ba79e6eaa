//! The binary's allocator: jemalloc, whose background thread gives freed memory back to the
//! system within seconds (with glibc's malloc, `pier up` kept the high-water mark of every burst
//! of objects; see benches/memory.sh). Without the `jemalloc` feature, glibc's malloc (for heap
//! profilers such as heaptrack, which see only glibc's).
//!
//! jemalloc gives each thread a cache of freed blocks, trimmed only as that thread allocates
//! again: a runtime worker that goes idle after a burst keeps megabytes of them, which no other
//! thread can use and the background thread cannot return. So a worker that freed more than
//! [`RETURN_CACHE_AFTER_FREEING`] since it last did hands its cache back to the shared arena
//! when it parks (goes idle); a busy worker parks rarely and flushes at most once per that many
//! bytes freed.

#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Bytes a worker frees before it hands its cache back on its next park: what an idle worker
/// keeps at most (jemalloc's own cache limits allow several MiB a thread).
#[cfg(feature = "jemalloc")]
const RETURN_CACHE_AFTER_FREEING: u64 = 256 * 1024;

/// Called by each runtime worker just before it parks (tokio's `on_thread_park`).
#[cfg(feature = "jemalloc")]
pub fn on_worker_park() {
    return_cache_if_freed_enough();
}

/// Hands this thread's cache back if it freed enough since it last did; returns whether it did.
#[cfg(feature = "jemalloc")]
fn return_cache_if_freed_enough() -> bool {
    use std::cell::Cell;
    use tikv_jemalloc_ctl::thread::{ThreadLocal, deallocatedp};

    thread_local! {
        /// This thread's count of bytes freed, kept by jemalloc (looked up once per thread;
        /// none only if jemalloc was built without statistics, which it is built with: then the
        /// cache is left as jemalloc manages it).
        static FREED: Option<ThreadLocal<u64>> = deallocatedp::read().ok();
        /// That count when this thread last returned its cache.
        static FREED_AT_LAST_RETURN: Cell<u64> = const { Cell::new(0) };
    }
    let Some(freed) = FREED.with(|counter| counter.map(|counter| counter.get())) else {
        return false;
    };
    FREED_AT_LAST_RETURN.with(|last| {
        let enough = freed.saturating_sub(last.get()) >= RETURN_CACHE_AFTER_FREEING;
        if enough {
            last.set(freed);
            return_thread_cache();
        }
        enough
    })
}

/// Without jemalloc: nothing to return (glibc's per-thread arenas are its own business).
#[cfg(not(feature = "jemalloc"))]
pub fn on_worker_park() {}

/// Hands the calling thread's cache back to the arena: disabling a thread's cache flushes it
/// (jemalloc's documented `thread.tcache.enabled`), enabling it again starts an empty one.
#[cfg(feature = "jemalloc")]
fn return_thread_cache() {
    use tikv_jemalloc_ctl::{Access, AsName};

    const ENABLED: &[u8] = b"thread.tcache.enabled\0";
    // Errors leave the cache as it was: this is an optimisation, never a failure.
    if ENABLED.name().write(false).is_ok() {
        let _ = ENABLED.name().write(true);
    }
}

#[cfg(all(test, feature = "jemalloc"))]
mod tests {
    use tikv_jemalloc_ctl::{Access, AsName, epoch};

    use super::*;

    /// Bytes in all threads' caches (jemalloc's statistics, refreshed).
    fn cached_bytes() -> usize {
        epoch::advance().expect("jemalloc epoch");
        b"stats.arenas.4096.tcache_bytes\0"
            .name()
            .read()
            .expect("jemalloc statistics")
    }

    #[test]
    fn a_worker_that_freed_a_lot_hands_its_cache_back_when_it_parks() {
        std::thread::spawn(|| {
            // Blocks of the largest cached sizes, allocated and freed here: the thread's cache
            // keeps up to 20 of each, about 2 MiB in all (other tests' threads run beside this
            // one, so the check allows for some of theirs).
            let sizes = [20 << 10, 24 << 10, 28 << 10, 32 << 10];
            let blocks: Vec<Vec<u8>> = sizes
                .iter()
                .flat_map(|&size| (0..20).map(move |_| vec![1u8; size]))
                .collect();
            drop(blocks);
            let before = cached_bytes();
            assert!(return_cache_if_freed_enough(), "2 MiB freed: handed back");
            let after = cached_bytes();
            assert!(
                after + (1 << 20) <= before,
                "the thread's cache was not handed back: {before} -> {after} bytes cached"
            );
            let enabled: bool = b"thread.tcache.enabled\0"
                .name()
                .read()
                .expect("thread.tcache.enabled");
            assert!(enabled, "the thread has a cache again");
            // Little freed since: the next park leaves the (new) cache alone. (Told by the
            // return value: the cache statistics are every thread's, and other tests' threads
            // run beside this one.)
            let kept = vec![1u8; 32 << 10];
            drop(kept);
            assert!(!return_cache_if_freed_enough(), "a small cache is kept");
        })
        .join()
        .expect("test thread");
    }
}
