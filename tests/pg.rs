//! The PostgreSQL front end, end to end: the real `nyala serve` binary and a real PostgreSQL
//! client library (tokio-postgres: simple and extended protocol, binary parameters and
//! results, SCRAM, cancel requests).

mod common;

use std::io::{Read, Write};
use std::time::{Duration, SystemTime};

use common::Server;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

async fn connect(server: &Server, user_password: &str) -> Result<Client, tokio_postgres::Error> {
    let config = format!(
        "host=127.0.0.1 port={} dbname=nyala {user_password}",
        server.pg.port()
    );
    let (client, connection) = tokio_postgres::connect(&config, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// Command tags and rows of a simple query, as psql would print them.
async fn simple(client: &Client, sql: &str) -> (Vec<u64>, Vec<Vec<Option<String>>>) {
    let mut tags = Vec::new();
    let mut rows = Vec::new();
    for m in client.simple_query(sql).await.unwrap() {
        match m {
            SimpleQueryMessage::CommandComplete(n) => tags.push(n),
            SimpleQueryMessage::Row(r) => {
                rows.push((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => {}
        }
    }
    (tags, rows)
}

fn code(e: &tokio_postgres::Error) -> SqlState {
    e.code()
        .cloned()
        .unwrap_or_else(|| panic!("no SQLSTATE in {e:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_and_extended_queries_types_errors_and_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let c = connect(&server, "user=anyone").await.unwrap();

    // Several statements in one simple query, with the counts PostgreSQL reports.
    let (tags, _) = simple(
        &c,
        "CREATE TABLE readings (uid INT, lane SMALLINT, ts TIMESTAMP, speed REAL, \
         flag BOOLEAN, big BIGINT, ratio DOUBLE PRECISION, note TEXT, raw BYTEA, \
         PRIMARY KEY (uid, lane, ts)); \
         INSERT INTO readings VALUES (1, 1, '2026-11-15 08:00:00', 52.5, true, 10, 0.5, 'a;b', '\\x00ff'), \
                                     (1, 2, '2026-11-15 08:00:00', 48.0, false, NULL, NULL, NULL, NULL); \
         UPDATE readings SET speed = 50 WHERE uid = 1 AND lane = 2; \
         DELETE FROM readings WHERE uid = 99",
    )
    .await;
    assert_eq!(tags, vec![0, 2, 1, 0]);
    let (_, rows) = simple(
        &c,
        "SELECT lane, speed, flag, note, raw FROM readings ORDER BY lane",
    )
    .await;
    assert_eq!(
        rows,
        vec![
            vec![
                Some("1".into()),
                Some("52.5".into()),
                Some("t".into()),
                Some("a;b".into()),
                Some("\\x00ff".into())
            ],
            vec![
                Some("2".into()),
                Some("50".into()), // as PostgreSQL prints it, not "50.0"
                Some("f".into()),
                None,
                None
            ],
        ]
    );

    // Result columns the query does not name are named, and timestamps and floats written,
    // as PostgreSQL names and writes them.
    let messages = c
        .simple_query(
            "SELECT count(*), avg(speed), max(ts), speed * 2, ratio / 3, CAST(big AS TEXT), \
             ts + INTERVAL '0.25 second', 1e20::float8, 'infinity'::float8 \
             FROM readings WHERE lane = 1 GROUP BY speed, ratio, big, ts",
        )
        .await
        .unwrap();
    let row = messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .expect("a row");
    let names: Vec<&str> = row.columns().iter().map(|c| c.name()).collect();
    assert_eq!(
        names,
        ["count", "avg", "max", "?column?", "?column?", "big", "?column?", "float8", "float8"]
    );
    let values: Vec<Option<&str>> = (0..row.len()).map(|i| row.get(i)).collect();
    assert_eq!(
        values,
        [
            Some("1"),
            Some("52.5"),
            Some("2026-11-15 08:00:00"),
            Some("105"),
            Some("0.16666666666666666"),
            Some("10"),
            Some("2026-11-15 08:00:00.25"),
            Some("1e+20"),
            Some("Infinity"),
        ]
    );

    // Extended protocol: typed binary parameters (including NULLs) and binary results.
    let ts = SystemTime::UNIX_EPOCH + Duration::from_secs(1_763_193_600); // 2025-11-15 08:00 UTC
    let insert = c
        .prepare("INSERT INTO readings VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)")
        .await
        .unwrap();
    let n = c
        .execute(
            &insert,
            &[
                &7i32,
                &3i16,
                &ts,
                &61.25f32,
                &true,
                &Some(1i64 << 40),
                &Option::<f64>::None,
                &"it's",
                &vec![1u8, 2, 3],
            ],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    let lookup = c
        .prepare("SELECT speed, big, ratio, note, raw, ts, flag FROM readings WHERE uid = $1 AND lane = $2 AND ts = $3")
        .await
        .unwrap();
    let names: Vec<&str> = lookup.columns().iter().map(|c| c.name()).collect();
    assert_eq!(
        names,
        ["speed", "big", "ratio", "note", "raw", "ts", "flag"]
    );
    let row = c.query_one(&lookup, &[&7i32, &3i16, &ts]).await.unwrap();
    assert_eq!(row.get::<_, f32>(0), 61.25);
    assert_eq!(row.get::<_, Option<i64>>(1), Some(1 << 40));
    assert_eq!(row.get::<_, Option<f64>>(2), None);
    assert_eq!(row.get::<_, String>(3), "it's");
    assert_eq!(row.get::<_, Vec<u8>>(4), vec![1, 2, 3]);
    assert_eq!(row.get::<_, SystemTime>(5), ts);
    assert!(row.get::<_, bool>(6));
    // The same prepared statement, again, with a key that is not there.
    assert!(c
        .query_opt(&lookup, &[&7i32, &4i16, &ts])
        .await
        .unwrap()
        .is_none());
    // Untyped parameters are inferred from the columns they meet.
    let rows = c
        .query(
            "SELECT count(*) FROM readings WHERE uid = $1 AND speed > $2",
            &[&1i32, &49.0f32],
        )
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, i64>(0), 2);

    // Upserts the PostgreSQL way.
    let upsert = "INSERT INTO readings (uid, lane, ts, speed) VALUES ($1, $2, $3, $4) \
                  ON CONFLICT (uid, lane, ts) DO UPDATE SET speed = EXCLUDED.speed";
    assert_eq!(
        c.execute(upsert, &[&7i32, &3i16, &ts, &70f32])
            .await
            .unwrap(),
        1
    );
    let row = c.query_one(&lookup, &[&7i32, &3i16, &ts]).await.unwrap();
    assert_eq!(row.get::<_, f32>(0), 70.0);
    assert_eq!(
        row.get::<_, String>(3),
        "it's",
        "DO UPDATE keeps the other columns"
    );

    // Errors carry PostgreSQL's SQLSTATE codes.
    let e = c
        .execute(
            &insert,
            &[
                &7i32,
                &3i16,
                &ts,
                &1f32,
                &true,
                &0i64,
                &0f64,
                &"x",
                &vec![0u8],
            ],
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), SqlState::UNIQUE_VIOLATION, "{e:?}");
    let e = c.simple_query("SELECT * FROM nowhere").await.unwrap_err();
    assert_eq!(code(&e), SqlState::UNDEFINED_TABLE);
    let e = c
        .simple_query("SELECT nothing FROM readings")
        .await
        .unwrap_err();
    assert_eq!(code(&e), SqlState::UNDEFINED_COLUMN);
    let e = c.simple_query("SELEC 1").await.unwrap_err();
    assert_eq!(code(&e), SqlState::SYNTAX_ERROR);
    let e = c
        .prepare("SELECT * FROM nowhere WHERE a = $1")
        .await
        .unwrap_err();
    assert_eq!(code(&e), SqlState::UNDEFINED_TABLE);
    // The first error ends a multi-statement query: the INSERT after it does not run.
    let e = c
        .simple_query("SELECT 1; SELECT * FROM nowhere; INSERT INTO readings (uid, lane, ts) VALUES (8, 8, '2026-01-01')")
        .await
        .unwrap_err();
    assert_eq!(code(&e), SqlState::UNDEFINED_TABLE);
    let (_, rows) = simple(&c, "SELECT count(*) FROM readings WHERE uid = 8").await;
    assert_eq!(rows, vec![vec![Some("0".into())]]);

    // A failed transaction block refuses statements until it ends, as PostgreSQL's does.
    simple(&c, "BEGIN").await;
    assert!(c.simple_query("SELECT * FROM nowhere").await.is_err());
    let e = c.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(code(&e), SqlState::IN_FAILED_SQL_TRANSACTION);
    let e = c.query("SELECT $1::int", &[&1i32]).await.unwrap_err();
    assert_eq!(code(&e), SqlState::IN_FAILED_SQL_TRANSACTION);
    simple(&c, "ROLLBACK").await;
    let (_, rows) = simple(&c, "SELECT 1").await;
    assert_eq!(rows, vec![vec![Some("1".into())]]);
    // Through the client library's transaction API, too.
    let mut c = c;
    let t = c.transaction().await.unwrap();
    t.execute(
        "UPSERT INTO readings (uid, lane, ts) VALUES (9, 9, '2026-01-01')",
        &[],
    )
    .await
    .unwrap();
    t.commit().await.unwrap();
    let (_, rows) = simple(&c, "SELECT count(*) FROM readings WHERE uid = 9").await;
    assert_eq!(rows, vec![vec![Some("1".into())]]);

    // What client libraries ask when they connect.
    let (_, rows) = simple(&c, "select pg_catalog.version()").await;
    let version = rows[0][0].clone().unwrap();
    assert!(version.starts_with("PostgreSQL 16."), "{version}");
    let (_, rows) = simple(&c, "select current_schema()").await;
    assert_eq!(rows, vec![vec![Some("public".into())]]);
    let (_, rows) = simple(&c, "show transaction isolation level").await;
    assert_eq!(rows, vec![vec![Some("read committed".into())]]);
    let (_, rows) = simple(&c, "SET application_name = 'probe'; SHOW application_name").await;
    assert_eq!(rows, vec![vec![Some("probe".into())]]);
    let e = c.simple_query("SHOW no_such_setting").await.unwrap_err();
    assert_eq!(code(&e), SqlState::UNDEFINED_OBJECT);
    let (_, rows) = simple(&c, "").await;
    assert!(rows.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_passwords_cancel_and_bad_clients() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), &["--pg-password", "s3cret"]);

    let e = connect(&server, "user=nyala password=wrong")
        .await
        .unwrap_err();
    assert_eq!(code(&e), SqlState::INVALID_PASSWORD, "{e:?}");
    let e = connect(&server, "user=intruder password=s3cret")
        .await
        .unwrap_err();
    assert_eq!(code(&e), SqlState::INVALID_PASSWORD, "{e:?}");
    let c = connect(&server, "user=nyala password=s3cret")
        .await
        .unwrap();
    let (_, rows) = simple(&c, "SELECT 40 + 2").await;
    assert_eq!(rows, vec![vec![Some("42".into())]]);

    // A cancel request stops a long query; the connection stays usable.
    let token = c.cancel_token();
    let slow = tokio::spawn(async move {
        let r = c
            .simple_query("SELECT count(*) FROM generate_series(1, 20000000000) a")
            .await;
        (c, r)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    token.cancel_query(NoTls).await.unwrap();
    let (c, r) = tokio::time::timeout(Duration::from_secs(20), slow)
        .await
        .expect("cancelled in time")
        .unwrap();
    assert_eq!(code(&r.unwrap_err()), SqlState::QUERY_CANCELED);
    let (_, rows) = simple(&c, "SELECT 1").await;
    assert_eq!(rows, vec![vec![Some("1".into())]]);

    // As BI tools cancel: another session finds the query in pg_stat_activity and
    // terminates its backend; pg_backend_pid() is the pid listed there.
    let (_, rows) = simple(&c, "SELECT pg_backend_pid()").await;
    let pid = rows[0][0].clone().unwrap();
    let other = connect(&server, "user=nyala password=s3cret")
        .await
        .unwrap();
    let (_, rows) = simple(
        &other,
        &format!("SELECT usename, state FROM pg_stat_activity WHERE pid = {pid}"),
    )
    .await;
    assert_eq!(rows, vec![vec![Some("nyala".into()), Some("idle".into())]]);
    let slow = tokio::spawn(async move {
        let r = c
            .simple_query("SELECT count(*) FROM generate_series(1, 20000000000) a")
            .await;
        (c, r)
    });
    let mut found = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (_, rows) = simple(
            &other,
            &format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE pid = {pid} AND state = 'active' AND query LIKE '%generate_series%'"
            ),
        )
        .await;
        if rows == vec![vec![Some("t".into())]] {
            found = true;
            break;
        }
    }
    assert!(found, "the running query was not listed as active");
    let (c, r) = tokio::time::timeout(Duration::from_secs(20), slow)
        .await
        .expect("terminated in time")
        .unwrap();
    assert_eq!(code(&r.unwrap_err()), SqlState::QUERY_CANCELED);
    let (_, rows) = simple(&c, "SELECT 1").await;
    assert_eq!(rows, vec![vec![Some("1".into())]]);

    // Garbage on a socket closes that connection only.
    let mut raw = std::net::TcpStream::connect(server.pg).unwrap();
    raw.write_all(&[0, 0, 0, 8, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3])
        .unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut sink = Vec::new();
    let _ = raw.read_to_end(&mut sink);
    // A client that hangs up mid-message, too.
    let mut raw = std::net::TcpStream::connect(server.pg).unwrap();
    raw.write_all(&[0, 0, 0, 40, 0, 3]).unwrap();
    drop(raw);

    // Hundreds of idle connections at once, each a task (not a thread).
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(
            connect(&server, "user=nyala password=s3cret")
                .await
                .unwrap(),
        );
    }
    let (_, rows) = simple(&idle[299], "SELECT 7").await;
    assert_eq!(rows, vec![vec![Some("7".into())]]);
    drop(idle);
    let (_, rows) = simple(&c, "SELECT 8").await;
    assert_eq!(rows, vec![vec![Some("8".into())]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out() {
    use futures::{SinkExt, TryStreamExt};

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let c = connect(&server, "user=nyala").await.unwrap();
    simple(
        &c,
        "CREATE TABLE t (k INT PRIMARY KEY, name TEXT, ts TIMESTAMP, raw BYTEA, speed REAL)",
    )
    .await;

    // Text format, in pieces that split rows; 20,000 rows (several chunks).
    let sink = c
        .copy_in("COPY t (k, name, ts, raw) FROM STDIN")
        .await
        .unwrap();
    futures::pin_mut!(sink);
    let mut data = String::new();
    for k in 0..20_000 {
        data.push_str(&format!(
            "{k}\tn\\t{k}\t2026-11-15 08:00:00\t\\\\x0{}\n",
            k % 10
        ));
    }
    data.push_str("20000\t\\N\t\\N\t\\N\n");
    for piece in data.as_bytes().chunks(7777) {
        sink.send(bytes::Bytes::copy_from_slice(piece))
            .await
            .unwrap();
    }
    assert_eq!(sink.finish().await.unwrap(), 20_001);
    let (_, rows) = simple(&c, "SELECT count(*), count(name), max(k) FROM t").await;
    assert_eq!(
        rows,
        vec![vec![
            Some("20001".into()),
            Some("20000".into()),
            Some("20000".into())
        ]]
    );
    let row = c
        .query_one("SELECT name, raw FROM t WHERE k = 7", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "n\t7");
    assert_eq!(row.get::<_, Vec<u8>>(1), vec![7]);

    // CSV with a header, quotes and NULLs.
    let sink = c
        .copy_in("COPY t (k, name, speed) FROM STDIN WITH (FORMAT csv, HEADER)")
        .await
        .unwrap();
    futures::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(
        b"k,name,speed\n30000,\"a, \"\"quoted\"\"\nname\",1.5\n30001,,\n",
    ))
    .await
    .unwrap();
    assert_eq!(sink.finish().await.unwrap(), 2);
    let row = c
        .query_one("SELECT name, speed FROM t WHERE k = 30000", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "a, \"quoted\"\nname");
    let row = c
        .query_one("SELECT name FROM t WHERE k = 30001", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<String>>(0), None);

    // All or nothing: a duplicate key, or a value that does not read, keeps no row of it.
    for (bad, state) in [
        ("40000\tx\n1\ty\n", SqlState::UNIQUE_VIOLATION),
        (
            "40000\tx\nnot-a-number\ty\n",
            SqlState::INVALID_TEXT_REPRESENTATION,
        ),
    ] {
        let sink = c.copy_in("COPY t (k, name) FROM STDIN").await.unwrap();
        futures::pin_mut!(sink);
        sink.send(bytes::Bytes::from(bad)).await.unwrap();
        let e = sink.finish().await.unwrap_err();
        assert_eq!(code(&e), state, "{e:?}");
        let (_, rows) = simple(&c, "SELECT count(*) FROM t WHERE k = 40000").await;
        assert_eq!(rows, vec![vec![Some("0".into())]]);
    }
    // Files are the client's business.
    let e = c
        .simple_query("COPY t FROM '/etc/passwd'")
        .await
        .unwrap_err();
    assert_eq!(code(&e), SqlState::FEATURE_NOT_SUPPORTED);

    // Out, as text and as CSV.
    let out: Vec<bytes::Bytes> = c
        .copy_out("COPY (SELECT k, name FROM t WHERE k IN (7, 20000) ORDER BY k) TO STDOUT")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(out.concat(), b"7\tn\\t7\n20000\t\\N\n");
    let out: Vec<bytes::Bytes> = c
        .copy_out(
            "COPY (SELECT k, name FROM t WHERE k = 30000) TO STDOUT WITH (FORMAT csv, HEADER)",
        )
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(out.concat(), b"k,name\n30000,\"a, \"\"quoted\"\"\nname\"\n");
    let (tags, _) = simple(&c, "SELECT 1").await;
    assert_eq!(tags, vec![1]);
}

/// Upserts inside a transaction block are written at COMMIT (as PostgreSQL makes them visible
/// to others then); outside one, each Sync ends the implicit transaction and writes them; the
/// session always sees its own; a COMMIT that was answered survives `kill -9`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upserts_are_written_at_commit_and_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (a, b) = (
        connect(&server, "user=a").await.unwrap(),
        connect(&server, "user=b").await.unwrap(),
    );
    a.batch_execute("CREATE TABLE t (k INT PRIMARY KEY, x INT, y REAL)")
        .await
        .unwrap();
    async fn rows(c: &Client) -> i64 {
        c.query_one("SELECT count(*) FROM t", &[])
            .await
            .unwrap()
            .get(0)
    }
    let upsert = a
        .prepare(
            "INSERT INTO t (k, x, y) VALUES ($1, $2, $3) \
             ON CONFLICT (k) DO UPDATE SET y = EXCLUDED.y",
        )
        .await
        .unwrap();
    a.batch_execute("BEGIN").await.unwrap();
    for k in 0..100i32 {
        let n = a.execute(&upsert, &[&k, &k, &(k as f32)]).await.unwrap();
        assert_eq!(n, 1);
    }
    assert_eq!(rows(&b).await, 0, "not committed yet");
    a.execute(&upsert, &[&5i32, &-1i32, &0.5f32]).await.unwrap();
    assert_eq!(rows(&a).await, 100, "the session sees its own writes");
    a.execute(&upsert, &[&100i32, &100i32, &100f32])
        .await
        .unwrap();
    a.batch_execute("COMMIT").await.unwrap();
    assert_eq!(rows(&b).await, 101);
    let row = b
        .query_one("SELECT x, y FROM t WHERE k = 5", &[])
        .await
        .unwrap();
    assert_eq!((row.get::<_, i32>(0), row.get::<_, f32>(1)), (5, 0.5));
    // Autocommit: each Execute's Sync ends the implicit transaction.
    a.execute(&upsert, &[&200i32, &200i32, &1f32])
        .await
        .unwrap();
    assert_eq!(rows(&b).await, 102);
    // Simple queries too, at the end of the query string.
    a.batch_execute("UPSERT INTO t VALUES (300, 300, 3); UPSERT INTO t VALUES (301, 301, 3)")
        .await
        .unwrap();
    assert_eq!(rows(&b).await, 104);
    a.batch_execute("BEGIN").await.unwrap();
    a.execute(&upsert, &[&400i32, &400i32, &4f32])
        .await
        .unwrap();
    a.batch_execute("COMMIT").await.unwrap();
    // Killed right after COMMIT was answered.
    drop((a, b));
    assert_eq!(server.stop("-9"), None);
    let server = Server::start(dir.path());
    let c = connect(&server, "user=c").await.unwrap();
    assert_eq!(rows(&c).await, 105);
    let y: f32 = c
        .query_one("SELECT y FROM t WHERE k = 400", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(y, 4.0);
}
