//! The write buffer (Kudu's MemRowSet): rows in memory, ordered by key, with MVCC versions.
//!
//! A concurrent B+ tree (`scc::TreeIndex`: lock-free reads) maps each encoded key (stored inline
//! in the leaf for keys up to [`INLINE_KEY`] bytes) to a chain of versions, newest first:
//! (commit timestamp, encoded row or tombstone). A B+ tree, not a skip list: measured on a
//! million traffic keys, a search took 0.5-0.8 us instead of 1.7-2.4 us and an ordered scan
//! 25 ns per key instead of 97, because a leaf holds many keys in one place. One writer at a time (the tablet's
//! writer lock) adds keys and pushes versions; any number of readers walk the tree at the same
//! time without blocking it. A reader at snapshot `s` sees, for each key, the newest version
//! with timestamp `<= s`; versions newer than the published snapshot are invisible, which lets
//! the writer apply a batch entry by entry and publish it at once.
//!
//! Invariants (with the tablet): versions are only ever added, never removed or changed, until
//! the whole buffer is dropped (so a reader's reference stays valid while it holds the buffer);
//! keys are never removed and only the writer inserts. The tree moves a chain bitwise when a
//! leaf splits (the old leaf is retired without dropping it), so the writer looks a key up
//! afresh for every row rather than keeping a chain across inserts, and a reader that still
//! sees an old copy has every version up to its snapshot (those were pushed before it started);
//! a tombstone is pushed only over a live version in this buffer (a key whose live copy is in a
//! segment is deleted through that segment's deletion vector); a key may have an empty chain
//! (the writer looked it up and then wrote nothing), which means the same as no entry.

use std::borrow::Borrow;
use std::cmp::Ordering as KeyOrder;
use std::ops::Bound;
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use scc::{Comparable, Equivalent, Guard, TreeIndex};
use smallvec::SmallVec;

use crate::clock::Timestamp;

/// Keys up to this many bytes live inside the tree's leaf.
pub(crate) const INLINE_KEY: usize = 24;

/// A key in the tree: its encoded bytes, inline up to [`INLINE_KEY`]. Ordered as bytes, like
/// every encoded key, but compared eight bytes at a time ([`compare_keys`]): the tree compares
/// keys ~20 times per insert, and a call into `memcmp` for each was a sixth of the writer's
/// time.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Key(SmallVec<[u8; INLINE_KEY]>);

impl Key {
    fn from_slice(k: &[u8]) -> Self {
        Key(SmallVec::from_slice(k))
    }

    /// The encoded key. A walk that needs no key bytes (a scan without an upper bound) does
    /// not call this, which spares it a cache miss per row.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> KeyOrder {
        compare_keys(&self.0, &other.0)
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<KeyOrder> {
        Some(self.cmp(other))
    }
}

/// For ranges and iteration, which take byte-slice bounds: `[u8]`'s order is the same.
impl Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

/// A key being searched for, compared with the tree's keys by [`compare_keys`].
struct Probe<'a>(&'a [u8]);

impl Equivalent<Key> for Probe<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        self.0 == &key.0[..]
    }
}

impl Comparable<Key> for Probe<'_> {
    fn compare(&self, key: &Key) -> KeyOrder {
        compare_keys(self.0, &key.0)
    }
}

/// The lexicographic order of two byte strings (`a.cmp(b)`), eight bytes at a time as
/// big-endian integers, the last partial word zero-padded (both sides alike, so a padded
/// difference is a real one), then the shorter first.
#[inline]
fn compare_keys(a: &[u8], b: &[u8]) -> KeyOrder {
    let n = a.len().min(b.len());
    let mut i = 0;
    while i + 8 <= n {
        let x = u64::from_be_bytes(a[i..i + 8].try_into().expect("8 bytes"));
        let y = u64::from_be_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        if x != y {
            return x.cmp(&y);
        }
        i += 8;
    }
    if i < n {
        let (x, y) = (padded_word(&a[i..n]), padded_word(&b[i..n]));
        if x != y {
            return x.cmp(&y);
        }
    }
    a.len().cmp(&b.len())
}

/// A hint to load `v`'s cache line (a hint: it reads nothing architecturally, cannot fault).
#[inline]
fn prefetch<T>(v: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch instruction has no architectural effect and cannot fault.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
            v as *const T as *const i8,
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = v;
}

