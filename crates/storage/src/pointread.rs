//! Reading one row of a segment's Parquet file: one value per column, decoded where it sits.
//!
//! Why not parquet's readers: the Arrow record batch reader that scans use costs, for a single
//! row, more to set up (projection mask, row selection, an array reader per column, a struct
//! array, null bitmaps) than to decode, and both it and the low-level column reader skip to a
//! row by decoding every definition level and dictionary index before it in the page. Here
//! parquet's page reader, positioned by the page index, still parses the page header and
//! decompresses the page; then the value is found by walking the RLE / bit-packed runs of the
//! definition levels and dictionary indices (a step per run, not per value) and reading one
//! dictionary entry or plain value. A point read went from 36 to 21 µs on the traffic schema.
//!
//! Only what Nyala writes is read this way: flat schemas; dictionary, plain or (booleans)
//! plain pages; the physical types its column types map to. For anything else [`read_row`]
//! returns `None` and the caller uses the record batch reader.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use arrow::array::{
    new_null_array, ArrayRef, BinaryArray, BooleanArray, Date32Array, Decimal128Array,
    Float32Array, Float64Array, Int16Array, Int32Array, Int64Array, Int8Array, StringArray,
    TimestampMicrosecondArray,
};
use arrow_schema::{DataType as ArrowType, Field, TimeUnit};
use bytes::Bytes;
use parquet::basic::{Encoding, Type as PhysicalType};
use parquet::column::page::{Page, PageReader};
use parquet::file::metadata::{ParquetMetaData, RowGroupMetaData};
use parquet::file::page_index::offset_index::OffsetIndexMetaData;
use parquet::file::serialized_reader::SerializedPageReader;

use crate::error::{Result, StorageError};

/// Dictionaries larger than this (decompressed) are not kept: every point read of their
/// column chunk decompresses them again, which costs less than the memory would.
const MAX_KEPT_DICTIONARY: usize = 64 * 1024;

/// The decompressed dictionary pages of a file's column chunks, kept once read (those up to
/// [`MAX_KEPT_DICTIONARY`] bytes): every point read in a column chunk needs its dictionary,
/// and on 10M traffic rows decompressing dictionaries and data pages was a third of a lookup.
#[derive(Debug)]
pub(crate) struct Dictionaries {
    columns: usize,
    /// Row group `rg`, column `c` at `rg * columns + c`: unset until read; `None` when the
    /// chunk has no dictionary or it is too large to keep.
    pages: Vec<OnceLock<Option<Bytes>>>,
    bytes: AtomicUsize,
}

impl Dictionaries {
    pub fn new(row_groups: usize, columns: usize) -> Self {
        Dictionaries {
            columns,
            pages: (0..row_groups * columns).map(|_| OnceLock::new()).collect(),
            bytes: AtomicUsize::new(0),
        }
    }

    /// Memory held, in bytes.
    pub fn memory_bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
            + self.pages.len() * std::mem::size_of::<OnceLock<Option<Bytes>>>()
    }

    /// The kept dictionary of a column chunk, if read before.
    fn get(&self, rg: usize, column: usize) -> Option<&Bytes> {
        self.pages.get(rg * self.columns + column)?.get()?.as_ref()
    }

    /// Keeps a column chunk's dictionary page, if small enough.
    fn keep(&self, rg: usize, column: usize, page: &Bytes) {
        let Some(slot) = self.pages.get(rg * self.columns + column) else {
            return;
        };
        let kept = (page.len() <= MAX_KEPT_DICTIONARY).then(|| page.clone());
        let len = kept.as_ref().map_or(0, Bytes::len);
        if slot.set(kept).is_ok() {
            self.bytes.fetch_add(len, Ordering::Relaxed);
        }
    }
}

/// The values of `columns` (leaf indices of a flat file, ascending or not) at row `row` of row
/// group `rg`, as one-element arrays of the matching `fields`' types; `None` when a column's
/// type is not one this path reads (the caller falls back to the record batch reader).
pub(crate) fn read_row(
    file: &Bytes,
    meta: &ParquetMetaData,
    dictionaries: &Dictionaries,
    rg: usize,
    row: u64,
    columns: &[usize],
    fields: &[&Field],
) -> Result<Option<Vec<ArrayRef>>> {
    if meta.file_metadata().schema_descr().num_columns()
        != meta
            .file_metadata()
            .schema_descr()
            .root_schema()
            .get_fields()
            .len()
    {
        // Nested columns: leaf and field indices differ.
        return Ok(None);
    }
    let rg_meta = meta.row_group(rg);
    let offsets = meta.offset_index().and_then(|o| o.get(rg));
    let file = Arc::new(file.clone());
    let mut out = Vec::with_capacity(columns.len());
    for (&c, field) in columns.iter().zip(fields) {
        let chunk = Chunk {
            meta: rg_meta,
            offsets: offsets.and_then(|o| o.get(c)),
            dictionaries,
            rg,
            column: c,
        };
        match read_value(&file, &chunk, row, field)? {
            Some(a) => out.push(a),
            None => return Ok(None),
        }
    }
    Ok(Some(out))
}

