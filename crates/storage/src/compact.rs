//! Merging segments: the data half of a compaction (choosing inputs and installing the result
//! are the tablet's; see `Tablet::compact`).
//!
//! Inputs are on-disk segments, each sorted by (key, commit timestamp descending). The merge
//! reads them a chunk at a time, drops row versions whose deletion is at or before the history
//! horizon (no readable snapshot can see them), and writes the rest in the same order into one
//! new segment through a [`SegmentWriter`], a row group at a time: memory stays at a few
//! chunks per input plus one row group, whatever the inputs' size.
//!
//! # Invariants
//! - Every kept row keeps its commit timestamp, so snapshot reads after the merge see what
//!   they saw before.
//! - The merge records where each kept input row went ([`Merged::positions`]); the tablet uses
//!   it, under the writer lock, to carry every deletion of an input row (including those made
//!   while the merge ran) to the output row. Deletions are only ever added, so the rows dropped
//!   here (deleted at or before the horizon) stay deleted.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use arrow::row::{Row, Rows};
use roaring::RoaringBitmap;

use nyala_common::RowCodec;

use crate::clock::Timestamp;
use crate::dv::DeleteVector;
use crate::error::Result;
use crate::options::TabletOptions;
use crate::segment::{KeyBlockCache, Segment, SegmentWriter};

/// Rows read from an input at a time.
const CHUNK_ROWS: u64 = 32 * 1024;

/// Output rows gathered before they are handed to the writer.
const OUT_ROWS: usize = 32 * 1024;

/// Marks an input row that the merge dropped.
pub(crate) const DROPPED: u32 = u32::MAX;

/// The result of a merge.
pub(crate) struct Merged {
    /// The new segment (with an empty deletion vector), or `None` if no row survived.
    pub segment: Option<Segment>,
    /// Per input, per input row: its row in the output, or [`DROPPED`].
    pub positions: Vec<Vec<u32>>,
    /// Rows dropped because they were deleted at or before the horizon.
    pub dropped_rows: u64,
}

/// One input's read position: the current chunk and its decoded keys.
struct Cursor<'a> {
    seg: &'a Segment,
    /// Rows deleted at or before the horizon: skipped.
    dropped: RoaringBitmap,
    /// Input row number of `batch`'s first row.
    chunk_start: u64,
    batch: RecordBatch,
    keys: Rows,
    ts: Vec<u64>,
    /// Next position within the chunk.
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn row(&self) -> u64 {
        self.chunk_start + self.pos as u64
    }

    fn at_chunk_end(&self) -> bool {
        self.pos >= self.batch.num_rows()
    }

    fn exhausted(&self) -> bool {
        self.at_chunk_end() && self.chunk_start + self.batch.num_rows() as u64 >= self.seg.meta.rows
    }

    fn head(&self) -> (Row<'_>, std::cmp::Reverse<u64>) {
        (
            self.keys.row(self.pos),
            std::cmp::Reverse(self.ts[self.pos]),
        )
    }

    /// Moves past dropped rows within the chunk.
    fn skip_dropped(&mut self) {
        while !self.at_chunk_end() && self.dropped.contains(self.row() as u32) {
            self.pos += 1;
        }
    }

    /// Loads the chunk after the current one (call at the chunk's end, when not exhausted).
    fn load_next(&mut self, codec: &RowCodec, projection: &[usize]) -> Result<()> {
        let start = self.chunk_start + self.batch.num_rows() as u64;
        let end = (start + CHUNK_ROWS).min(self.seg.meta.rows);
        self.batch = self
            .seg
            .read_range(codec.schema(), start..end, projection)?;
        self.keys = codec.encode_keys_of(self.batch.columns())?;
        self.ts = self
            .batch
            .columns()
            .last()
            .unwrap()
            .as_primitive::<Int64Type>()
            .values()
            .iter()
            .map(|t| *t as u64)
            .collect();
        self.chunk_start = start;
        self.pos = 0;
        Ok(())
    }
}

