//! The `INSERT ... VALUES` fast path, and the upserts a session holds back until it commits.
//!
//! `INSERT INTO t [(columns)] VALUES (...), ...` whose cells are all constants (which bound
//! `$n` parameters are) becomes one storage write batch directly: no DataFusion planning
//! (about a millisecond), just a few microseconds per row. Clients that write row by row
//! (psycopg's `executemany`, SQLAlchemy, ORMs) send exactly this.
//!
//! The invariant that keeps this honest is the point lookup's: a statement takes the fast path
//! only when its outcome is certainly the one the planned statement would have, rows, errors
//! and count alike. Anything this module is not sure about (a clause it does not model, an
//! expression, a constant DataFusion would coerce differently, a NULL where the table wants
//! none) returns `None`, and the statement is planned normally. The `Insert` destructuring is
//! exhaustive on purpose: a sqlparser upgrade that adds a clause must be looked at here.

use std::collections::HashSet;

use datafusion::common::ScalarValue;
use datafusion::sql::sqlparser::ast::{self, Expr, SetExpr, TableObject};

use nyala_common::{ColumnSchema, DataType, Schema, Value};
use nyala_storage::{BatchBuilder, Database, Table, TableName, TabletOptions, WriteOp};

use crate::engine::{normalize, write_outcome, InsertMode};
use crate::error::SqlError;
use crate::lookup::{constant_of, plain_body, signed_literal, table_of};
use crate::params::Cell;

/// An INSERT of constant rows, recognised against a table's schema; its cells may be `$n`
/// parameters, read by [`ValuesInsert::bind`].
#[derive(Debug)]
pub(crate) struct ValuesInsert {
    table: TableName,
    /// The table's schema the rows were recognised against.
    schema: Schema,
    mode: InsertMode,
    /// Whole rows in table column order (absent columns hold their default, else NULL).
    rows: Vec<Vec<Cell>>,
}

/// A [`ValuesInsert`] with its parameters read: the rows to write.
pub(crate) struct BoundInsert {
    table: Table,
    schema: Schema,
    mode: InsertMode,
    rows: Vec<Vec<Value>>,
}

impl ValuesInsert {
    /// Recognises `statement` (bound, with its `ON CONFLICT` clause already turned into
    /// `mode`) as an INSERT of constant rows into a table of `db`, or `None`.
    pub(crate) fn recognise(
        db: &Database,
        default_schema: &str,
        statement: &ast::Statement,
        mode: &InsertMode,
    ) -> Option<ValuesInsert> {
        let ast::Statement::Insert(insert) = statement else {
            return None;
        };
        let ast::Insert {
            insert_token: _,
            optimizer_hints,
            or: None,
            ignore: false,
            into: _,
            table: TableObject::TableName(name),
            table_alias: None,
            columns,
            overwrite: false,
            source: Some(source),
            assignments,
            partitioned: None,
            after_columns,
            has_table_keyword: false,
            on: None,
            returning: None,
            output: None,
            replace_into: false,
            priority: None,
            insert_alias: None,
            settings: None,
            format_clause: None,
            multi_table_insert_type: None,
            multi_table_into_clauses,
            multi_table_when_clauses,
            multi_table_else_clause: None,
        } = insert
        else {
            return None;
        };
        if !(optimizer_hints.is_empty()
            && assignments.is_empty()
            && after_columns.is_empty()
            && multi_table_into_clauses.is_empty()
            && multi_table_when_clauses.is_empty())
        {
            return None;
        }
        let SetExpr::Values(values) = plain_body(source)? else {
            return None;
        };
        if values.explicit_row || values.rows.is_empty() {
            return None;
        }
        let (table_name, table) = table_of(db, default_schema, name)?;
        let schema = table.schema();
        // Positions in the table of the statement's columns (all, in order, when none named).
        let targets: Vec<usize> = if columns.is_empty() {
            (0..schema.len()).collect()
        } else {
            let mut seen = HashSet::new();
            columns
                .iter()
                .map(|c| {
                    let [ast::ObjectNamePart::Identifier(ident)] = c.0.as_slice() else {
                        return None;
                    };
                    let i = schema.index_of(&normalize(ident)).ok()?;
                    seen.insert(i).then_some(i)
                })
                .collect::<Option<_>>()?
        };
        let mut rows = Vec::with_capacity(values.rows.len());
        for row in &values.rows {
            if row.content.len() != targets.len() {
                return None;
            }
            let mut out: Vec<Cell> = schema
                .columns()
                .iter()
                .map(|c| Cell::Const(c.default.clone().unwrap_or(Value::Null)))
                .collect();
            for (e, &i) in row.content.iter().zip(&targets) {
                out[i] = Cell::of(e, |e| cell(e, &schema.columns()[i]))?;
            }
            rows.push(out);
        }
        if matches!(mode, InsertMode::DoUpdateWith(_)) {
            // Values computed from the existing rows: planned.
            return None;
        }
        if let InsertMode::DoUpdate(columns) = mode {
            // A DO UPDATE may not touch a row twice; the planned statement says so.
            if rows.len() > 1 || columns.iter().any(|c| schema.index_of(c).is_err()) {
                return None;
            }
        }
        Some(ValuesInsert {
            table: table_name,
            schema,
            mode: mode.clone(),
            rows,
        })
    }

