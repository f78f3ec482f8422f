//! The write operations, lookups and scans behave as documented, in the buffer and in segments.

mod common;

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use common::*;
use nyala_storage::{
    BatchBuilder, CmpOp, Predicate, RowErrorKind, ScanRequest, StorageError, Tablet, Value, WriteOp,
};

fn s(x: &str) -> Option<String> {
    Some(x.to_string())
}

#[test]
fn kudu_semantics_in_buffer_and_segments() {
    let dir = tempfile::tempdir().unwrap();
    let t = create(dir.path());
    for flush_between in [false, true] {
        let base = if flush_between { 100 } else { 0 };
        let o = write1(&t, WriteOp::Insert, base + 1, (s("a"), Some(1)));
        assert_eq!((o.applied, o.errors.len()), (1, 0));
        if flush_between {
            t.flush().unwrap();
        }
        let o = write1(&t, WriteOp::Insert, base + 1, (s("b"), Some(2)));
        assert_eq!(o.errors.len(), 1);
        assert_eq!(o.errors[0].kind, RowErrorKind::DuplicateKey);
        assert!(
            o.errors[0]
                .message
                .contains(&format!("(id)=({})", base + 1)),
            "{}",
            o.errors[0].message
        );
        let o = write1(&t, WriteOp::InsertIgnore, base + 1, (s("b"), Some(2)));
        assert_eq!((o.applied, o.ignored), (0, 1));
        assert_eq!(
            t.get(&[Value::Int64(base + 1)]).unwrap().unwrap()[1],
            Value::Utf8("a".into())
        );

        let o = write1(&t, WriteOp::Update, base + 2, (s("x"), None));
        assert_eq!(o.errors[0].kind, RowErrorKind::KeyNotFound);
        let o = write1(&t, WriteOp::UpdateIgnore, base + 2, (s("x"), None));
        assert_eq!(o.ignored, 1);
        let o = write1(&t, WriteOp::Update, base + 1, (s("c"), Some(3)));
        assert_eq!(o.applied, 1);
        if flush_between {
            t.flush().unwrap();
        }
        write1(&t, WriteOp::Upsert, base + 1, (s("d"), None));
        write1(&t, WriteOp::Upsert, base + 2, (s("e"), Some(5)));
        let all = scan_all(&t, None);
        assert_eq!(all[&(base + 1)], (s("d"), None));
        assert_eq!(all[&(base + 2)], (s("e"), Some(5)));
        if flush_between {
            t.flush().unwrap();
        }
        let o = write1(&t, WriteOp::Delete, base + 1, (None, None));
        assert_eq!(o.applied, 1);
        let o = write1(&t, WriteOp::Delete, base + 1, (None, None));
        assert_eq!(o.errors[0].kind, RowErrorKind::KeyNotFound);
        let o = write1(&t, WriteOp::DeleteIgnore, base + 1, (None, None));
        assert_eq!(o.ignored, 1);
        assert_eq!(t.get(&[Value::Int64(base + 1)]).unwrap(), None);
        // Re-insert after delete.
        let o = write1(&t, WriteOp::Insert, base + 1, (s("f"), Some(6)));
        assert_eq!(o.applied, 1);
        assert_eq!(scan_all(&t, None)[&(base + 1)], (s("f"), Some(6)));
    }
}

#[test]
fn per_row_errors_do_not_stop_the_batch_and_last_op_on_a_key_wins() {
    let dir = tempfile::tempdir().unwrap();
    let t = create(dir.path());
    let mut b = BatchBuilder::new(["id", "v", "n"]);
    b.push(
        WriteOp::Insert,
        vec![Value::Int64(1), Value::Utf8("a".into()), Value::Null],
    );
    b.push(
        WriteOp::Insert,
        vec![Value::Int64(1), Value::Utf8("dup".into()), Value::Null],
    );
    b.push(
        WriteOp::Delete,
        vec![Value::Int64(9), Value::Null, Value::Null],
    );
    b.push(
        WriteOp::Insert,
        vec![Value::Int64(2), Value::Utf8("b".into()), Value::Int32(2)],
    );
    b.push(
        WriteOp::Upsert,
        vec![Value::Int64(2), Value::Utf8("b2".into()), Value::Int32(3)],
    );
    let o = t.write(&b.build(&t.schema()).unwrap()).unwrap();
    assert_eq!(o.applied, 3);
    assert_eq!(
        o.errors.iter().map(|e| e.row).collect::<Vec<_>>(),
        vec![1, 3 - 1]
    );
    let all = scan_all(&t, None);
    assert_eq!(all.len(), 2);
    assert_eq!(all[&2], (s("b2"), Some(3)));
}

