//! The maintenance manager: one per process (per [`crate::Database`], or per standalone
//! tablet), a bounded pool of background threads that keeps every tablet's read cost and the
//! write buffers' memory bounded while writes continue.
//!
//! At each moment a worker runs the most valuable operation across all tablets:
//! - **flush** a write buffer: when the process is over its memory budget's soft limit (the
//!   biggest buffer first), when a buffer reaches its tablet's threshold, when its oldest
//!   write is older than `max_buffer_age`, or when the WAL has grown past `max_wal_bytes`;
//! - **merge** segments whose key ranges overlap (each key column's bounds, so time windows of
//!   a time-series key do not count as overlapping), which is what a lookup pays for;
//! - **merge small segments** (frequent small flushes) into bigger ones;
//! - **rewrite** a segment whose rows are mostly deleted, purging them (and the history no
//!   snapshot can read any more).
//!
//! Every compaction reads at most `compaction_input_bytes`, so none stalls the others for
//! long. With more than one worker, the first flushes at the process's priority and takes
//! only urgent compactions (a tablet fallen behind); the others compact at a lower priority
//! and flush only while the first is busy.
//!
//! Write backpressure: every tablet charges its buffers (and frozen buffers awaiting their
//! flush) to the process's budget. Above the soft limit flushes come first and writers are
//! slowed a little (the more, the closer to the hard limit); at the hard limit a write waits up
//! to `write_stall_timeout` for flushes to free memory, then fails with
//! [`StorageError::Busy`], which clients may retry.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::error::{Result, StorageError};
use crate::segment::SegmentMeta;
use crate::tablet::Inner as TabletInner;

/// Settings of the maintenance manager (one per process).
#[derive(Clone, Debug)]
pub struct MaintenanceOptions {
    /// Background threads. With two or more, the first one flushes (and compacts only tablets
    /// that have fallen behind), so a flush does not wait behind routine compactions.
    pub threads: usize,
    /// Nice levels the compacting threads run below the process (0 to 19, capped at nice 19;
    /// 0 leaves them at the process's priority), when there are two or more threads.
    /// Compactions only lower future read costs, so under load they yield the CPU to requests
    /// and flushes; they still run on whatever CPU is idle. Linux lets a thread lower its
    /// priority but not raise it back, so the role of a thread is fixed when it starts.
    pub compaction_nice: i32,
    /// Bytes all write buffers of the process may hold (the hard limit).
    pub memory_budget_bytes: usize,
    /// Percent of the budget above which flushes come first and writers slow down.
    pub soft_limit_percent: u8,
    /// How long a write waits at the hard limit before failing as busy.
    pub write_stall_timeout: Duration,
    /// Largest input of one compaction, in bytes of segment files.
    pub compaction_input_bytes: u64,
    /// Segments smaller than this are merged with their neighbours once there are
    /// `small_segments_to_merge` of them.
    pub target_segment_bytes: u64,
    /// See `target_segment_bytes`.
    pub small_segments_to_merge: usize,
    /// A segment whose deleted rows (that no snapshot still reads) reach this fraction is
    /// rewritten without them.
    pub rewrite_deleted_ratio: f64,
    /// A buffer is flushed once its oldest write is this old, so that recovery replays little
    /// and scans of fresh data stay columnar.
    pub max_buffer_age: Duration,
    /// A tablet's buffer is flushed once its WAL holds this many bytes.
    pub max_wal_bytes: u64,
    /// How often workers look for work when nothing wakes them.
    pub tick: Duration,
}

impl MaintenanceOptions {
    /// The soft limit in bytes.
    pub fn soft_limit_bytes(&self) -> usize {
        (self.memory_budget_bytes as u128 * self.soft_limit_percent.min(100) as u128 / 100) as usize
    }

    /// Checks that the settings make sense.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str| {
            Err(StorageError::InvalidInput(format!(
                "maintenance option {what}"
            )))
        };
        if self.threads == 0 {
            return bad("threads must be at least 1");
        }
        if !(0..=19).contains(&self.compaction_nice) {
            return bad("compaction_nice must be between 0 and 19");
        }
        if self.memory_budget_bytes == 0 {
            return bad("memory_budget_bytes must be at least 1");
        }
        if self.soft_limit_percent == 0 || self.soft_limit_percent > 100 {
            return bad("soft_limit_percent must be between 1 and 100");
        }
        if !(self.rewrite_deleted_ratio > 0.0 && self.rewrite_deleted_ratio <= 1.0) {
            return bad("rewrite_deleted_ratio must be in (0, 1]");
        }
        if self.small_segments_to_merge < 2 {
            return bad("small_segments_to_merge must be at least 2");
        }
        Ok(())
    }
}

