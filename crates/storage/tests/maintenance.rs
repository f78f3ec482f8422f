//! The maintenance manager under a steady stream of writes: segment counts and lookup cost stay
//! bounded, deleted rows are purged, disk use plateaus, and the write memory budget holds (with
//! a clear "busy" error when nothing can free memory).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use nyala_storage::{
    BatchBuilder, Database, DatabaseOptions, IfExists, MaintenanceOptions, PartitionSpec,
    StorageError, Table, TableName, TabletOptions, Value, WriteOp,
};
use rand::{Rng, SeedableRng};

const KEYS: i64 = 3_000;

fn open(
    dir: &std::path::Path,
    tablet: TabletOptions,
    maintenance: MaintenanceOptions,
) -> (Database, Table) {
    let db = Database::open(
        dir,
        DatabaseOptions {
            tablet,
            maintenance,
            scan_threads: 2,
        },
    )
    .unwrap();
    let t = db
        .create_table(
            &TableName::parse("kv").unwrap(),
            &kv_schema(),
            &PartitionSpec::hash(["id"], 2),
            IfExists::Error,
        )
        .unwrap();
    (db, t)
}

/// Every row of the table.
fn contents(t: &Table) -> BTreeMap<i64, KvRow> {
    let mut out = BTreeMap::new();
    for b in t.scan(&Default::default()).unwrap() {
        let b = b.unwrap();
        for r in 0..b.num_rows() {
            let vals: Vec<Value> = b
                .columns()
                .iter()
                .map(|c| Value::from_array(c, r).unwrap())
                .collect();
            let (id, row) = kv_from_values(&vals);
            assert!(out.insert(id, row).is_none(), "key {id} twice");
        }
    }
    out
}

#[derive(Debug, Default, Clone, Copy)]
struct Sample {
    segments: usize,
    segments_per_key: f64,
    deleted: u64,
    file_bytes: u64,
    purged: u64,
    compactions: u64,
}

fn sample(t: &Table) -> Sample {
    let mut s = Sample::default();
    let tablets = t.describe().tablets;
    for tab in &tablets {
        s.segments += tab.stats.segments;
        s.segments_per_key += tab.stats.segments_per_key / tablets.len() as f64;
        s.deleted += tab.stats.deleted_rows;
        s.file_bytes += tab.stats.segment_file_bytes;
        s.purged += tab.stats.rows_purged;
        s.compactions += tab.stats.compactions;
    }
    s
}

