//! Time-series keys (id, ts): segments written one time window after another overlap in whole-key
//! range; per-column key bounds still keep presence checks and scans away from them.

mod common;

use arrow::array::AsArray;
use arrow::datatypes::Int32Type;
use common::{sorted_i32, test_opts};
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
    let vs = sorted_i32(t.scan(&req).unwrap());
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

/// (id, lane, ts) key with a value: many series, each long enough to span several key blocks.
fn series_schema() -> Schema {
    Schema::new(
        vec![
            ColumnSchema::not_null("id", DataType::Int32),
            ColumnSchema::not_null("lane", DataType::Int16),
            ColumnSchema::not_null("ts", DataType::Timestamp),
            ColumnSchema::nullable("v", DataType::Int32),
        ],
        &["id", "lane", "ts"],
    )
    .unwrap()
}

#[test]
fn a_time_range_skips_the_old_blocks_of_every_series_and_returns_what_a_filter_would() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tablet::create(dir.path(), &series_schema(), test_opts()).unwrap();
    let minute = |m: i64| Value::Timestamp(m * 60_000_000);
    // 12 ids x 2 lanes x 60 minutes, one segment; v encodes the key.
    let mut rows = std::collections::BTreeMap::new();
    let mut b = BatchBuilder::new(["id", "lane", "ts", "v"]);
    for id in 0..12 {
        for lane in 0..2i16 {
            for m in 0..60i64 {
                let v = id * 10_000 + lane as i32 * 1_000 + m as i32;
                b.push(
                    WriteOp::Insert,
                    vec![
                        Value::Int32(id),
                        Value::Int16(lane),
                        minute(m),
                        Value::Int32(v),
                    ],
                );
                rows.insert((id, lane, m), v);
            }
        }
    }
    t.write(&b.build(&t.schema()).unwrap()).unwrap();
    t.flush().unwrap();
    // Deleted and updated rows in kept and skipped blocks alike: the segment's deletion
    // vector and the buffer still apply.
    let mut b = BatchBuilder::new(["id", "lane", "ts", "v"]);
    for (id, lane, m) in [(3, 1, 59), (4, 0, 2), (5, 1, 50), (7, 0, 57)] {
        b.push(
            WriteOp::Delete,
            vec![Value::Int32(id), Value::Int16(lane), minute(m), Value::Null],
        );
        rows.remove(&(id, lane, m));
    }
    for (id, lane, m) in [(2, 0, 55), (9, 1, 3)] {
        b.push(
            WriteOp::Update,
            vec![
                Value::Int32(id),
                Value::Int16(lane),
                minute(m),
                Value::Int32(-1),
            ],
        );
        rows.insert((id, lane, m), -1);
    }
    t.write(&b.build(&t.schema()).unwrap()).unwrap();

    type Check = Box<dyn Fn(i32, i16, i64) -> bool>;
    let cases: Vec<(Vec<Predicate>, Check, u64)> = vec![
        // The last 10 minutes of each series (15 blocks of 4 rows): the blocks of minutes
        // 0..48 are skipped, the one holding 48..52 is not.
        (
            vec![Predicate::cmp("ts", CmpOp::Ge, minute(50))],
            Box::new(|_, _, m| m >= 50),
            24 * 48,
        ),
        (
            vec![Predicate::cmp("ts", CmpOp::Lt, minute(3))],
            Box::new(|_, _, m| m < 3),
            // Each series' last block ends where the next series starts, which unbounds its
            // ts: kept, but for the last series, which ends at the segment's last key.
            24 * 52 + 4,
        ),
        (
            vec![
                Predicate::cmp("ts", CmpOp::Gt, minute(20)),
                Predicate::cmp("ts", CmpOp::Le, minute(23)),
            ],
            Box::new(|_, _, m| m > 20 && m <= 23),
            24 * 52 + 4,
        ),
        (
            vec![Predicate::In {
                column: "ts".into(),
                values: vec![minute(2), minute(55)],
            }],
            Box::new(|_, _, m| m == 2 || m == 55),
            24 * 48 + 4,
        ),
        // A middle key column: blocks of one id are bounded in lane.
        (
            vec![Predicate::cmp("lane", CmpOp::Eq, Value::Int16(1))],
            Box::new(|_, lane, _| lane == 1),
            // Lane 0's blocks but the one that reaches lane 1's first key.
            12 * 56,
        ),
        (
            vec![
                Predicate::In {
                    column: "id".into(),
                    values: vec![Value::Int32(2), Value::Int32(9)],
                },
                Predicate::cmp("ts", CmpOp::Ge, minute(58)),
            ],
            Box::new(|id, _, m| (id == 2 || id == 9) && m >= 58),
            // Kept: the last block of each series of ids 2 and 9, and the last of ids 1
            // and 8, which reach the next id.
            1440 - 4 * 4 - 8,
        ),
        // Bounds that contradict each other select nothing (and skip nothing: the key range
        // is empty before any block is looked at).
        (
            vec![
                Predicate::cmp("id", CmpOp::Ge, Value::Int32(9)),
                Predicate::cmp("id", CmpOp::Lt, Value::Int32(2)),
            ],
            Box::new(|_, _, _| false),
            0,
        ),
        // A value column bounds nothing: every block is read.
        (
            vec![Predicate::cmp("v", CmpOp::Lt, Value::Int32(0))],
            Box::new(|_, _, _| true),
            0,
        ),
    ];
    for (i, (predicates, check, skipped)) in cases.into_iter().enumerate() {
        let req = ScanRequest {
            projection: Some(vec!["v".into()]),
            predicates,
            ..Default::default()
        };
        let mut scan = t.scan(&req).unwrap();
        let got = sorted_i32(scan.by_ref());
        let mut want: Vec<i32> = rows
            .iter()
            .filter(|((id, lane, m), v)| check(*id, *lane, *m) && (i != 7 || **v < 0))
            .map(|(_, v)| *v)
            .collect();
        want.sort_unstable();
        assert_eq!(got, want, "case {i}");
        assert_eq!(scan.rows_skipped(), skipped, "case {i}");
    }
}
