//! A table: its tablets, how rows are routed to them, and scans across them.
//!
//! # Consistency
//! - A batch is validated as a whole first (any batch-level problem rejects it and writes
//!   nothing), then split by tablet and applied to the tablets in parallel. Each tablet's part
//!   is atomic; the batch as a whole is not (as in Kudu): a reader may see one tablet's part
//!   before another's, and a failure in one tablet leaves the others applied.
//! - A scan reads every tablet at one timestamp from the database's shared clock. Before
//!   reading, each tablet makes that timestamp visible (every write at or before it applied
//!   and durable), so a scan sees exactly the writes acknowledged before it started, plus
//!   possibly concurrent ones, in all tablets alike.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;

use arc_swap::ArcSwap;
use arrow::array::{ArrayRef, RecordBatch};
use arrow_schema::SchemaRef;
use parking_lot::{Mutex, RwLock};

use nyala_common::{RowCodec, Schema, Value};

use super::names::TableName;
use super::partition::{PartitionSpec, Partitioner, RangeBounds};
use crate::clock::{Clock, Timestamp};
use crate::error::{Result, StorageError};
use crate::options::TabletOptions;
use crate::predicate::bind;
use crate::scan::{ScanRequest, TabletScan};
use crate::tablet::{row_values, Tablet, TabletStats};
use crate::write::{validate, RowError, RowErrorKind, WriteBatch, WriteOutcome};

/// An open tablet of a table, and what to do with its files when it is closed.
#[derive(Debug)]
pub(crate) struct TabletHandle {
    pub id: u64,
    pub range: RangeBounds,
    pub bucket: u32,
    dir: PathBuf,
    tablet: Option<Tablet>,
    /// Set when the catalog no longer names the tablet: its files go once nobody uses it.
    remove_on_drop: AtomicBool,
}

impl TabletHandle {
    pub fn new(id: u64, range: RangeBounds, bucket: u32, dir: PathBuf, tablet: Tablet) -> Self {
        TabletHandle {
            id,
            range,
            bucket,
            dir,
            tablet: Some(tablet),
            remove_on_drop: AtomicBool::new(false),
        }
    }

    pub fn tablet(&self) -> &Tablet {
        self.tablet.as_ref().expect("the tablet is open until drop")
    }

    /// Deletes the tablet's files once the last user lets go.
    pub fn remove_when_unused(&self) {
        self.remove_on_drop.store(true, Ordering::Release);
    }
}

impl Drop for TabletHandle {
    fn drop(&mut self) {
        // Close first (stops its background thread), then delete.
        drop(self.tablet.take());
        if self.remove_on_drop.load(Ordering::Acquire) {
            if let Err(e) = std::fs::remove_dir_all(&self.dir) {
                tracing::warn!(dir = %self.dir.display(), error = %e,
                    "could not remove a dropped tablet's files; the next open will");
            }
        }
    }
}

/// The schema and tablets of a table at one moment, with the partitioner that maps rows to
/// them. Replaced (never mutated) when range partitions are added or dropped and when the
/// schema changes, so a reader or writer always sees one consistent set.
#[derive(Debug)]
pub(crate) struct Layout {
    pub schema: Schema,
    pub codec: Arc<RowCodec>,
    /// Built on `schema` (it holds column positions).
    pub partitioner: Partitioner,
    /// Tablet `r * buckets + b` holds range `r`, bucket `b` (the partitioner's numbering).
    pub tablets: Vec<Arc<TabletHandle>>,
}

#[derive(Debug)]
pub(crate) struct TableInner {
    pub id: u64,
    pub name: RwLock<TableName>,
    pub partitioning: RwLock<PartitionSpec>,
    pub layout: ArcSwap<Layout>,
    /// Held (shared) while a scan opens its tablets and (exclusively) while a schema change
    /// alters them, so every tablet of a scan reads with the same schema.
    pub alter_lock: RwLock<()>,
    /// Set when a schema change failed part-way (some tablets have the new schema): the table
    /// refuses work until the database is reopened, which finishes the change.
    pub broken: Mutex<Option<String>>,
    pub clock: Arc<Clock>,
    pub opts: TabletOptions,
    pub scan_threads: usize,
    pub dropped: AtomicBool,
}

