//! Conversions between the wire types of `nyala.v1` and the storage engine's, and storage
//! errors as gRPC statuses.
//!
//! Every conversion of client input returns `INVALID_ARGUMENT` with a message naming the
//! field at fault: a malformed request is the client's mistake, never a server crash.

use nyala_proto::convert::{self as wire, column_to_proto, value_to_proto, ConvertError};
use nyala_proto::v1 as pb;
use nyala_storage::{
    CmpOp, ColumnSchema, DataType, PartitionSpec, Predicate, RangeBounds, Schema, StorageError,
    TableInfo, TableName, Value, WriteOp,
};
use tonic::Status;

fn invalid(e: ConvertError) -> Status {
    Status::invalid_argument(e.0)
}

/// [`wire::value_from_proto`] with its error as `INVALID_ARGUMENT`.
pub fn value_from_proto(v: &pb::Value, data_type: DataType, column: &str) -> Result<Value, Status> {
    wire::value_from_proto(v, data_type, column).map_err(invalid)
}

/// [`wire::column_from_proto`] with its error as `INVALID_ARGUMENT`.
pub fn column_from_proto(c: &pb::Column) -> Result<ColumnSchema, Status> {
    wire::column_from_proto(c).map_err(invalid)
}

/// A storage error as a status whose code says whose fault it is.
pub fn storage_status(e: &StorageError) -> Status {
    let message = e.to_string();
    match e {
        StorageError::Schema(_)
        | StorageError::InvalidInput(_)
        | StorageError::SnapshotTooOld { .. }
        | StorageError::SnapshotInFuture { .. } => Status::invalid_argument(message),
        StorageError::UndefinedTable(_)
        | StorageError::UndefinedNamespace(_)
        | StorageError::NotFound(_) => Status::not_found(message),
        StorageError::DuplicateTable(_)
        | StorageError::DuplicateNamespace(_)
        | StorageError::AlreadyExists(_) => Status::already_exists(message),
        // UNAVAILABLE is gRPC's "retry later" code.
        StorageError::InUse(_) | StorageError::Poisoned(_) | StorageError::Busy(_) => {
            Status::unavailable(message)
        }
        StorageError::Io(_)
        | StorageError::Sled(_)
        | StorageError::Parquet(_)
        | StorageError::Arrow(_)
        | StorageError::Corrupt(_) => Status::internal(message),
    }
}

/// The table a request names (`public` when the namespace is empty).
pub fn table_name(name: Option<&pb::TableName>) -> Result<TableName, Status> {
    let Some(n) = name.filter(|n| !n.name.is_empty()) else {
        return Err(Status::invalid_argument("the request names no table"));
    };
    let namespace = if n.namespace.is_empty() {
        nyala_storage::db::DEFAULT_NAMESPACE.to_string()
    } else {
        n.namespace.clone()
    };
    Ok(TableName::new(namespace, n.name.clone()))
}

/// `name` on the wire.
pub fn table_name_to_proto(name: &TableName) -> pb::TableName {
    pb::TableName {
        namespace: name.namespace.clone(),
        name: name.name.clone(),
    }
}

/// The range column's type in `schema` (for converting bounds).
fn range_type(schema: &Schema, column: &str) -> Result<DataType, Status> {
    let i = schema
        .index_of(column)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(schema.columns()[i].data_type)
}

/// Wire range bounds as storage bounds of `column`'s type.
pub fn bounds_from_proto(
    b: &pb::RangeBounds,
    schema: &Schema,
    column: &str,
) -> Result<RangeBounds, Status> {
    let t = range_type(schema, column)?;
    let side = |v: &Option<pb::Value>| {
        v.as_ref()
            .map(|v| value_from_proto(v, t, column))
            .transpose()
    };
    Ok(RangeBounds {
        lower: side(&b.lower)?,
        upper: side(&b.upper)?,
    })
}

fn bounds_to_proto(b: &RangeBounds, t: DataType) -> pb::RangeBounds {
    pb::RangeBounds {
        lower: b.lower.as_ref().map(|v| value_to_proto(v, t)),
        upper: b.upper.as_ref().map(|v| value_to_proto(v, t)),
    }
}

/// The partitioning a `CreateTable` asks for; without one, the SQL default (hash on the
/// first key column, one bucket per core) so both front ends make the same tables.
pub fn partitioning_from_proto(
    p: Option<&pb::Partitioning>,
    schema: &Schema,
) -> Result<PartitionSpec, Status> {
    let Some(p) = p else {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as u32;
        let first = &schema.columns()[schema.key_indices()[0]].name;
        return Ok(PartitionSpec::hash([first.clone()], cores));
    };
    let mut spec = if p.hash_columns.is_empty() {
        if p.hash_buckets > 1 {
            return Err(Status::invalid_argument(
                "hash_buckets is set but hash_columns is empty",
            ));
        }
        PartitionSpec::default()
    } else {
        PartitionSpec::hash(p.hash_columns.clone(), p.hash_buckets.max(1))
    };
    if !p.range_column.is_empty() {
        let ranges = p
            .ranges
            .iter()
            .map(|b| bounds_from_proto(b, schema, &p.range_column))
            .collect::<Result<_, _>>()?;
        spec = spec.with_range(p.range_column.clone(), ranges);
    } else if !p.ranges.is_empty() {
        return Err(Status::invalid_argument(
            "ranges are given but range_column is empty",
        ));
    }
    Ok(spec)
}

