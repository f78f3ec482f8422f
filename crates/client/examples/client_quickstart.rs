//! The client quickstart: create a table, write through a session, look up, scan.
//!
//! Start a server first (`nyala serve`), then `cargo run -p nyala-client --example client_quickstart`
//! (`NYALA_URL` picks another server).

use futures::TryStreamExt;
use nyala_client::{Client, ClientError, FlushMode, Predicate, Value};

const MINUTE: i64 = 60_000_000;

#[tokio::main]
async fn main() -> Result<(), ClientError> {
    let url = std::env::var("NYALA_URL").unwrap_or_else(|_| "http://127.0.0.1:7050".into());
    let client = Client::connect(&url).await?;
    client
        .sql("CREATE TABLE IF NOT EXISTS quickstart (uid INT, ts TIMESTAMP, speed REAL, PRIMARY KEY (uid, ts))")
        .await?;
    let table = client.table("quickstart").await?;

    // A day of readings for three points, sent in batches by a background flush.
    let mut session = client.session(FlushMode::AutoFlushBackground);
    for uid in 1..=3 {
        for minute in 0..1440i64 {
            let mut row = table.upsert();
            row.set("uid", uid)?
                .set("ts", Value::Timestamp(minute * MINUTE))?
                .set("speed", 60.0 + (minute % 60) as f32)?;
            session.apply(row).await?;
        }
    }
    session.flush().await?;
    for e in session.take_errors() {
        eprintln!("refused: {e}");
    }

    // Timestamps come back as Arrow's Timestamp(µs, "UTC"); arrow-rs prints a named zone only
    // with its chrono-tz feature, so this prints the other columns.
    let (row, _) = table
        .get_many(
            &[vec![Value::Int32(2), Value::Timestamp(90 * MINUTE)]],
            &["uid", "speed"],
            None,
        )
        .await?;
    println!("{}", arrow::util::pretty::pretty_format_batches(&[row])?);

    let scan = table
        .scan()
        .project(["uid", "speed"])
        .filter(Predicate::eq("uid", 3))
        .filter(Predicate::lt("ts", Value::Timestamp(60 * MINUTE)))
        .execute()
        .await?;
    println!("scanning at snapshot {}", scan.snapshot());
    let batches: Vec<_> = scan.try_collect().await?;
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    println!("uid 3, first hour: {rows} rows");

    let avg = client
        .sql("SELECT uid, avg(speed) AS avg_speed FROM quickstart GROUP BY uid ORDER BY uid")
        .await?;
    println!(
        "{}",
        arrow::util::pretty::pretty_format_batches(&avg.batches)?
    );
    Ok(())
}
