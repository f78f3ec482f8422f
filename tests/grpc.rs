//! The gRPC API end to end: the real server binary, the Rust client library, and raw requests
//! for the error paths a well-behaved client never takes.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{
    Array, AsArray, Float32Array, Int16Array, Int32Array, Int64Array, RecordBatch, StringArray,
};
use arrow::datatypes::{
    DataType as ArrowType, Field, Float32Type, Int32Type, Int64Type, Schema as ArrowSchema,
};
use common::{http_get, status, Server};
use futures::{StreamExt, TryStreamExt};
use nyala_client::{
    Client, ClientError, ColumnSchema, DataType, FlushMode, Op, Predicate, Schema, Value,
};
use nyala_proto::v1 as pb;
use nyala_proto::v1::nyala_client::NyalaClient;
use tonic::Code;

fn readings_schema() -> Schema {
    Schema::new(
        vec![
            ColumnSchema::not_null("uid", DataType::Int32),
            ColumnSchema::not_null("lane", DataType::Int16),
            ColumnSchema::not_null("ts", DataType::Timestamp),
            ColumnSchema::nullable("speed", DataType::Float32),
            ColumnSchema::nullable("note", DataType::Utf8),
        ],
        &["uid", "lane", "ts"],
    )
    .unwrap()
}

fn ipc(batch: &RecordBatch) -> Vec<u8> {
    let mut w = arrow::ipc::writer::StreamWriter::try_new(Vec::new(), &batch.schema()).unwrap();
    w.write(batch).unwrap();
    w.finish().unwrap();
    w.into_inner().unwrap()
}

fn name(t: &str) -> Option<pb::TableName> {
    Some(pb::TableName {
        namespace: String::new(),
        name: t.into(),
    })
}

const MINUTE: i64 = 60_000_000;

/// Runs a scan to its end and counts its rows.
trait CountRows {
    async fn rows(self) -> usize;
}

impl CountRows for nyala_client::Scan {
    async fn rows(self) -> usize {
        let batches: Vec<RecordBatch> = self.execute().await.unwrap().try_collect().await.unwrap();
        batches.iter().map(|b| b.num_rows()).sum()
    }
}

