//! ALTER TABLE ADD/DROP/RENAME COLUMN with data in the buffer and in segments, across flushes
//! and restarts, under concurrent writes; and the changes that must be refused.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use common::test_opts;
use nyala_storage::{
    BatchBuilder, CmpOp, ColumnSchema, DataType, Database, DatabaseOptions, IfExists,
    PartitionSpec, Predicate, ScanRequest, Schema, SchemaChange, StorageError, Table, TableName,
    Value, WriteOp,
};

fn open(dir: &Path) -> Database {
    Database::open(
        dir,
        DatabaseOptions {
            tablet: test_opts(),
            scan_threads: 2,
            ..Default::default()
        },
    )
    .unwrap()
}

fn name() -> TableName {
    TableName::parse("t").unwrap()
}

fn create(db: &Database) -> Table {
    let schema = Schema::new(
        vec![
            ColumnSchema::nullable("v", DataType::Utf8),
            ColumnSchema::not_null("id", DataType::Int64),
            ColumnSchema::nullable("n", DataType::Int32),
        ],
        &["id"],
    )
    .unwrap();
    db.create_table(
        &name(),
        &schema,
        &PartitionSpec::hash(["id"], 2),
        IfExists::Error,
    )
    .unwrap()
}

fn write(t: &Table, op: WriteOp, cols: &[&str], rows: Vec<Vec<Value>>) {
    let mut b = BatchBuilder::new(cols.iter().copied());
    for r in rows {
        b.push(op, r);
    }
    let out = t.write(&b.build(&t.schema()).unwrap()).unwrap();
    assert!(out.errors.is_empty(), "{:?}", out.errors);
}

/// Every row as column name -> value, keyed by id.
fn rows(t: &Table, preds: Vec<Predicate>) -> BTreeMap<i64, BTreeMap<String, Value>> {
    let req = ScanRequest {
        predicates: preds,
        ..Default::default()
    };
    let scan = t.scan(&req).unwrap();
    let schema = scan.schema().clone();
    let mut out = BTreeMap::new();
    for b in scan {
        let b = b.unwrap();
        assert_eq!(b.schema(), schema, "every batch has the scan's schema");
        for i in 0..b.num_rows() {
            let mut row = BTreeMap::new();
            for (f, c) in schema.fields().iter().zip(b.columns()) {
                row.insert(f.name().clone(), Value::from_array(c, i).unwrap());
            }
            let Value::Int64(id) = row["id"] else {
                panic!("id")
            };
            out.insert(id, row);
        }
    }
    out
}

fn s(v: &str) -> Value {
    Value::Utf8(v.into())
}

