//! The database layer: catalog operations and their persistence, routing of writes to
//! tablets, pruning of scans, snapshots across tablets, range partitions, bad input.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use arrow::array::AsArray;
use arrow::datatypes::{Float64Type, Int32Type, TimestampMicrosecondType};
use common::test_opts;
use nyala_storage::{
    BatchBuilder, CmpOp, ColumnSchema, DataType, Database, DatabaseOptions, IfExists,
    PartitionSpec, Predicate, RangeBounds, RowErrorKind, ScanRequest, Schema, StorageError, Table,
    TableName, Value, WriteOp,
};

const DAY: i64 = 86_400_000_000;

fn opts() -> DatabaseOptions {
    DatabaseOptions {
        tablet: test_opts(),
        scan_threads: 2,
        ..Default::default()
    }
}

fn open(dir: &Path) -> Database {
    Database::open(dir, opts()).unwrap()
}

/// Traffic readings: key (uid, ts), speed.
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

fn name(n: &str) -> TableName {
    TableName::parse(n).unwrap()
}

/// HASH (uid) PARTITIONS 3, RANGE (ts) one partition per day for days 0..days.
fn daily(days: i64) -> PartitionSpec {
    PartitionSpec::hash(["uid"], 3).with_range("ts", (0..days).map(day_range).collect())
}

fn day_range(d: i64) -> RangeBounds {
    RangeBounds::new(Value::Timestamp(d * DAY), Value::Timestamp((d + 1) * DAY))
}

fn rows(t: &Table, op: WriteOp, rows: &[(i32, i64, f64)]) -> nyala_storage::WriteBatch {
    let mut b = BatchBuilder::new(["uid", "ts", "speed"]);
    for &(u, ts, s) in rows {
        b.push(
            op,
            vec![Value::Int32(u), Value::Timestamp(ts), Value::Float64(s)],
        );
    }
    b.build(&t.schema()).unwrap()
}

/// Every row of a table scan, keyed by (uid, ts).
fn contents(t: &Table, req: &ScanRequest) -> BTreeMap<(i32, i64), f64> {
    let mut out = BTreeMap::new();
    for b in t.scan(req).unwrap() {
        let b = b.unwrap();
        let u = b.column(0).as_primitive::<Int32Type>();
        let ts = b.column(1).as_primitive::<TimestampMicrosecondType>();
        let s = b.column(2).as_primitive::<Float64Type>();
        for i in 0..b.num_rows() {
            assert!(out.insert((u.value(i), ts.value(i)), s.value(i)).is_none());
        }
    }
    out
}

fn tablet_dirs(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("tablets")).unwrap().count()
}

