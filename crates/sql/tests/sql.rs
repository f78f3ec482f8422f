//! SQL over the database: DDL, INSERT, queries with pushdown, errors, restart.

use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int64Type};
use arrow::util::pretty::pretty_format_batches;
use nyala_sql::{Engine, SqlError};
use nyala_storage::{Database, DatabaseOptions, RowErrorKind, StorageError};

fn open(dir: &std::path::Path) -> Engine {
    Engine::new(Arc::new(
        Database::open(dir, DatabaseOptions::default()).unwrap(),
    ))
}

async fn run(e: &Engine, sql: &str) -> Vec<RecordBatch> {
    e.execute(sql)
        .await
        .unwrap_or_else(|err| panic!("{sql}: {err}"))
}

fn text(batches: &[RecordBatch]) -> String {
    pretty_format_batches(batches).unwrap().to_string()
}

const CREATE: &str = "CREATE TABLE traffic (
    uid INT, lane SMALLINT, ts TIMESTAMP, speed DOUBLE PRECISION, note TEXT,
    PRIMARY KEY (uid, lane, ts))";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_insert_query_drop() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    run(&e, CREATE).await;
    let out = run(
        &e,
        "INSERT INTO traffic VALUES
            (1, 1, '2024-05-01 10:00:00', 50.0, 'a'),
            (1, 1, '2024-05-01 10:30:00', 70.0, NULL),
            (1, 2, '2024-05-01 11:15:00', 90.0, 'b'),
            (2, 1, '2024-05-01 10:05:00', 30.0, 'c')",
    )
    .await;
    assert_eq!(
        out[0]
            .column(0)
            .as_primitive::<arrow::datatypes::UInt64Type>()
            .value(0),
        4
    );
    // A write is visible to the very next query.
    let hourly = run(
        &e,
        "SELECT date_trunc('hour', ts) AS hr, avg(speed) AS avg_speed, count(*) AS n
         FROM traffic GROUP BY 1 ORDER BY 1",
    )
    .await;
    assert_eq!(
        text(&hourly),
        "+---------------------+-----------+---+
| hr                  | avg_speed | n |
+---------------------+-----------+---+
| 2024-05-01T10:00:00 | 50.0      | 3 |
| 2024-05-01T11:00:00 | 90.0      | 1 |
+---------------------+-----------+---+"
    );
    // Filters, projections and NULLs.
    let rows = run(
        &e,
        "SELECT uid, note FROM traffic WHERE speed > 40 AND note IS NOT NULL ORDER BY uid, lane",
    )
    .await;
    assert_eq!(
        text(&rows),
        "+-----+------+
| uid | note |
+-----+------+
| 1   | a    |
| 1   | b    |
+-----+------+"
    );
    // A key lookup is pushed down and pruned to one tablet.
    let plan = run(
        &e,
        "EXPLAIN SELECT * FROM traffic WHERE uid = 2 AND lane = 1 AND ts = '2024-05-01 10:05:00'",
    )
    .await;
    let plan = text(&plan);
    assert!(
        plan.contains("NyalaScanExec: table=public.traffic, tablets=1 of 2"),
        "{plan}"
    );
    assert!(plan.contains("uid = 2"), "{plan}");
    let one = run(
        &e,
        "SELECT speed FROM traffic WHERE uid = 2 AND lane = 1 AND ts = '2024-05-01 10:05:00'",
    )
    .await;
    assert_eq!(
        one[0].column(0).as_primitive::<Float64Type>().value(0),
        30.0
    );
    let n = run(&e, "SELECT count(*) FROM traffic WHERE uid IN (1, 3)").await;
    assert_eq!(n[0].column(0).as_primitive::<Int64Type>().value(0), 3);
    // The catalog is visible to information_schema.
    let tables = run(&e, "SELECT table_schema, table_name FROM information_schema.tables WHERE table_catalog = 'nyala' AND table_schema = 'public'").await;
    assert_eq!(
        text(&tables),
        "+--------------+------------+
| table_schema | table_name |
+--------------+------------+
| public       | traffic    |
+--------------+------------+"
    );
    run(&e, "DROP TABLE traffic").await;
    assert!(e.execute("SELECT * FROM traffic").await.is_err());
    run(&e, "DROP TABLE IF EXISTS traffic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    run(&e, CREATE).await;
    run(
        &e,
        "INSERT INTO traffic VALUES (1, 1, '2024-05-01 10:00:00', 50.0, 'a')",
    )
    .await;
    match e
        .execute("INSERT INTO traffic VALUES (1, 1, '2024-05-01 10:00:00', 60.0, 'b')")
        .await
    {
        Err(SqlError::Row(r)) => {
            assert_eq!(r.kind, RowErrorKind::DuplicateKey);
            assert!(r.message.contains("(uid, lane, ts)"), "{}", r.message);
        }
        other => panic!("expected a duplicate key error, got {other:?}"),
    }
    // As in PostgreSQL the statement is all or nothing: the new row before the duplicate is
    // not left behind.
    let err = e
        .execute("INSERT INTO traffic VALUES (5, 1, '2024-05-01 10:00:00', 1.0, 'new'), (1, 1, '2024-05-01 10:00:00', 60.0, 'dup')")
        .await
        .unwrap_err();
    assert_eq!(err.sqlstate(), "23505");
    let n = run(&e, "SELECT count(*) FROM traffic").await;
    assert_eq!(n[0].column(0).as_primitive::<Int64Type>().value(0), 1);
    assert!(matches!(
        e.execute(CREATE).await,
        Err(SqlError::Storage(StorageError::DuplicateTable(_)))
    ));
    run(
        &e,
        &CREATE.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS"),
    )
    .await;
    let no_key = e.execute("CREATE TABLE k (a INT)").await.unwrap_err();
    assert!(no_key.to_string().contains("primary key"), "{no_key}");
    let float_key = e
        .execute("CREATE TABLE k (a DOUBLE PRECISION PRIMARY KEY)")
        .await
        .unwrap_err();
    assert!(
        float_key.to_string().contains("floating point"),
        "{float_key}"
    );
    let unknown = e.execute("SELECT * FROM nope").await.unwrap_err();
    assert!(unknown.to_string().contains("nope"), "{unknown}");
    let column = e.execute("SELECT nope FROM traffic").await.unwrap_err();
    assert!(column.to_string().contains("nope"), "{column}");
    let syntax = e.execute("SELEC 1").await.unwrap_err();
    assert!(
        syntax.to_string().to_lowercase().contains("sql"),
        "{syntax}"
    );
    let null_key = e
        .execute("INSERT INTO traffic VALUES (NULL, 1, '2024-05-01 10:00:00', 1.0, 'x')")
        .await
        .unwrap_err();
    assert!(null_key.to_string().contains("uid"), "{null_key}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let e = open(dir.path());
        run(&e, CREATE).await;
        run(&e, "INSERT INTO traffic SELECT v % 10, 1, to_timestamp(v * 60), v * 1.5, NULL FROM generate_series(1, 1000) AS t(v)").await;
    }
    let e = open(dir.path());
    let out = run(
        &e,
        "SELECT count(*), sum(speed), count(DISTINCT uid) FROM traffic",
    )
    .await;
    let b = &out[0];
    assert_eq!(b.column(0).as_primitive::<Int64Type>().value(0), 1000);
    assert_eq!(
        b.column(1).as_primitive::<Float64Type>().value(0),
        1.5 * 500_500.0
    );
    assert_eq!(b.column(2).as_primitive::<Int64Type>().value(0), 10);
    assert!(b.column(0).null_count() == 0);
}