/// A table of the database: write batches, look up keys, scan. Cheap to clone; a handle stays
/// usable for reads it has started after the table is dropped, and reports the drop to new
/// operations.
#[derive(Clone, Debug)]
pub struct Table {
    pub(crate) inner: Arc<TableInner>,
}

impl TableInner {
    /// Installs a new set of range partitions and their tablets (same schema as `layout`).
    pub(crate) fn set_partitions(
        &self,
        layout: &Layout,
        partitioning: PartitionSpec,
        tablets: Vec<Arc<TabletHandle>>,
    ) -> Result<()> {
        let partitioner = Partitioner::new(&layout.schema, &partitioning)?;
        self.layout.store(Arc::new(Layout {
            schema: layout.schema.clone(),
            codec: layout.codec.clone(),
            partitioner,
            tablets,
        }));
        *self.partitioning.write() = partitioning;
        Ok(())
    }
}

/// What [`Table::describe`] reports about one tablet.
#[derive(Clone, Debug, PartialEq)]
pub struct TabletInfo {
    /// The tablet's id (names its directory under `tablets/`).
    pub id: u64,
    /// Its range partition (unbounded without range partitioning).
    pub range: RangeBounds,
    /// Its hash bucket.
    pub bucket: u32,
    /// Its counters and gauges.
    pub stats: TabletStats,
}

/// A table's definition and state, for `DESCRIBE` and monitoring.
#[derive(Clone, Debug, PartialEq)]
pub struct TableInfo {
    /// The table's name.
    pub name: TableName,
    /// Stable id (survives renames).
    pub id: u64,
    /// Its schema.
    pub schema: Schema,
    /// How it is partitioned (range partitions sorted by lower bound).
    pub partitioning: PartitionSpec,
    /// Its tablets, in partition order.
    pub tablets: Vec<TabletInfo>,
}

impl Table {
    /// The table's current name.
    pub fn name(&self) -> TableName {
        self.inner.name.read().clone()
    }

    /// The table's current schema.
    pub fn schema(&self) -> Schema {
        self.inner.layout.load().schema.clone()
    }

    /// The current schema's [`Schema::fingerprint`], without copying the schema: what a
    /// cached plan checks before it reuses what it learnt from the schema.
    pub fn schema_fingerprint(&self) -> u64 {
        self.inner.layout.load().schema.fingerprint()
    }

    /// Number of tablets.
    pub fn tablet_count(&self) -> usize {
        self.inner.layout.load().tablets.len()
    }

    /// Flushes every tablet's write buffer to segments (tablets in parallel).
    pub fn flush(&self) -> Result<()> {
        self.each_tablet("flush", |t| t.flush())
    }

    /// Merges each tablet's segments into one (tablets in parallel; see
    /// [`Tablet::compact_all`]): a maintenance tool, and the layout a long-lived table
    /// converges to, for benchmarks.
    pub fn compact_all(&self) -> Result<()> {
        self.each_tablet("compaction", |t| t.compact_all().map(drop))
    }

