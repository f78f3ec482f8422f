//! SQL types (as DataFusion's planner produces them) to storage types.

use arrow_schema::DataType as ArrowType;
use datafusion::common::ScalarValue;

use nyala_common::{DataType, Value};

use crate::error::SqlError;

/// The storage type for a column DataFusion typed `t` (e.g. `TEXT` is Utf8, `TIMESTAMP` is
/// nanoseconds without zone; Nyala stores microseconds UTC).
pub(crate) fn storage_type(column: &str, t: &ArrowType) -> Result<DataType, SqlError> {
    Ok(match t {
        ArrowType::Boolean => DataType::Bool,
        ArrowType::Int8 => DataType::Int8,
        ArrowType::Int16 => DataType::Int16,
        ArrowType::Int32 => DataType::Int32,
        ArrowType::Int64 => DataType::Int64,
        ArrowType::Float32 => DataType::Float32,
        ArrowType::Float64 => DataType::Float64,
        ArrowType::Utf8 | ArrowType::LargeUtf8 | ArrowType::Utf8View => DataType::Utf8,
        ArrowType::Binary | ArrowType::LargeBinary | ArrowType::BinaryView => DataType::Binary,
        ArrowType::Timestamp(..) => DataType::Timestamp,
        ArrowType::Date32 | ArrowType::Date64 => DataType::Date,
        ArrowType::Decimal128(p, s) if *s >= 0 => DataType::decimal(*p, *s)?,
        other => {
            return Err(SqlError::Unsupported(format!(
                "column \"{column}\" has type {other}, which Nyala does not store"
            )))
        }
    })
}

/// A default value given as a constant, as a value of the column's type.
pub(crate) fn default_value(
    column: &str,
    data_type: DataType,
    v: &ScalarValue,
) -> Result<Value, SqlError> {
    let array = v.to_array()?;
    // Not the "safe" cast, which turns what does not fit (300 as TINYINT) into NULL.
    let options = arrow::compute::CastOptions {
        safe: false,
        ..Default::default()
    };
    let cast = arrow::compute::cast_with_options(&array, &data_type.to_arrow(), &options)
        .map_err(|e| SqlError::Unsupported(format!("default of column \"{column}\": {e}")))?;
    Ok(Value::from_array(&cast, 0).map_err(nyala_storage::StorageError::from)?)
}
