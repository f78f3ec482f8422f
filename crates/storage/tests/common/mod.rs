//! Helpers shared by the storage integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use nyala_storage::{
    BatchBuilder, ColumnSchema, DataType, ScanRequest, Schema, Tablet, TabletOptions, Timestamp,
    Value, WriteOp,
};

/// id BIGINT key, v TEXT, n INT.
pub fn kv_schema() -> Schema {
    Schema::new(
        vec![
            ColumnSchema::not_null("id", DataType::Int64),
            ColumnSchema::nullable("v", DataType::Utf8),
            ColumnSchema::nullable("n", DataType::Int32),
        ],
        &["id"],
    )
    .unwrap()
}

/// Options for tests: explicit flushes and compactions only, long history, small pages so that segments have
/// several blocks and row groups even with few rows.
pub fn test_opts() -> TabletOptions {
    TabletOptions {
        flush_threshold_bytes: None,
        background_compaction: false,
        history_retention: Duration::from_secs(86_400),
        page_rows: 4,
        key_block_rows: 4,
        row_group_rows: 16,
        ..TabletOptions::default()
    }
}

pub fn create(dir: &Path) -> Tablet {
    Tablet::create(dir, &kv_schema(), test_opts()).unwrap()
}

/// One row of the kv table.
pub type KvRow = (Option<String>, Option<i32>);

pub fn kv_values(id: i64, row: &KvRow) -> Vec<Value> {
    vec![
        Value::Int64(id),
        row.0.clone().map(Value::Utf8).unwrap_or(Value::Null),
        row.1.map(Value::Int32).unwrap_or(Value::Null),
    ]
}

pub fn kv_from_values(v: &[Value]) -> (i64, KvRow) {
    let id = match v[0] {
        Value::Int64(i) => i,
        ref o => panic!("bad id {o:?}"),
    };
    let s = match &v[1] {
        Value::Utf8(s) => Some(s.clone()),
        Value::Null => None,
        o => panic!("bad v {o:?}"),
    };
    let n = match v[2] {
        Value::Int32(n) => Some(n),
        Value::Null => None,
        ref o => panic!("bad n {o:?}"),
    };
    (id, (s, n))
}

/// Writes one operation on a full row.
pub fn write1(t: &Tablet, op: WriteOp, id: i64, row: KvRow) -> nyala_storage::WriteOutcome {
    let mut b = BatchBuilder::new(["id", "v", "n"]);
    b.push(op, kv_values(id, &row));
    t.write(&b.build(&t.schema()).unwrap()).unwrap()
}

/// Every row visible at `snapshot`, by key; panics if a key is seen twice.
pub fn scan_all(t: &Tablet, snapshot: Option<Timestamp>) -> BTreeMap<i64, KvRow> {
    let req = ScanRequest {
        snapshot,
        batch_size: Some(7),
        ..Default::default()
    };
    let mut out = BTreeMap::new();
    for batch in t.scan(&req).unwrap() {
        let batch = batch.unwrap();
        for r in 0..batch.num_rows() {
            let vals: Vec<Value> = batch
                .columns()
                .iter()
                .map(|c| Value::from_array(c, r).unwrap())
                .collect();
            let (id, row) = kv_from_values(&vals);
            assert!(
                out.insert(id, row).is_none(),
                "key {id} seen twice in one scan"
            );
        }
    }
    out
}

/// The first column of a scan's batches, an `Int32` column, sorted.
pub fn sorted_i32<E: std::fmt::Debug>(
    batches: impl Iterator<Item = Result<arrow::array::RecordBatch, E>>,
) -> Vec<i32> {
    use arrow::array::AsArray;
    use arrow::datatypes::Int32Type;
    let mut v: Vec<i32> = batches
        .flat_map(|b| {
            let b = b.unwrap();
            b.column(0).as_primitive::<Int32Type>().values().to_vec()
        })
        .collect();
    v.sort_unstable();
    v
}

/// Rows a scan returns.
pub fn count_rows(t: &Tablet, req: &ScanRequest) -> usize {
    t.scan(req).unwrap().map(|b| b.unwrap().num_rows()).sum()
}

/// A small deterministic generator (xorshift), so a failing seed replays exactly.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Whether `a op b`, as the storage engine compares values.
pub fn cmpx<T: PartialOrd>(op: nyala_storage::CmpOp, a: &T, b: &T) -> bool {
    match op {
        nyala_storage::CmpOp::Eq => a == b,
        nyala_storage::CmpOp::Lt => a < b,
        nyala_storage::CmpOp::Le => a <= b,
        nyala_storage::CmpOp::Gt => a > b,
        nyala_storage::CmpOp::Ge => a >= b,
    }
}
