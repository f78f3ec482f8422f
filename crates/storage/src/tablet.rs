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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use arrow::array::{ArrayRef, RecordBatch};
use parking_lot::{Condvar, Mutex};

use nyala_common::{RowCodec, Schema, Value};

use crate::clock::{Clock, Timestamp};
use crate::dv::DeleteVector;
use crate::error::{Result, StorageError};
use crate::memtable::{KeyEntry, MemLookup, MemState, MemTable};
use crate::options::{Durability, TabletOptions};
use crate::scan::{ScanRequest, TabletScan};
use crate::segment::{new_key_block_cache, KeyBlockCache, Segment};
use crate::store::{Manifest, MetaStore};
use crate::write::{
    decode_wal_record, encode_wal_record, validate, RowError, RowErrorKind, ValidatedBatch,
    WriteBatch, WriteOp, WriteOutcome,
};

/// What readers pin: the write buffer and the segments at one moment. Replaced (never
/// mutated) when a flush freezes the buffer or installs a segment.
#[derive(Debug)]
pub(crate) struct Version {
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

/// Counters and gauges of one tablet, for monitoring and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
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
}

struct Inner {
    segment_dir: PathBuf,
    codec: Arc<RowCodec>,
    opts: TabletOptions,
    store: MetaStore,
    clock: Clock,
    version: ArcSwap<Version>,
    /// Latest timestamp readers may use (invariant 2).
    visible: AtomicU64,
    /// Latest timestamp applied to the in-memory state (writer lock held to change).
    applied: AtomicU64,
    /// Latest timestamp whose WAL record is durable.
    durable: AtomicU64,
    /// Oldest readable snapshot.
    horizon: AtomicU64,
    writer: Mutex<WriterState>,
    sync_lock: Mutex<()>,
    flush_lock: Mutex<()>,
    poisoned: Mutex<Option<String>>,
    flush_signal: Arc<FlushSignal>,
    key_blocks: KeyBlockCache,
}

#[derive(Default)]
struct FlushSignal {
    wanted: Mutex<bool>,
    cv: Condvar,
    shutdown: AtomicBool,
}

/// A tablet. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct Tablet {
    inner: Arc<Inner>,
    flusher: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Tablet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tablet")
            .field("dir", &self.inner.segment_dir)
            .finish_non_exhaustive()
    }
}

/// Location of the live copy of a key, from the writer's point of view.
enum Location {
    Buffer,
    Segment(Arc<Segment>, u32),
    Absent,
}

fn meta_dir(dir: &Path) -> PathBuf {
    dir.join("meta")
}

fn segment_dir(dir: &Path) -> PathBuf {
    dir.join("segments")
}

impl Tablet {
    /// Creates a new, empty tablet in `dir` (which must not hold one already).
    pub fn create(dir: &Path, schema: &Schema, opts: TabletOptions) -> Result<Tablet> {
        std::fs::create_dir_all(segment_dir(dir))?;
        let store = open_store(dir, &opts)?;
        if store.load_manifest()?.is_some() {
            return Err(StorageError::AlreadyExists(format!(
                "a tablet already exists in {}",
                dir.display()
            )));
        }
        store.create(&Manifest::new(schema.def().clone()))?;
        drop(store);
        Tablet::open(dir, opts)
    }