/// Physical memory of the machine, from `/proc/meminfo` (4 GiB where that is unavailable).
pub fn machine_memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(4 << 30, |kb| kb * 1024)
}

impl Default for MaintenanceOptions {
    /// Write buffers may take a fifth of the machine's memory (at least 256 MiB); two threads
    /// (one for flushes), or a quarter of the cores on bigger machines.
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        MaintenanceOptions {
            threads: (cores / 4).clamp(2, 8),
            compaction_nice: 10,
            memory_budget_bytes: (machine_memory_bytes() / 5).max(256 << 20) as usize,
            soft_limit_percent: 60,
            write_stall_timeout: Duration::from_secs(10),
            compaction_input_bytes: 128 << 20,
            target_segment_bytes: 32 << 20,
            small_segments_to_merge: 4,
            rewrite_deleted_ratio: 0.2,
            max_buffer_age: Duration::from_secs(30),
            max_wal_bytes: 1 << 30,
            tick: Duration::from_millis(500),
        }
    }
}

/// One background operation on one tablet.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Op {
    Flush,
    /// Merge these on-disk segments (one: rewrite it).
    Compact(Vec<u64>),
}

/// An operation a tablet proposes, with its value (higher runs first).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Candidate {
    pub op: Op,
    pub score: f64,
    pub why: &'static str,
    /// A compaction of a tablet whose compactions have fallen behind (see [`behind_overlap`]): the
    /// flush worker takes it too, at full priority.
    pub urgent: bool,
}

/// A tablet's compactions are behind once one and a half times `small_segments_to_merge` of
/// its segments overlap one segment (an upper bound of what a lookup pays for: ranges that
/// meet need not share keys), or four times that many are small (disjoint small segments,
/// such as a bulk load's time windows, cost reads little, so they may wait longer). Only the
/// merge that reduces such a backlog is urgent (an overlap merge from such a group; a merge of
/// at least `small_segments_to_merge` small segments), and it goes before routine work. The
/// compacting workers run at a lower priority; when writes keep every core busy they get
/// little CPU, and without a bound the segments a read must open would pile up. Past this
/// point the flush worker compacts as well, at full priority, and flushes may wait for it:
/// writers then slow down at the memory budget, which is the backpressure that lets
/// compaction catch up.
fn behind_overlap(opts: &MaintenanceOptions) -> usize {
    (opts.small_segments_to_merge * 3).div_ceil(2)
}

/// See [`behind_overlap`].
fn behind_small(opts: &MaintenanceOptions) -> usize {
    4 * opts.small_segments_to_merge
}

/// Scores: every flush outranks every compaction; memory pressure outranks the rest.
mod score {
    pub const FLUSH_HARD: f64 = 100_000.0;
    pub const FLUSH_SOFT: f64 = 10_000.0;
    pub const FLUSH_THRESHOLD: f64 = 1_000.0;
    pub const FLUSH_AGE_OR_WAL: f64 = 500.0;
    pub const MERGE_OVERLAP: f64 = 100.0;
    pub const REWRITE: f64 = 50.0;
    pub const MERGE_SMALL: f64 = 10.0;
}

/// What the policy knows of a tablet's write buffer.
#[derive(Clone, Debug, Default)]
pub(crate) struct BufferState {
    /// Bytes charged to the budget (buffer plus frozen buffers awaiting their flush).
    pub bytes: usize,
    /// The tablet's own flush threshold.
    pub threshold: Option<usize>,
    /// Age of the oldest write in the buffer.
    pub age: Option<Duration>,
    pub wal_bytes: u64,
    /// A frozen buffer awaits its flush (a failed one is retried).
    pub pending: bool,
}

