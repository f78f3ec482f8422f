//! Partial aggregation grouped by key columns, a run of equal group values at a time.
//!
//! Analyses of keyed data group by the key or by something of it: `GROUP BY uid` over a table
//! keyed by `(uid, lane, ts)` (top points by speed, per-road averages after
//! [`crate::eager_aggregate`]), `GROUP BY date_trunc('hour', ts)` or by the hour of day and the
//! day of week of `ts`. Each scan partition returns its rows sorted by key (every segment and
//! the write buffer are), so such group values come in runs: 10,000 rows of one `uid`, 60
//! readings of one hour of one series. DataFusion's partial aggregation does not know this: it
//! hashes every row's group values to find its group and updates every accumulator row by row.
//! On the traffic benchmark that was a third of a query.
//!
//! [`RunAggregateExec`] replaces such a partial `AggregateExec`. Per input batch it finds the
//! runs of equal group values (Arrow's `partition` kernel). Where runs are long, it interns only
//! each run's first row (with DataFusion's own `GroupValues`), reduces each run to a partial
//! state in a tight loop over its values, and folds the per-run states into DataFusion's own
//! groups accumulators with `merge_batch`. Where runs are short, it interns every row and hands
//! the rows to the accumulators' `update_batch`, as DataFusion does. Either way the accumulators
//! emit the state DataFusion's final aggregation expects, so only the partial step changes.
//!
//! Correctness never depends on the runs: a group met in several runs (several segments, the
//! write buffer, rows of another series) merges like any other. Which plans it takes is a
//! matter of speed only, and every piece must be exact:
//! - a partial aggregation without grouping sets or group limit whose grouping expressions read
//!   only primary-key columns of a Nyala scan (through projections and filters), so runs are
//!   likely, and do not name the whole key (one row per group); where runs turn out short the
//!   cost is DataFusion's plus finding runs, except that DataFusion would stop aggregating
//!   partially once groups are nearly as many as rows, and this does not;
//! - every aggregate is `count`, `sum`, `min`, `max` or `avg` of one argument, without
//!   DISTINCT, FILTER or ORDER BY, and its state has the types computed here: `sum` of Int64,
//!   UInt64 or Float64 (DataFusion widens smaller types before summing), `avg` of Float64,
//!   `min`/`max` of a primitive type. Decimal sums widen their precision: left to DataFusion.
//!
//! Float sums add a run's values in four interleaved lanes and then the run totals, where
//! DataFusion adds row by row: their last bits may differ, as DataFusion's own do between
//! partitionings. `min`/`max` compare as DataFusion's do (`partial_cmp`, a NaN taken over by
//! what follows it): without NaNs the answers are DataFusion's, but for which of -0.0 and 0.0
//! a tie keeps; with NaNs, which value a run ends on depends on order, as DataFusion's answer
//! depends on the order rows arrive in.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use arrow::array::{
    downcast_primitive_array, Array, ArrayRef, ArrowNativeTypeOp, AsArray, Int64Array,
    PrimitiveArray, RecordBatch, UInt32Array, UInt64Array,
};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{
    ArrowPrimitiveType, DataType, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type,
    Int8Type, UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use arrow::util::bit_chunk_iterator::{BitChunks, UnalignedBitChunk};
use arrow_schema::SchemaRef;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{ColumnarValue, EmitTo, GroupsAccumulator};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::expressions::{CastExpr, Column};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::group_values::{new_group_values, GroupValues};
use datafusion::physical_plan::aggregates::order::GroupOrdering;
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
const MIN_RUN_ROWS: usize = 8;

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

/// What one aggregate computes per run.
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

/// Whether `expr`, over `plan`'s output, reads primary-key columns of a Nyala scan only.
fn reads_keys_only(plan: &Arc<dyn ExecutionPlan>, expr: &Arc<dyn PhysicalExpr>) -> bool {
    let mut keys_only = true;
    let _ = expr.apply(|e| {
        if let Some(c) = e.downcast_ref::<Column>() {
            keys_only &= is_key_column(plan, c.index());
        }
        Ok(if keys_only {
            TreeNodeRecursion::Continue
        } else {
            TreeNodeRecursion::Stop
        })
    });
    keys_only
}

/// Whether column `idx` of `plan`'s output is computed from primary-key columns of a Nyala
/// scan only.
fn is_key_column(plan: &Arc<dyn ExecutionPlan>, idx: usize) -> bool {
    if let Some(scan) = plan.downcast_ref::<NyalaScanExec>() {
        return scan.key_columns().contains(&idx);
    }
    if let Some(p) = plan.downcast_ref::<ProjectionExec>() {
        return p
            .expr()
            .get(idx)
            .is_some_and(|e| reads_keys_only(p.input(), &e.expr));
    }
    if let Some(f) = plan.downcast_ref::<FilterExec>() {
        return filter_input_column(f, idx).is_some_and(|i| is_key_column(f.input(), i));
    }
    false
}

/// The input column a filter's output column `idx` is.
fn filter_input_column(f: &FilterExec, idx: usize) -> Option<usize> {
    match f.projection() {
        None => Some(idx),
        Some(p) => p.get(idx).copied(),
    }
}

/// Where column `idx` of `plan`'s output is a Nyala scan's key column passed through as it is:
/// its position in the scan's output, and how many key columns the table has.
fn plain_key_column(plan: &Arc<dyn ExecutionPlan>, idx: usize) -> Option<(usize, usize)> {
    if let Some(scan) = plan.downcast_ref::<NyalaScanExec>() {
        return scan
            .key_columns()
            .contains(&idx)
            .then_some((idx, scan.key_count()));
    }
    if let Some(p) = plan.downcast_ref::<ProjectionExec>() {
        let c = p.expr().get(idx)?.expr.downcast_ref::<Column>()?;
        return plain_key_column(p.input(), c.index());
    }
    if let Some(f) = plan.downcast_ref::<FilterExec>() {
        return plain_key_column(f.input(), filter_input_column(f, idx)?);
    }
    None
}

/// Whether the grouping names every key column: then each group is one row, there are no
/// runs to find, and DataFusion's partial aggregation, which passes rows through when groups
/// are nearly as many as rows, is the better plan.
fn groups_whole_key(agg: &AggregateExec) -> bool {
    let keys: Vec<(usize, usize)> = agg
        .group_expr()
        .expr()
        .iter()
        .filter_map(|(e, _)| e.downcast_ref::<Column>())
        .filter_map(|c| plain_key_column(agg.input(), c.index()))
        .collect();
    let mut distinct: Vec<usize> = keys.iter().map(|(pos, _)| *pos).collect();
    distinct.sort_unstable();
    distinct.dedup();
    keys.first()
        .is_some_and(|(_, count)| distinct.len() >= *count)
}

/// A partial aggregation grouped by key columns, computed run by run (module docs).
#[derive(Debug)]
pub struct RunAggregateExec {
    /// The aggregation it replaces: its input, expressions, schema and properties.
    agg: Arc<AggregateExec>,
    aggs: Vec<RunAgg>,
}

/// One aggregate as a run reduces it.
#[derive(Debug, Clone)]
struct RunAgg {
    kind: Kind,
    /// What is evaluated per batch: the aggregate's argument, or, where that is a widening cast
    /// DataFusion put under `sum`/`avg` (`CAST(speed AS DOUBLE)`), the cast's input, which runs
    /// widen value by value instead of a pass that writes a wider copy.
    arg: Arc<dyn PhysicalExpr>,
    /// The argument's type where `arg` is the cast's input (for batches of short runs, which
    /// go to DataFusion's accumulators as they are).
    widen_to: Option<DataType>,
}

/// Whether a run can sum (or average) `from` values widened to `to` as it reads them: the
/// casts DataFusion's type coercion adds, all exact or rounding as Rust's `as` does.
fn widens(from: &DataType, to: &DataType, kind: Kind) -> bool {
    use DataType::*;
    match (kind, to) {
        (Kind::Sum, Int64) => matches!(from, Int8 | Int16 | Int32),
        (Kind::Sum, UInt64) => matches!(from, UInt8 | UInt16 | UInt32),
        (Kind::Sum, Float64) => matches!(from, Float32),
        (Kind::Avg, Float64) => matches!(
            from,
            Float32 | Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64
        ),
        _ => false,
    }
}

impl RunAggregateExec {
    /// The replacement for `agg`, or `None` where the rule does not apply (module docs).
    fn try_new(agg: &AggregateExec) -> Result<Option<Self>> {
        let input_schema = agg.input().schema();
        let group_by = agg.group_expr();
        if *agg.mode() != AggregateMode::Partial
            || agg.limit_options().is_some()
            || group_by.has_grouping_set()
            || group_by.expr().is_empty()
            || !group_by
                .expr()
                .iter()
                .all(|(e, _)| reads_keys_only(agg.input(), e))
            || groups_whole_key(agg)
        {
            return Ok(None);
        }
        let mut aggs = Vec::with_capacity(agg.aggr_expr().len());
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
            let arg_type = args[0].data_type(&input_schema)?;
            let Some(kind) = kind_of(a, &arg_type) else {
                return Ok(None);
            };
            let mut run_agg = RunAgg {
                kind,
                arg: Arc::clone(&args[0]),
                widen_to: None,
            };
            if let Some(cast) = args[0].downcast_ref::<CastExpr>() {
                if widens(&cast.expr().data_type(&input_schema)?, &arg_type, kind) {
                    run_agg.arg = Arc::clone(cast.expr());
                    run_agg.widen_to = Some(arg_type);
                }
            }
            aggs.push(run_agg);
        }
        Ok(Some(RunAggregateExec {
            agg: Arc::new(agg.clone()),
            aggs,
        }))
    }
}

