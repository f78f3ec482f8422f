//! The traffic workload shared by the benchmarks: sensor readings per measurement point and
//! lane, one row per minute. Key (uid, lane, ts); valid; count_c1..c5; speed_c1..c5.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float32Array, Int16Array, Int32Array, RecordBatch, TimestampMicrosecondArray,
};
use arrow_schema::{Field, Schema as ArrowSchema};
use nyala_storage::{ColumnSchema, DataType, Schema};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub const POINTS: i32 = 1000;
pub const LANES: i16 = 2;
/// 2023-01-01T00:00:00Z in microseconds.
pub const T0: i64 = 1_672_531_200_000_000;
pub const MINUTE: i64 = 60_000_000;

/// The traffic table's schema.
pub fn traffic_schema() -> Schema {
    let mut cols = vec![
        ColumnSchema::not_null("uid", DataType::Int32),
        ColumnSchema::not_null("lane", DataType::Int16),
        ColumnSchema::not_null("ts", DataType::Timestamp),
        ColumnSchema::nullable("valid", DataType::Int16),
    ];
    for c in 1..=5 {
        cols.push(ColumnSchema::nullable(
            format!("count_c{c}"),
            DataType::Int32,
        ));
    }
    for c in 1..=5 {
        cols.push(ColumnSchema::nullable(
            format!("speed_c{c}"),
            DataType::Float32,
        ));
    }
    Schema::new(cols, &["uid", "lane", "ts"]).unwrap()
}

/// Readings for rows `start..start+n` in ingestion order: minute by minute, every point and
/// lane. Row r is (minute r / (POINTS*LANES), point, lane).
pub fn traffic_rows(schema: &Schema, start: u64, n: usize, seed: u64) -> RecordBatch {
    let mut rng = StdRng::seed_from_u64(seed ^ start);
    let per_minute = (POINTS as u64) * (LANES as u64);
    let (mut uid, mut lane, mut ts, mut valid) = (vec![], vec![], vec![], vec![]);
    let mut counts: Vec<Vec<Option<i32>>> = vec![vec![]; 5];
    let mut speeds: Vec<Vec<Option<f32>>> = vec![vec![]; 5];
    for r in start..start + n as u64 {
        let minute = (r / per_minute) as i64;
        let within = r % per_minute;
        uid.push((within / LANES as u64) as i32);
        lane.push((within % LANES as u64) as i16);
        ts.push(T0 + minute * MINUTE);
        // 0 = a good reading; 2% carry an error flag.
        valid.push(if rng.random_ratio(98, 100) { 0i16 } else { 1 });
        for c in 0..5 {
            let count = if c < 2 {
                rng.random_range(0..25)
            } else {
                rng.random_range(0..4)
            };
            counts[c].push(Some(count));
            speeds[c].push(if count == 0 {
                None
            } else if rng.random_ratio(1, 500) {
                // A sensor glitch: analyses filter these out (speed < 250).
                Some((rng.random_range(2500..3000) as f32) / 10.0)
            } else {
                Some((rng.random_range(300..1300) as f32) / 10.0)
            });
        }
    }
    let mut arrays: Vec<ArrayRef> = vec![
        Arc::new(Int32Array::from(uid)),
        Arc::new(Int16Array::from(lane)),
        Arc::new(TimestampMicrosecondArray::from(ts).with_timezone("UTC")),
        Arc::new(Int16Array::from(valid)),
    ];
    arrays.extend(
        counts
            .into_iter()
            .map(|c| Arc::new(Int32Array::from(c)) as ArrayRef),
    );
    arrays.extend(
        speeds
            .into_iter()
            .map(|c| Arc::new(Float32Array::from(c)) as ArrayRef),
    );
    let fields: Vec<Field> = schema
        .arrow_schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    RecordBatch::try_new(Arc::new(ArrowSchema::new(fields)), arrays).unwrap()
}