async fn all_kv(e: &Engine) -> String {
    text(&run(e, "SELECT id, v, n FROM kv ORDER BY id").await)
}

fn count(b: &[RecordBatch]) -> u64 {
    b[0].column(0)
        .as_primitive::<arrow::datatypes::UInt64Type>()
        .value(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upsert_on_conflict_update_delete() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    run(
        &e,
        "CREATE TABLE kv (id BIGINT PRIMARY KEY, v TEXT, n INT NOT NULL DEFAULT 7)",
    )
    .await;
    run(
        &e,
        "INSERT INTO kv (id, v) VALUES (1, 'a'), (2, 'b'), (3, 'c')",
    )
    .await;
    assert_eq!(
        all_kv(&e).await,
        "+----+---+---+
| id | v | n |
+----+---+---+
| 1  | a | 7 |
| 2  | b | 7 |
| 3  | c | 7 |
+----+---+---+"
    );
    // UPSERT (Impala/Kudu): insert or replace the row.
    assert_eq!(
        count(&run(&e, "upsert into kv values (3, 'C', 30), (4, 'd', 40)").await),
        2
    );
    // ON CONFLICT DO NOTHING skips existing keys.
    assert_eq!(
        count(
            &run(
                &e,
                "INSERT INTO kv VALUES (1, 'x', 0), (5, 'e', 50) ON CONFLICT (id) DO NOTHING"
            )
            .await
        ),
        1
    );
    // ON CONFLICT DO UPDATE changes only the SET columns of existing rows.
    assert_eq!(
        count(&run(&e, "INSERT INTO kv VALUES (2, 'B', 0), (6, 'f', 60) ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v").await),
        2
    );
    // UPDATE with expressions and a WHERE clause; DELETE.
    assert_eq!(
        count(&run(&e, "UPDATE kv SET N = n + 1, v = upper(v) WHERE id >= 5").await),
        2
    );
    assert_eq!(
        count(&run(&e, "DELETE FROM kv WHERE v = 'a' OR id = 4").await),
        2
    );
    assert_eq!(
        all_kv(&e).await,
        "+----+---+----+
| id | v | n  |
+----+---+----+
| 2  | B | 7  |
| 3  | C | 30 |
| 5  | E | 51 |
| 6  | F | 61 |
+----+---+----+"
    );
    let err = e
        .execute("UPDATE kv SET id = 9 WHERE id = 2")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot be updated"), "{err}");
    // A SET value other than EXCLUDED's: computed from the rows.
    let sql = "INSERT INTO kv VALUES (2, 'x', 1) ON CONFLICT (id) DO UPDATE SET v = 'constant'";
    assert_eq!(count(&run(&e, sql).await), 1);
    assert_eq!(
        text(&run(&e, "SELECT v FROM kv WHERE id = 2").await),
        text(&run(&e, "SELECT 'constant' AS v").await)
    );
    let err = e
        .execute("INSERT INTO kv VALUES (7, 'x', 1), (7, 'y', 2) ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v")
        .await
        .unwrap_err();
    assert_eq!(err.sqlstate(), "21000", "{err}");
    let err = e
        .execute("INSERT INTO kv VALUES (2, 'x', 1) ON CONFLICT (v) DO NOTHING")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("primary key"), "{err}");
    assert_eq!(count(&run(&e, "DELETE FROM kv").await), 4);
    let left = run(&e, "SELECT count(*) FROM kv").await;
    assert_eq!(left[0].column(0).as_primitive::<Int64Type>().value(0), 0);
}