    /// The rows for `params` (the statement's `$n`); `None` if the table or its schema
    /// changed since the statement was recognised, or a parameter is not a value of its
    /// column as such, or a row has a NULL where the table takes none (the caller then plans
    /// the statement instead, which reports that).
    pub(crate) fn bind(&self, db: &Database, params: &[ScalarValue]) -> Option<BoundInsert> {
        let table = db.table(&self.table).ok()?;
        if table.schema_fingerprint() != self.schema.fingerprint() {
            return None;
        }
        let columns = self.schema.columns();
        let rows = self
            .rows
            .iter()
            .map(|row| {
                row.iter()
                    .zip(columns)
                    .map(|(c, col)| {
                        c.value(params, col.data_type)
                            .filter(|v| col.nullable || !v.is_null())
                    })
                    .collect::<Option<Vec<Value>>>()
            })
            .collect::<Option<Vec<_>>>()?;
        Some(BoundInsert {
            table,
            schema: self.schema.clone(),
            mode: self.mode.clone(),
            rows,
        })
    }
}

impl BoundInsert {
    /// The number of rows the statement inserts or updates.
    pub(crate) fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the statement's outcome is known before it is written, so that it can be held
    /// back: an upsert (every row counts) of rows the storage engine will certainly accept.
    pub(crate) fn deferrable(&self, limits: &TabletOptions) -> bool {
        matches!(self.mode, InsertMode::Upsert | InsertMode::DoUpdate(_))
            && self.rows.iter().all(|row| {
                let mut bytes = 0;
                for v in row {
                    let len = match v {
                        Value::Utf8(s) => s.len(),
                        Value::Binary(b) => b.len(),
                        _ => 0,
                    };
                    if len > limits.max_cell_bytes {
                        return false;
                    }
                    // Generous for the encoding's per-value overhead.
                    bytes += len + 24;
                }
                bytes <= limits.max_row_bytes
            })
    }

    /// Whether `other`'s rows can join these (both write the same table the same way, and
    /// there is room), so that one batch writes both.
    pub(crate) fn can_absorb(&self, other: &BoundInsert) -> bool {
        self.table.name() == other.table.name()
            && self.schema.version() == other.schema.version()
            && self.mode == other.mode
            // Bounded: a session holds back at most this many rows.
            && self.rows.len() < MAX_DEFERRED_ROWS
    }

    /// Adds `other`'s rows (see [`BoundInsert::can_absorb`]).
    pub(crate) fn absorb(&mut self, other: BoundInsert) {
        self.rows.extend(other.rows);
    }

