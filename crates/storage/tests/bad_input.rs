//! Bad input gets a clear error and writes nothing.

mod common;

use std::sync::Arc;

use arrow::array::{ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType as ArrowType, Field, Schema as ArrowSchema};
use common::*;
use nyala_storage::{
    BatchBuilder, ColumnSchema, DataType, Schema, StorageError, Tablet, TabletOptions, Value,
    WriteBatch, WriteOp,
};

fn batch(fields: Vec<(&str, ArrayRef)>) -> RecordBatch {
    let schema = ArrowSchema::new(
        fields
            .iter()
            .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
            .collect::<Vec<_>>(),
    );
    RecordBatch::try_new(
        Arc::new(schema),
        fields.into_iter().map(|(_, a)| a).collect(),
    )
    .unwrap()
}

fn ids(v: Vec<Option<i64>>) -> ArrayRef {
    Arc::new(Int64Array::from(v))
}

#[test]
fn bad_batches_are_rejected_whole() {
    let dir = tempfile::tempdir().unwrap();
    let opts = TabletOptions {
        max_cell_bytes: 64 * 1024,
        max_row_bytes: 100 * 1024,
        ..test_opts()
    };
    let schema = Schema::new(
        vec![
            ColumnSchema::not_null("id", DataType::Int64),
            ColumnSchema::nullable("v", DataType::Utf8),
            ColumnSchema::nullable("w", DataType::Utf8),
            ColumnSchema::not_null("req", DataType::Int32),
        ],
        &["id"],
    )
    .unwrap();
    let t = Tablet::create(dir.path(), &schema, opts).unwrap();
    let before = t.latest_timestamp();
    let req = |n: usize| -> ArrayRef { Arc::new(Int32Array::from(vec![1; n])) };
    let big = "x".repeat(64 * 1024 + 1);
    let half = "y".repeat(60 * 1024);
    let cases: Vec<(WriteBatch, &str)> = vec![
        (
            WriteBatch::uniform(
                WriteOp::Insert,
                batch(vec![
                    ("id", Arc::new(StringArray::from(vec!["1"]))),
                    ("req", req(1)),
                ]),
            ),
            "column \"id\": expected a value of type BIGINT, got Utf8",
        ),
        (
            WriteBatch::uniform(
                WriteOp::Insert,
                batch(vec![("id", ids(vec![Some(1), None])), ("req", req(2))]),
            ),
            "row 1: key column \"id\" is NULL",
        ),
        (
            WriteBatch::uniform(
                WriteOp::Insert,
                batch(vec![
                    ("id", ids(vec![Some(1)])),
                    ("nope", req(1)),
                    ("req", req(1)),
                ]),
            ),
            "column \"nope\" does not exist",
        ),
        (
            WriteBatch::uniform(
                WriteOp::Insert,
                batch(vec![
                    ("v", Arc::new(StringArray::from(vec!["a"]))),
                    ("req", req(1)),
                ]),
            ),
            "key column \"id\" is missing",
        ),
        (
            WriteBatch::uniform(
                WriteOp::Insert,
                batch(vec![
                    ("id", ids(vec![Some(1), Some(2)])),
                    ("v", Arc::new(StringArray::from(vec!["ok", big.as_str()]))),
                    ("req", req(2)),
                ]),
            ),
            "row 1: value of column \"v\" is 65537 bytes, over the limit of 65536 bytes",
        ),
        (
            WriteBatch::uniform(
                WriteOp::Insert,
                batch(vec![
                    ("id", ids(vec![Some(1)])),
                    ("v", Arc::new(StringArray::from(vec![half.as_str()]))),
                    ("w", Arc::new(StringArray::from(vec![half.as_str()]))),
                    ("req", req(1)),
                ]),
            ),
            "row 0 is",
        ),
        (
            WriteBatch::uniform(WriteOp::Insert, batch(vec![("id", ids(vec![Some(1)]))])),
            "column \"req\" is NOT NULL and missing",
        ),
        (
            WriteBatch::uniform(
                WriteOp::Upsert,
                batch(vec![
                    ("id", ids(vec![Some(1)])),
                    ("req", Arc::new(Int32Array::from(vec![None]))),
                ]),
            ),
            "row 0: NULL in NOT NULL column \"req\"",
        ),
    ];
    for (b, msg) in cases {
        let err = t.write(&b).unwrap_err();
        assert!(err.to_string().contains(msg), "expected {msg:?}, got {err}");
        assert!(
            matches!(err, StorageError::InvalidInput(_) | StorageError::Schema(_)),
            "{err:?}"
        );
    }
    let rows = batch(vec![("id", ids(vec![Some(1)])), ("req", req(1))]);
    let err = WriteBatch::new(rows, vec![]).unwrap_err();
    assert!(err.to_string().contains("needs 1 operations, got 0"));
    // Duplicate column names.
    let dup = RecordBatch::try_new(
        Arc::new(ArrowSchema::new(vec![
            Field::new("id", ArrowType::Int64, true),
            Field::new("id", ArrowType::Int64, true),
        ])),
        vec![ids(vec![Some(1)]), ids(vec![Some(2)])],
    )
    .unwrap();
    assert!(t
        .write(&WriteBatch::uniform(WriteOp::Insert, dup))
        .unwrap_err()
        .to_string()
        .contains("more than once"));
    // A lookup with the wrong key shape or type.
    assert!(t
        .get(&[Value::Utf8("1".into())])
        .unwrap_err()
        .to_string()
        .contains("expected a value of type BIGINT"));
    assert!(t.get(&[Value::Int64(1), Value::Int64(2)]).is_err());
    assert!(t.get(&[Value::Null]).is_err());
    // Nothing was written, and the tablet still works.
    assert_eq!(t.latest_timestamp(), before);
    assert_eq!(t.scan(&Default::default()).unwrap().count(), 0);
    let mut ok = BatchBuilder::new(["id", "req"]);
    ok.push(WriteOp::Insert, vec![Value::Int64(1), Value::Int32(5)]);
    assert_eq!(t.write(&ok.build(&t.schema()).unwrap()).unwrap().applied, 1);
    drop(t);
    let t = Tablet::open(dir.path(), test_opts()).unwrap();
    assert_eq!(
        t.get(&[Value::Int64(1)]).unwrap().unwrap()[3],
        Value::Int32(5)
    );
}

