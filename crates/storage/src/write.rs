//! Write batches: the operations, their validation, and their WAL encoding.
//!
//! A batch travels columnar (an Arrow `RecordBatch` plus one [`WriteOp`] per row), the same
//! shape the gRPC API carries, so bulk ingest never converts row by row. A batch may carry a
//! subset of the table's columns: key columns are always required; for updates and upserts of
//! existing rows the absent columns keep their values; for new rows they are NULL.

use std::collections::HashSet;
use std::io::Cursor;
use std::sync::Arc;

use arrow::array::{new_null_array, Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{Decimal128Type, TimestampMicrosecondType};
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use arrow::row::Rows;
use arrow_schema::{DataType as ArrowType, Field, Schema as ArrowSchema};

use nyala_common::types::TIMESTAMP_TZ;
use nyala_common::{DataType, RowCodec, SchemaError, Value};

use crate::error::{Result, StorageError};
use crate::options::TabletOptions;

/// What to do with one row of a batch (Kudu's operation set).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum WriteOp {
    /// Add a row; a row with the same key already present is a per-row error.
    Insert = 0,
    /// Add a row unless its key is present (then nothing happens).
    InsertIgnore = 1,
    /// Add the row, or replace the given columns of the row with the same key.
    Upsert = 2,
    /// Change the given columns of an existing row; a missing key is a per-row error.
    Update = 3,
    /// Like `Update`, but a missing key is silently skipped.
    UpdateIgnore = 4,
    /// Remove the row with this key; a missing key is a per-row error.
    Delete = 5,
    /// Like `Delete`, but a missing key is silently skipped.
    DeleteIgnore = 6,
}

impl WriteOp {
    /// Every operation, in code order.
    pub const ALL: [WriteOp; 7] = [
        WriteOp::Insert,
        WriteOp::InsertIgnore,
        WriteOp::Upsert,
        WriteOp::Update,
        WriteOp::UpdateIgnore,
        WriteOp::Delete,
        WriteOp::DeleteIgnore,
    ];

    /// Decodes the one-byte code used in the WAL and on the wire.
    pub fn from_code(code: u8) -> Option<WriteOp> {
        Self::ALL.get(code as usize).copied()
    }

    /// Whether the operation may create a row (and so needs every NOT NULL column).
    pub fn may_create(self) -> bool {
        matches!(
            self,
            WriteOp::Insert | WriteOp::InsertIgnore | WriteOp::Upsert
        )
    }

    /// Whether the operation removes a row (only its key matters).
    pub fn is_delete(self) -> bool {
        matches!(self, WriteOp::Delete | WriteOp::DeleteIgnore)
    }
}

/// A batch of row operations, applied atomically (all of its effects become visible together).
#[derive(Clone, Debug)]
pub struct WriteBatch {
    rows: RecordBatch,
    ops: Vec<WriteOp>,
    /// For `Upsert` rows whose key exists: the only columns that change (see
    /// [`WriteBatch::with_upsert_columns`]); `None` changes every column of the batch.
    upsert_columns: Option<Vec<String>>,
}

impl WriteBatch {
    /// A batch with one operation per row of `rows`.
    pub fn new(rows: RecordBatch, ops: Vec<WriteOp>) -> Result<Self> {
        if ops.len() != rows.num_rows() {
            return Err(StorageError::InvalidInput(format!(
                "a batch of {} rows needs {} operations, got {}",
                rows.num_rows(),
                rows.num_rows(),
                ops.len()
            )));
        }
        Ok(WriteBatch {
            rows,
            ops,
            upsert_columns: None,
        })
    }

    /// A batch applying the same operation to every row.
    pub fn uniform(op: WriteOp, rows: RecordBatch) -> Self {
        let ops = vec![op; rows.num_rows()];
        WriteBatch {
            rows,
            ops,
            upsert_columns: None,
        }
    }

