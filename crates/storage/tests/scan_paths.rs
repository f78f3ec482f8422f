//! The scan paths against a model: cached and uncached segment reads, split plans, key
//! predicates over sorted and unsorted runs, snapshots, schema changes, oversized columns.
mod common;

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;
use common::{cmpx, test_opts, Rng};
use nyala_storage::{
    BatchBuilder, CmpOp, ColumnSchema, DataType, Database, DatabaseOptions, IfExists,
    PartitionSpec, Predicate, ScanRequest, Schema, TableName, TabletOptions, Value, WriteOp,
};

type Key = (String, i32, i64);

fn schema() -> Schema {
    Schema::new(
        vec![
            ColumnSchema::not_null("g", DataType::Utf8),
            ColumnSchema::not_null("lane", DataType::Int32),
            ColumnSchema::not_null("ts", DataType::Int64),
            ColumnSchema::nullable("v", DataType::Int64),
        ],
        &["g", "lane", "ts"],
    )
    .unwrap()
}

type Check = Box<dyn Fn(&Key) -> bool>;

fn run(seed: u64, tablet: TabletOptions, tablets: usize) {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(
        dir.path(),
        DatabaseOptions {
            tablet,
            scan_threads: 2,
            ..Default::default()
        },
    )
    .unwrap();
    let name = TableName::parse("s").unwrap();
    let t = db
        .create_table(
            &name,
            &schema(),
            &PartitionSpec::hash(["g"], tablets as u32),
            IfExists::Error,
        )
        .unwrap();
    let mut r = Rng(seed);
    let mut model: BTreeMap<Key, i64> = BTreeMap::new();
    let mut snaps = vec![];
    let mut counter = 0i64;
    let groups = 12u64;
    for round in 0..5 {
        let mut b = BatchBuilder::new(["g", "lane", "ts", "v"]);
        let mut seen = std::collections::HashSet::new();
        let n = 2000 + r.below(3000);
        for i in 0..n {
            // Long series (ts ascending within round) plus random noise.
            let k: Key = (
                format!("g{:02}", r.below(groups)),
                r.below(3) as i32,
                if r.below(4) == 0 {
                    r.below(5000) as i64
                } else {
                    round * 1000 + i as i64 / 3
                },
            );
            if !seen.insert(k.clone()) {
                continue;
            }
            if r.below(10) < 2 && model.contains_key(&k) {
                b.push(
                    WriteOp::Delete,
                    vec![
                        Value::Utf8(k.0.clone()),
                        Value::Int32(k.1),
                        Value::Int64(k.2),
                        Value::Null,
                    ],
                );
                model.remove(&k);
            } else {
                counter += 1;
                b.push(
                    WriteOp::Upsert,
                    vec![
                        Value::Utf8(k.0.clone()),
                        Value::Int32(k.1),
                        Value::Int64(k.2),
                        Value::Int64(counter),
                    ],
                );
                model.insert(k, counter);
            }
        }
        let out = t.write(&b.build(&t.schema()).unwrap()).unwrap();
        assert!(out.errors.is_empty());
        snaps.push((db.snapshot_timestamp(), model.clone()));
        if round < 4 || r.below(2) == 0 {
            t.flush().unwrap();
        }
        if round == 2 && r.below(2) == 0 {
            t.compact_all().unwrap();
        }
    }
    for q in 0..150 {
        let mut preds = vec![];
        let mut checks: Vec<Check> = vec![];
        for _ in 0..(1 + r.below(3)) {
            match r.below(6) {
                0 => {
                    let op = [CmpOp::Eq, CmpOp::Lt, CmpOp::Le, CmpOp::Gt, CmpOp::Ge]
                        [r.below(5) as usize];
                    let s = format!("g{:02}", r.below(groups + 1));
                    preds.push(Predicate::cmp("g", op, Value::Utf8(s.clone())));
                    checks.push(Box::new(move |k: &Key| cmpx(op, &k.0, &s)));
                }
                1 => {
                    let op = [CmpOp::Eq, CmpOp::Lt, CmpOp::Le, CmpOp::Gt, CmpOp::Ge]
                        [r.below(5) as usize];
                    let l = r.below(4) as i32;
                    preds.push(Predicate::cmp("lane", op, Value::Int32(l)));
                    checks.push(Box::new(move |k: &Key| cmpx(op, &k.1, &l)));
                }
                2..=4 => {
                    let op = [CmpOp::Eq, CmpOp::Lt, CmpOp::Le, CmpOp::Gt, CmpOp::Ge]
                        [r.below(5) as usize];
                    let ts = r.below(5200) as i64;
                    preds.push(Predicate::cmp("ts", op, Value::Int64(ts)));
                    checks.push(Box::new(move |k: &Key| cmpx(op, &k.2, &ts)));
                }
                _ => {
                    let a = r.below(3) as i32;
                    preds.push(Predicate::In {
                        column: "lane".into(),
                        values: vec![Value::Int32(a)],
                    });
                    checks.push(Box::new(move |k: &Key| k.1 == a));
                }
            }
        }
        let si = r.below(snaps.len() as u64 + 1) as usize;
        let (snapshot, want_model) = if si == snaps.len() {
            (None, &model)
        } else {
            (Some(snaps[si].0), &snaps[si].1)
        };
        let want: BTreeMap<Key, i64> = want_model
            .iter()
            .filter(|(k, _)| checks.iter().all(|c| c(k)))
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let parts = 1 + r.below(4) as usize;
        let batch_size = [1usize, 7, 64, 1000, 8192][r.below(5) as usize];
        let req = ScanRequest {
            predicates: preds.clone(),
            snapshot,
            batch_size: Some(batch_size),
            ..Default::default()
        };
        for rep in 0..2 {
            let mut plan = t.plan_scan(&req).unwrap();
            plan.split(parts);
            let mut got: BTreeMap<Key, i64> = BTreeMap::new();
            for i in 0..plan.partitions() {
                for b in plan.open(i).unwrap() {
                    let b = b.unwrap();
                    let g = b.column(0).as_string::<i32>();
                    let l = b.column(1).as_primitive::<arrow::datatypes::Int32Type>();
                    let ts = b.column(2).as_primitive::<Int64Type>();
                    let v = b.column(3).as_primitive::<Int64Type>();
                    for j in 0..b.num_rows() {
                        let k = (g.value(j).to_string(), l.value(j), ts.value(j));
                        assert!(!v.is_null(j));
                        assert!(
                            got.insert(k.clone(), v.value(j)).is_none(),
                            "seed {seed} q {q} rep {rep} dup {k:?} preds {preds:?} parts {parts}"
                        );
                    }
                }
            }
            if got != want {
                let missing: Vec<_> = want
                    .keys()
                    .filter(|k| !got.contains_key(*k))
                    .take(5)
                    .collect();
                let extra: Vec<_> = got
                    .keys()
                    .filter(|k| !want.contains_key(*k))
                    .take(5)
                    .collect();
                panic!(
                    "seed {seed} q {q} rep {rep} preds {preds:?} parts {parts} batch {batch_size} snap {snapshot:?}: got {} want {} missing {missing:?} extra {extra:?}",
                    got.len(),
                    want.len()
                );
            }
        }
    }
}

