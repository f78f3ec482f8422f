//! Runs SQL statements against a data directory and prints the results: a way to try Nyala's
//! SQL before the server exists.
//!
//! `cargo run -p nyala-sql --example sql -- ./nyala-data "SELECT 1" ["more statements" ...]`
//! With no statements, reads one statement per line from standard input.

use std::io::BufRead;
use std::sync::Arc;

use arrow::util::pretty::pretty_format_batches;
use nyala_sql::Engine;
use nyala_storage::{Database, DatabaseOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| "./nyala-data".into());
    let db = Database::open(std::path::Path::new(&dir), DatabaseOptions::default())?;
    let engine = Engine::new(Arc::new(db));
    let mut statements: Vec<String> = args.collect();
    if statements.is_empty() {
        for line in std::io::stdin().lock().lines() {
            let line = line?;
            if !line.trim().is_empty() {
                statements.push(line);
            }
        }
    }
    for sql in statements {
        match engine.execute(&sql).await {
            Ok(batches) if batches.is_empty() => println!("OK"),
            Ok(batches) => println!("{}", pretty_format_batches(&batches)?),
            Err(e) => println!("ERROR: {e}"),
        }
    }
    Ok(())
}
