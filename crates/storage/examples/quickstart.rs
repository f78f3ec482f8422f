//! The README's quickstart: open a database, create a partitioned table, write, look up, scan,
//! add a column.
//!
//! `cargo run -p nyala-storage --example quickstart -- ./nyala-data`

use nyala_storage::{
    BatchBuilder, CmpOp, ColumnSchema, DataType, Database, DatabaseOptions, IfExists,
    PartitionSpec, Predicate, RangeBounds, ScanRequest, Schema, SchemaChange, TableName, Value,
    WriteOp,
};

const DAY: i64 = 86_400_000_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "./nyala-data".into());
    // One process owns the directory; a second open fails with a clear error.
    let db = Database::open(std::path::Path::new(&dir), DatabaseOptions::default())?;

    // Readings keyed by (uid, ts): 4 hash buckets on uid, within one range partition per day.
    let schema = Schema::new(
        vec![
            ColumnSchema::not_null("uid", DataType::Int32),
            ColumnSchema::not_null("ts", DataType::Timestamp),
            ColumnSchema::nullable("speed", DataType::Float32),
        ],
        &["uid", "ts"],
    )?;
    let day0 = 1_700_000_000_000_000 / DAY * DAY;
    let days = (0..2)
        .map(|d| {
            RangeBounds::new(
                Value::Timestamp(day0 + d * DAY),
                Value::Timestamp(day0 + (d + 1) * DAY),
            )
        })
        .collect();
    let spec = PartitionSpec::hash(["uid"], 4).with_range("ts", days);
    let name = TableName::parse("Readings")?; // unquoted: folds to public.readings
    let table = db.create_table(&name, &schema, &spec, IfExists::Skip)?;
    println!("{} has {} tablets", table.name(), table.tablet_count());

    // Upsert three readings; the call returns once they are durable and visible.
    let mut batch = BatchBuilder::new(["uid", "ts", "speed"]);
    for (i, speed) in [88.5f32, 91.0, 79.25].into_iter().enumerate() {
        let ts = Value::Timestamp(day0 + i as i64 * 60_000_000);
        batch.push(
            WriteOp::Upsert,
            vec![Value::Int32(7), ts, Value::Float32(speed)],
        );
    }
    let outcome = table.write(&batch.build(&table.schema())?)?;
    println!(
        "applied {} rows at timestamp {}",
        outcome.applied, outcome.timestamp
    );

    // A point lookup by full primary key goes to one tablet.
    let row = table.get(&[Value::Int32(7), Value::Timestamp(day0)])?;
    println!("lookup: {row:?}");

    // A scan with predicates: `uid = 7` prunes to one bucket, the speed filter runs on Arrow.
    let req = ScanRequest {
        predicates: vec![
            Predicate::cmp("uid", CmpOp::Eq, Value::Int32(7)),
            Predicate::cmp("speed", CmpOp::Gt, Value::Float32(80.0)),
        ],
        ..Default::default()
    };
    let scan = table.scan(&req)?;
    println!(
        "scanning {} of {} tablets",
        scan.tablets_scanned(),
        table.tablet_count()
    );
    for batch in scan {
        let batch = batch?;
        println!("{} rows: {:?}", batch.num_rows(), batch.column(2));
    }

    // Add a column online (old rows read NULL); a second run finds it there already.
    if table.schema().index_of("lane").is_err() {
        db.alter_table(
            &name,
            &SchemaChange::AddColumn(ColumnSchema::nullable("lane", DataType::Int16)),
        )?;
    }
    println!(
        "columns: {:?}",
        table
            .describe()
            .schema
            .columns()
            .iter()
            .map(|c| &c.name)
            .collect::<Vec<_>>()
    );
    Ok(())
}