fn opts(cache: u64, rg: usize, page: usize, block: usize) -> TabletOptions {
    TabletOptions {
        row_group_rows: rg,
        page_rows: page,
        key_block_rows: block,
        column_cache_bytes: cache,
        ..test_opts()
    }
}

/// Key predicates, snapshots, batch sizes and split plans, each query twice (the first fills
/// the column cache), with row groups of 4,096 rows in one tablet.
#[test]
fn cached_scans_match_the_model_with_big_row_groups() {
    for seed in 1..6u64 {
        run(seed * 7919, opts(1 << 30, 4096, 256, 128), 1);
    }
}

/// The same with row groups of 1,024 rows in two tablets.
#[test]
fn cached_scans_match_the_model_with_two_tablets() {
    for seed in 1..6u64 {
        run(seed * 104729, opts(1 << 30, 1024, 64, 32), 2);
    }
}

/// The same without a column cache: every row group read from the file.
#[test]
fn uncached_scans_match_the_model() {
    for seed in 1..4u64 {
        run(seed * 31, opts(0, 1024, 64, 32), 2);
    }
}

fn dump(t: &nyala_storage::Table, req: &ScanRequest, parts: usize) -> Vec<String> {
    let mut plan = t.plan_scan(req).unwrap();
    plan.split(parts);
    let mut out = vec![];
    for i in 0..plan.partitions() {
        for b in plan.open(i).unwrap() {
            let b = b.unwrap();
            for j in 0..b.num_rows() {
                out.push(
                    b.columns()
                        .iter()
                        .map(|c| Value::from_array(c, j).unwrap().to_string())
                        .collect::<Vec<_>>()
                        .join(","),
                );
            }
        }
    }
    out.sort();
    out
}

