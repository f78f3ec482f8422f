//! Faster versions of DataFusion functions on the data Nyala serves.
//!
//! `extract(hour | minute | dow | isodow FROM ts)` and `date_trunc('second' | 'minute' |
//! 'hour' | 'day', ts)` over zoneless timestamps (how SQL sees Nyala's UTC timestamps) are
//! integer arithmetic on the microseconds; DataFusion's functions build a calendar date per
//! value for them. [`DatePart`] and [`DateTrunc`] answer those cases directly and hand
//! everything else to DataFusion's function, whose planning behaviour (return types, pruning
//! preimages, order preservation) they keep.

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

/// Whether every value of `ts` is inside chrono's calendar (about +-262,000 years), where the
/// arithmetic answers what DataFusion's calendar code does (beyond it DataFusion answers NULL
/// or an error). One pass over the values, null slots included: a null slot holding a value
/// out of range only sends the array to DataFusion, which is always right.
fn in_calendar(ts: &arrow::array::TimestampMicrosecondArray) -> bool {
    ts.values()
        .iter()
        .fold(true, |ok, v| ok & (v.unsigned_abs() < CALENDAR_US))
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
                if in_calendar(a.as_primitive::<TimestampMicrosecondType>()) {
                    return Ok(ColumnarValue::Array(compute(p, a.as_ref())));
                }
            }
        }
        self.inner.invoke_with_args(args)
    }
}

/// `date_trunc`, with arithmetic fast paths for zoneless microsecond timestamps and the units
/// of fixed length (a day has no daylight-saving shift without a zone).
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct DateTrunc {
    inner: Arc<ScalarUDF>,
}

impl DateTrunc {
    /// Wraps DataFusion's `date_trunc`.
    pub(crate) fn udf() -> ScalarUDF {
        ScalarUDF::new_from_impl(DateTrunc {
            inner: datafusion::functions::datetime::date_trunc(),
        })
    }
}

/// The length in microseconds of a `date_trunc` unit computed here.
fn fixed_unit(unit: &ColumnarValue) -> Option<i64> {
    let ColumnarValue::Scalar(ScalarValue::Utf8(Some(u)) | ScalarValue::Utf8View(Some(u))) = unit
    else {
        return None;
    };
    Some(match u.to_ascii_lowercase().as_str() {
        "second" => 1_000_000,
        "minute" => MINUTE_US,
        "hour" => HOUR_US,
        "day" => DAY_US,
        _ => return None,
    })
}

/// Each timestamp floored to a multiple of `UNIT` microseconds (`rem_euclid`: before 1970
/// too, as the calendar does). A constant unit turns the division into a multiplication: with
/// the unit as a variable, the hardware division was most of the function's time.
fn floor_to<const UNIT: i64>(
    ts: &arrow::array::TimestampMicrosecondArray,
) -> arrow::array::TimestampMicrosecondArray {
    ts.unary(|t| t - t.rem_euclid(UNIT))
}

impl ScalarUDFImpl for DateTrunc {
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

    fn output_ordering(
        &self,
        input: &[datafusion::logical_expr::sort_properties::ExprProperties],
    ) -> Result<datafusion::logical_expr::sort_properties::SortProperties> {
        self.inner.inner().output_ordering(input)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if let [unit, ColumnarValue::Array(a)] = args.args.as_slice() {
            if let (Some(len), DataType::Timestamp(TimeUnit::Microsecond, None)) =
                (fixed_unit(unit), a.data_type())
            {
                let ts = a.as_primitive::<TimestampMicrosecondType>();
                if in_calendar(ts) {
                    let out = match len {
                        1_000_000 => floor_to::<1_000_000>(ts),
                        MINUTE_US => floor_to::<MINUTE_US>(ts),
                        HOUR_US => floor_to::<HOUR_US>(ts),
                        _ => floor_to::<DAY_US>(ts),
                    };
                    return Ok(ColumnarValue::Array(Arc::new(out)));
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

    /// The arithmetic `date_trunc` answers what DataFusion's calendar code answers, before and
    /// after the epoch and on unit boundaries.
    #[test]
    fn truncation_matches_datafusion() {
        use arrow::datatypes::Field;
        let values = vec![
            Some(1_714_916_730_123_456), // 2024-05-05 13:45:30.123456
            Some(1_714_953_600_000_000), // 2024-05-06 00:00:00
            Some(-1),                    // 1969-12-31 23:59:59.999999
            Some(-86_400_000_001),       // 1969-12-30 23:59:59.999999
            Some(0),
            None,
        ];
        let ts: ArrayRef = Arc::new(TimestampMicrosecondArray::from(values));
        let ts_type = DataType::Timestamp(TimeUnit::Microsecond, None);
        let ours = DateTrunc::udf();
        let theirs = datafusion::functions::datetime::date_trunc();
        for unit in ["second", "minute", "HOUR", "day"] {
            let args = || ScalarFunctionArgs {
                args: vec![
                    ColumnarValue::Scalar(ScalarValue::Utf8(Some(unit.into()))),
                    ColumnarValue::Array(ts.clone()),
                ],
                arg_fields: vec![
                    Arc::new(Field::new("unit", DataType::Utf8, false)),
                    Arc::new(Field::new("ts", ts_type.clone(), true)),
                ],
                number_rows: ts.len(),
                return_field: Arc::new(Field::new("t", ts_type.clone(), true)),
                config_options: Default::default(),
            };
            let a = ours
                .invoke_with_args(args())
                .unwrap()
                .to_array(ts.len())
                .unwrap();
            let b = theirs
                .invoke_with_args(args())
                .unwrap()
                .to_array(ts.len())
                .unwrap();
            assert_eq!(&a, &b, "{unit}");
        }
    }
}
