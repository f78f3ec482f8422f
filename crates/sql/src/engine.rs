//! Running statements: DDL against the database, everything else through DataFusion.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, RecordBatch, RecordBatchOptions, UInt32Array, UInt64Array};
use arrow_schema::{DataType as ArrowType, Field, Schema as ArrowSchema};
use datafusion::common::{Constraint, ScalarValue, TableReference};
use datafusion::execution::context::{SessionConfig, SessionContext};
use datafusion::logical_expr::{
    CreateMemoryTable, DdlStatement, DmlStatement, DropTable, Expr, LogicalPlan,
    LogicalPlanBuilder, WriteOp as DmlOp,
};
use datafusion::sql::parser::{DFParser, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::{
    self, AssignmentTarget, ObjectNamePart, OnConflictAction, OnInsert, SqliteOnConflict,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use futures::StreamExt;

use nyala_common::{ColumnSchema, Schema};
use nyala_storage::db::DEFAULT_NAMESPACE;
use nyala_storage::{Database, IfExists, PartitionSpec, Table, TableName, WriteBatch, WriteOp};

use crate::catalog::{NyalaCatalog, CATALOG};
use crate::error::{RowFailure, SqlError};
use crate::insert::{BoundInsert, ValuesInsert};
use crate::lookup::PointLookup;
use crate::params;
use crate::partition_clause::{RangeChange, RawPartitioning, RawRange};
use crate::statement::{
    Command, Description, FastCell, FastPath, Output, Prepared, PreparedKind, Shape,
};
use crate::types::{default_value, storage_type};

/// A SQL session over a database: runs one statement at a time, each at its own snapshot.
pub struct Engine {
    db: Arc<Database>,
    ctx: SessionContext,
    /// One statement at a time: each sets the session's snapshot for its scans.
    statement: tokio::sync::Mutex<()>,
    /// The server's sessions, when a front end attached this one ([`Engine::attach_backend`]).
    activity: Arc<std::sync::OnceLock<Arc<crate::activity::Backends>>>,
    /// Upserts held back until the session's next sync point ([`Engine::run_deferred`]).
    held: std::sync::Mutex<Option<BoundInsert>>,
    /// The plan of the query [`Engine::describe`] planned last, for its run right after;
    /// identified by the prepared statement's `fast` cell, which it keeps alive (so no other
    /// statement can take its address).
    described: std::sync::Mutex<Option<(FastCell, LogicalPlan)>>,
}

/// The snapshot every scan of the running statement reads (a session config extension).
#[derive(Debug, Clone, Copy)]
pub(crate) struct StatementSnapshot(pub u64);

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl Engine {
    /// A session over `db`, with `public` as the current schema.
    pub fn new(db: Arc<Database>) -> Self {
        let mut config = SessionConfig::new()
            .with_create_default_catalog_and_schema(false)
            .with_default_catalog_and_schema(CATALOG, DEFAULT_NAMESPACE)
            // Nyala's catalog serves `information_schema` itself (DataFusion's views plus the
            // key views); DataFusion's own switch would hide it.
            .with_information_schema(false);
        // Text columns are stored as Utf8; planning them as Utf8View would cast every batch.
        config.options_mut().sql_parser.map_string_types_to_utf8view = false;
        let ctx = SessionContext::new_with_config(config);
        let catalog = Arc::new(NyalaCatalog::new(db.clone()));
        ctx.register_catalog(CATALOG, catalog.clone());
        catalog.set_session_catalogs(ctx.state().catalog_list());
        let activity = Arc::new(std::sync::OnceLock::new());
        crate::pg_catalog::install(&ctx, &db, activity.clone())
            .expect("pg_catalog installs in a new session");
        // After pg_catalog's functions: Nyala's date_part (PostgreSQL's units) and date_trunc win.
        ctx.register_udf(crate::functions::DatePart::udf());
        ctx.register_udf(crate::functions::DateTrunc::udf());
        ctx.register_udf(crate::bytea::ByteaIn::udf());
        {
            // PostgreSQL's literal typing runs before DataFusion's type coercion; bytea
            // input after it (it rewrites the casts coercion adds).
            let mut rules = datafusion::optimizer::Analyzer::new().rules;
            rules.insert(0, Arc::new(crate::literals::BooleanLiterals));
            rules.push(Arc::new(crate::bytea::ByteaInput::new()));
            let state =
                datafusion::execution::session_state::SessionStateBuilder::new_from_existing(
                    ctx.state(),
                )
                .with_analyzer_rules(rules)
                .with_optimizer_rule(Arc::new(crate::eager_aggregate::EagerAggregate))
                .with_physical_optimizer_rule(Arc::new(crate::run_aggregate::RunAggregate))
                .build();
            *ctx.state_ref().write() = state;
        }
        Engine {
            db,
            ctx,
            statement: tokio::sync::Mutex::new(()),
            activity,
            held: std::sync::Mutex::new(None),
            described: std::sync::Mutex::new(None),
        }
    }

    /// Makes this session one of `backends` with process id `pid`: `pg_backend_pid()` answers
    /// it, `pg_stat_activity` lists the server's sessions, `pg_cancel_backend(pid)` and
    /// `pg_terminate_backend(pid)` stop their statements. (The front end registers the
    /// session in `backends` itself.) Once per session.
    pub fn attach_backend(&self, backends: Arc<crate::activity::Backends>, pid: i32) {
        self.ctx.register_udf(crate::activity::BackendPid::udf(pid));
        for name in ["pg_cancel_backend", "pg_terminate_backend"] {
            self.ctx
                .register_udf(crate::activity::CancelBackend::udf(name, backends.clone()));
        }
        let _ = self.activity.set(backends);
    }

    /// The column names of `table` (as a statement names it), in order.
    pub fn column_names(&self, table: &str) -> Result<Vec<String>, SqlError> {
        let name = Self::table_name(&TableReference::from(table))?;
        let schema = self.db.table(&name)?.schema();
        Ok(schema.columns().iter().map(|c| c.name.clone()).collect())
    }

    /// Inserts rows given as text (PostgreSQL's `COPY FROM`): `chunks` yields, per chunk of
    /// rows, one string array per column of `columns` (all of the table's columns, in order,
    /// when empty); each is read as its column's type (binary columns as PostgreSQL's bytea
    /// text). All or nothing, as PostgreSQL's COPY: an error in any chunk (a value that does
    /// not read, a duplicate key, an error the stream yields) removes the rows written
    /// before it. Returns the number of rows inserted.
    pub async fn copy_in(
        &self,
        table: &str,
        columns: &[String],
        chunks: impl futures::Stream<Item = Result<Vec<ArrayRef>, SqlError>> + Send + 'static,
    ) -> Result<u64, SqlError> {
        let _one_at_a_time = self.statement.lock().await;
        self.write_held().await?;
        let name = Self::table_name(&TableReference::from(table))?;
        let table = self.db.table(&name)?;
        let schema = table.schema();
        let columns: Vec<String> = if columns.is_empty() {
            schema.columns().iter().map(|c| c.name.clone()).collect()
        } else {
            columns.to_vec()
        };
        let mut fields = Vec::with_capacity(columns.len());
        for c in &columns {
            let i = schema.index_of(c)?;
            let t = schema.columns()[i].data_type.to_arrow();
            fields.push(Field::new(c, t, true));
        }
        let arrow_schema = Arc::new(ArrowSchema::new(fields));
        let batch_schema = arrow_schema.clone();
        let batches = chunks.map(move |chunk| {
            let chunk =
                chunk.map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
            text_batch(&batch_schema, chunk)
                .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))
        });
        let stream = Box::pin(
            datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(arrow_schema, batches),
        );
        self.insert_all_or_nothing(&table, stream).await
    }

    /// Makes `schema` the one unqualified table names resolve in (PostgreSQL's
    /// `search_path`); `false` if the database has no such schema.
    pub fn set_default_schema(&self, schema: &str) -> bool {
        if !self.db.list_namespaces().iter().any(|n| n == schema) {
            return false;
        }
        // A plan made under the old schema would read other tables.
        *self.described.lock().expect("described plan") = None;
        self.ctx
            .state_ref()
            .write()
            .config_mut()
            .options_mut()
            .catalog
            .default_schema = schema.to_string();
        true
    }

    /// The DataFusion session (for planning by other front ends).
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// Runs one statement and returns its result batches: none for DDL; one row with `count`
    /// for INSERT, UPSERT, UPDATE and DELETE; for queries at least one batch (an empty one
    /// when no rows match), so the result's schema is always known.
    pub async fn execute(&self, sql: &str) -> Result<Vec<RecordBatch>, SqlError> {
        Ok(match self.run(&self.prepare(sql)?, &[]).await? {
            Output::Rows(batches) => batches,
            Output::Affected { rows, .. } => vec![count_batch(rows)?],
            Output::Done(_) => vec![],
        })
    }

    /// Parses one statement for [`Engine::run`] (possibly many times, with different
    /// parameters). Parsing reads no catalog: a prepared statement stays valid across DDL.
    pub fn prepare(&self, sql: &str) -> Result<Prepared, SqlError> {
        Prepared::parse(sql)
    }

    /// Runs a prepared statement with `params` bound to its `$1`, `$2`, ... placeholders
    /// (as constants, so a bound point lookup takes the fast path like a literal one).
    ///
    /// Writes upserts this session held back ([`Engine::run_deferred`]) first.
    pub async fn run(
        &self,
        prepared: &Prepared,
        params: &[ScalarValue],
    ) -> Result<Output, SqlError> {
        self.run_with(prepared, params, false).await
    }

    /// Like [`Engine::run`], but an upsert of constant rows (`INSERT ... VALUES ... ON CONFLICT
    /// (key) DO UPDATE`, `UPSERT INTO ... VALUES`) may be held back and written later, together
    /// with the session's following ones, as one batch. This is what a front end does inside a
    /// transaction, where PostgreSQL too makes writes durable and visible to other sessions
    /// only at COMMIT; a session writing row by row then costs one storage write (and one WAL
    /// sync) per batch instead of one per row.
    ///
    /// Held-back rows are written by the session's next statement of another kind (so that it
    /// sees them), by [`Engine::sync_writes`] (the front end's commit), or when
    /// 16,384 rows accumulate. Until then other sessions do not see
    /// them and a crash loses them; dropping the engine discards them. Only statements whose
    /// count and success are known without writing are held back (no plain INSERT, whose
    /// duplicate key must fail the statement itself).
    pub async fn run_deferred(
        &self,
        prepared: &Prepared,
        params: &[ScalarValue],
    ) -> Result<Output, SqlError> {
        self.run_with(prepared, params, true).await
    }

    /// Writes the upserts this session held back ([`Engine::run_deferred`]), as one atomic
    /// batch. On an error, none of them is written and they are discarded.
    pub async fn sync_writes(&self) -> Result<(), SqlError> {
        let _one_at_a_time = self.statement.lock().await;
        self.write_held().await
    }

    /// Whether this session holds back rows that [`Engine::sync_writes`] would write.
    pub fn holds_writes(&self) -> bool {
        self.held.lock().expect("held rows").is_some()
    }

    async fn write_held(&self) -> Result<(), SqlError> {
        let held = self.held.lock().expect("held rows").take();
        match held {
            Some(insert) => insert.write().await.map(|_| ()),
            None => Ok(()),
        }
    }

    /// Holds `insert` back, writing the rows held before it if they cannot join it.
    async fn hold(&self, insert: BoundInsert) -> Result<(), SqlError> {
        let previous = {
            let mut held = self.held.lock().expect("held rows");
            match held.as_mut() {
                None => {
                    *held = Some(insert);
                    None
                }
                Some(h) if h.can_absorb(&insert) => {
                    h.absorb(insert);
                    None
                }
                Some(_) => held.replace(insert),
            }
        };
        if let Some(previous) = previous {
            if let Err(e) = previous.write().await {
                // The statement fails; what it would have added goes too.
                *self.held.lock().expect("held rows") = None;
                return Err(e);
            }
        }
        Ok(())
    }

    /// The schema unqualified table names resolve in.
    fn default_schema(&self) -> String {
        self.ctx
            .state_ref()
            .read()
            .config()
            .options()
            .catalog
            .default_schema
            .clone()
    }

    /// The statement's fast path, learnt at its first run (again after the session's schema
    /// for unqualified names changed, or the path was found stale).
    fn fast_path(
        &self,
        prepared: &Prepared,
        statement: &DFStatement,
        upsert: bool,
        default_schema: &str,
    ) -> Arc<FastPath> {
        let mut known = prepared.fast.lock().expect("fast path");
        if let Some(f) = known
            .as_ref()
            .filter(|f| f.default_schema == default_schema)
        {
            return f.clone();
        }
        let shape = (|| {
            let mut statement = statement.clone();
            let mut mode = if upsert {
                InsertMode::Upsert
            } else {
                InsertMode::Insert
            };
            self.rewrite_shows(&mut statement).ok()?;
            self.adapt(&mut statement, &mut mode).ok()?;
            let DFStatement::Statement(s) = &statement else {
                return None;
            };
            if let Some(insert) = ValuesInsert::recognise(&self.db, default_schema, s, &mode) {
                return Some(Shape::Insert(insert));
            }
            PointLookup::recognise(&self.db, default_schema, s).map(Shape::Lookup)
        })();
        let fast = Arc::new(FastPath {
            default_schema: default_schema.to_string(),
            shape,
        });
        *known = Some(fast.clone());
        fast
    }

    async fn run_with(
        &self,
        prepared: &Prepared,
        params: &[ScalarValue],
        defer: bool,
    ) -> Result<Output, SqlError> {
        let _one_at_a_time = self.statement.lock().await;
        let (statement, partitioning, upsert) = match &prepared.kind {
            PreparedKind::Range(change) => {
                self.write_held().await?;
                blocking(|| self.change_range(change.clone()))?;
                return Ok(Output::Done(Command::AlterTable));
            }
            PreparedKind::Statement {
                statement,
                partitioning,
                upsert,
            } => (statement, partitioning.clone(), *upsert),
        };
        let default_schema = self.default_schema();
        let fast = self.fast_path(prepared, statement, upsert, &default_schema);
        match &fast.shape {
            Some(Shape::Insert(insert)) => match insert.bind(&self.db, params) {
                Some(insert) => {
                    let rows = insert.len() as u64;
                    let rows = if defer && insert.deferrable(&self.db.options().tablet) {
                        self.hold(insert).await?;
                        rows
                    } else {
                        self.write_held().await?;
                        insert.write().await?
                    };
                    return Ok(Output::Affected {
                        command: Command::Insert,
                        rows,
                    });
                }
                None => *prepared.fast.lock().expect("fast path") = None,
            },
            Some(Shape::Lookup(lookup)) => {
                // The session's own writes first.
                self.write_held().await?;
                // Inline: a lookup takes tens of microseconds, less than handing the worker
                // thread over for blocking would.
                match lookup.run(&self.db, params)? {
                    Some(out) => return Ok(Output::Rows(out)),
                    None => *prepared.fast.lock().expect("fast path") = None,
                }
            }
            None => {}
        }
        let mut statement = statement.clone();
        params::bind(&mut statement, params)?;
        let mut mode = if upsert {
            InsertMode::Upsert
        } else {
            InsertMode::Insert
        };
        self.rewrite_shows(&mut statement)?;
        let names = result_names_of(&statement);
        let set_columns = self.adapt(&mut statement, &mut mode)?;
        // Everything else sees the session's own writes.
        self.write_held().await?;
        // Every scan of this statement (joins, subqueries, the rows an UPDATE reads) reads the
        // same snapshot: every write acknowledged before the statement started.
        let snapshot = StatementSnapshot(self.db.snapshot_timestamp());
        self.ctx
            .state_ref()
            .write()
            .config_mut()
            .set_extension(Arc::new(snapshot));
        if let DFStatement::Statement(s) = &statement {
            if let ast::Statement::AlterTable(alter) = s.as_ref() {
                self.alter_table(alter).await?;
                return Ok(Output::Done(Command::AlterTable));
            }
        }
        let described = self.described.lock().expect("described plan").take();
        let plan = match described {
            // The query's plan from its Describe just before (the extended protocol's usual
            // Parse, Bind, Describe, Execute): planned once, not twice.
            Some((of, plan)) if params.is_empty() && Arc::ptr_eq(&of, &prepared.fast) => plan,
            _ => self.ctx.state().statement_to_plan(statement).await?,
        };
        match plan {
            LogicalPlan::Dml(dml) => {
                let command = match dml.op {
                    DmlOp::Update => Command::Update,
                    DmlOp::Delete => Command::Delete,
                    _ => Command::Insert,
                };
                let rows = self.write(dml, mode, set_columns).await?;
                Ok(Output::Affected { command, rows })
            }
            LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(c)) => {
                let created = blocking(|| self.create_table(&c, partitioning))?;
                if matches!(c.input.as_ref(), LogicalPlan::EmptyRelation(_)) || !created {
                    return Ok(Output::Done(Command::CreateTable));
                }
                // CREATE TABLE ... AS SELECT: fill it (as an INSERT; a failure leaves the
                // table with the rows written so far).
                let table = self.db.table(&Self::table_name(&c.name)?)?;
                let input = Arc::unwrap_or_clone(c.input);
                let mut stream = self.stream(input).await?;
                let mut count = 0u64;
                while let Some(batch) = stream.next().await {
                    let batch = batch?;
                    if batch.num_rows() > 0 {
                        count +=
                            write_batch(&table, WriteOp::Insert, relabel(&table, batch)?).await?;
                    }
                }
                Ok(Output::Affected {
                    command: Command::CreateTableAs,
                    rows: count,
                })
            }
            LogicalPlan::Ddl(DdlStatement::DropTable(d)) => {
                blocking(|| self.drop_table(&d))?;
                Ok(Output::Done(Command::DropTable))
            }
            LogicalPlan::Ddl(DdlStatement::CreateCatalogSchema(c)) => {
                let name = c
                    .schema_name
                    .strip_prefix(&format!("{CATALOG}."))
                    .unwrap_or(&c.schema_name);
                let if_exists = if c.if_not_exists {
                    IfExists::Skip
                } else {
                    IfExists::Error
                };
                blocking(|| self.db.create_namespace(name, if_exists))?;
                Ok(Output::Done(Command::CreateSchema))
            }
            LogicalPlan::Ddl(DdlStatement::DropCatalogSchema(d)) => {
                let name = d.name.schema_name().to_string();
                blocking(|| -> Result<(), SqlError> {
                    // Refuse what drop_namespace would refuse before CASCADE drops anything.
                    if name == DEFAULT_NAMESPACE {
                        return Err(SqlError::Storage(
                            nyala_storage::StorageError::InvalidInput(format!(
                                "schema \"{name}\" cannot be dropped"
                            )),
                        ));
                    }
                    if !self.db.list_namespaces().contains(&name) {
                        return if d.if_exists {
                            Ok(())
                        } else {
                            Err(
                                nyala_storage::StorageError::UndefinedNamespace(name.clone())
                                    .into(),
                            )
                        };
                    }
                    if d.cascade {
                        for t in self.db.list_tables(Some(&name)) {
                            self.db.drop_table(&t, IfExists::Skip)?;
                        }
                    }
                    let if_exists = if d.if_exists {
                        IfExists::Skip
                    } else {
                        IfExists::Error
                    };
                    Ok(self.db.drop_namespace(&name, if_exists)?)
                })?;
                Ok(Output::Done(Command::DropSchema))
            }
            LogicalPlan::Ddl(other) => Err(SqlError::Unsupported(format!(
                "{} statements",
                other.name()
            ))),
            LogicalPlan::Statement(st) => {
                let command = match &st {
                    datafusion::logical_expr::Statement::SetVariable(_) => Command::Set,
                    _ => Command::Other,
                };
                self.ctx
                    .execute_logical_plan(LogicalPlan::Statement(st))
                    .await?
                    .collect()
                    .await?;
                Ok(Output::Done(command))
            }
            plan => {
                let df = self.ctx.execute_logical_plan(plan).await?;
                let planned = Arc::new(df.schema().as_arrow().clone());
                let schema = match &names {
                    Some(names) => names.apply(&planned),
                    None => planned.clone(),
                };
                let mut batches = df.collect().await?;
                if let Some(names) = names.filter(|_| !Arc::ptr_eq(&schema, &planned)) {
                    batches = batches
                        .into_iter()
                        .map(|b| {
                            let opts = RecordBatchOptions::new().with_row_count(Some(b.num_rows()));
                            let renamed = names.apply(&b.schema());
                            RecordBatch::try_new_with_options(renamed, b.columns().to_vec(), &opts)
                        })
                        .collect::<Result<_, _>>()?;
                }
                // Keep the schema even when no rows come back (front ends describe it).
                batches.retain(|b| b.num_rows() > 0);
                if batches.is_empty() {
                    batches.push(RecordBatch::new_empty(schema));
                }
                Ok(Output::Rows(batches))
            }
        }
    }

    /// What a prepared statement takes and returns, without running it: parameter types as
    /// the planner infers them and, for statements that return rows, the result columns.
    /// With `params`, describes the statement as bound to them.
    pub async fn describe(
        &self,
        prepared: &Prepared,
        params: Option<&[ScalarValue]>,
    ) -> Result<Description, SqlError> {
        let unknown = Description {
            params: vec![None; prepared.param_count()],
            columns: None,
        };
        let PreparedKind::Statement {
            statement, upsert, ..
        } = &prepared.kind
        else {
            return Ok(unknown);
        };
        let mut statement = statement.clone();
        if let Some(p) = params {
            params::bind(&mut statement, p)?;
        }
        let mut mode = if *upsert {
            InsertMode::Upsert
        } else {
            InsertMode::Insert
        };
        self.rewrite_shows(&mut statement)?;
        let names = result_names_of(&statement);
        self.adapt(&mut statement, &mut mode)?;
        let plannable = match &statement {
            DFStatement::Statement(s) => matches!(
                s.as_ref(),
                ast::Statement::Query(_)
                    | ast::Statement::Insert(_)
                    | ast::Statement::Update(_)
                    | ast::Statement::Delete(_)
                    | ast::Statement::Explain { .. }
            ),
            _ => false,
        };
        if !plannable {
            return Ok(unknown);
        }
        let plan = self.ctx.state().statement_to_plan(statement).await?;
        let mut types = plan.get_parameter_types()?;
        if let (InsertMode::DoUpdateWith(update), LogicalPlan::Dml(dml)) = (&mode, &plan) {
            // Parameters of a computed ON CONFLICT clause are typed by planning the clause.
            let table = self.db.table(&Self::table_name(&dml.table_name)?)?;
            let proposed = RecordBatch::new_empty(Arc::new(dml.input.schema().as_arrow().clone()));
            let clause = update
                .plan(&self.ctx, &dml.table_name, &table.schema(), vec![proposed])
                .await?;
            for (id, t) in clause.get_parameter_types()? {
                let known = types.entry(id).or_insert(None);
                if known.is_none() {
                    *known = t;
                }
            }
        }
        let query = !matches!(
            plan,
            LogicalPlan::Dml(_) | LogicalPlan::Ddl(_) | LogicalPlan::Statement(_)
        );
        if query && prepared.param_count() == 0 {
            *self.described.lock().expect("described plan") =
                Some((prepared.fast.clone(), plan.clone()));
        }
        let casts = params::cast_types(&plan);
        let params = (1..=prepared.param_count())
            .map(|i| {
                let id = format!("${i}");
                types
                    .get(&id)
                    .cloned()
                    .flatten()
                    .or_else(|| casts.get(&id).cloned())
            })
            .collect();
        let columns = match plan {
            LogicalPlan::Dml(_) | LogicalPlan::Ddl(_) | LogicalPlan::Statement(_) => None,
            plan => {
                let columns = Arc::new(plan.schema().as_arrow().clone());
                Some(match names {
                    Some(names) => names.apply(&columns),
                    None => columns,
                })
            }
        };
        Ok(Description { params, columns })
    }

    /// Rewrites a parsed statement into what DataFusion plans: PostgreSQL and Impala
    /// spellings, `ON CONFLICT` and upsert forms (into `mode`), folded `UPDATE ... SET`
    /// targets. Returns the columns an UPDATE sets.
    fn adapt(
        &self,
        statement: &mut DFStatement,
        mode: &mut InsertMode,
    ) -> Result<Vec<String>, SqlError> {
        let mut set_columns = Vec::new();
        // `EXPLAIN [ANALYZE] q` plans `q` with the same PostgreSQL expressions rewritten.
        if let DFStatement::Explain(e) = statement {
            let mut inner = &mut *e.statement;
            while let DFStatement::Explain(e) = inner {
                inner = &mut *e.statement;
            }
            if let DFStatement::Statement(s) = inner {
                crate::colnames::name_function_columns(s);
                crate::pg::rewrite(s);
            }
        }
        if let DFStatement::Statement(s) = statement {
            crate::colnames::name_function_columns(s);
            crate::pg::rewrite(s);
            match s.as_mut() {
                ast::Statement::Insert(insert) => {
                    if insert.replace_into || insert.or == Some(SqliteOnConflict::Replace) {
                        *mode = InsertMode::Upsert;
                        insert.replace_into = false;
                        insert.or = None;
                    }
                    if let Some(on) = insert.on.take() {
                        if let OnInsert::OnConflict(oc) = &on {
                            self.check_conflict_target(&insert.table, oc)?;
                        }
                        // The alias names the existing row in `DO UPDATE`; the rows to
                        // insert do not need it.
                        let target = match insert.table_alias.take() {
                            Some(a) => normalize(&a.alias),
                            None => match &insert.table {
                                ast::TableObject::TableName(name) => last_ident(name),
                                other => other.to_string(),
                            },
                        };
                        *mode = on_conflict_mode(on, target)?;
                    }
                }
                ast::Statement::Update(update) => {
                    // DataFusion's planner takes SET targets verbatim: fold unquoted ones.
                    for a in &mut update.assignments {
                        let names: Vec<&mut ast::ObjectName> = match &mut a.target {
                            AssignmentTarget::ColumnName(n) => vec![n],
                            AssignmentTarget::Tuple(ns) => ns.iter_mut().collect(),
                        };
                        for n in names {
                            for part in &mut n.0 {
                                if let ObjectNamePart::Identifier(i) = part {
                                    if i.quote_style.is_none() {
                                        i.value = i.value.to_ascii_lowercase();
                                    }
                                }
                            }
                        }
                    }
                    set_columns = self.check_update(update)?;
                }
                _ => {}
            }
        }
        Ok(set_columns)
    }

    /// `SHOW TABLES` and `DESCRIBE t` become queries of `information_schema`.
    fn rewrite_shows(&self, statement: &mut DFStatement) -> Result<(), SqlError> {
        let DFStatement::Statement(s) = statement else {
            return Ok(());
        };
        let query = match s.as_ref() {
            ast::Statement::ShowTables { show_options, .. } => show_tables_query(show_options)?,
            ast::Statement::ExplainTable { table_name, .. } => self.describe_query(table_name)?,
            _ => return Ok(()),
        };
        *statement = DFParser::parse_sql_with_dialect(&query, &PostgreSqlDialect {})?
            .pop_front()
            .expect("one statement");
        Ok(())
    }

    /// `ALTER TABLE t ADD [COLUMN] c type ..., DROP [COLUMN] c, RENAME [COLUMN] a TO b,
    /// RENAME TO u`: each operation in turn (each is atomic on its own).
    async fn alter_table(&self, alter: &ast::AlterTable) -> Result<(), SqlError> {
        let mut name = Self::table_name(&TableReference::from(alter.name.to_string()))?;
        if alter.if_exists && self.db.table(&name).is_err() {
            return Ok(());
        }
        for op in &alter.operations {
            let change = match op {
                ast::AlterTableOperation::AddColumn {
                    column_def,
                    if_not_exists,
                    ..
                } => {
                    let column = self.column_from_def(column_def).await?;
                    if *if_not_exists
                        && self
                            .db
                            .table(&name)?
                            .schema()
                            .index_of(&column.name)
                            .is_ok()
                    {
                        continue;
                    }
                    nyala_storage::SchemaChange::AddColumn(column)
                }
                ast::AlterTableOperation::DropColumn {
                    column_names,
                    if_exists,
                    ..
                } => {
                    for c in column_names {
                        let c = normalize(c);
                        if *if_exists && self.db.table(&name)?.schema().index_of(&c).is_err() {
                            continue;
                        }
                        let change = nyala_storage::SchemaChange::DropColumn(c);
                        blocking(|| self.db.alter_table(&name, &change))?;
                    }
                    continue;
                }
                ast::AlterTableOperation::RenameColumn {
                    old_column_name,
                    new_column_name,
                } => nyala_storage::SchemaChange::RenameColumn {
                    from: normalize(old_column_name),
                    to: normalize(new_column_name),
                },
                ast::AlterTableOperation::RenameTable { table_name } => {
                    let (ast::RenameTableNameKind::As(to) | ast::RenameTableNameKind::To(to)) =
                        table_name;
                    let qualified = to.0.len() > 1;
                    let mut to = Self::table_name(&TableReference::from(to.to_string()))?;
                    if !qualified {
                        // As in PostgreSQL, the table stays in its schema.
                        to.namespace = name.namespace.clone();
                    }
                    blocking(|| self.db.rename_table(&name, &to))?;
                    name = to;
                    continue;
                }
                other => return Err(SqlError::Unsupported(format!("ALTER TABLE ... {other}"))),
            };
            blocking(|| self.db.alter_table(&name, &change))?;
        }
        Ok(())
    }

    /// A column definition as the storage engine takes it, typed by DataFusion's planner (so
    /// that `ADD COLUMN` accepts exactly the types and defaults `CREATE TABLE` does).
    async fn column_from_def(&self, def: &ast::ColumnDef) -> Result<ColumnSchema, SqlError> {
        let plan = self
            .ctx
            .state()
            .create_logical_plan(&format!("CREATE TABLE nyala_alter_probe ({def})"))
            .await?;
        let LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(c)) = plan else {
            return Err(SqlError::Unsupported(format!("column definition {def}")));
        };
        let field = c.input.schema().field(0).clone();
        let data_type = storage_type(field.name(), field.data_type())?;
        let mut column = if field.is_nullable() {
            ColumnSchema::nullable(field.name(), data_type)
        } else {
            ColumnSchema::not_null(field.name(), data_type)
        };
        if let Some((_, expr)) = c.column_defaults.first() {
            column.default = Some(match literal_of(expr) {
                Some(v) => default_value(field.name(), data_type, v)?,
                None => {
                    return Err(SqlError::Unsupported(format!(
                        "default of column \"{}\": only constants are supported",
                        field.name()
                    )))
                }
            });
        }
        if !c.constraints.is_empty() {
            return Err(SqlError::Unsupported(
                "constraints on an added column (the primary key cannot change)".into(),
            ));
        }
        Ok(column)
    }

    /// Runs a plan (the rows a write statement writes) as a stream of batches.
    async fn stream(
        &self,
        plan: LogicalPlan,
    ) -> Result<datafusion::physical_plan::SendableRecordBatchStream, SqlError> {
        Ok(self
            .ctx
            .execute_logical_plan(plan)
            .await?
            .execute_stream()
            .await?)
    }

    /// `DESCRIBE t`: one row per column with its SQL type, nullability, default and whether
    /// it is part of the primary key.
    fn describe_query(&self, name: &ast::ObjectName) -> Result<String, SqlError> {
        let name = TableName::parse(&name.to_string())?;
        self.db.table(&name)?;
        let quote = |s: &str| s.replace('\'', "''");
        Ok(format!(
            "SELECT c.column_name, c.data_type, c.is_nullable, c.column_default, \
             CASE WHEN k.column_name IS NULL THEN 'NO' ELSE 'YES' END AS primary_key \
             FROM information_schema.columns c LEFT JOIN information_schema.key_column_usage k \
             ON k.table_schema = c.table_schema AND k.table_name = c.table_name \
             AND k.column_name = c.column_name \
             WHERE c.table_schema = '{}' AND c.table_name = '{}' ORDER BY c.ordinal_position",
            quote(&name.namespace),
            quote(&name.name)
        ))
    }

    /// `ON CONFLICT (cols)` must name the primary key: it is the only unique constraint, so
    /// any other target would never conflict in PostgreSQL either (it would be an error there).
    fn check_conflict_target(
        &self,
        table: &ast::TableObject,
        oc: &ast::OnConflict,
    ) -> Result<(), SqlError> {
        let Some(ast::ConflictTarget::Columns(cols)) = &oc.conflict_target else {
            return Ok(());
        };
        let ast::TableObject::TableName(name) = table else {
            return Ok(());
        };
        let Ok(table) = self
            .db
            .table(&Self::table_name(&TableReference::from(name.to_string()))?)
        else {
            return Ok(()); // the planner reports the unknown table
        };
        let schema = table.schema();
        let mut key: Vec<&str> = schema
            .key_indices()
            .iter()
            .map(|&i| schema.columns()[i].name.as_str())
            .collect();
        let mut target: Vec<String> = cols.iter().map(normalize).collect();
        key.sort_unstable();
        target.sort_unstable();
        if key != target {
            return Err(SqlError::ConflictTarget(format!(
                "there is no unique constraint matching ON CONFLICT ({}): the only one is the primary key ({})",
                target.join(", "),
                key.join(", ")
            )));
        }
        Ok(())
    }

    /// Returns the SET columns.
    /// Refuses assignments to key columns (a key identifies its row; delete and insert to
    /// change it).
    fn check_update(&self, update: &ast::Update) -> Result<Vec<String>, SqlError> {
        let ast::TableFactor::Table { name, .. } = &update.table.relation else {
            return Ok(vec![]);
        };
        let reference = TableReference::from(name.to_string());
        let Ok(table) = self.db.table(&Self::table_name(&reference)?) else {
            return Ok(vec![]); // the planner reports the unknown table
        };
        let schema = table.schema();
        let mut set = Vec::new();
        for a in &update.assignments {
            let names: Vec<&ast::ObjectName> = match &a.target {
                AssignmentTarget::ColumnName(n) => vec![n],
                AssignmentTarget::Tuple(ns) => ns.iter().collect(),
            };
            for n in names {
                let column = last_ident(n);
                set.push(column.clone());
                if let Ok(i) = schema.index_of(&column) {
                    if schema.is_key(i) {
                        return Err(SqlError::Storage(
                            nyala_common::SchemaError::KeyColumnChange {
                                column,
                                change: "updated".into(),
                            }
                            .into(),
                        ));
                    }
                }
            }
        }
        Ok(set)
    }

    /// Runs INSERT (in every mode), UPDATE and DELETE: the rows come from the statement's
    /// input plan (for UPDATE and DELETE, a scan of the table at this statement's snapshot with
    /// the WHERE clause applied; for UPDATE, with the new values) and are written in batches.
    async fn write(
        &self,
        dml: DmlStatement,
        mode: InsertMode,
        set_columns: Vec<String>,
    ) -> Result<u64, SqlError> {
        let table = self.db.table(&Self::table_name(&dml.table_name)?)?;
        let schema = table.schema();
        let input = Arc::unwrap_or_clone(dml.input);
        let (input, op) = match &dml.op {
            DmlOp::Insert(datafusion::logical_expr::dml::InsertOp::Overwrite) => {
                return Err(SqlError::Unsupported(
                    "INSERT OVERWRITE; use DELETE, then INSERT".into(),
                ))
            }
            DmlOp::Insert(_) => (input, None),
            DmlOp::Update => {
                // Only the key and the SET columns: writing the other columns back from this
                // statement's snapshot would undo concurrent updates of them.
                let mut keep: Vec<Expr> = schema
                    .key_indices()
                    .iter()
                    .map(|&i| key_col(&schema.columns()[i].name))
                    .collect();
                keep.extend(set_columns.iter().map(|c| key_col(c)));
                let input = LogicalPlanBuilder::from(input).project(keep)?.build()?;
                (input, Some(WriteOp::UpdateIgnore))
            }
            DmlOp::Delete => {
                let keys: Vec<Expr> = schema
                    .key_indices()
                    .iter()
                    .map(|&i| key_col(&schema.columns()[i].name))
                    .collect();
                let input = LogicalPlanBuilder::from(input).project(keys)?.build()?;
                (input, Some(WriteOp::DeleteIgnore))
            }
            other => return Err(SqlError::Unsupported(format!("{other}"))),
        };
        // UPDATE, DELETE and computed upserts write what they read: one at a time per table,
        // each reading what is committed once it is its turn.
        let _turn = if op.is_some() || matches!(mode, InsertMode::DoUpdateWith(_)) {
            let turn = crate::turns::read_write_turn(&table.name().to_string()).await;
            self.ctx
                .state_ref()
                .write()
                .config_mut()
                .set_extension(Arc::new(StatementSnapshot(self.db.snapshot_timestamp())));
            Some(turn)
        } else {
            None
        };
        let mut stream = self.stream(input).await?;
        let mut count = 0u64;
        if op.is_none() && matches!(mode, InsertMode::Insert) {
            return self.insert_all_or_nothing(&table, stream).await;
        }
        if let (InsertMode::DoUpdateWith(update), None) = (&mode, op) {
            let mut batches = Vec::new();
            while let Some(batch) = stream.next().await {
                batches.push(batch?);
            }
            check_distinct_keys(&schema, &batches)?;
            return self
                .insert_or_update(&table, &dml.table_name, update, batches)
                .await;
        }
        if matches!(mode, InsertMode::DoUpdate(_)) && op.is_none() {
            // As in PostgreSQL, a DO UPDATE may not touch a row twice: check every key of the
            // statement before writing any.
            let mut batches = Vec::new();
            while let Some(batch) = stream.next().await {
                batches.push(batch?);
            }
            check_distinct_keys(&schema, &batches)?;
            for batch in batches.into_iter().filter(|b| b.num_rows() > 0) {
                count += self.insert_batch(&table, &mode, batch).await?;
            }
            return Ok(count);
        }
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            if batch.num_rows() == 0 {
                continue;
            }
            count += match op {
                Some(op) => write_batch(&table, op, batch).await?,
                None => self.insert_batch(&table, &mode, batch).await?,
            };
        }
        Ok(count)
    }

    /// `INSERT ... ON CONFLICT DO UPDATE SET c = <expression>` (see [`crate::conflict`]): the
    /// count of rows inserted and rows updated.
    async fn insert_or_update(
        &self,
        table: &Table,
        table_ref: &TableReference,
        update: &crate::conflict::ConflictUpdate,
        batches: Vec<RecordBatch>,
    ) -> Result<u64, SqlError> {
        let schema = table.schema();
        update.check(&schema)?;
        let Some(first) = batches.first() else {
            return Ok(0);
        };
        let dry_run = update
            .plan(
                &self.ctx,
                table_ref,
                &schema,
                vec![RecordBatch::new_empty(first.schema())],
            )
            .await?;
        self.ctx.state().create_physical_plan(&dry_run).await?;
        let mut inserted: Vec<RecordBatch> = Vec::new();
        let result: Result<u64, SqlError> = async {
            let mut count = 0u64;
            let mut existing = Vec::new();
            for batch in batches.into_iter().filter(|b| b.num_rows() > 0) {
                let outcome =
                    write_outcome(table, WriteBatch::uniform(WriteOp::Insert, batch.clone()))
                        .await?;
                count += outcome.applied as u64;
                let mut met = Vec::new();
                let mut failed = None;
                for e in &outcome.errors {
                    match e.kind {
                        nyala_storage::RowErrorKind::DuplicateKey => met.push(e.row as u32),
                        _ => failed = failed.or(Some(e.clone())),
                    }
                }
                let not_applied: HashSet<u32> =
                    outcome.errors.iter().map(|e| e.row as u32).collect();
                inserted.push(applied_keys(&schema, &batch, &not_applied)?);
                if let Some(e) = failed {
                    return Err(SqlError::Row(RowFailure(e).0));
                }
                if !met.is_empty() {
                    met.sort_unstable();
                    existing.push(arrow::compute::take_record_batch(
                        &batch,
                        &UInt32Array::from(met),
                    )?);
                }
            }
            if existing.is_empty() {
                return Ok(count);
            }
            // The existing rows as committed now (not at the statement's start): PostgreSQL's
            // ON CONFLICT too updates the row version that conflicted.
            self.ctx
                .state_ref()
                .write()
                .config_mut()
                .set_extension(Arc::new(StatementSnapshot(self.db.snapshot_timestamp())));
            let plan = update.plan(&self.ctx, table_ref, &schema, existing).await?;
            let mut updates = Vec::new();
            let mut stream = self.stream(plan).await?;
            while let Some(batch) = stream.next().await {
                updates.push(batch?);
            }
            // One write: a problem of the batch as a whole rejects every update at once.
            if let Some(first) = updates.first() {
                let batch = arrow::compute::concat_batches(&first.schema(), &updates)?;
                if batch.num_rows() > 0 {
                    count += write_batch(table, WriteOp::UpdateIgnore, batch).await?;
                }
            }
            Ok(count)
        }
        .await;
        if result.is_err() {
            // As a failed INSERT: the rows this statement inserted go again.
            undo_inserts(table, inserted).await;
        }
        result
    }

    /// A plain INSERT, as in PostgreSQL: if any row fails (a duplicate key), the rows this
    /// statement already wrote are deleted again and the statement fails. (Each batch is
    /// visible as it is written, and a crash during the undo can leave part of the statement:
    /// the end state is all-or-nothing, the path to it is not.)
    async fn insert_all_or_nothing(
        &self,
        table: &Table,
        mut stream: datafusion::physical_plan::SendableRecordBatchStream,
    ) -> Result<u64, SqlError> {
        let schema = table.schema();
        let mut written: Vec<RecordBatch> = Vec::new();
        let mut count = 0u64;
        let result: Result<(), SqlError> = async {
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                if batch.num_rows() == 0 {
                    continue;
                }
                let outcome =
                    write_outcome(table, WriteBatch::uniform(WriteOp::Insert, batch.clone()))
                        .await?;
                count += outcome.applied as u64;
                let failed: HashSet<u32> = outcome.errors.iter().map(|e| e.row as u32).collect();
                written.push(applied_keys(&schema, &batch, &failed)?);
                if let Some(first) = outcome.errors.into_iter().next() {
                    return Err(SqlError::Row(first));
                }
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => Ok(count),
            Err(e) => {
                undo_inserts(table, written).await;
                Err(e)
            }
        }
    }

    async fn insert_batch(
        &self,
        table: &Table,
        mode: &InsertMode,
        batch: RecordBatch,
    ) -> Result<u64, SqlError> {
        match mode {
            InsertMode::Insert => write_batch(table, WriteOp::Insert, batch).await,
            InsertMode::Upsert => write_batch(table, WriteOp::Upsert, batch).await,
            InsertMode::DoNothing => write_batch(table, WriteOp::InsertIgnore, batch).await,
            // `write` runs these through `insert_or_update`.
            InsertMode::DoUpdateWith(_) => Err(SqlError::DataFusion(
                datafusion::error::DataFusionError::Internal(
                    "a computed ON CONFLICT update batch by batch".into(),
                ),
            )),
            InsertMode::DoUpdate(columns) => {
                // New keys get the whole row; existing ones only the SET columns (with the
                // values the row would have been inserted with, i.e. EXCLUDED's).
                let n = batch.num_rows() as u64;
                for c in columns {
                    if batch.schema().index_of(c).is_err() {
                        return Err(SqlError::Storage(
                            nyala_common::SchemaError::UnknownColumn(c.clone()).into(),
                        ));
                    }
                }
                let batch = WriteBatch::uniform(WriteOp::Upsert, batch)
                    .with_upsert_columns(columns.iter().cloned())?;
                let outcome = write_outcome(table, batch).await?;
                if let Some(e) = outcome.errors.into_iter().next() {
                    return Err(SqlError::Row(RowFailure(e).0));
                }
                Ok(n)
            }
        }
    }

    fn table_name(reference: &TableReference) -> Result<TableName, SqlError> {
        if let Some(catalog) = reference.catalog() {
            if catalog != CATALOG {
                return Err(SqlError::Unsupported(format!(
                    "database \"{catalog}\": there is one database, \"{CATALOG}\""
                )));
            }
        }
        Ok(TableName::new(
            reference.schema().unwrap_or(DEFAULT_NAMESPACE),
            reference.table(),
        ))
    }

    /// `ALTER TABLE t ADD|DROP RANGE PARTITION ...`.
    fn change_range(&self, change: RangeChange) -> Result<(), SqlError> {
        let name = Self::table_name(&TableReference::from(change.table.as_str()))?;
        let table = self.db.table(&name)?;
        let schema = table.schema();
        let column = table
            .describe()
            .partitioning
            .range
            .map(|r| r.column)
            .ok_or_else(|| {
                SqlError::Storage(nyala_storage::StorageError::InvalidInput(format!(
                    "table {name} has no range partitioning"
                )))
            })?;
        let bounds = range_bounds(&schema, &column, &change.range)?;
        if change.add {
            self.db.add_range_partition(&name, &bounds)?;
        } else {
            self.db.drop_range_partition(&name, &bounds)?;
        }
        Ok(())
    }

    /// Creates the table; `false` if it existed and `IF NOT EXISTS` was given.
    fn create_table(
        &self,
        c: &CreateMemoryTable,
        partitioning: Option<RawPartitioning>,
    ) -> Result<bool, SqlError> {
        if c.or_replace || c.temporary {
            return Err(SqlError::Unsupported(
                "CREATE OR REPLACE / TEMPORARY tables".into(),
            ));
        }
        let name = Self::table_name(&c.name)?;
        let fields = c.input.schema().fields();
        let mut key: Vec<usize> = Vec::new();
        for constraint in c.constraints.iter() {
            match constraint {
                Constraint::PrimaryKey(cols) if key.is_empty() => key = cols.clone(),
                Constraint::PrimaryKey(_) => {
                    return Err(SqlError::Unsupported("more than one primary key".into()))
                }
                Constraint::Unique(_) => {
                    return Err(SqlError::Unsupported(
                        "UNIQUE constraints (only the primary key is unique)".into(),
                    ))
                }
            }
        }
        if key.is_empty() {
            return Err(SqlError::Storage(
                nyala_common::SchemaError::NoPrimaryKey.into(),
            ));
        }
        let name_exists = self.db.table(&name).is_ok();
        let mut columns = Vec::with_capacity(fields.len());
        for (i, f) in fields.iter().enumerate() {
            let data_type = storage_type(f.name(), f.data_type())?;
            // As in PostgreSQL, primary key columns are NOT NULL without saying so.
            let mut col = if f.is_nullable() && !key.contains(&i) {
                ColumnSchema::nullable(f.name(), data_type)
            } else {
                ColumnSchema::not_null(f.name(), data_type)
            };
            if let Some((_, expr)) = c.column_defaults.iter().find(|(n, _)| n == f.name()) {
                col.default = Some(match literal_of(expr) {
                    Some(v) => default_value(f.name(), data_type, v)?,
                    None => {
                        return Err(SqlError::Unsupported(format!(
                            "default of column \"{}\": only constants are supported",
                            f.name()
                        )))
                    }
                });
            }
            columns.push(col);
        }
        let key_names: Vec<&str> = key.iter().map(|&i| fields[i].name().as_str()).collect();
        let schema = Schema::new(columns, &key_names)?;
        let spec = match partitioning {
            // Without a partition clause: hash the leading key column over one tablet per core.
            None => {
                let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as u32;
                PartitionSpec::hash([key_names[0]], cores)
            }
            Some(p) => {
                let mut spec = match p.hash {
                    Some((cols, n)) => PartitionSpec::hash(cols, n),
                    None => PartitionSpec::default(),
                };
                if let Some((column, ranges)) = p.range {
                    let bounds = ranges
                        .iter()
                        .map(|r| range_bounds(&schema, &column, r))
                        .collect::<Result<Vec<_>, _>>()?;
                    spec = spec.with_range(column, bounds);
                }
                spec
            }
        };
        let if_exists = if c.if_not_exists {
            IfExists::Skip
        } else {
            IfExists::Error
        };
        self.db.create_table(&name, &schema, &spec, if_exists)?;
        Ok(!name_exists)
    }

    fn drop_table(&self, d: &DropTable) -> Result<(), SqlError> {
        let name = Self::table_name(&d.name)?;
        let if_exists = if d.if_exists {
            IfExists::Skip
        } else {
            IfExists::Error
        };
        self.db.drop_table(&name, if_exists)?;
        Ok(())
    }
}

