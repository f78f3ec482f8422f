//! The sidecar key index of an on-disk segment: sampled keys and a key filter.
//!
//! A point lookup (or the presence check of an insert) must not touch a segment's data unless
//! the key may be there. The filter (a binary fuse filter, ~9 bits per key, 0.4% false
//! positives) answers "certainly not here" for almost every absent key; the samples (the key of
//! every `stride`-th row, `TabletOptions::key_block_rows`) narrow a present key to one block of
//! rows, a part of one Parquet page per column. Both stay in memory: about 1.1 bytes per row
//! plus one key per block.
//!
//! File format (`<id>.kix`, little endian): magic `NYKX`, format `u8`, stride `u32`, sample
//! count `u32`, each sample as `u32` length + bytes, then the bincode-encoded filter.

use std::io::Write;
use std::ops::Range;
use std::path::Path;

use xorf::{BinaryFuse8, Filter};
use xxhash_rust::xxh3::xxh3_64;

use nyala_common::RowCodec;

use crate::error::{Result, StorageError};

const MAGIC: &[u8; 4] = b"NYKX";
const FORMAT: u8 = 1;

/// Sampled keys plus filter for one segment.
#[derive(Debug)]
pub(crate) struct KeyIndex {
    stride: u32,
    rows: u64,
    samples: Vec<Box<[u8]>>,
    filter: Option<BinaryFuse8>,
}

/// Where each key column's encoding ends within each sample of a [`KeyIndex`] and within the
/// segment's last key (a key is its columns' encodings one after another).
#[derive(Debug)]
pub(crate) struct SampleColumns {
    columns: usize,
    /// `columns` end offsets per sample, then `columns` for `last_key`.
    ends: Vec<u32>,
    last_key: Box<[u8]>,
}

impl SampleColumns {
    /// The bytes of key column `j` in key `i` (a sample number, or the sample count for the
    /// last key).
    fn column_range(&self, i: usize, j: usize) -> Range<usize> {
        let at = i * self.columns;
        let start = if j == 0 { 0 } else { self.ends[at + j - 1] };
        start as usize..self.ends[at + j] as usize
    }

    /// Approximate memory held, in bytes.
    pub fn memory_bytes(&self) -> usize {
        self.ends.len() * 4 + self.last_key.len()
    }
}

/// Collects a segment's keys as they are written, so that the index of a segment written in
/// pieces (a compaction's output) never needs all its keys in memory: only the samples and an
/// 8-byte hash per key.
#[derive(Debug)]
pub(crate) struct KeyIndexBuilder {
    stride: u32,
    rows: u64,
    samples: Vec<Box<[u8]>>,
    hashes: Vec<u64>,
}

impl KeyIndexBuilder {
    pub fn new(stride: u32) -> Self {
        KeyIndexBuilder {
            stride,
            rows: 0,
            samples: vec![],
            hashes: vec![],
        }
    }

    /// Adds the next key (keys arrive sorted).
    pub fn push(&mut self, key: &[u8]) {
        if self.rows.is_multiple_of(self.stride as u64) {
            self.samples.push(key.into());
        }
        self.hashes.push(xxh3_64(key));
        self.rows += 1;
    }

    /// Keys pushed so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    pub fn finish(mut self) -> KeyIndex {
        self.hashes.sort_unstable();
        self.hashes.dedup();
        // Construction fails only on pathological inputs; then every lookup reads the block.
        let filter = BinaryFuse8::try_from(&self.hashes).ok();
        KeyIndex {
            stride: self.stride,
            rows: self.rows,
            samples: self.samples,
            filter,
        }
    }
}

