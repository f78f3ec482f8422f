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
use datafusion::sql::sqlparser::ast::Statement;
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
pub(crate) fn install(ctx: &SessionContext, db: &Arc<Database>) -> Result<(), SqlError> {
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
    Ok(())
}

/// The rewrite rules and known-query substitutions, built once (they hold parsed token
/// patterns).
static COMPAT: LazyLock<PostgresCompatibilityParser> =
    LazyLock::new(PostgresCompatibilityParser::new);

/// Rewrites a query as the compatibility rules do (only queries: the rules are written for
/// catalog reads, and Nyala's own DML handling must see statements as written).
pub(crate) fn rewrite(statement: &mut Box<Statement>) {
    if matches!(statement.as_ref(), Statement::Query(_)) {
        let taken = std::mem::replace(
            statement.as_mut(),
            Statement::Commit {
                chain: false,
                end: false,
                modifier: None,
            },
        );
        **statement = COMPAT.rewrite(taken);
    }
}

/// Parses a catalog query (one that names `pg_...`) with the compatibility parser, which
/// also replaces known client queries DataFusion cannot plan by equivalents it can.
/// `None` if it does not parse that way (the normal parser then reports the error).
pub(crate) fn parse_catalog_query(sql: &str) -> Option<Vec<Statement>> {
    if !sql.to_ascii_lowercase().contains("pg_") {
        return None;
    }
    COMPAT.parse(sql).ok()
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
        Ok(self
            .db
            .table(&TableName::new(schema, table))
            .ok()
            .map(|t| NyalaTable::new(t).schema()))
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
}

#[async_trait]
impl SchemaProvider for PgCatalogSchema {
    fn table_names(&self) -> Vec<String> {
        self.inner.table_names()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let kind = match name.to_ascii_lowercase().as_str() {
            "pg_constraint" => KeyTable::Constraint,
            "pg_index" => KeyTable::Index,
            _ => return self.inner.table(name).await,
        };
        let base = match kind {
            KeyTable::Constraint => self.statics.pg_constraint.clone(),
            KeyTable::Index => self.statics.pg_index.clone(),
        };
        Ok(Some(Arc::new(KeyCatalogTable {
            kind,
            base_schema: base.schema(),
            base: base.data().to_vec(),
            inner: self.inner.clone(),
            db: self.db.clone(),
        })))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.inner.table_exist(name)
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

/// `a` as the catalog's column type (lists of attribute numbers become the space-separated
/// text of an `int2vector` where the column is text).
fn conform(a: &ArrayRef, to: &ArrowType) -> Result<ArrayRef> {
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
