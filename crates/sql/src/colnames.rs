//! PostgreSQL's names for result columns the query did not name.
//!
//! DataFusion names an unaliased select item after its whole expression (`count(*)`,
//! `avg(traffic.speed)`, `t.n + Int64(1)`); PostgreSQL after its function, column or type
//! (`count`, `avg`, `?column?`). Programs read results by those names (`row["count"]` in
//! psycopg, `df["avg"]` in pandas), so the names a client sees follow PostgreSQL's rules
//! (`FigureColname` in its parser).
//!
//! Function columns (and nameless ones) get their names as aliases before planning, so that
//! the query itself can use them (`ORDER BY count`, a subquery's `s.avg`), where that keeps the
//! select list's names unique: PostgreSQL allows two result columns of one name
//! (`SELECT count(a), count(b)`), DataFusion's plans do not. Every other name is put on the
//! result's schema after planning.

use std::ops::ControlFlow;
use std::sync::Arc;

use arrow::datatypes::{Field, Schema, SchemaRef};

use datafusion::sql::sqlparser::ast::{
    self, DataType as SqlType, Expr, Query, SelectItem, SetExpr, Statement, TimezoneInfo,
    TrimWhereField,
};

/// The name PostgreSQL gives an expression of no name at all.
const NO_NAME: &str = "?column?";

/// PostgreSQL's names for the result columns of `statement`, or `None` for statements whose
/// result columns they cannot be lined up with (not a query, more than one `*`). Aliased and
/// `*` columns keep the planner's names.
pub(crate) fn result_names(statement: &Statement) -> Option<ResultNames> {
    let Statement::Query(q) = statement else {
        return None;
    };
    let items = select_items(q)?;
    let wildcards = items
        .iter()
        .filter(|i| {
            matches!(
                i,
                SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..)
            )
        })
        .count();
    if wildcards > 1 {
        return None;
    }
    let names = items
        .iter()
        .map(|i| match i {
            SelectItem::UnnamedExpr(e) => Slot::Named(figure(e).0),
            SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => Slot::Wildcard,
            _ => Slot::Keep,
        })
        .collect();
    Some(ResultNames(names))
}

/// Names the function and nameless columns of every select list in `statement` as PostgreSQL
/// would (`count(*)` becomes `count(*) AS count`, `n + 1` becomes `n + 1 AS "?column?"`), so
/// that the rest of the query can use those names as in PostgreSQL: `ORDER BY count`,
/// `SELECT sub.avg FROM (SELECT avg(x) FROM t) sub`, a client wrapping the query in
/// `SELECT * FROM (...)`. A name's first occurrence only (a plan's columns must have distinct
/// names: later ones get `name_2`, ..., and the result is renamed back by
/// [`ResultNames::apply`], so `SELECT v, v` and `SELECT count(*), count(*)` work as in
/// PostgreSQL), and not in lists with a `*` (whose columns could clash). Names PostgreSQL
/// derives from columns or types (`CAST(n AS TEXT)` is `n`) are not made aliases, as one could
/// shadow the column in `GROUP BY`.
pub(crate) fn name_function_columns(statement: &mut Statement) {
    struct Namer;
    impl ast::VisitorMut for Namer {
        type Break = ();
        fn post_visit_query(&mut self, q: &mut Query) -> ControlFlow<()> {
            name_in(&mut q.body);
            ControlFlow::Continue(())
        }
    }
    fn name_in(body: &mut SetExpr) {
        match body {
            SetExpr::Select(s) => name_select(&mut s.projection),
            SetExpr::SetOperation { left, right, .. } => {
                name_in(left);
                name_in(right);
            }
            _ => {}
        }
    }
    fn name_select(items: &mut [SelectItem]) {
        let mut names: Vec<Option<String>> = Vec::with_capacity(items.len());
        for item in items.iter() {
            names.push(match item {
                SelectItem::UnnamedExpr(e) => match figure(e) {
                    (_, 0) => Some(NO_NAME.to_string()),
                    (name, _) => name,
                },
                SelectItem::ExprWithAlias { alias, .. } => Some(ident_name(alias)),
                _ => return,
            });
        }
        let mut taken: std::collections::HashSet<String> =
            names.iter().flatten().cloned().collect();
        for (i, (item, name)) in items.iter_mut().zip(&names).enumerate() {
            let (SelectItem::UnnamedExpr(e), Some(name)) = (&*item, name) else {
                continue;
            };
            let repeated = names[..i].iter().any(|n| n.as_ref() == Some(name));
            let alias = if repeated {
                // A plan's columns need distinct names; the result shows PostgreSQL's again.
                let mut k = i + 1;
                while taken.contains(&format!("{name}_{k}")) {
                    k += 1;
                }
                format!("{name}_{k}")
            } else if is_function(e) || name == NO_NAME {
                name.clone()
            } else {
                continue;
            };
            taken.insert(alias.clone());
            *item = SelectItem::ExprWithAlias {
                expr: e.clone(),
                alias: ast::Ident::with_quote('"', alias),
            };
        }
    }
    let _ = ast::VisitMut::visit(statement, &mut Namer);
}

