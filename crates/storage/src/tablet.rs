//! The tablet: one write buffer, its segments, its WAL; the unit of writes, flushes and scans.
//!
//! # Write path
//! `write` validates the batch (no lock), then under the writer lock: takes a commit
//! timestamp, appends one WAL record, and applies every row: it locates the key (buffer, then
//! segments newest first, culled by key range and filter), decides the outcome per Kudu's
//! semantics, and records the effect as a buffer version or a deletion-vector bit. It then
//! waits for durability (group commit: one sync covers every batch appended before it) and
//! publishes the timestamp, making the whole batch visible at once.
//!
//! # Invariants
//! 1. Every live key lives in exactly one place: the buffer or one row of one segment. So scans
//!    union the sources without merging by key.
//! 2. Effects of a batch carry its timestamp and the published snapshot only moves past it once
//!    the batch is fully applied (and, with sync durability, durable): readers never see half a
//!    batch and are never blocked by the writer.
//! 3. The manifest's checkpoint `c` means every write with timestamp `<= c` is in its segments
//!    and deletion vectors; recovery replays WAL records after `c`, re-deciding each row against
//!    the recovered state, which reproduces the original outcomes.
//! 4. A segment's row numbers never change, so deletion vectors stay valid across the
//!    in-memory to on-disk hand-over.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use arrow::array::RecordBatch;
use parking_lot::{Condvar, Mutex};

use nyala_common::{RowCodec, Schema, Value};

use crate::clock::{Clock, Timestamp};
use crate::colcache::ColumnCache;
use crate::dv::DeleteVector;
use crate::error::{Result, StorageError};
use crate::maintenance::{
    compaction_candidate, flush_candidate, BufferState, Candidate, Maintenance, MaintenanceOptions,
    Op, SegmentState, Shared as MaintenanceShared,
};
use crate::memtable::MemTable;
use crate::options::{Durability, TabletOptions};
use crate::resolve::Resolver;
use crate::scan::{Part, ScanRequest, TabletScan};
use crate::segment::Segment;
use crate::store::{Manifest, MetaStore};
use crate::syncpool::PendingSync;
use crate::wal::Wal;
use crate::write::{
    decode_wal_record, encode_wal_record, validate, ValidatedBatch, WriteBatch, WriteOutcome,
};

/// What readers pin: the write buffer and the segments at one moment. Replaced (never
/// mutated) when a flush freezes the buffer or installs a segment.
#[derive(Debug)]
pub(crate) struct Version {
    /// The schema of this version; the buffer's rows are encoded with it. Segments may hold
    /// older column sets and are read through it by column id.
    pub codec: Arc<RowCodec>,
    pub memtable: Arc<MemTable>,
    /// Oldest first.
    pub segments: Vec<Arc<Segment>>,
}

/// A flush in progress: the frozen buffer became `segment` (or nothing, if no row survived);
/// installing it moves the checkpoint to `upto`.
#[derive(Debug)]
struct PendingFlush {
    segment: Option<u64>,
    upto: Timestamp,
}

#[derive(Debug)]
struct WriterState {
    next_segment_id: u64,
    checkpoint_ts: Timestamp,
    pending: Vec<PendingFlush>,
}

/// What one compaction did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactionReport {
    /// Segments merged.
    pub input_segments: usize,
    /// Rows read, including deleted ones.
    pub input_rows: u64,
    /// Bytes of the input files.
    pub input_bytes: u64,
    /// Rows written (0 if every input row was purged).
    pub output_rows: u64,
    /// Bytes of the new file.
    pub output_bytes: u64,
    /// Rows purged: deleted or superseded at or before the history horizon.
    pub purged_rows: u64,
}

/// Counters and gauges of one tablet, for monitoring and tests.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TabletStats {
    /// Row versions in the write buffer.
    pub buffer_versions: usize,
    /// Approximate bytes in the write buffer.
    pub buffer_bytes: usize,
    /// Segments (in memory awaiting flush, and on disk).
    pub segments: usize,
    /// Segments still in memory.
    pub segments_in_memory: usize,
    /// Rows in segments, including deleted ones.
    pub segment_rows: u64,
    /// Rows in segments marked deleted.
    pub deleted_rows: u64,
    /// Bytes of segment files.
    pub segment_file_bytes: u64,
    /// Bytes of key indexes and in-memory segments held in memory.
    pub index_memory_bytes: usize,
    /// Latest committed timestamp.
    pub latest_timestamp: Timestamp,
    /// Timestamp up to which all writes are in segments.
    pub checkpoint_timestamp: Timestamp,
    /// About how many on-disk segments a key lookup considers (1.0: none overlap; see
    /// `maintenance::average_segments_per_key`). What merging compactions bring down.
    pub segments_per_key: f64,
    /// Flushes since the tablet was opened, and the bytes of segment files they wrote.
    pub flushes: u64,
    pub bytes_flushed: u64,
    /// Compactions since the tablet was opened, and the bytes of segment files they read.
    pub compactions: u64,
    pub bytes_compacted: u64,
    /// Rows compactions purged (deleted or superseded before the history horizon).
    pub rows_purged: u64,
}

/// Running totals behind [`TabletStats`].
#[derive(Debug, Default)]
struct TabletCounters {
    flushes: AtomicU64,
    bytes_flushed: AtomicU64,
    compactions: AtomicU64,
    bytes_compacted: AtomicU64,
    rows_purged: AtomicU64,
}

impl TabletStats {
    /// About how many live rows the tablet holds: segment rows not deleted plus buffered
    /// versions (a key updated in the buffer counts once per version). For planners and
    /// gauges, not an exact count.
    pub fn estimated_rows(&self) -> u64 {
        self.segment_rows.saturating_sub(self.deleted_rows) + self.buffer_versions as u64
    }
}

/// What a tablet shares with the other tablets of its process.
#[derive(Clone, Debug)]
pub(crate) struct TabletEnv {
    /// One timestamp names one moment in every tablet.
    pub clock: Arc<Clock>,
    /// The maintenance manager: background flushes and compactions, the memory budget.
    pub maintenance: Arc<MaintenanceShared>,
    /// Decoded segment columns for scans (`None`: no cache).
    pub columns: Option<Arc<ColumnCache>>,
}