/// The flush a buffer needs, if any.
pub(crate) fn flush_candidate(
    b: &BufferState,
    opts: &MaintenanceOptions,
    used: usize,
) -> Option<Candidate> {
    // Deletions of segment rows add no buffer bytes but do age the buffer and grow the WAL:
    // such a flush moves the checkpoint (and with it what compactions may purge).
    if b.bytes == 0 && !b.pending && b.age.is_none() && b.wal_bytes < opts.max_wal_bytes {
        return None;
    }
    let mib = b.bytes as f64 / (1 << 20) as f64;
    let (score, why) = if used >= opts.memory_budget_bytes {
        (score::FLUSH_HARD + mib, "memory budget exhausted")
    } else if used >= opts.soft_limit_bytes() {
        (score::FLUSH_SOFT + mib, "memory above the soft limit")
    } else if b.pending || b.threshold.is_some_and(|t| b.bytes >= t) {
        (score::FLUSH_THRESHOLD + mib, "buffer at its threshold")
    } else if b.age.is_some_and(|a| a >= opts.max_buffer_age) {
        (score::FLUSH_AGE_OR_WAL + mib, "buffer age")
    } else if b.wal_bytes >= opts.max_wal_bytes {
        (score::FLUSH_AGE_OR_WAL + mib, "WAL size")
    } else {
        return None;
    };
    Some(Candidate {
        op: Op::Flush,
        score,
        why,
        urgent: false,
    })
}

/// What the policy knows of an on-disk segment.
#[derive(Clone, Debug)]
pub(crate) struct SegmentState<'a> {
    pub meta: &'a SegmentMeta,
    /// Deleted rows no snapshot can read any more (a compaction would drop them).
    pub purgeable_rows: u64,
}

/// Whether two segments' key ranges meet: in every key column when both know their column
/// bounds (so time windows of a time-series key are told apart), else by whole key.
fn overlap(a: &SegmentMeta, b: &SegmentMeta) -> bool {
    if a.key_bounds.len() == b.key_bounds.len() && !a.key_bounds.is_empty() {
        a.key_bounds
            .iter()
            .zip(&b.key_bounds)
            .all(|((alo, ahi), (blo, bhi))| alo <= bhi && blo <= ahi)
    } else {
        a.min_key <= b.max_key && b.min_key <= a.max_key
    }
}

/// About how many segments a lookup of a key in a segment must consider: for each segment,
/// the segments whose key ranges meet its own, averaged over rows. An upper bound (ranges
/// that meet need not share keys); 1.0 when no two segments overlap.
pub(crate) fn average_segments_per_key(segments: &[&SegmentMeta]) -> f64 {
    let rows: u64 = segments.iter().map(|s| s.rows).sum();
    if rows == 0 {
        return 0.0;
    }
    let weighted: f64 = segments
        .iter()
        .map(|s| {
            let height = segments.iter().filter(|t| overlap(s, t)).count();
            s.rows as f64 * height as f64
        })
        .sum();
    weighted / rows as f64
}

