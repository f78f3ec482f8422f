//! Faster versions of DataFusion functions on the data Nyala serves.
//!
//! `extract(hour | minute | dow | isodow FROM ts)` over zoneless timestamps (how SQL sees
//! Nyala's UTC timestamps) is integer arithmetic on the microseconds; DataFusion's
//! `date_part` builds a calendar date per value for it. [`DatePart`] answers those parts
//! directly and hands everything else to DataFusion's function, whose planning behaviour
//! (return types, pruning preimages) it keeps.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int32Array};
use arrow::datatypes::{DataType, TimeUnit, TimestampMicrosecondType};
use datafusion::arrow::datatypes::FieldRef;
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature,
};

const DAY_US: i64 = 86_400_000_000;
const HOUR_US: i64 = 3_600_000_000;
const MINUTE_US: i64 = 60_000_000;
/// Timestamps within this many microseconds of the epoch are inside chrono's calendar.
const CALENDAR_US: u64 = 8_000_000_000_000_000_000;

/// `date_part` (and so `extract`), with arithmetic fast paths for zoneless microsecond
/// timestamps.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct DatePart {
    inner: Arc<ScalarUDF>,
}

impl DatePart {
    /// Wraps DataFusion's `date_part`.
    pub(crate) fn udf() -> ScalarUDF {
        ScalarUDF::new_from_impl(DatePart {
            inner: datafusion::functions::datetime::date_part(),
        })
    }
}

/// The part, if it is one computed here.
#[derive(Clone, Copy)]
enum Part {
    Hour,
    Minute,
    /// Day of week, Sunday = 0.
    Dow,
    /// Day of week, Monday = 1 ... Sunday = 7.
    IsoDow,
}

fn fast_part(part: &ColumnarValue) -> Option<Part> {
    let ColumnarValue::Scalar(ScalarValue::Utf8(Some(p)) | ScalarValue::Utf8View(Some(p))) = part
    else {
        return None;
    };
    Some(match p.to_ascii_lowercase().as_str() {
        "hour" | "hours" => Part::Hour,
        "minute" | "minutes" => Part::Minute,
        "dow" => Part::Dow,
        "isodow" => Part::IsoDow,
        _ => return None,
    })
}

fn compute(part: Part, micros: &dyn Array) -> ArrayRef {
    let ts = micros.as_primitive::<TimestampMicrosecondType>();
    // 1970-01-01 was a Thursday (dow 4).
    let out: Int32Array = match part {
        Part::Hour => ts.unary(|t| (t.rem_euclid(DAY_US) / HOUR_US) as i32),
        Part::Minute => ts.unary(|t| (t.rem_euclid(HOUR_US) / MINUTE_US) as i32),
        Part::Dow => ts.unary(|t| (t.div_euclid(DAY_US) + 4).rem_euclid(7) as i32),
        Part::IsoDow => ts.unary(|t| {
            let d = (t.div_euclid(DAY_US) + 4).rem_euclid(7) as i32;
            if d == 0 {
                7
            } else {
                d
            }
        }),
    };
    Arc::new(out)
}

impl ScalarUDFImpl for DatePart {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.inner().return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.inner().return_field_from_args(args)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.inner().coerce_types(arg_types)
    }

    fn preimage(
        &self,
        args: &[datafusion::logical_expr::Expr],
        lit_expr: &datafusion::logical_expr::Expr,
        info: &datafusion::logical_expr::simplify::SimplifyContext,
    ) -> Result<datafusion::logical_expr::preimage::PreimageResult> {
        self.inner.inner().preimage(args, lit_expr, info)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if let [part, ColumnarValue::Array(a)] = args.args.as_slice() {
            if let (Some(p), DataType::Timestamp(TimeUnit::Microsecond, None)) =
                (fast_part(part), a.data_type())
            {
                // Beyond chrono's calendar (about +-262,000 years) DataFusion answers NULL;
                // leave such arrays to it.
                // One pass over the values, null slots included (a null slot holding a value
                // out of range only sends the array to DataFusion, which is always right).
                let ts = a.as_primitive::<TimestampMicrosecondType>();
                let in_calendar = ts
                    .values()
                    .iter()
                    .fold(true, |ok, v| ok & (v.unsigned_abs() < CALENDAR_US));
                if in_calendar {
                    return Ok(ColumnarValue::Array(compute(p, a.as_ref())));
                }
            }
        }
        self.inner.invoke_with_args(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::TimestampMicrosecondArray;

    #[test]
    fn parts_match_the_calendar() {
        // 2024-05-05 13:45:30 (a Sunday), 2024-05-06 00:00 (Monday), 1969-12-31 23:59:59
        // (Wednesday, before the epoch), NULL.
        let ts = TimestampMicrosecondArray::from(vec![
            Some(1_714_916_730_000_000),
            Some(1_714_953_600_000_000),
            Some(-1_000_000),
            None,
        ]);
        let get = |p| {
            let out = compute(p, &ts);
            let out = out.as_primitive::<arrow::datatypes::Int32Type>();
            (0..4)
                .map(|i| out.is_valid(i).then(|| out.value(i)))
                .collect::<Vec<_>>()
        };
        assert_eq!(get(Part::Hour), [Some(13), Some(0), Some(23), None]);
        assert_eq!(get(Part::Minute), [Some(45), Some(0), Some(59), None]);
        assert_eq!(get(Part::Dow), [Some(0), Some(1), Some(3), None]);
        assert_eq!(get(Part::IsoDow), [Some(7), Some(1), Some(3), None]);
    }
}
