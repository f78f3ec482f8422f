//! Filters DataFusion offers to push into a scan, as storage predicates.
//!
//! Only `column op literal` (either side), `IN (literals)`, `IS [NOT] NULL` and conjunctions of
//! them are converted, and a literal only when it already has the column's exact type. Pushed
//! filters are exact: the scan drops every row they do not keep, and DataFusion does not
//! evaluate them again.
//!
//! Invariant: a converted filter keeps exactly the rows DataFusion's own evaluation would. The
//! storage engine compares with the same Arrow kernels (`arrow_ord::cmp`, so floats compare by
//! IEEE total order in both, NaN above every number), a NULL comparison result drops the row
//! as `WHERE` does, and `IN` is a Kleene OR of equalities. Anything else (casts, functions,
//! a literal of another type, `NOT`, `OR`) is not converted and stays with DataFusion.

use datafusion::common::ScalarValue;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator};

use nyala_common::{DataType, Schema, Value};
use nyala_storage::{CmpOp, Predicate};

/// The predicates equivalent to `expr` (a conjunction), or `None` if any part is not
/// convertible.
pub(crate) fn to_predicates(expr: &Expr, schema: &Schema) -> Option<Vec<Predicate>> {
    match expr {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::And,
            right,
        }) => {
            let mut l = to_predicates(left, schema)?;
            l.extend(to_predicates(right, schema)?);
            Some(l)
        }
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let (col, lit, op) = match (column_name(left), literal(right)) {
                (Some(c), Some(l)) => (c, l, *op),
                _ => (column_name(right)?, literal(left)?, flip(*op)?),
            };
            let cmp = match op {
                Operator::Eq => CmpOp::Eq,
                Operator::Lt => CmpOp::Lt,
                Operator::LtEq => CmpOp::Le,
                Operator::Gt => CmpOp::Gt,
                Operator::GtEq => CmpOp::Ge,
                _ => return None,
            };
            let value = value_for(schema, &col, lit)?;
            Some(vec![Predicate::cmp(col, cmp, value)])
        }
        Expr::InList(list) if !list.negated => {
            let col = column_name(&list.expr)?;
            let values = list
                .list
                .iter()
                .map(|e| value_for(schema, &col, literal(e)?))
                .collect::<Option<Vec<_>>>()?;
            Some(vec![Predicate::In {
                column: col,
                values,
            }])
        }
        Expr::IsNull(e) => Some(vec![Predicate::IsNull(column_name(e)?)]),
        Expr::IsNotNull(e) => Some(vec![Predicate::IsNotNull(column_name(e)?)]),
        _ => None,
    }
}

fn flip(op: Operator) -> Option<Operator> {
    Some(match op {
        Operator::Eq => Operator::Eq,
        Operator::Lt => Operator::Gt,
        Operator::LtEq => Operator::GtEq,
        Operator::Gt => Operator::Lt,
        Operator::GtEq => Operator::LtEq,
        _ => return None,
    })
}

fn column_name(e: &Expr) -> Option<String> {
    match e {
        Expr::Column(c) => Some(c.name.clone()),
        _ => None,
    }
}

fn literal(e: &Expr) -> Option<&ScalarValue> {
    match e {
        Expr::Literal(v, _) => Some(v),
        _ => None,
    }
}

/// The literal as a value of the column's exact type, if it is one (DataFusion's type coercion
/// has already cast literals to the column's type where it could).
fn value_for(schema: &Schema, column: &str, v: &ScalarValue) -> Option<Value> {
    let col = &schema.columns()[schema.index_of(column).ok()?];
    let value = match (col.data_type, v) {
        (DataType::Bool, ScalarValue::Boolean(Some(b))) => Value::Bool(*b),
        (DataType::Int8, ScalarValue::Int8(Some(x))) => Value::Int8(*x),
        (DataType::Int16, ScalarValue::Int16(Some(x))) => Value::Int16(*x),
        (DataType::Int32, ScalarValue::Int32(Some(x))) => Value::Int32(*x),
        (DataType::Int64, ScalarValue::Int64(Some(x))) => Value::Int64(*x),
        (DataType::Float32, ScalarValue::Float32(Some(x))) => Value::Float32(*x),
        (DataType::Float64, ScalarValue::Float64(Some(x))) => Value::Float64(*x),
        (DataType::Utf8, ScalarValue::Utf8(Some(s))) => Value::Utf8(s.clone()),
        (DataType::Binary, ScalarValue::Binary(Some(b))) => Value::Binary(b.clone()),
        (DataType::Timestamp, ScalarValue::TimestampMicrosecond(Some(t), _)) => {
            Value::Timestamp(*t)
        }
        (DataType::Date, ScalarValue::Date32(Some(d))) => Value::Date(*d),
        (DataType::Decimal { precision, scale }, ScalarValue::Decimal128(Some(x), p, s))
            if *p == precision && *s == scale =>
        {
            Value::Decimal(*x)
        }
        _ => return None,
    };
    Some(value)
}
