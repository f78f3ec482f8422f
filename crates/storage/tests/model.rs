//! Randomised model test: long random sequences of every write operation, flushes, reopens and
//! snapshot reads, checked against a `BTreeMap` oracle after every step.

mod common;

use std::collections::BTreeMap;

use common::*;
use nyala_storage::{BatchBuilder, RowErrorKind, Tablet, TabletOptions, Timestamp, Value, WriteOp};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Action {
    /// A batch; `partial` batches carry only `id` and `v` (so `n` keeps its value on update).
    Write {
        partial: bool,
        rows: Vec<(WriteOp, i64, Option<String>, Option<i32>)>,
    },
    Flush,
    /// Merge every on-disk segment (purging nothing: the tests keep a day of history).
    Compact,
    Reopen,
    /// Check a past snapshot (index into the history, modulo its length).
    Snapshot(usize),
}

fn op() -> impl Strategy<Value = WriteOp> {
    prop::sample::select(WriteOp::ALL.to_vec())
}

fn action() -> impl Strategy<Value = Action> {
    let row = (
        op(),
        0i64..24,
        prop::option::of("[a-c]{0,3}"),
        prop::option::of(-5i32..5),
    );
    prop_oneof![
        8 => (any::<bool>(), prop::collection::vec(row, 1..10))
            .prop_map(|(partial, rows)| Action::Write { partial, rows }),
        2 => Just(Action::Flush),
        1 => Just(Action::Compact),
        1 => Just(Action::Reopen),
        2 => any::<usize>().prop_map(Action::Snapshot),
    ]
}

type Model = BTreeMap<i64, KvRow>;

/// Applies one row to the model; returns the expected per-row error.
fn apply_model(
    m: &mut Model,
    partial: bool,
    (op, id, v, n): &(WriteOp, i64, Option<String>, Option<i32>),
) -> Option<RowErrorKind> {
    let exists = m.contains_key(id);
    let new_row = |old: Option<&KvRow>| -> KvRow {
        match (partial, old) {
            (true, Some(o)) => (v.clone(), o.1),
            (true, None) => (v.clone(), None),
            (false, _) => (v.clone(), *n),
        }
    };
    match (op, exists) {
        (WriteOp::Insert, true) => return Some(RowErrorKind::DuplicateKey),
        (WriteOp::Update | WriteOp::Delete, false) => return Some(RowErrorKind::KeyNotFound),
        (WriteOp::InsertIgnore, true) | (WriteOp::UpdateIgnore | WriteOp::DeleteIgnore, false) => {}
        (WriteOp::Insert | WriteOp::InsertIgnore | WriteOp::Upsert, false) => {
            m.insert(*id, new_row(None));
        }
        (WriteOp::Upsert | WriteOp::Update | WriteOp::UpdateIgnore, true) => {
            let r = new_row(m.get(id));
            m.insert(*id, r);
        }
        (WriteOp::Delete | WriteOp::DeleteIgnore, true) => {
            m.remove(id);
        }
    }
    None
}

fn run(actions: Vec<Action>) {
    run_with(actions, test_opts())
}

