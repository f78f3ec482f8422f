//! The simple and extended query protocols over the SQL engine.
//!
//! A connection's [`Session`] lives in pgwire's per-connection extensions, created at its
//! first statement. Statements about the session ([`Special`]) are answered here; everything
//! else is prepared and run by the connection's `nyala_sql::Engine`, and its [`Output`]
//! becomes PostgreSQL's row description, data rows and command tag.

use std::fmt::Debug;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow_pg::datatypes::{arrow_schema_to_pg_fields, into_pg_type};
use async_trait::async_trait;
use datafusion::common::ParamValues;
use datafusion::common::ScalarValue;
use futures::{stream, Sink, SinkExt, StreamExt};
use pgwire::api::copy::CopyHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{
    DescribePortalResponse, DescribeStatementResponse, FieldInfo, QueryResponse, Response, Tag,
};
use pgwire::api::stmt::{QueryParser, StoredStatement};
use pgwire::api::store::Entry;
use pgwire::api::store::PortalStore;
use pgwire::api::PgWireConnectionState;
use pgwire::api::DEFAULT_NAME;
use pgwire::api::{
    ClientInfo, ClientPortalStore, ConnectionHandle, Type, METADATA_APPLICATION_NAME, METADATA_USER,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::copy::{CopyData, CopyDone, CopyFail};
use pgwire::messages::extendedquery::{
    Bind, BindComplete, Describe, Execute, Parse, ParseComplete, Sync as PgSync,
};
use pgwire::messages::response::{NoticeResponse, ReadyForQuery, TransactionStatus};
use pgwire::messages::PgWireBackendMessage;
use tokio::sync::OnceCell;

use nyala_sql::activity::{BackendInfo, Backends};
use nyala_sql::{split_statements, Command, Description, Output, Prepared, SqlError};
use nyala_storage::Database;

use super::copy;
use super::session::{special, Session, Special};
use super::unflushed::Unflushed;

/// Answers queries for every connection of one database.
pub(crate) struct QueryHandler {
    db: Db,
    parser: Arc<StatementParser>,
}

/// The database and the server's sessions: what a connection's session is made from.
#[derive(Clone)]
pub(crate) struct Db {
    db: Arc<Database>,
    backends: Arc<Backends>,
}

impl QueryHandler {
    pub fn new(db: Arc<Database>) -> Self {
        let db = Db {
            db,
            backends: Arc::new(Backends::default()),
        };
        QueryHandler {
            db: db.clone(),
            parser: Arc::new(StatementParser { db }),
        }
    }
}

/// The connection's session, created at its first use.
fn session<C: ClientInfo + ?Sized>(db: &Db, client: &C) -> Arc<Session> {
    let extensions = client.session_extensions();
    if let Some(s) = extensions.get::<Session>() {
        return s;
    }
    // Read before `get_or_insert_with`, which holds the extensions' lock while it builds.
    // The handle pgwire's cancel requests use; `pg_cancel_backend` fires it too.
    let handle = extensions.get::<Arc<ConnectionHandle>>();
    let metadata = client.metadata();
    let info = BackendInfo {
        user: metadata.get(METADATA_USER).cloned().unwrap_or_default(),
        application_name: metadata
            .get(METADATA_APPLICATION_NAME)
            .cloned()
            .unwrap_or_default(),
        client_addr: client.socket_addr().ip().to_string(),
        started: std::time::SystemTime::now(),
    };
    let pid = client.pid_and_secret_key().0;
    extensions.get_or_insert_with(|| {
        let cancel: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            if let Some(h) = handle.clone() {
                tokio::spawn(async move {
                    h.cancel().await;
                });
            }
        });
        Session::new(db.db.clone(), &db.backends, pid, info, cancel)
    })
}

/// A statement of the extended protocol: parsed at `Parse`, described (planned) once when
/// first needed, run at each `Execute`.
#[derive(Clone)]
pub(crate) struct PgStatement {
    /// The statement as the client sent it (for `pg_stat_activity`).
    sql: Arc<str>,
    kind: Arc<Kind>,
    described: Arc<OnceCell<Description>>,
}

enum Kind {
    Special(Special),
    Sql(Box<Prepared>),
}

/// Parses `Parse` messages (pgwire's `QueryParser`).
pub(crate) struct StatementParser {
    db: Db,
}

