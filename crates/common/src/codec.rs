//! Key and row encodings, built on `arrow-row`.
//!
//! - A **key** is encoded memcomparably: comparing the bytes compares the keys column by column
//!   in key order, as SQL would. The write buffer, segment key ranges, key samples and filters
//!   all work on these bytes, so no layer ever compares typed keys.
//! - A **row** (all columns, table order) is the write buffer's format: see `rowformat.rs`
//!   (any column of many rows decodes without parsing the others).

use arrow::array::{ArrayRef, RecordBatch};
use arrow::row::{RowConverter, Rows, SortField};

use crate::rowformat::{EncodedRows, RowLayout};
use crate::{Schema, SchemaError, Value};

fn take(conv: &RowConverter, rows: &Rows, indices: &[u32]) -> Rows {
    let bytes = indices
        .iter()
        .map(|&i| rows.row(i as usize).as_ref().len())
        .sum();
    let mut out = conv.empty_rows(indices.len(), bytes);
    for &i in indices {
        out.push(rows.row(i as usize));
    }
    out
}

/// Encodes keys and rows of one schema.
///
/// Invariant: row bytes handed to [`RowCodec::decode_rows`] were produced by
/// [`RowCodec::encode_rows`] of a codec for the same schema (decoding panics otherwise).
#[derive(Debug)]
pub struct RowCodec {
    schema: Schema,
    keys: RowConverter,
    /// One converter per key column (key order), for per-column bounds.
    key_columns: Vec<RowConverter>,
    rows: RowLayout,
}

impl RowCodec {
    /// A codec for `schema`.
    pub fn new(schema: &Schema) -> Result<Self, SchemaError> {
        let key_fields = schema
            .key_indices()
            .iter()
            .map(|&i| SortField::new(schema.columns()[i].data_type.to_arrow()))
            .collect();
        let keys = RowConverter::new(key_fields)?;
        let key_columns = schema
            .key_indices()
            .iter()
            .map(|&i| {
                RowConverter::new(vec![SortField::new(
                    schema.columns()[i].data_type.to_arrow(),
                )])
            })
            .collect::<Result<_, _>>()?;
        Ok(RowCodec {
            schema: schema.clone(),
            keys,
            key_columns,
            rows: RowLayout::new(schema),
        })
    }

    /// The schema this codec encodes.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Encodes the keys of a batch that has every column in table order.
    pub fn encode_keys_of(&self, full_row_columns: &[ArrayRef]) -> Result<Rows, SchemaError> {
        let cols: Vec<ArrayRef> = self
            .schema
            .key_indices()
            .iter()
            .map(|&i| full_row_columns[i].clone())
            .collect();
        Ok(self.keys.convert_columns(&cols)?)
    }

    /// Encodes key columns given in key order.
    pub fn encode_keys(&self, key_columns: &[ArrayRef]) -> Result<Rows, SchemaError> {
        Ok(self.keys.convert_columns(key_columns)?)
    }

    /// Encodes key column `k` (position in key order) on its own, memcomparably: the basis of
    /// per-column key bounds, which prune segments for keys that lead with another column.
    pub fn encode_key_column(&self, k: usize, array: &ArrayRef) -> Result<Rows, SchemaError> {
        Ok(self.key_columns[k].convert_columns(std::slice::from_ref(array))?)
    }

    /// Encodes one key given as values in key order, checking their types.
    pub fn encode_key_values(&self, key: &[Value]) -> Result<Vec<u8>, SchemaError> {
        let idx = self.schema.key_indices();
        if key.len() != idx.len() {
            return Err(SchemaError::Arrow(format!(
                "a key of this table has {} columns, got {} values",
                idx.len(),
                key.len()
            )));
        }
        let mut cols = Vec::with_capacity(idx.len());
        for (v, &i) in key.iter().zip(idx) {
            let c = &self.schema.columns()[i];
            if v.is_null() {
                return Err(SchemaError::TypeMismatch {
                    column: c.name.clone(),
                    expected: c.data_type.to_string(),
                    got: "NULL (key columns are never null)".into(),
                });
            }
            cols.push(Value::to_array(
                &c.name,
                c.data_type,
                std::slice::from_ref(v),
            )?);
        }
        Ok(self.keys.convert_columns(&cols)?.row(0).as_ref().to_vec())
    }

    /// Encodes the leading `values.len()` key columns. The result is a byte prefix of the
    /// encoding of every key that starts with these values, and compares like them: the basis
    /// of key-range pruning for predicates on a key prefix.
    pub fn encode_key_prefix(&self, values: &[Value]) -> Result<Vec<u8>, SchemaError> {
        let idx = &self.schema.key_indices()[..values.len().min(self.schema.key_indices().len())];
        let mut fields = Vec::with_capacity(idx.len());
        let mut cols = Vec::with_capacity(idx.len());
        for (v, &i) in values.iter().zip(idx) {
            let c = &self.schema.columns()[i];
            fields.push(SortField::new(c.data_type.to_arrow()));
            cols.push(Value::to_array(
                &c.name,
                c.data_type,
                std::slice::from_ref(v),
            )?);
        }
        let conv = RowConverter::new(fields)?;
        Ok(conv.convert_columns(&cols)?.row(0).as_ref().to_vec())
    }

