//! Running statements: DDL against the database, everything else through DataFusion.

use std::sync::Arc;

use arrow::array::RecordBatch;
use datafusion::common::{Constraint, TableReference};
use datafusion::execution::context::{SessionConfig, SessionContext};
use datafusion::logical_expr::{CreateMemoryTable, DdlStatement, DropTable, Expr, LogicalPlan};

use nyala_common::{ColumnSchema, Schema};
use nyala_storage::db::DEFAULT_NAMESPACE;
use nyala_storage::{Database, IfExists, PartitionSpec, TableName};

use crate::catalog::{NyalaCatalog, CATALOG};
use crate::error::SqlError;
use crate::types::{default_value, storage_type};

/// A SQL session over a database: runs one statement at a time, each at its own snapshot.
pub struct Engine {
    db: Arc<Database>,
    ctx: SessionContext,
}

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
            .with_information_schema(true);
        // Text columns are stored as Utf8; planning them as Utf8View would cast every batch.
        config.options_mut().sql_parser.map_string_types_to_utf8view = false;
        let ctx = SessionContext::new_with_config(config);
        ctx.register_catalog(CATALOG, Arc::new(NyalaCatalog::new(db.clone())));
        Engine { db, ctx }
    }

    /// The DataFusion session (for planning by other front ends).
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// Runs one statement and returns its result batches (empty for DDL; one row with
    /// `count` for INSERT).
    pub async fn execute(&self, sql: &str) -> Result<Vec<RecordBatch>, SqlError> {
        let plan = self.ctx.state().create_logical_plan(sql).await?;
        match plan {
            LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(c)) => {
                self.create_table(&c)?;
                Ok(vec![])
            }
            LogicalPlan::Ddl(DdlStatement::DropTable(d)) => {
                self.drop_table(&d)?;
                Ok(vec![])
            }
            LogicalPlan::Ddl(other) => Err(SqlError::Unsupported(format!(
                "{} statements",
                other.name()
            ))),
            plan => Ok(self.ctx.execute_logical_plan(plan).await?.collect().await?),
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

    fn create_table(&self, c: &CreateMemoryTable) -> Result<(), SqlError> {
        if c.or_replace || c.temporary {
            return Err(SqlError::Unsupported(
                "CREATE OR REPLACE / TEMPORARY tables".into(),
            ));
        }
        if !matches!(c.input.as_ref(), LogicalPlan::EmptyRelation(_)) {
            return Err(SqlError::Unsupported("CREATE TABLE ... AS SELECT".into()));
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
        // Without a partition clause: hash the leading key column over one tablet per core.
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as u32;
        let spec = PartitionSpec::hash([key_names[0]], cores);
        let if_exists = if c.if_not_exists {
            IfExists::Skip
        } else {
            IfExists::Error
        };
        self.db.create_table(&name, &schema, &spec, if_exists)?;
        Ok(())
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

/// The constant of a (possibly cast) literal expression.
fn literal_of(e: &Expr) -> Option<&datafusion::common::ScalarValue> {
    match e {
        Expr::Literal(v, _) => Some(v),
        Expr::Cast(c) => literal_of(&c.expr),
        Expr::TryCast(c) => literal_of(&c.expr),
        _ => None,
    }
}
