//! Nyala's half of the side-by-side traffic benchmark against DuckDB (issue: SQL on
//! DataFusion). `benches/compare_duckdb.sh` drives it; by hand:
//!
//! ```text
//! cargo bench -p nyala-sql --profile fast --bench compare -- generate DIR   # DIR/traffic.parquet, DIR/upserts.parquet
//! cargo bench -p nyala-sql --profile fast --bench compare -- run DIR        # DIR/nyala.json
//! ```
//!
//! `run` loads the Parquet data into a fresh database through the storage API (as a bulk
//! loader would), runs the queries of `benches/queries.sql` five times each, applies the
//! upserts (which stay in the write buffer and deletion vectors: no flush) and runs them again.
//! It writes the medians and each query's result rows as JSON for the comparison script.

mod traffic;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, RecordBatch};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use nyala_sql::Engine;
use nyala_storage::{Database, DatabaseOptions, TableName, WriteBatch, WriteOp};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use traffic::*;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Rows in the dataset (10M by default; `NYALA_BENCH_ROWS` to change).
fn rows() -> u64 {
    std::env::var("NYALA_BENCH_ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000_000)
}

const UPSERTS: usize = 100_000;

/// Runs per query (5; `NYALA_COMPARE_RUNS` to change, e.g. for a profile).
fn runs() -> usize {
    std::env::var("NYALA_COMPARE_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
}

/// Whether to run the named query (`NYALA_COMPARE_QUERIES=Q1,Q4` to run only some).
fn wanted(name: &str) -> bool {
    std::env::var("NYALA_COMPARE_QUERIES").map_or(true, |v| v.split(',').any(|q| q.trim() == name))
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] | ["--list"] => {}
        ["generate", dir] => generate(Path::new(dir)),
        ["run", dir] => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(run(Path::new(dir)));
        }
        other => panic!("usage: compare (generate DIR | run DIR), not {other:?}"),
    }
}

/// Writes the dataset and the corrections as Parquet (skipped if already there).
fn generate(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let n = rows();
    let data = dir.join("traffic.parquet");
    let schema = traffic_schema();
    if !data.exists() {
        let tmp = dir.join("traffic.parquet.tmp");
        let mut w = ArrowWriter::try_new(
            File::create(&tmp).unwrap(),
            schema.arrow_schema().clone(),
            None,
        )
        .unwrap();
        let mut r = 0;
        while r < n {
            let l = 100_000.min(n - r) as usize;
            w.write(&traffic_rows(&schema, r, l, 1)).unwrap();
            r += l as u64;
        }
        w.close().unwrap();
        std::fs::rename(tmp, &data).unwrap();
        println!("wrote {n} rows to {}", data.display());
    }
    let upserts = dir.join("upserts.parquet");
    if !upserts.exists() {
        // Corrections: existing keys (distinct), new readings.
        let mut rng = StdRng::seed_from_u64(7);
        let mut picked = std::collections::BTreeSet::new();
        let wanted = UPSERTS.min(n as usize / 2);
        while picked.len() < wanted {
            picked.insert(rng.random_range(0..n));
        }
        let mut parts = Vec::new();
        for r in picked {
            parts.push(traffic_rows(&schema, r, 1, 99));
        }
        let batch = arrow::compute::concat_batches(&parts[0].schema(), &parts).unwrap();
        let tmp = dir.join("upserts.parquet.tmp");
        let mut w =
            ArrowWriter::try_new(File::create(&tmp).unwrap(), batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        std::fs::rename(tmp, &upserts).unwrap();
        println!("wrote {wanted} corrections to {}", upserts.display());
    }
}

fn read_parquet(path: &Path) -> impl Iterator<Item = RecordBatch> {
    ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
        .unwrap()
        .with_batch_size(10_000)
        .build()
        .unwrap()
        .map(|b| b.unwrap())
}

/// The queries, by name, from `benches/queries.sql` (`-- Qn` lines start each).
fn queries() -> Vec<(String, String)> {
    let text = include_str!("queries.sql");
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("-- ") {
            if name.starts_with('Q') {
                out.push((
                    name.split(':').next().unwrap().trim().to_string(),
                    String::new(),
                ));
                continue;
            }
        }
        if let Some((_, q)) = out.last_mut() {
            if !line.trim().is_empty() && !line.starts_with("--") {
                q.push_str(line);
                q.push(' ');
            }
        }
    }
    out.into_iter()
        .map(|(n, q)| (n, q.trim().trim_end_matches(';').to_string()))
        .collect()
}

/// Waits until background maintenance is done with the loaded data (nothing running, no new
/// flush or compaction for two seconds), so that the queries measure a settled layout, not the
/// compactions running beside them.
fn settle(db: &Database) {
    let s = Instant::now();
    let key = |m: &nyala_storage::MaintenanceStats| (m.flushes, m.compactions);
    let mut last = key(&db.maintenance_stats());
    let mut quiet = Instant::now();
    while quiet.elapsed().as_secs_f64() < 2.0 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let m = db.maintenance_stats();
        if m.running > 0 || key(&m) != last {
            last = key(&m);
            quiet = Instant::now();
        }
    }
    let m = db.maintenance_stats();
    println!(
        "  nyala settled in {:.1} s ({} compactions)",
        s.elapsed().as_secs_f64() - 2.0,
        m.compactions
    );
}

