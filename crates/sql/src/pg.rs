//! PostgreSQL (and Impala) compatibility rewrites of parsed statements, applied before
//! DataFusion plans them:
//!
//! - `to_timestamp(text, fmt)`, `to_date(text, fmt)` and `to_char(ts, fmt)` take PostgreSQL
//!   format patterns (`YYYY-MM-DD HH24:MI:SS.US`); DataFusion's take chrono's
//!   (`%Y-%m-%d %H:%M:%S%.6f`), so constant patterns are translated (without this, `to_char`
//!   returned the pattern itself for every row).
//! - `unix_timestamp()` and `unix_timestamp(ts)` (Impala) become
//!   `CAST(extract(epoch FROM ...) AS BIGINT)`.
//! - `BINARY`, `VARBINARY` and `BLOB` (in column definitions and casts) become `BYTEA`.
//! - `n * INTERVAL 'k unit'` (either order), which DataFusion cannot multiply, becomes a
//!   duration of `n * k` nanoseconds when the interval has no months (months have no fixed
//!   length); `TIMESTAMP 'epoch'` becomes `TIMESTAMP '1970-01-01 00:00:00'`.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    visit_expressions_mut, BinaryOperator, DataType as SqlType, Expr, FunctionArg, FunctionArgExpr,
    FunctionArguments, Statement, Value,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

/// Applies every rewrite to `statement`.
pub(crate) fn rewrite(statement: &mut Statement) {
    // `BINARY`/`VARBINARY`/`BLOB` columns (Impala, MySQL) are `BYTEA` to DataFusion.
    match statement {
        Statement::CreateTable(c) => {
            for col in &mut c.columns {
                binary_to_bytea(&mut col.data_type);
            }
        }
        Statement::AlterTable(a) => {
            for op in &mut a.operations {
                if let datafusion::sql::sqlparser::ast::AlterTableOperation::AddColumn {
                    column_def,
                    ..
                } = op
                {
                    binary_to_bytea(&mut column_def.data_type);
                }
            }
        }
        _ => {}
    }
    let _ = visit_expressions_mut(statement, |e| {
        rewrite_expr(e);
        ControlFlow::<()>::Continue(())
    });
}

fn binary_to_bytea(t: &mut SqlType) {
    if matches!(
        t,
        SqlType::Binary(_) | SqlType::Varbinary(_) | SqlType::Blob(_)
    ) {
        *t = SqlType::Bytea;
    }
}

/// The text of a pattern made of string literals joined by `||` (as SQLAlchemy writes
/// `LIKE 'pg/_' || '%' ESCAPE '/'`).
fn literal_text(e: &Expr) -> Option<String> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) => Some(s.clone()),
            _ => None,
        },
        Expr::BinaryOp {
            left,
            op: BinaryOperator::StringConcat,
            right,
        } => Some(literal_text(left)? + &literal_text(right)?),
        Expr::Nested(inner) => literal_text(inner),
        _ => None,
    }
}

/// `LIKE pattern ESCAPE 'c'` with another escape character than backslash (which is all
/// DataFusion takes): the pattern rewritten to escape with backslashes (a constant pattern
/// here; [`escaped_pattern_expr`] for any other).
fn backslash_escaped(pattern: &str, escape: char) -> String {
    let mut out = String::with_capacity(pattern.len() + 4);
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c == escape {
            match chars.next() {
                Some(n @ ('%' | '_' | '\\')) => {
                    out.push('\\');
                    out.push(n);
                }
                Some(n) => out.push(n),
                None => {}
            }
        } else if c == '\\' {
            out.push_str("\\\\");
        } else {
            out.push(c);
        }
    }
    out
}

/// [`backslash_escaped`] as an expression, for a pattern known only when the statement runs
/// (a parameter: psycopg 3 binds SQLAlchemy 2.1's `nspname NOT LIKE $1 || '%' ESCAPE '/'`).
/// An escaped character (`c` and the one after it) is first marked with a private-use
/// character; then the pattern's backslashes are doubled (they are literal under `ESCAPE
/// 'c'`), a marked backslash becomes `\\` (a literal backslash) and any other mark `\`.
fn escaped_pattern_expr(pattern: &Expr, c: char) -> Option<Expr> {
    if c == '\'' {
        return None;
    }
    let mark = '\u{E000}';
    let class = match c {
        ']' | '[' | '^' | '-' | '&' | '~' => format!("[\\{c}]"),
        _ => format!("[{c}]"),
    };
    parse_expr(&format!(
        "replace(replace(replace(regexp_replace({pattern}, '(?s){class}(.)', '{mark}\\1', 'g'), \
         '\\', '\\\\'), '{mark}\\\\', '\\\\'), '{mark}', '\\')"
    ))
}

