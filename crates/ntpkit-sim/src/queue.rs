//! The event queue: a radix heap over (time, sequence number).
//!
//! A discrete-event loop only ever schedules events at or after the one it is processing, so
//! the keys it pops never decrease. A radix heap exploits that: bucket `i` holds the keys whose
//! highest bit differing from the last key popped is bit `i − 1` (bucket 0: equal to it). A
//! push is one append; a pop takes the lowest non-empty bucket and, when that is not bucket 0,
//! finds its minimum and redistributes the rest into strictly lower buckets. Every key moves
//! down only a few times on its way out, and the work is sequential appends instead of a
//! binary heap's scattered sift-downs over tens of thousands of entries.
//!
//! Keys are `(time << 64) | seq` with unique sequence numbers, so the pop order is exactly
//! the (time, seq) order of the binary heap this replaces: simultaneous events run in the
//! order they were scheduled.

/// Buckets: one per bit of the 128-bit key, plus bucket 0 for the key equal to the last one.
const BUCKETS: usize = 129;
/// Largest allocation (entries) an emptied bucket keeps for reuse.
const KEEP_CAPACITY: usize = 1024;

/// A monotone priority queue of `T` keyed by (time, sequence number).
#[derive(Debug)]
pub struct EventQueue<T> {
    buckets: Vec<Vec<(u128, T)>>,
    /// The last key taken to bucket 0 (the lower bound of every key in the queue).
    last: u128,
    /// Bit `i` set when bucket `i + 1` may be non-empty (bucket 0 is looked at directly).
    occupied: u128,
    len: usize,
}

impl<T: Copy> EventQueue<T> {
    /// An empty queue at time 0.
    pub fn new() -> Self {
        EventQueue {
            buckets: (0..BUCKETS).map(|_| Vec::new()).collect(),
            last: 0,
            occupied: 0,
            len: 0,
        }
    }

    fn key(time: i64, seq: u64) -> u128 {
        debug_assert!(time >= 0, "virtual time starts at 0");
        (u128::from(time as u64) << 64) | u128::from(seq)
    }

    fn bucket(&self, key: u128) -> usize {
        (128 - (key ^ self.last).leading_zeros()) as usize
    }

    /// Schedules `item` at `time` with the unique, increasing sequence number `seq`. `time`
    /// must not be earlier than the last event popped.
    pub fn push(&mut self, time: i64, seq: u64, item: T) {
        let key = Self::key(time, seq);
        debug_assert!(key >= self.last, "events are never scheduled in the past");
        let b = self.bucket(key);
        self.buckets[b].push((key, item));
        if b > 0 {
            self.occupied |= 1 << (b - 1);
        }
        self.len += 1;
    }

    /// Moves the minimum into bucket 0, if the queue is not empty.
    fn settle(&mut self) {
        if !self.buckets[0].is_empty() || self.len == 0 {
            return;
        }
        debug_assert!(self.occupied != 0, "len > 0");
        let i = self.occupied.trailing_zeros() as usize + 1;
        self.occupied &= !(1 << (i - 1));
        let mut from = std::mem::take(&mut self.buckets[i]);
        self.last = from.iter().map(|e| e.0).min().expect("non-empty");
        for e in from.drain(..) {
            let b = self.bucket(e.0);
            self.buckets[b].push(e);
            if b > 0 {
                self.occupied |= 1 << (b - 1);
            }
        }
        // Give the emptied bucket its allocation back for the next keys that land there, unless
        // it is large: a burst passing through the buckets would otherwise leave every bucket
        // holding room for all of it.
        if from.capacity() <= KEEP_CAPACITY {
            self.buckets[i] = from;
        }
    }

    /// The time of the earliest event.
    pub fn peek_time(&mut self) -> Option<i64> {
        self.settle();
        self.buckets[0].last().map(|e| (e.0 >> 64) as i64)
    }

    /// Removes the earliest event: (time, item).
    pub fn pop(&mut self) -> Option<(i64, T)> {
        self.settle();
        let (key, item) = self.buckets[0].pop()?;
        self.len -= 1;
        Some(((key >> 64) as i64, item))
    }

    /// Events scheduled.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is scheduled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<T: Copy> Default for EventQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{stream, StreamKind};
    use rand_core::RngCore;
    use std::collections::BinaryHeap;

    #[test]
    fn pops_in_time_then_sequence_order_like_a_binary_heap() {
        let mut rng = stream(9, StreamKind::Core, 0);
        let mut q = EventQueue::new();
        let mut reference = BinaryHeap::new();
        let (mut seq, mut now) = (0u64, 0i64);
        for round in 0..20_000 {
            // Schedule 0–2 events at or after now, some at exactly the same time.
            for _ in 0..(rng.next_u64() % 3) {
                seq += 1;
                let ahead = match rng.next_u64() % 4 {
                    0 => 0,
                    1 => (rng.next_u64() % 1000) as i64,
                    _ => (rng.next_u64() % 64_000_000_000) as i64,
                };
                q.push(now + ahead, seq, seq);
                reference.push(std::cmp::Reverse((now + ahead, seq)));
            }
            if round % 3 != 0 {
                let want = reference.pop().map(|r| r.0);
                if let Some(t) = want {
                    assert_eq!(q.peek_time(), Some(t.0));
                }
                let got = q.pop();
                assert_eq!(got, want);
                if let Some((t, _)) = got {
                    now = t;
                }
            }
            assert_eq!(q.len(), reference.len());
        }
        while let Some(std::cmp::Reverse(want)) = reference.pop() {
            assert_eq!(q.pop(), Some(want));
        }
        assert!(q.is_empty() && q.pop().is_none());
    }
}