pub(crate) struct Inner {
    segment_dir: PathBuf,
    res: Resolver,
    opts: TabletOptions,
    store: MetaStore,
    wal: Wal,
    /// Shared by every tablet of a database, so one timestamp names one moment in all of them.
    clock: Arc<Clock>,
    version: ArcSwap<Version>,
    /// Latest timestamp readers may use (invariant 2).
    visible: AtomicU64,
    /// Latest timestamp applied to the in-memory state (writer lock held to change).
    applied: AtomicU64,
    /// Latest timestamp whose WAL record is appended (writer lock held to change).
    appended: AtomicU64,
    /// Latest timestamp whose WAL record is durable.
    durable: AtomicU64,
    /// Oldest readable snapshot.
    horizon: AtomicU64,
    writer: Mutex<WriterState>,
    sync_lock: Mutex<()>,
    flush_lock: Mutex<()>,
    /// One compaction at a time per tablet (flushes carry on meanwhile).
    compact_lock: Mutex<()>,
    poisoned: Mutex<Option<String>>,
    maintenance: Arc<MaintenanceShared>,
    /// Decoded segment columns, shared with the other tablets of the database.
    columns: Option<Arc<ColumnCache>>,
    /// Bytes this tablet charges to the process's memory budget (buffer plus frozen buffers).
    charged: AtomicUsize,
    /// Serialises re-measuring the charge, so that concurrent writers pass their changes on
    /// in order (the budget's counter never goes below what is really held).
    charge_lock: Mutex<()>,
    /// Set when the tablet is closing: background work stops picking it.
    closed: AtomicBool,
    /// A background flush / compaction of this tablet is claimed by a worker.
    flush_claimed: AtomicBool,
    compact_claimed: AtomicBool,
    /// Stops the async-durability syncer.
    syncer_stop: Arc<(Mutex<bool>, Condvar)>,
    counters: TabletCounters,
}

/// Rows in a batch from which, with sync durability, its WAL record is synced on the sync
/// pool while the batch is applied.
const OVERLAP_SYNC_ROWS: usize = 256;

/// A tablet. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct Tablet {
    inner: Arc<Inner>,
    /// Syncs the WAL at the interval of `Durability::Async`.
    syncer: Option<JoinHandle<()>>,
    /// A standalone tablet's own maintenance manager (a database's tablets share one).
    _own_maintenance: Option<Maintenance>,
}

impl std::fmt::Debug for Tablet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tablet")
            .field("dir", &self.inner.segment_dir)
            .finish_non_exhaustive()
    }
}

fn meta_dir(dir: &Path) -> PathBuf {
    dir.join("meta")
}

fn wal_dir(dir: &Path) -> PathBuf {
    dir.join("wal")
}

fn segment_dir(dir: &Path) -> PathBuf {
    dir.join("segments")
}

impl Tablet {
    /// Creates a new, empty tablet in `dir` (which must not hold one already).
    /// A standalone tablet runs its own maintenance manager with default settings (one
    /// worker); the tablets of a [`crate::Database`] share the database's.
    pub fn create(dir: &Path, schema: &Schema, opts: TabletOptions) -> Result<Tablet> {
        let own = standalone_maintenance()?;
        let env = TabletEnv {
            clock: Arc::default(),
            maintenance: own.shared().clone(),
            columns: ColumnCache::new(opts.column_cache_bytes),
        };
        let mut t = Tablet::create_in(dir, schema, opts, &env)?;
        t._own_maintenance = Some(own);
        Ok(t)
    }

    /// [`Tablet::create`] sharing a clock and maintenance manager with other tablets.
    pub(crate) fn create_in(
        dir: &Path,
        schema: &Schema,
        opts: TabletOptions,
        env: &TabletEnv,
    ) -> Result<Tablet> {
        opts.validate()?;
        std::fs::create_dir_all(segment_dir(dir))?;
        let store = open_store(dir, &opts)?;
        if store.load_manifest()?.is_some() {
            return Err(StorageError::AlreadyExists(format!(
                "a tablet already exists in {}",
                dir.display()
            )));
        }
        store.create(&Manifest::new(schema.def().clone()))?;
        // Keep the store open: sled releases its directory lock from a background thread, so
        // closing and reopening it here could find it still locked.
        Tablet::open_store(dir, opts, env, store)
    }

    /// Opens the tablet in `dir`, recovering every acknowledged write. Standalone, as with
    /// [`Tablet::create`].
    pub fn open(dir: &Path, opts: TabletOptions) -> Result<Tablet> {
        let own = standalone_maintenance()?;
        let env = TabletEnv {
            clock: Arc::default(),
            maintenance: own.shared().clone(),
            columns: ColumnCache::new(opts.column_cache_bytes),
        };
        let mut t = Tablet::open_in(dir, opts, &env)?;
        t._own_maintenance = Some(own);
        Ok(t)
    }

    /// [`Tablet::open`] sharing a clock and maintenance manager with other tablets.
    pub(crate) fn open_in(dir: &Path, opts: TabletOptions, env: &TabletEnv) -> Result<Tablet> {
        opts.validate()?;
        if !meta_dir(dir).exists() {
            return Err(StorageError::NotFound(format!(
                "no tablet in {}",
                dir.display()
            )));
        }
        let store = open_store(dir, &opts)?;
        Tablet::open_store(dir, opts, env, store)
    }

    fn open_store(
        dir: &Path,
        opts: TabletOptions,
        env: &TabletEnv,
        store: MetaStore,
    ) -> Result<Tablet> {
        let clock = env.clock.clone();
        let manifest = store
            .load_manifest()?
            .ok_or_else(|| StorageError::NotFound(format!("no tablet in {}", dir.display())))?;
        let schema = Schema::from_def(manifest.schema.clone())?;
        let codec = Arc::new(RowCodec::new(&schema)?);
        let seg_dir = segment_dir(dir);
        std::fs::create_dir_all(&seg_dir)?;
        remove_unlisted_files(&seg_dir, &manifest)?;
        clock.observe(manifest.checkpoint_ts);
        let mut segments = Vec::with_capacity(manifest.segments.len());
        for meta in &manifest.segments {
            clock.observe(meta.max_ts);
            let dv = DeleteVector::from_persisted(
                store.load_deletions(meta.id)?,
                manifest.checkpoint_ts,
            );
            segments.push(Arc::new(Segment::open(
                &seg_dir,
                meta.clone(),
                Arc::new(dv),
            )?));
        }
        let version = Version {
            codec,
            memtable: Arc::new(MemTable::default()),
            segments,
        };
        let res = Resolver::new(opts.key_cache_bytes);
        // Replay the WAL after the checkpoint through the write path. Limits may have been
        // lowered since a record was accepted: replay must not refuse it.
        let relaxed = TabletOptions {
            max_cell_bytes: usize::MAX,
            max_row_bytes: usize::MAX,
            max_batch_rows: usize::MAX,
            ..opts.clone()
        };
        let mut replayed = 0usize;
        let mut last = manifest.checkpoint_ts;
        let wal = Wal::open(&wal_dir(dir), manifest.checkpoint_ts, |rec| {
            let batch = decode_wal_record(&rec.payload)?;
            let vb = validate(&version.codec, &relaxed, &batch)?;
            res.apply(&version, &vb, rec.ts)?;
            last = rec.ts;
            replayed += 1;
            Ok(())
        })?;
        if replayed > 0 {
            tracing::info!(records = replayed, "replayed WAL");
        }
        clock.observe(last);
        // Start the readable timestamp at "now" (a timestamp no write has; later writes get
        // larger ones), so that even an idle tablet's latest snapshot is within retention.
        let now = clock.next();
        let inner = Arc::new(Inner {
            segment_dir: seg_dir,
            res,
            opts,
            store,
            wal,
            clock,
            version: ArcSwap::from_pointee(version),
            visible: AtomicU64::new(now),
            applied: AtomicU64::new(now),
            appended: AtomicU64::new(now),
            durable: AtomicU64::new(now),
            horizon: AtomicU64::new(manifest.history_horizon),
            writer: Mutex::new(WriterState {
                next_segment_id: manifest.next_segment_id,
                checkpoint_ts: manifest.checkpoint_ts,
                pending: vec![],
            }),
            sync_lock: Mutex::new(()),
            flush_lock: Mutex::new(()),
            compact_lock: Mutex::new(()),
            poisoned: Mutex::new(None),
            maintenance: env.maintenance.clone(),
            columns: env.columns.clone(),
            charged: AtomicUsize::new(0),
            charge_lock: Mutex::new(()),
            closed: AtomicBool::new(false),
            flush_claimed: AtomicBool::new(false),
            compact_claimed: AtomicBool::new(false),
            syncer_stop: Arc::default(),
            counters: TabletCounters::default(),
        });
        let syncer = match inner.opts.durability {
            Durability::Async { interval } => Some(spawn_syncer(&inner, interval)?),
            Durability::Sync => None,
        };
        // Replayed writes sit in the buffer: charge them.
        inner.recharge();
        env.maintenance.register(Arc::downgrade(&inner));
        Ok(Tablet {
            inner,
            syncer,
            _own_maintenance: None,
        })
    }

