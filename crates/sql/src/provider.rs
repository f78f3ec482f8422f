//! A Nyala table as a DataFusion table: scans with projection, filter and limit pushdown, one
//! query partition per tablet; inserts.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, AsArray, RecordBatch, UInt64Array};
use arrow::datatypes::{TimeUnit, TimestampMicrosecondType};
use arrow_schema::{DataType as ArrowType, Field, Schema as ArrowSchema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::Statistics;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{
    Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet, Time,
};
use datafusion::physical_plan::statistics::StatisticsArgs;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties, ReplaceChildrenOptions, SendableRecordBatchStream,
};
use futures::StreamExt;

use nyala_storage::{Predicate, ScanRequest, Table, WriteBatch, WriteOp};

use crate::error::{to_df, RowFailure};
use crate::filters::to_predicates;

/// A stored schema as DataFusion is shown it: every field nullable, timestamps without a
/// zone.
///
/// Every column is nullable: the storage engine checks NOT NULL itself, with messages that
/// name the table's column (DataFusion's own check would name the statement's expression,
/// e.g. `column1` of a VALUES list).
///
/// Timestamps are stored as UTC instants (`Timestamp(µs, "UTC")`). SQL sees them as
/// `Timestamp(µs)` without a zone, holding UTC: the same values (zero-copy), and DataFusion's
/// time functions (`date_trunc`, `extract`) then take their arithmetic fast paths instead of
/// converting every value through a time-zone database (5x on an hourly aggregation).
pub(crate) fn sql_schema(schema: &SchemaRef) -> SchemaRef {
    Arc::new(ArrowSchema::new(
        schema
            .fields()
            .iter()
            .map(|f| {
                Field::new(f.name(), sql_type(f.data_type()), true)
                    .with_metadata(f.metadata().clone())
            })
            .collect::<Vec<_>>(),
    ))
}

/// The SQL view of a stored Arrow type (see [`sql_schema`]).
pub(crate) fn sql_type(t: &ArrowType) -> ArrowType {
    match t {
        ArrowType::Timestamp(unit, Some(_)) => ArrowType::Timestamp(*unit, None),
        other => other.clone(),
    }
}

/// Stored columns relabelled for SQL (see [`sql_schema`]); no data is copied.
pub(crate) fn sql_columns(columns: &[ArrayRef]) -> Vec<ArrayRef> {
    columns
        .iter()
        .map(|c| match c.data_type() {
            ArrowType::Timestamp(TimeUnit::Microsecond, Some(_)) => Arc::new(
                c.as_primitive::<TimestampMicrosecondType>()
                    .clone()
                    .with_timezone_opt(None::<String>),
            ) as ArrayRef,
            _ => c.clone(),
        })
        .collect()
}

/// A table of the database, for DataFusion.
#[derive(Debug)]
pub struct NyalaTable {
    table: Table,
    /// The schema this statement plans with (a concurrent ALTER does not change it midway).
    schema: nyala_common::Schema,
    /// Column defaults as expressions, for INSERTs that leave columns out.
    defaults: std::collections::HashMap<String, Expr>,
    /// The primary key, so the planner knows each key identifies one row.
    constraints: datafusion::common::Constraints,
}

impl NyalaTable {
    /// Wraps a table handle.
    pub fn new(table: Table) -> Self {
        let schema = table.schema();
        let defaults = schema
            .columns()
            .iter()
            .filter_map(|c| {
                let v = c.default.as_ref()?;
                let array =
                    nyala_common::Value::to_array(&c.name, c.data_type, std::slice::from_ref(v))
                        .ok()?;
                let scalar = datafusion::common::ScalarValue::try_from_array(&array, 0).ok()?;
                Some((c.name.clone(), Expr::Literal(scalar, None)))
            })
            .collect();
        let constraints = datafusion::common::Constraints::new_unverified(vec![
            datafusion::common::Constraint::PrimaryKey(schema.key_indices().to_vec()),
        ]);
        NyalaTable {
            table,
            schema,
            defaults,
            constraints,
        }
    }