#[test]
fn steady_upserts_keep_segments_bounded_purge_deletions_and_plateau_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, t) = open(
        dir.path(),
        TabletOptions {
            // Small buffers: a flush every few batches, so segments pile up fast.
            flush_threshold_bytes: Some(48 * 1024),
            history_retention: Duration::ZERO,
            ..TabletOptions::default()
        },
        MaintenanceOptions {
            threads: 2,
            tick: Duration::from_millis(20),
            target_segment_bytes: 256 * 1024,
            small_segments_to_merge: 4,
            ..MaintenanceOptions::default()
        },
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut model = BTreeMap::new();
    let mut samples = vec![];
    let start = Instant::now();
    let mut batches = 0;
    while start.elapsed() < Duration::from_secs(6) {
        let mut b = BatchBuilder::new(["id", "v", "n"]);
        for _ in 0..200 {
            let id = rng.random_range(0..KEYS);
            if rng.random_bool(0.1) {
                b.push(
                    WriteOp::DeleteIgnore,
                    vec![Value::Int64(id), Value::Null, Value::Null],
                );
                model.remove(&id);
            } else {
                let row = (Some(format!("v{batches}")), Some(rng.random_range(0..1000)));
                b.push(WriteOp::Upsert, kv_values(id, &row));
                model.insert(id, row);
            }
        }
        let out = t.write(&b.build(&t.schema()).unwrap()).unwrap();
        assert!(out.errors.is_empty());
        batches += 1;
        if batches % 20 == 0 {
            samples.push(sample(&t));
        }
    }
    assert!(batches > 200, "only {batches} batches written");
    // Let the last flushes and compactions settle.
    std::thread::sleep(Duration::from_millis(500));
    let end = sample(&t);
    let second_half = &samples[samples.len() / 2..];
    let worst_segments = second_half.iter().map(|s| s.segments).max().unwrap();
    let worst_height = second_half
        .iter()
        .map(|s| s.segments_per_key)
        .fold(0.0, f64::max);
    let peak_bytes_first_half = samples[..samples.len() / 2]
        .iter()
        .map(|s| s.file_bytes)
        .max()
        .unwrap();
    let peak_bytes_second_half = second_half.iter().map(|s| s.file_bytes).max().unwrap();
    eprintln!("{batches} batches; end {end:?}; second half: worst segments {worst_segments}, worst segments/key {worst_height:.2}; disk peaks {peak_bytes_first_half} -> {peak_bytes_second_half}");
    assert!(end.compactions > 0 && end.purged > 0, "{end:?}");
    // Two tablets: without compaction each would hold ~100 segments by now.
    assert!(worst_segments <= 24, "segments piled up: {worst_segments}");
    assert!(
        worst_height <= 8.0,
        "lookups consult {worst_height:.1} segments"
    );
    // The key space is fixed, so the data is too: disk use must not keep growing.
    assert!(
        peak_bytes_second_half <= 2 * peak_bytes_first_half.max(64 * 1024),
        "disk use grows: {peak_bytes_first_half} -> {peak_bytes_second_half}"
    );
    // Deleted rows do not accumulate: at most a few segments' worth wait for a merge.
    assert!(end.deleted <= KEYS as u64, "{end:?}");
    assert_eq!(contents(&t), model);
}

#[test]
fn writes_wait_for_flushes_at_the_memory_budget_and_fail_busy_when_none_can_free_it() {
    // Flushing buffers: writes are slowed and held to the budget, and all succeed.
    let dir = tempfile::tempdir().unwrap();
    let budget = 512 * 1024;
    let (_db, t) = open(
        dir.path(),
        TabletOptions {
            flush_threshold_bytes: Some(4 << 20),
            ..test_opts()
        },
        MaintenanceOptions {
            memory_budget_bytes: budget,
            tick: Duration::from_millis(10),
            ..MaintenanceOptions::default()
        },
    );
    let mut peak = 0;
    for b in 0..400i64 {
        let mut bb = BatchBuilder::new(["id", "v", "n"]);
        for k in 0..100 {
            bb.push(
                WriteOp::Upsert,
                kv_values(b * 100 + k, &(Some("x".repeat(40)), Some(1))),
            );
        }
        t.write(&bb.build(&t.schema()).unwrap()).unwrap();
        let buffered: usize = t
            .describe()
            .tablets
            .iter()
            .map(|x| x.stats.buffer_bytes)
            .sum();
        peak = peak.max(buffered);
    }
    assert!(peak <= budget + 64 * 1024, "buffers reached {peak} bytes");
    assert_eq!(contents(&t).len(), 40_000);

    // Buffers that are never flushed in the background: at the hard limit a write waits, then
    // fails as busy, writing nothing; an explicit flush frees memory and writes go on.
    let dir = tempfile::tempdir().unwrap();
    let (_db, t) = open(
        dir.path(),
        test_opts(),
        MaintenanceOptions {
            memory_budget_bytes: 64 * 1024,
            write_stall_timeout: Duration::from_millis(200),
            ..MaintenanceOptions::default()
        },
    );
    let mut written = 0i64;
    let err = loop {
        let mut bb = BatchBuilder::new(["id", "v", "n"]);
        bb.push(
            WriteOp::Insert,
            kv_values(written, &(Some("y".repeat(100)), None)),
        );
        match t.write(&bb.build(&t.schema()).unwrap()) {
            Ok(_) => written += 1,
            Err(e) => break e,
        }
        assert!(written < 10_000, "the budget was never enforced");
    };
    assert!(matches!(err, StorageError::Busy(_)), "{err}");
    assert!(err.to_string().contains("busy"), "{err}");
    assert_eq!(
        contents(&t).len(),
        written as usize,
        "the refused write wrote nothing"
    );
    t.flush().unwrap();
    let mut bb = BatchBuilder::new(["id", "v", "n"]);
    bb.push(WriteOp::Insert, kv_values(written, &(None, None)));
    t.write(&bb.build(&t.schema()).unwrap()).unwrap();
    assert_eq!(contents(&t).len(), written as usize + 1);
}

