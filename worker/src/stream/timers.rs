//! Connection deadlines: a min-heap of (when, connection), checked lazily.
//!
//! A connection's deadline moves later at every message (lifetime), so pushing one entry per
//! message would grow the heap with the traffic. Instead each connection keeps its own current
//! deadline, and the heap holds at least one entry at or before it: when an entry comes due, the
//! owner compares it with the connection's deadline and either expires the connection or pushes
//! the later deadline back. Only a deadline that moves *earlier* (drain, linger) pushes a new
//! entry. Stale entries (closed connections, reused indexes) are told apart by a serial number.
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )
)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// Which connection an entry is for: its index in the connection table and its serial.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Key {
    pub index: usize,
    pub serial: u64,
}

/// The heap of deadlines.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, Key)>>,
}

impl Timers {
    /// Remember that `key` may expire at `at`.
    pub(crate) fn push(&mut self, at: Instant, key: Key) {
        self.heap.push(Reverse((at, key)));
    }

    /// The next entry due at or before `now`, taken off the heap.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(Instant, Key)> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }

    /// How long until the earliest entry (zero if due), `None` when there is none.
    pub(crate) fn wait(&self, now: Instant) -> Option<Duration> {
        self.heap
            .peek()
            .map(|Reverse((at, _))| at.saturating_duration_since(now))
    }

    /// Entries held, stale ones included.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_first_and_only_when_due() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        let k = |index| Key { index, serial: 1 };
        t.push(t0 + Duration::from_secs(3), k(3));
        t.push(t0 + Duration::from_secs(1), k(1));
        t.push(t0 + Duration::from_secs(2), k(2));
        assert_eq!(t.wait(t0), Some(Duration::from_secs(1)));
        assert_eq!(t.pop_due(t0), None);
        let now = t0 + Duration::from_secs(2);
        assert_eq!(t.pop_due(now).map(|e| e.1), Some(k(1)));
        assert_eq!(t.pop_due(now).map(|e| e.1), Some(k(2)));
        assert_eq!(t.pop_due(now), None);
        assert_eq!(t.wait(now), Some(Duration::from_secs(1)));
        assert_eq!(t.wait(t0 + Duration::from_secs(9)), Some(Duration::ZERO));
        assert_eq!(t.len(), 1);
    }
}
