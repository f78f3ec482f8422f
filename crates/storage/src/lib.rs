//! Nyala's storage engine: tablets.
//!
//! A [`Database`] holds named tables, each split into tablets ([`db`]); a [`Tablet`] stores
//! the rows of one partition of a table. Module map of the tablet, following a write and then
//! a read:
//!
//! - [`write`]: batches of row operations, validation, WAL record encoding;
//! - `tablet`: the write path (locate key, decide, apply, group commit, publish), flushes,
//!   checkpoints and recovery; the invariants that hold it together are documented there;
//! - `memtable`: the row-oriented write buffer (B+ tree of key versions);
//! - `segment`: immutable sorted runs, in memory after a freeze and in Parquet after a flush;
//! - `pointread`: one row of a Parquet segment, decoded value by value where it sits;
//! - `keyindex`: per-segment key samples and filter, for point lookups and presence checks;
//! - `dv`: deletion vectors with timestamps;
//! - `compact`: merging segments (purging rows no snapshot can see);
//! - `maintenance`: the background flush/compaction manager and the write memory budget;
//! - `resolve`: finding a key's live copy and applying a batch (live writes and WAL replay);
//! - `wal`: the write-ahead log files;
//! - `store`: the sled metadata store (manifest, persisted deletions);
//! - [`scan`] and [`predicate`]: snapshot scans, predicate evaluation and pruning.
//!
//! If you change the row or key encoding, also change the WAL and segment formats' versions;
//! if you change how a batch is applied, recovery replays through the same code (good), but
//! old WAL records must still decide the same way.

mod bytelist;
pub mod clock;
mod colcache;
mod compact;
pub mod db;
mod dv;
pub mod error;
mod keyindex;
mod maintenance;
mod memtable;
pub mod options;
mod pointread;
pub mod predicate;
mod resolve;
pub mod scan;
mod segment;
mod store;
mod syncpool;
mod tablet;
mod wal;
pub mod write;

pub use clock::Timestamp;
pub use colcache::ColumnCacheStats;
pub use db::names::TableName;
pub use db::partition::{PartitionSpec, RangeBounds};
pub use db::{Database, DatabaseOptions, IfExists, SchemaChange, Table, TableInfo, TableScan};
pub use error::{Result, StorageError};
pub use maintenance::{machine_memory_bytes, MaintenanceOptions, MaintenanceStats};
pub use options::{Durability, SegmentCompression, TabletOptions};
pub use predicate::{CmpOp, Predicate};
pub use scan::{ScanRequest, TabletScan, DEFAULT_BATCH_ROWS};
pub use tablet::{CompactionReport, Tablet, TabletStats};
pub use write::{BatchBuilder, RowError, RowErrorKind, WriteBatch, WriteOp, WriteOutcome};

pub use nyala_common::{ColumnSchema, DataType, Schema, Value};