/// Merges `inputs` into a new segment `id` in `dir`, dropping rows deleted at or before
/// `horizon`. Writers may carry on meanwhile: deletions they add to the inputs are carried
/// over by the caller, using [`Merged::positions`].
pub(crate) fn merge(
    inputs: &[Arc<Segment>],
    codec: &Arc<RowCodec>,
    horizon: Timestamp,
    dir: &Path,
    id: u64,
    opts: &TabletOptions,
    key_blocks: &Arc<KeyBlockCache>,
) -> Result<Merged> {
    let projection: Vec<usize> = (0..=codec.schema().len()).collect();
    let mut positions: Vec<Vec<u32>> = inputs
        .iter()
        .map(|s| vec![DROPPED; s.meta.rows as usize])
        .collect();
    let mut cursors = Vec::with_capacity(inputs.len());
    let mut dropped_rows = 0u64;
    for seg in inputs {
        let dropped = seg.dv.deleted_at(horizon).unwrap_or_default();
        dropped_rows += dropped.len();
        let empty = seg.read_range(codec.schema(), 0..0, &projection)?;
        let keys = codec.encode_keys_of(empty.columns())?;
        let mut c = Cursor {
            seg,
            dropped,
            chunk_start: 0,
            batch: empty,
            keys,
            ts: vec![],
            pos: 0,
        };
        c.skip_dropped();
        cursors.push(c);
    }
    let mut writer = SegmentWriter::create(dir, id, codec, opts)?;
    // The merged keys are the inputs' keys, whose blocks the cache may hold under the inputs'
    // ids: have them ready under the output's id.
    writer.warm_key_blocks(key_blocks.clone());
    let mut out_rows: u32 = 0;
    // Output rows gathered so far: (cursor, position in its chunk), and their keys.
    let mut picks: Vec<(usize, usize)> = Vec::with_capacity(OUT_ROWS);
    let mut pick_keys = crate::bytelist::ByteList::default();
    let emit = |cursors: &[Cursor<'_>],
                picks: &mut Vec<(usize, usize)>,
                pick_keys: &mut crate::bytelist::ByteList,
                writer: &mut SegmentWriter|
     -> Result<()> {
        if picks.is_empty() {
            return Ok(());
        }
        let batches: Vec<&RecordBatch> = cursors.iter().map(|c| &c.batch).collect();
        let out = arrow::compute::interleave_record_batch(&batches, picks)?;
        writer.push(&out, pick_keys.iter())?;
        picks.clear();
        *pick_keys = crate::bytelist::ByteList::default();
        Ok(())
    };
    loop {
        // Refill cursors at the end of their chunk; their rows in `picks` must be written
        // first, since they point into the chunk being replaced.
        if cursors.iter().any(|c| c.at_chunk_end() && !c.exhausted()) {
            emit(&cursors, &mut picks, &mut pick_keys, &mut writer)?;
            for c in cursors.iter_mut() {
                while c.at_chunk_end() && !c.exhausted() {
                    c.load_next(codec, &projection)?;
                    c.skip_dropped();
                }
            }
        }
        // The smallest head, and the second smallest: the first cursor's rows below the
        // second's head go out in one run without comparing against the rest.
        let mut best: Option<usize> = None;
        let mut second: Option<usize> = None;
        for (i, c) in cursors.iter().enumerate() {
            if c.at_chunk_end() {
                continue;
            }
            match best {
                None => best = Some(i),
                Some(b) if c.head() < cursors[b].head() => {
                    second = best;
                    best = Some(i);
                }
                Some(_) => {
                    if second.is_none_or(|s| c.head() < cursors[s].head()) {
                        second = Some(i);
                    }
                }
            }
        }
        let Some(b) = best else { break };
        loop {
            let c = &cursors[b];
            if c.at_chunk_end() || second.is_some_and(|s| cursors[s].head() < c.head()) {
                break;
            }
            picks.push((b, c.pos));
            pick_keys.push(c.keys.row(c.pos).as_ref());
            positions[b][c.row() as usize] = out_rows;
            out_rows += 1;
            let c = &mut cursors[b];
            c.pos += 1;
            c.skip_dropped();
            if picks.len() >= OUT_ROWS {
                break;
            }
        }
        if picks.len() >= OUT_ROWS {
            emit(&cursors, &mut picks, &mut pick_keys, &mut writer)?;
        }
    }
    emit(&cursors, &mut picks, &mut pick_keys, &mut writer)?;
    debug_assert_eq!(writer.rows(), out_rows as u64);
    let segment = writer.finish(Arc::new(DeleteVector::default()))?;
    Ok(Merged {
        segment,
        positions,
        dropped_rows,
    })
}