    /// The table schema this tablet stores (its current version).
    pub fn schema(&self) -> Schema {
        self.inner.version.load().codec.schema().clone()
    }

    /// The latest readable timestamp: a snapshot at it sees every acknowledged write.
    pub fn latest_timestamp(&self) -> Timestamp {
        self.inner.visible.load(Ordering::Acquire)
    }

    /// Applies a batch of row operations atomically. Batch-level problems (schema, types, NULL
    /// keys, sizes) reject the whole batch and write nothing; per-row outcomes (duplicate key,
    /// missing key) are reported by row index while the rest applies. Returns once the batch is
    /// durable (per the durability setting) and visible.
    pub fn write(&self, batch: &WriteBatch) -> Result<WriteOutcome> {
        let vb = self.validate(batch)?;
        self.admit_write()?;
        self.inner.write(vb)
    }

    /// Write backpressure (see `maintenance.rs`): returns once a write may go ahead, or
    /// `Busy`. [`Tablet::write`] calls it; a table calls it once for a whole batch, before any
    /// tablet applies its part, so that a busy batch writes nothing anywhere.
    pub(crate) fn admit_write(&self) -> Result<()> {
        self.inner.maintenance.admit_write()
    }

    /// The first half of [`Tablet::write`]: checks a batch without writing anything, so that a
    /// table can check every tablet's part of a batch before applying any.
    pub(crate) fn validate(&self, batch: &WriteBatch) -> Result<ValidatedBatch> {
        validate(&self.inner.version.load().codec, &self.inner.opts, batch)
    }

    /// The second half of [`Tablet::write`].
    pub(crate) fn write_validated(&self, batch: ValidatedBatch) -> Result<WriteOutcome> {
        self.inner.write(batch)
    }

    /// Changes the schema to `new` (a later version of the current one with the same key:
    /// columns added, dropped or renamed), without rewriting segments.
    ///
    /// Rows in the buffer are encoded with the old schema and the WAL holds batches checked
    /// against it, so the change first flushes everything (most of it while writers carry on,
    /// the rest under the writer lock), then persists the new schema together with a
    /// checkpoint that covers every write: no WAL record older than the new schema is ever
    /// replayed. Segments keep their columns; readers map them by column id.
    pub(crate) fn alter_schema(&self, new: &Schema) -> Result<()> {
        let inner = &self.inner;
        inner.flush()?;
        let _f = inner.flush_lock.lock();
        let mut w = inner.writer.lock();
        inner.check_poisoned()?;
        let current = inner.version.load_full().codec.schema().clone();
        if current == *new {
            return Ok(());
        }
        let same_key = |s: &Schema| -> Vec<(u32, nyala_common::DataType)> {
            s.key_indices()
                .iter()
                .map(|&k| (s.columns()[k].id, s.columns()[k].data_type))
                .collect()
        };
        if new.version() <= current.version() || same_key(new) != same_key(&current) {
            return Err(StorageError::InvalidInput(format!(
                "schema version {} cannot replace version {} (it must be newer, with the same key)",
                new.version(),
                current.version()
            )));
        }
        inner.freeze_locked(&mut w)?;
        while let Some(p) = w.pending.first() {
            let (seg_id, upto) = (p.segment, p.upto);
            let written = match seg_id {
                None => None,
                Some(id) => {
                    let v = inner.version.load_full();
                    let mem = v.segments.iter().find(|s| s.meta.id == id).ok_or_else(|| {
                        StorageError::Corrupt(format!("pending segment {id} vanished"))
                    })?;
                    Some(Arc::new(mem.write_to_disk(
                        &inner.segment_dir,
                        &v.codec,
                        &inner.opts,
                    )?))
                }
            };
            inner.install_locked(&mut w, written, upto)?;
            inner.wal.remove_upto(upto)?;
        }
        let v = inner.version.load_full();
        debug_assert!(v.memtable.is_empty() && v.segments.iter().all(|s| !s.is_in_memory()));
        let manifest = Manifest {
            format: Manifest::new(new.def().clone()).format,
            schema: new.def().clone(),
            next_segment_id: w.next_segment_id,
            checkpoint_ts: w.checkpoint_ts,
            history_horizon: inner.horizon.load(Ordering::Acquire),
            segments: v.segments.iter().map(|s| s.meta.clone()).collect(),
        };
        inner.store.checkpoint(&manifest, &[])?;
        inner.version.store(Arc::new(Version {
            codec: Arc::new(RowCodec::new(new)?),
            memtable: v.memtable.clone(),
            segments: v.segments.clone(),
        }));
        Ok(())
    }

    /// Makes `ts` readable here: returns once every write with a timestamp `<= ts` is visible.
    ///
    /// For snapshots across the tablets of a database: `ts` must come from the shared clock
    /// (so later writes get larger timestamps). Writes take their timestamp and apply under the
    /// writer lock, so once we hold it every write at or before `ts` is applied; with sync
    /// durability we then wait for those to be durable (joining the group commit).
    pub(crate) fn make_visible(&self, ts: Timestamp) -> Result<()> {
        let inner = &self.inner;
        if inner.visible.load(Ordering::Acquire) >= ts {
            return Ok(());
        }
        let applied = {
            let _w = inner.writer.lock();
            inner.clock.observe(ts);
            inner.applied.load(Ordering::Acquire)
        };
        if inner.opts.durability == Durability::Sync {
            inner.sync_upto(applied.min(ts))?;
        }
        inner.visible.fetch_max(ts, Ordering::AcqRel);
        Ok(())
    }