/// The most valuable compaction of one tablet's on-disk segments, if any.
pub(crate) fn compaction_candidate(
    segments: &[SegmentState<'_>],
    opts: &MaintenanceOptions,
) -> Option<Candidate> {
    let budget = opts.compaction_input_bytes;
    let mut best: Option<Candidate> = None;
    // Backlog first: an urgent candidate outranks any routine one.
    let mut offer = |c: Candidate| {
        if best
            .as_ref()
            .is_none_or(|b| (c.urgent, c.score) > (b.urgent, b.score))
        {
            best = Some(c);
        }
    };
    // 1. Overlapping segments: for each segment, those meeting it, smallest first; a bigger
    //    one joins only while it is no more than twice what is gathered so far (size-tiered:
    //    a large segment is not rewritten for every small one that lands on it).
    for s in segments {
        let mut group: Vec<&SegmentState<'_>> = segments
            .iter()
            .filter(|t| overlap(s.meta, t.meta))
            .collect();
        let urgent = group.len() >= behind_overlap(opts);
        if group.len() < 2 {
            continue;
        }
        group.sort_by_key(|t| (t.meta.file_bytes, t.meta.id));
        let mut chosen: Vec<u64> = vec![];
        let mut total = 0u64;
        for t in group {
            let bytes = t.meta.file_bytes.max(1);
            if total + bytes > budget || (!chosen.is_empty() && bytes > 2 * total.max(1)) {
                break;
            }
            chosen.push(t.meta.id);
            total += bytes;
        }
        if chosen.len() >= 2 {
            offer(Candidate {
                urgent,
                ..merge(chosen, score::MERGE_OVERLAP, "overlapping segments")
            });
        }
    }
    // 2. Rewrites: mostly deleted segments.
    for s in segments {
        let ratio = s.purgeable_rows as f64 / s.meta.rows.max(1) as f64;
        if ratio >= opts.rewrite_deleted_ratio && s.meta.file_bytes <= budget {
            offer(Candidate {
                score: score::REWRITE + 10.0 * ratio,
                op: Op::Compact(vec![s.meta.id]),
                why: "deleted rows",
                urgent: false,
            });
        }
    }
    // 3. Many small segments: merge neighbours in commit-time order (for time-series data,
    //    neighbouring time windows), the oldest run of two or more that fits in one segment of
    //    the target size. Capping the output keeps time windows apart: merged into one, a
    //    bulk load's windows would give every segment the whole time range, and a filter on a
    //    later key column (`ts >= ...`) could no longer skip segments by their bounds.
    let mut small: Vec<&SegmentState<'_>> = segments
        .iter()
        .filter(|s| s.meta.file_bytes < opts.target_segment_bytes)
        .collect();
    let many_small = small.len() >= behind_small(opts);
    if small.len() >= opts.small_segments_to_merge {
        small.sort_by_key(|s| (s.meta.min_ts, s.meta.id));
        let cap = budget.min(opts.target_segment_bytes.max(1));
        for start in 0..small.len() {
            let mut chosen = vec![];
            let mut total = 0u64;
            for s in &small[start..] {
                if total + s.meta.file_bytes > cap {
                    break;
                }
                chosen.push(s.meta.id);
                total += s.meta.file_bytes;
            }
            if chosen.len() >= 2 {
                // Urgent only if it takes a real bite out of the backlog: small segments
                // that cannot merge (each over half the target) must not make every routine
                // merge of the tablet urgent.
                let urgent = many_small && chosen.len() >= opts.small_segments_to_merge;
                offer(Candidate {
                    urgent,
                    ..merge(chosen, score::MERGE_SMALL, "small segments")
                });
                break;
            }
        }
    }
    best
}

/// A merge of segments `ids`, scored above `base` by how many it folds into one (up to 39
/// more: an overlap merge stays below every flush, and a small-segment merge below a rewrite).
fn merge(mut ids: Vec<u64>, base: f64, why: &'static str) -> Candidate {
    ids.sort_unstable();
    Candidate {
        score: base + ids.len().min(39) as f64,
        op: Op::Compact(ids),
        why,
        urgent: false,
    }
}

/// Process-wide counters of maintenance work.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub flushes: AtomicU64,
    pub flush_micros: AtomicU64,
    pub compactions: AtomicU64,
    pub compaction_micros: AtomicU64,
    pub bytes_compacted: AtomicU64,
    pub rows_purged: AtomicU64,
    pub write_stalls: AtomicU64,
    pub writes_refused: AtomicU64,
    pub failures: AtomicU64,
}

/// A snapshot of the manager's state, for metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MaintenanceStats {
    /// Bytes the write buffers hold (charged to the budget).
    pub memory_used_bytes: usize,
    /// The budget (hard limit).
    pub memory_budget_bytes: usize,
    /// The soft limit.
    pub memory_soft_limit_bytes: usize,
    /// Flushes run in the background.
    pub flushes: u64,
    /// Time spent in them, in microseconds.
    pub flush_micros: u64,
    /// Compactions run in the background.
    pub compactions: u64,
    /// Time spent in them, in microseconds.
    pub compaction_micros: u64,
    /// Input bytes of those compactions.
    pub bytes_compacted: u64,
    /// Rows they purged.
    pub rows_purged: u64,
    /// Writes slowed down above the soft limit or made to wait at the hard limit.
    pub write_stalls: u64,
    /// Writes refused as busy after waiting at the hard limit.
    pub writes_refused: u64,
    /// Background operations that failed (they are retried).
    pub failures: u64,
    /// Flushes and compactions in progress now (a benchmark waits for 0 to measure a settled
    /// layout).
    pub running: usize,
}

