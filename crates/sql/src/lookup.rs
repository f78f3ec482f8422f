//! The point-lookup fast path.
//!
//! `SELECT <columns> FROM t WHERE k1 = c1 AND ... AND kn = cn`, with every primary-key column
//! pinned by a constant, reads at most one row: it is answered by one [`Table::get`] (a few
//! microseconds), skipping DataFusion's planning and optimisation (about a millisecond).
//!
//! The invariant that keeps this honest: a statement takes the fast path only when its answer
//! is certainly the same as DataFusion's, rows and schema alike. Anything this module is not
//! sure about (a clause it does not model, a constant it would have to coerce differently
//! from DataFusion, a column it cannot find) returns `None`, and the statement is planned
//! normally. The `Select` and `Query` destructurings below are exhaustive on purpose: a
//! sqlparser upgrade that adds a clause must be looked at here before it compiles.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow_schema::{Field, Schema as ArrowSchema};
use datafusion::common::ScalarValue;
use datafusion::sql::sqlparser::ast::{
    self, BinaryOperator, Expr, GroupByExpr, SelectFlavor, SelectItem, SetExpr, TableFactor,
    UnaryOperator,
};

use nyala_common::{DataType, Schema, Value};
use nyala_storage::{Database, Table, TableName};

use crate::engine::normalize;
use crate::error::SqlError;
use crate::params::Cell;
use crate::provider::{sql_columns, sql_type};

/// A statement recognised as a lookup of one key.
#[derive(Debug)]
pub(crate) struct PointLookup {
    table: TableName,
    /// The table's schema the statement was recognised against.
    schema: Schema,
    /// The key, in primary-key order.
    key: Vec<Cell>,
    /// The output columns: (index in the table's schema, output name).
    columns: Vec<(usize, String)>,
}

impl PointLookup {
    /// Recognises `statement` as a point lookup on a table of `db`, or `None`.
    pub(crate) fn recognise(
        db: &Database,
        default_schema: &str,
        statement: &ast::Statement,
    ) -> Option<PointLookup> {
        let ast::Statement::Query(query) = statement else {
            return None;
        };
        let SetExpr::Select(select) = plain_body(query)? else {
            return None;
        };
        let ast::Select {
            select_token: _,
            optimizer_hints: _,
            distinct: None,
            select_modifiers: None,
            top: None,
            top_before_distinct: _,
            projection,
            exclude: None,
            into: None,
            from,
            lateral_views,
            prewhere: None,
            selection: Some(selection),
            connect_by,
            group_by: GroupByExpr::Expressions(group_by, group_by_modifiers),
            cluster_by,
            distribute_by,
            sort_by,
            having: None,
            named_window,
            qualify: None,
            window_before_qualify: _,
            value_table_mode: None,
            flavor: SelectFlavor::Standard,
        } = select.as_ref()
        else {
            return None;
        };
        if !(lateral_views.is_empty()
            && connect_by.is_empty()
            && group_by.is_empty()
            && group_by_modifiers.is_empty()
            && cluster_by.is_empty()
            && distribute_by.is_empty()
            && sort_by.is_empty()
            && named_window.is_empty()
            && from.len() == 1
            && from[0].joins.is_empty())
        {
            return None;
        }
        let TableFactor::Table {
            name,
            alias,
            args: None,
            with_hints,
            version: None,
            with_ordinality: false,
            partitions,
            json_path: None,
            sample: None,
            index_hints,
        } = &from[0].relation
        else {
            return None;
        };
        if !with_hints.is_empty() || !partitions.is_empty() || !index_hints.is_empty() {
            return None;
        }
        let (table_name, table) = table_of(db, default_schema, name)?;
        let schema = table.schema();
        // The name columns may be qualified with: the alias, else the table's own name.
        let qualifier = match alias {
            Some(a) if !a.columns.is_empty() => return None,
            Some(a) => normalize(&a.name),
            None => table_name.name.clone(),
        };
        let column_of = |e: &Expr| -> Option<usize> {
            let ident = match e {
                Expr::Identifier(i) => i,
                Expr::CompoundIdentifier(parts) if parts.len() == 2 => {
                    if normalize(&parts[0]) != qualifier {
                        return None;
                    }
                    &parts[1]
                }
                _ => return None,
            };
            schema.index_of(&normalize(ident)).ok()
        };

        // Output columns.
        let mut columns = Vec::new();
        for item in projection {
            match item {
                SelectItem::Wildcard(options) if plain_wildcard(options) => columns.extend(
                    schema
                        .columns()
                        .iter()
                        .enumerate()
                        .map(|(i, c)| (i, c.name.clone())),
                ),
                SelectItem::UnnamedExpr(e) => {
                    let i = column_of(e)?;
                    columns.push((i, schema.columns()[i].name.clone()));
                }
                SelectItem::ExprWithAlias { expr, alias } => {
                    columns.push((column_of(expr)?, normalize(alias)));
                }
                _ => return None,
            }
        }
        // DataFusion refuses duplicate output names; let it say so.
        let mut names: Vec<&str> = columns.iter().map(|(_, n)| n.as_str()).collect();
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return None;
        }

