//! Grouping by key columns (or expressions of them) runs as `RunAggregateExec` (runs of equal
//! group values aggregated at once); its answers must equal DataFusion's own hash aggregation,
//! which the same query gets when its grouping also reads a non-key column (`+ 0 * s`, where
//! `s` is never NULL).

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use nyala_sql::Engine;
use nyala_storage::TableName;
use nyala_storage::{Database, DatabaseOptions};

/// Rows as sorted strings, so that group order does not matter.
fn rows(batches: &[RecordBatch]) -> Vec<String> {
    let opts = FormatOptions::default().with_null("NULL");
    let mut out = vec![];
    for b in batches {
        let fmts: Vec<_> = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts).unwrap())
            .collect();
        for r in 0..b.num_rows() {
            let cells: Vec<String> = fmts.iter().map(|f| f.value(r).to_string()).collect();
            out.push(cells.join(" | "));
        }
    }
    out.sort();
    out
}

async fn plan_of(e: &Engine, sql: &str) -> String {
    let plan = e.execute(&format!("EXPLAIN {sql}")).await.unwrap();
    arrow::util::pretty::pretty_format_batches(&plan)
        .unwrap()
        .to_string()
}

/// Runs `select` grouped by `groups` (key expressions: the run aggregation) and by the same
/// expressions plus `0 * s` (DataFusion's), and asserts both plans and equal answers.
async fn same_answers(e: &Engine, table: &str, groups: &[&str], select: &str, phase: &str) {
    let keyed = groups.join(", ");
    let plain: Vec<String> = groups.iter().map(|g| format!("{g} + 0 * s")).collect();
    let plain = plain.join(", ");
    let by_key = format!("SELECT {keyed}, {select} FROM {table} GROUP BY {keyed}");
    let by_expr = format!("SELECT {plain}, {select} FROM {table} GROUP BY {plain}");
    let plan = plan_of(e, &by_key).await;
    assert!(plan.contains("RunAggregateExec"), "{phase}: {plan}");
    let plan = plan_of(e, &by_expr).await;
    assert!(!plan.contains("RunAggregateExec"), "{phase}: {plan}");
    let got = rows(&e.execute(&by_key).await.unwrap());
    let want = rows(&e.execute(&by_expr).await.unwrap());
    assert!(!want.is_empty(), "{phase}: no groups");
    assert_eq!(got, want, "{phase}: {by_key}");
}

const SELECT: &str = "count(*), count(v), sum(v), min(v), max(v), avg(v), sum(s), min(s), \
                      max(f), sum(f), avg(f), min(t), max(t), count(f), avg(r), min(r), \
                      avg(s)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grouping_by_key_columns_matches_hash_aggregation() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Database::open(dir.path(), DatabaseOptions::default()).unwrap());
    let e = Engine::new(db.clone());
    // Long runs: 300 rows per k. Short runs: one row per k (j is always 0).
    for name in ["long", "short"] {
        e.execute(&format!(
            "CREATE TABLE {name} (k INT, j INT, v INT, s SMALLINT, f DOUBLE PRECISION,
               t TIMESTAMP, r REAL, PRIMARY KEY (k, j)) PARTITION BY HASH (k) PARTITIONS 2"
        ))
        .await
        .unwrap();
    }
    // NULLs scattered, and k % 7 = 3 never has a v, f or t: its sum, min and avg are NULL.
    let values = "CASE WHEN g % 5 = 0 OR g / 300 % 7 = 3 THEN NULL ELSE g % 1000 - 400 END, \
                  CAST(g % 11 AS SMALLINT), \
                  CASE WHEN g % 3 = 0 OR g / 300 % 7 = 3 THEN NULL ELSE (g % 64) * 0.25 END, \
                  CASE WHEN g % 4 = 0 OR g / 300 % 7 = 3 THEN NULL \
                       ELSE TIMESTAMP '2024-01-01 00:00:00' + g * INTERVAL '1 second' END, \
                  CASE WHEN g % 6 = 1 OR g / 300 % 7 = 3 THEN NULL ELSE (g % 40) * 0.5 END";
    e.execute(&format!(
        "INSERT INTO long SELECT g / 300, g % 300, {values} FROM generate_series(0, 29999) AS x(g)"
    ))
    .await
    .unwrap();
    e.execute(&format!(
        "INSERT INTO short SELECT g, 0, {values} FROM generate_series(0, 4999) AS x(g)"
    ))
    .await
    .unwrap();
    for table in ["long", "short"] {
        same_answers(&e, table, &["k"], SELECT, "write buffer").await;
    }
    // Several key expressions; an expression of a key column (runs of 60 rows).
    same_answers(&e, "long", &["k", "j / 60"], SELECT, "two groups").await;
    same_answers(&e, "long", &["j / 60 * 1.5"], SELECT, "expression").await;

    // Segments, then the same groups again in the write buffer, with deleted rows.
    for name in ["long", "short"] {
        db.table(&TableName::parse(name).unwrap())
            .unwrap()
            .flush()
            .unwrap();
    }
    e.execute(
        "UPSERT INTO long SELECT g / 300, g % 300, -g, 1, g * 0.5, NULL, g % 9 \
         FROM generate_series(0, 29999, 7) AS x(g)",
    )
    .await
    .unwrap();
    e.execute("DELETE FROM long WHERE j % 13 = 0")
        .await
        .unwrap();
    e.execute("DELETE FROM short WHERE k % 13 = 0")
        .await
        .unwrap();
    for table in ["long", "short"] {
        same_answers(&e, table, &["k"], SELECT, "segments and buffer").await;
    }
    same_answers(&e, "long", &["k", "j / 60"], SELECT, "two groups, flushed").await;
    same_answers(&e, "long", &["j"], SELECT, "short runs of a key").await;
    // Constant arguments, NULL ones among them, and a column of type Null.
    same_answers(
        &e,
        "long",
        &["k"],
        "count(*), count(1), count(NULL), sum(2), sum(1.5), avg(1), sum(CAST(NULL AS INT)), max(7), \
         min(CAST(NULL AS INT)), count(CASE WHEN v > 0 THEN NULL END)",
        "constants",
    )
    .await;
    // A cast shared by two aggregates is computed below them (one projection), not in each.
    same_answers(&e, "long", &["k"], "sum(r)", "sum of a REAL column").await;
    same_answers(&e, "long", &["k"], "sum(r), avg(r)", "shared cast").await;
    // With a filter in between, and through a projection (eager aggregation's shape).
    same_answers(
        &e,
        "(SELECT k, v, s, f, t, r FROM long WHERE j > 100) AS sub",
        &["k"],
        SELECT,
        "filtered",
    )
    .await;
    // Grouped by the whole key, every group is one row: left to DataFusion.
    let plan = plan_of(&e, "SELECT k, j, count(*) FROM long GROUP BY k, j").await;
    assert!(!plan.contains("RunAggregateExec"), "{plan}");
    // An empty input has no groups either way.
    let empty = rows(
        &e.execute("SELECT k, sum(v) FROM long WHERE j > 1000 GROUP BY k")
            .await
            .unwrap(),
    );
    assert!(empty.is_empty());
}
