//! The SQL engine's error type.

use datafusion::error::DataFusionError;
use thiserror::Error;

use nyala_storage::{RowError, StorageError};

/// Why a statement failed.
///
/// Storage errors travel through DataFusion wrapped as `DataFusionError::External`; they are
/// unwrapped here again, so callers (and the PostgreSQL front end, which maps them to SQLSTATE
/// codes) see what the storage engine said.
#[derive(Debug, Error)]
pub enum SqlError {
    /// The storage engine refused or failed the operation.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Parsing, planning or execution failed in DataFusion.
    #[error("{}", datafusion_message(.0))]
    DataFusion(DataFusionError),
    /// A row of the statement was refused (e.g. a duplicate key on INSERT); the statement
    /// stops there.
    #[error("{}", .0.message)]
    Row(RowError),
    /// A statement would change one row twice (`ON CONFLICT DO UPDATE` with repeated keys).
    #[error("{0}")]
    Cardinality(String),
    /// `ON CONFLICT` names columns that are not the primary key (PostgreSQL's 42P10).
    #[error("{0}")]
    ConflictTarget(String),
    /// The parameters given do not fit the statement (too few, or of a type that cannot be
    /// bound).
    #[error("{0}")]
    Parameter(String),
    /// A value given as text does not read as its column's type (COPY input).
    #[error("{0}")]
    InvalidText(String),
    /// The statement is valid SQL that Nyala does not support (yet).
    #[error("not supported: {0}")]
    Unsupported(String),
}

impl SqlError {
    /// The PostgreSQL SQLSTATE code for this error, for clients that branch on it (e.g. a
    /// retry on `40001`, "already exists" on `42P07`).
    pub fn sqlstate(&self) -> &'static str {
        use datafusion::common::SchemaError as DfSchema;
        use nyala_common::SchemaError as S;
        use nyala_storage::RowErrorKind;
        match self {
            SqlError::Row(r) => match r.kind {
                RowErrorKind::DuplicateKey => "23505", // unique_violation
                RowErrorKind::KeyNotFound => "02000",  // no_data
                RowErrorKind::NoPartition => "23514",  // check_violation
            },
            SqlError::Storage(e) => match e {
                StorageError::UndefinedTable(_) => "42P01",
                StorageError::DuplicateTable(_) => "42P07",
                StorageError::UndefinedNamespace(_) => "3F000",
                StorageError::DuplicateNamespace(_) => "42P06",
                StorageError::Schema(s) => match s {
                    S::UnknownColumn(_) | S::UnknownKeyColumn(_) => "42703",
                    S::DuplicateColumn(_) | S::DuplicateKeyColumn(_) => "42701",
                    S::TypeMismatch { .. } => "42804",
                    S::NoPrimaryKey | S::NullableKeyColumn(_) | S::InvalidKeyType { .. } => "42P16",
                    S::KeyColumnChange { .. } => "0A000",
                    S::InvalidDecimal { .. } | S::UnsupportedType(_) => "42804",
                    _ => "22023",
                },
                StorageError::InvalidInput(m) if m.contains("NULL") => "23502", // not_null_violation
                StorageError::InvalidInput(m) if m.contains("is not empty") => "2BP01", // dependent_objects_still_exist
                StorageError::InvalidInput(_) => "22023", // invalid_parameter_value
                StorageError::SnapshotTooOld { .. } | StorageError::SnapshotInFuture { .. } => {
                    "22023"
                }
                StorageError::InUse(_) => "55006", // object_in_use
                StorageError::Poisoned(_) => "58030", // io_error
                StorageError::Io(_) | StorageError::Sled(_) => "58030",
                StorageError::Corrupt(_) => "XX001", // data_corrupted
                StorageError::Busy(_) => "53000",    // insufficient_resources
                _ => "XX000",
            },
            SqlError::Cardinality(_) => "21000", // cardinality_violation
            SqlError::ConflictTarget(_) => "42P10", // invalid_column_reference
            SqlError::Parameter(_) => "08P01",   // protocol_violation, as PostgreSQL's Bind
            SqlError::InvalidText(_) => "22P02", // invalid_text_representation
            SqlError::Unsupported(_) => "0A000", // feature_not_supported
            SqlError::DataFusion(e) => match e.find_root() {
                DataFusionError::SQL(..) => "42601", // syntax_error
                DataFusionError::SchemaError(s, _) => match s.as_ref() {
                    DfSchema::FieldNotFound { .. } => "42703",
                    DfSchema::AmbiguousReference { .. } => "42702",
                    _ => "42P10",
                },
                DataFusionError::Plan(m) if m.contains("not found") && m.contains("table") => {
                    "42P01"
                }
                DataFusionError::Plan(_) => "42000",
                DataFusionError::NotImplemented(_) => "0A000",
                DataFusionError::ArrowError(e, _)
                    if matches!(e.as_ref(), arrow_schema::ArrowError::DivideByZero) =>
                {
                    "22012" // division_by_zero
                }
                DataFusionError::ArrowError(..) => "22000", // data_exception (casts, overflow)
                DataFusionError::ResourcesExhausted(_) => "53000",
                _ => "XX000",
            },
        }
    }
}

