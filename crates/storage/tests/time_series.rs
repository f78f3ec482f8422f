//! Time-series keys (id, ts): segments written one time window after another overlap in whole-key
//! range; per-column key bounds still keep presence checks and scans away from them.

mod common;

use arrow::array::AsArray;
use arrow::datatypes::Int32Type;
use common::test_opts;
use nyala_storage::{
    BatchBuilder, CmpOp, ColumnSchema, DataType, Predicate, RowErrorKind, ScanRequest, Schema,
    Tablet, Value, WriteOp,
};

fn schema() -> Schema {
    Schema::new(
        vec![
            ColumnSchema::not_null("id", DataType::Int32),
            ColumnSchema::not_null("ts", DataType::Timestamp),
            ColumnSchema::nullable("v", DataType::Int32),
        ],
        &["id", "ts"],
    )
    .unwrap()
}

#[test]
fn windows_of_time_series_are_pruned_and_still_checked() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tablet::create(dir.path(), &schema(), test_opts()).unwrap();
    // Five windows of ten minutes, each flushed into its own segment.
    for w in 0..5i64 {
        let mut b = BatchBuilder::new(["id", "ts", "v"]);
        for m in w * 10..(w + 1) * 10 {
            for id in 0..20 {
                b.push(
                    WriteOp::Insert,
                    vec![
                        Value::Int32(id),
                        Value::Timestamp(m * 60_000_000),
                        Value::Int32(m as i32),
                    ],
                );
            }
        }
        assert!(t
            .write(&b.build(&t.schema()).unwrap())
            .unwrap()
            .errors
            .is_empty());
        t.flush().unwrap();
    }
    assert_eq!(t.stats().segments, 5);
    // An insert of an existing key in an old window is still a duplicate; a new minute is not.
    let mut b = BatchBuilder::new(["id", "ts", "v"]);
    b.push(
        WriteOp::Insert,
        vec![
            Value::Int32(3),
            Value::Timestamp(12 * 60_000_000),
            Value::Int32(0),
        ],
    );
    b.push(
        WriteOp::Insert,
        vec![
            Value::Int32(3),
            Value::Timestamp(50 * 60_000_000),
            Value::Int32(50),
        ],
    );
    b.push(
        WriteOp::Update,
        vec![
            Value::Int32(4),
            Value::Timestamp(33 * 60_000_000),
            Value::Int32(-1),
        ],
    );
    let out = t.write(&b.build(&t.schema()).unwrap()).unwrap();
    assert_eq!(out.errors.len(), 1);
    assert_eq!(
        (out.errors[0].row, out.errors[0].kind),
        (0, RowErrorKind::DuplicateKey)
    );
    // A time range reads only the windows it covers.
    let ts = |m: i64| Value::Timestamp(m * 60_000_000);
    let req = ScanRequest {
        projection: Some(vec!["v".into()]),
        predicates: vec![
            Predicate::cmp("ts", CmpOp::Ge, ts(30)),
            Predicate::cmp("ts", CmpOp::Lt, ts(40)),
        ],
        ..Default::default()
    };
    let mut scan = t.scan(&req).unwrap();
    let mut vs: Vec<i32> = vec![];
    for b in scan.by_ref() {
        vs.extend(
            b.unwrap()
                .column(0)
                .as_primitive::<Int32Type>()
                .values()
                .iter(),
        );
    }
    assert_eq!(scan.segments_read(), 1, "only the window 30..40 is read");
    assert_eq!(vs.len(), 200);
    assert_eq!(
        vs.iter().filter(|v| **v == -1).count(),
        1,
        "the update is seen (it lives in the buffer)"
    );
    // A bound inside a window: that window checks each row, the later one (every row
    // matches by its bounds) skips the check; the buffer's newer minute is checked too.
    let req = ScanRequest {
        projection: Some(vec!["v".into()]),
        predicates: vec![Predicate::cmp("ts", CmpOp::Ge, ts(35))],
        ..Default::default()
    };
    let mut vs: Vec<i32> = t
        .scan(&req)
        .unwrap()
        .flat_map(|b| {
            let b = b.unwrap();
            b.column(0).as_primitive::<Int32Type>().values().to_vec()
        })
        .collect();
    vs.sort_unstable();
    assert_eq!(vs.len(), 15 * 20 + 1);
    assert_eq!((vs[0], vs[vs.len() - 1]), (35, 50));
    let req = ScanRequest {
        predicates: vec![Predicate::In {
            column: "ts".into(),
            values: vec![ts(5), ts(45)],
        }],
        ..Default::default()
    };
    let mut scan = t.scan(&req).unwrap();
    let n: usize = scan.by_ref().map(|b| b.unwrap().num_rows()).sum();
    assert_eq!((n, scan.segments_read()), (40, 2));
    // Reopen: the bounds come back from the manifest.
    drop(scan);
    drop(t);
    let t = Tablet::open(dir.path(), test_opts()).unwrap();
    let req = ScanRequest {
        predicates: vec![Predicate::cmp("ts", CmpOp::Eq, ts(7))],
        ..Default::default()
    };
    let mut scan = t.scan(&req).unwrap();
    let n: usize = scan.by_ref().map(|b| b.unwrap().num_rows()).sum();
    assert_eq!((n, scan.segments_read()), (20, 1));
    assert_eq!(
        t.get(&[Value::Int32(3), ts(50)]).unwrap().unwrap()[2],
        Value::Int32(50)
    );
}
