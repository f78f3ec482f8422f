//! Scan predicates: evaluation on Arrow batches and pruning by key range and statistics.
//!
//! A scan applies its predicates exactly (rows that fail them are never returned) and also uses
//! them to skip work: predicates on a key prefix become a range of encoded keys that prunes
//! segments and bounds the write-buffer walk; predicates on any column prune Parquet row groups
//! by their min/max/null-count statistics.

use std::cmp::Ordering;

use arrow::array::{Array, ArrayRef, BooleanArray, Scalar, UInt64Array};
use arrow::compute::kernels::{boolean, cmp};
use arrow::compute::{is_not_null, is_null};

use nyala_common::{RowCodec, SchemaError, Value};

use crate::error::{Result, StorageError};

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    /// `=`
    Eq,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

/// A condition on one column. A scan returns the rows that satisfy all of its predicates; as in
/// SQL, a comparison with a NULL cell is not satisfied.
#[derive(Clone, Debug, PartialEq)]
pub enum Predicate {
    /// `column op value`.
    Compare {
        /// Column name.
        column: String,
        /// Operator.
        op: CmpOp,
        /// Constant of the column's type (not NULL).
        value: Value,
    },
    /// `column IN (values)`.
    In {
        /// Column name.
        column: String,
        /// Constants of the column's type (not NULL).
        values: Vec<Value>,
    },
    /// `column IS NULL`.
    IsNull(String),
    /// `column IS NOT NULL`.
    IsNotNull(String),
}

impl Predicate {
    /// Shorthand for [`Predicate::Compare`].
    pub fn cmp(column: impl Into<String>, op: CmpOp, value: Value) -> Self {
        Predicate::Compare {
            column: column.into(),
            op,
            value,
        }
    }

    fn column(&self) -> &str {
        match self {
            Predicate::Compare { column, .. } | Predicate::In { column, .. } => column,
            Predicate::IsNull(c) | Predicate::IsNotNull(c) => c,
        }
    }
}

#[derive(Clone, Debug)]
enum Test {
    Compare(CmpOp, Scalar<ArrayRef>, Value),
    In(Vec<(Scalar<ArrayRef>, Value)>),
    IsNull,
    IsNotNull,
}

/// A predicate checked against the schema, with its constants as Arrow scalars.
#[derive(Clone, Debug)]
pub(crate) struct BoundPredicate {
    /// Table column index.
    pub column: usize,
    test: Test,
    /// For a key column: its position in the key and the constants encoded like
    /// `RowCodec::encode_key_column` (in the order of the test's constants).
    key: Option<(usize, Vec<Vec<u8>>)>,
}

/// Checks predicates against the schema (unknown columns, NULL or mistyped constants).
pub(crate) fn bind(codec: &RowCodec, preds: &[Predicate]) -> Result<Vec<BoundPredicate>> {
    let schema = codec.schema();
    preds
        .iter()
        .map(|p| {
            let column = schema.index_of(p.column())?;
            let col = &schema.columns()[column];
            let scalar = |v: &Value| -> Result<Scalar<ArrayRef>> {
                if v.is_null() {
                    return Err(StorageError::InvalidInput(format!(
                        "comparison of column \"{}\" with NULL is never true; use IS NULL",
                        col.name
                    )));
                }
                Ok(Scalar::new(Value::to_array(
                    &col.name,
                    col.data_type,
                    std::slice::from_ref(v),
                )?))
            };
            let test = match p {
                Predicate::Compare { op, value, .. } => {
                    Test::Compare(*op, scalar(value)?, value.clone())
                }
                Predicate::In { values, .. } => Test::In(
                    values
                        .iter()
                        .map(|v| Ok((scalar(v)?, v.clone())))
                        .collect::<Result<_>>()?,
                ),
                Predicate::IsNull(_) => Test::IsNull,
                Predicate::IsNotNull(_) => Test::IsNotNull,
            };
            let key = match schema.key_indices().iter().position(|&k| k == column) {
                None => None,
                Some(k) => {
                    let consts: Vec<&Value> = match &test {
                        Test::Compare(_, _, v) => vec![v],
                        Test::In(list) => list.iter().map(|(_, v)| v).collect(),
                        Test::IsNull | Test::IsNotNull => vec![],
                    };
                    let enc = consts
                        .into_iter()
                        .map(|v| {
                            let a =
                                Value::to_array(&col.name, col.data_type, std::slice::from_ref(v))?;
                            Ok(codec.encode_key_column(k, &a)?.row(0).as_ref().to_vec())
                        })
                        .collect::<Result<Vec<_>>>()?;
                    Some((k, enc))
                }
            };
            Ok(BoundPredicate { column, test, key })
        })
        .collect()
}

