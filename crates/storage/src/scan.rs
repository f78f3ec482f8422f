//! Scans: one snapshot, every source (segments, then the write buffer), predicates applied.

use std::collections::VecDeque;
use std::ops::Bound;
use std::sync::Arc;

use arrow::array::{make_array, Array, ArrayRef, BooleanArray, RecordBatch, RecordBatchOptions};
use arrow::compute::filter_record_batch;
use arrow::compute::kernels::boolean::and;
use arrow_schema::SchemaRef;

use nyala_common::RowCodec;

use crate::clock::Timestamp;
use crate::colcache::ColumnCache;
use crate::error::Result;
use crate::memtable::MemTable;
use crate::predicate::{bind, BoundPredicate, KeyRange, Predicate};
use crate::segment::{filter_by_snapshot, CacheUse, Segment, SegmentBatches};
use crate::tablet::Version;

/// Default rows per returned batch.
pub const DEFAULT_BATCH_ROWS: usize = 8192;

/// What to read.
#[derive(Clone, Debug, Default)]
pub struct ScanRequest {
    /// Columns to return, in this order (`None`: every column in table order; an empty list
    /// returns batches with row counts only).
    pub projection: Option<Vec<String>>,
    /// Conditions every returned row satisfies (all of them).
    pub predicates: Vec<Predicate>,
    /// Read as of this timestamp (`None`: the latest).
    pub snapshot: Option<Timestamp>,
    /// Rows per batch (`None`: [`DEFAULT_BATCH_ROWS`]).
    pub batch_size: Option<usize>,
    /// Stop after this many rows.
    pub limit: Option<usize>,
}

/// Which share of a tablet's rows a scan reads: part `index` of `count` takes the same slice
/// of every segment's rows (by position), and the last part the write buffer too. Parts of one
/// tablet must read one [`Version`]: positions mean nothing across versions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Part {
    pub index: usize,
    pub count: usize,
}

impl Part {
    /// All of the tablet.
    pub const WHOLE: Part = Part { index: 0, count: 1 };

    /// This part's rows of a segment of `rows` rows.
    fn window(&self, rows: u64) -> std::ops::Range<u64> {
        let at = |i: usize| (rows as u128 * i as u128 / self.count as u128) as u64;
        at(self.index)..at(self.index + 1)
    }

    fn is_first(&self) -> bool {
        self.index == 0
    }

    fn is_last(&self) -> bool {
        self.index + 1 == self.count
    }
}

enum Source {
    /// A segment, and which of its rows (positions) to read.
    Segment(Arc<Segment>, std::ops::Range<u64>),
    Buffer(Arc<MemTable>),
}

/// Where the next chunk of the write buffer starts.
enum BufferCursor {
    Start,
    After(Vec<u8>),
    Done,
}

/// A running scan: an iterator of batches, all read at [`TabletScan::snapshot`]. Rows come in
/// no particular order. Holding it pins the segments it reads.
pub struct TabletScan {
    codec: Arc<RowCodec>,
    snapshot: Timestamp,
    schema: SchemaRef,
    /// What every source reads and which predicates it checks; a segment whose key-column
    /// bounds prove some predicates true for all its rows reads with a narrower one.
    layout: Arc<Layout>,
    /// The output columns (table indices, output order).
    output: Vec<usize>,
    preds: Vec<BoundPredicate>,
    range: KeyRange,
    batch_size: usize,
    remaining: Option<usize>,
    sources: VecDeque<Source>,
    /// The segment being read.
    current: Option<CurrentSegment>,
    buffer_cursor: BufferCursor,
    ready: VecDeque<RecordBatch>,
    segments_read: usize,
    rows_skipped: u64,
    cache: Option<CacheUse>,
}

/// A segment being read: its batches, its timestamp column, and its layout.
struct CurrentSegment {
    batches: SegmentBatches,
    ts_col: Option<usize>,
    layout: Arc<Layout>,
    /// Pinned, so that its files outlive a compaction that replaces it until this scan is
    /// done with them.
    _segment: Arc<Segment>,
}

/// The columns a source reads and where the output and the predicates find theirs.
#[derive(Debug)]
struct Layout {
    /// Columns read (table indices, ascending).
    read: Vec<usize>,
    /// Position in `read` of each output column, in output order.
    output_pos: Vec<usize>,
    /// Position in `read` of each predicate's column; `None`: the predicate holds for every
    /// row of this source, so it is not evaluated (nor its column read, unless needed).
    pred_pos: Vec<Option<usize>>,
}