        // The WHERE clause: exactly one `key column = constant` per key column, ANDed.
        let mut equalities = Vec::new();
        conjuncts(selection, &mut equalities)?;
        let keys = schema.key_indices();
        let mut key: Vec<Option<Cell>> = vec![None; keys.len()];
        for (left, right) in equalities {
            let (col, constant) = match (column_of(left), column_of(right)) {
                (Some(c), None) => (c, right),
                (None, Some(c)) => (c, left),
                _ => return None,
            };
            let k = keys.iter().position(|&i| i == col)?;
            if key[k].is_some() {
                return None;
            }
            let t = schema.columns()[col].data_type;
            key[k] = Some(Cell::of(constant, |e| constant_of(e, t))?);
        }
        let key = key.into_iter().collect::<Option<Vec<Cell>>>()?;
        Some(PointLookup {
            table: table_name,
            schema,
            key,
            columns,
        })
    }

    /// Reads the row for `params` (the statement's `$n`): a batch of one row, or an empty
    /// one; `None` if the table or its schema changed since the statement was recognised, or
    /// a parameter is not a key value as such (the caller then plans the statement instead).
    pub(crate) fn run(
        &self,
        db: &Database,
        params: &[ScalarValue],
    ) -> Result<Option<Vec<RecordBatch>>, SqlError> {
        let Ok(table) = db.table(&self.table) else {
            return Ok(None);
        };
        if table.schema_fingerprint() != self.schema.fingerprint() {
            return Ok(None);
        }
        let key: Option<Vec<Value>> = self
            .key
            .iter()
            .zip(self.schema.key_indices())
            .map(|(c, &i)| {
                c.value(params, self.schema.columns()[i].data_type)
                    .filter(|v| !v.is_null())
            })
            .collect();
        let Some(key) = key else {
            return Ok(None);
        };
        let fields: Vec<Field> = self
            .columns
            .iter()
            .map(|(i, name)| {
                // As the table provider shows it (every column nullable, zoneless time).
                let stored = self.schema.columns()[*i].data_type.to_arrow();
                Field::new(name, sql_type(&stored), true)
            })
            .collect();
        let out_schema = Arc::new(ArrowSchema::new(fields));
        let row = match table.get_batch(&key)? {
            Some(row) if row.schema().fields() != self.schema.arrow_schema().fields() => {
                return Ok(None)
            }
            Some(row) => row,
            None if table.schema_fingerprint() != self.schema.fingerprint() => return Ok(None),
            None => return Ok(Some(vec![RecordBatch::new_empty(out_schema)])),
        };
        let arrays: Vec<ArrayRef> = self
            .columns
            .iter()
            .map(|(i, _)| row.column(*i).clone())
            .collect();
        let arrays = sql_columns(&arrays);
        Ok(Some(vec![RecordBatch::try_new(out_schema, arrays)?]))
    }
}

/// The table a statement names, with unqualified names in `default_schema` (the session's
/// `search_path`). `catalog.schema.table`, `information_schema` (served by the catalog, not
/// the database) and anything unusual are `None`: they go the normal way. Names fold as
/// DataFusion folds them (ASCII only).
pub(crate) fn table_of(
    db: &Database,
    default_schema: &str,
    name: &ast::ObjectName,
) -> Option<(TableName, Table)> {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|p| match p {
            ast::ObjectNamePart::Identifier(i) => Some(normalize(i)),
            _ => None,
        })
        .collect::<Option<_>>()?;
    let table_name = match parts.as_slice() {
        [t] if default_schema != crate::system::INFORMATION_SCHEMA => {
            TableName::new(default_schema, t)
        }
        [ns, t] if ns != crate::system::INFORMATION_SCHEMA => TableName::new(ns, t),
        _ => return None,
    };
    let table = db.table(&table_name).ok()?;
    Some((table_name, table))
}

/// The body of a query with nothing around it (no `WITH`, `ORDER BY`, `LIMIT`, locks, ...),
/// which is all the fast paths model.
pub(crate) fn plain_body(query: &ast::Query) -> Option<&SetExpr> {
    let ast::Query {
        with: None,
        body,
        order_by: None,
        limit_clause: None,
        fetch: None,
        locks,
        for_clause: None,
        settings: None,
        format_clause: None,
        pipe_operators,
    } = query
    else {
        return None;
    };
    (locks.is_empty() && pipe_operators.is_empty()).then_some(body.as_ref())
}