#[test]
fn columns_are_added_dropped_and_renamed_without_rewriting_data() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = open(dir.path());
        let t = create(&db);
        // Rows 0..10 go to segments, 10..20 stay in the buffer.
        write(
            &t,
            WriteOp::Insert,
            &["id", "v", "n"],
            (0..10)
                .map(|i| vec![Value::Int64(i), s("seg"), Value::Int32(i as i32)])
                .collect(),
        );
        t.flush().unwrap();
        write(
            &t,
            WriteOp::Insert,
            &["id", "v", "n"],
            (10..20)
                .map(|i| vec![Value::Int64(i), s("buf"), Value::Int32(i as i32)])
                .collect(),
        );
        db.alter_table(
            &name(),
            &SchemaChange::AddColumn(ColumnSchema::nullable("note", DataType::Utf8)),
        )
        .unwrap();
        db.alter_table(
            &name(),
            &SchemaChange::AddColumn(
                ColumnSchema::not_null("speed", DataType::Float64)
                    .with_default(Value::Float64(50.0)),
            ),
        )
        .unwrap();
        let all = rows(&t, vec![]);
        assert_eq!(all.len(), 20);
        for r in all.values() {
            assert_eq!(r["note"], Value::Null);
            assert_eq!(r["speed"], Value::Float64(50.0));
        }
        // New rows may set the new columns; inserts that leave one out get its default; an
        // update of an old row that leaves it out keeps it.
        write(
            &t,
            WriteOp::Insert,
            &["id", "v", "note", "speed"],
            vec![vec![
                Value::Int64(100),
                s("new"),
                s("hello"),
                Value::Float64(80.0),
            ]],
        );
        write(&t, WriteOp::Insert, &["id"], vec![vec![Value::Int64(101)]]);
        write(
            &t,
            WriteOp::Update,
            &["id", "note"],
            vec![vec![Value::Int64(3), s("patched")]],
        );
        let all = rows(&t, vec![]);
        assert_eq!(all[&100]["speed"], Value::Float64(80.0));
        assert_eq!(all[&101]["speed"], Value::Float64(50.0));
        assert_eq!(all[&3]["note"], s("patched"));
        assert_eq!(all[&3]["v"], s("seg"));
        assert_eq!(all[&3]["speed"], Value::Float64(50.0));
        // Predicates on added columns work on old segments (which lack them) too.
        let fast = rows(
            &t,
            vec![Predicate::cmp("speed", CmpOp::Gt, Value::Float64(60.0))],
        );
        assert_eq!(fast.keys().copied().collect::<Vec<_>>(), vec![100]);
        let unset = rows(&t, vec![Predicate::IsNull("note".into())]);
        assert_eq!(unset.len(), 20);
        // Rename and drop.
        db.alter_table(
            &name(),
            &SchemaChange::RenameColumn {
                from: "v".into(),
                to: "label".into(),
            },
        )
        .unwrap();
        db.alter_table(&name(), &SchemaChange::DropColumn("n".into()))
            .unwrap();
        let all = rows(&t, vec![Predicate::cmp("label", CmpOp::Eq, s("seg"))]);
        assert_eq!(all.len(), 10);
        assert!(!all[&0].contains_key("n") && !all[&0].contains_key("v"));
        assert_eq!(
            t.get(&[Value::Int64(3)]).unwrap(),
            Some(vec![
                s("seg"),
                Value::Int64(3),
                s("patched"),
                Value::Float64(50.0)
            ])
        );
        // A new column reusing a dropped column's name does not see the old data.
        db.alter_table(
            &name(),
            &SchemaChange::AddColumn(ColumnSchema::nullable("n", DataType::Int32)),
        )
        .unwrap();
        assert!(rows(&t, vec![]).values().all(|r| r["n"] == Value::Null));
        // A write naming a dropped column is refused as a whole.
        let mut b = BatchBuilder::new(["id", "v"]);
        b.push(WriteOp::Insert, vec![Value::Int64(500), s("x")]);
        assert!(b.build(&t.schema()).is_err());
    }
    // After a restart, with the buffer replayed and everything read by id.
    let db = open(dir.path());
    let t = db.table(&name()).unwrap();
    let names: Vec<String> = t
        .schema()
        .columns()
        .iter()
        .map(|c| c.name.clone())
        .collect();
    assert_eq!(names, vec!["label", "id", "note", "speed", "n"]);
    let all = rows(&t, vec![]);
    assert_eq!(all.len(), 22);
    assert_eq!(all[&3]["note"], s("patched"));
    assert_eq!(all[&15]["label"], s("buf"));
    assert_eq!(all[&15]["speed"], Value::Float64(50.0));
    t.flush().unwrap();
    assert_eq!(rows(&t, vec![]), all, "flushing changes nothing");
}

