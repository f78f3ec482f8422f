//! Crash test: a writer in a child process is killed with SIGKILL at random moments, many times.
//! After each kill the tablet reopens with every acknowledged batch present and the batch that
//! was in flight either wholly applied or wholly absent.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nyala_storage::{BatchBuilder, Tablet, TabletOptions, Value, WriteBatch, WriteOp};
use rand::Rng;

const KEYS_PER_BATCH: i64 = 10;

/// Every fourth batch also inserts this many keys of its own: big enough that its WAL record
/// syncs on the sync pool while the batch is applied.
const BIG_BATCH_EXTRA: i64 = 300;

fn is_big(b: i64) -> bool {
    b % 4 == 1
}

fn big_key(b: i64, k: i64) -> i64 {
    100_000_000 + b * BIG_BATCH_EXTRA + k
}

/// Options that make flushes (foreground and background) frequent, and keep no history, so
/// that compactions purge.
fn crash_opts() -> TabletOptions {
    TabletOptions {
        flush_threshold_bytes: Some(16 * 1024),
        history_retention: Duration::ZERO,
        ..test_opts()
    }
}

/// Batch `b`: inserts ten new keys (and, if big, 300 more), rewrites a hot key, and deletes an
/// older batch's first key.
fn batch(t: &Tablet, b: i64) -> WriteBatch {
    let mut bb = BatchBuilder::new(["id", "v", "n"]);
    for k in 0..BIG_BATCH_EXTRA {
        if is_big(b) {
            bb.push(
                WriteOp::Insert,
                vec![
                    Value::Int64(big_key(b, k)),
                    Value::Utf8(format!("big{b}")),
                    Value::Int32(b as i32),
                ],
            );
        }
    }
    for k in 0..KEYS_PER_BATCH {
        bb.push(
            WriteOp::Insert,
            vec![
                Value::Int64(1000 + b * KEYS_PER_BATCH + k),
                Value::Utf8(format!("b{b}")),
                Value::Int32(b as i32),
            ],
        );
    }
    bb.push(
        WriteOp::Upsert,
        vec![
            Value::Int64(b % 7),
            Value::Utf8(format!("hot{b}")),
            Value::Int32(b as i32),
        ],
    );
    if b >= 3 {
        bb.push(
            WriteOp::Delete,
            vec![
                Value::Int64(1000 + (b - 3) * KEYS_PER_BATCH),
                Value::Null,
                Value::Null,
            ],
        );
    }
    bb.build(&t.schema()).unwrap()
}

/// The table after batches `0..n`.
fn expected(n: i64) -> BTreeMap<i64, KvRow> {
    let mut m = BTreeMap::new();
    for b in 0..n {
        for k in 0..KEYS_PER_BATCH {
            m.insert(
                1000 + b * KEYS_PER_BATCH + k,
                (Some(format!("b{b}")), Some(b as i32)),
            );
        }
        if is_big(b) {
            for k in 0..BIG_BATCH_EXTRA {
                m.insert(big_key(b, k), (Some(format!("big{b}")), Some(b as i32)));
            }
        }
        m.insert(b % 7, (Some(format!("hot{b}")), Some(b as i32)));
        if b >= 3 {
            m.remove(&(1000 + (b - 3) * KEYS_PER_BATCH));
        }
    }
    m
}

/// The child: writes batches from `NYALA_CRASH_START` on, printing `ack N` after each.
#[test]
#[ignore = "run by crash_test as a child process"]
fn crash_child_writer() {
    let Ok(dir) = std::env::var("NYALA_CRASH_DIR") else {
        return;
    };
    let start: i64 = std::env::var("NYALA_CRASH_START").unwrap().parse().unwrap();
    let dir = Path::new(&dir);
    let t = std::sync::Arc::new(if start == 0 {
        Tablet::create(dir, &kv_schema(), crash_opts()).unwrap()
    } else {
        Tablet::open(dir, crash_opts()).unwrap()
    });
    // Compactions run all the time, so kills land in every phase of one.
    let c = t.clone();
    std::thread::spawn(move || loop {
        if c.compact_all().unwrap().input_segments > 1 {
            println!("compacted");
        }
        std::thread::sleep(Duration::from_millis(3));
    });
    println!("ready");
    for b in start.. {
        let out = t.write(&batch(&t, b)).unwrap();
        assert!(out.errors.is_empty(), "batch {b}: {:?}", out.errors);
        println!("ack {b}");
        if b % 5 == 0 {
            t.flush().unwrap();
        }
    }
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rng();
    let mut next = 0i64; // first batch not known to be in the tablet
    let mut compactions = 0;
    let rounds = 12;
    for round in 0..rounds {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "crash_child_writer",
                "--exact",
                "--include-ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("NYALA_CRASH_DIR", dir.path())
            .env("NYALA_CRASH_START", next.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Wait until the child is writing, then let it run a random while.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("child produced output");
            if line.ends_with("ready") {
                break;
            }
            assert!(Instant::now() < deadline, "child never became ready");
        }
        // Let at least one batch through (so every round makes progress), then a random while.
        let mut acked_before_kill = None;
        while let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) {
            if let Some(n) = line.strip_prefix("ack ") {
                acked_before_kill = Some(n.parse::<i64>().unwrap());
                break;
            }
            compactions += (line == "compacted") as usize;
        }
        assert!(
            acked_before_kill.is_some(),
            "round {round}: the child acknowledged nothing"
        );
        std::thread::sleep(Duration::from_millis(rng.random_range(0..250)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let mut acked = acked_before_kill.unwrap();
        while let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            if let Some(n) = line.strip_prefix("ack ") {
                acked = n.parse().unwrap();
            }
            compactions += (line == "compacted") as usize;
        }
        // Reopen: everything acknowledged is there; the in-flight batch is all or nothing.
        let t = Tablet::open(dir.path(), crash_opts()).unwrap();
        let got = scan_all(&t, None);
        let in_flight_applied = got.contains_key(&(1000 + (acked + 1) * KEYS_PER_BATCH + 1));
        let n = if in_flight_applied {
            acked + 2
        } else {
            acked + 1
        };
        assert_eq!(
            got,
            expected(n),
            "round {round}: acked through {acked}, in flight applied: {in_flight_applied}"
        );
        for id in [0i64, 3, 1000 + acked.max(0) * KEYS_PER_BATCH + 5] {
            let row = t
                .get(&[Value::Int64(id)])
                .unwrap()
                .map(|v| kv_from_values(&v).1);
            assert_eq!(
                row.as_ref(),
                expected(n).get(&id),
                "round {round}: get {id}"
            );
        }
        // Nothing but the listed segments' files is left (unfinished or replaced ones are gone).
        let files = std::fs::read_dir(dir.path().join("segments"))
            .unwrap()
            .count();
        assert_eq!(
            files,
            2 * t.stats().segments,
            "round {round}: segment files"
        );
        next = n;
        drop(t);
    }
    assert!(next >= rounds, "every round made progress ({next} batches)");
    assert!(compactions > 0, "segments were merged while the writer ran");
}
