//! The mixed steady-state run (issue: compaction and the maintenance manager): the real
//! `nyala serve` process, the traffic table preloaded, then for `NYALA_MIXED_SECS` (default
//! 600) seconds:
//! - every second, one new minute of readings for every point and lane (2,000 rows) plus 5%
//!   corrections (upserts of random old keys), one gRPC `Write` each;
//! - meanwhile, in a loop: the hourly-average aggregation (Q1) through `Sql`, then 200 random
//!   point lookups through `Get`.
//!
//! Prints ingest rows/s and write latency, lookup p50/p99, aggregation latency, the server's
//! resident memory and segment count at the start, middle and end (a tenth of the run each, at
//! least 10 s), and the change from start to end.
//!
//! Run: `cargo bench --profile fast --bench mixed` (the server is this profile's binary).
//! `NYALA_MIXED_BASE_ROWS` (default 10M) sets the preloaded rows.

#[path = "server.rs"]
mod server;
#[path = "traffic.rs"]
mod traffic;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::compute::concat_batches;
use nyala_client::{Op, Value};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use server::*;
use traffic::*;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const Q1: &str = "SELECT date_trunc('hour', ts) AS hr, avg(speed_c2), max(speed_c2) \
                  FROM traffic WHERE valid = 0 GROUP BY 1 ORDER BY 1";

/// What was measured, with the second of the run it happened in.
#[derive(Default)]
struct Log {
    /// (second, rows, write latency ms)
    writes: Vec<(f64, u64, f64)>,
    /// (second, latency us)
    gets: Vec<(f64, f64)>,
    /// (second, latency ms)
    aggs: Vec<(f64, f64)>,
    /// (second, RSS MiB, segments, buffer MiB)
    server: Vec<(f64, f64, f64, f64)>,
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let base = env_u64("NYALA_MIXED_BASE_ROWS", 10_000_000);
    let secs = env_u64("NYALA_MIXED_SECS", 600);
    let port = env_u64("NYALA_BENCH_PORT", 17150) as u16;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let schema = traffic_schema();
    let per_minute = POINTS as u64 * LANES as u64;

