//! Predicates on key columns of every kind (text, boolean, decimal, timestamp) against a model:
//! random upserts and deletes, flushes and a full compaction, then random conjunctions of
//! `=`, `<`, `<=`, `>`, `>=` and `IN` at the latest and at past snapshots. Key-column
//! predicates are where a scan skips key blocks and where on-disk segments filter before
//! decoding the other columns (see `Segment::scan`), so these answers must equal the model's.

mod common;

use common::{cmpx, sorted_i32, test_opts, Rng};
use nyala_storage::{
    BatchBuilder, CmpOp, ColumnSchema, DataType, Predicate, ScanRequest, Schema, Tablet,
    TabletOptions, Value, WriteOp,
};
use std::collections::BTreeMap;

type Key = (String, bool, i128, i64);

/// The model's side of one predicate.
type Check = Box<dyn Fn(&Key) -> bool>;

fn schema() -> Schema {
    Schema::new(
        vec![
            ColumnSchema::not_null("s", DataType::Utf8),
            ColumnSchema::not_null("f", DataType::Bool),
            ColumnSchema::not_null(
                "d",
                DataType::Decimal {
                    precision: 12,
                    scale: 2,
                },
            ),
            ColumnSchema::not_null("ts", DataType::Timestamp),
            ColumnSchema::nullable("v", DataType::Int32),
        ],
        &["s", "f", "d", "ts"],
    )
    .unwrap()
}

const NAMES: [&str; 6] = [
    "",
    "a",
    "ab",
    "abcdefghijklmnopqrstuvwxyz0123456789-long",
    "b",
    "zz",
];

fn vals(k: &Key, v: Option<i32>) -> Vec<Value> {
    vec![
        Value::Utf8(k.0.clone()),
        Value::Bool(k.1),
        Value::Decimal(k.2),
        Value::Timestamp(k.3),
        v.map(Value::Int32).unwrap_or(Value::Null),
    ]
}

fn op_of(r: &mut Rng) -> CmpOp {
    [CmpOp::Eq, CmpOp::Lt, CmpOp::Le, CmpOp::Gt, CmpOp::Ge][r.below(5) as usize]
}

