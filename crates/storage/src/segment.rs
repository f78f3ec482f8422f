//! Segments: immutable runs of rows sorted by (key, commit timestamp descending).
//!
//! A segment is born in memory when the write buffer is frozen, and replaced by its on-disk
//! twin (same id, same row numbers, same deletion vector) once the Parquet file and key index
//! are written and the manifest names them. Row numbers never change for the life of a
//! segment, which is what lets deletion vectors address rows by position.
//!
//! Rows carry their commit timestamp in a hidden last column ([`TS_COLUMN`]); superseded
//! versions kept for snapshot reads are ordinary rows that the deletion vector marks deleted at
//! the timestamp that superseded them.

use std::cmp::Ordering;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    make_comparator, Array, ArrayRef, AsArray, BooleanArray, BooleanBufferBuilder, DynComparator,
    Int64Array, RecordBatch, RecordBatchOptions,
};
use arrow::buffer::ScalarBuffer;
use arrow::compute::SortOptions;
use arrow::compute::{concat_batches, filter_record_batch};
use arrow::datatypes::Int64Type;
use arrow_schema::{ArrowError, DataType as ArrowType, Field, Schema as ArrowSchema, SchemaRef};
use bytes::Bytes;
use parquet::arrow::arrow_reader::statistics::StatisticsConverter;
use parquet::arrow::arrow_reader::{
    ArrowPredicateFn, ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReader,
    ParquetRecordBatchReaderBuilder, RowFilter, RowSelection, RowSelectionPolicy, RowSelector,
};
use parquet::arrow::arrow_writer::{compute_leaves, ArrowColumnChunk, ArrowColumnWriter};
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::PageIndexPolicy;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use roaring::RoaringBitmap;
use serde::{Deserialize, Serialize};

use nyala_common::{DataType, RowCodec, Schema};

use crate::bytelist::ByteList;
use crate::clock::Timestamp;
use crate::colcache::{ColumnCache, SegmentToken};
use crate::dv::DeleteVector;
use crate::error::{Result, StorageError};
use crate::keyindex::{KeyIndex, KeyIndexBuilder, SampleColumns};
use crate::memtable::MemTable;
use crate::options::{SegmentCompression, TabletOptions};
use crate::pointread;
use crate::predicate::{BoundPredicate, KeyRange};

/// Name of the hidden column holding each row version's commit timestamp.
pub(crate) const TS_COLUMN: &str = "__nyala_ts";

/// What the manifest records of a segment: enough to prune it without opening any file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct SegmentMeta {
    pub id: u64,
    pub rows: u64,
    pub min_key: Vec<u8>,
    pub max_key: Vec<u8>,
    pub min_ts: Timestamp,
    pub max_ts: Timestamp,
    pub file_bytes: u64,
    /// Per key column (key order): the smallest and largest value, each encoded on its own
    /// (see `RowCodec::encode_key_column`). Time-series keys lead with an id, so whole-key
    /// ranges of time-ordered segments all overlap; these bounds still tell them apart.
    #[serde(default)]
    pub key_bounds: Vec<(Vec<u8>, Vec<u8>)>,
    /// Ids of the table columns stored, in file order (the timestamp column follows them).
    /// A segment keeps the columns the table had when it was written: readers map by id, and
    /// fill columns added since with their default (see `Segment::plan`).
    #[serde(default)]
    pub column_ids: Vec<u32>,
}

impl SegmentMeta {
    /// Whether the segment's key range meets `range`.
    pub fn overlaps(&self, range: &KeyRange) -> bool {
        range.overlaps(&self.min_key, &self.max_key)
    }

    /// Whether row `i` of a batch, given its key columns encoded one by one, may be here.
    pub fn may_hold(&self, key_columns: &[arrow::row::Rows], i: usize) -> bool {
        self.key_bounds
            .iter()
            .zip(key_columns)
            .all(|((lo, hi), col)| {
                let v = col.row(i);
                let v = v.as_ref();
                lo.as_slice() <= v && v <= hi.as_slice()
            })
    }
}

/// Per key column min/max of `table` (every column, table order), encoded column by column.
fn key_bounds(codec: &RowCodec, table: &RecordBatch) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    for (k, &c) in codec.schema().key_indices().iter().enumerate() {
        let rows = codec.encode_key_column(k, table.column(c))?;
        let (lo, hi) = rows.iter().fold(
            (None, None),
            |(lo, hi): (Option<arrow::row::Row>, Option<arrow::row::Row>), r| {
                (
                    Some(lo.map_or(r, |l| l.min(r))),
                    Some(hi.map_or(r, |h| h.max(r))),
                )
            },
        );
        match (lo, hi) {
            (Some(lo), Some(hi)) => out.push((lo.as_ref().to_vec(), hi.as_ref().to_vec())),
            _ => return Ok(vec![]),
        }
    }
    Ok(out)
}

/// A key being looked up: its memcomparable bytes, plus its key columns, decoded the first time
/// a segment needs them and then shared by every segment searched and by the row read.
#[derive(Debug)]
pub(crate) struct ProbeKey<'a> {
    pub bytes: &'a [u8],
    columns: std::cell::OnceCell<Vec<ArrayRef>>,
}

impl<'a> ProbeKey<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        ProbeKey {
            bytes,
            columns: std::cell::OnceCell::new(),
        }
    }

    /// The key columns (one row each, key order).
    fn columns(&self, codec: &RowCodec) -> Result<&[ArrayRef]> {
        if let Some(c) = self.columns.get() {
            return Ok(c);
        }
        let decoded = codec.decode_keys([self.bytes])?;
        Ok(self.columns.get_or_init(|| decoded))
    }
}

/// Decoded key columns and commit timestamps of one block of an on-disk segment: what
/// presence checks and lookups search. Cached, so that hot blocks are decoded once.
///
/// The key columns stay typed (key order), compared to the probe column by column.
/// Re-encoding them memcomparably would cost more than the Parquet decode itself and take more
/// memory per cached row. Constant leading columns keep one value and commit timestamps are
/// offsets where they fit: a traffic row takes 12 bytes (22 with every column and timestamp
/// whole), so the default cache holds the key blocks of 10M traffic rows instead of half.
#[derive(Debug)]
pub(crate) struct KeyBlock {
    /// Key columns in key order; the first `constant` hold only their one value (row 0).
    keys: Vec<KeyColumn>,
    /// How many leading key columns hold a single value across the block (a block of a
    /// time-series key is mostly one series: its id columns are constant and only `ts`
    /// varies). A search compares those once and then looks at the rest only.
    constant: usize,
    ts: BlockTs,
}

impl KeyBlock {
    /// A block of the key columns `keys` (key order) and the commit timestamps `ts` of the
    /// same rows: decoded from a file, or taken from a batch being written.
    fn new(keys: impl IntoIterator<Item = ArrayRef>, ts: ScalarBuffer<i64>) -> Self {
        let mut keys: Vec<KeyColumn> = keys.into_iter().map(KeyColumn::new).collect();
        // Rows are sorted by key: while the columns before it are constant, a column is
        // sorted across the block, so it is constant when its first and last values agree.
        let n = ts.len();
        let constant = if n == 0 {
            0
        } else {
            keys.iter().take_while(|k| k.same(0, n - 1)).count()
        };
        for k in &mut keys[..constant] {
            k.keep_first();
        }
        KeyBlock {
            keys,
            constant,
            ts: BlockTs::new(ts),
        }
    }

    /// Rows in the block.
    fn len(&self) -> usize {
        self.ts.len()
    }
}

/// The commit timestamps of a key block's rows. A block's rows were mostly written within
/// minutes of each other, so they are kept as offsets from the smallest when those fit in 16
/// or 32 bits (a 32-bit offset spans 71 minutes of microseconds), else whole.
#[derive(Debug)]
enum BlockTs {
    U16 { base: i64, offsets: Box<[u16]> },
    U32 { base: i64, offsets: Box<[u32]> },
    Whole(ScalarBuffer<i64>),
}

impl BlockTs {
    fn new(ts: ScalarBuffer<i64>) -> Self {
        let (Some(&min), Some(&max)) = (ts.iter().min(), ts.iter().max()) else {
            return BlockTs::Whole(ts);
        };
        let span = max as i128 - min as i128;
        if span <= u16::MAX as i128 {
            let offsets = ts
                .iter()
                .map(|&t| (t as i128 - min as i128) as u16)
                .collect();
            BlockTs::U16 { base: min, offsets }
        } else if span <= u32::MAX as i128 {
            let offsets = ts
                .iter()
                .map(|&t| (t as i128 - min as i128) as u32)
                .collect();
            BlockTs::U32 { base: min, offsets }
        } else {
            BlockTs::Whole(ts)
        }
    }

    fn len(&self) -> usize {
        match self {
            BlockTs::U16 { offsets, .. } => offsets.len(),
            BlockTs::U32 { offsets, .. } => offsets.len(),
            BlockTs::Whole(ts) => ts.len(),
        }
    }

    fn get(&self, i: usize) -> i64 {
        match self {
            BlockTs::U16 { base, offsets } => base + offsets[i] as i64,
            BlockTs::U32 { base, offsets } => base + offsets[i] as i64,
            BlockTs::Whole(ts) => ts[i],
        }
    }

    fn memory_bytes(&self) -> usize {
        match self {
            BlockTs::U16 { offsets, .. } => offsets.len() * 2,
            BlockTs::U32 { offsets, .. } => offsets.len() * 4,
            BlockTs::Whole(ts) => ts.len() * 8,
        }
    }
}

/// One decoded key column: the integer widths keys mostly are, compared natively (a binary
/// search does a few dozen comparisons per lookup, so Arrow's boxed comparators showed up in
/// profiles); other types (strings, decimals, booleans) through Arrow's comparator.
#[derive(Debug)]
enum KeyColumn {
    I8(ScalarBuffer<i8>),
    I16(ScalarBuffer<i16>),
    I32(ScalarBuffer<i32>),
    I64(ScalarBuffer<i64>),
    Other(ArrayRef),
}

impl KeyColumn {
    fn new(a: ArrayRef) -> Self {
        use arrow::datatypes::{
            Date32Type, Int16Type, Int32Type, Int8Type, TimeUnit, TimestampMicrosecondType,
        };
        // Key columns are never null; should one be, the values buffer would not be the
        // column, and Arrow's comparator handles it.
        if a.null_count() > 0 {
            return KeyColumn::Other(a);
        }
        match a.data_type() {
            ArrowType::Int8 => KeyColumn::I8(a.as_primitive::<Int8Type>().values().clone()),
            ArrowType::Int16 => KeyColumn::I16(a.as_primitive::<Int16Type>().values().clone()),
            ArrowType::Int32 => KeyColumn::I32(a.as_primitive::<Int32Type>().values().clone()),
            ArrowType::Date32 => KeyColumn::I32(a.as_primitive::<Date32Type>().values().clone()),
            ArrowType::Int64 => KeyColumn::I64(a.as_primitive::<Int64Type>().values().clone()),
            ArrowType::Timestamp(TimeUnit::Microsecond, _) => KeyColumn::I64(
                a.as_primitive::<TimestampMicrosecondType>()
                    .values()
                    .clone(),
            ),
            _ => KeyColumn::Other(a),
        }
    }

    /// Row `i` against row 0 of `probe` (the same column of a probe key). `other` is the
    /// comparator for a column kept as [`KeyColumn::Other`].
    fn cmp(&self, i: usize, probe: &KeyColumn, other: Option<&DynComparator>) -> Ordering {
        match (self, probe) {
            (KeyColumn::I8(a), KeyColumn::I8(b)) => a[i].cmp(&b[0]),
            (KeyColumn::I16(a), KeyColumn::I16(b)) => a[i].cmp(&b[0]),
            (KeyColumn::I32(a), KeyColumn::I32(b)) => a[i].cmp(&b[0]),
            (KeyColumn::I64(a), KeyColumn::I64(b)) => a[i].cmp(&b[0]),
            _ => other.map_or(Ordering::Equal, |c| c(i, 0)),
        }
    }