fn rewrite_expr(e: &mut Expr) {
    if let Expr::Like {
        pattern,
        escape_char: Some(escape),
        ..
    }
    | Expr::ILike {
        pattern,
        escape_char: Some(escape),
        ..
    } = e
    {
        let c = match &escape.value {
            Value::SingleQuotedString(s) if s.chars().count() == 1 => s.chars().next(),
            _ => None,
        };
        let Some(c) = c.filter(|&c| c != '\\') else {
            return;
        };
        let translated = match literal_text(pattern) {
            Some(text) => Some(Expr::value(Value::SingleQuotedString(backslash_escaped(
                &text, c,
            )))),
            None => escaped_pattern_expr(pattern, c),
        };
        if let Some(t) = translated {
            **pattern = t;
            escape.value = Value::SingleQuotedString("\\".into());
        }
        return;
    }
    if let Expr::Cast { data_type, .. } = e {
        binary_to_bytea(data_type);
    }
    if let Expr::TypedString(t) = e {
        if matches!(t.data_type, SqlType::Timestamp(..))
            && matches!(&t.value.value, Value::SingleQuotedString(v) if v.eq_ignore_ascii_case("epoch"))
        {
            t.value.value = Value::SingleQuotedString("1970-01-01 00:00:00".into());
        }
        return;
    }
    if let Expr::BinaryOp {
        left,
        op: BinaryOperator::Multiply,
        right,
    } = e
    {
        let (other, nanos) = match (interval_nanos(left), interval_nanos(right)) {
            (Some(n), None) => (right.to_string(), n),
            (None, Some(n)) => (left.to_string(), n),
            _ => return,
        };
        if let Some(new) = parse_expr(&format!(
            "arrow_cast(CAST(({other}) * {nanos} AS BIGINT), 'Duration(Nanosecond)')"
        )) {
            *e = new;
        }
        return;
    }
    if let Expr::Extract { field, expr, .. } = e {
        // DataFusion plans EXTRACT with its own date_part; as a call it resolves to the
        // session's (crate::functions::DatePart, arithmetic for these parts).
        let part = field.to_string().to_ascii_lowercase();
        if matches!(part.as_str(), "hour" | "minute" | "dow" | "isodow") {
            if let Some(new) = parse_expr(&format!("date_part('{part}', {expr})")) {
                *e = new;
            }
        }
        return;
    }
    let Expr::Function(f) = e else { return };
    let name = f.name.to_string().to_lowercase();
    let FunctionArguments::List(list) = &mut f.args else {
        if name == "unix_timestamp" && matches!(f.args, FunctionArguments::None) {
            if let Some(new) = parse_expr("CAST(extract(epoch FROM now()) AS BIGINT)") {
                *e = new;
            }
        }
        return;
    };
    match (name.as_str(), list.args.len()) {
        ("to_timestamp" | "to_date" | "to_char", 2) => {
            if let FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(v))) = &mut list.args[1] {
                if let Value::SingleQuotedString(s) = &mut v.value {
                    *s = pg_format_to_chrono(s);
                }
            }
        }
        ("unix_timestamp", 0) => {
            if let Some(new) = parse_expr("CAST(extract(epoch FROM now()) AS BIGINT)") {
                *e = new;
            }
        }
        ("unix_timestamp", 1) => {
            let arg = list.args[0].to_string();
            if let Some(new) = parse_expr(&format!("CAST(extract(epoch FROM {arg}) AS BIGINT)")) {
                *e = new;
            }
        }
        _ => {}
    }
}

/// The length of a constant interval without months (`INTERVAL '1 second'`,
/// `INTERVAL '5' MINUTE`), in nanoseconds.
fn interval_nanos(e: &Expr) -> Option<i64> {
    let Expr::Interval(i) = e else { return None };
    if i.last_field.is_some() {
        return None;
    }
    let Expr::Value(v) = i.value.as_ref() else {
        return None;
    };
    let Value::SingleQuotedString(text) = &v.value else {
        return None;
    };
    let text = match &i.leading_field {
        Some(unit) => format!("{text} {unit}"),
        None => text.clone(),
    };
    let array: arrow::array::ArrayRef =
        std::sync::Arc::new(arrow::array::StringArray::from(vec![text.to_lowercase()]));
    let cast = arrow::compute::cast(
        &array,
        &arrow_schema::DataType::Interval(arrow_schema::IntervalUnit::MonthDayNano),
    )
    .ok()?;
    use arrow::array::AsArray;
    let iv = cast
        .as_primitive::<arrow::datatypes::IntervalMonthDayNanoType>()
        .value(0);
    if iv.months != 0 {
        return None;
    }
    (iv.days as i64)
        .checked_mul(86_400_000_000_000)?
        .checked_add(iv.nanoseconds)
}