#[test]
fn writes_that_changed_no_buffer_row_are_not_replayed_after_a_change() {
    // Batches that only failed, were ignored, or deleted segment rows leave the buffer empty;
    // their WAL records must not be replayed under the new schema (which lacks `v`).
    let dir = tempfile::tempdir().unwrap();
    {
        let db = open(dir.path());
        let t = create(&db);
        write(
            &t,
            WriteOp::Insert,
            &["id", "v"],
            vec![vec![Value::Int64(1), s("a")], vec![Value::Int64(2), s("b")]],
        );
        t.flush().unwrap();
        write(
            &t,
            WriteOp::InsertIgnore,
            &["id", "v"],
            vec![vec![Value::Int64(1), s("x")]],
        );
        write(
            &t,
            WriteOp::UpdateIgnore,
            &["id", "v"],
            vec![vec![Value::Int64(9), s("y")]],
        );
        write(
            &t,
            WriteOp::Delete,
            &["id", "v"],
            vec![vec![Value::Int64(2), Value::Null]],
        );
        db.alter_table(&name(), &SchemaChange::DropColumn("v".into()))
            .unwrap();
    }
    let db = open(dir.path());
    let t = db.table(&name()).unwrap();
    let all = rows(&t, vec![]);
    assert_eq!(all.keys().copied().collect::<Vec<_>>(), vec![1]);
    assert!(!all[&1].contains_key("v"));
}

#[test]
fn writes_carry_on_during_a_schema_change() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let t = create(&db);
    let stop = AtomicBool::new(false);
    let written = std::thread::scope(|sc| {
        let writer = sc.spawn(|| {
            let mut i = 0i64;
            while !stop.load(Ordering::Acquire) || i < 200 {
                // Only key and v: valid in every schema version this test goes through.
                write(
                    &t,
                    WriteOp::Insert,
                    &["id", "v"],
                    vec![vec![Value::Int64(i), s("w")]],
                );
                i += 1;
            }
            i
        });
        for c in 0..5 {
            db.alter_table(
                &name(),
                &SchemaChange::AddColumn(ColumnSchema::nullable(format!("c{c}"), DataType::Int64)),
            )
            .unwrap();
            if c == 2 {
                db.alter_table(&name(), &SchemaChange::DropColumn("n".into()))
                    .unwrap();
            }
        }
        stop.store(true, Ordering::Release);
        writer.join().unwrap()
    });
    let all = rows(&t, vec![]);
    assert_eq!(
        all.len() as i64,
        written,
        "every acknowledged write is there"
    );
    assert!(all.values().all(|r| r.len() == 7 && r["c4"] == Value::Null));
}

#[test]
fn key_and_invalid_changes_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    create(&db);
    let err = |c: SchemaChange| db.alter_table(&name(), &c).unwrap_err().to_string();
    assert!(err(SchemaChange::DropColumn("id".into())).contains("primary key"));
    assert!(err(SchemaChange::RenameColumn {
        from: "id".into(),
        to: "key".into()
    })
    .contains("primary key"));
    assert!(err(SchemaChange::DropColumn("nope".into())).contains("does not exist"));
    assert!(err(SchemaChange::AddColumn(ColumnSchema::nullable(
        "v",
        DataType::Int8
    )))
    .contains("more than once"));
    assert!(err(SchemaChange::RenameColumn {
        from: "v".into(),
        to: "n".into()
    })
    .contains("more than once"));
    assert!(err(SchemaChange::AddColumn(ColumnSchema::not_null(
        "m",
        DataType::Int8
    )))
    .contains("needs a default"));
    assert!(err(SchemaChange::AddColumn(
        ColumnSchema::nullable("m", DataType::Int8).with_default(s("x"))
    ))
    .contains("invalid default"));
    assert!(err(SchemaChange::AddColumn(
        ColumnSchema::nullable("m", DataType::Float64).with_default(Value::Float64(f64::NAN))
    ))
    .contains("finite"));
    assert!(err(SchemaChange::AddColumn(
        ColumnSchema::nullable("m", DataType::Utf8).with_default(s(&"x".repeat(100_000)))
    ))
    .contains("over the limit"));
    assert!(matches!(
        db.alter_table(
            &TableName::parse("missing").unwrap(),
            &SchemaChange::DropColumn("v".into())
        ),
        Err(StorageError::UndefinedTable(_))
    ));
    let t = db.table(&name()).unwrap();
    assert_eq!(t.schema().version(), 0, "no failed change left a trace");
}