/// Six rounds of writes (some flushed, a compaction after the fourth), then 300 queries.
fn run(seed: u64, opts: TabletOptions) {
    let dir = tempfile::tempdir().unwrap();
    let t = Tablet::create(dir.path(), &schema(), opts).unwrap();
    let mut r = Rng(seed);
    let mut model: BTreeMap<Key, i32> = BTreeMap::new();
    let mut snaps: Vec<(u64, BTreeMap<Key, i32>)> = vec![];
    let mut counter = 0i32;
    for round in 0..6 {
        let mut b = BatchBuilder::new(["s", "f", "d", "ts", "v"]);
        let n = 50 + r.below(400);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..n {
            let k: Key = (
                NAMES[r.below(NAMES.len() as u64) as usize].to_string(),
                r.below(2) == 0,
                (r.below(7) as i128 - 3) * 125,
                r.below(60) as i64 * 1000 - 5000,
            );
            if !seen.insert(k.clone()) {
                continue;
            }
            let c = r.below(10);
            if c < 2 && model.contains_key(&k) {
                b.push(WriteOp::Delete, vals(&k, None));
                model.remove(&k);
            } else {
                counter += 1;
                b.push(WriteOp::Upsert, vals(&k, Some(counter)));
                model.insert(k, counter);
            }
        }
        let out = t.write(&b.build(&t.schema()).unwrap()).unwrap();
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        snaps.push((t.latest_timestamp(), model.clone()));
        if round % 2 == 0 || r.below(2) == 0 {
            t.flush().unwrap();
        }
        if round == 3 {
            t.compact_all().unwrap();
        }
    }
    for q in 0..300 {
        let mut preds = vec![];
        let mut checks: Vec<Check> = vec![];
        for _ in 0..(1 + r.below(3)) {
            match r.below(5) {
                0 => {
                    let op = op_of(&mut r);
                    let s = NAMES[r.below(NAMES.len() as u64) as usize].to_string();
                    preds.push(Predicate::cmp("s", op, Value::Utf8(s.clone())));
                    checks.push(Box::new(move |k: &Key| cmpx(op, &k.0, &s)));
                }
                1 => {
                    let op = op_of(&mut r);
                    let f = r.below(2) == 0;
                    preds.push(Predicate::cmp("f", op, Value::Bool(f)));
                    checks.push(Box::new(move |k: &Key| cmpx(op, &k.1, &f)));
                }
                2 => {
                    let op = op_of(&mut r);
                    let d = (r.below(9) as i128 - 4) * 125 + r.below(2) as i128;
                    preds.push(Predicate::cmp("d", op, Value::Decimal(d)));
                    checks.push(Box::new(move |k: &Key| cmpx(op, &k.2, &d)));
                }
                3 => {
                    let op = op_of(&mut r);
                    let ts = r.below(62) as i64 * 1000 - 5500;
                    preds.push(Predicate::cmp("ts", op, Value::Timestamp(ts)));
                    checks.push(Box::new(move |k: &Key| cmpx(op, &k.3, &ts)));
                }
                _ => {
                    let a = NAMES[r.below(6) as usize].to_string();
                    let b2 = NAMES[r.below(6) as usize].to_string();
                    preds.push(Predicate::In {
                        column: "s".into(),
                        values: vec![Value::Utf8(a.clone()), Value::Utf8(b2.clone())],
                    });
                    checks.push(Box::new(move |k: &Key| k.0 == a || k.0 == b2));
                }
            }
        }
        let si = r.below(snaps.len() as u64 + 1) as usize;
        let (snapshot, want_model) = if si == snaps.len() {
            (None, &model)
        } else {
            (Some(snaps[si].0), &snaps[si].1)
        };
        let proj = if r.below(2) == 0 {
            vec!["v".to_string()]
        } else {
            vec!["v".to_string(), "ts".to_string()]
        };
        let req = ScanRequest {
            projection: Some(proj),
            predicates: preds.clone(),
            snapshot,
            batch_size: Some(1 + r.below(50) as usize),
            ..Default::default()
        };
        let got = sorted_i32(t.scan(&req).unwrap());
        let mut want: Vec<i32> = want_model
            .iter()
            .filter(|(k, _)| checks.iter().all(|c| c(k)))
            .map(|(_, v)| *v)
            .collect();
        want.sort_unstable();
        assert_eq!(
            got, want,
            "seed {seed} query {q} preds {preds:?} snapshot {snapshot:?}"
        );
    }
}

#[test]
fn key_predicates_match_the_model_with_tiny_blocks() {
    // Odd seeds scan without the column cache: every scan reads its rows from the files.
    for seed in 1..40u64 {
        let mut o = test_opts();
        if seed % 2 == 1 {
            o.column_cache_bytes = 0;
        }
        run(seed * 7919, o);
    }
}

#[test]
fn key_predicates_match_the_model_with_several_pages_per_block() {
    for seed in 1..15u64 {
        let mut o = test_opts();
        o.page_rows = 64;
        o.key_block_rows = 32;
        o.row_group_rows = 256;
        if seed % 2 == 1 {
            o.column_cache_bytes = 0;
        }
        run(seed * 104729, o);
    }
}

#[test]
fn contradictory_bounds_on_a_key_select_nothing_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tablet::create(dir.path(), &schema(), test_opts()).unwrap();
    let mut b = BatchBuilder::new(["s", "f", "d", "ts", "v"]);
    for (i, s) in NAMES.iter().enumerate() {
        for ts in 0..10i64 {
            b.push(
                WriteOp::Upsert,
                vals(&(s.to_string(), false, 0, ts), Some(i as i32)),
            );
        }
    }
    t.write(&b.build(&t.schema()).unwrap()).unwrap();
    t.flush().unwrap();
    let req = ScanRequest {
        predicates: vec![
            Predicate::cmp("s", CmpOp::Ge, Value::Utf8("zz".into())),
            Predicate::cmp("s", CmpOp::Lt, Value::Utf8("b".into())),
        ],
        ..Default::default()
    };
    let n: usize = t.scan(&req).unwrap().map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(n, 0);
}