#[test]
fn partial_updates_keep_other_columns() {
    let dir = tempfile::tempdir().unwrap();
    let t = create(dir.path());
    write1(&t, WriteOp::Insert, 1, (s("a"), Some(1)));
    write1(&t, WriteOp::Insert, 2, (s("b"), Some(2)));
    t.flush().unwrap();
    let mut b = BatchBuilder::new(["id", "n"]);
    b.push(WriteOp::Update, vec![Value::Int64(1), Value::Int32(10)]);
    b.push(WriteOp::Upsert, vec![Value::Int64(2), Value::Int32(20)]);
    b.push(WriteOp::Upsert, vec![Value::Int64(3), Value::Int32(30)]);
    t.write(&b.build(&t.schema()).unwrap()).unwrap();
    let all = scan_all(&t, None);
    assert_eq!(all[&1], (s("a"), Some(10)));
    assert_eq!(all[&2], (s("b"), Some(20)));
    assert_eq!(all[&3], (None, Some(30)));
    // Again, with the old row in the buffer.
    let mut b = BatchBuilder::new(["id", "v"]);
    b.push(
        WriteOp::Update,
        vec![Value::Int64(1), Value::Utf8("z".into())],
    );
    t.write(&b.build(&t.schema()).unwrap()).unwrap();
    assert_eq!(scan_all(&t, None)[&1], (s("z"), Some(10)));
}

#[test]
fn snapshots_read_the_past_across_flushes_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let t = create(dir.path());
    let t1 = write1(&t, WriteOp::Insert, 1, (s("v1"), None)).timestamp;
    let t2 = write1(&t, WriteOp::Upsert, 1, (s("v2"), None)).timestamp;
    t.flush().unwrap();
    let t3 = write1(&t, WriteOp::Upsert, 1, (s("v3"), None)).timestamp;
    let t4 = write1(&t, WriteOp::Delete, 1, (None, None)).timestamp;
    let check = |t: &Tablet| {
        let at = |ts| {
            t.get_at(&[Value::Int64(1)], ts)
                .unwrap()
                .map(|v| v[1].clone())
        };
        assert_eq!(at(t1 - 1), None);
        assert_eq!(at(t1), Some(Value::Utf8("v1".into())));
        assert_eq!(at(t2), Some(Value::Utf8("v2".into())));
        assert_eq!(at(t3), Some(Value::Utf8("v3".into())));
        assert_eq!(at(t4), None);
        assert_eq!(scan_all(t, Some(t2))[&1].0, s("v2"));
        assert!(scan_all(t, Some(t4)).is_empty());
        assert!(scan_all(t, Some(t1 - 1)).is_empty());
    };
    check(&t);
    t.flush().unwrap();
    check(&t);
    drop(t);
    let t = Tablet::open(dir.path(), test_opts()).unwrap();
    check(&t);
    assert!(matches!(
        t.get_at(&[Value::Int64(1)], t.latest_timestamp() + 1_000_000),
        Err(StorageError::SnapshotInFuture { .. })
    ));
}

#[test]
fn history_outside_retention_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let opts = nyala_storage::TabletOptions {
        history_retention: std::time::Duration::ZERO,
        ..test_opts()
    };
    let t = Tablet::create(dir.path(), &kv_schema(), opts).unwrap();
    let t1 = write1(&t, WriteOp::Insert, 1, (s("v1"), None)).timestamp;
    write1(&t, WriteOp::Upsert, 1, (s("v2"), None));
    t.flush().unwrap();
    assert!(matches!(
        t.get_at(&[Value::Int64(1)], t1),
        Err(StorageError::SnapshotTooOld { .. })
    ));
    assert_eq!(
        t.stats().segment_rows,
        1,
        "superseded version purged at flush"
    );
    assert_eq!(scan_all(&t, None)[&1].0, s("v2"));
}