/// Up to 8 bytes as a big-endian integer, zero-padded at the end.
#[inline]
fn padded_word(s: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w[..s.len()].copy_from_slice(s);
    u64::from_be_bytes(w)
}

/// One version of a key.
struct Version {
    ts: Timestamp,
    /// The encoded row, or `None` for a tombstone.
    row: Option<Box<[u8]>>,
    next: *mut Version,
}

/// The versions of one key: the first one inline (most keys have only one, and reading it then
/// costs no extra pointer chase), later ones on a lock-free stack that only grows.
pub(crate) struct VersionChain {
    first_ts: Timestamp,
    first_row: Option<Box<[u8]>>,
    /// Versions after the first, newest first.
    head: AtomicPtr<Version>,
}

impl VersionChain {
    fn with(ts: Timestamp, row: Option<Box<[u8]>>) -> Self {
        VersionChain {
            first_ts: ts,
            first_row: row,
            head: AtomicPtr::new(ptr::null_mut()),
        }
    }

    fn push(&self, ts: Timestamp, row: Option<Box<[u8]>>) {
        let node = Box::into_raw(Box::new(Version {
            ts,
            row,
            next: ptr::null_mut(),
        }));
        let mut head = self.head.load(Ordering::Acquire);
        loop {
            // SAFETY: `node` is ours until the exchange below publishes it.
            unsafe { (*node).next = head };
            match self
                .head
                .compare_exchange(head, node, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return,
                Err(h) => head = h,
            }
        }
    }

    /// Versions, newest first.
    fn iter(&self) -> impl Iterator<Item = (Timestamp, Option<&[u8]>)> {
        let mut p = self.head.load(Ordering::Acquire);
        let mut first = Some((self.first_ts, self.first_row.as_deref()));
        std::iter::from_fn(move || {
            // SAFETY: published versions live as long as the chain (module invariant), and the
            // returned references borrow `self`.
            match unsafe { p.as_ref() } {
                Some(v) => {
                    p = v.next;
                    Some((v.ts, v.row.as_deref()))
                }
                None => first.take(),
            }
        })
    }

    /// The newest version visible at `snapshot`: `Some(Some(row))`, `Some(None)` (tombstone),
    /// or `None`.
    fn visible(&self, snapshot: Timestamp) -> Option<Option<&[u8]>> {
        if self.head.load(Ordering::Acquire).is_null() {
            // The common case, one version: no iterator to set up per row of a scan.
            return (self.first_ts <= snapshot).then_some(self.first_row.as_deref());
        }
        self.iter().find(|(ts, _)| *ts <= snapshot).map(|(_, r)| r)
    }
}

impl Drop for VersionChain {
    fn drop(&mut self) {
        let mut p = *self.head.get_mut();
        while !p.is_null() {
            // SAFETY: we own every node; each was created by `Box::into_raw` in `push`.
            let v = unsafe { Box::from_raw(p) };
            p = v.next;
        }
    }
}

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

/// Per-version bookkeeping cost added to row bytes when accounting memory.
const VERSION_OVERHEAD: usize = 40;
/// Per-key bookkeeping cost (leaf slot with inline key, tree overhead).
const KEY_OVERHEAD: usize = 96;

/// Memory accounted for one version holding a row of `row_len` bytes (0 for a tombstone).
fn version_cost(row_len: usize) -> usize {
    row_len + VERSION_OVERHEAD
}

/// Memory accounted for a key's entry in the tree (longer keys spill out of the leaf).
fn key_cost(key: &[u8]) -> usize {
    key.len().saturating_sub(INLINE_KEY) + KEY_OVERHEAD
}

/// The writer's handle on one key of the buffer, from [`MemTable::entry`].
pub(crate) struct KeyEntry<'g> {
    key: &'g [u8],
    chain: Option<&'g VersionChain>,
    table: &'g MemTable,
}

