//! PostgreSQL's system catalog for the tools that reflect a database through it (psql's `\d`,
//! SQLAlchemy's inspector, BI tools): the `pg_catalog` schema, the functions those tools call
//! (`format_type`, `pg_get_expr`, `current_schema`, `pg_table_is_visible`, ...) and the
//! rewrites that let DataFusion plan their queries (`::regclass` casts, `OPERATOR(...)`,
//! `= ANY(array)`, `COLLATE`, known psql queries), from the `datafusion-pg-catalog` crate.
//!
//! Nyala adds what that crate cannot know: the primary keys (`pg_constraint` and `pg_index`
//! rows for each table, joined to the crate's `pg_class` by its OIDs), and `version()`
//! answering as PostgreSQL does, which client libraries parse.
//!
//! The catalog reads the database (not the session's catalog list): a session's catalog
//! holds `pg_catalog`, so reading back through the session would make a reference cycle
//! and keep every closed session (and the database) alive.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use arrow::array::{
    new_null_array, Array, ArrayRef, AsArray, BooleanArray, Int16Builder, Int64Array, ListBuilder,
    RecordBatch, StringArray,
};
use arrow::compute::cast;
use arrow_schema::{DataType as ArrowType, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{SchemaProvider, Session, TableProvider};
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::datasource::{MemTable, TableType};
use datafusion::error::Result;
use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::physical_plan::ExecutionPlan;
use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    visit_expressions_mut, Expr as SqlExpr, GroupByExpr, SelectItem, SetExpr, Statement,
    Value as SqlValue,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion_pg_catalog::pg_catalog::catalog_info::CatalogInfo;
use datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_pg_catalog::pg_catalog::{
    self as lib, PgCatalogSchemaProvider, PgCatalogStaticTables, PgCatalogTable,
};
use datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use futures::TryStreamExt;

use nyala_storage::{Database, TableName};

use crate::catalog::CATALOG;
use crate::error::SqlError;
use crate::provider::NyalaTable;
use crate::system::INFORMATION_SCHEMA;

/// The PostgreSQL release Nyala answers as: the SQL dialect and catalog it follows. Clients
/// parse `version()` and the `server_version` startup parameter for it.
pub const POSTGRES_VERSION: &str = "16.6";

/// The schema's name.
const PG_CATALOG: &str = "pg_catalog";

/// The sessions view (see [`crate::activity`]).
const PG_STAT_ACTIVITY: &str = "pg_stat_activity";

/// `version()`, as PostgreSQL formats it (SQLAlchemy matches `PostgreSQL (\d+)\.(\d+)`).
pub fn version_string() -> String {
    format!(
        "PostgreSQL {POSTGRES_VERSION} (Nyala {}) on {}-linux, 64-bit",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH
    )
}

/// PostgreSQL's own catalog rows (types, functions, access methods, ...), decoded once per
/// process and shared by every session.
static STATIC_TABLES: LazyLock<std::result::Result<Arc<PgCatalogStaticTables>, String>> =
    LazyLock::new(|| {
        PgCatalogStaticTables::try_new()
            .map(Arc::new)
            .map_err(|e| e.to_string())
    });

/// Installs `pg_catalog`, its functions and `version()` in a session over `db`.
pub(crate) fn install(
    ctx: &SessionContext,
    db: &Arc<Database>,
    activity: Arc<std::sync::OnceLock<Arc<crate::activity::Backends>>>,
) -> Result<(), SqlError> {
    let statics = STATIC_TABLES
        .as_ref()
        .map_err(|e| SqlError::DataFusion(DataFusionError::Internal(e.clone())))?
        .clone();
    let inner = PgCatalogSchemaProvider::try_new(
        DbCatalogInfo { db: db.clone() },
        statics.clone(),
        EmptyContextProvider,
    )?;
    let schema = Arc::new(PgCatalogSchema {
        inner: Arc::new(inner),
        db: db.clone(),
        statics: statics.clone(),
        activity,
    });
    ctx.catalog(CATALOG)
        .expect("the session's catalog is registered first")
        .register_schema(PG_CATALOG, schema)?;

    // The functions `setup_pg_catalog` registers (it would also register a catalog reading
    // the session's catalog list: see the module docs).
    ctx.register_udf(lib::create_current_database_udf(CATALOG));
    ctx.register_udf(lib::create_current_schema_udf());
    ctx.register_udf(lib::create_current_schemas_udf());
    ctx.register_udf(lib::create_pg_get_userbyid_udf());
    for name in [
        "has_table_privilege",
        "has_schema_privilege",
        "has_database_privilege",
        "has_any_column_privilege",
    ] {
        ctx.register_udf(lib::has_privilege_udf::create_has_privilege_udf(name));
    }
    ctx.register_udf(lib::create_pg_table_is_visible());
    ctx.register_udf(lib::format_type::create_format_type_udf());
    ctx.register_udf(lib::create_session_user_udf());
    ctx.register_udtf("pg_get_keywords", statics.pg_get_keywords.clone());
    ctx.register_udf(lib::pg_get_expr_udf::create_pg_get_expr_udf());
    ctx.register_udf(lib::create_pg_get_partkeydef_udf());
    ctx.register_udf(lib::create_pg_relation_is_publishable_udf());
    ctx.register_udf(lib::create_pg_get_statisticsobjdef_columns_udf());
    ctx.register_udf(lib::create_pg_encoding_to_char_udf());
    ctx.register_udf(lib::create_pg_backend_pid_udf());
    ctx.register_udf(lib::create_pg_relation_size_udf());
    ctx.register_udf(lib::create_pg_total_relation_size_udf());
    ctx.register_udf(lib::create_pg_stat_get_numscans());
    ctx.register_udf(lib::create_pg_get_constraintdef());
    ctx.register_udf(lib::create_pg_get_partition_ancestors_udf());
    ctx.register_udf(lib::quote_ident_udf::create_quote_ident_udf());
    ctx.register_udf(lib::quote_ident_udf::create_parse_ident_udf());
    ctx.register_udf(lib::array_bounds_udf::create_array_upper_udf());
    ctx.register_udf(lib::array_bounds_udf::create_array_lower_udf());
    {
        use datafusion::execution::session_state::SessionStateBuilder;
        let state = ctx.state_ref();
        let existing = state.read().clone();
        let new_state = SessionStateBuilder::new_from_existing(existing)
            .with_type_planner(Arc::new(lib::oid_type_planner::PgOidTypePlanner))
            .build();
        *state.write() = new_state;
    }
    lib::generate_series_arg_coercion::CoerceIntArgsToBigInt::widen(ctx);
    ctx.register_udf(ScalarUDF::new_from_impl(Version::new()));
    ctx.register_udf(ScalarUDF::new_from_impl(JsonBuildObject::new()));
    ctx.register_udf(ScalarUDF::new_from_impl(CurrentSetting::new()));
    // No sequences, no views, no index expressions, no user-defined types.
    for name in [
        "pg_get_serial_sequence",
        "pg_get_indexdef",
        "pg_get_viewdef",
        "to_regtype",
    ] {
        ctx.register_udf(ScalarUDF::new_from_impl(NullText::new(name)));
    }
    ctx.register_udf(ScalarUDF::new_from_impl(Visible::new("pg_type_is_visible")));
    // SQLAlchemy 2.1's column reflection asks whether a column's collation is visible.
    ctx.register_udf(ScalarUDF::new_from_impl(Visible::new(
        "pg_collation_is_visible",
    )));
    Ok(())
}

/// The rewrite rules and known-query substitutions, built once (they hold parsed token
/// patterns).
static COMPAT: LazyLock<PostgresCompatibilityParser> =
    LazyLock::new(PostgresCompatibilityParser::new);

/// Parses a catalog query (one that names `pg_...`) with the compatibility parser: its rules
/// (`::regclass`, `OPERATOR(...)`, `= ANY(array)`, ...) and its substitutions of known client
/// queries DataFusion cannot plan. Only catalog queries: some rules trade exactness for
/// plannability (a select-list subquery DataFusion cannot run becomes NULL), which is right
/// for a tool's catalog probe and wrong for a user's query.
/// `None` if it does not parse that way (the normal parser then reports the error).
pub(crate) fn parse_catalog_query(sql: &str) -> Option<Vec<Statement>> {
    if !sql.to_ascii_lowercase().contains("pg_") {
        return None;
    }
    let mut statements = COMPAT.parse(sql).ok()?;
    for s in &mut statements {
        // PostgreSQL finds pg_catalog's tables without the schema; the crate's rule knows
        // only its own tables.
        let _ = datafusion::sql::sqlparser::ast::visit_relations_mut(s, |name| {
            if name.0.len() == 1 && name.to_string().eq_ignore_ascii_case(PG_STAT_ACTIVITY) {
                name.0.insert(
                    0,
                    datafusion::sql::sqlparser::ast::ObjectNamePart::Identifier(
                        datafusion::sql::sqlparser::ast::Ident::new(PG_CATALOG),
                    ),
                );
            }
            ControlFlow::<()>::Continue(())
        });
        let _ = visit_expressions_mut(s, |e| {
            sequence_lookup(e);
            aggregate_scalar_subquery(e);
            generate_subscripts(e);
            case_of_subquery(e);
            ControlFlow::<()>::Continue(())
        });
    }
    Some(statements)
}

/// `generate_subscripts(a, 1)` (the positions of an array's elements, as rows beside
/// `unnest(a)`) becomes `unnest(range(1, array_length(a) + 1))`, which DataFusion zips
/// with the other `unnest` of the same projection as PostgreSQL does.
fn generate_subscripts(e: &mut SqlExpr) {
    let SqlExpr::Function(f) = e else { return };
    if !f
        .name
        .to_string()
        .eq_ignore_ascii_case("generate_subscripts")
    {
        return;
    }
    let datafusion::sql::sqlparser::ast::FunctionArguments::List(list) = &f.args else {
        return;
    };
    let Some(array) = list.args.first() else {
        return;
    };
    let sql = format!("unnest(range(1, CAST(array_length({array}) AS BIGINT) + 1))");
    if let Ok(new) = Parser::new(&PostgreSqlDialect {})
        .try_with_sql(&sql)
        .and_then(|mut p| p.parse_expr())
    {
        *e = new;
    }
}

/// Aggregate functions a scalar subquery may already project.
const AGGREGATES: [&str; 12] = [
    "count",
    "sum",
    "min",
    "max",
    "avg",
    "array_agg",
    "string_agg",
    "bool_and",
    "bool_or",
    "first_value",
    "last_value",
    "json_agg",
];

/// `CASE WHEN c THEN (SELECT ...) [ELSE NULL] END`, as SQLAlchemy 2.1 reflects a column's
/// default and collation, becomes the subquery alone: DataFusion cannot run a subquery under a
/// `CASE`. In those lookups the subquery finds no row when the condition is false (no
/// `pg_attrdef` row without a default; Nyala's columns have no collation of their own), so
/// the answer is the same. Runs after the subquery's own rewrite (the visit is post-order).
fn case_of_subquery(e: &mut SqlExpr) {
    let SqlExpr::Case {
        operand: None,
        conditions,
        else_result,
        ..
    } = e
    else {
        return;
    };
    let else_null = else_result
        .as_deref()
        .is_none_or(|x| matches!(x, SqlExpr::Value(v) if v.value == SqlValue::Null));
    let catalog_lookup = matches!(&conditions.first().map(|c| &c.result),
        Some(SqlExpr::Subquery(q)) if matches!(q.body.as_ref(), SetExpr::Select(sel) if reads_only_catalog(sel)));
    if conditions.len() != 1 || !else_null || !catalog_lookup {
        return;
    }
    *e = conditions.remove(0).result;
}

/// Whether every relation `select` reads is a catalog table (`pg_...`): the rewrites that
/// trade exactness for plannability touch only such lookups, never a user's tables.
fn reads_only_catalog(select: &datafusion::sql::sqlparser::ast::Select) -> bool {
    use datafusion::sql::sqlparser::ast::TableFactor;
    !select.from.is_empty()
        && select.from.iter().all(|t| {
            std::iter::once(&t.relation)
                .chain(t.joins.iter().map(|j| &j.relation))
                .all(|f| {
                    matches!(f, TableFactor::Table { name, .. }
                    if name.0.last().is_some_and(|n| {
                        n.to_string().trim_matches('"').to_ascii_lowercase().starts_with("pg_")
                    }))
                })
        })
}

/// A scalar subquery over `pg_sequence` alone (SQLAlchemy 2.1 reflects identity columns
/// with one whose projection names the outer query's columns, which DataFusion cannot plan)
/// is NULL: Nyala has no sequences, so it finds no row.
fn sequence_lookup(e: &mut SqlExpr) {
    use datafusion::sql::sqlparser::ast::TableFactor;
    let SqlExpr::Subquery(query) = e else { return };
    let SetExpr::Select(select) = query.body.as_ref() else {
        return;
    };
    let only_sequences = matches!(select.from.as_slice(), [t] if t.joins.is_empty()
        && matches!(&t.relation, TableFactor::Table { name, .. }
            if name.0.last().is_some_and(|n| n.to_string().eq_ignore_ascii_case("pg_sequence"))));
    // `count(*)` over it is 0, not NULL.
    let aggregates = select.projection.iter().any(|p| {
        matches!(p, SelectItem::UnnamedExpr(SqlExpr::Function(f))
            | SelectItem::ExprWithAlias { expr: SqlExpr::Function(f), .. }
            if AGGREGATES.contains(&f.name.to_string().to_ascii_lowercase().as_str()))
    });
    if only_sequences && !aggregates {
        *e = SqlExpr::Value(SqlValue::Null.into());
    }
}

/// Drops from a catalog subquery's `WHERE` the conjuncts that name only the outer query's
/// columns (SQLAlchemy 2.1 reflects a default with `WHERE pg_attribute.atthasdef AND
/// pg_attrdef.adrelid = pg_attribute.attrelid AND ...`): DataFusion cannot decorrelate them.
/// In these lookups they only repeat what the correlated conjuncts imply (no `pg_attrdef` row
/// without `atthasdef`), so the rows found are the same.
fn drop_outer_only_conjuncts(select: &mut datafusion::sql::sqlparser::ast::Select) {
    use datafusion::sql::sqlparser::ast::{BinaryOperator, TableFactor};
    if !reads_only_catalog(select) {
        return;
    }
    let Some(selection) = select.selection.take() else {
        return;
    };
    // The subquery's own relations, by alias or last name part.
    let mut own: Vec<String> = Vec::new();
    for t in &select.from {
        for f in std::iter::once(&t.relation).chain(t.joins.iter().map(|j| &j.relation)) {
            if let TableFactor::Table { name, alias, .. } = f {
                if let Some(a) = alias {
                    own.push(a.name.value.to_ascii_lowercase());
                }
                if let Some(last) = name.0.last() {
                    own.push(last.to_string().to_ascii_lowercase());
                }
            }
        }
    }
    fn conjuncts(e: SqlExpr, out: &mut Vec<SqlExpr>) {
        match e {
            SqlExpr::BinaryOp {
                left,
                op: BinaryOperator::And,
                right,
            } => {
                conjuncts(*left, out);
                conjuncts(*right, out);
            }
            SqlExpr::Nested(inner)
                if matches!(
                    *inner,
                    SqlExpr::BinaryOp {
                        op: BinaryOperator::And,
                        ..
                    }
                ) =>
            {
                conjuncts(*inner, out)
            }
            other => out.push(other),
        }
    }
    let mut parts = Vec::new();
    conjuncts(selection, &mut parts);
    // Only a bare boolean column of an outer table (`pg_attribute.atthasdef`): a comparison
    // with the outer row, DataFusion plans.
    let outer_only = |e: &SqlExpr| -> bool {
        matches!(e, SqlExpr::CompoundIdentifier(idents) if idents.len() >= 2
            && !own.contains(&idents[idents.len() - 2].value.to_ascii_lowercase()))
    };
    let kept: Vec<SqlExpr> = if parts.len() > 1 && !own.is_empty() {
        parts.into_iter().filter(|c| !outer_only(c)).collect()
    } else {
        parts
    };
    select.selection = kept.into_iter().reduce(|a, b| SqlExpr::BinaryOp {
        left: Box::new(a),
        op: BinaryOperator::And,
        right: Box::new(b),
    });
}

/// `(SELECT e FROM ... WHERE <correlated>)`, which catalog queries use to look up one row
/// (a column's default, its collation), becomes `(SELECT first_value(e) ...)`: DataFusion
/// plans correlated scalar subqueries only when they aggregate. The answer is the same
/// whenever the subquery finds at most one row, which PostgreSQL requires anyway.
fn aggregate_scalar_subquery(e: &mut SqlExpr) {
    let SqlExpr::Subquery(query) = e else { return };
    if query.limit_clause.is_some() || query.fetch.is_some() {
        return;
    }
    let SetExpr::Select(select) = query.body.as_mut() else {
        return;
    };
    let plain_group =
        matches!(&select.group_by, GroupByExpr::Expressions(g, m) if g.is_empty() && m.is_empty());
    if select.distinct.is_some()
        || !plain_group
        || select.having.is_some()
        || select.projection.len() != 1
    {
        return;
    }
    let (expr, alias) = match select.projection.remove(0) {
        SelectItem::UnnamedExpr(expr) => (expr, None),
        SelectItem::ExprWithAlias { expr, alias } => (expr, Some(alias)),
        other => {
            select.projection.push(other);
            return;
        }
    };
    drop_outer_only_conjuncts(select);
    let aggregated = matches!(&expr, SqlExpr::Function(f)
        if AGGREGATES.contains(&f.name.to_string().to_ascii_lowercase().as_str()));
    let expr = if aggregated {
        expr
    } else {
        let sql = format!("first_value({expr})");
        match Parser::new(&PostgreSqlDialect {})
            .try_with_sql(&sql)
            .and_then(|mut p| p.parse_expr())
        {
            Ok(wrapped) => wrapped,
            Err(_) => expr,
        }
    };
    select.projection.push(match alias {
        Some(alias) => SelectItem::ExprWithAlias { expr, alias },
        None => SelectItem::UnnamedExpr(expr),
    });
}

/// The database's schemas and tables, as the catalog crate's dynamic tables read them.
#[derive(Debug, Clone)]
struct DbCatalogInfo {
    db: Arc<Database>,
}

#[async_trait]
impl CatalogInfo for DbCatalogInfo {
    async fn catalog_names(&self) -> Result<Vec<String>> {
        Ok(vec![CATALOG.to_string()])
    }

    async fn schema_names(&self, catalog: &str) -> Result<Option<Vec<String>>> {
        if catalog != CATALOG {
            return Ok(None);
        }
        let mut names = self.db.list_namespaces();
        names.push(INFORMATION_SCHEMA.to_string());
        names.push(PG_CATALOG.to_string());
        Ok(Some(names))
    }

    async fn table_names(&self, catalog: &str, schema: &str) -> Result<Option<Vec<String>>> {
        if catalog != CATALOG {
            return Ok(None);
        }
        if schema == INFORMATION_SCHEMA || schema == PG_CATALOG {
            return Ok(Some(vec![]));
        }
        Ok(Some(
            self.db
                .list_tables(Some(schema))
                .into_iter()
                .map(|t| t.name)
                .collect(),
        ))
    }

    async fn table_schema(
        &self,
        catalog: &str,
        schema: &str,
        table: &str,
    ) -> Result<Option<SchemaRef>> {
        if catalog != CATALOG {
            return Ok(None);
        }
        let Ok(t) = self.db.table(&TableName::new(schema, table)) else {
            return Ok(None);
        };
        // The SQL schema (all nullable for DataFusion), with each column's real nullability
        // for `pg_attribute.attnotnull`.
        let columns = t.schema();
        let sql = NyalaTable::new(t).schema();
        let fields: Vec<_> = sql
            .fields()
            .iter()
            .zip(columns.columns())
            .map(|(f, c)| f.as_ref().clone().with_nullable(c.nullable))
            .collect();
        Ok(Some(Arc::new(arrow_schema::Schema::new(fields))))
    }

    async fn table_type(
        &self,
        catalog: &str,
        schema: &str,
        table: &str,
    ) -> Result<Option<TableType>> {
        Ok(
            (catalog == CATALOG && self.db.table(&TableName::new(schema, table)).is_ok())
                .then_some(TableType::Base),
        )
    }
}

type Inner = PgCatalogSchemaProvider<DbCatalogInfo, EmptyContextProvider>;

/// `pg_catalog`: the catalog crate's tables, with the primary keys added.
#[derive(Debug)]
struct PgCatalogSchema {
    inner: Arc<Inner>,
    db: Arc<Database>,
    statics: Arc<PgCatalogStaticTables>,
    /// The server's sessions, once a front end attached them (`pg_stat_activity`).
    activity: Arc<std::sync::OnceLock<Arc<crate::activity::Backends>>>,
}

#[async_trait]
impl SchemaProvider for PgCatalogSchema {
    fn table_names(&self) -> Vec<String> {
        let mut names = self.inner.table_names();
        names.push(PG_STAT_ACTIVITY.to_string());
        names
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        if name.eq_ignore_ascii_case(PG_STAT_ACTIVITY) {
            let schema = crate::activity::Backends::schema();
            let rows = match self.activity.get() {
                Some(b) => vec![b.rows()?],
                None => vec![],
            };
            return Ok(Some(Arc::new(MemTable::try_new(schema, vec![rows])?)));
        }
        let kind = match name.to_ascii_lowercase().as_str() {
            "pg_constraint" => KeyTable::Constraint,
            "pg_index" => KeyTable::Index,
            "pg_class" => {
                // Columns clients select that the crate's pg_class lacks (always NULL here:
                // no storage options, default privileges).
                let Some(inner) = self.inner.table(name).await? else {
                    return Ok(None);
                };
                let text_list = ArrowType::new_list(ArrowType::Utf8, true);
                return Ok(Some(Arc::new(WithNullColumns::new(
                    self.inner.clone(),
                    "pg_class",
                    inner.schema(),
                    &[("reloptions", text_list.clone()), ("relacl", text_list)],
                ))));
            }
            _ => return self.inner.table(name).await,
        };
        let base = match kind {
            KeyTable::Constraint => self.statics.pg_constraint.clone(),
            KeyTable::Index => self.statics.pg_index.clone(),
        };
        // Attribute-number vectors are arrays (PostgreSQL's int2vector unnests and
        // subscripts like one).
        let attnums = ArrowType::new_list(ArrowType::Int16, true);
        let oids = ArrowType::new_list(ArrowType::Int64, true);
        let schema = Arc::new(arrow_schema::Schema::new(
            base.schema()
                .fields()
                .iter()
                .map(|f| match f.name().as_str() {
                    "indkey" | "conkey" | "confkey" | "indoption"
                        if !matches!(f.data_type(), ArrowType::List(_)) =>
                    {
                        f.as_ref().clone().with_data_type(attnums.clone())
                    }
                    "indclass" | "indcollation" if !matches!(f.data_type(), ArrowType::List(_)) => {
                        f.as_ref().clone().with_data_type(oids.clone())
                    }
                    _ => f.as_ref().clone(),
                })
                .collect::<Vec<_>>(),
        ));
        let rows = base
            .data()
            .iter()
            .map(|b| {
                let columns = b
                    .columns()
                    .iter()
                    .zip(schema.fields())
                    .map(|(c, f)| conform(c, f.data_type()))
                    .collect::<Result<Vec<_>>>()?;
                Ok(RecordBatch::try_new(schema.clone(), columns)?)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(Arc::new(KeyCatalogTable {
            kind,
            base_schema: schema,
            base: rows,
            inner: self.inner.clone(),
            db: self.db.clone(),
        })))
    }

    fn table_exist(&self, name: &str) -> bool {
        name.eq_ignore_ascii_case(PG_STAT_ACTIVITY) || self.inner.table_exist(name)
    }
}

#[derive(Debug, Clone, Copy)]
enum KeyTable {
    Constraint,
    Index,
}

/// `pg_constraint` or `pg_index`: PostgreSQL's own rows plus one per table's primary key.
#[derive(Debug)]
struct KeyCatalogTable {
    kind: KeyTable,
    base_schema: SchemaRef,
    base: Vec<RecordBatch>,
    inner: Arc<Inner>,
    db: Arc<Database>,
}

/// The rows of one of the catalog crate's tables.
async fn read(inner: &Inner, name: &str, state: &dyn Session) -> Result<Vec<RecordBatch>> {
    match inner.build_table_by_name(name)? {
        Some(PgCatalogTable::Dynamic(stream)) => {
            stream.execute(state.task_ctx()).try_collect().await
        }
        Some(other) => {
            let provider = other.try_into_table_provider()?;
            let plan = provider.scan(state, None, &[], None).await?;
            datafusion::physical_plan::collect(plan, state.task_ctx()).await
        }
        None => Ok(vec![]),
    }
}

/// `column` of `batches` as (i64 OIDs or numbers).
fn ints(batches: &[RecordBatch], column: &str) -> Result<Vec<Option<i64>>> {
    let mut out = Vec::new();
    for b in batches {
        let a = cast(
            b.column_by_name(column).ok_or_else(|| missing(column))?,
            &ArrowType::Int64,
        )?;
        out.extend(a.as_primitive::<arrow::datatypes::Int64Type>().iter());
    }
    Ok(out)
}

fn strings(batches: &[RecordBatch], column: &str) -> Result<Vec<Option<String>>> {
    let mut out = Vec::new();
    for b in batches {
        let a = cast(
            b.column_by_name(column).ok_or_else(|| missing(column))?,
            &ArrowType::Utf8,
        )?;
        out.extend(a.as_string::<i32>().iter().map(|s| s.map(str::to_string)));
    }
    Ok(out)
}

fn missing(column: &str) -> DataFusionError {
    DataFusionError::Internal(format!("pg_catalog: no column {column}"))
}

/// OIDs Nyala gives the primary-key index of the table with OID `t`: above the range the
/// catalog crate hands out to tables (which counts up from 16384).
fn index_oid(table_oid: i64) -> i64 {
    (1 << 30) + table_oid
}

/// A table's primary key, as the catalog rows need it.
struct KeyedTable {
    oid: i64,
    namespace: i64,
    name: String,
    /// Attribute numbers (1-based) of the key columns, in key order.
    key: Vec<i16>,
}

impl KeyCatalogTable {
    /// One row per table with a primary key.
    async fn key_rows(&self, state: &dyn Session) -> Result<RecordBatch> {
        let namespaces = read(&self.inner, "pg_namespace", state).await?;
        let ns: HashMap<i64, String> = ints(&namespaces, "oid")?
            .into_iter()
            .zip(strings(&namespaces, "nspname")?)
            .filter_map(|(o, n)| Some((o?, n?)))
            .collect();
        let classes = read(&self.inner, "pg_class", state).await?;
        let mut tables = Vec::new();
        for ((oid, name), namespace) in ints(&classes, "oid")?
            .into_iter()
            .zip(strings(&classes, "relname")?)
            .zip(ints(&classes, "relnamespace")?)
        {
            let (Some(oid), Some(name), Some(namespace)) = (oid, name, namespace) else {
                continue;
            };
            let Some(schema_name) = ns.get(&namespace) else {
                continue;
            };
            let Ok(table) = self.db.table(&TableName::new(schema_name, &name)) else {
                continue;
            };
            let schema = table.schema();
            let key: Vec<i16> = schema.key_indices().iter().map(|&i| i as i16 + 1).collect();
            tables.push(KeyedTable {
                oid,
                namespace,
                name,
                key,
            });
        }
        let n = tables.len();
        let mut keys = ListBuilder::new(Int16Builder::new());
        for t in &tables {
            keys.values().append_slice(&t.key);
            keys.append(true);
        }
        let keys: ArrayRef = Arc::new(keys.finish());
        let oids: ArrayRef = Arc::new(Int64Array::from_iter_values(tables.iter().map(|t| t.oid)));
        let index_oids: ArrayRef = Arc::new(Int64Array::from_iter_values(
            tables.iter().map(|t| index_oid(t.oid)),
        ));
        let yes: ArrayRef = Arc::new(BooleanArray::from(vec![true; n]));
        let no: ArrayRef = Arc::new(BooleanArray::from(vec![false; n]));
        let text = |f: &dyn Fn(&KeyedTable) -> String| -> ArrayRef {
            Arc::new(StringArray::from_iter_values(tables.iter().map(f)))
        };
        let key_count: ArrayRef = Arc::new(Int64Array::from_iter_values(
            tables.iter().map(|t| t.key.len() as i64),
        ));
        let mut given: HashMap<&str, ArrayRef> = HashMap::new();
        match self.kind {
            KeyTable::Constraint => {
                given.insert("oid", index_oids.clone());
                given.insert("conname", text(&|t| format!("{}_pkey", t.name)));
                given.insert(
                    "connamespace",
                    Arc::new(Int64Array::from_iter_values(
                        tables.iter().map(|t| t.namespace),
                    )),
                );
                given.insert("contype", text(&|_| "p".to_string()));
                given.insert("condeferrable", no.clone());
                given.insert("condeferred", no.clone());
                given.insert("convalidated", yes.clone());
                given.insert("conrelid", oids.clone());
                given.insert("conindid", index_oids.clone());
                given.insert("conislocal", yes.clone());
                given.insert("connoinherit", yes.clone());
                given.insert("conkey", keys.clone());
            }
            KeyTable::Index => {
                given.insert("indexrelid", index_oids.clone());
                given.insert("indrelid", oids.clone());
                given.insert("indnatts", key_count.clone());
                given.insert("indnkeyatts", key_count.clone());
                given.insert("indisunique", yes.clone());
                given.insert("indisprimary", yes.clone());
                given.insert("indimmediate", yes.clone());
                given.insert("indisvalid", yes.clone());
                given.insert("indisready", yes.clone());
                given.insert("indislive", yes.clone());
                given.insert("indkey", keys.clone());
            }
        }
        let columns = self
            .base_schema
            .fields()
            .iter()
            .map(|f| match given.get(f.name().as_str()) {
                Some(a) => conform(a, f.data_type()),
                None if f.is_nullable() => Ok(new_null_array(f.data_type(), n)),
                None => ScalarValue::new_default(f.data_type())?.to_array_of_size(n),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(RecordBatch::try_new(self.base_schema.clone(), columns)?)
    }
}

/// `a` as the catalog's column type: the space-separated text of an `int2vector` (how
/// PostgreSQL's rows were exported) becomes a list; a list becomes that text where the column
/// is text.
fn conform(a: &ArrayRef, to: &ArrowType) -> Result<ArrayRef> {
    if matches!(to, ArrowType::List(_))
        && matches!(a.data_type(), ArrowType::Utf8 | ArrowType::LargeUtf8)
    {
        let text = cast(a, &ArrowType::Utf8)?;
        let mut out = ListBuilder::new(arrow::array::Int64Builder::new());
        for v in text.as_string::<i32>().iter() {
            match v {
                Some(v) => {
                    let v = v.trim_matches(|c| c == '{' || c == '}');
                    for n in v.split([' ', ',']).filter(|n| !n.is_empty()) {
                        out.values().append_option(n.parse::<i64>().ok());
                    }
                    out.append(true);
                }
                None => out.append(false),
            }
        }
        return Ok(cast(&(Arc::new(out.finish()) as ArrayRef), to)?);
    }
    if matches!(to, ArrowType::Utf8 | ArrowType::LargeUtf8)
        && matches!(a.data_type(), ArrowType::List(_))
    {
        let list = a.as_list::<i32>();
        let text: StringArray = (0..list.len())
            .map(|i| {
                let v = list.value(i);
                let v = v.as_primitive::<arrow::datatypes::Int16Type>();
                Some(
                    v.values()
                        .iter()
                        .map(|x| x.to_string())
                        .collect::<Vec<_>>()
                        .join(" "),
                )
            })
            .collect();
        return Ok(cast(&(Arc::new(text) as ArrayRef), to)?);
    }
    Ok(cast(a, to)?)
}

#[async_trait]
impl TableProvider for KeyCatalogTable {
    fn schema(&self) -> SchemaRef {
        self.base_schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let mut batches = self.base.clone();
        batches.push(self.key_rows(state).await?);
        MemTable::try_new(self.base_schema.clone(), vec![batches])?
            .scan(state, projection, filters, limit)
            .await
    }
}

/// One of the crate's tables with NULL columns added.
#[derive(Debug)]
struct WithNullColumns {
    inner: Arc<Inner>,
    name: &'static str,
    schema: SchemaRef,
}

impl WithNullColumns {
    fn new(
        inner: Arc<Inner>,
        name: &'static str,
        base: SchemaRef,
        extra: &[(&str, ArrowType)],
    ) -> Self {
        let mut fields: Vec<arrow_schema::Field> =
            base.fields().iter().map(|f| f.as_ref().clone()).collect();
        for (n, t) in extra {
            if base.index_of(n).is_err() {
                fields.push(arrow_schema::Field::new(*n, t.clone(), true));
            }
        }
        WithNullColumns {
            inner,
            name,
            schema: Arc::new(arrow_schema::Schema::new(fields)),
        }
    }
}

#[async_trait]
impl TableProvider for WithNullColumns {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let batches = read(&self.inner, self.name, state)
            .await?
            .into_iter()
            .map(|b| {
                let mut columns = b.columns().to_vec();
                for f in self.schema.fields().iter().skip(columns.len()) {
                    columns.push(new_null_array(f.data_type(), b.num_rows()));
                }
                Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
            })
            .collect::<Result<Vec<_>>>()?;
        MemTable::try_new(self.schema.clone(), vec![batches])?
            .scan(state, projection, filters, limit)
            .await
    }
}

/// `version()`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Version {
    signature: Signature,
}

impl Version {
    fn new() -> Self {
        Version {
            signature: Signature::exact(vec![], Volatility::Stable),
        }
    }
}

impl ScalarUDFImpl for Version {
    fn name(&self) -> &str {
        "version"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[ArrowType]) -> Result<ArrowType> {
        Ok(ArrowType::Utf8)
    }

    fn invoke_with_args(&self, _: ScalarFunctionArgs) -> Result<ColumnarValue> {
        Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(
            version_string(),
        ))))
    }
}