/// A written range partition as bounds of the range column's type.
fn range_bounds(
    schema: &Schema,
    column: &str,
    range: &RawRange,
) -> Result<nyala_storage::RangeBounds, SqlError> {
    let col = &schema.columns()[schema.index_of(column)?];
    let convert = |v: &Option<datafusion::common::ScalarValue>| -> Result<_, SqlError> {
        v.as_ref()
            .map(|v| {
                let cast = v.cast_to(&col.data_type.to_arrow()).map_err(|e| {
                    SqlError::Unsupported(format!(
                        "range bound {v} for column \"{column}\" of type {}: {e}",
                        col.data_type
                    ))
                })?;
                default_value(column, col.data_type, &cast)
            })
            .transpose()
    };
    Ok(nyala_storage::RangeBounds {
        lower: convert(&range.lower)?,
        upper: convert(&range.upper)?,
    })
}

/// The constant of a (possibly cast) literal expression.
fn literal_of(e: &Expr) -> Option<&datafusion::common::ScalarValue> {
    match e {
        Expr::Literal(v, _) => Some(v),
        Expr::Cast(c) => literal_of(&c.expr),
        Expr::TryCast(c) => literal_of(&c.expr),
        _ => None,
    }
}

/// Runs blocking storage work (DDL: fsyncs, flushes) without stalling the runtime's other
/// tasks: on a multi-threaded runtime the worker hands its tasks to others first.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Fails if two rows of `batches` have the same key.
fn check_distinct_keys(schema: &Schema, batches: &[RecordBatch]) -> Result<(), SqlError> {
    let fields = schema
        .key_indices()
        .iter()
        .map(|&i| arrow::row::SortField::new(schema.columns()[i].data_type.to_arrow()))
        .collect();
    let converter = arrow::row::RowConverter::new(fields)?;
    let mut seen = HashSet::new();
    for batch in batches {
        let cols = schema
            .key_indices()
            .iter()
            .map(|&i| {
                let c = batch.column(batch.schema().index_of(&schema.columns()[i].name)?);
                Ok(arrow::compute::cast(
                    c,
                    &schema.columns()[i].data_type.to_arrow(),
                )?)
            })
            .collect::<Result<Vec<_>, SqlError>>()?;
        for row in converter.convert_columns(&cols)?.iter() {
            if !seen.insert(row.as_ref().to_vec()) {
                return Err(SqlError::Cardinality(
                    "ON CONFLICT DO UPDATE command cannot affect row a second time: the \
                     statement proposes two rows with the same key"
                        .into(),
                ));
            }
        }
    }
    Ok(())
}