    /// The live row with this primary key (values in key order), at the latest snapshot.
    pub fn get(&self, key: &[Value]) -> Result<Option<Vec<Value>>> {
        self.at_latest(|ts| self.get_at(key, ts))
    }

    /// Runs a read at the latest snapshot. With a very short history retention, a concurrent
    /// flush may purge the history behind a snapshot between choosing and reading it; a read
    /// that asked for "the latest" then simply takes the new latest.
    fn at_latest<T>(&self, read: impl Fn(Timestamp) -> Result<T>) -> Result<T> {
        let mut attempts = 0;
        loop {
            match read(self.latest_timestamp()) {
                Err(StorageError::SnapshotTooOld { .. }) if attempts < 100 => attempts += 1,
                other => return other,
            }
        }
    }

    /// [`Tablet::get`] as a one-row batch (every column, schema order).
    pub fn get_batch(&self, key: &[Value]) -> Result<Option<RecordBatch>> {
        self.at_latest(|ts| self.get_batch_at(key, ts))
    }

    /// The row with this primary key as of `snapshot`.
    pub fn get_at(&self, key: &[Value], snapshot: Timestamp) -> Result<Option<Vec<Value>>> {
        self.get_batch_at(key, snapshot)?
            .map(|b| row_values(&b))
            .transpose()
    }

    /// [`Tablet::get_at`] as a one-row batch.
    pub fn get_batch_at(&self, key: &[Value], snapshot: Timestamp) -> Result<Option<RecordBatch>> {
        self.inner.check_snapshot(snapshot)?;
        let version = self.inner.version.load_full();
        let key = version.codec.encode_key_values(key)?;
        // A freeze may have purged history past the snapshot since the first check.
        self.inner.check_snapshot(snapshot)?;
        self.inner.res.lookup(&version, &key, snapshot)
    }

    /// Starts a scan: batches of the rows matching the request at one snapshot.
    pub fn scan(&self, req: &ScanRequest) -> Result<TabletScan> {
        match req.snapshot {
            Some(snapshot) => self.scan_at(req, snapshot),
            None => self.at_latest(|ts| self.scan_at(req, ts)),
        }
    }

    fn scan_at(&self, req: &ScanRequest, snapshot: Timestamp) -> Result<TabletScan> {
        let version = self.pin_version(snapshot)?;
        self.new_scan(version, req, snapshot, Part::WHOLE)
    }

    /// The tablet's current version, for the parts of a scan at `snapshot` to share (see
    /// [`Tablet::scan_part`]).
    pub(crate) fn pin_version(&self, snapshot: Timestamp) -> Result<Arc<Version>> {
        self.inner.check_snapshot(snapshot)?;
        let version = self.inner.version.load_full();
        // A freeze may have purged history past the snapshot since the first check.
        self.inner.check_snapshot(snapshot)?;
        Ok(version)
    }

    /// Part `part` of a scan of `version` (from [`Tablet::pin_version`]) at `snapshot`: the
    /// parts of one version together read every row once.
    pub(crate) fn scan_part(
        &self,
        version: &Arc<Version>,
        req: &ScanRequest,
        snapshot: Timestamp,
        part: Part,
    ) -> Result<TabletScan> {
        self.inner.check_snapshot(snapshot)?;
        self.new_scan(version.clone(), req, snapshot, part)
    }

    fn new_scan(
        &self,
        version: Arc<Version>,
        req: &ScanRequest,
        snapshot: Timestamp,
        part: Part,
    ) -> Result<TabletScan> {
        TabletScan::new(
            version,
            snapshot,
            req,
            self.inner.columns.clone(),
            part,
            |v, k, s| self.inner.res.lookup(v, k, s),
        )
    }

    /// Writes the write buffer (and any frozen buffer awaiting its flush) to Parquet segments
    /// and moves the checkpoint. Safe to call at any time; writers and readers carry on.
    pub fn flush(&self) -> Result<()> {
        self.inner.flush()
    }

    /// Merges every on-disk segment into one, purging rows deleted or superseded before the
    /// history horizon. Writers and readers carry on meanwhile. A maintenance tool and a test
    /// hook: background maintenance merges within an IO budget instead.
    pub fn compact_all(&self) -> Result<CompactionReport> {
        // Chosen under the compaction lock: a background compaction may replace segments
        // until then.
        let _c = self.inner.compact_lock.lock();
        let ids: Vec<u64> = self
            .inner
            .version
            .load()
            .segments
            .iter()
            .filter(|s| !s.is_in_memory())
            .map(|s| s.meta.id)
            .collect();
        if ids.is_empty() {
            return Ok(CompactionReport::default());
        }
        self.inner.compact_locked(&ids, || {})
    }

    /// Current counters and gauges.
    pub fn stats(&self) -> TabletStats {
        let v = self.inner.version.load_full();
        let w = self.inner.writer.lock();
        let c = &self.inner.counters;
        TabletStats {
            buffer_versions: v.memtable.len(),
            buffer_bytes: v.memtable.bytes(),
            segments: v.segments.len(),
            segments_in_memory: v.segments.iter().filter(|s| s.is_in_memory()).count(),
            segment_rows: v.segments.iter().map(|s| s.meta.rows).sum(),
            deleted_rows: v.segments.iter().map(|s| s.dv.len()).sum(),
            segment_file_bytes: v.segments.iter().map(|s| s.meta.file_bytes).sum(),
            index_memory_bytes: v.segments.iter().map(|s| s.memory_bytes()).sum(),
            latest_timestamp: self.latest_timestamp(),
            checkpoint_timestamp: w.checkpoint_ts,
            segments_per_key: crate::maintenance::average_segments_per_key(
                &v.segments
                    .iter()
                    .filter(|s| !s.is_in_memory())
                    .map(|s| &s.meta)
                    .collect::<Vec<_>>(),
            ),
            flushes: c.flushes.load(Ordering::Relaxed),
            bytes_flushed: c.bytes_flushed.load(Ordering::Relaxed),
            compactions: c.compactions.load(Ordering::Relaxed),
            bytes_compacted: c.bytes_compacted.load(Ordering::Relaxed),
            rows_purged: c.rows_purged.load(Ordering::Relaxed),
        }
    }

    /// Bytes on disk: segment files plus WAL and metadata.
    pub fn disk_bytes(&self) -> u64 {
        self.stats().segment_file_bytes
            + self.inner.wal.size_on_disk()
            + self.inner.store.size_on_disk()
    }
}

impl Drop for Tablet {
    fn drop(&mut self) {
        let inner = &self.inner;
        // No new background work; wait for any running one (they hold these locks, and check
        // the flag once they have them).
        inner.closed.store(true, Ordering::Release);
        drop(inner.flush_lock.lock());
        drop(inner.compact_lock.lock());
        {
            let (stop, cv) = &*inner.syncer_stop;
            *stop.lock() = true;
            cv.notify_all();
        }
        if let Some(h) = self.syncer.take() {
            let _ = h.join();
        }
        // Make async-durability writes durable on a clean close.
        let _ = inner.wal.sync();
        // Give the buffer's memory back to the budget.
        let _g = inner.charge_lock.lock();
        let charged = inner.charged.swap(0, Ordering::AcqRel);
        inner.maintenance.charge(-(charged as isize));
    }
}