    /// Opens the tablet in `dir`, recovering every acknowledged write.
    pub fn open(dir: &Path, opts: TabletOptions) -> Result<Tablet> {
        if !meta_dir(dir).exists() {
            return Err(StorageError::NotFound(format!(
                "no tablet in {}",
                dir.display()
            )));
        }
        let store = open_store(dir, &opts)?;
        let manifest = store
            .load_manifest()?
            .ok_or_else(|| StorageError::NotFound(format!("no tablet in {}", dir.display())))?;
        let schema = Schema::from_def(manifest.schema.clone())?;
        let codec = Arc::new(RowCodec::new(&schema)?);
        let seg_dir = segment_dir(dir);
        std::fs::create_dir_all(&seg_dir)?;
        remove_unlisted_files(&seg_dir, &manifest)?;
        let clock = Clock::default();
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
            memtable: Arc::new(MemTable::default()),
            segments,
        };
        let opts_key_cache = opts.key_cache_bytes;
        let inner = Arc::new(Inner {
            segment_dir: seg_dir,
            codec,
            opts,
            store,
            clock,
            version: ArcSwap::from_pointee(version),
            visible: AtomicU64::new(manifest.checkpoint_ts),
            applied: AtomicU64::new(manifest.checkpoint_ts),
            durable: AtomicU64::new(manifest.checkpoint_ts),
            horizon: AtomicU64::new(manifest.history_horizon),
            writer: Mutex::new(WriterState {
                next_segment_id: manifest.next_segment_id,
                checkpoint_ts: manifest.checkpoint_ts,
                pending: vec![],
            }),
            sync_lock: Mutex::new(()),
            flush_lock: Mutex::new(()),
            poisoned: Mutex::new(None),
            flush_signal: Arc::new(FlushSignal::default()),
            key_blocks: new_key_block_cache(opts_key_cache),
        });
        inner.replay_wal(manifest.checkpoint_ts)?;
        let flusher = inner
            .opts
            .flush_threshold_bytes
            .map(|_| spawn_flusher(&inner));
        Ok(Tablet { inner, flusher })
    }

    /// The table schema this tablet stores.
    pub fn schema(&self) -> &Schema {
        self.inner.codec.schema()
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
        self.inner.write(batch)
    }

    /// The live row with this primary key (values in key order), at the latest snapshot.
    pub fn get(&self, key: &[Value]) -> Result<Option<Vec<Value>>> {
        self.get_at(key, self.latest_timestamp())
    }

    /// The row with this primary key as of `snapshot`.
    pub fn get_at(&self, key: &[Value], snapshot: Timestamp) -> Result<Option<Vec<Value>>> {
        self.inner.check_snapshot(snapshot)?;
        let key = self.inner.codec.encode_key_values(key)?;
        let version = self.inner.version.load_full();
        match self.inner.lookup(&version, &key, snapshot)? {
            None => Ok(None),
            Some(batch) => Ok(Some(
                batch
                    .columns()
                    .iter()
                    .map(|c| Value::from_array(c, 0))
                    .collect::<std::result::Result<_, _>>()?,
            )),
        }
    }

    /// Starts a scan: batches of the rows matching the request at one snapshot.
    pub fn scan(&self, req: &ScanRequest) -> Result<TabletScan> {
        let snapshot = req.snapshot.unwrap_or_else(|| self.latest_timestamp());
        self.inner.check_snapshot(snapshot)?;
        let version = self.inner.version.load_full();
        TabletScan::new(&self.inner.codec, version, snapshot, req, |v, k, s| {
            self.inner.lookup(v, k, s)
        })
    }

    /// Writes the write buffer (and any frozen buffer awaiting its flush) to Parquet segments
    /// and moves the checkpoint. Safe to call at any time; writers and readers carry on.
    pub fn flush(&self) -> Result<()> {
        self.inner.flush()
    }

    /// Current counters and gauges.
    pub fn stats(&self) -> TabletStats {
        let v = self.inner.version.load_full();
        let w = self.inner.writer.lock();
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
        }
    }

    /// Bytes on disk: segment files plus WAL and metadata.
    pub fn disk_bytes(&self) -> u64 {
        self.stats().segment_file_bytes + self.inner.store.size_on_disk()
    }
}

impl Drop for Tablet {
    fn drop(&mut self) {
        let sig = &self.inner.flush_signal;
        sig.shutdown.store(true, Ordering::Release);
        *sig.wanted.lock() = true;
        sig.cv.notify_all();
        if let Some(h) = self.flusher.take() {
            let _ = h.join();
        }
        // Make async-durability writes durable on a clean close.
        let _ = self.inner.store.sync();
    }
}

