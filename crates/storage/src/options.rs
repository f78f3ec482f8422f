//! Tablet configuration.

use std::time::Duration;

use crate::error::StorageError;

/// When a write counts as durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// A write is acknowledged only after its WAL record is synced to disk. Concurrent writers
    /// share one sync (group commit). The default.
    Sync,
    /// A write is acknowledged once it is in the WAL's memory; a background flush syncs at least
    /// every `interval`. A crash loses at most the writes of the last interval.
    Async {
        /// Upper bound on the age of an unsynced write.
        interval: Duration,
    },
}

/// Page compression of segments.
///
/// LZ4 is the default: a point lookup decompresses one page per column, and zstd's
/// decompression context costs more to set up (per column, per lookup) than the page costs to
/// decode; dictionary and run-length encodings already do most of the shrinking for typical
/// data. zstd suits archival tables that are scanned, not probed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentCompression {
    /// No compression beyond Parquet's encodings.
    None,
    /// LZ4 (raw block format).
    Lz4,
    /// zstd at this level (1..=22).
    Zstd(i32),
}

/// Settings of one tablet. The defaults suit a server; tests shrink the thresholds.
#[derive(Clone, Debug)]
pub struct TabletOptions {
    /// Durability of acknowledged writes.
    pub durability: Durability,
    /// Largest accepted string/binary cell, in bytes.
    pub max_cell_bytes: usize,
    /// Largest accepted row (encoded), in bytes.
    pub max_row_bytes: usize,
    /// Largest accepted write batch, in rows.
    pub max_batch_rows: usize,
    /// The write buffer is flushed in the background once it holds this many bytes
    /// (`None`: only explicit flushes).
    pub flush_threshold_bytes: Option<usize>,
    /// Whether the maintenance manager merges and rewrites this tablet's segments on its own
    /// (see `maintenance.rs`). Off only for tests that count segments.
    pub background_compaction: bool,
    /// How long superseded row versions are kept for snapshot reads at past timestamps.
    pub history_retention: Duration,
    /// Rows per Parquet data page: a point lookup decodes about this many values per column.
    pub page_rows: usize,
    /// Rows per key block: what a presence check or lookup decodes (and caches) of a
    /// segment's key columns to find a key; the key index samples one key per block.
    pub key_block_rows: usize,
    /// Rows per Parquet row group: the unit of statistics pruning and of scan parallelism.
    pub row_group_rows: usize,
    /// How segment pages are compressed.
    pub compression: SegmentCompression,
    /// Size of the metadata store's page cache, in bytes.
    pub meta_cache_bytes: u64,
    /// Memory for decoded key blocks of segments (presence checks and lookups), in bytes.
    pub key_cache_bytes: u64,
    /// Memory for decoded segment columns that scans come back to, in bytes (0: none). The
    /// tablets of a [`crate::Database`] share one cache of this size; a standalone tablet has
    /// its own.
    pub column_cache_bytes: u64,
}

impl TabletOptions {
    /// Checks that the settings make sense (sizes at least 1, within their encodings).
    pub fn validate(&self) -> Result<(), StorageError> {
        let bad = |what: &str| Err(StorageError::InvalidInput(format!("tablet option {what}")));
        if self.page_rows == 0 || self.page_rows > u32::MAX as usize {
            return bad("page_rows must be between 1 and 2^32 - 1");
        }
        if self.key_block_rows == 0 || self.key_block_rows > u32::MAX as usize {
            return bad("key_block_rows must be between 1 and 2^32 - 1");
        }
        if self.row_group_rows == 0 {
            return bad("row_group_rows must be at least 1");
        }
        if self.max_cell_bytes == 0 || self.max_row_bytes == 0 || self.max_batch_rows == 0 {
            return bad(
                "limits (max_cell_bytes, max_row_bytes, max_batch_rows) must be at least 1",
            );
        }
        if let SegmentCompression::Zstd(level) = self.compression {
            if !(1..=22).contains(&level) {
                return bad("zstd level must be between 1 and 22");
            }
        }
        Ok(())
    }
}

impl Default for TabletOptions {
    fn default() -> Self {
        TabletOptions {
            durability: Durability::Sync,
            max_cell_bytes: 64 * 1024,
            max_row_bytes: 256 * 1024,
            max_batch_rows: 1_000_000,
            flush_threshold_bytes: Some(128 * 1024 * 1024),
            background_compaction: true,
            history_retention: Duration::from_secs(15 * 60),
            page_rows: 4096,
            // A quarter page: a block miss decodes 1,024 rows of the key columns instead of
            // 4,096 (criterion upserts with half the keys in segments, whose presence checks
            // miss the cache often, 256k -> 294k rows/s).
            key_block_rows: 1024,
            row_group_rows: 256 * 1024,
            compression: SegmentCompression::Lz4,
            meta_cache_bytes: 64 * 1024 * 1024,
            key_cache_bytes: 128 * 1024 * 1024,
            // The columns the traffic queries read, decoded, for 10M rows: ~420 MiB.
            column_cache_bytes: 1024 * 1024 * 1024,
        }
    }
}