#[async_trait]
impl QueryParser for StatementParser {
    type Statement = PgStatement;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<PgStatement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        // As PostgreSQL: nothing is parsed in a failed transaction block either.
        if client.transaction_status() == TransactionStatus::Error {
            return Err(aborted());
        }
        let statements = split_statements(sql);
        let sql = match statements.as_slice() {
            [] => return Ok(None),
            [one] => *one,
            _ => {
                return Err(user_error(
                    "42601",
                    "cannot insert multiple commands into a prepared statement".into(),
                ))
            }
        };
        let kind = match special(sql) {
            Some(s) => Kind::Special(s),
            None => Kind::Sql(Box::new(
                session(&self.db, client)
                    .engine
                    .prepare(sql)
                    .map_err(sql_error)?,
            )),
        };
        Ok(Some(PgStatement {
            sql: sql.into(),
            kind: Arc::new(kind),
            described: Arc::new(OnceCell::new()),
        }))
    }

    fn get_parameter_types(&self, stmt: &PgStatement) -> PgWireResult<Vec<Type>> {
        Ok(stmt
            .described
            .get()
            .map(|d| d.params.iter().map(|p| param_type(p.as_ref())).collect())
            .unwrap_or_default())
    }

    fn get_result_schema(
        &self,
        stmt: &PgStatement,
        format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        match stmt.described.get().and_then(|d| d.columns.as_ref()) {
            Some(schema) => {
                arrow_schema_to_pg_fields(schema, format.unwrap_or(&Format::UnifiedText), None)
            }
            None => Ok(vec![]),
        }
    }
}

/// The PostgreSQL type a parameter is described with: the inferred one, else `text` (the
/// client then sends text, which the engine coerces like a quoted literal).
fn param_type(t: Option<&arrow::datatypes::DataType>) -> Type {
    t.and_then(|t| into_pg_type(t).ok()).unwrap_or(Type::TEXT)
}

/// An `ErrorResponse` of severity ERROR.
fn user_error(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".into(),
        code.into(),
        message,
    )))
}

/// A SQL engine error, with its SQLSTATE.
fn sql_error(e: SqlError) -> PgWireError {
    user_error(e.sqlstate(), e.to_string())
}

/// The error PostgreSQL answers every statement with in a failed transaction block.
/// A savepoint statement outside a transaction block (SQLSTATE 25P01, as PostgreSQL).
fn no_block(what: &str) -> PgWireError {
    user_error(
        "25P01",
        format!("{what} can only be used in transaction blocks"),
    )
}

/// Where savepoint `name` is in the block's list (the latest of that name, as PostgreSQL).
fn find_savepoint(points: &[(String, u64)], name: &str) -> PgWireResult<usize> {
    points
        .iter()
        .rposition(|(n, _)| n == name)
        .ok_or_else(|| user_error("3B001", format!("savepoint \"{name}\" does not exist")))
}

fn aborted() -> PgWireError {
    user_error(
        "25P02",
        "current transaction is aborted, commands ignored until end of transaction block".into(),
    )
}