fn compare(
    op: CmpOp,
    a: &dyn arrow::array::Datum,
    b: &dyn arrow::array::Datum,
) -> Result<BooleanArray> {
    Ok(match op {
        CmpOp::Eq => cmp::eq(a, b)?,
        CmpOp::Lt => cmp::lt(a, b)?,
        CmpOp::Le => cmp::lt_eq(a, b)?,
        CmpOp::Gt => cmp::gt(a, b)?,
        CmpOp::Ge => cmp::gt_eq(a, b)?,
    })
}

/// A segment's bounds on one key column, and a predicate's constants encoded the same way.
struct KeyBounds<'a> {
    lo: &'a [u8],
    hi: &'a [u8],
    enc: &'a [Vec<u8>],
}

impl BoundPredicate {
    /// The rows of `rows` this predicate keeps, where `array` is non-decreasing over them (a
    /// key column within a run of equal leading key columns): one interval, found by binary
    /// search instead of a comparison per row. `None` where that does not apply (`IN` lists,
    /// floating-point columns, whose kernels and sort order treat NaN and -0.0 apart).
    pub fn sorted_range(
        &self,
        array: &ArrayRef,
        rows: std::ops::Range<usize>,
    ) -> Option<std::ops::Range<usize>> {
        if array.data_type().is_floating() || array.null_count() > 0 {
            return None;
        }
        let (op, scalar) = match &self.test {
            Test::Compare(op, s, _) => (*op, s.clone().into_inner()),
            Test::IsNotNull => return Some(rows),
            Test::IsNull => return Some(rows.start..rows.start),
            Test::In(_) => return None,
        };
        let cmp = arrow::array::make_comparator(
            array.as_ref(),
            scalar.as_ref(),
            arrow::compute::SortOptions::default(),
        )
        .ok()?;
        // First row in `rows` at which `keep(ordering of the row against the constant)` stops
        // holding, for a `keep` true on a prefix of the rows.
        let point = |keep: &dyn Fn(Ordering) -> bool| {
            let (mut lo, mut hi) = (rows.start, rows.end);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                if keep(cmp(mid, 0)) {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            lo
        };
        let below = || point(&|o| o == Ordering::Less);
        let not_above = || point(&|o| o != Ordering::Greater);
        Some(match op {
            CmpOp::Eq => below()..not_above(),
            CmpOp::Lt => rows.start..below(),
            CmpOp::Le => rows.start..not_above(),
            CmpOp::Gt => not_above()..rows.end,
            CmpOp::Ge => below()..rows.end,
        })
    }

    /// This predicate's key-column bounds in `bounds` and its encoded constants, when it is
    /// on a key column that has bounds: what both bound tests below reason about.
    fn key_bounds<'a>(&'a self, bounds: &'a [(Vec<u8>, Vec<u8>)]) -> Option<KeyBounds<'a>> {
        let (k, enc) = self.key.as_ref()?;
        let (lo, hi) = bounds.get(*k)?;
        Some(KeyBounds { lo, hi, enc })
    }

    /// Whether a segment with these per-key-column bounds may hold a matching row.
    pub fn may_match_bounds(&self, bounds: &[(Vec<u8>, Vec<u8>)]) -> bool {
        let Some(KeyBounds { lo, hi, enc }) = self.key_bounds(bounds) else {
            return true;
        };
        self.may_match_between(enc, lo, hi)
    }

    /// Whether rows whose key columns lie within `bounds` (per key column, encoded on its own;
    /// `None` where a column is not bounded) may hold a match: a key block's test in a
    /// skip scan.
    pub fn may_match_key_bounds(&self, bounds: &[Option<(&[u8], &[u8])>]) -> bool {
        let Some((k, enc)) = &self.key else {
            return true;
        };
        match bounds.get(*k) {
            Some(Some((lo, hi))) => self.may_match_between(enc, lo, hi),
            _ => true,
        }
    }

    /// The key column this predicate tests (position in key order), if it tests one.
    pub fn key_column(&self) -> Option<usize> {
        self.key.as_ref().map(|(k, _)| *k)
    }

    /// Whether a key column whose values lie in `lo..=hi` may hold a value this predicate
    /// keeps (`enc`: its constants encoded like the bounds).
    fn may_match_between(&self, enc: &[Vec<u8>], lo: &[u8], hi: &[u8]) -> bool {
        match &self.test {
            Test::Compare(op, _, _) => {
                let v = enc[0].as_slice();
                match op {
                    CmpOp::Eq => lo <= v && v <= hi,
                    CmpOp::Lt => lo < v,
                    CmpOp::Le => lo <= v,
                    CmpOp::Gt => hi > v,
                    CmpOp::Ge => hi >= v,
                }
            }
            Test::In(_) => enc.iter().any(|v| lo <= v.as_slice() && v.as_slice() <= hi),
            // Key columns are never null.
            Test::IsNull => false,
            Test::IsNotNull => true,
        }
    }

    /// Whether every row of a segment with these per-key-column bounds matches: then a scan
    /// need not check the predicate there (a time-series query's `ts >= ...` on the newest
    /// time windows, say). Only for predicates on key columns, which have bounds.
    pub fn must_match_bounds(&self, bounds: &[(Vec<u8>, Vec<u8>)]) -> bool {
        let Some(KeyBounds { lo, hi, enc }) = self.key_bounds(bounds) else {
            return false;
        };
        match &self.test {
            Test::Compare(op, _, _) => {
                let v = enc[0].as_slice();
                match op {
                    CmpOp::Eq => lo == v && hi == v,
                    CmpOp::Lt => hi < v,
                    CmpOp::Le => hi <= v,
                    CmpOp::Gt => lo > v,
                    CmpOp::Ge => lo >= v,
                }
            }
            Test::In(_) => lo == hi && enc.iter().any(|v| v.as_slice() == lo),
            // Key columns are never null.
            Test::IsNull => false,
            Test::IsNotNull => true,
        }
    }

    /// Whether a row this predicate keeps is never NULL in its column: true of every test but
    /// `IS NULL` (a comparison with NULL is NULL, which a filter drops).
    pub fn rejects_null(&self) -> bool {
        !matches!(self.test, Test::IsNull)
    }

    /// Which rows of `array` (this predicate's column) satisfy it; NULL counts as false.
    pub fn evaluate(&self, array: &ArrayRef) -> Result<BooleanArray> {
        Ok(match &self.test {
            Test::Compare(op, s, _) => compare(*op, array, s)?,
            Test::In(list) => {
                let mut acc: Option<BooleanArray> = None;
                for (s, _) in list {
                    let m = cmp::eq(array, s)?;
                    acc = Some(match acc {
                        None => m,
                        Some(a) => boolean::or_kleene(&a, &m)?,
                    });
                }
                acc.unwrap_or_else(|| BooleanArray::from(vec![false; array.len()]))
            }
            Test::IsNull => is_null(array)?,
            Test::IsNotNull => is_not_null(array)?,
        })
    }

    /// For each row group (given its column statistics), whether it may hold a matching row.
    /// Missing statistics (NULL entries) keep the group.
    pub fn may_match(
        &self,
        mins: &ArrayRef,
        maxes: &ArrayRef,
        null_counts: &UInt64Array,
        row_counts: &UInt64Array,
    ) -> Result<Vec<bool>> {
        let n = null_counts.len();
        let keep_unknown = |m: BooleanArray| -> Vec<bool> {
            (0..m.len()).map(|i| m.is_null(i) || m.value(i)).collect()
        };
        let cmp_range = |op: CmpOp, s: &Scalar<ArrayRef>| -> Result<Vec<bool>> {
            Ok(match op {
                CmpOp::Eq => {
                    let lo = keep_unknown(cmp::lt_eq(mins, s)?);
                    let hi = keep_unknown(cmp::gt_eq(maxes, s)?);
                    lo.iter().zip(hi).map(|(a, b)| *a && b).collect()
                }
                CmpOp::Lt => keep_unknown(cmp::lt(mins, s)?),
                CmpOp::Le => keep_unknown(cmp::lt_eq(mins, s)?),
                CmpOp::Gt => keep_unknown(cmp::gt(maxes, s)?),
                CmpOp::Ge => keep_unknown(cmp::gt_eq(maxes, s)?),
            })
        };
        Ok(match &self.test {
            Test::Compare(op, s, _) => cmp_range(*op, s)?,
            Test::In(list) => {
                let mut acc = vec![false; n];
                for (s, _) in list {
                    for (a, b) in acc.iter_mut().zip(cmp_range(CmpOp::Eq, s)?) {
                        *a |= b;
                    }
                }
                acc
            }
            Test::IsNull => (0..n)
                .map(|i| null_counts.is_null(i) || null_counts.value(i) > 0)
                .collect(),
            Test::IsNotNull => (0..n)
                .map(|i| {
                    null_counts.is_null(i)
                        || row_counts.is_null(i)
                        || null_counts.value(i) < row_counts.value(i)
                })
                .collect(),
        })
    }
}

/// One end of a [`KeyRange`]: an encoded key prefix and whether keys equal to it on its
/// columns are inside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KeyBound {
    pub prefix: Vec<u8>,
    pub inclusive: bool,
}