/// One column chunk of a point read.
struct Chunk<'a> {
    meta: &'a RowGroupMetaData,
    offsets: Option<&'a OffsetIndexMetaData>,
    dictionaries: &'a Dictionaries,
    rg: usize,
    column: usize,
}

fn read_value(
    file: &Arc<Bytes>,
    c: &Chunk<'_>,
    row: u64,
    field: &Field,
) -> Result<Option<ArrayRef>> {
    let (rg_meta, offsets, column) = (c.meta, c.offsets, c.column);
    let chunk = rg_meta.column(column);
    let descr = chunk.column_descr_ptr();
    let Some(locations) = offsets.map(|o| o.page_locations()) else {
        return Ok(None);
    };
    if descr.max_rep_level() > 0 || descr.max_def_level() > 1 {
        return Ok(None);
    }
    let nullable = descr.max_def_level() == 1;
    let page = locations.partition_point(|l| l.first_row_index as u64 <= row);
    let Some(at) = page.checked_sub(1) else {
        return Err(corrupt(format!("row {row} is before the first page")));
    };
    // The page locations let the reader go straight to the row's page: earlier pages are
    // skipped without reading their headers.
    let mut pages = SerializedPageReader::new(
        file.clone(),
        chunk,
        rg_meta.num_rows() as usize,
        Some(locations.clone()),
    )?;
    let dictionary = if !pages.peek_next_page()?.is_some_and(|p| p.is_dict) {
        None
    } else if let Some(buf) = c.dictionaries.get(c.rg, column) {
        pages.skip_next_page()?;
        Some(buf.clone())
    } else {
        match pages.get_next_page()? {
            Some(Page::DictionaryPage {
                buf,
                encoding: Encoding::PLAIN | Encoding::PLAIN_DICTIONARY,
                ..
            }) => {
                c.dictionaries.keep(c.rg, column, &buf);
                Some(buf)
            }
            _ => return Ok(None),
        }
    };
    for _ in 0..at {
        pages.skip_next_page()?;
    }
    let in_page = (row - locations[at].first_row_index as u64) as usize;
    let (levels, values, encoding) = match pages.get_next_page()? {
        Some(Page::DataPage {
            buf,
            encoding,
            def_level_encoding,
            ..
        }) => {
            if !nullable {
                (None, buf, encoding)
            } else if def_level_encoding != Encoding::RLE || buf.len() < 4 {
                return Ok(None);
            } else {
                let len = u32::from_le_bytes(buf[..4].try_into().unwrap()) as usize;
                if buf.len() < 4 + len {
                    return Err(corrupt("definition levels overrun their page".into()));
                }
                (Some(buf.slice(4..4 + len)), buf.slice(4 + len..), encoding)
            }
        }
        Some(Page::DataPageV2 {
            buf,
            encoding,
            def_levels_byte_len,
            rep_levels_byte_len,
            ..
        }) => {
            let (r, d) = (rep_levels_byte_len as usize, def_levels_byte_len as usize);
            if buf.len() < r + d {
                return Err(corrupt("levels overrun their page".into()));
            }
            (
                nullable.then(|| buf.slice(r..r + d)),
                buf.slice(r + d..),
                encoding,
            )
        }
        _ => return Err(corrupt(format!("no data page holds row {row}"))),
    };
    // Only non-null values are stored: the row's value is the one after the non-null rows
    // before it in the page.
    let index = match &levels {
        None => in_page,
        Some(levels) => match rle::bit_and_ones_before(levels, in_page)? {
            (false, _) => return Ok(Some(new_null_array(field.data_type(), 1))),
            (true, ones) => ones,
        },
    };
    let physical = descr.physical_type();
    let width = match physical {
        PhysicalType::INT32 | PhysicalType::FLOAT => Some(4),
        PhysicalType::INT64 | PhysicalType::DOUBLE => Some(8),
        PhysicalType::FIXED_LEN_BYTE_ARRAY => Some(descr.type_length().max(0) as usize),
        _ => None,
    };
    let value = match (encoding, &dictionary) {
        (Encoding::RLE_DICTIONARY | Encoding::PLAIN_DICTIONARY, Some(dict)) => {
            let Some((&bits, indices)) = values.split_first() else {
                return Err(corrupt("an empty dictionary-encoded page".into()));
            };
            let entry = rle::value_at(indices, bits, index)? as usize;
            plain_value(dict, physical, width, entry)?
        }
        (Encoding::PLAIN, _) => plain_value(&values, physical, width, index)?,
        _ => return Ok(None),
    };
    to_array(value, physical, field).map(|a| a.map(|a| a as ArrayRef))
}

