//! Deletion vectors: which rows of a segment are deleted, and since when.
//!
//! Segments are immutable, so deleting (or updating) a key whose live copy is in a segment sets
//! that row's bit here, stamped with the commit timestamp. Scans skip deleted rows by position
//! and never merge by key. Timestamps make snapshots work: a row deleted at `t` is still visible
//! to a snapshot taken before `t`.
//!
//! Representation: `all` holds every deleted row (what a read at the latest snapshot needs);
//! `log` holds (timestamp, row) for deletions still inside the history window, in timestamp
//! order. Deletions older than the history horizon are "folded": they stay in `all` only.
//! The persisted form is the log of deletions up to the tablet's checkpoint timestamp; the
//! deletions after it are re-derived from the WAL on recovery.

use parking_lot::RwLock;
use roaring::RoaringBitmap;

use crate::clock::Timestamp;

#[derive(Debug, Default, Clone)]
struct DvState {
    all: RoaringBitmap,
    /// (ts, row), ascending by ts (deletions are appended in commit order).
    log: Vec<(Timestamp, u32)>,
    /// Deletions with `ts <= persisted` are durable in the metadata store.
    persisted: Timestamp,
}

/// A segment's deletion vector. Writers hold the lock for a few microseconds per batch;
/// readers copy what they need under a shared lock.
#[derive(Debug, Default)]
pub(crate) struct DeleteVector {
    state: RwLock<DvState>,
}

impl DeleteVector {
    /// Rebuilds a vector from persisted deletions (any order).
    pub fn from_persisted(mut entries: Vec<(Timestamp, u32)>, persisted: Timestamp) -> Self {
        entries.sort_unstable();
        let all = entries.iter().map(|&(_, r)| r).collect();
        DeleteVector {
            state: RwLock::new(DvState {
                all,
                log: entries,
                persisted,
            }),
        }
    }

    /// Marks `row` deleted at `ts`. Timestamps must not decrease across calls.
    pub fn delete(&self, row: u32, ts: Timestamp) {
        let mut s = self.state.write();
        debug_assert!(s.log.last().is_none_or(|&(t, _)| t <= ts));
        if s.all.insert(row) {
            s.log.push((ts, row));
        }
    }

    /// Whether `row` is deleted at `snapshot`.
    pub fn is_deleted_at(&self, row: u32, snapshot: Timestamp) -> bool {
        let s = self.state.read();
        if !s.all.contains(row) {
            return false;
        }
        let tail = s.log.partition_point(|&(t, _)| t <= snapshot);
        !s.log[tail..].iter().any(|&(_, r)| r == row)
    }

    /// The rows deleted at `snapshot`, or `None` when none are.
    pub fn deleted_at(&self, snapshot: Timestamp) -> Option<RoaringBitmap> {
        let s = self.state.read();
        if s.all.is_empty() {
            return None;
        }
        let tail = s.log.partition_point(|&(t, _)| t <= snapshot);
        let mut out = s.all.clone();
        for &(_, r) in &s.log[tail..] {
            out.remove(r);
        }
        Some(out)
    }

    /// How many rows are deleted at `snapshot`: [`DeleteVector::deleted_at`]'s length without
    /// building the bitmap (maintenance asks this of every segment on every round). Exact
    /// because the log's rows are distinct and all in `all` (`delete` logs a row only when it
    /// first enters `all`).
    pub fn deleted_count_at(&self, snapshot: Timestamp) -> u64 {
        let s = self.state.read();
        debug_assert!(
            s.log.len() as u64 <= s.all.len(),
            "logged rows are distinct"
        );
        let tail = s.log.partition_point(|&(t, _)| t <= snapshot);
        s.all.len() - (s.log.len() - tail) as u64
    }

    /// Every deleted row with its deletion timestamp; deletions folded below the horizon
    /// (whose timestamp is forgotten) get 0, "before every readable snapshot".
    pub fn entries(&self) -> Vec<(Timestamp, u32)> {
        let s = self.state.read();
        let logged: RoaringBitmap = s.log.iter().map(|&(_, r)| r).collect();
        let mut out: Vec<(Timestamp, u32)> = (&s.all - &logged).iter().map(|r| (0, r)).collect();
        out.extend_from_slice(&s.log);
        out
    }