#[test]
fn predicates_projection_and_limit() {
    let dir = tempfile::tempdir().unwrap();
    let t = create(dir.path());
    let mut b = BatchBuilder::new(["id", "v", "n"]);
    for i in 0..100i64 {
        let n = if i % 10 == 0 {
            Value::Null
        } else {
            Value::Int32((i % 7) as i32)
        };
        b.push(
            WriteOp::Insert,
            vec![Value::Int64(i), Value::Utf8(format!("s{i}")), n],
        );
    }
    t.write(&b.build(&t.schema()).unwrap()).unwrap();
    t.flush().unwrap();
    // Some rows in the buffer too, and some deleted from the segment.
    write1(&t, WriteOp::Upsert, 50, (s("fresh"), Some(3)));
    write1(&t, WriteOp::Delete, 51, (None, None));
    let ids = |preds: Vec<Predicate>| -> Vec<i64> {
        let req = ScanRequest {
            projection: Some(vec!["id".into()]),
            predicates: preds,
            ..Default::default()
        };
        let mut out: Vec<i64> = t
            .scan(&req)
            .unwrap()
            .flat_map(|b| {
                let b = b.unwrap();
                assert_eq!(b.num_columns(), 1);
                b.column(0).as_primitive::<Int64Type>().values().to_vec()
            })
            .collect();
        out.sort();
        out
    };
    assert_eq!(
        ids(vec![Predicate::cmp("id", CmpOp::Eq, Value::Int64(50))]),
        vec![50]
    );
    assert_eq!(
        ids(vec![Predicate::cmp("id", CmpOp::Eq, Value::Int64(51))]),
        Vec::<i64>::new()
    );
    assert_eq!(
        ids(vec![Predicate::cmp("id", CmpOp::Ge, Value::Int64(97))]),
        vec![97, 98, 99]
    );
    assert_eq!(
        ids(vec![Predicate::cmp("id", CmpOp::Lt, Value::Int64(2))]),
        vec![0, 1]
    );
    assert_eq!(
        ids(vec![
            Predicate::cmp("id", CmpOp::Gt, Value::Int64(45)),
            Predicate::cmp("id", CmpOp::Le, Value::Int64(52)),
        ]),
        vec![46, 47, 48, 49, 50, 52]
    );
    assert_eq!(
        ids(vec![Predicate::In {
            column: "id".into(),
            values: vec![Value::Int64(3), Value::Int64(51), Value::Int64(77)]
        }]),
        vec![3, 77]
    );
    assert_eq!(
        ids(vec![Predicate::IsNull("n".into())]),
        vec![0, 10, 20, 30, 40, 60, 70, 80, 90]
    );
    // Ten NULLs, minus row 50 (now 3); row 51 is deleted.
    assert_eq!(
        ids(vec![Predicate::IsNotNull("n".into())]).len(),
        100 - 10 + 1 - 1
    );
    assert_eq!(
        ids(vec![Predicate::cmp(
            "v",
            CmpOp::Eq,
            Value::Utf8("fresh".into())
        )]),
        vec![50]
    );
    let expected: Vec<i64> = (0..100)
        .filter(|i| (i % 10 != 0 && i % 7 == 3) || *i == 50)
        .collect();
    assert_eq!(
        ids(vec![Predicate::cmp("n", CmpOp::Eq, Value::Int32(3))]),
        expected
    );
    // Limit and empty projection (row counts only).
    let req = ScanRequest {
        limit: Some(5),
        ..Default::default()
    };
    assert_eq!(count_rows(&t, &req), 5);
    let req = ScanRequest {
        projection: Some(vec![]),
        ..Default::default()
    };
    assert_eq!(count_rows(&t, &req), 99);
    // A predicate on a column that is not output (`count(*) ... WHERE n = 3`; `ids` above
    // covers one other column): only the rows it keeps are counted.
    let req = ScanRequest {
        projection: Some(vec![]),
        predicates: vec![Predicate::cmp("n", CmpOp::Eq, Value::Int32(3))],
        ..Default::default()
    };
    assert_eq!(count_rows(&t, &req), expected.len());
    // Bad predicates are clear errors.
    let bad = ScanRequest {
        predicates: vec![Predicate::cmp("n", CmpOp::Eq, Value::Utf8("x".into()))],
        ..Default::default()
    };
    assert!(t
        .scan(&bad)
        .unwrap_err()
        .to_string()
        .contains("expected a value of type INT"));
    let bad = ScanRequest {
        predicates: vec![Predicate::IsNull("nope".into())],
        ..Default::default()
    };
    assert!(t
        .scan(&bad)
        .unwrap_err()
        .to_string()
        .contains("does not exist"));
}