    // Preload, then restart so that the preloaded rows are flushed.
    {
        let server = Server::start(dir.path(), port);
        let client = connect(&url).await;
        let table = client
            .create_table("traffic", &schema, None, false)
            .await
            .unwrap();
        let batch_rows = 65_536u64;
        let batches: Vec<_> = (0..base.div_ceil(batch_rows))
            .map(|i| {
                let start = i * batch_rows;
                traffic_rows(&schema, start, batch_rows.min(base - start) as usize, 7)
            })
            .collect();
        let t = Instant::now();
        table
            .write_stream(Op::Upsert, futures::stream::iter(batches))
            .await
            .unwrap();
        println!(
            "preloaded {base} rows in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        drop(table);
        drop(client);
        server.stop();
    }
    let server = Server::start(dir.path(), port);
    let client = connect(&url).await;
    let table = client.table("traffic").await.unwrap();
    let log = Arc::new(Mutex::new(Log::default()));
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let base_minutes = base / per_minute;

    // Ingest: one minute of readings every second, plus 5% corrections.
    let ingest = {
        let table = table.clone();
        let schema = schema.clone();
        let log = log.clone();
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(3);
            let mut minute = base_minutes;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while Instant::now() < end {
                tick.tick().await;
                let fresh = traffic_rows(&schema, minute * per_minute, per_minute as usize, 9);
                let fixes: Vec<_> = (0..per_minute / 20)
                    .map(|_| {
                        let r = rng.random_range(0..minute * per_minute);
                        traffic_rows(&schema, r, 1, 11)
                    })
                    .collect();
                let fixes = concat_batches(&fresh.schema(), &fixes).unwrap();
                let t = Instant::now();
                let a = table.write_batch(Op::Upsert, &fresh).await.unwrap();
                let b = table.write_batch(Op::Upsert, &fixes).await.unwrap();
                let ms = t.elapsed().as_secs_f64() * 1e3;
                assert_eq!(a.applied + b.applied, per_minute + per_minute / 20);
                log.lock().unwrap().writes.push((
                    start.elapsed().as_secs_f64(),
                    a.applied + b.applied,
                    ms,
                ));
                minute += 1;
            }
        })
    };
    // Readers: Q1, then 200 lookups, in a loop.
    let reader = {
        let client = client.clone();
        let table = table.clone();
        let log = log.clone();
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(5);
            while Instant::now() < end {
                let t = Instant::now();
                let r = client.sql(Q1).await.unwrap();
                let ms = t.elapsed().as_secs_f64() * 1e3;
                assert!(r.num_rows() > 0);
                log.lock()
                    .unwrap()
                    .aggs
                    .push((start.elapsed().as_secs_f64(), ms));
                let mut gets = Vec::with_capacity(200);
                for _ in 0..200 {
                    let k = vec![
                        Value::Int32(rng.random_range(0..POINTS)),
                        Value::Int16(rng.random_range(0..LANES)),
                        Value::Timestamp(T0 + rng.random_range(0..base_minutes as i64) * MINUTE),
                    ];
                    let t = Instant::now();
                    let row = table.get(&k).await.unwrap();
                    gets.push((
                        start.elapsed().as_secs_f64(),
                        t.elapsed().as_secs_f64() * 1e6,
                    ));
                    assert!(row.is_some());
                }
                log.lock().unwrap().gets.extend(gets);
            }
        })
    };
    // The server's memory and segments, every 5 s.
    while Instant::now() < end {
        let s = start.elapsed().as_secs_f64();
        let rss = server.rss_mib();
        let segments = server.metric("nyala_table_segments");
        let buffer = server.metric("nyala_write_memory_bytes") / (1 << 20) as f64;
        log.lock().unwrap().server.push((s, rss, segments, buffer));
        if (s as u64) % 60 < 5 {
            println!(
                "t={s:>4.0}s rss {rss:.0} MiB, segments {segments}, write buffers {buffer:.1} MiB"
            );
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    ingest.await.unwrap();
    reader.await.unwrap();

    let log = log.lock().unwrap();
    let span = (secs as f64 / 10.0).max(10.0).min(secs as f64 / 3.0);
    let windows = [
        ("start", 0.0, span),
        (
            "middle",
            secs as f64 / 2.0 - span / 2.0,
            secs as f64 / 2.0 + span / 2.0,
        ),
        ("end", secs as f64 - span, secs as f64 + 1.0),
    ];
    println!(
        "\n{secs} s mixed run on {base} preloaded rows (windows of {span:.0} s)\n\
         | window | ingest rows/s | write p50 ms | lookup p50 us | lookup p99 us | Q1 median ms | Q1 runs | RSS MiB | segments |\n\
         |---|---|---|---|---|---|---|---|---|"
    );
    let mut first = None;
    let mut last = None;
    for (name, a, b) in windows {
        let inw = |t: f64| t >= a && t < b;
        let writes: Vec<_> = log.writes.iter().filter(|w| inw(w.0)).collect();
        let rows: u64 = writes.iter().map(|w| w.1).sum();
        let wl: Vec<f64> = writes.iter().map(|w| w.2).collect();
        let gets: Vec<f64> = log.gets.iter().filter(|g| inw(g.0)).map(|g| g.1).collect();
        let aggs: Vec<f64> = log.aggs.iter().filter(|g| inw(g.0)).map(|g| g.1).collect();
        let srv: Vec<_> = log.server.iter().filter(|x| inw(x.0)).collect();
        let rss = srv.iter().map(|x| x.1).fold(0.0, f64::max);
        let segs = srv.last().map_or(f64::NAN, |x| x.2);
        let row = (
            rows as f64 / (b.min(secs as f64) - a),
            percentile(&wl, 0.5),
            percentile(&gets, 0.5),
            percentile(&gets, 0.99),
            percentile(&aggs, 0.5),
            rss,
        );
        println!(
            "| {name} | {:.0} | {:.1} | {:.0} | {:.0} | {:.0} | {} | {:.0} | {segs} |",
            row.0,
            row.1,
            row.2,
            row.3,
            row.4,
            aggs.len(),
            row.5
        );
        if first.is_none() {
            first = Some(row);
        }
        last = Some(row);
    }
    let (f, l) = (first.unwrap(), last.unwrap());
    let pct = |a: f64, b: f64| (b / a - 1.0) * 100.0;
    println!(
        "start -> end: ingest {:+.0}%, lookup p50 {:+.0}%, p99 {:+.0}%, Q1 {:+.0}%, RSS {:+.0}%",
        pct(f.0, l.0),
        pct(f.2, l.2),
        pct(f.3, l.3),
        pct(f.4, l.4),
        pct(f.5, l.5)
    );
    println!(
        "maintenance: {} flushes, {} compactions, {:.0} MiB compacted, {} rows purged",
        server.metric("nyala_maintenance_flushes_total"),
        server.metric("nyala_maintenance_compactions_total"),
        server.metric("nyala_maintenance_compacted_bytes_total") / (1 << 20) as f64,
        server.metric("nyala_maintenance_purged_rows_total"),
    );
}