    /// Limits what an `Upsert` changes in a row that exists to `columns` (besides the key),
    /// while a new row still gets every column of the batch: PostgreSQL's `INSERT ...
    /// ON CONFLICT (key) DO UPDATE SET c = EXCLUDED.c`, as one atomic operation. Each name
    /// must be a column of the batch.
    pub fn with_upsert_columns<S: Into<String>>(
        mut self,
        columns: impl IntoIterator<Item = S>,
    ) -> Result<Self> {
        let columns: Vec<String> = columns.into_iter().map(Into::into).collect();
        for c in &columns {
            if self.rows.schema().index_of(c).is_err() {
                return Err(StorageError::InvalidInput(format!(
                    "upsert column \"{c}\" is not a column of the batch"
                )));
            }
        }
        self.upsert_columns = Some(columns);
        Ok(self)
    }

    /// The columns an `Upsert` of an existing key changes, if limited.
    pub fn upsert_columns(&self) -> Option<&[String]> {
        self.upsert_columns.as_deref()
    }

    /// The rows.
    pub fn rows(&self) -> &RecordBatch {
        &self.rows
    }

    /// The operations, one per row.
    pub fn ops(&self) -> &[WriteOp] {
        &self.ops
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the batch has no rows.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// Builds a [`WriteBatch`] row by row from [`Value`]s; handy for tests and small clients.
#[derive(Debug)]
pub struct BatchBuilder {
    columns: Vec<String>,
    rows: Vec<Vec<Value>>,
    ops: Vec<WriteOp>,
}

impl BatchBuilder {
    /// A builder for rows that give values for `columns`, in that order.
    pub fn new<S: Into<String>>(columns: impl IntoIterator<Item = S>) -> Self {
        BatchBuilder {
            columns: columns.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
            ops: Vec::new(),
        }
    }

    /// Adds one row operation.
    pub fn push(&mut self, op: WriteOp, values: Vec<Value>) -> &mut Self {
        self.ops.push(op);
        self.rows.push(values);
        self
    }

    /// Builds the batch against a table schema, checking value types.
    pub fn build(&self, schema: &nyala_common::Schema) -> Result<WriteBatch> {
        let mut fields = Vec::with_capacity(self.columns.len());
        let mut arrays = Vec::with_capacity(self.columns.len());
        for (j, name) in self.columns.iter().enumerate() {
            let col = &schema.columns()[schema.index_of(name)?];
            let mut vals = Vec::with_capacity(self.rows.len());
            for r in &self.rows {
                vals.push(r.get(j).cloned().ok_or_else(|| {
                    StorageError::InvalidInput(format!(
                        "a row has {} values for {} columns",
                        r.len(),
                        self.columns.len()
                    ))
                })?);
            }
            let arr = Value::to_array(name, col.data_type, &vals)?;
            fields.push(Field::new(name, arr.data_type().clone(), true));
            arrays.push(arr);
        }
        let opts = arrow::array::RecordBatchOptions::new().with_row_count(Some(self.rows.len()));
        let rows =
            RecordBatch::try_new_with_options(Arc::new(ArrowSchema::new(fields)), arrays, &opts)?;
        WriteBatch::new(rows, self.ops.clone())
    }
}

/// Why one row of a batch was not applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowErrorKind {
    /// `Insert` of a key that is already present.
    DuplicateKey,
    /// `Update` or `Delete` of a key that is not present.
    KeyNotFound,
    /// The key falls in no range partition of the table (add one, or fix the key).
    NoPartition,
}

/// A per-row failure; the rest of the batch still applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowError {
    /// Index of the row within the batch.
    pub row: usize,
    /// What went wrong.
    pub kind: RowErrorKind,
    /// A message naming the key.
    pub message: String,
}

/// The result of an applied batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Commit timestamp of the batch: a snapshot at this timestamp sees it.
    pub timestamp: u64,
    /// Rows that changed the table.
    pub applied: usize,
    /// Rows skipped by an `*Ignore` operation.
    pub ignored: usize,
    /// Rows that failed, with their index.
    pub errors: Vec<RowError>,
}

/// A batch checked against the schema, widened to every column, with keys and rows encoded.
///
/// Invariant: `columns` has one array per table column in table order; key columns have no
/// nulls; every cell and row respects the size limits.
pub(crate) struct ValidatedBatch {
    /// Fingerprint of the schema the batch was checked against.
    pub schema_fingerprint: u64,
    /// The batch as given (normalised types), for the WAL.
    pub original: RecordBatch,
    pub ops: Vec<WriteOp>,
    /// Every table column (absent ones as NULL arrays).
    pub columns: Vec<ArrayRef>,
    /// Which table columns the batch carried.
    pub present: Vec<bool>,
    /// What an `Upsert` of an existing key changes, when not every column of `present`.
    pub upsert: Option<UpsertColumns>,
    pub keys: Rows,
    pub rows: nyala_common::rowformat::EncodedRows,
}

