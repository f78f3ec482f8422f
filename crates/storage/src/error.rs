//! The storage engine's error type.

use thiserror::Error;

use nyala_common::SchemaError;

/// Why a tablet operation failed.
///
/// Variants say whose fault it is: [`StorageError::InvalidInput`] and
/// [`StorageError::Schema`] are the caller's (retrying the same request cannot help);
/// [`StorageError::Io`], [`StorageError::Sled`] and [`StorageError::Corrupt`] are the
/// machine's; [`StorageError::Poisoned`] means the tablet stopped accepting writes after a
/// durability failure and must be reopened.
#[derive(Debug, Error)]
pub enum StorageError {
    /// The request does not fit the table's schema.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// The request is malformed (sizes, lengths, limits, arguments).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A snapshot older than the retained history was requested.
    #[error("snapshot {requested} is too old: history before {horizon} has been purged")]
    SnapshotTooOld {
        /// The requested timestamp.
        requested: u64,
        /// The oldest timestamp that can still be read.
        horizon: u64,
    },
    /// A snapshot newer than the latest committed write was requested.
    #[error("snapshot {requested} is in the future: the latest committed write is {latest}")]
    SnapshotInFuture {
        /// The requested timestamp.
        requested: u64,
        /// The latest readable timestamp.
        latest: u64,
    },
    /// Creating a tablet where one already exists, or opening one that does not.
    #[error("{0}")]
    NotFound(String),
    /// Creating a tablet where one already exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// The tablet's files are held by another open handle (in this or another process).
    #[error("{0}")]
    InUse(String),
    /// No table of this name exists.
    #[error("table {0} does not exist")]
    UndefinedTable(String),
    /// A table of this name exists already.
    #[error("table {0} already exists")]
    DuplicateTable(String),
    /// No namespace (schema) of this name exists.
    #[error("schema \"{0}\" does not exist")]
    UndefinedNamespace(String),
    /// A namespace (schema) of this name exists already.
    #[error("schema \"{0}\" already exists")]
    DuplicateNamespace(String),
    /// A file operation failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The metadata store (WAL, manifest, deletion vectors) failed.
    #[error("metadata store error: {0}")]
    Sled(#[from] sled::Error),
    /// Parquet rejected a read or write.
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// Arrow rejected a computation.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    /// The write buffers are at the memory budget and flushes did not free memory in time:
    /// nothing was written; the client may retry.
    #[error("{0}")]
    Busy(String),
    /// Persisted state does not decode: a bug or a damaged disk.
    #[error("corrupt tablet state: {0}")]
    Corrupt(String),
    /// A durability failure happened earlier; the tablet accepts no more writes until reopened.
    #[error("tablet is read-only after an earlier durability failure ({0}); reopen it")]
    Poisoned(String),
}

/// Shorthand for results of this crate.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;