impl Layout {
    /// Reads `output` and the columns of the predicates marked in `check`.
    fn new(output: &[usize], preds: &[BoundPredicate], check: &[bool], key0: usize) -> Layout {
        let mut read: Vec<usize> = output
            .iter()
            .chain(
                preds
                    .iter()
                    .zip(check)
                    .filter(|(_, c)| **c)
                    .map(|(p, _)| &p.column),
            )
            .copied()
            .collect();
        read.sort_unstable();
        read.dedup();
        if read.is_empty() {
            // Read one (small) column to learn row counts.
            read.push(key0);
        }
        let pos = |c: &usize| read.iter().position(|r| r == c).expect("column is read");
        Layout {
            output_pos: output.iter().map(pos).collect(),
            pred_pos: preds
                .iter()
                .zip(check)
                .map(|(p, c)| c.then(|| pos(&p.column)))
                .collect(),
            read,
        }
    }
}

impl std::fmt::Debug for TabletScan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TabletScan")
            .field("snapshot", &self.snapshot)
            .finish_non_exhaustive()
    }
}

impl TabletScan {
    pub(crate) fn new(
        version: Arc<Version>,
        snapshot: Timestamp,
        req: &ScanRequest,
        cache: Option<Arc<ColumnCache>>,
        part: Part,
        lookup: impl FnOnce(&Version, &[u8], Timestamp) -> Result<Option<RecordBatch>>,
    ) -> Result<TabletScan> {
        // The version's codec: the schema its buffer was written with.
        let codec = &version.codec.clone();
        let schema = codec.schema();
        let output: Vec<usize> = match &req.projection {
            None => (0..schema.len()).collect(),
            Some(names) => names
                .iter()
                .map(|n| schema.index_of(n))
                .collect::<Result<_, _>>()?,
        };
        let preds = bind(codec, &req.predicates)?;
        let range = KeyRange::from_predicates(codec, &preds)?;
        let out_schema = Arc::new(schema.arrow_schema().project(&output)?);
        let layout = Layout::new(
            &output,
            &preds,
            &vec![true; preds.len()],
            schema.key_indices()[0],
        );
        let mut scan = TabletScan {
            codec: codec.clone(),
            snapshot,
            schema: out_schema,
            layout: Arc::new(layout),
            output,
            preds,
            range,
            batch_size: req.batch_size.unwrap_or(DEFAULT_BATCH_ROWS).max(1),
            remaining: req.limit,
            sources: VecDeque::new(),
            current: None,
            buffer_cursor: BufferCursor::Start,
            ready: VecDeque::new(),
            segments_read: 0,
            rows_skipped: 0,
            cache: cache.map(|cache| CacheUse {
                cache,
                fill: req.limit.is_none(),
            }),
        };
        if scan.range.point {
            if !part.is_first() {
                return Ok(scan);
            }
            // Every key column is pinned: a point lookup, no scan.
            let key = scan
                .range
                .lower
                .as_ref()
                .map(|b| b.prefix.clone())
                .unwrap_or_default();
            if let Some(row) = lookup(&version, &key, snapshot)? {
                let row = row.project(&scan.layout.read)?;
                if let Some(b) = scan.finish_batch(row, None, None, &scan.layout)? {
                    scan.ready.push_back(b);
                }
            }
            return Ok(scan);
        }
        scan.sources.extend(
            version
                .segments
                .iter()
                .map(|s| Source::Segment(s.clone(), part.window(s.meta.rows)))
                .filter(|s| matches!(s, Source::Segment(_, w) if !w.is_empty())),
        );
        if part.is_last() {
            scan.sources
                .push_back(Source::Buffer(version.memtable.clone()));
        }
        Ok(scan)
    }

    /// The snapshot this scan reads.
    pub fn snapshot(&self) -> Timestamp {
        self.snapshot
    }

    /// Segments this scan has read so far (the others were pruned or not reached yet).
    pub fn segments_read(&self) -> usize {
        self.segments_read
    }

    /// Segment rows this scan has skipped unread so far because their key block's bounds rule
    /// out a predicate on a key column (the skip scan of `ts >= t` on an `(id, ts)` key).
    pub fn rows_skipped(&self) -> u64 {
        self.rows_skipped
    }