/// Sessions adding to one counter with a computed upsert, and sessions updating and
/// deleting it alongside, lose no addition: such statements take turns per table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_computed_upserts_and_updates_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Database::open(dir.path(), DatabaseOptions::default()).unwrap());
    let setup = Engine::new(db.clone());
    run(
        &setup,
        "CREATE TABLE hits (k INT PRIMARY KEY, n BIGINT NOT NULL)",
    )
    .await;
    let mut sessions = Vec::new();
    for s in 0..4 {
        let e = Engine::new(db.clone());
        sessions.push(tokio::spawn(async move {
            let mut counted = 0;
            for _ in 0..50 {
                let sql = match s {
                    // Sessions 0 and 1 upsert row 1, session 2 updates it, session 3
                    // upserts row 2 and deletes it again.
                    0 | 1 => "INSERT INTO hits VALUES (1, 1) ON CONFLICT (k) DO UPDATE SET n = hits.n + 1",
                    2 => "UPDATE hits SET n = n + 1 WHERE k = 1",
                    _ => "INSERT INTO hits VALUES (2, 1) ON CONFLICT (k) DO UPDATE SET n = hits.n + 1",
                };
                counted += count(&run(&e, sql).await);
                if s == 3 {
                    run(&e, "DELETE FROM hits WHERE k = 2").await;
                }
            }
            counted
        }));
    }
    let mut counted = Vec::new();
    for s in sessions {
        counted.push(s.await.unwrap());
    }
    // Every upsert inserted or updated its row; the updates counted what they found.
    assert_eq!(counted[0], 50);
    assert_eq!(counted[1], 50);
    assert_eq!(counted[3], 50);
    let n = run(&setup, "SELECT n FROM hits WHERE k = 1").await;
    let n = n[0].column(0).as_primitive::<Int64Type>().value(0);
    assert_eq!(n, 100 + counted[2] as i64, "{counted:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alter_table_describe_and_show() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    run(&e, "CREATE TABLE kv (id BIGINT PRIMARY KEY, v TEXT)").await;
    run(&e, "INSERT INTO kv VALUES (1, 'a')").await;
    run(&e, "ALTER TABLE kv ADD COLUMN n INT NOT NULL DEFAULT 5").await;
    run(&e, "ALTER TABLE kv ADD COLUMN IF NOT EXISTS n INT").await;
    run(&e, "ALTER TABLE kv RENAME COLUMN v TO label").await;
    run(&e, "INSERT INTO kv (id, label) VALUES (2, 'b')").await;
    run(&e, "ALTER TABLE kv DROP COLUMN label").await;
    run(&e, "ALTER TABLE kv RENAME TO pairs").await;
    assert_eq!(
        text(&run(&e, "SELECT * FROM pairs ORDER BY id").await),
        "+----+---+
| id | n |
+----+---+
| 1  | 5 |
| 2  | 5 |
+----+---+"
    );
    let err = e
        .execute("ALTER TABLE pairs DROP COLUMN id")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("primary key"), "{err}");
    let err = e
        .execute("ALTER TABLE nope ADD COLUMN x INT")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    run(&e, "ALTER TABLE IF EXISTS nope ADD COLUMN x INT").await;
    let described = text(&run(&e, "DESCRIBE pairs").await);
    assert!(
        described.contains("| id ") && described.contains("| n "),
        "{described}"
    );
    let tables = text(&run(&e, "SHOW TABLES").await);
    assert!(tables.contains("pairs"), "{tables}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kudu_partition_clauses() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    run(
        &e,
        "CREATE TABLE readings (uid INT, ts TIMESTAMP, speed REAL, PRIMARY KEY (uid, ts))
         PARTITION BY HASH (uid) PARTITIONS 3,
         RANGE (ts) (PARTITION '2024-05-01' <= VALUES < '2024-05-02',
                     PARTITION '2024-05-02' <= VALUES < '2024-05-03')",
    )
    .await;
    run(&e, "INSERT INTO readings VALUES (1, '2024-05-01 10:00:00', 50), (2, '2024-05-02 10:00:00', 60)").await;
    // A key outside every range partition fails the INSERT, naming the value.
    let err = e
        .execute("INSERT INTO readings VALUES (3, '2024-05-07 10:00:00', 70)")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no range partition"), "{err}");
    run(
        &e,
        "ALTER TABLE readings ADD RANGE PARTITION '2024-05-07' <= VALUES < '2024-05-08'",
    )
    .await;
    run(
        &e,
        "INSERT INTO readings VALUES (3, '2024-05-07 10:00:00', 70)",
    )
    .await;
    let plan = text(
        &run(
            &e,
            "EXPLAIN SELECT * FROM readings WHERE uid = 1 AND ts < '2024-05-02'",
        )
        .await,
    );
    assert!(plan.contains("tablets=1 of 9"), "{plan}");
    // Dropping a range partition drops its rows (retention).
    run(
        &e,
        "ALTER TABLE readings DROP RANGE PARTITION '2024-05-01' <= VALUES < '2024-05-02'",
    )
    .await;
    let n = run(&e, "SELECT count(*) FROM readings").await;
    assert_eq!(n[0].column(0).as_primitive::<Int64Type>().value(0), 2);
    let err = e
        .execute("CREATE TABLE bad (a INT PRIMARY KEY) PARTITION BY HASH (a) PARTITIONS 0")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("partitions"), "{err}");
    let err = e
        .execute("CREATE TABLE bad (a INT PRIMARY KEY) PARTITION BY RANGE (a) (PARTITION 0 <= VALUES < 10, PARTITION 5 <= VALUES < 20)")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("overlaps"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_carry_postgresql_sqlstates() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    run(
        &e,
        "CREATE TABLE kv (id BIGINT PRIMARY KEY, v TEXT NOT NULL)",
    )
    .await;
    run(&e, "INSERT INTO kv VALUES (1, 'a')").await;
    let state = |sql: &'static str| {
        let e = &e;
        async move { e.execute(sql).await.unwrap_err().sqlstate() }
    };
    assert_eq!(state("INSERT INTO kv VALUES (1, 'b')").await, "23505");
    assert_eq!(state("SELECT * FROM missing").await, "42P01");
    assert_eq!(state("SELECT nope FROM kv").await, "42703");
    assert_eq!(state("SELEC 1").await, "42601");
    assert_eq!(state("CREATE TABLE kv (id INT PRIMARY KEY)").await, "42P07");
    assert_eq!(state("INSERT INTO kv VALUES (2, NULL)").await, "23502");
    assert_eq!(state("UPDATE kv SET id = 3").await, "0A000");
    // Messages say the problem without DataFusion's framing (`SQL error: ParserError(...)`,
    // `Error during planning: `, `Arrow error: `); the SQLSTATE tells the kind.
    let message = |sql: &'static str| {
        let e = &e;
        async move { e.execute(sql).await.unwrap_err().to_string() }
    };
    assert_eq!(
        message("SELEC 1").await,
        "syntax error: Expected: an SQL statement, found: SELEC at Line: 1, Column: 1"
    );
    assert_eq!(
        message("SELECT * FROM missing").await,
        "table 'nyala.public.missing' not found"
    );
    assert_eq!(message("SELECT id / 0 FROM kv").await, "division by zero");
    assert_eq!(state("SELECT id / 0 FROM kv").await, "22012");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_table_as_select() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    run(&e, CREATE).await;
    run(&e, "INSERT INTO traffic SELECT v % 3, 1, to_timestamp(v * 600), v * 1.0, NULL FROM generate_series(1, 30) AS t(v)").await;
    let out = run(
        &e,
        "CREATE TABLE hourly (uid INT, hr TIMESTAMP, avg_speed DOUBLE, PRIMARY KEY (uid, hr)) AS
         SELECT uid, date_trunc('hour', ts), avg(speed) FROM traffic GROUP BY 1, 2",
    )
    .await;
    let n = out[0]
        .column(0)
        .as_primitive::<arrow::datatypes::UInt64Type>()
        .value(0);
    assert!(n > 0);
    let back = run(&e, "SELECT count(*), sum(avg_speed) FROM hourly").await;
    assert_eq!(
        back[0].column(0).as_primitive::<Int64Type>().value(0) as u64,
        n
    );
    let err = e
        .execute("CREATE TABLE nokey AS SELECT 1 AS a")
        .await
        .unwrap_err();
    assert_eq!(err.sqlstate(), "42P16", "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_time_functions() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    // 2024-05-05 is a Sunday: dow 0, isodow 7.
    let out = run(
        &e,
        "SELECT CAST(extract(dow FROM t) AS INT) AS dow, CAST(extract(isodow FROM t) AS INT) AS isodow,
                CAST(extract(hour FROM t) AS INT) AS h, CAST(extract(epoch FROM t) AS BIGINT) AS epoch,
                CAST(date_trunc('HOUR', t) AS VARCHAR) AS hr,
                CAST(to_timestamp('2024-05-05 10:30:00.123456', 'YYYY-MM-DD HH24:MI:SS.US') AS VARCHAR) AS parsed,
                CAST(to_date('05.05.2024', 'DD.MM.YYYY') AS VARCHAR) AS d,
                CAST(to_timestamp(1714905000.5) AS VARCHAR) AS from_double,
                CAST(from_unixtime(1714905000) AS VARCHAR) AS from_unix,
                unix_timestamp(t) AS unix
         FROM (SELECT TIMESTAMP '2024-05-05 10:30:00' AS t)",
    )
    .await;
    assert_eq!(
        text(&out),
        "+-----+--------+----+------------+---------------------+----------------------------+------------+-------------------------+---------------------+------------+
| dow | isodow | h  | epoch      | hr                  | parsed                     | d          | from_double             | from_unix           | unix       |
+-----+--------+----+------------+---------------------+----------------------------+------------+-------------------------+---------------------+------------+
| 0   | 7      | 10 | 1714905000 | 2024-05-05T10:00:00 | 2024-05-05T10:30:00.123456 | 2024-05-05 | 2024-05-05T10:30:00.500 | 2024-05-05T10:30:00 | 1714905000 |
+-----+--------+----+------------+---------------------+----------------------------+------------+-------------------------+---------------------+------------+"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_arithmetic_and_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    let out = run(
        &e,
        "SELECT CAST(timestamp 'epoch' + v * interval '1 second' AS VARCHAR) AS a,
                CAST(TIMESTAMP '2024-01-01' + interval '15' minute * v AS VARCHAR) AS b
         FROM generate_series(1, 2) AS t(v) ORDER BY v",
    )
    .await;
    assert_eq!(
        text(&out),
        "+---------------------+---------------------+
| a                   | b                   |
+---------------------+---------------------+
| 1970-01-01T00:00:01 | 2024-01-01T00:15:00 |
| 1970-01-01T00:00:02 | 2024-01-01T00:30:00 |
+---------------------+---------------------+"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_input_is_handled() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    // Multibyte characters where the UPSERT check looks (a comment): no panic.
    run(&e, "-- Zoé\nSELECT 1").await;
    run(&e, "-- 😀\nSELECT 1").await;
    // Capitalised key names work in DELETE and UPDATE.
    run(&e, "CREATE TABLE m (\"Id\" INT PRIMARY KEY, v INT)").await;
    run(&e, "INSERT INTO m VALUES (1, 1), (2, 2)").await;
    assert_eq!(
        count(&run(&e, "UPDATE m SET v = 5 WHERE \"Id\" = 2").await),
        1
    );
    assert_eq!(count(&run(&e, "DELETE FROM m WHERE v = 1").await), 1);
    let left = text(&run(&e, "SELECT * FROM m").await);
    assert!(left.contains("| 2  | 5 |"), "{left}");
    // INSERT OVERWRITE would silently append: refused.
    let err = e
        .execute("INSERT OVERWRITE m SELECT * FROM m")
        .await
        .unwrap_err();
    assert_eq!(err.sqlstate(), "0A000", "{err}");
    // A default that does not fit its type is an error, not NULL.
    let err = e
        .execute("CREATE TABLE d (id INT PRIMARY KEY, v SMALLINT DEFAULT 100000)")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("default"), "{err}");
    // Trailing statements after a partition clause are not dropped silently.
    let err = e
        .execute(
            "CREATE TABLE p (id INT PRIMARY KEY) PARTITION BY HASH (id) PARTITIONS 2; DROP TABLE m",
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("one statement"), "{err}");
    // An unterminated string is a syntax error.
    assert_eq!(
        e.execute("SELECT 'abc").await.unwrap_err().sqlstate(),
        "42601"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recursive_queries_rescan_tables() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    run(&e, "CREATE TABLE tree (id INT PRIMARY KEY, parent INT)").await;
    run(
        &e,
        "INSERT INTO tree VALUES (1, NULL), (2, 1), (3, 2), (4, 3), (5, 1)",
    )
    .await;
    let out = run(
        &e,
        "WITH RECURSIVE r AS (SELECT id FROM tree WHERE id = 1
             UNION ALL SELECT tree.id FROM tree JOIN r ON tree.parent = r.id)
         SELECT count(*) FROM r",
    )
    .await;
    assert_eq!(out[0].column(0).as_primitive::<Int64Type>().value(0), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sql_type_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    run(
        &e,
        "CREATE TABLE ty (id INT PRIMARY KEY, a STRING, b BYTEA, c BINARY, d VARCHAR(5), e REAL,
            f DOUBLE PRECISION, g TIMESTAMPTZ, h DECIMAL(10, 2), i TINYINT, j BOOLEAN, k DATE,
            l SMALLINT, m BIGINT, n FLOAT8, o TIMESTAMP)",
    )
    .await;
    run(
        &e,
        "INSERT INTO ty VALUES (1, 'x', 'ab', 'cd', 'hello', 1.5, 2.5, '2024-01-01 00:00:00+02',
            12.34, 7, true, '2024-01-02', -3, 9000000000, 4.5, '2024-01-01 10:00:00')",
    )
    .await;
    assert_eq!(
        text(&run(&e, "SELECT * FROM ty").await),
        "+----+---+------+------+-------+-----+-----+---------------------+-------+---+------+------------+----+------------+-----+---------------------+
| id | a | b    | c    | d     | e   | f   | g                   | h     | i | j    | k          | l  | m          | n   | o                   |
+----+---+------+------+-------+-----+-----+---------------------+-------+---+------+------------+----+------------+-----+---------------------+
| 1  | x | 6162 | 6364 | hello | 1.5 | 2.5 | 2023-12-31T22:00:00 | 12.34 | 7 | true | 2024-01-02 | -3 | 9000000000 | 4.5 | 2024-01-01T10:00:00 |
+----+---+------+------+-------+-----+-----+---------------------+-------+---+------+------------+----+------------+-----+---------------------+"
    );
    let err = e
        .execute("CREATE TABLE u (id INT PRIMARY KEY, x INT UNSIGNED)")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("x"), "{err}");
}