/// `json_build_object(k1, v1, ...)`: a JSON object as text.
#[derive(Debug, PartialEq, Eq, Hash)]
struct JsonBuildObject {
    signature: Signature,
}

impl JsonBuildObject {
    fn new() -> Self {
        JsonBuildObject {
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for JsonBuildObject {
    fn name(&self) -> &str {
        "json_build_object"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[ArrowType]) -> Result<ArrowType> {
        Ok(ArrowType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if !args.args.len().is_multiple_of(2) {
            return datafusion::common::plan_err!(
                "json_build_object takes an even number of arguments (key, value, ...)"
            );
        }
        let n = args.number_rows;
        let arrays = args
            .args
            .iter()
            .map(|a| a.to_array(n))
            .collect::<Result<Vec<_>>>()?;
        let mut out = arrow::array::StringBuilder::new();
        for row in 0..n {
            let mut object = serde_json::Map::new();
            for pair in arrays.chunks(2) {
                let key = arrow::util::display::array_value_to_string(&pair[0], row)?;
                object.insert(key, json_value(&pair[1], row)?);
            }
            out.append_value(serde_json::Value::Object(object).to_string());
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// One value as JSON (numbers and booleans as themselves, NULL as null, else text).
fn json_value(a: &ArrayRef, row: usize) -> Result<serde_json::Value> {
    use serde_json::Value as J;
    if a.is_null(row) {
        return Ok(J::Null);
    }
    let text = arrow::util::display::array_value_to_string(a, row)?;
    Ok(match a.data_type() {
        ArrowType::Boolean => J::Bool(text == "true"),
        t if t.is_numeric() => text
            .parse::<serde_json::Number>()
            .map(J::Number)
            .unwrap_or(J::String(text)),
        _ => J::String(text),
    })
}

/// A catalog function whose answer is NULL in Nyala (`pg_get_serial_sequence`: there are
/// no sequences; `to_regtype`: a type beyond the built-in ones, e.g. `hstore`, does not
/// exist).
#[derive(Debug, PartialEq, Eq, Hash)]
struct NullText {
    name: &'static str,
    signature: Signature,
}

impl NullText {
    fn new(name: &'static str) -> Self {
        NullText {
            name,
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for NullText {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[ArrowType]) -> Result<ArrowType> {
        Ok(ArrowType::Utf8)
    }

    fn invoke_with_args(&self, _: ScalarFunctionArgs) -> Result<ColumnarValue> {
        Ok(ColumnarValue::Scalar(ScalarValue::Utf8(None)))
    }
}

/// `current_setting(name [, missing_ok])`: the server-wide value of a run-time parameter, as
/// catalog queries ask for them (SQLAlchemy 2.1 compares a table's access method with
/// `default_table_access_method`). What a session changed with `SET` is the PostgreSQL front
/// end's (`SHOW`); a parameter not listed here is NULL.
#[derive(Debug, PartialEq, Eq, Hash)]
struct CurrentSetting {
    signature: Signature,
}

impl CurrentSetting {
    fn new() -> Self {
        CurrentSetting {
            signature: Signature::variadic_any(Volatility::Stable),
        }
    }

    fn value(name: &str) -> Option<String> {
        Some(match name.trim().to_ascii_lowercase().as_str() {
            "default_table_access_method" => "heap".into(),
            "server_version" => POSTGRES_VERSION.into(),
            "server_version_num" => {
                let (major, minor) = POSTGRES_VERSION
                    .split_once('.')
                    .unwrap_or((POSTGRES_VERSION, "0"));
                format!("{major}{:04}", minor.parse::<u32>().unwrap_or(0))
            }
            "server_encoding" | "client_encoding" => "UTF8".into(),
            "standard_conforming_strings" | "integer_datetimes" => "on".into(),
            "datestyle" => "ISO, MDY".into(),
            "timezone" => "UTC".into(),
            "search_path" => "\"$user\", public".into(),
            "max_identifier_length" => "63".into(),
            "transaction_isolation" | "default_transaction_isolation" => "read committed".into(),
            _ => return None,
        })
    }
}

impl ScalarUDFImpl for CurrentSetting {
    fn name(&self) -> &str {
        "current_setting"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[ArrowType]) -> Result<ArrowType> {
        Ok(ArrowType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let Some(name) = args.args.first() else {
            return Err(DataFusionError::Plan(
                "current_setting takes a parameter name".into(),
            ));
        };
        let names = name.to_array(args.number_rows)?;
        let names = arrow::compute::cast(&names, &ArrowType::Utf8)?;
        let out: arrow::array::StringArray = names
            .as_string::<i32>()
            .iter()
            .map(|n| n.and_then(CurrentSetting::value))
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// `pg_type_is_visible(oid)`: every type is (Nyala has one search path and no user types).
#[derive(Debug, PartialEq, Eq, Hash)]
struct Visible {
    name: &'static str,
    signature: Signature,
}

impl Visible {
    fn new(name: &'static str) -> Self {
        Visible {
            name,
            signature: Signature::any(1, Volatility::Stable),
        }
    }
}

impl ScalarUDFImpl for Visible {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[ArrowType]) -> Result<ArrowType> {
        Ok(ArrowType::Boolean)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let a = args.args[0].to_array(args.number_rows)?;
        let out: BooleanArray = (0..a.len())
            .map(|i| (!a.is_null(i)).then_some(true))
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}