#[test]
fn async_durability_survives_a_clean_close() {
    let dir = tempfile::tempdir().unwrap();
    let opts = nyala_storage::TabletOptions {
        durability: nyala_storage::Durability::Async {
            interval: std::time::Duration::from_millis(20),
        },
        ..test_opts()
    };
    let t = Tablet::create(dir.path(), &kv_schema(), opts.clone()).unwrap();
    for i in 0..50 {
        write1(&t, WriteOp::Insert, i, (s("x"), Some(i as i32)));
    }
    assert_eq!(scan_all(&t, None).len(), 50, "visible at once");
    drop(t);
    let t = Tablet::open(dir.path(), opts).unwrap();
    assert_eq!(scan_all(&t, None).len(), 50);
}

#[test]
fn scans_and_tablets_can_move_between_threads() {
    fn assert_send<T: Send>() {}
    fn assert_sync<T: Sync>() {}
    assert_send::<nyala_storage::TabletScan>();
    assert_send::<Tablet>();
    assert_sync::<Tablet>();
}

#[test]
fn float_predicates_agree_before_and_after_flush_even_with_nan() {
    use nyala_storage::{ColumnSchema, DataType, Schema};
    let dir = tempfile::tempdir().unwrap();
    let schema = Schema::new(
        vec![
            ColumnSchema::not_null("id", DataType::Int64),
            ColumnSchema::nullable("f", DataType::Float64),
        ],
        &["id"],
    )
    .unwrap();
    let t = Tablet::create(dir.path(), &schema, test_opts()).unwrap();
    let mut b = BatchBuilder::new(["id", "f"]);
    b.push(WriteOp::Insert, vec![Value::Int64(1), Value::Float64(1.0)]);
    b.push(
        WriteOp::Insert,
        vec![Value::Int64(2), Value::Float64(f64::NAN)],
    );
    t.write(&b.build(&t.schema()).unwrap()).unwrap();
    let count = |t: &Tablet, op, v: f64| -> usize {
        let req = ScanRequest {
            predicates: vec![Predicate::cmp("f", op, Value::Float64(v))],
            ..Default::default()
        };
        count_rows(t, &req)
    };
    let cases = [
        (CmpOp::Gt, 5.0),
        (CmpOp::Eq, f64::NAN),
        (CmpOp::Lt, 2.0),
        (CmpOp::Ge, 1.0),
    ];
    let before: Vec<usize> = cases.iter().map(|(op, v)| count(&t, *op, *v)).collect();
    t.flush().unwrap();
    let after: Vec<usize> = cases.iter().map(|(op, v)| count(&t, *op, *v)).collect();
    assert_eq!(before, after);
}

#[test]
fn latest_reads_never_fail_with_zero_retention_while_writing_and_flushing() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let opts = nyala_storage::TabletOptions {
        history_retention: std::time::Duration::ZERO,
        ..test_opts()
    };
    let t = Arc::new(Tablet::create(dir.path(), &kv_schema(), opts).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let mut hs = vec![];
    for w in 0..2i64 {
        let (t, stop) = (t.clone(), stop.clone());
        hs.push(std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                write1(&t, WriteOp::Upsert, w, (s("x"), Some(i)));
                i += 1;
            }
        }));
    }
    {
        let (t, stop) = (t.clone(), stop.clone());
        hs.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                t.flush().unwrap();
            }
        }));
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(700);
    while std::time::Instant::now() < deadline {
        t.get(&[Value::Int64(0)]).unwrap();
        scan_all(&t, None);
    }
    stop.store(true, Ordering::Relaxed);
    for h in hs {
        h.join().unwrap();
    }
}
