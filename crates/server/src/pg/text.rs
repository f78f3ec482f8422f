//! Result rows in PostgreSQL's text output where pgwire's differs from it.
//!
//! pgwire writes every timestamp with six fractional digits (`10:00:00.000000`) and floats
//! as Rust prints them (`2.0`, `inf`, `1e16`); PostgreSQL writes `10:00:00`, `2`, `Infinity`
//! and `1e+16`. psql shows these strings as they are, and programs that compare or parse
//! text results (scripts, CSV exports, tests written against PostgreSQL) see the difference,
//! so text-format columns of those types are written here; everything else, and every
//! binary-format column, goes through arrow-pg.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{
    DataType, Float32Type, Float64Type, TimeUnit, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType,
};
use pgwire::api::results::{DataRowEncoder, FieldFormat, FieldInfo};
use pgwire::error::PgWireResult;
use pgwire::messages::data::DataRow;

/// How one column's values are written.
#[derive(Clone, Copy)]
enum Column {
    /// Through arrow-pg.
    ArrowPg,
    /// A timestamp without time zone, stored in `unit`s since the epoch.
    Timestamp(TimeUnit),
    Float32,
    Float64,
}

/// The data rows of `batch`, whose columns `fields` describe.
pub fn encode_rows(
    fields: Arc<Vec<FieldInfo>>,
    batch: RecordBatch,
) -> impl Iterator<Item = PgWireResult<DataRow>> {
    let columns: Vec<Column> = batch
        .columns()
        .iter()
        .zip(fields.iter())
        .map(|(a, f)| column_kind(a, f))
        .collect();
    let mut encoder = DataRowEncoder::new(fields.clone());
    let mut text = String::new();
    let schema = batch.schema();
    (0..batch.num_rows()).map(move |row| {
        for (c, array) in batch.columns().iter().enumerate() {
            let kind = if array.is_null(row) {
                Column::ArrowPg
            } else {
                columns[c]
            };
            text.clear();
            // Whether `text` holds the value; otherwise arrow-pg writes it (other types, NULLs,
            // and years PostgreSQL writes differently).
            let written = match kind {
                Column::ArrowPg => false,
                Column::Timestamp(unit) => {
                    timestamp_text(timestamp_micros(array, unit, row), &mut text)
                }
                Column::Float32 => {
                    float_text(array.as_primitive::<Float32Type>().value(row), &mut text);
                    true
                }
                Column::Float64 => {
                    float_text(array.as_primitive::<Float64Type>().value(row), &mut text);
                    true
                }
            };
            if written {
                encoder.encode_field(&text.as_str())?;
            } else {
                arrow_pg::encoder::encode_value(
                    &mut encoder,
                    array,
                    row,
                    schema.field(c),
                    &fields[c],
                )?;
            }
        }
        Ok(encoder.take_row())
    })
}

/// Which columns are written here: text format with PostgreSQL's default output settings
/// (ISO dates, shortest exact floats); other settings keep pgwire's handling of them.
fn column_kind(array: &ArrayRef, field: &FieldInfo) -> Column {
    if field.format() != FieldFormat::Text {
        return Column::ArrowPg;
    }
    let options = field.format_options();
    match array.data_type() {
        DataType::Timestamp(unit, None) if options.date_style.trim_start().starts_with("ISO") => {
            Column::Timestamp(*unit)
        }
        DataType::Float32 | DataType::Float64 if options.extra_float_digits < 1 => Column::ArrowPg,
        DataType::Float32 => Column::Float32,
        DataType::Float64 => Column::Float64,
        _ => Column::ArrowPg,
    }
}

fn timestamp_micros(array: &ArrayRef, unit: TimeUnit, row: usize) -> Option<i64> {
    match unit {
        TimeUnit::Second => array
            .as_primitive::<TimestampSecondType>()
            .value(row)
            .checked_mul(1_000_000),
        TimeUnit::Millisecond => array
            .as_primitive::<TimestampMillisecondType>()
            .value(row)
            .checked_mul(1_000),
        TimeUnit::Microsecond => Some(array.as_primitive::<TimestampMicrosecondType>().value(row)),
        // PostgreSQL keeps microseconds; arrow-pg drops the rest too.
        TimeUnit::Nanosecond => Some(
            array
                .as_primitive::<TimestampNanosecondType>()
                .value(row)
                .div_euclid(1_000),
        ),
    }
}

/// `micros` since the epoch as PostgreSQL writes a `timestamp` in ISO style: the fraction of
/// a second only when there is one, without trailing zeros. False for instants chrono cannot
/// represent.
fn timestamp_text(micros: Option<i64>, out: &mut String) -> bool {
    use std::fmt::Write;
    // PostgreSQL writes years outside 1..=9999 differently (`BC`, more digits): pgwire's text.
    const YEAR_1: i64 = -62_135_596_800_000_000;
    const YEAR_10000: i64 = 253_402_300_800_000_000;
    let Some(micros) = micros.filter(|m| (YEAR_1..YEAR_10000).contains(m)) else {
        return false;
    };
    let fraction = micros.rem_euclid(1_000_000);
    let Some(t) = arrow::temporal_conversions::timestamp_us_to_datetime(micros - fraction) else {
        return false;
    };
    // A whole second displays as `YYYY-MM-DD HH:MM:SS` (no format string to parse per value,
    // and no allocation: this runs for every timestamp of a text result).
    let _ = write!(out, "{t}");
    if fraction != 0 {
        let _ = write!(out, ".{fraction:06}");
        while out.ends_with('0') {
            out.pop();
        }
    }
    true
}