impl From<DataFusionError> for SqlError {
    fn from(e: DataFusionError) -> Self {
        match e {
            DataFusionError::External(inner) => match inner.downcast::<StorageError>() {
                Ok(s) => SqlError::Storage(*s),
                Err(other) => match other.downcast::<RowFailure>() {
                    Ok(r) => SqlError::Row(r.0),
                    Err(other) => match other.downcast::<SqlError>() {
                        // An error of Nyala's carried through a DataFusion stream (COPY).
                        Ok(e) => *e,
                        Err(other) => SqlError::DataFusion(DataFusionError::External(other)),
                    },
                },
            },
            DataFusionError::Context(ctx, inner) => match SqlError::from(*inner) {
                SqlError::DataFusion(d) => SqlError::DataFusion(d.context(ctx)),
                other => other,
            },
            other => SqlError::DataFusion(other),
        }
    }
}

impl From<arrow_schema::ArrowError> for SqlError {
    fn from(e: arrow_schema::ArrowError) -> Self {
        SqlError::DataFusion(e.into())
    }
}

impl From<datafusion::sql::sqlparser::parser::ParserError> for SqlError {
    fn from(e: datafusion::sql::sqlparser::parser::ParserError) -> Self {
        SqlError::DataFusion(DataFusionError::SQL(Box::new(e), None))
    }
}

impl From<nyala_common::SchemaError> for SqlError {
    fn from(e: nyala_common::SchemaError) -> Self {
        SqlError::Storage(e.into())
    }
}

/// What a DataFusion error says, without DataFusion's framing (`SQL error: ParserError("...")`,
/// `Error during planning: `, `Arrow error: Divide by zero error`): clients show the message
/// next to its SQLSTATE, which already tells the kind of failure. Context DataFusion added
/// stays in front.
fn datafusion_message(e: &DataFusionError) -> String {
    use datafusion::sql::sqlparser::parser::ParserError as P;
    if let DataFusionError::Context(ctx, inner) = e {
        return format!("{ctx}: {}", datafusion_message(inner));
    }
    match e.find_root() {
        DataFusionError::SQL(p, _) => match p.as_ref() {
            P::ParserError(m) | P::TokenizerError(m) => format!("syntax error: {m}"),
            P::RecursionLimitExceeded => "syntax error: the statement nests too deeply".into(),
        },
        DataFusionError::Plan(m) | DataFusionError::Execution(m) => m.trim().to_string(),
        DataFusionError::NotImplemented(m) => format!("not supported: {m}"),
        DataFusionError::ArrowError(a, _)
            if matches!(a.as_ref(), arrow_schema::ArrowError::DivideByZero) =>
        {
            "division by zero".into()
        }
        root => root.strip_backtrace(),
    }
}

/// Wraps a storage error for DataFusion (see [`SqlError`]).
pub(crate) fn to_df(e: StorageError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// A refused row, carried through DataFusion (see [`SqlError::Row`]).
#[derive(Debug, Error)]
#[error("{}", .0.message)]
pub(crate) struct RowFailure(pub RowError);
