//! Statement parameters (`$1`, `$2`, ...): counted when a statement is prepared and bound as
//! constants when it runs.
//!
//! Binding writes each value into the statement as the literal it stands for, so a bound
//! statement is planned (and takes the point-lookup fast path) exactly as the same statement
//! written with constants would.

use std::ops::ControlFlow;

use arrow::util::display::array_value_to_string;
use arrow_schema::DataType as ArrowType;
use datafusion::common::ScalarValue;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{
    visit_expressions, visit_expressions_mut, Expr, UnaryOperator, Value,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

use crate::error::SqlError;

/// The position (1-based) a placeholder names, if it is `$n`.
fn position(e: &Expr) -> Option<usize> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::Placeholder(p) => p.strip_prefix('$')?.parse().ok(),
            _ => None,
        },
        _ => None,
    }
}

/// The highest `n` of the `$n` placeholders in `statement` (0 when there are none).
pub(crate) fn count(statement: &DFStatement) -> usize {
    let DFStatement::Statement(s) = statement else {
        return 0;
    };
    let mut n = 0;
    let _ = visit_expressions(s.as_ref(), |e| {
        if let Some(p) = position(e) {
            n = n.max(p);
        }
        ControlFlow::<()>::Continue(())
    });
    n
}

/// Types of parameters that appear cast (`$1::int`), which PostgreSQL takes as the
/// parameter's type where nothing else decides it.
pub(crate) fn cast_types(
    plan: &datafusion::logical_expr::LogicalPlan,
) -> std::collections::HashMap<String, ArrowType> {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    use datafusion::logical_expr::expr::{Cast, Placeholder};
    use datafusion::logical_expr::Expr as PlanExpr;
    let mut out = std::collections::HashMap::new();
    let _ = plan.apply_with_subqueries(|node| {
        node.apply_expressions(|e| {
            e.apply(|e| {
                if let PlanExpr::Cast(Cast { expr, field })
                | PlanExpr::TryCast(datafusion::logical_expr::TryCast { expr, field }) = e
                {
                    if let PlanExpr::Placeholder(Placeholder { id, .. }) = expr.as_ref() {
                        out.entry(id.clone())
                            .or_insert_with(|| field.data_type().clone());
                    }
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    });
    out
}

/// Replaces every `$n` in `statement` with the literal of `params[n - 1]`.
pub(crate) fn bind(statement: &mut DFStatement, params: &[ScalarValue]) -> Result<(), SqlError> {
    let DFStatement::Statement(s) = statement else {
        return Ok(());
    };
    let mut failure = None;
    let _ = visit_expressions_mut(s.as_mut(), |e| {
        let Some(p) = position(e) else {
            return ControlFlow::Continue(());
        };
        let bound = match params.get(p.wrapping_sub(1)) {
            Some(v) => literal(v),
            None => Err(SqlError::Parameter(format!(
                "there is no parameter ${p} ({} given)",
                params.len()
            ))),
        };
        match bound {
            Ok(l) => {
                *e = l;
                ControlFlow::Continue(())
            }
            Err(err) => {
                failure = Some(err);
                ControlFlow::Break(())
            }
        }
    });
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The SQL literal for `v`.
fn literal(v: &ScalarValue) -> Result<Expr, SqlError> {
    if v.is_null() {
        return Ok(Expr::value(Value::Null));
    }
    let number = |text: String| -> Expr {
        match text.strip_prefix('-') {
            Some(abs) => Expr::UnaryOp {
                op: UnaryOperator::Minus,
                expr: Box::new(Expr::value(Value::Number(abs.to_string(), false))),
            },
            None => Expr::value(Value::Number(text, false)),
        }
    };
    let text = || -> Result<String, SqlError> { Ok(array_value_to_string(&v.to_array()?, 0)?) };
    Ok(match v {
        ScalarValue::Boolean(Some(b)) => Expr::value(Value::Boolean(*b)),
        ScalarValue::Int8(_)
        | ScalarValue::Int16(_)
        | ScalarValue::Int32(_)
        | ScalarValue::Int64(_)
        | ScalarValue::UInt8(_)
        | ScalarValue::UInt16(_)
        | ScalarValue::UInt32(_)
        | ScalarValue::UInt64(_) => number(text()?),
        ScalarValue::Float32(Some(f)) if f.is_finite() => number(format!("{f:?}")),
        ScalarValue::Float64(Some(f)) if f.is_finite() => number(format!("{f:?}")),
        ScalarValue::Float32(_) | ScalarValue::Float64(_) => cast(&text()?, "DOUBLE PRECISION")?,
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => Expr::value(Value::SingleQuotedString(s.clone())),
        ScalarValue::Binary(Some(b))
        | ScalarValue::LargeBinary(Some(b))
        | ScalarValue::BinaryView(Some(b))
        | ScalarValue::FixedSizeBinary(_, Some(b)) => {
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            Expr::value(Value::HexStringLiteral(hex))
        }
        // Typed literals (`DATE '...'`, `TIMESTAMP '...'`), as a client would write them: the
        // point-lookup fast path recognises these.
        ScalarValue::Date32(_) | ScalarValue::Date64(_) => typed(&text()?, "DATE")?,
        ScalarValue::TimestampSecond(..)
        | ScalarValue::TimestampMillisecond(..)
        | ScalarValue::TimestampMicrosecond(..)
        | ScalarValue::TimestampNanosecond(..) => {
            if matches!(v.data_type(), ArrowType::Timestamp(_, Some(_))) {
                cast(&text()?, "TIMESTAMPTZ")?
            } else {
                typed(&text()?.replacen('T', " ", 1), "TIMESTAMP")?
            }
        }
        ScalarValue::Time32Second(_)
        | ScalarValue::Time32Millisecond(_)
        | ScalarValue::Time64Microsecond(_)
        | ScalarValue::Time64Nanosecond(_) => cast(&text()?, "TIME")?,
        ScalarValue::Decimal128(_, p, s) => cast(&text()?, &format!("DECIMAL({p}, {s})"))?,
        ScalarValue::IntervalYearMonth(_)
        | ScalarValue::IntervalDayTime(_)
        | ScalarValue::IntervalMonthDayNano(_) => {
            // arrow prints intervals as PostgreSQL reads them (`1 days 2 hours ...`).
            cast(&text()?, "INTERVAL")?
        }
        other => {
            return Err(SqlError::Parameter(format!(
                "parameters of type {} are not supported",
                other.data_type()
            )))
        }
    })
}

/// `type 'text'`, parsed as SQL.
fn typed(text: &str, sql_type: &str) -> Result<Expr, SqlError> {
    let sql = format!("{sql_type} '{}'", text.replace('\'', "''"));
    Ok(Parser::new(&PostgreSqlDialect {})
        .try_with_sql(&sql)?
        .parse_expr()?)
}

/// `CAST('text' AS type)`, parsed as SQL so that it plans exactly as written.
fn cast(text: &str, sql_type: &str) -> Result<Expr, SqlError> {
    let sql = format!("CAST('{}' AS {sql_type})", text.replace('\'', "''"));
    Ok(Parser::new(&PostgreSqlDialect {})
        .try_with_sql(&sql)?
        .parse_expr()?)
}

/// A value a fast path needs from a statement: a constant, or a `$n` parameter (index
/// `n - 1`) read when the statement runs. Lets a prepared statement be recognised once and
/// then run with each set of parameters without binding them into its text.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Cell {
    Const(nyala_common::Value),
    Param(usize),
}

impl Cell {
    /// `e` as a cell: a bare `$n`, else the constant `constant` makes of it (`None` if it
    /// makes none).
    pub(crate) fn of(
        e: &Expr,
        constant: impl FnOnce(&Expr) -> Option<nyala_common::Value>,
    ) -> Option<Cell> {
        match position(e) {
            Some(n) if n >= 1 => Some(Cell::Param(n - 1)),
            Some(_) => None,
            None => constant(e).map(Cell::Const),
        }
    }

    /// The cell's value for a column of type `t`, given the statement's parameters; `None`
    /// when the parameter is missing or would not be exactly that value once bound.
    pub(crate) fn value(
        &self,
        params: &[ScalarValue],
        t: nyala_common::DataType,
    ) -> Option<nyala_common::Value> {
        match self {
            Cell::Const(v) => Some(v.clone()),
            Cell::Param(i) => param_value(params.get(*i)?, t),
        }
    }
}

/// What `v`, bound as its literal ([`bind`]) and read as a constant of type `t` by the fast
/// paths (`lookup::constant_of`, `insert::cell`), stands for; `None` where those decline.
fn param_value(v: &ScalarValue, t: nyala_common::DataType) -> Option<nyala_common::Value> {
    use nyala_common::{DataType as T, Value as V};
    use ScalarValue as S;
    if v.is_null() {
        return Some(V::Null);
    }
    let int = match v {
        S::Int8(Some(x)) => Some(*x as i64),
        S::Int16(Some(x)) => Some(*x as i64),
        S::Int32(Some(x)) => Some(*x as i64),
        S::Int64(Some(x)) => Some(*x),
        S::UInt8(Some(x)) => Some(*x as i64),
        S::UInt16(Some(x)) => Some(*x as i64),
        S::UInt32(Some(x)) => Some(*x as i64),
        S::UInt64(Some(x)) => i64::try_from(*x).ok(),
        _ => None,
    };
    if let Some(x) = int {
        return match t {
            T::Int8 => x.try_into().ok().map(V::Int8),
            T::Int16 => x.try_into().ok().map(V::Int16),
            T::Int32 => x.try_into().ok().map(V::Int32),
            T::Int64 => Some(V::Int64(x)),
            // As a literal read as an `f64` (exact below 2^53).
            T::Float32 if x.unsigned_abs() < 1 << 53 => Some(V::Float32(x as f64 as f32)),
            T::Float64 if x.unsigned_abs() < 1 << 53 => Some(V::Float64(x as f64)),
            _ => None,
        };
    }
    match (v, t) {
        // A float binds as its shortest text, read back as an `f64`.
        (S::Float32(Some(f)), T::Float32 | T::Float64) if f.is_finite() => {
            let f: f64 = format!("{f:?}").parse().ok()?;
            Some(match t {
                T::Float32 => V::Float32(f as f32),
                _ => V::Float64(f),
            })
        }
        (S::Float64(Some(f)), T::Float32) if f.is_finite() => Some(V::Float32(*f as f32)),
        (S::Float64(Some(f)), T::Float64) if f.is_finite() => Some(V::Float64(*f)),
        (S::Utf8(Some(s)) | S::LargeUtf8(Some(s)) | S::Utf8View(Some(s)), T::Utf8) => {
            Some(V::Utf8(s.clone()))
        }
        (
            S::Utf8(Some(_)) | S::LargeUtf8(Some(_)) | S::Utf8View(Some(_)),
            T::Timestamp | T::Date,
        ) => {
            let e = literal(v).ok()?;
            crate::lookup::constant_of(&e, t)
        }
        (S::Boolean(Some(b)), T::Bool) => Some(V::Bool(*b)),
        (S::Binary(Some(b)) | S::LargeBinary(Some(b)) | S::BinaryView(Some(b)), T::Binary) => {
            Some(V::Binary(b.clone()))
        }
        (S::Date32(Some(d)), T::Date) => Some(V::Date(*d)),
        // A zoneless timestamp binds as `TIMESTAMP '...'`, which DataFusion reads in
        // nanoseconds: instants that fit.
        (S::TimestampSecond(Some(x), None), T::Timestamp) => micros(x.checked_mul(1_000_000)?),
        (S::TimestampMillisecond(Some(x), None), T::Timestamp) => micros(x.checked_mul(1_000)?),
        (S::TimestampMicrosecond(Some(x), None), T::Timestamp) => micros(*x),
        (S::TimestampNanosecond(Some(x), None), T::Timestamp) if x % 1_000 == 0 => {
            micros(x / 1_000)
        }
        _ => None,
    }
}

fn micros(us: i64) -> Option<nyala_common::Value> {
    (us.unsigned_abs() < (i64::MAX / 1000) as u64).then_some(nyala_common::Value::Timestamp(us))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::parser::DFParser;

    fn bound(sql: &str, params: &[ScalarValue]) -> String {
        let mut s = DFParser::parse_sql_with_dialect(sql, &PostgreSqlDialect {})
            .unwrap()
            .pop_front()
            .unwrap();
        bind(&mut s, params).unwrap();
        s.to_string()
    }

    #[test]
    fn binds_each_type_as_its_literal() {
        let sql = "SELECT * FROM t WHERE a = $1 AND b = $2 AND c = $3 AND d = $2";
        let s = bound(
            sql,
            &[
                ScalarValue::Int32(Some(-7)),
                ScalarValue::Utf8(Some("it's".into())),
                ScalarValue::TimestampMicrosecond(Some(1_700_000_000_123_456), None),
            ],
        );
        assert_eq!(
            s,
            "SELECT * FROM t WHERE a = -7 AND b = 'it''s' AND c = TIMESTAMP '2023-11-14 22:13:20.123456' AND d = 'it''s'"
        );
        let s = bound(
            "INSERT INTO t VALUES ($1, $2, $3)",
            &[
                ScalarValue::Float64(Some(1.5)),
                ScalarValue::Binary(Some(vec![0, 255])),
                ScalarValue::Int64(None),
            ],
        );
        assert_eq!(s, "INSERT INTO t VALUES (1.5, X'00ff', NULL)");
    }

    #[test]
    fn counts_and_refuses_missing_parameters() {
        let s = DFParser::parse_sql_with_dialect("SELECT $2 + $1", &PostgreSqlDialect {})
            .unwrap()
            .pop_front()
            .unwrap();
        assert_eq!(count(&s), 2);
        let mut s2 = s.clone();
        let err = bind(&mut s2, &[ScalarValue::Int32(Some(1))]).unwrap_err();
        assert!(err.to_string().contains("no parameter $2"), "{err}");
        assert_eq!(err.sqlstate(), "08P01");
    }
}