/// A table's definition and tablets on the wire.
pub fn table_schema_to_proto(info: &TableInfo) -> pb::TableSchema {
    let schema = &info.schema;
    let p = &info.partitioning;
    let rt = p
        .range
        .as_ref()
        .and_then(|r| range_type(schema, &r.column).ok())
        .unwrap_or(DataType::Int64);
    pb::TableSchema {
        name: Some(table_name_to_proto(&info.name)),
        columns: schema.columns().iter().map(column_to_proto).collect(),
        primary_key: schema
            .key_indices()
            .iter()
            .map(|&i| schema.columns()[i].name.clone())
            .collect(),
        partitioning: Some(pb::Partitioning {
            hash_columns: p
                .hash
                .as_ref()
                .map(|h| h.columns.clone())
                .unwrap_or_default(),
            hash_buckets: p.buckets(),
            range_column: p
                .range
                .as_ref()
                .map(|r| r.column.clone())
                .unwrap_or_default(),
            ranges: p
                .range
                .as_ref()
                .map(|r| {
                    r.partitions
                        .iter()
                        .map(|b| bounds_to_proto(b, rt))
                        .collect()
                })
                .unwrap_or_default(),
        }),
        tablets: info
            .tablets
            .iter()
            .map(|t| pb::TabletStatus {
                id: t.id,
                range: Some(bounds_to_proto(&t.range, rt)),
                bucket: t.bucket,
                estimated_rows: t.stats.estimated_rows(),
                buffer_rows: t.stats.buffer_versions as u64,
                buffer_bytes: t.stats.buffer_bytes as u64,
                segments: t.stats.segments as u32,
            })
            .collect(),
    }
}

/// A wire operation code as a storage operation.
pub fn op_from_proto(code: i32) -> Result<WriteOp, Status> {
    use pb::Op;
    Ok(match Op::try_from(code) {
        Ok(Op::Insert) => WriteOp::Insert,
        Ok(Op::InsertIgnore) => WriteOp::InsertIgnore,
        Ok(Op::Upsert) => WriteOp::Upsert,
        Ok(Op::Update) => WriteOp::Update,
        Ok(Op::UpdateIgnore) => WriteOp::UpdateIgnore,
        Ok(Op::Delete) => WriteOp::Delete,
        Ok(Op::DeleteIgnore) => WriteOp::DeleteIgnore,
        Ok(Op::Unspecified) | Err(_) => {
            return Err(Status::invalid_argument(format!(
                "operation {code} is not one of INSERT (1) .. DELETE_IGNORE (7)"
            )))
        }
    })
}

/// Wire predicates as storage predicates over `schema`'s columns.
pub fn predicates_from_proto(
    preds: &[pb::Predicate],
    schema: &Schema,
) -> Result<Vec<Predicate>, Status> {
    use pb::CompareOp as C;
    preds
        .iter()
        .map(|p| {
            let i = schema
                .index_of(&p.column)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            let t = schema.columns()[i].data_type;
            let op = C::try_from(p.op).map_err(|_| {
                Status::invalid_argument(format!("unknown predicate operator {}", p.op))
            })?;
            let values = p
                .values
                .iter()
                .map(|v| value_from_proto(v, t, &p.column))
                .collect::<Result<Vec<_>, _>>()?;
            if values.iter().any(Value::is_null) {
                return Err(Status::invalid_argument(format!(
                    "predicate on \"{}\": compare with NULL through IS_NULL / IS_NOT_NULL",
                    p.column
                )));
            }
            let one = |op: CmpOp| match values.as_slice() {
                [v] => Ok(Predicate::cmp(p.column.clone(), op, v.clone())),
                _ => Err(Status::invalid_argument(format!(
                    "predicate on \"{}\": {:?} takes one value, got {}",
                    p.column,
                    op,
                    values.len()
                ))),
            };
            let none = |pred: Predicate| {
                if values.is_empty() {
                    Ok(pred)
                } else {
                    Err(Status::invalid_argument(format!(
                        "predicate on \"{}\": IS [NOT] NULL takes no values",
                        p.column
                    )))
                }
            };
            match op {
                C::Unspecified => Err(Status::invalid_argument(format!(
                    "predicate on \"{}\" has no operator",
                    p.column
                ))),
                C::Eq => one(CmpOp::Eq),
                C::Lt => one(CmpOp::Lt),
                C::Le => one(CmpOp::Le),
                C::Gt => one(CmpOp::Gt),
                C::Ge => one(CmpOp::Ge),
                C::In => Ok(Predicate::In {
                    column: p.column.clone(),
                    values,
                }),
                C::IsNull => none(Predicate::IsNull(p.column.clone())),
                C::IsNotNull => none(Predicate::IsNotNull(p.column.clone())),
            }
        })
        .collect()
}