/// Runs `actions`; with no history retention (so flushes and compactions purge superseded
/// rows), past snapshots are not checked: they are gone by design.
fn run_with(actions: Vec<Action>, opts: TabletOptions) {
    let keep_history = !opts.history_retention.is_zero();
    let dir = tempfile::tempdir().unwrap();
    let mut t = Some(Tablet::create(dir.path(), &kv_schema(), opts.clone()).unwrap());
    let mut model = Model::new();
    let mut history: Vec<(Timestamp, Model)> = Vec::new();
    for a in actions {
        let tab = t.as_ref().unwrap();
        match a {
            Action::Write { partial, rows } => {
                let cols: &[&str] = if partial {
                    &["id", "v"]
                } else {
                    &["id", "v", "n"]
                };
                let mut b = BatchBuilder::new(cols.iter().copied());
                let mut expected = Vec::new();
                for (i, r) in rows.iter().enumerate() {
                    let mut vals = vec![
                        Value::Int64(r.1),
                        r.2.clone().map(Value::Utf8).unwrap_or(Value::Null),
                    ];
                    if !partial {
                        vals.push(r.3.map(Value::Int32).unwrap_or(Value::Null));
                    }
                    b.push(r.0, vals);
                    if let Some(kind) = apply_model(&mut model, partial, r) {
                        expected.push((i, kind));
                    }
                }
                let out = tab.write(&b.build(&tab.schema()).unwrap()).unwrap();
                let got: Vec<_> = out.errors.iter().map(|e| (e.row, e.kind)).collect();
                assert_eq!(got, expected, "per-row errors of {rows:?}");
                history.push((out.timestamp, model.clone()));
            }
            Action::Flush => tab.flush().unwrap(),
            Action::Compact => {
                tab.compact_all().unwrap();
                let stats = tab.stats();
                assert!(stats.segments <= 1, "{stats:?}");
                let last_write = history.last().map_or(0, |(ts, _)| *ts);
                if !keep_history && stats.checkpoint_timestamp >= last_write {
                    // Every deletion is in the checkpoint and no history is kept: all purged.
                    assert_eq!(stats.deleted_rows, 0, "{stats:?}");
                }
            }
            Action::Reopen => {
                drop(t.take());
                t = Some(Tablet::open(dir.path(), opts.clone()).unwrap());
            }
            Action::Snapshot(i) => {
                if keep_history && !history.is_empty() {
                    let (ts, m) = &history[i % history.len()];
                    assert_eq!(&scan_all(tab, Some(*ts)), m, "scan at snapshot {ts}");
                    for id in [0i64, 5, 11, 23] {
                        let got = tab
                            .get_at(&[Value::Int64(id)], *ts)
                            .unwrap()
                            .map(|v| kv_from_values(&v).1);
                        assert_eq!(got.as_ref(), m.get(&id), "get of {id} at {ts}");
                    }
                }
            }
        }
        let tab = t.as_ref().unwrap();
        assert_eq!(scan_all(tab, None), model, "latest scan");
        for id in 0..24i64 {
            let got = tab
                .get(&[Value::Int64(id)])
                .unwrap()
                .map(|v| kv_from_values(&v).1);
            assert_eq!(got.as_ref(), model.get(&id), "get of {id}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn tablet_matches_model(actions in prop::collection::vec(action(), 1..80)) {
        run(actions);
    }

    #[test]
    fn tablet_matches_model_without_the_column_cache(actions in prop::collection::vec(action(), 1..80)) {
        run_with(actions, TabletOptions { column_cache_bytes: 0, ..test_opts() });
    }

    #[test]
    fn tablet_matches_model_when_history_is_purged(actions in prop::collection::vec(action(), 1..80)) {
        run_with(actions, TabletOptions { history_retention: std::time::Duration::ZERO, ..test_opts() });
    }
}

/// A regression case kept by name: updates of a key living in a segment, across a flush and a
/// reopen, then a snapshot read from before the update.
#[test]
fn update_in_segment_then_reopen_then_old_snapshot() {
    let rows = |op, id, v: &str| vec![(op, id, Some(v.to_string()), Some(1))];
    run(vec![
        Action::Write {
            partial: false,
            rows: rows(WriteOp::Insert, 3, "a"),
        },
        Action::Flush,
        Action::Write {
            partial: true,
            rows: rows(WriteOp::Update, 3, "b"),
        },
        Action::Reopen,
        Action::Snapshot(0),
        Action::Write {
            partial: false,
            rows: rows(WriteOp::Delete, 3, ""),
        },
        Action::Flush,
        Action::Reopen,
        Action::Snapshot(1),
        Action::Write {
            partial: false,
            rows: rows(WriteOp::Insert, 3, "c"),
        },
        Action::Snapshot(2),
    ]);
}