    /// Runs `op` on every tablet, on as many threads as the machine has cores (a table of
    /// hundreds of tablets does not flush or merge them all at once).
    fn each_tablet(&self, what: &str, op: impl Fn(&Tablet) -> Result<()> + Sync) -> Result<()> {
        self.check_live()?;
        let layout = self.inner.layout.load_full();
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let next = std::sync::atomic::AtomicUsize::new(0);
        let (op, next, tablets) = (&op, &next, &layout.tablets);
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads.min(tablets.len()))
                .map(|_| {
                    s.spawn(move || -> Result<()> {
                        // Every tablet is tried; the first failure is reported.
                        let mut failed = None;
                        while let Some(h) = tablets.get(next.fetch_add(1, Ordering::Relaxed)) {
                            if let Err(e) = op(h.tablet()) {
                                failed.get_or_insert(e);
                            }
                        }
                        failed.map_or(Ok(()), Err)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(StorageError::Corrupt(format!("a tablet {what} panicked")))
                    })
                })
                .collect::<Result<Vec<()>>>()
        })?;
        Ok(())
    }

    pub(crate) fn check_live(&self) -> Result<()> {
        if let Some(why) = &*self.inner.broken.lock() {
            return Err(StorageError::InvalidInput(format!(
                "table {} is unusable after a failed schema change ({why}); reopen the \
                 database to finish the change",
                self.name()
            )));
        }
        if self.inner.dropped.load(Ordering::Acquire) {
            return Err(StorageError::UndefinedTable(format!(
                "{} (it was dropped)",
                self.name()
            )));
        }
        Ok(())
    }

    /// Definition, partitions and per-tablet counters.
    pub fn describe(&self) -> TableInfo {
        let layout = self.inner.layout.load_full();
        TableInfo {
            name: self.name(),
            id: self.inner.id,
            schema: layout.schema.clone(),
            partitioning: self.inner.partitioning.read().clone(),
            tablets: layout
                .tablets
                .iter()
                .map(|h| TabletInfo {
                    id: h.id,
                    range: h.range.clone(),
                    bucket: h.bucket,
                    stats: h.tablet().stats(),
                })
                .collect(),
        }
    }

    /// Applies a batch of row operations. Batch-level problems reject the whole batch; rows
    /// are then routed to their tablets and applied there in parallel, with per-row errors
    /// (including keys outside every range partition) reported by row index. See the module
    /// docs for what is atomic.
    pub fn write(&self, batch: &WriteBatch) -> Result<WriteOutcome> {
        self.check_live()?;
        let inner = &self.inner;
        let layout = inner.layout.load_full();
        let vb = validate(&layout.codec, &inner.opts, batch)?;
        if vb.ops.is_empty() {
            return Ok(WriteOutcome {
                timestamp: inner.clock.next(),
                ..Default::default()
            });
        }
        // The memory budget is checked once, before any tablet applies its part: a batch
        // refused as busy writes nothing anywhere (tablets share the budget).
        if let Some(h) = layout.tablets.first() {
            h.tablet().admit_write()?;
        }
        if layout.tablets.len() == 1 && layout.partitioner.range.is_none() {
            return layout.tablets[0].tablet().write_validated(vb);
        }
        let routes = layout.partitioner.route(&vb.columns)?;
        let mut parts: Vec<Vec<u32>> = vec![vec![]; layout.tablets.len()];
        let mut errors = Vec::new();
        for (i, r) in routes.iter().enumerate() {
            match r {
                Some(t) => parts[*t as usize].push(i as u32),
                None => errors.push(no_partition_error(&layout, &vb.columns, i)?),
            }
        }
        let mut work = Vec::new();
        for (t, rows) in parts.into_iter().enumerate() {
            if rows.is_empty() {
                continue;
            }
            let sub = if rows.len() == vb.ops.len() {
                None
            } else {
                Some(vb.take(&layout.codec, &rows)?)
            };
            work.push((t, rows, sub));
        }
        let mut outcome = WriteOutcome {
            errors,
            ..Default::default()
        };
        if work.is_empty() {
            // No row reached a tablet; still return a timestamp a snapshot can use.
            outcome.timestamp = inner.clock.next();
        }
        if work.len() == 1 && work[0].2.is_none() {
            let t = work[0].0;
            let o = layout.tablets[t].tablet().write_validated(vb)?;
            outcome.merge(o, None);
            return Ok(outcome);
        }
        let results: Vec<(Vec<u32>, Result<WriteOutcome>)> = std::thread::scope(|s| {
            let mut jobs = work.into_iter();
            let first = jobs.next();
            let handles: Vec<_> = jobs
                .map(|(t, rows, sub)| {
                    let tablet = layout.tablets[t].clone();
                    s.spawn(move || {
                        let r = tablet.tablet().write_validated(sub.expect("split"));
                        (rows, r)
                    })
                })
                .collect();
            let mut out = Vec::with_capacity(handles.len() + 1);
            if let Some((t, rows, sub)) = first {
                let r = layout.tablets[t]
                    .tablet()
                    .write_validated(sub.expect("split"));
                out.push((rows, r));
            }
            for h in handles {
                out.push(h.join().unwrap_or_else(|_| {
                    (
                        vec![],
                        Err(StorageError::Corrupt("a tablet write panicked".into())),
                    )
                }));
            }
            out
        });
        let mut first_err = None;
        for (rows, r) in results {
            match r {
                Ok(o) => outcome.merge(o, Some(&rows)),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        outcome.errors.sort_by_key(|e| e.row);
        Ok(outcome)
    }

    fn tablet_of_key(&self, layout: &Layout, key: &[Value]) -> Result<Option<usize>> {
        let schema = &layout.schema;
        if layout.tablets.len() == 1 && layout.partitioner.range.is_none() {
            return Ok(Some(0));
        }
        let idx = schema.key_indices();
        if key.len() != idx.len() {
            return Err(StorageError::InvalidInput(format!(
                "a key of this table has {} columns, got {} values",
                idx.len(),
                key.len()
            )));
        }
        // The partitioner reads only key columns; the others are filled with any array.
        let mut columns: Vec<Option<ArrayRef>> = vec![None; schema.len()];
        for (v, &i) in key.iter().zip(idx) {
            let c = &schema.columns()[i];
            if v.is_null() {
                return Ok(None);
            }
            columns[i] = Some(Value::to_array(
                &c.name,
                c.data_type,
                std::slice::from_ref(v),
            )?);
        }
        let filler = columns[idx[0]].clone().expect("key column set");
        let columns: Vec<ArrayRef> = columns
            .into_iter()
            .map(|c| c.unwrap_or_else(|| filler.clone()))
            .collect();
        Ok(layout.partitioner.route(&columns)?[0].map(|t| t as usize))
    }

    /// The live row with this primary key (values in key order), with every column in table
    /// order; `None` if there is none.
    pub fn get(&self, key: &[Value]) -> Result<Option<Vec<Value>>> {
        self.get_batch(key)?.map(|b| row_values(&b)).transpose()
    }

    /// [`Table::get`] as a one-row batch (every column, table order): no per-value
    /// conversions, for callers that answer in Arrow (the SQL point-lookup path).
    pub fn get_batch(&self, key: &[Value]) -> Result<Option<RecordBatch>> {
        self.get_batch_at(key, None)
    }

    /// [`Table::get_batch`] as of `snapshot` (`None`: the latest), so lookups can read at the
    /// snapshot of an earlier scan or write.
    pub fn get_batch_at(
        &self,
        key: &[Value],
        snapshot: Option<Timestamp>,
    ) -> Result<Option<RecordBatch>> {
        self.check_live()?;
        let layout = self.inner.layout.load_full();
        match self.tablet_of_key(&layout, key)? {
            None => {
                // A NULL key or a key outside every range holds no row; still report mistyped
                // values as the tablet would.
                layout
                    .codec
                    .encode_key_values(key)
                    .map(|_| None)
                    .or_else(|e| {
                        if key.iter().any(Value::is_null) {
                            Ok(None)
                        } else {
                            Err(e.into())
                        }
                    })
            }
            Some(t) => match snapshot {
                None => layout.tablets[t].tablet().get_batch(key),
                Some(ts) => {
                    // As in `plan_scan`: a past timestamp of the table's clock becomes
                    // readable in the tablet once every write before it is visible there.
                    let now = self.inner.clock.next();
                    if ts > now {
                        return Err(StorageError::SnapshotInFuture {
                            requested: ts,
                            latest: now,
                        });
                    }
                    let tablet = layout.tablets[t].tablet();
                    tablet.make_visible(ts)?;
                    tablet.get_batch_at(key, ts)
                }
            },
        }
    }

    /// Starts a scan of every tablet that may hold matching rows, at one snapshot, as one
    /// stream of batches produced by up to `scan_threads` tablets in parallel.
    pub fn scan(&self, req: &ScanRequest) -> Result<TableScan> {
        let parts = self.scan_tablets(req)?;
        Ok(TableScan::start(
            parts,
            req.limit,
            self.inner.scan_threads.max(1),
        ))
    }

    /// Starts one scan per tablet that may hold matching rows, all at one snapshot: for
    /// consumers that run their own parallelism (e.g. one query partition per tablet).
    pub fn scan_tablets(&self, req: &ScanRequest) -> Result<TabletScans> {
        let plan = self.plan_scan(req)?;
        let scans = (0..plan.tablet_ids.len())
            .map(|i| plan.open(i))
            .collect::<Result<Vec<_>>>()?;
        Ok(TabletScans {
            schema: plan.schema,
            snapshot: plan.snapshot,
            scans,
            tablet_ids: plan.tablet_ids,
            pins: plan.pins,
        })
    }

    /// Plans a scan without starting it: checks the request, prunes tablets, fixes the
    /// snapshot and makes it visible in every chosen tablet. [`ScanPlan::open`] then starts
    /// each tablet's scan, as often as needed (e.g. a query re-run by a recursive CTE).
    pub fn plan_scan(&self, req: &ScanRequest) -> Result<ScanPlan> {
        self.check_live()?;
        let inner = &self.inner;
        let _no_alter = inner.alter_lock.read();
        let layout = inner.layout.load_full();
        let schema = &layout.schema;
        // Check the request even when every tablet is pruned.
        let output: Vec<usize> = match &req.projection {
            None => (0..schema.len()).collect(),
            Some(names) => names
                .iter()
                .map(|n| schema.index_of(n))
                .collect::<std::result::Result<_, _>>()?,
        };
        bind(&layout.codec, &req.predicates)?;
        let out_schema = Arc::new(schema.arrow_schema().project(&output)?);
        let chosen = layout.partitioner.prune(schema, &req.predicates)?;
        let snapshot = match req.snapshot {
            Some(ts) => {
                let now = inner.clock.next();
                if ts > now {
                    return Err(StorageError::SnapshotInFuture {
                        requested: ts,
                        latest: now,
                    });
                }
                ts
            }
            None if chosen.len() == 1 => {
                // One tablet: its own latest snapshot sees every acknowledged write.
                layout.tablets[chosen[0] as usize]
                    .tablet()
                    .latest_timestamp()
            }
            None => inner.clock.next(),
        };
        let mut pins = Vec::with_capacity(chosen.len());
        for &t in &chosen {
            let handle = layout.tablets[t as usize].clone();
            handle.tablet().make_visible(snapshot)?;
            pins.push(handle);
        }
        // Pinned after `make_visible`: each version holds every write up to the snapshot.
        let versions = pins
            .iter()
            .map(|h| h.tablet().pin_version(snapshot))
            .collect::<Result<Vec<_>>>()?;
        Ok(ScanPlan {
            schema: out_schema,
            snapshot,
            tablet_ids: pins.iter().map(|h| h.id).collect(),
            request: ScanRequest {
                snapshot: Some(snapshot),
                ..req.clone()
            },
            pins,
            versions,
            parts: 1,
        })
    }
}

/// A planned scan of a table's tablets at one snapshot (see [`Table::plan_scan`]).
#[derive(Clone)]
pub struct ScanPlan {
    /// Schema of every tablet scan's batches.
    pub schema: SchemaRef,
    /// The snapshot every tablet is read at.
    pub snapshot: Timestamp,
    /// The tablets to read (the others were pruned), by id.
    pub tablet_ids: Vec<u64>,
    request: ScanRequest,
    /// Keeps the tablets (and their files) alive while the plan exists.
    pins: Vec<Arc<TabletHandle>>,
    /// Each chosen tablet's version when planned: every part of a tablet reads this one, so
    /// that the parts' row positions agree.
    versions: Vec<Arc<crate::tablet::Version>>,
    /// Parts each tablet's rows are read in (see [`ScanPlan::split`]).
    parts: usize,
}

impl ScanPlan {
    /// Reads each tablet in `parts` parts, each its own partition ([`ScanPlan::open`]): part
    /// `k` takes the `k`-th slice of every segment's rows, and the last part the write buffer
    /// too. More partitions than cores let a query engine even out tablets of unequal cost
    /// (one tablet's segments compacted, the other's not) and use every core for a table of
    /// one tablet. Rows keep their key order within a part.
    pub fn split(&mut self, parts: usize) {
        self.parts = parts.max(1);
    }

    /// How many partitions [`ScanPlan::open`] serves: tablets times parts.
    pub fn partitions(&self) -> usize {
        self.pins.len() * self.parts
    }

    /// About how many rows each partition holds (segment rows not deleted, plus buffered
    /// versions): for the query planner's choices (which side of a join to build), not exact.
    pub fn estimated_rows(&self) -> Vec<u64> {
        self.pins
            .iter()
            .flat_map(|h| {
                let n = h.tablet().stats().estimated_rows() / self.parts as u64;
                std::iter::repeat_n(n, self.parts)
            })
            .collect()
    }

    /// Starts the scan of partition `i`: part `i % parts` of the `i / parts`-th chosen tablet.
    pub fn open(&self, i: usize) -> Result<TabletScan> {
        let (t, k) = (i / self.parts, i % self.parts);
        let handle = self.pins.get(t).ok_or_else(|| {
            StorageError::InvalidInput(format!(
                "the scan has {} partitions, asked for number {i}",
                self.partitions()
            ))
        })?;
        handle.tablet().scan_part(
            &self.versions[t],
            &self.request,
            self.snapshot,
            crate::scan::Part {
                index: k,
                count: self.parts,
            },
        )
    }

    /// The predicates pushed into every tablet scan.
    pub fn predicates(&self) -> &[crate::predicate::Predicate] {
        &self.request.predicates
    }
}

impl std::fmt::Debug for ScanPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScanPlan")
            .field("snapshot", &self.snapshot)
            .field("tablets", &self.tablet_ids)
            .finish_non_exhaustive()
    }
}

