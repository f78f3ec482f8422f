//! Every column type round-trips through the buffer, a flush and a reopen, as a value and as
//! (part of) a key.

mod common;

use common::test_opts;
use nyala_storage::{
    BatchBuilder, CmpOp, ColumnSchema, DataType, Predicate, ScanRequest, Schema, Tablet,
    TabletOptions, Value, WriteOp,
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

/// Every row `req` returns, as values.
fn scan_values(t: &Tablet, req: &ScanRequest) -> Vec<Vec<Value>> {
    t.scan(req)
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
        .collect()
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
            let rows = scan_values(tab, &req);
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

/// A composite key mixing a string (compared by Arrow's comparator) with integer and date
/// columns (compared natively): every key is found in segments with its own row, absent keys
/// between and around present ones are not, and upserts find the old rows to replace.
#[test]
fn composite_keys_of_mixed_types_are_found_in_segments() {
    let dir = tempfile::tempdir().unwrap();
    let schema = Schema::new(
        vec![
            ColumnSchema::not_null("name", DataType::Utf8),
            ColumnSchema::not_null("n", DataType::Int16),
            ColumnSchema::not_null("d", DataType::Date),
            ColumnSchema::nullable("v", DataType::Int64),
        ],
        &["name", "n", "d"],
    )
    .unwrap();
    let opts = TabletOptions {
        page_rows: 64,
        key_block_rows: 64,
        row_group_rows: 256,
        ..test_opts()
    };
    let t = Tablet::create(dir.path(), &schema, opts).unwrap();
    let key = |i: i64| {
        vec![
            Value::Utf8(format!("p{:02}", i / 100)),
            Value::Int16((i / 10 % 10) as i16 * 2),
            Value::Date((i % 10) as i32 * 3 - 10),
        ]
    };
    let write = |op: WriteOp, rows: &mut dyn Iterator<Item = (i64, i64)>| {
        let mut b = BatchBuilder::new(["name", "n", "d", "v"]);
        for (i, v) in rows {
            let mut r = key(i);
            r.push(Value::Int64(v));
            b.push(op, r);
        }
        let o = t.write(&b.build(&t.schema()).unwrap()).unwrap();
        assert!(o.errors.is_empty(), "{:?}", o.errors);
    };
    write(WriteOp::Insert, &mut (0..3000).map(|i| (i, i)));
    t.flush().unwrap();
    for i in 0..3000 {
        let mut want = key(i);
        want.push(Value::Int64(i));
        assert_eq!(t.get(&key(i)).unwrap(), Some(want), "key #{i}");
    }
    // Between present keys (odd n, dates off the step of 3) and past either end.
    for absent in [
        vec![Value::Utf8("p05".into()), Value::Int16(3), Value::Date(-10)],
        vec![Value::Utf8("p05".into()), Value::Int16(2), Value::Date(-9)],
        vec![Value::Utf8("p".into()), Value::Int16(0), Value::Date(-10)],
        vec![Value::Utf8("p29".into()), Value::Int16(18), Value::Date(18)],
    ] {
        assert_eq!(t.get(&absent).unwrap(), None, "{absent:?}");
    }
    // Upserts of every 7th key replace the row in its segment: one live row per key.
    write(WriteOp::Upsert, &mut (0..3000).step_by(7).map(|i| (i, -i)));
    let rows: usize = t
        .scan(&ScanRequest::default())
        .unwrap()
        .map(|b| b.unwrap().num_rows())
        .sum();
    assert_eq!(rows, 3000);
    assert_eq!(t.get(&key(700)).unwrap().unwrap()[3], Value::Int64(-700));
    assert_eq!(t.get(&key(701)).unwrap().unwrap()[3], Value::Int64(701));
}

/// Point reads of flushed rows decode one value per column straight from its page (dictionary
/// or plain, nulls counted from the definition levels): every row read by key equals the same
/// row from a scan, for every type, with nulls, across many pages and row groups, and for a
/// column whose dictionary overflowed into plain-encoded pages.
#[test]
fn point_reads_from_segments_match_scans_for_every_type() {
    let mut columns = vec![ColumnSchema::not_null("k", DataType::Int32)];
    let types: Vec<DataType> = all_types()
        .into_iter()
        .map(|(t, _, _)| t)
        .chain([
            DataType::decimal(5, 2).unwrap(),
            DataType::decimal(30, 4).unwrap(),
        ])
        .collect();
    for (i, t) in types.iter().enumerate() {
        columns.push(ColumnSchema::nullable(format!("v{i}"), *t));
    }
    columns.push(ColumnSchema::not_null("big", DataType::Utf8));
    let schema = Schema::new(columns, &["k"]).unwrap();
    let opts = TabletOptions {
        page_rows: 100,
        row_group_rows: 1000,
        ..test_opts()
    };
    let dir = tempfile::tempdir().unwrap();
    let t = Tablet::create(dir.path(), &schema, opts).unwrap();
    let n = 2500i64;
    let value = |t: &DataType, r: i64| -> Value {
        // Nulls in runs and scattered; values repeat (dictionaries) and vary.
        if r % 7 == 3 || (r / 50) % 9 == 4 {
            return Value::Null;
        }
        let v = (r * 7919) % 613 - 300;
        match t {
            DataType::Bool => Value::Bool(v % 3 == 0),
            DataType::Int8 => Value::Int8(v as i8),
            DataType::Int16 => Value::Int16(v as i16 * 100),
            DataType::Int32 => Value::Int32(v as i32 * 70_000),
            DataType::Int64 => Value::Int64(v << 40),
            DataType::Float32 => Value::Float32(v as f32 / 4.0),
            DataType::Float64 => Value::Float64(v as f64 * 1e200),
            DataType::Utf8 => Value::Utf8(format!("s{v}é")),
            DataType::Binary => Value::Binary(vec![v as u8, 0, (v >> 8) as u8]),
            DataType::Timestamp => Value::Timestamp(v * 1_000_000_007),
            DataType::Date => Value::Date(v as i32 * 31),
            DataType::Decimal { precision, .. } => {
                Value::Decimal(v as i128 * 10i128.pow(*precision as u32 - 3))
            }
        }
    };
    let row = |r: i64| -> Vec<Value> {
        let mut row = vec![Value::Int32(r as i32)];
        row.extend(types.iter().map(|t| value(t, r)));
        // 1,000 distinct 2 KiB strings a row group overflow the 1 MiB dictionary limit.
        row.push(Value::Utf8(format!("{r:05}{}", "x".repeat(2048))));
        row
    };
    let names: Vec<String> = (0..schema.len())
        .map(|c| schema.columns()[c].name.clone())
        .collect();
    let mut b = BatchBuilder::new(names.iter().map(String::as_str));
    for r in (0..n).rev() {
        b.push(WriteOp::Insert, row(r));
    }
    let o = t.write(&b.build(&t.schema()).unwrap()).unwrap();
    assert!(o.errors.is_empty(), "{:?}", o.errors);
    t.flush().unwrap();

    let scanned = scan_values(&t, &ScanRequest::default());
    assert_eq!(scanned.len(), n as usize);
    for (r, want) in scanned.iter().enumerate() {
        assert_eq!(want, &row(r as i64), "scan row {r}");
        let got = t.get(&[Value::Int32(r as i32)]).unwrap();
        assert_eq!(got.as_ref(), Some(want), "point read of row {r}");
    }
}