/// Segments, buffered rows and deleted rows per tablet: what the queries read.
fn print_layout(table: &nyala_storage::Table) {
    for t in table.describe().tablets {
        let s = t.stats;
        println!(
            "  tablet {}: {} segments, {} buffered row versions, {} deleted rows",
            t.id, s.segments, s.buffer_versions, s.deleted_rows
        );
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Result rows as JSON arrays of strings (NULL as null), for comparison across engines.
fn json_rows(batches: &[RecordBatch]) -> serde_json::Value {
    let options = FormatOptions::default()
        .with_timestamp_format(Some("%Y-%m-%d %H:%M:%S"))
        .with_timestamp_tz_format(Some("%Y-%m-%d %H:%M:%S"));
    let mut rows = Vec::new();
    for b in batches {
        let f: Vec<ArrayFormatter> = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap())
            .collect();
        for r in 0..b.num_rows() {
            rows.push(serde_json::Value::Array(
                f.iter()
                    .zip(b.columns())
                    .map(|(f, c)| {
                        if c.is_null(r) {
                            serde_json::Value::Null
                        } else {
                            serde_json::Value::String(f.value(r).to_string())
                        }
                    })
                    .collect(),
            ));
        }
    }
    serde_json::Value::Array(rows)
}

async fn run_queries(engine: &Engine, phase: &str) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for (name, q) in queries().into_iter().filter(|(n, _)| wanted(n)) {
        let mut times = Vec::new();
        let mut result = None;
        for _ in 0..runs() {
            let s = Instant::now();
            let batches = engine
                .execute(&q)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            times.push(s.elapsed().as_secs_f64() * 1e3);
            result.get_or_insert_with(|| json_rows(&batches));
        }
        if std::env::var_os("NYALA_COMPARE_EXPLAIN").is_some() {
            // Where the time goes, operator by operator, in the state the runs measured
            // (caches warm).
            let plan = engine
                .execute(&format!("EXPLAIN ANALYZE {q}"))
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            println!(
                "{}",
                arrow::util::pretty::pretty_format_batches(&plan).unwrap()
            );
        }
        let m = median(times);
        println!("  nyala {phase} {name}: median {m:.1} ms");
        out.insert(
            name,
            serde_json::json!({"median_ms": m, "rows": result.unwrap()}),
        );
    }
    serde_json::Value::Object(out)
}

async fn run(dir: &Path) {
    let data = dir.join("traffic.parquet");
    assert!(data.exists(), "run `generate {}` first", dir.display());
    let db_dir: PathBuf = dir.join("nyala-db");
    let _ = std::fs::remove_dir_all(&db_dir);
    let db = Arc::new(Database::open(&db_dir, DatabaseOptions::default()).unwrap());
    let engine = Engine::new(db.clone());
    // As a user would: SQL DDL with the default partitioning (HASH of the first key column,
    // one tablet per core).
    engine
        .execute(
            "CREATE TABLE traffic (uid INT, lane SMALLINT, ts TIMESTAMP, valid SMALLINT,
             count_c1 INT, count_c2 INT, count_c3 INT, count_c4 INT, count_c5 INT,
             speed_c1 REAL, speed_c2 REAL, speed_c3 REAL, speed_c4 REAL, speed_c5 REAL,
             PRIMARY KEY (uid, lane, ts))",
        )
        .await
        .unwrap();
    engine
        .execute("CREATE TABLE points (uid INT PRIMARY KEY, road TEXT NOT NULL)")
        .await
        .unwrap();
    engine
        .execute(
            "INSERT INTO points SELECT v, 'road ' || (v % 20) FROM generate_series(0, 999) AS t(v)",
        )
        .await
        .unwrap();
    let table = db.table(&TableName::parse("traffic").unwrap()).unwrap();
    let s = Instant::now();
    let mut loaded = 0;
    for batch in read_parquet(&data) {
        loaded += batch.num_rows();
        let out = table
            .write(&WriteBatch::uniform(WriteOp::Insert, batch))
            .unwrap();
        assert!(out.errors.is_empty(), "{:?}", out.errors.first());
    }
    table.flush().unwrap();
    let load_s = s.elapsed().as_secs_f64();
    println!(
        "  nyala loaded {loaded} rows in {load_s:.1} s ({:.0} rows/s)",
        loaded as f64 / load_s
    );
    settle(&db);
    if std::env::var_os("NYALA_COMPARE_COMPACT_ALL").is_some() {
        // The layout a long-lived table converges to: one segment per tablet.
        let s = Instant::now();
        table.compact_all().unwrap();
        println!("  nyala compacted in {:.1} s", s.elapsed().as_secs_f64());
    }
    print_layout(&table);
    let before = run_queries(&engine, "flushed").await;

    let s = Instant::now();
    let mut upserted = 0;
    for batch in read_parquet(&dir.join("upserts.parquet")) {
        upserted += batch.num_rows();
        let out = table
            .write(&WriteBatch::uniform(WriteOp::Upsert, batch))
            .unwrap();
        assert!(out.errors.is_empty());
    }
    let upsert_s = s.elapsed().as_secs_f64();
    println!("  nyala upserted {upserted} rows in {upsert_s:.2} s");
    print_layout(&table);
    let before_queries = db.maintenance_stats();
    let after = run_queries(&engine, "after-upserts").await;
    // Maintenance is not waited for here (the point is to query a fresh buffer): say what ran
    // beside the queries.
    let m = db.maintenance_stats();
    println!(
        "  beside the after-upserts queries: {} flushes, {} compactions",
        m.flushes - before_queries.flushes,
        m.compactions - before_queries.compactions
    );
    print_layout(&table);

    let report = serde_json::json!({
        "rows": loaded,
        "load_s": load_s,
        "upserts": upserted,
        "upsert_s": upsert_s,
        "flushed": before,
        "after_upserts": after,
    });
    std::fs::write(
        dir.join("nyala.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .unwrap();
    // Keep the data directory small between runs.
    drop(engine);
    drop(table);
    drop(db);
    let _ = std::fs::remove_dir_all(&db_dir);
}
