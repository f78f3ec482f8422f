//! A time range on an `(id, ts)` key skips each series' older key blocks unread (a skip scan
//! over the key index) and applies the range exactly; `EXPLAIN ANALYZE` shows what it skipped.

use std::sync::Arc;

use arrow::util::pretty::pretty_format_batches;
use nyala_sql::Engine;
use nyala_storage::{Database, DatabaseOptions, TableName};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_time_range_skips_old_blocks_and_counts_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Database::open(dir.path(), DatabaseOptions::default()).unwrap());
    let e = Engine::new(db.clone());
    e.execute(
        "CREATE TABLE readings (id INT NOT NULL, ts TIMESTAMP NOT NULL, v INT, \
         PRIMARY KEY (id, ts)) PARTITION BY HASH (id) PARTITIONS 2",
    )
    .await
    .unwrap();
    // 20 series of 5,000 minutes; v = the minute.
    e.execute(
        "INSERT INTO readings SELECT g / 5000, \
         TIMESTAMP '2023-01-01 00:00:00' + (g % 5000) * INTERVAL '1 minute', g % 5000 \
         FROM generate_series(0, 99999) AS x(g)",
    )
    .await
    .unwrap();
    let table = db.table(&TableName::parse("readings").unwrap()).unwrap();
    table.flush().unwrap();
    table.compact_all().unwrap();
    // The last 1,000 minutes of each series, and a window in the middle.
    let since = "ts >= TIMESTAMP '2023-01-01 00:00:00' + 4000 * INTERVAL '1 minute'";
    let window = "ts > TIMESTAMP '2023-01-01 00:00:00' + 2000 * INTERVAL '1 minute' \
                  AND ts <= TIMESTAMP '2023-01-01 00:00:00' + 2100 * INTERVAL '1 minute'";
    // Each case: the condition, its count and sum, and the rows of each series outside the
    // range, of which at most a block on each side of the range and where the series begins
    // and ends may have to be read.
    for (cond, count, sum, outside) in [
        (since, 20 * 1000, 20 * (4000..5000).sum::<i64>(), 4000),
        (window, 20 * 100, 20 * (2001..=2100).sum::<i64>(), 4900),
    ] {
        let q = format!("SELECT count(*), sum(v) FROM readings WHERE {cond}");
        let out = pretty_format_batches(&e.execute(&q).await.unwrap())
            .unwrap()
            .to_string();
        assert!(out.contains(&format!("| {count} ")), "{q}: {out}");
        assert!(out.contains(&format!("| {sum} ")), "{q}: {out}");
        let plan =
            pretty_format_batches(&e.execute(&format!("EXPLAIN ANALYZE {q}")).await.unwrap())
                .unwrap()
                .to_string();
        let skipped = metric(&plan, "rows_skipped_by_key_blocks");
        assert!(
            skipped >= 20 * (outside - 3 * 1024),
            "{q}: skipped {skipped}: {plan}"
        );
        assert!(skipped <= 100_000 - count as u64, "{q}: {plan}");
    }
    // A range after upserts and deletes: the buffer and deletion vectors still apply.
    e.execute(
        "UPSERT INTO readings SELECT g, TIMESTAMP '2023-01-01 00:00:00' + 4999 * \
         INTERVAL '1 minute', -1 FROM generate_series(0, 19) AS x(g)",
    )
    .await
    .unwrap();
    e.execute(&format!("DELETE FROM readings WHERE id = 3 AND {since}"))
        .await
        .unwrap();
    let out = pretty_format_batches(
        &e.execute(&format!(
            "SELECT count(*), sum(v) FROM readings WHERE {since}"
        ))
        .await
        .unwrap(),
    )
    .unwrap()
    .to_string();
    let sum = 19 * (4000..4999).sum::<i64>() - 19;
    assert!(out.contains(&format!("| {} ", 19 * 1000)), "{out}");
    assert!(out.contains(&format!("| {sum} ")), "{out}");
}

/// A counter of `EXPLAIN ANALYZE`'s output, which prints `60.42 K` for 60,420.
fn metric(plan: &str, name: &str) -> u64 {
    let text = plan
        .split(&format!("{name}="))
        .nth(1)
        .and_then(|s| s.split([',', ']']).next())
        .unwrap_or_else(|| panic!("no {name} in {plan}"));
    let (num, scale) = match text.split_once(' ') {
        Some((n, "K")) => (n, 1e3),
        Some((n, "M")) => (n, 1e6),
        _ => (text, 1.0),
    };
    (num.parse::<f64>().unwrap() * scale).round() as u64
}