/// The encoded keys a scan can match, derived from predicates on a key prefix.
///
/// Comparisons truncate a key to the bound's length: because each column's encoding is
/// self-delimiting and memcomparable, that compares the key's leading columns with the bound's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct KeyRange {
    pub lower: Option<KeyBound>,
    pub upper: Option<KeyBound>,
    /// The predicates pin every key column with `=`: this is one key.
    pub point: bool,
}

fn cmp_prefix(key: &[u8], prefix: &[u8]) -> Ordering {
    key[..key.len().min(prefix.len())].cmp(prefix)
}

impl KeyRange {
    /// Derives the range from bound predicates: leading key columns fixed by `=` (or a
    /// one-element `IN`), then optionally a range on the next key column.
    pub fn from_predicates(
        codec: &RowCodec,
        preds: &[BoundPredicate],
    ) -> std::result::Result<Self, SchemaError> {
        let key_cols = codec.schema().key_indices();
        let eq_of = |col: usize| {
            preds.iter().find_map(|p| match (&p.test, p.column == col) {
                (Test::Compare(CmpOp::Eq, _, v), true) => Some(v.clone()),
                (Test::In(list), true) if list.len() == 1 => Some(list[0].1.clone()),
                _ => None,
            })
        };
        let mut fixed = Vec::new();
        for &c in key_cols {
            match eq_of(c) {
                Some(v) => fixed.push(v),
                None => break,
            }
        }
        let mut range = KeyRange::default();
        if fixed.len() == key_cols.len() {
            let k = codec.encode_key_prefix(&fixed)?;
            range.lower = Some(KeyBound {
                prefix: k.clone(),
                inclusive: true,
            });
            range.upper = Some(KeyBound {
                prefix: k,
                inclusive: true,
            });
            range.point = true;
            return Ok(range);
        }
        if !fixed.is_empty() {
            let p = codec.encode_key_prefix(&fixed)?;
            range.lower = Some(KeyBound {
                prefix: p.clone(),
                inclusive: true,
            });
            range.upper = Some(KeyBound {
                prefix: p,
                inclusive: true,
            });
        }
        let next = key_cols[fixed.len()];
        for p in preds.iter().filter(|p| p.column == next) {
            if let Test::Compare(op, _, v) = &p.test {
                let mut vals = fixed.clone();
                vals.push(v.clone());
                let prefix = codec.encode_key_prefix(&vals)?;
                let (is_lower, inclusive) = match op {
                    CmpOp::Gt => (true, false),
                    CmpOp::Ge => (true, true),
                    CmpOp::Lt => (false, false),
                    CmpOp::Le => (false, true),
                    CmpOp::Eq => continue,
                };
                let b = KeyBound { prefix, inclusive };
                // Tighter bounds win: one on more columns, or a stricter one on the same.
                let slot = if is_lower {
                    &mut range.lower
                } else {
                    &mut range.upper
                };
                let tighter = match slot.as_ref() {
                    None => true,
                    Some(cur) if cur.prefix.len() != b.prefix.len() => {
                        cur.prefix.len() < b.prefix.len()
                    }
                    Some(cur) => {
                        if is_lower {
                            b.prefix > cur.prefix
                        } else {
                            b.prefix < cur.prefix
                        }
                    }
                };
                if tighter {
                    *slot = Some(b);
                }
            }
        }
        Ok(range)
    }