/// The one-row `count` result of a write statement.
fn count_batch(count: u64) -> Result<RecordBatch, SqlError> {
    let schema = Arc::new(ArrowSchema::new(vec![Field::new(
        "count",
        ArrowType::UInt64,
        false,
    )]));
    Ok(RecordBatch::try_new(
        schema,
        vec![Arc::new(UInt64Array::from(vec![count]))],
    )?)
}

/// A query's batch with the table's column names and types (a CTAS query may name them
/// differently, e.g. `count(*)`, and type them differently, e.g. nanosecond timestamps).
fn relabel(table: &Table, batch: RecordBatch) -> Result<RecordBatch, SqlError> {
    let schema = table.schema();
    if batch.num_columns() != schema.len() {
        return Err(SqlError::Unsupported(format!(
            "the query has {} columns, the table {}",
            batch.num_columns(),
            schema.len()
        )));
    }
    // Cast to the stored types (e.g. nanosecond timestamps to microseconds UTC).
    let mut fields = Vec::with_capacity(schema.len());
    let mut columns = Vec::with_capacity(schema.len());
    for (c, array) in schema.columns().iter().zip(batch.columns()) {
        let t = c.data_type.to_arrow();
        let options = arrow::compute::CastOptions {
            safe: false,
            ..Default::default()
        };
        columns.push(arrow::compute::cast_with_options(array, &t, &options)?);
        fields.push(Field::new(&c.name, t, true));
    }
    Ok(RecordBatch::try_new(
        Arc::new(ArrowSchema::new(fields)),
        columns,
    )?)
}

