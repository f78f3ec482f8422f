//! Partial aggregation grouped by a table's leading key column, a run at a time.
//!
//! `GROUP BY uid` over a table keyed by `(uid, lane, ts)` is the shape of most per-entity
//! analyses (top points by speed, per-road averages after [`crate::eager_aggregate`]). Each
//! scan partition returns the leading key column in long runs of equal values, because every
//! segment and the write buffer are sorted by key. DataFusion's partial aggregation does not
//! know this: it hashes every row's group value to find its group, and updates every
//! accumulator row by row. On the traffic benchmark that was a third of the query.
//!
//! [`RunAggregateExec`] replaces such a partial `AggregateExec`. Per input batch it finds the
//! runs of equal group values (Arrow's `partition` kernel) and looks each run's group up once.
//! Where runs are long, it computes each run's partial state with Arrow's vectorised
//! `sum`/`min`/`max` kernels and folds the per-run states into DataFusion's own groups
//! accumulators with `merge_batch`; where they are short, it hands the rows to the same
//! accumulators' `update_batch`, as DataFusion would. Either way the accumulators emit the
//! state DataFusion's final aggregation expects, so only the partial step changes.
//!
//! Correctness never depends on the runs: a group met in several runs (several segments, the
//! write buffer) merges like any other. The rule applies only where every piece is exact:
//! - a partial aggregation with one plain grouping column (no grouping sets, no group limit)
//!   that is the leading key column of a Nyala scan, seen through projections and filters;
//! - every aggregate is `count`, `sum`, `min`, `max` or `avg` of one argument, without
//!   DISTINCT, FILTER or ORDER BY, and its state has the types computed here: `sum` of Int64,
//!   UInt64 or Float64 (DataFusion widens smaller types before summing), `avg` of Float64,
//!   `min`/`max` of a primitive type. Decimal sums widen their precision: left to DataFusion.
//!
//! Float sums add a run's values first and then the run totals, where DataFusion adds row by
//! row: the last bits may differ, as they already do between DataFusion's partitions.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use arrow::array::{
    downcast_primitive_array, make_array, Array, ArrayData, ArrayRef, AsArray, Int64Array,
    PrimitiveArray, RecordBatch, UInt64Array,
};
use arrow::buffer::MutableBuffer;
use arrow::datatypes::{ArrowNumericType, DataType, Float64Type, Int64Type, UInt64Type};
use arrow_schema::SchemaRef;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{ColumnarValue, EmitTo, GroupsAccumulator};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties,
    ReplaceChildrenOptions, SendableRecordBatchStream,
};
use futures::StreamExt;

use crate::provider::NyalaScanExec;

/// Below this many rows per run on average, a batch goes through `update_batch` row by row.
const MIN_RUN_ROWS: usize = 16;

/// The physical optimizer rule (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct RunAggregate;

impl PhysicalOptimizerRule for RunAggregate {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(agg) = node.downcast_ref::<AggregateExec>() else {
                return Ok(Transformed::no(node));
            };
            Ok(match RunAggregateExec::try_new(agg)? {
                Some(run) => Transformed::yes(Arc::new(run) as Arc<dyn ExecutionPlan>),
                None => Transformed::no(node),
            })
        })
        .data()
    }

    fn name(&self) -> &str {
        "nyala_run_aggregate"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// What one aggregate computes, with the type of its (single) argument.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Count,
    Sum,
    Min,
    Max,
    Avg,
}

/// The aggregates this module computes per run, and the state types it produces for them.
fn kind_of(agg: &AggregateFunctionExpr, arg: &DataType) -> Option<Kind> {
    let kind = match agg.fun().name() {
        "count" => Kind::Count,
        "sum" => Kind::Sum,
        "min" => Kind::Min,
        "max" => Kind::Max,
        "avg" => Kind::Avg,
        _ => return None,
    };
    let state: Vec<DataType> = agg
        .state_fields()
        .ok()?
        .iter()
        .map(|f| f.data_type().clone())
        .collect();
    let fits = match kind {
        Kind::Count => state == [DataType::Int64],
        Kind::Sum => {
            matches!(arg, DataType::Int64 | DataType::UInt64 | DataType::Float64)
                && state == [arg.clone()]
        }
        Kind::Avg => *arg == DataType::Float64 && state == [DataType::UInt64, DataType::Float64],
        Kind::Min | Kind::Max => arg.is_primitive() && state == [arg.clone()],
    };
    fits.then_some(kind)
}

