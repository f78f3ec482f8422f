//! The gRPC service `nyala.v1.Nyala`.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::ipc::writer::StreamWriter;
use futures::Stream;
use nyala_proto::v1::nyala_server::{Nyala, NyalaServer};
use nyala_proto::v1::{ListTablesRequest, ListTablesResponse, SqlRequest, SqlResponse, TableName};
use nyala_sql::{Engine, SqlError};
use nyala_storage::Database;
use tonic::{Request, Response, Status};

use crate::metrics::Metrics;

/// Largest piece of an Arrow IPC stream sent in one message (clients accept 4 MiB by default).
const CHUNK_BYTES: usize = 1 << 20;

/// Longest statement accepted, in bytes.
pub const MAX_STATEMENT_BYTES: usize = 1 << 20;

/// The service over one database.
#[derive(Debug, Clone)]
pub struct NyalaService {
    db: Arc<Database>,
    metrics: Arc<Metrics>,
}

impl NyalaService {
    /// The service over `db`, counting into `metrics`.
    pub fn new(db: Arc<Database>, metrics: Arc<Metrics>) -> Self {
        NyalaService { db, metrics }
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> NyalaServer<Self> {
        NyalaServer::new(self)
    }
}

/// A SQL error as a gRPC status: the code says what kind of failure it is, the message what
/// went wrong and its SQLSTATE.
pub fn status_of(e: &SqlError) -> Status {
    let state = e.sqlstate();
    let message = format!("{e} (SQLSTATE {state})");
    match state {
        "42P01" | "3F000" => Status::not_found(message),
        "42P07" | "42P06" => Status::already_exists(message),
        s if s.starts_with("XX") || s.starts_with("58") => Status::internal(message),
        "55006" | "53000" => Status::unavailable(message),
        _ => Status::invalid_argument(message),
    }
}

/// `batches` as one Arrow IPC stream, cut into messages.
fn ipc_chunks(batches: &[RecordBatch]) -> Result<Vec<SqlResponse>, Status> {
    let schema = batches
        .first()
        .map(|b| b.schema())
        .unwrap_or_else(|| Arc::new(arrow::datatypes::Schema::empty()));
    let mut bytes = Vec::new();
    {
        let mut w = StreamWriter::try_new(&mut bytes, &schema)
            .map_err(|e| Status::internal(format!("encoding the result: {e}")))?;
        for b in batches {
            w.write(b)
                .map_err(|e| Status::internal(format!("encoding the result: {e}")))?;
        }
        w.finish()
            .map_err(|e| Status::internal(format!("encoding the result: {e}")))?;
    }
    Ok(bytes
        .chunks(CHUNK_BYTES)
        .map(|c| SqlResponse {
            arrow_ipc: c.to_vec(),
        })
        .collect())
}

type SqlStream = Pin<Box<dyn Stream<Item = Result<SqlResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Nyala for NyalaService {
    type SqlStream = SqlStream;

    async fn sql(&self, request: Request<SqlRequest>) -> Result<Response<SqlStream>, Status> {
        let statement = request.into_inner().statement;
        Metrics::add(&self.metrics.sql_requests, 1);
        if statement.len() > MAX_STATEMENT_BYTES {
            Metrics::add(&self.metrics.sql_errors, 1);
            return Err(Status::invalid_argument(format!(
                "the statement is {} bytes; the limit is {MAX_STATEMENT_BYTES}",
                statement.len()
            )));
        }
        let started = Instant::now();
        // One session per call: statements from different clients run concurrently.
        let engine = Engine::new(self.db.clone());
        let result = engine.execute(&statement).await;
        Metrics::add(
            &self.metrics.sql_micros,
            started.elapsed().as_micros() as u64,
        );
        let batches = match result {
            Ok(b) => b,
            Err(e) => {
                Metrics::add(&self.metrics.sql_errors, 1);
                tracing::debug!(%statement, "statement failed: {e}");
                return Err(status_of(&e));
            }
        };
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        // A write statement answers one row with its `count` (a query may look alike).
        let first_word = statement
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        let is_count = matches!(
            first_word.as_str(),
            "insert" | "upsert" | "update" | "delete" | "create"
        ) && batches.first().is_some_and(|b| {
            b.num_rows() == 1 && b.num_columns() == 1 && b.schema().field(0).name() == "count"
        });
        if is_count {
            if let Some(c) = batches[0]
                .column(0)
                .as_any()
                .downcast_ref::<arrow::array::UInt64Array>()
            {
                Metrics::add(&self.metrics.rows_written, c.value(0));
            }
        } else {
            Metrics::add(&self.metrics.rows_returned, rows as u64);
        }
        let chunks = ipc_chunks(&batches)?;
        Ok(Response::new(Box::pin(futures::stream::iter(
            chunks.into_iter().map(Ok),
        ))))
    }

    async fn list_tables(
        &self,
        request: Request<ListTablesRequest>,
    ) -> Result<Response<ListTablesResponse>, Status> {
        Metrics::add(&self.metrics.list_tables_requests, 1);
        let ns = request.into_inner().namespace;
        if !ns.is_empty() && !self.db.list_namespaces().contains(&ns) {
            return Err(Status::not_found(format!("schema \"{ns}\" does not exist")));
        }
        let tables = self
            .db
            .list_tables((!ns.is_empty()).then_some(ns.as_str()))
            .into_iter()
            .map(|t| TableName {
                namespace: t.namespace,
                name: t.name,
            })
            .collect();
        Ok(Response::new(ListTablesResponse { tables }))
    }
}
