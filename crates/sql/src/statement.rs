//! Statements between parsing and running: [`Prepared`] (parsed once, run many times with
//! parameters) and [`Output`] (what a statement did, in the terms front ends report).

use arrow::array::RecordBatch;
use arrow_schema::{DataType as ArrowType, SchemaRef};
use datafusion::sql::parser::{DFParser, Statement as DFStatement};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;

use std::sync::{Arc, Mutex};

use crate::error::SqlError;
use crate::insert::ValuesInsert;
use crate::lookup::PointLookup;
use crate::partition_clause::{range_change, split_create, RangeChange, RawPartitioning};

/// One parsed statement, ready to run with parameters ([`crate::Engine::run`]).
///
/// Holds no catalog state: the same prepared statement runs correctly after the tables it
/// names were altered, dropped or re-created (it is planned again each time).
#[derive(Debug, Clone)]
pub struct Prepared {
    pub(crate) kind: PreparedKind,
    /// Number of `$n` parameters the statement takes (the highest `n`).
    params: usize,
    /// What the fast paths learnt about the statement at its first run, shared by clones.
    /// Checked against the catalog at every run (see [`FastPath`]).
    pub(crate) fast: FastCell,
}

/// Where a prepared statement keeps its [`FastPath`] (shared by its clones; also its identity).
pub(crate) type FastCell = Arc<Mutex<Option<Arc<FastPath>>>>;

/// Whether a prepared statement takes a fast path, learnt once (with `$n` parameters left as
/// they are) and then reused: each run only reads its parameters.
///
/// Valid while the session's schema for unqualified names is `default_schema`; a shape also
/// checks, at each run, that its table still has the schema it was recognised against.
#[derive(Debug)]
pub(crate) struct FastPath {
    pub default_schema: String,
    pub shape: Option<Shape>,
}

/// The fast path a statement takes.
#[derive(Debug)]
pub(crate) enum Shape {
    Lookup(PointLookup),
    Insert(ValuesInsert),
}

#[derive(Debug, Clone)]
pub(crate) enum PreparedKind {
    /// `ALTER TABLE t ADD|DROP RANGE PARTITION ...` (Kudu syntax sqlparser does not know).
    Range(RangeChange),
    /// Everything else, parsed by sqlparser's PostgreSQL dialect.
    Statement {
        statement: DFStatement,
        /// A `CREATE TABLE`'s `PARTITION BY` clause, cut out before parsing.
        partitioning: Option<RawPartitioning>,
        /// `UPSERT INTO` (parsed as `INSERT INTO`).
        upsert: bool,
    },
}

impl Prepared {
    /// Parses `sql`, which must hold exactly one statement.
    pub(crate) fn parse(sql: &str) -> Result<Prepared, SqlError> {
        // `UPSERT INTO` (Impala/Kudu) is `INSERT INTO` with upsert semantics.
        let trimmed = sql.trim_start();
        let b = trimmed.as_bytes();
        let upsert =
            b.len() > 6 && b[..6].eq_ignore_ascii_case(b"upsert") && b[6].is_ascii_whitespace();
        let text = if upsert {
            format!("INSERT{}", &trimmed[6..])
        } else {
            sql.to_string()
        };
        if let Some(change) = range_change(&text)? {
            return Ok(Prepared {
                kind: PreparedKind::Range(change),
                params: 0,
                fast: Arc::default(),
            });
        }
        let (text, partitioning) = split_create(&text)?;
        let mut statements = match crate::pg_catalog::parse_catalog_query(&text) {
            // Catalog queries (psql's `\d`, SQLAlchemy's reflection) go through the
            // compatibility parser, which knows what those clients send.
            Some(parsed) => parsed
                .into_iter()
                .map(|s| DFStatement::Statement(Box::new(s)))
                .collect(),
            None => DFParser::parse_sql_with_dialect(&text, &PostgreSqlDialect {})?,
        };
        if statements.len() != 1 {
            return Err(SqlError::Unsupported(format!(
                "{} statements in one call; send one at a time",
                statements.len()
            )));
        }
        let statement = statements.pop_front().expect("one statement");
        let params = crate::params::count(&statement);
        Ok(Prepared {
            kind: PreparedKind::Statement {
                statement,
                partitioning,
                upsert,
            },
            params,
            fast: Arc::default(),
        })
    }

    /// How many parameters (`$1` ... `$n`) the statement takes.
    pub fn param_count(&self) -> usize {
        self.params
    }
}

/// What a statement did.
#[derive(Debug)]
pub enum Output {
    /// A query's rows: at least one batch (an empty one when no rows match), so the result's
    /// schema is always known.
    Rows(Vec<RecordBatch>),
    /// A write: how many rows it inserted, updated or deleted.
    Affected { command: Command, rows: u64 },
    /// A statement without rows (DDL, SET).
    Done(Command),
}