/// A lookup by full key takes the fast path; its answer (rows, column names and types) must be
/// the planned path's. `AND true` makes the same query go the planned way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn point_lookups_answer_as_planned_queries_do() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    run(
        &e,
        "CREATE TABLE k (id INT, lane SMALLINT, ts TIMESTAMP, name TEXT, d DATE, v REAL, b BYTEA,
         PRIMARY KEY (id, lane, ts, name)) PARTITION BY HASH (id, name) PARTITIONS 3",
    )
    .await;
    run(
        &e,
        "INSERT INTO k VALUES
            (1, -2, '2024-05-01 10:00:00', 'Ä b', '2024-05-01', 1.5, 'x'),
            (1, 3, '2024-05-01 10:00:00.25', 'a', NULL, NULL, NULL),
            (-7, 0, '1969-12-31 23:59:59', '', '1900-01-01', -0.0, ''),
            (2147483647, 32767, '2024-05-01T10:00:00', 'it''s', '2024-05-01', 3, 'y')",
    )
    .await;
    let queries = [
        "SELECT * FROM k WHERE id = 1 AND lane = -2 AND ts = '2024-05-01 10:00:00' AND name = 'Ä b'",
        "SELECT * FROM k WHERE name = 'a' AND ts = '2024-05-01 10:00:00.25' AND lane = 3 AND id = 1",
        "SELECT v, id FROM k WHERE (id = -7 AND lane = 0) AND ts = '1969-12-31 23:59:59' AND name = ''",
        "SELECT x.v AS speed, x.d FROM k x WHERE x.id = 2147483647 AND 32767 = x.lane AND x.ts = TIMESTAMP '2024-05-01 10:00:00' AND x.name = 'it''s'",
        "SELECT k.b FROM k WHERE k.id = 1 AND k.lane = 3 AND k.ts = '2024-05-01T10:00:00.250' AND k.name = 'a'",
        // No such row (and a value the column cannot hold, which must not error).
        "SELECT * FROM k WHERE id = 1 AND lane = 3 AND ts = '2024-05-01 10:00:00' AND name = 'a'",
        "SELECT * FROM k WHERE id = 1 AND lane = 99999 AND ts = '2024-05-01 10:00:00' AND name = 'a'",
        // Not every key column pinned, or something else in the WHERE: planned.
        "SELECT id FROM k WHERE id = 1 AND lane = 3 AND ts = '2024-05-01 10:00:00.25'",
        "SELECT id FROM k WHERE id = 1 AND lane = 3 AND ts = '2024-05-01 10:00:00.25' AND name = 'a' AND v IS NULL",
    ];
    let rows = |b: &[RecordBatch]| -> (String, Option<arrow::datatypes::SchemaRef>) {
        let nonempty: Vec<RecordBatch> = b.iter().filter(|b| b.num_rows() > 0).cloned().collect();
        let schema = nonempty.first().map(|b| b.schema());
        (text(&nonempty), schema)
    };
    let mut found = 0;
    for q in queries {
        let fast = rows(&run(&e, q).await);
        let planned = rows(&run(&e, &format!("{q} AND true")).await);
        assert_eq!(fast, planned, "{q}");
        found += usize::from(fast.1.is_some());
    }
    assert_eq!(found, 7);
    // The fast path sees the latest write, and a dropped table is gone.
    run(&e, "UPDATE k SET v = 9 WHERE id = 1 AND lane = 3").await;
    let v = run(
        &e,
        "SELECT v FROM k WHERE id = 1 AND lane = 3 AND ts = '2024-05-01 10:00:00.25' AND name = 'a'",
    )
    .await;
    assert_eq!(rows(&v).0, "+-----+\n| v   |\n+-----+\n| 9.0 |\n+-----+");
    run(&e, "DROP TABLE k").await;
    let err = e
        .execute("SELECT * FROM k WHERE id = 1 AND lane = 3 AND ts = '2024-05-01' AND name = 'a'")
        .await
        .unwrap_err();
    assert_eq!(err.sqlstate(), "42P01", "{err}");
}

