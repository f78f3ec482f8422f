//! SQL benchmarks on the traffic schema (issue: SQL on DataFusion): point lookups through SQL
//! (planning included) and traffic aggregations, on `NYALA_BENCH_ROWS` rows (default 1M) in a
//! `HASH (uid) PARTITIONS 2` table, flushed.
//!
//! Run: `cargo bench -p nyala-sql --profile fast --bench sql`.

mod traffic;

use std::sync::Arc;
use std::time::Instant;

use nyala_sql::Engine;
use nyala_storage::{
    Database, DatabaseOptions, IfExists, PartitionSpec, TableName, WriteBatch, WriteOp,
};
use traffic::*;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p) as usize]
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: u64 = std::env::var("NYALA_BENCH_ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Database::open(dir.path(), DatabaseOptions::default()).unwrap());
    let t = db
        .create_table(
            &TableName::parse("traffic").unwrap(),
            &traffic_schema(),
            &PartitionSpec::hash(["uid"], 2),
            IfExists::Error,
        )
        .unwrap();
    let mut r = 0;
    while r < n {
        let l = 10_000.min(n - r) as usize;
        let b = traffic_rows(&t.schema(), r, l, 1);
        t.write(&WriteBatch::uniform(WriteOp::Upsert, b)).unwrap();
        r += l as u64;
    }
    t.flush().unwrap();
    let engine = Engine::new(db.clone());
    let lookups: u64 = std::env::var("NYALA_BENCH_LOOKUPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    // Point lookups by full key through SQL (planning included), and the same keys straight
    // through the storage API, to show what SQL adds. Interleaved, so both see the same cache
    // state (alternating which goes first); a first pass over the keys warms the page mappings.
    let per_minute = (POINTS as u64) * (LANES as u64);
    let keys: Vec<(u64, u64, i64)> = (0..lookups)
        .map(|i| {
            let row = (i * 7919) % n;
            let ts = T0 + (row / per_minute) as i64 * MINUTE;
            ((row % per_minute) / LANES as u64, row % LANES as u64, ts)
        })
        .collect();
    let (mut lat, mut direct) = (Vec::new(), Vec::new());
    for pass in 0..2 {
        for &(uid, lane, ts) in &keys {
            let text = arrow::util::display::array_value_to_string(
                &arrow::array::TimestampMicrosecondArray::from(vec![ts]),
                0,
            )
            .unwrap();
            let sql = format!(
                "SELECT * FROM traffic WHERE uid = {uid} AND lane = {lane} AND ts = '{text}'"
            );
            let key = [
                nyala_common::Value::Int32(uid as i32),
                nyala_common::Value::Int16(lane as i16),
                nyala_common::Value::Timestamp(ts),
            ];
            // Whichever goes second finds the key's pages in the CPU caches: alternate.
            let sql_first = (uid + lane) % 2 == 0;
            let mut took_direct = 0.0;
            if !sql_first {
                let s = Instant::now();
                assert!(t.get(&key).unwrap().is_some());
                took_direct = s.elapsed().as_secs_f64() * 1e6;
            }
            let s = Instant::now();
            let out = engine.execute(&sql).await.unwrap();
            let took = s.elapsed().as_secs_f64() * 1e6;
            assert_eq!(out.iter().map(|b| b.num_rows()).sum::<usize>(), 1, "{sql}");
            if sql_first {
                let s = Instant::now();
                assert!(t.get(&key).unwrap().is_some());
                took_direct = s.elapsed().as_secs_f64() * 1e6;
            }
            if pass == 1 {
                lat.push(took);
                direct.push(took_direct);
            }
        }
    }
    let p50 = percentile(&mut lat, 0.5);
    let p99 = percentile(&mut lat, 0.99);
    println!("\nsql report ({n} traffic rows, 2 tablets):");
    println!("  point lookup via SQL p50 {p50:.0} us, p99 {p99:.0} us");
    println!(
        "  point lookup via Table::get p50 {:.0} us, p99 {:.0} us",
        percentile(&mut direct, 0.5),
        percentile(&mut direct, 0.99)
    );
    let queries = [
        ("Q1", "SELECT date_trunc('hour', ts) AS hr, avg(speed_c2), max(speed_c2) FROM traffic WHERE valid = 0 GROUP BY 1 ORDER BY 1"),
        ("Q3", "SELECT extract(hour FROM ts) AS h, extract(dow FROM ts) AS d, avg(speed_c1) FROM traffic GROUP BY 1, 2 ORDER BY 1, 2"),
        ("Q6", "SELECT uid, max(speed_c1) AS m FROM traffic WHERE speed_c1 < 250 GROUP BY uid ORDER BY m DESC LIMIT 10"),
    ];
    for (name, q) in queries {
        let mut times = Vec::new();
        for _ in 0..5 {
            let s = Instant::now();
            engine.execute(q).await.unwrap();
            times.push(s.elapsed().as_secs_f64() * 1e3);
        }
        println!("  {name} median {:.1} ms", percentile(&mut times, 0.5));
    }
}
