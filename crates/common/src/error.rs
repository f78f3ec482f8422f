//! Errors raised while defining or using a schema.

use thiserror::Error;

/// A schema, a value or a batch does not fit the rules of Nyala's type system.
///
/// These are always the caller's mistake: retrying the same request cannot help.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SchemaError {
    /// The schema has no columns.
    #[error("a table needs at least one column")]
    NoColumns,
    /// Two columns share a name.
    #[error("column \"{0}\" is specified more than once")]
    DuplicateColumn(String),
    /// A column name is empty or too long.
    #[error("invalid column name \"{0}\": names must be 1 to 128 bytes")]
    InvalidColumnName(String),
    /// The primary key is empty.
    #[error("a table needs a primary key")]
    NoPrimaryKey,
    /// The primary key names a column that does not exist.
    #[error("primary key column \"{0}\" does not exist")]
    UnknownKeyColumn(String),
    /// A column appears twice in the primary key.
    #[error("column \"{0}\" appears more than once in the primary key")]
    DuplicateKeyColumn(String),
    /// A key column was declared nullable.
    #[error("primary key column \"{0}\" cannot be nullable")]
    NullableKeyColumn(String),
    /// A key column has a type that cannot be a key (floating point).
    #[error("primary key column \"{column}\" cannot have type {data_type}: floating point values make poor keys")]
    InvalidKeyType {
        /// The offending column.
        column: String,
        /// Its type, as SQL names it.
        data_type: String,
    },
    /// DECIMAL precision or scale out of range.
    #[error(
        "invalid DECIMAL({precision}, {scale}): precision must be 1..=38 and scale 0..=precision"
    )]
    InvalidDecimal {
        /// Requested precision.
        precision: u8,
        /// Requested scale.
        scale: i8,
    },
    /// An Arrow type has no Nyala equivalent.
    #[error("unsupported data type {0}")]
    UnsupportedType(String),
    /// A value does not match the type of the column it is meant for.
    #[error("column \"{column}\": expected a value of type {expected}, got {got}")]
    TypeMismatch {
        /// The column.
        column: String,
        /// The column's type.
        expected: String,
        /// What was supplied.
        got: String,
    },
    /// A column name that the schema does not have.
    #[error("column \"{0}\" does not exist")]
    UnknownColumn(String),
    /// A default value does not suit its column.
    #[error("invalid default for column \"{column}\": {reason}")]
    InvalidDefault {
        /// The column.
        column: String,
        /// What is wrong.
        reason: String,
    },
    /// An attempt to drop, rename or retype a primary key column.
    #[error("column \"{column}\" is part of the primary key and cannot be {change}")]
    KeyColumnChange {
        /// The column.
        column: String,
        /// What was attempted ("dropped", "renamed").
        change: String,
    },
    /// Arrow rejected an encoding or decoding step; indicates a bug or corrupt input.
    #[error("arrow: {0}")]
    Arrow(String),
}

impl From<arrow_schema::ArrowError> for SchemaError {
    fn from(e: arrow_schema::ArrowError) -> Self {
        SchemaError::Arrow(e.to_string())
    }
}