/// uid, lane, ts (minute i), speed = i % 100, note NULL for odd uids.
async fn load_readings(client: &Client, table: &str, uids: i32, minutes: i64) {
    let t = client.table(table).await.unwrap();
    let mut session = client.session(FlushMode::AutoFlushBackground);
    session.set_buffer_limit(2_000);
    for uid in 0..uids {
        for m in 0..minutes {
            let mut op = t.upsert();
            op.set("uid", uid)
                .unwrap()
                .set("lane", 1i16)
                .unwrap()
                .set("ts", Value::Timestamp(m * MINUTE))
                .unwrap()
                .set("speed", (m % 100) as f32)
                .unwrap()
                .set("note", (uid % 2 == 0).then(|| format!("u{uid}")))
                .unwrap();
            session.apply(op).await.unwrap();
        }
    }
    assert!(session.close().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_rpcs_create_describe_alter_and_drop_tables() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let c = server.client().await;

    // Hash and range partitioning through CreateTable.
    let day = 86_400_000_000i64;
    let part = pb::Partitioning {
        hash_columns: vec!["uid".into()],
        hash_buckets: 2,
        range_column: "ts".into(),
        ranges: vec![pb::RangeBounds {
            lower: Some(pb::Value {
                kind: Some(pb::value::Kind::String("1970-01-01".into())),
            }),
            upper: Some(pb::Value {
                kind: Some(pb::value::Kind::TimestampMicros(day)),
            }),
        }],
    };
    let t = c
        .create_table("readings", &readings_schema(), Some(part.clone()), false)
        .await
        .unwrap();
    assert_eq!(t.schema().len(), 5);
    assert_eq!(t.definition().tablets.len(), 2);
    assert_eq!(t.definition().primary_key, ["uid", "lane", "ts"]);
    // Same again: ALREADY_EXISTS, unless if_not_exists.
    let e = status(
        c.create_table("readings", &readings_schema(), None, false)
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    c.create_table("readings", &readings_schema(), None, true)
        .await
        .unwrap();

    // The table is there for SQL too, with the same schema.
    let r = c.sql("SELECT count(*) FROM readings").await.unwrap();
    assert_eq!(r.num_rows(), 1);

    // A row outside the range partition is refused per row (NO_PARTITION), the rest apply.
    let mut s = c.session(FlushMode::Manual);
    for (uid, ts) in [(1, 5), (2, 2 * day)] {
        let mut op = t.insert();
        op.set("uid", uid)
            .unwrap()
            .set("lane", 1i16)
            .unwrap()
            .set("ts", Value::Timestamp(ts))
            .unwrap();
        s.apply(op).await.unwrap();
    }
    let errors = s.close().await.unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].code, pb::RowErrorCode::NoPartition);
    assert_eq!(errors[0].key[0], Value::Int32(2));

    let mut raw = NyalaClient::connect(format!("http://{}", server.grpc))
        .await
        .unwrap();
    let alter = |change| pb::AlterTableRequest {
        table: name("readings"),
        change: Some(change),
    };
    use pb::alter_table_request::Change;
    raw.alter_table(alter(Change::AddRangePartition(pb::RangeBounds {
        lower: Some(pb::Value {
            kind: Some(pb::value::Kind::TimestampMicros(day)),
        }),
        upper: None,
    })))
    .await
    .unwrap();
    let added = raw
        .alter_table(alter(Change::AddColumn(pb::Column {
            name: "count".into(),
            r#type: pb::ColumnType::Int64 as i32,
            nullable: false,
            precision: 0,
            scale: 0,
            default: Some(pb::Value {
                kind: Some(pb::value::Kind::Int(7)),
            }),
        })))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(added.tablets.len(), 4);
    assert_eq!(added.columns.last().unwrap().name, "count");
    raw.alter_table(alter(Change::RenameColumn(pb::RenameColumn {
        from: "note".into(),
        to: "comment".into(),
    })))
    .await
    .unwrap();
    raw.alter_table(alter(Change::DropColumn("speed".into())))
        .await
        .unwrap();
    let renamed = raw
        .alter_table(alter(Change::RenameTable("readings2".into())))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(renamed.name.unwrap().name, "readings2");
    let cols: Vec<String> = renamed.columns.iter().map(|c| c.name.clone()).collect();
    assert_eq!(cols, ["uid", "lane", "ts", "comment", "count"]);
    let r = c
        .sql("SELECT uid, count FROM readings2 ORDER BY uid")
        .await
        .unwrap();
    let counts = r.batches[0].column(1).as_primitive::<Int64Type>();
    assert_eq!(counts.value(0), 7, "the default fills existing rows");

    // Errors name the problem.
    let e = status(c.table("nope").await.unwrap_err());
    assert_eq!(e.code(), Code::NotFound);
    let e = raw
        .alter_table(pb::AlterTableRequest {
            table: name("readings2"),
            change: Some(Change::DropColumn("uid".into())),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = raw
        .create_table(pb::CreateTableRequest {
            table: name("nokey"),
            columns: vec![pb::Column {
                name: "a".into(),
                r#type: pb::ColumnType::Int32 as i32,
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("primary key"), "{}", e.message());
    let e = raw
        .create_table(pb::CreateTableRequest {
            table: name("floatkey"),
            columns: vec![pb::Column {
                name: "f".into(),
                r#type: pb::ColumnType::Float64 as i32,
                ..Default::default()
            }],
            primary_key: vec!["f".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = raw
        .create_table(pb::CreateTableRequest {
            table: name("badtype"),
            columns: vec![pb::Column {
                name: "a".into(),
                r#type: 99,
                ..Default::default()
            }],
            primary_key: vec!["a".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    let listed = c.list_tables(None).await.unwrap();
    assert_eq!(listed, [("public".to_string(), "readings2".to_string())]);
    c.drop_table("readings2", false).await.unwrap();
    c.drop_table("readings2", true).await.unwrap();
    let e = status(c.drop_table("readings2", false).await.unwrap_err());
    assert_eq!(e.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_lookups_and_scans_through_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let c = server.client().await;
    c.create_table("readings", &readings_schema(), None, false)
        .await
        .unwrap();
    load_readings(&c, "readings", 20, 300).await; // 6,000 rows
    let t = c.table("readings").await.unwrap();

    // Get: one key, every column.
    let row = t
        .get(&[
            Value::Int32(3),
            Value::Int16(1),
            Value::Timestamp(42 * MINUTE),
        ])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.num_rows(), 1);
    assert_eq!(row.column(3).as_primitive::<Float32Type>().value(0), 42.0);
    assert!(row.column(4).is_null(0));
    assert!(t
        .get(&[Value::Int32(99), Value::Int16(1), Value::Timestamp(0)])
        .await
        .unwrap()
        .is_none());
    // Many keys with a projection: rows come in key order, absent keys are skipped.
    let keys: Vec<Vec<Value>> = [(4, 10), (99, 1), (5, 299), (5, 300)]
        .iter()
        .map(|&(u, m)| {
            vec![
                Value::Int32(u),
                Value::Int16(1),
                Value::Timestamp(m * MINUTE),
            ]
        })
        .collect();
    let (rows, index) = t.get_many(&keys, &["note", "speed"], None).await.unwrap();
    assert_eq!(index, [0, 2]);
    assert_eq!(rows.schema().field(0).name(), "note");
    assert_eq!(rows.column(0).as_string::<i32>().value(0), "u4");
    assert_eq!(rows.column(1).as_primitive::<Float32Type>().value(1), 99.0);

    // Scan with predicates, projection and limit.
    let batches: Vec<RecordBatch> = t
        .scan()
        .project(["uid", "speed"])
        .filter(Predicate::in_list("uid", [2, 7]))
        .filter(Predicate::ge("ts", Value::Timestamp(100 * MINUTE)))
        .filter(Predicate::lt("speed", 10.0f32))
        .execute()
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let n: usize = batches.iter().map(|b| b.num_rows()).sum();
    // Minutes 100..300 with m % 100 < 10: 200..210 and 100..110 → 20 per uid.
    assert_eq!(n, 40);
    for b in &batches {
        assert_eq!(b.num_columns(), 2);
        for u in b.column(0).as_primitive::<Int32Type>().values() {
            assert!(*u == 2 || *u == 7);
        }
    }
    let nulls: usize = t.scan().filter(Predicate::is_null("note")).rows().await;
    assert_eq!(nulls, 10 * 300);
    let limited: usize = t.scan().limit(123).batch_rows(50).rows().await;
    assert_eq!(limited, 123);

    // Snapshots: a scan's snapshot reads the same data after later writes, as does a Get.
    let before = t.scan().execute().await.unwrap();
    let snapshot = before.snapshot();
    drop(before);
    let mut s = c.session(FlushMode::AutoFlushSync);
    let mut op = t.update();
    op.set("uid", 0)
        .unwrap()
        .set("lane", 1i16)
        .unwrap()
        .set("ts", Value::Timestamp(0))
        .unwrap()
        .set("speed", 555.0f32)
        .unwrap();
    s.apply(op).await.unwrap();
    let mut del = t.delete();
    del.set("uid", 1)
        .unwrap()
        .set("lane", 1i16)
        .unwrap()
        .set("ts", Value::Timestamp(0))
        .unwrap();
    s.apply(del).await.unwrap();
    let sum_speed = |batches: Vec<RecordBatch>| -> (usize, f64) {
        let mut n = 0;
        let mut sum = 0.0;
        for b in batches {
            n += b.num_rows();
            for v in b.column(0).as_primitive::<Float32Type>().values() {
                sum += f64::from(*v);
            }
        }
        (n, sum)
    };
    let old = sum_speed(
        t.scan()
            .project(["speed"])
            .snapshot(snapshot)
            .execute()
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap(),
    );
    let new = sum_speed(
        t.scan()
            .project(["speed"])
            .execute()
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap(),
    );
    assert_eq!(old.0, 6000);
    assert_eq!(new.0, 5999);
    assert_eq!(new.1 - old.1, 555.0);
    let key0 = vec![Value::Int32(0), Value::Int16(1), Value::Timestamp(0)];
    let (then, _) = t
        .get_many(std::slice::from_ref(&key0), &["speed"], Some(snapshot))
        .await
        .unwrap();
    assert_eq!(then.column(0).as_primitive::<Float32Type>().value(0), 0.0);
    let (now, _) = t.get_many(&[key0], &["speed"], None).await.unwrap();
    assert_eq!(now.column(0).as_primitive::<Float32Type>().value(0), 555.0);

    // Columnar writes: Write and WriteStream with the table's Arrow types.
    let arrow_schema = Arc::new(ArrowSchema::new(vec![
        Field::new("uid", ArrowType::Int32, false),
        Field::new("lane", ArrowType::Int16, false),
        Field::new(
            "ts",
            ArrowType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("speed", ArrowType::Float32, true),
    ]));
    let batch = |uid: i32, n: i64| {
        RecordBatch::try_new(
            arrow_schema.clone(),
            vec![
                Arc::new(Int32Array::from(vec![uid; n as usize])),
                Arc::new(Int16Array::from(vec![2i16; n as usize])),
                Arc::new(
                    arrow::array::TimestampMicrosecondArray::from(
                        (0..n).map(|m| m * MINUTE).collect::<Vec<_>>(),
                    )
                    .with_timezone("UTC"),
                ),
                Arc::new(Float32Array::from(vec![1.0f32; n as usize])),
            ],
        )
        .unwrap()
    };
    let w = t.write_batch(Op::Insert, &batch(0, 100)).await.unwrap();
    assert_eq!((w.applied, w.failed), (100, 0));
    // The write's timestamp reads it.
    let seen: usize = t
        .scan()
        .filter(Predicate::eq("lane", 2i16))
        .snapshot(w.timestamp)
        .rows()
        .await;
    assert_eq!(seen, 100);
    let w = t
        .write_stream(
            Op::Insert,
            futures::stream::iter(vec![batch(0, 150), batch(1, 100)]),
        )
        .await
        .unwrap();
    // Rows 0..100 of the first batch are duplicates; indexes count across batches.
    assert_eq!((w.applied, w.failed), (150, 100));
    assert_eq!(w.errors.len(), 100);
    assert_eq!(w.errors[0].0, 0);
    assert_eq!(w.errors[0].1, pb::RowErrorCode::DuplicateKey);
    assert!(w.errors[0].2.contains("uid"), "{}", w.errors[0].2);
    let r = c
        .sql("SELECT count(*) AS n FROM readings WHERE lane = 2")
        .await
        .unwrap();
    assert_eq!(
        r.batches[0].column(0).as_primitive::<Int64Type>().value(0),
        250
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_flush_modes_and_row_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let c = server.client().await;
    c.sql("CREATE TABLE kv (k BIGINT PRIMARY KEY, v TEXT NOT NULL, n INT)")
        .await
        .unwrap();
    let t = c.table("kv").await.unwrap();
    let row = |op: nyala_client::Operation, k: i64| {
        let mut op = op;
        op.set("k", k).unwrap().set("v", format!("v{k}")).unwrap();
        op
    };

    // Client-side checks: wrong type, NULL in a NOT NULL column, unknown column, unset key.
    let mut op = t.insert();
    let e = op.set("k", 1i32).unwrap_err();
    assert!(e.to_string().contains("BIGINT"), "{e}");
    assert!(op.set("v", Value::Null).is_err());
    assert!(op.set("nope", 1i64).is_err());
    let mut sync = c.session(FlushMode::AutoFlushSync);
    let mut no_key = t.insert();
    no_key.set("v", "x").unwrap();
    assert!(matches!(
        sync.apply(no_key).await,
        Err(ClientError::InvalidArgument(_))
    ));

    // AutoFlushSync: each apply is a round trip; a refused row is the apply's error.
    sync.apply(row(t.insert(), 1)).await.unwrap();
    match sync.apply(row(t.insert(), 1)).await {
        Err(ClientError::Row(e)) => {
            assert_eq!(e.code, pb::RowErrorCode::DuplicateKey);
            assert_eq!(e.key, [Value::Int64(1)]);
        }
        other => panic!("expected a duplicate key, got {other:?}"),
    }
    sync.apply(row(t.insert_ignore(), 1)).await.unwrap();

    // Manual: nothing is sent before flush; a full buffer refuses more.
    let mut manual = c.session(FlushMode::Manual);
    manual.set_buffer_limit(3);
    for k in 10..13 {
        manual.apply(row(t.upsert(), k)).await.unwrap();
    }
    assert!(matches!(
        manual.apply(row(t.upsert(), 13)).await,
        Err(ClientError::BufferFull(3))
    ));
    assert!(t.get(&[Value::Int64(10)]).await.unwrap().is_none());
    manual.flush().await.unwrap();
    assert!(t.get(&[Value::Int64(10)]).await.unwrap().is_some());
    // Mixed operations in one buffer keep their order and report failures per row.
    let mut upd = t.update();
    upd.set("k", 99i64).unwrap().set("n", 5).unwrap();
    manual.apply(upd).await.unwrap();
    let mut del = t.delete();
    del.set("k", 10i64).unwrap();
    manual.apply(del).await.unwrap();
    manual.apply(row(t.insert(), 10)).await.unwrap();
    manual.flush().await.unwrap();
    let errors = manual.take_errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].code, pb::RowErrorCode::KeyNotFound);
    assert_eq!(errors[0].op, Op::Update);
    assert_eq!(errors[0].key, [Value::Int64(99)]);
    assert!(t.get(&[Value::Int64(10)]).await.unwrap().is_some());

    // AutoFlushBackground: batches go out as the buffer fills; flush waits for all.
    let mut bg = c.session(FlushMode::AutoFlushBackground);
    bg.set_buffer_limit(100);
    for k in 1000..3500 {
        bg.apply(row(t.insert(), k)).await.unwrap();
        assert!(bg.buffered() < 100);
    }
    bg.apply(row(t.insert(), 1)).await.unwrap(); // a duplicate
    let errors = bg.close().await.unwrap();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].key, [Value::Int64(1)]);
    let r = c.sql("SELECT count(*) FROM kv").await.unwrap();
    assert_eq!(
        r.batches[0].column(0).as_primitive::<Int64Type>().value(0),
        1 + 3 + 2500
    );
}

/// With several background batches in flight, operations on one key still apply in the order
/// given: each round inserts, deletes and re-inserts the same keys in three consecutive
/// batches, then updates them, so any reordering shows as a row error or a wrong final value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_batches_keep_each_keys_operations_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let c = server.client().await;
    c.sql("CREATE TABLE kv (k BIGINT PRIMARY KEY, v BIGINT NOT NULL)")
        .await
        .unwrap();
    let t = c.table("kv").await.unwrap();
    let op = |mut op: nyala_client::Operation, k: i64, v: Option<i64>| {
        op.set("k", k).unwrap();
        if let Some(v) = v {
            op.set("v", v).unwrap();
        }
        op
    };
    let mut s = c.session(FlushMode::AutoFlushBackground);
    s.set_buffer_limit(50);
    s.set_max_in_flight(4);
    for round in 0..20i64 {
        let keys = round * 50..round * 50 + 50;
        for k in keys.clone() {
            s.apply(op(t.insert(), k, Some(1))).await.unwrap();
        }
        for k in keys.clone() {
            s.apply(op(t.delete(), k, None)).await.unwrap();
        }
        for k in keys.clone() {
            s.apply(op(t.insert(), k, Some(2))).await.unwrap();
        }
        // Unrelated keys in between: these batches may run beside the others.
        for k in 0..50 {
            s.apply(op(t.upsert(), 1_000_000 + round * 50 + k, Some(0)))
                .await
                .unwrap();
        }
        for k in keys {
            s.apply(op(t.update(), k, Some(k))).await.unwrap();
        }
    }
    let errors = s.close().await.unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    let r = c
        .sql("SELECT count(*), sum(CASE WHEN v = k THEN 1 ELSE 0 END) FROM kv WHERE k < 1000")
        .await
        .unwrap();
    let b = &r.batches[0];
    assert_eq!(b.column(0).as_primitive::<Int64Type>().value(0), 1000);
    assert_eq!(b.column(1).as_primitive::<Int64Type>().value(0), 1000);
}

/// When the server goes away with several background batches in flight, the session's error
/// returns every operation not applied, in the order they were given: nothing is lost
/// silently and nothing is returned twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_background_session_returns_every_unapplied_operation_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let c = server.client().await;
    c.sql("CREATE TABLE kv (k BIGINT PRIMARY KEY, v BIGINT NOT NULL)")
        .await
        .unwrap();
    let t = c.table("kv").await.unwrap();
    let op = |k: i64| {
        let mut op = t.insert();
        op.set("k", k).unwrap().set("v", k).unwrap();
        op
    };
    let mut s = c.session(FlushMode::AutoFlushBackground);
    s.set_buffer_limit(10);
    s.set_max_in_flight(3);
    for k in 0..50 {
        s.apply(op(k)).await.unwrap();
    }
    s.flush().await.unwrap();
    assert!(s.take_errors().is_empty());
    assert_eq!(server.stop("-9"), None);
    let mut unapplied = None;
    for k in 50..200 {
        match s.apply(op(k)).await {
            Ok(()) => {}
            Err(ClientError::NotApplied { ops, .. }) => {
                unapplied = Some((k, ops));
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    let (last, ops) = unapplied.expect("the session reports the lost server");
    let keys: Vec<Value> = ops.iter().map(|o| o.key()[0].clone()).collect();
    let want: Vec<Value> = (50..=last).map(Value::Int64).collect();
    assert_eq!(keys, want);
    assert_eq!(s.buffered(), 0);
}

/// Raw bytes as a gRPC message, to send what no generated client would.
#[derive(Clone, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        let mut v = vec![0; src.remaining()];
        src.copy_to_slice(&mut v);
        Ok(Some(v))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_requests_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), &["--max-message-bytes", "1000000"]);
    let c = server.client().await;
    c.create_table("readings", &readings_schema(), None, false)
        .await
        .unwrap();
    let mut raw = NyalaClient::connect(format!("http://{}", server.grpc))
        .await
        .unwrap();
    let write = |arrow_ipc: Vec<u8>, op: Op, ops: Vec<u8>| pb::WriteRequest {
        table: name("readings"),
        arrow_ipc,
        op: op as i32,
        ops,
    };
    let key_batch = |uid: Arc<dyn Array>| {
        let uid_type = uid.data_type().clone();
        RecordBatch::try_new(
            Arc::new(ArrowSchema::new(vec![
                Field::new("uid", uid_type, false),
                Field::new("lane", ArrowType::Int16, false),
                Field::new(
                    "ts",
                    ArrowType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, None),
                    false,
                ),
            ])),
            vec![
                uid,
                Arc::new(Int16Array::from(vec![1i16])),
                Arc::new(arrow::array::TimestampMicrosecondArray::from(vec![0i64])),
            ],
        )
        .unwrap()
    };
    let good = ipc(&key_batch(Arc::new(Int32Array::from(vec![1]))));
    let expect =
        |r: Result<tonic::Response<pb::WriteResponse>, tonic::Status>, code: Code, needle: &str| {
            let e = r.unwrap_err();
            assert_eq!(e.code(), code, "{e:?}");
            assert!(
                e.message().to_lowercase().contains(needle),
                "{:?} lacks {needle:?}",
                e.message()
            );
        };
    expect(
        raw.write(write(b"not arrow".to_vec(), Op::Insert, vec![]))
            .await,
        Code::InvalidArgument,
        "arrow ipc",
    );
    expect(
        raw.write(write(vec![], Op::Insert, vec![])).await,
        Code::InvalidArgument,
        "empty",
    );
    // Truncated IPC (the schema without its batch, then half a batch).
    expect(
        raw.write(write(good[..good.len() / 2].to_vec(), Op::Insert, vec![]))
            .await,
        Code::InvalidArgument,
        "arrow ipc",
    );
    expect(
        raw.write(write(
            ipc(&key_batch(Arc::new(Int64Array::from(vec![1i64])))),
            Op::Insert,
            vec![],
        ))
        .await,
        Code::InvalidArgument,
        "uid",
    );
    expect(
        raw.write(write(
            ipc(&key_batch(Arc::new(StringArray::from(vec!["1"])))),
            Op::Insert,
            vec![],
        ))
        .await,
        Code::InvalidArgument,
        "uid",
    );
    let no_ts = key_batch(Arc::new(Int32Array::from(vec![1])))
        .project(&[0, 1])
        .unwrap();
    expect(
        raw.write(write(ipc(&no_ts), Op::Insert, vec![])).await,
        Code::InvalidArgument,
        "ts",
    );
    expect(
        raw.write(write(good.clone(), Op::Unspecified, vec![]))
            .await,
        Code::InvalidArgument,
        "operation",
    );
    expect(
        raw.write(write(good.clone(), Op::Insert, vec![1, 1])).await,
        Code::InvalidArgument,
        "ops",
    );
    expect(
        raw.write(write(good.clone(), Op::Insert, vec![42])).await,
        Code::InvalidArgument,
        "operation",
    );
    expect(
        raw.write(pb::WriteRequest {
            table: name("nope"),
            ..write(good.clone(), Op::Insert, vec![])
        })
        .await,
        Code::NotFound,
        "nope",
    );
    // Over the message size limit.
    let big = vec![0u8; 2_000_000];
    let e = raw.write(write(big, Op::Insert, vec![])).await.unwrap_err();
    assert!(
        matches!(e.code(), Code::ResourceExhausted | Code::OutOfRange),
        "{e:?}"
    );
    // Nothing was written by any of it; a good request still works.
    let ok = raw
        .write(write(good.clone(), Op::Insert, vec![]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.applied, 1);

    // Get and Scan: wrong arity, wrong types, unknown columns, limits, future snapshots.
    let key = |vals: Vec<pb::value::Kind>| pb::Key {
        values: vals
            .into_iter()
            .map(|k| pb::Value { kind: Some(k) })
            .collect(),
    };
    use pb::value::Kind;
    let get = |keys: Vec<pb::Key>, projection: Vec<String>| pb::GetRequest {
        table: name("readings"),
        keys,
        projection,
        snapshot_timestamp: 0,
    };
    let e = raw
        .get(get(vec![key(vec![Kind::Int(1)])], vec![]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("3 columns"), "{}", e.message());
    let e = raw
        .get(get(
            vec![key(vec![
                Kind::String("one".into()),
                Kind::Int(1),
                Kind::Int(0),
            ])],
            vec![],
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("uid"), "{}", e.message());
    let e = raw
        .get(get(
            vec![key(vec![Kind::Int(1), Kind::Int(1), Kind::Int(0)])],
            vec!["nope".into()],
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let found = raw
        .get(get(
            vec![key(vec![Kind::Int(1), Kind::Int(1), Kind::Int(0)])],
            vec![],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.key_index, [0]);
    let many = vec![key(vec![Kind::Int(1), Kind::Int(1), Kind::Int(0)]); 10_001];
    let e = raw.get(get(many, vec![])).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");

    let scan = |predicates: Vec<pb::Predicate>| pb::ScanRequest {
        table: name("readings"),
        predicates,
        ..Default::default()
    };
    let pred = |column: &str, op: pb::CompareOp, values: Vec<Kind>| pb::Predicate {
        column: column.into(),
        op: op as i32,
        values: values
            .into_iter()
            .map(|k| pb::Value { kind: Some(k) })
            .collect(),
    };
    for (p, needle) in [
        (pred("nope", pb::CompareOp::Eq, vec![Kind::Int(1)]), "nope"),
        (pred("uid", pb::CompareOp::Eq, vec![]), "one value"),
        (
            pred("uid", pb::CompareOp::Lt, vec![Kind::Bool(true)]),
            "uid",
        ),
        (
            pred("uid", pb::CompareOp::IsNull, vec![Kind::Int(1)]),
            "no values",
        ),
        (pred("uid", pb::CompareOp::Unspecified, vec![]), "operator"),
        (
            pred("uid", pb::CompareOp::Eq, vec![Kind::Null(true)]),
            "null",
        ),
    ] {
        let e = raw.scan(scan(vec![p])).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(
            e.message().to_lowercase().contains(needle),
            "{:?} lacks {needle}",
            e.message()
        );
    }
    let e = raw
        .scan(pb::ScanRequest {
            batch_rows: 1 << 20,
            ..scan(vec![])
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    let e = raw
        .scan(pb::ScanRequest {
            snapshot_timestamp: u64::MAX / 2,
            ..scan(vec![])
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("future"), "{}", e.message());
    let e = raw
        .scan(pb::ScanRequest {
            table: name("nope"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // Bytes that are not a protobuf message at all.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let e = grpc
        .unary(
            tonic::Request::new(vec![0xff, 0xff, 0xff, 0xff, 0x0f, 0x01]),
            tonic::codegen::http::uri::PathAndQuery::from_static("/nyala.v1.Nyala/Write"),
            RawCodec,
        )
        .await
        .unwrap_err();
    // gRPC's own convention for a request that does not parse (statuscodes.md): INTERNAL,
    // from the library, before any Nyala code runs.
    assert_eq!(e.code(), Code::Internal, "{e:?}");
    assert!(e.message().contains("decode Protobuf"), "{e:?}");

    // The server is still healthy and the one good row is there.
    assert!(http_get(server.http, "/healthz").contains("200 OK"));
    let r = c.sql("SELECT count(*) FROM readings").await.unwrap();
    assert_eq!(
        r.batches[0].column(0).as_primitive::<Int64Type>().value(0),
        1
    );
}

fn metric(server: &Server, name: &str) -> u64 {
    let text = http_get(server.http, "/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .trim()
        .parse()
        .unwrap()
}

async fn wait_for_no_active_scans(server: &Server) {
    let started = Instant::now();
    while metric(server, "nyala_active_scans") != 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the scan did not stop"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scans_stop_when_the_client_goes_away_or_the_deadline_passes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let c = server.client().await;
    c.create_table("readings", &readings_schema(), None, false)
        .await
        .unwrap();
    load_readings(&c, "readings", 50, 1_000).await; // 50,000 rows
    let t = c.table("readings").await.unwrap();

    // Read one small batch, then walk away.
    let mut stream = t.scan().batch_rows(10).execute().await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.num_rows(), 10);
    assert_eq!(metric(&server, "nyala_active_scans"), 1);
    drop(stream);
    wait_for_no_active_scans(&server).await;

    // A client whose connection closes mid-stream.
    {
        let c2 = server.client().await;
        let t2 = c2.table("readings").await.unwrap();
        let mut s = t2.scan().batch_rows(10).execute().await.unwrap();
        s.next().await.unwrap().unwrap();
        drop(t2);
        drop(c2);
        drop(s);
    }
    wait_for_no_active_scans(&server).await;

    // A deadline shorter than the scan: the server stops it.
    let mut raw = NyalaClient::connect(format!("http://{}", server.grpc))
        .await
        .unwrap();
    let mut req = tonic::Request::new(pb::ScanRequest {
        table: name("readings"),
        batch_rows: 1,
        ..Default::default()
    });
    req.set_timeout(Duration::from_millis(300));
    let outcome = async {
        let mut s = raw.scan(req).await?.into_inner();
        while s.message().await?.is_some() {
            // A slow reader: 50,000 one-row batches take far longer than the deadline.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok::<_, tonic::Status>(())
    }
    .await;
    let e = outcome.unwrap_err();
    assert!(
        matches!(e.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{e:?}"
    );
    wait_for_no_active_scans(&server).await;

    // And the server goes on serving complete scans.
    let n: usize = t.scan().rows().await;
    assert_eq!(n, 50_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_client_writes_survive_kill_9_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let c = server.client().await;
    c.create_table("readings", &readings_schema(), None, false)
        .await
        .unwrap();
    load_readings(&c, "readings", 3, 500).await;
    let t = c.table("readings").await.unwrap();
    let mut s = c.session(FlushMode::AutoFlushSync);
    let mut op = t.upsert();
    op.set("uid", 7)
        .unwrap()
        .set("lane", 3i16)
        .unwrap()
        .set("ts", Value::Timestamp(0))
        .unwrap()
        .set("speed", 12.5f32)
        .unwrap();
    s.apply(op).await.unwrap();
    // Killed right after the acknowledgement.
    assert_eq!(server.stop("-9"), None);

    let server = Server::start(dir.path());
    let c = server.client().await;
    let t = c.table("readings").await.unwrap();
    let row = t
        .get(&[Value::Int32(7), Value::Int16(3), Value::Timestamp(0)])
        .await
        .unwrap()
        .expect("the acknowledged row");
    assert_eq!(row.column(3).as_primitive::<Float32Type>().value(0), 12.5);
    let n: usize = t.scan().rows().await;
    assert_eq!(n, 1501);
    // A graceful restart keeps them as well.
    assert_eq!(server.stop("-TERM"), Some(0));
    let server = Server::start(dir.path());
    let t = server.client().await.table("readings").await.unwrap();
    assert!(t
        .get(&[
            Value::Int32(2),
            Value::Int16(1),
            Value::Timestamp(499 * MINUTE)
        ])
        .await
        .unwrap()
        .is_some());
}
