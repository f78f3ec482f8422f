//! PostgreSQL's `bytea` text input: a string cast to binary is read as PostgreSQL reads it,
//! hex (`'\x00ff'`) or escape format (`'a\\000b'`), not as its UTF-8 bytes (DataFusion's
//! cast). Clients send binary values this way: psycopg2 writes `'\x..'::bytea`, and psql
//! users type it.
//!
//! [`ByteaInput`], an analyzer rule that runs after type coercion, replaces every
//! `CAST(<string> AS binary)` (written, or added by coercion, e.g. for `INSERT ... VALUES`)
//! with [`BYTEA_IN`] of the string.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BinaryBuilder};
use arrow::datatypes::DataType;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{exec_err, Result, ScalarValue};
use datafusion::logical_expr::expr::{Cast, ScalarFunction};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ExprSchemable, LogicalPlan, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature, Volatility,
};
use datafusion::optimizer::AnalyzerRule;

/// The function's name (callable in SQL too: `bytea_in('\x00ff')`).
pub(crate) const BYTEA_IN: &str = "bytea_in";

/// Decodes PostgreSQL's bytea text forms.
pub(crate) fn decode(text: &str) -> std::result::Result<Vec<u8>, String> {
    let invalid = || format!("invalid input syntax for type bytea: \"{text}\"");
    if let Some(hex) = text
        .strip_prefix("\\x")
        .or_else(|| text.strip_prefix("\\X"))
    {
        let digits: Vec<u8> = hex.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        if !digits.len().is_multiple_of(2) {
            return Err(invalid());
        }
        return digits
            .chunks(2)
            .map(|p| {
                std::str::from_utf8(p)
                    .ok()
                    .and_then(|s| u8::from_str_radix(s, 16).ok())
                    .ok_or_else(invalid)
            })
            .collect();
    }
    // Escape format: `\\` is a backslash, `\nnn` an octal byte, everything else itself.
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
        } else if b.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
        } else {
            let octal = b.get(i + 1..i + 4).ok_or_else(invalid)?;
            if !octal.iter().all(|d| (b'0'..=b'7').contains(d)) || octal[0] > b'3' {
                return Err(invalid());
            }
            out.push(octal.iter().fold(0u8, |acc, d| acc * 8 + (d - b'0')));
            i += 4;
        }
    }
    Ok(out)
}

/// `bytea_in(text) -> binary`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct ByteaIn {
    signature: Signature,
}

impl ByteaIn {
    pub(crate) fn udf() -> ScalarUDF {
        ScalarUDF::new_from_impl(ByteaIn {
            signature: Signature::string(1, Volatility::Immutable),
        })
    }
}

impl ScalarUDFImpl for ByteaIn {
    fn name(&self) -> &str {
        BYTEA_IN
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Binary)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let one = |s: Option<&str>| -> Result<Option<Vec<u8>>> {
            match s.map(decode).transpose() {
                Ok(v) => Ok(v),
                Err(m) => exec_err!("{m}"),
            }
        };
        match &args.args[0] {
            ColumnarValue::Scalar(s) => {
                let text = match s {
                    ScalarValue::Utf8(v) | ScalarValue::LargeUtf8(v) | ScalarValue::Utf8View(v) => {
                        v.as_deref()
                    }
                    other => return exec_err!("bytea_in of {}", other.data_type()),
                };
                Ok(ColumnarValue::Scalar(ScalarValue::Binary(one(text)?)))
            }
            ColumnarValue::Array(a) => {
                let a = arrow::compute::cast(a, &DataType::Utf8)?;
                let strings = a.as_string::<i32>();
                let mut out = BinaryBuilder::with_capacity(strings.len(), strings.len() * 8);
                for i in 0..strings.len() {
                    let v = if strings.is_null(i) {
                        None
                    } else {
                        one(Some(strings.value(i)))?
                    };
                    out.append_option(v);
                }
                Ok(ColumnarValue::Array(Arc::new(out.finish()) as ArrayRef))
            }
        }
    }
}

/// Rewrites string-to-binary casts into [`ByteaIn`] calls (see the module docs).
#[derive(Debug)]
pub(crate) struct ByteaInput {
    udf: Arc<ScalarUDF>,
}

impl ByteaInput {
    pub(crate) fn new() -> Self {
        ByteaInput {
            udf: Arc::new(ByteaIn::udf()),
        }
    }
}

impl AnalyzerRule for ByteaInput {
    fn analyze(&self, plan: LogicalPlan, _: &ConfigOptions) -> Result<LogicalPlan> {
        plan.transform_up_with_subqueries(|node| {
            let schema = node
                .inputs()
                .first()
                .map(|i| i.schema().clone())
                .unwrap_or_else(|| node.schema().clone());
            node.map_expressions(|e| {
                e.transform_up(|e| match e {
                    Expr::Cast(Cast { expr, field })
                        if matches!(
                            field.data_type(),
                            DataType::Binary | DataType::LargeBinary | DataType::BinaryView
                        ) && expr.get_type(&schema).is_ok_and(|t| {
                            matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
                        }) =>
                    {
                        let call = Expr::ScalarFunction(ScalarFunction::new_udf(
                            self.udf.clone(),
                            vec![*expr],
                        ));
                        let call = if *field.data_type() == DataType::Binary {
                            call
                        } else {
                            Expr::Cast(Cast::new_from_field(Box::new(call), field))
                        };
                        Ok(Transformed::yes(call))
                    }
                    other => Ok(Transformed::no(other)),
                })
            })
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "nyala_bytea_input"
    }
}

#[cfg(test)]
mod tests {
    use super::decode;

    #[test]
    fn reads_both_text_forms() {
        assert_eq!(decode("\\x00ff10").unwrap(), vec![0, 255, 16]);
        assert_eq!(decode("\\X0A").unwrap(), vec![10]);
        assert_eq!(decode("a\\000b\\\\").unwrap(), b"a\0b\\".to_vec());
        assert_eq!(decode("plain").unwrap(), b"plain".to_vec());
        assert!(decode("\\x0").is_err());
        assert!(decode("\\xzz").is_err());
        assert!(decode("bad\\9").is_err());
    }
}