/// Tables report their row counts to the planner, so a join builds its hash table on the
/// small (dimension) side, whichever order the query names them in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_build_on_the_smaller_table() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    run(&e, "CREATE TABLE facts (uid INT PRIMARY KEY, v INT)").await;
    run(&e, "CREATE TABLE dims (uid INT PRIMARY KEY, road TEXT)").await;
    run(
        &e,
        "INSERT INTO facts SELECT v, v * 2 FROM generate_series(1, 20000) AS x(v)",
    )
    .await;
    run(&e, "INSERT INTO dims VALUES (1, 'a'), (2, 'b')").await;
    for q in [
        "EXPLAIN SELECT d.road, sum(f.v) FROM facts f JOIN dims d ON f.uid = d.uid GROUP BY d.road",
        "EXPLAIN SELECT d.road, sum(f.v) FROM dims d JOIN facts f ON f.uid = d.uid GROUP BY d.road",
    ] {
        let plan = text(&run(&e, q).await);
        let join = plan.find("HashJoinExec").expect("a hash join");
        let build = plan[join..].find("table=public.dims").unwrap();
        let probe = plan[join..].find("table=public.facts").unwrap();
        assert!(build < probe, "{plan}");
    }
}

/// A join with a dimension table on its key, grouped by dimension columns, groups the fact
/// rows by the join key first (eager aggregation); where that would change the answer or save
/// nothing, the plan is left alone. (`tests/sql/joins.slt` checks the answers.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregates_over_a_key_join_group_the_fact_rows_first() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    run(&e, "CREATE TABLE d (uid INT PRIMARY KEY, road TEXT)").await;
    run(&e, "CREATE TABLE f (v INT PRIMARY KEY, uid INT, y REAL)").await;
    run(&e, "INSERT INTO d VALUES (1, 'A'), (2, 'A'), (3, 'B')").await;
    run(
        &e,
        "INSERT INTO f SELECT v, v % 5, v * 0.5 FROM generate_series(1, 1000) AS t(v)",
    )
    .await;
    let plan = |q: &'static str| {
        let e = &e;
        async move { text(&run(e, &format!("EXPLAIN {q}")).await) }
    };
    let rewritten = |p: &str| p.contains("__nyala_early");
    for q in [
        "SELECT d.road, avg(f.y), count(*) FROM f JOIN d ON f.uid = d.uid GROUP BY d.road",
        "SELECT d.road, sum(f.v) FROM d JOIN f ON d.uid = f.uid GROUP BY d.road",
    ] {
        let p = plan(q).await;
        assert!(rewritten(&p), "{q}\n{p}");
    }
    for q in [
        // Outer join, global aggregate, DISTINCT, an aggregate reading the dimension side.
        "SELECT d.road, count(*) FROM f LEFT JOIN d ON f.uid = d.uid GROUP BY d.road",
        "SELECT count(*) FROM f JOIN d ON f.uid = d.uid",
        "SELECT d.road, count(DISTINCT f.v) FROM f JOIN d ON f.uid = d.uid GROUP BY d.road",
        "SELECT f.uid, max(d.road) FROM f JOIN d ON f.uid = d.uid GROUP BY f.uid",
        // Joined on a column that is not the dimension's key.
        "SELECT d.road, count(*) FROM f JOIN d ON f.uid = length(d.road) GROUP BY d.road",
        // Fact rows unique on the join column: nothing to shrink.
        "SELECT d.road, sum(f.y) FROM f JOIN d ON f.v = d.uid GROUP BY d.road",
    ] {
        let p = plan(q).await;
        assert!(!rewritten(&p), "{q}\n{p}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_describe_and_bind_parameters() {
    use arrow::datatypes::DataType;
    use datafusion::common::ScalarValue;
    use nyala_sql::{Command, Output};

    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    run(&e, CREATE).await;
    let insert = e
        .prepare("INSERT INTO traffic VALUES ($1, $2, $3, $4, $5)")
        .unwrap();
    assert_eq!(insert.param_count(), 5);
    let d = e.describe(&insert, None).await.unwrap();
    assert_eq!(
        d.params,
        vec![
            Some(DataType::Int32),
            Some(DataType::Int16),
            Some(DataType::Timestamp(
                arrow::datatypes::TimeUnit::Microsecond,
                None
            )),
            Some(DataType::Float64),
            Some(DataType::Utf8)
        ]
    );
    assert!(d.columns.is_none(), "an INSERT returns no rows");
    for lane in 1..=3i16 {
        let out = e
            .run(
                &insert,
                &[
                    ScalarValue::Int32(Some(7)),
                    ScalarValue::Int16(Some(lane)),
                    ScalarValue::Utf8(Some("2024-05-01 10:00:00".into())),
                    ScalarValue::Float64(Some(f64::from(lane) * 10.0)),
                    ScalarValue::Utf8(None),
                ],
            )
            .await
            .unwrap();
        assert!(matches!(
            out,
            Output::Affected {
                command: Command::Insert,
                rows: 1
            }
        ));
    }
    let lookup = e
        .prepare("SELECT speed, note FROM traffic WHERE uid = $1 AND lane = $2 AND ts = $3")
        .unwrap();
    let d = e.describe(&lookup, None).await.unwrap();
    let names: Vec<&str> = d
        .columns
        .as_ref()
        .unwrap()
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    assert_eq!(names, ["speed", "note"]);
    assert_eq!(d.params[1], Some(DataType::Int16));
    let Output::Rows(rows) = e
        .run(
            &lookup,
            &[
                ScalarValue::Int64(Some(7)),
                ScalarValue::Int64(Some(2)),
                ScalarValue::TimestampMicrosecond(Some(1_714_557_600_000_000), None),
            ],
        )
        .await
        .unwrap()
    else {
        panic!("rows")
    };
    assert_eq!(
        text(&rows),
        "+-------+------+\n| speed | note |\n+-------+------+\n| 20.0  |      |\n+-------+------+"
    );
    // Too few parameters: a clear error, nothing run.
    let err = e
        .run(&lookup, &[ScalarValue::Int64(Some(7))])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no parameter $2"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_queries_are_not_rewritten_for_catalog_clients() {
    // The PostgreSQL catalog rewrites (which may drop a select-list subquery) apply only to
    // statements that read pg_catalog: a user's correlated subquery keeps its values.
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    run(&e, "CREATE TABLE a (k INT PRIMARY KEY)").await;
    run(&e, "CREATE TABLE b (k INT, v INT, PRIMARY KEY (k, v))").await;
    // One constant insert (the fast path) and one planned one: the fast path did not exist
    // when the bug was seen.
    run(&e, "INSERT INTO a VALUES (1), (2)").await;
    run(
        &e,
        "INSERT INTO b SELECT * FROM (VALUES (1, 10), (1, 11), (2, 20))",
    )
    .await;
    let out = run(
        &e,
        "SELECT k, (SELECT max(v) FROM b WHERE b.k = a.k) AS top FROM a ORDER BY k",
    )
    .await;
    assert_eq!(
        text(&out),
        "+---+-----+\n| k | top |\n+---+-----+\n| 1 | 11  |\n| 2 | 20  |\n+---+-----+"
    );
}

/// INSERTs of constant rows skip the planner; they must end exactly as planned ones do: the
/// same rows, counts and errors. (A `WITH` in the source makes the same statement planned.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn constant_inserts_end_as_planned_inserts_do() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    for t in ["f", "p"] {
        run(
            &e,
            &format!(
                "CREATE TABLE {t} (id INT, ts TIMESTAMP, name TEXT NOT NULL DEFAULT 'n', v REAL,
                 w DOUBLE PRECISION, flag BOOLEAN, b BYTEA, d DATE, small SMALLINT,
                 PRIMARY KEY (id, ts)) PARTITION BY HASH (id) PARTITIONS 2"
            ),
        )
        .await;
    }
    let statements = [
        "INSERT INTO {t} VALUES
            (1, '2024-05-01 10:00:00', 'a', 1.5, -2, true, X'00ff', '2024-05-01', -3),
            (-2, TIMESTAMP '1969-12-31 23:59:59.5', '', -0.25, 1e3, NULL, NULL, DATE '1900-01-01', NULL)",
        "INSERT INTO {t} (ts, id, v) VALUES ('2024-05-01 11:00:00', 3, 7)",
        // Duplicates, inside the statement and with a stored row: nothing is written.
        "INSERT INTO {t} (id, ts) VALUES (4, '2024-05-01 00:00:00'), (4, '2024-05-01 00:00:00')",
        "INSERT INTO {t} (id, ts) VALUES (5, '2024-05-01 00:00:00'), (1, '2024-05-01 10:00:00')",
        // Values the columns cannot take.
        "INSERT INTO {t} (id, ts, small) VALUES (6, '2024-05-01 00:00:00', 40000)",
        "INSERT INTO {t} (id, ts, name) VALUES (6, '2024-05-01 00:00:00', NULL)",
        "INSERT INTO {t} (id, ts) VALUES (NULL, '2024-05-01 00:00:00')",
        "INSERT INTO {t} (id, ts, v) VALUES (6, '2024-05-01 00:00:00', 'x')",
        "INSERT INTO {t} (id, ts, nope) VALUES (6, '2024-05-01 00:00:00', 1)",
        // Conflicts.
        "INSERT INTO {t} (id, ts, v) VALUES (1, '2024-05-01 10:00:00', 9), (7, '2024-05-01 00:00:00', 9)
            ON CONFLICT DO NOTHING",
        "INSERT INTO {t} (id, ts, name, v) VALUES (1, '2024-05-01 10:00:00', 'z', 8)
            ON CONFLICT (id, ts) DO UPDATE SET v = EXCLUDED.v",
        "INSERT INTO {t} (id, ts, name, v) VALUES (8, '2024-05-01 10:00:00', 'z', 8)
            ON CONFLICT (id, ts) DO UPDATE SET v = EXCLUDED.v",
        "INSERT INTO {t} (id, ts, v) VALUES (3, '2024-05-01 11:00:00', 1), (3, '2024-05-01 11:00:00', 2)
            ON CONFLICT (id, ts) DO UPDATE SET v = EXCLUDED.v",
        "UPSERT INTO {t} (id, ts, name, w) VALUES (-2, '1969-12-31 23:59:59.5', 'u', 4), (9, '2024-05-01 00:00:00', 'u', 4)",
    ];
    for sql in statements {
        let fast = e.execute(&sql.replace("{t}", "f")).await;
        let planned_sql = sql.replacen(" VALUES", " WITH unused AS (SELECT 1) VALUES", 1);
        let planned = e.execute(&planned_sql.replace("{t}", "p")).await;
        match (fast, planned) {
            (Ok(f), Ok(p)) => assert_eq!(text(&f), text(&p), "{sql}"),
            (Err(f), Err(p)) => assert_eq!(f.sqlstate(), p.sqlstate(), "{sql}: {f} / {p}"),
            (f, p) => panic!("{sql}: fast {f:?}, planned {p:?}"),
        }
        let all = |t: &str| format!("SELECT * FROM {t} ORDER BY id, ts");
        assert_eq!(
            text(&run(&e, &all("f")).await),
            text(&run(&e, &all("p")).await),
            "{sql}"
        );
    }
    let n = run(&e, "SELECT count(*) FROM f").await;
    assert_eq!(rows_of(&n), 6);
}

