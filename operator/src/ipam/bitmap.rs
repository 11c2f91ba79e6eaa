//! A fixed-size bitmap with a next-free cursor, shared by address and host-port allocation.
//!
//! Both allocators need the same thing: "give me a free slot in `[lo, hi)`, quickly, and hand
//! released slots out again later". Docker's `bitseq` answers that with a cursor that continues
//! after the last allocation and wraps around; this type does the same, so that
//!
//! * filling a pool in order costs O(1) per allocation (the cursor always points at the next slot);
//! * a released slot is not handed out again at once (which would make a just-deleted endpoint's
//!   address reappear on a new one while caches and conntrack entries still remember it), but is
//!   reused when the cursor comes round;
//! * finding the next free slot skips 64 taken slots per word compare, and a second-level summary
//!   (one bit per *full* word) skips 4,096 taken slots per compare, so even the worst case (one free
//!   slot right behind the cursor in a full /16) is a handful of word operations.

/// Bits per word.
const W: u32 = 64;

/// A bitmap of `len` bits (set = taken) with a next-free cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitmap {
    /// The bits; bits at and past `len` in the last word are kept set so that "word is full"
    /// needs no special case for the tail.
    words: Vec<u64>,
    /// Bit `j` is set iff `words[j] == u64::MAX`.
    full: Vec<u64>,
    /// Number of bits.
    len: u32,
    /// Number of set bits below `len`.
    ones: u32,
    /// Where the next search starts (Docker's `curr`): one past the last bit handed out.
    cursor: u32,
}

impl Bitmap {
    /// An empty bitmap of `len` bits (all clear), cursor at 0.
    pub fn new(len: u32) -> Self {
        let nwords = len.div_ceil(W) as usize;
        let mut words = vec![0u64; nwords];
        let tail = len % W;
        if tail != 0
            && let Some(last) = words.last_mut()
        {
            *last = u64::MAX << tail;
        }
        let mut full = vec![0u64; nwords.div_ceil(W as usize)];
        for (j, word) in words.iter().enumerate() {
            if *word == u64::MAX {
                full[j / W as usize] |= 1 << (j % W as usize);
            }
        }
        Self {
            words,
            full,
            len,
            ones: 0,
            cursor: 0,
        }
    }

    /// Number of bits.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// True for a bitmap of zero bits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of set bits.
    pub fn count_ones(&self) -> u32 {
        self.ones
    }

    /// Where the next free-slot search starts.
    pub fn cursor(&self) -> u32 {
        self.cursor
    }

    /// Whether bit `i` is set; bits out of range read as set (they can never be handed out).
    pub fn is_set(&self, i: u32) -> bool {
        if i >= self.len {
            return true;
        }
        self.words[(i / W) as usize] & (1 << (i % W)) != 0
    }

    /// Sets bit `i`; returns true if it was clear (false if already set or out of range).
    pub fn set(&mut self, i: u32) -> bool {
        if i >= self.len {
            return false;
        }
        let w = (i / W) as usize;
        let mask = 1u64 << (i % W);
        if self.words[w] & mask != 0 {
            return false;
        }
        self.words[w] |= mask;
        self.ones += 1;
        if self.words[w] == u64::MAX {
            self.full[w / W as usize] |= 1 << (w % W as usize);
        }
        true
    }

    /// Clears bit `i`; returns true if it was set (false if already clear or out of range).
    pub fn clear(&mut self, i: u32) -> bool {
        if i >= self.len {
            return false;
        }
        let w = (i / W) as usize;
        let mask = 1u64 << (i % W);
        if self.words[w] & mask == 0 {
            return false;
        }
        self.words[w] &= !mask;
        self.ones -= 1;
        self.full[w / W as usize] &= !(1 << (w % W as usize));
        true
    }

    /// Number of clear bits in `[lo, hi)` (clamped to the bitmap). O(words in range).
    pub fn count_clear_in(&self, lo: u32, hi: u32) -> u32 {
        let hi = hi.min(self.len);
        let mut free = 0;
        let mut i = lo;
        while i < hi {
            let w = (i / W) as usize;
            let start = i % W;
            let end = (hi - (i - start)).min(W);
            free += (!self.words[w] & span_mask(start, end)).count_ones();
            i = i - start + W;
        }
        free
    }

    /// First clear bit in `[lo, hi)`, if any, without changing anything.
    pub fn first_clear_in(&self, lo: u32, hi: u32) -> Option<u32> {
        let hi = hi.min(self.len);
        if lo >= hi {
            return None;
        }
        let last_word = (hi - 1) / W;
        let mut w = lo / W;
        loop {
            let mut free = !self.words[w as usize];
            if w == lo / W {
                free &= u64::MAX << (lo % W);
            }
            if w == last_word {
                free &= span_mask(0, hi - w * W);
            }
            if free != 0 {
                return Some(w * W + free.trailing_zeros());
            }
            if w >= last_word {
                return None;
            }
            w = self.next_non_full_word(w + 1, last_word)?;
        }
    }