/// The columns an `Upsert` of an existing key changes ([`WriteBatch::with_upsert_columns`]).
#[derive(Clone, Debug)]
pub(crate) struct UpsertColumns {
    /// By table column: the key and the named columns.
    pub present: Vec<bool>,
    /// The same columns as positions in the batch as given (for the WAL).
    pub positions: Vec<u16>,
}

impl ValidatedBatch {
    /// The rows at `indices`, in that order: one tablet's part of a table's batch.
    pub fn take(&self, codec: &RowCodec, indices: &[u32]) -> Result<ValidatedBatch> {
        let idx = arrow::array::UInt32Array::from(indices.to_vec());
        let take = |a: &ArrayRef| arrow::compute::take(a, &idx, None);
        let columns = self
            .columns
            .iter()
            .map(take)
            .collect::<Result<Vec<_>, _>>()?;
        let original = arrow::compute::take_record_batch(&self.original, &idx)?;
        Ok(ValidatedBatch {
            schema_fingerprint: self.schema_fingerprint,
            original,
            ops: indices.iter().map(|&i| self.ops[i as usize]).collect(),
            columns,
            present: self.present.clone(),
            upsert: self.upsert.clone(),
            keys: codec.take_keys(&self.keys, indices),
            rows: codec.take_rows(&self.rows, indices),
        })
    }
}

