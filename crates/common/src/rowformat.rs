//! The write buffer's row format: every column of a row in one byte string, laid out so that
//! one column of many rows can be read without parsing the others.
//!
//! ```text
//! [null bitmap: one bit per column, set = NULL]
//! [fixed area: each column at a fixed offset: its value (fixed-width types, little endian;
//!  zeros when NULL), or for TEXT/BYTEA the end of its bytes within the variable area (u32)]
//! [variable area: the TEXT/BYTEA values, in column order]
//! ```
//!
//! A scan of the buffer decodes only the columns it reads (a query of 3 columns out of 15 no
//! longer pays for the other 12), and a value costs a load at a known offset. The format lives
//! only in memory (the WAL keeps Arrow IPC, segments are Parquet), so it can change freely.
//! Keys are not in this format: they stay memcomparable (see `codec.rs`).

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, PrimitiveArray, RecordBatch,
    RecordBatchOptions, StringArray,
};
use arrow::buffer::{BooleanBuffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{
    ArrowPrimitiveType, Date32Type, Decimal128Type, Float32Type, Float64Type, Int16Type, Int32Type,
    Int64Type, Int8Type, TimestampMicrosecondType,
};

use crate::{DataType, Schema, SchemaError};

/// Rows encoded back to back, with their end offsets.
#[derive(Clone, Debug, Default)]
pub struct EncodedRows {
    data: Vec<u8>,
    /// `ends[i]` is the end of row `i` in `data` (its start is `ends[i - 1]`, or 0).
    ends: Vec<usize>,
}

impl EncodedRows {
    /// Row `i`.
    pub fn row(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.data[start..self.ends[i]]
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The rows, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &[u8]> {
        (0..self.len()).map(|i| self.row(i))
    }

    /// The rows at `indices`, in that order.
    pub fn take(&self, indices: &[u32]) -> EncodedRows {
        let mut out = EncodedRows::default();
        for &i in indices {
            out.data.extend_from_slice(self.row(i as usize));
            out.ends.push(out.data.len());
        }
        out
    }
}

/// Where each column of a schema lives in an encoded row.
#[derive(Clone, Debug)]
pub(crate) struct RowLayout {
    types: Vec<DataType>,
    /// Offset of each column's slot (in the fixed area, from the row's start).
    slots: Vec<usize>,
    /// For TEXT/BYTEA columns: the slot of the previous TEXT/BYTEA column, whose end is where
    /// this one's bytes start.
    prev_var: Vec<Option<usize>>,
    /// Length of the bitmap plus the fixed area: where the variable area starts.
    fixed_end: usize,
}

/// Bytes of a column's slot in the fixed area.
fn slot_width(t: DataType) -> usize {
    match t {
        DataType::Bool | DataType::Int8 => 1,
        DataType::Int16 => 2,
        DataType::Int32 | DataType::Float32 | DataType::Date => 4,
        DataType::Int64 | DataType::Float64 | DataType::Timestamp => 8,
        DataType::Decimal { .. } => 16,
        DataType::Utf8 | DataType::Binary => 4,
    }
}

fn is_var(t: DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::Binary)
}

impl RowLayout {
    pub fn new(schema: &Schema) -> Self {
        let types: Vec<DataType> = schema.columns().iter().map(|c| c.data_type).collect();
        let mut off = types.len().div_ceil(8);
        let mut slots = Vec::with_capacity(types.len());
        let mut prev_var = Vec::with_capacity(types.len());
        let mut last_var = None;
        for &t in &types {
            slots.push(off);
            if is_var(t) {
                prev_var.push(last_var);
                last_var = Some(off);
            } else {
                prev_var.push(None);
            }
            off += slot_width(t);
        }
        RowLayout {
            types,
            slots,
            prev_var,
            fixed_end: off,
        }
    }

    /// Encodes full rows (every column, table order).
    pub fn encode(&self, columns: &[ArrayRef]) -> Result<EncodedRows, SchemaError> {
        if columns.len() != self.types.len() {
            return Err(SchemaError::Arrow(format!(
                "a row of this table has {} columns, got {}",
                self.types.len(),
                columns.len()
            )));
        }
        let n = columns.first().map_or(0, |c| c.len());
        let var_bytes: usize = columns
            .iter()
            .zip(&self.types)
            .filter(|(_, t)| is_var(**t))
            .map(|(c, _)| c.to_data().buffers().get(1).map_or(0, |b| b.len()))
            .sum();
        let mut out = EncodedRows {
            data: Vec::with_capacity(n * self.fixed_end + var_bytes),
            ends: Vec::with_capacity(n),
        };
        for i in 0..n {
            let start = out.data.len();
            out.data.resize(start + self.fixed_end, 0);
            let mut var_len = 0usize;
            for (c, (col, &t)) in columns.iter().zip(&self.types).enumerate() {
                let slot = start + self.slots[c];
                if col.is_null(i) {
                    out.data[start + c / 8] |= 1 << (c % 8);
                    if is_var(t) {
                        out.data[slot..slot + 4].copy_from_slice(&(var_len as u32).to_le_bytes());
                    }
                    continue;
                }
                let mut put =
                    |bytes: &[u8]| out.data[slot..slot + bytes.len()].copy_from_slice(bytes);
                match t {
                    DataType::Bool => put(&[col.as_boolean().value(i) as u8]),
                    DataType::Int8 => put(&col.as_primitive::<Int8Type>().value(i).to_le_bytes()),
                    DataType::Int16 => put(&col.as_primitive::<Int16Type>().value(i).to_le_bytes()),
                    DataType::Int32 => put(&col.as_primitive::<Int32Type>().value(i).to_le_bytes()),
                    DataType::Int64 => put(&col.as_primitive::<Int64Type>().value(i).to_le_bytes()),
                    DataType::Float32 => {
                        put(&col.as_primitive::<Float32Type>().value(i).to_le_bytes())
                    }
                    DataType::Float64 => {
                        put(&col.as_primitive::<Float64Type>().value(i).to_le_bytes())
                    }
                    DataType::Timestamp => put(&col
                        .as_primitive::<TimestampMicrosecondType>()
                        .value(i)
                        .to_le_bytes()),
                    DataType::Date => put(&col.as_primitive::<Date32Type>().value(i).to_le_bytes()),
                    DataType::Decimal { .. } => {
                        put(&col.as_primitive::<Decimal128Type>().value(i).to_le_bytes())
                    }
                    DataType::Utf8 | DataType::Binary => {
                        let v: &[u8] = match t {
                            DataType::Utf8 => col.as_string::<i32>().value(i).as_bytes(),
                            _ => col.as_binary::<i32>().value(i),
                        };
                        var_len += v.len();
                        out.data[slot..slot + 4].copy_from_slice(&(var_len as u32).to_le_bytes());
                        out.data.extend_from_slice(v);
                    }
                }
            }
            out.ends.push(out.data.len());
        }
        Ok(out)
    }

    /// Decodes column `c` of `rows` (each produced by [`RowLayout::encode`]) as an array of
    /// `field_type` (the column's Arrow type).
    pub fn decode_column(
        &self,
        rows: &[&[u8]],
        c: usize,
        field_type: &arrow::datatypes::DataType,
    ) -> Result<ArrayRef, SchemaError> {
        let slot = self.slots[c];
        let (byte, bit) = (c / 8, 1u8 << (c % 8));
        let nulls = if rows.iter().any(|r| r[byte] & bit != 0) {
            // Packed 64 rows at a time (a `Vec<bool>` first cost a tenth of a buffer scan).
            Some(NullBuffer::new(BooleanBuffer::collect_bool(
                rows.len(),
                |i| rows[i][byte] & bit == 0,
            )))
        } else {
            None
        };
        // Generic over the conversion, not a `fn` pointer, so it inlines into the loop (an
        // indirect call per value was a fifth of a buffer scan).
        fn prim<T: ArrowPrimitiveType, const W: usize>(
            rows: &[&[u8]],
            slot: usize,
            nulls: Option<NullBuffer>,
            from: impl Fn([u8; W]) -> T::Native,
        ) -> PrimitiveArray<T> {
            let vals: Vec<T::Native> = rows
                .iter()
                .map(|r| from(r[slot..slot + W].try_into().unwrap()))
                .collect();
            PrimitiveArray::<T>::new(ScalarBuffer::from(vals), nulls)
        }
        let array: ArrayRef = match self.types[c] {
            DataType::Bool => Arc::new(BooleanArray::new(
                BooleanBuffer::from_iter(rows.iter().map(|r| r[slot] != 0)),
                nulls,
            )),
            DataType::Int8 => Arc::new(prim::<Int8Type, 1>(rows, slot, nulls, i8::from_le_bytes)),
            DataType::Int16 => {
                Arc::new(prim::<Int16Type, 2>(rows, slot, nulls, i16::from_le_bytes))
            }
            DataType::Int32 => {
                Arc::new(prim::<Int32Type, 4>(rows, slot, nulls, i32::from_le_bytes))
            }
            DataType::Int64 => {
                Arc::new(prim::<Int64Type, 8>(rows, slot, nulls, i64::from_le_bytes))
            }
            DataType::Float32 => Arc::new(prim::<Float32Type, 4>(
                rows,
                slot,
                nulls,
                f32::from_le_bytes,
            )),
            DataType::Float64 => Arc::new(prim::<Float64Type, 8>(
                rows,
                slot,
                nulls,
                f64::from_le_bytes,
            )),
            DataType::Timestamp => Arc::new(
                prim::<TimestampMicrosecondType, 8>(rows, slot, nulls, i64::from_le_bytes)
                    .with_data_type(field_type.clone()),
            ),
            DataType::Date => {
                Arc::new(prim::<Date32Type, 4>(rows, slot, nulls, i32::from_le_bytes))
            }
            DataType::Decimal { .. } => Arc::new(
                prim::<Decimal128Type, 16>(rows, slot, nulls, i128::from_le_bytes)
                    .with_data_type(field_type.clone()),
            ),
            t @ (DataType::Utf8 | DataType::Binary) => {
                let prev = self.prev_var[c];
                let end_at = |r: &[u8], s: usize| {
                    u32::from_le_bytes(r[s..s + 4].try_into().unwrap()) as usize
                };
                let mut offsets: Vec<i32> = Vec::with_capacity(rows.len() + 1);
                offsets.push(0);
                let mut values = Vec::new();
                for r in rows {
                    let from = prev.map_or(0, |p| end_at(r, p));
                    let to = end_at(r, slot);
                    values.extend_from_slice(&r[self.fixed_end + from..self.fixed_end + to]);
                    let total = i32::try_from(values.len()).map_err(|_| {
                        SchemaError::Arrow("a buffer scan batch over 2 GiB of text".into())
                    })?;
                    offsets.push(total);
                }
                let offsets = OffsetBuffer::new(ScalarBuffer::from(offsets));
                if t == DataType::Utf8 {
                    Arc::new(
                        StringArray::try_new(offsets, values.into(), nulls)
                            .map_err(|e| SchemaError::Arrow(e.to_string()))?,
                    )
                } else {
                    Arc::new(
                        BinaryArray::try_new(offsets, values.into(), nulls)
                            .map_err(|e| SchemaError::Arrow(e.to_string()))?,
                    )
                }
            }
        };
        Ok(array)
    }

    /// Decodes columns `projection` (table indices, any order) of `rows` into a batch of
    /// `schema`'s fields at those indices.
    pub fn decode(
        &self,
        schema: &Schema,
        rows: &[&[u8]],
        projection: &[usize],
    ) -> Result<RecordBatch, SchemaError> {
        let arrow_schema = schema.arrow_schema();
        let whole = projection.len() == arrow_schema.fields().len()
            && projection.iter().enumerate().all(|(i, &c)| i == c);
        let cols = projection
            .iter()
            .map(|&c| self.decode_column(rows, c, arrow_schema.field(c).data_type()))
            .collect::<Result<Vec<_>, _>>()?;
        let target = if whole {
            arrow_schema.clone()
        } else {
            Arc::new(arrow_schema.project(projection)?)
        };
        let opts = RecordBatchOptions::new().with_row_count(Some(rows.len()));
        Ok(RecordBatch::try_new_with_options(target, cols, &opts)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ColumnSchema, Value};

    /// Every type, NULLs between and around variable-length values, decoded whole and by
    /// column in any order.
    #[test]
    fn every_type_round_trips_whole_and_projected() {
        let types = [
            DataType::Utf8,
            DataType::Bool,
            DataType::Int8,
            DataType::Binary,
            DataType::Int16,
            DataType::Int32,
            DataType::Int64,
            DataType::Float32,
            DataType::Float64,
            DataType::Utf8,
            DataType::Timestamp,
            DataType::Date,
            DataType::Decimal {
                precision: 20,
                scale: 3,
            },
        ];
        let mut cols = vec![ColumnSchema::not_null("k", DataType::Int32)];
        cols.extend(
            types
                .iter()
                .enumerate()
                .map(|(i, t)| ColumnSchema::nullable(format!("c{i}"), *t)),
        );
        let schema = Schema::new(cols, &["k"]).unwrap();
        let value = |t: DataType, row: i64| -> Value {
            if (row + t.to_string().len() as i64) % 3 == 0 {
                return Value::Null;
            }
            match t {
                DataType::Bool => Value::Bool(row % 2 == 0),
                DataType::Int8 => Value::Int8(row as i8 - 3),
                DataType::Int16 => Value::Int16(-300 * row as i16),
                DataType::Int32 => Value::Int32(70_000 * row as i32),
                DataType::Int64 => Value::Int64(-(1 << 40) * row),
                DataType::Float32 => Value::Float32(row as f32 / 3.0),
                DataType::Float64 => Value::Float64(-(row as f64) / 7.0),
                DataType::Utf8 => Value::Utf8("é".repeat(row as usize)),
                DataType::Binary => Value::Binary(vec![row as u8; row as usize * 2]),
                DataType::Timestamp => Value::Timestamp(1_700_000_000_000_000 + row),
                DataType::Date => Value::Date(19_000 + row as i32),
                DataType::Decimal { .. } => Value::Decimal(12_345 * row as i128),
            }
        };
        let n = 7i64;
        let arrays: Vec<ArrayRef> = schema
            .columns()
            .iter()
            .enumerate()
            .map(|(c, col)| {
                let vals: Vec<Value> = (0..n)
                    .map(|r| match c {
                        0 => Value::Int32(r as i32),
                        _ => value(col.data_type, r),
                    })
                    .collect();
                Value::to_array(&col.name, col.data_type, &vals).unwrap()
            })
            .collect();
        let layout = RowLayout::new(&schema);
        let rows = layout.encode(&arrays).unwrap();
        assert_eq!(rows.len(), n as usize);
        let refs: Vec<&[u8]> = rows.iter().collect();
        let all: Vec<usize> = (0..schema.len()).collect();
        let whole = layout.decode(&schema, &refs, &all).unwrap();
        assert_eq!(whole.columns(), arrays.as_slice());
        assert_eq!(whole.schema(), *schema.arrow_schema());
        let pick = [10, 1, 4, 0, 13];
        let some = layout.decode(&schema, &refs, &pick).unwrap();
        for (i, &c) in pick.iter().enumerate() {
            assert_eq!(some.column(i), &arrays[c], "column {c}");
        }
        let taken = rows.take(&[5, 0]);
        let refs: Vec<&[u8]> = taken.iter().collect();
        let back = layout.decode(&schema, &refs, &[1]).unwrap();
        let expected = arrow::compute::take(
            &arrays[1],
            &arrow::array::UInt32Array::from(vec![5, 0]),
            None,
        )
        .unwrap();
        assert_eq!(back.column(0), &expected);
    }
}