    /// Schema of the returned batches.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Applies the live rows (`live`, where not all are), the snapshot filter (if the batch
    /// carries timestamps at `ts_col`), the predicates, and the output projection to a batch
    /// of the read columns.
    fn finish_batch(
        &self,
        batch: RecordBatch,
        ts_col: Option<usize>,
        live: Option<BooleanArray>,
        layout: &Layout,
    ) -> Result<Option<RecordBatch>> {
        let live = live.filter(|l| l.true_count() < l.len());
        let (batch, live) = match live {
            // (Rare: rows newer than the snapshot too, filtered by position below.)
            Some(l) if ts_col.is_some() => (filter_record_batch(&batch, &l)?, None),
            live => (batch, live),
        };
        let batch = match ts_col {
            Some(c) => {
                let b = filter_by_snapshot(&batch, c, self.snapshot)?;
                let keep: Vec<usize> = (0..b.num_columns()).filter(|&i| i != c).collect();
                b.project(&keep)?
            }
            None => batch,
        };
        // One filter for the deleted rows and the predicates.
        let mut mask: Option<BooleanArray> = live;
        let mut columns = batch.columns().to_vec();
        for (p, pos) in self.preds.iter().zip(&layout.pred_pos) {
            let Some(pos) = *pos else { continue };
            let m = p.evaluate(batch.column(pos))?;
            mask = Some(match mask {
                None => m,
                Some(prev) => and(&prev, &m)?,
            });
            // Every row the filter keeps has a value in this column: without its validity
            // bitmap the filter does not copy one bit by bit (a sixth of a filtered
            // aggregation), and the aggregation above takes its no-NULL path.
            if p.rejects_null() && columns[pos].null_count() > 0 && fixed_width(&columns[pos]) {
                columns[pos] = without_nulls(&columns[pos])?;
            }
        }
        // Projected before filtering: a column read only for a predicate (`valid` in
        // `WHERE valid = 0`) is not copied by the filter just to be dropped.
        let opts = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
        let batch = RecordBatch::try_new_with_options(batch.schema(), columns, &opts)?
            .project(&layout.output_pos)?
            .with_schema(self.schema.clone())?;
        let batch = match mask {
            Some(m) => filter_record_batch(&batch, &m)?,
            None => batch,
        };
        if batch.num_rows() == 0 {
            return Ok(None);
        }
        Ok(Some(batch))
    }

    /// The next chunk of visible buffer rows in range, or `None` when the buffer is done.
    fn next_buffer_chunk(&mut self, mem: &MemTable) -> Result<Option<RecordBatch>> {
        let lower_owned;
        let lower = match (&self.buffer_cursor, &self.range.lower) {
            (BufferCursor::Done, _) => return Ok(None),
            (BufferCursor::After(k), _) => Bound::Excluded(k.as_slice()),
            (BufferCursor::Start, Some(b)) => {
                lower_owned = b.prefix.clone();
                Bound::Included(lower_owned.as_slice())
            }
            (BufferCursor::Start, None) => Bound::Unbounded,
        };
        let range = &self.range;
        let limit = self.batch_size;
        let mut rows: Vec<&[u8]> = Vec::with_capacity(limit.min(1 << 16));
        let mut next = BufferCursor::Done;
        // Rows are decoded in place, under this guard; the buffer never changes a version it
        // has published (memtable.rs), so they cannot change meanwhile.
        let guard = scc::Guard::new();
        // Keys are read only for a bound to check: an unbounded walk touches just the rows.
        let (has_lower, has_upper) = (range.lower.is_some(), range.upper.is_some());
        mem.for_each_visible(&guard, self.snapshot, lower, |k, r| {
            if has_upper && range.is_above(k.bytes()) {
                return false;
            }
            if !has_lower || !range.is_below(k.bytes()) {
                prefetch(r);
                rows.push(r);
                if rows.len() == limit {
                    next = BufferCursor::After(k.bytes().to_vec());
                    return false;
                }
            }
            true
        });
        self.buffer_cursor = next;
        if rows.is_empty() {
            return Ok(None);
        }
        Ok(Some(
            self.codec.decode_rows_projected(&rows, &self.layout.read)?,
        ))
    }

