//! The traffic queries Q1-Q6 on generated data (1,000 points x 7 days, one reading per point
//! per minute: 10,080,000 rows), checked against answers computed from the same generated
//! values with plain Rust: right after loading, after every tablet is flushed, after
//! corrections sent as SQL UPSERTs (in the write buffer, over flushed rows), and after those
//! are flushed too.
//!
//! The values are chosen so that every sum is exact in double precision (speeds are multiples
//! of 0.5), so averages must match bit for bit, in whatever order the engine adds them up.
//! `NYALA_TRAFFIC_DAYS` shortens the run (default 7).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Float32Array, Int16Array, Int32Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::DataType;
use nyala_sql::Engine;
use nyala_storage::{Database, DatabaseOptions, TableName, WriteBatch, WriteOp};

const POINTS: i32 = 1000;
/// 2024-05-06T00:00:00Z (a Monday), in microseconds.
const T0: i64 = 1_714_953_600_000_000;
const MINUTE: i64 = 60_000_000;
const HOUR: i64 = 60 * MINUTE;
const ROADS: i32 = 20;

fn days() -> i64 {
    std::env::var("NYALA_TRAFFIC_DAYS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7)
}

/// One reading.
#[derive(Clone, Copy)]
struct Reading {
    valid: i16,
    count_c1: i32,
    count_c2: i32,
    speed_c1: Option<f32>,
    speed_c2: Option<f32>,
}

fn mix(mut x: u64) -> u64 {
    // splitmix64: a fixed, well-spread function of the inputs.
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The reading of `uid` at `minute`; `version` 1 is a correction of version 0.
fn reading(uid: i32, minute: i64, version: u64) -> Reading {
    let h = mix(((uid as u64) << 32) ^ (minute as u64) ^ (version << 60));
    let count_c1 = (h % 25) as i32;
    let count_c2 = ((h >> 8) % 4) as i32;
    let speed = |bits: u64, count: i32| {
        let v = if bits.is_multiple_of(500) {
            250.0 + ((bits >> 10) % 100) as f32 * 0.5 // a sensor glitch
        } else {
            30.0 + ((bits >> 10) % 200) as f32 * 0.5
        };
        (count > 0).then_some(v)
    };
    Reading {
        valid: i16::from((h >> 16).is_multiple_of(50)),
        count_c1,
        count_c2,
        speed_c1: speed(h >> 20, count_c1),
        speed_c2: speed(h >> 40, count_c2),
    }
}

fn batch(keys: &[(i32, i64)], version: impl Fn(i32, i64) -> u64) -> RecordBatch {
    let rs: Vec<Reading> = keys
        .iter()
        .map(|&(u, m)| reading(u, m, version(u, m)))
        .collect();
    let cols: Vec<(&str, ArrayRef)> = vec![
        (
            "uid",
            Arc::new(Int32Array::from_iter_values(keys.iter().map(|k| k.0))),
        ),
        ("lane", Arc::new(Int16Array::from(vec![1i16; keys.len()]))),
        (
            "ts",
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(keys.iter().map(|k| T0 + k.1 * MINUTE))
                    .with_timezone("UTC"),
            ),
        ),
        (
            "valid",
            Arc::new(Int16Array::from_iter_values(rs.iter().map(|r| r.valid))),
        ),
        (
            "count_c1",
            Arc::new(Int32Array::from_iter_values(rs.iter().map(|r| r.count_c1))),
        ),
        (
            "count_c2",
            Arc::new(Int32Array::from_iter_values(rs.iter().map(|r| r.count_c2))),
        ),
        (
            "speed_c1",
            Arc::new(Float32Array::from_iter(rs.iter().map(|r| r.speed_c1))),
        ),
        (
            "speed_c2",
            Arc::new(Float32Array::from_iter(rs.iter().map(|r| r.speed_c2))),
        ),
    ];
    RecordBatch::try_from_iter(cols).unwrap()
}

/// A result cell, compared exactly.
#[derive(Debug, PartialEq, Clone)]
enum Cell {
    Null,
    Num(f64),
    Text(String),
}

fn cells(batches: &[RecordBatch]) -> Vec<Vec<Cell>> {
    let mut out = Vec::new();
    for b in batches {
        let cols: Vec<ArrayRef> = b
            .columns()
            .iter()
            .map(|c| match c.data_type() {
                DataType::Utf8 => c.clone(),
                DataType::Timestamp(..) => {
                    let micros = arrow::compute::cast(c, &DataType::Int64).unwrap();
                    arrow::compute::cast(&micros, &DataType::Float64).unwrap()
                }
                _ => arrow::compute::cast(c, &DataType::Float64).unwrap(),
            })
            .collect();
        for r in 0..b.num_rows() {
            out.push(
                cols.iter()
                    .map(|c| {
                        if c.is_null(r) {
                            Cell::Null
                        } else if let Some(s) = c.as_any().downcast_ref::<StringArray>() {
                            Cell::Text(s.value(r).to_string())
                        } else {
                            Cell::Num(
                                c.as_any()
                                    .downcast_ref::<arrow::array::Float64Array>()
                                    .unwrap()
                                    .value(r),
                            )
                        }
                    })
                    .collect(),
            );
        }
    }
    out
}

/// Sum, count and maximum of a column's non-NULL values.
#[derive(Default, Clone, Copy)]
struct Agg {
    sum: f64,
    n: u64,
    max: Option<f32>,
}

impl Agg {
    fn add(&mut self, v: Option<f32>) {
        if let Some(v) = v {
            self.sum += v as f64;
            self.n += 1;
            self.max = Some(self.max.map_or(v, |m| m.max(v)));
        }
    }
    fn avg(&self) -> Cell {
        if self.n == 0 {
            Cell::Null
        } else {
            Cell::Num(self.sum / self.n as f64)
        }
    }
    fn max(&self) -> Cell {
        self.max.map_or(Cell::Null, |m| Cell::Num(m as f64))
    }
}

/// Q1-Q6 computed directly from the generated readings.
fn expected(
    minutes: i64,
    corrected: &HashSet<(i32, i64)>,
) -> BTreeMap<&'static str, Vec<Vec<Cell>>> {
    let mut q1: BTreeMap<i64, Agg> = BTreeMap::new();
    let mut q2: BTreeMap<i64, Agg> = BTreeMap::new();
    let mut q3: BTreeMap<(i64, i64), Agg> = BTreeMap::new();
    let mut q4: BTreeMap<String, (Agg, i64)> = BTreeMap::new();
    let (mut q5_n, mut q5_vehicles) = (0i64, 0i64);
    let mut q6: BTreeMap<i32, Agg> = BTreeMap::new();
    let last_day_from = minutes - 24 * 60; // ts > max(ts) - 24 hours
    for uid in 0..POINTS {
        for m in 0..minutes {
            let r = reading(uid, m, u64::from(corrected.contains(&(uid, m))));
            let ts = T0 + m * MINUTE;
            if r.valid == 0 {
                let hour = ts - ts.rem_euclid(HOUR);
                q1.entry(hour).or_default().add(r.speed_c2);
                if uid == 42 {
                    q2.entry(hour).or_default().add(r.speed_c2);
                }
                // T0 is a Monday (dow 1).
                let dow = (1 + m / (24 * 60)) % 7;
                q3.entry((dow, (m / 60) % 24)).or_default().add(r.speed_c1);
                let road = q4.entry(format!("road {}", uid % ROADS)).or_default();
                road.0.add(r.speed_c1);
                road.1 += r.count_c1 as i64;
            }
            if m > last_day_from - 1 {
                q5_n += 1;
                q5_vehicles += (r.count_c1 + r.count_c2) as i64;
            }
            if r.speed_c1.is_some_and(|s| s < 250.0) {
                q6.entry(uid).or_default().add(r.speed_c1);
            }
        }
    }
    let hourly = |m: &BTreeMap<i64, Agg>| {
        m.iter()
            .map(|(h, a)| vec![Cell::Num(*h as f64), a.avg(), a.max()])
            .collect()
    };
    let mut top: Vec<(f32, i32)> = q6.iter().map(|(u, a)| (a.max.unwrap(), *u)).collect();
    top.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap().then(a.1.cmp(&b.1)));
    BTreeMap::from([
        ("Q1", hourly(&q1)),
        ("Q2", hourly(&q2)),
        (
            "Q3",
            q3.iter()
                .map(|((d, h), a)| vec![Cell::Num(*d as f64), Cell::Num(*h as f64), a.avg()])
                .collect(),
        ),
        (
            "Q4",
            q4.iter()
                .map(|(road, (a, v))| vec![Cell::Text(road.clone()), a.avg(), Cell::Num(*v as f64)])
                .collect(),
        ),
        (
            "Q5",
            vec![vec![Cell::Num(q5_n as f64), Cell::Num(q5_vehicles as f64)]],
        ),
        (
            "Q6",
            top.iter()
                .take(10)
                .map(|(m, u)| vec![Cell::Num(*u as f64), Cell::Num(*m as f64)])
                .collect(),
        ),
    ])
}