/// One scan per tablet, all at one snapshot (see [`Table::scan_tablets`]).
pub struct TabletScans {
    /// Schema of every scan's batches.
    pub schema: SchemaRef,
    /// The snapshot all of them read.
    pub snapshot: Timestamp,
    /// The scans, one per tablet not pruned.
    pub scans: Vec<TabletScan>,
    /// The id of each scan's tablet (as [`TableInfo::tablets`] lists them).
    pub tablet_ids: Vec<u64>,
    /// Keeps the tablets (and their files) alive while the scans run.
    pins: Vec<Arc<TabletHandle>>,
}

impl std::fmt::Debug for TabletScans {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TabletScans")
            .field("snapshot", &self.snapshot)
            .field("tablets", &self.scans.len())
            .finish()
    }
}

/// A running scan over a table's tablets: an iterator of batches, all read at
/// [`TableScan::snapshot`], in no particular order. Dropping it stops the work.
///
/// With `scan_threads = n`, up to `n - 1` worker threads read tablets into a bounded channel and
/// the caller's thread reads tablets too whenever the channel is empty: so `n` tablets are
/// decoded at once, and the caller never spins waiting while the cores are busy.
pub struct TableScan {
    schema: SchemaRef,
    snapshot: Timestamp,
    tablets: usize,
    remaining: Option<usize>,
    /// Tablet scans nobody has started.
    queue: Arc<Mutex<VecDeque<TabletScan>>>,
    /// The tablet scan the caller's thread is reading.
    inline: Option<Box<TabletScan>>,
    /// Batches from the workers (`None` once they have all finished).
    rx: Option<Receiver<Result<RecordBatch>>>,
    workers: Vec<JoinHandle<()>>,
    /// Keeps the tablets (and their files) alive while the scan runs.
    _pins: Arc<Vec<Arc<TabletHandle>>>,
}