    fn next_inner(&mut self) -> Option<Result<RecordBatch>> {
        loop {
            if let Some(b) = self.ready.pop_front() {
                return Some(Ok(b));
            }
            if let Some(cur) = &mut self.current {
                let ts_col = cur.ts_col;
                let layout = cur.layout.clone();
                match cur.batches.next() {
                    Some(Ok((b, live))) => match self.finish_batch(b, ts_col, live, &layout) {
                        Ok(Some(b)) => return Some(Ok(b)),
                        Ok(None) => continue,
                        Err(e) => return Some(Err(e)),
                    },
                    Some(Err(e)) => return Some(Err(e)),
                    None => {
                        self.current = None;
                        continue;
                    }
                }
            }
            match self.sources.pop_front()? {
                Source::Segment(seg, window) => {
                    if !self
                        .preds
                        .iter()
                        .all(|p| p.may_match_bounds(&seg.meta.key_bounds))
                    {
                        continue;
                    }
                    // Predicates the segment's key-column bounds prove true for every row
                    // are neither checked nor (unless output) read. An on-disk segment applies
                    // those on key columns itself (see `Segment::scan`), so they are not
                    // checked here either.
                    let proven: Vec<bool> = self
                        .preds
                        .iter()
                        .map(|p| p.must_match_bounds(&seg.meta.key_bounds))
                        .collect();
                    let check: Vec<bool> = self
                        .preds
                        .iter()
                        .zip(&proven)
                        .map(|(p, &proven)| {
                            !proven && (seg.is_in_memory() || p.key_column().is_none())
                        })
                        .collect();
                    let unproven: Vec<&BoundPredicate> = self
                        .preds
                        .iter()
                        .zip(&proven)
                        .filter(|(_, &proven)| !proven)
                        .map(|(p, _)| p)
                        .collect();
                    let layout = if check.iter().all(|c| *c) {
                        self.layout.clone()
                    } else {
                        Arc::new(Layout::new(
                            &self.output,
                            &self.preds,
                            &check,
                            self.codec.schema().key_indices()[0],
                        ))
                    };
                    let need_ts = seg.meta.max_ts > self.snapshot;
                    let mut proj = layout.read.clone();
                    if need_ts {
                        proj.push(self.codec.schema().len());
                    }
                    let ts_col = need_ts.then_some(proj.len() - 1);
                    // Each segment is counted by the first part that reads any of its rows.
                    if window.start == 0 && seg.meta.overlaps(&self.range) {
                        self.segments_read += 1;
                    }
                    match seg.scan(
                        &self.codec,
                        &proj,
                        &unproven,
                        &self.range,
                        self.snapshot,
                        self.batch_size,
                        self.cache.as_ref(),
                        window,
                    ) {
                        Ok(read) => {
                            self.rows_skipped += read.rows_skipped;
                            self.current = Some(CurrentSegment {
                                batches: read.batches,
                                ts_col,
                                layout,
                                _segment: seg,
                            })
                        }
                        Err(e) => return Some(Err(e)),
                    }
                }
                Source::Buffer(mem) => match self.next_buffer_chunk(&mem) {
                    Ok(Some(b)) => {
                        self.sources.push_front(Source::Buffer(mem));
                        match self.finish_batch(b, None, None, &self.layout) {
                            Ok(Some(b)) => return Some(Ok(b)),
                            Ok(None) => continue,
                            Err(e) => return Some(Err(e)),
                        }
                    }
                    Ok(None) => continue,
                    Err(e) => return Some(Err(e)),
                },
            }
        }
    }
}

impl Iterator for TabletScan {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == Some(0) {
            return None;
        }
        let item = self.next_inner()?;
        Some(item.map(|b| match &mut self.remaining {
            Some(n) if b.num_rows() >= *n => {
                let b = b.slice(0, *n);
                *n = 0;
                b
            }
            Some(n) => {
                *n -= b.num_rows();
                b
            }
            None => b,
        }))
    }
}

/// Asks the CPU to start loading a buffer row that the scan will decode once its chunk is
/// collected: rows are separate allocations in write order, so in key order each one is a
/// cache miss, and issuing them during the tree walk overlaps them with it.
#[inline]
fn prefetch(row: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it reads nothing architecturally and cannot fault.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
            row.as_ptr() as *const i8
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = row;
}

/// Whether every bit pattern is a valid value of `a`'s type, so that whatever lies under a
/// NULL may stand as a value (see [`without_nulls`]).
fn fixed_width(a: &ArrayRef) -> bool {
    a.data_type().is_primitive() || *a.data_type() == arrow_schema::DataType::Boolean
}

/// The same values without a validity bitmap, for a fixed-width column whose NULL rows a
/// filter is about to drop.
fn without_nulls(a: &ArrayRef) -> Result<ArrayRef> {
    let data = a.to_data().into_builder().nulls(None).build()?;
    Ok(make_array(data))
}