/// A session's held-back upserts: invisible to other sessions until it syncs or runs another
/// statement, visible to itself, written in order (the last write of a key wins).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_back_upserts_are_written_at_the_sessions_next_sync_point() {
    use datafusion::common::ScalarValue;
    use nyala_sql::Output;

    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Database::open(dir.path(), DatabaseOptions::default()).unwrap());
    let (a, b) = (Engine::new(db.clone()), Engine::new(db));
    run(&a, "CREATE TABLE t (k INT PRIMARY KEY, x INT, y INT)").await;
    run(&a, "INSERT INTO t VALUES (1, 1, 1)").await;
    let upsert = a
        .prepare("INSERT INTO t VALUES ($1, $2, $3) ON CONFLICT (k) DO UPDATE SET y = EXCLUDED.y")
        .unwrap();
    let int = |v: i32| ScalarValue::Int32(Some(v));
    for row in [[1, 9, 10], [2, 2, 2], [1, 9, 11]] {
        let out = a.run_deferred(&upsert, &row.map(int)).await.unwrap();
        assert!(matches!(out, Output::Affected { rows: 1, .. }), "{out:?}");
    }
    assert!(a.holds_writes());
    let all = "SELECT * FROM t ORDER BY k";
    let before = "+---+---+---+\n| k | x | y |\n+---+---+---+\n| 1 | 1 | 1 |\n+---+---+---+";
    assert_eq!(text(&run(&b, all).await), before);
    a.sync_writes().await.unwrap();
    assert!(!a.holds_writes());
    let after = "+---+---+----+