impl std::fmt::Debug for TableScan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableScan")
            .field("snapshot", &self.snapshot)
            .field("tablets", &self.tablets)
            .finish_non_exhaustive()
    }
}

impl TableScan {
    fn start(parts: TabletScans, limit: Option<usize>, threads: usize) -> TableScan {
        let TabletScans {
            schema,
            snapshot,
            scans,
            pins,
            ..
        } = parts;
        let tablets = scans.len();
        let queue = Arc::new(Mutex::new(VecDeque::from(scans)));
        let pins = Arc::new(pins);
        let workers_n = threads.min(tablets).saturating_sub(1);
        let (mut rx, mut workers) = (None, Vec::new());
        if workers_n > 0 {
            let (tx, r) = sync_channel(workers_n * 2);
            for _ in 0..workers_n {
                let tx = tx.clone();
                let queue = queue.clone();
                let pins = pins.clone();
                let spawned =
                    std::thread::Builder::new()
                        .name("nyala-scan".into())
                        .spawn(move || {
                            let _pins = pins;
                            loop {
                                let Some(scan) = queue.lock().pop_front() else {
                                    return;
                                };
                                for batch in scan {
                                    let failed = batch.is_err();
                                    if tx.send(batch).is_err() || failed {
                                        return;
                                    }
                                }
                            }
                        });
                // Without a worker the caller's thread simply reads more tablets itself.
                if let Ok(h) = spawned {
                    workers.push(h);
                }
            }
            rx = Some(r);
        }
        TableScan {
            schema,
            snapshot,
            tablets,
            remaining: limit,
            queue,
            inline: None,
            rx,
            workers,
            _pins: pins,
        }
    }

