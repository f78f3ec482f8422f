//! `INSERT ... ON CONFLICT (key) DO UPDATE SET c = <expression> [WHERE <condition>]`, where the
//! new values are computed from the existing row (by the table's name or alias) and the
//! proposed one (`EXCLUDED`): counters (`SET hits = t.hits + EXCLUDED.hits`), keeping the
//! larger value, updating only when something changed.
//!
//! The plain form, `SET c = EXCLUDED.c` without `WHERE`, does not come here: the storage engine
//! writes it as one atomic partial upsert.
//!
//! Here a statement is three steps, after the clause is planned once without rows (so that
//! unknown columns and type errors fail it before it writes anything). Its rows are inserted,
//! and those whose key exists fail with a duplicate key and nothing else. For those, one query
//! joins the existing rows (as committed when it runs) with the proposed ones and computes the
//! SET values of the rows `WHERE` keeps. Those values are then written as updates. If that
//! fails, the rows the statement inserted are deleted again, as for a failed INSERT. Such
//! statements take turns per table (`crate::turns`), so two of them never read the same old
//! value; a gRPC write between the query and the update can still be overwritten (see
//! docs/sql.md).

use std::ops::ControlFlow;

use arrow::array::RecordBatch;
use datafusion::common::{Column, ScalarValue, TableReference};
use datafusion::logical_expr::{cast, Expr, JoinType, LogicalPlan, LogicalPlanBuilder};
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast;

use crate::error::SqlError;

/// The name the proposed rows go by in the clause's expressions.
const EXCLUDED: &str = "excluded";

/// A `DO UPDATE` clause whose values are expressions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ConflictUpdate {
    /// Each SET target column with its new value.
    assignments: Vec<(String, ast::Expr)>,
    selection: Option<ast::Expr>,
    /// What the existing row is called: the INSERT's table alias, or the table's name.
    target: String,
}

impl ConflictUpdate {
    /// The clause of an INSERT into a table called `target` in the expressions (its alias, or
    /// its unqualified name), with the statement's PostgreSQL rewrites (`crate::pg`) already
    /// applied. A column named without a table is taken as the existing row's (PostgreSQL
    /// calls it ambiguous; nothing else could be meant).
    pub fn new(
        assignments: Vec<(String, ast::Expr)>,
        selection: Option<ast::Expr>,
        target: String,
    ) -> Self {
        let qualify = |mut e: ast::Expr| {
            let _ = ast::visit_expressions_mut(&mut e, |e| {
                if let ast::Expr::Identifier(i) = e {
                    *e = ast::Expr::CompoundIdentifier(vec![
                        ast::Ident::with_quote('"', target.clone()),
                        i.clone(),
                    ]);
                }
                ControlFlow::<()>::Continue(())
            });
            e
        };
        ConflictUpdate {
            assignments: assignments
                .into_iter()
                .map(|(c, e)| (c, qualify(e)))
                .collect(),
            selection: selection.map(qualify),
            target,
        }
    }

    /// Fails, as PostgreSQL does, on SET targets that are not columns of `schema` or are key
    /// columns.
    pub fn check(&self, schema: &nyala_common::Schema) -> Result<(), SqlError> {
        for (column, _) in &self.assignments {
            let i = schema
                .index_of(column)
                .map_err(|e| SqlError::Storage(e.into()))?;
            if schema.is_key(i) {
                return Err(SqlError::Storage(
                    nyala_common::SchemaError::KeyColumnChange {
                        column: column.clone(),
                        change: "updated".into(),
                    }
                    .into(),
                ));
            }
        }
        Ok(())
    }

    /// The plan of the new values of existing rows: the table's key columns and one column
    /// per SET target (cast to its type), for the rows of `proposed` whose key exists and
    /// that the clause's `WHERE` keeps.
    pub async fn plan(
        &self,
        ctx: &SessionContext,
        table: &TableReference,
        schema: &nyala_common::Schema,
        proposed: Vec<RecordBatch>,
    ) -> Result<LogicalPlan, SqlError> {
        let existing = ctx.table(table.clone()).await?.into_unoptimized_plan();
        // Only the rows whose key is among the proposed ones: a filter on each key column the
        // scan turns into key ranges, instead of reading the whole table for the join.
        let mut existing = LogicalPlanBuilder::from(existing);
        for &i in schema.key_indices() {
            let name = &schema.columns()[i].name;
            if let Some(values) = distinct_values(&proposed, name)? {
                let column = Expr::Column(Column::new_unqualified(name));
                existing = existing.filter(column.in_list(values, false))?;
            }
        }
        let existing = existing
            .alias(TableReference::bare(self.target.as_str()))?
            .build()?;
        let proposed = ctx.read_batches(proposed)?.into_unoptimized_plan();
        let proposed = LogicalPlanBuilder::from(proposed)
            .alias(EXCLUDED)?
            .build()?;
        let key_names: Vec<&str> = schema
            .key_indices()
            .iter()
            .map(|&i| schema.columns()[i].name.as_str())
            .collect();
        let on = |alias: &str| -> Vec<Column> {
            key_names
                .iter()
                .map(|k| Column::new(Some(TableReference::bare(alias)), *k))
                .collect()
        };
        let mut plan = LogicalPlanBuilder::from(existing).join(
            proposed,
            JoinType::Inner,
            (on(&self.target), on(EXCLUDED)),
            None,
        )?;
        let joined = plan.schema().clone();
        // Placeholders take their types from what they meet (`t.n + $1`), as in a statement.
        let expr = |e: &ast::Expr| -> Result<Expr, SqlError> {
            let e = ctx.state().create_logical_expr(&e.to_string(), &joined)?;
            Ok(e.infer_placeholder_types(&joined)?.0)
        };
        if let Some(condition) = &self.selection {
            plan = plan.filter(expr(condition)?)?;
        }
        let mut columns: Vec<Expr> = on(&self.target)
            .into_iter()
            .zip(&key_names)
            .map(|(c, k)| Expr::Column(c).alias(*k))
            .collect();
        for (name, value) in &self.assignments {
            let column = &schema.columns()[schema
                .index_of(name)
                .map_err(|e| SqlError::Storage(e.into()))?];
            columns.push(cast(expr(value)?, column.data_type.to_arrow()).alias(name));
        }
        Ok(plan.project(columns)?.build()?)
    }
}

/// Above this many distinct values of a key column among the proposed rows, the existing
/// rows are not filtered by that column.
const MAX_KEY_FILTER: usize = 4096;

/// The distinct values of column `name` in `batches` as literals, or `None` past
/// [`MAX_KEY_FILTER`] of them.
fn distinct_values(batches: &[RecordBatch], name: &str) -> Result<Option<Vec<Expr>>, SqlError> {
    let mut seen = std::collections::HashSet::new();
    for b in batches {
        let column = b.column(b.schema().index_of(name)?);
        for row in 0..b.num_rows() {
            seen.insert(ScalarValue::try_from_array(column, row)?);
            if seen.len() > MAX_KEY_FILTER {
                return Ok(None);
            }
        }
    }
    Ok(Some(
        seen.into_iter().map(|v| Expr::Literal(v, None)).collect(),
    ))
}