#[test]
fn invalid_schemas_and_missing_tablets() {
    let dir = tempfile::tempdir().unwrap();
    let err = Tablet::open(dir.path(), test_opts()).unwrap_err();
    assert!(matches!(err, StorageError::NotFound(_)), "{err}");
    let _t = create(dir.path());
    let err = Tablet::create(dir.path(), &kv_schema(), test_opts()).unwrap_err();
    assert!(err.to_string().contains("already"), "{err}");
    let float_key = Schema::new(vec![ColumnSchema::not_null("f", DataType::Float64)], &["f"]);
    assert!(float_key
        .unwrap_err()
        .to_string()
        .contains("cannot have type DOUBLE PRECISION"));
}

#[test]
fn decimals_beyond_their_precision_and_bad_options_are_refused() {
    use arrow::array::Decimal128Array;
    let dir = tempfile::tempdir().unwrap();
    let schema = Schema::new(
        vec![ColumnSchema::not_null(
            "d",
            DataType::decimal(5, 2).unwrap(),
        )],
        &["d"],
    )
    .unwrap();
    let t = Tablet::create(dir.path(), &schema, test_opts()).unwrap();
    let arr = Decimal128Array::from(vec![5_000_000_000_000i128])
        .with_precision_and_scale(5, 2)
        .unwrap();
    let err = t
        .write(&WriteBatch::uniform(
            WriteOp::Insert,
            batch(vec![("d", Arc::new(arr))]),
        ))
        .unwrap_err();
    assert!(err.to_string().contains("column \"d\""), "{err}");
    assert!(
        t.get(&[Value::Decimal(100_000)]).is_err(),
        "a lookup key beyond the precision is an error"
    );
    assert_eq!(t.scan(&Default::default()).unwrap().count(), 0);
    drop(t);
    let bad = TabletOptions {
        page_rows: 0,
        ..test_opts()
    };
    let err = Tablet::open(dir.path(), bad).unwrap_err();
    assert!(err.to_string().contains("page_rows"), "{err}");
}