#[test]
fn catalog_operations_persist_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = open(dir.path());
        let t = db
            .create_table(
                &name("Readings"),
                &schema(),
                &PartitionSpec::hash(["uid"], 4),
                IfExists::Error,
            )
            .unwrap();
        assert_eq!(t.name(), TableName::new("public", "readings"));
        assert_eq!(t.tablet_count(), 4);
        t.write(&rows(&t, WriteOp::Insert, &[(1, 10, 1.5), (2, 20, 2.5)]))
            .unwrap();
        // Unquoted names fold, quoted ones keep their case.
        assert!(matches!(
            db.create_table(
                &name("READINGS"),
                &schema(),
                &PartitionSpec::default(),
                IfExists::Error
            ),
            Err(StorageError::DuplicateTable(_))
        ));
        let again = db
            .create_table(
                &name("readings"),
                &schema(),
                &PartitionSpec::default(),
                IfExists::Skip,
            )
            .unwrap();
        assert_eq!(
            again.tablet_count(),
            4,
            "IF NOT EXISTS returns the existing table"
        );
        db.create_table(
            &name("\"Readings\""),
            &schema(),
            &PartitionSpec::default(),
            IfExists::Error,
        )
        .unwrap();
        db.create_namespace("archive", IfExists::Error).unwrap();
        db.create_table(
            &name("archive.old"),
            &schema(),
            &PartitionSpec::default(),
            IfExists::Error,
        )
        .unwrap();
        db.create_table(
            &name("gone"),
            &schema(),
            &PartitionSpec::hash(["uid", "ts"], 2),
            IfExists::Error,
        )
        .unwrap();
        assert_eq!(tablet_dirs(dir.path()), 4 + 1 + 1 + 2);
        db.drop_table(&name("gone"), IfExists::Error).unwrap();
        assert_eq!(
            tablet_dirs(dir.path()),
            6,
            "dropping a table frees its files"
        );
        db.drop_table(&name("gone"), IfExists::Skip).unwrap();
        assert!(matches!(
            db.drop_table(&name("gone"), IfExists::Error),
            Err(StorageError::UndefinedTable(_))
        ));
        db.rename_table(&name("archive.old"), &name("archive.older"))
            .unwrap();
        assert_eq!(
            db.list_tables(None),
            vec![
                TableName::new("archive", "older"),
                TableName::new("public", "Readings"),
                TableName::new("public", "readings"),
            ]
        );
        assert_eq!(db.list_tables(Some("archive")).len(), 1);
    }
    let db = open(dir.path());
    assert_eq!(db.list_namespaces(), vec!["archive", "public"]);
    assert_eq!(db.list_tables(None).len(), 3);
    let t = db.table(&name("readings")).unwrap();
    let info = db.describe(&name("readings")).unwrap();
    assert_eq!(info.schema, schema());
    assert_eq!(info.partitioning, PartitionSpec::hash(["uid"], 4));
    assert_eq!(info.tablets.len(), 4);
    assert_eq!(
        contents(&t, &ScanRequest::default()),
        BTreeMap::from([((1, 10), 1.5), ((2, 20), 2.5)])
    );
    assert_eq!(
        t.get(&[Value::Int32(2), Value::Timestamp(20)]).unwrap(),
        Some(vec![
            Value::Int32(2),
            Value::Timestamp(20),
            Value::Float64(2.5)
        ])
    );
    assert!(db.table(&name("gone")).is_err());
    assert_eq!(tablet_dirs(dir.path()), 6);
}

#[test]
fn a_second_open_of_the_directory_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let err = Database::open(dir.path(), opts()).unwrap_err();
    assert!(matches!(err, StorageError::InUse(_)), "{err}");
    assert!(err.to_string().contains("in use"), "{err}");
    drop(db);
    open(dir.path());
}

#[test]
fn rows_land_in_the_tablet_their_hash_and_range_say() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let t = db
        .create_table(&name("r"), &schema(), &daily(3), IfExists::Error)
        .unwrap();
    assert_eq!(t.tablet_count(), 9);
    let mut batch = Vec::new();
    for uid in 0..40 {
        for d in 0..3 {
            batch.push((uid, d * DAY + uid as i64, uid as f64));
        }
    }
    let out = t.write(&rows(&t, WriteOp::Insert, &batch)).unwrap();
    assert_eq!((out.applied, out.errors.len()), (120, 0));
    t.flush().unwrap();
    let info = t.describe();
    // Each tablet holds rows of its own day only, and each uid lives in one bucket.
    let parts = t.scan_tablets(&ScanRequest::default()).unwrap();
    assert_eq!(parts.scans.len(), 9);
    let mut bucket_of_uid: BTreeMap<i32, u32> = BTreeMap::new();
    let mut seen = 0;
    for (scan, id) in parts.scans.into_iter().zip(parts.tablet_ids) {
        let tablet = info.tablets.iter().find(|x| x.id == id).unwrap();
        let Some(Value::Timestamp(lo)) = tablet.range.lower else {
            panic!("bounded ranges")
        };
        for b in scan {
            let b = b.unwrap();
            let u = b.column(0).as_primitive::<Int32Type>();
            let ts = b.column(1).as_primitive::<TimestampMicrosecondType>();
            for i in 0..b.num_rows() {
                assert!(ts.value(i) >= lo && ts.value(i) < lo + DAY);
                let bucket = *bucket_of_uid.entry(u.value(i)).or_insert(tablet.bucket);
                assert_eq!(bucket, tablet.bucket, "uid {} in two buckets", u.value(i));
                seen += 1;
            }
        }
    }
    assert_eq!(seen, 120);
    let used: std::collections::BTreeSet<u32> = bucket_of_uid.values().copied().collect();
    assert_eq!(used.len(), 3, "40 uids spread over all 3 buckets");
    for tablet in &info.tablets {
        assert!(
            tablet.stats.segment_rows > 0,
            "tablet {} is empty",
            tablet.id
        );
    }
}