/// Text columns read as `schema`'s types (see [`Engine::copy_in`]).
fn text_batch(schema: &Arc<ArrowSchema>, columns: Vec<ArrayRef>) -> Result<RecordBatch, SqlError> {
    if columns.len() != schema.fields().len() {
        return Err(SqlError::InvalidText(format!(
            "a row has {} values for {} columns",
            columns.len(),
            schema.fields().len()
        )));
    }
    let options = arrow::compute::CastOptions {
        safe: false,
        ..Default::default()
    };
    let mut out = Vec::with_capacity(columns.len());
    for (f, c) in schema.fields().iter().zip(columns) {
        let column = if matches!(f.data_type(), ArrowType::Binary) {
            let text = arrow::compute::cast(&c, &ArrowType::Utf8)?;
            let mut b = arrow::array::BinaryBuilder::new();
            for v in text.as_string::<i32>().iter() {
                match v {
                    Some(v) => {
                        b.append_value(crate::bytea::decode(v).map_err(SqlError::InvalidText)?)
                    }
                    None => b.append_null(),
                }
            }
            Arc::new(b.finish()) as ArrayRef
        } else {
            arrow::compute::cast_with_options(&c, f.data_type(), &options)
                .map_err(|e| SqlError::InvalidText(format!("column \"{}\": {e}", f.name())))?
        };
        out.push(column);
    }
    Ok(RecordBatch::try_new(schema.clone(), out)?)
}