/// The maintenance manager of a standalone tablet.
fn standalone_maintenance() -> Result<Maintenance> {
    Maintenance::start(MaintenanceOptions {
        threads: 1,
        ..MaintenanceOptions::default()
    })
}

fn open_store(dir: &Path, opts: &TabletOptions) -> Result<MetaStore> {
    MetaStore::open(&meta_dir(dir), opts.meta_cache_bytes)
}

/// Deletes segment files the manifest does not name: leftovers of a flush that crashed before
/// its checkpoint (they were never visible).
fn remove_unlisted_files(dir: &Path, manifest: &Manifest) -> Result<()> {
    let listed: std::collections::HashSet<PathBuf> = manifest
        .segments
        .iter()
        .flat_map(|m| {
            let (a, b) = crate::segment::segment_paths(dir, m.id);
            [a, b]
        })
        .collect();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if !listed.contains(&path) {
            tracing::info!(file = %path.display(), "removing unlisted segment file");
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// The async-durability syncer: syncs the WAL at least every `interval`.
fn spawn_syncer(inner: &Arc<Inner>, interval: Duration) -> Result<JoinHandle<()>> {
    let weak: Weak<Inner> = Arc::downgrade(inner);
    let stop = inner.syncer_stop.clone();
    let tick = interval.clamp(Duration::from_millis(1), Duration::from_secs(1));
    std::thread::Builder::new()
        .name("nyala-sync".into())
        .spawn(move || loop {
            {
                let (stopped, cv) = &*stop;
                let mut g = stopped.lock();
                if !*g {
                    cv.wait_for(&mut g, tick);
                }
                if *g {
                    return;
                }
            }
            let Some(inner) = weak.upgrade() else { return };
            if inner.poisoned.lock().is_some() {
                continue;
            }
            let applied = inner.applied.load(Ordering::Acquire);
            if let Err(e) = inner.sync_upto(applied) {
                inner.poison(&e);
            }
        })
        .map_err(StorageError::Io)
}

impl Inner {
    /// Re-measures the bytes this tablet charges to the memory budget (the buffer and frozen
    /// buffers awaiting their flush) and passes the change on.
    fn recharge(&self) {
        let _g = self.charge_lock.lock();
        if self.closed.load(Ordering::Acquire) {
            // Closed: its charge was given back and is never taken again.
            return;
        }
        let v = self.version.load();
        let now = v.memtable.bytes()
            + v.segments
                .iter()
                .filter(|s| s.is_in_memory())
                .map(|s| s.memory_bytes())
                .sum::<usize>();
        let before = self.charged.swap(now, Ordering::AcqRel);
        if now != before {
            self.maintenance.charge(now as isize - before as isize);
        }
    }

    /// What background maintenance this tablet could use now, with scores.
    pub(crate) fn maintenance_candidates(
        &self,
        opts: &MaintenanceOptions,
        used: usize,
    ) -> Vec<Candidate> {
        if self.closed.load(Ordering::Acquire) || self.poisoned.lock().is_some() {
            return vec![];
        }
        let mut out = vec![];
        let v = self.version.load_full();
        if self.opts.flush_threshold_bytes.is_some() && !self.flush_claimed.load(Ordering::Acquire)
        {
            let b = BufferState {
                bytes: self.charged.load(Ordering::Acquire),
                threshold: self.opts.flush_threshold_bytes,
                age: v.memtable.age(),
                wal_bytes: self.wal.size_on_disk(),
                pending: v.segments.iter().any(|s| s.is_in_memory()),
            };
            out.extend(flush_candidate(&b, opts, used));
        }
        if self.opts.background_compaction && !self.compact_claimed.load(Ordering::Acquire) {
            let purge_at = self.purge_horizon();
            let states: Vec<SegmentState<'_>> = v
                .segments
                .iter()
                .filter(|s| !s.is_in_memory())
                .map(|s| SegmentState {
                    meta: &s.meta,
                    purgeable_rows: s.dv.deleted_count_at(purge_at),
                })
                .collect();
            out.extend(compaction_candidate(&states, opts));
        }
        out
    }

    /// Marks `op` as taken by a worker; false if one already has it.
    pub(crate) fn claim(&self, op: &Op) -> bool {
        let flag = match op {
            Op::Flush => &self.flush_claimed,
            Op::Compact(_) => &self.compact_claimed,
        };
        flag.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    pub(crate) fn release(&self, op: &Op) {
        match op {
            Op::Flush => self.flush_claimed.store(false, Ordering::Release),
            Op::Compact(_) => self.compact_claimed.store(false, Ordering::Release),
        }
    }

    /// Runs a background operation (a worker claimed it).
    pub(crate) fn run_maintenance(&self, op: &Op) -> Result<Option<CompactionReport>> {
        if self.closed.load(Ordering::Acquire) {
            return Ok(None);
        }
        match op {
            Op::Flush => self.flush().map(|()| None),
            Op::Compact(ids) => self.compact(ids).map(Some),
        }
    }

    /// A background operation panicked: nothing may build on what it left.
    pub(crate) fn poison_from_maintenance(&self) {
        self.poison(&StorageError::Corrupt(
            "a background maintenance operation panicked".into(),
        ));
    }

    /// Rows deleted at or before this timestamp can be purged: no readable snapshot sees them
    /// and recovery never replays their deletion (see `compact`).
    fn purge_horizon(&self) -> Timestamp {
        let checkpoint = self.writer.lock().checkpoint_ts;
        self.purge_horizon_at(checkpoint)
    }

    /// [`Inner::purge_horizon`] given the checkpoint. Like a freeze's horizon it is never past
    /// the latest published snapshot; and never past the checkpoint: rows deleted after it
    /// must stay, because recovery replays those deletions (from the WAL) against the listed
    /// segments.
    fn purge_horizon_at(&self, checkpoint: Timestamp) -> Timestamp {
        self.history_cutoff()
            .min(self.visible.load(Ordering::Acquire))
            .max(self.horizon.load(Ordering::Acquire))
            .min(checkpoint)
    }

    fn check_snapshot(&self, snapshot: Timestamp) -> Result<()> {
        let horizon = self.horizon.load(Ordering::Acquire);
        if snapshot < horizon {
            return Err(StorageError::SnapshotTooOld {
                requested: snapshot,
                horizon,
            });
        }
        let latest = self.visible.load(Ordering::Acquire);
        if snapshot > latest {
            return Err(StorageError::SnapshotInFuture {
                requested: snapshot,
                latest,
            });
        }
        Ok(())
    }

    fn poison(&self, why: &StorageError) {
        tracing::error!(error = %why, "tablet poisoned: no more writes until reopened");
        self.poisoned.lock().get_or_insert_with(|| why.to_string());
    }

    fn check_poisoned(&self) -> Result<()> {
        match &*self.poisoned.lock() {
            Some(why) => Err(StorageError::Poisoned(why.clone())),
            None => Ok(()),
        }
    }

    fn write(self: &Arc<Self>, mut vb: ValidatedBatch) -> Result<WriteOutcome> {
        if vb.ops.is_empty() {
            return Ok(WriteOutcome {
                timestamp: self.visible.load(Ordering::Acquire),
                ..Default::default()
            });
        }
        let record = encode_wal_record(&vb)?;
        let mut sync = None;
        let outcome = {
            let _w = self.writer.lock();
            self.check_poisoned()?;
            let version = self.version.load_full();
            if vb.schema_fingerprint != version.codec.schema().fingerprint() {
                // The schema changed since the batch was checked: check it again (it may name
                // a column that is gone). Rare, so done under the lock.
                let batch = WriteBatch::new(vb.original.clone(), vb.ops.clone())?;
                vb = validate(&version.codec, &self.opts, &batch)?;
            }
            let ts = self.clock.next();
            // A failed append is cut off again by the WAL; should even that fail, a torn record
            // would sit before later ones, so no further write may follow it.
            self.wal
                .append(ts, &record)
                .inspect_err(|e| self.poison(e))?;
            self.appended.store(ts, Ordering::Release);
            // A big batch's record syncs while the batch is applied (see `syncpool`); a small
            // one's apply is too short to be worth the hand-off.
            if self.opts.durability == Durability::Sync && vb.ops.len() >= OVERLAP_SYNC_ROWS {
                let me = self.clone();
                sync = Some(PendingSync::start(move || me.sync_upto(ts)));
            }
            // A failure (or a bug's panic) halfway through leaves part of the batch applied in
            // memory: poison, so that neither a later write nor a flush builds on it.
            let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.res.apply(&version, &vb, ts)
            }))
            .unwrap_or_else(|_| {
                Err(StorageError::Corrupt(
                    "internal error while applying a batch".into(),
                ))
            });
            let outcome = applied.inspect_err(|e| self.poison(e))?;
            self.applied.store(ts, Ordering::Release);
            outcome
        };
        let ts = outcome.timestamp;
        if let Some(pending) = sync {
            pending.wait().inspect_err(|e| self.poison(e))?;
        } else if self.opts.durability == Durability::Sync {
            self.sync_upto(ts).inspect_err(|e| self.poison(e))?;
        }
        self.visible.fetch_max(ts, Ordering::AcqRel);
        let v = self.version.load();
        v.memtable.note_write();
        self.recharge();
        if self
            .opts
            .flush_threshold_bytes
            .is_some_and(|t| v.memtable.bytes() >= t)
        {
            self.maintenance.wake();
        }
        Ok(outcome)
    }

    /// Group commit: the first waiter syncs everything appended so far; later waiters whose
    /// record that sync covered return without syncing again.
    fn sync_upto(&self, ts: Timestamp) -> Result<()> {
        let _g = self.sync_lock.lock();
        if self.durable.load(Ordering::Acquire) >= ts {
            return Ok(());
        }
        // After a failed sync, a later one may "succeed" without the lost pages (Linux reports
        // a writeback error once): never count anything as durable again.
        self.check_poisoned()?;
        // Read before the sync starts: every record appended by then is in the file.
        let target = self.appended.load(Ordering::Acquire);
        self.wal.sync().inspect_err(|e| self.poison(e))?;
        self.durable.fetch_max(target, Ordering::AcqRel);
        Ok(())
    }

    fn history_cutoff(&self) -> Timestamp {
        let retention = self
            .opts
            .history_retention
            .as_micros()
            .min(u64::MAX as u128) as u64;
        Clock::wall_now().saturating_sub(retention)
    }

    fn flush(&self) -> Result<()> {
        let _f = self.flush_lock.lock();
        // A worker that picked this tablet just before it closed must not touch its files.
        if self.closed.load(Ordering::Acquire) {
            return Ok(());
        }
        let flushed = self.flush_locked();
        self.recharge();
        flushed
    }

    fn flush_locked(&self) -> Result<()> {
        self.freeze()?;
        loop {
            let (seg_id, upto) = {
                let w = self.writer.lock();
                match w.pending.first() {
                    None => return Ok(()),
                    Some(p) => (p.segment, p.upto),
                }
            };
            let written = match seg_id {
                None => None,
                Some(id) => {
                    let v = self.version.load_full();
                    let mem = v.segments.iter().find(|s| s.meta.id == id).ok_or_else(|| {
                        StorageError::Corrupt(format!("pending segment {id} vanished"))
                    })?;
                    Some(Arc::new(mem.write_to_disk(
                        &self.segment_dir,
                        &v.codec,
                        &self.opts,
                    )?))
                }
            };
            let bytes = written.as_ref().map_or(0, |s| s.meta.file_bytes);
            self.install(written, upto)?;
            self.counters.flushes.fetch_add(1, Ordering::Relaxed);
            self.counters
                .bytes_flushed
                .fetch_add(bytes, Ordering::Relaxed);
            self.wal.remove_upto(upto)?;
        }
    }

    /// Merges on-disk segments `ids` into one new segment (see `compact.rs`) and installs it.
    ///
    /// 1. Under the writer lock: pin the inputs, reserve an id, choose the horizon (as a freeze
    ///    does: never past the latest published snapshot; and never past the checkpoint).
    /// 2. No lock: merge, dropping rows deleted at or before the horizon; write, sync, rename.
    /// 3. Under the writer lock: carry every deletion of a kept input row (those made during
    ///    step 2 too) to its output row; one atomic metadata batch writes the manifest without
    ///    the inputs and with the output, the output's deletions up to the checkpoint, and
    ///    forgets the inputs' deletions; then the horizon is raised and the version published.
    ///    The inputs' files go when their last reader does.
    ///
    /// A crash before step 3's batch leaves the old manifest (the output files are unlisted
    /// and deleted on recovery); after it, the new one. Deletions after the checkpoint are not
    /// persisted by either: WAL replay re-derives them against whichever segments are listed.
    fn compact(&self, ids: &[u64]) -> Result<CompactionReport> {
        self.compact_with(ids, || {})
    }

    /// [`Inner::compact`], running `before_install` between the merge and its installation
    /// (tests write there, to check that what writers do meanwhile is carried over).
    fn compact_with(&self, ids: &[u64], before_install: impl FnOnce()) -> Result<CompactionReport> {
        let _c = self.compact_lock.lock();
        self.compact_locked(ids, before_install)
    }

    /// [`Inner::compact_with`] with the compaction lock held.
    fn compact_locked(
        &self,
        ids: &[u64],
        before_install: impl FnOnce(),
    ) -> Result<CompactionReport> {
        if self.closed.load(Ordering::Acquire) {
            return Ok(CompactionReport::default());
        }
        let (codec, inputs, id, horizon) = {
            let mut w = self.writer.lock();
            self.check_poisoned()?;
            let v = self.version.load_full();
            let inputs = ids
                .iter()
                .map(|id| {
                    v.segments
                        .iter()
                        .find(|s| s.meta.id == *id && !s.is_in_memory())
                        .cloned()
                        .ok_or_else(|| {
                            StorageError::InvalidInput(format!(
                                "no on-disk segment {id} to compact"
                            ))
                        })
                })
                .collect::<Result<Vec<_>>>()?;
            let id = w.next_segment_id;
            w.next_segment_id += 1;
            let horizon = self.purge_horizon_at(w.checkpoint_ts);
            (v.codec.clone(), inputs, id, horizon)
        };
        let merged = match crate::compact::merge(
            &inputs,
            &codec,
            horizon,
            &self.segment_dir,
            id,
            &self.opts,
            self.res.key_blocks(),
        ) {
            Ok(m) => m,
            Err(e) => {
                // Leftovers would only be deleted at the next open.
                let (pq, kix) = crate::segment::segment_paths(&self.segment_dir, id);
                for p in [
                    pq.with_extension("parquet.tmp"),
                    kix.with_extension("kix.tmp"),
                    pq,
                    kix,
                ] {
                    let _ = std::fs::remove_file(p);
                }
                return Err(e);
            }
        };
        before_install();
        let w = self.writer.lock();
        if let Err(e) = self.check_poisoned() {
            if let Some(out) = &merged.segment {
                out.retire();
            }
            return Err(e);
        }
        let v = self.version.load_full();
        let checkpoint = w.checkpoint_ts;
        let mut carried = Vec::new();
        for (input, pos) in inputs.iter().zip(&merged.positions) {
            for (ts, row) in input.dv.entries() {
                let Some(&to) = pos.get(row as usize) else {
                    if let Some(out) = &merged.segment {
                        out.retire();
                    }
                    return Err(StorageError::Corrupt(format!(
                        "segment {} has a deletion of row {row}, past its {} rows",
                        input.meta.id, input.meta.rows
                    )));
                };
                if to != crate::compact::DROPPED {
                    carried.push((ts, to));
                }
            }
        }
        let output = merged.segment.map(Arc::new);
        let mut persisted_now = Vec::new();
        if let Some(out) = &output {
            persisted_now = carried
                .iter()
                .copied()
                .filter(|&(t, _)| t <= checkpoint)
                .collect();
            out.dv.reset(carried, checkpoint);
        }
        // Only compactions remove segments, one at a time: the inputs are all still here.
        if let Some(id) = ids
            .iter()
            .find(|id| !v.segments.iter().any(|s| s.meta.id == **id))
        {
            if let Some(out) = &output {
                out.retire();
            }
            return Err(StorageError::Corrupt(format!(
                "segment {id} vanished during its compaction"
            )));
        }
        let first = v
            .segments
            .iter()
            .position(|s| s.meta.id == ids[0])
            .expect("checked above");
        let mut segments = Vec::with_capacity(v.segments.len());
        for (i, s) in v.segments.iter().enumerate() {
            if i == first {
                segments.extend(output.clone());
            }
            if !ids.contains(&s.meta.id) {
                segments.push(s.clone());
            }
        }
        let new_horizon = self.horizon.load(Ordering::Acquire).max(horizon);
        let manifest = Manifest {
            format: Manifest::new(v.codec.schema().def().clone()).format,
            schema: v.codec.schema().def().clone(),
            next_segment_id: w.next_segment_id,
            checkpoint_ts: checkpoint,
            history_horizon: new_horizon,
            segments: segments
                .iter()
                .filter(|s| !s.is_in_memory())
                .map(|s| s.meta.clone())
                .collect(),
        };
        let dvs: Vec<(u64, Vec<(Timestamp, u32)>)> = output
            .iter()
            .map(|o| (o.meta.id, persisted_now.clone()))
            .collect();
        if let Err(e) = self.store.checkpoint_retiring(&manifest, &dvs, ids) {
            // The batch may be applied without its sync, so either manifest may be what a
            // restart finds: keep every file and let recovery decide (nothing may build on
            // the state in memory meanwhile).
            self.poison(&e);
            return Err(e);
        }
        // Rows superseded at or before `horizon` are gone: raise it before readers can load
        // the new version (they re-check their snapshot after loading one).
        self.horizon.fetch_max(horizon, Ordering::AcqRel);
        self.version.store(Arc::new(Version {
            codec: v.codec.clone(),
            memtable: v.memtable.clone(),
            segments,
        }));
        for s in &inputs {
            s.retire();
        }
        let report = CompactionReport {
            input_segments: inputs.len(),
            input_rows: inputs.iter().map(|s| s.meta.rows).sum(),
            input_bytes: inputs.iter().map(|s| s.meta.file_bytes).sum(),
            output_rows: output.as_ref().map_or(0, |o| o.meta.rows),
            output_bytes: output.as_ref().map_or(0, |o| o.meta.file_bytes),
            purged_rows: merged.dropped_rows,
        };
        let c = &self.counters;
        c.compactions.fetch_add(1, Ordering::Relaxed);
        c.bytes_compacted
            .fetch_add(report.input_bytes, Ordering::Relaxed);
        c.rows_purged
            .fetch_add(report.purged_rows, Ordering::Relaxed);
        tracing::debug!(?report, "compacted segments");
        Ok(report)
    }

    /// Turns the write buffer into an in-memory segment and starts a fresh buffer.
    fn freeze(&self) -> Result<()> {
        let mut w = self.writer.lock();
        self.freeze_locked(&mut w)
    }

    fn freeze_locked(&self, w: &mut WriterState) -> Result<()> {
        self.check_poisoned()?;
        let v = self.version.load_full();
        let upto = self.applied.load(Ordering::Acquire);
        if v.memtable.is_empty() {
            // Writes that changed no buffer row (failed or ignored rows, deletions of segment
            // rows) still sit in the WAL: move the checkpoint past them too, so that the WAL
            // shrinks and no record older than a schema change is ever replayed.
            let covered = w.pending.last().map_or(w.checkpoint_ts, |p| p.upto);
            if upto > covered {
                self.wal.rotate()?;
                w.pending.push(PendingFlush {
                    segment: None,
                    upto,
                });
            }
            if v.memtable.age().is_some() {
                // A fresh (empty) buffer, so that its age counts from the next write.
                self.version.store(Arc::new(Version {
                    codec: v.codec.clone(),
                    memtable: Arc::new(MemTable::default()),
                    segments: v.segments.clone(),
                }));
            }
            return Ok(());
        }
        let id = w.next_segment_id;
        // Never past the latest published snapshot: it must stay readable (`applied` may be
        // ahead of it while a batch waits for its sync).
        let horizon = self
            .history_cutoff()
            .min(self.visible.load(Ordering::Acquire))
            .max(self.horizon.load(Ordering::Acquire));
        let seg = Segment::freeze(id, &v.memtable, &v.codec, horizon)?;
        // Records after the freeze go to a new file, so the old ones can be deleted once this
        // flush is installed. Done before any state changes, so a failure leaves none.
        self.wal.rotate()?;
        let mut segments = v.segments.clone();
        if let Some(seg) = seg {
            w.next_segment_id += 1;
            segments.push(Arc::new(seg));
            w.pending.push(PendingFlush {
                segment: Some(id),
                upto,
            });
        } else {
            w.pending.push(PendingFlush {
                segment: None,
                upto,
            });
        }
        // Versions superseded at or before `horizon` were dropped: older snapshots are gone.
        // (Raised before the new version is published: readers re-check after loading it.)
        self.horizon.fetch_max(horizon, Ordering::AcqRel);
        self.version.store(Arc::new(Version {
            codec: v.codec.clone(),
            memtable: Arc::new(MemTable::default()),
            segments,
        }));
        self.recharge();
        Ok(())
    }

    /// Makes the first pending flush durable: new manifest + deletions, then the new version.
    fn install(&self, written: Option<Arc<Segment>>, upto: Timestamp) -> Result<()> {
        let mut w = self.writer.lock();
        self.install_locked(&mut w, written, upto)
    }

    fn install_locked(
        &self,
        w: &mut WriterState,
        written: Option<Arc<Segment>>,
        upto: Timestamp,
    ) -> Result<()> {
        self.check_poisoned()?;
        let v = self.version.load_full();
        let segments: Vec<Arc<Segment>> = v
            .segments
            .iter()
            .map(|s| match &written {
                Some(n) if n.meta.id == s.meta.id => n.clone(),
                _ => s.clone(),
            })
            .collect();
        let on_disk: Vec<&Arc<Segment>> = segments.iter().filter(|s| !s.is_in_memory()).collect();
        let manifest = Manifest {
            format: Manifest::new(v.codec.schema().def().clone()).format,
            schema: v.codec.schema().def().clone(),
            next_segment_id: w.next_segment_id,
            checkpoint_ts: upto,
            history_horizon: self.horizon.load(Ordering::Acquire),
            segments: on_disk.iter().map(|s| s.meta.clone()).collect(),
        };
        let dvs: Vec<(u64, Vec<(Timestamp, u32)>)> = on_disk
            .iter()
            .map(|s| (s.meta.id, s.dv.unpersisted(upto)))
            .collect();
        self.store.checkpoint(&manifest, &dvs)?;
        let horizon = self.horizon.load(Ordering::Acquire);
        for s in &on_disk {
            s.dv.mark_persisted(upto);
            s.dv.fold(horizon);
        }
        self.version.store(Arc::new(Version {
            codec: v.codec.clone(),
            memtable: v.memtable.clone(),
            segments,
        }));
        w.pending.remove(0);
        w.checkpoint_ts = upto;
        self.recharge();
        Ok(())
    }
}