const QUERIES: [(&str, &str); 6] = [
    ("Q1", "SELECT date_trunc('hour', ts) AS hr, avg(speed_c2), max(speed_c2) FROM traffic WHERE valid = 0 GROUP BY 1 ORDER BY 1"),
    ("Q2", "SELECT date_trunc('hour', ts) AS hr, avg(speed_c2), max(speed_c2) FROM traffic WHERE valid = 0 AND uid = 42 GROUP BY 1 ORDER BY 1"),
    ("Q3", "SELECT extract(dow FROM ts) AS dow, extract(hour FROM ts) AS hour, avg(speed_c1) FROM traffic WHERE valid = 0 GROUP BY 1, 2 ORDER BY 1, 2"),
    ("Q4", "SELECT p.road, avg(t.speed_c1), sum(t.count_c1) FROM traffic t JOIN points p ON t.uid = p.uid WHERE t.valid = 0 GROUP BY p.road ORDER BY p.road"),
    ("Q5", "SELECT count(*), sum(count_c1 + count_c2) FROM traffic WHERE ts > (SELECT max(ts) FROM traffic) - INTERVAL '24 hours'"),
    ("Q6", "SELECT uid, max(speed_c1) AS m FROM traffic WHERE speed_c1 < 250 GROUP BY uid ORDER BY m DESC, uid LIMIT 10"),
];