impl QueryHandler {
    /// Describes a statement once (planning it), and remembers the answer.
    async fn describe<'a>(
        &self,
        session: &Session,
        stmt: &'a PgStatement,
    ) -> PgWireResult<Option<&'a Description>> {
        let Kind::Sql(prepared) = stmt.kind.as_ref() else {
            return Ok(None);
        };
        stmt.described
            .get_or_try_init(|| async { session.engine.describe(prepared, None).await })
            .await
            .map(Some)
            .map_err(sql_error)
    }

    /// Runs one statement and answers it in the given result format.
    async fn run<C>(
        &self,
        client: &mut C,
        session: &Arc<Session>,
        (text, kind): (&str, &Kind),
        (params, described): (&[ScalarValue], Option<&SchemaRef>),
        format: &Format,
        status: TransactionStatus,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        self.db.backends.set_state(session.pid, true, text);
        // Idle again however the statement ends (a cancel drops this future).
        let _idle = Idle {
            backends: &self.db.backends,
            pid: session.pid,
        };
        self.run_statement(client, session, kind, (params, described), format, status)
            .await
    }

    async fn run_statement<C>(
        &self,
        client: &mut C,
        session: &Arc<Session>,
        kind: &Kind,
        (params, described): (&[ScalarValue], Option<&SchemaRef>),
        format: &Format,
        status: TransactionStatus,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        // What an aborted block still runs: its end, or a return to one of its savepoints.
        let ends_block = matches!(
            kind,
            Kind::Special(Special::Commit | Special::Rollback | Special::RollbackTo(_))
        );
        if status == TransactionStatus::Error && !ends_block {
            return Err(aborted());
        }
        let special = match kind {
            Kind::Sql(prepared) => {
                // Upserts may be held back until the next sync point (COMMIT, the end of an
                // implicit transaction): see `sync_point`.
                let output = session
                    .engine
                    .run_deferred(prepared, params)
                    .await
                    .map_err(sql_error)?;
                if status == TransactionStatus::Transaction
                    && matches!(output, Output::Affected { .. })
                {
                    *session.writes_in_block.lock() += 1;
                }
                return output_response(as_described(output, described, format)?, format);
            }
            Kind::Special(s) => s,
        };
        if matches!(
            special,
            Special::Begin | Special::Commit | Special::Rollback
        ) {
            // What the session held back is written before the block's answer: a failure
            // fails the COMMIT.
            session.engine.sync_writes().await.map_err(sql_error)?;
        }
        Ok(match special {
            Special::Begin => {
                if status != TransactionStatus::Idle {
                    notice(
                        client,
                        "WARNING",
                        "25001",
                        "there is already a transaction in progress",
                    )
                    .await?;
                }
                *session.writes_in_block.lock() = 0;
                session.savepoints.lock().clear();
                Response::TransactionStart(Tag::new("BEGIN"))
            }
            Special::Commit => {
                session.savepoints.lock().clear();
                if status == TransactionStatus::Idle {
                    notice(
                        client,
                        "WARNING",
                        "25P01",
                        "there is no transaction in progress",
                    )
                    .await?;
                }
                if status == TransactionStatus::Error {
                    Response::TransactionEnd(Tag::new("ROLLBACK"))
                } else {
                    Response::TransactionEnd(Tag::new("COMMIT"))
                }
            }
            Special::Rollback => {
                session.savepoints.lock().clear();
                let writes = std::mem::take(&mut *session.writes_in_block.lock());
                if status == TransactionStatus::Idle {
                    notice(
                        client,
                        "WARNING",
                        "25P01",
                        "there is no transaction in progress",
                    )
                    .await?;
                } else if writes > 0 {
                    let message = format!(
                        "ROLLBACK does not undo the {writes} statement(s) that wrote since BEGIN: \
                         Nyala applies each statement when it runs (see docs/postgres.md)"
                    );
                    notice(client, "WARNING", "01000", &message).await?;
                }
                Response::TransactionEnd(Tag::new("ROLLBACK"))
            }
            Special::Savepoint(name) => {
                if status == TransactionStatus::Idle {
                    return Err(no_block("SAVEPOINT"));
                }
                let writes = *session.writes_in_block.lock();
                session.savepoints.lock().push((name.clone(), writes));
                Response::Execution(Tag::new("SAVEPOINT"))
            }
            Special::Release(name) => {
                if status == TransactionStatus::Idle {
                    return Err(no_block("RELEASE SAVEPOINT"));
                }
                let mut points = session.savepoints.lock();
                let at = find_savepoint(&points, name)?;
                points.truncate(at);
                Response::Execution(Tag::new("RELEASE"))
            }
            Special::RollbackTo(name) => {
                if status == TransactionStatus::Idle {
                    return Err(no_block("ROLLBACK TO SAVEPOINT"));
                }
                let since = {
                    let mut points = session.savepoints.lock();
                    let at = find_savepoint(&points, name)?;
                    // The savepoint stays (as in PostgreSQL); later ones go.
                    points.truncate(at + 1);
                    let now = *session.writes_in_block.lock();
                    let since = now - points[at].1;
                    // A later return to it warns only of what wrote after this one.
                    points[at].1 = now;
                    since
                };
                if since > 0 {
                    let message = format!(
                        "ROLLBACK TO SAVEPOINT does not undo the {since} statement(s) that wrote \
                         since SAVEPOINT {name}: Nyala applies each statement when it runs (see \
                         docs/postgres.md)"
                    );
                    notice(client, "WARNING", "01000", &message).await?;
                }
                if status == TransactionStatus::Error {
                    session.recovered.store(true, Ordering::Release);
                }
                Response::Execution(Tag::new("ROLLBACK"))
            }
            Special::Set { name, value } => {
                session.set(name, value.clone());
                Response::Execution(Tag::new("SET"))
            }
            Special::SetTransaction => Response::Execution(Tag::new("SET")),
            Special::Reset(name) => {
                session.set(name, None);
                Response::Execution(Tag::new("RESET"))
            }
            Special::ResetAll => {
                session.reset_all();
                Response::Execution(Tag::new("RESET"))
            }
            Special::Show(name) => {
                let value = session.show(name).ok_or_else(|| {
                    user_error(
                        "42704",
                        format!("unrecognized configuration parameter \"{name}\""),
                    )
                })?;
                text_rows(&[name.as_str()], vec![vec![value]], format)
            }
            Special::ShowAll => {
                let rows = session
                    .show_all()
                    .into_iter()
                    .map(|(k, v)| vec![k, v, String::new()])
                    .collect();
                text_rows(&["name", "setting", "description"], rows, format)
            }
            Special::Ignored(tag) => Response::Execution(Tag::new(tag)),
            Special::CopyRefused(why) => return Err(user_error("0A000", why.clone())),
            Special::Copy(spec) if spec.to => {
                let query = match &spec.query {
                    Some(q) => q.clone(),
                    None if spec.columns.is_empty() => format!("SELECT * FROM {}", spec.table),
                    None => format!(
                        "SELECT {} FROM {}",
                        spec.columns
                            .iter()
                            .map(|c| quote_ident(c))
                            .collect::<Vec<_>>()
                            .join(", "),
                        spec.table
                    ),
                };
                let prepared = session.engine.prepare(&query).map_err(sql_error)?;
                let Output::Rows(batches) = session
                    .engine
                    .run(&prepared, &[])
                    .await
                    .map_err(sql_error)?
                else {
                    return Err(user_error("42601", "COPY (query) needs a query".into()));
                };
                Response::CopyOut(copy::copy_out(batches, &spec.format)?)
            }
            Special::Copy(spec) => {
                let all = session
                    .engine
                    .column_names(&spec.table)
                    .map_err(sql_error)?;
                for c in &spec.columns {
                    if !all.contains(c) {
                        return Err(sql_error(SqlError::Storage(
                            nyala_common::SchemaError::UnknownColumn(c.clone()).into(),
                        )));
                    }
                }
                let columns = if spec.columns.is_empty() {
                    all.len()
                } else {
                    spec.columns.len()
                };
                let (tx, rx) = tokio::sync::mpsc::channel(4);
                let engine = session.engine.clone();
                let (table, listed) = (spec.table.clone(), spec.columns.clone());
                let task =
                    tokio::spawn(
                        async move { engine.copy_in(&table, &listed, copy::chunks(rx)).await },
                    );
                *session.copy.lock().await =
                    Some(copy::CopyIn::new(spec.format.clone(), columns, tx, task));
                Response::CopyIn(pgwire::api::results::CopyResponse::new(
                    0,
                    columns,
                    futures::stream::empty(),
                ))
            }
        })
    }
}

