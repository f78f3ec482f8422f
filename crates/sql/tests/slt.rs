//! Runs the sqllogictest files in `tests/sql/` (at the workspace root) against Nyala's SQL
//! engine, each file on a fresh database. `connection` names in a file are separate sessions
//! over the same database.
//!
//! Values print as a PostgreSQL client shows them: `NULL`, `(empty)` for the empty string,
//! timestamps as `YYYY-MM-DD HH:MM:SS[.ffffff]` (UTC), booleans as `true`/`false`. DML
//! statements report their affected row count (`statement count N`); errors carry their
//! SQLSTATE (`statement error (23505)`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::DataType;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use nyala_sql::{Engine, SqlError};
use nyala_storage::{Database, DatabaseOptions};
use sqllogictest::{DBOutput, DefaultColumnType};

struct Session(Engine);

#[async_trait::async_trait]
impl sqllogictest::AsyncDB for Session {
    type Error = SqlError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SqlError> {
        let batches = self.0.execute(sql).await?;
        let first = sql.split_whitespace().next().unwrap_or("");
        if !is_query(first) {
            // DML and CREATE TABLE AS report their row count in one `count` column.
            let count = batches
                .first()
                .filter(|b| b.num_columns() == 1 && b.schema().field(0).name() == "count")
                .and_then(|b| {
                    b.column(0)
                        .as_any()
                        .downcast_ref::<arrow::array::UInt64Array>()
                })
                .map_or(0, |c| c.value(0));
            return Ok(DBOutput::StatementComplete(count));
        }
        Ok(rows(&batches))
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "nyala"
    }

    async fn sleep(d: std::time::Duration) {
        tokio::time::sleep(d).await
    }

    fn error_sql_state(err: &SqlError) -> Option<String> {
        Some(err.sqlstate().to_string())
    }
}

fn is_query(first: &str) -> bool {
    [
        "select", "with", "values", "show", "describe", "explain", "(",
    ]
    .iter()
    .any(|w| first.to_ascii_lowercase().starts_with(w))
}

fn rows(batches: &[RecordBatch]) -> DBOutput<DefaultColumnType> {
    let Some(first) = batches.first() else {
        return DBOutput::Rows {
            types: vec![],
            rows: vec![],
        };
    };
    let types = first
        .schema()
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            t if t.is_integer() => DefaultColumnType::Integer,
            DataType::Float16
            | DataType::Float32
            | DataType::Float64
            | DataType::Decimal128(..)
            | DataType::Decimal256(..) => DefaultColumnType::FloatingPoint,
            _ => DefaultColumnType::Text,
        })
        .collect();
    let options = FormatOptions::default()
        .with_null("NULL")
        .with_timestamp_format(Some("%Y-%m-%d %H:%M:%S%.f"))
        .with_timestamp_tz_format(Some("%Y-%m-%d %H:%M:%S%.f"));
    let mut out = Vec::new();
    for b in batches {
        let formatters: Vec<ArrayFormatter> = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap())
            .collect();
        for r in 0..b.num_rows() {
            out.push(
                formatters
                    .iter()
                    .zip(b.columns())
                    .map(|(f, c)| {
                        let s = f.value(r).to_string();
                        if s.is_empty() && c.is_valid(r) {
                            "(empty)".to_string()
                        } else {
                            s
                        }
                    })
                    .collect(),
            );
        }
    }
    DBOutput::Rows { types, rows: out }
}

fn files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/sql");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqllogictest_files() {
    let files = files();
    assert!(!files.is_empty(), "no .slt files found");
    let mut failures = Vec::new();
    for file in &files {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Database::open(dir.path(), DatabaseOptions::default()).unwrap());
        let mut runner = sqllogictest::Runner::new(move || {
            let db = db.clone();
            async move { Ok::<_, SqlError>(Session(Engine::new(db))) }
        });
        if let Err(e) = runner.run_file_async(file).await {
            failures.push(format!("{}: {}", file.display(), e.display(false)));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
