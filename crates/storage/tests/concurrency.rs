//! Writers, scanners, point lookups and flushes at once: every scan sees each key at most once
//! and a consistent snapshot (each batch all or nothing).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use nyala_storage::{BatchBuilder, Tablet, TabletOptions, Value, WriteOp};

const GROUP: i64 = 20;

#[test]
fn writers_scanners_flushes_and_compactions_at_once() {
    run(test_opts().history_retention);
}

/// The same with no history kept: compactions purge superseded and deleted rows while scans
/// (at the latest snapshot) run.
#[test]
fn writers_scanners_and_purging_compactions_at_once() {
    run(Duration::ZERO);
}

fn run(history_retention: Duration) {
    let keep_history = !history_retention.is_zero();
    let dir = tempfile::tempdir().unwrap();
    let opts = TabletOptions {
        flush_threshold_bytes: Some(64 * 1024),
        history_retention,
        ..test_opts()
    };
    let t = Arc::new(Tablet::create(dir.path(), &kv_schema(), opts).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = vec![];
    // Writers: writer w owns keys [w*GROUP, (w+1)*GROUP); each batch sets every key of the
    // group to the same n (upsert), or deletes the whole group.
    for w in 0..3i64 {
        let t = t.clone();
        handles.push(std::thread::spawn(move || {
            for i in 0..=150i32 {
                let mut b = BatchBuilder::new(["id", "v", "n"]);
                for k in w * GROUP..(w + 1) * GROUP {
                    if i % 10 == 9 {
                        b.push(
                            WriteOp::DeleteIgnore,
                            vec![Value::Int64(k), Value::Null, Value::Null],
                        );
                    } else {
                        b.push(
                            WriteOp::Upsert,
                            vec![
                                Value::Int64(k),
                                Value::Utf8(format!("w{w}")),
                                Value::Int32(i),
                            ],
                        );
                    }
                }
                let out = t.write(&b.build(&t.schema()).unwrap()).unwrap();
                assert!(out.errors.is_empty());
            }
        }));
    }
    // Flusher.
    {
        let t = t.clone();
        let stop = stop.clone();
        handles.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                t.flush().unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
        }));
    }
    // Compactor.
    {
        let t = t.clone();
        let stop = stop.clone();
        handles.push(std::thread::spawn(move || {
            let mut purged = 0;
            while !stop.load(Ordering::Relaxed) {
                purged += t.compact_all().unwrap().purged_rows;
                std::thread::sleep(Duration::from_millis(7));
            }
            if !keep_history {
                assert!(purged > 0, "compactions purged deleted rows");
            }
        }));
    }
    // Scanners and readers check consistency.
    let mut checkers = vec![];
    for _ in 0..2 {
        let t = t.clone();
        let stop = stop.clone();
        checkers.push(std::thread::spawn(move || {
            let mut scans = 0;
            // At least one round, however late this thread is scheduled.
            while scans == 0 || !stop.load(Ordering::Relaxed) {
                let snap = t.latest_timestamp();
                // Panics on a duplicate key. Without history, only "the latest" is readable.
                let rows = scan_all(&t, keep_history.then_some(snap));
                for w in 0..3i64 {
                    let ns: Vec<Option<i32>> = (w * GROUP..(w + 1) * GROUP)
                        .map(|k| rows.get(&k).map(|r| r.1.unwrap()))
                        .collect();
                    assert!(
                        ns.iter().all(|n| *n == ns[0]),
                        "torn batch in group {w}: {ns:?}"
                    );
                    // Point lookups at the same snapshot agree with the scan.
                    if !keep_history {
                        continue;
                    }
                    let k = w * GROUP + 7;
                    let got = t
                        .get_at(&[Value::Int64(k)], snap)
                        .unwrap()
                        .map(|v| kv_from_values(&v).1);
                    assert_eq!(got.as_ref(), rows.get(&k));
                }
                scans += 1;
            }
            scans
        }));
    }
    for h in handles.drain(..3) {
        h.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
    for c in checkers {
        assert!(c.join().unwrap() > 0);
    }
    // Final state: every group at its last batch (i = 150: upsert with n = 150).
    t.flush().unwrap();
    let rows = scan_all(&t, None);
    assert_eq!(rows.len(), 3 * GROUP as usize);
    assert!(rows.values().all(|r| r.1 == Some(150)));
    assert!(t.stats().segments >= 2, "flushes happened during the run");
}
