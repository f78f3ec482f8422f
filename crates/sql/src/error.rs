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
    #[error("{0}")]
    DataFusion(DataFusionError),
    /// A row of the statement was refused (e.g. a duplicate key on INSERT); the statement
    /// stops there.
    #[error("{}", .0.message)]
    Row(RowError),
    /// The statement is valid SQL that Nyala does not support (yet).
    #[error("not supported: {0}")]
    Unsupported(String),
}

impl From<DataFusionError> for SqlError {
    fn from(e: DataFusionError) -> Self {
        match e {
            DataFusionError::External(inner) => match inner.downcast::<StorageError>() {
                Ok(s) => SqlError::Storage(*s),
                Err(other) => match other.downcast::<RowFailure>() {
                    Ok(r) => SqlError::Row(r.0),
                    Err(other) => SqlError::DataFusion(DataFusionError::External(other)),
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

impl From<nyala_common::SchemaError> for SqlError {
    fn from(e: nyala_common::SchemaError) -> Self {
        SqlError::Storage(e.into())
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