impl KeyIndex {
    /// Builds the index of a segment whose (sorted) keys are `keys`.
    #[cfg(test)]
    pub fn build<'a>(keys: impl ExactSizeIterator<Item = &'a [u8]>, stride: u32) -> Self {
        let mut b = KeyIndexBuilder::new(stride);
        for k in keys {
            b.push(k);
        }
        b.finish()
    }

    /// Whether `key` may be in the segment (false: certainly not).
    pub fn may_contain(&self, key: &[u8]) -> bool {
        self.filter
            .as_ref()
            .is_none_or(|f| f.contains(&xxh3_64(key)))
    }

    /// The blocks that can hold `key`: rows with equal keys are contiguous and lie in them.
    pub fn candidate_blocks(&self, key: &[u8]) -> Range<u64> {
        // Blocks whose first key is < key, and those whose first key is <= key.
        let lt = self.samples.partition_point(|s| &**s < key);
        let le = self.samples.partition_point(|s| &**s <= key);
        (lt.saturating_sub(1) as u64)..(le.max(1) as u64)
    }

    /// The rows of block `b`.
    pub fn block_rows(&self, b: u64) -> Range<u64> {
        let stride = self.stride as u64;
        (b * stride).min(self.rows)..((b + 1) * stride).min(self.rows)
    }

    /// Rows of the blocks from the first whose successor's first key is not `below`, through the
    /// last whose first key is `not_above`. Both predicates must be monotone over sorted keys.
    pub fn block_range(
        &self,
        below: impl Fn(&[u8]) -> bool,
        not_above: impl Fn(&[u8]) -> bool,
    ) -> Range<u64> {
        let first = self.samples.partition_point(|s| below(s)).saturating_sub(1) as u64;
        let last = self.samples.partition_point(|s| not_above(s)) as u64;
        let stride = self.stride as u64;
        // A range whose lower bound is above its upper one (`k >= 9 AND k < 2`) has no rows.
        let start = (first * stride).min(self.rows);
        start..(last * stride).min(self.rows).max(start)
    }

    /// Splits every sample, and the segment's last key, at its key columns' boundaries (once
    /// per segment, for [`KeyIndex::blocks_matching`]).
    pub fn sample_columns(&self, codec: &RowCodec, last_key: &[u8]) -> Result<SampleColumns> {
        let keys: Vec<&[u8]> = self
            .samples
            .iter()
            .map(|s| &**s)
            .chain(std::iter::once(last_key))
            .collect();
        let decoded = codec.decode_keys(keys.iter().copied())?;
        let columns = decoded.len();
        let mut ends = vec![0u32; keys.len() * columns];
        for (k, col) in decoded.iter().enumerate() {
            let enc = codec.encode_key_column(k, col)?;
            for i in 0..keys.len() {
                let before = if k == 0 { 0 } else { ends[i * columns + k - 1] };
                ends[i * columns + k] = before + enc.row(i).as_ref().len() as u32;
            }
        }
        // A key is its columns' encodings one after another; anything else is not a key of
        // this schema.
        if (0..keys.len()).any(|i| ends[(i + 1) * columns - 1] as usize != keys[i].len()) {
            return Err(StorageError::Corrupt(
                "a key index sample does not split into the key's columns".into(),
            ));
        }
        Ok(SampleColumns {
            columns,
            ends,
            last_key: last_key.into(),
        })
    }

    /// The rows of `rows` (merged runs of whole blocks, clipped to `rows`) in blocks that
    /// `may_match` does not rule out, given each block's bounds per key column.
    ///
    /// Rows are sorted by key, so block `b` holds keys from its first (sample `b`) up to the
    /// next block's first (or the segment's last key). Where those two agree on key columns
    /// `0..j`, every key in the block does, and column `j` lies between theirs: that bounds
    /// `ts` in the blocks of one `(id, ts)` series, which is what lets `ts >= t` skip the old
    /// part of every series (a skip scan). A column after a change of prefix is unbounded
    /// (`None`).
    ///
    /// Each range comes with `sorted(bounds)` of its block: a block for which that holds (its
    /// leading columns constant where the caller needs them) is a range of its own, so that
    /// the caller may treat the column after them as sorted over it; the other blocks merge.
    pub fn blocks_matching(
        &self,
        split: &SampleColumns,
        rows: Range<u64>,
        may_match: impl Fn(&[Option<(&[u8], &[u8])>]) -> bool,
        sorted: impl Fn(&[Option<(&[u8], &[u8])>]) -> bool,
    ) -> Vec<(Range<u64>, bool)> {
        let stride = self.stride as u64;
        let n = self.samples.len() as u64;
        let mut out: Vec<(Range<u64>, bool)> = Vec::new();
        let mut bounds = vec![None; split.columns];
        for b in (rows.start / stride)..rows.end.div_ceil(stride).min(n) {
            let lo = (&*self.samples[b as usize], b as usize);
            let hi = match self.samples.get(b as usize + 1) {
                Some(s) => (&**s, b as usize + 1),
                None => (&*split.last_key, n as usize),
            };
            for (j, slot) in bounds.iter_mut().enumerate() {
                let (lo_cols, hi_cols) = (split.column_range(lo.1, j), split.column_range(hi.1, j));
                *slot = (lo.0[..lo_cols.start] == hi.0[..hi_cols.start])
                    .then(|| (&lo.0[lo_cols], &hi.0[hi_cols]));
            }
            if !may_match(&bounds) {
                continue;
            }
            let r = (b * stride).max(rows.start)..((b + 1) * stride).min(rows.end);
            let is_sorted = sorted(&bounds);
            match out.last_mut() {
                Some((last, false)) if !is_sorted && last.end == r.start => last.end = r.end,
                _ => out.push((r, is_sorted)),
            }
        }
        out
    }

    /// Approximate memory held, in bytes.
    pub fn memory_bytes(&self) -> usize {
        self.samples.iter().map(|s| s.len() + 16).sum::<usize>()
            + self.filter.as_ref().map_or(0, |f| f.fingerprints.len())
    }

    /// Writes the index to `path` (the caller syncs and renames).
    pub fn write_to(&self, path: &Path) -> Result<()> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.push(FORMAT);
        out.extend_from_slice(&self.stride.to_le_bytes());
        out.extend_from_slice(&self.rows.to_le_bytes());
        out.extend_from_slice(&(self.samples.len() as u32).to_le_bytes());
        for s in &self.samples {
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            out.extend_from_slice(s);
        }
        let filter = bincode::encode_to_vec(&self.filter, bincode::config::standard())
            .map_err(|e| StorageError::Corrupt(format!("encoding key filter: {e}")))?;
        out.extend_from_slice(&filter);
        let mut f = std::fs::File::create(path)?;
        f.write_all(&out)?;
        f.sync_all()?;
        Ok(())
    }

    /// Reads an index written by [`KeyIndex::write_to`].
    pub fn read_from(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path)?;
        let corrupt = || StorageError::Corrupt(format!("key index {}", path.display()));
        let mut pos = 0usize;
        let mut take = |n: usize| -> Result<&[u8]> {
            let s = bytes.get(pos..pos + n).ok_or_else(corrupt)?;
            pos += n;
            Ok(s)
        };
        if take(4)? != MAGIC || take(1)?[0] != FORMAT {
            return Err(corrupt());
        }
        let stride = u32::from_le_bytes(take(4)?.try_into().unwrap());
        let rows = u64::from_le_bytes(take(8)?.try_into().unwrap());
        let n = u32::from_le_bytes(take(4)?.try_into().unwrap()) as usize;
        if stride == 0 || n as u64 > rows / stride as u64 + 1 {
            return Err(corrupt());
        }
        let mut samples = Vec::with_capacity(n);
        for _ in 0..n {
            let len = u32::from_le_bytes(take(4)?.try_into().unwrap()) as usize;
            samples.push(take(len)?.into());
        }
        let rest = &bytes[pos..];
        let (filter, _): (Option<BinaryFuse8>, usize) =
            bincode::decode_from_slice(rest, bincode::config::standard()).map_err(|_| corrupt())?;
        Ok(KeyIndex {
            stride,
            rows,
            samples,
            filter,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidate_ranges_cover_duplicates_across_blocks() {
        // keys: 0,1,2,3,3,3,4,5 with stride 2 -> samples at rows 0,2,4,6 = 0,2,3,4
        let keys: Vec<Vec<u8>> = [0u8, 1, 2, 3, 3, 3, 4, 5]
            .iter()
            .map(|k| vec![*k])
            .collect();
        let idx = KeyIndex::build(keys.iter().map(|k| k.as_slice()), 2);
        assert_eq!(idx.candidate_blocks(&[3]), 1..3);
        assert_eq!(idx.candidate_blocks(&[0]), 0..1);
        assert_eq!(idx.candidate_blocks(&[5]), 3..4);
        assert_eq!(idx.block_rows(3), 6..8);
        assert!(idx.may_contain(&[4]));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.kix");
        idx.write_to(&p).unwrap();
        let back = KeyIndex::read_from(&p).unwrap();
        assert_eq!(back.candidate_blocks(&[3]), 1..3);
        assert!(back.may_contain(&[4]));
        std::fs::write(&p, b"NYKX\x01garbage").unwrap();
        assert!(KeyIndex::read_from(&p).is_err());
    }
}
