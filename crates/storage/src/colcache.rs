//! Decoded segment columns, kept in memory for the scans that come back to them.
//!
//! Scans of a Parquet segment spend most of their time decoding pages (dictionary gathers,
//! definition levels), not reading them: the files are memory-mapped and stay in the page
//! cache. Analytic queries read the same few columns over and over, so one cache, shared by
//! the tablets of a database (a standalone tablet has its own), keeps whole row groups of
//! those columns as Arrow arrays, weighed by their memory, and scans that find them slice the
//! arrays instead of decoding (see `Segment::scan`).
//!
//! Invariant: an entry is the decoded column chunk of one row group of one open segment,
//! exactly as the Parquet reader returns it. Segments are immutable, and each opening of a
//! segment file gets a fresh [`SegmentToken`], so an entry can never be stale: entries of
//! segments that compactions replaced are simply never asked for again, and age out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef};

/// Names one opening of a segment file in this process's column cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SegmentToken(u64);

impl SegmentToken {
    /// A token no other segment of this process has.
    pub fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        SegmentToken(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// (segment token, row group << 32 | file column).
type Key = (u64, u64);

fn key(seg: SegmentToken, row_group: usize, column: usize) -> Key {
    (seg.0, ((row_group as u64) << 32) | column as u64)
}

#[derive(Clone, Debug)]
struct ArrayWeighter;

impl quick_cache::Weighter<Key, ArrayRef> for ArrayWeighter {
    fn weight(&self, _: &Key, a: &ArrayRef) -> u64 {
        (a.get_array_memory_size() + 64) as u64
    }
}

/// Typical weight of an entry (a row group of 256k rows of a 4-byte column), for sizing the
/// cache's table.
const TYPICAL_ENTRY_BYTES: u64 = 1 << 20;

/// See [`ColumnCache::fill_limit_bytes`]: a row group of the traffic table's 15 columns is
/// ~30 MiB decoded; one of a wide table of long strings may be hundreds.
const FILL_LIMIT_BYTES: u64 = 64 << 20;

/// Figures of the column cache, for gauges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ColumnCacheStats {
    /// Bytes the cached arrays take.
    pub used_bytes: u64,
    /// The configured size.
    pub capacity_bytes: u64,
    /// Column chunks scans found in the cache.
    pub hits: u64,
    /// Column chunks scans decoded (and offered to the cache).
    pub misses: u64,
}

/// The process-wide cache of decoded column chunks (see the module docs).
pub(crate) struct ColumnCache {
    entries: quick_cache::sync::Cache<Key, ArrayRef, ArrayWeighter>,
    capacity: u64,
    /// Column chunks the cache declined (heavier than one of its shards holds): scans read
    /// them from the file rather than decode them whole again each time.
    declined: parking_lot::Mutex<std::collections::HashSet<Key>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl std::fmt::Debug for ColumnCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ColumnCache")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl ColumnCache {
    /// A cache holding about `bytes` bytes of arrays; `None` for 0 (no caching: every scan
    /// decodes what it reads, and reads only what it needs).
    pub fn new(bytes: u64) -> Option<Arc<ColumnCache>> {
        (bytes > 0).then(|| {
            Arc::new(ColumnCache {
                entries: quick_cache::sync::Cache::with_weighter(
                    (bytes / TYPICAL_ENTRY_BYTES).max(16) as usize,
                    bytes,
                    ArrayWeighter,
                ),
                capacity: bytes,
                declined: Default::default(),
                hits: AtomicU64::new(0),
                misses: AtomicU64::new(0),
            })
        })
    }

    /// Whether the column chunk is cached (without counting it as used).
    pub fn contains(&self, seg: SegmentToken, row_group: usize, column: usize) -> bool {
        self.entries.contains_key(&key(seg, row_group, column))
    }

    /// The cached column chunk, if any.
    pub fn get(&self, seg: SegmentToken, row_group: usize, column: usize) -> Option<ArrayRef> {
        let a = self.entries.get(&key(seg, row_group, column));
        let counter = if a.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        a
    }

    /// Offers a decoded column chunk. The cache declines one heavier than a shard holds (and
    /// remembers that, see [`ColumnCache::declined`]).
    pub fn insert(&self, seg: SegmentToken, row_group: usize, column: usize, a: ArrayRef) {
        let k = key(seg, row_group, column);
        // quick_cache drops an entry heavier than ~97% of a shard without a word.
        if quick_cache::Weighter::weight(&ArrayWeighter, &k, &a)
            > self.entries.shard_capacity() / 10 * 9
        {
            self.declined.lock().insert(k);
            return;
        }
        self.entries.insert(k, a);
    }

    /// Whether the cache declined this column chunk before.
    pub fn declined(&self, seg: SegmentToken, row_group: usize, column: usize) -> bool {
        let d = self.declined.lock();
        !d.is_empty() && d.contains(&key(seg, row_group, column))
    }

    /// The most memory one scan may decode into the cache for one row group: a scan holds the
    /// row group's needed columns whole while it reads them, and they must fit the cache.
    pub fn fill_limit_bytes(&self) -> u64 {
        (self.capacity / 4).min(FILL_LIMIT_BYTES)
    }

    /// Current figures.
    pub fn stats(&self) -> ColumnCacheStats {
        ColumnCacheStats {
            used_bytes: self.entries.weight(),
            capacity_bytes: self.capacity,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::Int64Array;

    use super::*;

    #[test]
    fn an_entry_heavier_than_a_shard_is_declined_and_remembered() {
        let cache = ColumnCache::new(1 << 20).expect("a cache");
        let seg = SegmentToken::new();
        let small: ArrayRef = Arc::new(Int64Array::from(vec![1i64; 1000]));
        let big: ArrayRef = Arc::new(Int64Array::from(vec![1i64; 200_000]));
        cache.insert(seg, 0, 0, small);
        cache.insert(seg, 0, 1, big);
        assert!(cache.contains(seg, 0, 0) && !cache.declined(seg, 0, 0));
        assert!(!cache.contains(seg, 0, 1) && cache.declined(seg, 0, 1));
        assert!(!cache.declined(SegmentToken::new(), 0, 1));
        assert!(cache.stats().used_bytes >= 8000);
    }
}