/// State shared by the manager's workers and its tablets.
pub(crate) struct Shared {
    pub opts: MaintenanceOptions,
    tablets: Mutex<Vec<Weak<TabletInner>>>,
    wake: Mutex<bool>,
    wake_cv: Condvar,
    shutdown: AtomicBool,
    /// Bytes charged by every tablet's buffers.
    used: AtomicUsize,
    freed: Mutex<()>,
    freed_cv: Condvar,
    /// Worker 0 (the flush worker, at the process's priority) is running an operation: only
    /// then do the lower-priority workers take flushes.
    flusher_busy: AtomicBool,
    /// Flushes and compactions in progress.
    running: AtomicUsize,
    pub counters: Counters,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Maintenance")
            .field("used", &self.used.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Adds a tablet to the ones the workers look after.
    pub fn register(&self, tablet: Weak<TabletInner>) {
        let mut t = self.tablets.lock();
        t.retain(|w| w.strong_count() > 0);
        t.push(tablet);
    }

    /// Wakes a worker (work may be waiting).
    pub fn wake(&self) {
        *self.wake.lock() = true;
        // All of them: a flush is for worker 0, which a single notification may miss.
        self.wake_cv.notify_all();
    }

    /// Changes the bytes charged to the budget by `delta` (a tablet's charge moved).
    pub fn charge(&self, delta: isize) {
        if delta >= 0 {
            let after = self.used.fetch_add(delta as usize, Ordering::AcqRel) + delta as usize;
            if after >= self.opts.soft_limit_bytes() {
                self.wake();
            }
        } else {
            self.used.fetch_sub(delta.unsigned_abs(), Ordering::AcqRel);
            let _g = self.freed.lock();
            self.freed_cv.notify_all();
        }
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// Write backpressure, before a write takes its tablet's writer lock: a short pause above
    /// the soft limit, growing towards the hard limit; at the hard limit, wait for flushes for
    /// up to `write_stall_timeout`, then refuse.
    pub fn admit_write(&self) -> Result<()> {
        let used = self.used();
        let soft = self.opts.soft_limit_bytes();
        if used < soft {
            return Ok(());
        }
        let hard = self.opts.memory_budget_bytes;
        self.counters.write_stalls.fetch_add(1, Ordering::Relaxed);
        self.wake();
        if used < hard {
            let over = (used - soft) as f64 / (hard - soft).max(1) as f64;
            std::thread::sleep(Duration::from_micros((over * 2_000.0) as u64));
            return Ok(());
        }
        let deadline = Instant::now() + self.opts.write_stall_timeout;
        let mut g = self.freed.lock();
        while self.used() >= hard {
            if self.freed_cv.wait_until(&mut g, deadline).timed_out() && self.used() >= hard {
                self.counters.writes_refused.fetch_add(1, Ordering::Relaxed);
                return Err(StorageError::Busy(format!(
                    "write buffers are full ({} MiB of a {} MiB budget) and flushes have not \
                     freed memory for {:?}: server busy, retry later",
                    self.used() >> 20,
                    hard >> 20,
                    self.opts.write_stall_timeout
                )));
            }
        }
        Ok(())
    }

    /// The most valuable operation across all tablets that no worker is running yet, marked
    /// as running, for a worker of `role`.
    fn pick(&self, role: Role) -> Option<(Arc<TabletInner>, Candidate)> {
        let flushes = match role {
            Role::All | Role::Flusher => true,
            Role::Compacter => self.flusher_busy.load(Ordering::Acquire),
        };
        let tablets: Vec<Arc<TabletInner>> = {
            let mut t = self.tablets.lock();
            t.retain(|w| w.strong_count() > 0);
            t.iter().filter_map(|w| w.upgrade()).collect()
        };
        let used = self.used();
        let mut wanted: Vec<(Arc<TabletInner>, Candidate)> = vec![];
        for t in tablets {
            for c in t.maintenance_candidates(&self.opts, used) {
                let ours = match c.op {
                    Op::Flush => flushes,
                    Op::Compact(_) => role != Role::Flusher || c.urgent,
                };
                if ours {
                    wanted.push((t.clone(), c));
                }
            }
        }
        // Best first; one another worker claimed since is passed over for the next, so that
        // a worker woken with the others does not go back to sleep while work is left.
        // Flushes first, then urgent compactions (across tablets too), each by score.
        let rank = |c: &Candidate| (matches!(c.op, Op::Flush), c.urgent);
        wanted.sort_by(|(_, a), (_, b)| rank(b).cmp(&rank(a)).then(b.score.total_cmp(&a.score)));
        wanted.into_iter().find(|(t, c)| t.claim(&c.op))
    }

    fn run(&self, t: &TabletInner, c: &Candidate) {
        self.running.fetch_add(1, Ordering::AcqRel);
        let start = Instant::now();
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| t.run_maintenance(&c.op)));
        let micros = start.elapsed().as_micros() as u64;
        t.release(&c.op);
        self.running.fetch_sub(1, Ordering::AcqRel);
        match &c.op {
            Op::Flush => {
                self.counters.flushes.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .flush_micros
                    .fetch_add(micros, Ordering::Relaxed);
            }
            Op::Compact(_) => {
                self.counters.compactions.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .compaction_micros
                    .fetch_add(micros, Ordering::Relaxed);
            }
        }
        match outcome {
            Ok(Ok(Some(report))) => {
                self.counters
                    .bytes_compacted
                    .fetch_add(report.input_bytes, Ordering::Relaxed);
                self.counters
                    .rows_purged
                    .fetch_add(report.purged_rows, Ordering::Relaxed);
                tracing::info!(
                    why = c.why,
                    segments = report.input_segments,
                    input_mib = report.input_bytes >> 20,
                    output_rows = report.output_rows,
                    purged_rows = report.purged_rows,
                    ms = micros / 1000,
                    "compacted"
                );
            }
            Ok(Ok(None)) => {
                tracing::debug!(why = c.why, ms = micros / 1000, "flushed");
            }
            Ok(Err(e)) => {
                self.counters.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(op = ?c.op, error = %e, "background maintenance failed; will retry");
                // Do not spin on a failing operation.
                std::thread::sleep(self.opts.tick);
            }
            Err(_) => {
                self.counters.failures.fetch_add(1, Ordering::Relaxed);
                t.poison_from_maintenance();
            }
        }
        let _g = self.freed.lock();
        self.freed_cv.notify_all();
    }