fn parse_expr(sql: &str) -> Option<Expr> {
    Parser::new(&PostgreSqlDialect {})
        .try_with_sql(sql)
        .ok()?
        .parse_expr()
        .ok()
}

/// Translates a PostgreSQL `to_char`-style pattern into a chrono format string. Patterns are
/// matched case-insensitively, longest first; text in double quotes is literal, as is any
/// other character.
pub(crate) fn pg_format_to_chrono(pg: &str) -> String {
    const PATTERNS: &[(&str, &str)] = &[
        ("HH24", "%H"),
        ("HH12", "%I"),
        ("YYYY", "%Y"),
        ("MONTH", "%B"),
        ("DDD", "%j"),
        ("MON", "%b"),
        ("DAY", "%A"),
        ("HH", "%I"),
        ("MI", "%M"),
        ("SS", "%S"),
        ("US", "%6f"),
        ("MS", "%3f"),
        ("YY", "%y"),
        ("MM", "%m"),
        ("DD", "%d"),
        ("DY", "%a"),
        ("AM", "%p"),
        ("PM", "%p"),
        ("TZ", "%Z"),
        ("OF", "%:z"),
    ];
    let mut out = String::with_capacity(pg.len() * 2);
    let chars: Vec<char> = pg.chars().collect();
    let mut i = 0;
    // `FM` (fill mode) before a pattern drops its padding: chrono's `%-d` for numbers.
    let mut fill_mode = false;
    'outer: while i < chars.len() {
        if i + 2 <= chars.len()
            && chars[i..i + 2]
                .iter()
                .collect::<String>()
                .eq_ignore_ascii_case("fm")
        {
            fill_mode = true;
            i += 2;
            continue;
        }
        if chars[i] == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                push_literal(&mut out, chars[i]);
                i += 1;
            }
            i += 1;
            continue;
        }
        for (p, c) in PATTERNS {
            let n = p.len();
            if i + n <= chars.len()
                && chars[i..i + n]
                    .iter()
                    .zip(p.chars())
                    .all(|(a, b)| a.to_ascii_uppercase() == b)
            {
                match c.strip_prefix('%') {
                    Some(spec)
                        if fill_mode
                            && matches!(spec, "d" | "m" | "H" | "I" | "M" | "S" | "j" | "y") =>
                    {
                        out.push_str("%-");
                        out.push_str(spec);
                    }
                    _ => out.push_str(c),
                }
                fill_mode = false;
                i += n;
                continue 'outer;
            }
        }
        push_literal(&mut out, chars[i]);
        i += 1;
    }
    out
}

fn push_literal(out: &mut String, c: char) {
    if c == '%' {
        out.push_str("%%");
    } else {
        out.push(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_escapes_of_a_parameter_become_an_expression() {
        let p = parse_expr("$1 || '%'").unwrap();
        let e = escaped_pattern_expr(&p, '/').unwrap().to_string();
        assert!(
            e.starts_with("replace(replace(replace(regexp_replace($1 || '%', '(?s)[/](.)'"),
            "{e}"
        );
        assert!(escaped_pattern_expr(&p, '\'').is_none());
    }

    #[test]
    fn like_escapes_become_backslashes() {
        assert_eq!(backslash_escaped("pg/_%", '/'), "pg\\_%");
        assert_eq!(backslash_escaped("a!%b\\c!!", '!'), "a\\%b\\\\c!");
    }

    #[test]
    fn translates_postgresql_patterns() {
        assert_eq!(
            pg_format_to_chrono("YYYY-MM-DD HH24:MI:SS.US"),
            "%Y-%m-%d %H:%M:%S.%6f"
        );
        assert_eq!(pg_format_to_chrono("yyyy-mm-dd"), "%Y-%m-%d");
        assert_eq!(
            pg_format_to_chrono("DD Mon YYYY HH12:MI AM"),
            "%d %b %Y %I:%M %p"
        );
        assert_eq!(pg_format_to_chrono("YYYY\"T\"HH24 100%"), "%YT%H 100%%");
        assert_eq!(pg_format_to_chrono("FMDD FMMonth FMHH12"), "%-d %B %-I");
    }
}
