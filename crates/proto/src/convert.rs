//! Conversions between the wire's constants, types and columns and Nyala's
//! ([`nyala_common`]), shared by the server and the client so both read the wire alike.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
use arrow::compute::{cast_with_options, CastOptions};
use nyala_common::{ColumnSchema, DataType, Schema, SchemaError, Value};
use thiserror::Error;

use crate::v1 as pb;
use crate::v1::value::Kind;

/// Why a wire value, type or column does not convert: the message names the field at fault.
#[derive(Debug, Error)]
#[error("{0}")]
pub struct ConvertError(pub String);

type Status = ConvertError;

impl ConvertError {
    fn invalid_argument(m: impl Into<String>) -> Self {
        ConvertError(m.into())
    }
}

/// A wire constant as a value of `data_type` for `column`.
///
/// Integers fit any numeric or timestamp column they are in range for; strings are parsed as
/// the column's type (as a SQL literal would be); the rest must match exactly.
pub fn value_from_proto(v: &pb::Value, data_type: DataType, column: &str) -> Result<Value, Status> {
    let bad = |what: &str| {
        ConvertError::invalid_argument(format!(
            "column \"{column}\" is {data_type}; {what} does not fit it"
        ))
    };
    let Some(kind) = &v.kind else {
        return Err(ConvertError::invalid_argument(format!(
            "a value for column \"{column}\" is empty (set one of its fields)"
        )));
    };
    Ok(match (kind, data_type) {
        (Kind::Null(true), _) => Value::Null,
        (Kind::Null(false), _) => {
            return Err(ConvertError::invalid_argument(format!(
                "a value for column \"{column}\" has null = false (set null = true or a value)"
            )))
        }
        (Kind::Bool(b), DataType::Bool) => Value::Bool(*b),
        (Kind::Int(i), DataType::Timestamp) => Value::Timestamp(*i),
        (
            Kind::Int(i),
            DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::Float32
            | DataType::Float64
            | DataType::Decimal { .. },
        ) => cast_one(Arc::new(Int64Array::from(vec![*i])), data_type)
            .map_err(|_| bad(&format!("integer {i}")))?,
        (Kind::Float(f), DataType::Float32) if f.is_finite() && !(*f as f32).is_finite() => {
            return Err(bad(&format!("number {f} (out of REAL's range)")))
        }
        // Rounded to a decimal column's scale, as SQL does.
        (Kind::Float(f), DataType::Float32 | DataType::Float64 | DataType::Decimal { .. }) => {
            cast_one(Arc::new(Float64Array::from(vec![*f])), data_type)
                .map_err(|_| bad(&format!("number {f}")))?
        }
        (Kind::String(s), DataType::Utf8) => Value::Utf8(s.clone()),
        (Kind::String(s), DataType::Binary) => Value::Binary(s.as_bytes().to_vec()),
        (Kind::String(s) | Kind::Decimal(s), _) => {
            cast_one(Arc::new(StringArray::from(vec![s.as_str()])), data_type)
                .map_err(|e| bad(&format!("'{s}' ({e})")))?
        }
        (Kind::Binary(b), DataType::Binary) => Value::Binary(b.clone()),
        (Kind::TimestampMicros(t), DataType::Timestamp) => Value::Timestamp(*t),
        (Kind::DateDays(d), DataType::Date) => Value::Date(*d),
        (Kind::Int(i), _) => return Err(bad(&format!("integer {i}"))),
        (Kind::Bool(_), _) => return Err(bad("a boolean")),
        (Kind::Float(f), _) => return Err(bad(&format!("number {f}"))),
        (Kind::Binary(_), _) => return Err(bad("a binary value")),
        (Kind::TimestampMicros(_), _) => return Err(bad("a timestamp")),
        (Kind::DateDays(_), _) => return Err(bad("a date")),
    })
}