#[test]
fn scans_prune_tablets_by_partition_columns() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let t = db
        .create_table(&name("r"), &schema(), &daily(4), IfExists::Error)
        .unwrap();
    let batch: Vec<_> = (0..20)
        .flat_map(|u| (0..4).map(move |d| (u, d * DAY + 7, d as f64)))
        .collect();
    t.write(&rows(&t, WriteOp::Insert, &batch)).unwrap();
    let count = |preds: Vec<Predicate>| {
        let req = ScanRequest {
            predicates: preds,
            ..Default::default()
        };
        let scan = t.scan(&req).unwrap();
        let tablets = scan.tablets_scanned();
        let rows: usize = scan.map(|b| b.unwrap().num_rows()).sum();
        (tablets, rows)
    };
    assert_eq!(count(vec![]), (12, 80));
    assert_eq!(
        count(vec![Predicate::cmp("uid", CmpOp::Eq, Value::Int32(5))]),
        (4, 4)
    );
    assert_eq!(
        count(vec![Predicate::cmp(
            "ts",
            CmpOp::Ge,
            Value::Timestamp(2 * DAY)
        )]),
        (6, 40)
    );
    assert_eq!(
        count(vec![
            Predicate::cmp("uid", CmpOp::Eq, Value::Int32(5)),
            Predicate::cmp("ts", CmpOp::Lt, Value::Timestamp(DAY)),
        ]),
        (1, 1)
    );
    let (tablets, n) = count(vec![Predicate::In {
        column: "uid".into(),
        values: vec![Value::Int32(1), Value::Int32(2), Value::Int32(3)],
    }]);
    assert!((4..=12).contains(&tablets));
    assert_eq!(n, 12);
    assert_eq!(
        count(vec![Predicate::cmp(
            "ts",
            CmpOp::Ge,
            Value::Timestamp(9 * DAY)
        )]),
        (0, 0)
    );
    // A predicate on another column prunes nothing but still filters.
    assert_eq!(
        count(vec![Predicate::cmp(
            "speed",
            CmpOp::Eq,
            Value::Float64(3.0)
        )]),
        (12, 20)
    );
    // Bad predicates are reported even when every tablet is pruned.
    let req = ScanRequest {
        predicates: vec![
            Predicate::cmp("ts", CmpOp::Ge, Value::Timestamp(9 * DAY)),
            Predicate::cmp("nope", CmpOp::Eq, Value::Int32(1)),
        ],
        ..Default::default()
    };
    assert!(t.scan(&req).unwrap_err().to_string().contains("nope"));
}

#[test]
fn a_batch_spanning_tablets_reports_row_errors_by_its_own_index() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let t = db
        .create_table(&name("r"), &schema(), &daily(2), IfExists::Error)
        .unwrap();
    t.write(&rows(
        &t,
        WriteOp::Insert,
        &[(1, 5, 0.0), (2, DAY + 5, 0.0)],
    ))
    .unwrap();
    let out = t
        .write(&rows(
            &t,
            WriteOp::Insert,
            &[
                (3, 1, 1.0),       // ok
                (1, 5, 9.0),       // duplicate
                (4, 5 * DAY, 1.0), // no range partition
                (5, DAY + 1, 1.0), // ok
                (2, DAY + 5, 9.0), // duplicate
            ],
        ))
        .unwrap();
    assert_eq!(out.applied, 2);
    let errs: Vec<(usize, RowErrorKind)> = out.errors.iter().map(|e| (e.row, e.kind)).collect();
    assert_eq!(
        errs,
        vec![
            (1, RowErrorKind::DuplicateKey),
            (2, RowErrorKind::NoPartition),
            (4, RowErrorKind::DuplicateKey)
        ]
    );
    assert!(
        out.errors[1].message.contains("ts = "),
        "{}",
        out.errors[1].message
    );
    // A batch-level problem (NULL key) writes nothing anywhere.
    let mut b = BatchBuilder::new(["uid", "ts", "speed"]);
    b.push(
        WriteOp::Insert,
        vec![Value::Int32(9), Value::Timestamp(3), Value::Null],
    );
    b.push(
        WriteOp::Insert,
        vec![Value::Int32(10), Value::Null, Value::Null],
    );
    assert!(b.build(&t.schema()).is_err() || t.write(&b.build(&t.schema()).unwrap()).is_err());
    assert_eq!(contents(&t, &ScanRequest::default()).len(), 4);
    assert_eq!(
        t.get(&[Value::Int32(9), Value::Timestamp(3)]).unwrap(),
        None
    );
    // Lookups route by key; keys outside every range simply do not exist.
    assert!(t
        .get(&[Value::Int32(5), Value::Timestamp(DAY + 1)])
        .unwrap()
        .is_some());
    assert_eq!(
        t.get(&[Value::Int32(4), Value::Timestamp(5 * DAY)])
            .unwrap(),
        None
    );
    assert!(t
        .get(&[Value::Utf8("x".into()), Value::Timestamp(1)])
        .is_err());
}