    /// Whether rows `i` and `j` hold the same value.
    fn same(&self, i: usize, j: usize) -> bool {
        match self {
            KeyColumn::I8(v) => v[i] == v[j],
            KeyColumn::I16(v) => v[i] == v[j],
            KeyColumn::I32(v) => v[i] == v[j],
            KeyColumn::I64(v) => v[i] == v[j],
            KeyColumn::Other(a) => make_comparator(a.as_ref(), a.as_ref(), SortOptions::default())
                .is_ok_and(|c| c(i, j).is_eq()),
        }
    }

    /// Keeps only row 0, in memory of its own (a sliced buffer would pin the whole block's).
    fn keep_first(&mut self) {
        *self = match &*self {
            KeyColumn::I8(v) => KeyColumn::I8(ScalarBuffer::from(vec![v[0]])),
            KeyColumn::I16(v) => KeyColumn::I16(ScalarBuffer::from(vec![v[0]])),
            KeyColumn::I32(v) => KeyColumn::I32(ScalarBuffer::from(vec![v[0]])),
            KeyColumn::I64(v) => KeyColumn::I64(ScalarBuffer::from(vec![v[0]])),
            KeyColumn::Other(a) => match arrow::compute::concat(&[a.slice(0, 1).as_ref()]) {
                Ok(first) => KeyColumn::Other(first),
                Err(_) => return,
            },
        };
    }

    fn as_array(&self) -> Option<&ArrayRef> {
        match self {
            KeyColumn::Other(a) => Some(a),
            _ => None,
        }
    }

    fn memory_bytes(&self) -> usize {
        match self {
            KeyColumn::I8(v) => v.len(),
            KeyColumn::I16(v) => v.len() * 2,
            KeyColumn::I32(v) => v.len() * 4,
            KeyColumn::I64(v) => v.len() * 8,
            KeyColumn::Other(a) => a.get_array_memory_size(),
        }
    }
}

impl KeyBlock {
    /// The rows (block positions) whose key equals `probe` (one-row key columns, key order,
    /// as [`KeyColumn::new`] makes them). Invariant: the rows are sorted by key, so the
    /// matches are one run.
    fn equal_range(&self, probe: &[KeyColumn]) -> Result<Range<usize>> {
        // Comparators only for the columns not compared natively; both sides of a column
        // have the same type, so they are `Other` together.
        let mut others: Vec<Option<DynComparator>> = Vec::new();
        if self.keys.iter().any(|k| k.as_array().is_some()) {
            for (k, p) in self.keys.iter().zip(probe) {
                others.push(match (k.as_array(), p.as_array()) {
                    (Some(k), Some(p)) => Some(make_comparator(
                        k.as_ref(),
                        p.as_ref(),
                        SortOptions::default(),
                    )?),
                    (None, None) => None,
                    _ => {
                        return Err(StorageError::Corrupt(
                            "a key column decoded to another type than the probe's".into(),
                        ))
                    }
                });
            }
        }
        let other = |c: usize| others.get(c).and_then(Option::as_ref);
        let n = self.len();
        // The constant leading columns: compared once, against the first row.
        for (c, (k, p)) in self.keys.iter().zip(probe).take(self.constant).enumerate() {
            match k.cmp(0, p, other(c)) {
                Ordering::Less => return Ok(n..n),
                Ordering::Greater => return Ok(0..0),
                Ordering::Equal => {}
            }
        }
        let varying = self.constant;
        if varying == self.keys.len() {
            // One key throughout (its versions).
            return Ok(0..n);
        }
        if varying + 1 == self.keys.len() {
            // One varying column: a search over its values alone.
            match (&self.keys[varying], &probe[varying]) {
                (KeyColumn::I8(a), KeyColumn::I8(b)) => return Ok(equal_run(a, b[0])),
                (KeyColumn::I16(a), KeyColumn::I16(b)) => return Ok(equal_run(a, b[0])),
                (KeyColumn::I32(a), KeyColumn::I32(b)) => return Ok(equal_run(a, b[0])),
                (KeyColumn::I64(a), KeyColumn::I64(b)) => return Ok(equal_run(a, b[0])),
                _ => {}
            }
        }
        let cmp = |i: usize| {
            for (c, (k, p)) in self.keys.iter().zip(probe).enumerate().skip(varying) {
                let o = k.cmp(i, p, other(c));
                if o.is_ne() {
                    return o;
                }
            }
            Ordering::Equal
        };
        let lo = partition_point(0..n, |i| cmp(i).is_lt());
        let hi = partition_point(lo..n, |i| cmp(i).is_le());
        Ok(lo..hi)
    }

    fn memory_bytes(&self) -> usize {
        self.keys.iter().map(KeyColumn::memory_bytes).sum::<usize>() + self.ts.memory_bytes()
    }
}

/// The positions of the sorted `values` equal to `x`.
fn equal_run<T: Ord + Copy>(values: &[T], x: T) -> Range<usize> {
    let lo = values.partition_point(|v| *v < x);
    lo..lo + values[lo..].partition_point(|v| *v <= x)
}

/// The first index of `range` where `pred` is false (`pred` is true for a prefix).
fn partition_point(range: Range<usize>, pred: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (range.start, range.end);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pred(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

/// Weighs cached key blocks by their memory.
#[derive(Clone, Debug)]
pub(crate) struct BlockWeighter;

impl quick_cache::Weighter<(u64, u64), Arc<KeyBlock>> for BlockWeighter {
    fn weight(&self, _: &(u64, u64), b: &Arc<KeyBlock>) -> u64 {
        (b.memory_bytes() + 64) as u64
    }
}

/// Cache of decoded key blocks, keyed by (segment id, block number).
pub(crate) type KeyBlockCache = quick_cache::sync::Cache<(u64, u64), Arc<KeyBlock>, BlockWeighter>;

/// A key block cache holding about `bytes` bytes.
pub(crate) fn new_key_block_cache(bytes: u64) -> KeyBlockCache {
    KeyBlockCache::with_weighter(
        (bytes / 16_384).max(16) as usize,
        bytes.max(1),
        BlockWeighter,
    )
}

#[derive(Debug)]
struct DiskSegment {
    /// The Parquet file and the key index.
    paths: (PathBuf, PathBuf),
    /// Set when a compaction replaced the segment: the last reader to let go deletes the
    /// files (a crash before that leaves them unlisted, and recovery deletes them).
    retired: std::sync::atomic::AtomicBool,
    bytes: Bytes,
    reader_meta: ArrowReaderMetadata,
    index: KeyIndex,
    /// First row number of each row group, plus the total at the end.
    rg_starts: Vec<u64>,
    /// Decompressed dictionary pages of small dictionaries, by row group and column, filled
    /// by point reads: every point read in a column chunk needs the same dictionary, and
    /// decompressing it again was a third of a lookup on 10M rows.
    dictionaries: pointread::Dictionaries,
    /// The key index's samples split into key columns, made by the first scan with a
    /// predicate on a key column (see `KeyIndex::blocks_matching`).
    sample_columns: std::sync::OnceLock<Box<SampleColumns>>,
    /// This opening of the file in the column cache.
    token: SegmentToken,
}

#[derive(Debug)]
enum SegmentData {
    /// Frozen write buffer awaiting its flush: every column plus the timestamp column.
    Memory { batch: RecordBatch, keys: ByteList },
    /// A Parquet file mapped into memory, with its key index.
    Disk(DiskSegment),
}

/// A segment: immutable rows plus a mutable deletion vector.
#[derive(Debug)]
pub(crate) struct Segment {
    pub meta: SegmentMeta,
    pub dv: Arc<DeleteVector>,
    data: SegmentData,
}

impl Drop for DiskSegment {
    fn drop(&mut self) {
        if self.retired.load(std::sync::atomic::Ordering::Acquire) {
            for p in [&self.paths.0, &self.paths.1] {
                if let Err(e) = std::fs::remove_file(p) {
                    tracing::warn!(file = %p.display(), error = %e, "could not delete a replaced segment file");
                }
            }
        }
    }
}

/// Where each column a reader asks for comes from in one segment.
struct ColumnPlan {
    /// Segment columns to read (ascending).
    file: Vec<usize>,
    /// Per requested column: its position in the read batch, or the column to fill it with.
    out: Vec<Result<usize, nyala_common::ColumnSchema>>,
    /// Schema of the result (the reader's names).
    target: SchemaRef,
}

impl ColumnPlan {
    /// The batch of requested columns from a batch of the `file` columns.
    fn apply(&self, batch: RecordBatch) -> Result<RecordBatch> {
        let n = batch.num_rows();
        let cols = self
            .out
            .iter()
            .map(|o| match o {
                Ok(pos) => Ok(batch.column(*pos).clone()),
                Err(col) => match &col.default {
                    Some(d) => crate::write::column_of(col, d, n),
                    None => Ok(arrow::array::new_null_array(&col.data_type.to_arrow(), n)),
                },
            })
            .collect::<Result<Vec<_>>>()?;
        let opts = arrow::array::RecordBatchOptions::new().with_row_count(Some(n));
        Ok(RecordBatch::try_new_with_options(
            self.target.clone(),
            cols,
            &opts,
        )?)
    }
}

/// The Arrow schema of a segment: the table's columns, then the timestamp column.
pub(crate) fn segment_schema(table: &SchemaRef) -> SchemaRef {
    let mut fields: Vec<Field> = table.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(TS_COLUMN, ArrowType::Int64, false));
    Arc::new(ArrowSchema::new(fields))
}

/// File names of segment `id` inside a tablet's segment directory.
pub(crate) fn segment_paths(dir: &Path, id: u64) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{id:08}.parquet")),
        dir.join(format!("{id:08}.kix")),
    )
}

impl Segment {
    /// Freezes the write buffer into an in-memory segment holding, for every key, the versions
    /// still needed: the newest, and older ones superseded after `horizon` (for snapshot reads).
    /// Returns `None` if nothing survives.
    pub fn freeze(
        id: u64,
        mem: &MemTable,
        codec: &RowCodec,
        horizon: Timestamp,
    ) -> Result<Option<Segment>> {
        let mut rows = ByteList::default();
        let mut keys = ByteList::default();
        let mut ts_col: Vec<i64> = Vec::new();
        let mut deletions: Vec<(Timestamp, u32)> = Vec::new();
        let mut current: Option<Box<[u8]>> = None;
        let mut superseded_at: Option<Timestamp> = None;
        mem.for_each_version(|key, ts, value| {
            if current.as_deref() != Some(key) {
                current = Some(key.into());
                superseded_at = None;
            }
            // Versions superseded within their own batch (same timestamp) were never visible.
            if let (Some(row), false) = (value, superseded_at == Some(ts)) {
                if superseded_at.is_none_or(|s| s > horizon) {
                    let n = rows.len() as u32;
                    rows.push(row);
                    keys.push(key);
                    ts_col.push(ts as i64);
                    if let Some(s) = superseded_at {
                        deletions.push((s, n));
                    }
                }
            }
            superseded_at = Some(ts);
        });
        if rows.is_empty() {
            return Ok(None);
        }
        let table = codec.decode_rows((0..rows.len()).map(|i| rows.get(i)))?;
        drop(rows);
        let schema = segment_schema(table.schema_ref());
        let mut cols = table.columns().to_vec();
        let (min_ts, max_ts) = ts_col
            .iter()
            .fold((i64::MAX, i64::MIN), |(a, b), t| (a.min(*t), b.max(*t)));
        cols.push(Arc::new(Int64Array::from(ts_col)));
        let batch = RecordBatch::try_new(schema, cols)?;
        let meta = SegmentMeta {
            id,
            rows: keys.len() as u64,
            min_key: keys.get(0).to_vec(),
            max_key: keys.get(keys.len() - 1).to_vec(),
            min_ts: min_ts as u64,
            max_ts: max_ts as u64,
            file_bytes: 0,
            key_bounds: key_bounds(codec, &table)?,
            column_ids: codec.schema().columns().iter().map(|c| c.id).collect(),
        };
        let dv = Arc::new(DeleteVector::from_persisted(deletions, 0));
        Ok(Some(Segment {
            meta,
            dv,
            data: SegmentData::Memory { batch, keys },
        }))
    }

