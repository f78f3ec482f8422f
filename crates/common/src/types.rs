//! Column types and their Arrow representation.

use std::fmt;
use std::sync::Arc;

use arrow_schema::{DataType as ArrowType, TimeUnit};
use serde::{Deserialize, Serialize};

use crate::SchemaError;

/// The time zone every Nyala timestamp carries: values are instants, stored as UTC microseconds.
pub const TIMESTAMP_TZ: &str = "UTC";

/// A column type.
///
/// The set is deliberately small (Kudu's): each maps to exactly one Arrow type, so data read
/// from any layer has a single, predictable representation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DataType {
    /// `BOOLEAN`.
    Bool,
    /// `TINYINT`: 8-bit signed integer.
    Int8,
    /// `SMALLINT`: 16-bit signed integer.
    Int16,
    /// `INT`: 32-bit signed integer.
    Int32,
    /// `BIGINT`: 64-bit signed integer.
    Int64,
    /// `REAL`: 32-bit float (never a key column).
    Float32,
    /// `DOUBLE PRECISION`: 64-bit float (never a key column).
    Float64,
    /// `TEXT`: UTF-8 string.
    Utf8,
    /// `BYTEA`: byte string.
    Binary,
    /// `TIMESTAMP`: an instant, microseconds since the Unix epoch, UTC.
    Timestamp,
    /// `DATE`: days since the Unix epoch.
    Date,
    /// `DECIMAL(precision, scale)`: exact number, stored as a 128-bit integer.
    Decimal {
        /// Total number of significant digits, 1..=38.
        precision: u8,
        /// Digits after the decimal point, 0..=precision.
        scale: i8,
    },
}

impl DataType {
    /// The Arrow type that holds values of this type.
    pub fn to_arrow(self) -> ArrowType {
        match self {
            DataType::Bool => ArrowType::Boolean,
            DataType::Int8 => ArrowType::Int8,
            DataType::Int16 => ArrowType::Int16,
            DataType::Int32 => ArrowType::Int32,
            DataType::Int64 => ArrowType::Int64,
            DataType::Float32 => ArrowType::Float32,
            DataType::Float64 => ArrowType::Float64,
            DataType::Utf8 => ArrowType::Utf8,
            DataType::Binary => ArrowType::Binary,
            DataType::Timestamp => {
                ArrowType::Timestamp(TimeUnit::Microsecond, Some(Arc::from(TIMESTAMP_TZ)))
            }
            DataType::Date => ArrowType::Date32,
            DataType::Decimal { precision, scale } => ArrowType::Decimal128(precision, scale),
        }
    }

    /// The Nyala type for an Arrow type, if there is one.
    ///
    /// Timestamps are accepted in microseconds with or without a time zone: a zone is only a
    /// display hint in Arrow, the stored value is the same instant.
    pub fn from_arrow(t: &ArrowType) -> Result<Self, SchemaError> {
        Ok(match t {
            ArrowType::Boolean => DataType::Bool,
            ArrowType::Int8 => DataType::Int8,
            ArrowType::Int16 => DataType::Int16,
            ArrowType::Int32 => DataType::Int32,
            ArrowType::Int64 => DataType::Int64,
            ArrowType::Float32 => DataType::Float32,
            ArrowType::Float64 => DataType::Float64,
            ArrowType::Utf8 => DataType::Utf8,
            ArrowType::Binary => DataType::Binary,
            ArrowType::Timestamp(TimeUnit::Microsecond, _) => DataType::Timestamp,
            ArrowType::Date32 => DataType::Date,
            ArrowType::Decimal128(p, s) => DataType::decimal(*p, *s)?,
            other => return Err(SchemaError::UnsupportedType(other.to_string())),
        })
    }

    /// A checked `DECIMAL(precision, scale)`.
    pub fn decimal(precision: u8, scale: i8) -> Result<Self, SchemaError> {
        if !(1..=38).contains(&precision) || scale < 0 || scale as u8 > precision {
            return Err(SchemaError::InvalidDecimal { precision, scale });
        }
        Ok(DataType::Decimal { precision, scale })
    }

    /// Whether a primary key column may have this type (floats may not: equality on them is
    /// treacherous, as Kudu also decided).
    pub fn can_be_key(self) -> bool {
        !matches!(self, DataType::Float32 | DataType::Float64)
    }

    /// Whether values of this type have variable width (and so count against the cell limit).
    pub fn is_variable_width(self) -> bool {
        matches!(self, DataType::Utf8 | DataType::Binary)
    }

    /// Whether an Arrow array of type `t` holds values of this type exactly (time zone aside).
    pub fn matches_arrow(self, t: &ArrowType) -> bool {
        match (self, t) {
            (DataType::Timestamp, ArrowType::Timestamp(TimeUnit::Microsecond, _)) => true,
            _ => self.to_arrow() == *t,
        }
    }
}

impl fmt::Display for DataType {
    /// The SQL spelling of the type.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataType::Bool => f.write_str("BOOLEAN"),
            DataType::Int8 => f.write_str("TINYINT"),
            DataType::Int16 => f.write_str("SMALLINT"),
            DataType::Int32 => f.write_str("INT"),
            DataType::Int64 => f.write_str("BIGINT"),
            DataType::Float32 => f.write_str("REAL"),
            DataType::Float64 => f.write_str("DOUBLE PRECISION"),
            DataType::Utf8 => f.write_str("TEXT"),
            DataType::Binary => f.write_str("BYTEA"),
            DataType::Timestamp => f.write_str("TIMESTAMP"),
            DataType::Date => f.write_str("DATE"),
            DataType::Decimal { precision, scale } => write!(f, "DECIMAL({precision}, {scale})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrow_round_trip() {
        let all = [
            DataType::Bool,
            DataType::Int8,
            DataType::Int16,
            DataType::Int32,
            DataType::Int64,
            DataType::Float32,
            DataType::Float64,
            DataType::Utf8,
            DataType::Binary,
            DataType::Timestamp,
            DataType::Date,
            DataType::decimal(18, 3).unwrap(),
        ];
        for t in all {
            assert_eq!(DataType::from_arrow(&t.to_arrow()).unwrap(), t);
        }
    }

    #[test]
    fn decimal_bounds() {
        assert!(DataType::decimal(0, 0).is_err());
        assert!(DataType::decimal(39, 0).is_err());
        assert!(DataType::decimal(5, 6).is_err());
        assert!(DataType::decimal(5, -1).is_err());
        assert!(DataType::decimal(38, 38).is_ok());
    }

    #[test]
    fn unsupported_arrow_type() {
        assert!(matches!(
            DataType::from_arrow(&ArrowType::UInt64),
            Err(SchemaError::UnsupportedType(_))
        ));
    }
}