/// Whether PostgreSQL names `e` after a function (rather than a column, a type or nothing).
fn is_function(e: &Expr) -> bool {
    match e {
        Expr::Nested(inner) => is_function(inner),
        Expr::Function(_)
        | Expr::Extract { .. }
        | Expr::Ceil { .. }
        | Expr::Floor { .. }
        | Expr::Position { .. }
        | Expr::Substring { .. }
        | Expr::Overlay { .. }
        | Expr::AtTimeZone { .. }
        | Expr::Trim { .. } => true,
        _ => false,
    }
}

/// The select list whose names a query's result takes: the leftmost `SELECT` of set operations.
fn select_items(q: &Query) -> Option<&[SelectItem]> {
    let mut body = q.body.as_ref();
    loop {
        match body {
            SetExpr::Select(s) => return Some(&s.projection),
            SetExpr::Query(q) => body = q.body.as_ref(),
            SetExpr::SetOperation { left, .. } => body = left.as_ref(),
            _ => return None,
        }
    }
}

#[derive(Debug, Clone)]
enum Slot {
    /// PostgreSQL's name for an unaliased expression.
    Named(Option<String>),
    /// `*` or `t.*`: as many columns as it expands to, named by the planner.
    Wildcard,
    /// An alias: the planner's name is the one written.
    Keep,
}

/// The result column names of one statement (see [`result_names`]).
#[derive(Debug, Clone)]
pub(crate) struct ResultNames(Vec<Slot>);

impl ResultNames {
    /// `schema` with PostgreSQL's names; unchanged when the select list does not line up with
    /// its columns.
    pub fn apply(&self, schema: &SchemaRef) -> SchemaRef {
        let n = schema.fields().len();
        let fixed = self
            .0
            .iter()
            .filter(|s| !matches!(s, Slot::Wildcard))
            .count();
        let wildcard_width = if self.0.iter().any(|s| matches!(s, Slot::Wildcard)) {
            match n.checked_sub(fixed) {
                Some(w) => w,
                None => return schema.clone(),
            }
        } else if n == fixed {
            0
        } else {
            return schema.clone();
        };
        let mut names: Vec<Option<&str>> = Vec::with_capacity(n);
        for slot in &self.0 {
            match slot {
                Slot::Named(name) => names.push(Some(name.as_deref().unwrap_or(NO_NAME))),
                Slot::Wildcard => names.extend(std::iter::repeat_n(None, wildcard_width)),
                Slot::Keep => names.push(None),
            }
        }
        if names
            .iter()
            .zip(schema.fields())
            .all(|(name, f)| name.is_none_or(|name| name == f.name()))
        {
            return schema.clone();
        }
        let fields: Vec<Field> = names
            .iter()
            .zip(schema.fields())
            .map(|(name, f)| match name {
                Some(name) => f.as_ref().clone().with_name(*name),
                None => f.as_ref().clone(),
            })
            .collect();
        Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
    }
}

