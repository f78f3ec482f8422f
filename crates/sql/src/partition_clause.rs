//! Kudu/Impala partitioning syntax, which no SQL parser dialect knows:
//!
//! ```sql
//! CREATE TABLE t (...) PARTITION BY HASH (a, b) PARTITIONS 4
//!     [, RANGE (ts) (PARTITION '2024-01-01' <= VALUES < '2024-01-02', PARTITION VALUES < '...', ...)]
//! CREATE TABLE t (...) PARTITION BY RANGE (ts) (PARTITION ... , ...)
//! ALTER TABLE t ADD RANGE PARTITION '2024-01-02' <= VALUES < '2024-01-03'
//! ALTER TABLE t DROP RANGE PARTITION '2024-01-01' <= VALUES < '2024-01-02'
//! ```
//!
//! The clause is cut off the statement text (the rest goes to DataFusion's parser) and parsed
//! here from sqlparser's tokens. Bound literals stay untyped until the column's type is known.

use datafusion::common::ScalarValue;
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer};

use crate::error::SqlError;

/// A range partition as written: `lower <= VALUES < upper`, either side optional.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RawRange {
    pub lower: Option<ScalarValue>,
    pub upper: Option<ScalarValue>,
}

/// A `PARTITION BY` clause as written.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct RawPartitioning {
    pub hash: Option<(Vec<String>, u32)>,
    pub range: Option<(String, Vec<RawRange>)>,
}

/// `ALTER TABLE name ADD|DROP RANGE PARTITION range`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RangeChange {
    pub table: String,
    pub add: bool,
    pub range: RawRange,
}

fn syntax(msg: impl Into<String>) -> SqlError {
    SqlError::Unsupported(format!("partition clause: {}", msg.into()))
}

/// The statement's tokens, without whitespace and comments; `None` if it does not tokenize
/// (then the SQL parser reports the syntax error).
/// Whether `sql` may start with the keyword `word`: a cheap test before tokenizing, which
/// costs more than a point lookup. Text opening with a comment may.
fn may_start_with(sql: &str, word: &str) -> bool {
    let t = sql.trim_start();
    t.starts_with("--")
        || t.starts_with("/*")
        || t.get(..word.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(word))
}

fn tokens(sql: &str) -> Option<Vec<TokenWithSpan>> {
    Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize_with_location()
        .ok()
        .map(|t| {
            t.into_iter()
                .filter(|t| !matches!(t.token, Token::Whitespace(_)))
                .collect()
        })
}

fn is_word(t: &Token, w: &str) -> bool {
    matches!(t, Token::Word(word) if word.value.eq_ignore_ascii_case(w) && word.quote_style.is_none())
}

/// Byte offset of a token's start in `sql`.
fn offset(sql: &str, loc: Location) -> usize {
    let mut line = 1;
    let mut start = 0;
    for (i, c) in sql.char_indices() {
        if line == loc.line {
            break;
        }
        if c == '\n' {
            line += 1;
            start = i + 1;
        }
    }
    sql[start..]
        .char_indices()
        .nth(loc.column.saturating_sub(1) as usize)
        .map_or(sql.len(), |(i, _)| start + i)
}

/// Splits a `CREATE TABLE` with a top-level `PARTITION BY` clause into the statement without
/// it and the parsed clause. Other statements come back unchanged.
pub(crate) fn split_create(sql: &str) -> Result<(String, Option<RawPartitioning>), SqlError> {
    if !may_start_with(sql, "create") {
        return Ok((sql.to_string(), None));
    }
    let Some(toks) = tokens(sql) else {
        return Ok((sql.to_string(), None));
    };
    if !toks.first().is_some_and(|t| is_word(&t.token, "create"))
        || !toks.iter().take(6).any(|t| is_word(&t.token, "table"))
    {
        return Ok((sql.to_string(), None));
    }
    let mut depth = 0i32;
    for (i, t) in toks.iter().enumerate() {
        match &t.token {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            tok if depth == 0
                && is_word(tok, "partition")
                && toks.get(i + 1).is_some_and(|n| is_word(&n.token, "by")) =>
            {
                let cut = offset(sql, t.span.start);
                let mut p = Cursor {
                    toks: &toks,
                    at: i + 2,
                };
                let clause = p.partitioning()?;
                p.expect_end()?;
                return Ok((sql[..cut].to_string(), Some(clause)));
            }
            _ => {}
        }
    }
    Ok((sql.to_string(), None))
}

