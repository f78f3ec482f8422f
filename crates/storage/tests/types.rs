//! Every column type round-trips through the buffer, a flush and a reopen, as a value and as
//! (part of) a key.

mod common;

use common::test_opts;
use nyala_storage::{
    BatchBuilder, CmpOp, ColumnSchema, DataType, Predicate, ScanRequest, Schema, Tablet, Value,
    WriteOp,
};

fn all_types() -> Vec<(DataType, Value, Value)> {
    vec![
        (DataType::Bool, Value::Bool(false), Value::Bool(true)),
        (DataType::Int8, Value::Int8(-3), Value::Int8(7)),
        (DataType::Int16, Value::Int16(-300), Value::Int16(300)),
        (DataType::Int32, Value::Int32(-70_000), Value::Int32(70_000)),
        (
            DataType::Int64,
            Value::Int64(-(1 << 40)),
            Value::Int64(1 << 40),
        ),
        (
            DataType::Float32,
            Value::Float32(-1.5),
            Value::Float32(2.25),
        ),
        (
            DataType::Float64,
            Value::Float64(-0.125),
            Value::Float64(1e300),
        ),
        (
            DataType::Utf8,
            Value::Utf8("".into()),
            Value::Utf8("héllo wörld".into()),
        ),
        (
            DataType::Binary,
            Value::Binary(vec![0]),
            Value::Binary(vec![0xff, 0, 7]),
        ),
        (
            DataType::Timestamp,
            Value::Timestamp(-1),
            Value::Timestamp(1_700_000_000_123_456),
        ),
        (DataType::Date, Value::Date(-365), Value::Date(19_000)),
        (
            DataType::decimal(12, 3).unwrap(),
            Value::Decimal(-999_999_999),
            Value::Decimal(123_456),
        ),
    ]
}

#[test]
fn every_type_as_a_value_and_as_a_key() {
    for (i, (t, small, big)) in all_types().into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let key_ok = t.can_be_key();
        let schema = if key_ok {
            Schema::new(
                vec![
                    ColumnSchema::not_null("k", t),
                    ColumnSchema::nullable("v", t),
                ],
                &["k"],
            )
        } else {
            Schema::new(
                vec![
                    ColumnSchema::not_null("k", DataType::Int32),
                    ColumnSchema::nullable("v", t),
                ],
                &["k"],
            )
        }
        .unwrap();
        let t_ = Tablet::create(dir.path(), &schema, test_opts()).unwrap();
        let (k1, k2) = if key_ok {
            (small.clone(), big.clone())
        } else {
            (Value::Int32(1), Value::Int32(2))
        };
        let mut b = BatchBuilder::new(["k", "v"]);
        b.push(WriteOp::Insert, vec![k2.clone(), big.clone()]);
        b.push(WriteOp::Insert, vec![k1.clone(), small.clone()]);
        t_.write(&b.build(&t_.schema()).unwrap()).unwrap();
        let check = |tab: &Tablet, stage: &str| {
            assert_eq!(
                tab.get(std::slice::from_ref(&k1)).unwrap(),
                Some(vec![k1.clone(), small.clone()]),
                "type #{i} {stage}"
            );
            assert_eq!(
                tab.get(std::slice::from_ref(&k2)).unwrap(),
                Some(vec![k2.clone(), big.clone()]),
                "type #{i} {stage}"
            );
            // A range predicate on the value column finds exactly the bigger value.
            let req = ScanRequest {
                predicates: vec![Predicate::cmp("v", CmpOp::Gt, small.clone())],
                ..Default::default()
            };
            let rows: Vec<Vec<Value>> = tab
                .scan(&req)
                .unwrap()
                .flat_map(|b| {
                    let b = b.unwrap();
                    (0..b.num_rows())
                        .map(|r| {
                            b.columns()
                                .iter()
                                .map(|c| Value::from_array(c, r).unwrap())
                                .collect()
                        })
                        .collect::<Vec<_>>()
                })
                .collect();
            assert_eq!(
                rows,
                vec![vec![k2.clone(), big.clone()]],
                "type #{i} {stage}"
            );
        };
        check(&t_, "in the buffer");
        t_.flush().unwrap();
        check(&t_, "in a segment");
        drop(t_);
        let t_ = Tablet::open(dir.path(), test_opts()).unwrap();
        check(&t_, "after reopen");
    }
}