/// PostgreSQL's name for `e` and how strongly it holds: 2 for a column, function or subquery
/// name, 1 for a fallback (`case`, a cast's type), 0 for none (`?column?`). A cast or `CASE`
/// takes its operand's name only when that one is strong.
fn figure(e: &Expr) -> (Option<String>, u8) {
    let strong = |s: &str| (Some(s.to_string()), 2);
    match e {
        Expr::Identifier(i) => (Some(ident_name(i)), 2),
        Expr::CompoundIdentifier(parts) => match parts.last() {
            Some(i) => (Some(ident_name(i)), 2),
            None => (None, 0),
        },
        Expr::Function(f) => match f.name.0.last().and_then(|p| p.as_ident()) {
            Some(i) => (Some(ident_name(i)), 2),
            None => (None, 0),
        },
        Expr::Nested(inner) | Expr::Collate { expr: inner, .. } => figure(inner),
        Expr::Cast {
            expr, data_type, ..
        } => match figure(expr) {
            named @ (_, 2) => named,
            _ => (Some(type_name(data_type)), 1),
        },
        Expr::TypedString(t) => (Some(type_name(&t.data_type)), 1),
        Expr::Interval(_) => (Some("interval".into()), 1),
        Expr::Case { else_result, .. } => match else_result.as_deref().map(figure) {
            Some(named @ (_, 2)) => named,
            _ => (Some("case".into()), 1),
        },
        Expr::Extract { .. } => strong("extract"),
        Expr::Ceil { .. } => strong("ceil"),
        Expr::Floor { .. } => strong("floor"),
        Expr::Position { .. } => strong("position"),
        Expr::Substring { .. } => strong("substring"),
        Expr::Overlay { .. } => strong("overlay"),
        Expr::AtTimeZone { .. } => strong("timezone"),
        Expr::Trim { trim_where, .. } => strong(match trim_where {
            Some(TrimWhereField::Leading) => "ltrim",
            Some(TrimWhereField::Trailing) => "rtrim",
            _ => "btrim",
        }),
        Expr::Exists { .. } => strong("exists"),
        Expr::Array(_) => (Some("array".into()), 1),
        Expr::Tuple(_) => (Some("row".into()), 1),
        Expr::Subquery(q) => match select_items(q).and_then(|items| items.first()) {
            Some(SelectItem::ExprWithAlias { alias, .. }) => (Some(ident_name(alias)), 2),
            Some(SelectItem::UnnamedExpr(e)) => match figure(e) {
                named @ (_, 2) => named,
                _ => (None, 0),
            },
            _ => (None, 0),
        },
        _ => (None, 0),
    }
}

/// An identifier as PostgreSQL stores it: folded to lower case unless quoted.
fn ident_name(i: &datafusion::sql::sqlparser::ast::Ident) -> String {
    match i.quote_style {
        Some(_) => i.value.clone(),
        None => i.value.to_lowercase(),
    }
}