async fn check(e: &Engine, phase: &str, want: &BTreeMap<&'static str, Vec<Vec<Cell>>>) {
    for (name, sql) in QUERIES {
        let got = cells(
            &e.execute(sql)
                .await
                .unwrap_or_else(|err| panic!("{name}: {err}")),
        );
        let want = &want[name];
        assert_eq!(got.len(), want.len(), "{phase} {name}: row count");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert_eq!(g, w, "{phase} {name} row {i}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_queries_match_plain_rust() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Database::open(dir.path(), DatabaseOptions::default()).unwrap());
    let e = Engine::new(db.clone());
    e.execute(
        "CREATE TABLE traffic (uid INT, lane SMALLINT, ts TIMESTAMP, valid SMALLINT,
           count_c1 INT, count_c2 INT, speed_c1 REAL, speed_c2 REAL, PRIMARY KEY (uid, lane, ts))
         PARTITION BY HASH (uid) PARTITIONS 4",
    )
    .await
    .unwrap();
    e.execute("CREATE TABLE points (uid INT PRIMARY KEY, road TEXT NOT NULL)")
        .await
        .unwrap();
    e.execute(&format!(
        "INSERT INTO points SELECT v, 'road ' || (v % {ROADS}) FROM generate_series(0, {}) AS t(v)",
        POINTS - 1
    ))
    .await
    .unwrap();
    let minutes = days() * 24 * 60;
    let table = db.table(&TableName::parse("traffic").unwrap()).unwrap();
    // Load minute by minute, as readings arrive.
    let mut keys = Vec::with_capacity(20 * POINTS as usize);
    for m in 0..minutes {
        keys.extend((0..POINTS).map(|u| (u, m)));
        if keys.len() >= 20 * POINTS as usize || m == minutes - 1 {
            let out = table
                .write(&WriteBatch::uniform(
                    WriteOp::Insert,
                    batch(&keys, |_, _| 0),
                ))
                .unwrap();
            assert!(out.errors.is_empty(), "{:?}", out.errors.first());
            keys.clear();
        }
    }
    let mut corrected = HashSet::new();
    let want = expected(minutes, &corrected);
    // Q4 groups the readings by point before joining the points (eager aggregation): the
    // checks below hold its answers to plain Rust's.
    let plan = e
        .execute(&format!("EXPLAIN {}", QUERIES[3].1))
        .await
        .unwrap();
    let plan = arrow::util::pretty::pretty_format_batches(&plan)
        .unwrap()
        .to_string();
    assert!(plan.contains("__nyala_early"), "{plan}");
    check(&e, "loaded", &want).await;
    table.flush().unwrap();
    check(&e, "flushed", &want).await;

    // Corrections through SQL: every 97th point, every 7th minute of the last day and a
    // sprinkling over the week.
    let mut fixes: Vec<(i32, i64)> = Vec::new();
    for uid in (0..POINTS).step_by(97) {
        for m in (minutes - 24 * 60..minutes).step_by(7) {
            fixes.push((uid, m));
        }
        for m in (0..minutes).step_by(1009) {
            fixes.push((uid, m));
        }
    }
    fixes.push((42, 0));
    fixes.sort_unstable();
    fixes.dedup();
    for chunk in fixes.chunks(500) {
        let rows: Vec<String> = chunk
            .iter()
            .map(|&(u, m)| {
                let r = reading(u, m, 1);
                let f = |v: Option<f32>| v.map_or("NULL".to_string(), |v| format!("{v:?}"));
                format!(
                    "({u}, 1, to_timestamp_micros({}), {}, {}, {}, {}, {})",
                    T0 + m * MINUTE,
                    r.valid,
                    r.count_c1,
                    r.count_c2,
                    f(r.speed_c1),
                    f(r.speed_c2)
                )
            })
            .collect();
        e.execute(&format!("UPSERT INTO traffic VALUES {}", rows.join(", ")))
            .await
            .unwrap();
    }
    corrected.extend(fixes);
    let want = expected(minutes, &corrected);
    check(&e, "corrected", &want).await;
    table.flush().unwrap();
    check(&e, "corrected and flushed", &want).await;
}