impl DisplayAs for RunAggregateExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let groups: Vec<&str> = self
            .agg
            .group_expr()
            .expr()
            .iter()
            .map(|(_, name)| name.as_str())
            .collect();
        let aggs: Vec<&str> = self.agg.aggr_expr().iter().map(|a| a.name()).collect();
        write!(
            f,
            "RunAggregateExec: mode=Partial, gby=[{}] (runs of key values), aggr=[{}]",
            groups.join(", "),
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
        let group_by = self.agg.group_expr();
        let mut state = RunState {
            group_exprs: group_by.expr().iter().map(|(e, _)| Arc::clone(e)).collect(),
            group_values: new_group_values(
                group_by.group_schema(&self.agg.input().schema())?,
                &GroupOrdering::None,
            )?,
            aggs: self.aggs.clone(),
            accumulators: self
                .agg
                .aggr_expr()
                .iter()
                .map(|a| a.create_groups_accumulator())
                .collect::<Result<_>>()?,
            groups: vec![],
            reservation: MemoryConsumer::new(format!("RunAggregateExec[{partition}]"))
                .register(context.memory_pool()),
        };
        let schema = self.agg.schema();
        let batch_size = context.session_config().batch_size().max(1);
        let out_schema = Arc::clone(&schema);
        let stream = futures::stream::once(async move {
            let mut input = input;
            while let Some(batch) = input.next().await {
                state.add(&batch?)?;
            }
            state.finish(&out_schema)
        })
        .map(move |r| {
            let slices: Vec<Result<RecordBatch>> = match r {
                Ok(batch) => {
                    let n = batch.num_rows();
                    (0..n)
                        .step_by(batch_size)
                        .map(|o| Ok(batch.slice(o, batch_size.min(n - o))))
                        .collect()
                }
                Err(e) => vec![Err(e)],
            };
            futures::stream::iter(slices)
        })
        .flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

/// One partition's groups and accumulators.
struct RunState {
    group_exprs: Vec<Arc<dyn PhysicalExpr>>,
    /// DataFusion's group interning: the same groups, numbered the same way, as its own.
    group_values: Box<dyn GroupValues>,
    aggs: Vec<RunAgg>,
    accumulators: Vec<Box<dyn GroupsAccumulator>>,
    /// Scratch: a group index per run or per row.
    groups: Vec<usize>,
    /// The groups' memory, held against the session's memory pool: past its limit the query
    /// fails with "resources exhausted" (this aggregation does not spill).
    reservation: MemoryReservation,
}

impl RunState {
    fn add(&mut self, batch: &RecordBatch) -> Result<()> {
        let rows = batch.num_rows();
        if rows == 0 {
            return Ok(());
        }
        let keys = self
            .group_exprs
            .iter()
            .map(|e| e.evaluate(batch)?.into_array(rows))
            .collect::<Result<Vec<_>>>()?;
        let runs = arrow::compute::kernels::partition::partition(&keys)?.ranges();
        let values = self
            .aggs
            .iter()
            .map(|a| a.arg.evaluate(batch))
            .collect::<Result<Vec<_>>>()?;
        if rows / runs.len() >= MIN_RUN_ROWS {
            // One row per run stands for its run.
            let firsts: UInt32Array = runs.iter().map(|r| r.start as u32).collect();
            let firsts = keys
                .iter()
                .map(|k| Ok(arrow::compute::take(k, &firsts, None)?))
                .collect::<Result<Vec<_>>>()?;
            self.group_values.intern(&firsts, &mut self.groups)?;
            let total = self.group_values.len();
            for ((acc, agg), value) in self.accumulators.iter_mut().zip(&self.aggs).zip(values) {
                let states = run_states(agg.kind, &value, &runs)?;
                acc.merge_batch(&states, &self.groups, total)?;
            }
        } else {
            self.group_values.intern(&keys, &mut self.groups)?;
            let total = self.group_values.len();
            for ((acc, agg), value) in self.accumulators.iter_mut().zip(&self.aggs).zip(values) {
                let mut value = value.into_array(rows)?;
                if let Some(t) = &agg.widen_to {
                    value = arrow::compute::cast(&value, t)?;
                }
                acc.update_batch(&[value], &self.groups, None, total)?;
            }
        }
        let size = self.group_values.size()
            + self.accumulators.iter().map(|a| a.size()).sum::<usize>()
            + self.groups.capacity() * std::mem::size_of::<usize>();
        self.reservation.try_resize(size)
    }

    fn finish(mut self, schema: &SchemaRef) -> Result<RecordBatch> {
        let mut columns = self.group_values.emit(EmitTo::All)?;
        for acc in &mut self.accumulators {
            columns.extend(acc.state(EmitTo::All)?);
        }
        Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
    }
}

/// Each run's partial state of one aggregate: the arrays `merge_batch` takes.
fn run_states(kind: Kind, value: &ColumnarValue, runs: &[Range<usize>]) -> Result<Vec<ArrayRef>> {
    let rows = runs.last().map_or(0, |r| r.end);
    let array = match value {
        ColumnarValue::Array(a) => Arc::clone(a),
        // `count(*)`: each run counts its rows, or none for a NULL constant.
        ColumnarValue::Scalar(s) if kind == Kind::Count => {
            let counts: Int64Array = runs
                .iter()
                .map(|r| Some(if s.is_null() { 0 } else { r.len() as i64 }))
                .collect();
            return Ok(vec![Arc::new(counts)]);
        }
        // `sum(2)`, `max(NULL)`: the constant as a column.
        ColumnarValue::Scalar(s) => s.to_array_of_size(rows)?,
    };
    let array = &array;
    // Logical NULLs, as DataFusion's `count` takes them (a Null-typed column has no bitmap).
    let nulls = array.logical_nulls();
    let valid = |r: &Range<usize>| valid_in(nulls.as_ref(), r);
    Ok(match kind {
        Kind::Count => {
            let counts: Int64Array = runs.iter().map(|r| Some(valid(r) as i64)).collect();
            vec![Arc::new(counts)]
        }
        Kind::Sum => vec![match array.data_type() {
            DataType::Int8 => sums::<Int8Type, Int64Type>(array, runs, |v| v as i64),
            DataType::Int16 => sums::<Int16Type, Int64Type>(array, runs, |v| v as i64),
            DataType::Int32 => sums::<Int32Type, Int64Type>(array, runs, |v| v as i64),
            DataType::Int64 => sums::<Int64Type, Int64Type>(array, runs, |v| v),
            DataType::UInt8 => sums::<UInt8Type, UInt64Type>(array, runs, |v| v as u64),
            DataType::UInt16 => sums::<UInt16Type, UInt64Type>(array, runs, |v| v as u64),
            DataType::UInt32 => sums::<UInt32Type, UInt64Type>(array, runs, |v| v as u64),
            DataType::UInt64 => sums::<UInt64Type, UInt64Type>(array, runs, |v| v),
            _ => float_sums(array, runs, "sum")?,
        }],
        Kind::Avg => {
            // A run without values leaves its group unseen: NULL count and sum, as
            // DataFusion's own partial state has for such a group.
            let counts: UInt64Array = runs
                .iter()
                .map(|r| Some(valid(r) as u64).filter(|&n| n > 0))
                .collect();
            vec![Arc::new(counts), float_sums(array, runs, "average")?]
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

/// How many rows of `r` hold a value.
fn valid_in(nulls: Option<&NullBuffer>, r: &Range<usize>) -> usize {
    match nulls {
        None => r.len(),
        Some(n) => {
            let bits = n.inner();
            UnalignedBitChunk::new(bits.values(), bits.offset() + r.start, r.len()).count_ones()
        }
    }
}

/// Reduces each run's values, widened by `conv`, with `f`, starting from `init(run)` (NULL
/// where the run has no values), typed `out_type`. Four interleaved lanes (for `f` that is
/// associative and commutative up to float rounding) and no branch per value keep a run's loop
/// from waiting on each step in turn.
fn reduce_runs<I: ArrowPrimitiveType, O: ArrowPrimitiveType>(
    a: &PrimitiveArray<I>,
    runs: &[Range<usize>],
    out_type: DataType,
    conv: impl Fn(I::Native) -> O::Native,
    init: impl Fn(&[I::Native], Option<&NullBuffer>, &Range<usize>) -> O::Native,
    f: impl Fn(O::Native, O::Native) -> O::Native,
) -> ArrayRef {
    let values = a.values();
    let nulls = a.nulls();
    let out: PrimitiveArray<O> = runs
        .iter()
        .map(|r| {
            if valid_in(nulls, r) == 0 {
                return None;
            }
            let start = init(values, nulls, r);
            let mut lanes = [start; 4];
            let run = &values[r.clone()];
            // A block of at most 64 values with their validity bits (bit i: take value i).
            let step = |block: &[I::Native], mut w: u64, l: &mut [O::Native; 4]| {
                let mut quads = block.chunks_exact(4);
                for q in &mut quads {
                    let next = [
                        f(l[0], conv(q[0])),
                        f(l[1], conv(q[1])),
                        f(l[2], conv(q[2])),
                        f(l[3], conv(q[3])),
                    ];
                    for (k, n) in next.into_iter().enumerate() {
                        if w & (1 << k) != 0 {
                            l[k] = n;
                        }
                    }
                    w >>= 4;
                }
                for &v in quads.remainder() {
                    if w & 1 != 0 {
                        l[0] = f(l[0], conv(v));
                    }
                    w >>= 1;
                }
            };
            match nulls {
                None => {
                    let mut quads = run.chunks_exact(4);
                    for q in &mut quads {
                        for (l, &v) in lanes.iter_mut().zip(q) {
                            *l = f(*l, conv(v));
                        }
                    }
                    for &v in quads.remainder() {
                        lanes[0] = f(lanes[0], conv(v));
                    }
                }
                Some(n) => {
                    let bits = n.inner();
                    let words = BitChunks::new(bits.values(), bits.offset() + r.start, r.len());
                    for (w, c) in words
                        .iter()
                        .chain(std::iter::once(words.remainder_bits()))
                        .zip(run.chunks(64))
                    {
                        step(c, w, &mut lanes);
                    }
                }
            }
            let [l0, l1, l2, l3] = lanes;
            Some(f(f(l0, l1), f(l2, l3)))
        })
        .collect();
    Arc::new(out.with_data_type(out_type))
}

/// Each run's sum as Float64, of any numeric type `widens` lets through to `sum` or `avg`.
fn float_sums(array: &ArrayRef, runs: &[Range<usize>], what: &str) -> Result<ArrayRef> {
    macro_rules! to_f64 {
        ($($variant:ident => $t:ty),* $(,)?) => {
            match array.data_type() {
                $(DataType::$variant => sums::<$t, Float64Type>(array, runs, |v| v as f64),)*
                other => {
                    return Err(DataFusionError::Internal(format!(
                        "run aggregation cannot {what} {other}"
                    )))
                }
            }
        };
    }
    Ok(to_f64!(
        Int8 => Int8Type, Int16 => Int16Type, Int32 => Int32Type, Int64 => Int64Type,
        UInt8 => UInt8Type, UInt16 => UInt16Type, UInt32 => UInt32Type, UInt64 => UInt64Type,
        Float32 => Float32Type, Float64 => Float64Type,
    ))
}

/// Each run's sum of its values widened to `O` (wrapping, as DataFusion's integer sums are).
/// Like DataFusion's, it starts from zero, so a sum of `-0.0` alone is `0.0` there too.
fn sums<I: ArrowPrimitiveType, O: ArrowPrimitiveType>(
    array: &ArrayRef,
    runs: &[Range<usize>],
    conv: impl Fn(I::Native) -> O::Native,
) -> ArrayRef {
    reduce_runs::<I, O>(
        array.as_primitive::<I>(),
        runs,
        O::DATA_TYPE,
        conv,
        |_, _, _| O::Native::ZERO,
        |a: O::Native, b| a.add_wrapping(b),
    )
}

/// Each run's minimum or maximum, compared as DataFusion's `min`/`max` accumulators compare
/// (`partial_cmp`; an incomparable value, NaN, replaces the current one).
fn extremes<T: ArrowPrimitiveType>(
    a: &PrimitiveArray<T>,
    runs: &[Range<usize>],
    min: bool,
) -> ArrayRef {
    // Every lane starts from the run's first value.
    let first = |values: &[T::Native], nulls: Option<&NullBuffer>, r: &Range<usize>| {
        let i = r
            .clone()
            .find(|&i| nulls.is_none_or(|n| n.is_valid(i)))
            .unwrap_or(r.start);
        values[i]
    };
    let t = a.data_type().clone();
    if min {
        reduce_runs::<T, T>(
            a,
            runs,
            t,
            |v| v,
            first,
            // Takes `y` where `partial_cmp` is Less or None (NaN): one compare the loop can
            // vectorise.
            |x, y| if y >= x { x } else { y },
        )
    } else {
        reduce_runs::<T, T>(
            a,
            runs,
            t,
            |v| v,
            first,
            // Takes `y` where `partial_cmp` is Greater or None.
            |x, y| if y <= x { x } else { y },
        )
    }
}