    /// Marks an on-disk segment replaced: its files are deleted once no reader holds it.
    pub fn retire(&self) {
        if let SegmentData::Disk(d) = &self.data {
            d.retired.store(true, std::sync::atomic::Ordering::Release);
        }
    }

    /// Whether this segment is still only in memory.
    pub fn is_in_memory(&self) -> bool {
        matches!(self.data, SegmentData::Memory { .. })
    }

    /// Writes an in-memory segment to `dir` and returns its on-disk twin, which shares the id,
    /// row numbers and deletion vector. Files are synced and renamed into place, so a crash
    /// leaves either complete files or leftovers that recovery deletes (the manifest names
    /// only complete ones).
    pub fn write_to_disk(
        &self,
        dir: &Path,
        codec: &Arc<RowCodec>,
        opts: &TabletOptions,
    ) -> Result<Segment> {
        let SegmentData::Memory { batch, keys } = &self.data else {
            return Err(StorageError::Corrupt("segment is already on disk".into()));
        };
        let mut w = SegmentWriter::create(dir, self.meta.id, codec, opts)?;
        w.push(batch, keys.iter())?;
        let seg = w
            .finish(self.dv.clone())?
            .ok_or_else(|| StorageError::Corrupt("an in-memory segment has no rows".into()))?;
        debug_assert_eq!(
            SegmentMeta {
                file_bytes: 0,
                ..seg.meta.clone()
            },
            self.meta
        );
        Ok(seg)
    }

    /// Opens an on-disk segment named by the manifest.
    pub fn open(dir: &Path, meta: SegmentMeta, dv: Arc<DeleteVector>) -> Result<Segment> {
        let (_, kix) = segment_paths(dir, meta.id);
        let index = KeyIndex::read_from(&kix)?;
        Segment::open_with_index(dir, meta, dv, index)
    }