/// An identifier quoted for SQL text.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[async_trait]
impl CopyHandler for QueryHandler {
    async fn on_copy_data<C>(&self, client: &mut C, data: CopyData) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = session(&self.db, client);
        let mut guard = session.copy.lock().await;
        let Some(copy) = guard.as_mut() else {
            return Err(user_error(
                "08P01",
                "CopyData without a COPY in progress".into(),
            ));
        };
        if copy.failed.is_some() {
            return Ok(());
        }
        match copy.data(&data.data) {
            Ok(chunks) => {
                for chunk in chunks {
                    if copy.tx.send(chunk).await.is_err() {
                        // The insert stopped (its error is the answer to CopyDone).
                        copy.failed = Some(SqlError::InvalidText("COPY stopped".into()));
                        break;
                    }
                }
            }
            Err(e) => copy.failed = Some(e),
        }
        Ok(())
    }

    async fn on_copy_done<C>(&self, client: &mut C, _done: CopyDone) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = session(&self.db, client);
        let Some(mut copy) = session.copy.lock().await.take() else {
            return Err(user_error(
                "08P01",
                "CopyDone without a COPY in progress".into(),
            ));
        };
        let mut failed = copy.failed.take();
        if failed.is_none() {
            match copy.finish() {
                Ok(chunks) => {
                    for chunk in chunks.into_iter().chain([copy::Chunk::Done]) {
                        if copy.tx.send(chunk).await.is_err() {
                            break;
                        }
                    }
                }
                Err(e) => failed = Some(e),
            }
        }
        let copy::CopyIn { tx, task, .. } = copy;
        // Without `Done`, the closed channel fails the insert, which removes its rows.
        drop(tx);
        let result = task
            .await
            .map_err(|e| user_error("XX000", format!("COPY: {e}")))?;
        match (failed, result) {
            // The insert's own error (a duplicate key, a bad value) says more than ours.
            (_, Err(e)) if !e.to_string().starts_with("COPY did not finish") => Err(sql_error(e)),
            (Some(e), _) => Err(sql_error(e)),
            (None, Err(e)) => Err(sql_error(e)),
            (None, Ok(n)) => {
                if client.transaction_status() == TransactionStatus::Transaction {
                    *session.writes_in_block.lock() += 1;
                }
                client
                    .send(PgWireBackendMessage::CommandComplete(
                        Tag::new("COPY").with_rows(n as usize).into(),
                    ))
                    .await?;
                Ok(())
            }
        }
    }

    async fn on_copy_fail<C>(&self, client: &mut C, fail: CopyFail) -> PgWireError
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = session(&self.db, client);
        if let Some(copy) = session.copy.lock().await.take() {
            let copy::CopyIn { tx, task, .. } = copy;
            drop(tx);
            let _ = task.await;
        }
        user_error("57014", format!("COPY from stdin failed: {}", fail.message))
    }
}