/// The values of a one-row batch.
pub(crate) fn row_values(batch: &RecordBatch) -> Result<Vec<Value>> {
    Ok(batch
        .columns()
        .iter()
        .map(|c| Value::from_array(c, 0))
        .collect::<std::result::Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::write::{BatchBuilder, WriteOp};
    use nyala_common::{ColumnSchema, DataType};

    fn schema() -> Schema {
        Schema::new(
            vec![
                ColumnSchema::not_null("id", DataType::Int64),
                ColumnSchema::nullable("v", DataType::Utf8),
            ],
            &["id"],
        )
        .unwrap()
    }

    fn write(t: &Tablet, op: WriteOp, id: i64, v: &str) -> Timestamp {
        let mut b = BatchBuilder::new(["id", "v"]);
        b.push(op, vec![Value::Int64(id), Value::Utf8(v.into())]);
        let out = t.write(&b.build(&t.schema()).unwrap()).unwrap();
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        out.timestamp
    }

    fn value(t: &Tablet, id: i64, at: Option<Timestamp>) -> Option<String> {
        let row = match at {
            Some(ts) => t.get_at(&[Value::Int64(id)], ts).unwrap(),
            None => t.get(&[Value::Int64(id)]).unwrap(),
        };
        row.map(|r| match &r[1] {
            Value::Utf8(s) => s.clone(),
            other => panic!("{other:?}"),
        })
    }

    /// Updates and deletes that hit the inputs while a compaction merges them land on the
    /// merged rows: no lost update, no resurrected row, and past snapshots still read the
    /// old values, before and after a reopen.
    #[test]
    fn writes_during_a_compaction_are_carried_over() {
        let dir = tempfile::tempdir().unwrap();
        let opts = TabletOptions {
            flush_threshold_bytes: None,
            background_compaction: false,
            page_rows: 4,
            key_block_rows: 4,
            row_group_rows: 16,
            ..TabletOptions::default()
        };
        let t = Tablet::create(dir.path(), &schema(), opts.clone()).unwrap();
        for gen in 0..3 {
            for id in 0..30 {
                write(&t, WriteOp::Upsert, id, &format!("g{gen}"));
            }
            t.flush().unwrap();
        }
        let before = t.latest_timestamp();
        let ids: Vec<u64> = t
            .inner
            .version
            .load()
            .segments
            .iter()
            .map(|s| s.meta.id)
            .collect();
        assert_eq!(ids.len(), 3);
        let mut during = 0;
        let report = t
            .inner
            .compact_with(&ids, || {
                write(&t, WriteOp::Update, 3, "updated");
                write(&t, WriteOp::Delete, 4, "");
                write(&t, WriteOp::Upsert, 5, "upserted");
                // A flush in between moves the checkpoint past these deletions.
                t.flush().unwrap();
                write(&t, WriteOp::Delete, 6, "");
                during = t.latest_timestamp();
            })
            .unwrap();
        assert_eq!(report.input_segments, 3);
        let check = |t: &Tablet| {
            assert_eq!(value(t, 3, None).as_deref(), Some("updated"));
            assert_eq!(value(t, 4, None), None);
            assert_eq!(value(t, 5, None).as_deref(), Some("upserted"));
            assert_eq!(value(t, 6, None), None);
            assert_eq!(value(t, 7, None).as_deref(), Some("g2"));
            for id in [3, 4, 5, 6] {
                assert_eq!(
                    value(t, id, Some(before)).as_deref(),
                    Some("g2"),
                    "key {id}"
                );
            }
            assert_eq!(value(t, 3, Some(during)).as_deref(), Some("updated"));
            let rows: usize = t
                .scan(&ScanRequest::default())
                .unwrap()
                .map(|b| b.unwrap().num_rows())
                .sum();
            assert_eq!(rows, 28);
        };
        check(&t);
        // Writes after the compaction find the merged rows.
        write(&t, WriteOp::Update, 8, "late");
        assert_eq!(value(&t, 8, None).as_deref(), Some("late"));
        drop(t);
        let t = Tablet::open(dir.path(), opts).unwrap();
        check(&t);
        assert_eq!(value(&t, 8, None).as_deref(), Some("late"));
    }
}