/// PostgreSQL's internal name of a type written in a cast (`int` is `int4`).
fn type_name(t: &SqlType) -> String {
    match t {
        SqlType::Int(_) | SqlType::Integer(_) | SqlType::Int4(_) => "int4".into(),
        SqlType::BigInt(_) | SqlType::Int8(_) => "int8".into(),
        SqlType::SmallInt(_) | SqlType::Int2(_) | SqlType::TinyInt(_) => "int2".into(),
        SqlType::Real | SqlType::Float4 => "float4".into(),
        SqlType::Float(_) | SqlType::Float8 | SqlType::Double(_) | SqlType::DoublePrecision => {
            "float8".into()
        }
        SqlType::Bool | SqlType::Boolean => "bool".into(),
        SqlType::Varchar(_) | SqlType::CharacterVarying(_) => "varchar".into(),
        SqlType::Char(_) | SqlType::Character(_) => "bpchar".into(),
        SqlType::Text | SqlType::String(_) => "text".into(),
        SqlType::Numeric(_) | SqlType::Decimal(_) => "numeric".into(),
        SqlType::Timestamp(_, TimezoneInfo::WithTimeZone | TimezoneInfo::Tz) => {
            "timestamptz".into()
        }
        SqlType::Timestamp(..) | SqlType::TimestampNtz(_) => "timestamp".into(),
        SqlType::Date => "date".into(),
        SqlType::Interval { .. } => "interval".into(),
        SqlType::Bytea => "bytea".into(),
        other => {
            let s = other.to_string().to_lowercase();
            match s.find('(') {
                Some(p) => s[..p].trim().to_string(),
                None => s,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::DataType;
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    /// The names PostgreSQL 16 gives these select lists (checked against `psql`).
    #[test]
    fn unaliased_columns_are_named_as_postgresql_names_them() {
        let cases = [
            (
                "SELECT count(*), avg(t.x), MAX(x) FROM t",
                vec!["count", "avg", "max"],
            ),
            (
                "SELECT n + 1, 1, $1, -n, n IS NULL FROM t",
                vec!["?column?"; 5],
            ),
            (
                "SELECT t.n, \"Mixed\", Upper FROM t",
                vec!["n", "Mixed", "upper"],
            ),
            (
                "SELECT CAST(n AS TEXT), '1'::int, 2::bigint, (n + 1)::float8, x::timestamptz",
                vec!["n", "int4", "int8", "float8", "x"],
            ),
            (
                "SELECT CASE WHEN n > 1 THEN 1 END, CASE WHEN n > 1 THEN 1 ELSE n END",
                vec!["case", "n"],
            ),
            (
                "SELECT extract(hour FROM ts), date_part('dow', ts), date_trunc('hour', ts)",
                vec!["extract", "date_part", "date_trunc"],
            ),
            (
                "SELECT TIMESTAMP '2023-01-01', INTERVAL '1 hour', trim(s), (n), now()",
                vec!["timestamp", "interval", "btrim", "n", "now"],
            ),
            (
                "SELECT (SELECT max(x) FROM t), EXISTS (SELECT 1), a AS b",
                // An alias keeps the planner's name (which is the alias).
                vec!["max", "exists", "planned2"],
            ),
        ];
        for (sql, want) in cases {
            let s = Parser::parse_sql(&PostgreSqlDialect {}, sql)
                .unwrap()
                .remove(0);
            let names = result_names(&s).unwrap();
            let planned = Arc::new(Schema::new(
                (0..want.len())
                    .map(|i| Field::new(format!("planned{i}"), DataType::Int64, true))
                    .collect::<Vec<_>>(),
            ));
            let got = names.apply(&planned);
            let got: Vec<&str> = got.fields().iter().map(|f| f.name().as_str()).collect();
            assert_eq!(got, want, "{sql}");
        }
    }

    #[test]
    fn unique_function_and_nameless_columns_become_aliases() {
        let mut s = Parser::parse_sql(
            &PostgreSqlDialect {},
            "SELECT uid, count(*), sum(a), sum(b), CAST(n AS TEXT), n + 1, x AS y \
             FROM (SELECT avg(v), 2 FROM t) sub ORDER BY count",
        )
        .unwrap()
        .remove(0);
        name_function_columns(&mut s);
        assert_eq!(
            s.to_string(),
            "SELECT uid, count(*) AS \"count\", sum(a) AS \"sum\", sum(b) AS \"sum_4\", \
             CAST(n AS TEXT), n + 1 AS \"?column?\", x AS y \
             FROM (SELECT avg(v) AS \"avg\", 2 AS \"?column?\" FROM t) sub ORDER BY count"
        );
    }

    #[test]
    fn a_star_keeps_the_names_of_the_columns_it_expands_to() {
        let s = Parser::parse_sql(&PostgreSqlDialect {}, "SELECT count(*), *, n + 1 FROM t")
            .unwrap()
            .remove(0);
        let names = result_names(&s).unwrap();
        let planned = Arc::new(Schema::new(vec![
            Field::new("count(*)", DataType::Int64, false),
            Field::new("a", DataType::Int64, false),
            Field::new("b", DataType::Int64, false),
            Field::new("t.n + Int64(1)", DataType::Int64, false),
        ]));
        let got = names.apply(&planned);
        let got: Vec<&str> = got.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(got, ["count", "a", "b", "?column?"]);
        // The names of a UNION come from its first SELECT; VALUES keep column1, column2.
        let s = Parser::parse_sql(
            &PostgreSqlDialect {},
            "SELECT sum(a) FROM t UNION ALL SELECT 1",
        )
        .unwrap()
        .remove(0);
        let got = result_names(&s)
            .unwrap()
            .apply(&Arc::new(Schema::new(vec![Field::new(
                "sum(t.a)",
                DataType::Int64,
                true,
            )])));
        assert_eq!(got.field(0).name(), "sum");
        let s = Parser::parse_sql(&PostgreSqlDialect {}, "VALUES (1, 2)")
            .unwrap()
            .remove(0);
        assert!(result_names(&s).is_none());
    }
}