impl KeyEntry<'_> {
    /// The key's state counting every version written so far.
    pub fn state(&self) -> MemState {
        match self.chain.and_then(|c| c.visible(Timestamp::MAX)) {
            Some(Some(_)) => MemState::Live,
            Some(None) => MemState::Deleted,
            None => MemState::Unknown,
        }
    }

    /// The encoded key.
    pub fn key(&self) -> &[u8] {
        self.key
    }

    /// The newest row, if the key is live.
    pub fn row(&self) -> Option<&[u8]> {
        self.chain.and_then(|c| c.visible(Timestamp::MAX)).flatten()
    }

    /// Adds a version (once per entry: look the key up again for another). Adding two versions
    /// with the same timestamp keeps the later one visible: within one batch, the last
    /// operation on a key wins.
    pub fn push(self, ts: Timestamp, row: Option<Box<[u8]>>) {
        let t = self.table;
        t.bytes.fetch_add(
            version_cost(row.as_ref().map_or(0, |r| r.len())),
            Ordering::Relaxed,
        );
        t.versions.fetch_add(1, Ordering::Relaxed);
        match self.chain {
            Some(c) => c.push(ts, row),
            None => {
                t.bytes.fetch_add(key_cost(self.key), Ordering::Relaxed);
                // Only the writer inserts, and it found no entry, so the insert cannot collide;
                // if it ever did, the version goes onto the chain that won instead of being lost.
                let chain = VersionChain::with(ts, row);
                if let Err((_, mut chain)) = t.tree.insert_sync(Key::from_slice(self.key), chain) {
                    let guard = Guard::new();
                    if let Some(existing) = t.tree.peek(&Probe(self.key), &guard) {
                        existing.push(chain.first_ts, chain.first_row.take());
                    }
                }
            }
        }
    }
}

/// The write buffer.
#[derive(Default)]
pub(crate) struct MemTable {
    tree: TreeIndex<Key, VersionChain>,
    bytes: AtomicUsize,
    versions: AtomicUsize,
    /// When the first write since the buffer was started completed: the age that triggers a
    /// background flush.
    first_write: std::sync::OnceLock<std::time::Instant>,
}

impl std::fmt::Debug for MemTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemTable")
            .field("versions", &self.len())
            .finish_non_exhaustive()
    }
}