/// A value as stored: booleans decoded, everything else its plain bytes (little-endian for
/// numbers, big-endian two's complement for fixed-length decimals).
enum Plain<'a> {
    Bool(bool),
    Bytes(&'a [u8]),
}

/// The `i`th value of a PLAIN-encoded buffer.
fn plain_value(
    buf: &[u8],
    physical: PhysicalType,
    width: Option<usize>,
    i: usize,
) -> Result<Plain<'_>> {
    let short = || corrupt(format!("a page ends before its value #{i}"));
    match (physical, width) {
        (PhysicalType::BOOLEAN, _) => {
            let byte = buf.get(i / 8).ok_or_else(short)?;
            Ok(Plain::Bool(byte >> (i % 8) & 1 == 1))
        }
        (_, Some(w)) => buf
            .get(i * w..(i + 1) * w)
            .map(Plain::Bytes)
            .ok_or_else(short),
        (PhysicalType::BYTE_ARRAY, None) => {
            // Length-prefixed values: walk to the `i`th.
            let mut pos = 0usize;
            for n in 0..=i {
                let len = buf.get(pos..pos + 4).ok_or_else(short)?;
                let len = u32::from_le_bytes(len.try_into().unwrap()) as usize;
                let value = buf.get(pos + 4..pos + 4 + len).ok_or_else(short)?;
                if n == i {
                    return Ok(Plain::Bytes(value));
                }
                pos += 4 + len;
            }
            unreachable!("the loop returns at n == i")
        }
        _ => Err(corrupt(format!("values of physical type {physical}"))),
    }
}

/// A one-element array of `field`'s type from a stored value; `None` for a pairing of
/// physical and logical type that Nyala does not write.
fn to_array(value: Plain<'_>, physical: PhysicalType, field: &Field) -> Result<Option<ArrayRef>> {
    let le4 = |b: &[u8]| i32::from_le_bytes(b.try_into().expect("4 bytes"));
    let le8 = |b: &[u8]| i64::from_le_bytes(b.try_into().expect("8 bytes"));
    let array: ArrayRef = match (value, physical, field.data_type()) {
        (Plain::Bool(v), _, ArrowType::Boolean) => Arc::new(BooleanArray::from(vec![v])),
        (Plain::Bytes(b), PhysicalType::INT32, t) => {
            let v = le4(b);
            match t {
                ArrowType::Int8 => Arc::new(Int8Array::from(vec![v as i8])),
                ArrowType::Int16 => Arc::new(Int16Array::from(vec![v as i16])),
                ArrowType::Int32 => Arc::new(Int32Array::from(vec![v])),
                ArrowType::Date32 => Arc::new(Date32Array::from(vec![v])),
                ArrowType::Decimal128(p, s) => decimal(i128::from(v), *p, *s)?,
                _ => return Ok(None),
            }
        }
        (Plain::Bytes(b), PhysicalType::INT64, t) => {
            let v = le8(b);
            match t {
                ArrowType::Int64 => Arc::new(Int64Array::from(vec![v])),
                ArrowType::Timestamp(TimeUnit::Microsecond, tz) => {
                    Arc::new(TimestampMicrosecondArray::from(vec![v]).with_timezone_opt(tz.clone()))
                }
                ArrowType::Decimal128(p, s) => decimal(i128::from(v), *p, *s)?,
                _ => return Ok(None),
            }
        }
        (Plain::Bytes(b), PhysicalType::FLOAT, ArrowType::Float32) => Arc::new(Float32Array::from(
            vec![f32::from_le_bytes(b.try_into().expect("4 bytes"))],
        )),
        (Plain::Bytes(b), PhysicalType::DOUBLE, ArrowType::Float64) => Arc::new(
            Float64Array::from(vec![f64::from_le_bytes(b.try_into().expect("8 bytes"))]),
        ),
        (Plain::Bytes(b), PhysicalType::BYTE_ARRAY, ArrowType::Utf8) => {
            let s = std::str::from_utf8(b).map_err(|_| {
                corrupt(format!(
                    "column {} holds a string that is not UTF-8",
                    field.name()
                ))
            })?;
            Arc::new(StringArray::from(vec![s]))
        }
        (Plain::Bytes(b), PhysicalType::BYTE_ARRAY, ArrowType::Binary) => {
            Arc::new(BinaryArray::from(vec![b]))
        }
        (Plain::Bytes(b), PhysicalType::FIXED_LEN_BYTE_ARRAY, ArrowType::Decimal128(p, s)) => {
            decimal(big_endian_i128(b)?, *p, *s)?
        }
        _ => return Ok(None),
    };
    Ok(Some(array))
}

