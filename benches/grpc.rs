//! Server benchmarks (issue: the server, the gRPC API, the client): the real `nyala serve`
//! process driven by the Rust client over loopback, on the traffic schema.
//!
//! 1. Bulk ingest: `NYALA_BENCH_ROWS` rows (default 10M), pre-generated in 65,536-row Arrow
//!    batches, through one `WriteStream` call.
//! 2. Client upserts: `Session` in AutoFlushBackground with 1,000-row batches, rows built
//!    column by column with `Operation::set`; half the keys exist, half are new.
//! 3. `Get` latency: one client, one key per call, sequential (p50/p99), first while the
//!    server still flushes and compacts the load, then once that is done, then from a client
//!    on a current-thread runtime; then throughput with 16 concurrent clients (16
//!    connections).
//!
//! Run: `cargo bench -p nyala --profile fast --bench grpc` (the server is this profile's
//! binary).

#[path = "server.rs"]
mod server;
#[path = "traffic.rs"]
mod traffic;

use std::time::{Duration, Instant};

use futures::StreamExt;
use nyala_client::{FlushMode, Op, Value};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use server::*;
use traffic::*;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn key(rng: &mut StdRng, minutes: i64) -> Vec<Value> {
    vec![
        Value::Int32(rng.random_range(0..POINTS)),
        Value::Int16(rng.random_range(0..LANES)),
        Value::Timestamp(T0 + rng.random_range(0..minutes) * MINUTE),
    ]
}

/// p50 and p99 of `n` sequential one-key `Get`s of present keys, in microseconds.
async fn get_latency(
    table: &nyala_client::Table,
    rng: &mut StdRng,
    n: u64,
    minutes: i64,
) -> (f64, f64) {
    let mut lat = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let k = key(rng, minutes);
        let t = Instant::now();
        let row = table.get(&k).await.unwrap();
        lat.push(t.elapsed().as_secs_f64() * 1e6);
        assert!(row.is_some());
    }
    (percentile(&lat, 0.5), percentile(&lat, 0.99))
}