impl MemTable {
    /// The writer's handle on `key` (one search serves the presence check and the write).
    pub fn entry<'g>(&'g self, key: &'g [u8], guard: &'g Guard) -> KeyEntry<'g> {
        KeyEntry {
            key,
            chain: self.tree.peek(&Probe(key), guard),
            table: self,
        }
    }

    /// Adds `key` with its first version, unless the buffer holds the key already: then the
    /// row comes back, to be pushed onto the key's [`entry`](Self::entry) instead. For a
    /// write that does not depend on the key's current row (a whole-row upsert) this is one
    /// tree search where `entry` then `push` take two. Writer only, like `push`.
    pub fn insert_new(
        &self,
        key: &[u8],
        ts: Timestamp,
        row: Box<[u8]>,
    ) -> std::result::Result<(), Box<[u8]>> {
        let cost = version_cost(row.len()) + key_cost(key);
        match self
            .tree
            .insert_sync(Key::from_slice(key), VersionChain::with(ts, Some(row)))
        {
            Ok(()) => {
                self.bytes.fetch_add(cost, Ordering::Relaxed);
                self.versions.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err((_, mut chain)) => Err(chain.first_row.take().expect("the row just given")),
        }
    }

    /// Adds a version of `key` (see [`KeyEntry::push`]).
    #[cfg(test)]
    pub fn put(&self, key: &[u8], ts: Timestamp, row: Option<Box<[u8]>>) {
        let guard = Guard::new();
        self.entry(key, &guard).push(ts, row);
    }

    /// The newest version of `key` visible at `snapshot`.
    pub fn get(&self, key: &[u8], snapshot: Timestamp) -> MemLookup {
        let guard = Guard::new();
        let Some(chain) = self.tree.peek(&Probe(key), &guard) else {
            return MemLookup::Unknown;
        };
        match chain.visible(snapshot) {
            Some(Some(row)) => MemLookup::Live(row.to_vec()),
            Some(None) => MemLookup::Deleted,
            None => MemLookup::Unknown,
        }
    }

    /// Approximate memory held, in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Records that a write completed (the first one starts the buffer's age).
    pub fn note_write(&self) {
        self.first_write.get_or_init(std::time::Instant::now);
    }

    /// Time since the first write into this buffer, if any.
    pub fn age(&self) -> Option<std::time::Duration> {
        self.first_write.get().map(|t| t.elapsed())
    }

    /// Number of versions held.
    pub fn len(&self) -> usize {
        self.versions.load(Ordering::Relaxed)
    }

    /// Whether the buffer holds no version.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Visits, in key order from `lower`, the newest version visible at `snapshot` of every key
    /// whose newest visible version is live, until `f` returns false. The references live as
    /// long as the caller's `guard`, so a scan can decode rows where they are instead of
    /// copying them out first.
    pub fn for_each_visible<'g>(
        &'g self,
        guard: &'g Guard,
        snapshot: Timestamp,
        lower: Bound<&[u8]>,
        mut f: impl FnMut(&'g Key, &'g [u8]) -> bool,
    ) {
        // scc 3.8's `range` from a bound below the tree's first key walks the leaves for a
        // long time before it starts (seconds over a million keys: a scan of a tablet's
        // smallest `uid`, with its rows still in the buffer, took 9 s). Such a bound is the
        // same as none.
        let lower = match lower {
            Bound::Included(k) | Bound::Excluded(k)
                if self
                    .tree
                    .iter(guard)
                    .next()
                    .is_none_or(|(first, _)| k < &first.0[..]) =>
            {
                Bound::Unbounded
            }
            b => b,
        };
        // Version chains sit in the leaves in insertion order, so in key order nearly every
        // one is a cache miss: the walk runs `WALK_AHEAD` entries ahead of the visit, with a
        // prefetch for each, so that the misses overlap.
        const WALK_AHEAD: usize = 16;
        let mut ahead: std::collections::VecDeque<(&'g Key, &'g VersionChain)> =
            std::collections::VecDeque::with_capacity(WALK_AHEAD + 1);
        let mut visit = |k: &'g Key, chain: &'g VersionChain| match chain.visible(snapshot) {
            Some(Some(row)) => f(k, row),
            _ => true,
        };
        for (k, chain) in self.tree.range::<[u8], _>((lower, Bound::Unbounded), guard) {
            prefetch(chain);
            ahead.push_back((k, chain));
            if ahead.len() > WALK_AHEAD {
                let (k, chain) = ahead.pop_front().expect("not empty");
                if !visit(k, chain) {
                    return;
                }
            }
        }
        for (k, chain) in ahead {
            if !visit(k, chain) {
                return;
            }
        }
    }

    /// Visits every version in (key ascending, timestamp descending) order. Used to freeze the
    /// buffer into a segment.
    pub fn for_each_version(&self, mut f: impl FnMut(&[u8], Timestamp, Option<&[u8]>)) {
        let guard = Guard::new();
        for (k, chain) in self.tree.iter(&guard) {
            for (ts, row) in chain.iter() {
                f(&k.0, ts, row);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(b: u8) -> Option<Box<[u8]>> {
        Some(vec![b].into_boxed_slice())
    }

    fn visible(m: &MemTable, snap: Timestamp, lower: Bound<&[u8]>) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut seen = vec![];
        m.for_each_visible(&Guard::new(), snap, lower, |k, r| {
            seen.push((k.bytes().to_vec(), r.to_vec()));
            true
        });
        seen
    }

    proptest::proptest! {
        /// The tree's key order is byte order, for every length and shared prefix.
        #[test]
        fn key_order_is_byte_order(
            prefix in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20),
            a in proptest::collection::vec(0u8..4, 0..12),
            b in proptest::collection::vec(0u8..4, 0..12),
        ) {
            let (x, y) = ([&prefix[..], &a].concat(), [&prefix[..], &b].concat());
            proptest::prop_assert_eq!(compare_keys(&x, &y), x.cmp(&y));
            proptest::prop_assert_eq!(Key::from_slice(&x).cmp(&Key::from_slice(&y)), x.cmp(&y));
            proptest::prop_assert_eq!(Probe(&x).compare(&Key::from_slice(&y)), x.cmp(&y));
        }
    }

    #[test]
    fn versions_and_snapshots() {
        let m = MemTable::default();
        m.put(b"a", 10, row(1));
        m.put(b"a", 20, row(2));
        m.put(b"a", 30, None);
        m.put(b"b", 15, row(3));
        let long = vec![200u8; 100];
        m.put(&long, 5, row(4));
        let g = Guard::new();
        let _looked_up_never_written = m.entry(b"c", &g);
        assert_eq!(m.get(b"a", 5), MemLookup::Unknown);
        assert_eq!(m.get(b"a", 10), MemLookup::Live(vec![1]));
        assert_eq!(m.get(b"a", 25), MemLookup::Live(vec![2]));
        assert_eq!(m.get(b"a", 30), MemLookup::Deleted);
        assert_eq!(m.get(b"c", 100), MemLookup::Unknown);
        assert_eq!(m.get(&long, 100), MemLookup::Live(vec![4]));
        assert_eq!(m.entry(b"a", &g).state(), MemState::Deleted);
        assert_eq!(m.entry(b"b", &g).state(), MemState::Live);
        assert_eq!(m.entry(b"c", &g).state(), MemState::Unknown);
        assert_eq!(m.len(), 5);
        let l = (long.clone(), vec![4]);
        assert_eq!(
            visible(&m, 25, Bound::Unbounded),
            vec![
                (b"a".to_vec(), vec![2]),
                (b"b".to_vec(), vec![3]),
                l.clone()
            ]
        );
        assert_eq!(
            visible(&m, 100, Bound::Unbounded),
            vec![(b"b".to_vec(), vec![3]), l.clone()]
        );
        assert_eq!(
            visible(&m, 25, Bound::Excluded(b"a")),
            vec![(b"b".to_vec(), vec![3]), l]
        );
        let mut all = vec![];
        m.for_each_version(|k, ts, r| all.push((k.to_vec(), ts, r.map(|r| r.to_vec()))));
        assert_eq!(all.len(), 5);
        assert_eq!(all[0], (b"a".to_vec(), 30, None));
        assert_eq!(all[2], (b"a".to_vec(), 10, Some(vec![1])));
    }

    #[test]
    fn a_scan_from_below_the_first_key_sees_every_key() {
        // Many keys, so that the tree has several levels of leaves (see `for_each_visible`).
        let m = MemTable::default();
        for i in 0..50_000u32 {
            m.put(&(i * 2 + 10).to_be_bytes(), 1, row((i % 251) as u8));
        }
        let count = |lower: Bound<&[u8]>| {
            let mut n = 0;
            m.for_each_visible(&Guard::new(), 5, lower, |_, _| {
                n += 1;
                true
            });
            n
        };
        assert_eq!(count(Bound::Unbounded), 50_000);
        assert_eq!(count(Bound::Included(&[0u8])), 50_000);
        assert_eq!(count(Bound::Excluded(&3u32.to_be_bytes())), 50_000);
        assert_eq!(count(Bound::Included(&10u32.to_be_bytes())), 50_000);
        assert_eq!(count(Bound::Excluded(&10u32.to_be_bytes())), 49_999);
        assert_eq!(count(Bound::Included(&11u32.to_be_bytes())), 49_999);
        assert_eq!(count(Bound::Included(&[255u8])), 0);
    }

    /// A walk stopped early has visited exactly the keys before the stop, in order (the walk
    /// runs ahead of the visits), and resuming after the last one sees the rest once.
    #[test]
    fn a_walk_stops_where_told_and_resumes_after_its_last_key() {
        let m = MemTable::default();
        for i in 0..1_000u32 {
            // Every third key's newest version is a tombstone: skipped, never visited.
            let r = if i % 3 == 0 { None } else { row(1) };
            m.put(&i.to_be_bytes(), 1, row(1));
            m.put(&i.to_be_bytes(), 2, r);
        }
        let live: Vec<Vec<u8>> = (0..1_000u32)
            .filter(|i| i % 3 != 0)
            .map(|i| i.to_be_bytes().to_vec())
            .collect();
        for stop_after in [1, 5, 16, 17, 100, 665, 666] {
            let mut seen: Vec<Vec<u8>> = vec![];
            let mut lower: Option<Vec<u8>> = None;
            loop {
                let mut batch = vec![];
                let bound = lower.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
                m.for_each_visible(&Guard::new(), 2, bound, |k, _| {
                    batch.push(k.bytes().to_vec());
                    batch.len() < stop_after
                });
                if batch.is_empty() {
                    break;
                }
                assert!(batch.len() <= stop_after);
                lower = batch.last().cloned();
                seen.extend(batch);
            }
            assert_eq!(seen, live, "stopping after {stop_after}");
        }
    }

    #[test]
    fn same_timestamp_last_push_wins() {
        let m = MemTable::default();
        m.put(b"k", 7, row(1));
        m.put(b"k", 7, None);
        m.put(b"k", 7, row(2));
        assert_eq!(m.get(b"k", 7), MemLookup::Live(vec![2]));
    }
}