    /// About how many rows the table holds (live segment rows plus buffered versions), for
    /// planning choices; not exact.
    pub(crate) fn estimated_rows(&self) -> u64 {
        self.table
            .describe()
            .tablets
            .iter()
            .map(|t| t.stats.estimated_rows())
            .sum()
    }
}

#[async_trait]
impl TableProvider for NyalaTable {
    fn schema(&self) -> SchemaRef {
        sql_schema(self.schema.arrow_schema())
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn constraints(&self) -> Option<&datafusion::common::Constraints> {
        Some(&self.constraints)
    }

    fn get_column_default(&self, column: &str) -> Option<&Expr> {
        self.defaults.get(column)
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        let schema = &self.schema;
        // Exact: the scan applies every predicate it is given to every row it returns (see
        // `filters`), so DataFusion does not filter the rows a second time.
        Ok(filters
            .iter()
            .map(|f| match to_predicates(f, schema) {
                Some(_) => TableProviderFilterPushDown::Exact,
                None => TableProviderFilterPushDown::Unsupported,
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let schema = &self.schema;
        let projection_names: Option<Vec<String>> = projection.map(|p| {
            p.iter()
                .map(|&i| schema.columns()[i].name.clone())
                .collect()
        });
        let predicates: Vec<Predicate> = filters
            .iter()
            .filter_map(|f| to_predicates(f, schema))
            .flatten()
            .collect();
        let snapshot = state
            .config()
            .get_extension::<crate::engine::StatementSnapshot>()
            .map(|s| s.0);
        let req = ScanRequest {
            projection: projection_names,
            predicates: predicates.clone(),
            snapshot,
            batch_size: Some(state.config().batch_size()),
            limit,
        };
        let table = self.table.clone();
        // Choosing the snapshot may wait for a tablet's group commit: off the async workers.
        let mut plan = tokio::task::spawn_blocking(move || table.plan_scan(&req))
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?
            .map_err(to_df)?;
        plan.split(parts_per_tablet(
            &plan.estimated_rows(),
            state.config().target_partitions(),
            limit,
        ));
        Ok(Arc::new(NyalaScanExec::new(
            self.table.name().to_string(),
            self.table.tablet_count(),
            plan,
            predicates,
            limit,
            &schema
                .key_indices()
                .iter()
                .map(|&k| schema.columns()[k].name.as_str())
                .collect::<Vec<_>>(),
        )))
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        insert_op: InsertOp,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let op = match insert_op {
            InsertOp::Append => WriteOp::Insert,
            InsertOp::Replace => WriteOp::Upsert,
            InsertOp::Overwrite => {
                return Err(DataFusionError::NotImplemented(
                    "INSERT OVERWRITE; use DELETE, then INSERT".into(),
                ))
            }
        };
        Ok(Arc::new(NyalaWriteExec::new(self.table.clone(), input, op)))
    }
}

/// Tablets smaller than this (rows per part) are not split: their scan takes a few
/// milliseconds, less than what an extra partition costs to set up and merge.
const MIN_PART_ROWS: u64 = 500_000;

/// How many parts each tablet of a scan is read in: enough for two partitions per core, so
/// that tablets of unequal cost (one compacted, one not; a skip scan that skips more in one)
/// even out across the cores, and a table of one tablet uses them all. A scan with a row limit
/// stops early anyway and is not split. (Sizes are whole tablets': a narrow key range of a big
/// tablet is split too, into parts of which most find nothing, which costs a few empty
/// partitions.)
fn parts_per_tablet(
    estimated_rows: &[u64],
    target_partitions: usize,
    limit: Option<usize>,
) -> usize {
    let tablets = estimated_rows.len();
    if tablets == 0 || limit.is_some() {
        return 1;
    }
    let rows_per_tablet = estimated_rows.iter().sum::<u64>() / tablets as u64;
    let wanted = (2 * target_partitions.max(1)).div_ceil(tablets);
    wanted
        .min((rows_per_tablet / MIN_PART_ROWS) as usize)
        .max(1)
}

/// Scans the tablets of one table at one snapshot: one output partition per tablet part (see
/// [`parts_per_tablet`]).
pub struct NyalaScanExec {
    table: String,
    tablets_total: usize,
    snapshot: u64,
    predicates: Vec<Predicate>,
    limit: Option<usize>,
    schema: SchemaRef,
    /// Which tablets, at which snapshot; each partition opens its tablet's scan when
    /// executed (so the plan can run more than once, e.g. in a recursive query).
    plan: nyala_storage::db::ScanPlan,
    /// Rows per chosen tablet when planned (inexact), for [`Statistics`].
    estimated_rows: Vec<u64>,
    /// Which output columns are primary-key columns. Each partition returns rows in runs of
    /// equal key prefixes (every segment and the write buffer are sorted by key), which
    /// [`crate::run_aggregate`] exploits.
    key_columns: Vec<usize>,
    /// How many key columns the table has (projected or not).
    key_count: usize,
    /// What `EXPLAIN ANALYZE` shows: rows out, segments read, rows skipped by key block.
    metrics: ExecutionPlanMetricsSet,
    props: Arc<PlanProperties>,
}

impl fmt::Debug for NyalaScanExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NyalaScanExec")
            .field("table", &self.table)
            .field("tablets", &self.plan.tablet_ids.len())
            .finish_non_exhaustive()
    }
}

impl NyalaScanExec {
    fn new(
        table: String,
        tablets_total: usize,
        plan: nyala_storage::db::ScanPlan,
        predicates: Vec<Predicate>,
        limit: Option<usize>,
        key_names: &[&str],
    ) -> Self {
        let schema = sql_schema(&plan.schema);
        let key_columns = key_names
            .iter()
            .filter_map(|name| schema.index_of(name).ok())
            .collect();
        let key_count = key_names.len();
        let n = plan.partitions().max(1);
        let props = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(n),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        NyalaScanExec {
            estimated_rows: plan.estimated_rows(),
            key_columns,
            key_count,
            table,
            tablets_total,
            snapshot: plan.snapshot,
            predicates,
            limit,
            schema,
            plan,
            metrics: ExecutionPlanMetricsSet::new(),
            props: Arc::new(props),
        }
    }
}

impl NyalaScanExec {
    /// The output columns that hold primary-key columns (see the field).
    pub(crate) fn key_columns(&self) -> &[usize] {
        &self.key_columns
    }

    /// How many key columns the table has.
    pub(crate) fn key_count(&self) -> usize {
        self.key_count
    }
}

impl DisplayAs for NyalaScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let cols: Vec<&str> = self
            .schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        write!(
            f,
            "NyalaScanExec: table={}, tablets={} of {}, snapshot={}, projection=[{}]",
            self.table,
            self.plan.tablet_ids.len(),
            self.tablets_total,
            self.snapshot,
            cols.join(", ")
        )?;
        let parts = self.plan.partitions() / self.plan.tablet_ids.len().max(1);
        if parts > 1 {
            write!(f, ", parts per tablet={parts}")?;
        }
        if !self.predicates.is_empty() {
            let p: Vec<String> = self.predicates.iter().map(describe_predicate).collect();
            write!(f, ", predicates=[{}]", p.join(" AND "))?;
        }
        if let Some(l) = self.limit {
            write!(f, ", limit={l}")?;
        }
        Ok(())
    }
}

