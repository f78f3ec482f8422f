//! End to end: the real `nyala` binary on ephemeral ports, driven by the Rust client, curl-like
//! HTTP requests and signals.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{http_get, status, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_sql_health_shutdown_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let health = http_get(server.http, "/healthz");
    assert!(
        health.starts_with("HTTP/1.1 200") && health.ends_with("ok\n"),
        "{health}"
    );

    let c = server.client().await;
    let created = c
        .sql("CREATE TABLE readings (uid INT, ts TIMESTAMP, speed REAL, PRIMARY KEY (uid, ts))")
        .await
        .unwrap();
    assert_eq!(created.schema.fields().len(), 0);
    let inserted = c
        .sql("INSERT INTO readings VALUES (1, '2024-05-01 10:00:00', 50), (2, '2024-05-01 10:00:00', 70)")
        .await
        .unwrap();
    assert_eq!(
        arrow::util::pretty::pretty_format_batches(&inserted.batches)
            .unwrap()
            .to_string(),
        "+-------+\n| count |\n+-------+\n| 2     |\n+-------+"
    );
    let avg = c.sql("SELECT avg(speed) AS a FROM readings").await.unwrap();
    assert_eq!(
        arrow::util::pretty::pretty_format_batches(&avg.batches)
            .unwrap()
            .to_string(),
        "+------+\n| a    |\n+------+\n| 60.0 |\n+------+"
    );
    // No rows still describes the columns.
    let none = c
        .sql("SELECT uid, speed FROM readings WHERE uid = 9")
        .await
        .unwrap();
    assert_eq!(none.num_rows(), 0);
    assert_eq!(none.schema.fields().len(), 2);
    assert_eq!(
        c.list_tables(None).await.unwrap(),
        vec![("public".to_string(), "readings".to_string())]
    );

    // Errors carry a gRPC code and the SQLSTATE.
    let e = status(c.sql("SELECT * FROM nope").await.unwrap_err());
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    assert!(e.message().contains("42P01"), "{e:?}");
    let e = status(
        c.sql("INSERT INTO readings VALUES (1, '2024-05-01 10:00:00', 1)")
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("23505"), "{e:?}");
    let e = status(c.sql("SELEC 1").await.unwrap_err());
    assert!(e.message().contains("42601"), "{e:?}");
    let e = status(
        c.sql("CREATE TABLE readings (a INT PRIMARY KEY)")
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code(), tonic::Code::AlreadyExists);
    let e = status(c.list_tables(Some("nowhere")).await.unwrap_err());
    assert_eq!(e.code(), tonic::Code::NotFound);

    let metrics = http_get(server.http, "/metrics");
    assert!(metrics.contains("nyala_sql_requests_total 8"), "{metrics}");
    assert!(
        metrics.contains("nyala_table_rows{namespace=\"public\",table=\"readings\"} 2"),
        "{metrics}"
    );

    // A second server on the same directory fails fast, naming the problem.
    let second = Command::new(env!("CARGO_BIN_EXE_nyala"))
        .args([
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("in use by another Nyala process"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );

    // SIGTERM: a clean exit; the data is there after a restart.
    drop(c);
    assert_eq!(server.stop("-TERM"), Some(0));
    let server = Server::start(dir.path());
    let c = server.client().await;
    assert_eq!(c.sql("SELECT * FROM readings").await.unwrap().num_rows(), 2);
    // kill -9 right after an acknowledged write: it survives.
    c.sql("INSERT INTO readings VALUES (3, '2024-05-01 11:00:00', 90)")
        .await
        .unwrap();
    drop(c);
    assert_eq!(server.stop("-KILL"), None);
    let server = Server::start(dir.path());
    let c = server.client().await;
    assert_eq!(c.sql("SELECT * FROM readings").await.unwrap().num_rows(), 3);
    drop(c);
    assert_eq!(server.stop("-TERM"), Some(0));
}

#[test]
fn sql_cli_runs_statements_and_reports_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let nyala = |args: &[&str], stdin: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_nyala"))
            .args(["sql", "--grpc-addr", &server.grpc.to_string()])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, out, _) = nyala(&["-c", "CREATE TABLE kv (k INT PRIMARY KEY, v TEXT)"], "");
    assert!(ok);
    assert_eq!(out, "OK\n");
    let (ok, out, err) = nyala(
        &[],
        "INSERT INTO kv VALUES (1, 'a;b'),\n (2, 'c');\nSELECT v FROM kv ORDER BY k;\n",
    );
    assert!(ok, "{err}");
    assert!(out.contains("| 2     |"), "{out}");
    assert!(out.contains("| a;b |") && out.contains("| c   |"), "{out}");
    // Times print as psql shows them, not in Arrow's ISO form.
    let (ok, out, err) = nyala(&["-c", "SELECT TIMESTAMP '2024-05-01 10:00:00' AS t"], "");
    assert!(ok, "{err}");
    assert!(out.contains("| 2024-05-01 10:00:00 |"), "{out}");
    let (ok, _, err) = nyala(&["-c", "SELECT * FROM missing"], "");
    assert!(!ok);
    assert!(err.contains("ERROR:") && err.contains("42P01"), "{err}");
    assert_eq!(server.stop("-TERM"), Some(0));
}

