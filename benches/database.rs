//! Database-layer benchmarks on the traffic schema (issue: tables and partitions).
//!
//! - Ingest: upserts of new rows in batches of 10,000 with sync durability, from one and from
//!   two client threads, into a one-tablet table and into a `HASH (uid) PARTITIONS 4` table.
//! - Scan: `NYALA_BENCH_ROWS` rows (default 10M) in the 4-tablet table, flushed, two columns
//!   projected, read with one scan thread and with one per core.
//!
//! Run: `cargo bench -p nyala-storage --profile fast --bench database`.
//! `NYALA_BENCH_INGEST_ROWS` (default 2M) sets the rows per ingest run;
//! `NYALA_BENCH_DURABILITY=async` measures without a sync per batch.

mod traffic;

use std::time::{Duration, Instant};

use nyala_storage::{
    Database, DatabaseOptions, Durability, IfExists, PartitionSpec, ScanRequest, Table, TableName,
    TabletOptions, WriteBatch, WriteOp,
};
use traffic::*;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env_rows(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn db_opts(scan_threads: usize) -> DatabaseOptions {
    let durability = match std::env::var("NYALA_BENCH_DURABILITY").as_deref() {
        Ok("async") => Durability::Async {
            interval: Duration::from_millis(10),
        },
        _ => Durability::Sync,
    };
    DatabaseOptions {
        tablet: TabletOptions {
            flush_threshold_bytes: None,
            background_compaction: false,
            durability,
            ..TabletOptions::default()
        },
        scan_threads,
        ..Default::default()
    }
}

/// Upserts rows `0..n` in batches of `batch` from `clients` threads (interleaved batches).
/// Returns the wall time and the cores kept busy on average.
fn ingest(t: &Table, n: u64, batch: usize, clients: u64) -> (Duration, f64) {
    let batches: Vec<u64> = (0..n.div_ceil(batch as u64)).collect();
    // Build the batches first: measure the database, not the generator.
    let built: Vec<WriteBatch> = batches
        .iter()
        .map(|&b| {
            let start = b * batch as u64;
            let len = (batch as u64).min(n - start) as usize;
            WriteBatch::uniform(WriteOp::Upsert, traffic_rows(&t.schema(), start, len, 1))
        })
        .collect();
    let (start, cpu) = (Instant::now(), cpu_seconds());
    std::thread::scope(|s| {
        for c in 0..clients {
            let built = &built;
            s.spawn(move || {
                for b in built.iter().skip(c as usize).step_by(clients as usize) {
                    let out = t.write(b).unwrap();
                    assert!(out.errors.is_empty());
                }
            });
        }
    });
    let wall = start.elapsed();
    (wall, (cpu_seconds() - cpu) / wall.as_secs_f64())
}

/// CPU time (user + system) this process has used, in seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime is the 12th, stime 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    (f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0)) / 100.0
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let ingest_rows = env_rows("NYALA_BENCH_INGEST_ROWS", 2_000_000);
    let scan_rows = env_rows("NYALA_BENCH_ROWS", 10_000_000);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut report: Vec<(String, f64)> = Vec::new();
    if ingest_rows > 0 {
        for clients in [1u64, 2] {
            for tablets in [1u32, 4] {
                let dir = tempfile::tempdir().unwrap();
                let db = Database::open(dir.path(), db_opts(cores)).unwrap();
                let spec = if tablets == 1 {
                    PartitionSpec::default()
                } else {
                    PartitionSpec::hash(["uid"], tablets)
                };
                let t = db
                    .create_table(
                        &TableName::parse("readings").unwrap(),
                        &traffic_schema(),
                        &spec,
                        IfExists::Error,
                    )
                    .unwrap();
                let (took, busy) = ingest(&t, ingest_rows, 10_000, clients);
                report.push((
                    format!("ingest_{tablets}_tablets_{clients}_clients_rows_per_s"),
                    ingest_rows as f64 / took.as_secs_f64(),
                ));
                report.push((
                    format!("ingest_{tablets}_tablets_{clients}_clients_cores_busy_x100"),
                    busy * 100.0,
                ));
            }
        }
    }
    if scan_rows > 0 {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Database::open(dir.path(), db_opts(cores)).unwrap();
            let t = db
                .create_table(
                    &TableName::parse("readings").unwrap(),
                    &traffic_schema(),
                    &PartitionSpec::hash(["uid"], 4),
                    IfExists::Error,
                )
                .unwrap();
            let mut r = 0;
            while r < scan_rows {
                let len = 2_000_000.min(scan_rows - r);
                let mut w = 0;
                while w < len {
                    let l = 10_000.min(len - w) as usize;
                    let b = traffic_rows(&t.schema(), r + w, l, 1);
                    t.write(&WriteBatch::uniform(WriteOp::Upsert, b)).unwrap();
                    w += l as u64;
                }
                t.flush().unwrap();
                r += len;
            }
        }
        for threads in [1, cores] {
            let db = Database::open(dir.path(), db_opts(threads)).unwrap();
            let t = db.table(&TableName::parse("readings").unwrap()).unwrap();
            let req = ScanRequest {
                projection: Some(vec!["uid".into(), "speed_c1".into()]),
                ..Default::default()
            };
            let mut best = (Duration::MAX, 0.0);
            for _ in 0..3 {
                let (s, cpu) = (Instant::now(), cpu_seconds());
                let rows: usize = t.scan(&req).unwrap().map(|b| b.unwrap().num_rows()).sum();
                assert_eq!(rows as u64, scan_rows);
                let (wall, cpu) = (s.elapsed(), cpu_seconds() - cpu);
                if wall < best.0 {
                    best = (wall, cpu / wall.as_secs_f64());
                }
            }
            report.push((
                format!("scan_2col_{threads}_threads_values_per_s"),
                (2 * scan_rows) as f64 / best.0.as_secs_f64(),
            ));
            report.push((
                format!("scan_2col_{threads}_threads_cores_busy_x100"),
                best.1 * 100.0,
            ));
        }
    }
    println!(
        "\ndatabase report ({ingest_rows} rows per ingest run, batches of 10,000, sync; \
         {scan_rows} rows scanned across 4 tablets; {cores} cores):"
    );
    for (k, v) in &report {
        println!("  {k:<45} {v:>16.0}");
    }
}