/// How an INSERT treats keys that exist already.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum InsertMode {
    /// Fail (PostgreSQL's unique violation).
    Insert,
    /// Replace the row (`UPSERT INTO`, `INSERT OR REPLACE`, `REPLACE INTO`).
    Upsert,
    /// Skip the row (`ON CONFLICT DO NOTHING`).
    DoNothing,
    /// Update these columns of the existing row (`ON CONFLICT DO UPDATE SET c = EXCLUDED.c`).
    DoUpdate(Vec<String>),
    /// Update the existing row with values computed from it and the proposed one
    /// (`ON CONFLICT DO UPDATE SET c = <expression> [WHERE ...]`).
    DoUpdateWith(Box<crate::conflict::ConflictUpdate>),
}

/// PostgreSQL's result column names for a query (see [`crate::colnames`]), from the statement
/// as written: before the compatibility rewrites change its function calls.
fn result_names_of(statement: &DFStatement) -> Option<crate::colnames::ResultNames> {
    match statement {
        DFStatement::Statement(s) => crate::colnames::result_names(s),
        _ => None,
    }
}

/// The mode of an `ON CONFLICT` clause of an INSERT into a table called `target` in its
/// expressions. The conflict target, if given, is the primary key (the only unique
/// constraint).
fn on_conflict_mode(on: OnInsert, target: String) -> Result<InsertMode, SqlError> {
    let OnInsert::OnConflict(oc) = on else {
        return Err(SqlError::Unsupported(
            "ON DUPLICATE KEY UPDATE; use ON CONFLICT (key) DO UPDATE".into(),
        ));
    };
    match oc.action {
        OnConflictAction::DoNothing => Ok(InsertMode::DoNothing),
        OnConflictAction::DoUpdate(du) => {
            let mut assignments = Vec::new();
            for a in du.assignments {
                let AssignmentTarget::ColumnName(column) = &a.target else {
                    return Err(SqlError::Unsupported(
                        "tuple assignments in ON CONFLICT".into(),
                    ));
                };
                assignments.push((last_ident(column), a.value));
            }
            // `SET c = EXCLUDED.c` only: the storage engine's atomic partial upsert.
            let plain = du.selection.is_none()
                && assignments.iter().all(|(column, value)| match value {
                    ast::Expr::CompoundIdentifier(parts) if parts.len() == 2 => {
                        normalize(&parts[0]) == "excluded" && normalize(&parts[1]) == *column
                    }
                    _ => false,
                });
            Ok(if plain {
                InsertMode::DoUpdate(assignments.into_iter().map(|(c, _)| c).collect())
            } else {
                InsertMode::DoUpdateWith(Box::new(crate::conflict::ConflictUpdate::new(
                    assignments,
                    du.selection,
                    target,
                )))
            })
        }
    }
}