/// The maintenance flags reach the manager (the compacting thread's priority included), and
/// its work shows in `/metrics`: a table written past its flush threshold is flushed in the
/// background, then merged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_maintenance_is_configured_by_flags_and_published_as_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        dir.path(),
        &[
            "--memory-budget-mb",
            "64",
            "--flush-threshold-mb",
            "1",
            "--maintenance-threads",
            "2",
            "--compaction-nice",
            "7",
        ],
    );
    // The compacting worker runs 7 nice levels below the flushing one.
    #[cfg(target_os = "linux")]
    {
        let tasks = format!("/proc/{}/task", server.child.id());
        let nice = |name: &str| -> Option<i64> {
            std::fs::read_dir(&tasks).ok()?.flatten().find_map(|t| {
                let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
                if comm.trim_end() != name {
                    return None;
                }
                let stat = std::fs::read_to_string(t.path().join("stat")).ok()?;
                // After the parenthesised name, the nice value is the 17th field.
                stat[stat.rfind(')')? + 2..]
                    .split(' ')
                    .nth(16)?
                    .parse()
                    .ok()
            })
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let (flusher, compacter) = (nice("nyala-maint-0"), nice("nyala-maint-1"));
            if let (Some(f), Some(c)) = (flusher, compacter) {
                if c == (f + 7).min(19) && c > f {
                    break;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "maintenance threads' nice values: {flusher:?} / {compacter:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    let c = server.client().await;
    c.sql("CREATE TABLE m (k BIGINT PRIMARY KEY, v TEXT)")
        .await
        .unwrap();
    // Several buffers' worth, each batch landing on every tablet.
    for round in 0..6 {
        c.sql(&format!(
            "INSERT INTO m SELECT value + {}, repeat('x', 60) FROM generate_series(1, 20000)",
            round * 20000
        ))
        .await
        .unwrap();
    }
    let metric = |text: &str, name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let text = loop {
        let text = http_get(server.http, "/metrics");
        if metric(&text, "nyala_maintenance_flushes_total") >= 1.0
            && metric(&text, "nyala_table_segments{") >= 1.0
        {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no background flush: {text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(
        metric(&text, "nyala_write_memory_budget_bytes"),
        (64 << 20) as f64
    );
    assert!(metric(&text, "nyala_write_memory_bytes") < (64 << 20) as f64);
    assert!(metric(&text, "nyala_table_segments_per_key{") >= 1.0);
    let rows = c.sql("SELECT count(*) AS n FROM m").await.unwrap();
    let rows = arrow::util::pretty::pretty_format_batches(&rows.batches)
        .unwrap()
        .to_string();
    assert!(rows.contains("120000"), "{rows}");
    // That scan read the flushed rows: their columns are now in the column cache.
    let text = http_get(server.http, "/metrics");
    assert!(metric(&text, "nyala_column_cache_capacity_bytes") > 0.0);
    assert!(
        metric(&text, "nyala_column_cache_misses_total") >= 1.0,
        "{text}"
    );
}

/// The human log format has colours only on a terminal: written to a pipe or a file it is
/// plain text (no escape sequences to clutter `grep` or a log viewer).
#[test]
fn human_logs_to_a_pipe_are_plain_text() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut child = Server::command(dir.path(), &[]).spawn().unwrap();
    let mut seen = Vec::new();
    for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        let done = line.contains("listening");
        seen.push(line);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let log = seen.join("\n");
    assert!(log.contains("INFO") && log.contains("listening"), "{log}");
    assert!(!log.contains('\u{1b}'), "{log}");
}