/// A float as PostgreSQL writes it with `extra_float_digits` >= 1 (its default): the shortest
/// digits that read back exactly, chosen as PostgreSQL chooses them (it uses Ryu, as the `ryu`
/// crate does), in plain notation for decimal exponents from -4 up to 14 (float8) or 5
/// (float4), in `d.ddde+XX` notation otherwise.
trait PgFloat: ryu::Float {
    /// The largest decimal exponent written in plain notation.
    const MAX_PLAIN: i32;
    fn special(self) -> Option<&'static str>;
}

impl PgFloat for f32 {
    const MAX_PLAIN: i32 = 5;
    fn special(self) -> Option<&'static str> {
        (!self.is_finite()).then(|| special_text(self.is_nan(), self.is_sign_negative()))
    }
}

impl PgFloat for f64 {
    const MAX_PLAIN: i32 = 14;
    fn special(self) -> Option<&'static str> {
        (!self.is_finite()).then(|| special_text(self.is_nan(), self.is_sign_negative()))
    }
}

fn special_text(nan: bool, negative: bool) -> &'static str {
    match (nan, negative) {
        (true, _) => "NaN",
        (false, true) => "-Infinity",
        (false, false) => "Infinity",
    }
}

fn float_text<F: PgFloat>(v: F, out: &mut String) {
    use std::fmt::Write;
    if let Some(s) = v.special() {
        out.push_str(s);
        return;
    }
    // Ryu's shortest digits, in its own layout (`1.0`, `1e16`, `1.5e-7`, `0.0001`): read back
    // as the digits without leading or trailing zeros and the exponent of the first one.
    let mut buffer = ryu::Buffer::new();
    let text = buffer.format_finite(v);
    let (sign, text) = match text.strip_prefix('-') {
        Some(t) => ("-", t),
        None => ("", text),
    };
    let (mantissa, exp) = match text.split_once('e').map(|(m, e)| (m, e.parse::<i32>())) {
        Some((m, Ok(e))) => (m, e),
        // Ryu writes a decimal exponent; anything else is written as it came.
        Some((_, Err(_))) => {
            out.push_str(sign);
            out.push_str(text);
            return;
        }
        None => (text, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    // The digits in one run, on the stack (Ryu writes at most 24 characters): this runs for
    // every float of a text result.
    let mut run = [0u8; 32];
    let n = int.len() + frac.len();
    if n > run.len() {
        out.push_str(sign);
        out.push_str(text);
        return;
    }
    run[..int.len()].copy_from_slice(int.as_bytes());
    run[int.len()..n].copy_from_slice(frac.as_bytes());
    let all = std::str::from_utf8(&run[..n]).unwrap_or("0");
    let leading = all.len() - all.trim_start_matches('0').len();
    let digits = all.trim_start_matches('0').trim_end_matches('0');
    out.push_str(sign);
    if digits.is_empty() {
        out.push('0');
        return;
    }
    let exp = exp + int.len() as i32 - 1 - leading as i32;
    if (-4..=F::MAX_PLAIN).contains(&exp) {
        if exp < 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-exp - 1) as usize));
            out.push_str(digits);
        } else {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                out.push_str(digits);
                out.extend(std::iter::repeat_n('0', int_len - digits.len()));
            } else {
                out.push_str(&digits[..int_len]);
                out.push('.');
                out.push_str(&digits[int_len..]);
            }
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f64_text(v: f64) -> String {
        let mut s = String::new();
        float_text(v, &mut s);
        s
    }

    fn f32_text(v: f32) -> String {
        let mut s = String::new();
        float_text(v, &mut s);
        s
    }

    /// Expected strings are what PostgreSQL 16 prints for `SELECT v::float8` / `::float4`.
    // Literals exactly halfway between two shortest forms are the point of two cases.
    #[allow(clippy::excessive_precision)]
    #[test]
    fn floats_read_as_in_postgresql() {
        for (v, want) in [
            (2.0, "2"),
            (1.5, "1.5"),
            (-0.5, "-0.5"),
            (0.0, "0"),
            (-0.0, "-0"),
            (1.0 / 3.0, "0.3333333333333333"),
            (123.456, "123.456"),
            (1e14, "100000000000000"),
            (1e15, "1e+15"),
            (1.5e16, "1.5e+16"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.25e-7, "1.25e-07"),
            (1e300, "1e+300"),
            (740443864548635.25, "740443864548635.2"),
            (5e-324, "5e-324"),
            (f64::INFINITY, "Infinity"),
            (f64::NEG_INFINITY, "-Infinity"),
            (f64::NAN, "NaN"),
        ] {
            assert_eq!(f64_text(v), want, "{v:e}");
        }
        for (v, want) in [
            (0.1f32, "0.1"),
            (87.5, "87.5"),
            (100000.0, "100000"),
            (1e6, "1e+06"),
            (1234567.0, "1.234567e+06"),
            (3.4028235e38, "3.4028235e+38"),
            // An exact tie between two shortest forms: PostgreSQL (Ryu) rounds to even.
            (340611.125, "340611.12"),
        ] {
            assert_eq!(f32_text(v), want, "{v:e}");
        }
    }

    #[test]
    fn timestamps_read_as_in_postgresql() {
        let text = |micros: i64| {
            let mut s = String::new();
            assert!(timestamp_text(Some(micros), &mut s));
            s
        };
        let t0 = 1_672_567_200_000_000; // 2023-01-01 10:00:00 UTC
        assert_eq!(text(t0), "2023-01-01 10:00:00");
        assert_eq!(text(t0 + 250_000), "2023-01-01 10:00:00.25");
        assert_eq!(text(t0 + 1), "2023-01-01 10:00:00.000001");
        assert_eq!(text(-1), "1969-12-31 23:59:59.999999");
        let mut s = String::new();
        assert!(!timestamp_text(Some(i64::MAX), &mut s));
        assert!(!timestamp_text(None, &mut s));
    }
}
