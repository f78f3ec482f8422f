//! The gRPC service `nyala.v1.Nyala`.
//!
//! Every handler checks its request completely before touching data (a malformed request is
//! `INVALID_ARGUMENT`, an oversized one `RESOURCE_EXHAUSTED`), runs storage work that may
//! block on a blocking thread, and answers rows in Arrow IPC. Scans stream: batches are
//! produced while the client reads, the producer stops when the client goes away or the
//! call's deadline passes.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use futures::Stream;
use nyala_proto::v1 as pb;
use nyala_proto::v1::nyala_server::{Nyala, NyalaServer};
use nyala_sql::{Engine, SqlError};
use nyala_storage::{
    Database, IfExists, RowErrorKind, ScanRequest, Schema, SchemaChange, Table, TableName,
    WriteBatch, WriteOutcome,
};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use crate::convert::{self, storage_status};
use crate::ipc::{self, IpcEncoder, CHUNK_BYTES};
use crate::metrics::{Method, Metrics};

/// Longest statement accepted, in bytes.
pub const MAX_STATEMENT_BYTES: usize = 1 << 20;

/// Request limits. Going over one is `RESOURCE_EXHAUSTED` with a message naming the limit.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest request message, in bytes (a `WriteStream` may carry any number of them).
    pub max_message_bytes: usize,
    /// Most rows in one record batch of a write.
    pub max_write_rows: usize,
    /// Most keys in one `Get`.
    pub max_get_keys: usize,
    /// Most rows per batch of a scan.
    pub max_scan_batch_rows: usize,
    /// Most per-row errors listed in a write response (all are counted).
    pub max_row_errors: usize,
    /// Most scans streaming at once (each holds a blocking thread while it runs).
    pub max_concurrent_scans: usize,
    /// A scan whose client reads nothing for this long is stopped.
    pub scan_idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 64 << 20,
            max_write_rows: 1_000_000,
            max_get_keys: 10_000,
            max_scan_batch_rows: 1 << 16,
            max_row_errors: 1_000,
            max_concurrent_scans: 128,
            scan_idle_timeout: Duration::from_secs(60),
        }
    }
}

/// SQL sessions kept for reuse: setting one up (DataFusion's function registry, the catalog)
/// costs more than a point lookup, and a `Sql` call needs a session only while it runs.
#[derive(Debug, Default)]
struct EnginePool {
    idle: parking_lot::Mutex<Vec<Engine>>,
}