fn describe_predicate(p: &Predicate) -> String {
    match p {
        Predicate::Compare { column, op, value } => {
            let op = match op {
                nyala_storage::CmpOp::Eq => "=",
                nyala_storage::CmpOp::Lt => "<",
                nyala_storage::CmpOp::Le => "<=",
                nyala_storage::CmpOp::Gt => ">",
                nyala_storage::CmpOp::Ge => ">=",
            };
            format!("{column} {op} {value}")
        }
        Predicate::In { column, values } => {
            let v: Vec<String> = values.iter().map(|v| v.to_string()).collect();
            format!("{column} IN ({})", v.join(", "))
        }
        Predicate::IsNull(c) => format!("{c} IS NULL"),
        Predicate::IsNotNull(c) => format!("{c} IS NOT NULL"),
    }
}

impl ExecutionPlan for NyalaScanExec {
    fn name(&self) -> &str {
        "NyalaScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    /// Row counts (inexact) per tablet: without them DataFusion cannot tell a fact table from
    /// a dimension table and may build a join's hash table on the big side.
    fn statistics_from_inputs(
        &self,
        _input_stats: &[Arc<Statistics>],
        args: &StatisticsArgs,
    ) -> Result<Arc<Statistics>> {
        let rows = &self.estimated_rows;
        let n = match args.partition() {
            Some(i) => rows.get(i).copied().unwrap_or(0),
            None => rows.iter().sum(),
        };
        let n = self.limit.map_or(n as usize, |l| l.min(n as usize));
        Ok(Arc::new(
            Statistics::new_unknown(&self.schema).with_num_rows(Precision::Inexact(n)),
        ))
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        // Decoding runs in the stream's own `poll_next`, on the DataFusion task that consumes
        // the batches (usually an aggregation): each batch is aggregated on the core that
        // decoded it, while it is still in cache, and no batch crosses threads. Handing batches
        // over from a blocking-pool thread cost the traffic queries 8-50% (two threads per
        // partition on a two-core machine, a wake-up per batch). So that a long scan does not
        // hold its tokio worker from the other tasks queued there (connections, point lookups),
        // it yields every `SCAN_SLICE` of decoding.
        let schema = self.schema.clone();
        let plan = self.plan.clone();
        // Opened at the first poll, not here (a point lookup does its lookup on opening).
        // With every tablet pruned, the one partition is empty.
        let opened: Box<dyn Iterator<Item = _> + Send> = if partition < plan.partitions() {
            Box::new(std::iter::once_with(move || plan.open(partition)))
        } else {
            Box::new(std::iter::empty())
        };
        let batch_schema = schema.clone();
        let metrics = ScanMetrics::new(&self.metrics, partition);
        let batches = opened.flat_map(move |scan| -> ScanBatches {
            match scan {
                Ok(scan) => Box::new(MeteredScan {
                    scan,
                    schema: batch_schema.clone(),
                    metrics: metrics.clone(),
                }),
                Err(e) => Box::new(std::iter::once(Err(to_df(e)))),
            }
        });
        let sliced = futures::stream::unfold(
            (batches, Instant::now()),
            |(mut batches, mut slice)| async move {
                if slice.elapsed() >= SCAN_SLICE {
                    tokio::task::yield_now().await;
                    slice = Instant::now();
                }
                let batch = batches.next()?;
                Some((batch, (batches, slice)))
            },
        );
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, sliced)))
    }
}