/// `ListTables` p50 and `Get` p50 / p99 of one sequential client on a current-thread runtime
/// of its own thread: what a client that issues one call at a time sees when its runtime does
/// not move the call between threads (the multi-thread runtime hands each call from the
/// caller's task to the channel's and the connection's, often across threads).
fn one_thread_latencies(url: &str, gets: u64, minutes: i64) -> (f64, f64, f64) {
    let url = url.to_string();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let client = connect(&url).await;
            let mut rt = Vec::new();
            for _ in 0..2_000 {
                let t = Instant::now();
                client.list_tables(Some("public")).await.unwrap();
                rt.push(t.elapsed().as_secs_f64() * 1e6);
            }
            let table = client.table("traffic").await.unwrap();
            let mut rng = StdRng::seed_from_u64(77);
            let (p50, p99) = get_latency(&table, &mut rng, gets, minutes).await;
            (percentile(&rt, 0.5), p50, p99)
        })
    })
    .join()
    .unwrap()
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rows = env_u64("NYALA_BENCH_ROWS", 10_000_000);
    let upserts = env_u64("NYALA_BENCH_UPSERTS", 500_000);
    let gets = env_u64("NYALA_BENCH_GETS", 20_000);
    let port = env_u64("NYALA_BENCH_PORT", 17050) as u16;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), port);
    let url = format!("http://127.0.0.1:{port}");
    let client = connect(&url).await;
    let schema = traffic_schema();
    let table = client
        .create_table("traffic", &schema, None, false)
        .await
        .unwrap();
    println!(
        "traffic table: {} tablets (server default partitioning)",
        table.definition().tablets.len()
    );

    // 1. Bulk ingest through WriteStream.
    let batch_rows = 65_536u64;
    let batches: Vec<_> = (0..rows.div_ceil(batch_rows))
        .map(|i| {
            let start = i * batch_rows;
            traffic_rows(&schema, start, batch_rows.min(rows - start) as usize, 7)
        })
        .collect();
    let started = Instant::now();
    let r = table
        .write_stream(Op::Insert, futures::stream::iter(batches))
        .await
        .unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(r.applied, rows);
    println!(
        "bulk ingest (WriteStream, 65,536-row batches): {rows} rows in {secs:.2} s = {:.0} rows/s",
        rows as f64 / secs
    );
    let minutes = (rows / (POINTS as u64 * LANES as u64)).max(1) as i64;

    // 2. Upserts through a Session, 1,000-row batches, half existing keys.
    let mut rng = StdRng::seed_from_u64(11);
    let mut session = client.session(FlushMode::AutoFlushBackground);
    session.set_buffer_limit(1_000);
    let started = Instant::now();
    for i in 0..upserts {
        let k = if i % 2 == 0 {
            key(&mut rng, minutes)
        } else {
            // New keys: minutes after the loaded ones.
            let mut k = key(&mut rng, 1_000_000);
            k[2] = Value::Timestamp(T0 + (minutes + i as i64) * MINUTE);
            k
        };
        let mut op = table.upsert();
        op.set("uid", k[0].clone())
            .unwrap()
            .set("lane", k[1].clone())
            .unwrap()
            .set("ts", k[2].clone())
            .unwrap()
            .set("valid", 0i16)
            .unwrap();
        for c in 1..=5 {
            op.set(&format!("count_c{c}"), rng.random_range(0..25i32))
                .unwrap()
                .set(
                    &format!("speed_c{c}"),
                    rng.random_range(300..1300) as f32 / 10.0,
                )
                .unwrap();
        }
        session.apply(op).await.unwrap();
    }
    let errors = session.close().await.unwrap();
    assert!(errors.is_empty());
    let secs = started.elapsed().as_secs_f64();
    println!(
        "client upserts (Session AutoFlushBackground, 1,000-row batches, half existing): {upserts} rows in {secs:.2} s = {:.0} rows/s",
        upserts as f64 / secs
    );

    // The floor: a round trip that does no storage work.
    let mut rt = Vec::new();
    for _ in 0..2_000 {
        let t = Instant::now();
        client.list_tables(Some("public")).await.unwrap();
        rt.push(t.elapsed().as_secs_f64() * 1e6);
    }
    println!(
        "ListTables round trip (no storage work): p50 {:.0} us",
        percentile(&rt, 0.5)
    );

    // 3. Get latency, one client, one key per call: first while the server still flushes and
    // compacts what was just loaded (one of the two cores), then once it is idle.
    let (p50, p99) = get_latency(&table, &mut rng, gets, minutes).await;
    println!(
        "Get, one client, one key per call ({gets} calls), right after the load: p50 {p50:.0} us, p99 {p99:.0} us"
    );
    let waited = server.wait_for_idle_maintenance();
    let (p50, p99) = get_latency(&table, &mut rng, gets, minutes).await;
    println!(
        "Get, one client, one key per call ({gets} calls), maintenance idle (after {waited:.0} s): p50 {p50:.0} us, p99 {p99:.0} us"
    );

    let (list, p50, p99) = one_thread_latencies(&url, gets, minutes);
    println!(
        "same client on a current-thread runtime: ListTables p50 {list:.0} us; Get ({gets} calls) p50 {p50:.0} us, p99 {p99:.0} us"
    );

    // Throughput: 16 clients, each its own connection, for a few seconds.
    let secs = env_u64("NYALA_BENCH_GET_SECS", 5);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..16u64)
        .map(|i| {
            let url = url.clone();
            tokio::spawn(async move {
                let c = connect(&url).await;
                let t = c.table("traffic").await.unwrap();
                let mut rng = StdRng::seed_from_u64(100 + i);
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let k = key(&mut rng, minutes);
                    assert!(t.get(&k).await.unwrap().is_some());
                    n += 1;
                }
                n
            })
        })
        .collect();
    let total: u64 = futures::stream::iter(tasks)
        .then(|t| async move { t.await.unwrap() })
        .collect::<Vec<_>>()
        .await
        .iter()
        .sum();
    println!(
        "Get, 16 concurrent clients: {:.0} lookups/s",
        total as f64 / secs as f64
    );
}