/// A literal, possibly negated: `(value, negative)`.
pub(crate) fn signed_literal(e: &Expr) -> Option<(&ast::Value, bool)> {
    match e {
        Expr::Value(v) => Some((&v.value, false)),
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => match expr.as_ref() {
            Expr::Value(v) => Some((&v.value, true)),
            _ => None,
        },
        _ => None,
    }
}

/// `*` with no `EXCLUDE`, `EXCEPT`, `REPLACE`, `RENAME`, `ILIKE` or alias.
fn plain_wildcard(o: &ast::WildcardAdditionalOptions) -> bool {
    o.opt_ilike.is_none()
        && o.opt_exclude.is_none()
        && o.opt_except.is_none()
        && o.opt_replace.is_none()
        && o.opt_rename.is_none()
        && o.opt_alias.is_none()
}

/// Collects the `a = b` terms of an AND-chain; `None` if anything else is in it.
fn conjuncts<'a>(e: &'a Expr, out: &mut Vec<(&'a Expr, &'a Expr)>) -> Option<()> {
    match e {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            conjuncts(left, out)?;
            conjuncts(right, out)
        }
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } => {
            out.push((left, right));
            Some(())
        }
        Expr::Nested(inner) => conjuncts(inner, out),
        _ => None,
    }
}

/// A constant as a key value of type `t`, when DataFusion would compare it as exactly that
/// value: integers that fit the column, text for text, and timestamp/date text without a zone
/// (parsed by the same Arrow cast DataFusion's coercion uses).
pub(crate) fn constant_of(e: &Expr, t: DataType) -> Option<Value> {
    let (text, negative) = match e {
        Expr::Value(_) | Expr::UnaryOp { .. } => signed_literal(e)?,
        Expr::TypedString(ts) => {
            let matches_type = matches!(
                (&ts.data_type, t),
                (
                    ast::DataType::Timestamp(None, ast::TimezoneInfo::None),
                    DataType::Timestamp
                ) | (ast::DataType::Date, DataType::Date)
            );
            return match &ts.value.value {
                // DataFusion reads `TIMESTAMP '...'` as nanoseconds: decline what that cannot
                // hold exactly (sub-microsecond digits, years outside 1678-2261).
                ast::Value::SingleQuotedString(s) if matches_type => {
                    let sub_micro = s
                        .split_once('.')
                        .is_some_and(|(_, f)| f.bytes().take_while(u8::is_ascii_digit).count() > 6);
                    match parse_temporal(s, t)? {
                        Value::Timestamp(us)
                            if sub_micro || us.unsigned_abs() >= MAX_NANOS_AS_MICROS =>
                        {
                            None
                        }
                        v => Some(v),
                    }
                }
                _ => None,
            };
        }
        _ => return None,
    };
    match (text, t) {
        (ast::Value::Number(n, false), DataType::Int8 | DataType::Int16)
        | (ast::Value::Number(n, false), DataType::Int32 | DataType::Int64) => {
            let digits = n.as_str();
            if !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let v: i64 = digits.parse().ok()?;
            let v = if negative { v.checked_neg()? } else { v };
            Some(match t {
                DataType::Int8 => Value::Int8(v.try_into().ok()?),
                DataType::Int16 => Value::Int16(v.try_into().ok()?),
                DataType::Int32 => Value::Int32(v.try_into().ok()?),
                _ => Value::Int64(v),
            })
        }
        (ast::Value::SingleQuotedString(s), DataType::Utf8) if !negative => {
            Some(Value::Utf8(s.clone()))
        }
        (ast::Value::SingleQuotedString(s), DataType::Timestamp | DataType::Date) if !negative => {
            parse_temporal(s, t)
        }
        _ => None,
    }
}

/// The largest |microseconds| whose nanoseconds fit an i64.
const MAX_NANOS_AS_MICROS: u64 = (i64::MAX / 1000) as u64;

