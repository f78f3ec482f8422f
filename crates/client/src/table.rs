//! A table's handle: schema, row operations, lookups and columnar writes.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::SchemaRef;
use nyala_common::{DataType, Schema, Value};
use nyala_proto::convert::{schema_from_proto, value_to_proto};
use nyala_proto::v1 as pb;

use crate::scan::Scan;
use crate::{decode_ipc, Client, ClientError};

/// A table as the client knows it: its name and schema.
#[derive(Clone, Debug)]
pub struct Table {
    pub(crate) inner: Arc<TableInner>,
}

#[derive(Debug)]
pub(crate) struct TableInner {
    pub(crate) client: Client,
    pub(crate) name: pb::TableName,
    pub(crate) schema: Schema,
    /// The definition as the server sent it (partitioning, tablets).
    pub(crate) proto: pb::TableSchema,
}

/// What a write did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteResult {
    /// Rows that changed the table.
    pub applied: u64,
    /// Rows skipped by an `*_IGNORE` operation.
    pub ignored: u64,
    /// Rows that failed.
    pub failed: u64,
    /// The failed rows (the server lists up to its limit): `(row index, code, message)`.
    pub errors: Vec<(u64, pb::RowErrorCode, String)>,
    /// A snapshot timestamp that sees every row of the write (for [`Scan::snapshot`]).
    pub timestamp: u64,
}

impl WriteResult {
    pub(crate) fn from_proto(r: pb::WriteResponse) -> Self {
        WriteResult {
            applied: r.applied,
            ignored: r.ignored,
            failed: r.failed,
            errors: r
                .errors
                .into_iter()
                .map(|e| {
                    let code =
                        pb::RowErrorCode::try_from(e.code).unwrap_or(pb::RowErrorCode::Unspecified);
                    (e.row, code, e.message)
                })
                .collect(),
            timestamp: r.timestamp,
        }
    }
}

/// One row operation, built column by column and checked against the schema as it is built
/// (the server checks again). Apply it through a [`crate::Session`].
#[derive(Clone, Debug)]
pub struct Operation {
    pub(crate) table: Arc<TableInner>,
    pub(crate) op: pb::Op,
    /// One slot per table column; `None`: not set (left unchanged by an update, the default
    /// for an insert).
    pub(crate) values: Vec<Option<Value>>,
}

/// Whether `v` is a value of type `t` (NULL fits every type; nullability is checked apart).
fn fits(v: &Value, t: DataType) -> bool {
    matches!(
        (v, t),
        (Value::Null, _)
            | (Value::Bool(_), DataType::Bool)
            | (Value::Int8(_), DataType::Int8)
            | (Value::Int16(_), DataType::Int16)
            | (Value::Int32(_), DataType::Int32)
            | (Value::Int64(_), DataType::Int64)
            | (Value::Float32(_), DataType::Float32)
            | (Value::Float64(_), DataType::Float64)
            | (Value::Utf8(_), DataType::Utf8)
            | (Value::Binary(_), DataType::Binary)
            | (Value::Timestamp(_), DataType::Timestamp)
            | (Value::Date(_), DataType::Date)
            | (Value::Decimal(_), DataType::Decimal { .. })
    )
}

impl Operation {
    /// Sets `column` to `value`, which must be of the column's type (`i32` for INT, `f32` for
    /// REAL, [`Value::Timestamp`] for TIMESTAMP, ...) or NULL for a nullable column.
    pub fn set(&mut self, column: &str, value: impl Into<Value>) -> Result<&mut Self, ClientError> {
        let value = value.into();
        let schema = &self.table.schema;
        let i = schema
            .index_of(column)
            .map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
        let col = &schema.columns()[i];
        if !fits(&value, col.data_type) {
            return Err(ClientError::InvalidArgument(format!(
                "column \"{column}\" is {}; got a {} value",
                col.data_type,
                value.kind()
            )));
        }
        if value.is_null() && !col.nullable {
            return Err(ClientError::InvalidArgument(format!(
                "column \"{column}\" may not be NULL"
            )));
        }
        self.values[i] = Some(value);
        Ok(self)
    }