    /// Schema of the returned batches.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The snapshot every tablet is read at: pass it as [`ScanRequest::snapshot`] to read the
    /// same state again.
    pub fn snapshot(&self) -> Timestamp {
        self.snapshot
    }

    /// Tablets this scan reads (the others were pruned by the predicates).
    pub fn tablets_scanned(&self) -> usize {
        self.tablets
    }

    fn stop(&mut self) {
        self.queue.lock().clear();
        self.inline = None;
        // Disconnect: each worker stops at its next send.
        drop(self.rx.take());
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }

    /// The next batch from anywhere: the workers' channel first (so they never wait on a full
    /// channel while the caller reads), then the caller's own tablet, then a new tablet, and
    /// only when no tablet is left unstarted, a blocking wait for the workers.
    fn next_batch(&mut self) -> Option<Result<RecordBatch>> {
        loop {
            if let Some(rx) = &self.rx {
                match rx.try_recv() {
                    Ok(b) => return Some(b),
                    Err(TryRecvError::Empty) => {}
                    Err(TryRecvError::Disconnected) => self.rx = None,
                }
            }
            if let Some(scan) = &mut self.inline {
                match scan.next() {
                    Some(b) => return Some(b),
                    None => self.inline = None,
                }
                continue;
            }
            let next = self.queue.lock().pop_front();
            if let Some(scan) = next {
                self.inline = Some(Box::new(scan));
                continue;
            }
            let rx = self.rx.as_ref()?;
            match rx.recv() {
                Ok(b) => return Some(b),
                Err(_) => {
                    self.rx = None;
                    return None;
                }
            }
        }
    }
}