    fn open_with_index(
        dir: &Path,
        meta: SegmentMeta,
        dv: Arc<DeleteVector>,
        index: KeyIndex,
    ) -> Result<Segment> {
        let paths = segment_paths(dir, meta.id);
        let file = File::open(&paths.0)?;
        // SAFETY: segment files are never modified after they are renamed into place (they are
        // only ever deleted, and unlinking keeps a mapping valid), so the mapping is immutable.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        let bytes = Bytes::from_owner(map);
        let reader_meta = ArrowReaderMetadata::load(
            &bytes,
            ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Required),
        )?;
        let dictionaries = pointread::Dictionaries::new(
            reader_meta.metadata().num_row_groups(),
            reader_meta
                .metadata()
                .file_metadata()
                .schema_descr()
                .num_columns(),
        );
        let mut rg_starts = vec![0u64];
        for rg in reader_meta.metadata().row_groups() {
            rg_starts.push(rg_starts.last().unwrap() + rg.num_rows() as u64);
        }
        if *rg_starts.last().unwrap() != meta.rows {
            return Err(StorageError::Corrupt(format!(
                "segment {} has {} rows, the manifest says {}",
                meta.id,
                rg_starts.last().unwrap(),
                meta.rows
            )));
        }
        Ok(Segment {
            meta,
            dv,
            data: SegmentData::Disk(DiskSegment {
                paths,
                retired: Default::default(),
                bytes,
                reader_meta,
                index,
                dictionaries,
                rg_starts,
                sample_columns: Default::default(),
                token: SegmentToken::new(),
            }),
        })
    }

    /// Memory held by this segment outside the page cache, in bytes.
    pub fn memory_bytes(&self) -> usize {
        match &self.data {
            SegmentData::Memory { batch, keys } => {
                batch.get_array_memory_size() + keys.memory_bytes()
            }
            SegmentData::Disk(d) => {
                d.index.memory_bytes()
                    + d.dictionaries.memory_bytes()
                    + d.sample_columns.get().map_or(0, |s| s.memory_bytes())
            }
        }
    }

    /// The row numbers holding `key` (all versions), in order. Culls by key range and filter
    /// before touching data; on disk it then decodes the key columns of one block.
    pub fn rows_with_key(
        &self,
        codec: &RowCodec,
        cache: &KeyBlockCache,
        probe_key: &ProbeKey<'_>,
    ) -> Result<(Range<u64>, Vec<Timestamp>)> {
        let key = probe_key.bytes;
        if key < self.meta.min_key.as_slice() || key > self.meta.max_key.as_slice() {
            return Ok((0..0, vec![]));
        }
        match &self.data {
            SegmentData::Memory { batch, keys } => {
                let lo = keys.partition_point(|k| k < key);
                let hi = keys.partition_point(|k| k <= key);
                let ts = batch.columns().last().unwrap().as_primitive::<Int64Type>();
                Ok((
                    lo as u64..hi as u64,
                    (lo..hi).map(|i| ts.value(i) as u64).collect(),
                ))
            }
            SegmentData::Disk(d) => {
                if !d.index.may_contain(key) {
                    return Ok((0..0, vec![]));
                }
                let mut found: Option<Range<u64>> = None;
                let mut out_ts = Vec::new();
                // The probe as key columns, once the filter has let it through.
                let mut probe: Option<Vec<KeyColumn>> = None;
                for b in d.index.candidate_blocks(key) {
                    let block = cache.get_or_insert_with(&(self.meta.id, b), || {
                        self.decode_key_block(codec, d, b)
                    })?;
                    let probe = match &mut probe {
                        Some(p) => p,
                        None => probe.insert(
                            probe_key
                                .columns(codec)?
                                .iter()
                                .cloned()
                                .map(KeyColumn::new)
                                .collect::<Vec<_>>(),
                        ),
                    };
                    let rows = block.equal_range(probe)?;
                    if !rows.is_empty() {
                        let start = d.index.block_rows(b).start;
                        let r = found
                            .get_or_insert(start + rows.start as u64..start + rows.start as u64);
                        r.end = start + rows.end as u64;
                        out_ts.extend(rows.map(|i| block.ts.get(i) as u64));
                    }
                }
                Ok((found.unwrap_or(0..0), out_ts))
            }
        }
    }

    /// Decodes the key columns and timestamps of block `b`.
    fn decode_key_block(&self, codec: &RowCodec, d: &DiskSegment, b: u64) -> Result<Arc<KeyBlock>> {
        let key_cols = codec.schema().key_indices();
        let mut proj: Vec<usize> = key_cols.to_vec();
        proj.sort_unstable();
        proj.push(codec.schema().len());
        let plan = self.plan(codec.schema(), &proj);
        let batch = plan.apply(self.read_file_range(d.index.block_rows(b), &plan.file)?)?;
        let keys = key_cols
            .iter()
            .map(|&c| batch.column(position_in(&proj, c)).clone());
        let ts = batch
            .columns()
            .last()
            .unwrap()
            .as_primitive::<Int64Type>()
            .values()
            .clone();
        Ok(Arc::new(KeyBlock::new(keys, ts)))
    }

    /// The row holding the version of `key` visible at `snapshot`, if any. With
    /// `snapshot == Timestamp::MAX` this is the writer's view (every applied deletion counts).
    pub fn find_visible(
        &self,
        codec: &RowCodec,
        cache: &KeyBlockCache,
        key: &ProbeKey<'_>,
        snapshot: Timestamp,
    ) -> Result<Option<u32>> {
        let (rows, ts) = self.rows_with_key(codec, cache, key)?;
        for (row, t) in rows.zip(ts) {
            let row = row as u32;
            if t <= snapshot && !self.dv.is_deleted_at(row, snapshot) {
                return Ok(Some(row));
            }
        }
        Ok(None)
    }

    /// Ids of the table columns this segment stores, in file order.
    fn column_ids(&self) -> Vec<u32> {
        if !self.meta.column_ids.is_empty() {
            return self.meta.column_ids.clone();
        }
        // Written before segments recorded ids: columns were then never changed, so their
        // positions are their ids.
        let n = match &self.data {
            SegmentData::Memory { batch, .. } => batch.num_columns(),
            SegmentData::Disk(d) => d.reader_meta.schema().fields().len(),
        };
        (0..n as u32 - 1).collect()
    }

    /// Maps columns of a reader's `schema` (indices, ascending; `schema.len()` is the timestamp
    /// column) to this segment's columns by id.
    fn plan(&self, schema: &Schema, projection: &[usize]) -> ColumnPlan {
        let ids = self.column_ids();
        let mut file = Vec::with_capacity(projection.len());
        let mut out = Vec::with_capacity(projection.len());
        let mut fields: Vec<Field> = Vec::with_capacity(projection.len());
        for &p in projection {
            let found = if p == schema.len() {
                fields.push(Field::new(TS_COLUMN, ArrowType::Int64, false));
                Some(ids.len())
            } else {
                let col = &schema.columns()[p];
                fields.push(schema.arrow_schema().field(p).clone());
                match ids.binary_search(&col.id) {
                    Ok(f) => Some(f),
                    Err(_) => {
                        out.push(Err(col.clone()));
                        None
                    }
                }
            };
            if let Some(f) = found {
                // Ids ascend in table order and in file order alike, so `file` stays sorted.
                debug_assert!(file.last().is_none_or(|&l| l < f));
                out.push(Ok(file.len()));
                file.push(f);
            }
        }
        ColumnPlan {
            file,
            out,
            target: Arc::new(ArrowSchema::new(fields)),
        }
    }

    /// Reads rows `rows` with the given columns of a reader's `schema` (indices, ascending;
    /// the timestamp column is index `schema.len()`). Returns them in that column order.
    pub fn read_range(
        &self,
        schema: &Schema,
        rows: Range<u64>,
        projection: &[usize],
    ) -> Result<RecordBatch> {
        let plan = self.plan(schema, projection);
        plan.apply(self.read_file_range(rows, &plan.file)?)
    }

    /// Row `row`, which holds `key`, with every column of the reader's schema (table order).
    /// The key columns come from decoding `key` rather than from the file: they are a fifth
    /// of a traffic row's columns, and the time column's delta encoding is the dearest to
    /// seek into.
    pub fn read_row(&self, codec: &RowCodec, row: u64, key: &ProbeKey<'_>) -> Result<RecordBatch> {
        let schema = codec.schema();
        let key_cols = schema.key_indices();
        let others: Vec<usize> = (0..schema.len())
            .filter(|c| !key_cols.contains(c))
            .collect();
        let values = self.read_range(schema, row..row + 1, &others)?;
        let keys = key.columns(codec)?;
        let mut from_values = values.columns().iter();
        let columns: Vec<ArrayRef> = (0..schema.len())
            .map(|c| match key_cols.iter().position(|&k| k == c) {
                Some(i) => keys[i].clone(),
                None => from_values
                    .next()
                    .expect("one read column per non-key column")
                    .clone(),
            })
            .collect();
        Ok(RecordBatch::try_new(
            schema.arrow_schema().clone(),
            columns,
        )?)
    }

    fn read_file_range(&self, rows: Range<u64>, projection: &[usize]) -> Result<RecordBatch> {
        match &self.data {
            SegmentData::Memory { batch, .. } => Ok(batch
                .slice(rows.start as usize, (rows.end - rows.start) as usize)
                .project(projection)?),
            SegmentData::Disk(d) => {
                let schema = Arc::new(d.reader_meta.schema().project(projection)?);
                if rows.end == rows.start + 1 && rows.end <= self.meta.rows {
                    let rg = d.rg_starts.partition_point(|&s| s <= rows.start) - 1;
                    let fields: Vec<&Field> = schema.fields().iter().map(|f| f.as_ref()).collect();
                    if let Some(columns) = pointread::read_row(
                        &d.bytes,
                        d.reader_meta.metadata(),
                        &d.dictionaries,
                        rg,
                        rows.start - d.rg_starts[rg],
                        projection,
                        &fields,
                    )? {
                        return Ok(RecordBatch::try_new(schema, columns)?);
                    }
                }
                let (rgs, sel) =
                    plan_selection(&d.rg_starts, None, std::slice::from_ref(&rows), None);
                if rgs.is_empty() {
                    return Ok(RecordBatch::new_empty(schema));
                }
                let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(
                    d.bytes.clone(),
                    d.reader_meta.clone(),
                )
                .with_projection(ProjectionMask::roots(
                    d.reader_meta.parquet_schema(),
                    projection.iter().copied(),
                ))
                .with_row_groups(rgs)
                .with_row_selection(sel)
                .with_batch_size((rows.end - rows.start).max(1) as usize)
                .build()?;
                let batches = reader.collect::<std::result::Result<Vec<_>, _>>()?;
                Ok(concat_batches(&schema, &batches)?)
            }
        }
    }

    /// Batches of the rows visible at `snapshot` within `range`, with `projection` (segment
    /// column indices, ascending), skipping row groups that `preds` rule out. Rows deleted at
    /// the snapshot are skipped by position; rows newer than the snapshot are filtered by the
    /// caller when `meta.max_ts > snapshot` (it must then project the timestamp column).
    /// Only rows at positions in `window` are read (a part of a split scan; `0..meta.rows` for
    /// all). With a `cache`, row groups are served from decoded columns where they are cached, and
    /// decoded whole into it where the scan reads enough of them (see [`CachedRead`]).
    #[allow(clippy::too_many_arguments)]
    pub fn scan(
        &self,
        codec: &RowCodec,
        projection: &[usize],
        preds: &[&BoundPredicate],
        range: &KeyRange,
        snapshot: Timestamp,
        batch_size: usize,
        cache: Option<&CacheUse>,
        window: Range<u64>,
    ) -> Result<SegmentRead> {
        if !range.overlaps(&self.meta.min_key, &self.meta.max_key) {
            return Ok(SegmentRead::empty(0));
        }
        let schema = codec.schema();
        let plan = Arc::new(self.plan(schema, projection));
        let ids = self.column_ids();
        // Predicates on columns this segment lacks cannot prune it by statistics.
        let file_preds: Vec<(usize, &BoundPredicate)> = preds
            .iter()
            .copied()
            .filter_map(|p| {
                ids.binary_search(&schema.columns()[p.column].id)
                    .ok()
                    .map(|f| (f, p))
            })
            .collect();
        let inner = self.scan_file(
            codec,
            &plan.file,
            &file_preds,
            range,
            snapshot,
            batch_size,
            cache,
            window,
        )?;
        Ok(SegmentRead {
            batches: Box::new(inner.batches.map(move |r| {
                let (b, live) = r?;
                Ok((plan.apply(b)?, live))
            })),
            rows_skipped: inner.rows_skipped,
        })
    }

    /// The parts of `rows` whose key blocks may hold rows matching `preds` (see
    /// `KeyIndex::blocks_matching`): all of `rows` unless a predicate tests a key column. A
    /// part marked `true` is one block over which every key-column predicate's column is
    /// sorted (the key columns before it are constant there).
    fn key_blocks_matching(
        &self,
        codec: &RowCodec,
        d: &DiskSegment,
        preds: &[(usize, &BoundPredicate)],
        rows: Range<u64>,
    ) -> Result<Vec<(Range<u64>, bool)>> {
        if rows.is_empty() || !preds.iter().any(|(_, p)| p.key_column().is_some()) {
            return Ok(vec![(rows, false)]);
        }
        let split = match d.sample_columns.get() {
            Some(s) => s,
            None => {
                let s = Box::new(d.index.sample_columns(codec, &self.meta.max_key)?);
                d.sample_columns.get_or_init(|| s)
            }
        };
        Ok(d.index.blocks_matching(
            split,
            rows,
            |bounds| preds.iter().all(|(_, p)| p.may_match_key_bounds(bounds)),
            |bounds| {
                preds.iter().all(|(_, p)| match p.key_column() {
                    Some(k) => bounds.get(k).is_some_and(|b| b.is_some()),
                    None => true,
                })
            },
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn scan_file(
        &self,
        codec: &RowCodec,
        projection: &[usize],
        preds: &[(usize, &BoundPredicate)],
        range: &KeyRange,
        snapshot: Timestamp,
        batch_size: usize,
        cache: Option<&CacheUse>,
        window: Range<u64>,
    ) -> Result<SegmentRead> {
        let deleted = self.dv.deleted_at(snapshot);
        match &self.data {
            SegmentData::Memory { batch, keys } => {
                let lo = keys
                    .partition_point(|k| range.is_below(k))
                    .max(window.start as usize);
                let hi = keys
                    .partition_point(|k| !range.is_above(k))
                    .min(window.end as usize);
                let batch = batch.project(projection)?;
                let mut chunks = Vec::new();
                let mut start = lo;
                while start < hi {
                    let len = batch_size.min(hi - start);
                    let mut b = batch.slice(start, len);
                    if let Some(del) = &deleted {
                        if del
                            .range(start as u32..(start + len) as u32)
                            .next()
                            .is_some()
                        {
                            let mask: BooleanArray = (start..start + len)
                                .map(|r| Some(!del.contains(r as u32)))
                                .collect();
                            b = filter_record_batch(&b, &mask)?;
                        }
                    }
                    chunks.push(Ok((b, None)));
                    start += len;
                }
                Ok(SegmentRead::of(chunks.into_iter(), 0))
            }
            SegmentData::Disk(d) => {
                let rows = if range.is_full() {
                    0..self.meta.rows
                } else {
                    d.index.row_range(range)
                };
                let start = rows.start.max(window.start);
                let rows = start..rows.end.min(window.end).max(start);
                let in_range = rows.end - rows.start;
                let kept = self.key_blocks_matching(codec, d, preds, rows)?;
                let mut rows: Vec<Range<u64>> = Vec::with_capacity(kept.len());
                for (r, _) in &kept {
                    match rows.last_mut() {
                        Some(last) if last.end == r.start => last.end = r.end,
                        _ => rows.push(r.clone()),
                    }
                }
                let rows_skipped = in_range - rows.iter().map(|r| r.end - r.start).sum::<u64>();
                let keep = row_groups_matching(d, preds)?;
                // Deleted rows scattered more densely than one per `MASK_BELOW_RUN_ROWS`
                // would make the reader decode everything and copy out the live rows, and the
                // caller's predicate filter copy them again. Instead every row is read, and a
                // column saying which are live goes to the caller's one filter.
                let scattered = deleted.as_ref().is_some_and(|del| {
                    let (mut n, mut len) = (0, 0);
                    for r in &rows {
                        n += del.range_cardinality(r.start as u32..r.end as u32);
                        len += r.end - r.start;
                    }
                    n > 0 && len / (n + 1) < MASK_BELOW_RUN_ROWS as u64
                });
                let deleted = deleted.map(Arc::new);
                let skip = deleted.as_deref().filter(|_| !scattered);
                let (rgs, sel) = plan_selection(&d.rg_starts, Some(&keep), &rows, skip);
                if rgs.is_empty() {
                    return Ok(SegmentRead::empty(rows_skipped));
                }
                // The rows the reader returns of row group `i`, in order: its part of `rows`.
                let selected = |i: usize| -> Vec<Range<u64>> {
                    let (start, end) = (d.rg_starts[i], d.rg_starts[i + 1]);
                    rows.iter()
                        .map(move |r| r.start.max(start)..r.end.min(end))
                        .filter(|r| r.start < r.end)
                        .collect()
                };
                let exact: Vec<(usize, BoundPredicate)> = preds
                    .iter()
                    .filter(|(_, p)| p.key_column().is_some())
                    .map(|&(f, p)| (f, p.clone()))
                    .collect();
                if let Some(cache) = cache {
                    if let Some(read) = CachedRead::plan(
                        d,
                        cache,
                        projection,
                        &exact,
                        by_row_group(&d.rg_starts, &rgs, &kept),
                        deleted.clone(),
                        batch_size,
                    ) {
                        return Ok(SegmentRead::of(read, rows_skipped));
                    }
                }
                // Deleted rows left in the selection, for the caller's filter to drop.
                let unskipped = deleted.clone().filter(|_| scattered);
                let read = ReadSpec {
                    bytes: d.bytes.clone(),
                    meta: d.reader_meta.clone(),
                    projection: ProjectionMask::roots(
                        d.reader_meta.parquet_schema(),
                        projection.iter().copied(),
                    ),
                    batch_size,
                };
                if exact.is_empty() {
                    let batches = read
                        .reader(rgs.clone(), sel, None)?
                        .map(|r| r.map_err(StorageError::from));
                    let Some(del) = unskipped else {
                        return Ok(SegmentRead::of(
                            batches.map(|b| Ok((b?, None))),
                            rows_skipped,
                        ));
                    };
                    let mut live =
                        LiveRows::new(rgs.iter().flat_map(|&i| selected(i)).collect(), del);
                    let batches = batches.map(move |b| {
                        let b = b?;
                        let mask = live.next(b.num_rows());
                        Ok((b, Some(mask)))
                    });
                    return Ok(SegmentRead::of(batches, rows_skipped));
                }
                // Predicates on key columns are applied here, exactly: the reader decodes
                // their columns first and the rest only for the rows that pass (for `ts >= t`
                // on an `(id, ts)` key, each series' tail). One reader per piece bounds the
                // work of that first pass, which the reader does before its first batch (a
                // `LIMIT` query waits for no more than one piece). Each piece lies in one row
                // group, so its selection names that group alone.
                let work: Vec<(usize, RowSelection, Vec<Range<u64>>)> = rgs
                    .iter()
                    .flat_map(|&i| {
                        pieces(selected(i), FIRST_PASS_ROWS)
                            .into_iter()
                            .map(move |p| (i, p))
                    })
                    .map(|(i, piece)| {
                        (i, plan_selection(&d.rg_starts, None, &piece, skip).1, piece)
                    })
                    .collect();
                let exact = Arc::new(exact);
                let batches = work.into_iter().flat_map(move |(i, sel, ranges)| {
                    let passed = Arc::new(parking_lot::Mutex::new(BooleanBufferBuilder::new(0)));
                    let live = unskipped
                        .clone()
                        .map(|del| (LiveRows::new(ranges, del), passed.clone()));
                    let filter = key_filter(&read.meta, exact.clone(), live);
                    let batches: Box<dyn Iterator<Item = Result<_>> + Send> =
                        match read.reader(vec![i], sel, Some(filter)) {
                            Ok(r) if unskipped.is_none() => Box::new(r.map(|b| Ok((b?, None)))),
                            Ok(r) => {
                                // The reader ran the filter over the piece as it was built.
                                let live = std::mem::replace(
                                    &mut *passed.lock(),
                                    BooleanBufferBuilder::new(0),
                                )
                                .finish();
                                let mut at = 0;
                                Box::new(r.map(move |b| {
                                    let b = b?;
                                    let n = b.num_rows();
                                    if at + n > live.len() {
                                        return Err(StorageError::Corrupt(
                                            "a segment reader returned rows its key filter \
                                             did not pass"
                                                .into(),
                                        ));
                                    }
                                    let mask = BooleanArray::new(live.slice(at, n), None);
                                    at += n;
                                    Ok((b, Some(mask)))
                                }))
                            }
                            Err(e) => Box::new(std::iter::once(Err(e))),
                        };
                    batches
                });
                Ok(SegmentRead::of(batches, rows_skipped))
            }
        }
    }
}

/// Rows a segment scan's first pass (its key-column predicates) covers at most before the
/// reader yields: the pieces a row group is read in when the segment applies those predicates.
const FIRST_PASS_ROWS: u64 = 65_536;

/// `ranges` (ascending, disjoint) cut into consecutive pieces of at most `max` rows each.
fn pieces(ranges: Vec<Range<u64>>, max: u64) -> Vec<Vec<Range<u64>>> {
    let mut out: Vec<Vec<Range<u64>>> = vec![];
    let mut room = 0;
    for mut r in ranges {
        while r.start < r.end {
            if room == 0 {
                out.push(vec![]);
                room = max;
            }
            let take = (r.end - r.start).min(room);
            out.last_mut()
                .expect("a piece was started")
                .push(r.start..r.start + take);
            r.start += take;
            room -= take;
        }
    }
    out
}

/// What every reader of one segment scan shares.
struct ReadSpec {
    bytes: Bytes,
    meta: ArrowReaderMetadata,
    projection: ProjectionMask,
    batch_size: usize,
}

impl ReadSpec {
    /// A reader of row groups `rgs` (their rows in `sel`), with `filter` applied if given.
    fn reader(
        &self,
        rgs: Vec<usize>,
        sel: RowSelection,
        filter: Option<RowFilter>,
    ) -> Result<ParquetRecordBatchReader> {
        let mut b = ParquetRecordBatchReaderBuilder::new_with_metadata(
            self.bytes.clone(),
            self.meta.clone(),
        )
        .with_projection(self.projection.clone())
        .with_row_groups(rgs)
        .with_row_selection(sel)
        // Deletion vectors cut the selection into many short runs once a segment has a
        // scattering of updated keys; below runs of ~1k rows, decoding everything and
        // filtering with a mask beats skipping run by run.
        .with_row_selection_policy(RowSelectionPolicy::Auto {
            threshold: MASK_BELOW_RUN_ROWS,
        })
        .with_batch_size(self.batch_size);
        if let Some(f) = filter {
            b = b.with_row_filter(f);
        }
        Ok(b.build()?)
    }
}

/// The reader's first pass for predicates on key columns (file column, predicate): which of
/// the rows it visits pass them all. Where deleted rows were left in the selection, `live`
/// walks the same rows and records, in order, which passing ones are live, for the reader's
/// batches (those rows) to take. Deleted rows stay out of the filter's answer: folded in, a
/// scattering of them would cut the reader's second pass into short runs.
fn key_filter(
    meta: &ArrowReaderMetadata,
    preds: Arc<Vec<(usize, BoundPredicate)>>,
    mut live: Option<(LiveRows, Arc<parking_lot::Mutex<BooleanBufferBuilder>>)>,
) -> RowFilter {
    let mut columns: Vec<usize> = preds.iter().map(|(f, _)| *f).collect();
    columns.sort_unstable();
    columns.dedup();
    let mask = ProjectionMask::roots(meta.parquet_schema(), columns.iter().copied());
    let eval = move |batch: RecordBatch| -> std::result::Result<BooleanArray, ArrowError> {
        let mut pass: Option<BooleanArray> = None;
        for (f, p) in preds.iter() {
            let col = batch.column(position_in(&columns, *f));
            let m = p
                .evaluate(col)
                .map_err(|e| ArrowError::ExternalError(Box::new(e)))?;
            pass = Some(match pass {
                None => m,
                // Key columns are never null, so neither mask has nulls.
                Some(k) => arrow::compute::and(&k, &m)?,
            });
        }
        let pass = pass.expect("there is a predicate");
        if let Some((rows, passed)) = &mut live {
            let l = rows.next(batch.num_rows());
            passed
                .lock()
                .append_buffer(arrow::compute::filter(&l, &pass)?.as_boolean().values());
        }
        Ok(pass)
    };
    RowFilter::new(vec![Box::new(ArrowPredicateFn::new(mask, eval))])
}

/// Average selected-or-skipped run length (rows) below which a scan's row selection is applied
/// as a decoded-then-filtered mask (see `Segment::scan`).
const MASK_BELOW_RUN_ROWS: usize = 1024;

/// A segment scan's batches, each with which of its rows are live where that is not all of
/// them: deleted rows scattered densely stay in the batch for the caller to drop with its own
/// filter (one copy of the rows instead of two).
pub(crate) type SegmentBatches =
    Box<dyn Iterator<Item = Result<(RecordBatch, Option<BooleanArray>)>> + Send>;

/// A segment scan under way.
pub(crate) struct SegmentRead {
    pub batches: SegmentBatches,
    /// Rows of the scan's key range that key block bounds ruled out unread.
    pub rows_skipped: u64,
}

impl SegmentRead {
    fn of(
        batches: impl Iterator<Item = Result<(RecordBatch, Option<BooleanArray>)>> + Send + 'static,
        rows_skipped: u64,
    ) -> Self {
        SegmentRead {
            batches: Box::new(batches),
            rows_skipped,
        }
    }

    fn empty(rows_skipped: u64) -> Self {
        Self::of(std::iter::empty(), rows_skipped)
    }
}

/// How a scan uses the column cache.
#[derive(Clone, Debug)]
pub(crate) struct CacheUse {
    pub cache: Arc<ColumnCache>,
    /// Whether row groups not cached yet may be decoded whole into the cache. Off for scans
    /// with a row limit, which may stop after their first batch.
    pub fill: bool,
}

/// A row group is decoded whole into the column cache only if the pages a scan would decode
/// of it hold at least this fraction (1 in n) of its rows: a narrow scan (one series of many)
/// reads its few pages from the file instead, as it would without a cache. Pages, not rows:
/// a time range over many series (the tail of each) selects a third of the rows but touches
/// every page, which the file path then decodes anyway.
const CACHE_FILL_MIN_FRACTION: u64 = 4;

/// About how much memory `columns` of row group `rg` take decoded: exact for fixed-width
/// types; for strings and binaries, their Parquet pages' uncompressed size plus offsets (less
/// than the truth for dictionary-encoded ones, whose values repeat).
fn decoded_bytes_estimate(d: &DiskSegment, rg: usize, columns: &[usize]) -> u64 {
    let rows = d.rg_starts[rg + 1] - d.rg_starts[rg];
    let meta = d.reader_meta.metadata().row_group(rg);
    let fields = d.reader_meta.schema().fields();
    columns
        .iter()
        .map(|&c| {
            let validity = rows / 8;
            match fields.get(c).and_then(|f| f.data_type().primitive_width()) {
                Some(w) => rows * w as u64 + validity,
                None => meta.column(c).uncompressed_size().max(0) as u64 + rows * 4 + validity,
            }
        })
        .sum()
}

/// Rows of the pages of column `col` in row group `rg` that hold any of `ranges` (segment
/// rows, ascending); the rows themselves where the file has no page index.
fn rows_of_pages_touched(
    d: &DiskSegment,
    rg: usize,
    col: usize,
    ranges: &[(Range<u64>, bool)],
) -> u64 {
    let start = d.rg_starts[rg];
    let rows = d.rg_starts[rg + 1] - start;
    let pages = d
        .reader_meta
        .metadata()
        .offset_index()
        .and_then(|o| o.get(rg))
        .and_then(|o| o.get(col))
        .map(|o| o.page_locations());
    let Some(pages) = pages.filter(|p| !p.is_empty()) else {
        return ranges.iter().map(|(r, _)| r.end - r.start).sum();
    };
    let first = |i: usize| -> u64 { pages.get(i).map_or(rows, |p| p.first_row_index as u64) };
    let page_of = |row: u64| pages.partition_point(|p| (p.first_row_index as u64) <= row) - 1;
    let (mut touched, mut next) = (0, 0usize);
    for (r, _) in ranges {
        let (a, b) = (
            page_of(r.start - start).max(next),
            page_of(r.end - 1 - start),
        );
        if a <= b {
            touched += first(b + 1) - first(a);
            next = b + 1;
        }
    }
    touched
}

/// Rows of a segment (ascending, disjoint ranges), each marked: before a cached read narrows
/// them, whether the key-column predicates' columns are sorted over the range; after, whether
/// every row of it passes them.
type MarkedRanges = Vec<(Range<u64>, bool)>;

/// The kept blocks of each of the row groups `rgs` (ascending), with whether they are sorted:
/// `kept` (ascending) cut at the row groups' bounds, in one pass.
fn by_row_group(
    rg_starts: &[u64],
    rgs: &[usize],
    kept: &[(Range<u64>, bool)],
) -> Vec<(usize, MarkedRanges)> {
    let mut at = 0;
    rgs.iter()
        .map(|&i| {
            let (start, end) = (rg_starts[i], rg_starts[i + 1]);
            while kept.get(at).is_some_and(|(r, _)| r.end <= start) {
                at += 1;
            }
            let ranges = kept[at..]
                .iter()
                .take_while(|(r, _)| r.start < end)
                .map(|(r, s)| (r.start.max(start)..r.end.min(end), *s))
                .collect();
            (i, ranges)
        })
        .collect()
}

/// A segment scan served from the column cache: each row group's columns come from the cache
/// or are decoded whole and put there, and batches are zero-copy slices of them, with the
/// scan's key-column predicates and deleted rows as the mask for the caller's filter.
struct CachedRead {
    token: SegmentToken,
    bytes: Bytes,
    meta: ArrowReaderMetadata,
    rg_starts: Vec<u64>,
    cache: Arc<ColumnCache>,
    /// Segment columns needed (ascending): the projection and the predicates' columns.
    columns: Vec<usize>,
    /// Position in `columns` of each projected column.
    out_pos: Vec<usize>,
    /// Key-column predicates, with the position of their column in `columns`.
    exact: Vec<(usize, BoundPredicate)>,
    schema: SchemaRef,
    deleted: Option<Arc<RoaringBitmap>>,
    batch_size: usize,
    /// Row groups still to read, each with the rows to read of it (ascending, disjoint), and
    /// whether the key-column predicates' columns are sorted over each range.
    work: std::collections::VecDeque<(usize, MarkedRanges)>,
    current: Option<CachedRowGroup>,
}

/// The row group a [`CachedRead`] is in.
struct CachedRowGroup {
    first_row: u64,
    arrays: Vec<ArrayRef>,
    /// The rows to read, each marked if every row of it passes the key-column predicates.
    ranges: MarkedRanges,
    /// The range the next batch starts in, and its first row (inside that range).
    at: usize,
    next_row: u64,
}

impl CachedRead {
    /// The cached read of `work` (row groups with their selected rows), if every row group is
    /// either cached or read widely enough to be worth caching.
    #[allow(clippy::too_many_arguments)]
    fn plan(
        d: &DiskSegment,
        cache: &CacheUse,
        projection: &[usize],
        exact: &[(usize, BoundPredicate)],
        work: Vec<(usize, MarkedRanges)>,
        deleted: Option<Arc<RoaringBitmap>>,
        batch_size: usize,
    ) -> Option<CachedRead> {
        let mut columns: Vec<usize> = projection
            .iter()
            .copied()
            .chain(exact.iter().map(|(f, _)| *f))
            .collect();
        columns.sort_unstable();
        columns.dedup();
        let usable = work.iter().all(|(i, ranges)| {
            let group = d.rg_starts[i + 1] - d.rg_starts[*i];
            let missing: Vec<usize> = columns
                .iter()
                .copied()
                .filter(|&c| !cache.cache.contains(d.token, *i, c))
                .collect();
            missing.is_empty()
                || (cache.fill
                    && rows_of_pages_touched(d, *i, columns[0], ranges) * CACHE_FILL_MIN_FRACTION
                        >= group
                    && missing
                        .iter()
                        .all(|&c| !cache.cache.declined(d.token, *i, c))
                    && decoded_bytes_estimate(d, *i, &columns) <= cache.cache.fill_limit_bytes())
        });
        if !usable {
            return None;
        }
        // (A projection the file cannot serve fails the same way on the file path, which then
        // reports it.)
        let schema = d.reader_meta.schema().project(projection).ok()?;
        Some(CachedRead {
            token: d.token,
            bytes: d.bytes.clone(),
            meta: d.reader_meta.clone(),
            rg_starts: d.rg_starts.clone(),
            cache: cache.cache.clone(),
            out_pos: projection
                .iter()
                .map(|c| position_in(&columns, *c))
                .collect(),
            exact: exact
                .iter()
                .map(|(f, p)| (position_in(&columns, *f), p.clone()))
                .collect(),
            columns,
            schema: Arc::new(schema),
            deleted,
            batch_size,
            work: work.into(),
            current: None,
        })
    }

    /// The needed columns of row group `rg`, whole: from the cache, or decoded and cached.
    fn load(&self, rg: usize) -> Result<Vec<ArrayRef>> {
        let mut arrays: Vec<Option<ArrayRef>> = self
            .columns
            .iter()
            .map(|&c| self.cache.get(self.token, rg, c))
            .collect();
        let missing: Vec<usize> = (0..self.columns.len())
            .filter(|&i| arrays[i].is_none())
            .collect();
        if !missing.is_empty() {
            let rows = (self.rg_starts[rg + 1] - self.rg_starts[rg]) as usize;
            let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(
                self.bytes.clone(),
                self.meta.clone(),
            )
            .with_projection(ProjectionMask::roots(
                self.meta.parquet_schema(),
                missing.iter().map(|&i| self.columns[i]),
            ))
            .with_row_groups(vec![rg])
            .with_batch_size(rows.max(1))
            .build()?;
            let batches = reader.collect::<std::result::Result<Vec<_>, _>>()?;
            let batch = match batches.as_slice() {
                [b] => b.clone(),
                [first, ..] => concat_batches(&first.schema(), &batches)?,
                [] => RecordBatch::new_empty(Arc::new(ArrowSchema::empty())),
            };
            if batch.num_rows() != rows || batch.num_columns() != missing.len() {
                return Err(StorageError::Corrupt(format!(
                    "row group {rg} of a segment decoded to {} rows, not {rows}",
                    batch.num_rows()
                )));
            }
            for (j, &i) in missing.iter().enumerate() {
                let a = batch.column(j).clone();
                self.cache
                    .insert(self.token, rg, self.columns[i], a.clone());
                arrays[i] = Some(a);
            }
        }
        Ok(arrays
            .into_iter()
            .map(|a| a.expect("every column is loaded"))
            .collect())
    }

    /// `ranges` of a row group starting at row `first_row` with these arrays, each marked if
    /// it needs no predicate. Over rows where a predicate's column is sorted, the predicate
    /// keeps one interval, found by binary search: a range the key index knows to be sorted
    /// (one block of one series) is searched whole, any other is first cut where a predicate
    /// column descends (series boundaries). For `ts >= t` on `(uid, lane, ts)` the ranges
    /// shrink to the tails of the series, with neither a comparison per row nor a filter
    /// over the rows left out. Ranges whose columns descend often (unsorted) stay unmarked,
    /// for a row-by-row evaluation.
    fn narrow(
        &self,
        first_row: u64,
        arrays: &[ArrayRef],
        ranges: Vec<(Range<u64>, bool)>,
    ) -> Vec<(Range<u64>, bool)> {
        if self.exact.is_empty() {
            return ranges.into_iter().map(|(r, _)| (r, true)).collect();
        }
        let mut out: Vec<(Range<u64>, bool)> = Vec::with_capacity(ranges.len());
        for (r, sorted) in ranges {
            let local = (r.start - first_row) as usize..(r.end - first_row) as usize;
            let runs = match sorted {
                true => Some(vec![local]),
                false => self.monotone_runs(arrays, local),
            };
            let kept: Option<Vec<Range<usize>>> = runs.and_then(|runs| {
                runs.into_iter()
                    .map(|run| {
                        self.exact.iter().try_fold(run.clone(), |acc, (pos, p)| {
                            let k = p.sorted_range(&arrays[*pos], run.clone())?;
                            Some(acc.start.max(k.start)..acc.end.min(k.end))
                        })
                    })
                    .collect()
            });
            let Some(kept) = kept else {
                out.push((r, false));
                continue;
            };
            for k in kept.into_iter().filter(|k| k.start < k.end) {
                let k = first_row + k.start as u64..first_row + k.end as u64;
                match out.last_mut() {
                    Some((last, true)) if last.end == k.start => last.end = k.end,
                    _ => out.push((k, true)),
                }
            }
        }
        out
    }

    /// `rows` (row group positions) cut wherever a key-column predicate's column descends, so
    /// that every column is sorted over each piece; `None` where it descends more than once
    /// in 64 rows (unsorted values, better compared row by row).
    fn monotone_runs(&self, arrays: &[ArrayRef], rows: Range<usize>) -> Option<Vec<Range<usize>>> {
        let n = rows.len();
        if n < 2 {
            return Some(vec![rows]);
        }
        let mut cuts: Vec<usize> = Vec::new();
        for (pos, _) in &self.exact {
            let a = &arrays[*pos];
            let descends = arrow::compute::kernels::cmp::lt(
                &a.slice(rows.start + 1, n - 1),
                &a.slice(rows.start, n - 1),
            )
            .ok()?;
            if descends.null_count() > 0 || descends.true_count() > n / 64 {
                return None;
            }
            cuts.extend(descends.values().set_indices().map(|i| rows.start + i + 1));
        }
        cuts.sort_unstable();
        cuts.dedup();
        let mut out = Vec::with_capacity(cuts.len() + 1);
        let mut from = rows.start;
        for c in cuts {
            out.push(from..c);
            from = c;
        }
        out.push(from..rows.end);
        Some(out)
    }

    /// One batch of `runs` (segment rows in the current row group, ascending): a zero-copy
    /// slice for one run, the runs' slices concatenated otherwise; with the rows deleted at
    /// the snapshot marked for the caller's filter.
    fn gather(
        &self,
        g: &CachedRowGroup,
        runs: &[Range<u64>],
    ) -> Result<(RecordBatch, Option<BooleanArray>)> {
        let batch = self.batch_of(g, runs)?;
        let n = batch.num_rows();
        let mut mask: Option<BooleanBufferBuilder> = None;
        if let Some(del) = &self.deleted {
            let mut at = 0;
            for r in runs {
                for d in del.range(r.start as u32..r.end as u32) {
                    mask.get_or_insert_with(|| {
                        let mut b = BooleanBufferBuilder::new(n);
                        b.append_n(n, true);
                        b
                    })
                    .set_bit(at + (d as u64 - r.start) as usize, false);
                }
                at += (r.end - r.start) as usize;
            }
        }
        Ok((batch, mask.map(|mut b| BooleanArray::new(b.finish(), None))))
    }

    /// The output columns of `runs` (segment rows in the current row group, ascending): slices
    /// of the cached arrays for one run, concatenated for several.
    fn batch_of(&self, g: &CachedRowGroup, runs: &[Range<u64>]) -> Result<RecordBatch> {
        let n: usize = runs.iter().map(|r| (r.end - r.start) as usize).sum();
        let columns = self
            .out_pos
            .iter()
            .map(|&p| {
                let slices: Vec<ArrayRef> = runs
                    .iter()
                    .map(|r| {
                        g.arrays[p]
                            .slice((r.start - g.first_row) as usize, (r.end - r.start) as usize)
                    })
                    .collect();
                match slices.as_slice() {
                    [one] => Ok(one.clone()),
                    many => {
                        let refs: Vec<&dyn Array> = many.iter().map(|a| a.as_ref()).collect();
                        arrow::compute::concat(&refs)
                    }
                }
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let opts = RecordBatchOptions::new().with_row_count(Some(n));
        Ok(RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &opts,
        )?)
    }

    /// The next batch of the current row group, or `None` when it is done.
    fn next_in_group(
        &self,
        g: &mut CachedRowGroup,
    ) -> Result<Option<(RecordBatch, Option<BooleanArray>)>> {
        while g.at < g.ranges.len() {
            if g.ranges[g.at].1 {
                // Ranges whose every row passes: up to a batch of them, without a filter.
                let mut runs: Vec<Range<u64>> = Vec::new();
                let mut n = 0;
                while g.at < g.ranges.len() && g.ranges[g.at].1 && n < self.batch_size {
                    let end = g.ranges[g.at].0.end;
                    let take = ((end - g.next_row) as usize).min(self.batch_size - n);
                    runs.push(g.next_row..g.next_row + take as u64);
                    n += take;
                    g.next_row += take as u64;
                    if g.next_row >= end {
                        g.at += 1;
                        if let Some((r, _)) = g.ranges.get(g.at) {
                            g.next_row = r.start;
                        }
                    }
                }
                let (batch, mask) = self.gather(g, &runs)?;
                if mask.as_ref().is_some_and(|m| m.true_count() == 0) {
                    continue;
                }
                return Ok(Some((batch, mask)));
            }
            let start = g.next_row;
            let end = (start + self.batch_size as u64).min(g.ranges.last().expect("ranges").0.end);
            let len = (end - start) as usize;
            // The mask: the ranges' rows in the window (gaps false), through the predicates.
            let mut bits = BooleanBufferBuilder::new(len);
            let mut filled = start;
            let mut whole = true;
            while g.at < g.ranges.len() && g.ranges[g.at].0.start < end {
                let (r, passes) = &g.ranges[g.at];
                let (a, b) = (r.start.max(filled), r.end.min(end));
                if a > filled {
                    bits.append_n((a - filled) as usize, false);
                    whole = false;
                }
                let offset = (a - g.first_row) as usize;
                let n = (b - a) as usize;
                let mut pass: Option<BooleanArray> = None;
                for (pos, p) in self.exact.iter().filter(|_| !passes) {
                    let m = p.evaluate(&g.arrays[*pos].slice(offset, n))?;
                    pass = Some(match pass {
                        None => m,
                        // Key columns are never null, so neither mask has nulls.
                        Some(k) => arrow::compute::and(&k, &m)?,
                    });
                }
                match pass {
                    Some(m) => {
                        whole = false;
                        bits.append_buffer(m.values());
                    }
                    None => bits.append_n(n, true),
                }
                filled = b;
                if r.end <= end {
                    g.at += 1;
                } else {
                    break;
                }
            }
            if end > filled {
                bits.append_n((end - filled) as usize, false);
                whole = false;
            }
            g.next_row = match g.ranges.get(g.at) {
                Some((r, _)) => r.start.max(end),
                None => end,
            };
            if let Some(del) = &self.deleted {
                for r in del.range(start as u32..end as u32) {
                    bits.set_bit((r as u64 - start) as usize, false);
                    whole = false;
                }
            }
            let mask = (!whole).then(|| BooleanArray::new(bits.finish(), None));
            if mask.as_ref().is_some_and(|m| m.true_count() == 0) {
                continue;
            }
            return Ok(Some((
                self.batch_of(g, std::slice::from_ref(&(start..end)))?,
                mask,
            )));
        }
        Ok(None)
    }
}

impl Iterator for CachedRead {
    type Item = Result<(RecordBatch, Option<BooleanArray>)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(mut g) = self.current.take() {
                match self.next_in_group(&mut g) {
                    Ok(Some(b)) => {
                        self.current = Some(g);
                        return Some(Ok(b));
                    }
                    Ok(None) => {}
                    Err(e) => return Some(Err(e)),
                }
            }
            let (rg, ranges) = self.work.pop_front()?;
            if ranges.is_empty() {
                continue;
            }
            match self.load(rg) {
                Ok(arrays) => {
                    let first_row = self.rg_starts[rg];
                    let ranges = self.narrow(first_row, &arrays, ranges);
                    let Some((first, _)) = ranges.first() else {
                        continue;
                    };
                    self.current = Some(CachedRowGroup {
                        first_row,
                        next_row: first.start,
                        arrays,
                        ranges,
                        at: 0,
                    })
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// Walks the segment rows a reader returns (ascending ranges) batch by batch, marking the
/// deleted ones.
struct LiveRows {
    ranges: Vec<Range<u64>>,
    /// Position: the range, and the next row in it.
    at: usize,
    next_row: u64,
    deleted: Arc<RoaringBitmap>,
}

impl LiveRows {
    fn new(ranges: Vec<Range<u64>>, deleted: Arc<RoaringBitmap>) -> Self {
        let next_row = ranges.first().map_or(0, |r| r.start);
        LiveRows {
            ranges,
            at: 0,
            next_row,
            deleted,
        }
    }

    /// Liveness of the next `n` rows.
    fn next(&mut self, n: usize) -> BooleanArray {
        let mut bits = arrow::array::BooleanBufferBuilder::new(n);
        bits.append_n(n, true);
        let mut filled = 0;
        while filled < n && self.at < self.ranges.len() {
            let end = self.ranges[self.at].end;
            let take = ((end - self.next_row) as usize).min(n - filled);
            let from = self.next_row;
            for r in self.deleted.range(from as u32..(from + take as u64) as u32) {
                bits.set_bit(filled + (r as u64 - from) as usize, false);
            }
            filled += take;
            self.next_row += take as u64;
            if self.next_row >= end {
                self.at += 1;
                if let Some(r) = self.ranges.get(self.at) {
                    self.next_row = r.start;
                }
            }
        }
        BooleanArray::new(bits.finish(), None)
    }
}

/// Writes a new segment from rows arriving in (key, timestamp descending) order, a row group
/// at a time, so that a compaction's output never has to be in memory whole. The files go to
/// temporary names and are synced and renamed into place by [`SegmentWriter::finish`];
/// whatever a crash leaves behind is unlisted, and recovery deletes it.
pub(crate) struct SegmentWriter {
    id: u64,
    dir: PathBuf,
    tmp: PathBuf,
    codec: Arc<RowCodec>,
    writer: parquet::file::writer::SerializedFileWriter<File>,
    factory: parquet::arrow::arrow_writer::ArrowRowGroupWriterFactory,
    schema: SchemaRef,
    row_group_rows: usize,
    row_groups: usize,
    /// Rows pushed but not yet encoded (less than a row group, except transiently).
    pending: Vec<RecordBatch>,
    pending_rows: usize,
    index: KeyIndexBuilder,
    /// Rows per key block (the key index's stride).
    stride: u64,
    /// Rows in the row groups encoded so far.
    encoded_rows: u64,
    /// Where to put the key blocks of encoded rows, if anywhere.
    warm: Option<Arc<KeyBlockCache>>,
    min_key: Vec<u8>,
    max_key: Vec<u8>,
    min_ts: Timestamp,
    max_ts: Timestamp,
    key_bounds: Vec<(Vec<u8>, Vec<u8>)>,
}

impl SegmentWriter {
    /// Starts segment `id` in `dir` with the columns of `codec`'s schema (plus the timestamp).
    pub fn create(
        dir: &Path,
        id: u64,
        codec: &Arc<RowCodec>,
        opts: &TabletOptions,
    ) -> Result<Self> {
        let (pq, _) = segment_paths(dir, id);
        let tmp = pq.with_extension("parquet.tmp");
        let schema = segment_schema(codec.schema().arrow_schema());
        let props = writer_properties(codec.schema(), opts)?;
        let (writer, factory) =
            ArrowWriter::try_new(File::create(&tmp)?, schema.clone(), Some(props))?
                .into_serialized_writer()?;
        Ok(SegmentWriter {
            id,
            dir: dir.to_path_buf(),
            tmp,
            codec: codec.clone(),
            writer,
            factory,
            schema,
            row_group_rows: opts.row_group_rows.max(1),
            row_groups: 0,
            pending: vec![],
            pending_rows: 0,
            index: KeyIndexBuilder::new(opts.key_block_rows as u32),
            stride: opts.key_block_rows as u64,
            encoded_rows: 0,
            warm: None,
            min_key: vec![],
            max_key: vec![],
            min_ts: Timestamp::MAX,
            max_ts: 0,
            key_bounds: vec![],
        })
    }

    /// Appends rows (the segment schema: table columns, then the timestamp) whose encoded keys
    /// are `keys`. They must sort after every row pushed before.
    pub fn push<'a>(
        &mut self,
        batch: &RecordBatch,
        keys: impl ExactSizeIterator<Item = &'a [u8]>,
    ) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        debug_assert_eq!(keys.len(), batch.num_rows());
        for (i, k) in keys.enumerate() {
            if i == 0 && self.index.is_empty() {
                self.min_key = k.to_vec();
            }
            self.index.push(k);
            if i == batch.num_rows() - 1 {
                self.max_key = k.to_vec();
            }
        }
        let ts = batch.columns().last().unwrap().as_primitive::<Int64Type>();
        for t in ts.values() {
            self.min_ts = self.min_ts.min(*t as u64);
            self.max_ts = self.max_ts.max(*t as u64);
        }
        let bounds = key_bounds(&self.codec, batch)?;
        if self.key_bounds.is_empty() {
            self.key_bounds = bounds;
        } else {
            for ((lo, hi), (l, h)) in self.key_bounds.iter_mut().zip(bounds) {
                if l < *lo {
                    *lo = l;
                }
                if h > *hi {
                    *hi = h;
                }
            }
        }
        self.pending.push(batch.clone());
        self.pending_rows += batch.num_rows();
        self.encode_full_row_groups(false)
    }

    /// Encodes pending rows a row group at a time: only whole row groups unless `all`.
    fn encode_full_row_groups(&mut self, all: bool) -> Result<()> {
        while self.pending_rows > 0 && (all || self.pending_rows >= self.row_group_rows) {
            let batch = if self.pending.len() == 1 {
                self.pending.pop().unwrap()
            } else {
                concat_batches(&self.schema, &std::mem::take(&mut self.pending))?
            };
            let len = self.row_group_rows.min(batch.num_rows());
            self.encode_row_group(&batch.slice(0, len))?;
            self.pending_rows -= len;
            if len < batch.num_rows() {
                self.pending = vec![batch.slice(len, batch.num_rows() - len)];
            } else {
                self.pending.clear();
            }
        }
        Ok(())
    }

    /// Writes one row group, encoding its columns on all cores (a flush is otherwise bound by
    /// one core's encoding and compression speed).
    fn encode_row_group(&mut self, slice: &RecordBatch) -> Result<()> {
        let schema = &self.schema;
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, 8);
        // Every Nyala type is a flat column: one Parquet leaf per Arrow column.
        let mut groups: Vec<Vec<(usize, ArrowColumnWriter)>> =
            (0..threads).map(|_| vec![]).collect();
        for (i, w) in self
            .factory
            .create_column_writers(self.row_groups)?
            .into_iter()
            .enumerate()
        {
            groups[i % threads].push((i, w));
        }
        let encoded: Vec<Result<Vec<(usize, ArrowColumnChunk)>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = groups
                .into_iter()
                .map(|group| {
                    scope.spawn(move || -> Result<Vec<(usize, ArrowColumnChunk)>> {
                        let mut out = Vec::with_capacity(group.len());
                        for (i, mut w) in group {
                            for leaf in compute_leaves(schema.field(i), slice.column(i))? {
                                w.write(&leaf)?;
                            }
                            out.push((i, w.close()?));
                        }
                        Ok(out)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(StorageError::Corrupt(
                            "a column encoder thread panicked".into(),
                        ))
                    })
                })
                .collect()
        });
        let mut chunks: Vec<Option<ArrowColumnChunk>> =
            (0..schema.fields().len()).map(|_| None).collect();
        for group in encoded {
            for (i, chunk) in group? {
                chunks[i] = Some(chunk);
            }
        }
        let mut rg = self.writer.next_row_group()?;
        for chunk in chunks {
            chunk
                .ok_or_else(|| StorageError::Corrupt("a column was not encoded".into()))?
                .append_to_row_group(&mut rg)?;
        }
        rg.close()?;
        self.row_groups += 1;
        if let Some(cache) = &self.warm {
            self.cache_key_blocks(cache, slice)?;
        }
        self.encoded_rows += slice.num_rows() as u64;
        Ok(())
    }

    /// Has the key blocks of the rows written from now on put into `cache` as they are
    /// encoded (see [`SegmentWriter::cache_key_blocks`]).
    pub fn warm_key_blocks(&mut self, cache: Arc<KeyBlockCache>) {
        self.warm = Some(cache);
    }

    /// Puts the key blocks wholly inside `slice` (the rows from `encoded_rows` on) into
    /// `cache`, exactly as `Segment::decode_key_block` would decode them from the file.
    ///
    /// Why: a compaction gives its output a new segment id, so every key block of the rows it
    /// merged would otherwise have to be decoded again by the next presence checks (upserts of
    /// old keys) and lookups. A block that spans two slices is left to be decoded on demand:
    /// a partial block must never be cached, or lookups would miss its other rows.
    fn cache_key_blocks(&self, cache: &KeyBlockCache, slice: &RecordBatch) -> Result<()> {
        let stride = self.stride as usize;
        let start = self.encoded_rows as usize;
        let key_cols = self.codec.schema().key_indices();
        let ts = slice
            .columns()
            .last()
            .expect("the timestamp column")
            .as_primitive::<Int64Type>();
        let mut off = (stride - start % stride) % stride;
        while off + stride <= slice.num_rows() {
            // Copies: a cached block must hold its own rows, not pin its row group's buffers.
            let keys = key_cols
                .iter()
                .map(|&c| arrow::compute::concat(&[slice.column(c).slice(off, stride).as_ref()]))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let ts = ScalarBuffer::from(ts.values()[off..off + stride].to_vec());
            let block = KeyBlock::new(keys, ts);
            cache.insert((self.id, ((start + off) / stride) as u64), Arc::new(block));
            off += stride;
        }
        Ok(())
    }

    /// Rows pushed so far.
    pub fn rows(&self) -> u64 {
        self.index.rows()
    }

    /// Finishes the files, syncs them, renames them into place and opens the segment with
    /// deletion vector `dv`. `None` (and no files) if no row was pushed.
    pub fn finish(mut self, dv: Arc<DeleteVector>) -> Result<Option<Segment>> {
        if self.index.is_empty() {
            drop(self.writer);
            std::fs::remove_file(&self.tmp)?;
            return Ok(None);
        }
        self.encode_full_row_groups(true)?;
        let file = self.writer.into_inner()?;
        file.sync_all()?;
        drop(file);
        let (pq, kix) = segment_paths(&self.dir, self.id);
        let ktmp = kix.with_extension("kix.tmp");
        let rows = self.index.rows();
        let index = self.index.finish();
        index.write_to(&ktmp)?;
        std::fs::rename(&ktmp, &kix)?;
        std::fs::rename(&self.tmp, &pq)?;
        File::open(&self.dir)?.sync_all()?;
        let meta = SegmentMeta {
            id: self.id,
            rows,
            min_key: self.min_key,
            max_key: self.max_key,
            min_ts: self.min_ts,
            max_ts: self.max_ts,
            file_bytes: std::fs::metadata(&pq)?.len(),
            key_bounds: self.key_bounds,
            column_ids: self.codec.schema().columns().iter().map(|c| c.id).collect(),
        };
        Segment::open_with_index(&self.dir, meta, dv, index).map(Some)
    }
}

/// Parquet settings of a segment.
fn writer_properties(schema: &Schema, opts: &TabletOptions) -> Result<WriterProperties> {
    let mut b = WriterProperties::builder()
        .set_compression(match opts.compression {
            SegmentCompression::None => Compression::UNCOMPRESSED,
            SegmentCompression::Lz4 => Compression::LZ4_RAW,
            SegmentCompression::Zstd(level) => Compression::ZSTD(ZstdLevel::try_new(level)?),
        })
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_data_page_row_count_limit(opts.page_rows)
        .set_write_batch_size(opts.page_rows)
        .set_max_row_group_row_count(Some(opts.row_group_rows));
    // Rows are sorted by key, so a later integer or time key column (the `ts` of `(id, ts)`)
    // grows steadily within each run of equal leading columns: delta encoding stores it in a
    // few bits per value, where a dictionary needs about ten.
    for &k in schema.key_indices().iter().skip(1) {
        let c = &schema.columns()[k];
        if matches!(
            c.data_type,
            DataType::Int32 | DataType::Int64 | DataType::Timestamp | DataType::Date
        ) {
            let path = ColumnPath::from(c.name.as_str());
            b = b
                .set_column_dictionary_enabled(path.clone(), false)
                .set_column_encoding(path, Encoding::DELTA_BINARY_PACKED);
        }
    }
    Ok(b.build())
}

/// Index of `col` within the ascending `projection`.
pub(crate) fn position_in(projection: &[usize], col: usize) -> usize {
    projection
        .iter()
        .position(|&c| c == col)
        .expect("column is projected")
}

/// Row groups whose statistics do not rule out every predicate (each with the segment column
/// it tests).
fn row_groups_matching(d: &DiskSegment, preds: &[(usize, &BoundPredicate)]) -> Result<Vec<bool>> {
    let md = d.reader_meta.metadata();
    let n = md.num_row_groups();
    let mut keep = vec![true; n];
    if preds.is_empty() {
        return Ok(keep);
    }
    let arrow_schema = d.reader_meta.schema();
    let pq_schema = d.reader_meta.parquet_schema();
    for &(column, p) in preds {
        let field = arrow_schema.field(column);
        if field.data_type().is_floating() {
            // Parquet leaves NaN out of float statistics, while comparisons order NaN above
            // every number: pruning on them could drop rows a predicate matches.
            continue;
        }
        let name = field.name();
        let conv = StatisticsConverter::try_new(name, arrow_schema, pq_schema)?;
        let mins = conv.row_group_mins(md.row_groups().iter())?;
        let maxes = conv.row_group_maxes(md.row_groups().iter())?;
        let nulls = conv.row_group_null_counts(md.row_groups().iter())?;
        let counts = conv
            .row_group_row_counts(md.row_groups().iter())?
            .unwrap_or_else(|| {
                md.row_groups()
                    .iter()
                    .map(|r| Some(r.num_rows() as u64))
                    .collect()
            });
        for (k, m) in keep
            .iter_mut()
            .zip(p.may_match(&mins, &maxes, &nulls, &counts)?)
        {
            *k &= m;
        }
    }
    Ok(keep)
}

/// The row groups to read and the selection within them for the rows of `rows` (ascending,
/// disjoint ranges) minus `deleted`, skipping row groups not in `keep`.
///
/// The selection ends with the last selected row: the reader stops there. A trailing skip
/// would make it decode the rest of that page and walk every later page of the row group,
/// which for a one-row point read cost more than the read itself.
fn plan_selection(
    rg_starts: &[u64],
    keep: Option<&[bool]>,
    rows: &[Range<u64>],
    deleted: Option<&RoaringBitmap>,
) -> (Vec<usize>, RowSelection) {
    let mut rgs = Vec::new();
    let mut sel: Vec<RowSelector> = Vec::new();
    for i in 0..rg_starts.len() - 1 {
        let (start, end) = (rg_starts[i], rg_starts[i + 1]);
        if keep.is_some_and(|k| !k[i]) {
            continue;
        }
        // `pos`: the row group's rows before it are in the selection already.
        let mut pos = start;
        for r in rows {
            let (a, b) = (r.start.max(start), r.end.min(end));
            if a >= b {
                continue;
            }
            if pos == start {
                rgs.push(i);
            }
            if a > pos {
                sel.push(RowSelector::skip((a - pos) as usize));
            }
            pos = a;
            if let Some(del) = deleted {
                for r in del.range(a as u32..b as u32) {
                    let r = r as u64;
                    if r > pos {
                        sel.push(RowSelector::select((r - pos) as usize));
                    }
                    sel.push(RowSelector::skip(1));
                    pos = r + 1;
                }
            }
            if b > pos {
                sel.push(RowSelector::select((b - pos) as usize));
            }
            pos = b;
        }
        if pos > start && end > pos {
            sel.push(RowSelector::skip((end - pos) as usize));
        }
    }
    while sel.last().is_some_and(|s| s.skip) {
        sel.pop();
    }
    // RowSelection::from merges adjacent selectors of the same kind.
    (rgs, RowSelection::from(sel))
}

impl KeyIndex {
    /// Rows that may hold keys in `range` (whole blocks).
    pub(crate) fn row_range(&self, range: &KeyRange) -> Range<u64> {
        self.block_range(|s| range.is_below(s), |s| !range.is_above(s))
    }
}

/// Keeps only the rows of `batch` whose timestamp column (at `ts_col`) is `<= snapshot`.
pub(crate) fn filter_by_snapshot(
    batch: &RecordBatch,
    ts_col: usize,
    snapshot: Timestamp,
) -> Result<RecordBatch> {
    let ts = batch.column(ts_col).as_primitive::<Int64Type>();
    if ts.iter().all(|t| t.is_some_and(|t| t as u64 <= snapshot)) {
        return Ok(batch.clone());
    }
    let mask: BooleanArray = ts.iter().map(|t| t.map(|t| t as u64 <= snapshot)).collect();
    Ok(filter_record_batch(batch, &mask)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key block's equal ranges match a brute-force scan, whichever leading columns are
    /// constant (native and Arrow-compared columns, one key repeated as versions).
    #[test]
    fn key_block_search_matches_a_scan() {
        use arrow::array::{Int32Array, Int64Array, StringArray};
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let names = ["x", "y", "z"];
        for round in 0..400 {
            // Each column's spread varies by round, so every prefix length is constant in
            // some blocks.
            let spread = |c: u32| 1 + (round / 3u32.pow(c)) % 3;
            let n = rng.random_range(1..40);
            let mut rows: Vec<(i32, &str, i64)> = (0..n)
                .map(|_| {
                    (
                        rng.random_range(0..spread(0)) as i32,
                        names[rng.random_range(0..spread(1)) as usize],
                        rng.random_range(0..spread(2) as i64 * 2),
                    )
                })
                .collect();
            rows.sort();
            let block = KeyBlock::new(
                [
                    Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.0))) as ArrayRef,
                    Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
                    Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
                ],
                ScalarBuffer::from(vec![0i64; rows.len()]),
            );
            for a in -1..4 {
                for name in ["w", "x", "y", "z", "zz"] {
                    for t in -1..7 {
                        let probe = [
                            KeyColumn::new(Arc::new(Int32Array::from(vec![a]))),
                            KeyColumn::new(Arc::new(StringArray::from(vec![name]))),
                            KeyColumn::new(Arc::new(Int64Array::from(vec![t]))),
                        ];
                        let want: Vec<usize> = (0..rows.len())
                            .filter(|&i| rows[i] == (a, name, t))
                            .collect();
                        let got = block.equal_range(&probe).unwrap();
                        if want.is_empty() {
                            assert!(got.is_empty(), "{rows:?} {a} {name} {t}: {got:?}");
                        } else {
                            assert_eq!(got, want[0]..want[want.len() - 1] + 1, "{rows:?}");
                        }
                    }
                }
            }
        }
    }

    /// Commit timestamps come back exactly whichever width their offsets take, and a block of
    /// one series keeps its id columns once: what lets the default cache hold every key block
    /// of 10M traffic rows.
    #[test]
    fn key_blocks_store_timestamps_as_offsets_and_constant_columns_once() {
        use arrow::array::{Int16Array, Int32Array, Int64Array};
        let base = 1_795_601_862_130_638i64;
        for (span, width) in [
            (0i64, 2),
            (65_535, 2),
            (65_536, 4),
            (u32::MAX as i64, 4),
            (1 << 40, 8),
        ] {
            let ts: Vec<i64> = (0..1024)
                .map(|i| base + span * ((i * 7) % 1024) / 1023)
                .collect();
            let bt = BlockTs::new(ScalarBuffer::from(ts.clone()));
            assert_eq!(bt.memory_bytes(), 1024 * width, "span {span}");
            assert_eq!(
                (0..1024).map(|i| bt.get(i)).collect::<Vec<_>>(),
                ts,
                "span {span}"
            );
        }
        let n = 1024;
        let block = KeyBlock::new(
            [
                Arc::new(Int32Array::from(vec![42; n])) as ArrayRef,
                Arc::new(Int16Array::from(vec![1i16; n])),
                Arc::new(Int64Array::from_iter_values(
                    (0..n as i64).map(|m| m * 60_000_000),
                )),
            ],
            ScalarBuffer::from(
                (0..n as i64)
                    .map(|i| base + i / 5 * 7_000)
                    .collect::<Vec<_>>(),
            ),
        );
        assert_eq!(block.constant, 2);
        assert_eq!(block.memory_bytes(), 4 + 2 + n * 8 + n * 4);
        let probe = |t: i64| {
            [
                KeyColumn::new(Arc::new(Int32Array::from(vec![42]))),
                KeyColumn::new(Arc::new(Int16Array::from(vec![1i16]))),
                KeyColumn::new(Arc::new(Int64Array::from(vec![t]))),
            ]
        };
        assert_eq!(
            block.equal_range(&probe(600 * 60_000_000)).unwrap(),
            600..601
        );
        assert!(block.equal_range(&probe(1)).unwrap().is_empty());
    }

    fn selectors(sel: RowSelection) -> Vec<(bool, usize)> {
        Vec::<RowSelector>::from(sel)
            .into_iter()
            .map(|s| (s.skip, s.row_count))
            .collect()
    }

    #[test]
    fn a_selection_ends_at_its_last_selected_row() {
        // Two row groups of 100 rows.
        let starts = [0, 100, 200];
        let (rgs, sel) = plan_selection(&starts, None, std::slice::from_ref(&(40..41)), None);
        assert_eq!(rgs, vec![0]);
        assert_eq!(selectors(sel), vec![(true, 40), (false, 1)]);
        // Rows deleted at the end of the range leave no trailing skip either.
        let deleted = RoaringBitmap::from_iter([48u32, 49]);
        let (_, sel) = plan_selection(
            &starts,
            None,
            std::slice::from_ref(&(40..50)),
            Some(&deleted),
        );
        assert_eq!(selectors(sel), vec![(true, 40), (false, 8)]);
        // A range past the end reads up to the end; a pruned row group is left out.
        let (rgs, sel) = plan_selection(&starts, None, std::slice::from_ref(&(150..250)), None);
        assert_eq!(rgs, vec![1]);
        assert_eq!(selectors(sel), vec![(true, 50), (false, 50)]);
        let (rgs, sel) = plan_selection(
            &starts,
            Some(&[true, false]),
            std::slice::from_ref(&(0..200)),
            None,
        );
        assert_eq!(rgs, vec![0]);
        assert_eq!(selectors(sel), vec![(false, 100)]);
        // Spanning row groups: the first one's tail (here a deleted row) is still skipped
        // before the second.
        let deleted = RoaringBitmap::from_iter([99u32]);
        let (rgs, sel) = plan_selection(
            &starts,
            None,
            std::slice::from_ref(&(50..150)),
            Some(&deleted),
        );
        assert_eq!(rgs, vec![0, 1]);
        assert_eq!(
            selectors(sel),
            vec![(true, 50), (false, 49), (true, 1), (false, 50)]
        );
    }

    #[test]
    fn ranges_are_cut_into_pieces_of_bounded_rows() {
        assert_eq!(
            pieces(vec![0..5, 10..12, 20..30], 4),
            vec![
                vec![0..4],
                vec![4..5, 10..12, 20..21],
                vec![21..25],
                vec![25..29],
                vec![29..30]
            ]
        );
        assert!(pieces(vec![], 4).is_empty());
        let whole = vec![3..7, 8..8];
        assert_eq!(pieces(whole, 4), vec![vec![3..7]]);
    }

    #[test]
    fn a_selection_covers_several_ranges_across_row_groups() {
        let starts = [0, 100, 200, 300];
        // Two ranges in the first group, one spanning into the second, none in the third.
        let deleted = RoaringBitmap::from_iter([12u32]);
        let (rgs, sel) = plan_selection(&starts, None, &[10..20, 30..40, 90..110], Some(&deleted));
        assert_eq!(rgs, vec![0, 1]);
        assert_eq!(
            selectors(sel),
            vec![
                (true, 10),
                (false, 2),
                (true, 1),
                (false, 7),
                (true, 10),
                (false, 10),
                (true, 50),
                (false, 20),
            ]
        );
        // A pruned group between two ranges is left out; the reader's rows are the kept
        // groups' only.
        let (rgs, sel) = plan_selection(
            &starts,
            Some(&[true, false, true]),
            &[50..150, 250..260],
            None,
        );
        assert_eq!(rgs, vec![0, 2]);
        assert_eq!(
            selectors(sel),
            vec![(true, 50), (false, 50), (true, 50), (false, 10)]
        );
    }
}