#[test]
fn range_partitions_are_added_and_dropped_online() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = open(dir.path());
        let t = db
            .create_table(&name("r"), &schema(), &daily(2), IfExists::Error)
            .unwrap();
        let out = t
            .write(&rows(&t, WriteOp::Insert, &[(1, 2 * DAY, 1.0)]))
            .unwrap();
        assert_eq!(out.errors[0].kind, RowErrorKind::NoPartition);
        // Even a batch that reached no tablet returns a usable snapshot timestamp.
        let at = ScanRequest {
            snapshot: Some(out.timestamp),
            ..Default::default()
        };
        assert_eq!(contents(&t, &at).len(), 0);
        db.add_range_partition(&name("r"), &day_range(2)).unwrap();
        let err = db
            .add_range_partition(
                &name("r"),
                &RangeBounds::new(Value::Timestamp(DAY / 2), Value::Timestamp(3 * DAY)),
            )
            .unwrap_err();
        assert!(err.to_string().contains("overlaps"), "{err}");
        assert_eq!(t.tablet_count(), 9);
        for d in 0..3 {
            let out = t
                .write(&rows(
                    &t,
                    WriteOp::Insert,
                    &[(1, d * DAY, 1.0), (2, d * DAY, 2.0)],
                ))
                .unwrap();
            assert_eq!(out.applied, 2);
        }
        t.flush().unwrap();
        // A scan started before the drop keeps reading the dropped partition.
        let before = t.scan(&ScanRequest::default()).unwrap();
        db.drop_range_partition(&name("r"), &day_range(0)).unwrap();
        assert!(db.drop_range_partition(&name("r"), &day_range(0)).is_err());
        assert_eq!(
            tablet_dirs(dir.path()),
            9,
            "files stay while a scan reads them"
        );
        let n: usize = before.map(|b| b.unwrap().num_rows()).sum();
        assert_eq!(n, 6);
        assert_eq!(tablet_dirs(dir.path()), 6, "and go when it ends");
        assert_eq!(contents(&t, &ScanRequest::default()).len(), 4);
        let out = t.write(&rows(&t, WriteOp::Insert, &[(1, 5, 1.0)])).unwrap();
        assert_eq!(out.errors[0].kind, RowErrorKind::NoPartition);
    }
    let db = open(dir.path());
    let t = db.table(&name("r")).unwrap();
    let keys: Vec<(i32, i64)> = contents(&t, &ScanRequest::default()).into_keys().collect();
    assert_eq!(keys, vec![(1, DAY), (1, 2 * DAY), (2, DAY), (2, 2 * DAY)]);
    assert_eq!(
        t.describe().partitioning.range.unwrap().partitions,
        vec![day_range(1), day_range(2)]
    );
}

