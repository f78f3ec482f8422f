//! The README's quickstart: create a tablet, write, look up, scan.
//!
//! `cargo run -p nyala-storage --example quickstart -- ./nyala-data/quickstart`

use nyala_storage::{
    BatchBuilder, CmpOp, ColumnSchema, DataType, Predicate, ScanRequest, Schema, Tablet,
    TabletOptions, Value, WriteOp,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "./nyala-data/quickstart".into());
    let dir = std::path::Path::new(&dir);
    let schema = Schema::new(
        vec![
            ColumnSchema::not_null("uid", DataType::Int32),
            ColumnSchema::not_null("ts", DataType::Timestamp),
            ColumnSchema::nullable("speed", DataType::Float32),
        ],
        &["uid", "ts"],
    )?;
    let tablet = match Tablet::open(dir, TabletOptions::default()) {
        Ok(t) => t,
        Err(_) => Tablet::create(dir, &schema, TabletOptions::default())?,
    };

    // Upsert three readings; the call returns once they are durable and visible.
    let t0 = 1_700_000_000_000_000i64;
    let mut batch = BatchBuilder::new(["uid", "ts", "speed"]);
    for (i, speed) in [88.5f32, 91.0, 79.25].into_iter().enumerate() {
        let ts = Value::Timestamp(t0 + i as i64 * 60_000_000);
        batch.push(
            WriteOp::Upsert,
            vec![Value::Int32(7), ts, Value::Float32(speed)],
        );
    }
    let outcome = tablet.write(&batch.build(&tablet.schema())?)?;
    println!(
        "applied {} rows at timestamp {}",
        outcome.applied, outcome.timestamp
    );

    // A point lookup by full primary key.
    let row = tablet.get(&[Value::Int32(7), Value::Timestamp(t0)])?;
    println!("lookup: {row:?}");

    // A scan with a predicate, as Arrow record batches.
    let req = ScanRequest {
        predicates: vec![Predicate::cmp("speed", CmpOp::Gt, Value::Float32(80.0))],
        ..Default::default()
    };
    for batch in tablet.scan(&req)? {
        let batch = batch?;
        println!("{} rows: {:?}", batch.num_rows(), batch.columns()[2]);
    }
    tablet.flush()?; // write the buffer to a Parquet segment now (it also happens on its own)
    Ok(())
}
