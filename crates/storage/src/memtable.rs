//! The write buffer (Kudu's MemRowSet): rows in memory, ordered by key, with MVCC versions.
//!
//! A lock-free skip list maps (key, commit timestamp) to an encoded row or a tombstone. One
//! writer at a time inserts (the tablet's write lock); any number of readers iterate at the same
//! time without blocking it. A reader at snapshot `s` sees, for each key, the newest version with
//! timestamp `<= s`; versions newer than the published snapshot are invisible, which is what lets
//! the writer insert a batch entry by entry and publish it at once.
//!
//! Invariant (with the tablet): a tombstone is written only over a live version in this buffer;
//! a key whose live copy is in a segment is deleted through that segment's deletion vector.

use std::cmp::Ordering as CmpOrdering;
use std::ops::Bound;
use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_skiplist::SkipMap;

use crate::clock::Timestamp;

/// Skip-list key: encoded primary key ascending, then commit timestamp descending, so the newest
/// version of a key comes first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VersionKey {
    pub key: Box<[u8]>,
    pub ts: Timestamp,
}

impl Ord for VersionKey {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        self.key
            .cmp(&other.key)
            .then_with(|| other.ts.cmp(&self.ts))
    }
}

impl PartialOrd for VersionKey {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

/// An encoded row, or `None` for a tombstone.
pub(crate) type VersionValue = Option<Box<[u8]>>;

/// What the buffer knows about a key at some snapshot.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum MemLookup {
    /// The newest visible version is this row.
    Live(Vec<u8>),
    /// The newest visible version is a tombstone: the key is absent (see module invariant).
    Deleted,
    /// No visible version: look in the segments.
    Unknown,
}

/// [`MemLookup`] without the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MemState {
    Live,
    Deleted,
    Unknown,
}

/// Per-entry bookkeeping cost added to key and row bytes when accounting memory.
const ENTRY_OVERHEAD: usize = 96;

/// The write buffer.
#[derive(Debug, Default)]
pub(crate) struct MemTable {
    map: SkipMap<VersionKey, VersionValue>,
    bytes: AtomicUsize,
}

impl MemTable {
    /// Inserts a version. Inserting the same (key, ts) twice keeps the later one: within one
    /// batch, the last operation on a key wins.
    pub fn put(&self, key: &[u8], ts: Timestamp, row: VersionValue) {
        let size = key.len() + row.as_ref().map_or(0, |r| r.len()) + ENTRY_OVERHEAD;
        self.bytes.fetch_add(size, Ordering::Relaxed);
        self.map.insert(
            VersionKey {
                key: key.into(),
                ts,
            },
            row,
        );
    }

    /// The entry of the newest version of `key` visible at `snapshot`.
    fn newest(
        &self,
        key: &[u8],
        snapshot: Timestamp,
    ) -> Option<crossbeam_skiplist::map::Entry<'_, VersionKey, VersionValue>> {
        let probe = VersionKey {
            key: key.into(),
            ts: snapshot,
        };
        self.map
            .lower_bound(Bound::Included(&probe))
            .filter(|e| *e.key().key == *key)
    }

    /// The newest version of `key` visible at `snapshot`.
    pub fn get(&self, key: &[u8], snapshot: Timestamp) -> MemLookup {
        match self.newest(key, snapshot) {
            Some(e) => match e.value() {
                Some(row) => MemLookup::Live(row.to_vec()),
                None => MemLookup::Deleted,
            },
            None => MemLookup::Unknown,
        }
    }

    /// Like [`MemTable::get`], without copying the row.
    pub fn probe(&self, key: &[u8], snapshot: Timestamp) -> MemState {
        match self.newest(key, snapshot) {
            Some(e) if e.value().is_some() => MemState::Live,
            Some(_) => MemState::Deleted,
            None => MemState::Unknown,
        }
    }

    /// Approximate memory held, in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Number of versions held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the buffer holds nothing.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Visits, in key order, the newest version visible at `snapshot` of every key in
    /// `[lower, upper]` whose newest visible version is live.
    pub fn for_each_visible(
        &self,
        snapshot: Timestamp,
        lower: Bound<&[u8]>,
        upper: Bound<&[u8]>,
        mut f: impl FnMut(&[u8], &[u8]) -> bool,
    ) {
        let start = match lower {
            Bound::Included(k) => Bound::Included(VersionKey {
                key: k.into(),
                ts: Timestamp::MAX,
            }),
            Bound::Excluded(k) => Bound::Excluded(VersionKey {
                key: k.into(),
                ts: 0,
            }),
            Bound::Unbounded => Bound::Unbounded,
        };
        let mut last_key: Option<Box<[u8]>> = None;
        let mut iter = match &start {
            Bound::Included(k) => self.map.lower_bound(Bound::Included(k)),
            Bound::Excluded(k) => self.map.lower_bound(Bound::Excluded(k)),
            Bound::Unbounded => self.map.front(),
        };
        while let Some(e) = iter {
            let vk = e.key();
            let past_end = match upper {
                Bound::Included(u) => &*vk.key > u,
                Bound::Excluded(u) => &*vk.key >= u,
                Bound::Unbounded => false,
            };
            if past_end {
                break;
            }
            let same_as_last = last_key.as_deref() == Some(&*vk.key);
            if !same_as_last && vk.ts <= snapshot {
                last_key = Some(vk.key.clone());
                if let Some(row) = e.value() {
                    if !f(&vk.key, row) {
                        break;
                    }
                }
            }
            iter = e.next();
        }
    }

    /// Visits every version in (key ascending, timestamp descending) order. Used to freeze the
    /// buffer into a segment.
    pub fn for_each_version(&self, mut f: impl FnMut(&VersionKey, &VersionValue)) {
        for e in self.map.iter() {
            f(e.key(), e.value());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(b: u8) -> VersionValue {
        Some(vec![b].into_boxed_slice())
    }

    #[test]
    fn versions_and_snapshots() {
        let m = MemTable::default();
        m.put(b"a", 10, row(1));
        m.put(b"a", 20, row(2));
        m.put(b"a", 30, None);
        m.put(b"b", 15, row(3));
        assert_eq!(m.get(b"a", 5), MemLookup::Unknown);
        assert_eq!(m.get(b"a", 10), MemLookup::Live(vec![1]));
        assert_eq!(m.get(b"a", 25), MemLookup::Live(vec![2]));
        assert_eq!(m.get(b"a", 30), MemLookup::Deleted);
        assert_eq!(m.get(b"c", 100), MemLookup::Unknown);
        let mut seen = vec![];
        m.for_each_visible(25, Bound::Unbounded, Bound::Unbounded, |k, r| {
            seen.push((k.to_vec(), r.to_vec()));
            true
        });
        assert_eq!(
            seen,
            vec![(b"a".to_vec(), vec![2]), (b"b".to_vec(), vec![3])]
        );
        seen.clear();
        m.for_each_visible(100, Bound::Unbounded, Bound::Unbounded, |k, r| {
            seen.push((k.to_vec(), r.to_vec()));
            true
        });
        assert_eq!(seen, vec![(b"b".to_vec(), vec![3])]);
        seen.clear();
        m.for_each_visible(25, Bound::Excluded(b"a"), Bound::Included(b"b"), |k, r| {
            seen.push((k.to_vec(), r.to_vec()));
            true
        });
        assert_eq!(seen, vec![(b"b".to_vec(), vec![3])]);
    }
}