#[test]
fn a_scan_reads_all_tablets_at_one_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let t = db
        .create_table(
            &name("r"),
            &schema(),
            &PartitionSpec::hash(["uid"], 4),
            IfExists::Error,
        )
        .unwrap();
    let first: Vec<_> = (0..50).map(|u| (u, 1, 1.0)).collect();
    t.write(&rows(&t, WriteOp::Insert, &first)).unwrap();
    let scan = t.scan(&ScanRequest::default()).unwrap();
    let snapshot = scan.snapshot();
    assert_eq!(scan.tablets_scanned(), 4);
    let second: Vec<_> = (0..50).map(|u| (u, 1, 2.0)).collect();
    t.write(&rows(&t, WriteOp::Upsert, &second)).unwrap();
    t.flush().unwrap();
    let n: usize = scan.map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(n, 50);
    let old = contents(
        &t,
        &ScanRequest {
            snapshot: Some(snapshot),
            ..Default::default()
        },
    );
    assert!(old.values().all(|s| *s == 1.0) && old.len() == 50);
    let new = contents(&t, &ScanRequest::default());
    assert!(new.values().all(|s| *s == 2.0) && new.len() == 50);
    // A limit stops early across tablets.
    let req = ScanRequest {
        limit: Some(7),
        batch_size: Some(3),
        ..Default::default()
    };
    let n: usize = t.scan(&req).unwrap().map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(n, 7);
    let future = ScanRequest {
        snapshot: Some(u64::MAX / 2),
        ..Default::default()
    };
    assert!(matches!(
        t.scan(&future),
        Err(StorageError::SnapshotInFuture { .. })
    ));
}

#[test]
fn bad_definitions_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let create = |n: &str, cols: Vec<ColumnSchema>, key: &[&str], spec: PartitionSpec| {
        let schema = Schema::new(cols, key).map_err(StorageError::from)?;
        db.create_table(&name(n), &schema, &spec, IfExists::Error)
            .map(|_| ())
    };
    let err = |r: Result<(), StorageError>| r.unwrap_err().to_string();
    let int = |n: &str| ColumnSchema::not_null(n, DataType::Int32);
    assert!(err(create(
        "a",
        vec![int("x"), int("x")],
        &["x"],
        PartitionSpec::default()
    ))
    .contains("more than once"));
    assert!(err(create(
        "a",
        vec![ColumnSchema::nullable("x", DataType::Int32)],
        &["x"],
        PartitionSpec::default()
    ))
    .contains("cannot be nullable"));
    assert!(err(create(
        "a",
        vec![ColumnSchema::not_null("x", DataType::Float64)],
        &["x"],
        PartitionSpec::default()
    ))
    .contains("floating point"));
    assert!(err(create(
        "a",
        vec![int("x")],
        &["y"],
        PartitionSpec::default()
    ))
    .contains("\"y\" does not exist"));
    assert!(err(create(
        "a",
        vec![int("x")],
        &["x"],
        PartitionSpec::hash(["x"], 0)
    ))
    .contains("partitions"));
    assert!(err(create(
        "a",
        vec![int("x")],
        &["x"],
        PartitionSpec::default().with_range(
            "x",
            vec![
                RangeBounds::new(Value::Int32(0), Value::Int32(10)),
                RangeBounds::new(Value::Int32(5), Value::Int32(20)),
            ]
        )
    ))
    .contains("overlaps"));
    assert!(err(create(
        "nope.a",
        vec![int("x")],
        &["x"],
        PartitionSpec::default()
    ))
    .contains("schema \"nope\" does not exist"));
    assert!(matches!(
        db.table(&name("missing")),
        Err(StorageError::UndefinedTable(_))
    ));
    assert!(db.rename_table(&name("missing"), &name("x")).is_err());
    assert!(db
        .add_range_partition(&name("missing"), &day_range(0))
        .is_err());
    assert!(TableName::parse("a b").is_err());
    assert!(
        db.list_tables(None).is_empty(),
        "no failed create left a table"
    );
    assert_eq!(tablet_dirs(dir.path()), 0, "no failed create left files");
    // A write naming an unknown column.
    let t = db
        .create_table(
            &name("t"),
            &schema(),
            &PartitionSpec::default(),
            IfExists::Error,
        )
        .unwrap();
    let mut b = BatchBuilder::new(["uid", "ts", "bogus"]);
    b.push(
        WriteOp::Insert,
        vec![Value::Int32(1), Value::Timestamp(1), Value::Int32(1)],
    );
    assert!(b.build(&t.schema()).is_err());
}

#[test]
fn a_dropped_table_handle_reports_the_drop() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let t = db
        .create_table(
            &name("t"),
            &schema(),
            &PartitionSpec::default(),
            IfExists::Error,
        )
        .unwrap();
    db.drop_table(&name("t"), IfExists::Error).unwrap();
    let err = t
        .write(&rows(&t, WriteOp::Insert, &[(1, 1, 1.0)]))
        .unwrap_err();
    assert!(matches!(err, StorageError::UndefinedTable(_)), "{err}");
    drop(t);
    assert_eq!(tablet_dirs(dir.path()), 0);
    // The name is free again.
    db.create_table(
        &name("t"),
        &schema(),
        &PartitionSpec::default(),
        IfExists::Error,
    )
    .unwrap();
}