    /// Whether no key is excluded.
    pub fn is_full(&self) -> bool {
        self.lower.is_none() && self.upper.is_none()
    }

    /// Whether `key` is below the range.
    pub fn is_below(&self, key: &[u8]) -> bool {
        self.lower
            .as_ref()
            .is_some_and(|l| match cmp_prefix(key, &l.prefix) {
                Ordering::Less => true,
                Ordering::Equal => !l.inclusive,
                Ordering::Greater => false,
            })
    }

    /// Whether `key` is above the range.
    pub fn is_above(&self, key: &[u8]) -> bool {
        self.upper
            .as_ref()
            .is_some_and(|u| match cmp_prefix(key, &u.prefix) {
                Ordering::Greater => true,
                Ordering::Equal => !u.inclusive,
                Ordering::Less => false,
            })
    }

    /// Whether keys in `[min, max]` may lie in the range.
    pub fn overlaps(&self, min: &[u8], max: &[u8]) -> bool {
        !self.is_below(max) && !self.is_above(min)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use nyala_common::{ColumnSchema, DataType, Schema};

    use super::*;

    /// Over sorted values, the binary search keeps exactly the rows the kernel keeps.
    #[test]
    fn a_sorted_range_is_the_rows_a_comparison_keeps() {
        let schema = Schema::new(
            vec![
                ColumnSchema::not_null("id", DataType::Utf8),
                ColumnSchema::not_null("ts", DataType::Int64),
            ],
            &["id", "ts"],
        )
        .unwrap();
        let codec = RowCodec::new(&schema).unwrap();
        let ts: ArrayRef = Arc::new(Int64Array::from(vec![1, 3, 3, 3, 5, 8, 8, 13]));
        let id: ArrayRef = Arc::new(StringArray::from(vec![
            "a", "b", "b", "c", "d", "d", "e", "f",
        ]));
        let ops = [CmpOp::Eq, CmpOp::Lt, CmpOp::Le, CmpOp::Gt, CmpOp::Ge];
        let mut cases: Vec<(Predicate, &ArrayRef)> = vec![];
        for c in [0i64, 1, 3, 4, 8, 13, 20] {
            for op in ops {
                cases.push((Predicate::cmp("ts", op, Value::Int64(c)), &ts));
            }
        }
        for c in ["", "b", "bb", "d", "f", "z"] {
            for op in ops {
                cases.push((Predicate::cmp("id", op, Value::Utf8(c.into())), &id));
            }
        }
        cases.push((Predicate::IsNotNull("ts".into()), &ts));
        cases.push((Predicate::IsNull("ts".into()), &ts));
        for (pred, array) in cases {
            let bound = bind(&codec, std::slice::from_ref(&pred)).unwrap().remove(0);
            for (lo, hi) in [(0, 8), (1, 7), (2, 4), (3, 3), (5, 8)] {
                let got = bound.sorted_range(array, lo..hi).expect("applies");
                let kept = bound.evaluate(&array.slice(lo, hi - lo)).unwrap();
                let want: Vec<usize> = (0..hi - lo)
                    .filter(|&i| kept.value(i))
                    .map(|i| i + lo)
                    .collect();
                let got: Vec<usize> = got.collect();
                assert_eq!(got, want, "{pred:?} over {lo}..{hi}");
            }
        }
        // IN lists are evaluated row by row.
        let in_list = Predicate::In {
            column: "ts".into(),
            values: vec![Value::Int64(3)],
        };
        let bound = bind(&codec, &[in_list]).unwrap().remove(0);
        assert!(bound.sorted_range(&ts, 0..8).is_none());
    }
}