/// Marks a session idle when its statement ends.
struct Idle<'a> {
    backends: &'a Backends,
    pid: i32,
}

impl Drop for Idle<'_> {
    fn drop(&mut self) {
        self.backends.set_state(self.pid, false, "");
    }
}

/// Sends a notice (or warning) ahead of the statement's answer.
async fn notice<C>(client: &mut C, severity: &str, code: &str, message: &str) -> PgWireResult<()>
where
    C: Sink<PgWireBackendMessage> + Unpin + Send,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let info = ErrorInfo::new(severity.into(), code.into(), message.into());
    client
        .feed(PgWireBackendMessage::NoticeResponse(NoticeResponse::from(
            info,
        )))
        .await?;
    Ok(())
}

/// Rows of text columns (SHOW).
fn text_rows(columns: &[&str], rows: Vec<Vec<String>>, format: &Format) -> Response {
    use arrow::array::StringArray;
    let schema = Arc::new(arrow::datatypes::Schema::new(
        columns
            .iter()
            .map(|c| arrow::datatypes::Field::new(*c, arrow::datatypes::DataType::Utf8, false))
            .collect::<Vec<_>>(),
    ));
    let arrays = (0..columns.len())
        .map(|i| {
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r[i])))
                as arrow::array::ArrayRef
        })
        .collect();
    let batch = RecordBatch::try_new(schema, arrays).expect("columns of equal length");
    match rows_response(vec![batch], format) {
        Ok(r) => r,
        Err(e) => Response::Error(Box::new(e.into())),
    }
}