    /// Decodes encoded keys back into key columns (key order).
    pub fn decode_keys<'a>(
        &self,
        keys: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Vec<ArrayRef>, SchemaError> {
        let parser = self.keys.parser();
        let parsed: Vec<_> = keys.into_iter().map(|k| parser.parse(k)).collect();
        Ok(self.keys.convert_rows(parsed)?)
    }

    /// The keys at `indices` of `keys` (encoded by this codec), in that order: splits a
    /// batch's encoded keys without encoding them again.
    pub fn take_keys(&self, keys: &Rows, indices: &[u32]) -> Rows {
        take(&self.keys, keys, indices)
    }

    /// The rows at `indices` of `rows` (encoded by this codec), in that order.
    pub fn take_rows(&self, rows: &EncodedRows, indices: &[u32]) -> EncodedRows {
        rows.take(indices)
    }

    /// Encodes full rows (every column, table order).
    pub fn encode_rows(&self, columns: &[ArrayRef]) -> Result<EncodedRows, SchemaError> {
        self.rows.encode(columns)
    }

    /// Decodes rows produced by [`RowCodec::encode_rows`] into a batch of the table's schema.
    pub fn decode_rows<'a>(
        &self,
        rows: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<RecordBatch, SchemaError> {
        let rows: Vec<&[u8]> = rows.into_iter().collect();
        let all: Vec<usize> = (0..self.schema.len()).collect();
        self.rows.decode(&self.schema, &rows, &all)
    }

    /// Decodes only columns `projection` (table indices) of rows produced by
    /// [`RowCodec::encode_rows`]: a scan of the write buffer reads what it needs.
    pub fn decode_rows_projected(
        &self,
        rows: &[&[u8]],
        projection: &[usize],
    ) -> Result<RecordBatch, SchemaError> {
        self.rows.decode(&self.schema, rows, projection)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ColumnSchema, DataType};

    fn schema() -> Schema {
        Schema::new(
            vec![
                ColumnSchema::nullable("v", DataType::Utf8),
                ColumnSchema::not_null("a", DataType::Int32),
                ColumnSchema::not_null("b", DataType::Timestamp),
            ],
            &["a", "b"],
        )
        .unwrap()
    }

    #[test]
    fn keys_sort_like_tuples() {
        let c = RowCodec::new(&schema()).unwrap();
        let k = |a: i32, b: i64| {
            c.encode_key_values(&[Value::Int32(a), Value::Timestamp(b)])
                .unwrap()
        };
        assert!(k(-5, 100) < k(-4, 0));
        assert!(k(1, -1) < k(1, 0));
        assert!(k(1, 0) < k(2, i64::MIN));
        let back = c.decode_keys([k(7, 9).as_slice()]).unwrap();
        assert_eq!(Value::from_array(&back[0], 0).unwrap(), Value::Int32(7));
        assert_eq!(Value::from_array(&back[1], 0).unwrap(), Value::Timestamp(9));
    }

    #[test]
    fn prefixes_are_byte_prefixes() {
        let c = RowCodec::new(&schema()).unwrap();
        let full = c
            .encode_key_values(&[Value::Int32(3), Value::Timestamp(9)])
            .unwrap();
        let prefix = c.encode_key_prefix(&[Value::Int32(3)]).unwrap();
        assert!(full.starts_with(&prefix));
    }

    #[test]
    fn null_key_is_rejected() {
        let c = RowCodec::new(&schema()).unwrap();
        assert!(c
            .encode_key_values(&[Value::Null, Value::Timestamp(1)])
            .is_err());
        assert!(c.encode_key_values(&[Value::Int32(1)]).is_err());
    }

    #[test]
    fn rows_round_trip() {
        let s = schema();
        let c = RowCodec::new(&s).unwrap();
        let cols = vec![
            Value::to_array("v", DataType::Utf8, &[Value::Utf8("x".into()), Value::Null]).unwrap(),
            Value::to_array("a", DataType::Int32, &[Value::Int32(1), Value::Int32(2)]).unwrap(),
            Value::to_array(
                "b",
                DataType::Timestamp,
                &[Value::Timestamp(5), Value::Timestamp(6)],
            )
            .unwrap(),
        ];
        let rows = c.encode_rows(&cols).unwrap();
        let batch = c.decode_rows(rows.iter()).unwrap();
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(batch.columns(), cols.as_slice());
        let refs: Vec<&[u8]> = rows.iter().collect();
        let some = c.decode_rows_projected(&refs, &[2, 0]).unwrap();
        assert_eq!(some.columns(), &[cols[2].clone(), cols[0].clone()]);
        assert_eq!(some.schema().field(1).name(), "v");
    }
}
