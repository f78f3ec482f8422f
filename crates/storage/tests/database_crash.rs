//! Crash test for the catalog: a child process runs DDL (create, add range partition, drop)
//! and writes in a loop and is killed with SIGKILL at random moments. After each kill the
//! database opens, every acknowledged operation is there, the interrupted one happened wholly
//! or not at all, and no tablet files are left that the catalog does not name. While the
//! child runs, the parent cannot open the directory.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::test_opts;
use nyala_storage::{
    BatchBuilder, ColumnSchema, DataType, Database, DatabaseOptions, IfExists, PartitionSpec,
    RangeBounds, ScanRequest, Schema, SchemaChange, TableName, Value, WriteOp,
};
use rand::Rng;

const DAY: i64 = 86_400_000_000;

fn opts() -> DatabaseOptions {
    DatabaseOptions {
        tablet: test_opts(),
        scan_threads: 2,
        ..Default::default()
    }
}

fn schema() -> Schema {
    Schema::new(
        vec![
            ColumnSchema::not_null("uid", DataType::Int32),
            ColumnSchema::not_null("ts", DataType::Timestamp),
            ColumnSchema::nullable("speed", DataType::Float64),
        ],
        &["uid", "ts"],
    )
    .unwrap()
}

fn day(d: i64) -> RangeBounds {
    RangeBounds::new(Value::Timestamp(d * DAY), Value::Timestamp((d + 1) * DAY))
}

fn table_name(round: usize, i: usize) -> TableName {
    TableName::new("public", format!("r{round}_t{i}"))
}

/// The child: for i = 0, 1, ...: create table i, write to it, add a range partition to it,
/// add a column to it, drop table i - 2; printing an acknowledgement after each.
#[test]
#[ignore = "run by ddl_survives_sigkill as a child process"]
fn ddl_crash_child() {
    let Ok(dir) = std::env::var("NYALA_DDL_CRASH_DIR") else {
        return;
    };
    let round: usize = std::env::var("NYALA_DDL_CRASH_ROUND")
        .unwrap()
        .parse()
        .unwrap();
    let db = Database::open(Path::new(&dir), opts()).unwrap();
    println!("ready");
    for i in 0.. {
        let name = table_name(round, i);
        let spec = PartitionSpec::hash(["uid"], 2).with_range("ts", vec![day(0)]);
        let t = db
            .create_table(&name, &schema(), &spec, IfExists::Error)
            .unwrap();
        println!("created {i}");
        let mut b = BatchBuilder::new(["uid", "ts", "speed"]);
        for u in 0..10 {
            b.push(
                WriteOp::Insert,
                vec![
                    Value::Int32(u),
                    Value::Timestamp(u as i64),
                    Value::Float64(i as f64),
                ],
            );
        }
        t.write(&b.build(&t.schema()).unwrap()).unwrap();
        println!("wrote {i}");
        db.add_range_partition(&name, &day(1)).unwrap();
        println!("ranged {i}");
        db.alter_table(
            &name,
            &SchemaChange::AddColumn(ColumnSchema::nullable(format!("c{i}"), DataType::Int64)),
        )
        .unwrap();
        println!("altered {i}");
        if i >= 2 {
            db.drop_table(&table_name(round, i - 2), IfExists::Error)
                .unwrap();
            println!("dropped {}", i - 2);
        }
    }
}

#[test]
fn ddl_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rng();
    for round in 0..8 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "ddl_crash_child",
                "--exact",
                "--include-ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("NYALA_DDL_CRASH_DIR", dir.path())
            .env("NYALA_DDL_CRASH_ROUND", round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Acknowledged steps per table: 1 created, 2 wrote, 3 ranged, 4 altered, 5 dropped.
        let mut acked: BTreeMap<usize, u8> = BTreeMap::new();
        // The last acknowledged (table, step): the operation after it was in flight.
        let mut last = (0usize, 0u8);
        let mut record = |line: &str| {
            let Some((what, i)) = line.rsplit_once(' ') else {
                return;
            };
            let Ok(i) = i.parse::<usize>() else { return };
            let step = match what.trim_start_matches(|c: char| !c.is_ascii_lowercase()) {
                "created" => 1,
                "wrote" => 2,
                "ranged" => 3,
                "altered" => 4,
                "dropped" => 5,
                _ => return,
            };
            acked.insert(i, step);
            last = (i, step);
        };
        // Wait for the first creation so that every round makes progress.
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("child produced output");
            record(&line);
            if line.contains("created") {
                break;
            }
        }
        // The child owns the directory: this process cannot open it.
        let err = Database::open(dir.path(), opts()).unwrap_err();
        assert!(err.to_string().contains("in use by another"), "{err}");
        std::thread::sleep(Duration::from_millis(rng.random_range(0..300)));
        child.kill().unwrap();
        child.wait().unwrap();
        while let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            record(&line);
        }
        // After "altered i" the drop of table i - 2 was in flight: it may have happened.
        let maybe_dropped = (last.1 == 4 && last.0 >= 2).then(|| last.0 - 2);
        let db = Database::open(dir.path(), opts()).unwrap();
        for (&i, &step) in &acked {
            let name = table_name(round, i);
            let table = db.table(&name);
            if maybe_dropped == Some(i) && table.is_err() {
                continue;
            }
            if step == 5 {
                assert!(
                    table.is_err(),
                    "round {round}: dropped table {name} is back"
                );
                continue;
            }
            let t = table.unwrap_or_else(|e| {
                panic!(
                    "round {round}: {name} lost: {e}; acked {acked:?}; tables {:?}",
                    db.list_tables(None)
                )
            });
            let ranges = t.describe().partitioning.range.unwrap().partitions.len();
            let has_column = t.schema().index_of(&format!("c{i}")).is_ok();
            assert!(
                has_column || step < 4,
                "round {round}: {name} lost its column"
            );
            assert!(
                ranges > usize::from(step >= 3),
                "round {round}: {name} lost its range"
            );
            // Every tablet has the table's schema, whatever was in flight.
            let parts = t.scan_tablets(&ScanRequest::default()).unwrap();
            let mut rows = 0;
            for scan in parts.scans {
                for b in scan {
                    let b = b.unwrap();
                    assert_eq!(b.schema(), parts.schema, "round {round}: {name}");
                    rows += b.num_rows();
                }
            }
            if step >= 2 {
                assert_eq!(rows, 10, "round {round}: {name} lost its rows");
            } else {
                // The write was in flight: each tablet's part is all or nothing, the batch
                // as a whole is not (it spans tablets).
                assert!(rows <= 10, "round {round}: {name} has {rows} rows");
            }
        }
        // Whatever was in flight, the files match the catalog exactly.
        let named: usize = db
            .list_tables(None)
            .iter()
            .map(|n| db.table(n).unwrap().tablet_count())
            .sum();
        let on_disk = std::fs::read_dir(dir.path().join("tablets"))
            .unwrap()
            .count();
        assert_eq!(
            named, on_disk,
            "round {round}: orphaned or missing tablet files"
        );
    }
}
