//! `nyala demo`: a traffic dataset generated, loaded and queried, for a first look.
//!
//! Measurement points on roads report one reading per lane per minute: vehicle counts and
//! average speeds for five vehicle classes, with rush hours that fill the roads and slow them
//! down and quiet nights. The readings go in `demo_traffic`, the points in `demo_points`;
//! the demo then prints the average speed per hour of day at one point as a chart.

use std::f64::consts::PI;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{
    ArrayRef, AsArray, Float32Array, Float64Array, Int16Array, Int32Array, RecordBatch,
    StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{Float64Type, Int64Type};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use nyala_client::{Client, Op};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::url;

#[derive(Parser)]
pub(crate) struct DemoArgs {
    /// Measurement points.
    #[arg(long, default_value_t = 50)]
    points: u32,
    /// Days of readings (one per lane per minute).
    #[arg(long, default_value_t = 7)]
    days: u32,
    /// The point whose hourly profile is charted.
    #[arg(long, default_value_t = 1)]
    point: u32,
    /// The server's gRPC address.
    #[arg(long, env = "NYALA_GRPC_ADDR", default_value = "127.0.0.1:7050")]
    grpc_addr: String,
}

const MINUTE: i64 = 60_000_000;
/// 2026-11-02 00:00:00 UTC, a Monday.
const START: i64 = 1_793_577_600_000_000;
const LANES: i16 = 2;

/// Vehicle classes: name, free-flow speed factor, share of traffic.
const CLASSES: [(&str, f64, f64); 5] = [
    ("cars", 1.0, 0.78),
    ("vans", 0.95, 0.10),
    ("trucks", 0.78, 0.07),
    ("buses", 0.8, 0.02),
    ("motorbikes", 1.05, 0.03),
];

const ROADS: [(&str, f64); 4] = [
    ("A1 motorway", 120.0),
    ("B27 trunk road", 90.0),
    ("Ring road", 70.0),
    ("Main street", 50.0),
];

/// Traffic intensity (0..1) at `hour` (fractional) of a weekday or weekend day: rush hours at
/// 8 and 17 on weekdays, a broad midday hump at weekends, quiet nights.
fn intensity(hour: f64, weekend: bool) -> f64 {
    let bump = |center: f64, width: f64| (-((hour - center) / width).powi(2)).exp();
    let night = 0.05 + 0.1 * (1.0 - (2.0 * PI * hour / 24.0).cos()) / 2.0;
    if weekend {
        (night + 0.55 * bump(13.0, 3.5)).min(1.0)
    } else {
        (night + 0.95 * bump(8.0, 1.2) + 0.85 * bump(17.0, 1.5) + 0.45 * bump(12.5, 3.0)).min(1.0)
    }
}

fn points_batch(points: u32) -> RecordBatch {
    let uid: Vec<i32> = (1..=points as i32).collect();
    let road: Vec<&str> = uid.iter().map(|u| ROADS[*u as usize % 4].0).collect();
    let name: Vec<String> = uid
        .iter()
        .map(|u| format!("{} km {}", ROADS[*u as usize % 4].0, 3 * u + 1))
        .collect();
    let lat: Vec<f64> = uid.iter().map(|u| 48.1 + 0.013 * *u as f64).collect();
    let lon: Vec<f64> = uid.iter().map(|u| 11.5 + 0.021 * *u as f64).collect();
    let limit: Vec<i16> = uid
        .iter()
        .map(|u| ROADS[*u as usize % 4].1 as i16)
        .collect();
    RecordBatch::try_from_iter([
        ("uid", Arc::new(Int32Array::from(uid)) as ArrayRef),
        ("name", Arc::new(StringArray::from(name)) as ArrayRef),
        ("road", Arc::new(StringArray::from(road)) as ArrayRef),
        ("speed_limit", Arc::new(Int16Array::from(limit)) as ArrayRef),
        ("latitude", Arc::new(Float64Array::from(lat)) as ArrayRef),
        ("longitude", Arc::new(Float64Array::from(lon)) as ArrayRef),
    ])
    .expect("a valid batch")
}

/// The readings of every point and lane for `minutes` (minute numbers since START).
fn readings_batch(points: u32, minutes: std::ops::Range<i64>, rng: &mut StdRng) -> RecordBatch {
    let n = (minutes.end - minutes.start) as usize * points as usize * LANES as usize;
    let (mut uid, mut lane, mut ts, mut valid) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let mut counts: Vec<Vec<i32>> = (0..5).map(|_| Vec::with_capacity(n)).collect();
    let mut speeds: Vec<Vec<Option<f32>>> = (0..5).map(|_| Vec::with_capacity(n)).collect();
    for m in minutes {
        let day = m / 1440;
        let hour = (m % 1440) as f64 / 60.0;
        let weekend = day % 7 >= 5;
        let load = intensity(hour, weekend);
        for p in 1..=points as i32 {
            let free = ROADS[p as usize % 4].1;
            // Busy roads carry more; lane 0 is the slow lane.
            let capacity = 30.0 * free / 100.0;
            for l in 0..LANES {
                uid.push(p);
                lane.push(l);
                ts.push(START + m * MINUTE);
                // 1% of readings are flagged by the sensor as unreliable.
                valid.push(if rng.random_ratio(1, 100) { 1i16 } else { 0 });
                // Congestion slows everyone as the load nears capacity.
                let slowdown = 1.0 - 0.55 * load.powi(3);
                for (c, (_, factor, share)) in CLASSES.iter().enumerate() {
                    let mean = capacity * load * share * if l == 0 { 1.2 } else { 0.8 };
                    let count = (mean + rng.random_range(-0.5..0.5) * mean.sqrt())
                        .round()
                        .max(0.0) as i32;
                    counts[c].push(count);
                    speeds[c].push((count > 0).then(|| {
                        let lane_factor = if l == 0 { 0.93 } else { 1.04 };
                        let v =
                            free * factor * slowdown * lane_factor + rng.random_range(-6.0..6.0);
                        (v.max(5.0) * 10.0).round() as f32 / 10.0
                    }));
                }
            }
        }
    }
    let mut columns: Vec<(String, ArrayRef)> = vec![
        ("uid".into(), Arc::new(Int32Array::from(uid))),
        ("lane".into(), Arc::new(Int16Array::from(lane))),
        (
            "ts".into(),
            Arc::new(TimestampMicrosecondArray::from(ts).with_timezone("UTC")),
        ),
        ("valid".into(), Arc::new(Int16Array::from(valid))),
    ];
    for (c, v) in counts.into_iter().enumerate() {
        columns.push((format!("count_c{}", c + 1), Arc::new(Int32Array::from(v))));
    }
    for (c, v) in speeds.into_iter().enumerate() {
        columns.push((format!("speed_c{}", c + 1), Arc::new(Float32Array::from(v))));
    }
    RecordBatch::try_from_iter(columns).expect("a valid batch")
}

pub(crate) async fn run_demo(args: DemoArgs) -> ExitCode {
    match demo(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nyala demo: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn demo(args: DemoArgs) -> Result<(), String> {
    if args.points == 0 || args.days == 0 {
        return Err("--points and --days must be at least 1".into());
    }
    if args.point == 0 || args.point > args.points {
        return Err(format!("--point must be between 1 and {}", args.points));
    }
    let client = Client::connect(&url(&args.grpc_addr))
        .await
        .map_err(|e| format!("{e} (start the server first: nyala serve)"))?;
    let sql = |s: String| {
        let client = client.clone();
        async move { client.sql(&s).await.map_err(|e| format!("{e}\n  in: {s}")) }
    };
    println!("Creating demo_points and demo_traffic (any earlier demo tables are replaced).");
    sql("DROP TABLE IF EXISTS demo_traffic".into()).await?;
    sql("DROP TABLE IF EXISTS demo_points".into()).await?;
    sql(
        "CREATE TABLE demo_points (uid INT PRIMARY KEY, name TEXT NOT NULL, road TEXT NOT NULL, \
         speed_limit SMALLINT, latitude DOUBLE PRECISION, longitude DOUBLE PRECISION)"
            .into(),
    )
    .await?;
    let counts: Vec<String> = (1..=5).map(|c| format!("count_c{c} INT")).collect();
    let speeds: Vec<String> = (1..=5).map(|c| format!("speed_c{c} REAL")).collect();
    sql(format!(
        "CREATE TABLE demo_traffic (uid INT, lane SMALLINT, ts TIMESTAMP, valid SMALLINT, {}, {}, \
         PRIMARY KEY (uid, lane, ts)) PARTITION BY HASH (uid) PARTITIONS 2",
        counts.join(", "),
        speeds.join(", ")
    ))
    .await?;
    let points = client
        .table("demo_points")
        .await
        .map_err(|e| e.to_string())?;
    points
        .write_batch(Op::Insert, &points_batch(args.points))
        .await
        .map_err(|e| e.to_string())?;

    let traffic = client
        .table("demo_traffic")
        .await
        .map_err(|e| e.to_string())?;
    let total_minutes = args.days as i64 * 1440;
    let rows = total_minutes as u64 * args.points as u64 * LANES as u64;
    println!(
        "Loading {rows} readings: {} x {} lanes x {}, one per minute.",
        count(args.points, "point"),
        LANES,
        count(args.days, "day")
    );
    let bar = ProgressBar::new(rows).with_style(
        ProgressStyle::with_template(
            "{spinner} [{wide_bar}] {human_pos}/{human_len} rows, {per_sec}, ETA {eta}",
        )
        .expect("a valid template"),
    );
    let started = Instant::now();
    // About 64k rows per batch, generated on a thread while the previous one is sent.
    let step = (65_536 / (args.points as i64 * LANES as i64)).max(1);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<RecordBatch>(2);
    let points_n = args.points;
    let progress = bar.clone();
    let generator = std::thread::spawn(move || {
        let mut rng = StdRng::seed_from_u64(2026);
        let mut m = 0;
        while m < total_minutes {
            let end = (m + step).min(total_minutes);
            let b = readings_batch(points_n, m..end, &mut rng);
            progress.inc(b.num_rows() as u64);
            if tx.blocking_send(b).is_err() {
                return;
            }
            m = end;
        }
    });
    let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let result = traffic
        .write_stream(Op::Insert, stream)
        .await
        .map_err(|e| e.to_string())?;
    let _ = generator.join();
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "Loaded {} rows in {secs:.1} s ({:.0} rows/s).",
        result.applied,
        result.applied as f64 / secs
    );

    let point = args.point;
    let query = format!(
        "SELECT extract(hour FROM t.ts) AS hour, avg(t.speed_c1) AS avg_speed, sum(t.count_c1) AS cars\n\
         FROM demo_traffic t\n\
         WHERE t.uid = {point} AND t.valid = 0\n\
         GROUP BY 1 ORDER BY 1"
    );
    let started = Instant::now();
    let r = sql(query.clone()).await?;
    let elapsed = started.elapsed();
    let name = sql(format!(
        "SELECT name, speed_limit FROM demo_points WHERE uid = {point}"
    ))
    .await?;
    let (title, limit) = name
        .batches
        .first()
        .filter(|b| b.num_rows() > 0)
        .map(|b| {
            (
                b.column(0).as_string::<i32>().value(0).to_string(),
                b.column(1)
                    .as_primitive::<arrow::datatypes::Int16Type>()
                    .value(0),
            )
        })
        .unwrap_or_default();
    println!(
        "\nAverage car speed per hour of day at point {point} ({title}, limit {limit} km/h), {}:\n",
        count(args.days, "day")
    );
    let mut hours = Vec::new();
    for b in &r.batches {
        let h = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Int64)
            .map_err(|e| e.to_string())?;
        let s = arrow::compute::cast(b.column(1), &arrow::datatypes::DataType::Float64)
            .map_err(|e| e.to_string())?;
        let c = arrow::compute::cast(b.column(2), &arrow::datatypes::DataType::Int64)
            .map_err(|e| e.to_string())?;
        for i in 0..b.num_rows() {
            hours.push((
                h.as_primitive::<Int64Type>().value(i),
                s.as_primitive::<Float64Type>().value(i),
                c.as_primitive::<Int64Type>().value(i),
            ));
        }
    }
    let max = hours.iter().map(|h| h.1).fold(1.0, f64::max);
    for (hour, speed, cars) in &hours {
        let width = 50.0 * speed / max;
        let full = width.floor() as usize;
        let eighths = ((width - full as f64) * 8.0).round() as usize;
        let partial = ["", "▏", "▎", "▍", "▌", "▋", "▊", "▉", "█"][eighths.min(8)];
        println!(
            "  {hour:02}:00 {:>6.1} km/h {}{partial}{} {cars} cars",
            speed,
            "█".repeat(full),
            " ".repeat(50usize.saturating_sub(full + usize::from(!partial.is_empty())))
        );
    }
    println!(
        "\nThe query ({:.1} ms):\n\n{query}\n\nTry it yourself: nyala sql, then \\d demo_traffic.",
        elapsed.as_secs_f64() * 1e3
    );
    Ok(())
}

/// `n` and the noun, plural unless `n` is 1 ("1 day", "7 days").
fn count(n: u32, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}
