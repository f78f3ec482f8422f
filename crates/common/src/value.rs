//! Single values, for point lookups and for building small batches by hand.

use std::fmt;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, Date32Array, Decimal128Array,
    Float32Array, Float64Array, Int16Array, Int32Array, Int64Array, Int8Array, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes as adt;

use crate::types::TIMESTAMP_TZ;
use crate::{DataType, SchemaError};

/// One value of a column, or NULL.
///
/// Bulk data travels as Arrow arrays; `Value` is for the places where one value at a time is
/// natural: a point lookup's key, a predicate's constant, a test's expectation.
#[derive(Clone, Debug, PartialEq, PartialOrd, serde::Serialize, serde::Deserialize)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// `BOOLEAN`.
    Bool(bool),
    /// `TINYINT`.
    Int8(i8),
    /// `SMALLINT`.
    Int16(i16),
    /// `INT`.
    Int32(i32),
    /// `BIGINT`.
    Int64(i64),
    /// `REAL`.
    Float32(f32),
    /// `DOUBLE PRECISION`.
    Float64(f64),
    /// `TEXT`.
    Utf8(String),
    /// `BYTEA`.
    Binary(Vec<u8>),
    /// `TIMESTAMP`: microseconds since the epoch, UTC.
    Timestamp(i64),
    /// `DATE`: days since the epoch.
    Date(i32),
    /// `DECIMAL`: the unscaled integer (the scale is the column's).
    Decimal(i128),
}

impl Value {
    /// A short name of the value's kind, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "NULL",
            Value::Bool(_) => "BOOLEAN",
            Value::Int8(_) => "TINYINT",
            Value::Int16(_) => "SMALLINT",
            Value::Int32(_) => "INT",
            Value::Int64(_) => "BIGINT",
            Value::Float32(_) => "REAL",
            Value::Float64(_) => "DOUBLE PRECISION",
            Value::Utf8(_) => "TEXT",
            Value::Binary(_) => "BYTEA",
            Value::Timestamp(_) => "TIMESTAMP",
            Value::Date(_) => "DATE",
            Value::Decimal(_) => "DECIMAL",
        }
    }

    /// Whether this value is NULL.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// Builds an Arrow array of `data_type` from `values`; `column` names the column in errors.
    ///
    /// Every value must be NULL or of exactly the column's type: no silent conversions, so a
    /// client that sends the wrong type learns about it.
    pub fn to_array(
        column: &str,
        data_type: DataType,
        values: &[Value],
    ) -> Result<ArrayRef, SchemaError> {
        macro_rules! build {
            ($variant:ident, $arr:ty) => {{
                let mut out = Vec::with_capacity(values.len());
                for v in values {
                    match v {
                        Value::Null => out.push(None),
                        Value::$variant(x) => out.push(Some(x.clone())),
                        other => return Err(mismatch(column, data_type, other)),
                    }
                }
                Arc::new(<$arr>::from(out)) as ArrayRef
            }};
        }
        Ok(match data_type {
            DataType::Bool => build!(Bool, BooleanArray),
            DataType::Int8 => build!(Int8, Int8Array),
            DataType::Int16 => build!(Int16, Int16Array),
            DataType::Int32 => build!(Int32, Int32Array),
            DataType::Int64 => build!(Int64, Int64Array),
            DataType::Float32 => build!(Float32, Float32Array),
            DataType::Float64 => build!(Float64, Float64Array),
            DataType::Utf8 => build!(Utf8, StringArray),
            DataType::Binary => {
                let mut out: Vec<Option<&[u8]>> = Vec::with_capacity(values.len());
                for v in values {
                    match v {
                        Value::Null => out.push(None),
                        Value::Binary(b) => out.push(Some(b)),
                        other => return Err(mismatch(column, data_type, other)),
                    }
                }
                Arc::new(BinaryArray::from(out))
            }
            DataType::Timestamp => Arc::new(
                build!(Timestamp, TimestampMicrosecondArray)
                    .as_primitive::<adt::TimestampMicrosecondType>()
                    .clone()
                    .with_timezone(TIMESTAMP_TZ),
            ),
            DataType::Date => build!(Date, Date32Array),
            DataType::Decimal { precision, scale } => {
                let arr = build!(Decimal, Decimal128Array)
                    .as_primitive::<adt::Decimal128Type>()
                    .clone()
                    .with_precision_and_scale(precision, scale)?;
                arr.validate_decimal_precision(precision).map_err(|e| {
                    SchemaError::TypeMismatch {
                        column: column.to_string(),
                        expected: data_type.to_string(),
                        got: e.to_string(),
                    }
                })?;
                Arc::new(arr)
            }
        })
    }

    /// Reads row `row` of `array` (which must hold `data_type`).
    pub fn from_array(array: &dyn Array, row: usize) -> Result<Value, SchemaError> {
        if array.is_null(row) {
            return Ok(Value::Null);
        }
        use arrow_schema::DataType as A;
        Ok(match array.data_type() {
            A::Boolean => Value::Bool(array.as_boolean().value(row)),
            A::Int8 => Value::Int8(array.as_primitive::<adt::Int8Type>().value(row)),
            A::Int16 => Value::Int16(array.as_primitive::<adt::Int16Type>().value(row)),
            A::Int32 => Value::Int32(array.as_primitive::<adt::Int32Type>().value(row)),
            A::Int64 => Value::Int64(array.as_primitive::<adt::Int64Type>().value(row)),
            A::Float32 => Value::Float32(array.as_primitive::<adt::Float32Type>().value(row)),
            A::Float64 => Value::Float64(array.as_primitive::<adt::Float64Type>().value(row)),
            A::Utf8 => Value::Utf8(array.as_string::<i32>().value(row).to_string()),
            A::Binary => Value::Binary(array.as_binary::<i32>().value(row).to_vec()),
            A::Timestamp(adt::TimeUnit::Microsecond, _) => Value::Timestamp(
                array
                    .as_primitive::<adt::TimestampMicrosecondType>()
                    .value(row),
            ),
            A::Date32 => Value::Date(array.as_primitive::<adt::Date32Type>().value(row)),
            A::Decimal128(_, _) => {
                Value::Decimal(array.as_primitive::<adt::Decimal128Type>().value(row))
            }
            other => return Err(SchemaError::UnsupportedType(other.to_string())),
        })
    }
}