    /// Sets `column` to NULL.
    pub fn set_null(&mut self, column: &str) -> Result<&mut Self, ClientError> {
        self.set(column, Value::Null)
    }

    /// The operation kind.
    pub fn op(&self) -> pb::Op {
        self.op
    }

    /// The key columns' values (unset ones as NULL), for error reports.
    pub fn key(&self) -> Vec<Value> {
        self.table
            .schema
            .key_indices()
            .iter()
            .map(|&i| self.values[i].clone().unwrap_or(Value::Null))
            .collect()
    }

    /// Refuses an operation whose key is incomplete.
    /// Refuses an operation the server would refuse with its whole batch: an incomplete key,
    /// or a row that may be created without a value for a NOT NULL column lacking a default.
    pub(crate) fn check(&self) -> Result<(), ClientError> {
        let schema = &self.table.schema;
        for &i in schema.key_indices() {
            if self.values[i].is_none() {
                return Err(ClientError::InvalidArgument(format!(
                    "key column \"{}\" is not set",
                    schema.columns()[i].name
                )));
            }
        }
        if matches!(
            self.op,
            pb::Op::Insert | pb::Op::InsertIgnore | pb::Op::Upsert
        ) {
            for (c, v) in schema.columns().iter().zip(&self.values) {
                if v.is_none() && !c.nullable && c.default.is_none() {
                    return Err(ClientError::InvalidArgument(format!(
                        "column \"{}\" is NOT NULL without a default: set it",
                        c.name
                    )));
                }
            }
        }
        Ok(())
    }

    fn mask(&self) -> Vec<bool> {
        self.values.iter().map(Option::is_some).collect()
    }
}

/// Encodes `ops` (all of one table) as write requests: one per run of consecutive operations
/// that set the same columns (a column in a batch is set for every row of it), so the rows
/// keep their order. Returns each request with the number of operations it carries.
pub(crate) fn encode_ops(ops: &[Operation]) -> Result<Vec<(pb::WriteRequest, usize)>, ClientError> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < ops.len() {
        let mask = ops[start].mask();
        let mut end = start + 1;
        while end < ops.len() && ops[end].mask() == mask {
            end += 1;
        }
        let run = &ops[start..end];
        let table = &run[0].table;
        let schema = &table.schema;
        let present: Vec<usize> = (0..mask.len()).filter(|&i| mask[i]).collect();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(present.len());
        for &c in &present {
            let col = &schema.columns()[c];
            let values: Vec<Value> = run
                .iter()
                .map(|o| o.values[c].clone().expect("the run shares its mask"))
                .collect();
            columns.push(
                Value::to_array(&col.name, col.data_type, &values)
                    .map_err(|e| ClientError::InvalidArgument(e.to_string()))?,
            );
        }
        let arrow_schema: SchemaRef = Arc::new(schema.arrow_schema().project(&present)?);
        let batch = RecordBatch::try_new(arrow_schema.clone(), columns)?;
        let (op, ops_bytes) = if run.iter().all(|o| o.op == run[0].op) {
            (run[0].op as i32, Vec::new())
        } else {
            (0, run.iter().map(|o| o.op as i32 as u8).collect())
        };
        out.push((
            pb::WriteRequest {
                table: Some(table.name.clone()),
                arrow_ipc: encode_ipc(&arrow_schema, &[batch])?,
                op,
                ops: ops_bytes,
            },
            run.len(),
        ));
        start = end;
    }
    Ok(out)
}