/// A partition's scan counters.
#[derive(Clone)]
struct ScanMetrics {
    output_rows: Count,
    elapsed_compute: Time,
    segments_read: Count,
    rows_skipped: Count,
}

impl ScanMetrics {
    fn new(set: &ExecutionPlanMetricsSet, partition: usize) -> Self {
        ScanMetrics {
            output_rows: MetricBuilder::new(set).output_rows(partition),
            elapsed_compute: MetricBuilder::new(set).elapsed_compute(partition),
            segments_read: MetricBuilder::new(set).counter("segments_read", partition),
            rows_skipped: MetricBuilder::new(set).counter("rows_skipped_by_key_blocks", partition),
        }
    }
}

/// A tablet scan's batches, relabelled for DataFusion and counted; its storage counters are
/// recorded when it is dropped, so a scan a `LIMIT` stops early counts too.
struct MeteredScan {
    scan: nyala_storage::TabletScan,
    schema: SchemaRef,
    metrics: ScanMetrics,
}

impl Iterator for MeteredScan {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        let timer = self.metrics.elapsed_compute.timer();
        let b = self.scan.next().map(|b| relabel(&self.schema, b));
        timer.done();
        if let Some(Ok(b)) = &b {
            self.metrics.output_rows.add(b.num_rows());
        }
        b
    }
}

impl Drop for MeteredScan {
    fn drop(&mut self) {
        self.metrics.segments_read.add(self.scan.segments_read());
        self.metrics
            .rows_skipped
            .add(self.scan.rows_skipped() as usize);
    }
}

/// How long a scan decodes on a tokio worker before it lets the worker's other tasks run.
const SCAN_SLICE: Duration = Duration::from_micros(500);