/// `ON CONFLICT DO UPDATE SET b = EXCLUDED.b`: existing rows change only in `b`, new rows get
/// the whole batch row; the same after the WAL is replayed.
#[test]
fn upsert_columns_change_only_those_columns_of_existing_rows() {
    let dir = tempfile::tempdir().unwrap();
    let wide = Schema::new(
        vec![
            ColumnSchema::not_null("uid", DataType::Int32),
            ColumnSchema::nullable("a", DataType::Int32),
            ColumnSchema::nullable("b", DataType::Int32),
        ],
        &["uid"],
    )
    .unwrap();
    let batch = |t: &Table, op: WriteOp, rows: &[(i32, i32, i32)]| {
        let mut b = BatchBuilder::new(["uid", "a", "b"]);
        for &(u, a, v) in rows {
            b.push(op, vec![Value::Int32(u), Value::Int32(a), Value::Int32(v)]);
        }
        b.build(&t.schema()).unwrap()
    };
    let read = |t: &Table| -> Vec<Vec<Value>> {
        (1..=4)
            .filter_map(|u| t.get(&[Value::Int32(u)]).unwrap())
            .collect()
    };
    let row = |u, a, b| vec![Value::Int32(u), Value::Int32(a), Value::Int32(b)];
    let expected = vec![row(1, 1, 10), row(2, 2, 20), row(3, 30, 30), row(4, 40, 40)];
    {
        let db = open(dir.path());
        let t = db
            .create_table(
                &name("t"),
                &wide,
                &PartitionSpec::hash(["uid"], 3),
                IfExists::Error,
            )
            .unwrap();
        t.write(&batch(&t, WriteOp::Insert, &[(1, 1, 1)])).unwrap();
        t.flush().unwrap(); // key 1 in a segment
        t.write(&batch(&t, WriteOp::Insert, &[(2, 2, 2)])).unwrap(); // key 2 in the buffer
        let upsert = batch(&t, WriteOp::Upsert, &[(1, 9, 10), (2, 9, 20), (3, 30, 30)])
            .with_upsert_columns(["b"])
            .unwrap();
        let outcome = t.write(&upsert).unwrap();
        assert_eq!((outcome.applied, outcome.errors.len()), (3, 0));
        // Other operations in the same batch are untouched by the upsert columns.
        let mixed = nyala_storage::WriteBatch::new(
            batch(&t, WriteOp::Upsert, &[(4, 40, 40)]).rows().clone(),
            vec![WriteOp::Insert],
        )
        .unwrap()
        .with_upsert_columns(["b"])
        .unwrap();
        t.write(&mixed).unwrap();
        assert_eq!(read(&t), expected);
        let bad = batch(&t, WriteOp::Upsert, &[(1, 1, 1)]).with_upsert_columns(["nope"]);
        assert!(bad.is_err());
    }
    let db = open(dir.path());
    assert_eq!(read(&db.table(&name("t")).unwrap()), expected);
}

#[test]
fn compacting_a_table_leaves_one_segment_per_tablet_and_the_same_rows() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let t = db
        .create_table(&name("c"), &schema(), &daily(2), IfExists::Error)
        .unwrap();
    // Three flushes, then an update and a delete that land in the segments' deletion vectors.
    for round in 0..3i64 {
        let batch: Vec<(i32, i64, f64)> = (0..30)
            .flat_map(|uid| (0..2).map(move |d| (uid, d * DAY + round, round as f64)))
            .collect();
        t.write(&rows(&t, WriteOp::Insert, &batch)).unwrap();
        t.flush().unwrap();
    }
    t.write(&rows(&t, WriteOp::Update, &[(4, 1, -1.0)]))
        .unwrap();
    t.write(&rows(&t, WriteOp::Delete, &[(5, DAY + 2, 0.0)]))
        .unwrap();
    let before = contents(&t, &ScanRequest::default());
    assert_eq!(before.len(), 30 * 2 * 3 - 1);
    assert!(t.describe().tablets.iter().any(|x| x.stats.segments > 1));
    t.compact_all().unwrap();
    for tablet in t.describe().tablets {
        assert!(tablet.stats.segments <= 1, "tablet {}", tablet.id);
    }
    assert_eq!(contents(&t, &ScanRequest::default()), before);
    assert_eq!(before[&(4, 1)], -1.0);
    // A dropped table refuses, as its flush does.
    db.drop_table(&name("c"), IfExists::Error).unwrap();
    assert!(t.compact_all().is_err());
}

