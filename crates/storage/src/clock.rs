//! Commit timestamps.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A commit timestamp: microseconds since the Unix epoch, made strictly increasing.
///
/// Wall-clock based (like Kudu's hybrid time) so that a snapshot timestamp means a moment a
/// user can name, and history retention can be a duration.
pub type Timestamp = u64;

/// Hands out strictly increasing commit timestamps.
///
/// Invariant: every timestamp returned by [`Clock::next`] is greater than every timestamp
/// returned or [`Clock::observe`]d before, even if the wall clock steps back.
#[derive(Debug, Default)]
pub struct Clock {
    last: AtomicU64,
}

impl Clock {
    /// The current wall-clock time in microseconds.
    pub fn wall_now() -> Timestamp {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0)
    }

    /// A new timestamp, greater than any seen so far.
    pub fn next(&self) -> Timestamp {
        let phys = Self::wall_now();
        let mut last = self.last.load(Ordering::Acquire);
        loop {
            let next = phys.max(last + 1);
            match self
                .last
                .compare_exchange(last, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return next,
                Err(cur) => last = cur,
            }
        }
    }

    /// Records a timestamp seen elsewhere (recovery) so later ones exceed it.
    pub fn observe(&self, ts: Timestamp) {
        self.last.fetch_max(ts, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strictly_increasing_even_after_observing_the_future() {
        let c = Clock::default();
        let a = c.next();
        c.observe(a + 10_000_000_000);
        let b = c.next();
        assert!(b > a + 10_000_000_000);
        assert!(c.next() > b);
    }
}
