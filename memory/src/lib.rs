//! Long-lived collections give back what a burst made them grow.
//!
//! Rust's maps and queues keep their largest capacity after their entries go. Pier's indexes
//! (the API server's history and pending writes, the operator's allocations, the node agent's
//! endpoint index) live as long as the process: after 2,000 Endpoints come and go, each would
//! keep tables sized for 2,000 for good (issue 19: about 1.5 MB over all of them, 500 created
//! and deleted). [`ShrinkIfSparse::shrink_if_sparse`], called after removals, gives a table
//! back once at most a quarter of it is used, keeping room for twice its entries, so a
//! collection of steady size does not shrink and regrow as entries come and go.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, Hash};

/// Tables up to this capacity are kept whatever their use: not worth a reallocation.
pub const MIN_CAPACITY: usize = 64;

/// A table is sparse when its entries use less than one part in this many of its capacity.
const SPARSE_BELOW_ONE_IN: usize = 4;

/// Whether a table of `capacity` holding `len` entries should give capacity back.
pub fn is_sparse(len: usize, capacity: usize) -> bool {
    capacity > MIN_CAPACITY && len.saturating_mul(SPARSE_BELOW_ONE_IN) < capacity
}

/// The capacity a sparse table keeps: room for twice its entries.
fn kept_capacity(len: usize) -> usize {
    len.saturating_mul(2)
}

/// Collections that can give back capacity they no longer use.
pub trait ShrinkIfSparse {
    /// Gives back capacity when the collection is sparse (see [`is_sparse`]); cheap otherwise.
    fn shrink_if_sparse(&mut self);
}

impl<K: Eq + Hash, V, S: BuildHasher> ShrinkIfSparse for HashMap<K, V, S> {
    fn shrink_if_sparse(&mut self) {
        if is_sparse(self.len(), self.capacity()) {
            self.shrink_to(kept_capacity(self.len()));
        }
    }
}

impl<T: Eq + Hash, S: BuildHasher> ShrinkIfSparse for HashSet<T, S> {
    fn shrink_if_sparse(&mut self) {
        if is_sparse(self.len(), self.capacity()) {
            self.shrink_to(kept_capacity(self.len()));
        }
    }
}

impl<T> ShrinkIfSparse for VecDeque<T> {
    fn shrink_if_sparse(&mut self) {
        if is_sparse(self.len(), self.capacity()) {
            self.shrink_to(kept_capacity(self.len()));
        }
    }
}

impl<T> ShrinkIfSparse for Vec<T> {
    fn shrink_if_sparse(&mut self) {
        if is_sparse(self.len(), self.capacity()) {
            self.shrink_to(kept_capacity(self.len()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_a_burst_grew_gives_its_table_back_once_mostly_empty() {
        let mut map: HashMap<u32, u32> = (0..2_000).map(|i| (i, i)).collect();
        let grown = map.capacity();
        for i in 100..2_000 {
            map.remove(&i);
            map.shrink_if_sparse();
        }
        assert_eq!(map.len(), 100);
        assert!(map.capacity() <= 512, "{} of {grown}", map.capacity());
        assert!(map.capacity() >= 100);
        assert!((0..100).all(|i| map.get(&i) == Some(&i)));
    }

    #[test]
    fn a_steady_collection_keeps_its_capacity() {
        let mut queue: VecDeque<u32> = (0..1_000).collect();
        let capacity = queue.capacity();
        // Entries come and go at a steady size: no reallocation.
        for i in 1_000..5_000 {
            queue.pop_front();
            queue.shrink_if_sparse();
            queue.push_back(i);
        }
        assert_eq!(queue.capacity(), capacity);
    }

    #[test]
    fn small_tables_are_left_alone() {
        let mut set: HashSet<u32> = (0..MIN_CAPACITY as u32 / 2).collect();
        let capacity = set.capacity();
        set.clear();
        set.shrink_if_sparse();
        assert_eq!(set.capacity(), capacity);
        let mut vec: Vec<u32> = Vec::with_capacity(1_000);
        vec.push(1);
        vec.shrink_if_sparse();
        assert!(vec.capacity() < 1_000 && vec.capacity() >= 2);
    }

    #[test]
    fn sparse_means_under_a_quarter_used_above_the_floor() {
        assert!(!is_sparse(0, MIN_CAPACITY));
        assert!(is_sparse(0, MIN_CAPACITY + 1));
        assert!(!is_sparse(256, 1_024));
        assert!(is_sparse(255, 1_024));
    }
}