fn corrupt(what: String) -> StorageError {
    StorageError::Corrupt(format!("segment page: {what}"))
}

fn decimal(v: i128, precision: u8, scale: i8) -> Result<ArrayRef> {
    Ok(Arc::new(
        Decimal128Array::from(vec![v]).with_precision_and_scale(precision, scale)?,
    ))
}

/// A two's complement big-endian integer of up to 16 bytes (Parquet's decimal bytes).
fn big_endian_i128(b: &[u8]) -> Result<i128> {
    if b.is_empty() || b.len() > 16 {
        return Err(StorageError::Corrupt(format!(
            "a decimal of {} bytes",
            b.len()
        )));
    }
    let fill = if b[0] & 0x80 != 0 { 0xff } else { 0 };
    let mut buf = [fill; 16];
    buf[16 - b.len()..].copy_from_slice(b);
    Ok(i128::from_be_bytes(buf))
}

/// Parquet's RLE / bit-packed hybrid encoding (definition levels, dictionary indices), read at
/// one position by walking its runs: a run is skipped by its header alone, so finding a value
/// costs a step per run rather than per value.
mod rle {
    use super::corrupt;
    use crate::error::Result;

    /// The runs of an encoded buffer, in order, each with the number of values it holds.
    struct Runs<'a> {
        buf: &'a [u8],
        pos: usize,
        bits: u8,
    }

    enum Run<'a> {
        /// Copies of one value.
        Repeated(u64),
        /// Values packed `bits` wide, least significant bit first.
        Packed(&'a [u8]),
    }

    impl<'a> Iterator for Runs<'a> {
        type Item = Result<(usize, Run<'a>)>;

        fn next(&mut self) -> Option<Self::Item> {
            if self.pos >= self.buf.len() {
                return None;
            }
            Some(self.run())
        }
    }

    impl<'a> Runs<'a> {
        fn run(&mut self) -> Result<(usize, Run<'a>)> {
            let mut header = 0u64;
            let mut shift = 0;
            loop {
                let byte = *self
                    .buf
                    .get(self.pos)
                    .ok_or_else(|| corrupt("a run header is cut off".into()))?;
                self.pos += 1;
                header |= u64::from(byte & 0x7f) << shift;
                if byte & 0x80 == 0 {
                    break;
                }
                shift += 7;
                if shift > 56 {
                    return Err(corrupt("a run header is too long".into()));
                }
            }
            let n = (header >> 1) as usize;
            if header & 1 == 0 {
                let width = (self.bits as usize).div_ceil(8);
                let bytes = self.take(width)?;
                let mut v = [0u8; 8];
                v[..width].copy_from_slice(bytes);
                Ok((n, Run::Repeated(u64::from_le_bytes(v))))
            } else {
                let cut = || corrupt("a run is cut off".into());
                let len = n.checked_mul(self.bits as usize).ok_or_else(cut)?;
                let bytes = self.take(len)?;
                Ok((n.saturating_mul(8), Run::Packed(bytes)))
            }
        }

        fn take(&mut self, n: usize) -> Result<&'a [u8]> {
            let bytes = self
                .pos
                .checked_add(n)
                .and_then(|end| self.buf.get(self.pos..end))
                .ok_or_else(|| corrupt("a run is cut off".into()))?;
            self.pos += n;
            Ok(bytes)
        }
    }

    /// Value `i` of packed values `bits` (at most 32) wide.
    fn unpack(bytes: &[u8], bits: u8, i: usize) -> u64 {
        let bit = i * bits as usize;
        let mut v = [0u8; 8];
        let from = (bit / 8).min(bytes.len());
        let n = (bytes.len() - from).min(8);
        v[..n].copy_from_slice(&bytes[from..from + n]);
        (u64::from_le_bytes(v) >> (bit % 8)) & ((1u64 << bits) - 1)
    }

    /// Value `i` of `buf`, encoded `bits` wide.
    pub(super) fn value_at(buf: &[u8], bits: u8, i: usize) -> Result<u64> {
        if bits > 32 {
            return Err(corrupt(format!("a bit width of {bits}")));
        }
        let mut seen = 0;
        for run in (Runs { buf, pos: 0, bits }) {
            let (count, run) = run?;
            if i - seen < count {
                return Ok(match run {
                    Run::Repeated(v) => v,
                    Run::Packed(bytes) => unpack(bytes, bits, i - seen),
                });
            }
            seen += count;
        }
        Err(corrupt(format!("the encoded values end before #{i}")))
    }

    /// For 1-bit values (definition levels of a nullable column): value `i`, and how many of
    /// the values before it are 1.
    pub(super) fn bit_and_ones_before(buf: &[u8], i: usize) -> Result<(bool, usize)> {
        let mut seen = 0;
        let mut ones = 0;
        for run in (Runs {
            buf,
            pos: 0,
            bits: 1,
        }) {
            let (count, run) = run?;
            let here = i.checked_sub(seen).filter(|&k| k < count);
            if let Run::Repeated(v) = run {
                if v > 1 {
                    return Err(corrupt(format!("a definition level of {v}")));
                }
            }
            match (run, here) {
                (Run::Repeated(v), None) => ones += v as usize * count,
                (Run::Repeated(v), Some(k)) => return Ok((v == 1, ones + v as usize * k)),
                (Run::Packed(bytes), None) => ones += count_ones(bytes),
                (Run::Packed(bytes), Some(k)) => {
                    let last = bytes[k / 8];
                    let below = last & ((1u16 << (k % 8)) - 1) as u8;
                    ones += count_ones(&bytes[..k / 8]) + below.count_ones() as usize;
                    return Ok((last >> (k % 8) & 1 == 1, ones));
                }
            }
            seen += count;
        }
        Err(corrupt(format!("the levels end before #{i}")))
    }

    fn count_ones(bytes: &[u8]) -> usize {
        bytes.iter().map(|b| b.count_ones() as usize).sum()
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn runs_of_both_kinds_are_read_at_any_position() {
            // 3 x 5 (RLE, 3 bits -> 1 byte), then 8 packed 3-bit values 0..8, then 2 x 7.
            let mut buf = vec![3 << 1, 5, (1 << 1) | 1];
            let mut acc = 0u32;
            for v in 0..8u32 {
                acc |= v << (v * 3);
            }
            buf.extend_from_slice(&acc.to_le_bytes()[..3]);
            buf.extend_from_slice(&[2 << 1, 7]);
            let want = [5, 5, 5, 0, 1, 2, 3, 4, 5, 6, 7, 7, 7];
            for (i, &w) in want.iter().enumerate() {
                assert_eq!(value_at(&buf, 3, i).unwrap(), w, "value {i}");
            }
            assert!(value_at(&buf, 3, want.len()).is_err());
            assert!(
                value_at(&buf[..4], 3, 5).is_err(),
                "a cut-off run is an error"
            );
            // A corrupt header claiming an enormous run is an error, not an overflow.
            let huge = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
            assert!(value_at(&huge, 3, 5).is_err());
            assert!(
                bit_and_ones_before(&[4 << 1, 2], 1).is_err(),
                "a level above 1"
            );
        }

        #[test]
        fn levels_count_the_ones_before_a_position() {
            // 10 ones (RLE), then 16 packed bits 0b1010_1010 0b0000_1111, then 4 zeros.
            let buf = [
                10 << 1,
                1,
                (2 << 1) | 1,
                0b1010_1010,
                0b0000_1111,
                4 << 1,
                0,
            ];
            let bits: Vec<bool> = std::iter::repeat_n(true, 10)
                .chain((0..8).map(|b| 0b1010_1010u8 >> b & 1 == 1))
                .chain((0..8).map(|b| 0b0000_1111u8 >> b & 1 == 1))
                .chain(std::iter::repeat_n(false, 4))
                .collect();
            for i in 0..bits.len() {
                let ones = bits[..i].iter().filter(|&&b| b).count();
                assert_eq!(
                    bit_and_ones_before(&buf, i).unwrap(),
                    (bits[i], ones),
                    "level {i}"
                );
            }
            assert!(bit_and_ones_before(&buf, bits.len()).is_err());
        }
    }
}