/// Checks a batch against the schema and limits. Any failure rejects the whole batch.
pub(crate) fn validate(
    codec: &RowCodec,
    opts: &TabletOptions,
    batch: &WriteBatch,
) -> Result<ValidatedBatch> {
    let schema = codec.schema();
    let n = batch.len();
    if n > opts.max_batch_rows {
        return Err(StorageError::InvalidInput(format!(
            "batch of {n} rows exceeds the limit of {} rows",
            opts.max_batch_rows
        )));
    }
    let mut present = vec![false; schema.len()];
    let mut columns: Vec<Option<ArrayRef>> = vec![None; schema.len()];
    let mut seen = HashSet::new();
    let mut fields = Vec::new();
    let mut originals = Vec::new();
    for (field, array) in batch
        .rows
        .schema()
        .fields()
        .iter()
        .zip(batch.rows.columns())
    {
        let name = field.name();
        if !seen.insert(name.as_str()) {
            return Err(SchemaError::DuplicateColumn(name.clone()).into());
        }
        let idx = schema.index_of(name)?;
        let col = &schema.columns()[idx];
        if !col.data_type.matches_arrow(array.data_type()) {
            return Err(SchemaError::TypeMismatch {
                column: name.clone(),
                expected: col.data_type.to_string(),
                got: array.data_type().to_string(),
            }
            .into());
        }
        let array = normalise(array);
        if col.data_type.is_variable_width() {
            check_cell_sizes(&col.name, &array, opts.max_cell_bytes)?;
        }
        if let DataType::Decimal { precision, .. } = col.data_type {
            // Arrow does not check that values fit the declared precision; Parquet would
            // silently truncate those that do not.
            array
                .as_primitive::<Decimal128Type>()
                .validate_decimal_precision(precision)
                .map_err(|e| StorageError::InvalidInput(format!("column \"{}\": {e}", col.name)))?;
        }
        present[idx] = true;
        fields.push(Field::new(name, array.data_type().clone(), true));
        originals.push(array.clone());
        columns[idx] = Some(array);
    }
    for &k in schema.key_indices() {
        let col = &schema.columns()[k];
        match &columns[k] {
            None => {
                return Err(StorageError::InvalidInput(format!(
                    "key column \"{}\" is missing from the batch",
                    col.name
                )))
            }
            Some(a) if a.null_count() > 0 => {
                let row = (0..n).find(|&i| a.is_null(i)).unwrap_or(0);
                return Err(StorageError::InvalidInput(format!(
                    "row {row}: key column \"{}\" is NULL; key columns are never null",
                    col.name
                )));
            }
            Some(_) => {}
        }
    }
    let creates = batch.ops.iter().any(|op| op.may_create());
    for (idx, col) in schema.columns().iter().enumerate() {
        if col.nullable || schema.is_key(idx) {
            continue;
        }
        match &columns[idx] {
            None if creates && col.default.is_none() => {
                return Err(StorageError::InvalidInput(format!(
                    "column \"{}\" is NOT NULL and missing from a batch that inserts rows",
                    col.name
                )))
            }
            Some(a) if a.null_count() > 0 => {
                if let Some(row) = (0..n).find(|&i| a.is_null(i) && !batch.ops[i].is_delete()) {
                    return Err(StorageError::InvalidInput(format!(
                        "row {row}: NULL in NOT NULL column \"{}\"",
                        col.name
                    )));
                }
            }
            _ => {}
        }
    }
    // Absent columns: their default (what a new row gets; existing rows keep their values,
    // as `present` says), else NULL.
    let columns: Vec<ArrayRef> = columns
        .into_iter()
        .zip(schema.columns())
        .map(|(c, s)| match (c, &s.default) {
            (Some(c), _) => Ok(c),
            (None, Some(d)) => column_of(s, d, n),
            (None, None) => Ok(new_null_array(&s.data_type.to_arrow(), n)),
        })
        .collect::<Result<_>>()?;
    let keys = codec.encode_keys_of(&columns)?;
    let rows = codec.encode_rows(&columns)?;
    for i in 0..n {
        let len = rows.row(i).len();
        if len > opts.max_row_bytes {
            return Err(StorageError::InvalidInput(format!(
                "row {i} is {len} bytes, over the limit of {} bytes",
                opts.max_row_bytes
            )));
        }
    }
    let upsert = match &batch.upsert_columns {
        None => None,
        Some(names) => {
            let mut present: Vec<bool> = (0..schema.len()).map(|i| schema.is_key(i)).collect();
            for name in names {
                present[schema.index_of(name)?] = true;
            }
            // `with_upsert_columns` checked the names are batch columns.
            let positions = fields
                .iter()
                .enumerate()
                .filter(|(_, f)| schema.index_of(f.name()).is_ok_and(|i| present[i]))
                .map(|(p, _)| p as u16)
                .collect();
            Some(UpsertColumns { present, positions })
        }
    };
    let opts_rb = arrow::array::RecordBatchOptions::new().with_row_count(Some(n));
    let original =
        RecordBatch::try_new_with_options(Arc::new(ArrowSchema::new(fields)), originals, &opts_rb)?;
    Ok(ValidatedBatch {
        schema_fingerprint: schema.fingerprint(),
        original,
        ops: batch.ops.clone(),
        columns,
        present,
        upsert,
        keys,
        rows,
    })
}

/// `n` copies of `value` as a column of `col`'s type.
pub(crate) fn column_of(
    col: &nyala_common::ColumnSchema,
    value: &Value,
    n: usize,
) -> Result<ArrayRef> {
    let one = Value::to_array(&col.name, col.data_type, std::slice::from_ref(value))?;
    let idx = arrow::array::UInt32Array::from(vec![0u32; n]);
    Ok(arrow::compute::take(&one, &idx, None)?)
}

/// Gives timestamps the canonical zone (the instant is unchanged).
fn normalise(array: &ArrayRef) -> ArrayRef {
    match array.data_type() {
        ArrowType::Timestamp(_, tz) if tz.as_deref() != Some(TIMESTAMP_TZ) => Arc::new(
            array
                .as_primitive::<TimestampMicrosecondType>()
                .clone()
                .with_timezone(TIMESTAMP_TZ),
        ),
        _ => array.clone(),
    }
}