fn alter_run(cache: u64) -> Vec<Vec<String>> {
    use nyala_storage::SchemaChange;
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(
        dir.path(),
        DatabaseOptions {
            tablet: opts(cache, 256, 16, 16),
            ..Default::default()
        },
    )
    .unwrap();
    let name = TableName::parse("a").unwrap();
    let t = db
        .create_table(
            &name,
            &schema(),
            &PartitionSpec::hash(["g"], 1),
            IfExists::Error,
        )
        .unwrap();
    let write = |t: &nyala_storage::Table, base: i64, cols: &[&str]| {
        let mut b = BatchBuilder::new(cols.iter().copied());
        for i in 0..600i64 {
            let mut v = vec![
                Value::Utf8(format!("g{}", i % 7)),
                Value::Int32((i % 3) as i32),
                Value::Int64(base + i),
            ];
            for _ in 3..cols.len() {
                v.push(Value::Int64(i * 10));
            }
            b.push(WriteOp::Upsert, v);
        }
        t.write(&b.build(&t.schema()).unwrap()).unwrap();
        t.flush().unwrap();
    };
    let mut res = vec![];
    let reqs = |_: ()| {
        vec![
            ScanRequest::default(),
            ScanRequest {
                predicates: vec![Predicate::cmp("ts", CmpOp::Ge, Value::Int64(300))],
                ..Default::default()
            },
        ]
    };
    write(&t, 0, &["g", "lane", "ts", "v"]);
    for r in reqs(()) {
        res.push(dump(&t, &r, 1));
        res.push(dump(&t, &r, 3));
    }
    db.alter_table(&name, &SchemaChange::DropColumn("v".into()))
        .unwrap();
    let t = db.table(&name).unwrap();
    for r in reqs(()) {
        res.push(dump(&t, &r, 1));
        res.push(dump(&t, &r, 2));
    }
    db.alter_table(
        &name,
        &SchemaChange::AddColumn(ColumnSchema::nullable("v", DataType::Int64)),
    )
    .unwrap();
    let t = db.table(&name).unwrap();
    for r in reqs(()) {
        res.push(dump(&t, &r, 1));
    }
    write(&t, 400, &["g", "lane", "ts", "v"]);
    for r in reqs(()) {
        res.push(dump(&t, &r, 1));
        res.push(dump(&t, &r, 4));
    }
    res
}

/// Dropped and re-added columns read the same with and without the cache, split or not.
#[test]
fn schema_changes_read_the_same_with_and_without_the_cache() {
    let a = alter_run(1 << 30);
    let b = alter_run(0);
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!(x, y, "step {i}");
    }
    // Spot check: after drop+add, old rows have NULL v.
    assert!(a[8].iter().any(|r| r.ends_with("NULL")), "{:?}", &a[8][..3]);
}

/// A row group whose columns would take more than a quarter of the cache decoded is read from
/// the file, page by page, instead of being decoded whole for a cache that cannot keep it.
#[test]
fn a_row_group_too_big_for_the_cache_is_read_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(
        dir.path(),
        DatabaseOptions {
            tablet: opts(4 << 20, 256, 64, 64),
            ..Default::default()
        },
    )
    .unwrap();
    let name = TableName::parse("big").unwrap();
    let sch = Schema::new(
        vec![
            ColumnSchema::not_null("k", DataType::Int64),
            ColumnSchema::nullable("doc", DataType::Utf8),
        ],
        &["k"],
    )
    .unwrap();
    let t = db
        .create_table(&name, &sch, &PartitionSpec::hash(["k"], 1), IfExists::Error)
        .unwrap();
    let mut b = BatchBuilder::new(["k", "doc"]);
    for i in 0..256i64 {
        b.push(
            WriteOp::Upsert,
            vec![Value::Int64(i), Value::Utf8(format!("{i:020000}"))],
        );
    }
    t.write(&b.build(&t.schema()).unwrap()).unwrap();
    t.flush().unwrap();
    let scan = || {
        let rows: Vec<String> = t
            .scan(&ScanRequest::default())
            .unwrap()
            .flat_map(|b| {
                let b = b.unwrap();
                (0..b.num_rows())
                    .map(|j| Value::from_array(b.column(1), j).unwrap().to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(rows.len(), 256);
        assert!(rows.iter().all(|r| r.len() >= 20_000));
    };
    scan();
    scan();
    let s = db.column_cache_stats();
    assert_eq!((s.misses, s.hits, s.used_bytes), (0, 0, 0), "{s:?}");
}

/// A full-key lookup answers once, whatever the parts.
#[test]
fn a_point_lookup_in_a_split_plan_returns_its_row_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(
        dir.path(),
        DatabaseOptions {
            tablet: opts(1 << 30, 64, 16, 16),
            ..Default::default()
        },
    )
    .unwrap();
    let name = TableName::parse("p").unwrap();
    let t = db
        .create_table(
            &name,
            &schema(),
            &PartitionSpec::hash(["g"], 2),
            IfExists::Error,
        )
        .unwrap();
    let mut b = BatchBuilder::new(["g", "lane", "ts", "v"]);
    for i in 0..500i64 {
        b.push(
            WriteOp::Upsert,
            vec![
                Value::Utf8(format!("g{}", i % 5)),
                Value::Int32(1),
                Value::Int64(i),
                Value::Int64(i),
            ],
        );
    }
    t.write(&b.build(&t.schema()).unwrap()).unwrap();
    t.flush().unwrap();
    for i in [0i64, 7, 250, 499] {
        for parts in 1..5 {
            let req = ScanRequest {
                predicates: vec![
                    Predicate::cmp("g", CmpOp::Eq, Value::Utf8(format!("g{}", i % 5))),
                    Predicate::cmp("lane", CmpOp::Eq, Value::Int32(1)),
                    Predicate::cmp("ts", CmpOp::Eq, Value::Int64(i)),
                ],
                ..Default::default()
            };
            let rows = dump(&t, &req, parts);
            assert_eq!(rows.len(), 1, "{i} {parts} {rows:?}");
        }
    }
}
