//! PostgreSQL's untyped string literals: `indisprimary = 'f'` compares a boolean with a
//! boolean in PostgreSQL (a quoted literal takes the type of what it meets), and catalog
//! queries (SQLAlchemy 1.4's reflection) rely on it. DataFusion refuses to compare Boolean
//! with Utf8, so [`BooleanLiterals`], an analyzer rule that runs before type coercion, turns
//! such literals into booleans.

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DFSchema, Result, ScalarValue};
use datafusion::logical_expr::{BinaryExpr, Expr, ExprSchemable, LogicalPlan, Operator};
use datafusion::optimizer::AnalyzerRule;

/// PostgreSQL's spellings of a boolean (`boolin`), case-insensitive.
fn boolean(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "t" | "true" | "y" | "yes" | "on" | "1" => Some(true),
        "f" | "false" | "n" | "no" | "off" | "0" => Some(false),
        _ => None,
    }
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct BooleanLiterals;

fn is_boolean(e: &Expr, schema: &DFSchema) -> bool {
    e.get_type(schema)
        .is_ok_and(|t| t == arrow_schema::DataType::Boolean)
}

fn as_boolean(e: &Expr) -> Option<Expr> {
    match e {
        Expr::Literal(ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)), _) => {
            boolean(s).map(|b| Expr::Literal(ScalarValue::Boolean(Some(b)), None))
        }
        _ => None,
    }
}

impl AnalyzerRule for BooleanLiterals {
    fn analyze(&self, plan: LogicalPlan, _: &ConfigOptions) -> Result<LogicalPlan> {
        plan.transform_up_with_subqueries(|node| {
            let mut schema = DFSchema::empty();
            for input in node.inputs() {
                schema.merge(input.schema());
            }
            node.map_expressions(|e| {
                e.transform_up(|e| match e {
                    Expr::BinaryExpr(BinaryExpr { left, op, right })
                        if matches!(
                            op,
                            Operator::Eq
                                | Operator::NotEq
                                | Operator::IsDistinctFrom
                                | Operator::IsNotDistinctFrom
                        ) =>
                    {
                        let (l, r) = if is_boolean(&left, &schema) {
                            (None, as_boolean(&right))
                        } else if is_boolean(&right, &schema) {
                            (as_boolean(&left), None)
                        } else {
                            (None, None)
                        };
                        let changed = l.is_some() || r.is_some();
                        let e = Expr::BinaryExpr(BinaryExpr {
                            left: Box::new(l.unwrap_or(*left)),
                            op,
                            right: Box::new(r.unwrap_or(*right)),
                        });
                        Ok(if changed {
                            Transformed::yes(e)
                        } else {
                            Transformed::no(e)
                        })
                    }
                    other => Ok(Transformed::no(other)),
                })
            })
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "nyala_boolean_literals"
    }
}

#[cfg(test)]
mod tests {
    use super::boolean;

    #[test]
    fn reads_postgres_spellings() {
        assert_eq!(boolean("f"), Some(false));
        assert_eq!(boolean(" TRUE "), Some(true));
        assert_eq!(boolean("on"), Some(true));
        assert_eq!(boolean("maybe"), None);
    }
}
