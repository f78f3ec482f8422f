//! Rust client for Nyala's gRPC API (`nyala.v1.Nyala`, default `http://127.0.0.1:7050`),
//! modelled on Kudu's client.
//!
//! - [`Client`]: a connection; SQL, the catalog, and [`Client::table`] for a table's handle.
//! - [`Table`]: a table's schema, row operations ([`Table::insert`], [`Table::upsert`], ...),
//!   point lookups ([`Table::get`]), scans ([`Table::scan`]) and columnar bulk writes
//!   ([`Table::write_batch`]).
//! - [`Session`]: buffers row operations and sends them in batches, with Kudu's flush modes
//!   ([`FlushMode`]); failed rows are collected as [`RowError`]s.
//!
//! ```no_run
//! use futures::TryStreamExt;
//! use nyala_client::{Client, FlushMode, Value};
//!
//! # async fn demo() -> Result<(), nyala_client::ClientError> {
//! let client = Client::connect("http://127.0.0.1:7050").await?;
//! client.sql("CREATE TABLE t (id BIGINT PRIMARY KEY, v TEXT)").await?;
//! let table = client.table("t").await?;
//! let mut session = client.session(FlushMode::AutoFlushBackground);
//! for id in 0..10_000i64 {
//!     let mut row = table.upsert();
//!     row.set("id", id)?.set("v", format!("row {id}"))?;
//!     session.apply(row).await?;
//! }
//! session.flush().await?;
//! assert!(session.take_errors().is_empty());
//! let row = table.get(&[Value::Int64(42)]).await?; // Some(one-row RecordBatch)
//! let batches: Vec<_> = table.scan().limit(100).execute().await?.try_collect().await?;
//! # Ok(()) }
//! ```

mod scan;
mod session;
mod table;

use std::io::Cursor;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::ipc::reader::StreamReader;
use nyala_proto::v1 as pb;
use nyala_proto::v1::nyala_client::NyalaClient;
use thiserror::Error;
use tonic::transport::Channel;

pub use nyala_common::{ColumnSchema, DataType, Schema, Value};
pub use nyala_proto::v1::Op;
pub use scan::{Scan, ScanStream};
pub use session::{FlushMode, RowError, Session};
pub use table::{Operation, Predicate, Table, WriteResult};
pub use tonic::Code;

/// Largest message the client accepts or sends (the server's default limit).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Why a call failed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// No connection to the server.
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// The server's address.
        url: String,
        /// The transport error.
        source: tonic::transport::Error,
    },
    /// The server answered with an error (the message carries the SQLSTATE for SQL).
    #[error("{}", .0.message())]
    Status(#[from] tonic::Status),
    /// The server's answer could not be decoded, or a batch could not be encoded.
    #[error("Arrow data: {0}")]
    Arrow(#[from] ArrowError),
    /// A request was refused before it was sent: wrong column, wrong type, bad argument.
    #[error("{0}")]
    InvalidArgument(String),
    /// A [`FlushMode::Manual`] session's buffer is full: flush it first.
    #[error("the session buffer holds {0} operations, its limit; call flush()")]
    BufferFull(usize),
    /// In [`FlushMode::AutoFlushSync`], the row was refused (duplicate key, missing key, ...).
    #[error("{0}")]
    Row(RowError),
    /// A session's batch failed as a whole (server unreachable, table dropped, ...): these
    /// operations were not applied (the ones before them were), in order, ready to retry.
    #[error("{} operations not applied: {source}", ops.len())]
    NotApplied {
        /// Why the batch failed.
        source: Box<ClientError>,
        /// The operations not applied.
        ops: Vec<Operation>,
    },
}

impl ClientError {
    /// The gRPC status code, when the server refused the call.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ClientError::Status(s) => Some(s.code()),
            _ => None,
        }
    }
}

/// A statement's result: its schema (empty for DDL) and rows.
#[derive(Debug, Clone)]
pub struct QueryResult {
    /// Column names and types.
    pub schema: SchemaRef,
    /// The rows, in Arrow batches.
    pub batches: Vec<RecordBatch>,
}

impl QueryResult {
    /// Number of rows.
    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }
}

/// A connection to a Nyala server. Cheap to clone (clones share the connection, which
/// multiplexes concurrent calls).
#[derive(Debug, Clone)]
pub struct Client {
    inner: NyalaClient<Channel>,
}

