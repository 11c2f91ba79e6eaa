//! A cheap hasher for small integer keys (address offsets, port numbers).
//!
//! The maps from address offset to owner (and from port to holders) are on the allocation path;
//! with std's SipHash they cost more than the bitmap search itself. Their keys are integers the
//! operator computes, not attacker-chosen strings, so a multiplicative hash (Fibonacci hashing)
//! is both safe and several times cheaper.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Fibonacci hashing: multiply by 2^64 / φ, which spreads consecutive keys over all bits.
#[derive(Debug, Default, Clone, Copy)]
pub struct IntHasher(u64);

const PHI: u64 = 0x9E37_79B9_7F4A_7C15;

impl Hasher for IntHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(PHI);
        }
    }

    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(PHI);
    }
}

/// A `HashMap` keyed by small integers, hashed with [`IntHasher`].
pub type IntMap<K, V> = HashMap<K, V, BuildHasherDefault<IntHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn works_as_a_map() {
        let mut m: IntMap<u32, u32> = IntMap::default();
        for i in 0..10_000 {
            m.insert(i, i * 2);
        }
        assert!((0..10_000).all(|i| m.get(&i) == Some(&(i * 2))));
        assert_eq!(m.len(), 10_000);
    }

    #[test]
    fn consecutive_keys_differ_in_high_bits() {
        let hash = |n: u32| {
            let mut h = IntHasher::default();
            h.write_u32(n);
            h.finish() >> 57
        };
        let tops: std::collections::HashSet<u64> = (0..64).map(hash).collect();
        assert!(tops.len() > 32, "{tops:?}");
    }
}