fn open_store(dir: &Path, opts: &TabletOptions) -> Result<MetaStore> {
    let flush_every = match opts.durability {
        Durability::Sync => None,
        Durability::Async { interval } => Some(interval.as_millis().max(1) as u64),
    };
    MetaStore::open(&meta_dir(dir), opts.meta_cache_bytes, flush_every)
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

fn spawn_flusher(inner: &Arc<Inner>) -> JoinHandle<()> {
    let weak: Weak<Inner> = Arc::downgrade(inner);
    let sig = inner.flush_signal.clone();
    std::thread::Builder::new()
        .name("nyala-flush".into())
        .spawn(move || loop {
            {
                let mut wanted = sig.wanted.lock();
                if !*wanted {
                    sig.cv.wait_for(&mut wanted, Duration::from_secs(1));
                }
                *wanted = false;
            }
            if sig.shutdown.load(Ordering::Acquire) {
                return;
            }
            let Some(inner) = weak.upgrade() else { return };
            if inner.needs_flush() {
                if let Err(e) = inner.flush() {
                    tracing::warn!(error = %e, "background flush failed; will retry");
                }
            }
        })
        .expect("spawning the flush thread")
}

impl Inner {
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

    fn needs_flush(&self) -> bool {
        let v = self.version.load();
        self.opts
            .flush_threshold_bytes
            .is_some_and(|t| v.memtable.bytes() >= t)
            || v.segments.iter().any(|s| s.is_in_memory())
    }

    fn write(&self, batch: &WriteBatch) -> Result<WriteOutcome> {
        let vb = validate(&self.codec, &self.opts, batch)?;
        if vb.ops.is_empty() {
            return Ok(WriteOutcome {
                timestamp: self.visible.load(Ordering::Acquire),
                ..Default::default()
            });
        }
        let record = encode_wal_record(&vb)?;
        let outcome = {
            let _w = self.writer.lock();
            self.check_poisoned()?;
            let ts = self.clock.next();
            self.store.append_wal(ts, &record)?;
            let version = self.version.load_full();
            let outcome = self
                .apply(&version, &vb, ts)
                .inspect_err(|e| self.poison(e))?;
            self.applied.store(ts, Ordering::Release);
            outcome
        };
        let ts = outcome.timestamp;
        if self.opts.durability == Durability::Sync {
            self.sync_upto(ts).inspect_err(|e| self.poison(e))?;
        }
        self.visible.fetch_max(ts, Ordering::AcqRel);
        if self
            .opts
            .flush_threshold_bytes
            .is_some_and(|t| self.version.load().memtable.bytes() >= t)
        {
            *self.flush_signal.wanted.lock() = true;
            self.flush_signal.cv.notify_one();
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
        let target = self.applied.load(Ordering::Acquire);
        self.store.sync()?;
        self.durable.fetch_max(target, Ordering::AcqRel);
        Ok(())
    }

    fn replay_wal(&self, checkpoint: Timestamp) -> Result<()> {
        // Limits may have been lowered since the record was accepted: replay must not refuse it.
        let relaxed = TabletOptions {
            max_cell_bytes: usize::MAX,
            max_row_bytes: usize::MAX,
            max_batch_rows: usize::MAX,
            ..self.opts.clone()
        };
        let mut last = checkpoint;
        let mut records = 0usize;
        for rec in self.store.wal_after(checkpoint) {
            let (ts, bytes) = rec?;
            let batch = decode_wal_record(&bytes)?;
            let vb = validate(&self.codec, &relaxed, &batch)?;
            let version = self.version.load_full();
            self.apply(&version, &vb, ts)?;
            last = ts;
            records += 1;
        }
        self.clock.observe(last);
        // Start the readable timestamp at "now" (a timestamp no write has; later writes get
        // larger ones), so that even an idle tablet's latest snapshot is within retention.
        let now = self.clock.next();
        self.applied.store(now, Ordering::Release);
        self.durable.store(now, Ordering::Release);
        self.visible.store(now, Ordering::Release);
        if records > 0 {
            tracing::info!(records, "replayed WAL");
        }
        Ok(())
    }

    /// Where the live copy of `key` is, counting every applied write (writer lock held).
    fn locate(&self, v: &Version, entry: &KeyEntry<'_>, key: &[u8]) -> Result<Location> {
        match entry.state() {
            MemState::Live => return Ok(Location::Buffer),
            MemState::Deleted => return Ok(Location::Absent),
            MemState::Unknown => {}
        }
        for seg in v.segments.iter().rev() {
            if let Some(row) =
                seg.find_visible(&self.codec, &self.key_blocks, key, Timestamp::MAX)?
            {
                return Ok(Location::Segment(seg.clone(), row));
            }
        }
        Ok(Location::Absent)
    }

    /// The row (all columns, one-row batch) with `key` visible at `snapshot`.
    fn lookup(&self, v: &Version, key: &[u8], snapshot: Timestamp) -> Result<Option<RecordBatch>> {
        match v.memtable.get(key, snapshot) {
            MemLookup::Live(row) => return Ok(Some(self.codec.decode_rows([row.as_slice()])?)),
            MemLookup::Deleted => return Ok(None),
            MemLookup::Unknown => {}
        }
        let all: Vec<usize> = (0..self.codec.schema().len()).collect();
        for seg in v.segments.iter().rev() {
            if let Some(row) = seg.find_visible(&self.codec, &self.key_blocks, key, snapshot)? {
                let r = row as u64;
                return Ok(Some(
                    seg.read_range(r..r + 1, &all)?
                        .with_schema(self.codec.schema().arrow_schema().clone())?,
                ));
            }
        }
        Ok(None)
    }

    /// The new encoded row for row `i`: as given, or merged over `old` for partial batches.
    fn new_row(&self, b: &ValidatedBatch, i: usize, old: Option<RecordBatch>) -> Result<Box<[u8]>> {
        let old = match old {
            Some(old) if !b.is_full_width() => old,
            _ => return Ok(b.rows.row(i).as_ref().into()),
        };
        let cols: Vec<ArrayRef> = (0..b.columns.len())
            .map(|c| {
                if b.present[c] {
                    b.columns[c].slice(i, 1)
                } else {
                    old.column(c).clone()
                }
            })
            .collect();
        Ok(self.codec.encode_rows(&cols)?.row(0).as_ref().into())
    }

    fn old_row(&self, entry: &KeyEntry<'_>, loc: &Location) -> Result<Option<RecordBatch>> {
        let all: Vec<usize> = (0..self.codec.schema().len()).collect();
        Ok(match loc {
            Location::Buffer => {
                let row = entry.row().ok_or_else(|| {
                    StorageError::Corrupt("buffer row vanished under the writer".into())
                })?;
                Some(self.codec.decode_rows([row])?)
            }
            Location::Segment(seg, r) => Some(seg.read_range(*r as u64..*r as u64 + 1, &all)?),
            Location::Absent => None,
        })
    }

    /// Applies every row of a validated batch at `ts` (writer lock held, or recovery).
    fn apply(&self, v: &Version, b: &ValidatedBatch, ts: Timestamp) -> Result<WriteOutcome> {
        let mut out = WriteOutcome {
            timestamp: ts,
            ..Default::default()
        };
        let full = b.is_full_width();
        for (i, &op) in b.ops.iter().enumerate() {
            let key = b.keys.row(i);
            let key = key.as_ref();
            let entry = v.memtable.entry(key);
            let loc = self.locate(v, &entry, key)?;
            let exists = !matches!(loc, Location::Absent);
            let row_error = |kind: RowErrorKind| {
                let what = match kind {
                    RowErrorKind::DuplicateKey => "duplicate key",
                    RowErrorKind::KeyNotFound => "key not found",
                };
                RowError {
                    row: i,
                    kind,
                    message: format!("{what}: {}", self.describe_key(b, i)),
                }
            };
            match (op, exists) {
                (WriteOp::Insert, true) => out.errors.push(row_error(RowErrorKind::DuplicateKey)),
                (WriteOp::Update | WriteOp::Delete, false) => {
                    out.errors.push(row_error(RowErrorKind::KeyNotFound))
                }
                (WriteOp::InsertIgnore, true)
                | (WriteOp::UpdateIgnore | WriteOp::DeleteIgnore, false) => out.ignored += 1,
                (WriteOp::Insert | WriteOp::InsertIgnore | WriteOp::Upsert, false) => {
                    entry.push(ts, Some(self.new_row(b, i, None)?));
                    out.applied += 1;
                }
                (WriteOp::Upsert | WriteOp::Update | WriteOp::UpdateIgnore, true) => {
                    let old = if full {
                        None
                    } else {
                        self.old_row(&entry, &loc)?
                    };
                    let row = self.new_row(b, i, old)?;
                    if let Location::Segment(seg, r) = &loc {
                        seg.dv.delete(*r, ts);
                    }
                    entry.push(ts, Some(row));
                    out.applied += 1;
                }
                (WriteOp::Delete | WriteOp::DeleteIgnore, true) => {
                    match &loc {
                        Location::Segment(seg, r) => seg.dv.delete(*r, ts),
                        _ => entry.push(ts, None),
                    }
                    out.applied += 1;
                }
            }
        }
        Ok(out)
    }

    fn describe_key(&self, b: &ValidatedBatch, i: usize) -> String {
        let schema = self.codec.schema();
        let names: Vec<&str> = schema
            .key_indices()
            .iter()
            .map(|&k| schema.columns()[k].name.as_str())
            .collect();
        let vals: Vec<String> = schema
            .key_indices()
            .iter()
            .map(|&k| {
                Value::from_array(&b.columns[k], i)
                    .map(|v| v.to_string())
                    .unwrap_or_default()
            })
            .collect();
        format!("({})=({})", names.join(", "), vals.join(", "))
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
                    Some(Arc::new(mem.write_to_disk(&self.segment_dir, &self.opts)?))
                }
            };
            self.install(written, upto)?;
            self.store.truncate_wal(upto)?;
        }
    }

    /// Turns the write buffer into an in-memory segment and starts a fresh buffer.
    fn freeze(&self) -> Result<()> {
        let mut w = self.writer.lock();
        let v = self.version.load_full();
        if v.memtable.is_empty() {
            return Ok(());
        }
        let upto = self.applied.load(Ordering::Acquire);
        let id = w.next_segment_id;
        // Never past the latest write: the latest snapshot must stay readable.
        let horizon = self
            .history_cutoff()
            .min(upto)
            .max(self.horizon.load(Ordering::Acquire));
        let seg = Segment::freeze(id, &v.memtable, &self.codec, horizon)?;
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
        self.horizon.fetch_max(horizon, Ordering::AcqRel);
        self.version.store(Arc::new(Version {
            memtable: Arc::new(MemTable::default()),
            segments,
        }));
        Ok(())
    }

    /// Makes the first pending flush durable: new manifest + deletions, then the new version.
    fn install(&self, written: Option<Arc<Segment>>, upto: Timestamp) -> Result<()> {
        let mut w = self.writer.lock();
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
            format: Manifest::new(self.codec.schema().def().clone()).format,
            schema: self.codec.schema().def().clone(),
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
            memtable: v.memtable.clone(),
            segments,
        }));
        w.pending.remove(0);
        w.checkpoint_ts = upto;
        Ok(())
    }
}