| k | x | y  |
+---+---+----+
| 1 | 1 | 11 |
| 2 | 2 | 2  |
+---+---+----+";
    assert_eq!(text(&run(&b, all).await), after);
    // The session's next other statement writes them first, and sees them.
    a.run_deferred(&upsert, &[int(3), int(3), int(3)])
        .await
        .unwrap();
    assert_eq!(rows_of(&run(&b, "SELECT count(*) FROM t").await), 3 - 1);
    assert_eq!(rows_of(&run(&a, "SELECT count(*) FROM t").await), 3);
    assert_eq!(rows_of(&run(&b, "SELECT count(*) FROM t").await), 3);
    // A plain INSERT is never held back: its duplicate key fails the statement itself.
    let insert = a.prepare("INSERT INTO t VALUES ($1, $2, $3)").unwrap();
    a.run_deferred(&insert, &[int(4), int(4), int(4)])
        .await
        .unwrap();
    assert!(!a.holds_writes());
    let err = a
        .run_deferred(&insert, &[int(4), int(4), int(4)])
        .await
        .unwrap_err();
    assert_eq!(err.sqlstate(), "23505", "{err}");
    assert_eq!(rows_of(&run(&b, "SELECT count(*) FROM t").await), 4);
}

/// The value of a `SELECT count(*)`.
fn rows_of(b: &[RecordBatch]) -> i64 {
    b[0].column(0).as_primitive::<Int64Type>().value(0)
}