#[test]
fn scans_reuse_decoded_columns_and_return_what_the_files_hold() {
    let dir = tempfile::tempdir().unwrap();
    let spec = || PartitionSpec::hash(["uid"], 2);
    let all: Vec<(i32, i64, f64)> = (0..20)
        .flat_map(|uid| {
            (0..20i64).map(move |m| (uid, m * 60_000_000, (uid * 100) as f64 + m as f64))
        })
        .collect();
    let since = |t: i64| ScanRequest {
        predicates: vec![Predicate::cmp("ts", CmpOp::Ge, Value::Timestamp(t))],
        ..Default::default()
    };
    let one_uid = ScanRequest {
        predicates: vec![Predicate::cmp("uid", CmpOp::Eq, Value::Int32(3))],
        ..Default::default()
    };
    let limited = ScanRequest {
        limit: Some(5),
        ..Default::default()
    };
    let requests = [
        ScanRequest::default(),
        since(15 * 60_000_000),
        one_uid.clone(),
        ScanRequest {
            projection: Some(vec!["speed".into()]),
            predicates: vec![Predicate::cmp(
                "ts",
                CmpOp::Lt,
                Value::Timestamp(60_000_000),
            )],
            ..Default::default()
        },
    ];
    let results = |db: &Database| -> Vec<Vec<String>> {
        let t = db.table(&name("c")).unwrap();
        requests
            .iter()
            .map(|r| {
                let mut rows: Vec<String> = t
                    .scan(r)
                    .unwrap()
                    .flat_map(|b| {
                        let b = b.unwrap();
                        (0..b.num_rows())
                            .map(|i| {
                                b.columns()
                                    .iter()
                                    .map(|c| Value::from_array(c, i).unwrap().to_string())
                                    .collect::<Vec<_>>()
                                    .join(",")
                            })
                            .collect::<Vec<_>>()
                    })
                    .collect();
                rows.sort();
                rows
            })
            .collect()
    };
    // Row groups of 256 rows: each tablet's ~200 rows are one, of which one uid is a tenth.
    let with_cache = |bytes: u64| DatabaseOptions {
        tablet: nyala_storage::TabletOptions {
            row_group_rows: 256,
            column_cache_bytes: bytes,
            ..test_opts()
        },
        ..opts()
    };
    let expected = {
        let db = Database::open(dir.path(), with_cache(1 << 30)).unwrap();
        let t = db
            .create_table(&name("c"), &schema(), &spec(), IfExists::Error)
            .unwrap();
        t.write(&rows(&t, WriteOp::Insert, &all)).unwrap();
        t.flush().unwrap();
        // Deleted and updated rows live in the segments' deletion vectors.
        t.write(&rows(
            &t,
            WriteOp::Delete,
            &[(3, 16 * 60_000_000, 0.0), (7, 0, 0.0)],
        ))
        .unwrap();
        t.write(&rows(&t, WriteOp::Update, &[(4, 19 * 60_000_000, -1.0)]))
            .unwrap();
        t.flush().unwrap();
        // A narrow scan and a scan with a row limit read from the files: nothing is cached.
        // (The same narrow scan in `results` below reads the cached columns the full scans
        // leave, so both paths are compared with the uncached database.)
        assert_eq!(contents(&t, &one_uid).len(), 19);
        assert_eq!(
            t.scan(&limited)
                .unwrap()
                .map(|b| b.unwrap().num_rows())
                .sum::<usize>(),
            5
        );
        assert_eq!(db.column_cache_stats().misses, 0);
        assert_eq!(db.column_cache_stats().used_bytes, 0);
        let first = contents(&t, &ScanRequest::default());
        assert_eq!(first.len(), 400 - 2);
        assert_eq!(first[&(4, 19 * 60_000_000)], -1.0);
        let s = db.column_cache_stats();
        assert!(s.misses > 0 && s.hits == 0 && s.used_bytes > 0, "{s:?}");
        // The same scan again decodes nothing.
        assert_eq!(contents(&t, &ScanRequest::default()), first);
        let again = db.column_cache_stats();
        assert_eq!(again.misses, s.misses, "{again:?}");
        assert!(again.hits >= s.misses, "{again:?}");
        let since_15 = contents(&t, &since(15 * 60_000_000));
        assert_eq!(since_15.len(), 20 * 5 - 1);
        assert!(since_15.keys().all(|(_, ts)| *ts >= 15 * 60_000_000));
        results(&db)
    };
    // The same requests without a cache: every row comes from the files.
    let db = Database::open(dir.path(), with_cache(0)).unwrap();
    assert_eq!(results(&db), expected);
    assert_eq!(db.column_cache_stats(), Default::default());
}