    /// Writes the rows as one atomic batch and returns the statement's count. A plain INSERT
    /// that meets an existing key fails and leaves nothing behind, as in PostgreSQL.
    pub(crate) async fn write(self) -> Result<u64, SqlError> {
        let n = self.rows.len() as u64;
        let names: Vec<&str> = self
            .schema
            .columns()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        let op = match &self.mode {
            InsertMode::Insert => WriteOp::Insert,
            InsertMode::DoNothing => WriteOp::InsertIgnore,
            InsertMode::Upsert | InsertMode::DoUpdate(_) => WriteOp::Upsert,
            InsertMode::DoUpdateWith(_) => {
                return Err(SqlError::DataFusion(
                    datafusion::error::DataFusionError::Internal(
                        "a computed ON CONFLICT update as constant rows".into(),
                    ),
                ))
            }
        };
        let mut builder = BatchBuilder::new(names);
        for row in self.rows {
            builder.push(op, row);
        }
        let mut batch = builder.build(&self.schema)?;
        if let InsertMode::DoUpdate(columns) = &self.mode {
            batch = batch.with_upsert_columns(columns.iter().cloned())?;
        }
        let keys = batch.rows().project(self.schema.key_indices())?;
        let outcome = write_outcome(&self.table, batch).await?;
        let Some(first) = outcome.errors.first() else {
            return Ok(match op {
                WriteOp::InsertIgnore => outcome.applied as u64,
                _ => n,
            });
        };
        // Only a plain INSERT has per-row errors (a duplicate key): undo the rows it wrote.
        let failed: HashSet<usize> = outcome.errors.iter().map(|e| e.row).collect();
        let applied: Vec<u32> = (0..keys.num_rows() as u32)
            .filter(|r| !failed.contains(&(*r as usize)))
            .collect();
        if !applied.is_empty() {
            let undo = arrow::compute::take_record_batch(
                &keys,
                &arrow::array::UInt32Array::from(applied),
            )?;
            let undo = nyala_storage::WriteBatch::uniform(WriteOp::DeleteIgnore, undo);
            if let Err(e) = write_outcome(&self.table, undo).await {
                tracing::error!(error = %e, "could not undo part of a failed INSERT");
            }
        }
        Err(SqlError::Row(first.clone()))
    }
}

/// The most rows a session holds back before it writes them.
const MAX_DEFERRED_ROWS: usize = 16_384;

/// A constant as a value of `col`, when DataFusion would insert exactly that value.
fn cell(e: &Expr, col: &ColumnSchema) -> Option<Value> {
    if let Expr::Value(v) = e {
        match (&v.value, col.data_type) {
            (ast::Value::Null, _) => return Some(Value::Null),
            (ast::Value::Boolean(b), DataType::Bool) => return Some(Value::Bool(*b)),
            (ast::Value::HexStringLiteral(hex), DataType::Binary) => {
                return decode_hex(hex).map(Value::Binary)
            }
            _ => {}
        }
    }
    match col.data_type {
        DataType::Float32 | DataType::Float64 => float(e, col.data_type),
        t => constant_of(e, t),
    }
}

/// A number for a float column: DataFusion reads the literal as an `Int64` or a `Float64` and
/// casts it, which for these magnitudes is the same as reading it as an `f64`.
fn float(e: &Expr, t: DataType) -> Option<Value> {
    let (text, negative) = signed_literal(e)?;
    let ast::Value::Number(n, false) = text else {
        return None;
    };
    // Integers beyond 2^53 would round differently through Int64.
    if n.bytes().all(|b| b.is_ascii_digit()) && n.len() > 15 {
        return None;
    }
    let v: f64 = n.parse().ok().filter(|v: &f64| v.is_finite())?;
    let v = if negative { -v } else { v };
    Some(match t {
        DataType::Float32 => Value::Float32(v as f32),
        _ => Value::Float64(v),
    })
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}
