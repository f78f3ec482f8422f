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

/// The SQL name of a storage type, as `information_schema` and `DESCRIBE` show it
/// (PostgreSQL's spelling; `tinyint` has no PostgreSQL equivalent).
pub(crate) fn sql_type_name(t: DataType) -> String {
    match t {
        DataType::Bool => "boolean".into(),
        DataType::Int8 => "tinyint".into(),
        DataType::Int16 => "smallint".into(),
        DataType::Int32 => "integer".into(),
        DataType::Int64 => "bigint".into(),
        DataType::Float32 => "real".into(),
        DataType::Float64 => "double precision".into(),
        DataType::Utf8 => "text".into(),
        DataType::Binary => "bytea".into(),
        DataType::Timestamp => "timestamp with time zone".into(),
        DataType::Date => "date".into(),
        DataType::Decimal { precision, scale } => format!("numeric({precision},{scale})"),
    }
}

/// A column default as SQL text, as `information_schema.columns.column_default` shows it:
/// numbers and booleans bare, everything else as a quoted literal; `None` for NULL.
pub(crate) fn default_text(t: DataType, v: &Value) -> Option<String> {
    if v.is_null() {
        return None;
    }
    let array = Value::to_array("default", t, std::slice::from_ref(v)).ok()?;
    let options = arrow::util::display::FormatOptions::default()
        .with_timestamp_tz_format(Some("%Y-%m-%d %H:%M:%S%.f+00"));
    let text = arrow::util::display::ArrayFormatter::try_new(array.as_ref(), &options)
        .ok()?
        .value(0)
        .to_string();
    Some(match t {
        DataType::Bool
        | DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::Float32
        | DataType::Float64
        | DataType::Decimal { .. } => text,
        DataType::Binary => match v {
            Value::Binary(b) => {
                let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
                format!("'\\x{hex}'")
            }
            _ => text,
        },
        _ => format!("'{}'", text.replace('\'', "''")),
    })
}