/// Recognises `ALTER TABLE name ADD|DROP RANGE PARTITION ...`.
pub(crate) fn range_change(sql: &str) -> Result<Option<RangeChange>, SqlError> {
    if !may_start_with(sql, "alter") {
        return Ok(None);
    }
    let Some(toks) = tokens(sql) else {
        return Ok(None);
    };
    if toks.len() < 5 || !is_word(&toks[0].token, "alter") || !is_word(&toks[1].token, "table") {
        return Ok(None);
    }
    let Some(k) = (2..toks.len().saturating_sub(2)).find(|&k| {
        (is_word(&toks[k].token, "add") || is_word(&toks[k].token, "drop"))
            && is_word(&toks[k + 1].token, "range")
            && is_word(&toks[k + 2].token, "partition")
    }) else {
        return Ok(None);
    };
    let table = sql[offset(sql, toks[2].span.start)..offset(sql, toks[k].span.start)]
        .trim()
        .to_string();
    let mut p = Cursor {
        toks: &toks,
        at: k + 3,
    };
    let range = p.range_bounds()?;
    p.expect_end()?;
    Ok(Some(RangeChange {
        table,
        add: is_word(&toks[k].token, "add"),
        range,
    }))
}

struct Cursor<'a> {
    toks: &'a [TokenWithSpan],
    at: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<&Token> {
        self.toks.get(self.at).map(|t| &t.token)
    }

    /// Only an optional `;` may follow (one statement at a time).
    fn expect_end(&mut self) -> Result<(), SqlError> {
        if self.peek() == Some(&Token::SemiColon) {
            self.next();
        }
        match self.peek() {
            None | Some(Token::EOF) => Ok(()),
            Some(t) => Err(syntax(format!(
                "unexpected {t} after the clause (send one statement at a time)"
            ))),
        }
    }

    fn next(&mut self) -> Option<&Token> {
        let t = self.toks.get(self.at).map(|t| &t.token);
        self.at += 1;
        t
    }

    fn expect(&mut self, what: &str, ok: impl Fn(&Token) -> bool) -> Result<(), SqlError> {
        match self.next() {
            Some(t) if ok(t) => Ok(()),
            Some(t) => Err(syntax(format!("expected {what}, found {t}"))),
            None => Err(syntax(format!("expected {what}"))),
        }
    }

    fn word(&mut self, w: &str) -> Result<(), SqlError> {
        self.expect(&w.to_uppercase(), |t| is_word(t, w))
    }

    fn ident(&mut self) -> Result<String, SqlError> {
        match self.next() {
            Some(Token::Word(w)) if w.quote_style.is_some() => Ok(w.value.clone()),
            Some(Token::Word(w)) => Ok(w.value.to_lowercase()),
            other => Err(syntax(format!("expected a column name, found {other:?}"))),
        }
    }

    fn idents(&mut self) -> Result<Vec<String>, SqlError> {
        self.expect("(", |t| *t == Token::LParen)?;
        let mut out = vec![self.ident()?];
        while self.peek() == Some(&Token::Comma) {
            self.next();
            out.push(self.ident()?);
        }
        self.expect(")", |t| *t == Token::RParen)?;
        Ok(out)
    }

    fn literal(&mut self) -> Result<ScalarValue, SqlError> {
        let negative = self.peek() == Some(&Token::Minus);
        if negative {
            self.next();
        }
        match self.next() {
            Some(Token::SingleQuotedString(s)) if !negative => {
                Ok(ScalarValue::Utf8(Some(s.clone())))
            }
            Some(Token::Number(n, _)) => {
                let n = if negative { format!("-{n}") } else { n.clone() };
                match n.parse::<i64>() {
                    Ok(i) => Ok(ScalarValue::Int64(Some(i))),
                    Err(_) => Ok(ScalarValue::Utf8(Some(n))),
                }
            }
            other => Err(syntax(format!("expected a constant, found {other:?}"))),
        }
    }

    /// `[lit <=] VALUES [< lit]` (after `PARTITION`).
    fn range_bounds(&mut self) -> Result<RawRange, SqlError> {
        let lower = if self.peek().is_some_and(|t| is_word(t, "values")) {
            None
        } else {
            let v = self.literal()?;
            self.expect("<=", |t| *t == Token::LtEq)?;
            Some(v)
        };
        self.word("values")?;
        let upper = if self.peek() == Some(&Token::Lt) {
            self.next();
            Some(self.literal()?)
        } else {
            None
        };
        if lower.is_none() && upper.is_none() {
            return Err(syntax("a range partition needs a bound"));
        }
        Ok(RawRange { lower, upper })
    }

    /// `HASH (cols) PARTITIONS n [, RANGE ...]` or `RANGE (col) (PARTITION ..., ...)`.
    fn partitioning(&mut self) -> Result<RawPartitioning, SqlError> {
        let mut out = RawPartitioning::default();
        loop {
            match self.next() {
                Some(t) if is_word(t, "hash") && out.hash.is_none() => {
                    let cols = self.idents()?;
                    self.word("partitions")?;
                    let n = match self.next() {
                        Some(Token::Number(n, _)) => n
                            .parse::<u32>()
                            .map_err(|_| syntax(format!("PARTITIONS {n} is not a count")))?,
                        other => return Err(syntax(format!("expected a count, found {other:?}"))),
                    };
                    out.hash = Some((cols, n));
                }
                Some(t) if is_word(t, "range") && out.range.is_none() => {
                    let mut cols = self.idents()?;
                    if cols.len() != 1 {
                        return Err(syntax("RANGE partitioning is on one column"));
                    }
                    self.expect("(", |t| *t == Token::LParen)?;
                    let mut ranges = Vec::new();
                    loop {
                        self.word("partition")?;
                        ranges.push(self.range_bounds()?);
                        match self.next() {
                            Some(Token::Comma) => continue,
                            Some(Token::RParen) => break,
                            other => {
                                return Err(syntax(format!("expected , or ), found {other:?}")))
                            }
                        }
                    }
                    out.range = Some((cols.remove(0), ranges));
                }
                other => return Err(syntax(format!("expected HASH or RANGE, found {other:?}"))),
            }
            if self.peek() == Some(&Token::Comma) {
                self.next();
            } else {
                return Ok(out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_and_parses_kudu_clauses() {
        let (rest, clause) = split_create(
            "CREATE TABLE t (a INT, ts TIMESTAMP, PRIMARY KEY (a, ts))\n  PARTITION BY HASH (a) PARTITIONS 4, \
             RANGE (ts) (PARTITION '2024-01-01' <= VALUES < '2024-01-02', PARTITION VALUES < '2023-01-01')",
        )
        .unwrap();
        assert_eq!(
            rest.trim_end(),
            "CREATE TABLE t (a INT, ts TIMESTAMP, PRIMARY KEY (a, ts))"
        );
        let c = clause.unwrap();
        assert_eq!(c.hash, Some((vec!["a".to_string()], 4)));
        let (col, ranges) = c.range.unwrap();
        assert_eq!(col, "ts");
        assert_eq!(ranges.len(), 2);
        assert_eq!(ranges[1].lower, None);
        let (same, none) = split_create("SELECT 'PARTITION BY'").unwrap();
        assert_eq!((same.as_str(), none), ("SELECT 'PARTITION BY'", None));
        assert!(split_create("CREATE TABLE t (a INT) PARTITION BY LIST (a)").is_err());
        let change = range_change("ALTER TABLE s.t ADD RANGE PARTITION 10 <= VALUES < 20")
            .unwrap()
            .unwrap();
        assert_eq!(change.table, "s.t");
        assert!(change.add);
        assert_eq!(change.range.upper, Some(ScalarValue::Int64(Some(20))));
        assert_eq!(
            range_change("ALTER TABLE t ADD COLUMN x INT").unwrap(),
            None
        );
    }
}