/// Timestamp or date text as DataFusion casts it, for text without a time zone or offset
/// (whose reading differs between a literal and a cast).
fn parse_temporal(s: &str, t: DataType) -> Option<Value> {
    let time = s.get(10..).unwrap_or("");
    if time.contains(['+', '-', 'Z', 'z'])
        || time
            .bytes()
            .any(|b| b.is_ascii_alphabetic() && b != b'T' && b != b't')
    {
        return None;
    }
    let text: ArrayRef = Arc::new(StringArray::from(vec![s]));
    let options = arrow::compute::CastOptions {
        safe: false,
        ..Default::default()
    };
    let cast = arrow::compute::cast_with_options(&text, &t.to_arrow(), &options).ok()?;
    Value::from_array(&cast, 0).ok().filter(|v| !v.is_null())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_follow_datafusion_or_decline() {
        let e = |s: &str| {
            datafusion::sql::sqlparser::parser::Parser::new(
                &datafusion::sql::sqlparser::dialect::PostgreSqlDialect {},
            )
            .try_with_sql(s)
            .unwrap()
            .parse_expr()
            .unwrap()
        };
        assert_eq!(
            constant_of(&e("-5"), DataType::Int16),
            Some(Value::Int16(-5))
        );
        assert_eq!(constant_of(&e("40000"), DataType::Int16), None);
        assert_eq!(constant_of(&e("1.5"), DataType::Int32), None);
        assert_eq!(constant_of(&e("1e3"), DataType::Int32), None);
        assert_eq!(constant_of(&e("'7'"), DataType::Int32), None);
        assert_eq!(
            constant_of(&e("'1970-01-01 00:00:01'"), DataType::Timestamp),
            Some(Value::Timestamp(1_000_000))
        );
        assert_eq!(
            constant_of(&e("TIMESTAMP '1970-01-01T00:00:00.5'"), DataType::Timestamp),
            Some(Value::Timestamp(500_000))
        );
        assert_eq!(
            constant_of(&e("'1970-01-01 00:00:01+02'"), DataType::Timestamp),
            None
        );
        assert_eq!(
            constant_of(&e("'1970-01-02'"), DataType::Date),
            Some(Value::Date(1))
        );
        assert_eq!(
            constant_of(&e("'x'"), DataType::Utf8),
            Some(Value::Utf8("x".into()))
        );
        assert_eq!(constant_of(&e("now()"), DataType::Timestamp), None);
        assert_eq!(
            constant_of(&e("TIMESTAMP '2300-01-01 00:00:00'"), DataType::Timestamp),
            None
        );
        assert_eq!(
            constant_of(
                &e("TIMESTAMP '1969-12-31 23:59:59.9999995'"),
                DataType::Timestamp
            ),
            None
        );
    }

    #[test]
    fn recognises_only_full_key_equalities() {
        use nyala_common::{ColumnSchema, Schema};
        use nyala_storage::{DatabaseOptions, IfExists, PartitionSpec};
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path(), DatabaseOptions::default()).unwrap();
        let schema = Schema::new(
            vec![
                ColumnSchema::not_null("a", DataType::Int32),
                ColumnSchema::not_null("b", DataType::Utf8),
                ColumnSchema::nullable("v", DataType::Float64),
            ],
            &["a", "b"],
        )
        .unwrap();
        db.create_table(
            &TableName::parse("t").unwrap(),
            &schema,
            &PartitionSpec::hash(["a"], 2),
            IfExists::Error,
        )
        .unwrap();
        let recognised = |sql: &str| {
            let s = datafusion::sql::sqlparser::parser::Parser::parse_sql(
                &datafusion::sql::sqlparser::dialect::PostgreSqlDialect {},
                sql,
            )
            .unwrap();
            PointLookup::recognise(&db, "public", &s[0]).is_some()
        };
        for yes in [
            "SELECT * FROM t WHERE a = 1 AND b = 'x'",
            "select V, a from public.T where (B = 'x') and 1 = A",
            "SELECT t.v AS w FROM t WHERE t.a = -1 AND t.b = ''",
        ] {
            assert!(recognised(yes), "{yes}");
        }
        for no in [
            "SELECT * FROM t WHERE a = 1",
            "SELECT * FROM t WHERE a = 1 AND b = 'x' AND v = 2",
            "SELECT * FROM t WHERE a = 1 AND b = 'x' OR a = 2",
            "SELECT * FROM t WHERE a = 1 AND a = 2 AND b = 'x'",
            "SELECT * FROM t WHERE a = 1 AND b = 'x' LIMIT 1",
            "SELECT * FROM t WHERE a = 1 AND b = 'x' ORDER BY v",
            "SELECT DISTINCT * FROM t WHERE a = 1 AND b = 'x'",
            "SELECT count(*) FROM t WHERE a = 1 AND b = 'x'",
            "SELECT a, a FROM t WHERE a = 1 AND b = 'x'",
            "SELECT * FROM t WHERE \"A\" = 1 AND b = 'x'",
            "SELECT * FROM t WHERE a = 1.0 AND b = 'x'",
            "SELECT * FROM t WHERE a = $0 AND b = 'x'",
            "SELECT * FROM t u WHERE t.a = 1 AND u.b = 'x'",
            "SELECT * FROM t, t u WHERE t.a = 1 AND t.b = 'x'",
            "SELECT * FROM nope WHERE a = 1 AND b = 'x'",
            "WITH c AS (SELECT 1) SELECT * FROM t WHERE a = 1 AND b = 'x'",
            "SELECT * FROM information_schema.t WHERE a = 1 AND b = 'x'",
            "SELECT * FROM nyala.public.t WHERE a = 1 AND b = 'x'",
        ] {
            assert!(!recognised(no), "{no}");
        }
    }
}