/// `output`'s binary-format columns as the types of the RowDescription a Describe of the
/// statement sent, which the client decodes them by. The description was planned with the
/// parameters' inferred types; bound values of other types (an `int8` for `k + $1` described
/// as `int4`, a `float8` for `f + $1` described as `float4`) change the result's type, and 8
/// bytes read as a 4-byte value are garbage. A value that does not fit fails the statement.
/// (Text columns read the same whatever the width.)
fn as_described(
    output: Output,
    described: Option<&SchemaRef>,
    format: &Format,
) -> PgWireResult<Output> {
    let (batches, want) = match (output, described) {
        (Output::Rows(batches), Some(want)) => (batches, want),
        (output, _) => return Ok(output),
    };
    // The columns to cast, by position.
    let recast = |b: &RecordBatch| -> Vec<bool> {
        if b.num_columns() != want.fields().len() {
            return vec![false; b.num_columns()];
        }
        b.schema()
            .fields()
            .iter()
            .zip(want.fields())
            .enumerate()
            .map(|(i, (got, want))| {
                // (A client naming fewer formats than there are columns gets text.)
                let binary = match format {
                    Format::Individual(codes) if codes.len() <= i => false,
                    f => f.format_for(i) == pgwire::api::results::FieldFormat::Binary,
                };
                got.data_type() != want.data_type() && binary
            })
            .collect()
    };
    if !batches.iter().any(|b| recast(b).contains(&true)) {
        return Ok(Output::Rows(batches));
    }
    let options = arrow::compute::CastOptions {
        safe: false,
        ..Default::default()
    };
    let conformed = batches
        .into_iter()
        .map(|b| {
            let cast = recast(&b);
            if !cast.contains(&true) {
                return Ok(b);
            }
            let mut fields = Vec::with_capacity(b.num_columns());
            let mut columns = Vec::with_capacity(b.num_columns());
            for ((c, got), (want, cast)) in b
                .columns()
                .iter()
                .zip(b.schema().fields())
                .zip(want.fields().iter().zip(cast))
            {
                if cast {
                    columns.push(
                        arrow::compute::cast_with_options(c, want.data_type(), &options).map_err(
                            |e| user_error("22003", format!("column \"{}\": {e}", want.name())),
                        )?,
                    );
                    fields.push(
                        got.as_ref()
                            .clone()
                            .with_data_type(want.data_type().clone()),
                    );
                } else {
                    columns.push(c.clone());
                    fields.push(got.as_ref().clone());
                }
            }
            RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(fields)), columns)
                .map_err(|e| user_error("XX000", e.to_string()))
        })
        .collect::<PgWireResult<Vec<_>>>()?;
    Ok(Output::Rows(conformed))
}

/// A statement's output as PostgreSQL's answer.
fn output_response(output: Output, format: &Format) -> PgWireResult<Response> {
    Ok(match output {
        Output::Rows(batches) => rows_response(batches, format)?,
        Output::Affected { command, rows } => {
            let tag = Tag::new(command.tag()).with_rows(rows as usize);
            Response::Execution(if command == Command::Insert {
                tag.with_oid(0)
            } else {
                tag
            })
        }
        Output::Done(command) => Response::Execution(Tag::new(command.tag())),
    })
}

/// Result rows, encoded batch by batch as the client reads them.
fn rows_response(batches: Vec<RecordBatch>, format: &Format) -> PgWireResult<Response> {
    let schema = batches
        .first()
        .map(|b| b.schema())
        .unwrap_or_else(|| Arc::new(arrow::datatypes::Schema::empty()));
    let fields = Arc::new(arrow_schema_to_pg_fields(&schema, format, None)?);
    let encode = fields.clone();
    let rows = stream::iter(batches)
        .flat_map(move |b| stream::iter(super::text::encode_rows(encode.clone(), b)));
    Ok(Response::Query(QueryResponse::new(fields, rows)))
}

#[async_trait]
impl SimpleQueryHandler for QueryHandler {
    /// As pgwire's, on a connection that reports a block recovered by `ROLLBACK TO
    /// SAVEPOINT` as in progress (see `unflushed`).
    async fn on_query<C>(
        &self,
        client: &mut C,
        query: pgwire::messages::simplequery::Query,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = session(&self.db, client);
        let answered = self
            ._on_query(
                &mut Unflushed::recovering(client, &session.recovered),
                query,
            )
            .await;
        // The flag belongs to this query's answer; whatever it sent (or if it failed or was
        // cancelled), it must not reach the next query.
        session.recovered.store(false, Ordering::Release);
        answered
    }

    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = session(&self.db, client);
        let mut status = client.transaction_status();
        let mut out = Vec::new();
        for sql in split_statements(query) {
            let kind = match special(sql) {
                Some(s) => Ok(Kind::Special(s)),
                None => session
                    .engine
                    .prepare(sql)
                    .map(|p| Kind::Sql(Box::new(p)))
                    .map_err(sql_error),
            };
            let rollback_to = matches!(kind, Ok(Kind::Special(Special::RollbackTo(_))));
            let result = match kind {
                Ok(kind) => {
                    self.run(
                        client,
                        &session,
                        (sql, &kind),
                        (&[], None),
                        &Format::UnifiedText,
                        status,
                    )
                    .await
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(r) => {
                    status = match &r {
                        Response::TransactionStart(_) => status.to_in_transaction_state(),
                        // A block that ends is no longer one a `ROLLBACK TO` recovered:
                        // pgwire's own status (idle) is right again.
                        Response::TransactionEnd(_) => {
                            session.recovered.store(false, Ordering::Release);
                            status.to_idle_state()
                        }
                        _ if rollback_to && session.recovered.load(Ordering::Acquire) => {
                            TransactionStatus::Transaction
                        }
                        _ => status,
                    };
                    out.push(r);
                }
                // As PostgreSQL: the first error ends the query string (and fails a block
                // that a `ROLLBACK TO SAVEPOINT` earlier in it had recovered).
                Err(e) => {
                    session.recovered.store(false, Ordering::Release);
                    out.push(Response::Error(Box::new(e.into())));
                    break;
                }
            }
        }
        // The end of a query string outside a transaction block ends its implicit one.
        if status == TransactionStatus::Idle {
            if let Err(e) = sync_point(&session).await {
                out.push(Response::Error(Box::new(e.into())));
            }
        }
        Ok(out)
    }
}