/// `SHOW TABLES [FROM|IN ns] [LIKE 'p' | WHERE cond]` (Impala's form): the names of the
/// namespace's tables (the current one, `public`, by default) in one column, `name`.
fn show_tables_query(options: &ast::ShowStatementOptions) -> Result<String, SqlError> {
    let namespace = match options
        .show_in
        .as_ref()
        .and_then(|i| i.parent_name.as_ref())
    {
        Some(n) => last_ident(n),
        None => DEFAULT_NAMESPACE.to_string(),
    };
    let mut query = format!(
        "SELECT name FROM (SELECT table_name AS name FROM information_schema.tables \
         WHERE table_schema = '{}' AND table_type = 'BASE TABLE')",
        namespace.replace('\'', "''")
    );
    match &options.filter_position {
        None => {}
        Some(
            ast::ShowStatementFilterPosition::Infix(f)
            | ast::ShowStatementFilterPosition::Suffix(f),
        ) => match f {
            ast::ShowStatementFilter::Like(p) => {
                query += &format!(" WHERE name LIKE '{}'", p.replace('\'', "''"))
            }
            ast::ShowStatementFilter::ILike(p) => {
                query += &format!(" WHERE name ILIKE '{}'", p.replace('\'', "''"))
            }
            ast::ShowStatementFilter::Where(e) => query += &format!(" WHERE {e}"),
            other => {
                return Err(SqlError::Unsupported(format!("SHOW TABLES {other}")));
            }
        },
    }
    if options.starts_with.is_some() || options.limit.is_some() {
        return Err(SqlError::Unsupported(
            "SHOW TABLES with STARTS WITH or LIMIT".into(),
        ));
    }
    Ok(query + " ORDER BY name")
}