    pub fn stats(&self) -> MaintenanceStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MaintenanceStats {
            memory_used_bytes: self.used(),
            memory_budget_bytes: self.opts.memory_budget_bytes,
            memory_soft_limit_bytes: self.opts.soft_limit_bytes(),
            flushes: get(&c.flushes),
            flush_micros: get(&c.flush_micros),
            compactions: get(&c.compactions),
            compaction_micros: get(&c.compaction_micros),
            bytes_compacted: get(&c.bytes_compacted),
            rows_purged: get(&c.rows_purged),
            write_stalls: get(&c.write_stalls),
            writes_refused: get(&c.writes_refused),
            failures: get(&c.failures),
            running: self.running.load(Ordering::Acquire),
        }
    }
}

/// The manager: owns the worker threads, which stop when it is dropped.
pub(crate) struct Maintenance {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Maintenance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.shared.fmt(f)
    }
}

impl Maintenance {
    /// Starts `opts.threads` workers.
    pub fn start(opts: MaintenanceOptions) -> Result<Maintenance> {
        opts.validate()?;
        let shared = Arc::new(Shared {
            opts,
            tablets: Mutex::new(vec![]),
            wake: Mutex::new(false),
            wake_cv: Condvar::new(),
            shutdown: AtomicBool::new(false),
            used: AtomicUsize::new(0),
            freed: Mutex::new(()),
            freed_cv: Condvar::new(),
            flusher_busy: AtomicBool::new(false),
            running: AtomicUsize::new(0),
            counters: Counters::default(),
        });
        let workers = (0..shared.opts.threads)
            .map(|i| {
                let s = shared.clone();
                std::thread::Builder::new()
                    .name(format!("nyala-maint-{i}"))
                    .spawn(move || worker(&s, i))
                    .map_err(StorageError::Io)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Maintenance { shared, workers })
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

impl Drop for Maintenance {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        {
            let mut w = self.shared.wake.lock();
            *w = true;
            self.shared.wake_cv.notify_all();
        }
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}

/// What a maintenance worker takes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// The only worker: everything, at the process's priority.
    All,
    /// Worker 0 of several: flushes, and urgent compactions ([`behind_overlap`]), at the
    /// process's priority.
    Flusher,
    /// The others: compactions at `compaction_nice` levels below the process, and flushes
    /// while the flusher is busy.
    Compacter,
}

/// Worker `i`'s loop.
fn worker(s: &Shared, i: usize) {
    let role = match (s.opts.threads, i) {
        (1, _) => Role::All,
        (_, 0) => Role::Flusher,
        _ => Role::Compacter,
    };
    if role == Role::Compacter && s.opts.compaction_nice > 0 {
        lower_priority(s.opts.compaction_nice);
    }
    loop {
        {
            let mut wanted = s.wake.lock();
            if !*wanted {
                s.wake_cv.wait_for(&mut wanted, s.opts.tick);
            }
            *wanted = false;
        }
        // Work until there is none (or shutdown), then wait again.
        loop {
            if s.shutdown.load(Ordering::Acquire) {
                return;
            }
            let Some((t, c)) = s.pick(role) else {
                break;
            };
            if role == Role::Flusher {
                s.flusher_busy.store(true, Ordering::Release);
            }
            s.run(&t, &c);
            if role == Role::Flusher {
                s.flusher_busy.store(false, Ordering::Release);
            }
        }
    }
}

/// Lowers the calling thread's CPU priority by `levels` nice levels from its current one (at
/// most to 19; Linux: `setpriority` on a thread id sets that thread's nice value alone).
/// Relative, so that a server started with `nice` keeps its compactions below itself and
/// never above. Failure only leaves the priority as it was.
fn lower_priority(levels: i32) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain system calls on the calling thread; `errno` is thread-local, cleared
        // first because -1 is a valid nice value.
        let rc = unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            *libc::__errno_location() = 0;
            let now = libc::getpriority(libc::PRIO_PROCESS, tid);
            if now == -1 && *libc::__errno_location() != 0 {
                -1
            } else {
                libc::setpriority(libc::PRIO_PROCESS, tid, (now + levels).min(19))
            }
        };
        if rc != 0 {
            tracing::debug!(
                error = %std::io::Error::last_os_error(),
                "could not lower the compaction thread's priority"
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = levels;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: u64, bytes: u64, lo: u8, hi: u8) -> SegmentMeta {
        SegmentMeta {
            id,
            rows: bytes,
            min_key: vec![lo],
            max_key: vec![hi],
            min_ts: id,
            max_ts: id,
            file_bytes: bytes,
            key_bounds: vec![(vec![lo], vec![hi])],
            column_ids: vec![],
        }
    }

    fn states(m: &[SegmentMeta]) -> Vec<SegmentState<'_>> {
        m.iter()
            .map(|meta| SegmentState {
                meta,
                purgeable_rows: 0,
            })
            .collect()
    }