#[test]
fn a_scan_split_into_parts_reads_every_row_once_from_the_version_it_planned() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let t = db
        .create_table(
            &name("p"),
            &schema(),
            &PartitionSpec::hash(["uid"], 2),
            IfExists::Error,
        )
        .unwrap();
    let minute = 60_000_000;
    let batch: Vec<(i32, i64, f64)> = (0..25)
        .flat_map(|uid| (0..30i64).map(move |m| (uid, m * minute, m as f64)))
        .collect();
    t.write(&rows(&t, WriteOp::Insert, &batch[..400])).unwrap();
    t.flush().unwrap();
    t.write(&rows(&t, WriteOp::Insert, &batch[400..])).unwrap();
    t.flush().unwrap();
    // In the buffer: an update and a delete of flushed rows, and new rows.
    t.write(&rows(&t, WriteOp::Update, &[(3, 5 * minute, -1.0)]))
        .unwrap();
    t.write(&rows(&t, WriteOp::Delete, &[(4, 6 * minute, 0.0)]))
        .unwrap();
    t.write(&rows(
        &t,
        WriteOp::Insert,
        &[(30, 0, 1.0), (31, minute, 2.0)],
    ))
    .unwrap();
    let requests = [
        ScanRequest::default(),
        ScanRequest {
            predicates: vec![Predicate::cmp(
                "ts",
                CmpOp::Ge,
                Value::Timestamp(20 * minute),
            )],
            ..Default::default()
        },
    ];
    for (round, req) in requests.iter().enumerate() {
        for parts in 1..=5 {
            let expected = contents(&t, req);
            let mut plan = t.plan_scan(req).unwrap();
            plan.split(parts);
            assert_eq!(plan.partitions(), 2 * parts);
            // Writes, a flush and a compaction after planning change neither what the plan
            // reads nor where its parts cut the segments.
            let later = (round as i32, (40 + parts) as i64 * minute, 9.0);
            t.write(&rows(&t, WriteOp::Upsert, &[later])).unwrap();
            t.write(&rows(
                &t,
                WriteOp::Delete,
                &[(7, parts as i64 * minute, 0.0)],
            ))
            .unwrap();
            if parts % 2 == 0 {
                t.flush().unwrap();
            } else {
                t.compact_all().unwrap();
            }
            let mut got = BTreeMap::new();
            for i in 0..plan.partitions() {
                if i == 1 {
                    // Between the parts of one tablet, too.
                    t.write(&rows(
                        &t,
                        WriteOp::Delete,
                        &[(8, parts as i64 * minute, 0.0)],
                    ))
                    .unwrap();
                    t.compact_all().unwrap();
                }
                for b in plan.open(i).unwrap() {
                    let b = b.unwrap();
                    let u = b.column(0).as_primitive::<Int32Type>();
                    let ts = b.column(1).as_primitive::<TimestampMicrosecondType>();
                    let s = b.column(2).as_primitive::<Float64Type>();
                    for r in 0..b.num_rows() {
                        let key = (u.value(r), ts.value(r));
                        assert!(
                            got.insert(key, s.value(r)).is_none(),
                            "{key:?} twice, {parts} parts"
                        );
                    }
                }
            }
            assert_eq!(got, expected, "{parts} parts, request {round}");
            assert_ne!(
                contents(&t, req),
                expected,
                "the later writes are seen later"
            );
        }
    }
}