/// Whether column `idx` of `plan`'s output is a Nyala scan's leading key column, passed
/// through unchanged.
fn is_leading_key(plan: &Arc<dyn ExecutionPlan>, idx: usize) -> bool {
    if let Some(scan) = plan.downcast_ref::<NyalaScanExec>() {
        return scan.leading_key() == Some(idx);
    }
    if let Some(p) = plan.downcast_ref::<ProjectionExec>() {
        return p
            .expr()
            .get(idx)
            .and_then(|e| e.expr.downcast_ref::<Column>())
            .is_some_and(|c| is_leading_key(p.input(), c.index()));
    }
    if let Some(f) = plan.downcast_ref::<FilterExec>() {
        let inner = match f.projection() {
            None => Some(idx),
            Some(p) => p.get(idx).copied(),
        };
        return inner.is_some_and(|i| is_leading_key(f.input(), i));
    }
    false
}

/// A partial aggregation grouped by a leading key column, computed run by run (module docs).
#[derive(Debug)]
pub struct RunAggregateExec {
    /// The aggregation it replaces: its input, expressions, schema and properties.
    agg: Arc<AggregateExec>,
    group: Arc<dyn PhysicalExpr>,
    kinds: Vec<Kind>,
}

impl RunAggregateExec {
    /// The replacement for `agg`, or `None` where the rule does not apply (module docs).
    fn try_new(agg: &AggregateExec) -> Result<Option<Self>> {
        let input_schema = agg.input().schema();
        let group_by = agg.group_expr();
        if *agg.mode() != AggregateMode::Partial
            || agg.limit_options().is_some()
            || group_by.has_grouping_set()
            || group_by.expr().len() != 1
        {
            return Ok(None);
        }
        let group = group_by.expr()[0].0.clone();
        let Some(col) = group.downcast_ref::<Column>() else {
            return Ok(None);
        };
        // (The SQL schema calls every column nullable; a key column never holds NULL.)
        let field = input_schema.field(col.index());
        if field.data_type().primitive_width().is_none_or(|w| w > 8)
            || !is_leading_key(agg.input(), col.index())
        {
            return Ok(None);
        }
        let mut kinds = Vec::with_capacity(agg.aggr_expr().len());
        for (a, filter) in agg.aggr_expr().iter().zip(agg.filter_expr()) {
            let args = a.expressions();
            if filter.is_some()
                || a.is_distinct()
                || !a.order_bys().is_empty()
                || !a.groups_accumulator_supported()
                || args.len() != 1
            {
                return Ok(None);
            }
            let arg = args[0].data_type(&input_schema)?;
            match kind_of(a, &arg) {
                Some(k) => kinds.push(k),
                None => return Ok(None),
            }
        }
        Ok(Some(RunAggregateExec {
            agg: Arc::new(agg.clone()),
            group,
            kinds,
        }))
    }
}

impl DisplayAs for RunAggregateExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let aggs: Vec<&str> = self.agg.aggr_expr().iter().map(|a| a.name()).collect();
        write!(
            f,
            "RunAggregateExec: mode=Partial, gby=[{}] (runs of the leading key), aggr=[{}]",
            self.agg.group_expr().expr()[0].1,
            aggs.join(", ")
        )
    }
}