fn mismatch(column: &str, expected: DataType, got: &Value) -> SchemaError {
    SchemaError::TypeMismatch {
        column: column.to_string(),
        expected: expected.to_string(),
        got: got.kind().to_string(),
    }
}

macro_rules! value_from {
    ($($t:ty => $variant:ident),* $(,)?) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Self {
                Value::$variant(v)
            }
        }
    )*};
}

// Conversions from Rust values: each Rust type maps to the one column type of its width, so a
// client's `set("speed", 61.5f32)` means exactly REAL.
value_from!(bool => Bool, i8 => Int8, i16 => Int16, i32 => Int32, i64 => Int64,
    f32 => Float32, f64 => Float64, String => Utf8, Vec<u8> => Binary);

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Utf8(v.to_string())
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("NULL"),
            Value::Bool(v) => write!(f, "{v}"),
            Value::Int8(v) => write!(f, "{v}"),
            Value::Int16(v) => write!(f, "{v}"),
            Value::Int32(v) => write!(f, "{v}"),
            Value::Int64(v) => write!(f, "{v}"),
            Value::Float32(v) => write!(f, "{v}"),
            Value::Float64(v) => write!(f, "{v}"),
            Value::Utf8(v) => write!(f, "'{v}'"),
            Value::Binary(v) => write!(f, "{v:02x?}"),
            // As PostgreSQL prints them (error messages name keys this way).
            Value::Timestamp(v) => {
                match arrow::temporal_conversions::timestamp_us_to_datetime(*v) {
                    Some(t) if t.and_utc().timestamp_subsec_micros() == 0 => {
                        write!(f, "'{}'", t.format("%Y-%m-%d %H:%M:%S"))
                    }
                    Some(t) => write!(f, "'{}'", t.format("%Y-%m-%d %H:%M:%S%.6f")),
                    None => write!(f, "timestamp {v}us"),
                }
            }
            Value::Date(v) => match arrow::temporal_conversions::date32_to_datetime(*v) {
                Some(d) => write!(f, "'{}'", d.format("%Y-%m-%d")),
                None => write!(f, "date {v}d"),
            },
            Value::Decimal(v) => write!(f, "decimal {v}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_as_postgresql_does() {
        assert_eq!(
            Value::Timestamp(1_714_557_600_000_000).to_string(),
            "'2024-05-01 10:00:00'"
        );
        assert_eq!(
            Value::Timestamp(1_714_557_600_250_000).to_string(),
            "'2024-05-01 10:00:00.250000'"
        );
        assert_eq!(Value::Date(19844).to_string(), "'2024-05-01'");
    }

    #[test]
    fn round_trip_every_type() {
        let cases = vec![
            (DataType::Bool, Value::Bool(true)),
            (DataType::Int8, Value::Int8(-3)),
            (DataType::Int16, Value::Int16(300)),
            (DataType::Int32, Value::Int32(-70000)),
            (DataType::Int64, Value::Int64(1 << 40)),
            (DataType::Float32, Value::Float32(1.5)),
            (DataType::Float64, Value::Float64(-2.25)),
            (DataType::Utf8, Value::Utf8("héllo".into())),
            (DataType::Binary, Value::Binary(vec![0, 255])),
            (DataType::Timestamp, Value::Timestamp(1_700_000_000_000_000)),
            (DataType::Date, Value::Date(19000)),
            (DataType::decimal(10, 2).unwrap(), Value::Decimal(12345)),
        ];
        for (t, v) in cases {
            let arr = Value::to_array("c", t, &[v.clone(), Value::Null]).unwrap();
            assert!(t.matches_arrow(arr.data_type()));
            assert_eq!(Value::from_array(&arr, 0).unwrap(), v);
            assert_eq!(Value::from_array(&arr, 1).unwrap(), Value::Null);
        }
    }

    #[test]
    fn decimal_beyond_precision_is_an_error() {
        let t = DataType::decimal(5, 2).unwrap();
        assert!(Value::to_array("d", t, &[Value::Decimal(99_999)]).is_ok());
        assert!(Value::to_array("d", t, &[Value::Decimal(100_000)]).is_err());
    }

    #[test]
    fn wrong_type_is_an_error() {
        let err = Value::to_array("speed", DataType::Int32, &[Value::Utf8("x".into())]);
        assert_eq!(
            err.unwrap_err().to_string(),
            "column \"speed\": expected a value of type INT, got TEXT"
        );
    }
}
