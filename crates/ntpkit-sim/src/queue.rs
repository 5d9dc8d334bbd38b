//! The event queue: a binary heap ordered by (time, sequence number).
//!
//! Sequence numbers are unique and increasing, so simultaneous events pop in the order they
//! were scheduled and a run is a pure function of its inputs.
//!
//! A radix heap was tried (it wins for one queue of 100,000 events), but simulations of many
//! clients run in cache-sized shards of a few hundred events each, where the binary heap is
//! about 6 % faster overall and keeps one allocation instead of 129 buckets
//! (docs/benchmarks.md).

/// A priority queue of `T` keyed by (time, sequence number), smallest first.
///
/// The earliest event is held apart from the heap when it was scheduled ahead of everything
/// else, as a reply due in milliseconds usually is among timers due in seconds: it is then
/// taken without a trip through the heap.
#[derive(Debug)]
pub struct EventQueue<T> {
    /// Earlier than every entry of `heap`, when set.
    front: Option<Entry<T>>,
    heap: std::collections::BinaryHeap<Entry<T>>,
}

/// A queued event (24 bytes with an 8-byte `T`), ordered so that the max-heap pops the
/// smallest (time, seq) first.
#[derive(Debug)]
struct Entry<T> {
    time: i64,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.time, self.seq) == (other.time, other.seq)
    }
}

impl<T> Eq for Entry<T> {}

impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Entry<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.time, other.seq).cmp(&(self.time, self.seq))
    }
}

impl<T: Copy> EventQueue<T> {
    /// An empty queue.
    pub fn new() -> Self {
        Self::with_capacity(0)
    }

    /// An empty queue with room for `n` events.
    pub fn with_capacity(n: usize) -> Self {
        EventQueue {
            front: None,
            heap: std::collections::BinaryHeap::with_capacity(n),
        }
    }

    /// Schedules `item` at `time` with the unique, increasing sequence number `seq`.
    pub fn push(&mut self, time: i64, seq: u64, item: T) {
        let e = Entry { time, seq, item };
        match &self.front {
            // Not earlier than the front: somewhere in the heap.
            Some(f) if e <= *f => self.heap.push(e),
            // Earlier than the front: it becomes the front.
            Some(_) => {
                let old = self.front.replace(e).expect("matched Some");
                self.heap.push(old);
            }
            // Earlier than everything queued: the front.
            None if self.heap.peek().is_none_or(|min| e > *min) => self.front = Some(e),
            None => self.heap.push(e),
        }
    }

    /// The time of the earliest event.
    pub fn peek_time(&self) -> Option<i64> {
        self.front.as_ref().or(self.heap.peek()).map(|e| e.time)
    }

    /// Removes the earliest event: (time, item). A queue left mostly empty by a burst (every
    /// client's first exchange at t = 0) gives half its memory back.
    pub fn pop(&mut self) -> Option<(i64, T)> {
        if let Some(e) = self.front.take() {
            return Some((e.time, e.item));
        }
        let e = self.heap.pop()?;
        let (len, capacity) = (self.heap.len(), self.heap.capacity());
        if capacity > 4096 && len < capacity / 4 {
            self.heap.shrink_to(2 * len);
        }
        Some((e.time, e.item))
    }

    /// Events scheduled.
    pub fn len(&self) -> usize {
        self.heap.len() + usize::from(self.front.is_some())
    }

    /// True when nothing is scheduled.
    pub fn is_empty(&self) -> bool {
        self.front.is_none() && self.heap.is_empty()
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
    fn pops_in_time_then_sequence_order() {
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
