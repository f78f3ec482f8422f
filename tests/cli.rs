//! The `nyala` client commands against a real server: `nyala load` on CSV and Parquet files.

mod common;

use std::process::{Command, Output};
use std::sync::Arc;

use arrow::array::{AsArray, Float32Array, Int32Array, RecordBatch, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, TimeUnit};
use common::Server;

fn nyala(server: &Server, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nyala"))
        .args(args)
        .args(["--grpc-addr", &server.grpc.to_string()])
        .output()
        .unwrap()
}

async fn count(server: &Server, sql: &str) -> i64 {
    let r = server.client().await.sql(sql).await.unwrap();
    r.batches[0].column(0).as_primitive::<Int64Type>().value(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_csv_reports_bad_rows_by_line_and_loads_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let csv = dir.path().join("readings.csv");
    std::fs::write(
        &csv,
        "uid,ts,speed,note\n\
         1,2026-11-15 00:00:00,50.5,first\n\
         2,2026-11-15 00:01:00,fast,bad speed\n\
         ,2026-11-15 00:02:00,3,no key\n\
         3,2026-11-15T00:03:00Z,4,\n\
         1,2026-11-15 00:00:00,6,duplicate\n\
         \"4\",\"2026-11-15 00:04:00\",7,\"quoted, with comma\"\n",
    )
    .unwrap();
    let csv = csv.to_str().unwrap();

    // No table and no --create: a clear error, nothing loaded.
    let out = nyala(&server, &["load", csv, "--table", "readings"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not exist"), "{err}");

    server
        .client()
        .await
        .sql("CREATE TABLE readings (uid INT, ts TIMESTAMP, speed REAL, note TEXT, PRIMARY KEY (uid, ts))")
        .await
        .unwrap();
    let out = nyala(&server, &["load", csv, "--table", "readings"]);
    let err = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Some rows were not loaded: the exit status says so, each is reported by line.
    assert!(!out.status.success());
    assert!(err.contains("line 3: column \"speed\": 'fast'"), "{err}");
    assert!(err.contains("line 4: column \"uid\""), "{err}");
    assert!(err.contains("line 6: duplicate key"), "{err}");
    assert!(stdout.contains("loaded 3 rows"), "{stdout}");
    assert_eq!(count(&server, "SELECT count(*) FROM readings").await, 3);
    assert_eq!(
        count(
            &server,
            "SELECT count(*) FROM readings WHERE note = 'quoted, with comma' AND ts = TIMESTAMP '2026-11-15 00:04:00'"
        )
        .await,
        1
    );
    // --upsert replaces instead of refusing.
    let out = nyala(&server, &["load", csv, "--table", "readings", "--upsert"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("loaded 4 rows"), "{stdout}");
    assert_eq!(
        count(
            &server,
            "SELECT count(*) FROM readings WHERE note = 'duplicate'"
        )
        .await,
        1
    );

    // --create infers the columns from the file.
    let out = nyala(
        &server,
        &[
            "load", csv, "--table", "inferred", "--create", "--key", "note",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("created table public.inferred"), "{err}");
    // The row with an empty note cannot have it as its key.
    assert!(err.contains("line 5: column \"note\" is empty"), "{err}");
    assert_eq!(count(&server, "SELECT count(*) FROM inferred").await, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_parquet_into_a_new_table() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let path = dir.path().join("readings.parquet");
    // 30,000 rows in three row groups; timestamps with a zone, as pandas writes them.
    let schema = Arc::new(Schema::new(vec![
        Field::new("uid", DataType::Int32, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("speed", DataType::Float32, true),
    ]));
    let file = std::fs::File::create(&path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, schema.clone(), None).unwrap();
    for part in 0..3i32 {
        let uids: Vec<i32> = (0..10_000).map(|i| part * 10_000 + i).collect();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int32Array::from(uids.clone())),
                Arc::new(
                    TimestampMicrosecondArray::from(
                        uids.iter()
                            .map(|u| *u as i64 * 60_000_000)
                            .collect::<Vec<_>>(),
                    )
                    .with_timezone("UTC"),
                ),
                Arc::new(Float32Array::from(
                    uids.iter().map(|u| (u % 100) as f32).collect::<Vec<_>>(),
                )),
            ],
        )
        .unwrap();
        w.write(&batch).unwrap();
        w.flush().unwrap();
    }
    w.close().unwrap();
    let out = nyala(
        &server,
        &[
            "load",
            path.to_str().unwrap(),
            "--table",
            "readings",
            "--create",
            "--key",
            "uid,ts",
            "--batch-rows",
            "4096",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("loaded 30000 rows"), "{stdout}");
    assert_eq!(
        count(&server, "SELECT count(*) FROM readings").await,
        30_000
    );
    assert_eq!(
        count(
            &server,
            "SELECT CAST(sum(speed) AS BIGINT) FROM readings WHERE ts >= TIMESTAMP '1970-01-01 00:00:00' + INTERVAL '20000 minutes'"
        )
        .await,
        (20_000..30_000).map(|u| (u % 100) as i64).sum::<i64>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_loads_traffic_and_charts_one_point_and_the_shell_describes_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let out = nyala(
        &server,
        &["demo", "--points", "3", "--days", "1", "--point", "2"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Loaded 8640 rows"), "{stdout}");
    assert!(stdout.contains("at point 2 ("), "{stdout}");
    assert!(stdout.contains("3 points x 2 lanes x 1 day,"), "{stdout}");
    let chart: Vec<&str> = stdout.lines().filter(|l| l.contains(" km/h █")).collect();
    assert_eq!(chart.len(), 24, "{stdout}");
    assert!(chart[8].starts_with("  08:00"), "{stdout}");
    assert_eq!(
        count(&server, "SELECT count(*) FROM demo_traffic").await,
        8640
    );
    assert_eq!(
        count(
            &server,
            "SELECT count(*) FROM demo_traffic t JOIN demo_points p ON t.uid = p.uid WHERE p.uid = 2"
        )
        .await,
        2880
    );
    // Rush hour is slower than the night, as the chart shows.
    let speed = |hour: usize| -> f64 {
        chart[hour]
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(speed(8) < speed(3), "{stdout}");

    // The shell's backslash commands.
    let out = nyala(&server, &["sql", "-c", "\\d"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("demo_traffic") && stdout.contains("demo_points"),
        "{stdout}"
    );
    let out = nyala(&server, &["sql", "-c", "\\d demo_traffic"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(stdout.contains("| speed_c5 | REAL"), "{stdout}");
    assert!(stdout.contains("HASH (uid) PARTITIONS 2"), "{stdout}");
    let out = nyala(&server, &["sql", "-c", "\\d nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shell_piped_into_a_reader_that_stops_ends_quietly() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    // As `nyala sql -c ... | head -1`: the reader takes one line and closes the pipe.
    let mut child = Command::new(env!("CARGO_BIN_EXE_nyala"))
        .args(["sql", "--grpc-addr", &server.grpc.to_string(), "-c"])
        .arg("SELECT v, repeat('x', 100) FROM generate_series(1, 200000) AS t(v)")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 16];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    // (The pipe's read end is dropped here.)
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}
