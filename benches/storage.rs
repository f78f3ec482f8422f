//! Storage engine benchmarks on the traffic schema (issue: storage engine).
//!
//! `cargo bench -p nyala-storage --profile fast` runs the criterion micro-benchmarks (upserts,
//! point lookups, buffer scan, flush) and then prints a report of the large-scale figures:
//! loading, flushing and scanning 10M rows, on-disk size and resident memory.
//! `NYALA_BENCH_ROWS` changes the 10M.

use std::time::{Duration, Instant};

use arrow::compute::concat_batches;
use criterion::{BatchSize, Criterion, Throughput};
use nyala_storage::{
    ScanRequest, SegmentCompression, Tablet, TabletOptions, Value, WriteBatch, WriteOp,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The server binary uses mimalloc; so do the benchmarks, to measure what it will run.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod traffic;
use traffic::*;

fn opts() -> TabletOptions {
    let compression = match std::env::var("NYALA_BENCH_COMPRESSION").as_deref() {
        Ok("zstd") => SegmentCompression::Zstd(3),
        Ok("none") => SegmentCompression::None,
        _ => SegmentCompression::Lz4,
    };
    let page_rows = std::env::var("NYALA_BENCH_PAGE_ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(TabletOptions::default().page_rows);
    let key_block_rows = std::env::var("NYALA_BENCH_KEY_BLOCK_ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(TabletOptions::default().key_block_rows);
    TabletOptions {
        flush_threshold_bytes: Some(256 << 20),
        compression,
        page_rows,
        key_block_rows,
        ..TabletOptions::default()
    }
}

fn no_auto_flush() -> TabletOptions {
    TabletOptions {
        flush_threshold_bytes: None,
        background_compaction: false,
        ..opts()
    }
}

/// A new tablet in a temporary directory (kept alive by the returned guard).
fn fresh(opts: TabletOptions) -> (tempfile::TempDir, Tablet) {
    let dir = tempfile::tempdir().unwrap();
    let t = Tablet::create(dir.path(), &traffic_schema(), opts).unwrap();
    (dir, t)
}

/// Upserts rows `start..start+rows`, 10,000 per batch, without flushing.
fn upsert_all(t: &Tablet, start: u64, rows: u64) {
    let mut w = 0;
    while w < rows {
        let l = 10_000.min(rows - w) as usize;
        let b = traffic_rows(&t.schema(), start + w, l, 1);
        t.write(&WriteBatch::uniform(WriteOp::Upsert, b)).unwrap();
        w += l as u64;
    }
}

/// Loads rows `0..n`, flushing every `flush_every` rows and at the end; returns the time spent
/// flushing.
fn load(t: &Tablet, n: u64, flush_every: u64) -> Duration {
    let mut flush_time = Duration::ZERO;
    let mut r = 0;
    while r < n {
        let len = flush_every.min(n - r);
        upsert_all(t, r, len);
        let f = Instant::now();
        t.flush().unwrap();
        flush_time += f.elapsed();
        r += len;
    }
    flush_time
}

fn key_of(r: u64) -> Vec<Value> {
    let per_minute = (POINTS as u64) * (LANES as u64);
    let within = r % per_minute;
    vec![
        Value::Int32((within / LANES as u64) as i32),
        Value::Int16((within % LANES as u64) as i16),
        Value::Timestamp(T0 + (r / per_minute) as i64 * MINUTE),
    ]
}

fn bench_upserts(c: &mut Criterion) {
    let mut g = c.benchmark_group("upsert_1000_sync");
    g.sample_size(20).measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Elements(1000));
    // All keys new.
    {
        let (_dir, t) = fresh(opts());
        let mut next = 0u64;
        g.bench_function("all_new", |b| {
            b.iter_batched(
                || {
                    let batch = traffic_rows(&t.schema(), next, 1000, 2);
                    next += 1000;
                    WriteBatch::uniform(WriteOp::Upsert, batch)
                },
                |batch| t.write(&batch).unwrap(),
                BatchSize::SmallInput,
            )
        });
    }
    // Half the keys new, half already flushed into segments.
    {
        let (_dir, t) = fresh(opts());
        let flushed = 2_000_000u64;
        load(&t, flushed, 500_000);
        let mut rng = StdRng::seed_from_u64(7);
        let mut next = flushed;
        g.bench_function("half_flushed", |b| {
            b.iter_batched(
                || {
                    let old = traffic_rows(&t.schema(), rng.random_range(0..flushed - 500), 500, 3);
                    let new = traffic_rows(&t.schema(), next, 500, 3);
                    next += 500;
                    let batch = concat_batches(old.schema_ref(), [&old, &new]).unwrap();
                    WriteBatch::uniform(WriteOp::Upsert, batch)
                },
                |batch| t.write(&batch).unwrap(),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn bench_lookups(c: &mut Criterion) {
    let (_dir, t) = fresh(opts());
    let flushed = 2_000_000u64;
    load(&t, flushed, 500_000);
    let buffered = 200_000u64;
    upsert_all(&t, flushed, buffered);
    let mut rng = StdRng::seed_from_u64(9);
    let mut g = c.benchmark_group("point_lookup");
    g.sample_size(50);
    g.bench_function("buffer", |b| {
        b.iter_batched(
            || key_of(flushed + rng.random_range(0..buffered)),
            |k| assert!(t.get(&k).unwrap().is_some()),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("segment", |b| {
        b.iter_batched(
            || key_of(rng.random_range(0..flushed)),
            |k| assert!(t.get(&k).unwrap().is_some()),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("absent", |b| {
        b.iter_batched(
            || key_of(flushed + buffered + rng.random_range(0..1_000_000)),
            |k| assert!(t.get(&k).unwrap().is_none()),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn bench_buffer_scan_and_flush(c: &mut Criterion) {
    let rows = 1_000_000u64;
    let mut g = c.benchmark_group("buffer_1M");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Elements(rows));
    {
        let (_dir, t) = fresh(no_auto_flush());
        upsert_all(&t, 0, rows);
        g.bench_function("scan_all_columns", |b| {
            b.iter(|| {
                let n: usize = t
                    .scan(&ScanRequest::default())
                    .unwrap()
                    .map(|b| b.unwrap().num_rows())
                    .sum();
                assert_eq!(n as u64, rows);
            })
        });
        // What an hourly aggregation reads: 3 of the 15 columns.
        let three = ScanRequest {
            projection: Some(vec!["ts".into(), "valid".into(), "speed_c2".into()]),
            ..Default::default()
        };
        g.bench_function("scan_three_columns", |b| {
            b.iter(|| {
                let n: usize = t.scan(&three).unwrap().map(|b| b.unwrap().num_rows()).sum();
                assert_eq!(n as u64, rows);
            })
        });
    }
    g.bench_function("flush", |b| {
        b.iter_batched(
            || {
                let (dir, t) = fresh(no_auto_flush());
                upsert_all(&t, 0, rows);
                (dir, t)
            },
            |(dir, t)| {
                t.flush().unwrap();
                (dir, t)
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

/// p50 and p99 of `n` point lookups, in microseconds (the first `n / 10` warm the caches).
fn lookup_latencies(t: &Tablet, n: usize, mut key: impl FnMut() -> Vec<Value>) -> (f64, f64) {
    let mut lat = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let k = key();
        let s = Instant::now();
        assert!(t.get(&k).unwrap().is_some());
        if i >= n / 10 {
            lat.push(s.elapsed().as_secs_f64() * 1e6);
        }
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    (lat[lat.len() / 2], lat[lat.len() * 99 / 100])
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Large-scale figures, printed as a table and as JSON.
fn report() {
    let n: u64 = std::env::var("NYALA_BENCH_ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000_000);
    if n == 0 {
        return;
    }
    let (dir, t) = fresh(no_auto_flush());
    let start = Instant::now();
    let flush_time = load(&t, n, 1_000_000);
    let load_time = start.elapsed();
    let stats = t.stats();
    // Full scan, 2 columns projected; best of three.
    let req = ScanRequest {
        projection: Some(vec!["uid".into(), "speed_c1".into()]),
        ..Default::default()
    };
    // The first scan decodes the Parquet pages (and fills the column cache); the best of
    // three more reads the cached columns.
    let mut times = Vec::new();
    for _ in 0..4 {
        let s = Instant::now();
        let rows: usize = t.scan(&req).unwrap().map(|b| b.unwrap().num_rows()).sum();
        assert_eq!(rows as u64, n);
        times.push(s.elapsed());
    }
    let cold = times[0];
    let best = times[1..].iter().copied().min().expect("three runs");
    let disk_all = dir_bytes(dir.path());
    let disk_meta = dir_bytes(&dir.path().join("meta"));
    // Point lookups of random keys, all in segments: first while most key blocks are still
    // undecoded (each lookup then decodes its block), then with the key block cache warm
    // (50,000 more random lookups have touched all but ~1% of the blocks); then lookups of
    // keys in the write buffer.
    let mut rng = StdRng::seed_from_u64(11);
    let seg_cold = lookup_latencies(&t, 20_000, || key_of(rng.random_range(0..n)));
    for _ in 0..50_000 {
        assert!(t.get(&key_of(rng.random_range(0..n))).unwrap().is_some());
    }
    let seg = lookup_latencies(&t, 20_000, || key_of(rng.random_range(0..n)));
    upsert_all(&t, n, 200_000);
    let mut rng = StdRng::seed_from_u64(12);
    let buf = lookup_latencies(&t, 20_000, || key_of(n + rng.random_range(0..200_000)));
    let json = serde_json_like(&[
        ("rows", n as f64),
        (
            "ingest_rows_per_s",
            n as f64 / (load_time - flush_time).as_secs_f64(),
        ),
        ("flush_rows_per_s", n as f64 / flush_time.as_secs_f64()),
        ("segments", stats.segments as f64),
        ("segment_file_mb", stats.segment_file_bytes as f64 / 1e6),
        ("disk_mb_all_files", disk_all as f64 / 1e6),
        ("meta_mb", disk_meta as f64 / 1e6),
        (
            "scan_2col_decoding_values_per_s",
            (2 * n) as f64 / cold.as_secs_f64(),
        ),
        (
            "scan_2col_cached_values_per_s",
            (2 * n) as f64 / best.as_secs_f64(),
        ),
        ("index_memory_mb", stats.index_memory_bytes as f64 / 1e6),
        ("rss_mb", rss_bytes() as f64 / 1e6),
        ("lookup_segment_p50_us", seg.0),
        ("lookup_segment_p99_us", seg.1),
        ("lookup_segment_cold_blocks_p50_us", seg_cold.0),
        ("lookup_segment_cold_blocks_p99_us", seg_cold.1),
        ("lookup_buffer_p50_us", buf.0),
        ("lookup_buffer_p99_us", buf.1),
    ]);
    println!("\nstorage report ({n} traffic rows, 1M-row flushes):\n{json}");
    let cols: Vec<String> = column_bytes(dir.path())
        .iter()
        .map(|(c, b)| format!("{c}={:.1}MB", *b as f64 / 1e6))
        .collect();
    println!("segment bytes by column: {}", cols.join(" "));
    // Keep the tablet for side-by-side comparisons (e.g. load the segments into DuckDB).
    if let Ok(keep) = std::env::var("NYALA_BENCH_KEEP") {
        drop(t);
        let kept = dir.keep();
        std::fs::rename(&kept, &keep).unwrap_or_else(|e| panic!("moving {kept:?} to {keep}: {e}"));
        println!("tablet kept in {keep}");
    }
}

/// Bytes of every file under `dir`.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let md = e.metadata().unwrap();
        total += if md.is_dir() {
            dir_bytes(&e.path())
        } else {
            md.len()
        };
    }
    total
}

/// Compressed bytes per column over every segment file under `dir`.
fn column_bytes(dir: &std::path::Path) -> Vec<(String, u64)> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let mut out: Vec<(String, u64)> = Vec::new();
    for e in std::fs::read_dir(dir.join("segments")).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "parquet") {
            let r = SerializedFileReader::new(std::fs::File::open(e.path()).unwrap()).unwrap();
            for rg in r.metadata().row_groups() {
                for (i, c) in rg.columns().iter().enumerate() {
                    if out.len() <= i {
                        out.push((c.column_path().string(), 0));
                    }
                    out[i].1 += c.compressed_size() as u64;
                }
            }
        }
    }
    out
}

fn serde_json_like(kv: &[(&str, f64)]) -> String {
    let body: Vec<String> = kv
        .iter()
        .map(|(k, v)| format!("  \"{k}\": {v:.1}"))
        .collect();
    format!("{{\n{}\n}}", body.join(",\n"))
}

fn main() {
    let only_report = std::env::args().any(|a| a == "--report-only");
    if !only_report {
        let mut c = Criterion::default().configure_from_args();
        bench_upserts(&mut c);
        bench_lookups(&mut c);
        bench_buffer_scan_and_flush(&mut c);
        c.final_summary();
    }
    report();
}