    /// Index of the first word in `[from, last]` that has a clear bit, using the summary.
    fn next_non_full_word(&self, from: u32, last: u32) -> Option<u32> {
        let mut s = from / W;
        let mut mask = u64::MAX << (from % W);
        while s * W <= last {
            let candidates = !self.full[s as usize] & mask;
            if candidates != 0 {
                let w = s * W + candidates.trailing_zeros();
                return (w <= last).then_some(w);
            }
            s += 1;
            mask = u64::MAX;
        }
        None
    }

    /// Takes the next clear bit in `[lo, hi)` at or after the cursor, wrapping round to `lo`,
    /// and moves the cursor past it. `None` when every bit in the range is set.
    pub fn set_next_clear(&mut self, lo: u32, hi: u32) -> Option<u32> {
        let hi = hi.min(self.len);
        if lo >= hi {
            return None;
        }
        let start = if (lo..hi).contains(&self.cursor) {
            self.cursor
        } else {
            lo
        };
        let found = self
            .first_clear_in(start, hi)
            .or_else(|| self.first_clear_in(lo, start))?;
        self.set(found);
        self.cursor = found + 1;
        Some(found)
    }
}

/// Mask of bits `[start, end)` within one word (`end <= 64`).
fn span_mask(start: u32, end: u32) -> u64 {
    if start >= end {
        return 0;
    }
    let upper = if end >= W {
        u64::MAX
    } else {
        (1u64 << end) - 1
    };
    upper & (u64::MAX << start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn fills_in_order_and_reports_full() {
        let mut b = Bitmap::new(130);
        for i in 0..130 {
            assert_eq!(b.set_next_clear(0, 130), Some(i));
        }
        assert_eq!(b.set_next_clear(0, 130), None);
        assert_eq!(b.count_ones(), 130);
    }

    #[test]
    fn cursor_continues_then_wraps_to_released() {
        let mut b = Bitmap::new(10);
        for _ in 0..5 {
            b.set_next_clear(0, 10);
        }
        assert!(b.clear(1));
        // The cursor continues after 4 rather than reusing 1 at once.
        assert_eq!(b.set_next_clear(0, 10), Some(5));
        for i in 6..10 {
            assert_eq!(b.set_next_clear(0, 10), Some(i));
        }
        // Wraps round and finds the released bit.
        assert_eq!(b.set_next_clear(0, 10), Some(1));
        assert_eq!(b.set_next_clear(0, 10), None);
    }

    #[test]
    fn respects_sub_range() {
        let mut b = Bitmap::new(1000);
        assert_eq!(b.set_next_clear(200, 203), Some(200));
        assert_eq!(b.set_next_clear(200, 203), Some(201));
        assert_eq!(b.set_next_clear(200, 203), Some(202));
        assert_eq!(b.set_next_clear(200, 203), None);
        assert_eq!(b.count_clear_in(0, 1000), 997);
        assert_eq!(b.count_clear_in(199, 204), 2);
    }

    #[test]
    fn out_of_range_bits_read_as_set() {
        let mut b = Bitmap::new(3);
        assert!(b.is_set(3));
        assert!(!b.set(3));
        assert!(!b.clear(3));
        assert_eq!(b.set_next_clear(0, 100), Some(0));
    }

    #[test]
    fn skips_many_full_words_via_summary() {
        let len = 1 << 16;
        let mut b = Bitmap::new(len);
        for i in 0..len {
            b.set(i);
        }
        b.clear(len - 3);
        assert_eq!(b.first_clear_in(0, len), Some(len - 3));
        assert_eq!(b.set_next_clear(0, len), Some(len - 3));
        assert_eq!(b.set_next_clear(0, len), None);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Take,
        Set(u32),
        Clear(u32),
    }

    fn op(len: u32) -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Take),
            1 => (0..len).prop_map(Op::Set),
            2 => (0..len).prop_map(Op::Clear),
        ]
    }

    proptest! {
        /// The bitmap agrees with a set model, and `set_next_clear` only ever returns free bits
        /// within the range; it returns `None` only when the range is really full.
        #[test]
        fn agrees_with_model(len in 1u32..300, lo_frac in 0u32..100, ops in proptest::collection::vec(op(300), 0..400)) {
            let lo = lo_frac * len / 200; // lower half
            let hi = len;
            let mut b = Bitmap::new(len);
            let mut model = BTreeSet::new();
            for op in ops {
                match op {
                    Op::Take => {
                        let got = b.set_next_clear(lo, hi);
                        let free_in_range = (lo..hi).any(|i| !model.contains(&i));
                        match got {
                            Some(i) => {
                                prop_assert!((lo..hi).contains(&i));
                                prop_assert!(model.insert(i), "bit {} handed out twice", i);
                            }
                            None => prop_assert!(!free_in_range),
                        }
                    }
                    Op::Set(i) => {
                        let i = i % len;
                        prop_assert_eq!(b.set(i), model.insert(i));
                    }
                    Op::Clear(i) => {
                        let i = i % len;
                        prop_assert_eq!(b.clear(i), model.remove(&i));
                    }
                }
                prop_assert_eq!(b.count_ones() as usize, model.len());
            }
            for i in 0..len {
                prop_assert_eq!(b.is_set(i), model.contains(&i));
            }
            let clear = (lo..hi).filter(|i| !model.contains(i)).count() as u32;
            prop_assert_eq!(b.count_clear_in(lo, hi), clear);
        }
    }
}