fn check_cell_sizes(column: &str, array: &ArrayRef, limit: usize) -> Result<()> {
    let too_big = |i: usize, len: usize| {
        StorageError::InvalidInput(format!(
            "row {i}: value of column \"{column}\" is {len} bytes, over the limit of {limit} bytes"
        ))
    };
    match array.data_type() {
        ArrowType::Utf8 => {
            for (i, v) in array.as_string::<i32>().iter().enumerate() {
                if let Some(v) = v.filter(|v| v.len() > limit) {
                    return Err(too_big(i, v.len()));
                }
            }
        }
        ArrowType::Binary => {
            for (i, v) in array.as_binary::<i32>().iter().enumerate() {
                if let Some(v) = v.filter(|v| v.len() > limit) {
                    return Err(too_big(i, v.len()));
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// WAL record format versions; add one when the layout below changes (old records must stay
/// readable).
const WAL_FORMAT: u8 = 1;
/// [`WAL_FORMAT`] plus the columns an `Upsert` of an existing key changes.
const WAL_FORMAT_UPSERT_COLUMNS: u8 = 2;

/// Encodes a validated batch as one WAL record:
/// `[format u8][row count u32 LE][one op code per row]` then, in format 2 only,
/// `[column count u16 LE][that many u16 LE positions in the rows]` (the upsert columns), then
/// `[Arrow IPC stream of the rows]`.
pub(crate) fn encode_wal_record(batch: &ValidatedBatch) -> Result<Vec<u8>> {
    let n = batch.ops.len();
    let mut out = Vec::with_capacity(16 + n + batch.original.get_array_memory_size());
    out.push(match batch.upsert {
        None => WAL_FORMAT,
        Some(_) => WAL_FORMAT_UPSERT_COLUMNS,
    });
    out.extend_from_slice(&(n as u32).to_le_bytes());
    out.extend(batch.ops.iter().map(|op| *op as u8));
    if let Some(upsert) = &batch.upsert {
        out.extend_from_slice(&(upsert.positions.len() as u16).to_le_bytes());
        for p in &upsert.positions {
            out.extend_from_slice(&p.to_le_bytes());
        }
    }
    let mut w = StreamWriter::try_new(&mut out, &batch.original.schema())?;
    w.write(&batch.original)?;
    w.finish()?;
    drop(w);
    Ok(out)
}

/// Decodes a WAL record written by [`encode_wal_record`].
pub(crate) fn decode_wal_record(bytes: &[u8]) -> Result<WriteBatch> {
    let corrupt = |m: &str| StorageError::Corrupt(format!("WAL record: {m}"));
    let format = *bytes.first().ok_or_else(|| corrupt("empty"))?;
    if format != WAL_FORMAT && format != WAL_FORMAT_UPSERT_COLUMNS {
        return Err(corrupt("unknown format version"));
    }
    let n = u32::from_le_bytes(
        bytes
            .get(1..5)
            .ok_or_else(|| corrupt("short"))?
            .try_into()
            .unwrap(),
    ) as usize;
    let ops = bytes
        .get(5..5 + n)
        .ok_or_else(|| corrupt("short"))?
        .iter()
        .map(|c| WriteOp::from_code(*c).ok_or_else(|| corrupt("bad op code")))
        .collect::<Result<Vec<_>>>()?;
    let mut at = 5 + n;
    let mut positions = None;
    if format == WAL_FORMAT_UPSERT_COLUMNS {
        let u16_at = |i: usize| -> Result<usize> {
            Ok(u16::from_le_bytes(
                bytes
                    .get(i..i + 2)
                    .ok_or_else(|| corrupt("short"))?
                    .try_into()
                    .unwrap(),
            ) as usize)
        };
        let m = u16_at(at)?;
        positions = Some(
            (0..m)
                .map(|k| u16_at(at + 2 + 2 * k))
                .collect::<Result<Vec<_>>>()?,
        );
        at += 2 + 2 * m;
    }
    let mut reader = StreamReader::try_new(Cursor::new(&bytes[at..]), None)?;
    let rows = reader.next().ok_or_else(|| corrupt("no rows"))??;
    let names: Option<Vec<String>> = match positions {
        None => None,
        Some(p) => Some(
            p.iter()
                .map(|&i| {
                    rows.schema()
                        .fields()
                        .get(i)
                        .map(|f| f.name().clone())
                        .ok_or_else(|| corrupt("bad upsert column"))
                })
                .collect::<Result<_>>()?,
        ),
    };
    let batch = WriteBatch::new(rows, ops)?;
    match names {
        None => Ok(batch),
        Some(names) => batch.with_upsert_columns(names),
    }
}