/// `batches` as one Arrow IPC stream.
pub(crate) fn encode_ipc(
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<Vec<u8>, ClientError> {
    let mut w = arrow::ipc::writer::StreamWriter::try_new(Vec::new(), schema)?;
    for b in batches {
        w.write(b)?;
    }
    w.finish()?;
    Ok(w.into_inner()?)
}

/// A scan condition on one column.
#[derive(Clone, Debug)]
pub struct Predicate {
    pub(crate) column: String,
    pub(crate) op: pb::CompareOp,
    pub(crate) values: Vec<Value>,
}

impl Predicate {
    fn new(column: &str, op: pb::CompareOp, values: Vec<Value>) -> Self {
        Predicate {
            column: column.to_string(),
            op,
            values,
        }
    }

    /// `column = value`.
    pub fn eq(column: &str, value: impl Into<Value>) -> Self {
        Self::new(column, pb::CompareOp::Eq, vec![value.into()])
    }

    /// `column < value`.
    pub fn lt(column: &str, value: impl Into<Value>) -> Self {
        Self::new(column, pb::CompareOp::Lt, vec![value.into()])
    }

    /// `column <= value`.
    pub fn le(column: &str, value: impl Into<Value>) -> Self {
        Self::new(column, pb::CompareOp::Le, vec![value.into()])
    }

    /// `column > value`.
    pub fn gt(column: &str, value: impl Into<Value>) -> Self {
        Self::new(column, pb::CompareOp::Gt, vec![value.into()])
    }

    /// `column >= value`.
    pub fn ge(column: &str, value: impl Into<Value>) -> Self {
        Self::new(column, pb::CompareOp::Ge, vec![value.into()])
    }

    /// `column IN (values)`.
    pub fn in_list(column: &str, values: impl IntoIterator<Item = impl Into<Value>>) -> Self {
        Self::new(
            column,
            pb::CompareOp::In,
            values.into_iter().map(Into::into).collect(),
        )
    }

    /// `column IS NULL`.
    pub fn is_null(column: &str) -> Self {
        Self::new(column, pb::CompareOp::IsNull, vec![])
    }

    /// `column IS NOT NULL`.
    pub fn is_not_null(column: &str) -> Self {
        Self::new(column, pb::CompareOp::IsNotNull, vec![])
    }

    pub(crate) fn to_proto(&self, schema: &Schema) -> Result<pb::Predicate, ClientError> {
        let i = schema
            .index_of(&self.column)
            .map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
        let t = schema.columns()[i].data_type;
        Ok(pb::Predicate {
            column: self.column.clone(),
            op: self.op as i32,
            values: self.values.iter().map(|v| value_to_proto(v, t)).collect(),
        })
    }
}

impl Table {
    pub(crate) fn from_proto(client: Client, proto: pb::TableSchema) -> Result<Self, ClientError> {
        let schema = schema_from_proto(&proto.columns, &proto.primary_key)
            .map_err(|e| ClientError::InvalidArgument(format!("the server's schema: {e}")))?;
        Ok(Table {
            inner: Arc::new(TableInner {
                client,
                name: proto.name.clone().unwrap_or_default(),
                schema,
                proto,
            }),
        })
    }

    /// The table's name (`namespace.name`).
    pub fn name(&self) -> String {
        format!("{}.{}", self.inner.name.namespace, self.inner.name.name)
    }

    /// The table's schema.
    pub fn schema(&self) -> &Schema {
        &self.inner.schema
    }

    /// The definition as the server reported it: partitioning and tablets.
    pub fn definition(&self) -> &pb::TableSchema {
        &self.inner.proto
    }

    fn operation(&self, op: pb::Op) -> Operation {
        Operation {
            table: self.inner.clone(),
            op,
            values: vec![None; self.inner.schema.len()],
        }
    }

    /// A new `INSERT` (a per-row error if the key exists).
    pub fn insert(&self) -> Operation {
        self.operation(pb::Op::Insert)
    }

    /// A new `INSERT IGNORE` (skipped if the key exists).
    pub fn insert_ignore(&self) -> Operation {
        self.operation(pb::Op::InsertIgnore)
    }

    /// A new `UPSERT` (insert, or replace the columns set).
    pub fn upsert(&self) -> Operation {
        self.operation(pb::Op::Upsert)
    }

    /// A new `UPDATE` of the columns set (a per-row error if the key is missing).
    pub fn update(&self) -> Operation {
        self.operation(pb::Op::Update)
    }

    /// A new `UPDATE IGNORE` (skipped if the key is missing).
    pub fn update_ignore(&self) -> Operation {
        self.operation(pb::Op::UpdateIgnore)
    }

    /// A new `DELETE` (set the key columns; a per-row error if the key is missing).
    pub fn delete(&self) -> Operation {
        self.operation(pb::Op::Delete)
    }

    /// A new `DELETE IGNORE` (skipped if the key is missing).
    pub fn delete_ignore(&self) -> Operation {
        self.operation(pb::Op::DeleteIgnore)
    }

    /// Writes a columnar batch with one operation for every row: the fast path for bulk data.
    /// The batch's columns must be named as the table's, with the table's Arrow types (every
    /// key column included).
    pub async fn write_batch(
        &self,
        op: pb::Op,
        batch: &RecordBatch,
    ) -> Result<WriteResult, ClientError> {
        let r = self
            .inner
            .client
            .rpc()
            .write(pb::WriteRequest {
                table: Some(self.inner.name.clone()),
                arrow_ipc: encode_ipc(&batch.schema(), std::slice::from_ref(batch))?,
                op: op as i32,
                ops: Vec::new(),
            })
            .await?
            .into_inner();
        Ok(WriteResult::from_proto(r))
    }

    /// Streams batches to the table in one `WriteStream` call (bulk loads): each is applied as
    /// it arrives; the result sums them, row indexes counting across every batch.
    pub async fn write_stream(
        &self,
        op: pb::Op,
        batches: impl futures::Stream<Item = RecordBatch> + Send + 'static,
    ) -> Result<WriteResult, ClientError> {
        use futures::StreamExt;
        let name = self.inner.name.clone();
        let requests = batches.map(move |b| pb::WriteRequest {
            table: Some(name.clone()),
            // A batch that cannot be encoded is sent empty and refused by the server.
            arrow_ipc: encode_ipc(&b.schema(), std::slice::from_ref(&b)).unwrap_or_default(),
            op: op as i32,
            ops: Vec::new(),
        });
        let r = self
            .inner
            .client
            .rpc()
            .write_stream(requests)
            .await?
            .into_inner();
        Ok(WriteResult::from_proto(r))
    }

    fn key_to_proto(&self, key: &[Value]) -> Result<pb::Key, ClientError> {
        let schema = &self.inner.schema;
        let idx = schema.key_indices();
        if key.len() != idx.len() {
            return Err(ClientError::InvalidArgument(format!(
                "the key of {} has {} columns; got {} values",
                self.name(),
                idx.len(),
                key.len()
            )));
        }
        Ok(pb::Key {
            values: key
                .iter()
                .zip(idx)
                .map(|(v, &i)| value_to_proto(v, schema.columns()[i].data_type))
                .collect(),
        })
    }

    /// The row with primary key `key` (values in key order), every column; `None` if absent.
    pub async fn get(&self, key: &[Value]) -> Result<Option<RecordBatch>, ClientError> {
        let (batch, _) = self.get_many(&[key.to_vec()], &[], None).await?;
        Ok((batch.num_rows() > 0).then_some(batch))
    }

    /// Looks up many keys in one call: the rows found (`projection` columns, every column if
    /// empty) and, for each, the index of its key. `snapshot`: read as of that timestamp.
    pub async fn get_many(
        &self,
        keys: &[Vec<Value>],
        projection: &[&str],
        snapshot: Option<u64>,
    ) -> Result<(RecordBatch, Vec<u32>), ClientError> {
        let keys = keys
            .iter()
            .map(|k| self.key_to_proto(k))
            .collect::<Result<_, _>>()?;
        let r = self
            .inner
            .client
            .rpc()
            .get(pb::GetRequest {
                table: Some(self.inner.name.clone()),
                keys,
                projection: projection.iter().map(|s| s.to_string()).collect(),
                snapshot_timestamp: snapshot.unwrap_or(0),
            })
            .await?
            .into_inner();
        let (schema, batches) = decode_ipc(r.arrow_ipc)?;
        let batch = arrow::compute::concat_batches(&schema, &batches)?;
        Ok((batch, r.key_index))
    }

    /// A scan of this table; set its options, then [`Scan::execute`].
    pub fn scan(&self) -> Scan {
        Scan::new(self.clone())
    }
}