/// An identifier as SQL means it: unquoted ones fold to lower case (ASCII only, as
/// DataFusion's planner does).
pub(crate) fn normalize(ident: &ast::Ident) -> String {
    match ident.quote_style {
        Some(_) => ident.value.clone(),
        None => ident.value.to_ascii_lowercase(),
    }
}

/// A column by its exact name (no re-parsing: names may have capitals or dots).
fn key_col(name: &str) -> Expr {
    Expr::Column(datafusion::common::Column::new_unqualified(name))
}

fn last_ident(name: &ast::ObjectName) -> String {
    match name.0.last() {
        Some(ObjectNamePart::Identifier(i)) => normalize(i),
        _ => name.to_string(),
    }
}

/// The key columns of the rows of `batch` not in `failed`: what undoing its insert deletes.
fn applied_keys(
    schema: &Schema,
    batch: &RecordBatch,
    failed: &HashSet<u32>,
) -> Result<RecordBatch, SqlError> {
    let key_pos = schema
        .key_indices()
        .iter()
        .map(|&i| batch.schema().index_of(&schema.columns()[i].name))
        .collect::<Result<Vec<_>, _>>()?;
    let keys = batch.project(&key_pos)?;
    if failed.is_empty() {
        return Ok(keys);
    }
    let applied: Vec<u32> = (0..batch.num_rows() as u32)
        .filter(|r| !failed.contains(r))
        .collect();
    Ok(arrow::compute::take_record_batch(
        &keys,
        &UInt32Array::from(applied),
    )?)
}