impl Iterator for TableScan {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == Some(0) {
            self.stop();
            return None;
        }
        match self.next_batch() {
            None => {
                self.stop();
                None
            }
            Some(Err(e)) => {
                self.stop();
                Some(Err(e))
            }
            Some(Ok(batch)) => {
                let batch = match &mut self.remaining {
                    None => batch,
                    Some(left) => {
                        let take = batch.num_rows().min(*left);
                        *left -= take;
                        batch.slice(0, take)
                    }
                };
                Some(Ok(batch))
            }
        }
    }
}

impl Drop for TableScan {
    fn drop(&mut self) {
        self.stop();
    }
}

fn no_partition_error(layout: &Layout, columns: &[ArrayRef], row: usize) -> Result<RowError> {
    let rc = layout
        .partitioner
        .range
        .as_ref()
        .expect("only range partitioning leaves rows unrouted");
    let name = &layout.schema.columns()[rc.column].name;
    let value = Value::from_array(&columns[rc.column], row)?;
    Ok(RowError {
        row,
        kind: RowErrorKind::NoPartition,
        message: format!("no range partition of the table holds {name} = {value}"),
    })
}

impl WriteOutcome {
    /// Adds a tablet's outcome; `rows` maps its row indices back to the table's batch.
    fn merge(&mut self, o: WriteOutcome, rows: Option<&[u32]>) {
        self.timestamp = self.timestamp.max(o.timestamp);
        self.applied += o.applied;
        self.ignored += o.ignored;
        self.errors.extend(o.errors.into_iter().map(|mut e| {
            if let Some(rows) = rows {
                e.row = rows[e.row] as usize;
            }
            e
        }));
    }
}