impl ExecutionPlan for RunAggregateExec {
    fn name(&self) -> &str {
        "RunAggregateExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.agg.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![self.agg.input()]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        self.agg.apply_expressions(f)
    }

    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let agg = Arc::clone(&self.agg).replace_children(children, options)?;
        let agg = agg
            .downcast_ref::<AggregateExec>()
            .ok_or_else(|| DataFusionError::Internal("aggregate expected".into()))?;
        // Where the new input no longer qualifies, DataFusion's own aggregation is exact too.
        Ok(match RunAggregateExec::try_new(agg)? {
            Some(run) => Arc::new(run),
            None => Arc::new(agg.clone()),
        })
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.agg.input().execute(partition, Arc::clone(&context))?;
        let schema = self.agg.schema();
        let mut state = RunState {
            group: Arc::clone(&self.group),
            args: self
                .agg
                .aggr_expr()
                .iter()
                .map(|a| a.expressions()[0].clone())
                .collect(),
            kinds: self.kinds.clone(),
            accumulators: self
                .agg
                .aggr_expr()
                .iter()
                .map(|a| a.create_groups_accumulator())
                .collect::<Result<_>>()?,
            groups: HashMap::new(),
            keys: vec![],
            indices: vec![],
            key_type: None,
        };
        let batch_size = context.session_config().batch_size().max(1);
        let out_schema = Arc::clone(&schema);
        let stream = futures::stream::once(async move {
            let mut input = input;
            while let Some(batch) = input.next().await {
                state.add(&batch?)?;
            }
            state.finish(&out_schema)
        })
        .map(move |r| match r {
            Ok(batch) => {
                let n = batch.num_rows();
                let slices: Vec<Result<RecordBatch>> = (0..n)
                    .step_by(batch_size)
                    .map(|o| Ok(batch.slice(o, batch_size.min(n - o))))
                    .collect();
                futures::stream::iter(slices)
            }
            Err(e) => futures::stream::iter(vec![Err(e)]),
        })
        .flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

/// One partition's groups and accumulators.
struct RunState {
    group: Arc<dyn PhysicalExpr>,
    args: Vec<Arc<dyn PhysicalExpr>>,
    kinds: Vec<Kind>,
    accumulators: Vec<Box<dyn GroupsAccumulator>>,
    /// Group value (its bytes, zero-extended) to group index.
    groups: HashMap<u64, usize>,
    /// Group values by group index.
    keys: Vec<u64>,
    /// Scratch: a group index per run or per row.
    indices: Vec<usize>,
    key_type: Option<DataType>,
}

impl RunState {
    fn add(&mut self, batch: &RecordBatch) -> Result<()> {
        let rows = batch.num_rows();
        if rows == 0 {
            return Ok(());
        }
        let group = self.group.evaluate(batch)?.into_array(rows)?;
        if group.null_count() > 0 {
            return Err(DataFusionError::Internal(
                "a key column returned NULL to the run aggregation".into(),
            ));
        }
        self.key_type
            .get_or_insert_with(|| group.data_type().clone());
        let data = group.to_data();
        let width = data.data_type().primitive_width().unwrap_or(8);
        let runs = arrow::compute::kernels::partition::partition(&[group])?.ranges();
        let values = self
            .args
            .iter()
            .map(|a| a.evaluate(batch))
            .collect::<Result<Vec<_>>>()?;
        self.indices.clear();
        let long = rows / runs.len() >= MIN_RUN_ROWS;
        for run in &runs {
            let key = key_at(&data, width, run.start);
            let next = self.keys.len();
            let g = *self.groups.entry(key).or_insert(next);
            if g == next {
                self.keys.push(key);
            }
            if long {
                self.indices.push(g);
            } else {
                self.indices.extend(std::iter::repeat_n(g, run.len()));
            }
        }
        let total = self.keys.len();
        for ((acc, kind), value) in self.accumulators.iter_mut().zip(&self.kinds).zip(values) {
            if long {
                let states = run_states(*kind, &value, &runs)?;
                acc.merge_batch(&states, &self.indices, total)?;
            } else {
                let value = value.into_array(rows)?;
                acc.update_batch(&[value], &self.indices, None, total)?;
            }
        }
        Ok(())
    }

