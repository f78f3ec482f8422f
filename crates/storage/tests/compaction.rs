//! Compactions: merged segments read as before (latest and past snapshots, after reopening),
//! purge what no snapshot can see, and give disk space back once no reader holds the old files.

mod common;

use std::time::Duration;

use common::*;
use nyala_storage::{ScanRequest, Tablet, TabletOptions, WriteOp};

fn segment_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("segments")).unwrap().count()
}

/// Four flushed generations of overlapping keys, with updates and deletes hitting older ones.
fn four_generations(
    t: &Tablet,
) -> Vec<(
    nyala_storage::Timestamp,
    std::collections::BTreeMap<i64, KvRow>,
)> {
    let mut snapshots = vec![];
    for g in 0..4i64 {
        for id in (g * 10)..(g * 10 + 40) {
            write1(
                t,
                WriteOp::Upsert,
                id,
                (Some(format!("g{g}")), Some(id as i32)),
            );
        }
        if g > 0 {
            write1(t, WriteOp::Delete, g * 10 - 5, (None, None));
        }
        snapshots.push((t.latest_timestamp(), scan_all(t, None)));
        t.flush().unwrap();
    }
    snapshots
}

#[test]
fn merged_segments_read_as_before_at_every_snapshot_and_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let t = create(dir.path());
    let snapshots = four_generations(&t);
    let before = t.stats();
    assert_eq!(before.segments, 4);
    let report = t.compact_all().unwrap();
    assert_eq!(report.input_segments, 4);
    // A day of history is kept: superseded versions stay for the snapshots.
    assert_eq!(report.purged_rows, 0);
    assert_eq!(report.output_rows, before.segment_rows);
    assert_eq!(t.stats().segments, 1);
    for (ts, rows) in &snapshots {
        assert_eq!(&scan_all(&t, Some(*ts)), rows, "snapshot {ts}");
    }
    // Writes after the merge land on the merged segment's rows.
    write1(&t, WriteOp::Update, 12, (Some("late".into()), Some(-1)));
    write1(&t, WriteOp::Delete, 13, (None, None));
    let latest = scan_all(&t, None);
    assert_eq!(latest.get(&12), Some(&(Some("late".into()), Some(-1))));
    assert!(!latest.contains_key(&13));
    drop(t);
    let t = Tablet::open(dir.path(), test_opts()).unwrap();
    assert_eq!(scan_all(&t, None), latest);
    for (ts, rows) in &snapshots {
        assert_eq!(&scan_all(&t, Some(*ts)), rows, "snapshot {ts} after reopen");
    }
    assert_eq!(segment_files(dir.path()), 2);
}

#[test]
fn compaction_purges_what_no_snapshot_sees_and_frees_the_files_after_the_last_reader() {
    let dir = tempfile::tempdir().unwrap();
    let opts = TabletOptions {
        history_retention: Duration::ZERO,
        ..test_opts()
    };
    let t = Tablet::create(dir.path(), &kv_schema(), opts.clone()).unwrap();
    four_generations(&t);
    let expected = scan_all(&t, None);
    let stats = t.stats();
    assert!(stats.deleted_rows > 0, "{stats:?}");
    assert_eq!(segment_files(dir.path()), 8);
    // A scan started before the merge holds the old segments.
    let mut open_scan = t
        .scan(&ScanRequest {
            batch_size: Some(3),
            ..Default::default()
        })
        .unwrap();
    let first = open_scan.next().unwrap().unwrap().num_rows();
    let report = t.compact_all().unwrap();
    assert_eq!(report.purged_rows, stats.deleted_rows);
    assert_eq!(report.output_rows, expected.len() as u64);
    let after = t.stats();
    assert_eq!((after.segments, after.deleted_rows), (1, 0));
    assert!(after.segment_file_bytes < stats.segment_file_bytes);
    assert_eq!(scan_all(&t, None), expected);
    // The old files stay while the scan holds them, and the scan still reads them whole.
    assert_eq!(segment_files(dir.path()), 10);
    let rest: usize = open_scan.map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(first + rest, expected.len());
    assert_eq!(segment_files(dir.path()), 2);
    drop(t);
    let t = Tablet::open(dir.path(), opts).unwrap();
    assert_eq!(scan_all(&t, None), expected);
    assert_eq!(t.stats().deleted_rows, 0);
}

/// A compaction leaves the key blocks of its output in the key cache as it writes them; with
/// blocks that straddle row groups (5-row blocks, 16-row row groups) and keys with several
/// versions, every key is still found by lookups and presence checks, exactly as a scan sees it.
#[test]
fn keys_are_found_in_a_merged_segment_whose_blocks_straddle_row_groups() {
    let dir = tempfile::tempdir().unwrap();
    let opts = TabletOptions {
        page_rows: 5,
        key_block_rows: 5,
        row_group_rows: 16,
        ..test_opts()
    };
    let t = Tablet::create(dir.path(), &kv_schema(), opts).unwrap();
    four_generations(&t);
    t.compact_all().unwrap();
    assert_eq!(t.stats().segments, 1);
    let rows = scan_all(&t, None);
    for id in -5..80i64 {
        let got = t.get(&[nyala_storage::Value::Int64(id)]).unwrap();
        let want = rows.get(&id).map(|r| kv_values(id, r));
        assert_eq!(got, want, "get {id}");
        // An insert of a present key is refused; of an absent one, applied.
        let out = write1(&t, WriteOp::Insert, id, (Some("new".into()), None));
        assert_eq!(out.errors.len(), usize::from(want.is_some()), "insert {id}");
    }
    // Every key now exists once: upserts replace, a scan sees each key once.
    for id in -5..80i64 {
        write1(
            &t,
            WriteOp::Upsert,
            id,
            (Some("up".into()), Some(id as i32)),
        );
    }
    let after = scan_all(&t, None);
    assert_eq!(after.len(), 85);
    assert!(after
        .iter()
        .all(|(id, r)| r == &(Some("up".into()), Some(*id as i32))));
}
