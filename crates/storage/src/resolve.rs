//! Key resolution and the application of write batches: the heart of the write path, shared
//! by live writes and WAL replay (so that recovery decides every row exactly as the original
//! write did).

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::row::Rows;

use nyala_common::Value;

use crate::clock::Timestamp;
use crate::error::{Result, StorageError};
use crate::memtable::{KeyEntry, MemLookup, MemState};
use crate::segment::{new_key_block_cache, KeyBlockCache, ProbeKey, Segment};
use crate::tablet::Version;
use crate::write::{RowError, RowErrorKind, ValidatedBatch, WriteOp, WriteOutcome};

/// Location of the live copy of a key, from the writer's point of view.
enum Location {
    Buffer,
    Segment(Arc<Segment>, u32),
    Absent,
}

/// Finds keys in a tablet's buffer and segments, and applies batches.
///
/// Rows are encoded with the codec of the [`Version`] they are applied to or read from: a
/// schema change installs a new version with an empty buffer (see `Tablet::alter_schema`).
pub(crate) struct Resolver {
    key_blocks: Arc<KeyBlockCache>,
}

impl Resolver {
    pub fn new(key_cache_bytes: u64) -> Self {
        Resolver {
            key_blocks: Arc::new(new_key_block_cache(key_cache_bytes)),
        }
    }

    /// The cache of decoded key blocks, for writers of segments to fill (compactions).
    pub fn key_blocks(&self) -> &Arc<KeyBlockCache> {
        &self.key_blocks
    }

    /// Where the live copy of `key` is, counting every applied write (writer lock held).
    ///
    /// `key_columns` are the batch's key columns encoded one by one, and `i` the row: segments
    /// whose per-column key bounds exclude the row are skipped without touching their filter.
    fn locate(
        &self,
        v: &Version,
        entry: &KeyEntry<'_>,
        key: &[u8],
        key_columns: &[Rows],
        i: usize,
    ) -> Result<Location> {
        match entry.state() {
            MemState::Live => Ok(Location::Buffer),
            MemState::Deleted => Ok(Location::Absent),
            MemState::Unknown => self.locate_in_segments(v, key, key_columns, i),
        }
    }

    /// Where the live copy of `key` is among the segments, for a key the buffer lacks.
    fn locate_in_segments(
        &self,
        v: &Version,
        key: &[u8],
        key_columns: &[Rows],
        i: usize,
    ) -> Result<Location> {
        let probe = ProbeKey::new(key);
        for seg in v
            .segments
            .iter()
            .rev()
            .filter(|s| s.meta.may_hold(key_columns, i))
        {
            if let Some(row) =
                seg.find_visible(&v.codec, &self.key_blocks, &probe, Timestamp::MAX)?
            {
                return Ok(Location::Segment(seg.clone(), row));
            }
        }
        Ok(Location::Absent)
    }

    /// The row (all columns, one-row batch) with `key` visible at `snapshot`.
    pub fn lookup(
        &self,
        v: &Version,
        key: &[u8],
        snapshot: Timestamp,
    ) -> Result<Option<RecordBatch>> {
        match v.memtable.get(key, snapshot) {
            MemLookup::Live(row) => return Ok(Some(v.codec.decode_rows([row.as_slice()])?)),
            MemLookup::Deleted => return Ok(None),
            MemLookup::Unknown => {}
        }
        let probe = ProbeKey::new(key);
        for seg in v.segments.iter().rev() {
            if let Some(row) = seg.find_visible(&v.codec, &self.key_blocks, &probe, snapshot)? {
                return Ok(Some(seg.read_row(&v.codec, row as u64, &probe)?));
            }
        }
        Ok(None)
    }

    /// The new encoded row for row `i`: as given, or merged over `old` for partial batches.
    ///
    /// `present` says which columns the write changes: the batch's, or for an `Upsert` of an
    /// existing key with limited upsert columns, those.
    fn new_row(
        &self,
        v: &Version,
        b: &ValidatedBatch,
        i: usize,
        old: Option<RecordBatch>,
        present: &[bool],
    ) -> Result<Box<[u8]>> {
        let old = match old {
            Some(old) if !present.iter().all(|p| *p) => old,
            _ => return Ok(b.rows.row(i).into()),
        };
        let cols: Vec<ArrayRef> = (0..b.columns.len())
            .map(|c| {
                if present[c] {
                    b.columns[c].slice(i, 1)
                } else {
                    old.column(c).clone()
                }
            })
            .collect();
        Ok(v.codec.encode_rows(&cols)?.row(0).into())
    }