    #[test]
    fn overlapping_segments_merge_smallest_first_and_size_tiered() {
        let opts = MaintenanceOptions::default();
        // A big segment over everything, three small ones overlapping it and each other.
        let m = vec![
            meta(1, 100 << 20, 0, 200),
            meta(2, 1 << 20, 10, 50),
            meta(3, 1 << 20, 20, 60),
            meta(4, 2 << 20, 30, 70),
        ];
        let c = compaction_candidate(&states(&m), &opts).unwrap();
        assert_eq!(c.op, Op::Compact(vec![2, 3, 4]), "{c:?}");
        assert!((average_segments_per_key(&m.iter().collect::<Vec<_>>()) - 4.0).abs() < 0.1);
        // Disjoint, big segments: nothing to do.
        let m = vec![meta(1, 100 << 20, 0, 10), meta(2, 100 << 20, 11, 20)];
        assert!(compaction_candidate(&states(&m), &opts).is_none());
        assert_eq!(average_segments_per_key(&m.iter().collect::<Vec<_>>()), 1.0);
    }

    #[test]
    fn small_disjoint_segments_merge_and_deleted_ones_are_rewritten() {
        let opts = MaintenanceOptions::default();
        let m: Vec<SegmentMeta> = (0..5)
            .map(|i| meta(i + 1, 1 << 20, i as u8 * 10, i as u8 * 10 + 5))
            .collect();
        let c = compaction_candidate(&states(&m), &opts).unwrap();
        assert_eq!(c.op, Op::Compact(vec![1, 2, 3, 4, 5]));
        assert!(!c.urgent, "five small segments are routine work");
        // Sixteen small segments (four times the merge trigger), or six segments overlapping
        // one another (one and a half times): compactions are behind.
        let many: Vec<SegmentMeta> = (0..16)
            .map(|i| meta(i + 1, 1 << 20, i as u8 * 10, i as u8 * 10 + 5))
            .collect();
        assert!(compaction_candidate(&states(&many), &opts).unwrap().urgent);
        assert!(
            !compaction_candidate(&states(&many[..15]), &opts)
                .unwrap()
                .urgent
        );
        let overlapping: Vec<SegmentMeta> = (0..6).map(|i| meta(i + 1, 40 << 20, 0, 10)).collect();
        assert!(
            compaction_candidate(&states(&overlapping), &opts)
                .unwrap()
                .urgent
        );
        assert!(
            !compaction_candidate(&states(&overlapping[..5]), &opts)
                .unwrap()
                .urgent
        );
        // Small segments that cannot merge (each over half the target) are no backlog a
        // merge could reduce: a routine merge of two fresh flushes stays routine.
        let mut stuck: Vec<SegmentMeta> = (0..16)
            .map(|i| meta(i + 1, 20 << 20, i as u8 * 10, i as u8 * 10 + 5))
            .collect();
        stuck.push(meta(100, 1 << 20, 200, 210));
        stuck.push(meta(101, 1 << 20, 205, 215));
        let c = compaction_candidate(&states(&stuck), &opts).unwrap();
        assert_eq!(c.op, Op::Compact(vec![100, 101]));
        assert!(!c.urgent, "{c:?}");
        // However many segments a merge folds, it stays below every flush.
        let heap: Vec<SegmentMeta> = (0..450).map(|i| meta(i + 1, 100 << 10, 0, 10)).collect();
        let c = compaction_candidate(&states(&heap), &opts).unwrap();
        assert!(
            matches!(&c.op, Op::Compact(ids) if ids.len() > 100),
            "{:?}",
            c.why
        );
        assert!(c.score < score::FLUSH_AGE_OR_WAL, "{}", c.score);
        // Time windows of 9 MiB (a bulk load's flushes): the oldest three make one segment
        // of at most the target size; the newer windows stay apart.
        let m: Vec<SegmentMeta> = (0..5)
            .map(|i| meta(i + 1, 9 << 20, i as u8 * 10, i as u8 * 10 + 5))
            .collect();
        let c = compaction_candidate(&states(&m), &opts).unwrap();
        assert_eq!(c.op, Op::Compact(vec![1, 2, 3]));
        // An old segment near the target size does not block its younger neighbours.
        let mut m = m;
        m[0].file_bytes = 30 << 20;
        let c = compaction_candidate(&states(&m), &opts).unwrap();
        assert_eq!(c.op, Op::Compact(vec![2, 3, 4]));
        let m = vec![meta(1, 100 << 20, 0, 10), meta(2, 100 << 20, 11, 20)];
        let mut s = states(&m);
        s[1].purgeable_rows = m[1].rows / 2;
        let c = compaction_candidate(&s, &opts).unwrap();
        assert_eq!(c.op, Op::Compact(vec![2]));
    }

    #[test]
    fn flushes_rank_by_memory_pressure() {
        let opts = MaintenanceOptions {
            memory_budget_bytes: 1000,
            ..Default::default()
        };
        let b = BufferState {
            bytes: 10,
            ..Default::default()
        };
        assert!(flush_candidate(&b, &opts, 100).is_none());
        assert!(flush_candidate(&b, &opts, 700).unwrap().score >= score::FLUSH_SOFT);
        assert!(flush_candidate(&b, &opts, 1000).unwrap().score >= score::FLUSH_HARD);
        let old = BufferState {
            age: Some(Duration::from_secs(3600)),
            ..b
        };
        assert_eq!(flush_candidate(&old, &opts, 0).unwrap().why, "buffer age");
    }
}