/// Deletes the rows of `keys` (key columns only) that a failing statement inserted.
async fn undo_inserts(table: &Table, keys: Vec<RecordBatch>) {
    for keys in keys.into_iter().filter(|k| k.num_rows() > 0) {
        if let Err(undo) = write_batch(table, WriteOp::DeleteIgnore, keys).await {
            tracing::error!(error = %undo, "could not undo part of a failed INSERT");
        }
    }
}

/// Writes one batch and returns what happened to each row.
pub(crate) async fn write_outcome(
    table: &Table,
    batch: WriteBatch,
) -> Result<nyala_storage::WriteOutcome, SqlError> {
    let table = table.clone();
    Ok(tokio::task::spawn_blocking(move || table.write(&batch))
        .await
        .map_err(|e| {
            SqlError::DataFusion(datafusion::error::DataFusionError::External(Box::new(e)))
        })??)
}

/// Writes one batch with one operation; a refused row fails the statement.
async fn write_batch(table: &Table, op: WriteOp, batch: RecordBatch) -> Result<u64, SqlError> {
    let outcome = write_outcome(table, WriteBatch::uniform(op, batch)).await?;
    if let Some(e) = outcome.errors.into_iter().next() {
        return Err(SqlError::Row(RowFailure(e).0));
    }
    Ok(outcome.applied as u64)
}