    fn finish(mut self, schema: &SchemaRef) -> Result<RecordBatch> {
        let key_type = self
            .key_type
            .clone()
            .unwrap_or_else(|| schema.field(0).data_type().clone());
        let mut columns = vec![keys_array(&self.keys, &key_type)?];
        for acc in &mut self.accumulators {
            columns.extend(acc.state(EmitTo::All)?);
        }
        Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
    }
}

/// Row `i`'s value in a primitive array of `width` bytes, zero-extended: a hash key.
fn key_at(data: &ArrayData, width: usize, i: usize) -> u64 {
    let start = (data.offset() + i) * width;
    let mut bytes = [0u8; 8];
    bytes[..width].copy_from_slice(&data.buffers()[0].as_slice()[start..start + width]);
    u64::from_le_bytes(bytes)
}

/// The group column from its keys (the inverse of [`key_at`]).
fn keys_array(keys: &[u64], data_type: &DataType) -> Result<ArrayRef> {
    let width = data_type.primitive_width().unwrap_or(8);
    let mut buf = MutableBuffer::with_capacity(keys.len() * width);
    for k in keys {
        buf.extend_from_slice(&k.to_le_bytes()[..width]);
    }
    let data = ArrayData::builder(data_type.clone())
        .len(keys.len())
        .add_buffer(buf.into())
        .build()?;
    Ok(make_array(data))
}

/// Each run's partial state of one aggregate: the arrays `merge_batch` takes.
fn run_states(kind: Kind, value: &ColumnarValue, runs: &[Range<usize>]) -> Result<Vec<ArrayRef>> {
    let array = match value {
        ColumnarValue::Array(a) => a,
        // Only `count(*)` (a literal) gets here: each run counts its rows, or none for NULL.
        ColumnarValue::Scalar(s) => {
            let counts: Int64Array = runs
                .iter()
                .map(|r| Some(if s.is_null() { 0 } else { r.len() as i64 }))
                .collect();
            return Ok(vec![Arc::new(counts)]);
        }
    };
    let valid = |r: &Range<usize>| r.len() - array.slice(r.start, r.len()).null_count();
    Ok(match kind {
        Kind::Count => {
            let counts: Int64Array = runs.iter().map(|r| Some(valid(r) as i64)).collect();
            vec![Arc::new(counts)]
        }
        Kind::Sum => match array.data_type() {
            DataType::Int64 => vec![sums::<Int64Type>(array, runs)],
            DataType::UInt64 => vec![sums::<UInt64Type>(array, runs)],
            DataType::Float64 => vec![sums::<Float64Type>(array, runs)],
            other => {
                return Err(DataFusionError::Internal(format!(
                    "run aggregation cannot sum {other}"
                )))
            }
        },
        Kind::Avg => {
            // A run without values leaves its group unseen: NULL count and sum, as
            // DataFusion's own partial state has for such a group.
            let counts: UInt64Array = runs
                .iter()
                .map(|r| Some(valid(r) as u64).filter(|&n| n > 0))
                .collect();
            vec![Arc::new(counts), sums::<Float64Type>(array, runs)]
        }
        Kind::Min | Kind::Max => {
            let min = kind == Kind::Min;
            downcast_primitive_array!(
                array => vec![extremes(array, runs, min)],
                other => {
                    return Err(DataFusionError::Internal(format!(
                        "run aggregation cannot take min/max of {other}"
                    )))
                }
            )
        }
    })
}

/// Each run's sum (NULL where the run has no values), typed like the input.
fn sums<T: ArrowNumericType>(array: &ArrayRef, runs: &[Range<usize>]) -> ArrayRef {
    let a = array.as_primitive::<T>();
    let out: PrimitiveArray<T> = runs
        .iter()
        .map(|r| arrow::compute::sum(&a.slice(r.start, r.len())))
        .collect();
    Arc::new(out.with_data_type(array.data_type().clone()))
}

/// Each run's minimum or maximum (NULL where the run has no values), typed like the input.
fn extremes<T: ArrowNumericType>(
    a: &PrimitiveArray<T>,
    runs: &[Range<usize>],
    min: bool,
) -> ArrayRef {
    let out: PrimitiveArray<T> = runs
        .iter()
        .map(|r| {
            let s = a.slice(r.start, r.len());
            if min {
                arrow::compute::min(&s)
            } else {
                arrow::compute::max(&s)
            }
        })
        .collect();
    Arc::new(out.with_data_type(a.data_type().clone()))
}