    fn old_row(
        &self,
        v: &Version,
        entry: &KeyEntry<'_>,
        loc: &Location,
    ) -> Result<Option<RecordBatch>> {
        Ok(match loc {
            Location::Buffer => {
                let row = entry.row().ok_or_else(|| {
                    StorageError::Corrupt("buffer row vanished under the writer".into())
                })?;
                Some(v.codec.decode_rows([row])?)
            }
            Location::Segment(seg, r) => {
                Some(seg.read_row(&v.codec, *r as u64, &ProbeKey::new(entry.key()))?)
            }
            Location::Absent => None,
        })
    }

    /// Applies every row of a validated batch at `ts` (writer lock held, or recovery).
    pub fn apply(&self, v: &Version, b: &ValidatedBatch, ts: Timestamp) -> Result<WriteOutcome> {
        let mut out = WriteOutcome {
            timestamp: ts,
            ..Default::default()
        };
        let key_columns = if v.segments.is_empty() {
            vec![]
        } else {
            v.codec
                .schema()
                .key_indices()
                .iter()
                .enumerate()
                .map(|(k, &c)| v.codec.encode_key_column(k, &b.columns[c]))
                .collect::<std::result::Result<Vec<_>, _>>()?
        };
        // An upsert that sets every column writes the same row whatever the key's state: it
        // goes into the buffer first, and only a key the buffer lacked is looked for in the
        // segments (to delete the copy there).
        let whole_upserts = b
            .upsert
            .as_ref()
            .map_or(&b.present, |u| &u.present)
            .iter()
            .all(|p| *p);
        let guard = scc::Guard::new();
        for (i, &op) in b.ops.iter().enumerate() {
            let key = b.keys.row(i);
            let key = key.as_ref();
            if op == WriteOp::Upsert && whole_upserts {
                match v.memtable.insert_new(key, ts, b.rows.row(i).into()) {
                    Ok(()) => {
                        if let Location::Segment(seg, r) =
                            self.locate_in_segments(v, key, &key_columns, i)?
                        {
                            seg.dv.delete(r, ts);
                        }
                    }
                    Err(row) => v.memtable.entry(key, &guard).push(ts, Some(row)),
                }
                out.applied += 1;
                continue;
            }
            let entry = v.memtable.entry(key, &guard);
            let loc = self.locate(v, &entry, key, &key_columns, i)?;
            let exists = !matches!(loc, Location::Absent);
            let row_error = |kind: RowErrorKind| {
                let what = match kind {
                    RowErrorKind::DuplicateKey => "duplicate key",
                    RowErrorKind::KeyNotFound => "key not found",
                    RowErrorKind::NoPartition => "no partition",
                };
                RowError {
                    row: i,
                    kind,
                    message: format!("{what}: {}", self.describe_key(v, b, i)),
                }
            };
            match (op, exists) {
                (WriteOp::Insert, true) => out.errors.push(row_error(RowErrorKind::DuplicateKey)),
                (WriteOp::Update | WriteOp::Delete, false) => {
                    out.errors.push(row_error(RowErrorKind::KeyNotFound))
                }
                (WriteOp::InsertIgnore, true)
                | (WriteOp::UpdateIgnore | WriteOp::DeleteIgnore, false) => out.ignored += 1,
                (WriteOp::Insert | WriteOp::InsertIgnore | WriteOp::Upsert, false) => {
                    entry.push(ts, Some(self.new_row(v, b, i, None, &b.present)?));
                    out.applied += 1;
                }
                (WriteOp::Upsert | WriteOp::Update | WriteOp::UpdateIgnore, true) => {
                    let present = match (&b.upsert, op) {
                        (Some(u), WriteOp::Upsert) => &u.present,
                        _ => &b.present,
                    };
                    let old = if present.iter().all(|p| *p) {
                        None
                    } else {
                        self.old_row(v, &entry, &loc)?
                    };
                    let row = self.new_row(v, b, i, old, present)?;
                    if let Location::Segment(seg, r) = &loc {
                        seg.dv.delete(*r, ts);
                    }
                    entry.push(ts, Some(row));
                    out.applied += 1;
                }
                (WriteOp::Delete | WriteOp::DeleteIgnore, true) => {
                    match &loc {
                        Location::Segment(seg, r) => seg.dv.delete(*r, ts),
                        _ => entry.push(ts, None),
                    }
                    out.applied += 1;
                }
            }
        }
        Ok(out)
    }

    fn describe_key(&self, v: &Version, b: &ValidatedBatch, i: usize) -> String {
        let schema = v.codec.schema();
        let names: Vec<&str> = schema
            .key_indices()
            .iter()
            .map(|&k| schema.columns()[k].name.as_str())
            .collect();
        let vals: Vec<String> = schema
            .key_indices()
            .iter()
            .map(|&k| {
                Value::from_array(&b.columns[k], i)
                    .map(|v| v.to_string())
                    .unwrap_or_default()
            })
            .collect();
        format!("({})=({})", names.join(", "), vals.join(", "))
    }
}