/// Casts a one-element array to `data_type`, refusing lossy or failed conversions.
fn cast_one(array: ArrayRef, data_type: DataType) -> Result<Value, String> {
    let opts = CastOptions {
        safe: false,
        ..Default::default()
    };
    // Parse timestamps as zoneless (UTC unless the text has an offset): arrow knows named
    // zones only with chrono-tz, and the stored instant is the same.
    let target = match data_type {
        DataType::Timestamp => {
            arrow::datatypes::DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, None)
        }
        t => t.to_arrow(),
    };
    let out = cast_with_options(&array, &target, &opts).map_err(|e| e.to_string())?;
    if out.is_null(0) {
        return Err("no value".into());
    }
    if data_type == DataType::Timestamp {
        use arrow::array::AsArray;
        return Ok(Value::Timestamp(
            out.as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                .value(0),
        ));
    }
    Value::from_array(out.as_ref(), 0).map_err(|e| e.to_string())
}

/// `v` (of `data_type`) on the wire.
pub fn value_to_proto(v: &Value, data_type: DataType) -> pb::Value {
    let kind = match v {
        Value::Null => Kind::Null(true),
        Value::Bool(b) => Kind::Bool(*b),
        Value::Int8(i) => Kind::Int(i64::from(*i)),
        Value::Int16(i) => Kind::Int(i64::from(*i)),
        Value::Int32(i) => Kind::Int(i64::from(*i)),
        Value::Int64(i) => Kind::Int(*i),
        Value::Float32(f) => Kind::Float(f64::from(*f)),
        Value::Float64(f) => Kind::Float(*f),
        Value::Utf8(s) => Kind::String(s.clone()),
        Value::Binary(b) => Kind::Binary(b.clone()),
        Value::Timestamp(t) => Kind::TimestampMicros(*t),
        Value::Date(d) => Kind::DateDays(*d),
        Value::Decimal(d) => {
            let (p, s) = match data_type {
                DataType::Decimal { precision, scale } => (precision, scale),
                _ => (38, 0),
            };
            Kind::Decimal(
                <arrow::datatypes::Decimal128Type as arrow::datatypes::DecimalType>::format_decimal(
                    *d, p, s,
                ),
            )
        }
    };
    pb::Value { kind: Some(kind) }
}

/// A wire column type (with its decimal precision and scale).
pub fn data_type_from_proto(c: &pb::Column) -> Result<DataType, Status> {
    use pb::ColumnType as T;
    let t = T::try_from(c.r#type).map_err(|_| {
        ConvertError::invalid_argument(format!(
            "column \"{}\" has unknown type number {}",
            c.name, c.r#type
        ))
    })?;
    Ok(match t {
        T::Unspecified => {
            return Err(ConvertError::invalid_argument(format!(
                "column \"{}\" has no type",
                c.name
            )))
        }
        T::Bool => DataType::Bool,
        T::Int8 => DataType::Int8,
        T::Int16 => DataType::Int16,
        T::Int32 => DataType::Int32,
        T::Int64 => DataType::Int64,
        T::Float32 => DataType::Float32,
        T::Float64 => DataType::Float64,
        T::String => DataType::Utf8,
        T::Binary => DataType::Binary,
        T::Timestamp => DataType::Timestamp,
        T::Date => DataType::Date,
        T::Decimal => {
            let precision = u8::try_from(c.precision)
                .ok()
                .filter(|p| (1..=38).contains(p));
            let scale = i8::try_from(c.scale).ok();
            match (precision, scale) {
                (Some(precision), Some(scale)) if scale >= 0 && scale as u8 <= precision => {
                    DataType::Decimal { precision, scale }
                }
                _ => {
                    return Err(ConvertError::invalid_argument(format!(
                        "column \"{}\": DECIMAL needs precision 1..=38 and scale 0..=precision, got ({}, {})",
                        c.name, c.precision, c.scale
                    )))
                }
            }
        }
    })
}

/// A wire column as a storage column.
pub fn column_from_proto(c: &pb::Column) -> Result<ColumnSchema, Status> {
    let data_type = data_type_from_proto(c)?;
    let mut col = if c.nullable {
        ColumnSchema::nullable(c.name.clone(), data_type)
    } else {
        ColumnSchema::not_null(c.name.clone(), data_type)
    };
    if let Some(d) = &c.default {
        col = col.with_default(value_from_proto(d, data_type, &c.name)?);
    }
    Ok(col)
}