/// `namespace.name` or `name` (in `public`) as the wire's table name.
pub(crate) fn parse_table_name(name: &str) -> pb::TableName {
    match name.split_once('.') {
        Some((ns, n)) => pb::TableName {
            namespace: ns.to_string(),
            name: n.to_string(),
        },
        None => pb::TableName {
            namespace: String::new(),
            name: name.to_string(),
        },
    }
}

/// Decodes one complete Arrow IPC stream.
pub(crate) fn decode_ipc(bytes: Vec<u8>) -> Result<(SchemaRef, Vec<RecordBatch>), ClientError> {
    let reader = StreamReader::try_new(Cursor::new(bytes), None)?;
    let schema = reader.schema();
    let batches = reader.collect::<Result<Vec<_>, _>>()?;
    Ok((schema, batches))
}

impl Client {
    /// Connects to `url` (e.g. `http://127.0.0.1:7050`).
    pub async fn connect(url: &str) -> Result<Self, ClientError> {
        let inner = NyalaClient::connect(url.to_string())
            .await
            .map_err(|source| ClientError::Connect {
                url: url.to_string(),
                source,
            })?;
        Ok(Client {
            inner: inner
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        })
    }

    pub(crate) fn rpc(&self) -> NyalaClient<Channel> {
        self.inner.clone()
    }

    /// Runs one SQL statement.
    pub async fn sql(&self, statement: &str) -> Result<QueryResult, ClientError> {
        let mut stream = self
            .rpc()
            .sql(pb::SqlRequest {
                statement: statement.to_string(),
            })
            .await?
            .into_inner();
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.message().await? {
            bytes.extend_from_slice(&chunk.arrow_ipc);
        }
        let (schema, batches) = decode_ipc(bytes)?;
        Ok(QueryResult { schema, batches })
    }

    /// The tables of `namespace` (every namespace if `None`), as `(namespace, name)`.
    pub async fn list_tables(
        &self,
        namespace: Option<&str>,
    ) -> Result<Vec<(String, String)>, ClientError> {
        let r = self
            .rpc()
            .list_tables(pb::ListTablesRequest {
                namespace: namespace.unwrap_or_default().to_string(),
            })
            .await?
            .into_inner();
        Ok(r.tables
            .into_iter()
            .map(|t| (t.namespace, t.name))
            .collect())
    }

    /// A handle on table `name` (`namespace.name`, or `name` in `public`), with its schema as
    /// of now (after an `ALTER TABLE`, ask again).
    pub async fn table(&self, name: &str) -> Result<Table, ClientError> {
        let r = self
            .rpc()
            .get_table_schema(pb::GetTableSchemaRequest {
                table: Some(parse_table_name(name)),
            })
            .await?
            .into_inner();
        Table::from_proto(self.clone(), r)
    }

    /// Creates table `name` with `schema` (`partitioning: None` is the server's default) and
    /// returns its handle.
    pub async fn create_table(
        &self,
        name: &str,
        schema: &Schema,
        partitioning: Option<pb::Partitioning>,
        if_not_exists: bool,
    ) -> Result<Table, ClientError> {
        let columns = schema
            .columns()
            .iter()
            .map(nyala_proto::convert::column_to_proto)
            .collect();
        let primary_key = schema
            .key_indices()
            .iter()
            .map(|&i| schema.columns()[i].name.clone())
            .collect();
        let r = self
            .rpc()
            .create_table(pb::CreateTableRequest {
                table: Some(parse_table_name(name)),
                columns,
                primary_key,
                partitioning,
                if_not_exists,
            })
            .await?
            .into_inner();
        Table::from_proto(self.clone(), r)
    }

    /// Drops table `name`; with `if_exists`, a missing table is not an error.
    pub async fn drop_table(&self, name: &str, if_exists: bool) -> Result<(), ClientError> {
        self.rpc()
            .drop_table(pb::DropTableRequest {
                table: Some(parse_table_name(name)),
                if_exists,
            })
            .await?;
        Ok(())
    }

    /// A new session for row operations.
    pub fn session(&self, mode: FlushMode) -> Session {
        Session::new(self.clone(), mode)
    }
}