    /// Replaces the contents with `entries` (any order), of which those at or before
    /// `persisted` are durable. Only for a vector no reader or writer can see yet (a
    /// compaction's output before it is installed).
    pub fn reset(&self, entries: Vec<(Timestamp, u32)>, persisted: Timestamp) {
        let fresh = DeleteVector::from_persisted(entries, persisted);
        *self.state.write() = fresh.state.into_inner();
    }

    /// Number of deleted rows at the latest snapshot.
    pub fn len(&self) -> u64 {
        self.state.read().all.len()
    }

    /// Deletions in `(persisted, upto]`, to be made durable with a checkpoint at `upto`.
    pub fn unpersisted(&self, upto: Timestamp) -> Vec<(Timestamp, u32)> {
        let s = self.state.read();
        let from = s.log.partition_point(|&(t, _)| t <= s.persisted);
        let to = s.log.partition_point(|&(t, _)| t <= upto);
        s.log[from..to].to_vec()
    }

    /// Records that deletions up to `upto` are durable.
    pub fn mark_persisted(&self, upto: Timestamp) {
        let mut s = self.state.write();
        s.persisted = s.persisted.max(upto);
    }

    /// Forgets the timestamps of deletions older than `horizon` that are already durable: no
    /// snapshot before the horizon can be read any more, so they are plain deleted rows.
    pub fn fold(&self, horizon: Timestamp) {
        let mut s = self.state.write();
        let cut = horizon.min(s.persisted);
        let n = s.log.partition_point(|&(t, _)| t < cut);
        if n > 0 {
            s.log.drain(..n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_see_deletions_in_time() {
        let dv = DeleteVector::default();
        dv.delete(3, 10);
        dv.delete(7, 20);
        assert!(!dv.is_deleted_at(3, 9));
        assert!(dv.is_deleted_at(3, 10));
        assert!(!dv.is_deleted_at(7, 19));
        assert!(dv.is_deleted_at(7, 25));
        assert_eq!(
            dv.deleted_at(15).unwrap().iter().collect::<Vec<_>>(),
            vec![3]
        );
        assert_eq!(dv.deleted_at(5).unwrap().len(), 0);
        assert_eq!(dv.len(), 2);
    }

    #[test]
    fn persistence_bookkeeping() {
        let dv = DeleteVector::default();
        dv.delete(1, 10);
        dv.delete(2, 20);
        dv.delete(3, 30);
        assert_eq!(dv.unpersisted(20), vec![(10, 1), (20, 2)]);
        dv.mark_persisted(20);
        assert_eq!(dv.unpersisted(40), vec![(30, 3)]);
        dv.fold(100); // only folds what is persisted
        assert!(!dv.is_deleted_at(3, 29));
        assert!(dv.is_deleted_at(1, 0)); // folded: deleted for every readable snapshot
        let back = DeleteVector::from_persisted(vec![(20, 2), (10, 1)], 20);
        assert!(back.is_deleted_at(2, 20) && !back.is_deleted_at(2, 19));
    }

    #[test]
    fn deleted_counts_match_the_deleted_rows() {
        let dv = DeleteVector::default();
        assert_eq!(dv.deleted_count_at(5), 0);
        for (i, row) in [4u32, 9, 1, 70_000, 2].into_iter().enumerate() {
            dv.delete(row, 10 * (i as u64 + 1));
        }
        dv.delete(9, 60); // already deleted: no second entry
        dv.mark_persisted(20);
        dv.fold(20);
        for snap in [0, 10, 15, 20, 30, 45, 50, 100] {
            let rows = dv.deleted_at(snap).map_or(0, |d| d.len());
            assert_eq!(dv.deleted_count_at(snap), rows, "at {snap}");
        }
    }
}
