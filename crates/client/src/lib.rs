//! Rust client for Nyala's gRPC API (`nyala.v1.Nyala`, default `http://127.0.0.1:7050`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), nyala_client::ClientError> {
//! let mut client = nyala_client::Client::connect("http://127.0.0.1:7050").await?;
//! client.sql("CREATE TABLE t (id BIGINT PRIMARY KEY, v TEXT)").await?;
//! client.sql("INSERT INTO t VALUES (1, 'a')").await?;
//! let result = client.sql("SELECT * FROM t").await?; // Arrow record batches
//! # Ok(()) }
//! ```

use std::io::Cursor;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::ipc::reader::StreamReader;
use nyala_proto::v1::nyala_client::NyalaClient;
use nyala_proto::v1::{ListTablesRequest, SqlRequest};
use thiserror::Error;
use tonic::transport::Channel;

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
    /// The server's answer could not be decoded.
    #[error("decoding the result: {0}")]
    Decode(#[from] ArrowError),
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

/// A connection to a Nyala server. Cheap to clone (clones share the connection).
#[derive(Debug, Clone)]
pub struct Client {
    inner: NyalaClient<Channel>,
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
            inner: inner.max_decoding_message_size(64 << 20),
        })
    }

    /// Runs one SQL statement.
    pub async fn sql(&mut self, statement: &str) -> Result<QueryResult, ClientError> {
        let mut stream = self
            .inner
            .sql(SqlRequest {
                statement: statement.to_string(),
            })
            .await?
            .into_inner();
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.message().await? {
            bytes.extend_from_slice(&chunk.arrow_ipc);
        }
        let reader = StreamReader::try_new(Cursor::new(bytes), None)?;
        let schema = reader.schema();
        let batches = reader.collect::<Result<Vec<_>, _>>()?;
        Ok(QueryResult { schema, batches })
    }

    /// The tables of `namespace` (every namespace if `None`), as `(namespace, name)`.
    pub async fn list_tables(
        &mut self,
        namespace: Option<&str>,
    ) -> Result<Vec<(String, String)>, ClientError> {
        let r = self
            .inner
            .list_tables(ListTablesRequest {
                namespace: namespace.unwrap_or_default().to_string(),
            })
            .await?
            .into_inner();
        Ok(r.tables
            .into_iter()
            .map(|t| (t.namespace, t.name))
            .collect())
    }
}