/// A tablet scan's batches as DataFusion sees them.
type ScanBatches = Box<dyn Iterator<Item = Result<RecordBatch>> + Send>;

/// A storage batch with the same columns, labelled with the schema DataFusion planned with.
fn relabel(schema: &SchemaRef, batch: nyala_storage::Result<RecordBatch>) -> Result<RecordBatch> {
    let b = batch.map_err(to_df)?;
    let opts = arrow::array::RecordBatchOptions::new().with_row_count(Some(b.num_rows()));
    Ok(RecordBatch::try_new_with_options(
        schema.clone(),
        sql_columns(b.columns()),
        &opts,
    )?)
}

/// Writes the rows of its input with one operation (INSERT, UPSERT) and returns the count.
pub struct NyalaWriteExec {
    table: Table,
    input: Arc<dyn ExecutionPlan>,
    op: WriteOp,
    props: Arc<PlanProperties>,
}

impl fmt::Debug for NyalaWriteExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NyalaWriteExec")
            .field("op", &self.op)
            .finish_non_exhaustive()
    }
}

fn count_schema() -> SchemaRef {
    Arc::new(ArrowSchema::new(vec![Field::new(
        "count",
        ArrowType::UInt64,
        false,
    )]))
}

impl NyalaWriteExec {
    pub(crate) fn new(table: Table, input: Arc<dyn ExecutionPlan>, op: WriteOp) -> Self {
        let props = PlanProperties::new(
            EquivalenceProperties::new(count_schema()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        NyalaWriteExec {
            table,
            input,
            op,
            props: Arc::new(props),
        }
    }
}

impl DisplayAs for NyalaWriteExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "NyalaWriteExec: table={}, op={:?}",
            self.table.name(),
            self.op
        )
    }
}

impl ExecutionPlan for NyalaWriteExec {
    fn name(&self) -> &str {
        "NyalaWriteExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(NyalaWriteExec::new(
            self.table.clone(),
            children.swap_remove(0),
            self.op,
        )))
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(
                datafusion::physical_plan::ChildrenPropertiesMode::Recompute,
            ),
        )
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "NyalaWriteExec has one partition, asked for {partition}"
            )));
        }
        let (input, table, op) = (self.input.clone(), self.table.clone(), self.op);
        let stream = futures::stream::once(async move {
            let mut count = 0u64;
            for p in 0..input.output_partitioning().partition_count() {
                let mut batches = input.execute(p, context.clone())?;
                while let Some(batch) = batches.next().await {
                    let batch = batch?;
                    if batch.num_rows() == 0 {
                        continue;
                    }
                    let table = table.clone();
                    let outcome = tokio::task::spawn_blocking(move || {
                        table.write(&WriteBatch::uniform(op, batch))
                    })
                    .await
                    .map_err(|e| DataFusionError::External(Box::new(e)))?
                    .map_err(to_df)?;
                    if let Some(e) = outcome.errors.into_iter().next() {
                        return Err(DataFusionError::External(Box::new(RowFailure(e))));
                    }
                    count += outcome.applied as u64;
                }
            }
            RecordBatch::try_new(
                count_schema(),
                vec![Arc::new(UInt64Array::from(vec![count]))],
            )
            .map_err(DataFusionError::from)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            count_schema(),
            stream,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_tablets_are_split_for_two_partitions_per_core() {
        // Two tablets of 5M rows on two cores: two parts each.
        assert_eq!(parts_per_tablet(&[5_000_000, 5_000_000], 2, None), 2);
        // One tablet: four parts.
        assert_eq!(parts_per_tablet(&[10_000_000], 2, None), 4);
        // Never below MIN_PART_ROWS a part.
        assert_eq!(parts_per_tablet(&[1_200_000], 8, None), 2);
        // Small tablets, a row limit, or no tablet at all: one part.
        assert_eq!(parts_per_tablet(&[400_000, 400_000], 2, None), 1);
        assert_eq!(parts_per_tablet(&[10_000_000], 2, Some(10)), 1);
        assert_eq!(parts_per_tablet(&[], 2, None), 1);
        // More tablets than cores: one part each.
        assert_eq!(parts_per_tablet(&[5_000_000; 8], 2, None), 1);
    }
}