/// The first word of a statement, after whitespace and comments.
fn first_word(statement: &str) -> &str {
    let mut rest = statement;
    loop {
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix("--") {
            rest = r.split_once('\n').map_or("", |(_, after)| after);
        } else if let Some(r) = rest.strip_prefix("/*") {
            rest = r.split_once("*/").map_or("", |(_, after)| after);
        } else {
            break;
        }
    }
    let end = rest
        .find(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .unwrap_or(rest.len());
    &rest[..end]
}

/// Most idle sessions kept.
const MAX_IDLE_ENGINES: usize = 64;

impl EnginePool {
    fn take(&self, db: &Arc<Database>) -> Engine {
        self.idle
            .lock()
            .pop()
            .unwrap_or_else(|| Engine::new(db.clone()))
    }

    /// Returns a session after a statement. One that ran `SET`/`RESET` changed its settings
    /// and is dropped: every call starts from the defaults.
    fn give_back(&self, engine: Engine, statement: &str) {
        let first = first_word(statement).to_ascii_lowercase();
        if first == "set" || first == "reset" {
            return;
        }
        let mut idle = self.idle.lock();
        if idle.len() < MAX_IDLE_ENGINES {
            idle.push(engine);
        }
    }
}

/// The service over one database.
#[derive(Debug, Clone)]
pub struct NyalaService {
    db: Arc<Database>,
    metrics: Arc<Metrics>,
    limits: Limits,
    engines: Arc<EnginePool>,
}

impl NyalaService {
    /// The service over `db`, counting into `metrics`.
    pub fn new(db: Arc<Database>, metrics: Arc<Metrics>, limits: Limits) -> Self {
        NyalaService {
            db,
            metrics,
            limits,
            engines: Arc::default(),
        }
    }

    /// The tonic server for this service, with its message size limits.
    pub fn into_server(self) -> NyalaServer<Self> {
        let max = self.limits.max_message_bytes;
        NyalaServer::new(self)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max)
    }

    fn table(&self, name: Option<&pb::TableName>) -> Result<Table, Status> {
        let name = convert::table_name(name)?;
        self.db.table(&name).map_err(|e| storage_status(&e))
    }

    /// Runs `f` and records the call under `method`.
    async fn timed<T>(
        &self,
        method: Method,
        f: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let started = Instant::now();
        let r = f.await;
        self.metrics.record(method, started, r.is_ok());
        r
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

/// Runs blocking storage work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("request task failed: {e}")))?
}

/// The call's deadline from its `grpc-timeout` header, if the client set one.
fn deadline_of(metadata: &MetadataMap) -> Option<Instant> {
    let v = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (n, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = n.parse().ok()?;
    let d = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    Instant::now().checked_add(d)
}

/// A request's `if_[not_]exists` flag as the database's setting.
fn if_exists(skip: bool) -> IfExists {
    if skip {
        IfExists::Skip
    } else {
        IfExists::Error
    }
}

fn too_many(what: &str, got: usize, limit: usize) -> Status {
    Status::resource_exhausted(format!("{got} {what}; the limit is {limit}"))
}

/// Sums write outcomes across the batches of a request or stream.
struct WriteTotals {
    response: pb::WriteResponse,
    /// Rows of the request or stream seen so far (the next batch's first row index).
    rows: u64,
    max_errors: usize,
}

impl WriteTotals {
    fn new(max_errors: usize) -> Self {
        WriteTotals {
            response: pb::WriteResponse::default(),
            rows: 0,
            max_errors,
        }
    }

    fn add(&mut self, o: WriteOutcome, rows: usize) {
        let r = &mut self.response;
        r.applied += o.applied as u64;
        r.ignored += o.ignored as u64;
        r.failed += o.errors.len() as u64;
        r.timestamp = r.timestamp.max(o.timestamp);
        for e in o.errors {
            if r.errors.len() >= self.max_errors {
                break;
            }
            let code = match e.kind {
                RowErrorKind::DuplicateKey => pb::RowErrorCode::DuplicateKey,
                RowErrorKind::KeyNotFound => pb::RowErrorCode::KeyNotFound,
                RowErrorKind::NoPartition => pb::RowErrorCode::NoPartition,
            };
            r.errors.push(pb::RowError {
                row: self.rows + e.row as u64,
                code: code as i32,
                message: e.message,
            });
        }
        self.rows += rows as u64;
    }
}

/// Applies one write request to `table`, adding its outcome to `totals`.
async fn apply_write(
    table: &Table,
    req: &pb::WriteRequest,
    limits: &Limits,
    totals: &mut WriteTotals,
) -> Result<(), Status> {
    let (_, batches) = ipc::decode(&req.arrow_ipc)?;
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let per_row = if req.ops.is_empty() {
        None
    } else {
        if req.ops.len() != rows {
            return Err(Status::invalid_argument(format!(
                "ops has {} entries for {rows} rows",
                req.ops.len()
            )));
        }
        Some(
            req.ops
                .iter()
                .map(|&c| convert::op_from_proto(i32::from(c)))
                .collect::<Result<Vec<_>, _>>()?,
        )
    };
    let uniform = match per_row {
        Some(_) => None,
        None => Some(convert::op_from_proto(req.op)?),
    };
    let mut offset = 0;
    for batch in batches {
        let n = batch.num_rows();
        if n > limits.max_write_rows {
            return Err(too_many(
                "rows in one write batch",
                n,
                limits.max_write_rows,
            ));
        }
        let wb = match (&per_row, uniform) {
            (Some(ops), _) => WriteBatch::new(batch, ops[offset..offset + n].to_vec())
                .map_err(|e| storage_status(&e))?,
            (None, Some(op)) => WriteBatch::uniform(op, batch),
            (None, None) => unreachable!("one of the two is set"),
        };
        offset += n;
        let t = table.clone();
        let outcome = blocking(move || t.write(&wb).map_err(|e| storage_status(&e))).await?;
        totals.add(outcome, n);
    }
    Ok(())
}

type ByteStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Produces a scan's IPC stream into `tx` until the scan ends, the client goes away (the
/// receiver is dropped) or the deadline passes.
fn produce_scan(
    mut scan: nyala_storage::TableScan,
    tx: tokio::sync::mpsc::Sender<Result<pb::ScanResponse, Status>>,
    deadline: Option<Instant>,
    idle_timeout: Duration,
    metrics: &Metrics,
) -> Result<(), Status> {
    let snapshot = scan.snapshot();
    let mut enc = IpcEncoder::new(&scan.schema().clone())?;
    let runtime = tokio::runtime::Handle::current();
    // Waits while the client is not reading, but not past the deadline or the idle timeout.
    let send = |bytes: Vec<u8>, first: bool| -> Result<(), Status> {
        for (i, chunk) in bytes.chunks(CHUNK_BYTES).enumerate() {
            let msg = pb::ScanResponse {
                arrow_ipc: chunk.to_vec(),
                snapshot_timestamp: if first && i == 0 { snapshot } else { 0 },
            };
            let idle = Instant::now() + idle_timeout;
            let until = deadline.map_or(idle, |d| d.min(idle));
            let sent = runtime.block_on(tokio::time::timeout_at(until.into(), tx.send(Ok(msg))));
            match sent {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(Status::cancelled("the client went away")),
                Err(_) if deadline.is_some_and(|d| d <= until) => {
                    return Err(Status::deadline_exceeded(
                        "the scan's deadline passed before it finished",
                    ))
                }
                Err(_) => {
                    return Err(Status::cancelled(format!(
                        "the client read nothing for {idle_timeout:?}"
                    )))
                }
            }
        }
        Ok(())
    };
    send(enc.take(), true)?;
    for batch in scan.by_ref() {
        if deadline.is_some_and(|d| Instant::now() > d) {
            return Err(Status::deadline_exceeded(
                "the scan's deadline passed before it finished",
            ));
        }
        let batch = batch.map_err(|e| storage_status(&e))?;
        Metrics::add(&metrics.rows_returned, batch.num_rows() as u64);
        enc.write(&batch)?;
        send(enc.take(), false)?;
    }
    enc.finish()?;
    send(enc.take(), false)
}

/// Counts a scan as active while it lives.
struct ActiveScan(Arc<Metrics>);

impl ActiveScan {
    fn new(m: Arc<Metrics>) -> Self {
        Metrics::add(&m.active_scans, 1);
        ActiveScan(m)
    }
}

impl Drop for ActiveScan {
    fn drop(&mut self) {
        self.0
            .active_scans
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

#[tonic::async_trait]
impl Nyala for NyalaService {
    type SqlStream = ByteStream<pb::SqlResponse>;
    type ScanStream = ByteStream<pb::ScanResponse>;

    async fn sql(
        &self,
        request: Request<pb::SqlRequest>,
    ) -> Result<Response<Self::SqlStream>, Status> {
        let statement = request.into_inner().statement;
        Metrics::add(&self.metrics.sql_requests, 1);
        if statement.len() > MAX_STATEMENT_BYTES {
            Metrics::add(&self.metrics.sql_errors, 1);
            return Err(too_many(
                "bytes in the statement",
                statement.len(),
                MAX_STATEMENT_BYTES,
            ));
        }
        let started = Instant::now();
        // One session per call (from the pool): statements from different clients run
        // concurrently, each at its own snapshot.
        let engine = self.engines.take(&self.db);
        let result = engine.execute(&statement).await;
        self.engines.give_back(engine, &statement);
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
        let schema = batches
            .first()
            .map(|b| b.schema())
            .unwrap_or_else(|| Arc::new(arrow::datatypes::Schema::empty()));
        let bytes = ipc::encode(&schema, &batches)?;
        let chunks: Vec<_> = bytes
            .chunks(CHUNK_BYTES)
            .map(|c| {
                Ok(pb::SqlResponse {
                    arrow_ipc: c.to_vec(),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }

    async fn list_tables(
        &self,
        request: Request<pb::ListTablesRequest>,
    ) -> Result<Response<pb::ListTablesResponse>, Status> {
        Metrics::add(&self.metrics.list_tables_requests, 1);
        let ns = request.into_inner().namespace;
        if !ns.is_empty() && !self.db.list_namespaces().contains(&ns) {
            return Err(Status::not_found(format!("schema \"{ns}\" does not exist")));
        }
        let tables = self
            .db
            .list_tables((!ns.is_empty()).then_some(ns.as_str()))
            .iter()
            .map(convert::table_name_to_proto)
            .collect();
        Ok(Response::new(pb::ListTablesResponse { tables }))
    }

    async fn get_table_schema(
        &self,
        request: Request<pb::GetTableSchemaRequest>,
    ) -> Result<Response<pb::TableSchema>, Status> {
        self.timed(Method::Admin, async {
            let table = self.table(request.get_ref().table.as_ref())?;
            Ok(Response::new(convert::table_schema_to_proto(
                &table.describe(),
            )))
        })
        .await
    }

    async fn create_table(
        &self,
        request: Request<pb::CreateTableRequest>,
    ) -> Result<Response<pb::TableSchema>, Status> {
        self.timed(Method::Admin, async {
            let req = request.into_inner();
            let name = convert::table_name(req.table.as_ref())?;
            let columns = req
                .columns
                .iter()
                .map(convert::column_from_proto)
                .collect::<Result<Vec<_>, _>>()?;
            if req.primary_key.is_empty() {
                return Err(Status::invalid_argument(
                    "a table needs a primary key (primary_key names its columns)",
                ));
            }
            let key: Vec<&str> = req.primary_key.iter().map(String::as_str).collect();
            let schema =
                Schema::new(columns, &key).map_err(|e| Status::invalid_argument(e.to_string()))?;
            let spec = convert::partitioning_from_proto(req.partitioning.as_ref(), &schema)?;
            let if_exists = if_exists(req.if_not_exists);
            let db = self.db.clone();
            let table = blocking(move || {
                db.create_table(&name, &schema, &spec, if_exists)
                    .map_err(|e| storage_status(&e))
            })
            .await?;
            Ok(Response::new(convert::table_schema_to_proto(
                &table.describe(),
            )))
        })
        .await
    }

    async fn drop_table(
        &self,
        request: Request<pb::DropTableRequest>,
    ) -> Result<Response<pb::DropTableResponse>, Status> {
        self.timed(Method::Admin, async {
            let req = request.into_inner();
            let name = convert::table_name(req.table.as_ref())?;
            let if_exists = if_exists(req.if_exists);
            let db = self.db.clone();
            blocking(move || {
                db.drop_table(&name, if_exists)
                    .map_err(|e| storage_status(&e))
            })
            .await?;
            Ok(Response::new(pb::DropTableResponse {}))
        })
        .await
    }

    async fn alter_table(
        &self,
        request: Request<pb::AlterTableRequest>,
    ) -> Result<Response<pb::TableSchema>, Status> {
        use pb::alter_table_request::Change;
        self.timed(Method::Admin, async {
            let req = request.into_inner();
            let name = convert::table_name(req.table.as_ref())?;
            let schema = self
                .db
                .table(&name)
                .map_err(|e| storage_status(&e))?
                .schema();
            let range_column = self
                .db
                .describe(&name)
                .map_err(|e| storage_status(&e))?
                .partitioning
                .range
                .map(|r| r.column);
            let db = self.db.clone();
            let Some(change) = req.change else {
                return Err(Status::invalid_argument("the request names no change"));
            };
            let no_range =
                || Status::invalid_argument(format!("table {name} has no range partitioning"));
            let mut new_name = name.clone();
            let op: Box<dyn FnOnce() -> nyala_storage::Result<()> + Send> = match change {
                Change::AddColumn(c) => {
                    let c = convert::column_from_proto(&c)?;
                    let n = name.clone();
                    Box::new(move || db.alter_table(&n, &SchemaChange::AddColumn(c)))
                }
                Change::DropColumn(c) => {
                    let n = name.clone();
                    Box::new(move || db.alter_table(&n, &SchemaChange::DropColumn(c)))
                }
                Change::RenameColumn(r) => {
                    let n = name.clone();
                    Box::new(move || {
                        db.alter_table(
                            &n,
                            &SchemaChange::RenameColumn {
                                from: r.from,
                                to: r.to,
                            },
                        )
                    })
                }
                Change::RenameTable(to) => {
                    new_name = TableName::new(name.namespace.clone(), to);
                    let (from, to) = (name.clone(), new_name.clone());
                    Box::new(move || db.rename_table(&from, &to))
                }
                Change::AddRangePartition(b) => {
                    let column = range_column.ok_or_else(no_range)?;
                    let b = convert::bounds_from_proto(&b, &schema, &column)?;
                    let n = name.clone();
                    Box::new(move || db.add_range_partition(&n, &b))
                }
                Change::DropRangePartition(b) => {
                    let column = range_column.ok_or_else(no_range)?;
                    let b = convert::bounds_from_proto(&b, &schema, &column)?;
                    let n = name.clone();
                    Box::new(move || db.drop_range_partition(&n, &b))
                }
            };
            blocking(move || op().map_err(|e| storage_status(&e))).await?;
            let info = self
                .db
                .describe(&new_name)
                .map_err(|e| storage_status(&e))?;
            Ok(Response::new(convert::table_schema_to_proto(&info)))
        })
        .await
    }

    async fn write(
        &self,
        request: Request<pb::WriteRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        self.timed(Method::Write, async {
            let req = request.into_inner();
            let table = self.table(req.table.as_ref())?;
            let mut totals = WriteTotals::new(self.limits.max_row_errors);
            apply_write(&table, &req, &self.limits, &mut totals).await?;
            Metrics::add(&self.metrics.rows_written, totals.response.applied);
            Ok(Response::new(totals.response))
        })
        .await
    }

    async fn write_stream(
        &self,
        request: Request<Streaming<pb::WriteRequest>>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        self.timed(Method::Write, async {
            let mut stream = request.into_inner();
            let mut totals = WriteTotals::new(self.limits.max_row_errors);
            let mut table: Option<Table> = None;
            while let Some(req) = stream.message().await? {
                if table.is_none() || req.table.is_some() {
                    let t = self.table(req.table.as_ref())?;
                    if let Some(prev) = &table {
                        if prev.name() != t.name() {
                            return Err(Status::invalid_argument(
                                "a WriteStream writes one table; start another call for another",
                            ));
                        }
                    }
                    table = Some(t);
                }
                let t = table.as_ref().expect("set above");
                let before = totals.response.applied;
                apply_write(t, &req, &self.limits, &mut totals).await?;
                Metrics::add(&self.metrics.rows_written, totals.response.applied - before);
            }
            Ok(Response::new(totals.response))
        })
        .await
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        self.timed(Method::Get, async {
            let req = request.into_inner();
            let table = self.table(req.table.as_ref())?;
            if req.keys.len() > self.limits.max_get_keys {
                return Err(too_many(
                    "keys in one Get",
                    req.keys.len(),
                    self.limits.max_get_keys,
                ));
            }
            let schema = table.schema();
            let projection: Vec<usize> = if req.projection.is_empty() {
                (0..schema.len()).collect()
            } else {
                req.projection
                    .iter()
                    .map(|n| schema.index_of(n))
                    .collect::<Result<_, _>>()
                    .map_err(|e| Status::invalid_argument(e.to_string()))?
            };
            let key_cols = schema.key_indices();
            let mut keys = Vec::with_capacity(req.keys.len());
            for (i, k) in req.keys.iter().enumerate() {
                if k.values.len() != key_cols.len() {
                    return Err(Status::invalid_argument(format!(
                        "key {i} has {} values; the primary key has {} columns",
                        k.values.len(),
                        key_cols.len()
                    )));
                }
                let vals = k
                    .values
                    .iter()
                    .zip(key_cols)
                    .map(|(v, &c)| {
                        let col = &schema.columns()[c];
                        convert::value_from_proto(v, col.data_type, &col.name)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                keys.push(vals);
            }
            let out_schema = Arc::new(
                schema
                    .arrow_schema()
                    .project(&projection)
                    .map_err(|e| Status::internal(e.to_string()))?,
            );
            let snapshot = (req.snapshot_timestamp != 0).then_some(req.snapshot_timestamp);
            let lookup = {
                let out_schema = out_schema.clone();
                move || -> Result<(RecordBatch, Vec<u32>), Status> {
                    let mut found = Vec::new();
                    let mut index = Vec::new();
                    for (i, key) in keys.iter().enumerate() {
                        if let Some(b) = table
                            .get_batch_at(key, snapshot)
                            .map_err(|e| storage_status(&e))?
                        {
                            found.push(
                                b.project(&projection)
                                    .map_err(|e| Status::internal(e.to_string()))?,
                            );
                            index.push(i as u32);
                        }
                    }
                    let batch = concat_batches(&out_schema, &found)
                        .map_err(|e| Status::internal(e.to_string()))?;
                    Ok((batch, index))
                }
            };
            // A few keys are answered on this thread: a lookup is tens of microseconds (a
            // segment page is memory-mapped and usually cached), and handing it to another
            // thread (`spawn_blocking`, `block_in_place`) costs more than the lookup. Many go
            // to a blocking thread.
            let (batch, key_index) = if req.keys.len() <= 8 {
                lookup()?
            } else {
                blocking(lookup).await?
            };
            Metrics::add(&self.metrics.rows_returned, batch.num_rows() as u64);
            let arrow_ipc = ipc::encode(&out_schema, &[batch])?;
            Ok(Response::new(pb::GetResponse {
                arrow_ipc,
                key_index,
            }))
        })
        .await
    }

    async fn scan(
        &self,
        request: Request<pb::ScanRequest>,
    ) -> Result<Response<Self::ScanStream>, Status> {
        let started = Instant::now();
        let deadline = deadline_of(request.metadata());
        let req = request.into_inner();
        let prepared = async {
            let table = self.table(req.table.as_ref())?;
            let schema = table.schema();
            let predicates = convert::predicates_from_proto(&req.predicates, &schema)?;
            let batch_rows = match req.batch_rows as usize {
                0 => nyala_storage::DEFAULT_BATCH_ROWS,
                n if n > self.limits.max_scan_batch_rows => {
                    return Err(too_many(
                        "rows per scan batch",
                        n,
                        self.limits.max_scan_batch_rows,
                    ))
                }
                n => n,
            };
            let sreq = ScanRequest {
                projection: (!req.projection.is_empty()).then(|| req.projection.clone()),
                predicates,
                snapshot: (req.snapshot_timestamp != 0).then_some(req.snapshot_timestamp),
                batch_size: Some(batch_rows),
                limit: (req.limit != 0).then_some(req.limit as usize),
            };
            blocking(move || table.scan(&sreq).map_err(|e| storage_status(&e))).await
        }
        .await;
        let active = self
            .metrics
            .active_scans
            .load(std::sync::atomic::Ordering::Relaxed) as usize;
        let prepared = match prepared {
            Ok(_) if active >= self.limits.max_concurrent_scans => Err(too_many(
                "scans running",
                active,
                self.limits.max_concurrent_scans,
            )),
            other => other,
        };
        let scan = match prepared {
            Ok(s) => s,
            Err(e) => {
                self.metrics.record(Method::Scan, started, false);
                return Err(e);
            }
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel(2);
        // How the producer ended, if with an error: reported after the queued messages, so a
        // stopped scan never looks complete (the queue may be full when it stops).
        let ended: Arc<parking_lot::Mutex<Option<Status>>> = Arc::default();
        let ended_tx = ended.clone();
        let metrics = self.metrics.clone();
        let idle_timeout = self.limits.scan_idle_timeout;
        tokio::task::spawn_blocking(move || {
            let _active = ActiveScan::new(metrics.clone());
            let r = produce_scan(scan, tx.clone(), deadline, idle_timeout, &metrics);
            metrics.record(Method::Scan, started, r.is_ok());
            if let Err(status) = r {
                *ended_tx.lock() = Some(status);
            }
            // Dropping the sender ends the stream once the client has read what is queued.
            drop(tx);
        });
        let stream = futures::stream::poll_fn(move |cx| match rx.poll_recv(cx) {
            std::task::Poll::Ready(None) => std::task::Poll::Ready(ended.lock().take().map(Err)),
            other => other,
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_first_word_skips_comments() {
        assert_eq!(super::first_word("  SET x = 1"), "SET");
        assert_eq!(super::first_word("-- c\n/* d */ set x"), "set");
        assert_eq!(super::first_word("/* unterminated"), "");
        assert_eq!(super::first_word("select(1)"), "select");
    }
}