/// A storage column on the wire.
pub fn column_to_proto(c: &ColumnSchema) -> pb::Column {
    use pb::ColumnType as T;
    let (t, precision, scale) = match c.data_type {
        DataType::Bool => (T::Bool, 0, 0),
        DataType::Int8 => (T::Int8, 0, 0),
        DataType::Int16 => (T::Int16, 0, 0),
        DataType::Int32 => (T::Int32, 0, 0),
        DataType::Int64 => (T::Int64, 0, 0),
        DataType::Float32 => (T::Float32, 0, 0),
        DataType::Float64 => (T::Float64, 0, 0),
        DataType::Utf8 => (T::String, 0, 0),
        DataType::Binary => (T::Binary, 0, 0),
        DataType::Timestamp => (T::Timestamp, 0, 0),
        DataType::Date => (T::Date, 0, 0),
        DataType::Decimal { precision, scale } => {
            (T::Decimal, u32::from(precision), i32::from(scale))
        }
    };
    pb::Column {
        name: c.name.clone(),
        r#type: t as i32,
        nullable: c.nullable,
        precision,
        scale,
        default: c.default.as_ref().map(|v| value_to_proto(v, c.data_type)),
    }
}

/// A wire schema (columns and key column names) as a [`Schema`].
pub fn schema_from_proto(
    columns: &[pb::Column],
    primary_key: &[String],
) -> Result<Schema, ConvertError> {
    let columns = columns
        .iter()
        .map(column_from_proto)
        .collect::<Result<Vec<_>, _>>()?;
    let key: Vec<&str> = primary_key.iter().map(String::as_str).collect();
    Schema::new(columns, &key).map_err(|e: SchemaError| ConvertError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nyala_common::{DataType, Value};

    fn v(kind: Kind) -> pb::Value {
        pb::Value { kind: Some(kind) }
    }

    #[test]
    fn values_convert_to_the_column_type_or_are_refused() {
        assert_eq!(
            value_from_proto(&v(Kind::Int(7)), DataType::Int16, "c").unwrap(),
            Value::Int16(7)
        );
        assert!(value_from_proto(&v(Kind::Int(70_000)), DataType::Int16, "c").is_err());
        assert!(value_from_proto(&v(Kind::Int(1)), DataType::Bool, "c").is_err());
        assert!(value_from_proto(&v(Kind::Int(1)), DataType::Utf8, "c").is_err());
        assert!(value_from_proto(&v(Kind::Float(1e300)), DataType::Float32, "c").is_err());
        assert!(value_from_proto(&v(Kind::Float(1.5)), DataType::Int32, "c").is_err());
        assert_eq!(
            value_from_proto(&v(Kind::Float(1.5)), DataType::Float32, "c").unwrap(),
            Value::Float32(1.5)
        );
        assert_eq!(
            value_from_proto(
                &v(Kind::String("2026-11-15 01:00:00".into())),
                DataType::Timestamp,
                "c"
            )
            .unwrap(),
            Value::Timestamp(1_794_704_400_000_000)
        );
        assert!(value_from_proto(&v(Kind::String("x".into())), DataType::Int32, "c").is_err());
        assert_eq!(
            value_from_proto(
                &v(Kind::Decimal("12.50".into())),
                DataType::Decimal {
                    precision: 10,
                    scale: 2
                },
                "c"
            )
            .unwrap(),
            Value::Decimal(1250)
        );
        assert!(value_from_proto(&pb::Value { kind: None }, DataType::Int32, "c").is_err());
        assert_eq!(
            value_from_proto(&v(Kind::Null(true)), DataType::Int32, "c").unwrap(),
            Value::Null
        );
        let err = value_from_proto(&v(Kind::Bool(true)), DataType::Int32, "speed").unwrap_err();
        assert!(err.0.contains("\"speed\""), "{}", err.0);
    }
}