/// Prepared lookups and INSERTs run their fast paths with parameters read straight into key
/// values and rows; the answers must be those of the same statements planned with the
/// parameters bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_take_the_fast_paths_exactly_as_bound_literals_would() {
    use datafusion::common::ScalarValue as S;
    use nyala_sql::Output;

    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    for t in ["f", "p"] {
        run(
            &e,
            &format!(
                "CREATE TABLE {t} (id INT, ts TIMESTAMP, name TEXT NOT NULL, v REAL,
                 w DOUBLE PRECISION, flag BOOLEAN, b BYTEA, d DATE, small SMALLINT,
                 PRIMARY KEY (id, ts))"
            ),
        )
        .await;
    }
    let ts = |us: i64| S::TimestampMicrosecond(Some(us), None);
    let rows: Vec<Vec<S>> = vec![
        vec![
            S::Int64(Some(1)),
            ts(1_700_000_000_123_456),
            S::Utf8(Some("a".into())),
            S::Float64(Some(1.1)),
            S::Float32(Some(0.1)),
            S::Boolean(Some(true)),
            S::Binary(Some(vec![0, 255])),
            S::Date32(Some(19_000)),
            S::Int32(Some(-7)),
        ],
        vec![
            S::Int16(Some(2)),
            S::Utf8(Some("2024-05-01 10:00:00.25".into())),
            S::Utf8(Some("".into())),
            S::Int64(Some(3)),
            S::Int32(None),
            S::Boolean(None),
            S::Binary(None),
            S::Utf8(Some("2024-05-01".into())),
            S::Int64(None),
        ],
        // Not values of their columns as such: both ways fail alike.
        vec![
            S::Int32(Some(3)),
            ts(0),
            S::Utf8(None),
            S::Float64(None),
            S::Float64(None),
            S::Boolean(None),
            S::Binary(None),
            S::Date32(None),
            S::Int32(None),
        ],
        vec![
            S::Int32(Some(4)),
            ts(0),
            S::Utf8(Some("x".into())),
            S::Float64(None),
            S::Float64(None),
            S::Boolean(None),
            S::Binary(None),
            S::Date32(None),
            S::Int32(Some(40_000)),
        ],
    ];
    let values = "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
    let fast = e.prepare(&format!("INSERT INTO f {values}")).unwrap();
    let planned = e
        .prepare(&format!("INSERT INTO p WITH unused AS (SELECT 1) {values}"))
        .unwrap();
    for row in &rows {
        match (e.run(&fast, row).await, e.run(&planned, row).await) {
            (Ok(Output::Affected { rows: a, .. }), Ok(Output::Affected { rows: b, .. })) => {
                assert_eq!(a, b)
            }
            (Err(a), Err(b)) => assert_eq!(a.sqlstate(), b.sqlstate(), "{a} / {b}"),
            (a, b) => panic!("{row:?}: fast {a:?}, planned {b:?}"),
        }
    }
    let all = |t: &str| format!("SELECT * FROM {t} ORDER BY id");
    assert_eq!(
        text(&run(&e, &all("f")).await),
        text(&run(&e, &all("p")).await)
    );
    assert_eq!(rows_of(&run(&e, "SELECT count(*) FROM f").await), 2);

    let lookup = e
        .prepare("SELECT name, v, small FROM f WHERE id = $1 AND ts = $2")
        .unwrap();
    let planned = e
        .prepare("SELECT name, v, small FROM f WHERE id = $1 AND ts = $2 AND true")
        .unwrap();
    for key in [
        [S::Int32(Some(1)), ts(1_700_000_000_123_456)],
        [
            S::Int64(Some(2)),
            S::Utf8(Some("2024-05-01T10:00:00.250".into())),
        ],
        [S::Int64(Some(2)), ts(1_714_557_600_250_000)],
        [S::Int64(Some(2)), ts(0)],
        [S::Int64(Some(5_000_000_000)), ts(0)],
        [S::Int32(None), ts(0)],
        [S::Float64(Some(1.0)), ts(1_700_000_000_123_456)],
    ] {
        let answer = |o: Output| match o {
            Output::Rows(b) => text(&b),
            other => panic!("{other:?}"),
        };
        let f = answer(e.run(&lookup, &key).await.unwrap());
        let p = answer(e.run(&planned, &key).await.unwrap());
        assert_eq!(f, p, "{key:?}");
    }
}

/// Catalog queries as SQLAlchemy 2.1 writes them: a `LIKE` with its own escape character, a
/// column default looked up under a `CASE` with a condition on the outer row, an identity
/// lookup in `pg_sequence`, and `current_setting`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_queries_of_sqlalchemy_2_1() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    run(
        &e,
        "CREATE TABLE cat (id INT PRIMARY KEY, name TEXT NOT NULL DEFAULT 'n', v REAL)",
    )
    .await;
    // `/` escapes `_` and itself; everything else in the pattern is as written.
    let like = run(
        &e,
        "SELECT nspname, nspname LIKE 'pg/_%' ESCAPE '/' AS a, 'x/_y' LIKE 'x///_y' ESCAPE '/' AS b,
                'pg\\q' LIKE 'pg\\%' ESCAPE '/' AS c, 'pgxq' LIKE 'pg_q' ESCAPE '/' AS d,
                'a\\' LIKE 'a/\\' ESCAPE '/' AND 'a\\\\' NOT LIKE 'a/\\' ESCAPE '/'
                  AND 'a%' LIKE 'a!%' ESCAPE '!' AND 'ab' NOT LIKE 'a!%' ESCAPE '!'
                  AND 'a_' LIKE 'a[_' ESCAPE '[' AND 'ab' NOT LIKE 'a[_' ESCAPE '[' AS e
         FROM pg_catalog.pg_namespace WHERE nspname IN ('pg_catalog', 'public') ORDER BY 1",
    )
    .await;
    assert_eq!(
        text(&like),
        "+------------+-------+------+------+------+------+\n\
         | nspname    | a     | b    | c    | d    | e    |\n\
         +------------+-------+------+------+------+------+\n\
         | pg_catalog | true  | true | true | true | true |\n\
         | public     | false | true | true | true | true |\n\
         +------------+-------+------+------+------+------+"
    );
    let columns = run(
        &e,
        "SELECT pg_catalog.pg_attribute.attname AS name,
            CASE WHEN pg_catalog.pg_attribute.atthasdef THEN (SELECT pg_catalog.pg_get_expr(
                pg_catalog.pg_attrdef.adbin, pg_catalog.pg_attrdef.adrelid) AS pg_get_expr_1
              FROM pg_catalog.pg_attrdef WHERE pg_catalog.pg_attribute.atthasdef
                AND pg_catalog.pg_attrdef.adrelid = pg_catalog.pg_attribute.attrelid
                AND pg_catalog.pg_attrdef.adnum = pg_catalog.pg_attribute.attnum)
            ELSE NULL END AS \"default\",
            CASE WHEN (pg_catalog.pg_attribute.attidentity != '') THEN (SELECT json_build_object(
                'always', pg_catalog.pg_attribute.attidentity = 'a', 'start',
                pg_catalog.pg_sequence.seqstart) AS j FROM pg_catalog.pg_sequence
              WHERE pg_catalog.pg_attribute.attidentity != '' AND pg_catalog.pg_sequence.seqrelid
                = CAST(CAST(pg_catalog.pg_get_serial_sequence(CAST(CAST(
                  pg_catalog.pg_attribute.attrelid AS REGCLASS) AS TEXT),
                  pg_catalog.pg_attribute.attname) AS REGCLASS) AS OID))
            ELSE NULL END AS identity_options,
            current_setting('default_table_access_method') AS am
         FROM pg_catalog.pg_class JOIN pg_catalog.pg_attribute
           ON pg_catalog.pg_class.oid = pg_catalog.pg_attribute.attrelid
          AND pg_catalog.pg_attribute.attnum > 0
         WHERE pg_catalog.pg_class.relname = 'cat' ORDER BY pg_catalog.pg_attribute.attnum",
    )
    .await;
    // Nyala's catalog lists no column defaults (`atthasdef` is false) and no sequences.
    assert_eq!(
        text(&columns),
        "+------+---------+------------------+------+\n\
         | name | default | identity_options | am   |\n\
         +------+---------+------------------+------+\n\
         | id   |         |                  | heap |\n\
         | name |         |                  | heap |\n\
         | v    |         |                  | heap |\n\
         +------+---------+------------------+------+"
    );
}