/// The kind of statement that ran, as PostgreSQL's command tags name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Insert,
    Update,
    Delete,
    /// `CREATE TABLE ... AS SELECT` (PostgreSQL tags it `SELECT n`).
    CreateTableAs,
    CreateTable,
    DropTable,
    AlterTable,
    CreateSchema,
    DropSchema,
    Set,
    /// Another utility statement DataFusion ran.
    Other,
}

impl Command {
    /// PostgreSQL's command tag, without the row count.
    pub fn tag(self) -> &'static str {
        match self {
            Command::Insert => "INSERT",
            Command::Update => "UPDATE",
            Command::Delete => "DELETE",
            Command::CreateTableAs => "SELECT",
            Command::CreateTable => "CREATE TABLE",
            Command::DropTable => "DROP TABLE",
            Command::AlterTable => "ALTER TABLE",
            Command::CreateSchema => "CREATE SCHEMA",
            Command::DropSchema => "DROP SCHEMA",
            Command::Set => "SET",
            Command::Other => "OK",
        }
    }
}

/// What a statement takes and returns, known before it runs (PostgreSQL's Describe).
#[derive(Debug, Clone)]
pub struct Description {
    /// The type of each parameter, where the planner could infer it.
    pub params: Vec<Option<ArrowType>>,
    /// The result columns of a statement that returns rows; `None` for one that does not.
    pub columns: Option<SchemaRef>,
}

/// Splits a string of `;`-separated statements (PostgreSQL's simple query) into the
/// statements, trimmed, without empty ones. Semicolons inside quoted strings, quoted
/// identifiers, dollar-quoted strings and comments do not split.
pub fn split_statements(sql: &str) -> Vec<&str> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    fn push<'a>(out: &mut Vec<&'a str>, piece: &'a str) {
        if !only_comments(piece) {
            out.push(piece.trim());
        }
    }
    while i < b.len() {
        match b[i] {
            b';' => {
                push(&mut out, &sql[start..i]);
                start = i + 1;
                i += 1;
            }
            b'\'' => {
                // E'...' strings take backslash escapes; standard strings do not.
                let escapes = i > 0 && (b[i - 1] == b'e' || b[i - 1] == b'E');
                i += 1;
                while i < b.len() {
                    if escapes && b[i] == b'\\' {
                        i += 2;
                        continue;
                    }
                    if b[i] == b'\'' {
                        if b.get(i + 1) == Some(&b'\'') {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += 1;
                }
                i += 1;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            b'$' => {
                // $tag$ ... $tag$ (a `$1` parameter is not a tag: tags do not start with a digit).
                let tag_end = sql[i + 1..]
                    .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .map(|n| i + 1 + n);
                match tag_end {
                    Some(e)
                        if b[e] == b'$' && !b.get(i + 1).is_some_and(|c| c.is_ascii_digit()) =>
                    {
                        let tag = &sql[i..=e];
                        match sql[e + 1..].find(tag) {
                            Some(close) => i = e + 1 + close + tag.len(),
                            None => i = b.len(),
                        }
                    }
                    _ => i += 1,
                }
            }
            _ => i += 1,
        }
    }
    if start < b.len() {
        push(&mut out, &sql[start..]);
    }
    out
}

/// True if `sql` holds nothing but whitespace and comments.
fn only_comments(sql: &str) -> bool {
    let mut rest = sql.trim_start();
    loop {
        if let Some(r) = rest.strip_prefix("--") {
            rest = r.find('\n').map_or("", |n| &r[n..]).trim_start();
        } else if let Some(r) = rest.strip_prefix("/*") {
            rest = r.find("*/").map_or("", |n| &r[n + 2..]).trim_start();
        } else {
            return rest.is_empty();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::split_statements;

    #[test]
    fn splits_at_semicolons_outside_quotes_and_comments() {
        let sql = "SELECT 'a;b', \"c;d\"; -- x;y\n INSERT INTO t VALUES (E'\\';'); \
                   SELECT $$;$$, $1, $q$ ; $q$ /* ; /* ; */ ; */ ;; -- only a comment";
        assert_eq!(
            split_statements(sql),
            vec![
                "SELECT 'a;b', \"c;d\"",
                "-- x;y\n INSERT INTO t VALUES (E'\\';')",
                "SELECT $$;$$, $1, $q$ ; $q$ /* ; /* ; */ ; */",
            ]
        );
        assert!(split_statements("  ; -- nothing\n").is_empty());
    }
}