/// Deleting rows that live in segments adds nothing to the buffer, yet the deletions must
/// reach a checkpoint (aged buffers are flushed even when empty) and then be purged.
#[test]
fn deletions_alone_are_checkpointed_and_purged_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, t) = open(
        dir.path(),
        TabletOptions {
            flush_threshold_bytes: Some(1 << 20),
            history_retention: Duration::ZERO,
            ..TabletOptions::default()
        },
        MaintenanceOptions {
            tick: Duration::from_millis(20),
            max_buffer_age: Duration::from_millis(100),
            ..MaintenanceOptions::default()
        },
    );
    let mut b = BatchBuilder::new(["id", "v", "n"]);
    for id in 0..1000 {
        b.push(WriteOp::Insert, kv_values(id, &(Some("x".into()), Some(1))));
    }
    t.write(&b.build(&t.schema()).unwrap()).unwrap();
    t.flush().unwrap();
    let mut b = BatchBuilder::new(["id", "v", "n"]);
    for id in (0..1000).step_by(2) {
        b.push(
            WriteOp::Delete,
            vec![Value::Int64(id), Value::Null, Value::Null],
        );
    }
    t.write(&b.build(&t.schema()).unwrap()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = sample(&t);
        if s.deleted == 0 && s.purged >= 500 {
            break;
        }
        assert!(Instant::now() < deadline, "never purged: {s:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let rows = contents(&t);
    assert_eq!(rows.len(), 500);
    assert!(rows.keys().all(|id| id % 2 == 1));
}

/// The nice value of this process's thread named `name` (from `/proc`), if there is one.
#[cfg(target_os = "linux")]
fn thread_nice(name: &str) -> Option<i64> {
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
        // Fields after the parenthesised name: state is field 3, nice field 19.
        let rest = &stat[stat.rfind(')')? + 2..];
        return rest.split(' ').nth(16)?.parse().ok();
    }
    None
}

/// Compactions yield the CPU to requests: the compacting worker runs `compaction_nice` levels
/// below the flush worker, which keeps the process's own priority, and compactions still
/// happen.
#[cfg(target_os = "linux")]
#[test]
fn compacting_workers_run_at_lower_priority() {
    let dir = tempfile::tempdir().unwrap();
    let (db, t) = open(
        dir.path(),
        TabletOptions {
            flush_threshold_bytes: Some(16 * 1024),
            ..TabletOptions::default()
        },
        MaintenanceOptions {
            threads: 2,
            tick: Duration::from_millis(20),
            target_segment_bytes: 1 << 20,
            ..MaintenanceOptions::default()
        },
    );
    // A worker lowers its priority as it starts, which may be just after `open` returns.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let flush_worker = thread_nice("nyala-maint-0").expect("flush worker running");
        let compact_worker = thread_nice("nyala-maint-1").expect("compaction worker running");
        // Ten levels below the process (whatever it runs at), at most nice 19.
        if compact_worker == (flush_worker + 10).min(19) && compact_worker > flush_worker {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nice values: flush worker {flush_worker}, compaction worker {compact_worker}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    for round in 0..40 {
        let mut b = BatchBuilder::new(["id", "v", "n"]);
        for i in 0..100 {
            b.push(
                WriteOp::Upsert,
                vec![
                    Value::Int64(round * 100 + i),
                    Value::Utf8(format!("v{round}")),
                    Value::Int32(i as i32),
                ],
            );
        }
        t.write(&b.build(&t.schema()).unwrap()).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while db.maintenance_stats().compactions == 0 {
        assert!(Instant::now() < deadline, "no compaction ran");
        std::thread::sleep(Duration::from_millis(20));
    }
}