/// Writes what the session held back (`Engine::run_deferred`): at the end of an implicit
/// transaction, where PostgreSQL commits, so that the client's next ReadyForQuery outside a
/// block means its writes are durable and visible to everyone.
async fn sync_point(session: &Session) -> PgWireResult<()> {
    if session.engine.holds_writes() {
        session.engine.sync_writes().await.map_err(sql_error)?;
    }
    Ok(())
}

#[async_trait]
impl ExtendedQueryHandler for QueryHandler {
    type Statement = PgStatement;
    type QueryParser = StatementParser;

    fn query_parser(&self) -> Arc<StatementParser> {
        self.parser.clone()
    }

    // Parse, Bind, Describe and Execute answer without flushing (see `unflushed`); Sync and
    // Flush flush.

    async fn on_parse<C>(&self, client: &mut C, message: Parse) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        // As pgwire's default.
        let name = message
            .name
            .clone()
            .unwrap_or_else(|| DEFAULT_NAME.to_owned());
        match StoredStatement::parse(client, &message, self.query_parser()).await? {
            Some(stmt) => client.portal_store().put_statement(Arc::new(stmt)),
            None => client.portal_store().put_empty_statement(&name),
        }
        client
            .feed(PgWireBackendMessage::ParseComplete(ParseComplete::new()))
            .await?;
        Ok(())
    }

    async fn on_bind<C>(&self, client: &mut C, message: Bind) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        // As pgwire's default.
        let statement_name = message.statement_name.as_deref().unwrap_or(DEFAULT_NAME);
        let portal_name = message.portal_name.as_deref().unwrap_or(DEFAULT_NAME);
        match client.portal_store().get_statement(statement_name) {
            Some(Entry::Value(statement)) => {
                let portal = Portal::try_new(&message, statement)?;
                client.portal_store().put_portal(Arc::new(portal));
            }
            Some(Entry::Empty) => {
                if !message.parameters.is_empty() {
                    return Err(user_error(
                        "08P01",
                        format!(
                            "bind message supplies {} parameters, but prepared statement \
                             \"{statement_name}\" requires 0",
                            message.parameters.len()
                        ),
                    ));
                }
                client.portal_store().put_empty_portal(portal_name);
            }
            None => return Err(PgWireError::StatementNotFound(statement_name.to_owned())),
        }
        client
            .feed(PgWireBackendMessage::BindComplete(BindComplete::new()))
            .await?;
        Ok(())
    }

    async fn on_describe<C>(&self, client: &mut C, message: Describe) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        self._on_describe(&mut Unflushed::new(client), message)
            .await
    }

    async fn on_execute<C>(&self, client: &mut C, message: Execute) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        self._on_execute(&mut Unflushed::new(client), message)
            .await?;
        // pgwire left a block that `ROLLBACK TO SAVEPOINT` recovered in the failed state. (Only
        // a failed block can have been recovered: every other Execute, point lookups among
        // them, skips the session lookup.)
        if client.transaction_status() == TransactionStatus::Error
            && session(&self.db, client)
                .recovered
                .swap(false, Ordering::AcqRel)
        {
            client.set_transaction_status(TransactionStatus::Transaction);
        }
        if matches!(client.state(), PgWireConnectionState::CopyInProgress(_)) {
            // The client waits for CopyInResponse before it sends data (its Sync, if any,
            // is ignored during COPY).
            client.flush().await?;
        }
        Ok(())
    }

    /// As pgwire's, after writing what the session held back if no block is open (Sync ends
    /// the extended protocol's implicit transaction).
    async fn on_sync<C>(&self, client: &mut C, _message: PgSync) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if client.transaction_status() == TransactionStatus::Idle {
            let session = session(&self.db, client);
            if let Err(PgWireError::UserError(info)) = sync_point(&session).await {
                client
                    .feed(PgWireBackendMessage::ErrorResponse((*info).into()))
                    .await?;
            }
        }
        client.portal_store().rm_portal(pgwire::api::DEFAULT_NAME);
        client
            .send(PgWireBackendMessage::ReadyForQuery(ReadyForQuery::new(
                client.transaction_status(),
            )))
            .await?;
        client.flush().await?;
        Ok(())
    }

    async fn do_describe_statement<C>(
        &self,
        client: &mut C,
        target: &StoredStatement<PgStatement>,
    ) -> PgWireResult<DescribeStatementResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = PgStatement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = session(&self.db, client);
        let stmt = &target.statement;
        if let Kind::Special(s) = stmt.kind.as_ref() {
            return Ok(DescribeStatementResponse::new(
                vec![],
                special_fields(s, &Format::UnifiedText),
            ));
        }
        let described = self
            .describe(&session, stmt)
            .await?
            .expect("a SQL statement");
        let params = described
            .params
            .iter()
            .enumerate()
            .map(|(i, inferred)| match target.parameter_types.get(i) {
                Some(Some(t)) if *t != Type::UNKNOWN => t.clone(),
                _ => param_type(inferred.as_ref()),
            })
            .collect();
        let fields = match &described.columns {
            Some(schema) => arrow_schema_to_pg_fields(schema, &Format::UnifiedText, None)?,
            None => vec![],
        };
        Ok(DescribeStatementResponse::new(params, fields))
    }

    async fn do_describe_portal<C>(
        &self,
        client: &mut C,
        portal: &Portal<PgStatement>,
    ) -> PgWireResult<DescribePortalResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = PgStatement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = session(&self.db, client);
        let stmt = &portal.statement.statement;
        if let Kind::Special(s) = stmt.kind.as_ref() {
            return Ok(DescribePortalResponse::new(special_fields(
                s,
                &portal.result_column_format,
            )));
        }
        let described = self
            .describe(&session, stmt)
            .await?
            .expect("a SQL statement");
        let fields = match &described.columns {
            Some(schema) => arrow_schema_to_pg_fields(schema, &portal.result_column_format, None)?,
            None => vec![],
        };
        Ok(DescribePortalResponse::new(fields))
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<PgStatement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = PgStatement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = session(&self.db, client);
        let stmt = &portal.statement.statement;
        let params = if portal.parameter_len() == 0 {
            Vec::new()
        } else {
            // The planner's parameter types are needed only where the client sent none.
            let typed = (0..portal.parameter_len()).all(|i| {
                matches!(portal.statement.parameter_types.get(i), Some(Some(t)) if *t != Type::UNKNOWN)
            });
            let inferred: Vec<Option<arrow::datatypes::DataType>> = if typed {
                vec![]
            } else {
                self.describe(&session, stmt)
                    .await?
                    .map(|d| d.params.clone())
                    .unwrap_or_default()
            };
            let refs: Vec<Option<&arrow::datatypes::DataType>> =
                inferred.iter().map(Option::as_ref).collect();
            match arrow_pg::datatypes::df::deserialize_parameters(portal, &refs)? {
                ParamValues::List(values) => values.into_iter().map(|v| v.value).collect(),
                ParamValues::Map(_) => {
                    return Err(user_error(
                        "42601",
                        "named parameters are not supported".into(),
                    ))
                }
            }
        };
        let status = client.transaction_status();
        self.run(
            client,
            &session,
            (&stmt.sql, &stmt.kind),
            (
                &params,
                stmt.described.get().and_then(|d| d.columns.as_ref()),
            ),
            &portal.result_column_format,
            status,
        )
        .await
    }
}

/// The columns a session statement answers with (only SHOW has any).
fn special_fields(s: &Special, format: &Format) -> Vec<FieldInfo> {
    let names: Vec<String> = match s {
        Special::Show(name) => vec![name.clone()],
        Special::ShowAll => vec!["name".into(), "setting".into(), "description".into()],
        _ => return vec![],
    };
    names
        .into_iter()
        .enumerate()
        .map(|(i, n)| FieldInfo::new(n, None, None, Type::TEXT, format.format_for(i)))
        .collect()
}
